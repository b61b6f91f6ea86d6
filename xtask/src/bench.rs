//! `cargo xtask bench`: bundelta against the peer delta tools on real version pairs, every tool
//! as a measured child process, every output verified byte for byte.

use std::ffi::OsString;
use std::fs;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};

use crate::corpus::{self, Corpus, Entry};
use crate::measure::{self, median, Measured};
use crate::tarball;
use crate::tools::{self, Sizes, Tool};
use crate::verify;

/// Growth of bundelta's patch over the baseline that `--check` tolerates, in percent.
pub const SIZE_TOLERANCE_PCT: f64 = 0.5;
/// The apply memory bound the README documents: 16 MiB peak RSS at default settings.
pub const APPLY_RSS_BOUND_KIB: u64 = 16 * 1024;

/// The long help of `cargo xtask bench`.
pub const LONG_ABOUT: &str = "\
Measure bundelta against the peer delta tools on real version pairs.

For every pair (OLD and NEW: two files or two directory trees) and every tool, bench runs the
tool's diff and then its apply, each as a child process, and measures:

  patch bytes      the size of the patch file, and as a % of NEW's bytes
  diff s, cpu s    wall seconds, and user+system CPU seconds (bundelta uses every core)
  diff RSS         peak resident set size of the diff process
  apply s, RSS     wall seconds and peak RSS of the apply process
  verified         the applied output is NEW byte for byte (trees: names, types, bytes,
                   executable bits, symlink targets)

Times and RSS come from the rusage the kernel returns when bench reaps the child (wait4):
ru_maxrss and ru_utime + ru_stime, for the child and any process it waited for. bundelta
itself runs the same way, as this executable's `diff` and `apply`. A child's peak RSS is
never below what bench itself holds when it starts the child (the kernel carries that over
into the child); bench resets its own peak to its current RSS before each spawn, streams
everything through small buffers, and reports the largest such floor as `rss_floor_kib` in
the JSON. The machine should be otherwise idle: the tools run one after the other, never
two at once.

Tools, with the settings that gave each its smallest patches on the corpus
(scripts/install-peers.sh installs them; missing ones are skipped with a note):

  bundelta     bundelta diff OLD NEW -o PATCH / bundelta apply OLD PATCH -o OUT
  bsdiff       bsdiff OLD NEW PATCH / bspatch OLD OUT PATCH
  xdelta3      xdelta3 -D -9 -S lzma -I 0 -B <power of 2 >= OLD> -e -s OLD NEW PATCH
  zstd-19      zstd -19 --long=N --patch-from=OLD NEW -o PATCH, N = ceil(log2(largest))
  zstd-3       the same at the fast level -3
  zstd-22      zstd --ultra -22 (only when named in --tools)
  hdiffpatch   the PyPI hdiffpatch module (no CLI) through a `python3 -c` child, LZMA level
               9; its RSS includes the interpreter and both inputs held in memory
  detools      detools create_patch -c lzma / apply_patch (python3 -m detools)
  qbsdiff      qbsdiff -z 9 OLD NEW PATCH / qbspatch OLD OUT PATCH, when on PATH

Directory pairs: bundelta diffs the trees; the file-only peers diff a deterministic tar of
each side (names sorted, mtime 0, uid/gid 0, no owner names), as a user would, and their
output tar must equal NEW's tar byte for byte.

