//! The `handover` fuzz target in `cargo test`: the node's real cross-node logic in the
//! deterministic simulation (`sessync_server::testing`), scripted by bytes
//! ([`Schedule`]). Replays the target's committed corpus, runs the named scenarios (the
//! handover's corners that the old hand-written model named, now as schedules of the real
//! node: a lost reply asked again, duplicates, a late reply installed as an orphan,
//! concurrent copies, a destroy racing moves; and the faults of issue 13: a long pause, an
//! isolation, a partial partition, a crash), and shows that the checks catch a broken
//! promise.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sessync_server::testing::{
    simulate_bytes, simulate_schedule, Fault, FaultKind, Report, Schedule, Weather, HEADER_LEN,
};
use tokio::time::Duration;

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/handover")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn explain(what: &str, bytes: &[u8], r: &Report) -> String {
    format!(
        "{what} broke a promise (its bytes: {}):\n  violations: {:#?}\n  schedule and faults: {:#?}",
        hex(bytes),
        r.violations,
        r.events
    )
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

const CALM: Weather = Weather {
    loss: 0.0,
    dup: 0.0,
    max_delay: Duration::from_micros(200),
    spike: 0.0,
};

/// Three nodes, one backup, three writers and two readers, a calm network, 3 s of chaos
/// with no fault: what each scenario starts from.
fn base(seed: u32) -> Schedule {
    Schedule {
        seed,
        nodes: 3,
        replicas: 1,
        writers: 3,
        readers: 2,
        chasers: 0,
        destroy_all: false,
        weather: CALM,
        chaos: Duration::from_secs(3),
        faults: Vec::new(),
    }
}

fn fault(after: u64, what: FaultKind) -> Fault {
    Fault {
        after: ms(after),
        what,
    }
}

/// What a scenario must have reached, besides keeping every promise (so a scenario does
/// not pass by never getting where its name says).
type Reached = fn(&Report) -> Result<(), String>;

fn at_least(what: &str, n: u64, min: u64) -> Result<(), String> {
    if n >= min {
        Ok(())
    } else {
        Err(format!("{what} = {n}, expected at least {min}"))
    }
}

