//! The patch format, version 2 (normative spec: `FORMAT.md` at the repository root).
//!
//! Everything here is hand-written: a compact header of fixed bytes and shortest-form LEB128
//! varints, and an explicit bound check for every number read. No serializer decides these
//! bytes; the spec and the golden vectors under `corpus/golden/` do.
//!
//! Layout of a patch file:
//!
//! ```text
//! +----------------------+  offset 0
//! | header (17..75 B)    |  magic, version, flags, window log, codecs, section lengths
//! +----------------------+  header_len
//! | manifest             |  zstd frame, LZMA2 stream or stored (manifest_len bytes)
//! +----------------------+  header_len + manifest_len
//! | control stream       |  ctrl_len bytes
//! | diff stream          |  diff_len bytes
//! | extra stream         |  extra_len bytes
//! +----------------------+
//! | signature (64 B)     |  Ed25519, only when the header's signed flag is set
//! | trailer (32 bytes)   |  blake3 of every byte before it
//! +----------------------+
//! ```
//!
//! Why a variable-length header: on the smallest real updates (a few renamed chunks) the fixed
//! part of a patch is most of it; varint lengths save about 40 bytes there, at no cost to the
//! applier, which reads at most [`MAX_HEADER_LEN`] bytes to decode it.
//!
//! The three streams are solid: they are shared by all files of the bundle, which consume them
//! in manifest order, so small files compress together (as in one tar) while the applier still
//! streams everything with three decoders.
//!
//! This module never imports the diff side: it is part of the apply core.

use crate::error::{Error, Result};

/// The four bytes every patch starts with.
pub const MAGIC: [u8; 4] = *b"BDLT";
/// Major format version written by this build. A reader refuses any other major version.
pub const VERSION_MAJOR: u8 = 2;
/// Minor format version written by this build. Readers accept any minor of their major:
/// a minor bump only adds values (codecs, transforms, ops) that older readers refuse by value.
pub const VERSION_MINOR: u8 = 1;
/// Smallest possible header (every varint one byte).
pub const MIN_HEADER_LEN: usize = 17;
/// Largest possible header: magic, versions, a 5-byte flags varint, window log, codecs and six
/// 10-byte varints. A reader never needs more than this many bytes to decode one.
pub const MAX_HEADER_LEN: usize = 4 + 2 + 5 + 1 + 3 + 6 * 10;
/// Size of the trailer (blake3 of everything before it).
pub const TRAILER_LEN: usize = 32;
/// Size of the signature block of a signed patch (an Ed25519 signature).
pub const SIGNATURE_LEN: usize = 64;
/// Header flag: the bundle is a directory tree (else a single file).
pub const FLAG_DIRECTORY: u32 = 1;
/// Header flag: the manifest is one raw LZMA2 stream (dictionary as for [`CODEC_LZMA2`])
/// rather than a zstd frame. Irrelevant when the manifest is stored as it is.
pub const FLAG_MANIFEST_LZMA: u32 = 2;
/// Header flag: a [`SIGNATURE_LEN`]-byte Ed25519 signature precedes the trailer.
pub const FLAG_SIGNED: u32 = 4;
/// Header flag: the diff stream, once decoded by its codec, is in zero-run coding (format
/// section 4.1), which the applier expands as it reads.
pub const FLAG_DIFF_RUNS: u32 = 8;
/// Header flag (minor 1): the manifest carries [`BaseTags`], short per-entry hashes of the base
/// that let the applier name the first old file that differs. Directory bundles only.
pub const FLAG_BASE_TAGS: u32 = 16;
/// Every flag this version defines.
pub const KNOWN_FLAGS: u32 =
    FLAG_DIRECTORY | FLAG_MANIFEST_LZMA | FLAG_SIGNED | FLAG_DIFF_RUNS | FLAG_BASE_TAGS;
/// Largest base tag, in bits.
pub const MAX_TAG_BITS: u8 = 32;
/// Largest number of diff-stream bytes one zero-run block describes (format section 4.1).
pub const ZERO_RUN_BLOCK: usize = 1 << 16;
/// Smallest zstd window log a patch may declare.
pub const MIN_WINDOW_LOG: u8 = 10;
/// Largest zstd window log a patch may declare (2 GiB).
pub const MAX_WINDOW_LOG: u8 = 31;
/// Largest accepted path, in bytes.
pub const MAX_PATH_LEN: usize = 4096;
/// Largest accepted path component, in bytes.
pub const MAX_NAME_LEN: usize = 255;
/// Largest number of source files one delta may concatenate.
pub const MAX_DELTA_SOURCES: usize = 64;
/// Stream codec: the bytes themselves.
pub const CODEC_RAW: u8 = 0;
/// Stream codec: one or more concatenated zstd frames.
pub const CODEC_ZSTD: u8 = 1;
/// Stream codec: one or more concatenated raw LZMA2 streams (each ended by its end marker),
/// decoded with a dictionary of `max(2^window_log, 4096)` bytes.
pub const CODEC_LZMA2: u8 = 2;

/// Stream codec: one or more concatenated bzip2 streams (block size up to 900 kB).
pub const CODEC_BZIP2: u8 = 3;

/// Bytes of decoder memory one stream of this codec needs at most: the window (zstd), the
/// dictionary (LZMA2) or the block buffers (bzip2, fixed by its largest block size), plus
/// buffers and state.
pub fn decoder_memory(codec: u8, window_log: u8) -> u64 {
    const OVERHEAD: u64 = 512 << 10;
    match codec {
        CODEC_RAW => 0,
        CODEC_BZIP2 => (4 << 20) + OVERHEAD,
        _ => (1u64 << window_log) + OVERHEAD,
    }
}

/// LZMA2 dictionary size for a window log.
pub fn lzma_dict_size(window_log: u8) -> u32 {
    (1u32 << window_log.min(30)).max(4096)
}

/// A blake3 digest.
pub type Hash = [u8; 32];

/// Header of a patch (format section 2): fixed fields and varint lengths.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// Minor version found (major is always [`VERSION_MAJOR`]).
    pub minor: u8,
    /// [`FLAG_DIRECTORY`], [`FLAG_MANIFEST_LZMA`] and [`FLAG_SIGNED`] bits.
    pub flags: u32,
    /// Largest zstd window log of any frame in the patch; decoders are capped to it.
    pub window_log: u8,
    /// Codec of the control, diff and extra streams ([`CODEC_RAW`] .. [`CODEC_BZIP2`]).
    pub codecs: [u8; 3],
    /// Compressed length of the manifest frame.
    pub manifest_len: u64,
    /// Decompressed length of the manifest.
    pub manifest_raw_len: u64,
    /// Sum of the sizes of all files of the new bundle.
    pub new_total: u64,
    /// Stored lengths of the control, diff and extra streams.
    pub stream_lens: [u64; 3],
}

/// Bytes of `v` as an unsigned LEB128 varint.
pub fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

impl Header {
    /// Whether the bundle is a directory.
    pub fn is_directory(&self) -> bool {
        self.flags & FLAG_DIRECTORY != 0
    }

    /// Whether the manifest carries base tags ([`FLAG_BASE_TAGS`]).
    pub fn has_base_tags(&self) -> bool {
        self.flags & FLAG_BASE_TAGS != 0
    }

    /// Whether the patch carries a signature block.
    pub fn is_signed(&self) -> bool {
        self.flags & FLAG_SIGNED != 0
    }

    /// Length of the encoded header.
    pub fn encoded_len(&self) -> usize {
        4 + 2
            + varint_len(self.flags.into())
            + 1
            + 3
            + [self.manifest_len, self.manifest_raw_len, self.new_total]
                .iter()
                .chain(&self.stream_lens)
                .map(|&v| varint_len(v))
                .sum::<usize>()
    }

    /// Length of the three streams together, or `None` on overflow.
    pub fn data_len(&self) -> Option<u64> {
        self.stream_lens[0]
            .checked_add(self.stream_lens[1])?
            .checked_add(self.stream_lens[2])
    }

    /// Offset of the manifest from the start of the patch.
    pub fn manifest_offset(&self) -> u64 {
        self.encoded_len() as u64
    }

    /// Offset of stream `i` (0 control, 1 diff, 2 extra; 3 is the end of the streams) from the
    /// start of the patch. Only meaningful once [`Header::patch_len`] has been checked.
    pub fn stream_offset(&self, i: usize) -> u64 {
        self.manifest_offset() + self.manifest_len + self.stream_lens[..i].iter().sum::<u64>()
    }

    /// Offset of the signature block (or of the trailer, when unsigned).
    pub fn signature_offset(&self) -> u64 {
        self.stream_offset(3)
    }

    /// Total patch length implied by the header, or `None` on overflow.
    pub fn patch_len(&self) -> Option<u64> {
        let sig = if self.is_signed() { SIGNATURE_LEN } else { 0 };
        ((self.encoded_len() + sig + TRAILER_LEN) as u64)
            .checked_add(self.manifest_len)?
            .checked_add(self.data_len()?)
    }

