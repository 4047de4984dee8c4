//! TLS connections leaving and coming back, through the test kit: a real rustls
//! client on a worker loop in a thread, the test as the master. The claim tested is
//! the one nonce safety rests on: a record layer that was taken out for a move and
//! refused comes back with its sequence numbers untouched, and the worker that
//! suspended it goes on with the same keys from exactly there.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;

use crate::channel::{IdlePolicy, ToMaster, ToWorker};

use super::testkit::Kit;

type Client = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A certificate for `localhost` from a throwaway CA: (the `[listen.tls]` lines, the
/// client's config trusting it, the directory holding the files).
fn material() -> (String, Arc<rustls::ClientConfig>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (c, k) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der().clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let table = format!(
        "[listen.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        c.display(),
        k.display()
    );
    (table, Arc::new(config), dir)
}

fn client(kit: &Kit, config: &Arc<rustls::ClientConfig>) -> Client {
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(config.clone(), name).unwrap();
    rustls::StreamOwned::new(conn, kit.connect())
}

fn echo(c: &mut Client, msg: &[u8]) {
    c.write_all(msg).unwrap();
    let mut got = vec![0u8; msg.len()];
    c.read_exact(&mut got).expect("the echo over TLS");
    assert_eq!(got, msg);
}

#[test]
fn a_refused_tls_move_comes_back_and_goes_on_with_the_same_record_layer() {
    let (table, config, _dir) = material();
    let kit = Kit::start("echo", "", &table);
    let mut c = client(&kit, &config);
    echo(&mut c, b"before the drain\n");
    kit.master
        .send(&ToWorker::Drain {
            idle: IdlePolicy::Handoff,
        })
        .unwrap();
    let (m, mut fds) = kit.next(&|m| matches!(m, ToMaster::Handoff { .. }));
    let ToMaster::Handoff { mut conns } = m else {
        unreachable!()
    };
    assert_eq!((conns.len(), fds.len()), (1, 1));
    let tls = conns[0].tls.as_ref().expect("the record layer travels");
    assert!(
        conns[0].moved.is_some(),
        "TLS travels as moved, with a way back"
    );
    // The handshake's records and the two of the echo were counted.
    assert!(tls.rx.seq >= 1 && tls.tx.seq >= 1, "{tls:?}");
    assert!(!format!("{tls:?}").contains(&format!("{:?}", tls.tx.key.bytes())));

    // As the master does when the new generation refused it: back, pinned.
    conns[0].moved.as_mut().unwrap().refused = Some("test".into());
    kit.master
        .send_fds(
            &ToWorker::Keep {
                conns,
                reason: "refused by the new generation".into(),
            },
            &[std::os::fd::AsFd::as_fd(&fds[0])],
        )
        .unwrap();
    drop(fds.pop());
    // The client never noticed: the same keys, from the same sequence numbers.
    for i in 0..5 {
        echo(&mut c, format!("after the refusal {i}\n").as_bytes());
    }
    c.conn.send_close_notify();
    c.flush().unwrap();
    drop(c);
}

#[test]
fn a_tls_state_this_binary_cannot_continue_is_refused_back_untouched() {
    let (table, config, _dir) = material();
    let old = Kit::start("echo", "", &table);
    let mut c = client(&old, &config);
    echo(&mut c, b"hello\n");
    old.master
        .send(&ToWorker::Drain {
            idle: IdlePolicy::Handoff,
        })
        .unwrap();
    let (m, fds) = old.next(&|m| matches!(m, ToMaster::Handoff { .. }));
    let ToMaster::Handoff { mut conns } = m else {
        unreachable!()
    };
    // A state from a "newer binary": a format version this one does not read.
    conns[0].tls.as_mut().unwrap().version = 99;
    let new = Kit::start("echo", "", &table);
    // Listeners are matched by address; the new kit listens elsewhere.
    conns[0].listen = new.addr.to_string();
    let sent = conns.clone();
    new.master
        .send_fds(
            &ToWorker::Adopt { conns },
            &[std::os::fd::AsFd::as_fd(&fds[0])],
        )
        .unwrap();
    let (m, back) = new.next(&|m| matches!(m, ToMaster::Refused { .. }));
    let ToMaster::Refused { conns } = m else {
        unreachable!()
    };
    assert_eq!(back.len(), 1, "the socket comes back with the refusal");
    assert_eq!(
        conns[0].tls, sent[0].tls,
        "the record layer came back untouched"
    );
    let why = conns[0].moved.as_ref().and_then(|m| m.refused.clone());
    assert!(why.is_some_and(|w| w.contains("version 99")));
}
