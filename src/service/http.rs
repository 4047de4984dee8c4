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
use std::rc::Rc;
use std::time::Duration;

use crate::config::ListenConfig;

mod chunked;
mod conn;
/// The parsers, for [`crate::fuzzing`] only.
pub(crate) mod fuzzing;
pub mod options;
mod parse;
mod refusal;
mod response;
#[cfg(test)]
mod tests;

#[cfg(test)]
use conn::MAX_BLANK;
#[cfg(test)]
use parse::head_end;
use parse::is_tchar;
use refusal::Refusal;
use response::{build, http_date, unix_now, Canned, Persist, Responses, Shared, OK_VARIANTS};

/// Body of every response unless `body` is configured. Non-empty, so a health check
/// that looks for content finds some.
pub const DEFAULT_BODY: &str = "ok\n";
/// How long a request head may take to arrive, unless `header_timeout` is configured.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head, unless `max_header_size` is configured (nginx's
/// `large_client_header_buffers` is 8k too).
pub const DEFAULT_MAX_HEADER_SIZE: usize = 8 << 10;

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
