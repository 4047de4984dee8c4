//! Frames (RFC 6455 §5): a decoder of what a client sends (masked, possibly
//! fragmented, control frames between the fragments) into whole messages, and the
//! encoders of what a server sends (unmasked, one frame per message).

/// A frame's opcode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opcode {
    Continuation = 0,
    Text = 1,
    Binary = 2,
    Close = 8,
    Ping = 9,
    Pong = 10,
}

impl Opcode {
    fn of(b: u8) -> Option<Opcode> {
        Some(match b {
            0 => Opcode::Continuation,
            1 => Opcode::Text,
            2 => Opcode::Binary,
            8 => Opcode::Close,
            9 => Opcode::Ping,
            10 => Opcode::Pong,
            _ => return None,
        })
    }

    fn is_control(self) -> bool {
        (self as u8) >= 8
    }
}

/// A whole message from the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    Text(String),
    Binary(Vec<u8>),
    /// Answer with [`pong`] and the same payload.
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    /// The client closes, with its code and reason if it gave them: answer with
    /// [`close`] and close the connection.
    Close(Option<(u16, String)>),
}

/// Input that breaks the protocol: send [`ProtocolError::close_frame`] and close.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProtocolError {
    /// The close code: 1002 (protocol error), 1007 (not UTF-8), 1009 (too big).
    pub code: u16,
    pub reason: &'static str,
}

impl ProtocolError {
    fn new(code: u16, reason: &'static str) -> ProtocolError {
        ProtocolError { code, reason }
    }

    /// The close frame that tells the client why.
    pub fn close_frame(&self) -> Vec<u8> {
        close(self.code, self.reason)
    }
}

impl std::fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WebSocket protocol error {}: {}", self.code, self.reason)
    }
}

impl std::error::Error for ProtocolError {}

/// What one call of [`Decoder::step`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// The next frame is not complete: read more (nothing was used).
    More,
    /// One frame, `used` bytes of input; a message if the frame completed one.
    Frame {
        used: usize,
        message: Option<Message>,
    },
}

/// Turns a client's frames into messages, one frame per [`step`](Decoder::step).
#[derive(Clone, Debug)]
pub struct Decoder {
    max_message: usize,
    /// A fragmented data message under way: its opcode and what arrived of it.
    partial: Option<(Opcode, Vec<u8>)>,
}

impl Decoder {
    /// A decoder that refuses messages of more than `max_message` bytes (1009).
    pub fn new(max_message: usize) -> Decoder {
        Decoder {
            max_message,
            partial: None,
        }
    }

    /// Whether a fragmented message is under way (its first fragments are held here,
    /// not in the input: a connection in that state has state to carry).
    pub fn in_message(&self) -> bool {
        self.partial.is_some()
    }

    /// Decodes the frame at the start of `data`.
    pub fn step(&mut self, data: &[u8]) -> Result<Step, ProtocolError> {
        let proto = |reason| Err(ProtocolError::new(1002, reason));
        let [b0, b1, ..] = *data else {
            return Ok(Step::More);
        };
        if b0 & 0x70 != 0 {
            return proto("reserved bits set (no extension was negotiated)");
        }
        let Some(op) = Opcode::of(b0 & 0x0f) else {
            return proto("unknown opcode");
        };
        let fin = b0 & 0x80 != 0;
        if b1 & 0x80 == 0 {
            return proto("a client's frames must be masked");
        }
        let (len, at) = match b1 & 0x7f {
            126 => match data.get(2..4) {
                Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
                None => return Ok(Step::More),
            },
            127 => match data.get(2..10) {
                Some(b) => {
                    let mut n = [0; 8];
                    n.copy_from_slice(b);
                    (u64::from_be_bytes(n), 10)
                }
                None => return Ok(Step::More),
            },
            n => (u64::from(n), 2),
        };
        if len >> 63 != 0 {
            return proto("payload length with its top bit set");
        }
        if op.is_control() && (!fin || len > 125) {
            return proto("a control frame is one frame of at most 125 bytes");
        }
        let held = self.partial.as_ref().map_or(0, |(_, b)| b.len());
        if !op.is_control() && len.saturating_add(held as u64) > self.max_message as u64 {
            return Err(ProtocolError::new(1009, "message too big"));
        }
        let len = len as usize;
        let Some(mask) = data.get(at..at + 4) else {
            return Ok(Step::More);
        };
        let start = at + 4;
        let Some(masked) = data.get(start..start + len) else {
            return Ok(Step::More);
        };
        let payload: Vec<u8> = masked
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ mask[i % 4])
            .collect();
        let message = self.message(op, fin, payload)?;
        Ok(Step::Frame {
            used: start + len,
            message,
        })
    }

    fn message(
        &mut self,
        op: Opcode,
        fin: bool,
        payload: Vec<u8>,
    ) -> Result<Option<Message>, ProtocolError> {
        let proto = |reason| Err(ProtocolError::new(1002, reason));
        let (op, whole) = match op {
            Opcode::Ping => return Ok(Some(Message::Ping(payload))),
            Opcode::Pong => return Ok(Some(Message::Pong(payload))),
            Opcode::Close => return close_message(&payload).map(Some),
            Opcode::Continuation => {
                let Some((first, mut held)) = self.partial.take() else {
                    return proto("a continuation frame with no message to continue");
                };
                held.extend_from_slice(&payload);
                if !fin {
                    self.partial = Some((first, held));
                    return Ok(None);
                }
                (first, held)
            }
            Opcode::Text | Opcode::Binary => {
                if self.partial.is_some() {
                    return proto("a new message inside a fragmented one");
                }
                if !fin {
                    self.partial = Some((op, payload));
                    return Ok(None);
                }
                (op, payload)
            }
        };
        Ok(Some(if op == Opcode::Text {
            Message::Text(
                String::from_utf8(whole)
                    .map_err(|_| ProtocolError::new(1007, "a text message that is not UTF-8"))?,
            )
        } else {
            Message::Binary(whole)
        }))
    }
}

fn close_message(payload: &[u8]) -> Result<Message, ProtocolError> {
    match payload {
        [] => Ok(Message::Close(None)),
        [_] => Err(ProtocolError::new(1002, "a close frame with half a code")),
        [a, b, reason @ ..] => {
            let code = u16::from_be_bytes([*a, *b]);
            // The codes a peer may send (§7.4.1, §7.4.2; 1004-1006 and 1015 never
            // appear on the wire).
            if !matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999) {
                return Err(ProtocolError::new(1002, "an invalid close code"));
            }
            let reason = std::str::from_utf8(reason)
                .map_err(|_| ProtocolError::new(1007, "a close reason that is not UTF-8"))?;
            Ok(Message::Close(Some((code, reason.to_string()))))
        }
    }
}

/// One unmasked frame with FIN set (what a server sends).
pub fn frame(op: Opcode, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 10);
    out.push(0x80 | op as u8);
    match payload.len() {
        n @ 0..=125 => out.push(n as u8),
        n @ 126..=0xffff => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
    out
}

/// A text message.
pub fn text(s: &str) -> Vec<u8> {
    frame(Opcode::Text, s.as_bytes())
}

/// A binary message.
pub fn binary(b: &[u8]) -> Vec<u8> {
    frame(Opcode::Binary, b)
}

/// The answer to a ping.
pub fn pong(payload: &[u8]) -> Vec<u8> {
    frame(Opcode::Pong, &payload[..payload.len().min(125)])
}

/// A close frame with `code` and `reason` (cut to fit a control frame, at a
/// character boundary).
pub fn close(code: u16, reason: &str) -> Vec<u8> {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    frame(Opcode::Close, &payload)
}
