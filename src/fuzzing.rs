//! The fuzz targets' window into the crate (not an API: hidden from the docs, free to
//! change). Each function here takes the raw bytes a libFuzzer target receives, runs
//! one decoder that faces outside input, and panics when a property beyond "did not
//! crash" breaks: round trips where there is an encoder, agreement between a whole
//! and a piecewise feed where input streams in. `fuzz/fuzz_targets/` calls them, and
//! `cargo test` replays the seed corpora and every input that once failed
//! (`fuzz/corpus/`, `fuzz/regressions/`) through them, so internals stay
//! `pub(crate)`; only this module is public. The HTTP head parser's differential
//! check against httparse is in `http_diff` (with the `fuzzing` feature).

use std::fmt::Debug;
use std::path::Path;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::channel::{ToMaster, ToPredecessor, ToSuccessor, ToWorker};
use crate::config::{Config, ListenOptions, OptionError, RawOptions, Services};
use crate::proxy_protocol::{self as pp, Parsed};
use crate::service::{Handler, Service};

/// The HTTP head parser and the chunked decoder.
pub mod http {
    pub use crate::service::http::fuzzing::{parse_head, ChunkError, Decoder, Head, Step, Verdict};
}

#[cfg(any(test, feature = "fuzzing"))]
pub mod http_diff;
#[cfg(test)]
mod tests;

/// The chunked decoder: the body fed whole and fed in pieces (as the loop sees it,
/// unconsumed bytes kept and more appended) ends the same way; and any bytes, chunked
/// by a simple encoder, decode to exactly the encoded length.
pub fn chunked(data: &[u8]) {
    let Some((&seed, body)) = data.split_first() else {
        return;
    };
    let max_body = u64::from(seed >> 4) * 16; // 0: no limit
    let max_trailers = 16 + usize::from(seed & 15) * 64;
    let whole = feed(body, max_body, max_trailers, body.len().max(1));
    let piece = 1 + usize::from(seed % 7);
    let split = feed(body, max_body, max_trailers, piece);
    assert_eq!(whole, split, "whole vs pieces of {piece}");

    let size = 1 + usize::from(seed % 13);
    let mut enc = Vec::new();
    for c in body.chunks(size) {
        let hex = if seed & 1 == 0 {
            format!("{:x}", c.len())
        } else {
            format!("{:X};ext=1", c.len())
        };
        enc.extend_from_slice(hex.as_bytes());
        enc.extend_from_slice(b"\r\n");
        enc.extend_from_slice(c);
        enc.extend_from_slice(b"\r\n");
    }
    enc.extend_from_slice(b"0\r\nX-T: v\r\n\r\n");
    let encoded_len = enc.len();
    enc.extend_from_slice(b"GET / HTTP/1.1\r\n");
    assert_eq!(
        feed(&enc, 0, 1024, enc.len()),
        Ok(Some(encoded_len)),
        "encoded body"
    );
}

/// Feeds `body` to a decoder `piece` bytes at a time; where the body ended, None if it
/// did not, or the error.
fn feed(
    body: &[u8],
    max_body: u64,
    max_trailers: usize,
    piece: usize,
) -> Result<Option<usize>, http::ChunkError> {
    let mut d = http::Decoder::new(max_body, max_trailers);
    let mut buf = Vec::new();
    let mut consumed = 0;
    for p in body.chunks(piece) {
        buf.extend_from_slice(p);
        match d.feed(&buf)? {
            http::Step::More(n) => {
                assert!(n <= buf.len(), "consumed {n} of {}", buf.len());
                consumed += n;
                buf.drain(..n);
            }
            http::Step::Done(n) => {
                assert!(n <= buf.len(), "ended at {n} of {}", buf.len());
                return Ok(Some(consumed + n));
            }
        }
    }
    Ok(None)
}

/// PROXY protocol v1 and v2: a header read in full reads the same from exactly its own
/// bytes, every shorter prefix of it waits for more, and its addresses survive the
/// encoder (both versions). Input that is not a header feeds the encoder instead.
pub fn proxy_protocol(data: &[u8]) {
    match pp::parse(data, pp::V2_MAX) {
        Ok(Parsed::Done(h)) => {
            assert!(h.len <= data.len());
            assert_eq!(pp::parse(&data[..h.len], pp::V2_MAX), Ok(Parsed::Done(h)));
            let step = (h.len / 64).max(1);
            for k in (0..h.len).step_by(step) {
                assert_eq!(
                    pp::parse(&data[..k], pp::V2_MAX),
                    Ok(Parsed::Partial),
                    "prefix of {k} bytes"
                );
            }
            // A smaller limit refuses a v2 header it cannot hold rather than waiting.
            if data.first() == Some(&b'\r') && h.len > 16 {
                assert!(pp::parse(data, h.len - 1).is_err());
            }
            if let Some(addrs) = h.addrs {
                encode_round_trip(addrs);
            }
        }
        Ok(Parsed::Partial) => assert!(data.len() < pp::V2_MAX),
        Err(_) => {}
    }
    if data.len() >= 36 {
        let ip = |b: &[u8]| -> std::net::IpAddr {
            if b[0] & 1 == 0 {
                std::net::Ipv4Addr::new(b[1], b[2], b[3], b[4]).into()
            } else {
                let mut o = [0u8; 16];
                o.copy_from_slice(&b[1..17]);
                std::net::Ipv6Addr::from(o).into()
            }
        };
        let port = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
        let src = std::net::SocketAddr::new(ip(&data[..17]), port(&data[34..36]));
        let dst = std::net::SocketAddr::new(ip(&data[17..34]), port(&data[32..34]));
        if src.is_ipv4() == dst.is_ipv4() {
            encode_round_trip((src, dst));
        }
    }
}

