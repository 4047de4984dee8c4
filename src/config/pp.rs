//! The PROXY protocol (`accept_proxy`) and connection-log keys of a `[[listen]]`
//! entry, and their checks: a header timeout of 0 would close every client before it
//! could speak. (`proxy_protocol`, the header a proxy sends upstream, is the proxy
//! service's own key.)

use std::time::Duration;

use super::ListenConfig;

/// `accept_proxy_timeout` when not set: long enough for a balancer on a busy box,
/// short enough that silent clients do not pile up.
pub const DEFAULT_ACCEPT_PROXY_TIMEOUT: Duration = Duration::from_secs(3);

impl ListenConfig {
    /// Clients must send a PROXY header first.
    pub fn accepts_proxy(&self) -> bool {
        self.accept_proxy.unwrap_or(false)
    }

    /// How long a client has to send its PROXY header.
    pub fn accept_proxy_timeout(&self) -> Duration {
        self.accept_proxy_timeout
            .map_or(DEFAULT_ACCEPT_PROXY_TIMEOUT, |d| d.0)
    }

    /// Connections are logged at close.
    pub fn logs_connections(&self) -> bool {
        self.log_connections.unwrap_or(false)
    }
}

/// The key at fault and why, for the caller to turn into a config error.
pub(super) fn check(l: &ListenConfig) -> Option<(&'static str, String)> {
    if l.accept_proxy_timeout.is_some_and(|d| d.0.is_zero()) {
        return Some((
            "accept_proxy_timeout",
            "must be more than 0 (0 would close every client before its header)".into(),
        ));
    }
    if l.accept_proxy_timeout.is_some() && !l.accepts_proxy() {
        return Some((
            "accept_proxy_timeout",
            "has no effect without accept_proxy = true".into(),
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, ConfigError};

    fn load(listen: &str) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            format!("[master]\nworkers = 1\n[[listen]]\naddress = \"127.0.0.1:1\"\n{listen}"),
        )
        .unwrap();
        Config::load(&path)
    }

    #[test]
    fn keys_parse_and_are_checked() {
        let c = load(
            "service = \"proxy\"\nupstreams = [\"127.0.0.1:7\"]\nproxy_protocol = \"v2\"\n\
             accept_proxy = true\naccept_proxy_timeout = \"500ms\"\nlog_connections = true\n",
        )
        .unwrap();
        let l = &c.listen[0];
        assert!(l.accepts_proxy() && l.logs_connections());
        assert_eq!(l.accept_proxy_timeout().as_millis(), 500);

        let e = load("service = \"echo\"\nproxy_protocol = \"v1\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("listen[0].proxy_protocol"), "{e}");
        assert!(e.contains("c.toml"), "{e}");
        assert!(e.contains("no upstream"), "{e}");
        let e =
            load("service = \"proxy\"\nupstreams = [\"127.0.0.1:7\"]\nproxy_protocol = \"v3\"\n")
                .unwrap_err()
                .to_string();
        assert!(e.contains("v3"), "{e}");
        let e = load("service = \"echo\"\naccept_proxy = true\naccept_proxy_timeout = \"0\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("listen[0].accept_proxy_timeout"), "{e}");
        let e = load("service = \"echo\"\naccept_proxy_timeout = \"1s\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("without accept_proxy"), "{e}");
    }
}
