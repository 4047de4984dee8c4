//! A push gateway on corral: clients subscribe to topics over a line protocol, a
//! backend publishes by HTTP (or an operator with `push publish`), and every
//! subscriber in every worker gets each message as one line. Subscriptions move with
//! their connections through `-s reload` and `-s upgrade`: a deploy reconnects nobody.
//!
//! ```text
//! cargo run --release --example push -- -c examples/push.toml
//! nc 127.0.0.1 7272            # then type: SUB news
//! curl -d 'hello' http://127.0.0.1:7273/publish/news
//! target/release/examples/push publish news 'hello again' -c examples/push.toml
//! ```
//!
//! Subscribers (`service = "push"`), one command per line, no reply unless asked:
//! `SUB topic`, `UNSUB topic`, `PING` (answered `PONG`: everything sent before it has
//! taken effect, so a client knows its subscriptions are in place), `QUIT`.
//! Each message published to a topic arrives as one line (a message's own line ends
//! are replaced by spaces).
//!
//! Browsers (`service = "push-ws"`): the same commands and messages over WebSocket,
//! one text message each (`new WebSocket("ws://127.0.0.1:7274/")`, then
//! `ws.send("SUB news")`); a client that breaks the protocol gets a close frame with
//! the reason. Its subscriptions move with it like a line subscriber's.
//!
//! Publishers (`service = "push-publish"`): `POST /publish/<topic>` with the message
//! as the body (HTTP/1.1, keep-alive), answered `204 No Content`; only from the
//! addresses in `allow` (default: loopback), others get `403`. The listener's address
//! is the other half of its protection: keep it on loopback or a private network.
//!
//! ```toml
//! [[listen]]
//! address = "127.0.0.1:7272"
//! service = "push"
//! slow = "drop"         # or "disconnect": a subscriber over write_high_water of
//!                       # unread output loses the message, or its connection
//!
//! [[listen]]
//! address = "127.0.0.1:7273"
//! service = "push-publish"
//! allow = ["127.0.0.1", "::1"]
//! ```

use std::net::IpAddr;

use corral::config::{ListenConfig, OptionError};
use corral::serde::{Deserialize, Serialize};
use corral::service::{Handler, Io, Overflow, ResumeError, Service, ServiceOptions, Suspended};
use corral::websocket::{self, Event, Session};

/// Longest command line a subscriber may send.
const MAX_LINE: usize = 1024;
/// Largest HTTP request (head and body) a publisher may send.
const MAX_REQUEST: usize = 64 << 10;

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(crate = "corral::serde", deny_unknown_fields)]
struct PushOptions {
    /// "drop" (default) or "disconnect".
    #[serde(default)]
    slow: Option<String>,
}

impl PushOptions {
    fn overflow(&self) -> Overflow {
        match self.slow.as_deref() {
            Some("disconnect") => Overflow::Disconnect,
            _ => Overflow::Drop,
        }
    }
}

