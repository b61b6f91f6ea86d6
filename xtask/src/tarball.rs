//! A deterministic tar of a directory, for the peers that only diff single files: what a user
//! would do with `tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner`.
//!
//! POSIX ustar: names in byte order, depth first (a directory's entry, then its contents),
//! mtime 0, uid/gid 0, no user or group names, permission bits kept. Regular files, directories
//! and symlinks (stored as links); anything else is refused. A path or link target too long
//! for the ustar fields gets a pax extended header (`path=`, `linkpath=`) first.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use anyhow::{bail, Context, Result};
use bundelta::{walk_sorted, WalkEntry, WalkKind};

const BLOCK: usize = 512;

/// Writes `src` (a directory) as a tar at `out`; returns the tar's size in bytes.
pub fn write_tar(src: &Path, out: &Path) -> Result<u64> {
    let f = File::create(out).with_context(|| format!("{}: cannot create", out.display()))?;
    let mut w = Counting {
        inner: BufWriter::with_capacity(256 << 10, f),
        n: 0,
    };
    add_dir(&mut w, src)?;
    // End of archive: two zero blocks, padded to a 10 KiB record as tar does.
    w.write_all(&[0u8; 2 * BLOCK])?;
    let rec = 20 * BLOCK as u64;
    let pad = (rec - w.n % rec) % rec;
    w.write_all(&vec![0u8; pad as usize])?;
    w.inner
        .flush()
        .with_context(|| format!("{}: write failed", out.display()))?;
    Ok(w.n)
}

