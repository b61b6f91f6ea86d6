//! The release layer (feature `release`): an update repository of plain files whose signed
//! index lists every release, the patches into it, and the policy around it (FORMAT.md
//! section 9).
//!
//! This module holds what both sides share: the index, its signature and its freshness rules.
//! It never imports the diff side: a client that only updates needs the apply core, this
//! module and a JSON parser.

mod index;

pub use index::{
    check_fresh, cmp_app_versions, parse_app_version, parse_hash, sign_index, verify_index, Blob,
    Index, PatchRef, Release, Staleness, INDEX_FORMAT, INDEX_FORMAT_VERSION,
    INDEX_SIGNATURE_DOMAIN, MAX_INDEX_BYTES, MAX_NAME, MAX_NOTES, MAX_PATCHES_PER_RELEASE,
    MAX_RELEASES,
};
