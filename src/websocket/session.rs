//! A WebSocket connection's protocol side, for a handler to hold: it answers the
//! handshake (or refuses it and closes), answers pings, answers a close and closes,
//! closes with the right code on a protocol error, and hands the handler only what
//! is its business: the opening, and each whole text or binary message.

use crate::service::Io;

use super::{close, handshake, pong, Decoder, Handshake, Message, Step};

/// What a [`Session`] hands its handler.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The handshake is done (answered `101`): greet the client, subscribe it.
    Opened {
        path: String,
        origin: Option<String>,
    },
    Text(String),
    Binary(Vec<u8>),
}

/// A WebSocket connection's protocol state: before the handshake, or open with its
/// frame decoder.
#[derive(Clone, Debug)]
pub struct Session {
    max_message: usize,
    decoder: Option<Decoder>,
}

impl Session {
    /// A connection that has not shaken hands yet; messages over `max_message` bytes
    /// close it (1009).
    pub fn new(max_message: usize) -> Session {
        Session {
            max_message,
            decoder: None,
        }
    }

    /// A connection already open (one resumed after a move: its handshake was done by
    /// the worker it moved from).
    pub fn opened(max_message: usize) -> Session {
        Session {
            max_message,
            decoder: Some(Decoder::new(max_message)),
        }
    }

    /// The handshake is done.
    pub fn is_open(&self) -> bool {
        self.decoder.is_some()
    }

    /// Open and not in the middle of a fragmented message: a point where the
    /// connection can move with nothing but [`Session::opened`] to rebuild it.
    pub fn is_between_messages(&self) -> bool {
        self.decoder.as_ref().is_some_and(|d| !d.in_message())
    }

    /// Takes what it can of `data` (a handler's `on_data` input): returns how much it
    /// used (the handler's return value) and the events for the handler, in order.
    /// After a close, a refusal or a protocol error the connection is closing
    /// (`io.close()` was called) and the rest of `data` is used up.
    pub fn read(&mut self, io: &mut Io<'_>, data: &[u8]) -> (usize, Vec<Event>) {
        let mut events = Vec::new();
        let mut used = 0;
        if self.decoder.is_none() {
            match handshake(data) {
                Handshake::Incomplete => return (0, events),
                Handshake::Refused(r) => {
                    io.write(&r.response());
                    io.close();
                    return (data.len(), events);
                }
                Handshake::Upgrade(up) => {
                    io.write(&up.accept());
                    self.decoder = Some(Decoder::new(self.max_message));
                    used = up.used;
                    events.push(Event::Opened {
                        path: up.path,
                        origin: up.origin,
                    });
                }
            }
        }
        let Some(decoder) = self.decoder.as_mut() else {
            return (used, events);
        };
        loop {
            match decoder.step(&data[used..]) {
                Ok(Step::More) => return (used, events),
                Ok(Step::Frame { used: n, message }) => {
                    used += n;
                    match message {
                        Some(Message::Text(t)) => events.push(Event::Text(t)),
                        Some(Message::Binary(b)) => events.push(Event::Binary(b)),
                        Some(Message::Ping(p)) => io.write(&pong(&p)),
                        Some(Message::Close(_)) => {
                            io.write(&close(1000, ""));
                            io.close();
                            return (data.len(), events);
                        }
                        Some(Message::Pong(_)) | None => {}
                    }
                }
                Err(e) => {
                    io.write(&e.close_frame());
                    io.close();
                    return (data.len(), events);
                }
            }
        }
    }
}
