//! Bundle trees on disk: scanning a directory into a sorted entry list, hashing files, and the
//! canonical digest that identifies a whole bundle version.
//!
//! The digest is what lets an applier say "this directory already is the target version" and
//! what every rebuilt output is checked against before it replaces anything. It covers every
//! entry's path, kind, executable bit, size and content hash, and every symlink target.

use std::fs::{self, File};
use std::io::Read;
use std::path::Path;

use crate::error::{Error, Result};
use crate::format::{put_varint, Hash};
use crate::sys::{self, Dir, Kind};

/// A scanned entry: [`crate::format::ListEntry`] (path relative to the root, `/`-separated).
pub(crate) type Node = crate::format::ListEntry;
/// What a scanned path is.
pub(crate) type NodeKind = crate::format::ListKind;

/// Scan `root` (a directory) recursively, without following symlinks.
///
/// Returns entries sorted by path bytes. Fails on a name that is not UTF-8, on two names that
/// differ only by case, and on anything that is not a regular file, directory or symlink.
pub(crate) fn scan(root: &Path) -> Result<Vec<Node>> {
    let dir = Dir::open(root).map_err(|e| Error::io(root, "open directory", e))?;
    scan_dir(&dir)
}

/// [`scan`] beneath an open directory handle: each subdirectory is opened from its parent's
/// handle with `O_NOFOLLOW`, so a directory swapped for a symlink during the scan is never
/// descended through (the open fails instead).
pub(crate) fn scan_dir(root: &Dir) -> Result<Vec<Node>> {
    let mut out = Vec::new();
    scan_into(root, "", &mut out)?;
    out.sort_by(|a, b| a.path.cmp(&b.path));
    let clash = crate::format::case_clash(
        out.iter().map(|n| n.path.as_str()),
        &mut crate::format::Budget::unlimited(),
    )?;
    if let Some((i, j)) = clash {
        return Err(Error::invalid_input(
            &root.display(&out[j].path),
            format!(
                "differs from {:?} only by case; such a bundle cannot be applied on \
                 case-insensitive file systems",
                out[i].path
            ),
        ));
    }
    Ok(out)
}

fn scan_into(dir: &Dir, prefix: &str, out: &mut Vec<Node>) -> Result<()> {
    let entries = dir
        .entries()
        .map_err(|e| Error::io(dir.path(), "read directory", e))?;
    for (name, meta) in entries {
        let full = dir.path().join(&name);
        let name_str = name.to_str().ok_or_else(|| {
            Error::invalid_input(
                &full,
                "file name is not UTF-8; bundles hold UTF-8 names only",
            )
        })?;
        let rel = if prefix.is_empty() {
            name_str.to_string()
        } else {
            format!("{prefix}/{name_str}")
        };
        match meta.kind {
            Kind::Dir => {
                out.push(Node {
                    path: rel.clone(),
                    kind: NodeKind::Dir,
                });
                let sub = dir.sub(&name).map_err(|e| {
                    Error::io(&full, "open directory (never following a symlink)", e)
                })?;
                scan_into(&sub, &rel, out)?;
            }
            Kind::File => out.push(Node {
                path: rel,
                kind: NodeKind::File {
                    exec: meta.exec,
                    size: meta.size,
                },
            }),
            Kind::Symlink => {
                let t = dir
                    .read_link(&name)
                    .map_err(|e| Error::io(&full, "read link", e))?;
                let target = t
                    .to_str()
                    .ok_or_else(|| Error::invalid_input(&full, "symlink target is not UTF-8"))?
                    .to_string();
                out.push(Node {
                    path: rel,
                    kind: NodeKind::Symlink { target },
                });
            }
            other => {
                return Err(Error::invalid_input(
                    &full,
                    format!(
                        "is {}: not a regular file, directory or symlink (devices, FIFOs and \
                         sockets cannot be bundled)",
                        other.name()
                    ),
                ))
            }
        }
    }
    Ok(())
}

/// Whether a file's mode has an executable bit (the `diff` side's scan of inputs).
#[cfg(feature = "diff")]
pub(crate) use crate::sys::is_exec;

/// Buffer size for streaming reads on the apply side.
pub(crate) const IO_BUF: usize = 64 * 1024;

/// blake3 and length of everything `r` yields, read through a small buffer.
pub(crate) fn hash_reader(r: impl Read, path: &Path) -> Result<(u64, Hash)> {
    let mut h = blake3::Hasher::new();
    let n = hash_into(&mut h, r, path)?;
    Ok((n, *h.finalize().as_bytes()))
}

thread_local! {
    /// The read buffer of [`hash_into`], one per thread: hashing thousands of small files
    /// spent most of its time zeroing a fresh buffer for each (package-tree-small's apply:
    /// 46% of its instructions).
    static HASH_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Feed everything `r` yields into `h`; returns the byte count.
pub(crate) fn hash_into(h: &mut blake3::Hasher, mut r: impl Read, path: &Path) -> Result<u64> {
    HASH_BUF.with_borrow_mut(|buf| {
        buf.resize(IO_BUF, 0);
        let mut n: u64 = 0;
        loop {
            let k = match r.read(buf) {
                Ok(0) => return Ok(n),
                Ok(k) => k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::io(path, "read", e)),
            };
            h.update(&buf[..k]);
            n += k as u64;
        }
    })
}

