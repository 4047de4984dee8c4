//! WebSocket subscribers of the push example (`service = "push-ws"`, built on
//! `corral::websocket`): a raw client's handshake, frames and protocol errors, its
//! subscriptions through `-s reload` and `-s upgrade`, and a real browser (headless
//! Chromium) that subscribes from a page and keeps receiving through both.

use crate::common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Instant;

use common::browser::Page;
use common::push::http_publish;
use common::tls::{rustls_client, Pki};
use common::ws::{request, tcp, Ws, WAIT};
use common::*;

/// The push example on two workers with a WebSocket listener and an HTTP publisher:
/// (corral, WebSocket address, publishers' address).
fn start(bin: &Path) -> (Corral, SocketAddr, SocketAddr) {
    let (ws, publ) = (free_port(), free_port());
    let c = Corral::start_with(
        &Conf::bare(2)
            .drain("60s")
            .listen(ws, "push-ws", "")
            .listen(publ, "push-publish", "")
            .render(),
        Launch {
            binary: Some(bin.to_path_buf()),
            ..Launch::default()
        },
    );
    (c, loopback(ws), loopback(publ))
}

#[test]
fn websocket_subscribers_keep_their_topics_through_reload_and_upgrade() {
    let (_dir, bin) = example_copy("push");
    let (c, ws, publ) = start(&bin);
    let mut subs: Vec<Ws> = (0..6).map(|_| Ws::open(ws)).collect();
    for (i, s) in subs.iter_mut().enumerate() {
        s.subscribe(if i % 2 == 0 { "even" } else { "odd" });
    }
    let round = |subs: &mut Vec<Ws>, tag: &str| {
        assert_eq!(
            http_publish(publ, [127, 0, 0, 1], "even", &format!("e {tag}")),
            204
        );
        assert_eq!(
            http_publish(publ, [127, 0, 0, 1], "odd", &format!("o {tag} ü")),
            204
        );
        for (i, s) in subs.iter_mut().enumerate() {
            let want = if i % 2 == 0 {
                format!("e {tag}")
            } else {
                format!("o {tag} ü")
            };
            assert_eq!(s.text(), want, "subscriber {i}");
            // Nothing else came: the next answer is the PONG.
            s.send("PING");
            assert_eq!(s.text(), "PONG", "subscriber {i}: one message, once");
        }
    };
    round(&mut subs, "before");
    c.must_reload();
    assert!(
        wait_until(WAIT, || c.log().contains("generation 1 gone after")),
        "the old generation stayed\n{}",
        c.log_tail(40)
    );
    round(&mut subs, "after reload");
    c.must_upgrade_until_old_gone();
    round(&mut subs, "after upgrade");
    // Ping, then a clean close: the server answers with its own close frame.
    subs[0].send_frame(0x89, b"are you there", true);
    assert_eq!(subs[0].frame(), Some((0xa, b"are you there".to_vec())));
    subs[0].send_frame(0x88, &1000u16.to_be_bytes(), true);
    assert_eq!(subs[0].frame().map(|f| f.0), Some(0x8));
    assert_eq!(subs[0].frame(), None, "closed after the close frame");
}

#[test]
fn a_bad_handshake_or_frame_gets_its_error_and_a_close_and_the_service_goes_on() {
    let (_dir, bin) = example_copy("push");
    let (c, ws, _publ) = start(&bin);
    // An old protocol version: 426 naming the one spoken.
    let (mut old, head) = Ws::open_with(ws, &request("8"));
    assert!(head.starts_with("HTTP/1.1 426 "), "{head}");
    assert!(head.contains("Sec-WebSocket-Version: 13"), "{head}");
    while old.fill() {}
    // Plain HTTP: 400, closed.
    let (mut plain, head) = Ws::open_with(ws, "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 400 "), "{head}");
    while plain.fill() {}
    // An unmasked frame: close 1002.
    let mut bad = Ws::open(ws);
    bad.send_frame(0x81, b"SUB x", false);
    let (op, payload) = bad.frame().expect("a close frame");
    assert_eq!(op, 0x8);
    assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), 1002);
    assert_eq!(bad.frame(), None, "closed");
    // A binary message to a text service: close 1003.
    let mut bin_msg = Ws::open(ws);
    bin_msg.send_frame(0x82, b"\x00\x01", true);
    let (op, payload) = bin_msg.frame().expect("a close frame");
    assert_eq!(
        (op, u16::from_be_bytes([payload[0], payload[1]])),
        (0x8, 1003)
    );
    // The workers are the ones that started, and a good client is served.
    let mut good = Ws::open(ws);
    good.subscribe("t");
    assert!(
        c.log().lines().all(|l| !l.contains("panicked")),
        "{}",
        c.log()
    );
}

