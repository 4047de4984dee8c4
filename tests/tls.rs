//! TLS termination, black box: the real binary on loopback with certificates from a
//! throwaway CA, driven by real clients (python's `ssl`, `openssl s_client`, curl,
//! and rustls for the keep-alive load), through reloads, a binary upgrade, renewal
//! and bad input. Every wait is a deadline on a condition (a counter in `corral
//! status`, a reply); every process started here is killed by pid at the end.

use crate::common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use common::tls::{have, run, rustls_client, write_atomically, HttpsLoad, Pair, Pki, PyTls};
use common::xmaster::status_json;
use common::*;

/// The TLS counters summed over the live workers of `corral status --json`.
fn tls_total(c: &Corral, field: &str) -> u64 {
    let v = status_json(c);
    v["workers"]
        .as_array()
        .map(|ws| {
            ws.iter()
                .map(|w| w["tls"][field].as_u64().unwrap_or(0))
                .sum()
        })
        .unwrap_or(0)
}

/// Waits until the summed counter `field` reaches `n` (workers report it with each
/// heartbeat, once a second).
fn wait_tls(c: &Corral, field: &str, n: u64, timeout: Duration) -> bool {
    wait_until(timeout, || tls_total(c, field) >= n)
}

/// `openssl s_client` to `port` with `args`, stdin `input`; its output.
fn s_client(port: u16, args: &[&str], input: &str) -> String {
    let mut cmd = Command::new("sh");
    let script = format!(
        "printf '{input}' | timeout 10 openssl s_client -connect 127.0.0.1:{port} {} 2>&1",
        args.join(" ")
    );
    cmd.args(["-c", &script]);
    run(&mut cmd, Duration::from_secs(15)).1
}

fn need(tools: &[&str]) -> bool {
    for t in tools {
        if !have(t) {
            skipped(format_args!("SKIPPED: `{t}` is not installed"));
            return false;
        }
    }
    true
}

#[test]
fn echo_http_and_proxy_serve_tls_12_and_13_to_real_clients() {
    if !need(&["python3", "openssl", "curl"]) {
        return;
    }
    let pki = Pki::new();
    let srv = pki.server("srv", &["localhost"], None, 90);
    let (http, echo, proxy) = (free_port(), free_port(), free_port());
    let c = Corral::start(
        &Conf::new(2)
            .listen(http, "http", &srv.tls_table(""))
            .listen(echo, "echo", &srv.tls_table(""))
            .listen(
                proxy,
                "proxy",
                &format!(
                    "upstreams = [\"127.0.0.1:{{port}}\"]\n{}",
                    srv.tls_table("")
                ),
            )
            .render(),
    );
    for (min, max, want) in [("1.2", "1.2", "TLSv1.2"), ("1.3", "1.3", "TLSv1.3")] {
        let mut py = PyTls::start(echo, &pki.ca, "localhost", min, max);
        let a = py.ask("echo hello over tls");
        assert!(a.ok, "python ssl {want} to the echo listener: {a:?}");
        assert_eq!(a.version.as_deref(), Some(want));
        assert_eq!(a.reply.as_deref(), Some("hello over tls"));
        let mut py = PyTls::start(http, &pki.ca, "localhost", min, max);
        let a = py.ask("get /");
        assert!(a.ok, "python ssl {want} to the http listener: {a:?}");
        assert_eq!(a.reply.as_deref(), Some("HTTP/1.1 200 OK"), "{a:?}");
    }
    for v in ["--tlsv1.2 --tls-max 1.2", "--tlsv1.3"] {
        let (code, out, err) = run(
            Command::new("sh").args([
                "-c",
                &format!(
                    "curl -sS {v} --cacert {} --resolve localhost:{http}:127.0.0.1 -o /dev/null -w '%{{http_code}}' https://localhost:{http}/",
                    pki.ca.display()
                ),
            ]),
            Duration::from_secs(15),
        );
        assert_eq!((code, out.as_str()), (0, "200"), "curl {v}: {err}");
    }
    // Through the TLS proxy to the plain echo listener, with openssl's own client.
    let out = s_client(
        proxy,
        &[
            "-quiet",
            "-verify_return_error",
            "-CAfile",
            pki.ca.to_str().unwrap(),
            "-servername",
            "localhost",
        ],
        "through the proxy\\n",
    );
    assert!(
        out.contains("through the proxy"),
        "s_client via the proxy: {out}"
    );
    assert!(
        wait_tls(&c, "full", 7, Duration::from_secs(10)),
        "{}",
        status_json(&c)
    );
    assert!(tls_total(&c, "tls12") >= 3 && tls_total(&c, "tls13") >= 3);
    // The metrics say the same, and carry the certificate's expiry.
    let m = c.cli(&["status", "--prometheus"]);
    assert!(m.status.success(), "{}", m.all());
    assert!(
        m.stdout
            .contains("corral_tls_handshakes_total{kind=\"full\"}"),
        "{}",
        m.stdout
    );
    let expiry = m
        .stdout
        .lines()
        .find(|l| l.starts_with("corral_tls_certificate_expiry_timestamp_seconds{"))
        .unwrap_or_else(|| panic!("no certificate expiry metric:\n{}", m.stdout));
    let at: f64 = expiry.rsplit(' ').next().unwrap().parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        (at - now - 90.0 * 86_400.0).abs() < 2.0 * 86_400.0,
        "{expiry}"
    );
    let human = c.cli(&["status"]);
    assert!(
        human.stdout.contains("certificate ") && human.stdout.contains("CN=localhost"),
        "{}",
        human.stdout
    );
}

