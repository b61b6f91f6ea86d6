//! Verified, streaming, bounded-memory apply.
//!
//! # Memory model
//!
//! The applier never maps or loads a whole file. Old files are read with positioned reads
//! through 64 KiB buffers, the patch is read section by section with positioned reads, and each
//! output file is written sequentially. Peak heap is bounded by
//!
//! ```text
//! memory_needed = 24 × manifest_raw_len                (manifest bytes + decoded entries)
//!               + Σ decoder_memory(codec_s)             (control, diff, extra decoders)
//!               + 512 KiB                               (zero-run pairs, only with that flag)
//!               + 512 KiB                               (I/O buffers)
//!               + 513 KiB                               (one executable's region map, only
//!                                                        with FLAG_EXE_REFS: REFS_MEMORY)
//!               + 1,552 KiB                             (one file's two inflate recipes, an
//!                                                        inflater and a deflater or token
//!                                                        encoder, only with FLAG_INFLATE:
//!                                                        INFLATE_MEMORY_TOTAL)
//! ```
//!
//! where a decoder needs `2^window_log + 512 KiB` for zstd and LZMA2, `4.5 MiB` for bzip2 and
//! nothing for a raw stream ([`crate::format::decoder_memory`]), and `window_log`, the codecs
//! and `manifest_raw_len` come from the patch header. The manifest's share
//! ([`crate::format::manifest_memory`]) is enforced, not estimated: the raw bytes take at most
//! twice their length, and decoding charges every allocation it makes (paths, entries, link
//! targets, tables) to a [`crate::format::Budget`] of the other 22 × `manifest_raw_len` before
//! making it, refusing the manifest as corrupt when it would go past (a path shared with the
//! previous one costs two bytes to store and up to 4 KiB to expand, so the raw length alone
//! bounds nothing). Real manifests take 5 to 10 bytes per raw byte to decode. The patch is
//! refused before anything is written when this exceeds [`Patcher::memory_limit`] (default
//! [`DEFAULT_MEMORY_LIMIT`], 12 MiB, which admits the default `--window-log 21` with a manifest
//! of up to about 150 KiB, some 10,000 paths written out in full; a manifest relative to OLD's
//! file list only counts the paths that changed). Process RSS is that plus the program itself
//! (about 3 MiB).
//!
//! With [`Patcher::parallel`] (the default on a machine with more than one core) each coded
//! stream is decoded on a thread of its own, handing 32 KiB chunks to the applying thread:
//! [`PIPE_MEMORY`] (384 KiB) more, taken only when the sum still fits under the limit; else
//! the apply runs on one thread as before. The bytes produced, the checks, what is accepted or
//! refused and the errors are the same either way: on one thread each coded stream is read
//! through the same 32 KiB fills as on its own (a decoder's behaviour can depend on its
//! output buffer sizes: zstd decodes a frame that fits the buffer in one pass, before its
//! window check).
//!
//! For a manifest relative to OLD's file list, the applier also holds that list and the entries
//! resolved from it: [`listing_memory`], `LISTING_ENTRY_BYTES` (160) plus twice the path bytes
//! per entry of OLD. That depends on OLD, not on the patch: by default it is not counted (the
//! limit bounds what the patch declares); with [`Patcher::strict_memory`] it is added once OLD
//! is scanned and the total is checked against the same limit, still before anything is
//! written. Measured: 15.5 MiB peak RSS out of place, 17 MiB in place, for a tree of 50,200
//! entries (the estimate says 11.1 MB of heap; the rest is the program); under 8 MiB for the
//! corpus trees.
//!
//! # Trust model
//!
//! A patch is untrusted. Before anything is created: the whole-patch blake3 trailer is checked
//! (and the signature, when one is required) in one pass that reads the header and the
//! manifest into memory, where they stay: they are never read from the patch file again, so a
//! process that rewrites the file after the check changes nothing that was verified. A patch
//! read once from a stream ([`Patcher::open_reader`]) cannot be checked before it is read: its
//! trailer and signature are checked when the rebuild has consumed it, still before anything
//! is committed (see `streamed.rs`). The
//! manifest is decoded from those bytes with every number bounded, every path validated, and
//! every old file the patch relies on is hashed and compared. Output is written into a fresh
//! staging location next to the destination; every file is hashed as it is written and
//! compared; the bundle digest is compared; files and directories are fsynced; only then is
//! the staging location renamed into place. On any error the staging location is removed and
//! OLD is untouched. The streams are read from the patch file while applying and are not
//! authenticated again: bytes changed there after the check can only produce output that
//! differs from the verified manifest's hashes, which is refused before anything is committed.
//!
//! # The file system is not trusted either
//!
//! Another process may change OLD, or the staging tree, while an apply runs. OLD is opened
//! once (`Old`: a directory handle, or the file itself for a single-file bundle) and every
//! path of it is resolved beneath that handle without following a symlink at any component;
//! the staging tree is written the same way beneath a handle on it (`src/sys/`). Files
//! are opened non-blocking and refused unless `fstat` of the handle says regular file (a FIFO
//! never blocks the apply). Each file relied upon is identified as it is hashed (device,
//! inode, size, mtime, ctime, mode) and, when opened again to be copied, used as a delta
//! source or hard-linked, must still be that file unchanged, else [`Error::WrongBase`].
//! What that guarantees: nothing outside OLD is ever read, copied or linked, and nothing
//! outside the staging tree is ever written; copies and delta outputs are hashed as written
//! (the bundle digest covers them all); a hard link (in-place apply) is made to the very inode
//! that was hashed, after checking it was not written to since (its ctime). What it cannot:
//! a process that can write OLD's files can still change a hard-linked inode after the link
//! (it is the same file in both trees), or write through a memory mapping without moving the
//! times until writeback.

