//! `http`: a minimal HTTP/1.1 origin that answers every request with one configured
//! response. It exists for health checks and for benchmarking the worker loop against
//! nginx's `return 200` under wrk, so the per-request path is kept to "find the end of
//! the head, check a few headers, copy precomputed bytes": every response a listener
//! can give is built once in [`Http::new`], and a request costs no allocation.
//!
//! What it does speak: keep-alive (HTTP/1.1 by default, HTTP/1.0 on request),
//! pipelining, `HEAD`, `Connection: close`, request bodies framed by `Content-Length`
//! or `Transfer-Encoding: chunked` (read and thrown away as they stream in, never
//! buffered whole; above `max_body_size`, 413), `Expect: 100-continue`.
//!
//! What it refuses, with an error response and a close (RFC 9112, strictly):
//! malformed request lines and headers (whitespace before a colon, obs-fold, bare CR,
//! controls), request targets that fit none of the forms, versions other than 1.0 and
//! 1.1, an HTTP/1.1 request without `Host` or any request with two, bad or conflicting
//! `Content-Length`, more than a few empty lines before a request, and any body whose
//! end cannot be trusted: `Transfer-Encoding` whose last coding is not `chunked`, that
//! names `chunked` twice, comes with `Content-Length` or on HTTP/1.0, or chunked
//! framing that breaks the grammar (400); `CONNECT` (501: it is no proxy); heads or
//! trailers above `max_header_size` (431); heads that do not complete within
//! `header_timeout` (408, against slowloris clients; the time the worker itself stops
//! reading a pipelining client that does not read its responses does not count).
//! Idle keep-alive connections are the worker's business (`[worker] idle_timeout`, and
//! hand-over to the next generation on reload); a draining worker makes its next
//! response `Connection: close`.

use std::cell::{Cell, RefCell};
use std::net::IpAddr;
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{Handler, Io, Service};
use crate::config::ListenConfig;

mod chunked;
pub mod options;
use chunked::{ChunkError, Decoder, Step};

/// Body of every response unless `body` is configured. Non-empty, so a health check
/// that looks for content finds some.
pub const DEFAULT_BODY: &str = "ok\n";
/// How long a request head may take to arrive, unless `header_timeout` is configured.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head, unless `max_header_size` is configured (nginx's
/// `large_client_header_buffers` is 8k too).
pub const DEFAULT_MAX_HEADER_SIZE: usize = 8 << 10;
/// After an error response (or `Connection: close`), how long the connection keeps
/// reading and discarding before it really closes. Closing a socket that still has
/// unread input makes the kernel send RST, which can destroy the response before the
/// client has read it; so we send FIN first, drain, and close when the client does —
/// or after this long (nginx's "lingering close").
const LINGER: Duration = Duration::from_secs(2);

/// Line-end bytes tolerated before a request line (RFC 9112 §2.2 asks to ignore at
/// least one empty line, e.g. the CRLF some clients send after a POST body). The
/// first empty line is free; more start the header timer as a request would (so a
/// client trickling `\r\n` cannot keep a connection open past `header_timeout`,
/// nor reset the idle timeout with them); more than this many bytes get a 400.
const MAX_BLANK: usize = 16;
/// The bytes of the one free empty line (CRLF).
const FREE_BLANK: usize = 2;

/// Length of an IMF-fixdate: `Sun, 06 Nov 1994 08:49:37 GMT`.
const DATE_LEN: usize = 29;

/// How the connection goes on after a response; selects the precomputed variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Persist {
    /// HTTP/1.1 keep-alive: no `Connection` header needed.
    KeepAlive11,
    /// HTTP/1.0 keep-alive: must say `Connection: keep-alive`, or the client assumes
    /// the connection closes.
    KeepAlive10,
    /// `Connection: close`, then a close.
    Close,
}

/// The configured response, in its three connection variants.
const OK_VARIANTS: [Persist; 3] = [Persist::KeepAlive11, Persist::KeepAlive10, Persist::Close];

/// Error responses; they always close the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Refusal {
    BadRequest,
    Timeout,
    TooLarge,
    NotImplemented,
    BodyTooLarge,
}

impl Refusal {
    const ALL: [Refusal; 5] = [
        Refusal::BadRequest,
        Refusal::Timeout,
        Refusal::TooLarge,
        Refusal::NotImplemented,
        Refusal::BodyTooLarge,
    ];

    fn status(self) -> u16 {
        match self {
            Refusal::BadRequest => 400,
            Refusal::Timeout => 408,
            Refusal::TooLarge => 431,
            Refusal::NotImplemented => 501,
            Refusal::BodyTooLarge => 413,
        }
    }

    fn body(self) -> &'static str {
        match self {
            Refusal::BadRequest => "bad request\n",
            Refusal::Timeout => "request timeout\n",
            Refusal::TooLarge => "request header fields too large\n",
            Refusal::NotImplemented => "not implemented\n",
            Refusal::BodyTooLarge => "content too large\n",
        }
    }

    /// Index in [`Responses::all`], after the OK variants.
    fn index(self) -> usize {
        OK_VARIANTS.len() + self as usize
    }
}

/// One precomputed response: head and body in one buffer, with a hole for the date.
#[derive(Debug)]
struct Canned {
    bytes: Vec<u8>,
    /// Where the head ends (a HEAD request gets `bytes[..head_len]`).
    head_len: usize,
    /// Where the `Date` value sits, rewritten in place once a second.
    date_at: usize,
}

/// Every response a listener can send.
#[derive(Debug)]
struct Responses {
    /// `OK_VARIANTS` in order, then `Refusal::ALL` in order.
    all: Vec<Canned>,
}

impl Responses {
    fn ok(&self, p: Persist) -> &Canned {
        let i = match p {
            Persist::KeepAlive11 => 0,
            Persist::KeepAlive10 => 1,
            Persist::Close => 2,
        };
        &self.all[i]
    }

    fn refusal(&self, r: Refusal) -> &Canned {
        &self.all[r.index()]
    }

    fn set_date(&mut self, date: &[u8; DATE_LEN]) {
        for c in &mut self.all {
            c.bytes[c.date_at..c.date_at + DATE_LEN].copy_from_slice(date);
        }
    }
}

/// What a listener's connections share: the responses and the limits. One per
/// listener per worker; the worker is single-threaded, so `Rc` and cells suffice.
#[derive(Debug)]
struct Shared {
    responses: RefCell<Responses>,
    /// The Unix second the `Date` in `responses` shows.
    date_second: Cell<u64>,
    header_timeout: Duration,
    max_head: usize,
    /// Largest request body (`max_body_size`; 0 = no limit: bodies are discarded as
    /// they arrive, so size costs time, not memory).
    max_body: u64,
}

