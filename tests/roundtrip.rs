//! Round trips (proptest), the oracle, determinism across thread counts.

use std::fs;

use bundelta::{DiffOptions, Patcher};
use proptest::prelude::*;

use crate::util::*;

fn opts_small_chunks() -> DiffOptions {
    let mut o = DiffOptions::new();
    o.level(3).chunk_size(bundelta::MIN_CHUNK_SIZE);
    o
}

fn file_roundtrip(old: &[u8], new: &[u8], o: &DiffOptions) {
    let dir = tempfile::tempdir().unwrap();
    let (po, pn, pp, out) = (
        dir.path().join("old"),
        dir.path().join("new"),
        dir.path().join("p"),
        dir.path().join("out"),
    );
    fs::write(&po, old).unwrap();
    fs::write(&pn, new).unwrap();
    let patch = o.diff_bytes(old, new).unwrap();
    // Same bytes through the path API.
    let (from_paths, _) = o.diff_paths(&po, &pn).unwrap();
    assert_eq!(patch, from_paths);
    fs::write(&pp, &patch).unwrap();
    Patcher::new().apply(&po, &pp, &out).unwrap();
    assert_eq!(fs::read(&out).unwrap(), new);
    // The oracle agrees.
    let mut t = Tree::new();
    t.insert(
        String::new(),
        Item::File {
            data: old.to_vec(),
            exec: false,
        },
    );
    let n = naive_apply(&t, &patch);
    assert_eq!(
        n.get(""),
        Some(&Item::File {
            data: new.to_vec(),
            exec: false
        })
    );
    // Never (much) worse than a full download: the streams are at most the file compressed
    // alone at the same level, give or take the frame overheads of up to three streams.
    let whole = zstd::bulk::compress(new, 3).unwrap().len().min(new.len());
    let data_len = bundelta::format::Header::decode(&patch)
        .unwrap()
        .data_len()
        .unwrap() as usize;
    assert!(
        data_len <= whole + whole / 20 + 40,
        "streams {data_len} vs whole {whole}"
    );
}

