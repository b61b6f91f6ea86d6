//! The update client: from an installed bundle to the newest release it may have, through
//! the cheapest route in bytes, with verified, resumable downloads and crash-safe apply.
//!
//! # What a run does
//!
//! 1. Identifies the installed version by its bundle digest (never by a version file).
//! 2. Fetches `index.json` and its signature, checks the signature with the client's public
//!    key, then its freshness against the highest index version this client accepted (a
//!    replay is refused) and its expiry (a frozen mirror is refused).
//! 3. Picks the target: the newest release that is not yanked, whose rollout admits this
//!    client (a random id kept next to the install, hashed with the release's digest into a
//!    bucket 0..100) and whose app-version bounds admit the caller's `app_version`.
//! 4. Plans the cheapest route (direct patch, chain, or full blob; [`super::plan`]), through
//!    every `requires` gate.
//! 5. Downloads each blob into its own state directory (`.NAME.bundelta-update/` beside the
//!    install), resuming a partial download (an HTTP Range request, or a local copy from its
//!    end), and checks size and blake3 against the signed index before use.
//! 6. Applies each step crash-safely: patches in place ([`crate::Patcher::apply_in_place`]);
//!    a full blob into a staging copy exchanged with the install in one rename. After a crash,
//!    the next run finishes the interrupted step first, then goes on.
//!
//! A run that fails leaves the install at a release it was at (the starting one, or one
//! reached on the way): never in between.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use super::index::{check_fresh, cmp_app_versions, parse_app_version, Blob, Index, Release};
use super::repo::{check_blob_file, Repo};
#[cfg(feature = "http")]
use super::repo::{BLOBS_DIR, INDEX_FILE, INDEX_SIG_FILE};
use super::route::{plan_within, Step};
use crate::error::{Error, Result};
use crate::sign::PublicKey;
use crate::Patcher;

/// Where releases come from: a repository directory (a mounted USB stick, a local mirror) or
/// an `http://`/`https://` URL (feature `http`).
#[derive(Debug)]
#[non_exhaustive]
pub enum Source {
    /// A repository read through its storage: a directory holding `index.json` (or, with
    /// feature `s3`, a bucket).
    Dir(Repo),
    /// The URL of a directory served over HTTP(S), without the trailing slash.
    #[cfg(feature = "http")]
    Http(String),
}

impl Source {
    /// A URL starting with `http://` or `https://` is fetched over HTTP; anything else is a
    /// directory.
    pub fn parse(s: &str) -> Source {
        #[cfg(feature = "http")]
        if s.starts_with("http://") || s.starts_with("https://") {
            return Source::Http(s.trim_end_matches('/').to_string());
        }
        Source::Dir(Repo::local(s))
    }

    /// [`Source::parse`], and `s3://BUCKET/PREFIX` read through the S3 API (feature `s3`,
    /// configured from the `AWS_*` environment as [`Repo::open`] says).
    pub fn open(s: &str) -> Result<Source> {
        if s.starts_with("s3://") {
            return Ok(Source::Dir(Repo::open(s)?));
        }
        Ok(Source::parse(s))
    }

    /// How errors name it.
    pub fn name(&self) -> String {
        match self {
            Source::Dir(r) => r.name(),
            #[cfg(feature = "http")]
            Source::Http(u) => u.clone(),
        }
    }

    fn err(&self, detail: impl Into<String>) -> Error {
        Error::Repository {
            repo: self.name(),
            detail: detail.into(),
        }
    }

    fn fetch_index(&self, opts: &UpdateOptions) -> Result<(Vec<u8>, Vec<u8>)> {
        #[cfg(not(feature = "http"))]
        let _ = opts;
        match self {
            Source::Dir(r) => r.read_signed(),
            #[cfg(feature = "http")]
            Source::Http(u) => {
                let get = |name: &str, cap: u64| -> Result<Vec<u8>> {
                    let url = format!("{u}/{name}");
                    let mut resp = http_agent(opts)
                        .get(&url)
                        .call()
                        .map_err(|e| self.err(format!("{name}: {e}")))?;
                    if resp.status() != 200 {
                        return Err(self.err(format!("{name}: HTTP {}", resp.status())));
                    }
                    let mut v = Vec::new();
                    resp.body_mut()
                        .with_config()
                        .limit(cap)
                        .reader()
                        .read_to_end(&mut v)
                        .map_err(|e| self.err(format!("{name}: {e}")))?;
                    Ok(v)
                };
                Ok((
                    get(INDEX_FILE, super::index::MAX_INDEX_BYTES)?,
                    get(INDEX_SIG_FILE, 512)?,
                ))
            }
        }
    }

