//! The checks of what types cannot express: ranges, and relations between keys and
//! between listeners.

use std::time::Duration;

use super::{
    checks, pp, recycle, AcceptMode, Config, ConfigError, ListenAddr, HTTP_KEYS, PROXY_KEYS,
};

impl Config {
    /// Checks what types cannot: ranges and relations between keys.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let n = self.master.workers.count();
        if n == 0 || n > 1024 {
            return Err(self.invalid("master.workers", format!("{n} is out of range (1 to 1024)")));
        }
        if self.master.pid_file.as_os_str().is_empty() {
            return Err(self.invalid("master.pid_file", "must not be empty"));
        }
        // Timeouts: 0 means "off" only for worker.idle_timeout (a connection may stay
        // idle forever); every other one is a deadline the runtime relies on, where 0
        // would kill, reset or give up at once, so 0 is refused.
        for (key, d) in [
            ("master.drain_timeout", self.master.drain_timeout),
            ("master.stop_timeout", self.master.stop_timeout),
            ("master.upgrade_timeout", self.master.upgrade_timeout),
        ] {
            if d.0.is_zero() {
                return Err(self.invalid(key, "must be more than 0"));
            }
        }
        if self.master.watchdog_timeout.0 <= self.worker.heartbeat_interval.0 {
            return Err(self.invalid(
                "master.watchdog_timeout",
                format!(
                    "{} must be longer than worker.heartbeat_interval ({})",
                    self.master.watchdog_timeout, self.worker.heartbeat_interval
                ),
            ));
        }
        if self.master.max_old_generations == 0 {
            return Err(self.invalid("master.max_old_generations", "must be at least 1"));
        }
        if self.worker.max_connections == 0 {
            return Err(self.invalid("worker.max_connections", "must be at least 1"));
        }
        if self.worker.heartbeat_interval.0 < Duration::from_millis(10) {
            return Err(self.invalid("worker.heartbeat_interval", "must be at least 10ms"));
        }
        if self.flow.read_quantum.0 < 512 {
            return Err(self.invalid("flow.read_quantum", "must be at least 512 bytes"));
        }
        if self.flow.write_low_water >= self.flow.write_high_water {
            return Err(self.invalid(
                "flow.write_low_water",
                format!(
                    "{} must be below flow.write_high_water ({})",
                    self.flow.write_low_water, self.flow.write_high_water
                ),
            ));
        }
        if let Err(e) = crate::log::check_level(&self.log.level) {
            return Err(self.invalid("log.level", e));
        }
        if let Some(file) = &self.log.file {
            if let Err(e) = checks::log_file(file) {
                return Err(self.invalid("log.file", e));
            }
        }
        if self.listen.is_empty() {
            return Err(self.invalid("listen", "at least one [[listen]] entry is needed"));
        }
        if let Err((key, reason)) = recycle::check(self) {
            return Err(self.invalid(&key, reason));
        }
        for (i, l) in self.listen.iter().enumerate() {
            let key = |k: &str| format!("listen[{i}].{k}");
            if !crate::service::is_known(&l.service) {
                return Err(self.invalid(
                    &key("service"),
                    format!(
                        "unknown service `{}` (known: {})",
                        l.service,
                        crate::service::known().join(", ")
                    ),
                ));
            }
            let own: &[&str] = match l.service.as_str() {
                "http" => HTTP_KEYS,
                "proxy" => PROXY_KEYS,
                _ => &[],
            };
            if let Some(k) = l
                .set_keys()
                .into_iter()
                .find(|k| !own.contains(k) && (HTTP_KEYS.contains(k) || PROXY_KEYS.contains(k)))
            {
                return Err(self.invalid(
                    &key(k),
                    format!("does not apply to service `{}`", l.service),
                ));
            }
            if l.service == "proxy" && l.upstreams.is_empty() {
                return Err(self.invalid(&key("upstreams"), "a proxy needs at least one upstream"));
            }
            if l.header_timeout.is_some_and(|d| d.0.is_zero()) {
                return Err(self.invalid(
                    &key("header_timeout"),
                    "must be more than 0 (0 would answer 408 to every request)",
                ));
            }
            if l.connect_timeout.is_some_and(|d| d.0.is_zero()) {
                return Err(self.invalid(
                    &key("connect_timeout"),
                    "must be more than 0 (0 would fail every upstream connect)",
                ));
            }
            if let Some(size) = l.max_header_size {
                if size.0 < MIN_HEADER_SIZE {
                    return Err(self.invalid(
                        &key("max_header_size"),
                        format!(
                            "{size} is too small: no request head fits (at least {MIN_HEADER_SIZE} bytes)"
                        ),
                    ));
                }
            }
            if let Some(st) = l.status {
                if !(200..=599).contains(&st) {
                    return Err(self.invalid(
                        &key("status"),
                        format!("{st} is not a status code (200-599)"),
                    ));
                }
            }
            if let Some(h) = &l.headers {
                for (k, v) in h {
                    let bad = |c: char| c.is_control() || c == ':' || c.is_whitespace();
                    if k.is_empty() || k.contains(bad) || v.contains(['\r', '\n']) {
                        return Err(self.invalid(
                            &key("headers"),
                            format!("`{k}: {v}` is not a valid header"),
                        ));
                    }
                }
            }
            if l.accept == AcceptMode::Reuseport && matches!(l.address, ListenAddr::Unix(_)) {
                return Err(self.invalid(
                    &format!("listen[{i}].accept"),
                    "\"reuseport\" needs a TCP address; Unix sockets can only be \"shared\"",
                ));
            }
            if l.backlog < 1 {
                return Err(self.invalid(&format!("listen[{i}].backlog"), "must be at least 1"));
            }
            if let Some((k, why)) = pp::check(l) {
                return Err(self.invalid(&key(k), why));
            }
            for (j, other) in self.listen.iter().enumerate().take(i) {
                if other.address == l.address {
                    return Err(self.invalid(
                        &format!("listen[{i}].address"),
                        format!("{} is already used by listen[{j}]", l.address),
                    ));
                }
                if l.name.is_some() && other.name == l.name {
                    return Err(self.invalid(
                        &format!("listen[{i}].name"),
                        format!(
                            "`{}` is already used by listen[{j}]",
                            l.name.as_deref().unwrap_or("")
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// The smallest `max_header_size`: a request line and a Host header.
const MIN_HEADER_SIZE: u64 = 64;

impl Config {
    /// A proxy whose upstreams lead back to itself (directly, or through corral's
    /// other proxy listeners) would forward connections round in a loop until fds run
    /// out. Forwarding to one of corral's own echo or http listeners is fine.
    pub(super) fn check_proxy_loop(&self, i: usize) -> Result<(), ConfigError> {
        match checks::proxy_loop(self, i) {
            Some(why) => Err(self.invalid(&format!("listen[{i}].upstreams"), why)),
            None => Ok(()),
        }
    }
}
