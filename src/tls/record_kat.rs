//! Known-answer and interop tests for the continued record layer (`record.rs`).
//!
//! Round trips through `record.rs` alone cannot catch a mistake made the same way
//! on both sides (a wrong nonce, additional data or inner type order would still
//! round-trip), so the records here come from elsewhere: the published TLS 1.3
//! trace of RFC 8448 §3 ("Simple 1-RTT Handshake", TLS_AES_128_GCM_SHA256), whose
//! records must open and re-seal byte for byte, and a live rustls connection in
//! every TLS 1.3 suite, handed over from rustls to `record.rs` mid-stream the way a
//! moved connection is (keys and sequence numbers from `dangerous_extract_secrets`
//! at a quiescent point), after which rustls must read what `record.rs` seals and
//! the other way round.

use super::record::{
    open, record_len, seal, seal_alert, Direction, Failure, Opened, Suite, ALERT, APPLICATION_DATA,
    CLOSE_NOTIFY, MAX_PLAINTEXT,
};
use std::io::{ErrorKind, Read, Write};
use std::sync::Arc;

/// Bytes from hex written as in the RFC (pairs separated by white space).
fn hex(s: &str) -> Vec<u8> {
    s.split_whitespace()
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect()
}

// RFC 8448 §3, "{client}  derive write traffic keys for application data":
// key expanded (16 octets) and iv expanded (12 octets).
const C_AP_KEY: &str = "17 42 2d da 59 6e d5 d9 ac d8 90 e3 c6 3f 50 51";
const C_AP_IV: &str = "5b 78 92 3d ee 08 57 90 33 e5 23 d9";
// RFC 8448 §3, "{server}  derive write traffic keys for application data".
const S_AP_KEY: &str = "9f 02 28 3b 6c 9c 07 ef c2 6b b9 f2 ac 92 e3 56";
const S_AP_IV: &str = "cf 78 2b 88 dd 83 54 9a ad f1 e9 84";

// RFC 8448 §3, "{client}  send application_data record": complete record (72
// octets), the client's first record under its application keys (sequence 0).
const C_APP_RECORD: &str = "17 03 03 00 43 a2 3f 70 54 b6 2c 94
    d0 af fa fe 82 28 ba 55 cb ef ac ea 42 f9 14 aa 66 bc ab 3f 2b
    98 19 a8 a5 b4 6b 39 5b d5 4a 9a 20 44 1e 2b 62 97 4e 1f 5a 62
    92 a2 97 70 14 bd 1e 3d ea e6 3a ee bb 21 69 49 15 e4";
// RFC 8448 §3, "{server}  send application_data record": complete record (72
// octets). The server's NewSessionTicket went first under the same keys, so this
// is the server's sequence 1.
const S_APP_RECORD: &str = "17 03 03 00 43 2e 93 7e 11 ef 4a c7
    40 e5 38 ad 36 00 5f c4 a4 69 32 fc 32 25 d0 5f 82 aa 1b 36 e3
    0e fa f9 7d 90 e6 df fc 60 2d cb 50 1a 59 a8 fc c4 9c 4b f2 e5
    f0 a2 1c 00 47 c2 ab f3 32 54 0d d0 32 e1 67 c2 95 5d";
// RFC 8448 §3, the "{server}  send handshake record" after the handshake:
// complete record (227 octets), the NewSessionTicket (server sequence 0).
const S_NST_RECORD: &str = "17 03 03 00 de 3a 6b 8f 90 41 4a 97
    d6 95 9c 34 87 68 0d e5 13 4a 2b 24 0e 6c ff ac 11 6e 95 d4 1d
    6a f8 f6 b5 80 dc f3 d1 1d 63 c7 58 db 28 9a 01 59 40 25 2f 55
    71 3e 06 1d c1 3e 07 88 91 a3 8e fb cf 57 53 ad 8e f1 70 ad 3c
    73 53 d1 6d 9d a7 73 b9 ca 7f 2b 9f a1 b6 c0 d4 a3 d0 3f 75 e0
    9c 30 ba 1e 62 97 2a c4 6f 75 f7 b9 81 be 63 43 9b 29 99 ce 13
    06 46 15 13 98 91 d5 e4 c5 b4 06 f1 6e 3f c1 81 a7 7c a4 75 84
    00 25 db 2f 0a 77 f8 1b 5a b0 5b 94 c0 13 46 75 5f 69 23 2c 86
    51 9d 86 cb ee ac 87 aa c3 47 d1 43 f9 60 5d 64 f6 50 db 4d 02
    3e 70 e9 52 ca 49 fe 51 37 12 1c 74 bc 26 97 68 7e 24 87 46 d6
    df 35 30 05 f3 bc e1 86 96 12 9c 81 53 55 6b 3b 6c 67 79 b3 7b
    f1 59 85 68 4f";
