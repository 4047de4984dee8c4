//! Unit tests of the loop's collecting step over the fake (`fake.rs`) with a real
//! control socket: `collect` gathers what workers sent and turns control requests
//! into jobs without acting on them; a malformed request is answered; and the bus
//! is wired between every pair of live workers as each is forked.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use super::control::Request;
use super::fake::Bench;
use super::{Command, Job, WorkerState};
use crate::channel::{Stats, ToMaster, ToWorker};
use crate::os::master::Pid;

fn signal(command: Command) -> Job {
    Job {
        command,
        waiter: None,
    }
}

fn connect(path: &std::path::Path, line: &str) -> UnixStream {
    let mut s = UnixStream::connect(path).expect("connect to the control socket");
    s.write_all(line.as_bytes()).expect("request");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    s
}

fn response(s: &mut UnixStream) -> super::control::Response {
    let mut buf = String::new();
    s.read_to_string(&mut buf).expect("the answer, then EOF");
    serde_json::from_str(buf.trim()).unwrap_or_else(|e| panic!("{e}: {buf:?}"))
}

#[test]
fn collect_gathers_worker_reports_without_acting_on_them() {
    let mut b = Bench::running(2, "");
    let pid = b.pids(1, WorkerState::Ready)[0];
    let stats = Stats {
        connections: 3,
        ..Default::default()
    };
    b.fx.say(pid, &ToMaster::Heartbeat(stats), &[]);
    let got = b.m.collect();
    assert!(got.jobs.is_empty(), "no job");
    assert_eq!(got.heard.len(), 1, "one report");
    assert!(
        matches!(&got.heard[0], (p, ToMaster::Heartbeat(s)) if *p == pid && s.connections == 3),
        "{:?}",
        got.heard
    );
    assert_eq!(
        b.m.workers[0].stats.connections, 0,
        "not recorded until the record step"
    );
}

#[test]
fn collect_turns_a_control_request_into_a_job_answered_once_handled() {
    let mut b = Bench::running(1, "");
    let path = b.control_socket();
    let line = serde_json::to_string(&Request::Status).expect("json") + "\n";
    let mut client = connect(&path, &line);
    let got = b.m.collect();
    assert_eq!(got.jobs.len(), 1, "one job");
    assert_eq!(got.jobs[0].command, Command::Status);
    assert!(got.jobs[0].waiter.is_some(), "with its client as waiter");
    b.handle(got.jobs);
    let resp = response(&mut client);
    assert!(resp.ok && resp.workers.len() == 1, "{resp:?}");
}

#[test]
fn a_malformed_control_request_is_answered_and_makes_no_job() {
    let mut b = Bench::running(1, "");
    let path = b.control_socket();
    let mut client = connect(&path, "{\"not\": \"a request\"}\n");
    let got = b.m.collect();
    assert!(got.jobs.is_empty(), "no job: {:?}", got.jobs);
    b.tick();
    let resp = response(&mut client);
    assert!(
        !resp.ok && resp.message.contains("malformed control request"),
        "{resp:?}"
    );
}

/// The bus peers each worker was given, with the fd that must come along.
fn peers(b: &Bench, pid: Pid) -> Vec<u32> {
    b.fx.sent_to(pid)
        .into_iter()
        .filter_map(|(m, fds)| match m {
            ToWorker::BusPeer { pid } => {
                assert_eq!(fds.len(), 1, "one end of a socketpair per peer");
                Some(pid)
            }
            _ => None,
        })
        .collect()
}

fn raw(p: Pid) -> u32 {
    p.as_raw() as u32
}

#[test]
fn every_forked_worker_is_wired_to_every_live_one_of_any_generation() {
    let mut b = Bench::running(3, "drain_timeout = \"600s\"");
    let old = b.pids(1, WorkerState::Ready);
    let mut seen: Vec<Vec<u32>> = old.iter().map(|&p| peers(&b, p)).collect();
    seen.iter_mut().for_each(|v| v.sort());
    let want = |me: Pid| {
        let mut v: Vec<u32> = old.iter().filter(|&&p| p != me).map(|&p| raw(p)).collect();
        v.sort();
        v
    };
    for (k, &p) in old.iter().enumerate() {
        assert_eq!(seen[k], want(p), "worker {k} knows the other two");
    }
    b.handle(vec![signal(Command::Reload)]);
    let new = b.pids(2, WorkerState::Starting);
    let first = peers(&b, new[0]);
    for &p in &old {
        assert!(first.contains(&raw(p)), "a new worker knows the old ones");
    }
    for &p in &old {
        let got = peers(&b, p);
        for &n in &new {
            assert!(got.contains(&raw(n)), "an old worker knows the new ones");
        }
    }
}

#[test]
fn a_stopping_worker_is_not_wired_to_a_new_one() {
    let mut b = Bench::running(2, "");
    let pids = b.pids(1, WorkerState::Ready);
    for &p in &pids {
        let _ = b.fx.sent_to(p);
    }
    // A watchdog kill or deadline marks a worker stopping; its slot's successor
    // must not wait on it.
    let i = b.m.worker_index(pids[0]).expect("worker");
    b.m.workers[i].state = WorkerState::Stopping;
    b.m.spawn(0, 1).expect("fake fork");
    let new = b.m.workers.last().expect("new").pid;
    let got = peers(&b, new);
    assert_eq!(got, vec![raw(pids[1])], "only the live one");
    assert!(
        peers(&b, pids[0]).is_empty(),
        "the stopping one hears nothing"
    );
}

#[test]
fn a_publish_with_a_bad_topic_or_message_is_refused() {
    let mut b = Bench::running(1, "");
    let pid = b.pids(1, WorkerState::Ready)[0];
    let _ = b.fx.sent_to(pid);
    for (topic, message, why) in [
        ("", "x".to_string(), "a topic is 1 to"),
        (
            "t",
            "x".repeat(super::bus::MAX_CLI_MESSAGE + 1),
            "a message is at most",
        ),
    ] {
        let (job, mut a) = b.ask(Request::Publish {
            topic: topic.into(),
            message,
        });
        b.handle(vec![job]);
        let got = a.answer().expect("answered");
        assert!(!got.ok && got.message.contains(why), "{got:?}");
    }
    assert!(
        !b.fx
            .sent_to(pid)
            .iter()
            .any(|(m, _)| matches!(m, ToWorker::Publish { .. })),
        "nothing published"
    );
}

#[test]
fn a_publish_with_no_live_worker_is_refused() {
    let mut b = Bench::running(1, "");
    let pid = b.pids(1, WorkerState::Ready)[0];
    let i = b.m.worker_index(pid).expect("worker");
    b.m.workers[i].state = WorkerState::Stopping;
    let (job, mut a) = b.ask(Request::Publish {
        topic: "t".into(),
        message: "m".into(),
    });
    b.handle(vec![job]);
    let got = a.answer().expect("answered");
    assert!(
        !got.ok && got.message.contains("no worker is running"),
        "{got:?}"
    );
}
