//! Operating a node over real sockets: the HTTP port's probes (`/healthz`, `/readyz`
//! flipping with the only backup peer), `/metrics` read by a Prometheus text parser, bad
//! input on the HTTP port (garbage, slowloris, an endless header, a flood, unknown paths)
//! with the node's memory and its client port unaffected, and refused peer handshakes
//! counted and explained.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::*;
use sessync_client::{ClientError, ErrorCode};
use sessync_proto::Keyring;
use sessync_server::{NodeConfig, NodeHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{sleep, timeout};

/// One HTTP/1.1 exchange with `Connection: close`: (status, body).
async fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut s = timeout(WAIT, TcpStream::connect(addr)).await.unwrap().unwrap();
    let req = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    timeout(WAIT, s.read_to_end(&mut buf)).await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&buf).to_string();
    let status: u16 = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    http(addr, "GET", path).await
}

/// An in-process node with the HTTP port on, keeping `replicas` backups.
async fn node_with_http(replicas: u8, tweak: impl FnOnce(&mut NodeConfig)) -> NodeHandle {
    let mut c = config();
    c.http_addr = Some("127.0.0.1:0".parse().unwrap());
    c.replicas = replicas;
    c.peer_timeout = Duration::from_millis(500);
    tweak(&mut c);
    sessync_server::start(c).await.unwrap()
}

