//! The patch producer: plans a bundle diff, encodes every changed file, writes the patch.
//!
//! Planning, per file of NEW (directories and symlinks are carried as entries):
//! 1. same path and same content in OLD: `unchanged` (no bytes but the path);
//! 2. same content anywhere in OLD: `copy` (a reference and the old file's hash);
//! 3. otherwise `modify` from the same path in OLD or, when there is none, from the most
//!    similar old file (see [`similar`]), or `add` when there is no useful source; a file
//!    whose content is partly in other old files (see [`cover`]) is also diffed against its
//!    source followed by them, kept when that is estimated smaller;
//! 4. a `modify` whose delta is not clearly smaller than the file compressed alone becomes an
//!    `add` of the compressed (or raw) file: a patch is never worse than a full download.
//!
//! Work is parallel twice over with rayon: across files, and within a file across chunks of
//! the new content (each chunk is scanned against one shared suffix array and compressed on
//! its own). Results are gathered in order, so the patch bytes never depend on the thread count.

mod cover;
mod inflate;
mod matcher;
mod refs;
mod similar;

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rayon::prelude::*;

use crate::codec::encode::{compress_bzip2, compress_lzma, compress_zstd, zero_runs, Model};
use crate::error::{Error, Result};
use crate::format::{
    listing_tag, put_controls, put_new, put_old, BaseTags, Control, Entry, EntryKind, FileOp, Hash,
    Header, ListEntry, Manifest, OldFile, CODEC_BZIP2, CODEC_LZMA2, CODEC_RAW, CODEC_ZSTD,
    FLAG_BASE_TAGS, FLAG_DIFF_RUNS, FLAG_DIRECTORY, FLAG_EXE_REFS, FLAG_INFLATE,
    FLAG_MANIFEST_LZMA, FLAG_RELATIVE_SIZES, FLAG_SIGNED, MAX_TAG_BITS, MAX_WINDOW_LOG,
    MIN_WINDOW_LOG, REFS_ABS64, TRANSFORM_INFLATE, TRANSFORM_REFS, VERSION_MINOR,
};
use crate::tree::{self, hash_file, NodeKind, TreeDigest};
use inflate::Method;

/// Default zstd level for every stream.
pub const DEFAULT_LEVEL: i32 = 19;
/// Default zstd window log (2 MiB).
pub const DEFAULT_WINDOW_LOG: u8 = 21;
/// Default chunk size for splitting a new file into independently diffed pieces (4 MiB).
pub const DEFAULT_CHUNK_SIZE: usize = 4 << 20;
/// Smallest accepted chunk size (64 KiB).
pub const MIN_CHUNK_SIZE: usize = 64 << 10;

/// Entropy coder of the patch's streams.
///
/// ```
/// use bundelta::{Codec, DiffOptions};
/// let old = "one line of an old text file\n".repeat(2000);
/// let new = old.replace("an old", "a new");
/// for codec in [Codec::Lzma, Codec::Zstd] {
///     let mut opts = DiffOptions::new();
///     let patch = opts.codec(codec).diff_bytes(old.as_bytes(), new.as_bytes())?;
///     assert!(patch.len() < new.len() / 10);
/// }
/// # Ok::<(), bundelta::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Codec {
    /// The default: LZMA2, except that the diff stream gets bzip2 when that is smaller (it is
    /// on some sparse diff streams of executables). 5-18% smaller patches than zstd on real pairs;
    /// decodes at tens to hundreds of MB/s; bzip2 streams need 4.5 MiB of decoder memory.
    Lzma,
    /// zstd: larger patches, faster diff, apply decoding above 1 GB/s.
    Zstd,
}

/// Progress callback: the phase, then `(done, total)` in bytes for the phases that count
/// bytes (matching: new content encoded), `(0, 0)` for the others. Called from the diff's
/// worker threads; keep it cheap.
///
/// ```
/// use std::sync::{Arc, Mutex};
/// let matched = Arc::new(Mutex::new(0));
/// let m = Arc::clone(&matched);
/// let progress: Arc<bundelta::DiffProgressFn> = Arc::new(move |phase, done, _total| {
///     if phase == bundelta::DiffPhase::Matching {
///         let mut most = m.lock().unwrap();
///         *most = done.max(*most);
///     }
/// });
/// let new = vec![7u8; 100_000];
/// bundelta::DiffOptions::new().progress(progress).diff_bytes(&[0u8; 1000], &new)?;
/// assert_eq!(*matched.lock().unwrap(), new.len() as u64);
/// # Ok::<(), bundelta::Error>(())
/// ```
pub type DiffProgressFn = dyn Fn(DiffPhase, u64, u64) + Send + Sync;

/// What a diff is doing, in order (a phase may be skipped: a single file is not scanned).
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let dir = tempfile::tempdir()?;
/// # let (old, new) = (dir.path().join("old"), dir.path().join("new"));
/// # let body: String = (0..2000).map(|i| format!("fn f{i}() {{}}\n")).collect();
/// # for (d, v) in [(&old, "1.0"), (&new, "1.1")] {
/// #     std::fs::create_dir_all(d.join("lib"))?;
/// #     std::fs::write(d.join("README"), "read me")?;
/// #     std::fs::write(d.join("lib/core.txt"), format!("// version {v}\n{body}"))?;
/// # }
/// # std::fs::write(old.join("NOTES"), "notes of 1.0")?;
/// # std::fs::write(new.join("CHANGES"), "new in 1.1: everything")?;
/// use std::sync::{Arc, Mutex};
/// let phases = Arc::new(Mutex::new(Vec::new()));
/// let p = Arc::clone(&phases);
/// let mut opts = bundelta::DiffOptions::new();
/// opts.progress(Arc::new(move |phase, _, _| {
///     let mut seen = p.lock().unwrap();
///     if seen.last() != Some(&phase) {
///         seen.push(phase);
///     }
/// }));
/// opts.diff_paths(&old, &new)?;
/// use bundelta::DiffPhase::{Compressing, Matching, Scanning};
/// assert_eq!(*phases.lock().unwrap(), [Scanning, Matching, Compressing]);
/// # Ok(()) }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DiffPhase {
    /// Reading and hashing both trees, pairing renamed and moved files.
    Scanning,
    /// Indexing old content and matching new content against it (counts bytes of new content
    /// encoded).
    Matching,
    /// Compressing the three streams and writing the patch.
    Compressing,
}

/// Default base-tag size for `units` tags next to `stream_bytes` of compressed streams: as many
/// bits as fit in 1/64 of the streams (or in [`TAG_MIN_BYTES`], whichever is more), within
/// 1..=8; none when even 1 bit each would cost more than a quarter of the streams and more than
/// [`TAG_FREE_BYTES`] (a huge tree with a tiny change: 50,000 entries would take 6 KB of tags
/// for a patch of a few hundred bytes).
///
/// The 1/64 share keeps tags a small part of every patch: with the old floor of 4 bits they
/// were 11% of a 2,277-file patch of 11 KB. Below 4 bits a single differing file escapes
/// its tag more often (1 in 2 at 1 bit), but a wrong base that is another version differs in
/// many files, and one of them is named; small trees get 8 bits from [`TAG_MIN_BYTES`].
fn auto_tag_bits(units: usize, stream_bytes: usize) -> u8 {
    if units.div_ceil(8) > (stream_bytes / 4).max(TAG_FREE_BYTES) {
        return 0;
    }
    let budget = (stream_bytes / 64).max(TAG_MIN_BYTES);
    (budget * 8 / units.max(1)).clamp(1, 8) as u8
}

/// Base tags up to this many bytes are always included by default (see [`auto_tag_bits`]).
const TAG_FREE_BYTES: usize = 1024;

/// Every tree may spend this many bytes on base tags by default, however small its streams:
/// 8 bits each for up to 64 entries (see [`auto_tag_bits`]).
const TAG_MIN_BYTES: usize = 64;

/// Options of a diff, set with a builder.
///
/// ```
/// let mut opts = bundelta::DiffOptions::new();
/// opts.level(19).window_log(21);
/// let old = b"hello world, version one".to_vec();
/// let new = b"hello world, version two!".to_vec();
/// let patch = opts.diff_bytes(&old, &new)?;
/// assert!(patch.len() > 64);
/// # Ok::<(), bundelta::Error>(())
/// ```
#[derive(Clone)]
pub struct DiffOptions {
    level: i32,
    window_log: u8,
    chunk_size: usize,
    codec: Codec,
    base_tags: Option<u8>,
    exe_refs: bool,
    inflate: bool,
    signing_key: Option<crate::SecretKey>,
    progress: Option<Arc<DiffProgressFn>>,
}

/// What the base tags of a directory patch are made from (format section 3.2).
struct TagSource {
    /// BLAKE3 of every old file relied upon, in base-digest order (full form).
    relied: Vec<Hash>,
    /// [`listing_tag`] of every entry of OLD's listing (relative form).
    listing: Vec<Hash>,
}

