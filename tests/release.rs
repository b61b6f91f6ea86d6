//! The release layer end to end: releases published into a repository, clients at every old
//! version updated from a directory and over HTTP from a real server on 127.0.0.1 (a small
//! HTTP/1.1 file server in this file, with Range support and injected faults: connections
//! dropped mid-body, wrong Content-Range, corrupted bodies), replayed, expired and wrongly
//! signed indexes, yanked releases, far-behind clients, and a property test over random
//! release histories.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bundelta::release::{
    self, publish, yank, PublishOptions, Repo, Source, UpdateOptions, UpdateReport,
};
use bundelta::{Error, PublicKey, SecretKey};
use proptest::prelude::*;

use crate::util::*;

/// Run a command, which must succeed (its stderr otherwise in the message).
#[cfg(feature = "cli")]
fn ok(mut c: std::process::Command) -> std::process::Output {
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A path as a `&str` argument.
#[cfg(feature = "cli")]
fn s(p: PathBuf) -> String {
    p.to_str().unwrap().to_string()
}

/// What the server does wrong, and what it saw.
#[derive(Default)]
struct Faults {
    /// Close the connection after this many body bytes of a blob...
    drop_after: Option<u64>,
    /// ... for this many blob responses.
    drops: u32,
    /// Answer this many Range requests with a wrong Content-Range.
    wrong_range: u32,
    /// Flip a byte of every blob body.
    corrupt: bool,
    /// Every request: path and Range header.
    log: Vec<(String, Option<String>)>,
}

/// A real HTTP/1.1 server over TCP serving `root`, one connection at a time per thread.
struct Server {
    port: u16,
    faults: Arc<Mutex<Faults>>,
    stop: Arc<AtomicBool>,
}

impl Server {
    fn start(root: &Path) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let faults = Arc::new(Mutex::new(Faults::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (root, f, s) = (root.to_path_buf(), faults.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(c) = conn {
                    let (root, f) = (root.clone(), f.clone());
                    std::thread::spawn(move || serve(c, &root, &f));
                }
            }
        });
        Server { port, faults, stop }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn faults(&self) -> std::sync::MutexGuard<'_, Faults> {
        self.faults.lock().unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn serve(mut c: TcpStream, root: &Path, faults: &Mutex<Faults>) {
    let mut r = BufReader::new(c.try_clone().unwrap());
    let mut line = String::new();
    if r.read_line(&mut line).is_err() {
        return;
    }
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let mut range = None;
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
            break;
        }
        if let Some(v) = h.to_ascii_lowercase().strip_prefix("range:") {
            range = Some(v.trim().to_string());
        }
    }
    let mut f = faults.lock().unwrap();
    f.log.push((path.clone(), range.clone()));
    let rel = path.trim_start_matches('/');
    let file = root.join(rel);
    let body = match (rel.contains(".."), fs::read(&file)) {
        (false, Ok(b)) => b,
        _ => {
            drop(f);
            let _ = c.write_all(
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
            return;
        }
    };
    let blob = rel.starts_with("blobs/");
    let total = body.len() as u64;
    let start = range
        .as_deref()
        .and_then(|v| v.strip_prefix("bytes="))
        .and_then(|v| v.strip_suffix('-'))
        .and_then(|v| v.parse::<u64>().ok());
    let mut head = match start {
        Some(s) if s < total => {
            let cr = if blob && f.wrong_range > 0 {
                f.wrong_range -= 1;
                format!("bytes 0-{}/{total}", total - 1)
            } else {
                format!("bytes {s}-{}/{total}", total - 1)
            };
            format!("HTTP/1.1 206 Partial Content\r\nContent-Range: {cr}\r\n")
        }
        Some(_) => {
            drop(f);
            let _ = c.write_all(b"HTTP/1.1 416 Range Not Satisfiable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            return;
        }
        None => "HTTP/1.1 200 OK\r\n".to_string(),
    };
    let mut out = body[start.unwrap_or(0) as usize..].to_vec();
    if blob && f.corrupt && !out.is_empty() {
        let i = out.len() / 2;
        out[i] ^= 0x40;
    }
    let cut = if blob && f.drops > 0 {
        f.drops -= 1;
        f.drop_after
    } else {
        None
    };
    drop(f);
    head.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        out.len()
    ));
    let _ = c.write_all(head.as_bytes());
    match cut {
        Some(n) => {
            let _ = c.write_all(&out[..(n as usize).min(out.len())]);
            let _ = c.flush();
            let _ = c.shutdown(Shutdown::Both);
        }
        None => {
            let _ = c.write_all(&out);
        }
    }
}

