//! Files NEW holds twice (format 2.2 `copy-new`): carried once, rebuilt from the staged
//! first copy, which must still hash as it was written.

use std::fs;
use std::sync::atomic::{AtomicBool, Ordering};

use bundelta::format::{EntryKind, FileOp, Header, Manifest};
use bundelta::{ApplyEvent, DiffOptions, Patcher};

use crate::util::*;

/// OLD: `lib/` with a few text files; NEW: one of them edited and also written beside it
/// under another name (as `x.d.ts` and `x.d.cts` of a dual package), in and out of place.
fn dual_trees() -> (Tree, Tree) {
    let (old, mut new, mut rng) = lib_trees(0xc0de, false);
    let edited = match new.get("lib/m05.js") {
        Some(Item::File { data, .. }) => data.clone(),
        other => panic!("{other:?}"),
    };
    new.insert(
        "lib/m05.cjs".into(),
        Item::File {
            data: edited.clone(),
            exec: false,
        },
    );
    new.insert("types".into(), Item::Dir);
    new.insert(
        "types/m05.js".into(),
        Item::File {
            data: edited,
            exec: true,
        },
    );
    // And a new file with no relative in OLD, twice.
    let fresh = rng.text(3000);
    for p in ["zz/a.txt", "zz/b.txt"] {
        new.insert(
            p.into(),
            Item::File {
                data: fresh.clone(),
                exec: false,
            },
        );
    }
    new.insert("zz".into(), Item::Dir);
    (old, new)
}

#[test]
fn duplicates_in_new_are_carried_once_and_rebuilt() {
    let (old, new) = dual_trees();
    let dir = tempfile::tempdir().unwrap();
    write_tree(&dir.path().join("old"), &old);
    write_tree(&dir.path().join("new"), &new);
    let (patch, stats) = DiffOptions::new()
        .diff_paths(dir.path().join("old"), dir.path().join("new"))
        .unwrap();
    // m05.cjs and types/m05.js copy lib/m05.js... (the first in path order is the one encoded)
    assert!(stats.copied_new >= 3, "{stats:?}");
    let h = Header::decode(&patch).unwrap();
    assert_ne!(h.flags & bundelta::format::FLAG_RELATIVE_SIZES, 0);
    // The oracle rebuilds NEW from the spec.
    assert_eq!(naive_apply(&old, &patch), new);
    fs::write(dir.path().join("p.bdp"), &patch).unwrap();
    // Out of place, dry run, in place.
    let p = dir.path().join("p.bdp");
    Patcher::new()
        .apply(dir.path().join("old"), &p, dir.path().join("out"))
        .unwrap();
    assert_eq!(read_tree(&dir.path().join("out")), new);
    let r = Patcher::new()
        .verify(&p, Some(&dir.path().join("old")))
        .unwrap()
        .unwrap();
    assert_eq!(r.files, 16);
    Patcher::new()
        .apply_in_place(dir.path().join("old"), &p)
        .unwrap();
    assert_eq!(read_tree(&dir.path().join("old")), new);
}

/// The staged first copy is changed (by anyone who can write the stage) after it was written
/// and hashed: the copy made from it does not hash as the patch says, and nothing is
/// committed.
#[test]
fn a_staged_source_changed_after_it_was_written_is_refused() {
    let (old, new) = dual_trees();
    let (dir, _patch) = write_case(&old, &new, None);
    let once = std::sync::Arc::new(AtomicBool::new(false));
    let flag = once.clone();
    let mut patcher = Patcher::new();
    patcher.hook(Box::new(move |e| {
        if let ApplyEvent::Staged { stage, path } = e {
            if path == "zz/a.txt" && !flag.swap(true, Ordering::SeqCst) {
                let f = stage.join(path);
                let mut data = fs::read(&f).unwrap();
                data[10] ^= 1;
                fs::write(&f, data).unwrap();
            }
        }
    }));
    let e = patcher
        .apply(
            dir.path().join("old"),
            dir.path().join("p.bdp"),
            dir.path().join("out"),
        )
        .unwrap_err();
    assert!(once.load(Ordering::SeqCst), "the hook ran");
    assert!(
        matches!(&e, bundelta::Error::OutputMismatch { path } if path == "zz/b.txt"),
        "{e}"
    );
    assert!(!dir.path().join("out").exists());
}

/// A copy of a later entry, of a directory, or of another copy is refused as corrupt.
#[test]
fn copy_new_must_name_an_earlier_file() {
    let file = |size, op| EntryKind::File {
        exec: false,
        size,
        op,
    };
    let entry = |path: &str, kind| bundelta::format::Entry {
        path: path.into(),
        kind,
    };
    let header = |raw: &[u8], total| Header {
        minor: bundelta::format::VERSION_MINOR,
        flags: bundelta::format::FLAG_DIRECTORY,
        window_log: 21,
        codecs: [0; 3],
        manifest_len: raw.len() as u64,
        manifest_raw_len: raw.len() as u64,
        new_total: total,
        stream_lens: [0, 0, 5],
    };
    let good = Manifest {
        entries: vec![
            entry("a", file(5, FileOp::Add)),
            entry("b", file(5, FileOp::CopyNew { entry: 0 })),
        ],
        ..Manifest::default()
    };
    let raw = good.encode();
    assert_eq!(Manifest::decode(&raw, &header(&raw, 10)).unwrap(), good);
    for (bad, total) in [
        // Of a directory.
        (
            vec![
                entry("a", EntryKind::Dir),
                entry("a/b", file(5, FileOp::Add)),
                entry("c", file(0, FileOp::CopyNew { entry: 0 })),
            ],
            5,
        ),
        // Of a copy.
        (
            vec![
                entry("a", file(5, FileOp::Add)),
                entry("b", file(5, FileOp::CopyNew { entry: 0 })),
                entry("c", file(5, FileOp::CopyNew { entry: 1 })),
            ],
            15,
        ),
        // Of another size.
        (
            vec![
                entry("a", file(5, FileOp::Add)),
                entry("b", file(6, FileOp::CopyNew { entry: 0 })),
            ],
            11,
        ),
    ] {
        let m = Manifest {
            entries: bad,
            ..Manifest::default()
        };
        let raw = m.encode();
        let e = Manifest::decode(&raw, &header(&raw, total)).unwrap_err();
        assert!(matches!(e, bundelta::Error::Corrupt { .. }), "{e}");
    }
    // Of itself or a later entry: the distance back cannot reach past the first entry.
    let mut raw = good.encode();
    let last = raw.len() - 2; // the distance of "b"'s copy (0), before the deleted count
    assert_eq!(raw[last], 0);
    raw[last] = 1;
    let e = Manifest::decode(&raw, &header(&raw, 10)).unwrap_err();
    assert!(matches!(e, bundelta::Error::Corrupt { .. }), "{e}");
}
