//! The tests that need root and change the machine: real systemd as PID 1 in
//! namespaces, a second uid, containment (seccomp, Landlock, namespaces), the Debian
//! package, corral as a container's PID 1. A separate binary so that they run beside
//! each other and not beside the load tests of `suite`; each says SKIPPED, with the
//! reason, where `cargo test` shows it when it cannot run here.

// The harness is the suite's; these tests use part of it.
#[allow(dead_code)]
mod common;

mod container_init;
mod containment;
mod deb;
mod privs;
mod systemd_real;
