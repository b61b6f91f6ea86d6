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
//! process that rewrites the file after the check changes nothing that was verified. The
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
//! the staging tree is written the same way beneath a handle on it (`src/sys.rs`). Files
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

use std::fs::{self, File};
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::codec::decode::{
    decoder, expect_end, need_varint, read_exact_stream, read_full, read_retry, stream_err,
    DiffSource, Stream,
};
use crate::error::{Error, Result};
use crate::format::{
    listing_digest, listing_tag, BaseTags, Control, EntryKind, FileOp, Hash, Header, ListEntry,
    ListKind, Manifest, CODEC_LZMA2, FLAG_DIFF_RUNS, FLAG_MANIFEST_LZMA, FORM_RELATIVE,
    MAX_CONTROL_BLOCK, MAX_HEADER_LEN, SIGNATURE_LEN, TRAILER_LEN, ZERO_RUN_BLOCK,
};
pub(crate) use crate::readat::{read_at_most, ReadAt, Section};
use crate::sys::{self, Dir, FileId, Opened, Writer};
use crate::tree::{self, hex, TreeDigest, IO_BUF};

/// Heap an apply holds per entry of OLD's file list under a relative manifest, besides the
/// path bytes (counted twice: the listing and the resolved entries): measured about 220 bytes
/// per entry of short paths in all on a 50,200-entry tree.
pub const LISTING_ENTRY_BYTES: u64 = 160;

/// Heap for OLD's file list and the entries resolved from it: [`LISTING_ENTRY_BYTES`] plus
/// twice the path (and link target) bytes, per entry. It depends on OLD, not on the patch, and
/// is added to [`memory_needed`] against the limit once OLD is scanned.
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

/// Why a wrong base is not named: the patch carries no base tags.
const NO_TAGS: &str = "; this patch has no base tags to name it (made with `--base-tags 0`, or \
                       by default for a tree of many files with a tiny change)";

/// Default heap budget of an apply: 12 MiB.
pub const DEFAULT_MEMORY_LIMIT: u64 = 12 << 20;

/// Placeholder path of write errors inside `produce`, replaced by the real destination.
const OUTPUT: &str = "(output)";

/// Bytes of heap an apply of a patch with this header needs at most (see module docs).
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
    crate::format::manifest_memory(h)
        .saturating_add(decoders)
        .saturating_add(runs)
        .saturating_add(512 << 10)
}

/// Progress callback: `(bytes done, bytes total)`.
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
/// let report = p.apply("app-1.0".as_ref(), "1.0-to-1.1.bdp".as_ref(), "app-1.1".as_ref())?;
/// println!("{} files written", report.files);
/// # Ok::<(), bundelta::Error>(())
/// ```
pub struct Patcher {
    memory_limit: u64,
    unknown: Unknown,
    strict_memory: bool,
    output_limit: u64,
    public_key: Option<[u8; 32]>,
    progress: Option<Box<ProgressFn>>,
    hook: Option<Box<HookFn>>,
}

impl Default for Patcher {
    fn default() -> Self {
        Patcher::new()
    }
}

