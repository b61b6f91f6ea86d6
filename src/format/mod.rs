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

// Source layout: one file per section of the format, in reading order.
//
// - `mod.rs`      (this file) constants: magic, versions, flags, codecs, limits; `Hash`;
//                 decoder memory and the LZMA2 dictionary size.
// - `header.rs`   the header (format section 2): `Header`, its encoding and checks.
// - `varint.rs`   LEB128 varints (`put_varint`, `put_svarint`, `varint_len`), length-prefixed
//                 strings, and `Reader`, the bounds-checked cursor every decoder uses.
// - `budget.rs`   manifest decoding memory: `MANIFEST_MEMORY_FACTOR`, `manifest_memory`,
//                 `Budget`.
// - `manifest.rs` the manifest (format section 3): `Manifest`, `Entry`, `EntryKind`, `FileOp`,
//                 `OldFile`, the form byte, the full form, entry bodies, validation.
// - `relative.rs` the relative form: `ListEntry`, `ListKind`, `listing_digest`,
//                 `RelativePrefix`, `RelativeSummary`, encode/decode against OLD's listing.
// - `tags.rs`     base tags (format section 3.2): `BaseTags`, `listing_tag`.
// - `paths.rs`    path rules: `validate_path`, the case-clash check, prefix-compressed paths.
// - `control.rs`  the control stream (format section 4): `Control`, `put_controls`.

// The encoders in these files serve the diff side (and, with `internals`, tests and fuzz
// targets); an apply-only build without `internals` leaves them unused, not missing.
mod budget;
#[cfg_attr(not(any(feature = "diff", feature = "internals")), allow(dead_code))]
mod control;
mod header;
#[cfg_attr(not(any(feature = "diff", feature = "internals")), allow(dead_code))]
mod inflate;
mod manifest;
mod paths;
#[cfg_attr(not(any(feature = "diff", feature = "internals")), allow(dead_code))]
mod refs;
mod relative;
mod tags;
#[cfg_attr(not(any(feature = "diff", feature = "internals")), allow(dead_code))]
mod varint;

// What a patch means: public. How its bytes are cut: crate-internal, public with the
// `internals` feature (tests, fuzz targets, tools that take patches apart).
pub use header::Header;
pub use inflate::{INFLATE_MEMORY_TOTAL, TRANSFORM_INFLATE};
pub use manifest::{Entry, EntryKind, FileOp, Manifest, OldFile, FORM_FULL, FORM_RELATIVE};
pub(crate) use paths::case_clash;
pub use paths::validate_path;
pub use refs::{KNOWN_REFS, REFS_ABS64, REFS_ARM64, REFS_MEMORY, REFS_X86, TRANSFORM_REFS};
pub use relative::{ListEntry, ListKind, RelativePrefix, RelativeSummary};
pub use tags::BaseTags;

#[cfg(feature = "internals")]
pub use internals::*;
#[cfg(not(feature = "internals"))]
#[allow(unused_imports)] // each is used through its own module path inside the crate
pub(crate) use internals::*;

/// The wire format's building blocks (feature `internals`; crate-internal without it).
#[allow(unused_imports)]
mod internals {
    pub use super::budget::{manifest_memory, Budget, MANIFEST_MEMORY_FACTOR};
    pub use super::control::{put_controls, Control, MAX_CONTROL_BLOCK};
    pub use super::inflate::{
        put_new, put_old, read_old_count, read_old_seg, NewRecipe, NewSeg, OldSeg, MAX_RATIO,
        MAX_SEGMENTS,
    };
    pub use super::refs::{
        elf_loads, pe_loads, Load, Refs, Region, Scan, LOOK_AHEAD, MAX_LOADS, MAX_MAP,
    };
    pub use super::relative::listing_digest;
    pub use super::tags::listing_tag;
    pub use super::varint::{put_svarint, put_varint, varint_len, Reader};
}

/// The token structure of deflate streams (FORMAT.md section 4.3.1): the parser, the encoder
/// and their errors, zlib's tables for predicted blocks, and the miniz encoder of target
/// segment kind 3, for tools, tests and fuzz targets that check them (feature `inflate`).
#[cfg(all(feature = "inflate", feature = "internals"))]
pub mod tokens {
    pub use crate::codec::tokens::{
        parse, Encoder, Fault, Parsed, ENCODER_MEMORY, MAX_PREDICTED_ITEMS, MAX_PREDICTED_LITERALS,
    };
    pub use crate::codec::trees::{zlib_header, D_CODES, L_CODES};
    pub use crate::codec::zlib::{MinizDeflater, MINIZ_MAX_LEVEL, MINIZ_MEMORY};
}

/// The four bytes every patch starts with.
pub const MAGIC: [u8; 4] = *b"BDLT";
/// Major format version written by this build. A reader refuses any other major version.
pub const VERSION_MAJOR: u8 = 2;
/// Minor format version written by this build. Readers accept any minor of their major:
/// a minor bump only adds values (codecs, transforms, ops) that older readers refuse by value.
pub const VERSION_MINOR: u8 = 6;
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
/// Header flag (minor 2): the size of a copy or modify entry is written as the zigzag
/// difference from its source's size, and a changed item of the relative form leaves out the
/// `base_size` it shares with the old entry at its path (FORMAT.md section 3). A patch
/// release of a 2,277-file tree: 10,896 -> 9,764 bytes. Readers of minor 1 refuse the flag.
pub const FLAG_RELATIVE_SIZES: u32 = 32;
/// Header flag (minor 3): some modify entries use delta transform [`TRANSFORM_REFS`]
/// (reference prediction for executables, FORMAT.md section 4.2); the applier sets aside
/// [`REFS_MEMORY`] for one file's parameters. Readers of minor 2 refuse the flag.
pub const FLAG_EXE_REFS: u32 = 64;
/// Header flag (minor 4): some modify entries use delta transform [`TRANSFORM_INFLATE`]
/// (diffing deflate containers in expanded form, FORMAT.md section 4.3); the applier sets
/// aside [`INFLATE_MEMORY_TOTAL`] for one file's recipe and codecs. Readers of minor 3 refuse
/// the flag.
pub const FLAG_INFLATE: u32 = 128;
/// Every flag this version defines.
pub const KNOWN_FLAGS: u32 = FLAG_EXE_REFS
    | FLAG_INFLATE
    | FLAG_DIRECTORY
    | FLAG_MANIFEST_LZMA
    | FLAG_SIGNED
    | FLAG_DIFF_RUNS
    | FLAG_BASE_TAGS
    | FLAG_RELATIVE_SIZES;
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