    /// Bring `blob` into `part` (appending to what it holds), trying again from where it got
    /// after a dropped connection.
    fn fetch_blob(&self, blob: &Blob, part: &Path, opts: &UpdateOptions) -> Result<u32> {
        let mut failures = 0u32;
        loop {
            let have = fs::metadata(part).map_or(0, |m| m.len());
            if have > blob.bytes {
                fs::remove_file(part).map_err(|e| Error::io(part, "remove", e))?;
                continue;
            }
            if have == blob.bytes {
                return Ok(failures);
            }
            let r = match self {
                Source::Dir(r) => match r.local_dir() {
                    Some(_) => copy_from(&r.blob_path(&blob.blake3), part, have, blob.bytes),
                    // Object storage: fetched (and checked) whole into the work directory.
                    None => r
                        .blob_file(blob)
                        .map_err(Fetch::Fatal)
                        .and_then(|f| copy_from(&f, part, have, blob.bytes)),
                },
                #[cfg(feature = "http")]
                Source::Http(u) => http_range(
                    opts,
                    &format!("{u}/{BLOBS_DIR}/{}", blob.blake3),
                    part,
                    have,
                    blob.bytes,
                ),
            };
            match r {
                Ok(()) => {}
                Err(Fetch::Restart(why)) => {
                    let _ = fs::remove_file(part);
                    failures += 1;
                    if failures > opts.retries {
                        return Err(self.err(format!("blobs/{}: {why}", blob.blake3)));
                    }
                }
                Err(Fetch::Retry(why)) => {
                    failures += 1;
                    if failures > opts.retries {
                        return Err(self.err(format!(
                            "blobs/{}: {why} (gave up after {} tries; run again to resume)",
                            blob.blake3, failures
                        )));
                    }
                    std::thread::sleep(std::time::Duration::from_millis(50u64 << failures.min(6)));
                }
                Err(Fetch::Fatal(e)) => return Err(e),
            }
        }
    }
}

/// Why a fetch attempt stopped.
enum Fetch {
    /// Keep what arrived and ask for the rest (a dropped connection, a timeout).
    Retry(String),
    /// Throw away what arrived and start over (the server sent something else).
    Restart(String),
    /// Give up (a local error).
    Fatal(Error),
}

fn copy_from(src: &Path, part: &Path, have: u64, total: u64) -> std::result::Result<(), Fetch> {
    let mut f = fs::File::open(src).map_err(|e| Fetch::Fatal(Error::io(src, "open", e)))?;
    std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(have))
        .map_err(|e| Fetch::Fatal(Error::io(src, "seek", e)))?;
    let mut out = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(part)
        .map_err(|e| Fetch::Fatal(Error::io(part, "open", e)))?;
    let n = std::io::copy(&mut f.take(total - have), &mut out)
        .map_err(|e| Fetch::Retry(format!("reading {}: {e}", src.display())))?;
    out.sync_all()
        .map_err(|e| Fetch::Fatal(Error::io(part, "sync", e)))?;
    if n < total - have {
        return Err(Fetch::Restart(format!(
            "{} holds {} bytes, the index says {total}",
            src.display(),
            have + n
        )));
    }
    Ok(())
}

#[cfg(feature = "http")]
fn http_agent(opts: &UpdateOptions) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(opts.timeout))
        .timeout_per_read(Some(opts.timeout))
        .build()
        .new_agent()
}

/// One GET of `url` from byte `have` (a Range request when `have` > 0), appended to `part`.
#[cfg(feature = "http")]
fn http_range(
    opts: &UpdateOptions,
    url: &str,
    part: &Path,
    have: u64,
    total: u64,
) -> std::result::Result<(), Fetch> {
    let mut req = http_agent(opts).get(url);
    if have > 0 {
        req = req.header("Range", &format!("bytes={have}-"));
    }
    let mut resp = req.call().map_err(|e| Fetch::Retry(e.to_string()))?;
    let start = match resp.status().as_u16() {
        200 => 0,
        206 => {
            let want = format!("bytes {have}-{}/{total}", total - 1);
            let got = resp
                .headers()
                .get("content-range")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if got != want {
                return Err(Fetch::Restart(format!(
                    "the server answered range {got:?} for {want:?}"
                )));
            }
            have
        }
        416 => return Err(Fetch::Restart("the server refused the range (416)".into())),
        s if s >= 500 || s == 408 || s == 429 => return Err(Fetch::Retry(format!("HTTP {s}"))),
        s => {
            return Err(Fetch::Fatal(Error::Repository {
                repo: url.to_string(),
                detail: format!("HTTP {s}"),
            }))
        }
    };
    let mut out = fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(start == 0)
        .append(start > 0)
        .open(part)
        .map_err(|e| Fetch::Fatal(Error::io(part, "open", e)))?;
    let mut body = resp.body_mut().with_config().limit(total - start).reader();
    let mut buf = vec![0u8; 64 << 10];
    let mut got = 0u64;
    let result = loop {
        match body.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => {
                if let Err(e) = out.write_all(&buf[..n]) {
                    break Err(Fetch::Fatal(Error::io(part, "write", e)));
                }
                got += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                break Err(Fetch::Retry(format!(
                    "connection lost after {got} bytes: {e}"
                )))
            }
        }
    };
    out.sync_all()
        .map_err(|e| Fetch::Fatal(Error::io(part, "sync", e)))?;
    result?;
    if start + got < total {
        return Err(Fetch::Retry(format!(
            "the body ended after {} of {total} bytes",
            start + got
        )));
    }
    Ok(())
}

