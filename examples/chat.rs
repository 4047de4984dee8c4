//! A chat server on corral: rooms and nicknames over a line protocol, any number of
//! workers (a room's messages cross workers through corral's topics), and a deploy
//! (`-s reload`, `-s upgrade`) that nobody in the chat notices: connections move with
//! their nickname, room and subscriptions.
//!
//! ```text
//! cargo run --release --example chat -- -c examples/chat.toml
//! nc 127.0.0.1 7474     # in two terminals; then type lines
//! ```
//!
//! Commands: `/nick NAME`, `/join ROOM` (everyone starts in `lobby`),
//! `/msg NAME TEXT` (a private message), `/quit`; any other line is said to the room
//! (and comes back to the speaker too, as everyone hears it). Names are not reserved:
//! two clients may take the same one (both then get its private messages).
//!
//! Browsers join over WebSocket (`service = "chat-ws"`, `examples/chat.html`): the
//! same commands and lines, one text message each, in the same rooms as the line
//! clients (the topics are shared).

use std::net::IpAddr;

use corral::config::ListenConfig;
use corral::service::{Handler, Io, ResumeError, Service, Suspended};
use corral::websocket::{self, Event, Session};

/// Longest line a client may send.
const MAX_LINE: usize = 2048;
/// Longest nickname or room name.
const MAX_NAME: usize = 32;
/// The suspended state's format: `nick \n room` (a line client).
const STATE_VERSION: u32 = 1;
/// The same, for an open WebSocket.
const WS_STATE_VERSION: u32 = 2;

/// `chat` (lines) or `chat-ws` (WebSocket).
struct Chat {
    ws: bool,
}

/// How a member's bytes are framed.
enum Wire {
    Lines,
    Ws(Session),
}

struct Member {
    /// A guest name from `on_open` until `/nick`.
    nick: String,
    room: String,
    wire: Wire,
}

impl Service for Chat {
    fn connect(&mut self, _peer: Option<IpAddr>) -> Box<dyn Handler> {
        Box::new(Member {
            nick: String::new(),
            room: "lobby".into(),
            wire: if self.ws {
                Wire::Ws(Session::new(MAX_LINE))
            } else {
                Wire::Lines
            },
        })
    }

    fn resume(
        &mut self,
        _peer: Option<IpAddr>,
        state: &[u8],
        version: u32,
    ) -> Result<Box<dyn Handler>, ResumeError> {
        let wire = match (self.ws, version) {
            (false, STATE_VERSION) => Wire::Lines,
            (true, WS_STATE_VERSION) => Wire::Ws(Session::opened(MAX_LINE)),
            _ => return Err(ResumeError::Version(version)),
        };
        let s = std::str::from_utf8(state).map_err(|e| ResumeError::Invalid(e.to_string()))?;
        let (nick, room) = s
            .split_once('\n')
            .ok_or_else(|| ResumeError::Invalid("no room".into()))?;
        Ok(Box::new(Member {
            nick: nick.into(),
            room: room.into(),
            wire,
        }))
    }
}

fn user_topic(nick: &str) -> String {
    format!("user:{nick}")
}

