//! TLS on peer links and the client port, over real sockets, with certificates made here
//! by rcgen: a TLS cluster works (moves, stale tokens, backup failover), a capture of a
//! move holds no session bytes, peers without a certificate from the cluster CA are
//! refused before any session data moves, and certificates rotate without a restart.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::certs::{server_cert_text, write_files, Ca};
use common::*;
use sessync_client::{Client, ErrorCode};
use sessync_proto::Token;
use sessync_server::{NodeConfig, NodeHandle, TlsFiles};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

fn tls_config(files: Option<TlsFiles>) -> NodeConfig {
    let mut c = config();
    c.peer_tls = files;
    c.peer_timeout = Duration::from_millis(700);
    c
}

async fn start(files: Option<TlsFiles>, tweak: impl FnOnce(&mut NodeConfig)) -> NodeHandle {
    let mut c = tls_config(files);
    tweak(&mut c);
    sessync_server::start(c).await.unwrap()
}

async fn stats(c: &Client) -> Vec<(String, u64)> {
    timeout(WAIT, c.stats()).await.unwrap().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_node_tls_cluster_moves_follows_stale_tokens_and_fails_over() {
    let dir = temp_dir("tls-cluster");
    let ca = Ca::new("sessync test CA");
    let mut nodes = Vec::new();
    for i in 0..3 {
        let files = ca.files(&dir, &format!("node{i}"), false);
        nodes.push(start(Some(files), |c| c.replicas = 1).await);
    }
    let peers: Vec<SocketAddr> = nodes.iter().map(|n| n.peer_addr()).collect();
    for n in &nodes {
        n.node().set_peers(peers.clone());
    }
    let clients = [
        client(nodes[0].client_addr()).await,
        client(nodes[1].client_addr()).await,
        client(nodes[2].client_addr()).await,
    ];
    // Create at 0, read at 1 (a move over TLS), write at 1.
    let s = timeout(WAIT, clients[0].create(attrs(&[("user", "alice")])))
        .await
        .unwrap()
        .unwrap();
    let token0 = s.token.clone();
    let at1 = timeout(WAIT, clients[1].get(&token0)).await.unwrap().unwrap();
    assert!(at1.token_changed);
    assert_eq!(at1.get("user").unwrap(), "alice");
    let w = timeout(WAIT, clients[1].set(&at1.token).put("cart", "3").send())
        .await
        .unwrap()
        .unwrap();
    // The stale token naming 0 read at 2: 2 follows it to 1 (0 answers MOVED to 1, or 2
    // holds 1's backup copy, which names 1: the new owner places its copy on the old
    // owner's backups), and 1 hands the session over.
    let at2 = timeout(WAIT, clients[2].get(&token0)).await.unwrap().unwrap();
    assert_eq!(at2.get("cart").unwrap(), "3");
    assert_eq!(at2.meta.version, w.meta.version);
    let s0 = stats(&clients[0]).await;
    assert!(stat(&s0, "copies_served") >= 1);
    let s1 = stats(&clients[1]).await;
    assert!(
        stat(&s1, "copies_served") >= 1,
        "the stale token was followed to node 1"
    );

    // Backup failover: a session owned by node 0 survives node 0's end.
    let s = timeout(WAIT, clients[0].create(attrs(&[("n", "1")])))
        .await
        .unwrap()
        .unwrap();
    let w = timeout(WAIT, clients[0].set(&s.token).put("n", "2").send())
        .await
        .unwrap()
        .unwrap();
    let backups = Token::verify(&w.token, &keys()).unwrap().backups;
    assert_eq!(backups.len(), 1, "a backup over a TLS link");
    let dead = nodes.remove(0);
    assert!(dead.shutdown(WAIT).await);
    let via = if backups[0] == peers[1] {
        &clients[1]
    } else {
        &clients[2]
    };
    let r = timeout(WAIT, via.get(&w.token)).await.unwrap().unwrap();
    assert_eq!(
        r.get("n").unwrap(),
        "2",
        "the acknowledged write survived the owner"
    );
    let tls_failures =
        stat(&stats(&clients[1]).await, "tls_failures") + stat(&stats(&clients[2]).await, "tls_failures");
    assert_eq!(tls_failures, 0);
    stop(nodes).await;
}

/// A TCP proxy that records every byte in both directions.
struct Recording {
    addr: SocketAddr,
    to_server: Arc<Mutex<Vec<u8>>>,
    to_client: Arc<Mutex<Vec<u8>>>,
}

async fn recording_proxy(listener: TcpListener, target: SocketAddr) -> Recording {
    let addr = listener.local_addr().unwrap();
    let to_server = Arc::new(Mutex::new(Vec::new()));
    let to_client = Arc::new(Mutex::new(Vec::new()));
    let (ts, tc) = (to_server.clone(), to_client.clone());
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            let Ok(outbound) = TcpStream::connect(target).await else {
                continue;
            };
            let (mut ri, mut wi) = inbound.into_split();
            let (mut ro, mut wo) = outbound.into_split();
            let (ts, tc) = (ts.clone(), tc.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                while let Ok(n) = ri.read(&mut buf).await {
                    if n == 0 || wo.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    ts.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            });
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                while let Ok(n) = ro.read(&mut buf).await {
                    if n == 0 || wi.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    tc.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            });
        }
    });
    Recording {
        addr,
        to_server,
        to_client,
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Moves a session from A to B through a recording proxy in front of A's peer port, and
/// returns (bytes B sent, bytes A sent).
async fn capture_a_move(tls: bool) -> (Vec<u8>, Vec<u8>) {
    let dir = temp_dir(&format!("tls-capture-{tls}"));
    let ca = Ca::new("sessync test CA");
    let files = |name: &str| tls.then(|| ca.files(&dir, name, false));
    // A advertises the proxy, so tokens naming A make B dial through it.
    let proxy_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_addr = proxy_listener.local_addr().unwrap();
    let a = start(files("a"), |c| c.advertise = Some(proxy_addr)).await;
    let b = start(files("b"), |_| {}).await;
    let proxy = recording_proxy(proxy_listener, a.peer_addr()).await;
    assert_eq!(proxy.addr, proxy_addr);
    let (ca_client, cb) = (client(a.client_addr()).await, client(b.client_addr()).await);
    let s = timeout(
        WAIT,
        ca_client.create(attrs(&[("secret", "ATTRIBUTE-BYTES-4f1c9e")])),
    )
    .await
    .unwrap()
    .unwrap();
    let moved = timeout(WAIT, cb.get(&s.token)).await.unwrap().unwrap();
    assert_eq!(moved.get("secret").unwrap(), "ATTRIBUTE-BYTES-4f1c9e");
    assert_eq!(stat(&stats(&ca_client).await, "copies_served"), 1);
    let captured = (
        proxy.to_server.lock().unwrap().clone(),
        proxy.to_client.lock().unwrap().clone(),
    );
    stop(vec![a, b]).await;
    captured
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_captured_move_over_tls_holds_no_session_bytes_and_is_tls_1_3() {
    let secret = b"ATTRIBUTE-BYTES-4f1c9e";
    // The control: without TLS the capture does show the attribute (so this test can fail).
    let (_, plain_from_owner) = capture_a_move(false).await;
    assert!(
        contains(&plain_from_owner, secret),
        "control: plain links carry the bytes"
    );

    let (from_b, from_a) = capture_a_move(true).await;
    assert!(!from_a.is_empty() && !from_b.is_empty());
    assert!(!contains(&from_a, secret) && !contains(&from_b, secret));
    // B's first bytes are a TLS handshake record (type 22, version 3.x); A answers with a
    // ServerHello record whose supported_versions extension (0x002b) selects TLS 1.3
    // (0x0304), and no plain sessync frame appears.
    assert_eq!(&from_b[..2], &[0x16, 0x03], "a TLS ClientHello record");
    assert_eq!(&from_a[..2], &[0x16, 0x03], "a TLS ServerHello record");
    assert_eq!(from_a[5], 0x02, "handshake type ServerHello");
    let hello_len = u16::from_be_bytes([from_a[3], from_a[4]]) as usize;
    let server_hello = &from_a[5..5 + hello_len];
    assert!(
        contains(server_hello, &[0x00, 0x2b, 0x00, 0x02, 0x03, 0x04]),
        "ServerHello selects TLS 1.3"
    );
    assert!(!contains(&from_b, b"sessync") && !contains(&from_a, b"sessync"));
}

/// Starts an owner with peer TLS under `ca`, and a node configured by `rogue` that asks
/// it for a session: the owner must refuse the link before any session data moves.
async fn owner_refuses(rogue: Option<TlsFiles>, owner_ca: &Ca, dir: &Path) {
    let owner = start(Some(owner_ca.files(dir, "owner", false)), |_| {}).await;
    let other = start(rogue, |_| {}).await;
    let (co, cr) = (
        client(owner.client_addr()).await,
        client(other.client_addr()).await,
    );
    let s = timeout(WAIT, co.create(attrs(&[("k", "v")])))
        .await
        .unwrap()
        .unwrap();
    let e = timeout(WAIT, cr.get(&s.token)).await.unwrap().unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::OwnerUnreachable), "{e}");
    // The owner counts the refusal right after sending its alert: wait for it (bounded).
    let deadline = tokio::time::Instant::now() + WAIT;
    while stat(&owner.node().stats_snapshot(), "tls_failures") == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the refusal was not counted"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        stat(&stats(&co).await, "copies_served"),
        0,
        "no session data was sent"
    );
    // The session is still the owner's, and others are unaffected.
    let again = timeout(WAIT, co.get(&s.token)).await.unwrap().unwrap();
    assert_eq!(again.get("k").unwrap(), "v");
    stop(vec![owner, other]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_without_a_valid_certificate_from_the_cluster_ca_are_refused() {
    let dir = temp_dir("tls-refused");
    let ca = Ca::new("cluster CA");
    let other_ca = Ca::new("some other CA");
    // A certificate from another CA (the rogue trusts the cluster CA, so it would talk).
    let (cert, key) = other_ca.leaf("rogue", false);
    let wrong_ca = write_files(&dir, "wrong-ca", &cert, &key, &ca.pem);
    owner_refuses(Some(wrong_ca), &ca, &dir).await;
    // An expired certificate from the right CA.
    owner_refuses(Some(ca.files(&dir, "expired", true)), &ca, &dir).await;
    // No certificate (and no TLS) at all.
    owner_refuses(None, &ca, &dir).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_new_links_use_the_new_certificate_old_links_keep_working() {
    let dir = temp_dir("tls-rotation");
    let ca1 = Ca::new("CA one");
    let ca2 = Ca::new("CA two");
    let a_files = ca1.files(&dir, "node-a-v1", false);
    let a = start(Some(a_files.clone()), |_| {}).await;
    let b = start(Some(ca1.files(&dir, "node-b", false)), |_| {}).await;
    let (cla, clb) = (client(a.client_addr()).await, client(b.client_addr()).await);
    // B's link to A comes up.
    let s1 = timeout(WAIT, cla.create(attrs(&[("n", "1")])))
        .await
        .unwrap()
        .unwrap();
    timeout(WAIT, clb.get(&s1.token)).await.unwrap().unwrap();
    let probe = ca1.leaf("probe", false);
    assert!(server_cert_text(a.peer_addr(), &ca1.pem, (&probe.0, &probe.1))
        .await
        .contains("node-a-v1"));

    // Replace A's files with a certificate under a new CA, and reload (what SIGHUP does).
    let (cert, key) = ca2.leaf("node-a-v2", false);
    std::fs::write(&a_files.cert, cert).unwrap();
    std::fs::write(&a_files.key, key).unwrap();
    std::fs::write(a_files.ca.as_ref().unwrap(), &ca2.pem).unwrap();
    let reloaded = a.reload_tls();
    assert!(
        matches!(&reloaded[0], Ok(sessync_server::Reload::Replaced { subject }) if subject.contains("node-a-v2")),
        "{reloaded:?}"
    );
    assert!(matches!(a.reload_tls()[0], Ok(sessync_server::Reload::Unchanged)));

    // A new link sees the new certificate (and must be under CA two).
    let probe2 = ca2.leaf("probe2", false);
    assert!(server_cert_text(a.peer_addr(), &ca2.pem, (&probe2.0, &probe2.1))
        .await
        .contains("node-a-v2"));
    // B's old link keeps working: B trusts only CA one, so a new link could not be made.
    let s2 = timeout(WAIT, cla.create(attrs(&[("n", "2")])))
        .await
        .unwrap()
        .unwrap();
    let moved = timeout(WAIT, clb.get(&s2.token)).await.unwrap().unwrap();
    assert_eq!(moved.get("n").unwrap(), "2");
    // A node under CA two can make a new link to A.
    let c = start(Some(ca2.files(&dir, "node-c", false)), |_| {}).await;
    let clc = client(c.client_addr()).await;
    let s3 = timeout(WAIT, cla.create(attrs(&[("n", "3")])))
        .await
        .unwrap()
        .unwrap();
    let at_c = timeout(WAIT, clc.get(&s3.token)).await.unwrap().unwrap();
    assert_eq!(at_c.get("n").unwrap(), "3");
    // Broken files leave the certificate in use.
    std::fs::write(&a_files.key, "not a key").unwrap();
    assert!(a.reload_tls()[0].is_err());
    assert!(server_cert_text(a.peer_addr(), &ca2.pem, (&probe2.0, &probe2.1))
        .await
        .contains("node-a-v2"));
    stop(vec![a, b, c]).await;
}

#[test]
fn sighup_reloads_a_running_nodes_certificate() {
    let dir = temp_dir("tls-sighup");
    let ca = Ca::new("CA");
    let files = ca.files(&dir, "proc-v1", false);
    let secret = secret_file(&dir);
    let arg = |p: &Path| p.to_str().unwrap().to_string();
    let node = spawn_node(&[
        "--secret-file",
        &arg(&secret),
        "--tls-cert",
        &arg(&files.cert),
        "--tls-key",
        &arg(&files.key),
        "--tls-ca",
        &arg(files.ca.as_ref().unwrap()),
    ]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let probe = ca.leaf("probe", false);
    let seen = rt.block_on(server_cert_text(node.peer, &ca.pem, (&probe.0, &probe.1)));
    assert!(seen.contains("proc-v1"));
    let (cert, key) = ca.leaf("proc-v2", false);
    std::fs::write(&files.cert, cert).unwrap();
    std::fs::write(&files.key, key).unwrap();
    let ok = std::process::Command::new("kill")
        .args(["-HUP", &node.child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    // The signal is handled asynchronously: poll (bounded) for the new certificate.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let seen = rt.block_on(server_cert_text(node.peer, &ca.pem, (&probe.0, &probe.1)));
        if seen.contains("proc-v2") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "SIGHUP did not replace the certificate"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A man in the middle holding a certificate from the cluster CA (one issued for another
/// purpose) terminates B's TLS and opens its own to A, relaying the plaintext. The secret
/// handshake is bound to each TLS session, so relaying it fails: no link, no session data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relaying_man_in_the_middle_with_a_ca_certificate_gets_no_link() {
    use common::certs::{client_config, server_config};
    let dir = temp_dir("tls-mitm");
    let ca = Ca::new("cluster CA");
    let mitm_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mitm_addr = mitm_listener.local_addr().unwrap();
    let a = start(Some(ca.files(&dir, "a", false)), |c| {
        c.advertise = Some(mitm_addr)
    })
    .await;
    let b = start(Some(ca.files(&dir, "b", false)), |_| {}).await;
    let mitm_cert = ca.leaf("mitm", false);
    let (acceptor, connector) = (
        tokio_rustls::TlsAcceptor::from(server_config((&mitm_cert.0, &mitm_cert.1))),
        tokio_rustls::TlsConnector::from(client_config(&ca.pem, (&mitm_cert.0, &mitm_cert.1))),
    );
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (a_peer, seen2) = (a.peer_addr(), seen.clone());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = mitm_listener.accept().await {
            let (acceptor, connector, seen) = (acceptor.clone(), connector.clone(), seen2.clone());
            tokio::spawn(async move {
                let Ok(from_b) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(tcp) = TcpStream::connect(a_peer).await else {
                    return;
                };
                let name = rustls_pki_types::ServerName::IpAddress(a_peer.ip().into());
                let Ok(to_a) = connector.connect(name, tcp).await else {
                    return;
                };
                let (mut br, mut bw) = tokio::io::split(from_b);
                let (mut ar, mut aw) = tokio::io::split(to_a);
                let s2 = seen.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    while let Ok(n) = br.read(&mut buf).await {
                        if n == 0 || aw.write_all(&buf[..n]).await.is_err() || aw.flush().await.is_err() {
                            break;
                        }
                        s2.lock().unwrap().extend_from_slice(&buf[..n]);
                    }
                });
                let mut buf = vec![0u8; 16 * 1024];
                while let Ok(n) = ar.read(&mut buf).await {
                    if n == 0 || bw.write_all(&buf[..n]).await.is_err() || bw.flush().await.is_err() {
                        break;
                    }
                    seen.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            });
        }
    });
    let (cla, clb) = (client(a.client_addr()).await, client(b.client_addr()).await);
    let s = timeout(WAIT, cla.create(attrs(&[("secret", "ATTRIBUTE-BYTES-77aa")])))
        .await
        .unwrap()
        .unwrap();
    let e = timeout(WAIT, clb.get(&s.token)).await.unwrap().unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::OwnerUnreachable), "{e}");
    assert!(
        !seen.lock().unwrap().is_empty(),
        "the relay did carry the handshake"
    );
    assert!(!contains(&seen.lock().unwrap(), b"ATTRIBUTE-BYTES-77aa"));
    let sa = a.node().stats_snapshot();
    assert_eq!(stat(&sa, "copies_served"), 0);
    // B checks A's proof first and finds it made for another TLS session: B gives up, so
    // A never sees a proof from B at all. (Without the binding, this relay gets the session:
    // tried by hand with the binding turned off.)
    assert_eq!(stat(&sa, "peer_auth_failures"), 0);
    stop(vec![a, b]).await;
}

/// Bad input on a TLS peer port (plain frames, a truncated ClientHello, garbage) is
/// refused, counted, and a real link made at the same time works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_on_a_tls_peer_port_is_refused_and_counted() {
    let dir = temp_dir("tls-peer-bad");
    let ca = Ca::new("cluster CA");
    let a = start(Some(ca.files(&dir, "a", false)), |_| {}).await;
    let b = start(Some(ca.files(&dir, "b", false)), |_| {}).await;
    let inputs: [&[u8]; 3] = [
        b"\x00\x00\x00\x20 a plain sessync frame start....",
        &[0x16, 0x03, 0x01, 0x00, 0xc8, 0x01, 0x00],
        b"GET / HTTP/1.1\r\n\r\n",
    ];
    for bytes in inputs {
        let mut s = TcpStream::connect(a.peer_addr()).await.unwrap();
        s.write_all(bytes).await.unwrap();
        // A truncated handshake gets no answer; close our side, as a crashed peer would.
        s.shutdown().await.unwrap();
        let mut got = Vec::new();
        let _ = timeout(WAIT, s.read_to_end(&mut got)).await.unwrap();
        assert!(
            got.is_empty() || got[0] == 0x15,
            "a TLS alert or nothing: {got:?}"
        );
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    while stat(&a.node().stats_snapshot(), "tls_failures") < 3 {
        assert!(tokio::time::Instant::now() < deadline, "refusals not counted");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (cla, clb) = (client(a.client_addr()).await, client(b.client_addr()).await);
    let s = timeout(WAIT, cla.create(attrs(&[("k", "v")])))
        .await
        .unwrap()
        .unwrap();
    let moved = timeout(WAIT, clb.get(&s.token)).await.unwrap().unwrap();
    assert_eq!(moved.get("k").unwrap(), "v");
    stop(vec![a, b]).await;
}