impl Shared {
    /// Brings the `Date` headers up to the current second. Called once per batch of
    /// input, not per request: one clock read (vDSO, no syscall) and, once a second,
    /// one formatting.
    fn refresh_date(&self) {
        let now = unix_now();
        if now != self.date_second.get() {
            self.date_second.set(now);
            self.responses.borrow_mut().set_date(&http_date(now));
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The `http` service of one listener.
pub struct Http {
    shared: Rc<Shared>,
}

impl Http {
    /// Builds every response of the listener from its config (already validated:
    /// status in 200..=599, header names and values without CR/LF).
    pub fn new(listen: &ListenConfig) -> Http {
        let listen = super::options::<options::HttpOptions>(listen)
            .cloned()
            .unwrap_or_default();
        let status = listen.status.unwrap_or(200);
        let body = listen.body.as_deref().unwrap_or(DEFAULT_BODY);
        let extra: Vec<(&str, &str)> = listen
            .headers
            .iter()
            .flatten()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let mut all: Vec<Canned> = OK_VARIANTS
            .iter()
            .map(|&p| build(status, &extra, body, p))
            .collect();
        all.extend(
            Refusal::ALL
                .iter()
                .map(|r| build(r.status(), &[], r.body(), Persist::Close)),
        );
        let now = unix_now();
        let mut responses = Responses { all };
        responses.set_date(&http_date(now));
        Http {
            shared: Rc::new(Shared {
                responses: RefCell::new(responses),
                date_second: Cell::new(now),
                header_timeout: listen
                    .header_timeout
                    .map_or(DEFAULT_HEADER_TIMEOUT, |d| d.0),
                max_head: listen.max_header_size.map_or(DEFAULT_MAX_HEADER_SIZE, |s| {
                    usize::try_from(s.0).unwrap_or(usize::MAX)
                }),
                max_body: listen.max_body_size.map_or(0, |s| s.0),
            }),
        }
    }
}

/// Header names the service owns because they frame the message or the connection:
/// a configured one would contradict ours and break keep-alive, so it is left out.
const FRAMING_HEADERS: &[&str] = &["content-length", "transfer-encoding", "connection", "date"];

/// Lays out one response; the date is left blank for `Responses::set_date`.
fn build(status: u16, extra: &[(&str, &str)], body: &str, persist: Persist) -> Canned {
    let has = |name: &str| extra.iter().any(|(k, _)| k.eq_ignore_ascii_case(name));
    // 204 and 304 never have a body, and 204 must not carry Content-Length.
    let bodyless = status == 204 || status == 304;
    let mut h = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    if !has("server") {
        h.push_str("Server: corral\r\n");
    }
    h.push_str("Date: ");
    let date_at = h.len();
    h.push_str(&" ".repeat(DATE_LEN));
    h.push_str("\r\n");
    if !bodyless {
        if !has("content-type") {
            h.push_str("Content-Type: text/plain\r\n");
        }
        h.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    for (k, v) in extra {
        if !FRAMING_HEADERS.iter().any(|f| k.eq_ignore_ascii_case(f)) {
            h.push_str(&format!("{k}: {v}\r\n"));
        }
    }
    match persist {
        Persist::KeepAlive11 => {}
        Persist::KeepAlive10 => h.push_str("Connection: keep-alive\r\n"),
        Persist::Close => h.push_str("Connection: close\r\n"),
    }
    h.push_str("\r\n");
    let head_len = h.len();
    if !bodyless {
        h.push_str(body);
    }
    Canned {
        bytes: h.into_bytes(),
        head_len,
        date_at,
    }
}

/// Reason phrases of the statuses people configure; others get an empty phrase,
/// which HTTP allows (clients go by the code).
fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        410 => "Gone",
        413 => "Content Too Large",
        418 => "I'm a teapot",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "",
    }
}

/// Formats Unix seconds as an IMF-fixdate (RFC 9110 §5.6.7), without a date crate.
fn http_date(secs: u64) -> [u8; DATE_LEN] {
    const DAYS: [&[u8; 3]; 7] = [b"Thu", b"Fri", b"Sat", b"Sun", b"Mon", b"Tue", b"Wed"];
    const MONTHS: [&[u8; 3]; 12] = [
        b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov",
        b"Dec",
    ];
    let days = secs / 86_400;
    let sod = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    let mut out = *b"Thu, 01 Jan 1970 00:00:00 GMT";
    out[..3].copy_from_slice(DAYS[(days % 7) as usize]);
    let two = |out: &mut [u8; DATE_LEN], at: usize, v: u64| {
        out[at] = b'0' + (v / 10 % 10) as u8;
        out[at + 1] = b'0' + (v % 10) as u8;
    };
    two(&mut out, 5, d);
    out[8..11].copy_from_slice(MONTHS[(m - 1) as usize % 12]);
    two(&mut out, 12, y / 100);
    two(&mut out, 14, y % 100);
    two(&mut out, 17, sod / 3600);
    two(&mut out, 20, sod / 60 % 60);
    two(&mut out, 23, sod % 60);
    out
}

/// Days since 1970-01-01 to (year, month 1..=12, day 1..=31): Howard Hinnant's
/// `civil_from_days`, for non-negative day counts.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

// ---------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------

/// What a complete, valid request head says about the response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Request {
    /// Bytes of the head, blank line included.
    len: usize,
    /// `HEAD`: send the head only.
    head: bool,
    /// The connection may stay open after the response.
    keep_alive: bool,
    /// HTTP/1.1 (as opposed to 1.0).
    v11: bool,
    /// Body bytes that follow the head (`Content-Length`).
    body: u64,
    /// The body is chunked instead.
    chunked: bool,
    /// `Expect: 100-continue`.
    expect_continue: bool,
}

/// The outcome of looking at the start of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Parsed {
    /// The head is not complete yet.
    Partial,
    Done(Request),
    Refuse(Refusal),
}

/// Where the head that starts `buf` ends (just past its blank line), looking for line
/// ends from `from` on. Bare LF line ends are accepted, as RFC 9112 §2.2 allows.
fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while let Some(off) = buf.get(i..)?.iter().position(|&b| b == b'\n') {
        let nl = i + off;
        match buf.get(nl + 1..nl + 3) {
            Some([b'\n', _]) => return Some(nl + 2),
            Some([b'\r', b'\n']) => return Some(nl + 3),
            None if buf.get(nl + 1) == Some(&b'\n') => return Some(nl + 2),
            _ => {}
        }
        i = nl + 1;
    }
    None
}

