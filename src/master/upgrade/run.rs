//! The master's side of a binary upgrade: start a new master, commit once it reports
//! ready, roll back when it does not.

use super::super::{IdlePolicy, Master, Report, Signal, State, Upgrade, Waiters, WorkerState};
use super::exec::NewMaster;
use crate::control;
use crate::master::effects::Notice;
use crate::master::upgrade;
use crate::master::xfer;
use crate::os::fd;
use crate::os::process;
use std::os::fd::AsFd;
use tracing::{error, info, warn};

impl Master {
    /// Forks and execs the binary on disk as a new master that inherits our
    /// listeners; we keep serving until it reports ready.
    pub(in crate::master) fn upgrade(&mut self, waiter: Option<u64>) {
        match self.state {
            State::Running => {}
            State::Reloading(_) => {
                info!("upgrade requested during a reload: refused until the reload ends");
                self.waiting.upgrade.join(waiter.into());
                return;
            }
            _ => {
                let why = "the master is busy (starting, upgrading or stopping); upgrade refused";
                warn!("{why}");
                if let Some(t) = waiter {
                    self.answer(t, false, why.into());
                }
                return;
            }
        }
        let started = self.fx.now();
        info!(binary = %self.up.binary.display(), "binary upgrade: starting a new master");
        let prepared = upgrade::command_line(&self.up.binary, &self.config.source)
            .and_then(|cmd| fd::pipe().map(|p| (cmd, p)).map_err(|e| e.to_string()));
        let ((path, args), (pipe_r, pipe_w)) = match prepared {
            Ok(x) => x,
            Err(e) => {
                return self.upgrade_failed(
                    waiter.into_iter().collect(),
                    format!("cannot prepare the new master: {e}"),
                )
            }
        };
        if let Some(p) = &mut self.host.pid_file {
            if let Err(e) = p.rename_to_oldbin() {
                warn!("{e}");
            }
        }
        // Detached (double fork), so that under systemd the new master is systemd's
        // child when it is named MAINPID=, not an "alien" one systemd would SIGKILL
        // at the next stop instead of letting it drain.
        let mut env: Vec<(String, String)> = upgrade::predecessor_env().into_iter().collect();
        env.extend(self.share_totals());
        env.push((
            upgrade::GENERATION_ENV.to_string(),
            self.generation.to_string(),
        ));
        // We read the new master's `Adopters`: lanes can cross (`xlanes.rs`).
        env.push((xfer::LANES_ENV.to_string(), "1".to_string()));
        if self.faults.take_bad_upgrade() {
            env.push((crate::fault::ENV.into(), "bad-upgrade".into()));
        }
        // The channel the idle connections move over once the upgrade is committed.
        let (link, theirs) = match xfer::Link::pair() {
            Ok((l, t)) => {
                l.send_ticket_keys();
                (Some(l), Some(t))
            }
            Err(e) => {
                warn!("{e}; idle connections will stay with this master's workers");
                (None, None)
            }
        };
        let new_master = NewMaster {
            binary: &self.up.binary,
            path: &path,
            args: &args,
            listeners: &self.listeners,
            report: &pipe_w,
            link: theirs.as_ref(),
            env,
        };
        let exec = move || new_master.exec();
        let spawned = self.fx.start_master(Box::new(exec), &pipe_w);
        drop(theirs);
        match spawned {
            Err(e) => {
                self.restore_pid_file();
                self.upgrade_failed(waiter.into_iter().collect(), e.to_string());
            }
            Ok(spawned) => {
                drop(pipe_w);
                if let Err(e) = fd::set_nonblocking(pipe_r.as_fd(), true) {
                    warn!("{e}");
                }
                let child = spawned.pid;
                self.up.xfer.to_new = link;
                info!(
                    pid = child.as_raw(),
                    "new master started; waiting for it to report ready"
                );
                self.enter(State::Upgrading(Box::new(Upgrade {
                    child,
                    pidfd: spawned.pidfd,
                    child_start: spawned.start,
                    pipe: pipe_r,
                    buf: Vec::new(),
                    deadline: started + self.config.master.upgrade_timeout.0,
                    started,
                    waiters: waiter.into(),
                })));
            }
        }
    }

    pub(in crate::master) fn read_upgrade_report(&mut self) {
        let report = match &mut self.state {
            State::Upgrading(u) => upgrade::read_report(&u.pipe, &mut u.buf),
            _ => return,
        };
        match report {
            None => {}
            Some(Report::Ready(pid)) => self.commit_upgrade(pid),
            Some(Report::Failed(why)) => {
                self.rollback_upgrade(format!("the new master failed: {why}"))
            }
            Some(Report::Closed) => {
                // Usually the process is gone by now; its exit status says why.
                let why = match self.upgrade_child_exit(100) {
                    Some(how) => format!("the new master {how} before it was ready"),
                    None => "the new master closed its readiness pipe before it was ready".into(),
                };
                self.rollback_upgrade(why);
            }
        }
    }

