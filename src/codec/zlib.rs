//! Raw deflate in both directions, for the inflate transform (FORMAT.md section 4.3).
//!
//! **Deflating** goes through stock zlib (`libz-sys`, built from its bundled source with the
//! `static` and `stock-zlib` features, never the system's library): the transform's promise is
//! that a stream stock zlib made with given parameters is made again byte for byte, and only
//! stock zlib's output is stable across versions and machines (zlib-ng and zlib-rs do not
//! promise it; miniz differs). zlib allocates through [`Deflater`]'s own allocator, which
//! counts every byte against [`DEFLATE_MEMORY`] and refuses past it.
//!
//! **Inflating** uses `miniz_oxide` (pure Rust): any correct inflater gives the same bytes, and
//! the input, while it is part of a verified OLD, is at offsets an untrusted patch names.

#[cfg(feature = "inflate")]
use std::ffi::{c_int, c_uint, c_void};

#[cfg(feature = "inflate")]
use libz_sys as z;
#[cfg(feature = "inflate")]
use miniz_oxide::inflate::stream::InflateState;
#[cfg(feature = "inflate")]
use miniz_oxide::{DataFormat, MZError, MZFlush, MZStatus};

/// Parameters of one raw deflate stream made by zlib's `deflateInit2` (no zlib or gzip wrapper).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DeflateParams {
    /// Compression level, 0..=9.
    pub level: u8,
    /// Window bits, 9..=15 (zlib turns 8 into 9 for raw deflate).
    pub window_bits: u8,
    /// Memory level, 1..=9.
    pub mem_level: u8,
    /// Strategy: 0 default, 1 filtered, 2 Huffman only, 3 RLE, 4 fixed.
    pub strategy: u8,
}

impl DeflateParams {
    /// zlib's defaults: level 6, 32 KiB window, memory level 8, default strategy (what Python's
    /// zipfile and gzip modules, `gzip -6` and most zlib users write).
    #[cfg_attr(not(any(feature = "diff", test)), allow(dead_code))]
    pub const DEFAULT: DeflateParams = DeflateParams {
        level: 6,
        window_bits: 15,
        mem_level: 8,
        strategy: 0,
    };

    /// Whether every field is in zlib's range.
    pub fn valid(&self) -> bool {
        self.level <= 9
            && (9..=15).contains(&self.window_bits)
            && (1..=9).contains(&self.mem_level)
            && self.strategy <= 4
    }
}

/// Most heap one [`Deflater`] may take: zlib needs `2^(window_bits + 2) + 2^(mem_level + 9)`
/// bytes plus about 6 KiB of state (384 KiB + 6 KiB at the largest parameters).
pub const DEFLATE_MEMORY: u64 = 400 << 10;

/// Heap of one [`Inflater`]: miniz_oxide's state with its 32 KiB window, about 43 KiB.
pub const INFLATE_MEMORY: u64 = 48 << 10;

#[cfg(feature = "inflate")]
/// What zlib's allocator hands out: the bytes in use and the cap.
struct Heap {
    used: u64,
}

#[cfg(feature = "inflate")]
const ALIGN: usize = 16;

#[cfg(feature = "inflate")]
unsafe extern "C" fn zalloc(opaque: *mut c_void, items: c_uint, size: c_uint) -> *mut c_void {
    // SAFETY: `opaque` is the `Heap` of the `Deflater` that owns this stream, alive while zlib
    // runs (zlib only calls back during deflateInit2_, deflate and deflateEnd).
    let heap = unsafe { &mut *(opaque as *mut Heap) };
    let Some(n) = (items as usize).checked_mul(size as usize) else {
        return std::ptr::null_mut();
    };
    let total = n + ALIGN;
    if heap.used + total as u64 > DEFLATE_MEMORY {
        return std::ptr::null_mut();
    }
    let Ok(layout) = std::alloc::Layout::from_size_align(total, ALIGN) else {
        return std::ptr::null_mut();
    };
    // SAFETY: `total` is at least ALIGN > 0.
    let p = unsafe { std::alloc::alloc(layout) };
    if p.is_null() {
        return p as *mut c_void;
    }
    heap.used += total as u64;
    // SAFETY: the block holds `total` bytes; its size is kept in the first word, the caller's
    // bytes start ALIGN bytes in (still ALIGN-aligned).
    unsafe {
        (p as *mut usize).write(total);
        p.add(ALIGN) as *mut c_void
    }
}