impl std::fmt::Debug for DiffOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiffOptions")
            .field("level", &self.level)
            .field("window_log", &self.window_log)
            .field("chunk_size", &self.chunk_size)
            .field("codec", &self.codec)
            .field("base_tags", &self.base_tags)
            .field("exe_refs", &self.exe_refs)
            .field("inflate", &self.inflate)
            .field("signing_key", &self.signing_key)
            .field("progress", &self.progress.is_some())
            .finish()
    }
}

impl Default for DiffOptions {
    fn default() -> Self {
        DiffOptions::new()
    }
}

/// What a diff produced.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let dir = tempfile::tempdir()?;
/// # let (old, new) = (dir.path().join("old"), dir.path().join("new"));
/// # let body: String = (0..2000).map(|i| format!("fn f{i}() {{}}\n")).collect();
/// # for (d, v) in [(&old, "1.0"), (&new, "1.1")] {
/// #     std::fs::create_dir_all(d.join("lib"))?;
/// #     std::fs::write(d.join("README"), "read me")?;
/// #     std::fs::write(d.join("lib/core.txt"), format!("// version {v}\n{body}"))?;
/// # }
/// # std::fs::write(old.join("NOTES"), "notes of 1.0")?;
/// # std::fs::write(new.join("CHANGES"), "new in 1.1: everything")?;
/// // OLD and NEW share README, differ in lib/core.txt; NOTES is gone, CHANGES is new.
/// let (patch, stats) = bundelta::DiffOptions::new().diff_paths(&old, &new)?;
/// assert_eq!((stats.unchanged, stats.modified, stats.added, stats.deleted), (1, 1, 1, 1));
/// assert_eq!(stats.patch_bytes, patch.len() as u64);
/// assert!(stats.apply_memory <= bundelta::DEFAULT_MEMORY_LIMIT);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DiffStats {
    /// Files kept as they are (operation `unchanged`). The operation names are the ones
    /// `bundelta info` and `info --list` print.
    pub unchanged: u64,
    /// Files whose content exists in OLD, copied by reference (operation `copy`).
    pub copied: u64,
    /// Files rebuilt from an earlier file of NEW with the same content (operation
    /// `copy-new`).
    pub copied_new: u64,
    /// Files carried whole in the patch (operation `add`).
    pub added: u64,
    /// Files rebuilt from a binary delta (operation `modify`).
    pub modified: u64,
    /// Old paths absent from NEW.
    pub deleted: u64,
    /// Directory entries.
    pub dirs: u64,
    /// Symlink entries.
    pub symlinks: u64,
    /// Total bytes of new file content.
    pub new_bytes: u64,
    /// Size of the patch.
    pub patch_bytes: u64,
    /// Modified files whose source is several old files (see [`DiffOptions::diff_paths`]).
    pub multi_source: u64,
    /// Heap an applier needs for this patch ([`crate::memory_needed`] of its header).
    pub apply_memory: u64,
}

impl DiffOptions {
    /// Defaults: level [`DEFAULT_LEVEL`], window log [`DEFAULT_WINDOW_LOG`], chunk size
    /// [`DEFAULT_CHUNK_SIZE`].
    ///
    /// ```
    /// let opts = bundelta::DiffOptions::new();
    /// let patch = opts.diff_bytes(b"hello old world", b"hello new world")?;
    /// let header = bundelta::format::Header::decode(&patch)?;
    /// assert_eq!(header.window_log, bundelta::DEFAULT_WINDOW_LOG);
    /// assert!(!header.is_signed());
    /// # Ok::<(), bundelta::Error>(())
    /// ```
    pub fn new() -> DiffOptions {
        DiffOptions {
            level: DEFAULT_LEVEL,
            window_log: DEFAULT_WINDOW_LOG,
            chunk_size: DEFAULT_CHUNK_SIZE,
            codec: Codec::Lzma,
            base_tags: None,
            exe_refs: true,
            inflate: true,
            signing_key: None,
            progress: None,
        }
    }

    /// zstd level of every stream, 1..=22. Default 19. Higher is smaller and slower to diff;
    /// apply speed and memory do not depend on it.
    ///
    /// ```
    /// let mut opts = bundelta::DiffOptions::new();
    /// opts.codec(bundelta::Codec::Zstd).level(3); // fast, for a quick test build
    /// assert!(opts.diff_bytes(b"hello old world", b"hello new world").is_ok());
    /// opts.level(23);
    /// let err = opts.diff_bytes(b"hello old world", b"hello new world").unwrap_err();
    /// assert!(matches!(err, bundelta::Error::Config { .. }));
    /// ```
    pub fn level(&mut self, level: i32) -> &mut DiffOptions {
        self.level = level;
        self
    }

    /// Largest zstd window, as a power of two, 10..=31. Default 21 (2 MiB). The applier needs
    /// about `3 × (2^window_log + 0.5 MiB)` of memory and refuses a patch whose window does
    /// not fit its limit (12 MiB by default, which admits 21). Matching is done by the suffix
    /// array over whole files, so a small window costs only a few percent of patch size.
    ///
    /// ```
    /// use bundelta::{format::Header, memory_needed, DiffOptions};
    /// let old = "one line of an old text file\n".repeat(2000);
    /// let new = old.replace("an old", "a new");
    /// let small = DiffOptions::new().window_log(16).diff_bytes(old.as_bytes(), new.as_bytes())?;
    /// let large = DiffOptions::new().diff_bytes(old.as_bytes(), new.as_bytes())?;
    /// let (small, large) = (Header::decode(&small)?, Header::decode(&large)?);
    /// assert_eq!(small.window_log, 16);
    /// assert!(memory_needed(&small) < memory_needed(&large)); // 64 KiB windows, not 2 MiB
    /// # Ok::<(), bundelta::Error>(())
    /// ```
    pub fn window_log(&mut self, window_log: u8) -> &mut DiffOptions {
        self.window_log = window_log;
        self
    }

    /// New files are split into chunks of this many bytes, diffed in parallel. Default 4 MiB,
    /// at least 64 KiB. Smaller chunks parallelise more and lose a little size at each border.
    /// It does not change what the applier needs.
    ///
    /// ```
    /// let mut opts = bundelta::DiffOptions::new();
    /// opts.chunk_size(bundelta::MIN_CHUNK_SIZE);
    /// let (old, new) = (vec![1u8; 300_000], vec![2u8; 300_000]); // five chunks of NEW
    /// assert!(opts.diff_bytes(&old, &new).is_ok());
    /// opts.chunk_size(1024); // below the minimum
    /// assert!(matches!(opts.diff_bytes(&old, &new), Err(bundelta::Error::Config { .. })));
    /// ```
    pub fn chunk_size(&mut self, bytes: usize) -> &mut DiffOptions {
        self.chunk_size = bytes;
        self
    }

    /// Entropy coder of the control, diff and extra streams. Default [`Codec::Lzma`]. A
    /// stream that does not shrink is stored raw. The applier supports every codec.
    ///
    /// ```
    /// use bundelta::format::{Header, CODEC_RAW, CODEC_ZSTD};
    /// let old = "one line of an old text file\n".repeat(2000);
    /// let new = old.replace("an old", "a new");
    /// let mut opts = bundelta::DiffOptions::new();
    /// opts.codec(bundelta::Codec::Zstd);
    /// let header = Header::decode(&opts.diff_bytes(old.as_bytes(), new.as_bytes())?)?;
    /// assert!(header.codecs.iter().all(|&c| c == CODEC_ZSTD || c == CODEC_RAW));
    /// # Ok::<(), bundelta::Error>(())
    /// ```
    pub fn codec(&mut self, codec: Codec) -> &mut DiffOptions {
        self.codec = codec;
        self
    }

