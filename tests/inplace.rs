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
    sigkill_at_random_moments(false);
}

/// The same with the two-rename commit forced (`BUNDELTA_TEST_NO_EXCHANGE=1`), the strategy
/// used where the file system cannot exchange: a kill between the renames leaves DIR absent
/// and the old tree aside, and the rerun finishes.
#[test]
fn sigkill_at_random_moments_two_renames() {
    sigkill_at_random_moments(true);
}

fn sigkill_at_random_moments(renames: bool) {
    let no_exchange = if renames { "1" } else { "0" };
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
        .env("BUNDELTA_TEST_NO_EXCHANGE", no_exchange)
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
    let mut saw_aside = 0;
    for i in 0..points {
        fs::remove_dir_all(&work).unwrap();
        write_tree(&target, &old);
        let mut child = Command::new(bin())
            .env("BUNDELTA_TEST_NO_EXCHANGE", no_exchange)
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
        if renames && !target.exists() {
            // Killed between the two renames: the old tree is aside.
            saw_aside += 1;
        } else if bundelta::bundle_digest(&target).unwrap() == d_old {
            saw_old += 1;
        } else if bundelta::bundle_digest(&target).unwrap() == d_new {
            saw_new += 1;
        } else {
            panic!("kill point {i}: target is neither old nor new");
        }
        let out = Command::new(bin())
            .env("BUNDELTA_TEST_NO_EXCHANGE", no_exchange)
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
        "{points} kill points (two renames: {renames}; {killed} killed mid-run, the rest had \
         exited): {saw_old} left old, {saw_new} left new, {saw_aside} between the renames; \
         {recovered} reruns recovered an interrupted run; all {points} reruns ended at new, \
         nothing left behind"
    );
    assert!(saw_old + saw_new + saw_aside == points);
    // A suite where no run was interrupted, or no rerun found anything to recover, tested
    // nothing: the delays span the run, so most kill points land mid-run.
    assert!(killed > 0, "no kill point landed mid-run");
    assert!(recovered > 0, "no rerun recovered an interrupted run");
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

// ---------------------------------------------------------------------------------------------
// Side files (lock, journal, its temp file, stages): planted links, directories and FIFOs are
// refused, never followed, truncated or removed; stages of killed runs are cleaned; only the
// same patch finishes an interrupted run.

/// `app` (OLD) in a fresh directory, with `p1.bdp` (OLD to NEW1) and `p2.bdp` (OLD to NEW2).
struct Fixture {
    dir: tempfile::TempDir,
    old: Tree,
    new1: Tree,
    new2: Tree,
    /// Force the two-rename commit in CLI runs (`BUNDELTA_TEST_NO_EXCHANGE=1`).
    renames: std::cell::Cell<bool>,
}

impl Fixture {
    /// Apply p1 to `app` out of place (into `out`) and then in place; both must give NEW1.
    fn apply_p1_out_and_in_place(&self) {
        bundelta::Patcher::new()
            .apply(self.p("app"), self.p("p1.bdp"), self.p("out"))
            .unwrap();
        bundelta::Patcher::new()
            .apply_in_place(self.p("app"), self.p("p1.bdp"))
            .unwrap();
        assert_eq!(read_tree(&self.p("out")), self.new1);
        assert_eq!(read_tree(&self.p("app")), self.new1);
    }

    fn new() -> Fixture {
        let mut rng = Rng(91);
        let mut old = Tree::new();
        old.insert("lib".into(), Item::Dir);
        for i in 0..6 {
            old.insert(
                format!("lib/m{i}.js"),
                Item::File {
                    data: rng.text(30_000),
                    exec: i == 0,
                },
            );
        }
        let mut new1 = old.clone();
        let mut new2 = old.clone();
        if let Some(Item::File { data, .. }) = new1.get_mut("lib/m1.js") {
            *data = rng.edit(data, 4);
        }
        new1.insert(
            "added1.txt".into(),
            Item::File {
                data: rng.text(5_000),
                exec: false,
            },
        );
        if let Some(Item::File { data, .. }) = new2.get_mut("lib/m2.js") {
            *data = rng.edit(data, 4);
        }
        new2.remove("lib/m3.js");
        let dir = tempfile::tempdir().unwrap();
        let f = Fixture {
            dir,
            old,
            new1,
            new2,
            renames: false.into(),
        };
        let (o, n1, n2) = (f.p("src-old"), f.p("src-new1"), f.p("src-new2"));
        write_tree(&o, &f.old);
        write_tree(&n1, &f.new1);
        write_tree(&n2, &f.new2);
        DiffOptions::new()
            .diff_to_file(&o, &n1, f.p("p1.bdp"))
            .unwrap();
        DiffOptions::new()
            .diff_to_file(&o, &n2, f.p("p2.bdp"))
            .unwrap();
        for d in [o, n1, n2] {
            fs::remove_dir_all(d).unwrap();
        }
        f.reset();
        f
    }

    fn p(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    /// `app` back at OLD, nothing else but the patches.
    fn reset(&self) {
        for name in listing(self.dir.path()) {
            if !name.ends_with(".bdp") {
                let p = self.p(&name);
                if fs::symlink_metadata(&p).unwrap().is_dir() {
                    fs::remove_dir_all(&p).unwrap();
                } else {
                    fs::remove_file(&p).unwrap();
                }
            }
        }
        write_tree(&self.p("app"), &self.old);
    }

    /// The set-up of a crash test: with the two-rename commit forced or not (`renames`),
    /// `app` back at OLD, `prepare` run, then `apply ARGS...` killed by the test crash point
    /// `at` (asserted).
    fn kill_at(&self, renames: bool, at: &str, args: &[&str], prepare: impl FnOnce()) {
        self.renames.set(renames);
        self.reset();
        prepare();
        let out = self.cli(args, Some(at));
        assert!(killed(&out), "{at}: not killed: {:?}", out.status);
    }

    /// Run the CLI: `apply ARGS...` with an optional test crash point.
    fn cli(&self, args: &[&str], crash_at: Option<&str>) -> std::process::Output {
        let mut c = Command::new(bin());
        c.current_dir(self.dir.path()).arg("apply").args(args);
        match crash_at {
            Some(at) => c.env("BUNDELTA_TEST_CRASH_AT", at),
            None => c.env_remove("BUNDELTA_TEST_CRASH_AT"),
        };
        match self.renames.get() {
            true => c.env("BUNDELTA_TEST_NO_EXCHANGE", "1"),
            false => c.env_remove("BUNDELTA_TEST_NO_EXCHANGE"),
        };
        c.output().unwrap()
    }
}

fn killed(out: &std::process::Output) -> bool {
    use std::os::unix::process::ExitStatusExt;
    out.status.signal() == Some(libc::SIGKILL)
}

fn mkfifo(p: &std::path::Path) {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path for the duration of the call.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
}

/// Run `f` on another thread; a hang (a FIFO opened for reading waits for a writer forever)
/// fails the test instead of hanging it.
fn no_hang<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(120))
        .expect("apply hung on a planted side file")
}

