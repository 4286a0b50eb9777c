//! Client authentication over real sockets: what HELLO does when it is late, repeated or
//! wrong (protocol.md 4.1), and the per-address back-off on wrong passwords.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use common::*;
use sessync_proto::{decode_frame, ErrorCode, Limits, Message, Request, Response, PROTOCOL_VERSION};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::timeout;

const PASSWORD: &str = "correct horse";

async fn node(backoff_max: Duration) -> sessync_server::NodeHandle {
    let mut c = config();
    c.password = Some(PASSWORD.into());
    c.auth_backoff_max = backoff_max;
    sessync_server::start(c).await.unwrap()
}

/// A raw client connection from a chosen loopback address.
struct Raw {
    s: TcpStream,
    input: BytesMut,
}

impl Raw {
    async fn connect_from(from: &str, to: SocketAddr) -> Raw {
        let sock = TcpSocket::new_v4().unwrap();
        sock.bind(format!("{from}:0").parse().unwrap()).unwrap();
        let s = timeout(WAIT, sock.connect(to)).await.unwrap().unwrap();
        Raw {
            s,
            input: BytesMut::new(),
        }
    }

    async fn send(&mut self, id: u64, req: Request) {
        let mut out = BytesMut::new();
        req.encode_frame(id, &mut out);
        self.s.write_all(&out).await.unwrap();
    }

    /// The next reply, or `None` when the node closed the connection.
    async fn recv(&mut self) -> Option<(u64, Response)> {
        loop {
            if let Some(f) = decode_frame(&mut self.input, 1 << 20).unwrap() {
                return Some((
                    f.request_id,
                    Response::decode_frame(&f, &Limits::DEFAULT).unwrap(),
                ));
            }
            let n = timeout(WAIT, self.s.read_buf(&mut self.input))
                .await
                .unwrap()
                .unwrap_or(0);
            if n == 0 {
                return None;
            }
        }
    }

    async fn call(&mut self, id: u64, req: Request) -> Option<Response> {
        self.send(id, req).await;
        let (rid, r) = self.recv().await?;
        assert!(
            rid == id || matches!(r, Response::Error(_)),
            "reply to {rid}, expected {id}"
        );
        Some(r)
    }
}

fn hello(password: Option<&str>) -> Request {
    hello_v(PROTOCOL_VERSION, password)
}

fn hello_v(version: u8, password: Option<&str>) -> Request {
    Request::Hello {
        min_version: version,
        max_version: version,
        client_name: "auth-test".into(),
        password: password.map(str::to_string),
    }
}

