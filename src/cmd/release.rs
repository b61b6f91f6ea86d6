//! `bundelta release ...` (publishing into an update repository) and `bundelta update` (the
//! client), on the library's release layer (`bundelta::release`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use bundelta::release::{self, BaseOutcome, PublishOptions, Repo, Source, UpdateOptions};
use clap::{Args, Subcommand};
use serde_json::json;

use super::{read_public_key, read_secret_key, Common};

#[derive(Subcommand)]
pub(crate) enum ReleaseCmd {
    /// Create an empty repository: REPO/index.json (signed), REPO/index.json.sig, REPO/blobs/.
    Init(InitArgs),
    /// Publish VERSION (the bundle at BUNDLE): its full blob, patches from the last --bases
    /// releases (computed in parallel, each kept only when it pays), a new signed index.
    ///
    /// Rerunning the same VERSION with the same BUNDLE computes only what is missing (after
    /// a crash, or with a larger --bases). Set SOURCE_DATE_EPOCH for byte-identical output.
    Add(AddArgs),
    /// Scale-out, step 1 of 3: stage VERSION (its full blob) and write one job per base into
    /// REPO/jobs/; prints the number of jobs.
    Plan(PlanArgs),
    /// Scale-out, step 2 of 3: run one job (stateless: any machine sharing REPO, any order,
    /// rerunnable).
    RunJob(RunJobArgs),
    /// Scale-out, step 3 of 3: check every job's patch by applying it, decide per base, sign
    /// the index.
    Commit(CommitArgs),
    /// Withdraw VERSION: clients never install it nor pass through it (re-signs the index).
    Yank(YankArgs),
    /// Drop the patches into all but the newest --keep releases and delete the blobs the
    /// index no longer names (full blobs stay); re-signs the index.
    Prune(PruneArgs),
    /// Re-sign the index with a new version and expiry (run before it expires when there is
    /// nothing new to publish).
    Resign(ResignArgs),
    /// List the releases of a repository (after checking its signature).
    List(ListArgs),
}

#[derive(Args)]
pub(crate) struct ReleaseArgs {
    #[command(subcommand)]
    pub(crate) cmd: ReleaseCmd,
}

#[derive(Args)]
pub(crate) struct Validity {
    /// The index expires this many days after publication; clients refuse an expired index
    /// (a frozen mirror), so re-publish or `resign` before then.
    #[arg(long, default_value_t = 30, value_name = "DAYS")]
    valid_days: u64,
}

#[derive(Args)]
pub(crate) struct InitArgs {
    /// The repository to create: a directory, or s3://BUCKET/PREFIX.
    repo: PathBuf,
    /// The product's name.
    #[arg(long)]
    name: String,
    /// Bundles are single files (default: directories).
    #[arg(long)]
    file: bool,
    /// The secret key that signs the index (from `bundelta keygen`).
    #[arg(short, long, value_name = "KEY")]
    key: PathBuf,
    #[command(flatten)]
    validity: Validity,
    #[command(flatten)]
    pub(crate) common: Common,
}

/// What a release is and how its patches are made (add, plan).
#[derive(Args)]
pub(crate) struct PolicyArgs {
    /// Compute patches from this many most recent releases (each costs one diff, run in
    /// parallel, and one rebuilt base on disk).
    #[arg(long, default_value_t = 5, value_name = "K")]
    bases: usize,
    /// Clients must install it.
    #[arg(long)]
    mandatory: bool,
    /// Release notes.
    #[arg(long, default_value = "")]
    notes: String,
    /// A client on a release published before this one must reach it first.
    #[arg(long, value_name = "VERSION")]
    requires: Option<String>,
    /// Lowest client app version allowed to install it (dotted numbers).
    #[arg(long, value_name = "V")]
    min_app: Option<String>,
    /// Highest client app version allowed to install it.
    #[arg(long, value_name = "V")]
    max_app: Option<String>,
    /// Offer it to this percentage of clients (0..=100), chosen by a hash of their id.
    #[arg(long, default_value_t = 100, value_name = "PCT",
          value_parser = clap::value_parser!(u8).range(0..=100))]
    rollout: u8,
    /// Compression effort of the patches, 1..=22 (as `diff --level`).
    #[arg(long, default_value_t = bundelta::DEFAULT_LEVEL, value_name = "N")]
    level: i32,
    /// Largest window of the patches as a power of two (as `diff --window-log`).
    #[arg(long, default_value_t = bundelta::DEFAULT_WINDOW_LOG, value_name = "N")]
    window_log: u8,
}