    /// Encode (format section 2).
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(MAX_HEADER_LEN);
        b.extend_from_slice(&MAGIC);
        b.push(VERSION_MAJOR);
        b.push(self.minor);
        put_varint(&mut b, self.flags.into());
        b.push(self.window_log);
        b.extend_from_slice(&self.codecs);
        for v in [self.manifest_len, self.manifest_raw_len, self.new_total] {
            put_varint(&mut b, v);
        }
        for &v in &self.stream_lens {
            put_varint(&mut b, v);
        }
        debug_assert_eq!(b.len(), self.encoded_len());
        b
    }

    /// Decode and range-check a header from the first bytes of a patch (at most
    /// [`MAX_HEADER_LEN`] are looked at; trailing bytes are ignored). The header's own length
    /// is [`Header::encoded_len`].
    pub fn decode(b: &[u8]) -> Result<Header> {
        if b.len() < 6 || b[0..4] != MAGIC {
            return Err(if b.len() >= 4 && b[0..4] != MAGIC {
                Error::corrupt(
                    "header",
                    "bad magic: this is not a bundelta patch".to_string(),
                )
            } else {
                Error::corrupt(
                    "header",
                    format!("patch is {} bytes, shorter than any header", b.len()),
                )
            });
        }
        if b[4] != VERSION_MAJOR {
            return Err(Error::Unsupported {
                what: "format major version",
                value: b[4].into(),
            });
        }
        let mut r = Reader::new(&b[..b.len().min(MAX_HEADER_LEN)], "header");
        r.bytes(6)?;
        // Canonical (shortest) varints only: a header has exactly one encoding.
        let canonical = |r: &mut Reader<'_>, field: &str| -> Result<u64> {
            let at = r.pos;
            let v = r.varint()?;
            if r.pos - at != varint_len(v) {
                return Err(Error::corrupt(
                    "header",
                    format!("{field} is not a shortest-form varint"),
                ));
            }
            Ok(v)
        };
        let flags = canonical(&mut r, "flags")?;
        if flags & !u64::from(KNOWN_FLAGS) != 0 {
            return Err(Error::Unsupported {
                what: "header flags",
                value: flags,
            });
        }
        if flags & u64::from(FLAG_BASE_TAGS) != 0 && flags & u64::from(FLAG_DIRECTORY) == 0 {
            return Err(Error::corrupt(
                "header",
                "base tags flag on a single-file patch",
            ));
        }
        let window_log = r.u8()?;
        if !(MIN_WINDOW_LOG..=MAX_WINDOW_LOG).contains(&window_log) {
            return Err(Error::corrupt(
                "header",
                format!("window log {window_log} outside {MIN_WINDOW_LOG}..={MAX_WINDOW_LOG}"),
            ));
        }
        let c = r.bytes(3)?;
        let codecs = [c[0], c[1], c[2]];
        if let Some(&c) = codecs.iter().find(|&&c| c > CODEC_BZIP2) {
            return Err(Error::Unsupported {
                what: "stream codec",
                value: c.into(),
            });
        }
        let manifest_len = canonical(&mut r, "manifest_len")?;
        let manifest_raw_len = canonical(&mut r, "manifest_raw_len")?;
        let new_total = canonical(&mut r, "new_total")?;
        let mut stream_lens = [0u64; 3];
        for (i, l) in stream_lens.iter_mut().enumerate() {
            *l = canonical(&mut r, ["ctrl_len", "diff_len", "extra_len"][i])?;
        }
        let h = Header {
            minor: b[5],
            flags: flags as u32,
            window_log,
            codecs,
            manifest_len,
            manifest_raw_len,
            new_total,
            stream_lens,
        };
        debug_assert_eq!(h.encoded_len(), r.pos);
        // A compressed manifest is never larger than its raw bytes (a writer stores it as it
        // is otherwise), so what the applier holds of it is bounded by `manifest_raw_len`.
        if manifest_len > manifest_raw_len {
            return Err(Error::corrupt(
                "header",
                format!(
                    "manifest_len {manifest_len} exceeds manifest_raw_len {manifest_raw_len} \
                     (a manifest that does not compress is stored as it is)"
                ),
            ));
        }
        if h.patch_len().is_none() {
            return Err(Error::corrupt("header", "section lengths overflow"));
        }
        Ok(h)
    }
}

// ---------------------------------------------------------------------------------------------
// Varints

/// Append `v` as an unsigned LEB128 varint.
pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Append a signed value as a zigzag LEB128 varint.
pub fn put_svarint(out: &mut Vec<u8>, v: i64) {
    put_varint(out, ((v << 1) ^ (v >> 63)) as u64);
}

/// Bounds-checked cursor over untrusted bytes.
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    /// A reader over `buf`; `what` names the section in error messages.
    pub fn new(buf: &'a [u8], what: &'static str) -> Reader<'a> {
        Reader { buf, pos: 0, what }
    }

    /// Bytes not yet consumed.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Whether everything was consumed.
    pub fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    fn eof(&self, need: &str) -> Error {
        Error::corrupt(
            self.what,
            format!("ends at byte {} while reading {need}", self.pos),
        )
    }

    /// Read one byte.
    pub fn u8(&mut self) -> Result<u8> {
        let b = *self.buf.get(self.pos).ok_or_else(|| self.eof("a byte"))?;
        self.pos += 1;
        Ok(b)
    }

    /// Read an unsigned LEB128 varint (at most 10 bytes, no overflow).
    pub fn varint(&mut self) -> Result<u64> {
        let mut v: u64 = 0;
        for i in 0..10 {
            let b = self.u8()?;
            let part = u64::from(b & 0x7f);
            if i == 9 && part > 1 {
                return Err(Error::corrupt(
                    self.what,
                    format!("varint overflows at byte {}", self.pos),
                ));
            }
            v |= part << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(Error::corrupt(
            self.what,
            format!("varint longer than 10 bytes at byte {}", self.pos),
        ))
    }

    /// Read a zigzag varint.
    pub fn svarint(&mut self) -> Result<i64> {
        let u = self.varint()?;
        Ok(((u >> 1) as i64) ^ -((u & 1) as i64))
    }

    /// Read a varint that must be at most `max`.
    pub fn varint_max(&mut self, max: u64, field: &str) -> Result<u64> {
        let v = self.varint()?;
        if v > max {
            return Err(Error::corrupt(
                self.what,
                format!("{field} is {v}, above the bound {max}"),
            ));
        }
        Ok(v)
    }

    /// Read `n` raw bytes.
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(self.eof(&format!("{n} bytes")));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    /// Read a 32-byte hash.
    pub fn hash(&mut self) -> Result<Hash> {
        let mut h = [0u8; 32];
        h.copy_from_slice(self.bytes(32)?);
        Ok(h)
    }

    /// Read a length-prefixed UTF-8 string of at most `max` bytes.
    pub fn string(&mut self, max: usize) -> Result<&'a str> {
        let n = self.varint_max(max as u64, "string length")? as usize;
        let b = self.bytes(n)?;
        std::str::from_utf8(b).map_err(|_| Error::corrupt(self.what, "string is not UTF-8"))
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

// ---------------------------------------------------------------------------------------------
// Decoding memory
//
// A manifest is small on the wire and large in memory: a prefix-shared path costs two bytes to
// store and up to MAX_PATH_LEN to expand, an entry three bytes to store and a struct to hold.
// So `manifest_raw_len` alone bounds nothing: every allocation decoding makes is charged to a
// [`Budget`] *before* it is made, and the budget is the manifest's share of the memory the
// header declares ([`manifest_memory`]). A manifest that would need more is refused, having
// allocated at most its share; the header's memory figure is therefore a bound, not a guess.

/// Heap a manifest may take, per byte of `manifest_raw_len`: its raw bytes (the buffer they are
/// read into holds up to twice their length) plus everything decoding allocates ([`Budget`],
/// the other 22 bytes). Measured on real trees, decoding takes 5 to 10 bytes per raw byte
/// (full form 7.1 to 9.5, relative form 4.8 to 6.4; see `FORMAT.md` section 7), so every real
/// manifest fits with twice that to spare, while a hostile one (a 4-byte record may repeat a
/// 4 KiB path) is refused having allocated at most its share.
pub const MANIFEST_MEMORY_FACTOR: u64 = 24;

/// Bytes of heap reading and decoding this header's manifest may take at most:
/// [`MANIFEST_MEMORY_FACTOR`] × `manifest_raw_len`. Part of `memory_needed`.
pub fn manifest_memory(h: &Header) -> u64 {
    h.manifest_raw_len.saturating_mul(MANIFEST_MEMORY_FACTOR)
}

/// Heap accounting while a manifest is decoded: every allocation is charged (its byte size)
/// before it is made and released after it is freed, so the heap decoding holds never exceeds
/// [`Budget::limit`].
///
/// What is charged: each decoded path, link target, base-tag array and delta-source list
/// (their bytes), each entry, old-file record and deleted path (`size_of` their structs), and
/// the case check's table (16 bytes per path). Entries a relative manifest takes from OLD's
/// listing are OLD's size (counted by `listing_memory` under strict memory), not the patch's,
/// and are not charged here.
#[derive(Clone, Debug)]
pub struct Budget {
    used: u64,
    peak: u64,
    limit: u64,
}

impl Budget {
    /// A budget of `limit` bytes.
    pub fn new(limit: u64) -> Budget {
        Budget {
            used: 0,
            peak: 0,
            limit,
        }
    }

    /// No limit (the diff side's self-checks, a listing's case check): charges are counted only.
    pub fn unlimited() -> Budget {
        Budget::new(u64::MAX)
    }

    /// The decoding share of the header's declared manifest memory: [`manifest_memory`] less
    /// the raw manifest buffer (`2 × manifest_raw_len`, its largest capacity).
    pub fn for_manifest(h: &Header) -> Budget {
        Budget::new(manifest_memory(h).saturating_sub(h.manifest_raw_len.saturating_mul(2)))
    }

    /// Charge `bytes` about to be allocated for `what`; refuse (allocating nothing) past the
    /// limit.
    pub fn charge(&mut self, bytes: u64, what: &str) -> Result<()> {
        let used = self.used.saturating_add(bytes);
        if used > self.limit {
            return Err(Error::corrupt(
                "manifest",
                format!(
                    "decoding needs more than the {} bytes of heap its header declares for it \
                     ({MANIFEST_MEMORY_FACTOR} x manifest_raw_len, less the raw bytes): {what} \
                     would bring it to {used}; refused before allocating",
                    self.limit
                ),
            ));
        }
        self.used = used;
        self.peak = self.peak.max(used);
        Ok(())
    }

    /// Release `bytes` charged earlier, once freed.
    pub fn release(&mut self, bytes: u64) {
        self.used = self.used.saturating_sub(bytes);
    }

    /// Bytes charged and not released.
    pub fn used(&self) -> u64 {
        self.used
    }

    /// Most bytes charged at once.
    pub fn peak(&self) -> u64 {
        self.peak
    }

    /// The limit.
    pub fn limit(&self) -> u64 {
        self.limit
    }
}

/// Heap bytes of `n` values of `T`.
fn heap_of<T>(n: u64) -> u64 {
    n.saturating_mul(std::mem::size_of::<T>() as u64)
}

/// Heap a decoded entry body holds besides its struct (link target, delta sources).
fn body_heap(kind: &EntryKind) -> u64 {
    match kind {
        EntryKind::Symlink { target } => target.len() as u64,
        EntryKind::File {
            op: FileOp::Delta { sources, .. },
            ..
        } => heap_of::<u32>(sources.len() as u64),
        _ => 0,
    }
}

// ---------------------------------------------------------------------------------------------
// Manifest

/// How one file of the new bundle is produced.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FileOp {
    /// Same path, same content in OLD. Its hash is covered by [`Manifest::base_digest`].
    Unchanged,
    /// The content of an old file (by index into the old-file table), at any path.
    Copy {
        /// Index into [`Manifest::old_files`].
        source: u32,
    },
    /// Content carried in the patch: the next `size` bytes of the extra stream.
    Add,
    /// Binary delta: controls are read from the control stream until they have produced
    /// `size` bytes (see [`Control`]).
    Delta {
        /// Indices into [`Manifest::old_files`], concatenated in this order; empty means the
        /// old file at the same path (whose hash is covered by [`Manifest::base_digest`]).
        sources: Vec<u32>,
        /// Size of the old file at the same path when `sources` is empty (0 otherwise): lets
        /// the applier name a same-path source whose size differs.
        base_size: u64,
        /// Reversible transform applied before diffing; 0 = none (the only value in v1.0).
        transform: u8,
    },
}

