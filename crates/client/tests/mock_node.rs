//! The client against a scripted fake node: reply order, connection loss, timeouts and
//! frame limits, which a well-behaved real node never shows on demand.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use sessync_client::{Client, ClientConfig, ClientError, ErrorCode};
use sessync_proto::{
    decode_frame, ErrorReply, Limits, Message, Request, Response, SessionMeta, SessionReply, PROTOCOL_VERSION,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

const STEP: Duration = Duration::from_secs(5);

async fn bounded<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(STEP, f)
        .await
        .expect("network step did not finish in time")
}

/// One accepted connection, driven by the test.
struct Fake {
    stream: TcpStream,
    input: BytesMut,
}

impl Fake {
    async fn accept(listener: &TcpListener) -> Fake {
        let (stream, _) = bounded(listener.accept()).await.unwrap();
        Fake {
            stream,
            input: BytesMut::new(),
        }
    }

    /// The next request, or `None` when the client closed the connection.
    async fn read(&mut self) -> Option<(u64, Request)> {
        loop {
            if let Some(f) = decode_frame(&mut self.input, Limits::DEFAULT.max_frame_len).unwrap() {
                return Some((f.request_id, Request::decode_frame(&f, &Limits::DEFAULT).unwrap()));
            }
            if bounded(self.stream.read_buf(&mut self.input)).await.unwrap() == 0 {
                return None;
            }
        }
    }

    async fn send(&mut self, id: u64, resp: Response) {
        let mut out = BytesMut::new();
        resp.encode_frame(id, &mut out);
        bounded(self.stream.write_all(&out)).await.unwrap();
    }

    /// Reads HELLO and accepts it, announcing `max_frame_len`.
    async fn hello(&mut self, max_frame_len: u32) {
        let (id, req) = self.read().await.unwrap();
        assert!(
            matches!(
                req,
                Request::Hello {
                    min_version: PROTOCOL_VERSION,
                    max_version: PROTOCOL_VERSION,
                    ..
                }
            ),
            "{req:?}"
        );
        self.send(
            id,
            Response::HelloOk {
                version: PROTOCOL_VERSION,
                server_name: "fake".into(),
                max_frame_len,
            },
        )
        .await;
    }
}

async fn listen() -> (TcpListener, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    (l, a)
}

fn quick() -> ClientConfig {
    ClientConfig {
        request_timeout: Duration::from_millis(500),
        connect_timeout: Duration::from_millis(500),
        ..ClientConfig::default()
    }
}

