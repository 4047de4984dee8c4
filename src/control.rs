//! The control socket: a Unix socket (mode 0600) next to the pid file through which
//! `corral -s …` and `corral status` talk to the master and get an answer. This module
//! is the protocol (requests, responses, the client and the listening end), below both
//! the CLI and the master; the master's handling of clients is `master::control_clients`.
//!
//! The protocol is one JSON request line and one JSON response line. A request that
//! starts something long (a reload) is answered when it has finished, so the caller
//! learns whether it worked — the thing `nginx -s reload` never tells you.

use crate::os::posix::{PermissionsExt, UnixListener, UnixStream};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::fault::kind::{FaultOutcome, FaultRequest};
use crate::os::cred;

/// One worker's line in `corral status`.
#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct WorkerStatus {
    pub pid: i32,
    pub slot: usize,
    pub generation: u64,
    pub state: String,
    pub uptime_secs: f64,
    pub connections: u64,
    pub accepted: u64,
    /// Connections taken over from another worker or the old master.
    #[serde(default)]
    pub adopted: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub rss: u64,
    pub restarts: u64,
    pub last_exit: Option<String>,
    /// Log lines the worker dropped because its log writer could not keep up.
    #[serde(default)]
    pub log_dropped: u64,
    /// `accept_proxy` connections closed for a bad, missing or late PROXY header.
    #[serde(default)]
    pub proxy_header_failed: u64,
    /// TLS handshakes (full, resumed, by version) and failures by reason.
    #[serde(default)]
    pub tls: crate::tls::TlsCounts,
    /// Push: deliveries, and what was dropped and why.
    #[serde(default)]
    pub push: crate::channel::PushCounts,
}

/// One generation, as `corral status --json` shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenerationStatus {
    pub generation: u64,
    /// "serving", "draining" or "gone".
    pub state: String,
    /// Live workers.
    pub workers: usize,
    /// Connections handed to a newer generation or to the new master of an upgrade.
    pub moved: u64,
    /// Connections it kept (nobody could take them), served until they end.
    pub kept: u64,
    /// Connections closed without a move (drain deadline, cut short, nowhere to go).
    pub closed: u64,
    /// From the drain order to its last worker's exit; None while not gone.
    pub exit_ms: Option<u64>,
}

/// What a client asks for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Request {
    Reload,
    Quit,
    Stop,
    Reopen,
    Status,
    Upgrade,
    /// `corral status --prometheus`: the metrics text, in `Response::message`.
    Prometheus,
    /// `corral fault`: make a worker fail and report how the master coped.
    Fault(FaultRequest),
    /// `corral publish`: a message to every subscriber of `topic` in every worker.
    Publish {
        topic: String,
        message: String,
    },
}

/// The master's answer.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    pub message: String,
    pub master_pid: i32,
    pub generation: u64,
    #[serde(default)]
    pub workers: Vec<WorkerStatus>,
    /// The measured outcome of a `corral fault` request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<FaultOutcome>,
    /// Per generation: live workers, and what became of its connections once it
    /// drained (moved, kept, closed) and how long it took to be gone.
    #[serde(default)]
    pub generations: Vec<GenerationStatus>,
    /// Connections adopted from the old master of the upgrade that started us.
    #[serde(default)]
    pub moved_from_old_master: u64,
    /// Every TLS certificate the current config loaded, with its expiry.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certificates: Vec<CertificateStatus>,
}

/// One loaded TLS certificate in `corral status`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CertificateStatus {
    /// The listener's address.
    pub listen: String,
    pub file: String,
    pub subject: String,
    /// The DNS names it serves (subjectAltName).
    pub names: Vec<String>,
    /// notAfter, as a Unix time, and as a date (UTC).
    pub not_after: i64,
    pub expires: String,
    /// Whole days until it expires (negative once it has).
    pub days_left: i64,
}

