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
        .diff_paths(dir.path().join("old"), dir.path().join("new"))
        .unwrap();
    Case { dir, patch }
}

/// Apply `bytes` as a patch; it must fail and leave nothing next to `out`.
fn must_fail(c: &Case, bytes: &[u8]) -> Error {
    let pp = c.p("bad.bdp");
    fs::write(&pp, bytes).unwrap();
    let before = listing(c.dir.path());
    let err = Patcher::new()
        .apply(c.p("old"), &pp, c.p("out"))
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
        .apply(c.p("other"), c.p("p.bdp"), c.p("out"))
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
        .apply(d.p("old"), d.p("p.bdp"), d.p("out"))
        .unwrap_err();
    // Named, from the base tags the default options include.
    match &e {
        Error::WrongBase { path, .. } => assert_eq!(path, "mod.bin", "{e}"),
        other => panic!("{other}"),
    }
    // A directory or a symlink where the patch relies on a file: a wrong base, named.
    fs::remove_file(d.p("old/mod.bin")).unwrap();
    fs::create_dir(d.p("old/mod.bin")).unwrap();
    let e = Patcher::new()
        .apply(d.p("old"), d.p("p.bdp"), d.p("out"))
        .unwrap_err();
    assert!(
        matches!(&e, Error::WrongBase { path, .. } if path == "mod.bin"),
        "{e}"
    );
    fs::remove_dir(d.p("old/mod.bin")).unwrap();
    std::os::unix::fs::symlink("keep.txt", d.p("old/mod.bin")).unwrap();
    let e = Patcher::new()
        .apply(d.p("old"), d.p("p.bdp"), d.p("out"))
        .unwrap_err();
    assert!(
        matches!(&e, Error::WrongBase { path, .. } if path == "mod.bin"),
        "{e}"
    );
    assert!(!d.p("out").exists());
    // A file patch on a directory, and the reverse.
    let e = Patcher::new()
        .apply(d.p("old"), c.p("p.bdp"), d.p("out"))
        .unwrap_err();
    assert!(matches!(e, Error::WrongBase { .. }), "{e}");
    let e = Patcher::new()
        .apply(c.p("old"), d.p("p.bdp"), d.p("out"))
        .unwrap_err();
    assert!(matches!(e, Error::WrongBase { .. }), "{e}");
}

/// Two trees that differ in one file's content, the patch between them, with 32-bit base tags
/// (so that no differing file escapes its tag in these tests) unless `bits` says otherwise.
fn tagged_case(bits: Option<u8>, renames: bool) -> Case {
    let (old, new, _) = lib_trees(11, renames);
    let (dir, patch) = write_case(&old, &new, bits.or(Some(32)));
    Case { dir, patch }
}

/// Apply `c`'s patch to its (altered) OLD: the wrong-base error's path and reason.
fn named(c: &Case) -> (String, String) {
    match Patcher::new().apply(c.p("old"), c.p("p.bdp"), c.p("out")) {
        Err(Error::WrongBase { path, reason }) => {
            assert!(!c.p("out").exists());
            (path, reason)
        }
        other => panic!("expected a wrong base, got {other:?}"),
    }
}

/// Flip one byte of an old file in place (same size: only its content differs).
fn touch(c: &Case, rel: &str) {
    let mut d = fs::read(c.p("old").join(rel)).unwrap();
    d[7] ^= 0x20;
    fs::write(c.p("old").join(rel), d).unwrap();
}

