//! Moves on a real worker loop in a thread (`worker::testkit`): what the master
//! returns is kept and served, a refused state goes back to its origin, and an origin
//! stays until what it handed over is settled.

mod kept {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::os::fd::AsFd;
    use std::time::Duration;

    use crate::channel::{HandoffCounts, IdlePolicy, ToMaster, ToWorker};
    use crate::worker::testkit::Kit;

    const CONNS: usize = 300;
    const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n";

    /// One response from `s`: (head, body).
    fn response(s: &mut TcpStream) -> (String, String) {
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_string();
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse().unwrap())
                    })
                    .unwrap();
                if buf.len() >= end + 4 + len {
                    let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).to_string();
                    return (head, body);
                }
            }
            let n = s.read(&mut chunk).expect("read a response");
            assert!(
                n > 0,
                "EOF before a full response: {:?}",
                String::from_utf8_lossy(&buf)
            );
            buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// A worker loop (in a thread, from its fds) with this test as its master: the
    /// master refuses every hand-over (`Keep`), and the worker serves those
    /// connections itself under the drain rules, then exits once they are gone.
    #[test]
    fn connections_the_master_returns_are_kept_and_served() {
        let kit = Kit::start(
            "http",
            "[worker]\nidle_timeout = \"60s\"\nblocking_threads = 1",
            "",
        );
        let (master, addr, next) = (&kit.master, kit.addr, |w: &dyn Fn(&_) -> bool| kit.next(w));

        let mut clients: Vec<TcpStream> = (0..CONNS)
            .map(|_| {
                let mut s = TcpStream::connect(addr).unwrap();
                s.write_all(GET).unwrap();
                let (head, _) = response(&mut s);
                assert!(head.starts_with("HTTP/1.1 200"), "{head}");
                s
            })
            .collect();

        master
            .send(&ToWorker::Drain {
                idle: IdlePolicy::Handoff,
            })
            .unwrap();
        let mut got = 0;
        let mut messages = 0;
        while got < CONNS {
            let (m, fds) = next(&|m| matches!(m, ToMaster::Handoff { .. }));
            let ToMaster::Handoff { conns } = m else {
                unreachable!()
            };
            assert_eq!(conns.len(), fds.len());
            assert!(conns.len() <= crate::channel::BATCH_CONNS);
            assert!(
                conns.iter().all(|h| h.listen == addr.to_string()),
                "{conns:?}"
            );
            got += fds.len();
            messages += 1;
            let back = ToWorker::Keep {
                conns,
                reason: "test: nobody to adopt".into(),
            };
            let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
            master.send_fds(&back, &borrowed).unwrap();
        }
        assert_eq!(got, CONNS);
        assert!(messages >= CONNS.div_ceil(crate::channel::BATCH_CONNS));
        assert!(
            messages < CONNS / 4,
            "{messages} messages for {CONNS}: not batched"
        );
        let (m, _) = next(&|m| matches!(m, ToMaster::HandoffDone(c) if c.kept as usize == CONNS));
        assert_eq!(
            m,
            ToMaster::HandoffDone(HandoffCounts {
                handed: 0,
                kept: CONNS as u64,
                closed: 0
            })
        );

        // Kept: served here, with Connection: close (the drain rules), never dropped.
        for s in &mut clients {
            s.write_all(GET).unwrap();
        }
        for s in &mut clients {
            let (head, body) = response(s);
            assert!(head.starts_with("HTTP/1.1 200"), "{head}");
            assert!(
                head.to_ascii_lowercase().contains("connection: close"),
                "{head}"
            );
            assert_eq!(body, crate::service::http::DEFAULT_BODY);
        }
        drop(clients);
        assert_eq!(kit.exit_code(), 0, "once its kept connections were gone");
    }
}

mod suspended {
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::os::fd::{AsFd, OwnedFd};
    use std::time::Duration;

    use crate::channel::{Handed, IdlePolicy, Moved, ToMaster, ToWorker};
    use crate::worker::testkit::{round_trip, Kit};

    /// A worker loop (in a thread) serving echo, with this test as its master.
    fn echo_worker() -> Kit {
        Kit::start("echo", "[worker]\nblocking_threads = 1", "")
    }

