//! The `bundelta` command line: diff, apply, verify, info.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use bundelta::format::{EntryKind, FileOp};
use bundelta::{DiffOptions, InPlaceOutcome, Patch, Patcher, RollbackOutcome};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

#[path = "cmd/release.rs"]
mod release_cmd;

/// Compact, hash-verified binary patches between two versions of a file or directory tree.
///
/// Make a patch on the server with `bundelta diff OLD NEW -o PATCH`; rebuild NEW on a client
/// with `bundelta apply OLD PATCH -o OUT`, or update a directory in place, crash-safely, with
/// `bundelta apply --in-place DIR PATCH`. Every old file the patch relies on is checked before
/// anything is written, and every output is checked (blake3) before it replaces anything.
#[derive(Parser)]
#[command(name = "bundelta", version, about, long_about, max_term_width = 100)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Make a patch that turns OLD into NEW (two files, or two directories).
    ///
    /// Unchanged files cost only their path; files whose content exists anywhere in OLD are
    /// copied by reference; changed files get a binary delta from the same path or, for
    /// renamed files (content-hashed bundler chunks), from the most similar old file; a file
    /// whose delta would not be smaller than the file compressed alone is carried whole.
    /// The same inputs and options always give the same bytes, at any --threads.
    Diff(DiffArgs),
    /// Rebuild NEW from OLD and a patch, or update a directory in place.
    ///
    /// `apply OLD PATCH -o OUT` writes into a staging location next to OUT and renames it into
    /// place only when every file matched its hash; OUT must not exist, and on failure nothing
    /// is left at OUT and OLD is untouched.
    ///
    /// `apply --in-place DIR PATCH` updates DIR so that a crash or kill at any moment leaves
    /// the old or the new version; rerun the same command to finish. A rerun on a DIR that is
    /// already at the patch's version reports so and exits 0.
    Apply(ApplyArgs),
    /// Check a patch's integrity and, with --old, that OLD is the version it applies to (by
    /// rebuilding every file in memory-bounded streaming fashion, writing nothing).
    Verify(VerifyArgs),
    /// Show what a patch changes: counts, sizes, memory needed, and with --list every entry.
    Info(InfoArgs),
    /// Make an Ed25519 key pair for signing patches: KEY (secret, mode 0600) and KEY.pub.
    ///
    /// Sign with `diff --sign KEY` (or `sign PATCH --key KEY`); clients that run
    /// `apply --pubkey KEY.pub` refuse any patch not signed by KEY before writing a byte. The
    /// signature covers the header, the manifest (with the digests of the old version it
    /// applies to and of the new version it makes) and all data.
    Keygen(KeygenArgs),
    /// Sign an existing patch (or re-sign a signed one) with a secret key from `keygen`.
    Sign(SignArgs),
    /// Publish releases into a static, signed update repository (init, add, plan/run-job/
    /// commit, yank, prune, resign, list).
    ///
    /// A repository is plain files (index.json, index.json.sig, blobs/) that any web server,
    /// CDN or USB stick serves, kept in a directory or in S3-compatible storage
    /// (s3://BUCKET/PREFIX, configured from the AWS_* environment); `bundelta update` brings
    /// an install to its newest release.
    Release(release_cmd::ReleaseArgs),
    /// Bring an installed bundle to the newest release of a repository (directory or URL):
    /// the cheapest route in bytes, resumable downloads, verified, applied crash-safely.
    ///
    /// The installed version is recognised by its content digest. The index must be signed by
    /// --pubkey, newer than any this client accepted before, and not expired. Downloads go to
    /// `.NAME.bundelta-update/` beside the install and resume after a dropped connection or a
    /// crash; each is checked against the signed index before use. An install already at the
    /// newest release exits 0 and says so.
    Update(release_cmd::UpdateArgs),
}

#[derive(Args)]
struct Common {
    /// Print a JSON object on stdout instead of the human summary.
    #[arg(long, global = true)]
    json: bool,
    /// No progress bar and no summary (errors are still printed).
    #[arg(short, long, global = true)]
    quiet: bool,
}

