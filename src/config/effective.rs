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
                write_table(&mut out, table, origin);
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
                    write_table(&mut out, &table, origin);
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
) {
    for (key, value) in table {
        let line = match value {
            // TOML has no null: an unset optional key is shown, commented out.
            Value::Null => format!("# {key} is not set"),
            v => format!("{} = {}", toml_key(key), toml_value(v)),
        };
        let _ = writeln!(out, "{line:<48} # {}", origin(key));
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