impl ServiceOptions for PushOptions {
    fn check(&mut self) -> Result<(), OptionError> {
        match self.slow.as_deref() {
            None | Some("drop") | Some("disconnect") => Ok(()),
            Some(_) => Err(OptionError::new("slow", "is \"drop\" or \"disconnect\"")),
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(crate = "corral::serde", deny_unknown_fields)]
struct PublishOptions {
    /// Client addresses allowed to publish; default loopback only.
    #[serde(default)]
    allow: Option<Vec<String>>,
}

impl ServiceOptions for PublishOptions {
    fn check(&mut self) -> Result<(), OptionError> {
        for a in self.allow.iter().flatten() {
            if a.parse::<IpAddr>().is_err() {
                return Err(OptionError::new(
                    "allow",
                    format!("{a:?} is not an IP address"),
                ));
            }
        }
        Ok(())
    }
}

struct Push {
    overflow: Overflow,
}

struct Subscriber;

/// What a subscriber asked for, whichever way it came.
enum Command<'a> {
    Sub(&'a str),
    Unsub(&'a str),
    Ping,
    Quit,
    Empty,
    Unknown,
}

fn command(line: &str) -> Command<'_> {
    match line.split_once(' ') {
        Some(("SUB", topic)) if !topic.is_empty() => Command::Sub(topic),
        Some(("UNSUB", topic)) => Command::Unsub(topic),
        _ if line == "PING" => Command::Ping,
        _ if line == "QUIT" => Command::Quit,
        _ if line.is_empty() => Command::Empty,
        _ => Command::Unknown,
    }
}

const USAGE: &str = "ERROR commands are SUB topic, UNSUB topic, PING, QUIT";

impl Service for Push {
    fn connect(&mut self, _peer: Option<IpAddr>) -> Box<dyn Handler> {
        Box::new(Subscriber)
    }
    fn overflow(&self) -> Overflow {
        self.overflow
    }
}

impl Handler for Subscriber {
    fn on_data(&mut self, io: &mut Io<'_>, data: &[u8]) -> usize {
        let mut used = 0;
        while let Some(end) = data[used..].iter().position(|&b| b == b'\n') {
            let line = String::from_utf8_lossy(&data[used..used + end]);
            let line = line.trim_end_matches('\r');
            used += end + 1;
            match command(line) {
                Command::Sub(topic) => io.subscribe(topic),
                Command::Unsub(topic) => io.unsubscribe(topic),
                Command::Ping => io.write(b"PONG\n"),
                Command::Quit => {
                    io.close();
                    return data.len();
                }
                Command::Empty => {}
                Command::Unknown => io.write(format!("{USAGE}\n").as_bytes()),
            }
        }
        if data.len() - used > MAX_LINE {
            io.write(b"ERROR line too long\n");
            io.close();
            return data.len();
        }
        used
    }

    fn on_push(&mut self, io: &mut Io<'_>, _topic: &str, message: &[u8]) {
        // One line per message, whatever the publisher sent. A message without line
        // ends (the usual case) is written as it is: no copy per subscriber.
        if message.iter().any(|&b| b == b'\n' || b == b'\r') {
            let line: Vec<u8> = message
                .iter()
                .map(|&b| if b == b'\n' || b == b'\r' { b' ' } else { b })
                .collect();
            io.write(&line);
        } else {
            io.write(message);
        }
        io.write(b"\n");
    }

    /// Between lines nothing is in flight: the connection (and, through corral, its
    /// subscriptions) may move at a reload.
    fn is_idle(&self) -> bool {
        true
    }
}

/// Browsers: the subscriber's commands over WebSocket.
struct PushWs {
    overflow: Overflow,
}

/// The state format a moving WebSocket subscriber carries: "open" (its handshake
/// is done; its subscriptions travel with the connection through corral).
const WS_STATE: u32 = 1;

impl Service for PushWs {
    fn connect(&mut self, _peer: Option<IpAddr>) -> Box<dyn Handler> {
        Box::new(WsSubscriber {
            ws: Session::new(MAX_LINE),
        })
    }

    fn resume(
        &mut self,
        _peer: Option<IpAddr>,
        state: &[u8],
        version: u32,
    ) -> Result<Box<dyn Handler>, ResumeError> {
        match (version, state) {
            (WS_STATE, b"open") => Ok(Box::new(WsSubscriber {
                ws: Session::opened(MAX_LINE),
            })),
            (WS_STATE, _) => Err(ResumeError::Invalid("not an open WebSocket".into())),
            _ => Err(ResumeError::Version(version)),
        }
    }

    fn overflow(&self) -> Overflow {
        self.overflow
    }
}

struct WsSubscriber {
    ws: Session,
}

impl Handler for WsSubscriber {
    fn on_data(&mut self, io: &mut Io<'_>, data: &[u8]) -> usize {
        let (used, events) = self.ws.read(io, data);
        for event in events {
            let line = match event {
                Event::Opened { .. } => continue,
                Event::Text(line) => line,
                Event::Binary(_) => {
                    io.write(&websocket::close(1003, "text commands only"));
                    io.close();
                    return data.len();
                }
            };
            match command(line.trim_end()) {
                Command::Sub(topic) => io.subscribe(topic),
                Command::Unsub(topic) => io.unsubscribe(topic),
                Command::Ping => io.write(&websocket::text("PONG")),
                Command::Quit => {
                    io.write(&websocket::close(1000, "bye"));
                    io.close();
                    return data.len();
                }
                Command::Empty => {}
                Command::Unknown => io.write(&websocket::text(USAGE)),
            }
        }
        used
    }

    fn on_push(&mut self, io: &mut Io<'_>, _topic: &str, message: &[u8]) {
        if !self.ws.is_open() {
            return;
        }
        match std::str::from_utf8(message) {
            Ok(text) => io.write(&websocket::text(text)),
            Err(_) => io.write(&websocket::binary(message)),
        }
    }

    /// Before its handshake or between messages nothing is in flight.
    fn is_idle(&self) -> bool {
        !self.ws.is_open() || self.ws.is_between_messages()
    }

    /// An open WebSocket moves as such (the new worker must not expect a
    /// handshake); one in the middle of a fragmented message waits for its end.
    fn suspend(&mut self) -> Option<Suspended> {
        self.ws
            .is_between_messages()
            .then(|| Suspended::new(WS_STATE, b"open".to_vec()))
    }
}

struct Publish {
    allow: Vec<IpAddr>,
}

struct Publisher {
    allowed: bool,
}

impl Service for Publish {
    fn connect(&mut self, peer: Option<IpAddr>) -> Box<dyn Handler> {
        let allowed = peer.is_some_and(|p| self.allow.contains(&p));
        Box::new(Publisher { allowed })
    }
}

/// One parsed request head: (method, path, body length, head length, keep-alive).
type Head = (String, String, usize, usize, bool);

/// None while the head is incomplete; an error status for a request refused.
fn parse_head(data: &[u8]) -> Option<Result<Head, &'static str>> {
    let end = data.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = match std::str::from_utf8(&data[..end]) {
        Ok(h) => h,
        Err(_) => return Some(Err("400 Bad Request")),
    };
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or("").split(' ');
    let (Some(method), Some(path), Some(version)) = (first.next(), first.next(), first.next())
    else {
        return Some(Err("400 Bad Request"));
    };
    let mut len = 0;
    let mut keep = version == "HTTP/1.1";
    for l in lines {
        let Some((k, v)) = l.split_once(':') else {
            continue;
        };
        let v = v.trim();
        if k.eq_ignore_ascii_case("content-length") {
            match v.parse() {
                Ok(n) => len = n,
                Err(_) => return Some(Err("400 Bad Request")),
            }
        } else if k.eq_ignore_ascii_case("transfer-encoding") {
            return Some(Err("411 Length Required"));
        } else if k.eq_ignore_ascii_case("connection") {
            keep = !v.eq_ignore_ascii_case("close");
        }
    }
    Some(Ok((method.into(), path.into(), len, end + 4, keep)))
}

impl Handler for Publisher {
    fn on_data(&mut self, io: &mut Io<'_>, data: &[u8]) -> usize {
        let mut used = 0;
        loop {
            let rest = &data[used..];
            let (method, path, len, head, keep) = match parse_head(rest) {
                None if rest.len() > MAX_REQUEST => {
                    return self.fail(io, "431 Request Header Fields Too Large", data.len())
                }
                None => return used,
                Some(Err(status)) => return self.fail(io, status, data.len()),
                Some(Ok(r)) => r,
            };
            if head + len > MAX_REQUEST {
                return self.fail(io, "413 Content Too Large", data.len());
            }
            if rest.len() < head + len {
                return used; // the body is still coming
            }
            let body = &rest[head..head + len];
            used += head + len;
            let status = match (method.as_str(), path.strip_prefix("/publish/")) {
                _ if !self.allowed => "403 Forbidden",
                ("POST", Some(topic)) if !topic.is_empty() && !topic.contains('/') => {
                    io.publish(topic, body);
                    "204 No Content"
                }
                (_, Some(_)) => "405 Method Not Allowed",
                _ => "404 Not Found",
            };
            let close = if keep { "" } else { "Connection: close\r\n" };
            let length = if status.starts_with("204") {
                ""
            } else {
                "Content-Length: 0\r\n"
            };
            io.write(format!("HTTP/1.1 {status}\r\n{length}{close}\r\n").as_bytes());
            if !keep {
                io.close();
                return data.len();
            }
        }
    }

    fn is_idle(&self) -> bool {
        true
    }
}

impl Publisher {
    fn fail(&mut self, io: &mut Io<'_>, status: &str, all: usize) -> usize {
        io.write(
            format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        );
        io.close();
        all
    }
}

fn main() -> std::process::ExitCode {
    // `runtime!` names the program after this binary: `push --version` says push;
    // `push publish` is corral's.
    corral::runtime!()
        .service_with("push", |o: &PushOptions, _listen: &ListenConfig| Push {
            overflow: o.overflow(),
        })
        .service_with("push-ws", |o: &PushOptions, _listen: &ListenConfig| {
            PushWs {
                overflow: o.overflow(),
            }
        })
        .service_with(
            "push-publish",
            |o: &PublishOptions, _listen: &ListenConfig| {
                let allow = o
                    .allow
                    .clone()
                    .map(|a| a.iter().filter_map(|s| s.parse().ok()).collect())
                    .unwrap_or_else(|| {
                        vec![
                            IpAddr::from([127, 0, 0, 1]),
                            "::1".parse().unwrap_or(IpAddr::from([127, 0, 0, 1])),
                        ]
                    });
                Publish { allow }
            },
        )
        .run()
}