#[cfg(feature = "inflate")]
unsafe extern "C" fn zfree(opaque: *mut c_void, address: *mut c_void) {
    if address.is_null() {
        return;
    }
    // SAFETY: `address` came from `zalloc` above (ALIGN bytes past a block whose first word is
    // its size), and `opaque` is the owning `Heap`.
    unsafe {
        let heap = &mut *(opaque as *mut Heap);
        let p = (address as *mut u8).sub(ALIGN);
        let total = (p as *const usize).read();
        heap.used -= total as u64;
        std::alloc::dealloc(
            p,
            std::alloc::Layout::from_size_align_unchecked(total, ALIGN),
        );
    }
}

/// Input is handed to zlib in pieces of exactly this many bytes (the last one shorter). zlib's
/// output at level 0 depends on how its input is split, and nothing promises that it does not
/// at other levels: cut the same way on both sides, the output depends only on the
/// parameters and the whole input.
pub const FEED: usize = 64 << 10;

#[cfg(feature = "inflate")]
/// Hand `input` to `run` in pieces of exactly [`FEED`] bytes, keeping the rest in `pending`
/// for the next call (the last, shorter piece goes with the encoder's `finish`). Returns
/// whether every `run` went on.
fn in_pieces(pending: &mut Vec<u8>, mut input: &[u8], run: &mut dyn FnMut(&[u8]) -> bool) -> bool {
    while !input.is_empty() {
        let k = (FEED - pending.len()).min(input.len());
        pending.extend_from_slice(&input[..k]);
        input = &input[k..];
        if pending.len() == FEED {
            let ok = run(pending);
            pending.clear();
            if !ok {
                return false;
            }
        }
    }
    true
}

#[cfg(feature = "inflate")]
/// A raw deflate encoder with fixed [`DeflateParams`]. Output goes to a callback as it is made;
/// it depends only on the parameters and the whole input (see [`FEED`]).
pub struct Deflater {
    // Boxed: zlib keeps pointers to the stream and to the heap counter.
    strm: Box<z::z_stream>,
    // Read by zlib's allocator callbacks through the stream's `opaque` pointer.
    #[cfg_attr(not(test), allow(dead_code))]
    heap: Box<Heap>,
    buf: Vec<u8>,
    pending: Vec<u8>,
}

// SAFETY: the stream's pointers refer to heap blocks owned by this value only.
#[cfg(feature = "inflate")]
unsafe impl Send for Deflater {}

#[cfg(feature = "inflate")]
impl Deflater {
    /// A new stream, or `None` when zlib refuses the parameters or the memory.
    pub fn new(p: DeflateParams) -> Option<Deflater> {
        if !p.valid() {
            return None;
        }
        let mut heap = Box::new(Heap { used: 0 });
        let mut strm = Box::new(z::z_stream {
            next_in: std::ptr::null_mut(),
            avail_in: 0,
            total_in: 0,
            next_out: std::ptr::null_mut(),
            avail_out: 0,
            total_out: 0,
            msg: std::ptr::null_mut(),
            state: std::ptr::null_mut(),
            zalloc,
            zfree,
            opaque: &mut *heap as *mut Heap as *mut c_void,
            data_type: 0,
            adler: 0,
            reserved: 0,
        });
        // SAFETY: `strm` is initialised as zlib asks (allocator set, state null) and boxed,
        // so it does not move while zlib holds its address.
        let r = unsafe {
            z::deflateInit2_(
                &mut *strm,
                c_int::from(p.level),
                z::Z_DEFLATED,
                -c_int::from(p.window_bits),
                c_int::from(p.mem_level),
                c_int::from(p.strategy),
                z::zlibVersion(),
                std::mem::size_of::<z::z_stream>() as c_int,
            )
        };
        if r != z::Z_OK {
            return None;
        }
        Some(Deflater {
            strm,
            heap,
            buf: vec![0u8; 16 << 10],
            pending: Vec::with_capacity(FEED),
        })
    }