/// A symlink (to a victim file, and to a path that does not exist), a directory or a FIFO
/// planted at the lock file, the journal or the journal's temp file, of an in-place and of an
/// out-of-place apply: the run is refused, the victim unchanged and not created, the planted
/// entry still there, the target unchanged; without the plant the same apply succeeds.
#[test]
fn planted_side_files_are_refused_never_followed() {
    let f = Fixture::new();
    let mut tried = 0;
    for side in ["lock", "journal", "journal.bundelta-tmp"] {
        for plant in ["link-victim", "link-missing", "dir", "fifo"] {
            for in_place in [true, false] {
                f.reset();
                let victim = f.p("victim.txt");
                fs::write(&victim, b"precious").unwrap();
                // The temp file is named after the journal: `..NAME.bundelta-journal.bundelta-tmp`.
                let dot = if side == "journal.bundelta-tmp" {
                    "."
                } else {
                    ""
                };
                let (target, planted) = if in_place {
                    (f.p("app"), f.p(&format!("{dot}.app.bundelta-{side}")))
                } else {
                    (f.p("out"), f.p(&format!("{dot}.out.bundelta-{side}")))
                };
                match plant {
                    "link-victim" => std::os::unix::fs::symlink(&victim, &planted).unwrap(),
                    "link-missing" => {
                        std::os::unix::fs::symlink(f.p("created.txt"), &planted).unwrap()
                    }
                    "dir" => {
                        fs::create_dir(&planted).unwrap();
                        fs::write(planted.join("keep.txt"), b"keep").unwrap();
                    }
                    _ => mkfifo(&planted),
                }
                let (t, pp) = (target.clone(), f.p("p1.bdp"));
                let (app, old) = (f.p("app"), f.p("app"));
                let r = no_hang(move || {
                    if in_place {
                        bundelta::Patcher::new().apply_in_place(&t, &pp).map(|_| ())
                    } else {
                        bundelta::Patcher::new().apply(&old, &pp, &t).map(|_| ())
                    }
                });
                let what = format!("{plant} at {} (in place: {in_place})", planted.display());
                let e = r.expect_err(&format!("{what}: apply succeeded"));
                assert!(
                    e.to_string().contains("not a regular file")
                        || e.to_string().contains("not a bundelta journal"),
                    "{what}: {e}"
                );
                assert_eq!(fs::read(&victim).unwrap(), b"precious", "{what}");
                assert!(!f.p("created.txt").exists(), "{what}: link target created");
                assert!(
                    fs::symlink_metadata(&planted).is_ok(),
                    "{what}: plant removed"
                );
                if plant == "dir" {
                    assert_eq!(fs::read(planted.join("keep.txt")).unwrap(), b"keep");
                }
                assert_eq!(read_tree(&app), f.old, "{what}: target changed");
                assert!(!f.p("out").exists(), "{what}");
                tried += 1;
            }
        }
    }
    // Without a plant the same applies succeed.
    f.reset();
    f.apply_p1_out_and_in_place();
    eprintln!("side files: {tried} planted links, directories and FIFOs refused");
}

