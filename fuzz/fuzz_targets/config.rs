#![no_main]
//! See `corral::fuzzing::config` for what this checks beyond "no panic".

libfuzzer_sys::fuzz_target!(|data: &[u8]| corral::fuzzing::config(data));
