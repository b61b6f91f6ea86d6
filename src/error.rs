//! The one error type of the library.
//!
//! Every variant carries the evidence (paths, numbers, expected and found values) and its
//! message says what went wrong in terms a user can act on. Untrusted input (a patch) produces
//! `Corrupt`, `Checksum`, `Unsupported`, `LimitExceeded`, `WrongBase` (including an old path
//! that is missing or not a regular file) or `OutputMismatch` (a rebuilt bundle that does not
//! match the patch's digest); `Io` only for real I/O trouble (permissions, disk). Never a panic.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// Result alias used throughout the crate.
///
/// ```
/// // The version a patch makes, in hex.
/// fn target_of(patch: &std::path::Path) -> bundelta::Result<String> {
///     let p = bundelta::Patcher::new().open(patch)?;
///     Ok(bundelta::hex(&p.new_digest()))
/// }
/// let missing = target_of("no-such-patch.bdp".as_ref());
/// assert!(matches!(missing, Err(bundelta::Error::Io { op: "open", .. })));
/// ```
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while diffing, verifying or applying.
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
/// // OLD is not the version the patch was made from.
/// std::fs::write(&old, b"some other version of the file")?;
/// match patcher.apply(&old, &patch, &out) {
///     Err(bundelta::Error::WrongBase { reason, .. }) => eprintln!("not the base: {reason}"),
///     other => panic!("expected WrongBase, got {other:?}"),
/// }
/// // A damaged patch (here its last byte) fails the whole-patch checksum.
/// let mut damaged = std::fs::read(&patch)?;
/// *damaged.last_mut().unwrap() ^= 1;
/// std::fs::write(&patch, damaged)?;
/// assert!(matches!(patcher.apply(&old, &patch, &out), Err(bundelta::Error::Checksum { .. })));
/// # }
/// # Ok(()) }
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// An I/O operation on a named file failed.
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// What was being done ("read", "create", "rename", ...).
        op: &'static str,
        /// The underlying error.
        source: io::Error,
    },
    /// The patch is malformed: a field is out of range, a stream ends early or runs long.
    Corrupt {
        /// Which part of the patch ("header", "manifest", "delta stream", ...).
        what: &'static str,
        /// What exactly is wrong, with the numbers.
        detail: String,
    },
    /// The whole-patch checksum does not match: the file was truncated or altered.
    Checksum {
        /// Hex of the checksum recorded in the patch.
        expected: String,
        /// Hex of the checksum computed over the bytes read.
        found: String,
    },
    /// The patch uses a format version or feature this build does not know.
    Unsupported {
        /// What is unsupported.
        what: &'static str,
        /// The value found in the patch.
        value: u64,
    },
    /// The patch needs a decoder or transform this applier was built without (a cargo
    /// feature left out of a small client build).
    NotBuiltIn {
        /// What the patch uses ("LZMA2 streams", "archive patches (delta transform 2)", ...).
        what: &'static str,
        /// The cargo feature that provides it.
        feature: &'static str,
    },
    /// Applying (or reading) the patch would exceed a limit set by the caller.
    LimitExceeded {
        /// Which limit.
        what: &'static str,
        /// How much the patch needs.
        needed: u64,
        /// The limit in force.
        limit: u64,
    },
    /// OLD is not the version the patch was made from.
    WrongBase {
        /// The first path (relative to OLD) found to differ; empty for a single-file bundle.
        path: String,
        /// How it differs.
        reason: String,
    },
    /// A rebuilt file did not hash to the value recorded in the patch (nothing was committed).
    OutputMismatch {
        /// The entry path in the bundle.
        path: String,
    },
    /// The output path already exists; bundelta never overwrites it.
    OutputExists {
        /// The path.
        path: PathBuf,
    },
    /// An input to `diff` cannot be represented in a patch (bad name, case clash, special file...).
    InvalidInput {
        /// The offending path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Another in-place apply holds the lock on this target.
    Locked {
        /// The target being updated.
        path: PathBuf,
    },
    /// An interrupted in-place apply is pending on the target (its journal is next to it), and
    /// this run cannot finish it: another patch, or the target changed since. Nothing was
    /// changed; rerun the interrupted patch to finish it, or roll it back
    /// ([`crate::rollback_in_place`], `bundelta apply --in-place --rollback TARGET`).
    Pending {
        /// The target with the pending apply.
        target: PathBuf,
        /// Checksum (hex) of the interrupted apply's patch, or "unknown" for a journal
        /// written by an older bundelta.
        checksum: String,
        /// The path the interrupted apply's patch was opened from, when recorded.
        patch: Option<PathBuf>,
        /// Why this run does not finish it.
        reason: String,
    },
    /// A signature was required and the patch carries none.
    Unsigned,
    /// The patch's signature does not verify with the given public key.
    Signature {
        /// Fingerprint of the public key tried ([`crate::PublicKey::fingerprint`]).
        key: String,
        /// Why it failed.
        why: &'static str,
    },
    /// OLD holds entries the patch does not know about (neither in the new version, nor
    /// among the old entries it deletes or reads): a user's file, a cache. Refused by default,
    /// before anything is written; [`crate::Patcher::unknown`] chooses to keep or remove them.
    UnknownEntries {
        /// How many entries of OLD the patch does not know (a directory and what is in it count
        /// one each).
        count: usize,
        /// The first few of them, relative to OLD, in path order.
        paths: Vec<String>,
    },
    /// Invalid options (out-of-range level, window, ...).
    Config {
        /// What is wrong.
        detail: String,
    },
    /// The update repository cannot serve this request: a release it does not have, a
    /// version published twice, a download that does not match the index, no route to the
    /// target (nothing was changed).
    Repository {
        /// The repository (a directory or a URL).
        repo: String,
        /// What is wrong, and what to do.
        detail: String,
    },
    /// The repository's signed index is not fresh: older than one this client accepted (a
    /// replay) or past its expiry (a frozen mirror). Nothing was changed.
    StaleIndex {
        /// The repository.
        repo: String,
        /// Which, with the numbers.
        detail: String,
    },
}