// RFC 8448 §3, "{client}  send alert record" (close_notify, client sequence 1)
// and "{server}  send alert record" (close_notify, server sequence 2): complete
// record (24 octets) each.
const C_ALERT_RECORD: &str = "17 03 03 00 13 c9 87 27 60 65 56 66
    b7 4d 7f f1 15 3e fd 6d b6 d0 b0 e3";
const S_ALERT_RECORD: &str = "17 03 03 00 13 b5 8f d6 71 66 eb f5
    99 d2 47 20 cf be 7e fa 7a 88 64 a9";

/// The 50-octet payload of both application_data records: 00 01 02 … 31.
fn rfc8448_payload() -> Vec<u8> {
    (0u8..50).collect()
}

fn rfc8448_direction(key: &str, iv: &str, seq: u64) -> Direction {
    Direction::new(Suite::Aes128Gcm, &hex(key), &hex(iv), seq).unwrap()
}

/// Opens `record` at `seq` to the payload, then seals the payload at `seq` again
/// and compares with the published bytes: the nonce, additional data, inner
/// content type and (absent) padding all have to be RFC 8446's for both to hold.
fn open_and_reseal(key: &str, iv: &str, seq: u64, record: &str) {
    let published = hex(record);
    assert_eq!(published.len(), 72);
    assert_eq!(record_len(&published), Ok(Some(72)));
    // No padding in the trace: 0x43 = 50 bytes of payload + 1 content type + 16
    // of tag, which is exactly what `seal` (which never pads) produces.
    assert_eq!(usize::from(published[4]), 50 + 1 + 16);

    let mut rx = rfc8448_direction(key, iv, seq);
    let mut rec = published.clone();
    assert_eq!(open(&mut rx, &mut rec), Ok(Opened::Data(50)));
    assert_eq!(&rec[..50], &rfc8448_payload()[..]);
    assert_eq!(rx.seq, seq + 1);

    let mut tx = rfc8448_direction(key, iv, seq);
    let mut out = Vec::new();
    seal(&mut tx, APPLICATION_DATA, &rfc8448_payload(), &mut out).unwrap();
    assert_eq!(out, published);
    assert_eq!(tx.seq, seq + 1);
}

#[test]
fn rfc8448_client_application_data_record_opens_and_reseals_exactly() {
    open_and_reseal(C_AP_KEY, C_AP_IV, 0, C_APP_RECORD);
}

#[test]
fn rfc8448_server_application_data_record_opens_and_reseals_exactly() {
    open_and_reseal(S_AP_KEY, S_AP_IV, 1, S_APP_RECORD);
}

#[test]
fn rfc8448_records_open_only_at_their_own_sequence_number_and_key() {
    // The nonce depends on the sequence number: one off and the tag fails.
    for seq in [0, 2, (1 << 24) - 1] {
        let mut rx = rfc8448_direction(S_AP_KEY, S_AP_IV, seq);
        let mut rec = hex(S_APP_RECORD);
        assert_eq!(open(&mut rx, &mut rec), Err(Failure::BadRecordMac));
    }
    // The other direction's keys do not open it either.
    let mut rx = rfc8448_direction(S_AP_KEY, S_AP_IV, 0);
    let mut rec = hex(C_APP_RECORD);
    assert_eq!(open(&mut rx, &mut rec), Err(Failure::BadRecordMac));
}

