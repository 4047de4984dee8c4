#![no_main]
//! See `corral::fuzzing::bus_packet` for what this checks beyond "no panic".

libfuzzer_sys::fuzz_target!(|data: &[u8]| corral::fuzzing::bus_packet(data));
