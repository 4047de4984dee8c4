//! A streaming decoder for `Transfer-Encoding: chunked` request bodies (RFC 9112 §7.1),
//! which this origin reads and throws away like any body. It keeps a few words of
//! state, never buffers chunk data, and consumes only whole lines, so an incomplete
//! size or trailer line stays in the loop's input buffer (bounded by [`MAX_LINE`] and
//! the trailer limit) until the rest arrives.
//!
//! Strict where lenience is how requests get smuggled past a proxy in front of us:
//! line ends are CRLF only (no bare LF or CR), a chunk size is 1 to 16 hex digits
//! with nothing but optional whitespace and `;extensions` after it, chunk data must be
//! followed by exactly CRLF, extensions and trailer fields hold no control bytes, and
//! a trailer field is `name: value` with a token name. Trailers are ignored.

/// Longest chunk-size line (size and extensions) accepted; nginx and HAProxy allow
/// about this much too.
pub const MAX_LINE: usize = 4096;

/// Why a body was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkError {
    /// Not chunked framing: a 400 and a close.
    Malformed,
    /// More body than `max_body_size` allows: a 413 and a close.
    TooLarge,
    /// Trailer fields larger than `max_header_size`: a 431 and a close.
    TrailersTooLarge,
}

/// What one call to [`Decoder::feed`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Consumed this many bytes; the body goes on (the rest is an incomplete line).
    More(usize),
    /// The body ended after this many bytes (the last chunk, trailers and blank line).
    Done(usize),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Expecting a chunk-size line.
    Size,
    /// Inside chunk data: this many bytes left.
    Data(u64),
    /// Chunk data ended: expecting its CRLF.
    DataEnd,
    /// After the last chunk: trailer fields until a blank line.
    Trailers,
}

/// Decodes one chunked body.
#[derive(Clone, Debug)]
pub struct Decoder {
    state: State,
    /// Chunk data seen so far.
    body: u64,
    /// Trailer bytes seen so far.
    trailers: usize,
    max_body: u64,
    max_trailers: usize,
}

impl Decoder {
    /// `max_body`: largest total of chunk data (0 = no limit); `max_trailers`: largest
    /// trailer section.
    pub fn new(max_body: u64, max_trailers: usize) -> Decoder {
        Decoder {
            state: State::Size,
            body: 0,
            trailers: 0,
            max_body: if max_body == 0 { u64::MAX } else { max_body },
            max_trailers,
        }
    }

    /// Feeds the bytes that follow what earlier calls consumed.
    pub fn feed(&mut self, data: &[u8]) -> Result<Step, ChunkError> {
        let mut pos = 0;
        loop {
            let rest = &data[pos..];
            match self.state {
                State::Data(left) => {
                    let n = usize::try_from(left).unwrap_or(usize::MAX).min(rest.len());
                    pos += n;
                    let left = left - n as u64;
                    if left > 0 {
                        self.state = State::Data(left);
                        return Ok(Step::More(pos));
                    }
                    self.state = State::DataEnd;
                }
                State::DataEnd => match rest {
                    [b'\r', b'\n', ..] => {
                        pos += 2;
                        self.state = State::Size;
                    }
                    [] | [b'\r'] => return Ok(Step::More(pos)),
                    _ => return Err(ChunkError::Malformed),
                },
                State::Size => {
                    let Some(line) = crlf_line(rest, MAX_LINE, ChunkError::Malformed)? else {
                        return Ok(Step::More(pos));
                    };
                    pos += line.len() + 2;
                    let size = chunk_size(line)?;
                    self.body = self
                        .body
                        .checked_add(size)
                        .filter(|&b| b <= self.max_body)
                        .ok_or(ChunkError::TooLarge)?;
                    self.state = if size == 0 {
                        State::Trailers
                    } else {
                        State::Data(size)
                    };
                }
                State::Trailers => {
                    let room = self.max_trailers.saturating_sub(self.trailers);
                    let Some(line) = crlf_line(rest, room, ChunkError::TrailersTooLarge)? else {
                        return Ok(Step::More(pos));
                    };
                    pos += line.len() + 2;
                    self.trailers += line.len() + 2;
                    if line.is_empty() {
                        return Ok(Step::Done(pos));
                    }
                    if !trailer_is_valid(line) {
                        return Err(ChunkError::Malformed);
                    }
                }
            }
        }
    }
}

