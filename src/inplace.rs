//! Crash-safe in-place apply, and the side files of every apply (lock, journal, stage).
//!
//! A directory is updated by building the complete new tree in a staging directory next to it
//! (unchanged files are hard links to the old ones, so they cost no copy), verifying it, and
//! swapping the two directories with one atomic exchange (`renameat2(RENAME_EXCHANGE)` on
//! Linux, `renamex_np(RENAME_SWAP)` on macOS). A small journal next to the directory records
//! the patch (its checksum), the stage's name and the phase, so that a rerun after a crash or
//! kill at any moment finishes or undoes the work:
//!
//! | journal         | state on disk                         | a rerun of the same patch does        |
//! |-----------------|---------------------------------------|---------------------------------------|
//! | absent          | DIR is old (or new, if done)          | a normal apply / "already up to date" |
//! | `building`      | DIR is old; staging partial           | removes staging, then applies         |
//! | `ready INO`     | DIR old, staging (inode INO) complete | checks DIR is still the base, swaps   |
//! | `ready INO`     | DIR is INO (swap done), staging = old | removes the old tree, cleans up       |
//!
//! A single file goes the same way with a `rename(2)` of the staged file over it instead of
//! the exchange.
//!
//! # Where there is no exchange
//!
//! Whether the exchange works is probed before anything is built, by exchanging two empty
//! directories made next to DIR (`.NAME.bundelta-probe-a` and `-b`, removed at once; a killed
//! probe's empty directories are removed by the next run). Where it does not (another system,
//! a file system without it), the commit is two renames: DIR to `.NAME.bundelta-old-TOKEN`,
//! then the stage to DIR. The `ready` journal then also records DIR's inode, so a rerun tells
//! apart "not started", "DIR aside" (finish: rename the stage in) and "done" (remove the old
//! tree); between the two renames DIR is briefly absent, the one weaker point of this
//! strategy. Tests force it with `BUNDELTA_TEST_NO_EXCHANGE=1` (test-only) and run the SIGKILL
//! suites against it. In-place apply needs unix (inode numbers tell the steps apart);
//! elsewhere it is refused before anything is written.
//!
//! # Only the same patch finishes its work
//!
//! A rerun with another patch (or any out-of-place apply to the same path) refuses with
//! [`Error::Pending`], changing nothing: finishing another patch's swap would throw away
//! whatever was written into DIR since the crash. [`rollback_in_place`]
//! (`bundelta apply --in-place --rollback DIR`) undoes an interrupted run without its patch.
//! Journals of format v1 (no patch identity, a fixed stage name) are still read: a `building`
//! one is discarded, a `ready` one is finished only when the staged tree is the running
//! patch's new version.
//!
//! # Side files are never followed
//!
//! Every side file lives next to the target: `.NAME.bundelta-lock`, `.NAME.bundelta-journal`
//! and its temp file, the probe directories, the old tree set aside, and the stage, `.NAME.bundelta-stage-TOKEN` (in place) or
//! `.NAME.bundelta-new-TOKEN` (out of place), where TOKEN is the process id and 64 random bits.
//! They are opened with `O_NOFOLLOW` (and `O_NONBLOCK`, so that a FIFO cannot hang a run);
//! anything there that is not a regular file is refused, never opened for writing, truncated
//! or removed. The journal's temp file is created exclusively (a stale one is removed only when
//! it is a regular file holding a journal). A stage is created exclusively with a fresh name,
//! and only a stage this run created, or one that a journal of a dead run names, is removed.
//!
//! # Stale stages of dead runs
//!
//! An out-of-place apply also takes the lock on OUT and records its stage in OUT's journal
//! (`out` kind) before building it; a run killed mid-build leaves that record, and the next
//! apply to the same OUT (or in place on it) removes the named stage first. So no killed run
//! leaks a full-size stage.
//!
//! # Durability (fsync discipline)
//!
//! When the staging tree is complete and verified it is made durable (on Linux with one
//! `syncfs(2)` of its file system, which covers the data and metadata of every staged file and
//! directory; elsewhere an fsync of every file as it is closed, then of every directory deepest
//! first), then the parent directory is fsynced; only then is the journal moved to `ready`
//! (written to a temp file, fsynced, renamed, parent fsynced). After the exchange the parent is
//! fsynced before the old tree and the journal are removed.
//!
//! # Concurrency
//!
//! Two applies on the same target would race on the journal and the staging path. Each run
//! first takes an exclusive `flock(2)` on a lock file next to the target
//! (`.NAME.bundelta-lock`, removed when done); a second run fails at once with
//! [`Error::Locked`] instead of waiting or interfering. A kill releases the lock with the
//! process, so recovery is never blocked by a dead run.
//!
//! # Test-only crash points
//!
//! When the environment variable `BUNDELTA_TEST_CRASH_AT` names a point (`building`, `built`,
//! `ready`, `renamed-aside`, `exchanged`, `out-building`, `out-built`), the process kills itself with `SIGKILL`
//! there (elsewhere than unix: aborts). It exists only so that tests can stop a run in a
//! given phase deterministically; never set it otherwise.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::apply::{ApplyReport, LinkMode, Patcher};
use crate::error::{Error, Result};
use crate::format::Hash;
use crate::sys::{self, parent_of, remove_all, sync_parent};
use crate::tree::{bundle_digest, hex};

