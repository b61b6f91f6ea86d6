//! Applying a patch read once, front to back, from a reader ([`Patcher::open_reader`]): the
//! same outputs as from a file, and the same refusals, with nothing left behind when the
//! damage shows only at the end (the trailer, the signature).

use std::fs;
use std::io::{self, Read};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bundelta::format::Header;
use bundelta::{DiffOptions, Error, Patcher, ReadAt};

use crate::util::*;

/// A reader that gives at most `step` bytes per read and counts what it gave.
struct Trickle {
    data: Vec<u8>,
    at: usize,
    step: usize,
    given: Arc<AtomicU64>,
}

impl Read for Trickle {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(self.step).min(self.data.len() - self.at);
        buf[..n].copy_from_slice(&self.data[self.at..self.at + n]);
        self.at += n;
        self.given.fetch_add(n as u64, Ordering::SeqCst);
        Ok(n)
    }
}

fn trickle(data: &[u8], step: usize) -> (Trickle, Arc<AtomicU64>) {
    let given = Arc::new(AtomicU64::new(0));
    let t = Trickle {
        data: data.to_vec(),
        at: 0,
        step,
        given: Arc::clone(&given),
    };
    (t, given)
}

/// Apply `patch` read from a trickling reader; the result and whether OUT exists. Nothing
/// but OLD and (on success) OUT may be left in the directory.
fn apply_streamed(
    patcher: &Patcher,
    old: &Path,
    patch: &[u8],
    step: usize,
) -> (Result<bundelta::ApplyReport, Error>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let (r, _) = trickle(patch, step);
    let result = patcher
        .open_reader(r, "stream")
        .and_then(|p| patcher.apply_patch(old, p, &out));
    let names = listing(dir.path());
    match &result {
        Ok(_) => assert_eq!(names, ["out"], "{names:?}"),
        Err(_) => assert!(names.is_empty(), "left behind: {names:?}"),
    }
    (result, dir)
}

#[test]
fn streamed_patches_apply_as_files_do() {
    let mut rng = Rng(0x57ea);
    // A single file, a zip (transform 2) and a directory tree, signed and not.
    let old_file = rng.text(60_000);
    let new_file = rng.edit(&old_file, 5);
    let (old_tree, new_tree, _) = lib_trees(3, false);
    let work = tempfile::tempdir().unwrap();
    let (of, ot) = (work.path().join("old-file"), work.path().join("old-tree"));
    let nt = work.path().join("new-tree");
    fs::write(&of, &old_file).unwrap();
    write_tree(&ot, &old_tree);
    write_tree(&nt, &new_tree);
    let key = bundelta::SecretKey::from_bytes([5u8; 32]);
    for signed in [false, true] {
        let mut o = DiffOptions::new();
        if signed {
            o.sign_with(key.clone());
        }
        let file_patch = o.diff_bytes(&old_file, &new_file).unwrap();
        let (tree_patch, _) = o.diff_paths(&ot, &nt).unwrap();
        let mut patcher = Patcher::new();
        if signed {
            patcher.require_signature(key.public_key());
        }
        for step in [1, 7, 64 << 10] {
            let (r, dir) = apply_streamed(&patcher, &of, &file_patch, step);
            r.unwrap();
            assert_eq!(fs::read(dir.path().join("out")).unwrap(), new_file);
            let (r, dir) = apply_streamed(&patcher, &ot, &tree_patch, step);
            r.unwrap();
            assert_eq!(read_tree(&dir.path().join("out")), new_tree);
        }
        // Verify from a reader, with and without OLD.
        let (r, _) = trickle(&tree_patch, 3);
        let p = patcher.open_reader(r, "stream").unwrap();
        assert!(patcher.verify_patch(p, Some(&ot)).unwrap().is_some());
        let (r, given) = trickle(&tree_patch, 3);
        let p = patcher.open_reader(r, "stream").unwrap();
        let checksum_before = p.checksum();
        assert!(patcher.verify_patch(p, None).unwrap().is_none());
        assert_eq!(given.load(Ordering::SeqCst), tree_patch.len() as u64);
        assert_eq!(checksum_before, [0; 32]);
    }
}

