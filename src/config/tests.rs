//! Unit tests of loading, layering and the checks.
use super::*;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

fn load_str(body: &str) -> Result<Config, ConfigError> {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(body.as_bytes()).unwrap();
    Config::load(f.path())
}

const MIN: &str = "[[listen]]\naddress = \"127.0.0.1:1\"\nservice = \"echo\"\n";

#[test]
fn units_parse() {
    assert_eq!(
        "500ms".parse::<Dur>().unwrap().0,
        Duration::from_millis(500)
    );
    assert_eq!("30s".parse::<Dur>().unwrap().0, Duration::from_secs(30));
    assert_eq!("2m".parse::<Dur>().unwrap().0, Duration::from_secs(120));
    assert_eq!("7".parse::<Dur>().unwrap().0, Duration::from_secs(7));
    assert!("3 parsecs".parse::<Dur>().is_err());
    assert!("s".parse::<Dur>().is_err());
    assert_eq!("64KiB".parse::<Size>().unwrap().0, 65536);
    assert_eq!("1MiB".parse::<Size>().unwrap().0, 1 << 20);
    assert_eq!("1MB".parse::<Size>().unwrap().0, 1_000_000);
    assert_eq!("12".parse::<Size>().unwrap().0, 12);
    assert!("12 furlongs".parse::<Size>().is_err());
    assert_eq!(Size(65536).to_string(), "64KiB");
    assert_eq!(Dur(Duration::from_millis(1500)).to_string(), "1500ms");
}

#[test]
fn defaults_and_file_layer() {
    let c = load_str(&format!(
        "[master]\nworkers = 3\ndrain_timeout = \"5s\"\n{MIN}"
    ))
    .unwrap();
    assert_eq!(c.master.workers, Workers::Count(3));
    assert_eq!(c.master.drain_timeout.0, Duration::from_secs(5));
    assert_eq!(c.worker, WorkerConfig::default());
    assert_eq!(
        c.listen[0].address,
        ListenAddr::Tcp("127.0.0.1:1".parse().unwrap())
    );
}

