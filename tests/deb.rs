//! The Debian package, as an operator uses it: `cargo deb` builds it, and dpkg
//! installs, upgrades, removes and purges it on this machine while the real systemd
//! (booted as PID 1 of private namespaces by `common::sysd`) runs the service.
//!
//! Every dpkg command runs inside those namespaces, so the maintainer scripts talk to
//! that systemd as they would on a host (enable, start on install, the in-place binary
//! upgrade, stop on remove, purge). Two adaptations, both inside the namespaces only:
//! the namespace's `/etc/systemd/system` holds a copy of the packaged unit with
//! `DefaultDependencies=no`, without network-online.target and with its log in a file
//! (systemd boots a bare target there); and a Docker-style `/usr/sbin/policy-rc.d`
//! that forbids starting services from maintainer scripts (exit 101) is hidden by a
//! bind mount, as on a host that has none.
//!
//! The package is built from the already-built test binary (a staged
//! `CARGO_TARGET_DIR` whose `release/corral` is it, and `cargo deb --no-build`):
//! cargo-deb refuses the dev profile, and a release build would cost minutes.
//!
//! Root only; skipped, with the reason printed, without namespaces, systemd,
//! cargo-deb or dpkg, or when a package or user named corral already exists here.

use crate::common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::sysd::{self, SystemdNs};
use common::*;

/// Files the package owns on this machine, outside dpkg's database.
const PACKAGED: &[&str] = &[
    "/usr/bin/corral",
    "/etc/corral/corral.toml",
    "/usr/lib/systemd/system/corral.service",
    "/lib/systemd/system/corral.socket",
    "/usr/share/man/man1/corral.1.gz",
    "/usr/share/bash-completion/completions/corral",
    "/usr/share/zsh/vendor-completions/_corral",
    "/usr/share/fish/vendor_completions.d/corral.fish",
    "/usr/share/doc/corral/copyright",
];

/// Where anything named corral would be left behind by the package.
const WATCHED: &[&str] = &[
    "/etc",
    "/usr/bin",
    "/usr/sbin",
    "/usr/lib/systemd",
    "/usr/share/man/man1",
    "/usr/share/doc",
    "/usr/share/bash-completion",
    "/usr/share/zsh",
    "/usr/share/fish",
    "/var/lib/systemd",
    "/var/lib/dpkg/info",
    "/var/log",
];

fn sh(cmd: &str) -> (bool, String) {
    match Command::new("sh")
        .args(["-c", cmd])
        .stdin(Stdio::null())
        .output()
    {
        Ok(o) => (
            o.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
        ),
        Err(e) => (false, e.to_string()),
    }
}

/// Why this test cannot run here, if it cannot.
fn skip_reason() -> Option<String> {
    if let Err(why) = sysd::available() {
        return Some(why);
    }
    for (tool, pkg) in [
        ("dpkg", "dpkg"),
        ("dpkg-deb", "dpkg"),
        ("adduser", "adduser"),
        ("deb-systemd-helper", "init-system-helpers"),
    ] {
        if !sh(&format!("command -v {tool}")).0 {
            return Some(format!("{tool} is not installed (package {pkg})"));
        }
    }
    if !sh("cargo deb --version").0 {
        return Some("cargo-deb is not installed (cargo install cargo-deb --locked)".into());
    }
    if sh("dpkg-query -W -f '${Status}' corral 2>/dev/null | grep -q 'installed'").0 {
        return Some("a package named corral is already installed here".into());
    }
    if sh("getent passwd corral || getent group corral").0 {
        return Some("a user or group named corral already exists here".into());
    }
    None
}