    /// Bits of base tag per old entry of a directory patch, 0..=32. Default `None`: as many
    /// as fit in 1/64 of the patch's streams (or in 64 bytes, whichever is more), but at least
    /// 1 and at most 8; and none when 1 bit each would cost more than both a quarter of the
    /// streams and 1 KiB (a tree of many thousands of files with a tiny change, where tags
    /// would be most of the patch).
    ///
    /// Base tags let an applier whose OLD is not the patch's base name the first file that
    /// differs (in content, size, kind or mode) instead of only refusing OLD. With `b` bits a
    /// differing file escapes its tag with probability 2^-b (1/16 at 4 bits, 1/256 at 8), and
    /// the applier then names the next one that does not. They cost `b` bits per old file
    /// relied upon (or, in the relative manifest, per entry of OLD's listing), and nothing at
    /// apply time unless the base check fails. 0 leaves them out: the smallest patch; a wrong
    /// base is still refused (by the 32-byte base digest) but not named. Ignored for single-file
    /// patches, where there is only one file to name.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let dir = tempfile::tempdir()?;
    /// # let (old, new) = (dir.path().join("old"), dir.path().join("new"));
    /// # let body: String = (0..2000).map(|i| format!("fn f{i}() {{}}\n")).collect();
    /// # for (d, v) in [(&old, "1.0"), (&new, "1.1")] {
    /// #     std::fs::create_dir_all(d.join("lib"))?;
    /// #     std::fs::write(d.join("README"), "read me")?;
    /// #     std::fs::write(d.join("lib/core.txt"), format!("// version {v}\n{body}"))?;
    /// # }
    /// # std::fs::write(old.join("NOTES"), "notes of 1.0")?;
    /// # std::fs::write(new.join("CHANGES"), "new in 1.1: everything")?;
    /// # let (patch, out) = (dir.path().join("p.bdp"), dir.path().join("out"));
    /// bundelta::DiffOptions::new().base_tags(Some(8)).diff_to_file(&old, &new, &patch)?;
    /// // OLD's lib/core.txt changes after the diff, keeping its size: the tag names it.
    /// let mut core = std::fs::read(old.join("lib/core.txt"))?;
    /// core[0] ^= 1;
    /// std::fs::write(old.join("lib/core.txt"), core)?;
    /// let err = bundelta::Patcher::new().apply(&old, &patch, &out).unwrap_err();
    /// match err {
    ///     bundelta::Error::WrongBase { path, .. } => assert_eq!(path, "lib/core.txt"),
    ///     other => panic!("{other}"),
    /// }
    /// # Ok(()) }
    /// ```
    pub fn base_tags(&mut self, bits: Option<u8>) -> &mut DiffOptions {
        self.base_tags = bits;
        self
    }

    /// Predict the references of executables (delta transform 1, see
    /// `format::Refs`). Default on. For a file that is an ELF64 or PE32+ executable
    /// or library (x86-64 or AArch64) on both sides, the diff also tries predicting calls,
    /// jumps, RIP-relative operands and (optionally) absolute pointers from where their
    /// targets moved, and keeps it when the estimated patch is smaller: on the corpus, 62%
    /// smaller on a Go executable's patch release (x86-64; 60% for its AArch64 build), 29%
    /// on a Rust executable's minor release, 31-32% on a Rust and a C library's patch
    /// releases, 1.5% on a Rust library's minor release with much new code. Costs a few
    /// passes over the file at diff time (0.7 s of a 28 s diff of a 38 MB executable); the
    /// applier needs up to [`crate::format::REFS_MEMORY`] (513 KiB) more memory and a little
    /// CPU.
    ///
    /// ```
    /// use bundelta::format::{Header, FLAG_EXE_REFS};
    /// let mut opts = bundelta::DiffOptions::new();
    /// opts.exe_refs(false); // plain deltas only: no REFS_MEMORY at apply time
    /// let patch = opts.diff_bytes(b"\x7fELF version one", b"\x7fELF version two")?;
    /// assert_eq!(Header::decode(&patch)?.flags & FLAG_EXE_REFS, 0);
    /// # Ok::<(), bundelta::Error>(())
    /// ```
    pub fn exe_refs(&mut self, on: bool) -> &mut DiffOptions {
        self.exe_refs = on;
        self
    }

    /// Diff gzip files (`.gz`, `.tgz`, multi-member too) and zip files (wheel, jar, apk...)
    /// between their inflated contents, and deflate the new file's streams again on apply with
    /// the stock-zlib parameters that made them (found by trial), or, for a stream no
    /// parameters reproduce, from its token structure (FORMAT.md 4.3.1). Default: on.
    /// Kept per file only when the estimated patch is smaller. Costs, per archive pair, the
    /// inflating, the parameter search (a few compressions of each stream's first block, one
    /// whole compression when found) and a second diff over the larger expanded forms; the
    /// applier needs [`crate::format::INFLATE_MEMORY_TOTAL`] (1,552 KiB) more memory, disk
    /// space for the inflated old file beside the output (and for a token structure), and
    /// the CPU of one zlib compression (or token encoding) of the new file's contents.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use std::io::Write;
    /// # let gzip = |text: &str| -> std::io::Result<Vec<u8>> {
    /// #     let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    /// #     e.write_all(text.as_bytes())?;
    /// #     e.finish()
    /// # };
    /// let text: String = (0..5000).map(|i| format!("line {i}\n")).collect();
    /// let old = gzip(&text)?;
    /// let new = gzip(&text.replace("line 2500\n", "line two thousand five hundred\n"))?;
    /// let mut opts = bundelta::DiffOptions::new();
    /// let inflated = opts.diff_bytes(&old, &new)?;
    /// let plain = opts.inflate(false).diff_bytes(&old, &new)?;
    /// assert!(inflated.len() < plain.len());
    /// # Ok(()) }
    /// ```
    pub fn inflate(&mut self, on: bool) -> &mut DiffOptions {
        self.inflate = on;
        self
    }

    /// Sign the patch with this Ed25519 secret key (see [`crate::sign_patch`] and
    /// [`crate::SecretKey::public_key`]). Default: unsigned. Costs 64 bytes of patch and one
    /// signature; an applier given the public key ([`crate::Patcher::require_signature`])
    /// refuses anything else before writing a byte.
    ///
    /// ```
    /// let secret = bundelta::SecretKey::from_bytes([7u8; 32]); // in real use: 32 random bytes
    /// let mut patcher = bundelta::Patcher::new();
    /// patcher.require_signature(secret.public_key());
    /// let mut opts = bundelta::DiffOptions::new();
    /// opts.sign_with(secret);
    /// let patch = opts.diff_bytes(b"hello old world", b"hello new world")?;
    /// assert!(bundelta::format::Header::decode(&patch)?.is_signed());
    /// let p = patcher.open_reader(std::io::Cursor::new(patch), "signed patch")?;
    /// assert_eq!(patcher.verify_patch(p, None)?, None); // the signature checks out
    /// # Ok::<(), bundelta::Error>(())
    /// ```
    pub fn sign_with(&mut self, secret_key: crate::SecretKey) -> &mut DiffOptions {
        self.signing_key = Some(secret_key);
        self
    }

    /// Report progress: each [`DiffPhase`] as it starts, and bytes matched. Default: none.
    ///
    /// ```
    /// use std::sync::atomic::{AtomicBool, Ordering};
    /// use std::sync::Arc;
    /// let compressing = Arc::new(AtomicBool::new(false));
    /// let c = Arc::clone(&compressing);
    /// let mut opts = bundelta::DiffOptions::new();
    /// opts.progress(Arc::new(move |phase, done, total| {
    ///     eprintln!("{phase:?} {done}/{total}");
    ///     c.fetch_or(phase == bundelta::DiffPhase::Compressing, Ordering::Relaxed);
    /// }));
    /// opts.diff_bytes(b"hello old world", b"hello new world")?;
    /// assert!(compressing.load(Ordering::Relaxed));
    /// # Ok::<(), bundelta::Error>(())
    /// ```
    pub fn progress(&mut self, f: Arc<DiffProgressFn>) -> &mut DiffOptions {
        self.progress = Some(f);
        self
    }

    fn check(&self) -> Result<()> {
        if !(1..=22).contains(&self.level) {
            return Err(Error::Config {
                detail: format!("level {} is outside 1..=22", self.level),
            });
        }
        if !(MIN_WINDOW_LOG..=MAX_WINDOW_LOG).contains(&self.window_log) {
            return Err(Error::Config {
                detail: format!(
                    "window log {} is outside {MIN_WINDOW_LOG}..={MAX_WINDOW_LOG}",
                    self.window_log
                ),
            });
        }
        if let Some(b) = self.base_tags.filter(|&b| b > MAX_TAG_BITS) {
            return Err(Error::Config {
                detail: format!("base tags of {b} bits: outside 0..={MAX_TAG_BITS}"),
            });
        }
        if self.chunk_size < MIN_CHUNK_SIZE {
            return Err(Error::Config {
                detail: format!(
                    "chunk size {} is below the minimum {MIN_CHUNK_SIZE}",
                    self.chunk_size
                ),
            });
        }
        Ok(())
    }

    /// Diff two single files held in memory; returns the patch bytes.
    ///
    /// ```
    /// // 200 KB of bytes that do not compress, 10 of them changed.
    /// let noise = |i: u32| (i.wrapping_mul(2_654_435_761) >> 24) as u8;
    /// let old: Vec<u8> = (0..200_000).map(noise).collect();
    /// let mut new = old.clone();
    /// new[100_000..100_010].copy_from_slice(b"0123456789");
    /// let patch = bundelta::DiffOptions::new().diff_bytes(&old, &new)?;
    /// assert!(patch.len() < 1_000);
    /// # Ok::<(), bundelta::Error>(())
    /// ```
    pub fn diff_bytes(&self, old: &[u8], new: &[u8]) -> Result<Vec<u8>> {
        self.check()?;
        let ctx = Ctx::new(self, new.len() as u64);
        ctx.phase(DiffPhase::Matching);
        let (m, solid) = self.plan_file(&ctx, old, new, false)?;
        ctx.phase(DiffPhase::Compressing);
        Ok(self.assemble(m, solid, None, new.len() as u64)?.0)
    }

