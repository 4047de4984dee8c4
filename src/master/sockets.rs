//! The master's listening sockets: binding, reuse across reloads, and the systemd
//! socket-activation protocol (`LISTEN_FDS`, `LISTEN_PID`, `LISTEN_FDNAMES`) in both
//! directions — taking sockets from systemd or from an old master at start, and
//! handing them to a new master on binary upgrade.
//!
//! One code path serves systemd socket activation and binary upgrades, so the upgrade
//! path is exercised by every socket-activated start, and vice versa.
//!
//! Steering (`steer = "client-ip"`) relies on a reuseport socket's index in the
//! kernel's group being its slot: the group's order is the order of `listen()`, and
//! closing a socket moves the group's last one into its place. So slot i's socket is
//! bound i-th, is kept open by the master for as long as the listener is configured
//! (workers come and go, the socket stays: the successor of slot i serves socket i),
//! passed sockets are taken back in the order they were passed (not swapped), and
//! only a shrinking `workers` closes sockets, always the top of the group, where a
//! moved socket is itself one that is leaving.

use std::os::fd::{AsFd, OwnedFd, RawFd};

use tracing::{info, warn};

use crate::config::{AcceptMode, Config, ListenAddr, ListenConfig};
use crate::os::{fd, net, privs};

/// First fd number of passed sockets, by the protocol.
pub const LISTEN_FDS_START: RawFd = 3;

/// A listening socket the master holds.
pub struct Listener {
    pub addr: ListenAddr,
    pub name: String,
    /// For `accept = "reuseport"`: the worker slot this socket belongs to. Each
    /// slot keeps its socket across generations, so a reload drops no queue.
    pub slot: Option<usize>,
    pub fd: OwnedFd,
    /// We created the Unix socket file (not inherited), so we remove it when done.
    pub owns_path: bool,
    /// Passed by the corral master we upgraded from: the file becomes ours once we
    /// serve (`adopt_paths`); until then a failed upgrade must leave it to the old
    /// master, which still serves on it.
    pub adopt_path: bool,
}

/// A socket passed in through `LISTEN_FDS`, with its name and bound address.
pub struct Inherited {
    pub fd: OwnedFd,
    pub name: Option<String>,
    pub addr: Option<ListenAddr>,
    /// Passed by the corral master we upgraded from (not by systemd): a Unix socket
    /// file is then ours to remove when we stop, as it was our predecessor's.
    pub from_corral: bool,
}

/// Takes the sockets passed to this process through `LISTEN_FDS` (if `LISTEN_PID` is
/// ours), marks them CLOEXEC and non-blocking, and removes the variables so that no
/// child mistakes them for its own.
pub fn take_inherited() -> Vec<Inherited> {
    let pid_ok = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<i32>().ok())
        .is_some_and(|p| p == std::process::id() as i32);
    let count = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse::<i32>().ok());
    let names: Vec<String> = std::env::var("LISTEN_FDNAMES")
        .map(|s| s.split(':').map(str::to_string).collect())
        .unwrap_or_default();
    for var in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        std::env::remove_var(var);
    }
    let (true, Some(n)) = (pid_ok, count) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for i in 0..n.max(0) {
        let raw = LISTEN_FDS_START + i;
        let fd = match fd::claim_inherited(raw) {
            Ok(fd) => fd,
            Err(e) => {
                warn!("ignoring passed socket: {e}");
                continue;
            }
        };
        if let Err(e) =
            fd::set_cloexec(fd.as_fd(), true).and_then(|_| fd::set_nonblocking(fd.as_fd(), true))
        {
            warn!("ignoring passed fd {raw}: {e}");
            continue;
        }
        if !net::is_listener(fd.as_fd()) {
            warn!("ignoring passed fd {raw}: not a listening stream socket");
            continue;
        }
        let name = names
            .get(i as usize)
            .filter(|n| !n.is_empty() && *n != "unknown")
            .cloned();
        let addr = net::local_addr(fd.as_fd()).ok();
        out.push(Inherited {
            fd,
            name,
            addr,
            from_corral: false,
        });
    }
    out
}

