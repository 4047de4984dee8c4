//! The `corral` binary: parses the command line and hands over to the master, the
//! config checker, or the control client.

use clap::Parser;

use corral::cli::{self, Cli, Sub};
use corral::config::Config;
use corral::master::Master;

fn main() {
    let cli = Cli::parse();
    std::process::exit(run(cli));
}

fn run(cli: Cli) -> i32 {
    if let Some(Sub::Status { json }) = cli.command {
        return cli::status(&cli.config, json);
    }
    if let Some(what) = cli.signal {
        return cli::send(&cli.config, what);
    }
    let config = match Config::load(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("corral: {e}");
            if cli.test {
                eprintln!(
                    "corral: configuration file {} test failed",
                    cli.config.display()
                );
            }
            return 1;
        }
    };
    if cli.test {
        println!("corral: configuration file {} is ok", cli.config.display());
        return 0;
    }
    if let Err(e) = corral::log::init(&config.log.level, config.log.file.as_deref()) {
        eprintln!("corral: {e}");
        return 1;
    }
    match Master::start(config) {
        Ok(mut master) => master.run(),
        Err(e) => {
            tracing::error!("cannot start: {e}");
            1
        }
    }
}
