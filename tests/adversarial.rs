//! Adversarial suite (issue #4): hostile patches through the real applier, out of place and in
//! place. Every case must be refused with a clear error, leave every byte under the sandbox as
//! it was (the whole tree is fingerprinted before and after: names, kinds, modes, contents,
//! symlink targets), and, for the size cases, stay small: with the `cli` feature each size case
//! also runs `bundelta apply` (and `apply --in-place`) in a child process under `RLIMIT_AS` =
//! 96 MiB, and its peak RSS (GNU time, when installed) must stay under 48 MiB, while the bombs
//! expand to 1 GiB.
//!
//! Write errors use real file systems when the sandbox allows `mount(2)` (a 1 MiB tmpfs that
//! fills up mid-apply, a read-only tmpfs); otherwise those tests print that they skipped
//! (visible without `--nocapture`), or fail when `BUNDELTA_REQUIRE_MOUNT=1` (CI sets it when
//! it can mount).
//!
//! Each test prints one `adversarial:` summary line with the number of inputs it tried.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use bundelta::format::{
    put_controls, put_svarint, put_varint, Control, Entry, EntryKind, FileOp, Hash, Header,
    Manifest, CODEC_BZIP2, CODEC_LZMA2, CODEC_RAW, CODEC_ZSTD, FLAG_DIRECTORY, FLAG_MANIFEST_LZMA,
};
use bundelta::{DiffOptions, Error, Patcher};

use crate::util::*;

// ---------------------------------------------------------------------------------------------
// Sandbox and checks

/// Every entry under `root`, not following symlinks: kind, mode, size and content hash, or
/// link target. Two equal fingerprints mean nothing under `root` changed.
fn fingerprint(root: &Path) -> BTreeMap<String, String> {
    fn walk(dir: &Path, rel: &str, out: &mut BTreeMap<String, String>) {
        let mut names: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        for n in names {
            let p = dir.join(&n);
            let r = format!("{rel}/{}", n.to_string_lossy());
            let md = fs::symlink_metadata(&p).unwrap();
            let mode = md.mode() & 0o7777;
            if md.file_type().is_symlink() {
                out.insert(r, format!("link -> {:?}", fs::read_link(&p).unwrap()));
            } else if md.is_dir() {
                out.insert(r.clone(), format!("dir {mode:o}"));
                walk(&p, &r, out);
            } else {
                let h = blake3::hash(&fs::read(&p).unwrap());
                out.insert(r, format!("file {mode:o} {} {}", md.len(), h.to_hex()));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, "", &mut out);
    out
}

/// A scratch directory holding `old` (OLD), `target` (a second copy of OLD for in-place
/// applies) and `outside/` (a bystander directory that symlinks may point at).
struct Sandbox {
    dir: tempfile::TempDir,
    old_tree: Option<Tree>,
}

impl Sandbox {
    fn file(old: &[u8]) -> Sandbox {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("old"), old).unwrap();
        fs::write(dir.path().join("target"), old).unwrap();
        let s = Sandbox {
            dir,
            old_tree: None,
        };
        s.bystander();
        s
    }

    fn tree(old: &Tree) -> Sandbox {
        let dir = tempfile::tempdir().unwrap();
        write_tree(&dir.path().join("old"), old);
        write_tree(&dir.path().join("target"), old);
        let s = Sandbox {
            dir,
            old_tree: Some(old.clone()),
        };
        s.bystander();
        s
    }

    fn bystander(&self) {
        fs::create_dir(self.p("outside")).unwrap();
        fs::write(self.p("outside/victim"), b"must not change").unwrap();
    }

    fn p(&self, n: &str) -> PathBuf {
        self.dir.path().join(n)
    }

    /// Reset `target` to OLD (after an in-place apply that succeeded).
    fn reset_target(&self) {
        let t = self.p("target");
        match &self.old_tree {
            Some(tree) => {
                fs::remove_dir_all(&t).unwrap();
                write_tree(&t, tree);
            }
            None => fs::copy(self.p("old"), &t).map(|_| ()).unwrap(),
        }
    }

    /// `bytes` must be refused by `patcher` out of place and in place, each time leaving the
    /// whole sandbox as it was. Returns the out-of-place error.
    fn reject(&self, patcher: &Patcher, bytes: &[u8], case: &str) -> Error {
        let pp = self.p("p.bdp");
        fs::write(&pp, bytes).unwrap();
        let before = fingerprint(self.dir.path());
        let e = match patcher.apply(self.p("old"), &pp, self.p("out")) {
            Ok(r) => panic!("{case}: hostile patch accepted out of place: {r:?}"),
            Err(e) => e,
        };
        assert_eq!(
            fingerprint(self.dir.path()),
            before,
            "{case}: apply changed the sandbox ({e})"
        );
        match patcher.apply_in_place(self.p("target"), &pp) {
            Ok(r) => panic!("{case}: hostile patch accepted in place: {r:?}"),
            Err(e2) => assert_eq!(
                fingerprint(self.dir.path()),
                before,
                "{case}: in-place apply changed the sandbox ({e2})"
            ),
        }
        fs::remove_file(&pp).unwrap();
        assert_clear(&e, case);
        e
    }
}

/// A clear error: one line that says what is wrong with the patch (not an I/O failure).
fn assert_clear(e: &Error, case: &str) {
    let s = e.to_string();
    assert!(!s.is_empty() && !s.contains('\n'), "{case}: {s:?}");
    assert!(
        !matches!(e, Error::Io { .. }),
        "{case}: a bad patch reported as an I/O error: {s}"
    );
}

fn varint(v: u64) -> Vec<u8> {
    let mut b = Vec::new();
    put_varint(&mut b, v);
    b
}

fn seal(body: Vec<u8>) -> Vec<u8> {
    let t = blake3::hash(&body);
    [body, t.as_bytes().to_vec()].concat()
}

/// Re-seal a patch after editing its body (recompute the trailer).
fn reseal(mut b: Vec<u8>) -> Vec<u8> {
    let n = b.len() - 32;
    let t = blake3::hash(&b[..n]);
    b[n..].copy_from_slice(t.as_bytes());
    b
}

/// A patch from parts: `manifest` is stored as it is when `raw_len` equals its length,
/// otherwise it is a frame declared to decode to `raw_len` bytes.
#[allow(clippy::too_many_arguments)]
fn assemble(
    flags: u32,
    window_log: u8,
    codecs: [u8; 3],
    manifest: &[u8],
    raw_len: u64,
    new_total: u64,
    streams: [&[u8]; 3],
) -> Vec<u8> {
    let h = Header {
        minor: 0,
        flags,
        window_log,
        codecs,
        manifest_len: manifest.len() as u64,
        manifest_raw_len: raw_len,
        new_total,
        stream_lens: streams.map(|s| s.len() as u64),
    };
    let mut b = h.encode();
    b.extend_from_slice(manifest);
    for s in streams {
        b.extend_from_slice(s);
    }
    seal(b)
}

/// A single-file patch with a stored manifest and raw streams.
fn file_patch(m: &Manifest, streams: [&[u8]; 3]) -> Vec<u8> {
    let raw = m.encode();
    let total = m
        .entries
        .iter()
        .map(|e| match e.kind {
            EntryKind::File { size, .. } => size,
            _ => 0,
        })
        .fold(0u64, u64::wrapping_add);
    assemble(
        0,
        21,
        [CODEC_RAW; 3],
        &raw,
        raw.len() as u64,
        total,
        streams,
    )
}

fn blake(b: &[u8]) -> Hash {
    *blake3::hash(b).as_bytes()
}

/// base_digest over the given old contents (format section 3).
fn base_digest(files: &[&[u8]]) -> Hash {
    let mut h = blake3::Hasher::new();
    for f in files {
        h.update(&blake(f));
    }
    *h.finalize().as_bytes()
}

fn file_entry(path: &str, size: u64, op: FileOp) -> Entry {
    Entry {
        path: path.into(),
        kind: EntryKind::File {
            exec: false,
            size,
            op,
        },
    }
}

fn delta(sources: Vec<u32>, base_size: u64) -> FileOp {
    FileOp::Delta {
        sources,
        base_size,
        transform: 0,
    }
}

// ---------------------------------------------------------------------------------------------
// Bombs: frames that expand far beyond what the patch declares

/// One zstd frame of `total` bytes of `byte`, as RLE blocks (4 bytes per 128 KiB), with a
/// window of 2^`window_log` and no declared content size.
fn zstd_rle_frame(total: u64, byte: u8, window_log: u8) -> Vec<u8> {
    let mut f = vec![0x28, 0xB5, 0x2F, 0xFD, 0x00, (window_log - 10) << 3];
    let block = (128u64 << 10).min(1 << window_log);
    let mut left = total;
    while left > 0 {
        let n = left.min(block);
        left -= n;
        let hdr = u32::from(left == 0) | (1 << 1) | ((n as u32) << 3);
        f.extend_from_slice(&hdr.to_le_bytes()[..3]);
        f.push(byte);
    }
    f
}

/// One raw LZMA2 stream (dictionary 2 MiB) of `copies` × 2 MiB of zeros: the encoder's chunks
/// for 2 MiB of zeros, repeated with the first chunk's control byte changed from "reset the
/// dictionary" to "reset the state" (the dictionary then holds zeros and the position is
/// aligned, so each repeat decodes to the same 2 MiB).
fn lzma2_zero_bomb(copies: usize) -> Vec<u8> {
    let one = lzma_encode(&vec![0u8; 2 << 20]);
    assert!(
        one[0] >= 0xE0,
        "unexpected LZMA2 chunk control {:#x}",
        one[0]
    );
    // Walk the chunks up to the end marker.
    let mut at = 0;
    while one[at] != 0 {
        let c = one[at];
        at += if c >= 0x80 {
            let packed = usize::from(u16::from_be_bytes([one[at + 3], one[at + 4]])) + 1;
            5 + usize::from(c >= 0xC0) + packed
        } else {
            3 + usize::from(u16::from_be_bytes([one[at + 1], one[at + 2]])) + 1
        };
    }
    assert_eq!(at, one.len() - 1, "end marker");
    let chunks = &one[..at];
    let mut b = chunks.to_vec();
    for _ in 1..copies {
        b.push(0xC0 | (chunks[0] & 0x1F));
        b.extend_from_slice(&chunks[1..]);
    }
    b.push(0);
    b
}

/// `copies` concatenated bzip2 streams of 8 MiB of zeros each.
fn bzip2_zero_bomb(copies: usize) -> Vec<u8> {
    use std::io::Write;
    let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::best());
    e.write_all(&vec![0u8; 8 << 20]).unwrap();
    let one = e.finish().unwrap();
    one.repeat(copies)
}

