//! Fd audit: corral with 2 workers, an echo and an http listener and its control
//! socket; every fd of the master and of each worker (readlink of `/proc/PID/fd`)
//! is named, and the named set must be exactly what that process needs: no leaked
//! socketpair end, no pipe, no other worker's channel, no control socket in a
//! worker. Checked at start, after a reload (a new generation, the old one gone)
//! and after a binary upgrade (a new master, the old one gone).
//!
//! What each process holds:
//! - master: stdio, its signalfd, both listeners, the control socket, one channel
//!   per live worker, and `RESERVE` fds on /dev/null (the fd reserve that lets it
//!   fork at the fd limit, `src/master/pressure.rs`);
//! - worker: stdio, its signalfd, epoll, eventfd, both listeners and its own
//!   channel to the master.
//!
//! Fds that the test runner itself leaves without `FD_CLOEXEC` (e.g. cargo's
//! jobserver pipe) reach corral through exec like any child's; they are named
//! "inherited from the test runner" and expected, since they are not corral's.

use crate::common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use common::fds::*;
use common::xmaster::http_template;
use common::*;

/// The master's fd reserve on /dev/null (`RESERVE_FDS` in `src/master/pressure.rs`).
const RESERVE: usize = 8;
/// How long an audit may take to settle (a closing connection, a worker starting).
const SETTLE: Duration = Duration::from_secs(30);

/// What the audit knows of the world around one corral.
struct World<'a> {
    c: &'a Corral,
    http_port: u16,
    inherited: &'a HashSet<i32>,
}

impl World<'_> {
    /// The name of every fd of `pid` (sorted), given which process is the master and
    /// which are its workers.
    fn names(&self, pid: i32, master: i32, workers: &[i32]) -> Vec<String> {
        let control = unix_bound_under(self.c.dir.path());
        let peers = unix_peers().unwrap_or_default();
        let holders: Vec<(i32, HashSet<u64>)> = std::iter::once(master)
            .chain(workers.iter().copied())
            .filter(|p| *p != pid)
            .map(|p| (p, socket_inodes(p)))
            .collect();
        let mut out: Vec<String> = fd_table(pid)
            .into_iter()
            .map(|(fd, target)| self.name(pid, fd, &target, master, &control, &peers, &holders))
            .collect();
        out.sort();
        out
    }

    #[allow(clippy::too_many_arguments)]
    fn name(
        &self,
        pid: i32,
        fd: i32,
        target: &str,
        master: i32,
        control: &HashSet<u64>,
        peers: &HashMap<u64, u64>,
        holders: &[(i32, HashSet<u64>)],
    ) -> String {
        if fd <= 2 {
            return format!("fd {fd}: {target}");
        }
        if self.inherited.contains(&fd) {
            return format!("fd {fd}: inherited from the test runner");
        }
        match target {
            "anon_inode:[signalfd]" => return "signalfd".into(),
            "anon_inode:[eventpoll]" => return "epoll".into(),
            "anon_inode:[eventfd]" => return "eventfd".into(),
            "/dev/null" => return "/dev/null (fd reserve)".into(),
            _ => {}
        }
        let Some(ino) = socket_inode(target) else {
            return format!("unexpected fd {fd}: {target}");
        };
        match tcp_listener_port(pid, fd) {
            Some(p) if p == self.c.port => return "listener echo".into(),
            Some(p) if p == self.http_port => return "listener http".into(),
            Some(p) => return format!("unexpected fd {fd}: a listener on port {p}"),
            None => {}
        }
        if control.contains(&ino) {
            return "control socket".into();
        }
        let peer = peers.get(&ino);
        let holder = peer.and_then(|p| holders.iter().find(|(_, s)| s.contains(p)));
        match holder {
            Some((h, _)) if *h == master => "channel to the master".into(),
            Some((h, _)) => format!("channel to worker {h}"),
            None => format!("unexpected fd {fd}: {target} (peer {peer:?})"),
        }
    }
}

/// Stdio as the harness gives it, and the inherited fds.
fn common_names(w: &World) -> Vec<String> {
    let dir = w.c.dir.path();
    let mut v = vec![
        "fd 0: /dev/null".to_string(),
        format!("fd 1: {}", dir.join("corral.stdout").display()),
        format!("fd 2: {}", dir.join("corral.stderr").display()),
    ];
    v.extend(
        w.inherited
            .iter()
            .map(|fd| format!("fd {fd}: inherited from the test runner")),
    );
    v
}

