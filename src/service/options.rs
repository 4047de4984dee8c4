//! Services own their keys: each declares the keys it takes in a `[[listen]]` table
//! as a serde struct (with `deny_unknown_fields`, so a key no one takes is refused)
//! that implements [`ServiceOptions`], and checks what types cannot. Config keeps a
//! listener's other keys raw; the loader hands them to the registry here, which
//! parses them once per load (start, reload, `-t`, `-T`) into the typed value the
//! service's factory reads in the worker with [`options`].

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::config::{
    Config, ConfigError, ListenConfig, ListenOptions, OptionError, RawOptions, Services,
};

/// A service's own `[[listen]]` keys. Implement it on a
/// `#[derive(Deserialize, Serialize)] #[serde(deny_unknown_fields)]` struct whose
/// fields are the keys (optional ones with `#[serde(default)]`), and register the
/// service with [`crate::Runtime::service_with`].
pub trait ServiceOptions:
    DeserializeOwned + Serialize + std::fmt::Debug + Send + Sync + 'static
{
    /// Checks what types cannot (ranges, relations between keys), and may complete
    /// the value (a proxy resolves its upstreams here). Runs in the master at every
    /// load, never in a worker.
    fn check(&mut self) -> Result<(), OptionError> {
        Ok(())
    }

    /// Where this listener forwards connections, as written and resolved: corral
    /// refuses a config whose listeners forward to each other in a loop.
    fn forwards_to(&self) -> Vec<(String, SocketAddr)> {
        Vec::new()
    }

    /// Why `key`, one of this service's keys, means nothing to service `other` (a
    /// listener of `other` that sets it is refused with this reason).
    fn misplaced(_key: &str, _other: &str) -> Option<String> {
        None
    }

    /// The options as the service runs with them, for `corral -T`: an unset key with
    /// a default shows that default. Override to fill in defaults; the keys left
    /// unset are printed as such.
    fn effective(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}

impl<O: ServiceOptions> ListenOptions for O {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
    fn forwards_to(&self) -> Vec<(String, SocketAddr)> {
        ServiceOptions::forwards_to(self)
    }
    fn effective(&self) -> serde_json::Value {
        ServiceOptions::effective(self)
    }
}

/// The options of a service that takes no key of its own.
#[derive(Clone, Debug, Default, serde::Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NoOptions {}

impl ServiceOptions for NoOptions {}

/// How the registry handles one service's options without knowing their type.
#[derive(Clone, Copy)]
pub(crate) struct OptionsKind {
    parse: fn(&RawOptions) -> Result<Arc<dyn ListenOptions>, ParseError>,
    keys: fn() -> &'static [&'static str],
    misplaced: fn(&str, &str) -> Option<String>,
}

impl OptionsKind {
    pub(crate) fn of<O: ServiceOptions>() -> OptionsKind {
        OptionsKind {
            parse: parse::<O>,
            keys: keys::<O>,
            misplaced: O::misplaced,
        }
    }
}

/// Why raw options did not parse: a key no field takes, or a refused value.
enum ParseError {
    Unknown(String),
    Invalid(OptionError),
}

fn parse<O: ServiceOptions>(raw: &RawOptions) -> Result<Arc<dyn ListenOptions>, ParseError> {
    let value = figment::value::Value::from(raw.clone());
    let mut o: O = value.deserialize().map_err(|e| {
        let key = e.path.first().cloned().unwrap_or_default();
        match e.kind {
            figment::error::Kind::UnknownField(field, _) => ParseError::Unknown(field),
            kind => ParseError::Invalid(OptionError::new(key, kind.to_string())),
        }
    })?;
    o.check().map_err(ParseError::Invalid)?;
    Ok(Arc::new(o))
}

/// The keys `O` takes, as serde's derive lists them: the error for an unknown key
/// carries the list of the expected ones.
fn keys<O: ServiceOptions>() -> &'static [&'static str] {
    let probe = RawOptions::from([("\0".to_string(), figment::value::Value::from(true))]);
    match figment::value::Value::from(probe).deserialize::<O>() {
        Err(e) => match e.kind {
            figment::error::Kind::UnknownField(_, expected) => expected,
            _ => &[],
        },
        Ok(_) => &[],
    }
}

/// corral's registry of services, as config's loader asks it.
pub(crate) struct Registry;

impl Services for Registry {
    fn names(&self) -> Vec<String> {
        super::registry::known()
    }

