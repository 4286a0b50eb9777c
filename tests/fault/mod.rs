//! Fault-test harness shared by tests/chaos.rs and tests/partition.rs: node processes at
//! fixed addresses (on loopback, or inside a network namespace) that can be killed,
//! paused and restarted; compare-and-set writers that keep a ledger of what was
//! acknowledged; and the check that every acknowledged append survived, in order.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sessync_client::{Client, ClientConfig, ClientError, ErrorCode};

pub fn reserve_addr() -> SocketAddr {
    let ip = std::net::IpAddr::from([127, 0, 0, 1]);
    SocketAddr::new(ip, reserve_port(&[ip], false))
}

/// One node process at fixed addresses, so that it can be restarted where tokens say it is.
pub struct Node {
    /// Client port.
    pub client: SocketAddr,
    /// Peer port.
    pub peer: SocketAddr,
    /// The network namespace the process runs in (`None`: this one, on loopback).
    pub netns: Option<String>,
    /// A hosts file the process sees as /etc/hosts (bind-mounted in a mount namespace of
    /// its own, `unshare -m`), so that names resolve as a test wants without touching the
    /// machine's own /etc/hosts. Changes to the file are seen by the running process.
    pub hosts: Option<std::path::PathBuf>,
    /// The process's log filter (`RUST_LOG`); `None`: `CHAOS_LOG`, or errors only.
    pub log: Option<String>,
    /// The running process.
    pub child: Option<Child>,
}

impl Node {
    /// A node to be started at these addresses, on loopback in this network namespace.
    pub fn at(client: SocketAddr, peer: SocketAddr) -> Node {
        Node {
            client,
            peer,
            netns: None,
            hosts: None,
            log: None,
            child: None,
        }
    }

    pub fn start(&mut self, peers: &[SocketAddr], replicas: u8, secret: &str, log: &std::path::Path) {
        self.start_with(peers, replicas, secret, log, &[]);
    }

    /// [`Node::start`] with extra flags for `sessync node`.
    pub fn start_with(
        &mut self,
        peers: &[SocketAddr],
        replicas: u8,
        secret: &str,
        log: &std::path::Path,
        extra: &[&str],
    ) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let peers = peers.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(",");
        let bin = env!("CARGO_BIN_EXE_sessync");
        let mut cmd = match (&self.netns, &self.hosts) {
            // `ip netns exec` execs the node in place: the child's pid is the node's.
            (Some(ns), _) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, bin]);
                c
            }
            // So does `exec` after the bind mount, in the shell `unshare` runs.
            (None, Some(hosts)) => {
                let mut c = Command::new("unshare");
                c.args(["-m", "sh", "-c", "mount --bind \"$0\" /etc/hosts && exec \"$@\""])
                    .arg(hosts)
                    .arg(bin);
                c
            }
            (None, None) => Command::new(bin),
        };
        cmd.args([
            "node",
            "--client",
            &self.client.to_string(),
            "--peer",
            &self.peer.to_string(),
        ]);
        if !peers.is_empty() {
            cmd.args(["--peers", &peers]);
        }
        let mut child = cmd
            .args(["--replicas", &replicas.to_string()])
            .args(["--secret-file", secret])
            .args(["--peer-timeout", "500ms"])
            .args(extra)
            .env(
                "RUST_LOG",
                self.log
                    .clone()
                    .or_else(|| std::env::var("CHAOS_LOG").ok())
                    // The repair's own lines too: `wait_repaired` prints them on a
                    // failure (a few per second, only while there is something to repair).
                    .unwrap_or_else(|| "error,sessync_server::node::repair=info".into()),
            )
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawn sessync node");
        let (client, peer) = wait_ready(&mut child);
        assert_eq!((client, peer), (self.client, self.peer));
        self.child = Some(child);
    }

    /// Moves this node (with its process) out, leaving one at the same addresses with no
    /// process: for a blocking wait or start off the async runtime.
    pub fn take(&mut self) -> Node {
        let mut blank = Node::at(self.client, self.peer);
        blank.netns = self.netns.clone();
        blank.hosts = self.hosts.clone();
        blank.log = self.log.clone();
        std::mem::replace(self, blank)
    }

    /// [`Node::terminate`] on a blocking thread, so that an async test's clients and
    /// writers keep running meanwhile.
    pub async fn terminate_in_background(&mut self, within: Duration) -> std::process::ExitStatus {
        let mut node = self.take();
        let (node, status) = tokio::task::spawn_blocking(move || {
            let status = node.terminate(within);
            (node, status)
        })
        .await
        .unwrap();
        *self = node;
        status
    }

    /// [`Node::start`] on a blocking thread (it waits for the ready line), as
    /// [`Node::terminate_in_background`].
    pub async fn start_in_background(
        &mut self,
        peers: &[SocketAddr],
        replicas: u8,
        secret: &str,
        log: std::path::PathBuf,
    ) {
        let (mut node, peers, secret) = (self.take(), peers.to_vec(), secret.to_string());
        *self = tokio::task::spawn_blocking(move || {
            node.start(&peers, replicas, &secret, &log);
            node
        })
        .await
        .unwrap();
    }

    /// SIGSTOP (`true`) or SIGCONT (`false`): the process keeps its sockets and memory but
    /// runs nothing, as in a long GC pause or a VM migration.
    pub fn pause(&self, stop: bool) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let sig = if stop { "-STOP" } else { "-CONT" };
        let ok = Command::new("kill").args([sig, &pid]).status().unwrap().success();
        assert!(ok, "kill {sig} {pid}");
    }

    /// SIGTERM (a graceful leave: the node drains, then exits); waits up to `within` for
    /// the exit and returns its status (SIGKILL and a panic past that).
    pub fn terminate(&mut self, within: Duration) -> std::process::ExitStatus {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let ok = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -TERM {pid}");
        self.wait_exit(within)
    }

    /// Waits up to `within` for the process to exit (by itself after `sessync drain`, or
    /// after a signal) and returns its status (SIGKILL and a panic past that).
    pub fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        let started = std::time::Instant::now();
        loop {
            if let Some(status) = c.try_wait().unwrap() {
                return status;
            }
            if started.elapsed() > within {
                let _ = c.kill();
                let _ = c.wait();
                panic!("node {} did not exit within {within:?}", self.client);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap(); // SIGKILL: no shutdown, no goodbye.
            c.wait().unwrap();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(c) = &self.child {
            // A paused process must be resumed to die promptly; it may be gone already.
            let _ = Command::new("kill").args(["-CONT", &c.id().to_string()]).status();
        }
        self.kill();
    }
}