#[test]
fn damage_found_only_at_the_end_leaves_nothing() {
    let mut rng = Rng(0x57eb);
    let old = rng.text(40_000);
    let new = rng.edit(&old, 4);
    let dir = tempfile::tempdir().unwrap();
    let of = dir.path().join("old");
    fs::write(&of, &old).unwrap();
    let key = bundelta::SecretKey::from_bytes([9u8; 32]);
    let patch = DiffOptions::new()
        .sign_with(key.clone())
        .diff_bytes(&old, &new)
        .unwrap();
    let n = patch.len();
    let mut patcher = Patcher::new();
    // A flipped trailer: every file rebuilds and matches, only the checksum fails.
    let mut bad = patch.clone();
    bad[n - 1] ^= 1;
    let (r, _) = apply_streamed(&patcher, &of, &bad, 13);
    assert!(matches!(r, Err(Error::Checksum { .. })), "{r:?}");
    // A flipped signature byte, with the trailer recomputed: refused by the key.
    let mut forged = patch[..n - 32].to_vec();
    forged[n - 32 - 10] ^= 1;
    let t = *blake3::hash(&forged).as_bytes();
    forged.extend_from_slice(&t);
    patcher.require_signature(key.public_key());
    let (r, _) = apply_streamed(&patcher, &of, &forged, 13);
    assert!(matches!(r, Err(Error::Signature { .. })), "{r:?}");
    // The right patch under the wrong key.
    let mut other = Patcher::new();
    other.require_signature(bundelta::SecretKey::from_bytes([1u8; 32]).public_key());
    let (r, _) = apply_streamed(&other, &of, &patch, 13);
    assert!(matches!(r, Err(Error::Signature { .. })), "{r:?}");
    // Cut short anywhere, or followed by more bytes: refused.
    let unsigned = DiffOptions::new().diff_bytes(&old, &new).unwrap();
    for cut in [1, 31, 32, 33, unsigned.len() / 2] {
        let (r, _) = apply_streamed(&Patcher::new(), &of, &unsigned[..unsigned.len() - cut], 5);
        assert!(r.is_err(), "cut {cut}");
    }
    let mut longer = unsigned.clone();
    longer.push(0);
    let (r, _) = apply_streamed(&Patcher::new(), &of, &longer, 5);
    assert!(r.is_err());
    // An unsigned patch where a signature is required: refused before the manifest.
    let (t, given) = trickle(&unsigned, 1);
    assert!(matches!(patcher.open_reader(t, "s"), Err(Error::Unsigned)));
    assert!(given.load(Ordering::SeqCst) <= bundelta::format::MAX_HEADER_LEN as u64);
}

#[test]
fn what_a_stream_holds_is_charged_to_the_memory_limit() {
    let mut rng = Rng(0x57ec);
    let old = rng.text(200_000);
    let new = rng.edit(&old, 40);
    let dir = tempfile::tempdir().unwrap();
    let of = dir.path().join("old");
    fs::write(&of, &old).unwrap();
    let patch = DiffOptions::new().diff_bytes(&old, &new).unwrap();
    let h = Header::decode(&patch).unwrap();
    let need = bundelta::memory_needed(&h) + h.stream_offset(2) + h.manifest_len;
    // One byte short: refused after the header, before anything else is read.
    let mut patcher = Patcher::new();
    patcher.memory_limit(need - 1);
    let (t, given) = trickle(&patch, 1);
    match patcher.open_reader(t, "s") {
        Err(Error::LimitExceeded { needed, limit, .. }) => {
            assert_eq!((needed, limit), (need, need - 1));
        }
        r => panic!("{:?}", r.map(|_| ())),
    }
    assert!(given.load(Ordering::SeqCst) <= bundelta::format::MAX_HEADER_LEN as u64);
    // Exactly enough: applies.
    patcher.memory_limit(need);
    let (r, d) = apply_streamed(&patcher, &of, &patch, 4096);
    r.unwrap();
    assert_eq!(fs::read(d.path().join("out")).unwrap(), new);
}

#[test]
fn a_patch_from_a_socket() {
    use std::io::Write;
    let mut rng = Rng(0x57ed);
    let (old_tree, mut new_tree, _) = lib_trees(8, false);
    new_tree.insert(
        "lib/added.js".into(),
        Item::File {
            data: rng.text(30_000),
            exec: true,
        },
    );
    let (dir, patch) = write_case(&old_tree, &new_tree, None);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        for c in patch.chunks(1000) {
            s.write_all(c).unwrap();
        }
    });
    let patcher = Patcher::new();
    let sock = std::net::TcpStream::connect(addr).unwrap();
    let p = patcher.open_reader(sock, addr.to_string()).unwrap();
    let out = dir.path().join("out");
    patcher
        .apply_patch(dir.path().join("old"), p, &out)
        .unwrap();
    server.join().unwrap();
    assert_eq!(read_tree(&out), new_tree);
}

