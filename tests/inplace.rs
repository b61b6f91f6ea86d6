//! In-place apply: SIGKILL at many moments must leave the old or the new version, and a rerun
//! must finish. Runs the real CLI binary as a child process.

use std::fs;
use std::process::Command;
use std::time::{Duration, Instant};

use bundelta::DiffOptions;

use crate::util::*;

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_bundelta")
}

fn trees() -> (Tree, Tree) {
    let mut rng = Rng(77);
    let mut old = Tree::new();
    for d in 0..8 {
        old.insert(format!("d{d}"), Item::Dir);
        for f in 0..25 {
            old.insert(
                format!("d{d}/f{f}.js"),
                Item::File {
                    data: rng.text(8_000),
                    exec: f % 7 == 0,
                },
            );
        }
    }
    old.insert(
        "big.bin".into(),
        Item::File {
            data: rng.text(3 << 20),
            exec: false,
        },
    );
    old.insert("link".into(), Item::Link("d0/f1.js".into()));
    let mut new = old.clone();
    for (i, (_, item)) in new.iter_mut().enumerate() {
        if let Item::File { data, .. } = item {
            if i % 3 == 0 {
                *data = rng.edit(data, 4);
            }
        }
    }
    new.remove("d7/f3.js");
    new.insert("d9".into(), Item::Dir);
    new.insert(
        "d9/new.txt".into(),
        Item::File {
            data: rng.text(5000),
            exec: false,
        },
    );
    new.insert("empty".into(), Item::Dir);
    (old, new)
}

