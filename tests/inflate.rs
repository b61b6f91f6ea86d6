//! Transform 2, inflate: gzip files diffed between their inflated contents and deflated again
//! on apply, bit-exact. The files are made here with zlib through flate2 (the same stock zlib
//! as Python's gzip module and GNU gzip's settings), and with another encoder (miniz_oxide) whose
//! streams zlib does not reproduce.

use std::fs;

use bundelta::format::{EntryKind, FileOp};
use bundelta::format::{Header, FLAG_INFLATE, INFLATE_MEMORY_TOTAL, TRANSFORM_INFLATE};
use bundelta::{DiffOptions, Patcher};

use crate::util::*;

/// One gzip member: header (with a file name when given), raw deflate of `plain` by zlib at
/// `level` with a `2^wbits` window (or by miniz_oxide when `level` is `None`), CRC-32, size.
pub fn gzip_member(plain: &[u8], level: Option<u32>, wbits: u8, name: Option<&str>) -> Vec<u8> {
    let xfl = match level {
        Some(9) => 2,
        Some(1) => 4,
        _ => 0,
    };
    let mut g = vec![
        0x1F,
        0x8B,
        8,
        if name.is_some() { 8 } else { 0 },
        0,
        0,
        0,
        0,
        xfl,
        3,
    ];
    if let Some(n) = name {
        g.extend_from_slice(n.as_bytes());
        g.push(0);
    }
    match level {
        Some(l) => g.extend_from_slice(&zlib_deflate(plain, l, wbits)),
        None => g.extend_from_slice(&miniz_oxide::deflate::compress_to_vec(plain, 6)),
    }
    let mut crc = flate2::Crc::new();
    crc.update(plain);
    g.extend_from_slice(&crc.sum().to_le_bytes());
    g.extend_from_slice(&(plain.len() as u32).to_le_bytes());
    g
}

fn transforms(old: &[u8], patch: &[u8]) -> Vec<u8> {
    manifest_of(&file_tree(old), patch)
        .entries
        .iter()
        .filter_map(|e| match &e.kind {
            EntryKind::File {
                op: FileOp::Delta { transform, .. },
                ..
            } => Some(*transform),
            _ => None,
        })
        .collect()
}

fn roundtrip(old: &[u8], new: &[u8]) -> Vec<u8> {
    let patch = DiffOptions::new().diff_bytes(old, new).unwrap();
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("old"), old).unwrap();
    fs::write(dir.path().join("p"), &patch).unwrap();
    let report = Patcher::new()
        .apply(
            dir.path().join("old"),
            dir.path().join("p"),
            dir.path().join("out"),
        )
        .unwrap();
    assert_eq!(fs::read(dir.path().join("out")).unwrap(), new);
    assert_eq!(report.bytes, new.len() as u64);
    // No scratch file is left beside the output.
    let mut names: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["old", "out", "p"]);
    patch
}

fn pair(seed: u64, n: usize, edits: usize) -> (Vec<u8>, Vec<u8>) {
    let mut rng = Rng(seed);
    let old = rng.text(n);
    let new = rng.edit(&old, edits);
    (old, new)
}

#[test]
fn gzip_pairs_at_every_level_apply_bit_exact_and_shrink() {
    let (a, b) = pair(11, 300_000, 12);
    for level in 1..=9 {
        for wbits in [15, 11] {
            let old = gzip_member(&a, Some(level), wbits, Some("data.txt"));
            let new = gzip_member(&b, Some(level), wbits, Some("data.txt"));
            let patch = roundtrip(&old, &new);
            let h = Header::decode(&patch).unwrap();
            assert_ne!(h.flags & FLAG_INFLATE, 0, "level {level} wbits {wbits}");
            assert_eq!(transforms(&old, &patch), [TRANSFORM_INFLATE]);
            assert_eq!(
                bundelta::memory_needed(&h),
                bundelta::memory_needed(&Header {
                    flags: h.flags & !FLAG_INFLATE,
                    ..h.clone()
                }) + INFLATE_MEMORY_TOTAL
            );
            shrinks_and_oracle_agrees(
                &old,
                &new,
                &patch,
                10,
                &format!("level {level} wbits {wbits}"),
            );
        }
    }
}