/// What one session's writer saw.
#[derive(Default, Debug)]
pub struct Ledger {
    pub token: String,
    pub acked: Vec<u64>,
    pub unknown: Vec<u64>,
    pub lost: Vec<String>,
    /// SETs refused (not applied), with why: a failure report names them.
    pub refused: Vec<(u64, String)>,
    /// The `if_version` of every acknowledged SET.
    pub acked_versions: Vec<u64>,
}

pub fn list_of(s: &sessync_client::Session) -> Vec<u64> {
    let raw = std::str::from_utf8(s.get("list").unwrap()).unwrap();
    raw.split(',')
        .filter(|x| !x.is_empty())
        .map(|x| x.parse().unwrap())
        .collect()
}

pub async fn connect(addr: SocketAddr) -> Client {
    let cfg = ClientConfig {
        request_timeout: Duration::from_secs(3),
        connect_timeout: Duration::from_secs(1),
        ..ClientConfig::default()
    };
    Client::connect(addr, cfg).await.unwrap()
}

/// A client to each of `nodes`, in order.
pub async fn connect_all(nodes: &[Node]) -> Vec<Client> {
    let mut clients = Vec::with_capacity(nodes.len());
    for n in nodes {
        clients.push(connect(n.client).await);
    }
    clients
}

/// What one compare-and-set append saw ([`append_once`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// Acknowledged: the number is in the ledger's `acked`.
    Acked,
    /// Applied or not, nobody knows (INDETERMINATE, a lost connection, a timeout): the
    /// number is in `unknown` and never reused.
    Unknown,
    /// Not applied: the read before it failed, or the write was refused (`refused`).
    /// Retryable.
    Retry,
    /// SESSION_NOT_FOUND: the session is gone; `lost` says where.
    Lost,
}