#[test]
fn wrong_base_names_the_first_file_that_differs() {
    // Relative manifest: a content-only change in a kept file...
    let c = tagged_case(None, false);
    assert!(Patcher::new()
        .open(c.p("p.bdp"))
        .unwrap()
        .relative_manifest()
        .is_some());
    touch(&c, "lib/m09.js");
    let (path, reason) = named(&c);
    assert_eq!(path, "lib/m09.js");
    assert!(
        reason.contains("content differs") && reason.contains("1 of the 12"),
        "{reason}"
    );
    // ...and with an earlier one too, the first in path order (also the delta's own base).
    touch(&c, "lib/m05.js");
    let (path, reason) = named(&c);
    assert_eq!(path, "lib/m05.js");
    assert!(reason.contains("2 of the 12"), "{reason}");

    // The file list: a size change, an added file, a removed file.
    let c = tagged_case(None, false);
    fs::write(c.p("old/lib/m03.js"), b"shorter").unwrap();
    assert_eq!(named(&c).0, "lib/m03.js");
    // An entry the base did not have is named as unknown when it is the only difference (the
    // user may keep or remove it: tests/unknown.rs), as not in the base when there are others.
    let c = tagged_case(None, false);
    fs::write(c.p("old/lib/m03b.js"), b"extra").unwrap();
    match Patcher::new().apply(c.p("old"), c.p("p.bdp"), c.p("out")) {
        Err(Error::UnknownEntries { count: 1, paths }) => assert_eq!(paths, ["lib/m03b.js"]),
        other => panic!("expected one unknown entry, got {other:?}"),
    }
    fs::write(c.p("old/lib/m07.js"), b"shorter").unwrap();
    let (path, reason) = named(&c);
    assert_eq!(path, "lib/m03b.js");
    assert!(reason.contains("not in the base"), "{reason}");
    let c = tagged_case(None, false);
    fs::remove_file(c.p("old/lib/m04.js")).unwrap();
    let (path, reason) = named(&c);
    assert_eq!(path, "lib/m05.js", "the entry after the gap");
    assert!(
        reason.contains("lacks") && reason.contains("OLD has 12 entries, the base had 13"),
        "{reason}"
    );
    let c = tagged_case(None, false);
    fs::remove_file(c.p("old/lib/m11.js")).unwrap();
    let (path, reason) = named(&c);
    assert_eq!(path, "lib/m10.js", "the last entry OLD has");
    assert!(reason.contains("1 more entries"), "{reason}");
    // A kind change: a directory where the base had a file.
    let c = tagged_case(None, false);
    fs::remove_file(c.p("old/lib/m07.js")).unwrap();
    fs::create_dir(c.p("old/lib/m07.js")).unwrap();
    assert_eq!(named(&c).0, "lib/m07.js");

    // Full manifest (every path renamed): copy sources and the delta source are named.
    let c = tagged_case(None, true);
    let p = Patcher::new().open(c.p("p.bdp")).unwrap();
    assert!(
        p.relative_manifest().is_none(),
        "this case is expected in the full form"
    );
    assert_eq!(p.manifest().unwrap().base_tags.len(), 12);
    touch(&c, "lib/m08.js");
    touch(&c, "lib/m02.js");
    let (path, reason) = named(&c);
    assert_eq!(path, "lib/m02.js");
    assert!(reason.contains("2 of the 12"), "{reason}");

    // Without tags the base is still refused, unnamed.
    let c = tagged_case(Some(0), false);
    touch(&c, "lib/m09.js");
    let (path, reason) = named(&c);
    assert_eq!(path, "");
    assert!(reason.contains("differs"), "{reason}");
    let c = tagged_case(Some(0), false);
    fs::write(c.p("old/lib/m03b.js"), b"extra").unwrap();
    assert_eq!(named(&c).0, "");

    // The default: between 4 and 8 bits per entry of OLD's listing.
    let c = tagged_case(None, false);
    let (patch, _) = DiffOptions::new()
        .diff_paths(c.p("old"), c.p("new"))
        .unwrap();
    fs::write(c.p("d.bdp"), &patch).unwrap();
    let mut p = Patcher::new().open(c.p("d.bdp")).unwrap();
    p.bind(&c.p("old")).unwrap();
    let t = &p.manifest().unwrap().base_tags;
    assert!((4..=8).contains(&t.bits) && t.len() == 13, "{t:?}");
}

#[test]
fn existing_output_is_never_overwritten() {
    let c = file_case();
    fs::write(c.p("p.bdp"), &c.patch).unwrap();
    fs::write(c.p("out"), b"precious").unwrap();
    let e = Patcher::new()
        .apply(c.p("old"), c.p("p.bdp"), c.p("out"))
        .unwrap_err();
    assert!(matches!(e, Error::OutputExists { .. }), "{e}");
    assert_eq!(fs::read(c.p("out")).unwrap(), b"precious");
}

