//! `corral status` and the line systemd shows.

use super::{Master, Response, State, WorkerStatus};
use crate::control::CertificateStatus;
use crate::os::process;

impl Master {
    /// One line for `systemctl status`.
    pub(super) fn status_line(&self) -> String {
        let serving = self.workers.ready(self.generation);
        let draining = self.workers.draining();
        format!(
            "generation {}: {serving} workers serving, {draining} draining",
            self.generation
        )
    }

    /// Every loaded certificate, for `corral status` (expiry first to the eye).
    fn certificates(&self) -> Vec<CertificateStatus> {
        let now = crate::tls::load::unix_now();
        let mut out = Vec::new();
        for l in &self.config.listen {
            let Some(tls) = &l.tls else { continue };
            for c in &tls.loaded.certs {
                out.push(CertificateStatus {
                    listen: l.address.to_string(),
                    file: c.file.display().to_string(),
                    subject: c.subject.clone(),
                    names: c.names.clone(),
                    not_after: c.not_after,
                    expires: crate::tls::load::date(c.not_after),
                    days_left: (c.not_after - now).div_euclid(86_400),
                });
            }
        }
        out
    }

    pub(super) fn status(&self) -> Response {
        let now = self.fx.now();
        let mut workers: Vec<WorkerStatus> = self
            .workers
            .iter()
            .map(|w| {
                let slot = self
                    .slots
                    .get(w.slot)
                    .filter(|_| w.generation == self.generation);
                WorkerStatus {
                    pid: w.pid.as_raw(),
                    slot: w.slot,
                    generation: w.generation,
                    state: w.state.name().into(),
                    uptime_secs: now.saturating_duration_since(w.started_at).as_secs_f64(),
                    connections: w.stats.connections,
                    accepted: w.stats.accepted,
                    adopted: w.stats.adopted,
                    bytes_in: w.stats.bytes_in,
                    bytes_out: w.stats.bytes_out,
                    rss: w.stats.rss,
                    log_dropped: w.stats.log_dropped,
                    proxy_header_failed: w.stats.proxy_header_failed,
                    tls: w.stats.tls,
                    push: w.stats.push,
                    restarts: slot.map_or(0, |s| s.restarts),
                    last_exit: slot.and_then(|s| s.last_exit).map(|(r, t)| {
                        format!(
                            "{r}, {:.0}s ago",
                            now.saturating_duration_since(t).as_secs_f64()
                        )
                    }),
                }
            })
            .collect();
        workers.sort_by_key(|w| (std::cmp::Reverse(w.generation), w.slot, w.pid));
        let mut per_gen = std::collections::BTreeMap::new();
        for w in &self.workers {
            *per_gen.entry(w.generation).or_insert(0) += 1;
        }
        let generations = self.gens.status(&per_gen, self.generation);
        let state = match &self.state {
            State::Starting { .. } => "starting".to_string(),
            State::Running => "running".to_string(),
            State::Reloading(r) => format!("reloading to generation {}", r.generation),
            State::Upgrading(u) => format!("upgrading (new master {})", u.child),
            State::Stopping { graceful: true, .. } => "stopping (graceful)".to_string(),
            State::Stopping {
                graceful: false, ..
            } => "stopping (fast)".to_string(),
        };
        Response {
            ok: true,
            message: state,
            master_pid: process::pid().as_raw(),
            generation: self.generation,
            workers,
            fault: None,
            generations,
            moved_from_old_master: self.gens.from_predecessor,
            certificates: self.certificates(),
        }
    }
}
