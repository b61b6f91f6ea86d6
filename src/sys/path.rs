//! Operations by path beside the handle-based [`Dir`](super::Dir): the side files, lock and
//! atomic exchange of the in-place apply, atomic replacement of a file, directory fsyncs.
//! Every platform difference is a `cfg` here, each with its documented fallback.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Make `o` open without following a final symlink and without blocking on a FIFO
/// (`O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC`): how every side file is opened. Elsewhere than unix
/// `o` is left as it is (a link is then refused by the caller's `symlink_metadata` check only).
pub(crate) fn side_file_options(o: &mut fs::OpenOptions) -> &mut fs::OpenOptions {
    #[cfg(unix)]
    {
        use rustix::fs::OFlags;
        use std::os::unix::fs::OpenOptionsExt;
        o.custom_flags((OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC).bits() as i32);
    }
    o
}

/// Open a file for reading without blocking in `open` on a FIFO or device (`O_NONBLOCK` on
/// unix); the caller checks the kind on the open handle.
pub(crate) fn open_nonblocking(p: &Path) -> io::Result<File> {
    let mut o = fs::OpenOptions::new();
    o.read(true);
    #[cfg(unix)]
    {
        use rustix::fs::OFlags;
        use std::os::unix::fs::OpenOptionsExt;
        o.custom_flags(OFlags::NONBLOCK.bits() as i32);
    }
    o.open(p)
}

/// Create the directory `p` (mode 0755 on unix).
pub(crate) fn create_dir_at(p: &Path) -> io::Result<()> {
    let mut b = fs::DirBuilder::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o755);
    }
    b.create(p)
}

/// Create the file `p` exclusively, never through a symlink at its last component (mode 0755
/// or 0644 on unix).
pub(crate) fn create_file_at(p: &Path, exec: bool) -> io::Result<File> {
    let mut o = fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    {
        use rustix::fs::OFlags;
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(if exec { 0o755 } else { 0o644 })
            .custom_flags(OFlags::NOFOLLOW.bits() as i32);
    }
    #[cfg(not(unix))]
    let _ = exec;
    o.open(p)
}

/// Whether an open error says the path is a directory (`EISDIR`). Always false elsewhere
/// than unix.
pub(crate) fn is_dir_error(e: &io::Error) -> bool {
    #[cfg(unix)]
    {
        e.raw_os_error() == Some(rustix::io::Errno::ISDIR.raw_os_error())
    }
    #[cfg(not(unix))]
    {
        let _ = e;
        false
    }
}

/// Whether a file's mode has an executable bit. Always false elsewhere than unix.
#[cfg(feature = "diff")]
pub(crate) fn is_exec(md: &fs::Metadata) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        md.permissions().mode() & 0o111 != 0
    }
    #[cfg(not(unix))]
    {
        let _ = md;
        false
    }
}

/// Whether an open error of a side file says a symlink (`ELOOP` under `O_NOFOLLOW`) or a
/// directory (`EISDIR`) is there. Always false elsewhere than unix.
pub(crate) fn is_link_or_dir(e: &io::Error) -> bool {
    #[cfg(unix)]
    {
        matches!(e.raw_os_error(), Some(libc::ELOOP) | Some(libc::EISDIR))
    }
    #[cfg(not(unix))]
    {
        let _ = e;
        false
    }
}

/// Device and inode of the entry at `p`, not following a symlink; `None` when it is absent
/// (or cannot be stat'ed), and always `None` elsewhere than unix (no inode numbers).
pub(crate) fn inode(p: &Path) -> Option<(u64, u64)> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        fs::symlink_metadata(p).ok().map(|m| (m.dev(), m.ino()))
    }
    #[cfg(not(unix))]
    {
        let _ = p;
        None
    }
}

/// Device and inode of an open file (`fstat`); `None` elsewhere than unix.
pub(crate) fn file_inode(f: &File) -> io::Result<Option<(u64, u64)>> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let m = f.metadata()?;
        Ok(Some((m.dev(), m.ino())))
    }
    #[cfg(not(unix))]
    {
        let _ = f;
        Ok(None)
    }
}

/// Take an exclusive `flock(2)` on `f` without waiting: an error of kind
/// [`io::ErrorKind::WouldBlock`] when another open file description holds it. The lock goes
/// with the file (and with the process, on a kill). Elsewhere than unix there is no lock:
/// always `Ok` (in-place apply, which needs it, is refused there before anything is written).
pub(crate) fn try_lock_exclusive(f: &File) -> io::Result<()> {
    #[cfg(unix)]
    {
        Ok(rustix::fs::flock(
            f,
            rustix::fs::FlockOperation::NonBlockingLockExclusive,
        )?)
    }
    #[cfg(not(unix))]
    {
        let _ = f;
        Ok(())
    }
}

/// Whether [`exchange`] exists on this platform at all (a file system may still refuse it).
pub(crate) const HAS_EXCHANGE: bool = cfg!(any(target_os = "linux", target_os = "macos"));

