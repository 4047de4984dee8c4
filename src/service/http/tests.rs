//! Unit tests of the `http` service: a fake loop feeds a connection and checks the
//! bytes it sends back. Over 600 lines because it is one harness and the tests that
//! share it, moved verbatim from `http.rs`.

use super::response::DATE_LEN;
use super::*;
use crate::service::{Handler, Io, Service};

fn listen(extra: &str) -> ListenConfig {
    let toml = format!("address = \"127.0.0.1:1\"\nservice = \"http\"\n{extra}");
    let l: Result<ListenConfig, _> = figment::Figment::new()
        .merge(<figment::providers::Toml as figment::providers::Format>::string(&toml))
        .extract();
    match l.map(|mut l| crate::service::attach(&mut l).map(|()| l)) {
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
            tls: None,
            out: &mut self.out,
            close: &mut self.close,
            shutdown_write: &mut self.shut,
            timer: &mut self.timer,
            jobs: &mut jobs,
            peer: None,
            draining: self.draining,
            held: self.held,
            now: None,
            push: None,
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
    h.feed(b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc");
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