/// What an apply did.
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
    pub fn new() -> Patcher {
        Patcher {
            memory_limit: DEFAULT_MEMORY_LIMIT,
            unknown: Unknown::Refuse,
            strict_memory: false,
            output_limit: u64::MAX,
            public_key: None,
            progress: None,
            hook: None,
        }
    }

    /// Heap budget in bytes. A patch whose [`memory_needed`] exceeds it is refused before any
    /// write, with [`Error::LimitExceeded`]. Default [`DEFAULT_MEMORY_LIMIT`].
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
    pub fn unknown(&mut self, policy: Unknown) -> &mut Patcher {
        self.unknown = policy;
        self
    }

    pub(crate) fn unknown_policy(&self) -> Unknown {
        self.unknown
    }

    /// Largest total of new file content accepted, in bytes. Default: unlimited.
    pub fn output_limit(&mut self, bytes: u64) -> &mut Patcher {
        self.output_limit = bytes;
        self
    }

    /// Accept only patches signed by the Ed25519 secret key whose public key this is (see
    /// [`crate::sign_patch`]). An unsigned patch gives [`Error::Unsigned`], a wrongly signed
    /// one [`Error::Signature`], both before the manifest is decoded and before any write.
    /// Default: no key; signed and unsigned patches are both accepted (integrity and every
    /// hash are checked either way). Costs one Ed25519 verification per patch.
    pub fn require_signature(&mut self, public_key: [u8; 32]) -> &mut Patcher {
        self.public_key = Some(public_key);
        self
    }

    /// Report progress (bytes of output produced, total) while applying. Default: none.
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
    pub fn open(&self, patch: &Path) -> Result<Patch> {
        Patch::open_checked(
            patch,
            self.memory_limit,
            self.output_limit,
            self.public_key.as_ref(),
        )
    }

    /// Rebuild the new bundle from `old` and `patch` at `out`, which must not exist.
    ///
    /// `out` appears only once every file and the bundle digest matched; on error nothing is
    /// left at `out` and `old` is untouched.
    pub fn apply(&self, old: &Path, patch: &Path, out: &Path) -> Result<ApplyReport> {
        let mut p = self.open(patch)?;
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
    pub fn verify(&self, patch: &Path, old: Option<&Path>) -> Result<Option<ApplyReport>> {
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
        Patch::from_source(
            src,
            len,
            name,
            self.memory_limit,
            self.output_limit,
            self.public_key.as_ref(),
        )
    }

    /// [`Patcher::verify`] of an opened patch.
    pub(crate) fn verify_patch(
        &self,
        mut p: Patch,
        old: Option<&Path>,
    ) -> Result<Option<ApplyReport>> {
        match old {
            None => Ok(None),
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

/// An opened, checksum-verified and validated patch.
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
}

/// Result of checking OLD against a patch: size and hash of every old file relied upon at its
/// own path (see [`FileOp::reads_own_path`]), in entry order.
pub(crate) struct BaseCheck {
    base: Vec<(u64, Hash)>,
    /// Hashes of the old-file table's files, in table order.
    table: Vec<Hash>,
    /// Identity of each file of `base` as it was hashed (see [`sys::FileId`]).
    base_ids: Vec<FileId>,
    /// Identity of each file of `table` as it was hashed.
    table_ids: Vec<FileId>,
}

/// Open the patch file for reading. A FIFO or device named as the patch is refused at once,
/// without blocking in `open`.
fn open_patch_file(path: &Path) -> Result<File> {
    let mut o = fs::OpenOptions::new();
    o.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.custom_flags(libc::O_NONBLOCK);
    }
    let f = o.open(path).map_err(|e| Error::io(path, "open", e))?;
    let md = f.metadata().map_err(|e| Error::io(path, "stat", e))?;
    if !md.is_file() {
        return Err(Error::invalid_input(
            path,
            "the patch is not a regular file (a directory, FIFO or device)",
        ));
    }
    Ok(f)
}

/// Identity before and after this apply hard-linked a file of the old-file table (used again
/// later as a source).
type Relinked = std::collections::HashMap<FileId, FileId>;

/// OLD, opened once: every file of it the apply reads is reached through this.
pub(crate) enum Old {
    /// A directory bundle: each path is resolved beneath this handle, never following a
    /// symlink at any component.
    Dir(Dir),
    /// A single-file bundle: the file itself, held open from the base check to the build,
    /// so the bytes read are those of the file that was hashed.
    File {
        /// The open file.
        file: File,
        /// OLD as named.
        path: PathBuf,
    },
}

impl Old {
    /// The path of `rel` in OLD (for messages; never opened by name).
    fn display(&self, rel: &str) -> PathBuf {
        match self {
            Old::Dir(d) => d.display(rel),
            Old::File { path, .. } => path.clone(),
        }
    }

    /// Open the regular file `rel` of OLD for reading (see [`sys::Dir::open_file`]).
    fn open(&self, rel: &str) -> io::Result<Opened> {
        match self {
            Old::Dir(d) => d.open_file(rel),
            Old::File { file, .. } => {
                let file = file.try_clone()?;
                let (meta, id) = sys::file_id(&file)?;
                Ok(Opened { file, id, meta })
            }
        }
    }

    /// Open the file `rel` relied upon, requiring it to be the file that was hashed (same
    /// inode, size, mtime, ctime and mode); anything else is [`Error::WrongBase`].
    ///
    /// `relinked` maps the identity of a file this apply hard-linked to its identity after
    /// the link (a link moves the ctime): such a file is still the one hashed.
    fn open_checked(&self, rel: &str, id: &FileId, relinked: &Relinked) -> Result<Opened> {
        let o = self.open(rel).map_err(|e| self.base_error(rel, e))?;
        if o.id != *id && relinked.get(id) != Some(&o.id) {
            return Err(Error::wrong_base(
                rel,
                "changed after the base check (replaced, written to, or its metadata \
                 changed) while the patch was being applied; nothing was committed, run again",
            ));
        }
        Ok(o)
    }

    /// An error opening the file `rel` relied upon, as [`Error::WrongBase`] where it says
    /// OLD is not the expected base: missing, not a regular file (named), a symlink, a path
    /// through a symlink or through a file.
    fn base_error(&self, rel: &str, source: io::Error) -> Error {
        let why = match (source.kind(), source.raw_os_error()) {
            (io::ErrorKind::NotFound, _) => "missing".to_string(),
            (io::ErrorKind::InvalidInput, None) => source.to_string(),
            _ if sys::is_link_refusal(&source) => self.diagnose(rel),
            #[cfg(unix)]
            (_, Some(libc::EISDIR)) => "is a directory, not a regular file".to_string(),
            _ => return Error::io(&self.display(rel), "read", source),
        };
        Error::wrong_base(rel, why)
    }

    /// Why `rel` cannot be reached without following a link (error path only): the first
    /// component of `rel` that is a symlink or not a directory, found by `lstat`s beneath
    /// OLD's handle.
    fn diagnose(&self, rel: &str) -> String {
        let Old::Dir(d) = self else {
            return "is a symlink (never followed)".to_string();
        };
        let comps: Vec<&str> = rel.split('/').collect();
        let mut at = Ok(None::<Dir>);
        for (i, c) in comps.iter().enumerate() {
            let here = comps[..=i].join("/");
            let dir = match &at {
                Ok(Some(x)) => x,
                Ok(None) => d,
                Err(()) => break,
            };
            let kind = dir.lstat(std::ffi::OsStr::new(c)).ok().map(|m| m.kind);
            let last = i + 1 == comps.len();
            match kind {
                Some(sys::Kind::Symlink) if last => {
                    return "is a symlink (never followed)".to_string()
                }
                Some(sys::Kind::Symlink) => {
                    return format!("parent {here} is a symlink (never followed)")
                }
                Some(sys::Kind::Dir) if !last => {
                    at = dir.sub(std::ffi::OsStr::new(c)).map(Some).map_err(|_| ());
                }
                Some(k) if !last => {
                    return format!("parent {here} is {}, not a directory", k.name())
                }
                _ => break,
            }
        }
        "it or a parent directory is a symlink, or a parent is not a directory (never \
         followed)"
            .to_string()
    }
}

/// Hash an old file the patch relies on, beneath OLD's handle; a missing file, or one that is
/// not a regular file (a directory, a symlink, a FIFO, a path through a symlink or a file),
/// means OLD is not the expected base. Returns the size, the hash, and the identity of the
/// file as read (taken after reading; a file whose identity moved while it was read is
/// refused).
fn hash_base_file(old: &Old, rel: &str) -> Result<(u64, Hash, FileId)> {
    let o = old.open(rel).map_err(|e| old.base_error(rel, e))?;
    // Positioned reads: a single-file OLD is one open file description, shared by every use.
    let (n, hash) = tree::hash_reader(Section::new(&o.file, 0, u64::MAX), &old.display(rel))?;
    let (_, after) = sys::file_id(&o.file).map_err(|e| Error::io(&old.display(rel), "stat", e))?;
    if after != o.id || n != o.meta.size {
        return Err(Error::wrong_base(
            rel,
            "changed while it was being read (written to by another process); run again",
        ));
    }
    Ok((n, hash, after))
}

/// After a listing-digest mismatch (relative manifest): name the first entry of OLD's listing
/// that is not the base's, from the per-entry base tags. Reads the files of OLD in listing
/// order up to a few entries past the first difference (the tags cover contents too).
fn name_listing_difference(old: &Old, listing: &[ListEntry], tags: &BaseTags) -> Result<Error> {
    let mut memo: Vec<Hash> = Vec::new();
    // Tag hash of OLD's entry `j`, computed in order.
    let mut tag_of = |j: usize| -> Result<Hash> {
        while memo.len() <= j {
            let e = &listing[memo.len()];
            let content = match e.kind {
                ListKind::File { .. } => Some(hash_base_file(old, &e.path)?.1),
                _ => None,
            };
            memo.push(listing_tag(e, content.as_ref()));
        }
        Ok(memo[j])
    };
    let (a, b) = (listing.len(), tags.len());
    let mut i = 0;
    while i < a.min(b) && tags.matches(i, &tag_of(i)?) {
        i += 1;
    }
    const LOOK: usize = 3;
    // Does OLD from `from` line up with the base from `base_from`, for up to LOOK entries?
    let mut aligned = |from: usize, base_from: usize| -> Result<bool> {
        let n = LOOK
            .min(a.saturating_sub(from))
            .min(b.saturating_sub(base_from));
        if n == 0 {
            return Ok(a - from.min(a) == b - base_from.min(b));
        }
        for d in 0..n {
            if !tags.matches(base_from + d, &tag_of(from + d)?) {
                return Ok(false);
            }
        }
        Ok(true)
    };
    let counts = format!("OLD has {a} entries, the base had {b}");
    Ok(if i == a.min(b) && a == b {
        // Every tag matched: each differing entry escaped its tag (probability 2^-bits each).
        Error::wrong_base(
            "",
            format!(
                "its file list differs from the base's, but no entry could be named (each escapes its base tag with probability 2^-bits); {counts}"
            ),
        )
    } else if i == a {
        let after = listing.last().map_or("", |e| e.path.as_str());
        Error::wrong_base(
            after,
            format!(
                "the base had {} more entries after this one; {counts}",
                b - a
            ),
        )
    } else if i == b || aligned(i + 1, i)? {
        Error::wrong_base(
            &listing[i].path,
            format!("not in the base the patch was made from (added or renamed); {counts}"),
        )
    } else if aligned(i, i + 1)? {
        Error::wrong_base(
            &listing[i].path,
            format!(
                "the base had an entry just before this one that OLD lacks (removed or \
                 renamed); {counts}"
            ),
        )
    } else {
        Error::wrong_base(
            &listing[i].path,
            "differs from the base's entry (content, size, kind, mode or link target)",
        )
    })
}

/// The entries of OLD's listing that its base did not have, when that is the only difference:
/// OLD's entries are aligned in order with the base tags (an entry whose tag does not match the
/// next base tag is taken as extra), and the result is confirmed by the listing digest of what
/// is left, so it is exact or `None` (other differences, no tags, or an extra entry whose tag
/// happened to match, a 2^-bits chance each). Indices into `listing`, ascending.
fn extra_entries(
    old: &Old,
    listing: &[ListEntry],
    tags: &BaseTags,
    digest: &Hash,
) -> Result<Option<Vec<usize>>> {
    if tags.is_empty() || listing.len() <= tags.len() {
        return Ok(None);
    }
    let mut extra = Vec::new();
    let mut j = 0;
    for (i, e) in listing.iter().enumerate() {
        let content = match e.kind {
            ListKind::File { .. } => match hash_base_file(old, &e.path) {
                Ok((_, h, _)) => Some(h),
                Err(Error::WrongBase { .. }) => return Ok(None),
                Err(err) => return Err(err),
            },
            _ => None,
        };
        if j < tags.len() && tags.matches(j, &listing_tag(e, content.as_ref())) {
            j += 1;
        } else {
            extra.push(i);
        }
    }
    if j != tags.len() {
        return Ok(None);
    }
    let rest: Vec<ListEntry> = listing
        .iter()
        .enumerate()
        .filter(|(i, _)| extra.binary_search(i).is_err())
        .map(|(_, e)| e.clone())
        .collect();
    Ok((listing_digest(&rest) == *digest).then_some(extra))
}

/// What to do with entries of OLD that a patch does not know about: neither in the new
/// version, nor among the old entries the patch deletes or reads (a user's config file, a
/// cache directory). Nothing a patch does not name is ever deleted silently.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Unknown {
    /// Refuse the patch before anything is written, naming them ([`Error::UnknownEntries`]).
    /// The default.
    #[default]
    Refuse,
    /// Carry them over into the new version as they are (copied, or hard-linked in place),
    /// after the new version was built and verified. Refused when the new version needs one's
    /// place (an entry at the same path, or its directory removed or turned into a file). The
    /// result is then the new version plus these entries, so its bundle digest is not the
    /// patch's, and rerunning the patch on it is refused as a wrong base.
    Keep,
    /// Leave them out of the new version: in place, they are deleted with the old version.
    Remove,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum LinkMode {
    /// Copy unchanged files (OLD stays independent of the output).
    Copy,
    /// Hard-link unchanged files whose mode already matches (in-place apply).
    HardLink,
}

impl Patch {
    /// Open and fully validate a patch file with the default limits of [`Patcher::new`].
    pub fn open(path: &Path) -> Result<Patch> {
        Patch::open_limited(path, DEFAULT_MEMORY_LIMIT, u64::MAX)
    }

    /// Open and fully validate a patch file, refusing it (before reading the manifest) when it
    /// needs more than `memory_limit` bytes of heap or produces more than `output_limit` bytes.
    pub fn open_limited(path: &Path, memory_limit: u64, output_limit: u64) -> Result<Patch> {
        Patch::open_checked(path, memory_limit, output_limit, None)
    }

    /// [`Patch::open_limited`], also requiring a signature by `public_key` when one is given.
    fn open_checked(
        path: &Path,
        memory_limit: u64,
        output_limit: u64,
        public_key: Option<&[u8; 32]>,
    ) -> Result<Patch> {
        let file = open_patch_file(path)?;
        let len = file
            .metadata()
            .map_err(|e| Error::io(path, "stat", e))?
            .len();
        Patch::from_source(
            Box::new(file),
            len,
            path,
            memory_limit,
            output_limit,
            public_key,
        )
    }

    /// Open a patch read through `src`, which holds `len` bytes.
    ///
    /// The header and the manifest are read exactly once, during the checksum pass, and kept
    /// in memory: what is decoded is what was hashed (and signed), even if the bytes behind
    /// `src` change afterwards. The streams are read from `src` again while applying; a change
    /// there can only make an output differ from the hashes the verified manifest holds, which
    /// is refused before anything is committed.
    pub(crate) fn from_source(
        src: Box<dyn ReadAt + Send + Sync>,
        len: u64,
        path: &Path,
        memory_limit: u64,
        output_limit: u64,
        public_key: Option<&[u8; 32]>,
    ) -> Result<Patch> {
        let read_err = |e| Error::io(path, "read", e);
        let mut hb = [0u8; MAX_HEADER_LEN];
        let want = (hb.len() as u64).min(len) as usize;
        let got = read_at_most(&*src, &mut hb[..want], 0).map_err(read_err)?;
        let header = Header::decode(&hb[..got])?;
        let expect = header.patch_len().unwrap_or(u64::MAX);
        if len != expect {
            return Err(Error::corrupt(
                "header",
                format!(
                    "patch is {len} bytes but its header describes {expect} (truncated or padded)"
                ),
            ));
        }
        // The manifest is held in memory from the checksum pass on; the header bounds it by
        // manifest_raw_len, which the memory limit covers.
        let need = memory_needed(&header);
        if header.manifest_len > memory_limit {
            return Err(Error::LimitExceeded {
                what: "apply memory",
                needed: need,
                limit: memory_limit,
            });
        }
        // Whole-patch checksum in one streaming pass over bytes read once: the header from
        // `hb`, the manifest into `mbytes`, the streams through a buffer. For a signed patch
        // the signed digest is the hash of the bytes before the signature block.
        let hlen = header.encoded_len();
        let body = len - TRAILER_LEN as u64;
        let sig_at = header.signature_offset();
        let mut hasher = blake3::Hasher::new();
        hasher.update(&hb[..hlen]);
        // At most the memory limit (checked above), and within the patch's length.
        let mut mbytes = vec![0u8; header.manifest_len as usize];
        let mut n = hlen as u64;
        n += read_at_most(&*src, &mut mbytes, n).map_err(read_err)? as u64;
        hasher.update(&mbytes);
        let streams_at = header.manifest_offset() + header.manifest_len;
        n += tree::hash_into(
            &mut hasher,
            Section::new(&*src, streams_at, sig_at - streams_at),
            path,
        )?;
        let mut sig = [0u8; SIGNATURE_LEN];
        let mut signed_digest = None;
        if header.is_signed() {
            signed_digest = Some(*hasher.finalize().as_bytes());
            n += read_at_most(&*src, &mut sig, sig_at).map_err(read_err)? as u64;
            hasher.update(&sig);
        }
        if n != body {
            return Err(Error::corrupt("trailer", "patch shrank while reading"));
        }
        let found = *hasher.finalize().as_bytes();
        let mut trailer = [0u8; TRAILER_LEN];
        let got = read_at_most(&*src, &mut trailer, body).map_err(read_err)?;
        if got != TRAILER_LEN {
            return Err(Error::corrupt("trailer", "missing"));
        }
        if found != trailer {
            return Err(Error::Checksum {
                expected: hex(&trailer),
                found: hex(&found),
            });
        }
        if let Some(key) = public_key {
            match signed_digest {
                Some(d) => crate::sign::verify_digest(key, &d, &sig)?,
                None => return Err(Error::Unsigned),
            }
        }
        if need > memory_limit {
            return Err(Error::LimitExceeded {
                what: "apply memory",
                needed: need,
                limit: memory_limit,
            });
        }
        if header.new_total > output_limit {
            return Err(Error::LimitExceeded {
                what: "output size",
                needed: header.new_total,
                limit: output_limit,
            });
        }
        // Manifest: decoded from the verified bytes in memory to exactly manifest_raw_len bytes.
        let raw_len = header.manifest_raw_len;
        let cap = usize::try_from(raw_len)
            .map_err(|_| Error::corrupt("header", "manifest length does not fit in memory"))?;
        let raw = if header.manifest_len == header.manifest_raw_len {
            // Stored as it is.
            mbytes
        } else {
            let mut raw = Vec::new();
            let mem: &Vec<u8> = &mbytes;
            if header.flags & FLAG_MANIFEST_LZMA != 0 {
                let mut dec = Stream::open(
                    mem,
                    0,
                    header.manifest_len,
                    CODEC_LZMA2,
                    header.window_log,
                    "manifest",
                )?;
                read_exact_stream(&mut dec, &mut raw, cap, "manifest")?;
            } else {
                let sec = Section::new(mem, 0, header.manifest_len);
                let mut dec =
                    decoder(sec, header.window_log).map_err(|e| stream_err("manifest", e))?;
                read_exact_stream(&mut dec, &mut raw, cap, "manifest")?;
            }
            raw
        };
        // A relative manifest is resolved against OLD's file list by `bind`; here its
        // structure is checked and its target digest read.
        let (manifest, relative, new_digest) =
            if raw.first() == Some(&FORM_RELATIVE) && header.is_directory() {
                Manifest::summarize_relative(&raw, &header)?;
                let mut d = [0u8; 32];
                d.copy_from_slice(&raw[1..33]);
                (None, raw, d)
            } else {
                let m = Manifest::decode(&raw, &header)?;
                let d = m.new_digest;
                (Some(m), Vec::new(), d)
            };
        Ok(Patch {
            src,
            path: path.to_path_buf(),
            header,
            manifest,
            relative,
            new_digest,
            checksum: trailer,
            unknown: Vec::new(),
            memory_limit,
            listing_bytes: 0,
        })
    }

    /// Resolve a manifest stored relative to OLD's file list by scanning `old` (no contents
    /// are read). Does nothing for a manifest stored in full. A file list that differs from
    /// the patch's base is [`Error::WrongBase`], or [`Error::UnknownEntries`] when OLD only
    /// has entries the base did not.
    pub fn bind(&mut self, old: &Path) -> Result<()> {
        if self.manifest.is_some() {
            return Ok(());
        }
        let old = self.open_old(old)?;
        self.bind_checked(&old, Unknown::Refuse)
    }

    /// [`Patch::bind`] to OLD opened once (the scan walks beneath its handle), then find the
    /// entries of OLD the patch does not know about and apply `policy` to them (see
    /// [`Unknown`]): refuse (naming them), or record them to keep or to leave out. Under the
    /// full form the patch names every entry of its base (the new version's, the deleted ones
    /// and the old files it reads), so an unknown entry is any other; under the relative form
    /// they are found by aligning OLD's listing with the base tags, and confirmed exactly by
    /// the listing digest.
    pub(crate) fn bind_checked(&mut self, old: &Old, policy: Unknown) -> Result<()> {
        if !self.header.is_directory() {
            return Ok(());
        }
        let Old::Dir(dir) = old else {
            return Err(Error::wrong_base(
                "",
                "the patch is for a directory bundle but OLD is not a directory",
            ));
        };
        let mut listing = tree::scan_dir(dir).map_err(|e| match e {
            Error::InvalidInput { path, reason } => {
                Error::wrong_base(path.display().to_string(), reason)
            }
            other => other,
        })?;
        if let Some(m) = &self.manifest {
            let known: std::collections::HashSet<&str> = m
                .entries
                .iter()
                .map(|e| e.path.as_str())
                .chain(m.deleted.iter().map(String::as_str))
                .chain(m.old_files.iter().map(|f| f.path.as_str()))
                .collect();
            self.unknown = listing
                .into_iter()
                .filter(|e| !known.contains(e.path.as_str()))
                .collect();
            return self.check_unknown(policy);
        }
        if self.header.has_base_tags() {
            let prefix = Manifest::relative_prefix(&self.relative, &self.header)?;
            if listing_digest(&listing) != prefix.listing_digest {
                let extra =
                    extra_entries(old, &listing, &prefix.base_tags, &prefix.listing_digest)?;
                let Some(extra) = extra else {
                    return Err(name_listing_difference(old, &listing, &prefix.base_tags)?);
                };
                let (unknown, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut listing)
                    .into_iter()
                    .enumerate()
                    .partition(|(i, _)| extra.binary_search(i).is_ok());
                listing = kept.into_iter().map(|(_, e)| e).collect();
                let unknown = unknown.into_iter().map(|(_, e)| e).collect();
                self.unknown = unknown;
                if policy == Unknown::Refuse {
                    return self.check_unknown(policy);
                }
            }
        }
        self.listing_bytes = listing_memory(&listing);
        self.manifest = Some(Manifest::decode_with_old(
            &self.relative,
            &self.header,
            Some(&listing),
        )?);
        self.check_unknown(policy)
    }

    /// Refuse unknown entries under [`Unknown::Refuse`]; under [`Unknown::Keep`], refuse those
    /// that cannot be kept because the new version needs their place.
    fn check_unknown(&self, policy: Unknown) -> Result<()> {
        if self.unknown.is_empty() {
            return Ok(());
        }
        match policy {
            Unknown::Remove => Ok(()),
            Unknown::Refuse => Err(Error::UnknownEntries {
                count: self.unknown.len(),
                paths: self
                    .unknown
                    .iter()
                    .take(5)
                    .map(|e| e.path.clone())
                    .collect(),
            }),
            Unknown::Keep => {
                let Some(m) = &self.manifest else {
                    return Ok(());
                };
                let new: std::collections::HashMap<&str, bool> = m
                    .entries
                    .iter()
                    .map(|e| (e.path.as_str(), matches!(e.kind, EntryKind::Dir)))
                    .collect();
                let kept_dirs: std::collections::HashSet<&str> = self
                    .unknown
                    .iter()
                    .filter(|e| matches!(e.kind, ListKind::Dir))
                    .map(|e| e.path.as_str())
                    .collect();
                for u in &self.unknown {
                    let why = if new.contains_key(u.path.as_str()) {
                        Some("the new version has an entry at this path")
                    } else {
                        match u.path.rsplit_once('/') {
                            None => None,
                            Some((dir, _)) => match new.get(dir) {
                                Some(true) => None,
                                Some(false) => {
                                    Some("the new version has a file where its directory is")
                                }
                                None if kept_dirs.contains(dir) => None,
                                None => Some("the new version removes its directory"),
                            },
                        }
                    };
                    if let Some(why) = why {
                        return Err(Error::wrong_base(
                            &u.path,
                            format!("cannot keep this entry the patch does not know: {why}"),
                        ));
                    }
                }
                Ok(())
            }
        }
    }

    /// Entries of OLD the patch does not know about, found by the last bind (empty before).
    pub fn unknown_entries(&self) -> impl Iterator<Item = &str> {
        self.unknown.iter().map(|e| e.path.as_str())
    }

    /// Copy (or, in place, hard-link) the unknown entries of OLD into the built stage, for
    /// [`Unknown::Keep`]. The patch knows nothing of their contents: they are carried over as
    /// they are, read beneath OLD's handle and written beneath the stage's, never through a
    /// symlink, after the new version itself was verified.
    pub(crate) fn carry_unknown(&self, old: &Old, stage: &Path, link: LinkMode) -> Result<()> {
        if self.unknown.is_empty() {
            return Ok(());
        }
        let mut w = Writer::open(stage).map_err(|e| Error::io(stage, "open directory", e))?;
        for u in &self.unknown {
            let dst = stage.join(&u.path);
            match &u.kind {
                ListKind::Dir => w.create_dir(&u.path).map_err(|e| stage_error(&dst, e))?,
                ListKind::Symlink { target } => w
                    .symlink(target, &u.path)
                    .map_err(|e| stage_error(&dst, e))?,
                ListKind::File { exec, .. } => {
                    let mut from = old
                        .open(&u.path)
                        .map_err(|e| Error::io(&old.display(&u.path), "open", e))?;
                    if link == LinkMode::HardLink
                        && from.meta.exec == *exec
                        && w.link_file(&from.file, &u.path).is_ok()
                    {
                        continue;
                    }
                    let mut to = w
                        .create_file(&u.path, *exec)
                        .map_err(|e| stage_error(&dst, e))?;
                    io::copy(&mut from.file, &mut to).map_err(|e| Error::io(&dst, "copy", e))?;
                    if !SYNCFS {
                        to.sync_all().map_err(|e| Error::io(&dst, "fsync", e))?;
                    }
                }
            }
        }
        if SYNCFS {
            syncfs(stage)
        } else {
            sync_dir(stage)
        }
    }

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

    /// The bundle digest this patch produces.
    pub fn new_digest(&self) -> Hash {
        self.new_digest
    }

    /// The patch's identity: its whole-patch blake3 checksum (the trailer, verified on open).
    /// An in-place journal records it, so that only the same patch finishes an interrupted run.
    pub fn checksum(&self) -> Hash {
        self.checksum
    }

    fn m(&self) -> &Manifest {
        self.manifest
            .as_ref()
            .expect("Patch::bind runs before the manifest is used")
    }

    /// The path the patch was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The fixed header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The validated manifest, once known: always for a manifest stored in full; for one
    /// stored relative to OLD's file list, after [`Patch::bind`].
    pub fn manifest(&self) -> Option<&Manifest> {
        self.manifest.as_ref()
    }

    /// The raw relative-form manifest, when the patch has one (for summaries without OLD).
    pub fn relative_manifest(&self) -> Option<&[u8]> {
        if self.relative.is_empty() {
            None
        } else {
            Some(&self.relative)
        }
    }

    /// Total length of the patch file.
    pub fn len(&self) -> u64 {
        self.header.patch_len().unwrap_or(0)
    }

    /// Never true: a valid patch has at least a header and trailer.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Whether the patch needs anything from OLD.
    fn needs_old(&self) -> bool {
        !self.m().old_files.is_empty()
            || self
                .m()
                .entries
                .iter()
                .any(|e| matches!(&e.kind, EntryKind::File { op, .. } if op.reads_own_path()))
    }

    /// Open OLD once, as the kind of bundle the patch is for: a directory handle, or the file
    /// itself (a symlink as OLD's file is not followed; a FIFO or device is refused without
    /// waiting on it).
    pub(crate) fn open_old(&self, old: &Path) -> Result<Old> {
        if self.header.is_directory() {
            return match Dir::open(old) {
                Ok(d) => Ok(Old::Dir(d)),
                Err(e) if e.kind() == io::ErrorKind::NotADirectory => Err(Error::wrong_base(
                    "",
                    "the patch is for a directory bundle but OLD is not a directory",
                )),
                #[cfg(unix)]
                Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => Err(Error::wrong_base(
                    "",
                    "the patch is for a directory bundle but OLD is not a directory",
                )),
                Err(e) => Err(Error::io(old, "open directory", e)),
            };
        }
        match sys::open_file_path(old) {
            Ok(o) => Ok(Old::File {
                file: o.file,
                path: old.to_path_buf(),
            }),
            Err(e) if e.kind() == io::ErrorKind::InvalidInput && e.raw_os_error().is_none() => Err(
                Error::wrong_base("", format!("the patch is for a single file but OLD {e}")),
            ),
            Err(e) if sys::is_link_refusal(&e) => Err(Error::wrong_base(
                "",
                "the patch is for a single file but OLD is a symlink (never followed)",
            )),
            Err(e) => Err(Error::io(old, "open", e)),
        }
    }

    /// Whether `target` has exactly the new bundle's shape (paths, kinds, sizes, modes, link
    /// targets), judged without reading file contents: a cheap test before hashing it all.
    pub(crate) fn shape_matches(&self, target: &Path) -> Result<bool> {
        if !self.header.is_directory() {
            let md = fs::symlink_metadata(target).map_err(|e| Error::io(target, "stat", e))?;
            return Ok(md.is_file() && md.len() == self.header.new_total);
        }
        let nodes = match tree::scan(target) {
            Ok(n) => n,
            Err(_) => return Ok(false),
        };
        if nodes.len() != self.m().entries.len() {
            return Ok(false);
        }
        Ok(nodes.iter().zip(&self.m().entries).all(|(n, e)| {
            n.path == e.path
                && match (&n.kind, &e.kind) {
                    (tree::NodeKind::Dir, EntryKind::Dir) => true,
                    (tree::NodeKind::Symlink { target: a }, EntryKind::Symlink { target: b }) => {
                        a == b
                    }
                    (
                        tree::NodeKind::File { exec: x, size: a },
                        EntryKind::File {
                            exec: y, size: b, ..
                        },
                    ) => x == y && a == b,
                    _ => false,
                }
        }))
    }

    /// Hash every old file the patch relies on and compare, before anything is written.
    pub(crate) fn check_base(&self, old: &Old) -> Result<BaseCheck> {
        if !self.needs_old() {
            return Ok(BaseCheck {
                base: Vec::new(),
                table: Vec::new(),
                base_ids: Vec::new(),
                table_ids: Vec::new(),
            });
        }
        // Table files first (sizes named on mismatch), then same-path files; one digest.
        let mut h = blake3::Hasher::new();
        let mut table = Vec::with_capacity(self.m().old_files.len());
        let mut table_ids = Vec::with_capacity(self.m().old_files.len());
        let mut base_ids = Vec::new();
        for f in &self.m().old_files {
            let (size, hash, id) = hash_base_file(old, &f.path)?;
            if size != f.size {
                return Err(Error::wrong_base(
                    &f.path,
                    format!("size is {size}, the patch expects {}", f.size),
                ));
            }
            h.update(&hash);
            table.push(hash);
            table_ids.push(id);
        }
        let mut base = Vec::new();
        for e in &self.m().entries {
            let EntryKind::File { size, op, .. } = &e.kind else {
                continue;
            };
            if !op.reads_own_path() {
                continue;
            }
            let (got, hash, id) = hash_base_file(old, &e.path)?;
            let want = match op {
                FileOp::Delta { base_size, .. } => *base_size,
                _ => *size,
            };
            if got != want {
                return Err(Error::wrong_base(
                    &e.path,
                    format!("size is {got}, the patch expects {want}"),
                ));
            }
            h.update(&hash);
            base.push((got, hash));
            base_ids.push(id);
        }
        if *h.finalize().as_bytes() != self.m().base_digest {
            if !self.header.is_directory() {
                return Err(Error::wrong_base("", "content differs (blake3 mismatch)"));
            }
            if let Some(e) = self.name_content_difference(old, &table, &base)? {
                return Err(e);
            }
            return Err(Error::wrong_base(
                "",
                format!(
                    "the content of one or more of the {} files the patch relies on differs{}",
                    base.len() + table.len(),
                    if self.m().base_tags.is_empty() {
                        NO_TAGS
                    } else {
                        " (each escaped its base tag, a 2^-bits chance)"
                    }
                ),
            ));
        }
        Ok(BaseCheck {
            base,
            table,
            base_ids,
            table_ids,
        })
    }

    /// After a base-digest mismatch: the first old file relied upon (by path) whose base tag
    /// does not match its hash, and how many do not. `None` without base tags, or when every
    /// tag matches (each differing file escapes its tag with probability 2^-bits).
    fn name_content_difference(
        &self,
        old: &Old,
        table: &[Hash],
        base: &[(u64, Hash)],
    ) -> Result<Option<Error>> {
        let m = self.m();
        let tags = &m.base_tags;
        if tags.is_empty() {
            return Ok(None);
        }
        // Every relied file with its hash, in base-digest order.
        let same_path = m
            .entries
            .iter()
            .filter(|e| matches!(&e.kind, EntryKind::File { op, .. } if op.reads_own_path()))
            .map(|e| e.path.as_str());
        let relied: Vec<(&str, &Hash)> = m
            .old_files
            .iter()
            .map(|f| f.path.as_str())
            .zip(table)
            .chain(same_path.zip(base.iter().map(|(_, h)| h)))
            .collect();
        // A relative manifest's tags are per entry of OLD's listing, scanned again here (this
        // is the error path; the listing is not kept while applying).
        let listing = match old {
            Old::Dir(d) if !self.relative.is_empty() => match tree::scan_dir(d) {
                Ok(l) => l,
                Err(_) => return Ok(None),
            },
            _ => Vec::new(),
        };
        let differ: Vec<&str> = if listing.is_empty() {
            // Full form: one tag per relied file, in this order; tag = the file's BLAKE3.
            relied
                .iter()
                .enumerate()
                .filter(|(i, (_, h))| !tags.matches(*i, h))
                .map(|(_, (p, _))| *p)
                .collect()
        } else {
            // Relative form: one tag per listing entry; the listing itself matched, so only
            // the contents of relied files can differ.
            let hashes: std::collections::HashMap<&str, &Hash> = relied.iter().copied().collect();
            listing
                .iter()
                .enumerate()
                .filter_map(|(i, e)| {
                    let h = hashes.get(e.path.as_str())?;
                    (!tags.matches(i, &listing_tag(e, Some(h)))).then_some(e.path.as_str())
                })
                .collect()
        };
        let Some(first) = differ.iter().min() else {
            return Ok(None);
        };
        Ok(Some(Error::wrong_base(
            *first,
            format!(
                "content differs from the base's ({} of the {} files the patch relies on differ)",
                differ.len(),
                relied.len()
            ),
        )))
    }

    /// Rebuild every entry under `stage` (or into a hashing sink when `None`), verifying each
    /// file and the bundle digest. Does not rename anything.
    ///
    /// OLD is read only through `old` (beneath its handle, each file required to be the one
    /// the base check hashed); the staging tree is written only beneath a handle on `stage`,
    /// never following a symlink (a directory of it swapped for a link is refused).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn build(
        &self,
        old: &Old,
        stage: Option<&Path>,
        base: &BaseCheck,
        link: LinkMode,
        progress: Option<&ProgressFn>,
        hook: Option<&HookFn>,
    ) -> Result<ApplyReport> {
        let staged = |path: &str| {
            if let (Some(h), Some(stage)) = (hook, stage) {
                h(ApplyEvent::Staged { stage, path });
            }
        };
        let mut report = ApplyReport::default();
        let mut digest = TreeDigest::new();
        let mut base_files = base.base.iter().zip(&base.base_ids);
        let mut file_hash = [0u8; 32];
        let done = AtomicU64::new(0);
        let total = self.header.new_total;
        let dir_bundle = self.header.is_directory();
        // The staging tree of a directory bundle, written beneath one handle.
        let mut tree_out = match (dir_bundle, stage) {
            (true, Some(stage)) => {
                create_dir(stage)?;
                Some(Writer::open(stage).map_err(|e| Error::io(stage, "open directory", e))?)
            }
            _ => None,
        };
        // Where each entry goes, for messages (and the staged file of a single-file bundle).
        let dest_of = |rel: &str| {
            stage.map(|s| {
                if rel.is_empty() {
                    s.to_path_buf()
                } else {
                    s.join(rel)
                }
            })
        };
        let mut made_dirs: Vec<PathBuf> = Vec::new();
        // Files of the old-file table this apply hard-links (their ctime moves), for their
        // later use as sources.
        let table_ids: std::collections::HashSet<FileId> = base.table_ids.iter().copied().collect();
        let mut relinked = Relinked::new();
        let mut streams = Streams::open(self)?;
        for e in &self.m().entries {
            let dest = dest_of(&e.path);
            match &e.kind {
                EntryKind::Dir => {
                    if let (Some(w), Some(d)) = (&mut tree_out, &dest) {
                        w.create_dir(&e.path).map_err(|err| stage_error(d, err))?;
                        made_dirs.push(d.clone());
                        staged(&e.path);
                    }
                    digest.dir(&e.path);
                    report.dirs += 1;
                }
                EntryKind::Symlink { target } => {
                    if let (Some(w), Some(d)) = (&mut tree_out, &dest) {
                        w.symlink(target, &e.path)
                            .map_err(|err| stage_error(d, err))?;
                        staged(&e.path);
                    }
                    digest.symlink(&e.path, target);
                    report.symlinks += 1;
                }
                EntryKind::File { exec, size, op } => {
                    // Size, hash and identity of the old file at this path, when the op
                    // reads it.
                    let same = if op.reads_own_path() {
                        let (sh, id) = base_files.next().ok_or_else(|| {
                            Error::corrupt("manifest", "base file count mismatch")
                        })?;
                        Some((sh.0, sh.1, *id))
                    } else {
                        None
                    };
                    // The hash this output must have, where the patch determines it up front.
                    let expected: Option<Hash> = match op {
                        FileOp::Unchanged => same.map(|s| s.1),
                        FileOp::Copy { source } => base.table.get(*source as usize).copied(),
                        _ => None,
                    };
                    let linked = match (&mut tree_out, &dest, op, link, same) {
                        (Some(w), Some(d), FileOp::Unchanged, LinkMode::HardLink, Some(s)) => {
                            let l = try_hard_link(old, &e.path, &s.2, w, d, *exec)?;
                            if let (Some(after), true) = (l, table_ids.contains(&s.2)) {
                                relinked.insert(s.2, after);
                            }
                            l.is_some()
                        }
                        _ => false,
                    };
                    let hash = if linked {
                        done.fetch_add(*size, Ordering::Relaxed);
                        expected.expect("an unchanged file has a base hash")
                    } else {
                        let file = match (&mut tree_out, &dest) {
                            (Some(w), Some(d)) => Some(
                                w.create_file(&e.path, *exec)
                                    .map_err(|err| stage_error(d, err))?,
                            ),
                            (None, Some(d)) => Some(create_file(d, *exec)?),
                            _ => None,
                        };
                        let mut w = HashingWriter::new(file);
                        let mut sink = ProgressWriter {
                            inner: &mut w,
                            done: &done,
                            total,
                            progress,
                        };
                        let same = same.map(|s| (s.0, s.2));
                        self.produce(old, e, same, base, &relinked, &mut streams, &mut sink)
                            .map_err(|err| match (err, &dest) {
                                // Name the file being written (disk full, I/O error).
                                (Error::Io { path, op, source }, Some(d))
                                    if path == Path::new(OUTPUT) =>
                                {
                                    Error::Io {
                                        path: d.clone(),
                                        op,
                                        source,
                                    }
                                }
                                (err, _) => err,
                            })?;
                        let (n, hash, file) = w.finish().map_err(|err| {
                            Error::io(dest.as_deref().unwrap_or(Path::new(&e.path)), "write", err)
                        })?;
                        if n != *size || expected.is_some_and(|x| x != hash) {
                            return Err(Error::OutputMismatch {
                                path: e.path.clone(),
                            });
                        }
                        if let (Some(f), Some(d)) = (file, &dest) {
                            if !SYNCFS {
                                f.sync_all().map_err(|err| Error::io(d, "fsync", err))?;
                            }
                        }
                        hash
                    };
                    staged(&e.path);
                    digest.file(&e.path, *exec, *size, &hash);
                    file_hash = hash;
                    report.files += 1;
                    report.bytes += size;
                }
            }
        }
        streams.finish()?;
        let d = if dir_bundle {
            digest.finish()
        } else {
            file_hash
        };
        if d != self.m().new_digest {
            return Err(Error::OutputMismatch {
                path: "(bundle digest)".into(),
            });
        }
        report.digest = d;
        // Make everything durable before the caller renames it into place: on Linux one
        // syncfs(2) of the staging file system (data and metadata of every staged file and
        // directory); elsewhere each file was fsynced on close, then directories deepest first.
        if let Some(stage) = stage {
            if SYNCFS {
                syncfs(stage)?;
            } else {
                for dir in made_dirs.iter().rev() {
                    sync_dir(dir)?;
                }
                if dir_bundle {
                    sync_dir(stage)?;
                }
            }
        }
        Ok(report)
    }

    /// Stream one file's content into `out`. `same` is the size and identity of the old file
    /// at this path as hashed, when the op reads it; every old file is opened beneath OLD's
    /// handle and must still be the file that was hashed.
    #[allow(clippy::too_many_arguments)]
    fn produce(
        &self,
        old: &Old,
        e: &crate::format::Entry,
        same: Option<(u64, FileId)>,
        base: &BaseCheck,
        relinked: &Relinked,
        streams: &mut Streams<'_>,
        out: &mut dyn Write,
    ) -> Result<()> {
        let path = e.path.as_str();
        let EntryKind::File { size, op, .. } = &e.kind else {
            return Ok(());
        };
        let size = *size;
        // The file of the old-file table at `i`, as hashed.
        let table = |i: u32| -> Result<(Opened, u64, &str)> {
            let f = &self.m().old_files[i as usize];
            let id = base
                .table_ids
                .get(i as usize)
                .ok_or_else(|| Error::corrupt("manifest", "old-file index out of range"))?;
            Ok((
                old.open_checked(&f.path, id, relinked)?,
                f.size,
                f.path.as_str(),
            ))
        };
        let own = || -> Result<(Opened, u64)> {
            let (n, id) =
                same.ok_or_else(|| Error::corrupt("manifest", "base file count mismatch"))?;
            Ok((old.open_checked(path, &id, relinked)?, n))
        };
        match op {
            FileOp::Unchanged => {
                let (o, _) = own()?;
                copy_file(&o.file, &old.display(path), size, out)
            }
            FileOp::Copy { source } => {
                let (o, _, p) = table(*source)?;
                copy_file(&o.file, &old.display(p), size, out)
            }
            FileOp::Add => copy_exact_stream(&mut streams.extra, size, out, "extra stream"),
            FileOp::Delta { sources, .. } => {
                let mut parts = Vec::with_capacity(sources.len().max(1));
                if sources.is_empty() {
                    let (o, n) = own()?;
                    parts.push((o.file, n, old.display(path)));
                }
                for &s in sources {
                    let (o, n, p) = table(s)?;
                    parts.push((o.file, n, old.display(p)));
                }
                let src = Source::new(parts)?;
                apply_delta(streams, &src, size, out)
            }
        }
    }
}

