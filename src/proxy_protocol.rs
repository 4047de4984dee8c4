//! The PROXY protocol (HAProxy's spec, versions 1 and 2): how a load balancer in front
//! of corral tells it the real client's address, and how corral's proxy tells an
//! upstream behind it.
//!
//! Parsing is strict because the header arrives from the network before anything
//! else: v1 must follow the exact grammar (`PROXY TCP4|TCP6|UNKNOWN ...` within 107
//! bytes, ending in CRLF); v2 must carry the 12-byte signature, version 2, a known
//! command and family, and a length that covers the addresses. TLVs are skipped
//! without being interpreted. A header that is only partly there asks for more bytes;
//! anything else wrong is an error, and the caller closes the connection.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The v2 signature, the first 12 bytes of every v2 header.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The longest v1 header, CRLF included (the spec's figure).
pub const V1_MAX: usize = 107;
/// The fixed part of a v2 header: signature, version/command, family, length.
const V2_FIXED: usize = 16;
/// The longest v2 header: the fixed part and the largest length field.
pub const V2_MAX: usize = V2_FIXED + u16::MAX as usize;

/// Which version to send upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// A header read in full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Bytes the header took; what follows belongs to the service.
    pub len: usize,
    /// The real client and the address it connected to; None for `UNKNOWN` (v1),
    /// `LOCAL` or an unsupported family (v2): the connection's own addresses stand.
    pub addrs: Option<(SocketAddr, SocketAddr)>,
}

/// What the bytes received so far amount to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A valid beginning of a header: wait for more bytes.
    Partial,
    Done(Header),
}

/// Why a header was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("not a PROXY protocol header")]
    Signature,
    #[error("v1 header longer than {V1_MAX} bytes without CRLF")]
    V1TooLong,
    #[error("v1 header malformed: {0}")]
    V1Syntax(&'static str),
    #[error("v2 version {0} is not 2")]
    V2Version(u8),
    #[error("v2 command {0:#x} is neither LOCAL nor PROXY")]
    V2Command(u8),
    #[error("v2 family/protocol {0:#04x} is unknown")]
    V2Family(u8),
    #[error("v2 length {len} is too short for its addresses ({need} bytes)")]
    V2Length { len: usize, need: usize },
    #[error("v2 header of {0} bytes is longer than this worker accepts ({1})")]
    V2TooLong(usize, usize),
}

/// Parses the start of a connection's bytes. `limit` bounds how long a v2 header may be
/// (the caller's buffer); a longer one is an error rather than a wait that never ends.
pub fn parse(buf: &[u8], limit: usize) -> Result<Parsed, Error> {
    if buf.is_empty() {
        return Ok(Parsed::Partial);
    }
    let n = buf.len().min(V2_SIGNATURE.len());
    if buf[..n] == V2_SIGNATURE[..n] {
        return if n < V2_SIGNATURE.len() {
            Ok(Parsed::Partial)
        } else {
            parse_v2(buf, limit)
        };
    }
    let n = buf.len().min(6);
    if buf[..n] == b"PROXY "[..n] {
        return if n < 6 {
            Ok(Parsed::Partial)
        } else {
            parse_v1(buf)
        };
    }
    Err(Error::Signature)
}

