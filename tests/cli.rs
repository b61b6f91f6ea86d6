//! The command line: help, JSON output, exit codes, one-line errors without backtraces.

use std::fs;
use std::process::Command;

use crate::util::*;

pub(crate) fn bundelta(args: &[&str]) -> std::process::Output {
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
    assert_eq!(v["ops"]["modify"]["count"], 1);
    let diff_memory = v["apply_memory_bytes"].as_u64().unwrap();
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
    assert_eq!(v["apply_memory_bytes"].as_u64().unwrap(), diff_memory);
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

/// keygen, diff --sign, sign, apply/verify/info --pubkey: the whole signing workflow, and
/// its refusals with exit code 1 and one line naming the reason.
#[test]
fn signing_workflow() {
    let mut rng = Rng(12);
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    let old = rng.text(30_000);
    fs::write(p("old"), &old).unwrap();
    fs::write(p("new"), rng.edit(&old, 10)).unwrap();
    for k in ["k1", "k2"] {
        let out = bundelta(&["keygen", "-o", &p(k), "-q"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(p("k1")).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "secret key readable by others: {mode:o}");
    }
    // keygen never overwrites without --force.
    assert_eq!(bundelta(&["keygen", "-o", &p("k1")]).status.code(), Some(1));
    assert_ne!(fs::read(p("k1")).unwrap(), fs::read(p("k2")).unwrap());
    let ok = |args: &[&str]| {
        let out = bundelta(args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    };
    let refused = |args: &[&str], want: &str| {
        let out = bundelta(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(want) && err.lines().count() == 1,
            "{args:?}: {err}"
        );
    };
    ok(&[
        "diff",
        &p("old"),
        &p("new"),
        "-o",
        &p("s.bdp"),
        "--sign",
        &p("k1"),
        "-q",
    ]);
    ok(&["diff", &p("old"), &p("new"), "-o", &p("u.bdp"), "-q"]);
    let info = ok(&["info", &p("s.bdp"), "--json", "--pubkey", &p("k1.pub")]);
    let v: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(v["signed"], true);
    ok(&[
        "apply",
        &p("old"),
        &p("s.bdp"),
        "-o",
        &p("out"),
        "--pubkey",
        &p("k1.pub"),
    ]);
    assert_eq!(fs::read(p("out")).unwrap(), fs::read(p("new")).unwrap());
    refused(
        &[
            "apply",
            &p("old"),
            &p("s.bdp"),
            "-o",
            &p("out2"),
            "--pubkey",
            &p("k2.pub"),
        ],
        "signature check failed",
    );
    refused(
        &["verify", &p("u.bdp"), "--pubkey", &p("k1.pub")],
        "not signed",
    );
    // A secret key given where a public key is expected is named as such.
    refused(
        &["verify", &p("s.bdp"), "--pubkey", &p("k1")],
        "not a bundelta public key file",
    );
    assert!(!dir.path().join("out2").exists());
    // `sign` re-signs with another key, atomically in place.
    ok(&["sign", &p("s.bdp"), "--key", &p("k2"), "-q"]);
    ok(&[
        "verify",
        &p("s.bdp"),
        "--old",
        &p("old"),
        "--pubkey",
        &p("k2.pub"),
    ]);
    refused(
        &["verify", &p("s.bdp"), "--pubkey", &p("k1.pub")],
        "signature check failed",
    );
}

#[test]
fn wrong_base_is_named_on_the_command_line() {
    // A directory patch applied, out of place and in place, to an OLD with one file edited:
    // one error line naming that file, exit 1, nothing written; `info` shows the base tags;
    // `--base-tags 0` leaves them out.
    let mut rng = Rng(13);
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    let mut old = Tree::new();
    for i in 0..20 {
        old.insert(
            format!("f{i:02}.txt"),
            Item::File {
                data: rng.text(500),
                exec: false,
            },
        );
    }
    let mut new = old.clone();
    new.insert(
        "f03.txt".into(),
        Item::File {
            data: rng.text(600),
            exec: false,
        },
    );
    write_tree(dir.path().join("old").as_path(), &old);
    write_tree(dir.path().join("new").as_path(), &new);
    let out = bundelta(&["diff", &p("old"), &p("new"), "-o", &p("p.bdp"), "-q"]);
    assert!(out.status.success());
    let out = bundelta(&["info", &p("p.bdp"), "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["base_tags"], 20, "{v}");
    assert!(
        (4..=8).contains(&v["base_tag_bits"].as_u64().unwrap()),
        "{v}"
    );
    let mut d = fs::read(p("old/f11.txt")).unwrap();
    d[0] ^= 1;
    fs::write(p("old/f11.txt"), d).unwrap();
    for args in [
        vec!["apply", &p("old"), &p("p.bdp"), "-o", &p("out")],
        vec!["apply", "--in-place", &p("old"), &p("p.bdp")],
    ] {
        let out = bundelta(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(
            err.contains("not the version this patch was made from")
                && err.contains("f11.txt: content differs"),
            "{err}"
        );
    }
    assert!(!dir.path().join("out").exists());
    assert_eq!(listing(&dir.path().join("old")).len(), 20);
    let out = bundelta(&[
        "diff",
        &p("old"),
        &p("new"),
        "-o",
        &p("bare.bdp"),
        "-q",
        "--base-tags",
        "0",
    ]);
    assert!(out.status.success());
    let out = bundelta(&["info", &p("bare.bdp"), "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["base_tags"], 0, "{v}");
}

/// `info --list | head`: the reader goes away after a few lines; `info` stops quietly with
/// exit 0 instead of panicking on the broken pipe.
#[test]
fn info_list_into_a_closed_pipe_exits_quietly() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = (dir.path().join("old"), dir.path().join("new"));
    for d in [&old, &new] {
        fs::create_dir_all(d).unwrap();
    }
    // Enough entries that the listing is far over a pipe's buffer (64 KiB).
    for i in 0..3000 {
        let name = format!("a-rather-long-file-name-to-fill-the-pipe-{i:05}.txt");
        fs::write(old.join(&name), format!("old {i}")).unwrap();
        fs::write(new.join(format!("renamed-{name}")), format!("new {i}")).unwrap();
    }
    let p = dir.path().join("p.bdp");
    let st = bundelta(&[
        "diff",
        old.to_str().unwrap(),
        new.to_str().unwrap(),
        "-o",
        p.to_str().unwrap(),
        "-q",
    ]);
    assert!(st.status.success(), "{st:?}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_bundelta"))
        .args([
            "info",
            "--list",
            p.to_str().unwrap(),
            "--old",
            old.to_str().unwrap(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.starts_with("patch:"), "{first}");
    // The reader is gone (dropped above).
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?} {err}", out.status);
    assert!(!err.contains("panicked"), "{err}");
}

/// `info` counts the files diffed with executable reference prediction, which
/// `--no-exe-refs` turns off.
#[test]
fn exe_refs_are_shown_and_can_be_turned_off() {
    let (old, new) = crate::exe::golden_exe_inputs();
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    fs::write(p("old"), &old).unwrap();
    fs::write(p("new"), &new).unwrap();
    for (flag, want) in [(None, 1), (Some("--no-exe-refs"), 0)] {
        let mut args = vec!["diff", "-q", "-f"];
        args.extend(flag);
        let (o, n, pp) = (p("old"), p("new"), p("p.bdp"));
        args.extend([o.as_str(), n.as_str(), "-o", pp.as_str()]);
        assert!(bundelta(&args).status.success());
        let out = bundelta(&["info", &pp, "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["exe_refs"], want, "{flag:?}");
        let text = String::from_utf8_lossy(&bundelta(&["info", &pp]).stdout).to_string();
        assert_eq!(text.contains("reference prediction"), want == 1, "{text}");
    }
}

/// `info` says how each archive's deflate streams are made again: by zlib, by miniz, from a
/// token structure (read from the recipes in the control stream).
#[test]
fn info_shows_how_archive_streams_are_made_again() {
    let mut rng = Rng(0x1f0);
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    let texts: Vec<(Vec<u8>, Vec<u8>)> = (0..3)
        .map(|_| {
            let a = rng.text(120_000);
            let b = rng.edit(&a, 5);
            (a, b)
        })
        .collect();
    let gz = |deflate: Vec<u8>| {
        let mut g = vec![0x1F, 0x8B, 8, 0, 0, 0, 0, 0, 0, 3];
        g.extend_from_slice(&deflate);
        g.extend_from_slice(&[0; 8]);
        g
    };
    let make = |side: usize| {
        let t = |k: usize| {
            if side == 0 {
                &texts[k].0
            } else {
                &texts[k].1
            }
        };
        [
            ("zlib.gz", gz(zlib_deflate(t(0), 6, 15))),
            (
                "miniz.gz",
                gz(miniz_oxide::deflate::compress_to_vec(t(1), 6)),
            ),
            (
                "flushed.gz",
                gz(crate::inflate::zlib_with_flushes(t(2), 6, 30_000)),
            ),
        ]
    };
    for (side, name) in [(0, "old"), (1, "new")] {
        fs::create_dir(p(name)).unwrap();
        for (f, data) in make(side) {
            fs::write(dir.path().join(name).join(f), data).unwrap();
        }
    }
    let out = bundelta(&["diff", &p("old"), &p("new"), "-o", &p("p.bdp"), "-q"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A directory patch's manifest is relative to OLD's list: info reads it with --old.
    let out = bundelta(&["info", &p("p.bdp"), "--list", "--old", &p("old")]);
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(
        s.contains("3 of the modified files diffed inflated; deflate streams made again: 1 by zlib, 1 by miniz, 1 by token structure"),
        "{s}"
    );
    for (f, how) in [
        ("zlib.gz", "1 by zlib"),
        ("miniz.gz", "1 by miniz"),
        ("flushed.gz", "1 by token structure"),
    ] {
        assert!(
            s.lines()
                .any(|l| l.contains(f) && l.contains(&format!("(streams made again: {how})"))),
            "{f}: {s}"
        );
    }
    let out = bundelta(&["info", &p("p.bdp"), "--list", "--json", "--old", &p("old")]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v["remade_streams"],
        serde_json::json!({"zlib": 1, "miniz": 1, "tokens": 1})
    );
    let e = v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["path"] == "flushed.gz")
        .unwrap();
    assert_eq!(e["remade_streams"]["tokens"], 1);
}

/// `-` as the patch reads it from standard input (apply and verify); `--in-place -` is a
/// usage error (exit 2) that says what to do.
#[test]
fn the_patch_from_standard_input() {
    use std::io::Write;
    use std::process::Stdio;
    let mut rng = Rng(0x57d1);
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    let old = rng.text(50_000);
    fs::write(p("old"), &old).unwrap();
    fs::write(p("new"), rng.edit(&old, 3)).unwrap();
    assert!(
        bundelta(&["diff", &p("old"), &p("new"), "-o", &p("p.bdp"), "-q"])
            .status
            .success()
    );
    let patch = fs::read(p("p.bdp")).unwrap();
    let piped = |args: &[&str], input: &[u8]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_bundelta"))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = c.stdin.take().unwrap();
        let _ = stdin.write_all(input);
        drop(stdin);
        c.wait_with_output().unwrap()
    };
    let out = piped(&["apply", &p("old"), "-", "-o", &p("out")], &patch);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(fs::read(p("out")).unwrap(), fs::read(p("new")).unwrap());
    let out = piped(&["verify", "-", "--old", &p("old")], &patch);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("(standard input): ok"));
    // Damaged at the end: refused, naming standard input, nothing at OUT.
    let mut bad = patch.clone();
    *bad.last_mut().unwrap() ^= 1;
    let out = piped(&["apply", &p("old"), "-", "-o", &p("out2")], &bad);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(!dir.path().join("out2").exists());
    let out = piped(&["apply", "--in-place", &p("old"), "-"], &patch);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs the patch as a file"));
    assert_eq!(fs::read(p("old")).unwrap(), old);
}

/// `bundelta-apply`, the applier alone: applies from a file and from standard input,
/// `--serial`, exit 2 on usage errors, 1 with one line on a refused patch.
#[test]
fn the_apply_only_binary() {
    use std::io::Write;
    use std::process::Stdio;
    let apply = env!("CARGO_BIN_EXE_bundelta-apply");
    let mut rng = Rng(0xa991);
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    let old = rng.text(30_000);
    let new = rng.edit(&old, 2);
    fs::write(p("old"), &old).unwrap();
    fs::write(p("new"), &new).unwrap();
    assert!(
        bundelta(&["diff", &p("old"), &p("new"), "-o", &p("p.bdp"), "-q"])
            .status
            .success()
    );
    let run = |args: &[&str]| Command::new(apply).args(args).output().unwrap();
    let out = run(&[&p("old"), &p("p.bdp"), "-o", &p("out1"), "--serial"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(fs::read(p("out1")).unwrap(), new);
    let mut c = Command::new(apply)
        .args([&p("old"), "-", "-o", &p("out2"), "-q"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin
        .take()
        .unwrap()
        .write_all(&fs::read(p("p.bdp")).unwrap())
        .unwrap();
    let out = c.wait_with_output().unwrap();
    assert!(out.status.success() && out.stderr.is_empty(), "{out:?}");
    assert_eq!(fs::read(p("out2")).unwrap(), new);
    for bad in [
        vec![p("old"), p("p.bdp")],
        vec![p("old"), p("p.bdp"), "-o".into()],
        vec![p("old"), p("p.bdp"), "-o".into(), p("x"), "--bogus".into()],
        vec!["--in-place".into(), p("old"), "-".into()],
        vec![
            p("old"),
            p("p.bdp"),
            "-o".into(),
            p("x"),
            "--memory-limit".into(),
            "12Q".into(),
        ],
    ] {
        let args: Vec<&str> = bad.iter().map(String::as_str).collect();
        assert_eq!(run(&args).status.code(), Some(2), "{bad:?}");
    }
    // The wrong OLD: exit 1, one line naming the reason, nothing at OUT.
    let out = run(&[&p("new"), &p("p.bdp"), "-o", &p("out3")]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(!dir.path().join("out3").exists());
}

/// Usage slips a new user makes get exit 2 and a hint; `--json` failures print a JSON
/// object; `info` says what a file patch relies on.
#[test]
fn hints_json_errors_and_what_a_patch_relies_on() {
    let mut rng = Rng(0x417);
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    let old = rng.text(20_000);
    fs::write(p("old"), &old).unwrap();
    fs::write(p("new"), rng.edit(&old, 2)).unwrap();
    // diff OLD NEW PATCH (no -o): exit 2, the hint names -o, nothing written.
    let out = bundelta(&["diff", &p("old"), &p("new"), &p("p.bdp")]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("-o"));
    assert!(!dir.path().join("p.bdp").exists());
    assert!(
        bundelta(&["diff", &p("old"), &p("new"), "-o", &p("p.bdp"), "-q"])
            .status
            .success()
    );
    // apply PATCH OLD: exit 2, "swapped".
    let out = bundelta(&["apply", &p("p.bdp"), &p("old"), "-o", &p("out")]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("swapped"));
    assert!(!dir.path().join("out").exists());
    // --json failure: a JSON object on stdout, the one-line error on stderr, exit 1.
    let out = bundelta(&["verify", "--json", &p("missing.bdp")]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], false);
    assert!(v["error"].as_str().unwrap().contains("missing.bdp"));
    // info: a file patch relies on the old file.
    let out = bundelta(&["info", &p("p.bdp")]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("relies on:    the old file"));
    let out = bundelta(&["info", "--json", &p("p.bdp")]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["old_files_relied_on"], 1);
}

/// `-o -`: diff writes the patch to standard output, apply a single-file patch's output;
/// with `--json` (which also goes to standard output) it is a usage error.
#[test]
fn standard_output_with_dash_o_dash() {
    let mut rng = Rng(0x50d);
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    let old = rng.text(40_000);
    let new = rng.edit(&old, 3);
    fs::write(p("old"), &old).unwrap();
    fs::write(p("new"), &new).unwrap();
    let out = bundelta(&["diff", &p("old"), &p("new"), "-o", "-", "-q"]);
    assert!(out.status.success(), "{out:?}");
    fs::write(p("p.bdp"), &out.stdout).unwrap();
    let out = bundelta(&["apply", &p("old"), &p("p.bdp"), "-o", "-", "-q"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout, new);
    // The wrong OLD: nothing written, exit 1, the user's path named.
    let out = bundelta(&["apply", &p("new"), &p("p.bdp"), "-o", "-"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains(&p("new")));
    for args in [
        vec!["diff", &p("old"), &p("new"), "-o", "-", "--json"],
        vec!["apply", &p("old"), &p("p.bdp"), "-o", "-", "--json"],
    ] {
        assert_eq!(bundelta(&args).status.code(), Some(2), "{args:?}");
    }
}

/// `apply --in-place .` from inside the directory updates it (its lock, journal and stage
/// are named after the resolved path).
#[test]
fn in_place_on_the_working_directory() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    for (d, text) in [("old", "a\n"), ("new", "b\n"), ("tgt", "a\n")] {
        fs::create_dir(p(d)).unwrap();
        fs::write(p(d).join("f"), text).unwrap();
    }
    let s = |x: &std::path::Path| x.to_str().unwrap().to_string();
    assert!(bundelta(&[
        "diff",
        &s(&p("old")),
        &s(&p("new")),
        "-o",
        &s(&p("p.bdp")),
        "-q"
    ])
    .status
    .success());
    let out = Command::new(env!("CARGO_BIN_EXE_bundelta"))
        .args(["apply", "--in-place", ".", &s(&p("p.bdp"))])
        .current_dir(p("tgt"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(fs::read_to_string(p("tgt").join("f")).unwrap(), "b\n");
    assert_eq!(listing(dir.path()), ["new", "old", "p.bdp", "tgt"]);
}

/// `diff --json`, `info --json --old` and `info --list` count files under the same operation
/// names (unchanged, copy, copy-new, modify, add), and agree on the counts.
#[test]
fn diff_and_info_speak_one_vocabulary() {
    let mut rng = Rng(77);
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    let big = rng.text(40_000);
    let moved = rng.text(30_000);
    let twin = rng.text(20_000);
    for side in ["old", "new"] {
        fs::create_dir_all(dir.path().join(side).join("lib")).unwrap();
        fs::write(
            dir.path().join(side).join("same.txt"),
            b"the same on both sides\n",
        )
        .unwrap();
    }
    fs::write(p("old/app.js"), &big).unwrap();
    fs::write(p("new/app.js"), rng.edit(&big, 12)).unwrap(); // modify
    fs::write(p("old/lib/a.bin"), &moved).unwrap();
    fs::write(p("new/lib/b.bin"), &moved).unwrap(); // copy (content from another old path)
    fs::write(p("new/x.d.ts"), &twin).unwrap(); // add
    fs::write(p("new/x.d.cts"), &twin).unwrap(); // copy-new
    let out = bundelta(&["diff", &p("old"), &p("new"), "-o", &p("p.bdp"), "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let d: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let want = [
        ("unchanged", 1),
        ("copy", 1),
        ("copy-new", 1),
        ("modify", 1),
        ("add", 1),
    ];
    for (op, n) in want {
        assert_eq!(d["ops"][op]["count"], n, "diff: {op} in {d}");
    }
    assert_eq!(d["deleted"], 1, "{d}");
    let out = bundelta(&["info", &p("p.bdp"), "--old", &p("old"), "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let i: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for (op, n) in want {
        assert_eq!(i["ops"][op]["count"], n, "info: {op} in {i}");
    }
    let out = bundelta(&["info", &p("p.bdp"), "--old", &p("old"), "--list"]);
    let list = String::from_utf8_lossy(&out.stdout);
    for (op, _) in want {
        assert!(
            list.lines().any(|l| l.starts_with(op)),
            "--list lacks {op}:\n{list}"
        );
    }
    let out = bundelta(&["diff", &p("old"), &p("new"), "-o", &p("q.bdp")]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("1 unchanged, 1 copy, 1 copy-new, 1 modify, 1 add, 1 deleted"),
        "{said}"
    );
}
