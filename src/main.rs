//! The `corral` binary: the built-in services, run by the library's program.

fn main() -> std::process::ExitCode {
    corral::Runtime::new().run()
}
