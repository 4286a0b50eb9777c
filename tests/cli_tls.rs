//! TLS from the shell: `sessync cluster --tls` runs with generated certificates, and the
//! CLI's `--tls-ca/--tls-cert/--tls-key/--tls-server-name` reach a TLS node process.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::certs::Ca;
use common::*;

fn sessync(args: &[&str]) -> Output {
    // Each call is bounded by the client's own connect and request timeouts (2 s + 5 s).
    Command::new(env!("CARGO_BIN_EXE_sessync"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run sessync")
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "failed: {}\n{}",
        String::from_utf8_lossy(&o.stderr),
        String::from_utf8_lossy(&o.stdout)
    );
    String::from_utf8(o.stdout.clone()).unwrap().trim().to_string()
}

/// A free base port for `cluster` (which takes fixed ports): node i uses base+i and
/// base+100+i, so check both ranges are free right now.
fn free_base(n: u16) -> u16 {
    for attempt in 0..200u16 {
        let base = 21000 + (std::process::id() as u16 % 200) * 40 + attempt * 7 % 8000;
        let free = (0..n).all(|i| {
            std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok()
                && std::net::TcpListener::bind(("127.0.0.1", base + 100 + i)).is_ok()
        });
        if free {
            return base;
        }
    }
    panic!("no free ports");
}

struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn cluster_tls_runs_a_tls_trial_cluster_in_one_command() {
    let base = free_base(2);
    let mut child = Killed(
        Command::new(env!("CARGO_BIN_EXE_sessync"))
            .args([
                "cluster",
                "--tls",
                "--nodes",
                "2",
                "--base-port",
                &base.to_string(),
                "--log",
                "warn",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let stdout = child.0.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut ca = None;
    loop {
        let line = rx
            .recv_timeout(WAIT)
            .expect("cluster printed its example in time");
        if let Some(rest) = line.split("--tls-ca ").nth(1) {
            ca = Some(rest.split_whitespace().next().unwrap().to_string());
        }
        if line.contains("Ctrl-C") {
            break;
        }
    }
    let ca = ca.expect("the example shows --tls-ca");
    assert!(Path::new(&ca).exists());
    let (a, b) = (format!("127.0.0.1:{base}"), format!("127.0.0.1:{}", base + 1));
    let token = ok(&sessync(&[
        "session",
        "create",
        "--node",
        &a,
        "--tls-ca",
        &ca,
        "user=alice",
    ]));
    let got = ok(&sessync(&[
        "session", "get", "--node", &b, "--tls-ca", &ca, &token, "user",
    ]));
    assert!(got.contains("alice"), "{got}");
    // Plain text to a TLS client port fails.
    let plain = sessync(&["session", "get", "--node", &a, &token]);
    assert!(!plain.status.success());
    // SIGTERM: the cluster stops and removes its certificates.
    let killed = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let deadline = std::time::Instant::now() + WAIT;
    while child.0.try_wait().unwrap().is_none() {
        assert!(std::time::Instant::now() < deadline, "the cluster did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!Path::new(&ca).exists(), "the throw-away CA was removed");
}

#[test]
fn the_cli_speaks_tls_to_a_node_process_with_client_certificates() {
    let dir = temp_dir("cli-tls");
    let ca = Ca::new("CLI CA");
    let files = ca.files(&dir, "node", false);
    let (app_cert, app_key) = ca.leaf("cli", false);
    let app = common::certs::write_files(&dir, "app", &app_cert, &app_key, &ca.pem);
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let ca_file = s(files.ca.as_ref().unwrap());
    let node = spawn_node(&[
        "--client-tls-cert",
        &s(&files.cert),
        "--client-tls-key",
        &s(&files.key),
        "--client-tls-ca",
        &ca_file,
    ]);
    let addr = node.client.to_string();
    let with_cert = ["--tls-cert", &s(&app.cert), "--tls-key", &s(&app.key)];
    let mut args = vec!["session", "create", "--node", &addr, "--tls-ca", &ca_file];
    args.extend(with_cert);
    args.push("k=v");
    let token = ok(&sessync(&args));
    // By name too, as the certificate carries "localhost".
    let mut args = vec![
        "session",
        "get",
        "--node",
        &addr,
        "--tls-ca",
        &ca_file,
        "--tls-server-name",
        "localhost",
    ];
    args.extend(with_cert);
    args.push(&token);
    assert!(ok(&sessync(&args)).contains('v'));
    // A name the certificate does not carry, and no client certificate: refused.
    let mut args = vec![
        "stats",
        "--node",
        &addr,
        "--tls-ca",
        &ca_file,
        "--tls-server-name",
        "wrong.example",
    ];
    args.extend(with_cert);
    let wrong = sessync(&args);
    assert!(!wrong.status.success());
    assert!(
        String::from_utf8_lossy(&wrong.stderr).contains("certificate"),
        "{wrong:?}"
    );
    let no_cert = sessync(&["stats", "--node", &addr, "--tls-ca", &ca_file]);
    assert!(!no_cert.status.success());
}