    /// Add `input` to the stream, passing output to `out` as zlib makes it; `out` returning
    /// `false` stops (the stream is then unusable). Returns whether it went on.
    pub fn push(&mut self, input: &[u8], out: &mut dyn FnMut(&[u8]) -> bool) -> bool {
        let mut pending = std::mem::take(&mut self.pending);
        let ok = in_pieces(&mut pending, input, &mut |p| self.run(p, false, out));
        self.pending = pending;
        ok
    }

    /// End the stream (see [`Deflater::push`]).
    pub fn finish(&mut self, out: &mut dyn FnMut(&[u8]) -> bool) -> bool {
        let piece = std::mem::take(&mut self.pending);
        self.run(&piece, true, out)
    }

    /// Compress `input`, passing whatever output zlib makes to `out`; with `finish`, end the
    /// stream. `out` returning `false` stops early (the stream is then unusable). Returns
    /// whether zlib and `out` both went on to the end.
    fn run(&mut self, input: &[u8], finish: bool, out: &mut dyn FnMut(&[u8]) -> bool) -> bool {
        let flush = if finish { z::Z_FINISH } else { z::Z_NO_FLUSH };
        let mut rest = input;
        loop {
            let take = rest.len().min(c_uint::MAX as usize);
            self.strm.next_in = rest.as_ptr() as *mut u8;
            self.strm.avail_in = take as c_uint;
            self.strm.next_out = self.buf.as_mut_ptr();
            self.strm.avail_out = self.buf.len() as c_uint;
            let last = take == rest.len();
            // SAFETY: next_in/avail_in describe `rest` (zlib only reads it), next_out/avail_out
            // describe `self.buf`; the stream was initialised by `new`.
            let r =
                unsafe { z::deflate(&mut *self.strm, if last { flush } else { z::Z_NO_FLUSH }) };
            let used = take - self.strm.avail_in as usize;
            rest = &rest[used..];
            let made = self.buf.len() - self.strm.avail_out as usize;
            if made > 0 && !out(&self.buf[..made]) {
                return false;
            }
            match r {
                z::Z_STREAM_END => return true,
                z::Z_OK | z::Z_BUF_ERROR => {}
                _ => return false,
            }
            // Done when all input is taken and zlib had room to spare (without `finish`), or
            // made nothing more (Z_BUF_ERROR: no progress possible).
            if rest.is_empty() && !finish && self.strm.avail_out != 0 {
                return true;
            }
            if made == 0 && used == 0 && r == z::Z_BUF_ERROR {
                return !finish;
            }
        }
    }

    /// Bytes of heap zlib holds for this stream.
    #[cfg(test)]
    pub fn memory(&self) -> u64 {
        self.heap.used
    }
}

#[cfg(feature = "inflate")]
impl Drop for Deflater {
    fn drop(&mut self) {
        // SAFETY: the stream was initialised by `new` and is ended once.
        unsafe {
            z::deflateEnd(&mut *self.strm);
        }
    }
}

#[cfg(feature = "inflate")]
/// A raw deflate decoder fed in pieces.
pub struct Inflater {
    state: Box<InflateState>,
    buf: Vec<u8>,
    done: bool,
}

#[cfg(feature = "inflate")]
impl Default for Inflater {
    fn default() -> Self {
        Inflater::new()
    }
}

#[cfg(feature = "inflate")]
impl Inflater {
    /// A decoder at the start of a stream.
    pub fn new() -> Inflater {
        Inflater {
            state: InflateState::new_boxed(DataFormat::Raw),
            buf: vec![0u8; 16 << 10],
            done: false,
        }
    }

