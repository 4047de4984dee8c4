#![no_main]
//! See `corral::fuzzing::control_request` for what this checks beyond "no panic".

libfuzzer_sys::fuzz_target!(|data: &[u8]| corral::fuzzing::control_request(data));