/// How the index is committed (add, commit).
#[derive(Args)]
pub(crate) struct CommitPolicy {
    /// Keep a patch only when it is at most this fraction of the full blob; clients farther
    /// behind download the full blob.
    #[arg(long, default_value_t = 0.8, value_name = "FRACTION")]
    max_ratio: f64,
    #[command(flatten)]
    validity: Validity,
}

#[derive(Args)]
pub(crate) struct AddArgs {
    /// The repository: a directory, or s3://BUCKET/PREFIX.
    repo: PathBuf,
    /// The release's name ("1.4.2").
    version: String,
    /// The release's bundle (a directory or a file, as the repository's bundles are).
    bundle: PathBuf,
    /// The secret key that signs the index.
    #[arg(short, long, value_name = "KEY")]
    key: PathBuf,
    #[command(flatten)]
    policy: PolicyArgs,
    #[command(flatten)]
    commit: CommitPolicy,
    #[command(flatten)]
    pub(crate) common: Common,
}

#[derive(Args)]
pub(crate) struct PlanArgs {
    /// The repository (a directory or s3://BUCKET/PREFIX every machine that runs a job
    /// reaches).
    repo: PathBuf,
    /// The release's name.
    version: String,
    /// The release's bundle.
    bundle: PathBuf,
    /// The public key the index is signed with (planning needs no secret).
    #[arg(long, value_name = "KEY.pub")]
    pubkey: PathBuf,
    #[command(flatten)]
    policy: PolicyArgs,
    #[command(flatten)]
    pub(crate) common: Common,
}

#[derive(Args)]
pub(crate) struct RunJobArgs {
    /// The repository: a directory, or s3://BUCKET/PREFIX.
    repo: PathBuf,
    /// The release being published.
    version: String,
    /// The job to run, 0..N (`plan` says N). Default: $JOB_COMPLETION_INDEX, as a Kubernetes
    /// Indexed Job sets it.
    #[arg(long, value_name = "N")]
    job: Option<usize>,
    #[command(flatten)]
    pub(crate) common: Common,
}

#[derive(Args)]
pub(crate) struct CommitArgs {
    /// The repository: a directory, or s3://BUCKET/PREFIX.
    repo: PathBuf,
    /// The release being published.
    version: String,
    /// The secret key that signs the index.
    #[arg(short, long, value_name = "KEY")]
    key: PathBuf,
    #[command(flatten)]
    commit: CommitPolicy,
    #[command(flatten)]
    pub(crate) common: Common,
}

#[derive(Args)]
pub(crate) struct YankArgs {
    /// The repository: a directory, or s3://BUCKET/PREFIX.
    repo: PathBuf,
    /// The release to withdraw.
    version: String,
    /// The secret key that signs the index.
    #[arg(short, long, value_name = "KEY")]
    key: PathBuf,
    #[command(flatten)]
    validity: Validity,
    #[command(flatten)]
    pub(crate) common: Common,
}

#[derive(Args)]
pub(crate) struct PruneArgs {
    /// The repository: a directory, or s3://BUCKET/PREFIX.
    repo: PathBuf,
    /// Keep the patches into this many newest releases.
    #[arg(long, value_name = "N")]
    keep: usize,
    /// The secret key that signs the index.
    #[arg(short, long, value_name = "KEY")]
    key: PathBuf,
    #[command(flatten)]
    validity: Validity,
    #[command(flatten)]
    pub(crate) common: Common,
}

#[derive(Args)]
pub(crate) struct ResignArgs {
    /// The repository: a directory, or s3://BUCKET/PREFIX.
    repo: PathBuf,
    /// The secret key that signs the index.
    #[arg(short, long, value_name = "KEY")]
    key: PathBuf,
    #[command(flatten)]
    validity: Validity,
    #[command(flatten)]
    pub(crate) common: Common,
}

