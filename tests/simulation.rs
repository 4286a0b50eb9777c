//! The deterministic simulation of the node's cross-node logic (`sessync_server::testing`):
//! three nodes over a simulated network and clock, faults drawn from a seed (delay, loss,
//! duplication, reordering, partitions full and partial, pauses of any length, a crash and
//! restart), a workload of compare-and-set appends, moving reads, rotations and
//! destructions, and the promises checked on the healed cluster: every acknowledged
//! append present and in order, no `if_version` acknowledged twice, destroyed and
//! rotated-away ids never back, every session readable after the heal.
//!
//! `cargo test` runs a bounded number of seeds; `SESSYNC_SIM_SEEDS=N cargo test --release
//! --test simulation` runs N (from `SESSYNC_SIM_FIRST`, default 0). A failure prints its
//! seed; `SESSYNC_SIM_FIRST=S SESSYNC_SIM_SEEDS=1` replays it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use sessync_server::testing::{simulate, Report, SimOptions};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The options a seed runs with: one or two backups per session.
fn options(seed: u64) -> SimOptions {
    SimOptions {
        replicas: if seed % 3 == 2 { 2 } else { 1 },
        crash: std::env::var("SESSYNC_SIM_NO_CRASH").is_err(),
        pauses: std::env::var("SESSYNC_SIM_NO_PAUSE").is_err(),
        weather: std::env::var("SESSYNC_SIM_CALM").is_err(),
        ..SimOptions::default()
    }
}

fn explain(r: &Report) -> String {
    format!(
        "seed {} broke a promise (replay: SESSYNC_SIM_FIRST={} SESSYNC_SIM_SEEDS=1 cargo test --test simulation):\n  violations: {:#?}\n  faults: {:#?}",
        r.seed, r.seed, r.violations, r.events
    )
}

/// `SESSYNC_SIM_LOG=debug` (or any tracing filter) prints the nodes' logs of a replay.
fn init_log() {
    if let Ok(filter) = std::env::var("SESSYNC_SIM_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_ansi(false)
            .with_test_writer()
            .try_init();
    }
}

/// Ignored: it fails today, and that is what it is for. Issue 13 stays open on it: on
/// most seeds some session ends unreadable after the heal (forwarding pointers with no live
/// copy behind them: a new owner that lost its copy, or one whose COPY_ACK reached the
/// giver although it never installed), and on some, a rotated-away id still works or an
/// `if_version` is acknowledged twice. It runs with `cargo test --test simulation --
/// --ignored` (every seed's faults and the state of each failing session at every node are
/// printed), and will run by default once those are fixed; the fixes so far, and the
/// tests/partition.rs and tests/chaos.rs cases that pin them, came from this harness.
#[test]
#[ignore = "fails on most seeds until issue 13's stranded-session and stale-rotation bugs are fixed; run with --ignored"]
fn seeded_runs_keep_every_promise() {
    init_log();
    let first = env("SESSYNC_SIM_FIRST", 0);
    let seeds = env("SESSYNC_SIM_SEEDS", 12);
    let started = Instant::now();
    let (mut acked, mut unknown) = (0, 0);
    let mut failed = Vec::new();
    for seed in first..first + seeds {
        let r = simulate(seed, &options(seed));
        acked += r.acked;
        unknown += r.unknown;
        if !r.violations.is_empty() {
            eprintln!("{}", explain(&r));
            failed.push(seed);
        }
    }
    eprintln!(
        "simulation: {seeds} seeds from {first} in {:?}: {acked} acknowledged appends, {unknown} of unknown outcome, failed seeds {failed:?}",
        started.elapsed()
    );
    assert!(failed.is_empty(), "failed seeds: {failed:?}");
    assert!(acked > 0, "nothing was acknowledged: the workload did not run");
}

/// A quiet cluster (no fault, no loss) under the same workload promotes nothing.
#[test]
fn a_quiet_cluster_promotes_nothing() {
    for seed in 0..3 {
        let opts = SimOptions {
            faults: false,
            ..options(seed)
        };
        let r = simulate(seed, &opts);
        assert!(r.violations.is_empty(), "{}", explain(&r));
        assert_eq!(r.promotions, 0, "seed {seed}: promotions without a fault");
        assert!(r.acked > 0);
    }
}
