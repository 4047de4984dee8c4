//! What a program built on the library sees of its clients, through the kv example:
//! `Io::peer` is the client's address with its port, on a fresh connection and on one
//! that moved to a new generation at reload.

use crate::common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;

fn ask(w: &mut TcpStream, r: &mut BufReader<TcpStream>, cmd: &str) -> String {
    w.write_all(format!("{cmd}\n").as_bytes()).expect("send");
    let mut s = String::new();
    r.read_line(&mut s).expect("read a reply line");
    s.trim_end().to_string()
}

#[test]
fn io_peer_is_the_clients_address_and_port_before_and_after_a_move() {
    let (c, kv) = common::moves::start_kv(Conf::bare(1), "", &[]);
    let s = connect(kv, Duration::from_secs(10)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let me = s.local_addr().expect("local addr");
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    assert_eq!(ask(&mut w, &mut r, "PEER"), format!("PEER {me}"));
    let before = c.worker_pids();
    c.must_reload();
    // The connection moves to the new worker between commands; ask until the
    // old worker is gone, so the last answer came from the new one.
    let moved = wait_until(Duration::from_secs(30), || {
        let got = ask(&mut w, &mut r, "PEER");
        assert_eq!(got, format!("PEER {me}"));
        c.worker_pids().iter().all(|p| !before.contains(p))
    });
    assert!(moved, "the old worker did not go\n{}", c.log_tail(30));
    assert_eq!(ask(&mut w, &mut r, "PEER"), format!("PEER {me}"));
}
