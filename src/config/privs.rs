//! Checks and resolution for the keys of privilege dropping, resource limits and
//! listener socket options: `[master] user`/`group`, `[worker] rlimit_nofile`/
//! `rlimit_core`, and `[[listen]] defer_accept`, `nodelay`, `keepalive*`, `mode`,
//! `owner`.
//!
//! User and group names are resolved here, by the config loader in the master, so a
//! typo is a config error (for `-t`, start and reload alike) and a forked worker only
//! makes system calls. A setting that cannot work is refused, one that works but not
//! as written is a warning with the numbers.

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};

use super::{Config, ConfigError, Dur, ListenAddr, ListenConfig, Size};
use crate::os::net::{Keepalive, TcpOptions};
use crate::os::privs::{self, Credentials};

/// Fds a worker needs besides its connections: listeners, channel, epoll, signalfd,
/// eventfds, the log file, a few in flight. `max_connections` above the fd limit minus
/// this means EMFILE before the connection limit.
pub const FD_RESERVE: u64 = 64;

/// Linux caps TCP_KEEPIDLE and TCP_KEEPINTVL at this many seconds, TCP_KEEPCNT at 127.
const MAX_KEEPALIVE_SECS: u64 = 32_767;
const MAX_KEEPALIVE_COUNT: u32 = 127;

/// `rlimit_core`: a size, or `"unlimited"` (kept as `u64::MAX`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(into = "String")]
pub struct CoreLimit(pub u64);

impl From<CoreLimit> for String {
    fn from(c: CoreLimit) -> String {
        if c.0 == u64::MAX {
            "unlimited".into()
        } else {
            Size(c.0).to_string()
        }
    }
}

impl<'de> Deserialize<'de> for CoreLimit {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Raw::deserialize(d)
            .map_err(|_| de::Error::custom("expected a size (\"0\", \"1GiB\") or \"unlimited\""))?
        {
            Raw::N(n) => Ok(CoreLimit(n)),
            Raw::S(s) if s == "unlimited" => Ok(CoreLimit(u64::MAX)),
            Raw::S(s) => s
                .parse::<Size>()
                .map(|s| CoreLimit(s.0))
                .map_err(|e| de::Error::custom(format!("{e}, or \"unlimited\""))),
            Raw::B(_) => Err(de::Error::custom(
                "expected a size (\"0\", \"1GiB\") or \"unlimited\"",
            )),
        }
    }
}

/// `defer_accept`: `true` (1 s), `false`, or how long to wait for the first data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(into = "String")]
pub struct DeferAccept(pub Dur);

impl From<DeferAccept> for String {
    fn from(d: DeferAccept) -> String {
        d.0.to_string()
    }
}

impl<'de> Deserialize<'de> for DeferAccept {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let secs = |n| DeferAccept(Dur(std::time::Duration::from_secs(n)));
        match Raw::deserialize(d)
            .map_err(|_| de::Error::custom("expected true, false or a duration (\"5s\")"))?
        {
            Raw::B(b) => Ok(secs(u64::from(b))),
            Raw::N(n) => Ok(secs(n)),
            Raw::S(s) => s.parse().map(DeferAccept).map_err(de::Error::custom),
        }
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Raw {
    B(bool),
    N(u64),
    S(String),
}

/// `user = "nobody"` or `user = 65534`: a name or a numeric id, kept as text.
pub fn de_id<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    match Option::<Raw>::deserialize(d)
        .map_err(|_| de::Error::custom("expected a name or a numeric id"))?
    {
        None => Ok(None),
        Some(Raw::N(n)) => Ok(Some(n.to_string())),
        Some(Raw::S(s)) => Ok(Some(s)),
        Some(Raw::B(_)) => Err(de::Error::custom("expected a name or a numeric id")),
    }
}

/// Resolves `[master] user`/`group` and every listener's `owner`, and checks the
/// listener options. Runs after the plain validation.
pub fn resolve(config: &mut Config) -> Result<(), ConfigError> {
    config.master.credentials = credentials(config)?;
    if config.worker.rlimit_nofile == Some(0) {
        return Err(config.invalid("worker.rlimit_nofile", "must be at least 1"));
    }
    for i in 0..config.listen.len() {
        let owner = listener(config, i)?;
        config.listen[i].resolved_owner = owner;
    }
    Ok(())
}

