//! One connection's TLS engine inside the worker's loop, driven by the socket's
//! readiness, with no thread and no async runtime. The loop asks it for plaintext
//! where it would `recv` and gives it plaintext where it would `send`; ciphertext
//! moves between the engine and the non-blocking socket here, and whatever the engine
//! still has to send counts as pending output, so the loop keeps write interest
//! exactly while it has some.
//!
//! The engine is rustls until the connection moves; a connection that arrived from
//! another worker continues on its record layer (`record.rs`). Either way the
//! ciphertext read from the socket waits in `cin` and is given to the engine one
//! whole record at a time, so that at any moment the bytes read and not yet opened
//! are exactly `cin`: what travels with a move.

use std::io::{self, Read, Write};
use std::os::fd::BorrowedFd;
use std::sync::Arc;

use rustls::ServerConnection;
use rustls::{ConnectionTrafficSecrets, HandshakeKind, ProtocolVersion, ServerConfig};

use crate::os::sockio;

use super::counts::{Failure, TlsCounts};
use super::info::TlsInfo;
use super::moved::{MovedDirection, TlsMoved, TLS_STATE_VERSION};
use super::record::{self, Direction, Opened, Suite};

/// The socket as rustls's byte sink.
struct Sock<'a>(BorrowedFd<'a>);