#[test]
fn multi_member_gzip_with_a_stream_zlib_cannot_make() {
    let (a, b) = pair(12, 120_000, 5);
    let (c, d) = pair(13, 90_000, 5);
    let (e, f) = pair(14, 60_000, 3);
    let mut old = gzip_member(&a, Some(6), 15, None);
    old.extend(gzip_member(&c, None, 15, None));
    old.extend(gzip_member(&e, Some(9), 15, Some("z")));
    let mut new = gzip_member(&b, Some(6), 15, None);
    new.extend(gzip_member(&d, None, 15, None));
    new.extend(gzip_member(&f, Some(9), 15, Some("z")));
    new.extend_from_slice(b"\0\0trailing bytes after the last member");
    let patch = roundtrip(&old, &new);
    assert_eq!(transforms(&old, &patch), [TRANSFORM_INFLATE]);
    // The miniz member is rebuilt from its token structure, the others by zlib.
    shrinks_and_oracle_agrees(&old, &new, &patch, 10, "multi-member");
}

#[test]
fn miniz_streams_are_made_again_by_miniz() {
    // miniz's fast matching (level 1: made whole here, which feeding it in pieces does not
    // always make again, so it may take a token structure), its default and its slowest (10),
    // and fixed-code blocks (a tiny member). Its stored blocks (level 0) diff well as they are.
    for level in [1u8, 6, 10] {
        let (a, b) = pair(15 + u64::from(level), 80_000, 4);
        let z = |t: &[u8]| {
            let mut g = vec![0x1F, 0x8B, 8, 0, 0, 0, 0, 0, 0, 3];
            g.extend_from_slice(&miniz_oxide::deflate::compress_to_vec(t, level));
            g.extend_from_slice(&[0; 8]);
            g
        };
        let (old, new) = (z(&a), z(&b));
        let patch = roundtrip(&old, &new);
        assert_eq!(
            transforms(&old, &patch),
            [TRANSFORM_INFLATE],
            "level {level}"
        );
        // Level 10's blocks are cut where its buffer fills, so after an edit every later block
        // header differs (1,683 bytes against 9,643 without the transform).
        let factor = if level == 10 { 4 } else { 10 };
        shrinks_and_oracle_agrees(&old, &new, &patch, factor, &format!("miniz level {level}"));
    }
    let small = |t: &[u8]| gzip_member(t, None, 15, None);
    let (old, new) = (
        small(b"short text, short text"),
        small(b"short text, short test"),
    );
    assert_eq!(
        naive_apply(&file_tree(&old), &roundtrip(&old, &new)),
        file_tree(&new)
    );
}

/// Raw deflate by zlib at `level` with a sync flush every `every` input bytes (as streaming
/// writers and some gzip tools make: an empty stored block after each flush). No parameter
/// search reproduces it; its blocks' code tables are zlib's, so the token structure stores
/// them predicted.
pub fn zlib_with_flushes(plain: &[u8], level: u32, every: usize) -> Vec<u8> {
    let mut c = flate2::Compress::new(flate2::Compression::new(level), false);
    let mut out = Vec::with_capacity(plain.len() + 1024);
    for (k, piece) in plain.chunks(every).enumerate() {
        let last = (k + 1) * every >= plain.len();
        let flush = if last {
            flate2::FlushCompress::Finish
        } else {
            flate2::FlushCompress::Sync
        };
        let start = c.total_in() as usize;
        loop {
            out.reserve(64 << 10);
            let done = c.total_in() as usize - start;
            let st = c.compress_vec(&piece[done..], &mut out, flush).unwrap();
            if st == flate2::Status::StreamEnd
                || (!last
                    && c.total_in() as usize - start == piece.len()
                    && out.capacity() > out.len())
            {
                break;
            }
        }
    }
    out
}

