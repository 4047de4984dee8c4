//! Rotating the TLS session-ticket keys: every `tls_ticket_rotation` the master makes
//! a new key, puts it in force for the workers it forks from now on, and sends it to
//! every live worker. Tickets sealed under the key before still open (each process
//! keeps the previous key), so a rotation breaks no resumption.

use std::time::Instant;

use tracing::{info, warn};

use crate::channel::ToWorker;

use super::Master;

impl Master {
    /// Rotates the keys when due.
    pub(super) fn rotate_ticket_keys(&mut self, now: Instant) {
        if self.ticket_rotation_due > now {
            return;
        }
        let every = self.config.master.tls_ticket_rotation.0;
        self.ticket_rotation_due = now + every;
        crate::tls::tickets::set_rotation(every);
        let key = match crate::tls::tickets::rotate_new() {
            Ok(k) => k,
            Err(_) => {
                warn!("cannot make a new TLS ticket key (the random source failed); the current one stays");
                return;
            }
        };
        let msg = ToWorker::TicketKey(key);
        let mut sent = 0;
        for w in self.workers.iter().filter(|w| !w.channel_closed) {
            match w.channel.send(&msg) {
                Ok(()) => sent += 1,
                Err(e) => warn!(
                    pid = w.pid.as_raw(),
                    "cannot send the new TLS ticket key: {e}"
                ),
            }
        }
        info!(workers = sent, "TLS ticket key rotated");
    }
}