#[derive(Args)]
struct DiffArgs {
    /// The old version (file or directory).
    old: PathBuf,
    /// The new version (same kind as OLD).
    new: PathBuf,
    /// Where to write the patch (`-`: standard output).
    #[arg(short, long, value_name = "PATCH", required_unless_present = "stray")]
    output: Option<PathBuf>,
    /// A third path without -o (a usage error that says so).
    #[arg(hide = true)]
    stray: Option<PathBuf>,
    /// Compression effort, 1..=22 (zstd levels; for lzma, 20+ is "extreme", 17-19 strong,
    /// 10-16 medium). Higher: smaller patch, slower diff; apply speed and memory are unaffected.
    #[arg(long, default_value_t = bundelta::DEFAULT_LEVEL, value_name = "N")]
    level: i32,
    /// Largest zstd window as a power of two, 10..=31. The applier needs about
    /// 3 x (2^N + 0.5 MiB) of memory; the default 21 fits its default 12 MiB limit.
    #[arg(long, default_value_t = bundelta::DEFAULT_WINDOW_LOG, value_name = "N")]
    window_log: u8,
    /// Entropy coder of the patch streams: lzma (smallest; the diff stream may use bzip2 when
    /// that is smaller) or zstd (faster to diff and apply, larger patches).
    #[arg(long, value_enum, default_value_t = CodecArg::Lzma)]
    codec: CodecArg,
    /// Split new files into chunks of this size, diffed in parallel (e.g. 4M, 512K; min 64K).
    #[arg(long, default_value = "4M", value_parser = parse_size, value_name = "SIZE")]
    chunk_size: u64,
    /// Worker threads (default: all cores). The patch is identical for any value.
    #[arg(short = 'j', long, value_name = "N")]
    threads: Option<usize>,
    /// Sign the patch with this secret key (from `bundelta keygen`); adds 64 bytes.
    #[arg(long, value_name = "KEY")]
    sign: Option<PathBuf>,
    /// Bits of hash per old entry (0..=32) that let `apply` name the first old file that
    /// differs when OLD is not the patch's base; a differing file escapes its tag with
    /// probability 2^-BITS. Default: what fits in 1/64 of the patch data (at least 64 bytes),
    /// within 1..=8, and none when 1 bit each would cost more than a quarter of the patch data
    /// and 1 KiB (many thousands of files, tiny change). 0 gives the smallest patch: a wrong base is still
    /// refused, but not named.
    #[arg(long, value_name = "BITS", value_parser = clap::value_parser!(u8).range(0..=32))]
    base_tags: Option<u8>,
    /// Do not predict the references of executables (ELF and PE files for x86-64 and
    /// AArch64). By default the diff predicts calls, jumps, RIP-relative operands and
    /// pointers from where the code they point to moved, when that is smaller: patches of
    /// executables and shared libraries 1.5% to 62% smaller on the corpus.
    #[arg(long)]
    no_exe_refs: bool,
    /// Do not diff gzip and zip files (.gz, .tgz, .whl, .jar...) between their inflated
    /// contents. By default such a file is diffed inside, and its new version deflated again on
    /// apply with the stock-zlib settings that made it (when some settings reproduce it
    /// exactly; streams made by other encoders stay as they are), when that is smaller: a
    /// Python source distribution's patch release, 4,624,908 bytes of patch without this,
    /// 12,383 with it.
    #[arg(long)]
    no_inflate: bool,
    /// Overwrite PATCH if it exists.
    #[arg(short, long)]
    force: bool,
    #[command(flatten)]
    common: Common,
}

#[derive(Args)]
struct KeygenArgs {
    /// Where to write the secret key; the public key goes to the same path plus ".pub".
    #[arg(short, long, value_name = "KEY")]
    output: PathBuf,
    /// Overwrite existing key files.
    #[arg(short, long)]
    force: bool,
    #[command(flatten)]
    common: Common,
}

#[derive(Args)]
struct SignArgs {
    /// The patch to sign.
    patch: PathBuf,
    /// The secret key (from `bundelta keygen`).
    #[arg(short, long, value_name = "KEY")]
    key: PathBuf,
    /// Write the signed patch here (default: replace PATCH atomically).
    #[arg(short, long, value_name = "OUT")]
    output: Option<PathBuf>,
    #[command(flatten)]
    common: Common,
}

/// `--pubkey`, shared by apply, verify and info.
#[derive(Args)]
struct PubkeyArg {
    /// Refuse the patch unless it is signed by the secret key of this public key (a KEY.pub
    /// from `bundelta keygen`); checked before anything is written.
    #[arg(long, value_name = "KEY.pub")]
    pubkey: Option<PathBuf>,
}

#[derive(Args)]
struct ApplyArgs {
    /// The old version (with --in-place: the file or directory to update).
    old: PathBuf,
    /// The patch (not with --rollback); `-` reads it from standard input, once, front to back
    /// (its checksum and signature are then checked at the end, before the output appears).
    #[arg(required_unless_present = "rollback")]
    patch: Option<PathBuf>,
    /// Where to build the new version (must not exist). `-` writes a single-file patch's
    /// output to standard output as it is made: OLD is checked first, the output's digest at
    /// the end; on a nonzero exit, discard what was written.
    #[arg(
        short,
        long,
        value_name = "OUT",
        required_unless_present = "in_place",
        conflicts_with = "in_place"
    )]
    output: Option<PathBuf>,
    /// Update OLD itself, atomically and crash-safely.
    #[arg(long)]
    in_place: bool,
    /// With --in-place, no patch: undo an interrupted in-place apply on OLD (its stage is
    /// removed, OLD left as it was; if it had already swapped the new version in, that stays
    /// and only its leftovers are removed).
    #[arg(long, requires = "in_place", conflicts_with = "patch")]
    rollback: bool,
    /// Refuse patches needing more memory than this (e.g. 12M, 64M).
    #[arg(long, default_value = "12M", value_parser = parse_size, value_name = "SIZE")]
    memory_limit: u64,
    /// Also count OLD's file list against --memory-limit (160 bytes plus twice the path bytes
    /// per entry of OLD, for directory patches): an exact budget for small devices. Off by
    /// default, since trees of more than about 15,000 files would then need a larger limit.
    #[arg(long)]
    strict_memory: bool,
    /// What to do with entries of OLD the patch does not know about (neither in the new
    /// version nor among the old entries it deletes or reads: a user's config, a cache).
    /// `refuse` fails before writing anything and names them; `keep` carries them over into
    /// the new version as they are; `remove` leaves them out (in place: deletes them).
    #[arg(long, value_enum, default_value = "refuse", value_name = "WHAT")]
    unknown: UnknownArg,
    /// Decode the patch's streams on the applying thread. By default, on a machine with more
    /// than one core, they are decoded on threads of their own ahead of it, when 384 KiB of
    /// hand-over buffers fit under --memory-limit next to what the patch needs (`info` shows
    /// what it needs); the output is the same either way.
    #[arg(long)]
    serial: bool,
    #[command(flatten)]
    key: PubkeyArg,
    #[command(flatten)]
    common: Common,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum UnknownArg {
    Refuse,
    Keep,
    Remove,
}

impl From<UnknownArg> for bundelta::Unknown {
    fn from(a: UnknownArg) -> Self {
        match a {
            UnknownArg::Refuse => bundelta::Unknown::Refuse,
            UnknownArg::Keep => bundelta::Unknown::Keep,
            UnknownArg::Remove => bundelta::Unknown::Remove,
        }
    }
}