fn credentials(config: &Config) -> Result<Option<Credentials>, ConfigError> {
    let m = &config.master;
    let Some(user) = &m.user else {
        if m.group.is_some() {
            return Err(config.invalid(
                "master.group",
                "needs master.user as well (workers would otherwise keep running as root)",
            ));
        }
        return Ok(implicit_nobody());
    };
    let (uid, primary, name) =
        privs::lookup_user(user).map_err(|e| config.invalid("master.user", e))?;
    let gid = match &m.group {
        Some(g) => privs::lookup_group(g).map_err(|e| config.invalid("master.group", e))?,
        None => primary.ok_or_else(|| {
            config.invalid(
                "master.user",
                format!("uid {uid} has no passwd entry, so it has no group: set master.group"),
            )
        })?,
    };
    let groups = match (&m.group, &name) {
        (None, Some(name)) => {
            privs::user_groups(name, gid).map_err(|e| config.invalid("master.user", e))?
        }
        _ => vec![gid],
    };
    if !privs::is_root() && uid != privs::euid() {
        return Err(config.invalid(
            "master.user",
            format!(
                "corral runs as uid {}, not root, so it cannot switch its workers to `{user}` \
                 (uid {uid}): start it as root or remove master.user",
                privs::euid()
            ),
        ));
    }
    Ok(Some(Credentials {
        user: user.clone(),
        uid,
        gid,
        groups,
        implicit: false,
    }))
}

/// The user nginx falls back to, and its uid and gid where it has no passwd entry.
pub const DEFAULT_USER: &str = "nobody";
const NOBODY_ID: u32 = 65534;

/// A root master without `[master] user` still does not run service code as root:
/// its workers become `nobody` (nginx's default), with no supplementary group.
/// `user = "root"` keeps them root, for the operator who really means it.
fn implicit_nobody() -> Option<Credentials> {
    if !privs::is_root() {
        return None;
    }
    let (uid, gid) = match privs::lookup_user(DEFAULT_USER) {
        Ok((uid, Some(gid), _)) => (uid, gid),
        _ => (NOBODY_ID, NOBODY_ID),
    };
    Some(Credentials {
        user: DEFAULT_USER.into(),
        uid,
        gid,
        groups: vec![gid],
        implicit: true,
    })
}

