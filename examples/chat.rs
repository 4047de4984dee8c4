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

use std::net::IpAddr;

use corral::config::ListenConfig;
use corral::service::{Handler, Io, ResumeError, Service, Suspended};

/// Longest line a client may send.
const MAX_LINE: usize = 2048;
/// Longest nickname or room name.
const MAX_NAME: usize = 32;
/// The suspended state's format: `nick \n room`.
const STATE_VERSION: u32 = 1;

struct Chat;

struct Member {
    /// A guest name from `on_open` until `/nick`.
    nick: String,
    room: String,
}

impl Service for Chat {
    fn connect(&mut self, _peer: Option<IpAddr>) -> Box<dyn Handler> {
        Box::new(Member {
            nick: String::new(),
            room: "lobby".into(),
        })
    }

    fn resume(
        &mut self,
        _peer: Option<IpAddr>,
        state: &[u8],
        version: u32,
    ) -> Result<Box<dyn Handler>, ResumeError> {
        if version != STATE_VERSION {
            return Err(ResumeError::Version(version));
        }
        let s = std::str::from_utf8(state).map_err(|e| ResumeError::Invalid(e.to_string()))?;
        let (nick, room) = s
            .split_once('\n')
            .ok_or_else(|| ResumeError::Invalid("no room".into()))?;
        Ok(Box::new(Member {
            nick: nick.into(),
            room: room.into(),
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
                    io.write(format!("-> *{to}* {text}\n").as_bytes());
                }
                _ => io.write(b"! /msg NAME TEXT\n"),
            },
            "/quit" => {
                self.notice(io, &format!("{} left", self.nick));
                io.write(b"* bye\n");
                io.close();
            }
            "/nick" | "/join" => io
                .write(format!("! names are 1 to {MAX_NAME} letters, digits, _ or -\n").as_bytes()),
            _ => io.write(b"! commands: /nick NAME, /join ROOM, /msg NAME TEXT, /quit\n"),
        }
    }
}

impl Handler for Member {
    fn on_open(&mut self, io: &mut Io<'_>) {
        // Unique across workers: a worker's pid and the connection's id in it.
        self.nick = format!("guest{}x{}", std::process::id(), io.id());
        io.subscribe(&user_topic(&self.nick));
        io.subscribe(&room_topic(&self.room));
        io.write(
            format!(
                "* welcome, {}; you are in {} (/nick NAME, /join ROOM, /msg NAME TEXT, /quit)\n",
                self.nick, self.room
            )
            .as_bytes(),
        );
        self.notice(io, &format!("{} joined {}", self.nick, self.room));
    }

    fn on_data(&mut self, io: &mut Io<'_>, data: &[u8]) -> usize {
        let mut used = 0;
        while let Some(end) = data[used..].iter().position(|&b| b == b'\n') {
            let line = String::from_utf8_lossy(&data[used..used + end]).into_owned();
            let line = line.trim_end_matches('\r');
            used += end + 1;
            if line.starts_with('/') {
                self.command(io, line);
            } else if !line.is_empty() {
                self.say(io, line);
            }
        }
        if data.len() - used > MAX_LINE {
            io.write(b"! line too long\n");
            io.close();
            return data.len();
        }
        used
    }

    fn is_idle(&self) -> bool {
        true
    }

    /// Name and room travel; the subscriptions travel with the connection itself.
    fn suspend(&mut self) -> Option<Suspended> {
        Some(Suspended::new(
            STATE_VERSION,
            format!("{}\n{}", self.nick, self.room).into_bytes(),
        ))
    }
}

fn main() -> std::process::ExitCode {
    corral::runtime!()
        .service("chat", |_: &ListenConfig| Chat)
        .run()
}