#[test]
fn rfc8448_post_handshake_ticket_is_a_handshake_message_and_then_data_follows() {
    // The server's stream under its application keys: NewSessionTicket (inner
    // type 22, which a moved connection cannot handle), application data, alert.
    let mut rx = rfc8448_direction(S_AP_KEY, S_AP_IV, 0);
    let mut nst = hex(S_NST_RECORD);
    assert_eq!(record_len(&nst), Ok(Some(227)));
    assert_eq!(open(&mut rx, &mut nst), Err(Failure::Handshake));
    assert_eq!(rx.seq, 1);
    let mut app = hex(S_APP_RECORD);
    assert_eq!(open(&mut rx, &mut app), Ok(Opened::Data(50)));
    assert_eq!(&app[..50], &rfc8448_payload()[..]);
    let mut alert = hex(S_ALERT_RECORD);
    assert_eq!(open(&mut rx, &mut alert), Ok(Opened::CloseNotify));
    assert_eq!(rx.seq, 3);
}

#[test]
fn rfc8448_close_notify_records_open_and_reseal_exactly() {
    for (key, iv, seq, record) in [
        (C_AP_KEY, C_AP_IV, 1, C_ALERT_RECORD),
        (S_AP_KEY, S_AP_IV, 2, S_ALERT_RECORD),
    ] {
        let published = hex(record);
        let mut rx = rfc8448_direction(key, iv, seq);
        let mut rec = published.clone();
        assert_eq!(open(&mut rx, &mut rec), Ok(Opened::CloseNotify));
        let mut tx = rfc8448_direction(key, iv, seq);
        let mut out = Vec::new();
        seal_alert(&mut tx, CLOSE_NOTIFY, &mut out).unwrap();
        assert_eq!(out, published);
        // The same bytes through the generic sealer: warning(1), close_notify(0).
        let mut tx = rfc8448_direction(key, iv, seq);
        let mut out = Vec::new();
        seal(&mut tx, ALERT, &[1, CLOSE_NOTIFY], &mut out).unwrap();
        assert_eq!(out, published);
    }
}

// ---------------------------------------------------------------------------
// Interop with rustls: the handover a moved connection goes through.

const SUITES: [(Suite, rustls::SupportedCipherSuite); 3] = [
    (
        Suite::Aes128Gcm,
        rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256,
    ),
    (
        Suite::Aes256Gcm,
        rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_256_GCM_SHA384,
    ),
    (
        Suite::Chacha20Poly1305,
        rustls::crypto::aws_lc_rs::cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
    ),
];

/// Moves every TLS byte `from` has to send into `to`; whether any moved.
fn transfer<A, B>(
    from: &mut rustls::ConnectionCommon<A>,
    to: &mut rustls::ConnectionCommon<B>,
) -> bool {
    let mut wire = Vec::new();
    while from.wants_write() {
        from.write_tls(&mut wire).unwrap();
    }
    let moved = !wire.is_empty();
    let mut rest = &wire[..];
    while !rest.is_empty() {
        to.read_tls(&mut rest).unwrap();
        to.process_new_packets().unwrap();
    }
    moved
}

/// Runs both ends until neither has anything left to send.
fn settle(c: &mut rustls::ClientConnection, s: &mut rustls::ServerConnection) {
    for _ in 0..32 {
        let a = transfer(c, s);
        let b = transfer(s, c);
        if !a && !b {
            return;
        }
    }
    panic!("the connection did not settle");
}

/// Plaintext the connection has received so far; `true` if it also saw the
/// peer's close_notify.
fn drain<D>(conn: &mut rustls::ConnectionCommon<D>) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match conn.reader().read(&mut buf) {
            Ok(0) => return (out, true),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => return (out, false),
            Err(e) => panic!("reading plaintext: {e}"),
        }
    }
}