fn parse_v1(buf: &[u8]) -> Result<Parsed, Error> {
    let window = &buf[..buf.len().min(V1_MAX)];
    // The first line end decides, CR or LF: a bare LF before the CR is refused
    // whether or not the CR has arrived yet (found by the proxy_protocol fuzz
    // target: `PROXY UNKNOWN x\ny\r\n` was accepted in one read and refused when it
    // came in two).
    let Some(cr) = window.iter().position(|&b| b == b'\r' || b == b'\n') else {
        return if buf.len() >= V1_MAX {
            Err(Error::V1TooLong)
        } else {
            Ok(Parsed::Partial)
        };
    };
    if window[cr] == b'\n' {
        return Err(Error::V1Syntax("LF without CR"));
    }
    match window.get(cr + 1) {
        None if cr + 1 >= V1_MAX => return Err(Error::V1TooLong),
        None => return Ok(Parsed::Partial),
        Some(b'\n') => {}
        Some(_) => return Err(Error::V1Syntax("CR not followed by LF")),
    }
    let line = std::str::from_utf8(&buf[6..cr]).map_err(|_| Error::V1Syntax("not ASCII"))?;
    if !line.is_ascii() {
        return Err(Error::V1Syntax("not ASCII"));
    }
    let len = cr + 2;
    let fields: Vec<&str> = line.split(' ').collect();
    match fields.as_slice() {
        // The spec lets a receiver ignore whatever follows UNKNOWN.
        ["UNKNOWN", ..] => Ok(Parsed::Done(Header { len, addrs: None })),
        [proto, src, dst, sport, dport] => {
            let (src, dst) = match *proto {
                "TCP4" => (v1_ip::<Ipv4Addr>(src)?, v1_ip::<Ipv4Addr>(dst)?),
                "TCP6" => (v1_ip::<Ipv6Addr>(src)?, v1_ip::<Ipv6Addr>(dst)?),
                _ => return Err(Error::V1Syntax("protocol is not TCP4, TCP6 or UNKNOWN")),
            };
            let (sport, dport) = (v1_port(sport)?, v1_port(dport)?);
            Ok(Parsed::Done(Header {
                len,
                addrs: Some((SocketAddr::new(src, sport), SocketAddr::new(dst, dport))),
            }))
        }
        _ => Err(Error::V1Syntax(
            "expected 5 fields separated by single spaces",
        )),
    }
}

fn v1_ip<T: std::str::FromStr + Into<IpAddr>>(s: &str) -> Result<IpAddr, Error> {
    s.parse::<T>()
        .map(Into::into)
        .map_err(|_| Error::V1Syntax("bad address"))
}

/// A port: 0-65535 in decimal, no sign, no leading zero (the spec's grammar).
fn v1_port(s: &str) -> Result<u16, Error> {
    let digits = !s.is_empty() && s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit());
    if !digits || (s.len() > 1 && s.starts_with('0')) {
        return Err(Error::V1Syntax("bad port"));
    }
    s.parse().map_err(|_| Error::V1Syntax("bad port"))
}

fn parse_v2(buf: &[u8], limit: usize) -> Result<Parsed, Error> {
    if buf.len() < V2_FIXED {
        // Check what is there already, so garbage is refused without waiting.
        if let Some(&vc) = buf.get(12) {
            check_v2_version_command(vc)?;
        }
        return Ok(Parsed::Partial);
    }
    let vc = buf[12];
    check_v2_version_command(vc)?;
    let fam = buf[13];
    let body = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    let len = V2_FIXED + body;
    if len > limit {
        return Err(Error::V2TooLong(len, limit));
    }
    let local = vc & 0x0f == 0;
    let need = match fam {
        0x00 => 0,          // UNSPEC
        0x11 | 0x12 => 12,  // TCP/UDP over IPv4
        0x21 | 0x22 => 36,  // TCP/UDP over IPv6
        0x31 | 0x32 => 216, // Unix stream/dgram
        _ if local => 0,
        _ => return Err(Error::V2Family(fam)),
    };
    if body < need {
        return Err(Error::V2Length { len: body, need });
    }
    if buf.len() < len {
        return Ok(Parsed::Partial);
    }
    // LOCAL: a health check from the balancer itself; keep the socket's addresses.
    if local {
        return Ok(Parsed::Done(Header { len, addrs: None }));
    }
    let a = &buf[V2_FIXED..];
    let addrs = match fam {
        0x11 => {
            let ip = |o: usize| IpAddr::from([a[o], a[o + 1], a[o + 2], a[o + 3]]);
            let port = |o: usize| u16::from_be_bytes([a[o], a[o + 1]]);
            Some((
                SocketAddr::new(ip(0), port(8)),
                SocketAddr::new(ip(4), port(10)),
            ))
        }
        0x21 => {
            let ip = |o: usize| {
                let mut b = [0u8; 16];
                b.copy_from_slice(&a[o..o + 16]);
                IpAddr::from(b)
            };
            let port = |o: usize| u16::from_be_bytes([a[o], a[o + 1]]);
            Some((
                SocketAddr::new(ip(0), port(32)),
                SocketAddr::new(ip(16), port(34)),
            ))
        }
        // UNSPEC, UDP and Unix senders: nothing a TCP connection's peer can become.
        _ => None,
    };
    Ok(Parsed::Done(Header { len, addrs }))
}

fn check_v2_version_command(vc: u8) -> Result<(), Error> {
    if vc >> 4 != 2 {
        return Err(Error::V2Version(vc >> 4));
    }
    if vc & 0x0f > 1 {
        return Err(Error::V2Command(vc & 0x0f));
    }
    Ok(())
}

