//! Positioned reads: the applier reads the patch and old files at explicit offsets, never
//! through a shared cursor, so that one open file serves several readers (the three streams of
//! a patch) and a read can never land anywhere but where it was aimed. Implemented for files
//! and for bytes in memory (a patch held whole, or a test's reader).

use std::fs::File;
use std::io::{self, Read};

/// Positioned reads at explicit offsets, with no shared cursor: how the applier reads an old
/// file given as something other than a path ([`crate::Patcher::apply_to_writer`]: a file, bytes
/// in memory, a platform's asset reader, a C callback).
///
/// Implemented for [`File`] (`pread`; on platforms without it, seek then read), byte slices
/// and vectors, and through `&T`, `Box<T>` and `Arc<T>`.
///
/// ```
/// use bundelta::ReadAt;
/// let old: &[u8] = b"0123456789";
/// let mut buf = [0u8; 4];
/// assert_eq!(old.read_at(&mut buf, 3)?, 4);
/// assert_eq!(&buf, b"3456");
/// assert_eq!(old.read_at(&mut buf, 10)?, 0); // at the end
/// # Ok::<(), std::io::Error>(())
/// ```
pub trait ReadAt {
    /// Read up to `buf.len()` bytes at `pos` into `buf`; the number read, `Ok(0)` only at or
    /// past the end. Fewer bytes than asked are fine (the applier asks again).
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize>;
}

impl<T: ReadAt + ?Sized> ReadAt for &T {
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        (**self).read_at(buf, pos)
    }
}

impl<T: ReadAt + ?Sized> ReadAt for Box<T> {
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        (**self).read_at(buf, pos)
    }
}

impl<T: ReadAt + ?Sized> ReadAt for std::sync::Arc<T> {
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        (**self).read_at(buf, pos)
    }
}

impl ReadAt for File {
    #[cfg(unix)]
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        std::os::unix::fs::FileExt::read_at(self, buf, pos)
    }

    #[cfg(windows)]
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        std::os::windows::fs::FileExt::seek_read(self, buf, pos)
    }

    /// Elsewhere: seek, then read. The cursor is shared, which is sound here because an
    /// apply reads from one thread.
    #[cfg(not(any(unix, windows)))]
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        use std::io::Seek;
        let mut f: &File = self;
        f.seek(io::SeekFrom::Start(pos))?;
        f.read(buf)
    }
}

impl ReadAt for [u8] {
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        let start = usize::try_from(pos).map_or(self.len(), |p| p.min(self.len()));
        let n = buf.len().min(self.len() - start);
        buf[..n].copy_from_slice(&self[start..start + n]);
        Ok(n)
    }
}

impl ReadAt for Vec<u8> {
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        self.as_slice().read_at(buf, pos)
    }
}

/// Positioned reader over `[pos, end)` of a source; never moves a shared cursor.
pub(crate) struct Section<'a> {
    file: &'a dyn ReadAt,
    pos: u64,
    end: u64,
}

impl<'a> Section<'a> {
    pub(crate) fn new(file: &'a dyn ReadAt, pos: u64, len: u64) -> Section<'a> {
        Section {
            file,
            pos,
            end: pos.saturating_add(len),
        }
    }
}

impl Read for Section<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.end - self.pos;
        let n = (buf.len() as u64).min(left) as usize;
        if n == 0 {
            return Ok(0);
        }
        let k = self.file.read_at(&mut buf[..n], self.pos)?;
        self.pos += k as u64;
        Ok(k)
    }
}

pub(crate) fn read_at_most(
    f: &(impl ReadAt + ?Sized),
    buf: &mut [u8],
    pos: u64,
) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match f.read_at(&mut buf[got..], pos + got as u64) {
            Ok(0) => break,
            Ok(k) => got += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}
