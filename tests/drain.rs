//! Graceful leave (issue 14, protocol.md 17): `sessync drain` and SIGTERM hand every
//! session and backup copy a node holds to other members, over real node processes.
//! - `sessync drain` hands everything over: the node exits 0, and every session is read
//!   back through the other members with the token the client last had (naming the node
//!   that left), data intact.
//! - A drain that cannot finish (no member left to hand to) exits non-zero, and the log
//!   says what was left.
//! - A request that reaches the leaving node, during its drain, for a session it already
//!   handed over is served.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod fault;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use fault::*;
use sessync_client::Client;
use tokio::time::timeout;

/// Creates sessions `from..to` through `client`, each with `i=<index>`; returns their
/// tokens.
async fn create(client: &Client, from: usize, to: usize) -> Vec<String> {
    let mut tokens = Vec::with_capacity(to - from);
    for i in from..to {
        let s = timeout(WAIT, client.create(attrs(&[("i", &i.to_string())])))
            .await
            .unwrap()
            .unwrap();
        tokens.push(s.token);
    }
    tokens
}

/// Reads every session (through `clients` in turn) and checks its `i`.
async fn check_all(clients: &[&Client], tokens: &[String], dir: &std::path::Path) {
    for (i, t) in tokens.iter().enumerate() {
        let c = clients[i % clients.len()];
        let s = timeout(WAIT, c.get(t))
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("session {i} lost: {e}; logs in {}", dir.display()));
        assert_eq!(s.get("i").unwrap().as_ref(), i.to_string().as_bytes());
    }
}

