//! Verified, streaming, bounded-memory apply.
//!
//! # Memory model
//!
//! The applier never maps or loads a whole file. Old files are read with positioned reads
//! through 64 KiB buffers, the patch is read section by section with positioned reads, and each
//! output file is written sequentially. Peak heap is bounded by
//!
//! ```text
//! memory_needed = 4 × manifest_raw_len                 (manifest bytes + parsed entries)
//!               + Σ decoder_memory(codec_s)             (control, diff, extra decoders)
//!               + 512 KiB                               (zero-run pairs, only with that flag)
//!               + 512 KiB                               (I/O buffers)
//! ```
//!
//! where a decoder needs `2^window_log + 512 KiB` for zstd and LZMA2, `4.5 MiB` for bzip2 and
//! nothing for a raw stream ([`crate::format::decoder_memory`]), and `window_log`, the codecs
//! and `manifest_raw_len` come from the patch header. The patch is refused
//! before anything is written when this exceeds [`Patcher::memory_limit`] (default
//! [`DEFAULT_MEMORY_LIMIT`], 12 MiB, which admits the default `--window-log 21`). Process RSS is
//! that plus the program itself (about 3 MiB).
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
//! A patch is untrusted. Before anything is created: the whole-patch blake3 trailer is checked,
//! the manifest is decoded with every number bounded, every path validated, and every old file
//! the patch relies on is hashed and compared. Output is written into a fresh staging location
//! next to the destination; every file is hashed as it is written and compared; the bundle
//! digest is compared; files and directories are fsynced; only then is the staging location
//! renamed into place. On any error the staging location is removed and OLD is untouched.

use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};
use crate::format::{
    listing_digest, listing_tag, BaseTags, Control, EntryKind, FileOp, Hash, Header, ListEntry,
    ListKind, Manifest, CODEC_BZIP2, CODEC_LZMA2, CODEC_RAW, FLAG_DIFF_RUNS, FLAG_MANIFEST_LZMA,
    FORM_RELATIVE, MAX_CONTROL_BLOCK, MAX_HEADER_LEN, SIGNATURE_LEN, TRAILER_LEN, ZERO_RUN_BLOCK,
};
use crate::tree::{self, hash_file, hex, open_regular, TreeDigest, IO_BUF};

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
    h.manifest_raw_len
        .saturating_mul(4)
        .saturating_add(decoders)
        .saturating_add(runs)
        .saturating_add(512 << 10)
}

