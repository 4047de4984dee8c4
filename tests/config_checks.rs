//! Config files the master must not trust: one that users other than its owner may
//! write (whoever can edit it controls what the master, often root, runs), refused at
//! `-t`, start and reload; and an empty file, or one without `[[listen]]`, refused by
//! the master and by every client command, which used to fall back to the default
//! runtime paths and so could address another instance. The real binary throughout;
//! see `common/mod.rs` for the harness rules.

use crate::common;

use std::fs;
use std::path::Path;
use std::time::Duration;

use common::inputs::{cli_env, write_config};
use common::*;

use std::os::unix::fs::PermissionsExt;

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
}

/// `corral ARGS` from `dir` with `env`; fails the test if it does not exit in 20 s.
fn run(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> CliOutput {
    cli_env(dir, args, env, Duration::from_secs(20))
        .unwrap_or_else(|| panic!("`corral {args:?}` did not exit within 20 s"))
}

#[test]
fn a_config_others_may_write_is_refused_at_test_and_start() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cfg = write_config(
        dir.path(),
        "corral.toml",
        &Conf::bare(1).pid_file("{dir}/corral.pid").render_on(1),
    );
    let cfg_s = cfg.to_str().expect("utf-8 path");
    for (mode, who) in [(0o666, "every user"), (0o620, "its group")] {
        chmod(&cfg, mode);
        for args in [&["-t", "-c", cfg_s][..], &["-c", cfg_s][..]] {
            let out = run(dir.path(), args, &[]);
            assert!(
                !out.status.success(),
                "`corral {args:?}` accepted a config of mode {mode:o}: {}",
                out.all()
            );
            assert!(
                out.stderr.contains(cfg_s) && out.stderr.contains(&format!("writable by {who}")),
                "`corral {args:?}` with mode {mode:o} does not name the file and why: {}",
                out.stderr
            );
        }
        assert!(
            !dir.path().join("corral.pid").exists(),
            "a master started from a config of mode {mode:o}"
        );
    }
    // Readable by all is fine: only writing matters.
    chmod(&cfg, 0o644);
    let out = run(dir.path(), &["-t", "-c", cfg_s], &[]);
    assert!(out.status.success(), "mode 644 refused: {}", out.all());
}

#[test]
fn reload_of_a_config_made_world_writable_is_refused_and_changes_nothing() {
    let c = Corral::start(&Conf::new(2).render());
    let before = c.workers();
    let (_, gen_before, _) = status(&c);
    let mut s = c.connect();
    must_echo(&c, &mut s, "before\n");
    // Even a change that would otherwise be fine is not read.
    c.write_config(&Conf::new(3).render());
    chmod(c.config(), 0o666);

    let out = c.cli(&["-s", "reload"]);
    assert!(
        !out.status.success(),
        "reload of a world-writable config succeeded: {}\n{}",
        out.all(),
        c.log_tail(40)
    );
    assert!(
        out.all().contains(&c.config_str()) && out.all().contains("writable by every user"),
        "the refused reload does not say which file and why: {}",
        out.all()
    );
    assert_eq!(c.workers(), before, "workers changed\n{}", c.log_tail(40));
    let (_, generation, ws) = status(&c);
    assert_eq!(generation, gen_before, "generation changed: {ws:?}");
    must_echo(&c, &mut s, "after the refused reload\n");

    // Fixed permissions: the same file reloads.
    chmod(c.config(), 0o600);
    c.must_reload();
    let (_, generation, _) = status(&c);
    assert_eq!(generation, gen_before + 1);
    drop(s);
}

#[test]
fn an_empty_config_or_one_without_listeners_is_refused_by_the_master() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pid = dir.path().join("corral.pid");
    for (name, body, says) in [
        ("empty.toml", String::new(), "is empty"),
        ("blank.toml", "\n  \n".to_string(), "is empty"),
        (
            // Raw text on purpose: a config without a listener is the point.
            "nolisten.toml",
            format!("[master]\nworkers = 1\npid_file = \"{}\"\n", pid.display()),
            "[[listen]]",
        ),
    ] {
        let cfg = write_config(dir.path(), name, &body);
        let cfg_s = cfg.to_str().expect("utf-8 path");
        for args in [&["-t", "-c", cfg_s][..], &["-c", cfg_s][..]] {
            let out = run(dir.path(), args, &[]);
            assert!(
                !out.status.success(),
                "`corral {args:?}` accepted {name}: {}",
                out.all()
            );
            assert!(
                out.stderr.contains(cfg_s) && out.stderr.contains(says),
                "`corral {args:?}` on {name} does not name the file and why: {}",
                out.stderr
            );
        }
        assert!(!pid.exists(), "a master started from {name}");
    }
}

/// The case the issue describes: the file names no listener, so which master does it
/// configure? The client used to take the default paths (`/run/corral/…`), which may
/// belong to another instance, and send the request there.
#[test]
fn client_commands_refuse_an_empty_config_and_send_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let empty = write_config(dir.path(), "empty.toml", "");
    // Raw text on purpose: a config without a listener is the point.
    let nolisten = write_config(dir.path(), "nolisten.toml", "[master]\nworkers = 1\n");
    for cfg in [&empty, &nolisten] {
        let cfg_s = cfg.to_str().expect("utf-8 path");
        for args in [
            &["-s", "reload", "-c", cfg_s][..],
            &["-s", "stop", "-c", cfg_s][..],
            &["status", "-c", cfg_s][..],
            &["fault", "kill", "-c", cfg_s][..],
        ] {
            let out = run(dir.path(), args, &[]);
            assert!(
                !out.status.success(),
                "`corral {args:?}` went ahead: {}",
                out.all()
            );
            assert!(
                out.stderr.contains(cfg_s)
                    && out.stderr.contains("nothing was sent")
                    && !out.stderr.contains("/run/corral"),
                "`corral {args:?}` does not say it sent nothing and why: {}",
                out.stderr
            );
        }
    }
}
