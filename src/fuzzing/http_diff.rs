//! The HTTP/1 head parser against httparse (the parser of hyper, and so of much of
//! the Rust ecosystem, itself fuzzed on OSS-Fuzz): the same verdict on every input,
//! and the same method, target, version, head length and fields when both accept.
//!
//! corral is deliberately stricter, for RFC 9112 and against request smuggling, and
//! every such difference is spelled out in [`stricter`]: when httparse accepts and
//! corral refuses, one of those rules must say why, or the check fails. What it does
//! not compare: empty lines before the request line (the connection skips up to
//! `MAX_BLANK` bytes of CR and LF before calling the parser, httparse any number of
//! empty lines; both inputs here start after them), and the 431 for a head above
//! `max_header_size` (httparse has no limit; checked against the head's length).
//! corral checks an incomplete head only up to its request line, httparse every
//! byte as it comes: when httparse refuses an incomplete head that corral still
//! waits for, completing it must not make corral accept it.

use super::http::{parse_head, Head, Verdict};

/// `max_header_size` for the comparison: small, so 431 is reached too.
const MAX_HEAD: usize = 4096;

/// Panics when corral and httparse disagree beyond the documented differences.
pub fn check(data: &[u8]) {
    let start = data
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(data.len());
    let buf = &data[start..];
    let ours = parse_head(buf, MAX_HEAD);
    // Every field of a head within MAX_HEAD fits (the shortest field is `a:` + LF).
    let mut slots = vec![httparse::EMPTY_HEADER; MAX_HEAD / 3 + 1];
    let mut req = httparse::Request::new(&mut slots);
    let theirs = req.parse(buf);
    match (ours, theirs) {
        (Verdict::Accept(h), Ok(httparse::Status::Complete(len))) => same(&h, len, &req),
        (Verdict::Accept(h), other) => {
            panic!("corral accepts what httparse does not ({other:?}): {h:?}")
        }
        (Verdict::Refuse(431), theirs) => {
            let long = match theirs {
                Ok(httparse::Status::Complete(len)) => len > MAX_HEAD,
                _ => buf.len() > MAX_HEAD,
            };
            assert!(long, "431 for a head within {MAX_HEAD} bytes");
        }
        (Verdict::Refuse(status), Ok(_)) => {
            let complete = matches!(theirs, Ok(httparse::Status::Complete(_)));
            match stricter(&req, complete) {
                Some((why, expected)) => assert_eq!(status, expected, "{why}"),
                None => panic!("corral refuses ({status}) what httparse accepts: {req:?}"),
            }
        }
        (Verdict::Refuse(_), Err(_)) => {}
        (Verdict::Partial, Ok(httparse::Status::Partial)) => {}
        (Verdict::Partial, Ok(httparse::Status::Complete(len))) => {
            panic!("httparse found a head of {len} bytes where corral waits for more")
        }
        (Verdict::Partial, Err(e)) => {
            let mut done = buf.to_vec();
            done.extend_from_slice(b"\r\n\r\n");
            if let Verdict::Accept(h) = parse_head(&done, usize::MAX) {
                panic!("httparse refused ({e}) an incomplete head that corral accepts completed: {h:?}");
            }
        }
    }
}

/// Both accepted: the same head, read the same way.
fn same(h: &Head<'_>, len: usize, req: &httparse::Request<'_, '_>) {
    assert_eq!(h.len, len, "head length");
    assert_eq!(Some(h.method), req.method.map(str::as_bytes), "method");
    assert_eq!(Some(h.target), req.path.map(str::as_bytes), "target");
    assert_eq!(Some(h.minor), req.version, "version");
    let theirs: Vec<(&[u8], &[u8])> = req
        .headers
        .iter()
        .map(|f| (f.name.as_bytes(), f.value))
        .collect();
    assert_eq!(h.fields, theirs, "fields");
}

