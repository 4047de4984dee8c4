//! What ships beside the binary and what an operator reads off it: `-T` (the effective
//! config with the source of each value), shell completions, the man page (generated
//! from the parser and committed, so the two are checked to match), `--help`, and the
//! license files that Cargo.toml promises.

use crate::common;

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// Runs `corral ARGS` with extra environment variables, bounded in time (killed by
/// pid if it hangs): (exit code, stdout, stderr).
fn corral(dir: &Path, env: &[(&str, &str)], args: &[&str]) -> (i32, String, String) {
    run(dir, corral_bin(), env, args)
}

fn run(dir: &Path, bin: &str, env: &[(&str, &str)], args: &[&str]) -> (i32, String, String) {
    let out = dir.join("out");
    let err = dir.join("err");
    let mut child = Command::new(bin)
        .args(args)
        .envs(env.iter().copied())
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(fs::File::create(&out).unwrap())
        .stderr(fs::File::create(&err).unwrap())
        .spawn()
        .expect("spawn");
    let mut status = None;
    let done = wait_until(Duration::from_secs(30), || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    if !done {
        let _ = child.kill();
        let _ = child.wait();
        panic!("`{bin} {}` did not exit within 30 s", args.join(" "));
    }
    (
        status.unwrap().code().unwrap_or(-1),
        fs::read_to_string(&out).unwrap(),
        fs::read_to_string(&err).unwrap(),
    )
}

fn line_of<'a>(text: &'a str, starts: &str) -> &'a str {
    text.lines()
        .find(|l| l.starts_with(starts))
        .unwrap_or_else(|| panic!("no line starting with `{starts}` in:\n{text}"))
}

#[test]
fn print_config_shows_each_value_and_where_it_came_from() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(
        dir.path().join("c.toml"),
        Conf::bare(3)
            .pid_file("run/c.pid")
            .drain("7s")
            .service("http")
            .echo("body = \"hi\\n\"")
            .render_on(1),
    )
    .unwrap();
    let (code, out, err) = corral(
        dir.path(),
        &[("CORRAL_MASTER__DRAIN_TIMEOUT", "9s")],
        &["-T", "-c", "c.toml"],
    );
    assert_eq!(code, 0, "stderr: {err}");
    assert!(
        line_of(&out, "workers = 3").ends_with("# file c.toml"),
        "{out}"
    );
    // The environment wins over the file, and says which variable it was.
    assert!(
        line_of(&out, "drain_timeout = \"9s\"")
            .ends_with("# environment variable CORRAL_MASTER__DRAIN_TIMEOUT"),
        "{out}"
    );
    assert!(
        line_of(&out, "stop_timeout = ").ends_with("# default"),
        "{out}"
    );
    // Relative paths are shown as the master will use them: resolved against the
    // config file's directory.
    let pid = line_of(&out, "pid_file = ");
    assert!(pid.contains(&format!("{}", dir.path().display())) && pid.contains("run/c.pid"));
    // Inside [[listen]]: keys written in the file, and defaults filled in.
    assert!(line_of(&out, "[[listen]]").contains("listen[0]"));
    assert!(
        line_of(&out, "body = \"hi\\n\"").ends_with("# file c.toml"),
        "{out}"
    );
    assert!(line_of(&out, "backlog = ").ends_with("# default"), "{out}");
    // Keys that are unset but have a default show the value the listener runs with,
    // not "not set" (the service's own keys, and keys inherited from a section).
    for (line, why) in [
        ("status = 200", "# default"),
        ("header_timeout = \"10s\"", "# default"),
        ("max_header_size = \"8KiB\"", "# default"),
        ("nodelay = true", "# default"),
        ("accept_proxy = false", "# default"),
    ] {
        assert!(line_of(&out, line).ends_with(why), "{line}: {out}");
    }
    let listen = &out[out.find("[[listen]]").expect("a listener")..];
    assert!(
        line_of(listen, "idle_timeout = ").ends_with("# default: [worker] idle_timeout"),
        "{listen}"
    );
    // What stays unset says what that means.
    for l in out.lines().filter(|l| l.contains("is not set")) {
        assert!(l.contains("# default: "), "unexplained: {l}\n{out}");
    }
    // What it prints is a config corral reads back as the same thing.
    fs::write(dir.path().join("eff.toml"), &out).unwrap();
    let (code, again, err) = corral(dir.path(), &[], &["-T", "-c", "eff.toml"]);
    assert_eq!(code, 0, "the printed config does not read back: {err}");
    assert!(line_of(&again, "drain_timeout = \"9s\"").ends_with("# file eff.toml"));
    assert!(line_of(&again, "workers = 3").ends_with("# file eff.toml"));
}