/// The name a listener is passed under: its configured name, else `listenN`
/// (`LISTEN_FDNAMES` names cannot hold the `:` of an address).
pub fn name_of(config: &Config, i: usize) -> String {
    config.listen[i]
        .name
        .clone()
        .unwrap_or_else(|| format!("listen{i}"))
}

/// The sockets one `[[listen]]` entry has: one shared (`None`), or one per worker
/// slot for `accept = "reuseport"`.
pub fn slots_of(l: &ListenConfig, workers: usize) -> Vec<Option<usize>> {
    match l.accept {
        AcceptMode::Shared => vec![None],
        AcceptMode::Reuseport => (0..workers).map(Some).collect(),
    }
}

/// Opens the listeners `config` asks for: reusing an already open one with the same
/// address (a reload must never re-bind a socket that is serving: that would drop its
/// queue, or fail with EADDRINUSE), else an inherited one matched by name or address,
/// else binding a new one. A `reuseport` listener gets one socket per worker slot.
/// Inherited sockets nobody wants are closed.
pub fn open_all(
    config: &Config,
    current: &[Listener],
    inherited: &mut Vec<Inherited>,
) -> Result<Vec<Listener>, net::NetError> {
    let workers = config.master.workers.count();
    let mut out = Vec::with_capacity(config.listen.len());
    for (i, l) in config.listen.iter().enumerate() {
        let name = name_of(config, i);
        let slots = slots_of(l, workers);
        if let Some(c) = current.iter().find(|c| {
            c.addr == l.address && c.slot.is_some() != (l.accept == AcceptMode::Reuseport)
        }) {
            return Err(net::NetError::Bind {
                addr: l.address.to_string(),
                step: "changing `accept` mode",
                source: std::io::Error::other(format!(
                    "{} is open in {} mode; changing it needs a restart (or a new address)",
                    c.addr,
                    if c.slot.is_some() {
                        "reuseport"
                    } else {
                        "shared"
                    }
                )),
            });
        }
        for slot in slots {
            if let Some(existing) = current
                .iter()
                .find(|c| c.addr == l.address && c.slot == slot)
            {
                let fd = existing
                    .fd
                    .try_clone()
                    .map_err(|source| net::NetError::Bind {
                        addr: l.address.to_string(),
                        step: "dup()",
                        source,
                    })?;
                out.push(Listener {
                    addr: l.address.clone(),
                    name: name.clone(),
                    slot,
                    fd,
                    owns_path: existing.owns_path,
                    adopt_path: existing.adopt_path,
                });
                continue;
            }
            let by_name = inherited
                .iter()
                .position(|s| l.name.is_some() && s.name == l.name);
            let found = by_name.or_else(|| {
                inherited
                    .iter()
                    .position(|s| s.addr.as_ref() == Some(&l.address))
            });
            if let Some(k) = found {
                // In order: a reuseport group's sockets are passed slot by slot.
                let s = inherited.remove(k);
                info!(address = %l.address, name = s.name.as_deref().unwrap_or("-"), "using passed-in socket");
                out.push(Listener {
                    addr: l.address.clone(),
                    name: name.clone(),
                    slot,
                    fd: s.fd,
                    owns_path: false,
                    adopt_path: s.from_corral && matches!(l.address, ListenAddr::Unix(_)),
                });
                continue;
            }
            let fd = net::bind(&l.address, l.backlog, slot.is_some())?;
            out.push(Listener {
                addr: l.address.clone(),
                name: name.clone(),
                slot,
                fd,
                owns_path: matches!(l.address, ListenAddr::Unix(_)),
                adopt_path: false,
            });
        }
        apply_options(l, out.iter().filter(|o| o.addr == l.address))?;
    }
    for s in inherited.drain(..) {
        let what = s
            .addr
            .map(|a| a.to_string())
            .unwrap_or_else(|| "an unnamed socket".into());
        warn!("closing passed-in socket {what}: no [[listen]] entry wants it");
    }
    Ok(out)
}

