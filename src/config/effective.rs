//! `corral -T`: the configuration the master would run with, after defaults, the file
//! and the environment were layered and every check passed, printed as TOML that can
//! be fed back to `-c`, each value with where it came from. Operators debugging "why
//! does it use 8 workers?" need the winner and its source, not the file they wrote.

use std::fmt::Write as _;
use std::path::Path;

use figment::providers::{Format, Toml};
use figment::{Figment, Source};
use serde_json::Value;

use super::{env_var_name, layered, Config, ConfigError, Services};

/// Loads and checks `path` exactly as a start would (with the services a start
/// knows), then renders the result; a listener's service options are shown as the
/// service parsed them, defaults included.
pub fn render(path: &Path, services: &dyn Services) -> Result<String, ConfigError> {
    let config = Config::load_with(path, services)?;
    let figment = layered(path);
    // What the file itself says, to tell a listener's key set there from a default
    // that serde filled in (figment's metadata covers only whole `listen` arrays).
    let file: Value = Figment::from(Toml::file_exact(path))
        .extract()
        .unwrap_or(Value::Null);
    let tree = serde_json::to_value(&config).map_err(|e| ConfigError::Parse(e.to_string()))?;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# effective configuration from {} (defaults, then the file, then CORRAL_* variables)",
        path.display()
    );
    let Value::Object(top) = tree else {
        return Ok(out);
    };
    let order = ["master", "worker", "flow", "log"];
    let mut sections: Vec<&String> = top.keys().collect();
    sections.sort_by_key(|k| order.iter().position(|o| o == k).unwrap_or(order.len()));
    for name in sections {
        match &top[name.as_str()] {
            Value::Object(table) => {
                let _ = writeln!(out, "\n[{name}]");
                let origin = |key: &str| origin_of(&figment, path, &format!("{name}.{key}"));
                let unset = |key: &str| unset_section_key(&config, name, key);
                write_table(&mut out, table, origin, unset);
            }
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    let Value::Object(table) = item else { continue };
                    let table = with_parsed_options(table, &config, name, i);
                    let _ = writeln!(out, "\n[[{name}]]  # {name}[{i}]");
                    let in_file = file.get(name).and_then(|l| l.get(i));
                    let origin = |key: &str| match in_file.and_then(|t| t.get(key)) {
                        Some(_) => format!("file {}", path.display()),
                        None => "default".to_string(),
                    };
                    let unset = |key: &str| {
                        config
                            .listen
                            .get(i)
                            .and_then(|l| unset_listen_key(&config, l, key))
                    };
                    write_table(&mut out, &table, origin, unset);
                }
            }
            _ => {}
        }
    }
    Ok(out)
}

/// `listen[i]`'s table with its service options as parsed (defaults filled in)
/// instead of as written.
fn with_parsed_options(
    table: &serde_json::Map<String, Value>,
    config: &Config,
    name: &str,
    i: usize,
) -> serde_json::Map<String, Value> {
    let mut table = table.clone();
    let parsed = config.listen.get(i).and_then(|l| l.parsed.0.as_ref());
    if let (Some(parsed), "listen") = (parsed, name) {
        if let Value::Object(options) = parsed.effective() {
            table.extend(options);
        }
    }
    table
}

fn write_table(
    out: &mut String,
    table: &serde_json::Map<String, Value>,
    origin: impl Fn(&str) -> String,
    unset: impl Fn(&str) -> Option<Unset>,
) {
    for (key, value) in table {
        let (line, note) = match (value, unset(key)) {
            // An unset key whose default is a value: the value, as if written.
            (Value::Null, Some(Unset::Value(v, from))) => {
                (format!("{} = {}", toml_key(key), toml_value(&v)), from)
            }
            // TOML has no null: an unset optional key is shown, commented out, with
            // what being unset means.
            (Value::Null, Some(Unset::Means(what))) => {
                (format!("# {key} is not set"), what.to_string())
            }
            (Value::Null, None) => (format!("# {key} is not set"), String::new()),
            (v, _) => (
                format!("{} = {}", toml_key(key), toml_value(v)),
                String::new(),
            ),
        };
        let origin = origin(key);
        let _ = match note.is_empty() {
            true => writeln!(out, "{line:<48} # {origin}"),
            false => writeln!(out, "{line:<48} # {origin}: {note}"),
        };
    }
}