/// Polls `/readyz` until its status is `want` (bounded); returns the last body.
async fn wait_readyz(addr: SocketAddr, want: u16, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let (status, body) = get(addr, "/readyz").await;
        if status == want {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz stayed {status} ({body}), wanted {want}"
        );
        sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_answers_and_unknown_paths_get_404() {
    let node = node_with_http(0, |_| {}).await;
    let h = node.http_addr().unwrap();
    assert_eq!(get(h, "/healthz").await, (200, "ok\n".to_string()));
    let (status, body) = get(h, "/readyz").await;
    assert_eq!(status, 200, "{body}");
    let j: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(j["ready"], true);
    assert_eq!(get(h, "/nope").await.0, 404);
    assert_eq!(get(h, "/healthz/../etc/passwd").await.0, 404);
    assert_eq!(http(h, "POST", "/healthz").await.0, 405);
    let (status, page) = get(h, "/").await;
    assert_eq!(status, 200);
    assert!(
        page.contains("<script>") && page.contains("/status.json"),
        "{page}"
    );
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "no outside resource"
    );
    let (status, body) = get(h, "/status.json").await;
    assert_eq!(status, 200);
    let j: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(j["node"]["client"], node.client_addr().to_string());
    assert_eq!(j["counters"]["sessions"], 0);
    stop(vec![node]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_while_the_only_backup_peer_is_dead_and_200_when_it_returns() {
    let a = node_with_http(1, |_| {}).await;
    let b = node_with_http(0, |_| {}).await;
    let b_peer = b.peer_addr();
    let peers = vec![a.peer_addr(), b_peer];
    a.node().set_peers(peers.clone());
    b.node().set_peers(peers.clone());
    let h = a.http_addr().unwrap();
    let body = wait_readyz(h, 200, WAIT).await;
    let j: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(j["answering_peers"][0], b_peer.to_string());

    stop(vec![b]).await;
    let body = wait_readyz(h, 503, WAIT).await;
    let j: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(j["ready"], false);
    let reason = j["reason"].as_str().unwrap();
    assert!(reason.contains("short of backups"), "{reason}");
    assert_eq!(j["silent_peers"][0]["peer"], b_peer.to_string());
    // /metrics agrees, and the status page's JSON shows the link down.
    let (_, metrics) = get(h, "/metrics").await;
    assert!(metrics.contains("sessync_ready 0"), "{metrics}");

    // B comes back on the same peer address (a restarted process).
    let mut c = config();
    c.peer_addr = b_peer;
    let deadline = Instant::now() + WAIT;
    let b = loop {
        match sessync_server::start(c.clone()).await {
            Ok(n) => break n,
            Err(e) if Instant::now() < deadline => {
                eprintln!("rebinding {b_peer}: {e}");
                sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("cannot rebind {b_peer}: {e}"),
        }
    };
    b.node().set_peers(peers);
    // The link re-dials after its backoff (at most 5 s).
    wait_readyz(h, 200, WAIT * 2).await;
    stop(vec![a, b]).await;
}

/// Parses a scrape with the `prometheus-parse` crate.
async fn scrape(h: SocketAddr) -> prometheus_parse::Scrape {
    let (status, text) = get(h, "/metrics").await;
    assert_eq!(status, 200);
    let lines = text.lines().map(|l| Ok(l.to_string()));
    prometheus_parse::Scrape::parse(lines).unwrap()
}

fn value(s: &prometheus_parse::Scrape, name: &str, label: Option<(&str, &str)>) -> f64 {
    let sample = s
        .samples
        .iter()
        .find(|x| x.metric == name && label.is_none_or(|(k, v)| x.labels.get(k) == Some(v)))
        .unwrap_or_else(|| panic!("no sample {name} {label:?}"));
    match &sample.value {
        prometheus_parse::Value::Counter(v)
        | prometheus_parse::Value::Gauge(v)
        | prometheus_parse::Value::Untyped(v) => *v,
        prometheus_parse::Value::Histogram(buckets) => buckets.last().map(|b| b.count).unwrap_or(0.0),
        other => panic!("unexpected {other:?}"),
    }
}

/// A histogram's observation count (`_count`, which the parser folds into the sample's
/// buckets: the `+Inf` bucket counts every observation).
fn histogram_count(s: &prometheus_parse::Scrape, name: &str, label: Option<(&str, &str)>) -> f64 {
    value(s, name, label)
}

/// A node may bind its peer port to every address when it is told what to advertise (the
/// deployment guide's `--peer 0.0.0.0:7800 --advertise IP:7800`); without that it does not
/// start (tests/cli.rs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wildcard_peer_port_starts_with_an_advertised_address() {
    let mut c = config();
    c.peer_addr = "0.0.0.0:0".parse().unwrap();
    let refused = sessync_server::start(c.clone()).await.err().expect("refused");
    assert!(refused.to_string().contains("--advertise"), "{refused}");
    c.advertise = Some("127.0.0.1:7800".parse().unwrap());
    let node = sessync_server::start(c).await.unwrap();
    assert_eq!(node.node().advertise(), "127.0.0.1:7800".parse().unwrap());
    stop(vec![node]).await;
}

/// `beyond_write_promise` (STATS and `/metrics`) is 1 while the node knows of more than
/// `--replicas` + 2 members, counting itself once whether or not its peer list names it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_beyond_the_write_promise_shows_in_stats_and_metrics() {
    // Held bound for the test, so that the node's own peer port is none of them.
    let held: Vec<std::net::TcpListener> = (0..3)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let others: Vec<SocketAddr> = held.iter().map(|l| l.local_addr().unwrap()).collect();
    let node = node_with_http(1, |c| c.peers = others[..2].to_vec()).await;
    let h = node.http_addr().unwrap();
    let c = client(node.client_addr()).await;
    let beyond = |stats: Vec<(String, u64)>| stat(&stats, "beyond_write_promise");
    // Itself and two others: three, within --replicas 1 + 2.
    assert_eq!(beyond(timeout(WAIT, c.stats()).await.unwrap().unwrap()), 0);
    assert_eq!(value(&scrape(h).await, "sessync_beyond_write_promise", None), 0.0);
    // Its own address in the list is not a member more.
    let mut with_itself = others[..2].to_vec();
    with_itself.push(node.peer_addr());
    node.node().set_peers(with_itself);
    assert_eq!(beyond(timeout(WAIT, c.stats()).await.unwrap().unwrap()), 0);
    // Three others: four members.
    node.node().set_peers(others.clone());
    assert_eq!(beyond(timeout(WAIT, c.stats()).await.unwrap().unwrap()), 1);
    assert_eq!(value(&scrape(h).await, "sessync_beyond_write_promise", None), 1.0);
    stop(vec![node]).await;
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_as_prometheus_text_and_move_with_requests() {
    let (a, b) = (node_with_http(0, |_| {}).await, node_with_http(0, |_| {}).await);
    let peers = vec![a.peer_addr(), b.peer_addr()];
    a.node().set_peers(peers.clone());
    b.node().set_peers(peers);
    let h = b.http_addr().unwrap();
    let before = scrape(h).await;
    assert_eq!(value(&before, "sessync_sessions", None), 0.0);
    let requests0 = value(&before, "sessync_requests_total", None);

    // A session made at A and read through B moves to B.
    let ca = client(a.client_addr()).await;
    let cb = client(b.client_addr()).await;
    let s = timeout(WAIT, ca.create(attrs(&[("user", "alice")])))
        .await
        .unwrap()
        .unwrap();
    let got = timeout(WAIT, cb.get(&s.token)).await.unwrap().unwrap();
    assert!(got.token_changed);
    for _ in 0..5 {
        timeout(WAIT, cb.get(&got.token)).await.unwrap().unwrap();
    }

    let after = scrape(h).await;
    assert!(value(&after, "sessync_requests_total", None) >= requests0 + 6.0);
    assert_eq!(value(&after, "sessync_sessions", None), 1.0);
    assert!(value(&after, "sessync_bytes", None) > 0.0);
    assert_eq!(value(&after, "sessync_copies_received_total", None), 1.0);
    assert!(histogram_count(&after, "sessync_request_duration_seconds", Some(("op", "get"))) >= 6.0);
    assert_eq!(
        histogram_count(&after, "sessync_move_duration_seconds", None),
        1.0
    );
    // The prober pings A every second: its link is up with a round trip.
    let deadline = Instant::now() + WAIT;
    loop {
        let m = scrape(h).await;
        let peer = a.peer_addr().to_string();
        let up = m
            .samples
            .iter()
            .any(|x| x.metric == "sessync_peer_link_up" && x.labels.get("peer") == Some(peer.as_str()));
        if up
            && value(&m, "sessync_peer_link_up", Some(("peer", &peer))) == 1.0
            && m.samples.iter().any(|x| x.metric == "sessync_peer_rtt_seconds")
            && value(&m, "sessync_peer_link_features", Some(("peer", &peer)))
                == sessync_proto::peer_feature::ALL as f64
        {
            break;
        }
        assert!(Instant::now() < deadline, "no link metrics for {peer}");
        sleep(Duration::from_millis(200)).await;
    }
    // Every STATS counter is there.
    for (name, _) in timeout(WAIT, cb.stats()).await.unwrap().unwrap() {
        if name.contains('=') || name == "uptime_ms" {
            continue;
        }
        let metric = format!("sessync_{}", name.strip_suffix("_total").unwrap_or(&name));
        assert!(
            after
                .samples
                .iter()
                .any(|x| x.metric == metric || x.metric == format!("{metric}_total")),
            "{name} is not in /metrics"
        );
    }
    stop(vec![a, b]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_handshake_is_counted_on_both_sides_and_explained() {
    let a = node_with_http(1, |_| {}).await;
    let mut other = config();
    other.keys = Keyring::single(b"another-secret-another-secret-00").unwrap();
    let b = sessync_server::start(other).await.unwrap();
    a.node().set_peers(vec![a.peer_addr(), b.peer_addr()]);
    let ca = client(a.client_addr()).await;
    match timeout(WAIT, ca.create(attrs(&[]))).await.unwrap() {
        Err(ClientError::Server { code, .. }) => assert_eq!(code, ErrorCode::BackupUnavailable),
        other => panic!("expected BACKUP_UNAVAILABLE, got {other:?}"),
    }
    let sa = timeout(WAIT, ca.stats()).await.unwrap().unwrap();
    assert!(stat(&sa, "peer_handshakes_refused") >= 1, "{sa:?}");
    let cb = client(b.client_addr()).await;
    let deadline = Instant::now() + WAIT;
    while stat(
        &timeout(WAIT, cb.stats()).await.unwrap().unwrap(),
        "peer_handshakes_refused",
    ) == 0
    {
        assert!(Instant::now() < deadline, "B never counted the refused handshake");
        sleep(Duration::from_millis(50)).await;
    }
    // The status page says why the link is down.
    let (_, body) = get(a.http_addr().unwrap(), "/status.json").await;
    assert!(body.contains("cluster secret"), "{body}");
    stop(vec![a, b]).await;
}

/// A `sessync node` child process with the HTTP port on: (child, client, http).
fn spawn_http_node() -> (Child, SocketAddr, SocketAddr) {
    let mut child = node_command("warn")
        .args(["--http", "127.0.0.1:0"])
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let line = ready_line(&mut child);
    (child, ready_field(&line, "client="), ready_field(&line, "http="))
}

fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap()
        * 1024
}

/// Reads until the server closes (or `within` passes): what it sent.
async fn read_until_close(s: &mut TcpStream, within: Duration) -> (Vec<u8>, bool) {
    let mut buf = Vec::new();
    let closed = timeout(within, async {
        let mut chunk = [0u8; 4096];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
    .is_ok();
    (buf, closed)
}

/// The client port still serves while the HTTP port is abused.
async fn bystander_served(c: &sessync_client::Client) {
    let s = timeout(Duration::from_secs(2), c.create(attrs(&[("k", "v")])))
        .await
        .expect("the client port stalled")
        .unwrap();
    timeout(Duration::from_secs(2), c.get(&s.token))
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_on_the_http_port_gets_4xx_or_a_close_and_leaves_the_node_serving() {
    let (child, client_addr, h) = spawn_http_node();
    let _kill = KillOnDrop(child);
    let pid = _kill.0.id();
    let c = client(client_addr).await;
    bystander_served(&c).await;
    let base = rss_bytes(pid);

    // Garbage bytes: 400 and close.
    let mut s = TcpStream::connect(h).await.unwrap();
    s.write_all(b"\x00\x01\x02\xff garbage \r\n\r\n").await.unwrap();
    let (reply, closed) = read_until_close(&mut s, WAIT).await;
    assert!(closed, "garbage left the connection open");
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.is_empty() || reply.starts_with("HTTP/1.1 4"), "{reply}");
    bystander_served(&c).await;

    // An unknown path: 404.
    assert_eq!(get(h, "/does/not/exist?x=1").await.0, 404);

    // A header that never ends (announced as 1 GiB): cut off near the 16 KiB head limit.
    let mut s = TcpStream::connect(h).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
        .await
        .unwrap();
    let chunk = vec![b'a'; 64 * 1024];
    let mut sent = 0usize;
    let started = Instant::now();
    while sent < (1 << 30) && started.elapsed() < WAIT {
        match timeout(Duration::from_secs(2), s.write_all(&chunk)).await {
            Ok(Ok(())) => sent += chunk.len(),
            _ => break,
        }
    }
    assert!(sent < 8 << 20, "the node read {sent} bytes of one header");
    let (reply, _) = read_until_close(&mut s, WAIT).await;
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.is_empty() || reply.starts_with("HTTP/1.1 431"), "{reply}");
    bystander_served(&c).await;

    // A body announced as 1 GiB is never read.
    let mut s = TcpStream::connect(h).await.unwrap();
    s.write_all(b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 1073741824\r\n\r\nabc")
        .await
        .unwrap();
    let (reply, closed) = read_until_close(&mut s, WAIT).await;
    assert!(closed);
    assert!(String::from_utf8_lossy(&reply).starts_with("HTTP/1.1 405"));

    // Slowloris: one byte of head every 300 ms is closed at the 5 s head timeout.
    let mut s = TcpStream::connect(h).await.unwrap();
    let started = Instant::now();
    let head = b"GET /healthz HTTP/1.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let mut cut = false;
    for b in head.iter() {
        if s.write_all(&[*b]).await.is_err() {
            cut = true;
            break;
        }
        let mut probe = [0u8; 256];
        if let Ok(Ok(0) | Err(_)) = timeout(Duration::from_millis(300), s.read(&mut probe)).await {
            cut = true;
            break;
        }
        if let Ok(Ok(n)) = timeout(Duration::from_millis(1), s.read(&mut probe)).await {
            // hyper answers 408 before closing.
            assert!(String::from_utf8_lossy(&probe[..n]).starts_with("HTTP/1.1 408") || n == 0);
            cut = true;
            break;
        }
    }
    let took = started.elapsed();
    assert!(cut, "a slowloris head was never cut off ({took:?})");
    assert!(took < Duration::from_secs(8), "cut off after {took:?}");
    bystander_served(&c).await;

    // A flood of idle connections past the limit: the extra ones are closed at once,
    // probes work again once the flood is gone.
    let mut held = Vec::new();
    for _ in 0..80 {
        held.push(TcpStream::connect(h).await.unwrap());
    }
    sleep(Duration::from_millis(200)).await;
    let mut closed_at_once = 0;
    for s in held.iter_mut() {
        let mut b = [0u8; 1];
        if let Ok(Ok(0) | Err(_)) = timeout(Duration::from_millis(20), s.read(&mut b)).await {
            closed_at_once += 1;
        }
    }
    assert!(
        closed_at_once >= 16,
        "only {closed_at_once} of 80 were refused at a limit of 64"
    );
    bystander_served(&c).await;
    drop(held);
    sleep(Duration::from_millis(200)).await;
    assert_eq!(get(h, "/healthz").await.0, 200);

    let grew = rss_bytes(pid).saturating_sub(base);
    assert!(grew < 32 << 20, "the node grew by {} MiB", grew >> 20);
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_refused_for_want_of_backups_is_not_counted_as_under_replicated() {
    let nowhere = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    // No HTTP port: its prober would dial `nowhere` first and make every CREATE be
    // refused up front, before the path that miscounts.
    let mut cfg = config();
    cfg.replicas = 1;
    cfg.peer_timeout = Duration::from_millis(500);
    cfg.peers = vec![nowhere];
    let strict = sessync_server::start(cfg).await.unwrap();
    let c = client(strict.client_addr()).await;
    for _ in 0..2 {
        match timeout(WAIT, c.create(attrs(&[]))).await.unwrap() {
            Err(ClientError::Server { code, .. }) => assert_eq!(code, ErrorCode::BackupUnavailable),
            other => panic!("expected BACKUP_UNAVAILABLE, got {other:?}"),
        }
    }
    let s = timeout(WAIT, c.stats()).await.unwrap().unwrap();
    assert_eq!(stat(&s, "backup_unavailable"), 2);
    assert_eq!(stat(&s, "under_replicated_writes"), 0, "{s:?}");
    stop(vec![strict]).await;
}
