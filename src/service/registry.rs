//! The services a program knows by name: the built-ins, and those a program adds with
//! [`crate::Runtime::service`]. Config loading asks it which names exist and how each
//! one's keys parse (in the master); each worker asks it, after fork, for the service
//! of each of its listeners.
//!
//! Process-wide on purpose: the master fills it before it forks, and every worker
//! (a fork of the master) finds the same entries without being handed them. The
//! factories are closures, so a program can give a service state it built in
//! `main` (see [`crate::Runtime::service`] for what fork means for that state).

use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use crate::config::ListenConfig;

use super::options::OptionsKind;
use super::{echo, http, metrics, proxy, Service};

/// Makes the service for one listener (called in each worker, after fork).
pub(crate) type Factory = Arc<dyn Fn(&ListenConfig) -> Box<dyn Service> + Send + Sync>;

/// A registered service: its name, its factory and how its keys are parsed.
struct Entry {
    name: String,
    factory: Factory,
    options: OptionsKind,
}

fn registry() -> &'static Mutex<Vec<Entry>> {
    static REGISTRY: OnceLock<Mutex<Vec<Entry>>> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        let entry = |name: &str, factory: Factory, options| Entry {
            name: name.to_string(),
            factory,
            options,
        };
        Mutex::new(vec![
            entry(
                "echo",
                Arc::new(|_: &ListenConfig| Box::new(echo::Echo) as Box<dyn Service>),
                OptionsKind::of::<echo::EchoOptions>(),
            ),
            entry(
                "http",
                Arc::new(|l: &ListenConfig| Box::new(http::Http::new(l)) as Box<dyn Service>),
                OptionsKind::of::<http::options::HttpOptions>(),
            ),
            entry(
                "metrics",
                Arc::new(|_: &ListenConfig| Box::new(metrics::Metrics) as Box<dyn Service>),
                OptionsKind::of::<metrics::MetricsOptions>(),
            ),
            entry(
                "proxy",
                Arc::new(|l: &ListenConfig| Box::new(proxy::Proxy::new(l)) as Box<dyn Service>),
                OptionsKind::of::<proxy::options::ProxyOptions>(),
            ),
        ])
    })
}

fn entries() -> MutexGuard<'static, Vec<Entry>> {
    registry().lock().unwrap_or_else(|p| p.into_inner())
}

/// Makes `service = "name"` available in `[[listen]]` entries; a later registration
/// of the same name replaces the earlier one (a program may replace a built-in).
pub(crate) fn register(name: &str, factory: Factory, options: OptionsKind) {
    let mut r = entries();
    r.retain(|e| e.name != name);
    r.push(Entry {
        name: name.to_string(),
        factory,
        options,
    });
}

/// The names of every service, for config checks and error messages.
pub(crate) fn known() -> Vec<String> {
    entries().iter().map(|e| e.name.clone()).collect()
}

/// Every service's name with how its keys are parsed.
pub(crate) fn option_kinds() -> Vec<(String, OptionsKind)> {
    entries()
        .iter()
        .map(|e| (e.name.clone(), e.options))
        .collect()
}

/// The service configured for a listener, or None for a name nobody registered
/// (config checks refuse those at every load, so a worker never meets one).
pub(crate) fn make(listen: &ListenConfig) -> Option<Box<dyn Service>> {
    // The factory runs outside the lock: it is the program's code, and may be slow.
    let factory = entries()
        .iter()
        .find(|e| e.name == listen.service)
        .map(|e| e.factory.clone())?;
    Some(factory(listen))
}
