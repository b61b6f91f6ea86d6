//! Manifest decoding memory: [`MANIFEST_MEMORY_FACTOR`], [`manifest_memory`], [`Budget`].
//!
//! A manifest is small on the wire and large in memory: a prefix-shared path costs two bytes to
//! store and up to MAX_PATH_LEN to expand, an entry three bytes to store and a struct to hold.
//! So `manifest_raw_len` alone bounds nothing: every allocation decoding makes is charged to a
//! [`Budget`] *before* it is made, and the budget is the manifest's share of the memory the
//! header declares ([`manifest_memory`]). A manifest that would need more is refused, having
//! allocated at most its share; the header's memory figure is therefore a bound, not a guess.

use super::{EntryKind, FileOp, Header};
use crate::error::{Error, Result};

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
pub(super) fn heap_of<T>(n: u64) -> u64 {
    n.saturating_mul(std::mem::size_of::<T>() as u64)
}

/// Heap a decoded entry body holds besides its struct (link target, delta sources).
pub(super) fn body_heap(kind: &EntryKind) -> u64 {
    match kind {
        EntryKind::Symlink { target } => target.len() as u64,
        EntryKind::File {
            op: FileOp::Delta { sources, .. },
            ..
        } => heap_of::<u32>(sources.len() as u64),
        EntryKind::File {
            op: FileOp::CopyNew { .. },
            ..
        } => COPY_NEW_HEAP,
        _ => 0,
    }
}

/// Heap the applier holds for each `copy-new` entry until the end of the build: the hash of
/// the file it copies and a slot in two hash tables (36 + 4 bytes and their control bytes,
/// with room for a table's growth). Charged while decoding, so that it is part of the
/// manifest's share of the memory formula.
pub(super) const COPY_NEW_HEAP: u64 = 96;
