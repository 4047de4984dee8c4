//! Step 1 of the loop: poll signals, worker channels, control clients and the upgrade
//! pipe, and collect what happened.

use super::*;

impl Master {
    /// Step 1 of the loop: poll signals, worker channels and control clients until
    /// something happens or the nearest deadline; returns what to do. Control
    /// requests are only collected here, never acted on: `handle` orders them with
    /// the signals of the same batch.
    pub(super) fn wait(&mut self) -> Vec<Job> {
        let timeout = self
            .next_deadline()
            .map(|d| d.saturating_duration_since(Instant::now()))
            .map(|d| {
                let ms = d.as_micros().div_ceil(1000).min(60_000) as u16;
                PollTimeout::from(ms)
            })
            .unwrap_or(PollTimeout::NONE);
        let mut ready_workers = Vec::new();
        let mut ready_clients = Vec::new();
        let upgrade_ready;
        let upgrade_gone;
        let mut xfer_ready = Vec::new();
        let (sig_ready, ctl_ready) = {
            let mut fds: Vec<PollFd<'_>> =
                Vec::with_capacity(2 + self.workers.len() + self.clients.len());
            if let Some(s) = &self.signals {
                fds.push(PollFd::new(s.as_fd(), PollFlags::POLLIN));
            }
            let ctl_index = fds.len();
            let accepting = self.accept_paused_until.is_none();
            if let Some(c) = self.control.as_ref().filter(|_| accepting) {
                fds.push(PollFd::new(c.fd(), PollFlags::POLLIN));
            }
            let workers_at = fds.len();
            let in_flight = self.handoff_in_flight();
            for w in &self.workers {
                // A closed channel would report POLLHUP forever until the exit is
                // reaped; SIGCHLD will tell us about that worker instead.
                let mut flags = if w.channel_closed || self.handoff_paused(w, in_flight) {
                    PollFlags::empty()
                } else {
                    PollFlags::POLLIN
                };
                if !w.channel_closed && w.handoff.wants_write() {
                    flags |= PollFlags::POLLOUT;
                }
                fds.push(PollFd::new(w.channel.as_fd(), flags));
            }
            let upgrade_at = fds.len();
            if let State::Upgrading(u) = &self.state {
                fds.push(PollFd::new(u.pipe_fd(), PollFlags::POLLIN));
                fds.push(PollFd::new(u.pidfd.as_fd(), PollFlags::POLLIN));
            }
            let xfer_at = fds.len();
            let links = self.xfer.pollable();
            for (_, fd, write) in &links {
                let mut flags = PollFlags::POLLIN;
                if *write {
                    flags |= PollFlags::POLLOUT;
                }
                fds.push(PollFd::new(*fd, flags));
            }
            let clients_at = fds.len();
            for (_, c) in &self.clients {
                let mut flags = PollFlags::empty();
                if c.wants_read() {
                    flags |= PollFlags::POLLIN;
                }
                if c.wants_write() {
                    flags |= PollFlags::POLLOUT;
                }
                fds.push(PollFd::new(c.fd(), flags));
            }
            if let Err(e) = nix::poll::poll(&mut fds, timeout) {
                if e != nix::errno::Errno::EINTR {
                    error!("poll() failed in the master loop: {e}");
                }
                return Vec::new();
            }
            let fired = |p: &PollFd<'_>| p.revents().is_some_and(|r| !r.is_empty());
            for (k, (side, _, _)) in links.iter().enumerate() {
                if fired(&fds[xfer_at + k]) {
                    xfer_ready.push(*side);
                }
            }
            for (i, p) in fds[workers_at..upgrade_at].iter().enumerate() {
                if fired(p) {
                    ready_workers.push(self.workers[i].pid);
                }
            }
            for (i, p) in fds[clients_at..].iter().enumerate() {
                if fired(p) {
                    let hup = p
                        .revents()
                        .is_some_and(|r| r.intersects(PollFlags::POLLHUP | PollFlags::POLLERR));
                    ready_clients.push((self.clients[i].0, hup));
                }
            }
            let sig = self.signals.is_some() && fired(&fds[0]);
            let ctl = self.control.is_some() && accepting && fired(&fds[ctl_index]);
            upgrade_ready = upgrade_at < xfer_at && fired(&fds[upgrade_at]);
            upgrade_gone = upgrade_at + 1 < xfer_at && fired(&fds[upgrade_at + 1]);
            (sig, ctl)
        };
        let mut commands = Vec::new();
        if sig_ready {
            if let Some(s) = &self.signals {
                for sig in s.drain() {
                    if sig != Signal::SIGCHLD {
                        info!("received {}", signals::name(sig));
                    }
                    let cmd = match Command::from_signal(sig) {
                        // Orchestrators send SIGTERM and wait: let them drain.
                        Some(Command::FastStop)
                            if sig == Signal::SIGTERM && self.config.master.graceful_sigterm =>
                        {
                            Some(Command::GracefulStop)
                        }
                        other => other,
                    };
                    commands.extend(cmd.map(Job::signal));
                }
            }
        }
        for side in xfer_ready {
            self.xfer_read(side);
        }
        for pid in ready_workers {
            self.read_worker(pid);
        }
        for (ticket, hup) in ready_clients {
            commands.extend(self.serve_client(ticket, hup));
        }
        if ctl_ready {
            commands.extend(self.accept_clients());
        }
        // Exit first: a "ready" from a new master that is already dead must not commit.
        if upgrade_gone {
            self.upgrade_child_gone();
        }
        if upgrade_ready {
            self.read_upgrade_report();
        }
        commands
    }

