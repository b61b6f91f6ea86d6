//! Platform calls: every path of OLD and of the staging tree resolved beneath a directory
//! handle, never following a symlink, and only regular files ever read.
//!
//! # Why
//!
//! A path that is checked and later used by name again can name something else by then: a
//! directory of OLD replaced by a symlink between the base check and the copy (or hard link)
//! makes the name reach outside OLD, and a FIFO where a regular file was expected makes a
//! plain `open` block forever. So:
//!
//! - OLD (and the staging tree) is opened once as a [`Dir`] handle; every later path is
//!   resolved beneath that handle and refuses a symlink at any component. On Linux this is
//!   one `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`; where the kernel lacks it (`ENOSYS`,
//!   before 5.6; or a seccomp filter answering `EPERM`) and on other unix systems, a walk of
//!   `openat(O_NOFOLLOW | O_DIRECTORY)`, one component at a time, then the last component
//!   with `O_NOFOLLOW`. A swapped-in symlink fails with `ELOOP` (or `ENOTDIR`); nothing is
//!   ever resolved outside the handle's directory (`..` components are refused too).
//! - Files are opened read-only with `O_NONBLOCK | O_NOCTTY`, and their kind is checked on
//!   the open handle (`fstat`): a FIFO, socket, device or directory is refused with an error
//!   naming its kind, never read (opening a FIFO this way does not wait for a writer).
//! - A file is identified by a [`FileId`] taken from `fstat` of the handle that was read
//!   (device, inode, size, mtime, ctime, mode): whoever uses the file later opens it again
//!   beneath the handle and compares, so a replaced file (another inode), a file rewritten in
//!   place or whose metadata changed (ctime moves on any write or `chmod`, and cannot be set
//!   back by an unprivileged process) is detected.
//! - A hard link is made to the open file itself, not to whatever a name points to now:
//!   `linkat(AT_FDCWD, "/proc/self/fd/N", dir, name, AT_SYMLINK_FOLLOW)` (Linux, works
//!   unprivileged), else `linkat(fd, "", dir, name, AT_EMPTY_PATH)` (needs
//!   `CAP_DAC_READ_SEARCH`); when neither works the caller copies instead.
//!
//! # Other platforms
//!
//! Without unix `*at` calls (Windows and others) the same API is path-based: each component
//! is checked with `symlink_metadata` before the path is opened. That refuses a symlink that
//! is already there but not one swapped in between the check and the open, and a file is
//! identified by size and mtime only. Hard links are never made there (the caller copies).

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use crate::error::Error;

/// Identity of a file as it was read: 64-bit digests of its device, inode, size, mtime and
/// mode (`stable`) and of those plus its ctime (`full`); 16 bytes, so that holding one per
/// file relied upon stays cheap. Equal `full` values mean the same inode, not written to or
/// changed in metadata in between (ctime moves on any change, and cannot be set back).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub(crate) struct FileId {
    full: u64,
    stable: u64,
}

impl FileId {
    /// From the stable fields and the ctime fields.
    fn of(stable: &[i128], ctime: &[i128]) -> FileId {
        let digest = |parts: &[&[i128]]| {
            let mut h = blake3::Hasher::new();
            for f in parts.iter().flat_map(|p| p.iter()) {
                h.update(&f.to_le_bytes());
            }
            let mut d = [0u8; 8];
            d.copy_from_slice(&h.finalize().as_bytes()[..8]);
            u64::from_le_bytes(d)
        };
        FileId {
            full: digest(&[stable, ctime]),
            stable: digest(&[stable]),
        }
    }

    /// Same inode, size, mtime and mode; the ctime may differ (this process linked the file,
    /// which moves its ctime).
    pub(crate) fn same_but_ctime(&self, other: &FileId) -> bool {
        self.stable == other.stable
    }
}

