//! Loading: built-in defaults, then the file, then `CORRAL_*` variables, layered with
//! figment; errors name the file or the variable that gave the refused value.

use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

use crate::os::posix::PermissionsExt;

use super::{
    checks, privs, ConfigError, FlowConfig, ListenConfig, LogConfig, MasterConfig, ParsedOptions,
    Services, WorkerConfig, ENV_PREFIX, ENV_SECTIONS,
};

/// The whole configuration.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub master: MasterConfig,
    pub worker: WorkerConfig,
    pub flow: FlowConfig,
    pub log: LogConfig,
    pub listen: Vec<ListenConfig>,
    /// The file this config was read from (not a config key).
    #[serde(skip)]
    pub source: PathBuf,
}

impl Config {
    /// Reads, layers and validates the config at `path`, each listener's service
    /// options parsed and checked by `services`. A missing file is an error: running
    /// on silent defaults would surprise an operator who mistyped `-c`.
    /// (`Config::load`, with corral's service registry, is in `crate::service`.)
    pub fn load_with(path: &Path, services: &dyn Services) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        check_writers(path)?;
        if text.trim().is_empty() {
            return Err(ConfigError::Empty {
                path: path.to_path_buf(),
            });
        }
        // The file's text was read above so that an unreadable file is reported as
        // such; figment re-reads it with file_exact to keep the path in its messages.
        drop(text);
        check_env_names(std::env::vars_os().map(|(k, _)| k))?;
        Config::load_figment(layered(path), path, services)
    }

    /// Loads a config from `text` as if read from a file at `source` (which need not
    /// exist; relative paths are relative to its directory): the layering and checks
    /// of [`Config::load_with`] except those of the file itself (empty, writable by
    /// others). For the config fuzz target, which must not touch the file system.
    pub(crate) fn load_str(
        text: &str,
        source: &Path,
        services: &dyn Services,
    ) -> Result<Config, ConfigError> {
        let figment = Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::string(text))
            .merge(env_layer());
        Config::load_figment(figment, source, services)
    }

    /// `config` loaded again from its own serialization (what the fuzz target checks:
    /// loading is idempotent, nothing it fills in is refused on a second pass).
    pub(crate) fn reload_serialized(
        config: &Config,
        source: &Path,
        services: &dyn Services,
    ) -> Result<Config, ConfigError> {
        Config::load_figment(
            Figment::from(Serialized::defaults(config)),
            source,
            services,
        )
    }

    fn load_figment(
        figment: Figment,
        path: &Path,
        services: &dyn Services,
    ) -> Result<Config, ConfigError> {
        let mut config: Config = figment
            .extract()
            .map_err(|e| ConfigError::Parse(render_figment_error(e)))?;
        config.source = path.to_path_buf();
        config.resolve_paths().map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        config.validate(services).map_err(|e| blame(e, &figment))?;
        config.parse_options(services)?;
        privs::resolve(&mut config).map_err(|e| blame(e, &figment))?;
        for i in 0..config.listen.len() {
            config.check_proxy_loop(i)?;
        }
        config.load_tls()?;
        Ok(config)
    }

    /// Values that are accepted but probably not what the operator wants; `-t`, start
    /// and reload print them.
    pub fn warnings(&self) -> Vec<String> {
        let tls = self.listen.iter().enumerate().flat_map(|(i, l)| {
            l.tls
                .iter()
                .flat_map(move |t| crate::tls::load::warnings(&t.loaded, i))
        });
        checks::rss_warning(self.master.max_worker_rss)
            .into_iter()
            .chain(privs::warnings(self))
            .chain(tls)
            .collect()
    }

    /// Hands each listener's own keys to its service, which parses and checks them
    /// (a proxy resolves its upstreams here, in the master, at start, `-t` and every
    /// reload, so that workers never resolve). Options in `[[listen]]` come from the
    /// file only, so the file is named.
    fn parse_options(&mut self, services: &dyn Services) -> Result<(), ConfigError> {
        for i in 0..self.listen.len() {
            let l = &self.listen[i];
            match services.parse(&l.service, &l.options) {
                Ok(parsed) => self.listen[i].parsed = ParsedOptions(Some(parsed)),
                Err(e) => return Err(self.invalid(&format!("listen[{i}].{}", e.key), e.reason)),
            }
        }
        Ok(())
    }

    /// Reads every TLS listener's certificates and keys (see `crate::tls::load`).
    fn load_tls(&mut self) -> Result<(), ConfigError> {
        for i in 0..self.listen.len() {
            let Some(t) = &self.listen[i].tls else {
                continue;
            };
            let splice = self.listen[i].options.get("splice");
            if splice.is_some_and(|v| v.to_bool() == Some(true)) {
                return Err(self.invalid(
                    &format!("listen[{i}].splice"),
                    "cannot be used with [listen.tls]: every byte must pass through the TLS engine",
                ));
            }
            match crate::tls::load::load(t) {
                Ok(loaded) => {
                    if let Some(t) = self.listen[i].tls.as_mut() {
                        t.loaded = loaded;
                    }
                }
                Err(e) => return Err(self.invalid(&format!("listen[{i}].tls.{}", e.key), e.reason)),
            }
        }
        Ok(())
    }

    pub(super) fn invalid(&self, key: &str, reason: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            key: key.into(),
            origin: self.source.display().to_string(),
            reason: reason.into(),
        }
    }
}