fn code(r: Option<Response>) -> Option<ErrorCode> {
    match r {
        Some(Response::Error(e)) => Some(e.code),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_may_come_late_and_again_a_wrong_one_closes_and_version_is_checked_first() {
    let n = node(Duration::from_millis(5)).await;
    let addr = n.client_addr();
    // Before HELLO: AUTH_REQUIRED, and the connection stays open; a late HELLO is accepted.
    let mut c = Raw::connect_from("127.0.0.1", addr).await;
    assert_eq!(
        code(c.call(1, Request::Ping(b"x".to_vec().into())).await),
        Some(ErrorCode::AuthRequired)
    );
    assert_eq!(
        code(c.call(2, hello(None)).await),
        Some(ErrorCode::AuthRequired),
        "no password given"
    );
    assert!(matches!(
        c.call(3, hello(Some(PASSWORD))).await,
        Some(Response::HelloOk { .. })
    ));
    // A second HELLO with the right password: HELLO_OK again, the connection goes on.
    assert!(matches!(
        c.call(4, hello(Some(PASSWORD))).await,
        Some(Response::HelloOk { .. })
    ));
    assert!(matches!(
        c.call(5, Request::Stats).await,
        Some(Response::Stats(_))
    ));
    // A second HELLO with a wrong password: AUTH_FAILED, and the authenticated connection closes.
    assert_eq!(
        code(c.call(6, hello(Some("guess"))).await),
        Some(ErrorCode::AuthFailed)
    );
    assert!(c.recv().await.is_none(), "closed after AUTH_FAILED");

    // Version before password: an unsupported version with a wrong password is
    // UNSUPPORTED_VERSION (and does not count as a guess).
    let mut c = Raw::connect_from("127.0.0.1", addr).await;
    assert_eq!(
        code(c.call(1, hello_v(PROTOCOL_VERSION + 1, Some("guess"))).await),
        Some(ErrorCode::UnsupportedVersion)
    );
    assert!(c.recv().await.is_none(), "closed after UNSUPPORTED_VERSION");
    let stats = n.node().stats_snapshot();
    assert_eq!(
        stat(&stats, "auth_failures"),
        1,
        "only the wrong password counted"
    );
    assert!(n.shutdown(WAIT).await);
}

/// The documented back-off: the k-th failure in a row makes the next attempt wait
/// min(1 ms * 2^(k-1), max) (protocol.md 4.1).
fn documented_delay(k: u32, max: Duration) -> Duration {
    Duration::from_millis(1)
        .saturating_mul(1u32 << (k - 1).min(30))
        .min(max)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_wrong_passwords_take_the_back_off_while_other_addresses_are_served_at_once() {
    let max = Duration::from_millis(5);
    let n = node(max).await;
    let addr = n.client_addr();
    const ATTEMPTS: u32 = 1000;
    const PARALLEL: u32 = 50;
    let started = Instant::now();
    let attackers: Vec<_> = (0..PARALLEL)
        .map(|_| {
            tokio::spawn(async move {
                for _ in 0..ATTEMPTS / PARALLEL {
                    let mut c = Raw::connect_from("127.0.0.1", addr).await;
                    assert_eq!(
                        code(c.call(1, hello(Some("guess"))).await),
                        Some(ErrorCode::AuthFailed)
                    );
                }
            })
        })
        .collect();
    // While the guessing goes on, a client from another address is served at once.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut served = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let mut c = Raw::connect_from("127.0.0.2", addr).await;
        assert!(matches!(
            c.call(1, hello(Some(PASSWORD))).await,
            Some(Response::HelloOk { .. })
        ));
        served.push(t.elapsed());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for a in attackers {
        timeout(Duration::from_secs(60), a).await.unwrap().unwrap();
    }
    let took = started.elapsed();
    // Attempts already past their turn when a failure is recorded escape that failure's
    // wait: at most PARALLEL of them, so at least ATTEMPTS - PARALLEL waits are served.
    let floor: Duration = (1..=ATTEMPTS - PARALLEL).map(|k| documented_delay(k, max)).sum();
    assert!(
        took >= floor,
        "{ATTEMPTS} wrong HELLOs took {took:?}, the back-off is {floor:?}"
    );
    assert!(
        served.iter().all(|d| *d < Duration::from_millis(250)),
        "the other address waited: {served:?}"
    );
    let stats = n.node().stats_snapshot();
    assert_eq!(stat(&stats, "auth_failures"), u64::from(ATTEMPTS));
    assert!(n.shutdown(WAIT).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_connections_per_address_are_capped() {
    let mut c = config();
    c.password = Some(PASSWORD.into());
    c.max_unauthenticated_per_address = 4;
    let n = sessync_server::start(c).await.unwrap();
    let addr = n.client_addr();
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(Raw::connect_from("127.0.0.1", addr).await);
    }
    // The fifth from the same address is refused; another address is not.
    let mut fifth = Raw::connect_from("127.0.0.1", addr).await;
    assert_eq!(
        code(fifth.recv().await.map(|(_, r)| r)),
        Some(ErrorCode::TooManyConnections)
    );
    let mut other = Raw::connect_from("127.0.0.3", addr).await;
    assert!(matches!(
        other.call(1, hello(Some(PASSWORD))).await,
        Some(Response::HelloOk { .. })
    ));
    // Authenticating frees the slot.
    assert!(matches!(
        held[0].call(1, hello(Some(PASSWORD))).await,
        Some(Response::HelloOk { .. })
    ));
    let mut sixth = Raw::connect_from("127.0.0.1", addr).await;
    assert!(matches!(
        sixth.call(1, hello(Some(PASSWORD))).await,
        Some(Response::HelloOk { .. })
    ));
    assert_eq!(stat(&n.node().stats_snapshot(), "unauthenticated_refused"), 1);
    drop(held);
    assert!(n.shutdown(WAIT).await);
}