/// What an [`exchange`] is called in messages.
pub(crate) const EXCHANGE_OP: &str = if HAS_EXCHANGE {
    "atomic exchange (renameat2 RENAME_EXCHANGE / renamex_np RENAME_SWAP)"
} else {
    "atomic exchange"
};

/// Atomically exchange the two directory entries `a` and `b` (both must exist):
/// `renameat2(RENAME_EXCHANGE)` on Linux, `renameatx_np(RENAME_SWAP)` on macOS. Elsewhere an
/// error of kind [`io::ErrorKind::Unsupported`]; the caller then commits with two renames
/// (see [`exchange_unsupported`]).
pub(crate) fn exchange(a: &Path, b: &Path) -> io::Result<()> {
    #[cfg(any(target_os = "linux", target_os = "macos"))]
    {
        use rustix::fs::{renameat_with, RenameFlags, CWD};
        Ok(renameat_with(CWD, a, CWD, b, RenameFlags::EXCHANGE)?)
    }
    #[cfg(not(any(target_os = "linux", target_os = "macos")))]
    {
        let _ = (a, b);
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "no atomic directory exchange on this platform",
        ))
    }
}

/// Whether an [`exchange`] error says the platform or file system cannot exchange
/// (`Unsupported`, `EINVAL`, `ENOSYS`, `ENOTSUP`, `EOPNOTSUPP`), rather than a real failure.
pub(crate) fn exchange_unsupported(e: &io::Error) -> bool {
    if e.kind() == io::ErrorKind::Unsupported {
        return true;
    }
    #[cfg(unix)]
    {
        matches!(e.raw_os_error(), Some(n) if n == libc::EINVAL
            || n == libc::ENOSYS
            || n == libc::ENOTSUP
            || n == libc::EOPNOTSUPP)
    }
    #[cfg(not(unix))]
    {
        false
    }
}

/// Kill this process with `SIGKILL` at once (the test-only crash points); elsewhere than unix
/// this returns and the caller aborts.
pub(crate) fn kill_self() {
    #[cfg(unix)]
    {
        use rustix::process::{getpid, kill_process, Signal};
        let _ = kill_process(getpid(), Signal::KILL);
    }
}

/// The bytes of a path (journal records): its raw bytes on unix, UTF-8 (lossy) elsewhere.
pub(crate) fn path_to_bytes(p: &Path) -> Vec<u8> {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        p.as_os_str().as_bytes().to_vec()
    }
    #[cfg(not(unix))]
    {
        p.to_string_lossy().as_bytes().to_vec()
    }
}

/// The path [`path_to_bytes`] gave `b` for.
pub(crate) fn path_from_bytes(b: Vec<u8>) -> PathBuf {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStringExt;
        PathBuf::from(std::ffi::OsString::from_vec(b))
    }
    #[cfg(not(unix))]
    {
        PathBuf::from(String::from_utf8_lossy(&b).into_owned())
    }
}

/// A fresh token for a side file's name: process id and 64 random bits (std's per-process
/// random hash keys, mixed with the time).
pub(crate) fn new_token() -> String {
    use std::hash::{BuildHasher, RandomState};
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let r = RandomState::new().hash_one(now);
    format!("{}-{r:016x}", std::process::id())
}

// ---------------------------------------------------------------------------------------------
// Directories, renames, removal (the copies the apply side will use too).
// ---------------------------------------------------------------------------------------------

/// A hidden sibling path of `target` for staging: `.NAME.bundelta-TAG-PID` (the diff's
/// temporary patch; an apply's stages are named and recorded by `inplace`).
#[cfg(feature = "diff")]
#[allow(dead_code)] // the apply side's copy is still in use; callers move here
pub(crate) fn staging_path(target: &Path, tag: &str) -> Result<PathBuf> {
    let name = target
        .file_name()
        .ok_or_else(|| Error::invalid_input(target, "output path has no file name"))?
        .to_string_lossy();
    let parent = parent_of(target);
    Ok(parent.join(format!(".{name}.bundelta-{tag}-{}", std::process::id())))
}

