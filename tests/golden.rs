//! Golden vectors: the bytes of format 2.6 (what this build writes) are pinned by committed
//! patches in corpus/golden/v2.6. Inputs are generated here deterministically; the test applies
//! each committed patch to its generated OLD, and re-diffs to check the writer still produces
//! the same bytes. The patches of formats 2.1 to 2.5 (corpus/golden/v2.1 to v2.5, made by
//! earlier builds from the same inputs) must still apply.
//! Regenerate (only for a deliberate format change) with `BUNDELTA_BLESS=1 cargo test golden`.

use std::fs;
use std::path::PathBuf;

use bundelta::{DiffOptions, Patcher};

use crate::util::*;

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpus/golden/v2.6")
}

fn legacy_dir(minor: u8) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("corpus/golden/v2.{minor}"))
}

fn file_inputs() -> (Vec<u8>, Vec<u8>) {
    let mut rng = Rng(0x601d);
    let old = rng.text(20_000);
    let new = rng.edit(&old, 15);
    (old, new)
}

fn dir_inputs() -> (Tree, Tree) {
    let mut rng = Rng(0xd1d1);
    let mut old = Tree::new();
    old.insert("assets".into(), Item::Dir);
    old.insert(
        "assets/app.3f9a1c.js".into(),
        Item::File {
            data: rng.text(12_000),
            exec: false,
        },
    );
    old.insert(
        "assets/logo.svg".into(),
        Item::File {
            data: rng.text(900),
            exec: false,
        },
    );
    old.insert("bin".into(), Item::Dir);
    old.insert(
        "bin/tool".into(),
        Item::File {
            data: rng.text(5_000),
            exec: true,
        },
    );
    old.insert(
        "gone.txt".into(),
        Item::File {
            data: b"deleted in new".to_vec(),
            exec: false,
        },
    );
    old.insert(
        "same.txt".into(),
        Item::File {
            data: b"unchanged".to_vec(),
            exec: false,
        },
    );
    let mut new = old.clone();
    new.remove("gone.txt");
    let app = match new.remove("assets/app.3f9a1c.js") {
        Some(Item::File { data, .. }) => data,
        _ => unreachable!(),
    };
    new.insert(
        "assets/app.b7e210.js".into(),
        Item::File {
            data: rng.edit(&app, 6),
            exec: false,
        },
    );
    new.insert(
        "assets/logo-copy.svg".into(),
        old["assets/logo.svg"].clone(),
    );
    if let Some(Item::File { data, .. }) = new.get_mut("bin/tool") {
        *data = Rng(9).edit(data, 3);
    }
    new.insert("empty".into(), Item::Dir);
    new.insert(
        "empty.txt".into(),
        Item::File {
            data: Vec::new(),
            exec: false,
        },
    );
    new.insert("latest".into(), Item::Link("bin/tool".into()));
    new.insert(
        "new.dat".into(),
        Item::File {
            data: rng.text(3000),
            exec: false,
        },
    );
    (old, new)
}

fn check(name: &str, produced: &[u8]) {
    let path = golden_dir().join(name);
    if std::env::var_os("BUNDELTA_BLESS").is_some() {
        fs::create_dir_all(golden_dir()).unwrap();
        fs::write(&path, produced).unwrap();
    }
    let committed = fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run with BUNDELTA_BLESS=1)", path.display()));
    assert!(
        committed == produced,
        "{name}: the writer no longer produces the committed bytes ({} vs {}); a format change needs a version bump",
        produced.len(),
        committed.len()
    );
}

#[test]
fn golden_file_patch() {
    let (old, new) = file_inputs();
    let patch = DiffOptions::new().diff_bytes(&old, &new).unwrap();
    check("file.bdp", &patch);
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("old"), &old).unwrap();
    Patcher::new()
        .apply(
            dir.path().join("old"),
            golden_dir().join("file.bdp"),
            dir.path().join("out"),
        )
        .unwrap();
    assert_eq!(fs::read(dir.path().join("out")).unwrap(), new);
}