/// Why talking to the master failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot create control socket {path}: {source}")]
    Bind { path: PathBuf, source: io::Error },
    #[error("cannot connect to control socket {path}: {source}")]
    Connect { path: PathBuf, source: io::Error },
    #[error("control socket {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("control socket {path}: malformed answer: {source}")]
    Malformed {
        path: PathBuf,
        source: serde_json::Error,
    },
    /// The server is not root's or ours: it may be anyone faking the master's answers.
    #[error("control socket {path} is served by pid {pid} of uid {uid}, neither root nor us (uid {me}); not trusting its answer")]
    Untrusted {
        path: PathBuf,
        pid: i32,
        uid: u32,
        me: u32,
    },
    /// The request went out but no answer came in time: the master is alive (it
    /// holds the socket) but busy or stuck, and may still carry the request out.
    #[error("the master (pid {pid}) took the request on {path} but did not answer within {waited:?}: it is running but busy (or stuck); the request may still be carried out, see `corral status`")]
    NoAnswer {
        path: PathBuf,
        pid: i32,
        waited: Duration,
    },
    /// The server is not the master the pid file names.
    #[error("control socket {path} is served by pid {pid}, not by the master the pid file names ({expected}); not trusting its answer")]
    WrongMaster {
        path: PathBuf,
        pid: i32,
        expected: String,
    },
}

/// Longest request line accepted; anything longer is not a corral client.
const MAX_REQUEST: usize = 4096;
/// How long a client may take to send its request (and to read its answer).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// One connected client.
pub struct Client {
    stream: UnixStream,
    inbuf: Vec<u8>,
    out: Vec<u8>,
    /// A request has been read; the client waits for its answer.
    pub request: Option<Request>,
    /// The answer is queued; close once sent.
    answered: bool,
    /// The client shut down its sending side (or closed): nothing more to read.
    read_closed: bool,
    connected_at: std::time::Instant,
    /// The client's uid (SO_PEERCRED), for the log of what it asked.
    pub uid: u32,
}

impl Client {
    /// A freshly accepted client (its stream already non-blocking) of `uid`.
    pub(super) fn new(stream: UnixStream, uid: u32) -> Client {
        Client {
            stream,
            inbuf: Vec::new(),
            out: Vec::new(),
            request: None,
            answered: false,
            read_closed: false,
            connected_at: std::time::Instant::now(),
            uid,
        }
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.stream.as_fd()
    }

    pub fn wants_write(&self) -> bool {
        !self.out.is_empty()
    }

