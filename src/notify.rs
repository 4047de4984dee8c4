//! systemd notifications (`sd_notify`): readiness, reloads, stopping, status, the main
//! pid across a binary upgrade, and the watchdog.
//!
//! Every call is a no-op outside systemd (no `NOTIFY_SOCKET`). Errors are logged, never
//! fatal: a service must not stop serving because its supervisor's socket hiccupped.
//! `NOTIFY_SOCKET` stays in the environment so a new master started by an upgrade can
//! notify too (the unit needs `NotifyAccess=all`).

use std::time::Duration;

use sd_notify::NotifyState;

fn send(states: &[NotifyState<'_>]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::warn!("sd_notify failed: {e}");
    }
}

/// Serving.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// A reload started. `MONOTONIC_USEC` lets systemd ≥ 253 match it to `systemctl
/// reload`; older ones ignore it.
pub fn reloading() {
    let mut states = vec![NotifyState::Reloading];
    if let Ok(m) = NotifyState::monotonic_usec_now() {
        states.push(m);
    }
    states.push(NotifyState::Status("reloading"));
    send(&states);
}

/// Shutting down.
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// A status line for `systemctl status`.
pub fn status(text: &str) {
    send(&[NotifyState::Status(text)]);
}

/// The service's main process is now `pid` (binary upgrade).
pub fn main_pid(pid: u32) {
    send(&[NotifyState::MainPid(pid)]);
}

/// Keep-alive for `WatchdogSec=`.
pub fn watchdog() {
    send(&[NotifyState::Watchdog]);
}

/// How often to send the watchdog keep-alive: half the interval systemd expects, if
/// it expects one from this process.
pub fn watchdog_interval() -> Option<Duration> {
    let mut usec = 0;
    if sd_notify::watchdog_enabled(false, &mut usec) && usec > 0 {
        Some(Duration::from_micros(usec / 2))
    } else {
        None
    }
}
