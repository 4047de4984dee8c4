//! The master's side of the control socket: clients by ticket, requests turned into
//! jobs, and answers.

use super::super::*;

impl Master {
    /// Accepts a round of control clients and reads what each has sent already
    /// (the CLI writes its request right after connecting). Past the cap the oldest
    /// silent client makes room; with none silent the newcomer is turned away with
    /// an answer. Turning clients away, or running out of fds, pauses accepting for
    /// a moment so a flood cannot keep the master busy.
    pub(in crate::master) fn accept_clients(&mut self) -> Vec<Job> {
        let Some(server) = &self.control else {
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
            if self.clients.len() >= self.client_cap {
                let oldest_silent = self
                    .clients
                    .iter()
                    .enumerate()
                    .filter(|(_, (_, c))| c.silent())
                    .min_by_key(|(_, (t, _))| *t)
                    .map(|(i, _)| i);
                turned_away += 1;
                match oldest_silent {
                    Some(i) => drop(self.clients.remove(i)),
                    None => {
                        let why = format!(
                            "too many control clients ({}) are waiting for answers; try again",
                            self.client_cap
                        );
                        c.reject(&self.response(false, why));
                        continue;
                    }
                }
            }
            self.next_ticket += 1;
            let ticket = self.next_ticket;
            if let Some(req) = req {
                debug!(?req, "control request");
                jobs.push(self.job_for(req, ticket, c.uid));
            }
            self.clients.push((ticket, c));
        }
        if let Some(e) = accepted.exhausted {
            self.accept_paused_until = Some(now + pressure::EXHAUSTED_PAUSE);
            if let Some(n) = self.log_exhausted.hit(now) {
                error!(
                    "control socket: accept() failed: {e}; not accepting for {:?} \
                     ({n} more times since last said)",
                    pressure::EXHAUSTED_PAUSE
                );
            }
        } else if turned_away > 0 || full_round {
            self.accept_paused_until = Some(now + pressure::FLOOD_PAUSE);
            if let Some(n) = self.log_flood.hit(now) {
                warn!(
                    cap = self.client_cap,
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
        let i = self.clients.iter().position(|(t, _)| *t == ticket)?;
        let c = &mut self.clients[i].1;
        if !c.wants_read() {
            // Half-closed earlier; now fully gone, nobody is left to answer.
            if hup && !c.wants_write() {
                self.clients.swap_remove(i);
            }
            return None;
        }
        let req = match c.read() {
            Ok(Some(req)) => req,
            Ok(None) => return None,
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                let resp = self.response(false, format!("malformed control request: {e}"));
                self.clients[i].1.answer(&resp);
                return None;
            }
            Err(_) => {
                if !c.wants_write() {
                    self.clients.swap_remove(i);
                }
                return None;
            }
        };
        debug!(?req, "control request");
        let uid = self.clients[i].1.uid;
        Some(self.job_for(req, ticket, uid))
    }

    /// The job for a request; a fault request's details wait in `fault_requests`.
    pub(in crate::master) fn job_for(&mut self, req: Request, ticket: u64, uid: u32) -> Job {
        if let Request::Fault(f) = &req {
            self.fault_requests.push((ticket, f.clone(), uid));
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
        if let Some((_, c)) = self.clients.iter_mut().find(|(t, _)| *t == ticket) {
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
        self.clients
            .retain_mut(|(_, c)| !c.flush() && !c.stale(now));
    }
}