#[derive(Args)]
pub(crate) struct ListArgs {
    /// The repository: a directory, or s3://BUCKET/PREFIX.
    repo: PathBuf,
    /// The public key the index must be signed with.
    #[arg(long, value_name = "KEY.pub")]
    pubkey: PathBuf,
    #[command(flatten)]
    pub(crate) common: Common,
}

#[derive(Args)]
pub(crate) struct UpdateArgs {
    /// The installed bundle (a directory or a file; created when missing). Its version is
    /// recognised by its content digest, not by any version file.
    target: PathBuf,
    /// The repository: a directory (a mounted USB stick, a mirror), an http(s):// URL, or
    /// s3://BUCKET/PREFIX (credentials from the AWS_* environment).
    #[arg(long, value_name = "DIR_OR_URL")]
    repo: String,
    /// The public key the repository's index must be signed with.
    #[arg(long, value_name = "KEY.pub")]
    pubkey: PathBuf,
    /// This application's version, checked against releases' min/max app versions.
    #[arg(long, value_name = "V")]
    app_version: Option<String>,
    /// Show the plan (target, route, bytes) and change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Apply memory limit (e.g. 12M, 64M).
    #[arg(long, default_value = "12M", value_parser = super::parse_size, value_name = "SIZE")]
    memory_limit: u64,
    /// Download attempts after a failure before giving up (a later run resumes).
    #[arg(long, default_value_t = 5, value_name = "N")]
    retries: u32,
    #[command(flatten)]
    pub(crate) common: Common,
}

fn publish_opts(days: u64) -> PublishOptions {
    let mut o = PublishOptions::default();
    o.valid_for = days.saturating_mul(24 * 3600);
    o
}

fn policy_opts(o: &mut PublishOptions, p: &PolicyArgs) {
    o.bases = p.bases;
    o.mandatory = p.mandatory;
    o.notes = p.notes.clone();
    o.requires = p.requires.clone();
    o.min_app = p.min_app.clone();
    o.max_app = p.max_app.clone();
    o.rollout = p.rollout;
    o.level = p.level;
    o.window_log = p.window_log;
}

fn commit_opts(c: &CommitPolicy) -> PublishOptions {
    let mut o = publish_opts(c.validity.valid_days);
    o.max_ratio = c.max_ratio;
    o
}

fn print_report(version: &str, r: &release::PublishReport, secs: f64, max_ratio: f64, c: &Common) {
    let bases: Vec<_> = r
        .bases
        .iter()
        .map(|(v, o)| match o {
            BaseOutcome::Patch { bytes, new } => {
                json!({"from": v, "decision": "patch", "bytes": bytes, "new": new})
            }
            BaseOutcome::TooLarge { bytes } => {
                json!({"from": v, "decision": "full", "bytes": bytes})
            }
            BaseOutcome::Chained { bytes, route_bytes } => json!({
                "from": v, "decision": "chain", "bytes": bytes, "route_bytes": route_bytes
            }),
            _ => json!({"from": v}),
        })
        .collect();
    if c.json {
        println!(
            "{}",
            json!({"version": version, "digest": r.digest, "full_bytes": r.full_bytes,
                   "bases": bases, "index_version": r.index_version, "seconds": secs})
        );
    } else if !c.quiet {
        eprintln!(
            "published {version} (full blob {} bytes) in {secs:.2}s; index version {}",
            r.full_bytes, r.index_version
        );
        for (v, o) in &r.bases {
            let line = match o {
                BaseOutcome::Patch { bytes, new } => format!(
                    "patch, {bytes} bytes{}",
                    if *new { "" } else { " (already there)" }
                ),
                BaseOutcome::TooLarge { bytes } => format!(
                    "no patch: {bytes} bytes is over {max_ratio} of the full blob; full blob"
                ),
                BaseOutcome::Chained { bytes, route_bytes } => format!(
                    "no patch ({bytes} bytes): a chain through other releases downloads {route_bytes}"
                ),
                _ => String::new(),
            };
            eprintln!("  from {v:<12} {line}");
        }
    }
}

