//! The thin OS layer: epoll, signalfd, fds, processes, sockets and exec, behind safe
//! wrappers.
//!
//! Everything above this module speaks in `OwnedFd`s, typed errors and small safe
//! wrappers, so that the master and worker read as policy. Nearly every `unsafe` block
//! of the crate sits here with its `// SAFETY:` justification, including the one that
//! takes ownership of fds received over the channel (SCM_RIGHTS, in `scm`).

pub mod addr;
pub mod bpf;
pub mod client;
pub mod cred;
pub mod epoll;
pub mod escape;
pub mod exec;
pub mod fd;
pub mod files;
pub mod landlock;
pub mod master;
pub mod memory;
pub mod net;
pub mod pidfd;
pub mod posix;
pub mod privs;
pub mod process;
pub mod procfs;
pub mod scm;
pub mod seccomp;
pub mod signals;
pub mod sockio;
pub mod stream;
pub mod syscall;
pub mod types;

/// The error of a system call, with the call and what it was for.
#[derive(Debug, thiserror::Error)]
#[error("{call} failed while {context}: {errno}")]
pub struct SysError {
    pub call: &'static str,
    pub context: String,
    pub errno: nix::errno::Errno,
}

impl SysError {
    pub fn new(call: &'static str, context: impl Into<String>, errno: nix::errno::Errno) -> Self {
        SysError {
            call,
            context: context.into(),
            errno,
        }
    }

    /// From an `io::Error` that carries an errno (one of [`syscall::cvt`]'s).
    pub fn from_io(call: &'static str, context: impl Into<String>, e: &std::io::Error) -> Self {
        SysError::new(call, context, syscall::errno_of(e))
    }

    /// The errno as a `std::io::Error`, for callers that speak io.
    pub fn io(&self) -> std::io::Error {
        std::io::Error::from_raw_os_error(self.errno as i32)
    }
}

/// Shorthand for wrapping a nix result with its call and context.
pub(crate) trait Ctx<T> {
    fn ctx(self, call: &'static str, context: impl FnOnce() -> String) -> Result<T, SysError>;
}

impl<T> Ctx<T> for nix::Result<T> {
    fn ctx(self, call: &'static str, context: impl FnOnce() -> String) -> Result<T, SysError> {
        self.map_err(|e| SysError::new(call, context(), e))
    }
}

/// For raw calls through [`syscall::cvt`], whose errors are `io::Error`s of an errno.
impl<T> Ctx<T> for std::io::Result<T> {
    fn ctx(self, call: &'static str, context: impl FnOnce() -> String) -> Result<T, SysError> {
        self.map_err(|e| SysError::from_io(call, context(), &e))
    }
}
