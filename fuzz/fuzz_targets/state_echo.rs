#![no_main]
//! The `echo` service's suspended-state format: see `corral::fuzzing::suspended_state`.

use std::cell::RefCell;

thread_local! {
    static SERVICE: RefCell<Box<dyn corral::service::Service>> =
        RefCell::new(corral::fuzzing::builtin_service("echo"));
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    SERVICE.with(|s| corral::fuzzing::suspended_state(s.borrow_mut().as_mut(), data))
});
