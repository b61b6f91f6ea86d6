//! Entries of OLD that a patch does not know about (issue 9, item 7): refused and named by
//! default in both manifest forms, out of place, in place and in `verify`, before anything is
//! written; kept or removed only when asked. The landed code deleted them silently in place
//! under the full form.

use std::path::Path;

use bundelta::{Error, InPlaceOutcome, Patcher, Unknown};

use crate::util::*;

/// OLD and NEW trees and the patch between them, in the full form (`renames`: every path
/// changes and OLD has many entries NEW drops) or the relative form.
fn case(renames: bool, bits: Option<u8>) -> (tempfile::TempDir, Tree, Tree) {
    let (old, mut new, mut rng) = lib_trees(21, renames);
    new.insert(
        "added.txt".into(),
        Item::File {
            data: rng.text(500),
            exec: false,
        },
    );
    let (dir, _) = write_case(&old, &new, bits);
    let relative = bundelta::Patcher::new()
        .open(dir.path().join("p.bdp"))
        .unwrap()
        .relative_manifest()
        .is_some();
    assert_eq!(
        relative, !renames,
        "the writer chose the expected manifest form"
    );
    (dir, old, new)
}

/// What a user adds to an installed version: a config file, a cache directory with a file.
fn user_entries() -> Tree {
    let mut t = Tree::new();
    t.insert(
        "user.cfg".into(),
        Item::File {
            data: b"theme = dark\n".to_vec(),
            exec: false,
        },
    );
    t.insert("cache".into(), Item::Dir);
    t.insert(
        "cache/blob".into(),
        Item::File {
            data: vec![7u8; 3000],
            exec: true,
        },
    );
    t
}

fn with_user(t: &Tree) -> Tree {
    let mut t = t.clone();
    t.extend(user_entries());
    t
}

fn expect_unknown(r: Result<impl std::fmt::Debug, Error>, what: &str) {
    match r {
        Err(Error::UnknownEntries { count, paths }) => {
            assert_eq!(count, 3, "{what}");
            assert_eq!(paths, ["cache", "cache/blob", "user.cfg"], "{what}");
        }
        other => panic!("{what}: expected UnknownEntries, got {other:?}"),
    }
}

#[test]
fn unknown_entries_are_refused_and_named_by_default_in_both_forms() {
    for renames in [true, false] {
        let (dir, old, _) = case(renames, Some(if renames { 32 } else { 8 }));
        let form = if renames {
            "full form"
        } else {
            "relative form"
        };
        let old_dir = dir.path().join("old");
        write_tree(&old_dir, &with_user(&old));
        let before = read_tree(&old_dir);
        let (p, out) = (dir.path().join("p.bdp"), dir.path().join("out"));
        expect_unknown(Patcher::new().apply(&old_dir, &p, &out), form);
        assert!(!out.exists(), "{form}: something was written");
        expect_unknown(Patcher::new().verify(&p, Some(&old_dir)), form);
        expect_unknown(Patcher::new().apply_in_place(&old_dir, &p), form);
        assert!(read_tree(&old_dir) == before, "{form}: OLD was changed");
        assert_eq!(listing(dir.path()), ["new", "old", "p.bdp"], "{form}");
        // The message says what to do.
        let e = Patcher::new().apply(&old_dir, &p, &out).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("--unknown keep") && msg.contains("--unknown remove"),
            "{msg}"
        );
    }
}

#[test]
fn unknown_entries_are_kept_or_removed_when_asked() {
    for renames in [true, false] {
        let form = if renames {
            "full form"
        } else {
            "relative form"
        };
        for policy in [Unknown::Keep, Unknown::Remove] {
            let (dir, old, new) = case(renames, Some(if renames { 32 } else { 8 }));
            let old_dir = dir.path().join("old");
            write_tree(&old_dir, &with_user(&old));
            let p = dir.path().join("p.bdp");
            let want = if policy == Unknown::Keep {
                with_user(&new)
            } else {
                new.clone()
            };
            let mut patcher = Patcher::new();
            patcher.unknown(policy);
            // Out of place: OLD stays as it was.
            let out = dir.path().join("out");
            patcher.apply(&old_dir, &p, &out).unwrap();
            assert!(read_tree(&out) == want, "{form} {policy:?}: out of place");
            assert!(read_tree(&old_dir) == with_user(&old), "{form} {policy:?}");
            // In place.
            let r = patcher.apply_in_place(&old_dir, &p).unwrap();
            assert!(matches!(r.outcome, InPlaceOutcome::Applied(_)));
            assert!(read_tree(&old_dir) == want, "{form} {policy:?}: in place");
            if policy == Unknown::Remove {
                assert_eq!(
                    bundelta::bundle_digest(&old_dir).unwrap(),
                    bundelta::bundle_digest(dir.path().join("new")).unwrap()
                );
            }
            assert_eq!(
                listing(dir.path()),
                ["new", "old", "out", "p.bdp"],
                "{form} {policy:?}: side files left"
            );
        }
    }
}