#[test]
fn unreadable_inputs_give_named_errors() {
    let c = file_case();
    let e = Patcher::new()
        .apply(c.p("old"), c.p("missing.bdp"), c.p("out"))
        .unwrap_err();
    assert!(e.to_string().contains("missing.bdp"), "{e}");
    fs::write(c.p("p.bdp"), &c.patch).unwrap();
    let e = Patcher::new()
        .apply(c.p("nope"), c.p("p.bdp"), c.p("out"))
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
            .apply(c.p("old"), c.p("p.bdp"), ro.join("out"))
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
    let e = p.apply(c.p("old"), c.p("p.bdp"), c.p("out")).unwrap_err();
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
    let e = p.apply(c.p("old"), c.p("p.bdp"), c.p("out")).unwrap_err();
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
        .apply(c.p("old"), c.p("big.bdp"), c.p("out"))
        .unwrap_err();
    assert!(e.to_string().contains("--window-log"), "{e}");
    let mut p = Patcher::new();
    p.memory_limit(64 << 20);
    p.apply(c.p("old"), c.p("big.bdp"), c.p("out")).unwrap();
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
    let h = bundelta::format::Header::decode(&c.patch).unwrap();
    let with_header = |h2: &bundelta::format::Header| {
        let mut b = h2.encode();
        b.extend_from_slice(&c.patch[h.encoded_len()..]);
        reseal(b)
    };
    // Declared manifest length larger than the file; sections that no longer add up.
    for delta in [1u64, 1 << 40] {
        let mut h2 = h.clone();
        h2.manifest_len += delta;
        let e = must_fail(&c, &with_header(&h2));
        assert!(e.to_string().contains("corrupt patch"), "{e}");
    }
    // Lengths moved between sections (the file length still adds up): the stream decoders
    // and the controls must catch it.
    let mut h2 = h.clone();
    h2.manifest_len -= 1;
    h2.stream_lens[0] += 1;
    must_fail(&c, &with_header(&h2));
    // Unknown flag, bad window, unknown codec (offsets 6, 7 and 8 of a header whose flags
    // varint is one byte), a major version of 1, the zero-run flag of the diff stream toggled.
    for (at, v) in [
        (6usize, 0x10u8),
        (7, 40),
        (8, 7),
        (4, 1),
        (6, c.patch[6] ^ 8),
    ] {
        let mut b = c.patch.clone();
        b[at] = v;
        must_fail(&c, &reseal(b));
    }
    // A non-shortest varint (flags 0 written as 0x80 0x00) is refused, not reinterpreted.
    let mut b = c.patch[..6].to_vec();
    b.extend_from_slice(&[0x80, 0x00]);
    b.extend_from_slice(&c.patch[7..]);
    let e = must_fail(&c, &reseal(b));
    assert!(e.to_string().contains("shortest"), "{e}");
    // Flip bytes inside the data section: a frame or a hash must catch it.
    let n = c.patch.len();
    for i in (n.saturating_sub(32 + 600).max(h.encoded_len())..n - 32).step_by(7) {
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
        .diff_paths(&o, n.join("Readme"))
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("both be files or both be directories"),
        "{e}"
    );
}

