//! The file system changing under an apply (issue 9, items 3 and 8): a directory of OLD swapped
//! for a symlink between the base check and the use, at any depth; a file of OLD replaced,
//! rewritten or swapped for a symlink after it was hashed; a symlink planted inside the staging
//! tree; FIFOs where a regular file is expected.
//!
//! The races are made deterministic by [`Patcher::hook`]: the swap happens exactly after the
//! base check (or after an entry is staged). Operations that could block (a FIFO opened for
//! reading) run in a thread with a generous timeout, so that a regression fails the test
//! instead of hanging the suite.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use bundelta::format::{
    put_controls, Control, Entry, EntryKind, FileOp, Hash, Header, Manifest, OldFile, CODEC_RAW,
    FLAG_DIRECTORY,
};
use bundelta::{ApplyEvent, Error, Patcher};

use crate::util::*;

// ---------------------------------------------------------------------------------------------
// Patches built by hand (full-form manifests: nothing scans OLD before the base check)

fn assemble(flags: u32, manifest: &[u8], new_total: u64, streams: [&[u8]; 3]) -> Vec<u8> {
    let h = Header {
        minor: 0,
        flags,
        window_log: 21,
        codecs: [CODEC_RAW; 3],
        manifest_len: manifest.len() as u64,
        manifest_raw_len: manifest.len() as u64,
        new_total,
        stream_lens: streams.map(|s| s.len() as u64),
    };
    let mut b = h.encode();
    b.extend_from_slice(manifest);
    for s in streams {
        b.extend_from_slice(s);
    }
    let t = blake3::hash(&b);
    b.extend_from_slice(t.as_bytes());
    b
}

fn blake(b: &[u8]) -> Hash {
    *blake3::hash(b).as_bytes()
}

fn file(data: &[u8]) -> Item {
    Item::File {
        data: data.to_vec(),
        exec: false,
    }
}

/// How the patch relies on the old file.
#[derive(Clone, Copy, Debug)]
enum Use {
    /// Kept unchanged at its path (hard-linked by an in-place apply).
    Unchanged,
    /// Copied to another path (old-file table).
    CopySource,
    /// Base of a delta at its own path.
    DeltaSamePath,
    /// Source of a delta at another path (old-file table).
    DeltaSource,
}

const USES: [Use; 4] = [
    Use::Unchanged,
    Use::CopySource,
    Use::DeltaSamePath,
    Use::DeltaSource,
];

/// Content of the old file the patches rely on.
const DATA: &[u8] = b"the old file the patch relies on, hashed by the base check\n";

/// OLD: the parent directories of `rel` and `rel` holding [`DATA`].
fn old_tree(rel: &str) -> Tree {
    let mut t = Tree::new();
    let mut at = 0;
    while let Some(i) = rel[at..].find('/') {
        t.insert(rel[..at + i].to_string(), Item::Dir);
        at += i + 1;
    }
    t.insert(rel.to_string(), file(DATA));
    t
}

