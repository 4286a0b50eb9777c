//! Chaos: three `sessync node` processes with one (or two) backups per session; clients append to
//! per-session lists through random nodes while the node owning the most sessions is
//! killed with SIGKILL and restarted, or paused with SIGSTOP and resumed, several times.
//! Afterwards every acknowledged append is present, in order, and no two nodes
//! acknowledged the same `if_version`; appends whose outcome the client could not know
//! (INDETERMINATE, a connection lost mid-request) are counted apart and may or may not be
//! there. Also here: the minimal paused-owner case of issue 13 as a regression test, and a
//! fault-free load that must promote nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod fault;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use fault::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sessync_client::{Attributes, Bytes, ClientError, ErrorCode};
use tokio::time::timeout;

const NODES: usize = 3;
const SESSIONS: usize = 9;
const KILLS: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_owners_loses_no_acknowledged_append() {
    chaos(1, Fault::Kill { at_once: 1 }, KILLS, SESSIONS, "chaos").await;
}

/// With two backups per session, the two busiest owners die at once: the third node has a
/// copy of everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_two_nodes_at_once_with_two_backups_loses_no_acknowledged_append() {
    chaos(2, Fault::Kill { at_once: 2 }, KILLS, SESSIONS, "chaos2").await;
}

/// The busiest owner is paused far longer than the peer timeout: its sessions are taken
/// over from their backups while it sleeps, and when it wakes up it still believes it owns
/// them. Fencing must keep it from acknowledging anything (issue 13: 6 acknowledged
/// appends lost, and as many double acknowledgements, before fencing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pausing_an_owner_for_20s_loses_no_acknowledged_append() {
    chaos(
        1,
        Fault::Pause(Duration::from_secs(20)),
        1,
        4 * SESSIONS,
        "pause20",
    )
    .await;
}

