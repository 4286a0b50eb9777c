//! The `sessync` CLI, run as a process against a node run as a process.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Command, Output};

use common::*;

fn sessync(args: &[&str]) -> Output {
    // Each call is bounded by the client's own connect and request timeouts (2 s + 5 s).
    Command::new(env!("CARGO_BIN_EXE_sessync"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run sessync")
}

fn stdout(o: &Output) -> String {
    assert!(
        o.status.success(),
        "failed: {}\n{}",
        String::from_utf8_lossy(&o.stderr),
        String::from_utf8_lossy(&o.stdout)
    );
    String::from_utf8(o.stdout.clone()).unwrap()
}

#[test]
fn cli_drives_a_node_process() {
    let node = spawn_node(&["--password", "pw"]);
    let addr = node.client.to_string();
    let base = ["--node", addr.as_str(), "--password", "pw"];
    let with = |args: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        v.extend(base.iter().map(|s| s.to_string()));
        v
    };
    let run = |args: &[&str]| {
        let v = with(args);
        sessync(&v.iter().map(String::as_str).collect::<Vec<_>>())
    };

    let token = stdout(&run(&["session", "create", "user=alice", "cart=0"]))
        .trim()
        .to_string();
    assert!(!token.is_empty() && !token.contains(' '));

    let got = stdout(&run(&["session", "get", &token]));
    assert!(
        got.contains("version 1") && got.contains("user=alice") && got.contains("cart=0"),
        "{got}"
    );

    let j: serde_json::Value =
        serde_json::from_str(&stdout(&run(&["session", "get", &token, "user", "--json"]))).unwrap();
    assert_eq!(j["version"], 1);
    assert_eq!(j["attributes"]["user"], "alice");
    assert!(j["attributes"].get("cart").is_none(), "only the named key: {j}");

    stdout(&run(&[
        "session",
        "set",
        &token,
        "cart=2",
        "--delete",
        "user",
        "--if-version",
        "1",
    ]));
    let conflict = run(&["session", "set", &token, "cart=9", "--if-version", "1"]);
    assert!(!conflict.status.success());
    assert!(String::from_utf8_lossy(&conflict.stderr).contains("VERSION_CONFLICT"));

    let j: serde_json::Value =
        serde_json::from_str(&stdout(&run(&["session", "touch", &token, "--json"]))).unwrap();
    assert_eq!(j["version"], 2);

    let rotated = stdout(&run(&["session", "rotate", &token])).trim().to_string();
    assert_ne!(rotated, token);
    let old = run(&["session", "get", &token, "--json"]);
    assert!(!old.status.success());
    let err: serde_json::Value = serde_json::from_str(&String::from_utf8_lossy(&old.stdout)).unwrap();
    assert_eq!(err["error"], "SESSION_NOT_FOUND");
    assert_eq!(err["code"], 301);

    stdout(&run(&["session", "destroy", &rotated]));
    assert!(!run(&["session", "get", &rotated]).status.success());

    let stats: serde_json::Value = serde_json::from_str(&stdout(&run(&["stats", "--json"]))).unwrap();
    assert_eq!(stats["created"], 1);
    assert_eq!(stats["rotated"], 1);
    assert_eq!(stats["destroyed"], 1);
    assert!(stats["requests"].as_u64().unwrap() >= 8);

    // Wrong password: the error's name, non-zero exit.
    let bad = sessync(&["stats", "--node", &addr, "--password", "nope"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("AUTH_FAILED"));
    // A token that is not a token.
    let forged = run(&["session", "get", "not-a-token"]);
    assert!(String::from_utf8_lossy(&forged.stderr).contains("INVALID_TOKEN"));
}

#[test]
fn node_flags_come_from_the_environment_too() {
    let dir = temp_dir("cli-env");
    let secret = secret_file(&dir);
    let mut child = Command::new(env!("CARGO_BIN_EXE_sessync"));
    child
        .args(["node", "--log", "warn"])
        .env("SESSYNC_CLIENT", "127.0.0.1:0")
        .env("SESSYNC_PEER", "127.0.0.1:0")
        .env("SESSYNC_SECRET_FILE", &secret)
        .env("SESSYNC_MAX_SESSIONS", "1");
    // Reuse spawn_node's readiness handling by spawning through it is not possible with env,
    // so read the ready line here.
    let mut child = child.stdout(std::process::Stdio::piped()).spawn().unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        let mut lines = std::io::BufReader::new(out).lines();
        if let Some(Ok(l)) = lines.next() {
            let _ = tx.send(l);
        }
        for _ in lines {}
    });
    let line = rx.recv_timeout(WAIT).unwrap();
    let addr = line
        .split_whitespace()
        .find_map(|p| p.strip_prefix("client="))
        .unwrap()
        .to_string();
    // Killed on drop, even if an assertion below fails.
    let parsed = addr.parse().unwrap();
    let _guard = NodeProcess {
        child,
        client: parsed,
        peer: parsed,
    };
    stdout(&sessync(&["session", "create", "--node", &addr]));
    let full = sessync(&["session", "create", "--node", &addr]);
    assert!(
        String::from_utf8_lossy(&full.stderr).contains("CAPACITY"),
        "SESSYNC_MAX_SESSIONS=1 applied"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sigterm_shuts_a_node_down_gracefully() {
    let mut node = spawn_node(&[]);
    let pid = node.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let started = std::time::Instant::now();
    loop {
        if let Some(status) = node.child.try_wait().unwrap() {
            assert!(status.success(), "exit status after SIGTERM: {status}");
            break;
        }
        assert!(started.elapsed() < WAIT, "node did not exit after SIGTERM");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn cluster_command_starts_nodes_that_share_sessions() {
    use std::io::{BufRead, BufReader};
    // The cluster uses fixed offsets from a base port; try a few random bases until one is free.
    for attempt in 0..5u16 {
        let base = 20_000 + (std::process::id() as u16 % 1000) * 20 + attempt * 7;
        let mut child = Command::new(env!("CARGO_BIN_EXE_sessync"))
            .args([
                "cluster",
                "--nodes",
                "2",
                "--base-port",
                &base.to_string(),
                "--log",
                "warn",
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut clients = Vec::new();
        while let Ok(line) = rx.recv_timeout(WAIT) {
            if let Some(rest) = line.trim().strip_prefix("node ") {
                let addr = rest.split_whitespace().nth(2).unwrap().to_string();
                clients.push(addr);
            }
            if line.contains("Ctrl-C") {
                break;
            }
        }
        let guard = NodeProcess {
            child,
            client: "127.0.0.1:1".parse().unwrap(),
            peer: "127.0.0.1:1".parse().unwrap(),
        };
        if clients.len() != 2 {
            drop(guard);
            continue; // a port was taken: try another base
        }
        assert_eq!(clients[0], format!("127.0.0.1:{base}"));
        let token = stdout(&sessync(&[
            "session",
            "create",
            "--node",
            &clients[0],
            "user=alice",
        ]))
        .trim()
        .to_string();
        let j: serde_json::Value = serde_json::from_str(&stdout(&sessync(&[
            "session",
            "get",
            "--node",
            &clients[1],
            &token,
            "--json",
        ])))
        .unwrap();
        assert_eq!(j["attributes"]["user"], "alice");
        assert_eq!(
            j["token_changed"], true,
            "the session moved to node 1 and a new token came back"
        );
        return;
    }
    panic!("no free base port found for the trial cluster");
}

#[test]
fn replicas_without_enough_peers_is_refused_at_start() {
    let o = sessync(&[
        "node",
        "--client",
        "127.0.0.1:0",
        "--peer",
        "127.0.0.1:0",
        "--replicas",
        "1",
    ]);
    assert!(
        !o.status.success(),
        "a node that can never have a backup must not start"
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("--replicas 1 needs at least 1 other node"), "{err}");
    let o = sessync(&["cluster", "--nodes", "1", "--replicas", "1"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("needs more than 1 node"));
}

/// Runs `sessync` and returns (exit status, stdout, stderr).
fn run_status(args: &[&str]) -> (i32, String, String) {
    let o = sessync(args);
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).to_string(),
        String::from_utf8_lossy(&o.stderr).to_string(),
    )
}

/// The one JSON object a failed command prints under `--json`.
fn json_error(args: &[&str]) -> (i32, serde_json::Value) {
    let (code, out, err) = run_status(args);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "one JSON object expected, got {out:?} (stderr {err:?})"
    );
    (code, serde_json::from_str(lines[0]).unwrap())
}

#[test]
fn cli_failures_have_exit_codes_names_hints_and_json() {
    let node = spawn_node(&[]);
    let addr = node.client.to_string();
    let peer = node.peer.to_string();

    // Usage errors: 64.
    assert_eq!(run_status(&["session", "bogus"]).0, 64);
    let (code, j) = json_error(&["session", "bogus", "--json"]);
    assert_eq!((code, j["error"].as_str()), (64, Some("USAGE")));
    assert_eq!(j["exit"], 64);
    let (code, j) = json_error(&["session", "create", "--node", &addr, "not-a-pair", "--json"]);
    assert_eq!((code, j["error"].as_str()), (64, Some("USAGE")), "{j}");
    assert!(j["message"].as_str().unwrap().contains("key=value"));
    assert_eq!(run_status(&["--help"]).0, 0);

    // Node error replies: 2, with the node's error name and code.
    let (code, j) = json_error(&["session", "get", "--node", &addr, "not-a-token", "--json"]);
    assert_eq!(
        (code, j["error"].as_str(), j["code"].as_u64()),
        (2, Some("INVALID_TOKEN"), Some(300))
    );
    let (code, _, err) = run_status(&["session", "get", "--node", &addr, "not-a-token"]);
    assert_eq!(code, 2);
    assert!(err.starts_with("error: INVALID_TOKEN"), "{err}");
    // A password sent to a node that has none is refused, as Redis refuses AUTH.
    let (code, j) = json_error(&["ping", "--node", &addr, "--password", "pw", "--json"]);
    assert_eq!((code, j["error"].as_str()), (2, Some("AUTH_FAILED")), "{j}");
    assert!(j["message"].as_str().unwrap().contains("has none"), "{j}");

    // Cannot connect: 69, naming the address and its role.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let (code, j) = json_error(&["ping", "--node", &closed, "--json"]);
    assert_eq!((code, j["error"].as_str()), (69, Some("CANNOT_CONNECT")));
    assert_eq!(
        j["message"].as_str().unwrap(),
        format!("client port {closed}: connection refused")
    );
    let (code, _, err) = run_status(&["stats", "--node", &closed]);
    assert_eq!(code, 69);
    assert!(err.contains("hint: is a sessync node running there?"), "{err}");

    // The peer port given as --node: a hint.
    let (code, j) = json_error(&["session", "create", "--node", &peer, "--json"]);
    assert_eq!(
        (code, j["error"].as_str()),
        (69, Some("NOT_A_CLIENT_PORT")),
        "{j}"
    );
    assert!(
        j["hint"]
            .as_str()
            .unwrap()
            .contains("this looks like a peer port"),
        "{j}"
    );

    // Something that is not a sessync node (it answers like a web server).
    let web = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let web_addr = web.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for mut s in web.incoming().map_while(Result::ok) {
            let mut buf = [0u8; 256];
            let _ = s.read(&mut buf);
            let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
        }
    });
    let (code, j) = json_error(&["ping", "--node", &web_addr, "--json"]);
    assert_eq!(
        (code, j["error"].as_str()),
        (69, Some("NOT_A_SESSYNC_NODE")),
        "{j}"
    );
    assert!(
        j["hint"]
            .as_str()
            .unwrap()
            .contains("not look like a sessync node"),
        "{j}"
    );

    // ping answers 0; stats says what the node is.
    let (code, out, _) = run_status(&["ping", "--node", &addr]);
    assert_eq!(code, 0);
    assert!(out.starts_with("PONG from"), "{out}");
    let (code, out, _) = run_status(&["stats", "--node", &addr]);
    assert_eq!(code, 0);
    for want in [
        "version 0.",
        "node_id ",
        "uptime ",
        &format!("client_addr {addr}"),
        &format!("peer_addr {peer}"),
    ] {
        assert!(out.contains(want), "{want:?} missing in {out}");
    }
    let j: serde_json::Value =
        serde_json::from_str(&run_status(&["stats", "--node", &addr, "--json"]).1).unwrap();
    assert_eq!(j["client_addr"], addr);
    assert_eq!(j["node_id"].as_str().unwrap().len(), 32);
    assert!(j["uptime_ms"].as_u64().is_some());
    assert!(j["peer_links"].as_array().unwrap().is_empty());
}

/// A peer port bound to every address (`0.0.0.0`) is not an address to advertise: without
/// `--advertise` the node refuses to start and says what to give.
#[test]
fn a_wildcard_peer_address_needs_an_advertised_one() {
    let (code, _, err) = run_status(&[
        "node",
        "--client",
        "127.0.0.1:0",
        "--peer",
        "0.0.0.0:0",
        "--log",
        "warn",
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("give --advertise the address"), "{err}");
}

#[test]
fn a_port_in_use_is_named_with_its_role() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, _, err) = run_status(&[
        "node",
        "--client",
        "127.0.0.1:0",
        "--peer",
        &addr,
        "--log",
        "warn",
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!("peer port {addr}: address already in use")),
        "{err}"
    );
    let (_, _, err) = run_status(&[
        "node",
        "--client",
        &addr,
        "--peer",
        "127.0.0.1:0",
        "--log",
        "warn",
    ]);
    assert!(
        err.contains(&format!("client port {addr}: address already in use")),
        "{err}"
    );
    let (_, _, err) = run_status(&[
        "node",
        "--client",
        "127.0.0.1:0",
        "--peer",
        "127.0.0.1:0",
        "--http",
        &addr,
        "--log",
        "warn",
    ]);
    assert!(
        err.contains(&format!("http port {addr}: address already in use")),
        "{err}"
    );
}

/// Starts a node with stderr piped, stops it with SIGTERM, and returns its stderr.
fn node_log(extra: &[&str]) -> String {
    use std::io::Read;
    let mut child = node_command("info")
        .args(extra)
        .env_remove("RUST_LOG")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (client, _) = wait_ready(&mut child);
    let mut stderr = child.stderr.take().unwrap();
    // A failed authentication is logged at INFO.
    let _ = sessync(&["ping", "--node", &client.to_string(), "--password", "x"]);
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let mut log = String::new();
    let reader = std::thread::spawn(move || {
        let _ = stderr.read_to_string(&mut log);
        log
    });
    let started = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        assert!(started.elapsed() < WAIT, "node did not stop");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    reader.join().unwrap()
}

#[test]
fn logs_have_no_colour_codes_when_piped_and_json_lines_on_request() {
    let log = node_log(&[]);
    assert!(!log.contains('\u{1b}'), "ANSI codes in a piped log: {log:?}");
    assert!(log.contains("sessync node ready"), "{log}");
    assert!(log.contains("client authentication failed"), "{log}");
    assert!(log.lines().last().unwrap().contains("stopped"), "{log}");

    let log = node_log(&["--log-format", "json"]);
    let mut messages = Vec::new();
    for line in log.lines() {
        let j: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"));
        messages.push(j["fields"]["message"].as_str().unwrap_or_default().to_string());
    }
    assert!(messages.iter().any(|m| m == "sessync node ready"), "{messages:?}");
    assert_eq!(messages.last().map(String::as_str), Some("stopped"));
}

/// Starts `sessync node` with stderr piped at INFO; returns the child and its addresses.
fn spawn_logging_node(extra: &[&str]) -> (std::process::Child, std::net::SocketAddr, std::net::SocketAddr) {
    let mut child = node_command("info")
        .args(extra)
        .env_remove("RUST_LOG")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (client, peer) = wait_ready(&mut child);
    (child, client, peer)
}

/// Sends SIGTERM, waits (bounded) for the exit, and returns everything logged on stderr.
fn stop_and_read_log(mut child: std::process::Child) -> String {
    use std::io::Read;
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut log = String::new();
        let _ = stderr.read_to_string(&mut log);
        log
    });
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let started = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        assert!(started.elapsed() < WAIT, "process did not stop");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    reader.join().unwrap()
}

