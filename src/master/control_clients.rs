//! The master's side of the control socket (the protocol is `crate::control`): clients by ticket, requests turned into
//! jobs, and answers.

use super::{control, Client, Job, Master, Request, Response, Waiters};
use crate::master::pressure;
use crate::master::pressure::LogOnce;
use crate::os::process;
use std::time::Instant;
use tracing::{debug, error, warn};

/// The master's control-socket part: the listening end, the clients with their
/// tickets, and the flood and fd-exhaustion guards around accepting them.
pub(super) struct Desk {
    /// None only in a forked child (dropped at once) and in unit tests.
    pub server: Option<control::Server>,
    pub clients: Vec<(u64, Client)>,
    pub next_ticket: u64,
    /// Most clients at once, from `RLIMIT_NOFILE`.
    pub cap: usize,
    /// The control socket stays out of the poll set until then (flood or EMFILE).
    pub paused_until: Option<Instant>,
    pub log_flood: LogOnce,
    pub log_exhausted: LogOnce,
    /// `corral fault` requests of this batch, by ticket, with the requester's uid.
    pub fault_requests: Vec<(u64, crate::fault::kind::FaultRequest, u32)>,
}

impl Desk {
    pub(super) fn new(server: Option<control::Server>) -> Desk {
        Desk {
            server,
            clients: Vec::new(),
            next_ticket: 0,
            cap: pressure::client_cap(process::nofile_limit().unwrap_or(1024)),
            paused_until: None,
            log_flood: LogOnce::new(pressure::LOG_EVERY),
            log_exhausted: LogOnce::new(pressure::LOG_EVERY),
            fault_requests: Vec::new(),
        }
    }
}

impl Master {
    /// Accepts a round of control clients and reads what each has sent already
    /// (the CLI writes its request right after connecting). Past the cap the oldest
    /// silent client makes room; with none silent the newcomer is turned away with
    /// an answer. Turning clients away, or running out of fds, pauses accepting for
    /// a moment so a flood cannot keep the master busy.
    pub(in crate::master) fn accept_clients(&mut self) -> Vec<Job> {
        let Some(server) = &self.ctl.server else {
            return Vec::new();
        };
        let accepted = server.accept(pressure::ACCEPT_BATCH);
        let now = self.fx.now();
        let mut jobs = Vec::new();
        let mut turned_away = 0usize;
        let full_round = accepted.clients.len() == pressure::ACCEPT_BATCH;
        for mut c in accepted.clients {
            let req = match c.read() {
                Ok(r) => r,
                Err(e) => {
                    if e.kind() == std::io::ErrorKind::InvalidData {
                        c.reject(&self.response(false, format!("malformed control request: {e}")));
                    }
                    continue;
                }
            };
            if self.ctl.clients.len() >= self.ctl.cap {
                let oldest_silent = self
                    .ctl
                    .clients
                    .iter()
                    .enumerate()
                    .filter(|(_, (_, c))| c.silent())
                    .min_by_key(|(_, (t, _))| *t)
                    .map(|(i, _)| i);
                turned_away += 1;
                match oldest_silent {
                    Some(i) => drop(self.ctl.clients.remove(i)),
                    None => {
                        let why = format!(
                            "too many control clients ({}) are waiting for answers; try again",
                            self.ctl.cap
                        );
                        c.reject(&self.response(false, why));
                        continue;
                    }
                }
            }
            self.ctl.next_ticket += 1;
            let ticket = self.ctl.next_ticket;
            if let Some(req) = req {
                debug!(?req, "control request");
                jobs.push(self.job_for(req, ticket, c.uid));
            }
            self.ctl.clients.push((ticket, c));
        }
        if let Some(e) = accepted.exhausted {
            self.ctl.paused_until = Some(now + pressure::EXHAUSTED_PAUSE);
            if let Some(n) = self.ctl.log_exhausted.hit(now) {
                error!(
                    "control socket: accept() failed: {e}; not accepting for {:?} \
                     ({n} more times since last said)",
                    pressure::EXHAUSTED_PAUSE
                );
            }
        } else if turned_away > 0 || full_round {
            self.ctl.paused_until = Some(now + pressure::FLOOD_PAUSE);
            if let Some(n) = self.ctl.log_flood.hit(now) {
                warn!(
                    cap = self.ctl.cap,
                    "control socket flooded: {turned_away} clients dropped or turned away \
                     ({n} more floods since last said); accepting in pauses of {:?}",
                    pressure::FLOOD_PAUSE
                );
            }
        }
        jobs
    }

    /// Reads a client's request and turns it into a job; nothing is acted on here.
    /// `hup`: poll saw the client hang up (or fail).
    pub(in crate::master) fn serve_client(&mut self, ticket: u64, hup: bool) -> Option<Job> {
        let i = self.ctl.clients.iter().position(|(t, _)| *t == ticket)?;
        let c = &mut self.ctl.clients[i].1;
        if !c.wants_read() {
            // Half-closed earlier; now fully gone, nobody is left to answer.
            if hup && !c.wants_write() {
                self.ctl.clients.swap_remove(i);
            }
            return None;
        }
        let req = match c.read() {
            Ok(Some(req)) => req,
            Ok(None) => return None,
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                let resp = self.response(false, format!("malformed control request: {e}"));
                self.ctl.clients[i].1.answer(&resp);
                return None;
            }
            Err(_) => {
                if !c.wants_write() {
                    self.ctl.clients.swap_remove(i);
                }
                return None;
            }
        };
        debug!(?req, "control request");
        let uid = self.ctl.clients[i].1.uid;
        Some(self.job_for(req, ticket, uid))
    }

    /// The job for a request; a fault request's details wait in `fault_requests`.
    pub(in crate::master) fn job_for(&mut self, req: Request, ticket: u64, uid: u32) -> Job {
        if let Request::Fault(f) = &req {
            self.ctl.fault_requests.push((ticket, f.clone(), uid));
        }
        if let Request::Publish { topic, message } = &req {
            self.publish_requests
                .push((ticket, topic.clone(), message.clone()));
        }
        Job::request(req, ticket)
    }

    pub(in crate::master) fn response(&self, ok: bool, message: String) -> Response {
        Response {
            ok,
            message,
            master_pid: process::pid().as_raw(),
            generation: self.generation,
            workers: Vec::new(),
            fault: None,
            ..Default::default()
        }
    }

    pub(in crate::master) fn answer(&mut self, ticket: u64, ok: bool, message: String) {
        let resp = self.response(ok, message);
        if let Some((_, c)) = self.ctl.clients.iter_mut().find(|(t, _)| *t == ticket) {
            c.answer(&resp);
        }
    }

    /// Answers every waiter of one outcome alike.
    pub(in crate::master) fn answer_all(&mut self, waiters: Waiters, ok: bool, message: &str) {
        for t in waiters {
            self.answer(t, ok, message.to_string());
        }
    }

    pub(in crate::master) fn flush_clients(&mut self) {
        let now = self.fx.now();
        self.ctl
            .clients
            .retain_mut(|(_, c)| !c.flush() && !c.stale(now));
    }
}