/// Builds the package from the test binary: `CARGO_TARGET_DIR` is a staging folder
/// whose `release/corral` is that binary, so `cargo deb --no-build` packs it.
fn build_deb(stage: &Path, out: &Path, revision: &str) -> Duration {
    let release = stage.join("release");
    fs::create_dir_all(&release).expect("staging dir");
    install_exec(Path::new(corral_bin()), &release.join("corral"));
    let t0 = Instant::now();
    let o = Command::new("cargo")
        .args(["deb", "--no-build", "--no-dbgsym", "--strip", "--fast"])
        .args(["--deb-revision", revision, "--output"])
        .arg(out)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("CARGO_TARGET_DIR", stage)
        .stdin(Stdio::null())
        .output()
        .expect("run cargo deb");
    assert!(
        o.status.success(),
        "cargo deb failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    t0.elapsed()
}

/// Every path under `WATCHED` whose name contains "corral" (/run is checked apart:
/// other tests on the box may keep their own corral folders there).
fn corral_paths() -> Vec<String> {
    let (_, out) = sh(&format!(
        "find {} -name '*corral*' 2>/dev/null | sort",
        WATCHED.join(" ")
    ));
    out.lines().map(str::to_string).collect()
}

/// Purges the package if the test leaves it installed (a failure half-way).
struct PurgeGuard;

impl Drop for PurgeGuard {
    fn drop(&mut self) {
        if sh(
            "dpkg-query -W -f '${Status}' corral 2>/dev/null | grep -q 'installed\\|config-files'",
        )
        .0
        {
            let (_, out) = sh("dpkg --purge corral");
            eprintln!("purged corral after a failure: {out}");
        }
    }
}

fn exec_ok(ns: &SystemdNs, args: &[&str], what: &str) -> String {
    let (ok, out, err) = ns.exec(args);
    assert!(
        ok,
        "{what}: {} failed: {out}{err}\n{}",
        args.join(" "),
        ns.log_tail(30)
    );
    format!("{out}{err}")
}

fn must_echo(ns: &SystemdNs, s: &mut std::net::TcpStream, msg: &str, what: &str) {
    match echo(s, msg.as_bytes(), Duration::from_secs(10)) {
        Echo::Ok => {}
        other => panic!(
            "{what}: echo of {msg:?} failed: {other:?}\n{}",
            ns.log_tail(30)
        ),
    }
}

fn fresh_echo(ns: &SystemdNs, what: &str) {
    let mut s = ns
        .connect()
        .unwrap_or_else(|e| panic!("{what}: connect: {e}\n{}", ns.log_tail(30)));
    must_echo(ns, &mut s, "ping\n", what);
}

fn assert_serving(ns: &SystemdNs, what: &str) {
    let p = ns.show(
        "corral.service",
        &["ActiveState", "SubState", "Result", "NRestarts"],
    );
    assert!(
        p["ActiveState"] == "active" && p["SubState"] == "running" && p["NRestarts"] == "0",
        "{what}: unit not active/running without restarts: {p:?}\n{}",
        ns.log_tail(30)
    );
    fresh_echo(ns, what);
}

/// The users (name) of the master and the workers inside the namespace.
fn process_users(ns: &SystemdNs, main: i32) -> (String, Vec<String>) {
    let (_, out, _) = ns.exec(&["ps", "-e", "-o", "pid=,ppid=,user=,comm="]);
    let mut master = String::new();
    let mut workers = Vec::new();
    for l in out.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() < 4 || !f[3].starts_with("corral") {
            continue;
        }
        if f[0] == main.to_string() {
            master = f[2].to_string();
        } else if f[1] == main.to_string() {
            workers.push(f[2].to_string());
        }
    }
    (master, workers)
}