/// A journal temp file a dead run left (a regular file holding a journal) is replaced; a
/// regular file holding anything else is refused and kept.
#[test]
fn stale_journal_temp_is_replaced_only_when_it_is_a_journal() {
    let f = Fixture::new();
    let tmp = f.p("..app.bundelta-journal.bundelta-tmp");
    fs::write(&tmp, b"unrelated data").unwrap();
    let e = bundelta::Patcher::new()
        .apply_in_place(f.p("app"), f.p("p1.bdp"))
        .unwrap_err();
    assert!(e.to_string().contains("not a bundelta journal"), "{e}");
    assert_eq!(fs::read(&tmp).unwrap(), b"unrelated data");
    assert_eq!(read_tree(&f.p("app")), f.old);
    fs::write(&tmp, b"bundelta-journal-v2\nkind dir\n").unwrap();
    bundelta::Patcher::new()
        .apply_in_place(f.p("app"), f.p("p1.bdp"))
        .unwrap();
    assert_eq!(read_tree(&f.p("app")), f.new1);
    assert_eq!(listing(f.dir.path()), ["app", "p1.bdp", "p2.bdp"]);
    // A run killed between creating the temp file and writing it leaves it empty (or holding
    // the start of a journal): the next run replaces it (found by the SIGKILL suite in CI).
    for left in [&b""[..], b"bundelta-jour"] {
        f.reset();
        fs::write(&tmp, left).unwrap();
        bundelta::Patcher::new()
            .apply_in_place(f.p("app"), f.p("p1.bdp"))
            .unwrap();
        assert_eq!(read_tree(&f.p("app")), f.new1);
        assert_eq!(listing(f.dir.path()), ["app", "p1.bdp", "p2.bdp"]);
    }
}

/// Entries at the stage names an earlier bundelta used (`.OUT.bundelta-new-PID` for this
/// process, `.DIR.bundelta-stage`), a directory holding a victim file or a symlink, are not
/// this run's: they are left alone and the apply succeeds beside them.
#[test]
fn planted_stage_names_are_left_alone() {
    let f = Fixture::new();
    let pid = std::process::id();
    for plant in ["dir", "link"] {
        f.reset();
        fs::write(f.p("victim.txt"), b"precious").unwrap();
        let names = [
            format!(".out.bundelta-new-{pid}"),
            ".app.bundelta-stage".to_string(),
        ];
        for n in &names {
            if plant == "dir" {
                fs::create_dir(f.p(n)).unwrap();
                fs::write(f.p(n).join("victim.txt"), b"precious").unwrap();
            } else {
                std::os::unix::fs::symlink(f.p("victim.txt"), f.p(n)).unwrap();
            }
        }
        f.apply_p1_out_and_in_place();
        for n in &names {
            let victim = if plant == "dir" {
                f.p(n).join("victim.txt")
            } else {
                f.p(n)
            };
            assert_eq!(fs::read(victim).unwrap(), b"precious", "{plant} {n}");
        }
        assert_eq!(fs::read(f.p("victim.txt")).unwrap(), b"precious");
    }
}