/// The three solid streams of a patch, decoded as files consume them.
pub(crate) struct Streams<'a> {
    ctrl: BufReader<Stream<'a>>,
    diff: DiffSource<'a>,
    extra: Stream<'a>,
    obuf: Vec<u8>,
    dbuf: Vec<u8>,
    /// The current control block and how many of its controls were used.
    block: Vec<Control>,
    used: usize,
}

impl<'a> Streams<'a> {
    fn open(p: &'a Patch) -> Result<Streams<'a>> {
        let h = &p.header;
        let open = |i: usize, what: &'static str| {
            Stream::open(
                &*p.src,
                h.stream_offset(i),
                h.stream_lens[i],
                h.codecs[i],
                h.window_log,
                what,
            )
        };
        Ok(Streams {
            ctrl: BufReader::with_capacity(4096, open(0, "control stream")?),
            diff: DiffSource::new(open(1, "diff stream")?, h.flags & FLAG_DIFF_RUNS != 0),
            extra: open(2, "extra stream")?,
            obuf: vec![0u8; IO_BUF],
            dbuf: vec![0u8; IO_BUF],
            block: Vec::new(),
            used: 0,
        })
    }

    /// Every stream must be consumed exactly.
    /// The next control of the current file, reading a new block when the current one is used.
    fn next_control(&mut self) -> Result<Control> {
        const C: &str = "control stream";
        if self.used == self.block.len() {
            let n = need_varint(&mut self.ctrl, C)?;
            if n == 0 || n > MAX_CONTROL_BLOCK as u64 {
                return Err(Error::corrupt(
                    C,
                    format!("control block of {n} controls (1..={MAX_CONTROL_BLOCK})"),
                ));
            }
            let n = n as usize;
            // Bounded by MAX_CONTROL_BLOCK, not by the patch.
            self.block.clear();
            for _ in 0..n {
                let diff = need_varint(&mut self.ctrl, C)?;
                self.block.push(Control {
                    diff,
                    extra: 0,
                    seek: 0,
                });
            }
            for i in 0..n {
                self.block[i].extra = need_varint(&mut self.ctrl, C)?;
            }
            for i in 0..n {
                let s = need_varint(&mut self.ctrl, C)?;
                self.block[i].seek = ((s >> 1) as i64) ^ -((s & 1) as i64);
            }
            self.used = 0;
        }
        self.used += 1;
        Ok(self.block[self.used - 1])
    }