/// The line at the start of `buf` without its CRLF, None if it has not ended yet.
/// A bare CR or LF is malformed; a line longer than `max` is `too_long`.
fn crlf_line(buf: &[u8], max: usize, too_long: ChunkError) -> Result<Option<&[u8]>, ChunkError> {
    // Only the first `max` + 1 bytes are looked at (a line of `max` bytes and its
    // CR), whether they arrived together or not: the verdict on a line must not depend
    // on how the network cut it (once a 400 here and a 431 there).
    let limit = buf.len().min(max.saturating_add(1));
    for i in 0..limit {
        match buf[i] {
            b'\n' => return Err(ChunkError::Malformed),
            b'\r' => {
                return match buf.get(i + 1) {
                    Some(b'\n') => Ok(Some(&buf[..i])),
                    Some(_) => Err(ChunkError::Malformed),
                    None => Ok(None),
                }
            }
            _ => {}
        }
    }
    if buf.len() > max {
        Err(too_long)
    } else {
        Ok(None)
    }
}

/// `1*HEXDIG [ BWS ";" chunk-ext ]`, at most 16 digits (leading zeros count).
fn chunk_size(line: &[u8]) -> Result<u64, ChunkError> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 16 {
        return Err(ChunkError::Malformed);
    }
    let text = std::str::from_utf8(&line[..digits]).map_err(|_| ChunkError::Malformed)?;
    let size = u64::from_str_radix(text, 16).map_err(|_| ChunkError::Malformed)?;
    let after = &line[digits..];
    let ext = after.trim_ascii_start();
    let ok = match ext.first() {
        None => after.is_empty(), // whitespace with no extension after it: refused
        Some(b';') => ext.iter().all(|&b| b == b'\t' || (b >= b' ' && b != 0x7f)),
        Some(_) => false,
    };
    if ok {
        Ok(size)
    } else {
        Err(ChunkError::Malformed)
    }
}