/// Settings of an update.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct UpdateOptions {
    /// The client application's version, checked against releases' `min_app`/`max_app`.
    /// Default: none (bounded releases are skipped).
    pub app_version: Option<String>,
    /// Plan only: fetch and check the index, pick the target and the route, download and
    /// change nothing. Default false.
    pub dry_run: bool,
    /// The client's clock (Unix seconds) for the expiry check. Default: the system clock.
    pub now: Option<u64>,
    /// Apply memory limit ([`crate::Patcher::memory_limit`]). Default: the applier's default.
    pub memory_limit: u64,
    /// Attempts after a failed download before giving up (the next run resumes). Default 5.
    pub retries: u32,
    /// Connect and per-read timeout of HTTP requests. Default 30 s.
    pub timeout: std::time::Duration,
}

impl Default for UpdateOptions {
    fn default() -> Self {
        UpdateOptions {
            app_version: None,
            dry_run: false,
            now: None,
            memory_limit: crate::DEFAULT_MEMORY_LIMIT,
            retries: 5,
            timeout: std::time::Duration::from_secs(30),
        }
    }
}

/// One step of an update as planned and done.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct StepReport {
    /// The release applied to (`None` for a full install).
    pub from: Option<String>,
    /// The release made.
    pub to: String,
    /// Bytes of the blob.
    pub bytes: u64,
    /// Bytes of it already on disk from an interrupted run.
    pub resumed: u64,
    /// Downloads of it that failed midway (a dropped connection, a wrong answer) and were
    /// resumed or restarted in this run.
    pub interrupted: u32,
}

/// What an update did (or, in a dry run, would do).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct UpdateReport {
    /// The installed release before (`None`: unknown to the index, or nothing installed).
    pub from: Option<String>,
    /// The target release (`None`: no release this client may install).
    pub target: Option<String>,
    /// The steps, in order (empty when already current).
    pub steps: Vec<StepReport>,
    /// Bytes of the route; what a full install would download instead.
    pub route_bytes: u64,
    /// Bytes of the target's full blob.
    pub full_bytes: u64,
    /// Whether a release between the installed one and the target is mandatory.
    pub mandatory: bool,
    /// Whether anything was changed.
    pub changed: bool,
    /// The index version accepted.
    pub index_version: u64,
}

/// The state directory of an install: `.NAME.bundelta-update` beside it.
pub fn state_dir(target: &Path) -> Result<PathBuf> {
    let name = target
        .file_name()
        .ok_or_else(|| Error::invalid_input(target, "has no file name"))?
        .to_string_lossy()
        .into_owned();
    Ok(crate::sys::parent_of(target).join(format!(".{name}.bundelta-update")))
}

fn read_small(p: &Path) -> Option<String> {
    let mut s = String::new();
    fs::File::open(p)
        .ok()?
        .take(256)
        .read_to_string(&mut s)
        .ok()?;
    Some(s.trim().to_string())
}

fn write_small(p: &Path, text: &str) -> Result<()> {
    crate::write_atomic(p, "state", 0o644, |f| {
        f.write_all(text.as_bytes())?;
        f.sync_all()
    })
}

/// This install's random client id (made on first use): its rollout bucket.
fn client_id(state: &Path) -> Result<String> {
    let p = state.join("client-id");
    if let Some(id) = read_small(&p).filter(|s| s.len() == 32) {
        return Ok(id);
    }
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(|e| Error::Config {
        detail: format!("no system randomness for the client id: {e}"),
    })?;
    let id = crate::tree::hex_bytes(&b);
    write_small(&p, &id)?;
    Ok(id)
}

