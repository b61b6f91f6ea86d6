//! The relative form of the manifest (format section 3.1): NEW as an edit of OLD's listing.

use super::budget::{body_heap, heap_of};
use super::manifest::{put_body, read_body, SizeCoding};
use super::paths::{common_prefix, read_prefixed};
use super::varint::put_str;
use super::{
    put_varint, BaseTags, Budget, Entry, EntryKind, FileOp, Hash, Header, Manifest, OldFile,
    Reader, FORM_RELATIVE, MAX_PATH_LEN,
};
use crate::error::{Error, Result};

/// The fixed part of a relative-form manifest, readable without OLD.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelativePrefix {
    /// Digest of the new bundle.
    pub new_digest: Hash,
    /// Base digest.
    pub base_digest: Hash,
    /// Digest of the base's listing.
    pub listing_digest: Hash,
    /// Base tags, one per entry of the base's listing (empty without
    /// [`FLAG_BASE_TAGS`](super::FLAG_BASE_TAGS)).
    pub base_tags: BaseTags,
}

const ITEM_KEEP: u8 = 0;
const ITEM_DROP: u8 = 1;
const ITEM_SAME: u8 = 2;
const ITEM_NEW: u8 = 3;

/// One entry of a directory listing, as the applier scans OLD (sorted by path bytes,
/// symlinks not followed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListEntry {
    /// Relative `/`-separated path.
    pub path: String,
    /// What it is.
    pub kind: ListKind,
}

/// Kind of a [`ListEntry`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListKind {
    /// A directory.
    Dir,
    /// A regular file.
    File {
        /// Executable bit.
        exec: bool,
        /// Size in bytes.
        size: u64,
    },
    /// A symlink.
    Symlink {
        /// Its target.
        target: String,
    },
}

/// Digest of a listing (paths, kinds, modes, sizes, link targets; not contents).
pub fn listing_digest(list: &[ListEntry]) -> Hash {
    let mut h = blake3::Hasher::new_derive_key("bundelta listing digest v1");
    let mut b = Vec::new();
    for e in list {
        listing_record(e, &mut b);
        h.update(&b);
    }
    *h.finalize().as_bytes()
}

/// One entry's bytes in the listing digest, written into `b` (cleared first): kind, path,
/// then exec and size or the target.
pub(super) fn listing_record(e: &ListEntry, b: &mut Vec<u8>) {
    b.clear();
    match &e.kind {
        ListKind::Dir => b.push(0),
        ListKind::File { .. } => b.push(1),
        ListKind::Symlink { .. } => b.push(2),
    }
    put_str(b, &e.path);
    match &e.kind {
        ListKind::Dir => {}
        ListKind::File { exec, size } => {
            b.push(u8::from(*exec));
            b.extend_from_slice(&size.to_le_bytes());
        }
        ListKind::Symlink { target } => put_str(b, target),
    }
}

/// Counts of a relative-form manifest, readable without OLD (for `info`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RelativeSummary {
    /// Old entries kept as they are.
    pub kept: u64,
    /// Old entries dropped.
    pub dropped: u64,
    /// Old paths whose entry changed.
    pub changed: u64,
    /// Entries at paths OLD does not have.
    pub inserted: u64,
    /// Old entries the listing has in all.
    pub old_entries: u64,
}

impl Manifest {
    /// Encode in the relative form against OLD's listing (which must be the sorted listing
    /// the diff saw). Every old file the manifest relies on must be in the listing.
    ///
    /// `tags` are the relative form's base tags, one per entry of `old` (see
    /// `listing_tag`);
    /// `self.base_tags` (the full form's) is not used. Empty tags write none. Sizes are
    /// absolute (valid under any header; see [`Manifest::encode_relative_sized`]).
    pub fn encode_relative(&self, old: &[ListEntry], tags: &BaseTags) -> Option<Vec<u8>> {
        self.encode_relative_sized(old, tags, false)
    }