/// A directory patch from OLD = [`old_tree`]`(rel)` that relies on `rel` as `u` says, and
/// always adds `zz` (so that OLD is never already the new version). Returns it and NEW.
fn relying_patch(rel: &str, u: Use) -> (Vec<u8>, Tree) {
    let n = DATA.len() as u64;
    let mut new = Tree::new();
    let mut entries = Vec::new();
    let mut old_files = Vec::new();
    let mut ctrl = Vec::new();
    let mut diff = Vec::new();
    let dirs: Vec<(String, Item)> = old_tree(rel)
        .into_iter()
        .filter(|(_, i)| *i == Item::Dir)
        .collect();
    for (d, _) in &dirs {
        new.insert(d.clone(), Item::Dir);
        entries.push(Entry {
            path: d.clone(),
            kind: EntryKind::Dir,
        });
    }
    let whole = [Control {
        diff: n,
        extra: 0,
        seek: 0,
    }];
    let (path, op) = match u {
        Use::Unchanged => (rel.to_string(), FileOp::Unchanged),
        Use::DeltaSamePath => {
            put_controls(&mut ctrl, &whole);
            diff = vec![0u8; DATA.len()];
            (
                rel.to_string(),
                FileOp::Delta {
                    sources: vec![],
                    base_size: n,
                    transform: 0,
                },
            )
        }
        Use::CopySource => {
            old_files.push(OldFile {
                path: rel.into(),
                size: n,
            });
            ("zcopy".to_string(), FileOp::Copy { source: 0 })
        }
        Use::DeltaSource => {
            old_files.push(OldFile {
                path: rel.into(),
                size: n,
            });
            put_controls(&mut ctrl, &whole);
            diff = vec![0u8; DATA.len()];
            (
                "zdelta".to_string(),
                FileOp::Delta {
                    sources: vec![0],
                    base_size: 0,
                    transform: 0,
                },
            )
        }
    };
    new.insert(path.clone(), file(DATA));
    entries.push(Entry {
        path,
        kind: EntryKind::File {
            exec: false,
            size: n,
            op,
        },
    });
    new.insert("zz".into(), file(b"xyz"));
    entries.push(Entry {
        path: "zz".into(),
        kind: EntryKind::File {
            exec: false,
            size: 3,
            op: FileOp::Add,
        },
    });
    let scratch = tempfile::tempdir().unwrap();
    write_tree(&scratch.path().join("new"), &new);
    let new_digest = bundelta::bundle_digest(scratch.path().join("new")).unwrap();
    let m = Manifest {
        new_digest,
        base_digest: blake(&blake(DATA)),
        old_files,
        entries,
        ..Manifest::default()
    };
    let raw = m.encode();
    let b = assemble(FLAG_DIRECTORY, &raw, n + 3, [&ctrl, &diff, b"xyz"]);
    (b, new)
}

/// A single-file patch that rebuilds [`DATA`] plus `+` from OLD = [`DATA`] (a delta).
fn single_file_patch() -> (Vec<u8>, Vec<u8>) {
    let n = DATA.len() as u64;
    let mut new = DATA.to_vec();
    new.push(b'+');
    let mut ctrl = Vec::new();
    put_controls(
        &mut ctrl,
        &[Control {
            diff: n,
            extra: 1,
            seek: 0,
        }],
    );
    let m = Manifest {
        new_digest: blake(&new),
        base_digest: blake(&blake(DATA)),
        entries: vec![Entry {
            path: String::new(),
            kind: EntryKind::File {
                exec: false,
                size: n + 1,
                op: FileOp::Delta {
                    sources: vec![],
                    base_size: n,
                    transform: 0,
                },
            },
        }],
        ..Manifest::default()
    };
    let raw = m.encode();
    let diff = vec![0u8; DATA.len()];
    (assemble(0, &raw, n + 1, [&ctrl, &diff, b"+"]), new)
}

// ---------------------------------------------------------------------------------------------
// Running the three operations

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    /// `apply OLD PATCH OUT` (files are copied).
    Apply,
    /// `verify --old OLD`.
    Verify,
    /// `apply --in-place TARGET` (unchanged files are hard-linked).
    InPlace,
}

const OPS: [Op; 3] = [Op::Apply, Op::Verify, Op::InPlace];

/// The path an operation reads as OLD in a sandbox.
fn old_of(dir: &Path, op: Op) -> PathBuf {
    dir.join(if op == Op::InPlace { "target" } else { "old" })
}

/// Run `op` on the sandbox `dir` (OLD at `old`, or `target` in place; patch at `p.bdp`;
/// output at `out`) in a thread; panics if it has not returned after 120 s (it blocked).
fn run(what: &str, op: Op, dir: &Path, patcher: Patcher) -> Result<(), Error> {
    let dir = dir.to_path_buf();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let p = dir.join("p.bdp");
        let r = match op {
            Op::Apply => patcher
                .apply(dir.join("old"), &p, dir.join("out"))
                .map(drop),
            Op::Verify => patcher.verify(&p, Some(&dir.join("old"))).map(drop),
            Op::InPlace => patcher.apply_in_place(dir.join("target"), &p).map(drop),
        };
        let _ = tx.send(r);
    });
    match rx.recv_timeout(Duration::from_secs(120)) {
        Ok(r) => r,
        Err(mpsc::RecvTimeoutError::Timeout) => {
            panic!("{what} {op:?}: still blocked after 120 s (it opened a FIFO for reading)")
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("{what} {op:?}: panicked"),
    }
}

