//! `corral top` and the progress of `-s reload`, black-box: the real binary against a
//! real master. The live view is driven in tmux (its screen read with `capture-pane`,
//! keys sent with `send-keys`), in a shell, so that the terminal it leaves behind can
//! be checked; the progress is read from a file (not a terminal) and from tmux (a
//! terminal). The move is held open by kv connections that refuse to suspend (they
//! stay on the old worker until their client quits), so the drain lasts exactly as
//! long as the test wants, with no timing guess.

use crate::common;

use std::fs::{self, File};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::moves::{start_kv, LineClient};
use common::*;
use nix::sys::signal::Signal;

const SCREEN: Duration = Duration::from_secs(20);
/// Idle echo connections that move at the reload.
const IDLE: usize = 300;

/// A tmux server of our own (its socket in the test's temp dir), killed at drop.
struct Tmux {
    sock: PathBuf,
}

impl Tmux {
    /// A 160x40 session running `sh`; None (the reason printed) without tmux.
    fn start(dir: &Path) -> Option<Tmux> {
        if Command::new("tmux").arg("-V").output().is_err() {
            eprintln!("SKIP: tmux is not installed (.ci/run installs it)");
            return None;
        }
        let t = Tmux {
            sock: dir.join("tmux.sock"),
        };
        let ok = t
            .cmd(&[
                "new-session",
                "-d",
                "-x",
                "160",
                "-y",
                "40",
                "env",
                "PS1=$ ",
                "sh",
            ])
            .status
            .success();
        assert!(ok, "tmux new-session failed");
        Some(t)
    }

    fn cmd(&self, args: &[&str]) -> std::process::Output {
        Command::new("tmux")
            .arg("-S")
            .arg(&self.sock)
            .args(args)
            .env_remove("TMUX")
            .stdin(Stdio::null())
            .output()
            .expect("run tmux")
    }

    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.cmd(&["capture-pane", "-p"]).stdout).into_owned()
    }

    fn keys(&self, keys: &[&str]) {
        let mut a = vec!["send-keys", "-t", "0"];
        a.extend_from_slice(keys);
        assert!(self.cmd(&a).status.success(), "tmux send-keys {keys:?}");
    }

    fn line(&self, line: &str) {
        self.keys(&["-l", line]);
        self.keys(&["Enter"]);
    }

    /// Waits until the screen satisfies `cond`; panics with the screen otherwise.
    fn wait(&self, what: &str, mut cond: impl FnMut(&str) -> bool) -> String {
        let mut last = String::new();
        let ok = wait_until(SCREEN, || {
            last = self.screen();
            cond(&last)
        });
        assert!(ok, "tmux screen never showed {what}:\n{last}");
        last
    }

    /// The pid of the one process the pane's shell runs now.
    fn child_of_shell(&self) -> i32 {
        let out = self.cmd(&["list-panes", "-F", "#{pane_pid}"]);
        let shell = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let kids = fs::read_to_string(format!("/proc/{shell}/task/{shell}/children"))
            .expect("the shell's children");
        let kids: Vec<i32> = kids
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        assert_eq!(kids.len(), 1, "the shell runs one command: {kids:?}");
        kids[0]
    }

    /// The terminal is back in cooked mode with echo (what `corral top` must leave).
    fn assert_terminal_restored(&self) {
        // The marker is computed, so the typed command line does not match it.
        self.line("clear; stty -a | tr ' ;' '\\n\\n' | grep -x -e icanon -e echo -e -icanon -e -echo | tr '\\n' ' '; echo STTY-$((1+1))");
        let s = self.wait("the stty modes", |s| s.contains("STTY-2"));
        assert!(
            s.contains("icanon echo STTY-2"),
            "the terminal was not restored (raw mode left on):\n{s}"
        );
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd(&["kill-server"]);
    }
}

fn workers_json(c: &Corral) -> Vec<serde_json::Value> {
    let out = c.cli(&["status", "--json"]);
    assert!(out.status.success(), "{}", out.all());
    let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("status JSON");
    v["workers"].as_array().cloned().unwrap_or_default()
}

fn connections(c: &Corral) -> u64 {
    workers_json(c)
        .iter()
        .map(|w| w["connections"].as_u64().unwrap_or(0))
        .sum()
}