fn tree_roundtrip(old: &Tree, new: &Tree, o: &DiffOptions) {
    let dir = tempfile::tempdir().unwrap();
    let (po, pn, pp, out) = (
        dir.path().join("old"),
        dir.path().join("new"),
        dir.path().join("p"),
        dir.path().join("out"),
    );
    write_tree(&po, old);
    write_tree(&pn, new);
    let (patch, _) = o.diff_paths(&po, &pn).unwrap();
    fs::write(&pp, &patch).unwrap();
    let rep = Patcher::new().apply(&po, &pp, &out).unwrap();
    assert_eq!(read_tree(&out), *new);
    assert_eq!(rep.digest, bundelta::bundle_digest(&pn).unwrap());
    assert_eq!(read_tree(&po), *old, "OLD was modified");
    assert_eq!(naive_apply(old, &patch), *new);
    // In place, then a rerun says "already up to date".
    let r = Patcher::new().apply_in_place(&po, &pp).unwrap();
    if old == new {
        assert_eq!(r.outcome, bundelta::InPlaceOutcome::AlreadyUpToDate);
    } else {
        assert!(matches!(r.outcome, bundelta::InPlaceOutcome::Applied(_)));
    }
    assert_eq!(read_tree(&po), *new);
    let r = Patcher::new().apply_in_place(&po, &pp).unwrap();
    assert_eq!(r.outcome, bundelta::InPlaceOutcome::AlreadyUpToDate);
    assert_eq!(listing(dir.path()), vec!["new", "old", "out", "p"]);
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 48,
        failure_persistence: Some(Box::new(proptest::test_runner::FileFailurePersistence::Direct(
            "tests/proptest-regressions.txt",
        ))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn files_roundtrip(seed in any::<u64>(), len in 0usize..20_000, edits in 0usize..30) {
        let mut rng = Rng(seed | 1);
        let old = rng.text(len);
        let new = rng.edit(&old, edits);
        let mut o = opts_small_chunks();
        // Both stream codecs go through the same paths.
        o.codec(if seed % 2 == 0 { bundelta::Codec::Zstd } else { bundelta::Codec::Lzma });
        file_roundtrip(&old, &new, &o);
    }

    #[test]
    fn random_bytes_roundtrip(old in proptest::collection::vec(any::<u8>(), 0..3000),
                              new in proptest::collection::vec(any::<u8>(), 0..3000)) {
        file_roundtrip(&old, &new, &opts_small_chunks());
    }

    #[test]
    fn trees_roundtrip(seed in any::<u64>()) {
        let mut rng = Rng(seed | 1);
        let n = rng.below(14) as usize;
        let old = random_tree(&mut rng, n);
        let new = edit_tree(&mut rng, &old);
        tree_roundtrip(&old, &new, &opts_small_chunks());
    }
}

#[test]
fn tiny_and_boundary_sizes() {
    let o = opts_small_chunks();
    let c = bundelta::MIN_CHUNK_SIZE;
    let mut rng = Rng(7);
    for &n in &[0usize, 1, 2, c - 1, c, c + 1, 2 * c, 2 * c + 1] {
        let old = rng.text(n);
        for &m in &[0usize, 1, n.saturating_sub(1), n, n + 1] {
            let mut new = rng.edit(&old, 3);
            new.resize(m, 7);
            file_roundtrip(&old, &new, &o);
        }
    }
    file_roundtrip(b"", b"", &o);
    file_roundtrip(b"x", b"x", &o);
    file_roundtrip(b"", b"x", &o);
    file_roundtrip(b"x", b"", &o);
}

#[test]
fn renamed_and_edited_chunk_uses_old_file_as_source() {
    let mut rng = Rng(99);
    let body = rng.text(200_000);
    let mut old = Tree::new();
    old.insert("dist".into(), Item::Dir);
    old.insert(
        "dist/app.3f9a1c.js".into(),
        Item::File {
            data: body.clone(),
            exec: false,
        },
    );
    old.insert(
        "dist/vendor.aa11bb.js".into(),
        Item::File {
            data: rng.text(50_000),
            exec: false,
        },
    );
    let mut new = old.clone();
    new.remove("dist/app.3f9a1c.js");
    new.insert(
        "dist/app.b7e210.js".into(),
        Item::File {
            data: rng.edit(&body, 5),
            exec: false,
        },
    );
    let dir = tempfile::tempdir().unwrap();
    write_tree(&dir.path().join("o"), &old);
    write_tree(&dir.path().join("n"), &new);
    let (patch, stats) = DiffOptions::new()
        .diff_paths(dir.path().join("o"), dir.path().join("n"))
        .unwrap();
    assert_eq!(stats.modified, 1, "{stats:?}");
    assert_eq!(stats.unchanged, 1);
    assert!(
        patch.len() < 3_000,
        "renamed file was not diffed against its old version: {} bytes",
        patch.len()
    );
    tree_roundtrip(&old, &new, &DiffOptions::new());
}

#[test]
fn deterministic_across_thread_counts() {
    let mut rng = Rng(2024);
    let old = rng.text(600_000);
    let new = rng.edit(&old, 200);
    let mut told = random_tree(&mut rng, 30);
    told.insert(
        "big.bin".into(),
        Item::File {
            data: old.clone(),
            exec: false,
        },
    );
    let mut tnew = edit_tree(&mut rng, &told);
    tnew.insert(
        "big.bin".into(),
        Item::File {
            data: new.clone(),
            exec: true,
        },
    );
    // An executable, so that reference prediction's choices are covered too.
    let (old_exe, new_exe) = crate::exe::golden_exe_inputs();
    told.insert(
        "bin/prog".into(),
        Item::File {
            data: old_exe,
            exec: true,
        },
    );
    tnew.insert(
        "bin/prog".into(),
        Item::File {
            data: new_exe,
            exec: true,
        },
    );
    for t in [&mut told, &mut tnew] {
        t.insert("bin".into(), Item::Dir);
    }
    let dir = tempfile::tempdir().unwrap();
    write_tree(&dir.path().join("o"), &told);
    write_tree(&dir.path().join("n"), &tnew);
    let mut o = DiffOptions::new();
    o.chunk_size(bundelta::MIN_CHUNK_SIZE).level(5);
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            (
                o.diff_bytes(&old, &new).unwrap(),
                o.diff_paths(dir.path().join("o"), dir.path().join("n"))
                    .unwrap()
                    .0,
            )
        })
    };
    let one = run(1);
    assert_ne!(
        bundelta::format::Header::decode(&one.1).unwrap().flags & bundelta::format::FLAG_EXE_REFS,
        0
    );
    let two = run(2);
    let four = run(4);
    assert_eq!(one, two);
    assert_eq!(one, four);
    assert_eq!(one, run(1), "not reproducible run to run");
}

