//! The `sessync-bench` binary over real sockets: `load --json-out` writes a plot next to
//! its JSON that parses as SVG, and `delay-proxy` forwards with its delay.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_sessync-bench");

/// Waits for a child at most `limit`, killing it on overrun.
fn wait_bounded(mut child: Child, limit: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("sessync-bench did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sessync-bench-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn load_writes_an_svg_plot_next_to_its_json() {
    let dir = scratch("plot");
    let json = dir.join("run.json");
    let child = Command::new(BIN)
        .args([
            "load",
            "--spawn",
            "2",
            "--node-threads",
            "1",
            "--scenario",
            "local,move",
            "--connections",
            "2",
            "--depth",
            "2",
            "--sessions",
            "40",
            "--duration",
            "400ms",
            "--warmup",
            "100ms",
            "--quiet",
            "--json-out",
        ])
        .arg(&json)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    assert!(wait_bounded(child, Duration::from_secs(120)).success());
    let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let rows = doc["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 3, "sessync local, sessync move, echo");

    let svg = std::fs::read_to_string(dir.join("run.svg")).expect("the plot next to the JSON");
    let xml = roxmltree::Document::parse(&svg).expect("the plot parses as XML");
    let root = xml.root_element();
    assert_eq!(root.tag_name().name(), "svg");
    assert_eq!(root.tag_name().namespace(), Some("http://www.w3.org/2000/svg"));
    // One CDF curve per row: a <polyline> of more than 2 points (the axes and the legend's
    // samples are 2-point polylines), and one bar per row (a <rect>, plus the background).
    let curves: Vec<usize> = xml
        .descendants()
        .filter(|n| n.has_tag_name("polyline"))
        .map(|n| n.attribute("points").unwrap_or("").split_whitespace().count())
        .filter(|&points| points > 2)
        .collect();
    assert_eq!(curves.len(), rows.len(), "curves (points each): {curves:?}");
    assert!(curves.iter().all(|&p| p > 5), "curves (points each): {curves:?}");
    let rects = xml.descendants().filter(|n| n.has_tag_name("rect")).count();
    assert!(rects > rows.len(), "{rects} rects for {} rows", rows.len());
    let text: String = xml
        .descendants()
        .filter(|n| n.has_tag_name("text"))
        .filter_map(|n| n.text())
        .collect::<Vec<_>>()
        .join("\n");
    for label in [
        "sessync local",
        "sessync move",
        "echo local",
        "latency distribution (CDF)",
        "throughput",
    ] {
        assert!(text.contains(label), "no {label:?} in the plot's text:\n{text}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Kills the child when the test ends, passed or not.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn delay_proxy_subcommand_forwards_with_its_delay() {
    // The far side: echoes one message back.
    let upstream = TcpListener::bind("127.0.0.1:0").unwrap();
    let up_addr = upstream.local_addr().unwrap();
    let echo = std::thread::spawn(move || {
        let (mut s, _) = upstream.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).unwrap();
        s.write_all(&buf).unwrap();
    });
    let mut proxy = KillOnDrop(
        Command::new(BIN)
            .args([
                "delay-proxy",
                "--listen",
                "127.0.0.1:0",
                "--to",
                &up_addr.to_string(),
                "--delay",
                "25ms",
            ])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    let stdout = proxy.0.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        BufReader::new(stdout).read_line(&mut line).unwrap();
        line
    });
    let start = Instant::now();
    while !reader.is_finished() {
        assert!(start.elapsed() < Duration::from_secs(20), "no ready line");
        std::thread::sleep(Duration::from_millis(20));
    }
    let line = reader.join().unwrap();
    let addr = line
        .trim()
        .strip_prefix("ready listen=")
        .expect("ready line")
        .to_string();

    let mut c = TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(10)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let sent = Instant::now();
    c.write_all(b"hello").unwrap();
    let mut back = [0u8; 5];
    c.read_exact(&mut back).unwrap();
    let rtt = sent.elapsed();
    assert_eq!(&back, b"hello");
    assert!(rtt >= Duration::from_millis(50), "round trip {rtt:?} < 2 x 25 ms");
    echo.join().unwrap();
}
