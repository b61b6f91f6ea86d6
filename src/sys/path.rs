//! Operations by path beside the handle-based [`Dir`](super::Dir): the side files, lock and
//! atomic exchange of the in-place apply.
//! Every platform difference is a `cfg` here, each with its documented fallback.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

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