/// RFC 9110 `tchar`: what methods and header names are made of.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Splits `buf` at its first `\n`; the line loses its `\r` if it has one.
fn next_line(buf: &[u8]) -> Option<(&[u8], &[u8])> {
    let nl = buf.iter().position(|&b| b == b'\n')?;
    let line = &buf[..nl];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    Some((line, &buf[nl + 1..]))
}

/// What a valid request line says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct RequestLine {
    /// `HEAD`: send the head only.
    head: bool,
    /// HTTP/1.1 (as opposed to 1.0).
    v11: bool,
}

/// Checks a request line (RFC 9112 §3): `method SP request-target SP HTTP-version`,
/// single spaces, a token for the method, a target form that fits the method. `CONNECT` (a tunnel through a proxy, which this origin is not) is refused
/// with 501 rather than answered and left open.
fn request_line(line: &[u8]) -> Result<RequestLine, Refusal> {
    let bad = Err(Refusal::BadRequest);
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return bad;
    };
    if method.is_empty() || !method.iter().all(|&b| is_tchar(b)) {
        return bad;
    }
    let v11 = match version {
        b"HTTP/1.1" => true,
        b"HTTP/1.0" => false,
        _ => return bad,
    };
    if method == b"CONNECT" {
        return Err(Refusal::NotImplemented);
    }
    if !target_is_valid(method, target) {
        return bad;
    }
    Ok(RequestLine {
        head: method == b"HEAD",
        v11,
    })
}

/// RFC 9112 §3.2 request-target forms other than CONNECT's authority-form:
/// origin-form (`/path?query`), absolute-form (`scheme://…`), and asterisk-form (`*`,
/// for OPTIONS only). Never whitespace, controls or a fragment.
fn target_is_valid(method: &[u8], target: &[u8]) -> bool {
    if target.is_empty() || target.iter().any(|&b| b <= b' ' || b >= 0x7f || b == b'#') {
        return false;
    }
    if target == b"*" {
        return method == b"OPTIONS";
    }
    if target[0] == b'/' {
        return true;
    }
    // absolute-form: scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." ), then "://".
    let Some(colon) = target.iter().position(|&b| b == b':') else {
        return false;
    };
    let scheme = &target[..colon];
    scheme.first().is_some_and(u8::is_ascii_alphabetic)
        && scheme
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
        && target[colon..].starts_with(b"://")
}

/// A `Host` value (RFC 9112 §3.2, RFC 3986 `authority` without userinfo): host
/// name, IP literal or IPv4 address, optional port; possibly empty.
fn host_is_valid(v: &[u8]) -> bool {
    v.iter().all(|&b| {
        matches!(b, b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~'
            | b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b';' | b'=' | b':'
            | b'%' | b'[' | b']')
    })
}

fn trim_ows(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

/// A `Content-Length` value: digits only, no overflow.
fn content_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() {
        return None;
    }
    v.iter().try_fold(0u64, |n, &b| {
        if b.is_ascii_digit() {
            n.checked_mul(10)?.checked_add(u64::from(b - b'0'))
        } else {
            None
        }
    })
}

/// Whether a comma-separated header value lists `token` (case-insensitively).
fn lists(v: &[u8], token: &[u8]) -> bool {
    v.split(|&b| b == b',')
        .any(|t| trim_ows(t).eq_ignore_ascii_case(token))
}

/// Parses the request at the start of `buf`, whose head is known to end at `end`.
fn parse_head(buf: &[u8], end: usize) -> Parsed {
    let bad = Parsed::Refuse(Refusal::BadRequest);
    let Some((line, mut rest)) = next_line(&buf[..end]) else {
        return bad;
    };
    let RequestLine { head, v11 } = match request_line(line) {
        Ok(l) => l,
        Err(r) => return Parsed::Refuse(r),
    };
    let mut hosts = 0u32;
    let mut body: Option<u64> = None;
    let mut close = false;
    let mut keep_alive = false;
    let mut expect_continue = false;
    // Transfer codings in order, over every Transfer-Encoding line: the body is
    // framed by `chunked` only if it is the last one, and only once.
    let mut codings = 0u32;
    let mut chunked_at: Option<u32> = None;
    let mut chunked_twice = false;
    while let Some((line, after)) = next_line(rest) {
        rest = after;
        if line.is_empty() {
            break;
        }
        // Obsolete line folding (a line starting with whitespace) and whitespace
        // before the colon are request-smuggling material: refused, as RFC 9112 says.
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return bad;
        };
        let name = &line[..colon];
        let value = trim_ows(&line[colon + 1..]);
        if name.is_empty()
            || !name.iter().all(|&b| is_tchar(b))
            || value.iter().any(|&b| (b < b' ' && b != b'\t') || b == 0x7f)
        {
            return bad;
        }
        if name.eq_ignore_ascii_case(b"content-length") {
            match (content_length(value), body) {
                (None, _) => return bad,
                (Some(n), Some(prev)) if n != prev => return bad,
                (n, _) => body = n,
            }
        } else if name.eq_ignore_ascii_case(b"host") {
            hosts += 1;
            if !host_is_valid(value) {
                return bad;
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            for coding in value.split(|&b| b == b',').map(trim_ows) {
                // Codings are tokens, optionally with parameters; empty list
                // elements are allowed (RFC 9110 §5.6.1).
                if coding.is_empty() {
                    continue;
                }
                let name_end = coding
                    .iter()
                    .position(|&b| b == b';')
                    .unwrap_or(coding.len());
                let cname = trim_ows(&coding[..name_end]);
                if cname.is_empty() || !cname.iter().all(|&b| is_tchar(b)) {
                    return bad;
                }
                codings += 1;
                if cname.eq_ignore_ascii_case(b"chunked") {
                    chunked_twice |= chunked_at.is_some();
                    chunked_at = Some(codings);
                }
            }
            if codings == 0 {
                return bad;
            }
        } else if name.eq_ignore_ascii_case(b"connection") {
            close |= lists(value, b"close");
            keep_alive |= lists(value, b"keep-alive");
        } else if name.eq_ignore_ascii_case(b"expect") {
            expect_continue = value.eq_ignore_ascii_case(b"100-continue");
        }
    }
    // RFC 9112 §3.2: 400 for an HTTP/1.1 request without Host, and for any request
    // with more than one (which one would a proxy behind us believe?).
    if hosts > 1 || (v11 && hosts == 0) {
        return bad;
    }
    let chunked = codings > 0;
    // RFC 9112 §6.1 and §6.3: a body whose end we cannot be sure of is refused, since
    // answering and carrying on would read the rest of it as requests: chunked not
    // last (or applied twice), Transfer-Encoding with Content-Length (a smuggling
    // attempt), or on HTTP/1.0, which has no transfer codings.
    if chunked && (chunked_at != Some(codings) || chunked_twice || body.is_some() || !v11) {
        return bad;
    }
    Parsed::Done(Request {
        len: end,
        head,
        keep_alive: !close && (v11 || keep_alive),
        v11,
        body: body.unwrap_or(0),
        chunked,
        expect_continue,
    })
}

