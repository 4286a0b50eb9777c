//! The node's real cross-node logic (handover, replication, failover) in the deterministic
//! simulation (`sessync_server::testing`), scripted by the input: seed, cluster, workload,
//! weather and each fault with its time (`testing::Schedule`; every byte string is one).
//! Any broken promise panics with the report. `tests/handover_model.rs` replays this
//! target's corpus in `cargo test`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let report = sessync_server::testing::simulate_bytes(data);
    if !report.violations.is_empty() {
        panic!(
            "a promise broke (replay: put the input in fuzz/corpus/handover/ and run `cargo test --test handover_model`):\n  violations: {:#?}\n  schedule and faults: {:#?}",
            report.violations, report.events
        );
    }
});