#[test]
fn golden_dir_patch() {
    let (old, new) = dir_inputs();
    let dir = tempfile::tempdir().unwrap();
    write_tree(&dir.path().join("old"), &old);
    write_tree(&dir.path().join("new"), &new);
    let (patch, stats) = DiffOptions::new()
        .diff_paths(dir.path().join("old"), dir.path().join("new"))
        .unwrap();
    assert_eq!(
        (stats.unchanged, stats.copied, stats.modified, stats.deleted),
        (2, 1, 2, 2),
        "{stats:?}"
    );
    let h = bundelta::format::Header::decode(&patch).unwrap();
    assert_eq!(stats.apply_memory, bundelta::memory_needed(&h));
    check("dir.bdp", &patch);
    Patcher::new()
        .apply(
            dir.path().join("old"),
            golden_dir().join("dir.bdp"),
            dir.path().join("out"),
        )
        .unwrap();
    assert_eq!(read_tree(&dir.path().join("out")), new);
}

/// A signed patch (Ed25519 signatures are deterministic): the signature block's place and the
/// signed message are pinned, and the applier takes it only with the right public key.
#[test]
fn golden_signed_patch() {
    let (old, new) = file_inputs();
    let secret = bundelta::SecretKey::from_bytes([0x42u8; 32]);
    let mut opts = DiffOptions::new();
    opts.sign_with(secret.clone());
    let patch = opts.diff_bytes(&old, &new).unwrap();
    check("signed.bdp", &patch);
    // Signing at diff time and signing the unsigned patch afterwards give the same bytes.
    let unsigned = DiffOptions::new().diff_bytes(&old, &new).unwrap();
    assert_eq!(bundelta::sign_patch(&unsigned, &secret).unwrap(), patch);
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("old"), &old).unwrap();
    let golden = golden_dir().join("signed.bdp");
    let mut wrong = Patcher::new();
    wrong.require_signature(bundelta::SecretKey::from_bytes([0x43u8; 32]).public_key());
    let e = wrong
        .apply(dir.path().join("old"), &golden, dir.path().join("out"))
        .unwrap_err();
    assert!(matches!(e, bundelta::Error::Signature { .. }), "{e}");
    assert!(!dir.path().join("out").exists());
    let mut right = Patcher::new();
    right.require_signature(secret.public_key());
    right
        .apply(dir.path().join("old"), &golden, dir.path().join("out"))
        .unwrap();
    assert_eq!(fs::read(dir.path().join("out")).unwrap(), new);
}

/// An x86-64 program whose new version inserts a function and grows its data: the patch uses
/// reference prediction (delta transform 1, header flag FLAG_EXE_REFS), so its parameters'
/// encoding and the prediction itself are pinned.
#[test]
fn golden_exe_patch() {
    let (old, new) = crate::exe::golden_exe_inputs();
    let patch = DiffOptions::new().diff_bytes(&old, &new).unwrap();
    let h = bundelta::format::Header::decode(&patch).unwrap();
    assert_ne!(h.flags & bundelta::format::FLAG_EXE_REFS, 0);
    check("exe.bdp", &patch);
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("old"), &old).unwrap();
    Patcher::new()
        .apply(
            dir.path().join("old"),
            golden_dir().join("exe.bdp"),
            dir.path().join("out"),
        )
        .unwrap();
    assert_eq!(fs::read(dir.path().join("out")).unwrap(), new);
}

/// A gzip file whose new version changes a few lines: the patch uses the inflate transform
/// (delta transform 2, header flag FLAG_INFLATE), so both recipes' encoding and the
/// recompression are pinned. The member is made by zlib (level 9, as `gzip -9` and Python's
/// gzip module by default), with a file name.
#[test]
fn golden_gzip_patch() {
    let (old, new) = gzip_inputs();
    let patch = DiffOptions::new().diff_bytes(&old, &new).unwrap();
    let h = bundelta::format::Header::decode(&patch).unwrap();
    assert_ne!(h.flags & bundelta::format::FLAG_INFLATE, 0);
    check("gzip.bdp", &patch);
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("old"), &old).unwrap();
    Patcher::new()
        .apply(
            dir.path().join("old"),
            golden_dir().join("gzip.bdp"),
            dir.path().join("out"),
        )
        .unwrap();
    assert_eq!(fs::read(dir.path().join("out")).unwrap(), new);
}

/// A gzip file that zlib wrote with a sync flush every 20,000 bytes (no parameter set makes it
/// again): the patch rebuilds its stream from its token structure (section 4.3.1), with
/// predicted blocks and the empty stored blocks of the flushes, so the structure's encoding,
/// both recipes' token segments, the prediction and the encoder are pinned.
#[test]
fn golden_tokens_patch() {
    let (old, new) = tokens_inputs();
    golden_pair("tokens.bdp", &old, &new);
}