impl FileOp {
    /// Whether this operation reads the old file at the entry's own path (`unchanged`, and
    /// `modify` with no listed source): such files are covered by the base digest.
    pub fn reads_own_path(&self) -> bool {
        match self {
            FileOp::Unchanged => true,
            FileOp::Delta { sources, .. } => sources.is_empty(),
            _ => false,
        }
    }

    /// Short name used by `info`.
    pub fn name(&self) -> &'static str {
        match self {
            FileOp::Unchanged => "unchanged",
            FileOp::Copy { .. } => "copy",
            FileOp::Add => "add",
            FileOp::Delta { .. } => "modify",
        }
    }
}

/// What an entry of the new bundle is.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EntryKind {
    /// A directory (possibly empty).
    Dir,
    /// A symbolic link, stored as its target text; never followed.
    Symlink {
        /// Link target.
        target: String,
    },
    /// A regular file.
    File {
        /// Executable bit.
        exec: bool,
        /// Size in bytes.
        size: u64,
        /// How it is produced.
        op: FileOp,
    },
}

/// One entry of the new bundle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Relative `/`-separated path; empty for a single-file bundle.
    pub path: String,
    /// What it is.
    pub kind: EntryKind,
}

/// An old file the patch relies on (a copy or delta source).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OldFile {
    /// Path relative to OLD; empty for a single-file bundle.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
}

/// The decoded manifest: everything about the patch except the blob bytes.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Manifest {
    /// Digest of the whole new bundle (see `FORMAT.md`); for a file, blake3 of its content.
    /// Every output is checked against it before anything is committed.
    pub new_digest: Hash,
    /// blake3 over the concatenated blake3 hashes of every old file the patch relies on: first
    /// the old-file table's, in table order, then those read at their own path (`unchanged`
    /// files and same-path `modify` sources), in entry order. Checked before anything is
    /// written; costs 32 bytes however many files it covers.
    pub base_digest: Hash,
    /// Old files relied upon, sorted by path.
    pub old_files: Vec<OldFile>,
    /// New bundle entries, strictly sorted by path bytes.
    pub entries: Vec<Entry>,
    /// Old paths absent from the new bundle (informational).
    pub deleted: Vec<String>,
    /// Short hashes of the base, one per old file relied upon (full form) or per entry of
    /// OLD's listing (relative form); empty unless the header has [`FLAG_BASE_TAGS`].
    pub base_tags: BaseTags,
}

/// Base tags (format section 3.2): the first `bits` bits of a hash of each unit of the base,
/// packed, stored so that an applier whose OLD fails the base check can name the first entry
/// that differs. They are read only when the base check has already failed: the check itself
/// is the 32-byte base digest, whatever the tags say.
///
/// Units: in the full form, every old file the patch relies on, in base-digest order (tag =
/// the file's BLAKE3); in the relative form, every entry of OLD's listing (tag =
/// [`listing_tag`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BaseTags {
    /// Bits per tag, 1..=[`MAX_TAG_BITS`]; 0 when there are none.
    pub bits: u8,
    /// Number of units.
    pub count: usize,
    /// The tags, `bits` each, packed most significant bit first; the last byte's unused low
    /// bits are 0.
    pub packed: Vec<u8>,
}

/// The first `bits` bits of `bytes` starting at bit `at` (most significant first), as a u64.
fn bits_at(bytes: &[u8], at: usize, bits: usize) -> Option<u64> {
    let mut v = 0u64;
    for k in at..at + bits {
        let b = bytes.get(k / 8)?;
        v = (v << 1) | u64::from((b >> (7 - k % 8)) & 1);
    }
    Some(v)
}

impl BaseTags {
    /// Tags of the given full hashes, `bits` bits each (0: none; at most [`MAX_TAG_BITS`]).
    pub fn from_hashes<'h>(bits: u8, hashes: impl IntoIterator<Item = &'h Hash>) -> BaseTags {
        let b = usize::from(bits.min(MAX_TAG_BITS));
        if b == 0 {
            return BaseTags::default();
        }
        let mut packed = Vec::new();
        let mut count = 0usize;
        for h in hashes {
            for k in 0..b {
                let at = count * b + k;
                if at % 8 == 0 {
                    packed.push(0);
                }
                let bit = (h[k / 8] >> (7 - k % 8)) & 1;
                *packed.last_mut().expect("pushed above") |= bit << (7 - at % 8);
            }
            count += 1;
        }
        BaseTags {
            bits: b as u8,
            count,
            packed,
        }
    }

    /// Number of units.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether there are no tags.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Whether unit `i`'s tag matches the full hash `h` (false past the end).
    pub fn matches(&self, i: usize, h: &Hash) -> bool {
        let b = usize::from(self.bits);
        b > 0 && i < self.count && bits_at(&self.packed, i * b, b) == bits_at(h, 0, b)
    }

    fn put(&self, out: &mut Vec<u8>) {
        out.push(self.bits);
        put_varint(out, self.count as u64);
        out.extend_from_slice(&self.packed);
    }

    fn read(r: &mut Reader<'_>, budget: &mut Budget) -> Result<BaseTags> {
        let bits = r.u8()?;
        if !(1..=MAX_TAG_BITS).contains(&bits) {
            return Err(Error::corrupt(
                "manifest",
                format!("base tag size {bits} bits, outside 1..={MAX_TAG_BITS}"),
            ));
        }
        let b = u64::from(bits);
        // Bounded by the bytes left, so the allocation below is too.
        let max = (r.remaining() as u64).saturating_mul(8) / b;
        let count = r.varint_max(max, "base tag count")?;
        let total_bits = count * b;
        let packed = r.bytes(total_bits.div_ceil(8) as usize)?;
        budget.charge(packed.len() as u64, "the base tags")?;
        let packed = packed.to_vec();
        let pad = (8 - total_bits % 8) % 8;
        if pad > 0 && packed.last().is_some_and(|l| l & ((1u8 << pad) - 1) != 0) {
            return Err(Error::corrupt(
                "manifest",
                "base tag padding bits are not 0",
            ));
        }
        Ok(BaseTags {
            bits,
            count: count as usize,
            packed,
        })
    }
}

