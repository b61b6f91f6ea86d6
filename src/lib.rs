//! bundelta: compact, hash-verified patches between two versions of a software bundle (one
//! file or a directory tree), and a streaming, bounded-memory, crash-safe applier.
//!
//! - [`DiffOptions`] (feature `diff`) makes a patch from OLD and NEW.
//! - [`Patcher`] applies one: to a new location ([`Patcher::apply`]), in place and
//!   crash-safely ([`Patcher::apply_in_place`]), or as a dry run ([`Patcher::verify`]).
//! - [`format`](mod@format) is the normative description of the bytes (see also `FORMAT.md`).
//! - [`sign_patch`] (or `DiffOptions::sign_with`) signs a patch with a [`SecretKey`];
//!   [`Patcher::require_signature`] makes the applier refuse anything not signed by the
//!   matching [`PublicKey`], before it writes a byte. The two key types are distinct: a secret
//!   key cannot be passed where a public one is expected.
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # #[cfg(feature = "diff")] {
//! let dir = tempfile::tempdir()?;
//! let (old, new, patch, out) = (dir.path().join("old"), dir.path().join("new"),
//!                               dir.path().join("p.bdp"), dir.path().join("out"));
//! std::fs::write(&old, b"the quick brown fox jumps over the lazy dog")?;
//! std::fs::write(&new, b"the quick brown cat jumps over the lazy dog!")?;
//! bundelta::DiffOptions::new().diff_to_file(&old, &new, &patch)?;
//! bundelta::Patcher::new().apply(&old, &patch, &out)?;
//! assert_eq!(std::fs::read(&out)?, std::fs::read(&new)?);
//! # }
//! # Ok(()) }
//! ```
//!
//! # Cargo features
//!
//! - `diff` (default): the patch producer (libsais suffix arrays, rayon).
//! - `cli` (default): the `bundelta` binary.
//! - `lzma`, `bzip2`, `inflate` (all in `diff`): decoders beyond zstd, and the archive
//!   transform; an applier ships only those its patches use (a patch needing a missing one is
//!   refused by name, [`Error::NotBuiltIn`], before anything is written).
//! - `release` (in `cli`): the update repository's signed index ([`release`](mod@release),
//!   FORMAT.md section 9); adds serde and serde_json.
//! - `internals`: the wire format's building blocks (varint readers, the control and recipe
//!   codecs, the manifest memory budget, the deflate token structure) under [`format`](mod@format), for
//!   tests, fuzz targets and tools that take patches apart. Not a stable API.
//!
//! `cargo build --no-default-features` builds only the apply core (format, verification,
//! streaming and in-place apply), which depends on nothing but the decoders (zstd, LZMA2, bzip2), blake3, Ed25519
//! signature verification and libc.
//!
//! # Memory and trust model
//!
//! See the [`Patcher`] docs: every number in a patch is checked before use, every path is
//! validated, every old file relied upon is hashed before anything is written, every output
//! is hashed before it replaces anything, and apply memory is bounded by a formula of two
//! header fields ([`memory_needed`]), never by file sizes.

#![deny(missing_docs, missing_debug_implementations)]

mod apply;
mod codec;
#[cfg(feature = "diff")]
mod diff;
mod error;
pub mod format;
mod inplace;
mod readat;
#[cfg(feature = "release")]
pub mod release;
mod sign;
mod sys;
#[cfg(all(test, feature = "diff"))]
mod testutil;
mod tree;

pub use apply::{
    listing_memory, memory_needed, ApplyReport, Patch, Patcher, ProgressFn, Remade, Unknown,
    DEFAULT_MEMORY_LIMIT, LISTING_ENTRY_BYTES, PIPE_MEMORY,
};
#[doc(hidden)]
pub use apply::{ApplyEvent, HookFn};
#[cfg(feature = "diff")]
pub use diff::{
    Codec, DiffOptions, DiffPhase, DiffProgressFn, DiffStats, DEFAULT_CHUNK_SIZE, DEFAULT_LEVEL,
    DEFAULT_WINDOW_LOG, MIN_CHUNK_SIZE,
};
pub use error::{Error, Result};
pub use inplace::{rollback_in_place, InPlaceOutcome, InPlaceReport, RollbackOutcome};
pub use readat::ReadAt;
pub use sign::{sign_patch, PublicKey, SecretKey, SIGNATURE_DOMAIN};
/// Platform helpers the `bundelta` binary shares with the library (not a stable API).
#[doc(hidden)]
pub use sys::{walk_sorted, write_atomic, Kind as WalkKind, WalkEntry};
pub use tree::hex;

/// blake3 digest identifying a bundle on disk: for a file, the hash of its content; for a
/// directory, the tree digest over every entry's path, kind, mode, size and content hash.
/// This is the value a patch records as its target ([`format::Manifest::new_digest`]).
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let dir = tempfile::tempdir()?;
/// let (a, b) = (dir.path().join("a"), dir.path().join("b"));
/// for d in [&a, &b] {
///     std::fs::create_dir(d)?;
///     std::fs::write(d.join("app.txt"), "version 1")?;
/// }
/// assert_eq!(bundelta::bundle_digest(&a)?, bundelta::bundle_digest(&b)?);
/// std::fs::write(b.join("app.txt"), "version 2")?;
/// assert_ne!(bundelta::bundle_digest(&a)?, bundelta::bundle_digest(&b)?);
/// # Ok(()) }
/// ```
pub fn bundle_digest(path: impl AsRef<std::path::Path>) -> Result<format::Hash> {
    tree::bundle_digest(path.as_ref())
}
