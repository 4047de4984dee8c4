//! The builder a program of its own starts from: its services by name, what its
//! workers may do beyond corral's defaults, and its name and version; `run` then
//! runs corral's command line (master, `-t`, `-s reload`, status, ...) with them.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use crate::config::ListenConfig;
use crate::service::registry::{self, Factory};
use crate::service::{Forwarder, NoOptions, OptionsKind, Service, ServiceOptions, Upstreams};

/// A program built on corral: its services, then [`Runtime::run`] (the README's
/// example, kept identical):
///
/// ```no_run
/// use corral::service::{Handler, Io, Service};
///
/// /// Answers every line in upper case, numbered per connection.
/// struct Upper;
///
/// struct UpperConn {
///     lines: u64,
/// }
///
/// impl Service for Upper {
///     fn connect(&mut self, _peer: Option<std::net::IpAddr>) -> Box<dyn Handler> {
///         Box::new(UpperConn { lines: 0 })
///     }
/// }
///
/// impl Handler for UpperConn {
///     fn on_data(&mut self, io: &mut Io<'_>, data: &[u8]) -> usize {
///         let mut used = 0;
///         while let Some(n) = data[used..].iter().position(|&b| b == b'\n') {
///             self.lines += 1;
///             let line = String::from_utf8_lossy(&data[used..used + n]).to_uppercase();
///             io.write(format!("{} {line}\n", self.lines).as_bytes());
///             used += n + 1;
///         }
///         used // a partial line stays buffered: the next call sees it first
///     }
/// }
///
/// fn main() -> std::process::ExitCode {
///     corral::runtime!().service("upper", |_listen| Upper).run()
/// }
/// ```
///
/// # Where the factory runs, and what it may capture
///
/// A factory is a closure: it may capture what `main` built (a greeting read from
/// the environment, a shared `Arc`). `main` runs in the master, which forks the
/// workers: each worker gets its own copy of everything captured, as it was when the
/// worker forked, and calls the factory once per listener of that service, before it
/// serves. So:
/// - a change a worker makes to captured state (through a `Mutex`, an atomic) stays
///   in that worker: other workers and the master never see it, and a reload's new
///   workers start again from the master's copy. State shared by every worker
///   belongs outside the process (a file, a database).
/// - per-worker state the connections share (a cache, a counter) is best created by
///   the factory, in the [`Service`] it returns (an `Rc<RefCell<…>>` is enough: a
///   worker is single-threaded).
/// - nothing captured may be a thread or depend on one (the master never starts a
///   thread: threads do not survive fork), and a socket or file opened in `main` is
///   shared by every worker.
#[must_use = "a Runtime does nothing until `run`"]
pub struct Runtime {
    name: &'static str,
    version: &'static str,
    services: Vec<(String, Factory, OptionsKind)>,
    syscalls: Vec<i64>,
    paths: Vec<(PathBuf, bool)>,
}

/// A [`Runtime`] named after the calling program, with its package's version, so
/// that `--version`, `--help`, the completions and the man page carry them (a bare
/// [`Runtime::new`] is corral itself).
#[macro_export]
macro_rules! runtime {
    () => {
        $crate::Runtime::new().program(
            // Set for binaries and examples; a library calling it gets its package name.
            match option_env!("CARGO_BIN_NAME") {
                Some(name) => name,
                None => env!("CARGO_PKG_NAME"),
            },
            env!("CARGO_PKG_VERSION"),
        )
    };
}

impl Default for Runtime {
    fn default() -> Runtime {
        Runtime::new()
    }
}

impl Runtime {
    /// corral with its built-in services (echo, http, metrics, proxy), named
    /// `corral`; a program of its own starts from [`runtime!`](crate::runtime!)
    /// instead, to carry its own name.
    pub fn new() -> Runtime {
        Runtime {
            name: "corral",
            version: env!("CARGO_PKG_VERSION"),
            services: Vec::new(),
            syscalls: Vec::new(),
            paths: Vec::new(),
        }
    }

    /// The name and version the command line shows (`mykv --version` prints
    /// `mykv 1.2.0`).
    pub fn program(mut self, name: &'static str, version: &'static str) -> Runtime {
        self.name = name;
        self.version = version;
        self
    }

    /// Makes `service = "name"` available in `[[listen]]` tables, for a service that
    /// takes no key of its own (any other key in its listeners is refused). The
    /// factory gets the listener's config (address, name, limits) and makes the
    /// service of that listener in each worker; see the type's documentation for
    /// where it runs and what it may capture. A name registered twice, or a
    /// built-in's name, is replaced.
    pub fn service<S, F>(self, name: &str, factory: F) -> Runtime
    where
        S: Service + 'static,
        F: Fn(&ListenConfig) -> S + Send + Sync + 'static,
    {
        self.service_with(name, move |_: &NoOptions, listen: &ListenConfig| {
            factory(listen)
        })
    }