/// Checks what has arrived of an incomplete head, so that garbage (a TLS handshake,
/// a stray protocol) is refused at once instead of after `header_timeout`.
fn partial_refusal(buf: &[u8]) -> Option<Refusal> {
    match next_line(buf) {
        Some((line, _)) => request_line(line).err(),
        // The method so far: tchars, then a space and the rest of the line.
        None => {
            let method_end = buf.iter().position(|&b| b == b' ').unwrap_or(buf.len());
            (!buf[..method_end].iter().all(|&b| is_tchar(b))).then_some(Refusal::BadRequest)
        }
    }
}

/// Parses the request that starts `buf`. `scanned` bytes were already searched for
/// the end of the head in an earlier call (so a slow client does not make us rescan
/// its head on every byte).
fn parse(buf: &[u8], scanned: usize, max_head: usize) -> Parsed {
    match head_end(buf, scanned.saturating_sub(3)) {
        Some(end) if end > max_head => Parsed::Refuse(Refusal::TooLarge),
        Some(end) => parse_head(buf, end),
        None if buf.len() > max_head => Parsed::Refuse(Refusal::TooLarge),
        None => match partial_refusal(buf) {
            Some(r) => Parsed::Refuse(r),
            None => Parsed::Partial,
        },
    }
}

// ---------------------------------------------------------------------------
// Connections
// ---------------------------------------------------------------------------

impl Service for Http {
    fn connect(&mut self, _peer: Option<IpAddr>) -> Box<dyn Handler> {
        Box::new(HttpConn {
            shared: Rc::clone(&self.shared),
            discard: 0,
            chunks: None,
            after_body: None,
            scanned: 0,
            blank: 0,
            head_timer: false,
            closing: false,
        })
    }
}

/// The response owed once a request's body has been read.
#[derive(Clone, Copy, Debug)]
struct Owed {
    persist: Persist,
    head: bool,
}

struct HttpConn {
    shared: Rc<Shared>,
    /// Body bytes of the current request still to be read and thrown away.
    discard: u64,
    /// The current request's chunked body being read and thrown away.
    chunks: Option<Decoder>,
    /// The current request's response, sent once its body is gone.
    after_body: Option<Owed>,
    /// Bytes of the incomplete head already searched for its end.
    scanned: usize,
    /// Line-end bytes received since the last request (see `MAX_BLANK`).
    blank: usize,
    /// The header timer runs (an incomplete head is waiting).
    head_timer: bool,
    /// The last response is out and we only wait for the client to go (see `LINGER`).
    closing: bool,
}

impl HttpConn {
    /// Sends the response owed for a request; false if the connection now closes.
    fn respond(&mut self, io: &mut Io<'_>, owed: Owed) -> bool {
        let persist = if io.draining() {
            Persist::Close
        } else {
            owed.persist
        };
        {
            let responses = self.shared.responses.borrow();
            let c = responses.ok(persist);
            io.write(if owed.head {
                &c.bytes[..c.head_len]
            } else {
                &c.bytes
            });
        }
        if persist == Persist::Close {
            self.linger(io);
            return false;
        }
        true
    }

    /// Sends an error response and closes.
    fn refuse(&mut self, io: &mut Io<'_>, r: Refusal) {
        self.shared.refresh_date();
        io.write(&self.shared.responses.borrow().refusal(r).bytes);
        self.linger(io);
    }

    /// The last response is queued: FIN after it, then read and discard until the
    /// client closes or `LINGER` passes.
    fn linger(&mut self, io: &mut Io<'_>) {
        self.closing = true;
        self.discard = 0;
        self.chunks = None;
        self.after_body = None;
        self.head_timer = false;
        io.shutdown_write();
        io.set_timer(LINGER);
    }
}

impl Handler for HttpConn {
    fn on_data(&mut self, io: &mut Io<'_>, data: &[u8]) -> usize {
        if self.closing {
            return data.len();
        }
        self.shared.refresh_date();
        let mut pos = 0;
        while pos < data.len() {
            if let Some(decoder) = &mut self.chunks {
                match decoder.feed(&data[pos..]) {
                    Ok(Step::More(n)) => {
                        pos += n;
                        break;
                    }
                    Ok(Step::Done(n)) => {
                        pos += n;
                        self.chunks = None;
                        if let Some(owed) = self.after_body.take() {
                            if !self.respond(io, owed) {
                                return data.len();
                            }
                        }
                        continue;
                    }
                    Err(e) => {
                        self.refuse(
                            io,
                            match e {
                                ChunkError::Malformed => Refusal::BadRequest,
                                ChunkError::TooLarge => Refusal::BodyTooLarge,
                                ChunkError::TrailersTooLarge => Refusal::TooLarge,
                            },
                        );
                        return data.len();
                    }
                }
            }
            if self.discard > 0 {
                let n = usize::try_from(self.discard)
                    .unwrap_or(usize::MAX)
                    .min(data.len() - pos);
                pos += n;
                self.discard -= n as u64;
                if self.discard > 0 {
                    break;
                }
                if let Some(owed) = self.after_body.take() {
                    if !self.respond(io, owed) {
                        return data.len();
                    }
                }
                continue;
            }
            // Empty lines before a request line are tolerated, within bounds (see
            // `MAX_BLANK`).
            if matches!(data[pos], b'\r' | b'\n') {
                pos += 1;
                self.blank += 1;
                if self.blank > MAX_BLANK {
                    self.refuse(io, Refusal::BadRequest);
                    return data.len();
                }
                continue;
            }
            match parse(&data[pos..], self.scanned, self.shared.max_head) {
                Parsed::Partial => {
                    self.scanned = data.len() - pos;
                    break;
                }
                Parsed::Refuse(r) => {
                    self.refuse(io, r);
                    return data.len();
                }
                Parsed::Done(req) => {
                    self.scanned = 0;
                    self.blank = 0;
                    if self.head_timer {
                        self.head_timer = false;
                        io.clear_timer();
                    }
                    pos += req.len;
                    let owed = Owed {
                        persist: match (req.keep_alive, req.v11) {
                            (false, _) => Persist::Close,
                            (true, true) => Persist::KeepAlive11,
                            (true, false) => Persist::KeepAlive10,
                        },
                        head: req.head,
                    };
                    let max_body = self.shared.max_body;
                    if max_body > 0 && req.body > max_body {
                        self.refuse(io, Refusal::BodyTooLarge);
                        return data.len();
                    }
                    if req.body == 0 && !req.chunked {
                        if !self.respond(io, owed) {
                            return data.len();
                        }
                        continue;
                    }
                    let arrived = (data.len() - pos) as u64;
                    let waits = if req.chunked {
                        self.chunks = Some(Decoder::new(max_body, self.shared.max_head));
                        arrived == 0
                    } else {
                        self.discard = req.body;
                        arrived < req.body
                    };
                    self.after_body = Some(owed);
                    if req.expect_continue && req.v11 && waits {
                        // The client waits for this before it sends the body.
                        io.write(b"HTTP/1.1 100 Continue\r\n\r\n");
                    }
                }
            }
        }
        let partial = (pos < data.len() || self.blank > FREE_BLANK)
            && self.discard == 0
            && self.chunks.is_none();
        if partial && !self.head_timer {
            // A request has started: its head must be complete in time.
            self.head_timer = true;
            io.set_timer(self.shared.header_timeout);
        }
        pos
    }