/// Decoded length of a stream, reading at most `cap` bytes.
fn decoded_len(codec: u8, bytes: &[u8], cap: u64) -> u64 {
    use std::io::Read;
    let r: Box<dyn Read + '_> = match codec {
        CODEC_ZSTD => {
            let mut d = zstd::stream::read::Decoder::new(bytes).unwrap();
            d.window_log_max(21).unwrap();
            Box::new(d)
        }
        CODEC_BZIP2 => Box::new(bzip2::read::MultiBzDecoder::new(bytes)),
        _ => {
            let mut o = liblzma::stream::LzmaOptions::new_preset(6).unwrap();
            o.dict_size(2 << 20);
            let mut f = liblzma::stream::Filters::new();
            f.lzma2(&o);
            let s = liblzma::stream::Stream::new_raw_decoder(&f).unwrap();
            Box::new(liblzma::read::XzDecoder::new_stream(bytes, s))
        }
    };
    std::io::copy(&mut r.take(cap), &mut std::io::sink()).unwrap()
}

/// Address-space limit of the child `bundelta` runs: far below what buffering a 1 GiB bomb
/// or allocating by a declared size would need; a normal apply needs under 32 MiB.
#[cfg(feature = "cli")]
const CHILD_AS_LIMIT: u64 = 96 << 20;

/// Run `bundelta ARGS` in a child under RLIMIT_AS = [`CHILD_AS_LIMIT`]; return (exit code,
/// stderr, peak RSS in KiB). The peak RSS comes from GNU time (`/usr/bin/time -f %M`) when it
/// is installed: the child's own `ru_maxrss` would include the forked test process's pages.
#[cfg(feature = "cli")]
fn run_limited(args: &[&std::ffi::OsStr]) -> (i32, String, Option<u64>) {
    use std::os::unix::process::CommandExt;
    use std::process::Command;
    const TAG: &str = "bundelta-maxrss-kib ";
    let bin = env!("CARGO_BIN_EXE_bundelta");
    let time = Path::new("/usr/bin/time");
    let mut cmd = if time.exists() {
        let mut c = Command::new(time);
        c.arg("-f").arg(format!("{TAG}%M")).arg(bin);
        c
    } else {
        Command::new(bin)
    };
    cmd.args(args);
    // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: CHILD_AS_LIMIT as libc::rlim_t,
                rlim_max: CHILD_AS_LIMIT as libc::rlim_t,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let mut rss = None;
    let mut lines = Vec::new();
    for l in err.lines() {
        match l.strip_prefix(TAG) {
            Some(v) => rss = v.trim().parse().ok(),
            None => lines.push(l),
        }
    }
    // GNU time reports a non-zero exit as "Command exited with non-zero status N".
    let lines: Vec<&str> = lines
        .into_iter()
        .filter(|l| !l.starts_with("Command exited with non-zero status"))
        .collect();
    (out.status.code().unwrap_or(-1), lines.join("\n"), rss)
}

