//! Stream decoders of the apply core: zstd frames, raw LZMA2 streams, bzip2 and stored bytes,
//! each with its memory fixed by the patch header (never by the data), and the expansion of
//! the diff stream's zero-run coding. Each is the inverse of the encoder of the same name in
//! [`super::encode`] (feature `diff`); the round-trip tests there check it.

#[cfg(feature = "lzma")]
use std::io::BufRead;
use std::io::{self, BufReader, Read};
use std::sync::mpsc::{sync_channel, Receiver};

use crate::error::{Error, Result};
use crate::format::{CODEC_BZIP2, CODEC_LZMA2, CODEC_RAW, ZERO_RUN_BLOCK};
use crate::readat::{ReadAt, Section};
use crate::tree::IO_BUF;

pub(crate) type Dec<'a> = zstd::stream::read::Decoder<'static, BufReader<Section<'a>>>;

/// A zstd decoder over a section, capped to `window_log`, reading exactly one frame.
pub(crate) fn decoder(sec: Section<'_>, window_log: u8) -> io::Result<Dec<'_>> {
    let mut d = zstd::stream::read::Decoder::with_buffer(BufReader::with_capacity(32 << 10, sec))?;
    d.window_log_max(u32::from(window_log))?;
    Ok(d.single_frame())
}

pub(crate) fn stream_err(what: &'static str, e: io::Error) -> Error {
    Error::corrupt(what, format!("zstd: {e}"))
}

/// Read exactly `n` bytes of a stream into `out` (growing it as data arrives, never by a
/// declared size), then require the stream to end.
pub(crate) fn read_exact_stream(
    r: &mut impl Read,
    out: &mut Vec<u8>,
    n: usize,
    what: &'static str,
) -> Result<()> {
    let mut buf = vec![0u8; IO_BUF];
    while out.len() < n {
        let want = (n - out.len()).min(buf.len());
        let k = read_retry(r, &mut buf[..want]).map_err(|e| stream_err(what, e))?;
        if k == 0 {
            return Err(Error::corrupt(
                what,
                format!("ends after {} of {n} bytes", out.len()),
            ));
        }
        out.extend_from_slice(&buf[..k]);
    }
    expect_end(r, what)
}

pub(crate) fn read_retry(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match r.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

pub(crate) fn expect_end(r: &mut impl Read, what: &'static str) -> Result<()> {
    let mut b = [0u8; 1];
    match read_retry(r, &mut b) {
        Ok(0) => Ok(()),
        Ok(_) => Err(Error::corrupt(what, "stream is longer than declared")),
        Err(e) => Err(stream_err(what, e)),
    }
}

pub(crate) fn read_full(r: &mut impl Read, buf: &mut [u8], what: &'static str) -> Result<()> {
    let mut got = 0;
    while got < buf.len() {
        let k = read_retry(r, &mut buf[got..]).map_err(|e| stream_err(what, e))?;
        if k == 0 {
            return Err(Error::corrupt(
                what,
                format!("ends {} bytes early", buf.len() - got),
            ));
        }
        got += k;
    }
    Ok(())
}

/// Varint from a byte stream; `Ok(None)` at a clean end of stream.
pub(crate) fn read_varint_stream(r: &mut impl Read, what: &'static str) -> Result<Option<u64>> {
    let mut v: u64 = 0;
    for i in 0..10 {
        let mut b = [0u8; 1];
        let k = read_retry(r, &mut b).map_err(|e| stream_err(what, e))?;
        if k == 0 {
            if i == 0 {
                return Ok(None);
            }
            return Err(Error::corrupt(what, "ends inside a varint"));
        }
        let part = u64::from(b[0] & 0x7f);
        if i == 9 && part > 1 {
            return Err(Error::corrupt(what, "varint overflows"));
        }
        v |= part << (7 * i);
        if b[0] & 0x80 == 0 {
            return Ok(Some(v));
        }
    }
    Err(Error::corrupt(what, "varint longer than 10 bytes"))
}

pub(crate) fn need_varint(r: &mut impl Read, what: &'static str) -> Result<u64> {
    read_varint_stream(r, what)?.ok_or_else(|| Error::corrupt(what, "ends early"))
}

/// The diff stream as the controls consume it: the decoded bytes themselves, or the expansion
/// of their zero-run coding (format section 4.1).
pub(crate) enum DiffSource<'a> {
    Plain(Stream<'a>),
    Runs(ZeroRuns<'a>),
}

const DIFF: &str = "diff stream";

impl<'a> DiffSource<'a> {
    /// The diff stream over `stream`, zero-run coded or not (header flag bit 3).
    pub(crate) fn new(stream: Stream<'a>, zero_runs: bool) -> DiffSource<'a> {
        if zero_runs {
            DiffSource::Runs(ZeroRuns {
                inner: BufReader::with_capacity(4096, stream),
                pairs: Vec::new(),
                next: 0,
                zeros: 0,
                lits: 0,
            })
        } else {
            DiffSource::Plain(stream)
        }
    }

    /// Add the next `buf.len()` diff bytes to `buf` (mod 256), using `scratch` (at least as
    /// long as `buf`) for the bytes that are not zero runs: zero runs cost nothing.
    pub(crate) fn add_to(&mut self, buf: &mut [u8], scratch: &mut [u8]) -> Result<()> {
        match self {
            DiffSource::Plain(s) => {
                let d = &mut scratch[..buf.len()];
                read_full(s, d, DIFF)?;
                add(buf, d);
                Ok(())
            }
            DiffSource::Runs(z) => z.add_to(buf, scratch),
        }
    }

    /// The stream must hold nothing more.
    pub(crate) fn expect_end(&mut self) -> Result<()> {
        match self {
            DiffSource::Plain(s) => expect_end(s, DIFF),
            DiffSource::Runs(z) => {
                if z.zeros != 0 || z.lits != 0 || z.next != z.pairs.len() || z.next_block()? {
                    return Err(Error::corrupt(DIFF, "stream is longer than declared"));
                }
                Ok(())
            }
        }
    }
}

/// Expands the zero-run coding: per block, the (zero run, nonzero run) pairs are read first
/// (at most [`ZERO_RUN_BLOCK`] of them: 512 KiB, counted in [`crate::memory_needed`]), then the
/// nonzero bytes are streamed through as they are consumed.
pub(crate) struct ZeroRuns<'a> {
    inner: BufReader<Stream<'a>>,
    pairs: Vec<(u32, u32)>,
    next: usize,
    zeros: u64,
    lits: u64,
}

impl ZeroRuns<'_> {
    /// Read the next block's pairs; `false` at a clean end of the stream.
    fn next_block(&mut self) -> Result<bool> {
        let Some(n) = read_varint_stream(&mut self.inner, DIFF)? else {
            return Ok(false);
        };
        let max = ZERO_RUN_BLOCK as u64;
        if n == 0 || n > max {
            return Err(Error::corrupt(
                DIFF,
                format!("zero-run block of {n} pairs (1..={max})"),
            ));
        }
        self.pairs.clear();
        self.next = 0;
        let mut total = 0u64;
        for _ in 0..n {
            let z = need_varint(&mut self.inner, DIFF)?;
            let l = need_varint(&mut self.inner, DIFF)?;
            // Each is checked before the sum, so nothing overflows.
            total = total
                .saturating_add(z.min(max + 1))
                .saturating_add(l.min(max + 1));
            if total > max {
                return Err(Error::corrupt(
                    DIFF,
                    format!("zero-run block describes more than {max} bytes"),
                ));
            }
            self.pairs.push((z as u32, l as u32));
        }
        if total == 0 {
            return Err(Error::corrupt(DIFF, "empty zero-run block"));
        }
        Ok(true)
    }

    /// [`DiffSource::add_to`] over the expansion: zero runs leave `buf` as it is.
    fn add_to(&mut self, buf: &mut [u8], scratch: &mut [u8]) -> Result<()> {
        let mut got = 0;
        while got < buf.len() {
            let want = (buf.len() - got) as u64;
            if self.zeros > 0 {
                let k = self.zeros.min(want) as usize;
                self.zeros -= k as u64;
                got += k;
            } else if self.lits > 0 {
                let k = self.lits.min(want) as usize;
                read_full(&mut self.inner, &mut scratch[..k], DIFF)?;
                add(&mut buf[got..got + k], &scratch[..k]);
                self.lits -= k as u64;
                got += k;
            } else if let Some(&(z, l)) = self.pairs.get(self.next) {
                self.next += 1;
                (self.zeros, self.lits) = (z.into(), l.into());
            } else if !self.next_block()? {
                return Err(Error::corrupt(
                    DIFF,
                    format!("ends {} bytes early", buf.len() - got),
                ));
            }
        }
        Ok(())
    }
}

/// `buf[i] += d[i]` (mod 256).
fn add(buf: &mut [u8], d: &[u8]) {
    for (o, x) in buf.iter_mut().zip(d) {
        *o = o.wrapping_add(*x);
    }
}

/// One solid stream: stored raw, concatenated zstd frames, or concatenated raw LZMA2 streams;
/// or any of them decoded on a thread of its own ([`Stream::spawn`]).
pub(crate) enum Stream<'a> {
    Raw(Section<'a>),
    Zstd(Box<Dec<'a>>),
    #[cfg(feature = "lzma")]
    Lzma(Box<MultiLzma<'a>>),
    #[cfg(feature = "bzip2")]
    Bzip2(Box<bzip2::bufread::MultiBzDecoder<BufReader<Section<'a>>>>),
    Piped(Box<Piped>),
    Chunked(Box<Chunked<'a>>),
}

/// A stream decoded through chunk-sized fills, on the applying thread or (its fills handed
/// over) on the thread of [`Stream::spawn`]: the decoder sees the same output buffers either way, so a
/// patch is accepted or refused alike, with the same error (zstd decodes a frame whose whole
/// content fits the output buffer in one pass, before its window check: with other read sizes
/// the same frame was accepted on a thread and refused without one; found by the
/// `apply_untrusted` fuzz target). One chunk buffer (32 KiB) per coded stream, within the
/// I/O allowance of the memory formula.
pub(crate) struct Chunked<'a> {
    inner: Stream<'a>,
    buf: Vec<u8>,
    at: usize,
    end: usize,
    /// No more fills: the stream ended, or `err` is due once `buf` is read.
    done: bool,
    err: Option<io::Error>,
}

impl<'a> Chunked<'a> {
    pub(crate) fn new(inner: Stream<'a>, chunk: usize) -> Chunked<'a> {
        Chunked {
            inner,
            buf: vec![0; chunk],
            at: 0,
            end: 0,
            done: false,
            err: None,
        }
    }

    /// One fill, as one loop of the spawned thread: read until the chunk is full, the stream
    /// ends (a short chunk is the last) or an error (due after the bytes before it).
    fn fill(&mut self) {
        let chunk = self.buf.len();
        let mut got = 0;
        while got < chunk {
            match read_retry(&mut self.inner, &mut self.buf[got..]) {
                Ok(0) => break,
                Ok(k) => got += k,
                Err(e) => {
                    self.err = Some(e);
                    break;
                }
            }
        }
        self.at = 0;
        self.end = got;
        if got < chunk {
            self.done = true;
        }
    }
}

impl Read for Chunked<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.at == self.end {
            if self.done {
                return match self.err.take() {
                    Some(e) => Err(e),
                    None => Ok(0),
                };
            }
            self.fill();
            if self.at == self.end {
                return match self.err.take() {
                    Some(e) => Err(e),
                    None => Ok(0),
                };
            }
        }
        let k = buf.len().min(self.end - self.at);
        buf[..k].copy_from_slice(&self.buf[self.at..self.at + k]);
        self.at += k;
        Ok(k)
    }
}

/// The reading end of a stream decoded on another thread: chunks of at most `chunk` bytes
/// arrive through a channel that holds one, so at most four exist at a time (one being
/// filled, one queued, one being read, one just dropped).
pub(crate) struct Piped {
    rx: Receiver<io::Result<Vec<u8>>>,
    cur: Vec<u8>,
    at: usize,
}

impl Read for Piped {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.at == self.cur.len() {
            match self.rx.recv() {
                Ok(Ok(c)) => (self.cur, self.at) = (c, 0),
                Ok(Err(e)) => return Err(e),
                // The decoding thread sent everything and ended.
                Err(_) => return Ok(0),
            }
        }
        let k = buf.len().min(self.cur.len() - self.at);
        buf[..k].copy_from_slice(&self.cur[self.at..self.at + k]);
        self.at += k;
        Ok(k)
    }
}

/// Decoder for one or more concatenated raw LZMA2 streams: when one ends, the next starts on
/// the bytes left in the same buffer. The dictionary is fixed by the header, never by the data.
#[cfg(feature = "lzma")]
pub(crate) struct MultiLzma<'a> {
    dec: Option<liblzma::bufread::XzDecoder<BufReader<Section<'a>>>>,
    dict: u32,
}

#[cfg(feature = "lzma")]
fn lzma_decoder(dict: u32) -> io::Result<liblzma::stream::Stream> {
    let mut opts = liblzma::stream::LzmaOptions::new_preset(6).map_err(io::Error::other)?;
    opts.dict_size(dict);
    let mut f = liblzma::stream::Filters::new();
    f.lzma2(&opts);
    liblzma::stream::Stream::new_raw_decoder(&f).map_err(io::Error::other)
}

#[cfg(feature = "lzma")]
impl Read for MultiLzma<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let Some(dec) = self.dec.as_mut() else {
                return Ok(0);
            };
            let n = dec.read(buf)?;
            if n > 0 || buf.is_empty() {
                return Ok(n);
            }
            // This LZMA2 stream ended; another may follow.
            let mut inner = self.dec.take().expect("checked above").into_inner();
            if inner.fill_buf()?.is_empty() {
                return Ok(0);
            }
            self.dec = Some(liblzma::bufread::XzDecoder::new_stream(
                inner,
                lzma_decoder(self.dict)?,
            ));
        }
    }
}