mod base;
mod build;
mod open;
mod single;
mod stream;
mod streamed;
pub use stream::Remade;
mod write;

use std::fs;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::format::{
    Hash, Header, ListEntry, ListKind, Manifest, FLAG_DIFF_RUNS, FLAG_EXE_REFS, FLAG_INFLATE,
    INFLATE_MEMORY_TOTAL, REFS_MEMORY, ZERO_RUN_BLOCK,
};
use crate::readat::ReadAt;

pub use self::base::Unknown;
pub(crate) use self::build::LinkMode;
use crate::sys::{rename_noreplace, sync_parent};

/// Heap an apply holds per entry of OLD's file list under a relative manifest, besides the
/// path bytes (counted twice: the listing and the resolved entries): measured about 220 bytes
/// per entry of short paths in all on a 50,200-entry tree.
pub const LISTING_ENTRY_BYTES: u64 = 160;

/// Heap for OLD's file list and the entries resolved from it: [`LISTING_ENTRY_BYTES`] plus
/// twice the path (and link target) bytes, per entry. It depends on OLD, not on the patch, and
/// is added to [`memory_needed`] against the limit once OLD is scanned.
///
/// ```
/// use bundelta::format::{ListEntry, ListKind};
/// let old_list = [
///     ListEntry { path: "bin".into(), kind: ListKind::Dir },
///     ListEntry { path: "bin/app".into(), kind: ListKind::File { exec: true, size: 1 << 30 } },
/// ];
/// // 160 bytes per entry plus twice its path ("bin", "bin/app"): file sizes do not count.
/// let expected = 2 * bundelta::LISTING_ENTRY_BYTES + 2 * (3 + 7);
/// assert_eq!(bundelta::listing_memory(&old_list), expected);
/// ```
pub fn listing_memory(list: &[ListEntry]) -> u64 {
    list.iter()
        .map(|e| {
            let target = match &e.kind {
                ListKind::Symlink { target } => target.len() as u64,
                _ => 0,
            };
            LISTING_ENTRY_BYTES + 2 * (e.path.len() as u64 + target)
        })
        .fold(0u64, u64::saturating_add)
}

/// Heap of the buffers that hand decoded stream bytes from the decoding threads to the
/// applying one when the streams are decoded in parallel ([`Patcher::parallel`]): 384 KiB,
/// three streams with at most four 32 KiB chunks each (one being filled, one queued, one
/// being read, one freed but not yet returned).
pub const PIPE_MEMORY: u64 = 3 * 4 * (PIPE_CHUNK as u64);

/// Bytes per hand-over chunk of a stream decoded on its own thread.
pub(crate) const PIPE_CHUNK: usize = 32 << 10;

/// Default heap budget of an apply: 12 MiB.
pub const DEFAULT_MEMORY_LIMIT: u64 = 12 << 20;

/// Placeholder path of write errors inside `produce`, replaced by the real destination.
const OUTPUT: &str = "(output)";

/// Bytes of heap an apply of a patch with this header needs at most (see module docs).
///
/// ```
/// # fn main() -> Result<(), bundelta::Error> {
/// # #[cfg(feature = "diff")] {
/// let patch = bundelta::DiffOptions::new().diff_bytes(b"hello old world", b"hello new world")?;
/// let header = bundelta::format::Header::decode(&patch)?;
/// let needed = bundelta::memory_needed(&header);
/// // At least the 512 KiB of I/O buffers; the default options fit the default limit.
/// assert!(needed >= 512 << 10 && needed <= bundelta::DEFAULT_MEMORY_LIMIT);
/// # }
/// # Ok(()) }
/// ```
pub fn memory_needed(h: &Header) -> u64 {
    let decoders: u64 = h
        .codecs
        .iter()
        .map(|&c| crate::format::decoder_memory(c, h.window_log))
        .sum();
    let runs = if h.flags & FLAG_DIFF_RUNS != 0 {
        (ZERO_RUN_BLOCK * 8) as u64
    } else {
        0
    };
    let refs = if h.flags & FLAG_EXE_REFS != 0 {
        REFS_MEMORY
    } else {
        0
    };
    let inflate = if h.flags & FLAG_INFLATE != 0 {
        INFLATE_MEMORY_TOTAL
    } else {
        0
    };
    crate::format::manifest_memory(h)
        .saturating_add(decoders)
        .saturating_add(refs)
        .saturating_add(inflate)
        .saturating_add(runs)
        .saturating_add(512 << 10)
}