/// A size case: refused in process (out of place and in place), and by the CLI in a child
/// under RLIMIT_AS with a small peak RSS, leaving the sandbox as it was. Returns the error.
fn size_case(s: &Sandbox, bytes: &[u8], case: &str, want: &str) -> String {
    let e = s.reject(&Patcher::new(), bytes, case).to_string();
    assert!(e.contains(want), "{case}: expected {want:?} in: {e}");
    #[cfg(feature = "cli")]
    {
        let pp = s.p("p.bdp");
        fs::write(&pp, bytes).unwrap();
        let before = fingerprint(s.dir.path());
        let (old, out, target) = (s.p("old"), s.p("out"), s.p("target"));
        for args in [
            vec![
                "apply".as_ref(),
                old.as_os_str(),
                pp.as_os_str(),
                "-o".as_ref(),
                out.as_os_str(),
            ],
            vec![
                "apply".as_ref(),
                "--in-place".as_ref(),
                target.as_os_str(),
                pp.as_os_str(),
            ],
        ] {
            let t = std::time::Instant::now();
            let (code, err, rss_kib) = run_limited(&args);
            assert_eq!(code, 1, "{case}: exit code {code}, stderr {err}");
            assert!(err.contains(want), "{case}: CLI said {err}");
            match rss_kib {
                Some(k) => {
                    assert!(k < 48 << 10, "{case}: peak RSS {k} KiB (limit 48 MiB)");
                    PEAK_RSS_KIB.fetch_max(k, std::sync::atomic::Ordering::Relaxed);
                }
                None => NO_RSS.call_once(|| {
                    eprintln!(
                        "adversarial: note: /usr/bin/time missing, peak RSS not measured \
                         (the address-space limit still applies)"
                    )
                }),
            }
            assert!(t.elapsed().as_secs() < 30, "{case}: took {:?}", t.elapsed());
            assert_eq!(
                fingerprint(s.dir.path()),
                before,
                "{case}: CLI left changes"
            );
        }
        fs::remove_file(&pp).unwrap();
    }
    e
}

const GIB: u64 = 1 << 30;

/// Largest peak RSS seen in the child runs (KiB), for the summary lines.
static PEAK_RSS_KIB: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
#[cfg(feature = "cli")]
static NO_RSS: std::sync::Once = std::sync::Once::new();

fn peak_rss() -> String {
    match PEAK_RSS_KIB.load(std::sync::atomic::Ordering::Relaxed) {
        0 => "not measured".into(),
        k => format!("{k} KiB"),
    }
}

#[test]
fn decompression_bombs_and_huge_windows_are_refused_small() {
    let old = Rng(11).text(4096);
    let s = Sandbox::file(&old);
    let mut n = 0;

    // Manifest bombs: a stored-as-compressed manifest declared as 1 KiB (or 400 KiB, about the
    // most the default limit admits) that decodes to 1 GiB.
    let new = vec![0u8; 100];
    let m = Manifest {
        new_digest: blake(&new),
        base_digest: base_digest(&[]),
        entries: vec![file_entry("", 100, FileOp::Add)],
        ..Manifest::default()
    };
    let z = zstd_rle_frame(GIB, 0, 17);
    assert_eq!(decoded_len(CODEC_ZSTD, &z, 64 << 20), 64 << 20);
    for declared in [1024u64, 400 << 10] {
        let b = assemble(0, 21, [CODEC_RAW; 3], &z, declared, 100, [&[], &[], &new]);
        // Declared smaller than its compressed bytes: refused by the header alone.
        let want = if (z.len() as u64) > declared {
            "exceeds manifest_raw_len"
        } else {
            "longer than declared"
        };
        size_case(&s, &b, "zstd manifest bomb", want);
        n += 1;
    }
    let l = lzma2_zero_bomb(512);
    assert!(decoded_len(CODEC_LZMA2, &l, 64 << 20) == 64 << 20);
    let b = assemble(
        FLAG_MANIFEST_LZMA,
        21,
        [CODEC_RAW; 3],
        &l,
        1024,
        100,
        [&[], &[], &new],
    );
    size_case(&s, &b, "LZMA2 manifest bomb", "manifest");
    n += 1;

    // Stream bombs: a valid manifest (one 100-byte file from the extra stream, or a delta of
    // OLD's first 100 bytes) whose stream decodes to 1 GiB.
    let raw = m.encode();
    let bz = bzip2_zero_bomb(128);
    assert_eq!(decoded_len(CODEC_BZIP2, &bz, 16 << 20), 16 << 20);
    for (codec, bomb, what) in [
        (CODEC_ZSTD, &z, "zstd extra-stream bomb"),
        (CODEC_LZMA2, &l, "LZMA2 extra-stream bomb"),
        (CODEC_BZIP2, &bz, "bzip2 extra-stream bomb"),
    ] {
        let b = assemble(
            0,
            21,
            [CODEC_RAW, CODEC_RAW, codec],
            &raw,
            raw.len() as u64,
            100,
            [&[], &[], bomb],
        );
        size_case(&s, &b, what, "extra stream");
        n += 1;
    }
    let dm = Manifest {
        new_digest: blake(&old[..100]),
        base_digest: base_digest(&[&old]),
        entries: vec![file_entry("", 100, delta(vec![], old.len() as u64))],
        ..Manifest::default()
    };
    let draw = dm.encode();
    let mut ctrl = Vec::new();
    put_controls(
        &mut ctrl,
        &[Control {
            diff: 100,
            extra: 0,
            seek: 0,
        }],
    );
    for (codec, bomb, what) in [
        (CODEC_ZSTD, &z, "zstd diff-stream bomb"),
        (CODEC_LZMA2, &l, "LZMA2 diff-stream bomb"),
        (CODEC_BZIP2, &bz, "bzip2 diff-stream bomb"),
    ] {
        let b = assemble(
            0,
            21,
            [CODEC_RAW, codec, CODEC_RAW],
            &draw,
            draw.len() as u64,
            100,
            [&ctrl, bomb, &[]],
        );
        size_case(&s, &b, what, "diff stream");
        n += 1;
        // The same bomb as the control stream: 1 GiB of zero bytes is a block of 0 controls.
        let b = assemble(
            0,
            21,
            [codec, CODEC_RAW, CODEC_RAW],
            &draw,
            draw.len() as u64,
            100,
            [bomb, &[0u8; 100], &[]],
        );
        size_case(&s, &b, "control-stream bomb", "control");
        n += 1;
    }

    // zstd frames whose window exceeds the header's window_log (1 GiB window, header says
    // 2 MiB), in the manifest and in a stream.
    let wide = zstd_rle_frame(100, 0, 30);
    let b = assemble(0, 21, [CODEC_RAW; 3], &wide, 99, 100, [&[], &[], &new]);
    size_case(&s, &b, "zstd manifest window 2^30", "manifest");
    let b = assemble(
        0,
        21,
        [CODEC_RAW, CODEC_RAW, CODEC_ZSTD],
        &raw,
        raw.len() as u64,
        100,
        [&[], &[], &wide],
    );
    size_case(&s, &b, "zstd stream window 2^30", "extra stream");
    n += 2;
    // Headers that ask for too much: window 2^31, a 2^40-byte manifest, streams of 2^63.
    for (wl, manifest, raw_len, what) in [
        (31u8, &raw[..], raw.len() as u64, "window_log 31"),
        (21, &z[..], 1 << 40, "manifest_raw_len 2^40"),
    ] {
        let b = assemble(
            0,
            wl,
            [CODEC_ZSTD; 3],
            manifest,
            raw_len,
            100,
            [&[], &[], &[]],
        );
        size_case(&s, &b, what, "apply memory");
        n += 1;
    }
    eprintln!(
        "adversarial: {n} decompression bombs and oversized windows refused \
         (CLI peak RSS so far {})",
        peak_rss()
    );
}

