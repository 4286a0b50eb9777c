//! `--evict soonest-expiry` over a real node's client socket: a full node evicts the
//! sessions closest to their deadline, in deadline order (ARCHITECTURE.md, "table/").
//!
//! The node runs in this process on OS-chosen 127.0.0.1 ports; every network wait is
//! bounded by a timeout.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::time::Duration;

use sessync_client::{Attributes, Client, ClientConfig, ClientError, CreateOptions, ErrorCode};
use sessync_proto::Keyring;
use sessync_server::{EvictPolicy, NodeConfig};

/// Bound for any single network step of the test.
const STEP: Duration = Duration::from_secs(5);

async fn bounded<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(STEP, f)
        .await
        .expect("network step did not finish in time")
}

/// 400 sessions fill the node, each with an idle TTL one second longer than the one
/// before (so their deadlines are in creation order, whatever the few milliseconds the
/// creates take); 200 more with a long TTL must evict exactly the 200 with the shortest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_node_evicts_in_deadline_order() {
    let full = 400;
    let more = 200;
    let mut config = NodeConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
        Keyring::single(&[7u8; 32]).unwrap(),
    );
    config.max_sessions = full;
    config.evict = EvictPolicy::SoonestExpiry;
    let node = bounded(sessync_server::start(config)).await.unwrap();
    let c = bounded(Client::connect(node.client_addr(), ClientConfig::default()))
        .await
        .unwrap();
    let ttl = |secs: u64| CreateOptions {
        idle_ttl: Some(Duration::from_secs(secs)),
        max_lifetime: None,
    };
    let mut first = Vec::new();
    for i in 0..full as u64 {
        let s = bounded(c.create_with(Attributes::new(), ttl(600 + i)))
            .await
            .unwrap();
        first.push(s.token);
    }
    let mut later = Vec::new();
    for _ in 0..more {
        let s = bounded(c.create_with(Attributes::new(), ttl(100_000)))
            .await
            .unwrap();
        later.push(s.token);
    }
    let mut wrong = Vec::new();
    for (i, token) in first.iter().enumerate() {
        let gone = match bounded(c.get(token)).await {
            Ok(_) => false,
            Err(ClientError::Server {
                code: ErrorCode::SessionNotFound,
                ..
            }) => true,
            Err(e) => panic!("session {i}: {e}"),
        };
        if gone != (i < more) {
            wrong.push(i);
        }
    }
    assert!(wrong.is_empty(), "evicted out of deadline order: {wrong:?}");
    for token in &later {
        bounded(c.get(token)).await.unwrap();
    }
    let stats = bounded(c.stats()).await.unwrap();
    let stat = |name: &str| {
        stats
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| *v)
            .unwrap_or_else(|| panic!("no {name} in STATS"))
    };
    assert_eq!(stat("evicted"), more as u64);
    assert_eq!(stat("sessions"), full as u64);
    assert!(
        node.shutdown(Duration::from_secs(5)).await,
        "node did not shut down in time"
    );
}
