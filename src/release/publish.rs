//! Publishing a release (features `release` and `diff`): the full blob, patches from the last
//! K releases computed in parallel, and the per-base decision.
//!
//! Bases are rebuilt from the repository itself (each base's full blob applied to nothing,
//! verified as any client would), so publishing needs only the repository and the new
//! bundle. Per base, the patch is dropped when it is larger than `max_ratio` of the full blob
//! (the client downloads the full blob instead), or when the cheapest route from that base
//! does not use it (a chain through an intermediate release downloads fewer bytes).
//! Re-publishing the same version and bundle computes only the patches missing (a larger K,
//! a run that died); the same repository, bundle and options give the same bytes.

use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::index::{Index, PatchRef, Release};
use super::repo::Repo;
use super::route::{self, Step};
use crate::error::{Error, Result};
use crate::sign::SecretKey;
use crate::{DiffOptions, Patcher};

/// What `publish` needs besides the repository, the version and the bundle.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct PublishOptions {
    /// Patches are computed from this many most recent releases (not yanked). Default 5;
    /// each costs one diff (run in parallel) and one rebuilt base on disk.
    pub bases: usize,
    /// A patch larger than this fraction of the full blob is not kept. Default 0.8.
    pub max_ratio: f64,
    /// The index expires this many seconds after `now`. Default 30 days.
    pub valid_for: u64,
    /// The publication time (Unix seconds). Default: `SOURCE_DATE_EPOCH` when set, else the
    /// clock; fix it for byte-identical repositories.
    pub now: Option<u64>,
    /// Diff settings of every patch and of the full blob.
    pub diff: DiffOptions,
    /// The release's policy fields (FORMAT.md section 9).
    pub mandatory: bool,
    /// Release notes.
    pub notes: String,
    /// A release every older client must reach first.
    pub requires: Option<String>,
    /// Lowest client app version.
    pub min_app: Option<String>,
    /// Highest client app version.
    pub max_app: Option<String>,
    /// Rollout percentage, 0 to 100. Default 100.
    pub rollout: u8,
}

impl Default for PublishOptions {
    fn default() -> Self {
        PublishOptions {
            bases: 5,
            max_ratio: 0.8,
            valid_for: 30 * 24 * 3600,
            now: None,
            diff: DiffOptions::new(),
            mandatory: false,
            notes: String::new(),
            requires: None,
            min_app: None,
            max_app: None,
            rollout: 100,
        }
    }
}

/// What happened for one base.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BaseOutcome {
    /// A direct patch of this many bytes is in the index (`new`: made by this run).
    Patch {
        /// Its size.
        bytes: u64,
        /// Made now, or already there.
        new: bool,
    },
    /// The patch was larger than `max_ratio` of the full blob: clients there download the
    /// full blob (or a cheaper chain).
    TooLarge {
        /// The patch's size.
        bytes: u64,
    },
    /// A route through other releases is cheaper: the direct patch is not kept.
    Chained {
        /// The patch's size.
        bytes: u64,
        /// What the route downloads.
        route_bytes: u64,
    },
}

/// What `publish` did.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct PublishReport {
    /// The release's bundle digest (hex).
    pub digest: String,
    /// Bytes of the full blob.
    pub full_bytes: u64,
    /// Per base (version name), in publication order.
    pub bases: Vec<(String, BaseOutcome)>,
    /// The index version written.
    pub index_version: u64,
}

/// The current time as publishing sees it: `SOURCE_DATE_EPOCH` when set (reproducible
/// builds), else the clock.
pub fn publish_time() -> u64 {
    std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        })
}