/// Feeds `wire` (records sealed by `record.rs`) to the rustls client.
fn client_reads(c: &mut rustls::ClientConnection, wire: &[u8]) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut closed = false;
    let mut rest = wire;
    while !rest.is_empty() {
        c.read_tls(&mut rest).unwrap();
        c.process_new_packets().unwrap();
        let (data, eof) = drain(c);
        out.extend_from_slice(&data);
        closed |= eof;
    }
    (out, closed)
}

/// Every record the rustls client has queued, opened in order by `record.rs`.
fn server_opens(c: &mut rustls::ClientConnection, rx: &mut Direction) -> Vec<Opened> {
    let mut wire = Vec::new();
    while c.wants_write() {
        c.write_tls(&mut wire).unwrap();
    }
    let mut results = Vec::new();
    let mut rest = &mut wire[..];
    while !rest.is_empty() {
        let n = record_len(rest).unwrap().expect("a whole record header");
        let (rec, tail) = rest.split_at_mut(n);
        results.push(open(rx, rec).unwrap());
        rest = tail;
    }
    results
}

/// Same as [`server_opens`] with the plaintext of application data records
/// collected, for when data is expected.
fn server_reads(c: &mut rustls::ClientConnection, rx: &mut Direction) -> Vec<u8> {
    let mut wire = Vec::new();
    while c.wants_write() {
        c.write_tls(&mut wire).unwrap();
    }
    let mut out = Vec::new();
    let mut rest = &mut wire[..];
    while !rest.is_empty() {
        let n = record_len(rest).unwrap().expect("a whole record header");
        let (rec, tail) = rest.split_at_mut(n);
        match open(rx, rec) {
            Ok(Opened::Data(len)) => out.extend_from_slice(&rec[..len]),
            other => panic!("expected application data, got {other:?}"),
        }
        rest = tail;
    }
    out
}

/// A rustls client connected to a rustls server in `suite`, a few records
/// exchanged both ways, then the server's side handed over to `record.rs`:
/// (client, server tx, server rx).
fn handed_over(
    suite: Suite,
    rustls_suite: rustls::SupportedCipherSuite,
) -> (rustls::ClientConnection, Direction, Direction) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let provider = Arc::new(rustls::crypto::CryptoProvider {
        cipher_suites: vec![rustls_suite],
        ..rustls::crypto::aws_lc_rs::default_provider()
    });
    let mut server_config = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.cert.der().clone()],
            rustls_pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into()),
        )
        .unwrap();
    server_config.enable_secret_extraction = true;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    let client_config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();

    let mut client =
        rustls::ClientConnection::new(Arc::new(client_config), "localhost".try_into().unwrap())
            .unwrap();
    let mut server = rustls::ServerConnection::new(Arc::new(server_config)).unwrap();
    settle(&mut client, &mut server);
    assert!(!client.is_handshaking() && !server.is_handshaking());
    assert_eq!(
        server.negotiated_cipher_suite().map(|s| s.suite()),
        Some(rustls_suite.suite())
    );

    // Records through rustls on both ends first, so the handover happens with
    // sequence numbers well past zero, as it does for a real moved connection.
    const BEFORE: u64 = 3;
    for i in 0..BEFORE {
        let ping = format!("ping {i}");
        client.writer().write_all(ping.as_bytes()).unwrap();
        settle(&mut client, &mut server);
        assert_eq!(drain(&mut server).0, ping.as_bytes());
        let pong = format!("pong {i}");
        server.writer().write_all(pong.as_bytes()).unwrap();
        settle(&mut client, &mut server);
        assert_eq!(drain(&mut client).0, pong.as_bytes());
    }
    // The quiescent point: both ends settled, so the client has read the
    // server's NewSessionTickets and every record, and neither has anything
    // in flight; the extracted sequence numbers are the ones both sides share.
    assert!(!server.wants_write() && !client.wants_write());
    let secrets = server.dangerous_extract_secrets().unwrap();
    let (tx_seq, tx) = secrets.tx;
    let (rx_seq, rx) = secrets.rx;
    // The client's Finished went under its handshake keys: its application
    // records are exactly the pings.
    assert_eq!(rx_seq, BEFORE);
    // The server's went after its tickets.
    assert!(tx_seq > BEFORE, "tx seq {tx_seq}");
    (
        client,
        direction(suite, tx, tx_seq),
        direction(suite, rx, rx_seq),
    )
}

