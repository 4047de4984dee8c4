//! A fake of the master's effects for the unit tests of its decisions: it forks
//! nothing, signals nobody, reaps the exits the test scripts, reads configs from
//! memory and opens no socket (a listener is `/dev/null`), records every effect
//! instead, and keeps a clock the test moves by hand. `Bench` builds a master over it
//! from a config text; no port is bound and no file is written (only a test that
//! asks for a real control socket gets a directory).

use crate::os::posix::UnixStream;
use std::cell::RefCell;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use super::control::{Client, Request, Response};
use super::effects::{Effects, Exec, Notice};
use super::sockets::{self, Listener};
use super::start::Opened;
use super::upgrade::{SpawnError, Spawned};
use super::{Job, Master, StartOptions, State, Ticket, WorkerState};
use crate::channel::ToMaster;
use crate::config::{Config, ConfigError};
use crate::os::master::{Pid, Signal};
use crate::os::net::NetError;
use crate::os::pidfd::PidFd;
use crate::os::process::{self, ExitReason, Forked};
use crate::os::SysError;

/// Pids of fake processes: above any `pid_max`, so a signal that slipped past the
/// fake would find nobody.
const FAKE_PIDS: i32 = 1 << 23;

/// One effect the master had.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Did {
    Fork(Pid),
    Kill(Pid, Signal),
    KillGroup(Pid, Signal),
    SignalPidfd(Signal),
    StartMaster(Pid),
    /// A config read (a reload), by path.
    LoadConfig(PathBuf),
    /// Listeners opened for a config: how many sockets.
    OpenListeners(usize),
    Steer,
    Notify(Notice),
}

#[derive(Default)]
struct World {
    now: Option<Instant>,
    did: Vec<Did>,
    next_pid: i32,
    /// Copies of each new master's readiness pipe, for the test to report on.
    reports: Vec<OwnedFd>,
    /// Each forked worker's end of its channel, for a test that plays the worker.
    channels: Vec<(Pid, crate::channel::Channel)>,
    /// What each config path holds; a path missing here is unreadable.
    configs: Vec<(PathBuf, String)>,
    /// Exits the next reap finds.
    exits: Vec<(Pid, ExitReason)>,
}

/// The fake; the test keeps a clone to look and to move the clock.
#[derive(Clone, Default)]
pub struct Fake(Rc<RefCell<World>>);

impl Fake {
    fn new() -> Fake {
        let f = Fake::default();
        f.0.borrow_mut().now = Some(Instant::now());
        f
    }

    fn pid(&self) -> Pid {
        let mut w = self.0.borrow_mut();
        w.next_pid += 1;
        Pid::from_raw(FAKE_PIDS + w.next_pid)
    }

    fn did(&self, d: Did) {
        self.0.borrow_mut().did.push(d);
    }

    /// Everything done so far.
    pub fn done(&self) -> Vec<Did> {
        self.0.borrow().did.clone()
    }

    pub fn forks(&self) -> usize {
        self.done()
            .iter()
            .filter(|d| matches!(d, Did::Fork(_)))
            .count()
    }

    /// The signals sent to `pid`, in order.
    pub fn signals_to(&self, pid: Pid) -> Vec<Signal> {
        self.done()
            .iter()
            .filter_map(|d| match d {
                Did::Kill(p, s) if *p == pid => Some(*s),
                _ => None,
            })
            .collect()
    }

    /// Every message the master has sent worker `pid` so far, with the fds that came
    /// with each (the test plays the worker's side of its channel).
    pub fn sent_to(&self, pid: Pid) -> Vec<(crate::channel::ToWorker, Vec<OwnedFd>)> {
        let w = self.0.borrow();
        let Some((_, ch)) = w.channels.iter().find(|(p, _)| *p == pid) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        while let Ok(Some(m)) = ch.recv_fds() {
            out.push(m);
        }
        out
    }