/// A scratch directory removed when dropped.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Add `version` (the bundle at `bundle`) to the repository, signed by `key`.
///
/// ```
/// # fn main() -> Result<(), bundelta::Error> {
/// use bundelta::release::{publish, PublishOptions, Repo};
/// let dir = tempfile::tempdir().unwrap();
/// let key = bundelta::SecretKey::from_bytes([7u8; 32]);
/// let repo = Repo::init(dir.path().join("repo"), "app", false, &key, 0)?;
/// let (v1, v2) = (dir.path().join("v1"), dir.path().join("v2"));
/// std::fs::write(&v1, "hello world, version one. ".repeat(200)).unwrap();
/// std::fs::write(&v2, "hello world, version two! ".repeat(200)).unwrap();
/// publish(&repo, "1.0", &v1, &PublishOptions::default(), &key)?;
/// let report = publish(&repo, "2.0", &v2, &PublishOptions::default(), &key)?;
/// assert_eq!(report.bases.len(), 1); // a patch from 1.0, or why not
/// assert_eq!(repo.load_index(&key.public_key())?.releases.len(), 2);
/// # Ok(()) }
/// ```
pub fn publish(
    repo: &Repo,
    version: &str,
    bundle: impl AsRef<Path>,
    opts: &PublishOptions,
    key: &SecretKey,
) -> Result<PublishReport> {
    let bundle = bundle.as_ref();
    let err = |d: String| Error::Repository {
        repo: repo.root().display().to_string(),
        detail: d,
    };
    if !(0.0..=1.0).contains(&opts.max_ratio) || opts.rollout > 100 {
        return Err(Error::Config {
            detail: "max_ratio must be within 0..=1 and rollout within 0..=100".into(),
        });
    }
    let mut ix = repo.load_index(&key.public_key())?;
    let directory = ix.bundle == "directory";
    let md = std::fs::metadata(bundle).map_err(|e| Error::io(bundle, "stat", e))?;
    if md.is_dir() != directory {
        return Err(err(format!(
            "{} is a {}, but this repository's bundles are {}s",
            bundle.display(),
            if md.is_dir() { "directory" } else { "file" },
            ix.bundle
        )));
    }
    let digest = crate::hex(&crate::bundle_digest(bundle)?);
    let scratch = Scratch(
        repo.root()
            .join(format!(".publish-{}", crate::sys::new_token())),
    );
    std::fs::create_dir_all(&scratch.0).map_err(|e| Error::io(&scratch.0, "create", e))?;
    let empty = scratch.0.join("empty");
    if directory {
        std::fs::create_dir(&empty)
    } else {
        std::fs::write(&empty, b"")
    }
    .map_err(|e| Error::io(&empty, "create", e))?;

    // The release entry: existing (re-publication) or new.
    let at = match ix.releases.iter().position(|r| r.version == version) {
        Some(i) if ix.releases[i].digest == digest => i,
        Some(_) => {
            return Err(err(format!(
                "release {version} exists with another bundle: publish under a new version"
            )))
        }
        None => {
            if let Some(r) = ix.releases.iter().find(|r| r.digest == digest) {
                return Err(err(format!(
                    "this bundle is already release {}: nothing to publish",
                    r.version
                )));
            }
            if let Some(req) = &opts.requires {
                if ix.release(req).is_none() {
                    return Err(err(format!("--requires {req}: no such release")));
                }
            }
            let full = opts.diff.diff_paths(&empty, bundle)?.0;
            let full = repo.put_blob(&full)?;
            ix.releases.push(Release {
                version: version.into(),
                digest: digest.clone(),
                bytes: crate::tree::bundle_bytes(bundle)?,
                full,
                patches: Vec::new(),
                mandatory: opts.mandatory,
                notes: opts.notes.clone(),
                requires: opts.requires.clone(),
                min_app: opts.min_app.clone(),
                max_app: opts.max_app.clone(),
                rollout: opts.rollout,
                yanked: false,
            });
            ix.releases.len() - 1
        }
    };

    // Bases: the last K releases published before it that are not yanked.
    let bases: Vec<usize> = (0..at)
        .rev()
        .filter(|&i| !ix.releases[i].yanked)
        .take(opts.bases)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    let have: Vec<String> = ix.releases[at]
        .patches
        .iter()
        .map(|p| p.from.clone())
        .collect();
    let todo: Vec<usize> = bases
        .iter()
        .copied()
        .filter(|&b| !have.contains(&ix.releases[b].digest))
        .collect();
    // Rebuild each base from its full blob and diff it into the new bundle, in parallel; the
    // results are collected in base order (deterministic whatever the thread count).
    let made: Vec<(usize, Vec<u8>)> = todo
        .par_iter()
        .map(|&b| -> Result<(usize, Vec<u8>)> {
            let base = &ix.releases[b];
            let dir = scratch.0.join(format!("base-{b}"));
            let full = repo.blob_file(&base.full)?;
            Patcher::new()
                .memory_limit(u64::MAX / 2)
                .apply(&empty, full, &dir)?;
            let patch = opts.diff.diff_paths(&dir, bundle)?.0;
            let _ = std::fs::remove_dir_all(&dir).or_else(|_| std::fs::remove_file(&dir));
            Ok((b, patch))
        })
        .collect::<Result<_>>()?;

    // Keep what pays: under the size ratio, then on the cheapest route from its base.
    let full_bytes = ix.releases[at].full.bytes;
    let mut outcome: Vec<(usize, BaseOutcome)> = Vec::new();
    let mut candidates: Vec<(usize, Vec<u8>)> = Vec::new();
    for (b, patch) in made {
        let bytes = patch.len() as u64;
        if bytes as f64 > opts.max_ratio * full_bytes as f64 {
            outcome.push((b, BaseOutcome::TooLarge { bytes }));
        } else {
            candidates.push((b, patch));
        }
    }
    let mut trial = ix.clone();
    for (b, patch) in &candidates {
        trial.releases[at].patches.push(PatchRef {
            from: ix.releases[*b].digest.clone(),
            blake3: crate::hex(blake3::hash(patch).as_bytes()),
            bytes: patch.len() as u64,
        });
    }
    for (b, patch) in candidates {
        let bytes = patch.len() as u64;
        let r = route::plan(&trial, Some(b), at);
        let direct = r.as_ref().is_some_and(|r| {
            matches!(r.steps.last(), Some(Step::Patch { from, .. }) if *from == b)
                && r.steps.len() == 1
        });
        if direct {
            let blob = repo.put_blob(&patch)?;
            let from = ix.releases[b].digest.clone();
            ix.releases[at].patches.push(PatchRef {
                from,
                blake3: blob.blake3,
                bytes: blob.bytes,
            });
            outcome.push((b, BaseOutcome::Patch { bytes, new: true }));
        } else {
            let route_bytes = r.map_or(full_bytes, |r| r.bytes);
            outcome.push((b, BaseOutcome::Chained { bytes, route_bytes }));
        }
    }
    for p in &ix.releases[at].patches {
        if let Some(b) = ix.releases.iter().position(|r| r.digest == p.from) {
            if !outcome.iter().any(|(x, _)| *x == b) {
                outcome.push((
                    b,
                    BaseOutcome::Patch {
                        bytes: p.bytes,
                        new: false,
                    },
                ));
            }
        }
    }
    // Patches in base order, so that the index does not depend on which diff finished first.
    let mut patches = std::mem::take(&mut ix.releases[at].patches);
    patches.sort_by_key(|p| ix.releases.iter().position(|r| r.digest == p.from));
    ix.releases[at].patches = patches;
    outcome.sort_by_key(|(b, _)| *b);

    let now = opts.now.unwrap_or_else(publish_time);
    ix.version += 1;
    ix.expires = now.saturating_add(opts.valid_for);
    repo.write_index(&ix, key)?;
    Ok(PublishReport {
        digest,
        full_bytes,
        bases: outcome
            .into_iter()
            .map(|(b, o)| (ix.releases[b].version.clone(), o))
            .collect(),
        index_version: ix.version,
    })
}

