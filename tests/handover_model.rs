//! The handover model (`tests/model/handover_model.rs`, shared with the `handover` fuzz
//! target): replays the target's committed corpus, runs named scenarios and thousands of
//! seeded random operation lists over three simulated nodes, and shows that its checks do
//! catch a broken promise.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "model/handover_model.rs"]
mod model;

use std::path::{Path, PathBuf};

use model::{decode, encode, run, run_with, Counts, Kind, Model, Op};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/handover")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn req(node: u8, session: u8, token: u8, kind: Kind) -> Op {
    Op::Request {
        node,
        session,
        token,
        kind,
    }
}

const FIRST: Op = Op::Deliver { msg: 0 };

/// Hand-written runs through the handover's corners; also the seed corpus of the target.
fn scenarios() -> Vec<(&'static str, Vec<Op>)> {
    use Kind::*;
    vec![
        (
            // A creates, B reads (copy + ack), C reads with A's stale token (MOVED to B),
            // then writes go round the nodes with CAS.
            "move_and_stale_token",
            vec![
                Op::Create { node: 0 },
                req(1, 0, 0, Set),
                FIRST,
                FIRST,
                FIRST,
                req(2, 0, 0, Get),
                FIRST,
                FIRST,
                FIRST,
                FIRST,
                FIRST,
                req(0, 0, 0, CasCurrent),
                FIRST,
                FIRST,
                FIRST,
                FIRST,
                FIRST,
                FIRST,
                FIRST,
                req(1, 0, 1, CasStale),
                FIRST,
                FIRST,
                FIRST,
                FIRST,
                FIRST,
            ],
        ),
        (
            // The COPY_DATA is lost with the link; B asks again and gets the same data.
            "lost_reply_is_asked_again",
            vec![
                Op::Create { node: 0 },
                req(0, 0, 0, Set),
                req(1, 0, 0, Get),
                FIRST,
                Op::Drop { msg: 0 },
                Op::Lose {
                    node: 1,
                    session: 0,
                    link_broke: true,
                },
                FIRST,
                FIRST,
                FIRST,
                req(1, 0, 0, CasCurrent),
                req(2, 0, 0, Get),
                FIRST,
                FIRST,
                FIRST,
                FIRST,
            ],
        ),
        (
            // B's fetch times out; its COPY_DATA arrives late and is installed as an
            // orphan; C, told MOVED to B, finds it there.
            "late_reply_installed",
            vec![
                Op::Create { node: 0 },
                req(1, 0, 0, Get),
                FIRST,
                Op::Lose {
                    node: 1,
                    session: 0,
                    link_broke: false,
                },
                req(2, 0, 0, Get),
                FIRST,
                FIRST,
                FIRST,
                FIRST,
                FIRST,
                FIRST,
                FIRST,
                req(2, 0, 0, Set),
                FIRST,
                FIRST,
                FIRST,
                FIRST,
            ],
        ),
        (
            // B and C ask A at once; one wins, the other follows MOVED.
            "concurrent_copies",
            vec![
                Op::Create { node: 0 },
                req(1, 0, 0, Set),
                req(2, 0, 0, Set),
                FIRST,
                FIRST,
                FIRST,
                FIRST,
                FIRST,
                FIRST,
                FIRST,
                FIRST,
                FIRST,
                FIRST,
                FIRST,
            ],
        ),
        (
            // A resent COPY and a resent COPY_DATA change nothing.
            "duplicates",
            vec![
                Op::Create { node: 1 },
                req(2, 0, 0, Get),
                Op::Duplicate { msg: 0 },
                FIRST,
                FIRST,
                FIRST,
                req(2, 0, 0, Set),
                FIRST,
                Op::Duplicate { msg: 0 },
                FIRST,
                FIRST,
                FIRST,
            ],
        ),
        (
            // Destroyed at B: A's stale token, C's request and a late copy bring nothing back.
            "destroy_is_final",
            vec![
                Op::Create { node: 0 },
                Op::Create { node: 1 },
                req(1, 0, 0, Destroy),
                Op::Duplicate { msg: 0 },
                FIRST,
                FIRST,
                FIRST,
                req(2, 0, 0, Get),
                FIRST,
                FIRST,
                FIRST,
                FIRST,
                FIRST,
                req(0, 1, 0, Set),
                req(2, 1, 0, Get),
                FIRST,
                FIRST,
                FIRST,
                FIRST,
            ],
        ),
        (
            // B's fetch times out; a new request at B asks again before the late reply is
            // installed, so the giver resends the same copy. B installs the first, writes,
            // hands the session to C; then the resend arrives (the known bug's trigger).
            "resent_copy_data_after_timeout",
            resent_copy_data_after_timeout(),
        ),
    ]
}