/// Why corral refuses a head that httparse accepts, and with which status; None if
/// no deliberate rule applies (a bug on one side). With `complete` false only the
/// request line is known.
fn stricter(req: &httparse::Request<'_, '_>, complete: bool) -> Option<(&'static str, u16)> {
    let (Some(method), Some(target), Some(minor)) = (req.method, req.path, req.version) else {
        return None;
    };
    let target = target.as_bytes();
    if method == "CONNECT" {
        return Some(("CONNECT: a tunnel, and this origin is no proxy (501)", 501));
    }
    if !target_form(method, target) {
        return Some((
            "the target fits none of RFC 9112's forms (origin, absolute, asterisk for \
             OPTIONS) or holds bytes outside visible ASCII or a fragment",
            400,
        ));
    }
    if !complete {
        return None;
    }
    let fields = || req.headers.iter().map(|f| (f.name, f.value));
    let named = |n: &'static str| named(req, n);
    let hosts: Vec<&[u8]> = named("host").collect();
    if hosts.len() > 1 || (minor == 1 && hosts.is_empty()) {
        return Some((
            "HTTP/1.1 without Host, or two Host fields (RFC 9112 §3.2)",
            400,
        ));
    }
    if hosts.iter().any(|h| !h.iter().all(|&b| host_byte(b))) {
        return Some(("a Host that is no authority (RFC 3986)", 400));
    }
    let lengths: Vec<Option<u64>> = named("content-length").map(digits).collect();
    if lengths.iter().any(Option::is_none) || lengths.windows(2).any(|w| w[0] != w[1]) {
        return Some((
            "a Content-Length that is not one decimal number (§6.3)",
            400,
        ));
    }
    let codings: Vec<Vec<&[u8]>> = named("transfer-encoding").map(coding_names).collect();
    if !codings.is_empty() {
        let all: Vec<&[u8]> = codings.iter().flatten().copied().collect();
        let chunked = |c: &&[u8]| c.eq_ignore_ascii_case(b"chunked");
        let bad_token = all
            .iter()
            .any(|c| c.is_empty() || !c.iter().all(|&b| tchar(b)));
        // A Transfer-Encoding line that leaves the list of codings so far empty.
        let empty_line = codings
            .iter()
            .scan(0, |n, c| {
                *n += c.len();
                Some(*n)
            })
            .any(|n| n == 0);
        if empty_line
            || bad_token
            || !all.last().is_some_and(chunked)
            || all.iter().filter(|c| chunked(c)).count() > 1
            || !lengths.is_empty()
            || minor == 0
        {
            return Some((
                "a body whose end is uncertain: Transfer-Encoding not ending in chunked \
                 once, with Content-Length, on HTTP/1.0, or malformed (§6.1, §6.3)",
                400,
            ));
        }
    }
    if fields().any(|(_, v)| v.contains(&0x7f)) {
        return Some(("DEL in a field value", 400));
    }
    None
}

/// RFC 9112 §3.2's target forms, other than CONNECT's, as corral reads them.
fn target_form(method: &str, t: &[u8]) -> bool {
    if t.is_empty() || t.iter().any(|&b| !(0x21..0x7f).contains(&b) || b == b'#') {
        return false;
    }
    if t == b"*" {
        return method == "OPTIONS";
    }
    if t[0] == b'/' {
        return true;
    }
    let Some(colon) = t.iter().position(|&b| b == b':') else {
        return false;
    };
    let scheme = &t[..colon];
    scheme.first().is_some_and(u8::is_ascii_alphabetic)
        && scheme
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
        && t[colon..].starts_with(b"://")
}

fn host_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+;=:%[]".contains(&b)
}

fn tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn digits(v: &[u8]) -> Option<u64> {
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// A Transfer-Encoding value's coding names (parameters dropped, empty list elements
/// skipped as RFC 9110 §5.6.1 allows).
fn coding_names(v: &[u8]) -> Vec<&[u8]> {
    v.split(|&b| b == b',')
        .map(ows)
        .filter(|c| !c.is_empty())
        .map(|c| ows(c.split(|&b| b == b';').next().unwrap_or_default()))
        .collect()
}

/// Without surrounding spaces and tabs.
fn ows(s: &[u8]) -> &[u8] {
    let s = &s[s.iter().take_while(|b| matches!(b, b' ' | b'\t')).count()..];
    let end = s.len()
        - s.iter()
            .rev()
            .take_while(|b| matches!(b, b' ' | b'\t'))
            .count();
    &s[..end]
}

/// The values of the fields called `n`.
fn named<'h>(
    req: &'h httparse::Request<'_, '_>,
    n: &'static str,
) -> impl Iterator<Item = &'h [u8]> {
    req.headers
        .iter()
        .filter(move |f| f.name.eq_ignore_ascii_case(n))
        .map(|f| f.value)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The comparison is not vacuous: these heads are accepted by both parsers (and so
    /// compared field by field), and each deliberate difference is met by its rule.
    #[test]
    fn both_accept_and_each_stricter_rule_is_reached() {
        for head in [
            &b"GET /a?b HTTP/1.1\r\nHost: x\r\nX-Obs: \x80\xff\r\nEmpty:\r\n\r\n"[..],
            b"POST / HTTP/1.1\nHost: x\nTransfer-Encoding: gzip,chunked\n\n",
        ] {
            assert!(matches!(parse_head(head, MAX_HEAD), Verdict::Accept(_)));
            let mut slots = [httparse::EMPTY_HEADER; 8];
            let mut req = httparse::Request::new(&mut slots);
            assert!(matches!(req.parse(head), Ok(httparse::Status::Complete(_))));
            check(head);
        }
        for (head, status) in [
            (&b"CONNECT a:1 HTTP/1.1\r\nHost: a:1\r\n\r\n"[..], 501),
            (b"GET a HTTP/1.1\r\nHost: x\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\n\r\n", 400),
            (
                b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                400,
            ),
            (b"GET / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        ] {
            assert_eq!(parse_head(head, MAX_HEAD), Verdict::Refuse(status));
            let mut slots = [httparse::EMPTY_HEADER; 8];
            let mut req = httparse::Request::new(&mut slots);
            assert!(matches!(req.parse(head), Ok(httparse::Status::Complete(_))));
            check(head);
        }
    }
}
