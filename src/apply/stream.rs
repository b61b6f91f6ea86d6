//! Decoding the patch's streams: the control, diff and extra streams, and the copies and
//! delta reconstruction that consume them.

#[cfg(feature = "inflate")]
use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};

use crate::codec::decode::{expect_end, need_varint, read_full, read_retry, DiffSource, Stream};
#[cfg(feature = "inflate")]
use crate::codec::tokens;
#[cfg(feature = "inflate")]
use crate::codec::zlib::{Deflater, Inflater, MinizDeflater, Recompress};
use crate::error::{Error, Result};
#[cfg(feature = "inflate")]
use crate::format::OldSeg;
use crate::format::{
    read_old_count, read_old_seg, Control, NewRecipe, NewSeg, Refs, Scan, CODEC_RAW,
    FLAG_DIFF_RUNS, LOOK_AHEAD, MAX_CONTROL_BLOCK, TRANSFORM_INFLATE, TRANSFORM_REFS,
};
use crate::readat::{read_at_most, ReadAt, Section};
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
                // On this thread, read as the spawned thread reads (see `Chunked`).
                _ if len > 0 && codec != CODEC_RAW => Ok(Stream::Chunked(Box::new(
                    crate::codec::decode::Chunked::new(
                        Stream::open(&*p.src, pos, len, codec, h.window_log, what)?,
                        PIPE_CHUNK,
                    ),
                ))),
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
        f: &dyn ReadAt,
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
fn copy_file(
    f: &dyn ReadAt,
    p: &Path,
    size: u64,
    out: &mut dyn Write,
    buf: &mut [u8],
) -> Result<()> {
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
pub(crate) struct Source<'a> {
    parts: Vec<(Box<dyn ReadAt + 'a>, u64, u64, PathBuf)>, // (file, start, len, path)
    len: u64,
}

impl<'a> Source<'a> {
    pub(super) fn new(files: Vec<(Box<dyn ReadAt + 'a>, u64, PathBuf)>) -> Result<Source<'a>> {
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
            let got = read_at_most(&**f, &mut buf[done..done + k], off)
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
    src: &Source<'_>,
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

#[cfg(feature = "inflate")]
use recompose::apply_inflate;

/// Without the `inflate` feature, a transform-2 file is refused by name.
#[cfg(not(feature = "inflate"))]
fn apply_inflate(_: &mut Streams<'_>, _: &Source<'_>, _: u64, _: &mut dyn Write) -> Result<()> {
    Err(Error::NotBuiltIn {
        what: "archive patches (delta transform 2)",
        feature: "inflate",
    })
}

#[cfg(feature = "inflate")]
mod recompose {
    use super::*;

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
                std::fs::remove_file(&path)
                    .map_err(|e| Error::io(&path, "unlink scratch file", e))?;
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
    pub(super) fn apply_inflate(
        st: &mut Streams<'_>,
        src: &Source<'_>,
        size: u64,
        out: &mut dyn Write,
    ) -> Result<()> {
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
        // Held for the target recipe's copy runs: at most MAX_SEGMENTS, set aside in
        // INFLATE_MEMORY_TOTAL.
        let mut held = Vec::with_capacity(n);
        for _ in 0..n {
            let seg = read_old_seg(&mut || need_varint(&mut st.ctrl, C))?;
            if seg == OldSeg::Inflate {
                // Kind 3: inflate it to learn its lengths, at most to the source's end.
                let room = src.len.saturating_sub(pos);
                let (comp, plain) = inflate_found(&mut st.obuf, src, pos, room, &mut w)?;
                expanded = expanded
                    .checked_add(plain)
                    .ok_or_else(|| Error::corrupt(C, "expanded source length overflows"))?;
                pos += comp;
                held.push(OldSeg::Deflate { comp, plain });
                continue;
            }
            if let OldSeg::Header { before, .. } = seg {
                // Kind 4: raw bytes, then a zip local header whose length its own bytes give.
                let len = zip_header_end(src, pos, before)?;
                copy_raw(&mut st.obuf, src, pos, len, &mut w)?;
                expanded = expanded
                    .checked_add(len)
                    .ok_or_else(|| Error::corrupt(C, "expanded source length overflows"))?;
                pos += len;
                held.push(OldSeg::Raw(len));
                continue;
            }
            held.push(seg);
            let (len, plain, made) = match seg {
                OldSeg::Inflate | OldSeg::Header { .. } => unreachable!("resolved above"),
                OldSeg::Raw(n) => (n, n, Some(n)),
                OldSeg::Deflate { comp, plain } => (comp, plain, Some(plain)),
                OldSeg::Tokens {
                    comp,
                    plain,
                    structure,
                } => (comp, plain, structure.checked_add(plain)),
            };
            let made = made.ok_or_else(|| Error::corrupt(C, "expanded source length overflows"))?;
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
                OldSeg::Raw(_) => copy_raw(&mut st.obuf, src, pos, len, &mut w)?,
                OldSeg::Deflate { comp, .. } => {
                    inflate_into(&mut st.obuf, src, pos, comp, plain, &mut w)?
                }
                OldSeg::Inflate | OldSeg::Header { .. } => unreachable!("resolved above"),
                OldSeg::Tokens {
                    comp, structure, ..
                } => {
                    // The structure first (section 4.3.1), then the plain bytes.
                    let mut input = SrcRange {
                        src,
                        pos,
                        end: pos + comp,
                        fault: None,
                    };
                    let mut wrote = 0u64;
                    let mut put_fault = None;
                    let r = tokens::parse(&mut input, comp, plain, &mut |b| {
                        wrote += b.len() as u64;
                        if wrote > structure {
                            return Err(std::io::Error::other("structure too long"));
                        }
                        w.write_all(b).inspect_err(|e| {
                            put_fault = Some(std::io::Error::new(e.kind(), e.to_string()))
                        })
                    });
                    let parsed = r.map_err(|f| {
                        if let Some(e) = input.fault.take() {
                            return e;
                        }
                        if let Some(e) = put_fault.take() {
                            return put_err(e);
                        }
                        let why = match f {
                            _ if wrote > structure => {
                                format!("its structure is longer than {structure} bytes")
                            }
                            tokens::Fault::Bad(why) => why,
                            tokens::Fault::Io(e) => e.to_string(),
                        };
                        Error::corrupt(
                            C,
                            format!("the deflate stream at source offset {pos}: {why}"),
                        )
                    })?;
                    let want = tokens::Parsed {
                        comp,
                        plain,
                        structure,
                    };
                    if parsed != want {
                        return Err(Error::corrupt(
                            C,
                            format!(
                                "the deflate stream at source offset {pos} is {parsed:?}, the \
                             recipe says {want:?}"
                            ),
                        ));
                    }
                    inflate_into(&mut st.obuf, src, pos, comp, plain, &mut w)?;
                }
            }
            pos += len;
            expanded = expanded
                .checked_add(made)
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
        let recipe = NewRecipe::read(&mut || need_varint(&mut st.ctrl, C), size, &held)?;
        drop(held);
        if !recipe.known {
            return Err(Error::corrupt(
                C,
                "a target segment's lengths are not known",
            ));
        }
        let file = scratch
            .file
            .try_clone()
            .map_err(|e| Error::io(&shown, "open", e))?;
        let exp = Source::new(vec![(Box::new(file), expanded, shown)])?;
        let dir = st.scratch.clone();
        let mut rec = Recomposer::new(&recipe.segs, &dir, out);
        let r = apply_delta(st, &exp, recipe.expanded, 0, &mut rec).and_then(|()| rec.finish());
        match (r, rec.fault.take()) {
            (_, Some(f)) => Err(f),
            (r, None) => r,
        }
    }

    /// A range of the source as a reader (its read errors are kept in `fault`).
    struct SrcRange<'s> {
        src: &'s Source<'s>,
        pos: u64,
        end: u64,
        fault: Option<Error>,
    }

    impl Read for SrcRange<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let k = (self.end - self.pos).min(buf.len() as u64) as usize;
            if k == 0 {
                return Ok(0);
            }
            if let Err(e) = self.src.read_exact_at(&mut buf[..k], self.pos) {
                self.fault = Some(e);
                return Err(std::io::Error::other("source read failed"));
            }
            self.pos += k as u64;
            Ok(k)
        }
    }

    /// Copy `len` bytes at `pos` of `src` into `w` as they are.
    fn copy_raw(
        obuf: &mut [u8],
        src: &Source<'_>,
        pos: u64,
        len: u64,
        w: &mut dyn Write,
    ) -> Result<()> {
        let shown = Path::new("(expanded source)");
        let mut left = len;
        while left > 0 {
            let k = left.min(IO_BUF as u64) as usize;
            src.read_exact_at(&mut obuf[..k], pos + (len - left))?;
            w.write_all(&obuf[..k])
                .map_err(|e| Error::io(shown, "write", e))?;
            left -= k as u64;
        }
        Ok(())
    }

    /// The length of a source segment of kind 4 at `pos`: `before` bytes, then the zip local
    /// file header there (its signature checked, its length `30 + name + extra` read from it),
    /// all within the source.
    fn zip_header_end(src: &Source<'_>, pos: u64, before: u64) -> Result<u64> {
        const C: &str = "control stream";
        let at = pos
            .checked_add(before)
            .filter(|&a| a.checked_add(30).is_some_and(|e| e <= src.len));
        let Some(at) = at else {
            return Err(Error::corrupt(
                C,
                format!(
                "a zip header {before} bytes after source offset {pos}, past the {}-byte source",
                src.len
            ),
            ));
        };
        let mut h = [0u8; 30];
        src.read_exact_at(&mut h, at)?;
        if h[..4] != [0x50, 0x4B, 3, 4] {
            return Err(Error::corrupt(
                C,
                format!("no zip local header at source offset {at}"),
            ));
        }
        let len = 30
            + u64::from(u16::from_le_bytes([h[26], h[27]]))
            + u64::from(u16::from_le_bytes([h[28], h[29]]));
        if at + len > src.len {
            return Err(Error::corrupt(
                C,
                format!("the zip local header at source offset {at} runs past the source"),
            ));
        }
        Ok(before + len)
    }

    /// Inflate the raw deflate stream of exactly `comp` bytes at `pos` of `src` into `w`; it must
    /// inflate to exactly `plain` bytes.
    fn inflate_into(
        obuf: &mut [u8],
        src: &Source<'_>,
        pos: u64,
        comp: u64,
        plain: u64,
        w: &mut dyn Write,
    ) -> Result<()> {
        const C: &str = "control stream";
        let (c, p) = inflate_at(obuf, src, pos, comp, plain, w)?;
        if c != comp || p != plain {
            return Err(Error::corrupt(
                C,
                format!(
                "the deflate stream at source offset {pos} is not {comp} bytes that inflate to \
                 {plain}"
            ),
            ));
        }
        Ok(())
    }

    /// Inflate the raw deflate stream at `pos` of `src` (source kind 3), which must end within
    /// `room` bytes and inflate to at most [`crate::format::MAX_RATIO`] times its length, into
    /// `w`: its compressed and plain lengths.
    fn inflate_found(
        obuf: &mut [u8],
        src: &Source<'_>,
        pos: u64,
        room: u64,
        w: &mut dyn Write,
    ) -> Result<(u64, u64)> {
        const C: &str = "control stream";
        let most = room.saturating_mul(crate::format::MAX_RATIO);
        let (comp, plain) = inflate_at(obuf, src, pos, room, most, w)?;
        if plain > comp.saturating_mul(crate::format::MAX_RATIO) {
            return Err(Error::corrupt(
                C,
                format!(
                    "the {comp}-byte deflate stream at source offset {pos} inflates to {plain}"
                ),
            ));
        }
        Ok((comp, plain))
    }

    /// Inflate the raw deflate stream at `pos` of `src`, which must end (with its final block)
    /// within `comp` bytes and inflate to at most `plain`, into `w`: the bytes it took and made.
    fn inflate_at(
        obuf: &mut [u8],
        src: &Source<'_>,
        pos: u64,
        comp: u64,
        plain: u64,
        w: &mut dyn Write,
    ) -> Result<(u64, u64)> {
        const C: &str = "control stream";
        let shown = Path::new("(expanded source)");
        let mut inf = Inflater::new();
        let mut left = comp;
        let mut made = 0u64;
        let mut fault: Option<Error> = None;
        while left > 0 && !inf.done() {
            let k = left.min(IO_BUF as u64) as usize;
            src.read_exact_at(&mut obuf[..k], pos + (comp - left))?;
            let used = inf
                .feed(&obuf[..k], &mut |b| {
                    made += b.len() as u64;
                    if made > plain {
                        return false;
                    }
                    match w.write_all(b) {
                        Ok(()) => true,
                        Err(e) => {
                            fault = Some(Error::io(shown, "write", e));
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
                                    format!("inflates past {plain} bytes")
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
        if !inf.done() {
            return Err(Error::corrupt(
                C,
                format!(
                    "the deflate stream at source offset {pos} does not end within {comp} bytes"
                ),
            ));
        }
        Ok((comp - left, made))
    }

    /// The writer a transform-2 file's expanded bytes go to: raw segments pass through, deflate
    /// segments are compressed again with their parameters, token segments (section 4.3.1) have
    /// their structure stored in a second [`Scratch`] file and are then encoded from it and their
    /// plain bytes; every stream must come out at its stated length.
    struct Recomposer<'a, 'o> {
        segs: &'a [NewSeg],
        /// Index of the current segment.
        at: usize,
        /// Whether the current segment was opened.
        open: bool,
        /// Expanded plain (or raw) bytes the current segment still takes.
        left: u64,
        /// Structure bytes the current token segment still takes (before its plain bytes).
        s_left: u64,
        /// Compressed bytes the current deflate or token segment has made.
        made: u64,
        deflater: Option<Recompress>,
        /// Token segments: where their structure is kept, the writer filling it, the encoder
        /// reading it back.
        scratch_dir: &'a Path,
        structure: Option<Scratch>,
        s_out: Option<std::io::BufWriter<File>>,
        encoder: Option<tokens::Encoder<BufReader<std::io::Take<File>>>>,
        out: &'o mut dyn Write,
        /// Why writing stopped, when the cause is the patch rather than the output.
        fault: Option<Error>,
    }

    /// Buffers of the token structure's writer and reader.
    const STRUCTURE_BUF: usize = 16 << 10;

    impl<'a, 'o> Recomposer<'a, 'o> {
        fn new(segs: &'a [NewSeg], scratch_dir: &'a Path, out: &'o mut dyn Write) -> Self {
            Recomposer {
                segs,
                at: 0,
                open: false,
                left: 0,
                s_left: 0,
                made: 0,
                deflater: None,
                scratch_dir,
                structure: None,
                s_out: None,
                encoder: None,
                out,
                fault: None,
            }
        }

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

        /// The structure of the current token segment is stored: read it back into an encoder.
        fn start_encoder(&mut self, structure: u64) -> std::io::Result<()> {
            use std::io::Seek;
            let shown = Path::new("(token structure)");
            let r = (|| -> Result<_> {
                if let Some(mut w) = self.s_out.take() {
                    w.flush().map_err(|e| Error::io(shown, "write", e))?;
                }
                let s = self
                    .structure
                    .as_ref()
                    .expect("opened with its scratch file");
                let mut f = s
                    .file
                    .try_clone()
                    .map_err(|e| Error::io(shown, "open", e))?;
                f.seek(std::io::SeekFrom::Start(0))
                    .map_err(|e| Error::io(shown, "seek", e))?;
                Ok(f)
            })();
            match r {
                Ok(f) => {
                    let rd = BufReader::with_capacity(STRUCTURE_BUF, f.take(structure));
                    self.encoder = Some(tokens::Encoder::new(rd, structure));
                    Ok(())
                }
                Err(e) => Err(self.fail(e)),
            }
        }

        /// Encode `data` (or end the stream) into `out`, counting against `comp`.
        fn encode(&mut self, data: Option<&[u8]>, comp: u64) -> std::io::Result<()> {
            let mut out_err = None;
            let mut over = false;
            let mut made = self.made;
            let out = &mut *self.out;
            let e = self
                .encoder
                .as_mut()
                .expect("a token segment has its encoder");
            let mut put = |b: &[u8]| -> std::io::Result<()> {
                made += b.len() as u64;
                if made > comp {
                    over = true;
                    return Err(std::io::Error::other("over"));
                }
                out.write_all(b).inspect_err(|er| {
                    out_err = Some(std::io::Error::new(er.kind(), er.to_string()));
                })
            };
            let r = match data {
                Some(b) => e.push(b, &mut put),
                None => e.finish(&mut put).and_then(|n| {
                    if n == comp {
                        Ok(())
                    } else {
                        Err(tokens::Fault::Bad(format!("it encodes to {n} bytes")))
                    }
                }),
            };
            self.made = made;
            let at = self.at;
            match r {
                Ok(()) => Ok(()),
                Err(_) if out_err.is_some() => Err(out_err.take().expect("checked")),
                Err(f) => {
                    let why = match f {
                        _ if over => format!("it encodes to more than its {comp} bytes"),
                        tokens::Fault::Bad(why) => why,
                        tokens::Fault::Io(e) => {
                            return Err(self.fail(Error::io(
                                Path::new("(token structure)"),
                                "read",
                                e,
                            )))
                        }
                    };
                    Err(self.fail(Error::corrupt(
                        "control stream",
                        format!("target token segment {at}: {why}"),
                    )))
                }
            }
        }

        /// End the current segment.
        fn close(&mut self) -> std::io::Result<()> {
            match self.segs.get(self.at).copied() {
                Some(NewSeg::Deflate { comp, .. } | NewSeg::Miniz { comp, .. }) => {
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
                Some(NewSeg::Tokens {
                    structure, comp, ..
                }) => {
                    if self.encoder.is_none() {
                        self.start_encoder(structure)?;
                    }
                    self.encode(None, comp)?;
                    self.encoder = None;
                }
                _ => {}
            }
            self.at += 1;
            self.open = false;
            Ok(())
        }

        /// Start the segment at `self.at` (the caller knows there is one).
        fn open(&mut self) -> std::io::Result<()> {
            self.made = 0;
            self.s_left = 0;
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
                    self.deflater = Some(Recompress::Zlib(d));
                    self.left = plain;
                }
                NewSeg::Miniz { plain, level, .. } => {
                    let Some(d) = MinizDeflater::new(level) else {
                        return Err(self.fail(Error::Unsupported {
                            what: "miniz level",
                            value: level.into(),
                        }));
                    };
                    self.deflater = Some(Recompress::Miniz(d));
                    self.left = plain;
                }
                NewSeg::Tokens {
                    structure, plain, ..
                } => {
                    use std::io::Seek;
                    let shown = Path::new("(token structure)");
                    let r = (|| -> Result<std::io::BufWriter<File>> {
                        if self.structure.is_none() {
                            self.structure = Some(Scratch::create(self.scratch_dir)?);
                        }
                        let s = self.structure.as_ref().expect("just made");
                        let mut f = s
                            .file
                            .try_clone()
                            .map_err(|e| Error::io(shown, "open", e))?;
                        f.seek(std::io::SeekFrom::Start(0))
                            .map_err(|e| Error::io(shown, "seek", e))?;
                        Ok(std::io::BufWriter::with_capacity(STRUCTURE_BUF, f))
                    })();
                    match r {
                        Ok(w) => self.s_out = Some(w),
                        Err(e) => return Err(self.fail(e)),
                    }
                    self.s_left = structure;
                    self.left = plain;
                }
            }
            self.open = true;
            Ok(())
        }

        /// Close every segment left (all must be complete: the controls made exactly the expanded
        /// length the recipe takes, so only segments of no expanded bytes can remain).
        fn finish(&mut self) -> Result<()> {
            let r = (|| -> std::io::Result<bool> {
                while self.at < self.segs.len() {
                    if !self.open {
                        self.open()?;
                    }
                    if self.left > 0 || self.s_left > 0 {
                        return Ok(false);
                    }
                    self.close()?;
                }
                Ok(true)
            })();
            match r {
                Ok(true) => Ok(()),
                Ok(false) => Err(Error::corrupt(
                    "control stream",
                    "the target recipe is not used up",
                )),
                Err(e) => Err(self
                    .fault
                    .take()
                    .unwrap_or_else(|| Error::io(Path::new(OUTPUT), "write", e))),
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
                if !self.open {
                    self.open()?;
                }
                let seg = self.segs[self.at];
                if self.s_left > 0 {
                    // A token segment's structure: stored until its plain bytes come.
                    let k = (self.s_left.min(buf.len() as u64)) as usize;
                    let w = self.s_out.as_mut().expect("opened with its writer");
                    if let Err(e) = w.write_all(&buf[..k]) {
                        return Err(self.fail(Error::io(
                            Path::new("(token structure)"),
                            "write",
                            e,
                        )));
                    }
                    buf = &buf[k..];
                    self.s_left -= k as u64;
                    if self.s_left == 0 {
                        if let NewSeg::Tokens { structure, .. } = seg {
                            self.start_encoder(structure)?;
                        }
                    }
                } else {
                    let k = (self.left.min(buf.len() as u64)) as usize;
                    match seg {
                        NewSeg::Raw(_) => self.out.write_all(&buf[..k])?,
                        NewSeg::Deflate { comp, .. } | NewSeg::Miniz { comp, .. } => {
                            self.deflate(Some(&buf[..k]), comp)?
                        }
                        NewSeg::Tokens { comp, .. } => self.encode(Some(&buf[..k]), comp)?,
                    }
                    buf = &buf[k..];
                    self.left -= k as u64;
                }
                if self.left == 0 && self.s_left == 0 {
                    self.close()?;
                }
            }
            Ok(n)
        }

        fn flush(&mut self) -> std::io::Result<()> {
            self.out.flush()
        }
    }
}

// ---------------------------------------------------------------------------------------------
// What the inflate transform's recipes do, for `info`

/// How many of one file's deflate streams a patch makes again by each method (FORMAT.md 4.3):
/// deflated by stock zlib, by miniz, or encoded from a token structure. Streams the file
/// keeps as they are do not show in its recipe.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Remade {
    /// Streams deflated again by stock zlib (target segment kind 1).
    pub zlib: u64,
    /// Streams deflated again by miniz_oxide (kind 3).
    pub miniz: u64,
    /// Streams encoded from their token structure (kind 2).
    pub tokens: u64,
}

impl Patch {
    /// For each modify entry that uses the inflate transform (by its index in the manifest),
    /// how its streams are made again. Reads the control stream through (decoding it, not
    /// OLD: nothing is applied), with every number checked as the applier checks it. `None`
    /// while the manifest is relative and not yet bound to OLD ([`Patch::bind`]).
    pub fn remade_streams(&self) -> Result<Option<Vec<(usize, Remade)>>> {
        const C: &str = "control stream";
        let Some(m) = self.manifest() else {
            return Ok(None);
        };
        let mut st = Streams::open(self, None)?;
        let mut out = Vec::new();
        for (i, e) in m.entries.iter().enumerate() {
            let crate::format::EntryKind::File {
                size,
                op: crate::format::FileOp::Delta { transform, .. },
                ..
            } = &e.kind
            else {
                continue;
            };
            let mut size = *size;
            match *transform {
                TRANSFORM_REFS => {
                    // The source's length only bounds the breakpoints: not checked here.
                    let ctrl = &mut st.ctrl;
                    Refs::decode(|| need_varint(ctrl, C), u64::MAX)?;
                }
                TRANSFORM_INFLATE => {
                    let n = read_old_count(&mut || need_varint(&mut st.ctrl, C))?;
                    let mut held = Vec::with_capacity(n);
                    for _ in 0..n {
                        held.push(read_old_seg(&mut || need_varint(&mut st.ctrl, C))?);
                    }
                    let r = NewRecipe::read(&mut || need_varint(&mut st.ctrl, C), size, &held)?;
                    let mut c = Remade::default();
                    for s in &r.segs {
                        match s {
                            NewSeg::Deflate { .. } => c.zlib += 1,
                            NewSeg::Miniz { .. } => c.miniz += 1,
                            NewSeg::Tokens { .. } => c.tokens += 1,
                            NewSeg::Raw(_) => {}
                        }
                    }
                    out.push((i, c));
                    size = r.expanded;
                }
                _ => {}
            }
            let mut produced = 0u64;
            while produced < size {
                let c = st.next_control()?;
                produced = produced
                    .checked_add(c.diff)
                    .and_then(|p| p.checked_add(c.extra))
                    .ok_or_else(|| Error::corrupt(C, "length overflow"))?;
            }
            if produced != size || st.used != st.block.len() {
                return Err(Error::corrupt(
                    C,
                    format!("the controls of entry {i} do not end with its {size} bytes"),
                ));
            }
        }
        Ok(Some(out))
    }
}
