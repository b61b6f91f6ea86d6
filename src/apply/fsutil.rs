//! Durability and file-system helpers: staging paths, fsync and syncfs, removal, and a rename
//! that never replaces.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// A hidden sibling path of `target` for staging: `.NAME.bundelta-TAG-PID` (the diff's
/// temporary patch; an apply's stages are named and recorded by `inplace`).
#[cfg(feature = "diff")]
pub(crate) fn staging_path(target: &Path, tag: &str) -> Result<PathBuf> {
    let name = target
        .file_name()
        .ok_or_else(|| Error::invalid_input(target, "output path has no file name"))?
        .to_string_lossy();
    let parent = parent_of(target);
    Ok(parent.join(format!(".{name}.bundelta-{tag}-{}", std::process::id())))
}

pub(crate) fn parent_of(p: &Path) -> PathBuf {
    match p.parent() {
        Some(x) if !x.as_os_str().is_empty() => x.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Whether durability comes from one `syncfs(2)` per apply rather than an fsync per file.
pub(super) const SYNCFS: bool = cfg!(target_os = "linux");

/// Flush the whole file system holding `p` (Linux).
pub(super) fn syncfs(p: &Path) -> Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::io::AsRawFd;
        let f = File::open(p).map_err(|e| Error::io(p, "open", e))?;
        // SAFETY: `f` is an open file descriptor for the duration of the call.
        if unsafe { libc::syncfs(f.as_raw_fd()) } != 0 {
            return Err(Error::io(p, "syncfs", io::Error::last_os_error()));
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = p;
    Ok(())
}

pub(crate) fn sync_dir(p: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        let f = File::open(p).map_err(|e| Error::io(p, "open directory", e))?;
        f.sync_all()
            .map_err(|e| Error::io(p, "fsync directory", e))?;
    }
    #[cfg(not(unix))]
    let _ = p;
    Ok(())
}

pub(crate) fn sync_parent(p: &Path) -> Result<()> {
    sync_dir(&parent_of(p))
}

/// Best-effort removal of a staging file or tree.
pub(crate) fn remove_all(p: &Path) {
    match fs::symlink_metadata(p) {
        Ok(md) if md.is_dir() => {
            let _ = fs::remove_dir_all(p);
        }
        Ok(_) => {
            let _ = fs::remove_file(p);
        }
        Err(_) => {}
    }
}

/// Rename `from` to `to`, failing if `to` exists (atomic on Linux).
pub(crate) fn rename_noreplace(from: &Path, to: &Path) -> Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::ffi::CString;
        use std::os::unix::ffi::OsStrExt;
        let a = CString::new(from.as_os_str().as_bytes())
            .map_err(|_| Error::invalid_input(from, "path contains NUL"))?;
        let b = CString::new(to.as_os_str().as_bytes())
            .map_err(|_| Error::invalid_input(to, "path contains NUL"))?;
        // SAFETY: both pointers are valid NUL-terminated strings for the duration of the call.
        let r = unsafe {
            libc::renameat2(
                libc::AT_FDCWD,
                a.as_ptr(),
                libc::AT_FDCWD,
                b.as_ptr(),
                libc::RENAME_NOREPLACE,
            )
        };
        if r == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EEXIST) {
            return Err(Error::OutputExists {
                path: to.to_path_buf(),
            });
        }
        if e.raw_os_error() != Some(libc::EINVAL) && e.raw_os_error() != Some(libc::ENOSYS) {
            return Err(Error::io(to, "rename", e));
        }
        // File system without RENAME_NOREPLACE: fall through to check-then-rename.
    }
    if fs::symlink_metadata(to).is_ok() {
        return Err(Error::OutputExists {
            path: to.to_path_buf(),
        });
    }
    fs::rename(from, to).map_err(|e| Error::io(to, "rename", e))
}
