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
