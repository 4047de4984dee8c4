#![no_main]
//! See `corral::fuzzing::websocket` for what this checks beyond "no panic".

libfuzzer_sys::fuzz_target!(|data: &[u8]| corral::fuzzing::websocket(data));
