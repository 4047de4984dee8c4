//! The exposition text a scrape gets: every counter the master keeps (its own, its
//! workers', those that outlived them and, after an upgrade, its predecessor's), in
//! the Prometheus text format through `Expo`. Counting is the parent module's job;
//! this file only renders.

use super::expo::{Expo, Kind};
use super::{
    ListenerTotals, Master, State, Totals, UpstreamSeries, UpstreamTotals, WorkerSeries,
    WorkerState,
};
use std::collections::BTreeMap;
use std::time::Instant;

impl Master {
    /// The exposition text.
    pub(in crate::master) fn prometheus(&mut self) -> String {
        if self.metrics.base_file.is_some() {
            let gone = self.up.predecessor.is_none();
            self.metrics.refresh_base(gone);
        }
        let t = self.totals();
        let now = Instant::now();
        let mut e = Expo::default();
        let c = Kind::Counter;
        let g = Kind::Gauge;

        e.family("corral_build_info", g, "The running master's version.")
            .sample(
                "corral_build_info",
                &[("version", env!("CARGO_PKG_VERSION"))],
                1.0,
            );
        let state = match &self.state {
            State::Starting { .. } => "starting",
            State::Running => "running",
            State::Reloading(_) => "reloading",
            State::Upgrading(_) => "upgrading",
            State::Stopping { .. } => "stopping",
        };
        e.family(
            "corral_master_state",
            g,
            "The master's state (1 for the current one).",
        )
        .sample("corral_master_state", &[("state", state)], 1.0);
        e.family("corral_generation", g, "The current generation number.")
            .sample("corral_generation", &[], self.generation as f64);
        let mut gens: Vec<u64> = self.workers.iter().map(|w| w.generation).collect();
        gens.sort_unstable();
        gens.dedup();
        e.family(
            "corral_generations_alive",
            g,
            "Generations with at least one live worker.",
        )
        .sample("corral_generations_alive", &[], gens.len() as f64);

        let mut workers: Vec<_> = self.workers.iter().collect();
        workers.sort_by_key(|w| (w.generation, w.slot, w.pid.as_raw()));
        e.family("corral_workers", g, "Live workers by state.");
        for state in ["starting", "ready", "draining", "stopping"] {
            let n = workers.iter().filter(|w| w.state.name() == state).count();
            e.sample("corral_workers", &[("state", state)], n as f64);
        }
        // No state label on these: a worker that starts draining keeps its series.
        let labels: Vec<[String; 3]> = workers
            .iter()
            .map(|w| {
                [
                    w.slot.to_string(),
                    w.generation.to_string(),
                    w.pid.as_raw().to_string(),
                ]
            })
            .collect();
        let per_worker: [WorkerSeries; 6] = [
            (
                "corral_worker_connections",
                g,
                "Open client connections of a worker.",
                |s| s.connections,
            ),
            (
                "corral_worker_accepted_total",
                c,
                "Connections a worker accepted from its listeners (new clients only).",
                |s| s.accepted,
            ),
            (
                "corral_worker_adopted_total",
                c,
                "Connections a worker took over from another worker or the old master.",
                |s| s.adopted,
            ),
            (
                "corral_worker_received_bytes_total",
                c,
                "Bytes a worker read from clients.",
                |s| s.bytes_in,
            ),
            (
                "corral_worker_sent_bytes_total",
                c,
                "Bytes a worker wrote to clients.",
                |s| s.bytes_out,
            ),
            (
                "corral_worker_rss_bytes",
                g,
                "A worker's resident set size.",
                |s| s.rss,
            ),
        ];
        for (name, kind, help, get) in per_worker {
            e.family(name, kind, help);
            for (w, l) in workers.iter().zip(&labels) {
                let ls = [("slot", &*l[0]), ("generation", &*l[1]), ("pid", &*l[2])];
                e.sample(name, &ls, get(&w.stats) as f64);
            }
        }

        e.family(
            "corral_slot_restarts",
            g,
            "Respawns of a slot after unexpected exits, since the last reload.",
        );
        for (i, s) in self.slots.iter().enumerate() {
            e.sample(
                "corral_slot_restarts",
                &[("slot", &i.to_string())],
                s.restarts as f64,
            );
        }
        e.family(
            "corral_slot_last_exit_info",
            g,
            "How the last worker of a slot ended (value 1).",
        );
        for (i, s) in self.slots.iter().enumerate() {
            if let Some((reason, _)) = s.last_exit {
                let reason = reason.to_string();
                e.sample(
                    "corral_slot_last_exit_info",
                    &[("slot", &i.to_string()), ("reason", &reason)],
                    1.0,
                );
            }
        }
        e.family(
            "corral_slot_crash_streak",
            g,
            "Consecutive crashes of a slot (drives its respawn backoff).",
        );
        for (i, s) in self.slots.iter().enumerate() {
            e.sample(
                "corral_slot_crash_streak",
                &[("slot", &i.to_string())],
                f64::from(s.crash_streak),
            );
        }
        e.family(
            "corral_slot_respawn_backoff_seconds",
            g,
            "Seconds until an empty slot is refilled (0: not waiting).",
        );
        for (i, s) in self.slots.iter().enumerate() {
            let wait = s
                .respawn_at
                .map_or(0.0, |t| t.saturating_duration_since(now).as_secs_f64());
            e.sample(
                "corral_slot_respawn_backoff_seconds",
                &[("slot", &i.to_string())],
                wait,
            );
        }
        e.family(
            "corral_worker_restarts_total",
            c,
            "Respawns after unexpected worker exits.",
        )
        .sample("corral_worker_restarts_total", &[], t.restarts as f64);
        e.family(
            "corral_watchdog_kills_total",
            c,
            "Workers the watchdog killed for missing heartbeats.",
        )
        .sample("corral_watchdog_kills_total", &[], t.watchdog_kills as f64);
        e.family(
            "corral_stall_lends_total",
            c,
            "Times a stalled worker's listen queue (stopped, stuck or gone) was lent to a healthy worker.",
        )
        .sample("corral_stall_lends_total", &[], t.stall_lends as f64);

        e.family(
            "corral_accepted_total",
            c,
            "Connections accepted from the listeners by every worker, ever (new clients only).",
        )
        .sample("corral_accepted_total", &[], t.accepted as f64);
        e.family(
            "corral_adopted_total",
            c,
            "Connections workers took over from another worker or the old master, ever.",
        )
        .sample("corral_adopted_total", &[], t.adopted as f64);
        e.family(
            "corral_received_bytes_total",
            c,
            "Bytes read from clients by every worker, ever.",
        )
        .sample("corral_received_bytes_total", &[], t.bytes_in as f64);
        e.family(
            "corral_sent_bytes_total",
            c,
            "Bytes written to clients by every worker, ever.",
        )
        .sample("corral_sent_bytes_total", &[], t.bytes_out as f64);
        e.family(
            "corral_proxy_header_failures_total",
            c,
            "accept_proxy connections closed for a bad, missing or late PROXY header.",
        )
        .sample(
            "corral_proxy_header_failures_total",
            &[],
            t.proxy_header_failed as f64,
        );
        e.family(
            "corral_log_dropped_lines_total",
            c,
            "Log lines workers lost: their log writer could not keep up, or the file refused them.",
        )
        .sample("corral_log_dropped_lines_total", &[], t.log_dropped as f64);
        e.family(
            "corral_push_total",
            c,
            "Push (service::push): messages published in workers, delivered to connections, \
             replayed to connections that moved, and dropped or refused, by what.",
        );
        for (what, n) in [
            ("published", t.push.published),
            ("delivered", t.push.delivered),
            ("replayed", t.push.replayed),
            ("dropped_slow_client", t.push.dropped_slow),
            ("disconnected_slow_client", t.push.disconnected_slow),
            ("dropped_peer_queue_full", t.push.dropped_peer_full),
            ("refused", t.push.refused),
            ("missed_in_move", t.push.missed_in_move),
        ] {
            e.sample("corral_push_total", &[("what", what)], n as f64);
        }
        e.family(
            "corral_faults_injected_total",
            c,
            "Faults injected on request (corral fault, corral chaos), by kind.",
        );
        for (kind, n) in &t.faults {
            e.sample("corral_faults_injected_total", &[("kind", kind)], *n as f64);
        }

        self.tls_metrics(&mut e, &t.tls);

        let mut active: BTreeMap<&str, u64> = BTreeMap::new();
        for w in &self.workers {
            if let Some(cs) = self.metrics.live.get(&w.pid.as_raw()) {
                for l in cs.listeners.values() {
                    *active.entry(&l.listen).or_default() += l.active;
                }
            }
        }
        let listeners: Vec<String> = self
            .config
            .listen
            .iter()
            .map(|l| l.address.to_string())
            .collect();
        let mut names: Vec<&str> = listeners.iter().map(String::as_str).collect();
        names.extend(t.listeners.keys().map(String::as_str));
        names.sort_unstable();
        names.dedup();
        let zero = ListenerTotals::default();
        e.family(
            "corral_listener_accepted_total",
            c,
            "Connections accepted on a listener.",
        );
        for n in &names {
            let l = t.listeners.get(*n).unwrap_or(&zero);
            e.sample(
                "corral_listener_accepted_total",
                &[("listen", n)],
                l.accepted as f64,
            );
        }
        e.family(
            "corral_listener_active",
            g,
            "Open connections of a listener.",
        );
        for n in &names {
            let a = active.get(n).copied().unwrap_or(0);
            e.sample("corral_listener_active", &[("listen", n)], a as f64);
        }
        e.family(
            "corral_listener_rejected_total",
            c,
            "Clients a limit acted on: limit = accepting paused at max_connections, per_ip = closed for max_connections_per_ip, rate = held back by the rate limit.",
        );
        for n in &names {
            let l = t.listeners.get(*n).unwrap_or(&zero);
            for (reason, v) in [
                ("limit", l.rejected_limit),
                ("per_ip", l.rejected_per_ip),
                ("rate", l.rejected_rate),
            ] {
                e.sample(
                    "corral_listener_rejected_total",
                    &[("listen", n), ("reason", reason)],
                    v as f64,
                );
            }
        }

        for (kind, o) in [("reload", &t.reloads), ("upgrade", &t.upgrades)] {
            let total = format!("corral_{kind}s_total");
            e.family(&total, c, &format!("Finished {kind}s by result."));
            e.sample(&total, &[("result", "succeeded")], o.succeeded as f64);
            e.sample(&total, &[("result", "failed")], o.failed as f64);
            // The families are announced even before the first one, without a
            // sample: a dashboard or rule finds the name in every scrape, and "no
            // data" still means "never happened".
            let last = format!("corral_{kind}_last_success");
            e.family(
                &last,
                g,
                &format!("1 if the last {kind} succeeded, 0 if it failed."),
            );
            if let Some(ok) = o.last_ok {
                e.sample(&last, &[], if ok { 1.0 } else { 0.0 });
            }
            let at = format!("corral_{kind}_last_timestamp_seconds");
            e.family(&at, g, &format!("When the last {kind} ended (Unix time)."));
            if o.last_ok.is_some() {
                e.sample(&at, &[], o.last_at);
            }
            let ready = format!("corral_{kind}_ready_seconds");
            e.family(
                &ready,
                g,
                &format!("How long the last successful {kind} took to be ready."),
            );
            if o.last_ok.is_some() {
                e.sample(&ready, &[], o.last_ready_secs);
            }
        }
        e.family("corral_handoff_connections_total", c, "Connections of draining workers by outcome: moved to a newer generation or master (idle ones, and busy sessions of services that move), kept (served to their end by the draining worker), closed.");
        for (outcome, v) in [
            ("moved", t.handoff.moved),
            ("kept", t.handoff.kept),
            ("closed", t.handoff.closed),
        ] {
            e.sample(
                "corral_handoff_connections_total",
                &[("outcome", outcome)],
                v as f64,
            );
        }

        self.upstream_metrics(&mut e, &t);
        e.finish()
    }