/// The hash behind a relative-form base tag: BLAKE3 in derive_key mode (context
/// `"bundelta base tag v1"`) over the entry's listing record (as for [`listing_digest`]) and,
/// for a regular file, the BLAKE3 of its content.
pub fn listing_tag(e: &ListEntry, content: Option<&Hash>) -> Hash {
    let mut h = blake3::Hasher::new_derive_key("bundelta base tag v1");
    let mut b = Vec::with_capacity(e.path.len() + 16);
    listing_record(e, &mut b);
    h.update(&b);
    if let Some(c) = content {
        h.update(c);
    }
    *h.finalize().as_bytes()
}

/// The fixed part of a relative-form manifest, readable without OLD.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelativePrefix {
    /// Digest of the new bundle.
    pub new_digest: Hash,
    /// Base digest.
    pub base_digest: Hash,
    /// Digest of the base's listing.
    pub listing_digest: Hash,
    /// Base tags, one per entry of the base's listing (empty without [`FLAG_BASE_TAGS`]).
    pub base_tags: BaseTags,
}

/// Manifest form: every entry of NEW listed with its path.
pub const FORM_FULL: u8 = 0;
/// Manifest form: NEW described as an edit of OLD's sorted file list (keep, drop, change,
/// insert), so unchanged paths cost nothing; the applier re-reads OLD's list.
pub const FORM_RELATIVE: u8 = 1;

const ITEM_KEEP: u8 = 0;
const ITEM_DROP: u8 = 1;
const ITEM_SAME: u8 = 2;
const ITEM_NEW: u8 = 3;

/// One entry of a directory listing, as the applier scans OLD (sorted by path bytes,
/// symlinks not followed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListEntry {
    /// Relative `/`-separated path.
    pub path: String,
    /// What it is.
    pub kind: ListKind,
}

/// Kind of a [`ListEntry`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListKind {
    /// A directory.
    Dir,
    /// A regular file.
    File {
        /// Executable bit.
        exec: bool,
        /// Size in bytes.
        size: u64,
    },
    /// A symlink.
    Symlink {
        /// Its target.
        target: String,
    },
}

/// Digest of a listing (paths, kinds, modes, sizes, link targets; not contents).
pub fn listing_digest(list: &[ListEntry]) -> Hash {
    let mut h = blake3::Hasher::new_derive_key("bundelta listing digest v1");
    let mut b = Vec::new();
    for e in list {
        listing_record(e, &mut b);
        h.update(&b);
    }
    *h.finalize().as_bytes()
}

/// One entry's bytes in the listing digest, written into `b` (cleared first): kind, path,
/// then exec and size or the target.
fn listing_record(e: &ListEntry, b: &mut Vec<u8>) {
    b.clear();
    match &e.kind {
        ListKind::Dir => b.push(0),
        ListKind::File { .. } => b.push(1),
        ListKind::Symlink { .. } => b.push(2),
    }
    put_str(b, &e.path);
    match &e.kind {
        ListKind::Dir => {}
        ListKind::File { exec, size } => {
            b.push(u8::from(*exec));
            b.extend_from_slice(&size.to_le_bytes());
        }
        ListKind::Symlink { target } => put_str(b, target),
    }
}

/// Counts of a relative-form manifest, readable without OLD (for `info`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RelativeSummary {
    /// Old entries kept as they are.
    pub kept: u64,
    /// Old entries dropped.
    pub dropped: u64,
    /// Old paths whose entry changed.
    pub changed: u64,
    /// Entries at paths OLD does not have.
    pub inserted: u64,
    /// Old entries the listing has in all.
    pub old_entries: u64,
}

const KIND_DIR: u8 = 0;
const KIND_FILE: u8 = 1;
const KIND_SYMLINK: u8 = 2;
const OP_UNCHANGED: u8 = 0;
const OP_COPY: u8 = 1;
const OP_ADD: u8 = 2;
const OP_DELTA: u8 = 3;

fn common_prefix(a: &str, b: &str) -> usize {
    let n = a.bytes().zip(b.bytes()).take_while(|(x, y)| x == y).count();
    // Never split a UTF-8 sequence.
    (0..=n).rev().find(|&i| b.is_char_boundary(i)).unwrap_or(0)
}

