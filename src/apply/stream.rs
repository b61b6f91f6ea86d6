//! Decoding the patch's streams: the control, diff and extra streams, and the copies and
//! delta reconstruction that consume them.

use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};

use crate::codec::decode::{expect_end, need_varint, read_full, read_retry, DiffSource, Stream};
use crate::codec::zlib::{Deflater, Inflater};
use crate::error::{Error, Result};
use crate::format::{
    read_old_count, read_old_seg, Control, NewRecipe, NewSeg, OldSeg, Refs, Scan, CODEC_RAW,
    FLAG_DIFF_RUNS, LOOK_AHEAD, MAX_CONTROL_BLOCK, TRANSFORM_INFLATE, TRANSFORM_REFS,
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
    /// Where transform-2 files put the expanded form of their source (see [`Scratch`]).
    pub(super) scratch: PathBuf,
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
            scratch: std::env::temp_dir(),
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
    if transform == TRANSFORM_INFLATE {
        return apply_inflate(st, src, size, out);
    }
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

// ---------------------------------------------------------------------------------------------
// Transform 2: inflate (FORMAT.md section 4.3)

/// A file that holds the expanded form of one source while its target is made: created beside
/// the staging location (never in it), unlinked at once where the platform allows, so no
/// other process can open it by name, and removed on drop elsewhere.
struct Scratch {
    file: File,
    path: Option<PathBuf>,
}

impl Scratch {
    fn create(dir: &Path) -> Result<Scratch> {
        static COUNT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = dir.join(format!(
            ".bundelta-inflate-{}-{nanos:08x}-{n}",
            std::process::id()
        ));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| Error::io(&path, "create scratch file", e))?;
        let keep = if cfg!(unix) {
            std::fs::remove_file(&path).map_err(|e| Error::io(&path, "unlink scratch file", e))?;
            None
        } else {
            Some(path)
        };
        Ok(Scratch { file, path: keep })
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Some(p) = &self.path {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Rebuild a transform-2 file: expand its source by the source recipe into a [`Scratch`]
/// file, read the target recipe, then run the controls over the expanded source into a
/// [`Recomposer`] that deflates the target's streams again.
fn apply_inflate(st: &mut Streams<'_>, src: &Source, size: u64, out: &mut dyn Write) -> Result<()> {
    const C: &str = "control stream";
    if st.used != st.block.len() {
        return Err(Error::corrupt(C, "a control block runs into the next file"));
    }
    let scratch = Scratch::create(&st.scratch)?;
    let shown = PathBuf::from("(expanded source)");
    let mut w = std::io::BufWriter::with_capacity(IO_BUF, &scratch.file);
    let n = read_old_count(&mut || need_varint(&mut st.ctrl, C))?;
    let (mut pos, mut expanded) = (0u64, 0u64);
    let put_err = |e: std::io::Error| Error::io(&shown, "write", e);
    for _ in 0..n {
        let seg = read_old_seg(&mut || need_varint(&mut st.ctrl, C))?;
        let (len, plain) = match seg {
            OldSeg::Raw(n) => (n, n),
            OldSeg::Deflate { comp, plain } => (comp, plain),
        };
        if pos.checked_add(len).is_none_or(|e| e > src.len) {
            return Err(Error::corrupt(
                C,
                format!(
                    "a source segment of {len} bytes at {pos}, past the {}-byte source",
                    src.len
                ),
            ));
        }
        match seg {
            OldSeg::Raw(_) => {
                let mut left = len;
                while left > 0 {
                    let k = left.min(IO_BUF as u64) as usize;
                    src.read_exact_at(&mut st.obuf[..k], pos + (len - left))?;
                    w.write_all(&st.obuf[..k]).map_err(put_err)?;
                    left -= k as u64;
                }
            }
            OldSeg::Deflate { comp, .. } => {
                let mut inf = Inflater::new();
                let mut left = comp;
                let mut made = 0u64;
                let mut fault: Option<Error> = None;
                while left > 0 && !inf.done() {
                    let k = left.min(IO_BUF as u64) as usize;
                    src.read_exact_at(&mut st.obuf[..k], pos + (comp - left))?;
                    let used = inf
                        .feed(&st.obuf[..k], &mut |b| {
                            made += b.len() as u64;
                            if made > plain {
                                return false;
                            }
                            match w.write_all(b) {
                                Ok(()) => true,
                                Err(e) => {
                                    fault = Some(put_err(e));
                                    false
                                }
                            }
                        })
                        .map_err(|why| {
                            fault.take().unwrap_or_else(|| {
                                Error::corrupt(
                                    C,
                                    format!(
                                        "the deflate stream at source offset {pos}: {}",
                                        if made > plain {
                                            format!("inflates past its {plain} bytes")
                                        } else {
                                            why.to_string()
                                        }
                                    ),
                                )
                            })
                        })?;
                    left -= used as u64;
                    if used < k && !inf.done() {
                        break;
                    }
                }
                if !inf.done() || left != 0 || made != plain {
                    return Err(Error::corrupt(
                        C,
                        format!(
                            "the deflate stream at source offset {pos} is not {comp} bytes that \
                             inflate to {plain}"
                        ),
                    ));
                }
            }
        }
        pos += len;
        expanded = expanded
            .checked_add(plain)
            .ok_or_else(|| Error::corrupt(C, "expanded source length overflows"))?;
    }
    if pos != src.len {
        return Err(Error::corrupt(
            C,
            format!(
                "the source recipe covers {pos} of the source's {} bytes",
                src.len
            ),
        ));
    }
    w.flush().map_err(put_err)?;
    drop(w);
    let recipe = NewRecipe::read(&mut || need_varint(&mut st.ctrl, C), size)?;
    let file = scratch
        .file
        .try_clone()
        .map_err(|e| Error::io(&shown, "open", e))?;
    let exp = Source::new(vec![(file, expanded, shown)])?;
    let mut rec = Recomposer {
        segs: &recipe.segs,
        at: 0,
        left: 0,
        made: 0,
        deflater: None,
        out,
        fault: None,
    };
    let r = apply_delta(st, &exp, recipe.expanded, 0, &mut rec).and_then(|()| rec.finish());
    match (r, rec.fault.take()) {
        (_, Some(f)) => Err(f),
        (r, None) => r,
    }
}

/// The writer a transform-2 file's expanded bytes go to: raw segments pass through, deflate
/// segments are compressed again with their parameters and must come out at their stated
/// length.
struct Recomposer<'a, 'o> {
    segs: &'a [NewSeg],
    /// Index of the current segment.
    at: usize,
    /// Expanded bytes the current segment still takes (0: not started).
    left: u64,
    /// Compressed bytes the current deflate segment has made.
    made: u64,
    deflater: Option<Deflater>,
    out: &'o mut dyn Write,
    /// Why writing stopped, when the cause is the patch rather than the output.
    fault: Option<Error>,
}

impl Recomposer<'_, '_> {
    fn fail(&mut self, e: Error) -> std::io::Error {
        self.fault = Some(e);
        std::io::Error::other("the target recipe failed")
    }

    /// Deflate `data` (or end the stream) into `out`, counting against `comp`.
    fn deflate(&mut self, data: Option<&[u8]>, comp: u64) -> std::io::Result<()> {
        let mut io_err = None;
        let mut made = self.made;
        let out = &mut *self.out;
        let d = self
            .deflater
            .as_mut()
            .expect("a deflate segment has its deflater");
        let mut put = |b: &[u8]| {
            made += b.len() as u64;
            if made > comp {
                return false;
            }
            match out.write_all(b) {
                Ok(()) => true,
                Err(e) => {
                    io_err = Some(e);
                    false
                }
            }
        };
        let ok = match data {
            Some(b) => d.push(b, &mut put),
            None => d.finish(&mut put),
        };
        self.made = made;
        if let Some(e) = io_err {
            return Err(e);
        }
        if !ok {
            let at = self.at;
            return Err(self.fail(Error::corrupt(
                "control stream",
                format!("target segment {at} does not deflate to its {comp} bytes"),
            )));
        }
        Ok(())
    }

    /// End the current segment.
    fn close(&mut self) -> std::io::Result<()> {
        if let Some(NewSeg::Deflate { comp, .. }) = self.segs.get(self.at).copied() {
            self.deflate(None, comp)?;
            self.deflater = None;
            if self.made != comp {
                let (at, made) = (self.at, self.made);
                return Err(self.fail(Error::corrupt(
                    "control stream",
                    format!("target segment {at} deflates to {made} bytes, not {comp}"),
                )));
            }
        }
        self.at += 1;
        Ok(())
    }

    /// Start the segment at `self.at` (the caller knows there is one).
    fn open(&mut self) -> std::io::Result<()> {
        match self.segs[self.at] {
            NewSeg::Raw(n) => self.left = n,
            NewSeg::Deflate { plain, params, .. } => {
                let Some(d) = Deflater::new(params) else {
                    return Err(self.fail(Error::LimitExceeded {
                        what: "deflate memory",
                        needed: crate::codec::zlib::DEFLATE_MEMORY + 1,
                        limit: crate::codec::zlib::DEFLATE_MEMORY,
                    }));
                };
                self.deflater = Some(d);
                self.made = 0;
                self.left = plain;
            }
        }
        Ok(())
    }

    /// Close every segment left (all must be complete: the controls made exactly the expanded
    /// length the recipe takes, so only empty deflate segments can remain).
    fn finish(&mut self) -> Result<()> {
        let mut step = || -> std::io::Result<()> {
            while self.at < self.segs.len() {
                if self.deflater.is_none() {
                    self.open()?;
                }
                if self.left > 0 {
                    return Err(std::io::Error::other("short"));
                }
                self.close()?;
            }
            Ok(())
        };
        match step() {
            Ok(()) => Ok(()),
            Err(e) => Err(self.fault.take().unwrap_or_else(|| {
                if e.to_string() == "short" {
                    Error::corrupt("control stream", "the target recipe is not used up")
                } else {
                    Error::io(Path::new(OUTPUT), "write", e)
                }
            })),
        }
    }
}

impl Write for Recomposer<'_, '_> {
    fn write(&mut self, mut buf: &[u8]) -> std::io::Result<usize> {
        let n = buf.len();
        while !buf.is_empty() {
            if self.at >= self.segs.len() {
                return Err(self.fail(Error::corrupt(
                    "control stream",
                    "the controls make more than the target recipe takes",
                )));
            }
            if self.left == 0 && self.deflater.is_none() {
                self.open()?;
            }
            let k = (self.left.min(buf.len() as u64)) as usize;
            match self.segs[self.at] {
                NewSeg::Raw(_) => self.out.write_all(&buf[..k])?,
                NewSeg::Deflate { comp, .. } => self.deflate(Some(&buf[..k]), comp)?,
            }
            buf = &buf[k..];
            self.left -= k as u64;
            if self.left == 0 {
                self.close()?;
            }
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}