#[test]
fn overflowing_counts_sizes_and_offsets_are_refused() {
    let old = Rng(12).text(4096);
    let s = Sandbox::file(&old);
    let mut n = 0;
    let digest = [7u8; 32];
    let mf = |tail: &[&[u8]]| -> Vec<u8> {
        let mut v = vec![0u8];
        v.extend_from_slice(&digest);
        v.extend_from_slice(&base_digest(&[&old]));
        for t in tail {
            v.extend_from_slice(t);
        }
        v
    };
    let stored = |raw: &[u8], total: u64| {
        assemble(
            0,
            21,
            [CODEC_RAW; 3],
            raw,
            raw.len() as u64,
            total,
            [&[], &[], &[]],
        )
    };
    // One file entry: shared 0, path "", kind 1, exec 0, size, op.
    let entry =
        |size: u64, op: &[u8]| -> Vec<u8> { [&[0u8, 0, 1, 0][..], &varint(size), op].concat() };
    let max = u64::MAX;
    let cases: Vec<(&str, Vec<u8>, u64)> = vec![
        ("n_old = 2^64-1", mf(&[&varint(max)]), 0),
        ("n_old = 2^40", mf(&[&varint(1 << 40)]), 0),
        ("n_entries = 2^64-1", mf(&[&varint(0), &varint(max)]), 0),
        (
            "path length 2^62",
            mf(&[&varint(0), &varint(1), &[0], &varint(1 << 62)]),
            0,
        ),
        (
            "n_deleted = 2^64-1",
            mf(&[&varint(0), &varint(1), &entry(0, &[2]), &varint(max)]),
            0,
        ),
        (
            "copy source 2^32 (wraps to 0 as u32)",
            mf(&[
                &varint(1),
                &[0],
                &varint(4096),
                &varint(1),
                &entry(4096, &[1, 0x80, 0x80, 0x80, 0x80, 0x10]),
                &varint(0),
            ]),
            4096,
        ),
        (
            "copy source 2^64-1",
            mf(&[
                &varint(1),
                &[0],
                &varint(4096),
                &varint(1),
                &entry(4096, &[&[1u8][..], &varint(max)].concat()),
                &varint(0),
            ]),
            4096,
        ),
        (
            "65 delta sources",
            mf(&[
                &varint(1),
                &[0],
                &varint(4096),
                &varint(1),
                &entry(1, &[&[3u8, 65][..], &[0; 65], &[0]].concat()),
                &varint(0),
            ]),
            1,
        ),
        (
            "file size 2^64-1 vs new_total 0",
            mf(&[&varint(0), &varint(1), &entry(max, &[2]), &varint(0)]),
            0,
        ),
        ("varint of 11 bytes", mf(&[&[0xFF; 10], &[0x01]]), 0),
        (
            "varint above 2^64",
            mf(&[&[0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x02]]),
            0,
        ),
    ];
    for (case, raw, total) in &cases {
        size_case(&s, &stored(raw, *total), case, "corrupt patch (manifest)");
        n += 1;
    }

    // Directory bundle: two file sizes summing past u64 (wrapping to new_total).
    let t: Tree = [("a".to_string(), Item::Dir)].into_iter().collect();
    let ds = Sandbox::tree(&t);
    let m = Manifest {
        new_digest: digest,
        base_digest: base_digest(&[]),
        entries: vec![
            file_entry("x", 1 << 63, FileOp::Add),
            file_entry("y", (1 << 63) + 5, FileOp::Add),
        ],
        ..Manifest::default()
    };
    let raw = m.encode();
    let b = assemble(
        FLAG_DIRECTORY,
        21,
        [CODEC_RAW; 3],
        &raw,
        raw.len() as u64,
        5,
        [&[], &[], &[0; 5]],
    );
    size_case(&ds, &b, "file sizes summing past 2^64", "corrupt patch");
    n += 1;

    // Header sections summing past u64, and a manifest longer than the file.
    for (case, lens, mlen) in [
        ("stream lengths summing past 2^64", [max, 2, 0], 10u64),
        ("manifest_len 2^64-1", [0, 0, 0], max),
    ] {
        let h = Header {
            minor: 0,
            flags: 0,
            window_log: 21,
            codecs: [CODEC_RAW; 3],
            manifest_len: mlen,
            manifest_raw_len: 10,
            new_total: 0,
            stream_lens: lens,
        };
        let mut body = h.encode();
        body.extend_from_slice(&[0u8; 10]);
        size_case(&s, &seal(body), case, "corrupt patch (header)");
        n += 1;
    }

    // Controls of a 100-byte delta of OLD (4096 bytes), each hostile in one way.
    let ctrl_case = |ctrl: &[u8], diff_len: usize, extra_len: usize| {
        let m = Manifest {
            new_digest: digest,
            base_digest: base_digest(&[&old]),
            entries: vec![file_entry("", 100, delta(vec![], old.len() as u64))],
            ..Manifest::default()
        };
        file_patch(&m, [ctrl, &vec![0; diff_len], &vec![0; extra_len]])
    };
    let block = |cs: &[(u64, u64, i64)]| {
        let mut b = varint(cs.len() as u64);
        for c in cs {
            b.extend(varint(c.0));
        }
        for c in cs {
            b.extend(varint(c.1));
        }
        for c in cs {
            put_svarint(&mut b, c.2);
        }
        b
    };
    let ctrl_cases: Vec<(&str, Vec<u8>)> = vec![
        ("control block of 0", varint(0)),
        ("control block of 4097", varint(4097)),
        ("control block of 2^64-1", varint(max)),
        ("diff + extra overflow", block(&[(max, 1, 0)])),
        ("diff 2^64-1", block(&[(max, 0, 0)])),
        ("extra 2^64-1", block(&[(0, max, 0)])),
        (
            "diff past the source end",
            block(&[(0, 0, 4090), (10, 90, 0)]),
        ),
        ("seek to -1", block(&[(50, 0, -51), (50, 0, 0)])),
        ("seek to i64::MIN", block(&[(50, 0, i64::MIN), (50, 0, 0)])),
        ("seek to i64::MAX", block(&[(50, 0, i64::MAX), (50, 0, 0)])),
        (
            "seek past the source end",
            block(&[(50, 0, 4047), (50, 0, 0)]),
        ),
        ("more than the file", block(&[(101, 0, 0)])),
        ("block past the file", block(&[(100, 0, 0), (1, 0, 0)])),
        (
            "empty control after the first",
            block(&[(50, 0, 0), (0, 0, 0)]),
        ),
        ("controls end early", block(&[(50, 0, 0)])),
    ];
    for (case, ctrl) in &ctrl_cases {
        size_case(&s, &ctrl_case(ctrl, 101, 0), case, "corrupt patch");
        n += 1;
    }
    // A same-path delta whose base size is not OLD's: a wrong base, named before any write.
    let m = Manifest {
        new_digest: digest,
        base_digest: base_digest(&[&old]),
        entries: vec![file_entry("", 100, delta(vec![], 4097))],
        ..Manifest::default()
    };
    let b = file_patch(&m, [&block(&[(100, 0, 0)]), &[0; 100], &[]]);
    size_case(&s, &b, "base size past OLD", "OLD is not the version");
    n += 1;
    eprintln!(
        "adversarial: {n} overflowing counts, sizes and offsets refused \
         (CLI peak RSS so far {})",
        peak_rss()
    );
}

