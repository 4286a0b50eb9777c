//! The Rust SDK against a real node in this process, over real sockets.
//!
//! Every test starts its own node on OS-chosen 127.0.0.1 ports and shuts it down; every
//! network wait is bounded by a timeout, so a hang fails the test instead of stalling it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sessync_client::{Attributes, Client, ClientConfig, ClientError, CreateOptions, ErrorCode, Session};
use sessync_proto::{Keyring, SessionId, Token};
use sessync_server::{EvictPolicy, NodeConfig, NodeHandle};

/// Bound for any single network step of a test.
const STEP: Duration = Duration::from_secs(5);

fn node_config() -> NodeConfig {
    NodeConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
        Keyring::single(&[7u8; 32]).unwrap(),
    )
}

async fn start_with(tweak: impl FnOnce(&mut NodeConfig)) -> NodeHandle {
    let mut config = node_config();
    tweak(&mut config);
    bounded(sessync_server::start(config)).await.unwrap()
}

async fn start() -> NodeHandle {
    start_with(|_| {}).await
}

async fn stop(node: NodeHandle) {
    assert!(
        node.shutdown(Duration::from_secs(5)).await,
        "node did not shut down in time"
    );
}

/// Awaits `f`, failing the test if it takes longer than [`STEP`].
async fn bounded<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(STEP, f)
        .await
        .expect("network step did not finish in time")
}

async fn connect(addr: SocketAddr) -> Client {
    bounded(Client::connect(addr, ClientConfig::default()))
        .await
        .unwrap()
}

fn attrs(pairs: &[(&str, &str)]) -> Attributes {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), Bytes::copy_from_slice(v.as_bytes())))
        .collect()
}

/// The server error code of a failed call; panics on success or a local error.
fn code<T: std::fmt::Debug>(r: Result<T, ClientError>) -> ErrorCode {
    match r {
        Err(ClientError::Server { code, .. }) => code,
        other => panic!("expected a server error, got {other:?}"),
    }
}