/// What a directory entry is (not following symlinks).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(not(unix), allow(dead_code))] // the path-based fallback tells only these apart
pub enum Kind {
    /// A directory.
    Dir,
    /// A regular file.
    File,
    /// A symbolic link (never followed).
    Symlink,
    /// A named pipe.
    Fifo,
    /// A unix socket.
    Socket,
    /// A character device.
    CharDevice,
    /// A block device.
    BlockDevice,
    /// Anything else.
    Unknown,
}

impl Kind {
    /// "a FIFO", "a directory", ...: for messages.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Dir => "a directory",
            Kind::File => "a regular file",
            Kind::Symlink => "a symlink",
            Kind::Fifo => "a FIFO",
            Kind::Socket => "a socket",
            Kind::CharDevice => "a character device",
            Kind::BlockDevice => "a block device",
            Kind::Unknown => "of an unknown kind",
        }
    }
}

/// Kind, size and executable bit of an entry or an open file.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Meta {
    pub(crate) kind: Kind,
    pub(crate) size: u64,
    pub(crate) exec: bool,
    /// Permission bits (`mode & 0o7777`; 0 elsewhere than unix).
    pub(crate) mode: u32,
}

/// A regular file opened for reading, with what `fstat` said of it.
pub(crate) struct Opened {
    pub(crate) file: File,
    pub(crate) id: FileId,
    pub(crate) meta: Meta,
}

/// The error for an open file that is not a regular file: `InvalidInput`, naming its kind.
pub(crate) fn not_regular(kind: Kind) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("is {}, not a regular file (never read)", kind.name()),
    )
}

/// Whether `e` says a symlink (or a non-directory) was met where a directory was needed:
/// what a swapped-in link gives.
pub(crate) fn is_link_refusal(e: &io::Error) -> bool {
    #[cfg(unix)]
    {
        matches!(
            e.raw_os_error(),
            Some(libc::ELOOP) | Some(libc::ENOTDIR) | Some(libc::EXDEV)
        )
    }
    #[cfg(not(unix))]
    {
        e.kind() == io::ErrorKind::InvalidInput
    }
}

fn bad_component(rel: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{rel:?}: empty, `.` or `..` component (only plain names are resolved)"),
    )
}

/// Split `a/b/c` into (`Some("a/b")`, `"c"`).
fn split_parent(rel: &str) -> (Option<&str>, &str) {
    match rel.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, rel),
    }
}

/// Refuse a `rel` that is not a `/`-separated relative path of plain names (no empty, `.` or
/// `..` component, not absolute): the first step of every resolution beneath a handle.
fn check_rel(rel: &str) -> io::Result<()> {
    if rel.is_empty()
        || rel
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(bad_component(rel));
    }
    Ok(())
}

mod path;
pub use path::write_atomic;
pub(crate) use path::*;

pub(crate) use imp::{file_id, open_file_path};

/// An open directory: everything beneath it is resolved through this handle (on unix a file
/// descriptor, elsewhere its path: see the module docs). Only the handle's operations differ
/// between platforms (`imp::Handle`); the path kept for messages and the walk are shared.
pub(crate) struct Dir {
    h: imp::Handle,
    path: PathBuf,
}

impl Dir {
    /// Open the directory `path` as named by the caller (a symlink there is followed: it
    /// is the caller's choice of directory; nothing beneath it ever is).
    pub(crate) fn open(path: &Path) -> io::Result<Dir> {
        Ok(Dir {
            h: imp::Handle::open(path, true)?,
            path: path.to_path_buf(),
        })
    }

    /// Open the directory `path`, refusing a symlink there (a staging directory just
    /// created).
    pub(crate) fn open_nofollow(path: &Path) -> io::Result<Dir> {
        Ok(Dir {
            h: imp::Handle::open(path, false)?,
            path: path.to_path_buf(),
        })
    }

    /// The path this handle was opened as (for messages only; never opened again).
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// `rel` beneath this handle's path (for messages only; never opened).
    pub(crate) fn display(&self, rel: &str) -> PathBuf {
        if rel.is_empty() {
            self.path.clone()
        } else {
            self.path.join(rel)
        }
    }

