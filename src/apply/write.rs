//! Writers an output file goes through: hashing (and writing, when staged) and progress.

use std::fs::File;
use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::format::Hash;
use crate::tree::IO_BUF;

use super::ProgressFn;

// ---------------------------------------------------------------------------------------------
// Output helpers

pub(super) struct HashingWriter {
    file: Option<io::BufWriter<File>>,
    h: blake3::Hasher,
    n: u64,
}

impl HashingWriter {
    pub(super) fn new(f: Option<File>) -> HashingWriter {
        HashingWriter {
            file: f.map(|f| io::BufWriter::with_capacity(IO_BUF, f)),
            h: blake3::Hasher::new(),
            n: 0,
        }
    }

    pub(super) fn finish(self) -> io::Result<(u64, Hash, Option<File>)> {
        let f = match self.file {
            Some(w) => Some(w.into_inner().map_err(|e| e.into_error())?),
            None => None,
        };
        Ok((self.n, *self.h.finalize().as_bytes(), f))
    }
}

impl Write for HashingWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let k = match &mut self.file {
            Some(f) => f.write(buf)?,
            None => buf.len(),
        };
        self.h.update(&buf[..k]);
        self.n += k as u64;
        Ok(k)
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.file {
            Some(f) => f.flush(),
            None => Ok(()),
        }
    }
}

pub(super) struct ProgressWriter<'a> {
    pub(super) inner: &'a mut dyn Write,
    pub(super) done: &'a AtomicU64,
    pub(super) total: u64,
    pub(super) progress: Option<&'a ProgressFn>,
}

impl Write for ProgressWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let k = self.inner.write(buf)?;
        let before = self.done.fetch_add(k as u64, Ordering::Relaxed);
        if let Some(p) = self.progress {
            // Report about every MiB.
            if (before >> 20) != ((before + k as u64) >> 20) {
                p(before + k as u64, self.total);
            }
        }
        Ok(k)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