Pairs are the names in corpus/pairs.json (fetched into corpus/data by running `python3
corpus/fetch.py --only NAMES` as a child, which checks every archive's pinned sha256), or
any directory holding `old` and `new`. Without PAIRS: every manifest pair except the
large-file ones (446 MB each side: two 550 MB downloads, several GB of RAM for bsdiff);
with --check and no PAIRS or --step, the pairs of the baseline.

The summary gives, per tool, its total patch bytes over the pairs it completed, relative to
bundelta's total over those same pairs. Exit status: without --check, 0 when every output
verified; with --check, 0 when the check passed (bundelta's results: a peer's failure is
reported but does not count); 1 otherwise, with one line per failure.

Cost: each pair costs every tool's diff + apply times --runs, plus a tar of each side for
directory pairs. Measured on 2 cores with every default peer: the eight small-step pairs
about 4 minutes; every pair but the large-file ones about 8 minutes (measured with eleven of
today's thirteen); the first run also downloads about 185 MB.";

/// Pair steps in corpus/pairs.json.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Step {
    Small,
    Big,
}

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Pairs to run: names from the corpus manifest (see --list), or directories holding
    /// `old` and `new`. Default: every manifest pair except the large-file ones.
    #[arg(value_name = "PAIR")]
    pairs: Vec<String>,
    /// Only pairs of this step (small: patch releases; big: minor/major releases).
    #[arg(long, value_enum)]
    step: Option<Step>,
    /// Also run the large-file pairs (1.6 GB of downloads; bundelta's diff alone needs about
    /// 3 GB of RAM and a minute; bsdiff about 7.5 GB).
    #[arg(long)]
    large: bool,
    /// Peers to run, comma-separated (bundelta always runs; `--tools bundelta` runs it
    /// alone; `all` adds zstd-22). Default: every installed peer except zstd-22.
    /// Known: bsdiff, xdelta3, zstd-19, zstd-3, zstd-22, hdiffpatch, detools, qbsdiff.
    #[arg(long, value_delimiter = ',', value_name = "TOOL,...",
          value_parser = clap::builder::PossibleValuesParser::new(tools::ALL.iter().copied().chain(["all"])), hide_possible_values = true)]
    tools: Option<Vec<String>>,
    /// Run every diff and apply N times and report the median wall and CPU seconds (peak RSS:
    /// the largest of the N). Multiplies the run time by N.
    #[arg(long, default_value_t = 1, value_name = "N")]
    runs: usize,
    /// Also write every number as JSON to FILE (the format --check reads).
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Compare with BASELINE (a --json file) and exit 1 if bundelta's patch for a pair in both
    /// grew more than 0.5%, bundelta's apply peak RSS went over the documented 16 MiB, or
    /// bundelta's output failed verification. A peer that fails (times out, crashes, or
    /// rebuilds the wrong bytes) is reported as a note and does not fail the check. Costs
    /// nothing beyond the run itself.
    #[arg(long, value_name = "BASELINE")]
    check: Option<PathBuf>,
    /// List the corpus pairs (fetched or not, sizes) and the tools found, run nothing.
    #[arg(long)]
    list: bool,
    /// Keep the work files (tars, patches, outputs, tool logs) in DIR/PAIR/ instead of a
    /// temporary directory removed at the end. Outputs take as much disk as NEW per tool.
    #[arg(long, value_name = "DIR")]
    keep: Option<PathBuf>,
    /// Kill any child (diff or apply) still running after SECS seconds; that tool fails on
    /// that pair.
    #[arg(long, default_value_t = 3600, value_name = "SECS")]
    timeout: u64,
    /// The corpus directory: DIR/pairs.json, DIR/fetch.py, fetched pairs in DIR/data.
    #[arg(long, default_value = "corpus", value_name = "DIR")]
    corpus: PathBuf,
    /// Never run fetch.py; pairs not yet fetched are reported missing.
    #[arg(long)]
    no_fetch: bool,
    /// No progress bar, no fetch output and no tables (failures are still printed).
    #[arg(short, long)]
    quiet: bool,
    /// The `bundelta` binary to measure. Default: built now by `cargo build --bin bundelta`
    /// with the release profile, in the workspace this harness was built from, wherever
    /// CARGO_TARGET_DIR puts it.
    #[arg(long, value_name = "PATH")]
    bundelta: Option<PathBuf>,
}

/// A pair that could not be run: its name and why.
type Missing = (String, String);

/// A pair to run: where its `old` and `new` are.
struct Pair {
    name: String,
    step: Option<String>,
    dir: PathBuf,
}

/// Removes the work directory when bench ends, unless it is --keep's.
struct WorkDir {
    path: PathBuf,
    keep: bool,
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

fn remove(p: &Path) {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => {
            let _ = fs::remove_dir_all(p);
        }
        Ok(_) => {
            let _ = fs::remove_file(p);
        }
        Err(_) => {}
    }
}

fn commas(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn mib(n: u64) -> String {
    format!("{:.1} MiB", n as f64 / (1 << 20) as f64)
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Builds the `bundelta` binary with this harness's profile and returns its path (from
/// cargo's own report of the artifact, so any CARGO_TARGET_DIR or config is honoured).
fn build_bundelta(quiet: bool) -> Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("the xtask crate has no parent directory")?;
    // Always the release profile, whatever the harness's own: the figures (times, and the
    // documented 16 MiB apply bound that --check enforces) are about release builds. A
    // debug build's apply takes several MiB more for its code and relocations.
    let profile = "release";
    let mut cmd = std::process::Command::new(&cargo);
    cmd.current_dir(workspace)
        .args(["build", "--bin", "bundelta", "--profile", profile])
        .arg("--message-format=json-render-diagnostics")
        .stdout(std::process::Stdio::piped());
    if quiet {
        cmd.arg("--quiet");
    }
    let out = cmd.output().with_context(|| {
        format!(
            "cannot run {} to build bundelta (or give --bundelta PATH)",
            Path::new(&cargo).display()
        )
    })?;
    if !out.status.success() {
        bail!(
            "building bundelta failed ({}): see cargo's messages above",
            out.status
        );
    }
    let exe = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "bundelta")
        .find_map(|m| m["executable"].as_str().map(PathBuf::from));
    exe.context("cargo built no bundelta executable (or give --bundelta PATH)")
}