/// Signatures: with a required public key, an unsigned patch, a stripped signature, a forged
/// or damaged signature (trailer resealed) and a patch signed by another key are all refused
/// before any write, in place too; without a key a signed patch applies normally.
#[test]
fn signatures_are_required_and_checked_before_any_write() {
    use bundelta::format::{Header, FLAG_SIGNED, SIGNATURE_LEN, TRAILER_LEN};
    let c = file_case();
    let secret = bundelta::SecretKey::from_bytes([0x5au8; 32]);
    let public = secret.public_key();
    let signed = bundelta::sign_patch(&c.patch, &secret).unwrap();
    assert_eq!(signed.len(), c.patch.len() + SIGNATURE_LEN);
    let must_refuse = |bytes: &[u8], want: &str| {
        let pp = c.p("s.bdp");
        fs::write(&pp, bytes).unwrap();
        let before = listing(c.dir.path());
        let mut p = Patcher::new();
        p.require_signature(public);
        let e = p.apply(c.p("old"), &pp, c.p("out")).expect_err("accepted");
        assert!(e.to_string().contains(want), "{want}: {e}");
        assert_eq!(listing(c.dir.path()), before, "left behind: {e}");
        let e = p
            .verify(&pp, Some(&c.p("old")))
            .expect_err("verify accepted");
        assert!(e.to_string().contains(want), "{want}: {e}");
        // In place: the target is untouched.
        let target = c.p("inplace");
        fs::copy(c.p("old"), &target).unwrap();
        p.apply_in_place(&target, &pp)
            .expect_err("in-place accepted");
        assert_eq!(fs::read(&target).unwrap(), fs::read(c.p("old")).unwrap());
        fs::remove_file(&target).unwrap();
        fs::remove_file(&pp).unwrap();
    };
    must_refuse(&c.patch, "not signed");
    // Signed by someone else.
    must_refuse(
        &bundelta::sign_patch(&c.patch, &bundelta::SecretKey::from_bytes([0x5bu8; 32])).unwrap(),
        "signature check failed",
    );
    // Each byte of the signature damaged, the trailer resealed.
    let h = Header::decode(&signed).unwrap();
    let sig_at = h.signature_offset() as usize;
    for i in (sig_at..sig_at + SIGNATURE_LEN).step_by(9) {
        let mut b = signed.clone();
        b[i] ^= 0x01;
        must_refuse(&reseal(b), "signature check failed");
    }
    // Content changed under a valid signature (a flipped data byte, trailer resealed): the
    // signature no longer matches, so the applier stops before decoding anything.
    let mut b = signed.clone();
    b[sig_at - 1] ^= 0x80;
    must_refuse(&reseal(b), "signature check failed");
    // Signature stripped: flag cleared, block removed, trailer recomputed.
    let mut h2 = h.clone();
    h2.flags &= !FLAG_SIGNED;
    let mut b = h2.encode();
    b.extend_from_slice(&signed[h.encoded_len()..sig_at]);
    let t = blake3::hash(&b);
    b.extend_from_slice(t.as_bytes());
    assert_eq!(b, c.patch);
    must_refuse(&b, "not signed");
    // Flag cleared but the block left in: the lengths no longer add up.
    let mut b = h2.encode();
    b.extend_from_slice(&signed[h.encoded_len()..signed.len() - TRAILER_LEN]);
    must_refuse(&reseal([b, vec![0; 32]].concat()), "corrupt patch");
    // The right key, and no key at all, both accept the signed patch.
    for key in [Some(public), None] {
        let pp = c.p("ok.bdp");
        fs::write(&pp, &signed).unwrap();
        let mut p = Patcher::new();
        if let Some(k) = key {
            p.require_signature(k);
        }
        p.apply(c.p("old"), &pp, c.p("out")).unwrap();
        assert_eq!(fs::read(c.p("out")).unwrap(), fs::read(c.p("new")).unwrap());
        fs::remove_file(c.p("out")).unwrap();
    }
}

/// The zero-run coding of the diff stream (FORMAT.md 4.1), re-encoded by hand (raw codec,
/// trailer resealed): any block split the spec allows applies; every malformed block is
/// refused as a corrupt diff stream, with nothing left behind.
#[test]
fn zero_run_blocks_are_bounded_and_checked() {
    use bundelta::format::{put_varint, Header, CODEC_RAW, FLAG_DIFF_RUNS, ZERO_RUN_BLOCK};
    let c = file_case();
    let h = Header::decode(&c.patch).unwrap();
    assert!(
        h.flags & FLAG_DIFF_RUNS != 0,
        "the writer uses zero runs on this case"
    );
    let a = h.stream_offset(1) as usize;
    let t = decode_stream(
        h.codecs[1],
        h.window_log,
        &c.patch[a..a + h.stream_lens[1] as usize],
    );
    let diff = expand_zero_runs(&t);
    // Rebuild the patch with `runs` as the (raw) diff stream.
    let with_runs = |runs: &[u8]| {
        let mut h2 = h.clone();
        h2.codecs[1] = CODEC_RAW;
        h2.stream_lens[1] = runs.len() as u64;
        let mut p = h2.encode();
        p.extend_from_slice(&c.patch[h.encoded_len()..a]);
        p.extend_from_slice(runs);
        let e = h.stream_offset(3) as usize;
        p.extend_from_slice(&c.patch[a + h.stream_lens[1] as usize..e]);
        p.extend_from_slice(&[0; 32]);
        reseal(p)
    };
    // Blocks built from (zero, literal) pairs; `lits` must be the literal bytes in order.
    let block = |pairs: &[(u64, u64)], lits: &[u8]| {
        let mut b = Vec::new();
        put_varint(&mut b, pairs.len() as u64);
        for &(z, l) in pairs {
            put_varint(&mut b, z);
            put_varint(&mut b, l);
        }
        b.extend_from_slice(lits);
        b
    };
    // Legal but unusual: one byte per block, literal zeros, empty pairs.
    let mut odd = Vec::new();
    for &byte in &diff {
        odd.extend(block(&[(0, 0), (0, 1)], &[byte]));
    }
    let pp = c.p("odd.bdp");
    fs::write(&pp, with_runs(&odd)).unwrap();
    Patcher::new().apply(c.p("old"), &pp, c.p("out")).unwrap();
    assert_eq!(fs::read(c.p("out")).unwrap(), fs::read(c.p("new")).unwrap());
    fs::remove_file(c.p("out")).unwrap();
    fs::remove_file(&pp).unwrap();

    let max = ZERO_RUN_BLOCK as u64;
    let good = with_runs(&t);
    let bad: Vec<(&str, Vec<u8>)> = vec![
        ("no pairs", [block(&[], &[]), t.clone()].concat()),
        (
            "a block of nothing",
            [block(&[(0, 0)], &[]), t.clone()].concat(),
        ),
        ("too many pairs", {
            let mut b = Vec::new();
            put_varint(&mut b, max + 1);
            b.extend(t.iter());
            b
        }),
        (
            "a block over the limit",
            [block(&[(max, 1)], &[1]), t.clone()].concat(),
        ),
        (
            "a huge zero run",
            [block(&[(u64::MAX, 0)], &[]), t.clone()].concat(),
        ),
        ("pairs cut short", t[..t.len().min(3)].to_vec()),
        ("literals cut short", t[..t.len() - 1].to_vec()),
        (
            "an extra block",
            [t.clone(), block(&[(5, 0)], &[])].concat(),
        ),
        ("an extra byte", [t.clone(), vec![1]].concat()),
    ];
    for (what, runs) in bad {
        let e = must_fail(&c, &with_runs(&runs));
        assert!(e.to_string().contains("corrupt patch"), "{what}: {e}");
    }
    // The untouched coding still applies through the same rebuild.
    let pp = c.p("good.bdp");
    fs::write(&pp, good).unwrap();
    Patcher::new().apply(c.p("old"), &pp, c.p("out")).unwrap();
    assert_eq!(fs::read(c.p("out")).unwrap(), fs::read(c.p("new")).unwrap());
}