/// An out-of-place apply killed with its stage complete (the deterministic test crash point
/// just before the rename) leaves that full-size stage; the next apply to the same OUT removes
/// it and succeeds, leaving nothing beside OUT.
#[test]
fn sigkill_out_of_place_stage_is_removed_by_next_run() {
    let f = Fixture::new();
    for at in ["out-building", "out-built"] {
        f.kill_at(false, at, &["-q", "app", "p1.bdp", "-o", "out"], || {});
        let left: Vec<String> = listing(f.dir.path())
            .into_iter()
            .filter(|n| n.starts_with(".out.bundelta-new-"))
            .collect();
        if at == "out-built" {
            assert_eq!(left.len(), 1, "{at}: {:?}", listing(f.dir.path()));
            assert_eq!(
                read_tree(&f.p(&left[0])),
                f.new1,
                "{at}: stage is full size"
            );
        }
        let out = f.cli(&["-q", "app", "p1.bdp", "-o", "out"], None);
        assert!(
            out.status.success(),
            "{at}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(read_tree(&f.p("out")), f.new1);
        assert_eq!(
            listing(f.dir.path()),
            ["app", "out", "p1.bdp", "p2.bdp"],
            "{at}: leftovers"
        );
    }
}

/// Every test crash point of an in-place apply (deterministic SIGKILL right after a phase is
/// on disk), for a directory and a single file: the target is OLD or NEW, the rerun of the
/// same patch recovers (reported) and ends at NEW with nothing left beside it.
#[test]
fn sigkill_in_each_phase_same_patch_recovers() {
    let f = Fixture::new();
    let mut recovered = 0;
    for (renames, at) in PHASES {
        f.kill_at(renames, at, &["--in-place", "-q", "app", "p1.bdp"], || {});
        if at == "renamed-aside" {
            // Between the two renames: DIR absent, the old tree aside, the stage complete.
            assert!(!f.p("app").exists());
            let aside = listing(f.dir.path())
                .into_iter()
                .find(|n| n.starts_with(".app.bundelta-old-"))
                .expect("old tree aside");
            assert_eq!(read_tree(&f.p(&aside)), f.old);
        } else {
            let now = read_tree(&f.p("app"));
            assert!(now == f.old || now == f.new1, "{at}: neither old nor new");
            assert_eq!(now == f.new1, at == "exchanged", "{at}");
        }
        let out = f.cli(&["--in-place", "--json", "app", "p1.bdp"], None);
        assert!(
            out.status.success(),
            "{at}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let json = String::from_utf8_lossy(&out.stdout).replace(char::is_whitespace, "");
        assert!(json.contains("\"recovered\":true"), "{at}: {json}");
        recovered += 1;
        assert_eq!(read_tree(&f.p("app")), f.new1, "{at}");
        assert_eq!(listing(f.dir.path()), ["app", "p1.bdp", "p2.bdp"], "{at}");
    }
    // A single file, the same way.
    let mut rng = Rng(5);
    let (a, b) = (rng.text(200_000), rng.text(1000));
    let b = [&a[..100_000], &b[..], &a[100_000..]].concat();
    fs::write(
        f.p("p3.bdp"),
        DiffOptions::new().diff_bytes(&a, &b).unwrap(),
    )
    .unwrap();
    for at in ["building", "built", "ready", "exchanged"] {
        let args = ["--in-place", "-q", "one.bin", "p3.bdp"];
        f.kill_at(false, at, &args, || fs::write(f.p("one.bin"), &a).unwrap());
        let now = fs::read(f.p("one.bin")).unwrap();
        assert_eq!(now == b, at == "exchanged", "file {at}");
        assert!(now == a || now == b);
        let out = f.cli(&["--in-place", "--json", "one.bin", "p3.bdp"], None);
        assert!(out.status.success(), "file {at}");
        let json = String::from_utf8_lossy(&out.stdout).replace(char::is_whitespace, "");
        assert!(json.contains("\"recovered\":true"), "file {at}: {json}");
        recovered += 1;
        assert_eq!(fs::read(f.p("one.bin")).unwrap(), b);
        assert_eq!(
            listing(f.dir.path()),
            ["app", "one.bin", "p1.bdp", "p2.bdp", "p3.bdp"],
            "file {at}"
        );
    }
    f.renames.set(false);
    assert_eq!(recovered, PHASES.len() + 4);
}

/// Every in-place crash point, with the exchange and with the two renames (forced).
const PHASES: [(bool, &str); 9] = [
    (false, "building"),
    (false, "built"),
    (false, "ready"),
    (false, "exchanged"),
    (true, "building"),
    (true, "built"),
    (true, "ready"),
    (true, "renamed-aside"),
    (true, "exchanged"),
];

/// The issue's scenario and its variants: P1 killed in each phase, the user writes a file into
/// DIR, then P2 is run: refused with a message naming P1's checksum and how to finish or roll
/// back, DIR and every side file unchanged, the user's file intact. `--rollback` then undoes P1
/// (or, after the swap, keeps its committed new version) without touching the user's file,
/// and P2 applies once DIR is its base again.
#[test]
fn other_patch_after_crash_is_refused_and_rollback_works() {
    let f = Fixture::new();
    let p1 = bundelta::Patcher::new()
        .open(f.p("p1.bdp"))
        .unwrap()
        .checksum();
    for (renames, at) in PHASES {
        f.kill_at(renames, at, &["--in-place", "-q", "app", "p1.bdp"], || {});
        let aside = at == "renamed-aside";
        if aside {
            // DIR is absent between the two renames: the user recreates it.
            fs::create_dir(f.p("app")).unwrap();
        }
        fs::write(f.p("app/user.txt"), b"written after the crash").unwrap();
        let before_tree = read_tree(&f.p("app"));
        // The killed run's lock file (not locked any more) may be removed by the next run.
        let unlocked = |v: Vec<String>| -> Vec<String> {
            v.into_iter()
                .filter(|n| !n.ends_with("bundelta-lock"))
                .collect()
        };
        let before_list = unlocked(listing(f.dir.path()));
        let out = f.cli(&["--in-place", "app", "p2.bdp"], None);
        assert!(!out.status.success(), "{at}: P2 accepted");
        let msg = String::from_utf8_lossy(&out.stderr);
        assert!(msg.contains(&bundelta::hex(&p1)), "{at}: {msg}");
        assert!(msg.contains("--rollback"), "{at}: {msg}");
        assert!(msg.contains("p1.bdp"), "{at}: {msg}");
        assert_eq!(read_tree(&f.p("app")), before_tree, "{at}: DIR changed");
        assert_eq!(
            unlocked(listing(f.dir.path())),
            before_list,
            "{at}: side files changed"
        );
        // The library says the same, typed.
        let e = bundelta::Patcher::new()
            .apply_in_place(f.p("app"), f.p("p2.bdp"))
            .unwrap_err();
        assert!(matches!(e, bundelta::Error::Pending { .. }), "{at}: {e}");
        if aside {
            // Rollback must not clobber the user's new DIR: it says so and changes nothing.
            let out = f.cli(&["--in-place", "--rollback", "app"], None);
            assert!(!out.status.success(), "{at}: rollback over a recreated DIR");
            assert_eq!(read_tree(&f.p("app")), before_tree);
            assert_eq!(unlocked(listing(f.dir.path())), before_list);
            continue;
        }
        if at == "ready" {
            // The same patch does not finish over the user's change either.
            let out = f.cli(&["--in-place", "app", "p1.bdp"], None);
            assert!(
                !out.status.success(),
                "{at}: P1 finished over a changed DIR"
            );
            assert_eq!(read_tree(&f.p("app")), before_tree);
        }
        let out = f.cli(&["--in-place", "--rollback", "--json", "app"], None);
        assert!(
            out.status.success(),
            "{at}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let json = String::from_utf8_lossy(&out.stdout).replace(char::is_whitespace, "");
        let committed = at == "exchanged";
        let want = if committed {
            "already-committed"
        } else {
            "rolled-back"
        };
        assert!(json.contains(want), "{at}: {json}");
        assert_eq!(
            read_tree(&f.p("app")),
            before_tree,
            "{at}: rollback changed DIR"
        );
        assert_eq!(
            fs::read(f.p("app/user.txt")).unwrap(),
            b"written after the crash"
        );
        assert_eq!(listing(f.dir.path()), ["app", "p1.bdp", "p2.bdp"], "{at}");
        let out = f.cli(&["--in-place", "--rollback", "--json", "app"], None);
        assert!(String::from_utf8_lossy(&out.stdout).contains("nothing-pending"));
        if !committed {
            fs::remove_file(f.p("app/user.txt")).unwrap();
            let out = f.cli(&["--in-place", "-q", "app", "p2.bdp"], None);
            assert!(
                out.status.success(),
                "{at}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(read_tree(&f.p("app")), f.new2);
        }
    }
}

/// Journals of format v1 (an older bundelta: no patch identity, the stage at
/// `.DIR.bundelta-stage`) are still read: `building` is discarded; `ready` is finished only
/// when the staged tree is the running patch's new version.
#[test]
fn v1_journals_are_still_read() {
    let f = Fixture::new();
    let stage = f.p(".app.bundelta-stage");
    let journal = f.p(".app.bundelta-journal");
    // building: a partial stage.
    fs::create_dir(&stage).unwrap();
    fs::write(stage.join("partial"), b"x").unwrap();
    fs::write(&journal, "bundelta-journal-v1 building\n").unwrap();
    let r = bundelta::Patcher::new()
        .apply_in_place(f.p("app"), f.p("p1.bdp"))
        .unwrap();
    assert!(r.recovered);
    assert_eq!(read_tree(&f.p("app")), f.new1);
    assert_eq!(listing(f.dir.path()), ["app", "p1.bdp", "p2.bdp"]);
    // ready: a complete stage of NEW1; P2 is refused, P1 finishes.
    use std::os::unix::fs::MetadataExt;
    f.reset();
    write_tree(&stage, &f.new1);
    let md = fs::metadata(&stage).unwrap();
    fs::write(
        &journal,
        format!("bundelta-journal-v1 ready {} {}\n", md.dev(), md.ino()),
    )
    .unwrap();
    // The issue's scenario: the user writes into DIR after the crash, then runs P2.
    fs::write(f.p("app/user.txt"), b"written after the crash").unwrap();
    let e = bundelta::Patcher::new()
        .apply_in_place(f.p("app"), f.p("p2.bdp"))
        .unwrap_err();
    assert_eq!(
        fs::read(f.p("app/user.txt")).unwrap(),
        b"written after the crash",
        "{e}"
    );
    assert!(matches!(e, bundelta::Error::Pending { .. }), "{e}");
    assert!(e.to_string().contains("checksum unknown"), "{e}");
    fs::remove_file(f.p("app/user.txt")).unwrap();
    assert_eq!(read_tree(&f.p("app")), f.old);
    let r = bundelta::Patcher::new()
        .apply_in_place(f.p("app"), f.p("p1.bdp"))
        .unwrap();
    assert!(r.recovered);
    assert_eq!(read_tree(&f.p("app")), f.new1);
    assert_eq!(listing(f.dir.path()), ["app", "p1.bdp", "p2.bdp"]);
}

/// The exchange probe's empty directories that a killed run left are removed by the next run;
/// anything else at those names (a directory with a file in it, a symlink) is refused and kept.
#[test]
fn stale_probe_directories() {
    let f = Fixture::new();
    let (a, b) = (f.p(".app.bundelta-probe-a"), f.p(".app.bundelta-probe-b"));
    fs::create_dir(&a).unwrap();
    fs::create_dir(&b).unwrap();
    bundelta::Patcher::new()
        .apply_in_place(f.p("app"), f.p("p1.bdp"))
        .unwrap();
    assert_eq!(listing(f.dir.path()), ["app", "p1.bdp", "p2.bdp"]);
    for plant in ["dir", "link"] {
        f.reset();
        if plant == "dir" {
            fs::create_dir(&a).unwrap();
            fs::write(a.join("keep.txt"), b"keep").unwrap();
        } else {
            std::os::unix::fs::symlink(f.p("app"), &a).unwrap();
        }
        bundelta::Patcher::new()
            .apply_in_place(f.p("app"), f.p("p1.bdp"))
            .unwrap_err();
        assert_eq!(read_tree(&f.p("app")), f.old, "{plant}");
        if plant == "dir" {
            assert_eq!(fs::read(a.join("keep.txt")).unwrap(), b"keep");
        } else {
            assert!(fs::symlink_metadata(&a).unwrap().file_type().is_symlink());
        }
    }
}
