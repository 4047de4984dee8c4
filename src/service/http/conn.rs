//! `http`'s connection state: one request after the other on a connection (heads,
//! bodies being discarded, the header timer, the lingering close), each answered
//! with the precomputed bytes.

use std::rc::Rc;
use std::time::Duration;

use super::chunked::{ChunkError, Decoder, Step};
use super::parse::{parse, Parsed};
use super::refusal::Refusal;
use super::response::{Persist, Shared};
use super::Http;
use crate::service::{Handler, Io, Service};
use std::net::IpAddr;

/// After an error response (or `Connection: close`), how long the connection keeps
/// reading and discarding before it really closes. Closing a socket that still has
/// unread input makes the kernel send RST, which can destroy the response before the
/// client has read it; so we send FIN first, drain, and close when the client does —
/// or after this long (nginx's "lingering close").
const LINGER: Duration = Duration::from_secs(2);

/// Line-end bytes tolerated before a request line (RFC 9112 §2.2 asks to ignore at
/// least one empty line, e.g. the CRLF some clients send after a POST body). The
/// first empty line is free; more start the header timer as a request would (so a
/// client trickling `\r\n` cannot keep a connection open past `header_timeout`,
/// nor reset the idle timeout with them); more than this many bytes get a 400.
pub(crate) const MAX_BLANK: usize = 16;
/// The bytes of the one free empty line (CRLF).
const FREE_BLANK: usize = 2;

impl Service for Http {
    fn connect(&mut self, _peer: Option<IpAddr>) -> Box<dyn Handler> {
        Box::new(HttpConn {
            shared: Rc::clone(&self.shared),
            discard: 0,
            chunks: None,
            after_body: None,
            scanned: 0,
            blank: 0,
            head_timer: false,
            closing: false,
        })
    }
}

/// The response owed once a request's body has been read.
#[derive(Clone, Copy, Debug)]
struct Owed {
    persist: Persist,
    head: bool,
}

struct HttpConn {
    shared: Rc<Shared>,
    /// Body bytes of the current request still to be read and thrown away.
    discard: u64,
    /// The current request's chunked body being read and thrown away.
    chunks: Option<Decoder>,
    /// The current request's response, sent once its body is gone.
    after_body: Option<Owed>,
    /// Bytes of the incomplete head already searched for its end.
    scanned: usize,
    /// Line-end bytes received since the last request (see `MAX_BLANK`).
    blank: usize,
    /// The header timer runs (an incomplete head is waiting).
    head_timer: bool,
    /// The last response is out and we only wait for the client to go (see `LINGER`).
    closing: bool,
}

impl HttpConn {
    /// Sends the response owed for a request; false if the connection now closes.
    fn respond(&mut self, io: &mut Io<'_>, owed: Owed) -> bool {
        let persist = if io.draining() {
            Persist::Close
        } else {
            owed.persist
        };
        {
            let responses = self.shared.responses.borrow();
            let c = responses.ok(persist);
            io.write(if owed.head {
                &c.bytes[..c.head_len]
            } else {
                &c.bytes
            });
        }
        if persist == Persist::Close {
            self.linger(io);
            return false;
        }
        true
    }

    /// Sends an error response and closes.
    fn refuse(&mut self, io: &mut Io<'_>, r: Refusal) {
        self.shared.refresh_date();
        io.write(&self.shared.responses.borrow().refusal(r).bytes);
        self.linger(io);
    }

    /// The last response is queued: FIN after it, then read and discard until the
    /// client closes or `LINGER` passes.
    fn linger(&mut self, io: &mut Io<'_>) {
        self.closing = true;
        self.discard = 0;
        self.chunks = None;
        self.after_body = None;
        self.head_timer = false;
        io.shutdown_write();
        io.set_timer(LINGER);
    }
}