/// What an in-place apply found and did.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # #[cfg(all(unix, feature = "diff"))] {
/// # let dir = tempfile::tempdir()?;
/// # let (target, patch) = (dir.path().join("app.txt"), dir.path().join("p.bdp"));
/// # let text: String = (0..1000).map(|i| format!("line {i}\n")).collect();
/// # let new = text.replace("line 500\n", "line five hundred\n").into_bytes();
/// # std::fs::write(&target, &text)?;
/// # let made = bundelta::DiffOptions::new().diff_bytes(text.as_bytes(), &new)?;
/// # std::fs::write(&patch, made)?;
/// let patcher = bundelta::Patcher::new();
/// let first = patcher.apply_in_place(&target, &patch)?;
/// assert!(matches!(first.outcome, bundelta::InPlaceOutcome::Applied(ref r) if r.files == 1));
/// // A rerun finds the target at the new version already and changes nothing.
/// let again = patcher.apply_in_place(&target, &patch)?;
/// assert_eq!(again.outcome, bundelta::InPlaceOutcome::AlreadyUpToDate);
/// # }
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum InPlaceOutcome {
    /// The target was at the old version and now is at the new one.
    Applied(ApplyReport),
    /// The target already was at the patch's new version; nothing was changed.
    AlreadyUpToDate,
}

/// Result of [`Patcher::apply_in_place`].
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # #[cfg(all(unix, feature = "diff"))] {
/// # let dir = tempfile::tempdir()?;
/// # let (target, patch) = (dir.path().join("app.txt"), dir.path().join("p.bdp"));
/// # let text: String = (0..1000).map(|i| format!("line {i}\n")).collect();
/// # let new = text.replace("line 500\n", "line five hundred\n").into_bytes();
/// # std::fs::write(&target, &text)?;
/// # let made = bundelta::DiffOptions::new().diff_bytes(text.as_bytes(), &new)?;
/// # std::fs::write(&patch, made)?;
/// let report = bundelta::Patcher::new().apply_in_place(&target, &patch)?;
/// assert!(!report.recovered); // no interrupted run was pending
/// match report.outcome {
///     bundelta::InPlaceOutcome::Applied(r) => assert_eq!(r.bytes, new.len() as u64),
///     other => panic!("unexpected outcome {other:?}"),
/// }
/// # }
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct InPlaceReport {
    /// What happened.
    pub outcome: InPlaceOutcome,
    /// Whether an interrupted earlier run was found and finished or rolled back first.
    pub recovered: bool,
}

/// Result of [`rollback_in_place`].
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let dir = tempfile::tempdir()?;
/// let target = dir.path().join("app");
/// std::fs::create_dir(&target)?;
/// let said = match bundelta::rollback_in_place(&target)? {
///     bundelta::RollbackOutcome::NothingPending => "nothing to undo",
///     bundelta::RollbackOutcome::RolledBack => "back at the version before the interrupted apply",
///     _ => "the interrupted apply had committed: its new version stays",
/// };
/// assert_eq!(said, "nothing to undo");
/// # Ok(()) }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RollbackOutcome {
    /// No interrupted apply was pending on the target; nothing was changed.
    NothingPending,
    /// The interrupted apply was undone: the target is as it was before it, its stage is gone.
    RolledBack,
    /// The interrupted apply had already swapped its new version in (the commit point), which
    /// stays; only its leftovers (the old tree, the journal) were removed.
    AlreadyCommitted,
}

/// Largest journal (or journal temp file) read: a real one is under 300 bytes.
const MAX_JOURNAL: u64 = 16 << 10;
/// Largest patch path recorded in a journal (only used to name the patch in messages).
const MAX_RECORDED_PATH: usize = 4096;
const JOURNAL_V1: &str = "bundelta-journal-v1";
const JOURNAL_V2: &str = "bundelta-journal-v2";

fn side_path(target: &Path, tag: &str) -> Result<PathBuf> {
    let name = target
        .file_name()
        .ok_or_else(|| Error::invalid_input(target, "path has no file name"))?
        .to_string_lossy();
    Ok(parent_of(target).join(format!(".{name}.bundelta-{tag}")))
}

fn valid_token(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 40
        && t.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b) || b == b'-')
}

/// Kill the process here when `BUNDELTA_TEST_CRASH_AT` names this point (tests only; see the
/// module docs).
pub(crate) fn crash_point(name: &str) {
    if std::env::var_os("BUNDELTA_TEST_CRASH_AT").is_some_and(|v| v == name) {
        sys::kill_self();
        std::process::abort();
    }
}

fn not_regular(p: &Path) -> Error {
    Error::invalid_input(
        p,
        "is not a regular file (a symlink, directory, FIFO or device is there); bundelta \
         neither follows, writes nor removes it: move it away, then run again",
    )
}

/// Map an open error of a side file: a symlink (ELOOP under O_NOFOLLOW) or a directory is
/// "not a regular file".
fn open_error(p: &Path, op: &'static str, e: std::io::Error) -> Error {
    if sys::is_link_or_dir(&e) {
        return not_regular(p);
    }
    Error::io(p, op, e)
}