    /// Reads what is available; returns a newly complete request, or Err when the
    /// client is gone or misbehaving.
    ///
    /// A client may half-close right after its request (`socat` does): end of input
    /// ends the request even without its newline, and the client stays to hear the
    /// answer.
    pub fn read(&mut self) -> io::Result<Option<Request>> {
        let mut buf = [0u8; 1024];
        while !self.read_closed {
            match self.stream.read(&mut buf) {
                Ok(0) => self.read_closed = true,
                Ok(n) => {
                    self.inbuf.extend_from_slice(&buf[..n]);
                    if self.inbuf.len() > MAX_REQUEST {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "request too long",
                        ));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        if self.request.is_some() {
            return Ok(None);
        }
        let req = parse_request(&self.inbuf, self.read_closed)?;
        self.request.clone_from(&req);
        Ok(req)
    }

    /// Whether there is anything left to read: a half-closed client is polled only
    /// for its hang-up, or poll would report its end of input forever.
    pub fn wants_read(&self) -> bool {
        !self.read_closed
    }

    /// Connected but has not sent a (whole) request yet.
    pub fn silent(&self) -> bool {
        self.request.is_none()
    }

    /// Sent a request that has not been answered yet.
    pub fn waiting(&self) -> bool {
        self.request.is_some() && !self.answered
    }

    /// Queues the answer.
    pub fn answer(&mut self, resp: &Response) {
        let mut line = serde_json::to_vec(resp).unwrap_or_else(|_| b"{}".to_vec());
        line.push(b'\n');
        self.out = line;
        self.answered = true;
    }

    /// Answers and closes at once, without waiting for the answer to be read (a
    /// client turned away under pressure must not hold an fd).
    pub fn reject(mut self, resp: &Response) {
        self.answer(resp);
        let _ = self.flush();
    }

    /// A client that connected and never sent a request within `REQUEST_TIMEOUT`
    /// (or never read its answer within it) is dropped, so a stuck local process
    /// cannot pile up fds in the master.
    pub fn stale(&self, now: std::time::Instant) -> bool {
        let waited = now.saturating_duration_since(self.connected_at);
        (self.request.is_none() || self.answered) && waited > REQUEST_TIMEOUT
    }

    /// Writes what the socket takes; true when the client is finished with.
    pub fn flush(&mut self) -> bool {
        while !self.out.is_empty() {
            match self.stream.write(&self.out) {
                Ok(n) => {
                    self.out.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return true,
            }
        }
        self.answered
    }
}

/// What one round of `Server::accept` got.
#[derive(Default)]
pub struct Accepted {
    pub clients: Vec<Client>,
    /// Accepting failed for lack of fds or memory.
    pub exhausted: Option<io::Error>,
}

/// Out of fds or kernel memory: retrying at once would fail the same way.
fn is_exhaustion(e: &io::Error) -> bool {
    crate::os::master::is_exhaustion(e)
}

/// The listening control socket.
pub struct Server {
    listener: UnixListener,
    path: PathBuf,
}

impl Server {
    /// Binds the socket, replacing a stale one, with mode 0600: only its owner (and
    /// root) may reload or stop the service. With `takeover` (a new master started by
    /// an upgrade, or an old one taking its socket back on rollback) a live socket at
    /// the path is replaced too; the old master keeps serving its own clients.
    pub fn bind(path: &Path, takeover: bool) -> Result<Server, ControlError> {
        let err = |source| ControlError::Bind {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            crate::os::cred::check_runtime_dir(&std::path::absolute(dir).map_err(err)?)
                .map_err(|e| err(io::Error::other(e)))?;
        }
        if path.exists() {
            if !takeover && UnixStream::connect(path).is_ok() {
                return Err(err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    "another corral master is answering on it",
                )));
            }
            std::fs::remove_file(path).map_err(err)?;
        }
        // Bound under umask 0177 so the socket is never connectable by others, not even
        // between bind and chmod.
        let listener =
            crate::os::files::with_umask(0o177, || UnixListener::bind(path)).map_err(err)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
        listener.set_nonblocking(true).map_err(err)?;
        Ok(Server {
            listener,
            path: path.to_path_buf(),
        })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.listener.as_fd()
    }

    /// Accepts waiting clients, at most `max` of them. `exhausted` holds the error
    /// when the process (EMFILE) or the system (ENFILE) ran out of fds, or the
    /// kernel out of memory: the caller should stop accepting for a while instead of
    /// polling a socket it cannot accept from. Only root and our own uid may command
    /// the master (the socket's mode says so too; this holds even if someone
    /// loosened it).
    pub fn accept(&self, max: usize) -> Accepted {
        let mut out = Accepted::default();
        while out.clients.len() < max {
            let (stream, _) = match self.listener.accept() {
                Ok(s) => s,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    if is_exhaustion(&e) {
                        out.exhausted = Some(e);
                    }
                    break;
                }
            };
            let uid = match cred::peer(&stream) {
                Ok(p) if cred::trusted_uid(p.uid) => p.uid,
                Ok(p) => {
                    tracing::warn!(
                        uid = p.uid,
                        pid = p.pid,
                        "control socket: refusing a client of uid {} (only root and uid {} may control this master)",
                        p.uid,
                        cred::euid()
                    );
                    continue;
                }
                Err(e) => {
                    tracing::warn!("control socket: {e}; dropping the client");
                    continue;
                }
            };
            if stream.set_nonblocking(true).is_ok() {
                out.clients.push(Client::new(stream, uid));
            }
        }
        out
    }

    /// Removes the socket file (at exit).
    pub fn remove(&self) {
        let _ = std::fs::remove_file(&self.path);
    }

    /// Stops listening but leaves the path alone: another master owns it now.
    pub fn forget(self) {
        drop(self.listener);
    }
}

