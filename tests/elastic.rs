//! The elastic cluster under load (issue 14), with `sessync node` processes and
//! compare-and-set writers that keep a ledger of what was acknowledged:
//!
//! - scale 3 -> 5 -> 2: every node finds the others by one DNS name (`--join
//!   dns:NAME:PORT`, the Kubernetes headless-Service pattern); the name's records come
//!   from a hosts file each node sees as /etc/hosts in a mount namespace of its own
//!   (`unshare -m`), on loopback addresses 127.0.0.2 to .6, so no traffic leaves this
//!   machine and the machine's own /etc/hosts is untouched. Two nodes join when their
//!   records are added; three leave by drain (SIGTERM). Nothing is lost.
//! - `kill -9` in the middle of a drain, with `--replicas 1`: no acknowledged write lost.
//! - A DNS seed that resolves to nothing: the node starts anyway, says so at WARN, and
//!   joins once the name has records.
//!
//! Both need root for `unshare -m` and the bind mount only where they use it (the scale
//! test); without it they print why and return.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod fault;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use common::*;
use fault::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sessync_client::{Client, MemberState};
use tokio::time::timeout;

/// The name every node joins by.
const NAME: &str = "nodes.sessync.test";

/// The nodes the writers may use now: (node index, client). A node enters after it is
/// ready and leaves once it has exited.
type LiveSet = Arc<RwLock<Vec<(usize, Client)>>>;

/// Starts one writer task per chunk of `active`.
fn start_writers(
    live: &LiveSet,
    active: &[String],
    writers: usize,
    stop: &Arc<AtomicBool>,
    counts: &Arc<[AtomicU64; 2]>,
) -> Vec<tokio::task::JoinHandle<Vec<Ledger>>> {
    active
        .chunks(active.len().div_ceil(writers))
        .enumerate()
        .map(|(w, chunk)| {
            let (live, tried, failed) = (live.clone(), counts.clone(), counts.clone());
            let pick = move |rng: &mut StdRng| {
                tried[0].fetch_add(1, Ordering::Relaxed);
                let live = live.read().unwrap();
                live[rng.gen_range(0..live.len())].clone()
            };
            let on_retry = move || {
                failed[1].fetch_add(1, Ordering::Relaxed);
            };
            tokio::spawn(writer_over(
                chunk.to_vec(),
                0xe1a5 + w as u64,
                stop.clone(),
                pick,
                on_retry,
            ))
        })
        .collect()
}

/// Stops the writers and checks, through `clients`: no session lost, every acknowledged
/// append there in order, every idle session readable. Prints what the writers saw under
/// `name`.
async fn finish(
    name: &str,
    writers: Vec<tokio::task::JoinHandle<Vec<Ledger>>>,
    stop: &AtomicBool,
    counts: &[AtomicU64; 2],
    idle: &[String],
    clients: &[Client],
    dir: &Path,
) {
    stop.store(true, Ordering::Relaxed);
    let mut ledgers = Vec::new();
    for w in writers {
        ledgers.extend(timeout(Duration::from_secs(60), w).await.unwrap().unwrap());
    }
    let (acked, unknown) = check_ledgers(&ledgers, clients, dir).await;
    let lost = lost_idle(idle, clients).await;
    println!(
        "{name}: {} appends tried, {} failed retryably; {acked} acknowledged, {unknown} of unknown outcome; idle sessions lost: {} of {}",
        counts[0].load(Ordering::Relaxed),
        counts[1].load(Ordering::Relaxed),
        lost.len(),
        idle.len()
    );
    assert!(
        lost.is_empty(),
        "idle sessions lost: {lost:?}; logs in {}",
        dir.display()
    );
    assert!(acked > 0, "the writers got appends acknowledged");
}

