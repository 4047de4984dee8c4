//! Replays every seed and every input that once failed (`fuzz/corpus/<target>/`,
//! `fuzz/regressions/<target>/`) through its target's check, so that `cargo test`
//! catches a regression without a nightly toolchain or cargo-fuzz.

use std::path::Path;

fn replay(target: &str, mut check: impl FnMut(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut n = 0;
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        for e in entries {
            let path = e.expect("list a corpus").path();
            let data = std::fs::read(&path).expect("read a corpus file");
            let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&data)));
            assert!(ok.is_ok(), "{target}: {} fails", path.display());
            n += 1;
        }
    }
    assert!(n > 0, "no seeds for {target}");
}

#[test]
fn http_head() {
    replay("http_head", super::http_diff::check);
}

#[test]
fn chunked() {
    replay("chunked", super::chunked);
}

#[test]
fn proxy_protocol() {
    replay("proxy_protocol", super::proxy_protocol);
}

#[test]
fn control_request() {
    replay("control_request", super::control_request);
}

#[test]
fn channel_message() {
    replay("channel_message", super::channel_message);
}

#[test]
fn config() {
    replay("config", super::config);
    // The seeds that should load do, so the round trip is exercised.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/config");
    for seed in ["minimal", "full"] {
        let text = std::fs::read_to_string(root.join(seed)).expect("read a seed");
        let loaded = crate::config::Config::load_str(
            &text,
            Path::new(super::FUZZ_SOURCE),
            &super::NoLookups,
        );
        assert!(loaded.is_ok(), "seed {seed}: {loaded:?}");
    }
}

#[test]
fn suspended_state() {
    for name in ["echo", "http", "proxy"] {
        let mut service = super::builtin_service(name);
        replay(&format!("state_{name}"), |d| {
            super::suspended_state(service.as_mut(), d)
        });
    }
}

#[test]
fn tls_record() {
    replay("tls_record", super::tls_record);
}

#[test]
fn bus_packet() {
    replay("bus_packet", super::bus_packet);
}

#[test]
fn websocket() {
    replay("websocket", super::websocket);
}