    /// Diff OLD and NEW (both files or both directories); returns the patch bytes and stats.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let dir = tempfile::tempdir()?;
    /// # let (old, new) = (dir.path().join("old"), dir.path().join("new"));
    /// # let body: String = (0..2000).map(|i| format!("fn f{i}() {{}}\n")).collect();
    /// # for (d, v) in [(&old, "1.0"), (&new, "1.1")] {
    /// #     std::fs::create_dir_all(d.join("lib"))?;
    /// #     std::fs::write(d.join("README"), "read me")?;
    /// #     std::fs::write(d.join("lib/core.txt"), format!("// version {v}\n{body}"))?;
    /// # }
    /// # std::fs::write(old.join("NOTES"), "notes of 1.0")?;
    /// # std::fs::write(new.join("CHANGES"), "new in 1.1: everything")?;
    /// # let out = dir.path().join("out");
    /// let (patch, stats) = bundelta::DiffOptions::new().diff_paths(&old, &new)?;
    /// assert_eq!(stats.patch_bytes, patch.len() as u64);
    /// let patcher = bundelta::Patcher::new();
    /// let p = patcher.open_reader(std::io::Cursor::new(patch), "patch in memory")?;
    /// patcher.apply_patch(&old, p, &out)?;
    /// assert_eq!(bundelta::bundle_digest(&out)?, bundelta::bundle_digest(&new)?);
    /// # Ok(()) }
    /// ```
    pub fn diff_paths(
        &self,
        old: impl AsRef<Path>,
        new: impl AsRef<Path>,
    ) -> Result<(Vec<u8>, DiffStats)> {
        let old = old.as_ref();
        let new = new.as_ref();
        self.check()?;
        let mo = fs::metadata(old).map_err(|e| Error::io(old, "stat", e))?;
        let mn = fs::metadata(new).map_err(|e| Error::io(new, "stat", e))?;
        if mo.is_file() && mn.is_file() {
            let o = fs::read(old).map_err(|e| Error::io(old, "read", e))?;
            let n = fs::read(new).map_err(|e| Error::io(new, "read", e))?;
            let ctx = Ctx::new(self, n.len() as u64);
            ctx.phase(DiffPhase::Matching);
            let (m, solid) = self.plan_file(&ctx, &o, &n, tree::is_exec(&mn))?;
            ctx.phase(DiffPhase::Compressing);
            let op = match &m.entries[0].kind {
                EntryKind::File { op, .. } => op.clone(),
                _ => unreachable!("plan_file makes one file entry"),
            };
            let (bytes, mut stats) = self.assemble(m, solid, None, n.len() as u64)?;
            stats.new_bytes = n.len() as u64;
            match op {
                FileOp::Unchanged => stats.unchanged = 1,
                FileOp::Delta { .. } => stats.modified = 1,
                _ => stats.added = 1,
            }
            return Ok((bytes, stats));
        }
        if mo.is_dir() && mn.is_dir() {
            return self.diff_dirs(old, new);
        }
        Err(Error::Config {
            detail: format!(
                "OLD ({}) and NEW ({}) must both be files or both be directories",
                old.display(),
                new.display()
            ),
        })
    }

    /// Diff OLD and NEW and write the patch to `out` (atomically: a temporary file next to it
    /// is fsynced and renamed over it when complete, then the directory is fsynced).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let dir = tempfile::tempdir()?;
    /// # let (old, new) = (dir.path().join("old"), dir.path().join("new"));
    /// # let body: String = (0..2000).map(|i| format!("fn f{i}() {{}}\n")).collect();
    /// # for (d, v) in [(&old, "1.0"), (&new, "1.1")] {
    /// #     std::fs::create_dir_all(d.join("lib"))?;
    /// #     std::fs::write(d.join("README"), "read me")?;
    /// #     std::fs::write(d.join("lib/core.txt"), format!("// version {v}\n{body}"))?;
    /// # }
    /// # std::fs::write(old.join("NOTES"), "notes of 1.0")?;
    /// # std::fs::write(new.join("CHANGES"), "new in 1.1: everything")?;
    /// let patch = dir.path().join("1.0-to-1.1.bdp");
    /// let stats = bundelta::DiffOptions::new().diff_to_file(&old, &new, &patch)?;
    /// assert_eq!(stats.patch_bytes, std::fs::metadata(&patch)?.len());
    /// let p = bundelta::Patcher::new().open(&patch)?;
    /// assert_eq!(p.new_digest(), bundelta::bundle_digest(&new)?);
    /// # Ok(()) }
    /// ```
    pub fn diff_to_file(
        &self,
        old: impl AsRef<Path>,
        new: impl AsRef<Path>,
        out: impl AsRef<Path>,
    ) -> Result<DiffStats> {
        let old = old.as_ref();
        let new = new.as_ref();
        let out = out.as_ref();
        let (bytes, stats) = self.diff_paths(old, new)?;
        crate::sys::write_atomic(out, "patch", 0o666, |f| f.write_all(&bytes))?;
        Ok(stats)
    }

    fn plan_file(
        &self,
        ctx: &Ctx<'_>,
        old: &[u8],
        new: &[u8],
        exec: bool,
    ) -> Result<(Manifest, Solid)> {
        let old_hash = *blake3::hash(old).as_bytes();
        let new_hash = *blake3::hash(new).as_bytes();
        let mut m = Manifest {
            new_digest: new_hash,
            ..Manifest::default()
        };
        let mut unchanged = blake3::Hasher::new();
        let mut solid = Solid::default();
        let op = if old_hash == new_hash {
            unchanged.update(&old_hash);
            FileOp::Unchanged
        } else {
            let source = if old.is_empty() { None } else { Some(old) };
            let enc = self.encode(ctx, source, &[], new);
            let delta = match enc {
                Encoded::Delta(_, t, _) => Some(t),
                _ => None,
            };
            solid.push(enc);
            if let Some(transform) = delta {
                unchanged.update(&old_hash);
                FileOp::Delta {
                    sources: Vec::new(),
                    base_size: old.len() as u64,
                    transform,
                }
            } else {
                FileOp::Add
            }
        };
        m.base_digest = *unchanged.finalize().as_bytes();
        m.entries.push(Entry {
            path: String::new(),
            kind: EntryKind::File {
                exec,
                size: new.len() as u64,
                op,
            },
        });
        Ok((m, solid))
    }