    /// Like [`Runtime::service`], for a service that takes the keys of `O` in its
    /// `[[listen]]` tables: corral parses and checks them in the master at every load
    /// (start, `-t`, `-T`, reload), refuses a key `O` does not have, and hands the
    /// parsed value to the factory. Name `O` in the factory's first argument:
    ///
    /// ```no_run
    /// use corral::config::OptionError;
    /// use corral::serde::{Deserialize, Serialize};
    /// use corral::service::{Handler, Io, Service, ServiceOptions};
    ///
    /// #[derive(Debug, Default, Deserialize, Serialize)]
    /// #[serde(crate = "corral::serde", deny_unknown_fields)]
    /// struct GreeterOptions {
    ///     #[serde(default)]
    ///     greeting: Option<String>,
    /// }
    ///
    /// impl ServiceOptions for GreeterOptions {
    ///     fn check(&mut self) -> Result<(), OptionError> {
    ///         match &self.greeting {
    ///             Some(g) if g.contains('\n') => {
    ///                 Err(OptionError::new("greeting", "one line only"))
    ///             }
    ///             _ => Ok(()),
    ///         }
    ///     }
    /// }
    ///
    /// struct Greeter(String);
    /// # impl Service for Greeter {
    /// #     fn connect(&mut self, _: Option<std::net::IpAddr>) -> Box<dyn Handler> { unimplemented!() }
    /// # }
    ///
    /// fn main() -> std::process::ExitCode {
    ///     corral::runtime!()
    ///         .service_with("greeter", |o: &GreeterOptions, _listen| {
    ///             Greeter(o.greeting.clone().unwrap_or_else(|| "hello".into()))
    ///         })
    ///         .run()
    /// }
    /// ```
    pub fn service_with<O, S, F>(mut self, name: &str, factory: F) -> Runtime
    where
        O: ServiceOptions,
        S: Service + 'static,
        F: Fn(&O, &ListenConfig) -> S + Send + Sync + 'static,
    {
        let make: Factory = Arc::new(move |listen: &ListenConfig| {
            Box::new(with_options(listen, &factory)) as Box<dyn Service>
        });
        self.services
            .push((name.to_string(), make, OptionsKind::of::<O>()));
        self
    }

    /// Makes `service = "name"` a forwarding service: the loop connects each client
    /// to the upstream `U` picks and moves the bytes both ways itself (as the
    /// built-in `proxy` does), and no handler of yours sees them. The factory runs
    /// where [`Runtime::service`]'s does.
    pub fn forward<U, F>(mut self, name: &str, factory: F) -> Runtime
    where
        U: Upstreams + 'static,
        F: Fn(&ListenConfig) -> U + Send + Sync + 'static,
    {
        let make: Factory = Arc::new(move |listen: &ListenConfig| {
            Box::new(Forwarder(factory(listen))) as Box<dyn Service>
        });
        self.services
            .push((name.to_string(), make, OptionsKind::of::<NoOptions>()));
        self
    }

    /// Adds system calls (`libc::SYS_*` numbers) to every worker's seccomp allowlist,
    /// for a service that needs more than the built-in ones (a file lock, a socket of
    /// its own). A call on the attacker list (`execve`, `socket`, `kill` of others,
    /// ...) named here is allowed too: the program has said it needs it. Run with
    /// `[worker] seccomp = "log"` to find what to list (the kernel logs each call
    /// outside the allowlist), then list it here and go back to `enforce`.
    ///
    /// ```no_run
    /// // A service that takes advisory file locks:
    /// let rt = corral::runtime!().allow_syscalls(&[libc::SYS_flock]);
    /// # let _ = rt;
    /// ```
    pub fn allow_syscalls(mut self, calls: &[i64]) -> Runtime {
        self.syscalls.extend_from_slice(calls);
        self
    }

    /// Lets workers read (and, with `write`, change) the files beneath `paths`: under
    /// `[worker] seccomp = "enforce"` a worker is otherwise off the filesystem
    /// (Landlock), since everything it needs comes from the master.
    ///
    /// ```no_run
    /// // A service that serves files from /srv/www:
    /// let rt = corral::runtime!().allow_paths(&["/srv/www"], false);
    /// # let _ = rt;
    /// ```
    pub fn allow_paths<P: AsRef<Path>>(mut self, paths: &[P], write: bool) -> Runtime {
        self.paths
            .extend(paths.iter().map(|p| (p.as_ref().to_path_buf(), write)));
        self
    }

    /// Runs corral's command line with the process's arguments (the master, `-t`,
    /// `-s reload`, `status`, ...) and returns its exit status.
    pub fn run(self) -> ExitCode {
        self.install();
        let code = crate::app::main_as(self.name, self.version);
        ExitCode::from(u8::try_from(code).unwrap_or(1))
    }

    /// Puts the services and allowances where the master's config checks and every
    /// worker find them.
    fn install(&self) {
        for (name, factory, options) in &self.services {
            registry::register(name, factory.clone(), *options);
        }
        if !self.syscalls.is_empty() {
            crate::os::seccomp::allow_extra(&self.syscalls);
        }
        for (path, write) in &self.paths {
            crate::os::landlock::allow_paths(&[path.as_path()], *write);
        }
    }
}