/// The header announcing a connection from `src` to `dst`; None stands for a client
/// without an IP address (a Unix socket): `UNKNOWN` (v1) or `LOCAL` (v2), so the
/// receiver keeps its own view of the connection.
pub fn encode(version: Version, addrs: Option<(SocketAddr, SocketAddr)>) -> Vec<u8> {
    // Mixed families (an IPv4 client on an IPv6 listener) are sent as IPv6, with the
    // v4 address mapped, as HAProxy does.
    let addrs = addrs.map(|(s, d)| match (s, d) {
        (SocketAddr::V4(_), SocketAddr::V6(_)) => (to_v6(s), d),
        (SocketAddr::V6(_), SocketAddr::V4(_)) => (s, to_v6(d)),
        _ => (s, d),
    });
    match version {
        Version::V1 => match addrs {
            Some((s, d)) => {
                let proto = if s.is_ipv4() { "TCP4" } else { "TCP6" };
                format!(
                    "PROXY {proto} {} {} {} {}\r\n",
                    s.ip(),
                    d.ip(),
                    s.port(),
                    d.port()
                )
                .into_bytes()
            }
            None => b"PROXY UNKNOWN\r\n".to_vec(),
        },
        Version::V2 => {
            let mut out = V2_SIGNATURE.to_vec();
            match addrs {
                Some((SocketAddr::V4(s), SocketAddr::V4(d))) => {
                    out.extend_from_slice(&[0x21, 0x11, 0, 12]);
                    out.extend_from_slice(&s.ip().octets());
                    out.extend_from_slice(&d.ip().octets());
                    out.extend_from_slice(&s.port().to_be_bytes());
                    out.extend_from_slice(&d.port().to_be_bytes());
                }
                Some((s, d)) => {
                    let v6 = |a: SocketAddr| match a.ip() {
                        IpAddr::V6(ip) => ip.octets(),
                        IpAddr::V4(ip) => ip.to_ipv6_mapped().octets(),
                    };
                    out.extend_from_slice(&[0x21, 0x21, 0, 36]);
                    out.extend_from_slice(&v6(s));
                    out.extend_from_slice(&v6(d));
                    out.extend_from_slice(&s.port().to_be_bytes());
                    out.extend_from_slice(&d.port().to_be_bytes());
                }
                None => out.extend_from_slice(&[0x20, 0x00, 0, 0]),
            }
            out
        }
    }
}

