//! Diff and apply throughput on generated inputs and, when fetched, one corpus pair.
//!
//! ```text
//! cargo bench --bench throughput               # full run (about 2 minutes)
//! cargo bench --bench throughput -- --test     # each benchmark once (what CI runs)
//! cargo bench --bench throughput -- apply      # only the apply group
//! ```
//!
//! Cases (all deterministic):
//! - `small-edits`: 4 MiB of structured records, about 100 scattered edits;
//! - `random`: 1 MiB of random bytes against an unrelated 1 MiB of random bytes;
//! - `pathological`: 2 MiB of long periodic runs whose period grows by one byte in NEW, so
//!   every match is short and shifted (a worst case for suffix-array matching);
//! - `js-bundle-small`: `corpus/data/js-bundle-small/{old,new}` if present (see
//!   `corpus/README.md`), else skipped.
//!
//! `diff` measures `DiffOptions::diff_bytes` with the default options (level 19, default codec
//! and window) on in-memory inputs. `apply` measures `Patcher::apply` from files in a temp dir
//! (`BUNDELTA_BENCH_DIR` overrides where) into a fresh output path per iteration; removing the
//! previous output happens in the untimed setup of `iter_batched`. Apply includes the applier's
//! durability work (fsync/syncfs), so it depends on the file system under the temp dir.
//! Throughput is the size of NEW.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use bundelta::{DiffOptions, Patcher};
use criterion::{
    criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, SamplingMode, Throughput,
};

/// xorshift64*: deterministic and dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            v.extend_from_slice(&self.next().to_le_bytes());
        }
        v.truncate(n);
        v
    }
}

/// 4 MiB of JSON-ish records and a copy with about 100 scattered small edits.
fn small_edits() -> Pair {
    const WORDS: [&str; 12] = [
        "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india",
        "juliet", "kilo", "lima",
    ];
    let mut r = Rng(0x5e11_ed17);
    let mut old = Vec::with_capacity(4 << 20);
    let mut id = 0u64;
    while old.len() < 4 << 20 {
        id += 1 + r.below(3);
        let line = format!(
            "{{\"id\":{id},\"name\":\"{}_{}\",\"score\":{}.{:03},\"tags\":[\"{}\",\"{}\"],\"active\":{}}}\n",
            WORDS[r.below(12) as usize],
            r.below(10_000),
            r.below(100),
            r.below(1000),
            WORDS[r.below(12) as usize],
            WORDS[r.below(12) as usize],
            r.below(2) == 0
        );
        old.extend_from_slice(line.as_bytes());
    }
    old.truncate(4 << 20);
    let mut new = old.clone();
    for _ in 0..100 {
        let at = r.below(new.len() as u64 - 64) as usize;
        match r.below(3) {
            0 => {
                let k = 1 + r.below(24) as usize;
                let ins = r.bytes(k);
                new.splice(at..at, ins);
            }
            1 => {
                new.drain(at..at + 1 + r.below(24) as usize);
            }
            _ => {
                for b in &mut new[at..at + 1 + r.below(8) as usize] {
                    *b = b.wrapping_add(1);
                }
            }
        }
    }
    (old, new)
}

/// 1 MiB of random bytes, and an unrelated 1 MiB.
fn random() -> Pair {
    (Rng(0xa11ce).bytes(1 << 20), Rng(0xb0b).bytes(1 << 20))
}

/// 2 MiB of eight 256 KiB periodic runs; in NEW each run's pattern has one more byte, so the
/// period shifts and matches are short and everywhere.
fn pathological() -> Pair {
    let mut r = Rng(0x9a7);
    let (mut old, mut new) = (Vec::new(), Vec::new());
    for i in 0..8u64 {
        let period = 5 + (i * 11) % 57;
        let pat = r.bytes(period as usize);
        let mut pat2 = pat.clone();
        pat2.insert((period / 2) as usize, r.next() as u8);
        for (out, p) in [(&mut old, &pat), (&mut new, &pat2)] {
            out.extend(p.iter().cycle().take(256 << 10));
        }
    }
    (old, new)
}

/// An OLD and a NEW.
type Pair = (Vec<u8>, Vec<u8>);

