//! `http`'s parsers as [`crate::fuzzing`] sees them: the head parser's verdict with the
//! method, target and fields it read (for the differential check against httparse),
//! and the chunked decoder. Nothing here runs in a worker.

use super::parse::{self, next_line, trim_ows, Parsed};

pub use super::chunked::{ChunkError, Decoder, Step};

/// What the head parser made of the start of a buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict<'a> {
    /// The head is incomplete and nothing wrong has been seen yet.
    Partial,
    /// A valid head of `len` bytes.
    Accept(Head<'a>),
    /// Refused with this status (400, 431, 501).
    Refuse(u16),
}

/// A head the parser accepted, as it read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head<'a> {
    pub len: usize,
    pub method: &'a [u8],
    pub target: &'a [u8],
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor: u8,
    /// Names as sent, values without surrounding whitespace.
    pub fields: Vec<(&'a [u8], &'a [u8])>,
    pub keep_alive: bool,
    pub body: u64,
    pub chunked: bool,
}

/// Parses the request at the start of `buf` as a worker does once leading empty
/// lines are skipped (see `conn::MAX_BLANK`).
pub fn parse_head(buf: &[u8], max_head: usize) -> Verdict<'_> {
    match parse::parse(buf, 0, max_head) {
        Parsed::Partial => Verdict::Partial,
        Parsed::Refuse(r) => Verdict::Refuse(r.status()),
        Parsed::Done(req) => {
            // The parser validated every line; split them again the way it does.
            let (line, mut rest) = next_line(&buf[..req.len]).unwrap_or_default();
            let mut parts = line.split(|&b| b == b' ');
            let method = parts.next().unwrap_or_default();
            let target = parts.next().unwrap_or_default();
            let mut fields = Vec::new();
            while let Some((line, after)) = next_line(rest) {
                rest = after;
                let Some(colon) = line.iter().position(|&b| b == b':') else {
                    break;
                };
                fields.push((&line[..colon], trim_ows(&line[colon + 1..])));
            }
            Verdict::Accept(Head {
                len: req.len,
                method,
                target,
                minor: u8::from(req.v11),
                fields,
                keep_alive: req.keep_alive,
                body: req.body,
                chunked: req.chunked,
            })
        }
    }
}