/// Open an existing side file for reading, never following a link or blocking on a FIFO;
/// `None` when absent. Anything but a regular file of at most `MAX_JOURNAL` bytes is refused.
fn read_side_file(p: &Path) -> Result<Option<Vec<u8>>> {
    match fs::symlink_metadata(p) {
        Ok(md) if !md.is_file() => return Err(not_regular(p)),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(p, "stat", e)),
    }
    let mut o = fs::OpenOptions::new();
    o.read(true);
    sys::side_file_options(&mut o);
    let f = match o.open(p) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(open_error(p, "open", e)),
    };
    let md = f.metadata().map_err(|e| Error::io(p, "stat", e))?;
    if !md.is_file() {
        return Err(not_regular(p));
    }
    if md.len() > MAX_JOURNAL {
        return Err(Error::invalid_input(
            p,
            format!(
                "is {} bytes, not a bundelta journal (at most {MAX_JOURNAL}); move it away, \
                 then run again",
                md.len()
            ),
        ));
    }
    let mut buf = Vec::new();
    f.take(MAX_JOURNAL + 1)
        .read_to_end(&mut buf)
        .map_err(|e| Error::io(p, "read", e))?;
    Ok(Some(buf))
}

/// Write the journal atomically ([`sys::AtomicFile`]: an exclusively created temp file, fsync,
/// rename, parent fsync). The temp file has a fixed name, so that one a killed run left is
/// found (we hold the lock) and replaced.
fn write_journal(journal: &Path, text: &str) -> Result<()> {
    let tmp = side_path(journal, "tmp")?;
    let mut a = match sys::AtomicFile::create_at(journal, &tmp, 0o666) {
        Ok(a) => a,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            // A temp file a dead run left (we hold the lock): removed only when it is a
            // regular file holding a journal, or the start of one (a run killed between
            // creating it and writing it leaves it empty); anything else is refused.
            let old = read_side_file(&tmp)?.unwrap_or_default();
            const MAGIC: &[u8] = b"bundelta-journal-";
            if !(old.starts_with(MAGIC) || MAGIC.starts_with(&old)) {
                return Err(Error::invalid_input(
                    &tmp,
                    "exists and is not a bundelta journal; move it away, then run again",
                ));
            }
            fs::remove_file(&tmp).map_err(|e| Error::io(&tmp, "remove", e))?;
            sys::AtomicFile::create_at(journal, &tmp, 0o666)
                .map_err(|e| open_error(&tmp, "create", e))?
        }
        Err(e) => return Err(open_error(&tmp, "create", e)),
    };
    // On an error the temp file (ours: created exclusively) is removed when `a` drops.
    a.file()
        .write_all(text.as_bytes())
        .map_err(|e| Error::io(&tmp, "write", e))?;
    a.commit()
}

fn remove_journal(journal: &Path) -> Result<()> {
    match fs::remove_file(journal) {
        Ok(()) => sync_parent(journal),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(journal, "remove", e)),
    }
}

/// What kind of run wrote a journal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// In place, a directory (committed by an exchange).
    Dir,
    /// In place, a single file (committed by a rename over it).
    File,
    /// Out of place: the journal only names the stage, for removal after a kill.
    Out,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Building,
    /// The stage is complete and durable; (dev, inode) of the stage when it was, and with
    /// [`Commit::Renames`] of the target.
    Ready((u64, u64), Option<(u64, u64)>),
}

/// A parsed journal.
#[derive(Debug)]
struct Journal {
    kind: Kind,
    /// The patch's checksum; `None` for a v1 journal (older bundelta).
    patch: Option<Hash>,
    /// Where the patch was opened from, when recorded.
    patch_path: Option<PathBuf>,
    /// The stage path (derived from the recorded token, always a sibling of the target).
    stage: PathBuf,
    /// Where the two-rename commit moves the old tree aside (same token).
    aside: PathBuf,
    /// How the stage is put in place (directories).
    commit: Commit,
    phase: Phase,
}

/// How a complete directory stage replaces the target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Commit {
    /// One atomic exchange (`renameat2(RENAME_EXCHANGE)` on Linux, `renamex_np(RENAME_SWAP)`
    /// on macOS).
    Exchange,
    /// Where the file system cannot exchange: the target is renamed aside
    /// (`.NAME.bundelta-old-TOKEN`), then the stage renamed to the target; the journal
    /// records the target's inode, so a rerun can tell each step apart. Between the two
    /// renames the target path is briefly absent.
    Renames,
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

impl Journal {
    fn encode(&self, token: &str) -> String {
        let kind = match self.kind {
            Kind::Dir => "dir",
            Kind::File => "file",
            Kind::Out => "out",
        };
        let mut t = format!("{JOURNAL_V2}\nkind {kind}\nstage {token}\n");
        if let Some(h) = &self.patch {
            t += &format!("patch {}\n", hex(h));
        }
        if let Some(p) = &self.patch_path {
            let b = sys::path_to_bytes(p);
            if b.len() <= MAX_RECORDED_PATH {
                t += "source ";
                for x in b {
                    t += &format!("{x:02x}");
                }
                t += "\n";
            }
        }
        if self.commit == Commit::Renames {
            t += "commit renames\n";
        }
        match self.phase {
            Phase::Building => t += "phase building\n",
            Phase::Ready((dev, ino), orig) => {
                t += &format!("phase ready {dev} {ino}\n");
                if let Some((dev, ino)) = orig {
                    t += &format!("target {dev} {ino}\n");
                }
            }
        }
        t
    }

