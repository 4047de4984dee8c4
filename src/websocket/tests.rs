//! The handshake's and the decoder's every refusal, and the encoders' length forms.

use super::*;

fn request(lines: &[&str]) -> Vec<u8> {
    let mut r = lines.join("\r\n");
    r.push_str("\r\n\r\n");
    r.into_bytes()
}

fn good() -> Vec<&'static str> {
    vec![
        "GET /chat?room=1 HTTP/1.1",
        "Host: server.example.com",
        "Upgrade: websocket",
        "Connection: keep-alive, Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Origin: http://example.com",
        "Sec-WebSocket-Version: 13",
    ]
}

fn refused(lines: &[&str]) -> Refusal {
    match handshake(&request(lines)) {
        Handshake::Refused(r) => r,
        other => panic!("{lines:?} was not refused: {other:?}"),
    }
}

#[test]
fn the_rfcs_example_is_accepted_with_its_accept_hash_and_what_follows_is_left() {
    let mut input = request(&good());
    let head = input.len();
    input.extend_from_slice(&[0x81, 0x80, 0, 0, 0, 0]);
    let Handshake::Upgrade(up) = handshake(&input) else {
        panic!("refused")
    };
    assert_eq!(up.used, head);
    assert_eq!(up.path, "/chat?room=1");
    assert_eq!(up.origin.as_deref(), Some("http://example.com"));
    let answer = String::from_utf8(up.accept()).expect("text");
    assert!(answer.starts_with("HTTP/1.1 101 Switching Protocols\r\n"));
    // RFC 6455 §1.3: this key's accept value.
    assert!(answer.contains("\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
    assert!(answer.ends_with("\r\n\r\n"));
}

#[test]
fn an_incomplete_head_waits_and_an_endless_one_is_refused() {
    let full = request(&good());
    for cut in 0..full.len() {
        assert_eq!(
            handshake(&full[..cut]),
            Handshake::Incomplete,
            "cut at {cut}"
        );
    }
    let endless = vec![b'a'; MAX_HEAD + 1];
    assert!(matches!(handshake(&endless), Handshake::Refused(r) if r.status == 431));
}

#[test]
fn every_missing_or_wrong_part_of_the_request_is_refused_with_its_status() {
    let without = |prefix: &str| -> Vec<&'static str> {
        good()
            .into_iter()
            .filter(|l| !l.starts_with(prefix))
            .collect()
    };
    let with = |prefix: &str, line: &'static str| -> Vec<&'static str> {
        good()
            .into_iter()
            .map(|l| if l.starts_with(prefix) { line } else { l })
            .collect()
    };
    assert_eq!(refused(&with("GET", "POST /chat HTTP/1.1")).status, 405);
    assert_eq!(refused(&with("GET", "GET /chat HTTP/1.0")).status, 400);
    assert_eq!(refused(&without("Host")).status, 400);
    assert_eq!(refused(&without("Upgrade")).status, 400);
    assert_eq!(refused(&with("Upgrade", "Upgrade: h2c")).status, 400);
    assert_eq!(
        refused(&with("Connection", "Connection: keep-alive")).status,
        400
    );
    assert_eq!(refused(&without("Sec-WebSocket-Key")).status, 400);
    assert_eq!(
        refused(&with("Sec-WebSocket-Key", "Sec-WebSocket-Key: c2hvcnQ=")).status,
        400,
        "a key that is not 16 bytes"
    );
    assert_eq!(
        refused(&with("Sec-WebSocket-Key", "Sec-WebSocket-Key: !!!")).status,
        400
    );
    let mut twice = good();
    twice.push("Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==");
    assert_eq!(refused(&twice).status, 400);
    let old = refused(&with("Sec-WebSocket-Version", "Sec-WebSocket-Version: 8"));
    assert_eq!(old.status, 426);
    let answer = String::from_utf8(old.response()).expect("text");
    assert!(answer.starts_with("HTTP/1.1 426 Upgrade Required\r\n"));
    assert!(answer.contains("\r\nSec-WebSocket-Version: 13\r\n"));
    assert!(answer.contains("\r\nConnection: close\r\n"));
    assert_eq!(refused(&["GET / HTTP/1.1", "Bad\0Header: x"]).status, 400);
}

/// A client frame: FIN as given, `op`, masked with a fixed key.
fn client(fin: bool, op: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut out = vec![if fin { 0x80 } else { 0 } | op];
    match payload.len() {
        n @ 0..=125 => out.push(0x80 | n as u8),
        n @ 126..=0xffff => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// Every message `input` decodes to, or the first error.
fn decode(d: &mut Decoder, input: &[u8]) -> Result<Vec<Message>, ProtocolError> {
    let mut at = 0;
    let mut out = Vec::new();
    while let Step::Frame { used, message } = d.step(&input[at..])? {
        at += used;
        out.extend(message);
    }
    assert_eq!(at, input.len(), "all of it used");
    Ok(out)
}

fn error(input: &[u8]) -> ProtocolError {
    decode(&mut Decoder::new(1 << 20), input).expect_err("refused")
}

#[test]
fn frames_of_every_length_form_decode_and_any_prefix_asks_for_more() {
    for n in [0, 125, 126, 65535, 65536] {
        let payload = vec![b'x'; n];
        let f = client(true, 2, &payload);
        let mut d = Decoder::new(1 << 20);
        for cut in [0, 1, 2, 3, f.len() / 2, f.len() - 1] {
            if cut < f.len() {
                assert_eq!(d.step(&f[..cut]), Ok(Step::More), "{n} bytes, cut at {cut}");
            }
        }
        assert_eq!(decode(&mut d, &f), Ok(vec![Message::Binary(payload)]));
    }
}

#[test]
fn a_fragmented_message_is_joined_with_a_ping_between_its_fragments() {
    let mut input = client(false, 1, "héllo ".as_bytes());
    input.extend(client(true, 9, b"are you there"));
    input.extend(client(false, 0, "wö".as_bytes()));
    input.extend(client(true, 0, "rld".as_bytes()));
    let mut d = Decoder::new(1 << 20);
    assert_eq!(
        decode(&mut d, &input),
        Ok(vec![
            Message::Ping(b"are you there".to_vec()),
            Message::Text("héllo wörld".into())
        ])
    );
    assert!(!d.in_message());
    let first = client(false, 2, b"ab");
    assert_eq!(decode(&mut d, &first), Ok(vec![]));
    assert!(d.in_message(), "holds the first fragment");
}

#[test]
fn every_broken_frame_is_a_protocol_error_with_its_close_code() {
    let mut unmasked = client(true, 1, b"hi");
    unmasked[1] &= 0x7f;
    assert_eq!(error(&unmasked).code, 1002);
    let mut rsv = client(true, 1, b"hi");
    rsv[0] |= 0x40;
    assert_eq!(error(&rsv).code, 1002);
    assert_eq!(error(&client(true, 3, b"")).code, 1002, "reserved opcode");
    assert_eq!(error(&client(true, 11, b"")).code, 1002, "reserved control");
    assert_eq!(error(&client(false, 9, b"")).code, 1002, "fragmented ping");
    assert_eq!(error(&client(true, 9, &[0; 126])).code, 1002, "long ping");
    assert_eq!(
        error(&client(true, 0, b"x")).code,
        1002,
        "lone continuation"
    );
    let mut nested = client(false, 1, b"a");
    nested.extend(client(true, 1, b"b"));
    assert_eq!(error(&nested).code, 1002, "a message inside a message");
    assert_eq!(error(&client(true, 1, &[0xff, 0xfe])).code, 1007);
    let mut top_bit = vec![0x82, 0xff];
    top_bit.extend_from_slice(&[0x80, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(error(&top_bit).code, 1002);
}

#[test]
fn a_message_over_the_limit_is_refused_before_its_payload_arrives() {
    let mut d = Decoder::new(100);
    let f = client(true, 2, &[0; 101]);
    assert_eq!(d.step(&f[..8]).map_err(|e| e.code), Err(1009));
    // The limit holds across fragments too.
    let mut d = Decoder::new(100);
    let mut input = client(false, 2, &[0; 60]);
    input.extend(client(true, 0, &[0; 60]));
    assert_eq!(decode(&mut d, &input).map_err(|e| e.code), Err(1009));
}

#[test]
fn close_frames_carry_a_valid_code_and_a_text_reason_or_nothing() {
    let mut d = Decoder::new(100);
    assert_eq!(
        decode(&mut d, &client(true, 8, b"")),
        Ok(vec![Message::Close(None)])
    );
    let mut ok = 1000u16.to_be_bytes().to_vec();
    ok.extend_from_slice(b"bye");
    assert_eq!(
        decode(&mut d, &client(true, 8, &ok)),
        Ok(vec![Message::Close(Some((1000, "bye".into())))])
    );
    assert_eq!(error(&client(true, 8, &[3])).code, 1002, "half a code");
    for bad in [999u16, 1005, 1006, 1015, 2000, 5000] {
        assert_eq!(
            error(&client(true, 8, &bad.to_be_bytes())).code,
            1002,
            "{bad}"
        );
    }
    let mut bad_reason = 1000u16.to_be_bytes().to_vec();
    bad_reason.push(0xff);
    assert_eq!(error(&client(true, 8, &bad_reason)).code, 1007);
}

#[test]
fn server_frames_are_unmasked_with_the_shortest_length_form() {
    assert_eq!(text("hi"), [0x81, 2, b'h', b'i']);
    let mid = binary(&[7; 126]);
    assert_eq!(mid[..4], [0x82, 126, 0, 126]);
    assert_eq!(mid.len(), 4 + 126);
    let big = binary(&[7; 65536]);
    assert_eq!(big[..10], [0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0]);
    assert_eq!(pong(b"x"), [0x8a, 1, b'x']);
    let c = close(1001, &"é".repeat(100));
    assert_eq!(c[0], 0x88);
    assert!(c[1] <= 125, "a close frame fits a control frame");
    assert!(std::str::from_utf8(&c[4..]).is_ok(), "cut at a character");
    let e = ProtocolError {
        code: 1002,
        reason: "x",
    };
    assert_eq!(e.close_frame(), [0x88, 3, 0x03, 0xea, b'x']);
}

/// A handler that records what its session hands it.
struct Recorder {
    ws: Session,
    events: Vec<Event>,
}

impl crate::service::Handler for Recorder {
    fn on_data(&mut self, io: &mut crate::service::Io<'_>, data: &[u8]) -> usize {
        let (used, events) = self.ws.read(io, data);
        self.events.extend(events);
        used
    }
}

fn session() -> crate::testing::Harness<Recorder> {
    let mut h = crate::testing::Harness::new(Recorder {
        ws: Session::new(64),
        events: Vec::new(),
    });
    h.send(&request(&good()));
    assert!(h.take_written().starts_with(b"HTTP/1.1 101 "));
    h
}

#[test]
fn a_session_opens_hands_over_whole_messages_and_answers_pings_itself() {
    let mut h = session();
    let mut input = client(true, 9, b"ping?");
    input.extend(client(false, 1, b"hel"));
    input.extend(client(true, 0, b"lo"));
    input.extend(client(true, 2, &[1, 2]));
    let partial = client(true, 1, b"later");
    input.extend(&partial[..3]);
    h.send(&input);
    assert_eq!(h.take_written(), pong(b"ping?"));
    assert_eq!(
        h.handler().events,
        [
            Event::Opened {
                path: "/chat?room=1".into(),
                origin: Some("http://example.com".into())
            },
            Event::Text("hello".into()),
            Event::Binary(vec![1, 2]),
        ]
    );
    assert_eq!(h.unconsumed(), &partial[..3], "a partial frame waits");
    assert!(h.handler().ws.is_between_messages());
    assert!(!h.closed());
}

#[test]
fn a_session_closes_on_a_close_a_protocol_error_or_a_refused_handshake() {
    let mut h = session();
    h.send(&client(true, 8, &1000u16.to_be_bytes()));
    assert_eq!(h.take_written(), close(1000, ""));
    assert!(h.closed());

    let mut h = session();
    h.send(&client(true, 1, &[b'x'; 65]));
    assert_eq!(h.take_written(), close(1009, "message too big"));
    assert!(h.closed());

    let mut h = crate::testing::Harness::new(Recorder {
        ws: Session::new(64),
        events: Vec::new(),
    });
    h.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(h.take_written().starts_with(b"HTTP/1.1 400 "));
    assert!(h.closed());
    assert!(h.handler().events.is_empty());
    assert!(!h.handler().ws.is_open());
}

#[test]
fn a_resumed_session_is_open_without_a_handshake() {
    let mut h = crate::testing::Harness::new(Recorder {
        ws: Session::opened(64),
        events: Vec::new(),
    });
    h.send(&client(true, 1, b"SUB x"));
    assert_eq!(h.handler().events, [Event::Text("SUB x".into())]);
    assert!(h.written().is_empty());
}