fn room_topic(room: &str) -> String {
    format!("room:{room}")
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl Member {
    /// One line to this member, framed for its wire (`text` without its line end).
    fn send(&self, io: &mut Io<'_>, text: &str) {
        match &self.wire {
            Wire::Lines => io.write(format!("{text}\n").as_bytes()),
            Wire::Ws(ws) if ws.is_open() => io.write(&websocket::text(text)),
            Wire::Ws(_) => {}
        }
    }

    /// Joins the lobby under a guest name, once the wire is open.
    fn greet(&mut self, io: &mut Io<'_>) {
        // Unique across workers: a worker's pid and the connection's id in it.
        self.nick = format!("guest{}x{}", std::process::id(), io.id());
        io.subscribe(&user_topic(&self.nick));
        io.subscribe(&room_topic(&self.room));
        self.send(
            io,
            &format!(
                "* welcome, {}; you are in {} (/nick NAME, /join ROOM, /msg NAME TEXT, /quit)",
                self.nick, self.room
            ),
        );
        self.notice(io, &format!("{} joined {}", self.nick, self.room));
    }

    /// A line the member sent.
    fn line(&mut self, io: &mut Io<'_>, line: &str) {
        if line.starts_with('/') {
            self.command(io, line);
        } else if !line.is_empty() {
            self.say(io, line);
        }
    }

    fn say(&self, io: &mut Io<'_>, text: &str) {
        io.publish(
            &room_topic(&self.room),
            format!("<{}> {text}\n", self.nick).as_bytes(),
        );
    }

    fn notice(&self, io: &mut Io<'_>, text: &str) {
        io.publish(&room_topic(&self.room), format!("* {text}\n").as_bytes());
    }

    fn command(&mut self, io: &mut Io<'_>, line: &str) {
        let (cmd, rest) = line.split_once(' ').unwrap_or((line, ""));
        match cmd {
            "/nick" if valid_name(rest) => {
                let old = std::mem::replace(&mut self.nick, rest.to_string());
                io.unsubscribe(&user_topic(&old));
                io.subscribe(&user_topic(&self.nick));
                self.notice(io, &format!("{old} is now {}", self.nick));
            }
            "/join" if valid_name(rest) => {
                self.notice(io, &format!("{} left for {rest}", self.nick));
                io.unsubscribe(&room_topic(&self.room));
                self.room = rest.to_string();
                io.subscribe(&room_topic(&self.room));
                self.notice(io, &format!("{} joined {}", self.nick, self.room));
            }
            "/msg" => match rest.split_once(' ') {
                Some((to, text)) if valid_name(to) => {
                    let line = format!("*{}* {text}\n", self.nick);
                    io.publish(&user_topic(to), line.as_bytes());
                    self.send(io, &format!("-> *{to}* {text}"));
                }
                _ => self.send(io, "! /msg NAME TEXT"),
            },
            "/quit" => {
                self.notice(io, &format!("{} left", self.nick));
                self.send(io, "* bye");
                if matches!(self.wire, Wire::Ws(_)) {
                    io.write(&websocket::close(1000, "bye"));
                }
                io.close();
            }
            "/nick" | "/join" => self.send(
                io,
                &format!("! names are 1 to {MAX_NAME} letters, digits, _ or -"),
            ),
            _ => self.send(
                io,
                "! commands: /nick NAME, /join ROOM, /msg NAME TEXT, /quit",
            ),
        }
    }
}

impl Handler for Member {
    fn on_open(&mut self, io: &mut Io<'_>) {
        // A WebSocket member is greeted once its handshake is done.
        if matches!(self.wire, Wire::Lines) {
            self.greet(io);
        }
    }

    fn on_data(&mut self, io: &mut Io<'_>, data: &[u8]) -> usize {
        if !matches!(self.wire, Wire::Lines) {
            return self.on_ws_data(io, data);
        }
        let mut used = 0;
        while let Some(end) = data[used..].iter().position(|&b| b == b'\n') {
            let line = String::from_utf8_lossy(&data[used..used + end]).into_owned();
            used += end + 1;
            self.line(io, line.trim_end_matches('\r'));
        }
        if data.len() - used > MAX_LINE {
            io.write(b"! line too long\n");
            io.close();
            return data.len();
        }
        used
    }

    /// Room lines are published with their line end (for line clients); a
    /// WebSocket member gets each as one text message.
    fn on_push(&mut self, io: &mut Io<'_>, _topic: &str, message: &[u8]) {
        match &self.wire {
            Wire::Lines => io.write(message),
            Wire::Ws(ws) if ws.is_open() => {
                let text = String::from_utf8_lossy(message);
                io.write(&websocket::text(text.trim_end_matches('\n')));
            }
            Wire::Ws(_) => {}
        }
    }

    fn is_idle(&self) -> bool {
        match &self.wire {
            Wire::Ws(ws) => !ws.is_open() || ws.is_between_messages(),
            Wire::Lines => true,
        }
    }

    /// Name and room travel; the subscriptions travel with the connection itself. A
    /// WebSocket moves open (between messages), or before its handshake as a fresh
    /// connection.
    fn suspend(&mut self) -> Option<Suspended> {
        let version = match &self.wire {
            Wire::Lines => STATE_VERSION,
            Wire::Ws(ws) if ws.is_between_messages() => WS_STATE_VERSION,
            Wire::Ws(_) => return None,
        };
        Some(Suspended::new(
            version,
            format!("{}\n{}", self.nick, self.room).into_bytes(),
        ))
    }
}

impl Member {
    fn on_ws_data(&mut self, io: &mut Io<'_>, data: &[u8]) -> usize {
        let Wire::Ws(ws) = &mut self.wire else {
            return 0;
        };
        let (used, events) = ws.read(io, data);
        for event in events {
            match event {
                Event::Opened { .. } => self.greet(io),
                Event::Text(text) => {
                    for line in text.lines() {
                        self.line(io, line);
                    }
                }
                Event::Binary(_) => {
                    io.write(&websocket::close(1003, "text only"));
                    io.close();
                    return data.len();
                }
            }
        }
        used
    }
}

fn main() -> std::process::ExitCode {
    corral::runtime!()
        .service("chat", |_: &ListenConfig| Chat { ws: false })
        .service("chat-ws", |_: &ListenConfig| Chat { ws: true })
        .run()
}