fn stat(stats: &[(String, u64)], name: &str) -> u64 {
    stats
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| *v)
        .unwrap_or_else(|| panic!("no counter {name} in {stats:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_create_get_set_touch_rotate_destroy() {
    let node = start().await;
    let c = connect(node.client_addr()).await;

    let created = bounded(c.create(attrs(&[("user", "alice"), ("role", "admin"), ("cart", "0")])))
        .await
        .unwrap();
    assert!(created.token_changed);
    assert_eq!(created.version(), 1);
    assert_eq!(created.get("user"), Some(&Bytes::from_static(b"alice")));
    let token = created.token.clone();

    let got = bounded(c.get(&token)).await.unwrap();
    assert_eq!(got.token, token);
    assert!(!got.token_changed);
    assert_eq!(got.attributes, created.attributes);
    assert_eq!(got.version(), 1);

    let set = bounded(
        c.set(&token)
            .put("cart", "3")
            .put("csrf", Bytes::from(vec![0u8, 255, 1]))
            .delete("role")
            .send(),
    )
    .await
    .unwrap();
    assert_eq!(set.version(), 2);
    assert!(set.attributes.is_empty(), "SET replies carry no attributes");
    assert_eq!(set.token, token);

    let only = bounded(c.get_only(&token, &["cart", "role", "csrf"]))
        .await
        .unwrap();
    assert_eq!(
        only.attributes,
        [
            ("cart".to_string(), Bytes::from_static(b"3")),
            ("csrf".to_string(), Bytes::from(vec![0u8, 255, 1])),
        ]
        .into_iter()
        .collect::<Attributes>()
    );

    let before = only.meta.last_access_ms;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let touched = bounded(c.touch(&token)).await.unwrap();
    assert!(touched.attributes.is_empty());
    assert_eq!(touched.version(), 2, "TOUCH does not change the version");
    assert!(touched.meta.last_access_ms > before);

    let rotated = bounded(c.rotate(&token)).await.unwrap();
    assert!(rotated.token_changed);
    assert_ne!(rotated.token, token);
    assert_eq!(rotated.version(), 3, "ROTATE bumps the version");
    assert_eq!(rotated.get("user"), Some(&Bytes::from_static(b"alice")));
    assert_eq!(rotated.get("cart"), Some(&Bytes::from_static(b"3")));
    assert_eq!(rotated.get("role"), None);
    assert_eq!(code(bounded(c.get(&token)).await), ErrorCode::SessionNotFound);
    let new_token = rotated.token.clone();
    let after = bounded(c.get(&new_token)).await.unwrap();
    assert_eq!(after.attributes, rotated.attributes);
    assert_eq!(after.version(), 3);

    bounded(c.destroy(&new_token)).await.unwrap();
    assert_eq!(code(bounded(c.get(&new_token)).await), ErrorCode::SessionNotFound);
    stop(node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_and_set() {
    let node = start().await;
    let c = connect(node.client_addr()).await;
    let s = bounded(c.create(attrs(&[("n", "0")]))).await.unwrap();
    let t = s.token;

    let ok = bounded(c.set(&t).put("n", "1").if_version(1).send())
        .await
        .unwrap();
    assert_eq!(ok.version(), 2);

    // A writer that read version 1 and lost the race: refused, nothing changed.
    let stale = bounded(c.set(&t).put("n", "stale").delete("x").if_version(1).send()).await;
    assert_eq!(code(stale), ErrorCode::VersionConflict);
    let now = bounded(c.get(&t)).await.unwrap();
    assert_eq!(now.version(), 2);
    assert_eq!(now.get("n"), Some(&Bytes::from_static(b"1")));

    // A future version is just as wrong.
    assert_eq!(
        code(bounded(c.set(&t).put("n", "x").if_version(9).send()).await),
        ErrorCode::VersionConflict
    );
    // The connection is still fine after error replies.
    let ok = bounded(c.set(&t).put("n", "2").if_version(2).send())
        .await
        .unwrap();
    assert_eq!(ok.version(), 3);
    stop(node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_by_idle_ttl() {
    let node = start().await;
    let c = connect(node.client_addr()).await;
    let opts = CreateOptions {
        idle_ttl: Some(Duration::from_millis(300)),
        max_lifetime: None,
    };
    let s = bounded(c.create_with(attrs(&[("a", "1")]), opts)).await.unwrap();
    assert_eq!(s.meta.idle_ttl_ms, 300);
    assert_eq!(s.meta.absolute_deadline_ms, 0);
    let t = s.token;

    tokio::time::sleep(Duration::from_millis(150)).await;
    let first = bounded(c.get(&t)).await.unwrap();
    assert!(
        first.meta.last_access_ms >= s.meta.last_access_ms + 100,
        "GET refreshes"
    );
    // 350 ms after creation: past the original deadline, within the refreshed one.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let second = bounded(c.get(&t)).await.unwrap();
    assert!(second.meta.last_access_ms > s.meta.created_ms + 300);

    // Idle for longer than the TTL: gone.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(code(bounded(c.get(&t)).await), ErrorCode::SessionNotFound);
    assert_eq!(code(bounded(c.touch(&t)).await), ErrorCode::SessionNotFound);
    stop(node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_by_absolute_lifetime() {
    let node = start().await;
    let c = connect(node.client_addr()).await;
    let opts = CreateOptions {
        idle_ttl: Some(Duration::from_secs(60)),
        max_lifetime: Some(Duration::from_millis(400)),
    };
    let started = Instant::now();
    let s = bounded(c.create_with(Attributes::new(), opts)).await.unwrap();
    assert_eq!(s.meta.absolute_deadline_ms, s.meta.created_ms + 400);
    let t = s.token;

    // Kept busy every 100 ms: alive while under the lifetime...
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let r = bounded(c.touch(&t)).await;
        if started.elapsed() < Duration::from_millis(380) {
            r.unwrap();
        }
    }
    // ...and gone after it, however active.
    tokio::time::sleep(
        Duration::from_millis(400).saturating_sub(started.elapsed()) + Duration::from_millis(60),
    )
    .await;
    assert_eq!(code(bounded(c.touch(&t)).await), ErrorCode::SessionNotFound);
    assert_eq!(code(bounded(c.get(&t)).await), ErrorCode::SessionNotFound);
    stop(node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capacity_reject() {
    let node = start_with(|c| {
        c.max_sessions = 3;
        c.evict = EvictPolicy::Reject;
    })
    .await;
    let c = connect(node.client_addr()).await;
    let mut tokens = Vec::new();
    for i in 0..3 {
        let s = bounded(c.create(attrs(&[("i", &i.to_string())]))).await.unwrap();
        tokens.push(s.token);
    }
    assert_eq!(
        code(bounded(c.create(Attributes::new())).await),
        ErrorCode::Capacity
    );
    // Nothing was evicted.
    for t in &tokens {
        bounded(c.get(t)).await.unwrap();
    }
    // Room again after a DESTROY.
    bounded(c.destroy(&tokens[0])).await.unwrap();
    bounded(c.create(Attributes::new())).await.unwrap();
    stop(node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capacity_evicts_soonest_expiry() {
    let node = start_with(|c| {
        c.max_sessions = 3;
        c.evict = EvictPolicy::SoonestExpiry;
    })
    .await;
    let c = connect(node.client_addr()).await;
    let ttl = |secs| CreateOptions {
        idle_ttl: Some(Duration::from_secs(secs)),
        max_lifetime: None,
    };
    let long1 = bounded(c.create_with(Attributes::new(), ttl(600))).await.unwrap();
    let short = bounded(c.create_with(Attributes::new(), ttl(30))).await.unwrap();
    let long2 = bounded(c.create_with(Attributes::new(), ttl(600))).await.unwrap();
    let fourth = bounded(c.create_with(Attributes::new(), ttl(600))).await.unwrap();

    assert_eq!(
        code(bounded(c.get(&short.token)).await),
        ErrorCode::SessionNotFound
    );
    for s in [&long1, &long2, &fourth] {
        bounded(c.get(&s.token)).await.unwrap();
    }
    let stats = bounded(c.stats()).await.unwrap();
    assert_eq!(stat(&stats, "evicted"), 1);
    assert_eq!(stat(&stats, "sessions"), 3);
    stop(node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destroy_leaves_a_tombstone() {
    let node = start().await;
    let c = connect(node.client_addr()).await;
    let s = bounded(c.create(attrs(&[("user", "bob")]))).await.unwrap();
    let t = s.token;
    bounded(c.destroy(&t)).await.unwrap();

    // A slow write that arrives after the logout must not bring the session back.
    assert_eq!(
        code(bounded(c.set(&t).put("user", "mallory").send()).await),
        ErrorCode::SessionNotFound
    );
    assert_eq!(code(bounded(c.get(&t)).await), ErrorCode::SessionNotFound);
    assert_eq!(code(bounded(c.destroy(&t)).await), ErrorCode::SessionNotFound);
    let stats = bounded(c.stats()).await.unwrap();
    assert_eq!(stat(&stats, "sessions"), 0);
    assert_eq!(stat(&stats, "tombstones"), 1);
    stop(node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_or_altered_tokens_are_refused() {
    let node = start().await;
    let c = connect(node.client_addr()).await;
    let s = bounded(c.create(attrs(&[("k", "v")]))).await.unwrap();

    // One character changed in the middle of a genuine token.
    let mut altered = s.token.clone().into_bytes();
    let mid = altered.len() / 2;
    altered[mid] = if altered[mid] == b'A' { b'B' } else { b'A' };
    let altered = String::from_utf8(altered).unwrap();
    assert_eq!(code(bounded(c.get(&altered)).await), ErrorCode::InvalidToken);

    // A well-formed token naming this node, signed with another secret.
    let forged = Token {
        session_id: SessionId::random(),
        generation: 0,
        owner: node.node().advertise(),
        backups: Vec::new(),
    }
    .sign(&Keyring::single(&[8u8; 32]).unwrap());
    assert_eq!(code(bounded(c.get(&forged)).await), ErrorCode::InvalidToken);
    assert_eq!(
        code(bounded(c.set(&forged).put("k", "x").send()).await),
        ErrorCode::InvalidToken
    );
    assert_eq!(
        code(bounded(c.destroy("not a token")).await),
        ErrorCode::InvalidToken
    );

    // The genuine token still works and nothing changed.
    let now = bounded(c.get(&s.token)).await.unwrap();
    assert_eq!(now.version(), 1);
    stop(node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_is_required_and_checked() {
    let node = start_with(|c| c.password = Some("correct horse".into())).await;
    let addr = node.client_addr();
    let with = |p: Option<&str>| ClientConfig {
        password: p.map(str::to_string),
        ..ClientConfig::default()
    };

    let wrong = bounded(Client::connect(addr, with(Some("battery staple")))).await;
    assert_eq!(code(wrong), ErrorCode::AuthFailed);
    let missing = bounded(Client::connect(addr, with(None))).await;
    assert_eq!(code(missing), ErrorCode::AuthRequired);

    let c = bounded(Client::connect(addr, with(Some("correct horse"))))
        .await
        .unwrap();
    bounded(c.ping()).await.unwrap();
    let s = bounded(c.create(attrs(&[("a", "b")]))).await.unwrap();
    bounded(c.get(&s.token)).await.unwrap();
    stop(node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_pipelined_requests_on_one_connection() {
    let node = start().await;
    let c = connect(node.client_addr()).await;
    let s = bounded(c.create(attrs(&[("seed", "x")]))).await.unwrap();
    let before = bounded(c.stats()).await.unwrap();

    let mut tasks = Vec::new();
    for i in 0..1000u32 {
        let c = c.clone();
        let t = s.token.clone();
        tasks.push(tokio::spawn(async move {
            if i % 2 == 0 {
                let r = c.set(&t).put(format!("k{i}"), i.to_string()).send().await?;
                Ok::<_, ClientError>((true, r))
            } else {
                let r = c.get_only(&t, &["seed"]).await?;
                assert_eq!(r.get("seed"), Some(&Bytes::from_static(b"x")));
                Ok((false, r))
            }
        }));
    }
    let mut sets = 0;
    let mut gets = 0;
    let mut versions = Vec::new();
    for task in tasks {
        let (was_set, r): (bool, Session) = bounded(task).await.unwrap().unwrap();
        if was_set {
            sets += 1;
            versions.push(r.version());
        } else {
            gets += 1;
        }
    }
    assert_eq!((sets, gets), (500, 500));
    // Every SET was applied exactly once: versions 2..=501, each seen by one writer.
    versions.sort_unstable();
    assert_eq!(versions, (2..=501).collect::<Vec<u64>>());
    let all = bounded(c.get(&s.token)).await.unwrap();
    assert_eq!(all.version(), 501);
    assert_eq!(all.attributes.len(), 501);
    assert_eq!(all.get("k998"), Some(&Bytes::from_static(b"998")));

    // All of it went over the one connection.
    let after = bounded(c.stats()).await.unwrap();
    assert_eq!(
        stat(&after, "connections_total"),
        stat(&before, "connections_total")
    );
    assert!(stat(&after, "requests") >= stat(&before, "requests") + 1001);
    stop(node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_concurrent_connections() {
    let node = start().await;
    let addr = node.client_addr();
    let mut tasks = Vec::new();
    for i in 0..100u32 {
        tasks.push(tokio::spawn(async move {
            let c = Client::connect(addr, ClientConfig::default()).await?;
            let s = c.create(attrs(&[("client", &i.to_string())])).await?;
            let g = c.get(&s.token).await?;
            assert_eq!(g.get("client"), Some(&Bytes::from(i.to_string())));
            let w = c.set(&s.token).put("done", "yes").if_version(1).send().await?;
            Ok::<_, ClientError>(w.version())
        }));
    }
    for task in tasks {
        assert_eq!(bounded(task).await.unwrap().unwrap(), 2);
    }
    let c = connect(addr).await;
    let stats = bounded(c.stats()).await.unwrap();
    assert!(stat(&stats, "connections_total") >= 100, "{stats:?}");
    assert_eq!(stat(&stats, "sessions"), 100);
    assert_eq!(stat(&stats, "created"), 100);
    stop(node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_gone_fails_fast_then_reconnects() {
    let node = start().await;
    let addr = node.client_addr();
    let config = ClientConfig {
        request_timeout: Duration::from_secs(2),
        connect_timeout: Duration::from_secs(1),
        ..ClientConfig::default()
    };
    let c = bounded(Client::connect(addr, config)).await.unwrap();
    bounded(c.ping()).await.unwrap();
    stop(node).await;

    // The node is gone: an error, promptly (not the request timeout, and no hang).
    let started = Instant::now();
    let r = bounded(c.ping()).await;
    assert!(
        matches!(r, Err(ClientError::Disconnected | ClientError::Io(_))),
        "{r:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    // And again, now that the loss is known: the reconnect attempt is refused.
    let r = bounded(c.ping()).await;
    assert!(matches!(r, Err(ClientError::Io(_))), "{r:?}");

    // A node comes back on the same address: the next call reconnects transparently.
    let node = start_with(|cfg| cfg.client_addr = addr).await;
    bounded(c.ping()).await.unwrap();
    let s = bounded(c.create(attrs(&[("after", "restart")]))).await.unwrap();
    bounded(c.get(&s.token)).await.unwrap();
    let stats = bounded(c.stats()).await.unwrap();
    assert_eq!(stat(&stats, "connections_total"), 1);
    stop(node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_listener_times_out() {
    // Accepts connections and never says a word.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let config = ClientConfig {
        connect_timeout: Duration::from_millis(300),
        request_timeout: Duration::from_millis(300),
        ..ClientConfig::default()
    };
    let started = Instant::now();
    let r = bounded(Client::connect(addr, config)).await;
    assert!(matches!(r, Err(ClientError::Timeout)), "{r:?}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(2),
        "{took:?}"
    );
    hold.abort();
}