#[test]
fn sni_picks_the_certificate_by_its_names_and_alpn_is_negotiated() {
    if !need(&["python3", "openssl"]) {
        return;
    }
    let pki = Pki::new();
    let default = pki.server("default", &["localhost"], None, 90);
    let wild = pki.server("wild", &["*.example.test"], None, 90);
    let rsa = pki.server("rsa", &["other.test"], Some(&rcgen::PKCS_RSA_SHA256), 90);
    let port = free_port();
    let sni = format!(
        "alpn = [\"h2\", \"http/1.1\"]\n[[listen.tls.sni]]\ncert = \"{}\"\nkey = \"{}\"\n[[listen.tls.sni]]\ncert = \"{}\"\nkey = \"{}\"\n",
        wild.cert.display(),
        wild.key.display(),
        rsa.cert.display(),
        rsa.key.display()
    );
    let _c = Corral::start(
        &Conf::new(1)
            .listen(port, "echo", &default.tls_table(&sni))
            .render(),
    );
    for (name, subject) in [
        ("localhost", "localhost"),
        ("a.example.test", "*.example.test"),
        ("other.test", "other.test"),
    ] {
        let mut py = PyTls::start(port, &pki.ca, name, "", "");
        let a = py.ask("echo sni");
        assert!(a.ok, "SNI {name}: {a:?}");
        assert_eq!(a.subject.as_deref(), Some(subject), "SNI {name}");
    }
    // A name no certificate has, and no name at all: the default certificate.
    for args in [&["-servername", "unknown.test"][..], &["-noservername"][..]] {
        let out = s_client(port, args, "");
        assert!(
            out.contains("CN = localhost") || out.contains("CN=localhost"),
            "{args:?}: {out}"
        );
    }
    let out = s_client(
        port,
        &["-alpn", "http/1.1,h2", "-servername", "localhost"],
        "",
    );
    assert!(
        out.contains("ALPN protocol: h2"),
        "the listener prefers h2: {out}"
    );
    let out = s_client(port, &["-alpn", "http/1.1", "-servername", "localhost"], "");
    assert!(out.contains("ALPN protocol: http/1.1"), "{out}");
    let out = s_client(port, &["-alpn", "spdy/1", "-servername", "localhost"], "");
    assert!(
        out.contains("no application protocol"),
        "a client offering no protocol of the listener's is refused: {out}"
    );
}