/// Progress callback: `(bytes done, bytes total)`.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # #[cfg(feature = "diff")] {
/// # let dir = tempfile::tempdir()?;
/// # let (old, patch) = (dir.path().join("old"), dir.path().join("p.bdp"));
/// # let out = dir.path().join("out");
/// # let new = vec![1u8; 2 << 20];
/// # std::fs::write(&old, vec![0u8; 2 << 20])?;
/// # std::fs::write(&patch, bundelta::DiffOptions::new().diff_bytes(&[0u8; 2 << 20], &new)?)?;
/// use std::sync::{Arc, Mutex};
/// let last = Arc::new(Mutex::new((0, 0)));
/// let seen = Arc::clone(&last);
/// let progress: Box<bundelta::ProgressFn> = Box::new(move |done, total| {
///     *seen.lock().unwrap() = (done, total);
/// });
/// let mut patcher = bundelta::Patcher::new();
/// patcher.progress(progress).apply(&old, &patch, &out)?;
/// assert_eq!(*last.lock().unwrap(), (2 << 20, 2 << 20)); // reported at each MiB of output
/// # }
/// # Ok(()) }
/// ```
pub type ProgressFn = dyn Fn(u64, u64) + Send + Sync;

/// A point of an apply that [`Patcher::hook`] observes (tests of races use it to change the
/// file system at an exact moment; not part of the stable API).
#[doc(hidden)]
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub enum ApplyEvent<'a> {
    /// OLD was checked against the patch (every file relied upon hashed); nothing is staged.
    BaseChecked {
        /// OLD as the caller named it.
        old: &'a Path,
    },
    /// An entry was just created in the staging location.
    Staged {
        /// The staging location (a directory, or the staged file of a single-file bundle).
        stage: &'a Path,
        /// The entry's path in the bundle.
        path: &'a str,
    },
}