    /// [`Manifest::encode_relative`]; with `relative_sizes` the header must carry
    /// [`FLAG_RELATIVE_SIZES`](super::FLAG_RELATIVE_SIZES) (what bundelta writes since format
    /// 2.2).
    pub fn encode_relative_sized(
        &self,
        old: &[ListEntry],
        tags: &BaseTags,
        relative_sizes: bool,
    ) -> Option<Vec<u8>> {
        let index = |p: &str| old.binary_search_by(|e| e.path.as_str().cmp(p)).ok();
        let mut out = vec![FORM_RELATIVE];
        out.extend_from_slice(&self.new_digest);
        out.extend_from_slice(&self.base_digest);
        out.extend_from_slice(&listing_digest(old));
        if tags.bits > 0 {
            if tags.len() != old.len() {
                return None;
            }
            tags.put(&mut out);
        }
        put_varint(&mut out, self.old_files.len() as u64);
        let mut prev_idx: Option<usize> = None;
        for f in &self.old_files {
            let i = index(&f.path)?;
            // Strictly increasing: stored as the gap to the previous index.
            put_varint(&mut out, (i - prev_idx.map_or(0, |p| p + 1)) as u64);
            prev_idx = Some(i);
        }
        // Merge-walk OLD's listing and NEW's entries.
        let mut items: Vec<u8> = Vec::new();
        let mut n_items: u64 = 0;
        let mut run: Option<(u8, u64)> = None;
        let flush = |items: &mut Vec<u8>, n_items: &mut u64, run: &mut Option<(u8, u64)>| {
            if let Some((tag, n)) = run.take() {
                items.push(tag);
                put_varint(items, n);
                *n_items += 1;
            }
        };
        let (mut i, mut j) = (0usize, 0usize);
        let mut prev_new = "";
        while i < old.len() || j < self.entries.len() {
            let o = old.get(i);
            let e = self.entries.get(j);
            let ord = match (o, e) {
                (Some(o), Some(e)) => o.path.as_str().cmp(e.path.as_str()),
                (Some(_), None) => std::cmp::Ordering::Less,
                _ => std::cmp::Ordering::Greater,
            };
            let tag = match ord {
                std::cmp::Ordering::Equal => {
                    let (o, e) = (o?, e?);
                    let same = match (&o.kind, &e.kind) {
                        (ListKind::Dir, EntryKind::Dir) => true,
                        (ListKind::Symlink { target: a }, EntryKind::Symlink { target: b }) => {
                            a == b
                        }
                        (
                            ListKind::File { exec: x, size: a },
                            EntryKind::File {
                                exec: y,
                                size: b,
                                op,
                            },
                        ) => x == y && a == b && matches!(op, FileOp::Unchanged),
                        _ => false,
                    };
                    if same {
                        ITEM_KEEP
                    } else {
                        ITEM_SAME
                    }
                }
                std::cmp::Ordering::Less => ITEM_DROP,
                std::cmp::Ordering::Greater => ITEM_NEW,
            };
            match tag {
                ITEM_KEEP | ITEM_DROP => match &mut run {
                    Some((t, n)) if *t == tag => *n += 1,
                    _ => {
                        flush(&mut items, &mut n_items, &mut run);
                        run = Some((tag, 1));
                    }
                },
                _ => {
                    flush(&mut items, &mut n_items, &mut run);
                    items.push(tag);
                    n_items += 1;
                    let e = e?;
                    if tag == ITEM_NEW {
                        // Prefix-compressed against the path just before it in merge order
                        // (often the dropped old name of a renamed file: `chunk-AB12.js`
                        // after `chunk-XY34.js`).
                        let shared = common_prefix(prev_new, &e.path);
                        put_varint(&mut items, shared as u64);
                        put_str(&mut items, &e.path[shared..]);
                    }
                    let same_size = match o.map(|o| &o.kind) {
                        Some(ListKind::File { size, .. }) => *size,
                        _ => 0,
                    };
                    let coding = SizeCoding {
                        relative: relative_sizes,
                        old: Some(&self.old_files),
                        same_item: tag == ITEM_SAME,
                        same_size,
                        prior: Some(&self.entries[..j]),
                    };
                    put_body(&mut items, &e.kind, &coding);
                }
            }
            prev_new = if tag == ITEM_NEW {
                &self.entries[j].path
            } else {
                &old[i].path
            };
            if tag != ITEM_NEW {
                i += 1;
            }
            if tag != ITEM_DROP {
                j += 1;
            }
        }
        flush(&mut items, &mut n_items, &mut run);
        put_varint(&mut out, n_items);
        out.extend_from_slice(&items);
        Some(out)
    }

    /// Read the fixed part of a relative-form manifest (digests and base tags) without OLD.
    pub fn relative_prefix(raw: &[u8], header: &Header) -> Result<RelativePrefix> {
        if raw.first() != Some(&FORM_RELATIVE) {
            return Err(Error::corrupt("manifest", "not in the relative form"));
        }
        let mut r = Reader::new(&raw[1..], "manifest");
        Manifest::read_relative_prefix(&mut r, header, &mut Budget::for_manifest(header))
    }

    fn read_relative_prefix(
        r: &mut Reader<'_>,
        header: &Header,
        budget: &mut Budget,
    ) -> Result<RelativePrefix> {
        Ok(RelativePrefix {
            new_digest: r.hash()?,
            base_digest: r.hash()?,
            listing_digest: r.hash()?,
            base_tags: if header.has_base_tags() {
                BaseTags::read(r, budget)?
            } else {
                BaseTags::default()
            },
        })
    }

