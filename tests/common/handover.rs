//! Helpers for the hand-over tests: thousands of raw keep-alive HTTP connections,
//! one request at a time on each, every response read and classified, and which
//! process serves each connection (by socket inode).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use super::Corral;

/// One request, keep-alive (HTTP/1.1 default).
pub const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: handover\r\n\r\n";

/// Raises this process's soft RLIMIT_NOFILE to its hard limit (5000 client sockets
/// do not fit under the usual soft 1024); returns the new soft limit.
pub fn raise_nofile() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit(RLIMIT_NOFILE)");
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).expect("setrlimit(RLIMIT_NOFILE)");
    }
    hard
}

/// What one request got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// A complete response: status, whether it said `Connection: close`, body.
    Full {
        status: u16,
        closes: bool,
        body: Vec<u8>,
    },
    /// The connection was reset.
    Reset {
        got: usize,
    },
    /// EOF before a complete response.
    Eof {
        got: usize,
    },
    TimedOut {
        got: usize,
    },
    Other(String),
}

impl Answer {
    pub fn is_ok(&self) -> bool {
        matches!(self, Answer::Full { status: 200, .. })
    }
}

/// Reads one response (head and `Content-Length` body) from `s` by `deadline`.
pub fn read_response(s: &mut TcpStream, deadline: Instant) -> Answer {
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(a) = parse(&buf) {
            return a;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Answer::TimedOut { got: buf.len() };
        }
        if let Err(e) = s.set_read_timeout(Some(left.max(Duration::from_millis(1)))) {
            return Answer::Other(format!("set_read_timeout: {e}"));
        }
        match s.read(&mut chunk) {
            Ok(0) => return Answer::Eof { got: buf.len() },
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if super::is_timeout(&e) => return Answer::TimedOut { got: buf.len() },
            Err(e) if super::is_reset(&e) => return Answer::Reset { got: buf.len() },
            Err(e) => return Answer::Other(format!("read: {e}")),
        }
    }
}

/// A complete response at the start of `buf`, if there is one.
fn parse(buf: &[u8]) -> Option<Answer> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&buf[..end]);
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let header = |name: &str| {
        head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    };
    let len: usize = header("content-length")?.parse().ok()?;
    if buf.len() < end + len {
        return None;
    }
    let closes = header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
    Some(Answer::Full {
        status,
        closes,
        body: buf[end..end + len].to_vec(),
    })
}

/// Opens `n` connections to `addr`, each with one request answered (so each is
/// established, accepted and counted by a worker, and idle afterwards).
pub fn open_idle(addr: SocketAddr, n: usize, timeout: Duration) -> Vec<TcpStream> {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "opened only {i} of {n} connections in {timeout:?}"
        );
        let mut s = super::connect(addr, left)
            .unwrap_or_else(|e| panic!("connection {i} of {n} to {addr}: {e}"));
        s.write_all(GET)
            .unwrap_or_else(|e| panic!("request on connection {i}: {e}"));
        let a = read_response(&mut s, deadline);
        assert!(a.is_ok(), "first request on connection {i}: {a:?}");
        out.push(s);
    }
    out
}

/// Sends one request on every connection (all first, so the server sees them
/// together), then reads every answer; answers in connection order.
pub fn request_all(conns: &mut [TcpStream], timeout: Duration) -> Vec<Answer> {
    let deadline = Instant::now() + timeout;
    let sent: Vec<Option<String>> = conns
        .iter_mut()
        .map(|s| s.write_all(GET).err().map(|e| format!("write: {e}")))
        .collect();
    conns
        .iter_mut()
        .zip(sent)
        .map(|(s, err)| match err {
            Some(e) => Answer::Other(e),
            None => read_response(s, deadline),
        })
        .collect()
}

