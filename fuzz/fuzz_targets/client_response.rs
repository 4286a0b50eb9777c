#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| sessync_proto::fuzzing::client_response(data));
