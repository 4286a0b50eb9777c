//! Partitions between real node processes, each in a network namespace of its own (made and
//! removed here): three `sessync node` processes with `--replicas 1`, compare-and-set
//! writers appending through random nodes, while the network is cut: first one owner
//! isolated from both other nodes, then a partial partition (two nodes cannot reach each
//! other, both reach the third). The clients, like applications beside each node, reach
//! every node throughout. Afterwards every acknowledged append is present, in order, no
//! `if_version` was acknowledged twice, and every session is readable within a bounded
//! time after the heal (issue 13: 45 to 136 acknowledged appends lost per run before
//! fencing).
//!
//! Needs root and `ip netns` (CI has both); elsewhere the test prints why and passes
//! without running. Cuts are blackhole routes inside the namespaces only; traffic goes
//! only between this machine's namespaces.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod fault;

use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use fault::*;
use sessync_client::{Attributes, Bytes};
use tokio::time::timeout;

const NODES: usize = 3;
const SESSIONS: usize = 12;

/// Namespaces `ns{i}` with addresses `10.213.{subnet}.{i+1}`, each a veth into a bridge in
/// this namespace (which holds `.254`, so the test's clients reach every node). Removed on
/// drop.
struct Testnet {
    prefix: String,
    subnet: u8,
    hosts: usize,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Testnet {
    fn new(hosts: usize) -> Result<Testnet, String> {
        let pid = std::process::id();
        let net = Testnet {
            prefix: format!("ssn{}", pid % 100_000),
            subnet: 20 + (pid % 200) as u8,
            hosts,
        };
        let br = net.bridge();
        ip(&["link", "add", &br, "type", "bridge"])?;
        ip(&["addr", "add", &format!("{}/24", net.addr(254)), "dev", &br])?;
        ip(&["link", "set", &br, "up"])?;
        for i in 0..hosts {
            let ns = net.ns(i);
            let (outer, inner) = (format!("{}v{i}", net.prefix), format!("{}p{i}", net.prefix));
            ip(&["netns", "add", &ns])?;
            ip(&["link", "add", &outer, "type", "veth", "peer", "name", &inner])?;
            ip(&["link", "set", &inner, "netns", &ns])?;
            ip(&["link", "set", &outer, "master", &br, "up"])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/24", net.addr(i as u8 + 1)),
                "dev",
                &inner,
            ])?;
            ip(&["-n", &ns, "link", "set", &inner, "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(net)
    }

    fn bridge(&self) -> String {
        format!("{}br", self.prefix)
    }

    fn ns(&self, i: usize) -> String {
        format!("{}n{i}", self.prefix)
    }

    fn addr(&self, host: u8) -> std::net::Ipv4Addr {
        std::net::Ipv4Addr::new(10, 213, self.subnet, host)
    }

    fn host(&self, i: usize) -> std::net::Ipv4Addr {
        self.addr(i as u8 + 1)
    }

    /// Cuts (or, with `heal`, restores) traffic between hosts `a` and `b`, both ways.
    fn cut(&self, a: usize, b: usize, heal: bool) {
        let verb = if heal { "del" } else { "add" };
        for (from, to) in [(a, b), (b, a)] {
            let route = format!("{}/32", self.host(to));
            ip(&["-n", &self.ns(from), "route", verb, "blackhole", &route]).unwrap();
        }
    }
}

impl Drop for Testnet {
    fn drop(&mut self) {
        for i in 0..self.hosts {
            let _ = ip(&["link", "del", &format!("{}v{i}", self.prefix)]);
            let _ = ip(&["netns", "del", &self.ns(i)]);
        }
        let _ = ip(&["link", "del", &self.bridge()]);
    }
}

/// It failed on 1 seed in 16 to 1 in 4 from session 4 to session 14 (acknowledged appends
/// lost, or a session unreadable, TOO_MANY_HOPS), and was ignored until issue 13's partition
/// classes were closed; it found, and pins, the take-back double acknowledgement fixed with
/// fencing. Runs in every `cargo test` since session 49 (seeds 1-48 passed, 30 of them
/// on a machine busy with a 100 000-seed simulation run). Timing decides as much as the
/// seed: a run does not replay exactly. `SESSYNC_FAULT_SEED=N` picks the writers' seed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolation_and_partial_partition_lose_no_acknowledged_append() {
    let net = match Testnet::new(NODES) {
        Ok(n) => n,
        Err(why) => {
            println!("skipped: cannot make network namespaces here ({why}); CI runs this as root");
            return;
        }
    };
    let started = Instant::now();
    let dir = temp_dir("partition");
    let secret = secret_file(&dir);
    let secret = secret.to_str().unwrap().to_string();
    let mut nodes: Vec<Node> = (0..NODES)
        .map(|i| Node {
            client: SocketAddr::new(net.host(i).into(), 7700),
            peer: SocketAddr::new(net.host(i).into(), 7800),
            netns: Some(net.ns(i)),
            hosts: None,
            log: None,
            child: None,
        })
        .collect();
    let peers: Vec<SocketAddr> = nodes.iter().map(|n| n.peer).collect();
    for (i, n) in nodes.iter_mut().enumerate() {
        n.start(&peers, 1, &secret, &dir.join(format!("node{i}.log")));
    }
    let mut cs = Vec::new();
    for n in &nodes {
        cs.push(connect(n.client).await);
    }
    let clients = Arc::new(cs);
    let stop = Arc::new(AtomicBool::new(false));
    let seed: u64 = std::env::var("SESSYNC_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(13);
    eprintln!("partition test seed {seed} (SESSYNC_FAULT_SEED replays it)");
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
            seed * 1000 + i as u64,
            stop.clone(),
        )));
    }
    let busiest = async |clients: &Arc<Vec<sessync_client::Client>>| {
        let mut owned = Vec::new();
        for (i, c) in clients.iter().enumerate() {
            if let Ok(Ok(s)) = timeout(Duration::from_secs(2), c.stats()).await {
                owned.push((stat(&s, "sessions"), i));
            }
        }
        owned.sort_unstable_by(|a, b| b.cmp(a));
        owned.into_iter().map(|(_, i)| i).collect::<Vec<_>>()
    };

    tokio::time::sleep(Duration::from_millis(1500)).await;
    // One owner cut off from both other nodes, then healed.
    let order = busiest(&clients).await;
    let a = order[0];
    eprintln!("isolating node {a}");
    for b in (0..NODES).filter(|&b| b != a) {
        net.cut(a, b, false);
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    for b in (0..NODES).filter(|&b| b != a) {
        net.cut(a, b, true);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    // A partial partition: the two busiest cannot reach each other, both reach the third.
    let order = busiest(&clients).await;
    let (a, b) = (order[0], order[1]);
    eprintln!("cutting node {a} from node {b}");
    net.cut(a, b, false);
    tokio::time::sleep(Duration::from_secs(6)).await;
    net.cut(a, b, true);
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);

    let mut ledgers = Vec::new();
    for w in writers {
        ledgers.push(timeout(WAIT, w).await.expect("writer stopped in time").unwrap());
    }
    let (acked, unknown) = check_ledgers(&ledgers, &clients, &dir).await;
    eprintln!("partition: {acked} acknowledged appends, {unknown} of unknown outcome");
    assert!(acked >= 5 * SESSIONS, "too few appends to mean anything: {acked}");
    assert!(
        started.elapsed() < Duration::from_secs(90),
        "took {:?}",
        started.elapsed()
    );
    drop(nodes);
    drop(net);
    let _ = std::fs::remove_dir_all(&dir);
}
