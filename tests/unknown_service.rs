//! A `[[listen]]` naming a service the program does not have is an error at every
//! load (start, `-t`, reload) that names the file, the key (`listen[i].service`) and
//! the reason, never a listener that silently serves something else; a reload that
//! hits one leaves the running service untouched. The real binary throughout.

use crate::common;

use std::path::Path;
use std::time::Duration;

use common::inputs::{cli_env, write_config};
use common::*;

/// `corral ARGS` from `dir`; fails the test if it does not exit in 20 s (a master
/// that accepted the config keeps running).
fn run(dir: &Path, args: &[&str]) -> CliOutput {
    cli_env(dir, args, &[], Duration::from_secs(20))
        .unwrap_or_else(|| panic!("`corral {args:?}` did not exit within 20 s"))
}

fn assert_names(out: &CliOutput, what: &str, file: &str) {
    let text = out.all();
    assert!(!out.status.success(), "{what}: accepted: {text}");
    for want in [file, "listen[1].service", "unknown service `ehco`", "echo"] {
        assert!(text.contains(want), "{what}: {want:?} missing in: {text}");
    }
}

#[test]
fn an_unknown_service_is_refused_at_test_and_start_naming_file_and_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    let body = Conf::bare(1)
        .pid_file("{dir}/corral.pid")
        .listen(free_port(), "ehco", "")
        .render_on(free_port());
    let cfg = write_config(dir.path(), "typo.toml", &body);
    let cfg = cfg.to_str().expect("utf-8 path");
    assert_names(&run(dir.path(), &["-t", "-c", cfg]), "-t", "typo.toml");
    assert_names(&run(dir.path(), &["-c", cfg]), "start", "typo.toml");
    assert!(
        !dir.path().join("corral.pid").exists(),
        "a master started with an unknown service"
    );
}

#[test]
fn a_reload_with_an_unknown_service_changes_nothing() {
    let c = Corral::start(&Conf::bare(1).render());
    let mut s = c.connect();
    must_echo(&c, &mut s, "before");
    c.write_config(&Conf::bare(1).listen(free_port(), "ehco", "").render());
    let workers = c.worker_pids();
    let out = c.cli(&["-s", "reload"]);
    let file = c
        .config()
        .file_name()
        .expect("config file name")
        .to_string_lossy()
        .to_string();
    assert_names(&out, "reload", &file);
    // The generation that serves is the one from before: same workers, same
    // connection, and a new connection is served by them too.
    assert_eq!(c.worker_pids(), workers, "{}", c.log_tail(20));
    must_echo(&c, &mut s, "after");
    let mut fresh = c.connect();
    must_echo(&c, &mut fresh, "fresh");
}
