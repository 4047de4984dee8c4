//! The `proxy` service's own `[[listen]]` keys (where to forward, how to pick, how
//! to connect), their checks, and the resolution of upstream names, done once by the
//! master at every load so that a worker never resolves.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::config::{Dur, ListenConfig, OptionError};
use crate::service::ServiceOptions;

/// `proxy_protocol = "v1" | "v2"`: which PROXY header a proxy sends upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyProtocol {
    /// The human-readable line (`PROXY TCP4 ...\r\n`).
    V1,
    /// The binary header.
    V2,
}

/// How a proxy listener picks an upstream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Balance {
    /// Each new connection goes to the next upstream in turn.
    #[default]
    RoundRobin,
    /// Each new connection goes to the upstream with the fewest open connections
    /// (from this worker).
    LeastConn,
}

/// `[[listen]] service = "proxy"`: its keys.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyOptions {
    /// Where connections are forwarded (`"host:port"`).
    #[serde(default)]
    pub upstreams: Vec<String>,
    /// How an upstream is picked.
    #[serde(default)]
    pub balance: Option<Balance>,
    /// How long connecting to an upstream may take before the next is tried.
    #[serde(default)]
    pub connect_timeout: Option<Dur>,
    /// How long an upstream that refused or timed out is skipped.
    #[serde(default)]
    pub upstream_backoff: Option<Dur>,
    /// Move bytes with splice(2) through kernel pipes instead of copying them
    /// through user space (costs 4 fds and up to 128 KiB of pipe memory per
    /// connection; pays for bulk transfers). Ignored while a `rate` limit applies.
    #[serde(default)]
    pub splice: Option<bool>,
    /// Send a PROXY protocol header (`"v1"` or `"v2"`) to the upstream before any
    /// client byte, naming the real client and this listener's address.
    #[serde(default)]
    pub proxy_protocol: Option<ProxyProtocol>,
    /// `upstreams` resolved by the master at config load (not a config key).
    /// Workers use these and never resolve names themselves.
    #[serde(skip)]
    pub resolved: Vec<SocketAddr>,
}

/// The proxy options of `listen`, if it is a proxy listener.
pub fn of(listen: &ListenConfig) -> Option<&ProxyOptions> {
    crate::service::options(listen)
}

impl ProxyOptions {
    /// The upstream addresses, resolved now. A literal `ip:port` costs no lookup; a
    /// name goes through the system resolver (/etc/hosts, then DNS), which blocks
    /// the caller for as long as the resolver takes.
    pub fn upstream_addrs(&self) -> Result<Vec<SocketAddr>, String> {
        use std::net::ToSocketAddrs;
        let mut out = Vec::new();
        for u in &self.upstreams {
            if let Ok(a) = u.parse::<SocketAddr>() {
                out.push(a);
                continue;
            }
            let mut addrs = u.to_socket_addrs().map_err(|e| {
                format!("upstream `{u}` does not resolve: {e} (write \"host:port\")")
            })?;
            match addrs.next() {
                Some(a) => out.push(a),
                None => return Err(format!("upstream `{u}` resolves to no address")),
            }
        }
        Ok(out)
    }
}

impl ServiceOptions for ProxyOptions {
    fn effective(&self) -> serde_json::Value {
        let mut o = self.clone();
        o.balance.get_or_insert_with(Balance::default);
        o.connect_timeout.get_or_insert(Dur(super::CONNECT_TIMEOUT));
        o.upstream_backoff
            .get_or_insert(Dur(super::UPSTREAM_BACKOFF));
        o.splice.get_or_insert(false);
        serde_json::to_value(o).unwrap_or(serde_json::Value::Null)
    }

    /// Resolves the upstreams here, in the master (at start, `-t` and every reload,
    /// so a reload picks up changed DNS): a name that does not resolve is an error
    /// naming it, and workers receive addresses, so they never resolve, nor end up
    /// with no upstream.
    fn check(&mut self) -> Result<(), OptionError> {
        if self.upstreams.is_empty() {
            return Err(OptionError::new(
                "upstreams",
                "a proxy needs at least one upstream",
            ));
        }
        if self.connect_timeout.is_some_and(|d| d.0.is_zero()) {
            return Err(OptionError::new(
                "connect_timeout",
                "must be more than 0 (0 would fail every upstream connect)",
            ));
        }
        self.resolved = self
            .upstream_addrs()
            .map_err(|e| OptionError::new("upstreams", e))?;
        Ok(())
    }

    fn forwards_to(&self) -> Vec<(String, SocketAddr)> {
        self.upstreams
            .iter()
            .cloned()
            .zip(self.resolved.iter().copied())
            .collect()
    }

    fn misplaced(key: &str, other: &str) -> Option<String> {
        (key == "proxy_protocol").then(|| {
            format!(
                "only a proxy listener sends a PROXY header upstream; service `{other}` has no upstream"
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn keys_parse_and_upstreams_resolve_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "[master]\nworkers = 1\n[[listen]]\naddress = \"127.0.0.1:1\"\nservice = \"proxy\"\n\
             upstreams = [\"127.0.0.1:7\"]\nproxy_protocol = \"v2\"\nbalance = \"least-conn\"\n",
        )
        .unwrap();
        let c = Config::load(&path).unwrap();
        let o = of(&c.listen[0]).expect("proxy options parsed at load");
        assert_eq!(o.proxy_protocol, Some(ProxyProtocol::V2));
        assert_eq!(o.balance, Some(Balance::LeastConn));
        assert_eq!(o.resolved, [SocketAddr::from(([127, 0, 0, 1], 7))]);
    }
}