/// IDLE idle echo connections and two kv connections held on the old workers, all
/// counted by the master.
fn hold(c: &Corral, kv: SocketAddr) -> (Vec<TcpStream>, Vec<LineClient>) {
    let idle: Vec<TcpStream> = (0..IDLE).map(|_| c.connect()).collect();
    let mut kvs: Vec<LineClient> = (0..2).map(|_| LineClient::connect(kv)).collect();
    for k in &mut kvs {
        assert_eq!(k.ask("COUNT").as_deref(), Ok("COUNT 1"));
    }
    assert!(
        wait_until(SCREEN, || connections(c) >= (IDLE + 2) as u64),
        "the master never counted {} connections\n{}",
        IDLE + 2,
        c.log_tail(40)
    );
    (idle, kvs)
}

fn quit(kvs: Vec<LineClient>) {
    for mut k in kvs {
        assert_eq!(k.ask("QUIT").as_deref(), Ok("BYE"));
    }
}

/// "N moved" out of the final line.
fn moved_in(line: &str) -> u64 {
    let i = line.find(" moved").expect("a moved count");
    line[..i]
        .rsplit(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no moved count in {line:?}"))
}

#[test]
fn top_once_prints_the_workers_and_the_generation() {
    let c = Corral::start(&Conf::new(2).render());
    let _conns: Vec<TcpStream> = (0..5).map(|_| c.connect()).collect();
    let out = c.cli(&["top", "--once", "--interval", "200ms"]);
    assert!(out.status.success(), "{}", out.all());
    let text = out.stdout;
    assert!(
        text.starts_with(&format!("master {}: running, generation 1", c.master_pid())),
        "{text}"
    );
    for pid in c.worker_pids() {
        let row = text
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(&pid.to_string()))
            .unwrap_or_else(|| panic!("no row for worker {pid}:\n{text}"));
        assert_eq!(row.split_whitespace().nth(2), Some("1"), "{row}");
    }
    for section in ["workers (sorted by SLOT)", "generations", "events"] {
        assert!(text.lines().any(|l| l == section), "no {section}:\n{text}");
    }
    assert!(
        text.lines()
            .any(|l| l.split_whitespace().take(2).eq(["1", "serving"])),
        "{text}"
    );
    assert!(!text.contains('\x1b'), "plain text has no escape codes");
}

#[test]
fn top_in_a_terminal_shows_workers_events_and_restores_the_terminal_on_every_exit() {
    let c = Corral::start(&Conf::new(2).render());
    let Some(t) = Tmux::start(c.dir.path()) else {
        return;
    };
    let cmd = format!(
        "{} top -c {}; echo TOP-EXIT=$?",
        corral_bin(),
        c.config_str()
    );
    let shows_workers = |s: &str, c: &Corral, gen: u64| {
        s.contains(&format!("generation {gen} |"))
            && c.worker_pids()
                .iter()
                .all(|p| s.contains(&format!(" {p} ")))
    };

    // 1. q: the workers and generation, a reload as an event, sorting, then out.
    t.line(&cmd);
    t.wait("the workers of generation 1", |s| shows_workers(s, &c, 1));
    t.keys(&["2"]);
    t.wait("the sort by PID", |s| s.contains("workers (sorted by PID)"));
    c.must_reload();
    assert!(wait_until(SCREEN, || status(&c)
        .2
        .iter()
        .all(|w| w.generation == 2)));
    let s = t.wait("generation 2 and the reload event", |s| {
        shows_workers(s, &c, 2)
            && s.contains("reload: generation 2 serving (was 1)")
            && s.lines().any(|l| l.contains("│2") && l.contains("serving"))
            && s.contains("generation 1 gone after")
    });
    eprintln!("{s}");
    t.keys(&["q"]);
    t.wait("corral top's exit", |s| s.contains("TOP-EXIT=0"));
    t.assert_terminal_restored();

    // 2. Ctrl-C.
    t.line(&format!("clear; {cmd}"));
    t.wait("the workers again", |s| shows_workers(s, &c, 2));
    t.keys(&["C-c"]);
    t.wait("corral top's exit on Ctrl-C", |s| s.contains("TOP-EXIT=0"));
    t.assert_terminal_restored();

    // 3. SIGTERM to corral top (the shell's child, which this test started).
    t.line(&format!("clear; {cmd}"));
    t.wait("the workers again", |s| shows_workers(s, &c, 2));
    let top = t.child_of_shell();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(top), Signal::SIGTERM).expect("kill top");
    t.wait("corral top's exit on SIGTERM", |s| s.contains("TOP-EXIT=0"));
    t.assert_terminal_restored();

    // 4. The master goes away.
    t.line(&format!("clear; {cmd}"));
    t.wait("the workers again", |s| shows_workers(s, &c, 2));
    c.signal(Signal::SIGTERM);
    let s = t.wait("corral top's exit when the master is gone", |s| {
        s.contains("TOP-EXIT=1")
    });
    assert!(s.contains("the master went away"), "{s}");
    t.assert_terminal_restored();
}