fn to_v6(a: SocketAddr) -> SocketAddr {
    match a.ip() {
        IpAddr::V4(ip) => SocketAddr::new(IpAddr::V6(ip.to_ipv6_mapped()), a.port()),
        IpAddr::V6(_) => a,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BIG: usize = V2_MAX;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn done(buf: &[u8]) -> Header {
        match parse(buf, BIG) {
            Ok(Parsed::Done(h)) => h,
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(buf)),
        }
    }

    fn err(buf: &[u8]) -> Error {
        match parse(buf, BIG) {
            Err(e) => e,
            other => panic!("{:?} accepted: {other:?}", String::from_utf8_lossy(buf)),
        }
    }

    /// Found by the proxy_protocol fuzz target: the verdict on a bare LF depended on
    /// whether the CR after it had arrived.
    #[test]
    fn a_bare_lf_is_refused_however_the_line_arrives() {
        let line = b"PROXY UNKNOWN x\ny\r\n";
        assert_eq!(err(line), Error::V1Syntax("LF without CR"));
        assert_eq!(err(&line[..16]), Error::V1Syntax("LF without CR"));
    }

    #[test]
    fn v1_tcp4_tcp6_unknown() {
        let h = done(b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\nGET /");
        assert_eq!(h.len, 45);
        assert_eq!(
            h.addrs,
            Some((sa("192.0.2.1:56324"), sa("198.51.100.2:443")))
        );
        let h = done(b"PROXY TCP6 2001:db8::1 ::1 65535 0\r\n");
        assert_eq!(h.addrs, Some((sa("[2001:db8::1]:65535"), sa("[::1]:0"))));
        let h = done(b"PROXY UNKNOWN\r\n");
        assert_eq!((h.len, h.addrs), (15, None));
        let h = done(b"PROXY UNKNOWN ffff:f::1 ::1 1 2\r\nx");
        assert_eq!(h.addrs, None);
    }

    #[test]
    fn v1_every_prefix_is_partial() {
        let full = b"PROXY TCP4 10.0.0.1 10.0.0.2 1000 2000\r\n";
        for n in 0..full.len() {
            assert_eq!(parse(&full[..n], BIG), Ok(Parsed::Partial), "{n} bytes");
        }
        assert_eq!(done(full).len, full.len());
    }

    #[test]
    fn v1_malformed() {
        for bad in [
            &b"PROXY TCP4 10.0.0.1 10.0.0.2 1000 2000\n"[..], // LF only
            b"PROXY TCP4 10.0.0.1 10.0.0.2 1000 2000\rX",
            b"PROXY TCP4 10.0.0.1 10.0.0.2 1000\r\n", // a field short
            b"PROXY TCP4 10.0.0.1 10.0.0.2 1000 2000 9\r\n", // a field too many
            b"PROXY TCP4  10.0.0.1 10.0.0.2 1000 2000\r\n", // double space
            b"PROXY TCP4 10.0.0.1 10.0.0.2 1000 2000 \r\n", // trailing space
            b"PROXY TCP5 10.0.0.1 10.0.0.2 1000 2000\r\n",
            b"PROXY tcp4 10.0.0.1 10.0.0.2 1000 2000\r\n",
            b"PROXY TCP4 10.0.0.256 10.0.0.2 1000 2000\r\n",
            b"PROXY TCP4 ::1 10.0.0.2 1000 2000\r\n", // v6 in TCP4
            b"PROXY TCP6 10.0.0.1 ::1 1000 2000\r\n", // v4 in TCP6
            b"PROXY TCP4 10.0.0.1 10.0.0.2 65536 2000\r\n", // port out of range
            b"PROXY TCP4 10.0.0.1 10.0.0.2 -1 2000\r\n",
            b"PROXY TCP4 10.0.0.1 10.0.0.2 +1 2000\r\n",
            b"PROXY TCP4 10.0.0.1 10.0.0.2 0080 2000\r\n", // leading zero
            b"PROXY TCP4 10.0.0.1 10.0.0.2 100000 2000\r\n",
            b"PROXY TCP4 10.0.0.1 10.0.0.2  2000\r\n", // empty port
            b"PROXY TCP4 10.0.0.1 10.0.0.2 1000 2000\xff\r\n",
            b"PROXY \r\n",
        ] {
            assert!(
                matches!(err(bad), Error::V1Syntax(_)),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(err(b"GET / HTTP/1.1\r\n"), Error::Signature);
        assert_eq!(err(b"PROXX"), Error::Signature);
        assert_eq!(err(b"proxy "), Error::Signature);
    }

    #[test]
    fn v1_length_limit() {
        // 107 bytes with the CRLF at the very end: the longest legal header.
        let mut max = b"PROXY UNKNOWN ".to_vec();
        max.resize(V1_MAX - 2, b'x');
        max.extend_from_slice(b"\r\n");
        assert_eq!(done(&max).len, V1_MAX);
        // One more byte before the CRLF: refused, and so is a long line with no CR.
        let mut long = b"PROXY UNKNOWN ".to_vec();
        long.resize(V1_MAX - 1, b'x');
        assert_eq!(
            parse(&long, BIG),
            Ok(Parsed::Partial),
            "106 bytes may still end"
        );
        long.extend_from_slice(b"\r\n");
        assert_eq!(err(&long), Error::V1TooLong);
        let mut endless = b"PROXY TCP4 ".to_vec();
        endless.resize(500, b'1');
        assert_eq!(err(&endless), Error::V1TooLong);
    }

    fn v2(vc: u8, fam: u8, body: &[u8]) -> Vec<u8> {
        let mut b = V2_SIGNATURE.to_vec();
        b.extend_from_slice(&[vc, fam]);
        b.extend_from_slice(&(body.len() as u16).to_be_bytes());
        b.extend_from_slice(body);
        b
    }

    #[test]
    fn v2_round_trips_and_tlvs_are_skipped() {
        for (s, d) in [
            (sa("192.0.2.1:56324"), sa("198.51.100.2:443")),
            (sa("[2001:db8::1]:1"), sa("[::1]:65535")),
        ] {
            for version in [Version::V1, Version::V2] {
                let mut b = encode(version, Some((s, d)));
                let n = b.len();
                b.extend_from_slice(b"payload");
                let h = done(&b);
                assert_eq!((h.len, h.addrs), (n, Some((s, d))), "{version:?}");
            }
        }
        // A TLV (here a 5-byte ALPN) after the addresses is skipped.
        let mut body = vec![127, 0, 0, 1, 127, 0, 0, 2, 0x30, 0x39, 0, 80];
        body.extend_from_slice(&[0x01, 0, 2, b'h', b'2']);
        let b = v2(0x21, 0x11, &body);
        let h = done(&b);
        assert_eq!(h.len, b.len());
        assert_eq!(h.addrs, Some((sa("127.0.0.1:12345"), sa("127.0.0.2:80"))));
        // Mixed families go out as IPv6.
        let b = encode(Version::V2, Some((sa("10.0.0.1:5"), sa("[::1]:6"))));
        assert_eq!(
            done(&b).addrs,
            Some((sa("[::ffff:10.0.0.1]:5"), sa("[::1]:6")))
        );
    }

    #[test]
    fn v2_local_unspec_unix_keep_the_sockets_addresses() {
        let b = encode(Version::V2, None);
        assert_eq!(done(&b).addrs, None);
        assert_eq!(done(&b).len, 16);
        // LOCAL with addresses present: still LOCAL.
        let b = v2(0x20, 0x11, &[1; 12]);
        assert_eq!(
            done(&b),
            Header {
                len: 28,
                addrs: None
            }
        );
        // LOCAL with an unknown family is fine too (the spec says ignore it).
        assert_eq!(done(&v2(0x20, 0xff, &[])).addrs, None);
        assert_eq!(done(&v2(0x21, 0x00, &[])).addrs, None);
        assert_eq!(done(&v2(0x21, 0x31, &[0; 216])).addrs, None);
        assert_eq!(done(&v2(0x21, 0x12, &[0; 12])).addrs, None, "UDP");
    }

    #[test]
    fn v2_every_prefix_is_partial() {
        let full = encode(
            Version::V2,
            Some((sa("[2001:db8::1]:1"), sa("[2001:db8::2]:2"))),
        );
        for n in 0..full.len() {
            assert_eq!(parse(&full[..n], BIG), Ok(Parsed::Partial), "{n} bytes");
        }
    }

    #[test]
    fn v2_malformed() {
        let addr4 = [127, 0, 0, 1, 127, 0, 0, 2, 0, 1, 0, 2];
        assert_eq!(err(&v2(0x11, 0x11, &addr4)), Error::V2Version(1));
        assert_eq!(err(&v2(0x31, 0x11, &addr4)), Error::V2Version(3));
        assert_eq!(err(&v2(0x22, 0x11, &addr4)), Error::V2Command(2));
        assert_eq!(err(&v2(0x21, 0x13, &addr4)), Error::V2Family(0x13));
        assert_eq!(err(&v2(0x21, 0x41, &addr4)), Error::V2Family(0x41));
        // Length lies: shorter than the addresses it announces.
        assert_eq!(
            err(&v2(0x21, 0x11, &addr4[..11])),
            Error::V2Length { len: 11, need: 12 }
        );
        assert_eq!(
            err(&v2(0x21, 0x21, &[0; 12])),
            Error::V2Length { len: 12, need: 36 }
        );
        // A bad version is refused as soon as its byte is there.
        let mut b = V2_SIGNATURE.to_vec();
        b.push(0x10);
        assert_eq!(err(&b), Error::V2Version(1));
        // Length longer than the bytes sent: partial until the caller's limit.
        let mut b = v2(0x21, 0x11, &addr4);
        b[14..16].copy_from_slice(&1000u16.to_be_bytes());
        assert_eq!(parse(&b, BIG), Ok(Parsed::Partial));
        assert_eq!(parse(&b, 512), Err(Error::V2TooLong(1016, 512)));
        // A broken signature.
        let mut b = v2(0x21, 0x11, &addr4);
        b[5] = b'X';
        assert_eq!(err(&b), Error::Signature);
        assert_eq!(err(b"\r\n\r\nGET"), Error::Signature);
    }

    #[test]
    fn unix_clients_are_unknown_or_local() {
        assert_eq!(encode(Version::V1, None), b"PROXY UNKNOWN\r\n");
        let b = encode(Version::V2, None);
        assert_eq!(&b[12..], &[0x20, 0, 0, 0]);
    }
}