/// Checks listener `i`'s socket options; returns its resolved `owner`.
fn listener(config: &Config, i: usize) -> Result<Option<(u32, Option<u32>)>, ConfigError> {
    let l = &config.listen[i];
    let key = |k: &str| format!("listen[{i}].{k}");
    let unix = matches!(l.address, ListenAddr::Unix(_));
    let tcp_keys = [
        ("defer_accept", l.defer_accept.is_some()),
        ("nodelay", l.nodelay.is_some()),
        ("keepalive", l.keepalive.is_some()),
        ("keepalive_idle", l.keepalive_idle.is_some()),
        ("keepalive_interval", l.keepalive_interval.is_some()),
        ("keepalive_count", l.keepalive_count.is_some()),
    ];
    let unix_keys = [("mode", l.mode.is_some()), ("owner", l.owner.is_some())];
    if let (true, Some((k, _))) = (unix, tcp_keys.iter().find(|(_, set)| *set)) {
        return Err(config.invalid(&key(k), "is a TCP option; this listener is a Unix socket"));
    }
    if let (false, Some((k, _))) = (unix, unix_keys.iter().find(|(_, set)| *set)) {
        return Err(config.invalid(
            &key(k),
            "applies to Unix socket listeners only; this one is TCP",
        ));
    }
    for (k, set) in &tcp_keys[3..] {
        if *set && l.keepalive != Some(true) {
            return Err(config.invalid(&key(k), "needs `keepalive = true` on this listener"));
        }
    }
    for (k, d) in [
        ("keepalive_idle", l.keepalive_idle),
        ("keepalive_interval", l.keepalive_interval),
        ("defer_accept", l.defer_accept.map(|d| d.0)),
    ] {
        if let Some(d) = d {
            let secs = d.0.as_secs();
            let min = if k == "defer_accept" { 0 } else { 1 };
            if secs < min || secs > MAX_KEEPALIVE_SECS || d.0.subsec_millis() != 0 {
                return Err(config.invalid(
                    &key(k),
                    format!("{d} must be whole seconds from {min}s to {MAX_KEEPALIVE_SECS}s"),
                ));
            }
        }
    }
    if let Some(n) = l.keepalive_count {
        if !(1..=MAX_KEEPALIVE_COUNT).contains(&n) {
            return Err(config.invalid(
                &key("keepalive_count"),
                format!("{n} is out of range (1 to {MAX_KEEPALIVE_COUNT})"),
            ));
        }
    }
    if let Some(m) = &l.mode {
        parse_mode(m).map_err(|e| config.invalid(&key("mode"), e))?;
    }
    let Some(owner) = &l.owner else {
        return Ok(None);
    };
    let (user, group) = match owner.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (owner.as_str(), None),
    };
    let (uid, _, _) = privs::lookup_user(user).map_err(|e| config.invalid(&key("owner"), e))?;
    let gid = match group {
        Some(g) => Some(privs::lookup_group(g).map_err(|e| config.invalid(&key("owner"), e))?),
        None => None,
    };
    if !privs::is_root() && uid != privs::euid() {
        return Err(config.invalid(
            &key("owner"),
            format!(
                "only root may give a socket to another user; corral runs as uid {}",
                privs::euid()
            ),
        ));
    }
    Ok(Some((uid, gid)))
}

/// `"0660"` → 0o660.
pub fn parse_mode(s: &str) -> Result<u32, String> {
    let bad = || format!("`{s}` is not an octal file mode (write e.g. \"0660\")");
    let digits = s.strip_prefix("0o").unwrap_or(s);
    if digits.is_empty() || digits.len() > 4 {
        return Err(bad());
    }
    let m = u32::from_str_radix(digits, 8).map_err(|_| bad())?;
    if m > 0o777 {
        return Err(format!(
            "`{s}`: only permission bits (at most 0777) apply to a socket"
        ));
    }
    Ok(m)
}

/// The TCP options in force on listener `l`.
pub fn tcp_options(l: &ListenConfig) -> TcpOptions {
    TcpOptions {
        // Always on before this key existed: echo and request/response traffic wants
        // small writes out at once.
        nodelay: l.nodelay.unwrap_or(true),
        defer_accept_secs: l.defer_accept.map_or(0, |d| d.0 .0.as_secs() as u32),
        keepalive: (l.keepalive == Some(true)).then(|| Keepalive {
            idle_secs: l.keepalive_idle.map(|d| d.0.as_secs() as u32),
            interval_secs: l.keepalive_interval.map(|d| d.0.as_secs() as u32),
            count: l.keepalive_count,
        }),
    }
}