/// What an unset optional key stands for.
enum Unset {
    /// A value, and where it comes from when that is not a plain constant.
    Value(Value, String),
    /// No value: what that means.
    Means(&'static str),
}

fn value(v: impl serde::Serialize) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

/// The meaning of an unset key of `[master]`, `[worker]`, `[flow]` or `[log]`.
fn unset_section_key(config: &Config, section: &str, key: &str) -> Option<Unset> {
    Some(match (section, key) {
        ("master", "control_socket") => Unset::Value(
            value(config.master.control_socket_path().display().to_string()),
            "the pid file's path with .sock".into(),
        ),
        ("master", "user") => Unset::Means("workers keep the master's user"),
        ("master", "group") => Unset::Means("the user's groups"),
        (_, "rlimit_core" | "rlimit_nofile") => Unset::Means("inherited from the master"),
        ("log", "file") => Unset::Means("standard error"),
        _ => return None,
    })
}

/// The meaning of an unset key of listener `l`: the value it runs with where there is
/// one. Keys that do not apply to the listener (TCP options on a unix socket, the
/// PROXY header's timeout without `accept_proxy`) stay unset: written, they would be
/// refused, and this output is meant to be fed back to `-c`.
fn unset_listen_key(config: &Config, l: &super::ListenConfig, key: &str) -> Option<Unset> {
    use crate::os::addr::ListenAddr;
    let tcp = matches!(l.address, ListenAddr::Tcp(_));
    let plain = |v: Value| Some(Unset::Value(v, String::new()));
    let flow = l.flow(&config.flow);
    match key {
        "accept_proxy" => plain(Value::Bool(false)),
        "accept_proxy_timeout" if l.accepts_proxy() => {
            plain(value(super::Dur(l.accept_proxy_timeout())))
        }
        "log_connections" => plain(Value::Bool(false)),
        "suspend" => plain(Value::Bool(true)),
        "idle_timeout" => Some(Unset::Value(
            value(super::Dur(l.idle_timeout(&config.worker))),
            "[worker] idle_timeout".into(),
        )),
        "rate" => Some(Unset::Value(
            value(super::Size(flow.rate)),
            "[flow] rate".into(),
        )),
        "burst" if flow.rate > 0 => Some(Unset::Value(
            value(super::Size(flow.burst)),
            "[flow] burst, else 100 ms of rate (at least 4KiB)".into(),
        )),
        "max_connections_per_ip" => Some(Unset::Value(
            value(flow.max_connections_per_ip),
            "[flow] max_connections_per_ip".into(),
        )),
        "name" => Some(Unset::Means("none")),
        "steer" => Some(Unset::Means("off")),
        "nodelay" if tcp => plain(Value::Bool(true)),
        "keepalive" if tcp => plain(Value::Bool(false)),
        "defer_accept" if tcp => Some(Unset::Means("off")),
        "keepalive_idle" | "keepalive_interval" | "keepalive_count" if tcp => Some(Unset::Means(
            "the kernel's net.ipv4.tcp_keepalive_* setting",
        )),
        "mode" if !tcp => Some(Unset::Means("from the umask")),
        "owner" if !tcp => Some(Unset::Means("the master's user")),
        "nodelay" | "keepalive" | "defer_accept" | "keepalive_idle" | "keepalive_interval"
        | "keepalive_count" => Some(Unset::Means("TCP listeners only")),
        "mode" | "owner" => Some(Unset::Means("unix-socket listeners only")),
        "accept_proxy_timeout" => Some(Unset::Means("only with accept_proxy")),
        "burst" => Some(Unset::Means("no rate limit")),
        // Service keys whose unset value is "none" rather than a default.
        "headers" if l.service == "http" => Some(Unset::Means("no extra headers")),
        "proxy_protocol" if l.service == "proxy" => {
            Some(Unset::Means("off: no PROXY header to the upstream"))
        }
        _ => None,
    }
}

/// Where the value at `key` (`master.workers`) came from, by figment's metadata.
fn origin_of(figment: &Figment, path: &Path, key: &str) -> String {
    match figment.find_metadata(key) {
        Some(md) if md.name.contains("environment variable") => {
            format!("environment variable {}", env_var_name(key))
        }
        Some(md) => match &md.source {
            Some(Source::File(_)) => format!("file {}", path.display()),
            _ => "default".to_string(),
        },
        None => "default".to_string(),
    }
}

fn toml_key(key: &str) -> String {
    if !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        key.to_string()
    } else {
        Value::String(key.to_string()).to_string()
    }
}

/// JSON's string escapes are all valid in TOML basic strings, so a JSON scalar is
/// already a TOML literal; only tables and nulls need their own shape.
fn toml_value(v: &Value) -> String {
    match v {
        Value::Array(items) => {
            let parts: Vec<String> = items.iter().map(toml_value).collect();
            format!("[{}]", parts.join(", "))
        }
        Value::Object(map) => {
            let parts: Vec<String> = map
                .iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| format!("{} = {}", toml_key(k), toml_value(v)))
                .collect();
            format!("{{ {} }}", parts.join(", "))
        }
        Value::Null => "\"\"".to_string(),
        scalar => scalar.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_render_as_toml_that_reads_back() {
        let v = serde_json::json!({
            "s": "a \"quoted\"\nline", "n": 3, "b": true,
            "list": ["x", "y"], "map": {"X-Weird key": "v"}
        });
        let Value::Object(m) = v else { unreachable!() };
        let mut doc = String::new();
        for (k, v) in &m {
            doc.push_str(&format!("{} = {}\n", toml_key(k), toml_value(v)));
        }
        let back: Value = Figment::from(Toml::string(&doc)).extract().unwrap();
        assert_eq!(back, Value::Object(m));
    }
}
