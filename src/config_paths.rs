//! Relative paths in a config file are relative to the directory of that file, as
//! nginx's are to its prefix: a config means the same files whoever reads it and from
//! wherever — the master started in some directory, the daemon after it moved to `/`,
//! a new master after a binary upgrade, `corral -s` run from a shell elsewhere. Paths
//! set through `CORRAL_*` variables are read the same way.
//!
//! `-c` itself is relative to the current directory, as any command-line path.

use std::io;
use std::path::{Path, PathBuf};

use crate::config::{Config, ListenAddr};

/// `p`, absolute: as is if it already is, else below `base`.
pub fn resolve(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() || p.as_os_str().is_empty() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

/// The directory that relative paths in the config file `source` are relative to.
pub fn base_of(source: &Path) -> io::Result<PathBuf> {
    let source = std::path::absolute(source)?;
    Ok(source
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/")))
}

impl Config {
    /// Makes `source` and every path in the config absolute (see the module doc), so
    /// that nothing depends on the current directory after this.
    pub fn resolve_paths(&mut self) -> io::Result<()> {
        self.source = std::path::absolute(&self.source)?;
        let base = base_of(&self.source)?;
        let m = &mut self.master;
        m.pid_file = resolve(&base, &m.pid_file);
        if let Some(s) = &mut m.control_socket {
            *s = resolve(&base, s);
        }
        if let Some(f) = &mut self.log.file {
            *f = resolve(&base, f);
        }
        for l in &mut self.listen {
            if let ListenAddr::Unix(p) = &mut l.address {
                *p = resolve(&base, p);
            }
            for p in l.tls.iter_mut().flat_map(|t| t.paths_mut()) {
                *p = resolve(&base, p);
            }
        }
        Ok(())
    }
}