    /// Decode from `input`, passing plain bytes to `out` (which may stop the decoder by
    /// returning `false`). Returns how many bytes of `input` were used (fewer than all only
    /// when the stream ended in it), or `Err` with a reason for invalid data.
    pub fn feed(
        &mut self,
        mut input: &[u8],
        out: &mut dyn FnMut(&[u8]) -> bool,
    ) -> Result<usize, &'static str> {
        let start = input.len();
        while !self.done {
            let r = miniz_oxide::inflate::stream::inflate(
                &mut self.state,
                input,
                &mut self.buf,
                MZFlush::None,
            );
            input = &input[r.bytes_consumed..];
            if r.bytes_written > 0 && !out(&self.buf[..r.bytes_written]) {
                return Err("stopped");
            }
            match r.status {
                Ok(MZStatus::StreamEnd) => self.done = true,
                Ok(_) => {}
                Err(MZError::Buf) => {}
                Err(_) => return Err("invalid deflate data"),
            }
            if !self.done && r.bytes_consumed == 0 && r.bytes_written == 0 {
                break; // needs more input
            }
        }
        Ok(start - input.len())
    }

    /// Whether the final block has ended.
    pub fn done(&self) -> bool {
        self.done
    }
}

#[cfg(all(feature = "inflate", any(test, feature = "diff")))]
/// Inflate the raw deflate stream at the start of `data`, whole: its plain bytes and where it
/// ends, or `None` when `data` does not start with a complete valid stream, or when it would
/// inflate past `max_out` bytes.
pub fn inflate_prefix(data: &[u8], max_out: u64) -> Option<(Vec<u8>, u64)> {
    let mut inf = Inflater::new();
    let mut plain = Vec::new();
    let used = inf
        .feed(data, &mut |b| {
            if plain.len() as u64 + b.len() as u64 > max_out {
                return false;
            }
            plain.extend_from_slice(b);
            true
        })
        .ok()?;
    inf.done().then_some((plain, used as u64))
}

#[cfg(all(test, feature = "inflate"))]
/// Compress `plain` whole with `p`, or `None` if zlib refuses.
pub fn deflate(plain: &[u8], p: DeflateParams) -> Option<Vec<u8>> {
    let mut d = Deflater::new(p)?;
    let mut out = Vec::with_capacity(plain.len() / 2 + 64);
    let mut put = |b: &[u8]| {
        out.extend_from_slice(b);
        true
    };
    (d.push(plain, &mut put) && d.finish(&mut put)).then_some(out)
}

/// Most miniz level: 10 is its "uber" level (more probes than 9).
pub const MINIZ_MAX_LEVEL: u8 = 10;

/// Heap of one [`MinizDeflater`]: miniz_oxide's compressor (its LZ code buffer of 64 KiB, an
/// output buffer of 83.2 KiB, a 32 KiB dictionary with 64 KiB each of hash heads and chain
/// links, and its Huffman tables), its 64 KiB input piece and 16 KiB output piece (392 KiB
/// measured at every level in `tests/manifest_memory.rs`).
pub const MINIZ_MEMORY: u64 = 400 << 10;

// A miniz segment is made in the memory set aside for a zlib deflater and its input piece.
const _: () = assert!(MINIZ_MEMORY <= DEFLATE_MEMORY + FEED as u64);

#[cfg(feature = "inflate")]
/// A raw deflate encoder that makes what miniz_oxide 0.9 makes at a level (0..=10) with its
/// default strategy, the encoder behind Rust's `flate2` and `zip` crates by default (so behind
/// most wheels that maturin writes). Input is handed over in `FEED` pieces, as to
/// `Deflater`: at every level but 1 (miniz's fast path) the output is what one call over
/// the whole input makes; the diff side checks each stream it uses this for.
pub struct MinizDeflater {
    c: Box<miniz_oxide::deflate::core::CompressorOxide>,
    buf: Vec<u8>,
    pending: Vec<u8>,
}