#[test]
fn unknown_key_names_key_and_file() {
    let err = load_str(&format!("[master]\nwrokers = 2\n{MIN}"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("wrokers"), "{err}");
    assert!(err.contains(".toml") || err.contains("/tmp"), "{err}");
}

#[test]
fn bad_value_names_key() {
    let err = load_str(&format!("[master]\ndrain_timeout = \"soon\"\n{MIN}"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("drain_timeout"), "{err}");
    assert!(err.contains("soon"), "{err}");
    let err = load_str(&format!("[master]\nworkers = \"many\"\n{MIN}"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("workers"), "{err}");
    let err = load_str("[[listen]]\naddress = \"nowhere\"\nservice = \"echo\"\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("address") && err.contains("nowhere"), "{err}");
}

#[test]
fn relations_are_checked() {
    let err = load_str(&format!("[flow]\nwrite_low_water = \"1MiB\"\n{MIN}"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("flow.write_low_water"), "{err}");
    let err = load_str("[master]\nworkers = 1\n").unwrap_err().to_string();
    assert!(err.contains("listen"), "{err}");
    let err = load_str(&format!("{MIN}{MIN}")).unwrap_err().to_string();
    assert!(err.contains("listen[1].address"), "{err}");
}

#[test]
fn values_that_break_the_service_are_refused() {
    let cases = [
        ("[log]\nlevel = \"warning\"\n", "log.level", "not a level"),
        ("[log]\nlevel = \"loud\"\n", "log.level", "not a level"),
        (
            "[log]\nfile = \"/nonexistent/dir/x.log\"\n",
            "log.file",
            "/nonexistent/dir",
        ),
        ("[log]\nfile = \"/tmp\"\n", "log.file", "is a directory"),
        (
            "[master]\nstop_timeout = \"0\"\n",
            "master.stop_timeout",
            "more than 0",
        ),
        (
            "[master]\nupgrade_timeout = \"0s\"\n",
            "master.upgrade_timeout",
            "more than 0",
        ),
        (
            "[master]\ndrain_timeout = \"0\"\n",
            "master.drain_timeout",
            "more than 0",
        ),
        (
            "[master]\nwatchdog_timeout = \"0\"\n",
            "master.watchdog_timeout",
            "longer than",
        ),
        (
            "[worker]\nheartbeat_interval = \"0\"\n",
            "worker.heartbeat_interval",
            "at least",
        ),
    ];
    for (body, key, why) in cases {
        let err = load_str(&format!("{body}{MIN}")).unwrap_err().to_string();
        assert!(err.contains(&format!("`{key}`")), "{body}: {err}");
        assert!(err.contains(why), "{body}: {err}");
        assert!(
            err.contains("/tmp") || err.contains(".tmp"),
            "names the file: {err}"
        );
    }
    let http = "[[listen]]\naddress = \"127.0.0.1:1\"\nservice = \"http\"\n";
    for (extra, key) in [
        ("max_header_size = \"0\"\n", "listen[0].max_header_size"),
        ("max_header_size = \"10\"\n", "listen[0].max_header_size"),
        ("header_timeout = \"0\"\n", "listen[0].header_timeout"),
    ] {
        let err = load_str(&format!("{http}{extra}")).unwrap_err().to_string();
        assert!(err.contains(&format!("`{key}`")), "{extra}: {err}");
    }
    let ok = load_str(&format!(
        "[worker]\nidle_timeout = \"0\"\n{http}max_header_size = \"1KiB\"\n"
    ));
    assert!(ok.is_ok(), "{ok:?}");
}

#[test]
fn proxy_loops_are_refused() {
    let proxy = |listen: &str, up: &str| {
        format!("[[listen]]\naddress = \"{listen}\"\nservice = \"proxy\"\nupstreams = [\"{up}\"]\n")
    };
    for (listen, up) in [
        ("127.0.0.1:7001", "127.0.0.1:7001"),
        ("0.0.0.0:7001", "127.0.0.1:7001"),
        ("0.0.0.0:7001", "localhost:7001"),
    ] {
        let err = load_str(&proxy(listen, up)).unwrap_err().to_string();
        assert!(err.contains("`listen[0].upstreams`"), "{err}");
        assert!(err.contains("this listener itself"), "{err}");
    }
    // Two proxies that forward to each other.
    let err = load_str(&format!(
        "{}{}",
        proxy("127.0.0.1:7003", "127.0.0.1:7004"),
        proxy("127.0.0.1:7004", "127.0.0.1:7003")
    ))
    .unwrap_err()
    .to_string();
    assert!(err.contains("`listen[0].upstreams`"), "{err}");
    assert!(err.contains("lead back to listen[0]"), "{err}");
    // Forwarding to corral's own echo listener, or along a chain that ends there,
    // is no loop.
    let echo = "[[listen]]\naddress = \"127.0.0.1:7005\"\nservice = \"echo\"\n";
    let chain = format!(
        "{echo}{}{}",
        proxy("127.0.0.1:7006", "127.0.0.1:7005"),
        proxy("127.0.0.1:7007", "127.0.0.1:7006")
    );
    assert!(load_str(&chain).is_ok(), "{:?}", load_str(&chain));
    assert!(load_str(&proxy("127.0.0.1:7001", "127.0.0.1:7002")).is_ok());
}

#[test]
fn env_var_names() {
    assert_eq!(env_var_name("master.workers"), "CORRAL_MASTER__WORKERS");
    assert_eq!(env_var_name("log.level"), "CORRAL_LOG__LEVEL");
}

#[test]
fn mistyped_env_sections_are_refused_by_name() {
    let check = |names: &[&str]| check_env_names(names.iter().map(|n| n.into()));
    // Overrides of real sections and variables of another shape pass.
    for ok in [
        "CORRAL_MASTER__WORKERS",
        "CORRAL_LOG__LEVEL",
        "CORRAL_FAULT",
        "CORRAL_BIN",
        "CORRAL_UPGRADE_GENERATION",
        "CORRAL_METRICS_TOTALS",
        "PATH",
    ] {
        assert!(check(&[ok]).is_ok(), "{ok} refused");
    }
    for (bad, says) in [
        ("CORRAL_MASTR__WORKERS", "no config section `mastr`"),
        ("CORRAL_LISTEN__ADDRESS", "config file only"),
        ("CORRAL_MASTER_WORKERS", "CORRAL_MASTER__WORKERS"),
        ("corral_wrker__max_connections", "no config section `wrker`"),
    ] {
        let e = check(&["CORRAL_LOG__LEVEL", bad]).unwrap_err().to_string();
        assert!(e.contains(&format!("environment variable {bad}")), "{e}");
        assert!(e.contains(says), "{e}");
    }
}

#[test]
fn small_rss_limit_is_a_warning() {
    let c = load_str(&format!("[master]\nmax_worker_rss = \"1MiB\"\n{MIN}")).unwrap();
    assert_eq!(c.warnings().len(), 1, "{:?}", c.warnings());
    let c = load_str(&format!("[master]\nmax_worker_rss = \"64MiB\"\n{MIN}")).unwrap();
    assert!(c.warnings().is_empty());
}

#[test]
fn missing_file_is_an_error() {
    let err = Config::load(Path::new("/nonexistent/corral.toml"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("/nonexistent/corral.toml"), "{err}");
}

#[test]
fn unix_addresses() {
    assert_eq!(
        "unix:/run/x.sock".parse::<ListenAddr>().unwrap(),
        ListenAddr::Unix("/run/x.sock".into())
    );
    assert_eq!(
        "/run/x.sock".parse::<ListenAddr>().unwrap(),
        ListenAddr::Unix("/run/x.sock".into())
    );
    assert!("[::1]:80".parse::<ListenAddr>().is_ok());
}

#[test]
fn seccomp_modes() {
    let l = "[[listen]]\naddress = \"127.0.0.1:1\"\nservice = \"echo\"\n";
    assert_eq!(load_str(l).unwrap().worker.seccomp, SeccompMode::Enforce);
    for (v, m) in [
        ("enforce", SeccompMode::Enforce),
        ("log", SeccompMode::Log),
        ("off", SeccompMode::Off),
    ] {
        let c = load_str(&format!("[worker]\nseccomp = \"{v}\"\n{l}")).unwrap();
        assert_eq!(c.worker.seccomp, m);
    }
    let e = load_str(&format!("[worker]\nseccomp = \"strict\"\n{l}"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("seccomp") && e.contains("enforce"), "{e}");
}

#[test]
fn a_root_master_without_user_runs_workers_as_nobody() {
    let l = "[[listen]]\naddress = \"127.0.0.1:1\"\nservice = \"echo\"\n";
    let c = load_str(l).unwrap();
    if crate::os::privs::is_root() {
        let creds = c.master.credentials.unwrap();
        assert_eq!(creds.user, "nobody");
        assert!(creds.implicit);
        assert_ne!(creds.uid, 0);
        // `user = "root"` keeps them root, because the operator said so.
        let c = load_str(&format!("[master]\nuser = \"root\"\n{l}")).unwrap();
        assert_eq!(c.master.credentials.unwrap().uid, 0);
    } else {
        assert!(c.master.credentials.is_none());
    }
}
