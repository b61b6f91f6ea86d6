//! `cargo xtask bench` on tiny local pairs with bundelta alone (no network, no peers): the JSON
//! report's numbers, medians over --runs, and --check against baselines.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

#[path = "../../tests/rng.rs"]
mod rng;
use rng::Rng;

fn bench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xtask"))
        .arg("bench")
        .args(args)
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A file pair and a directory pair (subdirectory, empty directory, executable, symlink,
/// a renamed file) under `root`.
fn make_pairs(root: &Path) -> (String, String) {
    let mut rng = Rng(31);
    let fp = root.join("filepair");
    fs::create_dir_all(&fp).unwrap();
    let old = rng.text(300_000);
    fs::write(fp.join("old"), &old).unwrap();
    fs::write(fp.join("new"), rng.edit(&old, 20)).unwrap();

    let dp = root.join("dirpair");
    for side in ["old", "new"] {
        let d = dp.join(side);
        fs::create_dir_all(d.join("lib/empty")).unwrap();
        fs::write(d.join("README"), b"same in both\n").unwrap();
        fs::write(d.join("lib/run.sh"), b"#!/bin/sh\necho hi\n").unwrap();
        fs::set_permissions(d.join("lib/run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
        symlink("lib/run.sh", d.join("run")).unwrap();
    }
    let app = rng.text(120_000);
    fs::write(dp.join("old/app.3f9a1c.js"), &app).unwrap();
    fs::write(dp.join("new/app.b7e210.js"), rng.edit(&app, 8)).unwrap();
    (
        fp.to_str().unwrap().to_string(),
        dp.to_str().unwrap().to_string(),
    )
}

fn bundelta_result<'a>(report: &'a Value, pair: &str) -> &'a Value {
    let p = report["pairs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == pair)
        .unwrap_or_else(|| panic!("no pair {pair} in {report}"));
    let rs = p["results"].as_array().unwrap();
    assert_eq!(rs.len(), 1, "{p}");
    &rs[0]
}

#[test]
fn bench_reports_checks_and_fails_on_growth() {
    let dir = tempfile::tempdir().unwrap();
    let (fp, dp) = make_pairs(dir.path());
    let p = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    let nocorpus = p("no-corpus");
    let run_json = p("run.json");
    let out = bench(&[
        &fp, &dp, "--tools", "bundelta", "--runs", "3", "--json", &run_json, "-q", "--corpus",
        &nocorpus,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(out.stdout.is_empty(), "-q prints no table");
    let report: Value = serde_json::from_str(&fs::read_to_string(&run_json).unwrap()).unwrap();
    assert_eq!(report["runs"], 3);
    assert_eq!(report["missing_pairs"].as_array().unwrap().len(), 0);

    let new_file = fs::metadata(Path::new(&fp).join("new")).unwrap().len();
    let pair = &report["pairs"][0];
    assert_eq!(pair["name"], "filepair");
    assert_eq!(pair["type"], "file");
    assert_eq!(pair["new_bytes"], new_file);
    let r = bundelta_result(&report, "filepair");
    assert_eq!(r["tool"], "bundelta");
    assert_eq!(r["verified"], true, "{r}");
    assert!(r["error"].is_null());
    let bytes = r["patch_bytes"].as_u64().unwrap();
    // 20 small edits of 300 kB: a real delta, far smaller than the file, larger than the
    // fixed header and digests.
    assert!(
        bytes > 150 && bytes < new_file / 10,
        "{bytes} of {new_file}"
    );
    let pct = r["patch_pct_of_new"].as_f64().unwrap();
    assert!(
        (pct - 100.0 * bytes as f64 / new_file as f64).abs() < 0.01,
        "{pct}"
    );
    // Medians over three runs, and peak RSS that a process really has.
    let walls: Vec<f64> = r["diff_wall_s_runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(walls.len(), 3);
    let mut sorted = walls.clone();
    sorted.sort_by(f64::total_cmp);
    assert_eq!(r["diff_wall_s"].as_f64().unwrap(), sorted[1]);
    assert!(r["diff_cpu_s"].as_f64().unwrap() > 0.0);
    assert!(r["apply_wall_s"].as_f64().unwrap() > 0.0);
    let diff_rss = r["diff_maxrss_kib"].as_u64().unwrap();
    assert!(
        diff_rss > 500 && diff_rss < 1 << 20,
        "diff RSS {diff_rss} KiB"
    );
    // The harness measures the release build, whose apply stays within the documented bound.
    let apply_rss = r["apply_maxrss_kib"].as_u64().unwrap();
    assert!(
        apply_rss > 500 && apply_rss < 16 * 1024,
        "apply RSS {apply_rss} KiB"
    );
    assert_eq!(r["diff_cmd"], "bundelta diff OLD NEW -o PATCH -q");

    let d = bundelta_result(&report, "dirpair");
    assert_eq!(d["verified"], true, "{d}");
    assert_eq!(d["input"], "dir");
    let dpair = &report["pairs"][1];
    assert_eq!(dpair["type"], "dir");
    assert_eq!(dpair["new_files"], 4, "{dpair}"); // files and symlinks
    assert!(d["patch_bytes"].as_u64().unwrap() < dpair["new_bytes"].as_u64().unwrap() / 4);
    let summary = &report["summary"][0];
    assert_eq!(summary["tool"], "bundelta");
    assert_eq!(summary["pairs"], 2);
    assert_eq!(
        summary["patch_bytes"].as_u64().unwrap(),
        bytes + d["patch_bytes"].as_u64().unwrap()
    );

    // --check against the run's own report passes (bundelta is deterministic); with no
    // PAIRS it runs the baseline's pairs.
    let out = bench(&[
        "--tools", "bundelta", "--check", &run_json, "--corpus", &nocorpus,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("bench check: ok"), "{}", stderr(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("== filepair (file pair)"),
        "tables on stdout"
    );

    // A baseline whose bundelta patch is 1% smaller: the run is 1% over it, past +0.5%.
    let mut shrunk = report.clone();
    let base_bytes = bytes * 99 / 100;
    shrunk["pairs"][0]["results"][0]["patch_bytes"] = base_bytes.into();
    // ... and a pair this run does not have.
    let mut ghost = shrunk["pairs"][1].clone();
    ghost["name"] = "ghost".into();
    ghost["dir"] = p("ghost").into();
    shrunk["pairs"].as_array_mut().unwrap().push(ghost);
    let shrunk_json = p("shrunk.json");
    fs::write(&shrunk_json, serde_json::to_string(&shrunk).unwrap()).unwrap();
    let out = bench(&[
        &fp,
        &dp,
        "--tools",
        "bundelta",
        "-q",
        "--check",
        &shrunk_json,
        "--corpus",
        &nocorpus,
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    let fails: Vec<&str> = err.lines().filter(|l| l.contains("FAIL")).collect();
    assert_eq!(fails.len(), 1, "{err}");
    assert!(fails[0].contains("filepair"), "{err}");
    let commas = |n: u64| {
        let s = n.to_string();
        let mut o = String::new();
        for (i, c) in s.chars().enumerate() {
            if i > 0 && (s.len() - i) % 3 == 0 {
                o.push(',');
            }
            o.push(c);
        }
        o
    };
    assert!(
        fails[0].contains(&commas(bytes)) && fails[0].contains(&commas(base_bytes)),
        "{err}"
    );
    assert!(
        err.contains("ghost: in the baseline but missing from this run"),
        "{err}"
    );

    // A run of fewer pairs than the baseline passes, and names the pair it did not run.
    let out = bench(&[
        &fp, "--tools", "bundelta", "-q", "--check", &run_json, "--corpus", &nocorpus,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("dirpair: in the baseline but missing"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn bench_usage_and_errors() {
    let out = bench(&["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for w in [
        "peak RSS",
        "wait4",
        "--runs",
        "--check",
        "--tools",
        "--timeout",
        "tar",
        "0.5%",
    ] {
        assert!(help.contains(w), "help lacks {w:?}:\n{help}");
    }
    let out = bench(&["--tools", "nosuchtool", "x"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let dir = tempfile::tempdir().unwrap();
    let nocorpus = dir.path().join("none");
    let out = bench(&[
        dir.path().join("missing").to_str().unwrap(),
        "--tools",
        "bundelta",
        "--corpus",
        nocorpus.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.starts_with("xtask: error: ") && err.contains("missing"),
        "{err}"
    );
}
