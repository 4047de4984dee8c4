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
//! A handler usually holds a [`Session`], which does all of that and hands it only
//! the opening and whole messages; the functions below it are for a service that
//! frames its own way. An upper-casing WebSocket echo, driven by the test harness:
//!
//! ```
//! use corral::service::{Handler, Io};
//! use corral::testing::Harness;
//! use corral::websocket::{self, Event, Session};
//!
//! struct Shout(Session);
//!
//! impl Handler for Shout {
//!     fn on_data(&mut self, io: &mut Io<'_>, data: &[u8]) -> usize {
//!         let (used, events) = self.0.read(io, data);
//!         for e in events {
//!             if let Event::Text(t) = e {
//!                 io.write(&websocket::text(&t.to_uppercase()));
//!             }
//!         }
//!         used
//!     }
//! }
//!
//! let mut h = Harness::new(Shout(Session::new(4096)));
//! h.send(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
//!          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n");
//! assert!(h.take_written().starts_with(b"HTTP/1.1 101 "));
//! h.send(&[0x81, 0x82, 0, 0, 0, 0, b'h', b'i']); // "hi", masked with zeros
//! assert_eq!(h.take_written(), websocket::text("HI"));
//! h.send(&[0x88, 0x80, 0, 0, 0, 0]); // the client closes
//! assert!(h.closed());
//! ```
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
mod session;

pub use frame::{binary, close, frame, pong, text, Decoder, Message, Opcode, ProtocolError, Step};
pub use handshake::{handshake, Handshake, Refusal, Upgrade, MAX_HEAD};
pub use session::{Event, Session};

#[cfg(test)]
mod tests;