    fn finish(&mut self) -> Result<()> {
        expect_end(&mut self.ctrl, "control stream")?;
        self.diff.expect_end()?;
        expect_end(&mut self.extra, "extra stream")
    }
}

// ---------------------------------------------------------------------------------------------
// Delta streams

/// Copy exactly `n` bytes of a stream to `out` (the stream may hold more).
fn copy_exact_stream(
    r: &mut impl Read,
    n: u64,
    out: &mut dyn Write,
    what: &'static str,
) -> Result<()> {
    let mut buf = [0u8; 16 << 10];
    let mut left = n;
    while left > 0 {
        let k = (left.min(buf.len() as u64)) as usize;
        read_full(r, &mut buf[..k], what)?;
        out.write_all(&buf[..k])
            .map_err(|e| Error::io(Path::new(OUTPUT), "write", e))?;
        left -= k as u64;
    }
    Ok(())
}

/// Copy the first `size` bytes of the open old file `f` (named `p` in messages) to `out`.
fn copy_file(f: &File, p: &Path, size: u64, out: &mut dyn Write) -> Result<()> {
    let mut r = Section::new(f, 0, size);
    let mut buf = vec![0u8; IO_BUF];
    let mut left = size;
    while left > 0 {
        let k = read_retry(&mut r, &mut buf).map_err(|e| Error::io(p, "read", e))?;
        if k == 0 {
            return Err(Error::wrong_base(
                p.display().to_string(),
                "file shrank while applying",
            ));
        }
        out.write_all(&buf[..k])
            .map_err(|e| Error::io(Path::new(OUTPUT), "write", e))?;
        left -= k as u64;
    }
    Ok(())
}