    fn parse(target: &Path, journal: &Path, bytes: &[u8]) -> Result<Journal> {
        let damaged = |why: &str| {
            Error::invalid_input(
                journal,
                format!(
                    "damaged bundelta journal ({why}); inspect {} and its hidden \
                     .bundelta- siblings by hand, then remove it",
                    target.display()
                ),
            )
        };
        let text = std::str::from_utf8(bytes).map_err(|_| damaged("not text"))?;
        let mut lines = text.lines();
        let first = lines.next().unwrap_or("");
        let ready = |dev: Option<&str>, ino: Option<&str>| -> Option<Phase> {
            Some(Phase::Ready((dev?.parse().ok()?, ino?.parse().ok()?), None))
        };
        if first.split_whitespace().next() == Some(JOURNAL_V1) {
            // v1: one line, a fixed stage name, no patch identity.
            let mut w = first.split_whitespace().skip(1);
            let phase = match w.next() {
                Some("building") => Phase::Building,
                Some("ready") => ready(w.next(), w.next()).ok_or_else(|| damaged("v1 ready"))?,
                _ => return Err(damaged("v1 phase")),
            };
            let kind = if fs::symlink_metadata(target).is_ok_and(|m| m.is_dir()) {
                Kind::Dir
            } else {
                Kind::File
            };
            return Ok(Journal {
                kind,
                patch: None,
                patch_path: None,
                stage: side_path(target, "stage")?,
                aside: side_path(target, "old")?,
                commit: Commit::Exchange,
                phase,
            });
        }
        if first != JOURNAL_V2 {
            return Err(damaged("unknown format"));
        }
        let (mut kind, mut token, mut patch, mut source, mut phase) =
            (None, None, None, None, None);
        let (mut commit, mut orig) = (Commit::Exchange, None);
        for line in lines {
            let mut w = line.split_whitespace();
            match w.next() {
                Some("kind") => {
                    kind = match w.next() {
                        Some("dir") => Some(Kind::Dir),
                        Some("file") => Some(Kind::File),
                        Some("out") => Some(Kind::Out),
                        _ => return Err(damaged("kind")),
                    }
                }
                Some("stage") => {
                    let t = w.next().unwrap_or("");
                    if !valid_token(t) {
                        return Err(damaged("stage name"));
                    }
                    token = Some(t.to_string());
                }
                Some("patch") => {
                    let h = w.next().and_then(unhex).ok_or_else(|| damaged("patch"))?;
                    let h: Hash = h.try_into().map_err(|_| damaged("patch"))?;
                    patch = Some(h);
                }
                Some("source") => {
                    source = w.next().and_then(unhex).map(sys::path_from_bytes);
                }
                Some("phase") => {
                    phase = match w.next() {
                        Some("building") => Some(Phase::Building),
                        Some("ready") => {
                            Some(ready(w.next(), w.next()).ok_or_else(|| damaged("phase"))?)
                        }
                        _ => return Err(damaged("phase")),
                    }
                }
                Some("commit") => {
                    commit = match w.next() {
                        Some("renames") => Commit::Renames,
                        Some("exchange") => Commit::Exchange,
                        _ => return Err(damaged("commit")),
                    }
                }
                Some("target") => {
                    let (d, i) = (w.next(), w.next());
                    orig = Some(
                        (|| Some((d?.parse().ok()?, i?.parse().ok()?)))()
                            .ok_or_else(|| damaged("target"))?,
                    );
                }
                Some(_) => return Err(damaged("unknown line")),
                None => {}
            }
        }
        let kind = kind.ok_or_else(|| damaged("no kind"))?;
        let token = token.ok_or_else(|| damaged("no stage"))?;
        let tag = if kind == Kind::Out { "new" } else { "stage" };
        if kind != Kind::Out && patch.is_none() {
            return Err(damaged("no patch"));
        }
        let phase = match phase.ok_or_else(|| damaged("no phase"))? {
            Phase::Ready(s, None) if commit == Commit::Renames => {
                Phase::Ready(s, Some(orig.ok_or_else(|| damaged("no target inode"))?))
            }
            ph => ph,
        };
        Ok(Journal {
            kind,
            patch,
            patch_path: source,
            stage: side_path(target, &format!("{tag}-{token}"))?,
            aside: side_path(target, &format!("old-{token}"))?,
            commit,
            phase,
        })
    }
}

fn read_journal(target: &Path, journal: &Path) -> Result<Option<Journal>> {
    match read_side_file(journal)? {
        None => Ok(None),
        Some(b) => Journal::parse(target, journal, &b).map(Some),
    }
}