/// One compare-and-set append of the ledger's next number to its session's list, through
/// `c` (node `at`, named in failures), with the ledger's latest token.
pub async fn append_once(c: &Client, at: usize, l: &mut Ledger, next: &mut u64) -> Appended {
    let s = match c.get(&l.token).await {
        Ok(s) => s,
        Err(ClientError::Server {
            code: ErrorCode::SessionNotFound,
            message,
        }) => {
            l.lost
                .push(format!("GET at node {at} after {:?}: {message}", l.acked.last()));
            return Appended::Lost;
        }
        Err(_) => return Appended::Retry,
    };
    l.token = s.token.clone();
    let mut list = list_of(&s);
    list.push(*next);
    let joined = list.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(",");
    match c
        .set(&l.token)
        .put("list", joined)
        .if_version(s.meta.version)
        .send()
        .await
    {
        Ok(w) => {
            // Two acknowledgements of one version would mean two owners accepted the
            // same compare-and-set: one of the two appends is then lost.
            assert!(
                !l.acked_versions.contains(&s.meta.version),
                "double acknowledgement: if_version {} was accepted twice (the second time at node {at}, session {})",
                s.meta.version,
                sessync_proto::Token::verify(&l.token, &keys()).map(|t| t.session_id.to_string()).unwrap_or_default()
            );
            l.acked_versions.push(s.meta.version);
            l.token = w.token;
            l.acked.push(*next);
            *next += 1;
            Appended::Acked
        }
        // Applied here, unprotected, or unknown: never reuse the number.
        Err(ClientError::Server {
            code: ErrorCode::Indeterminate,
            ..
        })
        | Err(ClientError::Disconnected)
        | Err(ClientError::Timeout) => {
            l.unknown.push(*next);
            *next += 1;
            Appended::Unknown
        }
        Err(ClientError::Server {
            code: ErrorCode::SessionNotFound,
            message,
        }) => {
            l.lost
                .push(format!("SET at node {at} after {:?}: {message}", l.acked.last()));
            Appended::Lost
        }
        // Not applied (refused, or the owner unreachable right now): try again.
        Err(e) => {
            l.refused.push((*next, e.to_string()));
            Appended::Retry
        }
    }
}

