//! Polling the master's status, for the commands that watch it over time (`corral
//! top`, the progress of `-s reload` and `-s upgrade`): the same request as `corral
//! status --json`, nothing heavier, so that watching costs the master one small
//! answer per poll.

use std::path::Path;
use std::time::Duration;

use crate::control::{self, Request, Response};

/// How long one poll may wait for its answer.
const POLL_TIMEOUT: Duration = Duration::from_secs(5);

/// One `status` answer from the master that `config` configures. The pid file is read
/// again at every poll: after a binary upgrade the new master is the one to watch.
pub fn status(config: &Path) -> Result<Response, String> {
    let (t, masters) = super::locate(config).and_then(|t| super::vet(&t).map(|m| (t, m)))?;
    control::request_from(&t.socket, Request::Status, POLL_TIMEOUT, &masters)
        .map_err(|e| format!("{e}{}", super::running_hint(&e)))
}