/// The patch's path as recorded for messages: absolute when it can be, so that it still names
/// the file from another working directory.
fn absolute(p: &Path) -> PathBuf {
    fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

fn pending(target: &Path, j: &Journal, reason: String) -> Error {
    Error::Pending {
        target: target.to_path_buf(),
        checksum: j.patch.map(|h| hex(&h)).unwrap_or_else(|| "unknown".into()),
        patch: j.patch_path.clone(),
        reason,
    }
}

/// Remove a stage a journal names (never following a link: `remove_all` removes a symlink
/// itself), then the journal.
fn discard(j: &Journal, journal: &Path) -> Result<()> {
    if fs::symlink_metadata(&j.stage).is_ok() {
        remove_all(&j.stage);
        sync_parent(&j.stage)?;
    }
    remove_journal(journal)
}

/// After the commit: remove the old tree (at the stage path after an exchange, aside after
/// the two renames), then the journal.
fn clean_committed(j: &Journal, journal: &Path) -> Result<()> {
    if j.commit == Commit::Renames && fs::symlink_metadata(&j.aside).is_ok() {
        remove_all(&j.aside);
        sync_parent(&j.aside)?;
    }
    discard(j, journal)
}

/// Atomically exchange two directory entries ([`sys::exchange`]).
fn exchange(a: &Path, b: &Path) -> Result<()> {
    sys::exchange(a, b).map_err(|e| Error::io(b, sys::EXCHANGE_OP, e))
}

/// How to commit a directory stage next to `target`, decided before anything is built: an
/// exchange when one of two fresh empty directories next to it can be exchanged with the
/// other, otherwise the journaled two renames. `BUNDELTA_TEST_NO_EXCHANGE=1` (tests only)
/// forces the renames.
fn choose_commit(target: &Path) -> Result<Commit> {
    if std::env::var_os("BUNDELTA_TEST_NO_EXCHANGE").is_some_and(|v| v == "1") {
        return Ok(Commit::Renames);
    }
    if !sys::HAS_EXCHANGE {
        return Ok(Commit::Renames);
    }
    // Fixed names under the lock: a run killed mid-probe leaves empty directories, which
    // `remove_dir` clears (it removes nothing else: not a link, a file or a non-empty
    // directory, which then makes the exclusive creation below fail).
    let a = side_path(target, "probe-a")?;
    let b = side_path(target, "probe-b")?;
    let _ = fs::remove_dir(&a);
    let _ = fs::remove_dir(&b);
    fs::create_dir(&a).map_err(|e| open_error(&a, "create directory", e))?;
    if let Err(e) = fs::create_dir(&b) {
        let _ = fs::remove_dir(&a);
        return Err(open_error(&b, "create directory", e));
    }
    let r = exchange(&a, &b);
    // Both are empty directories this run created (rmdir removes nothing else).
    let _ = fs::remove_dir(&a);
    let _ = fs::remove_dir(&b);
    match r {
        Ok(()) => Ok(Commit::Exchange),
        Err(Error::Io { source, .. }) if sys::exchange_unsupported(&source) => Ok(Commit::Renames),
        Err(e) => Err(e),
    }
}

fn rename(from: &Path, to: &Path) -> Result<()> {
    fs::rename(from, to).map_err(|e| Error::io(to, "rename", e))
}

/// Put a complete stage in place of the target: an exchange or two renames (directory), a
/// rename over it (file).
fn commit(j: &Journal, target: &Path) -> Result<()> {
    match (j.kind, j.commit) {
        (Kind::Dir, Commit::Exchange) => exchange(&j.stage, target)?,
        (Kind::Dir, Commit::Renames) => {
            rename(target, &j.aside)?;
            crash_point("renamed-aside");
            rename(&j.stage, target)?;
        }
        _ => rename(&j.stage, target)?,
    }
    crash_point("exchanged");
    sync_parent(target)
}

/// An exclusive lock on a target, released (and its file removed) on drop.
pub(crate) struct TargetLock {
    path: PathBuf,
    #[cfg(unix)]
    file: fs::File,
}

impl TargetLock {
    /// Lock `target` (which need not exist) through `.NAME.bundelta-lock`, opened without
    /// following a link, blocking on a FIFO or truncating anything; only a regular file is used.
    #[cfg(unix)]
    pub(crate) fn acquire(target: &Path) -> Result<TargetLock> {
        let path = side_path(target, "lock")?;
        // The file may be unlinked by the previous holder between our open and our flock:
        // then we locked a dead inode, so check that the path still names what we hold.
        for _ in 0..8 {
            if fs::symlink_metadata(&path).is_ok_and(|m| !m.is_file()) {
                return Err(not_regular(&path));
            }
            let mut o = fs::OpenOptions::new();
            o.read(true).write(true).create(true).truncate(false);
            sys::side_file_options(&mut o);
            let f = o
                .open(&path)
                .map_err(|e| open_error(&path, "create lock file", e))?;
            let held = f.metadata().map_err(|e| Error::io(&path, "stat", e))?;
            if !held.is_file() {
                return Err(not_regular(&path));
            }
            let held = sys::file_inode(&f).map_err(|e| Error::io(&path, "stat", e))?;
            if let Err(e) = sys::try_lock_exclusive(&f) {
                if e.kind() == std::io::ErrorKind::WouldBlock {
                    return Err(Error::Locked {
                        path: target.to_path_buf(),
                    });
                }
                return Err(Error::io(&path, "lock", e));
            }
            if held.is_some() && sys::inode(&path) == held {
                return Ok(TargetLock { path, file: f });
            }
        }
        Err(Error::Locked {
            path: target.to_path_buf(),
        })
    }

    #[cfg(not(unix))]
    pub(crate) fn acquire(target: &Path) -> Result<TargetLock> {
        Ok(TargetLock {
            path: side_path(target, "lock")?,
        })
    }
}

impl Drop for TargetLock {
    fn drop(&mut self) {
        // Unlink while still holding the lock (a waiter that opened the old file re-checks
        // the path and retries), and only when the path still names the file we hold.
        #[cfg(unix)]
        if let Ok(Some(held)) = sys::file_inode(&self.file) {
            if sys::inode(&self.path) == Some(held) {
                let _ = fs::remove_file(&self.path);
            }
        }
        #[cfg(not(unix))]
        let _ = &self.path;
    }
}

/// Whether a failed build left a stage this run created: not when creating the stage itself
/// failed because something was already there.
fn created_stage(e: &Error, stage: &Path) -> bool {
    !matches!(e, Error::Io { path, source, .. }
        if path == stage && source.kind() == std::io::ErrorKind::AlreadyExists)
}

/// Refuse a fresh stage name that is taken (it is not ours: never touched).
fn check_fresh(stage: &Path) -> Result<()> {
    if fs::symlink_metadata(stage).is_ok() {
        return Err(Error::invalid_input(
            stage,
            "exists, though this run just chose the name; bundelta leaves it alone: move it \
             away, then run again",
        ));
    }
    Ok(())
}

/// The stage of an out-of-place apply to `out`, recorded in `out`'s journal; the caller holds
/// the lock on `out`.
pub(crate) struct OutStage {
    /// Where to build.
    pub(crate) stage: PathBuf,
    journal: PathBuf,
}

impl OutStage {
    /// Remove the stage of a dead out-of-place run to `out` (its journal names it), refuse
    /// when an in-place apply is pending on `out`, then choose and record a fresh stage.
    pub(crate) fn begin(out: &Path, patch: &crate::apply::Patch) -> Result<OutStage> {
        let journal = side_path(out, "journal")?;
        if let Some(j) = read_journal(out, &journal)? {
            if j.kind != Kind::Out {
                return Err(pending(
                    out,
                    &j,
                    "and an out-of-place apply must not create it meanwhile".into(),
                ));
            }
            discard(&j, &journal)?;
        }
        let token = sys::new_token();
        let stage = side_path(out, &format!("new-{token}"))?;
        check_fresh(&stage)?;
        let j = Journal {
            kind: Kind::Out,
            // A patch read from a stream has neither a file nor, yet, a checksum.
            patch: (!patch.is_streamed()).then(|| patch.checksum()),
            patch_path: (!patch.is_streamed()).then(|| absolute(patch.path())),
            stage: stage.clone(),
            aside: side_path(out, &format!("old-{token}"))?,
            commit: Commit::Exchange,
            phase: Phase::Building,
        };
        write_journal(&journal, &j.encode(&token))?;
        crash_point("out-building");
        Ok(OutStage { stage, journal })
    }

    /// After the build and rename: remove the record, and on error the stage this run made.
    pub(crate) fn end<T>(self, result: Result<T>) -> Result<T> {
        if let Err(e) = &result {
            if created_stage(e, &self.stage) {
                remove_all(&self.stage);
            }
            let _ = remove_journal(&self.journal);
            return result;
        }
        remove_journal(&self.journal)?;
        result
    }
}

/// Where a `ready` run stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Progress {
    /// The stage is complete and not yet in place; the target as it was.
    NotStarted,
    /// Two renames: the target is aside, the stage not yet in its place.
    Aside,
    /// The stage is the target (the commit point has passed).
    Committed,
    /// None of the above: something else changed the files.
    Unknown,
}