/// OLD read through `ReadAt` that serves `first` for the first full pass (the base check)
/// and `then` afterwards.
struct Changing {
    first: Vec<u8>,
    then: Vec<u8>,
    passes: std::sync::atomic::AtomicUsize,
}

impl ReadAt for Changing {
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        let src = if self.passes.load(Ordering::SeqCst) == 0 {
            &self.first
        } else {
            &self.then
        };
        let k = src.as_slice().read_at(buf, pos)?;
        if k == 0 {
            self.passes.fetch_add(1, Ordering::SeqCst);
        }
        Ok(k)
    }
}

#[test]
fn single_file_patches_into_any_writer() {
    let mut rng = Rng(0x57ee);
    let old = rng.text(80_000);
    let new = rng.edit(&old, 6);
    // A zip pair too (transform 2: the expanded source goes to a scratch file).
    let texts: Vec<Vec<u8>> = (0..4).map(|k| rng.text(9_000 + k * 1_000)).collect();
    let zip = |t: &[Vec<u8>]| {
        let names: Vec<String> = (0..4).map(|k| format!("m{k}.py")).collect();
        let e: Vec<(&str, &[u8], Option<u32>)> = (0..4)
            .map(|k| (names[k].as_str(), t[k].as_slice(), Some(6)))
            .collect();
        crate::inflate::zip_file(&e)
    };
    let mut edited = texts.clone();
    edited[2] = rng.edit(&texts[2], 2);
    let (zold, znew) = (zip(&texts), zip(&edited));
    let dir = tempfile::tempdir().unwrap();
    let patcher = Patcher::new();
    for (o, n) in [
        (&old, &new),
        (&zold, &znew),
        (&old, &old),        // unchanged
        (&Vec::new(), &new), // from nothing: all added
    ] {
        let patch = DiffOptions::new().diff_bytes(o, n).unwrap();
        fs::write(dir.path().join("p"), &patch).unwrap();
        fs::write(dir.path().join("old"), o).unwrap();
        // OLD as bytes, patch as a file; OLD as a file, patch from a reader.
        let mut out = Vec::new();
        let p = patcher.open(dir.path().join("p")).unwrap();
        let r = patcher.apply_to_writer(&o.as_slice(), p, &mut out).unwrap();
        assert_eq!(&out, n);
        assert_eq!(r.digest, *blake3::hash(n).as_bytes());
        let f = fs::File::open(dir.path().join("old")).unwrap();
        let (t, _) = trickle(&patch, 11);
        let p = patcher.open_reader(t, "p").unwrap();
        let mut out = Vec::new();
        patcher.apply_to_writer(&f, p, &mut out).unwrap();
        assert_eq!(&out, n);
    }
    // The wrong OLD: refused before a byte is written.
    let patch = DiffOptions::new().diff_bytes(&old, &new).unwrap();
    let mut wrong = old.clone();
    wrong[100] ^= 1;
    let mut out = Vec::new();
    let (t, _) = trickle(&patch, 64);
    let r = patcher.apply_to_writer(
        &wrong.as_slice(),
        patcher.open_reader(t, "p").unwrap(),
        &mut out,
    );
    assert!(matches!(r, Err(Error::WrongBase { .. })), "{r:?}");
    assert!(out.is_empty());
    // OLD that changes after its base check: the output fails the final digest.
    let mut then = old.clone();
    then[40_000] ^= 0x20;
    let changing = Changing {
        first: old.clone(),
        then,
        passes: Default::default(),
    };
    let (t, _) = trickle(&patch, 64);
    let r = patcher.apply_to_writer(
        &changing,
        patcher.open_reader(t, "p").unwrap(),
        &mut Vec::new(),
    );
    assert!(matches!(r, Err(Error::OutputMismatch { .. })), "{r:?}");
    // A directory patch makes a tree: refused.
    let (old_tree, new_tree, _) = lib_trees(4, false);
    let (_d, tree_patch) = write_case(&old_tree, &new_tree, None);
    let (t, _) = trickle(&tree_patch, 64);
    let r = patcher.apply_to_writer(
        &old.as_slice(),
        patcher.open_reader(t, "p").unwrap(),
        &mut Vec::new(),
    );
    assert!(r.is_err());
}