/// Callback of [`Patcher::hook`].
#[doc(hidden)]
pub type HookFn = dyn Fn(ApplyEvent<'_>) + Send + Sync;

/// Applies patches under explicit limits.
///
/// ```no_run
/// let mut p = bundelta::Patcher::new();
/// p.memory_limit(32 << 20);
/// let report = p.apply("app-1.0", "1.0-to-1.1.bdp", "app-1.1")?;
/// println!("{} files written", report.files);
/// # Ok::<(), bundelta::Error>(())
/// ```
pub struct Patcher {
    memory_limit: u64,
    unknown: Unknown,
    strict_memory: bool,
    output_limit: u64,
    public_key: Option<crate::PublicKey>,
    progress: Option<Box<ProgressFn>>,
    hook: Option<Box<HookFn>>,
    parallel: bool,
}

impl Default for Patcher {
    fn default() -> Self {
        Patcher::new()
    }
}

/// What an apply did.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # #[cfg(feature = "diff")] {
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
/// # let patch = dir.path().join("p.bdp");
/// # bundelta::DiffOptions::new().diff_to_file(&old, &new, &patch)?;
/// let report = bundelta::Patcher::new().apply(&old, &patch, dir.path().join("out"))?;
/// assert_eq!((report.files, report.dirs, report.symlinks), (3, 1, 0));
/// assert_eq!(report.digest, bundelta::bundle_digest(&new)?);
/// # }
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ApplyReport {
    /// Regular files written.
    pub files: u64,
    /// Bytes of file content written.
    pub bytes: u64,
    /// Directories created.
    pub dirs: u64,
    /// Symlinks created.
    pub symlinks: u64,
    /// Digest of the bundle now at the destination.
    pub digest: Hash,
}

impl Patcher {
    /// A patcher with the default limits: [`DEFAULT_MEMORY_LIMIT`] of heap, unlimited output.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # #[cfg(feature = "diff")] {
    /// # let dir = tempfile::tempdir()?;
    /// # let (old, patch) = (dir.path().join("old"), dir.path().join("p.bdp"));
    /// # let out = dir.path().join("out");
    /// # let text: String = (0..1000).map(|i| format!("line {i}\n")).collect();
    /// # let new = text.replace("line 500\n", "line five hundred\n").into_bytes();
    /// # std::fs::write(&old, &text)?;
    /// # let made = bundelta::DiffOptions::new().diff_bytes(text.as_bytes(), &new)?;
    /// # std::fs::write(&patch, made)?;
    /// // The defaults accept this unsigned patch: 12 MiB of heap are plenty.
    /// let report = bundelta::Patcher::new().apply(&old, &patch, &out)?;
    /// assert_eq!(report.bytes, new.len() as u64);
    /// assert_eq!(std::fs::read(&out)?, new);
    /// # }
    /// # Ok(()) }
    /// ```
    pub fn new() -> Patcher {
        Patcher {
            memory_limit: DEFAULT_MEMORY_LIMIT,
            unknown: Unknown::Refuse,
            strict_memory: false,
            output_limit: u64::MAX,
            public_key: None,
            progress: None,
            hook: None,
            parallel: true,
        }
    }

    /// Decode the patch's three streams on threads of their own, ahead of the thread that
    /// reads OLD and writes the output. Default on; it takes effect only on a machine with
    /// more than one core and when [`PIPE_MEMORY`] (384 KiB of hand-over buffers) fits under
    /// the memory limit next to [`memory_needed`], so the bound holds either way. Costs three
    /// threads; saves up to the decoders' share of the apply time (js-bundle-big: LZMA2
    /// decoding is about half of the apply's CPU). Off: one thread, as on a single core.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # #[cfg(feature = "diff")] {
    /// # let dir = tempfile::tempdir()?;
    /// # let (old, patch) = (dir.path().join("old"), dir.path().join("p.bdp"));
    /// # let out = dir.path().join("out");
    /// # let text: String = (0..1000).map(|i| format!("line {i}\n")).collect();
    /// # let new = text.replace("line 500\n", "line five hundred\n").into_bytes();
    /// # std::fs::write(&old, &text)?;
    /// # let made = bundelta::DiffOptions::new().diff_bytes(text.as_bytes(), &new)?;
    /// # std::fs::write(&patch, made)?;
    /// let mut one_thread = bundelta::Patcher::new();
    /// one_thread.parallel(false);
    /// let a = one_thread.apply(&old, &patch, &out)?;
    /// let b = bundelta::Patcher::new().apply(&old, &patch, dir.path().join("out2"))?;
    /// assert_eq!(a, b); // the same output and checks either way
    /// # }
    /// # Ok(()) }
    /// ```
    pub fn parallel(&mut self, on: bool) -> &mut Patcher {
        self.parallel = on;
        self
    }

    /// Heap budget in bytes. A patch whose [`memory_needed`] exceeds it is refused before any
    /// write, with [`Error::LimitExceeded`]. Default [`DEFAULT_MEMORY_LIMIT`].
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # #[cfg(feature = "diff")] {
    /// # let dir = tempfile::tempdir()?;
    /// # let (old, patch) = (dir.path().join("old"), dir.path().join("p.bdp"));
    /// # let out = dir.path().join("out");
    /// # let text: String = (0..1000).map(|i| format!("line {i}\n")).collect();
    /// # let new = text.replace("line 500\n", "line five hundred\n").into_bytes();
    /// # std::fs::write(&old, &text)?;
    /// # let made = bundelta::DiffOptions::new().diff_bytes(text.as_bytes(), &new)?;
    /// # std::fs::write(&patch, made)?;
    /// let mut patcher = bundelta::Patcher::new();
    /// patcher.memory_limit(256 << 10); // less than the I/O buffers of any apply
    /// let err = patcher.apply(&old, &patch, &out).unwrap_err();
    /// assert!(matches!(err, bundelta::Error::LimitExceeded { .. }));
    /// assert!(!out.exists()); // refused before anything was written
    /// # }
    /// # Ok(()) }
    /// ```
    pub fn memory_limit(&mut self, bytes: u64) -> &mut Patcher {
        self.memory_limit = bytes;
        self
    }

    /// Also count OLD's file list against the memory limit (directory patches whose manifest
    /// is relative to it): [`listing_memory`], 160 bytes plus twice the path bytes per entry
    /// of OLD, added to [`memory_needed`] once OLD is scanned, still before any write.
    /// Default off: the limit then bounds what the patch declares, and OLD's own list is the
    /// client's size (with a typical LZMA patch, trees beyond about 15,000 files would need a
    /// larger limit). Turn it on where the budget is exact (a phone, a router).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # #[cfg(feature = "diff")] {
    /// # let dir = tempfile::tempdir()?;
    /// # let (old, new) = (dir.path().join("old"), dir.path().join("new"));
    /// # for (d, v) in [(&old, "1.0"), (&new, "1.1")] {
    /// #     std::fs::create_dir_all(d.join("docs"))?;
    /// #     for i in 0..100 {
    /// #         std::fs::write(d.join(format!("docs/page-{i}.txt")), format!("page {i}"))?;
    /// #     }
    /// #     std::fs::write(d.join("VERSION"), v)?;
    /// # }
    /// # let patch = dir.path().join("p.bdp");
    /// # bundelta::DiffOptions::new().diff_to_file(&old, &new, &patch)?;
    /// // A limit of exactly what the patch declares...
    /// let needed = bundelta::memory_needed(bundelta::Patcher::new().open(&patch)?.header());
    /// let mut patcher = bundelta::Patcher::new();
    /// patcher.memory_limit(needed);
    /// patcher.apply(&old, &patch, dir.path().join("out"))?;
    /// // ...leaves no room for OLD's file list once that is counted too.
    /// patcher.strict_memory(true);
    /// let err = patcher.apply(&old, &patch, dir.path().join("out2")).unwrap_err();
    /// assert!(matches!(err, bundelta::Error::LimitExceeded { .. }));
    /// # }
    /// # Ok(()) }
    /// ```
    pub fn strict_memory(&mut self, on: bool) -> &mut Patcher {
        self.strict_memory = on;
        self
    }

    pub(crate) fn check_listing_memory(&self, p: &Patch) -> Result<()> {
        if self.strict_memory {
            p.check_listing_memory()?;
        }
        Ok(())
    }

    /// What to do with entries of OLD that the patch does not know about (see [`Unknown`]).
    /// Default [`Unknown::Refuse`]: the apply fails before writing anything and names them.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # #[cfg(feature = "diff")] {
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
    /// # let patch = dir.path().join("p.bdp");
    /// # bundelta::DiffOptions::new().diff_to_file(&old, &new, &patch)?;
    /// std::fs::write(old.join("local.cfg"), "mine")?; // the patch does not know this file
    /// let mut patcher = bundelta::Patcher::new();
    /// let refused = patcher.apply(&old, &patch, dir.path().join("out"));
    /// assert!(matches!(refused, Err(bundelta::Error::UnknownEntries { .. })));
    /// patcher.unknown(bundelta::Unknown::Keep);
    /// patcher.apply(&old, &patch, dir.path().join("out"))?;
    /// assert_eq!(std::fs::read_to_string(dir.path().join("out/local.cfg"))?, "mine");
    /// # }
    /// # Ok(()) }
    /// ```
    pub fn unknown(&mut self, policy: Unknown) -> &mut Patcher {
        self.unknown = policy;
        self
    }

    pub(crate) fn unknown_policy(&self) -> Unknown {
        self.unknown
    }

    /// Largest total of new file content accepted, in bytes. Default: unlimited.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # #[cfg(feature = "diff")] {
    /// # let dir = tempfile::tempdir()?;
    /// # let (old, patch) = (dir.path().join("old"), dir.path().join("p.bdp"));
    /// # let out = dir.path().join("out");
    /// # let text: String = (0..1000).map(|i| format!("line {i}\n")).collect();
    /// # let new = text.replace("line 500\n", "line five hundred\n").into_bytes();
    /// # std::fs::write(&old, &text)?;
    /// # let made = bundelta::DiffOptions::new().diff_bytes(text.as_bytes(), &new)?;
    /// # std::fs::write(&patch, made)?;
    /// let mut patcher = bundelta::Patcher::new();
    /// patcher.output_limit(1000); // the new version is larger
    /// assert!(matches!(patcher.open(&patch), Err(bundelta::Error::LimitExceeded { .. })));
    /// patcher.output_limit(1 << 20);
    /// patcher.apply(&old, &patch, &out)?;
    /// # }
    /// # Ok(()) }
    /// ```
    pub fn output_limit(&mut self, bytes: u64) -> &mut Patcher {
        self.output_limit = bytes;
        self
    }

    /// Accept only patches signed by the Ed25519 secret key whose public key this is (see
    /// [`crate::sign_patch`]). An unsigned patch gives [`Error::Unsigned`], a wrongly signed
    /// one [`Error::Signature`], both before the manifest is decoded and before any write.
    /// Default: no key; signed and unsigned patches are both accepted (integrity and every
    /// hash are checked either way). Costs one Ed25519 verification per patch.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # #[cfg(feature = "diff")] {
    /// # let dir = tempfile::tempdir()?;
    /// # let (old, patch) = (dir.path().join("old"), dir.path().join("p.bdp"));
    /// # let out = dir.path().join("out");
    /// # let text: String = (0..1000).map(|i| format!("line {i}\n")).collect();
    /// # let new = text.replace("line 500\n", "line five hundred\n").into_bytes();
    /// # std::fs::write(&old, &text)?;
    /// # let made = bundelta::DiffOptions::new().diff_bytes(text.as_bytes(), &new)?;
    /// # std::fs::write(&patch, made)?;
    /// let secret = bundelta::SecretKey::from_bytes([7u8; 32]); // in real use: 32 random bytes
    /// let mut patcher = bundelta::Patcher::new();
    /// patcher.require_signature(secret.public_key());
    /// // The unsigned patch is refused before anything is written...
    /// assert!(matches!(patcher.apply(&old, &patch, &out), Err(bundelta::Error::Unsigned)));
    /// // ...and the same patch signed with the matching secret key is applied.
    /// std::fs::write(&patch, bundelta::sign_patch(&std::fs::read(&patch)?, &secret)?)?;
    /// patcher.apply(&old, &patch, &out)?;
    /// # }
    /// # Ok(()) }
    /// ```
    pub fn require_signature(&mut self, public_key: crate::PublicKey) -> &mut Patcher {
        self.public_key = Some(public_key);
        self
    }

    /// Report progress (bytes of output produced, total) while applying. Default: none.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # #[cfg(feature = "diff")] {
    /// # let dir = tempfile::tempdir()?;
    /// # let (old, patch) = (dir.path().join("old"), dir.path().join("p.bdp"));
    /// # let out = dir.path().join("out");
    /// # let new = vec![1u8; 2 << 20];
    /// # std::fs::write(&old, vec![0u8; 2 << 20])?;
    /// # std::fs::write(&patch, bundelta::DiffOptions::new().diff_bytes(&[0u8; 2 << 20], &new)?)?;
    /// use std::sync::atomic::{AtomicU64, Ordering};
    /// use std::sync::Arc;
    /// let calls = Arc::new(AtomicU64::new(0));
    /// let counter = Arc::clone(&calls);
    /// let mut patcher = bundelta::Patcher::new();
    /// patcher.progress(Box::new(move |done, total| {
    ///     assert!(done <= total);
    ///     counter.fetch_add(1, Ordering::Relaxed);
    /// }));
    /// patcher.verify(&patch, Some(old.as_path()))?; // a dry run reports progress too
    /// assert_eq!(calls.load(Ordering::Relaxed), 2); // 2 MiB of output: once per MiB
    /// # }
    /// # Ok(()) }
    /// ```
    pub fn progress(&mut self, f: Box<ProgressFn>) -> &mut Patcher {
        self.progress = Some(f);
        self
    }

    /// Call `f` at fixed points of every apply and verify ([`ApplyEvent`]). For tests that
    /// change the file system at an exact moment (a directory of OLD swapped for a symlink
    /// between the base check and its use); not part of the stable API.
    #[doc(hidden)]
    pub fn hook(&mut self, f: Box<HookFn>) -> &mut Patcher {
        self.hook = Some(f);
        self
    }

    pub(crate) fn hook_fn(&self) -> Option<&HookFn> {
        self.hook.as_deref()
    }

    pub(crate) fn event(&self, e: ApplyEvent<'_>) {
        if let Some(h) = &self.hook {
            h(e);
        }
    }

    /// Open a patch and check it: length, trailer checksum, header, manifest, limits.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # #[cfg(feature = "diff")] {
    /// # let dir = tempfile::tempdir()?;
    /// # let (old, patch) = (dir.path().join("old"), dir.path().join("p.bdp"));
    /// # let out = dir.path().join("out");
    /// # let text: String = (0..1000).map(|i| format!("line {i}\n")).collect();
    /// # let new = text.replace("line 500\n", "line five hundred\n").into_bytes();
    /// # std::fs::write(&old, &text)?;
    /// # let made = bundelta::DiffOptions::new().diff_bytes(text.as_bytes(), &new)?;
    /// # std::fs::write(&patch, made)?;
    /// let p = bundelta::Patcher::new().open(&patch)?; // checksum, header, manifest, limits
    /// assert_eq!(p.header().new_total, new.len() as u64);
    /// assert!(!p.header().is_signed());
    /// # }
    /// # Ok(()) }
    /// ```
    pub fn open(&self, patch: impl AsRef<Path>) -> Result<Patch> {
        let patch = patch.as_ref();
        let mut p = Patch::open_checked(
            patch,
            self.memory_limit,
            self.output_limit,
            self.public_key.as_ref(),
        )?;
        p.parallel = self.parallel;
        Ok(p)
    }

    /// Rebuild the new bundle from `old` and `patch` at `out`, which must not exist.
    ///
    /// `out` appears only once every file and the bundle digest matched; on error nothing is
    /// left at `out` and `old` is untouched.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # #[cfg(feature = "diff")] {
    /// # let dir = tempfile::tempdir()?;
    /// # let (old, patch) = (dir.path().join("old"), dir.path().join("p.bdp"));
    /// # let out = dir.path().join("out");
    /// # let text: String = (0..1000).map(|i| format!("line {i}\n")).collect();
    /// # let new = text.replace("line 500\n", "line five hundred\n").into_bytes();
    /// # std::fs::write(&old, &text)?;
    /// # let made = bundelta::DiffOptions::new().diff_bytes(text.as_bytes(), &new)?;
    /// # std::fs::write(&patch, made)?;
    /// let patcher = bundelta::Patcher::new();
    /// let report = patcher.apply(&old, &patch, &out)?;
    /// assert_eq!((report.files, report.bytes), (1, new.len() as u64));
    /// assert_eq!(std::fs::read(&out)?, new);
    /// // An existing `out` is never overwritten.
    /// let again = patcher.apply(&old, &patch, &out);
    /// assert!(matches!(again, Err(bundelta::Error::OutputExists { .. })));
    /// # }
    /// # Ok(()) }
    /// ```
    pub fn apply(
        &self,
        old: impl AsRef<Path>,
        patch: impl AsRef<Path>,
        out: impl AsRef<Path>,
    ) -> Result<ApplyReport> {
        let old = old.as_ref();
        let patch = patch.as_ref();
        let out = out.as_ref();
        self.apply_patch(old, self.open(patch)?, out)
    }

    /// Open a patch read once, front to back, from `patch` (a pipe, a socket, an HTTP body),
    /// with no temporary file: what precedes the extra stream (header, manifest, control and
    /// diff streams, compressed) is held in memory and charged to [`Patcher::memory_limit`]
    /// with [`memory_needed`]; the rest is read as the apply consumes it. `name` is how
    /// errors call the patch.
    ///
    /// The checksum and the signature are checked when the whole patch has been read, which
    /// [`Patcher::apply_patch`] and [`Patcher::verify_patch`] do before they commit or report
    /// anything: a damaged or forged patch leaves nothing behind, but is refused at the end
    /// rather than before the first file. A patch whose header says it is unsigned is
    /// refused here when [`Patcher::require_signature`] is set.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # #[cfg(feature = "diff")] {
    /// let dir = tempfile::tempdir()?;
    /// let (old, out) = (dir.path().join("old"), dir.path().join("out"));
    /// std::fs::write(&old, b"the quick brown fox jumps over the lazy dog")?;
    /// let new = b"the quick brown cat jumps over the lazy dog!";
    /// let patch = bundelta::DiffOptions::new().diff_bytes(&std::fs::read(&old)?, new)?;
    /// // Any reader: here bytes in memory; a TcpStream or an HTTP body work the same way.
    /// let patcher = bundelta::Patcher::new();
    /// let p = patcher.open_reader(std::io::Cursor::new(patch), "patch from the network")?;
    /// patcher.apply_patch(&old, p, &out)?;
    /// assert_eq!(std::fs::read(&out)?, new);
    /// # }
    /// # Ok(()) }
    /// ```
    pub fn open_reader(
        &self,
        patch: impl std::io::Read + Send + 'static,
        name: impl AsRef<Path>,
    ) -> Result<Patch> {
        let mut p = streamed::Streamed::open(
            Box::new(patch),
            name.as_ref(),
            self.memory_limit,
            self.output_limit,
            self.public_key.as_ref(),
        )?;
        p.parallel = self.parallel;
        Ok(p)
    }

    /// [`Patcher::apply`] of an opened patch ([`Patcher::open`], [`Patcher::open_reader`]).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # #[cfg(feature = "diff")] {
    /// # let dir = tempfile::tempdir()?;
    /// # let (old, patch) = (dir.path().join("old"), dir.path().join("p.bdp"));
    /// # let out = dir.path().join("out");
    /// # let text: String = (0..1000).map(|i| format!("line {i}\n")).collect();
    /// # let new = text.replace("line 500\n", "line five hundred\n").into_bytes();
    /// # std::fs::write(&old, &text)?;
    /// # let made = bundelta::DiffOptions::new().diff_bytes(text.as_bytes(), &new)?;
    /// # std::fs::write(&patch, made)?;
    /// let patcher = bundelta::Patcher::new();
    /// let p = patcher.open(&patch)?;
    /// let target = p.new_digest(); // e.g. compare with the version the update channel announced
    /// let report = patcher.apply_patch(&old, p, &out)?;
    /// assert_eq!(report.digest, target);
    /// # }
    /// # Ok(()) }
    /// ```
    pub fn apply_patch(
        &self,
        old: impl AsRef<Path>,
        mut p: Patch,
        out: impl AsRef<Path>,
    ) -> Result<ApplyReport> {
        let old = old.as_ref();
        let out = out.as_ref();
        let old_path = old;
        let old = &p.open_old(old_path)?;
        p.bind_checked(old, self.unknown)?;
        self.check_listing_memory(&p)?;
        let base = p.check_base(old)?;
        self.event(ApplyEvent::BaseChecked { old: old_path });
        if fs::symlink_metadata(out).is_ok() {
            return Err(Error::OutputExists {
                path: out.to_path_buf(),
            });
        }
        // Under OUT's lock: a stage a killed run left is removed, and a fresh one recorded
        // (see `inplace`); on error only what this run created is removed.
        let _lock = crate::inplace::TargetLock::acquire(out)?;
        let staged = crate::inplace::OutStage::begin(out, &p)?;
        let stage = staged.stage.clone();
        let result = (|| {
            let report = p.build(
                old,
                Some(&stage),
                &base,
                LinkMode::Copy,
                self.progress.as_deref(),
                self.hook_fn(),
            )?;
            if self.unknown == Unknown::Keep {
                p.carry_unknown(old, &stage, LinkMode::Copy)?;
            }
            sync_parent(&stage)?;
            crate::inplace::crash_point("out-built");
            rename_noreplace(&stage, out)?;
            sync_parent(out)?;
            Ok(report)
        })();
        staged.end(result)
    }

    /// Check a patch and, with `old`, that OLD satisfies it, by rebuilding every file into a
    /// hashing sink (nothing is written).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # #[cfg(feature = "diff")] {
    /// # let dir = tempfile::tempdir()?;
    /// # let (old, patch) = (dir.path().join("old"), dir.path().join("p.bdp"));
    /// # let out = dir.path().join("out");
    /// # let text: String = (0..1000).map(|i| format!("line {i}\n")).collect();
    /// # let new = text.replace("line 500\n", "line five hundred\n").into_bytes();
    /// # std::fs::write(&old, &text)?;
    /// # let made = bundelta::DiffOptions::new().diff_bytes(text.as_bytes(), &new)?;
    /// # std::fs::write(&patch, made)?;
    /// let patcher = bundelta::Patcher::new();
    /// assert_eq!(patcher.verify(&patch, None)?, None); // the patch alone is intact
    /// let report = patcher.verify(&patch, Some(old.as_path()))?.expect("checked against OLD");
    /// assert_eq!(report.bytes, new.len() as u64);
    /// assert!(!out.exists()); // nothing was written
    /// std::fs::write(&old, b"some other version")?;
    /// let err = patcher.verify(&patch, Some(old.as_path())).unwrap_err();
    /// assert!(matches!(err, bundelta::Error::WrongBase { .. }));
    /// # }
    /// # Ok(()) }
    /// ```
    pub fn verify(
        &self,
        patch: impl AsRef<Path>,
        old: Option<&Path>,
    ) -> Result<Option<ApplyReport>> {
        let patch = patch.as_ref();
        let p = self.open(patch)?;
        self.verify_patch(p, old)
    }

    /// Open a patch read through `src` (`len` bytes), checked as [`Patcher::open`] does.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn open_source(
        &self,
        src: Box<dyn ReadAt + Send + Sync>,
        len: u64,
        name: &Path,
    ) -> Result<Patch> {
        let mut p = Patch::from_source(
            src,
            len,
            name,
            self.memory_limit,
            self.output_limit,
            self.public_key.as_ref(),
        )?;
        p.parallel = self.parallel;
        Ok(p)
    }

    /// [`Patcher::verify`] of an opened patch. Without `old`, a patch read from a stream is
    /// read to its end and its checksum (and signature) checked.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # #[cfg(feature = "diff")] {
    /// let opts = bundelta::DiffOptions::new();
    /// let mut bytes = opts.diff_bytes(b"hello old world", b"hello new world")?;
    /// let patcher = bundelta::Patcher::new();
    /// let p = patcher.open_reader(std::io::Cursor::new(bytes.clone()), "intact")?;
    /// assert_eq!(patcher.verify_patch(p, None)?, None); // read to its end, checksum checked
    /// *bytes.last_mut().unwrap() ^= 1; // damage the trailer
    /// let p = patcher.open_reader(std::io::Cursor::new(bytes), "damaged")?;
    /// let err = patcher.verify_patch(p, None).unwrap_err();
    /// assert!(matches!(err, bundelta::Error::Checksum { .. }));
    /// # }
    /// # Ok(()) }
    /// ```
    pub fn verify_patch(&self, mut p: Patch, old: Option<&Path>) -> Result<Option<ApplyReport>> {
        match old {
            None => {
                if let Some(s) = &p.streamed {
                    s.finish()?;
                }
                Ok(None)
            }
            Some(old_path) => {
                let old = &p.open_old(old_path)?;
                p.bind_checked(old, self.unknown)?;
                self.check_listing_memory(&p)?;
                let base = p.check_base(old)?;
                self.event(ApplyEvent::BaseChecked { old: old_path });
                Ok(Some(p.build(
                    old,
                    None,
                    &base,
                    LinkMode::Copy,
                    self.progress.as_deref(),
                    self.hook_fn(),
                )?))
            }
        }
    }

    pub(crate) fn progress_fn(&self) -> Option<&ProgressFn> {
        self.progress.as_deref()
    }
}