fn direction(suite: Suite, secrets: rustls::ConnectionTrafficSecrets, seq: u64) -> Direction {
    use rustls::ConnectionTrafficSecrets as S;
    let (got, key, iv) = match secrets {
        S::Aes128Gcm { key, iv } => (Suite::Aes128Gcm, key, iv),
        S::Aes256Gcm { key, iv } => (Suite::Aes256Gcm, key, iv),
        S::Chacha20Poly1305 { key, iv } => (Suite::Chacha20Poly1305, key, iv),
        _ => panic!("not a TLS 1.3 suite"),
    };
    assert_eq!(got, suite);
    Direction::new(suite, key.as_ref(), iv.as_ref(), seq).unwrap()
}

#[test]
fn rustls_and_record_rs_continue_each_others_records_in_every_suite() {
    for (suite, rustls_suite) in SUITES {
        let (mut client, mut tx, mut rx) = handed_over(suite, rustls_suite);
        let tx_start = tx.seq;
        let rx_start = rx.seq;

        for i in 0..4 {
            // record.rs → rustls
            let msg = format!("{} sealed by record.rs, record {i}", suite.name());
            let mut wire = Vec::new();
            seal(&mut tx, APPLICATION_DATA, msg.as_bytes(), &mut wire).unwrap();
            assert_eq!(client_reads(&mut client, &wire), (msg.into_bytes(), false));
            // rustls → record.rs
            let msg = format!("{} written by rustls, record {i}", suite.name());
            client.writer().write_all(msg.as_bytes()).unwrap();
            assert_eq!(server_reads(&mut client, &mut rx), msg.into_bytes());
        }

        // Several records in one go each way, including full-size ones.
        let big: Vec<u8> = (0..3 * MAX_PLAINTEXT + 123)
            .map(|i| (i % 251) as u8)
            .collect();
        let mut wire = Vec::new();
        for chunk in big.chunks(MAX_PLAINTEXT) {
            seal(&mut tx, APPLICATION_DATA, chunk, &mut wire).unwrap();
        }
        assert_eq!(client_reads(&mut client, &wire), (big.clone(), false));
        client.writer().write_all(&big).unwrap();
        assert_eq!(server_reads(&mut client, &mut rx), big);
        assert_eq!(tx.seq, tx_start + 4 + 4);
        assert!(rx.seq >= rx_start + 4 + 4);

        // The client's close_notify is an end of stream to record.rs, and
        // record.rs's close_notify is one to rustls.
        client.send_close_notify();
        assert_eq!(
            server_opens(&mut client, &mut rx),
            vec![Opened::CloseNotify]
        );
        let mut wire = Vec::new();
        seal_alert(&mut tx, CLOSE_NOTIFY, &mut wire).unwrap();
        assert_eq!(client_reads(&mut client, &wire), (Vec::new(), true));
    }
}

#[test]
fn a_key_update_from_rustls_after_the_handover_is_refused_in_every_suite() {
    for (suite, rustls_suite) in SUITES {
        let (mut client, mut tx, mut rx) = handed_over(suite, rustls_suite);
        client.writer().write_all(b"before").unwrap();
        assert_eq!(server_reads(&mut client, &mut rx), b"before");
        let mut wire = Vec::new();
        seal(&mut tx, APPLICATION_DATA, b"reply", &mut wire).unwrap();
        assert_eq!(client_reads(&mut client, &wire).0, b"reply");

        // A KeyUpdate's next key derives from the traffic secret, which a moved
        // connection does not have: record.rs reports it instead of guessing.
        client.refresh_traffic_keys().unwrap();
        let mut wire = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut wire).unwrap();
        }
        let n = record_len(&wire).unwrap().unwrap();
        assert_eq!(open(&mut rx, &mut wire[..n]), Err(Failure::Handshake));
        assert_eq!(Failure::Handshake.alert(), Some(CLOSE_NOTIFY));
    }
}
