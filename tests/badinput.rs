//! Bad input: truncated and bit-flipped patches, the wrong OLD, an existing OUT, unreadable
//! files, limits. Each gives its error and leaves nothing behind.

use std::fs;

use bundelta::{DiffOptions, Error, Patcher};

use crate::util::*;

struct Case {
    dir: tempfile::TempDir,
    patch: Vec<u8>,
}

impl Case {
    fn p(&self, n: &str) -> std::path::PathBuf {
        self.dir.path().join(n)
    }
}

fn file_case() -> Case {
    let mut rng = Rng(5);
    let old = rng.text(40_000);
    let new = rng.edit(&old, 20);
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("old"), &old).unwrap();
    fs::write(dir.path().join("new"), &new).unwrap();
    let patch = DiffOptions::new().diff_bytes(&old, &new).unwrap();
    Case { dir, patch }
}

fn dir_case() -> Case {
    let mut rng = Rng(6);
    let mut old = random_tree(&mut rng, 10);
    old.insert(
        "keep.txt".into(),
        Item::File {
            data: rng.text(3000),
            exec: false,
        },
    );
    old.insert(
        "mod.bin".into(),
        Item::File {
            data: rng.text(9000),
            exec: false,
        },
    );
    let mut new = old.clone();
    if let Some(Item::File { data, .. }) = new.get_mut("mod.bin") {
        *data = Rng(8).edit(data, 5);
    }
    let dir = tempfile::tempdir().unwrap();
    write_tree(&dir.path().join("old"), &old);
    write_tree(&dir.path().join("new"), &new);
    let (patch, _) = DiffOptions::new()
        .diff_paths(&dir.path().join("old"), &dir.path().join("new"))
        .unwrap();
    Case { dir, patch }
}

/// Apply `bytes` as a patch; it must fail and leave nothing next to `out`.
fn must_fail(c: &Case, bytes: &[u8]) -> Error {
    let pp = c.p("bad.bdp");
    fs::write(&pp, bytes).unwrap();
    let before = listing(c.dir.path());
    let err = Patcher::new()
        .apply(&c.p("old"), &pp, &c.p("out"))
        .expect_err("bad patch accepted");
    assert_eq!(
        listing(c.dir.path()),
        before,
        "something was left behind: {err}"
    );
    assert!(!c.p("out").exists());
    err
}

#[test]
fn truncated_at_every_length_is_rejected() {
    for c in [file_case(), dir_case()] {
        let n = c.patch.len();
        let step = (n / 300).max(1);
        for cut in (0..n).step_by(step).chain([n - 1]) {
            let e = must_fail(&c, &c.patch[..cut]);
            let s = e.to_string();
            assert!(
                s.contains("corrupt patch") || s.contains("checksum"),
                "cut {cut}: {s}"
            );
        }
    }
}

#[test]
fn every_bit_flip_is_rejected() {
    let c = file_case();
    let n = c.patch.len();
    let step = (n / 400).max(1);
    for i in (0..n).step_by(step) {
        for bit in [0u8, 3, 7] {
            let mut b = c.patch.clone();
            b[i] ^= 1 << bit;
            must_fail(&c, &b);
        }
    }
}