#[test]
fn unchanged_files_cost_no_hash_each() {
    // 2,000 unchanged files and one change: the manifest holds paths, not 32-byte hashes.
    let mut old = Tree::new();
    old.insert("d".into(), Item::Dir);
    for i in 0..2000 {
        old.insert(
            format!("d/f{i:05}.txt"),
            Item::File {
                data: format!("file {i}").into_bytes(),
                exec: false,
            },
        );
    }
    let mut new = old.clone();
    new.insert(
        "d/f00007.txt".into(),
        Item::File {
            data: b"changed".to_vec(),
            exec: false,
        },
    );
    let dir = tempfile::tempdir().unwrap();
    write_tree(&dir.path().join("o"), &old);
    write_tree(&dir.path().join("n"), &new);
    // Without base tags, the manifest is an edit of OLD's file list: unchanged paths are not
    // even listed.
    let (bare, stats) = DiffOptions::new()
        .base_tags(Some(0))
        .diff_paths(dir.path().join("o"), dir.path().join("n"))
        .unwrap();
    assert_eq!(stats.unchanged, 1999);
    assert!(
        bare.len() < 600,
        "patch is {} bytes for 2000 unchanged files",
        bare.len()
    );
    // By default, each entry of OLD's list (2,001 with the directory) costs its tag's bits
    // (4 here: the streams are tiny) and nothing more.
    let (patch, _) = DiffOptions::new()
        .diff_paths(dir.path().join("o"), dir.path().join("n"))
        .unwrap();
    let tag_bytes = 2001usize.div_ceil(2);
    assert!(
        patch.len() <= bare.len() + tag_bytes + 8,
        "{} bytes with tags, {} without",
        patch.len(),
        bare.len()
    );
    fs::write(dir.path().join("p.bdp"), &patch).unwrap();
    let p = bundelta::Patcher::new()
        .open(dir.path().join("p.bdp"))
        .unwrap();
    assert!(p.relative_manifest().is_some() && p.manifest().is_none());
    // Without OLD, a relative manifest still says what changes.
    let s =
        bundelta::format::Manifest::summarize_relative(p.relative_manifest().unwrap(), p.header())
            .unwrap();
    assert_eq!((s.kept, s.changed, s.dropped, s.inserted), (2000, 1, 0, 0));
    tree_roundtrip(&old, &new, &DiffOptions::new());
}