impl Manifest {
    /// Encode the manifest body (before compression).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![FORM_FULL];
        out.extend_from_slice(&self.new_digest);
        out.extend_from_slice(&self.base_digest);
        if self.base_tags.bits > 0 {
            self.base_tags.put(&mut out);
        }
        put_varint(&mut out, self.old_files.len() as u64);
        for f in &self.old_files {
            put_str(&mut out, &f.path);
            put_varint(&mut out, f.size);
        }
        put_varint(&mut out, self.entries.len() as u64);
        let mut prev = "";
        for e in &self.entries {
            let shared = common_prefix(prev, &e.path);
            put_varint(&mut out, shared as u64);
            put_str(&mut out, &e.path[shared..]);
            prev = &e.path;
            put_body(&mut out, &e.kind);
        }
        put_varint(&mut out, self.deleted.len() as u64);
        for d in &self.deleted {
            put_str(&mut out, d);
        }
        out
    }

    /// Decode and fully validate a manifest body against its header.
    ///
    /// Validation covers: every count bounded by the bytes left, every path safe (see
    /// [`validate_path`]), entries strictly sorted (so no duplicates), no two paths equal up to
    /// case, every parent of an entry present as a directory entry, every old-file index in
    /// range, every blob inside the data section, sizes adding up to `header.new_total`.
    /// Decoding allocates at most the header's share ([`Budget::for_manifest`]).
    pub fn decode(raw: &[u8], header: &Header) -> Result<Manifest> {
        Manifest::decode_with_old(raw, header, None)
    }

    /// Decode a manifest of either form. The relative form needs OLD's listing (as
    /// `listing` returns it for OLD) and fails without one. Decoding allocates at most the
    /// header's share ([`Budget::for_manifest`]), besides what OLD's listing costs.
    pub fn decode_with_old(
        raw: &[u8],
        header: &Header,
        old: Option<&[ListEntry]>,
    ) -> Result<Manifest> {
        Manifest::decode_with_budget(raw, header, old, &mut Budget::for_manifest(header))
    }

    /// [`Manifest::decode_with_old`], charging every allocation to `budget` before making it.
    pub fn decode_with_budget(
        raw: &[u8],
        header: &Header,
        old: Option<&[ListEntry]>,
        budget: &mut Budget,
    ) -> Result<Manifest> {
        match raw.first() {
            Some(&FORM_FULL) => Manifest::decode_full(&raw[1..], header, budget),
            Some(&FORM_RELATIVE) => match old {
                Some(old) => Manifest::decode_relative(&raw[1..], header, old, budget),
                None => Err(Error::corrupt(
                    "manifest",
                    "this manifest is relative to OLD's file list; give OLD",
                )),
            },
            Some(&f) => Err(Error::Unsupported {
                what: "manifest form",
                value: f.into(),
            }),
            None => Err(Error::corrupt("manifest", "empty")),
        }
    }

    /// Encode in the relative form against OLD's listing (which must be the sorted listing
    /// the diff saw). Every old file the manifest relies on must be in the listing.
    ///
    /// `tags` are the relative form's base tags, one per entry of `old` (see [`listing_tag`]);
    /// `self.base_tags` (the full form's) is not used. Empty tags write none.
    pub fn encode_relative(&self, old: &[ListEntry], tags: &BaseTags) -> Option<Vec<u8>> {
        let index = |p: &str| old.binary_search_by(|e| e.path.as_str().cmp(p)).ok();
        let mut out = vec![FORM_RELATIVE];
        out.extend_from_slice(&self.new_digest);
        out.extend_from_slice(&self.base_digest);
        out.extend_from_slice(&listing_digest(old));
        if tags.bits > 0 {
            if tags.len() != old.len() {
                return None;
            }
            tags.put(&mut out);
        }
        put_varint(&mut out, self.old_files.len() as u64);
        let mut prev_idx: Option<usize> = None;
        for f in &self.old_files {
            let i = index(&f.path)?;
            // Strictly increasing: stored as the gap to the previous index.
            put_varint(&mut out, (i - prev_idx.map_or(0, |p| p + 1)) as u64);
            prev_idx = Some(i);
        }
        // Merge-walk OLD's listing and NEW's entries.
        let mut items: Vec<u8> = Vec::new();
        let mut n_items: u64 = 0;
        let mut run: Option<(u8, u64)> = None;
        let flush = |items: &mut Vec<u8>, n_items: &mut u64, run: &mut Option<(u8, u64)>| {
            if let Some((tag, n)) = run.take() {
                items.push(tag);
                put_varint(items, n);
                *n_items += 1;
            }
        };
        let (mut i, mut j) = (0usize, 0usize);
        let mut prev_new = "";
        while i < old.len() || j < self.entries.len() {
            let o = old.get(i);
            let e = self.entries.get(j);
            let ord = match (o, e) {
                (Some(o), Some(e)) => o.path.as_str().cmp(e.path.as_str()),
                (Some(_), None) => std::cmp::Ordering::Less,
                _ => std::cmp::Ordering::Greater,
            };
            let tag = match ord {
                std::cmp::Ordering::Equal => {
                    let (o, e) = (o?, e?);
                    let same = match (&o.kind, &e.kind) {
                        (ListKind::Dir, EntryKind::Dir) => true,
                        (ListKind::Symlink { target: a }, EntryKind::Symlink { target: b }) => {
                            a == b
                        }
                        (
                            ListKind::File { exec: x, size: a },
                            EntryKind::File {
                                exec: y,
                                size: b,
                                op,
                            },
                        ) => x == y && a == b && matches!(op, FileOp::Unchanged),
                        _ => false,
                    };
                    if same {
                        ITEM_KEEP
                    } else {
                        ITEM_SAME
                    }
                }
                std::cmp::Ordering::Less => ITEM_DROP,
                std::cmp::Ordering::Greater => ITEM_NEW,
            };
            match tag {
                ITEM_KEEP | ITEM_DROP => match &mut run {
                    Some((t, n)) if *t == tag => *n += 1,
                    _ => {
                        flush(&mut items, &mut n_items, &mut run);
                        run = Some((tag, 1));
                    }
                },
                _ => {
                    flush(&mut items, &mut n_items, &mut run);
                    items.push(tag);
                    n_items += 1;
                    let e = e?;
                    if tag == ITEM_NEW {
                        // Prefix-compressed against the path just before it in merge order
                        // (often the dropped old name of a renamed file: `chunk-AB12.js`
                        // after `chunk-XY34.js`).
                        let shared = common_prefix(prev_new, &e.path);
                        put_varint(&mut items, shared as u64);
                        put_str(&mut items, &e.path[shared..]);
                    }
                    put_body(&mut items, &e.kind);
                }
            }
            prev_new = if tag == ITEM_NEW {
                &self.entries[j].path
            } else {
                &old[i].path
            };
            if tag != ITEM_NEW {
                i += 1;
            }
            if tag != ITEM_DROP {
                j += 1;
            }
        }
        flush(&mut items, &mut n_items, &mut run);
        put_varint(&mut out, n_items);
        out.extend_from_slice(&items);
        Some(out)
    }

    /// Read the fixed part of a relative-form manifest (digests and base tags) without OLD.
    pub fn relative_prefix(raw: &[u8], header: &Header) -> Result<RelativePrefix> {
        if raw.first() != Some(&FORM_RELATIVE) {
            return Err(Error::corrupt("manifest", "not in the relative form"));
        }
        let mut r = Reader::new(&raw[1..], "manifest");
        Manifest::read_relative_prefix(&mut r, header, &mut Budget::for_manifest(header))
    }

    fn read_relative_prefix(
        r: &mut Reader<'_>,
        header: &Header,
        budget: &mut Budget,
    ) -> Result<RelativePrefix> {
        Ok(RelativePrefix {
            new_digest: r.hash()?,
            base_digest: r.hash()?,
            listing_digest: r.hash()?,
            base_tags: if header.has_base_tags() {
                BaseTags::read(r, budget)?
            } else {
                BaseTags::default()
            },
        })
    }

    /// Read a relative-form manifest's counts without OLD. Allocates at most the header's
    /// share ([`Budget::for_manifest`]).
    pub fn summarize_relative(raw: &[u8], header: &Header) -> Result<RelativeSummary> {
        if raw.first() != Some(&FORM_RELATIVE) {
            return Err(Error::corrupt("manifest", "not in the relative form"));
        }
        let mut budget = Budget::for_manifest(header);
        let mut r = Reader::new(&raw[1..], "manifest");
        let prefix = Manifest::read_relative_prefix(&mut r, header, &mut budget)?;
        let s = Manifest::count_items(r, &mut budget)?;
        if header.has_base_tags() && prefix.base_tags.len() as u64 != s.old_entries {
            return Err(Error::corrupt(
                "manifest",
                "base tag count differs from the listing's entry count",
            ));
        }
        Ok(s)
    }

    /// Counts of a relative manifest's items (`r` is just past the prefix). Each body read is
    /// charged and released, so this holds at most one link target or source list at a time.
    fn count_items(mut r: Reader<'_>, budget: &mut Budget) -> Result<RelativeSummary> {
        let n_old = r.varint_max(r.remaining() as u64, "old file count")? as usize;
        for _ in 0..n_old {
            r.varint()?;
        }
        let n_items = r.varint_max(r.remaining() as u64, "item count")?;
        let mut s = RelativeSummary::default();
        for _ in 0..n_items {
            match r.u8()? {
                ITEM_KEEP => s.kept = s.kept.saturating_add(r.varint()?),
                ITEM_DROP => s.dropped = s.dropped.saturating_add(r.varint()?),
                ITEM_SAME => {
                    let kind = read_body(&mut r, n_old, budget)?;
                    budget.release(body_heap(&kind));
                    s.changed += 1;
                }
                ITEM_NEW => {
                    // The path builds on OLD's names, so only its bytes are skipped here.
                    r.varint()?;
                    r.string(MAX_PATH_LEN)?;
                    let kind = read_body(&mut r, n_old, budget)?;
                    budget.release(body_heap(&kind));
                    s.inserted += 1;
                }
                v => {
                    return Err(Error::Unsupported {
                        what: "manifest item",
                        value: v.into(),
                    })
                }
            }
        }
        s.old_entries = s.kept.saturating_add(s.dropped).saturating_add(s.changed);
        Ok(s)
    }

    fn decode_relative(
        raw: &[u8],
        header: &Header,
        old: &[ListEntry],
        budget: &mut Budget,
    ) -> Result<Manifest> {
        let mut r = Reader::new(raw, "manifest");
        let RelativePrefix {
            new_digest,
            base_digest,
            listing_digest: want,
            base_tags,
        } = Manifest::read_relative_prefix(&mut r, header, budget)?;
        if listing_digest(old) != want {
            // Without OLD's contents this cannot name the entry (the applier does, from the
            // base tags, before it gets here); the entry counts often tell what happened.
            let counts = match Manifest::count_items(r, budget) {
                Ok(s) if s.old_entries != old.len() as u64 => format!(
                    "; the base had {} entries (files, directories, symlinks), OLD has {}",
                    s.old_entries,
                    old.len()
                ),
                Ok(_) => format!("; both have {} entries", old.len()),
                Err(_) => String::new(),
            };
            return Err(Error::wrong_base(
                "",
                format!(
                    "its file list differs from the one the patch was made from (an entry was \
                     added, removed, or changed in kind, size or mode){counts}{}",
                    if base_tags.is_empty() {
                        "; this patch has no base tags to name it"
                    } else {
                        ""
                    }
                ),
            ));
        }
        // One pass for the counts first, so that every table below is allocated once, at its
        // final size, and charged before.
        let counts = Manifest::count_items(
            Reader {
                buf: r.buf,
                pos: r.pos,
                what: r.what,
            },
            budget,
        )?;
        // An index is at least 1 byte and indices are strictly increasing: both bound the count.
        let n_old = r.varint_max(
            (r.remaining() as u64).min(old.len() as u64),
            "old file count",
        )? as usize;
        budget.charge(heap_of::<OldFile>(n_old as u64), "the old-file table")?;
        let mut old_files = Vec::with_capacity(n_old);
        let mut next = 0u64;
        for _ in 0..n_old {
            let gap = r.varint()?;
            let i = next
                .checked_add(gap)
                .filter(|&i| i < old.len() as u64)
                .ok_or_else(|| {
                    Error::corrupt("manifest", "old file index past the end of OLD's list")
                })? as usize;
            next = i as u64 + 1;
            let ListKind::File { size, .. } = old[i].kind else {
                return Err(Error::corrupt(
                    "manifest",
                    format!("{:?} is not a file in OLD", old[i].path),
                ));
            };
            budget.charge(old[i].path.len() as u64, "an old file's path")?;
            old_files.push(OldFile {
                path: old[i].path.clone(),
                size,
            });
        }
        let n_items = r.varint_max(r.remaining() as u64, "item count")?;
        // Entries kept or changed stand for OLD's own (OLD's size, see `listing_memory`);
        // inserted ones are the patch's, charged here, their paths and bodies as they are read.
        let from_old = counts
            .kept
            .saturating_add(counts.changed)
            .min(old.len() as u64);
        budget.charge(heap_of::<Entry>(counts.inserted), "the inserted entries")?;
        let mut entries: Vec<Entry> = Vec::with_capacity((from_old + counts.inserted) as usize);
        let mut deleted = Vec::with_capacity(counts.dropped.min(old.len() as u64) as usize);
        let mut cursor = 0usize;
        // What the next inserted path is prefix-compressed against: the last inserted entry or
        // the last old path consumed, whichever came last (referred to, never copied).
        enum Prev {
            Nothing,
            Old(usize),
            New(usize),
        }
        let mut prev = Prev::Nothing;
        let take = |cursor: &mut usize, n: u64| -> Result<std::ops::Range<usize>> {
            let end = (*cursor as u64)
                .checked_add(n)
                .filter(|&e| e <= old.len() as u64)
                .ok_or_else(|| Error::corrupt("manifest", "items run past the end of OLD's list"))?
                as usize;
            let r = *cursor..end;
            *cursor = end;
            Ok(r)
        };
        for _ in 0..n_items {
            match r.u8()? {
                ITEM_KEEP => {
                    let n = r.varint()?;
                    for o in &old[take(&mut cursor, n)?] {
                        let kind = match &o.kind {
                            ListKind::Dir => EntryKind::Dir,
                            ListKind::Symlink { target } => EntryKind::Symlink {
                                target: target.clone(),
                            },
                            ListKind::File { exec, size } => EntryKind::File {
                                exec: *exec,
                                size: *size,
                                op: FileOp::Unchanged,
                            },
                        };
                        entries.push(Entry {
                            path: o.path.clone(),
                            kind,
                        });
                    }
                }
                ITEM_DROP => {
                    let n = r.varint()?;
                    deleted.extend(old[take(&mut cursor, n)?].iter().map(|o| o.path.clone()));
                }
                ITEM_SAME => {
                    let o = &old[take(&mut cursor, 1)?][0];
                    let kind = read_body(&mut r, n_old, budget)?;
                    entries.push(Entry {
                        path: o.path.clone(),
                        kind,
                    });
                }
                ITEM_NEW => {
                    let base = match prev {
                        Prev::Nothing => "",
                        Prev::Old(i) => old[i].path.as_str(),
                        Prev::New(j) => entries[j].path.as_str(),
                    };
                    let path = read_prefixed(&mut r, base, budget)?;
                    let kind = read_body(&mut r, n_old, budget)?;
                    entries.push(Entry { path, kind });
                    prev = Prev::New(entries.len() - 1);
                    continue;
                }
                v => {
                    return Err(Error::Unsupported {
                        what: "manifest item",
                        value: v.into(),
                    })
                }
            }
            // The next inserted path builds on the last old path consumed.
            if cursor > 0 {
                prev = Prev::Old(cursor - 1);
            }
        }
        if cursor != old.len() || !r.is_empty() {
            return Err(Error::corrupt(
                "manifest",
                "items do not cover OLD's list exactly",
            ));
        }
        if header.has_base_tags() && base_tags.len() != old.len() {
            return Err(Error::corrupt(
                "manifest",
                "base tag count differs from the listing's entry count",
            ));
        }
        Manifest {
            new_digest,
            base_digest,
            old_files,
            entries,
            deleted,
            base_tags,
        }
        .validated(header, budget, counts.inserted)
    }

    fn decode_full(raw: &[u8], header: &Header, budget: &mut Budget) -> Result<Manifest> {
        let mut r = Reader::new(raw, "manifest");
        let new_digest = r.hash()?;
        let base_digest = r.hash()?;
        let base_tags = if header.has_base_tags() {
            BaseTags::read(&mut r, budget)?
        } else {
            BaseTags::default()
        };
        // Each record takes at least 2 bytes, so the count is bounded by the input; the table
        // is charged before it is allocated.
        let n_old = r.varint_max((r.remaining() / 2) as u64, "old file count")? as usize;
        budget.charge(heap_of::<OldFile>(n_old as u64), "the old-file table")?;
        let mut old_files = Vec::with_capacity(n_old);
        for _ in 0..n_old {
            let path = r.string(MAX_PATH_LEN)?;
            budget.charge(path.len() as u64, "an old file's path")?;
            let path = path.to_string();
            let size = r.varint()?;
            old_files.push(OldFile { path, size });
        }
        // An entry takes at least 3 bytes.
        let n_entries = r.varint_max((r.remaining() / 3) as u64, "entry count")? as usize;
        budget.charge(heap_of::<Entry>(n_entries as u64), "the entry table")?;
        let mut entries: Vec<Entry> = Vec::with_capacity(n_entries);
        for _ in 0..n_entries {
            // Prefix-compressed against the previous entry's path (referred to, never copied).
            let prev = entries.last().map_or("", |e| e.path.as_str());
            let path = read_prefixed(&mut r, prev, budget)?;
            let kind = read_body(&mut r, n_old, budget)?;
            entries.push(Entry { path, kind });
        }
        let n_del = r.varint_max((r.remaining()) as u64, "deleted count")? as usize;
        budget.charge(heap_of::<String>(n_del as u64), "the deleted list")?;
        let mut deleted = Vec::with_capacity(n_del);
        for _ in 0..n_del {
            let path = r.string(MAX_PATH_LEN)?;
            budget.charge(path.len() as u64, "a deleted path")?;
            deleted.push(path.to_string());
        }
        if !r.is_empty() {
            return Err(Error::corrupt(
                "manifest",
                format!("{} trailing bytes", r.remaining()),
            ));
        }
        let m = Manifest {
            new_digest,
            base_digest,
            old_files,
            entries,
            deleted,
            base_tags,
        };
        if header.has_base_tags() && m.base_tags.len() != m.relied_count() {
            return Err(Error::corrupt(
                "manifest",
                format!(
                    "{} base tags for {} old files relied upon",
                    m.base_tags.len(),
                    m.relied_count()
                ),
            ));
        }
        let own = m.entries.len() as u64;
        m.validated(header, budget, own)
    }

    /// Number of old files the patch relies on: the old-file table, then every file read at
    /// its own path (the units of the base digest, and of the full form's base tags).
    pub fn relied_count(&self) -> usize {
        self.old_files.len()
            + self
                .entries
                .iter()
                .filter(|e| matches!(&e.kind, EntryKind::File { op, .. } if op.reads_own_path()))
                .count()
    }

    fn validated(self, header: &Header, budget: &mut Budget, own: u64) -> Result<Manifest> {
        self.validate_with(header, budget, own)?;
        Ok(self)
    }

    /// Structural checks shared by decode and by the diff side's self-check.
    pub fn validate(&self, header: &Header) -> Result<()> {
        self.validate_with(header, &mut Budget::unlimited(), self.entries.len() as u64)
    }

    /// [`Manifest::validate`], charging its temporary tables to `budget`; `own` entries are
    /// the patch's (the rest, in a relative manifest, OLD's: see [`Budget`]).
    fn validate_with(&self, header: &Header, budget: &mut Budget, own: u64) -> Result<()> {
        let dir = header.is_directory();
        if header.has_base_tags() != (self.base_tags.bits > 0) {
            return Err(Error::corrupt(
                "manifest",
                "base tags present without the header flag, or the reverse",
            ));
        }
        if dir {
            for f in &self.old_files {
                validate_path(&f.path)?;
            }
            for w in self.old_files.windows(2) {
                if w[0].path >= w[1].path {
                    return Err(Error::corrupt(
                        "manifest",
                        "old file table not strictly sorted",
                    ));
                }
            }
            for d in &self.deleted {
                validate_path(d)?;
            }
            let mut prev: Option<&str> = None;
            for (i, e) in self.entries.iter().enumerate() {
                validate_path(&e.path)?;
                if let Some(p) = prev {
                    if p >= e.path.as_str() {
                        return Err(Error::corrupt(
                            "manifest",
                            format!(
                                "entries not strictly sorted at {:?} (duplicate or out of order)",
                                e.path
                            ),
                        ));
                    }
                }
                prev = Some(&e.path);
                if let Some((parent, _)) = e.path.rsplit_once('/') {
                    // The entries before this one are strictly sorted, and a parent sorts
                    // before its children: a binary search finds it, with no table to build.
                    let is_dir = self.entries[..i]
                        .binary_search_by(|x| x.path.as_str().cmp(parent))
                        .is_ok_and(|k| matches!(self.entries[k].kind, EntryKind::Dir));
                    if !is_dir {
                        return Err(Error::corrupt(
                            "manifest",
                            format!(
                                "{:?}: parent is not a directory entry of the bundle",
                                e.path
                            ),
                        ));
                    }
                }
                if let EntryKind::Symlink { target } = &e.kind {
                    if target.is_empty() || target.contains('\0') {
                        return Err(Error::corrupt(
                            "manifest",
                            format!("{:?}: bad symlink target", e.path),
                        ));
                    }
                }
            }
            let table = heap_of::<(u64, usize)>(own);
            budget.charge(table, "the case check")?;
            let clash = case_clash(self.entries.iter().map(|e| e.path.as_str()), budget)?;
            budget.release(table);
            if let Some((_, j)) = clash {
                return Err(Error::corrupt(
                    "manifest",
                    format!(
                        "{:?} differs from another entry only by case",
                        self.entries[j].path
                    ),
                ));
            }
        } else {
            if self.entries.len() != 1
                || !self.entries[0].path.is_empty()
                || !matches!(self.entries[0].kind, EntryKind::File { .. })
            {
                return Err(Error::corrupt(
                    "manifest",
                    "a file bundle must hold exactly one file entry",
                ));
            }
            if self.old_files.len() > 1 || self.old_files.iter().any(|f| !f.path.is_empty()) {
                return Err(Error::corrupt(
                    "manifest",
                    "a file bundle has at most one old file, unnamed",
                ));
            }
            if !self.deleted.is_empty() {
                return Err(Error::corrupt("manifest", "a file bundle deletes nothing"));
            }
        }
        let mut total: u64 = 0;
        for e in &self.entries {
            if let EntryKind::File { size, op, .. } = &e.kind {
                total = total
                    .checked_add(*size)
                    .ok_or_else(|| Error::corrupt("manifest", "file sizes overflow"))?;
                if let FileOp::Copy { source } = op {
                    let src = &self.old_files[*source as usize];
                    if src.size != *size {
                        return Err(Error::corrupt(
                            "manifest",
                            format!(
                                "{:?}: copy of a {}-byte file declared {size} bytes",
                                e.path, src.size
                            ),
                        ));
                    }
                }
            }
        }
        if total != header.new_total {
            return Err(Error::corrupt(
                "manifest",
                format!(
                    "file sizes add up to {total}, header says {}",
                    header.new_total
                ),
            ));
        }
        Ok(())
    }
}