#[test]
fn the_package_installs_serves_reloads_upgrades_and_purges_without_a_trace() {
    if let Some(why) = skip_reason() {
        skipped(format_args!("SKIPPED the_package_installs_serves_reloads_upgrades_and_purges_without_a_trace: {why}"));
        return;
    }
    let boot = sysd::available().expect("checked");
    let t_all = Instant::now();
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let work = repo.join("target/deb-test");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work).expect("work dir");
    let (deb1, deb2) = (work.join("corral_1.deb"), work.join("corral_2.deb"));
    let t_build = build_deb(&work.join("stage"), &deb1, "1");
    build_deb(&work.join("stage"), &deb2, "2");
    eprintln!("cargo deb --no-build: {t_build:?} for one package");

    // What the package holds, and the unit it installs (extracted before installing:
    // the namespace's /etc/systemd/system must hold the adapted copy at boot).
    let (ok, listing) = sh(&format!("dpkg-deb -c {}", deb1.display()));
    assert!(ok, "dpkg-deb -c: {listing}");
    for p in PACKAGED {
        assert!(
            listing.contains(&format!(".{p}")),
            "{p} not in the package:\n{listing}"
        );
    }
    let (ok, conffiles) = sh(&format!("dpkg-deb -I {} conffiles", deb1.display()));
    assert!(
        ok && conffiles
            .lines()
            .any(|l| l.trim() == "/etc/corral/corral.toml"),
        "/etc/corral/corral.toml is not a conffile: {conffiles}"
    );
    let extracted = work.join("extracted");
    let (ok, out) = sh(&format!(
        "dpkg-deb -x {} {}",
        deb1.display(),
        extracted.display()
    ));
    assert!(ok, "dpkg-deb -x: {out}");
    let unit = fs::read_to_string(extracted.join("usr/lib/systemd/system/corral.service"))
        .expect("packaged unit");
    assert!(
        unit.contains("ExecStart=/usr/bin/corral -c /etc/corral/corral.toml")
            && unit.contains("RuntimeDirectory=corral"),
        "packaged unit:\n{unit}"
    );

    // lintian, where installed: no error (the remaining warnings are explained in
    // docs/architecture.md).
    if sh("command -v lintian").0 {
        let (_, out) = sh(&format!("lintian {} 2>&1", deb1.display()));
        eprintln!("lintian:\n{out}");
        assert!(
            !out.lines().any(|l| l.starts_with("E:")),
            "lintian reports errors:\n{out}"
        );
    }

    let before = corral_paths();
    let _guard = PurgeGuard;
    let ns = SystemdNs::boot_unit(
        &boot,
        &unit,
        Path::new("/usr/bin/corral"),
        Path::new("/etc/corral/corral.toml"),
    );
    if Path::new("/usr/sbin/policy-rc.d").exists() {
        exec_ok(
            &ns,
            &["mount", "--bind", "/bin/true", "/usr/sbin/policy-rc.d"],
            "hide policy-rc.d",
        );
    }

    // Install: the user, the enabled unit, the service started by the postinst.
    let deb1s = deb1.to_str().expect("utf-8 path");
    exec_ok(&ns, &["dpkg", "-i", deb1s], "install");
    assert!(sh("getent passwd corral").0, "no corral user after install");
    for p in PACKAGED {
        assert!(Path::new(p).exists(), "{p} missing after install");
    }
    let (ok, man) = sh("man -l /usr/share/man/man1/corral.1.gz 2>&1 | head -20");
    assert!(
        !sh("command -v man").0 || (ok && man.contains("corral")),
        "the installed man page does not render: {man}"
    );
    assert!(
        ns.wait_prop("ActiveState", "active", Duration::from_secs(30)),
        "the postinst did not start corral.service\n{}",
        ns.log_tail(30)
    );
    assert_eq!(ns.prop("UnitFileState"), "enabled", "unit not enabled");
    assert_serving(&ns, "after install");
    exec_ok(
        &ns,
        &["test", "-f", "/run/corral/corral.pid"],
        "pid file in /run/corral",
    );
    let main = ns.main_pid();
    let (master, workers) = process_users(&ns, main);
    assert!(
        master == "root" && !workers.is_empty() && workers.iter().all(|u| u == "corral"),
        "master runs as {master:?}, workers as {workers:?}"
    );

    // Reload keeps a connection and serves new ones.
    let mut held = ns.connect().expect("connect before reload");
    must_echo(&ns, &mut held, "held\n", "before reload");
    ns.systemctl(&["reload", "corral.service"]);
    assert_serving(&ns, "after reload");
    must_echo(&ns, &mut held, "still\n", "held connection after reload");

    // Upgrade: a newer package; its postinst upgrades the running binary in place.
    let deb2s = deb2.to_str().expect("utf-8 path");
    exec_ok(&ns, &["dpkg", "-i", deb2s], "upgrade");
    let (_, version) = sh("dpkg-query -W -f '${Version}' corral");
    assert_eq!(version, "0.1.0-2", "installed version after upgrade");
    let mut upgraded = 0;
    assert!(
        wait_until(Duration::from_secs(30), || {
            upgraded = ns.main_pid();
            upgraded > 0 && upgraded != main
        }),
        "MainPID did not move to a new master\n{}",
        ns.log_tail(30)
    );
    assert_serving(&ns, "after upgrade");
    must_echo(
        &ns,
        &mut held,
        "across upgrade\n",
        "held connection across the package upgrade",
    );
    drop(held);

    // Remove: the prerm stops the service (systemd removes /run/corral); the
    // conffile and the user stay until purge.
    exec_ok(&ns, &["dpkg", "-r", "corral"], "remove");
    assert!(
        ns.wait_prop("ActiveState", "inactive", Duration::from_secs(60)),
        "dpkg -r did not stop corral.service: {}\n{}",
        ns.prop("ActiveState"),
        ns.log_tail(30)
    );
    assert!(
        wait_until(Duration::from_secs(20), || ns.corral_processes().is_empty()),
        "corral processes left after remove: {:?}",
        ns.corral_processes()
    );
    let (gone, _, _) = ns.exec(&["test", "!", "-e", "/run/corral"]);
    assert!(gone, "/run/corral left after the service stopped");
    assert!(
        Path::new("/etc/corral/corral.toml").exists(),
        "remove took the conffile"
    );
    assert!(
        !Path::new("/usr/bin/corral").exists(),
        "remove left the binary"
    );

    // Purge: nothing left, the user included.
    exec_ok(&ns, &["dpkg", "--purge", "corral"], "purge");
    let units: Vec<String> = fs::read_dir(ns.root.join("units"))
        .expect("units dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    drop(ns);
    let mut units = units;
    units.sort();
    assert_eq!(
        units,
        ["corral-test.target", "corral.service"],
        "enable/mask links left in /etc/systemd/system"
    );
    let (_, status) = sh("dpkg-query -W -f '${Status}' corral 2>&1");
    assert!(
        !status.contains("installed") && !status.contains("config-files"),
        "dpkg still knows corral: {status}"
    );
    assert!(
        !sh("getent passwd corral").0,
        "user corral left after purge"
    );
    assert!(
        !sh("getent group corral").0,
        "group corral left after purge"
    );
    assert!(
        !Path::new("/etc/corral").exists(),
        "/etc/corral left after purge"
    );
    assert!(
        !Path::new("/run/corral").exists(),
        "/run/corral left on the host"
    );
    for p in PACKAGED {
        assert!(!Path::new(p).exists(), "{p} left after purge");
    }
    assert_eq!(
        corral_paths(),
        before,
        "paths named corral left after purge"
    );
    let _ = fs::remove_dir_all(&work);
    eprintln!("deb test took {:?}", t_all.elapsed());
}