/// Warnings about limits that will not be what the config says.
pub fn warnings(config: &Config) -> Vec<String> {
    let mut out = Vec::new();
    if config.master.user.is_some() && !privs::is_root() {
        out.push(format!(
            "master.user is set but corral is not running as root: workers keep uid {}",
            privs::euid()
        ));
    }
    let Ok(hard) = privs::nofile_hard() else {
        return out;
    };
    let nofile = match config.worker.rlimit_nofile {
        Some(n) if n > hard => {
            out.push(format!(
                "worker.rlimit_nofile = {n} exceeds the hard RLIMIT_NOFILE of {hard}, which \
                 corral does not raise: workers get {hard}"
            ));
            hard
        }
        Some(n) => n,
        None => hard,
    };
    let max = config.worker.max_connections as u64;
    if max + FD_RESERVE > nofile {
        out.push(format!(
            "worker.max_connections = {max} plus {FD_RESERVE} fds for the worker itself exceeds \
             the {nofile} fds a worker may open: accept will fail with EMFILE before the \
             connection limit (raise worker.rlimit_nofile or the hard limit, or lower \
             max_connections)"
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn load(body: &str) -> Result<Config, ConfigError> {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(body.as_bytes()).unwrap();
        Config::load(f.path())
    }
    const TCP: &str = "[[listen]]\naddress = \"127.0.0.1:1\"\nservice = \"echo\"\n";
    const UNIX: &str = "[[listen]]\naddress = \"unix:/tmp/x.sock\"\nservice = \"echo\"\n";

    #[test]
    fn modes() {
        assert_eq!(parse_mode("0660").unwrap(), 0o660);
        assert_eq!(parse_mode("600").unwrap(), 0o600);
        assert!(parse_mode("0999").is_err());
        assert!(parse_mode("4755").is_err());
        assert!(parse_mode("").is_err());
    }

    #[test]
    fn listener_options_are_checked() {
        let cases = [
            (
                format!("{UNIX}nodelay = false\n"),
                "listen[0].nodelay",
                "TCP option",
            ),
            (
                format!("{TCP}mode = \"0660\"\n"),
                "listen[0].mode",
                "Unix socket",
            ),
            (
                format!("{UNIX}mode = \"0868\"\n"),
                "listen[0].mode",
                "octal",
            ),
            (
                format!("{TCP}keepalive_idle = \"30s\"\n"),
                "listen[0].keepalive_idle",
                "keepalive = true",
            ),
            (
                format!("{TCP}keepalive = true\nkeepalive_count = 0\n"),
                "listen[0].keepalive_count",
                "out of range",
            ),
            (
                format!("{TCP}keepalive = true\nkeepalive_idle = \"1500ms\"\n"),
                "listen[0].keepalive_idle",
                "whole seconds",
            ),
            (
                format!("{UNIX}owner = \"no-such-user-corral\"\n"),
                "listen[0].owner",
                "no user named",
            ),
            (
                "[master]\nuser = \"no-such-user-corral\"\n".to_string() + TCP,
                "master.user",
                "no user named",
            ),
            (
                "[master]\ngroup = \"root\"\n".to_string() + TCP,
                "master.group",
                "needs master.user",
            ),
            (
                "[worker]\nrlimit_nofile = 0\n".to_string() + TCP,
                "worker.rlimit_nofile",
                "at least 1",
            ),
        ];
        for (body, key, why) in cases {
            let e = load(&body).unwrap_err().to_string();
            assert!(e.contains(&format!("`{key}`")), "{body}: {e}");
            assert!(e.contains(why), "{body}: {e}");
        }
        let c = load(&format!(
            "{TCP}defer_accept = true\nkeepalive = true\nkeepalive_idle = \"30s\"\nkeepalive_count = 3\n"
        ))
        .unwrap();
        let o = tcp_options(&c.listen[0]);
        assert!(o.nodelay);
        assert_eq!(o.defer_accept_secs, 1);
        let k = o.keepalive.unwrap();
        assert_eq!(
            (k.idle_secs, k.interval_secs, k.count),
            (Some(30), None, Some(3))
        );
    }

    #[test]
    fn users_resolve() {
        let c = load(&format!(
            "[master]\nuser = 0\n[worker]\nrlimit_core = \"unlimited\"\n{TCP}"
        ))
        .unwrap();
        let creds = c.master.credentials.unwrap();
        assert_eq!((creds.uid, creds.gid), (0, 0));
        assert_eq!(c.worker.rlimit_core, Some(CoreLimit(u64::MAX)));
    }

    #[test]
    fn nofile_warnings() {
        let hard = privs::nofile_hard().unwrap();
        let c = load(&format!("[worker]\nrlimit_nofile = {}\n{TCP}", hard + 1)).unwrap();
        let w = c.warnings().join("\n");
        assert!(w.contains("exceeds the hard RLIMIT_NOFILE"), "{w}");
        let c = load(&format!(
            "[worker]\nrlimit_nofile = 100\nmax_connections = 100\n{TCP}"
        ))
        .unwrap();
        let w = c.warnings().join("\n");
        assert!(w.contains("EMFILE"), "{w}");
    }
}
