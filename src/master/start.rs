//! Starting the master: bind the listeners, write the pid file, open the control socket
//! and fork the first generation.

use super::{control_clients, faults, generations, host, metrics, stalls, xfer};
use super::{
    info, warn, Config, Effects, FdReserve, Listener, LogOnce, Master, MasterError, Pending,
    PidFile, Reporter, SignalReader, Slot, StartOptions, State, WorkerTable, MASTER_SIGNALS,
    START_TIMEOUT,
};
use crate::control;
use crate::master::effects;
use crate::master::pressure;
use crate::master::privs;
use crate::master::sockets;
use crate::master::upgrade;

/// What the master holds from the system before it forks anything (nothing of it in
/// the unit tests of its decisions).
#[derive(Default)]
pub(super) struct Opened {
    pub(super) signals: Option<SignalReader>,
    pub(super) listeners: Vec<Listener>,
    pub(super) pid_file: Option<PidFile>,
    pub(super) control: Option<control::Server>,
}

impl Master {
    /// Binds the listeners, writes the pid file, opens the control socket and forks
    /// the first generation.
    pub fn start(config: Config, mut opts: StartOptions) -> Result<Master, MasterError> {
        let reporter = opts.reporter.take();
        match Master::try_start(config, opts, reporter) {
            Ok(m) => Ok(m),
            Err((e, reporter)) => {
                if let Some(r) = reporter {
                    r.failed(&e.to_string());
                }
                Err(e)
            }
        }
    }

    /// `start`, handing the reporter back on failure so the caller can tell whoever
    /// waits for it why.
    pub(super) fn try_start(
        mut config: Config,
        opts: StartOptions,
        reporter: Option<Reporter>,
    ) -> Result<Master, (MasterError, Option<Reporter>)> {
        match Master::open(&mut config, &opts) {
            Ok(opened) => {
                let fx = Box::new(effects::System);
                let mut master = Master::new(config, opts, reporter, opened, fx);
                let n = master.slots.len();
                for slot in 0..n {
                    if let Err(e) = master.spawn(slot, master.generation) {
                        let reporter = master.host.reporter.take();
                        master.shutdown_now();
                        return Err((e.into(), reporter));
                    }
                }
                Ok(master)
            }
            Err(e) => Err((e, reporter)),
        }
    }

    /// Everything the master needs from the system before it forks anything.
    pub(super) fn open(config: &mut Config, opts: &StartOptions) -> Result<Opened, MasterError> {
        // Absolute, so that a daemon's chdir or a new master's exec keep finding it.
        config.source =
            std::path::absolute(&config.source).map_err(|source| MasterError::ConfigPath {
                path: config.source.clone(),
                source,
            })?;
        let signals = SignalReader::new(MASTER_SIGNALS)?;
        match crate::os::privs::raise_nofile() {
            Ok((soft, hard)) if soft < hard => {
                info!("RLIMIT_NOFILE: soft limit raised from {soft} to the hard limit {hard}")
            }
            Ok((_, hard)) => info!("RLIMIT_NOFILE: soft limit already at the hard limit {hard}"),
            Err(e) => warn!("{e}"),
        }
        privs::give_log_file(config);
        // Made before any worker forks, so that all of them seal and open tickets with
        // the same keys (a new master of an upgrade already holds its predecessor's).
        crate::tls::tickets::ensure(config.master.tls_ticket_rotation.0)
            .map_err(|_| MasterError::TicketKeys)?;
        let mut inherited = sockets::take_inherited();
        for s in &mut inherited {
            s.from_corral = opts.upgraded;
        }
        let listeners = sockets::open_all(config, &[], &mut inherited)?;
        sockets::steer(config, &listeners)?;
        let pid_file = PidFile::create(&config.master.pid_file, &config.source)?;
        let control = control::Server::bind(&config.master.control_socket_path(), opts.upgraded)?;
        for l in listeners.iter().filter(|l| l.slot.unwrap_or(0) == 0) {
            let sockets = listeners.iter().filter(|o| o.addr == l.addr).count();
            info!(address = %l.addr, sockets, "listening");
        }
        Ok(Opened {
            signals: Some(signals),
            listeners,
            pid_file: Some(pid_file),
            control: Some(control),
        })
    }

    pub(super) fn new(
        config: Config,
        opts: StartOptions,
        reporter: Option<Reporter>,
        opened: Opened,
        fx: Box<dyn Effects>,
    ) -> Master {
        let n = config.master.workers.count();
        let links = xfer::Links::inherited();
        let rotation = config.master.tls_ticket_rotation.0;
        let predecessor = upgrade::Predecessor::from_env();
        Master {
            config,
            generation: upgrade::first_generation(),
            listeners: opened.listeners,
            workers: WorkerTable::default(),
            slots: vec![Slot::default(); n],
            signals: opened.signals,
            ctl: control_clients::Desk::new(opened.control),
            up: upgrade::Sides {
                binary: opts.binary,
                handed_over: false,
                successor: None,
                predecessor,
                xfer: links,
            },
            host: host::Host {
                pid_file: opened.pid_file,
                reporter,
                sd_watchdog: crate::notify::watchdog_interval().map(|d| (d, fx.now())),
                reserve: FdReserve::new(pressure::RESERVE_FDS),
                log_reserve: LogOnce::new(pressure::LOG_EVERY),
                log_roll_due: super::supervision::next_log_roll(fx.now()),
                exit_code: 0,
            },
            state: State::Starting {
                deadline: fx.now() + START_TIMEOUT,
            },
            waiting: Pending::default(),
            handoff_rr: 0,
            old_generations_check: None,
            publish_requests: Vec::new(),
            publisher: crate::worker::publisher_id(),
            publish_seq: 0,
            faults: faults::Faults::default(),
            metrics: metrics::Metrics::from_env(),
            gens: generations::Generations::default(),
            stalls: stalls::Stalls::default(),
            ticket_rotation_due: fx.now() + rotation,
            fx,
        }
    }
}