#[cfg(feature = "inflate")]
impl std::fmt::Debug for MinizDeflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MinizDeflater")
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

#[cfg(feature = "inflate")]
impl MinizDeflater {
    /// A new stream, or `None` for a level above [`MINIZ_MAX_LEVEL`].
    pub fn new(level: u8) -> Option<MinizDeflater> {
        use miniz_oxide::deflate::core::{create_comp_flags_from_zip_params, CompressorOxide};
        if level > MINIZ_MAX_LEVEL {
            return None;
        }
        let flags = create_comp_flags_from_zip_params(level.into(), 0, 0);
        Some(MinizDeflater {
            c: Box::new(CompressorOxide::new(flags)),
            buf: vec![0u8; 16 << 10],
            pending: Vec::with_capacity(FEED),
        })
    }

    /// Add `input`, passing output to `out` as it is made; `out` returning `false` stops.
    /// Returns whether it went on.
    pub fn push(&mut self, input: &[u8], out: &mut dyn FnMut(&[u8]) -> bool) -> bool {
        let mut pending = std::mem::take(&mut self.pending);
        let ok = in_pieces(&mut pending, input, &mut |p| self.run(p, false, out));
        self.pending = pending;
        ok
    }

    /// End the stream (see [`MinizDeflater::push`]).
    pub fn finish(&mut self, out: &mut dyn FnMut(&[u8]) -> bool) -> bool {
        let piece = std::mem::take(&mut self.pending);
        self.run(&piece, true, out)
    }

    fn run(&mut self, input: &[u8], finish: bool, out: &mut dyn FnMut(&[u8]) -> bool) -> bool {
        use miniz_oxide::deflate::core::{compress, TDEFLFlush, TDEFLStatus};
        let flush = if finish {
            TDEFLFlush::Finish
        } else {
            TDEFLFlush::None
        };
        let mut rest = input;
        loop {
            let (st, used, made) = compress(&mut self.c, rest, &mut self.buf, flush);
            rest = rest.get(used..).unwrap_or_default();
            if made > 0 && !out(&self.buf[..made]) {
                return false;
            }
            match st {
                TDEFLStatus::Done => return finish,
                TDEFLStatus::Okay => {}
                _ => return false,
            }
            if rest.is_empty() && !finish && made < self.buf.len() {
                return true;
            }
        }
    }
}

#[cfg(feature = "inflate")]
/// One of the encoders a target stream is made again with.
pub enum Recompress {
    /// Stock zlib.
    Zlib(Deflater),
    /// miniz_oxide.
    Miniz(MinizDeflater),
}

#[cfg(feature = "inflate")]
impl Recompress {
    /// See [`Deflater::push`].
    pub fn push(&mut self, input: &[u8], out: &mut dyn FnMut(&[u8]) -> bool) -> bool {
        match self {
            Recompress::Zlib(d) => d.push(input, out),
            Recompress::Miniz(d) => d.push(input, out),
        }
    }

    /// See [`Deflater::finish`].
    pub fn finish(&mut self, out: &mut dyn FnMut(&[u8]) -> bool) -> bool {
        match self {
            Recompress::Zlib(d) => d.finish(out),
            Recompress::Miniz(d) => d.finish(out),
        }
    }
}

/// miniz_oxide at `level` through [`MinizDeflater`], whole.
#[cfg(all(test, feature = "diff"))]
pub fn miniz_deflate(plain: &[u8], level: u8) -> Option<Vec<u8>> {
    let mut d = MinizDeflater::new(level)?;
    let mut out = Vec::new();
    let mut put = |b: &[u8]| {
        out.extend_from_slice(b);
        true
    };
    (d.push(plain, &mut put) && d.finish(&mut put)).then_some(out)
}

#[cfg(all(test, feature = "inflate"))]
mod tests {
    use super::*;

