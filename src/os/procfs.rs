//! What /proc says about a process beyond its pid, which the kernel reuses: its start
//! time (clock ticks since boot, /proc/PID/stat field 22), its executable, and this
//! boot's id. Together they tell "the process that wrote this pid file" from a
//! bystander that later got the same pid.

use std::io;
use std::path::PathBuf;

/// The fields of /proc/PID/stat that corral reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stat {
    /// One-letter state (`R`, `S`, `Z`, ...).
    pub state: char,
    /// The parent's pid (field 4).
    pub ppid: i32,
    /// Start time after boot, in clock ticks (field 22).
    pub start_time: u64,
    /// A zombie's wait status (field 52, Linux 3.5+); 0 while it runs.
    pub exit_code: Option<i32>,
}

/// Reads /proc/PID/stat. The command name (field 2) may hold spaces and parentheses,
/// so the fields are counted from the last `)`.
pub fn stat(pid: i32) -> io::Result<Stat> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let bad = || {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("/proc/{pid}/stat: {s:?}"),
        )
    };
    let (_, rest) = s.rsplit_once(')').ok_or_else(bad)?;
    // rest starts at field 3 (state): field N is at index N - 3.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3).copied();
    let state = field(3).and_then(|f| f.chars().next()).ok_or_else(bad)?;
    let ppid = field(4).and_then(|f| f.parse().ok()).ok_or_else(bad)?;
    let start_time = field(22).and_then(|f| f.parse().ok()).ok_or_else(bad)?;
    let exit_code = field(52).and_then(|f| f.parse().ok());
    Ok(Stat {
        state,
        ppid,
        start_time,
        exit_code,
    })
}

/// The executable of `pid` (what /proc/PID/exe links to), without the ` (deleted)`
/// the kernel appends once the file was replaced on disk, as a binary upgrade does.
pub fn exe(pid: i32) -> io::Result<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    let p = std::fs::read_link(format!("/proc/{pid}/exe"))?;
    match p.as_os_str().as_bytes().strip_suffix(b" (deleted)") {
        Some(cut) => Ok(PathBuf::from(std::ffi::OsStr::from_bytes(cut))),
        None => Ok(p),
    }
}

/// This boot's random id: start times count from boot, so a pid file from an earlier
/// boot must not match a process of this one.
pub fn boot_id() -> io::Result<String> {
    Ok(std::fs::read_to_string("/proc/sys/kernel/random/boot_id")?
        .trim()
        .to_string())
}
