//! The `http` service's own `[[listen]]` keys (the canned response and the request
//! limits), and their checks.

use serde::{Deserialize, Serialize};

use crate::config::{Dur, OptionError, Size};
use crate::service::ServiceOptions;

/// The smallest `max_header_size`: a request line and a Host header.
const MIN_HEADER_SIZE: u64 = 64;

/// `[[listen]] service = "http"`: its keys, each optional.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpOptions {
    /// The status code of every response.
    #[serde(default)]
    pub status: Option<u16>,
    /// The body of every response.
    #[serde(default)]
    pub body: Option<String>,
    /// Extra response headers.
    #[serde(default)]
    pub headers: Option<std::collections::BTreeMap<String, String>>,
    /// A request's headers must arrive within this (slowloris).
    #[serde(default)]
    pub header_timeout: Option<Dur>,
    /// Largest request head (request line and headers) accepted.
    #[serde(default)]
    pub max_header_size: Option<Size>,
    /// Largest request body (`Content-Length` or chunked) accepted, 413 above;
    /// `"0"` (the default) = no limit: bodies are discarded as they arrive.
    #[serde(default)]
    pub max_body_size: Option<Size>,
}

impl ServiceOptions for HttpOptions {
    fn effective(&self) -> serde_json::Value {
        let mut o = self.clone();
        o.status.get_or_insert(200);
        o.body
            .get_or_insert_with(|| super::DEFAULT_BODY.to_string());
        o.header_timeout
            .get_or_insert(Dur(super::DEFAULT_HEADER_TIMEOUT));
        o.max_header_size
            .get_or_insert(Size(super::DEFAULT_MAX_HEADER_SIZE as u64));
        o.max_body_size.get_or_insert(Size(0));
        serde_json::to_value(o).unwrap_or(serde_json::Value::Null)
    }

    fn check(&mut self) -> Result<(), OptionError> {
        if self.header_timeout.is_some_and(|d| d.0.is_zero()) {
            return Err(OptionError::new(
                "header_timeout",
                "must be more than 0 (0 would answer 408 to every request)",
            ));
        }
        if let Some(size) = self.max_header_size {
            if size.0 < MIN_HEADER_SIZE {
                return Err(OptionError::new(
                    "max_header_size",
                    format!(
                        "{size} is too small: no request head fits (at least {MIN_HEADER_SIZE} bytes)"
                    ),
                ));
            }
        }
        if let Some(st) = self.status {
            if !(200..=599).contains(&st) {
                return Err(OptionError::new(
                    "status",
                    format!("{st} is not a status code (200-599)"),
                ));
            }
        }
        if let Some(h) = &self.headers {
            for (k, v) in h {
                let bad = |c: char| c.is_control() || c == ':' || c.is_whitespace();
                if k.is_empty() || k.contains(bad) || v.contains(['\r', '\n']) {
                    return Err(OptionError::new(
                        "headers",
                        format!("`{k}: {v}` is not a valid header"),
                    ));
                }
            }
        }
        Ok(())
    }
}
