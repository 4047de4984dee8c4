//! `metrics`: a small HTTP/1.1 server for Prometheus scrapes and health checks.
//!
//! `GET /metrics` answers with the master's aggregate of every worker, in the text
//! exposition format 0.0.4. The master never touches client sockets, so the worker
//! that accepted the scrape asks the master over its channel and serves the answer:
//! the handler queues a request in this module's mailbox (the loop sends it in its
//! "other work" step), then looks for the answer on a short handler timer, so the loop
//! never waits; no answer within [`ANSWER_TIMEOUT`] is a 503. `GET /healthz` is 200
//! `ok` while the worker serves and 503 from the moment it drains to stop (graceful
//! stop, master gone): a load balancer stops sending before connections close. A
//! reload's drain is not a stop: the new generation serves, and idle health-check
//! connections are handed to it.
//!
//! Parsing is strict and bounded: a malformed request line or header, a body, or a
//! head over `MAX_HEAD` bytes gets a 400 and the connection closes.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::{Handler, Io, Service};

/// A scrape whose answer has not come by then gets a 503.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);
/// How often a waiting scrape looks in the mailbox.
const POLL: Duration = Duration::from_millis(2);
/// Longest request head (request line and headers).
const MAX_HEAD: usize = 8 * 1024;
/// Most bytes buffered while a scrape waits (pipelined requests).
const MAX_BUFFERED: usize = 64 * 1024;
/// The exposition format's media type.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What the worker loop and the handlers share: one loop thread, so thread-local.
#[derive(Default)]
struct Mailbox {
    next_id: u64,
    /// Requests for the loop to send to the master.
    outbox: Vec<u64>,
    /// Answers arriving in parts.
    partial: HashMap<u64, String>,
    /// Complete answers not collected yet.
    done: HashMap<u64, String>,
    /// The worker drains to stop: health checks fail.
    stopping: bool,
}

thread_local! {
    static MAILBOX: RefCell<Mailbox> = RefCell::new(Mailbox::default());
}

fn with<R>(f: impl FnOnce(&mut Mailbox) -> R) -> R {
    MAILBOX.with(|m| f(&mut m.borrow_mut()))
}

/// For the worker loop: scrapes waiting to be asked of the master.
pub(crate) fn take_requests() -> Vec<u64> {
    with(|m| {
        if m.outbox.is_empty() {
            Vec::new()
        } else {
            std::mem::take(&mut m.outbox)
        }
    })
}

/// For the worker loop: one part of the master's answer to scrape `id`. Parts for a
/// scrape nobody waits for any more (timed out, closed) are dropped.
pub(crate) fn deliver(id: u64, text: String, last: bool) {
    with(|m| {
        let Some(mut acc) = m.partial.remove(&id) else {
            return;
        };
        acc.push_str(&text);
        if last {
            m.done.insert(id, acc);
        } else {
            m.partial.insert(id, acc);
        }
    })
}

/// For the worker loop: the worker started draining to stop (not to reload).
pub(crate) fn set_stopping() {
    with(|m| m.stopping = true)
}

fn stopping() -> bool {
    with(|m| m.stopping)
}

fn ask() -> u64 {
    with(|m| {
        m.next_id += 1;
        let id = m.next_id;
        m.outbox.push(id);
        m.partial.insert(id, String::new());
        id
    })
}

fn collect(id: u64) -> Option<String> {
    with(|m| m.done.remove(&id))
}

/// Also called from `Drop`: `try_with`, so a connection dropped while the thread
/// ends (its mailbox already gone) is no panic.
fn forget(id: u64) {
    let _ = MAILBOX.try_with(|m| {
        if let Ok(mut m) = m.try_borrow_mut() {
            m.partial.remove(&id);
            m.done.remove(&id);
            m.outbox.retain(|&o| o != id);
        }
    });
}

/// `metrics` takes no key of its own in its `[[listen]]` tables: any key besides the
/// common ones is refused.
pub type MetricsOptions = super::NoOptions;

