//! The name a program gives itself in the lines it prints for its operator
//! (`mykv: configuration file … is ok`): `corral` for corral's own binary, the
//! program's name for a binary built on the library (`Runtime::program`, or the
//! package's binary name by default), so that its operator is never told about a
//! program they did not run.

use std::sync::OnceLock;

static NAME: OnceLock<&'static str> = OnceLock::new();

/// Names the program, once, before it prints anything (a second call is ignored).
pub(crate) fn set(name: &'static str) {
    let _ = NAME.set(name);
}

/// The program's name ("corral" until it is named).
pub(crate) fn name() -> &'static str {
    NAME.get().copied().unwrap_or("corral")
}

/// `println!` under the program's name: `say!("master {pid} has exited")`.
macro_rules! say {
    ($($arg:tt)*) => {
        println!("{}: {}", $crate::program::name(), format_args!($($arg)*))
    };
}

/// `eprintln!` under the program's name: `complain!("cannot daemonize: {e}")`.
macro_rules! complain {
    ($($arg:tt)*) => {
        eprintln!("{}: {}", $crate::program::name(), format_args!($($arg)*))
    };
}

pub(crate) use {complain, say};

#[cfg(test)]
mod tests {
    #[test]
    fn the_name_is_corral_until_set_then_the_programs_own() {
        // One process-wide name: this is the only test that sets it.
        assert_eq!(super::name(), "corral");
        super::set("mykv");
        super::set("other");
        assert_eq!(super::name(), "mykv", "named once");
    }
}
