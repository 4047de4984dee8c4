//! The checks of what types cannot express: ranges, and relations between keys and
//! between listeners.

use std::time::Duration;

use super::{checks, pp, recycle, AcceptMode, Config, ConfigError, ListenAddr, Services};

impl Config {
    /// Checks what types cannot: ranges and relations between keys.
    pub(super) fn validate(&self, services: &dyn Services) -> Result<(), ConfigError> {
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
        if self.master.tls_ticket_rotation.0 < Duration::from_secs(1) {
            return Err(self.invalid("master.tls_ticket_rotation", "must be at least 1s"));
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
        if self.log.rotation != super::Rotation::Never && self.log.file.is_none() {
            return Err(self.invalid(
                "log.rotation",
                "rolling files need log.file (stderr cannot roll)",
            ));
        }
        if self.listen.is_empty() {
            return Err(self.invalid("listen", "at least one [[listen]] entry is needed"));
        }
        if let Err((key, reason)) = recycle::check(self) {
            return Err(self.invalid(&key, reason));
        }
        for (i, l) in self.listen.iter().enumerate() {
            let key = |k: &str| format!("listen[{i}].{k}");
            let known = services.names();
            if !known.contains(&l.service) {
                return Err(self.invalid(
                    &key("service"),
                    format!(
                        "unknown service `{}` (known: {})",
                        l.service,
                        known.join(", ")
                    ),
                ));
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

impl Config {
    /// A listener whose upstreams lead back to itself (directly, or through corral's
    /// other forwarding listeners) would forward connections round in a loop until
    /// fds run out. Forwarding to one of corral's own echo or http listeners is fine.
    pub(super) fn check_proxy_loop(&self, i: usize) -> Result<(), ConfigError> {
        match checks::proxy_loop(self, i) {
            Some(why) => Err(self.invalid(&format!("listen[{i}].upstreams"), why)),
            None => Ok(()),
        }
    }
}