    /// The new master's pidfd fired: it exited. Whatever it managed to write on the
    /// readiness pipe says more than its exit status, so that comes first.
    pub(in crate::master) fn upgrade_child_gone(&mut self) {
        let report = match &mut self.state {
            State::Upgrading(u) => upgrade::read_report(&u.pipe, &mut u.buf),
            _ => return,
        };
        let how = self
            .upgrade_child_exit(0)
            .unwrap_or_else(|| "exited".into());
        let why = match report {
            Some(Report::Failed(why)) => format!("the new master failed: {why}"),
            Some(Report::Ready(_)) => format!("the new master {how} right after reporting ready"),
            None | Some(Report::Closed) => format!("the new master {how} before it was ready"),
        };
        self.rollback_upgrade(why);
    }

    /// The new master serves: hand it the service and drain ourselves.
    pub(in crate::master) fn commit_upgrade(&mut self, pid: i32) {
        let Some(State::Upgrading(u)) =
            self.leave(|s| matches!(s, State::Upgrading(_)), State::Running)
        else {
            return;
        };
        let took = self.fx.now().saturating_duration_since(u.started);
        self.metrics.own.upgrades.record(true, Some(took));
        self.final_share();
        let msg = format!(
            "upgraded: new master {pid} is serving (ready in {} ms); this master ({}) drains its workers and exits",
            took.as_millis(),
            process::pid()
        );
        info!("{msg}");
        // systemd must follow the new main process before we exit, or it would take
        // our exit for the service's and kill the new master.
        self.fx.notify(Notice::MainPid(pid as u32));
        self.up.handed_over = true;
        if upgrade::we_are_init() {
            self.up.successor = Some(upgrade::Successor {
                pid: u.child,
                exit: None,
                binary: self.up.binary.clone(),
            });
        }
        self.answer_all(u.waiters, true, &msg);
        // The new master owns the control socket path now; ours stops listening.
        if let Some(c) = self.ctl.server.take() {
            c.forget();
        }
        // Idle connections move to the new master over the link (master/xfer.rs);
        // without one they linger here as before.
        let idle = if self.up.xfer.confirm() {
            // Before the drain: a worker passes its publishes on before anything moves.
            self.forward_publishes_to_successor();
            // And gets its lanes to the new master's workers before it drains, so
            // that its first batch already takes them (`xlanes.rs`): the new master
            // named them before it reported ready, on the link we read now.
            for w in &mut self.workers {
                if matches!(w.state, WorkerState::Starting | WorkerState::Ready) {
                    w.handoff.moves_out = true;
                }
            }
            self.xfer_read(xfer::Side::ToNew);
            IdlePolicy::Handoff
        } else {
            IdlePolicy::Linger
        };
        self.stop(true, idle);
    }

    /// The new master failed: kill it and everything it started, and keep serving.
    pub(in crate::master) fn rollback_upgrade(&mut self, why: String) {
        let Some(State::Upgrading(u)) =
            self.leave(|s| matches!(s, State::Upgrading(_)), State::Running)
        else {
            return;
        };
        // The new master leads its own process group: its workers go with it. The
        // pidfd reaches it even before it has made that group.
        let _ = self.fx.kill_group(u.child, Signal::SIGKILL);
        // Nothing moved over it (moves begin only at the commit).
        self.up.xfer.to_new = None;
        if let Err(e) = self.fx.signal_pidfd(&u.pidfd, Signal::SIGKILL) {
            warn!("{e}");
        }
        // In case it had already named itself the main process (ready just as the
        // deadline passed), systemd must follow us again.
        self.fx.notify(Notice::MainPid(std::process::id()));
        self.restore_pid_file();
        if let Err(e) = self.rebind_control() {
            error!("{e}");
        }
        self.upgrade_failed(u.waiters, why);
        for (t, o) in self.faults.rolled_back(u.child, self.fx.now()) {
            self.answer_fault(t, o);
        }
    }

    /// How the new master ended ("exited with exit code 1"), if it has, waiting up to
    /// `wait_ms` for it (the pipe closes a moment before the exit is visible).
    pub(in crate::master) fn upgrade_child_exit(&self, wait_ms: i32) -> Option<String> {
        let State::Upgrading(u) = &self.state else {
            return None;
        };
        u.child_exit(wait_ms)
    }

    pub(in crate::master) fn upgrade_failed(&mut self, waiters: Waiters, why: String) {
        self.metrics.own.upgrades.record(false, None);
        self.stop_sharing();
        let msg = format!(
            "upgrade rolled back, this master ({}) keeps serving: {why}",
            process::pid()
        );
        error!("{msg}");
        let status = format!("{}; last upgrade failed: {why}", self.status_line());
        self.fx.notify(Notice::Status(status));
        self.answer_all(waiters, false, &msg);
    }

    pub(in crate::master) fn restore_pid_file(&mut self) {
        if let Some(p) = &mut self.host.pid_file {
            if let Err(e) = p.restore_from_oldbin() {
                error!("{e}");
            }
        }
    }

    /// The master we handed over to, if we must stay as its init (PID 1) once done.
    pub fn take_successor(&mut self) -> Option<upgrade::Successor> {
        self.up.successor.take()
    }

    /// A failed new master may have taken the control socket's path: take it back.
    pub(in crate::master) fn rebind_control(&mut self) -> Result<(), control::ControlError> {
        let path = self.config.master.control_socket_path();
        if let Some(c) = self.ctl.server.take() {
            c.forget();
        }
        self.ctl.server = Some(control::Server::bind(&path, true)?);
        Ok(())
    }
}