#[test]
fn client_certificates_are_verified_required_or_optional() {
    if !need(&["curl"]) {
        return;
    }
    let pki = Pki::new();
    let srv = pki.server("srv", &["localhost"], None, 90);
    let client = pki.client("client", "alice");
    let other_ca = Pki::new();
    let stranger = other_ca.client("stranger", "mallory");
    let (required, optional) = (free_port(), free_port());
    let ca = format!("client_ca = \"{}\"\n", pki.ca.display());
    let c = Corral::start(
        &Conf::new(1)
            .listen(required, "http", &srv.tls_table(&ca))
            .listen(
                optional,
                "http",
                &srv.tls_table(&format!("{ca}client_auth = \"optional\"\n")),
            )
            .render(),
    );
    let curl = |port: u16, cert: Option<&Pair>| {
        let certs = cert.map_or(String::new(), |p| {
            format!("--cert {} --key {}", p.cert.display(), p.key.display())
        });
        run(
            Command::new("sh").args([
                "-c",
                &format!(
                    "curl -sS {certs} --cacert {} --resolve localhost:{port}:127.0.0.1 -o /dev/null -w '%{{http_code}}' https://localhost:{port}/",
                    pki.ca.display()
                ),
            ]),
            Duration::from_secs(15),
        )
    };
    assert_eq!(
        curl(required, Some(&client)).1,
        "200",
        "a client with a good certificate"
    );
    let (code, out, _) = curl(required, None);
    assert!(
        code != 0 && out != "200",
        "no certificate was let in: {code} {out}"
    );
    let (code, out, _) = curl(required, Some(&stranger));
    assert!(
        code != 0 && out != "200",
        "another CA's certificate was let in: {code} {out}"
    );
    assert_eq!(
        curl(optional, None).1,
        "200",
        "optional: no certificate is fine"
    );
    assert_eq!(curl(optional, Some(&client)).1, "200");
    let (code, _, _) = curl(optional, Some(&stranger));
    assert_ne!(
        code, 0,
        "optional still refuses a certificate that does not verify"
    );
    assert!(
        wait_tls(&c, "bad_certificate", 3, Duration::from_secs(10)),
        "refusals counted: {}\n{}",
        status_json(&c),
        c.log()
            .lines()
            .filter(|l| l.contains("closing"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn a_session_resumes_on_every_worker_after_a_reload_and_after_a_binary_upgrade() {
    if !need(&["python3"]) {
        return;
    }
    let pki = Pki::new();
    let srv = pki.server("srv", &["localhost"], None, 90);
    let port = free_port();
    let (_bin_dir, bin) = copy_binary();
    let c = Corral::start_with(
        &Conf::new(2)
            .listen(
                port,
                "echo",
                &format!("accept = \"reuseport\"\n{}", srv.tls_table("")),
            )
            .render(),
        Launch {
            binary: Some(bin),
            ..Launch::default()
        },
    );
    let mut py = PyTls::start(port, &pki.ca, "localhost", "", "");
    let first = py.ask("echo first");
    assert!(first.ok && !first.reused, "{first:?}");
    // Reuseport spreads connections by their source port: within 40 both workers
    // have resumed a session sealed by one of them.
    for i in 0..40 {
        let a = py.ask(&format!("echo again {i}"));
        assert!(a.ok && a.reused, "connection {i} did not resume: {a:?}");
    }
    assert!(
        wait_until(Duration::from_secs(10), || {
            let v = status_json(&c);
            v["workers"].as_array().is_some_and(|ws| {
                ws.len() == 2
                    && ws
                        .iter()
                        .all(|w| w["tls"]["resumed"].as_u64().unwrap_or(0) > 0)
            })
        }),
        "both workers resumed: {}",
        status_json(&c)
    );
    c.must_reload();
    let a = py.ask("echo after the reload");
    assert!(a.ok && a.reused, "no resumption after a reload: {a:?}");

    let new_master = c.must_upgrade();
    assert!(
        wait_until(Duration::from_secs(20), || {
            let v = status_json(&c);
            v["master_pid"].as_i64() == Some(i64::from(new_master))
                && v["workers"].as_array().is_some_and(|w| w.len() == 2)
        }),
        "the new master serves alone: {}",
        status_json(&c)
    );
    for i in 0..10 {
        let a = py.ask(&format!("echo after the upgrade {i}"));
        assert!(
            a.ok && a.reused,
            "no resumption after the upgrade: {a:?}\n{}",
            c.log_tail(30)
        );
    }
}

#[test]
fn a_ticket_outlives_one_key_rotation_and_not_two() {
    if !need(&["python3"]) {
        return;
    }
    let pki = Pki::new();
    let srv = pki.server("srv", &["localhost"], None, 90);
    let port = free_port();
    let c = Corral::start(
        &Conf::new(2)
            .master("tls_ticket_rotation = \"2s\"")
            .listen(port, "echo", &srv.tls_table(""))
            .render(),
    );
    let rotations = || c.log().matches("TLS ticket key rotated").count();
    // A ticket sealed right after a rotation, under the new current key.
    let start = rotations();
    assert!(wait_until(Duration::from_secs(10), || rotations() > start));
    let mut py = PyTls::start(port, &pki.ca, "localhost", "", "");
    let first = py.ask("echo first");
    assert!(first.ok && !first.reused, "{first:?}");
    let sealed_at = rotations();
    assert!(wait_until(Duration::from_secs(10), || rotations() > sealed_at));
    let a = py.ask("probe one rotation later");
    assert!(a.ok && a.reused, "the previous key no longer opens: {a:?}");
    // Two more: the key that sealed it is gone from every worker.
    assert!(wait_until(Duration::from_secs(15), || rotations() >= sealed_at + 3));
    let a = py.ask("probe three rotations later");
    assert!(a.ok && !a.reused, "a ticket outlived its key: {a:?}");
}

#[test]
fn renewing_the_certificate_is_a_reload_that_fails_no_keep_alive_request() {
    let pki = Pki::new();
    let srv = pki.server("srv", &["localhost"], None, 90);
    let port = free_port();
    let c = Corral::start(
        &Conf::new(2)
            .listen(port, "http", &srv.tls_table(""))
            .render(),
    );
    let load = HttpsLoad::start(port, rustls_client(&pki.ca), 8);
    assert!(load.progress(200, Duration::from_secs(10)));
    for round in 0..3 {
        // certbot's deploy hook: new files in place, then a reload.
        let renewed = pki.server(&format!("renewed{round}"), &["localhost"], None, 90);
        write_atomically(&srv.cert, &std::fs::read(&renewed.cert).unwrap());
        write_atomically(&srv.key, &std::fs::read(&renewed.key).unwrap());
        c.must_reload();
        assert!(
            load.progress(200, Duration::from_secs(10)),
            "requests stopped after reload {round}"
        );
    }
    let (_, failed, _) = load.finish();
    assert_eq!(failed, 0, "failed requests across renewals");
    // New connections get the last certificate.
    let v = status_json(&c);
    let serial_file = v["certificates"][0]["file"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_eq!(serial_file, srv.cert.display().to_string());
    let out = s_client(port, &["-servername", "localhost", "-showcerts"], "");
    let served: Vec<&str> = out.lines().filter(|l| !l.starts_with("-----")).collect();
    let want = std::fs::read_to_string(&srv.cert).unwrap();
    let want_body: String = want.lines().filter(|l| !l.starts_with("-----")).collect();
    assert!(
        served.concat().contains(&want_body),
        "a new connection does not get the renewed certificate"
    );
}

#[test]
fn bad_handshakes_are_closed_counted_and_never_take_a_worker_down() {
    let _heavy = common::heavy();
    let pki = Pki::new();
    let srv = pki.server("srv", &["localhost"], None, 90);
    let port = free_port();
    let c = Corral::start(
        &Conf::new(1)
            .max_conns(15_000)
            .listen(
                port,
                "echo",
                &srv.tls_table("min_version = \"1.3\"\nhandshake_timeout = \"2s\"\n"),
            )
            .render(),
    );
    let workers = c.workers();
    // Not TLS at all: an alert or an end, not an echo.
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    assert!(!got.starts_with(b"GET"), "plaintext was echoed: {got:?}");
    assert!(got.is_empty() || got[0] == 0x15, "not an alert: {got:?}");
    assert!(
        wait_tls(&c, "malformed", 1, Duration::from_secs(10)),
        "{}",
        status_json(&c)
    );
    // A client that offers only TLS 1.2 to a 1.3-only listener.
    if have("python3") {
        let mut py = PyTls::start(port, &pki.ca, "localhost", "1.2", "1.2");
        let a = py.ask("echo old");
        assert!(!a.ok, "a TLS 1.2-only client was served: {a:?}");
        assert!(wait_tls(&c, "protocol_version", 1, Duration::from_secs(10)));
    } else {
        skipped(format_args!("SKIPPED (part): python3 is not installed"));
    }
    // 10 000 handshakes that never finish: the start of a record, then silence.
    common::handover::raise_nofile();
    let mut stalled = Vec::new();
    for _ in 0..10_000 {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(mut s) => {
                let _ = s.write_all(&[0x16, 0x03, 0x01, 0x02]);
                stalled.push(s);
            }
            Err(e) => panic!("connect {}: {e}", stalled.len()),
        }
    }
    assert!(
        wait_tls(&c, "timeout", 10_000, Duration::from_secs(60)),
        "stalled handshakes timed out: {}",
        status_json(&c)
    );
    for s in &mut stalled {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut b = [0u8; 64];
        assert!(matches!(s.read(&mut b), Ok(0) | Err(_)) || b[0] == 0x15);
    }
    drop(stalled);
    assert_eq!(
        c.workers(),
        workers,
        "a worker went down\n{}",
        c.log_tail(20)
    );
    if have("python3") {
        let mut py = PyTls::start(port, &pki.ca, "localhost", "", "");
        let a = py.ask("echo still serving");
        assert_eq!(a.reply.as_deref(), Some("still serving"), "{a:?}");
    }
}

#[test]
fn bad_certificates_and_keys_are_refused_by_name_and_a_bad_reload_changes_nothing() {
    let pki = Pki::new();
    let good = pki.server("good", &["localhost"], None, 90);
    let other = pki.server("other", &["localhost"], None, 90);
    let expired = pki.server("expired", &["localhost"], None, -1);
    let soon = pki.server("soon", &["localhost"], None, 5);
    let junk = pki.path("junk.pem");
    std::fs::write(&junk, "not a certificate\n").unwrap();
    let check = |cert: &std::path::Path, key: &std::path::Path, extra: &str| {
        let service = if extra.contains("upstreams") {
            "proxy"
        } else {
            "echo"
        };
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("c.toml");
        std::fs::write(
            &conf,
            Conf::bare(1)
                .pid_file("c.pid")
                .service(service)
                .echo(extra)
                .echo(&format!(
                    "[listen.tls]\ncert = \"{}\"\nkey = \"{}\"",
                    cert.display(),
                    key.display()
                ))
                .render_on(1),
        )
        .unwrap();
        let out = run_cli(
            dir.path(),
            &["-t", "-c", conf.to_str().unwrap()],
            Duration::from_secs(10),
        );
        (out.status.code(), out.all())
    };
    use std::os::unix::fs::PermissionsExt;
    let chmod = |p: &std::path::Path, m: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap()
    };
    chmod(&good.key, 0o600);
    let (code, out) = check(&good.cert, &good.key, "");
    assert_eq!(code, Some(0), "{out}");
    assert!(!out.contains("warning"), "{out}");
    // A key others can read: loaded, with a warning; one others can write: refused.
    chmod(&good.key, 0o644);
    let (code, out) = check(&good.cert, &good.key, "");
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("warning") && out.contains("can be read by every user"),
        "{out}"
    );
    chmod(&good.key, 0o666);
    let (code, out) = check(&good.cert, &good.key, "");
    assert!(
        code != Some(0)
            && out.contains("writable by every user")
            && out.contains("listen[0].tls.key"),
        "{out}"
    );
    chmod(&good.key, 0o620);
    let (code, out) = check(&good.cert, &good.key, "");
    assert!(
        code != Some(0) && out.contains("writable by its group"),
        "{out}"
    );
    chmod(&good.key, 0o600);
    let (code, out) = check(&good.cert, &other.key, "");
    assert_ne!(code, Some(0));
    assert!(
        out.contains("listen[0].tls.key") && out.contains("does not match"),
        "{out}"
    );
    let (code, out) = check(&good.cert, &pki.path("missing.key"), "");
    assert!(
        code != Some(0) && out.contains("missing.key") && out.contains("listen[0].tls.key"),
        "{out}"
    );
    let (code, out) = check(&junk, &good.key, "");
    assert!(
        code != Some(0) && out.contains("listen[0].tls.cert") && out.contains("junk.pem"),
        "{out}"
    );
    let (code, out) = check(&good.cert, &junk, "");
    assert!(code != Some(0) && out.contains("no PRIVATE KEY"), "{out}");
    let (code, out) = check(&expired.cert, &expired.key, "");
    assert!(code != Some(0) && out.contains("expired on"), "{out}");
    let (code, out) = check(&soon.cert, &soon.key, "");
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("warning") && out.contains("expires on"),
        "{out}"
    );
    let (code, out) = check(
        &good.cert,
        &good.key,
        "upstreams = [\"127.0.0.1:9\"]\nsplice = true\n",
    );
    assert!(code != Some(0) && out.contains("listen[0].splice"), "{out}");

    // A reload with a key that does not match: refused, nothing changes.
    let port = free_port();
    let c = Corral::start(
        &Conf::new(1)
            .listen(port, "echo", &good.tls_table(""))
            .render(),
    );
    let workers = c.workers();
    std::fs::copy(&other.key, &good.key).unwrap();
    let out = c.cli(&["-s", "reload"]);
    assert!(
        !out.status.success(),
        "a bad reload reported success: {}",
        out.all()
    );
    assert!(out.all().contains("does not match"), "{}", out.all());
    assert_eq!(c.workers(), workers, "workers changed on a refused reload");
    if have("python3") {
        let mut py = PyTls::start(port, &pki.ca, "localhost", "", "");
        let a = py.ask("echo untouched");
        assert_eq!(a.reply.as_deref(), Some("untouched"), "{a:?}");
    }
}

#[test]
fn per_ip_limits_and_idle_timeouts_hold_on_tls_connections() {
    if !need(&["python3"]) {
        return;
    }
    let pki = Pki::new();
    let srv = pki.server("srv", &["localhost"], None, 90);
    let port = free_port();
    let c = Corral::start(
        &Conf::new(1)
            .listen(
                port,
                "echo",
                &format!(
                    "max_connections_per_ip = 2\nidle_timeout = \"2s\"\n{}",
                    srv.tls_table("")
                ),
            )
            .render(),
    );
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut py = PyTls::start(port, &pki.ca, "localhost", "", "");
        assert!(py.ask("open").ok);
        held.push(py);
    }
    // A third from the same address is closed at once, before any handshake.
    let mut third = PyTls::start(port, &pki.ca, "localhost", "", "");
    let a = third.ask("echo third");
    assert!(!a.ok, "a third connection from one IP was served: {a:?}");
    // The two held ones go quiet; the idle timeout closes them, TLS or not.
    // Counts come with the worker's heartbeat, once a second.
    assert!(
        wait_until(Duration::from_secs(10), || {
            status_json(&c)["workers"][0]["connections"].as_u64() == Some(2)
        }),
        "{}",
        status_json(&c)
    );
    assert!(
        wait_until(Duration::from_secs(15), || {
            status_json(&c)["workers"][0]["connections"].as_u64() == Some(0)
        }),
        "idle TLS connections were not closed: {}",
        status_json(&c)
    );
    let a = held[0].ask("send after the idle timeout");
    assert!(
        !a.ok || a.reply.as_deref() == Some(""),
        "a connection past its idle timeout still answered: {a:?}"
    );
}
