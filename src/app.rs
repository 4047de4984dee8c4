//! The program behind the `corral` binary, as a library function so that a binary
//! with its own services (see `examples/`) is the same program: parse the command
//! line, then run the master, check the config, or talk to a running master.

use crate::program::{complain, say};
use clap::{CommandFactory, FromArgMatches};

use crate::cli::{self, Cli, Sub};
use crate::config::Config;
use crate::master::upgrade::{self, Report, Reporter};
use crate::master::{Master, StartOptions};

/// Runs corral with the process's command line, under the program's own name and
/// version (`mykv --version` prints `mykv 1.2.0`), and returns the exit code. The
/// services are registered already (see `crate::Runtime::run`).
pub fn main_as(name: &'static str, version: &'static str) -> i32 {
    crate::program::set(name);
    let mut cmd = command(name, version);
    let matches = cmd.get_matches_mut();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.format(&mut cmd).exit(),
    };
    run(cli, cmd)
}

/// The clap definition under the program's own name.
fn command(name: &'static str, version: &'static str) -> clap::Command {
    Cli::command().name(name).bin_name(name).version(version)
}

fn run(cli: Cli, cmd: clap::Command) -> i32 {
    if cli.command.is_some() || cli.signal.is_some() {
        // A client command piped into `head` should end quietly, not panic on EPIPE.
        crate::os::signals::default_sigpipe();
    }
    match cli.command {
        Some(Sub::Completions { shell }) => return cli::packaging::completions(cmd, shell),
        Some(Sub::Man { output }) => return cli::packaging::man(cmd, output.as_deref()),
        Some(Sub::Status {
            prometheus: true, ..
        }) => return cli::status_prometheus(&cli.config),
        Some(Sub::Status { json, .. }) => return cli::status(&cli.config, json),
        Some(Sub::Fault {
            kind,
            arg,
            slot,
            generation,
            random: _,
            timeout,
            json,
        }) => {
            let victim = cli::fault::victim(slot, generation);
            return cli::fault::run(&cli.config, &kind, arg.as_deref(), victim, timeout, json);
        }
        Some(Sub::Top { interval, once }) => return cli::top::run(&cli.config, interval.0, once),
        Some(Sub::Publish { topic, message }) => {
            return cli::publish::run(&cli.config, topic, message)
        }
        Some(Sub::Chaos {
            duration,
            every,
            faults,
            max_recovery,
            timeout,
            json,
        }) => {
            let plan = cli::chaos::Plan {
                duration,
                every,
                faults,
                max_recovery,
                timeout,
            };
            return cli::chaos::run(&cli.config, plan, json);
        }
        None => {}
    }
    if let Some(what) = cli.signal {
        return cli::send(&cli.config, what, cli.no_wait);
    }
    // Started by an old master's binary upgrade: report to it, never daemonize (the
    // old master is the one holding the terminal and the service manager's attention).
    let upgrade_reporter = Reporter::from_env();
    if upgrade_reporter.is_some() && crate::fault::bad_upgrade() {
        complain!("injected fault (corral fault bad-upgrade): this new master exits at once");
        return 1;
    }
    if cli.print_config {
        return match crate::config::effective::render(&cli.config, &crate::service::Registry) {
            Ok(text) => {
                print!("{text}");
                0
            }
            Err(e) => {
                complain!("{e}");
                1
            }
        };
    }
    let config = match Config::load(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            complain!("{e}");
            if cli.test {
                complain!("configuration file {} test failed", cli.config.display());
            }
            if let Some(r) = upgrade_reporter {
                r.failed(&e.to_string());
            }
            return 1;
        }
    };
    for w in config.warnings() {
        complain!("warning: {w}");
    }
    if cli.test {
        say!("configuration file {} is ok", cli.config.display());
        return 0;
    }
    let upgraded = upgrade_reporter.is_some();
    let mut reporter = upgrade_reporter;
    // Before daemonize() moves us to "/": a relative argv[0] (`./corral`) is relative
    // to where we were started. The config's paths were made absolute by its loader.
    let binary = upgrade::binary_path();
    if (cli.daemon || config.master.daemon) && !upgraded {
        match daemonize() {
            Ok(Some(r)) => reporter = Some(r),
            Ok(None) => unreachable!("the launcher exits inside daemonize()"),
            Err(code) => return code,
        }
    }
    if let Err(e) = crate::log::init(
        &config.log.level,
        config.log.file.as_deref(),
        config.log.rotation,
    ) {
        complain!("{e}");
        if let Some(r) = reporter {
            r.failed(&e.to_string());
        }
        return 1;
    }
    // After daemonize(): the pid named is the master's own.
    let _master = crate::log::enter_master();
    let opts = StartOptions {
        binary,
        reporter,
        upgraded,
    };
    match Master::start(config, opts) {
        Ok(mut master) => {
            let code = master.run();
            match master.take_successor() {
                // PID 1 after an upgrade: let go of everything, stay as its init.
                Some(s) => {
                    drop(master);
                    upgrade::shim::run(s)
                }
                None => code,
            }
        }
        Err(e) => {
            tracing::error!("cannot start: {e}");
            1
        }
    }
}

/// Detaches into the background. The launcher (the process the operator started)
/// waits until the daemon reports that it serves, or why it failed, and exits 0 or 1
/// accordingly; the daemon gets the reporter to write to.
fn daemonize() -> Result<Option<Reporter>, i32> {
    let (r, w) = match crate::os::fd::pipe() {
        Ok(p) => p,
        Err(e) => {
            complain!("{e}");
            return Err(1);
        }
    };
    // Config::load made every path absolute and the binary path was taken before this,
    // so the daemon may run in "/" (it must not keep a mount point busy).
    let outcome = daemonize::Daemonize::new()
        .working_directory("/")
        .umask(0o022)
        .stdout(daemonize::Stdio::keep())
        .stderr(daemonize::Stdio::keep())
        .execute();
    match outcome {
        daemonize::Outcome::Parent(Ok(_)) => {
            drop(w);
            let code = match upgrade::wait_report(&r) {
                Report::Ready(pid) => {
                    say!("serving in the background, master pid {pid}");
                    0
                }
                Report::Failed(why) => {
                    complain!("failed to start: {why}");
                    1
                }
                Report::Closed => {
                    complain!("the daemon exited before it was serving (see its log)");
                    1
                }
            };
            std::process::exit(code)
        }
        daemonize::Outcome::Parent(Err(e)) => {
            complain!("cannot daemonize: {e}");
            Err(1)
        }
        daemonize::Outcome::Child(Ok(_)) => {
            drop(r);
            Ok(Some(Reporter::new(w)))
        }
        daemonize::Outcome::Child(Err(e)) => {
            complain!("cannot daemonize: {e}");
            Reporter::new(w).failed(&format!("cannot daemonize: {e}"));
            Err(1)
        }
    }
}
