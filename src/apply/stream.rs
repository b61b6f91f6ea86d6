//! Decoding the patch's streams: the control, diff and extra streams, and the copies and
//! delta reconstruction that consume them.

use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};

use crate::codec::decode::{expect_end, need_varint, read_full, read_retry, DiffSource, Stream};
use crate::error::{Error, Result};
use crate::format::{
    Control, Refs, Scan, CODEC_RAW, FLAG_DIFF_RUNS, LOOK_AHEAD, MAX_CONTROL_BLOCK, TRANSFORM_REFS,
};
use crate::readat::{read_at_most, Section};
use crate::tree::IO_BUF;

use super::{Patch, OUTPUT, PIPE_CHUNK};

/// The three solid streams of a patch, decoded as files consume them.
pub(crate) struct Streams<'a> {
    ctrl: BufReader<Stream<'a>>,
    diff: DiffSource<'a>,
    pub(super) extra: Stream<'a>,
    obuf: Vec<u8>,
    dbuf: Vec<u8>,
    /// The current control block and how many of its controls were used.
    block: Vec<Control>,
    used: usize,
}

impl<'a> Streams<'a> {
    /// The streams of `p`, each decoded on a thread of `scope` when one is given (see
    /// [`crate::Patcher::parallel`]), else as they are read.
    pub(super) fn open<'scope>(
        p: &'scope Patch,
        scope: Option<&'scope std::thread::Scope<'scope, '_>>,
    ) -> Result<Streams<'a>>
    where
        'scope: 'a,
    {
        let h = &p.header;
        let open = |i: usize, what: &'static str| {
            let (pos, len, codec) = (h.stream_offset(i), h.stream_lens[i], h.codecs[i]);
            match scope {
                Some(sc) if len > 0 && codec != CODEC_RAW => Ok(Stream::spawn(
                    sc,
                    &*p.src,
                    pos,
                    len,
                    codec,
                    h.window_log,
                    what,
                    PIPE_CHUNK,
                )),
                _ => Stream::open(&*p.src, pos, len, codec, h.window_log, what),
            }
        };
        Ok(Streams {
            ctrl: BufReader::with_capacity(4096, open(0, "control stream")?),
            diff: DiffSource::new(open(1, "diff stream")?, h.flags & FLAG_DIFF_RUNS != 0),
            extra: open(2, "extra stream")?,
            obuf: vec![0u8; IO_BUF],
            dbuf: vec![0u8; IO_BUF],
            block: Vec::new(),
            used: 0,
        })
    }

    /// Every stream must be consumed exactly.
    /// The next control of the current file, reading a new block when the current one is used.
    fn next_control(&mut self) -> Result<Control> {
        const C: &str = "control stream";
        if self.used == self.block.len() {
            let n = need_varint(&mut self.ctrl, C)?;
            if n == 0 || n > MAX_CONTROL_BLOCK as u64 {
                return Err(Error::corrupt(
                    C,
                    format!("control block of {n} controls (1..={MAX_CONTROL_BLOCK})"),
                ));
            }
            let n = n as usize;
            // Bounded by MAX_CONTROL_BLOCK, not by the patch.
            self.block.clear();
            for _ in 0..n {
                let diff = need_varint(&mut self.ctrl, C)?;
                self.block.push(Control {
                    diff,
                    extra: 0,
                    seek: 0,
                });
            }
            for i in 0..n {
                self.block[i].extra = need_varint(&mut self.ctrl, C)?;
            }
            for i in 0..n {
                let s = need_varint(&mut self.ctrl, C)?;
                self.block[i].seek = ((s >> 1) as i64) ^ -((s & 1) as i64);
            }
            self.used = 0;
        }
        self.used += 1;
        Ok(self.block[self.used - 1])
    }

    /// Copy the next `n` bytes of the extra stream to `out`.
    pub(super) fn copy_extra(&mut self, n: u64, out: &mut dyn Write) -> Result<()> {
        copy_exact_stream(&mut self.extra, n, out, "extra stream", &mut self.dbuf)
    }

    /// Copy the first `size` bytes of the open old file `f` (named `p` in messages) to `out`.
    pub(super) fn copy_file(
        &mut self,
        f: &File,
        p: &Path,
        size: u64,
        out: &mut dyn Write,
    ) -> Result<()> {
        copy_file(f, p, size, out, &mut self.obuf)
    }

    pub(super) fn finish(&mut self) -> Result<()> {
        expect_end(&mut self.ctrl, "control stream")?;
        self.diff.expect_end()?;
        expect_end(&mut self.extra, "extra stream")
    }
}

// ---------------------------------------------------------------------------------------------
// Delta streams

/// Copy exactly `n` bytes of a stream to `out` (the stream may hold more) through `buf`.
fn copy_exact_stream(
    r: &mut impl Read,
    n: u64,
    out: &mut dyn Write,
    what: &'static str,
    buf: &mut [u8],
) -> Result<()> {
    let mut left = n;
    while left > 0 {
        let k = (left.min(buf.len() as u64)) as usize;
        read_full(r, &mut buf[..k], what)?;
        out.write_all(&buf[..k])
            .map_err(|e| Error::io(Path::new(OUTPUT), "write", e))?;
        left -= k as u64;
    }
    Ok(())
}

/// Copy the first `size` bytes of the open old file `f` (named `p` in messages) to `out`
/// through `buf`.
fn copy_file(f: &File, p: &Path, size: u64, out: &mut dyn Write, buf: &mut [u8]) -> Result<()> {
    let mut r = Section::new(f, 0, size);
    let mut left = size;
    while left > 0 {
        let k = read_retry(&mut r, buf).map_err(|e| Error::io(p, "read", e))?;
        if k == 0 {
            return Err(Error::wrong_base(
                p.display().to_string(),
                "file shrank while applying",
            ));
        }
        out.write_all(&buf[..k])
            .map_err(|e| Error::io(Path::new(OUTPUT), "write", e))?;
        left -= k as u64;
    }
    Ok(())
}

