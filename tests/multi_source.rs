//! Extra delta sources: a new file assembled from several old files is diffed against all of
//! them (format section 4: the source of a `modify` is the concatenation of its records).

use bundelta::format::{EntryKind, FileOp};
use bundelta::{DiffOptions, Patcher};

use crate::util::*;

fn noise(rng: &mut Rng, n: usize) -> Vec<u8> {
    (0..n).map(|_| rng.next() as u8).collect()
}

fn file(data: Vec<u8>) -> Item {
    Item::File { data, exec: false }
}

#[test]
fn a_file_assembled_from_two_old_files_is_diffed_against_both() {
    let mut rng = Rng(0x05ee_d0f2);
    let (a, b, c) = (
        noise(&mut rng, 40_000),
        noise(&mut rng, 40_000),
        noise(&mut rng, 40_000),
    );
    let mut old = Tree::new();
    old.insert("lib".into(), Item::Dir);
    old.insert("lib/a.js".into(), file(a.clone()));
    old.insert("lib/b.js".into(), file(b.clone()));
    old.insert("lib/c.js".into(), file(c.clone()));
    let mut new = old.clone();
    // Half of B moved into A (a merged module), with a few edits; and a new file made of
    // parts of C and B (a split one). Incompressible bytes: each part NEW does not find in
    // its one best source would cost its full size.
    let merged = rng.edit(&[&a[..25_000], &b[5_000..30_000]].concat(), 3);
    new.insert("lib/a.js".into(), file(merged));
    new.insert("lib/b.js".into(), file(b[..20_000].to_vec()));
    let split = [&c[..15_000], &b[20_000..35_000]].concat();
    new.insert("lib/d.js".into(), file(split));

    let (dir, patch) = write_case(&old, &new, None);
    let stats = DiffOptions::new()
        .diff_paths(dir.path().join("old"), dir.path().join("new"))
        .unwrap()
        .1;
    assert_eq!(stats.multi_source, 2, "{stats:?}");
    // With one source each, 25,000 + 15,000 incompressible bytes would be carried.
    assert!(patch.len() < 4_000, "{} bytes", patch.len());
    let m = manifest_of(&old, &patch);
    let sources = |path: &str| {
        let e = m.entries.iter().find(|e| e.path == path).unwrap();
        match &e.kind {
            EntryKind::File {
                op: FileOp::Delta { sources, .. },
                ..
            } => sources
                .iter()
                .map(|&i| m.old_files[i as usize].path.as_str())
                .collect::<Vec<_>>(),
            k => panic!("{path}: {k:?}"),
        }
    };
    // The main source (the same path, or the most similar file) first.
    assert_eq!(sources("lib/a.js"), ["lib/a.js", "lib/b.js"]);
    let d = sources("lib/d.js");
    assert_eq!(d.len(), 2);
    assert!(d.contains(&"lib/b.js") && d.contains(&"lib/c.js"), "{d:?}");
    // `info` with OLD counts them.
    let (pp, op) = (dir.path().join("p.bdp"), dir.path().join("old"));
    let out = crate::cli::bundelta(&[
        "info",
        pp.to_str().unwrap(),
        "--old",
        op.to_str().unwrap(),
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["multi_source"], 2, "{v}");
    // The oracle and the applier rebuild NEW.
    assert_eq!(naive_apply(&old, &patch), new);
    Patcher::new()
        .apply(
            dir.path().join("old"),
            dir.path().join("p.bdp"),
            dir.path().join("out"),
        )
        .unwrap();
    assert_eq!(read_tree(&dir.path().join("out")), new);
}

/// Content that many new files share (a new license header) picks no extra source, and a
/// file whose source holds all of its content gets none.
#[test]
fn shared_boilerplate_and_covered_files_get_no_extra_source() {
    let mut rng = Rng(0xb0_11e7);
    let header = noise(&mut rng, 3_000);
    let mut old = Tree::new();
    old.insert("lib".into(), Item::Dir);
    let mut new = old.clone();
    // OLD has the header in one file only; NEW puts it on top of every module.
    old.insert("lib/license.js".into(), file(header.clone()));
    new.insert("lib/license.js".into(), file(header.clone()));
    for i in 0..8 {
        let body = noise(&mut rng, 10_000);
        old.insert(format!("lib/m{i}.js"), file(body.clone()));
        let edited = rng.edit(&body, 2);
        new.insert(
            format!("lib/m{i}.js"),
            file([&header[..], &edited].concat()),
        );
    }
    let (dir, patch) = write_case(&old, &new, None);
    let stats = DiffOptions::new()
        .diff_paths(dir.path().join("old"), dir.path().join("new"))
        .unwrap()
        .1;
    assert_eq!(stats.multi_source, 0, "{stats:?}");
    assert_eq!(naive_apply(&old, &patch), new);
    drop(dir);
}