/// A release history: versions of a directory tree, each an edit of the one before.
fn history(seed: u64, n: usize) -> Vec<Tree> {
    let mut rng = Rng(seed);
    let mut t = random_tree(&mut rng, 12);
    // One larger file, so that blobs span many TCP reads.
    t.insert(
        "app.bin".into(),
        Item::File {
            data: rng.text(200_000),
            exec: false,
        },
    );
    let version = |t: &mut Tree, i: usize| {
        t.insert(
            "VERSION".into(),
            Item::File {
                data: format!("{i}\n").into_bytes(),
                exec: false,
            },
        );
    };
    version(&mut t, 0);
    let mut out = vec![t.clone()];
    for i in 1..n {
        t = edit_tree(&mut rng, &t);
        // Every version differs, whatever the random edits did.
        version(&mut t, i);
        if let Some(Item::File { data, .. }) = t.get_mut("app.bin") {
            *data = rng.edit(data, 20);
        }
        out.push(t.clone());
    }
    out
}

struct Setup {
    dir: tempfile::TempDir,
    key: SecretKey,
    repo: Repo,
    trees: Vec<Tree>,
}

impl Setup {
    /// Publish `trees` as 1.0, 1.1, ... with `opts`.
    fn new(trees: Vec<Tree>, opts: &PublishOptions) -> Setup {
        let n = trees.len();
        Setup::first(trees, n, opts)
    }

    /// Publish the first `n` of `trees` (the rest with [`Setup::publish`]).
    fn first(trees: Vec<Tree>, n: usize, opts: &PublishOptions) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let key = SecretKey::from_bytes([0x42; 32]);
        let repo = Repo::init(dir.path().join("repo"), "app", true, &key, 0).unwrap();
        let s = Setup {
            dir,
            key,
            repo,
            trees,
        };
        for i in 0..n {
            s.publish(i, opts);
        }
        s
    }

    fn publish(&self, i: usize, opts: &PublishOptions) {
        let src = self.p(&format!("src-{i}"));
        if !src.exists() {
            write_tree(&src, &self.trees[i]);
        }
        let mut o = opts.clone();
        o.now = Some(1_000_000);
        publish(&self.repo, &format!("1.{i}"), &src, &o, &self.key).unwrap();
    }

    fn p(&self, n: &str) -> PathBuf {
        self.dir.path().join(n)
    }

    fn public(&self) -> PublicKey {
        self.key.public_key()
    }

    /// An install of release `i` at `name`.
    fn install(&self, name: &str, i: usize) -> PathBuf {
        let t = self.p(name);
        write_tree(&t, &self.trees[i]);
        t
    }

    fn update(
        &self,
        target: &Path,
        src: &Source,
        opts: &UpdateOptions,
    ) -> Result<UpdateReport, Error> {
        let mut o = opts.clone();
        o.now.get_or_insert(1_000_100);
        release::update(target, src, &self.public(), &o)
    }
}

fn opts() -> UpdateOptions {
    let mut o = UpdateOptions::default();
    o.now = Some(1_000_100);
    o.memory_limit = 64 << 20;
    o.timeout = std::time::Duration::from_secs(10);
    o
}

#[test]
fn every_old_version_reaches_the_newest_over_http_and_from_a_directory() {
    let s = Setup::new(history(1, 4), &PublishOptions::default());
    let ix = s.repo.load_index(&s.public()).unwrap();
    assert_eq!(ix.releases.len(), 4);
    assert!(
        !ix.releases[3].patches.is_empty(),
        "patches into the newest release"
    );
    let server = Server::start(s.repo.local_dir().unwrap());
    for (how, src) in [
        ("http", Source::parse(&server.url())),
        (
            "dir",
            Source::parse(s.repo.local_dir().unwrap().to_str().unwrap()),
        ),
    ] {
        for i in 0..4 {
            let t = s.install(&format!("{how}-at-{i}"), i);
            let r = s.update(&t, &src, &opts()).unwrap();
            assert_eq!(read_tree(&t), s.trees[3], "{how} from 1.{i}");
            assert_eq!(r.target.as_deref(), Some("1.3"));
            if i < 3 {
                assert!(
                    r.changed && r.route_bytes < r.full_bytes,
                    "{how} 1.{i}: {r:?}"
                );
                assert_eq!(r.from.as_deref(), Some(format!("1.{i}").as_str()));
            } else {
                assert!(!r.changed && r.steps.is_empty(), "already current");
            }
            // Nothing is left beside the install but its state directory.
            let state = release::state_dir(&t).unwrap();
            assert_eq!(
                fs::read_dir(state.join("downloads")).unwrap().count(),
                0,
                "downloads kept after success"
            );
        }
    }
    // A fresh install (nothing there) takes the full blob.
    let t = s.p("fresh");
    let r = s
        .update(&t, &Source::parse(&server.url()), &opts())
        .unwrap();
    assert_eq!(read_tree(&t), s.trees[3]);
    assert_eq!((r.from, r.route_bytes), (None, r.full_bytes));
}