// ---------------------------------------------------------------------------------------------
// Paths

fn dir_entry(p: &str) -> Entry {
    Entry {
        path: p.into(),
        kind: EntryKind::Dir,
    }
}

fn link_entry(p: &str, target: &str) -> Entry {
    Entry {
        path: p.into(),
        kind: EntryKind::Symlink {
            target: target.into(),
        },
    }
}

/// A directory patch of `entries` (files are 3-byte adds from the extra stream), with an
/// honest new digest when the entries can be materialised.
fn dir_patch(entries: Vec<Entry>) -> Vec<u8> {
    let n_files = entries
        .iter()
        .filter(|e| matches!(e.kind, EntryKind::File { .. }))
        .count();
    let m = Manifest {
        new_digest: [9; 32],
        base_digest: base_digest(&[]),
        entries,
        ..Manifest::default()
    };
    let raw = m.encode();
    let extra = vec![b'x'; 3 * n_files];
    assemble(
        FLAG_DIRECTORY,
        21,
        [CODEC_RAW; 3],
        &raw,
        raw.len() as u64,
        extra.len() as u64,
        [&[], &[], &extra],
    )
}

#[test]
fn hostile_paths_are_refused_by_the_real_applier() {
    let mut old = Tree::new();
    old.insert("a".into(), Item::Dir);
    old.insert(
        "a/f".into(),
        Item::File {
            data: b"old".to_vec(),
            exec: false,
        },
    );
    let s = Sandbox::tree(&old);
    let add = |p: &str| file_entry(p, 3, FileOp::Add);
    let long_name = "n".repeat(256);
    let long_path = vec!["d".repeat(200); 21].join("/");
    let mut cases: Vec<(String, Vec<Entry>)> = Vec::new();
    for p in [
        "..",
        "../x",
        "../../outside/victim",
        "a/..",
        "a/../../x",
        ".",
        "./a",
        "a/.",
        "/abs",
        "/",
        "",
        "a//b",
        "a/",
        "nul\0x",
        "a\\..\\..\\x",
        "C:",
        "c:/x",
        "tab\tx",
        "new\nline",
        "del\u{7f}",
        "esc\u{1b}",
        long_name.as_str(),
    ] {
        cases.push((format!("path {p:?}"), vec![add(p)]));
        cases.push((format!("dir path {p:?}"), vec![dir_entry(p)]));
    }
    cases.push(("path over 4096 bytes".into(), vec![dir_entry(&long_path)]));
    // Duplicates and case clashes (ASCII, Latin-1, and the Kelvin sign whose lowercase is 'k').
    for (a, b) in [
        ("a", "a"),
        ("A", "a"),
        ("É", "é"),
        ("\u{212a}", "k"),
        ("README", "readme"),
    ] {
        let (x, y) = if a < b { (a, b) } else { (b, a) };
        cases.push((format!("clash {x:?} {y:?}"), vec![add(x), add(y)]));
        cases.push((
            format!("dir/file clash {x:?} {y:?}"),
            vec![dir_entry(x), add(y)],
        ));
    }
    cases.push(("unsorted entries".into(), vec![add("b"), add("a")]));
    cases.push(("missing parent directory".into(), vec![add("nodir/f")]));
    // Entries written through symlinks: outside the bundle, to its parent, to an absolute path,
    // to a sibling directory of the bundle, through a chain of links.
    for target in ["../outside", "..", "/tmp", "a", "l2", "../../.."] {
        cases.push((
            format!("file through link -> {target}"),
            vec![link_entry("l", target), add("l/victim")],
        ));
        cases.push((
            format!("dir through link -> {target}"),
            vec![
                dir_entry("a"),
                link_entry("a/l", target),
                dir_entry("a/l/sub"),
            ],
        ));
    }
    cases.push((
        "link then a dir of the same name".into(),
        vec![link_entry("l", "../outside"), dir_entry("l")],
    ));
    cases.push(("empty symlink target".into(), vec![link_entry("l", "")]));
    cases.push((
        "symlink target with NUL".into(),
        vec![link_entry("l", "a\0b")],
    ));
    let mut n = 0;
    for (case, entries) in cases {
        let e = s.reject(&Patcher::new(), &dir_patch(entries), &case);
        assert!(
            matches!(
                e,
                Error::Corrupt {
                    what: "manifest",
                    ..
                }
            ),
            "{case}: {e}"
        );
        n += 1;
    }
    eprintln!("adversarial: {n} hostile paths refused (out of place and in place)");
}

/// Symlinks in OLD and NEW are data, never followed: a link to outside the bundle is created
/// as a link; an OLD directory replaced by a link (and an OLD link replaced by a directory)
/// never writes through it; nothing outside the output changes, in place or not.
#[test]
fn symlinks_pointing_outside_are_never_followed() {
    let mut base = Tree::new();
    base.insert("d".into(), Item::Dir);
    base.insert(
        "d/victim".into(),
        Item::File {
            data: b"inside".to_vec(),
            exec: false,
        },
    );
    base.insert("keep".into(), Item::Link("../outside".into()));
    let mut cases = Vec::new();
    // NEW: the directory d becomes a link to the bystander directory.
    let mut new = base.clone();
    new.remove("d/victim");
    new.insert("d".into(), Item::Link("../outside".into()));
    cases.push(("dir replaced by a link outside", base.clone(), new));
    // OLD has the link; NEW makes it a directory with a file of the same name as outside's.
    let mut old = base.clone();
    old.remove("d/victim");
    old.insert("d".into(), Item::Link("../outside".into()));
    let mut new = base.clone();
    new.insert(
        "d/victim".into(),
        Item::File {
            data: b"written through?".to_vec(),
            exec: false,
        },
    );
    cases.push(("link outside replaced by a dir", old, new));
    // Links to absolute and parent paths added and kept.
    let mut new = base.clone();
    new.insert("abs".into(), Item::Link("/".into()));
    new.insert("up".into(), Item::Link("../../..".into()));
    cases.push(("links to / and ../../..", base.clone(), new));

    for (case, old, new) in cases {
        let s = Sandbox::tree(&old);
        write_tree(&s.p("new"), &new);
        let (patch, _) = DiffOptions::new()
            .diff_paths(s.p("old"), s.p("new"))
            .unwrap();
        fs::remove_dir_all(s.p("new")).unwrap();
        fs::write(s.p("p.bdp"), &patch).unwrap();
        let outside = fingerprint(&s.p("outside"));
        let r = Patcher::new()
            .apply(s.p("old"), s.p("p.bdp"), s.p("out"))
            .unwrap_or_else(|e| panic!("{case}: {e}"));
        assert_eq!(read_tree(&s.p("out")), new, "{case}");
        assert_eq!(read_tree(&s.p("old")), old, "{case}: OLD changed");
        assert_eq!(bundelta::bundle_digest(s.p("out")).unwrap(), r.digest);
        Patcher::new()
            .apply_in_place(s.p("target"), s.p("p.bdp"))
            .unwrap_or_else(|e| panic!("{case} in place: {e}"));
        assert_eq!(read_tree(&s.p("target")), new, "{case} in place");
        assert_eq!(
            fingerprint(&s.p("outside")),
            outside,
            "{case}: outside changed"
        );
        let mut names: Vec<String> = fs::read_dir(s.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["old", "out", "outside", "p.bdp", "target"],
            "{case}"
        );
        s.reset_target();
    }
    eprintln!("adversarial: 3 symlink layouts applied without following any link");
}

