//! `http`'s responses: every one a listener can send, laid out once per listener
//! (head, body and a hole for the `Date`), and the date formatting that fills the
//! hole once a second.

use std::cell::{Cell, RefCell};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::refusal::Refusal;

/// Length of an IMF-fixdate: `Sun, 06 Nov 1994 08:49:37 GMT`.
pub(super) const DATE_LEN: usize = 29;

/// How the connection goes on after a response; selects the precomputed variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Persist {
    /// HTTP/1.1 keep-alive: no `Connection` header needed.
    KeepAlive11,
    /// HTTP/1.0 keep-alive: must say `Connection: keep-alive`, or the client assumes
    /// the connection closes.
    KeepAlive10,
    /// `Connection: close`, then a close.
    Close,
}

/// The configured response, in its three connection variants.
pub(super) const OK_VARIANTS: [Persist; 3] =
    [Persist::KeepAlive11, Persist::KeepAlive10, Persist::Close];

/// One precomputed response: head and body in one buffer, with a hole for the date.
#[derive(Debug)]
pub(super) struct Canned {
    pub(super) bytes: Vec<u8>,
    /// Where the head ends (a HEAD request gets `bytes[..head_len]`).
    pub(super) head_len: usize,
    /// Where the `Date` value sits, rewritten in place once a second.
    pub(super) date_at: usize,
}

/// Every response a listener can send.
#[derive(Debug)]
pub(super) struct Responses {
    /// `OK_VARIANTS` in order, then `Refusal::ALL` in order.
    pub(super) all: Vec<Canned>,
}

impl Responses {
    pub(super) fn ok(&self, p: Persist) -> &Canned {
        let i = match p {
            Persist::KeepAlive11 => 0,
            Persist::KeepAlive10 => 1,
            Persist::Close => 2,
        };
        &self.all[i]
    }

    pub(super) fn refusal(&self, r: Refusal) -> &Canned {
        &self.all[r.index()]
    }

    pub(super) fn set_date(&mut self, date: &[u8; DATE_LEN]) {
        for c in &mut self.all {
            c.bytes[c.date_at..c.date_at + DATE_LEN].copy_from_slice(date);
        }
    }
}

/// What a listener's connections share: the responses and the limits. One per
/// listener per worker; the worker is single-threaded, so `Rc` and cells suffice.
#[derive(Debug)]
pub(super) struct Shared {
    pub(super) responses: RefCell<Responses>,
    /// The Unix second the `Date` in `responses` shows.
    pub(super) date_second: Cell<u64>,
    pub(super) header_timeout: Duration,
    pub(super) max_head: usize,
    /// Largest request body (`max_body_size`; 0 = no limit: bodies are discarded as
    /// they arrive, so size costs time, not memory).
    pub(super) max_body: u64,
}

impl Shared {
    /// Brings the `Date` headers up to the current second. Called once per batch of
    /// input, not per request: one clock read (vDSO, no syscall) and, once a second,
    /// one formatting.
    pub(super) fn refresh_date(&self) {
        let now = unix_now();
        if now != self.date_second.get() {
            self.date_second.set(now);
            self.responses.borrow_mut().set_date(&http_date(now));
        }
    }
}

pub(super) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Header names the service owns because they frame the message or the connection:
/// a configured one would contradict ours and break keep-alive, so it is left out.
pub(super) const FRAMING_HEADERS: &[&str] =
    &["content-length", "transfer-encoding", "connection", "date"];

/// Lays out one response; the date is left blank for `Responses::set_date`.
pub(super) fn build(status: u16, extra: &[(&str, &str)], body: &str, persist: Persist) -> Canned {
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
pub(super) fn reason(status: u16) -> &'static str {
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
pub(super) fn http_date(secs: u64) -> [u8; DATE_LEN] {
    pub(super) const DAYS: [&[u8; 3]; 7] = [b"Thu", b"Fri", b"Sat", b"Sun", b"Mon", b"Tue", b"Wed"];
    pub(super) const MONTHS: [&[u8; 3]; 12] = [
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
pub(super) fn civil_from_days(days: u64) -> (u64, u64, u64) {
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