/// Old files concatenated into one virtual source.
pub(crate) struct Source {
    parts: Vec<(File, u64, u64, PathBuf)>, // (file, start, len, path)
    len: u64,
}

impl Source {
    fn new(files: Vec<(File, u64, PathBuf)>) -> Result<Source> {
        let mut parts = Vec::with_capacity(files.len());
        let mut start = 0u64;
        for (f, len, p) in files {
            parts.push((f, start, len, p));
            start = start
                .checked_add(len)
                .ok_or_else(|| Error::corrupt("manifest", "source sizes overflow"))?;
        }
        Ok(Source { parts, len: start })
    }

    /// Fill `buf` from virtual offset `pos` (the caller has checked `pos + buf.len() <= len`).
    fn read_exact_at(&self, buf: &mut [u8], pos: u64) -> Result<()> {
        let mut done = 0usize;
        while done < buf.len() {
            let at = pos + done as u64;
            let (f, start, len, p) = self
                .parts
                .iter()
                .find(|(_, s, l, _)| at >= *s && at < s + l)
                .ok_or_else(|| Error::corrupt("delta stream", "source offset out of range"))?;
            let off = at - start;
            let k = ((len - off) as usize).min(buf.len() - done);
            let got = read_at_most(f, &mut buf[done..done + k], off)
                .map_err(|e| Error::io(p, "read", e))?;
            if got != k {
                return Err(Error::wrong_base(
                    p.display().to_string(),
                    "file shrank while applying",
                ));
            }
            done += k;
        }
        Ok(())
    }
}