fn encode_round_trip(addrs: (std::net::SocketAddr, std::net::SocketAddr)) {
    for v in [pp::Version::V1, pp::Version::V2] {
        let bytes = pp::encode(v, Some(addrs));
        let back = pp::parse(&bytes, pp::V2_MAX);
        assert_eq!(
            back,
            Ok(Parsed::Done(pp::Header {
                len: bytes.len(),
                addrs: Some(addrs)
            })),
            "{v:?} of {addrs:?}"
        );
    }
}

/// The control socket's request line: the first byte says whether the client
/// half-closed; a request read survives the client's encoder.
pub fn control_request(data: &[u8]) {
    use crate::control::{parse_request, request_line};
    let Some((&flags, buf)) = data.split_first() else {
        return;
    };
    if let Ok(Some(req)) = parse_request(buf, flags & 1 == 1) {
        let line = request_line(&req).expect("a request encodes");
        let back = parse_request(&line, false).expect("an encoded request decodes");
        assert_eq!(back, Some(req));
    }
}

/// Master↔worker (and master↔master) channel messages: one packet is one JSON
/// message; whatever decodes re-encodes to something that decodes to the same. The
/// base64 of byte fields is canonical: text that decodes is what the encoder writes.
pub fn channel_message(data: &[u8]) {
    round_trip::<ToMaster>(data);
    round_trip::<ToWorker>(data);
    round_trip::<ToSuccessor>(data);
    round_trip::<ToPredecessor>(data);
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(bytes) = crate::channel::b64_decode(text) {
            assert_eq!(
                crate::channel::b64_encode(&bytes),
                text,
                "non-canonical base64"
            );
        }
    }
}

fn round_trip<T: Serialize + DeserializeOwned + PartialEq + Debug>(data: &[u8]) {
    if let Ok(msg) = serde_json::from_slice::<T>(data) {
        let bytes = serde_json::to_vec(&msg).expect("a decoded message encodes");
        let back: T = serde_json::from_slice(&bytes).expect("an encoded message decodes");
        assert_eq!(back, msg);
    }
}

/// Where the config target pretends its text was read from: relative paths resolve
/// below it, and nothing is ever created there.
const FUZZ_SOURCE: &str = "/nonexistent/corral-fuzz/corral.toml";

/// The config loader on a TOML string (defaults, the text, validation, service
/// options, user lookups), as at `-t`, start and reload; a config it accepts loads
/// again, unchanged, from its own serialization.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let source = Path::new(FUZZ_SOURCE);
    let Ok(config) = Config::load_str(text, source, &NoLookups) else {
        return;
    };
    let _ = config.warnings();
    let again = Config::reload_serialized(&config, source, &NoLookups)
        .unwrap_or_else(|e| panic!("a loaded config does not load again: {e}"));
    assert_eq!(again, config);
}

/// The service registry, except that a proxy upstream must be an `ip:port` literal:
/// a fuzzer must not send name lookups to the network.
struct NoLookups;

impl Services for NoLookups {
    fn names(&self) -> Vec<String> {
        crate::service::Registry.names()
    }

    fn parse(
        &self,
        service: &str,
        options: &RawOptions,
    ) -> Result<Arc<dyn ListenOptions>, OptionError> {
        let literal = |v: &figment::value::Value| {
            v.as_str()
                .is_some_and(|s| s.parse::<std::net::SocketAddr>().is_ok())
        };
        let named = options
            .get("upstreams")
            .and_then(|u| u.as_array())
            .is_some_and(|u| !u.iter().all(literal));
        if named {
            return Err(OptionError::new(
                "upstreams",
                "fuzzing: names are not resolved",
            ));
        }
        crate::service::Registry.parse(service, options)
    }
}

/// A built-in service as a worker makes it, for [`suspended_state`]: `echo`, `http`
/// or `proxy` (whose upstream is never contacted).
pub fn builtin_service(name: &str) -> Box<dyn Service> {
    let extra = if name == "proxy" {
        "upstreams = [\"127.0.0.1:9\"]\n"
    } else {
        ""
    };
    let text = format!("[[listen]]\naddress = \"127.0.0.1:1\"\nservice = \"{name}\"\n{extra}");
    match Config::load_str(&text, Path::new(FUZZ_SOURCE), &NoLookups) {
        Ok(c) => match crate::service::registry::make(&c.listen[0]) {
            Some(s) => s,
            None => panic!("no service named {name}"),
        },
        Err(e) => panic!("the {name} listener does not load: {e}"),
    }
}

