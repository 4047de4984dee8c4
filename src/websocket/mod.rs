//! WebSocket (RFC 6455) for services of your own: the opening handshake, a decoder
//! of client frames and the encoders of server frames, as plain functions over bytes
//! so that they fit a [`Handler`](crate::service::Handler)'s `on_data`. A browser can
//! then be a subscriber of a push gateway or a chat (see `examples/push.rs`, service
//! `push-ws`).
//!
//! What a server must check is checked, and a failure is a protocol error with the
//! close code the RFC names, never a panic: a request that is not a version-13
//! upgrade is refused with its HTTP status (400, or 426 with the version this server
//! speaks); a frame that is unmasked, uses a reserved bit or opcode, a fragmented or
//! over-long control frame, a continuation out of place (1002), a message over the
//! service's limit (1009), a text message or close reason that is not UTF-8 (1007).
//! No extension (compression) and no subprotocol is negotiated; `Origin` is given to
//! the service, whose policy it is.
//!
//! ```
//! use corral::websocket::{self, Decoder, Handshake, Message, Step};
//!
//! // A browser's opening request (RFC 6455 §1.3's example key).
//! let req = b"GET /news HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\n\
//!             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
//!             Sec-WebSocket-Version: 13\r\n\r\n";
//! let Handshake::Upgrade(up) = websocket::handshake(req) else { panic!() };
//! assert_eq!(up.path, "/news");
//! assert_eq!(up.used, req.len());
//! let answer = String::from_utf8(up.accept()).unwrap();
//! assert!(answer.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
//!
//! // A masked text frame "hi" from the client, then our text frame back.
//! let frame = [0x81, 0x82, 1, 2, 3, 4, b'h' ^ 1, b'i' ^ 2];
//! let mut d = Decoder::new(1 << 16);
//! let Ok(Step::Frame { used, message }) = d.step(&frame) else { panic!() };
//! assert_eq!((used, message), (8, Some(Message::Text("hi".into()))));
//! assert_eq!(websocket::text("hi"), [0x81, 2, b'h', b'i']);
//! ```

mod frame;
mod handshake;

pub use frame::{binary, close, frame, pong, text, Decoder, Message, Opcode, ProtocolError, Step};
pub use handshake::{handshake, Handshake, Refusal, Upgrade, MAX_HEAD};

#[cfg(test)]
mod tests;
