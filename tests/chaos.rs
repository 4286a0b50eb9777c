//! Chaos: three `sessync node` processes with one (or two) backups per session; clients append to
//! per-session lists through random nodes while the node owning the most sessions is
//! killed with SIGKILL and restarted, several times. Afterwards every acknowledged append
//! is present, in order; appends whose outcome the client could not know (INDETERMINATE,
//! a connection lost mid-request) are counted apart and may or may not be there.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::{SocketAddr, TcpListener as StdListener};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sessync_client::{Attributes, Bytes, Client, ClientConfig, ClientError, ErrorCode};
use tokio::time::timeout;

const NODES: usize = 3;
const SESSIONS: usize = 9;
const KILLS: usize = 3;

fn reserve_addr() -> SocketAddr {
    StdListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// One node process at fixed addresses, so that it can be restarted where tokens say it is.
struct Node {
    client: SocketAddr,
    peer: SocketAddr,
    child: Option<Child>,
}

impl Node {
    fn start(&mut self, peers: &[SocketAddr], replicas: u8, secret: &str, log: &std::path::Path) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let peers = peers.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(",");
        let mut child = Command::new(env!("CARGO_BIN_EXE_sessync"))
            .args([
                "node",
                "--client",
                &self.client.to_string(),
                "--peer",
                &self.peer.to_string(),
            ])
            .args(["--peers", &peers, "--replicas", &replicas.to_string()])
            .args(["--secret-file", secret])
            .args(["--peer-timeout", "500ms"])
            .env(
                "RUST_LOG",
                std::env::var("CHAOS_LOG").unwrap_or_else(|_| "error".into()),
            )
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawn sessync node");
        let (client, peer) = wait_ready(&mut child);
        assert_eq!((client, peer), (self.client, self.peer));
        self.child = Some(child);
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap(); // SIGKILL: no shutdown, no goodbye.
            c.wait().unwrap();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What one session's writer saw.
#[derive(Default, Debug)]
struct Ledger {
    token: String,
    acked: Vec<u64>,
    unknown: Vec<u64>,
    lost: Vec<String>,
    /// SETs refused (not applied), with why: a failure report names them.
    refused: Vec<(u64, String)>,
}

fn list_of(s: &sessync_client::Session) -> Vec<u64> {
    let raw = std::str::from_utf8(s.get("list").unwrap()).unwrap();
    raw.split(',')
        .filter(|x| !x.is_empty())
        .map(|x| x.parse().unwrap())
        .collect()
}

async fn connect(addr: SocketAddr) -> Client {
    let cfg = ClientConfig {
        request_timeout: Duration::from_secs(3),
        connect_timeout: Duration::from_secs(1),
        ..ClientConfig::default()
    };
    Client::connect(addr, cfg).await.unwrap()
}

/// Appends 1, 2, 3, ... to one session's list with compare-and-set, through random nodes.
async fn writer(clients: Arc<Vec<Client>>, mut token: String, seed: u64, stop: Arc<AtomicBool>) -> Ledger {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut ledger = Ledger::default();
    let mut next = 1u64;
    let pause = || tokio::time::sleep(Duration::from_millis(20));
    while !stop.load(Ordering::Relaxed) {
        ledger.token = token.clone();
        let c = &clients[rng.gen_range(0..clients.len())];
        let s = match c.get(&token).await {
            Ok(s) => s,
            Err(ClientError::Server {
                code: ErrorCode::SessionNotFound,
                message,
            }) => {
                ledger
                    .lost
                    .push(format!("GET after {:?}: {message}", ledger.acked.last()));
                return ledger;
            }
            Err(_) => {
                pause().await;
                continue;
            }
        };
        token = s.token.clone();
        let mut list = list_of(&s);
        list.push(next);
        let joined = list.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(",");
        match c
            .set(&token)
            .put("list", joined)
            .if_version(s.meta.version)
            .send()
            .await
        {
            Ok(w) => {
                token = w.token;
                ledger.acked.push(next);
                next += 1;
            }
            // Applied here, unprotected, or unknown: never reuse the number.
            Err(ClientError::Server {
                code: ErrorCode::Indeterminate,
                ..
            })
            | Err(ClientError::Disconnected)
            | Err(ClientError::Timeout) => {
                ledger.unknown.push(next);
                next += 1;
                pause().await;
            }
            Err(ClientError::Server {
                code: ErrorCode::SessionNotFound,
                message,
            }) => {
                ledger
                    .lost
                    .push(format!("SET after {:?}: {message}", ledger.acked.last()));
                return ledger;
            }
            // Not applied (refused, or the owner unreachable right now): try again.
            Err(e) => {
                ledger.refused.push((next, e.to_string()));
                pause().await
            }
        }
    }
    ledger.token = token;
    ledger
}

/// Reads a session's final list, retrying while the cluster settles.
async fn final_list(clients: &[Client], token: &str) -> Vec<u64> {
    let mut last = None;
    for attempt in 0..50 {
        match clients[attempt % clients.len()].get(token).await {
            Ok(s) => return list_of(&s),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("session unreadable after the chaos: {last:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_owners_loses_no_acknowledged_append() {
    chaos(1, 1, "chaos").await;
}

/// With two backups per session, the two busiest owners die at once: the third node has a
/// copy of everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_two_nodes_at_once_with_two_backups_loses_no_acknowledged_append() {
    chaos(2, 2, "chaos2").await;
}

/// Three nodes keeping `replicas` backups; `KILLS` times, the `at_once` busiest owners are
/// killed together and restarted.
async fn chaos(replicas: u8, at_once: usize, name: &str) {
    let started = Instant::now();
    let dir = temp_dir(name);
    let secret = secret_file(&dir);
    let secret = secret.to_str().unwrap().to_string();
    let mut nodes: Vec<Node> = (0..NODES)
        .map(|_| Node {
            client: reserve_addr(),
            peer: reserve_addr(),
            child: None,
        })
        .collect();
    let peers: Vec<SocketAddr> = nodes.iter().map(|n| n.peer).collect();
    let log = |i: usize| dir.join(format!("node{i}.log"));
    for (i, n) in nodes.iter_mut().enumerate() {
        n.start(&peers, replicas, &secret, &log(i));
    }
    let mut cs = Vec::new();
    for n in &nodes {
        cs.push(connect(n.client).await);
    }
    let clients = Arc::new(cs);

    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for i in 0..SESSIONS {
        let empty: Attributes = [("list".to_string(), Bytes::new())].into_iter().collect();
        let s = timeout(WAIT, clients[i % NODES].create(empty))
            .await
            .unwrap()
            .unwrap();
        writers.push(tokio::spawn(writer(
            clients.clone(),
            s.token,
            1000 + i as u64,
            stop.clone(),
        )));
    }

    for round in 0..KILLS {
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
        eprintln!("round {round}: killing nodes {victims:?} (sessions owned: {owned:?})");
        for &v in &victims {
            nodes[v].kill();
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        for &v in &victims {
            nodes[v].start(&peers, replicas, &secret, &log(v));
        }
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);

    let mut ledgers = Vec::new();
    for w in writers {
        ledgers.push(timeout(WAIT, w).await.expect("writer stopped in time").unwrap());
    }
    let (mut acked, mut unknown) = (0, 0);
    for (i, l) in ledgers.iter().enumerate() {
        let id = sessync_proto::Token::verify(&l.token, &keys())
            .unwrap()
            .session_id;
        assert!(
            l.lost.is_empty(),
            "session {i} ({id}) was lost: {:?}; node logs in {}",
            l.lost,
            dir.display()
        );
        acked += l.acked.len();
        unknown += l.unknown.len();
    }
    // Every acknowledged append is there, in order; nothing else but the unknown ones.
    for (i, l) in ledgers.iter().enumerate() {
        let list = final_list(&clients, &l.token).await;
        assert!(
            list.windows(2).all(|w| w[0] < w[1]),
            "session {i}: out of order {list:?}"
        );
        let mut present = list.iter().peekable();
        for a in &l.acked {
            // `acked` is increasing, so it must be a subsequence of `list`.
            loop {
                match present.next() {
                    Some(x) if x == a => break,
                    Some(x) => assert!(
                        l.unknown.contains(x),
                        "session {i}: {x} is there but was refused: {:?}",
                        l.refused.iter().filter(|(n, _)| n == x).collect::<Vec<_>>()
                    ),
                    None => panic!(
                        "session {i}: acknowledged append {a} is missing; list {list:?}, acked {:?}",
                        l.acked
                    ),
                }
            }
        }
        for x in present {
            assert!(
                l.unknown.contains(x),
                "session {i}: {x} is there but was refused: {:?}",
                l.refused.iter().filter(|(n, _)| n == x).collect::<Vec<_>>()
            );
        }
    }
    eprintln!("{name}: {acked} acknowledged appends, {unknown} of unknown outcome, {KILLS} rounds of {at_once} kill(s)");
    assert!(
        acked >= 10 * SESSIONS,
        "too few appends to mean anything: {acked}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(110),
        "took {:?}",
        started.elapsed()
    );
    // The node logs are kept only when something failed.
    let _ = std::fs::remove_dir_all(&dir);
}