/// A suspended-state format: the first four bytes are the version (little endian),
/// the rest the state. A handler that `service` resumes from them suspends again,
/// when it can, to exactly the same version and state.
pub fn suspended_state(service: &mut dyn Service, data: &[u8]) {
    let Some((version, state)) = data.split_first_chunk::<4>() else {
        return;
    };
    let version = u32::from_le_bytes(*version);
    if let Ok(mut handler) = service.resume(None, state, version) {
        if let Some(s) = Handler::suspend(handler.as_mut()) {
            assert_eq!(
                (s.version, &s.state[..]),
                (version, state),
                "state round trip"
            );
        }
    }
}

/// The record layer a moved TLS connection continues on (`tls::record`), fed bytes
/// from the wire: every record the header parser frames is opened (and fails to
/// authenticate, or opens to what was sealed), and never panics. Then a round trip:
/// the input, sealed in records of the sizes its first bytes pick, opens to itself
/// in every suite, in order, with the sequence numbers in step.
pub fn tls_record(data: &[u8]) {
    use crate::tls::record::{self, Direction, Opened, Suite, APPLICATION_DATA};
    let suites = [Suite::Aes128Gcm, Suite::Aes256Gcm, Suite::Chacha20Poly1305];
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let suite = suites[usize::from(pick) % 3];
    let key = vec![0x42u8; if suite == Suite::Aes128Gcm { 16 } else { 32 }];
    let dir = |seq| Direction::new(suite, &key, &[7; 12], seq).expect("key and IV fit");
    // The wire: frame records as the session does; open each.
    let mut rx = dir(0);
    let mut wire = rest.to_vec();
    let mut at = 0;
    while let Ok(Some(len)) = record::record_len(&wire[at..]) {
        if at + len > wire.len() {
            break;
        }
        let rec = &mut wire[at..at + len];
        match record::open(&mut rx, rec) {
            Ok(Opened::Data(n)) => assert!(n <= record::MAX_PLAINTEXT),
            Ok(Opened::CloseNotify) | Err(_) => {}
        }
        at += len;
    }
    // The round trip.
    let (mut tx, mut rx) = (dir(9), dir(9));
    let mut sealed = Vec::new();
    let mut chunks = Vec::new();
    let mut left = rest;
    let mut i = 0usize;
    while !left.is_empty() {
        let size = (usize::from(pick.wrapping_add(i as u8)) * 67 + 1).min(left.len());
        let (chunk, tail) = left.split_at(size.min(record::MAX_PLAINTEXT));
        record::seal(&mut tx, APPLICATION_DATA, chunk, &mut sealed).expect("seal");
        chunks.push(chunk);
        left = tail;
        i += 1;
    }
    let mut at = 0;
    for chunk in chunks {
        let len = record::record_len(&sealed[at..])
            .expect("a header we wrote")
            .expect("a whole record");
        let rec = &mut sealed[at..at + len];
        assert_eq!(record::open(&mut rx, rec), Ok(Opened::Data(chunk.len())));
        assert_eq!(&rec[..chunk.len()], chunk);
        at += len;
    }
    assert_eq!(at, sealed.len());
    assert_eq!(tx.seq, rx.seq);
}

/// A packet of the workers' bus (`worker::bus`), as a peer worker (perhaps a
/// compromised one) could write it: it decodes or is refused without a panic, and a
/// packet that decodes is exactly the encoding of what it decoded to (the format has
/// one spelling), with a topic within `MAX_TOPIC`.
pub fn bus_packet(data: &[u8]) {
    if let Some(msg) = crate::worker::bus::Msg::decode(data) {
        assert!(msg.topic.len() <= crate::service::push::MAX_TOPIC);
        assert_eq!(
            &*msg.encode(),
            data,
            "a decoded packet re-encodes to itself"
        );
    }
}

/// A client's bytes to a WebSocket service (`crate::websocket`): the opening
/// handshake and then frames, decoded with a 4 KiB message limit. Neither panics;
/// an accepted handshake uses no more than it was given; every frame uses at least
/// its two header bytes and no more than is there; a control message fits 125 bytes
/// and a data message the limit.
pub fn websocket(data: &[u8]) {
    use crate::websocket::{handshake, Decoder, Handshake, Message, Step};
    let mut at = 0;
    if let Handshake::Upgrade(up) = handshake(data) {
        assert!(up.used <= data.len());
        assert!(up.accept().starts_with(b"HTTP/1.1 101 "));
        at = up.used;
    }
    let mut d = Decoder::new(4096);
    while let Ok(Step::Frame { used, message }) = d.step(&data[at..]) {
        assert!(used >= 2 && used <= data.len() - at, "used {used}");
        at += used;
        match message {
            Some(Message::Ping(p) | Message::Pong(p)) => assert!(p.len() <= 125),
            Some(Message::Close(Some((_, reason)))) => assert!(reason.len() <= 123),
            Some(Message::Text(t)) => assert!(t.len() <= 4096),
            Some(Message::Binary(b)) => assert!(b.len() <= 4096),
            Some(Message::Close(None)) | None => {}
        }
    }
}