/// Two paths equal after Unicode lowercasing, as indices `(earlier, later)`, if any.
///
/// Sorts a 64-bit hash of every lowercased path (16 bytes per path, where a set of lowercased
/// strings takes about 80) and compares the paths of equal hashes in full. The lowercased
/// copies of the paths compared are charged to `budget` (the hash table is the caller's to
/// charge: in a relative manifest most of it stands for OLD's entries).
pub(crate) fn case_clash<'p>(
    paths: impl Iterator<Item = &'p str> + Clone,
    budget: &mut Budget,
) -> Result<Option<(usize, usize)>> {
    let fold = |p: &str| -> u64 {
        let mut h = blake3::Hasher::new();
        let mut b = [0u8; 4];
        for c in p.chars().flat_map(char::to_lowercase) {
            h.update(c.encode_utf8(&mut b).as_bytes());
        }
        u64::from_le_bytes(h.finalize().as_bytes()[..8].try_into().expect("8 bytes"))
    };
    let mut keys: Vec<(u64, usize)> = Vec::with_capacity(paths.clone().count());
    keys.extend(paths.clone().map(fold).zip(0..));
    keys.sort_unstable();
    let nth = |i: usize| paths.clone().nth(i).expect("index from the same iterator");
    let mut start = 0;
    while start < keys.len() {
        let mut end = start + 1;
        while end < keys.len() && keys[end].0 == keys[start].0 {
            end += 1;
        }
        // Equal hashes (almost always a real clash): compare every pair in full.
        for a in start..end {
            for b in a + 1..end {
                let (i, j) = (keys[a].1, keys[b].1);
                // A lowercased copy is at most 1.5 times as long; with the growth of the
                // string that builds it, 5 times the path covers it.
                let temp = 5 * (nth(i).len() + nth(j).len()) as u64;
                budget.charge(temp, "the case check")?;
                let same = nth(i).to_lowercase() == nth(j).to_lowercase();
                budget.release(temp);
                if same {
                    return Ok(Some((i.min(j), i.max(j))));
                }
            }
        }
        start = end;
    }
    Ok(None)
}