    fn on_timer(&mut self, io: &mut Io<'_>) {
        if self.closing {
            io.close();
        } else if self.head_timer {
            if io.input_held() {
                // We stopped reading the rest of the head ourselves (the client has
                // not read its responses yet): not the client's delay. `on_resume`
                // starts the clock again.
                return;
            }
            self.head_timer = false;
            self.refuse(io, Refusal::Timeout);
        }
    }

    fn on_resume(&mut self, io: &mut Io<'_>) {
        // The header timeout counts only time spent waiting for the client's bytes:
        // from the later of the head's start and the end of our own pause.
        if self.head_timer && !self.closing {
            io.set_timer(self.shared.header_timeout);
        }
    }

    fn is_idle(&self) -> bool {
        // Between requests: no body being read, no head pending (the loop also checks
        // that nothing is buffered either way), not in the middle of closing.
        !self.closing && self.discard == 0 && self.chunks.is_none() && !self.head_timer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listen(extra: &str) -> ListenConfig {
        let toml = format!("address = \"127.0.0.1:1\"\nservice = \"http\"\n{extra}");
        let l: Result<ListenConfig, _> = figment::Figment::new()
            .merge(<figment::providers::Toml as figment::providers::Format>::string(&toml))
            .extract();
        match l.map(|mut l| crate::service::options::attach(&mut l).map(|()| l)) {
            Ok(Ok(l)) => l,
            Ok(Err(e)) => panic!("bad test config: {e:?}"),
            Err(e) => panic!("bad test config: {e}"),
        }
    }

    /// A fake loop: feeds `chunks` like the worker does (unconsumed bytes are kept and
    /// handed back with the next chunk) and collects what the handler did.
    struct Harness {
        conn: Box<dyn Handler>,
        out: Vec<u8>,
        close: bool,
        shut: bool,
        timer: Option<std::time::Instant>,
        inbuf: Vec<u8>,
        draining: bool,
        /// The loop holds the client back (`Io::input_held`).
        held: bool,
    }

    impl Harness {
        fn new(l: &ListenConfig) -> Harness {
            let mut svc = Http::new(l);
            Harness {
                conn: svc.connect(None),
                out: Vec::new(),
                close: false,
                shut: false,
                timer: None,
                inbuf: Vec::new(),
                draining: false,
                held: false,
            }
        }

        fn with_io<R>(&mut self, f: impl FnOnce(&mut dyn Handler, &mut Io<'_>) -> R) -> R {
            let mut jobs = Vec::new();
            let mut io = Io {
                out: &mut self.out,
                close: &mut self.close,
                shutdown_write: &mut self.shut,
                timer: &mut self.timer,
                jobs: &mut jobs,
                peer: None,
                draining: self.draining,
                held: self.held,
            };
            f(self.conn.as_mut(), &mut io)
        }

        fn feed(&mut self, bytes: &[u8]) {
            let mut data = std::mem::take(&mut self.inbuf);
            data.extend_from_slice(bytes);
            let used = self.with_io(|h, io| h.on_data(io, &data));
            assert!(used <= data.len());
            self.inbuf = data[used..].to_vec();
        }

        fn fire_timer(&mut self) {
            self.timer = None;
            self.with_io(|h, io| h.on_timer(io));
        }

        fn take_out(&mut self) -> String {
            String::from_utf8_lossy(&std::mem::take(&mut self.out)).into_owned()
        }

        fn idle(&self) -> bool {
            self.inbuf.is_empty() && self.conn.is_idle()
        }

        fn closing(&self) -> bool {
            self.close || self.shut
        }
    }

    /// Splits a response stream into (status, headers, body) triples, using
    /// Content-Length (HEAD responses: pass `head = true`).
    fn responses(mut s: &str, head: bool) -> Vec<(u16, String, String)> {
        let mut out = Vec::new();
        while !s.is_empty() {
            let end = s.find("\r\n\r\n").expect("complete head") + 4;
            let h = &s[..end];
            let status: u16 = h[9..12].parse().expect("status code");
            let len: usize = h
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(|v| v.trim().parse().expect("length"))
                })
                .unwrap_or(0);
            let blen = if head { 0 } else { len };
            out.push((status, h.to_string(), s[end..end + blen].to_string()));
            s = &s[end + blen..];
        }
        out
    }

    const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";