/// The corpus pair, when fetched.
fn corpus_pair() -> Option<Pair> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/data/js-bundle-small");
    let old = std::fs::read(dir.join("old")).ok()?;
    let new = std::fs::read(dir.join("new")).ok()?;
    Some((old, new))
}

/// One benchmark case: inputs, their patch (made once, with default options) and its files.
struct Case {
    name: &'static str,
    old: Vec<u8>,
    new: Vec<u8>,
    old_path: PathBuf,
    patch_path: PathBuf,
    /// How long the one untimed diff took (sizes the measurement time).
    diff_time: Duration,
}

struct Cases {
    dir: tempfile::TempDir,
    cases: Vec<Case>,
}

fn cases() -> &'static Cases {
    static CASES: OnceLock<Cases> = OnceLock::new();
    CASES.get_or_init(|| {
        let dir = match std::env::var_os("BUNDELTA_BENCH_DIR") {
            Some(d) => tempfile::tempdir_in(d),
            None => tempfile::tempdir(),
        }
        .expect("create bench temp dir");
        let mut inputs: Vec<(&'static str, Pair)> = vec![
            ("small-edits", small_edits()),
            ("random", random()),
            ("pathological", pathological()),
        ];
        match corpus_pair() {
            Some(p) => inputs.push(("js-bundle-small", p)),
            None => eprintln!(
                "throughput: corpus/data/js-bundle-small missing, skipping it \
                 (python3 corpus/fetch.py --only js-bundle-small)"
            ),
        }
        let cases = inputs
            .into_iter()
            .map(|(name, (old, new))| {
                let t = std::time::Instant::now();
                let patch = DiffOptions::new()
                    .diff_bytes(&old, &new)
                    .expect("diff for the apply benchmark");
                let diff_time = t.elapsed();
                let old_path = dir.path().join(format!("{name}.old"));
                let patch_path = dir.path().join(format!("{name}.bdp"));
                std::fs::write(&old_path, &old).unwrap();
                std::fs::write(&patch_path, &patch).unwrap();
                // Check once, untimed, that the patch rebuilds NEW.
                let out = dir.path().join(format!("{name}.check"));
                Patcher::new().apply(&old_path, &patch_path, &out).unwrap();
                assert!(std::fs::read(&out).unwrap() == new, "{name}: apply != NEW");
                std::fs::remove_file(&out).unwrap();
                eprintln!(
                    "throughput: {name}: old {} B, new {} B, patch {} B",
                    old.len(),
                    new.len(),
                    patch.len()
                );
                Case {
                    name,
                    old,
                    new,
                    old_path,
                    patch_path,
                    diff_time,
                }
            })
            .collect();
        Cases { dir, cases }
    })
}

/// Measurement time of a diff case: room for the 10 samples of one iteration each that flat
/// sampling needs at least (from the untimed diff made for the apply group), at least 3 s.
fn diff_budget(case: &Case) -> Duration {
    (case.diff_time * 12).max(Duration::from_secs(3))
}

fn bench_diff(c: &mut Criterion) {
    let mut g = c.benchmark_group("diff");
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1));
    for case in &cases().cases {
        g.throughput(Throughput::Bytes(case.new.len() as u64));
        g.measurement_time(diff_budget(case));
        g.bench_with_input(BenchmarkId::from_parameter(case.name), case, |b, case| {
            let opts = DiffOptions::new();
            b.iter(|| opts.diff_bytes(&case.old, &case.new).unwrap());
        });
    }
    g.finish();
}

fn bench_apply(c: &mut Criterion) {
    let all = cases();
    let out = all.dir.path().join("out");
    let mut g = c.benchmark_group("apply");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    for case in &all.cases {
        g.throughput(Throughput::Bytes(case.new.len() as u64));
        g.bench_with_input(BenchmarkId::from_parameter(case.name), case, |b, case| {
            let patcher = Patcher::new();
            b.iter_batched(
                // Untimed: OUT must not exist before each apply.
                || {
                    let _ = std::fs::remove_file(&out);
                    out.clone()
                },
                |out| {
                    patcher
                        .apply(&case.old_path, &case.patch_path, &out)
                        .unwrap()
                },
                BatchSize::PerIteration,
            );
        });
    }
    let _ = std::fs::remove_file(&out);
    g.finish();
}

criterion_group!(benches, bench_diff, bench_apply);
criterion_main!(benches);