/// Read a path stored as the length of the prefix it shares with `prev` and the rest. Its
/// length and the length of the component spanning the two parts are checked, and its bytes
/// charged, before it is built: a 2-byte record must not expand to more than one path. (The
/// other components are whole in `prev`, checked when it was read, or in the suffix.)
fn read_prefixed(r: &mut Reader<'_>, prev: &str, budget: &mut Budget) -> Result<String> {
    let shared = r.varint_max(prev.len() as u64, "shared path prefix")? as usize;
    if !prev.is_char_boundary(shared) {
        return Err(Error::corrupt(
            "manifest",
            "shared path prefix splits a character",
        ));
    }
    let suffix = r.string(MAX_PATH_LEN)?;
    let len = shared + suffix.len();
    if len > MAX_PATH_LEN {
        return Err(Error::corrupt(
            "manifest",
            format!(
                "a path of {len} bytes ({shared} shared with the previous path, {} new), above \
                 {MAX_PATH_LEN}",
                suffix.len()
            ),
        ));
    }
    let head = &prev[..shared];
    let joined =
        head.rsplit('/').next().unwrap_or("").len() + suffix.split('/').next().unwrap_or("").len();
    if joined > MAX_NAME_LEN || suffix.split('/').skip(1).any(|c| c.len() > MAX_NAME_LEN) {
        return Err(Error::corrupt(
            "manifest",
            format!("a path component is longer than {MAX_NAME_LEN} bytes"),
        ));
    }
    budget.charge(len as u64, "a path")?;
    let mut path = String::with_capacity(shared + suffix.len());
    path.push_str(&prev[..shared]);
    path.push_str(suffix);
    Ok(path)
}

fn put_body(out: &mut Vec<u8>, kind: &EntryKind) {
    let e_kind = kind;
    match e_kind {
        EntryKind::Dir => out.push(KIND_DIR),
        EntryKind::Symlink { target } => {
            out.push(KIND_SYMLINK);
            put_str(out, target);
        }
        EntryKind::File { exec, size, op } => {
            out.push(KIND_FILE);
            out.push(u8::from(*exec));
            put_varint(out, *size);
            match op {
                FileOp::Unchanged => out.push(OP_UNCHANGED),
                FileOp::Copy { source } => {
                    out.push(OP_COPY);
                    put_varint(out, u64::from(*source));
                }
                FileOp::Add => out.push(OP_ADD),
                FileOp::Delta {
                    sources,
                    base_size,
                    transform,
                } => {
                    out.push(OP_DELTA);
                    put_varint(out, sources.len() as u64);
                    for s in sources {
                        put_varint(out, u64::from(*s));
                    }
                    if sources.is_empty() {
                        put_varint(out, *base_size);
                    }
                    out.push(*transform);
                }
            }
        }
    }
}

/// Read an entry's body; its link target or source list is charged before it is allocated
/// (the caller releases [`body_heap`] if it drops the body).
fn read_body(r: &mut Reader<'_>, n_old: usize, budget: &mut Budget) -> Result<EntryKind> {
    let kind = match r.u8()? {
        KIND_DIR => EntryKind::Dir,
        KIND_SYMLINK => {
            let target = r.string(MAX_PATH_LEN)?;
            budget.charge(target.len() as u64, "a link target")?;
            EntryKind::Symlink {
                target: target.to_string(),
            }
        }
        KIND_FILE => {
            let exec = match r.u8()? {
                0 => false,
                1 => true,
                v => return Err(Error::corrupt("manifest", format!("file flags {v}"))),
            };
            let size = r.varint()?;
            let op = match r.u8()? {
                OP_UNCHANGED => FileOp::Unchanged,
                OP_COPY => FileOp::Copy {
                    source: old_index(r, n_old)?,
                },
                OP_ADD => FileOp::Add,
                OP_DELTA => {
                    let n = r.varint_max(MAX_DELTA_SOURCES as u64, "delta source count")?;
                    budget.charge(heap_of::<u32>(n), "a delta source list")?;
                    let mut sources = Vec::with_capacity(n as usize);
                    for _ in 0..n {
                        sources.push(old_index(r, n_old)?);
                    }
                    let base_size = if sources.is_empty() { r.varint()? } else { 0 };
                    let transform = r.u8()?;
                    if transform != 0 {
                        return Err(Error::Unsupported {
                            what: "delta transform",
                            value: transform.into(),
                        });
                    }
                    FileOp::Delta {
                        sources,
                        base_size,
                        transform,
                    }
                }
                v => {
                    return Err(Error::Unsupported {
                        what: "file operation",
                        value: v.into(),
                    })
                }
            };
            EntryKind::File { exec, size, op }
        }
        v => {
            return Err(Error::Unsupported {
                what: "entry kind",
                value: v.into(),
            })
        }
    };
    Ok(kind)
}

