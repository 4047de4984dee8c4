//! The custom-service example (`examples/kv.rs`) builds, and the master runs it like
//! a built-in service.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;

/// The example binary, built by `cargo test` (examples are part of its build); built
/// here if this test runs alone.
fn example_binary() -> PathBuf {
    let bin = PathBuf::from(corral_bin());
    let dir = bin.parent().expect("target dir");
    let path = dir.join("examples").join("kv");
    if !path.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = std::process::Command::new(cargo)
            .args(["build", "--example", "kv"])
            .status()
            .expect("run cargo build --example kv");
        assert!(status.success(), "cargo build --example kv failed");
    }
    path
}

fn line(r: &mut BufReader<TcpStream>) -> String {
    let mut s = String::new();
    r.read_line(&mut s).expect("read a reply line");
    s.trim_end().to_string()
}

#[test]
fn kv_example_serves_commands_and_uses_the_blocking_pool() {
    let (c, kv) = start_kv();
    let s = connect(kv, Duration::from_secs(10)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    w.write_all(b"SET colour blue\nGET colour\nGET shape\n")
        .unwrap();
    assert_eq!(line(&mut r), "OK");
    assert_eq!(line(&mut r), "VALUE blue");
    assert_eq!(line(&mut r), "NOT_FOUND");

    // SLEEP runs on the pool: another client is served while it sleeps, and the
    // sleeper's next command waits for its SLEEP reply (order is kept).
    let t0 = Instant::now();
    w.write_all(b"SLEEP 700\nGET colour\n").unwrap();
    let mut other = connect(kv, Duration::from_secs(10)).expect("connect");
    other
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    other.write_all(b"GET colour\n").unwrap();
    let mut or = BufReader::new(other.try_clone().unwrap());
    assert_eq!(line(&mut or), "VALUE blue");
    let other_took = t0.elapsed();
    assert_eq!(line(&mut r), "SLEPT 700");
    assert!(t0.elapsed() >= Duration::from_millis(700));
    assert_eq!(line(&mut r), "VALUE blue");
    assert!(
        other_took < Duration::from_millis(700),
        "the event loop waited for the blocking job: other client took {other_took:?}\n{}",
        c.log_tail(20)
    );

    w.write_all(b"QUIT\n").unwrap();
    assert_eq!(line(&mut r), "BYE");
    assert_eq!(line(&mut r), "", "connection should be closed after QUIT");

    // The master supervises it like any service: a reload works.
    let out = c.cli(&["-s", "reload"]);
    assert!(out.status.success(), "{}", out.all());
    let _ = other.write_all(b"QUIT\n");
}

/// A corral running the kv example on its own port (the echo listener is for the
/// harness's readiness check).
fn start_kv() -> (Corral, SocketAddr) {
    let kv_port = free_port();
    let c = Corral::start_with(
        &format!(
            "[master]\nworkers = 1\n\n[[listen]]\naddress = \"127.0.0.1:{{port}}\"\nservice = \"echo\"\n\n\
             [[listen]]\naddress = \"127.0.0.1:{kv_port}\"\nservice = \"kv\"\n"
        ),
        Launch {
            binary: Some(example_binary()),
            ..Launch::default()
        },
    );
    (c, SocketAddr::from(([127, 0, 0, 1], kv_port)))
}

/// Every reply line until EOF (bounded by `timeout`), or what arrived and why not.
fn read_to_eof(s: &mut TcpStream, timeout: Duration) -> Result<Vec<String>, String> {
    use std::io::Read;
    let deadline = Instant::now() + timeout;
    let mut all = Vec::new();
    let mut buf = [0u8; 16 << 10];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!(
                "no EOF within {timeout:?}; got {:?}",
                String::from_utf8_lossy(&all)
            ));
        }
        s.set_read_timeout(Some(left)).map_err(|e| e.to_string())?;
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => all.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if is_reset(&e) => {
                return Err(format!(
                    "reset ({e}) after {:?}",
                    String::from_utf8_lossy(&all)
                ))
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(String::from_utf8_lossy(&all)
        .lines()
        .map(str::to_string)
        .collect())
}

#[test]
fn kv_answers_everything_sent_before_the_client_half_closed() {
    let (c, addr) = start_kv();
    for round in 0..3 {
        let mut s = connect(addr, Duration::from_secs(10)).expect("connect");
        // What `printf 'SET a 1\nSLEEP 50\nGET a\n' | nc -N` does: send, then FIN.
        s.write_all(b"SET a 1\nSLEEP 50\nGET a\n").unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let got = read_to_eof(&mut s, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("round {round}: {e}\n{}", c.log_tail(20)));
        assert_eq!(
            got,
            ["OK", "SLEPT 50", "VALUE 1"],
            "round {round}: replies lost after EOF\n{}",
            c.log_tail(20)
        );
    }
}