/// The named scenarios: also the seed corpus of the target (`seed-NAME`). Each seed was
/// chosen among the first few that keep every promise at the time of writing (issue 13's
/// open classes, tests/simulation.rs `STILL_FAILING`, break some seeds of each fault mix).
fn scenarios() -> Vec<(&'static str, Schedule, Reached)> {
    vec![
        (
            // Sessions read and written through random nodes: copies, MOVED to the new
            // owner for stale tokens, replication, on a calm network.
            "move_and_stale_token",
            Schedule {
                readers: 4,
                chasers: 3,
                ..base(1)
            },
            |r| {
                at_least("copies_served", r.stat("copies_served"), 10)?;
                at_least("moved", r.stat("moved"), 1)?;
                at_least("acked", r.acked as u64, 10)
            },
        ),
        (
            // Requests and replies lost: the fetch asks again, the writer retries.
            "lost_reply_is_asked_again",
            Schedule {
                weather: Weather { loss: 0.1, ..CALM },
                chasers: 2,
                ..base(2)
            },
            |r| {
                at_least("replies_lost", r.traffic.replies_lost, 1)?;
                at_least("requests_lost", r.traffic.requests_lost, 1)?;
                at_least("copies_received", r.stat("copies_received"), 1)
            },
        ),
        (
            // Delay spikes past the peer timeout: a COPY_DATA that arrives after its fetch
            // gave up is installed anyway (or refused when superseded).
            "late_reply_installed",
            Schedule {
                weather: Weather {
                    spike: 0.05,
                    max_delay: Duration::from_micros(20_000),
                    ..CALM
                },
                chasers: 3,
                ..base(3)
            },
            |r| {
                at_least("late_replies", r.traffic.late_replies, 1)?;
                at_least("late_copies", r.traffic.late_copies, 1)
            },
        ),
        (
            // One session, three chasers and its writer asking for it at random nodes at
            // once: one copy wins, the others follow MOVED or back off.
            "concurrent_copies",
            Schedule {
                writers: 1,
                readers: 0,
                chasers: 3,
                weather: Weather {
                    max_delay: Duration::from_micros(2_000),
                    ..CALM
                },
                ..base(4)
            },
            |r| {
                at_least("copies_served", r.stat("copies_served"), 10)?;
                at_least("acked", r.acked as u64, 10)
            },
        ),
        (
            // Every peer request delivered twice now and then: resent COPY, COPY_DATA,
            // COPY_ACK and REPLICATE change nothing.
            "duplicates",
            Schedule {
                weather: Weather { dup: 0.3, ..CALM },
                chasers: 2,
                ..base(5)
            },
            |r| at_least("duplicated", r.traffic.duplicated, 10),
        ),
        (
            // Every writer destroys its session at the end while chasers keep moving it
            // around, with duplicates and lost messages: destroyed never comes back.
            "destroy_is_final",
            Schedule {
                destroy_all: true,
                chasers: 3,
                weather: Weather {
                    loss: 0.01,
                    dup: 0.02,
                    ..CALM
                },
                ..base(6)
            },
            |r| at_least("destroyed", r.stat("destroyed"), 2),
        ),
        (
            // The trigger of the old model's finding (a COPY_DATA resent to a fetch after a
            // timed-out one, installed over a session that moved on): delay spikes, loss
            // and duplicates together, with chasers moving the sessions.
            "resent_copy_data_after_timeout",
            Schedule {
                weather: Weather {
                    loss: 0.05,
                    dup: 0.1,
                    max_delay: Duration::from_micros(20_000),
                    spike: 0.05,
                },
                chasers: 3,
                ..base(7)
            },
            |r| {
                at_least("late_replies", r.traffic.late_replies, 1)?;
                at_least("duplicated", r.traffic.duplicated, 1)
            },
        ),
        (
            // Node 0 (which created a third of the sessions) paused for 20 s, past every
            // timeout: the others take its sessions over; it must not acknowledge anything
            // stale when it resumes.
            "owner_paused_20s",
            Schedule {
                faults: vec![fault(
                    500,
                    FaultKind::Pause {
                        a: 0,
                        length: ms(20_000),
                    },
                )],
                ..base(8)
            },
            |r| at_least("promotions", r.stat("promotions"), 1),
        ),
        (
            // Node 1 isolated for 4 s, then healed.
            "isolated_then_healed",
            Schedule {
                faults: vec![fault(
                    500,
                    FaultKind::Isolate {
                        a: 1,
                        hold: ms(4_000),
                    },
                )],
                chaos: Duration::from_secs(5),
                ..base(9)
            },
            |r| at_least("refused", r.traffic.refused + r.traffic.requests_lost, 1),
        ),
        (
            // A partial partition: 0 and 1 cannot reach each other, both reach 2.
            "partial_partition",
            Schedule {
                faults: vec![fault(
                    300,
                    FaultKind::Cut {
                        a: 0,
                        b: 1,
                        hold: ms(5_000),
                    },
                )],
                chasers: 2,
                chaos: Duration::from_secs(6),
                ..base(10)
            },
            |r| at_least("refused", r.traffic.refused + r.traffic.requests_lost, 1),
        ),
        (
            // Node 2 crashes and restarts empty; one backup per session keeps every
            // acknowledged write.
            "crash_and_restart",
            Schedule {
                faults: vec![fault(800, FaultKind::Crash { a: 2, down: ms(500) })],
                ..base(11)
            },
            |r| at_least("refused", r.traffic.refused, 1),
        ),
        (
            // Four nodes, two backups, weather and a mix of faults.
            "mixed_faults_two_backups",
            Schedule {
                nodes: 4,
                replicas: 2,
                weather: Weather {
                    loss: 0.01,
                    dup: 0.02,
                    max_delay: Duration::from_micros(2_000),
                    spike: 0.001,
                },
                chaos: Duration::from_secs(6),
                faults: vec![
                    fault(
                        300,
                        FaultKind::Cut {
                            a: 0,
                            b: 3,
                            hold: ms(1_500),
                        },
                    ),
                    fault(
                        700,
                        FaultKind::Pause {
                            a: 1,
                            length: ms(2_000),
                        },
                    ),
                    fault(900, FaultKind::Crash { a: 2, down: ms(300) }),
                    fault(
                        1_000,
                        FaultKind::Isolate {
                            a: 3,
                            hold: ms(1_000),
                        },
                    ),
                ],
                ..base(12)
            },
            |r| at_least("acked", r.acked as u64, 10),
        ),
    ]
}

/// Corpus files that hit a class still open in issue 13 (as tests/simulation.rs's
/// `STILL_FAILING`), skipped by the replay, each with a note; none today (a committed file
/// that a later change breaks moves to [`KNOWN_FAILING`], since `.ci/fuzz.sh` replays the
/// whole corpus too). A file fixed leaves the list.
const STILL_FAILING: &[&str] = &[];

