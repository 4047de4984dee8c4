#![no_main]
//! See `corral::fuzzing::http_diff::check` for what this checks beyond "no panic".

libfuzzer_sys::fuzz_target!(|data: &[u8]| corral::fuzzing::http_diff::check(data));
