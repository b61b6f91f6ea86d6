//! Byte-for-byte checks of a tool's output against NEW: one file, or a whole tree (names,
//! types, file bytes, executable bits, symlink targets). Streams through small buffers so
//! that the bench process stays small (its own peak RSS is a floor under every child's).

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Whether two files have the same bytes.
pub fn files_equal(a: &Path, b: &Path) -> Result<bool> {
    let (ma, mb) = (fs::metadata(a)?, fs::metadata(b)?);
    if ma.len() != mb.len() {
        return Ok(false);
    }
    let mut fa = File::open(a).with_context(|| format!("{}: cannot open", a.display()))?;
    let mut fb = File::open(b).with_context(|| format!("{}: cannot open", b.display()))?;
    let mut ba = vec![0u8; 64 << 10];
    let mut bb = vec![0u8; 64 << 10];
    loop {
        let n = read_full(&mut fa, &mut ba)?;
        let m = read_full(&mut fb, &mut bb)?;
        if n != m || ba[..n] != bb[..m] {
            return Ok(false);
        }
        if n == 0 {
            return Ok(true);
        }
    }
}

fn read_full(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// The first difference between `out` and `new` (None when they are the same): for files,
/// their bytes; for trees, names, types, bytes, executable bits and symlink targets.
pub fn diff_output(out: &Path, new: &Path) -> Result<Option<String>> {
    let mo = match fs::symlink_metadata(out) {
        Ok(m) => m,
        Err(_) => return Ok(Some("no output was written".into())),
    };
    let mn = fs::symlink_metadata(new)?;
    if mn.is_dir() {
        if !mo.is_dir() {
            return Ok(Some("output is not a directory".into()));
        }
        return tree_diff(out, new);
    }
    if !mo.is_file() {
        return Ok(Some("output is not a regular file".into()));
    }
    Ok(if files_equal(out, new)? {
        None
    } else {
        Some(format!(
            "output differs from new ({} bytes, new has {})",
            mo.len(),
            mn.len()
        ))
    })
}

/// Every path under `root` (relative) with its full path ([`bundelta::walk_sorted`]).
fn listing(root: &Path) -> Result<BTreeMap<PathBuf, PathBuf>> {
    let mut out = BTreeMap::new();
    bundelta::walk_sorted(root, |e| -> Result<()> {
        out.insert(e.rel.to_path_buf(), e.path.to_path_buf());
        Ok(())
    })?;
    Ok(out)
}

/// The first difference between two trees, or None.
pub fn tree_diff(out: &Path, new: &Path) -> Result<Option<String>> {
    let lo = listing(out)?;
    let ln = listing(new)?;
    let extra: Vec<_> = lo.keys().filter(|k| !ln.contains_key(*k)).take(3).collect();
    let missing: Vec<_> = ln.keys().filter(|k| !lo.contains_key(*k)).take(3).collect();
    if !extra.is_empty() || !missing.is_empty() {
        return Ok(Some(format!(
            "names differ (only in output: {extra:?}, missing: {missing:?})"
        )));
    }
    for (rel, po) in &lo {
        let pn = &ln[rel];
        let (mo, mn) = (fs::symlink_metadata(po)?, fs::symlink_metadata(pn)?);
        let (to, tn) = (mo.file_type(), mn.file_type());
        let shown = rel.display();
        if to.is_dir() != tn.is_dir() || to.is_symlink() != tn.is_symlink() {
            return Ok(Some(format!("type differs: {shown}")));
        }
        if tn.is_symlink() {
            if fs::read_link(po)? != fs::read_link(pn)? {
                return Ok(Some(format!("symlink target differs: {shown}")));
            }
        } else if tn.is_file() {
            if !to.is_file() {
                return Ok(Some(format!("type differs: {shown}")));
            }
            let (xo, xn) = (
                mo.permissions().mode() & 0o111,
                mn.permissions().mode() & 0o111,
            );
            if xo != xn {
                return Ok(Some(format!(
                    "executable bits differ: {shown} ({xo:03o} vs {xn:03o})"
                )));
            }
            if !files_equal(po, pn)? {
                return Ok(Some(format!("content differs: {shown}")));
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn finds_each_kind_of_difference() {
        let root = std::env::temp_dir().join(format!("bundelta-verify-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let mk = |name: &str| {
            let d = root.join(name);
            fs::create_dir_all(d.join("sub/empty")).unwrap();
            fs::write(d.join("a"), vec![1u8; 200_000]).unwrap();
            fs::write(d.join("sub/x"), b"#!/bin/sh\n").unwrap();
            fs::set_permissions(d.join("sub/x"), fs::Permissions::from_mode(0o755)).unwrap();
            symlink("../a", d.join("sub/l")).unwrap();
            d
        };
        let (a, b) = (mk("a"), mk("b"));
        assert_eq!(tree_diff(&a, &b).unwrap(), None);
        assert_eq!(diff_output(&a, &b).unwrap(), None);

        let mut big = vec![1u8; 200_000];
        big[150_000] = 2;
        fs::write(b.join("a"), &big).unwrap();
        assert!(tree_diff(&a, &b)
            .unwrap()
            .unwrap()
            .contains("content differs: a"));
        fs::write(b.join("a"), vec![1u8; 200_000]).unwrap();

        fs::set_permissions(b.join("sub/x"), fs::Permissions::from_mode(0o644)).unwrap();
        assert!(tree_diff(&a, &b)
            .unwrap()
            .unwrap()
            .contains("executable bits"));
        fs::set_permissions(b.join("sub/x"), fs::Permissions::from_mode(0o755)).unwrap();

        fs::remove_file(b.join("sub/l")).unwrap();
        symlink("a", b.join("sub/l")).unwrap();
        assert!(tree_diff(&a, &b)
            .unwrap()
            .unwrap()
            .contains("symlink target"));
        fs::remove_file(b.join("sub/l")).unwrap();
        symlink("../a", b.join("sub/l")).unwrap();

        fs::remove_dir(b.join("sub/empty")).unwrap();
        assert!(tree_diff(&a, &b).unwrap().unwrap().contains("names differ"));
        fs::write(b.join("sub/empty"), b"").unwrap();
        assert!(tree_diff(&a, &b).unwrap().unwrap().contains("type differs"));

        assert!(diff_output(&root.join("nothing"), &a).unwrap().is_some());
        assert_eq!(diff_output(&a.join("a"), &b.join("a")).unwrap(), None);
        assert!(diff_output(&a.join("a"), &a.join("sub/x"))
            .unwrap()
            .is_some());
        fs::remove_dir_all(&root).unwrap();
    }
}