    /// Read a relative-form manifest's counts without OLD. Allocates at most the header's
    /// share (`Budget::for_manifest`).
    pub fn summarize_relative(raw: &[u8], header: &Header) -> Result<RelativeSummary> {
        if raw.first() != Some(&FORM_RELATIVE) {
            return Err(Error::corrupt("manifest", "not in the relative form"));
        }
        let mut budget = Budget::for_manifest(header);
        let mut r = Reader::new(&raw[1..], "manifest");
        let prefix = Manifest::read_relative_prefix(&mut r, header, &mut budget)?;
        let s = Manifest::count_items(r, header, &mut budget)?;
        if header.has_base_tags() && prefix.base_tags.len() as u64 != s.old_entries {
            return Err(Error::corrupt(
                "manifest",
                "base tag count differs from the listing's entry count",
            ));
        }
        Ok(s)
    }

    /// Counts of a relative manifest's items (`r` is just past the prefix). Each body read is
    /// charged and released, so this holds at most one link target or source list at a time.
    fn count_items(
        mut r: Reader<'_>,
        header: &Header,
        budget: &mut Budget,
    ) -> Result<RelativeSummary> {
        // Bodies are skipped: sizes are not resolved (no old-file table).
        let skip = |same_item: bool| SizeCoding {
            relative: header.has_relative_sizes(),
            old: None,
            same_item,
            same_size: 0,
            prior: None,
        };
        let n_old = r.varint_max(r.remaining() as u64, "old file count")? as usize;
        for _ in 0..n_old {
            r.varint()?;
        }
        let n_items = r.varint_max(r.remaining() as u64, "item count")?;
        let mut s = RelativeSummary::default();
        for _ in 0..n_items {
            match r.u8()? {
                ITEM_KEEP => s.kept = s.kept.saturating_add(r.varint()?),
                ITEM_DROP => s.dropped = s.dropped.saturating_add(r.varint()?),
                ITEM_SAME => {
                    let kind = read_body(&mut r, n_old, budget, &skip(true))?;
                    budget.release(body_heap(&kind));
                    s.changed += 1;
                }
                ITEM_NEW => {
                    // The path builds on OLD's names, so only its bytes are skipped here.
                    r.varint()?;
                    r.string(MAX_PATH_LEN)?;
                    let kind = read_body(&mut r, n_old, budget, &skip(false))?;
                    budget.release(body_heap(&kind));
                    s.inserted += 1;
                }
                v => {
                    return Err(Error::Unsupported {
                        what: "manifest item",
                        value: v.into(),
                    })
                }
            }
        }
        s.old_entries = s.kept.saturating_add(s.dropped).saturating_add(s.changed);
        Ok(s)
    }

