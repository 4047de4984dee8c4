//! `http`'s request parsing: finds the end of a request head and checks it against
//! RFC 9112 without allocating; the result says what the response must look like.

use super::refusal::Refusal;

/// What a complete, valid request head says about the response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Request {
    /// Bytes of the head, blank line included.
    pub(super) len: usize,
    /// `HEAD`: send the head only.
    pub(super) head: bool,
    /// The connection may stay open after the response.
    pub(super) keep_alive: bool,
    /// HTTP/1.1 (as opposed to 1.0).
    pub(super) v11: bool,
    /// Body bytes that follow the head (`Content-Length`).
    pub(super) body: u64,
    /// The body is chunked instead.
    pub(super) chunked: bool,
    /// `Expect: 100-continue`.
    pub(super) expect_continue: bool,
}

/// The outcome of looking at the start of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Parsed {
    /// The head is not complete yet.
    Partial,
    Done(Request),
    Refuse(Refusal),
}

/// Where the head that starts `buf` ends (just past its blank line), looking for line
/// ends from `from` on. Bare LF line ends are accepted, as RFC 9112 §2.2 allows.
pub(super) fn head_end(buf: &[u8], from: usize) -> Option<usize> {
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
pub(super) fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Splits `buf` at its first `\n`; the line loses its `\r` if it has one.
pub(super) fn next_line(buf: &[u8]) -> Option<(&[u8], &[u8])> {
    let nl = buf.iter().position(|&b| b == b'\n')?;
    let line = &buf[..nl];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    Some((line, &buf[nl + 1..]))
}

/// What a valid request line says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct RequestLine {
    /// `HEAD`: send the head only.
    pub(super) head: bool,
    /// HTTP/1.1 (as opposed to 1.0).
    pub(super) v11: bool,
}

/// Checks a request line (RFC 9112 §3): `method SP request-target SP HTTP-version`,
/// single spaces, a token for the method, a target form that fits the method. `CONNECT` (a tunnel through a proxy, which this origin is not) is refused
/// with 501 rather than answered and left open.
pub(super) fn request_line(line: &[u8]) -> Result<RequestLine, Refusal> {
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
pub(super) fn target_is_valid(method: &[u8], target: &[u8]) -> bool {
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
pub(super) fn host_is_valid(v: &[u8]) -> bool {
    v.iter().all(|&b| {
        matches!(b, b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~'
            | b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b';' | b'=' | b':'
            | b'%' | b'[' | b']')
    })
}

pub(super) fn trim_ows(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

/// A `Content-Length` value: digits only, no overflow.
pub(super) fn content_length(v: &[u8]) -> Option<u64> {
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
pub(super) fn lists(v: &[u8], token: &[u8]) -> bool {
    v.split(|&b| b == b',')
        .any(|t| trim_ows(t).eq_ignore_ascii_case(token))
}

/// Parses the request at the start of `buf`, whose head is known to end at `end`.
pub(super) fn parse_head(buf: &[u8], end: usize) -> Parsed {
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
pub(super) fn partial_refusal(buf: &[u8]) -> Option<Refusal> {
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
pub(super) fn parse(buf: &[u8], scanned: usize, max_head: usize) -> Parsed {
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
