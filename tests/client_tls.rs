//! TLS on the client port, with the Rust SDK, over real sockets: verified by default,
//! wrong server names and wrong CAs refused, client certificates when asked for, and bad
//! input (plain text on a TLS port, TLS on a plain port, a truncated handshake) refused
//! and counted without disturbing other connections.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use bytes::BytesMut;
use common::certs::Ca;
use common::*;
use sessync_client::{Client, ClientConfig, TlsOptions};
use sessync_proto::{Message, Request, PROTOCOL_VERSION};
use sessync_server::{NodeHandle, TlsFiles};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

async fn tls_node(files: TlsFiles) -> NodeHandle {
    let mut c = config();
    c.client_tls = Some(files);
    c.frame_timeout = Duration::from_secs(1);
    sessync_server::start(c).await.unwrap()
}

fn tls_client_config(ca: &str, cert: Option<(&str, &str)>, name: &str) -> ClientConfig {
    ClientConfig {
        tls: Some(
            TlsOptions::from_pem(
                ca.as_bytes(),
                cert.map(|(c, k)| (c.as_bytes(), k.as_bytes())),
                name,
            )
            .unwrap(),
        ),
        ..ClientConfig::default()
    }
}

async fn connect(n: &NodeHandle, config: ClientConfig) -> Result<Client, sessync_client::ClientError> {
    timeout(WAIT, Client::connect(n.client_addr(), config))
        .await
        .unwrap()
}

fn server_files(ca: &Ca, dir: &std::path::Path, client_ca: bool) -> TlsFiles {
    let mut f = ca.files(dir, "node", false);
    if !client_ca {
        f.ca = None;
    }
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_sdk_speaks_tls_and_verifies_the_node() {
    let dir = temp_dir("client-tls-sdk");
    let ca = Ca::new("client CA");
    let n = tls_node(server_files(&ca, &dir, false)).await;
    for name in ["localhost", "127.0.0.1"] {
        let c = connect(&n, tls_client_config(&ca.pem, None, name)).await.unwrap();
        let s = timeout(WAIT, c.create(attrs(&[("user", "alice")])))
            .await
            .unwrap()
            .unwrap();
        let r = timeout(WAIT, c.get(&s.token)).await.unwrap().unwrap();
        assert_eq!(r.get("user").unwrap(), "alice");
        // Many pipelined requests over TLS.
        let gets: Vec<_> = (0..200).map(|_| c.get(&s.token)).collect();
        for g in gets {
            timeout(WAIT, g).await.unwrap().unwrap();
        }
    }
    // A name the certificate does not carry, and a CA that did not sign it: refused.
    let e = connect(&n, tls_client_config(&ca.pem, None, "wrong.example"))
        .await
        .err()
        .unwrap();
    assert!(e.to_string().contains("certificate"), "{e}");
    let other = Ca::new("other CA");
    let e = connect(&n, tls_client_config(&other.pem, None, "localhost"))
        .await
        .err()
        .unwrap();
    assert!(e.to_string().contains("certificate"), "{e}");
    // The node sees the client's alert a moment after the client gave up.
    eventually(|| stat(&n.node().stats_snapshot(), "tls_failures") >= 2).await;
    assert!(n.shutdown(WAIT).await);
}

/// Waits (bounded) until `cond` holds.
async fn eventually(cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "condition never held");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_are_required_with_a_client_ca() {
    let dir = temp_dir("client-tls-mtls");
    let ca = Ca::new("client CA");
    let n = tls_node(server_files(&ca, &dir, true)).await;
    assert!(connect(&n, tls_client_config(&ca.pem, None, "localhost"))
        .await
        .is_err());
    let (cert, key) = ca.leaf("app", false);
    let c = connect(&n, tls_client_config(&ca.pem, Some((&cert, &key)), "localhost"))
        .await
        .unwrap();
    timeout(WAIT, c.ping()).await.unwrap().unwrap();
    let other = Ca::new("other CA");
    let (cert, key) = other.leaf("intruder", false);
    let e = connect(&n, tls_client_config(&ca.pem, Some((&cert, &key)), "localhost")).await;
    // TLS 1.3 reports a refused client certificate after the client's handshake ends: the
    // failure shows at connect (HELLO) either way.
    assert!(e.is_err());
    eventually(|| stat(&n.node().stats_snapshot(), "tls_failures") >= 2).await;
    assert!(n.shutdown(WAIT).await);
}

fn hello_frame() -> BytesMut {
    let mut out = BytesMut::new();
    Request::Hello {
        min_version: PROTOCOL_VERSION,
        max_version: PROTOCOL_VERSION,
        client_name: "plain".into(),
        password: None,
    }
    .encode_frame(1, &mut out);
    out
}

/// Reads until the node closes (bounded); returns what it sent.
async fn until_closed(s: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let _ = timeout(WAIT, s.read_to_end(&mut got)).await.unwrap();
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_counted_and_others_do_not_notice() {
    let dir = temp_dir("client-tls-bad");
    let ca = Ca::new("client CA");
    let tls = tls_node(server_files(&ca, &dir, false)).await;
    let plain = sessync_server::start(config()).await.unwrap();
    // A TLS client that stays connected through everything below.
    let bystander = connect(&tls, tls_client_config(&ca.pem, None, "localhost"))
        .await
        .unwrap();
    let plain_bystander = client(plain.client_addr()).await;

    // Plain text on the TLS port: the TLS handshake fails, no sessync frame comes back.
    let mut s = TcpStream::connect(tls.client_addr()).await.unwrap();
    s.write_all(&hello_frame()).await.unwrap();
    let got = until_closed(&mut s).await;
    assert!(
        got.is_empty() || got[0] == 0x15,
        "a TLS alert or nothing: {got:?}"
    );
    // A truncated handshake: the first bytes of a ClientHello, then silence.
    let mut s = TcpStream::connect(tls.client_addr()).await.unwrap();
    s.write_all(&[0x16, 0x03, 0x01, 0x00, 0xc8, 0x01, 0x00])
        .await
        .unwrap();
    until_closed(&mut s).await;
    assert_eq!(stat(&tls.node().stats_snapshot(), "tls_failures"), 2);

    // TLS on the plain port: refused with a framing error, counted as such.
    let e = timeout(
        WAIT,
        Client::connect(plain.client_addr(), tls_client_config(&ca.pem, None, "localhost")),
    )
    .await
    .unwrap();
    assert!(e.is_err());
    assert_eq!(stat(&plain.node().stats_snapshot(), "tls_on_plain_port"), 1);

    // Nobody else noticed.
    timeout(WAIT, bystander.ping()).await.unwrap().unwrap();
    timeout(WAIT, plain_bystander.ping()).await.unwrap().unwrap();
    assert!(tls.shutdown(WAIT).await && plain.shutdown(WAIT).await);
}