impl Error {
    pub(crate) fn io(path: &Path, op: &'static str, source: io::Error) -> Error {
        Error::Io {
            path: path.to_path_buf(),
            op,
            source,
        }
    }

    pub(crate) fn corrupt(what: &'static str, detail: impl Into<String>) -> Error {
        Error::Corrupt {
            what,
            detail: detail.into(),
        }
    }

    pub(crate) fn wrong_base(path: impl Into<String>, reason: impl Into<String>) -> Error {
        Error::WrongBase {
            path: path.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn invalid_input(path: &Path, reason: impl Into<String>) -> Error {
        Error::InvalidInput {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }
}

/// Memory and size figures in messages are in MiB (the unit of `--memory-limit 12M`), with the
/// exact byte count beside them.
const MIB: f64 = (1u64 << 20) as f64;

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { path, op, source } => {
                write!(f, "{}: {op} failed: {source}", path.display())
            }
            Error::Corrupt { what, detail } => {
                write!(f, "corrupt patch ({what}): {detail}")
            }
            Error::Checksum { expected, found } => write!(
                f,
                "patch checksum mismatch (recorded {expected}, computed {found}): \
                 the patch file is truncated or damaged; fetch it again"
            ),
            Error::Unsupported { what, value } => write!(
                f,
                "unsupported {what} {value}: this patch needs a newer bundelta"
            ),
            Error::NotBuiltIn { what, feature } => write!(
                f,
                "this patch uses {what}, which this applier was built without (cargo feature \
                 `{feature}`): apply it with a build that has it, or make the patch without it"
            ),
            Error::LimitExceeded {
                what,
                needed,
                limit,
            } => write!(
                f,
                "{what} needs {:.2} MiB ({needed} bytes) but the limit is {:.2} MiB ({limit} \
                 bytes): raise the limit, or make the patch with a smaller --window-log",
                *needed as f64 / MIB,
                *limit as f64 / MIB
            ),
            Error::WrongBase { path, reason } => {
                if path.is_empty() {
                    write!(
                        f,
                        "OLD is not the version this patch was made from: {reason}"
                    )
                } else {
                    write!(
                        f,
                        "OLD is not the version this patch was made from: {path}: {reason}"
                    )
                }
            }
            Error::OutputMismatch { path } => write!(
                f,
                "rebuilt file {path:?} does not match the hash in the patch; nothing was written"
            ),
            Error::OutputExists { path } => write!(
                f,
                "{}: output already exists; remove it or choose another path",
                path.display()
            ),
            Error::InvalidInput { path, reason } => {
                write!(f, "{}: {reason}", path.display())
            }
            Error::Locked { path } => write!(
                f,
                "{}: another bundelta apply is updating it right now; wait for it to finish, \
                 then run again",
                path.display()
            ),
            Error::Pending {
                target,
                checksum,
                patch,
                reason,
            } => {
                let t = target.display();
                let named = match patch {
                    Some(p) => format!("{} ", p.display()),
                    None => String::new(),
                };
                write!(
                    f,
                    "{t}: an interrupted in-place apply of patch {named}(checksum {checksum}) is \
                     pending on it, {reason}; nothing was changed. To finish it, rerun \
                     `bundelta apply --in-place {t} PATCH` with that patch; to undo it, run \
                     `bundelta apply --in-place --rollback {t}`"
                )
            }
            Error::Unsigned => write!(
                f,
                "the patch is not signed, and a signature was required (--pubkey): \
                 refusing it; ask its publisher for a signed patch"
            ),
            Error::Signature { key, why } => write!(
                f,
                "patch signature check failed with public key {key}: {why}; nothing was written"
            ),
            Error::UnknownEntries { count, paths } => {
                let more = count.saturating_sub(paths.len());
                write!(
                    f,
                    "OLD has {count} entr{} the patch does not know about ({}{}); refusing to \
                     drop {}: rerun with --unknown keep to carry {} over into the new version, \
                     or --unknown remove to delete {}",
                    if *count == 1 { "y" } else { "ies" },
                    paths.join(", "),
                    if more > 0 {
                        format!(" and {more} more")
                    } else {
                        String::new()
                    },
                    if *count == 1 { "it" } else { "them" },
                    if *count == 1 { "it" } else { "them" },
                    if *count == 1 { "it" } else { "them" },
                )
            }
            Error::Config { detail } => write!(f, "invalid option: {detail}"),
            Error::Repository { repo, detail } => write!(f, "update repository {repo}: {detail}"),
            Error::StaleIndex { repo, detail } => {
                write!(f, "update repository {repo}: refused its index: {detail}")
            }
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}