/// OLD whose directory `d` was replaced by a symlink to a directory outside the bundle that
/// holds a file with the expected content: a (full-form) manifest relying on `d/victim` must
/// not read it through the link, and an in-place apply must not hard-link it into the tree.
#[test]
fn old_parent_directory_replaced_by_a_link_is_not_followed() {
    let mut old = Tree::new();
    old.insert("d".into(), Item::Link("../outside".into()));
    let s = Sandbox::tree(&old);
    let victim = fs::read(s.p("outside/victim")).unwrap();
    let mut new = Tree::new();
    new.insert("d".into(), Item::Dir);
    new.insert(
        "d/victim".into(),
        Item::File {
            data: victim.clone(),
            exec: false,
        },
    );
    write_tree(&s.p("expect"), &new);
    let new_digest = bundelta::bundle_digest(s.p("expect")).unwrap();
    fs::remove_dir_all(s.p("expect")).unwrap();
    let m = Manifest {
        new_digest,
        base_digest: base_digest(&[&victim]),
        entries: vec![
            dir_entry("d"),
            file_entry("d/victim", victim.len() as u64, FileOp::Unchanged),
        ],
        ..Manifest::default()
    };
    let raw = m.encode();
    let b = assemble(
        FLAG_DIRECTORY,
        21,
        [CODEC_RAW; 3],
        &raw,
        raw.len() as u64,
        victim.len() as u64,
        [&[], &[], &[]],
    );
    let e = s.reject(
        &Patcher::new(),
        &b,
        "unchanged file under a symlinked OLD dir",
    );
    assert!(matches!(e, Error::WrongBase { .. }), "{e}");
    eprintln!("adversarial: OLD dir replaced by a link outside: refused ({e})");
}

// ---------------------------------------------------------------------------------------------
// Truncation and bit flips of real patches

fn golden(name: &str) -> Vec<u8> {
    fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("corpus/golden/v2.6")
            .join(name),
    )
    .unwrap()
}

/// OLD and NEW of the golden file patches (as tests/golden.rs generates them).
fn golden_file_inputs() -> (Vec<u8>, Vec<u8>) {
    let mut rng = Rng(0x601d);
    let old = rng.text(20_000);
    let new = rng.edit(&old, 15);
    (old, new)
}

/// Every truncation and every single-bit flip of the golden file patch (unsigned, and signed
/// with the key required): each is refused with a clear error and leaves nothing behind, out
/// of place and in place. Bit flips with the trailer recomputed must be refused too, or (for
/// bits the format leaves free: the minor version) give exactly NEW.
#[test]
fn every_truncation_and_bit_flip_of_real_patches_is_refused() {
    let (old, new) = golden_file_inputs();
    let secret = bundelta::SecretKey::from_bytes([0x42u8; 32]);
    let s = Sandbox::file(&old);
    let mut keyed = Patcher::new();
    keyed.require_signature(secret.public_key());
    let (mut truncations, mut flips, mut resealed, mut benign) = (0, 0, 0, Vec::new());
    let mut kinds: BTreeMap<&str, u32> = BTreeMap::new();
    let mut count = |e: &Error| {
        let k = match e {
            Error::Checksum { .. } => "checksum",
            Error::Corrupt { .. } => "corrupt",
            Error::Unsupported { .. } => "unsupported value",
            Error::Signature { .. } => "signature",
            Error::WrongBase { .. } => "wrong base",
            Error::OutputMismatch { .. } => "output hash",
            _ => "other",
        };
        *kinds.entry(k).or_default() += 1;
    };
    for (name, patcher) in [("file.bdp", Patcher::new()), ("signed.bdp", keyed)] {
        let patch = golden(name);
        let n = patch.len();
        // Sanity: the patch itself applies.
        fs::write(s.p("p.bdp"), &patch).unwrap();
        patcher.apply(s.p("old"), s.p("p.bdp"), s.p("out")).unwrap();
        assert_eq!(fs::read(s.p("out")).unwrap(), new);
        fs::remove_file(s.p("out")).unwrap();
        for cut in 0..n {
            count(&s.reject(&patcher, &patch[..cut], &format!("{name} cut at {cut}")));
            truncations += 1;
        }
        for i in 0..n {
            for bit in 0..8 {
                let mut b = patch.clone();
                b[i] ^= 1 << bit;
                count(&s.reject(&patcher, &b, &format!("{name} byte {i} bit {bit}")));
                flips += 1;
                if i >= n - 32 {
                    continue;
                }
                // The same flip with the trailer recomputed: the structure, the signature or a
                // hash must catch it.
                let b = reseal(b);
                let case = format!("{name} byte {i} bit {bit}, resealed");
                fs::write(s.p("p.bdp"), &b).unwrap();
                match patcher.apply(s.p("old"), s.p("p.bdp"), s.p("out")) {
                    Ok(_) => {
                        assert_eq!(fs::read(s.p("out")).unwrap(), new, "{case}: wrong output");
                        fs::remove_file(s.p("out")).unwrap();
                        benign.push(format!("{name}:{i}.{bit}"));
                    }
                    Err(_) => {
                        count(&s.reject(&patcher, &b, &case));
                    }
                }
                resealed += 1;
            }
        }
    }
    // Under a required signature, no resealed flip is accepted (the signature covers every
    // byte before it); without one, the hashes guarantee that an accepted flip gives NEW.
    assert!(
        benign.iter().all(|b| b.starts_with("file.bdp:")),
        "resealed flips accepted under a signature: {benign:?}"
    );
    eprintln!(
        "adversarial: golden patches: {truncations} truncations, {flips} bit flips, \
         {resealed} resealed bit flips ({} accepted with identical output: {benign:?}); \
         errors by kind: {kinds:?}",
        benign.len()
    );
}

/// Apply every truncation and every single-bit flip (trailer recomputed, so that the structure
/// and the hashes must catch it) of the golden vector `name` to `old`: each is refused with a
/// clear error and nothing left behind ([`Sandbox::reject`]), or (a flip the format leaves free)
/// gives exactly `new`. Returns (refused, identical output, cases).
fn flip_every_bit(name: &str, old: &[u8], new: &[u8]) -> (usize, usize, usize) {
    flip_bits(name, old, new, 1)
}