#[test]
fn wrong_old_is_refused_before_any_write() {
    let c = file_case();
    fs::write(c.p("p.bdp"), &c.patch).unwrap();
    let mut old = fs::read(c.p("old")).unwrap();
    old[100] ^= 1;
    fs::write(c.p("other"), &old).unwrap();
    let e = Patcher::new()
        .apply(&c.p("other"), &c.p("p.bdp"), &c.p("out"))
        .unwrap_err();
    assert!(matches!(e, Error::WrongBase { .. }), "{e}");
    assert!(
        e.to_string()
            .contains("not the version this patch was made from"),
        "{e}"
    );
    assert!(!c.p("out").exists());

    let d = dir_case();
    fs::write(d.p("p.bdp"), &d.patch).unwrap();
    fs::write(d.p("old/mod.bin"), b"something else").unwrap();
    let e = Patcher::new()
        .apply(&d.p("old"), &d.p("p.bdp"), &d.p("out"))
        .unwrap_err();
    // Named when the manifest lists paths; a manifest relative to OLD's file list sees the
    // changed size in the list first.
    match &e {
        Error::WrongBase { path, reason } => {
            assert!(path == "mod.bin" || reason.contains("file list"), "{e}")
        }
        other => panic!("{other}"),
    }
    // A directory or a symlink where the patch relies on a file: a wrong base, named.
    fs::remove_file(d.p("old/mod.bin")).unwrap();
    fs::create_dir(d.p("old/mod.bin")).unwrap();
    let e = Patcher::new()
        .apply(&d.p("old"), &d.p("p.bdp"), &d.p("out"))
        .unwrap_err();
    assert!(
        matches!(&e, Error::WrongBase { path, reason } if path == "mod.bin" || reason.contains("file list")),
        "{e}"
    );
    fs::remove_dir(d.p("old/mod.bin")).unwrap();
    std::os::unix::fs::symlink("keep.txt", d.p("old/mod.bin")).unwrap();
    let e = Patcher::new()
        .apply(&d.p("old"), &d.p("p.bdp"), &d.p("out"))
        .unwrap_err();
    assert!(
        matches!(&e, Error::WrongBase { path, reason }
            if (path == "mod.bin" && reason.contains("symlink")) || reason.contains("file list")),
        "{e}"
    );
    fs::remove_file(d.p("old/keep.txt")).unwrap();
    // A file patch on a directory, and the reverse.
    let e = Patcher::new()
        .apply(&d.p("old"), &c.p("p.bdp"), &d.p("out"))
        .unwrap_err();
    assert!(matches!(e, Error::WrongBase { .. }), "{e}");
    let e = Patcher::new()
        .apply(&c.p("old"), &d.p("p.bdp"), &d.p("out"))
        .unwrap_err();
    assert!(matches!(e, Error::WrongBase { .. }), "{e}");
}

#[test]
fn existing_output_is_never_overwritten() {
    let c = file_case();
    fs::write(c.p("p.bdp"), &c.patch).unwrap();
    fs::write(c.p("out"), b"precious").unwrap();
    let e = Patcher::new()
        .apply(&c.p("old"), &c.p("p.bdp"), &c.p("out"))
        .unwrap_err();
    assert!(matches!(e, Error::OutputExists { .. }), "{e}");
    assert_eq!(fs::read(c.p("out")).unwrap(), b"precious");
}

#[test]
fn unreadable_inputs_give_named_errors() {
    let c = file_case();
    let e = Patcher::new()
        .apply(&c.p("old"), &c.p("missing.bdp"), &c.p("out"))
        .unwrap_err();
    assert!(e.to_string().contains("missing.bdp"), "{e}");
    fs::write(c.p("p.bdp"), &c.patch).unwrap();
    let e = Patcher::new()
        .apply(&c.p("nope"), &c.p("p.bdp"), &c.p("out"))
        .unwrap_err();
    assert!(e.to_string().contains("nope"), "{e}");
    // Output directory that cannot be written (skip as root, who can write anywhere).
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        let ro = c.p("ro");
        fs::create_dir(&ro).unwrap();
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&ro, fs::Permissions::from_mode(0o555)).unwrap();
        let e = Patcher::new()
            .apply(&c.p("old"), &c.p("p.bdp"), &ro.join("out"))
            .unwrap_err();
        assert!(matches!(e, Error::Io { .. }), "{e}");
    }
}

#[test]
fn memory_and_output_limits_refuse_before_writing() {
    let c = file_case();
    fs::write(c.p("p.bdp"), &c.patch).unwrap();
    let mut p = Patcher::new();
    p.memory_limit(1 << 20);
    let e = p
        .apply(&c.p("old"), &c.p("p.bdp"), &c.p("out"))
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::LimitExceeded {
                what: "apply memory",
                ..
            }
        ),
        "{e}"
    );
    let mut p = Patcher::new();
    p.output_limit(10);
    let e = p
        .apply(&c.p("old"), &c.p("p.bdp"), &c.p("out"))
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::LimitExceeded {
                what: "output size",
                ..
            }
        ),
        "{e}"
    );
    assert!(!c.p("out").exists());
    // A patch made with a bigger window needs a bigger limit.
    let mut o = DiffOptions::new();
    o.window_log(24);
    let big = o
        .diff_bytes(
            &fs::read(c.p("old")).unwrap(),
            &fs::read(c.p("new")).unwrap(),
        )
        .unwrap();
    fs::write(c.p("big.bdp"), &big).unwrap();
    let e = Patcher::new()
        .apply(&c.p("old"), &c.p("big.bdp"), &c.p("out"))
        .unwrap_err();
    assert!(e.to_string().contains("--window-log"), "{e}");
    let mut p = Patcher::new();
    p.memory_limit(64 << 20);
    p.apply(&c.p("old"), &c.p("big.bdp"), &c.p("out")).unwrap();
}