/// Rebuild one file of `size` bytes from its controls (see [`crate::format::Control`]).
pub(crate) fn apply_delta(
    st: &mut Streams<'_>,
    src: &Source,
    size: u64,
    out: &mut dyn Write,
) -> Result<()> {
    const C: &str = "control stream";
    let mut pos: u64 = 0;
    let mut produced: u64 = 0;
    let mut first = true;
    while produced < size {
        let Control {
            diff: d,
            extra: e,
            seek,
        } = st.next_control()?;
        let step = d
            .checked_add(e)
            .ok_or_else(|| Error::corrupt(C, "length overflow"))?;
        if step == 0 && !first {
            return Err(Error::corrupt(
                C,
                "a control that produces nothing (only a file's first may)",
            ));
        }
        first = false;
        if produced.checked_add(step).is_none_or(|t| t > size) {
            return Err(Error::corrupt(
                C,
                format!("controls produce more than the file's {size} bytes"),
            ));
        }
        if pos.checked_add(d).is_none_or(|t| t > src.len) {
            return Err(Error::corrupt(
                C,
                format!(
                    "reads {d} source bytes at {pos}, past the {}-byte source",
                    src.len
                ),
            ));
        }
        let mut left = d;
        while left > 0 {
            let k = left.min(IO_BUF as u64) as usize;
            src.read_exact_at(&mut st.obuf[..k], pos)?;
            st.diff.fill(&mut st.dbuf[..k])?;
            for (o, x) in st.obuf[..k].iter_mut().zip(&st.dbuf[..k]) {
                *o = o.wrapping_add(*x);
            }
            out.write_all(&st.obuf[..k])
                .map_err(|er| Error::io(Path::new(OUTPUT), "write", er))?;
            pos += k as u64;
            left -= k as u64;
        }
        copy_exact_stream(&mut st.extra, e, out, "extra stream")?;
        produced += step;
        let np = i128::from(pos) + i128::from(seek);
        if np < 0 || np > i128::from(src.len) {
            return Err(Error::corrupt(
                C,
                format!("seek to {np}, outside the {}-byte source", src.len),
            ));
        }
        pos = np as u64;
    }
    if st.used != st.block.len() {
        return Err(Error::corrupt(
            C,
            "a control block runs past the end of its file",
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Output helpers

struct HashingWriter {
    file: Option<io::BufWriter<File>>,
    h: blake3::Hasher,
    n: u64,
}

impl HashingWriter {
    fn new(f: Option<File>) -> HashingWriter {
        HashingWriter {
            file: f.map(|f| io::BufWriter::with_capacity(IO_BUF, f)),
            h: blake3::Hasher::new(),
            n: 0,
        }
    }

    fn finish(self) -> io::Result<(u64, Hash, Option<File>)> {
        let f = match self.file {
            Some(w) => Some(w.into_inner().map_err(|e| e.into_error())?),
            None => None,
        };
        Ok((self.n, *self.h.finalize().as_bytes(), f))
    }
}

impl Write for HashingWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let k = match &mut self.file {
            Some(f) => f.write(buf)?,
            None => buf.len(),
        };
        self.h.update(&buf[..k]);
        self.n += k as u64;
        Ok(k)
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.file {
            Some(f) => f.flush(),
            None => Ok(()),
        }
    }
}

struct ProgressWriter<'a> {
    inner: &'a mut dyn Write,
    done: &'a AtomicU64,
    total: u64,
    progress: Option<&'a ProgressFn>,
}

impl Write for ProgressWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let k = self.inner.write(buf)?;
        let before = self.done.fetch_add(k as u64, Ordering::Relaxed);
        if let Some(p) = self.progress {
            // Report about every MiB.
            if (before >> 20) != ((before + k as u64) >> 20) {
                p(before + k as u64, self.total);
            }
        }
        Ok(k)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A hidden sibling path of `target` for staging: `.NAME.bundelta-TAG-PID` (the diff's
/// temporary patch; an apply's stages are named and recorded by `inplace`).
#[cfg(feature = "diff")]
pub(crate) fn staging_path(target: &Path, tag: &str) -> Result<PathBuf> {
    let name = target
        .file_name()
        .ok_or_else(|| Error::invalid_input(target, "output path has no file name"))?
        .to_string_lossy();
    let parent = parent_of(target);
    Ok(parent.join(format!(".{name}.bundelta-{tag}-{}", std::process::id())))
}

pub(crate) fn parent_of(p: &Path) -> PathBuf {
    match p.parent() {
        Some(x) if !x.as_os_str().is_empty() => x.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn create_dir(p: &Path) -> Result<()> {
    let mut b = fs::DirBuilder::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o755);
    }
    b.create(p).map_err(|e| Error::io(p, "create directory", e))
}

fn create_file(p: &Path, exec: bool) -> Result<File> {
    let mut o = fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(if exec { 0o755 } else { 0o644 })
            .custom_flags(libc::O_NOFOLLOW);
    }
    #[cfg(not(unix))]
    let _ = exec;
    o.open(p).map_err(|e| Error::io(p, "create", e))
}

/// An error writing the staging tree at `p`: a symlink met there (a directory of the stage
/// replaced by a link while applying) is named as such.
fn stage_error(p: &Path, e: io::Error) -> Error {
    if sys::is_link_refusal(&e) {
        Error::io(
            p,
            "create in the staging tree (a directory of it was replaced by a symlink or a \
             file; symlinks are never followed)",
            e,
        )
    } else {
        Error::io(p, "create", e)
    }
}

/// Hard-link the old file `rel` as the staged entry `rel` (in-place apply of an unchanged
/// file whose exec bit already matches): the file is opened beneath OLD's handle and must be
/// the inode that was hashed, unchanged since (size, mtime, ctime, mode: `id`); then that
/// open file itself is linked, never a name. Returns its identity after the link (the link
/// moved its ctime), or `None` (the caller copies, hashing the copy) when the mode differs or
/// the link cannot be made.
fn try_hard_link(
    old: &Old,
    rel: &str,
    id: &FileId,
    w: &mut Writer,
    dst: &Path,
    exec: bool,
) -> Result<Option<FileId>> {
    let o = old.open_checked(rel, id, &Relinked::new())?;
    if o.meta.exec != exec {
        return Ok(None);
    }
    match w.link_file(&o.file, rel) {
        Ok(()) => {}
        Err(e) if sys::is_link_refusal(&e) => return Err(stage_error(dst, e)),
        Err(_) => return Ok(None),
    }
    let (_, after) = sys::file_id(&o.file).map_err(|e| Error::io(dst, "stat", e))?;
    if !after.same_but_ctime(id) {
        return Err(Error::wrong_base(
            rel,
            "changed while it was being linked into the new tree; nothing was committed, \
             run again",
        ));
    }
    Ok(Some(after))
}

/// Whether durability comes from one `syncfs(2)` per apply rather than an fsync per file.
const SYNCFS: bool = cfg!(target_os = "linux");

/// Flush the whole file system holding `p` (Linux).
fn syncfs(p: &Path) -> Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::io::AsRawFd;
        let f = File::open(p).map_err(|e| Error::io(p, "open", e))?;
        // SAFETY: `f` is an open file descriptor for the duration of the call.
        if unsafe { libc::syncfs(f.as_raw_fd()) } != 0 {
            return Err(Error::io(p, "syncfs", io::Error::last_os_error()));
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = p;
    Ok(())
}

pub(crate) fn sync_dir(p: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        let f = File::open(p).map_err(|e| Error::io(p, "open directory", e))?;
        f.sync_all()
            .map_err(|e| Error::io(p, "fsync directory", e))?;
    }
    #[cfg(not(unix))]
    let _ = p;
    Ok(())
}