/// A gzip file that miniz_oxide wrote (level 6, as Rust's `flate2` and `zip` crates do): the
/// patch makes its stream again with miniz (target segment kind 3).
#[test]
fn golden_miniz_patch() {
    let mut rng = Rng(0x3172);
    let a = rng.text(30_000);
    let b = rng.edit(&a, 4);
    let old = crate::inflate::gzip_member(&a, None, 15, Some("notes.txt"));
    let new = crate::inflate::gzip_member(&b, None, 15, Some("notes.txt"));
    golden_pair("miniz.bdp", &old, &new);
}

/// A zip file (zlib level 6 entries and a stored one) whose new version edits one entry and
/// inserts another: the target recipe's unchanged headers and streams are copy runs of the
/// source recipe's segments (kind 4, minor 6).
#[test]
fn golden_zip_patch() {
    let (old, new) = zip_inputs();
    golden_pair("zip.bdp", &old, &new);
}

/// OLD and NEW of the zip vector.
pub fn zip_inputs() -> (Vec<u8>, Vec<u8>) {
    let mut rng = Rng(0x21b6);
    let texts: Vec<Vec<u8>> = (0..8).map(|k| rng.text(3_000 + k * 500)).collect();
    let names: Vec<String> = (0..8).map(|k| format!("pkg/mod_{k}.py")).collect();
    let entries = |t: &[Vec<u8>]| -> Vec<(String, Vec<u8>, Option<u32>)> {
        (0..8)
            .map(|k| (names[k].clone(), t[k].clone(), (k != 6).then_some(6)))
            .collect()
    };
    let old = entries(&texts);
    let mut new = old.clone();
    new[2].1 = rng.edit(&texts[2], 3);
    new.insert(5, ("pkg/added.py".into(), rng.text(2_500), Some(6)));
    let zip = |e: &[(String, Vec<u8>, Option<u32>)]| {
        let v: Vec<(&str, &[u8], Option<u32>)> = e
            .iter()
            .map(|(n, t, l)| (n.as_str(), t.as_slice(), *l))
            .collect();
        crate::inflate::zip_file(&v)
    };
    (zip(&old), zip(&new))
}

/// Pin `name` as the patch from `old` to `new`, and check that it applies (and that the
/// oracle agrees).
fn golden_pair(name: &str, old: &[u8], new: &[u8]) {
    let patch = DiffOptions::new().diff_bytes(old, new).unwrap();
    check(name, &patch);
    assert_eq!(
        naive_apply(&crate::inflate::file_tree(old), &patch),
        crate::inflate::file_tree(new)
    );
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("old"), old).unwrap();
    Patcher::new()
        .apply(
            dir.path().join("old"),
            golden_dir().join(name),
            dir.path().join("out"),
        )
        .unwrap();
    assert_eq!(fs::read(dir.path().join("out")).unwrap(), new);
}

/// OLD and NEW of the token vector: gzip members that zlib (level 6) wrote with a sync flush
/// every 20,000 bytes.
pub fn tokens_inputs() -> (Vec<u8>, Vec<u8>) {
    let mut rng = Rng(0x70c5);
    let a = rng.text(50_000);
    let b = rng.edit(&a, 4);
    let g = |t: &[u8]| {
        let mut z = vec![0x1F, 0x8B, 8, 0, 0, 0, 0, 0, 0, 3];
        z.extend_from_slice(&crate::inflate::zlib_with_flushes(t, 6, 20_000));
        z.extend_from_slice(&[0; 8]);
        z
    };
    (g(&a), g(&b))
}

/// OLD and NEW of the gzip vector.
pub fn gzip_inputs() -> (Vec<u8>, Vec<u8>) {
    let mut rng = Rng(0x6219);
    let a = rng.text(30_000);
    let b = rng.edit(&a, 4);
    (
        crate::inflate::gzip_member(&a, Some(9), 15, Some("notes.txt")),
        crate::inflate::gzip_member(&b, Some(9), 15, Some("notes.txt")),
    )
}