/// Kill points: 40 by default (a few seconds); set BUNDELTA_KILL_POINTS for a longer run:
///
/// ```sh
/// BUNDELTA_KILL_POINTS=250 cargo test --release --test tests sigkill -- --nocapture
/// ```
///
/// It prints one summary line: kill points, how many left OLD and NEW, how many reruns found
/// an interrupted run to finish or roll back (the rest found no trace of it), and that every
/// rerun ended at NEW with nothing left next to the target.
#[test]
fn sigkill_at_random_moments_leaves_old_or_new_and_rerun_finishes() {
    let points: usize = std::env::var("BUNDELTA_KILL_POINTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40);
    let (old, new) = trees();
    let base = tempfile::tempdir().unwrap();
    let (po, pn, pp) = (
        base.path().join("old"),
        base.path().join("new"),
        base.path().join("p.bdp"),
    );
    write_tree(&po, &old);
    write_tree(&pn, &new);
    let mut o = DiffOptions::new();
    o.level(3);
    o.diff_to_file(&po, &pn, &pp).unwrap();
    let d_old = bundelta::bundle_digest(&po).unwrap();
    let d_new = bundelta::bundle_digest(&pn).unwrap();

    // How long one uninterrupted in-place apply takes.
    let work = base.path().join("w");
    let target = work.join("app");
    write_tree(&target, &old);
    let t = Instant::now();
    let st = Command::new(bin())
        .args(["apply", "--in-place", "-q"])
        .arg(&target)
        .arg(&pp)
        .status()
        .unwrap();
    assert!(st.success());
    let full = t.elapsed();
    assert_eq!(bundelta::bundle_digest(&target).unwrap(), d_new);

    let mut rng = Rng(4242);
    let (mut saw_old, mut saw_new, mut recovered, mut killed) = (0, 0, 0, 0);
    for i in 0..points {
        fs::remove_dir_all(&work).unwrap();
        write_tree(&target, &old);
        let mut child = Command::new(bin())
            .args(["apply", "--in-place", "-q"])
            .arg(&target)
            .arg(&pp)
            .spawn()
            .unwrap();
        let max = full.as_micros() as u64 * 12 / 10 + 1;
        std::thread::sleep(Duration::from_micros(rng.below(max)));
        let _ = child.kill(); // SIGKILL
                              // Killed mid-run, or it had already exited by itself.
        if let Ok(st) = child.wait() {
            use std::os::unix::process::ExitStatusExt;
            if st.signal() == Some(libc::SIGKILL) {
                killed += 1;
            }
        }
        let d = bundelta::bundle_digest(&target).unwrap();
        if d == d_old {
            saw_old += 1;
        } else if d == d_new {
            saw_new += 1;
        } else {
            panic!("kill point {i}: target is neither old nor new");
        }
        let out = Command::new(bin())
            .args(["apply", "--in-place", "--json"])
            .arg(&target)
            .arg(&pp)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "rerun failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if String::from_utf8_lossy(&out.stdout)
            .replace(char::is_whitespace, "")
            .contains("\"recovered\":true")
        {
            recovered += 1;
        }
        assert_eq!(
            bundelta::bundle_digest(&target).unwrap(),
            d_new,
            "kill point {i}: rerun did not finish"
        );
        assert_eq!(
            listing(&work),
            vec!["app"],
            "kill point {i}: leftovers after rerun"
        );
        assert_eq!(read_tree(&target), new);
    }
    eprintln!(
        "{points} kill points ({killed} killed mid-run, the rest had exited): {saw_old} left \
         old, {saw_new} left new; {recovered} reruns recovered an interrupted run; all {points} \
         reruns ended at new, nothing left behind"
    );
    assert!(saw_old + saw_new == points);
}

#[test]
fn in_place_single_file_and_rerun() {
    let mut rng = Rng(3);
    let old = rng.text(100_000);
    let new = rng.edit(&old, 10);
    let dir = tempfile::tempdir().unwrap();
    let (f, pp) = (dir.path().join("app.bin"), dir.path().join("p.bdp"));
    fs::write(&f, &old).unwrap();
    fs::write(&pp, DiffOptions::new().diff_bytes(&old, &new).unwrap()).unwrap();
    let out = Command::new(bin())
        .args(["apply", "--in-place"])
        .arg(&f)
        .arg(&pp)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(fs::read(&f).unwrap(), new);
    let out = Command::new(bin())
        .args(["apply", "--in-place"])
        .arg(&f)
        .arg(&pp)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already at the patch's new version"));
    // A third version is neither: clear error, file untouched.
    fs::write(&f, b"unrelated").unwrap();
    let out = Command::new(bin())
        .args(["apply", "--in-place"])
        .arg(&f)
        .arg(&pp)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert_eq!(fs::read(&f).unwrap(), b"unrelated");
    assert_eq!(listing(dir.path()), vec!["app.bin", "p.bdp"]);
}

/// A second in-place apply on a target that another run holds refuses at once, touching
/// nothing; once the lock is released the same command succeeds and leaves no lock file.
#[test]
fn concurrent_in_place_apply_is_refused() {
    use std::os::unix::io::AsRawFd;
    let mut rng = Rng(78);
    let base = tempfile::tempdir().unwrap();
    let (po, pn, pp) = (
        base.path().join("app"),
        base.path().join("new"),
        base.path().join("p.bdp"),
    );
    let mut old = Tree::new();
    old.insert(
        "a.txt".into(),
        Item::File {
            data: rng.text(20_000),
            exec: false,
        },
    );
    let mut new = old.clone();
    if let Some(Item::File { data, .. }) = new.get_mut("a.txt") {
        *data = rng.edit(data, 5);
    }
    write_tree(&po, &old);
    write_tree(&pn, &new);
    DiffOptions::new().diff_to_file(&po, &pn, &pp).unwrap();
    // Hold the lock as another run would.
    let lock_path = base.path().join(".app.bundelta-lock");
    let held = fs::File::create(&lock_path).unwrap();
    // SAFETY: flock on a valid descriptor owned by this test.
    assert_eq!(unsafe { libc::flock(held.as_raw_fd(), libc::LOCK_EX) }, 0);
    let e = bundelta::Patcher::new()
        .apply_in_place(&po, &pp)
        .unwrap_err();
    assert!(matches!(e, bundelta::Error::Locked { .. }), "{e}");
    assert!(e.to_string().contains("another bundelta apply"), "{e}");
    assert_eq!(read_tree(&po), old);
    drop(held);
    bundelta::Patcher::new().apply_in_place(&po, &pp).unwrap();
    assert_eq!(read_tree(&po), new);
    let mut left: Vec<_> = fs::read_dir(base.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(left, ["app", "new", "p.bdp"]);
}