/// blake3 and length of a file, refusing anything that is not a regular file (symlinks are not
/// followed, a FIFO is not waited on).
pub(crate) fn hash_file(path: &Path) -> Result<(u64, Hash)> {
    let f = open_regular(path)?;
    hash_reader(f, path)
}

/// Open a regular file for reading without following a final symlink, without blocking on a
/// FIFO, and refusing anything but a regular file (checked on the open handle).
pub(crate) fn open_regular(path: &Path) -> Result<File> {
    sys::open_file_path(path)
        .map(|o| o.file)
        .map_err(|e| Error::io(path, "open", e))
}

/// Incremental computation of the canonical digest of a directory bundle.
pub(crate) struct TreeDigest {
    h: blake3::Hasher,
    scratch: Vec<u8>,
}

impl TreeDigest {
    pub(crate) fn new() -> TreeDigest {
        TreeDigest {
            h: blake3::Hasher::new_derive_key("bundelta tree digest v1"),
            scratch: Vec::new(),
        }
    }

    fn path(&mut self, kind: u8, path: &str) {
        self.scratch.clear();
        self.scratch.push(kind);
        put_varint(&mut self.scratch, path.len() as u64);
        self.scratch.extend_from_slice(path.as_bytes());
    }

    pub(crate) fn dir(&mut self, path: &str) {
        self.path(0, path);
        self.h.update(&self.scratch);
    }

    pub(crate) fn file(&mut self, path: &str, exec: bool, size: u64, hash: &Hash) {
        self.path(1, path);
        self.scratch.push(u8::from(exec));
        self.scratch.extend_from_slice(&size.to_le_bytes());
        self.scratch.extend_from_slice(hash);
        self.h.update(&self.scratch);
    }

    pub(crate) fn symlink(&mut self, path: &str, target: &str) {
        self.path(2, path);
        put_varint(&mut self.scratch, target.len() as u64);
        self.scratch.extend_from_slice(target.as_bytes());
        self.h.update(&self.scratch);
    }

    pub(crate) fn finish(&self) -> Hash {
        *self.h.finalize().as_bytes()
    }
}

/// Digest of the bundle at `root`: for a file, blake3 of its content; for a directory, the
/// tree digest over every entry (hashing every file).
/// Bytes of a bundle's file contents: a file's size, or the sum over a directory's files.
#[cfg(all(feature = "release", feature = "diff"))]
pub(crate) fn bundle_bytes(root: &Path) -> Result<u64> {
    let md = fs::symlink_metadata(root).map_err(|e| Error::io(root, "stat", e))?;
    if !md.is_dir() {
        return Ok(md.len());
    }
    Ok(scan(root)?
        .iter()
        .map(|n| match n.kind {
            NodeKind::File { size, .. } => size,
            _ => 0,
        })
        .sum())
}

pub(crate) fn bundle_digest(root: &Path) -> Result<Hash> {
    let md = fs::symlink_metadata(root).map_err(|e| Error::io(root, "stat", e))?;
    if md.is_file() {
        return Ok(hash_file(root)?.1);
    }
    if !md.is_dir() {
        return Err(Error::invalid_input(root, "not a file or directory"));
    }
    let dir = Dir::open(root).map_err(|e| Error::io(root, "open directory", e))?;
    let mut d = TreeDigest::new();
    for n in scan_dir(&dir)? {
        match &n.kind {
            NodeKind::Dir => d.dir(&n.path),
            NodeKind::Symlink { target } => d.symlink(&n.path, target),
            NodeKind::File { exec, .. } => {
                let p = dir.display(&n.path);
                let o = dir
                    .open_file(&n.path)
                    .map_err(|e| Error::io(&p, "open", e))?;
                let (size, hash) = hash_reader(&o.file, &p)?;
                d.file(&n.path, *exec, size, &hash);
            }
        }
    }
    Ok(d.finish())
}

/// Lowercase hex of a hash.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// assert_eq!(bundelta::hex(&[0xab; 32]), "ab".repeat(32));
/// # let dir = tempfile::tempdir()?;
/// let empty = dir.path().join("empty");
/// std::fs::write(&empty, b"")?;
/// // A file's bundle digest is the blake3 of its content, here of no bytes.
/// let digest = bundelta::hex(&bundelta::bundle_digest(&empty)?);
/// assert_eq!(digest, "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262");
/// # Ok(()) }
/// ```
pub fn hex(h: &Hash) -> String {
    hex_bytes(h)
}

/// Lowercase hex of any bytes: the one hex encoder of the crate (hashes, keys, fingerprints).
pub(crate) fn hex_bytes(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(2 * bytes.len());
    for &b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    s
}