/// The directory holding `p` (`.` for a bare name).
pub(crate) fn parent_of(p: &Path) -> PathBuf {
    match p.parent() {
        Some(x) if !x.as_os_str().is_empty() => x.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Whether durability comes from one `syncfs(2)` per apply rather than an fsync per file.
#[allow(dead_code)] // the apply side's copy is still in use
pub(crate) const SYNCFS: bool = cfg!(target_os = "linux");

/// Flush the whole file system holding `p` (Linux; elsewhere nothing, see [`SYNCFS`]).
#[allow(dead_code)] // the apply side's copy is still in use
pub(crate) fn syncfs(p: &Path) -> Result<()> {
    #[cfg(target_os = "linux")]
    {
        let f = File::open(p).map_err(|e| Error::io(p, "open", e))?;
        rustix::fs::syncfs(&f).map_err(|e| Error::io(p, "syncfs", e.into()))?;
    }
    #[cfg(not(target_os = "linux"))]
    let _ = p;
    Ok(())
}

/// fsync the directory `p` (unix; elsewhere directories cannot be opened for it: nothing).
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

/// fsync the directory holding `p` (after creating, renaming or removing `p`).
pub(crate) fn sync_parent(p: &Path) -> Result<()> {
    sync_dir(&parent_of(p))
}

/// Best-effort removal of a staging file or tree (a symlink is removed itself, never
/// followed).
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

/// Rename `from` to `to`, failing with [`Error::OutputExists`] if `to` exists (atomic on
/// Linux with `renameat2(RENAME_NOREPLACE)`; where the file system lacks it, and elsewhere,
/// a check then a rename).
#[allow(dead_code)] // the apply side's copy is still in use
pub(crate) fn rename_noreplace(from: &Path, to: &Path) -> Result<()> {
    #[cfg(target_os = "linux")]
    {
        use rustix::fs::{renameat_with, RenameFlags, CWD};
        use rustix::io::Errno;
        match renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE) {
            Ok(()) => return Ok(()),
            Err(Errno::EXIST) => {
                return Err(Error::OutputExists {
                    path: to.to_path_buf(),
                })
            }
            // File system without RENAME_NOREPLACE: fall through to check-then-rename.
            Err(Errno::INVAL) | Err(Errno::NOSYS) => {}
            Err(e) => return Err(Error::io(to, "rename", e.into())),
        }
    }
    if fs::symlink_metadata(to).is_ok() {
        return Err(Error::OutputExists {
            path: to.to_path_buf(),
        });
    }
    fs::rename(from, to).map_err(|e| Error::io(to, "rename", e))
}

// ---------------------------------------------------------------------------------------------
// Atomic replacement of a file.
// ---------------------------------------------------------------------------------------------

/// A file being written in a temp file next to its target, put in place by
/// [`AtomicFile::commit`]: fsync, `rename(2)` over the target, fsync of the parent. Dropped
/// uncommitted (an error on the way), the temp file is removed: it was created exclusively,
/// so it is this run's own.
pub(crate) struct AtomicFile {
    file: File,
    tmp: PathBuf,
    target: PathBuf,
    committed: bool,
}

impl AtomicFile {
    /// Create the temp file `.NAME.bundelta-TAG-TOKEN` next to `target` (a fresh random
    /// token; exclusively, never through a symlink), with permission bits `mode` (less the
    /// umask; unix only).
    pub(crate) fn create(target: &Path, tag: &str, mode: u32) -> Result<AtomicFile> {
        let name = target
            .file_name()
            .ok_or_else(|| Error::invalid_input(target, "output path has no file name"))?
            .to_string_lossy();
        let parent = parent_of(target);
        let mut tries = 0;
        loop {
            let tmp = parent.join(format!(".{name}.bundelta-{tag}-{}", new_token()));
            match AtomicFile::create_at(target, &tmp, mode) {
                Ok(a) => return Ok(a),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && tries < 8 => tries += 1,
                Err(e) => return Err(Error::io(&tmp, "create", e)),
            }
        }
    }

    /// Create the temp file `tmp` (a fixed name chosen by the caller, who handles an
    /// `AlreadyExists` error: the journal's stale temp file) for `target`, exclusively and
    /// never through a symlink.
    pub(crate) fn create_at(target: &Path, tmp: &Path, mode: u32) -> io::Result<AtomicFile> {
        let mut o = fs::OpenOptions::new();
        o.write(true).create_new(true);
        #[cfg(unix)]
        {
            use rustix::fs::OFlags;
            use std::os::unix::fs::OpenOptionsExt;
            o.mode(mode).custom_flags(
                (OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC).bits() as i32,
            );
        }
        #[cfg(not(unix))]
        let _ = mode;
        Ok(AtomicFile {
            file: o.open(tmp)?,
            tmp: tmp.to_path_buf(),
            target: target.to_path_buf(),
            committed: false,
        })
    }

    /// The temp file's path (for messages).
    pub(crate) fn tmp(&self) -> &Path {
        &self.tmp
    }

    /// The open temp file, to write to.
    pub(crate) fn file(&mut self) -> &mut File {
        &mut self.file
    }

    /// fsync the temp file, rename it over the target, fsync the target's directory.
    pub(crate) fn commit(mut self) -> Result<()> {
        self.file
            .sync_all()
            .map_err(|e| Error::io(&self.tmp, "fsync", e))?;
        fs::rename(&self.tmp, &self.target).map_err(|e| Error::io(&self.target, "rename", e))?;
        self.committed = true;
        sync_parent(&self.target)
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// Replace `target` atomically with what `write` writes (through an `AtomicFile`): a reader sees
/// the old file or the complete new one, never a part; a crash leaves at most a hidden temp
/// file `.NAME.bundelta-TAG-TOKEN` next to it. The new file has permission bits `mode` less
/// the umask (`0o600` for a secret key; unix only).
pub fn write_atomic(
    target: &Path,
    tag: &str,
    mode: u32,
    write: impl FnOnce(&mut File) -> io::Result<()>,
) -> Result<()> {
    let mut a = AtomicFile::create(target, tag, mode)?;
    write(a.file()).map_err(|e| Error::io(a.tmp(), "write", e))?;
    a.commit()
}
