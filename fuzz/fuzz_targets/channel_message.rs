#![no_main]
//! See `corral::fuzzing::channel_message` for what this checks beyond "no panic".

libfuzzer_sys::fuzz_target!(|data: &[u8]| corral::fuzzing::channel_message(data));