#[test]
fn dropped_connections_are_resumed_with_range_requests() {
    let s = Setup::new(history(2, 2), &PublishOptions::default());
    let server = Server::start(s.repo.local_dir().unwrap());
    let src = Source::parse(&server.url());
    let full = s.repo.load_index(&s.public()).unwrap().releases[1]
        .full
        .bytes;
    // Within one run: two drops, then the rest with Range requests.
    {
        let mut f = server.faults();
        f.drop_after = Some(full / 3);
        f.drops = 2;
    }
    let t = s.p("fresh");
    s.update(&t, &src, &opts()).unwrap();
    assert_eq!(read_tree(&t), s.trees[1]);
    let ranges: Vec<_> = server
        .faults()
        .log
        .iter()
        .filter(|(p, _)| p.starts_with("/blobs/"))
        .map(|(_, r)| r.clone())
        .collect();
    assert_eq!(ranges[0], None);
    assert_eq!(
        ranges[1].as_deref(),
        Some(format!("bytes={}-", full / 3).as_str())
    );
    assert_eq!(ranges.len(), 3, "{ranges:?}");

    // Across runs: a run that gives up keeps its partial download; the next one resumes it.
    let t2 = s.p("fresh2");
    {
        let mut f = server.faults();
        f.drop_after = Some(full / 2);
        f.drops = 1;
        f.log.clear();
    }
    let mut once = opts();
    once.retries = 0;
    let e = s.update(&t2, &src, &once).unwrap_err();
    assert!(matches!(e, Error::Repository { .. }), "{e}");
    assert!(!t2.exists(), "nothing installed after a failed download");
    let plan = {
        let mut o = opts();
        o.dry_run = true;
        s.update(&t2, &src, &o).unwrap()
    };
    assert_eq!(plan.steps[0].resumed, full / 2);
    s.update(&t2, &src, &opts()).unwrap();
    assert_eq!(read_tree(&t2), s.trees[1]);
    assert!(server
        .faults()
        .log
        .iter()
        .any(|(_, r)| r.as_deref() == Some(format!("bytes={}-", full / 2).as_str())));
}

#[test]
fn wrong_content_range_restarts_and_corruption_is_refused() {
    let s = Setup::new(history(3, 2), &PublishOptions::default());
    let server = Server::start(s.repo.local_dir().unwrap());
    let src = Source::parse(&server.url());
    // A partial download, then a server that answers the Range with the wrong range: the
    // client throws the partial away and starts over.
    let t = s.p("a");
    {
        let mut f = server.faults();
        f.drop_after = Some(1000);
        f.drops = 1;
        f.wrong_range = 1;
    }
    s.update(&t, &src, &opts()).unwrap();
    assert_eq!(read_tree(&t), s.trees[1]);

    // Corrupted bodies: refused after download, the install left at its version.
    let t = s.install("b", 0);
    server.faults().corrupt = true;
    let e = s.update(&t, &src, &opts()).unwrap_err();
    assert!(e.to_string().contains("damaged or replaced"), "{e}");
    assert_eq!(read_tree(&t), s.trees[0]);
    server.faults().corrupt = false;
    s.update(&t, &src, &opts()).unwrap();
    assert_eq!(read_tree(&t), s.trees[1]);
}