pub(crate) fn sync_parent(p: &Path) -> Result<()> {
    sync_dir(&parent_of(p))
}

/// Best-effort removal of a staging file or tree.
pub(crate) fn remove_all(p: &Path) {
    match fs::symlink_metadata(p) {
        Ok(md) if md.is_dir() => {
            let _ = fs::remove_dir_all(p);
        }
        Ok(_) => {
            let _ = fs::remove_file(p);
        }
        Err(_) => {}
    }
}

/// Rename `from` to `to`, failing if `to` exists (atomic on Linux).
pub(crate) fn rename_noreplace(from: &Path, to: &Path) -> Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::ffi::CString;
        use std::os::unix::ffi::OsStrExt;
        let a = CString::new(from.as_os_str().as_bytes())
            .map_err(|_| Error::invalid_input(from, "path contains NUL"))?;
        let b = CString::new(to.as_os_str().as_bytes())
            .map_err(|_| Error::invalid_input(to, "path contains NUL"))?;
        // SAFETY: both pointers are valid NUL-terminated strings for the duration of the call.
        let r = unsafe {
            libc::renameat2(
                libc::AT_FDCWD,
                a.as_ptr(),
                libc::AT_FDCWD,
                b.as_ptr(),
                libc::RENAME_NOREPLACE,
            )
        };
        if r == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EEXIST) {
            return Err(Error::OutputExists {
                path: to.to_path_buf(),
            });
        }
        if e.raw_os_error() != Some(libc::EINVAL) && e.raw_os_error() != Some(libc::ENOSYS) {
            return Err(Error::io(to, "rename", e));
        }
        // File system without RENAME_NOREPLACE: fall through to check-then-rename.
    }
    if fs::symlink_metadata(to).is_ok() {
        return Err(Error::OutputExists {
            path: to.to_path_buf(),
        });
    }
    fs::rename(from, to).map_err(|e| Error::io(to, "rename", e))
}

