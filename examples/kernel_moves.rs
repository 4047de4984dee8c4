//! The kernel's own cost of moving connections, without corral: how many TCP socket
//! fds per second two processes can pass to each other with `SCM_RIGHTS` in batches
//! like corral's (64 fds and ~128 bytes of description per fd in one seqpacket
//! message), and what `epoll_ctl` costs per fd. `bench/kernel_moves.sh` runs it and
//! compares corral's measured move rate with it; it is the ceiling a move could reach
//! on this box if user space cost nothing.
//!
//! Three processes: this driver opens `--conns` loopback TCP connections and hands the
//! server ends to child A; A and B then pass all of them back and forth `--rounds`
//! times over a seqpacket socketpair of their own (every leg moves every fd once), the
//! way an old worker hands its connections to a new one:
//! - `scm`: sender `sendmsg` + `close`, receiver `recvmsg` (and keeps the fds);
//! - `move`: the same plus the event loop's share, sender `epoll_ctl(DEL)` before
//!   sending, receiver `epoll_ctl(ADD)` on receipt (a direct worker-to-worker move);
//! - `relay`: A → M → B through a middle process that receives, sends on and closes
//!   (corral's reload path before issue 26, where the master relays every fd).
//!
//! It also times `epoll_ctl(ADD)` and `(DEL)` alone over the same sockets in one
//! process. Last line: `key=value` pairs for the script. No unsafe code: children are
//! this program re-run with their control socket as stdin.

use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use corral::os::epoll::{Epoll, Interest};
use corral::os::{fd, scm};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

const BATCH: usize = 64;
const PER_FD_BYTES: usize = 128;
/// What an event loop's connection asks for (corral's: read, edge-triggered).
const CONN: Interest = Interest {
    read: true,
    write: false,
    edge: true,
    exclusive: false,
};

fn pair() -> (OwnedFd, OwnedFd) {
    fd::seqpacket_pair().expect("socketpair")
}

fn wait(sock: BorrowedFd<'_>, what: PollFlags) {
    let mut p = [PollFd::new(sock, what)];
    poll(&mut p, PollTimeout::NONE).expect("poll");
}

/// corral's own send (non-blocking): waits for room when the socket is full.
fn send(sock: BorrowedFd<'_>, bytes: &[u8], fds: &[OwnedFd]) {
    let b: Vec<BorrowedFd<'_>> = fds.iter().map(|f| f.as_fd()).collect();
    loop {
        match scm::send(sock, bytes, &b) {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => wait(sock, PollFlags::POLLOUT),
            Err(e) => panic!("sendmsg: {e}"),
        }
    }
}

/// corral's own receive: one message, its length and fds; waits for one.
fn recv(sock: BorrowedFd<'_>, buf: &mut [u8]) -> (usize, Vec<OwnedFd>) {
    loop {
        match scm::recv(sock, buf).expect("recvmsg") {
            Some(got) => return (got.len, got.fds),
            None => wait(sock, PollFlags::POLLIN),
        }
    }
}

fn arg(args: &[String], name: &str, default: usize) -> usize {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse().expect("a number"))
        .unwrap_or(default)
}

fn raise_nofile() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

fn spawn(role: &str, mode: &str, conns: usize, legs: usize) -> (Child, OwnedFd) {
    let (mine, theirs) = pair();
    let child = Command::new(std::env::current_exe().expect("current_exe"))
        .args(["--child", role, mode, &conns.to_string(), &legs.to_string()])
        .stdin(Stdio::from(theirs))
        .spawn()
        .expect("spawn");
    (child, mine)
}

/// Sends `fds` over `ctl` in messages of at most 250 (setup, not timed).
fn give(ctl: BorrowedFd<'_>, tag: &[u8], fds: &[OwnedFd]) {
    for chunk in fds.chunks(250) {
        send(ctl, tag, chunk);
    }
}