    /// Reads every message a worker has sent (hand-overs only while the master holds
    /// few enough fds), and sends what is queued for it.
    pub(super) fn read_worker(&mut self, pid: Pid) {
        let Some(i) = self.worker_index(pid) else {
            return;
        };
        self.flush_handoff(i);
        loop {
            if self.handoff_paused(&self.workers[i], self.handoff_in_flight()) {
                break;
            }
            match self.workers[i].channel.recv_fds::<ToMaster>() {
                Ok(Some((ToMaster::Handoff { conns }, fds))) => {
                    if conns.len() != fds.len() {
                        warn!(
                            pid = pid.as_raw(),
                            described = conns.len(),
                            fds = fds.len(),
                            "hand-over message with mismatched fds; closing the unmatched"
                        );
                    }
                    self.forward(Some(i), conns.into_iter().zip(fds).collect());
                }
                Ok(Some((ToMaster::Refused { conns }, fds))) => {
                    self.refused(conns.into_iter().zip(fds).collect());
                }
                Ok(Some((ToMaster::HandoffDone(counts), _))) => {
                    let w = &self.workers[i];
                    self.gens.counts(w.generation, w.pid.as_raw(), counts);
                    self.handoff_done(i, counts);
                    self.metrics.handoff_done(pid.as_raw(), counts);
                    for (t, o) in self.faults.handed_over(pid, counts.handed) {
                        self.answer_fault(t, o);
                    }
                }
                Ok(Some((msg, _))) => self.worker_message(i, msg),
                Ok(None) => break,
                // EOF: the worker is exiting; SIGCHLD tells the rest.
                Err(ChannelError::Closed) => {
                    self.handoff_channel_closed(i);
                    return;
                }
                Err(e) => {
                    warn!(pid = pid.as_raw(), "bad message from worker: {e}");
                    break;
                }
            }
        }
        self.flush_handoff(i);
    }

    pub(super) fn worker_message(&mut self, i: usize, msg: ToMaster) {
        let w = &mut self.workers[i];
        match msg {
            ToMaster::Ready => {
                let now = Instant::now();
                w.last_heartbeat = now;
                if w.state == WorkerState::Starting {
                    w.state = WorkerState::Ready;
                    info!(
                        slot = w.slot,
                        pid = w.pid.as_raw(),
                        generation = w.generation,
                        "worker ready"
                    );
                    let (slot, generation, pid) = (w.slot, w.generation, w.pid);
                    if generation == self.generation {
                        for (t, o) in self.faults.ready(slot, generation, pid, now) {
                            self.answer_fault(t, o);
                        }
                    }
                }
            }
            ToMaster::FaultOver { note } => {
                let pid = w.pid;
                info!(
                    pid = pid.as_raw(),
                    "worker survived an injected fault: {note}"
                );
                for (t, o) in self.faults.survived(pid, Instant::now()) {
                    self.answer_fault(t, o);
                }
            }
            ToMaster::Heartbeat(stats) => {
                w.last_heartbeat = Instant::now();
                w.stats = stats;
                self.check_rss(i);
                self.check_recycle();
            }
            ToMaster::Counters(c) => self.metrics.counters(w.pid.as_raw(), c),
            ToMaster::MetricsRequest { id } => self.answer_metrics(i, id),
            ToMaster::Handoff { .. } | ToMaster::Refused { .. } | ToMaster::HandoffDone(_) => {}
        }
    }
}
