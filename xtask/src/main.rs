//! `cargo xtask`: bundelta's development tasks, kept out of the shipped `bundelta` binary.
//!
//! Today one task: `cargo xtask bench`, bundelta against the peer delta tools on the corpus's
//! real version pairs (README, "Benchmark"). The harness runs every tool, bundelta included,
//! as a measured child process, so it needs the `bundelta` binary: it builds it with the same
//! profile as itself (`cargo build --release --bin bundelta` under `cargo xtask`, wherever
//! `CARGO_TARGET_DIR` puts it), or takes the one given with `--bundelta`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[cfg(not(unix))]
compile_error!("the benchmark harness (child processes, rusage, signals) is unix-only");

mod bench;
mod corpus;
mod measure;
mod tarball;
mod tools;
mod verify;

/// bundelta's development tasks (never part of a shipped build).
#[derive(Parser)]
#[command(name = "cargo xtask", version, max_term_width = 100)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Measure bundelta against peer delta tools on the corpus pairs (sizes, times, peak
    /// RSS, verified outputs); `bench --help` says what and how.
    #[command(long_about = bench::LONG_ABOUT)]
    Bench(bench::BenchArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Bench(a) => bench::run(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