#[test]
fn replayed_expired_and_wrongly_signed_indexes_are_refused() {
    let s = Setup::new(history(4, 2), &PublishOptions::default());
    let old_index = fs::read(s.repo.local_dir().unwrap().join("index.json")).unwrap();
    let old_sig = fs::read(s.repo.local_dir().unwrap().join("index.json.sig")).unwrap();
    s.publish(2.min(s.trees.len() - 1), &PublishOptions::default()); // re-publication: new index version
    let src = Source::parse(s.repo.local_dir().unwrap().to_str().unwrap());
    let t = s.install("c", 0);
    s.update(&t, &src, &opts()).unwrap();
    // The old index, validly signed, served again: a replay.
    fs::write(s.repo.local_dir().unwrap().join("index.json"), &old_index).unwrap();
    fs::write(s.repo.local_dir().unwrap().join("index.json.sig"), &old_sig).unwrap();
    let e = s.update(&t, &src, &opts()).unwrap_err();
    assert!(
        matches!(&e, Error::StaleIndex { detail, .. } if detail.contains("replayed")),
        "{e}"
    );
    // A fresh client accepts it (it has seen nothing newer).
    let t2 = s.install("d", 0);
    s.update(&t2, &src, &opts()).unwrap();
    // Expired: the client's clock past the expiry.
    let t3 = s.install("e", 0);
    let mut late = opts();
    late.now = Some(1_000_000 + 31 * 24 * 3600);
    let e = s.update(&t3, &src, &late).unwrap_err();
    assert!(
        matches!(&e, Error::StaleIndex { detail, .. } if detail.contains("expired")),
        "{e}"
    );
    assert_eq!(read_tree(&t3), s.trees[0]);
    // Signed by another key.
    let other = SecretKey::from_bytes([0x43; 32]).public_key();
    let e = release::update(&t3, &src, &other, &opts()).unwrap_err();
    assert!(matches!(e, Error::Signature { .. }), "{e}");
    // A flipped byte of the index.
    let mut bad = old_index.clone();
    let i = bad.len() / 2;
    bad[i] ^= 1;
    fs::write(s.repo.local_dir().unwrap().join("index.json"), &bad).unwrap();
    assert!(matches!(
        s.update(&t3, &src, &opts()).unwrap_err(),
        Error::Signature { .. }
    ));
    assert_eq!(read_tree(&t3), s.trees[0]);
}

#[test]
fn yanked_releases_rollout_and_far_behind_clients() {
    let mut o = PublishOptions::default();
    o.bases = 1;
    let s = Setup::new(history(5, 4), &o);
    let src = Source::parse(s.repo.local_dir().unwrap().to_str().unwrap());
    // K = 1: 1.0 has no patch into 1.3; its route is a chain or the full blob, whichever is
    // smaller.
    let t = s.install("far", 0);
    let r = s.update(&t, &src, &opts()).unwrap();
    assert_eq!(read_tree(&t), s.trees[3]);
    assert!(r.steps.len() > 1 || r.steps[0].from.is_none(), "{r:?}");
    // Yank 1.3: clients stop at 1.2.
    let mut po = PublishOptions::default();
    po.now = Some(1_000_000);
    yank(&s.repo, "1.3", &s.key, &po).unwrap();
    let t = s.install("y", 1);
    let r = s.update(&t, &src, &opts()).unwrap();
    assert_eq!(r.target.as_deref(), Some("1.2"));
    assert_eq!(read_tree(&t), s.trees[2]);

    // No patches worth keeping: the full blob.
    let mut none = PublishOptions::default();
    none.max_ratio = 0.0;
    let s2 = Setup::new(history(6, 2), &none);
    let t = s2.install("f", 0);
    let r = s2
        .update(
            &t,
            &Source::parse(s2.repo.local_dir().unwrap().to_str().unwrap()),
            &opts(),
        )
        .unwrap();
    assert_eq!((r.steps.len(), r.steps[0].from.clone()), (1, None));
    assert_eq!(read_tree(&t), s2.trees[1]);
}

