//! `bundelta-apply`: the applier alone, for clients (a phone, a router, a board). It builds
//! with the apply core only (`cargo build --release --no-default-features --bin
//! bundelta-apply`, plus `--features lzma,bzip2,inflate` for the other codecs and archive
//! patches) and parses its arguments by hand: no argument parser, no progress bar, no JSON,
//! no diff engine, so the binary stays small (sizes in the README).
//!
//! ```text
//! bundelta-apply OLD PATCH -o OUT        build the new version at OUT (must not exist)
//! bundelta-apply OLD - -o OUT            the patch from standard input, read once
//! bundelta-apply --in-place OLD PATCH    update OLD itself, crash-safely
//!   --memory-limit SIZE   refuse patches needing more heap (default 12M; K, M, G suffixes)
//!   --pubkey KEY.pub      refuse patches not signed by this key's secret key
//!   --serial              decode the patch's streams on the applying thread (no helper
//!                         threads: the least memory; the output is the same)
//!   -q                    print nothing on success
//! ```
//!
//! Exit status: 0 applied and verified, 1 refused or failed (one line on stderr says why),
//! 2 usage error.

use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str =
    "usage: bundelta-apply [--memory-limit SIZE] [--pubkey KEY.pub] [-q] OLD PATCH|- -o OUT
       bundelta-apply --in-place [--memory-limit SIZE] [--pubkey KEY.pub] [-q] OLD PATCH";

struct Args {
    old: PathBuf,
    patch: PathBuf,
    out: Option<PathBuf>,
    in_place: bool,
    memory_limit: u64,
    pubkey: Option<PathBuf>,
    serial: bool,
    quiet: bool,
}

fn parse_size(s: &str) -> Option<u64> {
    let (num, mul) = match s.char_indices().last()? {
        (i, 'K' | 'k') => (&s[..i], 1u64 << 10),
        (i, 'M' | 'm') => (&s[..i], 1 << 20),
        (i, 'G' | 'g') => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<u64>().ok()?.checked_mul(mul)
}

fn parse(args: &[String]) -> Result<Args, String> {
    let mut pos = Vec::new();
    let mut out = None;
    let mut in_place = false;
    let mut memory_limit = bundelta::DEFAULT_MEMORY_LIMIT;
    let mut pubkey = None;
    let mut quiet = false;
    let mut serial = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match a.as_str() {
            "-o" | "--output" => out = Some(PathBuf::from(value(a)?)),
            "--in-place" => in_place = true,
            "--memory-limit" => {
                let v = value(a)?;
                memory_limit =
                    parse_size(&v).ok_or_else(|| format!("--memory-limit: bad size {v:?}"))?;
            }
            "--pubkey" => pubkey = Some(PathBuf::from(value(a)?)),
            "-q" | "--quiet" => quiet = true,
            "--serial" => serial = true,
            "-h" | "--help" => return Err(String::new()),
            s if s.starts_with('-') && s != "-" => return Err(format!("unknown option {s}")),
            _ => pos.push(PathBuf::from(a)),
        }
    }
    let [old, patch] = <[PathBuf; 2]>::try_from(pos)
        .map_err(|p| format!("expected OLD and PATCH, got {} arguments", p.len()))?;
    match (in_place, &out) {
        (true, Some(_)) => return Err("--in-place and -o exclude each other".into()),
        (false, None) => return Err("-o OUT is required (or --in-place)".into()),
        _ => {}
    }
    if in_place && patch.as_os_str() == "-" {
        return Err("--in-place needs the patch as a file".into());
    }
    Ok(Args {
        old,
        patch,
        out,
        in_place,
        memory_limit,
        pubkey,
        serial,
        quiet,
    })
}

fn run(a: Args) -> bundelta::Result<String> {
    let mut p = bundelta::Patcher::new();
    p.memory_limit(a.memory_limit).parallel(!a.serial);
    if let Some(k) = &a.pubkey {
        let text = std::fs::read(k).map_err(|e| bundelta::Error::Io {
            path: k.clone(),
            op: "read",
            source: e,
        })?;
        p.require_signature(bundelta::PublicKey::from_text(&text)?);
    }
    if a.in_place {
        let r = p.apply_in_place(&a.old, &a.patch)?;
        return Ok(match r.outcome {
            bundelta::InPlaceOutcome::AlreadyUpToDate => {
                format!("{}: already up to date", a.old.display())
            }
            _ => format!("{}: updated in place", a.old.display()),
        });
    }
    let out = a.out.expect("checked by parse");
    let r = if a.patch.as_os_str() == "-" {
        let patch = p.open_reader(std::io::stdin(), "(standard input)")?;
        p.apply_patch(&a.old, patch, &out)?
    } else {
        p.apply(&a.old, &a.patch, &out)?
    };
    Ok(format!(
        "wrote {}: {} files, {} bytes, verified",
        out.display(),
        r.files,
        r.bytes
    ))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let a = match parse(&args) {
        Ok(a) => a,
        Err(e) if e.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("bundelta-apply: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let quiet = a.quiet;
    match run(a) {
        Ok(msg) => {
            if !quiet {
                eprintln!("{msg}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bundelta-apply: error: {e}");
            ExitCode::FAILURE
        }
    }
}