pub fn run(a: BenchArgs) -> Result<ExitCode> {
    if a.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let exe = match &a.bundelta {
        Some(p) if p.is_file() => p.clone(),
        Some(p) => bail!("--bundelta {}: no such file", p.display()),
        None => build_bundelta(a.quiet)?,
    };
    let python = corpus::python();
    let corpus = if a.corpus.join("pairs.json").is_file() {
        Some(Corpus::load(&a.corpus)?)
    } else {
        None
    };
    let tool_names = selected_tool_names(&a.tools)?;
    let mut tools = Vec::new();
    let mut skipped = serde_json::Map::new();
    for name in &tool_names {
        match tools::find(name, &exe, &python) {
            Ok(t) => tools.push(t),
            Err(why) => {
                skipped.insert(name.to_string(), Value::String(why));
            }
        }
    }

    if a.list {
        list(corpus.as_ref(), &a.corpus, &tools, &skipped);
        return Ok(ExitCode::SUCCESS);
    }
    for (name, why) in &skipped {
        if !a.quiet {
            eprintln!("bench: skipping {name}: {}", why.as_str().unwrap_or(""));
        }
    }

    let baseline = match &a.check {
        Some(p) => Some(load_report(p)?),
        None => None,
    };
    let (pairs, mut missing) = select_pairs(&a, corpus.as_ref(), baseline.as_ref())?;
    if pairs.is_empty() && missing.is_empty() {
        bail!("no pair selected (see cargo xtask bench --list)");
    }
    let pairs = fetch_missing(&a, corpus.as_ref(), &python, pairs, &mut missing)?;
    for (name, why) in &missing {
        eprintln!("bench: missing pair {name}: {why}");
    }

    let work = WorkDir {
        path: match &a.keep {
            Some(d) => d.clone(),
            None => std::env::temp_dir().join(format!("bundelta-bench-{}", std::process::id())),
        },
        keep: a.keep.is_some(),
    };
    fs::create_dir_all(&work.path)
        .with_context(|| format!("{}: cannot create", work.path.display()))?;
    measure::catch_interrupts();

    let pb = if a.quiet || !std::io::stderr().is_terminal() {
        ProgressBar::hidden()
    } else {
        let pb = ProgressBar::new((pairs.len() * tools.len()) as u64);
        pb.set_style(
            ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {wide_msg}")
                .expect("static template")
                .progress_chars("=> "),
        );
        pb
    };
    let ctx = Ctx {
        runs: a.runs,
        timeout: Duration::from_secs(a.timeout),
        keep: a.keep.is_some(),
        quiet: a.quiet,
        pb: pb.clone(),
    };
    let mut done = Vec::new();
    for pair in &pairs {
        match run_pair(&ctx, pair, &tools, &work.path) {
            Ok(v) => {
                if !a.quiet {
                    pb.suspend(|| print_pair(&v));
                }
                done.push(v);
            }
            Err(e) if measure::interrupted() => {
                pb.finish_and_clear();
                return Err(e);
            }
            Err(e) => missing.push((pair.name.clone(), format!("{e:#}"))),
        }
    }
    pb.finish_and_clear();

    let summary = summarize(&done, &tools);
    let report = json!({
        "bundelta_version": env!("CARGO_PKG_VERSION"),
        "bundelta_given": a.bundelta.is_some(),
        "host": {
            "arch": std::env::consts::ARCH,
            "os": std::env::consts::OS,
            "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        },
        "runs": a.runs,
        "timeout_s": a.timeout,
        "rss_floor_kib": measure::rss_floor_kib(),
        "tools": tools.iter().map(|t| (t.name.to_string(), json!(t.version))).collect::<serde_json::Map<_, _>>(),
        "skipped_tools": skipped,
        "pairs": done,
        "missing_pairs": missing.iter().map(|(n, w)| json!({"name": n, "reason": w})).collect::<Vec<_>>(),
        "summary": summary,
    });
    if !a.quiet {
        print_summary(&report);
    }
    if let Some(p) = &a.json {
        let text = serde_json::to_string_pretty(&report)? + "\n";
        fs::write(p, text).with_context(|| format!("{}: cannot write", p.display()))?;
    }

    let mut failed = false;
    for (pair, tool, why) in unverified(&report) {
        eprintln!("bench: {pair}: {tool} NOT VERIFIED: {why}");
        // Under --check (CI), a peer's failure (a timeout on a loaded machine, a broken peer
        // install) is reported but only bundelta's own results decide the exit status.
        failed |= a.check.is_none() || tool == "bundelta";
    }
    if let (Some(base), Some(path)) = (&baseline, &a.check) {
        let c = check(base, &report);
        for n in &c.notes {
            eprintln!("bench check: note: {n}");
        }
        for f in &c.failures {
            eprintln!("bench check: FAIL: {f}");
        }
        if c.failures.is_empty() {
            if !a.quiet {
                eprintln!(
                    "bench check: ok against {}: {} pairs compared (bundelta's patch within +{SIZE_TOLERANCE_PCT}%, apply peak RSS within 16 MiB, bundelta's outputs verified)",
                    path.display(),
                    c.compared
                );
            }
        } else {
            eprintln!(
                "bench check: {} failure(s) against {}",
                c.failures.len(),
                path.display()
            );
            failed = true;
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn selected_tool_names(arg: &Option<Vec<String>>) -> Result<Vec<&'static str>> {
    let Some(list) = arg else {
        return Ok(tools::DEFAULT.to_vec());
    };
    let mut names = vec!["bundelta"];
    for n in list.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
        if n == "all" {
            for t in tools::ALL {
                if !names.contains(t) {
                    names.push(t);
                }
            }
            continue;
        }
        let Some(t) = tools::ALL.iter().find(|t| **t == n) else {
            bail!(
                "--tools: unknown tool {n:?} (known: {}, all)",
                tools::ALL.join(", ")
            );
        };
        if !names.contains(t) {
            names.push(t);
        }
    }
    // Table order, bundelta first.
    names.sort_by_key(|n| tools::ALL.iter().position(|t| t == n));
    Ok(names)
}

fn select_pairs(
    a: &BenchArgs,
    corpus: Option<&Corpus>,
    baseline: Option<&Value>,
) -> Result<(Vec<Pair>, Vec<Missing>)> {
    let mut missing = Vec::new();
    let step_ok = |e: &Entry| match a.step {
        None => true,
        Some(Step::Small) => e.step == "small",
        Some(Step::Big) => e.step == "big",
    };
    let from_entry = |e: &Entry, c: &Corpus| Pair {
        name: e.name.clone(),
        step: Some(e.step.clone()),
        dir: c.data().join(&e.name),
    };
    let mut names: Vec<String> = a.pairs.clone();
    if names.is_empty() && a.step.is_none() {
        if let Some(base) = baseline {
            // The baseline's pairs: manifest names, or the directories of local pairs.
            names = report_pairs(base)
                .map(|(n, p)| match p["dir"].as_str() {
                    Some(d) if corpus.and_then(|c| c.get(n)).is_none() => d.to_string(),
                    _ => n.to_string(),
                })
                .collect();
            if names.is_empty() {
                bail!("the baseline has no pairs");
            }
        }
    }
    let mut pairs = Vec::new();
    if names.is_empty() {
        let Some(c) = corpus else {
            bail!(
                "no {} here: run from the repository root, pass --corpus DIR, or name pair directories",
                a.corpus.join("pairs.json").display()
            );
        };
        for e in &c.entries {
            if step_ok(e) && (a.large || e.kind != "large-file") {
                pairs.push(from_entry(e, c));
            }
        }
        return Ok((pairs, missing));
    }
    for n in &names {
        if let Some((c, e)) = corpus.and_then(|c| c.get(n).map(|e| (c, e))) {
            if step_ok(e) {
                pairs.push(from_entry(e, c));
            }
            continue;
        }
        let d = Path::new(n);
        if d.join("old").exists() && d.join("new").exists() {
            let name = d
                .canonicalize()
                .ok()
                .and_then(|p| p.file_name().map(|s| s.to_string_lossy().into_owned()))
                .unwrap_or_else(|| n.clone());
            pairs.push(Pair {
                name,
                step: None,
                dir: d.to_path_buf(),
            });
        } else if a.pairs.is_empty() {
            // A baseline pair this corpus does not know (a local pair: its directory's name).
            let name = d
                .file_name()
                .map_or(n.clone(), |f| f.to_string_lossy().into_owned());
            missing.push((
                name,
                "not in the corpus manifest, no such directory".to_string(),
            ));
        } else {
            let known = match corpus {
                Some(c) => format!(
                    "known pairs: {}",
                    c.entries
                        .iter()
                        .map(|e| e.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                None => format!("no {}", a.corpus.join("pairs.json").display()),
            };
            bail!("{n}: not a corpus pair nor a directory holding old and new ({known})");
        }
    }
    Ok((pairs, missing))
}

/// Runs fetch.py for the manifest pairs that are not fetched yet (or were fetched from an
/// older manifest entry); returns the pairs that are ready.
fn fetch_missing(
    a: &BenchArgs,
    corpus: Option<&Corpus>,
    python: &Path,
    pairs: Vec<Pair>,
    missing: &mut Vec<Missing>,
) -> Result<Vec<Pair>> {
    let Some(c) = corpus else {
        return Ok(pairs);
    };
    let stale: Vec<&str> = pairs
        .iter()
        .filter_map(|p| c.get(&p.name).filter(|_| p.step.is_some()))
        .filter(|e| !c.is_current(e))
        .map(|e| e.name.as_str())
        .collect();
    let mut fetch_error = None;
    if !stale.is_empty() && !a.no_fetch {
        if !a.quiet {
            eprintln!("bench: fetching {}", stale.join(" "));
        }
        fetch_error = match c.fetch(python, &stale, a.quiet) {
            Ok(e) => e,
            Err(e) => Some(format!("{e:#}")),
        };
    }
    let mut ready = Vec::new();
    for p in pairs {
        let entry = c.get(&p.name).filter(|_| p.step.is_some());
        match entry {
            Some(e) if !c.is_current(e) => {
                let why = if a.no_fetch {
                    "not fetched (--no-fetch)".to_string()
                } else {
                    format!(
                        "fetch failed{}",
                        fetch_error
                            .as_deref()
                            .map(|e| format!(" ({e})"))
                            .unwrap_or_default()
                    )
                };
                missing.push((p.name, why));
            }
            _ => ready.push(p),
        }
    }
    Ok(ready)
}

fn list(
    corpus: Option<&Corpus>,
    dir: &Path,
    tools: &[Tool],
    skipped: &serde_json::Map<String, Value>,
) {
    match corpus {
        None => println!(
            "no {} (pass --corpus DIR)",
            dir.join("pairs.json").display()
        ),
        Some(c) => {
            println!(
                "{:<22} {:<13} {:<6} {:>16} {:>16}  state",
                "pair", "kind", "step", "old", "new"
            );
            for e in &c.entries {
                let d = c.data().join(&e.name);
                let (o, n, state) = if c.is_current(e) {
                    let size = |p: &Path| {
                        corpus::size_of(p)
                            .map(|(b, f)| {
                                if p.is_dir() {
                                    format!("{} ({f})", mib(b))
                                } else {
                                    mib(b)
                                }
                            })
                            .unwrap_or_default()
                    };
                    (size(&d.join("old")), size(&d.join("new")), "fetched")
                } else {
                    (String::new(), String::new(), "not fetched")
                };
                let note = if e.kind == "large-file" {
                    ", runs only when named or with --large"
                } else {
                    ""
                };
                println!(
                    "{:<22} {:<13} {:<6} {o:>16} {n:>16}  {state}{note}",
                    e.name, e.kind, e.step
                );
            }
        }
    }
    println!();
    for t in tools {
        println!("tool {:<11} {}", t.name, t.version);
    }
    for (n, why) in skipped {
        println!("tool {n:<11} not available: {}", why.as_str().unwrap_or(""));
    }
}

struct Ctx {
    runs: usize,
    timeout: Duration,
    keep: bool,
    quiet: bool,
    pb: ProgressBar,
}

/// The inputs one tool diffs: the pair itself, or its tars.
struct Inputs<'a> {
    old: &'a Path,
    new: &'a Path,
    sizes: Sizes,
    label: &'static str,
}

fn run_pair(ctx: &Ctx, pair: &Pair, tools: &[Tool], work_root: &Path) -> Result<Value> {
    let old = pair.dir.join("old");
    let new = pair.dir.join("new");
    let (mo, mn) = (
        fs::metadata(&old).with_context(|| format!("{}: cannot stat", old.display()))?,
        fs::metadata(&new).with_context(|| format!("{}: cannot stat", new.display()))?,
    );
    let is_dir = match (mo.is_dir(), mn.is_dir()) {
        (true, true) => true,
        (false, false) if mo.is_file() && mn.is_file() => false,
        _ => bail!(
            "{}: old and new must be two files or two directories",
            pair.dir.display()
        ),
    };
    let (old_bytes, old_files) = corpus::size_of(&old)?;
    let (new_bytes, new_files) = corpus::size_of(&new)?;
    // Only files of bench's own names are replaced in there (a --keep DIR may hold others).
    let work = work_root.join(&pair.name);
    fs::create_dir_all(&work).with_context(|| format!("{}: cannot create", work.display()))?;

    let mut v = json!({
        "name": pair.name, "step": pair.step, "type": if is_dir { "dir" } else { "file" },
        "old_bytes": old_bytes, "new_bytes": new_bytes, "old_files": old_files, "new_files": new_files,
    });
    if pair.step.is_none() {
        // Not a manifest pair: where it is, so that --check with this report finds it again.
        let abs = pair.dir.canonicalize().unwrap_or_else(|_| pair.dir.clone());
        v["dir"] = json!(abs);
    }
    let direct = Inputs {
        old: &old,
        new: &new,
        sizes: Sizes {
            old: old_bytes,
            new: new_bytes,
        },
        label: if is_dir { "dir" } else { "file" },
    };
    let (old_tar, new_tar) = (work.join("old.tar"), work.join("new.tar"));
    let mut tarred = None;
    if is_dir && tools.iter().any(|t| t.files_only) {
        ctx.pb.set_message(format!("{}: writing tars", pair.name));
        let so = tarball::write_tar(&old, &old_tar)?;
        let sn = tarball::write_tar(&new, &new_tar)?;
        v["old_tar_bytes"] = json!(so);
        v["new_tar_bytes"] = json!(sn);
        tarred = Some(Inputs {
            old: &old_tar,
            new: &new_tar,
            sizes: Sizes { old: so, new: sn },
            label: "tar",
        });
    }
    let mut results = Vec::new();
    for t in tools {
        let inputs = match &tarred {
            Some(tar) if t.files_only => tar,
            _ => &direct,
        };
        if ctx.pb.is_hidden() && !ctx.quiet {
            eprintln!("bench: {}: {} ...", pair.name, t.name);
        }
        let mut r = run_tool(ctx, &pair.name, t, inputs, &work)?;
        if let Some(b) = r["patch_bytes"].as_u64() {
            r["patch_pct_of_new"] = json!(round3(100.0 * b as f64 / new_bytes.max(1) as f64));
        }
        results.push(r);
        ctx.pb.inc(1);
    }
    if !ctx.keep {
        remove(&work);
    }
    v["results"] = Value::Array(results);
    Ok(v)
}

/// Runs `cmd` `ctx.runs` times, removing `produced` before each run; the failure text
/// (status and log tail) as soon as one run fails or writes nothing.
fn measured_runs(
    ctx: &Ctx,
    cmd: &[OsString],
    log: &Path,
    msg: &str,
    produced: &Path,
) -> Result<std::result::Result<Vec<Measured>, String>> {
    let mut runs = Vec::new();
    for i in 0..ctx.runs {
        if ctx.runs > 1 {
            ctx.pb.set_message(format!("{msg} {}/{}", i + 1, ctx.runs));
        } else {
            ctx.pb.set_message(msg.to_string());
        }
        remove(produced);
        let m = measure::run(cmd, log, ctx.timeout)?;
        if measure::interrupted() {
            bail!("interrupted");
        }
        if !m.ok {
            return Ok(Err(format!("{} ({}): {}", msg, m.status, m.log_tail)));
        }
        if fs::symlink_metadata(produced).is_err() {
            return Ok(Err(format!(
                "{msg}: exit 0 but wrote nothing: {}",
                m.log_tail
            )));
        }
        runs.push(m);
    }
    Ok(Ok(runs))
}

fn run_tool(ctx: &Ctx, pair: &str, t: &Tool, inp: &Inputs, work: &Path) -> Result<Value> {
    let patch = work.join(format!("{}.patch", t.name));
    let out = work.join(format!("{}.out", t.name));
    let log = work.join(format!("{}.log", t.name));
    let diff_cmd = t.diff_cmd(inp.old, inp.new, &patch, inp.sizes);
    let apply_cmd = t.apply_cmd(inp.old, &patch, &out, inp.sizes);
    let shown = t.shown(inp.sizes);
    let mut r = json!({
        "tool": t.name, "version": t.version, "input": inp.label,
        "patch_bytes": null, "patch_pct_of_new": null,
        "diff_wall_s": null, "diff_cpu_s": null, "diff_maxrss_kib": null,
        "apply_wall_s": null, "apply_cpu_s": null, "apply_maxrss_kib": null,
        "verified": false, "error": null,
        "diff_cmd": shown.0, "apply_cmd": shown.1,
    });
    let summarize = |r: &mut Value, key: &str, runs: &[Measured]| {
        let wall: Vec<f64> = runs.iter().map(|m| m.wall_s).collect();
        let cpu: Vec<f64> = runs.iter().map(|m| m.cpu_s).collect();
        r[format!("{key}_wall_s")] = json!(round3(median(&wall)));
        r[format!("{key}_cpu_s")] = json!(round3(median(&cpu)));
        r[format!("{key}_maxrss_kib")] = json!(runs.iter().map(|m| m.maxrss_kib).max());
        if runs.len() > 1 {
            r[format!("{key}_wall_s_runs")] =
                json!(wall.iter().map(|w| round3(*w)).collect::<Vec<_>>());
        }
    };
    let result = (|| -> Result<std::result::Result<(), String>> {
        let diffs = match measured_runs(
            ctx,
            &diff_cmd,
            &log,
            &format!("{pair}: {} diff", t.name),
            &patch,
        )? {
            Ok(d) => d,
            Err(e) => return Ok(Err(e)),
        };
        summarize(&mut r, "diff", &diffs);
        r["patch_bytes"] = json!(fs::metadata(&patch)?.len());
        let applies = match measured_runs(
            ctx,
            &apply_cmd,
            &log,
            &format!("{pair}: {} apply", t.name),
            &out,
        )? {
            Ok(d) => d,
            Err(e) => return Ok(Err(e)),
        };
        summarize(&mut r, "apply", &applies);
        ctx.pb.set_message(format!("{pair}: {} verify", t.name));
        Ok(match verify::diff_output(&out, inp.new)? {
            None => Ok(()),
            Some(why) => Err(format!("output differs: {why}")),
        })
    })()?;
    match result {
        Ok(()) => r["verified"] = json!(true),
        Err(e) => r["error"] = json!(e),
    }
    if !ctx.keep {
        remove(&patch);
        remove(&out);
        remove(&log);
    }
    Ok(r)
}

/// Per tool: the pairs it completed, its total patch bytes over them and bundelta's total
/// over the same pairs.
fn summarize(pairs: &[Value], tools: &[Tool]) -> Value {
    let mut rows = Vec::new();
    for t in tools {
        let (mut n, mut mine, mut theirs, mut dwall, mut awall) = (0u64, 0u64, 0u64, 0.0, 0.0);
        for p in pairs {
            let find = |name: &str| {
                p["results"].as_array().and_then(|rs| {
                    rs.iter()
                        .find(|r| r["tool"] == name && r["verified"] == true)
                })
            };
            let (Some(r), Some(b)) = (find(t.name), find("bundelta")) else {
                continue;
            };
            n += 1;
            mine += r["patch_bytes"].as_u64().unwrap_or(0);
            theirs += b["patch_bytes"].as_u64().unwrap_or(0);
            dwall += r["diff_wall_s"].as_f64().unwrap_or(0.0);
            awall += r["apply_wall_s"].as_f64().unwrap_or(0.0);
        }
        rows.push(json!({
            "tool": t.name, "pairs": n, "patch_bytes": mine, "bundelta_patch_bytes": theirs,
            "ratio_to_bundelta": if theirs > 0 { json!((mine as f64 / theirs as f64 * 1e4).round() / 1e4) } else { Value::Null },
            "diff_wall_s": round3(dwall), "apply_wall_s": round3(awall),
        }));
    }
    Value::Array(rows)
}

fn cell_f(v: &Value, digits: usize) -> String {
    v.as_f64()
        .map(|x| format!("{x:.digits$}"))
        .unwrap_or_else(|| "-".into())
}

fn cell_mib(v: &Value) -> String {
    v.as_u64()
        .map(|k| format!("{:.1}", k as f64 / 1024.0))
        .unwrap_or_else(|| "-".into())
}

fn print_rows(rows: &[Vec<String>]) {
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    for (k, row) in rows.iter().enumerate() {
        let cells: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if i == 0 {
                    format!("{c:<w$}", w = widths[i])
                } else {
                    format!("{c:>w$}", w = widths[i])
                }
            })
            .collect();
        println!("{}", cells.join("  ").trim_end());
        if k == 0 {
            println!(
                "{}",
                widths
                    .iter()
                    .map(|w| "-".repeat(*w))
                    .collect::<Vec<_>>()
                    .join("  ")
            );
        }
    }
}

fn print_pair(p: &Value) {
    let mut head = format!(
        "== {} ({} pair): old {}, new {}",
        p["name"].as_str().unwrap_or(""),
        p["type"].as_str().unwrap_or(""),
        mib(p["old_bytes"].as_u64().unwrap_or(0)),
        mib(p["new_bytes"].as_u64().unwrap_or(0)),
    );
    if p["type"] == "dir" {
        head += &format!(
            " ({} -> {} files",
            p["old_files"].as_u64().unwrap_or(0),
            p["new_files"].as_u64().unwrap_or(0)
        );
        if let (Some(o), Some(n)) = (p["old_tar_bytes"].as_u64(), p["new_tar_bytes"].as_u64()) {
            head += &format!("; tars {} -> {}", mib(o), mib(n));
        }
        head += ")";
    }
    println!("{head}");
    let mut rows = vec![[
        "tool",
        "patch bytes",
        "% new",
        "diff s",
        "diff cpu s",
        "diff RSS MiB",
        "apply s",
        "apply RSS MiB",
        "verified",
    ]
    .map(String::from)
    .to_vec()];
    let empty = Vec::new();
    let results = p["results"].as_array().unwrap_or(&empty);
    for r in results {
        let name = r["tool"].as_str().unwrap_or("").to_string();
        rows.push(vec![
            if r["input"] == "tar" {
                format!("{name} (tar)")
            } else {
                name
            },
            r["patch_bytes"]
                .as_u64()
                .map(commas)
                .unwrap_or_else(|| "-".into()),
            cell_f(&r["patch_pct_of_new"], 2),
            cell_f(&r["diff_wall_s"], 2),
            cell_f(&r["diff_cpu_s"], 2),
            cell_mib(&r["diff_maxrss_kib"]),
            cell_f(&r["apply_wall_s"], 2),
            cell_mib(&r["apply_maxrss_kib"]),
            if r["verified"] == true {
                "yes".into()
            } else {
                "NO".into()
            },
        ]);
    }
    print_rows(&rows);
    for r in results {
        if let Some(e) = r["error"].as_str() {
            println!("  ! {}: {e}", r["tool"].as_str().unwrap_or(""));
        }
    }
    println!();
}

fn print_summary(report: &Value) {
    let n = report["pairs"].as_array().map_or(0, Vec::len);
    println!("== summary over {n} pairs: each tool's total patch bytes over the pairs it completed, relative to bundelta's total over the same pairs");
    let mut rows = vec![[
        "tool",
        "pairs",
        "patch bytes",
        "bundelta bytes",
        "vs bundelta",
        "diff s",
        "apply s",
    ]
    .map(String::from)
    .to_vec()];
    for s in report["summary"].as_array().into_iter().flatten() {
        rows.push(vec![
            s["tool"].as_str().unwrap_or("").to_string(),
            s["pairs"].to_string(),
            s["patch_bytes"].as_u64().map(commas).unwrap_or_default(),
            s["bundelta_patch_bytes"]
                .as_u64()
                .map(commas)
                .unwrap_or_default(),
            s["ratio_to_bundelta"]
                .as_f64()
                .map(|r| format!("{:+.1}%", (r - 1.0) * 100.0))
                .unwrap_or_else(|| "-".into()),
            cell_f(&s["diff_wall_s"], 1),
            cell_f(&s["apply_wall_s"], 1),
        ]);
    }
    print_rows(&rows);
    for m in report["missing_pairs"].as_array().into_iter().flatten() {
        println!(
            "  missing: {}: {}",
            m["name"].as_str().unwrap_or(""),
            m["reason"].as_str().unwrap_or("")
        );
    }
}

fn load_report(p: &Path) -> Result<Value> {
    let text = fs::read_to_string(p).with_context(|| format!("{}: cannot read", p.display()))?;
    let v: Value =
        serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", p.display()))?;
    if !v["pairs"].is_array() {
        bail!(
            "{}: not a cargo xtask bench --json report (no \"pairs\")",
            p.display()
        );
    }
    Ok(v)
}

/// (pair name, pair object) of a report.
fn report_pairs(r: &Value) -> impl Iterator<Item = (&str, &Value)> {
    r["pairs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["name"].as_str().map(|n| (n, p)))
}

fn tool_result<'a>(pair: &'a Value, tool: &str) -> Option<&'a Value> {
    pair["results"]
        .as_array()?
        .iter()
        .find(|r| r["tool"] == tool)
}