#[test]
fn zlib_streams_with_flushes_are_rebuilt_with_predicted_tables() {
    let (a, b) = pair(31, 400_000, 6);
    let g = |t: &[u8]| {
        let mut z = vec![0x1F, 0x8B, 8, 0, 0, 0, 0, 0, 0, 3];
        z.extend_from_slice(&zlib_with_flushes(t, 6, 50_000));
        z.extend_from_slice(&[0; 8]);
        z
    };
    let (old, new) = (g(&a), g(&b));
    assert_eq!(
        miniz_oxide::inflate::decompress_to_vec(&new[10..new.len() - 8]).unwrap(),
        b
    );
    let patch = roundtrip(&old, &new);
    assert_eq!(transforms(&old, &patch), [TRANSFORM_INFLATE]);
    shrinks_and_oracle_agrees(&old, &new, &patch, 10, "zlib with sync flushes");
}

#[test]
fn not_taken_when_it_does_not_pay_or_does_not_apply() {
    let (a, b) = pair(15, 80_000, 4);
    // A gzip file against a file that is not one: a plain delta (or an add).
    let g = gzip_member(&b, Some(6), 15, None);
    let p = roundtrip(&a, &g);
    assert_eq!(Header::decode(&p).unwrap().flags & FLAG_INFLATE, 0);
    // A truncated gzip file is not parsed.
    let p = roundtrip(&g[..g.len() - 20], &g);
    assert_eq!(Header::decode(&p).unwrap().flags & FLAG_INFLATE, 0);
}

#[test]
fn gzip_files_in_a_directory_bundle() {
    let (a, b) = pair(16, 200_000, 6);
    let mut old = Tree::new();
    old.insert("pkg".into(), Item::Dir);
    old.insert(
        "pkg/data.json.gz".into(),
        Item::File {
            data: gzip_member(&a, Some(9), 15, None),
            exec: false,
        },
    );
    old.insert(
        "pkg/readme".into(),
        Item::File {
            data: b"hello".to_vec(),
            exec: false,
        },
    );
    let mut new = old.clone();
    new.insert(
        "pkg/data.json.gz".into(),
        Item::File {
            data: gzip_member(&b, Some(9), 15, None),
            exec: false,
        },
    );
    let (dir, patch) = write_case(&old, &new, None);
    assert_ne!(Header::decode(&patch).unwrap().flags & FLAG_INFLATE, 0);
    assert!(patch.len() < 2_000, "{}", patch.len());
    fs::write(dir.path().join("p"), &patch).unwrap();
    Patcher::new()
        .apply(
            dir.path().join("old"),
            dir.path().join("p"),
            dir.path().join("out"),
        )
        .unwrap();
    assert_eq!(read_tree(&dir.path().join("out")), new);
    assert_eq!(naive_apply(&old, &patch), new);
    // Nothing left beside the output.
    let mut names: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["new", "old", "out", "p", "p.bdp"]);
}

#[test]
fn inflate_patches_are_deterministic_across_thread_counts() {
    let (a, b) = pair(17, 400_000, 9);
    let old = gzip_member(&a, Some(6), 15, None);
    let new = gzip_member(&b, Some(6), 15, None);
    let one = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap()
        .install(|| DiffOptions::new().diff_bytes(&old, &new).unwrap());
    let two = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap()
        .install(|| DiffOptions::new().diff_bytes(&old, &new).unwrap());
    assert_eq!(one, two);
}

