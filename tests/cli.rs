//! The command line: help, JSON output, exit codes, one-line errors without backtraces.

use std::fs;
use std::process::Command;

use crate::util::*;

fn bundelta(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_bundelta"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn help_teaches() {
    let out = bundelta(&["--help"]);
    assert!(out.status.success());
    let s = String::from_utf8_lossy(&out.stdout);
    for w in ["diff", "apply", "verify", "info"] {
        assert!(s.contains(w), "{s}");
    }
    let out = bundelta(&["apply", "--help"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("--in-place"));
}

#[test]
fn diff_apply_verify_info_json() {
    let mut rng = Rng(11);
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    let old = rng.text(50_000);
    fs::write(p("old"), &old).unwrap();
    fs::write(p("new"), rng.edit(&old, 10)).unwrap();
    let out = bundelta(&["diff", &p("old"), &p("new"), "-o", &p("p.bdp"), "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["modified"], 1);
    assert_eq!(
        v["patch_bytes"].as_u64().unwrap(),
        fs::metadata(p("p.bdp")).unwrap().len()
    );
    // Refuses to overwrite without --force.
    let out = bundelta(&["diff", &p("old"), &p("new"), "-o", &p("p.bdp")]);
    assert!(!out.status.success());
    let out = bundelta(&["info", &p("p.bdp"), "--json", "--list"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ops"]["modify"]["count"], 1);
    assert_eq!(v["entries"][0]["op"], "modify");
    let out = bundelta(&["verify", &p("p.bdp"), "--old", &p("old"), "--json"]);
    assert!(out.status.success());
    let out = bundelta(&["apply", &p("old"), &p("p.bdp"), "-o", &p("out"), "--json"]);
    assert!(out.status.success());
    assert_eq!(fs::read(p("out")).unwrap(), fs::read(p("new")).unwrap());
}

#[test]
fn errors_are_one_line_and_nonzero() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    fs::write(p("junk"), b"not a patch at all, definitely not").unwrap();
    fs::write(p("old"), b"x").unwrap();
    for args in [
        vec!["apply", &p("old"), &p("junk"), "-o", &p("out")],
        vec!["verify", &p("junk")],
        vec!["info", &p("missing")],
        vec!["diff", &p("old"), &p("missing"), "-o", &p("x")],
    ] {
        let out = bundelta(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(err.starts_with("bundelta: error: "), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    assert!(!dir.path().join("out").exists());
}

#[test]
fn file_size_limit_gives_clean_error_and_no_leftovers() {
    // RLIMIT_FSIZE stands in for a full disk: the write fails, the error names the file,
    // nothing is left next to OUT and OLD is untouched.
    let mut rng = Rng(12);
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    let old = rng.text(300_000);
    fs::write(p("old"), &old).unwrap();
    fs::write(p("new"), rng.edit(&old, 30)).unwrap();
    assert!(
        bundelta(&["diff", &p("old"), &p("new"), "-o", &p("p.bdp"), "-q"])
            .status
            .success()
    );
    let script = format!(
        "ulimit -f 100; exec {} apply {} {} -o {}",
        env!("CARGO_BIN_EXE_bundelta"),
        p("old"),
        p("p.bdp"),
        p("out")
    );
    let out = Command::new("sh").args(["-c", &script]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("write failed") && err.contains(".out.bundelta-new"),
        "{err}"
    );
    assert_eq!(listing(dir.path()), vec!["new", "old", "p.bdp"]);
    assert_eq!(fs::read(p("old")).unwrap(), old);
}
