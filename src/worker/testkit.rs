//! The in-process worker test kit: a real worker loop in a thread of the test, on a
//! real listening socket, with the test playing its master over a real channel.
//!
//! Unit tests of the loop (hand-over, suspension, throttling, idle timers) drive it
//! with real clients and real `ToWorker` messages, without forking a `corral`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use crate::channel::{Channel, ToMaster};
use crate::config::Config;
use crate::os::signals::SignalReader;
use crate::os::types::Signal;

use super::WorkerInit;

/// How long any wait of the kit lasts before the test fails.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// A worker loop serving one listener, and the master's end of its channel.
pub struct Kit {
    pub master: Channel,
    /// The worker's exit code, once `worker::run` returns.
    pub done: Receiver<i32>,
    /// Where the listener accepts.
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Kit {
    /// Starts a worker with one `[[listen]]` of `service` on a fresh port; `sections`
    /// is TOML put before the listener (e.g. `[worker]` keys), `listen` extra keys
    /// of the listener. Returns once the worker reported `Ready`.
    pub fn start(service: &str, sections: &str, listen: &str) -> Kit {
        Kit::start_with(service, sections, listen, None)
    }

    /// `start`, with the worker's end of the channel given a send buffer of
    /// `channel_buf` bytes, so that hand-overs fill it after a known amount.
    pub fn start_with(
        service: &str,
        sections: &str,
        listen: &str,
        channel_buf: Option<usize>,
    ) -> Kit {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("corral.toml");
        std::fs::write(
            &path,
            format!(
                "[master]\nworkers = 1\ndrain_timeout = \"60s\"\n\n{sections}\n\n\
                 [[listen]]\naddress = \"{addr}\"\nservice = \"{service}\"\n{listen}\n"
            ),
        )
        .unwrap();
        let config = Config::load(&path).unwrap();
        let (master, worker_end) = Channel::pair().unwrap();
        if let Some(bytes) = channel_buf {
            use std::os::fd::AsFd;
            crate::os::fd::set_send_buffer(worker_end.as_fd(), bytes).unwrap();
        }
        let (done_tx, done) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let signals = SignalReader::new(&[Signal::SIGUSR1]).unwrap();
            let init = WorkerInit {
                slot: 0,
                generation: 1,
                config,
                listeners: vec![listener.into()],
                channel: worker_end,
                signals,
            };
            let _ = done_tx.send(super::run(init));
        });
        let kit = Kit {
            master,
            done,
            addr,
            _dir: dir,
        };
        kit.next(&|m| *m == ToMaster::Ready);
        kit
    }

    /// The next message from the worker that `want` accepts (others are skipped).
    pub fn next(&self, want: &dyn Fn(&ToMaster) -> bool) -> (ToMaster, Vec<OwnedFd>) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            assert!(Instant::now() < deadline, "the worker went silent");
            match self.master.recv_fds::<ToMaster>().unwrap() {
                Some((m, fds)) if want(&m) => return (m, fds),
                Some(_) => {}
                None => std::thread::sleep(Duration::from_millis(2)),
            }
        }
    }

    /// A client of the worker's listener, reads bounded by the kit's patience.
    pub fn connect(&self) -> TcpStream {
        let c = TcpStream::connect(self.addr).unwrap();
        c.set_read_timeout(Some(PATIENCE)).unwrap();
        c
    }

    /// Waits for the worker to exit and returns its code. Reads the channel
    /// meanwhile, as a master does: a draining worker waits until the master has
    /// read everything it sent (heartbeats too) before it leaves.
    pub fn exit_code(&self) -> i32 {
        let deadline = Instant::now() + PATIENCE;
        loop {
            match self.done.recv_timeout(Duration::from_millis(20)) {
                Ok(code) => return code,
                Err(_) => assert!(Instant::now() < deadline, "the worker did not exit"),
            }
            while let Ok(Some(_)) = self.master.recv_fds::<ToMaster>() {}
        }
    }
}

/// Writes `msg` and expects it back (an echo listener).
pub fn round_trip(c: &mut TcpStream, msg: &[u8]) {
    c.write_all(msg).unwrap();
    let mut got = vec![0u8; msg.len()];
    c.read_exact(&mut got).expect("the echo");
    assert_eq!(got, msg);
}

/// Reads until EOF (the server closed); returns the bytes read before it.
pub fn read_to_eof(c: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    c.read_to_end(&mut got).expect("EOF from the server");
    got
}