    pub(super) fn decode_relative(
        raw: &[u8],
        header: &Header,
        old: &[ListEntry],
        budget: &mut Budget,
    ) -> Result<Manifest> {
        let mut r = Reader::new(raw, "manifest");
        let RelativePrefix {
            new_digest,
            base_digest,
            listing_digest: want,
            base_tags,
        } = Manifest::read_relative_prefix(&mut r, header, budget)?;
        if listing_digest(old) != want {
            // Without OLD's contents this cannot name the entry (the applier does, from the
            // base tags, before it gets here); the entry counts often tell what happened.
            let counts = match Manifest::count_items(r, header, budget) {
                Ok(s) if s.old_entries != old.len() as u64 => format!(
                    "; the base had {} entries (files, directories, symlinks), OLD has {}",
                    s.old_entries,
                    old.len()
                ),
                Ok(_) => format!("; both have {} entries", old.len()),
                Err(_) => String::new(),
            };
            return Err(Error::wrong_base(
                "",
                format!(
                    "its file list differs from the one the patch was made from (an entry was \
                     added, removed, or changed in kind, size or mode){counts}{}",
                    if base_tags.is_empty() {
                        "; this patch has no base tags to name it"
                    } else {
                        ""
                    }
                ),
            ));
        }
        // One pass for the counts first, so that every table below is allocated once, at its
        // final size, and charged before.
        let counts = Manifest::count_items(
            Reader {
                buf: r.buf,
                pos: r.pos,
                what: r.what,
            },
            header,
            budget,
        )?;
        // An index is at least 1 byte and indices are strictly increasing: both bound the count.
        let n_old = r.varint_max(
            (r.remaining() as u64).min(old.len() as u64),
            "old file count",
        )? as usize;
        budget.charge(heap_of::<OldFile>(n_old as u64), "the old-file table")?;
        let mut old_files = Vec::with_capacity(n_old);
        let mut next = 0u64;
        for _ in 0..n_old {
            let gap = r.varint()?;
            let i = next
                .checked_add(gap)
                .filter(|&i| i < old.len() as u64)
                .ok_or_else(|| {
                    Error::corrupt("manifest", "old file index past the end of OLD's list")
                })? as usize;
            next = i as u64 + 1;
            let ListKind::File { size, .. } = old[i].kind else {
                return Err(Error::corrupt(
                    "manifest",
                    format!("{:?} is not a file in OLD", old[i].path),
                ));
            };
            budget.charge(old[i].path.len() as u64, "an old file's path")?;
            old_files.push(OldFile {
                path: old[i].path.clone(),
                size,
            });
        }
        let n_items = r.varint_max(r.remaining() as u64, "item count")?;
        // Entries kept or changed stand for OLD's own (OLD's size, see `listing_memory`);
        // inserted ones are the patch's, charged here, their paths and bodies as they are read.
        let from_old = counts
            .kept
            .saturating_add(counts.changed)
            .min(old.len() as u64);
        budget.charge(heap_of::<Entry>(counts.inserted), "the inserted entries")?;
        let mut entries: Vec<Entry> = Vec::with_capacity((from_old + counts.inserted) as usize);
        let mut deleted = Vec::with_capacity(counts.dropped.min(old.len() as u64) as usize);
        let mut cursor = 0usize;
        // What the next inserted path is prefix-compressed against: the last inserted entry or
        // the last old path consumed, whichever came last (referred to, never copied).
        enum Prev {
            Nothing,
            Old(usize),
            New(usize),
        }
        let mut prev = Prev::Nothing;
        let take = |cursor: &mut usize, n: u64| -> Result<std::ops::Range<usize>> {
            let end = (*cursor as u64)
                .checked_add(n)
                .filter(|&e| e <= old.len() as u64)
                .ok_or_else(|| Error::corrupt("manifest", "items run past the end of OLD's list"))?
                as usize;
            let r = *cursor..end;
            *cursor = end;
            Ok(r)
        };
        for _ in 0..n_items {
            match r.u8()? {
                ITEM_KEEP => {
                    let n = r.varint()?;
                    for o in &old[take(&mut cursor, n)?] {
                        let kind = match &o.kind {
                            ListKind::Dir => EntryKind::Dir,
                            ListKind::Symlink { target } => EntryKind::Symlink {
                                target: target.clone(),
                            },
                            ListKind::File { exec, size } => EntryKind::File {
                                exec: *exec,
                                size: *size,
                                op: FileOp::Unchanged,
                            },
                        };
                        entries.push(Entry {
                            path: o.path.clone(),
                            kind,
                        });
                    }
                }
                ITEM_DROP => {
                    let n = r.varint()?;
                    deleted.extend(old[take(&mut cursor, n)?].iter().map(|o| o.path.clone()));
                }
                ITEM_SAME => {
                    let o = &old[take(&mut cursor, 1)?][0];
                    let same_file = match o.kind {
                        ListKind::File { size, .. } => Some(size),
                        _ => None,
                    };
                    let coding = SizeCoding {
                        same_item: true,
                        same_size: same_file.unwrap_or(0),
                        ..SizeCoding::decoding(header, &old_files, &entries)
                    };
                    let kind = read_body(&mut r, n_old, budget, &coding)?;
                    if coding.relative && same_file.is_none() {
                        if let EntryKind::File {
                            op: FileOp::Delta { sources, .. },
                            ..
                        } = &kind
                        {
                            if sources.is_empty() {
                                return Err(Error::corrupt(
                                    "manifest",
                                    format!("{:?} is read as a file but is not one in OLD", o.path),
                                ));
                            }
                        }
                    }
                    entries.push(Entry {
                        path: o.path.clone(),
                        kind,
                    });
                }
                ITEM_NEW => {
                    let base = match prev {
                        Prev::Nothing => "",
                        Prev::Old(i) => old[i].path.as_str(),
                        Prev::New(j) => entries[j].path.as_str(),
                    };
                    let path = read_prefixed(&mut r, base, budget)?;
                    let coding = SizeCoding::decoding(header, &old_files, &entries);
                    let kind = read_body(&mut r, n_old, budget, &coding)?;
                    entries.push(Entry { path, kind });
                    prev = Prev::New(entries.len() - 1);
                    continue;
                }
                v => {
                    return Err(Error::Unsupported {
                        what: "manifest item",
                        value: v.into(),
                    })
                }
            }
            // The next inserted path builds on the last old path consumed.
            if cursor > 0 {
                prev = Prev::Old(cursor - 1);
            }
        }
        if cursor != old.len() || !r.is_empty() {
            return Err(Error::corrupt(
                "manifest",
                "items do not cover OLD's list exactly",
            ));
        }
        if header.has_base_tags() && base_tags.len() != old.len() {
            return Err(Error::corrupt(
                "manifest",
                "base tag count differs from the listing's entry count",
            ));
        }
        Manifest {
            new_digest,
            base_digest,
            old_files,
            entries,
            deleted,
            base_tags,
        }
        .validated(header, budget, counts.inserted)
    }
}