    /// Worker `pid` sends `msg` (with `fds`) to the master over its channel, as the
    /// real worker would; the master reads it with `read_worker`.
    pub fn say(&self, pid: Pid, msg: &ToMaster, fds: &[std::os::fd::BorrowedFd<'_>]) {
        let w = self.0.borrow();
        let (_, ch) = w
            .channels
            .iter()
            .find(|(p, _)| *p == pid)
            .expect("a worker with an open channel");
        ch.send_fds(msg, fds).expect("the worker's send");
    }

    /// Closes worker `pid`'s end of its channel, as a worker that exits does.
    pub fn close_channel(&self, pid: Pid) {
        self.0.borrow_mut().channels.retain(|(p, _)| *p != pid);
    }

    /// What the config file at `path` holds from now on (`None`: it is unreadable).
    pub fn write_config(&self, path: &std::path::Path, text: Option<&str>) {
        let mut w = self.0.borrow_mut();
        w.configs.retain(|(p, _)| p != path);
        if let Some(text) = text {
            w.configs.push((path.to_path_buf(), text.to_string()));
        }
    }

    /// Child `pid` has exited with `reason`: the next reap finds it.
    pub fn exited(&self, pid: Pid, reason: ExitReason) {
        self.0.borrow_mut().exits.push((pid, reason));
    }

    /// What the master told systemd, in order.
    pub fn notices(&self) -> Vec<Notice> {
        self.done()
            .into_iter()
            .filter_map(|d| match d {
                Did::Notify(n) => Some(n),
                _ => None,
            })
            .collect()
    }

    pub fn advance(&self, by: Duration) {
        let mut w = self.0.borrow_mut();
        w.now = w.now.map(|t| t + by);
    }

    /// Closes the last new master's end of its readiness pipe, as its exit does.
    pub fn close_report(&self) {
        self.0.borrow_mut().reports.pop();
    }

    /// Writes `line` on the last new master's readiness pipe, as it would.
    pub fn report(&self, line: &str) {
        let w = self.0.borrow();
        let fd = w.reports.last().expect("a new master was started");
        let mut f = std::fs::File::from(fd.try_clone().expect("dup"));
        f.write_all(line.as_bytes()).expect("report");
    }
}

impl Effects for Fake {
    fn now(&self) -> Instant {
        self.0.borrow().now.unwrap_or_else(Instant::now)
    }

    fn fork(&mut self, _context: &dyn Fn() -> String) -> Result<Forked, SysError> {
        let pid = self.pid();
        self.did(Did::Fork(pid));
        Ok(Forked::Parent(pid))
    }

    fn forked_channel(&mut self, pid: Pid, end: crate::channel::Channel) {
        self.0.borrow_mut().channels.push((pid, end));
    }

    fn kill(&mut self, pid: Pid, sig: Signal) -> Result<(), SysError> {
        self.did(Did::Kill(pid, sig));
        Ok(())
    }

    fn kill_group(&mut self, leader: Pid, sig: Signal) -> Result<(), SysError> {
        self.did(Did::KillGroup(leader, sig));
        Ok(())
    }

    fn signal_pidfd(&mut self, _pidfd: &PidFd, sig: Signal) -> Result<(), SysError> {
        self.did(Did::SignalPidfd(sig));
        Ok(())
    }

    fn start_master(&mut self, exec: Exec<'_>, report: &OwnedFd) -> Result<Spawned, SpawnError> {
        drop(exec);
        let pid = self.pid();
        self.did(Did::StartMaster(pid));
        self.0.borrow_mut().reports.push(
            report
                .try_clone()
                .map_err(|e| SpawnError::Intermediate(e.to_string()))?,
        );
        // A pidfd on ourselves: never polled by these tests, never signalled (the
        // signal goes through `signal_pidfd`), and it does not fire while we live.
        let pidfd = PidFd::open(process::pid())?;
        Ok(Spawned {
            pid,
            pidfd,
            start: 0,
        })
    }

    fn reap(&mut self) -> Vec<(Pid, ExitReason)> {
        std::mem::take(&mut self.0.borrow_mut().exits)
    }