/// Not a terminal: a line per second while the old generation drains, then the
/// final counts; exit status 0.
#[test]
fn reload_follows_the_move_with_plain_lines_when_not_a_terminal() {
    let (c, kv) = start_kv(
        Conf::bare(2).drain("60s").max_conns(2000),
        "",
        &[("CORRAL_KV_SUSPEND", "off")],
    );
    let (_idle, kvs) = hold(&c, kv);
    let out_path = c.dir.path().join("reload.out");
    let mut child = Command::new(corral_bin())
        .args(["-s", "reload", "-c", &c.config_str()])
        .stdin(Stdio::null())
        .stdout(File::create(&out_path).unwrap())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn corral -s reload");
    let read = || fs::read_to_string(&out_path).unwrap_or_default();
    let moving = |s: &str| {
        s.lines()
            .filter(|l| l.starts_with("corral: moving: "))
            .count()
    };
    let held = wait_until(SCREEN, || moving(&read()) >= 2);
    let text = read();
    quit(kvs);
    let status = wait_until(SCREEN, || child.try_wait().ok().flatten().is_some());
    if !status {
        let _ = child.kill();
    }
    let _ = child.wait();
    let text = format!("{text}{}", read().get(text.len()..).unwrap_or(""));
    eprintln!("{text}");
    assert!(held, "no progress lines while the move was held:\n{text}");
    assert!(
        status,
        "corral -s reload did not return once the old generation was gone:\n{text}"
    );
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("corral: reloaded: generation 2 serving"),
        "{text}"
    );
    let progress = lines
        .iter()
        .find(|l| l.starts_with("corral: moving: "))
        .unwrap();
    assert!(
        progress.contains(&format!(" of {}", IDLE + 2)),
        "{progress}"
    );
    assert!(progress.contains(" remaining ("), "{progress}");
    let last = lines.last().unwrap();
    assert!(
        last.starts_with("corral: old generation gone after "),
        "{text}"
    );
    assert!(moved_in(last) >= IDLE as u64, "{last}");
    assert!(last.ends_with(&format!("(of {})", IDLE + 2)), "{last}");
    assert!(
        !text.contains('\x1b'),
        "no escape codes when not a terminal"
    );
}

/// `--no-wait`: returns as soon as the new generation serves, the old one still
/// draining.
#[test]
fn reload_no_wait_returns_while_the_old_generation_drains() {
    let (c, kv) = start_kv(
        Conf::bare(2).drain("60s").max_conns(2000),
        "",
        &[("CORRAL_KV_SUSPEND", "off")],
    );
    let (_idle, kvs) = hold(&c, kv);
    let out = run_cli(
        c.dir.path(),
        &["-s", "reload", "--no-wait", "-c", &c.config_str()],
        SCREEN,
    );
    assert!(out.status.success(), "{}", out.all());
    assert_eq!(out.stdout.lines().count(), 1, "{}", out.stdout);
    assert!(
        status(&c).2.iter().any(|w| w.generation == 1),
        "the old generation holds its kv connections"
    );
    quit(kvs);
}

