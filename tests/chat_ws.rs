//! The chat example's WebSocket members (`service = "chat-ws"`) in the same rooms as
//! its line members: raw WebSocket clients and a line client talk through a reload and
//! an upgrade, and a real browser (headless Chromium) chats with a line client.

use crate::common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::browser::Page;
use common::ws::{Ws, WAIT};
use common::*;

/// The chat on two workers: (corral, line address, WebSocket address).
fn start() -> (Corral, SocketAddr, SocketAddr, tempfile::TempDir) {
    let (dir, bin) = example_copy("chat");
    let (lines, ws) = (free_port(), free_port());
    let c = Corral::start_with(
        &Conf::bare(2)
            .drain("60s")
            .listen(lines, "chat", "")
            .listen(ws, "chat-ws", "")
            .render(),
        Launch {
            binary: Some(bin),
            ..Launch::default()
        },
    );
    (c, loopback(lines), loopback(ws), dir)
}

/// A line member.
struct Liner {
    s: TcpStream,
    r: BufReader<TcpStream>,
}

impl Liner {
    fn new(addr: SocketAddr) -> Liner {
        let s = connect(addr, Duration::from_secs(10)).expect("connect");
        s.set_read_timeout(Some(WAIT)).unwrap();
        let r = BufReader::new(s.try_clone().unwrap());
        Liner { s, r }
    }

    fn send(&mut self, line: &str) {
        self.s.write_all(format!("{line}\n").as_bytes()).unwrap();
    }

    /// Reads lines until one contains `what`; returns it.
    fn until(&mut self, what: &str) -> String {
        loop {
            let mut l = String::new();
            match self.r.read_line(&mut l) {
                Ok(0) => panic!("line member disconnected waiting for {what:?}"),
                Ok(_) if l.contains(what) => return l.trim_end().to_string(),
                Ok(_) => {}
                Err(e) => panic!("no line with {what:?} within {WAIT:?}: {e}"),
            }
        }
    }
}

/// Reads text messages until one contains `what`; returns it.
fn ws_until<S: std::io::Read + Write>(w: &mut Ws<S>, what: &str) -> String {
    loop {
        let t = w.text();
        if t.contains(what) {
            return t;
        }
    }
}

#[test]
fn websocket_and_line_members_share_rooms_through_reload_and_upgrade() {
    let (c, lines, ws, _dir) = start();
    let mut bob = Liner::new(lines);
    bob.until("welcome");
    bob.send("/nick bob");
    bob.until("is now bob");
    let mut alice = Ws::open(ws);
    ws_until(&mut alice, "welcome");
    alice.send("/nick alice");
    ws_until(&mut alice, "is now alice");
    bob.until("is now alice");
    let mut carol = Ws::open(ws);
    carol.send("/nick carol");
    ws_until(&mut carol, "is now carol");
    bob.until("is now carol");
    ws_until(&mut alice, "is now carol");

    let round = |bob: &mut Liner, alice: &mut Ws, carol: &mut Ws, tag: &str| {
        bob.send(&format!("hello {tag}"));
        let want = format!("<bob> hello {tag}");
        assert_eq!(ws_until(alice, &want), want, "a line reaches a WebSocket");
        assert_eq!(ws_until(carol, &want), want);
        alice.send(&format!("hi {tag}"));
        assert_eq!(bob.until(&format!("hi {tag}")), format!("<alice> hi {tag}"));
        carol.send(&format!("/msg alice psst {tag}"));
        assert_eq!(
            ws_until(carol, "-> *alice*"),
            format!("-> *alice* psst {tag}")
        );
        assert_eq!(ws_until(alice, "psst"), format!("*carol* psst {tag}"));
    };
    round(&mut bob, &mut alice, &mut carol, "before");
    c.must_reload();
    round(&mut bob, &mut alice, &mut carol, "after reload");
    c.must_upgrade_until_old_gone();
    round(&mut bob, &mut alice, &mut carol, "after upgrade");
    carol.send("/quit");
    ws_until(&mut carol, "bye");
    assert_eq!(carol.frame().map(|f| f.0), Some(0x8), "a close frame");
}

#[test]
fn a_browser_chats_with_a_line_member_through_reload_and_upgrade() {
    let (c, lines, ws, _dir) = start();
    let mut bob = Liner::new(lines);
    bob.until("welcome");
    bob.send("/nick bob");
    bob.until("is now bob");
    // The page takes a name, says what the test asks it to (`say:` lines from bob)
    // and reports every line it hears from bob.
    let Some(page) = Page::open(&format!(
        r#"const ws = new WebSocket("ws://127.0.0.1:{port}/");
ws.onopen = () => ws.send("/nick web");
ws.onmessage = (e) => {{
  if (e.data.endsWith("is now web")) {{ report("named"); return; }}
  const m = e.data.match(/^<bob> say: (.*)$/);
  if (m) {{ ws.send(m[1]); }}
  if (e.data.startsWith("<bob> ")) report("heard/" + encodeURIComponent(e.data.slice(6)));
}};
ws.onclose = (e) => report("closed/" + e.code);"#,
        port = ws.port()
    )) else {
        return;
    };
    assert_eq!(page.next("its name", &c), "/named");
    bob.until("is now web");
    let started = Instant::now();
    for step in ["before", "reload", "upgrade"] {
        c.deploy(step);
        bob.send(&format!("say: hello bob {step}"));
        assert_eq!(
            page.next("bob's line", &c),
            format!("/heard/say%3A%20hello%20bob%20{step}")
        );
        assert_eq!(
            bob.until(&format!("<web> hello bob {step}")),
            format!("<web> hello bob {step}"),
            "the browser spoke on the connection it opened first"
        );
    }
    eprintln!(
        "a browser chatting through a reload and an upgrade: 3 of 3 exchanges in {:?}",
        started.elapsed()
    );
    assert!(page.quiet(), "no close, nothing else");
}