pub(crate) fn release(a: ReleaseArgs) -> Result<ExitCode> {
    match a.cmd {
        ReleaseCmd::Init(a) => {
            let key = read_secret_key(&a.key)?;
            let expires = release::publish_time().saturating_add(a.validity.valid_days * 86400);
            Repo::init(&a.repo, &a.name, !a.file, &key, expires)?;
            if a.common.json {
                println!("{}", json!({"repo": a.repo, "name": a.name}));
            } else if !a.common.quiet {
                eprintln!(
                    "created repository {} for {} ({} bundles); publish with `bundelta release add`",
                    a.repo.display(),
                    a.name,
                    if a.file { "file" } else { "directory" }
                );
            }
        }
        ReleaseCmd::Add(a) => {
            let key = read_secret_key(&a.key)?;
            let repo = Repo::open(&a.repo)?;
            let mut o = commit_opts(&a.commit);
            policy_opts(&mut o, &a.policy);
            let t = std::time::Instant::now();
            let r = release::publish(&repo, &a.version, &a.bundle, &o, &key)
                .with_context(|| format!("publishing {}", a.version))?;
            print_report(
                &a.version,
                &r,
                t.elapsed().as_secs_f64(),
                o.max_ratio,
                &a.common,
            );
        }
        ReleaseCmd::Plan(a) => {
            let key = read_public_key(&a.pubkey)?;
            let mut o = PublishOptions::default();
            policy_opts(&mut o, &a.policy);
            let p = release::plan_release(&Repo::open(&a.repo)?, &a.version, &a.bundle, &o, &key)
                .with_context(|| format!("planning {}", a.version))?;
            if a.common.json {
                println!(
                    "{}",
                    json!({"version": a.version, "digest": p.release.digest, "jobs": p.jobs.len(),
                           "plan": release::plan_path(&p.release.digest)})
                );
            } else if !a.common.quiet {
                eprintln!(
                    "planned {}: {} job(s) (run `release run-job {} {} --job N` for N in 0..{}, \
                     then `release commit`)",
                    a.version,
                    p.jobs.len(),
                    a.repo.display(),
                    a.version,
                    p.jobs.len()
                );
            }
        }
        ReleaseCmd::RunJob(a) => {
            let n = match a.job {
                Some(n) => n,
                None => std::env::var("JOB_COMPLETION_INDEX")
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .context("give --job N (or set JOB_COMPLETION_INDEX)")?,
            };
            let t = std::time::Instant::now();
            let r = release::run_job(&Repo::open(&a.repo)?, &a.version, n)
                .with_context(|| format!("job {n} of {}", a.version))?;
            if a.common.json {
                println!(
                    "{}",
                    json!({"job": n, "from": r.from, "patch_bytes": r.patch.bytes,
                           "seconds": t.elapsed().as_secs_f64()})
                );
            } else if !a.common.quiet {
                eprintln!(
                    "job {n} of {}: patch of {} bytes in {:.2}s",
                    a.version,
                    r.patch.bytes,
                    t.elapsed().as_secs_f64()
                );
            }
        }
        ReleaseCmd::Commit(a) => {
            let key = read_secret_key(&a.key)?;
            let o = commit_opts(&a.commit);
            let t = std::time::Instant::now();
            let r = release::commit(&Repo::open(&a.repo)?, &a.version, &o, &key)
                .with_context(|| format!("committing {}", a.version))?;
            print_report(
                &a.version,
                &r,
                t.elapsed().as_secs_f64(),
                o.max_ratio,
                &a.common,
            );
        }
        ReleaseCmd::Yank(a) => {
            let key = read_secret_key(&a.key)?;
            let ix = release::yank(
                &Repo::open(&a.repo)?,
                &a.version,
                &key,
                &publish_opts(a.validity.valid_days),
            )?;
            if a.common.json {
                println!(
                    "{}",
                    json!({"yanked": a.version, "index_version": ix.version})
                );
            } else if !a.common.quiet {
                eprintln!("yanked {}; index version {}", a.version, ix.version);
            }
        }
        ReleaseCmd::Prune(a) => {
            let key = read_secret_key(&a.key)?;
            let r = release::prune(
                &Repo::open(&a.repo)?,
                a.keep,
                &key,
                &publish_opts(a.validity.valid_days),
            )?;
            if a.common.json {
                println!(
                    "{}",
                    json!({"patches": r.patches, "blobs": r.blobs, "bytes": r.bytes})
                );
            } else if !a.common.quiet {
                eprintln!(
                    "dropped {} patch(es); deleted {} blob(s), {} bytes",
                    r.patches, r.blobs, r.bytes
                );
            }
        }
        ReleaseCmd::Resign(a) => {
            let key = read_secret_key(&a.key)?;
            let ix = release::resign(
                &Repo::open(&a.repo)?,
                &key,
                &publish_opts(a.validity.valid_days),
            )?;
            if a.common.json {
                println!(
                    "{}",
                    json!({"index_version": ix.version, "expires": ix.expires})
                );
            } else if !a.common.quiet {
                eprintln!(
                    "index version {}, expires at {} (Unix time)",
                    ix.version, ix.expires
                );
            }
        }
        ReleaseCmd::List(a) => {
            let key = read_public_key(&a.pubkey)?;
            let ix = Repo::open(&a.repo)?.load_index(&key)?;
            if a.common.json {
                println!("{}", String::from_utf8_lossy(&ix.to_bytes()).trim_end());
            } else {
                println!(
                    "{} ({} bundles), index version {}, expires at {}",
                    ix.name, ix.bundle, ix.version, ix.expires
                );
                for r in &ix.releases {
                    let mut flags = Vec::new();
                    if r.yanked {
                        flags.push("yanked".to_string());
                    }
                    if r.mandatory {
                        flags.push("mandatory".into());
                    }
                    if r.rollout < 100 {
                        flags.push(format!("rollout {}%", r.rollout));
                    }
                    if let Some(q) = &r.requires {
                        flags.push(format!("requires {q}"));
                    }
                    println!(
                        "{:<12} {} full {} B, {} patch(es) into it{}",
                        r.version,
                        &r.digest[..16],
                        r.full.bytes,
                        r.patches.len(),
                        if flags.is_empty() {
                            String::new()
                        } else {
                            format!(" [{}]", flags.join(", "))
                        }
                    );
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn update(a: UpdateArgs) -> Result<ExitCode> {
    let key = read_public_key(&a.pubkey)?;
    let mut o = UpdateOptions::default();
    o.app_version = a.app_version.clone();
    o.dry_run = a.dry_run;
    o.memory_limit = a.memory_limit;
    o.retries = a.retries;
    let source = Source::open(&a.repo)?;
    let r = release::update(&a.target, &source, &key, &o)?;
    let steps: Vec<_> = r
        .steps
        .iter()
        .map(|s| {
            json!({"from": s.from, "to": s.to, "bytes": s.bytes, "resumed": s.resumed,
                   "interrupted": s.interrupted})
        })
        .collect();
    if a.common.json {
        println!(
            "{}",
            json!({"from": r.from, "target": r.target, "changed": r.changed,
                   "dry_run": a.dry_run, "route_bytes": r.route_bytes, "full_bytes": r.full_bytes,
                   "mandatory": r.mandatory, "steps": steps, "index_version": r.index_version})
        );
        return Ok(ExitCode::SUCCESS);
    }
    if a.common.quiet {
        return Ok(ExitCode::SUCCESS);
    }
    let at = |v: &Option<String>| v.clone().unwrap_or_else(|| "an unknown version".into());
    match &r.target {
        None => eprintln!(
            "{}: no release of this repository is offered to this client (rollout, app version \
             bounds or yanked); nothing to do",
            a.target.display()
        ),
        Some(t) if r.steps.is_empty() => {
            eprintln!(
                "{}: already at {t}, the newest offered release",
                a.target.display()
            )
        }
        Some(t) => {
            eprintln!(
                "{}: {} {} -> {t}: {} bytes in {} step(s) (the full blob is {} bytes){}",
                a.target.display(),
                if a.dry_run { "would update" } else { "updated" },
                at(&r.from),
                r.route_bytes,
                r.steps.len(),
                r.full_bytes,
                if r.mandatory { "; mandatory" } else { "" }
            );
            for s in &r.steps {
                eprintln!(
                    "  {} -> {}: {} bytes{}",
                    at(&s.from),
                    s.to,
                    s.bytes,
                    match (s.resumed, s.interrupted) {
                        (0, 0) => String::new(),
                        (r, 0) => format!(" ({r} were already downloaded)"),
                        (0, i) => format!(" (the download was cut {i} time(s) and resumed)"),
                        (r, i) =>
                            format!(" ({r} were already downloaded; cut {i} time(s) and resumed)"),
                    }
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