/// Progress callback: `(bytes done, bytes total)`.
pub type ProgressFn = dyn Fn(u64, u64) + Send + Sync;

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
    strict_memory: bool,
    output_limit: u64,
    public_key: Option<[u8; 32]>,
    progress: Option<Box<ProgressFn>>,
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
            strict_memory: false,
            output_limit: u64::MAX,
            public_key: None,
            progress: None,
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
        p.check_old_kind(old)?;
        p.bind(old)?;
        self.check_listing_memory(&p)?;
        let base = p.check_base(old)?;
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
            )?;
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
        let mut p = self.open(patch)?;
        match old {
            None => Ok(None),
            Some(old) => {
                p.check_old_kind(old)?;
                p.bind(old)?;
                self.check_listing_memory(&p)?;
                let base = p.check_base(old)?;
                Ok(Some(p.build(
                    old,
                    None,
                    &base,
                    LinkMode::Copy,
                    self.progress.as_deref(),
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
    file: File,
    path: PathBuf,
    header: Header,
    manifest: Option<Manifest>,
    relative: Vec<u8>,
    new_digest: Hash,
    /// The whole-patch blake3 checksum (the trailer): the patch's identity.
    checksum: Hash,
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
}

/// Hash an old file the patch relies on; a missing file, or one that is not a regular file
/// (a directory, a symlink, a path through a file), means OLD is not the expected base.
fn hash_base_file(p: &Path, rel: &str) -> Result<(u64, Hash)> {
    hash_file(p).map_err(|e| match e {
        Error::Io { source, .. } => {
            let why = match (source.kind(), source.raw_os_error()) {
                (io::ErrorKind::NotFound, _) => "missing",
                (io::ErrorKind::InvalidInput, _) => "not a regular file",
                #[cfg(unix)]
                (_, Some(libc::ELOOP)) => "is a symlink (never followed)",
                #[cfg(unix)]
                (_, Some(libc::ENOTDIR)) => "a parent is not a directory",
                #[cfg(unix)]
                (_, Some(libc::EISDIR)) => "not a regular file",
                _ => return Error::io(p, "read", source),
            };
            Error::wrong_base(rel, why)
        }
        other => other,
    })
}

/// Refuse an old file reached through a parent that is not a real directory of OLD: a
/// directory of OLD replaced by a symlink (to anywhere, in or out of the bundle) is never
/// followed, so nothing outside OLD is read, copied or hard-linked. `seen` caches the
/// directories already checked.
fn check_parents(
    old: &Path,
    rel: &str,
    seen: &mut std::collections::HashSet<String>,
) -> Result<()> {
    for (i, _) in rel.match_indices('/') {
        let dir = &rel[..i];
        if seen.contains(dir) {
            continue;
        }
        match fs::symlink_metadata(old.join(dir)) {
            Ok(md) if md.is_dir() => {
                seen.insert(dir.to_string());
            }
            Ok(md) if md.file_type().is_symlink() => {
                return Err(Error::wrong_base(
                    rel,
                    format!("parent {dir} is a symlink (never followed)"),
                ))
            }
            Ok(_) => return Err(Error::wrong_base(rel, "a parent is not a directory")),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(Error::wrong_base(rel, "missing"))
            }
            Err(e) => return Err(Error::io(&old.join(dir), "stat", e)),
        }
    }
    Ok(())
}

/// After a listing-digest mismatch (relative manifest): name the first entry of OLD's listing
/// that is not the base's, from the per-entry base tags. Reads the files of OLD in listing
/// order up to a few entries past the first difference (the tags cover contents too).
fn name_listing_difference(old: &Path, listing: &[ListEntry], tags: &BaseTags) -> Result<Error> {
    let mut memo: Vec<Hash> = Vec::new();
    // Tag hash of OLD's entry `j`, computed in order.
    let mut tag_of = |j: usize| -> Result<Hash> {
        while memo.len() <= j {
            let e = &listing[memo.len()];
            let content = match e.kind {
                ListKind::File { .. } => Some(hash_base_file(&old.join(&e.path), &e.path)?.1),
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
        let file = File::open(path).map_err(|e| Error::io(path, "open", e))?;
        let len = file
            .metadata()
            .map_err(|e| Error::io(path, "stat", e))?
            .len();
        let mut hb = [0u8; MAX_HEADER_LEN];
        let got = read_at_most(&file, &mut hb, 0).map_err(|e| Error::io(path, "read", e))?;
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
        // Whole-patch checksum (one streaming pass); for a signed patch, the signed digest is
        // the hash of the bytes before the signature block, taken on the way.
        let body = len - TRAILER_LEN as u64;
        let sig_at = header.signature_offset();
        let mut hasher = blake3::Hasher::new();
        let mut sig = [0u8; SIGNATURE_LEN];
        let mut signed_digest = None;
        let before = if header.is_signed() { sig_at } else { body };
        let mut n = tree::hash_into(&mut hasher, Section::new(&file, 0, before), path)?;
        if header.is_signed() {
            signed_digest = Some(*hasher.finalize().as_bytes());
            n += read_at_most(&file, &mut sig, sig_at).map_err(|e| Error::io(path, "read", e))?
                as u64;
            hasher.update(&sig);
        }
        if n != body {
            return Err(Error::corrupt("trailer", "patch shrank while reading"));
        }
        let found = *hasher.finalize().as_bytes();
        let mut trailer = [0u8; TRAILER_LEN];
        let got =
            read_at_most(&file, &mut trailer, body).map_err(|e| Error::io(path, "read", e))?;
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
        let need = memory_needed(&header);
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
        // Manifest: one zstd frame, decoded to exactly manifest_raw_len bytes.
        let raw_len = header.manifest_raw_len;
        let cap = usize::try_from(raw_len)
            .map_err(|_| Error::corrupt("header", "manifest length does not fit in memory"))?;
        let sec = Section::new(&file, header.manifest_offset(), header.manifest_len);
        let mut raw = Vec::new();
        if header.manifest_len == header.manifest_raw_len {
            // Stored as it is.
            let mut s = sec;
            read_exact_stream(&mut s, &mut raw, cap, "manifest")?;
        } else if header.flags & FLAG_MANIFEST_LZMA != 0 {
            let mut dec = Stream::open(
                &file,
                header.manifest_offset(),
                header.manifest_len,
                CODEC_LZMA2,
                header.window_log,
                "manifest",
            )?;
            read_exact_stream(&mut dec, &mut raw, cap, "manifest")?;
        } else {
            let mut dec = decoder(sec, header.window_log).map_err(|e| stream_err("manifest", e))?;
            read_exact_stream(&mut dec, &mut raw, cap, "manifest")?;
        }
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
            file,
            path: path.to_path_buf(),
            header,
            manifest,
            relative,
            new_digest,
            checksum: trailer,
            memory_limit,
            listing_bytes: 0,
        })
    }

    /// Resolve a manifest stored relative to OLD's file list by scanning `old` (no contents
    /// are read). Does nothing for a manifest stored in full. A file list that differs from
    /// the patch's base is [`Error::WrongBase`].
    pub fn bind(&mut self, old: &Path) -> Result<()> {
        if self.manifest.is_some() {
            return Ok(());
        }
        let listing = tree::scan(old).map_err(|e| match e {
            Error::InvalidInput { path, reason } => {
                Error::wrong_base(path.display().to_string(), reason)
            }
            other => other,
        })?;
        if self.header.has_base_tags() {
            let prefix = Manifest::relative_prefix(&self.relative, &self.header)?;
            if listing_digest(&listing) != prefix.listing_digest {
                return Err(name_listing_difference(old, &listing, &prefix.base_tags)?);
            }
        }
        self.listing_bytes = listing_memory(&listing);
        self.manifest = Some(Manifest::decode_with_old(
            &self.relative,
            &self.header,
            Some(&listing),
        )?);
        Ok(())
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

    pub(crate) fn check_old_kind(&self, old: &Path) -> Result<()> {
        let md = fs::metadata(old).map_err(|e| Error::io(old, "stat", e))?;
        if self.header.is_directory() && !md.is_dir() {
            return Err(Error::wrong_base(
                "",
                "the patch is for a directory bundle but OLD is not a directory",
            ));
        }
        if !self.header.is_directory() && !md.is_file() {
            return Err(Error::wrong_base(
                "",
                "the patch is for a single file but OLD is not a regular file",
            ));
        }
        Ok(())
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

    fn old_path(&self, old: &Path, rel: &str) -> PathBuf {
        if rel.is_empty() {
            old.to_path_buf()
        } else {
            old.join(rel)
        }
    }

    /// Hash every old file the patch relies on and compare, before anything is written.
    pub(crate) fn check_base(&self, old: &Path) -> Result<BaseCheck> {
        if !self.needs_old() {
            return Ok(BaseCheck {
                base: Vec::new(),
                table: Vec::new(),
            });
        }
        // Table files first (sizes named on mismatch), then same-path files; one digest.
        let mut h = blake3::Hasher::new();
        let mut table = Vec::with_capacity(self.m().old_files.len());
        let mut dirs = std::collections::HashSet::new();
        for f in &self.m().old_files {
            check_parents(old, &f.path, &mut dirs)?;
            let p = self.old_path(old, &f.path);
            let (size, hash) = hash_base_file(&p, &f.path)?;
            if size != f.size {
                return Err(Error::wrong_base(
                    &f.path,
                    format!("size is {size}, the patch expects {}", f.size),
                ));
            }
            h.update(&hash);
            table.push(hash);
        }
        let mut base = Vec::new();
        for e in &self.m().entries {
            let EntryKind::File { size, op, .. } = &e.kind else {
                continue;
            };
            if !op.reads_own_path() {
                continue;
            }
            check_parents(old, &e.path, &mut dirs)?;
            let p = self.old_path(old, &e.path);
            let (got, hash) = hash_base_file(&p, &e.path)?;
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
        Ok(BaseCheck { base, table })
    }

    /// After a base-digest mismatch: the first old file relied upon (by path) whose base tag
    /// does not match its hash, and how many do not. `None` without base tags, or when every
    /// tag matches (each differing file escapes its tag with probability 2^-bits).
    fn name_content_difference(
        &self,
        old: &Path,
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
        let listing = if self.relative.is_empty() {
            Vec::new()
        } else {
            match tree::scan(old) {
                Ok(l) => l,
                Err(_) => return Ok(None),
            }
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
    pub(crate) fn build(
        &self,
        old: &Path,
        stage: Option<&Path>,
        base: &BaseCheck,
        link: LinkMode,
        progress: Option<&ProgressFn>,
    ) -> Result<ApplyReport> {
        let mut report = ApplyReport::default();
        let mut digest = TreeDigest::new();
        let mut base_files = base.base.iter();
        let mut file_hash = [0u8; 32];
        let done = AtomicU64::new(0);
        let total = self.header.new_total;
        let dir_bundle = self.header.is_directory();
        if let (true, Some(stage)) = (dir_bundle, stage) {
            create_dir(stage)?;
        }
        let mut made_dirs: Vec<PathBuf> = Vec::new();
        let mut streams = Streams::open(self)?;
        for e in &self.m().entries {
            let dest = stage.map(|s| {
                if e.path.is_empty() {
                    s.to_path_buf()
                } else {
                    s.join(&e.path)
                }
            });
            match &e.kind {
                EntryKind::Dir => {
                    if let Some(d) = &dest {
                        create_dir(d)?;
                        made_dirs.push(d.clone());
                    }
                    digest.dir(&e.path);
                    report.dirs += 1;
                }
                EntryKind::Symlink { target } => {
                    if let Some(d) = &dest {
                        make_symlink(target, d)?;
                    }
                    digest.symlink(&e.path, target);
                    report.symlinks += 1;
                }
                EntryKind::File { exec, size, op } => {
                    // Size and hash of the old file at this path, when the op reads it.
                    let same = if op.reads_own_path() {
                        Some(*base_files.next().ok_or_else(|| {
                            Error::corrupt("manifest", "base file count mismatch")
                        })?)
                    } else {
                        None
                    };
                    // The hash this output must have, where the patch determines it up front.
                    let expected: Option<Hash> = match op {
                        FileOp::Unchanged => same.map(|s| s.1),
                        FileOp::Copy { source } => base.table.get(*source as usize).copied(),
                        _ => None,
                    };
                    let linked = match (&dest, op, link) {
                        (Some(d), FileOp::Unchanged, LinkMode::HardLink) => {
                            try_hard_link(&self.old_path(old, &e.path), d, *exec)?
                        }
                        _ => false,
                    };
                    let hash = if linked {
                        done.fetch_add(*size, Ordering::Relaxed);
                        expected.expect("an unchanged file has a base hash")
                    } else {
                        let mut w = HashingWriter::new(match &dest {
                            Some(d) => Some(create_file(d, *exec)?),
                            None => None,
                        });
                        let mut sink = ProgressWriter {
                            inner: &mut w,
                            done: &done,
                            total,
                            progress,
                        };
                        self.produce(old, e, same.map(|s| s.0), &mut streams, &mut sink)
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

    /// Stream one file's content into `out`.
    fn produce(
        &self,
        old: &Path,
        e: &crate::format::Entry,
        same_size: Option<u64>,
        streams: &mut Streams<'_>,
        out: &mut dyn Write,
    ) -> Result<()> {
        let path = e.path.as_str();
        let EntryKind::File { size, op, .. } = &e.kind else {
            return Ok(());
        };
        let size = *size;
        match op {
            FileOp::Unchanged => copy_file(&self.old_path(old, path), size, out),
            FileOp::Copy { source } => {
                let f = &self.m().old_files[*source as usize];
                copy_file(&self.old_path(old, &f.path), size, out)
            }
            FileOp::Add => copy_exact_stream(&mut streams.extra, size, out, "extra stream"),
            FileOp::Delta { sources, .. } => {
                let mut parts = Vec::with_capacity(sources.len().max(1));
                if sources.is_empty() {
                    let p = self.old_path(old, path);
                    parts.push((open_regular(&p)?, same_size.unwrap_or(0), p));
                }
                for &s in sources {
                    let f = &self.m().old_files[s as usize];
                    let p = self.old_path(old, &f.path);
                    parts.push((open_regular(&p)?, f.size, p));
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
                &p.file,
                h.stream_offset(i),
                h.stream_lens[i],
                h.codecs[i],
                h.window_log,
                what,
            )
        };
        Ok(Streams {
            ctrl: BufReader::with_capacity(4096, open(0, "control stream")?),
            diff: if h.flags & FLAG_DIFF_RUNS != 0 {
                DiffSource::Runs(ZeroRuns {
                    inner: BufReader::with_capacity(4096, open(1, "diff stream")?),
                    pairs: Vec::new(),
                    next: 0,
                    zeros: 0,
                    lits: 0,
                })
            } else {
                DiffSource::Plain(open(1, "diff stream")?)
            },
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

/// Positioned reader over `[pos, end)` of a file; never moves a shared cursor.
pub(crate) struct Section<'a> {
    file: &'a File,
    pos: u64,
    end: u64,
}

impl<'a> Section<'a> {
    pub(crate) fn new(file: &'a File, pos: u64, len: u64) -> Section<'a> {
        Section {
            file,
            pos,
            end: pos.saturating_add(len),
        }
    }
}

impl Read for Section<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.end - self.pos;
        let n = (buf.len() as u64).min(left) as usize;
        if n == 0 {
            return Ok(0);
        }
        let k = read_at(self.file, &mut buf[..n], self.pos)?;
        self.pos += k as u64;
        Ok(k)
    }
}

#[cfg(unix)]
fn read_at(f: &File, buf: &mut [u8], pos: u64) -> io::Result<usize> {
    use std::os::unix::fs::FileExt;
    f.read_at(buf, pos)
}

#[cfg(windows)]
fn read_at(f: &File, buf: &mut [u8], pos: u64) -> io::Result<usize> {
    use std::os::windows::fs::FileExt;
    f.seek_read(buf, pos)
}

/// Elsewhere (e.g. WASI): seek, then read. Every read says where it starts, so a shared
/// cursor is harmless: the applier reads from one thread.
#[cfg(not(any(unix, windows)))]
fn read_at(f: &File, buf: &mut [u8], pos: u64) -> io::Result<usize> {
    use std::io::Seek;
    let mut f = f;
    f.seek(io::SeekFrom::Start(pos))?;
    f.read(buf)
}

fn read_at_most(f: &File, buf: &mut [u8], pos: u64) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match read_at(f, &mut buf[got..], pos + got as u64) {
            Ok(0) => break,
            Ok(k) => got += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

type Dec<'a> = zstd::stream::read::Decoder<'static, BufReader<Section<'a>>>;

/// A zstd decoder over a section, capped to `window_log`, reading exactly one frame.
pub(crate) fn decoder(sec: Section<'_>, window_log: u8) -> io::Result<Dec<'_>> {
    let mut d = zstd::stream::read::Decoder::with_buffer(BufReader::with_capacity(32 << 10, sec))?;
    d.window_log_max(u32::from(window_log))?;
    Ok(d.single_frame())
}

fn stream_err(what: &'static str, e: io::Error) -> Error {
    Error::corrupt(what, format!("zstd: {e}"))
}

/// Read exactly `n` bytes of a stream into `out` (growing it as data arrives, never by a
/// declared size), then require the stream to end.
fn read_exact_stream(
    r: &mut impl Read,
    out: &mut Vec<u8>,
    n: usize,
    what: &'static str,
) -> Result<()> {
    let mut buf = vec![0u8; IO_BUF];
    while out.len() < n {
        let want = (n - out.len()).min(buf.len());
        let k = read_retry(r, &mut buf[..want]).map_err(|e| stream_err(what, e))?;
        if k == 0 {
            return Err(Error::corrupt(
                what,
                format!("ends after {} of {n} bytes", out.len()),
            ));
        }
        out.extend_from_slice(&buf[..k]);
    }
    expect_end(r, what)
}

fn read_retry(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match r.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

fn expect_end(r: &mut impl Read, what: &'static str) -> Result<()> {
    let mut b = [0u8; 1];
    match read_retry(r, &mut b) {
        Ok(0) => Ok(()),
        Ok(_) => Err(Error::corrupt(what, "stream is longer than declared")),
        Err(e) => Err(stream_err(what, e)),
    }
}

fn read_full(r: &mut impl Read, buf: &mut [u8], what: &'static str) -> Result<()> {
    let mut got = 0;
    while got < buf.len() {
        let k = read_retry(r, &mut buf[got..]).map_err(|e| stream_err(what, e))?;
        if k == 0 {
            return Err(Error::corrupt(
                what,
                format!("ends {} bytes early", buf.len() - got),
            ));
        }
        got += k;
    }
    Ok(())
}

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

fn copy_file(p: &Path, size: u64, out: &mut dyn Write) -> Result<()> {
    let f = open_regular(p)?;
    let mut r = Section::new(&f, 0, size);
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

/// Varint from a byte stream; `Ok(None)` at a clean end of stream.
fn read_varint_stream(r: &mut impl Read, what: &'static str) -> Result<Option<u64>> {
    let mut v: u64 = 0;
    for i in 0..10 {
        let mut b = [0u8; 1];
        let k = read_retry(r, &mut b).map_err(|e| stream_err(what, e))?;
        if k == 0 {
            if i == 0 {
                return Ok(None);
            }
            return Err(Error::corrupt(what, "ends inside a varint"));
        }
        let part = u64::from(b[0] & 0x7f);
        if i == 9 && part > 1 {
            return Err(Error::corrupt(what, "varint overflows"));
        }
        v |= part << (7 * i);
        if b[0] & 0x80 == 0 {
            return Ok(Some(v));
        }
    }
    Err(Error::corrupt(what, "varint longer than 10 bytes"))
}

fn need_varint(r: &mut impl Read, what: &'static str) -> Result<u64> {
    read_varint_stream(r, what)?.ok_or_else(|| Error::corrupt(what, "ends early"))
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

/// The diff stream as the controls consume it: the decoded bytes themselves, or the expansion
/// of their zero-run coding (format section 4.1).
enum DiffSource<'a> {
    Plain(Stream<'a>),
    Runs(ZeroRuns<'a>),
}

const DIFF: &str = "diff stream";

impl DiffSource<'_> {
    /// Fill `buf` with the next diff bytes.
    fn fill(&mut self, buf: &mut [u8]) -> Result<()> {
        match self {
            DiffSource::Plain(s) => read_full(s, buf, DIFF),
            DiffSource::Runs(z) => z.fill(buf),
        }
    }

    /// The stream must hold nothing more.
    fn expect_end(&mut self) -> Result<()> {
        match self {
            DiffSource::Plain(s) => expect_end(s, DIFF),
            DiffSource::Runs(z) => {
                if z.zeros != 0 || z.lits != 0 || z.next != z.pairs.len() || z.next_block()? {
                    return Err(Error::corrupt(DIFF, "stream is longer than declared"));
                }
                Ok(())
            }
        }
    }
}

/// Expands the zero-run coding: per block, the (zero run, nonzero run) pairs are read first
/// (at most [`ZERO_RUN_BLOCK`] of them: 512 KiB, counted in [`memory_needed`]), then the
/// nonzero bytes are streamed through as they are consumed.
struct ZeroRuns<'a> {
    inner: BufReader<Stream<'a>>,
    pairs: Vec<(u32, u32)>,
    next: usize,
    zeros: u64,
    lits: u64,
}

impl ZeroRuns<'_> {
    /// Read the next block's pairs; `false` at a clean end of the stream.
    fn next_block(&mut self) -> Result<bool> {
        let Some(n) = read_varint_stream(&mut self.inner, DIFF)? else {
            return Ok(false);
        };
        let max = ZERO_RUN_BLOCK as u64;
        if n == 0 || n > max {
            return Err(Error::corrupt(
                DIFF,
                format!("zero-run block of {n} pairs (1..={max})"),
            ));
        }
        self.pairs.clear();
        self.next = 0;
        let mut total = 0u64;
        for _ in 0..n {
            let z = need_varint(&mut self.inner, DIFF)?;
            let l = need_varint(&mut self.inner, DIFF)?;
            // Each is checked before the sum, so nothing overflows.
            total = total
                .saturating_add(z.min(max + 1))
                .saturating_add(l.min(max + 1));
            if total > max {
                return Err(Error::corrupt(
                    DIFF,
                    format!("zero-run block describes more than {max} bytes"),
                ));
            }
            self.pairs.push((z as u32, l as u32));
        }
        if total == 0 {
            return Err(Error::corrupt(DIFF, "empty zero-run block"));
        }
        Ok(true)
    }

    fn fill(&mut self, buf: &mut [u8]) -> Result<()> {
        let mut got = 0;
        while got < buf.len() {
            let want = (buf.len() - got) as u64;
            if self.zeros > 0 {
                let k = self.zeros.min(want) as usize;
                buf[got..got + k].fill(0);
                self.zeros -= k as u64;
                got += k;
            } else if self.lits > 0 {
                let k = self.lits.min(want) as usize;
                read_full(&mut self.inner, &mut buf[got..got + k], DIFF)?;
                self.lits -= k as u64;
                got += k;
            } else if let Some(&(z, l)) = self.pairs.get(self.next) {
                self.next += 1;
                (self.zeros, self.lits) = (z.into(), l.into());
            } else if !self.next_block()? {
                return Err(Error::corrupt(
                    DIFF,
                    format!("ends {} bytes early", buf.len() - got),
                ));
            }
        }
        Ok(())
    }
}

/// One solid stream: stored raw, concatenated zstd frames, or concatenated raw LZMA2 streams.
enum Stream<'a> {
    Raw(Section<'a>),
    Zstd(Box<Dec<'a>>),
    Lzma(Box<MultiLzma<'a>>),
    Bzip2(Box<bzip2::bufread::MultiBzDecoder<BufReader<Section<'a>>>>),
}

/// Decoder for one or more concatenated raw LZMA2 streams: when one ends, the next starts on
/// the bytes left in the same buffer. The dictionary is fixed by the header, never by the data.
struct MultiLzma<'a> {
    dec: Option<liblzma::bufread::XzDecoder<BufReader<Section<'a>>>>,
    dict: u32,
}

fn lzma_decoder(dict: u32) -> io::Result<liblzma::stream::Stream> {
    let mut opts = liblzma::stream::LzmaOptions::new_preset(6).map_err(io::Error::other)?;
    opts.dict_size(dict);
    let mut f = liblzma::stream::Filters::new();
    f.lzma2(&opts);
    liblzma::stream::Stream::new_raw_decoder(&f).map_err(io::Error::other)
}

impl Read for MultiLzma<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let Some(dec) = self.dec.as_mut() else {
                return Ok(0);
            };
            let n = dec.read(buf)?;
            if n > 0 || buf.is_empty() {
                return Ok(n);
            }
            // This LZMA2 stream ended; another may follow.
            let mut inner = self.dec.take().expect("checked above").into_inner();
            if inner.fill_buf()?.is_empty() {
                return Ok(0);
            }
            self.dec = Some(liblzma::bufread::XzDecoder::new_stream(
                inner,
                lzma_decoder(self.dict)?,
            ));
        }
    }
}

impl<'a> Stream<'a> {
    fn open(
        file: &'a File,
        pos: u64,
        len: u64,
        codec: u8,
        window_log: u8,
        what: &'static str,
    ) -> Result<Stream<'a>> {
        let sec = Section::new(file, pos, len);
        if codec == CODEC_RAW || len == 0 {
            return Ok(Stream::Raw(sec));
        }
        if codec == CODEC_BZIP2 {
            let r = BufReader::with_capacity(32 << 10, sec);
            return Ok(Stream::Bzip2(Box::new(
                bzip2::bufread::MultiBzDecoder::new(r),
            )));
        }
        if codec == CODEC_LZMA2 {
            let dict = crate::format::lzma_dict_size(window_log);
            let dec = lzma_decoder(dict).map_err(|e| stream_err(what, e))?;
            let r = BufReader::with_capacity(32 << 10, sec);
            return Ok(Stream::Lzma(Box::new(MultiLzma {
                dec: Some(liblzma::bufread::XzDecoder::new_stream(r, dec)),
                dict,
            })));
        }
        let mut d =
            zstd::stream::read::Decoder::with_buffer(BufReader::with_capacity(32 << 10, sec))
                .map_err(|e| stream_err(what, e))?;
        d.window_log_max(u32::from(window_log))
            .map_err(|e| stream_err(what, e))?;
        Ok(Stream::Zstd(Box::new(d)))
    }
}

impl Read for Stream<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Raw(s) => s.read(buf),
            Stream::Zstd(d) => d.read(buf),
            Stream::Lzma(d) => d.read(buf),
            Stream::Bzip2(d) => d.read(buf),
        }
    }
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

fn make_symlink(target: &str, at: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink(target, at).map_err(|e| Error::io(at, "create symlink", e))
    }
    #[cfg(not(unix))]
    {
        let _ = target;
        Err(Error::io(
            at,
            "create symlink",
            io::Error::new(io::ErrorKind::Unsupported, "symlinks need unix"),
        ))
    }
}

/// Hard-link `src` at `dst` when `src` is a regular file whose exec bit already matches.
fn try_hard_link(src: &Path, dst: &Path, exec: bool) -> Result<bool> {
    let md = fs::symlink_metadata(src).map_err(|e| Error::io(src, "stat", e))?;
    if !md.is_file() || tree::is_exec(&md) != exec {
        return Ok(false);
    }
    match fs::hard_link(src, dst) {
        Ok(()) => Ok(true),
        Err(_) => Ok(false),
    }
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
