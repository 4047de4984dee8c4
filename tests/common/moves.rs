//! Helpers for the connection-move tests: generations from `corral status --json`,
//! reloads timed until the old generation is gone, and long-lived echo streams
//! driven from a few threads with non-blocking sockets, every reply checked.

use std::collections::BTreeSet;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use super::{free_port, is_reset, status, Conf, Corral, Launch};

/// The generations that have workers now, per `corral status --json`.
pub fn generations(c: &Corral) -> BTreeSet<u64> {
    status(c).2.iter().map(|w| w.generation).collect()
}

/// `corral -s reload` (which returns once the new generation is ready), then polls
/// `corral status --json` until only the newest generation has workers. Returns
/// (that generation, time from the reload's return until the old one was gone), or
/// panics after `limit` naming what is still there.
pub fn reload_and_wait_old_gone(c: &Corral, limit: Duration) -> (u64, Duration) {
    let out = c.cli(&["-s", "reload"]);
    assert!(
        out.status.success(),
        "`corral -s reload` failed: {}\n{}",
        out.all(),
        c.log_tail(40)
    );
    let t0 = Instant::now();
    loop {
        let (_, gen, workers) = status(c);
        let gens: BTreeSet<u64> = workers.iter().map(|w| w.generation).collect();
        if gens.len() == 1 && gens.contains(&gen) {
            return (gen, t0.elapsed());
        }
        assert!(
            t0.elapsed() < limit,
            "generations {gens:?} still have workers {:?} after the reload to {gen}\n{}",
            t0.elapsed(),
            c.log_tail(60)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The bytes of message `seq` on stream `id`: a line that names both, padded to a
/// length that varies with `seq` so replies split across reads in varied places.
pub fn stream_message(id: usize, seq: u64) -> Vec<u8> {
    let pad = (seq as usize * 37 + id) % 200;
    format!("{id}:{seq}:{}\n", "x".repeat(pad)).into_bytes()
}

/// What the echo streams saw.
#[derive(Debug, Default)]
pub struct StreamReport {
    /// Round trips completed and checked, per stream.
    pub done: Vec<u64>,
    /// Every failure: reset, EOF, wrong bytes, timeout (stream id and what).
    pub errors: Vec<String>,
}

/// Long-lived echo streams doing round trips until stopped: each sends numbered
/// messages, one at a time after a short pause, and checks that each reply is exactly
/// its message (every byte echoed once, in order).
pub struct EchoStreams {
    stop: Arc<AtomicBool>,
    /// Total round trips so far (all streams).
    pub total: Arc<AtomicU64>,
    threads: Vec<JoinHandle<ThreadReport>>,
    n: usize,
}

/// One driving thread's streams: (first stream id, round trips per stream, errors).
type ThreadReport = (usize, Vec<u64>, Vec<String>);

struct Stream {
    s: TcpStream,
    id: usize,
    seq: u64,
    /// The message in flight and how much of its echo has arrived.
    want: Vec<u8>,
    got: usize,
    sent: usize,
    next_at: Instant,
    last_progress: Instant,
    dead: bool,
}

impl EchoStreams {
    /// Opens `n` streams to `addr` (connected and checked with one round trip each)
    /// and drives them from `threads` threads; each stream waits `pause` between its
    /// round trips.
    pub fn start(addr: SocketAddr, n: usize, threads: usize, pause: Duration) -> EchoStreams {
        let stop = Arc::new(AtomicBool::new(false));
        let total = Arc::new(AtomicU64::new(0));
        let mut handles = Vec::new();
        let per = n.div_ceil(threads);
        let opened = Arc::new(Mutex::new(0usize));
        for t in 0..threads {
            let ids: Vec<usize> = (t * per..((t + 1) * per).min(n)).collect();
            let stop = stop.clone();
            let total = total.clone();
            let opened = opened.clone();
            handles.push(std::thread::spawn(move || {
                drive(addr, ids, pause, &stop, &total, &opened)
            }));
        }
        let t0 = Instant::now();
        while *opened.lock().unwrap() < n && t0.elapsed() < Duration::from_secs(60) {
            std::thread::sleep(Duration::from_millis(20));
        }
        EchoStreams {
            stop,
            total,
            threads: handles,
            n,
        }
    }

    /// Stops every stream after its current round trip and reports.
    pub fn finish(self) -> StreamReport {
        self.stop.store(true, Ordering::SeqCst);
        let mut done = vec![0; self.n];
        let mut errors = Vec::new();
        for h in self.threads {
            let (first, d, e) = h.join().expect("stream thread panicked");
            done[first..first + d.len()].copy_from_slice(&d);
            errors.extend(e);
        }
        StreamReport { done, errors }
    }
}

/// How long a message may wait for its echo before the stream counts as stuck.
const STUCK: Duration = Duration::from_secs(20);

fn drive(
    addr: SocketAddr,
    ids: Vec<usize>,
    pause: Duration,
    stop: &AtomicBool,
    total: &AtomicU64,
    opened: &Mutex<usize>,
) -> ThreadReport {
    let first = ids.first().copied().unwrap_or(0);
    let mut errors = Vec::new();
    let mut streams: Vec<Stream> = Vec::new();
    for &id in &ids {
        let s = match TcpStream::connect_timeout(&addr, Duration::from_secs(10)) {
            Ok(s) => s,
            Err(e) => {
                errors.push(format!("stream {id}: connect: {e}"));
                continue;
            }
        };
        s.set_nonblocking(true).expect("set_nonblocking");
        let _ = s.set_nodelay(true);
        let now = Instant::now();
        streams.push(Stream {
            s,
            id,
            seq: 0,
            want: stream_message(id, 0),
            got: 0,
            sent: 0,
            next_at: now,
            last_progress: now,
            dead: false,
        });
        *opened.lock().unwrap() += 1;
    }
    let mut buf = vec![0u8; 4096];
    let mut stopping_since: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if stop.load(Ordering::SeqCst) && stopping_since.is_none() {
            stopping_since = Some(now);
        }
        // Stopping: streams finish the round trip in flight, then stop.
        let idle = |st: &Stream| st.dead || (st.sent == 0 && stopping_since.is_some());
        if streams.iter().all(idle) {
            break;
        }
        if stopping_since.is_some_and(|t| now - t > STUCK) {
            for st in streams.iter().filter(|st| !idle(st)) {
                errors.push(format!(
                    "stream {}: message {} unanswered at the end ({} of {} bytes back)",
                    st.id,
                    st.seq,
                    st.got,
                    st.want.len()
                ));
            }
            break;
        }
        for st in streams.iter_mut().filter(|st| !st.dead) {
            if st.sent == 0 && stopping_since.is_none() && now >= st.next_at {
                st.sent = st.want.len();
                if let Err(e) = (&st.s).write_all(&st.want) {
                    // A short non-blocking write would garble the stream: small
                    // messages into an empty socket buffer never are.
                    errors.push(format!("stream {}: write: {e}", st.id));
                    st.dead = true;
                    continue;
                }
                st.last_progress = now;
            }
            if st.sent == 0 {
                continue;
            }
            loop {
                match (&st.s).read(&mut buf) {
                    Ok(0) => {
                        errors.push(format!("stream {}: EOF at message {}", st.id, st.seq));
                        st.dead = true;
                        break;
                    }
                    Ok(n) => {
                        let end = st.got + n;
                        if end > st.want.len() || buf[..n] != st.want[st.got..end] {
                            errors.push(format!(
                                "stream {}: message {}: wrong echo {:?} at byte {}",
                                st.id,
                                st.seq,
                                String::from_utf8_lossy(&buf[..n]),
                                st.got
                            ));
                            st.dead = true;
                            break;
                        }
                        st.got = end;
                        st.last_progress = now;
                        if st.got == st.want.len() {
                            st.seq += 1;
                            st.want = stream_message(st.id, st.seq);
                            st.got = 0;
                            st.sent = 0;
                            st.next_at = now + pause;
                            total.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        let what = if is_reset(&e) { "reset" } else { "read error" };
                        errors.push(format!("stream {}: {what}: {e}", st.id));
                        st.dead = true;
                        break;
                    }
                }
            }
            if !st.dead && st.sent > 0 && now - st.last_progress > STUCK {
                errors.push(format!("stream {}: message {} stuck", st.id, st.seq));
                st.dead = true;
            }
        }
        // Wait for replies (or the next send time), bounded.
        let mut fds: Vec<PollFd<'_>> = streams
            .iter()
            .filter(|st| !st.dead && st.sent > 0)
            .map(|st| PollFd::new(st.s.as_fd(), PollFlags::POLLIN))
            .collect();
        let wait = streams
            .iter()
            .filter(|st| !st.dead && st.sent == 0)
            .map(|st| st.next_at.saturating_duration_since(now))
            .min()
            .unwrap_or(Duration::from_millis(50))
            .min(Duration::from_millis(50));
        let ms = u16::try_from(wait.as_millis()).unwrap_or(50);
        let _ = poll(&mut fds, PollTimeout::from(ms));
    }
    let done = streams.iter().map(|st| st.seq).collect::<Vec<_>>();
    // Streams that never connected count as zero round trips (their error says why).
    let mut all = vec![0; ids.len()];
    for (st, d) in streams.iter().zip(done) {
        all[st.id - first] = d;
    }
    (first, all, errors)
}

/// A threaded echo server on 127.0.0.1 (the proxy's real upstream): one thread per
/// connection, half-close passed on. Dropped: stops accepting (connections already
/// open finish on their own).
pub struct UpstreamEcho {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl UpstreamEcho {
    pub fn start() -> UpstreamEcho {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind upstream");
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let addr = listener.local_addr().expect("upstream addr");
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::spawn(move || {
            while !flag.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((s, _)) => {
                        std::thread::spawn(move || echo_until_eof(s));
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(10))
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        UpstreamEcho { addr, stop }
    }
}

impl Drop for UpstreamEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn echo_until_eof(s: TcpStream) {
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(Duration::from_secs(120)));
    let mut buf = vec![0u8; 64 << 10];
    let mut r = &s;
    loop {
        match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if (&s).write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
    let _ = s.shutdown(std::net::Shutdown::Write);
}

/// Byte `i` of session `s`'s stream: varies with the offset (not a short period), so
/// a lost, repeated or reordered chunk is caught.
pub fn pattern_byte(s: usize, i: u64) -> u8 {
    (i.wrapping_mul(31) ^ (i >> 12) ^ (s as u64 * 0x9e)) as u8
}

/// One proxied session pushing a pattern through an echo upstream and checking every
/// byte that comes back, until told to stop; then it half-closes and expects exactly
/// what it sent, then EOF.
pub struct Session {
    stop: Arc<AtomicBool>,
    pub received: Arc<AtomicU64>,
    writer: JoinHandle<Result<u64, String>>,
    reader: JoinHandle<Result<u64, String>>,
}

impl Session {
    /// `chunk` bytes every `every`.
    pub fn start(addr: SocketAddr, id: usize, chunk: usize, every: Duration) -> Session {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(10)).expect("connect");
        let _ = s.set_nodelay(true);
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let r = s.try_clone().expect("clone");
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let received = Arc::new(AtomicU64::new(0));
        let (flag, count) = (stop.clone(), sent.clone());
        let writer = std::thread::spawn(move || {
            let mut off = 0u64;
            let mut buf = vec![0u8; chunk];
            while !flag.load(Ordering::SeqCst) {
                for (k, b) in buf.iter_mut().enumerate() {
                    *b = pattern_byte(id, off + k as u64);
                }
                (&s).write_all(&buf)
                    .map_err(|e| format!("session {id}: write at {off}: {e}"))?;
                off += chunk as u64;
                count.store(off, Ordering::SeqCst);
                std::thread::sleep(every);
            }
            s.shutdown(std::net::Shutdown::Write)
                .map_err(|e| format!("session {id}: shutdown: {e}"))?;
            Ok(off)
        });
        let count = received.clone();
        let reader = std::thread::spawn(move || {
            let mut off = 0u64;
            let mut buf = vec![0u8; 64 << 10];
            loop {
                let n = match (&r).read(&mut buf) {
                    Ok(0) => return Ok(off),
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        let what = if is_reset(&e) { "reset" } else { "read error" };
                        return Err(format!("session {id}: {what} at byte {off}: {e}"));
                    }
                };
                for (k, &b) in buf[..n].iter().enumerate() {
                    let at = off + k as u64;
                    if b != pattern_byte(id, at) {
                        return Err(format!(
                            "session {id}: byte {at} is {b:#x}, expected {:#x}",
                            pattern_byte(id, at)
                        ));
                    }
                }
                off += n as u64;
                count.store(off, Ordering::SeqCst);
            }
        });
        Session {
            stop,
            received,
            writer,
            reader,
        }
    }

    /// Stops sending, half-closes, and waits for everything to come back: Ok(bytes
    /// each way), or what went wrong.
    pub fn finish(self) -> Result<u64, String> {
        self.stop.store(true, Ordering::SeqCst);
        let sent = self
            .writer
            .join()
            .map_err(|_| "writer panicked".to_string())??;
        let got = self
            .reader
            .join()
            .map_err(|_| "reader panicked".to_string())??;
        if got != sent {
            return Err(format!("sent {sent} bytes, {got} came back before EOF"));
        }
        Ok(sent)
    }
}

/// The kv example's binary, built once per test run.
pub fn kv_binary() -> std::path::PathBuf {
    super::example_bin("kv")
}

/// A corral running the kv example: `conf` plus a kv listener with `kv_lines`, after
/// the echo listener (the harness's readiness check), so it is `listen[1]`; `env` is
/// the master's. Returns the corral and the kv listener's address.
pub fn start_kv(conf: Conf, kv_lines: &str, env: &[(&str, &str)]) -> (Corral, SocketAddr) {
    let kv_port = free_port();
    let c = Corral::start_with(
        &conf.listen(kv_port, "kv", kv_lines).render(),
        Launch {
            binary: Some(kv_binary()),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Launch::default()
        },
    );
    (c, SocketAddr::from(([127, 0, 0, 1], kv_port)))
}

/// A line-protocol client (the kv example's): sends `cmd` and returns the reply line.
pub struct LineClient {
    pub s: TcpStream,
    r: io::BufReader<TcpStream>,
}

impl LineClient {
    pub fn connect(addr: SocketAddr) -> LineClient {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(10)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let r = io::BufReader::new(s.try_clone().expect("clone"));
        LineClient { s, r }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).expect("send");
    }

    /// The next reply line, or what happened instead.
    pub fn line(&mut self) -> Result<String, String> {
        use std::io::BufRead;
        let mut l = String::new();
        match self.r.read_line(&mut l) {
            Ok(0) => Err("EOF".into()),
            Ok(_) => Ok(l.trim_end().to_string()),
            Err(e) => Err(e.to_string()),
        }
    }

    pub fn ask(&mut self, cmd: &str) -> Result<String, String> {
        self.send(format!("{cmd}\n").as_bytes());
        self.line()
    }
}

/// A child process killed (and reaped) when dropped, by its pid.
pub struct Child(pub std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// True if `cmd` runs (`cmd --version` exits 0).
pub fn have(cmd: &str) -> bool {
    std::process::Command::new(cmd)
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The lines a child writes to stdout, as they come (a thread reads them).
pub fn stdout_lines(child: &mut std::process::Child) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let out = child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in io::BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}
