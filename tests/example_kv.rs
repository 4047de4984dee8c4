//! The custom-service example (`examples/kv.rs`) builds, and the master runs it like
//! a built-in service.

use crate::common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::*;

fn line(r: &mut BufReader<TcpStream>) -> String {
    let mut s = String::new();
    r.read_line(&mut s).expect("read a reply line");
    s.trim_end().to_string()
}

#[test]
fn kv_example_serves_commands_and_uses_the_blocking_pool() {
    let (c, kv) = common::moves::start_kv(Conf::bare(1), "", &[]);
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
    c.must_reload();
    let _ = other.write_all(b"QUIT\n");
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
    let (c, addr) = common::moves::start_kv(Conf::bare(1), "", &[]);
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
    let (c, addr) = common::moves::start_kv(Conf::bare(1), "", &[]);
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
    let out = std::process::Command::new(common::moves::kv_binary())
        .arg("--version")
        .output()
        .expect("run kv --version");
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("kv {}", env!("CARGO_PKG_VERSION"))
    );
    let help = std::process::Command::new(common::moves::kv_binary())
        .arg("--help")
        .output()
        .expect("run kv --help");
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("Usage: kv"), "{help}");
}

/// The replies to `commands` (then QUIT) on a new connection, BYE left out.
fn session(addr: SocketAddr, commands: &str) -> Vec<String> {
    let mut s = connect(addr, Duration::from_secs(10)).expect("connect to kv");
    s.write_all(format!("{commands}QUIT\n").as_bytes())
        .expect("send commands");
    let mut got = read_to_eof(&mut s, Duration::from_secs(10)).expect("replies");
    assert_eq!(got.pop().as_deref(), Some("BYE"), "{got:?}");
    got
}

/// Runs the kv binary with `args` in `dir`, killed (by pid) if it has not exited
/// within `timeout` (`None`: it kept running, so it accepted its config).
fn run_kv(dir: &std::path::Path, args: &[&str], timeout: Duration) -> Option<CliOutput> {
    let out = std::fs::File::create(dir.join("kv.out")).expect("create kv.out");
    let err = std::fs::File::create(dir.join("kv.err")).expect("create kv.err");
    let mut child = std::process::Command::new(common::moves::kv_binary())
        .args(args)
        .current_dir(dir)
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .expect("spawn kv");
    let mut status = None;
    wait_until(timeout, || {
        status = child.try_wait().expect("try_wait kv");
        status.is_some()
    });
    if status.is_none() {
        // It is serving: stop it and kill what it forked, by pid.
        let pid = child.id() as i32;
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGSTOP,
        );
        let kids = live_children(pid);
        let _ = child.kill();
        let _ = child.wait();
        for k in kids.into_iter().filter(|&k| proc_alive(k)) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(k.pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        return None;
    }
    Some(CliOutput {
        status: status?,
        stdout: std::fs::read_to_string(dir.join("kv.out")).unwrap_or_default(),
        stderr: std::fs::read_to_string(dir.join("kv.err")).unwrap_or_default(),
    })
}

/// A refusal that names the file, the listener and the key, and why.
fn assert_names(out: &CliOutput, what: &str, file: &str, key: &str, why: &str) {
    let text = out.all();
    assert!(!out.status.success(), "{what}: accepted: {text}");
    for want in [file, key, why] {
        assert!(text.contains(want), "{what}: {want:?} missing in: {text}");
    }
}

