#![no_main]
//! examples/kv's suspended-state format (the command count, version 1), through the
//! example's own `Service`: see `corral::fuzzing::suspended_state`.

use std::cell::RefCell;

#[path = "../../examples/kv.rs"]
#[allow(dead_code)]
mod kv;

thread_local! {
    static SERVICE: RefCell<Box<dyn corral::service::Service>> =
        RefCell::new(kv::new_service(None, kv::STATE_VERSION, true));
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    SERVICE.with(|s| corral::fuzzing::suspended_state(s.borrow_mut().as_mut(), data))
});