/// `patch` (from `old` to `new`) is more than `factor` times smaller than the patch made
/// without the transform, and the naive applier rebuilds `new` from it.
fn shrinks_and_oracle_agrees(old: &[u8], new: &[u8], patch: &[u8], factor: usize, case: &str) {
    let plain = DiffOptions::new()
        .inflate(false)
        .diff_bytes(old, new)
        .unwrap();
    assert!(
        patch.len() < plain.len() / factor,
        "{case}: {} vs {} without the transform",
        patch.len(),
        plain.len()
    );
    assert_eq!(
        naive_apply(&file_tree(old), patch),
        file_tree(new),
        "{case}"
    );
}

/// A single-file bundle of `data`.
pub fn file_tree(data: &[u8]) -> Tree {
    let mut t = Tree::new();
    t.insert(
        String::new(),
        Item::File {
            data: data.to_vec(),
            exec: false,
        },
    );
    t
}

/// A zip file of `entries` (name, content, zlib level or `None` for stored), with a data
/// descriptor on every other deflated entry, an archive comment, and 8 bytes of padding in the
/// first entry's extra field (as zipalign writes).
pub fn zip_file(entries: &[(&str, &[u8], Option<u32>)]) -> Vec<u8> {
    let mut z = Vec::new();
    let mut cd = Vec::new();
    for (k, (name, data, level)) in entries.iter().enumerate() {
        let (method, body) = match level {
            Some(l) => (8u16, zlib_deflate(data, *l, 15)),
            None => (0u16, data.to_vec()),
        };
        let mut crc = flate2::Crc::new();
        crc.update(data);
        let descriptor = method == 8 && k % 2 == 1;
        let flags: u16 = if descriptor { 8 } else { 0 };
        let extra: &[u8] = if k == 0 {
            &[0xFE, 0xCA, 4, 0, 0, 0, 0, 0]
        } else {
            &[]
        };
        let local = z.len() as u32;
        let (lcrc, lc, lu) = if descriptor {
            (0, 0, 0)
        } else {
            (crc.sum(), body.len() as u32, data.len() as u32)
        };
        z.extend_from_slice(&0x0403_4B50u32.to_le_bytes());
        z.extend_from_slice(&20u16.to_le_bytes());
        z.extend_from_slice(&flags.to_le_bytes());
        z.extend_from_slice(&method.to_le_bytes());
        z.extend_from_slice(&[0, 0, 0x21, 0]);
        z.extend_from_slice(&lcrc.to_le_bytes());
        z.extend_from_slice(&lc.to_le_bytes());
        z.extend_from_slice(&lu.to_le_bytes());
        z.extend_from_slice(&(name.len() as u16).to_le_bytes());
        z.extend_from_slice(&(extra.len() as u16).to_le_bytes());
        z.extend_from_slice(name.as_bytes());
        z.extend_from_slice(extra);
        z.extend_from_slice(&body);
        if descriptor {
            z.extend_from_slice(&0x0807_4B50u32.to_le_bytes());
            z.extend_from_slice(&crc.sum().to_le_bytes());
            z.extend_from_slice(&(body.len() as u32).to_le_bytes());
            z.extend_from_slice(&(data.len() as u32).to_le_bytes());
        }
        cd.extend_from_slice(&0x0201_4B50u32.to_le_bytes());
        cd.extend_from_slice(&[20, 3, 20, 0]);
        cd.extend_from_slice(&flags.to_le_bytes());
        cd.extend_from_slice(&method.to_le_bytes());
        cd.extend_from_slice(&[0, 0, 0x21, 0]);
        cd.extend_from_slice(&crc.sum().to_le_bytes());
        cd.extend_from_slice(&(body.len() as u32).to_le_bytes());
        cd.extend_from_slice(&(data.len() as u32).to_le_bytes());
        cd.extend_from_slice(&(name.len() as u16).to_le_bytes());
        cd.extend_from_slice(&[0; 8]);
        cd.extend_from_slice(&[0, 0, 0xA4, 0x81]);
        cd.extend_from_slice(&local.to_le_bytes());
        cd.extend_from_slice(name.as_bytes());
    }
    let cd_off = z.len() as u32;
    z.extend_from_slice(&cd);
    z.extend_from_slice(&0x0605_4B50u32.to_le_bytes());
    z.extend_from_slice(&[0; 4]);
    z.extend_from_slice(&(entries.len() as u16).to_le_bytes());
    z.extend_from_slice(&(entries.len() as u16).to_le_bytes());
    z.extend_from_slice(&(cd.len() as u32).to_le_bytes());
    z.extend_from_slice(&cd_off.to_le_bytes());
    let comment = b"made by the tests";
    z.extend_from_slice(&(comment.len() as u16).to_le_bytes());
    z.extend_from_slice(comment);
    z
}