fn expected_master(w: &World, workers: &[i32]) -> Vec<String> {
    let mut v = common_names(w);
    v.extend(
        [
            "signalfd",
            "listener echo",
            "listener http",
            "control socket",
        ]
        .map(String::from),
    );
    v.extend(workers.iter().map(|p| format!("channel to worker {p}")));
    v.extend(vec!["/dev/null (fd reserve)".to_string(); RESERVE]);
    v.sort();
    v
}

/// A worker's fds; `peers`: the other workers of its master, each linked to it by the
/// push bus (one socketpair per pair of workers, issue 28).
fn expected_worker(w: &World, peers: &[i32]) -> Vec<String> {
    let mut v = common_names(w);
    v.extend(peers.iter().map(|p| format!("channel to worker {p}")));
    v.extend(
        [
            "signalfd",
            "epoll",
            "eventfd",
            "listener echo",
            "listener http",
            "channel to the master",
        ]
        .map(String::from),
    );
    v.sort();
    v
}

/// Waits (up to `SETTLE`) until `master` and its 2 workers hold exactly their fds;
/// fails naming every process whose fds differ, with both lists.
fn audit(w: &World, master: i32, when: &str) {
    let t0 = std::time::Instant::now();
    let mut last: BTreeMap<String, (Vec<String>, Vec<String>)> = BTreeMap::new();
    let ok = wait_until(SETTLE, || {
        last.clear();
        let workers: Vec<i32> = w.c.workers_of(master).iter().map(|p| p.pid).collect();
        if workers.len() != 2 {
            last.insert(
                format!("master {master} has workers {workers:?}, want 2"),
                (Vec::new(), Vec::new()),
            );
            return false;
        }
        let got = w.names(master, master, &workers);
        let want = expected_master(w, &workers);
        if got != want {
            last.insert(format!("master {master}"), (got, want));
        }
        for &pid in &workers {
            let got = w.names(pid, master, &workers);
            let peers: Vec<i32> = workers.iter().copied().filter(|p| *p != pid).collect();
            let want = expected_worker(w, &peers);
            if got != want {
                last.insert(format!("worker {pid}"), (got, want));
            }
        }
        last.is_empty()
    });
    let report: Vec<String> = last
        .iter()
        .map(|(who, (got, want))| format!("{who}:\n  holds: {got:#?}\n  wants: {want:#?}"))
        .collect();
    assert!(
        ok,
        "{when}: fds differ after {SETTLE:?}\n{}\n{}",
        report.join("\n"),
        w.c.log_tail(40)
    );
    eprintln!(
        "{when}: master {master} and its 2 workers hold exactly their fds (audited in {:?})",
        t0.elapsed()
    );
}

#[test]
fn master_and_workers_hold_exactly_their_fds_through_a_reload_and_an_upgrade() {
    if unix_peers().is_none() {
        eprintln!("skipped: `ss` (iproute2) cannot run, so unix socket peers are unknown");
        return;
    }
    let inherited = inheritable_fds();
    eprintln!("fds the test runner hands to its children: {inherited:?}");
    let (_bin_dir, bin) = copy_binary();
    let http_port = free_port();
    let c = Corral::start_with(
        &http_template(2, http_port, "").render(),
        Launch {
            binary: Some(bin),
            ..Launch::default()
        },
    );
    let w = World {
        c: &c,
        http_port,
        inherited: &inherited,
    };
    audit(&w, c.master_pid(), "at start");

    let old = c.workers();
    c.must_reload();
    assert!(
        wait_until(SETTLE, || old.iter().all(|p| !proc_alive(*p))),
        "the old generation {old:?} did not leave after the reload\n{}",
        c.log_tail(40)
    );
    audit(&w, c.master_pid(), "after a reload");

    let old = c.workers();
    let new_master = c.must_upgrade();
    assert!(
        wait_until(SETTLE, || c.master_exited()
            && old.iter().all(|p| !proc_alive(*p))),
        "the old master or its workers {old:?} did not leave after the upgrade\n{}",
        c.log_tail(40)
    );
    audit(&w, new_master, "after a binary upgrade");
}