fn stats_of(stats: &[(String, u64)], name: &str) -> u64 {
    stat(stats, name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessync_drain_hands_everything_over_and_exits_0() {
    let dir = temp_dir("drain-all");
    let secret = secret_file(&dir);
    let mut nodes = start_nodes(3, 1, secret.to_str().unwrap(), &dir);
    let c0 = connect(nodes[0].client).await;
    let c1 = connect(nodes[1].client).await;
    let c2 = connect(nodes[2].client).await;
    // Owned by node 0 (backups on 1 and 2), and owned by 1 (some backed up on node 0).
    let mut tokens = create(&c0, 0, 300).await;
    tokens.extend(create(&c1, 300, 500).await);
    let before = c0.stats().await.unwrap();
    assert!(stats_of(&before, "sessions") >= 300);
    assert!(
        stats_of(&before, "backups") > 0,
        "node 0 holds backup copies: {before:?}"
    );

    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_sessync"))
        .args(["drain", "--node", &nodes[0].client.to_string(), "--wait", "30s"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "sessync drain: {} {}; logs in {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        dir.display()
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("drained"));
    let status = nodes[0].wait_exit(Duration::from_secs(15));
    assert!(
        status.success(),
        "node exit status after a complete drain: {status}"
    );
    println!("drained 300 sessions and their copies in {:?}", started.elapsed());

    // Every session, through the members that stayed, with the tokens from before (those
    // of node 0's sessions name node 0, which is gone).
    check_all(&[&c1, &c2], &tokens, &dir).await;
    let taken = stats_of(&c1.stats().await.unwrap(), "drain_taken")
        + stats_of(&c2.stats().await.unwrap(), "drain_taken");
    assert!(taken >= 300, "the members took node 0's sessions: {taken}");
    let replaced = stats_of(&c1.stats().await.unwrap(), "drain_holders_replaced")
        + stats_of(&c2.stats().await.unwrap(), "drain_holders_replaced");
    assert!(replaced > 0, "node 1 replaced node 0 as a holder of its copies");

    // Node 0 comes back empty at the same address: the old tokens still find everything,
    // through it too.
    let peers: Vec<_> = nodes.iter().map(|n| n.peer).collect();
    nodes[0].start(&peers, 1, secret.to_str().unwrap(), &dir.join("node0-again.log"));
    let c0 = connect(nodes[0].client).await;
    check_all(&[&c0, &c1, &c2], &tokens, &dir).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_that_cannot_finish_exits_non_zero_and_logs_what_is_left() {
    let dir = temp_dir("drain-stuck");
    let secret = secret_file(&dir);
    let mut nodes = start_nodes_with(2, 0, secret.to_str().unwrap(), &dir, &["--drain-timeout", "3s"]);
    let c0 = connect(nodes[0].client).await;
    create(&c0, 0, 50).await;
    // The only other member is gone: nothing can be handed over.
    nodes[1].kill();
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_sessync"))
        .args(["drain", "--node", &nodes[0].client.to_string(), "--wait", "20s"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "sessync drain reports the node's error: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("SHUTTING_DOWN"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status = nodes[0].wait_exit(Duration::from_secs(15));
    assert_eq!(status.code(), Some(3), "exit status of an incomplete drain");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "bounded by --drain-timeout"
    );
    let log = std::fs::read_to_string(dir.join("node0.log")).unwrap();
    assert!(
        log.contains("drain incomplete") && log.contains("sessions_left=50"),
        "the log says what was left: {log}"
    );

    // SIGTERM the same way: exit status 3.
    let peers: Vec<_> = nodes.iter().map(|n| n.peer).collect();
    nodes[0].start_with(
        &peers,
        0,
        secret.to_str().unwrap(),
        &dir.join("node0-again.log"),
        &["--drain-timeout", "3s"],
    );
    let c0 = connect(nodes[0].client).await;
    create(&c0, 0, 5).await;
    let status = nodes[0].terminate(Duration::from_secs(15));
    assert_eq!(
        status.code(),
        Some(3),
        "exit status of an incomplete drain after SIGTERM"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_during_the_drain_for_a_handed_over_session_is_served() {
    let dir = temp_dir("drain-serve");
    let secret = secret_file(&dir);
    let mut nodes = start_nodes_with(3, 1, secret.to_str().unwrap(), &dir, &["--drain-timeout", "40s"]);
    let c0 = connect(nodes[0].client).await;
    let c1 = connect(nodes[1].client).await;
    let tokens = create(&c0, 0, 200).await;
    // Node 2 stops answering: every handover to node 1 waits for a REPLICATE to node 2 to
    // time out, so the drain takes seconds and requests reach node 0 in the middle of it.
    nodes[2].pause(true);
    let drain = tokio::spawn({
        let addr = nodes[0].client.to_string();
        async move {
            tokio::task::spawn_blocking(move || {
                Command::new(env!("CARGO_BIN_EXE_sessync"))
                    .args(["drain", "--node", &addr, "--wait", "60s"])
                    .output()
                    .unwrap()
            })
            .await
            .unwrap()
        }
    });
    // Wait (bounded) until node 0 has handed some sessions over and still has some left.
    let deadline = Instant::now() + WAIT;
    loop {
        // A busy machine may time a STATS out: asked again.
        if let (Ok(s), Ok(s0)) = (c1.stats().await, c0.stats().await) {
            if stats_of(&s, "drain_taken") >= 5 && stats_of(&s0, "drain_left") > 0 {
                break;
            }
        }
        assert!(Instant::now() < deadline, "the drain never got under way");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let st = c0.stats().await.unwrap();
    assert_eq!(stats_of(&st, "draining"), 1);
    let pulled_before = stats_of(&st, "copies_received");
    // Sessions through the leaving node: handed over or not, each is served, until the
    // drain's second phase begins (every session was handed over once): from then on a
    // request that would bring a session back gets SHUTTING_DOWN (protocol.md 17.2).
    let mut served = 0;
    for (i, t) in tokens.iter().enumerate() {
        match timeout(WAIT, c0.get(t)).await.unwrap() {
            Ok(s) => {
                assert_eq!(s.get("i").unwrap().as_ref(), i.to_string().as_bytes());
                served += 1;
            }
            Err(sessync_client::ClientError::Server {
                code: sessync_client::ErrorCode::ShuttingDown,
                ..
            }) => break,
            Err(e) => panic!(
                "session {i} not served during the drain: {e}; logs in {}",
                dir.display()
            ),
        }
    }
    let st = c0.stats().await.unwrap();
    assert_eq!(
        stats_of(&st, "draining"),
        1,
        "still draining: the requests came during the drain"
    );
    assert!(
        stats_of(&st, "copies_received") > pulled_before,
        "some of the {served} requests served were for sessions already handed over: {st:?}"
    );
    nodes[2].pause(false);
    let out = drain.await.unwrap();
    assert!(
        out.status.success(),
        "sessync drain: {}; logs in {}",
        String::from_utf8_lossy(&out.stderr),
        dir.display()
    );
    assert!(nodes[0].wait_exit(Duration::from_secs(15)).success());
    let c2 = connect(nodes[2].client).await;
    check_all(&[&c1, &c2], &tokens, &dir).await;
}
