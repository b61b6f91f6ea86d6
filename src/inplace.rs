//! Crash-safe in-place apply.
//!
//! A directory is updated by building the complete new tree in a staging directory next to it
//! (unchanged files are hard links to the old ones, so they cost no copy), verifying it, and
//! swapping the two directories with one atomic `renameat2(RENAME_EXCHANGE)`. A small journal
//! next to the directory records the phase, so that a rerun after a crash or kill at any moment
//! finishes or undoes the work:
//!
//! | journal         | state on disk                         | a rerun does                          |
//! |-----------------|---------------------------------------|---------------------------------------|
//! | absent          | DIR is old (or new, if done)          | a normal apply / "already up to date" |
//! | `building`      | DIR is old; staging partial           | removes staging, then applies         |
//! | `ready INO`     | DIR old, staging (inode INO) complete | swaps, cleans up                      |
//! | `ready INO`     | DIR is INO (swap done), staging = old | removes the old tree, cleans up       |
//!
//! # Durability (fsync discipline)
//!
//! When the staging tree is complete and verified it is made durable (on Linux with one
//! `syncfs(2)` of its file system, which covers the data and metadata of every staged file and
//! directory; elsewhere an fsync of every file as it is closed, then of every directory deepest
//! first), then the parent directory is fsynced; only then is the journal moved to `ready`
//! (written to a temp file, fsynced, renamed, parent fsynced). After the exchange the parent is
//! fsynced before the old tree and the journal are removed.
//!
//! # Concurrency
//!
//! Two applies on the same target would race on the journal and the staging path. Each run
//! first takes an exclusive `flock(2)` on a lock file next to the target
//! (`.NAME.bundelta-lock`, removed when done); a second run fails at once with
//! [`Error::Locked`] instead of waiting or interfering. A kill releases the lock with the
//! process, so recovery is never blocked by a dead run.
//!
//! A single-file bundle needs no journal: the new file is staged, fsynced and renamed over the
//! old one, which is atomic.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::apply::{parent_of, remove_all, sync_dir, sync_parent, ApplyReport, LinkMode, Patcher};
use crate::error::{Error, Result};
use crate::tree::bundle_digest;

/// What an in-place apply found and did.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum InPlaceOutcome {
    /// The target was at the old version and now is at the new one.
    Applied(ApplyReport),
    /// The target already was at the patch's new version; nothing was changed.
    AlreadyUpToDate,
}

/// Result of [`Patcher::apply_in_place`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct InPlaceReport {
    /// What happened.
    pub outcome: InPlaceOutcome,
    /// Whether an interrupted earlier run was found and finished or rolled back first.
    pub recovered: bool,
}

fn side_path(target: &Path, tag: &str) -> Result<PathBuf> {
    let name = target
        .file_name()
        .ok_or_else(|| Error::invalid_input(target, "path has no file name"))?
        .to_string_lossy();
    Ok(parent_of(target).join(format!(".{name}.bundelta-{tag}")))
}

#[cfg(unix)]
fn inode(p: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    fs::symlink_metadata(p).ok().map(|m| (m.dev(), m.ino()))
}

#[cfg(not(unix))]
fn inode(_p: &Path) -> Option<(u64, u64)> {
    None
}

fn write_journal(journal: &Path, text: &str) -> Result<()> {
    let tmp = side_path(journal, "tmp")?;
    let written = (|| {
        let mut f = fs::File::create(&tmp).map_err(|e| Error::io(&tmp, "create", e))?;
        f.write_all(text.as_bytes())
            .map_err(|e| Error::io(&tmp, "write", e))?;
        f.sync_all().map_err(|e| Error::io(&tmp, "fsync", e))?;
        fs::rename(&tmp, journal).map_err(|e| Error::io(journal, "rename", e))
    })();
    if written.is_err() {
        // A full disk fails the write: leave nothing behind.
        let _ = fs::remove_file(&tmp);
    }
    written?;
    sync_parent(journal)
}

fn remove_journal(journal: &Path) -> Result<()> {
    match fs::remove_file(journal) {
        Ok(()) => sync_parent(journal),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(journal, "remove", e)),
    }
}