/// The metrics service.
pub struct Metrics;

impl Service for Metrics {
    fn connect(&mut self, _peer: Option<IpAddr>) -> Box<dyn Handler> {
        Box::new(MetricsConn::default())
    }
}

/// A scrape in flight on a connection.
struct Waiting {
    id: u64,
    since: Instant,
    head_only: bool,
    keep_alive: bool,
}

#[derive(Default)]
struct MetricsConn {
    buf: Vec<u8>,
    waiting: Option<Waiting>,
    closing: bool,
}

/// One parsed request.
struct Request {
    method: Method,
    path: String,
    keep_alive: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Method {
    Get,
    Head,
    Other,
}

/// Why a request head is refused.
#[derive(Debug, PartialEq, Eq)]
struct Malformed(&'static str);

/// Parses a complete head (without the blank line).
fn parse(head: &[u8]) -> Result<Request, Malformed> {
    let head = std::str::from_utf8(head).map_err(|_| Malformed("not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let line = lines.next().unwrap_or("");
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Malformed("bad request line"));
    };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(Malformed("bad method"));
    }
    if !target.starts_with('/') || target.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(Malformed("bad target"));
    }
    let mut keep_alive = match version {
        "HTTP/1.1" => true,
        "HTTP/1.0" => false,
        _ => return Err(Malformed("bad version")),
    };
    for h in lines {
        let Some((name, value)) = h.split_once(':') else {
            return Err(Malformed("header without a colon"));
        };
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Malformed("bad header name"));
        }
        let value = value.trim_matches([' ', '\t']);
        if value.bytes().any(|b| b < b' ' && b != b'\t') {
            return Err(Malformed("control character in a header"));
        }
        if name.eq_ignore_ascii_case("content-length") {
            if value != "0" {
                return Err(Malformed("a body"));
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(Malformed("a body"));
        } else if name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case("keep-alive") {
                    keep_alive = true;
                }
            }
        }
    }
    let method = match method {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        _ => Method::Other,
    };
    let path = target.split('?').next().unwrap_or("").to_string();
    Ok(Request {
        method,
        path,
        keep_alive,
    })
}

fn response(io: &mut Io<'_>, status: &str, ctype: &str, body: &[u8], head_only: bool, keep: bool) {
    let conn = if keep { "keep-alive" } else { "close" };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: {conn}\r\n\r\n",
        body.len()
    );
    io.write(head.as_bytes());
    if !head_only {
        io.write(body);
    }
}

impl MetricsConn {
    /// Serves buffered requests until one has to wait for the master.
    fn serve(&mut self, io: &mut Io<'_>) {
        while self.waiting.is_none() && !self.closing {
            let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                if self.buf.len() > MAX_HEAD {
                    self.fail(
                        io,
                        "431 Request Header Fields Too Large",
                        "request head too long",
                    );
                }
                return;
            };
            if end > MAX_HEAD {
                return self.fail(
                    io,
                    "431 Request Header Fields Too Large",
                    "request head too long",
                );
            }
            let parsed = parse(&self.buf[..end]);
            self.buf.drain(..end + 4);
            let req = match parsed {
                Ok(r) => r,
                Err(Malformed(why)) => return self.fail(io, "400 Bad Request", why),
            };
            // A stopping worker invites no more requests.
            let keep = req.keep_alive && !stopping();
            let head_only = req.method == Method::Head;
            let text = "text/plain; charset=utf-8";
            match (req.method, req.path.as_str()) {
                (Method::Other, _) => response(
                    io,
                    "405 Method Not Allowed",
                    text,
                    b"GET or HEAD only\n",
                    false,
                    keep,
                ),
                (_, "/metrics") => {
                    self.waiting = Some(Waiting {
                        id: ask(),
                        since: Instant::now(),
                        head_only,
                        keep_alive: keep,
                    });
                    io.set_timer(POLL);
                    return;
                }
                (_, "/healthz") if stopping() => response(
                    io,
                    "503 Service Unavailable",
                    text,
                    b"stopping\n",
                    head_only,
                    keep,
                ),
                (_, "/healthz") => response(io, "200 OK", text, b"ok\n", head_only, keep),
                _ => response(
                    io,
                    "404 Not Found",
                    text,
                    b"/metrics or /healthz\n",
                    head_only,
                    keep,
                ),
            }
            if !keep {
                self.closing = true;
                io.close();
            }
        }
    }

    fn fail(&mut self, io: &mut Io<'_>, status: &str, why: &str) {
        let body = format!("{why}\n");
        response(
            io,
            status,
            "text/plain; charset=utf-8",
            body.as_bytes(),
            false,
            false,
        );
        self.closing = true;
        self.buf.clear();
        io.close();
    }
}