/// Sends `line` (plus `\n`) in the pieces `split` gives (lengths, the rest last).
fn send_split(s: &mut TcpStream, line: &[u8], split: &[usize]) {
    let mut at = 0;
    for &n in split {
        s.write_all(&line[at..at + n]).unwrap();
        s.flush().unwrap();
        at += n;
    }
    s.write_all(&line[at..]).unwrap();
}

#[test]
fn kv_line_limit_is_exact_whatever_the_segmentation() {
    let (c, addr) = start_kv();
    // A SET line of exactly `len` bytes (not counting its `\n`).
    let line = |len: usize| {
        let mut l = b"SET k ".to_vec();
        l.extend(std::iter::repeat_n(b'v', len - l.len()));
        assert_eq!(l.len(), len);
        l.push(b'\n');
        l
    };
    // How to cut a line of `len` bytes plus `\n` into writes.
    let splits = |len: usize| -> Vec<(&'static str, Vec<usize>)> {
        vec![
            ("one write", vec![]),
            ("1 byte at a time", vec![1; len]),
            ("len-1, then the rest", vec![len - 1]),
            ("len, then the newline", vec![len]),
            ("half and half", vec![len / 2]),
        ]
    };
    for (how, split) in splits(4096) {
        let mut s = connect(addr, Duration::from_secs(10)).expect("connect");
        s.set_nodelay(true).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        send_split(&mut s, &line(4096), &split);
        s.write_all(b"GET k\nQUIT\n").unwrap();
        let got = read_to_eof(&mut s, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("4096 bytes, {how}: {e}\n{}", c.log_tail(20)));
        assert_eq!(got.len(), 3, "4096 bytes, {how}: {got:?}");
        assert_eq!(got[0], "OK", "4096 bytes, {how}: refused");
        assert_eq!(got[1].len(), "VALUE ".len() + 4090, "4096 bytes, {how}");
        assert_eq!(got[2], "BYE");
    }
    // With a CRLF line end, 4096 bytes are still 4096 bytes.
    let mut crlf = line(4096);
    crlf.pop();
    crlf.extend_from_slice(b"\r\n");
    let mut s = connect(addr, Duration::from_secs(10)).expect("connect");
    send_split(&mut s, &crlf, &[4096]);
    s.write_all(b"QUIT\n").unwrap();
    let got = read_to_eof(&mut s, Duration::from_secs(10)).expect("crlf");
    assert_eq!(got, ["OK", "BYE"], "4096 bytes + CRLF");

    for (how, split) in splits(4097) {
        let mut s = connect(addr, Duration::from_secs(10)).expect("connect");
        s.set_nodelay(true).unwrap();
        s.write_all(b"SET before 1\n").unwrap();
        send_split(&mut s, &line(4097), &split);
        // Whatever follows the refused line is not run.
        let _ = s.write_all(b"SET after 1\n");
        let got = read_to_eof(&mut s, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("4097 bytes, {how}: {e}\n{}", c.log_tail(20)));
        assert_eq!(got.len(), 2, "4097 bytes, {how}: {got:?}");
        assert_eq!(got[0], "OK", "4097 bytes, {how}");
        assert!(
            got[1].starts_with("ERROR line too long") && got[1].contains("4096 bytes"),
            "4097 bytes, {how}: {got:?}"
        );
    }
    // The refused line's neighbours: `before` was stored, `after` never was.
    let mut s = connect(addr, Duration::from_secs(10)).expect("connect");
    s.write_all(b"GET before\nGET after\nQUIT\n").unwrap();
    let got = read_to_eof(&mut s, Duration::from_secs(10)).expect("check");
    assert_eq!(got, ["VALUE 1", "NOT_FOUND", "BYE"]);
}

#[test]
fn a_program_built_on_the_library_reports_its_own_name_and_version() {
    let out = std::process::Command::new(example_binary())
        .arg("--version")
        .output()
        .expect("run kv --version");
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("kv {}", env!("CARGO_PKG_VERSION"))
    );
    let help = std::process::Command::new(example_binary())
        .arg("--help")
        .output()
        .expect("run kv --help");
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("Usage: kv"), "{help}");
}