    fn diff_dirs(&self, old: &Path, new: &Path) -> Result<(Vec<u8>, DiffStats)> {
        Ctx::new(self, 0).phase(DiffPhase::Scanning);
        let old_nodes = tree::scan(old)?;
        let new_nodes = tree::scan(new)?;
        let mut stats = DiffStats::default();
        // Hash every regular file on both sides, in parallel.
        let hash_all =
            |root: &Path, nodes: &[tree::Node]| -> Result<HashMap<String, (u64, Hash)>> {
                nodes
                    .par_iter()
                    .filter(|n| matches!(n.kind, NodeKind::File { .. }))
                    .map(|n| Ok((n.path.clone(), hash_file(&root.join(&n.path))?)))
                    .collect()
            };
        let old_hashes = hash_all(old, &old_nodes)?;
        let new_hashes = hash_all(new, &new_nodes)?;
        let mut old_by_hash: HashMap<Hash, &str> = HashMap::new();
        for n in &old_nodes {
            if let Some((_, h)) = old_hashes.get(&n.path) {
                old_by_hash.entry(*h).or_insert(n.path.as_str());
            }
        }
        let old_kind: HashMap<&str, &NodeKind> = old_nodes
            .iter()
            .map(|n| (n.path.as_str(), &n.kind))
            .collect();

        // Plan.
        enum Plan<'p> {
            Unchanged,
            Copy(&'p str),
            /// Same content as the earlier new file at this index of `new_nodes`.
            CopyNew(usize),
            /// Encode from this old file (and these extra ones, when they pay; see [`cover`]).
            Encode(Option<&'p str>, Vec<&'p str>),
            Similar,
        }
        let mut plans: Vec<Option<Plan<'_>>> = Vec::with_capacity(new_nodes.len());
        // The first new file with each content OLD does not have: later ones copy it.
        let mut first_new: HashMap<Hash, usize> = HashMap::new();
        for (index, n) in new_nodes.iter().enumerate() {
            let NodeKind::File { .. } = n.kind else {
                plans.push(None);
                continue;
            };
            let (size, h) = new_hashes[&n.path];
            let twin = matches!(old_kind.get(n.path.as_str()), Some(NodeKind::File { .. }));
            let p = if twin && old_hashes[&n.path].1 == h {
                Plan::Unchanged
            } else if let Some(src) = old_by_hash.get(&h) {
                Plan::Copy(src)
            } else if size == 0 {
                Plan::Encode(None, Vec::new())
            } else if let Some(&first) = first_new.get(&h) {
                Plan::CopyNew(first)
            } else if twin && old_hashes[&n.path].0 > 0 {
                Plan::Encode(Some(n.path.as_str()), Vec::new())
            } else {
                Plan::Similar
            };
            if matches!(p, Plan::Encode(..) | Plan::Similar) && size > 0 {
                first_new.insert(h, index);
            }
            plans.push(Some(p));
        }
        // Sources for renamed files, by content sketch; extra sources for every encoded file,
        // by coverage.
        if plans
            .iter()
            .any(|p| matches!(p, Some(Plan::Similar | Plan::Encode(Some(_), _))))
        {
            let old_bytes: u64 = old_hashes.values().map(|(s, _)| s).sum();
            let sample = cover::sample_for(old_bytes);
            let (cands, feats): (Vec<similar::Candidate<'_>>, Vec<Vec<u64>>) = old_nodes
                .par_iter()
                .filter(|n| matches!(n.kind, NodeKind::File { size, .. } if size > 0))
                .map(|n| {
                    let data = fs::read(old.join(&n.path))
                        .map_err(|e| Error::io(&old.join(&n.path), "read", e))?;
                    Ok((
                        similar::Candidate {
                            path: n.path.as_str(),
                            size: data.len() as u64,
                            sketch: similar::sketch(&data),
                        },
                        cover::features(&data, sample),
                    ))
                })
                .collect::<Result<Vec<_>>>()?
                .into_iter()
                .unzip();
            let paths: Vec<(&str, u64)> = cands.iter().map(|c| (c.path, c.size)).collect();
            let index_of: HashMap<&str, u32> = paths
                .iter()
                .enumerate()
                .map(|(i, (p, _))| (*p, i as u32))
                .collect();
            let ix = similar::SimilarIndex::new(cands);
            let cix = cover::CoverIndex::new(&feats);
            drop(feats);
            // The main source of every file to encode, and its features.
            type Main<'p> = Option<(Option<&'p str>, Vec<u64>, u64)>;
            let mains: Vec<Main<'_>> = new_nodes
                .par_iter()
                .zip(plans.par_iter())
                .map(|(n, p)| {
                    let mut best = match p {
                        Some(Plan::Encode(Some(s), _)) => Some(*s),
                        Some(Plan::Similar) => None,
                        _ => return Ok(None),
                    };
                    let data = fs::read(new.join(&n.path))
                        .map_err(|e| Error::io(&new.join(&n.path), "read", e))?;
                    if matches!(p, Some(Plan::Similar)) {
                        best = ix.best(&n.path, data.len() as u64, &similar::sketch(&data));
                    }
                    Ok(Some((
                        best,
                        cover::features(&data, sample),
                        data.len() as u64,
                    )))
                })
                .collect::<Result<_>>()?;
            // Content that many new files share (a license header, common boilerplate) costs
            // little in the solid streams wherever it comes from: it picks no extra source.
            let mut all: Vec<u64> = mains
                .iter()
                .flatten()
                .flat_map(|(_, f, _)| f.iter().copied())
                .collect();
            all.par_sort_unstable();
            let shared = cover::common(&all, MAX_NEW_SHARE);
            drop(all);
            type Pick<'p> = Option<(Option<&'p str>, Vec<&'p str>)>;
            let picks: Vec<Pick<'_>> = mains
                .into_par_iter()
                .map(|m| {
                    let (mut best, mut nf, len) = m?;
                    nf.retain(|f| shared.binary_search(f).is_err());
                    let main = best.and_then(|b| index_of.get(b).copied());
                    let budget = extra_budget(len);
                    let mut extras: Vec<&str> = cix
                        .extras(&nf, main, MAX_EXTRAS, extra_min(nf.len()), |i| {
                            paths[i as usize].1 <= budget
                        })
                        .into_iter()
                        .map(|i| paths[i as usize].0)
                        .collect();
                    if best.is_none() && !extras.is_empty() {
                        best = Some(extras.remove(0));
                    }
                    Some((best, extras))
                })
                .collect();
            for (p, pick) in plans.iter_mut().zip(picks) {
                if let Some((best, extras)) = pick {
                    *p = Some(Plan::Encode(best, extras));
                }
            }
        }
        let total: u64 = new_nodes
            .iter()
            .zip(&plans)
            .filter(|(_, p)| matches!(p, Some(Plan::Encode(..))))
            .map(|(n, _)| new_hashes[&n.path].0)
            .sum();
        let ctx = Ctx::new(self, total);
        ctx.phase(DiffPhase::Matching);
        // Encode, in parallel, in order.
        let encoded: Vec<Option<Encoded>> = new_nodes
            .par_iter()
            .zip(plans.par_iter())
            .map(|(n, p)| match p {
                Some(Plan::Encode(src, extras)) => {
                    let nd = fs::read(new.join(&n.path))
                        .map_err(|e| Error::io(&new.join(&n.path), "read", e))?;
                    let read_old = |s: &str| {
                        fs::read(old.join(s)).map_err(|e| Error::io(&old.join(s), "read", e))
                    };
                    let od = src.map(read_old).transpose()?;
                    let xd = extras
                        .iter()
                        .map(|s| read_old(s))
                        .collect::<Result<Vec<_>>>()?;
                    if new_hashes[&n.path] != (nd.len() as u64, *blake3::hash(&nd).as_bytes()) {
                        return Err(Error::invalid_input(
                            &new.join(&n.path),
                            "file changed while diffing",
                        ));
                    }
                    let e = self.encode(&ctx, od.as_deref().filter(|d| !d.is_empty()), &xd, &nd);
                    Ok(Some(e))
                }
                _ => Ok(None),
            })
            .collect::<Result<_>>()?;
        // Old file table: every copy source, and every delta source at another path (a
        // same-path source is covered by the base digest), sorted by path.
        let mut table: BTreeMap<&str, u32> = BTreeMap::new();
        for ((n, p), e) in new_nodes.iter().zip(&plans).zip(&encoded) {
            match (p, e) {
                (Some(Plan::Copy(s)), _) => {
                    table.insert(s, 0);
                }
                (Some(Plan::Encode(Some(s), extras)), Some(Encoded::Delta(_, _, true))) => {
                    table.insert(s, 0);
                    for x in extras {
                        table.insert(x, 0);
                    }
                }
                (Some(Plan::Encode(Some(s), _)), Some(Encoded::Delta(..))) if *s != n.path => {
                    table.insert(s, 0);
                }
                _ => {}
            }
        }
        let mut m = Manifest::default();
        // Every old file relied upon, in base-digest order: the table's files first, then
        // same-path files in entry order (the base digest and the full form's base tags).
        let mut relied: Vec<Hash> = Vec::new();
        for (i, (path, idx)) in table.iter_mut().enumerate() {
            *idx = i as u32;
            let (size, hash) = old_hashes[*path];
            relied.push(hash);
            m.old_files.push(OldFile {
                path: path.to_string(),
                size,
            });
        }
        let mut solid = Solid::default();
        let mut digest = TreeDigest::new();
        for ((n, p), e) in new_nodes.iter().zip(&plans).zip(encoded) {
            let kind = match &n.kind {
                NodeKind::Dir => {
                    digest.dir(&n.path);
                    stats.dirs += 1;
                    EntryKind::Dir
                }
                NodeKind::Symlink { target } => {
                    digest.symlink(&n.path, target);
                    stats.symlinks += 1;
                    EntryKind::Symlink {
                        target: target.clone(),
                    }
                }
                NodeKind::File { exec, .. } => {
                    let (size, hash) = new_hashes[&n.path];
                    digest.file(&n.path, *exec, size, &hash);
                    stats.new_bytes += size;
                    let op = match (p, e) {
                        (Some(Plan::Unchanged), _) => {
                            relied.push(hash);
                            stats.unchanged += 1;
                            FileOp::Unchanged
                        }
                        (Some(Plan::Copy(s)), _) => {
                            stats.copied += 1;
                            FileOp::Copy { source: table[s] }
                        }
                        (Some(Plan::CopyNew(first)), _) => {
                            stats.copied_new += 1;
                            FileOp::CopyNew {
                                entry: *first as u32,
                            }
                        }
                        (Some(Plan::Encode(src, extras)), Some(enc @ Encoded::Delta(..))) => {
                            stats.modified += 1;
                            let (transform, multi) = match enc {
                                Encoded::Delta(_, t, multi) => (t, multi),
                                Encoded::Add(_) => (0, false),
                            };
                            solid.push(enc);
                            let src = src.expect("a delta has a source");
                            if multi {
                                stats.multi_source += 1;
                                FileOp::Delta {
                                    sources: std::iter::once(src)
                                        .chain(extras.iter().copied())
                                        .map(|s| table[s])
                                        .collect(),
                                    base_size: 0,
                                    transform,
                                }
                            } else if src == n.path {
                                let (base_size, h) = old_hashes[src];
                                relied.push(h);
                                FileOp::Delta {
                                    sources: Vec::new(),
                                    base_size,
                                    transform,
                                }
                            } else {
                                FileOp::Delta {
                                    sources: vec![table[src]],
                                    base_size: 0,
                                    transform,
                                }
                            }
                        }
                        (Some(Plan::Encode(..)), Some(enc @ Encoded::Add(_))) => {
                            stats.added += 1;
                            solid.push(enc);
                            FileOp::Add
                        }
                        _ => unreachable!("every file has an encoded plan"),
                    };
                    EntryKind::File {
                        exec: *exec,
                        size,
                        op,
                    }
                }
            };
            m.entries.push(Entry {
                path: n.path.clone(),
                kind,
            });
        }
        let new_paths: std::collections::HashSet<&str> =
            new_nodes.iter().map(|n| n.path.as_str()).collect();
        m.deleted = old_nodes
            .iter()
            .filter(|n| !new_paths.contains(n.path.as_str()))
            .map(|n| n.path.clone())
            .collect();
        stats.deleted = m.deleted.len() as u64;
        let mut base = blake3::Hasher::new();
        for h in &relied {
            base.update(h);
        }
        m.base_digest = *base.finalize().as_bytes();
        m.new_digest = digest.finish();
        let tags = TagSource {
            relied,
            listing: old_nodes
                .iter()
                .map(|n| listing_tag(n, old_hashes.get(&n.path).map(|(_, h)| h)))
                .collect(),
        };
        let old_list = Some((old_nodes.as_slice(), tags));
        ctx.phase(DiffPhase::Compressing);
        let (bytes, s) = self.assemble(m, solid, old_list, stats.new_bytes)?;
        stats.patch_bytes = s.patch_bytes;
        stats.apply_memory = s.apply_memory;
        Ok((bytes, stats))
    }