    fn load_config(&mut self, path: &std::path::Path) -> Result<Config, ConfigError> {
        self.did(Did::LoadConfig(path.to_path_buf()));
        let text = self
            .0
            .borrow()
            .configs
            .iter()
            .find(|(p, _)| p == path)
            .map(|(_, t)| t.clone());
        match text {
            Some(text) => Config::load_str(&text, path, &crate::service::Registry),
            None => Err(ConfigError::Read {
                path: path.to_path_buf(),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            }),
        }
    }

    /// One listener per `[[listen]]` entry (per slot for reuseport), each over
    /// `/dev/null`: the decisions only count and pass them.
    fn open_listeners(
        &mut self,
        config: &Config,
        _current: &[Listener],
    ) -> Result<Vec<Listener>, NetError> {
        let workers = config.master.workers.count();
        let mut out = Vec::new();
        for (i, l) in config.listen.iter().enumerate() {
            for slot in sockets::slots_of(l, workers) {
                let fd = std::fs::File::open("/dev/null").map_err(|source| NetError::Bind {
                    addr: l.address.to_string(),
                    step: "open(/dev/null) in the fake",
                    source,
                })?;
                out.push(Listener {
                    addr: l.address.clone(),
                    name: sockets::name_of(config, i),
                    slot,
                    fd: fd.into(),
                    owns_path: false,
                    adopt_path: false,
                });
            }
        }
        self.did(Did::OpenListeners(out.len()));
        Ok(out)
    }

    fn steer(&mut self, _config: &Config, _listeners: &[Listener]) -> Result<(), NetError> {
        self.did(Did::Steer);
        Ok(())
    }

    fn notify(&mut self, notice: Notice) {
        self.did(Did::Notify(notice));
    }
}

/// A master over the fake, from a config file in a directory of its own.
pub struct Bench {
    pub m: Master,
    pub fx: Fake,
    /// Where the config "is" (only the fake reads it) and where a real control
    /// socket goes if a test asks for one.
    dir: PathBuf,
    next_ticket: Ticket,
}

impl Drop for Bench {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A config of `workers` echo workers with `master` lines added to `[master]`, as if
/// in `dir`; its listener is never bound (the fake opens `/dev/null`).
pub fn config_text(dir: &std::path::Path, workers: usize, master: &str) -> String {
    format!(
        "[master]\nworkers = {workers}\npid_file = \"{d}/corral.pid\"\n\
         control_socket = \"{d}/corral.sock\"\n{master}\n\n\
         [[listen]]\naddress = \"127.0.0.1:9\"\nservice = \"echo\"\n",
        d = dir.display()
    )
}

impl Bench {
    /// `workers` echo workers, with `master` lines added to `[master]`, forked (not
    /// really) and ready: the master is running generation 1.
    pub fn running(workers: usize, master: &str) -> Bench {
        let mut b = Bench::starting(workers, master);
        b.ready(1);
        assert!(matches!(b.m.state, State::Running), "generation 1 serves");
        b
    }

    /// As `running`, but generation 1 has not reported ready yet: the master starts.
    pub fn starting(workers: usize, master: &str) -> Bench {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("corral-unit-{}-{n}", std::process::id()));
        let path = dir.join("corral.toml");
        let fx = Fake::new();
        fx.write_config(&path, Some(&config_text(&dir, workers, master)));
        let config = fx.clone().load_config(&path).expect("a valid config");
        let opts = StartOptions {
            binary: PathBuf::from("/bin/false"),
            reporter: None,
            upgraded: false,
        };
        let m = Master::new(config, opts, None, Opened::default(), Box::new(fx.clone()));
        let mut b = Bench {
            m,
            fx,
            dir,
            next_ticket: 1000,
        };
        for slot in 0..workers {
            b.m.spawn(slot, 1).expect("fake fork");
        }
        b
    }