fn session(token: Option<&str>, version: u64) -> Response {
    Response::Session(SessionReply {
        token: token.map(str::to_string),
        meta: SessionMeta {
            version,
            ..SessionMeta::default()
        },
        attributes: Default::default(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_in_any_order_reach_their_callers() {
    let (listener, addr) = listen().await;
    let node = tokio::spawn(async move {
        let mut f = Fake::accept(&listener).await;
        f.hello(1 << 20).await;
        let mut got = Vec::new();
        while got.len() < 3 {
            got.push(f.read().await.unwrap());
        }
        // Answer in reverse order of arrival; each GET's token is echoed as a version.
        for (id, req) in got.into_iter().rev() {
            let Request::Get { token, .. } = req else {
                panic!("expected GET, got {req:?}")
            };
            let v: u64 = token.parse().unwrap();
            let new_token = (v == 2).then_some("replaced");
            f.send(id, session(new_token, v)).await;
        }
        f
    });
    let c = bounded(Client::connect(addr, quick())).await.unwrap();
    let (a, b, d) = bounded(async { tokio::join!(c.get("1"), c.get("2"), c.get("3")) }).await;
    let (a, b, d) = (a.unwrap(), b.unwrap(), d.unwrap());
    assert_eq!((a.version(), b.version(), d.version()), (1, 2, 3));
    assert_eq!((a.token.as_str(), a.token_changed), ("1", false));
    assert_eq!((b.token.as_str(), b.token_changed), ("replaced", true));
    bounded(node).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_connection_fails_in_flight_and_never_resends_a_write() {
    let (listener, addr) = listen().await;
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel();
    let node = tokio::spawn(async move {
        // First connection: takes a SET, then dies without answering.
        let mut f = Fake::accept(&listener).await;
        f.hello(1 << 20).await;
        let (_, req) = f.read().await.unwrap();
        seen_tx.send(req).unwrap();
        drop(f);
        // Second connection: must see HELLO, then only the next call's request.
        let mut f = Fake::accept(&listener).await;
        f.hello(1 << 20).await;
        let (id, req) = f.read().await.unwrap();
        seen_tx.send(req).unwrap();
        f.send(id, Response::Stats(vec![("x".into(), 1)])).await;
        f
    });
    let c = bounded(Client::connect(addr, quick())).await.unwrap();
    let started = Instant::now();
    let r = bounded(c.set("tok").put("k", "v").send()).await;
    assert!(matches!(r, Err(ClientError::Disconnected)), "{r:?}");
    assert!(
        started.elapsed() < Duration::from_millis(400),
        "not prompt: {:?}",
        started.elapsed()
    );

    // The loss is known by now, so the next call reconnects first.
    let stats = bounded(c.stats()).await.unwrap();
    assert_eq!(stats, vec![("x".to_string(), 1)]);
    assert!(matches!(bounded(seen_rx.recv()).await, Some(Request::Set { .. })));
    assert!(matches!(bounded(seen_rx.recv()).await, Some(Request::Stats)));
    let mut f = bounded(node).await.unwrap();
    // And nothing else arrives on the new connection: the SET was not resent.
    drop(c);
    assert!(f.read().await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_timeout_then_late_reply_is_discarded() {
    let (listener, addr) = listen().await;
    let (go_tx, mut go_rx) = mpsc::unbounded_channel::<()>();
    let node = tokio::spawn(async move {
        let mut f = Fake::accept(&listener).await;
        f.hello(1 << 20).await;
        let (late_id, _) = f.read().await.unwrap();
        // Hold the reply until the client has given up on it.
        bounded(go_rx.recv()).await.unwrap();
        f.send(late_id, session(None, 99)).await;
        let (id, _) = f.read().await.unwrap();
        f.send(id, session(None, 7)).await;
        f
    });
    let config = ClientConfig {
        request_timeout: Duration::from_millis(200),
        ..quick()
    };
    let c = bounded(Client::connect(addr, config)).await.unwrap();
    let started = Instant::now();
    let r = bounded(c.touch("t")).await;
    assert!(matches!(r, Err(ClientError::Timeout)), "{r:?}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(180) && took < Duration::from_secs(1),
        "{took:?}"
    );
    go_tx.send(()).unwrap();
    // The late reply (version 99) must not be taken for this one's (version 7).
    let s = bounded(c.touch("t")).await.unwrap();
    assert_eq!(s.version(), 7);
    bounded(node).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_frames_are_refused_both_ways() {
    let (listener, addr) = listen().await;
    let node = tokio::spawn(async move {
        let mut f = Fake::accept(&listener).await;
        f.hello(1024).await;
        // The oversized SET never arrives; the PING after it does.
        let (id, req) = f.read().await.unwrap();
        let Request::Ping(p) = req else {
            panic!("expected PING, got {req:?}")
        };
        f.send(id, Response::Pong(p)).await;
        // Then a reply whose length prefix is over the client's limit.
        let (_, _) = f.read().await.unwrap();
        let mut out = BytesMut::new();
        out.put_u32(64 * 1024 * 1024);
        out.put_slice(&[0u8; 32]);
        bounded(f.stream.write_all(&out)).await.unwrap();
        f
    });
    let c = bounded(Client::connect(addr, quick())).await.unwrap();
    let r = bounded(c.set("t").put("big", Bytes::from(vec![1u8; 2048])).send()).await;
    assert!(matches!(r, Err(ClientError::InvalidRequest(_))), "{r:?}");
    bounded(c.ping()).await.unwrap();
    let r = bounded(c.get("t")).await;
    assert!(matches!(r, Err(ClientError::Disconnected)), "{r:?}");
    let _f = bounded(node).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusal_before_hello_is_reported() {
    let (listener, addr) = listen().await;
    let node = tokio::spawn(async move {
        let mut f = Fake::accept(&listener).await;
        f.send(
            0,
            Response::Error(ErrorReply::new(ErrorCode::TooManyConnections, "full")),
        )
        .await;
        f
    });
    let r = bounded(Client::connect(addr, quick())).await;
    assert!(
        matches!(
            r,
            Err(ClientError::Server {
                code: ErrorCode::TooManyConnections,
                ..
            })
        ),
        "{r:?}"
    );
    let _f = bounded(node).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_and_delete_of_one_name_is_refused_locally() {
    let (listener, addr) = listen().await;
    let node = tokio::spawn(async move {
        let mut f = Fake::accept(&listener).await;
        f.hello(1 << 20).await;
        let (id, req) = f.read().await.unwrap();
        assert!(matches!(req, Request::Ping(_)), "{req:?}");
        let Request::Ping(p) = req else { unreachable!() };
        f.send(id, Response::Pong(p)).await;
        f
    });
    let c = bounded(Client::connect(addr, quick())).await.unwrap();
    let mut w = sessync_client::Write::new().put("a", "1");
    w.deletes.push("a".into());
    let r = bounded(c.write("t", w)).await;
    assert!(matches!(r, Err(ClientError::InvalidRequest(_))), "{r:?}");
    // The builder resolves the same conflict by keeping the last instruction.
    bounded(c.ping()).await.unwrap();
    let _f = bounded(node).await.unwrap();
}
