#![no_main]
//! See `corral::fuzzing::proxy_protocol` for what this checks beyond "no panic".

libfuzzer_sys::fuzz_target!(|data: &[u8]| corral::fuzzing::proxy_protocol(data));