#[test]
fn scenarios_keep_every_promise() {
    common::init_sim_log();
    let mut failed = Vec::new();
    for (name, schedule, reached) in scenarios() {
        let r = simulate_schedule(&schedule);
        if !r.violations.is_empty() {
            eprintln!("{}", explain(&format!("scenario {name}"), &schedule.encode(), &r));
            failed.push(name);
            continue;
        }
        if let Err(e) = reached(&r) {
            eprintln!(
                "scenario {name} did not reach what it names: {e}\n  stats: {:?}\n  traffic: {:?}",
                r.stats, r.traffic
            );
            failed.push(name);
        }
    }
    assert!(failed.is_empty(), "scenarios failed: {failed:?}");
}

/// Every committed corpus file but those of [`STILL_FAILING`]; `HANDOVER_CORPUS_FILE=NAME`
/// replays only the files whose name contains NAME (with `SESSYNC_SIM_LOG=debug`, with the
/// nodes' logs).
#[test]
fn committed_corpus_replays() {
    common::init_sim_log();
    let only = std::env::var("HANDOVER_CORPUS_FILE").ok();
    let dir = corpus_dir();
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        files.push(entry.unwrap().path());
    }
    files.sort();
    let mut failed = Vec::new();
    let mut replayed = 0;
    for path in &files {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if STILL_FAILING.contains(&name.as_str()) || only.as_ref().is_some_and(|o| !name.contains(o.as_str()))
        {
            continue;
        }
        let data = std::fs::read(path).unwrap();
        let r = simulate_bytes(&data);
        if !r.violations.is_empty() {
            eprintln!("{}", explain(&path.display().to_string(), &data, &r));
            failed.push(name);
        }
        replayed += 1;
    }
    eprintln!("handover corpus: {replayed} files replayed, failed {failed:?}");
    assert!(
        only.is_some() || replayed >= 20,
        "too small a corpus in {}: {replayed}",
        dir.display()
    );
    assert!(failed.is_empty(), "corpus files broke a promise: {failed:?}");
}

/// Schedules the fuzz target found breaking a promise that still fail: issue 13's open
/// part, the smallest of each class. Hex bytes (a corpus file's content) and what broke. A
/// fixed one moves into the corpus (the eight of 2026-12-01 did in session 49).
const KNOWN_FAILING: &[(&str, &str)] = &[
    // Found by `cargo fuzz run` in session 49 (13 minutes, about 13 000 runs, 4 findings,
    // every one with 4 nodes and 10% loss: weather harsher than tests/simulation.rs
    // draws). The first came after about 3700 runs.
    (
        "0c870b0065fffbffffffd7f4",
        "4 nodes, 1 backup, 10% loss, 10% duplicates, 100 ms delays with 5% spikes, a crash: a destroyed session lives on as a lineage its holder confirms (a stale backup copy claimed, placed on a node that never held the newer lineage)",
    ),
    (
        "010000f8f1ffff70ffff7000",
        "4 nodes, 1 backup, 10% loss, 30% duplicates, 100 ms delays with 5% spikes, a 50 ms crash: a destroyed session lives on as a lineage its holder confirms",
    ),
    (
        "01720b20f1706f2f9565ffffff61725f66ffffffffffff48",
        "4 nodes, 1 backup, 10% loss, 30% duplicates, a 30.5 s pause, a cut and a crash: an acknowledged append lost",
    ),
];

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// The schedules of [`KNOWN_FAILING`]; ignored until they are fixed (`cargo test --release
/// --test handover_model -- --ignored known_failing_schedules`). Each prints its report.
#[test]
#[ignore = "schedules the fuzzer found breaking promises: issue 13's open part; run with --ignored"]
fn known_failing_schedules() {
    common::init_sim_log();
    let mut failed = Vec::new();
    for (bytes, what) in KNOWN_FAILING {
        let data = unhex(bytes);
        let r = simulate_bytes(&data);
        if !r.violations.is_empty() {
            eprintln!("{}", explain(what, &data, &r));
            failed.push(*bytes);
        }
    }
    assert!(failed.is_empty(), "still failing: {failed:?}");
}

#[test]
fn the_seed_corpus_is_committed() {
    for (name, schedule, _) in scenarios() {
        let path = corpus_dir().join(format!("seed-{name}"));
        let got = std::fs::read(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e}; write the seeds with `cargo test --test handover_model -- --ignored write_seed_corpus`",
                path.display()
            )
        });
        assert_eq!(
            got,
            schedule.encode(),
            "{} is not the scenario's encoding",
            path.display()
        );
    }
}

