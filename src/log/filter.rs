//! Which log lines pass: the `[log] level` key, or `RUST_LOG` when it is set.
//!
//! tracing's filter syntax reads any bare word as a target name, so a typo such as
//! `warning` or `loud` is a valid filter that enables only a target of that name and
//! silences everything else, crash reports included. A bare word is therefore accepted
//! only when it is a level; anything else must be a `target=level` directive that the
//! filter parser itself accepts.

use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::EnvFilter;

/// The levels a bare word may name, for messages.
const LEVELS: &str = "error, warn, info, debug, trace, off";

/// Checks a filter spec such as `info` or `corral=debug,info`; the error says why.
pub fn check(spec: &str) -> Result<(), String> {
    parse(spec).map(drop)
}

pub(super) fn parse(spec: &str) -> Result<EnvFilter, String> {
    let directives: Vec<&str> = spec
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .collect();
    if directives.is_empty() {
        return Err(format!("`{spec}` names no level (use one of {LEVELS})"));
    }
    for d in &directives {
        // `target[span{field}]=level`: only a directive without `=` is a bare word.
        if !d.contains('=') && !d.starts_with('[') && d.parse::<LevelFilter>().is_err() {
            return Err(format!(
                "`{d}` is not a level (use one of {LEVELS}, or target=level directives \
                 such as \"corral=debug,info\")"
            ));
        }
    }
    EnvFilter::builder()
        .parse(spec)
        .map_err(|e| format!("`{spec}`: {e}"))
}

/// The filter in force: `RUST_LOG` if it is set and valid, else `level` (already
/// validated with the config). A bad `RUST_LOG` is not fatal; the second value says it
/// was ignored, and which level was used instead.
pub(super) fn effective(level: &str) -> Result<(EnvFilter, Option<String>), String> {
    if let Some(env) = std::env::var("RUST_LOG")
        .ok()
        .filter(|s| !s.trim().is_empty())
    {
        match parse(&env) {
            Ok(f) => return Ok((f, None)),
            Err(why) => {
                let f = parse(level).map_err(|e| format!("[log] level {e}"))?;
                return Ok((
                    f,
                    Some(format!(
                        "environment variable RUST_LOG ignored: {why}; using [log] level `{level}` instead"
                    )),
                ));
            }
        }
    }
    Ok((parse(level).map_err(|e| format!("[log] level {e}"))?, None))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_and_directives_pass() {
        for ok in [
            "error",
            "warn",
            "info",
            "debug",
            "trace",
            "off",
            "INFO",
            " info ",
            "corral=debug,info",
            "info,corral::worker=debug",
            "corral::master=trace",
            "warn,[worker]=debug",
        ] {
            assert!(check(ok).is_ok(), "{ok}: {:?}", check(ok));
        }
    }

    #[test]
    fn typos_and_garbage_are_refused() {
        for bad in ["warning", "loud", "", " , ", "info,verbose", "corral=loud"] {
            let e = check(bad).expect_err(bad);
            assert!(e.contains('`'), "{bad}: {e}");
        }
        let e = check("warning").unwrap_err();
        assert!(e.contains("`warning` is not a level"), "{e}");
        assert!(e.contains("warn"), "{e}");
    }
}