/// Whether a client with `id` is in `release`'s rollout: blake3 of the id and the release's
/// digest, as a number, modulo 100, below the percentage.
pub fn in_rollout(id: &str, release: &Release) -> bool {
    let mut h = blake3::Hasher::new();
    h.update(b"bundelta rollout v1\0");
    h.update(id.as_bytes());
    h.update(release.digest.as_bytes());
    let x = u64::from_le_bytes(h.finalize().as_bytes()[..8].try_into().expect("8 bytes"));
    x % 100 < u64::from(release.rollout)
}

fn app_ok(app: Option<&[u32]>, r: &Release) -> bool {
    let bound = |b: &Option<String>| b.as_deref().and_then(parse_app_version);
    match (bound(&r.min_app), bound(&r.max_app), app) {
        (None, None, _) => true,
        (_, _, None) => false,
        (lo, hi, Some(v)) => {
            lo.is_none_or(|lo| cmp_app_versions(v, &lo).is_ge())
                && hi.is_none_or(|hi| cmp_app_versions(v, &hi).is_le())
        }
    }
}

/// Update the bundle at `target` (a directory or a file, as the repository's bundles are;
/// created when missing) to the newest release of `source` this client may install.
///
/// ```no_run
/// use bundelta::release::{update, Source, UpdateOptions};
/// let key = bundelta::PublicKey::from_text(&std::fs::read("release.key.pub").unwrap())?;
/// let r = update("/opt/app", &Source::parse("https://updates.example/app"), &key,
///                &UpdateOptions::default())?;
/// println!("{:?} -> {:?}: {} bytes", r.from, r.target, r.route_bytes);
/// # Ok::<(), bundelta::Error>(())
/// ```
pub fn update(
    target: impl AsRef<Path>,
    source: &Source,
    key: &PublicKey,
    opts: &UpdateOptions,
) -> Result<UpdateReport> {
    let target = target.as_ref();
    let state = state_dir(target)?;
    fs::create_dir_all(state.join("downloads"))
        .map_err(|e| Error::io(&state, "create directory", e))?;
    // An interrupted step first: the in-place journal finishes it with the same patch.
    let pending = state.join("pending-step");
    if let Some(blake3) = read_small(&pending) {
        let blob = state.join("downloads").join(&blake3);
        if blob.is_file() {
            let mut p = Patcher::new();
            p.memory_limit(opts.memory_limit);
            // Ok, or an error that says it was not pending: either way, go on from the digest.
            let _ = p.apply_in_place(target, &blob);
        }
        let _ = fs::remove_file(&pending);
    }

    let (bytes, sig) = source.fetch_index(opts)?;
    super::index::verify_index(&bytes, &sig, key)?;
    let ix = Index::parse(&bytes)?;
    let seen_path = state.join("index-version");
    let seen = read_small(&seen_path)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0u64);
    let now = opts.now.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    });
    check_fresh(ix.version, ix.expires, seen, now).map_err(|s| Error::StaleIndex {
        repo: source.name(),
        detail: s.to_string(),
    })?;
    if !opts.dry_run && ix.version > seen {
        write_small(&seen_path, &ix.version.to_string())?;
    }
    let directory = ix.bundle == "directory";

    let exists = fs::symlink_metadata(target).is_ok();
    let from = if exists {
        let d = crate::hex(&crate::bundle_digest(target)?);
        ix.releases.iter().position(|r| r.digest == d)
    } else {
        None
    };
    let app = match &opts.app_version {
        Some(v) => Some(parse_app_version(v).ok_or_else(|| Error::Config {
            detail: format!("app version {v:?} is not dotted numbers"),
        })?),
        None => None,
    };
    let id = client_id(&state)?;
    // Routes pass only through releases this client may install (its app bounds); the target
    // is the newest one also in its rollout that such a route reaches (or the installed
    // release itself, which needs no route), with the route found for it.
    let allowed = |i: usize| app_ok(app.as_deref(), &ix.releases[i]);
    let found = (0..ix.releases.len()).rev().find_map(|i| {
        let r = &ix.releases[i];
        if r.yanked || !in_rollout(&id, r) || !allowed(i) {
            return None;
        }
        if from.is_some_and(|f| f >= i) {
            return Some((i, None));
        }
        plan_within(&ix, from, i, &allowed).map(|route| (i, Some(route)))
    });
    let chosen = found.as_ref().map(|(i, _)| *i);
    let name = |i: Option<usize>| i.map(|i| ix.releases[i].version.clone());
    let mut report = UpdateReport {
        from: name(from),
        target: name(chosen),
        steps: Vec::new(),
        route_bytes: 0,
        full_bytes: chosen.map_or(0, |t| ix.releases[t].full.bytes),
        mandatory: false,
        changed: false,
        index_version: ix.version,
    };
    let Some((t, Some(route))) = found else {
        // Nothing offered, or current (or on a newer release this client is not, or no
        // longer, offered).
        if chosen.is_some() {
            report.target = name(from);
        }
        return Ok(report);
    };
    report.route_bytes = route.bytes;
    report.mandatory = ix.releases[from.map_or(0, |f| f + 1)..=t]
        .iter()
        .any(|r| r.mandatory && !r.yanked);
    let downloads = state.join("downloads");
    for s in &route.steps {
        let part = downloads.join(format!("{}.part", s.blob().blake3));
        report.steps.push(StepReport {
            from: match s {
                Step::Patch { from, .. } => name(Some(*from)),
                Step::Full { .. } => None,
            },
            to: ix.releases[s.to()].version.clone(),
            bytes: s.blob().bytes,
            resumed: fs::metadata(&part).map_or(0, |m| m.len().min(s.blob().bytes)),
            interrupted: 0,
        });
    }
    if opts.dry_run {
        return Ok(report);
    }

    for (n, s) in route.steps.iter().enumerate() {
        let blob = s.blob();
        let done = downloads.join(&blob.blake3);
        if check_blob_file(&done, blob).is_err() {
            let part = downloads.join(format!("{}.part", blob.blake3));
            report.steps[n].interrupted = source.fetch_blob(blob, &part, opts)?;
            if let Err(why) = check_blob_file(&part, blob) {
                let _ = fs::remove_file(&part);
                return Err(source.err(format!(
                    "blobs/{}: {why} (the partial download was discarded; run again)",
                    blob.blake3
                )));
            }
            fs::rename(&part, &done).map_err(|e| Error::io(&part, "rename", e))?;
        }
        crate::inplace::crash_point("update-downloaded");
        let want = super::index::parse_hash(&ix.releases[s.to()].digest)?;
        let mut p = Patcher::new();
        p.memory_limit(opts.memory_limit);
        let patch = p.open(&done)?;
        if patch.new_digest() != want {
            return Err(source.err(format!(
                "blobs/{} does not make release {}",
                blob.blake3,
                ix.releases[s.to()].version
            )));
        }
        drop(patch);
        match s {
            Step::Patch { .. } => {
                write_small(&pending, &blob.blake3)?;
                p.apply_in_place(target, &done)?;
                let _ = fs::remove_file(&pending);
            }
            Step::Full { .. } => install_full(&p, target, &done, directory, &state)?,
        }
        report.changed = true;
        let _ = fs::remove_file(&done);
    }
    Ok(report)
}

