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
//!
//! # Scale-out
//!
//! Publication is three steps that may run on different machines sharing the repository:
//! [`plan`] (the full blob and one job per base, `jobs/<digest>/plan.json`), [`run_job`]
//! (stateless: rebuild the base and the release from their full blobs, diff, store the patch
//! and `jobs/<digest>/job-N.json`; any order, any machine, rerunnable), and [`commit`]
//! (verify every result by applying it, decide, sign the index). [`publish`] runs the three
//! in one process.

use std::path::{Path, PathBuf};

use rayon::prelude::*;

use serde::{Deserialize, Serialize};

use super::index::{Blob, Index, PatchRef, Release};
use super::repo::Repo;
use super::route::{self, Step};
use crate::error::{Error, Result};
use crate::sign::{PublicKey, SecretKey};
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
    /// Compression effort of every patch and of the full blob (as `DiffOptions::level`).
    pub level: i32,
    /// Window of every patch (as `DiffOptions::window_log`).
    pub window_log: u8,
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
            level: crate::DEFAULT_LEVEL,
            window_log: crate::DEFAULT_WINDOW_LOG,
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

/// A scratch directory inside the repository, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(repo: &Repo) -> Result<Scratch> {
        let p = repo
            .work_dir()
            .join(format!(".publish-{}", crate::sys::new_token()));
        std::fs::create_dir_all(&p).map_err(|e| Error::io(&p, "create", e))?;
        Ok(Scratch(p))
    }

    /// An empty base (directory or file) in it.
    fn empty(&self, directory: bool) -> Result<PathBuf> {
        let p = self.0.join("empty");
        if !p.exists() {
            if directory {
                std::fs::create_dir(&p)
            } else {
                std::fs::write(&p, b"")
            }
            .map_err(|e| Error::io(&p, "create", e))?;
        }
        Ok(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A release staged for publication: what `run_job` and `commit` need, stored as
/// `jobs/<digest>/plan.json` in the repository (FORMAT.md section 9.1). Jobs and commit may run
/// on other machines: everything they read is named by digest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Plan {
    /// Always `"bundelta-plan"`.
    pub format: String,
    /// Always 1.
    pub format_version: u32,
    /// The release to add, with its full blob, its policy and the patches it already has.
    pub release: Release,
    /// Whether bundles are directories.
    pub directory: bool,
    /// Diff settings of every job.
    pub level: i32,
    /// Window of every job's patch.
    pub window_log: u8,
    /// One job per base still lacking a patch, in base order.
    pub jobs: Vec<Job>,
}

/// One diff to run: base `from` into the plan's release.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Job {
    /// The base's release name (for messages).
    pub from_version: String,
    /// The base's bundle digest.
    pub from: String,
    /// The base's full blob (rebuilt to get the base).
    pub from_full: Blob,
}

/// What a job made: `jobs/<digest>/job-<N>.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct JobResult {
    /// The base's bundle digest.
    pub from: String,
    /// The patch blob (already in `blobs/`).
    pub patch: Blob,
}

fn jobs_prefix(digest: &str) -> String {
    format!("jobs/{digest}/")
}

/// The key of the plan of the release with bundle `digest` (`jobs/<digest>/plan.json`).
pub fn plan_path(digest: &str) -> String {
    format!("{}plan.json", jobs_prefix(digest))
}

fn write_json<T: Serialize>(repo: &Repo, key: &str, v: &T) -> Result<()> {
    let mut bytes = serde_json::to_vec_pretty(v).expect("plain data serialises");
    bytes.push(b'\n');
    repo.put(key, &bytes)
}

fn read_json<T: serde::de::DeserializeOwned>(repo: &Repo, key: &str) -> Result<T> {
    let bytes = repo
        .get(key, 16 << 20)?
        .ok_or_else(|| repo.err(format!("has no {key}")))?;
    serde_json::from_slice(&bytes).map_err(|e| repo.err(format!("{key}: {e}")))
}

/// The plan of `version` staged in the repository.
pub fn find_plan(repo: &Repo, version: &str) -> Result<Plan> {
    let mut found = None;
    for key in repo.list("jobs/")? {
        if key.ends_with("/plan.json") {
            let plan: Plan = read_json(repo, &key)?;
            if plan.release.version == version {
                found = Some(plan);
            }
        }
    }
    found.ok_or_else(|| {
        repo.err(format!(
            "no staged plan for release {version} (run `release plan` first)"
        ))
    })
}