impl Handler for MetricsConn {
    fn on_data(&mut self, io: &mut Io<'_>, data: &[u8]) -> usize {
        if self.closing {
            return data.len();
        }
        self.buf.extend_from_slice(data);
        if self.buf.len() > MAX_BUFFERED {
            if let Some(w) = self.waiting.take() {
                forget(w.id);
            }
            self.fail(io, "400 Bad Request", "too much pipelined input");
            return data.len();
        }
        self.serve(io);
        data.len()
    }

    fn on_timer(&mut self, io: &mut Io<'_>) {
        let Some(w) = self.waiting.take() else {
            return;
        };
        if let Some(body) = collect(w.id) {
            response(
                io,
                "200 OK",
                CONTENT_TYPE,
                body.as_bytes(),
                w.head_only,
                w.keep_alive,
            );
        } else if w.since.elapsed() >= ANSWER_TIMEOUT {
            forget(w.id);
            response(
                io,
                "503 Service Unavailable",
                "text/plain; charset=utf-8",
                b"the master did not answer in time\n",
                w.head_only,
                w.keep_alive,
            );
        } else {
            self.waiting = Some(w);
            io.set_timer(POLL);
            return;
        }
        if !w.keep_alive {
            self.closing = true;
            io.close();
            return;
        }
        self.serve(io);
    }

    fn is_idle(&self) -> bool {
        // While stopping, an idle connection stays open for its next health check
        // (answered 503, then closed) instead of being closed unanswered.
        self.waiting.is_none() && self.buf.is_empty() && !self.closing && !stopping()
    }
}

impl Drop for MetricsConn {
    fn drop(&mut self) {
        if let Some(w) = self.waiting.take() {
            forget(w.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_parsing() {
        let ok = parse(b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\nConnection: close").unwrap();
        assert!(ok.method == Method::Get && ok.path == "/metrics" && !ok.keep_alive);
        assert!(parse(b"GET /healthz HTTP/1.0").is_ok_and(|r| !r.keep_alive));
        for bad in [
            &b"GET /metrics"[..],
            b"GET  /metrics HTTP/1.1",
            b"GET metrics HTTP/1.1",
            b"get /metrics HTTP/1.1",
            b"GET /metrics HTTP/2",
            b"GET /metrics HTTP/1.1\r\nNoColon",
            b"GET /metrics HTTP/1.1\r\nContent-Length: 5",
            b"GET /metrics HTTP/1.1\r\nTransfer-Encoding: chunked",
            b"GET /a\xff HTTP/1.1",
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn answers_arrive_in_parts_and_stale_ones_are_dropped() {
        let id = ask();
        assert_eq!(take_requests(), vec![id]);
        deliver(id, "a\n".into(), false);
        assert_eq!(collect(id), None);
        deliver(id, "b\n".into(), true);
        assert_eq!(collect(id).as_deref(), Some("a\nb\n"));
        let gone = ask();
        forget(gone);
        deliver(gone, "x".into(), true);
        assert_eq!(collect(gone), None);
        assert!(take_requests().is_empty());
    }
}