fn progress(j: &Journal, target: &Path) -> Progress {
    let Phase::Ready(stage, orig) = j.phase else {
        return Progress::NotStarted;
    };
    let (t, s) = (sys::inode(target), sys::inode(&j.stage));
    if t == Some(stage) {
        Progress::Committed
    } else if s == Some(stage) && (j.commit == Commit::Exchange || t == orig) {
        Progress::NotStarted
    } else if s == Some(stage) && t.is_none() && sys::inode(&j.aside) == orig {
        Progress::Aside
    } else {
        Progress::Unknown
    }
}

fn unknown_state(target: &Path, j: &Journal) -> Error {
    pending(
        target,
        j,
        format!(
            "but neither {} nor its stage {} is the tree it recorded; inspect them by hand",
            target.display(),
            j.stage.display()
        ),
    )
}

/// Finish (same patch) or clear (out-of-place leftovers) what a journal records, or refuse.
fn recover(target: &Path, journal: &Path, p: &mut crate::apply::Patch) -> Result<bool> {
    let Some(j) = read_journal(target, journal)? else {
        return Ok(false);
    };
    if j.kind == Kind::Out {
        // A dead out-of-place run to this path: its stage is garbage.
        discard(&j, journal)?;
        return Ok(true);
    }
    if let Some(h) = j.patch {
        if h != p.checksum() {
            return Err(pending(
                target,
                &j,
                format!(
                    "and this run's patch {} is another one (checksum {})",
                    p.path().display(),
                    hex(&p.checksum())
                ),
            ));
        }
    }
    if j.phase == Phase::Building {
        // The target was not touched: the partial stage is garbage.
        discard(&j, journal)?;
        return Ok(true);
    }
    match progress(&j, target) {
        Progress::Committed => clean_committed(&j, journal)?,
        Progress::NotStarted => {
            // Complete and verified, not yet in place: only if the target is still the base
            // it was built from (nothing written into it since), and for a v1 journal only if
            // the stage is this patch's new version.
            let check = (|| {
                // Entries written into the target since the crash are refused here too.
                let old = p.open_old(target)?;
                p.bind_checked(&old, crate::Unknown::Refuse)?;
                p.check_base(&old)?;
                if j.patch.is_none() && bundle_digest(&j.stage)? != p.new_digest() {
                    return Err(Error::invalid_input(
                        &j.stage,
                        "the staged version is not this patch's new version",
                    ));
                }
                Ok(())
            })();
            if let Err(e) = check {
                return Err(pending(
                    target,
                    &j,
                    format!(
                        "and {} changed since it was interrupted ({e})",
                        target.display()
                    ),
                ));
            }
            commit(&j, target)?;
            clean_committed(&j, journal)?;
        }
        Progress::Aside => {
            rename(&j.stage, target)?;
            crash_point("exchanged");
            sync_parent(target)?;
            clean_committed(&j, journal)?;
        }
        Progress::Unknown => return Err(unknown_state(target, &j)),
    }
    Ok(true)
}

