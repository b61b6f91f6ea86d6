//! A single-file patch applied into any writer, with OLD read through [`ReadAt`]: for clients
//! whose old version is not a path (an asset inside an app package, bytes in memory, a C
//! callback) or whose output goes somewhere else than a new file (a flash partition, a socket).
//!
//! The checks are those of [`Patcher::apply`]: the limits when the patch is opened, OLD hashed
//! and compared with the patch's base digest before the first byte is written, every byte
//! written hashed and compared with the new digest at the end (and, for a patch read from a
//! stream, its checksum and signature). What cannot be the same is the commit: the bytes go to
//! the caller's writer as they are made, so an error after the first write means the caller
//! must discard what it received. OLD is read twice (hashed, then used): a `ReadAt` whose bytes
//! change in between makes an output that fails the final digest check.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::format::{EntryKind, FileOp, Hash};
use crate::readat::{ReadAt, Section};

use super::stream::{apply_delta, Source, Streams};
use super::{ApplyReport, Patch, Patcher};

/// How messages name OLD read through a [`ReadAt`].
const OLD_NAME: &str = "(old)";

/// Hash everything `old` holds: its length and blake3.
fn hash_all(old: &dyn ReadAt) -> Result<(u64, Hash)> {
    let mut h = blake3::Hasher::new();
    let n = crate::tree::hash_into(&mut h, Section::new(old, 0, u64::MAX), Path::new(OLD_NAME))?;
    Ok((n, *h.finalize().as_bytes()))
}

/// A writer that hashes and counts what goes through.
struct Hashing<'w> {
    out: &'w mut dyn Write,
    h: blake3::Hasher,
    n: u64,
}

impl Write for Hashing<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let k = self.out.write(buf)?;
        self.h.update(&buf[..k]);
        self.n += k as u64;
        Ok(k)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

impl Patcher {
    /// Apply a single-file patch ([`Patcher::open`], [`Patcher::open_reader`]) to `old`, read
    /// through [`ReadAt`], writing the new file into `out`, within the same memory limit.
    ///
    /// OLD is hashed and checked before the first byte is written; every byte written is
    /// hashed, and the result is `Ok` only when the whole output matched the patch's digest
    /// (and a streamed patch's checksum and signature held). The bytes reach `out` as they
    /// are made: on `Err`, discard what `out` received. A directory patch is refused (it
    /// makes a tree: use [`Patcher::apply`]).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # #[cfg(feature = "diff")] {
    /// let old: &[u8] = b"the quick brown fox jumps over the lazy dog";
    /// let new: &[u8] = b"the quick brown cat jumps over the lazy dog!";
    /// let patch = bundelta::DiffOptions::new().diff_bytes(old, new)?;
    /// let patcher = bundelta::Patcher::new();
    /// let p = patcher.open_reader(std::io::Cursor::new(patch), "patch")?;
    /// let mut out = Vec::new();
    /// let report = patcher.apply_to_writer(&old, p, &mut out)?;
    /// assert_eq!(out, new);
    /// assert_eq!(report.digest, *blake3::hash(new).as_bytes());
    /// # }
    /// # Ok(()) }
    /// ```
    pub fn apply_to_writer(
        &self,
        old: &dyn ReadAt,
        p: Patch,
        out: &mut dyn Write,
    ) -> Result<ApplyReport> {
        if p.header.is_directory() {
            return Err(Error::invalid_input(
                p.path(),
                "a directory patch makes a tree, not one stream of bytes: apply it to a \
                 directory (Patcher::apply)",
            ));
        }
        let m = p.m();
        let [e] = &m.entries[..] else {
            return Err(Error::corrupt(
                "manifest",
                format!(
                    "a single-file patch has one entry, this one {}",
                    m.entries.len()
                ),
            ));
        };
        let EntryKind::File { size, op, .. } = &e.kind else {
            return Err(Error::corrupt(
                "manifest",
                "a single-file patch makes a file",
            ));
        };
        let size = *size;
        // Every old file a single-file patch names is OLD itself.
        if m.old_files.iter().any(|f| !f.path.is_empty()) {
            return Err(Error::corrupt(
                "manifest",
                "a single-file patch names an old file by path",
            ));
        }
        let in_table = |i: &u32| (*i as usize) < m.old_files.len();
        let indices_ok = match op {
            FileOp::Copy { source } => in_table(source),
            FileOp::Delta { sources, .. } => sources.iter().all(in_table),
            _ => true,
        };
        if !indices_ok {
            return Err(Error::corrupt("manifest", "old-file index out of range"));
        }
        let relies = !m.old_files.is_empty() || op.reads_own_path();
        let old_len = if relies {
            let (len, hash) = hash_all(old)?;
            let mut h = blake3::Hasher::new();
            for f in &m.old_files {
                if f.size != len {
                    return Err(Error::wrong_base(
                        OLD_NAME,
                        format!("size is {len}, the patch expects {}", f.size),
                    ));
                }
                h.update(&hash);
            }
            if op.reads_own_path() {
                let want = match op {
                    FileOp::Delta { base_size, .. } => *base_size,
                    _ => size,
                };
                if len != want {
                    return Err(Error::wrong_base(
                        OLD_NAME,
                        format!("size is {len}, the patch expects {want}"),
                    ));
                }
                h.update(&hash);
            }
            if *h.finalize().as_bytes() != m.base_digest {
                return Err(Error::wrong_base(
                    OLD_NAME,
                    "content differs (blake3 mismatch)",
                ));
            }
            len
        } else {
            0
        };
        let shown = PathBuf::from(OLD_NAME);
        let mut run = |mut st: Streams<'_>| -> Result<ApplyReport> {
            let mut w = Hashing {
                out,
                h: blake3::Hasher::new(),
                n: 0,
            };
            match op {
                FileOp::Unchanged | FileOp::Copy { .. } => {
                    st.copy_file(old, &shown, size, &mut w)?
                }
                FileOp::Add => st.copy_extra(size, &mut w)?,
                FileOp::Delta {
                    sources, transform, ..
                } => {
                    let n = sources.len().max(1);
                    let parts: Vec<(Box<dyn ReadAt + '_>, u64, PathBuf)> = (0..n)
                        .map(|_| (Box::new(old) as Box<dyn ReadAt>, old_len, shown.clone()))
                        .collect();
                    apply_delta(&mut st, &Source::new(parts)?, size, *transform, &mut w)?
                }
                FileOp::CopyNew { .. } => {
                    return Err(Error::corrupt(
                        "manifest",
                        "a single-file patch copies no earlier file",
                    ))
                }
            }
            w.flush()
                .map_err(|e| Error::io(Path::new(super::OUTPUT), "write", e))?;
            st.finish()?;
            if let Some(s) = &p.streamed {
                s.finish()?;
            }
            let digest = *w.h.finalize().as_bytes();
            if w.n != size || digest != m.new_digest {
                return Err(Error::OutputMismatch {
                    path: String::new(),
                });
            }
            Ok(ApplyReport {
                files: 1,
                bytes: size,
                digest,
                ..ApplyReport::default()
            })
        };
        if p.parallel_streams() {
            std::thread::scope(|scope| run(Streams::open(&p, Some(scope))?))
        } else {
            run(Streams::open(&p, None)?)
        }
    }
}