impl Write for Sock<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        sockio::send(self.0, buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Ciphertext the client sent that the engine has not taken yet.
#[derive(Default)]
struct Incoming {
    buf: Vec<u8>,
    pos: usize,
}

impl Incoming {
    fn unread(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    /// The length of the whole record waiting first, if there is one; Err for bytes
    /// that cannot start a record.
    fn whole_record(&self) -> Result<Option<usize>, record::Failure> {
        let rest = self.unread();
        match record::record_len(rest)? {
            Some(n) if n <= rest.len() => Ok(Some(n)),
            _ => Ok(None),
        }
    }

    fn consume(&mut self, n: usize) {
        self.pos += n;
        if self.pos == self.buf.len() {
            // Freed, not kept: an idle connection holds no buffer (a million of them
            // would otherwise each keep their largest read).
            self.buf = Vec::new();
            self.pos = 0;
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(bytes);
    }
}

/// A connection continued on its record layer after a move.
struct Continued {
    suite: Suite,
    tx: Direction,
    rx: Direction,
    /// Sealed records not yet sent: `out[out_pos..]`.
    out: Vec<u8>,
    out_pos: usize,
    /// Opened plaintext the loop has not taken yet.
    plain: Vec<u8>,
    /// The client's close_notify arrived.
    peer_closed: bool,
    /// Our close_notify is sealed.
    closing: bool,
}

enum Engine {
    Rustls(Box<ServerConnection>),
    Continued(Box<Continued>),
    /// The secrets left with a move; nothing is sent or read any more.
    Gone,
}

/// A TLS connection's engine and what the loop learned of it.
pub struct TlsSession {
    engine: Engine,
    cin: Incoming,
    /// The socket reached end of stream (FIN).
    eof: bool,
    /// Set once the handshake finished (and was counted).
    info: Option<Box<TlsInfo>>,
    /// A failure was counted; nothing more is read.
    failed: bool,
    /// The last read found the socket and the engine empty: nothing is in flight
    /// towards the service, a point where the connection may move.
    drained: bool,
    /// `compact_idle`: at such a point, trade rustls for the record layer alone.
    compact: bool,
}

/// Why a move of this connection cannot happen (now or ever).
#[derive(Debug, PartialEq, Eq)]
pub enum NotNow {
    /// Something is in flight; ask again after the next exchange.
    Busy,
    /// TLS 1.2, or an engine that failed: it stays here to the end.
    Never,
}

impl TlsSession {
    /// A session for a newly accepted client of a listener configured with `config`;
    /// `compact`: the listener's `compact_idle`.
    pub fn new(config: Arc<ServerConfig>, compact: bool) -> Result<TlsSession, rustls::Error> {
        let mut s = TlsSession::with(Engine::Rustls(Box::new(ServerConnection::new(config)?)));
        s.compact = compact;
        Ok(s)
    }

    fn with(engine: Engine) -> TlsSession {
        TlsSession {
            engine,
            cin: Incoming::default(),
            eof: false,
            info: None,
            failed: false,
            drained: false,
            compact: false,
        }
    }

    /// Why this binary cannot continue `m` (its format or suite is unknown, its keys
    /// do not fit the suite); None if it can.
    pub fn cannot_continue(m: &TlsMoved) -> Option<String> {
        if m.version != TLS_STATE_VERSION {
            return Some(format!(
                "TLS state version {} is not one this binary reads",
                m.version
            ));
        }
        match TlsSession::continued(m) {
            Some(_) => None,
            None => Some(format!(
                "TLS state with suite {:#06x} cannot be continued",
                m.suite
            )),
        }
    }

    /// A connection that moved here, continued from its record-layer state; None if
    /// the state is not one this binary can continue (the caller refuses the move).
    pub fn continued(m: &TlsMoved) -> Option<TlsSession> {
        if m.version != TLS_STATE_VERSION {
            return None;
        }
        let suite = Suite::from_iana(m.suite)?;
        let dir = |d: &MovedDirection| Direction::new(suite, d.key.bytes(), d.iv.bytes(), d.seq);
        let c = Continued {
            suite,
            tx: dir(&m.tx)?,
            rx: dir(&m.rx)?,
            out: Vec::new(),
            out_pos: 0,
            plain: Vec::new(),
            peer_closed: false,
            closing: false,
        };
        let mut s = TlsSession::with(Engine::Continued(Box::new(c)));
        s.cin.push(&m.pending);
        // Taken at a quiescent point, so it still is one: it may move on before it is
        // first read here (what arrived meanwhile waits in the socket, which moves
        // with it). Otherwise a second reload soon after would leave it behind.
        s.drained = true;
        s.info = Some(Box::new(m.info(suite)));
        Some(s)
    }

    /// Still in the handshake (the service has seen nothing yet).
    pub fn handshaking(&self) -> bool {
        self.info.is_none()
    }

    /// What the handshake settled, once it has.
    pub fn info(&self) -> Option<&TlsInfo> {
        self.info.as_deref()
    }

    /// Ciphertext is waiting to go out.
    pub fn wants_write(&self) -> bool {
        match &self.engine {
            Engine::Rustls(c) => c.wants_write(),
            Engine::Continued(c) => c.out_pos < c.out.len(),
            Engine::Gone => false,
        }
    }

    /// Reads plaintext into `buf`. `Ok(0)`: the client closed (close_notify, or FIN);
    /// `WouldBlock`: the socket has nothing more now. A protocol error sends the
    /// alert that says why, is counted, and is returned as `InvalidData`.
    pub fn recv(
        &mut self,
        fd: BorrowedFd<'_>,
        buf: &mut [u8],
        counts: &mut TlsCounts,
    ) -> io::Result<usize> {
        loop {
            if self.failed {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "TLS failed"));
            }
            let opened = match &mut self.engine {
                Engine::Rustls(_) => self.rustls_step(fd, buf, counts)?,
                Engine::Continued(_) => self.continued_step(fd, buf, counts)?,
                Engine::Gone => return Err(io::ErrorKind::NotConnected.into()),
            };
            if let Some(n) = opened {
                self.drained = false;
                return Ok(n);
            }
            if self.eof {
                return Ok(0);
            }
            // The engine needs more ciphertext.
            match sockio::recv(fd, buf) {
                Ok(0) => self.eof = true,
                Ok(n) => self.cin.push(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.drained = true;
                    if self.compact {
                        self.compact_now();
                    }
                    return Err(e);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// One step of a rustls engine: plaintext it holds, else the next whole record
    /// given to it. `Some(n)`: `n` plaintext bytes in `buf` (0 at the end); `None`:
    /// it needs more ciphertext.
    fn rustls_step(
        &mut self,
        fd: BorrowedFd<'_>,
        buf: &mut [u8],
        counts: &mut TlsCounts,
    ) -> io::Result<Option<usize>> {
        let Engine::Rustls(conn) = &mut self.engine else {
            return Ok(None);
        };
        loop {
            match conn.reader().read(buf) {
                Ok(n) => return Ok(Some(n)),
                // FIN without close_notify: most HTTP clients end so; an end all the
                // same (the service decides whether it owed anything).
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(Some(0)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            // Whole records only, so that what rustls holds is always opened. Bytes
            // that cannot start a record (not TLS at all) go to rustls as they are,
            // for its alert and its error.
            let take = match self.cin.whole_record() {
                Ok(Some(n)) => n,
                Ok(None) if self.eof && !self.cin.unread().is_empty() => self.cin.unread().len(),
                Ok(None) => return Ok(None),
                Err(_) => self.cin.unread().len(),
            };
            let mut chunk = &self.cin.unread()[..take];
            while !chunk.is_empty() {
                match conn.read_tls(&mut chunk) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) => return Err(e),
                }
            }
            let taken = take - chunk.len();
            self.cin.consume(taken);
            if self.eof && self.cin.unread().is_empty() {
                // Tell rustls the stream ended, so that its reader reports it.
                let _ = conn.read_tls(&mut io::empty());
            }
            if let Err(e) = conn.process_new_packets() {
                // rustls queued the alert that tells the client why: send it.
                let _ = write_all(conn, fd);
                self.failed = true;
                counts.failed(Failure::of(&e));
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
            if self.info.is_none() && !conn.is_handshaking() {
                self.info = Some(Box::new(established(conn, counts)));
            }
            // Handshake messages, tickets, alerts: out as soon as they exist.
            match write_all(conn, fd) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            if taken == 0 {
                return Ok(None);
            }
        }
    }

    /// One step of a continued engine: plaintext it holds, else the next whole
    /// record opened.
    fn continued_step(
        &mut self,
        fd: BorrowedFd<'_>,
        buf: &mut [u8],
        counts: &mut TlsCounts,
    ) -> io::Result<Option<usize>> {
        let Engine::Continued(c) = &mut self.engine else {
            return Ok(None);
        };
        loop {
            if !c.plain.is_empty() {
                let n = c.plain.len().min(buf.len());
                buf[..n].copy_from_slice(&c.plain[..n]);
                c.plain.drain(..n);
                return Ok(Some(n));
            }
            if c.peer_closed {
                return Ok(Some(0));
            }
            let len = match self.cin.whole_record() {
                Ok(Some(n)) => n,
                Ok(None) if self.eof => return Ok(Some(0)),
                Ok(None) => return Ok(None),
                Err(f) => return Err(end_continued(c, fd, f, counts, &mut self.failed)),
            };
            let start = self.cin.pos;
            let rec = &mut self.cin.buf[start..start + len];
            match record::open(&mut c.rx, rec) {
                Ok(Opened::Data(n)) => {
                    let k = n.min(buf.len());
                    buf[..k].copy_from_slice(&rec[..k]);
                    c.plain.extend_from_slice(&rec[k..n]);
                    self.cin.consume(len);
                    if k > 0 {
                        return Ok(Some(k));
                    }
                }
                Ok(Opened::CloseNotify) => {
                    self.cin.consume(len);
                    c.peer_closed = true;
                }
                Err(f) => return Err(end_continued(c, fd, f, counts, &mut self.failed)),
            }
        }
    }

    /// Takes as much of `plain` as the engine will buffer, then sends what it can;
    /// returns the plaintext bytes taken (0 with `WouldBlock` when it took none).
    pub fn send(&mut self, fd: BorrowedFd<'_>, plain: &[u8]) -> io::Result<usize> {
        let taken = match &mut self.engine {
            Engine::Rustls(conn) => conn.writer().write(plain)?,
            Engine::Continued(c) => {
                // At most 64 KiB sealed and unsent: the loop's water marks hold the
                // rest in the connection's own buffer.
                let room = (64usize << 10).saturating_sub(c.out.len() - c.out_pos);
                let mut taken = 0;
                for chunk in plain[..plain.len().min(room)].chunks(record::MAX_PLAINTEXT) {
                    record::seal(&mut c.tx, record::APPLICATION_DATA, chunk, &mut c.out)
                        .map_err(|f| io::Error::other(format!("{f:?}")))?;
                    taken += chunk.len();
                }
                taken
            }
            Engine::Gone => return Err(io::ErrorKind::NotConnected.into()),
        };
        match self.write_tls(fd) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
        if taken == 0 && !plain.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(taken)
    }

    /// Sends ciphertext until the engine has none left (`Ok`) or the socket is full
    /// (`WouldBlock`).
    pub fn write_tls(&mut self, fd: BorrowedFd<'_>) -> io::Result<()> {
        match &mut self.engine {
            Engine::Rustls(conn) => write_all(conn, fd),
            Engine::Continued(c) => c.flush(fd),
            Engine::Gone => Ok(()),
        }
    }

    /// Tells the client this side is done (close_notify), best effort: the socket is
    /// about to be shut or closed.
    pub fn close_notify(&mut self, fd: BorrowedFd<'_>) {
        let ok = self.info.is_some() && !self.failed;
        match &mut self.engine {
            Engine::Rustls(conn) => {
                if ok {
                    conn.send_close_notify();
                }
            }
            Engine::Continued(c) => {
                if ok && !c.closing {
                    c.closing = true;
                    let _ = record::seal_alert(&mut c.tx, record::CLOSE_NOTIFY, &mut c.out);
                }
            }
            Engine::Gone => {}
        }
        let _ = self.write_tls(fd);
    }

    /// Whether the connection could move now (see [`NotNow`]).
    pub fn movable(&self) -> Result<(), NotNow> {
        if self.failed || self.eof {
            return Err(NotNow::Never);
        }
        if self.info.is_none() {
            return Err(NotNow::Busy);
        }
        let quiet =
            self.drained && !self.wants_write() && matches!(self.cin.whole_record(), Ok(None));
        match &self.engine {
            // TLS 1.2 stays: see docs/architecture.md, "TLS connections move".
            Engine::Rustls(c) if c.protocol_version() != Some(ProtocolVersion::TLSv1_3) => {
                Err(NotNow::Never)
            }
            Engine::Gone => Err(NotNow::Never),
            Engine::Continued(c) if !c.plain.is_empty() || c.peer_closed || c.closing => {
                Err(NotNow::Busy)
            }
            _ if quiet => Ok(()),
            _ => Err(NotNow::Busy),
        }
    }

    /// `compact_idle`: at a quiet point, the rustls engine (about 6 KB with its read
    /// buffer) makes way for the record layer it would hand to another worker, here.
    fn compact_now(&mut self) {
        if !matches!(self.engine, Engine::Rustls(_)) || self.movable().is_err() {
            return;
        }
        let Some(m) = self.suspend() else {
            return;
        };
        match TlsSession::continued(&m) {
            Some(c) => {
                self.engine = c.engine;
                self.cin = c.cin;
            }
            None => self.failed = true,
        }
    }

    /// Takes the record-layer state out for a move (after [`movable`] said yes); the
    /// engine is spent afterwards. None if rustls would not give its secrets (the
    /// connection then stays here, and is never asked again).
    pub fn suspend(&mut self) -> Option<Box<TlsMoved>> {
        self.movable().ok()?;
        let engine = std::mem::replace(&mut self.engine, Engine::Gone);
        let (suite, tx, rx) = match engine {
            Engine::Rustls(conn) => {
                let suite = conn.negotiated_cipher_suite().map(|s| s.suite());
                let secrets = match conn.dangerous_extract_secrets() {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!("cannot take a TLS connection's secrets for a move: {e}");
                        self.failed = true;
                        return None;
                    }
                };
                let suite = Suite::from_iana(u16::from(suite?))?;
                let tx = direction(suite, secrets.tx)?;
                let rx = direction(suite, secrets.rx)?;
                (suite, tx, rx)
            }
            Engine::Continued(c) => (c.suite, c.tx, c.rx),
            Engine::Gone => return None,
        };
        let info = self.info.as_deref();
        Some(Box::new(TlsMoved {
            version: TLS_STATE_VERSION,
            suite: suite.iana(),
            tx: TlsMoved::direction(&tx),
            rx: TlsMoved::direction(&rx),
            pending: self.cin.unread().to_vec(),
            sni: info.and_then(|i| i.sni.clone()),
            alpn: info
                .and_then(|i| i.alpn.as_ref())
                .map(|a| String::from_utf8_lossy(a).into_owned()),
            resumed: info.is_some_and(|i| i.resumed),
            peer_certificate: info.and_then(|i| i.peer_certificate.clone()),
        }))
    }
}

impl Continued {
    fn flush(&mut self, fd: BorrowedFd<'_>) -> io::Result<()> {
        while self.out_pos < self.out.len() {
            self.out_pos += sockio::send(fd, &self.out[self.out_pos..])?;
        }
        self.out.clear();
        self.out_pos = 0;
        Ok(())
    }
}

/// A continued connection that cannot go on: the alert that says why (or
/// close_notify), counted, and the error that closes it.
fn end_continued(
    c: &mut Continued,
    fd: BorrowedFd<'_>,
    f: record::Failure,
    counts: &mut TlsCounts,
    failed: &mut bool,
) -> io::Error {
    if let Some(alert) = f.alert() {
        if record::seal_alert(&mut c.tx, alert, &mut c.out).is_ok() {
            c.closing = true;
            let _ = c.flush(fd);
        }
    }
    *failed = true;
    counts.failed(match f {
        record::Failure::Handshake => Failure::MovedHandshake,
        record::Failure::BadRecordMac | record::Failure::Malformed => Failure::MovedBadRecord,
        record::Failure::Alert(_) => Failure::MovedAlert,
        record::Failure::SequenceExhausted => Failure::Other,
    });
    let why = match f {
        record::Failure::Alert(a) => format!("the client sent alert {a}"),
        record::Failure::Handshake => {
            "a handshake message (KeyUpdate) after the move; closed with close_notify".into()
        }
        other => format!(
            "{other:?}; sent {}",
            other.alert().map_or("nothing", record::alert_name)
        ),
    };
    io::Error::new(io::ErrorKind::InvalidData, why)
}

fn direction(suite: Suite, (seq, s): (u64, ConnectionTrafficSecrets)) -> Option<Direction> {
    let (key, iv) = match &s {
        ConnectionTrafficSecrets::Aes128Gcm { key, iv }
        | ConnectionTrafficSecrets::Aes256Gcm { key, iv }
        | ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => (key, iv),
        _ => return None,
    };
    Direction::new(suite, key.as_ref(), iv.as_ref(), seq)
}

/// Sends what rustls has until it has nothing or the socket is full.
fn write_all(conn: &mut ServerConnection, fd: BorrowedFd<'_>) -> io::Result<()> {
    while conn.wants_write() {
        conn.write_tls(&mut Sock(fd))?;
    }
    Ok(())
}

/// The handshake just finished: what it settled, counted.
fn established(c: &ServerConnection, counts: &mut TlsCounts) -> TlsInfo {
    let version = match c.protocol_version() {
        Some(ProtocolVersion::TLSv1_3) => "TLSv1.3",
        Some(ProtocolVersion::TLSv1_2) => "TLSv1.2",
        _ => "TLS",
    };
    let resumed = c.handshake_kind() == Some(HandshakeKind::Resumed);
    counts.established(version == "TLSv1.3", resumed);
    TlsInfo {
        sni: c.server_name().map(str::to_string),
        alpn: c.alpn_protocol().map(<[u8]>::to_vec),
        version,
        cipher: c
            .negotiated_cipher_suite()
            .and_then(|s| s.suite().as_str())
            .unwrap_or("unknown"),
        resumed,
        peer_certificate: c
            .peer_certificates()
            .and_then(|p| p.first())
            .map(|d| d.as_ref().to_vec()),
    }
}