#[test]
fn a_browser_subscribes_over_websocket_and_keeps_receiving_through_reload_and_upgrade() {
    let (_dir, bin) = example_copy("push");
    let (c, ws, publ) = start(&bin);
    // The page opens one WebSocket and never reconnects: a message after a reload or
    // an upgrade reached the connection it opened first.
    let Some(page) = Page::open(&format!(
        r#"const ws = new WebSocket("ws://127.0.0.1:{port}/push");
let pongs = 0;
ws.onopen = () => {{ ws.send("SUB news"); ws.send("PING"); }};
ws.onmessage = (e) => {{
  if (e.data === "PONG") {{ report("pong" + (++pongs)); return; }}
  report("got/" + encodeURIComponent(e.data));
  ws.send("PING");
}};
ws.onclose = (e) => report("closed/" + e.code);
ws.onerror = () => report("error");"#,
        port = ws.port()
    )) else {
        return;
    };

    assert_eq!(page.next("its subscription", &c), "/pong1");
    let mut pongs = 1;
    let started = Instant::now();
    for (i, step) in ["before", "reload", "upgrade"].iter().enumerate() {
        c.deploy(step);
        let msg = format!("news {i} {step} ü");
        assert_eq!(http_publish(publ, [127, 0, 0, 1], "news", &msg), 204);
        let got = page.next(&msg, &c);
        assert_eq!(
            got,
            format!("/got/{}", msg.replace(' ', "%20").replace('ü', "%C3%BC")),
            "after {step}"
        );
        pongs += 1;
        assert_eq!(
            page.next("the PING after it", &c),
            format!("/pong{pongs}"),
            "one message, once, the same connection"
        );
    }
    eprintln!(
        "a browser's WebSocket through a reload and an upgrade: 3 of 3 messages in {:?}",
        started.elapsed()
    );
    assert!(page.quiet(), "nothing else reported (no close, no error)");
}

#[test]
fn a_wss_subscriber_keeps_its_tls_session_and_topics_through_reload_and_upgrade() {
    let pki = Pki::new();
    let srv = pki.server("srv", &["localhost"], None, 30);
    let (_dir, bin) = example_copy("push");
    let (ws, publ) = (free_port(), free_port());
    let c = Corral::start_with(
        &Conf::bare(2)
            .drain("60s")
            .listen(ws, "push-ws", &srv.tls_table(""))
            .listen(publ, "push-publish", "")
            .render(),
        Launch {
            binary: Some(bin),
            ..Launch::default()
        },
    );
    let config = rustls_client(&pki.ca);
    let mut subs: Vec<_> = (0..4)
        .map(|_| {
            let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
            let conn = rustls::ClientConnection::new(config.clone(), name).unwrap();
            let mut s = rustls::StreamOwned::new(conn, tcp(loopback(ws)));
            while s.conn.is_handshaking() {
                s.conn.complete_io(&mut s.sock).expect("TLS handshake");
            }
            let mut w = Ws::checked(s);
            w.subscribe("news");
            w
        })
        .collect();
    for step in ["before", "reload", "upgrade"] {
        c.deploy(step);
        let msg = format!("secure {step}");
        assert_eq!(
            http_publish(loopback(publ), [127, 0, 0, 1], "news", &msg),
            204
        );
        for (i, s) in subs.iter_mut().enumerate() {
            assert_eq!(s.text(), msg, "wss subscriber {i} after {step}");
        }
    }
    // Each message came on the TLS session each client opened first: a worker that
    // had lost its keys could not have sent a record these clients decrypt, and a
    // closed connection would have failed `text()`.
}