/// Old files concatenated into one virtual source.
pub(crate) struct Source {
    parts: Vec<(File, u64, u64, PathBuf)>, // (file, start, len, path)
    len: u64,
}

impl Source {
    pub(super) fn new(files: Vec<(File, u64, PathBuf)>) -> Result<Source> {
        let mut parts = Vec::with_capacity(files.len());
        let mut start = 0u64;
        for (f, len, p) in files {
            parts.push((f, start, len, p));
            start = start
                .checked_add(len)
                .ok_or_else(|| Error::corrupt("manifest", "source sizes overflow"))?;
        }
        Ok(Source { parts, len: start })
    }

    /// Fill `buf` from virtual offset `pos` (the caller has checked `pos + buf.len() <= len`).
    fn read_exact_at(&self, buf: &mut [u8], pos: u64) -> Result<()> {
        let mut done = 0usize;
        while done < buf.len() {
            let at = pos + done as u64;
            let (f, start, len, p) = self
                .parts
                .iter()
                .find(|(_, s, l, _)| at >= *s && at < s + l)
                .ok_or_else(|| Error::corrupt("delta stream", "source offset out of range"))?;
            let off = at - start;
            let k = ((len - off) as usize).min(buf.len() - done);
            let got = read_at_most(f, &mut buf[done..done + k], off)
                .map_err(|e| Error::io(p, "read", e))?;
            if got != k {
                return Err(Error::wrong_base(
                    p.display().to_string(),
                    "file shrank while applying",
                ));
            }
            done += k;
        }
        Ok(())
    }
}

/// Rebuild one file of `size` bytes from its controls (see [`crate::format::Control`]), with
/// the diff stream added to OLD's bytes as they are (`transform` 0) or to their prediction
/// ([`TRANSFORM_REFS`], whose parameters precede the controls).
pub(crate) fn apply_delta(
    st: &mut Streams<'_>,
    src: &Source,
    size: u64,
    transform: u8,
    out: &mut dyn Write,
) -> Result<()> {
    const C: &str = "control stream";
    // OLD's bytes past a block, for a reference that starts in it.
    const LOOK: usize = LOOK_AHEAD;
    let refs = match transform {
        TRANSFORM_REFS => {
            if st.used != st.block.len() {
                return Err(Error::corrupt(C, "a control block runs into the next file"));
            }
            let ctrl = &mut st.ctrl;
            Some(Refs::decode(|| need_varint(ctrl, C), src.len)?)
        }
        _ => None,
    };
    // Blocks of OLD, with room for the look-ahead in the buffer (the fuzz target `refs`
    // checks block-wise prediction against whole-region prediction at every block size).
    let block = IO_BUF - LOOK;
    let mut carry = [0u8; LOOK];
    let mut pos: u64 = 0;
    let mut produced: u64 = 0;
    let mut first = true;
    while produced < size {
        let Control {
            diff: d,
            extra: e,
            seek,
        } = st.next_control()?;
        let step = d
            .checked_add(e)
            .ok_or_else(|| Error::corrupt(C, "length overflow"))?;
        if step == 0 && !first {
            return Err(Error::corrupt(
                C,
                "a control that produces nothing (only a file's first may)",
            ));
        }
        first = false;
        if produced.checked_add(step).is_none_or(|t| t > size) {
            return Err(Error::corrupt(
                C,
                format!("controls produce more than the file's {size} bytes"),
            ));
        }
        if pos.checked_add(d).is_none_or(|t| t > src.len) {
            return Err(Error::corrupt(
                C,
                format!(
                    "reads {d} source bytes at {pos}, past the {}-byte source",
                    src.len
                ),
            ));
        }
        let mut left = d;
        let mut scan = Scan::new(pos, produced);
        let mut carried = 0usize;
        while left > 0 {
            let k = left.min(block as u64) as usize;
            match &refs {
                None => src.read_exact_at(&mut st.obuf[..k], pos)?,
                Some(r) => {
                    // Predict this block's references from OLD's bytes (and up to LOOK
                    // bytes after it, within the region), keeping what the previous block
                    // predicted for its first bytes.
                    let look = (left - k as u64).min(LOOK as u64) as usize;
                    src.read_exact_at(&mut st.obuf[..k + look], pos)?;
                    st.obuf[..carried].copy_from_slice(&carry[..carried]);
                    r.predict(&mut scan, &mut st.obuf[..k + look], d - left, k);
                    carry[..look].copy_from_slice(&st.obuf[k..k + look]);
                    carried = look;
                }
            }
            st.diff.add_to(&mut st.obuf[..k], &mut st.dbuf)?;
            out.write_all(&st.obuf[..k])
                .map_err(|er| Error::io(Path::new(OUTPUT), "write", er))?;
            pos += k as u64;
            left -= k as u64;
        }
        st.copy_extra(e, out)?;
        produced += step;
        let np = i128::from(pos) + i128::from(seek);
        if np < 0 || np > i128::from(src.len) {
            return Err(Error::corrupt(
                C,
                format!("seek to {np}, outside the {}-byte source", src.len),
            ));
        }
        pos = np as u64;
    }
    if st.used != st.block.len() {
        return Err(Error::corrupt(
            C,
            "a control block runs past the end of its file",
        ));
    }
    Ok(())
}