/// Re-seal a patch after editing it (recompute the trailer) so that the structural checks,
/// not the checksum, must catch the damage.
fn reseal(mut b: Vec<u8>) -> Vec<u8> {
    let n = b.len() - 32;
    let h = blake3::hash(&b[..n]);
    b[n..].copy_from_slice(h.as_bytes());
    b
}

#[test]
fn resealed_forgeries_are_rejected_structurally() {
    let c = file_case();
    // Declared manifest length larger than the file.
    let mut b = c.patch.clone();
    b[16] = b[16].wrapping_add(1);
    let e = must_fail(&c, &reseal(b));
    assert!(e.to_string().contains("corrupt patch"), "{e}");
    // Unknown flag, bad window, nonzero reserved byte.
    for (at, v) in [(9usize, 1u8), (12, 40), (14, 7)] {
        let mut b = c.patch.clone();
        b[at] = v;
        must_fail(&c, &reseal(b));
    }
    // Flip bytes inside the data section: a frame or a hash must catch it.
    let n = c.patch.len();
    for i in (n.saturating_sub(32 + 600).max(64)..n - 32).step_by(7) {
        let mut b = c.patch.clone();
        b[i] ^= 0x55;
        must_fail(&c, &reseal(b));
    }
}

#[test]
fn manifest_with_hostile_paths_is_rejected() {
    use bundelta::format::*;
    for bad in [
        "../escape",
        "/abs",
        "a/../../b",
        "a\\b",
        "C:/x",
        "a//b",
        ".",
    ] {
        let m = Manifest {
            entries: vec![Entry {
                path: bad.to_string(),
                kind: EntryKind::Dir,
            }],
            ..Manifest::default()
        };
        let raw = m.encode();
        let h = Header {
            minor: 0,
            flags: FLAG_DIRECTORY,
            window_log: 20,
            codecs: [CODEC_ZSTD; 3],
            manifest_len: 0,
            manifest_raw_len: raw.len() as u64,
            new_total: 0,
            stream_lens: [0; 3],
        };
        assert!(Manifest::decode(&raw, &h).is_err(), "{bad:?} accepted");
    }
    // An entry under a symlink, and a case clash.
    let h = Header {
        minor: 0,
        flags: FLAG_DIRECTORY,
        window_log: 20,
        codecs: [CODEC_ZSTD; 3],
        manifest_len: 0,
        manifest_raw_len: 0,
        new_total: 0,
        stream_lens: [0; 3],
    };
    let m = Manifest {
        entries: vec![
            Entry {
                path: "l".into(),
                kind: EntryKind::Symlink {
                    target: "/etc".into(),
                },
            },
            Entry {
                path: "l/passwd".into(),
                kind: EntryKind::Dir,
            },
        ],
        ..Manifest::default()
    };
    assert!(Manifest::decode(&m.encode(), &h).is_err());
    let m = Manifest {
        entries: vec![
            Entry {
                path: "A".into(),
                kind: EntryKind::Dir,
            },
            Entry {
                path: "a".into(),
                kind: EntryKind::Dir,
            },
        ],
        ..Manifest::default()
    };
    assert!(Manifest::decode(&m.encode(), &h).is_err());
}

#[test]
fn diff_rejects_unrepresentable_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let (o, n) = (dir.path().join("o"), dir.path().join("n"));
    fs::create_dir_all(&o).unwrap();
    fs::create_dir_all(&n).unwrap();
    fs::write(n.join("Readme"), b"1").unwrap();
    fs::write(n.join("README"), b"2").unwrap();
    let e = DiffOptions::new().diff_paths(&o, &n).unwrap_err();
    assert!(e.to_string().contains("only by case"), "{e}");
    fs::remove_file(n.join("README")).unwrap();
    use std::os::unix::ffi::OsStrExt;
    fs::write(n.join(std::ffi::OsStr::from_bytes(b"bad\xffname")), b"x").unwrap();
    let e = DiffOptions::new().diff_paths(&o, &n).unwrap_err();
    assert!(e.to_string().contains("not UTF-8"), "{e}");
    let e = DiffOptions::new()
        .diff_paths(&o, &n.join("Readme"))
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("both be files or both be directories"),
        "{e}"
    );
}
