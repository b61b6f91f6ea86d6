//! Fuzz regression replay: every file under `fuzz/regressions/<target>/` goes through the same
//! target body libFuzzer runs (`fuzz/src/<target>.rs`, compiled into this test binary with
//! `#[path]`; those bodies use only `bundelta`, `tempfile`, `zstd`, `blake3`, `liblzma` and
//! `bzip2`, never `libfuzzer-sys`). A panic in any of them fails the test, naming the file.
//! `BUNDELTA_FUZZ_DEBUG=1 cargo test fuzz_regressions -- --nocapture` prints each file and the
//! outcome the target saw.

use std::path::{Path, PathBuf};

#[path = "../fuzz/src/lib.rs"]
#[allow(dead_code)]
mod bundelta_fuzz;

/// A target body: `run(input)`, panicking on a failed check.
type Body = fn(&[u8]);

/// The targets and their bodies, as in `fuzz/fuzz_targets/*.rs`.
const TARGETS: &[(&str, Body)] = &[
    ("header_manifest", bundelta_fuzz::header_manifest::run),
    ("apply_untrusted", bundelta_fuzz::apply_untrusted::run),
    ("dir_apply", bundelta_fuzz::dir_apply::run),
    ("roundtrip", bundelta_fuzz::roundtrip::run),
    ("refs", bundelta_fuzz::refs::run),
    ("inflate", bundelta_fuzz::inflate::run),
    ("tokens", bundelta_fuzz::tokens::run),
    ("archive", bundelta_fuzz::archive::run),
    ("index", bundelta_fuzz::index::run),
];

fn regressions(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/regressions")
        .join(target);
    let mut v: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(rd) => rd
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file())
            .collect(),
        Err(_) => Vec::new(),
    };
    v.sort();
    v
}

#[test]
fn fuzz_regressions_replay_through_the_target_bodies() {
    let mut failed = Vec::new();
    let mut counts = Vec::new();
    for &(target, run) in TARGETS {
        let inputs = regressions(target);
        // Every target has at least one committed input, so the replay path always runs.
        assert!(
            !inputs.is_empty(),
            "fuzz/regressions/{target}/ holds no input"
        );
        for p in &inputs {
            let data = std::fs::read(p).unwrap();
            if bundelta_fuzz::debug() {
                eprintln!("replay {}", p.display());
            }
            if std::panic::catch_unwind(|| run(&data)).is_err() {
                failed.push(p.display().to_string());
            }
        }
        counts.push(format!("{target} {}", inputs.len()));
    }
    eprintln!("fuzz regressions replayed: {}", counts.join(", "));
    assert!(failed.is_empty(), "fuzz regressions failing: {failed:?}");
}
