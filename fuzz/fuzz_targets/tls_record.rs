#![no_main]
//! See `corral::fuzzing::tls_record`: the record layer a moved TLS connection
//! continues on, fed wire bytes, and sealing round trips.

libfuzzer_sys::fuzz_target!(|data: &[u8]| corral::fuzzing::tls_record(data));