/// Install a full blob: applied to nothing into a staging copy beside `target`, then
/// exchanged with it in one rename (or renamed into place when there is none), then the old
/// copy removed.
fn install_full(
    p: &Patcher,
    target: &Path,
    blob: &Path,
    directory: bool,
    state: &Path,
) -> Result<()> {
    let empty = state.join("empty");
    crate::sys::remove_all(&empty);
    if directory {
        fs::create_dir(&empty)
    } else {
        fs::write(&empty, b"")
    }
    .map_err(|e| Error::io(&empty, "create", e))?;
    // In the state directory (beside the install: the same file system, so the exchange is
    // one rename), under a fixed name: a run after a crash removes what the last one left.
    let staging = state.join("full");
    crate::sys::remove_all(&staging);
    p.apply(&empty, blob, &staging)?;
    crate::sys::remove_all(&empty);
    crate::inplace::crash_point("full-built");
    if fs::symlink_metadata(target).is_err() {
        return crate::sys::rename_noreplace(&staging, target);
    }
    if !directory {
        return fs::rename(&staging, target).map_err(|e| Error::io(target, "rename", e));
    }
    match crate::sys::exchange(&staging, target) {
        Ok(()) => {
            crate::inplace::crash_point("full-exchanged");
            crate::sys::remove_all(&staging);
            Ok(())
        }
        Err(e) if crate::sys::exchange_unsupported(&e) => {
            let aside = state.join("aside");
            crate::sys::remove_all(&aside);
            fs::rename(target, &aside).map_err(|e| Error::io(target, "rename", e))?;
            fs::rename(&staging, target).map_err(|e| Error::io(target, "rename", e))?;
            crate::sys::remove_all(&aside);
            Ok(())
        }
        Err(e) => Err(Error::io(target, "exchange", e)),
    }
}