fn resent_copy_data_after_timeout() -> Vec<Op> {
    use Kind::*;
    vec![
        Op::Create { node: 0 },
        req(1, 0, 0, Get),
        FIRST, // A hands over: HandingOver{B, T}, COPY_DATA in flight
        Op::Lose {
            node: 1,
            session: 0,
            link_broke: false,
        },
        req(1, 0, 0, Get), // a new fetch at B: COPY again, last_transfer 0
        FIRST,             // the late COPY_DATA: installed at B as an orphan, ACK in flight
        FIRST,             // the second COPY: A, still HandingOver{B, T}, sends T again
        req(1, 0, 0, Set), // B acknowledges a write (version 2)
        req(2, 0, 1, Get), // C asks B with B's token
        Op::Deliver { msg: 2 },
        Op::Deliver { msg: 2 }, // C installs version 2; B is HandingOver{C}
        Op::Deliver { msg: 1 }, // the resent COPY_DATA (version 1) reaches B's fetch
        req(2, 0, 1, CasCurrent),
        FIRST,
        FIRST,
    ]
}

fn random_ops(rng: &mut StdRng) -> Vec<Op> {
    let len = rng.gen_range(1..=200);
    (0..len)
        .map(|_| {
            let node = rng.gen_range(0..model::NODES as u8);
            let session = rng.gen_range(0..model::SESSIONS as u8);
            let msg = rng.gen_range(0..8);
            match rng.gen_range(0..100) {
                0..=7 => Op::Create { node },
                8..=37 => req(
                    node,
                    session,
                    rng.gen_range(0..4),
                    [
                        Kind::Get,
                        Kind::Set,
                        Kind::CasCurrent,
                        Kind::CasStale,
                        Kind::Destroy,
                    ][rng.gen_range(0..5)],
                ),
                38..=79 => Op::Deliver { msg },
                80..=86 => Op::Drop { msg },
                87..=92 => Op::Duplicate { msg },
                _ => Op::Lose {
                    node,
                    session,
                    link_broke: rng.gen_bool(0.5),
                },
            }
        })
        .collect()
}

#[test]
fn scenarios_keep_every_promise() {
    for (name, ops) in scenarios() {
        let counts = run(&ops).unwrap_or_else(|e| panic!("scenario {name}: {e}"));
        assert!(counts.served > 0, "scenario {name} served nothing: {counts:?}");
    }
    // Spot checks that the scenarios go where their names say.
    let by_name = |n: &str| run(&scenarios().into_iter().find(|(x, _)| *x == n).unwrap().1).unwrap();
    assert!(by_name("move_and_stale_token").moved >= 1);
    assert!(by_name("late_reply_installed").orphans_installed >= 1);
    assert!(by_name("destroy_is_final").destroyed == 1);
    assert!(by_name("duplicates").refused + by_name("duplicates").orphans_installed >= 1);
    assert_eq!(by_name("resent_copy_data_after_timeout").known_stale_reinstall, 1);
}

/// The finding of this model in `Table::install` (crates/server/src/table.rs), kept
/// visible: with the model's guard off, a COPY_DATA that B installed before and receives
/// again (the giver resends it to B's next fetch after B's first fetch timed out) replaces
/// B's HandingOver entry, so B and C both own the session and B serves version 1 after it
/// acknowledged version 2. Fixed: transfer ids are the session's handover generation and
/// `install` refuses one that is not newer than what the entry remembers.
#[test]

fn strict_a_resent_copy_data_does_not_bring_back_a_handed_on_session() {
    let mut m = Model::new();
    m.strict = true;
    if let Err(e) = run_with(m, &resent_copy_data_after_timeout()) {
        panic!("{e}");
    }
}

/// The same, over random lists (seed 2809 also shows a reply delayed across two later
/// handovers re-installing an older copy over a Forwarded entry).
#[test]

fn strict_seeded_random_operation_lists() {
    for seed in 0..3000 {
        let ops = random_ops(&mut StdRng::seed_from_u64(seed));
        let mut m = Model::new();
        m.strict = true;
        if let Err(e) = run_with(m, &ops) {
            panic!("seed {seed}: {e}");
        }
    }
}