    /// A connected client and the server side of its socket (to hand over).
    fn client_and_server_socket() -> (TcpStream, OwnedFd) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        s.set_nonblocking(true).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        (c, s.into())
    }

    fn moved(listen: SocketAddr, version: u32, origin: u32) -> Handed {
        Handed {
            listen: listen.to_string(),
            peer: None,
            tls: None,
            moved: Some(Box::new(Moved {
                service: "echo".into(),
                version,
                state: Vec::new(),
                input: b"carried ".to_vec(),
                idle_ms: 0,
                timer_ms: None,
                origin,
                upstream: None,
                refused: None,
                idle: false,
                push: None,
            })),
        }
    }

    /// The new generation's service cannot read the state's version: the connection
    /// goes back (`Refused`, naming its origin and why) on the very socket it came
    /// on, untouched; a version it reads is resumed and served, input carried.
    #[test]
    fn a_state_the_service_cannot_read_goes_back_to_its_origin() {
        let kit = echo_worker();
        let (master, addr) = (&kit.master, kit.addr);

        let (mut refused_client, fd) = client_and_server_socket();
        let msg = ToWorker::Adopt {
            conns: vec![moved(addr, 99, 4242)],
        };
        master.send_fds(&msg, &[fd.as_fd()]).unwrap();
        drop(fd);
        let (m, fds) = kit.next(&|m| matches!(m, ToMaster::Refused { .. }));
        let ToMaster::Refused { conns } = m else {
            unreachable!()
        };
        assert_eq!((conns.len(), fds.len()), (1, 1));
        let back = conns[0].moved.as_ref().unwrap();
        assert_eq!(back.origin, 4242);
        assert_eq!(back.input, b"carried ");
        let why = back.refused.as_deref().unwrap_or("");
        assert!(why.contains("99"), "{why}");
        crate::os::fd::write(fds[0].as_fd(), b"still yours").unwrap();
        let mut got = [0u8; 11];
        refused_client.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"still yours");

        let (mut c, fd) = client_and_server_socket();
        let msg = ToWorker::Adopt {
            conns: vec![moved(addr, 1, 4242)],
        };
        master.send_fds(&msg, &[fd.as_fd()]).unwrap();
        drop(fd);
        // The carried input reaches the handler first, then the new bytes.
        c.write_all(b"bytes\n").unwrap();
        let mut got = vec![0u8; 14];
        c.read_exact(&mut got).expect("the echo");
        assert_eq!(got, b"carried bytes\n");
        round_trip(&mut c, b"and more\n");
        // Its origin is told it will not come back (the refused one was not).
        let (m, _) = kit.next(&|m| matches!(m, ToMaster::Settled { .. }));
        assert_eq!(
            m,
            ToMaster::Settled {
                origins: vec![(4242, 1)]
            }
        );
    }

    /// A worker that handed over a suspended connection does not exit while the new
    /// generation may still refuse it (the refusal would find nobody to serve it): it
    /// stays, beating, until the master says the connection was taken for good.
    #[test]
    fn the_origin_stays_until_what_it_handed_over_is_settled() {
        let kit = Kit::start(
            "echo",
            "[worker]\nblocking_threads = 1\nheartbeat_interval = \"100ms\"",
            "",
        );
        let (master, done, addr) = (&kit.master, &kit.done, kit.addr);
        let mut c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        round_trip(&mut c, b"before\n");

        master
            .send(&ToWorker::Drain {
                idle: IdlePolicy::Handoff,
            })
            .unwrap();
        let (m, fds) = kit.next(&|m| matches!(m, ToMaster::Handoff { .. }));
        let ToMaster::Handoff { conns } = m else {
            unreachable!()
        };
        assert_eq!((conns.len(), fds.len()), (1, 1));
        assert!(conns[0].moved.is_some(), "echo suspends");
        // Beats after its hand-over was read: its loop ran with no connection left,
        // and it stayed.
        for _ in 0..3 {
            kit.next(&|m| matches!(m, ToMaster::Heartbeat(_)));
        }
        assert!(
            done.try_recv().is_err(),
            "the worker exited while its connection could still be refused"
        );
        master.send(&ToWorker::Settled { n: 1 }).unwrap();
        assert_eq!(kit.exit_code(), 0, "once its connection was settled");
        drop(fds);
    }

    /// The origin's side: a connection it suspended comes back refused; it resumes it
    /// with its own service, serves it to the end without offering it again, and exits
    /// once the client leaves.
    #[test]
    fn a_refused_connection_is_served_to_the_end_by_its_origin() {
        let kit = echo_worker();
        let (master, done, addr) = (&kit.master, &kit.done, kit.addr);
        let mut c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        round_trip(&mut c, b"before\n");

        master
            .send(&ToWorker::Drain {
                idle: IdlePolicy::Handoff,
            })
            .unwrap();
        let (m, fds) = kit.next(&|m| matches!(m, ToMaster::Handoff { .. }));
        let ToMaster::Handoff { mut conns } = m else {
            unreachable!()
        };
        assert_eq!((conns.len(), fds.len()), (1, 1));
        let m = conns[0].moved.as_mut().expect("echo suspends");
        assert_eq!(m.origin, std::process::id());
        m.refused = Some("test: the new generation refused it".into());
        let back = ToWorker::Keep {
            conns,
            reason: "refused".into(),
        };
        master.send_fds(&back, &[fds[0].as_fd()]).unwrap();
        drop(fds);

        for i in 0..20 {
            round_trip(&mut c, format!("after {i}\n").as_bytes());
        }
        // Each of those exchanges ended at a quiescent point: none was offered again.
        std::thread::sleep(Duration::from_millis(200));
        while let Some((m, _)) = master.recv_fds::<ToMaster>().unwrap() {
            assert!(
                !matches!(m, ToMaster::Handoff { .. }),
                "a pinned connection was handed over again: {m:?}"
            );
        }
        assert!(done.try_recv().is_err(), "the worker exited with a client");
        drop(c);
        let code = done
            .recv_timeout(Duration::from_secs(30))
            .expect("the worker did not exit once its last client left");
        assert_eq!(code, 0);
    }
}