/// Stage `version` (the bundle at `bundle`): check it against the index, store its full blob,
/// and write the plan, one job per base (the last `opts.bases` releases, not yanked, that do
/// not have a patch into it yet). Nothing visible to clients changes.
pub fn plan(
    repo: &Repo,
    version: &str,
    bundle: impl AsRef<Path>,
    opts: &PublishOptions,
    key: &PublicKey,
) -> Result<Plan> {
    let bundle = bundle.as_ref();
    let err = |d: String| Error::Repository {
        repo: repo.name(),
        detail: d,
    };
    if !(0.0..=1.0).contains(&opts.max_ratio) || opts.rollout > 100 {
        return Err(Error::Config {
            detail: "max_ratio must be within 0..=1 and rollout within 0..=100".into(),
        });
    }
    let ix = repo.load_index(key)?;
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
    let (release, at) = match ix.releases.iter().position(|r| r.version == version) {
        Some(i) if ix.releases[i].digest == digest => (ix.releases[i].clone(), i),
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
            let scratch = Scratch::new(repo)?;
            let empty = scratch.empty(directory)?;
            let full = diff_options(opts.level, opts.window_log)
                .diff_paths(&empty, bundle)?
                .0;
            let full = repo.put_blob(&full)?;
            let mut release = Release::new(
                version,
                digest.clone(),
                crate::tree::bundle_bytes(bundle)?,
                full,
            );
            release.mandatory = opts.mandatory;
            release.notes = opts.notes.clone();
            release.requires = opts.requires.clone();
            release.min_app = opts.min_app.clone();
            release.max_app = opts.max_app.clone();
            release.rollout = opts.rollout;
            (release, ix.releases.len())
        }
    };
    let jobs: Vec<Job> = (0..at)
        .rev()
        .filter(|&i| !ix.releases[i].yanked)
        .take(opts.bases)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .map(|b| &ix.releases[b])
        .filter(|b| !release.patches.iter().any(|p| p.from == b.digest))
        .map(|b| Job {
            from_version: b.version.clone(),
            from: b.digest.clone(),
            from_full: b.full.clone(),
        })
        .collect();
    let plan = Plan {
        format: "bundelta-plan".into(),
        format_version: 1,
        release,
        directory,
        level: opts.level,
        window_log: opts.window_log,
        jobs,
    };
    write_json(repo, &plan_path(&digest), &plan)?;
    Ok(plan)
}

fn diff_options(level: i32, window_log: u8) -> DiffOptions {
    let mut d = DiffOptions::new();
    d.level(level).window_log(window_log);
    d
}

/// Rebuild a bundle from a full blob of the repository into `out` (checked: blob hash, patch
/// trailer, every file's hash and the bundle digest the patch names).
fn rebuild(repo: &Repo, scratch: &Scratch, full: &Blob, out: &Path, directory: bool) -> Result<()> {
    let empty = scratch.empty(directory)?;
    let blob = repo.blob_file(full)?;
    Patcher::new()
        .memory_limit(u64::MAX / 2)
        .apply(&empty, blob, out)?;
    Ok(())
}

/// Run job `n` of the plan of release `version`: rebuild the base and the release from their
/// full blobs, diff, store the patch blob and the job's result. Stateless: any machine with
/// the repository can run any job, in any order, any number of times (a job whose result is
/// there already returns it).
pub fn run_job(repo: &Repo, version: &str, n: usize) -> Result<JobResult> {
    let plan = find_plan(repo, version)?;
    let job = plan.jobs.get(n).ok_or_else(|| Error::Repository {
        repo: repo.name(),
        detail: format!(
            "release {version} has {} job(s): no job {n}",
            plan.jobs.len()
        ),
    })?;
    let out = format!("{}job-{n}.json", jobs_prefix(&plan.release.digest));
    if let Ok(done) = read_json::<JobResult>(repo, &out) {
        if repo.blob_file(&done.patch).is_ok() && done.from == job.from {
            return Ok(done);
        }
    }
    let scratch = Scratch::new(repo)?;
    let base = scratch.0.join("base");
    let new = scratch.0.join("new");
    rebuild(repo, &scratch, &job.from_full, &base, plan.directory)?;
    rebuild(repo, &scratch, &plan.release.full, &new, plan.directory)?;
    let patch = diff_options(plan.level, plan.window_log)
        .diff_paths(&base, &new)?
        .0;
    let result = JobResult {
        from: job.from.clone(),
        patch: repo.put_blob(&patch)?,
    };
    write_json(repo, &out, &result)?;
    Ok(result)
}