/// Atomically exchange two directory entries.
fn exchange(a: &Path, b: &Path) -> Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::ffi::CString;
        use std::os::unix::ffi::OsStrExt;
        let ca = CString::new(a.as_os_str().as_bytes())
            .map_err(|_| Error::invalid_input(a, "path contains NUL"))?;
        let cb = CString::new(b.as_os_str().as_bytes())
            .map_err(|_| Error::invalid_input(b, "path contains NUL"))?;
        // SAFETY: both pointers are valid NUL-terminated strings for the duration of the call.
        let r = unsafe {
            libc::renameat2(
                libc::AT_FDCWD,
                ca.as_ptr(),
                libc::AT_FDCWD,
                cb.as_ptr(),
                libc::RENAME_EXCHANGE,
            )
        };
        if r != 0 {
            return Err(Error::io(
                b,
                "atomic exchange (renameat2 RENAME_EXCHANGE)",
                std::io::Error::last_os_error(),
            ));
        }
        Ok(())
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = a;
        Err(Error::io(
            b,
            "atomic exchange",
            std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "in-place directory apply needs Linux renameat2",
            ),
        ))
    }
}

/// An exclusive lock on a target, released (and its file removed) on drop.
struct TargetLock {
    path: PathBuf,
    #[cfg(unix)]
    _file: fs::File,
}

impl TargetLock {
    #[cfg(unix)]
    fn acquire(target: &Path) -> Result<TargetLock> {
        use std::os::unix::fs::MetadataExt;
        use std::os::unix::io::AsRawFd;
        let path = side_path(target, "lock")?;
        // The file may be unlinked by the previous holder between our open and our flock:
        // then we locked a dead inode, so check that the path still names what we hold.
        for _ in 0..8 {
            let f = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(|e| Error::io(&path, "create lock file", e))?;
            // SAFETY: flock on a valid, owned file descriptor.
            if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::WouldBlock {
                    return Err(Error::Locked {
                        path: target.to_path_buf(),
                    });
                }
                return Err(Error::io(&path, "lock", e));
            }
            let held = f.metadata().map_err(|e| Error::io(&path, "stat", e))?;
            match fs::metadata(&path) {
                Ok(now) if now.dev() == held.dev() && now.ino() == held.ino() => {
                    return Ok(TargetLock { path, _file: f });
                }
                _ => continue,
            }
        }
        Err(Error::Locked {
            path: target.to_path_buf(),
        })
    }

    #[cfg(not(unix))]
    fn acquire(target: &Path) -> Result<TargetLock> {
        Ok(TargetLock {
            path: side_path(target, "lock")?,
        })
    }
}

impl Drop for TargetLock {
    fn drop(&mut self) {
        // Unlink while still holding the lock: a waiter that opened the old file re-checks
        // the path and retries.
        #[cfg(unix)]
        let _ = fs::remove_file(&self.path);
    }
}

/// Finish or undo an interrupted run. Returns whether anything was found.
fn recover(dir: &Path, journal: &Path, stage: &Path) -> Result<bool> {
    let text = match fs::read_to_string(journal) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if fs::symlink_metadata(stage).is_ok() {
                remove_all(stage);
                sync_parent(stage)?;
                return Ok(true);
            }
            return Ok(false);
        }
        Err(e) => return Err(Error::io(journal, "read", e)),
    };
    let mut words = text.split_whitespace();
    match (words.next(), words.next(), words.next(), words.next()) {
        (Some("bundelta-journal-v1"), Some("building"), _, _) => {
            remove_all(stage);
            sync_parent(stage)?;
            remove_journal(journal)?;
        }
        (Some("bundelta-journal-v1"), Some("ready"), Some(dev), Some(ino)) => {
            let want = (dev.parse::<u64>().ok(), ino.parse::<u64>().ok());
            let want = match want {
                (Some(d), Some(i)) => (d, i),
                _ => {
                    return Err(Error::io(
                        journal,
                        "parse",
                        std::io::Error::other("damaged journal"),
                    ))
                }
            };
            if inode(dir) == Some(want) {
                // The swap happened: the staging path holds the old tree.
                remove_all(stage);
            } else if inode(stage) == Some(want) {
                exchange(stage, dir)?;
                sync_parent(dir)?;
                remove_all(stage);
            } else {
                return Err(Error::io(
                    journal,
                    "recover",
                    std::io::Error::other("journal says ready but neither the directory nor the staging tree matches it; inspect by hand"),
                ));
            }
            sync_parent(stage)?;
            remove_journal(journal)?;
        }
        _ => {
            return Err(Error::io(
                journal,
                "parse",
                std::io::Error::other("damaged journal"),
            ))
        }
    }
    Ok(true)
}

