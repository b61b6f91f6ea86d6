//! The manifest (format section 3): the entries of NEW, the old files relied upon, the form
//! byte that selects full or relative form, the full form's encoding and decoding, entry bodies,
//! and the structural validation every decoded manifest passes.

use super::budget::{heap_of, COPY_NEW_HEAP};
use super::paths::{case_clash, common_prefix, read_prefixed};
use super::varint::put_str;
use super::{
    put_svarint, put_varint, validate_path, BaseTags, Budget, Hash, Header, ListEntry, Reader,
    FLAG_EXE_REFS, FLAG_INFLATE, MAX_DELTA_SOURCES, MAX_PATH_LEN, TRANSFORM_INFLATE,
    TRANSFORM_REFS,
};
use crate::error::{Error, Result};

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
    /// `size` bytes (see the control stream, `Control`).
    Delta {
        /// Indices into [`Manifest::old_files`], concatenated in this order; empty means the
        /// old file at the same path (whose hash is covered by [`Manifest::base_digest`]).
        sources: Vec<u32>,
        /// Size of the old file at the same path when `sources` is empty (0 otherwise): lets
        /// the applier name a same-path source whose size differs.
        base_size: u64,
        /// How the diff stream was made: 0 = `new - old`; [`TRANSFORM_REFS`] (minor 3, with
        /// header flag [`super::FLAG_EXE_REFS`], at most one source) = `new - predicted`, the
        /// references of executable code predicted from the file's region map (section 4.2);
        /// [`super::TRANSFORM_INFLATE`] (minor 4, with header flag [`super::FLAG_INFLATE`], at
        /// most one source) = between the expanded forms of deflate containers (section 4.3).
        transform: u8,
    },
    /// The content of an earlier file entry of NEW (format 2.2): a file the new version holds
    /// twice (`index.d.ts` and `index.d.cts` of a dual-module package) is carried once.
    CopyNew {
        /// Index into [`Manifest::entries`] of an earlier entry, a file that is not itself a
        /// `CopyNew`.
        entry: u32,
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
            FileOp::CopyNew { .. } => "copy-new",
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
    /// OLD's listing (relative form); empty unless the header has
    /// [`FLAG_BASE_TAGS`](super::FLAG_BASE_TAGS).
    pub base_tags: BaseTags,
}

/// Manifest form: every entry of NEW listed with its path.
pub const FORM_FULL: u8 = 0;
/// Manifest form: NEW described as an edit of OLD's sorted file list (keep, drop, change,
/// insert), so unchanged paths cost nothing; the applier re-reads OLD's list.
pub const FORM_RELATIVE: u8 = 1;

const KIND_DIR: u8 = 0;
const KIND_FILE: u8 = 1;
const KIND_SYMLINK: u8 = 2;
const OP_UNCHANGED: u8 = 0;
const OP_COPY: u8 = 1;
const OP_ADD: u8 = 2;
const OP_DELTA: u8 = 3;
const OP_COPY_NEW: u8 = 4;

impl Manifest {
    /// Encode the manifest body (before compression) in the full form, with absolute sizes
    /// (valid under any header; see [`Manifest::encode_sized`]).
    pub fn encode(&self) -> Vec<u8> {
        self.encode_sized(false)
    }