#[derive(Args)]
struct VerifyArgs {
    /// The patch; `-` reads it from standard input.
    patch: PathBuf,
    /// Also check that this old version satisfies the patch (rebuilds every file, writes nothing).
    #[arg(long, value_name = "OLD")]
    old: Option<PathBuf>,
    /// Refuse patches needing more memory than this.
    #[arg(long, default_value = "12M", value_parser = parse_size, value_name = "SIZE")]
    memory_limit: u64,
    /// Also count OLD's file list against --memory-limit (see `apply --help`).
    #[arg(long)]
    strict_memory: bool,
    /// Entries of OLD the patch does not know about: refuse, keep or remove (see
    /// `apply --help`).
    #[arg(long, value_enum, default_value = "refuse", value_name = "WHAT")]
    unknown: UnknownArg,
    /// Decode the patch's streams on the verifying thread (see `apply --help`).
    #[arg(long)]
    serial: bool,
    #[command(flatten)]
    key: PubkeyArg,
    #[command(flatten)]
    common: Common,
}

#[derive(Args)]
struct InfoArgs {
    /// The patch.
    patch: PathBuf,
    /// List every entry with its operation.
    #[arg(short, long)]
    list: bool,
    /// The old version: lets a patch whose manifest is stored relative to OLD's file list
    /// show every path (without it: counts, and the paths OLD does not have).
    #[arg(long, value_name = "OLD")]
    old: Option<PathBuf>,
    /// Refuse patches needing more memory than this (as apply and verify do: reading the
    /// manifest is bounded by what the header declares).
    #[arg(long, default_value = "12M", value_parser = parse_size, value_name = "SIZE")]
    memory_limit: u64,
    #[command(flatten)]
    key: PubkeyArg,
    #[command(flatten)]
    common: Common,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum CodecArg {
    Lzma,
    Zstd,
}

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => {
            let m = match s[i..].to_ascii_lowercase().as_str() {
                "b" => 1u64,
                "k" | "kb" | "kib" => 1 << 10,
                "m" | "mb" | "mib" => 1 << 20,
                "g" | "gb" | "gib" => 1 << 30,
                other => return Err(format!("unknown size suffix {other:?} (use K, M or G)")),
            };
            (&s[..i], m)
        }
        None => (s, 1),
    };
    let n: u64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a size like 512K or 4M"))?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// A memory figure: always MiB, the unit of `--memory-limit` (one unit in every message).
fn mem_text(n: u64) -> String {
    format!("{:.2} MiB", n as f64 / (1u64 << 20) as f64)
}

fn human(n: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < U.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.2} {}", U[i])
    }
}

fn bar(quiet: bool, json: bool, msg: &'static str) -> Option<ProgressBar> {
    if quiet || json || !std::io::stderr().is_terminal() {
        return None;
    }
    let pb = ProgressBar::new(0);
    pb.set_style(spinner_style());
    pb.set_message(msg);
    pb.enable_steady_tick(std::time::Duration::from_millis(120));
    Some(pb)
}

/// A bar for a phase that counts bytes.
fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template(
        "{msg:>11} [{bar:40}] {bytes}/{total_bytes} ({bytes_per_sec}, eta {eta})",
    )
    .expect("static template")
    .progress_chars("=> ")
}

/// A spinner for a phase (or a start) without a byte count: no "0 B/0 B".
fn spinner_style() -> ProgressStyle {
    ProgressStyle::with_template("{msg:>11} {spinner} {elapsed}").expect("static template")
}

fn main() -> ExitCode {
    // A file-size limit (RLIMIT_FSIZE) must surface as a write error we clean up after, not
    // as a signal that kills the process mid-write.
    #[cfg(unix)]
    // SAFETY: setting a signal's disposition to SIG_IGN has no preconditions.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
    let cli = Cli::parse();
    let json = match &cli.cmd {
        Cmd::Diff(a) => a.common.json,
        Cmd::Apply(a) => a.common.json,
        Cmd::Verify(a) => a.common.json,
        Cmd::Info(a) => a.common.json,
        Cmd::Keygen(a) => a.common.json,
        Cmd::Sign(a) => a.common.json,
        Cmd::Release(a) => match &a.cmd {
            release_cmd::ReleaseCmd::Init(a) => a.common.json,
            release_cmd::ReleaseCmd::Add(a) => a.common.json,
            release_cmd::ReleaseCmd::Plan(a) => a.common.json,
            release_cmd::ReleaseCmd::RunJob(a) => a.common.json,
            release_cmd::ReleaseCmd::Commit(a) => a.common.json,
            release_cmd::ReleaseCmd::Yank(a) => a.common.json,
            release_cmd::ReleaseCmd::Prune(a) => a.common.json,
            release_cmd::ReleaseCmd::Resign(a) => a.common.json,
            release_cmd::ReleaseCmd::List(a) => a.common.json,
        },
        Cmd::Update(a) => a.common.json,
    };
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) {
                return ExitCode::SUCCESS;
            }
            // The chain, without repeating a cause the message before it already quotes
            // (library errors print their I/O cause themselves).
            let mut msg = e.to_string();
            for cause in e.chain().skip(1) {
                let c = cause.to_string();
                if !msg.contains(&c) {
                    msg = format!("{msg}: {c}");
                }
            }
            eprintln!("bundelta: error: {msg}");
            if json {
                println!("{}", json!({"ok": false, "error": msg}));
            }
            ExitCode::FAILURE
        }
    }
}

/// Files of NEW made from the old file at the same path (unchanged, or a delta from it).
fn relied_same_path(m: &bundelta::format::Manifest) -> u64 {
    m.entries
        .iter()
        .filter(|e| {
            matches!(&e.kind, bundelta::format::EntryKind::File { op, .. } if op.reads_own_path())
        })
        .count() as u64
}

