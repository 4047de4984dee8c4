//! Operator safety: `corral -s` and the pid file never hit the wrong process, other
//! users cannot plant, fake or command anything, runtime files get their modes
//! whatever the umask, and a daemon started with relative paths keeps working.

use crate::common;

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::moves::kv_binary;
use common::opsec::*;
use common::*;

const CLI_TIMEOUT: Duration = Duration::from_secs(60);

fn bin() -> PathBuf {
    PathBuf::from(corral_bin())
}

fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("corral-ops-")
        .tempdir()
        .expect("temp dir")
}

fn cli(dir: &Path, args: &[&str]) -> Ran {
    run(cmd(&bin(), dir, args), dir, CLI_TIMEOUT)
}

fn echo_ok(addr: SocketAddr) -> bool {
    match connect(addr, Duration::from_secs(5)) {
        Ok(mut s) => matches!(echo(&mut s, b"ping\n", Duration::from_secs(10)), Echo::Ok),
        Err(_) => false,
    }
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Writes at `conf` an echo config on `port` with `pid_file`.
fn write_conf(conf: &Path, port: u16, pid_file: &Path) {
    fs::write(
        conf,
        echo_config(port, &format!("pid_file = \"{}\"", pid_file.display())),
    )
    .unwrap();
}

/// Starts this build's corral on `conf` (from `dir`) and waits until it serves;
/// a failure says `what` did not start and shows its log.
fn start_corral(
    reaper: &Reaper,
    dir: &Path,
    conf: &Path,
    [pid_file, sock, log]: [&Path; 3],
    what: &str,
) -> i32 {
    start_master(
        reaper,
        cmd(&bin(), dir, &["-c", conf.to_str().unwrap()]),
        pid_file,
        sock,
        log,
    )
    .unwrap_or_else(|log| panic!("{what} did not start: {log}"))
}

/// A fake control server on `sock` (a python3 child of `reaper`, for 60 s): it
/// answers every request with a successful reload by master `master_pid`. With
/// `user` it listens as that user (SO_PEERCRED names whoever called listen()), on a
/// socket anyone may connect to.
fn fake_control(reaper: &Reaper, sock: &Path, master_pid: i32, user: Option<&TestUser>) {
    let become_user = user.map_or(String::new(), |u| {
        format!(
            "os.chmod({sock:?}, 0o666)\n\
             os.setgroups([]); os.setgid({gid}); os.setuid({uid})\n",
            sock = sock.to_str().unwrap(),
            gid = u.gid,
            uid = u.uid
        )
    });
    let script = format!(
        "import os, socket, time\n\
         s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n\
         s.bind({sock:?})\n\
         {become_user}\
         s.listen(8)\n\
         s.settimeout(60)\n\
         end = time.time() + 60\n\
         while time.time() < end:\n\
         \x20   c, _ = s.accept()\n\
         \x20   try:\n\
         \x20       c.recv(4096)\n\
         \x20       c.sendall(b'{{\"ok\":true,\"message\":\"FAKE reloaded\",\"master_pid\":{master_pid},\"generation\":9}}\\n')\n\
         \x20   except OSError:\n\
         \x20       pass\n\
         \x20   c.close()\n",
        sock = sock.to_str().unwrap(),
    );
    let faker = Command::new("python3")
        .args(["-c", &script])
        .stdin(std::process::Stdio::null())
        .spawn()
        .expect("spawn python3");
    reaper.adopt_child(faker);
}

/// The CLI did not take the fake server (`who`) for the master: it failed and did
/// not show the fake answer.
fn assert_not_believed(out: &Ran, who: &str) {
    assert!(!out.ok(), "the CLI believed {who}: {}", out.all());
    assert!(
        !out.all().contains("FAKE"),
        "the fake answer was shown: {}",
        out.all()
    );
}

/// A stale pid file whose pid now belongs to a bystander: neither a bare pid (an
/// older corral's file) nor one with a stale identity record gets it signalled.
#[test]
fn stale_pid_file_never_signals_a_bystander() {
    let dir = tempdir();
    let pid_file = dir.path().join("corral.pid");
    let conf = dir.path().join("corral.toml");
    let master = format!("pid_file = \"{}\"", pid_file.display());
    fs::write(&conf, echo_config(free_port(), &master)).unwrap();
    let conf_s = conf.to_str().unwrap();
    let sleeper = Bystander::spawn();
    let pid = sleeper.pid();
    let id_file = dir.path().join("corral.pid.id");
    let stale_record = format!(
        "pid={pid}\nstart_time={}\nboot_id={}\nexe={}\nconfig={conf_s}\n",
        sleeper.id.start + 1,
        fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .unwrap()
            .trim(),
        bin().display()
    );
    for record in [None, Some(stale_record)] {
        fs::write(&pid_file, format!("{pid}\n")).unwrap();
        match &record {
            Some(r) => fs::write(&id_file, r).unwrap(),
            None => {
                let _ = fs::remove_file(&id_file);
            }
        }
        for what in ["stop", "quit", "reload"] {
            let out = cli(dir.path(), &["-s", what, "-c", conf_s]);
            assert!(
                !out.ok(),
                "-s {what} with a stale pid file exited 0: {}",
                out.all()
            );
            assert!(
                out.stderr
                    .contains(&format!("pid {pid} in {}", pid_file.display()))
                    && out.stderr.contains("is not this corral master")
                    && out.stderr.contains("refusing to signal it"),
                "-s {what}: unclear refusal: {}",
                out.all()
            );
            // A signal would have been delivered by now (kill() is synchronous).
            assert!(
                sleeper.alive(),
                "-s {what} (record {:?}) killed the bystander {pid}",
                record.is_some()
            );
        }
    }
}

/// A config with a TOML syntax error must not make `-s stop` guess the default
/// paths (and stop whatever master lives there).
#[test]
fn broken_config_never_falls_back_to_default_paths() {
    let run_dir = Path::new("/run/corral");
    let default_pid = run_dir.join("corral.pid");
    let default_sock = run_dir.join("corral.sock");
    if default_pid.exists() || default_sock.exists() {
        println!("SKIP: a master already uses the default paths in /run/corral");
        return;
    }
    let created_dir = !run_dir.exists();
    let dir = tempdir();
    let reaper = Reaper::default();
    let port = free_port();
    let victim_conf = dir.path().join("default-paths.toml");
    write_conf(&victim_conf, port, &default_pid);
    let victim = start_corral(
        &reaper,
        dir.path(),
        &victim_conf,
        [&default_pid, &default_sock, &dir.path().join("victim.log")],
        "the master on the default paths",
    );
    let broken = dir.path().join("broken.toml");
    fs::write(&broken, "[master\nworkers = 1\n").unwrap();
    let out = cli(dir.path(), &["-s", "stop", "-c", broken.to_str().unwrap()]);
    let victim_id = proc_id(victim).expect("victim master's /proc entry");
    let still_there = proc_alive(victim_id) && echo_ok(local(port));
    let status = cli(dir.path(), &["status", "-c", victim_conf.to_str().unwrap()]);
    // Stop it before asserting, so that /run/corral is left as found.
    let _ = cli(
        dir.path(),
        &["-s", "stop", "-c", victim_conf.to_str().unwrap()],
    );
    drop(reaper);
    if created_dir {
        let _ = fs::remove_dir(run_dir);
    }
    assert!(
        !out.ok(),
        "-s stop with a broken config exited 0: {}",
        out.all()
    );
    assert!(
        out.stderr.contains(broken.to_str().unwrap()) && out.stderr.contains("nothing was sent"),
        "the error names neither the file nor the refusal: {}",
        out.all()
    );
    assert!(
        still_there,
        "the master on the default paths was hit: {}",
        out.all()
    );
    assert!(status.ok(), "status of the other master: {}", status.all());
}

/// The pid file's temporary name is neither predictable nor followed: links planted
/// at every name the old scheme could use leave their target untouched.
#[test]
fn planted_links_at_temp_names_are_not_followed() {
    let dir = tempdir();
    let victim_dir = tempdir();
    let victim = victim_dir.path().join("precious");
    fs::write(&victim, "precious\n").unwrap();
    let pid_file = dir.path().join("corral.pid");
    // The old scheme wrote corral.tmp<PID>: plant one for every pid the master can
    // get soon (pids are handed out in order), plus a few guessable names.
    let next = Command::new("true")
        .spawn()
        .map(|mut c| {
            let p = c.id();
            let _ = c.wait();
            p
        })
        .unwrap();
    let mut planted = vec![
        dir.path().join("corral.pid.tmp"),
        dir.path().join(".corral.pid.tmp"),
        dir.path().join("corral.tmp"),
        dir.path().join("corral.pid.id.tmp"),
    ];
    // Pids wrap at pid_max back to 300 (the kernel's reserved range ends there).
    let pid_max: u32 = fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(32768);
    let candidates: std::collections::HashSet<u32> = (0..6000u32)
        .map(|i| {
            let p = next + i;
            if p >= pid_max {
                300 + (p - pid_max) % (pid_max - 300)
            } else {
                p
            }
        })
        .collect();
    planted.extend(
        candidates
            .iter()
            .map(|p| dir.path().join(format!("corral.tmp{p}"))),
    );
    for p in &planted {
        std::os::unix::fs::symlink(&victim, p).unwrap();
    }
    let conf = dir.path().join("corral.toml");
    write_conf(&conf, free_port(), &pid_file);
    let reaper = Reaper::default();
    let pid = start_corral(
        &reaper,
        dir.path(),
        &conf,
        [
            &pid_file,
            &dir.path().join("corral.sock"),
            &dir.path().join("master.log"),
        ],
        "master",
    );
    assert!(
        candidates.contains(&(pid as u32)),
        "the master's pid {pid} fell outside the planted range; the test proves nothing"
    );
    assert_eq!(
        fs::read_to_string(&victim).unwrap(),
        "precious\n",
        "a planted link's target was overwritten"
    );
    assert_eq!(
        fs::read_to_string(&pid_file).unwrap().trim(),
        pid.to_string()
    );
    assert!(
        !fs::symlink_metadata(&pid_file)
            .unwrap()
            .file_type()
            .is_symlink(),
        "the pid file is a link"
    );
}

/// Another uid can neither pre-create the runtime directory, nor fake the master's
/// answers, nor command root's master.
#[test]
fn other_users_cannot_plant_fake_or_command() {
    let Some(user) = TestUser::create() else {
        return;
    };
    let dir = tempdir();
    chmod(dir.path(), 0o755);

    // 1. A runtime directory that the other user made (in a sticky, world-writable
    //    parent, as /tmp is), and one of ours that anyone may write.
    let shared = dir.path().join("shared");
    fs::create_dir(&shared).unwrap();
    chmod(&shared, 0o1777);
    let planted = shared.join("corral");
    let made = run(
        user.command(
            Path::new("mkdir"),
            dir.path(),
            &["-m", "0755", planted.to_str().unwrap()],
        ),
        dir.path(),
        CLI_TIMEOUT,
    );
    assert!(made.ok(), "mkdir as {}: {}", user.name, made.all());
    let loose = dir.path().join("loose");
    fs::create_dir(&loose).unwrap();
    chmod(&loose, 0o777);
    for (run_dir, owner, mode) in [(&planted, user.uid, "0755"), (&loose, 0, "0777")] {
        let pid_file = run_dir.join("corral.pid");
        let conf = dir.path().join("planted.toml");
        write_conf(&conf, free_port(), &pid_file);
        let out = cli(dir.path(), &["-c", conf.to_str().unwrap()]);
        assert!(!out.ok(), "the master started in {}", run_dir.display());
        let want = format!(
            "runtime directory {} is owned by uid {owner} with mode {mode}",
            run_dir.display()
        );
        assert!(
            out.stderr.contains(&want),
            "want {want:?} in: {}",
            out.all()
        );
        assert!(
            !pid_file.exists(),
            "a pid file was written in {}",
            run_dir.display()
        );
    }

    // 2. A server of the other uid on root's control socket path fakes answers.
    let fake_dir = dir.path().join("fake");
    fs::create_dir(&fake_dir).unwrap();
    let fake_sock = fake_dir.join("corral.sock");
    let fake_conf = dir.path().join("fake.toml");
    write_conf(&fake_conf, free_port(), &fake_dir.join("corral.pid"));
    // Bound as root, then listen()ing as the other user.
    let reaper = Reaper::default();
    fake_control(&reaper, &fake_sock, 1, Some(&user));
    assert!(
        wait_until(Duration::from_secs(20), || UnixStream::connect(&fake_sock)
            .map(|mut s| {
                let _ = s.write_all(b"\"status\"\n");
                let mut b = Vec::new();
                let _ = s.read_to_end(&mut b);
                !b.is_empty()
            })
            .unwrap_or(false)),
        "the fake server did not come up"
    );
    let out = cli(
        dir.path(),
        &["-s", "reload", "-c", fake_conf.to_str().unwrap()],
    );
    assert_not_believed(&out, "a fake server");
    assert!(
        out.stderr.contains(&format!("of uid {}", user.uid)),
        "the refusal does not name the server's uid: {}",
        out.all()
    );
    drop(reaper);

    // 3. A client of the other uid, even on a socket someone loosened to 0666.
    let run_dir = dir.path().join("run");
    let pid_file = run_dir.join("corral.pid");
    let sock = run_dir.join("corral.sock");
    let conf = dir.path().join("root.toml");
    let port = free_port();
    write_conf(&conf, port, &pid_file);
    let log = dir.path().join("root-master.log");
    let reaper = Reaper::default();
    let master = start_corral(
        &reaper,
        dir.path(),
        &conf,
        [&pid_file, &sock, &log],
        "root's master",
    );
    let master_id = proc_id(master).unwrap();
    assert_eq!(mode_of(&sock), 0o600);
    let as_user = |what: &str| {
        run(
            user.command(
                &bin(),
                dir.path(),
                &["-s", what, "-c", conf.to_str().unwrap()],
            ),
            dir.path(),
            CLI_TIMEOUT,
        )
    };
    let out = as_user("stop");
    assert!(
        !out.ok(),
        "{} stopped root's master: {}",
        user.name,
        out.all()
    );
    chmod(&sock, 0o666);
    let out = as_user("stop");
    assert!(
        !out.ok(),
        "{} stopped root's master via a 0666 socket: {}",
        user.name,
        out.all()
    );
    let refusal = format!("refusing a client of uid {}", user.uid);
    assert!(
        wait_until(Duration::from_secs(10), || fs::read_to_string(&log)
            .unwrap_or_default()
            .contains(&refusal)),
        "the master did not log {refusal:?}: {}",
        fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(
        proc_alive(master_id) && echo_ok(local(port)),
        "root's master is gone"
    );
    let status = cli(dir.path(), &["status", "-c", conf.to_str().unwrap()]);
    assert!(
        status.ok(),
        "root's own status was refused: {}",
        status.all()
    );
}

/// Under `umask 000` the runtime directory, pid file and socket still get 0755,
/// 0644 and 0600.
#[test]
fn runtime_modes_ignore_the_umask() {
    let dir = tempdir();
    let run_dir = dir.path().join("run").join("deeper");
    let pid_file = run_dir.join("corral.pid");
    let sock = run_dir.join("corral.sock");
    let conf = dir.path().join("corral.toml");
    write_conf(&conf, free_port(), &pid_file);
    let reaper = Reaper::default();
    let mut c = Command::new("sh");
    c.args(["-c", "umask 000; exec \"$0\" -c \"$1\""])
        .arg(bin())
        .arg(&conf)
        .current_dir(dir.path());
    start_master(&reaper, c, &pid_file, &sock, &dir.path().join("master.log"))
        .unwrap_or_else(|log| panic!("master did not start: {log}"));
    assert_eq!(mode_of(&dir.path().join("run")), 0o755, "created parent");
    assert_eq!(mode_of(&run_dir), 0o755, "runtime directory");
    assert_eq!(mode_of(&pid_file), 0o644, "pid file");
    assert_eq!(
        mode_of(&dir.path().join("run/deeper/corral.pid.id")),
        0o644,
        "identity record"
    );
    assert_eq!(mode_of(&sock), 0o600, "control socket");
}

/// A binary built on the library (examples/kv) is recognised by its recorded
/// identity, not by "corral" in its name: a second start is refused without
/// clobbering the pid file, and the pid-file fallback of `-s stop` stops it.
#[test]
fn custom_binary_is_recognised_by_its_identity() {
    let kv = kv_binary();
    let dir = tempdir();
    let pid_file = dir.path().join("kv.pid");
    let sock = dir.path().join("kv.sock");
    let conf = dir.path().join("kv.toml");
    // reuseport: a second master can bind too, so what stops it is the pid file.
    fs::write(
        &conf,
        Conf::bare(1)
            .stop("3s")
            .pid_file(&pid_file.display().to_string())
            .accept("reuseport")
            .render_on(free_port()),
    )
    .unwrap();
    let conf_s = conf.to_str().unwrap();
    let reaper = Reaper::default();
    let pid = start_master(
        &reaper,
        cmd(&kv, dir.path(), &["-c", conf_s]),
        &pid_file,
        &sock,
        &dir.path().join("kv.log"),
    )
    .unwrap_or_else(|log| panic!("kv did not start: {log}"));

    let second = run(
        cmd(&kv, dir.path(), &["-c", conf_s]),
        dir.path(),
        CLI_TIMEOUT,
    );
    assert!(!second.ok(), "a second kv master started");
    assert!(
        second
            .stderr
            .contains(&format!("already running with pid {pid}")),
        "the refusal does not name the running master: {}",
        second.all()
    );
    assert_eq!(
        fs::read_to_string(&pid_file).unwrap().trim(),
        pid.to_string(),
        "the second start clobbered the pid file"
    );

    // Without the control socket, -s stop falls back to the (proven) pid.
    fs::remove_file(&sock).unwrap();
    let out = run(
        cmd(&kv, dir.path(), &["-s", "stop", "-c", conf_s]),
        dir.path(),
        CLI_TIMEOUT,
    );
    assert!(out.ok(), "fallback stop failed: {}", out.all());
    assert!(
        out.stderr.contains(&format!("sent SIGTERM to pid {pid}")),
        "{}",
        out.all()
    );
    assert!(
        wait_until(Duration::from_secs(20), || reaper.all_gone()),
        "kv did not stop"
    );
}

/// `cd dir && ./bin/corral --daemon -c corral.toml` with relative pid file, log file
/// and unix listener: reload, reopen, upgrade and quit all work from that directory.
#[test]
fn daemon_with_relative_paths_keeps_working() {
    let dir = tempdir();
    let d = dir.path();
    fs::create_dir(d.join("bin")).unwrap();
    install_exec(Path::new(corral_bin()), &d.join("bin/corral"));
    let port = free_port();
    fs::write(
        d.join("corral.toml"),
        Conf::bare(1)
            .pid_file("run/corral.pid")
            .drain("5s")
            .stop("3s")
            .log_file("logs/corral.log")
            .listen_at("unix:echo.sock", "echo", "")
            .render_on(port),
    )
    .unwrap();
    fs::create_dir(d.join("logs")).unwrap();
    let reaper = Reaper::default();
    let here = |args: &[&str]| run(cmd(Path::new("./bin/corral"), d, args), d, CLI_TIMEOUT);
    let read_pid = || -> Option<i32> {
        fs::read_to_string(d.join("run/corral.pid"))
            .ok()?
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()
    };

    let out = here(&["--daemon", "-c", "corral.toml"]);
    if let Some(p) = read_pid() {
        reaper.adopt(p);
    }
    assert!(out.ok(), "daemon start: {}", out.all());
    let first = read_pid().expect("pid file");
    assert!(echo_ok(local(port)), "TCP echo");
    let unix_echo = || {
        UnixStream::connect(d.join("echo.sock"))
            .and_then(|mut s| {
                s.set_read_timeout(Some(Duration::from_secs(10)))?;
                s.write_all(b"hello\n")?;
                let mut line = String::new();
                BufReader::new(s).read_line(&mut line)?;
                Ok(line == "hello\n")
            })
            .unwrap_or(false)
    };
    assert!(unix_echo(), "unix listener at the relative path");

    for what in ["reload", "reopen"] {
        let out = here(&["-s", what, "-c", "corral.toml"]);
        assert!(out.ok(), "-s {what}: {}", out.all());
    }
    let out = here(&["-s", "upgrade", "-c", "corral.toml"]);
    if let Some(p) = read_pid() {
        reaper.adopt(p);
    }
    assert!(out.ok(), "-s upgrade: {}", out.all());
    let second = read_pid().expect("pid file after upgrade");
    assert_ne!(
        first, second,
        "the upgrade left the old master in the pid file"
    );
    assert!(
        echo_ok(local(port)) && unix_echo(),
        "serving after the upgrade"
    );
    let log = fs::read_to_string(d.join("logs/corral.log")).unwrap_or_default();
    assert!(
        log.contains("binary upgrade"),
        "the relative log file is not used: {log}"
    );

    // Relative paths are the config file's, so any directory reaches the same master.
    let conf_abs = d.join("corral.toml");
    let elsewhere = run(
        cmd(
            &bin(),
            Path::new("/"),
            &["status", "-c", conf_abs.to_str().unwrap()],
        ),
        d,
        CLI_TIMEOUT,
    );
    assert!(
        elsewhere.ok() && elsewhere.stdout.contains(&format!("master {second}")),
        "status from /: {}",
        elsewhere.all()
    );

    let out = here(&["-s", "quit", "-c", "corral.toml"]);
    assert!(out.ok(), "-s quit: {}", out.all());
    assert!(
        wait_until(Duration::from_secs(30), || reaper.all_gone()),
        "the daemon did not exit"
    );
    assert!(!d.join("run/corral.pid").exists(), "pid file left behind");
}

/// A server of our own uid on the socket path is still not believed when the pid
/// file proves that another process is the master.
#[test]
fn cli_believes_only_the_master_the_pid_file_proves() {
    let dir = tempdir();
    let d = dir.path();
    let pid_file = d.join("corral.pid");
    let port = free_port();
    let conf = d.join("corral.toml");
    write_conf(&conf, port, &pid_file);
    let reaper = Reaper::default();
    let master = start_corral(
        &reaper,
        d,
        &conf,
        [&pid_file, &d.join("corral.sock"), &d.join("master.log")],
        "master",
    );
    // Same pid file, but the control socket of an impostor.
    let fake_sock = d.join("impostor.sock");
    let impostor_conf = d.join("impostor.toml");
    fs::write(
        &impostor_conf,
        echo_config(
            port,
            &format!(
                "pid_file = \"{}\"\ncontrol_socket = \"{}\"",
                pid_file.display(),
                fake_sock.display()
            ),
        ),
    )
    .unwrap();
    fake_control(&reaper, &fake_sock, master, None);
    assert!(
        wait_until(Duration::from_secs(20), || fake_sock.exists()
            && UnixStream::connect(&fake_sock).is_ok()),
        "the impostor did not come up"
    );
    let out = cli(d, &["-s", "reload", "-c", impostor_conf.to_str().unwrap()]);
    assert_not_believed(&out, "an impostor");
    assert!(
        out.stderr
            .contains(&format!("not by the master the pid file names ({master})")),
        "{}",
        out.all()
    );
    let real = cli(d, &["-s", "reload", "-c", conf.to_str().unwrap()]);
    assert!(real.ok(), "the real master's reload: {}", real.all());
}