#[test]
fn nodes_with_different_secrets_say_so_at_info_on_both_sides() {
    let dir = temp_dir("cli-secrets");
    let (s1, s2) = (dir.join("s1"), dir.join("s2"));
    std::fs::write(&s1, "first-secret-first-secret-000000").unwrap();
    std::fs::write(&s2, "second-secret-second-secret-0000").unwrap();
    let (b, _, b_peer) = spawn_logging_node(&["--secret-file", s2.to_str().unwrap()]);
    let (a, a_client, _) = spawn_logging_node(&[
        "--secret-file",
        s1.to_str().unwrap(),
        "--replicas",
        "1",
        "--peers",
        &b_peer.to_string(),
    ]);
    let (code, j) = json_error(&["session", "create", "--node", &a_client.to_string(), "--json"]);
    assert_eq!(
        (code, j["error"].as_str()),
        (2, Some("BACKUP_UNAVAILABLE")),
        "{j}"
    );
    let (_, out, _) = run_status(&["stats", "--node", &a_client.to_string()]);
    assert!(out.contains("peer_handshakes_refused 1"), "{out}");
    assert!(out.contains(&format!("peer_link {b_peer} down")), "{out}");
    let hint = "proof does not verify: do the nodes share the cluster secret?";
    let a_log = stop_and_read_log(a);
    let b_log = stop_and_read_log(b);
    for (who, log) in [("dialler", &a_log), ("acceptor", &b_log)] {
        let line = log
            .lines()
            .find(|l| l.contains("INFO") && l.contains("peer handshake refused"))
            .unwrap_or_else(|| panic!("the {who} logged no refused handshake at INFO:\n{log}"));
        assert!(line.contains(hint), "{who}: {line}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn cluster_prints_status_urls_and_logs_each_node_ready_and_stopped() {
    use std::io::{BufRead, BufReader};
    for attempt in 0..5u16 {
        let base = 40_000 + (std::process::id() as u16 % 500) * 20 + attempt * 7;
        let mut child = Command::new(env!("CARGO_BIN_EXE_sessync"))
            .args([
                "cluster",
                "--nodes",
                "2",
                "--base-port",
                &base.to_string(),
                "--log",
                "info",
            ])
            .env_remove("RUST_LOG")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut printed = Vec::new();
        while let Ok(line) = rx.recv_timeout(WAIT) {
            let done = line.contains("Ctrl-C");
            printed.push(line);
            if done {
                break;
            }
        }
        if !printed.iter().any(|l| l.contains("Ctrl-C")) {
            let _ = child.kill();
            let _ = child.wait();
            continue; // a port was taken: try another base
        }
        let text = printed.join("\n");
        let status = format!("http://127.0.0.1:{}/", base + 200);
        assert!(text.contains(&status), "{text}");
        assert!(text.contains("/readyz") && text.contains("/metrics"), "{text}");
        let log = stop_and_read_log(child);
        assert!(!log.contains('\u{1b}'), "ANSI codes in a piped log");
        for i in 0..2 {
            for what in ["node ready", "node stopped"] {
                assert!(
                    log.lines()
                        .any(|l| l.contains(what) && l.contains(&format!("node={i}"))),
                    "no {what:?} for node {i}:\n{log}"
                );
            }
        }
        return;
    }
    panic!("no free base port found for the trial cluster");
}

/// A node told of more members than the write promise is measured for (more than
/// `--replicas` + 2, protocol.md 12.6) says so in its log, once; a node within it, or
/// without backups, does not. The node counts itself beside its `--peers` (which need not
/// list it): three others make four members. (Session 51 counted the list alone, and a
/// four-node cluster whose nodes each listed the three others was not warned of.) Five
/// members are past what any `--replicas` keeps.
#[test]
fn a_cluster_larger_than_the_promise_is_warned_of() {
    // `n` distinct addresses nothing listens on.
    let peers = |n: usize| {
        let mut distinct = std::collections::BTreeSet::new();
        while distinct.len() < n {
            distinct.insert(nowhere().to_string());
        }
        distinct.into_iter().collect::<Vec<_>>().join(",")
    };
    let warning = "acknowledged writes can be lost through network partitions";
    let three = peers(3);
    let log = node_log(&["--peers", &three, "--replicas", "1"]);
    assert_eq!(log.matches(warning).count(), 1, "{log}");
    assert!(log.contains("--replicas 2 keeps them"), "{log}");
    let two = peers(2);
    let log = node_log(&["--peers", &two, "--replicas", "1"]);
    assert!(!log.contains(warning), "{log}");
    let log = node_log(&["--peers", &three, "--replicas", "2"]);
    assert!(!log.contains(warning), "{log}");
    let log = node_log(&["--peers", &three, "--replicas", "0"]);
    assert!(!log.contains(warning), "{log}");
    // Five members: past what any --replicas (at most 2) keeps, and the log says so.
    let four = peers(4);
    let log = node_log(&["--peers", &four, "--replicas", "2"]);
    assert_eq!(log.matches(warning).count(), 1, "{log}");
    assert!(log.contains("no --replicas keeps them at this size"), "{log}");
}
