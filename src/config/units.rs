//! Values with units: durations (`"500ms"`, `"30s"`) and byte sizes (`"64KiB"`),
//! parsed from a string with a unit or a bare number, and printed back the same way.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};

/// A duration written with a unit: `"500ms"`, `"30s"`, `"2m"`, `"1h"`, `"1d"`; a bare
/// integer means seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(into = "String")]
pub struct Dur(pub Duration);

/// A byte size written with a unit: `"512"`, `"64KiB"`, `"1MiB"`, `"2GiB"` (also `KB`,
/// `MB`, `GB` as powers of ten, and `K`, `M`, `G` as powers of two, as nginx reads them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(into = "String")]
pub struct Size(pub u64);

impl From<Dur> for String {
    fn from(d: Dur) -> String {
        d.to_string()
    }
}

impl From<Size> for String {
    fn from(s: Size) -> String {
        s.to_string()
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms % 1000 == 0 {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: &[(u64, &str)] = &[(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
        for &(n, unit) in UNITS {
            if self.0 >= n && self.0 % n == 0 {
                return write!(f, "{}{unit}", self.0 / n);
            }
        }
        write!(f, "{}", self.0)
    }
}

/// Splits `"64KiB"` into `(64, "KiB")`.
fn split_number(s: &str) -> Option<(u64, &str)> {
    let s = s.trim();
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let n = s[..end].parse().ok()?;
    Some((n, s[end..].trim()))
}

impl std::str::FromStr for Dur {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad =
            || format!("`{s}` is not a duration (write e.g. \"500ms\", \"30s\", \"2m\", \"1h\")");
        let (n, unit) = split_number(s).ok_or_else(bad)?;
        let ms: u64 = match unit {
            "ms" => 1,
            "" | "s" => 1000,
            "m" | "min" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(bad()),
        };
        n.checked_mul(ms)
            .map(|ms| Dur(Duration::from_millis(ms)))
            .ok_or_else(bad)
    }
}

impl std::str::FromStr for Size {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("`{s}` is not a size (write e.g. \"4096\", \"64KiB\", \"1MiB\")");
        let (n, unit) = split_number(s).ok_or_else(bad)?;
        let mul: u64 = match unit {
            "" | "B" => 1,
            "KiB" | "K" | "k" => 1 << 10,
            "MiB" | "M" | "m" => 1 << 20,
            "GiB" | "G" | "g" => 1 << 30,
            "KB" | "kB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            _ => return Err(bad()),
        };
        n.checked_mul(mul).map(Size).ok_or_else(bad)
    }
}

/// Accepts either a string with a unit or a bare non-negative integer.
fn de_number_or_str<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: std::str::FromStr<Err = String>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        N(u64),
        S(String),
    }
    match Raw::deserialize(d)
        .map_err(|_| de::Error::custom("expected a number or a string with a unit"))?
    {
        Raw::N(n) => n.to_string().parse().map_err(de::Error::custom),
        Raw::S(s) => s.parse().map_err(de::Error::custom),
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        de_number_or_str(d)
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        de_number_or_str(d)
    }
}
