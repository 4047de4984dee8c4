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
    let s = connect(
        SocketAddr::from(([127, 0, 0, 1], kv_port)),
        Duration::from_secs(10),
    )
    .expect("connect");
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
    let mut other = connect(
        SocketAddr::from(([127, 0, 0, 1], kv_port)),
        Duration::from_secs(10),
    )
    .expect("connect");
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