/// Defaults, then the file, then `CORRAL_*` variables of the sections they may set:
/// the layering every reader of a config uses, and whose metadata tells `-T` where
/// each value came from.
pub(super) fn layered(path: &Path) -> Figment {
    Figment::from(Serialized::defaults(Config::default()))
        .merge(Toml::file_exact(path))
        .merge(env_layer())
}

/// The `CORRAL_*` variables of the sections they may set.
fn env_layer() -> Env {
    Env::prefixed(ENV_PREFIX).split("__").filter(|k| {
        let k = k.as_str().to_ascii_lowercase();
        ENV_SECTIONS
            .iter()
            .any(|s| k.len() > s.len() && k.starts_with(s) && k[s.len()..].starts_with('.'))
    })
}

/// Refuses a config file that anyone but its owner may write: whoever can edit it
/// chooses what the master (often root) runs, listens on and writes to, as sshd
/// refuses a group- or world-writable `authorized_keys`. The file as opened (a
/// symlink's target) is what counts.
fn check_writers(path: &Path) -> Result<(), ConfigError> {
    let meta = std::fs::metadata(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o7777;
    let who = match (mode & 0o020 != 0, mode & 0o002 != 0) {
        (_, true) => "every user",
        (true, false) => "its group",
        (false, false) => return Ok(()),
    };
    Err(ConfigError::Writable {
        path: path.to_path_buf(),
        mode,
        who,
    })
}

/// Refuses a `CORRAL_*` variable shaped like a config override that would otherwise be
/// ignored: a section that does not exist (`CORRAL_MASTR__WORKERS`), `[[listen]]`
/// (file only), or a single underscore after a section (`CORRAL_MASTER_WORKERS`). The
/// operator meant to set something, as with a mistyped key in the file. Variables of
/// another shape (`CORRAL_FAULT`, a harness's `CORRAL_BIN`) stay none of our business.
pub(super) fn check_env_names(
    names: impl IntoIterator<Item = std::ffi::OsString>,
) -> Result<(), ConfigError> {
    let sections = ENV_SECTIONS
        .iter()
        .map(|s| format!("[{s}]"))
        .collect::<Vec<_>>()
        .join(", ");
    for name in names {
        let Some(name) = name.to_str() else { continue };
        let Some(rest) = name
            .get(..ENV_PREFIX.len())
            .filter(|p| p.eq_ignore_ascii_case(ENV_PREFIX))
            .and_then(|_| name.get(ENV_PREFIX.len()..))
        else {
            continue;
        };
        let lower = rest.to_ascii_lowercase();
        let why = match lower.split_once("__") {
            Some((section, _)) if ENV_SECTIONS.contains(&section) => continue,
            Some(("listen", _)) => "[[listen]] is set in the config file only".to_string(),
            Some((section, _)) => format!(
                "there is no config section `{section}`; CORRAL_<SECTION>__<KEY> sets keys \
                 of {sections}"
            ),
            None => match ENV_SECTIONS
                .iter()
                .find(|s| lower.len() > s.len() + 1 && lower.starts_with(&format!("{s}_")))
            {
                Some(s) => format!(
                    "section and key are separated by two underscores: {ENV_PREFIX}{}__{}",
                    s.to_ascii_uppercase(),
                    &rest[s.len() + 1..]
                ),
                None => continue,
            },
        };
        return Err(ConfigError::Parse(format!(
            "environment variable {name}: {why}"
        )));
    }
    Ok(())
}

/// Names the environment variable instead of the file when the refused value came
/// from one: figment remembers which provider gave each value.
fn blame(e: ConfigError, figment: &Figment) -> ConfigError {
    match e {
        ConfigError::Invalid {
            key,
            origin,
            reason,
        } => {
            let origin = env_var_of(figment, &key).unwrap_or(origin);
            ConfigError::Invalid {
                key,
                origin,
                reason,
            }
        }
        other => other,
    }
}

/// `environment variable CORRAL_MASTER__WORKERS` if that is where `key` was set.
fn env_var_of(figment: &Figment, key: &str) -> Option<String> {
    // Keys inside [[listen]] (`listen[0].…`) come from the file only.
    if key.contains('[') {
        return None;
    }
    let md = figment.find_metadata(key)?;
    let from_env = md.source.is_none() && md.name.contains("environment variable");
    from_env.then(|| format!("environment variable {}", env_var_name(key)))
}

/// The variable that sets `key`: `master.workers` → `CORRAL_MASTER__WORKERS`.
pub(super) fn env_var_name(key: &str) -> String {
    let parts: Vec<String> = key.split('.').map(|p| p.to_ascii_uppercase()).collect();
    format!("{ENV_PREFIX}{}", parts.join("__"))
}

/// Figment's own message names the key and, in most cases, the file or variable; it
/// may report several errors, each of which an operator wants to see.
fn render_figment_error(e: figment::Error) -> String {
    let mut out = Vec::new();
    for err in e {
        let mut line = String::new();
        if !err.path.is_empty() {
            line.push_str(&format!("key `{}`: ", err.path.join(".")));
        }
        line.push_str(&err.kind.to_string());
        if let Some(md) = &err.metadata {
            match &md.source {
                Some(src) => line.push_str(&format!(" (in {src})")),
                None if md.name.contains("environment variable") && !err.path.is_empty() => line
                    .push_str(&format!(
                        " (in environment variable {})",
                        env_var_name(&err.path.join("."))
                    )),
                None => line.push_str(&format!(" (in {})", md.name)),
            }
        }
        out.push(line);
    }
    out.join("; ")
}