impl std::fmt::Debug for Patcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Patcher")
            .field("memory_limit", &self.memory_limit)
            .field("unknown", &self.unknown)
            .field("strict_memory", &self.strict_memory)
            .field("output_limit", &self.output_limit)
            .field("public_key", &self.public_key)
            .field("progress", &self.progress.is_some())
            .field("parallel", &self.parallel)
            .finish_non_exhaustive()
    }
}

/// An opened, checksum-verified and validated patch.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # #[cfg(feature = "diff")] {
/// # let dir = tempfile::tempdir()?;
/// # let (old, patch) = (dir.path().join("old"), dir.path().join("p.bdp"));
/// # let out = dir.path().join("out");
/// # let text: String = (0..1000).map(|i| format!("line {i}\n")).collect();
/// # let new = text.replace("line 500\n", "line five hundred\n").into_bytes();
/// # std::fs::write(&old, &text)?;
/// # let made = bundelta::DiffOptions::new().diff_bytes(text.as_bytes(), &new)?;
/// # std::fs::write(&patch, made)?;
/// let p = bundelta::Patcher::new().open(&patch)?; // the default limits
/// assert!(!p.header().is_directory());
/// assert_eq!(p.len(), std::fs::metadata(&patch)?.len());
/// let report = bundelta::Patcher::new().apply_patch(&old, p, &out)?;
/// assert_eq!(report.bytes, new.len() as u64);
/// # }
/// # Ok(()) }
/// ```
pub struct Patch {
    /// The patch bytes. Only the streams are read from here after opening.
    src: Box<dyn ReadAt + Send + Sync>,
    path: PathBuf,
    header: Header,
    manifest: Option<Manifest>,
    relative: Vec<u8>,
    new_digest: Hash,
    /// The verified whole-patch BLAKE3 (the trailer): the patch's identity.
    checksum: Hash,
    /// Entries of OLD the patch does not know about (set by `bind_checked`), in path order.
    unknown: Vec<ListEntry>,
    /// The heap limit the patch was opened with.
    memory_limit: u64,
    /// Heap taken by OLD's file list and the entries resolved from it (relative manifests;
    /// set by `bind`), see [`listing_memory`].
    listing_bytes: u64,
    /// Whether the streams may be decoded on threads of their own ([`Patcher::parallel`]).
    parallel: bool,
    /// For a patch read from a stream ([`Patcher::open_reader`]): its reader's side, whose
    /// checksum and signature are checked when the apply has consumed it.
    streamed: Option<std::sync::Arc<streamed::Streamed>>,
}

impl std::fmt::Debug for Patch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Patch")
            .field("path", &self.path)
            .field("directory", &self.header.is_directory())
            .field("signed", &self.header.is_signed())
            .field("new_digest", &crate::hex(&self.new_digest))
            .field("checksum", &crate::hex(&self.checksum))
            .field("streamed", &self.is_streamed())
            .finish_non_exhaustive()
    }
}

impl Patch {
    /// Refuse an apply whose heap would pass the limit once OLD's file list is counted (a
    /// relative manifest, after [`Patch::bind`]): the header's [`memory_needed`] plus
    /// [`listing_memory`] of OLD. Used with [`Patcher::strict_memory`].
    pub(crate) fn check_listing_memory(&self) -> Result<()> {
        let need = memory_needed(&self.header).saturating_add(self.listing_bytes);
        if self.listing_bytes > 0 && need > self.memory_limit {
            return Err(Error::LimitExceeded {
                what: "apply memory with OLD's file list",
                needed: need,
                limit: self.memory_limit,
            });
        }
        Ok(())
    }
}
