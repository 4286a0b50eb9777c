//! Cluster membership over real sockets: node processes started from one seed list form
//! one cluster, a killed node is declared dead and leaves the backup candidates, a
//! restarted one joins again, a node with another secret never joins, and forged or
//! replayed datagrams are dropped and counted. Every wait is bounded.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use sessync_server::{MemberState, NodeHandle, Seed};

/// Three nodes started at once agree on three alive members within this.
const AGREE_WITHIN: Duration = Duration::from_secs(5);
/// A killed member is declared dead by the others within this (SWIM: a probe period, the
/// probe round trip, indirect probes, then 3 s of suspicion; about 5 s on loopback).
const DEAD_WITHIN: Duration = Duration::from_secs(10);

fn sessync(args: &[&str]) -> Output {
    // Bounded by the client's own connect and request timeouts.
    Command::new(env!("CARGO_BIN_EXE_sessync"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run sessync")
}

/// `sessync members --node ADDR --json`, parsed.
fn members_json(client: SocketAddr) -> serde_json::Value {
    let o = sessync(&["members", "--node", &client.to_string(), "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// `n` distinct port numbers, each free for both TCP and UDP on 127.0.0.1 now
/// ([`reserve_port`]).
fn free_ports(n: usize) -> Vec<u16> {
    (0..n)
        .map(|_| reserve_port(&[std::net::IpAddr::from([127, 0, 0, 1])], true))
        .collect()
}

/// Starts `sessync node` with its client port on an OS-chosen port (not waiting for it).
fn start_process(peer: &str, extra: &[&str], stderr: Stdio) -> Child {
    start_process_at("127.0.0.1:0", peer, extra, stderr)
}

/// Starts `sessync node` (not waiting for it).
fn start_process_at(client: &str, peer: &str, extra: &[&str], stderr: Stdio) -> Child {
    // A directory per process started: tests run in parallel, and temp_dir starts empty.
    static STARTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = temp_dir(&format!("membership-{n}"));
    let secret = secret_file(&dir);
    Command::new(env!("CARGO_BIN_EXE_sessync"))
        .args(["node", "--client", client, "--peer", peer, "--log", "info"])
        .arg("--secret-file")
        .arg(&secret)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("spawn sessync node")
}

/// Polls `f` every 50 ms until it is true or `within` passed; returns the time it took.
async fn eventually(within: Duration, what: &str, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if f() {
            return start.elapsed();
        }
        assert!(start.elapsed() < within, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn alive_in(h: &NodeHandle) -> Vec<SocketAddr> {
    h.node().membership().unwrap().alive_peers()
}

fn state_of(h: &NodeHandle, peer: SocketAddr) -> Vec<MemberState> {
    h.node()
        .membership()
        .unwrap()
        .view()
        .iter()
        .filter(|m| m.peer == peer)
        .map(|m| m.state)
        .collect()
}

/// An in-process node on OS-chosen ports joining through `seeds`.
async fn in_process(seeds: &[SocketAddr]) -> NodeHandle {
    let mut c = config();
    c.membership.seeds = seeds
        .iter()
        .map(|a| Seed::Host {
            host: a.ip().to_string(),
            port: a.port(),
        })
        .collect();
    sessync_server::start(c).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_started_at_once_from_one_seed_list_agree() {
    // Peer and client ports known before any node starts, as in a deployment.
    let all = free_ports(6);
    let (ports, client_ports) = all.split_at(3);
    let seeds = ports
        .iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut children: Vec<Child> = ports
        .iter()
        .zip(client_ports)
        .map(|(p, c)| {
            start_process_at(
                &format!("127.0.0.1:{c}"),
                &format!("127.0.0.1:{p}"),
                &["--join", &seeds],
                Stdio::null(),
            )
        })
        .collect();
    let started = Instant::now();
    let clients: Vec<SocketAddr> = children.iter_mut().map(|c| wait_ready(c).0).collect();
    let mut last = serde_json::Value::Null;
    eventually(AGREE_WITHIN, "three alive members at every node", || {
        clients.iter().all(|c| {
            last = members_json(*c);
            last["alive"] == 3 && last["members"].as_array().map(Vec::len) == Some(3)
        })
    })
    .await;
    println!(
        "three nodes agreed on three alive members {:?} after they started",
        started.elapsed()
    );
    // Every node lists the same three node ids and peer addresses, itself first.
    let views: Vec<serde_json::Value> = clients.iter().map(|c| members_json(*c)).collect();
    let mut ids: Vec<Vec<String>> = views
        .iter()
        .map(|v| {
            let mut ids: Vec<String> = v["members"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| format!("{} {}", m["node_id"], m["peer"]))
                .collect();
            ids.sort();
            ids
        })
        .collect();
    ids.dedup();
    assert_eq!(ids.len(), 1, "the nodes disagree: {views:?}");
    for (v, p) in views.iter().zip(ports) {
        assert_eq!(v["members"][0]["self"], true);
        assert_eq!(v["members"][0]["peer"], format!("127.0.0.1:{p}"));
    }
    for mut c in children {
        let _ = c.kill();
        let _ = c.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_is_declared_dead_leaves_the_backup_candidates_and_rejoins_after_restart() {
    let a = in_process(&[]).await;
    let b = in_process(&[a.peer_addr()]).await;
    let seed = a.peer_addr().to_string();
    let mut c = start_process("127.0.0.1:0", &["--join", &seed], Stdio::null());
    let (_, c_peer) = wait_ready(&mut c);
    eventually(
        AGREE_WITHIN,
        "a and b see c alive, and it is a backup candidate",
        || {
            [&a, &b]
                .iter()
                .all(|h| alive_in(h).contains(&c_peer) && h.node().cluster_peers().contains(&c_peer))
        },
    )
    .await;
    let old_id = a
        .node()
        .membership()
        .unwrap()
        .view()
        .iter()
        .find(|m| m.peer == c_peer)
        .unwrap()
        .node_id;

    // SIGKILL: no goodbye, the failure detector must find it.
    c.kill().unwrap();
    c.wait().unwrap();
    let took = eventually(DEAD_WITHIN, "a and b declare c dead", || {
        [&a, &b]
            .iter()
            .all(|h| state_of(h, c_peer) == vec![MemberState::Dead])
    })
    .await;
    println!("a SIGKILLed node was declared dead after {took:?}");
    for h in [&a, &b] {
        assert!(!alive_in(h).contains(&c_peer));
        assert!(
            !h.node().cluster_peers().contains(&c_peer),
            "a dead member is still a backup candidate: {:?}",
            h.node().cluster_peers()
        );
    }
    let stats = client(a.client_addr()).await.stats().await.unwrap();
    assert_eq!(stat(&stats, "members_dead"), 1);
    assert_eq!(stat(&stats, "members_alive"), 2);

    // Restarted on the same address: a new node id and a larger incarnation join again.
    let mut c2 = start_process(&c_peer.to_string(), &["--join", &seed], Stdio::null());
    let (c2_client, _) = wait_ready(&mut c2);
    eventually(
        AGREE_WITHIN,
        "the restarted node is alive at a and b again",
        || {
            [&a, &b]
                .iter()
                .all(|h| alive_in(h).contains(&c_peer) && h.node().cluster_peers().contains(&c_peer))
        },
    )
    .await;
    let view = a.node().membership().unwrap().view();
    let at_c: Vec<_> = view.iter().filter(|m| m.peer == c_peer).collect();
    let new = at_c.iter().find(|m| m.state == MemberState::Alive).unwrap();
    assert_ne!(new.node_id, old_id, "a restarted node has a new node id");
    let old = at_c.iter().find(|m| m.node_id == old_id).unwrap();
    assert_eq!(old.state, MemberState::Dead);
    assert!(new.incarnation > old.incarnation);
    let v = members_json(c2_client);
    assert_eq!(v["alive"], 3, "{v}");
    let _ = c2.kill();
    let _ = c2.wait();
    stop(vec![a, b]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_another_secret_never_joins_and_is_counted_and_told_why() {
    let a = in_process(&[]).await;
    let dir = temp_dir("membership-stranger");
    let other = dir.join("other-secret");
    std::fs::write(&other, b"another-cluster-secret-0123456789").unwrap();
    let log = dir.join("stranger.log");
    let mut d = node_command("info")
        .arg("--secret-file")
        .arg(&other)
        .args(["--join", &a.peer_addr().to_string()])
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let (d_client, d_peer) = wait_ready(&mut d);
    let c = client(a.client_addr()).await;
    eventually(WAIT, "a refuses the stranger's datagrams", || {
        futures_now(c.stats()).is_some_and(|s| stat(&s, "membership_refused") >= 3)
    })
    .await;
    // Past its warning (3 s) and several announce rounds: still outside.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(state_of(&a, d_peer).is_empty(), "the stranger is in a's view");
    assert_eq!(a.node().membership().unwrap().view().len(), 1);
    let v = members_json(d_client);
    assert_eq!(v["members"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["members"][0]["state"], "joining", "{v}");
    let stats = c.stats().await.unwrap();
    assert!(stat(&stats, "membership_refused") >= 4);
    assert_eq!(stat(&stats, "members_alive"), 1);
    let _ = d.kill();
    let _ = d.wait();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("WARN") && text.contains("no member has answered") && text.contains("cluster secret"),
        "the stranger does not say why at WARN:\n{text}"
    );
    stop(vec![a]).await;
}

/// Polls a future once from inside a sync closure, by blocking on it in place (bounded).
fn futures_now<T>(f: impl std::future::Future<Output = Result<T, sessync_client::ClientError>>) -> Option<T> {
    tokio::task::block_in_place(|| {
        tokio::runtime::Handle::current().block_on(async { tokio::time::timeout(WAIT, f).await.ok()?.ok() })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_replayed_datagrams_are_dropped_and_counted() {
    // A sniffing socket is one of a's seeds, so a sends it real, sealed ANNOUNCEs.
    let sniff = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let a = in_process(&[sniff.local_addr().unwrap()]).await;
    let b = in_process(&[a.peer_addr()]).await;
    eventually(AGREE_WITHIN, "a and b see each other", || {
        alive_in(&a) == vec![b.peer_addr()] && alive_in(&b) == vec![a.peer_addr()]
    })
    .await;
    let mut buf = vec![0u8; 2048];
    let (n, _) = tokio::time::timeout(WAIT, sniff.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let sealed = buf[..n].to_vec();
    let to_b = b.peer_addr();
    let cb = client(b.client_addr()).await;
    let before = cb.stats().await.unwrap();

    // Garbage, a truncated datagram and one with a flipped bit: refused.
    sniff.send_to(b"not a membership datagram", to_b).await.unwrap();
    sniff.send_to(&sealed[..20], to_b).await.unwrap();
    let mut flipped = sealed.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    sniff.send_to(&flipped, to_b).await.unwrap();
    // The real datagram twice: the first passes authentication (foca ignores an ANNOUNCE
    // meant for another address), the second is a replay.
    sniff.send_to(&sealed, to_b).await.unwrap();
    sniff.send_to(&sealed, to_b).await.unwrap();
    let mut after = before.clone();
    eventually(WAIT, "b counts 3 refused and 1 replayed", || {
        after = futures_now(cb.stats()).unwrap_or_default();
        !after.is_empty()
            && stat(&after, "membership_refused") >= stat(&before, "membership_refused") + 3
            && stat(&after, "membership_replayed") > stat(&before, "membership_replayed")
    })
    .await;
    assert_eq!(
        stat(&after, "membership_refused") - stat(&before, "membership_refused"),
        3,
        "only the forged ones are refused"
    );
    // Nothing changed in b's view.
    assert_eq!(alive_in(&b), vec![a.peer_addr()]);
    stop(vec![a, b]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dns_seed_finds_the_cluster_by_name_and_host_names_work_everywhere() {
    let a = in_process(&[]).await;
    let seed = format!("dns:localhost:{}", a.peer_addr().port());
    // Host names for the node's own addresses too (resolved at start, IPv4 first).
    let mut p = start_process_at("localhost:0", "localhost:0", &["--join", &seed], Stdio::null());
    let (p_client, p_peer) = wait_ready(&mut p);
    assert!(p_client.ip().is_loopback() && p_peer.ip().is_loopback());
    eventually(AGREE_WITHIN, "the node that joined by name is alive at a", || {
        alive_in(&a) == vec![p_peer]
    })
    .await;
    let v = members_json(p_client);
    assert_eq!(v["alive"], 2, "{v}");
    // The CLI's --node and the Rust SDK take a host name, resolved when connecting.
    let by_name = format!("localhost:{}", p_client.port());
    let o = sessync(&["members", "--node", &by_name]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && text.contains("(this node)") && text.contains("2 alive"),
        "{text}"
    );
    let c = tokio::time::timeout(
        WAIT,
        sessync_client::Client::connect_host(&by_name, Default::default()),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(c.members().await.unwrap().len(), 2);
    assert!(
        sessync_client::Client::connect_host("no-such-host.invalid:7700", Default::default())
            .await
            .is_err()
    );
    let _ = p.kill();
    let _ = p.wait();
    stop(vec![a]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn announce_leaving_shows_leaving_and_removes_the_backup_candidate() {
    let a = in_process(&[]).await;
    let b = in_process(&[a.peer_addr()]).await;
    eventually(AGREE_WITHIN, "a sees b alive", || {
        a.node().cluster_peers().contains(&b.peer_addr())
    })
    .await;
    tokio::time::timeout(WAIT, b.node().membership().unwrap().announce_leaving())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        b.node().membership().unwrap().view()[0].state,
        MemberState::Leaving
    );
    eventually(AGREE_WITHIN, "a sees b leaving", || {
        state_of(&a, b.peer_addr()) == vec![MemberState::Leaving]
    })
    .await;
    assert!(!a.node().cluster_peers().contains(&b.peer_addr()));
    // A clean stop declares b gone at once (no failure detector wait).
    let bp = b.peer_addr();
    assert!(b.shutdown(WAIT).await);
    let took = eventually(
        Duration::from_secs(3),
        "a sees b dead after its clean stop",
        || state_of(&a, bp) == vec![MemberState::Dead],
    )
    .await;
    println!("a cleanly stopped node was seen dead after {took:?}");
    stop(vec![a]).await;
}

#[test]
fn a_malformed_seed_is_a_usage_error() {
    for bad in ["nohostport", "dns:name-without-port", "host:0", "dns::7800"] {
        let o = sessync(&["node", "--join", bad]);
        assert_eq!(
            o.status.code(),
            Some(64),
            "--join {bad}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let o = sessync(&["node", "--peers", bad]);
        assert_eq!(o.status.code(), Some(64), "--peers {bad}");
    }
}

/// Membership traffic per node per second at 3 and 32 members (in-process nodes on
/// loopback, every datagram counted by the nodes themselves). A measurement for
/// BENCHMARKS.md, not a check: run it by hand with
/// `cargo test --release --test membership -- --ignored --nocapture membership_traffic`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement for BENCHMARKS.md (about 40 s), run by hand; the other tests here check behaviour"]
async fn membership_traffic() {
    for n in [3usize, 32] {
        let first = in_process(&[]).await;
        let seed = first.peer_addr();
        let mut nodes = vec![first];
        for _ in 1..n {
            nodes.push(in_process(&[seed]).await);
        }
        eventually(
            Duration::from_secs(30),
            "every node sees every member alive",
            || nodes.iter().all(|h| alive_in(h).len() == n - 1),
        )
        .await;
        let sent = |nodes: &[NodeHandle]| -> u64 {
            nodes
                .iter()
                .map(|h| stat(&h.node().stats_snapshot(), "membership_sent"))
                .sum()
        };
        let before = sent(&nodes);
        let window = Duration::from_secs(10);
        tokio::time::sleep(window).await;
        let after = sent(&nodes);
        let per_node = (after - before) as f64 / n as f64 / window.as_secs_f64();
        println!(
            "{n} members: {per_node:.1} datagrams sent per node per second (at most {} bytes each)",
            1462
        );
        stop(nodes).await;
    }
}