    fn parse(
        &self,
        service: &str,
        options: &RawOptions,
    ) -> Result<Arc<dyn ListenOptions>, OptionError> {
        let kinds = super::registry::option_kinds();
        let Some(own) = kinds.iter().find(|(n, _)| n == service).map(|(_, k)| *k) else {
            return Err(OptionError::new(
                "service",
                format!("unknown service `{service}`"),
            ));
        };
        match (own.parse)(options) {
            Ok(parsed) => Ok(parsed),
            Err(ParseError::Invalid(e)) => Err(e),
            Err(ParseError::Unknown(key)) => Err(unknown_key(service, own, &kinds, key)),
        }
    }
}

/// The error for a key that `service` does not take: if another service takes it,
/// it says so (a key in the wrong listener), else it lists the keys `service` takes.
fn unknown_key(
    service: &str,
    own: OptionsKind,
    kinds: &[(String, OptionsKind)],
    key: String,
) -> OptionError {
    let owner = kinds
        .iter()
        .find(|(n, k)| n != service && (k.keys)().contains(&key.as_str()));
    let reason = match owner {
        Some((name, k)) => match (k.misplaced)(&key, service) {
            Some(why) => why,
            None => format!("does not apply to service `{service}` (it is a key of `{name}`)"),
        },
        None => match (own.keys)() {
            [] => format!(
                "unknown key: not a [[listen]] key, and service `{service}` takes none of its own"
            ),
            keys => format!(
                "unknown key: not a [[listen]] key, nor one of service `{service}`'s ({})",
                keys.join(", ")
            ),
        },
    };
    OptionError::new(key, reason)
}

impl Config {
    /// Reads, layers and validates the config at `path`, each listener's own keys
    /// checked by its service (see [`Config::load_with`]). Defined here, by the
    /// layer that knows the services, so that config does not depend on them.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::load_with(path, &Registry)
    }
}

/// The options of `listen`'s service, parsed at load; None if the listener is not
/// of a service whose options are `O` (or, in a unit test, was never loaded).
pub fn options<O: ServiceOptions>(listen: &ListenConfig) -> Option<&O> {
    listen.parsed.0.as_ref()?.as_any().downcast_ref()
}

/// Parses `listen`'s options for a listener that was built without a load (a test
/// calling a factory by hand). A load checked them already for every listener a
/// worker serves, so a refusal here is the test's own mistake.
pub(crate) fn parse_unloaded<O: ServiceOptions>(listen: &ListenConfig) -> O {
    let value = figment::value::Value::from(listen.options.clone());
    let mut o: O = match value.deserialize() {
        Ok(o) => o,
        Err(e) => panic!("listen options of `{}` do not parse: {e}", listen.service),
    };
    if let Err(e) = o.check() {
        panic!("listen options of `{}` refused: {e:?}", listen.service);
    }
    o
}

/// Parses `listen`'s options as a load does, for code that builds a listener
/// without loading a file (tests).
#[cfg(test)]
pub(crate) fn attach(listen: &mut ListenConfig) -> Result<(), OptionError> {
    let parsed = Registry.parse(&listen.service, &listen.options)?;
    listen.parsed = crate::config::ParsedOptions(Some(parsed));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::http::options::HttpOptions;

    fn raw(toml: &str) -> RawOptions {
        figment::Figment::from(
            <figment::providers::Toml as figment::providers::Format>::string(toml),
        )
        .extract()
        .unwrap()
    }

    #[test]
    fn keys_are_the_fields_serde_knows() {
        assert_eq!(
            keys::<HttpOptions>(),
            [
                "status",
                "body",
                "headers",
                "header_timeout",
                "max_header_size",
                "max_body_size"
            ]
        );
        assert!(keys::<NoOptions>().is_empty());
    }

    #[test]
    fn unknown_keys_say_whose_they_are() {
        let e = Registry.parse("echo", &raw("status = 200")).unwrap_err();
        assert_eq!(e.key, "status");
        assert!(
            e.reason.contains("service `echo`") && e.reason.contains("`http`"),
            "{e:?}"
        );
        let e = Registry.parse("http", &raw("stauts = 200")).unwrap_err();
        assert_eq!(e.key, "stauts");
        assert!(e.reason.contains("status, body"), "{e:?}");
        let e = Registry.parse("echo", &raw("nonsense = 1")).unwrap_err();
        assert!(e.reason.contains("takes none of its own"), "{e:?}");
        let e = Registry.parse("http", &raw("status = \"x\"")).unwrap_err();
        assert_eq!(e.key, "status");
        assert!(Registry.parse("http", &raw("status = 204")).is_ok());
    }
}