    fn upstream_metrics(&self, e: &mut Expo, t: &Totals) {
        // Live gauges, summed over this master's workers.
        let mut live: BTreeMap<(String, String), (u64, u64)> = BTreeMap::new();
        let serving = |s: WorkerState| !matches!(s, WorkerState::Stopping);
        for w in self.workers.iter().filter(|w| serving(w.state)) {
            if let Some(cs) = self.metrics.live.get(&w.pid.as_raw()) {
                for u in cs.upstreams.values() {
                    let v = live
                        .entry((u.listen.clone(), u.upstream.clone()))
                        .or_default();
                    v.0 += u.active;
                    v.1 += u64::from(u.backoff);
                }
            }
        }
        let mut keys: Vec<(String, String)> = live.keys().cloned().collect();
        for (l, ups) in &t.upstreams {
            keys.extend(ups.keys().map(|u| (l.clone(), u.clone())));
        }
        keys.sort();
        keys.dedup();
        let zero = UpstreamTotals::default();
        let get = |l: &str, u: &str| t.upstreams.get(l).and_then(|m| m.get(u)).unwrap_or(&zero);
        let counters: [UpstreamSeries; 4] = [
            (
                "corral_upstream_connects_total",
                "Successful connects to an upstream.",
                |u| u.connects,
            ),
            (
                "corral_upstream_failures_total",
                "Failed connects to an upstream.",
                |u| u.failures,
            ),
            (
                "corral_upstream_received_bytes_total",
                "Bytes from an upstream to clients.",
                |u| u.bytes_in,
            ),
            (
                "corral_upstream_sent_bytes_total",
                "Bytes from clients to an upstream.",
                |u| u.bytes_out,
            ),
        ];
        for (name, help, f) in counters {
            e.family(name, Kind::Counter, help);
            for (l, u) in &keys {
                e.sample(name, &[("listen", l), ("upstream", u)], f(get(l, u)) as f64);
            }
        }
        e.family(
            "corral_upstream_active",
            Kind::Gauge,
            "Established connections to an upstream.",
        );
        for (l, u) in &keys {
            let a = live.get(&(l.clone(), u.clone())).map_or(0, |v| v.0);
            e.sample(
                "corral_upstream_active",
                &[("listen", l), ("upstream", u)],
                a as f64,
            );
        }
        e.family(
            "corral_upstream_backoff_workers",
            Kind::Gauge,
            "Workers that skip an upstream while its connect backoff lasts.",
        );
        for (l, u) in &keys {
            let b = live.get(&(l.clone(), u.clone())).map_or(0, |v| v.1);
            e.sample(
                "corral_upstream_backoff_workers",
                &[("listen", l), ("upstream", u)],
                b as f64,
            );
        }
    }
}
