//! `Io::close` delivers what was written even when the client is still sending: the
//! loop sends FIN after the last byte and reads until the client closes, instead of
//! closing a socket with unread input (which makes the kernel send a reset that
//! destroys the reply in the client's receive queue). Run with the kv example, whose
//! `QUIT` writes `BYE` and closes.

use crate::common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::*;

/// A client with a small receive buffer that pipelines more replies than it has
/// room for (so the server's kernel still holds some unsent when the server closes),
/// then `QUIT`, then keeps sending (half a line, never finished) for `for_`, as a
/// client that sends more than the server will read; only then reads. Returns what
/// it read until EOF, or why it stopped.
fn quit_while_sending(addr: SocketAddr, for_: Duration) -> Result<Vec<u8>, String> {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
        .map_err(|e| e.to_string())?;
    sock.set_recv_buffer_size(4096).map_err(|e| e.to_string())?;
    sock.connect_timeout(&addr.into(), Duration::from_secs(10))
        .map_err(|e| e.to_string())?;
    let mut s: TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_write_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let value = "v".repeat(4000);
    let mut commands = format!("SET k {value}\n");
    for _ in 0..100 {
        commands.push_str("GET k\n");
    }
    commands.push_str("QUIT\n");
    s.write_all(commands.as_bytes())
        .map_err(|e| e.to_string())?;
    let junk = [b'a'; 1024];
    let until = Instant::now() + for_;
    // Writes fail once the server is gone (reset) or time out while its window stays
    // closed: the replies must all be there either way.
    while Instant::now() < until {
        if s.write_all(&junk).is_err() {
            break;
        }
    }
    read_to_end(&mut s)
}

fn read_to_end(s: &mut TcpStream) -> Result<Vec<u8>, String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Ok(got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => {
                return Err(format!(
                    "{e} after {:?}",
                    String::from_utf8_lossy(&got[..got.len().min(64)])
                ))
            }
        }
    }
}

#[test]
fn a_reply_written_before_close_arrives_while_the_client_keeps_sending() {
    let (c, kv) = common::moves::start_kv(Conf::bare(1), "", &[]);
    for attempt in 1..=3 {
        let got = quit_while_sending(kv, Duration::from_millis(300));
        match got {
            Ok(bytes) => {
                let text = String::from_utf8_lossy(&bytes);
                let values = text.lines().filter(|l| l.starts_with("VALUE ")).count();
                assert!(
                    text.starts_with("OK\n") && values == 100 && text.ends_with("\nBYE\n"),
                    "attempt {attempt}: {} bytes, {values} values of 100, ends with {:?}\n{}",
                    bytes.len(),
                    &text[text.len().saturating_sub(40)..],
                    c.log_tail(20)
                )
            }
            Err(why) => panic!(
                "attempt {attempt}: the reply before close was lost: {why}\n{}",
                c.log_tail(20)
            ),
        }
    }
}

#[test]
fn a_client_that_never_stops_sending_is_closed_after_the_linger() {
    let (c, kv) = common::moves::start_kv(Conf::bare(1), "", &[]);
    let mut s = connect(kv, Duration::from_secs(10)).expect("connect");
    s.set_write_timeout(Some(Duration::from_secs(1))).unwrap();
    s.write_all(b"QUIT\n").expect("send QUIT");
    // Keep sending: the server reads and throws it away, then gives up on us
    // (`service::LINGER`, 2 s): a write then fails. Bounded at 30 s.
    let t0 = Instant::now();
    let junk = [b'a'; 1024];
    let failed = loop {
        if s.write_all(&junk).is_err() {
            break true;
        }
        if t0.elapsed() > Duration::from_secs(30) {
            break false;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    assert!(
        failed,
        "a lingering connection stayed open for 30 s\n{}",
        c.log_tail(20)
    );
    assert!(
        t0.elapsed() >= Duration::from_millis(1500),
        "closed after {:?}: did it linger at all?",
        t0.elapsed()
    );
}
