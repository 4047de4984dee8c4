//! examples/kv's suspended-state format: the fuzz target `state_kv`'s seeds and past
//! failures (`fuzz/corpus/state_kv/`, `fuzz/regressions/state_kv/`) replayed through
//! the example's own `Service`, so `cargo test` keeps them without cargo-fuzz.

#[path = "../examples/kv.rs"]
#[allow(dead_code)]
mod kv;

#[test]
fn kv_states_round_trip() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut service = kv::new_service(None, kv::STATE_VERSION, true);
    let mut n = 0;
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join("state_kv")) else {
            continue;
        };
        for e in entries {
            let data = std::fs::read(e.expect("list").path()).expect("read a seed");
            corral::fuzzing::suspended_state(service.as_mut(), &data);
            n += 1;
        }
    }
    assert!(n > 0, "no seeds for state_kv");
    // The state a kv connection suspends with resumes; any other length is refused.
    let mut ok = 1u32.to_le_bytes().to_vec();
    ok.extend_from_slice(&41u64.to_le_bytes());
    assert!(service.resume(None, &ok[4..], 1).is_ok());
    assert!(service.resume(None, &ok[5..], 1).is_err());
    assert!(service.resume(None, &ok[4..], 2).is_err());
}
