//! Rolling restart under steady load (issue 14): three `sessync node` processes, 3000
//! sessions of which 1000 are never touched during the restarts, writers appending by
//! compare-and-set through random nodes with their latest tokens. Each node in turn gets
//! SIGTERM (it drains: hands its sessions and backup copies to the others), exits, is
//! restarted empty on the same addresses and becomes ready; then the same round again.
//! Afterwards no session is lost and no acknowledged append is lost; the test prints how
//! many requests failed (retryably) while a node was down.
//!
//! `cargo test` runs it with `--replicas` 0, 1 and 2 in turn (about 30 s each on two
//! cores); `SESSYNC_ROLLING_REPLICAS=1` (a comma-separated list) runs only those given.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::needless_range_loop)]

mod common;
mod fault;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use fault::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sessync_client::{ClientError, ErrorCode};
use tokio::time::timeout;

const NODES: usize = 3;
const SESSIONS: usize = 3000;
const IDLE: usize = 1000;
/// Writer tasks; each appends to its share of the active sessions in turn.
const WRITERS: usize = 40;
/// Restart rounds (each node once per round).
const ROUNDS: usize = 2;

/// What the cluster is doing (the `down` flag): all up, a node draining, a node down.
const UP: u64 = 0;
const DRAINING: u64 = 1;
const DOWN: u64 = 2;

/// Counts of what the writers saw.
#[derive(Default)]
struct Counts {
    /// Requests that failed (retryably) while some node was draining.
    failed_while_draining: AtomicU64,
    /// Requests that failed (retryably) while some node was down.
    failed_while_down: AtomicU64,
    /// Requests that failed (retryably) while every node was up.
    failed_while_up: AtomicU64,
    /// Appends tried (a GET and a compare-and-set SET each).
    requests: AtomicU64,
}