/// Patches written by format 2.1 builds (absolute sizes, 4-bit base tags), 2.2 builds
/// (before reference prediction), 2.3 builds (before the inflate transform), 2.4 builds
/// (before token structures) and 2.5 builds (before copy runs) still apply and verify: a
/// reader takes every minor of its major.
#[test]
fn golden_older_minors_still_apply() {
    for minor in [1u8, 2, 3, 4, 5] {
        older_minor_applies(minor);
    }
    // The 2.4 gzip vector, with the inflate transform.
    let (old, new) = gzip_inputs();
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("old"), &old).unwrap();
    Patcher::new()
        .apply(
            dir.path().join("old"),
            legacy_dir(4).join("gzip.bdp"),
            dir.path().join("out"),
        )
        .unwrap();
    assert_eq!(fs::read(dir.path().join("out")).unwrap(), new);
    // The 2.3 executable vector, with reference prediction.
    let (old, new) = crate::exe::golden_exe_inputs();
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("old"), &old).unwrap();
    Patcher::new()
        .apply(
            dir.path().join("old"),
            legacy_dir(3).join("exe.bdp"),
            dir.path().join("out"),
        )
        .unwrap();
    assert_eq!(fs::read(dir.path().join("out")).unwrap(), new);
}

fn older_minor_applies(minor: u8) {
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = file_inputs();
    fs::write(dir.path().join("old"), &old).unwrap();
    for name in ["file.bdp", "signed.bdp"] {
        let p = legacy_dir(minor).join(name);
        let h = bundelta::format::Header::decode(&fs::read(&p).unwrap()).unwrap();
        assert_eq!(h.minor, minor, "{name}");
        assert_eq!(
            h.flags & bundelta::format::FLAG_RELATIVE_SIZES != 0,
            minor >= 2,
            "{name}"
        );
        let out = dir.path().join(format!("out-{name}"));
        let mut patcher = Patcher::new();
        if name == "signed.bdp" {
            patcher.require_signature(bundelta::SecretKey::from_bytes([0x42u8; 32]).public_key());
        }
        patcher.apply(dir.path().join("old"), &p, &out).unwrap();
        assert_eq!(fs::read(&out).unwrap(), new, "{name}");
    }
    let (old, new) = dir_inputs();
    write_tree(&dir.path().join("old-tree"), &old);
    let p = legacy_dir(minor).join("dir.bdp");
    assert_eq!(
        bundelta::format::Header::decode(&fs::read(&p).unwrap())
            .unwrap()
            .minor,
        minor
    );
    Patcher::new()
        .apply(dir.path().join("old-tree"), &p, dir.path().join("out-tree"))
        .unwrap();
    assert_eq!(read_tree(&dir.path().join("out-tree")), new);
}

/// The update index (FORMAT.md section 9): the writer's bytes for a fixed index, and their
/// signature under the key of 32 bytes 0x42, are pinned in corpus/golden/index-v1; the
/// committed pair verifies and parses back to the same index.
#[test]
#[cfg(feature = "release")]
fn golden_update_index() {
    use bundelta::release::{sign_index, verify_index, Blob, Index, PatchRef, Release};
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpus/golden/index-v1");
    let hex = |c: u8| bundelta::hex(&[c; 32]);
    let mut ix = Index::new("example-app", true);
    ix.version = 7;
    ix.expires = 1_900_000_000;
    let release = |v: &str, d: u8, full: u8| {
        let blob = Blob {
            blake3: hex(full),
            bytes: 300_000,
        };
        Release::new(v, hex(d), 1_048_576, blob)
    };
    ix.releases.push(release("1.0.0", 0x10, 0x11));
    let mut r = release("1.1.0", 0x20, 0x21);
    r.patches.push(PatchRef {
        from: hex(0x10),
        blake3: hex(0x22),
        bytes: 2_048,
    });
    r.notes = "Fixes the crash on start.\nFaster sync.".into();
    r.mandatory = true;
    r.requires = Some("1.0.0".into());
    r.min_app = Some("2.1".into());
    r.rollout = 25;
    ix.releases.push(r);
    let mut y = release("1.1.1", 0x30, 0x31);
    y.yanked = true;
    y.max_app = Some("3".into());
    ix.releases.push(y);
    let bytes = ix.to_bytes();
    let key = bundelta::SecretKey::from_bytes([0x42; 32]);
    let sig = sign_index(&bytes, &key);
    if std::env::var_os("BUNDELTA_BLESS").is_some() {
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("index.json"), &bytes).unwrap();
        fs::write(dir.join("index.json.sig"), &sig).unwrap();
    }
    let committed = fs::read(dir.join("index.json")).expect("run with BUNDELTA_BLESS=1");
    let committed_sig = fs::read(dir.join("index.json.sig")).unwrap();
    assert_eq!(
        committed, bytes,
        "the index writer changed: a schema change needs a version"
    );
    assert_eq!(committed_sig, sig.as_bytes());
    verify_index(&committed, &committed_sig, &key.public_key()).unwrap();
    assert_eq!(Index::parse(&committed).unwrap(), ix);
}