/// (pair, tool, why) for every result that did not verify.
fn unverified(report: &Value) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for (name, p) in report_pairs(report) {
        for r in p["results"].as_array().into_iter().flatten() {
            if r["verified"] != true {
                out.push((
                    name.to_string(),
                    r["tool"].as_str().unwrap_or("?").to_string(),
                    r["error"].as_str().unwrap_or("no result").to_string(),
                ));
            }
        }
    }
    out
}

pub struct Check {
    pub failures: Vec<String>,
    pub notes: Vec<String>,
    pub compared: usize,
}

/// Whether `now` is more than SIZE_TOLERANCE_PCT over `base` (in integers: 0.5% = 5/1000).
fn over_tolerance(now: u64, base: u64) -> bool {
    let permille = (SIZE_TOLERANCE_PCT * 10.0).round() as u128;
    u128::from(now) * 1000 > u128::from(base) * (1000 + permille)
}

/// `--check`: this run against a baseline report.
pub fn check(base: &Value, run: &Value) -> Check {
    let mut c = Check {
        failures: Vec::new(),
        notes: Vec::new(),
        compared: 0,
    };
    for (pair, tool, why) in unverified(run) {
        let line = format!("{pair}: {tool}'s output was not verified: {why}");
        if tool == "bundelta" {
            c.failures.push(line);
        } else {
            c.notes.push(line);
        }
    }
    for (name, p) in report_pairs(run) {
        let rss = tool_result(p, "bundelta").and_then(|r| r["apply_maxrss_kib"].as_u64());
        if let Some(k) = rss.filter(|k| *k > APPLY_RSS_BOUND_KIB) {
            c.failures.push(format!(
                "{name}: bundelta apply peak RSS {} KiB ({:.1} MiB) is over the documented bound of 16 MiB",
                commas(k),
                k as f64 / 1024.0
            ));
        }
    }
    let missing_why = |name: &str| {
        run["missing_pairs"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| m["name"] == name)
            .and_then(|m| m["reason"].as_str())
            .unwrap_or("not selected")
            .to_string()
    };
    for (name, bp) in report_pairs(base) {
        let Some(base_bytes) = tool_result(bp, "bundelta").and_then(|r| r["patch_bytes"].as_u64())
        else {
            c.notes
                .push(format!("{name}: the baseline has no bundelta patch size"));
            continue;
        };
        let Some((_, rp)) = report_pairs(run).find(|(n, _)| *n == name) else {
            c.notes.push(format!(
                "{name}: in the baseline but missing from this run ({})",
                missing_why(name)
            ));
            continue;
        };
        let Some(now) = tool_result(rp, "bundelta").and_then(|r| r["patch_bytes"].as_u64()) else {
            continue; // not verified: already a failure above
        };
        c.compared += 1;
        let growth = (now as f64 / base_bytes.max(1) as f64 - 1.0) * 100.0;
        if over_tolerance(now, base_bytes) {
            c.failures.push(format!(
                "{name}: bundelta's patch is {} bytes, {growth:+.2}% over the baseline's {} (limit +{SIZE_TOLERANCE_PCT}%)",
                commas(now),
                commas(base_bytes)
            ));
        }
    }
    for (name, _) in report_pairs(run) {
        if !report_pairs(base).any(|(n, _)| n == name) {
            c.notes
                .push(format!("{name}: not in the baseline (size not checked)"));
        }
    }
    if c.compared == 0 {
        c.failures
            .push("no pair of the baseline was run: nothing was checked".to_string());
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(pairs: &[(&str, u64, u64, bool)]) -> Value {
        json!({"pairs": pairs.iter().map(|(n, bytes, rss, ok)| json!({
            "name": n,
            "results": [{"tool": "bundelta", "patch_bytes": bytes, "apply_maxrss_kib": rss,
                         "verified": ok, "error": if *ok { Value::Null } else { json!("boom") }}],
        })).collect::<Vec<_>>(), "missing_pairs": []})
    }

    #[test]
    fn check_flags_growth_rss_and_verification() {
        let base = report(&[("a", 10_000, 5000, true), ("b", 20_000, 5000, true)]);
        let c = check(&base, &base);
        assert!(c.failures.is_empty(), "{:?}", c.failures);
        assert_eq!(c.compared, 2);

        // +0.5% exactly passes; one byte more fails and names pair and numbers.
        let c = check(
            &base,
            &report(&[("a", 10_050, 5000, true), ("b", 20_101, 5000, true)]),
        );
        assert_eq!(c.failures.len(), 1, "{:?}", c.failures);
        assert!(c.failures[0].starts_with("b: "), "{:?}", c.failures);
        assert!(c.failures[0].contains("20,101") && c.failures[0].contains("20,000"));

        // A peer's failure is a note, bundelta's a failure.
        let mut peer = base.clone();
        peer["pairs"][0]["results"]
            .as_array_mut()
            .unwrap()
            .push(json!({"tool": "bsdiff", "verified": false, "error": "timeout"}));
        let c = check(&base, &peer);
        assert!(c.failures.is_empty(), "{:?}", c.failures);
        assert!(c
            .notes
            .iter()
            .any(|n| n.contains("bsdiff's output was not verified")));
        let c = check(
            &base,
            &report(&[("a", 9_000, 16 * 1024 + 1, true), ("b", 1, 10, false)]),
        );
        assert_eq!(c.failures.len(), 2, "{:?}", c.failures);
        assert!(c
            .failures
            .iter()
            .any(|f| f.starts_with("a: bundelta apply peak RSS")));
        assert!(c
            .failures
            .iter()
            .any(|f| f.starts_with("b: bundelta's output was not verified")));

        // A baseline pair missing from the run is reported; a run with none fails.
        let c = check(
            &base,
            &report(&[("a", 10_000, 5000, true), ("z", 1, 1, true)]),
        );
        assert!(c.failures.is_empty(), "{:?}", c.failures);
        assert!(c
            .notes
            .iter()
            .any(|n| n.starts_with("b: in the baseline but missing")));
        assert!(c
            .notes
            .iter()
            .any(|n| n.starts_with("z: not in the baseline")));
        let c = check(&base, &report(&[]));
        assert_eq!(c.failures.len(), 1);
    }

    #[test]
    fn thousands() {
        assert_eq!(commas(0), "0");
        assert_eq!(commas(999), "999");
        assert_eq!(commas(1000), "1,000");
        assert_eq!(commas(1234567), "1,234,567");
    }
}
