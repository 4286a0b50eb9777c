//! Instant copy across nodes, over real sockets.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use common::*;
use sessync_client::{ClientError, ErrorCode, Write};
use sessync_proto::{decode_frame, Dialler, FrameCodec, Keyring, Message, PeerMessage, SessionId};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_follows_the_user_and_stale_tokens_follow_moved() {
    let nodes = cluster(3).await;
    let (a, b, c) = (
        client(nodes[0].client_addr()).await,
        client(nodes[1].client_addr()).await,
        client(nodes[2].client_addr()).await,
    );
    let created = timeout(WAIT, a.create(attrs(&[("user", "alice")])))
        .await
        .unwrap()
        .unwrap();
    let token_a = created.token.clone();

    // Read at B: copied over, served, and a new token naming B comes back.
    let at_b = timeout(WAIT, b.get(&token_a)).await.unwrap().unwrap();
    assert!(at_b.token_changed, "B must issue a token naming itself");
    assert_eq!(at_b.get("user").unwrap(), "alice");
    assert_eq!(at_b.version(), 1);

    // A write at B, then C reads with the *stale* token naming A: A says MOVED to B.
    let w = timeout(WAIT, b.write(&at_b.token, Write::new().put("cart", "3")))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(w.version(), 2);
    let at_c = timeout(WAIT, c.get(&token_a)).await.unwrap().unwrap();
    assert_eq!(at_c.get("cart").unwrap(), "3", "the write made at B came along");
    assert_eq!(at_c.version(), 2);

    // A is told MOVED and follows too (its own forwarding tombstone points at B, which points at C).
    let back_at_a = timeout(WAIT, a.get(&token_a)).await.unwrap().unwrap();
    assert_eq!(back_at_a.get("cart").unwrap(), "3");

    // Destroy at C (with the token A just issued): gone everywhere.
    timeout(WAIT, c.destroy(&back_at_a.token)).await.unwrap().unwrap();
    for (who, cl) in [("a", &a), ("b", &b), ("c", &c)] {
        for t in [&token_a, &at_b.token, &back_at_a.token] {
            let e = timeout(WAIT, cl.get(t)).await.unwrap().unwrap_err();
            assert_eq!(
                e.code(),
                Some(ErrorCode::SessionNotFound),
                "node {who} still serves it: {e}"
            );
        }
    }
    let sa = timeout(WAIT, a.stats()).await.unwrap().unwrap();
    assert!(stat(&sa, "copies_served") >= 1);
    assert!(stat(&sa, "copies_received") >= 1);
    let sb = timeout(WAIT, b.stats()).await.unwrap().unwrap();
    assert!(stat(&sb, "moved") + stat(&sa, "moved") >= 1);
    stop(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_cas_increments_lose_nothing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("TEST_LOG").unwrap_or_default())
        .with_test_writer()
        .try_init();
    let nodes = cluster(3).await;
    let mut clients = Vec::new();
    for n in &nodes {
        clients.push(client(n.client_addr()).await);
    }
    let mut tokens = Vec::new();
    for _ in 0..4 {
        let s = clients[0].create(attrs(&[("n", "0")])).await.unwrap();
        tokens.push(s.token);
    }
    let acknowledged: Arc<Vec<AtomicU64>> = Arc::new((0..tokens.len()).map(|_| AtomicU64::new(0)).collect());
    let mut tasks = Vec::new();
    for t in 0..50usize {
        let clients = clients.clone();
        let mut token = tokens[t % tokens.len()].clone();
        let acked = acknowledged.clone();
        tasks.push(tokio::spawn(async move {
            let which = t % 4;
            for i in 0..6usize {
                let cl = &clients[(t + i) % clients.len()];
                // Read, then CAS-increment; a conflict or a moving session is retried.
                let Ok(s) = cl.get(&token).await else { continue };
                token = s.token.clone();
                let n: u64 = std::str::from_utf8(s.get("n").unwrap()).unwrap().parse().unwrap();
                let w = Write::new().put("n", (n + 1).to_string()).if_version(s.version());
                match cl.write(&token, w).await {
                    Ok(s) => {
                        token = s.token;
                        acked[which].fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => assert!(
                        matches!(
                            e.code(),
                            Some(
                                ErrorCode::VersionConflict
                                    | ErrorCode::OwnerUnreachable
                                    | ErrorCode::TooManyHops
                            )
                        ),
                        "unexpected error {e}"
                    ),
                }
            }
        }));
    }
    for t in tasks {
        timeout(Duration::from_secs(60), t).await.unwrap().unwrap();
    }
    let mut total = 0;
    for (i, t) in tokens.iter().enumerate() {
        let s = clients[1].get(t).await.unwrap();
        let n: u64 = std::str::from_utf8(s.get("n").unwrap()).unwrap().parse().unwrap();
        assert_eq!(
            n,
            acknowledged[i].load(Ordering::Relaxed),
            "session {i}: counter != acknowledged increments"
        );
        assert_eq!(
            s.version(),
            1 + n,
            "every acknowledged write bumped the version once"
        );
        total += n;
    }
    assert!(total > 0, "no increment was acknowledged at all");
    stop(nodes).await;
}

/// A TCP proxy in front of a node's peer port that cuts the connection, without
/// forwarding it, the first time the node sends a COPY_DATA reply (opcode 0xC3).
async fn lossy_proxy(target: Arc<std::sync::OnceLock<SocketAddr>>) -> (SocketAddr, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let dropped = Arc::new(AtomicU64::new(0));
    let d = dropped.clone();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let d = d.clone();
            let target = target.clone();
            tokio::spawn(async move {
                let Some(&target) = target.get() else { return };
                let Ok(mut outbound) = TcpStream::connect(target).await else {
                    return;
                };
                let (mut ir, mut iw) = inbound.split();
                let (mut or, mut ow) = outbound.split();
                let up = tokio::io::copy(&mut ir, &mut ow);
                let down = async {
                    // Forward frame by frame so a COPY_DATA can be recognised and lost.
                    let mut buf = BytesMut::new();
                    loop {
                        while let Ok(Some(frame)) = decode_frame(&mut buf, 1 << 24) {
                            if frame.opcode == sessync_proto::peer_op::COPY_DATA
                                && d.fetch_add(1, Ordering::SeqCst) == 0
                            {
                                return; // lost, and the connection goes down with it
                            }
                            let msg = PeerMessage::decode_frame(&frame, &Default::default()).unwrap();
                            let mut out = BytesMut::new();
                            msg.encode_frame(frame.request_id, &mut out);
                            if iw.write_all(&out).await.is_err() {
                                return;
                            }
                        }
                        match or.read_buf(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {}
                        }
                    }
                };
                tokio::select! { _ = up => {}, _ = down => {} }
            });
        }
    });
    (addr, dropped)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_copy_reply_loses_nothing() {
    // Node A advertises the lossy proxy, so tokens (and B's dial) go through it.
    let mut cfg_a = config();
    let target = Arc::new(std::sync::OnceLock::new());
    let (proxy, dropped) = lossy_proxy(target.clone()).await;
    cfg_a.advertise = Some(proxy);
    let a = sessync_server::start(cfg_a).await.unwrap();
    target.set(a.peer_addr()).unwrap();
    let b = sessync_server::start(config()).await.unwrap();
    let ca = client(a.client_addr()).await;
    let cb = client(b.client_addr()).await;
    let s = ca.create(attrs(&[("k", "v")])).await.unwrap();
    let s = ca.write(&s.token, Write::new().put("k2", "v2")).await.unwrap();

    let got = timeout(WAIT, cb.get(&s.token)).await.unwrap().unwrap();
    assert_eq!(
        dropped.load(Ordering::SeqCst),
        2,
        "one reply lost, the retry's reply delivered"
    );
    assert_eq!(got.attributes, attrs(&[("k", "v"), ("k2", "v2")]));
    assert_eq!(got.version(), 2);
    // A no longer serves it (the handover completed), B does, once.
    let again = cb.get(&got.token).await.unwrap();
    assert_eq!(again.version(), 2);
    stop(vec![a, b]).await;
}