#[test]
fn publishing_is_reproducible_and_incremental() {
    let trees = history(7, 3);
    let a = Setup::new(trees.clone(), &PublishOptions::default());
    let b = Setup::new(trees, &PublishOptions::default());
    let files = |r: &Repo| {
        let mut v: Vec<(String, Vec<u8>)> = Vec::new();
        for d in [
            r.local_dir().unwrap().to_path_buf(),
            r.local_dir().unwrap().join("blobs"),
        ] {
            for e in fs::read_dir(&d).unwrap() {
                let e = e.unwrap();
                if e.file_type().unwrap().is_file() {
                    v.push((
                        e.file_name().to_string_lossy().into(),
                        fs::read(e.path()).unwrap(),
                    ));
                }
            }
        }
        v.sort();
        v
    };
    assert_eq!(
        files(&a.repo),
        files(&b.repo),
        "same inputs, same repository bytes"
    );
    // Publishing the same version again computes nothing new.
    let before = a.repo.load_index(&a.public()).unwrap();
    let r = publish(
        &a.repo,
        "1.2",
        a.p("src-2"),
        &PublishOptions::default(),
        &a.key,
    )
    .unwrap();
    assert!(
        r.bases
            .iter()
            .all(|(_, o)| matches!(o, release::BaseOutcome::Patch { new: false, .. })),
        "{:?}",
        r.bases
    );
    let after = a.repo.load_index(&a.public()).unwrap();
    assert_eq!(before.releases, after.releases);
    // Another bundle under an existing version is refused.
    let e = publish(
        &a.repo,
        "1.2",
        a.p("src-1"),
        &PublishOptions::default(),
        &a.key,
    )
    .unwrap_err();
    assert!(matches!(e, Error::Repository { .. }), "{e}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, ..ProptestConfig::default() })]

    /// Random release histories (some releases yanked, random K and ratio) and a client at a
    /// random version: the update ends at the newest non-yanked release with exactly its
    /// content, or refuses with the install untouched.
    #[test]
    fn update_reaches_the_target_or_leaves_the_install_intact(
        seed in 0u64..1000,
        n in 2usize..5,
        k in 1usize..4,
        ratio in prop::sample::select(vec![0.0, 0.3, 0.8, 1.0]),
        at in 0usize..5,
        yanked in prop::collection::vec(any::<bool>(), 5),
    ) {
        let mut o = PublishOptions::default();
        o.bases = k;
        o.max_ratio = ratio;
        let s = Setup::new(history(seed, n), &o);
        let mut po = PublishOptions::default();
        po.now = Some(1_000_000);
        for (i, y) in yanked.iter().enumerate().take(n) {
            if *y {
                yank(&s.repo, &format!("1.{i}"), &s.key, &po).unwrap();
            }
        }
        let at = at % n;
        let t = s.install("client", at);
        let src = Source::parse(s.repo.local_dir().unwrap().to_str().unwrap());
        let want = (0..n).rev().find(|i| !yanked[*i]);
        match s.update(&t, &src, &opts()) {
            Ok(r) => {
                let now = read_tree(&t);
                match want {
                    Some(w) if w > at => prop_assert_eq!(&now, &s.trees[w]),
                    _ => prop_assert_eq!(&now, &s.trees[at]),
                }
                prop_assert!(r.route_bytes <= r.full_bytes || r.steps.is_empty());
            }
            Err(e) => {
                prop_assert_eq!(read_tree(&t), s.trees[at].clone(), "{}", e);
            }
        }
    }
}

#[test]
#[cfg(feature = "cli")]
fn cli_publishes_and_updates_over_http() {
    use std::process::Command;
    let trees = history(8, 3);
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    let bd = |args: &[&std::ffi::OsStr]| {
        let out = Command::new(env!("CARGO_BIN_EXE_bundelta"))
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{:?}: {}",
            args,
            String::from_utf8_lossy(&out.stderr)
        );
        out
    };
    let os = |s: &str| std::ffi::OsString::from(s);
    bd(&[&os("keygen"), &os("-o"), p("k").as_os_str(), &os("-q")]);
    bd(&[
        &os("release"),
        &os("init"),
        p("repo").as_os_str(),
        &os("--name"),
        &os("app"),
        &os("--key"),
        p("k").as_os_str(),
    ]);
    for (i, t) in trees.iter().enumerate() {
        write_tree(&p(&format!("v{i}")), t);
        bd(&[
            &os("release"),
            &os("add"),
            p("repo").as_os_str(),
            &os(&format!("1.{i}")),
            p(&format!("v{i}")).as_os_str(),
            &os("--key"),
            p("k").as_os_str(),
            &os("-q"),
        ]);
    }
    let server = Server::start(&p("repo"));
    write_tree(&p("inst"), &trees[0]);
    let out = bd(&[
        &os("update"),
        p("inst").as_os_str(),
        &os("--repo"),
        &os(&server.url()),
        &os("--pubkey"),
        p("k.pub").as_os_str(),
        &os("--dry-run"),
        &os("--json"),
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (
            v["from"].as_str(),
            v["target"].as_str(),
            v["changed"].as_bool()
        ),
        (Some("1.0"), Some("1.2"), Some(false))
    );
    assert_eq!(read_tree(&p("inst")), trees[0]);
    server.faults().drop_after = Some(500);
    server.faults().drops = 1;
    bd(&[
        &os("update"),
        p("inst").as_os_str(),
        &os("--repo"),
        &os(&server.url()),
        &os("--pubkey"),
        p("k.pub").as_os_str(),
        &os("-q"),
    ]);
    assert_eq!(read_tree(&p("inst")), trees[2]);
    let out = bd(&[
        &os("update"),
        p("inst").as_os_str(),
        &os("--repo"),
        &os(&server.url()),
        &os("--pubkey"),
        p("k.pub").as_os_str(),
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("already at 1.2"));
}

/// Scale-out: plan, each job as its own process (concurrently, job index from
/// JOB_COMPLETION_INDEX as a Kubernetes Indexed Job gives it), commit; a job result that
/// does not make the release is refused at commit with the index unchanged.
#[test]
#[cfg(feature = "cli")]
fn plan_jobs_in_separate_processes_and_commit() {
    use std::process::Command;
    let trees = history(9, 4);
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    let run = |args: &[&str], env: Option<(&str, String)>| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_bundelta"));
        c.args(args);
        if let Some((k, v)) = env {
            c.env(k, v);
        }
        c
    };
    let (repo, key, pubkey) = (s(p("repo")), s(p("k")), s(p("k.pub")));
    ok(run(&["keygen", "-o", &key, "-q"], None));
    ok(run(
        &[
            "release", "init", &repo, "--name", "app", "--key", &key, "-q",
        ],
        None,
    ));
    for (i, t) in trees.iter().enumerate() {
        write_tree(&p(&format!("v{i}")), t);
    }
    for i in 0..3 {
        let v = format!("1.{i}");
        ok(run(
            &[
                "release",
                "add",
                &repo,
                &v,
                &s(p(&format!("v{i}"))),
                "--key",
                &key,
                "-q",
            ],
            None,
        ));
    }
    let out = ok(run(
        &[
            "release",
            "plan",
            &repo,
            "1.3",
            &s(p("v3")),
            "--pubkey",
            &pubkey,
            "--json",
        ],
        None,
    ));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let jobs = plan["jobs"].as_u64().unwrap() as usize;
    assert_eq!(jobs, 3);
    let index_before = fs::read(p("repo/index.json")).unwrap();
    // All jobs at once, as separate processes.
    let children: Vec<_> = (0..jobs)
        .map(|n| {
            run(
                &["release", "run-job", &repo, "1.3", "-q"],
                Some(("JOB_COMPLETION_INDEX", n.to_string())),
            )
            .spawn()
            .unwrap()
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    assert_eq!(
        fs::read(p("repo/index.json")).unwrap(),
        index_before,
        "jobs change no index"
    );
    // A forged result: job 0 claims the patch of job 1 (a valid patch, from another base).
    let dirs: Vec<_> = fs::read_dir(p("repo/jobs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let (j0, j1) = (dirs[0].join("job-0.json"), dirs[0].join("job-1.json"));
    let good = fs::read(&j0).unwrap();
    let mut forged: serde_json::Value = serde_json::from_slice(&good).unwrap();
    let other: serde_json::Value = serde_json::from_slice(&fs::read(&j1).unwrap()).unwrap();
    forged["patch"] = other["patch"].clone();
    fs::write(&j0, serde_json::to_vec(&forged).unwrap()).unwrap();
    let out = run(&["release", "commit", &repo, "1.3", "--key", &key], None)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert_eq!(fs::read(p("repo/index.json")).unwrap(), index_before);
    fs::write(&j0, &good).unwrap();
    ok(run(
        &["release", "commit", &repo, "1.3", "--key", &key, "-q"],
        None,
    ));
    assert!(!p("repo/jobs").exists(), "jobs cleaned up after commit");
    // Clients at every old version reach 1.3.
    let key = PublicKey::from_text(&fs::read(&pubkey).unwrap()).unwrap();
    for i in 0..3 {
        let t = p(&format!("client-{i}"));
        write_tree(&t, &trees[i]);
        let mut o = opts();
        o.now = None;
        release::update(&t, &Source::parse(&repo), &key, &o).unwrap();
        assert_eq!(read_tree(&t), trees[3]);
    }
}

/// The repository on S3-compatible object storage: a real server (`s3s-fs`, installed by
/// .ci/run) on 127.0.0.1, publication split into plan / jobs as concurrent processes /
/// commit, then a client updated from the bucket. Without `s3s-fs` on PATH
/// the test says SKIPPED, unless BUNDELTA_REQUIRE_S3 is set (CI sets it), when it fails.
#[test]
#[cfg(all(feature = "cli", feature = "s3"))]
fn s3_repository_with_jobs_as_processes() {
    use std::process::{Command, Stdio};
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("s3s-fs").is_file()))
        .unwrap_or(false);
    if !found {
        assert!(
            std::env::var_os("BUNDELTA_REQUIRE_S3").is_none(),
            "s3s-fs is not on PATH (cargo install s3s-fs --features binary)"
        );
        eprintln!("SKIPPED: s3s-fs not on PATH");
        return;
    }
    let trees = history(10, 3);
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    fs::create_dir_all(p("s3/bucket")).unwrap();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _server = Kill(
        Command::new("s3s-fs")
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args([
                "--access-key",
                "bundelta",
                "--secret-key",
                "bundelta-secret",
            ])
            .arg(p("s3"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    for _ in 0..100 {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let bd = |args: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_bundelta"));
        c.args(args)
            .env("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}"))
            .env("AWS_ACCESS_KEY_ID", "bundelta")
            .env("AWS_SECRET_ACCESS_KEY", "bundelta-secret")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ALLOW_HTTP", "true");
        c
    };
    let (key, pubkey) = (s(p("k")), s(p("k.pub")));
    let repo = "s3://bucket/app";
    ok(bd(&["keygen", "-o", &key, "-q"]));
    ok(bd(&[
        "release", "init", repo, "--name", "app", "--key", &key, "-q",
    ]));
    for (i, t) in trees.iter().enumerate() {
        write_tree(&p(&format!("v{i}")), t);
    }
    for i in 0..2 {
        ok(bd(&[
            "release",
            "add",
            repo,
            &format!("1.{i}"),
            &s(p(&format!("v{i}"))),
            "--key",
            &key,
            "-q",
        ]));
    }
    let out = ok(bd(&[
        "release",
        "plan",
        repo,
        "1.2",
        &s(p("v2")),
        "--pubkey",
        &pubkey,
        "--json",
    ]));
    let jobs = serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["jobs"]
        .as_u64()
        .unwrap();
    assert_eq!(jobs, 2);
    let children: Vec<_> = (0..jobs)
        .map(|n| {
            let mut c = bd(&[
                "release",
                "run-job",
                repo,
                "1.2",
                "--job",
                &n.to_string(),
                "-q",
            ]);
            c.spawn().unwrap()
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    ok(bd(&["release", "commit", repo, "1.2", "--key", &key, "-q"]));
    let out = ok(bd(&[
        "release", "list", repo, "--pubkey", &pubkey, "--json",
    ]));
    let ix: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(ix["releases"].as_array().unwrap().len(), 3);
    assert_eq!(ix["releases"][2]["patches"].as_array().unwrap().len(), 2);
    // Wrong credentials are refused by the server, and say so.
    let out = bd(&["release", "list", repo, "--pubkey", &pubkey])
        .env("AWS_SECRET_ACCESS_KEY", "wrong")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("403"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A client at 1.0 updates from the bucket.
    write_tree(&p("client"), &trees[0]);
    ok(bd(&[
        "update",
        &s(p("client")),
        "--repo",
        repo,
        "--pubkey",
        &pubkey,
        "-q",
    ]));
    assert_eq!(read_tree(&p("client")), trees[2]);
}

/// Pruning keeps the newest releases' patches and every full blob: clients still reach the
/// newest release, and the blobs no index names are gone.
#[test]
fn prune_drops_old_patches_and_their_blobs() {
    let s = Setup::new(history(11, 4), &PublishOptions::default());
    let blobs = |s: &Setup| fs::read_dir(s.p("repo/blobs")).unwrap().count();
    let before = blobs(&s);
    let mut po = PublishOptions::default();
    po.now = Some(1_000_000);
    let r = release::prune(&s.repo, 1, &s.key, &po).unwrap();
    let ix = s.repo.load_index(&s.public()).unwrap();
    assert!(ix.releases[..3].iter().all(|r| r.patches.is_empty()));
    assert_eq!(ix.releases[3].patches.len(), 3);
    assert_eq!(r.patches, 1 + 2);
    assert_eq!(blobs(&s), before - r.blobs);
    assert_eq!(blobs(&s), 4 + 3, "four full blobs and the patches into 1.3");
    let src = Source::parse(s.p("repo").to_str().unwrap());
    for i in 0..3 {
        let t = s.install(&format!("p{i}"), i);
        let up = s.update(&t, &src, &opts()).unwrap();
        assert_eq!(read_tree(&t), s.trees[3]);
        assert_eq!(up.steps.len(), 1);
    }
}

/// A blob cut short on the server: the client tries again, gives up, and the install stays
/// at its version; once the blob is whole again the update succeeds.
#[test]
fn truncated_blob_on_the_server_is_refused() {
    let s = Setup::new(history(12, 2), &PublishOptions::default());
    let ix = s.repo.load_index(&s.public()).unwrap();
    let blob = s.p("repo/blobs").join(&ix.releases[1].patches[0].blake3);
    let whole = fs::read(&blob).unwrap();
    fs::write(&blob, &whole[..whole.len() / 2]).unwrap();
    let server = Server::start(&s.p("repo"));
    let src = Source::parse(&server.url());
    let t = s.install("t", 0);
    let mut o = opts();
    o.retries = 1;
    let e = s.update(&t, &src, &o).unwrap_err();
    assert!(matches!(e, Error::Repository { .. }), "{e}");
    assert_eq!(read_tree(&t), s.trees[0]);
    fs::write(&blob, &whole).unwrap();
    s.update(&t, &src, &opts()).unwrap();
    assert_eq!(read_tree(&t), s.trees[1]);
}

/// `bundelta update` killed (SIGKILL) at each step of an update, patch and full routes: the
/// install is at the old or the new release, never in between, and the next run finishes.
#[test]
#[cfg(feature = "cli")]
fn update_killed_at_each_step_finishes_on_the_next_run() {
    use std::process::Command;
    for (ratio, points) in [
        (
            0.8,
            &[
                "update-downloaded",
                "building",
                "built",
                "ready",
                "exchanged",
            ][..],
        ),
        (
            0.0,
            &["update-downloaded", "full-built", "full-exchanged"][..],
        ),
    ] {
        let mut o = PublishOptions::default();
        o.max_ratio = ratio;
        let s = Setup::new(history(13, 2), &o);
        // The CLI reads the real clock: an index valid from now.
        release::resign(&s.repo, &s.key, &PublishOptions::default()).unwrap();
        let pubkey = s.p("k.pub");
        fs::write(&pubkey, s.public().to_text()).unwrap();
        for point in points {
            let t = s.install(&format!("k-{ratio}-{point}"), 0);
            let run = |crash: Option<&str>| {
                let mut c = Command::new(env!("CARGO_BIN_EXE_bundelta"));
                c.arg("update")
                    .arg(&t)
                    .arg("--repo")
                    .arg(s.p("repo"))
                    .arg("--pubkey");
                c.arg(&pubkey).arg("-q");
                if let Some(at) = crash {
                    c.env("BUNDELTA_TEST_CRASH_AT", at);
                }
                c.status().unwrap()
            };
            assert!(!run(Some(point)).success(), "{point}: not killed");
            let now = read_tree(&t);
            assert!(
                now == s.trees[0] || now == s.trees[1],
                "{point}: in between"
            );
            assert!(run(None).success(), "{point}: rerun");
            assert_eq!(read_tree(&t), s.trees[1], "{point}");
            let beside: Vec<String> = fs::read_dir(s.dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| {
                    n.contains(&format!("k-{ratio}-{point}")) && !n.ends_with(".bundelta-update")
                })
                .filter(|n| !n.starts_with("k-"))
                .collect();
            assert!(beside.is_empty(), "{point}: left {beside:?}");
        }
    }
}

/// The policy fields at the client: app-version bounds, rollout buckets, `requires` gates
/// and the mandatory flag.
#[test]
fn app_bounds_rollout_requires_and_mandatory() {
    let trees = history(14, 5);
    let s = Setup::first(trees, 2, &PublishOptions::default());
    let mut o = PublishOptions::default();
    o.mandatory = true;
    o.min_app = Some("2.0".into());
    s.publish(2, &o); // 1.2: mandatory, app >= 2.0
    let mut o = PublishOptions::default();
    o.requires = Some("1.2".into());
    s.publish(3, &o); // 1.3: clients before 1.2 pass through it
    let mut o = PublishOptions::default();
    o.rollout = 0;
    s.publish(4, &o); // 1.4: offered to nobody yet
    let src = Source::parse(s.p("repo").to_str().unwrap());
    let with_app = |v: Option<&str>| {
        let mut o = opts();
        o.app_version = v.map(str::to_string);
        o.dry_run = true;
        o
    };
    let t = s.install("c", 0);
    // No app version, or one below 2.0: nothing past 1.1 (1.2 is bounded, 1.3 needs 1.2).
    for v in [None, Some("1.9.9")] {
        let r = s.update(&t, &src, &with_app(v)).unwrap();
        assert_eq!(r.target.as_deref(), Some("1.1"), "app {v:?}");
    }
    // App 2.1: 1.3 through 1.2 (the gate), mandatory on the way; 1.4 is at 0% rollout.
    let r = s.update(&t, &src, &with_app(Some("2.1"))).unwrap();
    assert_eq!(r.target.as_deref(), Some("1.3"));
    assert!(r.mandatory);
    assert!(r.steps.iter().any(|st| st.to == "1.2"), "{r:?}");
    let mut real = with_app(Some("2.1"));
    real.dry_run = false;
    s.update(&t, &src, &real).unwrap();
    assert_eq!(read_tree(&t), s.trees[3]);
    // Rollout buckets: about the stated share of random client ids, stable per id.
    let ix = s.repo.load_index(&s.public()).unwrap();
    let mut half = ix.releases[4].clone();
    half.rollout = 50;
    let ids: Vec<String> = (0..2000).map(|i| format!("{i:032x}")).collect();
    let inn = ids
        .iter()
        .filter(|id| release::in_rollout(id, &half))
        .count();
    assert!((800..1200).contains(&inn), "{inn} of 2000 in a 50% rollout");
    assert!(ids
        .iter()
        .all(|id| !release::in_rollout(id, &ix.releases[4])));
    half.rollout = 100;
    assert!(ids.iter().all(|id| release::in_rollout(id, &half)));
}