    /// Open the directory `rel` beneath this one (no symlink at any component).
    pub(crate) fn open_dir(&self, rel: &str) -> io::Result<Dir> {
        Ok(Dir {
            h: self.h.open_dir(rel)?,
            path: self.display(rel),
        })
    }

    /// Open the regular file `rel` beneath this directory for reading (non-blocking open,
    /// kind checked on the handle).
    pub(crate) fn open_file(&self, rel: &str) -> io::Result<Opened> {
        self.h.open_file(rel)
    }

    /// The entries of this directory (not `.` and `..`), each with what `lstat` says, in the
    /// order the system lists them.
    pub(crate) fn entries(&self) -> io::Result<Vec<(OsString, Meta)>> {
        self.h.entries()
    }

    /// [`Dir::entries`] in byte order of their names.
    pub(crate) fn sorted_entries(&self) -> io::Result<Vec<(OsString, Meta)>> {
        let mut v = self.entries()?;
        v.sort_by(|a, b| a.0.as_encoded_bytes().cmp(b.0.as_encoded_bytes()));
        Ok(v)
    }

    /// What the entry `name` (one component) is, not following a symlink.
    pub(crate) fn lstat(&self, name: &OsStr) -> io::Result<Meta> {
        self.h.lstat(name)
    }

    /// The subdirectory `name` (one component), refusing a symlink.
    pub(crate) fn sub(&self, name: &OsStr) -> io::Result<Dir> {
        Ok(Dir {
            h: self.h.sub(name)?,
            path: self.path.join(name),
        })
    }

    /// The target of the symlink `name` (one component).
    pub(crate) fn read_link(&self, name: &OsStr) -> io::Result<OsString> {
        self.h.read_link(name)
    }

    /// Create the directory `name` (one component) in this directory.
    pub(crate) fn create_dir(&self, name: &str, mode: u32) -> io::Result<()> {
        self.h.create_dir(name, mode)
    }

    /// Create the file `name` (one component) in this directory, exclusively (an
    /// existing name, a symlink included, is an error).
    pub(crate) fn create_file(&self, name: &str, mode: u32) -> io::Result<File> {
        self.h.create_file(name, mode)
    }

    /// Create the symlink `name` (one component) holding `target`.
    pub(crate) fn symlink(&self, target: &str, name: &str) -> io::Result<()> {
        self.h.symlink(target, name)
    }

    /// Hard-link the open file `f` (its inode, not a name) as `name` (one component).
    pub(crate) fn link_file(&self, f: &File, name: &str) -> io::Result<()> {
        self.h.link_file(f, name)
    }
}

/// One entry met by [`walk_sorted`].
#[derive(Debug)]
pub struct WalkEntry<'a> {
    /// Its path relative to the walked root.
    pub rel: &'a Path,
    /// The root joined with `rel` (for messages, or to open a regular file).
    pub path: &'a Path,
    /// What it is (a symlink is reported as one, never followed).
    pub kind: Kind,
    /// Its size in bytes (`lstat`).
    pub size: u64,
    /// Its permission bits (`mode & 0o7777`; 0 elsewhere than unix).
    pub mode: u32,
    /// A symlink's target.
    pub link: Option<&'a OsStr>,
}