/// Appends to each session of `tokens` in turn ([`append_once`]: 1, 2, 3, ... to its
/// list) until `stop`, through the node `pick` chooses for each append (its index and a
/// client), pausing 5 ms between rounds; `on_retry` is called for each append that failed
/// retryably. A session found lost is left alone from then on (its ledger says so).
pub async fn writer_over<P, R>(
    tokens: Vec<String>,
    seed: u64,
    stop: Arc<AtomicBool>,
    pick: P,
    on_retry: R,
) -> Vec<Ledger>
where
    P: Fn(&mut StdRng) -> (usize, Client),
    R: Fn(),
{
    let mut rng = StdRng::seed_from_u64(seed);
    let mut ledgers: Vec<Ledger> = tokens
        .into_iter()
        .map(|token| Ledger {
            token,
            ..Ledger::default()
        })
        .collect();
    let mut next = vec![1u64; ledgers.len()];
    let mut gone = vec![false; ledgers.len()];
    while !stop.load(Ordering::Relaxed) {
        for i in 0..ledgers.len() {
            if gone[i] || stop.load(Ordering::Relaxed) {
                continue;
            }
            let (at, c) = pick(&mut rng);
            match append_once(&c, at, &mut ledgers[i], &mut next[i]).await {
                Appended::Acked => {}
                Appended::Lost => gone[i] = true,
                Appended::Unknown | Appended::Retry => on_retry(),
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    ledgers
}

/// Appends 1, 2, 3, ... to one session's list with compare-and-set, through random nodes.
pub async fn writer(clients: Arc<Vec<Client>>, token: String, seed: u64, stop: Arc<AtomicBool>) -> Ledger {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut ledger = Ledger {
        token,
        ..Ledger::default()
    };
    let mut next = 1u64;
    while !stop.load(Ordering::Relaxed) {
        let at = rng.gen_range(0..clients.len());
        match append_once(&clients[at], at, &mut ledger, &mut next).await {
            Appended::Acked => {}
            Appended::Lost => break,
            Appended::Unknown | Appended::Retry => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    ledger
}

/// Reads a session's final list, retrying while the cluster settles. `logs`: where the
/// node logs are, named in a failure with the session's id (to look it up in them).
pub async fn final_list(clients: &[Client], token: &str, logs: Option<&std::path::Path>) -> Vec<u64> {
    let mut last = None;
    for attempt in 0..50 {
        match clients[attempt % clients.len()].get(token).await {
            Ok(s) => return list_of(&s),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let id = sessync_proto::Token::verify(token, &keys()).map(|t| t.session_id.to_string());
    panic!("session {id:?} unreadable after the chaos: {last:?}; node logs in {logs:?}");
}

/// Starts `n` node processes at reserved addresses, keeping `replicas` backups.
pub fn start_nodes(n: usize, replicas: u8, secret: &str, dir: &std::path::Path) -> Vec<Node> {
    start_nodes_with(n, replicas, secret, dir, &[])
}

/// [`start_nodes`] with extra flags for every `sessync node`.
pub fn start_nodes_with(
    n: usize,
    replicas: u8,
    secret: &str,
    dir: &std::path::Path,
    extra: &[&str],
) -> Vec<Node> {
    let mut nodes: Vec<Node> = (0..n).map(|_| Node::at(reserve_addr(), reserve_addr())).collect();
    let peers: Vec<SocketAddr> = nodes.iter().map(|n| n.peer).collect();
    for (i, n) in nodes.iter_mut().enumerate() {
        n.start_with(&peers, replicas, secret, &dir.join(format!("node{i}.log")), extra);
    }
    nodes
}

/// Checks what the writers saw against the sessions' final state: no session lost, every
/// acknowledged append present and in order, nothing present that was refused. Returns
/// (acknowledged, unknown) counts. `dir` holds the node logs named in a failure.
pub async fn check_ledgers(ledgers: &[Ledger], clients: &[Client], dir: &std::path::Path) -> (usize, usize) {
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
        let id = sessync_proto::Token::verify(&l.token, &keys())
            .unwrap()
            .session_id;
        let list = final_list(clients, &l.token, Some(dir)).await;
        assert!(
            list.windows(2).all(|w| w[0] < w[1]),
            "session {i}: out of order {list:?}"
        );
        let lost: Vec<u64> = l.acked.iter().copied().filter(|a| !list.contains(a)).collect();
        assert!(
            lost.is_empty(),
            "session {i} ({id}): acknowledged appends lost: {lost:?}; list {list:?}; logs in {}",
            dir.display()
        );
        for x in &list {
            assert!(
                l.acked.contains(x) || l.unknown.contains(x),
                "session {i}: {x} is there but was refused: {:?}",
                l.refused.iter().filter(|(n, _)| n == x).collect::<Vec<_>>()
            );
        }
    }
    (acked, unknown)
}

/// Waits until the nodes behind `clients` own at least `owned` sessions among them and
/// report none under-replicated, and at least `min` has passed (a kill is noticed only
/// after the membership's and the repair's own delays); panics after 40 s, naming `what`.
/// Returns how long it took.
pub async fn wait_repaired(
    clients: &[Client],
    owned: u64,
    min: Duration,
    what: &str,
    dir: &std::path::Path,
) -> Duration {
    let t = std::time::Instant::now();
    loop {
        let (mut have, mut under) = (0, 0);
        for c in clients {
            if let Ok(Ok(st)) = tokio::time::timeout(Duration::from_secs(2), c.stats()).await {
                have += stat(&st, "sessions");
                under += stat(&st, "under_replicated");
            }
        }
        if have >= owned && under == 0 && t.elapsed() >= min {
            return t.elapsed();
        }
        if t.elapsed() >= Duration::from_secs(40) {
            panic!(
                "{what}: not repaired in 40 s: {have} owned, {under} under-replicated; per node {}; logs in {}\n{}",
                repair_counters(clients).await,
                dir.display(),
                repair_log_lines(dir)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Each node's repair counters, for a failure message (CI keeps no node logs).
async fn repair_counters(clients: &[Client]) -> String {
    let mut out = Vec::new();
    for (i, c) in clients.iter().enumerate() {
        out.push(
            match tokio::time::timeout(Duration::from_secs(2), c.stats()).await {
                Ok(Ok(st)) => {
                    let names = [
                        "sessions",
                        "under_replicated",
                        "repaired",
                        "promotions",
                        "backups_promoted",
                    ];
                    let v: Vec<String> = names.iter().map(|n| format!("{n} {}", stat(&st, n))).collect();
                    format!("node {i}: {}", v.join(", "))
                }
                other => format!("node {i}: no STATS ({other:?})"),
            },
        );
    }
    out.join("; ")
}

/// The repair's own log lines from every node log in `dir` (the last 20 of each).
fn repair_log_lines(dir: &std::path::Path) -> String {
    let mut logs: Vec<_> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "log"))
                .collect()
        })
        .unwrap_or_default();
    logs.sort();
    let mut out = String::new();
    for log in logs {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| {
                l.contains("repair")
                    || l.contains("owner")
                    || l.contains("restarted")
                    || l.contains("taken over")
            })
            .collect();
        out.push_str(&format!("== {}\n", log.display()));
        for l in &lines[lines.len().saturating_sub(20)..] {
            out.push_str(l);
            out.push('\n');
        }
    }
    out
}