    fn text(n: usize, seed: u64) -> Vec<u8> {
        let words = [
            &b"alpha "[..],
            b"beta ",
            b"gamma\n",
            b"delta ",
            b"{x: 1}, ",
            b"fn f() ",
        ];
        let mut s = seed;
        let mut v = Vec::with_capacity(n);
        while v.len() < n {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            v.extend_from_slice(words[(s % 6) as usize]);
            if s % 11 == 0 {
                v.push((s >> 20) as u8);
            }
        }
        v.truncate(n);
        v
    }

    #[test]
    fn deflate_round_trips_and_ignores_how_input_is_split() {
        let plain = text(300_000, 7);
        for p in [
            DeflateParams::DEFAULT,
            DeflateParams {
                level: 9,
                ..DeflateParams::DEFAULT
            },
            DeflateParams {
                level: 1,
                mem_level: 9,
                ..DeflateParams::DEFAULT
            },
            DeflateParams {
                window_bits: 10,
                strategy: 1,
                ..DeflateParams::DEFAULT
            },
            DeflateParams {
                level: 0,
                ..DeflateParams::DEFAULT
            },
        ] {
            let whole = deflate(&plain, p).unwrap();
            let mut d = Deflater::new(p).unwrap();
            assert!(d.memory() <= DEFLATE_MEMORY);
            let mut pieces = Vec::new();
            let mut put = |b: &[u8]| {
                pieces.extend_from_slice(b);
                true
            };
            for c in plain.chunks(7_777) {
                assert!(d.push(c, &mut put));
            }
            assert!(d.finish(&mut put));
            assert_eq!(whole, pieces, "{p:?}");
            let mut tail = whole.clone();
            tail.extend_from_slice(b"trailing");
            let (back, used) = inflate_prefix(&tail, u64::MAX).unwrap();
            assert_eq!(back, plain);
            assert_eq!(used, whole.len() as u64);
        }
    }

    #[test]
    fn inflate_refuses_bad_and_unfinished_streams() {
        let plain = text(50_000, 3);
        let c = deflate(&plain, DeflateParams::DEFAULT).unwrap();
        assert!(inflate_prefix(&c[..c.len() - 3], u64::MAX).is_none());
        assert!(inflate_prefix(&c, 1000).is_none());
        assert!(inflate_prefix(&[0xFF; 64], u64::MAX).is_none());
        assert!(inflate_prefix(&[], u64::MAX).is_none());
    }

    #[test]
    fn invalid_parameters_are_refused() {
        for p in [
            DeflateParams {
                level: 10,
                ..DeflateParams::DEFAULT
            },
            DeflateParams {
                window_bits: 8,
                ..DeflateParams::DEFAULT
            },
            DeflateParams {
                window_bits: 16,
                ..DeflateParams::DEFAULT
            },
            DeflateParams {
                mem_level: 0,
                ..DeflateParams::DEFAULT
            },
            DeflateParams {
                mem_level: 10,
                ..DeflateParams::DEFAULT
            },
            DeflateParams {
                strategy: 5,
                ..DeflateParams::DEFAULT
            },
        ] {
            assert!(Deflater::new(p).is_none(), "{p:?}");
        }
    }
}

#[cfg(all(test, feature = "diff"))]
mod miniz_tests {
    use super::*;

    #[test]
    fn miniz_in_pieces_makes_what_it_makes_whole() {
        let t = crate::codec::sample_text(700_000, 7);
        let mut differ = Vec::new();
        for level in 0..=MINIZ_MAX_LEVEL {
            for n in [0, 1, 1000, 65_536, 65_537, t.len()] {
                let whole = miniz_oxide::deflate::compress_to_vec(&t[..n], level);
                if miniz_deflate(&t[..n], level).as_ref() != Some(&whole) {
                    differ.push((level, n));
                }
            }
        }
        // Level 1 is miniz's fast path, whose blocks depend on how its input is split: a
        // stream made in other pieces may not be made again (the diff checks each stream).
        assert_eq!(differ, [(1, t.len())]);
        assert!(MinizDeflater::new(11).is_none());
    }
}