/// A sandbox: OLD at `old` and `target`, the patch at `p.bdp`, and `outside/`.
fn sandbox(old: &Tree, patch: &[u8]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_tree(&dir.path().join("old"), old);
    write_tree(&dir.path().join("target"), old);
    fs::create_dir(dir.path().join("outside")).unwrap();
    fs::write(dir.path().join("p.bdp"), patch).unwrap();
    dir
}

fn mkfifo(p: &Path) {
    let st = std::process::Command::new("mkfifo")
        .arg(p)
        .status()
        .unwrap();
    assert!(st.success(), "mkfifo {}", p.display());
}

/// A patcher whose hook runs `f(OLD)` once, right after the base check.
fn after_base_check(f: impl Fn(&Path) + Send + Sync + 'static) -> Patcher {
    let once = AtomicBool::new(false);
    let mut p = Patcher::new();
    p.hook(Box::new(move |e| {
        if let ApplyEvent::BaseChecked { old } = e {
            if !once.swap(true, Ordering::SeqCst) {
                f(old);
            }
        }
    }));
    p
}

/// Every regular file under `root` (not following links): path, link count, content.
fn files_with_links(root: &Path) -> Vec<(PathBuf, u64, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let md = fs::symlink_metadata(&p).unwrap();
            if md.is_dir() {
                stack.push(p);
            } else if md.is_file() {
                out.push((p.clone(), md.nlink(), fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

// ---------------------------------------------------------------------------------------------
// Item 8: special files

/// A FIFO in OLD where the patch expects a regular file (an unchanged file, a copy source, a
/// same-path delta base, a delta source), at depth 0 and 2: `apply`, `verify --old` and
/// `apply --in-place` each fail at once with an error naming the path; nothing is created.
#[test]
fn fifo_where_a_regular_file_is_expected_fails_promptly() {
    let mut n = 0;
    for rel in ["f", "a/b/f"] {
        for u in USES {
            let (patch, _) = relying_patch(rel, u);
            for op in OPS {
                let what = format!("FIFO at {rel} ({u:?})");
                let s = sandbox(&old_tree(rel), &patch);
                let old = old_of(s.path(), op);
                fs::remove_file(old.join(rel)).unwrap();
                mkfifo(&old.join(rel));
                let e = run(&what, op, s.path(), Patcher::new())
                    .expect_err(&format!("{what} {op:?}: accepted"));
                let msg = e.to_string();
                assert!(
                    matches!(e, Error::WrongBase { .. }) && msg.contains(rel),
                    "{what} {op:?}: {msg}"
                );
                assert!(msg.contains("FIFO"), "{what} {op:?}: {msg}");
                assert!(!s.path().join("out").exists(), "{what} {op:?}");
                n += 1;
            }
        }
    }
    eprintln!("fs_handles: {n} FIFOs in OLD refused promptly");
}

/// A FIFO found by the scan of OLD (a manifest relative to OLD's file list, as `diff` makes
/// for trees) and a FIFO as OLD itself (single-file patch): refused at once, naming it.
#[test]
fn fifo_in_the_scan_or_as_old_itself_fails_promptly() {
    // Relative manifest: the scan meets the FIFO.
    let mut old = Tree::new();
    for i in 0..20 {
        old.insert(format!("f{i:02}"), file(format!("file {i}\n").as_bytes()));
    }
    let mut new = old.clone();
    new.insert("f07".into(), file(b"changed\n"));
    let tmp = tempfile::tempdir().unwrap();
    write_tree(&tmp.path().join("o"), &old);
    write_tree(&tmp.path().join("n"), &new);
    let (patch, _) = bundelta::DiffOptions::new()
        .diff_paths(tmp.path().join("o"), tmp.path().join("n"))
        .unwrap();
    for op in OPS {
        let s = sandbox(&old, &patch);
        let o = old_of(s.path(), op);
        fs::remove_file(o.join("f13")).unwrap();
        mkfifo(&o.join("f13"));
        let e = run("FIFO in the scan", op, s.path(), Patcher::new()).expect_err("accepted");
        assert!(e.to_string().contains("f13"), "{op:?}: {e}");
    }
    // Single file: OLD itself is a FIFO, from the start or swapped in after the base check.
    let (patch, want) = single_file_patch();
    for swap in [false, true] {
        for op in OPS {
            let dir = tempfile::tempdir().unwrap();
            fs::write(dir.path().join("p.bdp"), &patch).unwrap();
            let old = old_of(dir.path(), op);
            let patcher = if swap {
                fs::write(&old, DATA).unwrap();
                after_base_check(|old| {
                    fs::remove_file(old).unwrap();
                    mkfifo(old);
                })
            } else {
                mkfifo(&old);
                Patcher::new()
            };
            let what = if swap {
                "OLD swapped for a FIFO after the check"
            } else {
                "OLD is a FIFO"
            };
            match run(what, op, dir.path(), patcher) {
                // Only possible when the content read is the one hashed (held open).
                Ok(()) => {
                    assert!(swap, "{what} {op:?}: accepted");
                    match op {
                        Op::Apply => assert_eq!(fs::read(dir.path().join("out")).unwrap(), want),
                        Op::InPlace => assert_eq!(fs::read(&old).unwrap(), want),
                        Op::Verify => {}
                    }
                }
                Err(e) => assert!(matches!(e, Error::WrongBase { .. }), "{what} {op:?}: {e}"),
            }
        }
    }
    eprintln!("fs_handles: FIFOs in the scan and as OLD refused promptly");
}

// ---------------------------------------------------------------------------------------------
// Item 3: paths used after they were checked

/// Replace `old/anc` (a directory of OLD) by a symlink to `outside/anc`, a copy of the same
/// subtree whose file `f` holds `content` (or is a FIFO when `None`).
fn swap_dir_for_link(old: &Path, anc: &str, rel_in: &str, content: Option<&[u8]>) {
    let outside = old.parent().unwrap().join("outside").join(anc);
    if !outside.exists() {
        fs::create_dir_all(outside.join(rel_in).parent().unwrap()).unwrap();
        match content {
            Some(c) => fs::write(outside.join(rel_in), c).unwrap(),
            None => mkfifo(&outside.join(rel_in)),
        }
    }
    let moved = old
        .parent()
        .unwrap()
        .join(format!("moved-{}", anc.replace('/', "-")));
    fs::rename(old.join(anc), &moved).unwrap();
    std::os::unix::fs::symlink(&outside, old.join(anc)).unwrap();
}

/// A directory of OLD (at depth 1, 2 or 3 above the file relied upon) replaced by a symlink
/// to an outside directory holding a same-named file, between the base check and the use:
/// the outside file has the same content, other content, or is a FIFO. Every operation
/// must fail (or produce exactly NEW without reading outside); nothing outside is changed,
/// opened (the FIFO would block) or hard-linked (link counts stay 1).
#[test]
fn old_directory_swapped_for_a_link_after_the_check_is_not_followed() {
    let mut n = 0;
    for rel in ["d/f", "a/d/f", "a/b/d/f"] {
        let comps: Vec<&str> = rel.split('/').collect();
        for depth in 1..comps.len() {
            let anc = comps[..depth].join("/");
            let rel_in = comps[depth..].join("/");
            for u in USES {
                let (patch, new) = relying_patch(rel, u);
                if depth == 1 {
                    // The patch is sound: without a swap, every operation succeeds.
                    for op in OPS {
                        let s = sandbox(&old_tree(rel), &patch);
                        // In place, an unchanged file is still hard-linked (2 links when staged).
                        let links = Arc::new(std::sync::Mutex::new(None));
                        let (l2, r2) = (links.clone(), rel.to_string());
                        let mut patcher = Patcher::new();
                        patcher.hook(Box::new(move |e| {
                            if let ApplyEvent::Staged { stage, path } = e {
                                if path == r2 {
                                    let md = fs::symlink_metadata(stage.join(path)).unwrap();
                                    *l2.lock().unwrap() = Some(md.nlink());
                                }
                            }
                        }));
                        run("no swap", op, s.path(), patcher)
                            .unwrap_or_else(|e| panic!("{rel} {u:?} {op:?} without a swap: {e}"));
                        if let (Op::InPlace, Use::Unchanged) = (op, u) {
                            assert_eq!(*links.lock().unwrap(), Some(2), "{rel}: not hard-linked");
                        }
                    }
                }
                for content in [
                    Some(DATA),
                    Some(&b"outside content, not the base's\n"[..]),
                    None,
                ] {
                    for op in OPS {
                        let what = format!("{anc} of {rel} swapped ({u:?}, {content:?})");
                        let s = sandbox(&old_tree(rel), &patch);
                        let (a, r) = (anc.clone(), rel_in.clone());
                        let c = content.map(<[u8]>::to_vec);
                        let patcher = after_base_check(move |old| {
                            swap_dir_for_link(old, &a, &r, c.as_deref())
                        });
                        let result = run(&what, op, s.path(), patcher);
                        let outside = files_with_links(&s.path().join("outside"));
                        for (p, links, _) in &outside {
                            assert_eq!(*links, 1, "{what} {op:?}: {} was linked", p.display());
                        }
                        if let Some(c) = content {
                            let f = s.path().join("outside").join(&anc).join(&rel_in);
                            assert_eq!(fs::read(&f).unwrap(), c, "{what} {op:?}: outside changed");
                        }
                        if let Ok(()) = result {
                            match op {
                                Op::Apply => assert_eq!(read_tree(&s.path().join("out")), new),
                                Op::InPlace => {
                                    assert_eq!(read_tree(&s.path().join("target")), new)
                                }
                                Op::Verify => {}
                            }
                        }
                        n += 1;
                    }
                }
            }
        }
    }
    eprintln!("fs_handles: {n} directory swaps after the base check, none followed");
}

/// A file of OLD replaced after it was hashed: by a symlink to an outside file of the same
/// content, by another file of other content (another inode), by a hard link to an outside
/// file of the same content, or rewritten in place (appended to). Nothing but the hashed
/// content may end up in the output: every operation fails (or writes exactly NEW), and no
/// outside file gains a link.
#[test]
fn old_file_replaced_after_the_check_is_never_used() {
    #[derive(Clone, Copy, Debug)]
    enum How {
        Symlink,
        OtherFile,
        HardLinkOutside,
        Appended,
    }
    let mut n = 0;
    for rel in ["f", "d/f"] {
        for u in USES {
            let (patch, new) = relying_patch(rel, u);
            for how in [
                How::HardLinkOutside,
                How::Appended,
                How::OtherFile,
                How::Symlink,
            ] {
                for op in OPS {
                    let what = format!("{rel} replaced by {how:?} ({u:?})");
                    let s = sandbox(&old_tree(rel), &patch);
                    let outside = s.path().join("outside/f");
                    fs::write(&outside, DATA).unwrap();
                    let (r, o) = (rel.to_string(), outside.clone());
                    let patcher = after_base_check(move |old| {
                        let p = old.join(&r);
                        match how {
                            How::Symlink => {
                                fs::remove_file(&p).unwrap();
                                std::os::unix::fs::symlink(&o, &p).unwrap();
                            }
                            How::OtherFile => {
                                let tmp = old.parent().unwrap().join("other");
                                fs::write(&tmp, b"other content of another length\n").unwrap();
                                fs::rename(&tmp, &p).unwrap();
                            }
                            How::HardLinkOutside => {
                                fs::remove_file(&p).unwrap();
                                fs::hard_link(&o, &p).unwrap();
                            }
                            How::Appended => {
                                use std::io::Write;
                                let mut f = fs::OpenOptions::new().append(true).open(&p).unwrap();
                                f.write_all(b"appended after the check").unwrap();
                            }
                        }
                    });
                    // 1, and 1 more for the hard link the swap itself makes.
                    let links = 1 + u64::from(matches!(how, How::HardLinkOutside));
                    let result = run(&what, op, s.path(), patcher);
                    assert_eq!(
                        fs::metadata(&outside).unwrap().nlink(),
                        links,
                        "{what} {op:?}: the outside file was linked into the output"
                    );
                    assert_eq!(fs::read(&outside).unwrap(), DATA, "{what} {op:?}");
                    // No file of the result is the outside file's inode (a link made and the
                    // old tree removed since leaves the count as it was). On failure `target`
                    // is OLD as the swap left it.
                    let ino = fs::metadata(&outside).unwrap().ino();
                    for tree in ["out", "target"] {
                        let root = s.path().join(tree);
                        if root.is_dir() && (tree == "out" || result.is_ok()) {
                            for (p, _, _) in files_with_links(&root) {
                                let i = fs::symlink_metadata(&p).unwrap().ino();
                                assert_ne!(
                                    i,
                                    ino,
                                    "{what} {op:?}: {} is the outside file",
                                    p.display()
                                );
                            }
                        }
                    }
                    match result {
                        Ok(()) => match op {
                            Op::Apply => assert_eq!(read_tree(&s.path().join("out")), new),
                            Op::InPlace => {
                                assert_eq!(read_tree(&s.path().join("target")), new, "{what}")
                            }
                            Op::Verify => {}
                        },
                        Err(e) => assert!(
                            matches!(e, Error::WrongBase { .. } | Error::OutputMismatch { .. }),
                            "{what} {op:?}: not a clear error: {e}"
                        ),
                    }
                    n += 1;
                }
            }
        }
    }
    eprintln!("fs_handles: {n} files replaced after the base check, none used");
}

/// A directory just created in the staging tree replaced by a symlink to an outside
/// directory (before the files beneath it are written): nothing is written through it.
/// Also a symlink planted at the staging path itself.
#[test]
fn symlink_planted_in_the_stage_is_not_followed() {
    let mut n = 0;
    for rel in ["d/f", "a/d/f"] {
        for u in [Use::Unchanged, Use::DeltaSamePath] {
            let (patch, _) = relying_patch(rel, u);
            for op in [Op::Apply, Op::InPlace] {
                let what = format!("stage dir swapped before {rel} ({u:?})");
                let s = sandbox(&old_tree(rel), &patch);
                let outside = s.path().join("outside");
                let parent = rel.rsplit_once('/').unwrap().0.to_string();
                let o = outside.clone();
                let done = Arc::new(AtomicBool::new(false));
                let d2 = done.clone();
                let mut patcher = Patcher::new();
                patcher.hook(Box::new(move |e| {
                    if let ApplyEvent::Staged { stage, path } = e {
                        if path == parent && !d2.swap(true, Ordering::SeqCst) {
                            let p = stage.join(path);
                            fs::rename(&p, stage.join("moved-away")).unwrap();
                            std::os::unix::fs::symlink(&o, &p).unwrap();
                        }
                    }
                }));
                let result = run(&what, op, s.path(), patcher);
                assert!(done.load(Ordering::SeqCst), "{what}: hook not reached");
                let names: Vec<_> = fs::read_dir(&outside)
                    .unwrap()
                    .map(|e| e.unwrap().file_name())
                    .collect();
                assert!(names.is_empty(), "{what} {op:?}: wrote {names:?} outside");
                let e = result.expect_err(&format!("{what} {op:?}: accepted"));
                assert!(!e.to_string().contains('\n'), "{what}: {e}");
                n += 1;
            }
        }
    }
    // A symlink planted at the staging path an earlier revision used (`.out.bundelta-new-PID`;
    // stages now have a fresh random name): never followed, never removed, the apply succeeds.
    let (patch, _) = relying_patch("d/f", Use::Unchanged);
    let s = sandbox(&old_tree("d/f"), &patch);
    let stage = s
        .path()
        .join(format!(".out.bundelta-new-{}", std::process::id()));
    std::os::unix::fs::symlink(s.path().join("outside"), &stage).unwrap();
    let r = run(
        "symlink at the stage path",
        Op::Apply,
        s.path(),
        Patcher::new(),
    );
    r.expect("a planted old-style stage name does not stop the apply");
    assert_eq!(fs::read_dir(s.path().join("outside")).unwrap().count(), 0);
    assert!(fs::symlink_metadata(&stage)
        .unwrap()
        .file_type()
        .is_symlink());
    eprintln!("fs_handles: {n} symlinks planted in the stage, none followed");
}

/// An unchanged file that is also a copy source, applied in place: the hard link made for
/// the unchanged file moves its ctime, and its later use as a source must still accept it
/// (it is this apply's own link, not a change) and rebuild exactly NEW.
#[test]
fn in_place_file_linked_then_used_as_a_source_applies() {
    let n = DATA.len() as u64;
    let mut new = old_tree("f");
    new.insert("zcopy".into(), file(DATA));
    let scratch = tempfile::tempdir().unwrap();
    write_tree(&scratch.path().join("new"), &new);
    let mut h = blake3::Hasher::new();
    h.update(&blake(DATA));
    h.update(&blake(DATA));
    let m = Manifest {
        new_digest: bundelta::bundle_digest(scratch.path().join("new")).unwrap(),
        base_digest: *h.finalize().as_bytes(),
        old_files: vec![OldFile {
            path: "f".into(),
            size: n,
        }],
        entries: vec![
            Entry {
                path: "f".into(),
                kind: EntryKind::File {
                    exec: false,
                    size: n,
                    op: FileOp::Unchanged,
                },
            },
            Entry {
                path: "zcopy".into(),
                kind: EntryKind::File {
                    exec: false,
                    size: n,
                    op: FileOp::Copy { source: 0 },
                },
            },
        ],
        ..Manifest::default()
    };
    let patch = assemble(FLAG_DIRECTORY, &m.encode(), 2 * n, [&[], &[], &[]]);
    for op in OPS {
        let s = sandbox(&old_tree("f"), &patch);
        run("linked, then a source", op, s.path(), Patcher::new())
            .unwrap_or_else(|e| panic!("{op:?}: {e}"));
        if op == Op::InPlace {
            assert_eq!(read_tree(&s.path().join("target")), new);
        }
    }
}

/// The CLI (`apply`, `verify --old`, `apply --in-place`) with a FIFO in OLD where an unchanged
/// file is expected: each exits promptly with an error naming the path (a child process,
/// killed after 120 s, so a regression fails instead of hanging).
#[cfg(feature = "cli")]
#[test]
fn cli_refuses_a_fifo_in_old_promptly() {
    let (patch, _) = relying_patch("d/f", Use::Unchanged);
    for op in OPS {
        let s = sandbox(&old_tree("d/f"), &patch);
        let old = old_of(s.path(), op);
        fs::remove_file(old.join("d/f")).unwrap();
        mkfifo(&old.join("d/f"));
        let (o, p, out) = (
            old.to_str().unwrap().to_string(),
            s.path().join("p.bdp").to_str().unwrap().to_string(),
            s.path().join("out").to_str().unwrap().to_string(),
        );
        let args: Vec<&str> = match op {
            Op::Apply => vec!["apply", &o, &p, "-o", &out],
            Op::Verify => vec!["verify", &p, "--old", &o],
            Op::InPlace => vec!["apply", &o, &p, "--in-place"],
        };
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_bundelta"))
            .args(&args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut waited = Duration::ZERO;
        while child.try_wait().unwrap().is_none() {
            if waited > Duration::from_secs(120) {
                child.kill().unwrap();
                panic!("bundelta {args:?}: still blocked after 120 s");
            }
            std::thread::sleep(Duration::from_millis(50));
            waited += Duration::from_millis(50);
        }
        let output = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success(),
            "bundelta {args:?} accepted a FIFO"
        );
        assert!(
            err.contains("d/f") && err.contains("FIFO"),
            "bundelta {args:?}: {err}"
        );
    }
}