/// `request_all` on the connections at `which` only; answers in that order.
pub fn request_some(conns: &mut [TcpStream], which: &[usize], timeout: Duration) -> Vec<Answer> {
    let deadline = Instant::now() + timeout;
    let sent: Vec<Option<String>> = which
        .iter()
        .map(|&i| conns[i].write_all(GET).err().map(|e| format!("write: {e}")))
        .collect();
    which
        .iter()
        .zip(sent)
        .map(|(&i, err)| match err {
            Some(e) => Answer::Other(e),
            None => read_response(&mut conns[i], deadline),
        })
        .collect()
}

/// Counts of answers by kind, for failure messages and figures.
pub fn tally(answers: &[Answer]) -> String {
    let mut ok = 0;
    let mut closes = 0;
    let mut reset = 0;
    let mut eof = 0;
    let mut timeout = 0;
    let mut other = 0;
    let mut first_bad = None;
    for a in answers {
        match a {
            Answer::Full {
                status: 200,
                closes: c,
                ..
            } => {
                ok += 1;
                closes += usize::from(*c);
            }
            Answer::Reset { .. } => reset += 1,
            Answer::Eof { .. } => eof += 1,
            Answer::TimedOut { .. } => timeout += 1,
            _ => other += 1,
        }
        if !a.is_ok() && first_bad.is_none() {
            first_bad = Some(a.clone());
        }
    }
    format!(
        "{ok} of {} answered 200 ({closes} with Connection: close); {reset} reset, {eof} EOF, \
         {timeout} timed out, {other} other; first failure: {first_bad:?}",
        answers.len()
    )
}

/// Which of `pids` holds the server side of each connection (to `server_port`), by
/// socket inode; None where no process of `pids` holds it.
pub fn owners_on(server_port: u16, conns: &[TcpStream], pids: &[i32]) -> Vec<Option<i32>> {
    let inodes: Vec<(i32, std::collections::HashSet<u64>)> =
        pids.iter().map(|&p| (p, super::socket_inodes(p))).collect();
    let by_port = super::server_socket_inodes(server_port);
    conns
        .iter()
        .map(|s| {
            let ino = *by_port.get(&s.local_addr().ok()?.port())?;
            inodes
                .iter()
                .find(|(_, set)| set.contains(&ino))
                .map(|(pid, _)| *pid)
        })
        .collect()
}

/// Sum of `key=N` over the log lines that contain `marker`.
pub fn sum_field(log: &str, marker: &str, key: &str) -> u64 {
    let key = format!("{key}=");
    log.lines()
        .filter(|l| l.contains(marker))
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|t| t.strip_prefix(key.as_str()))
                .and_then(|v| {
                    v.trim_matches(|c: char| !c.is_ascii_digit())
                        .parse::<u64>()
                        .ok()
                })
        })
        .sum()
}

/// Open fds of `pid` (0 if it is gone).
pub fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|rd| rd.count())
        .unwrap_or(0)
}

/// Sends SIGSTOP or SIGCONT to processes this test started.
pub fn freeze(pids: &[i32], on: bool) {
    use nix::sys::signal::{kill, Signal};
    let sig = if on { Signal::SIGSTOP } else { Signal::SIGCONT };
    for &p in pids {
        kill(nix::unistd::Pid::from_raw(p), sig).unwrap_or_else(|e| panic!("{sig} to {p}: {e}"));
    }
}

/// Waits until `f` gives the same value for `quiet` in a row (by `timeout`); returns
/// the last value and whether it settled.
pub fn settle<T: PartialEq + Copy>(
    timeout: Duration,
    quiet: Duration,
    mut f: impl FnMut() -> T,
) -> (T, bool) {
    let deadline = Instant::now() + timeout;
    let mut last = f();
    let mut since = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(50));
        let now = f();
        if now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() >= quiet {
            return (last, true);
        }
        if Instant::now() >= deadline {
            return (last, false);
        }
    }
}