#[cfg(all(test, feature = "diff"))]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    /// Serves `first` until the read that reaches the end of the file (the trailer, the last
    /// thing the checksum pass reads), then `then`: a patch file rewritten by another process
    /// right after it was verified.
    struct Swapping {
        first: Vec<u8>,
        then: Vec<u8>,
        swapped: AtomicBool,
    }

    impl ReadAt for Swapping {
        fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
            if self.swapped.load(Ordering::SeqCst) {
                return self.then.read_at(buf, pos);
            }
            let k = self.first.read_at(buf, pos)?;
            if pos + k as u64 >= self.first.len() as u64 {
                self.swapped.store(true, Ordering::SeqCst);
            }
            Ok(k)
        }
    }

    /// A FIFO named as the patch is refused at once (the landed code blocked in `open`).
    #[cfg(unix)]
    #[test]
    fn a_fifo_as_the_patch_is_refused_without_blocking() {
        use std::ffi::CString;
        use std::os::unix::ffi::OsStrExt;
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("p.bdp");
        let c = CString::new(fifo.as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(Patcher::new().open(&fifo).err().map(|e| e.to_string()));
        });
        let got = rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("opening a FIFO as the patch blocked");
        let e = got.expect("a FIFO was accepted as a patch");
        assert!(e.contains("not a regular file"), "{e}");
    }

    fn noise(seed: u64, n: usize) -> Vec<u8> {
        let mut x = seed;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    /// Issue 9, item 2: a patch whose bytes change after the checksum and the signature were
    /// checked must never produce anything but what the signed bytes describe. The landed code
    /// read the manifest from the file again after the check, so the swapped patch's target
    /// (an executable the signer never signed) was rebuilt and reported as verified.
    #[test]
    fn bytes_changed_after_verification_are_never_used() {
        let dir = tempfile::tempdir().unwrap();
        let old = noise(1, 64 << 10);
        let mut new_a = old.clone();
        let mut new_b = old.clone();
        new_a[20_000..24_000].copy_from_slice(&noise(2, 4000));
        new_b[20_000..24_000].copy_from_slice(&noise(3, 4000));
        let (signer, attacker) = ([7u8; 32], [9u8; 32]);
        let mut o = crate::DiffOptions::new();
        o.codec(crate::Codec::Zstd).sign_with(signer);
        let a = o.diff_bytes(&old, &new_a).unwrap();
        o.sign_with(attacker);
        let b = o.diff_bytes(&old, &new_b).unwrap();
        // Same layout, so that rereading any section of B where A was verified yields a
        // well-formed patch for NEW_B: what the attack needs.
        let (ha, hb) = (Header::decode(&a).unwrap(), Header::decode(&b).unwrap());
        assert_eq!(a.len(), b.len());
        assert_eq!(
            (ha.manifest_len, ha.stream_lens),
            (hb.manifest_len, hb.stream_lens)
        );
        let old_path = dir.path().join("old");
        fs::write(&old_path, &old).unwrap();
        let digest_a = *blake3::hash(&new_a).as_bytes();
        let digest_b = *blake3::hash(&new_b).as_bytes();

        let mut patcher = Patcher::new();
        patcher.require_signature(crate::public_key(&signer));
        // Control: the signed patch as it is verifies and rebuilds NEW_A; B is refused.
        let p = patcher
            .open_source(Box::new(a.clone()), a.len() as u64, Path::new("a"))
            .unwrap();
        let r = patcher.verify_patch(p, Some(&old_path)).unwrap().unwrap();
        assert_eq!(r.digest, digest_a);
        assert!(patcher
            .open_source(Box::new(b.clone()), b.len() as u64, Path::new("b"))
            .is_err());

        let swapping = Swapping {
            first: a.clone(),
            then: b,
            swapped: AtomicBool::new(false),
        };
        let len = a.len() as u64;
        let result = patcher
            .open_source(Box::new(swapping), len, Path::new("swapped"))
            .and_then(|p| patcher.verify_patch(p, Some(&old_path)));
        match result {
            Ok(Some(r)) => {
                assert_ne!(
                    r.digest, digest_b,
                    "rebuilt the attacker's NEW_B as verified"
                );
                assert_eq!(r.digest, digest_a);
            }
            Ok(None) => unreachable!("OLD was given"),
            Err(e) => assert!(
                matches!(e, Error::OutputMismatch { .. } | Error::Corrupt { .. }),
                "refused, but for an unexpected reason: {e}"
            ),
        }
    }
}