/// Issue 13's minimal case, as a regression test: create at node 0; pause node 0; write
/// `cart=A` through the node that holds no copy (it takes the session over from the
/// backup and acknowledges version 2); resume node 0. Node 0 must not acknowledge a
/// compare-and-set on version 1 (it did: `cart=B` as version 2, then `cart=C` as 3, and
/// the copies diverged for good). Afterwards every node reads the same state, holding
/// every acknowledged write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_owner_acknowledges_nothing_of_its_stale_copy() {
    let (dir, nodes, clients, created, token) = one_session_at_node_0("pause-min").await;
    let bystander = (0..3)
        .find(|&i| i != 0 && nodes[i].peer != token.backups[0])
        .unwrap();

    nodes[0].pause(true);
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Taken over from the backup while node 0 sleeps. A refusal (the takeover raced the
    // peer timeout) changed nothing: ask again.
    // The takeover is a claim, so its version jumps past 1 (protocol.md 12.3): read it,
    // then compare-and-set on what was read.
    let mut a = None;
    for _ in 0..10 {
        let Ok(read) = clients[bystander].get(&created.token).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        match clients[bystander]
            .set(&read.token)
            .put("cart", "A")
            .if_version(read.meta.version)
            .send()
            .await
        {
            Ok(w) => {
                a = Some(w);
                break;
            }
            Err(e) => {
                assert!(!e.to_string().contains("INDETERMINATE"), "{e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    let a = a.expect("the write through the bystander was acknowledged");
    assert!(
        a.meta.version > 2,
        "the takeover's version jump: {}",
        a.meta.version
    );
    nodes[0].pause(false);
    tokio::time::sleep(Duration::from_millis(100)).await;

    // Node 0 wakes up with its stale copy and the client's old token.
    let stale = clients[0]
        .set(&created.token)
        .put("cart", "B")
        .if_version(1)
        .send()
        .await;
    assert!(
        stale.is_err(),
        "a resumed owner acknowledged a compare-and-set on a superseded version: {stale:?}"
    );
    // An unconditional write through node 0 is either acknowledged (then it must last) or
    // not; what it must never do is land on a copy that loses.
    let mut expected = ("A".to_string(), a.meta.version);
    match clients[0].set(&created.token).put("cart", "C").send().await {
        Ok(w) => expected = ("C".to_string(), w.meta.version),
        Err(e) => eprintln!("unconditional write through node 0 not acknowledged: {e}"),
    }
    // Every node reads the same state within a bounded time.
    let deadline = Instant::now() + Duration::from_secs(5);
    for (i, c) in clients.iter().enumerate() {
        let mut last: Option<String>;
        loop {
            match c.get(&a.token).await {
                Ok(s) => {
                    let got = (
                        String::from_utf8_lossy(s.get("cart").unwrap()).to_string(),
                        s.meta.version,
                    );
                    if got == expected {
                        break;
                    }
                    last = Some(format!("{got:?}"));
                }
                Err(e) => last = Some(e.to_string()),
            }
            assert!(
                Instant::now() < deadline,
                "node {i} does not read {expected:?}: {last:?}; logs in {}",
                dir.display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    drop(nodes);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A move whose receiver places its copy slowly (the session's backup holder is paused, so
/// the placement waits out a peer timeout): a request at the giver meanwhile waits for the
/// receiver to install the copy and is served from it; the giver takes nothing back and
/// nothing is promoted. Before, the receiver answered LOCATE with NOT_FOUND while it placed
/// the copy, which reads as "it restarted and lost it": the giver took its copy back, a
/// rival claim of a live handover (tests/drain.rs failed about one debug run in three,
/// OWNER_UNREACHABLE for a session that was only being moved).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_at_the_giver_while_the_receiver_places_the_copy_is_served() {
    let (dir, nodes, clients, created, token) = one_session_at_node_0("slow-placement").await;
    let holder = (1..3).find(|&i| nodes[i].peer == token.backups[0]).unwrap();
    let receiver = 3 - holder;
    nodes[holder].pause(true);
    // The move: the receiver copies the session from node 0 and places its copy on node 0
    // and on the paused holder before it installs it.
    let moved = tokio::spawn({
        let (c, t) = (clients[receiver].clone(), created.token.clone());
        async move { timeout(WAIT, c.get(&t)).await }
    });
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(Ok(s)) = timeout(Duration::from_secs(2), clients[0].stats()).await {
            if stat(&s, "copies_served") >= 1 {
                break;
            }
        }
        assert!(Instant::now() < deadline, "the receiver never asked for the copy");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Node 0 points at the receiver, which is still waiting for the paused holder.
    let at_giver = timeout(WAIT, clients[0].get(&created.token)).await.unwrap();
    let at_receiver = timeout(WAIT, moved).await.unwrap().unwrap().unwrap();
    nodes[holder].pause(false);
    let at_giver =
        at_giver.unwrap_or_else(|e| panic!("the request at the giver: {e}; logs in {}", dir.display()));
    assert_eq!(at_giver.get("cart").unwrap().as_ref(), b"0");
    assert_eq!(at_receiver.unwrap().get("cart").unwrap().as_ref(), b"0");
    for (i, c) in clients.iter().enumerate() {
        let s = timeout(WAIT, c.stats()).await.unwrap().unwrap();
        assert_eq!(
            (stat(&s, "promotions"), stat(&s, "backups_promoted")),
            (0, 0),
            "node {i} took a copy over from a live handover; logs in {}",
            dir.display()
        );
    }
    drop(nodes);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Under load and with no fault at all, nothing is promoted and no live session is reported
/// missing (issue 13: about 1900 promotions and 239 SESSION_NOT_FOUND per 3 s of sticky-90
/// at 50x16 with `--replicas 1`). Readers move sessions between the nodes (round robin and
/// 90 % sticky) while compare-and-set writers append through random nodes, for
/// `--replicas 1` and `2`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_without_faults_promotes_nothing_and_loses_nothing() {
    for replicas in [1u8, 2] {
        let dir = temp_dir(&format!("nofault{replicas}"));
        let secret = secret_file(&dir);
        let nodes = start_nodes(3, replicas, secret.to_str().unwrap(), &dir);
        let mut cs = Vec::new();
        for n in &nodes {
            cs.push(connect(n.client).await);
        }
        let clients = Arc::new(cs);
        let stop = Arc::new(AtomicBool::new(false));
        let missing = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut readers = Vec::new();
        for i in 0..48u64 {
            let s = timeout(WAIT, clients[i as usize % 3].create(attrs(&[("k", "v")])))
                .await
                .unwrap()
                .unwrap();
            let (clients, stop, missing) = (clients.clone(), stop.clone(), missing.clone());
            readers.push(tokio::spawn(async move {
                let mut rng = StdRng::seed_from_u64(i);
                let mut token = s.token;
                let mut at = i as usize % 3;
                while !stop.load(Ordering::Relaxed) {
                    // Half the readers move on every request, half stay 90 % of the time.
                    if i % 2 == 0 || rng.gen_bool(0.1) {
                        at = (at + 1) % 3;
                    }
                    match clients[at].get(&token).await {
                        Ok(s) => token = s.token,
                        Err(ClientError::Server {
                            code: ErrorCode::SessionNotFound,
                            ..
                        }) => {
                            missing.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => {}
                    }
                }
            }));
        }
        let mut writers = Vec::new();
        for i in 0..6u64 {
            let empty: Attributes = [("list".to_string(), Bytes::new())].into_iter().collect();
            let s = timeout(WAIT, clients[i as usize % 3].create(empty))
                .await
                .unwrap()
                .unwrap();
            writers.push(tokio::spawn(writer(
                clients.clone(),
                s.token,
                77 + i,
                stop.clone(),
            )));
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        stop.store(true, Ordering::Relaxed);
        for r in readers {
            timeout(WAIT, r).await.expect("reader stopped").unwrap();
        }
        for w in writers {
            let l = timeout(WAIT, w).await.expect("writer stopped").unwrap();
            assert!(
                l.lost.is_empty(),
                "replicas {replicas}: a session was lost: {:?}",
                l.lost
            );
            let list = final_list(&clients, &l.token, None).await;
            assert_eq!(list, l.acked, "replicas {replicas}: unknown {:?}", l.unknown);
        }
        let mut promotions = 0;
        for c in clients.iter() {
            let st = timeout(WAIT, c.stats()).await.unwrap().unwrap();
            promotions += stat(&st, "promotions") + stat(&st, "backups_promoted");
        }
        assert_eq!(
            missing.load(Ordering::Relaxed),
            0,
            "replicas {replicas}: SESSION_NOT_FOUND for live sessions"
        );
        assert_eq!(
            promotions,
            0,
            "replicas {replicas}: promotions without a fault; logs in {}",
            dir.display()
        );
        drop(nodes);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// Three nodes with one backup per session, and one session (`cart=0`) created at node 0:
/// the log directory, the nodes, a client of each, the reply and its token.
async fn one_session_at_node_0(
    name: &str,
) -> (
    std::path::PathBuf,
    Vec<Node>,
    Vec<sessync_client::Client>,
    sessync_client::Session,
    sessync_proto::Token,
) {
    let dir = temp_dir(name);
    let secret = secret_file(&dir);
    let nodes = start_nodes(3, 1, secret.to_str().unwrap(), &dir);
    let clients = connect_all(&nodes).await;
    let created = timeout(WAIT, clients[0].create(attrs(&[("cart", "0")])))
        .await
        .unwrap()
        .unwrap();
    let token = sessync_proto::Token::verify(&created.token, &keys()).unwrap();
    assert_eq!(token.owner, nodes[0].peer);
    assert_eq!(token.backups.len(), 1, "the token names the backup: {token:?}");
    (dir, nodes, clients, created, token)
}

/// What happens to the chosen nodes in each round.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// The `at_once` busiest owners are killed (SIGKILL) together and restarted.
    Kill { at_once: usize },
    /// The busiest owner is paused (SIGSTOP) this long, then resumed (SIGCONT).
    Pause(Duration),
}

/// Three nodes keeping `replicas` backups; `rounds` times, `fault` hits the busiest owners.
async fn chaos(replicas: u8, fault: Fault, rounds: usize, sessions: usize, name: &str) {
    let started = Instant::now();
    let dir = temp_dir(name);
    let secret = secret_file(&dir);
    let secret = secret.to_str().unwrap().to_string();
    let mut nodes = start_nodes(NODES, replicas, &secret, &dir);
    let peers: Vec<SocketAddr> = nodes.iter().map(|n| n.peer).collect();
    let log = |i: usize| dir.join(format!("node{i}.log"));
    let mut cs = Vec::new();
    for n in &nodes {
        cs.push(connect(n.client).await);
    }
    let clients = Arc::new(cs);

    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for i in 0..sessions {
        let empty: Attributes = [("list".to_string(), Bytes::new())].into_iter().collect();
        // Right after start a node may not yet see enough members for `replicas` backups:
        // CREATE is then refused with BACKUP_UNAVAILABLE (nothing changed), and retried.
        let started = std::time::Instant::now();
        let s = loop {
            match timeout(WAIT, clients[i % NODES].create(empty.clone()))
                .await
                .unwrap()
            {
                Err(ClientError::Server {
                    code: ErrorCode::BackupUnavailable,
                    ..
                }) if started.elapsed() < WAIT => tokio::time::sleep(Duration::from_millis(100)).await,
                other => break other.unwrap(),
            }
        };
        writers.push(tokio::spawn(writer(
            clients.clone(),
            s.token,
            1000 + i as u64,
            stop.clone(),
        )));
    }

    let at_once = match fault {
        Fault::Kill { at_once } => at_once,
        Fault::Pause(_) => 1,
    };
    for round in 0..rounds {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        // The busiest owners.
        let mut owned = Vec::new();
        for (i, c) in clients.iter().enumerate() {
            if let Ok(Ok(s)) = timeout(Duration::from_secs(2), c.stats()).await {
                let n = s.iter().find(|(k, _)| k == "sessions").map_or(0, |(_, v)| *v);
                owned.push((n, i));
            }
        }
        owned.sort_unstable_by(|a, b| b.cmp(a));
        let victims: Vec<usize> = owned.iter().take(at_once).map(|(_, i)| *i).collect();
        eprintln!("round {round}: {fault:?} on nodes {victims:?} (sessions owned: {owned:?})");
        match fault {
            Fault::Kill { .. } => {
                for &v in &victims {
                    nodes[v].kill();
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
                for &v in &victims {
                    nodes[v].start(&peers, replicas, &secret, &log(v));
                }
            }
            Fault::Pause(d) => {
                for &v in &victims {
                    nodes[v].pause(true);
                }
                tokio::time::sleep(d).await;
                for &v in &victims {
                    nodes[v].pause(false);
                }
            }
        }
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);

    let mut ledgers = Vec::new();
    for w in writers {
        ledgers.push(timeout(WAIT, w).await.expect("writer stopped in time").unwrap());
    }
    let (acked, unknown) = check_ledgers(&ledgers, &clients, &dir).await;
    eprintln!(
        "{name}: {acked} acknowledged appends, {unknown} of unknown outcome, {rounds} round(s) of {fault:?}"
    );
    assert!(
        acked >= 10 * sessions,
        "too few appends to mean anything: {acked}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(140),
        "took {:?}",
        started.elapsed()
    );
    // The node logs are kept only when something failed.
    let _ = std::fs::remove_dir_all(&dir);
}
