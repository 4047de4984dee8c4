//! The opening handshake (RFC 6455 §4.2): checks that a request is a version-13
//! upgrade and answers it with `101 Switching Protocols` and the key's accept hash
//! (SHA-1 and base64, from aws-lc-rs and base64: no hand-written hashing).

use aws_lc_rs::digest;
use base64::Engine as _;

/// Longest request head accepted (a browser's is well under 2 KiB).
pub const MAX_HEAD: usize = 8 << 10;

/// The RFC's fixed GUID the accept hash is keyed with.
const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// What the start of a connection's input says.
#[derive(Debug, PartialEq, Eq)]
pub enum Handshake {
    /// The request head is not complete yet: read more.
    Incomplete,
    /// A valid upgrade request: answer with [`Upgrade::accept`] (or refuse it, after
    /// looking at its path or origin, with a [`Refusal`] of your own).
    Upgrade(Upgrade),
    /// Not a WebSocket upgrade: answer with [`Refusal::response`] and close.
    Refused(Refusal),
}

/// A valid upgrade request.
#[derive(Debug, PartialEq, Eq)]
pub struct Upgrade {
    /// The request target (`/news?x=1`).
    pub path: String,
    /// The `Origin` header, if any: a browser always sends it, so a service that
    /// must only be reached from its own pages checks it here.
    pub origin: Option<String>,
    /// Bytes of input the request took (frames may follow at once).
    pub used: usize,
    key: String,
}

impl Upgrade {
    /// The `101 Switching Protocols` answer; frames may be sent right after it.
    pub fn accept(&self) -> Vec<u8> {
        let hash = digest::digest(
            &digest::SHA1_FOR_LEGACY_USE_ONLY,
            format!("{}{GUID}", self.key).as_bytes(),
        );
        let accept = base64::engine::general_purpose::STANDARD.encode(hash.as_ref());
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {accept}\r\n\r\n"
        )
        .into_bytes()
    }
}

/// Why a request is not an upgrade this server takes, as an HTTP status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// `400`, `403`, `405`, `426` or `431`.
    pub status: u16,
    /// What was wrong, for the response body and the service's log.
    pub reason: &'static str,
}

impl Refusal {
    /// The refusal as a service might make one itself (e.g. 403 for a foreign origin).
    pub fn new(status: u16, reason: &'static str) -> Refusal {
        Refusal { status, reason }
    }

    /// The HTTP response, which closes the connection (426 names version 13).
    pub fn response(&self) -> Vec<u8> {
        let phrase = match self.status {
            403 => "Forbidden",
            405 => "Method Not Allowed",
            426 => "Upgrade Required",
            431 => "Request Header Fields Too Large",
            _ => "Bad Request",
        };
        let version = if self.status == 426 {
            "Sec-WebSocket-Version: 13\r\n"
        } else {
            ""
        };
        let body = format!("{}\n", self.reason);
        format!(
            "HTTP/1.1 {} {phrase}\r\n{version}Content-Type: text/plain\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            self.status,
            body.len()
        )
        .into_bytes()
    }
}

/// Looks at the start of a connection's input for an opening handshake.
pub fn handshake(data: &[u8]) -> Handshake {
    let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") else {
        return if data.len() > MAX_HEAD {
            Handshake::Refused(Refusal::new(431, "request head too long"))
        } else {
            Handshake::Incomplete
        };
    };
    if end + 4 > MAX_HEAD {
        return Handshake::Refused(Refusal::new(431, "request head too long"));
    }
    match parse(&data[..end + 4]) {
        Ok(mut up) => {
            up.used = end + 4;
            Handshake::Upgrade(up)
        }
        Err(r) => Handshake::Refused(r),
    }
}

fn parse(head: &[u8]) -> Result<Upgrade, Refusal> {
    let bad = |reason| Refusal::new(400, reason);
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(bad("incomplete request head")),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Refusal::new(431, "more than 64 header fields"))
        }
        Err(_) => return Err(bad("malformed request head")),
    }
    if req.method != Some("GET") {
        return Err(Refusal::new(405, "a WebSocket opens with GET"));
    }
    if req.version != Some(1) {
        return Err(bad("a WebSocket opens over HTTP/1.1"));
    }
    let path = req.path.unwrap_or("/").to_string();
    let one = |name: &str| -> Result<Option<&str>, Refusal> {
        let mut found = req
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name));
        let first = found.next();
        if found.next().is_some() {
            return Err(bad("a header field that must appear once appears twice"));
        }
        first
            .map(|h| std::str::from_utf8(h.value).map_err(|_| bad("a header value is not text")))
            .transpose()
    };
    let has_token =
        |v: &str, token: &str| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token));
    if one("host")?.is_none() {
        return Err(bad("no Host header"));
    }
    if !one("upgrade")?.is_some_and(|v| has_token(v, "websocket")) {
        return Err(bad("not a WebSocket upgrade (Upgrade: websocket)"));
    }
    let connection_upgrade = req
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
        .any(|h| std::str::from_utf8(h.value).is_ok_and(|v| has_token(v, "upgrade")));
    if !connection_upgrade {
        return Err(bad("not a WebSocket upgrade (Connection: Upgrade)"));
    }
    if one("sec-websocket-version")?.map(str::trim) != Some("13") {
        return Err(Refusal::new(426, "this server speaks WebSocket version 13"));
    }
    let key = one("sec-websocket-key")?
        .map(str::trim)
        .ok_or(bad("no Sec-WebSocket-Key"))?;
    match base64::engine::general_purpose::STANDARD.decode(key) {
        Ok(nonce) if nonce.len() == 16 => {}
        _ => return Err(bad("Sec-WebSocket-Key is not 16 bytes in base64")),
    }
    Ok(Upgrade {
        path,
        origin: one("origin")?.map(str::to_string),
        used: 0,
        key: key.to_string(),
    })
}