    #[test]
    fn default_response_is_200_ok_with_body() {
        let mut h = Harness::new(&listen(""));
        h.feed(GET);
        let out = h.take_out();
        let r = responses(&out, false);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].0, 200);
        assert!(r[0].1.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(r[0].1.contains("Server: corral\r\n"));
        assert!(r[0].1.contains("Content-Length: 3\r\n"));
        assert!(!r[0].1.contains("Connection:"));
        assert_eq!(r[0].2, DEFAULT_BODY);
        assert!(!h.closing());
        assert!(h.idle());
        assert!(h.timer.is_none());
    }

    #[test]
    fn configured_status_body_and_headers() {
        let mut h = Harness::new(&listen(
            "status = 503\nbody = \"down for maintenance\"\n\
             [headers]\nX-Test = \"yes\"\nContent-Length = \"999\"\nServer = \"mine\"\n",
        ));
        h.feed(GET);
        let out = h.take_out();
        let r = responses(&out, false);
        assert_eq!(r[0].0, 503);
        assert!(r[0].1.starts_with("HTTP/1.1 503 Service Unavailable\r\n"));
        assert!(r[0].1.contains("X-Test: yes\r\n"));
        assert!(r[0].1.contains("Server: mine\r\n"));
        assert!(!r[0].1.contains("corral"));
        assert!(!r[0].1.contains("999"), "framing headers are ours: {out}");
        assert_eq!(r[0].2, "down for maintenance");
    }

    #[test]
    fn status_204_has_no_body_or_length() {
        let mut h = Harness::new(&listen("status = 204\n"));
        h.feed(GET);
        h.feed(GET);
        let out = h.take_out();
        assert_eq!(out.matches("HTTP/1.1 204 No Content\r\n").count(), 2);
        assert!(!out.contains("Content-Length"));
        assert!(!out.contains("ok\n"));
    }

    #[test]
    fn pipelined_requests_are_answered_in_order() {
        let mut h = Harness::new(&listen(""));
        let mut input = Vec::new();
        input.extend_from_slice(GET);
        input.extend_from_slice(b"HEAD /x HTTP/1.1\r\nHost: x\r\n\r\n");
        input.extend_from_slice(b"POST /y HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello");
        input.extend_from_slice(GET);
        h.feed(&input);
        let out = h.take_out();
        // The HEAD response has no body: split by hand.
        assert_eq!(out.matches("HTTP/1.1 200 OK\r\n").count(), 4);
        assert_eq!(out.matches("ok\n").count(), 3);
        assert!(h.idle());
        assert!(!h.closing());
    }

    #[test]
    fn partial_input_waits_and_arms_the_header_timer() {
        let mut h = Harness::new(&listen(""));
        // Byte by byte, with a pipelined second request split across feeds.
        let mut input = GET.to_vec();
        input.extend_from_slice(GET);
        for (i, b) in input.iter().enumerate() {
            h.feed(&[*b]);
            if i == GET.len() - 2 {
                assert!(h.out.is_empty());
                assert!(h.timer.is_some(), "a started head arms the header timer");
                assert!(!h.idle());
            }
            if i == GET.len() - 1 {
                assert!(h.timer.is_none(), "a complete head clears it");
                assert!(h.idle());
            }
        }
        let out = h.take_out();
        assert_eq!(responses(&out, false).len(), 2);
        assert!(h.idle());
    }

    #[test]
    fn header_timeout_answers_408_and_closes() {
        let mut h = Harness::new(&listen("header_timeout = \"1s\"\n"));
        h.feed(b"GET / HTTP/1.1\r\nHost:");
        let at = h.timer.expect("timer set");
        assert!(at <= std::time::Instant::now() + Duration::from_secs(1));
        h.fire_timer();
        let out = h.take_out();
        assert!(out.starts_with("HTTP/1.1 408 Request Timeout\r\n"), "{out}");
        assert!(out.contains("Connection: close\r\n"));
        assert!(h.shut, "FIN after the response");
        assert!(h.timer.is_some(), "lingering is bounded");
        // What the client still sends is thrown away, and the linger timer closes.
        h.feed(b" x\r\n\r\n");
        assert!(h.out.is_empty());
        assert!(h.inbuf.is_empty());
        h.fire_timer();
        assert!(h.close);
    }

    #[test]
    fn idle_keep_alive_sets_no_timer() {
        let mut h = Harness::new(&listen(""));
        h.feed(GET);
        assert!(h.timer.is_none());
        h.feed(b"\r\n");
        assert!(h.timer.is_none(), "stray line ends are not a request");
        assert!(h.idle());
    }

    #[test]
    fn head_gets_headers_only() {
        let mut h = Harness::new(&listen("body = \"hello world\"\n"));
        h.feed(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n");
        let out = h.take_out();
        assert!(out.ends_with("\r\n\r\n"), "{out:?}");
        assert!(out.contains("Content-Length: 11\r\n"));
        assert!(!out.contains("hello"));
    }

    #[test]
    fn keep_alive_rules_for_http_1_0_and_1_1() {
        let cases: &[(&[u8], Option<&str>, bool)] = &[
            (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", None, false),
            (
                b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                Some("close"),
                true,
            ),
            (
                b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Keep-Alive, CLOSE\r\n\r\n",
                Some("close"),
                true,
            ),
            (b"GET / HTTP/1.0\r\n\r\n", Some("close"), true),
            (
                b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
                Some("keep-alive"),
                false,
            ),
            (
                b"GET / HTTP/1.0\r\nconnection:Keep-Alive\r\n\r\n",
                Some("keep-alive"),
                false,
            ),
        ];
        for (req, conn, closes) in cases {
            let mut h = Harness::new(&listen(""));
            h.feed(req);
            // A pipelined request after a closing one is not answered.
            h.feed(GET);
            let out = h.take_out();
            let r = responses(&out, false);
            let what = String::from_utf8_lossy(req);
            assert_eq!(r.len(), if *closes { 1 } else { 2 }, "{what}: {out}");
            match conn {
                Some(c) => assert!(r[0].1.contains(&format!("Connection: {c}\r\n")), "{what}"),
                None => assert!(!r[0].1.contains("Connection"), "{what}"),
            }
            assert_eq!(h.closing(), *closes, "{what}");
        }
    }

    #[test]
    fn draining_makes_the_next_response_close() {
        let mut h = Harness::new(&listen(""));
        h.feed(GET);
        assert!(!h.closing());
        h.draining = true;
        h.feed(GET);
        let out = h.take_out();
        let r = responses(&out, false);
        assert_eq!(r.len(), 2);
        assert!(!r[0].1.contains("Connection"));
        assert!(r[1].1.contains("Connection: close\r\n"));
        assert!(h.closing());
        assert!(!h.idle());
    }

    #[test]
    fn malformed_requests_get_400_and_close() {
        let bad: &[&[u8]] = &[
            b"GARBAGE\r\n\r\n",
            b"GET /\r\n\r\n",
            b"GET  / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1 extra\r\n\r\n",
            b"GET / HTTP/2.0\r\n\r\n",
            b"GET / HTTP/1.2\r\n\r\n",
            b"G(T / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nNoColon\r\n\r\n",
            b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nName : x\r\n\r\n",
            b"GET / HTTP/1.1\r\n: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nA: b\r\n folded\r\n\r\n",
            b"GET / HTTP/1.1\r\nA: b\x01c\r\n\r\n",
            b"GET / HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
            b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            b"GET / HTTP/1.1\r\nContent-Length: 1, 1\r\n\r\n",
            b"GET / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n",
            b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"GET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"\x16\x03\x01\x02\x00\x01\x00",
        ];
        for req in bad {
            let mut h = Harness::new(&listen(""));
            h.feed(req);
            h.feed(GET);
            let out = h.take_out();
            let what = String::from_utf8_lossy(req);
            assert!(
                out.starts_with("HTTP/1.1 400 Bad Request\r\n"),
                "{what}: {out}"
            );
            assert_eq!(out.matches("HTTP/1.1").count(), 1, "{what}: {out}");
            assert!(out.contains("Connection: close\r\n"));
            assert!(h.closing(), "{what}");
            assert!(h.inbuf.is_empty(), "{what}: nothing is kept");
        }
    }

    #[test]
    fn chunked_bodies_are_read_and_the_connection_goes_on() {
        let mut h = Harness::new(&listen(""));
        h.feed(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n");
        assert!(h.take_out().is_empty(), "answered before the body ended");
        assert!(!h.idle(), "a connection inside a body is not idle");
        h.feed(b"0\r\nX-Trailer: t\r\n\r\n");
        h.feed(GET);
        let out = h.take_out();
        assert_eq!(responses(&out, false).len(), 2, "{out}");
        assert!(h.idle() && !h.closing());
        // Codings before the final chunked are fine (the body is discarded anyway).
        h.feed(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n");
        assert_eq!(responses(&h.take_out(), false).len(), 1);
    }

    #[test]
    fn unframeable_transfer_encodings_get_400() {
        for te in [
            "Transfer-Encoding: gzip\r\n",
            "Transfer-Encoding: chunked, gzip\r\n",
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
            "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
            "Transfer-Encoding: ,\r\n",
            "Transfer-Encoding: chu nked\r\n",
        ] {
            let mut h = Harness::new(&listen(""));
            h.feed(format!("POST / HTTP/1.1\r\nHost: x\r\n{te}\r\n0\r\n\r\n").as_bytes());
            let out = h.take_out();
            assert!(
                out.starts_with("HTTP/1.1 400 Bad Request\r\n"),
                "{te}: {out}"
            );
            assert!(h.closing());
        }
        let mut h = Harness::new(&listen(""));
        h.feed(b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n");
        assert!(
            h.take_out().starts_with("HTTP/1.1 400 "),
            "HTTP/1.0 has no chunked"
        );
    }

    #[test]
    fn bodies_above_max_body_size_get_413() {
        let l = listen("max_body_size = \"10\"\n");
        let mut h = Harness::new(&l);
        h.feed(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\n");
        assert!(h
            .take_out()
            .starts_with("HTTP/1.1 413 Content Too Large\r\n"));
        let mut h = Harness::new(&l);
        h.feed(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nabcdef\r\n");
        assert!(h.take_out().is_empty());
        h.feed(b"5\r\nabcde\r\n");
        assert!(h.take_out().starts_with("HTTP/1.1 413 "));
        let mut h = Harness::new(&l);
        h.feed(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n0123456789");
        assert_eq!(responses(&h.take_out(), false)[0].0, 200);
    }

    #[test]
    fn duplicate_equal_content_length_is_accepted() {
        let mut h = Harness::new(&listen(""));
        h.feed(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\ncontent-length: 2\r\n\r\nhi");
        h.feed(GET);
        let out = h.take_out();
        assert_eq!(responses(&out, false).len(), 2, "{out}");
    }

    #[test]
    fn bodies_are_discarded_as_they_stream() {
        let mut h = Harness::new(&listen(""));
        h.feed(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n");
        assert!(h.out.is_empty(), "the response waits for the body");
        assert!(!h.idle());
        for _ in 0..99 {
            h.feed(&[b'x'; 1000]);
            assert!(h.inbuf.is_empty(), "body bytes are not buffered");
        }
        assert!(h.out.is_empty());
        // The last body bytes and the next request in one read.
        let mut last = vec![b'x'; 1000];
        last.extend_from_slice(GET);
        h.feed(&last);
        let out = h.take_out();
        assert_eq!(responses(&out, false).len(), 2);
        assert!(h.idle());
    }

    #[test]
    fn expect_100_continue_is_answered() {
        let mut h = Harness::new(&listen(""));
        h.feed(b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n");
        assert_eq!(h.take_out(), "HTTP/1.1 100 Continue\r\n\r\n");
        h.feed(b"abc");
        assert!(h.take_out().starts_with("HTTP/1.1 200 OK\r\n"));
        // Not when the body came with the head.
        h.feed(
            b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc",
        );
        assert!(h.take_out().starts_with("HTTP/1.1 200 OK\r\n"));
    }

    #[test]
    fn oversized_heads_get_431() {
        let l = listen("max_header_size = \"1KiB\"\n");
        // Incomplete and already too big.
        let mut h = Harness::new(&l);
        let mut req = b"GET / HTTP/1.1\r\nX-Big: ".to_vec();
        req.extend(std::iter::repeat_n(b'a', 1100));
        h.feed(&req);
        let out = h.take_out();
        assert!(
            out.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
            "{out}"
        );
        assert!(h.closing());
        assert!(h.inbuf.is_empty());
        // Complete but too big.
        let mut h = Harness::new(&l);
        req.extend_from_slice(b"\r\n\r\n");
        h.feed(&req);
        assert!(h.take_out().starts_with("HTTP/1.1 431 "));
        // Exactly at the limit is fine.
        let mut h = Harness::new(&l);
        let mut req = b"GET / HTTP/1.1\r\nHost: x\r\nX: ".to_vec();
        req.extend(std::iter::repeat_n(b'a', 1024 - req.len() - 4));
        req.extend_from_slice(b"\r\n\r\n");
        assert_eq!(req.len(), 1024);
        h.feed(&req);
        assert!(h.take_out().starts_with("HTTP/1.1 200 "));
    }

    #[test]
    fn default_limits() {
        let l = listen("");
        let s = Http::new(&l).shared;
        assert_eq!(s.max_head, DEFAULT_MAX_HEADER_SIZE);
        assert_eq!(s.header_timeout, DEFAULT_HEADER_TIMEOUT);
        let l = listen("header_timeout = \"1500ms\"\nmax_header_size = \"100\"\n");
        let s = Http::new(&l).shared;
        assert_eq!(s.max_head, 100);
        assert_eq!(s.header_timeout, Duration::from_millis(1500));
    }

    #[test]
    fn bare_lf_line_ends_are_accepted() {
        let mut h = Harness::new(&listen(""));
        h.feed(b"GET / HTTP/1.1\nHost: x\n\n");
        assert!(h.take_out().starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(h.idle());
    }

    #[test]
    fn head_end_is_found_across_feeds() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\n", 0), Some(18));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r", 0), None);
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\n", 15), Some(18));
        assert_eq!(head_end(b"a\n\n", 0), Some(3));
        assert_eq!(head_end(b"a\n", 0), None);
        assert_eq!(head_end(b"", 0), None);
        assert_eq!(head_end(b"a", 5), None);
    }

    #[test]
    fn dates_are_imf_fixdates() {
        assert_eq!(&http_date(0), b"Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(&http_date(784_111_777), b"Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(&http_date(951_782_400), b"Tue, 29 Feb 2000 00:00:00 GMT");
        assert_eq!(&http_date(4_102_444_799), b"Thu, 31 Dec 2099 23:59:59 GMT");
        let mut h = Harness::new(&listen(""));
        h.feed(GET);
        let out = h.take_out();
        let date = out
            .lines()
            .find_map(|l| l.strip_prefix("Date: "))
            .expect("Date header");
        assert_eq!(date.len(), DATE_LEN);
        assert!(date.ends_with(" GMT"));
        assert!(!date.starts_with(' '), "the date hole was filled: {out:?}");
    }

    #[test]
    fn host_is_required_once_in_1_1() {
        let cases: &[(&[u8], u16)] = &[
            (b"GET / HTTP/1.1\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", 400),
            (b"GET / HTTP/1.0\r\nHost: a\r\nhost: b\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: a,b\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: u@a\r\n\r\n", 400),
            (b"GET / HTTP/1.0\r\n\r\n", 200),
            (b"GET / HTTP/1.1\r\nHost:\r\n\r\n", 200),
            (b"GET / HTTP/1.1\r\nHOST: [::1]:8080\r\n\r\n", 200),
            (b"GET http://a/x HTTP/1.1\r\nHost: a\r\n\r\n", 200),
        ];
        for (req, status) in cases {
            let mut h = Harness::new(&listen(""));
            h.feed(req);
            let out = h.take_out();
            let what = String::from_utf8_lossy(req);
            assert!(
                out.starts_with(&format!("HTTP/1.1 {status} ")),
                "{what}: {out}"
            );
            assert_eq!(
                h.closing(),
                *status != 200 || req.ends_with(b"1.0\r\n\r\n"),
                "{what}"
            );
        }
    }

    #[test]
    fn connect_gets_501_and_closes() {
        for req in [
            &b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"[..],
            // Refused as soon as the request line is in, not after header_timeout.
            &b"CONNECT example.com:443 HTTP/1.1\r\n"[..],
        ] {
            let mut h = Harness::new(&listen(""));
            h.feed(req);
            let out = h.take_out();
            assert!(out.starts_with("HTTP/1.1 501 "), "{out}");
            assert!(out.contains("Connection: close\r\n"));
            assert!(h.closing());
        }
    }

    #[test]
    fn request_targets_follow_rfc_9112_forms() {
        let ok: &[&[u8]] = &[
            b"GET /a/b?c=d HTTP/1.1\r\nHost: x\r\n\r\n",
            b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET https://x:8443/p HTTP/1.1\r\nHost: x\r\n\r\n",
        ];
        let bad: &[&[u8]] = &[
            b"GET * HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET x HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET x.example:80 HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /a#frag HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET 1http://x/ HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /\xc3\xa9 HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET / HTTP/1.1\r\n Host: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nA:\tb\r\n\tfolded\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nA\t: b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nA: b\rc\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: +1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1 1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length:\r\n\r\n",
            b"get / http/1.1\r\nHost: x\r\n\r\n",
        ];
        for (req, want) in ok
            .iter()
            .map(|r| (r, 200))
            .chain(bad.iter().map(|r| (r, 400)))
        {
            let mut h = Harness::new(&listen(""));
            h.feed(req);
            let out = h.take_out();
            let what = String::from_utf8_lossy(req);
            assert!(
                out.starts_with(&format!("HTTP/1.1 {want} ")),
                "{what}: {out}"
            );
        }
    }

    #[test]
    fn empty_lines_are_bounded_and_start_the_header_timer() {
        let mut h = Harness::new(&listen(""));
        h.feed(GET);
        // One empty line is free (the existing idle test shows it), more are not.
        h.feed(b"\r\n");
        assert!(h.timer.is_none());
        h.feed(b"\r\n");
        assert!(
            h.timer.is_some(),
            "a second empty line starts the header timer"
        );
        let armed = h.timer;
        h.feed(b"\r\n");
        assert_eq!(h.timer, armed, "further empty lines do not push it back");
        assert!(!h.idle());
        // A request after them is served and clears the timer.
        h.feed(GET);
        assert_eq!(responses(&h.take_out(), false).len(), 2);
        assert!(h.timer.is_none());
        assert!(h.idle());
        // Many of them: 400, without waiting for the timer.
        h.feed(&b"\r\n".repeat(MAX_BLANK));
        let out = h.take_out();
        assert!(out.starts_with("HTTP/1.1 400 "), "{out}");
        assert!(h.closing());
    }

    #[test]
    fn header_timer_does_not_count_while_the_loop_holds_the_client_back() {
        let mut h = Harness::new(&listen("header_timeout = \"1s\"\n"));
        h.feed(b"GET / HTTP/1.1\r\nHost:");
        assert!(h.timer.is_some());
        // Reading was paused for the client's unread output when the timer came due.
        h.held = true;
        h.fire_timer();
        assert!(h.out.is_empty(), "no 408 for a head we stopped reading");
        assert!(!h.closing());
        h.held = false;
        // Reading resumes: the clock starts again, in full.
        let before = std::time::Instant::now();
        h.with_io(|c, io| c.on_resume(io));
        let at = h.timer.expect("re-armed on resume");
        assert!(
            at >= before + Duration::from_millis(900),
            "a full header_timeout"
        );
        h.feed(b" x\r\n\r\n");
        assert!(h.take_out().starts_with("HTTP/1.1 200 "));
        assert!(h.timer.is_none());
        // A resume between requests arms nothing.
        h.with_io(|c, io| c.on_resume(io));
        assert!(h.timer.is_none());
        // Not held: the 408 as before.
        h.feed(b"GET / HTTP/1.1\r\n");
        h.fire_timer();
        assert!(h.take_out().starts_with("HTTP/1.1 408 "));
    }
}