    /// Encode the manifest body in the full form; with `relative_sizes` the header must carry
    /// [`FLAG_RELATIVE_SIZES`](super::FLAG_RELATIVE_SIZES) (what bundelta writes since format
    /// 2.2: copies and modifies cost a byte or two of size instead of three or four).
    pub fn encode_sized(&self, relative_sizes: bool) -> Vec<u8> {
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
        let coding = SizeCoding {
            relative: relative_sizes,
            old: Some(&self.old_files),
            ..SizeCoding::default()
        };
        let mut prev = "";
        for (i, e) in self.entries.iter().enumerate() {
            let shared = common_prefix(prev, &e.path);
            put_varint(&mut out, shared as u64);
            put_str(&mut out, &e.path[shared..]);
            prev = &e.path;
            let coding = SizeCoding {
                prior: Some(&self.entries[..i]),
                ..coding
            };
            put_body(&mut out, &e.kind, &coding);
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
    /// Decoding allocates at most the header's share (`Budget::for_manifest`).
    pub fn decode(raw: &[u8], header: &Header) -> Result<Manifest> {
        Manifest::decode_with_old(raw, header, None)
    }

    /// Decode a manifest of either form. The relative form needs OLD's listing (as
    /// `listing` returns it for OLD) and fails without one. Decoding allocates at most the
    /// header's share (`Budget::for_manifest`), besides what OLD's listing costs.
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
            let coding = SizeCoding::decoding(header, &old_files, &entries);
            let kind = read_body(&mut r, n_old, budget, &coding)?;
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

    pub(super) fn validated(
        self,
        header: &Header,
        budget: &mut Budget,
        own: u64,
    ) -> Result<Manifest> {
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
        for e in &self.entries {
            if let EntryKind::File {
                op: FileOp::Delta {
                    sources, transform, ..
                },
                ..
            } = &e.kind
            {
                let (flag, name) = match *transform {
                    TRANSFORM_REFS => (FLAG_EXE_REFS, "reference prediction"),
                    TRANSFORM_INFLATE => (FLAG_INFLATE, "the inflate transform"),
                    _ => continue,
                };
                if header.flags & flag == 0 || sources.len() > 1 {
                    return Err(Error::corrupt(
                        "manifest",
                        format!(
                            "{:?}: {name} without its header flag, or over more than one \
                             source",
                            e.path
                        ),
                    ));
                }
            }
        }
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
        for (i, e) in self.entries.iter().enumerate() {
            if let EntryKind::File { size, op, .. } = &e.kind {
                total = total
                    .checked_add(*size)
                    .ok_or_else(|| Error::corrupt("manifest", "file sizes overflow"))?;
                if let FileOp::CopyNew { entry } = op {
                    let n = copy_new_source(&self.entries[..i], *entry)?;
                    if n != *size {
                        return Err(Error::corrupt(
                            "manifest",
                            format!(
                                "{:?}: copy of a {n}-byte new file declared {size} bytes",
                                e.path
                            ),
                        ));
                    }
                }
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

/// How a file entry's size is written (FORMAT.md section 3): absolute, or, with header flag bit
/// 5 ([`FLAG_RELATIVE_SIZES`](super::FLAG_RELATIVE_SIZES)), the size of a copy or modify entry
/// as the zigzag difference from its source's size, and no `base_size` in a changed item of the
/// relative form (it is the old entry's size at the same path).
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct SizeCoding<'a> {
    /// Header flag bit 5.
    pub relative: bool,
    /// The old-file table, whose record sizes are the sources' sizes; `None` when bodies are
    /// only skipped (counting items without OLD): relative sizes then decode as 0.
    pub old: Option<&'a [OldFile]>,
    /// A changed item of the relative form (the old entry at the same path is a file of
    /// `same_size` bytes).
    pub same_item: bool,
    /// See `same_item`.
    pub same_size: u64,
    /// The entries before this one (the sources of a `CopyNew`); `None` when only skipping.
    pub prior: Option<&'a [Entry]>,
}

impl<'a> SizeCoding<'a> {
    /// How a decoder reads the entry after `prior`, under `header`, with the old-file table
    /// `old`.
    pub(super) fn decoding(header: &Header, old: &'a [OldFile], prior: &'a [Entry]) -> Self {
        SizeCoding {
            relative: header.has_relative_sizes(),
            old: Some(old),
            prior: Some(prior),
            ..SizeCoding::default()
        }
    }

    /// Whether a modify entry without sources writes its `base_size`.
    fn writes_base_size(&self) -> bool {
        !(self.relative && self.same_item)
    }

    /// The size a relative size is a difference from: the copy's source record's size, the
    /// sum of the modify's sources' sizes, or its `base_size`. `None` for ops sized absolutely.
    fn reference(&self, op: &FileOp) -> Result<Option<u64>> {
        if let (FileOp::CopyNew { entry }, true) = (op, self.relative) {
            return match self.prior {
                None => Ok(None),
                Some(prior) => Ok(Some(copy_new_source(prior, *entry)?)),
            };
        }
        let Some(old) = self.old.filter(|_| self.relative) else {
            return Ok(None);
        };
        let size_of = |i: u32| {
            old.get(i as usize)
                .map(|f| f.size)
                .ok_or_else(|| Error::corrupt("manifest", "old file index out of range"))
        };
        Ok(match op {
            FileOp::Unchanged | FileOp::Add | FileOp::CopyNew { .. } => None,
            FileOp::Copy { source } => Some(size_of(*source)?),
            FileOp::Delta {
                sources, base_size, ..
            } if sources.is_empty() => Some(*base_size),
            FileOp::Delta { sources, .. } => {
                let mut sum = 0u64;
                for &s in sources {
                    sum = sum.checked_add(size_of(s)?).ok_or_else(|| {
                        Error::corrupt("manifest", "delta sources' sizes overflow")
                    })?;
                }
                Some(sum)
            }
        })
    }
}

/// The size of the entry a `CopyNew` copies, which must be an earlier file entry that is not
/// itself a `CopyNew`.
fn copy_new_source(prior: &[Entry], entry: u32) -> Result<u64> {
    match prior.get(entry as usize).map(|e| &e.kind) {
        Some(EntryKind::File { size, op, .. }) if !matches!(op, FileOp::CopyNew { .. }) => {
            Ok(*size)
        }
        _ => Err(Error::corrupt(
            "manifest",
            format!("a copy of new entry {entry}, which is not an earlier file"),
        )),
    }
}

pub(super) fn put_body(out: &mut Vec<u8>, kind: &EntryKind, coding: &SizeCoding<'_>) {
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
            match coding.reference(op) {
                Ok(Some(reference)) => {
                    let d = i128::from(*size) - i128::from(reference);
                    put_svarint(
                        out,
                        i64::try_from(d).expect("file sizes are below 2^63 bytes"),
                    );
                }
                _ => put_varint(out, *size),
            }
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
                    if sources.is_empty() && coding.writes_base_size() {
                        put_varint(out, *base_size);
                    }
                    out.push(*transform);
                }
                FileOp::CopyNew { entry } => {
                    out.push(OP_COPY_NEW);
                    // Written as the distance back from this entry.
                    let here = coding.prior.map_or(0, |p| p.len() as u64);
                    put_varint(out, here.saturating_sub(u64::from(*entry) + 1));
                }
            }
        }
    }
}

/// Read an entry's body; its link target or source list is charged before it is allocated
/// (the caller releases [`body_heap`](super::budget::body_heap) if it drops the body).
pub(super) fn read_body(
    r: &mut Reader<'_>,
    n_old: usize,
    budget: &mut Budget,
    coding: &SizeCoding<'_>,
) -> Result<EntryKind> {
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
            let raw_size = r.varint()?;
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
                    let base_size = match (sources.is_empty(), coding.writes_base_size()) {
                        (true, true) => r.varint()?,
                        (true, false) => coding.same_size,
                        (false, _) => 0,
                    };
                    let transform = r.u8()?;
                    if transform > TRANSFORM_INFLATE {
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
                OP_COPY_NEW => {
                    let here = coding.prior.map_or(0, |p| p.len() as u64);
                    let back = r.varint()?;
                    // Only skipping (no entries known): any distance reads.
                    let entry = match here.checked_sub(back.saturating_add(1)) {
                        Some(e) => e as u32,
                        None if coding.prior.is_none() => 0,
                        None => {
                            return Err(Error::corrupt(
                                "manifest",
                                "a copy of a new file before the first entry",
                            ))
                        }
                    };
                    budget.charge(COPY_NEW_HEAP, "a copy of a new file")?;
                    FileOp::CopyNew { entry }
                }
                v => {
                    return Err(Error::Unsupported {
                        what: "file operation",
                        value: v.into(),
                    })
                }
            };
            // Relative sizes resolve against the source's size; when skipping bodies (no
            // old-file table or entries) the value read is not resolved and not used.
            let size = match coding.reference(&op)? {
                Some(reference) => {
                    let d = ((raw_size >> 1) as i64) ^ -((raw_size & 1) as i64);
                    reference.checked_add_signed(d).ok_or_else(|| {
                        Error::corrupt("manifest", "a file size out of range of its source's")
                    })?
                }
                None => raw_size,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{CODEC_RAW, FLAG_DIRECTORY, FLAG_RELATIVE_SIZES, VERSION_MINOR};

    fn file(path: &str, size: u64, op: FileOp) -> Entry {
        Entry {
            path: path.into(),
            kind: EntryKind::File {
                exec: false,
                size,
                op,
            },
        }
    }

    fn sample() -> Manifest {
        Manifest {
            old_files: vec![
                OldFile {
                    path: "a".into(),
                    size: 100,
                },
                OldFile {
                    path: "b".into(),
                    size: 50,
                },
            ],
            entries: vec![
                file("c", 100, FileOp::Copy { source: 0 }),
                file(
                    "d",
                    160,
                    FileOp::Delta {
                        sources: vec![0, 1],
                        base_size: 0,
                        transform: 0,
                    },
                ),
                file(
                    "e",
                    65,
                    FileOp::Delta {
                        sources: vec![],
                        base_size: 70,
                        transform: 0,
                    },
                ),
                file("f", 7, FileOp::Add),
            ],
            ..Manifest::default()
        }
    }

    fn header(flags: u32, raw: &[u8], new_total: u64) -> Header {
        Header {
            minor: VERSION_MINOR,
            flags: FLAG_DIRECTORY | flags,
            window_log: 21,
            codecs: [CODEC_RAW; 3],
            manifest_len: raw.len() as u64,
            manifest_raw_len: raw.len() as u64,
            new_total,
            stream_lens: [0, 0, 7],
        }
    }

    #[test]
    fn relative_sizes_round_trip_and_are_smaller() {
        let m = sample();
        let abs = m.encode_sized(false);
        let rel = m.encode_sized(true);
        // Copy: 100 -> 0; delta from two sources: 160 -> +10; from its own path: 65 -> -5.
        assert_eq!(abs.len() - rel.len(), 1, "160 takes two bytes, +10 one");
        let back = Manifest::decode(&rel, &header(FLAG_RELATIVE_SIZES, &rel, 332)).unwrap();
        assert_eq!(back, m);
        let back = Manifest::decode(&abs, &header(0, &abs, 332)).unwrap();
        assert_eq!(back, m);
        // The same bytes under the other flag do not decode to the same manifest.
        assert_ne!(
            Manifest::decode(&rel, &header(0, &rel, 332)).ok().as_ref(),
            Some(&m)
        );
    }

    #[test]
    fn relative_sizes_out_of_range_or_wrong_are_refused() {
        // A delta 100 bytes smaller than its 70-byte base.
        let mut m = sample();
        if let EntryKind::File { size, .. } = &mut m.entries[2].kind {
            *size = 0;
        }
        let mut rel = m.encode_sized(true);
        // The entry for "e": its size svarint (-70 = 139 as zigzag: 0x8b 0x01) is replaced
        // by -71 (0x8d 0x01).
        let at = rel
            .windows(2)
            .rposition(|w| w == [0x8b, 0x01])
            .expect("the size of e");
        rel[at] = 0x8d;
        let e = Manifest::decode(&rel, &header(FLAG_RELATIVE_SIZES, &rel, 267)).unwrap_err();
        assert!(e.to_string().contains("out of range"), "{e}");
        // A copy whose size differs from its source's.
        let mut m = sample();
        if let EntryKind::File { size, .. } = &mut m.entries[0].kind {
            *size = 101;
        }
        let rel = m.encode_sized(true);
        assert!(Manifest::decode(&rel, &header(FLAG_RELATIVE_SIZES, &rel, 333)).is_err());
    }
}