/// The target as a path that ends in a name (its lock, journal and stages are named after it
/// beside it): `.`, `..` or `dir/.` become the directory's absolute path, resolved as the
/// system resolves the working directory; any other path is kept as given (a symlink as the
/// last component is not followed).
fn named_target(target: &Path) -> Result<std::path::PathBuf> {
    if target.file_name().is_some() && !target.ends_with(".") {
        return Ok(target.to_path_buf());
    }
    std::fs::canonicalize(target).map_err(|e| Error::io(target, "resolve", e))
}

/// Undo an interrupted in-place apply on `target` without its patch: the stage is removed and
/// the target left as it was before that apply; when that apply had already put its new
/// version in place (the commit point), the new version stays and only its leftovers are
/// removed. Takes the target's lock like an apply.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # #[cfg(all(unix, feature = "diff"))] {
/// # let dir = tempfile::tempdir()?;
/// # let (target, patch) = (dir.path().join("app.txt"), dir.path().join("p.bdp"));
/// # let text: String = (0..1000).map(|i| format!("line {i}\n")).collect();
/// # let new = text.replace("line 500\n", "line five hundred\n").into_bytes();
/// # std::fs::write(&target, &text)?;
/// # let made = bundelta::DiffOptions::new().diff_bytes(text.as_bytes(), &new)?;
/// # std::fs::write(&patch, made)?;
/// bundelta::Patcher::new().apply_in_place(&target, &patch)?;
/// // A completed apply leaves nothing to undo: the target keeps its new version.
/// let outcome = bundelta::rollback_in_place(&target)?;
/// assert_eq!(outcome, bundelta::RollbackOutcome::NothingPending);
/// assert_eq!(std::fs::read(&target)?, new);
/// # }
/// # Ok(()) }
/// ```
pub fn rollback_in_place(target: impl AsRef<Path>) -> Result<RollbackOutcome> {
    let target = target.as_ref();
    let named = named_target(target)?;
    let target = named.as_path();
    let _lock = TargetLock::acquire(target)?;
    let journal = side_path(target, "journal")?;
    let Some(j) = read_journal(target, &journal)? else {
        return Ok(RollbackOutcome::NothingPending);
    };
    if j.kind == Kind::Out || j.phase == Phase::Building {
        discard(&j, &journal)?;
        return Ok(RollbackOutcome::RolledBack);
    }
    match progress(&j, target) {
        Progress::Committed => {
            clean_committed(&j, &journal)?;
            Ok(RollbackOutcome::AlreadyCommitted)
        }
        Progress::Aside => {
            rename(&j.aside, target)?;
            sync_parent(target)?;
            discard(&j, &journal)?;
            Ok(RollbackOutcome::RolledBack)
        }
        Progress::NotStarted => {
            discard(&j, &journal)?;
            Ok(RollbackOutcome::RolledBack)
        }
        Progress::Unknown if sys::inode(&j.stage).is_none() && sys::inode(target).is_some() => {
            // The stage is gone and the target not it: nothing of that run is left.
            discard(&j, &journal)?;
            Ok(RollbackOutcome::RolledBack)
        }
        Progress::Unknown => Err(unknown_state(target, &j)),
    }
}

