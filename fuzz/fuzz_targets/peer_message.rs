#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| sessync_proto::fuzzing::peer_message(data));