/// Whether `p` is a regular file that starts as a patch does.
fn is_patch(p: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    std::fs::symlink_metadata(p).is_ok_and(|m| m.is_file())
        && std::fs::File::open(p)
            .and_then(|mut f| f.read_exact(&mut magic))
            .is_ok()
        && magic == bundelta::format::MAGIC
}

/// How errors name a patch read from standard input.
const STDIN_NAME: &str = "(standard input)";

/// A usage error: printed as clap prints its own, exit code 2.
fn usage_error(msg: &str) -> ! {
    use clap::CommandFactory;
    Cli::command()
        .error(clap::error::ErrorKind::ArgumentConflict, msg)
        .exit()
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.cmd {
        Cmd::Diff(a) => diff(a),
        Cmd::Apply(a) => apply(a),
        Cmd::Verify(a) => verify(a),
        Cmd::Info(a) => info(a),
        Cmd::Keygen(a) => keygen(a),
        Cmd::Sign(a) => sign(a),
        Cmd::Release(a) => release_cmd::release(a),
        Cmd::Update(a) => release_cmd::update(a),
    }
}

fn read_secret_key(path: &Path) -> Result<bundelta::SecretKey> {
    let text = std::fs::read(path).with_context(|| format!("{}: read", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(m) = std::fs::metadata(path) {
            if m.permissions().mode() & 0o077 != 0 {
                eprintln!(
                    "bundelta: warning: secret key {} is readable by other users (chmod 600 it)",
                    path.display()
                );
            }
        }
    }
    bundelta::SecretKey::from_text(&text).with_context(|| path.display().to_string())
}

fn read_public_key(path: &Path) -> Result<bundelta::PublicKey> {
    let text = std::fs::read(path).with_context(|| format!("{}: read", path.display()))?;
    bundelta::PublicKey::from_text(&text).with_context(|| path.display().to_string())
}

fn keygen(a: KeygenArgs) -> Result<ExitCode> {
    let mut pub_path = a.output.clone().into_os_string();
    pub_path.push(".pub");
    let pub_path = PathBuf::from(pub_path);
    for p in [&a.output, &pub_path] {
        if !a.force && p.symlink_metadata().is_ok() {
            bail!("{}: already exists (use --force to overwrite)", p.display());
        }
    }
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("no system randomness: {e}"))?;
    let secret = bundelta::SecretKey::from_bytes(seed);
    seed.fill(0);
    let public = secret.public_key();
    write_private(&a.output, secret.to_text().as_bytes())?;
    std::fs::write(&pub_path, public.to_text())
        .with_context(|| format!("{}: write", pub_path.display()))?;
    let fp = public.fingerprint();
    if a.common.json {
        println!(
            "{}",
            json!({"secret_key": a.output, "public_key": pub_path, "fingerprint": fp})
        );
    } else if !a.common.quiet {
        eprintln!(
            "wrote secret key {} (keep it private) and public key {}; fingerprint {fp}",
            a.output.display(),
            pub_path.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Write a file readable by its owner only (replacing any existing one).
fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    // Created 0600 from the start (a temp file next to it, renamed over it): the key is never
    // readable by others, not even briefly.
    bundelta::write_atomic(path, "key", 0o600, |f| f.write_all(bytes))
        .with_context(|| format!("{}: write", path.display()))
}

fn sign(a: SignArgs) -> Result<ExitCode> {
    let secret = read_secret_key(&a.key)?;
    let patch = std::fs::read(&a.patch).with_context(|| format!("{}: read", a.patch.display()))?;
    let signed =
        bundelta::sign_patch(&patch, &secret).with_context(|| a.patch.display().to_string())?;
    let out = a.output.as_deref().unwrap_or(&a.patch);
    // Atomic replace: a temporary file next to OUT, renamed over it.
    bundelta::write_atomic(out, "sign", 0o666, |f| {
        std::io::Write::write_all(f, &signed)
    })
    .with_context(|| format!("{}: write", out.display()))?;
    let fp = secret.public_key().fingerprint();
    if a.common.json {
        println!(
            "{}",
            json!({"patch": out, "patch_bytes": signed.len(), "fingerprint": fp})
        );
    } else if !a.common.quiet {
        eprintln!(
            "signed {} ({}) with key {fp}",
            out.display(),
            human(signed.len() as u64)
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn diff(mut a: DiffArgs) -> Result<ExitCode> {
    let output = match (a.output.take(), &a.stray) {
        (Some(o), None) => o,
        (_, Some(x)) => usage_error(&format!(
            "unexpected third path {0}: the patch is written with -o, as in \
             `bundelta diff OLD NEW -o {0}`",
            x.display()
        )),
        (None, None) => unreachable!("clap requires -o without a third path"),
    };
    if let Some(n) = a.threads {
        if n == 0 {
            bail!("--threads must be at least 1");
        }
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .context("starting worker threads")?;
    }
    let to_stdout = output.as_os_str() == "-";
    if to_stdout && a.common.json {
        usage_error("-o - writes the patch to standard output, where --json would go too");
    }
    if !to_stdout && !a.force && output.exists() {
        bail!(
            "{}: output already exists (use --force to overwrite)",
            output.display()
        );
    }
    let chunk = usize::try_from(a.chunk_size).context("--chunk-size too large")?;
    let mut opts = DiffOptions::new();
    opts.level(a.level)
        .window_log(a.window_log)
        .chunk_size(chunk)
        .codec(match a.codec {
            CodecArg::Lzma => bundelta::Codec::Lzma,
            CodecArg::Zstd => bundelta::Codec::Zstd,
        });
    opts.base_tags(a.base_tags)
        .exe_refs(!a.no_exe_refs)
        .inflate(!a.no_inflate);
    if let Some(key) = &a.sign {
        opts.sign_with(read_secret_key(key)?);
    }
    let pb = bar(a.common.quiet, a.common.json, "diffing");
    if let Some(pb) = &pb {
        let pb = pb.clone();
        opts.progress(Arc::new(move |phase, done, total| match phase {
            bundelta::DiffPhase::Matching => {
                if pb.length() != Some(total) {
                    pb.set_length(total);
                    pb.set_message("matching");
                    pb.set_style(bar_style());
                }
                pb.set_position(done);
            }
            other => {
                pb.set_style(spinner_style());
                pb.set_message(match other {
                    bundelta::DiffPhase::Scanning => "scanning",
                    _ => "compressing",
                });
                pb.enable_steady_tick(std::time::Duration::from_millis(120));
            }
        }));
    }
    let t = Instant::now();
    let stats = if to_stdout {
        let (bytes, stats) = opts.diff_paths(&a.old, &a.new)?;
        let mut so = std::io::stdout().lock();
        std::io::Write::write_all(&mut so, &bytes)
            .and_then(|()| std::io::Write::flush(&mut so))
            .context("writing the patch to standard output")?;
        stats
    } else {
        opts.diff_to_file(&a.old, &a.new, &output)?
    };
    let secs = t.elapsed().as_secs_f64();
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
    let pct = if stats.new_bytes > 0 {
        100.0 * stats.patch_bytes as f64 / stats.new_bytes as f64
    } else {
        0.0
    };
    // What the applier will need: warn when the default limit would refuse the patch.
    let need = stats.apply_memory;
    if need > bundelta::DEFAULT_MEMORY_LIMIT && !a.common.quiet {
        eprintln!(
            "bundelta: warning: applying this patch needs {} of memory, above the default limit \
             of {}: clients must pass --memory-limit {}M (a smaller --window-log lowers it)",
            mem_text(need),
            mem_text(bundelta::DEFAULT_MEMORY_LIMIT),
            need.div_ceil(1 << 20)
        );
    }
    if a.common.json {
        println!(
            "{}",
            json!({
                "patch": output, "patch_bytes": stats.patch_bytes, "new_bytes": stats.new_bytes,
                "percent_of_new": pct, "seconds": secs, "apply_memory_bytes": need,
                "ops": diff_ops(&stats).iter().map(|(k, n)| (k.to_string(), json!({"count": n})))
                    .collect::<serde_json::Map<String, serde_json::Value>>(),
                "deleted": stats.deleted, "dirs": stats.dirs, "symlinks": stats.symlinks,
            })
        );
    } else if !a.common.quiet {
        let ops: Vec<String> = diff_ops(&stats)
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(k, n)| format!("{n} {k}"))
            .chain((stats.deleted > 0).then(|| format!("{} deleted", stats.deleted)))
            .collect();
        eprintln!(
            "wrote {}: {} ({pct:.2}% of {} new) in {secs:.2}s; files: {}",
            output.display(),
            human(stats.patch_bytes),
            human(stats.new_bytes),
            if ops.is_empty() {
                "none".to_string()
            } else {
                ops.join(", ")
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// A diff's file counts under the operation names `info` and `info --list` use.
fn diff_ops(s: &bundelta::DiffStats) -> [(&'static str, u64); 5] {
    [
        ("unchanged", s.unchanged),
        ("copy", s.copied),
        ("copy-new", s.copied_new),
        ("modify", s.modified),
        ("add", s.added),
    ]
}

fn patcher(limit: u64, strict: bool, key: &PubkeyArg, pb: &Option<ProgressBar>) -> Result<Patcher> {
    let mut p = Patcher::new();
    p.memory_limit(limit).strict_memory(strict);
    if let Some(k) = &key.pubkey {
        p.require_signature(read_public_key(k)?);
    }
    if let Some(pb) = pb {
        let pb = pb.clone();
        p.progress(Box::new(move |done, total| {
            if pb.length() != Some(total) {
                pb.set_length(total);
                pb.set_style(bar_style());
            }
            pb.set_position(done);
        }));
    }
    Ok(p)
}

fn apply(a: ApplyArgs) -> Result<ExitCode> {
    let pb = bar(a.common.quiet, a.common.json, "applying");
    let mut p = patcher(a.memory_limit, a.strict_memory, &a.key, &pb)?;
    p.unknown(a.unknown.into()).parallel(!a.serial);
    let t = Instant::now();
    if a.rollback {
        let status = match bundelta::rollback_in_place(&a.old)? {
            RollbackOutcome::NothingPending => "nothing-pending",
            RollbackOutcome::RolledBack => "rolled-back",
            RollbackOutcome::AlreadyCommitted => "already-committed",
            _ => "unknown",
        };
        if a.common.json {
            println!("{}", json!({"target": a.old, "status": status}));
        } else if !a.common.quiet {
            let what = match status {
                "nothing-pending" => "no interrupted apply was pending; nothing changed",
                "rolled-back" => "rolled back the interrupted apply; it is as it was before",
                _ => "the interrupted apply had already put the new version in place; removed its leftovers",
            };
            eprintln!("{}: {what}", a.old.display());
        }
        return Ok(ExitCode::SUCCESS);
    }
    let patch = a.patch.expect("clap requires PATCH without --rollback");
    let stdin = patch.as_os_str() == "-";
    if !stdin && is_patch(&a.old) && !is_patch(&patch) {
        usage_error(&format!(
            "{} is a bundelta patch and {} is not: the arguments look swapped; the order is \
             `bundelta apply OLD PATCH -o OUT`",
            a.old.display(),
            patch.display()
        ));
    }
    if a.in_place && stdin {
        usage_error(
            "--in-place needs the patch as a file (its journal names the patch before the first \
             write): save it first, or apply it to a new location with -o OUT",
        );
    }
    if a.in_place {
        let r = p.apply_in_place(&a.old, &patch)?;
        if let Some(pb) = pb {
            pb.finish_and_clear();
        }
        let secs = t.elapsed().as_secs_f64();
        let (status, files, bytes) = match &r.outcome {
            InPlaceOutcome::Applied(rep) => ("applied", rep.files, rep.bytes),
            InPlaceOutcome::AlreadyUpToDate => ("already-up-to-date", 0, 0),
            _ => ("unknown", 0, 0),
        };
        if a.common.json {
            println!(
                "{}",
                json!({"target": a.old, "status": status, "recovered": r.recovered,
                       "files": files, "bytes": bytes, "seconds": secs})
            );
        } else if !a.common.quiet {
            if r.recovered {
                eprintln!("recovered an interrupted earlier apply");
            }
            match r.outcome {
                InPlaceOutcome::AlreadyUpToDate => {
                    eprintln!(
                        "{}: already at the patch's new version; nothing to do",
                        a.old.display()
                    )
                }
                _ => {
                    eprintln!(
                        "updated {} in place: {files} files, {} in {secs:.2}s",
                        a.old.display(),
                        human(bytes)
                    );
                    if a.old.file_name().is_none() || a.old.ends_with(".") {
                        eprintln!(
                            "note: the directory was replaced by the new version: a shell \
                             whose working directory it was sees it after `cd \"$PWD\"`"
                        );
                    }
                }
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let out = a.output.expect("clap requires -o without --in-place");
    if out.as_os_str() == "-" {
        if a.common.json {
            usage_error("-o - writes the new file to standard output, where --json would go too");
        }
        let patch = if stdin {
            p.open_reader(std::io::stdin(), STDIN_NAME)?
        } else {
            p.open(&patch)?
        };
        if patch.header().is_directory() {
            usage_error("-o - takes a single-file patch; this one makes a directory tree");
        }
        let old =
            std::fs::File::open(&a.old).with_context(|| format!("{}: open", a.old.display()))?;
        let mut so = std::io::BufWriter::new(std::io::stdout().lock());
        // Errors name OLD as the user gave it.
        let r = p
            .apply_to_writer(&old, patch, &mut so)
            .map_err(|e| match e {
                bundelta::Error::WrongBase { path, reason } if path == "(old)" => {
                    bundelta::Error::WrongBase {
                        path: a.old.display().to_string(),
                        reason,
                    }
                }
                e => e,
            })?;
        std::io::Write::flush(&mut so).context("writing to standard output")?;
        if let Some(pb) = pb {
            pb.finish_and_clear();
        }
        if !a.common.quiet {
            eprintln!(
                "wrote standard output: {} verified in {:.2}s",
                human(r.bytes),
                t.elapsed().as_secs_f64()
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let r = if stdin {
        let patch = p.open_reader(std::io::stdin(), STDIN_NAME)?;
        p.apply_patch(&a.old, patch, &out)?
    } else {
        p.apply(&a.old, &patch, &out)?
    };
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
    let secs = t.elapsed().as_secs_f64();
    if a.common.json {
        println!(
            "{}",
            json!({"output": out, "status": "applied", "files": r.files, "bytes": r.bytes,
                   "dirs": r.dirs, "symlinks": r.symlinks, "digest": bundelta::hex(&r.digest), "seconds": secs})
        );
    } else if !a.common.quiet {
        eprintln!(
            "wrote {}: {} files, {} verified in {secs:.2}s",
            out.display(),
            r.files,
            human(r.bytes)
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn verify(a: VerifyArgs) -> Result<ExitCode> {
    let pb = bar(a.common.quiet, a.common.json, "verifying");
    let mut p = patcher(a.memory_limit, a.strict_memory, &a.key, &pb)?;
    p.unknown(a.unknown.into()).parallel(!a.serial);
    let r = if a.patch.as_os_str() == "-" {
        let patch = p.open_reader(std::io::stdin(), STDIN_NAME)?;
        p.verify_patch(patch, a.old.as_deref())?
    } else {
        p.verify(&a.patch, a.old.as_deref())?
    };
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
    let name = if a.patch.as_os_str() == "-" {
        Path::new(STDIN_NAME)
    } else {
        a.patch.as_path()
    };
    if a.common.json {
        println!(
            "{}",
            json!({"patch": a.patch, "ok": true, "old_checked": r.is_some(),
                   "files": r.as_ref().map(|r| r.files), "bytes": r.as_ref().map(|r| r.bytes)})
        );
    } else if !a.common.quiet {
        match r {
            Some(r) => eprintln!(
                "{}: ok; {} satisfies it ({} files, {} rebuilt and verified)",
                name.display(),
                a.old.as_deref().unwrap_or(Path::new("")).display(),
                r.files,
                human(r.bytes)
            ),
            None => eprintln!(
                "{}: ok (checksum, header and manifest valid)",
                name.display()
            ),
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn tags_text(t: &bundelta::format::BaseTags, units: &str) -> String {
    if t.is_empty() {
        "none (a wrong OLD is refused without naming a file)".to_string()
    } else {
        format!(
            "{} x {} bits, one per {units} (a wrong OLD is refused naming the file)",
            t.len(),
            t.bits
        )
    }
}

fn signed_text(h: &bundelta::format::Header, key: &PubkeyArg) -> &'static str {
    match (h.is_signed(), key.pubkey.is_some()) {
        (true, true) => "yes, by the given --pubkey",
        (true, false) => "yes (add --pubkey KEY.pub to check by whom)",
        (false, _) => "no",
    }
}

/// The lines `info` prints for either manifest form: signature, target and memory.
fn info_target(
    out: &mut impl Write,
    a: &InfoArgs,
    h: &bundelta::format::Header,
    new_digest: &bundelta::format::Hash,
    mem: u64,
) -> std::io::Result<()> {
    writeln!(out, "signed:       {}", signed_text(h, &a.key))?;
    writeln!(out, "new size:     {}", human(h.new_total))?;
    writeln!(out, "new digest:   {}", bundelta::hex(new_digest))?;
    writeln!(
        out,
        "apply memory: {} (window log {})",
        mem_text(mem),
        h.window_log
    )
}

/// `info` for a patch whose manifest is relative to OLD's file list, without OLD.
fn info_relative(a: &InfoArgs, p: &Patch) -> Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    let h = p.header();
    let raw = p.relative_manifest().unwrap_or_default();
    let s = bundelta::format::Manifest::summarize_relative(raw, h)?;
    let tags = bundelta::format::Manifest::relative_prefix(raw, h)?.base_tags;
    let mem = bundelta::memory_needed(h);
    if a.common.json {
        let v = json!({
            "patch": a.patch, "patch_bytes": p.len(), "bundle": "directory",
            "manifest_form": "relative to OLD's file list",
            "new_bytes": h.new_total, "window_log": h.window_log, "apply_memory_bytes": mem,
            "new_digest": bundelta::hex(&p.new_digest()),
            "paths": {"unchanged": s.kept, "changed": s.changed, "new": s.inserted},
            "signed": h.is_signed(), "signature_checked": a.key.pubkey.is_some(),
            "deleted": s.dropped, "manifest_bytes": h.manifest_len,
            "base_tags": tags.len(), "base_tag_bits": tags.bits,
        });
        writeln!(out, "{v}")?;
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(
        out,
        "patch:        {} ({})",
        a.patch.display(),
        human(p.len())
    )?;
    writeln!(out, "bundle:       directory; manifest relative to OLD's file list (--old OLD lists every path)")?;
    info_target(&mut out, a, h, &p.new_digest(), mem)?;
    writeln!(
        out,
        "paths:        {} unchanged, {} changed, {} new, {} deleted (operations per file: --old OLD)",
        s.kept, s.changed, s.inserted, s.dropped
    )?;
    writeln!(
        out,
        "base tags:    {}",
        tags_text(&tags, "entry of OLD's list")
    )?;
    if a.list {
        writeln!(
            out,
            "(paths are stored relative to OLD's file list: add --old OLD to list them)"
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

fn info(a: InfoArgs) -> Result<ExitCode> {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    // The same limit as apply and verify: a patch `info` reads is one they would accept.
    let mut pt = Patcher::new();
    pt.memory_limit(a.memory_limit);
    if let Some(k) = &a.key.pubkey {
        pt.require_signature(read_public_key(k)?);
    }
    let mut p = pt.open(&a.patch)?;
    if let Some(old) = &a.old {
        p.bind(old)?;
    }
    if p.manifest().is_none() {
        return info_relative(&a, &p);
    }
    let h = p.header();
    let m = p.manifest().expect("checked above");
    let mut counts = std::collections::BTreeMap::<&str, (u64, u64)>::new();
    let mut rows = Vec::new();
    for e in &m.entries {
        let (op, size, source) = match &e.kind {
            EntryKind::Dir => ("dir", 0, None),
            EntryKind::Symlink { target } => ("symlink", 0, Some(target.clone())),
            EntryKind::File { size, op, .. } => {
                let source = match op {
                    FileOp::Copy { source } => Some(m.old_files[*source as usize].path.clone()),
                    FileOp::CopyNew { entry } => {
                        Some(format!("(new) {}", m.entries[*entry as usize].path))
                    }
                    FileOp::Delta { sources, .. } if sources.is_empty() => Some(e.path.clone()),
                    FileOp::Delta { sources, .. } => Some(
                        sources
                            .iter()
                            .map(|s| m.old_files[*s as usize].path.as_str())
                            .collect::<Vec<_>>()
                            .join("+"),
                    ),
                    _ => None,
                };
                (op.name(), *size, source)
            }
            _ => ("unknown", 0, None),
        };
        let c = counts.entry(op).or_default();
        c.0 += 1;
        c.1 += size;
        rows.push((e.path.clone(), op, size, source));
    }
    // Modified files diffed against several old files (extra sources found by coverage).
    let multi_source = m
        .entries
        .iter()
        .filter(|e| {
            matches!(&e.kind, EntryKind::File { op: FileOp::Delta { sources, .. }, .. } if sources.len() > 1)
        })
        .count();
    // Modified files made with delta transform `t`.
    let with_transform = |t: u8| {
        m.entries
            .iter()
            .filter(|e| {
                matches!(&e.kind, EntryKind::File { op: FileOp::Delta { transform, .. }, .. }
                    if *transform == t)
            })
            .count()
    };
    // Diff bytes taken against predicted references (transform 1); diffed between inflated
    // forms (transform 2).
    let exe_refs = with_transform(bundelta::format::TRANSFORM_REFS);
    let inflated = with_transform(bundelta::format::TRANSFORM_INFLATE);
    // How those files' streams are made again: read from their recipes, at the head of their
    // controls (the control stream is decoded for it; nothing else is).
    let remade: std::collections::BTreeMap<usize, bundelta::Remade> = if inflated > 0 {
        p.remade_streams()?
            .unwrap_or_default()
            .into_iter()
            .collect()
    } else {
        Default::default()
    };
    let remade_total = remade.values().fold([0u64; 3], |t, r| {
        [t[0] + r.zlib, t[1] + r.miniz, t[2] + r.tokens]
    });
    let remade_text = |r: [u64; 3]| {
        [("zlib", r[0]), ("miniz", r[1]), ("token structure", r[2])]
            .iter()
            .filter(|x| x.1 > 0)
            .map(|(k, n)| format!("{n} by {k}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mem = bundelta::memory_needed(h);
    let codec = |c: u8| match c {
        bundelta::format::CODEC_ZSTD => "zstd",
        bundelta::format::CODEC_LZMA2 => "lzma2",
        bundelta::format::CODEC_BZIP2 => "bzip2",
        _ => "raw",
    };
    if a.common.json {
        let ops: serde_json::Map<String, serde_json::Value> = counts
            .iter()
            .map(|(k, (n, b))| (k.to_string(), json!({"count": n, "new_bytes": b})))
            .collect();
        let streams: serde_json::Map<String, serde_json::Value> = ["control", "diff", "extra"]
            .iter()
            .enumerate()
            .map(|(i, n)| {
                (
                    n.to_string(),
                    json!({"bytes": h.stream_lens[i], "codec": codec(h.codecs[i])}),
                )
            })
            .collect();
        let mut v = json!({
            "patch": a.patch, "patch_bytes": p.len(), "format": format!("{}.{}", bundelta::format::VERSION_MAJOR, h.minor),
            "bundle": if h.is_directory() { "directory" } else { "file" },
            "new_bytes": h.new_total, "window_log": h.window_log, "apply_memory_bytes": mem,
            "new_digest": bundelta::hex(&m.new_digest), "old_files_relied_on": m.old_files.len() as u64 + relied_same_path(m),
            "deleted": m.deleted.len(), "ops": ops, "manifest_bytes": h.manifest_len, "streams": streams,
            "signed": h.is_signed(), "signature_checked": a.key.pubkey.is_some(),
            "base_tags": m.base_tags.len(), "base_tag_bits": m.base_tags.bits,
            "exe_refs": exe_refs, "multi_source": multi_source, "inflated": inflated,
            "remade_streams": {"zlib": remade_total[0], "miniz": remade_total[1], "tokens": remade_total[2]},
        });
        if a.list {
            v["entries"] = rows
                .iter()
                .enumerate()
                .map(|(i, (p, op, size, src))| {
                    let mut e = json!({"path": p, "op": op, "size": size, "source": src});
                    if let Some(r) = remade.get(&i) {
                        e["remade_streams"] =
                            json!({"zlib": r.zlib, "miniz": r.miniz, "tokens": r.tokens});
                    }
                    e
                })
                .collect();
            v["deleted_paths"] = json!(m.deleted);
        }
        writeln!(out, "{v}")?;
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(
        out,
        "patch:        {} ({})",
        a.patch.display(),
        human(p.len())
    )?;
    writeln!(
        out,
        "format:       {}.{}",
        bundelta::format::VERSION_MAJOR,
        h.minor
    )?;
    writeln!(
        out,
        "bundle:       {}",
        if h.is_directory() {
            "directory"
        } else {
            "single file"
        }
    )?;
    info_target(&mut out, &a, h, &m.new_digest, mem)?;
    writeln!(
        out,
        "sections:     manifest {}, control {} ({}), diff {} ({}), extra {} ({})",
        human(h.manifest_len),
        human(h.stream_lens[0]),
        codec(h.codecs[0]),
        human(h.stream_lens[1]),
        codec(h.codecs[1]),
        human(h.stream_lens[2]),
        codec(h.codecs[2])
    )?;
    let same_path = relied_same_path(m);
    if h.is_directory() {
        writeln!(
            out,
            "relies on:    {} old files ({} at their own path, {} by reference), each checked \
             before anything is written",
            same_path + m.old_files.len() as u64,
            same_path,
            m.old_files.len()
        )?;
    } else if same_path + m.old_files.len() as u64 > 0 {
        writeln!(
            out,
            "relies on:    the old file (checked before anything is written)"
        )?;
    } else {
        writeln!(
            out,
            "relies on:    nothing (the patch carries the whole file)"
        )?;
    }
    if h.is_directory() {
        writeln!(
            out,
            "base tags:    {}",
            tags_text(
                &m.base_tags,
                if p.relative_manifest().is_some() {
                    "entry of OLD's list"
                } else {
                    "old file relied on"
                }
            )
        )?;
    }
    writeln!(out, "operations:")?;
    for (op, (n, b)) in &counts {
        writeln!(out, "  {op:<10} {n:>8}  {} of new content", human(*b))?;
    }
    if !m.deleted.is_empty() {
        writeln!(out, "  {:<10} {:>8}", "deleted", m.deleted.len())?;
    }
    if exe_refs > 0 {
        writeln!(
            out,
            "  ({exe_refs} of the modified files with executable reference prediction)"
        )?;
    }
    if multi_source > 0 {
        writeln!(
            out,
            "  ({multi_source} of the modified files diffed against several old files)"
        )?;
    }
    if inflated > 0 {
        writeln!(
            out,
            "  ({inflated} of the modified files diffed inflated; deflate streams made again: {})",
            remade_text(remade_total)
        )?;
    }
    if a.list {
        writeln!(out)?;
        for (i, (p, op, size, src)) in rows.iter().enumerate() {
            let src = src
                .as_deref()
                .map(|s| format!(" <- {s}"))
                .unwrap_or_default();
            let how = remade
                .get(&i)
                .map(|r| {
                    let n = [r.zlib, r.miniz, r.tokens];
                    format!("  (streams made again: {})", remade_text(n))
                })
                .unwrap_or_default();
            writeln!(
                out,
                "{op:<9} {size:>12}  {}{src}{how}",
                if p.is_empty() { "(file)" } else { p }
            )?;
        }
        for d in &m.deleted {
            writeln!(out, "{:<9} {:>12}  {d}", "delete", "")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
