//! One connection's TLS engine inside the worker's loop: a `rustls::ServerConnection`
//! driven by the socket's readiness, with no thread and no async runtime. The loop
//! asks it for plaintext where it would `recv` and gives it plaintext where it would
//! `send`; ciphertext moves between rustls and the non-blocking socket here, and
//! whatever rustls still has to send counts as pending output, so the loop keeps
//! write interest exactly while it has some.

use std::io::{self, Read, Write};
use std::os::fd::BorrowedFd;
use std::sync::Arc;

use rustls::{HandshakeKind, ProtocolVersion, ServerConfig, ServerConnection};

use crate::os::sockio;

use super::counts::{Failure, TlsCounts};
use super::info::TlsInfo;

/// The socket as rustls's byte source and sink.
struct Sock<'a>(BorrowedFd<'a>);

impl Read for Sock<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        sockio::recv(self.0, buf)
    }
}

impl Write for Sock<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        sockio::send(self.0, buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A TLS connection's engine and what the loop learned of it.
pub struct TlsSession {
    conn: ServerConnection,
    /// The socket reached end of stream (FIN): what rustls holds is all there is.
    eof: bool,
    /// Set once the handshake finished (and was counted).
    info: Option<Box<TlsInfo>>,
    /// The handshake failed or a record was refused: counted once.
    failed: bool,
}

impl TlsSession {
    /// A session for a newly accepted client of a listener configured with `config`.
    pub fn new(config: Arc<ServerConfig>) -> Result<TlsSession, rustls::Error> {
        Ok(TlsSession {
            conn: ServerConnection::new(config)?,
            eof: false,
            info: None,
            failed: false,
        })
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
        self.conn.wants_write()
    }

    /// Reads plaintext into `buf`. `Ok(0)`: the client closed (close_notify, or FIN);
    /// `WouldBlock`: the socket has nothing more now. A protocol error sends rustls's
    /// alert, is counted, and is returned as `InvalidData`.
    pub fn recv(
        &mut self,
        fd: BorrowedFd<'_>,
        buf: &mut [u8],
        counts: &mut TlsCounts,
    ) -> io::Result<usize> {
        loop {
            match self.conn.reader().read(buf) {
                Ok(n) => return Ok(n),
                // FIN without close_notify: most HTTP clients end so; an end all the
                // same (the service decides whether it owed anything).
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            if self.eof {
                return Ok(0);
            }
            match self.conn.read_tls(&mut Sock(fd)) {
                Ok(0) => self.eof = true,
                Ok(_) => {}
                Err(e) => return Err(e),
            }
            if let Err(e) = self.conn.process_new_packets() {
                // rustls queued the alert that tells the client why: send it.
                let _ = self.write_tls(fd);
                if !self.failed {
                    self.failed = true;
                    counts.failed(Failure::of(&e, self.handshaking()));
                }
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
            if self.info.is_none() && !self.conn.is_handshaking() {
                self.established(counts);
            }
            // Handshake messages, tickets, alerts: out as soon as they exist.
            match self.write_tls(fd) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Takes as much of `plain` as rustls will buffer, then sends what it can;
    /// returns the plaintext bytes taken (0 with `WouldBlock` when it took none).
    pub fn send(&mut self, fd: BorrowedFd<'_>, plain: &[u8]) -> io::Result<usize> {
        let taken = self.conn.writer().write(plain)?;
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

    /// Sends ciphertext until rustls has none left (`Ok`) or the socket is full
    /// (`WouldBlock`).
    pub fn write_tls(&mut self, fd: BorrowedFd<'_>) -> io::Result<()> {
        while self.conn.wants_write() {
            self.conn.write_tls(&mut Sock(fd))?;
        }
        Ok(())
    }

    /// Tells the client this side is done (close_notify), best effort: the socket is
    /// about to be shut or closed.
    pub fn close_notify(&mut self, fd: BorrowedFd<'_>) {
        if self.info.is_some() && !self.failed {
            self.conn.send_close_notify();
        }
        let _ = self.write_tls(fd);
    }

    /// The handshake just finished: what it settled, counted.
    fn established(&mut self, counts: &mut TlsCounts) {
        let c = &self.conn;
        let version = match c.protocol_version() {
            Some(ProtocolVersion::TLSv1_3) => "TLSv1.3",
            Some(ProtocolVersion::TLSv1_2) => "TLSv1.2",
            _ => "TLS",
        };
        let resumed = c.handshake_kind() == Some(HandshakeKind::Resumed);
        counts.established(version == "TLSv1.3", resumed);
        self.info = Some(Box::new(TlsInfo {
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
        }));
    }
}