async fn read_peer_message(stream: &mut TcpStream, buf: &mut BytesMut) -> Option<PeerMessage> {
    loop {
        if let Ok(Some(frame)) = decode_frame(buf, 1 << 20) {
            return PeerMessage::decode_frame(&frame, &Default::default()).ok();
        }
        match timeout(WAIT, stream.read_buf(buf)).await.unwrap() {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

async fn send(stream: &mut TcpStream, id: u64, msg: PeerMessage) {
    let mut out = BytesMut::new();
    msg.encode_frame(id, &mut out);
    let _ = stream.write_all(&out).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_secret_and_replayed_handshake_get_no_data() {
    let nodes = cluster(1).await;
    let node = &nodes[0];
    let c = client(node.client_addr()).await;
    let s = c.create(attrs(&[("secret", "data")])).await.unwrap();
    let id = sessync_proto::Token::verify(&s.token, &keys())
        .unwrap()
        .session_id;
    let me: SocketAddr = "127.0.0.1:9".parse().unwrap();

    // 1. Wrong secret: the node's challenge proof fails for us, and our proof fails for it.
    let wrong = Keyring::single(b"a-completely-different-secret!!!").unwrap();
    let mut st = TcpStream::connect(node.peer_addr()).await.unwrap();
    let mut buf = BytesMut::new();
    let (dialler, hello) = Dialler::start(wrong, [1; 16], me);
    send(&mut st, 1, hello).await;
    let challenge = read_peer_message(&mut st, &mut buf).await.unwrap();
    assert!(
        dialler.handle_challenge(challenge.clone()).is_err(),
        "we must not accept the node's proof either"
    );
    // Send a bogus proof anyway, then a COPY: only AUTH_FAILED comes back, then EOF.
    send(&mut st, 2, PeerMessage::AuthProof { proof: [0; 32] }).await;
    send(
        &mut st,
        3,
        PeerMessage::Copy {
            session_id: id,
            last_transfer: 0,
        },
    )
    .await;
    match read_peer_message(&mut st, &mut buf).await {
        Some(PeerMessage::Error(e)) => assert_eq!(e.code, sessync_proto::ErrorCode::AuthFailed),
        other => panic!("expected AUTH_FAILED, got {other:?}"),
    }
    assert_eq!(
        read_peer_message(&mut st, &mut buf).await,
        None,
        "connection must close with no data"
    );

    // 2. COPY without any handshake: refused, no data.
    let mut st = TcpStream::connect(node.peer_addr()).await.unwrap();
    let mut buf = BytesMut::new();
    send(
        &mut st,
        1,
        PeerMessage::Copy {
            session_id: id,
            last_transfer: 0,
        },
    )
    .await;
    assert!(matches!(
        read_peer_message(&mut st, &mut buf).await,
        Some(PeerMessage::Error(_))
    ));
    assert_eq!(read_peer_message(&mut st, &mut buf).await, None);

    // 3. Replay: record a real handshake (right secret), then replay its frames.
    let mut st = TcpStream::connect(node.peer_addr()).await.unwrap();
    let mut buf = BytesMut::new();
    let (dialler, hello) = Dialler::start(keys(), [2; 16], me);
    send(&mut st, 1, hello.clone()).await;
    let challenge = read_peer_message(&mut st, &mut buf).await.unwrap();
    let (_, proof) = dialler.handle_challenge(challenge).unwrap();
    send(&mut st, 2, proof.clone()).await;
    assert_eq!(
        read_peer_message(&mut st, &mut buf).await,
        Some(PeerMessage::AuthOk)
    );
    drop(st);
    let mut st = TcpStream::connect(node.peer_addr()).await.unwrap();
    let mut buf = BytesMut::new();
    send(&mut st, 1, hello).await;
    let _fresh_challenge = read_peer_message(&mut st, &mut buf).await.unwrap();
    send(&mut st, 2, proof).await;
    send(
        &mut st,
        3,
        PeerMessage::Copy {
            session_id: id,
            last_transfer: 0,
        },
    )
    .await;
    match read_peer_message(&mut st, &mut buf).await {
        Some(PeerMessage::Error(e)) => assert_eq!(e.code, sessync_proto::ErrorCode::AuthFailed),
        other => panic!("replayed proof accepted: {other:?}"),
    }
    assert_eq!(read_peer_message(&mut st, &mut buf).await, None);

    // The session never left: still served at its owner.
    assert_eq!(c.get(&s.token).await.unwrap().get("secret").unwrap(), "data");
    let _ = FrameCodec::new(1);
    let _ = SessionId::random();
    stop(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_owner_gives_owner_unreachable_promptly() {
    let dir = temp_dir("killed-owner");
    let secret = secret_file(&dir);
    let secret = secret.to_str().unwrap();
    let mut a = spawn_node(&["--secret-file", secret, "--peer-timeout", "1s"]);
    let b = spawn_node(&["--secret-file", secret, "--peer-timeout", "1s"]);
    let ca = client(a.client).await;
    let cb = client(b.client).await;
    let on_a = ca.create(attrs(&[("owner", "a")])).await.unwrap();
    let on_b = cb.create(attrs(&[("owner", "b")])).await.unwrap();
    // Warm the link B -> A so the kill hits an established connection too.
    let moved = cb.create(attrs(&[])).await.unwrap();
    let _ = ca.get(&moved.token).await.unwrap();

    a.child.kill().unwrap();
    a.child.wait().unwrap();

    let started = Instant::now();
    let err = timeout(WAIT, cb.get(&on_a.token)).await.unwrap().unwrap_err();
    let took = started.elapsed();
    assert_eq!(err.code(), Some(ErrorCode::OwnerUnreachable), "{err}");
    assert!(
        took < Duration::from_secs(3),
        "took {took:?}, peer timeout is 1 s"
    );
    // A second try fails fast too (backoff), and B's own sessions are unaffected.
    let err = timeout(WAIT, cb.get(&on_a.token)).await.unwrap().unwrap_err();
    assert!(matches!(err, ClientError::Server { .. }));
    assert_eq!(cb.get(&on_b.token).await.unwrap().get("owner").unwrap(), "b");
    let _ = std::fs::remove_dir_all(&dir);
}