/// Commit release `version`: check every job's result (the patch blob's hash, and the patch
/// applied to the rebuilt base gives exactly the release), decide per base, add the release
/// to the index and sign it. Fails, changing nothing visible, when a job has no result yet.
pub fn commit(
    repo: &Repo,
    version: &str,
    opts: &PublishOptions,
    key: &SecretKey,
) -> Result<PublishReport> {
    let plan = find_plan(repo, version)?;
    let err = |d: String| Error::Repository {
        repo: repo.name(),
        detail: d,
    };
    let mut ix = repo.load_index(&key.public_key())?;
    let at = match ix.releases.iter().position(|r| r.version == version) {
        Some(i) if ix.releases[i].digest == plan.release.digest => i,
        Some(_) => return Err(err(format!("release {version} exists with another bundle"))),
        None => {
            ix.releases.push(plan.release.clone());
            ix.releases.len() - 1
        }
    };
    let dir = jobs_prefix(&plan.release.digest);
    let results: Vec<JobResult> = (0..plan.jobs.len())
        .map(|n| {
            read_json::<JobResult>(repo, &format!("{dir}job-{n}.json")).map_err(|_| {
                err(format!(
                    "job {n} of release {version} (from {}) has no result: run it first",
                    plan.jobs[n].from_version
                ))
            })
        })
        .collect::<Result<_>>()?;
    // Verify every result where it will be used: the patch applied to its base rebuilds the
    // release exactly (the applier checks every file and the bundle digest).
    let want = super::index::parse_hash(&plan.release.digest)?;
    results
        .par_iter()
        .zip(&plan.jobs)
        .map(|(r, job)| -> Result<()> {
            if r.from != job.from {
                return Err(err(format!(
                    "job result for {} names another base",
                    job.from_version
                )));
            }
            let scratch = Scratch::new(repo)?;
            let base = scratch.0.join("base");
            rebuild(repo, &scratch, &job.from_full, &base, plan.directory)?;
            let patch = repo.blob_file(&r.patch)?;
            let out = scratch.0.join("out");
            Patcher::new()
                .memory_limit(u64::MAX / 2)
                .apply(&base, patch, &out)?;
            if crate::bundle_digest(&out)? != want {
                return Err(err(format!(
                    "the patch from {} does not make release {version}",
                    job.from_version
                )));
            }
            Ok(())
        })
        .collect::<Result<Vec<()>>>()?;

    // Keep what pays: under the size ratio, then on the cheapest route from its base.
    let full_bytes = ix.releases[at].full.bytes;
    let index_of = |ix: &Index, d: &str| ix.releases.iter().position(|r| r.digest == d);
    let mut outcome: Vec<(usize, BaseOutcome)> = Vec::new();
    let mut candidates: Vec<(usize, Blob)> = Vec::new();
    for r in results {
        let b =
            index_of(&ix, &r.from).ok_or_else(|| err(format!("base {} left the index", r.from)))?;
        let bytes = r.patch.bytes;
        if bytes as f64 > opts.max_ratio * full_bytes as f64 {
            outcome.push((b, BaseOutcome::TooLarge { bytes }));
        } else {
            candidates.push((b, r.patch));
        }
    }
    let mut trial = ix.clone();
    for (b, blob) in &candidates {
        trial.releases[at].patches.push(PatchRef {
            from: ix.releases[*b].digest.clone(),
            blake3: blob.blake3.clone(),
            bytes: blob.bytes,
        });
    }
    for (b, blob) in candidates {
        let bytes = blob.bytes;
        let r = route::plan(&trial, Some(b), at);
        let direct = r.as_ref().is_some_and(|r| {
            r.steps.len() == 1 && matches!(r.steps[0], Step::Patch { from, .. } if from == b)
        });
        if direct {
            let from = ix.releases[b].digest.clone();
            ix.releases[at].patches.push(PatchRef {
                from,
                blake3: blob.blake3,
                bytes,
            });
            outcome.push((b, BaseOutcome::Patch { bytes, new: true }));
        } else {
            let route_bytes = r.map_or(full_bytes, |r| r.bytes);
            outcome.push((b, BaseOutcome::Chained { bytes, route_bytes }));
        }
    }
    for p in &ix.releases[at].patches {
        if let Some(b) = index_of(&ix, &p.from) {
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
    // Patches in base order, so that the index does not depend on which job finished first.
    let mut patches = std::mem::take(&mut ix.releases[at].patches);
    patches.sort_by_key(|p| ix.releases.iter().position(|r| r.digest == p.from));
    ix.releases[at].patches = patches;
    outcome.sort_by_key(|(b, _)| *b);

    let now = opts.now.unwrap_or_else(publish_time);
    ix.version += 1;
    ix.expires = now.saturating_add(opts.valid_for);
    repo.write_index(&ix, key)?;
    // The jobs are done with: the patches they made are in the index (or not needed).
    repo.delete_prefix(&dir)?;
    Ok(PublishReport {
        digest: plan.release.digest.clone(),
        full_bytes,
        bases: outcome
            .into_iter()
            .map(|(b, o)| (ix.releases[b].version.clone(), o))
            .collect(),
        index_version: ix.version,
    })
}

/// Add `version` (the bundle at `bundle`) to the repository, signed by `key`: [`plan`], every
/// job ([`run_job`], in parallel), then [`commit`], in this process.
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
    let p = plan(repo, version, bundle, opts, &key.public_key())?;
    (0..p.jobs.len())
        .into_par_iter()
        .map(|n| run_job(repo, version, n).map(|_| ()))
        .collect::<Result<Vec<()>>>()?;
    commit(repo, version, opts, key)
}

/// Mark `version` yanked (withdrawn: never a target, never a step) and re-sign the index.
pub fn yank(repo: &Repo, version: &str, key: &SecretKey, opts: &PublishOptions) -> Result<Index> {
    let mut ix = repo.load_index(&key.public_key())?;
    let r = ix
        .releases
        .iter_mut()
        .find(|r| r.version == version)
        .ok_or_else(|| Error::Repository {
            repo: repo.name(),
            detail: format!("no release {version}"),
        })?;
    r.yanked = true;
    resign_with(repo, ix, key, opts)
}

/// What [`prune`] removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PruneReport {
    /// Patches dropped from the index.
    pub patches: usize,
    /// Blobs deleted (no longer named by the index).
    pub blobs: usize,
    /// Their bytes.
    pub bytes: u64,
}