#[test]
fn zip_pairs_apply_bit_exact_and_shrink() {
    let mut rng = Rng(21);
    let texts: Vec<Vec<u8>> = (0..40).map(|k| rng.text(2_000 + k * 1_500)).collect();
    let edited: Vec<Vec<u8>> = texts
        .iter()
        .enumerate()
        .map(|(k, t)| {
            if k % 7 == 3 {
                rng.edit(t, 2)
            } else {
                t.clone()
            }
        })
        .collect();
    let names: Vec<String> = (0..40).map(|k| format!("pkg/module_{k:02}.py")).collect();
    let level = |k: usize| match k % 10 {
        0 => None,
        _ => Some(6),
    };
    let side = |t: &[Vec<u8>]| {
        let e: Vec<(&str, &[u8], Option<u32>)> = (0..40)
            .map(|k| (names[k].as_str(), t[k].as_slice(), level(k)))
            .collect();
        zip_file(&e)
    };
    let (old, new) = (side(&texts), side(&edited));
    let patch = roundtrip(&old, &new);
    assert_eq!(transforms(&old, &patch), [TRANSFORM_INFLATE]);
    shrinks_and_oracle_agrees(&old, &new, &patch, 4, "zip");
    // A change outside every stream is cheaper as a plain delta (no recipes to carry).
    let mut z = new.clone();
    let n = z.len();
    z[n - 3] ^= 1; // a comment byte: still a zip
    assert_eq!(transforms(&new, &roundtrip(&new, &z)), [0]);
}

#[test]
fn zips_stored_in_a_zip_are_diffed_inside() {
    // A Spring Boot style jar: the libraries' jars stored (method 0) in the outer one, with
    // their own entries deflated.
    let mut rng = Rng(0x5b00);
    let texts: Vec<Vec<u8>> = (0..6).map(|k| rng.text(12_000 + k * 2_000)).collect();
    let mut edited = texts.clone();
    edited[1] = rng.edit(&texts[1], 2);
    edited[4] = rng.edit(&texts[4], 1);
    let inner = |t: &[Vec<u8>], from: usize| {
        let names: Vec<String> = (from..from + 3)
            .map(|k| format!("lib/C{k}.class"))
            .collect();
        let e: Vec<(&str, &[u8], Option<u32>)> = (0..3)
            .map(|k| (names[k].as_str(), t[from + k].as_slice(), Some(6)))
            .collect();
        zip_file(&e)
    };
    let side = |t: &[Vec<u8>]| {
        let (a, b) = (inner(t, 0), inner(t, 3));
        zip_file(&[
            (
                "META-INF/MANIFEST.MF",
                b"Manifest-Version: 1.0\n".as_slice(),
                Some(6),
            ),
            ("BOOT-INF/lib/a.jar", a.as_slice(), None),
            ("BOOT-INF/lib/b.jar", b.as_slice(), None),
        ])
    };
    let (old, new) = (side(&texts), side(&edited));
    let patch = roundtrip(&old, &new);
    assert_eq!(transforms(&old, &patch), [TRANSFORM_INFLATE]);
    // Only the inner streams changed: without reading inside the stored jars, their
    // compressed bytes would be the whole delta.
    shrinks_and_oracle_agrees(&old, &new, &patch, 4, "stored jars");
}
