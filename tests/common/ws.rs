//! A WebSocket client for the black-box tests, written from RFC 6455 and independent
//! of `corral::websocket`: the opening handshake (RFC 6455 §1.3's key), masked
//! frames out, the server's unmasked frames in, over a plain or a TLS stream.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use super::connect;

/// How long a read waits before the test fails.
pub const WAIT: Duration = Duration::from_secs(30);

/// A WebSocket client written from RFC 6455, independent of `corral::websocket`,
/// over a plain or a TLS stream.
pub struct Ws<S: Read + Write = TcpStream> {
    s: S,
    buf: Vec<u8>,
}

pub fn tcp(addr: SocketAddr) -> TcpStream {
    let s = connect(addr, Duration::from_secs(10)).expect("connect");
    s.set_read_timeout(Some(WAIT)).unwrap();
    s
}

impl Ws {
    pub fn open_with(addr: SocketAddr, request: &str) -> (Ws, String) {
        Ws::over(tcp(addr), request)
    }

    pub fn open(addr: SocketAddr) -> Ws {
        Ws::checked(tcp(addr))
    }
}

impl<S: Read + Write> Ws<S> {
    /// Sends `request` (a handshake) over `s`; returns the client and the response
    /// head.
    pub fn over(s: S, request: &str) -> (Ws<S>, String) {
        let mut ws = Ws { s, buf: Vec::new() };
        ws.s.write_all(request.as_bytes()).unwrap();
        let head = loop {
            if let Some(end) = ws.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&ws.buf[..end]).to_string();
                ws.buf.drain(..end + 4);
                break head;
            }
            assert!(ws.fill(), "closed before a response: {:?}", ws.buf);
        };
        (ws, head)
    }

    /// The handshake over `s`, which must be accepted.
    pub fn checked(s: S) -> Ws<S> {
        let (ws, head) = Ws::over(s, &request("13"));
        assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
        // RFC 6455 §1.3's key and its accept value.
        assert!(
            head.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
            "{head}"
        );
        ws
    }

    /// Reads more; false at EOF.
    pub fn fill(&mut self) -> bool {
        let mut b = [0u8; 4096];
        match self.s.read(&mut b) {
            Ok(0) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&b[..n]);
                true
            }
            Err(e) => panic!("no frame within {WAIT:?}: {e}"),
        }
    }

    /// Sends one masked frame.
    pub fn send_frame(&mut self, first: u8, payload: &[u8], masked: bool) {
        let key = [0x12, 0x34, 0x56, 0x78];
        let mut f = vec![first];
        assert!(payload.len() < 126);
        f.push(payload.len() as u8 | if masked { 0x80 } else { 0 });
        if masked {
            f.extend_from_slice(&key);
            f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        } else {
            f.extend_from_slice(payload);
        }
        self.s.write_all(&f).unwrap();
    }

    pub fn send(&mut self, text: &str) {
        self.send_frame(0x81, text.as_bytes(), true);
    }

    /// The next frame: (opcode, payload); None at EOF.
    pub fn frame(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            if self.buf.len() >= 2 {
                assert_eq!(self.buf[1] & 0x80, 0, "a server's frames are unmasked");
                let (len, at) = match self.buf[1] & 0x7f {
                    126 if self.buf.len() >= 4 => {
                        (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
                    }
                    126 | 127 => (usize::MAX, 0),
                    n => (n as usize, 2),
                };
                if len != usize::MAX && self.buf.len() >= at + len {
                    let op = self.buf[0] & 0x0f;
                    assert_eq!(self.buf[0] & 0x80, 0x80, "one frame per message");
                    let payload = self.buf[at..at + len].to_vec();
                    self.buf.drain(..at + len);
                    return Some((op, payload));
                }
            }
            if !self.fill() {
                return None;
            }
        }
    }

    pub fn text(&mut self) -> String {
        match self.frame() {
            Some((1, p)) => String::from_utf8(p).expect("UTF-8 text"),
            other => panic!("expected a text message, got {other:?}"),
        }
    }

    /// Subscribes and waits until the subscription is in place (PING is answered
    /// after it).
    pub fn subscribe(&mut self, topic: &str) {
        self.send(&format!("SUB {topic}"));
        self.send("PING");
        assert_eq!(self.text(), "PONG");
    }
}

/// An opening handshake request for `version`, with RFC 6455 §1.3's key.
pub fn request(version: &str) -> String {
    format!(
        "GET /push HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: {version}\r\n\r\n"
    )
}