#[test]
#[ignore = "a generator that writes fuzz/corpus/handover/seed-*, not a check: runs by hand after the schedule encoding or the scenarios change (`cargo test --test handover_model -- --ignored write_seed_corpus`); the_seed_corpus_is_committed checks the files in every run"]
fn write_seed_corpus() {
    std::fs::create_dir_all(corpus_dir()).unwrap();
    for (name, schedule, _) in scenarios() {
        std::fs::write(corpus_dir().join(format!("seed-{name}")), schedule.encode()).unwrap();
    }
}

#[test]
fn schedules_survive_encoding() {
    for (name, schedule, _) in scenarios() {
        assert_eq!(Schedule::decode(&schedule.encode()), schedule, "scenario {name}");
    }
    // Every byte string is a schedule, and its encoding means the same schedule.
    let mut rng = StdRng::seed_from_u64(7);
    for _ in 0..2000 {
        let len = rng.gen_range(0..120);
        let bytes: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
        let s = Schedule::decode(&bytes);
        assert_eq!(Schedule::decode(&s.encode()), s, "bytes {}", hex(&bytes));
        assert!((3..=4).contains(&s.nodes) && (1..=2).contains(&s.replicas));
        assert!((1..=8).contains(&s.writers) && s.readers <= 7 && s.chasers <= 3);
        // Faults start within the chaos period, and at most one crash.
        let mut at = Duration::ZERO;
        for f in &s.faults {
            assert!(at < s.chaos, "a fault after the chaos period: {s:?}");
            at += f.after;
            if let FaultKind::Crash { down, .. } = f.what {
                at += down;
            }
        }
        let crashes = s
            .faults
            .iter()
            .filter(|f| matches!(f.what, FaultKind::Crash { .. }))
            .count();
        assert!(crashes <= 1, "{s:?}");
    }
    assert_eq!(Schedule::decode(&[]).faults, vec![]);
    assert_eq!(
        Schedule::decode(&[0; HEADER_LEN + 3]).faults,
        vec![],
        "a partial fault is ignored"
    );
}

/// The same bytes replay the same run: faults, traffic, counters and outcomes.
#[test]
fn replays_are_exact() {
    let (_, schedule, _) = scenarios()
        .into_iter()
        .find(|(n, ..)| *n == "mixed_faults_two_backups")
        .unwrap();
    let bytes = schedule.encode();
    let (a, b) = (simulate_bytes(&bytes), simulate_bytes(&bytes));
    assert_eq!(a.events, b.events);
    assert_eq!(a.traffic, b.traffic);
    assert_eq!(a.stats, b.stats);
    assert_eq!((a.acked, a.unknown), (b.acked, b.unknown));
    assert_eq!(a.violations, b.violations);
}

/// The checks are not toothless: every node crashing at once (beyond the promise: more
/// than `replicas` nodes lose their memory) loses acknowledged writes, and the report
/// says so.
#[test]
fn the_checks_catch_a_lost_write() {
    let schedule = Schedule {
        writers: 4,
        faults: vec![fault(1_500, FaultKind::CrashAll { a: 0, down: ms(200) })],
        ..base(1)
    };
    let r = simulate_schedule(&schedule);
    assert!(r.acked > 0, "nothing was acknowledged: {r:?}");
    assert!(
        r.violations
            .iter()
            .any(|v| v.contains("not readable") || v.contains("lost")),
        "a crash of every node went unnoticed: {:#?}",
        r.violations
    );
}

/// Random schedules from a seeded generator, as the fuzz target explores them but on the
/// stable toolchain: `HANDOVER_SIM_RUNS=N` runs N (default 100; `--release` runs 2000 in
/// about 35 s). One in ten hit an open class of issue 13 on 2026-12-01 (30 of 300); none
/// of 2000 since session 49. Each failure prints its bytes, to keep as a corpus file once
/// fixed.
#[test]
fn random_schedules() {
    let runs: u64 = std::env::var("HANDOVER_SIM_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let started = std::time::Instant::now();
    let mut failed = Vec::new();
    for i in 0..runs {
        let mut rng = StdRng::seed_from_u64(i);
        let len = HEADER_LEN + 4 * rng.gen_range(0..12);
        let bytes: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
        let r = simulate_bytes(&bytes);
        if !r.violations.is_empty() {
            eprintln!("run {i}: {}", explain("a random schedule", &bytes, &r));
            failed.push(i);
        }
    }
    eprintln!(
        "{runs} random schedules in {:?}, failed {failed:?}",
        started.elapsed()
    );
    assert!(failed.is_empty(), "failed: {failed:?}");
}