#[test]
fn print_config_of_a_bad_config_names_the_key_and_prints_no_config() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("bad.toml"), Conf::bare(0).render_on(1)).unwrap();
    let (code, out, err) = corral(dir.path(), &[], &["-T", "-c", "bad.toml"]);
    assert_eq!(code, 1);
    assert!(
        out.is_empty(),
        "printed a config for an invalid file: {out}"
    );
    assert!(
        err.contains("master.workers") && err.contains("bad.toml"),
        "{err}"
    );
    let (code, _, err) = corral(
        dir.path(),
        &[("CORRAL_MASTER__WORKERS", "2")],
        &["-T", "-c", "missing.toml"],
    );
    assert_eq!(code, 1);
    assert!(err.contains("missing.toml"), "{err}");
    // -T is a check that prints: combining it with -s would act on a config nobody
    // looked at, so it is a usage error.
    let (code, _, _) = corral(dir.path(), &[], &["-T", "-s", "reload", "-c", "bad.toml"]);
    assert_eq!(code, 2);
}

#[test]
fn completions_are_valid_scripts_for_each_shell() {
    let dir = tempfile::tempdir().unwrap();
    let (code, bash, err) = corral(dir.path(), &[], &["completions", "bash"]);
    assert_eq!(code, 0, "{err}");
    for word in [
        "status",
        "fault",
        "chaos",
        "completions",
        "--print-config",
        "reload",
    ] {
        assert!(bash.contains(word), "bash completion lacks {word}");
    }
    fs::write(dir.path().join("c.bash"), &bash).unwrap();
    match Command::new("bash")
        .arg("-n")
        .arg(dir.path().join("c.bash"))
        .status()
    {
        Ok(s) => assert!(s.success(), "bash -n rejects the completion script"),
        Err(e) => println!("skipping bash -n: bash not runnable ({e})"),
    }
    // Sourced for real, it registers the completion function for `corral`.
    let probe = format!(
        "source {} && complete -p corral",
        dir.path().join("c.bash").display()
    );
    if let Ok(o) = Command::new("bash").arg("-c").arg(&probe).output() {
        assert!(
            String::from_utf8_lossy(&o.stdout).contains("corral"),
            "completion not registered: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    for shell in ["zsh", "fish"] {
        let (code, text, err) = corral(dir.path(), &[], &["completions", shell]);
        assert_eq!(code, 0, "{err}");
        assert!(
            text.contains("corral") && text.contains("print-config"),
            "{shell}"
        );
    }
    let (code, _, err) = corral(dir.path(), &[], &["completions", "tcsh"]);
    assert_eq!(code, 2);
    assert!(err.contains("tcsh"), "{err}");
}

#[test]
fn the_shipped_man_page_is_the_generated_one_and_renders() {
    let dir = tempfile::tempdir().unwrap();
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("man/corral.1");
    let (code, page, err) = corral(dir.path(), &[], &["man"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        page,
        fs::read_to_string(&shipped).expect("man/corral.1 is shipped"),
        "man/corral.1 is stale: regenerate it with `corral man -o man/corral.1`"
    );
    let (code, _, err) = corral(dir.path(), &[], &["man", "-o", "corral.1"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        fs::read_to_string(dir.path().join("corral.1")).unwrap(),
        page
    );
    let rendered = Command::new("man")
        .args(["-l", "-P", "cat"])
        .arg(&shipped)
        .env("MANWIDTH", "80")
        .output();
    match rendered {
        Err(e) => println!("skipping the render check: `man` is not installed ({e})"),
        Ok(o) => {
            assert!(
                o.status.success(),
                "man -l failed: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            let text = String::from_utf8_lossy(&o.stdout);
            for part in [
                "SYNOPSIS",
                "--print-config",
                "SIGNALS",
                "SIGUSR2",
                "ENVIRONMENT",
            ] {
                assert!(
                    text.contains(part),
                    "rendered man page lacks {part}:\n{text}"
                );
            }
        }
    }
}

#[test]
fn help_mentions_environment_overrides_and_signals() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out, _) = corral(dir.path(), &[], &["--help"]);
    assert_eq!(code, 0);
    for part in [
        "CORRAL_MASTER__WORKERS",
        "SIGHUP",
        "SIGUSR2",
        "-T, --print-config",
    ] {
        assert!(out.contains(part), "--help lacks {part}:\n{out}");
    }
    let (code, out, _) = corral(dir.path(), &[], &["--version"]);
    assert_eq!(code, 0);
    assert_eq!(out.trim(), format!("corral {}", env!("CARGO_PKG_VERSION")));
}

#[test]
fn license_files_match_the_cargo_license_field() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let manifest = fs::read_to_string(root.join("Cargo.toml")).unwrap();
    assert!(manifest.contains("license = \"MIT OR Apache-2.0\""));
    let mit = fs::read_to_string(root.join("LICENSE-MIT")).expect("LICENSE-MIT");
    assert!(mit.starts_with("MIT License") && mit.contains("WITHOUT WARRANTY OF ANY KIND"));
    let apache = fs::read_to_string(root.join("LICENSE-APACHE")).expect("LICENSE-APACHE");
    assert!(apache.contains("Apache License") && apache.contains("Version 2.0, January 2004"));
    assert!(apache.contains("END OF TERMS AND CONDITIONS"));
}