/// Calls `factory` with the options of `listen` as its load parsed them, or parsed
/// here for a listener built by hand rather than loaded (a test calling a factory).
fn with_options<O: ServiceOptions, S>(
    listen: &ListenConfig,
    factory: impl FnOnce(&O, &ListenConfig) -> S,
) -> S {
    match crate::service::options::<O>(listen) {
        Some(o) => factory(o, listen),
        None => factory(&crate::service::parse_unloaded::<O>(listen), listen),
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;
    use std::path::Path;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::config::{Config, OptionError};
    use crate::service::sealed::FORWARDING;
    use crate::service::{Handler, Io, Registry};

    struct Greeter(String);
    struct Greeting(String);

    impl Service for Greeter {
        fn connect(&mut self, _: Option<IpAddr>) -> Box<dyn Handler> {
            Box::new(Greeting(self.0.clone()))
        }
    }

    impl Handler for Greeting {
        fn on_data(&mut self, io: &mut Io<'_>, data: &[u8]) -> usize {
            io.write(self.0.as_bytes());
            data.len()
        }
    }

    #[derive(Debug, Default, serde::Deserialize, serde::Serialize)]
    #[serde(deny_unknown_fields)]
    struct GreeterOptions {
        #[serde(default)]
        greeting: Option<String>,
    }

    impl ServiceOptions for GreeterOptions {
        fn check(&mut self) -> Result<(), OptionError> {
            match self.greeting.as_deref() {
                Some("") => Err(OptionError::new("greeting", "empty")),
                _ => Ok(()),
            }
        }
    }

    fn listener(text: &str) -> Result<ListenConfig, String> {
        Config::load_str(text, Path::new("/test/runtime.toml"), &Registry)
            .map(|mut c| c.listen.remove(0))
            .map_err(|e| e.to_string())
    }

    fn greet(listen: &ListenConfig) -> Vec<u8> {
        let mut service = registry::make(listen).expect("registered");
        let mut h = crate::testing::Harness::connect(&mut service);
        h.send(b"hi");
        h.take_written()
    }

    #[test]
    fn factories_capture_state_and_read_their_options() {
        static CALLS: AtomicUsize = AtomicUsize::new(0);
        let word = String::from("captured");
        Runtime::new()
            .service("rt_test_plain", move |_| {
                CALLS.fetch_add(1, Ordering::SeqCst);
                Greeter(word.clone())
            })
            .service_with("rt_test_opts", |o: &GreeterOptions, _| {
                Greeter(o.greeting.clone().unwrap_or_else(|| "default".into()))
            })
            .install();
        let l = |service: &str, extra: &str| {
            format!("[[listen]]\naddress = \"127.0.0.1:1\"\nservice = \"{service}\"\n{extra}")
        };
        assert_eq!(
            greet(&listener(&l("rt_test_plain", "")).unwrap()),
            b"captured"
        );
        assert_eq!(CALLS.load(Ordering::SeqCst), 1);
        let opts = listener(&l("rt_test_opts", "greeting = \"bonjour\"")).unwrap();
        assert_eq!(greet(&opts), b"bonjour");
        assert_eq!(
            greet(&listener(&l("rt_test_opts", "")).unwrap()),
            b"default"
        );
        // Its keys are checked at load, with the file and the key.
        let e = listener(&l("rt_test_opts", "greeting = \"\"")).unwrap_err();
        assert!(
            e.contains("runtime.toml") && e.contains("listen[0].greeting"),
            "{e}"
        );
        let e = listener(&l("rt_test_plain", "greeting = \"x\"")).unwrap_err();
        assert!(e.contains("listen[0].greeting"), "{e}");
        // A forwarder is one because it was registered as one; a service is not.
        struct One;
        impl Upstreams for One {
            fn pick(
                &mut self,
                tried: &[usize],
                _: std::time::Instant,
            ) -> Option<(usize, std::net::SocketAddr)> {
                tried.is_empty().then(|| (0, ([127, 0, 0, 1], 9).into()))
            }
            fn connected(&mut self, _: usize) {}
            fn failed(&mut self, _: usize, _: std::time::Instant) {}
            fn released(&mut self, _: usize) {}
            fn connect_timeout(&self) -> std::time::Duration {
                std::time::Duration::from_secs(1)
            }
        }
        Runtime::new().forward("rt_test_fwd", |_| One).install();
        let fwd = FORWARDING;
        let mut f = registry::make(&listener(&l("rt_test_fwd", "")).unwrap()).unwrap();
        assert!(f.upstreams(fwd).is_some());
        let mut p = registry::make(&listener(&l("rt_test_plain", "")).unwrap()).unwrap();
        assert!(p.upstreams(fwd).is_none());
        // A name nobody registered is refused by the load, naming the key.
        let e = listener(&l("rt_test_nobody", "")).unwrap_err();
        assert!(
            e.contains("listen[0].service") && e.contains("unknown service"),
            "{e}"
        );
    }
}