struct Counting<W: Write> {
    inner: W,
    n: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let k = self.inner.write(buf)?;
        self.n += k as u64;
        Ok(k)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Every entry under `src` in the order of [`walk_sorted`] (names in byte order, depth first,
/// a directory's entry before its contents; symlinks stored, never followed).
fn add_dir<W: Write>(w: &mut Counting<W>, src: &Path) -> Result<()> {
    walk_sorted(src, |e: &WalkEntry<'_>| -> Result<()> {
        let r = e.rel.as_os_str().as_bytes();
        match e.kind {
            WalkKind::Dir => {
                let mut n = r.to_vec();
                n.push(b'/');
                header(w, &n, e.mode, 0, b'5', b"")?;
            }
            WalkKind::Symlink => {
                let target = e.link.unwrap_or_default();
                header(w, r, 0o777, 0, b'2', target.as_bytes())?;
            }
            WalkKind::File => {
                let size = e.size;
                header(w, r, e.mode, size, b'0', b"")?;
                let mut f = File::open(e.path)
                    .with_context(|| format!("{}: cannot open", e.path.display()))?;
                let copied = io::copy(&mut f, w)
                    .with_context(|| format!("{}: cannot read", e.path.display()))?;
                if copied != size {
                    bail!("{}: changed size while being read", e.path.display());
                }
                let pad = (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64;
                w.write_all(&vec![0u8; pad as usize])?;
            }
            _ => bail!(
                "{}: not a regular file, directory or symlink",
                e.path.display()
            ),
        }
        Ok(())
    })
}

/// `value` as zero-padded octal in a field of `width` bytes (the last one NUL).
fn octal(field: &mut [u8], value: u64) -> Result<()> {
    let digits = field.len() - 1;
    let s = format!("{value:0digits$o}");
    if s.len() > digits {
        bail!("{value} does not fit a tar header field");
    }
    field[..digits].copy_from_slice(s.as_bytes());
    field[digits] = 0;
    Ok(())
}

/// Splits a path into ustar (prefix, name) if it fits, at a '/'.
fn split_ustar(path: &[u8]) -> Option<(&[u8], &[u8])> {
    if path.len() <= 100 {
        return Some((b"", path));
    }
    // The prefix is at most 155 bytes, the name at most 100, split at a '/'.
    (0..path.len())
        .rev()
        .filter(|&i| path[i] == b'/')
        .find(|&i| i <= 155 && path.len() - i - 1 <= 100 && path.len() - i > 1)
        .map(|i| (&path[..i], &path[i + 1..]))
}

fn block(
    name: &[u8],
    prefix: &[u8],
    mode: u32,
    size: u64,
    typ: u8,
    link: &[u8],
) -> Result<Vec<u8>> {
    let mut h = vec![0u8; BLOCK];
    h[..name.len()].copy_from_slice(name);
    octal(&mut h[100..108], u64::from(mode))?;
    octal(&mut h[108..116], 0)?;
    octal(&mut h[116..124], 0)?;
    octal(&mut h[124..136], size)?;
    octal(&mut h[136..148], 0)?;
    h[156] = typ;
    h[157..157 + link.len()].copy_from_slice(link);
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    octal(&mut h[329..337], 0)?;
    octal(&mut h[337..345], 0)?;
    h[345..345 + prefix.len()].copy_from_slice(prefix);
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
    Ok(h)
}

/// A pax record "LEN key=value\n", where LEN counts the whole record.
fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let body = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = body + 1;
    while body + len.to_string().len() != len {
        len = body + len.to_string().len();
    }
    let mut r = format!("{len} {key}=").into_bytes();
    r.extend_from_slice(value);
    r.push(b'\n');
    r
}

fn header<W: Write>(
    w: &mut W,
    path: &[u8],
    mode: u32,
    size: u64,
    typ: u8,
    link: &[u8],
) -> Result<()> {
    let split = split_ustar(path);
    let mut pax = Vec::new();
    if split.is_none() {
        pax.extend(pax_record("path", path));
    }
    if link.len() > 100 {
        pax.extend(pax_record("linkpath", link));
    }
    if !pax.is_empty() {
        let pad = (BLOCK - pax.len() % BLOCK) % BLOCK;
        w.write_all(&block(
            b"././@PaxHeader",
            b"",
            0o644,
            pax.len() as u64,
            b'x',
            b"",
        )?)?;
        w.write_all(&pax)?;
        w.write_all(&vec![0u8; pad])?;
    }
    let (prefix, name) = split.unwrap_or((b"", &path[..path.len().min(100)]));
    let link = &link[..link.len().min(100)];
    w.write_all(&block(name, prefix, mode, size, typ, link)?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;
    use std::os::unix::fs::PermissionsExt;
    use std::process::Command;

    #[test]
    fn pax_record_length_counts_itself() {
        let r = pax_record("path", b"abc");
        assert_eq!(r, b"12 path=abc\n");
        let long = vec![b'x'; 95];
        let r = pax_record("path", &long);
        assert_eq!(r.len().to_string(), String::from_utf8_lossy(&r[..3]));
    }

    #[test]
    fn deterministic_and_readable_by_tar() {
        let root = std::env::temp_dir().join(format!("bundelta-tar-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let d = root.join("tree");
        let deep = format!("{}/{}", "d".repeat(120), "e".repeat(90));
        fs::create_dir_all(d.join("sub/empty")).unwrap();
        fs::create_dir_all(d.join(&deep)).unwrap();
        fs::write(d.join("b.txt"), b"hello").unwrap();
        fs::write(d.join("a.bin"), vec![7u8; 1000]).unwrap();
        fs::write(d.join("sub/run.sh"), b"#!/bin/sh\n").unwrap();
        fs::set_permissions(d.join("sub/run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(d.join(&deep).join("f".repeat(100)), b"deep").unwrap();
        symlink("../b.txt", d.join("sub/link")).unwrap();
        symlink("t".repeat(150), d.join("longlink")).unwrap();
        let t1 = root.join("1.tar");
        let t2 = root.join("2.tar");
        let n = write_tar(&d, &t1).unwrap();
        assert_eq!(n, fs::metadata(&t1).unwrap().len());
        assert_eq!(n % 10240, 0);
        // Same bytes for a copy made later (other mtimes, other inode order).
        std::thread::sleep(std::time::Duration::from_millis(20));
        fs::write(d.join("b.txt"), b"hello").unwrap();
        write_tar(&d, &t2).unwrap();
        assert_eq!(fs::read(&t1).unwrap(), fs::read(&t2).unwrap());

        let Ok(out) = Command::new("tar").arg("-tvf").arg(&t1).output() else {
            return; // no tar on this machine: the byte checks above still ran
        };
        assert!(out.status.success(), "{out:?}");
        let list = String::from_utf8_lossy(&out.stdout);
        let names: Vec<&str> = list
            .lines()
            .map(|l| l.split_whitespace().nth(5).unwrap())
            .collect();
        assert_eq!(names[0], "a.bin");
        assert_eq!(names[1], "b.txt");
        assert!(names.contains(&"sub/run.sh"), "{list}");
        assert!(list.contains("-rwxr-xr-x 0/0"), "{list}");
        assert!(list.contains("sub/link -> ../b.txt"), "{list}");
        assert!(list.contains(&"t".repeat(150)), "{list}");
        assert!(
            list.contains(&format!("{deep}/{}", "f".repeat(100))),
            "{list}"
        );
        assert!(list.contains("1970-01-01"), "{list}");
        let x = root.join("x");
        fs::create_dir(&x).unwrap();
        let st = Command::new("tar")
            .arg("-xf")
            .arg(&t1)
            .arg("-C")
            .arg(&x)
            .status()
            .unwrap();
        assert!(st.success());
        assert_eq!(
            crate::verify::tree_diff(&x, &d).unwrap(),
            None,
            "extracted tree differs"
        );
        fs::remove_dir_all(&root).unwrap();
    }
}