async fn rolling_restart(replicas: u8) {
    let dir = temp_dir(&format!("rolling-r{replicas}"));
    let secret = secret_file(&dir);
    let secret = secret.to_str().unwrap().to_string();
    let mut nodes = start_nodes(NODES, replicas, &secret, &dir);
    let peers: Vec<_> = nodes.iter().map(|n| n.peer).collect();
    let clients = connect_all(&nodes).await;
    let clients = Arc::new(clients);
    // Sessions through every node in turn, so each node owns a third.
    let mut tokens = Vec::with_capacity(SESSIONS);
    for i in 0..SESSIONS {
        let s = timeout(
            WAIT,
            clients[i % NODES].create(attrs(&[("list", ""), ("i", &i.to_string())])),
        )
        .await
        .unwrap()
        .unwrap();
        tokens.push(s.token);
    }
    let idle: Vec<String> = tokens[..IDLE].to_vec();
    let active: Vec<String> = tokens[IDLE..].to_vec();
    let stop = Arc::new(AtomicBool::new(false));
    let down = Arc::new(AtomicU64::new(UP));
    let counts = Arc::new(Counts::default());
    let per = active.len().div_ceil(WRITERS);
    let writers: Vec<_> = active
        .chunks(per)
        .enumerate()
        .map(|(w, chunk)| {
            let (clients, counts, down) = (clients.clone(), counts.clone(), down.clone());
            let pick = {
                let counts = counts.clone();
                move |rng: &mut StdRng| {
                    counts.requests.fetch_add(1, Ordering::Relaxed);
                    let at = rng.gen_range(0..clients.len());
                    (at, clients[at].clone())
                }
            };
            // A retryable failure, counted by what the cluster was doing.
            let on_retry = move || {
                let failed = match down.load(Ordering::Relaxed) {
                    DRAINING => &counts.failed_while_draining,
                    DOWN => &counts.failed_while_down,
                    _ => &counts.failed_while_up,
                };
                failed.fetch_add(1, Ordering::Relaxed);
            };
            tokio::spawn(writer_over(
                chunk.to_vec(),
                0x5e55 + w as u64,
                stop.clone(),
                pick,
                on_retry,
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let started = Instant::now();
    let mut drains = Vec::new();
    for round in 0..ROUNDS {
        for i in 0..NODES {
            let t = Instant::now();
            down.store(DRAINING, Ordering::Relaxed);
            // SIGTERM: the node drains, then exits. Blocking waits run off the runtime.
            let status = nodes[i].terminate_in_background(Duration::from_secs(30)).await;
            let drain_time = t.elapsed();
            assert!(
                status.success(),
                "round {round}, node {i}: exit status {status} (the drain did not hand everything over); logs in {}",
                dir.display()
            );
            down.store(DOWN, Ordering::Relaxed);
            let log = dir.join(format!("node{i}-round{round}.log"));
            nodes[i].start_in_background(&peers, replicas, &secret, log).await;
            down.store(UP, Ordering::Relaxed);
            println!(
                "replicas {replicas}: round {round}, node {i}: drained and exited 0 in {drain_time:?}, back in {:?}",
                t.elapsed()
            );
            drains.push(drain_time);
            // Settle a moment under load before the next.
            tokio::time::sleep(Duration::from_millis(1500)).await;
        }
    }
    let restart_time = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let mut ledgers = Vec::new();
    for w in writers {
        ledgers.extend(timeout(Duration::from_secs(60), w).await.unwrap().unwrap());
    }
    let (acked, unknown) = check_ledgers(&ledgers, &clients, &dir).await;
    // The idle sessions: each through a node at random, with the token from its creation.
    let mut rng = StdRng::seed_from_u64(7);
    let mut lost_idle = Vec::new();
    for (i, t) in idle.iter().enumerate() {
        let c = &clients[rng.gen_range(0..NODES)];
        let mut got = None;
        for _ in 0..20 {
            match timeout(WAIT, c.get(t)).await.unwrap() {
                Ok(s) => {
                    got = Some(s);
                    break;
                }
                Err(ClientError::Server {
                    code: ErrorCode::SessionNotFound,
                    ..
                }) => break,
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        match got {
            Some(s) => assert_eq!(s.get("i").unwrap().as_ref(), i.to_string().as_bytes()),
            None => lost_idle.push(i),
        }
    }
    println!(
        "replicas {replicas}: {} restarts in {restart_time:?} (drains {drains:?}); {} appends tried, {} failed (retryably) while a node was draining, {} while it was down (restarting), {} while all were up; {acked} acknowledged appends, {unknown} of unknown outcome; sessions lost: 0 of {} active, {} of {IDLE} idle",
        ROUNDS * NODES,
        counts.requests.load(Ordering::Relaxed),
        counts.failed_while_draining.load(Ordering::Relaxed),
        counts.failed_while_down.load(Ordering::Relaxed),
        counts.failed_while_up.load(Ordering::Relaxed),
        SESSIONS - IDLE,
        lost_idle.len(),
    );
    assert!(
        lost_idle.is_empty(),
        "idle sessions lost: {} (first {:?}); logs in {}",
        lost_idle.len(),
        &lost_idle[..lost_idle.len().min(10)],
        dir.display()
    );
    assert!(acked > 0, "the writers got appends acknowledged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_loses_no_session_and_no_acknowledged_append() {
    let values = std::env::var("SESSYNC_ROLLING_REPLICAS").unwrap_or_else(|_| "0,1,2".into());
    for r in values.split(',').filter(|s| !s.is_empty()) {
        rolling_restart(r.trim().parse().expect("SESSYNC_ROLLING_REPLICAS: numbers 0..=2")).await;
    }
}

/// Repair (issue 14, protocol.md 17.4): with `--replicas 1`, each node in turn is killed
/// with SIGKILL (no drain) and restarted empty, and the cluster is given time to repair
/// before the next: the copies the dead node held are made again by their owners, and the
/// sessions it owned are taken over by the holders of their copies. No idle session (one
/// nobody touches) is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_kill_with_time_to_repair_loses_no_idle_session() {
    const IDLE_SESSIONS: usize = 600;
    let dir = temp_dir("rolling-kill");
    let secret = secret_file(&dir);
    let secret = secret.to_str().unwrap().to_string();
    let mut nodes = start_nodes(NODES, 1, &secret, &dir);
    let peers: Vec<_> = nodes.iter().map(|n| n.peer).collect();
    let clients = connect_all(&nodes).await;
    let mut tokens = Vec::with_capacity(IDLE_SESSIONS);
    for i in 0..IDLE_SESSIONS {
        let s = timeout(WAIT, clients[i % NODES].create(attrs(&[("i", &i.to_string())])))
            .await
            .unwrap()
            .unwrap();
        tokens.push(s.token);
    }
    // The members have seen each other (EPOCH, once a second) before the first kill.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for round in 0..NODES {
        nodes[round].kill();
        let log = dir.join(format!("node{round}-again.log"));
        nodes[round].start(&peers, 1, &secret, &log);
        // Repaired: every session owned by a live node again, none under-replicated.
        let what = format!("round {round}");
        let took = wait_repaired(&clients, IDLE_SESSIONS as u64, Duration::ZERO, &what, &dir).await;
        println!("kill -9 of node {round}: repaired in {took:?}");
    }
    let mut rng = StdRng::seed_from_u64(11);
    for (i, t) in tokens.iter().enumerate() {
        let c = &clients[rng.gen_range(0..NODES)];
        let s = timeout(WAIT, c.get(t))
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("idle session {i} lost: {e}; logs in {}", dir.display()));
        assert_eq!(s.get("i").unwrap().as_ref(), i.to_string().as_bytes());
    }
}
