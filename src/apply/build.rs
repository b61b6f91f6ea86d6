//! Building the output: every entry of the new version rebuilt into the staging location (or
//! a hashing sink), each file verified as written, then the bundle digest, then durability.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};
use crate::format::{EntryKind, FileOp, Hash, ListKind};
use crate::readat::ReadAt;
use crate::sys::{self, FileId, Opened, Writer};
use crate::tree::TreeDigest;

use super::base::{BaseCheck, Old, Relinked};
use super::stream::{apply_delta, Source, Streams};
use super::write::{HashingWriter, ProgressWriter};
use super::{
    memory_needed, ApplyEvent, ApplyReport, HookFn, Patch, ProgressFn, OUTPUT, PIPE_MEMORY,
};
use crate::sys::{sync_dir, syncfs, SYNCFS};

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum LinkMode {
    /// Copy unchanged files (OLD stays independent of the output).
    Copy,
    /// Hard-link unchanged files whose mode already matches (in-place apply).
    HardLink,
}

impl Patch {
    /// Copy (or, in place, hard-link) the unknown entries of OLD into the built stage, for
    /// [`Unknown::Keep`](super::Unknown::Keep). The patch knows nothing of their contents:
    /// they are carried over as they are, read beneath OLD's handle and written beneath the
    /// stage's, never through a symlink, after the new version itself was verified.
    pub(crate) fn carry_unknown(&self, old: &Old, stage: &Path, link: LinkMode) -> Result<()> {
        if self.unknown.is_empty() {
            return Ok(());
        }
        let mut w = Writer::open(stage).map_err(|e| Error::io(stage, "open directory", e))?;
        for u in &self.unknown {
            let dst = stage.join(&u.path);
            match &u.kind {
                ListKind::Dir => w.create_dir(&u.path).map_err(|e| stage_error(&dst, e))?,
                ListKind::Symlink { target } => w
                    .symlink(target, &u.path)
                    .map_err(|e| stage_error(&dst, e))?,
                ListKind::File { exec, .. } => {
                    let mut from = old
                        .open(&u.path)
                        .map_err(|e| Error::io(&old.display(&u.path), "open", e))?;
                    if link == LinkMode::HardLink
                        && from.meta.exec == *exec
                        && w.link_file(&from.file, &u.path).is_ok()
                    {
                        continue;
                    }
                    let mut to = w
                        .create_file(&u.path, *exec)
                        .map_err(|e| stage_error(&dst, e))?;
                    io::copy(&mut from.file, &mut to).map_err(|e| Error::io(&dst, "copy", e))?;
                    if !SYNCFS {
                        to.sync_all().map_err(|e| Error::io(&dst, "fsync", e))?;
                    }
                }
            }
        }
        if SYNCFS {
            syncfs(stage)
        } else {
            sync_dir(stage)
        }
    }