    /// Every starting worker of `generation` reports ready; the master moves on.
    pub fn ready(&mut self, generation: u64) {
        let heard = self
            .pids(generation, WorkerState::Starting)
            .into_iter()
            .map(|p| (p, ToMaster::Ready))
            .collect();
        self.m.record(heard);
        self.tick();
    }

    /// Deadlines, progress and answers at the fake's now, as the loop runs them.
    pub fn tick(&mut self) {
        let now = self.fx.now();
        self.m.deadlines(now);
        self.m.progress(now);
        self.m.flush_clients();
    }

    pub fn later(&mut self, by: Duration) {
        self.fx.advance(by);
        self.tick();
    }

    pub fn pids(&self, generation: u64, state: WorkerState) -> Vec<Pid> {
        self.m
            .workers
            .iter()
            .filter(|w| w.generation == generation && w.state.name() == state.name())
            .map(|w| w.pid)
            .collect()
    }

    pub fn state(&self) -> String {
        self.m.status().message
    }

    /// A control client asks `req`: its job, and the client's end to read the
    /// answer from.
    pub fn ask(&mut self, req: Request) -> (Job, Asker) {
        let (ours, mut theirs) = UnixStream::pair().expect("socketpair");
        ours.set_nonblocking(true).expect("nonblocking");
        let line = serde_json::to_string(&req).expect("json") + "\n";
        theirs.write_all(line.as_bytes()).expect("request");
        let mut c = Client::new(ours, 0);
        assert_eq!(c.read().expect("read"), Some(req.clone()));
        self.next_ticket += 1;
        let t = self.next_ticket;
        self.m.ctl.clients.push((t, c));
        // As the master makes it from a request read off the socket (a fault or a
        // publish keeps its details aside), from uid 0.
        (self.m.job_for(req, t, 0), Asker(theirs))
    }

    /// A control client asks for an upgrade and the master starts a new one (not
    /// really): its pid, and the client's end to read the answer from.
    pub fn upgrade(&mut self) -> (Pid, Asker) {
        let (job, asker) = self.ask(Request::Upgrade);
        self.handle(vec![job]);
        match self.fx.done().last() {
            Some(Did::StartMaster(p)) => (*p, asker),
            other => panic!("a new master is started: {other:?}"),
        }
    }

    /// Handles one batch, as the loop does after collecting it.
    pub fn handle(&mut self, jobs: Vec<Job>) {
        self.m.handle(jobs);
        self.tick();
    }

    /// The master reads what worker `pid` sent (one turn's share, as when its channel
    /// polls readable) and records it, as the loop does.
    pub fn hear(&mut self, pid: Pid) {
        let heard = self.m.read_worker(pid, super::collect::Reading::Turn);
        self.m.record(heard.into_iter().map(|m| (pid, m)).collect());
        self.tick();
    }

    /// Gives the master a real control socket in the bench's directory (as `start`
    /// binds it), for a test that connects as the CLI does; returns its path.
    pub fn control_socket(&mut self) -> PathBuf {
        std::fs::create_dir_all(&self.dir).expect("temp dir");
        let path = self.dir.join("corral.sock");
        let server = super::control::Server::bind(&path, false).expect("control socket");
        self.m.ctl.server = Some(server);
        path
    }

    /// Child `pid` exits with `reason` and the master reaps it (as on SIGCHLD).
    pub fn exit(&mut self, pid: Pid, reason: ExitReason) {
        self.fx.exited(pid, reason);
        self.m.reap();
        self.tick();
    }

    /// The path the master reads its config from.
    pub fn config_path(&self) -> PathBuf {
        self.m.config.source.clone()
    }
}

/// A control client's end of the socket.
pub struct Asker(UnixStream);

impl Asker {
    /// The answer, if the master has sent it (and closed).
    pub fn answer(&mut self) -> Option<Response> {
        self.0.set_nonblocking(true).expect("nonblocking");
        let mut buf = Vec::new();
        let _ = self.0.read_to_end(&mut buf);
        let line = String::from_utf8_lossy(&buf);
        serde_json::from_str(line.trim()).ok()
    }
}
