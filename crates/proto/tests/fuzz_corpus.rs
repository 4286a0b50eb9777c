//! The fuzz corpus in `cargo test`: every file committed under `fuzz/corpus/<target>/`
//! goes through the same logic its cargo-fuzz target runs (`sessync_proto::fuzzing`), so a
//! finding whose input is in the corpus stays fixed without a fuzzer installed. Also checks
//! that the seed corpus holds every example of protocol.md (to rewrite the seeds after a
//! deliberate change: `cargo test -p sessync-proto --test fuzz_corpus -- --ignored
//! write_seed_corpus`) and that every target has its shim in `fuzz/`.

use std::panic::catch_unwind;
use std::path::{Path, PathBuf};

use sessync_proto::fuzzing::{chunking_input, message_input, unsigned_token, TARGETS};

const DOC: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../protocol.md"));

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

fn corpus_dir(target: &str) -> PathBuf {
    fuzz_dir().join("corpus").join(target)
}

/// One `<!-- example: KIND NAME -->` of protocol.md and the fenced block after it.
struct Example {
    kind: String,
    name: String,
    body: String,
}

fn examples(doc: &str) -> Vec<Example> {
    let mut out = Vec::new();
    let mut lines = doc.lines();
    while let Some(line) = lines.next() {
        let Some(marker) = line.trim().strip_prefix("<!-- example:") else {
            continue;
        };
        let mut words = marker.trim_end_matches("-->").split_whitespace();
        let (Some(kind), Some(name)) = (words.next(), words.next()) else {
            panic!("bad example marker: {line}");
        };
        let fence = lines.by_ref().find(|l| !l.trim().is_empty()).unwrap_or_default();
        assert!(
            fence.starts_with("```"),
            "example {name} is not followed by a fenced block"
        );
        let body: Vec<&str> = lines.by_ref().take_while(|l| !l.starts_with("```")).collect();
        out.push(Example {
            kind: kind.to_string(),
            name: name.to_string(),
            body: body.join("\n"),
        });
    }
    out
}

fn parse_hex(s: &str) -> Vec<u8> {
    let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    assert!(digits.len() % 2 == 0, "odd number of hex digits");
    digits
        .chunks(2)
        .map(|p| {
            let text = std::str::from_utf8(p).unwrap_or_default();
            u8::from_str_radix(text, 16).unwrap_or_else(|e| panic!("bad hex {text:?}: {e}"))
        })
        .collect()
}

/// The seed corpus: (target, file name, bytes), all built from protocol.md's examples.
fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut seeds = Vec::new();
    let mut stream = Vec::new();
    for ex in examples(DOC) {
        if ex.kind == "token" {
            let token = ex.body.trim();
            seeds.push(("token", format!("seed-{}", ex.name), token.as_bytes().to_vec()));
            let unsigned =
                unsigned_token(token).unwrap_or_else(|| panic!("token {} does not decode", ex.name));
            seeds.push(("token", format!("seed-unsigned-{}", ex.name), unsigned));
            continue;
        }
        let frame = parse_hex(&ex.body);
        let file = format!("seed-{}-{}", ex.kind, ex.name);
        seeds.push(("frame", file.clone(), frame.clone()));
        seeds.push(("round_trip", file, frame.clone()));
        let target = match ex.kind.as_str() {
            "client-request" => "client_request",
            "client-response" => "client_response",
            "peer" => "peer_message",
            other => panic!("example {} has an unknown kind {other}", ex.name),
        };
        let input = message_input(&frame).unwrap_or_else(|| panic!("example {} is not one frame", ex.name));
        seeds.push((target, format!("seed-{}", ex.name), input));
        stream.extend_from_slice(&frame);
    }
    // Every example back to back, fed whole, byte by byte and in uneven pieces.
    seeds.push(("frame", "seed-all-examples".into(), stream.clone()));
    seeds.push(("round_trip", "seed-all-examples".into(), stream.clone()));
    seeds.push((
        "chunking",
        "seed-all-bytewise".into(),
        chunking_input(&[], &stream),
    ));
    seeds.push((
        "chunking",
        "seed-all-pieces".into(),
        chunking_input(&[3, 1, 7, 0, 200, 16, 4], &stream),
    ));
    // The frame-level errors of protocol.md 2.3, after a good frame.
    let good = &stream[..stream.len().min(52)];
    for (name, tail) in [
        ("too-large", vec![0xff, 0xff, 0xff, 0xff]),
        ("too-short", vec![0, 0, 0, 15]),
        ("bad-crc", {
            let mut f = good.to_vec();
            let last = f.len() - 1;
            f[last] ^= 1;
            f
        }),
    ] {
        let mut s = good.to_vec();
        s.extend_from_slice(&tail);
        seeds.push(("frame", format!("seed-error-{name}"), s.clone()));
        seeds.push((
            "chunking",
            format!("seed-error-{name}"),
            chunking_input(&[5, 2], &s),
        ));
    }
    seeds
}

#[test]
fn committed_corpus_replays_through_every_target() {
    for (target, run) in TARGETS {
        let dir = corpus_dir(target);
        let mut files = 0;
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap_or_else(|e| panic!("{}: {e}", dir.display())).path();
            let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            if catch_unwind(|| run(&data)).is_err() {
                panic!("fuzz target {target} fails on {} (message above)", path.display());
            }
            files += 1;
        }
        assert!(files > 0, "no corpus for {target} in {}", dir.display());
    }
}

#[test]
fn the_seed_corpus_holds_every_protocol_md_example() {
    let seeds = seeds();
    assert!(seeds.len() > 60, "protocol.md examples not found");
    for (target, name, bytes) in seeds {
        let path = corpus_dir(target).join(&name);
        let got = std::fs::read(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e}; write the seeds with `cargo test -p sessync-proto --test fuzz_corpus -- \
                 --ignored write_seed_corpus`",
                path.display()
            )
        });
        assert!(
            got == bytes,
            "{} differs from protocol.md's example",
            path.display()
        );
    }
}

#[test]
#[ignore = "a generator that writes fuzz/corpus, not a check: runs by hand after protocol.md's examples change (`cargo test -p sessync-proto --test fuzz_corpus -- --ignored write_seed_corpus`); the_seed_corpus_holds_every_protocol_md_example then checks the result in every run"]
fn write_seed_corpus() {
    for (target, name, bytes) in seeds() {
        let dir = corpus_dir(target);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        std::fs::write(dir.join(name), bytes).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    }
}

/// Every target here has its cargo-fuzz shim, and the shim calls this target.
#[test]
fn every_target_has_a_shim_in_fuzz() {
    let manifest = std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).unwrap_or_default();
    for (target, _) in TARGETS {
        let shim = fuzz_dir().join("fuzz_targets").join(format!("{target}.rs"));
        let text = std::fs::read_to_string(&shim).unwrap_or_else(|e| panic!("{}: {e}", shim.display()));
        assert!(
            text.contains(&format!("sessync_proto::fuzzing::{target}(")),
            "{} does not call sessync_proto::fuzzing::{target}",
            shim.display()
        );
        assert!(
            manifest.contains(&format!("name = \"{target}\"")),
            "fuzz/Cargo.toml has no [[bin]] {target}"
        );
    }
}