fn wait_word(ctl: BorrowedFd<'_>) -> String {
    let mut buf = [0u8; 256];
    let (n, _) = recv(ctl, &mut buf);
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// Moves every fd `rounds * 2` times between two children (once, through a middle
/// one, for `relay`): (fds moved, seconds).
fn run_mode(mode: &str, server_ends: &mut Vec<OwnedFd>, rounds: usize) -> (usize, f64) {
    let conns = server_ends.len();
    let legs = if mode == "relay" { 1 } else { rounds * 2 };
    let (mut a, actl) = spawn("a", mode, conns, legs);
    let (mut b, bctl) = spawn("b", mode, conns, legs);
    let mut m = None;
    if mode == "relay" {
        let (mc, mctl) = spawn("m", mode, conns, legs);
        let (am, ma) = pair();
        let (mb, bm) = pair();
        give(actl.as_fd(), b"peer", std::slice::from_ref(&am));
        give(mctl.as_fd(), b"peer", &[ma, mb]);
        give(bctl.as_fd(), b"peer", std::slice::from_ref(&bm));
        m = Some((mc, mctl));
    } else {
        let (ab, ba) = pair();
        give(actl.as_fd(), b"peer", std::slice::from_ref(&ab));
        give(bctl.as_fd(), b"peer", std::slice::from_ref(&ba));
    }
    give(actl.as_fd(), b"conns", server_ends);
    // Ours closed: the driver's table has room for them when they come back.
    server_ends.clear();
    assert_eq!(wait_word(actl.as_fd()), "ready");
    let t = Instant::now();
    send(actl.as_fd(), b"go", &[]);
    // The leg that ends last ends at A (even legs) or B (odd, and relay's one leg).
    let last = if legs % 2 == 0 { &actl } else { &bctl };
    assert_eq!(wait_word(last.as_fd()), "done");
    let secs = t.elapsed().as_secs_f64();
    // Get the connections back for the next mode.
    send(last.as_fd(), b"return", &[]);
    let mut back = Vec::new();
    let mut buf = [0u8; 64];
    while back.len() < conns {
        let (_, fds) = recv(last.as_fd(), &mut buf);
        back.extend(fds);
    }
    *server_ends = back;
    drop((actl, bctl));
    for c in [&mut a, &mut b] {
        let _ = c.wait();
    }
    if let Some((mut mc, mctl)) = m {
        drop(mctl);
        let _ = mc.wait();
    }
    (conns * legs, secs)
}

/// epoll_ctl ADD then DEL of every fd, `rounds` times: ns per call.
fn epoll_cost(fds: &[OwnedFd], rounds: usize) -> (f64, f64) {
    let ep = Epoll::new(64).expect("epoll");
    let (mut add, mut del) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..rounds {
        let t = Instant::now();
        for (i, f) in fds.iter().enumerate() {
            ep.add(f.as_fd(), CONN, i as u64).expect("epoll add");
        }
        add += t.elapsed();
        let t = Instant::now();
        for f in fds {
            ep.delete(f.as_fd()).expect("epoll del");
        }
        del += t.elapsed();
    }
    let n = (fds.len() * rounds) as f64;
    (add.as_nanos() as f64 / n, del.as_nanos() as f64 / n)
}

fn driver(args: &[String]) {
    let conns = arg(args, "--conns", 8000);
    let rounds = arg(args, "--rounds", 10);
    raise_nofile();
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let mut clients = Vec::with_capacity(conns);
    let mut server_ends: Vec<OwnedFd> = Vec::with_capacity(conns);
    for _ in 0..conns {
        clients.push(TcpStream::connect(addr).expect("connect"));
        server_ends.push(OwnedFd::from(l.accept().expect("accept").0));
    }
    let (add_ns, del_ns) = epoll_cost(&server_ends, rounds);
    let rate = |(n, s): (usize, f64)| n as f64 / s;
    let scm = rate(run_mode("scm", &mut server_ends, rounds));
    let mv = rate(run_mode("move", &mut server_ends, rounds));
    let (mut n, mut s) = (0, 0.0);
    for _ in 0..rounds {
        let (dn, ds) = run_mode("relay", &mut server_ends, rounds);
        n += dn;
        s += ds;
    }
    let relay = n as f64 / s;
    println!(
        "conns={conns} batch={BATCH} bytes_per_fd={PER_FD_BYTES} scm_fds_per_s={scm:.0} \
         move_fds_per_s={mv:.0} relay_fds_per_s={relay:.0} epoll_add_ns={add_ns:.0} \
         epoll_del_ns={del_ns:.0}"
    );
    drop(clients);
}

/// A child: `role` a or b (an end of the move) or m (relay's middle).
fn child(args: &[String]) {
    let role = args[2].as_str();
    let mode = args[3].as_str();
    let conns: usize = args[4].parse().expect("conns");
    let legs: usize = args[5].parse().expect("legs");
    let ctl = std::io::stdin();
    let ctl = ctl.as_fd();
    let mut buf = vec![0u8; 32 * 1024];
    let (_, peers) = recv(ctl, &mut buf);
    let ep = Epoll::new(64).expect("epoll");
    let epoll = mode == "move";
    let payload = vec![b'x'; BATCH * PER_FD_BYTES];
    if role == "m" {
        // Receives from A, sends on to B, closes: every fd, once.
        let (from, to) = (peers[0].as_fd(), peers[1].as_fd());
        let mut n = 0;
        while n < conns {
            let (len, fds) = recv(from, &mut buf);
            send(to, &buf[..len], &fds);
            n += fds.len();
            drop(fds);
        }
        wait(ctl, PollFlags::POLLIN);
        return;
    }
    let peer = peers[0].as_fd();
    let mut held: Vec<OwnedFd> = Vec::new();
    if role == "a" {
        while held.len() < conns {
            let (_, fds) = recv(ctl, &mut buf);
            held.extend(fds);
        }
        if epoll {
            for (i, f) in held.iter().enumerate() {
                ep.add(f.as_fd(), CONN, i as u64).expect("epoll add");
            }
        }
        send(ctl, b"ready", &[]);
        assert_eq!(wait_word(ctl), "go");
    }
    let first_send = if role == "a" { 0 } else { 1 };
    for leg in 0..legs {
        if leg % 2 == first_send {
            // Sender: (DEL,) sendmsg, close, a batch at a time.
            while !held.is_empty() {
                let k = held.len().min(BATCH);
                let batch: Vec<OwnedFd> = held.drain(held.len() - k..).collect();
                if epoll {
                    for f in &batch {
                        ep.delete(f.as_fd()).expect("epoll del");
                    }
                }
                send(peer, &payload[..k * PER_FD_BYTES], &batch);
                drop(batch);
            }
        } else {
            // Receiver: recvmsg, (ADD,) keep.
            while held.len() < conns {
                let (_, fds) = recv(peer, &mut buf);
                if epoll {
                    for f in &fds {
                        ep.add(f.as_fd(), CONN, 0).expect("epoll add");
                    }
                }
                held.extend(fds);
            }
        }
    }
    if !held.is_empty() {
        send(ctl, b"done", &[]);
        assert_eq!(wait_word(ctl), "return");
        give(ctl, b"back", &held);
    }
    // Stay until the driver closes our control socket (EOF).
    wait(ctl, PollFlags::POLLIN);
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--child") {
        child(&args);
    } else {
        driver(&args);
    }
}
