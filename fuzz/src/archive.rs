//! The diff on hostile archives: two fuzzer-made files that look like zip or gzip files
//! (seeded with real pairs: deflated and stored entries, a zip stored in a zip, data
//! descriptors, multi-member gzip), diffed with the archive transform on, then applied.
//!
//! Input: `[split u16][old ...][new ...]`.
//!
//! Checked: the zip and gzip readers of the diff (central directory, local headers, stored
//! zips read inside, members that never end, entries that overlap or lie past the directory)
//! never panic and never make a patch that does not give NEW back exactly.

use bundelta::{DiffOptions, MIN_CHUNK_SIZE};

use super::Bytes;

/// Fuzz body.
pub fn run(data: &[u8]) {
    let mut b = Bytes::new(data);
    let split = usize::from(b.u16());
    let rest = b.rest();
    let (old, new) = rest.split_at(split.min(rest.len()));

    let mut opts = DiffOptions::new();
    opts.level(1).chunk_size(MIN_CHUNK_SIZE).inflate(true);
    let patch = opts.diff_bytes(old, new).expect("diff_bytes failed");

    super::apply_gives(old, &patch, new, "archive");
}