    /// Header + compressed manifest + streams + trailer.
    fn assemble(
        &self,
        mut m: Manifest,
        solid: Solid,
        old_list: Option<(&[ListEntry], TagSource)>,
        new_total: u64,
    ) -> Result<(Vec<u8>, DiffStats)> {
        let dir = old_list.is_some();
        // The three streams are compressed at the same time: the extra stream in large
        // segments (see EXTRA_SEGMENT) while the diff stream's segments keep the other core busy.
        let (ctrl, (diff, extra)) = rayon::join(
            || self.compress_solid(&solid.ctrl, Model::Controls, SEGMENT),
            || {
                rayon::join(
                    || self.compress_solid(&solid.diff, Model::Sparse, SEGMENT),
                    || self.compress_solid(&solid.extra, Model::Bytes, EXTRA_SEGMENT),
                )
            },
        );
        let streams = [ctrl, diff, extra];
        let stream_bytes: usize = streams.iter().map(|s| s.1.len()).sum();
        // Base tags: decided per form, from the stream bytes only (deterministic).
        let tag_bits = |units: usize| -> u8 {
            match (self.base_tags, units) {
                (_, 0) => 0,
                (Some(b), _) => b,
                (None, n) => auto_tag_bits(n, stream_bytes),
            }
        };
        let mut rel_tags = BaseTags::default();
        if let Some((_, src)) = &old_list {
            m.base_tags = BaseTags::from_hashes(tag_bits(src.relied.len()), &src.relied);
            rel_tags = BaseTags::from_hashes(tag_bits(src.listing.len()), &src.listing);
        }
        let mut tagged = m.base_tags.bits > 0;
        // A manifest that does not shrink is stored as it is (its two lengths are then equal).
        // Each candidate manifest is packed with zstd, or LZMA2 when that is smaller (flag
        // FLAG_MANIFEST_LZMA), or stored as it is when neither shrinks it.
        // Header flag bit 6 when some file uses reference prediction (both the final header
        // and the probe that checks the relative manifest need it).
        let uses = |t: u8| {
            m.entries.iter().any(|e| {
                matches!(
                    e.kind,
                    EntryKind::File {
                        op: FileOp::Delta { transform, .. },
                        ..
                    } if transform == t
                )
            })
        };
        // Header flag bit 7 likewise for the inflate transform.
        let transform_flags = if uses(TRANSFORM_REFS) {
            FLAG_EXE_REFS
        } else {
            0
        } | if uses(TRANSFORM_INFLATE) {
            FLAG_INFLATE
        } else {
            0
        };
        let lzma_ok = self.codec == Codec::Lzma;
        let pack = |raw: Vec<u8>| -> (Vec<u8>, Vec<u8>, bool) {
            let z = compress_zstd(&raw, self.level, self.window_log);
            let l = if lzma_ok {
                Some(compress_lzma(
                    &raw,
                    self.level,
                    self.window_log,
                    Model::Bytes,
                ))
            } else {
                None
            };
            match l {
                Some(l) if l.len() < z.len() && l.len() < raw.len() => (l, raw, true),
                _ if z.len() >= raw.len() => (raw.clone(), raw, false),
                _ => (z, raw, false),
            }
        };
        let (mut mz, mut raw, mut lzma) = pack(m.encode_sized(true));
        // The form relative to OLD's file list, when smaller (and it decodes back to `m`).
        if let Some((list, _)) = &old_list {
            if let Some(rel) = m.encode_relative_sized(list, &rel_tags, true) {
                let (rz, rel, rel_lzma) = pack(rel);
                if rz.len() < mz.len() {
                    let rel_tagged = rel_tags.bits > 0;
                    let probe = Header {
                        minor: VERSION_MINOR,
                        flags: FLAG_DIRECTORY
                            | FLAG_RELATIVE_SIZES
                            | transform_flags
                            | if rel_tagged { FLAG_BASE_TAGS } else { 0 },
                        window_log: self.window_log,
                        codecs: [CODEC_RAW; 3],
                        manifest_len: 0,
                        manifest_raw_len: rel.len() as u64,
                        new_total,
                        stream_lens: [0; 3],
                    };
                    let back = Manifest::decode_with_old(&rel, &probe, Some(list));
                    let want = Manifest {
                        base_tags: rel_tags.clone(),
                        ..m.clone()
                    };
                    if back.as_ref().ok() == Some(&want) {
                        (mz, raw, lzma) = (rz, rel, rel_lzma);
                        tagged = rel_tagged;
                        m = want;
                    } else {
                        debug_assert!(false, "relative manifest does not decode back: {back:?}");
                    }
                }
            }
        }
        let header = Header {
            minor: VERSION_MINOR,
            flags: FLAG_RELATIVE_SIZES
                | if dir { FLAG_DIRECTORY } else { 0 }
                | if lzma && mz.len() != raw.len() {
                    FLAG_MANIFEST_LZMA
                } else {
                    0
                }
                | if self.signing_key.is_some() {
                    FLAG_SIGNED
                } else {
                    0
                }
                | if streams[1].2 { FLAG_DIFF_RUNS } else { 0 }
                | if tagged { FLAG_BASE_TAGS } else { 0 }
                | transform_flags,
            window_log: self.window_log,
            codecs: [streams[0].0, streams[1].0, streams[2].0],
            manifest_len: mz.len() as u64,
            manifest_raw_len: raw.len() as u64,
            new_total,
            stream_lens: [
                streams[0].1.len() as u64,
                streams[1].1.len() as u64,
                streams[2].1.len() as u64,
            ],
        };
        // Self-check: what we write must pass the reader's validation.
        m.validate(&header)?;
        let total = header.patch_len().unwrap_or(0) as usize;
        let mut out = Vec::with_capacity(total);
        out.extend_from_slice(&header.encode());
        out.extend_from_slice(&mz);
        for (_, st, _) in &streams {
            out.extend_from_slice(st);
        }
        if let Some(key) = &self.signing_key {
            let digest = *blake3::hash(&out).as_bytes();
            out.extend_from_slice(&key.sign_digest(crate::SIGNATURE_DOMAIN, &digest));
        }
        let t = blake3::hash(&out);
        out.extend_from_slice(t.as_bytes());
        let stats = DiffStats {
            patch_bytes: out.len() as u64,
            apply_memory: crate::apply::memory_needed(&header),
            ..DiffStats::default()
        };
        Ok((out, stats))
    }