impl<'a> Stream<'a> {
    /// [`Stream::open`] on a thread of `scope` that decodes the whole stream ahead of the
    /// reader, in chunks of `chunk` bytes. The thread ends at the stream's end, at its first
    /// error (handed to the reader in order), or when the reader is dropped.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn spawn<'scope>(
        scope: &'scope std::thread::Scope<'scope, '_>,
        file: &'scope (dyn ReadAt + Sync),
        pos: u64,
        len: u64,
        codec: u8,
        window_log: u8,
        what: &'static str,
        chunk: usize,
    ) -> Stream<'a> {
        let (tx, rx) = sync_channel::<io::Result<Vec<u8>>>(1);
        scope.spawn(move || {
            let s = match Stream::open(file, pos, len, codec, window_log, what) {
                Ok(s) => s,
                Err(e) => {
                    let _ = tx.send(Err(io::Error::other(e.to_string())));
                    return;
                }
            };
            // The fills of a stream decoded on the applying thread, handed over one by one.
            let mut c = Chunked::new(s, chunk);
            loop {
                c.fill();
                // The bytes decoded before an error first, as a serial reader has them.
                if c.end > 0 && tx.send(Ok(c.buf[..c.end].to_vec())).is_err() {
                    return;
                }
                if let Some(e) = c.err.take() {
                    let _ = tx.send(Err(e));
                    return;
                }
                if c.done {
                    return;
                }
            }
        });
        Stream::Piped(Box::new(Piped {
            rx,
            cur: Vec::new(),
            at: 0,
        }))
    }

    pub(crate) fn open(
        file: &'a dyn ReadAt,
        pos: u64,
        len: u64,
        codec: u8,
        window_log: u8,
        what: &'static str,
    ) -> Result<Stream<'a>> {
        let sec = Section::new(file, pos, len);
        if codec == CODEC_RAW || len == 0 {
            return Ok(Stream::Raw(sec));
        }
        if codec == CODEC_BZIP2 {
            #[cfg(feature = "bzip2")]
            {
                let r = BufReader::with_capacity(32 << 10, sec);
                return Ok(Stream::Bzip2(Box::new(
                    bzip2::bufread::MultiBzDecoder::new(r),
                )));
            }
            #[cfg(not(feature = "bzip2"))]
            return Err(Error::NotBuiltIn {
                what: "bzip2 streams",
                feature: "bzip2",
            });
        }
        if codec == CODEC_LZMA2 {
            #[cfg(feature = "lzma")]
            {
                let dict = crate::format::lzma_dict_size(window_log);
                let dec = lzma_decoder(dict).map_err(|e| stream_err(what, e))?;
                let r = BufReader::with_capacity(32 << 10, sec);
                return Ok(Stream::Lzma(Box::new(MultiLzma {
                    dec: Some(liblzma::bufread::XzDecoder::new_stream(r, dec)),
                    dict,
                })));
            }
            #[cfg(not(feature = "lzma"))]
            return Err(Error::NotBuiltIn {
                what: "LZMA2 streams",
                feature: "lzma",
            });
        }
        let mut d =
            zstd::stream::read::Decoder::with_buffer(BufReader::with_capacity(32 << 10, sec))
                .map_err(|e| stream_err(what, e))?;
        d.window_log_max(u32::from(window_log))
            .map_err(|e| stream_err(what, e))?;
        Ok(Stream::Zstd(Box::new(d)))
    }
}

impl Read for Stream<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Piped(p) => p.read(buf),
            Stream::Chunked(c) => c.read(buf),
            Stream::Raw(s) => s.read(buf),
            Stream::Zstd(d) => d.read(buf),
            #[cfg(feature = "lzma")]
            Stream::Lzma(d) => d.read(buf),
            #[cfg(feature = "bzip2")]
            Stream::Bzip2(d) => d.read(buf),
        }
    }
}