/// Drop the patches into every release but the newest `keep` (not counting yanked ones),
/// re-sign the index, then delete every blob the index no longer names. Full blobs stay:
/// they are how far-behind clients install and how publishing rebuilds bases. Clients at an
/// old version then reach old releases by their full blob, and chains through them are gone
/// (a client that fetched the previous index moments before may find a pruned patch missing
/// and succeed on its next run). Refused while a publication is staged (`jobs/`).
pub fn prune(
    repo: &Repo,
    keep: usize,
    key: &SecretKey,
    opts: &PublishOptions,
) -> Result<PruneReport> {
    if !repo.list("jobs/")?.is_empty() {
        return Err(repo.err("a publication is staged (jobs/): commit it first"));
    }
    let mut ix = repo.load_index(&key.public_key())?;
    let live: Vec<usize> = (0..ix.releases.len())
        .filter(|&i| !ix.releases[i].yanked)
        .collect();
    let cut = live.len().saturating_sub(keep);
    let mut report = PruneReport::default();
    for &i in &live[..cut] {
        report.patches += ix.releases[i].patches.len();
        ix.releases[i].patches.clear();
    }
    for r in ix.releases.iter_mut().filter(|r| r.yanked) {
        report.patches += r.patches.len();
        r.patches.clear();
    }
    let ix = resign_with(repo, ix, key, opts)?;
    let named: std::collections::HashSet<&str> = ix
        .releases
        .iter()
        .flat_map(|r| {
            std::iter::once(r.full.blake3.as_str())
                .chain(r.patches.iter().map(|p| p.blake3.as_str()))
        })
        .collect();
    for k in repo.list(&format!("{}/", super::repo::BLOBS_DIR))? {
        let name = k.rsplit('/').next().unwrap_or("");
        if !named.contains(name) {
            report.bytes += repo.len(&k)?.unwrap_or(0);
            report.blobs += 1;
            repo.delete(&k)?;
        }
    }
    Ok(report)
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