fn old_index(r: &mut Reader<'_>, n_old: usize) -> Result<u32> {
    if n_old == 0 {
        return Err(Error::corrupt(
            "manifest",
            "reference to an old file, but the table is empty",
        ));
    }
    Ok(r.varint_max(n_old as u64 - 1, "old file index")? as u32)
}

/// Check that a bundle path is safe to create under a root: relative, `/`-separated, no empty,
/// `.` or `..` component, no NUL, backslash or control character, no drive prefix, bounded
/// lengths.
pub fn validate_path(p: &str) -> Result<()> {
    let bad = |why: &str| {
        Err(Error::corrupt(
            "manifest",
            format!("unsafe path {p:?}: {why}"),
        ))
    };
    if p.is_empty() {
        return bad("empty");
    }
    if p.len() > MAX_PATH_LEN {
        return bad("too long");
    }
    if p.starts_with('/') {
        return bad("absolute");
    }
    if p.chars().any(|c| c == '\\' || c.is_control()) {
        return bad("backslash or control character");
    }
    for (i, c) in p.split('/').enumerate() {
        if c.is_empty() || c == "." || c == ".." {
            return bad("empty, '.' or '..' component");
        }
        if c.len() > MAX_NAME_LEN {
            return bad("component too long");
        }
        if i == 0 && c.len() == 2 && c.ends_with(':') {
            return bad("drive prefix");
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Controls

/// One control of a delta (bsdiff-style), read from the control stream.
///
/// Output `diff` bytes as `source[pos + i] + diff_stream[i]` (wrapping), then `extra` bytes
/// from the extra stream, then move `pos` by `seek`. `pos` starts at 0 for every file and must
/// stay within `0..=source_len`. A file's controls end when they have produced exactly its
/// size; a control may not cross into the next file. Only a file's first control may produce
/// nothing (it positions `pos`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Control {
    /// Bytes added to the source.
    pub diff: u64,
    /// Bytes copied from the extra stream.
    pub extra: u64,
    /// Relative move of the source position.
    pub seek: i64,
}

/// Most controls in one block of the control stream.
pub const MAX_CONTROL_BLOCK: usize = 4096;

/// Append one file's controls to a control stream, as blocks of at most
/// [`MAX_CONTROL_BLOCK`] controls stored column by column (`count`, then every `diff`, every
/// `extra`, every `seek`): columns of alike numbers compress 4-6% better than interleaved ones.
pub fn put_controls(out: &mut Vec<u8>, controls: &[Control]) {
    for block in controls.chunks(MAX_CONTROL_BLOCK) {
        put_varint(out, block.len() as u64);
        for c in block {
            put_varint(out, c.diff);
        }
        for c in block {
            put_varint(out, c.extra);
        }
        for c in block {
            put_svarint(out, c.seek);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_roundtrip_and_overflow() {
        for v in [0u64, 1, 127, 128, 300, u32::MAX as u64, u64::MAX] {
            let mut b = Vec::new();
            put_varint(&mut b, v);
            let mut r = Reader::new(&b, "t");
            assert_eq!(r.varint().unwrap(), v);
            assert!(r.is_empty());
        }
        for v in [0i64, -1, 1, i64::MIN, i64::MAX] {
            let mut b = Vec::new();
            put_svarint(&mut b, v);
            assert_eq!(Reader::new(&b, "t").svarint().unwrap(), v);
        }
        let over = [0xffu8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02];
        assert!(Reader::new(&over, "t").varint().is_err());
        let long = [0x80u8; 11];
        assert!(Reader::new(&long, "t").varint().is_err());
    }

    #[test]
    fn paths() {
        for ok in ["a", "a/b", "a.b/c d", "ü/ñ"] {
            validate_path(ok).unwrap();
        }
        for bad in [
            "", "/a", "a//b", "a/./b", "../a", "a/..", "a\\b", "C:/x", "a\0b", "a/",
        ] {
            assert!(validate_path(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn case_clash_finds_pairs() {
        let f = |v: &[&str]| case_clash(v.iter().copied(), &mut Budget::unlimited()).unwrap();
        assert_eq!(f(&[]), None);
        assert_eq!(f(&["a", "b", "ab", "A/b"]), None);
        assert_eq!(f(&["a", "b", "B"]), Some((1, 2)));
        assert_eq!(f(&["Straße", "x", "STRASSE", "strasse"]), Some((2, 3)));
        // The Kelvin sign lowercases to 'k'.
        assert_eq!(f(&["k.txt", "\u{212A}.txt"]), Some((0, 1)));
        assert_eq!(f(&["dir/ÄB", "dir/äb", "dir/äc"]), Some((0, 1)));
    }

    #[test]
    fn base_tags_pack_and_match() {
        let hashes: Vec<Hash> = (0u8..9).map(|i| *blake3::hash(&[i]).as_bytes()).collect();
        for bits in [1u8, 3, 4, 7, 8, 13, 32] {
            let t = BaseTags::from_hashes(bits, &hashes);
            assert_eq!(t.len(), 9);
            assert_eq!(t.packed.len(), (9 * usize::from(bits)).div_ceil(8));
            for (i, h) in hashes.iter().enumerate() {
                assert!(t.matches(i, h), "bits {bits} unit {i}");
                // Flipping the tag's last bit of the hash must break the match.
                let mut g = *h;
                let k = usize::from(bits) - 1;
                g[k / 8] ^= 0x80 >> (k % 8);
                assert!(!t.matches(i, &g), "bits {bits} unit {i}");
                // A bit past the tag does not matter.
                let mut g = *h;
                g[31] ^= 1;
                assert!(t.matches(i, &g));
            }
            assert!(!t.matches(9, &hashes[0]));
            let mut out = Vec::new();
            t.put(&mut out);
            let back =
                BaseTags::read(&mut Reader::new(&out, "t"), &mut Budget::unlimited()).unwrap();
            assert_eq!(back, t);
        }
        // Nonzero padding, a zero width and a count past the bytes are corrupt.
        let t = BaseTags::from_hashes(3, &hashes[..1]);
        let mut out = Vec::new();
        t.put(&mut out);
        *out.last_mut().unwrap() |= 1;
        assert!(BaseTags::read(&mut Reader::new(&out, "t"), &mut Budget::unlimited()).is_err());
        assert!(BaseTags::read(&mut Reader::new(&[0, 0], "t"), &mut Budget::unlimited()).is_err());
        assert!(BaseTags::read(
            &mut Reader::new(&[8, 3, 1, 2], "t"),
            &mut Budget::unlimited()
        )
        .is_err());
    }

    #[test]
    fn header_roundtrip_and_rejects() {
        let h = Header {
            minor: 0,
            flags: FLAG_DIRECTORY,
            window_log: 21,
            codecs: [CODEC_RAW, CODEC_ZSTD, CODEC_ZSTD],
            manifest_len: 10,
            manifest_raw_len: 20,
            new_total: 40,
            stream_lens: [1, 2, 3],
        };
        let b = h.encode();
        assert_eq!(b.len(), h.encoded_len());
        assert_eq!(b.len(), MIN_HEADER_LEN);
        assert_eq!(Header::decode(&b).unwrap(), h);
        let mut bad = b.clone();
        bad[4] = 1;
        assert!(matches!(
            Header::decode(&bad),
            Err(Error::Unsupported { .. })
        ));
        let mut bad = b.clone();
        bad[7] = 40;
        assert!(Header::decode(&bad).is_err());
        let mut bad = b.clone();
        bad[6] = 0x20;
        assert!(matches!(
            Header::decode(&bad),
            Err(Error::Unsupported {
                what: "header flags",
                ..
            })
        ));
        // Base tags belong to directory patches only.
        let mut bad = b.clone();
        bad[6] = (FLAG_BASE_TAGS | (u32::from(bad[6]) & !FLAG_DIRECTORY)) as u8;
        assert!(Header::decode(&bad).is_err());
        let mut bad = b.clone();
        bad[9] = 9;
        assert!(matches!(
            Header::decode(&bad),
            Err(Error::Unsupported {
                what: "stream codec",
                ..
            })
        ));
        // Largest values: every varint at its longest, still within MAX_HEADER_LEN.
        let big = Header {
            flags: KNOWN_FLAGS,
            manifest_len: u64::MAX / 2,
            manifest_raw_len: u64::MAX,
            new_total: u64::MAX,
            stream_lens: [u64::MAX / 4; 3],
            ..h.clone()
        };
        assert!(big.encode().len() <= MAX_HEADER_LEN);
        assert!(Header::decode(&big.encode()).is_err(), "lengths overflow");
        for n in [0, 1, 5, 16] {
            assert!(Header::decode(&b[..n]).is_err());
        }
        for v in [0u64, 1, 127, 128, 16383, 16384, u64::MAX] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            assert_eq!(out.len(), varint_len(v), "{v}");
        }
    }
}