impl Patcher {
    /// Update `target` (a file or directory) to the patch's new version in place, crash-safely.
    ///
    /// A kill or power loss at any moment leaves `target` at the old or the new version; a rerun
    /// finishes the job (see the module docs). A rerun on a target already at the new version
    /// returns [`InPlaceOutcome::AlreadyUpToDate`] without changing anything.
    pub fn apply_in_place(&self, target: &Path, patch: &Path) -> Result<InPlaceReport> {
        let mut p = self.open(patch)?;
        let _lock = TargetLock::acquire(target)?;
        let journal = side_path(target, "journal")?;
        let stage = side_path(target, "stage")?;
        let recovered = recover(target, &journal, &stage)?;
        let old = p.open_old(target)?;
        if let Err(e) = p.bind_checked(&old, self.unknown_policy()) {
            // A relative manifest binds only to OLD's file list: a target at the new version
            // does not bind, and is recognised by its digest.
            if bundle_digest(target).ok() == Some(p.new_digest()) {
                return Ok(InPlaceReport {
                    outcome: InPlaceOutcome::AlreadyUpToDate,
                    recovered,
                });
            }
            return Err(e);
        }
        self.check_listing_memory(&p)?;
        if p.shape_matches(target)? && bundle_digest(target)? == p.new_digest() {
            return Ok(InPlaceReport {
                outcome: InPlaceOutcome::AlreadyUpToDate,
                recovered,
            });
        }
        let base = match p.check_base(&old) {
            Ok(b) => b,
            Err(e) => {
                if bundle_digest(target).ok() == Some(p.new_digest()) {
                    return Ok(InPlaceReport {
                        outcome: InPlaceOutcome::AlreadyUpToDate,
                        recovered,
                    });
                }
                return Err(e);
            }
        };
        self.event(crate::apply::ApplyEvent::BaseChecked { old: target });
        if !p.header().is_directory() {
            let result = (|| {
                let report = p.build(
                    &old,
                    Some(&stage),
                    &base,
                    LinkMode::Copy,
                    self.progress_fn(),
                    self.hook_fn(),
                )?;
                fs::rename(&stage, target).map_err(|e| Error::io(target, "rename", e))?;
                sync_parent(target)?;
                Ok(report)
            })();
            if result.is_err() {
                remove_all(&stage);
            }
            return result.map(|r| InPlaceReport {
                outcome: InPlaceOutcome::Applied(r),
                recovered,
            });
        }
        write_journal(&journal, "bundelta-journal-v1 building\n")?;
        let built = p
            .build(
                &old,
                Some(&stage),
                &base,
                LinkMode::HardLink,
                self.progress_fn(),
                self.hook_fn(),
            )
            .and_then(|r| {
                if self.unknown_policy() == crate::Unknown::Keep {
                    p.carry_unknown(&old, &stage, LinkMode::HardLink)?;
                }
                Ok(r)
            });
        let report = match built {
            Ok(r) => r,
            Err(e) => {
                remove_all(&stage);
                let _ = remove_journal(&journal);
                return Err(e);
            }
        };
        sync_parent(&stage)?;
        let (dev, ino) = inode(&stage)
            .ok_or_else(|| Error::io(&stage, "stat", std::io::Error::other("missing")))?;
        write_journal(
            &journal,
            &format!("bundelta-journal-v1 ready {dev} {ino}\n"),
        )?;
        exchange(&stage, target)?;
        sync_parent(target)?;
        remove_all(&stage);
        sync_dir(&parent_of(&stage))?;
        remove_journal(&journal)?;
        Ok(InPlaceReport {
            outcome: InPlaceOutcome::Applied(report),
            recovered,
        })
    }
}
