//! A worker stops reading a socket after a short read (fewer bytes than it asked
//! for) instead of reading again into EAGAIN: one syscall less per round trip. That
//! is only right while the peer has not closed: a FIN that arrived with the last
//! bytes brings no new epoll edge. These tests send data and FIN together, thousands
//! of times, to the echo service and through the proxy from an upstream that does the
//! same, and require every byte and the EOF each time.

use crate::common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;

const ROUNDS: usize = 2000;
const THREADS: usize = 4;

/// `len` bytes that differ per connection, so a misdelivered reply is caught.
fn payload(i: usize, len: usize) -> Vec<u8> {
    (0..len).map(|j| (i * 31 + j) as u8).collect()
}

/// A thread gives up after this many failed connections: a missed EOF costs a whole
/// read timeout each, and a few prove the bug.
const MAX_FAILURES: usize = 3;

/// Reads until EOF; an error or a 5 s stall is a failure.
fn read_to_eof(s: &mut TcpStream) -> Result<Vec<u8>, String> {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got)
        .map_err(|e| format!("{e} after {} bytes", got.len()))?;
    Ok(got)
}

/// `ROUNDS` connections over `THREADS` threads: each sends with `request(stream, i,
/// expected reply)` and must then read exactly `payload(i, len)` and the EOF.
fn run_clients(addr: SocketAddr, request: fn(&mut TcpStream, usize, &[u8])) -> Vec<String> {
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            std::thread::spawn(move || {
                let mut failures = Vec::new();
                for k in 0..ROUNDS / THREADS {
                    if failures.len() >= MAX_FAILURES {
                        break;
                    }
                    let i = t * ROUNDS + k;
                    let want = payload(i, 1 + (i * 7919) % 3000);
                    let mut s = match connect(addr, Duration::from_secs(10)) {
                        Ok(s) => s,
                        Err(e) => {
                            failures.push(format!("connect {i}: {e}"));
                            continue;
                        }
                    };
                    request(&mut s, i, &want);
                    match read_to_eof(&mut s) {
                        Ok(got) if got == want => {}
                        Ok(got) => failures.push(format!(
                            "conn {i}: {} of {} bytes",
                            got.len(),
                            want.len()
                        )),
                        Err(e) => failures.push(format!("conn {i}: {e}")),
                    }
                }
                failures
            })
        })
        .collect();
    threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect()
}

#[test]
fn echo_sees_the_bytes_and_the_fin_sent_together() {
    let c = Corral::start(&Conf::new(2).render());
    let failures = run_clients(c.addr(), |s, _, want| {
        // Data and FIN back to back: both are usually there by the time the worker
        // wakes up.
        s.write_all(want).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
    });
    assert!(
        failures.is_empty(),
        "{} failures, first: {:?}\n{}",
        failures.len(),
        &failures[..failures.len().min(5)],
        c.log_tail(20)
    );
}

#[test]
fn the_proxy_forwards_an_upstream_reply_and_its_fin_sent_together() {
    // The upstream: for connection i (it reads an id line), writes the payload and
    // closes at once.
    let up = TcpListener::bind("127.0.0.1:0").unwrap();
    let up_addr = up.local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = Arc::clone(&stop);
    up.set_nonblocking(true).unwrap();
    let server = std::thread::spawn(move || {
        let mut n = 0usize;
        while !stop2.load(Ordering::Relaxed) {
            match up.accept() {
                Ok((mut s, _)) => {
                    s.set_nonblocking(false).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                    let mut id = [0u8; 8];
                    if s.read_exact(&mut id).is_ok() {
                        let i = u64::from_le_bytes(id) as usize;
                        let _ = s.write_all(&payload(i, 1 + (i * 7919) % 3000));
                    }
                    n += 1;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(1)),
            }
        }
        n
    });
    let port = free_port();
    let c = Corral::start(&Conf::new(2).proxy(port, &[up_addr], "").render());
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    // The id tells the upstream which payload to send back, with its FIN.
    let failures = run_clients(addr, |s, i, _| {
        s.write_all(&(i as u64).to_le_bytes()).unwrap()
    });
    stop.store(true, Ordering::Relaxed);
    let served = server.join().unwrap();
    assert!(
        failures.is_empty(),
        "{} failures, first: {:?}\n{}",
        failures.len(),
        &failures[..failures.len().min(5)],
        c.log_tail(20)
    );
    assert_eq!(served, ROUNDS, "the upstream saw every connection");
    let _ = up_addr;
}