impl Patcher {
    /// Update `target` (a file or directory) to the patch's new version in place, crash-safely.
    ///
    /// A kill or power loss at any moment leaves `target` at the old or the new version (with
    /// the two-rename commit, briefly absent with the old tree aside); a rerun with the same
    /// patch finishes the job (see the module docs), while another patch is refused with
    /// [`Error::Pending`] until the interrupted run is finished or rolled back
    /// ([`rollback_in_place`]). A rerun on a target already at the new version returns
    /// [`InPlaceOutcome::AlreadyUpToDate`] without changing anything. Needs unix (it tells the
    /// steps of an interrupted run apart by inode numbers); elsewhere it is refused before
    /// anything is written.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # #[cfg(all(unix, feature = "diff"))] {
    /// # let dir = tempfile::tempdir()?;
    /// # let (target, patch) = (dir.path().join("app.txt"), dir.path().join("p.bdp"));
    /// # let text: String = (0..1000).map(|i| format!("line {i}\n")).collect();
    /// # let new = text.replace("line 500\n", "line five hundred\n").into_bytes();
    /// # std::fs::write(&target, &text)?;
    /// # let made = bundelta::DiffOptions::new().diff_bytes(text.as_bytes(), &new)?;
    /// # std::fs::write(&patch, made)?;
    /// let report = bundelta::Patcher::new().apply_in_place(&target, &patch)?;
    /// assert!(matches!(report.outcome, bundelta::InPlaceOutcome::Applied(_)));
    /// assert_eq!(std::fs::read(&target)?, new); // the target is now the new version
    /// # }
    /// # Ok(()) }
    /// ```
    pub fn apply_in_place(
        &self,
        target: impl AsRef<Path>,
        patch: impl AsRef<Path>,
    ) -> Result<InPlaceReport> {
        let target = target.as_ref();
        let patch = patch.as_ref();
        if !cfg!(unix) {
            return Err(Error::io(
                target,
                "apply in place",
                std::io::Error::new(
                    std::io::ErrorKind::Unsupported,
                    "in-place apply needs a unix system; apply out of place (-o) instead",
                ),
            ));
        }
        let named = named_target(target)?;
        let target = named.as_path();
        let mut p = self.open(patch)?;
        let _lock = TargetLock::acquire(target)?;
        let journal = side_path(target, "journal")?;
        let recovered = recover(target, &journal, &mut p)?;
        let old = p.open_old(target)?;
        if let Err(e) = p.bind_checked(&old, self.unknown_policy()) {
            // A relative manifest binds only to OLD's file list: a target at the new version
            // does not bind, and is recognised by its digest.
            if bundle_digest(target).ok() == Some(p.new_digest()) {
                return Ok(InPlaceReport {
                    outcome: InPlaceOutcome::AlreadyUpToDate,
                    recovered,
                });
            }
            return Err(e);
        }
        self.check_listing_memory(&p)?;
        if p.shape_matches(target)? && bundle_digest(target)? == p.new_digest() {
            return Ok(InPlaceReport {
                outcome: InPlaceOutcome::AlreadyUpToDate,
                recovered,
            });
        }
        let base = match p.check_base(&old) {
            Ok(b) => b,
            Err(e) => {
                if bundle_digest(target).ok() == Some(p.new_digest()) {
                    return Ok(InPlaceReport {
                        outcome: InPlaceOutcome::AlreadyUpToDate,
                        recovered,
                    });
                }
                return Err(e);
            }
        };
        self.event(crate::apply::ApplyEvent::BaseChecked { old: target });
        let dir = p.header().is_directory();
        // Decided before anything is built, so an unsupported exchange never wastes a stage.
        let how = if dir {
            choose_commit(target)?
        } else {
            Commit::Exchange
        };
        let token = sys::new_token();
        let stage = side_path(target, &format!("stage-{token}"))?;
        let aside = side_path(target, &format!("old-{token}"))?;
        check_fresh(&stage)?;
        check_fresh(&aside)?;
        let mut j = Journal {
            kind: if dir { Kind::Dir } else { Kind::File },
            patch: Some(p.checksum()),
            patch_path: Some(absolute(p.path())),
            stage: stage.clone(),
            aside,
            commit: how,
            phase: Phase::Building,
        };
        write_journal(&journal, &j.encode(&token))?;
        crash_point("building");
        let link = if dir {
            LinkMode::HardLink
        } else {
            LinkMode::Copy
        };
        let built = p
            .build(
                &old,
                Some(&stage),
                &base,
                link,
                self.progress_fn(),
                self.hook_fn(),
            )
            .and_then(|r| {
                if dir && self.unknown_policy() == crate::Unknown::Keep {
                    p.carry_unknown(&old, &stage, LinkMode::HardLink)?;
                }
                Ok(r)
            });
        let report = match built {
            Ok(r) => r,
            Err(e) => {
                if created_stage(&e, &stage) {
                    remove_all(&stage);
                }
                let _ = remove_journal(&journal);
                return Err(e);
            }
        };
        sync_parent(&stage)?;
        crash_point("built");
        let missing = |p: &Path| Error::io(p, "stat", std::io::Error::other("missing"));
        let staged = sys::inode(&stage).ok_or_else(|| missing(&stage))?;
        let orig = match how {
            Commit::Renames => Some(sys::inode(target).ok_or_else(|| missing(target))?),
            Commit::Exchange => None,
        };
        j.phase = Phase::Ready(staged, orig);
        write_journal(&journal, &j.encode(&token))?;
        crash_point("ready");
        commit(&j, target)?;
        if dir {
            clean_committed(&j, &journal)?;
        } else {
            remove_journal(&journal)?;
        }
        Ok(InPlaceReport {
            outcome: InPlaceOutcome::Applied(report),
            recovered,
        })
    }
}