/// [`flip_every_bit`] at every `stride`-th byte (every truncation still).
fn flip_bits(name: &str, old: &[u8], new: &[u8], stride: usize) -> (usize, usize, usize) {
    let patch = golden(name);
    let s = Sandbox::file(old);
    let patcher = Patcher::new();
    let (mut refused, mut same) = (0usize, 0usize);
    for cut in 0..patch.len() {
        s.reject(&patcher, &patch[..cut], &format!("{name} cut at {cut}"));
        refused += 1;
    }
    let flipped = (0..patch.len() - 32).step_by(stride);
    let bytes = flipped.len();
    for i in flipped {
        for bit in 0..8 {
            let mut b = patch.clone();
            b[i] ^= 1 << bit;
            let b = reseal(b);
            let case = format!("{name} byte {i} bit {bit}, resealed");
            fs::write(s.p("p.bdp"), &b).unwrap();
            match patcher.apply(s.p("old"), s.p("p.bdp"), s.p("out")) {
                Ok(_) => {
                    assert_eq!(fs::read(s.p("out")).unwrap(), new, "{case}: wrong output");
                    fs::remove_file(s.p("out")).unwrap();
                    same += 1;
                }
                Err(_) => {
                    s.reject(&patcher, &b, &case);
                    refused += 1;
                }
            }
        }
    }
    eprintln!("adversarial: {name}: {refused} refused, {same} flips with identical output");
    (refused, same, patch.len() + bytes * 8)
}

/// The golden executable patch, whose control stream starts with reference-prediction
/// parameters.
#[test]
fn every_flip_of_an_exe_refs_patch_is_refused() {
    let (old, new) = crate::exe::golden_exe_inputs();
    let (refused, _, cases) = flip_every_bit("exe.bdp", &old, &new);
    // Almost every change must be refused (3,881 of 4,046 cases, 95.9%, for the 478-byte
    // vector; the earlier 494-byte one asked for over 4,000 of 4,190, 95.5%): the flips that
    // leave the output identical are the few bits the format leaves free.
    assert!(
        refused * 100 >= cases * 95,
        "only {refused} of {cases} cases refused"
    );
}

/// The golden gzip patch, whose control stream starts with the two inflate recipes (the
/// sandbox check also finds any scratch file left behind): 1,721 of 1,742 refused.
#[test]
fn every_flip_of_a_gzip_inflate_patch_is_refused() {
    let (old, new) = crate::golden::gzip_inputs();
    let (refused, _, cases) = flip_every_bit("gzip.bdp", &old, &new);
    assert!(
        refused * 100 >= cases * 95,
        "only {refused} of {cases} cases refused"
    );
}

/// The golden token patch, whose recipes carry token segments and whose controls make a
/// deflate stream's structure: every flip is refused or, if it is accepted, the output is
/// still NEW (the structure is checked value by value, the result by its digest).
#[test]
fn every_flip_of_a_token_patch_is_refused() {
    let (old, new) = crate::golden::tokens_inputs();
    let (refused, _, cases) = flip_every_bit("tokens.bdp", &old, &new);
    assert!(
        refused * 100 >= cases * 95,
        "only {refused} of {cases} cases refused"
    );
}

/// The golden zip patch, whose target recipe holds copy runs (kind 4): a flip of a run's
/// source index, count or maker is refused by the recipe's checks or by the digest. Every
/// fourth byte (every byte: 10,099 of 10,360 refused, 13 identical; 71 s in a release build).
#[test]
fn flips_of_a_zip_patch_with_copy_runs_are_refused() {
    let (old, new) = crate::golden::zip_inputs();
    let (refused, _, cases) = flip_bits("zip.bdp", &old, &new, 4);
    assert!(
        refused * 100 >= cases * 95,
        "only {refused} of {cases} cases refused"
    );
}

/// Decoding the streams on threads of their own changes nothing an apply can observe: for
/// every truncation and a resealed single-bit flip at every byte of the golden executable
/// patch (LZMA2 streams), and at every third byte of the same inputs diffed with zstd, the
/// parallel and the serial applier accept the same patches with the same output and refuse the
/// others with the same error (or both with an error of a stream's decoder, whose text
/// depends on read sizes).
#[test]
fn parallel_stream_decoding_behaves_as_serial() {
    let (old, new) = crate::exe::golden_exe_inputs();
    let mut zo = bundelta::DiffOptions::new();
    zo.codec(bundelta::Codec::Zstd);
    let zstd_patch = zo.diff_bytes(&old, &new).unwrap();
    let s = Sandbox::file(&old);
    let mut serial = Patcher::new();
    serial.parallel(false);
    let parallel = Patcher::new();
    // The error's text, or "decoder" for an error of a stream's decoder: a corrupt frame's
    // error, and how many bytes come out before it, depend on the read sizes, which differ.
    let run = |p: &Patcher, bytes: &[u8]| -> Result<Vec<u8>, String> {
        fs::write(s.p("p.bdp"), bytes).unwrap();
        let r = p
            .apply(s.p("old"), s.p("p.bdp"), s.p("out"))
            .map(|_| fs::read(s.p("out")).unwrap())
            .map_err(|e| match &e {
                Error::Corrupt { detail, .. } if detail.starts_with("zstd: ") => "decoder".into(),
                _ => e.to_string(),
            });
        let _ = fs::remove_file(s.p("out"));
        r
    };
    let mut cases: Vec<Vec<u8>> = Vec::new();
    for (patch, step) in [(golden("exe.bdp"), 1), (zstd_patch, 3)] {
        assert_eq!(run(&parallel, &patch), Ok(new.clone()));
        for i in (0..patch.len() - 32).step_by(step) {
            cases.push(patch[..i].to_vec());
            let mut b = patch.clone();
            b[i] ^= 1 << (i % 8);
            cases.push(reseal(b));
        }
    }
    let mut refused = 0;
    for (k, b) in cases.iter().enumerate() {
        let (a, z) = (run(&parallel, b), run(&serial, b));
        if a.is_err()
            && z.is_err()
            && (a.as_ref().unwrap_err() == "decoder" || z.as_ref().unwrap_err() == "decoder")
        {
            refused += 1;
            continue;
        }
        assert_eq!(a, z, "case {k}: parallel and serial differ");
        refused += usize::from(a.is_err());
    }
    assert!(
        refused > cases.len() / 2,
        "{refused} of {} refused",
        cases.len()
    );
}

// ---------------------------------------------------------------------------------------------
// Write errors on real file systems

/// A tmpfs mounted for a test, unmounted (lazily) when dropped.
#[cfg(target_os = "linux")]
struct Tmpfs(PathBuf);

/// Say that a test skipped, where a plain `cargo test` shows it: straight to the process's
/// stderr (the harness captures only the `print!` family). With `BUNDELTA_REQUIRE_MOUNT=1`
/// (CI sets it where it can mount) a skip fails the test instead.
#[cfg(target_os = "linux")]
fn skip(test: &str, why: &str) {
    use std::io::Write;
    if std::env::var_os("BUNDELTA_REQUIRE_MOUNT").is_some_and(|v| v == "1") {
        panic!("{test}: cannot run, and BUNDELTA_REQUIRE_MOUNT=1: {why}");
    }
    let _ = writeln!(
        std::io::stderr(),
        "adversarial: SKIPPED {test}: {why} (needs mount(2) privileges)"
    );
}