/// Mark `version` yanked (withdrawn: never a target, never a step) and re-sign the index.
pub fn yank(repo: &Repo, version: &str, key: &SecretKey, opts: &PublishOptions) -> Result<Index> {
    let mut ix = repo.load_index(&key.public_key())?;
    let r = ix
        .releases
        .iter_mut()
        .find(|r| r.version == version)
        .ok_or_else(|| Error::Repository {
            repo: repo.root().display().to_string(),
            detail: format!("no release {version}"),
        })?;
    r.yanked = true;
    resign_with(repo, ix, key, opts)
}

/// Re-sign the index with a new version and expiry (nothing else changes): what a publisher
/// runs before the expiry when there is nothing new to publish.
pub fn resign(repo: &Repo, key: &SecretKey, opts: &PublishOptions) -> Result<Index> {
    let ix = repo.load_index(&key.public_key())?;
    resign_with(repo, ix, key, opts)
}

fn resign_with(
    repo: &Repo,
    mut ix: Index,
    key: &SecretKey,
    opts: &PublishOptions,
) -> Result<Index> {
    let now = opts.now.unwrap_or_else(publish_time);
    ix.version += 1;
    ix.expires = now.saturating_add(opts.valid_for);
    repo.write_index(&ix, key)?;
    Ok(ix)
}
