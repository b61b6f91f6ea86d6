//! Checking OLD against a patch: opening OLD once ([`Old`]), binding a relative manifest to
//! OLD's file list, entries the patch does not know ([`Unknown`]), hashing every old file
//! relied upon, and naming what differs when OLD is not the base.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::format::{
    listing_digest, listing_tag, BaseTags, EntryKind, FileOp, Hash, ListEntry, ListKind, Manifest,
};
use crate::readat::Section;
use crate::sys::{self, Dir, FileId, Opened};
use crate::tree;

use super::{listing_memory, Patch};

/// Why a wrong base is not named: the patch carries no base tags.
const NO_TAGS: &str = "; this patch has no base tags to name it (made with `--base-tags 0`, or \
                       by default for a tree of many files with a tiny change)";

/// Result of checking OLD against a patch: size and hash of every old file relied upon at its
/// own path (see [`FileOp::reads_own_path`]), in entry order.
pub(crate) struct BaseCheck {
    pub(super) base: Vec<(u64, Hash)>,
    /// Hashes of the old-file table's files, in table order.
    pub(super) table: Vec<Hash>,
    /// Identity of each file of `base` as it was hashed (see [`sys::FileId`]).
    pub(super) base_ids: Vec<FileId>,
    /// Identity of each file of `table` as it was hashed.
    pub(super) table_ids: Vec<FileId>,
}

/// Identity before and after this apply hard-linked a file of the old-file table (used again
/// later as a source).
pub(super) type Relinked = std::collections::HashMap<FileId, FileId>;

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
    pub(super) fn display(&self, rel: &str) -> PathBuf {
        match self {
            Old::Dir(d) => d.display(rel),
            Old::File { path, .. } => path.clone(),
        }
    }

    /// Open the regular file `rel` of OLD for reading (see [`sys::Dir::open_file`]).
    pub(super) fn open(&self, rel: &str) -> io::Result<Opened> {
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
    pub(super) fn open_checked(
        &self,
        rel: &str,
        id: &FileId,
        relinked: &Relinked,
    ) -> Result<Opened> {
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
            _ if sys::is_dir_error(&source) => "is a directory, not a regular file".to_string(),
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

/// The tags of OLD's listing entries ([`listing_tag`]), computed in listing order as they are
/// needed, so that each file of OLD is hashed at most once between [`extra_entries`] and
/// [`name_listing_difference`].
#[derive(Default)]
struct ListingTags {
    /// Tags of the first entries of the listing.
    tags: Vec<Hash>,
    /// The error hashing the next entry gave (a wrong base), returned when its tag is needed.
    failed: Option<Error>,
}

impl ListingTags {
    /// Tag of OLD's entry `j` (`listing[j]`), computing those before it first.
    fn get(&mut self, old: &Old, listing: &[ListEntry], j: usize) -> Result<Hash> {
        while self.tags.len() <= j {
            if let Some(e) = self.failed.take() {
                return Err(e);
            }
            let e = &listing[self.tags.len()];
            let content = match e.kind {
                ListKind::File { .. } => Some(hash_base_file(old, &e.path)?.1),
                _ => None,
            };
            self.tags.push(listing_tag(e, content.as_ref()));
        }
        Ok(self.tags[j])
    }
}

/// After a listing-digest mismatch (relative manifest): name the first entry of OLD's listing
/// that is not the base's, from the per-entry base tags. Reads the files of OLD in listing
/// order up to a few entries past the first difference (the tags cover contents too), except
/// those whose tags `memo` already holds.
fn name_listing_difference(
    old: &Old,
    listing: &[ListEntry],
    tags: &BaseTags,
    mut memo: ListingTags,
) -> Result<Error> {
    // Tag hash of OLD's entry `j`, computed in order.
    let mut tag_of = |j: usize| memo.get(old, listing, j);
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

/// OLD's listing as [`extra_entries`] splits it.
enum Extra {
    /// OLD is the base plus entries it did not have.
    Split {
        /// The base's entries, in path order.
        kept: Vec<ListEntry>,
        /// The entries the base did not have, in path order.
        unknown: Vec<ListEntry>,
    },
    /// Some other difference (or none could be told apart): the listing as it was, with the
    /// tags computed so far, for [`name_listing_difference`].
    Differs(Vec<ListEntry>, ListingTags),
}

/// The entries of OLD's listing that its base did not have, when that is the only difference:
/// OLD's entries are aligned in order with the base tags (an entry whose tag does not match the
/// next base tag is taken as extra), and the result is confirmed by the listing digest of what
/// is left, so it is exact or [`Extra::Differs`] (other differences, no tags, or an extra entry
/// whose tag happened to match, a 2^-bits chance each).
fn extra_entries(
    old: &Old,
    listing: Vec<ListEntry>,
    tags: &BaseTags,
    digest: &Hash,
) -> Result<Extra> {
    let mut memo = ListingTags::default();
    if tags.is_empty() || listing.len() <= tags.len() {
        return Ok(Extra::Differs(listing, memo));
    }
    // Indices into `listing`, ascending.
    let mut extra = Vec::new();
    let mut j = 0;
    for i in 0..listing.len() {
        let tag = match memo.get(old, &listing, i) {
            Ok(t) => t,
            Err(err @ Error::WrongBase { .. }) => {
                memo.failed = Some(err);
                return Ok(Extra::Differs(listing, memo));
            }
            Err(err) => return Err(err),
        };
        if j < tags.len() && tags.matches(j, &tag) {
            j += 1;
        } else {
            extra.push(i);
        }
    }
    if j != tags.len() {
        return Ok(Extra::Differs(listing, memo));
    }
    let n = listing.len();
    let mut kept = Vec::with_capacity(n - extra.len());
    let mut unknown = Vec::with_capacity(extra.len());
    for (i, e) in listing.into_iter().enumerate() {
        if extra.binary_search(&i).is_ok() {
            unknown.push(e);
        } else {
            kept.push(e);
        }
    }
    if listing_digest(&kept) == *digest {
        return Ok(Extra::Split { kept, unknown });
    }
    // Put the listing back together, in order, for naming the difference.
    let (mut kept, mut unknown) = (kept.into_iter(), unknown.into_iter());
    let listing = (0..n)
        .map(|i| {
            let from = if extra.binary_search(&i).is_ok() {
                &mut unknown
            } else {
                &mut kept
            };
            from.next().expect("the split holds every entry")
        })
        .collect();
    Ok(Extra::Differs(listing, memo))
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

impl Patch {
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
                let split = extra_entries(old, listing, &prefix.base_tags, &prefix.listing_digest)?;
                let (kept, unknown) = match split {
                    Extra::Split { kept, unknown } => (kept, unknown),
                    Extra::Differs(listing, memo) => {
                        return Err(name_listing_difference(
                            old,
                            &listing,
                            &prefix.base_tags,
                            memo,
                        )?);
                    }
                };
                listing = kept;
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
}