impl Handler for HttpConn {
    fn on_data(&mut self, io: &mut Io<'_>, data: &[u8]) -> usize {
        if self.closing {
            return data.len();
        }
        self.shared.refresh_date();
        let mut pos = 0;
        while pos < data.len() {
            if let Some(decoder) = &mut self.chunks {
                match decoder.feed(&data[pos..]) {
                    Ok(Step::More(n)) => {
                        pos += n;
                        break;
                    }
                    Ok(Step::Done(n)) => {
                        pos += n;
                        self.chunks = None;
                        if let Some(owed) = self.after_body.take() {
                            if !self.respond(io, owed) {
                                return data.len();
                            }
                        }
                        continue;
                    }
                    Err(e) => {
                        self.refuse(
                            io,
                            match e {
                                ChunkError::Malformed => Refusal::BadRequest,
                                ChunkError::TooLarge => Refusal::BodyTooLarge,
                                ChunkError::TrailersTooLarge => Refusal::TooLarge,
                            },
                        );
                        return data.len();
                    }
                }
            }
            if self.discard > 0 {
                let n = usize::try_from(self.discard)
                    .unwrap_or(usize::MAX)
                    .min(data.len() - pos);
                pos += n;
                self.discard -= n as u64;
                if self.discard > 0 {
                    break;
                }
                if let Some(owed) = self.after_body.take() {
                    if !self.respond(io, owed) {
                        return data.len();
                    }
                }
                continue;
            }
            // Empty lines before a request line are tolerated, within bounds (see
            // `MAX_BLANK`).
            if matches!(data[pos], b'\r' | b'\n') {
                pos += 1;
                self.blank += 1;
                if self.blank > MAX_BLANK {
                    self.refuse(io, Refusal::BadRequest);
                    return data.len();
                }
                continue;
            }
            match parse(&data[pos..], self.scanned, self.shared.max_head) {
                Parsed::Partial => {
                    self.scanned = data.len() - pos;
                    break;
                }
                Parsed::Refuse(r) => {
                    self.refuse(io, r);
                    return data.len();
                }
                Parsed::Done(req) => {
                    self.scanned = 0;
                    self.blank = 0;
                    if self.head_timer {
                        self.head_timer = false;
                        io.clear_timer();
                    }
                    pos += req.len;
                    let owed = Owed {
                        persist: match (req.keep_alive, req.v11) {
                            (false, _) => Persist::Close,
                            (true, true) => Persist::KeepAlive11,
                            (true, false) => Persist::KeepAlive10,
                        },
                        head: req.head,
                    };
                    let max_body = self.shared.max_body;
                    if max_body > 0 && req.body > max_body {
                        self.refuse(io, Refusal::BodyTooLarge);
                        return data.len();
                    }
                    if req.body == 0 && !req.chunked {
                        if !self.respond(io, owed) {
                            return data.len();
                        }
                        continue;
                    }
                    let arrived = (data.len() - pos) as u64;
                    let waits = if req.chunked {
                        self.chunks = Some(Decoder::new(max_body, self.shared.max_head));
                        arrived == 0
                    } else {
                        self.discard = req.body;
                        arrived < req.body
                    };
                    self.after_body = Some(owed);
                    if req.expect_continue && req.v11 && waits {
                        // The client waits for this before it sends the body.
                        io.write(b"HTTP/1.1 100 Continue\r\n\r\n");
                    }
                }
            }
        }
        let partial = (pos < data.len() || self.blank > FREE_BLANK)
            && self.discard == 0
            && self.chunks.is_none();
        if partial && !self.head_timer {
            // A request has started: its head must be complete in time.
            self.head_timer = true;
            io.set_timer(self.shared.header_timeout);
        }
        pos
    }

    fn on_timer(&mut self, io: &mut Io<'_>) {
        if self.closing {
            io.close();
        } else if self.head_timer {
            if io.input_held() {
                // We stopped reading the rest of the head ourselves (the client has
                // not read its responses yet): not the client's delay. `on_resume`
                // starts the clock again.
                return;
            }
            self.head_timer = false;
            self.refuse(io, Refusal::Timeout);
        }
    }

    fn on_resume(&mut self, io: &mut Io<'_>) {
        // The header timeout counts only time spent waiting for the client's bytes:
        // from the later of the head's start and the end of our own pause.
        if self.head_timer && !self.closing {
            io.set_timer(self.shared.header_timeout);
        }
    }

    fn is_idle(&self) -> bool {
        // Between requests: no body being read, no head pending (the loop also checks
        // that nothing is buffered either way), not in the middle of closing.
        !self.closing && self.discard == 0 && self.chunks.is_none() && !self.head_timer
    }
}