#[test]
fn kv_max_keys_is_enforced_and_a_reload_that_changes_it_applies() {
    let (c, addr) = common::moves::start_kv(Conf::bare(1), "max_keys = 2", &[]);
    let got = session(
        addr,
        "SET a 1\nSET b 2\nSET c 3\nSET a 4\nGET c\nDEL b\nSET c 3\n",
    );
    assert_eq!(got.len(), 7, "{got:?}");
    assert_eq!(&got[..2], ["OK", "OK"], "{got:?}");
    assert!(
        got[2].starts_with("ERROR") && got[2].contains("max_keys is 2"),
        "a third key was stored with max_keys = 2: {got:?}"
    );
    // Overwriting a key is no new key; a deleted key makes room.
    assert_eq!(&got[3..], ["OK", "NOT_FOUND", "DELETED", "OK"], "{got:?}");

    // `-t` with the kv binary accepts the key and reads its value.
    let cfg = c.config_str();
    let out = run_kv(
        c.config().parent().unwrap(),
        &["-t", "-c", &cfg],
        Duration::from_secs(20),
    )
    .expect("kv -t did not exit");
    assert!(
        out.status.success(),
        "kv -t refused max_keys: {}",
        out.all()
    );

    // A reload with max_keys = 3: the new worker (a fresh store) takes three keys
    // and refuses the fourth.
    let new = c.config_str();
    let text = std::fs::read_to_string(&new).expect("read config");
    std::fs::write(&new, text.replace("max_keys = 2", "max_keys = 3")).expect("write config");
    c.must_reload();
    let mut last = Vec::new();
    let applied = wait_until(Duration::from_secs(30), || {
        last = session(addr, "SET x1 1\nSET x2 1\nSET x3 1\nSET x4 1\n");
        last.len() == 4 && last[..3] == ["OK", "OK", "OK"] && last[3].contains("max_keys is 3")
    });
    assert!(
        applied,
        "max_keys = 3 not in force after the reload: {last:?}\n{}",
        c.log_tail(30)
    );
}

#[test]
fn kv_unknown_key_is_refused_at_start_and_at_reload() {
    // At start (and -t): the kv binary refuses a key kv does not take, naming the
    // file, listen[1] and the key, and saying which keys kv takes.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad-kv.toml");
    let pid_file = format!("{}/kv.pid", dir.path().display());
    let kv_conf = |kv_lines: &str| {
        Conf::bare(1)
            .pid_file(&pid_file)
            .listen(free_port(), "kv", kv_lines)
            .render_on(free_port())
    };
    let body = kv_conf("max_kyes = 2");
    std::fs::write(&bad, &body).unwrap();
    let p = bad.display().to_string();
    for (what, args) in [("-t", vec!["-t", "-c", &p]), ("start", vec!["-c", &p])] {
        let out = run_kv(dir.path(), &args, Duration::from_secs(20))
            .unwrap_or_else(|| panic!("kv {what} started serving with max_kyes:\n{body}"));
        assert_names(
            &out,
            what,
            "bad-kv.toml",
            "`listen[1].max_kyes`",
            "max_keys",
        );
    }
    // A value kv refuses is named as well.
    std::fs::write(&bad, kv_conf("max_keys = 0")).unwrap();
    let out = run_kv(dir.path(), &["-t", "-c", &p], Duration::from_secs(20)).expect("kv -t");
    assert_names(
        &out,
        "-t",
        "bad-kv.toml",
        "`listen[1].max_keys`",
        "at least 1",
    );

    // At reload: refused with the same words, and the running service keeps its
    // config (max_keys = 1 still in force).
    let (c, addr) = common::moves::start_kv(Conf::bare(1), "max_keys = 1", &[]);
    c.write_config(
        &Conf::bare(1)
            .listen(addr.port(), "kv", "max_keys = 1\nmax_kyes = 5")
            .render(),
    );
    let out = c.cli(&["-s", "reload"]);
    let file = c
        .config()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .to_string();
    assert_names(&out, "reload", &file, "`listen[1].max_kyes`", "max_keys");
    let got = session(addr, "SET a 1\nSET b 2\n");
    assert_eq!(got[0], "OK", "{got:?}");
    assert!(
        got[1].contains("max_keys is 1"),
        "the refused reload changed the running service: {got:?}\n{}",
        c.log_tail(30)
    );
}