    /// Rebuild every entry under `stage` (or into a hashing sink when `None`), verifying each
    /// file and the bundle digest. Does not rename anything.
    ///
    /// OLD is read only through `old` (beneath its handle, each file required to be the one
    /// the base check hashed); the staging tree is written only beneath a handle on `stage`,
    /// never following a symlink (a directory of it swapped for a link is refused).
    ///
    /// The streams are decoded on threads of their own when [`Patch::parallel_streams`] says
    /// so; the bytes produced are the same either way.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn build(
        &self,
        old: &Old,
        stage: Option<&Path>,
        base: &BaseCheck,
        link: LinkMode,
        progress: Option<&ProgressFn>,
        hook: Option<&HookFn>,
    ) -> Result<ApplyReport> {
        // Expanded sources of transform-2 files go beside the staging location, never in it;
        // a dry run has none and uses the temporary directory.
        let scratch = stage
            .and_then(Path::parent)
            .map(Path::to_path_buf)
            .unwrap_or_else(std::env::temp_dir);
        let run = |mut streams: Streams<'_>| {
            streams.scratch = scratch.clone();
            self.build_with(streams, old, stage, base, link, progress, hook)
        };
        if self.parallel_streams() {
            std::thread::scope(|scope| run(Streams::open(self, Some(scope))?))
        } else {
            run(Streams::open(self, None)?)
        }
    }

    /// Whether this apply decodes the streams in parallel: asked for ([`Patcher::parallel`]),
    /// on a machine with more than one core, on a platform with positioned reads (elsewhere
    /// the patch file's cursor would be shared), and with [`PIPE_MEMORY`] fitting under the
    /// memory limit next to what the patch needs.
    pub(crate) fn parallel_streams(&self) -> bool {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let need = memory_needed(&self.header)
            .saturating_add(self.listing_bytes)
            .saturating_add(PIPE_MEMORY);
        self.parallel && cores > 1 && cfg!(any(unix, windows)) && need <= self.memory_limit
    }

    #[allow(clippy::too_many_arguments)]
    fn build_with(
        &self,
        mut streams: Streams<'_>,
        old: &Old,
        stage: Option<&Path>,
        base: &BaseCheck,
        link: LinkMode,
        progress: Option<&ProgressFn>,
        hook: Option<&HookFn>,
    ) -> Result<ApplyReport> {
        let staged = |path: &str| {
            if let (Some(h), Some(stage)) = (hook, stage) {
                h(ApplyEvent::Staged { stage, path });
            }
        };
        let mut report = ApplyReport::default();
        let mut digest = TreeDigest::new();
        let mut base_files = base.base.iter().zip(&base.base_ids);
        let mut file_hash = [0u8; 32];
        let done = AtomicU64::new(0);
        let total = self.header.new_total;
        let dir_bundle = self.header.is_directory();
        // The staging tree of a directory bundle, written beneath one handle.
        let mut tree_out = match (dir_bundle, stage) {
            (true, Some(stage)) => {
                create_dir(stage)?;
                Some(Writer::open(stage).map_err(|e| Error::io(stage, "open directory", e))?)
            }
            _ => None,
        };
        // Where each entry goes, for messages (and the staged file of a single-file bundle).
        let dest_of = |rel: &str| {
            stage.map(|s| {
                if rel.is_empty() {
                    s.to_path_buf()
                } else {
                    s.join(rel)
                }
            })
        };
        let mut made_dirs: Vec<PathBuf> = Vec::new();
        // Files of the old-file table this apply hard-links (their ctime moves), for their
        // later use as sources.
        let table_ids: std::collections::HashSet<FileId> = base.table_ids.iter().copied().collect();
        let mut relinked = Relinked::new();
        // Hashes of the files that a later `CopyNew` copies, as they were written.
        let copied_new: std::collections::HashSet<u32> = self
            .m()
            .entries
            .iter()
            .filter_map(|e| match &e.kind {
                EntryKind::File {
                    op: FileOp::CopyNew { entry },
                    ..
                } => Some(*entry),
                _ => None,
            })
            .collect();
        let mut new_hashes: std::collections::HashMap<u32, Hash> =
            std::collections::HashMap::with_capacity(copied_new.len());
        for (index, e) in self.m().entries.iter().enumerate() {
            let dest = dest_of(&e.path);
            match &e.kind {
                EntryKind::Dir => {
                    if let (Some(w), Some(d)) = (&mut tree_out, &dest) {
                        w.create_dir(&e.path).map_err(|err| stage_error(d, err))?;
                        made_dirs.push(d.clone());
                        staged(&e.path);
                    }
                    digest.dir(&e.path);
                    report.dirs += 1;
                }
                EntryKind::Symlink { target } => {
                    if let (Some(w), Some(d)) = (&mut tree_out, &dest) {
                        w.symlink(target, &e.path)
                            .map_err(|err| stage_error(d, err))?;
                        staged(&e.path);
                    }
                    digest.symlink(&e.path, target);
                    report.symlinks += 1;
                }
                EntryKind::File { exec, size, op } => {
                    // Size, hash and identity of the old file at this path, when the op
                    // reads it.
                    let same = if op.reads_own_path() {
                        let (sh, id) = base_files.next().ok_or_else(|| {
                            Error::corrupt("manifest", "base file count mismatch")
                        })?;
                        Some((sh.0, sh.1, *id))
                    } else {
                        None
                    };
                    // The hash this output must have, where the patch determines it up front.
                    let expected: Option<Hash> = match op {
                        FileOp::Unchanged => same.map(|s| s.1),
                        FileOp::Copy { source } => base.table.get(*source as usize).copied(),
                        FileOp::CopyNew { entry } => {
                            Some(*new_hashes.get(entry).ok_or_else(|| {
                                Error::corrupt("manifest", "a copy of a new file not yet made")
                            })?)
                        }
                        _ => None,
                    };
                    let copy_new = match op {
                        FileOp::CopyNew { entry } => Some(*entry as usize),
                        _ => None,
                    };
                    let linked = match (&mut tree_out, &dest, op, link, same) {
                        (Some(w), Some(d), FileOp::Unchanged, LinkMode::HardLink, Some(s)) => {
                            let l = try_hard_link(old, &e.path, &s.2, w, d, *exec)?;
                            if let (Some(after), true) = (l, table_ids.contains(&s.2)) {
                                relinked.insert(s.2, after);
                            }
                            l.is_some()
                        }
                        _ => false,
                    };
                    let hash = if linked {
                        done.fetch_add(*size, Ordering::Relaxed);
                        expected.expect("an unchanged file has a base hash")
                    } else if let (Some(_), None) = (copy_new, &tree_out) {
                        // A dry run stages nothing: the content is the earlier file's, which
                        // was verified as it was made.
                        done.fetch_add(*size, Ordering::Relaxed);
                        expected.expect("a copy of a new file has its hash")
                    } else {
                        // The earlier file as staged, opened beneath the stage's handle; what
                        // is read from it is checked against the hash it was written with.
                        let new_source = match (copy_new, &tree_out) {
                            (Some(i), Some(w)) => {
                                let rel = &self.m().entries[i].path;
                                let shown = dest_of(rel).unwrap_or_else(|| rel.into());
                                Some((
                                    w.open_file(rel)
                                        .map_err(|err| stage_error(&shown, err))?
                                        .file,
                                    shown,
                                ))
                            }
                            _ => None,
                        };
                        let file = match (&mut tree_out, &dest) {
                            (Some(w), Some(d)) => Some(
                                w.create_file(&e.path, *exec)
                                    .map_err(|err| stage_error(d, err))?,
                            ),
                            (None, Some(d)) => Some(create_file(d, *exec)?),
                            _ => None,
                        };
                        let mut w = HashingWriter::new(file);
                        let mut sink = ProgressWriter {
                            inner: &mut w,
                            done: &done,
                            total,
                            progress,
                        };
                        let same = same.map(|s| (s.0, s.2));
                        self.produce(
                            old,
                            e,
                            same,
                            base,
                            &relinked,
                            &mut streams,
                            new_source,
                            &mut sink,
                        )
                        .map_err(|err| match (err, &dest) {
                            // Name the file being written (disk full, I/O error).
                            (Error::Io { path, op, source }, Some(d))
                                if path == Path::new(OUTPUT) =>
                            {
                                Error::Io {
                                    path: d.clone(),
                                    op,
                                    source,
                                }
                            }
                            (err, _) => err,
                        })?;
                        let (n, hash, file) = w.finish().map_err(|err| {
                            Error::io(dest.as_deref().unwrap_or(Path::new(&e.path)), "write", err)
                        })?;
                        if n != *size || expected.is_some_and(|x| x != hash) {
                            return Err(Error::OutputMismatch {
                                path: e.path.clone(),
                            });
                        }
                        if let (Some(f), Some(d)) = (file, &dest) {
                            if !SYNCFS {
                                f.sync_all().map_err(|err| Error::io(d, "fsync", err))?;
                            }
                        }
                        hash
                    };
                    staged(&e.path);
                    if copied_new.contains(&(index as u32)) {
                        new_hashes.insert(index as u32, hash);
                    }
                    digest.file(&e.path, *exec, *size, &hash);
                    file_hash = hash;
                    report.files += 1;
                    report.bytes += size;
                }
            }
        }
        streams.finish()?;
        // A patch read from a stream: its checksum and signature, now that it is all read.
        if let Some(s) = &self.streamed {
            s.finish()?;
        }
        let d = if dir_bundle {
            digest.finish()
        } else {
            file_hash
        };
        if d != self.m().new_digest {
            return Err(Error::OutputMismatch {
                path: "(bundle digest)".into(),
            });
        }
        report.digest = d;
        // Make everything durable before the caller renames it into place: on Linux one
        // syncfs(2) of the staging file system (data and metadata of every staged file and
        // directory); elsewhere each file was fsynced on close, then directories deepest first.
        if let Some(stage) = stage {
            if SYNCFS {
                syncfs(stage)?;
            } else {
                for dir in made_dirs.iter().rev() {
                    sync_dir(dir)?;
                }
                if dir_bundle {
                    sync_dir(stage)?;
                }
            }
        }
        Ok(report)
    }

    /// Stream one file's content into `out`. `same` is the size and identity of the old file
    /// at this path as hashed, when the op reads it; every old file is opened beneath OLD's
    /// handle and must still be the file that was hashed.
    #[allow(clippy::too_many_arguments)]
    fn produce(
        &self,
        old: &Old,
        e: &crate::format::Entry,
        same: Option<(u64, FileId)>,
        base: &BaseCheck,
        relinked: &Relinked,
        streams: &mut Streams<'_>,
        new_source: Option<(File, PathBuf)>,
        out: &mut dyn Write,
    ) -> Result<()> {
        let path = e.path.as_str();
        let EntryKind::File { size, op, .. } = &e.kind else {
            return Ok(());
        };
        let size = *size;
        // The file of the old-file table at `i`, as hashed.
        let table = |i: u32| -> Result<(Opened, u64, &str)> {
            let f = &self.m().old_files[i as usize];
            let id = base
                .table_ids
                .get(i as usize)
                .ok_or_else(|| Error::corrupt("manifest", "old-file index out of range"))?;
            Ok((
                old.open_checked(&f.path, id, relinked)?,
                f.size,
                f.path.as_str(),
            ))
        };
        let own = || -> Result<(Opened, u64)> {
            let (n, id) =
                same.ok_or_else(|| Error::corrupt("manifest", "base file count mismatch"))?;
            Ok((old.open_checked(path, &id, relinked)?, n))
        };
        match op {
            FileOp::Unchanged => {
                let (o, _) = own()?;
                streams.copy_file(&o.file, &old.display(path), size, out)
            }
            FileOp::Copy { source } => {
                let (o, _, p) = table(*source)?;
                streams.copy_file(&o.file, &old.display(p), size, out)
            }
            FileOp::Add => streams.copy_extra(size, out),
            FileOp::Delta {
                sources, transform, ..
            } => {
                let mut parts = Vec::with_capacity(sources.len().max(1));
                if sources.is_empty() {
                    let (o, n) = own()?;
                    parts.push((Box::new(o.file) as Box<dyn ReadAt>, n, old.display(path)));
                }
                for &s in sources {
                    let (o, n, p) = table(s)?;
                    parts.push((Box::new(o.file), n, old.display(p)));
                }
                let src = Source::new(parts)?;
                apply_delta(streams, &src, size, *transform, out)
            }
            FileOp::CopyNew { .. } => {
                let (f, shown) = new_source
                    .ok_or_else(|| Error::corrupt("manifest", "a copy of a new file not staged"))?;
                // A staged file that shrank was changed by someone else: the output is wrong.
                streams
                    .copy_file(&f, &shown, size, out)
                    .map_err(|err| match err {
                        Error::WrongBase { .. } => Error::OutputMismatch {
                            path: e.path.clone(),
                        },
                        err => err,
                    })
            }
        }
    }
}

