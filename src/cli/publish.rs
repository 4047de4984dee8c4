//! `corral publish TOPIC MESSAGE`: a message to every subscriber of a topic, over the
//! control socket. Exits 0 once the master handed it to every live worker (each
//! delivers it to its own subscribers); see `master/bus.rs` for why the master
//! forwards it rather than the client writing to the workers.

use crate::program::{complain, say};
use std::path::Path;
use std::time::Duration;

use crate::control::{self, Request};

/// Returns the process exit code.
pub fn run(path: &Path, topic: String, message: String) -> i32 {
    let (t, masters) = match super::locate(path).and_then(|t| super::vet(&t).map(|m| (t, m))) {
        Ok(x) => x,
        Err(e) => {
            complain!("{e}");
            return 1;
        }
    };
    let req = Request::Publish { topic, message };
    match control::request_from(&t.socket, req, Duration::from_secs(10), &masters) {
        Ok(r) if r.ok => {
            say!("{}", r.message);
            0
        }
        Ok(r) => {
            complain!("{}", r.message);
            1
        }
        Err(e) => {
            complain!("{e}");
            1
        }
    }
}