#[test]
fn many_controls_span_several_blocks() {
    // Thousands of scattered edits give more than one block of controls in one file, in a
    // bundle with other files around it.
    let mut rng = Rng(31337);
    let old = rng.text(400_000);
    let mut new = old.clone();
    for i in (0..new.len()).step_by(37) {
        new[i] = new[i].wrapping_add(1 + (i % 7) as u8);
    }
    let mut o = DiffOptions::new();
    o.level(3);
    let patch = o.diff_bytes(&old, &new).unwrap();
    let h = bundelta::format::Header::decode(&patch).unwrap();
    assert!(h.stream_lens[0] > 0);
    file_roundtrip(&old, &new, &o);
    let mut told = Tree::new();
    told.insert(
        "a.bin".into(),
        Item::File {
            data: old.clone(),
            exec: false,
        },
    );
    told.insert(
        "b.bin".into(),
        Item::File {
            data: rng.text(5000),
            exec: false,
        },
    );
    let mut tnew = told.clone();
    tnew.insert(
        "a.bin".into(),
        Item::File {
            data: new,
            exec: false,
        },
    );
    if let Some(Item::File { data, .. }) = tnew.get_mut("b.bin") {
        *data = Rng(5).edit(data, 10);
    }
    tree_roundtrip(&told, &tnew, &o);
}

/// Every stream codec the format allows is read by the streaming applier, including streams
/// made of several concatenated segments: re-encode a real patch's streams with each codec
/// (split in two segments), reseal it, apply it.
#[test]
fn every_codec_and_segmented_streams_apply() {
    use bundelta::format::{self, Header};
    let mut rng = Rng(4711);
    let old = rng.text(300_000);
    let new = rng.edit(&old, 300);
    let patch = DiffOptions::new().diff_bytes(&old, &new).unwrap();
    let h = Header::decode(&patch).unwrap();
    // Raw streams via the oracle's decoder: decode each stream of the original patch.
    let raw_streams: Vec<Vec<u8>> = (0..3)
        .map(|i| {
            let a = h.stream_offset(i) as usize;
            let bytes = &patch[a..a + h.stream_lens[i] as usize];
            crate::util::decode_stream(h.codecs[i], h.window_log, bytes)
        })
        .collect();
    type Encoder = fn(&[u8]) -> Vec<u8>;
    let encoders: [(u8, Encoder); 4] = [
        (format::CODEC_RAW, |d| d.to_vec()),
        (format::CODEC_ZSTD, |d| zstd::bulk::compress(d, 3).unwrap()),
        (format::CODEC_BZIP2, |d| {
            let mut out = Vec::new();
            std::io::Read::read_to_end(
                &mut bzip2::read::BzEncoder::new(d, bzip2::Compression::fast()),
                &mut out,
            )
            .unwrap();
            out
        }),
        (format::CODEC_LZMA2, crate::util::lzma_encode),
    ];
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("old"), &old).unwrap();
    for (codec, enc) in encoders {
        let mut h2 = h.clone();
        let mut body = Vec::new();
        for (i, raw) in raw_streams.iter().enumerate() {
            let mid = raw.len() / 2;
            let s = if codec == format::CODEC_RAW || raw.is_empty() {
                raw.clone()
            } else {
                [enc(&raw[..mid]), enc(&raw[mid..])].concat()
            };
            h2.codecs[i] = codec;
            h2.stream_lens[i] = s.len() as u64;
            body.extend_from_slice(&s);
        }
        let m_end = h.encoded_len() + h.manifest_len as usize;
        let mut p = h2.encode();
        p.extend_from_slice(&patch[h.encoded_len()..m_end]);
        p.extend_from_slice(&body);
        let t = blake3::hash(&p);
        p.extend_from_slice(t.as_bytes());
        let pp = dir.path().join(format!("p{codec}"));
        let out = dir.path().join(format!("out{codec}"));
        fs::write(&pp, &p).unwrap();
        let mut patcher = Patcher::new();
        patcher.memory_limit(64 << 20);
        patcher
            .apply(dir.path().join("old"), &pp, &out)
            .unwrap_or_else(|e| panic!("codec {codec}: {e}"));
        assert_eq!(fs::read(&out).unwrap(), new, "codec {codec}");
    }
}