#[test]
fn seeded_random_operation_lists_keep_every_promise() {
    let runs: u64 = std::env::var("HANDOVER_MODEL_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000);
    let mut total = Counts::default();
    for seed in 0..runs {
        let mut rng = StdRng::seed_from_u64(seed);
        let ops = random_ops(&mut rng);
        match run(&ops) {
            Ok(c) => total += c,
            Err(e) => panic!(
                "seed {seed}: {e}\n  replay: put these bytes in fuzz/corpus/handover/: {}",
                hex(&encode(&ops))
            ),
        }
    }
    // The model is not vacuous: the random lists reach every kind of transition.
    let c = total;
    for (what, n) in [
        ("served", c.served),
        ("acked_writes", c.acked_writes),
        ("handed_over", c.handed_over),
        ("moved", c.moved),
        ("not_found", c.not_found),
        ("installed", c.installed),
        ("orphans_installed", c.orphans_installed),
        ("refused", c.refused),
        ("acks_applied", c.acks_applied),
        ("failed", c.failed),
        ("destroyed", c.destroyed),
    ] {
        assert!(n > 0, "no random run reached {what}: {c:?}");
    }
}

#[test]
fn committed_corpus_replays() {
    let dir = corpus_dir();
    let mut files = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        if let Err(e) = run(&decode(&data)) {
            panic!("{}: {e}", path.display());
        }
        files += 1;
    }
    assert!(files > 0, "no corpus in {}", dir.display());
}

#[test]
fn the_seed_corpus_is_committed() {
    for (name, ops) in scenarios() {
        let path = corpus_dir().join(format!("seed-{name}"));
        let got = std::fs::read(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e}; write the seeds with `cargo test --test handover_model -- --ignored write_seed_corpus`",
                path.display()
            )
        });
        assert_eq!(
            got,
            encode(&ops),
            "{} is not the scenario's encoding",
            path.display()
        );
    }
}

#[test]
#[ignore = "a generator that writes fuzz/corpus/handover, not a check: runs by hand after the model's operation encoding changes (`cargo test --test handover_model -- --ignored write_seed_corpus`); committed_corpus_replays and the_seed_corpus_is_committed check the files in every run"]
fn write_seed_corpus() {
    std::fs::create_dir_all(corpus_dir()).unwrap();
    for (name, ops) in scenarios() {
        std::fs::write(corpus_dir().join(format!("seed-{name}")), encode(&ops)).unwrap();
    }
}

#[test]
fn operation_lists_survive_encoding() {
    let mut rng = StdRng::seed_from_u64(7);
    for _ in 0..200 {
        let ops = random_ops(&mut rng);
        assert_eq!(decode(&encode(&ops)), ops);
    }
    // Every byte string is a list: a partial trailing operation is ignored.
    assert_eq!(decode(&[1, 2]), vec![]);
    assert_eq!(decode(&[8, 5, 9, 0xff]), vec![Op::Create { node: 2 }]);
}

/// The checks are not toothless: a second owner, a lost write and a resurrection are caught.
#[test]
fn the_checks_catch_broken_promises() {
    let mut m = Model::new();
    m.apply(Op::Create { node: 0 }).unwrap();
    m.check().unwrap();
    // Node 1 gets a copy behind the protocol's back: two owners.
    m.force_install(1, 0).unwrap();
    let e = m.check().unwrap_err();
    assert!(e.contains("2 owners"), "{e}");

    // A write acknowledged at one node, then served older data elsewhere: a lost write.
    let mut m = Model::new();
    m.apply(Op::Create { node: 0 }).unwrap();
    m.force_install(1, 0).unwrap();
    let e = m
        .apply(req(0, 0, 0, Kind::Set))
        .and_then(|()| m.check())
        .unwrap_err();
    assert!(e.contains("owners"), "{e}");
    let e = m.apply(req(1, 0, 0, Kind::Get)).unwrap_err();
    assert!(e.contains("acknowledged"), "{e}");
    let e = m.apply(req(1, 0, 0, Kind::CasCurrent)).unwrap_err();
    assert!(e.contains("refused a CAS"), "{e}");

    // Destroyed at node 0, then served again by node 2's stray copy: a resurrection.
    let mut m = Model::new();
    m.apply(Op::Create { node: 0 }).unwrap();
    m.force_install(2, 0).unwrap();
    m.apply(req(0, 0, 0, Kind::Destroy)).unwrap();
    let e = m.check().unwrap_err();
    assert!(e.contains("destroyed"), "{e}");
}