fn create_dir(p: &Path) -> Result<()> {
    sys::create_dir_at(p).map_err(|e| Error::io(p, "create directory", e))
}

fn create_file(p: &Path, exec: bool) -> Result<File> {
    sys::create_file_at(p, exec).map_err(|e| Error::io(p, "create", e))
}

/// An error writing the staging tree at `p`: a symlink met there (a directory of the stage
/// replaced by a link while applying) is named as such.
fn stage_error(p: &Path, e: io::Error) -> Error {
    if sys::is_link_refusal(&e) {
        Error::io(
            p,
            "create in the staging tree (a directory of it was replaced by a symlink or a \
             file; symlinks are never followed)",
            e,
        )
    } else {
        Error::io(p, "create", e)
    }
}

/// Hard-link the old file `rel` as the staged entry `rel` (in-place apply of an unchanged
/// file whose exec bit already matches): the file is opened beneath OLD's handle and must be
/// the inode that was hashed, unchanged since (size, mtime, ctime, mode: `id`); then that
/// open file itself is linked, never a name. Returns its identity after the link (the link
/// moved its ctime), or `None` (the caller copies, hashing the copy) when the mode differs or
/// the link cannot be made.
fn try_hard_link(
    old: &Old,
    rel: &str,
    id: &FileId,
    w: &mut Writer,
    dst: &Path,
    exec: bool,
) -> Result<Option<FileId>> {
    let o = old.open_checked(rel, id, &Relinked::new())?;
    if o.meta.exec != exec {
        return Ok(None);
    }
    match w.link_file(&o.file, rel) {
        Ok(()) => {}
        Err(e) if sys::is_link_refusal(&e) => return Err(stage_error(dst, e)),
        Err(_) => return Ok(None),
    }
    let (_, after) = sys::file_id(&o.file).map_err(|e| Error::io(dst, "stat", e))?;
    if !after.same_but_ctime(id) {
        return Err(Error::wrong_base(
            rel,
            "changed while it was being linked into the new tree; nothing was committed, \
             run again",
        ));
    }
    Ok(Some(after))
}