#[cfg(target_os = "linux")]
impl Tmpfs {
    fn mount(at: &Path, options: &str) -> Result<Tmpfs, String> {
        use std::ffi::CString;
        fs::create_dir_all(at).unwrap();
        let c = |s: &str| CString::new(s).unwrap();
        let (src, dst, ty, opts) = (c("tmpfs"), c(at.to_str().unwrap()), c("tmpfs"), c(options));
        // SAFETY: valid NUL-terminated strings for the duration of the call.
        let r = unsafe {
            libc::mount(
                src.as_ptr(),
                dst.as_ptr(),
                ty.as_ptr(),
                0,
                opts.as_ptr().cast(),
            )
        };
        if r != 0 {
            return Err(format!(
                "mount tmpfs at {}: {}",
                at.display(),
                std::io::Error::last_os_error()
            ));
        }
        Ok(Tmpfs(at.to_path_buf()))
    }

    fn remount_read_only(&self) -> Result<(), String> {
        use std::ffi::CString;
        let dst = CString::new(self.0.to_str().unwrap()).unwrap();
        // SAFETY: valid NUL-terminated string; null source/type/data are allowed for a remount.
        let r = unsafe {
            libc::mount(
                std::ptr::null(),
                dst.as_ptr(),
                std::ptr::null(),
                libc::MS_REMOUNT | libc::MS_RDONLY,
                std::ptr::null(),
            )
        };
        if r != 0 {
            return Err(format!(
                "remount read-only: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(())
    }
}

#[cfg(target_os = "linux")]
impl Drop for Tmpfs {
    fn drop(&mut self) {
        if let Ok(c) = std::ffi::CString::new(self.0.to_str().unwrap()) {
            // SAFETY: valid NUL-terminated string.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

/// OLD, NEW (with a 2 MiB new file that cannot fit in 1 MiB) and their patch.
#[cfg(target_os = "linux")]
fn write_error_inputs() -> (Tree, Tree, Vec<u8>) {
    let mut rng = Rng(99);
    let mut old = Tree::new();
    old.insert("lib".into(), Item::Dir);
    for i in 0..4 {
        old.insert(
            format!("lib/m{i}.js"),
            Item::File {
                data: rng.text(20_000),
                exec: false,
            },
        );
    }
    let mut new = old.clone();
    new.insert(
        "lib/big.bin".into(),
        Item::File {
            data: (0..(2 << 20)).map(|_| rng.next() as u8).collect(),
            exec: false,
        },
    );
    if let Some(Item::File { data, .. }) = new.get_mut("lib/m1.js") {
        *data = Rng(5).edit(data, 3);
    }
    let dir = tempfile::tempdir().unwrap();
    write_tree(&dir.path().join("o"), &old);
    write_tree(&dir.path().join("n"), &new);
    let mut o = DiffOptions::new();
    o.level(1);
    let (patch, _) = o
        .diff_paths(dir.path().join("o"), dir.path().join("n"))
        .unwrap();
    (old, new, patch)
}

/// A file system that fills up mid-apply (1 MiB tmpfs, 2 MiB of new content): a clean I/O
/// error naming the file, the old version intact, no staging directory or journal left.
#[test]
#[cfg(target_os = "linux")]
fn disk_full_mid_apply_leaves_old_intact_and_nothing_behind() {
    let (old, new, patch) = write_error_inputs();
    let s = Sandbox::tree(&old);
    fs::write(s.p("p.bdp"), &patch).unwrap();
    let fs_full = match Tmpfs::mount(&s.p("mnt"), "size=1m") {
        Ok(m) => m,
        Err(why) => {
            skip(
                "disk-full test",
                &format!("cannot create a small file system ({why})"),
            );
            return;
        }
    };
    let mnt = fs_full.0.clone();
    write_tree(&mnt.join("app"), &old);
    let before = fingerprint(&mnt);
    // Out of place into the full file system.
    let e = Patcher::new()
        .apply(s.p("old"), s.p("p.bdp"), mnt.join("out"))
        .expect_err("apply into a full file system succeeded");
    assert!(
        matches!(&e, Error::Io { source, .. } if source.raw_os_error() == Some(libc::ENOSPC)),
        "{e}"
    );
    assert_eq!(fingerprint(&mnt), before, "left behind after {e}");
    // In place: the stage next to the target cannot be completed.
    let e2 = Patcher::new()
        .apply_in_place(mnt.join("app"), s.p("p.bdp"))
        .expect_err("in-place apply into a full file system succeeded");
    assert!(
        matches!(&e2, Error::Io { source, .. } if source.raw_os_error() == Some(libc::ENOSPC)),
        "{e2}"
    );
    assert_eq!(fingerprint(&mnt), before, "left behind after {e2}");
    assert_eq!(read_tree(&mnt.join("app")), old);
    // A rerun once there is room succeeds (the failed run left no state in the way).
    drop(fs_full);
    let roomy = Tmpfs::mount(&s.p("mnt"), "size=16m").unwrap();
    write_tree(&roomy.0.join("app"), &old);
    Patcher::new()
        .apply_in_place(roomy.0.join("app"), s.p("p.bdp"))
        .unwrap();
    assert_eq!(read_tree(&roomy.0.join("app")), new);
    eprintln!("adversarial: disk full (1 MiB tmpfs): out of place and in place refused cleanly: {e} / {e2}");
}

/// A read-only file system (as root, permission bits do not stop writes; a read-only mount
/// does): out of place and in place fail with a clean error and change nothing.
#[test]
#[cfg(target_os = "linux")]
fn read_only_output_directory_fails_cleanly() {
    let (old, _new, patch) = write_error_inputs();
    let s = Sandbox::tree(&old);
    fs::write(s.p("p.bdp"), &patch).unwrap();
    let ro = match Tmpfs::mount(&s.p("mnt"), "size=16m") {
        Ok(m) => m,
        Err(why) => {
            skip(
                "read-only test",
                &format!(
                    "cannot mount a file system to make read-only ({why}); as root, \
                     permission bits would not stop the writes"
                ),
            );
            return;
        }
    };
    write_tree(&ro.0.join("app"), &old);
    if let Err(why) = ro.remount_read_only() {
        skip("read-only test", &why);
        return;
    }
    let before = fingerprint(&ro.0);
    let e = Patcher::new()
        .apply(s.p("old"), s.p("p.bdp"), ro.0.join("out"))
        .expect_err("apply into a read-only file system succeeded");
    assert!(
        matches!(&e, Error::Io { source, .. } if source.raw_os_error() == Some(libc::EROFS)),
        "{e}"
    );
    let e2 = Patcher::new()
        .apply_in_place(ro.0.join("app"), s.p("p.bdp"))
        .expect_err("in-place apply on a read-only file system succeeded");
    assert!(
        matches!(&e2, Error::Io { source, .. } if source.raw_os_error() == Some(libc::EROFS)),
        "{e2}"
    );
    assert_eq!(fingerprint(&ro.0), before);
    eprintln!("adversarial: read-only file system: refused cleanly: {e} / {e2}");
}