    /// Compress one solid stream as independent frames of at most `segment` input bytes
    /// each (compressed in parallel; the split depends only on the length, so output is
    /// deterministic), or store it raw when that is not larger. Returns the codec, the bytes,
    /// and whether they hold the zero-run coding of `data` (diff stream only, see
    /// [`zero_runs`]).
    fn compress_solid(&self, data: &[u8], model: Model, segment: usize) -> (u8, Vec<u8>, bool) {
        let sparse = model == Model::Sparse;
        let segments = |data: &[u8], f: &(dyn Fn(&[u8]) -> Vec<u8> + Sync)| -> Vec<u8> {
            // Equal segments of at most SEGMENT bytes, an even number of them when more than
            // one (so two or four cores finish together).
            let n = match data.len().div_ceil(segment) {
                0 | 1 => 1,
                n => n.next_multiple_of(2),
            };
            let seg = data.len().div_ceil(n).max(1);
            data.par_chunks(seg).map(f).collect::<Vec<_>>().concat()
        };
        let mut best = (CODEC_RAW, data.to_vec(), false);
        let mut consider = |id: u8, bytes: Vec<u8>, runs: bool| {
            if bytes.len() < best.1.len() {
                best = (id, bytes, runs);
            }
        };
        match self.codec {
            Codec::Zstd => consider(
                CODEC_ZSTD,
                segments(data, &|c| compress_zstd(c, self.level, self.window_log)),
                false,
            ),
            Codec::Lzma if sparse && !data.is_empty() => {
                // The diff stream is mostly zero runs, on which LZMA's optimal parser spends
                // most of a diff's CPU. LZMA2 gets its zero-run coding instead (whole diffs
                // 1.7-4.5x less CPU on the corpus, patches mostly smaller); bzip2 (cheap, it
                // wins on some executables) gets the plain bytes. bzip2 is tried on the diff
                // stream only, so that a patch never needs more than one 4.5 MiB bzip2 decoder.
                let (l, b) = rayon::join(
                    || {
                        let runs = zero_runs(data);
                        segments(&runs, &|c| {
                            compress_lzma(c, self.level, self.window_log, Model::Sparse)
                        })
                    },
                    || segments(data, &compress_bzip2),
                );
                consider(CODEC_LZMA2, l, true);
                consider(CODEC_BZIP2, b, false);
            }
            Codec::Lzma => consider(
                CODEC_LZMA2,
                segments(data, &|c| {
                    compress_lzma(c, self.level, self.window_log, model)
                }),
                false,
            ),
        }
        best
    }

    /// Encode one file: a delta from `source`, or from `source` followed by `extras` when
    /// that is estimated smaller, or the content itself when no delta is smaller. Sizes are
    /// compared with a quick zstd level 3 of each candidate; the chosen bytes are compressed
    /// later, together with every other file's, at the configured level.
    fn encode(
        &self,
        ctx: &Ctx<'_>,
        source: Option<&[u8]>,
        extras: &[Vec<u8>],
        new: &[u8],
    ) -> Encoded {
        let Some(source) = source.filter(|s| !s.is_empty() && !new.is_empty()) else {
            ctx.advance(new.len() as u64);
            return Encoded::Add(new.to_vec());
        };
        // The inflated delta of gzip files (usually None: no gzip pair) beside the plain one.
        let ((mut delta, ctrls), inflated) = rayon::join(
            || self.file_delta(ctx, source, new),
            || self.inflate_delta(source, new),
        );
        let est = |d: &[u8]| {
            if d.is_empty() {
                0
            } else {
                compress_zstd(d, 3, self.window_log).len()
            }
        };
        // Reference prediction for executables, when it makes the diff stream smaller.
        let mut transform = 0;
        let mut est_diff = est(&delta.diff);
        if let Some(kind) = refs::kind(source, new).filter(|_| self.exe_refs) {
            let attempt = |kinds: u8, min_len: u64| {
                let r = refs::params(kinds, source, new, &ctrls, min_len);
                let diff = refs::predicted_diff(&r, source, new, &ctrls);
                let mut params = Vec::new();
                r.encode(&mut params);
                (est(&params) + est(&diff), params, diff)
            };
            // The map's resolution first (finer costs more breakpoints), then absolute
            // pointers on top of the best; ties keep the earlier, so the choice is
            // deterministic.
            let tried: Vec<_> = refs::MIN_LENS
                .par_iter()
                .map(|&m| (m, attempt(kind, m)))
                .collect();
            let (m, mut best) = tried
                .into_iter()
                .reduce(|a, b| if b.1 .0 < a.1 .0 { b } else { a })
                .expect("MIN_LENS is not empty");
            let abs = attempt(kind | REFS_ABS64, m);
            if abs.0 < best.0 {
                best = abs;
            }
            if best.0 < est_diff {
                est_diff = best.0;
                transform = TRANSFORM_REFS;
                delta.ctrl = [best.1, std::mem::take(&mut delta.ctrl)].concat();
                delta.diff = best.2;
            }
        }
        let mut est_delta = est(&delta.ctrl) + est_diff + est(&delta.extra);
        // Extra sources (reference prediction allows one source only): kept when the delta
        // from all of them is estimated smaller than from the main source alone.
        let mut multi = false;
        if !extras.is_empty() && transform == 0 {
            let mut cat =
                Vec::with_capacity(source.len() + extras.iter().map(Vec::len).sum::<usize>());
            cat.extend_from_slice(source);
            for x in extras {
                cat.extend_from_slice(x);
            }
            let (d, _) = self.file_delta(&Ctx::quiet(), &cat, new);
            let e = est(&d.ctrl) + est(&d.diff) + est(&d.extra);
            if e < est_delta {
                (delta, est_delta, multi) = (d, e, true);
            }
        }
        // Gzip files: the delta between the inflated contents, when it is estimated smaller
        // (the recipes included).
        if let Some(x) = inflated {
            let e = est(&x.ctrl) + est(&x.diff) + est(&x.extra);
            if e < est_delta {
                (delta, est_delta, multi, transform) = (x, e, false, TRANSFORM_INFLATE);
            }
        }
        let est_whole = est(new).min(new.len());
        if est_delta < est_whole {
            Encoded::Delta(delta, transform, multi)
        } else {
            Encoded::Add(new.to_vec())
        }
    }

    /// The streams of `new` as a transform-2 delta from `source` (both gzip or zip files,
    /// with a stream of `new` that stock zlib reproduces), recipes first in the controls.
    fn inflate_delta(&self, source: &[u8], new: &[u8]) -> Option<Solid> {
        if !self.inflate {
            return None;
        }
        let (fo, fnew) = inflate::stream_pair(source, new)?;
        // When NEW's largest stream starts as a candidate setting (zlib or miniz) makes it, the
        // parameter search (one core per stream) runs beside the delta to NEW with every stream
        // inflated, which is NEW's expanded form when settings make them all (the common case);
        // otherwise the delta is made again. NEW's expanded form is built after the full one
        // is dropped, so that only one is held at a time.
        let remade = inflate::likely_remade(new, &fnew);
        let (params, mut structures) = if remade {
            let (params, (o, all)) = rayon::join(
                || inflate::new_params(new, &fnew),
                || {
                    let o = inflate::expand_old(source, &fo, None);
                    let full = inflate::expand_old(new, &fnew, None).bytes;
                    let d = self.file_delta(&Ctx::quiet(), &o.bytes, &full).0;
                    (o, d)
                },
            );
            if params.iter().all(Option::is_some) {
                let m: Vec<_> = params.into_iter().map(|p| p.map(Method::Make)).collect();
                let n = inflate::expand_new_with(new, &fnew, &m);
                return Some(recipe_delta(source, &o.segs, &n.segs, all));
            }
            (params, None)
        } else {
            // Another encoder's streams, most likely: the structures (both sides) beside the
            // parameter search, then one delta.
            let (params, s) = rayon::join(
                || inflate::new_params(new, &fnew),
                || {
                    rayon::join(
                        || inflate::structures(new, &fnew, None),
                        || inflate::structures(source, &fo, None),
                    )
                },
            );
            (params, Some(s))
        };
        // Streams no zlib setting makes are encoded from their token structure, diffed
        // against the structure of the source's streams.
        let (mut ns, os) = match structures.take() {
            Some(s) => s,
            None => {
                let missing: Vec<bool> = params.iter().map(Option::is_none).collect();
                let mut makers: Vec<inflate::Maker> = Vec::new();
                for &p in params.iter().flatten() {
                    if !makers.contains(&p) {
                        makers.push(p);
                    }
                }
                rayon::join(
                    || inflate::structures(new, &fnew, Some(&missing)),
                    || {
                        let worth = inflate::worth_structures(source, &fo, &makers);
                        inflate::structures(source, &fo, Some(&worth))
                    },
                )
            }
        };
        let m: Vec<_> = params
            .iter()
            .zip(ns.iter_mut())
            .map(|(p, s)| match p {
                Some(p) => Some(Method::Make(*p)),
                None => s.take().map(Method::Tokens),
            })
            .collect();
        let tokens = m.iter().any(|m| matches!(m, Some(Method::Tokens(_))));
        if !tokens && params.iter().all(Option::is_none) {
            return None;
        }
        let o = inflate::expand_old(source, &fo, tokens.then_some(&os[..]));
        let n = inflate::expand_new_with(new, &fnew, &m);
        drop(m);
        let d = self.file_delta(&Ctx::quiet(), &o.bytes, &n.bytes).0;
        Some(recipe_delta(source, &o.segs, &n.segs, d))
    }
    /// Scan `new` against `source` in parallel chunks and join the chunks' controls into one
    /// control list for the file (see [`join_controls`]).
    fn file_delta(&self, ctx: &Ctx<'_>, source: &[u8], new: &[u8]) -> (Solid, Vec<Control>) {
        let ix = matcher::Index::new(source);
        // Equal chunks of at most chunk_size bytes (the split depends only on the length).
        let n = new.len().div_ceil(self.chunk_size).max(1);
        let chunk = new.len().div_ceil(n).max(1);
        let parts: Vec<matcher::Streams> = new
            .par_chunks(chunk)
            .map(|c| {
                // One scan per slack, each pruned of matches that do not pay for their
                // control ([`matcher::prune`]); keep the one whose streams compress smallest (a
                // quick zstd-1 estimate). The unpruned scans as further candidates made the
                // corpus larger (package-tree-big 414,086 -> 423,637 bytes, shared-lib-deb-small
                // 126,548 -> 127,414: the estimate misjudges them) and only the tiny golden
                // file vector smaller (316 -> 287). Ties keep the first, so the choice is
                // deterministic.
                let mut best: Option<(usize, matcher::Streams)> = None;
                let candidates = matcher::scans(&ix, c, &matcher::SLACKS)
                    .into_iter()
                    .map(|s| matcher::prune(source, c, s, &matcher::COSTS));
                for s in candidates {
                    let mut ctl = Vec::new();
                    put_controls(&mut ctl, &s.ctrls);
                    let est = |d: &[u8]| {
                        if d.is_empty() {
                            0
                        } else {
                            compress_zstd(d, 1, self.window_log).len()
                        }
                    };
                    let e = est(&ctl) + est(&zero_runs(&s.diff)) + est(&s.extra);
                    if best.as_ref().is_none_or(|(b, _)| e < *b) {
                        best = Some((e, s));
                    }
                }
                ctx.advance(c.len() as u64);
                best.expect("SLACKS is not empty").1
            })
            .collect();
        let mut out = Solid::default();
        let mut ctrls = Vec::new();
        for p in parts {
            ctrls.push(p.ctrls);
            out.diff.extend_from_slice(&p.diff);
            out.extra.extend_from_slice(&p.extra);
        }
        let ctrls = join_controls(ctrls);
        put_controls(&mut out.ctrl, &ctrls);
        (out, ctrls)
    }
}