/// Walk the tree under the directory `root`: depth first, each directory's entries in byte
/// order of their names, a directory's own entry before its contents (what
/// `tar --sort=name` does). Symlinks are reported, never followed: each subdirectory is
/// opened beneath its parent's handle (`O_NOFOLLOW`), so one swapped for a link during the
/// walk fails the walk instead. `f`'s first error stops the walk.
pub fn walk_sorted<E: From<Error>>(
    root: &Path,
    mut f: impl FnMut(&WalkEntry<'_>) -> std::result::Result<(), E>,
) -> std::result::Result<(), E> {
    fn walk<E: From<Error>>(
        dir: &Dir,
        rel: &Path,
        f: &mut dyn FnMut(&WalkEntry<'_>) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        let entries = dir
            .sorted_entries()
            .map_err(|e| Error::io(dir.path(), "read directory", e))?;
        for (name, meta) in entries {
            let (r, p) = (rel.join(&name), dir.path().join(&name));
            let link = match meta.kind {
                Kind::Symlink => Some(
                    dir.read_link(&name)
                        .map_err(|e| Error::io(&p, "read link", e))?,
                ),
                _ => None,
            };
            f(&WalkEntry {
                rel: &r,
                path: &p,
                kind: meta.kind,
                size: meta.size,
                mode: meta.mode,
                link: link.as_deref(),
            })?;
            if meta.kind == Kind::Dir {
                let sub = dir
                    .sub(&name)
                    .map_err(|e| Error::io(&p, "open directory (never following a symlink)", e))?;
                walk(&sub, &r, f)?;
            }
        }
        Ok(())
    }
    let dir = Dir::open(root).map_err(|e| Error::io(root, "open directory", e))?;
    walk(&dir, Path::new(""), &mut f)
}

#[cfg(unix)]
mod imp {
    use super::*;
    use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags};
    #[cfg(any(target_os = "linux", target_os = "android"))]
    use rustix::io::Errno;
    use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;

    /// Flags of every read-only open of a file of OLD.
    const READ: OFlags = OFlags::RDONLY
        .union(OFlags::NONBLOCK)
        .union(OFlags::NOCTTY)
        .union(OFlags::CLOEXEC)
        .union(OFlags::NOFOLLOW);
    /// Flags of every directory open beneath a handle.
    const DIR: OFlags = OFlags::RDONLY
        .union(OFlags::DIRECTORY)
        .union(OFlags::CLOEXEC)
        .union(OFlags::NOFOLLOW);

    /// Whether `openat2` may still work (cleared on the first `ENOSYS`).
    #[cfg(any(target_os = "linux", target_os = "android"))]
    static OPENAT2: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

    /// Open `rel` (a `/`-separated relative path of plain names) beneath `dir`, refusing a
    /// symlink at any component and any escape from `dir`.
    fn open_beneath(
        dir: BorrowedFd<'_>,
        rel: &str,
        flags: OFlags,
        mode: Mode,
    ) -> io::Result<OwnedFd> {
        check_rel(rel)?;
        #[cfg(any(target_os = "linux", target_os = "android"))]
        {
            use std::sync::atomic::Ordering;
            if OPENAT2.load(Ordering::Relaxed) {
                let how = rfs::ResolveFlags::BENEATH | rfs::ResolveFlags::NO_SYMLINKS;
                let mut tries = 0;
                loop {
                    match rfs::openat2(dir, rel, flags, mode, how) {
                        Ok(fd) => return Ok(fd),
                        // A rename raced with the lookup; the kernel asks to retry.
                        Err(Errno::AGAIN) if tries < 64 => tries += 1,
                        Err(Errno::NOSYS) => {
                            OPENAT2.store(false, Ordering::Relaxed);
                            break;
                        }
                        // A seccomp filter may refuse the call: the walk decides.
                        Err(Errno::PERM) => break,
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        }
        walk(dir, rel, flags, mode)
    }

    /// The portable resolution: one `openat(O_NOFOLLOW)` per component.
    fn walk(dir: BorrowedFd<'_>, rel: &str, flags: OFlags, mode: Mode) -> io::Result<OwnedFd> {
        let (parent, name) = split_parent(rel);
        let mut cur: Option<OwnedFd> = None;
        if let Some(parent) = parent {
            for c in parent.split('/') {
                let at = cur.as_ref().map_or(dir, |f| f.as_fd());
                cur = Some(rfs::openat(at, c, DIR, Mode::empty())?);
            }
        }
        let at = cur.as_ref().map_or(dir, |f| f.as_fd());
        Ok(rfs::openat(at, name, flags | OFlags::NOFOLLOW, mode)?)
    }

    fn kind_of(t: FileType) -> Kind {
        match t {
            FileType::Directory => Kind::Dir,
            FileType::RegularFile => Kind::File,
            FileType::Symlink => Kind::Symlink,
            FileType::Fifo => Kind::Fifo,
            FileType::Socket => Kind::Socket,
            FileType::CharacterDevice => Kind::CharDevice,
            FileType::BlockDevice => Kind::BlockDevice,
            _ => Kind::Unknown,
        }
    }

    #[allow(clippy::unnecessary_cast)] // field types differ between platforms
    fn meta_id(st: &rfs::Stat) -> (Meta, FileId) {
        let mode = st.st_mode as u32;
        let meta = Meta {
            kind: kind_of(FileType::from_raw_mode(st.st_mode as _)),
            size: st.st_size as u64,
            exec: mode & 0o111 != 0,
            mode: mode & 0o7777,
        };
        let id = FileId::of(
            &[
                st.st_dev as i128,
                st.st_ino as i128,
                st.st_size as i128,
                st.st_mtime as i128,
                st.st_mtime_nsec as i128,
                mode as i128,
            ],
            &[st.st_ctime as i128, st.st_ctime_nsec as i128],
        );
        (meta, id)
    }

    /// Identity and metadata of an open file.
    pub(crate) fn file_id(f: &File) -> io::Result<(Meta, FileId)> {
        Ok(meta_id(&rfs::fstat(f)?))
    }

    /// Check on the handle that it is a regular file, and make reads blocking again.
    fn regular(fd: OwnedFd) -> io::Result<Opened> {
        let (meta, id) = meta_id(&rfs::fstat(&fd)?);
        if meta.kind != Kind::File {
            return Err(not_regular(meta.kind));
        }
        rfs::fcntl_setfl(&fd, OFlags::empty())?;
        Ok(Opened {
            file: File::from(fd),
            id,
            meta,
        })
    }

    /// Open the regular file at `path` for reading (OLD of a single-file bundle, an input of
    /// `diff`): a symlink as the last component is not followed, a FIFO is not waited on,
    /// anything but a regular file is refused. The directories above `path` are the caller's.
    pub(crate) fn open_file_path(path: &Path) -> io::Result<Opened> {
        regular(rfs::open(path, READ, Mode::empty())?)
    }

    /// The unix side of a [`Dir`]: its file descriptor.
    pub(super) struct Handle(OwnedFd);

    impl Handle {
        pub(super) fn open(path: &Path, follow: bool) -> io::Result<Handle> {
            let flags = if follow {
                DIR.difference(OFlags::NOFOLLOW)
            } else {
                DIR
            };
            Ok(Handle(rfs::open(path, flags, Mode::empty())?))
        }

        pub(super) fn open_dir(&self, rel: &str) -> io::Result<Handle> {
            Ok(Handle(open_beneath(
                self.0.as_fd(),
                rel,
                DIR,
                Mode::empty(),
            )?))
        }

        pub(super) fn open_file(&self, rel: &str) -> io::Result<Opened> {
            regular(open_beneath(self.0.as_fd(), rel, READ, Mode::empty())?)
        }

        pub(super) fn entries(&self) -> io::Result<Vec<(OsString, Meta)>> {
            let mut out = Vec::new();
            let mut rd = rfs::Dir::read_from(&self.0)?;
            while let Some(ent) = rd.read() {
                let ent = ent?;
                let name = ent.file_name();
                let b = name.to_bytes();
                if b == b"." || b == b".." {
                    continue;
                }
                let st = rfs::statat(&self.0, name, AtFlags::SYMLINK_NOFOLLOW)?;
                out.push((OsStr::from_bytes(b).to_os_string(), meta_id(&st).0));
            }
            Ok(out)
        }

        pub(super) fn lstat(&self, name: &OsStr) -> io::Result<Meta> {
            Ok(meta_id(&rfs::statat(&self.0, name, AtFlags::SYMLINK_NOFOLLOW)?).0)
        }

        pub(super) fn sub(&self, name: &OsStr) -> io::Result<Handle> {
            Ok(Handle(rfs::openat(&self.0, name, DIR, Mode::empty())?))
        }

        pub(super) fn read_link(&self, name: &OsStr) -> io::Result<OsString> {
            let t = rfs::readlinkat(&self.0, name, Vec::new())?;
            Ok(OsStr::from_bytes(t.as_bytes()).to_os_string())
        }

        pub(super) fn create_dir(&self, name: &str, mode: u32) -> io::Result<()> {
            Ok(rfs::mkdirat(&self.0, name, Mode::from_raw_mode(mode as _))?)
        }

        pub(super) fn create_file(&self, name: &str, mode: u32) -> io::Result<File> {
            let flags =
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            let fd = rfs::openat(&self.0, name, flags, Mode::from_raw_mode(mode as _))?;
            Ok(File::from(fd))
        }

        pub(super) fn symlink(&self, target: &str, name: &str) -> io::Result<()> {
            Ok(rfs::symlinkat(target, &self.0, name)?)
        }

        /// `linkat(AT_FDCWD, "/proc/self/fd/N", ..., AT_SYMLINK_FOLLOW)`, else
        /// `linkat(fd, "", ..., AT_EMPTY_PATH)` (Linux); unsupported elsewhere.
        pub(super) fn link_file(&self, f: &File, name: &str) -> io::Result<()> {
            #[cfg(any(target_os = "linux", target_os = "android"))]
            {
                use std::os::fd::AsRawFd;
                let proc = format!("/proc/self/fd/{}", f.as_raw_fd());
                match rfs::linkat(
                    rfs::CWD,
                    proc.as_str(),
                    &self.0,
                    name,
                    AtFlags::SYMLINK_FOLLOW,
                ) {
                    Ok(()) => return Ok(()),
                    Err(Errno::EXIST) => return Err(Errno::EXIST.into()),
                    Err(_) => {}
                }
                Ok(rfs::linkat(f, "", &self.0, name, AtFlags::EMPTY_PATH)?)
            }
            #[cfg(not(any(target_os = "linux", target_os = "android")))]
            {
                let _ = (f, name);
                Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "hard links to an open file need Linux",
                ))
            }
        }
    }
    #[cfg(test)]
    mod tests {
        use super::*;

        /// `openat2` (when the kernel has it) and the component walk agree: plain paths open,
        /// a symlink at any component is refused, `..` and absolute paths are refused, and
        /// a FIFO opens without blocking and is then refused by kind.
        #[test]
        fn openat2_and_the_walk_refuse_links_at_every_component() {
            let t = tempfile::tempdir().unwrap();
            let r = t.path();
            std::fs::create_dir_all(r.join("a/b")).unwrap();
            std::fs::write(r.join("a/b/f"), b"x").unwrap();
            std::fs::create_dir(r.join("out")).unwrap();
            std::fs::write(r.join("out/f"), b"outside").unwrap();
            std::os::unix::fs::symlink(r.join("a/b"), r.join("a/lb")).unwrap();
            std::os::unix::fs::symlink(r.join("out"), r.join("a/lo")).unwrap();
            std::os::unix::fs::symlink("b/f", r.join("a/lf")).unwrap();
            std::fs::write(r.join("a/file"), b"").unwrap();
            let st = std::process::Command::new("mkfifo")
                .arg(r.join("a/fifo"))
                .status()
                .unwrap();
            assert!(st.success());
            let dir = Dir::open(r).unwrap();
            type Open = fn(BorrowedFd<'_>, &str, OFlags, Mode) -> io::Result<OwnedFd>;
            let ways: [(&str, Open); 2] = [("openat2", open_beneath), ("walk", walk)];
            for (how, open) in ways {
                let fd = dir.h.0.as_fd();
                let ok = |rel: &str| open(fd, rel, READ, Mode::empty());
                assert!(ok("a/b/f").is_ok(), "{how}");
                for bad in ["a/lb/f", "a/lo/f", "a/lf", "a/file/x"] {
                    let e = ok(bad).expect_err(bad);
                    assert!(is_link_refusal(&e), "{how} {bad}: {e}");
                }
                let e = regular(ok("a/fifo").unwrap()).err().unwrap();
                assert!(e.to_string().contains("FIFO"), "{how}: {e}");
            }
            for bad in ["../x", "a/../a/b/f", "/etc/passwd", "a//b/f", ""] {
                assert!(dir.open_file(bad).is_err(), "{bad}");
            }
            assert!(dir.open_dir("a/lb").is_err());
            assert!(dir.open_file("a/b/f").is_ok());
        }
    }
}

#[cfg(not(unix))]
mod imp {
    //! Path-based fallback (see the module docs: a swap between check and open is missed).
    use super::*;
    use std::fs;

    fn meta_of(md: &fs::Metadata) -> Meta {
        let ft = md.file_type();
        let kind = if ft.is_symlink() {
            Kind::Symlink
        } else if ft.is_dir() {
            Kind::Dir
        } else if ft.is_file() {
            Kind::File
        } else {
            Kind::Unknown
        };
        Meta {
            kind,
            size: md.len(),
            exec: false,
            mode: 0,
        }
    }

    fn id_of(md: &fs::Metadata) -> FileId {
        let t = md
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos() as i128);
        FileId::of(&[md.len() as i128, t], &[])
    }

    /// Identity and metadata of an open file.
    pub(crate) fn file_id(f: &File) -> io::Result<(Meta, FileId)> {
        let md = f.metadata()?;
        Ok((meta_of(&md), id_of(&md)))
    }

    fn regular_at(path: &Path) -> io::Result<Opened> {
        let md = fs::symlink_metadata(path)?;
        let m = meta_of(&md);
        if m.kind != Kind::File {
            return Err(not_regular(m.kind));
        }
        let file = File::open(path)?;
        let md = file.metadata()?;
        let meta = meta_of(&md);
        if meta.kind != Kind::File {
            return Err(not_regular(meta.kind));
        }
        Ok(Opened {
            file,
            id: id_of(&md),
            meta,
        })
    }

    /// Open the regular file at `path` for reading (see the unix version).
    pub(crate) fn open_file_path(path: &Path) -> io::Result<Opened> {
        regular_at(path)
    }

    /// The path-based side of a [`Dir`] (see the module docs).
    pub(super) struct Handle(PathBuf);

    impl Handle {
        pub(super) fn open(path: &Path, follow: bool) -> io::Result<Handle> {
            let md = if follow {
                fs::metadata(path)?
            } else {
                fs::symlink_metadata(path)?
            };
            if !md.is_dir() {
                return Err(io::Error::new(
                    if follow {
                        io::ErrorKind::NotADirectory
                    } else {
                        io::ErrorKind::InvalidInput
                    },
                    "not a directory",
                ));
            }
            Ok(Handle(path.to_path_buf()))
        }

        /// Check each directory component of `rel` (not the last) is a real directory.
        fn check(&self, rel: &str) -> io::Result<PathBuf> {
            check_rel(rel)?;
            let (parent, _) = split_parent(rel);
            let mut p = self.0.clone();
            if let Some(parent) = parent {
                for c in parent.split('/') {
                    p.push(c);
                    if !fs::symlink_metadata(&p)?.is_dir() {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidInput,
                            "a component is not a directory (symlinks are not followed)",
                        ));
                    }
                }
            }
            Ok(self.0.join(rel))
        }

        pub(super) fn open_dir(&self, rel: &str) -> io::Result<Handle> {
            Handle::open(&self.check(rel)?, false)
        }

        pub(super) fn open_file(&self, rel: &str) -> io::Result<Opened> {
            regular_at(&self.check(rel)?)
        }

        pub(super) fn entries(&self) -> io::Result<Vec<(OsString, Meta)>> {
            let mut out = Vec::new();
            for e in fs::read_dir(&self.0)? {
                let e = e?;
                let md = fs::symlink_metadata(e.path())?;
                out.push((e.file_name(), meta_of(&md)));
            }
            Ok(out)
        }

        pub(super) fn lstat(&self, name: &OsStr) -> io::Result<Meta> {
            Ok(meta_of(&fs::symlink_metadata(self.0.join(name))?))
        }

        pub(super) fn sub(&self, name: &OsStr) -> io::Result<Handle> {
            Handle::open(&self.0.join(name), false)
        }

        pub(super) fn read_link(&self, name: &OsStr) -> io::Result<OsString> {
            Ok(fs::read_link(self.0.join(name))?.into_os_string())
        }

        pub(super) fn create_dir(&self, name: &str, _mode: u32) -> io::Result<()> {
            fs::create_dir(self.0.join(name))
        }

        pub(super) fn create_file(&self, name: &str, _mode: u32) -> io::Result<File> {
            fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(self.0.join(name))
        }

        pub(super) fn symlink(&self, _target: &str, _name: &str) -> io::Result<()> {
            Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "symlinks need unix",
            ))
        }

        pub(super) fn link_file(&self, _f: &File, _name: &str) -> io::Result<()> {
            Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "hard links to an open file need unix",
            ))
        }
    }
}