/// Relative form: OLD's listing is known exactly, so a user's file at a path the new version
/// adds is unknown. (The full form names the new version's paths and the deleted ones but not
/// which of the new paths the base had: there an entry at a path the new version has is
/// replaced by it, as the patch names that path.)
#[test]
fn an_unknown_entry_in_the_way_of_the_new_version_is_not_kept() {
    for renames in [false] {
        let (dir, old, _) = case(renames, Some(if renames { 32 } else { 8 }));
        let old_dir = dir.path().join("old");
        let mut t = old.clone();
        // NEW adds `added.txt`: the user made one too.
        t.insert(
            "added.txt".into(),
            Item::File {
                data: b"mine".to_vec(),
                exec: false,
            },
        );
        write_tree(&old_dir, &t);
        let before = read_tree(&old_dir);
        let p = dir.path().join("p.bdp");
        let mut patcher = Patcher::new();
        patcher.unknown(Unknown::Keep);
        for r in [
            patcher.apply(&old_dir, &p, dir.path().join("out")).err(),
            patcher.apply_in_place(&old_dir, &p).err(),
        ] {
            match r {
                Some(Error::WrongBase { path, reason }) => {
                    assert_eq!(path, "added.txt");
                    assert!(reason.contains("new version has an entry"), "{reason}");
                }
                other => panic!("expected a refusal naming added.txt, got {other:?}"),
            }
        }
        assert!(read_tree(&old_dir) == before);
        assert!(!dir.path().join("out").exists());
        // Removing it is an explicit choice, and then the new version's file wins.
        patcher.unknown(Unknown::Remove);
        patcher.apply_in_place(&old_dir, &p).unwrap();
        assert_eq!(
            bundelta::bundle_digest(&old_dir).unwrap(),
            bundelta::bundle_digest(dir.path().join("new")).unwrap()
        );
    }
}

/// Without base tags a relative manifest cannot tell which entries are unknown: refused in
/// every mode, and nothing is written.
#[test]
fn without_tags_unknown_entries_cannot_be_separated_and_are_refused() {
    let (dir, old, _) = case(false, Some(0));
    let old_dir = dir.path().join("old");
    write_tree(&old_dir, &with_user(&old));
    let p = dir.path().join("p.bdp");
    for policy in [Unknown::Refuse, Unknown::Keep, Unknown::Remove] {
        let mut patcher = Patcher::new();
        patcher.unknown(policy);
        let e = patcher.apply_in_place(&old_dir, &p).unwrap_err();
        assert!(matches!(e, Error::WrongBase { .. }), "{policy:?}: {e}");
    }
    assert!(read_tree(&old_dir) == with_user(&old));
    assert!(!Path::new(&dir.path().join("out")).exists());
}

#[cfg(feature = "cli")]
#[test]
fn cli_names_unknown_entries_and_takes_the_choice() {
    use std::process::Command;
    let (dir, old, new) = case(true, Some(32));
    let old_dir = dir.path().join("old");
    write_tree(&old_dir, &with_user(&old));
    let run = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_bundelta"))
            .args(["apply", "--in-place", "-q"])
            .args(extra)
            .arg(&old_dir)
            .arg(dir.path().join("p.bdp"))
            .output()
            .unwrap()
    };
    let o = run(&[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("user.cfg") && err.contains("--unknown keep"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    let o = run(&["--unknown", "keep"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(read_tree(&old_dir) == with_user(&new));
}