/// Sets listener `l`'s socket options on its sockets (new, kept or passed in, so a
/// reload that changes them takes effect for new connections), and its Unix socket
/// file's mode and owner.
fn apply_options<'a>(
    l: &ListenConfig,
    sockets: impl Iterator<Item = &'a Listener>,
) -> Result<(), net::NetError> {
    let fail = |step: &'static str, source: std::io::Error| net::NetError::Bind {
        addr: l.address.to_string(),
        step,
        source,
    };
    match &l.address {
        ListenAddr::Tcp(_) => {
            let opts = crate::config::privs::tcp_options(l);
            for s in sockets {
                net::set_tcp_options(s.fd.as_fd(), &opts)
                    .map_err(|e| fail("setting socket options", e))?;
            }
        }
        ListenAddr::Unix(path) => {
            if let Some((uid, gid)) = l.resolved_owner {
                privs::chown(path, Some(uid), gid).map_err(|e| fail("chown()", e.io()))?;
            }
            if let Some(mode) = &l.mode {
                let mode = crate::config::privs::parse_mode(mode)
                    .map_err(|e| fail("mode", std::io::Error::other(e)))?;
                privs::chmod(path, mode).map_err(|e| fail("chmod()", e.io()))?;
            }
        }
    }
    Ok(())
}

/// Attaches the steering program of every `steer`ed listener (and detaches it from
/// other reuseport listeners) to its reuseport group,
/// for the group's size in `config` (the whole group shares one program, so this is
/// done once the generation that has that size takes over).
pub fn steer(config: &Config, listeners: &[Listener]) -> Result<(), net::NetError> {
    let n = config.master.workers.count() as u32;
    for l in config
        .listen
        .iter()
        .filter(|l| l.accept == AcceptMode::Reuseport)
    {
        let Some(first) = listeners
            .iter()
            .find(|s| s.addr == l.address && s.slot == Some(0))
        else {
            continue;
        };
        let v6 = matches!(&l.address, ListenAddr::Tcp(a) if a.is_ipv6());
        let fd = first.fd.as_fd();
        match l.steer {
            Some(_) => crate::os::bpf::steer_by_client_ip(fd, n, v6),
            // A reload that dropped `steer` gives the group back to the kernel's hash.
            None => crate::os::bpf::unsteer(fd),
        }
        .map_err(|source| net::NetError::Bind {
            addr: l.address.to_string(),
            step: "setsockopt(SO_ATTACH_REUSEPORT_CBPF)",
            source,
        })?;
    }
    Ok(())
}

/// The sockets worker `slot` serves: every shared listener and its own reuseport
/// ones, one per `[[listen]]` entry, in config order.
pub fn for_slot(listeners: &[Listener], slot: usize) -> impl Iterator<Item = &Listener> {
    listeners
        .iter()
        .filter(move |l| l.slot.is_none() || l.slot == Some(slot))
}

/// Logs the listeners a reload added and removed, once the reload takes effect (a
/// failed reload changes nothing, so it logs nothing here). One line per address,
/// however many reuseport sockets it has.
pub fn log_changes(old: &[Listener], new: &[Listener]) {
    let mut seen: Vec<&ListenAddr> = Vec::new();
    for l in new {
        if !seen.contains(&&l.addr) && !old.iter().any(|o| o.addr == l.addr) {
            info!(address = %l.addr, name = %l.name, "listener added by reload");
        }
        seen.push(&l.addr);
    }
    for l in old {
        if !seen.contains(&&l.addr) && !new.iter().any(|n| n.addr == l.addr) {
            info!(address = %l.addr, name = %l.name, "listener removed by reload: no longer accepting there");
        }
        seen.push(&l.addr);
    }
}

/// Once we serve: the Unix socket files our predecessor passed us are ours to remove
/// when we stop, as they were its.
pub fn adopt_paths(listeners: &mut [Listener]) {
    for l in listeners.iter_mut().filter(|l| l.adopt_path) {
        l.owns_path = true;
        l.adopt_path = false;
    }
}

/// Removes the Unix socket files we created (at exit, or when a reload dropped them).
pub fn remove_paths(listeners: &[Listener], keep: &[Listener]) {
    for l in listeners {
        if let (true, ListenAddr::Unix(p)) = (l.owns_path, &l.addr) {
            if !keep.iter().any(|k| k.addr == l.addr) {
                let _ = std::fs::remove_file(p);
            }
        }
    }
}