/// The package's unit is the shipped one with the package's binary path: the two
/// cannot drift apart (only the comments before [Unit] differ).
#[test]
fn the_packaged_unit_is_the_shipped_one_at_usr_bin() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let body = |p: &str| {
        let text = fs::read_to_string(repo.join(p)).expect(p);
        let at = text.find("\n[Unit]\n").expect("[Unit]") + 1;
        text[at..].to_string()
    };
    assert_eq!(
        body("debian/corral.service"),
        body("systemd/corral.service").replace("/usr/local/bin/corral", "/usr/bin/corral"),
        "debian/corral.service drifted from systemd/corral.service"
    );
}

/// The completion scripts the package ships are the ones the binary generates.
#[test]
fn the_packaged_completions_are_the_generated_ones() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (shell, file) in [
        ("bash", "corral.bash"),
        ("zsh", "_corral"),
        ("fish", "corral.fish"),
    ] {
        let out = Command::new(corral_bin())
            .args(["completions", shell])
            .output()
            .expect("run corral completions");
        assert!(out.status.success(), "corral completions {shell} failed");
        let shipped = fs::read(repo.join("completions").join(file)).expect("shipped completions");
        assert!(
            out.stdout == shipped,
            "completions/{file} is stale: regenerate it with `corral completions {shell} > completions/{file}`"
        );
    }
}

/// The package's config is valid as is (its `[master] user`, created by the postinst,
/// replaced here by whoever runs the test: the user may not exist on this machine).
#[test]
fn the_packaged_config_is_valid() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = fs::read_to_string(repo.join("debian/corral.toml")).expect("debian/corral.toml");
    assert!(
        text.lines().any(|l| l.starts_with("user = \"corral\"")),
        "the package's config must run the workers as the corral user"
    );
    let uid = nix::unistd::geteuid().as_raw().to_string();
    let out = Command::new(corral_bin())
        .args(["-t", "-c"])
        .arg(repo.join("debian/corral.toml"))
        .env("CORRAL_MASTER__USER", &uid)
        .output()
        .expect("run corral -t");
    assert!(
        out.status.success(),
        "corral -t on debian/corral.toml: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