#[test]
fn old_file_list_counts_against_the_memory_limit() {
    // 3,000 files kept, one changed: the patch's own formula is small, OLD's file list is not;
    // a limit between the two refuses before anything is written, out of place and in place.
    let mut old = Tree::new();
    old.insert("d".into(), Item::Dir);
    for i in 0..3000 {
        old.insert(
            format!("d/file-{i:05}.txt"),
            Item::File {
                data: format!("{i}").into_bytes(),
                exec: false,
            },
        );
    }
    let mut new = old.clone();
    new.insert(
        "d/file-00042.txt".into(),
        Item::File {
            data: b"changed".to_vec(),
            exec: false,
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    write_tree(&p("old"), &old);
    write_tree(&p("new"), &new);
    let (patch, _) = DiffOptions::new().diff_paths(p("old"), p("new")).unwrap();
    fs::write(p("p.bdp"), &patch).unwrap();
    let h = bundelta::format::Header::decode(&patch).unwrap();
    let formula = bundelta::memory_needed(&h);
    let listing: u64 = 3001 * bundelta::LISTING_ENTRY_BYTES;
    // Off by default: the limit bounds what the patch declares.
    let mut lax = Patcher::new();
    lax.memory_limit(formula + listing / 2);
    lax.verify(p("p.bdp"), Some(&p("old"))).unwrap();
    let mut tight = Patcher::new();
    tight
        .memory_limit(formula + listing / 2)
        .strict_memory(true);
    let e = tight.apply(p("old"), p("p.bdp"), p("out")).unwrap_err();
    assert!(
        matches!(e, Error::LimitExceeded { needed, .. } if needed > formula + listing),
        "{e}"
    );
    assert!(!p("out").exists());
    let e = tight.apply_in_place(p("old"), p("p.bdp")).unwrap_err();
    assert!(matches!(e, Error::LimitExceeded { .. }), "{e}");
    assert!(tight.verify(p("p.bdp"), Some(&p("old"))).is_err());
    let mut roomy = Patcher::new();
    roomy
        .memory_limit(formula + 2 * listing + (1 << 20))
        .strict_memory(true);
    roomy.apply(p("old"), p("p.bdp"), p("out")).unwrap();
    assert_eq!(
        bundelta::bundle_digest(p("out")).unwrap(),
        bundelta::bundle_digest(p("new")).unwrap()
    );
}
