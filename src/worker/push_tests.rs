//! Writes to other connections of the same worker (`Io::send_to`), greetings
//! (`Handler::on_open`) and the flow control of a write from elsewhere, on a real
//! worker loop (the test kit) serving a small test service.

use std::io::{BufRead, BufReader, Read, Write};
use std::time::{Duration, Instant};

use crate::channel::ToMaster;
use crate::config::ListenConfig;
use crate::service::registry::register;
use crate::service::{Handler, Io, Overflow, Service};
use crate::service::{NoOptions, OptionsKind};

use super::testkit::{Kit, PATIENCE};

/// Greets with its id; `TO id text` sends `text` to connection `id`; `FLOOD id n`
/// sends it `n` lines of 1 KiB; `PUB topic text`, `SUB topic`.
struct Relay(Overflow);
struct RelayConn;

impl Service for Relay {
    fn connect(&mut self, _: Option<std::net::IpAddr>) -> Box<dyn Handler> {
        Box::new(RelayConn)
    }
    fn overflow(&self) -> Overflow {
        self.0
    }
}

impl Handler for RelayConn {
    fn on_open(&mut self, io: &mut Io<'_>) {
        io.write(format!("HELLO {}\n", io.id()).as_bytes());
    }
    fn on_data(&mut self, io: &mut Io<'_>, data: &[u8]) -> usize {
        let mut used = 0;
        while let Some(end) = data[used..].iter().position(|&b| b == b'\n') {
            let line = String::from_utf8_lossy(&data[used..used + end]).into_owned();
            used += end + 1;
            let mut w = line.splitn(3, ' ');
            match (w.next(), w.next(), w.next()) {
                (Some("TO"), Some(id), Some(text)) => {
                    io.send_to(id.parse().unwrap_or(0), format!("{text}\n").as_bytes())
                }
                (Some("FLOOD"), Some(id), Some(n)) => {
                    let line = [b'x'; 1023]
                        .iter()
                        .chain(b"\n")
                        .copied()
                        .collect::<Vec<u8>>();
                    for _ in 0..n.parse::<usize>().unwrap_or(0) {
                        io.send_to(id.parse().unwrap_or(0), &line);
                    }
                    io.write(b"FLOODED\n");
                }
                (Some("SUB"), Some(t), None) => {
                    io.subscribe(t);
                    io.write(b"SUBSCRIBED\n");
                }
                (Some("PUB"), Some(t), Some(text)) => io.publish(t, format!("{text}\n").as_bytes()),
                _ => io.write(b"?\n"),
            }
        }
        used
    }
}

fn relay_kit(overflow: Overflow) -> Kit {
    let name = match overflow {
        Overflow::Drop => "relay-drop",
        Overflow::Disconnect => "relay-disconnect",
    };
    register(
        name,
        std::sync::Arc::new(move |_: &ListenConfig| Box::new(Relay(overflow)) as Box<dyn Service>),
        OptionsKind::of::<NoOptions>(),
    );
    Kit::start(
        name,
        "[worker]\nheartbeat_interval = \"50ms\"\n[flow]\nwrite_high_water = \"64KiB\"\nwrite_low_water = \"16KiB\"",
        "",
    )
}

struct Client {
    s: std::net::TcpStream,
    r: BufReader<std::net::TcpStream>,
}

impl Client {
    fn new(kit: &Kit) -> (Client, u64) {
        let s = kit.connect();
        let r = BufReader::new(s.try_clone().unwrap());
        let mut c = Client { s, r };
        let hello = c.line();
        let id = hello
            .strip_prefix("HELLO ")
            .and_then(|i| i.parse().ok())
            .unwrap_or_else(|| panic!("greeting {hello:?}"));
        (c, id)
    }
    fn line(&mut self) -> String {
        let mut l = String::new();
        self.r.read_line(&mut l).expect("a line");
        l.trim_end().to_string()
    }
    fn send(&mut self, s: &str) {
        self.s.write_all(s.as_bytes()).unwrap();
    }
}

/// The push counters of the next heartbeat that `want` accepts.
fn counts_until(
    kit: &Kit,
    want: impl Fn(&crate::channel::PushCounts) -> bool,
) -> crate::channel::PushCounts {
    let deadline = Instant::now() + PATIENCE;
    loop {
        assert!(Instant::now() < deadline, "the counters never got there");
        if let (ToMaster::Heartbeat(s), _) = kit.next(&|m| matches!(m, ToMaster::Heartbeat(_))) {
            if want(&s.push) {
                return s.push;
            }
        }
    }
}

#[test]
fn a_handler_greets_and_writes_to_another_connection_by_id() {
    let kit = relay_kit(Overflow::Drop);
    let (mut a, id_a) = Client::new(&kit);
    let (mut b, id_b) = Client::new(&kit);
    assert_ne!(id_a, id_b);
    a.send(&format!("TO {id_b} hi from a\n"));
    assert_eq!(b.line(), "hi from a");
    b.send(&format!("TO {id_a} hi back\n"));
    assert_eq!(a.line(), "hi back");
    // A topic in one worker: the publisher's own subscription counts too.
    a.send("SUB room\n");
    assert_eq!(a.line(), "SUBSCRIBED");
    b.send("SUB room\n");
    assert_eq!(b.line(), "SUBSCRIBED");
    a.send("PUB room hello room\n");
    assert_eq!(a.line(), "hello room");
    assert_eq!(b.line(), "hello room");
    // A connection that is gone is skipped and counted.
    drop(b);
    a.send(&format!("TO {id_b} anyone?\nTO {id_a} still here\n"));
    assert_eq!(a.line(), "still here");
    let c = counts_until(&kit, |c| c.refused >= 1);
    assert!(c.delivered >= 5, "{c:?}");
}

/// A client that reads nothing while another floods it: what is over its high water
/// mark is dropped (counted), its memory stays bounded, the connection stays; once it
/// reads, it gets whole lines.
#[test]
fn a_write_over_the_high_water_mark_is_dropped_and_counted() {
    let kit = relay_kit(Overflow::Drop);
    let (mut a, _) = Client::new(&kit);
    let (mut b, id_b) = Client::new(&kit);
    a.send(&format!("FLOOD {id_b} 20000\n"));
    assert_eq!(a.line(), "FLOODED");
    let c = counts_until(&kit, |c| c.dropped_slow > 0);
    assert!(
        c.delivered < 20_000,
        "20 MB queued to a client that reads nothing: {c:?}"
    );
    // It is still connected and gets whole lines, then the next message.
    b.s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut got = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match b.r.read(&mut buf) {
            Ok(0) => panic!("disconnected"),
            Ok(n) => got += n,
            Err(_) => break,
        }
    }
    assert_eq!(got % 1024, 0, "a line was cut: {got} bytes");
    assert!(got < 20_000 * 1024, "{got}");
    b.s.set_read_timeout(Some(PATIENCE)).unwrap();
    a.send(&format!("TO {id_b} after\n"));
    assert_eq!(b.line(), "after");
}

#[test]
fn a_service_that_says_disconnect_closes_the_slow_client() {
    let kit = relay_kit(Overflow::Disconnect);
    let (mut a, _) = Client::new(&kit);
    let (mut b, id_b) = Client::new(&kit);
    a.send(&format!("FLOOD {id_b} 20000\n"));
    assert_eq!(a.line(), "FLOODED");
    let c = counts_until(&kit, |c| c.disconnected_slow == 1);
    assert_eq!(c.dropped_slow, 0, "{c:?}");
    let mut rest = Vec::new();
    let _ = b.r.read_to_end(&mut rest);
}