/// A feature held by more new files than this picks no extra source: it is cheap in the solid
/// streams wherever it comes from. Measured (bytes of patch at 2 / 4 / 8): rxjs 6.6.7 -> 7.0.0
/// 471,067 / 471,483 / 471,860, webpack 4.46.0 -> 5.0.0 380,887 / 380,923 / 381,103,
/// package-tree-big 443,055 / 429,988 / 428,267. Without this rule, webpack 5's new license
/// header picked an old file holding it as an extra source of most files (384,616; 382,745
/// without extra sources).
const MAX_NEW_SHARE: usize = 4;

/// Most extra sources of one file (the format allows 64).
const MAX_EXTRAS: usize = 3;

/// Fewest uncovered features (one per 32 bytes on average) an extra source must hold for a
/// new file of `features` features: 4, or 1/32 of the file, whichever is more.
fn extra_min(features: usize) -> usize {
    (features / 32).max(4)
}

/// Largest old file tried as an extra source of a new file of `len` bytes: 4 times its size,
/// or 64 KiB. Diff time and memory grow with the source (apply memory does not), and a large
/// source mostly lends a small file a few short matches whose far seeks cost more in the
/// solid control stream than the per-file estimate says. Measured before the
/// [`MAX_NEW_SHARE`] rule, extra sources for modified files only: rxjs's patch was 473,668
/// bytes at 8 times or 1 MiB, 471,750 at 4 times or 64 KiB (471,873 without extra sources);
/// package-tree-big 433,462 and 430,670 (455,760).
fn extra_budget(len: u64) -> u64 {
    (len * 4).max(64 << 10)
}

/// Most input bytes per independently compressed segment of a solid stream (1 MiB): small
/// enough to keep two or more cores busy on a few-MB stream, at a cost of about 0.4% in size.
const SEGMENT: usize = 1 << 20;

/// Segment size of the extra stream (8 MiB). The extra stream holds new bytes that matched
/// nothing in OLD; its repeats are far apart, and cutting it every 1 MiB lost them:
/// shared-lib-big's extra stream 886,913 -> 861,989 bytes in one segment, js-bundle-big's
/// 582,584 -> 573,171. It is compressed alongside the diff stream, so both cores stay busy.
const EXTRA_SEGMENT: usize = 8 << 20;

/// Join per-chunk control lists into one list for a file, in the form the applier accepts:
/// every chunk's scan started at source position 0, so each chunk but the last ends with a
/// seek back to 0; controls that produce nothing are folded into the previous control's seek
/// (only a file's first control may produce nothing); the final seek is 0.
fn join_controls(chunks: Vec<Vec<Control>>) -> Vec<Control> {
    let n = chunks.len();
    let mut out: Vec<Control> = Vec::new();
    for (k, mut cs) in chunks.into_iter().enumerate() {
        if k + 1 < n {
            let mut pos: i64 = 0;
            let last = cs.len().saturating_sub(1);
            for (i, c) in cs.iter_mut().enumerate() {
                pos += c.diff as i64;
                if i == last {
                    c.seek = -pos;
                } else {
                    pos += c.seek;
                }
            }
        }
        for c in cs {
            match out.last_mut() {
                Some(prev) if c.diff == 0 && c.extra == 0 => prev.seek += c.seek,
                _ => out.push(c),
            }
        }
    }
    if let Some(last) = out.last_mut() {
        last.seek = 0;
    }
    out
}

/// One file's encoding.
enum Encoded {
    /// The content itself, carried in the extra stream.
    Add(Vec<u8>),
    /// Controls, diff bytes and extra bytes, the delta transform they were made with
    /// (0, or [`TRANSFORM_REFS`] with its parameters at the start of the controls), and whether
    /// the source is the main one followed by the extra ones (else the main one alone).
    Delta(Solid, u8, bool),
}

/// Raw (uncompressed) control, diff and extra streams.
#[derive(Default)]
struct Solid {
    ctrl: Vec<u8>,
    diff: Vec<u8>,
    extra: Vec<u8>,
}

impl Solid {
    fn push(&mut self, e: Encoded) {
        match e {
            Encoded::Add(content) => self.extra.extend_from_slice(&content),
            Encoded::Delta(d, _, _) => {
                self.ctrl.extend_from_slice(&d.ctrl);
                self.diff.extend_from_slice(&d.diff);
                self.extra.extend_from_slice(&d.extra);
            }
        }
    }
}

struct Ctx<'a> {
    done: AtomicU64,
    total: u64,
    progress: Option<&'a DiffProgressFn>,
}

impl<'a> Ctx<'a> {
    fn new(o: &'a DiffOptions, total: u64) -> Ctx<'a> {
        Ctx {
            done: AtomicU64::new(0),
            total,
            progress: o.progress.as_deref(),
        }
    }

    /// A context that reports nothing (for trial encodings).
    fn quiet() -> Ctx<'static> {
        Ctx {
            done: AtomicU64::new(0),
            total: 0,
            progress: None,
        }
    }

    fn advance(&self, n: u64) {
        let d = self.done.fetch_add(n, Ordering::Relaxed) + n;
        if let Some(p) = self.progress {
            p(DiffPhase::Matching, d.min(self.total), self.total);
        }
    }

    /// Reports the start of `phase` (matching: with the total to come).
    fn phase(&self, phase: DiffPhase) {
        if let Some(p) = self.progress {
            let total = if phase == DiffPhase::Matching {
                self.total
            } else {
                0
            };
            p(phase, 0, total);
        }
    }
}

/// A transform-2 delta: both recipes first in the controls, then the delta's own.
fn recipe_delta(
    source: &[u8],
    old: &[crate::format::OldSeg],
    new: &[crate::format::NewSeg],
    d: Solid,
) -> Solid {
    let old = inflate::mark_headers(source, old);
    let mut ctrl = Vec::new();
    put_old(&mut ctrl, &old);
    put_new(&mut ctrl, new, &old);
    ctrl.extend_from_slice(&d.ctrl);
    Solid { ctrl, ..d }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_tag_bits_policy() {
        // Small trees: TAG_MIN_BYTES buys up to 8 bits, whatever the streams.
        assert_eq!(auto_tag_bits(13, 0), 8);
        assert_eq!(auto_tag_bits(64, 100), 8);
        assert_eq!(auto_tag_bits(206, 334), 2);
        // Otherwise 1/64 of the streams, at least 1 bit while that fits under TAG_FREE_BYTES...
        assert_eq!(auto_tag_bits(2000, 0), 1);
        assert_eq!(auto_tag_bits(2364, 10_500), 1);
        assert_eq!(auto_tag_bits(3000, 1000), 1);
        // ...and up to 8 bits on big streams.
        assert_eq!(auto_tag_bits(5000, 470_000), 8);
        assert_eq!(auto_tag_bits(2000, 64_000), 4);
        // Many entries, tiny change: none.
        assert_eq!(auto_tag_bits(50_200, 200), 0);
        assert_eq!(auto_tag_bits(9000, 1000), 0);
        // ...but a quarter of the streams is always affordable.
        assert_eq!(auto_tag_bits(50_200, 100_400), 1);
    }
}