/// `field-name ":" OWS field-value OWS` with a token name and no control bytes.
fn trailer_is_valid(line: &[u8]) -> bool {
    let Some(colon) = line.iter().position(|&b| b == b':') else {
        return false;
    };
    let name = &line[..colon];
    !name.is_empty()
        && name.iter().all(|&b| super::is_tchar(b))
        && line[colon + 1..]
            .iter()
            .all(|&b| b == b'\t' || (b >= b' ' && b != 0x7f))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole(body: &[u8]) -> Result<Step, ChunkError> {
        Decoder::new(0, 8192).feed(body)
    }

    #[test]
    fn a_body_ends_after_the_last_chunk_and_its_blank_line() {
        let body = b"5\r\nhello\r\n1a;name=\"v\"\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\n\r\nGET";
        assert_eq!(whole(body), Ok(Step::Done(body.len() - 3)));
        let with_trailers = b"3\r\nabc\r\n0\r\nX-Sum: 1\r\nX-Other:\r\n\r\n";
        assert_eq!(whole(with_trailers), Ok(Step::Done(with_trailers.len())));
    }

    #[test]
    fn any_split_of_the_input_gives_the_same_result() {
        let body: &[u8] = b"5\r\nhello\r\n10\r\n0123456789abcdef\r\n0;x\r\nT: v\r\n\r\n";
        for cut in 0..body.len() {
            for cut2 in cut..body.len() {
                let mut d = Decoder::new(0, 8192);
                let mut buf = Vec::new();
                let mut done = None;
                for piece in [&body[..cut], &body[cut..cut2], &body[cut2..]] {
                    buf.extend_from_slice(piece);
                    match d.feed(&buf).unwrap() {
                        Step::More(n) => {
                            buf.drain(..n);
                        }
                        Step::Done(n) => {
                            done = Some(n);
                            buf.drain(..n);
                            break;
                        }
                    }
                }
                assert!(done.is_some() && buf.is_empty(), "split {cut}/{cut2}");
            }
        }
    }

    /// Found by the `chunked` fuzz target: a trailer line longer than the limit with a
    /// bare LF just past it was a 400 when it arrived whole and a 431 byte by byte.
    #[test]
    fn an_overlong_line_is_too_long_however_it_arrives() {
        let body = b"0\r\n0123456789abcdefg\nX";
        let mut whole = Decoder::new(0, 16);
        assert_eq!(whole.feed(body), Err(ChunkError::TrailersTooLarge));
        let mut d = Decoder::new(0, 16);
        let mut buf = Vec::new();
        let mut last = Ok(Step::More(0));
        for &b in body {
            buf.push(b);
            last = d.feed(&buf);
            match last {
                Ok(Step::More(n)) => drop(buf.drain(..n)),
                _ => break,
            }
        }
        assert_eq!(last, Err(ChunkError::TrailersTooLarge));
        // A line of exactly the limit still ends normally.
        let fits = b"0\r\n0123456789abcdef:x\r\n\r\n";
        assert_eq!(Decoder::new(0, 18).feed(fits), Ok(Step::Done(fits.len())));
    }

    #[test]
    fn malformed_framing_is_refused() {
        let bad: &[&[u8]] = &[
            b"\r\n",                     // no size
            b"x\r\n",                    // not hex
            b"-1\r\n",                   // sign
            b"+5\r\nhello\r\n0\r\n\r\n", // sign
            b"5\n",                      // bare LF
            b"5\rhello",                 // bare CR
            b"5 \r\nhello\r\n0\r\n\r\n", // whitespace, no extension
            b"5 x\r\n",                  // junk after the size
            b"5\r\nhelloXY0\r\n\r\n",    // data not followed by CRLF
            b"5\r\nhello\n0\r\n\r\n",    // data followed by bare LF
            b"0\r\nno colon\r\n\r\n",    // bad trailer
            b"0\r\nbad name: v\r\n\r\n", // space in a trailer name
            b"0\r\n: v\r\n\r\n",         // empty trailer name
            b"0;\x01\r\n\r\n",           // control byte in an extension
            b"00000000000000001\r\n",    // 17 digits
        ];
        for b in bad {
            assert_eq!(
                whole(b),
                Err(ChunkError::Malformed),
                "{}",
                String::from_utf8_lossy(b)
            );
        }
    }

    #[test]
    fn sizes_do_not_overflow_and_limits_hold() {
        assert_eq!(
            whole(b"ffffffffffffffff\r\n"),
            Ok(Step::More(18)),
            "16 digits is the largest size and is accepted"
        );
        let mut d = Decoder::new(0, 8192);
        assert_eq!(d.feed(b"ffffffffffffffff\r\n"), Ok(Step::More(18)));
        d.state = State::DataEnd;
        assert_eq!(
            d.feed(b"\r\n1\r\n"),
            Err(ChunkError::TooLarge),
            "total overflows"
        );
        let mut d = Decoder::new(10, 8192);
        assert_eq!(d.feed(b"6\r\nabcdef\r\n"), Ok(Step::More(11)));
        assert_eq!(d.feed(b"5\r\n"), Err(ChunkError::TooLarge));
        let long = [b"1;".as_slice(), &[b'a'; MAX_LINE]].concat();
        assert_eq!(
            whole(&long),
            Err(ChunkError::Malformed),
            "size line too long"
        );
        let mut trailers = b"0\r\n".to_vec();
        for _ in 0..100 {
            trailers.extend_from_slice(b"X-Pad: 0123456789012345678901234567890123456789\r\n");
        }
        assert_eq!(
            Decoder::new(0, 1024).feed(&trailers),
            Err(ChunkError::TrailersTooLarge)
        );
    }

    #[test]
    fn an_incomplete_line_is_left_unconsumed() {
        let mut d = Decoder::new(0, 8192);
        assert_eq!(d.feed(b"5\r\nhel"), Ok(Step::More(6)));
        assert_eq!(d.feed(b"lo\r"), Ok(Step::More(2)));
        assert_eq!(d.feed(b"\r\n1"), Ok(Step::More(2)));
        assert_eq!(d.feed(b"1f"), Ok(Step::More(0)));
    }
}
