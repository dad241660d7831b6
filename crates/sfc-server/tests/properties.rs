//! Property tests of the session logic: the entry point of the `session` fuzz target
//! (`fuzz/fuzz_targets/session.rs`), run by `cargo test` on every CI run.
//!
//! Scripts of arbitrary bytes drive the server's real `Conversation`s and `Core`
//! (`sfc_server::testing::session`) over in-memory storage
//! with fault injection and simulated crashes; `common/script.rs` checks the invariants
//! after every step (see there). The fuzzer's seed corpus is generated from
//! [`script::seeds`] (`write_session_fuzz_seeds` below), and every input the fuzzer ever
//! found failing is kept in `fuzz/regressions/session/` and replayed here.
//! (The `decode_requests` target's property is `arbitrary_bytes_never_panic_and_splits_agree`
//! in `crates/sfc-proto/tests/properties.rs`.)
#![cfg(test)]

#[path = "common/script.rs"]
mod script;

use proptest::prelude::*;
use script::{seeds, Sim};
use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

#[test]
fn the_seed_scripts_reach_the_deep_states() {
    for (name, script) in seeds() {
        let stats = Sim::run(&script);
        let count = |code: u16| stats.replies.get(&code).copied().unwrap_or(0);
        assert!(count(1600) >= 1, "{name}: {stats:?}");
        assert!(count(1602) >= 1, "{name}: {stats:?}");
        match name {
            "happy_path" | "streamed_upload" => {
                // The streamed file's first packet is the first request on its
                // connection: a short 1603 answers it (rule S2).
                let expected = if name == "happy_path" { 1 } else { 2 };
                assert_eq!(count(1603), expected, "{name}: {stats:?}");
                assert_eq!(count(1604), 1, "{name}: {stats:?}");
                assert_eq!(count(1607), 0, "{name}: {stats:?}");
            }
            "resend_then_give_up" => assert_eq!(count(1603), 2, "{name}: {stats:?}"),
            "replace_verified_with_database_down" => {
                // v1 stored and confirmed; database down (each of the 5 packets 1607);
                // the commit fails after the rename (undone: 1607); disk full (1607);
                // v5 stored.
                assert_eq!(count(1603), 2, "{name}: {stats:?}");
                assert_eq!(count(1604), 2, "{name}: {stats:?}");
                assert_eq!(count(1607), 7, "{name}: {stats:?}");
            }
            "crash_mid_replacement" => {
                assert_eq!(stats.restarts, 1, "{name}: {stats:?}");
                assert_eq!(count(1605), 1, "{name}: {stats:?}");
                assert!(count(1603) >= 2, "{name}: {stats:?}");
            }
            "broken_uploads" => assert!(count(1607) >= 7, "{name}: {stats:?}"),
            _ => {}
        }
    }
}

#[test]
fn fuzz_regressions_stay_fixed() {
    let dir = fuzz_dir().join("regressions/session");
    let entries = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e} (the regressions moved?)", dir.display()));
    let mut replayed = 0;
    for entry in entries {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let result = std::panic::catch_unwind(|| Sim::run(&data));
        assert!(result.is_ok(), "{} fails again", path.display());
        replayed += 1;
    }
    assert!(replayed > 0, "no regression input in {}", dir.display());
}

/// Writes the seed corpus of the `session` fuzz target:
/// `cargo test -p sfc-server --test properties -- --ignored write_session_fuzz_seeds`.
#[test]
#[ignore]
fn write_session_fuzz_seeds() {
    let dir = fuzz_dir().join("seeds/session");
    std::fs::create_dir_all(&dir).unwrap();
    for (name, script) in seeds() {
        std::fs::write(dir.join(name), script).unwrap();
    }
}

/// The committed seed corpus is what [`seeds`] gives: a change to the script format or
/// to a seed that was not written out (with the ignored test above) fails here.
#[test]
fn committed_session_fuzz_seeds_match_the_scripts() {
    let dir = fuzz_dir().join("seeds/session");
    let mut committed: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    committed.sort();
    let mut expected: Vec<String> = seeds().iter().map(|(name, _)| name.to_string()).collect();
    expected.sort();
    assert_eq!(committed, expected, "the seeds in {}", dir.display());
    for (name, script) in seeds() {
        assert!(
            std::fs::read(dir.join(name)).unwrap() == script,
            "fuzz/seeds/session/{name} differs from seeds(): run the ignored \
             write_session_fuzz_seeds test"
        );
    }
}

fn op_bytes() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..400)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Arbitrary bytes are a valid script: whatever they do, the invariants hold.
    #[test]
    fn arbitrary_scripts_keep_the_invariants(data in op_bytes()) {
        Sim::run(&data);
    }

    /// Seeds with bytes changed, inserted and appended: close to the deep states.
    #[test]
    fn mutated_seed_scripts_keep_the_invariants(
        which in any::<prop::sample::Index>(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..6),
        tail in proptest::collection::vec(any::<u8>(), 0..60),
    ) {
        let all = seeds();
        let mut data = all[which.index(all.len())].1.clone();
        for (at, value, kind) in edits {
            let i = at.index(data.len().max(1));
            match kind {
                0 if i < data.len() => data[i] = value,
                1 => data.insert(i.min(data.len()), value),
                _ if i < data.len() => { data.remove(i); }
                _ => {}
            }
        }
        data.extend(tail);
        Sim::run(&data);
    }
}