/// Every idle session (tokens from their creation, attribute `i` = its index) is readable
/// through a random one of `clients`. Returns the indexes of those that are not.
async fn lost_idle(tokens: &[String], clients: &[Client]) -> Vec<usize> {
    let mut rng = StdRng::seed_from_u64(7);
    let mut lost = Vec::new();
    for (i, t) in tokens.iter().enumerate() {
        let mut found = false;
        for _ in 0..20 {
            let c = &clients[rng.gen_range(0..clients.len())];
            match timeout(WAIT, c.get(t)).await.unwrap() {
                Ok(s) => {
                    assert_eq!(s.get("i").unwrap().as_ref(), i.to_string().as_bytes());
                    found = true;
                    break;
                }
                Err(sessync_client::ClientError::Server {
                    code: sessync_client::ErrorCode::SessionNotFound,
                    ..
                }) => break,
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        if !found {
            lost.push(i);
        }
    }
    lost
}

/// Creates `n` sessions round-robin through `clients`, each with an empty `list` and
/// `i` = its index; returns their tokens.
async fn create_sessions(clients: &[Client], n: usize) -> Vec<String> {
    let mut tokens = Vec::with_capacity(n);
    for i in 0..n {
        let s = timeout(
            WAIT,
            clients[i % clients.len()].create(attrs(&[("list", ""), ("i", &i.to_string())])),
        )
        .await
        .unwrap()
        .unwrap();
        tokens.push(s.token);
    }
    tokens
}

/// Waits (bounded) until every one of `clients` sees exactly `n` alive members.
async fn wait_members(clients: &[Client], n: usize, dir: &Path) -> Duration {
    let t = Instant::now();
    loop {
        let mut agree = true;
        for c in clients {
            let alive = match c.members().await {
                Ok(m) => m.iter().filter(|m| m.state == MemberState::Alive).count(),
                Err(_) => 0,
            };
            agree &= alive == n;
        }
        if agree {
            return t.elapsed();
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the nodes do not agree on {n} alive members within 20 s; logs in {}",
            dir.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A port number free for TCP and UDP on every one of `ips` ([`reserve_port`]).
fn port_free_on(ips: &[IpAddr]) -> u16 {
    reserve_port(ips, true)
}

/// The hosts file naming `NAME` for each of `ips`, written in place (the same inode, so
/// the nodes' bind mounts see it).
fn write_hosts(path: &Path, ips: &[IpAddr]) {
    let mut text = String::from("127.0.0.1 localhost\n");
    for ip in ips {
        text.push_str(&format!("{ip} {NAME}\n"));
    }
    std::fs::write(path, text).unwrap();
}

/// Starts a node (`--replicas 1`) with its peer port at `ip:port` and its client port on
/// an OS-chosen port of `ip`, seeing `hosts` as /etc/hosts and joining by `seed`; `filter`
/// overrides its log filter.
fn start_named(
    ip: IpAddr,
    port: u16,
    hosts: &Path,
    secret: &str,
    seed: &str,
    log: &Path,
    filter: Option<&str>,
) -> Node {
    let client = SocketAddr::new(ip, reserve_port(&[ip], false));
    let mut node = Node::at(client, SocketAddr::new(ip, port));
    node.hosts = Some(hosts.to_path_buf());
    node.log = filter.map(String::from);
    node.start_with(&[], 1, secret, log, &["--join", seed]);
    node
}

/// Whether this process may make mount namespaces and bind mounts (root, `unshare`).
fn can_unshare() -> Result<(), String> {
    let out = std::process::Command::new("unshare")
        .args(["-m", "sh", "-c", "mount --bind /etc/hostname /etc/hostname"])
        .output()
        .map_err(|e| format!("unshare: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// Scale 3 -> 5 -> 2 under load with `--replicas 1`: nodes join by a DNS name seed and
/// leave by drain; afterwards no session and no acknowledged append is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaling_3_to_5_to_2_by_a_dns_name_loses_nothing() {
    if let Err(why) = can_unshare() {
        println!("not run: needs a mount namespace for its hosts file (root and unshare): {why}");
        return;
    }
    const SESSIONS: usize = 1500;
    const IDLE: usize = 500;
    let dir = temp_dir("scale");
    let secret = secret_file(&dir);
    let secret = secret.to_str().unwrap().to_string();
    let hosts = dir.join("hosts");
    let ips: Vec<IpAddr> = (2..=6).map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, i))).collect();
    let port = port_free_on(&ips);
    let seed = format!("dns:{NAME}:{port}");
    write_hosts(&hosts, &ips[..3]);
    let start = |i: usize| {
        start_named(
            ips[i],
            port,
            &hosts,
            &secret,
            &seed,
            &dir.join(format!("node{i}.log")),
            None,
        )
    };
    let mut nodes: Vec<Node> = (0..3).map(start).collect();
    let mut clients = connect_all(&nodes).await;
    let formed = wait_members(&clients, 3, &dir).await;
    println!("3 nodes joined by {seed} agree on 3 alive members after {formed:?}");

    let tokens = create_sessions(&clients, SESSIONS).await;
    let (idle, active) = tokens.split_at(IDLE);
    let live: LiveSet = Arc::new(RwLock::new(clients.iter().cloned().enumerate().collect()));
    let stop = Arc::new(AtomicBool::new(false));
    let counts: Arc<[AtomicU64; 2]> = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
    let writers = start_writers(&live, active, 30, &stop, &counts);
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Scale up: two more records for the name, two more nodes.
    write_hosts(&hosts, &ips);
    for i in 3..5 {
        nodes.push(start(i));
        clients.push(connect(nodes[i].client).await);
    }
    let joined = wait_members(&clients, 5, &dir).await;
    println!("5 nodes agree on 5 alive members {joined:?} after the two joined");
    live.write()
        .unwrap()
        .extend(clients.iter().cloned().enumerate().skip(3));
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Scale down: nodes 0, 1 and 2 leave by drain, one after the other; the writers keep
    // using a node until it has exited.
    for i in 0..3 {
        write_hosts(&hosts, &ips[i + 1..]);
        let t = Instant::now();
        let status = nodes[i].terminate_in_background(Duration::from_secs(30)).await;
        live.write().unwrap().retain(|(at, _)| *at != i);
        assert!(
            status.success(),
            "node {i} did not hand everything over: exit status {status}; logs in {}",
            dir.display()
        );
        println!("node {i} drained and exited 0 in {:?}", t.elapsed());
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let left = &clients[3..];
    let alive = wait_members(left, 2, &dir).await;
    println!("the 2 left agree on 2 alive members {alive:?} after the last drain");
    finish("scale 3 -> 5 -> 2", writers, &stop, &counts, idle, left, &dir).await;
}

/// `kill -9` in the middle of a drain, with `--replicas 1`: the sessions the node had not
/// yet handed over are taken over from their backup copies, and the ones it had handed
/// over are at their new owners; no acknowledged append and no idle session is lost. Two
/// rounds (a different node each), with time to repair between them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_during_a_drain_loses_no_acknowledged_append() {
    const NODES: usize = 3;
    const SESSIONS: usize = 3000;
    const IDLE: usize = 1000;
    let dir = temp_dir("kill-drain");
    let secret = secret_file(&dir);
    let secret = secret.to_str().unwrap().to_string();
    let mut nodes = start_nodes(NODES, 1, &secret, &dir);
    let peers: Vec<_> = nodes.iter().map(|n| n.peer).collect();
    let clients = connect_all(&nodes).await;
    let tokens = create_sessions(&clients, SESSIONS).await;
    let (idle, active) = tokens.split_at(IDLE);
    let live: LiveSet = Arc::new(RwLock::new(clients.iter().cloned().enumerate().collect()));
    let stop = Arc::new(AtomicBool::new(false));
    let counts: Arc<[AtomicU64; 2]> = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
    let writers = start_writers(&live, active, 30, &stop, &counts);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut rng = StdRng::seed_from_u64(0xd4a1);
    for round in 0..2 {
        let i = round;
        // SIGTERM starts the drain; SIGKILL lands while it is handing sessions over.
        let pid = nodes[i].child.as_ref().unwrap().id().to_string();
        assert!(std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
        let after = Duration::from_millis(rng.gen_range(20..150));
        tokio::time::sleep(after).await;
        let drain_left = match timeout(Duration::from_secs(1), clients[i].stats()).await {
            Ok(Ok(st)) => format!("{} left to hand over", stat(&st, "drain_left")),
            _ => "its STATS not answered".into(),
        };
        nodes[i].kill();
        println!("round {round}: node {i} killed {after:?} into its drain ({drain_left})");
        let log = dir.join(format!("node{i}-again.log"));
        nodes[i].start_in_background(&peers, 1, &secret, log).await;
        // Repaired before the next round: every session has its copy again.
        let took = wait_repaired(
            &clients,
            0,
            Duration::from_secs(6),
            &format!("round {round}"),
            &dir,
        )
        .await;
        println!("round {round}: repaired {took:?} after the restart");
    }
    finish("kill during drain", writers, &stop, &counts, idle, &clients, &dir).await;
}

/// A seed that resolves to nothing is retried and logged, never fatal: two nodes whose
/// only seed is a name with no record start and run alone, each saying so at WARN; once
/// the name has their records (the seeds are resolved again every 5 s), they join.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seed_that_resolves_to_nothing_is_retried_and_logged_never_fatal() {
    if let Err(why) = can_unshare() {
        println!("not run: needs a mount namespace for its hosts file (root and unshare): {why}");
        return;
    }
    let dir = temp_dir("empty-seed");
    let secret = secret_file(&dir);
    let secret = secret.to_str().unwrap().to_string();
    let hosts = dir.join("hosts");
    let ips: Vec<IpAddr> = (7..=8).map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, i))).collect();
    let port = port_free_on(&ips);
    let seed = format!("dns:{NAME}:{port}");
    write_hosts(&hosts, &[]);
    let mut nodes = Vec::new();
    let mut clients = Vec::new();
    for (i, ip) in ips.iter().enumerate() {
        let log = dir.join(format!("node{i}.log"));
        let node = start_named(
            *ip,
            port,
            &hosts,
            &secret,
            &seed,
            &log,
            Some("sessync_server=warn"),
        );
        clients.push(connect(node.client).await);
        nodes.push(node);
    }
    // Alone (each knows only itself), and saying why.
    for c in &clients {
        assert_eq!(timeout(WAIT, c.members()).await.unwrap().unwrap().len(), 1);
    }
    let t = Instant::now();
    for i in 0..ips.len() {
        let log = dir.join(format!("node{i}.log"));
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains("WARN") && text.contains(&format!("seed {seed}")) {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "node {i} did not log the empty seed at WARN: {text}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // The name gets its records: the next resolution finds them, and the two join.
    write_hosts(&hosts, &ips);
    let joined = wait_members(&clients, 2, &dir).await;
    println!("two nodes whose seed resolved to nothing joined {joined:?} after it had records");
    for n in &mut nodes {
        assert!(
            n.child.as_mut().unwrap().try_wait().unwrap().is_none(),
            "a node exited"
        );
    }
}