/// The request in what a client sent so far: its first line, or everything when the
/// client half-closed without a newline; None while the line is incomplete.
pub(crate) fn parse_request(inbuf: &[u8], read_closed: bool) -> io::Result<Option<Request>> {
    let line = match inbuf.iter().position(|&b| b == b'\n') {
        Some(end) => &inbuf[..end],
        None if read_closed && !inbuf.trim_ascii().is_empty() => inbuf,
        None if read_closed => return Err(io::ErrorKind::UnexpectedEof.into()),
        None => return Ok(None),
    };
    serde_json::from_slice(line)
        .map(Some)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// The line a client sends for `req`, newline included.
pub(crate) fn request_line(req: &Request) -> io::Result<Vec<u8>> {
    let mut line = serde_json::to_vec(req).map_err(io::Error::other)?;
    line.push(b'\n');
    Ok(line)
}

/// Client side: sends one request and waits up to `timeout` for the answer, only to a
/// server run by root or our uid and, when `masters` is not empty, only to one of
/// those pids (the masters the pid file proves).
pub fn request_from(
    path: &Path,
    req: Request,
    timeout: Duration,
    masters: &[i32],
) -> Result<Response, ControlError> {
    let io_err = |source| ControlError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut stream = UnixStream::connect(path).map_err(|source| ControlError::Connect {
        path: path.to_path_buf(),
        source,
    })?;
    // SO_PEERCRED on our end names whoever called listen() on the server's socket.
    let server = cred::peer(&stream).map_err(|e| io_err(e.io()))?;
    if !cred::trusted_uid(server.uid) {
        return Err(ControlError::Untrusted {
            path: path.to_path_buf(),
            pid: server.pid,
            uid: server.uid,
            me: cred::euid(),
        });
    }
    if !masters.is_empty() && !masters.contains(&server.pid) {
        let expected = masters.iter().map(|p| p.to_string()).collect::<Vec<_>>();
        return Err(ControlError::WrongMaster {
            path: path.to_path_buf(),
            pid: server.pid,
            expected: expected.join(" or "),
        });
    }
    stream.set_read_timeout(Some(timeout)).map_err(io_err)?;
    stream.set_write_timeout(Some(timeout)).map_err(io_err)?;
    let line = request_line(&req).map_err(io_err)?;
    stream.write_all(&line).map_err(io_err)?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).map_err(|source| {
        if matches!(
            source.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ) {
            ControlError::NoAnswer {
                path: path.to_path_buf(),
                pid: server.pid,
                waited: timeout,
            }
        } else {
            io_err(source)
        }
    })?;
    serde_json::from_slice(&answer).map_err(|source| ControlError::Malformed {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(stream: UnixStream) -> Client {
        stream.set_nonblocking(true).unwrap();
        Client::new(stream, 0)
    }

    #[test]
    fn a_half_closed_request_is_read_and_answered() {
        for req in [&b"\"reload\"\n"[..], &b"\"reload\""[..]] {
            let (mut peer, ours) = UnixStream::pair().unwrap();
            let mut c = client(ours);
            peer.write_all(req).unwrap();
            peer.shutdown(std::net::Shutdown::Write).unwrap();
            assert_eq!(c.read().unwrap(), Some(Request::Reload));
            assert!(!c.wants_read(), "end of input seen");
            assert!(c.waiting());
            c.answer(&Response {
                ok: true,
                message: "done".into(),
                ..Default::default()
            });
            assert!(c.flush());
            drop(c);
            let mut got = String::new();
            peer.read_to_string(&mut got).unwrap_or_default();
            assert!(got.contains("\"done\""), "{got}");
        }
    }

    #[test]
    fn end_of_input_without_a_request_is_an_error() {
        let (peer, ours) = UnixStream::pair().unwrap();
        let mut c = client(ours);
        peer.shutdown(std::net::Shutdown::Write).unwrap();
        assert!(c.read().is_err());
        let (mut peer, ours) = UnixStream::pair().unwrap();
        let mut c = client(ours);
        peer.write_all(b"\"rel").unwrap();
        assert_eq!(c.read().unwrap(), None, "partial request: wait for more");
        assert!(c.silent());
    }
}