/// One more request on every connection, with the tally printed after `label`; every
/// answer must be a full `200` with keep-alive (the connection lives on).
pub fn all_kept_alive(c: &Corral, conns: &mut [TcpStream], label: &str, timeout: Duration) {
    let answers = request_all(conns, timeout);
    let summary = tally(&answers);
    eprintln!("after {label}: {summary}");
    assert!(
        answers.iter().all(|a| matches!(
            a,
            Answer::Full {
                status: 200,
                closes: false,
                ..
            }
        )),
        "{label}: {summary}\n{}",
        c.log_tail(60)
    );
}

/// Opens `n` echo connections, each answered once (established, counted, idle).
pub fn open_echo(c: &Corral, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|i| {
            let mut s = super::connect(c.addr(), Duration::from_secs(30))
                .unwrap_or_else(|e| panic!("connection {i}: {e}\n{}", c.log_tail(20)));
            super::must_echo(c, &mut s, "hello\n");
            s
        })
        .collect()
}

/// After a new worker (`victim`) was killed mid-move: each of the `senders` old
/// workers' lanes to it hung up, and exactly the connections it acknowledged (their
/// `took`, logged then) are lost; every other client still echoes. Returns what it
/// took.
pub fn assert_lost_only_what_the_victim_took(
    c: &Corral,
    conns: &mut [TcpStream],
    victim: i32,
    senders: usize,
) -> u64 {
    use super::net::{echo, Echo};
    let log = c.log();
    let marker = format!("lane to worker {victim} closed");
    let hung_up = log.matches(&marker).count();
    let took = sum_field(&log, &marker, "took");
    let resent = sum_field(&log, &marker, "resent");
    eprintln!(
        "old workers' lanes to the victim hung up {hung_up} times: it took {took}, {resent} went again"
    );
    assert_eq!(
        hung_up,
        senders,
        "every old worker had a lane to the victim\n{}",
        c.log_tail(60)
    );
    assert!(
        took + resent > 0,
        "the victim was killed before any connection reached it: nothing was tested"
    );
    let mut lost = 0u64;
    let mut bad = Vec::new();
    for (i, s) in conns.iter_mut().enumerate() {
        match echo(s, b"again\n", Duration::from_secs(20)) {
            Echo::Ok => {}
            Echo::Closed(_) => lost += 1,
            Echo::Bad(e) => bad.push((i, e)),
        }
    }
    eprintln!(
        "{lost} of {} clients lost (the victim had taken {took})",
        conns.len()
    );
    assert!(bad.is_empty(), "clients neither served nor closed: {bad:?}");
    assert_eq!(
        lost,
        took,
        "lost clients must be exactly those the killed worker acknowledged\n{}",
        c.log_tail(60)
    );
    took
}

/// The old workers (frozen, their move committed) are let go while the new worker
/// `victim` is frozen, so they fill their lanes to it (a window each) and send the
/// rest elsewhere; once they settle, the victim adopts for a moment (at least one
/// message, as far as 10 s tell) and is SIGKILLed, by pid.
pub fn kill_mid_adoption(old: &[i32], victim: i32) {
    use nix::sys::signal::{kill, Signal};
    freeze(&[victim], true);
    let fds_before = fd_count(victim);
    freeze(old, false);
    let (held, settled) = settle(Duration::from_secs(60), Duration::from_secs(1), || {
        old.iter().map(|&p| fd_count(p)).sum::<usize>()
    });
    assert!(settled, "the old workers never settled");
    eprintln!("victim {victim} frozen: the old workers hold {held} fds");
    freeze(&[victim], false);
    let adopting = super::wait_until(Duration::from_secs(10), || {
        fd_count(victim) >= fds_before + 64
    });
    kill(nix::unistd::Pid::from_raw(victim), Signal::SIGKILL).expect("SIGKILL the victim");
    eprintln!(
        "victim {victim} killed with {} fds ({fds_before} before; adopting seen: {adopting})",
        fd_count(victim)
    );
}
