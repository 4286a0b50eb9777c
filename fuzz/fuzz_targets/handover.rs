//! The COPY handover over three simulated nodes, driven by an operation list. The model
//! (and its operation decoding) is shared with `tests/handover_model.rs`, which replays
//! this target's corpus in `cargo test`.
#![no_main]

use libfuzzer_sys::arbitrary::{Arbitrary, Result, Unstructured};

#[path = "../../tests/model/handover_model.rs"]
mod model;

/// An operation list: `Arbitrary` hands the whole input to the model's own decoding, so a
/// corpus file means the same run here and in the replay test.
#[derive(Debug)]
struct Ops(Vec<model::Op>);

impl<'a> Arbitrary<'a> for Ops {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(Ops(model::decode(u.bytes(u.len())?)))
    }
}

libfuzzer_sys::fuzz_target!(|ops: Ops| {
    if let Err(e) = model::run(&ops.0) {
        panic!("{e}");
    }
});