/// A terminal: a progress bar (moved of total, rate, time left) while the move is
/// held, then the final counts.
#[test]
fn reload_shows_a_progress_bar_on_a_terminal() {
    let (c, kv) = start_kv(
        Conf::bare(2).drain("60s").max_conns(2000),
        "",
        &[("CORRAL_KV_SUSPEND", "off")],
    );
    let Some(t) = Tmux::start(c.dir.path()) else {
        return;
    };
    let (_idle, kvs) = hold(&c, kv);
    t.line(&format!(
        "{} -s reload -c {}; echo RELOAD-EXIT=$?",
        corral_bin(),
        c.config_str()
    ));
    let total = IDLE + 2;
    let s = t.wait("a progress bar", |s| {
        s.lines().any(|l| {
            l.contains('[') && l.contains(&format!("/{total} moved (")) && l.contains(" left)")
        })
    });
    eprintln!("{s}");
    assert!(
        !s.contains("corral: moving:"),
        "plain lines on a terminal:\n{s}"
    );
    quit(kvs);
    let s = t.wait("the final counts", |s| s.contains("RELOAD-EXIT=0"));
    eprintln!("{s}");
    assert!(s.contains("corral: old generation gone after "), "{s}");
    assert!(s.contains(&format!("(of {total})")), "{s}");
}

/// An upgrade is followed until the old master is gone: the final counts say how
/// many connections the new master took over, not a terminal.
#[test]
fn upgrade_follows_the_old_master_until_it_is_gone() {
    let c = Corral::start(&Conf::new(2).drain("60s").max_conns(2000).render());
    let _idle: Vec<TcpStream> = (0..IDLE).map(|_| c.connect()).collect();
    assert!(
        wait_until(SCREEN, || connections(&c) >= IDLE as u64),
        "the master never counted {IDLE} connections\n{}",
        c.log_tail(40)
    );
    let old = c.master_pid();
    let out = run_cli_with(
        c.dir.path(),
        &["-s", "upgrade", "-c", &c.config_str()],
        Duration::from_secs(60),
        || {
            let _ = c.master_exited();
        },
    );
    c.adopt_new_masters();
    eprintln!("{}", out.all());
    assert!(out.status.success(), "{}", out.all());
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(
        lines[0].starts_with("corral: upgraded: new master"),
        "{}",
        out.stdout
    );
    let last = lines.last().unwrap();
    assert!(last.starts_with("corral: old master gone after "), "{last}");
    assert_eq!(moved_in(last), IDLE as u64, "{last}");
    assert!(
        read_stat(old).is_none_or(|s| s.state == 'Z'),
        "the old master still runs"
    );
}

/// Ctrl-C while following a reload ends the following (signal-hook's flag), not the
/// move: exit status 0, a last line that says so, the old generation still there.
#[test]
fn ctrl_c_ends_the_reload_follow_and_the_move_goes_on() {
    let (c, kv) = start_kv(
        Conf::bare(2).drain("60s").max_conns(2000),
        "",
        &[("CORRAL_KV_SUSPEND", "off")],
    );
    let (_idle, kvs) = hold(&c, kv);
    let out_path = c.dir.path().join("reload.out");
    let mut child = Command::new(corral_bin())
        .args(["-s", "reload", "-c", &c.config_str()])
        .stdin(Stdio::null())
        .stdout(File::create(&out_path).unwrap())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn corral -s reload");
    let read = || fs::read_to_string(&out_path).unwrap_or_default();
    let following = wait_until(SCREEN, || read().contains("corral: moving: "));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        Signal::SIGINT,
    )
    .expect("SIGINT to corral -s reload");
    let mut exit = None;
    wait_until(SCREEN, || {
        exit = child.try_wait().ok().flatten();
        exit.is_some()
    });
    if exit.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let text = read();
    eprintln!("{text}");
    assert!(following, "no progress line before Ctrl-C:\n{text}");
    assert!(
        exit.is_some_and(|s| s.success()),
        "corral -s reload did not end with status 0 on Ctrl-C: {exit:?}\n{text}"
    );
    assert!(
        text.lines()
            .last()
            .is_some_and(|l| l.contains("stopped following") && l.contains("the move goes on")),
        "{text}"
    );
    assert!(
        status(&c).2.iter().any(|w| w.generation == 1),
        "the old generation should still hold its kv connections"
    );
    quit(kvs);
}