/// A tree being written beneath one directory handle (the staging tree): each entry's parent
/// is resolved beneath the root without following symlinks (the last parent is kept open,
/// since entries come in path order), then the entry is made in it by its last component.
pub(crate) struct Writer {
    root: Dir,
    last: Option<(String, Dir)>,
}

impl Writer {
    /// Write beneath the directory `root` (created by the caller; a symlink there is refused).
    pub(crate) fn open(root: &Path) -> io::Result<Writer> {
        Ok(Writer {
            root: Dir::open_nofollow(root)?,
            last: None,
        })
    }

    /// The parent directory of `rel` and its last component.
    fn parent<'a>(&mut self, rel: &'a str) -> io::Result<(&Dir, &'a str)> {
        match split_parent(rel) {
            (None, name) => Ok((&self.root, name)),
            (Some(p), name) => {
                if self.last.as_ref().is_none_or(|(l, _)| l != p) {
                    self.last = None;
                    let d = self.root.open_dir(p)?;
                    self.last = Some((p.to_string(), d));
                }
                let (_, d) = self.last.as_ref().expect("set above");
                Ok((d, name))
            }
        }
    }

    /// Create the directory `rel` (mode 0755).
    pub(crate) fn create_dir(&mut self, rel: &str) -> io::Result<()> {
        let (d, name) = self.parent(rel)?;
        d.create_dir(name, 0o755)
    }

    /// Create the file `rel` exclusively, mode 0755 or 0644.
    pub(crate) fn create_file(&mut self, rel: &str, exec: bool) -> io::Result<File> {
        let (d, name) = self.parent(rel)?;
        d.create_file(name, if exec { 0o755 } else { 0o644 })
    }

    /// Create the symlink `rel` holding `target`.
    pub(crate) fn symlink(&mut self, target: &str, rel: &str) -> io::Result<()> {
        let (d, name) = self.parent(rel)?;
        d.symlink(target, name)
    }

    /// Hard-link the open file `f` as `rel`.
    pub(crate) fn link_file(&mut self, f: &File, rel: &str) -> io::Result<()> {
        let (d, name) = self.parent(rel)?;
        d.link_file(f, name)
    }

    /// Open the regular file `rel` written earlier, for reading (never through a symlink).
    pub(crate) fn open_file(&self, rel: &str) -> io::Result<Opened> {
        self.root.open_file(rel)
    }
}
