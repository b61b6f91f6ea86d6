//! Proof that reading a patch's manifest never takes more heap than the patch header declares.
//!
//! Its own test binary, because a `#[global_allocator]` is per binary: every Rust allocation is
//! counted (current and peak live bytes), and each case asserts that the peak while a patch is
//! opened (and, for a manifest relative to OLD's file list, bound to OLD) stays within
//!
//! ```text
//! manifest_memory(header)      24 × manifest_raw_len: the raw bytes and what decoding charges
//! + listing_memory(OLD)        relative form only: OLD's file list and the entries taken from it
//! + IO_ALLOWANCE               512 KiB, the I/O-buffer term `memory_needed` already has
//! ```
//!
//! over generated worst cases (maximal prefix-sharing expansion, many tiny entries, long link
//! targets, huge declared counts, both forms; manifests stored, zstd- and LZMA2-compressed)
//! and a few thousand deterministic mutations of real manifests. Decoder state allocated in C
//! by zstd and liblzma is not Rust heap and is not counted here; it is the `decoder_memory`
//! term of `memory_needed`.
//!
//! Every test takes [`LOCK`], so no other test allocates while one measures.

#![cfg(feature = "diff")]

use std::alloc::{GlobalAlloc, Layout, System};
use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::Mutex;

use bundelta::format::{
    listing_digest, manifest_memory, put_varint, Header, ListEntry, ListKind, CODEC_LZMA2,
    CODEC_RAW, CODEC_ZSTD, FLAG_BASE_TAGS, FLAG_DIRECTORY, FLAG_MANIFEST_LZMA, FORM_FULL,
    FORM_RELATIVE, MAX_PATH_LEN,
};
use bundelta::{listing_memory, memory_needed, DiffOptions, Error};

#[path = "util.rs"]
#[allow(dead_code)]
mod util;
use util::*;

// ---------------------------------------------------------------------------------------------
// Counting allocator

struct Counting;

static CURRENT: AtomicU64 = AtomicU64::new(0);
static PEAK: AtomicU64 = AtomicU64::new(0);
/// Live bytes past which an allocation fails (and the binary aborts) instead of taking the
/// machine's memory: the unfixed decoder asks for gigabytes.
const CAP: u64 = 4 << 30;

fn grow(n: usize) -> bool {
    let now = CURRENT.fetch_add(n as u64, SeqCst) + n as u64;
    if now > CAP {
        CURRENT.fetch_sub(n as u64, SeqCst);
        return false;
    }
    PEAK.fetch_max(now, SeqCst);
    true
}

fn shrink(n: usize) {
    CURRENT.fetch_sub(n as u64, SeqCst);
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged and only
// adds bookkeeping on atomics (which never allocates); a refused allocation returns null as
// `GlobalAlloc` allows.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if !grow(l.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: the caller upholds `alloc`'s contract for `l`.
        let p = unsafe { System.alloc(l) };
        if p.is_null() {
            shrink(l.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        if !grow(l.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: as for `alloc`.
        let p = unsafe { System.alloc_zeroed(l) };
        if p.is_null() {
            shrink(l.size());
        }
        p
    }

    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: `p` was allocated by `System` with layout `l` (every path above forwards).
        unsafe { System.dealloc(p, l) };
        shrink(l.size());
    }

    unsafe fn realloc(&self, p: *mut u8, l: Layout, new_size: usize) -> *mut u8 {
        // Counted as the move it may be: both blocks live at once.
        if !grow(new_size) {
            return std::ptr::null_mut();
        }
        // SAFETY: `p` was allocated by `System` with layout `l`; the caller upholds the rest.
        let q = unsafe { System.realloc(p, l, new_size) };
        shrink(if q.is_null() { new_size } else { l.size() });
        q
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Held by every test: one measurement at a time, nothing else allocating meanwhile.
static LOCK: Mutex<()> = Mutex::new(());

fn lock() -> std::sync::MutexGuard<'static, ()> {
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Run `f`; return its result and the most heap it held at once beyond what was live before.
fn peak_of<T>(f: impl FnOnce() -> T) -> (T, u64) {
    let base = CURRENT.load(SeqCst);
    PEAK.store(base, SeqCst);
    let r = f();
    (r, PEAK.load(SeqCst).saturating_sub(base))
}

/// The I/O-buffer term of `memory_needed` (512 KiB): here it covers the 64 KiB read buffer and
/// the 32 KiB zstd input buffer of the manifest read, the open patch, and error messages.
const IO_ALLOWANCE: u64 = 512 << 10;

// ---------------------------------------------------------------------------------------------
// Patches from parts

#[derive(Clone, Copy, Debug)]
enum Store {
    Stored,
    Zstd,
    Lzma,
}

const STORES: [Store; 3] = [Store::Stored, Store::Zstd, Store::Lzma];

fn zstd_encode(raw: &[u8]) -> Vec<u8> {
    let mut e = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
    e.window_log(21).unwrap();
    std::io::Write::write_all(&mut e, raw).unwrap();
    e.finish().unwrap()
}

/// A patch whose manifest is `raw` (declared honestly: `manifest_raw_len` is its length), kept
/// as `store` says, with raw streams and `extra` as the extra stream.
fn patch_of(flags: u32, raw: &[u8], store: Store, new_total: u64, extra: &[u8]) -> Vec<u8> {
    let (m, flags) = match store {
        Store::Stored => (raw.to_vec(), flags),
        Store::Zstd => (zstd_encode(raw), flags),
        Store::Lzma => (lzma_encode(raw), flags | FLAG_MANIFEST_LZMA),
    };
    // As a writer does (and the header requires): a manifest that does not compress is
    // stored as it is.
    let (m, flags) = if m.len() >= raw.len() {
        (raw.to_vec(), flags & !FLAG_MANIFEST_LZMA)
    } else {
        (m, flags)
    };
    let h = Header {
        minor: 1,
        flags,
        window_log: 21,
        codecs: [CODEC_RAW; 3],
        manifest_len: m.len() as u64,
        manifest_raw_len: raw.len() as u64,
        new_total,
        stream_lens: [0, 0, extra.len() as u64],
    };
    let mut b = h.encode();
    b.extend_from_slice(&m);
    b.extend_from_slice(extra);
    let t = blake3::hash(&b);
    b.extend_from_slice(t.as_bytes());
    b
}

/// What opening a patch did.
struct Opened {
    result: Result<(), Error>,
    header: Header,
    /// Peak heap of `Patcher::open` (and `bind`, when OLD is given).
    peak: u64,
    /// What it may be: `manifest_memory + IO_ALLOWANCE` (+ `listing_memory(OLD)`).
    bound: u64,
}

/// Open `bytes` as a patch under `limit` (default: exactly what its header declares, so the
/// decoder's budget, not the up-front check, is what refuses), bind it to `old` when given,
/// and check the peak heap against the bound.
fn open_measured(
    dir: &Path,
    bytes: &[u8],
    limit: Option<u64>,
    old: Option<(&Path, &[ListEntry])>,
    case: &str,
) -> Opened {
    let path = dir.join("p.bdp");
    fs::write(&path, bytes).unwrap();
    let header = Header::decode(bytes).unwrap();
    let limit = limit.unwrap_or_else(|| memory_needed(&header));
    let (result, peak) = peak_of(|| -> Result<(), Error> {
        let mut p = bundelta::Patcher::new().memory_limit(limit).open(&path)?;
        if let Some((old, _)) = old {
            p.bind(old)?;
        }
        Ok(())
    });
    let listing = old.map_or(0, |(_, l)| listing_memory(l));
    let bound = manifest_memory(&header) + listing + IO_ALLOWANCE;
    assert!(
        peak <= bound,
        "{case}: opening took {peak} bytes of heap, above the {bound} its header declares \
         (manifest_raw_len {}, result {result:?})",
        header.manifest_raw_len
    );
    Opened {
        result,
        header,
        peak,
        bound,
    }
}

// ---------------------------------------------------------------------------------------------
// Manifest bytes by hand

fn v(out: &mut Vec<u8>, x: u64) {
    put_varint(out, x);
}

fn s(out: &mut Vec<u8>, t: &[u8]) {
    v(out, t.len() as u64);
    out.extend_from_slice(t);
}

/// Full-form prefix: form, new digest, base digest (no tags).
fn full_head() -> Vec<u8> {
    let mut m = vec![FORM_FULL];
    m.extend_from_slice(&[7; 64]);
    m
}

const DIR: &[u8] = &[0];
/// A 1-byte file carried in the extra stream.
const ADD1: &[u8] = &[1, 0, 1, 2];

/// Grow a full-form manifest to about `target` bytes with `entry` records after `first`,
/// then an empty deleted list.
fn full_repeat(first: &[u8], entry: &[u8], target: usize) -> Vec<u8> {
    let mut m = full_head();
    v(&mut m, 0); // old files
    let n = (target.saturating_sub(first.len()) / entry.len()).max(1);
    v(&mut m, n as u64 + 1);
    m.extend_from_slice(first);
    for _ in 0..n {
        m.extend_from_slice(entry);
    }
    v(&mut m, 0); // deleted
    m
}

/// The first entry: a directory path of `len` bytes, 254-byte names of `a` separated by `/`
/// (stored in full; every component within the name limit, so that only the budget can
/// refuse what expands it).
fn long_first(len: usize) -> Vec<u8> {
    let mut path: Vec<u8> = (0..len)
        .map(|i| if i % 255 == 254 { b'/' } else { b'a' })
        .collect();
    if path.last() == Some(&b'/') {
        *path.last_mut().unwrap() = b'a';
    }
    let mut e = Vec::new();
    v(&mut e, 0);
    s(&mut e, &path);
    e.extend_from_slice(DIR);
    e
}

/// An entry sharing `shared` bytes with the previous path, adding `suffix`, with `body`.
fn prefixed(shared: usize, suffix: &[u8], body: &[u8]) -> Vec<u8> {
    let mut e = Vec::new();
    v(&mut e, shared as u64);
    s(&mut e, suffix);
    e.extend_from_slice(body);
    e
}

/// Generated worst cases of the full form, about `size` raw bytes each: (name, manifest).
fn full_worst_cases(size: usize) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let p = MAX_PATH_LEN - 1;
    // One 4,095-byte name, repeated: refused by the name-length check before expansion.
    let mut one_name = Vec::new();
    v(&mut one_name, 0);
    s(&mut one_name, &vec![b'n'; p]);
    one_name.extend_from_slice(DIR);
    out.push((
        "expand-one-name".into(),
        full_repeat(&one_name, &prefixed(p, b"", DIR), size),
    ));
    // Maximal expansion: every 4-byte record repeats the whole previous (4095-byte) path.
    out.push((
        "expand-same".into(),
        full_repeat(&long_first(p), &prefixed(p, b"", DIR), size),
    ));
    // The same, each path one byte longer than its prefix (distinct, sorted-looking).
    out.push((
        "expand-grow".into(),
        full_repeat(&long_first(p - 1), &prefixed(p - 1, b"b", ADD1), size),
    ));
    // Many tiny entries: 3-byte records (empty suffix, a directory).
    out.push((
        "tiny-entries".into(),
        full_repeat(&prefixed(0, b"a", DIR), &prefixed(0, b"", DIR), size),
    ));
    // Long link targets (4096 bytes each, stored: no amplification, but many).
    let mut link = vec![2u8];
    s(&mut link, &vec![b't'; MAX_PATH_LEN]);
    out.push((
        "long-links".into(),
        full_repeat(&prefixed(0, b"l", &link), &prefixed(1, b"", &link), size),
    ));
    // Delta entries with 64 sources each.
    let mut delta = vec![1u8, 0, 1, 3, 64];
    delta.extend(std::iter::repeat_n(0u8, 64));
    delta.push(0);
    let mut m = full_head();
    v(&mut m, 1);
    s(&mut m, b"o");
    v(&mut m, 1);
    let n = size / (delta.len() + 3);
    v(&mut m, n as u64);
    for i in 0..n {
        m.extend_from_slice(&prefixed(usize::from(i > 0), b"", &delta));
    }
    v(&mut m, 0);
    out.push(("delta-sources".into(), m));
    // Huge declared counts, each at the bound the remaining bytes allow.
    let mut m = full_head();
    let rest = size as u64;
    v(&mut m, rest / 2);
    m.resize(m.len() + size, 0);
    out.push(("count-old-files".into(), m));
    let mut m = full_head();
    v(&mut m, 0);
    v(&mut m, rest / 3);
    m.resize(m.len() + size, 0);
    out.push(("count-entries".into(), m));
    let mut m = full_head();
    v(&mut m, 0);
    v(&mut m, 0);
    v(&mut m, rest);
    m.resize(m.len() + size, 0);
    out.push(("count-deleted".into(), m));
    // Many empty deleted paths (24-byte strings from 1-byte records).
    let mut m = full_head();
    v(&mut m, 0);
    v(&mut m, 0);
    v(&mut m, rest);
    m.resize(m.len() + size, 0);
    m.push(0);
    out.push(("deleted-empty".into(), m));
    out
}

// ---------------------------------------------------------------------------------------------
// An OLD tree with one long path, for relative manifests

/// 15 nested directories of 250-byte names (3,764-byte path) and a 3-byte file at the bottom.
fn long_old(root: &Path) -> Vec<ListEntry> {
    let mut list = Vec::new();
    let mut rel = String::new();
    for i in 0..15u8 {
        if !rel.is_empty() {
            rel.push('/');
        }
        rel.push_str(&String::from(char::from(b'a' + i)).repeat(250));
        list.push(ListEntry {
            path: rel.clone(),
            kind: ListKind::Dir,
        });
    }
    rel.push_str("/f");
    list.push(ListEntry {
        path: rel.clone(),
        kind: ListKind::File {
            exec: false,
            size: 3,
        },
    });
    // Created step by step: the whole path is longer than some systems accept in one call.
    let mut d = root.to_path_buf();
    for e in &list[..15] {
        d.push(e.path.rsplit('/').next().unwrap());
        fs::create_dir(&d).unwrap();
    }
    fs::write(d.join("f"), b"old").unwrap();
    list
}

/// A relative manifest against `old`: keep everything, then `inserts` (raw item bytes after
/// the item tag), as `n` insert items.
fn relative_of(old: &[ListEntry], insert: &[u8], n: usize, tags: bool) -> Vec<u8> {
    let mut m = vec![FORM_RELATIVE];
    m.extend_from_slice(&[7; 64]);
    m.extend_from_slice(&listing_digest(old));
    if tags {
        m.push(8);
        v(&mut m, old.len() as u64);
        m.extend(std::iter::repeat_n(0u8, old.len()));
    }
    v(&mut m, 0); // old files
    v(&mut m, n as u64 + 1);
    m.push(0); // keep
    v(&mut m, old.len() as u64);
    for _ in 0..n {
        m.push(3); // insert
        m.extend_from_slice(insert);
    }
    m
}

// ---------------------------------------------------------------------------------------------
// Tests

#[test]
fn worst_case_manifests_stay_within_their_declared_memory() {
    let _g = lock();
    let dir = tempfile::tempdir().unwrap();
    let mut report = Vec::new();
    for size in [600usize, 20 << 10, 300 << 10, 1 << 20] {
        for (name, raw) in full_worst_cases(size) {
            for store in STORES {
                let case = format!("full {name} {size} {store:?}");
                let o = open_measured(
                    dir.path(),
                    &patch_of(FLAG_DIRECTORY, &raw, store, 0, &[]),
                    None,
                    None,
                    &case,
                );
                assert!(o.result.is_err(), "{case}: hostile manifest accepted");
                report.push(format!(
                    "{case}: raw {} peak {} bound {}",
                    o.header.manifest_raw_len, o.peak, o.bound
                ));
            }
        }
    }
    // Relative form: inserted paths expanded from OLD's 3,766-byte path, or from each other.
    let old_root = dir.path().join("old");
    fs::create_dir(&old_root).unwrap();
    let old = long_old(&old_root);
    let p = old.last().unwrap().path.len();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("same-as-old", prefixed(p, b"", DIR)),
        ("grow", prefixed(p, b"x", ADD1)),
        ("tiny", prefixed(0, b"", DIR)),
    ];
    for (name, item) in cases {
        for n in [100usize, 10_000, 200_000] {
            for tags in [false, true] {
                let raw = relative_of(&old, &item, n, tags);
                let flags = FLAG_DIRECTORY | if tags { FLAG_BASE_TAGS } else { 0 };
                for store in STORES {
                    let case = format!("relative {name} x{n} tags {tags} {store:?}");
                    let o = open_measured(
                        dir.path(),
                        &patch_of(flags, &raw, store, 0, &[]),
                        None,
                        Some((&old_root, &old)),
                        &case,
                    );
                    assert!(o.result.is_err(), "{case}: hostile manifest accepted");
                    report.push(format!(
                        "{case}: raw {} peak {} bound {}",
                        o.header.manifest_raw_len, o.peak, o.bound
                    ));
                }
            }
        }
    }
    if std::env::var_os("BUNDELTA_MEMORY_REPORT").is_some() {
        eprintln!("{}", report.join("\n"));
    }
}

/// Real patches of generated trees (both forms, with and without base tags), as (OLD root,
/// OLD listing, patch bytes).
fn real_patches(root: &Path) -> Vec<(std::path::PathBuf, Vec<ListEntry>, Vec<u8>)> {
    let mut rng = Rng(0x6d65_6d6f);
    let mut out = Vec::new();
    for (i, n) in [12usize, 40, 150].into_iter().enumerate() {
        let old_t = random_tree(&mut rng, n);
        let new_t = edit_tree(&mut rng, &old_t);
        let (o, nw, empty) = (
            root.join(format!("old{i}")),
            root.join(format!("new{i}")),
            root.join(format!("empty{i}")),
        );
        write_tree(&o, &old_t);
        write_tree(&nw, &new_t);
        fs::create_dir(&empty).unwrap();
        let list = scan_listing(&o);
        for tags in [None, Some(0)] {
            let mut d = DiffOptions::new();
            d.base_tags(tags);
            out.push((o.clone(), list.clone(), d.diff_paths(&o, &nw).unwrap().0));
            // From nothing: the full form, every path written out.
            out.push((
                empty.clone(),
                Vec::new(),
                d.diff_paths(&empty, &nw).unwrap().0,
            ));
        }
    }
    out
}

/// OLD's listing as the applier scans it (sorted by path bytes; symlinks not followed).
fn scan_listing(root: &Path) -> Vec<ListEntry> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<ListEntry>) {
        for e in fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let rel = p
                .strip_prefix(root)
                .unwrap()
                .to_str()
                .unwrap()
                .replace('\\', "/");
            let md = fs::symlink_metadata(&p).unwrap();
            let kind = if md.file_type().is_symlink() {
                ListKind::Symlink {
                    target: fs::read_link(&p).unwrap().to_str().unwrap().to_string(),
                }
            } else if md.is_dir() {
                walk(root, &p, out);
                ListKind::Dir
            } else {
                use std::os::unix::fs::PermissionsExt;
                ListKind::File {
                    exec: md.permissions().mode() & 0o111 != 0,
                    size: md.len(),
                }
            };
            out.push(ListEntry { path: rel, kind });
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

/// The decompressed manifest of a patch and its header.
fn raw_manifest(patch: &[u8]) -> (Header, Vec<u8>) {
    let h = Header::decode(patch).unwrap();
    let at = h.manifest_offset() as usize;
    let m = &patch[at..at + h.manifest_len as usize];
    let raw = if h.manifest_len == h.manifest_raw_len {
        m.to_vec()
    } else if h.flags & FLAG_MANIFEST_LZMA != 0 {
        decode_stream(CODEC_LZMA2, h.window_log, m)
    } else {
        decode_stream(CODEC_ZSTD, h.window_log, m)
    };
    (h, raw)
}

/// One deterministic mutation of a manifest, meant to reach the decoder's allocations: bit
/// flips, large varints, duplicated ranges (more entries sharing longer prefixes), cut ranges.
fn mutate(rng: &mut Rng, raw: &[u8]) -> Vec<u8> {
    let mut m = raw.to_vec();
    for _ in 0..1 + rng.below(3) {
        let len = m.len() as u64;
        let at = rng.below(len) as usize;
        match rng.below(6) {
            0 => m[at] ^= 1 << rng.below(8),
            1 => m[at] = [0x00, 0x7f, 0x80, 0xff, 0x01, 0x02, 0x03][rng.below(7) as usize],
            2 => {
                let mut big = Vec::new();
                put_varint(
                    &mut big,
                    [0x7f, 0x3fff, 4095, 4096, 1 << 20, u64::MAX >> 1][rng.below(6) as usize],
                );
                m.splice(at..(at + 1).min(m.len()), big);
            }
            3 => {
                let n = (1 + rng.below(64) as usize).min(m.len() - at);
                let copy = m[at..at + n].to_vec();
                for _ in 0..1 + rng.below(200) {
                    m.splice(at..at, copy.iter().copied());
                }
            }
            4 => {
                let n = (1 + rng.below(16) as usize).min(m.len() - at);
                m.drain(at..at + n);
            }
            _ => m.insert(at, rng.next() as u8),
        }
        if m.is_empty() {
            m.push(0);
        }
    }
    m
}

#[test]
fn mutated_real_manifests_stay_within_their_declared_memory() {
    let _g = lock();
    let dir = tempfile::tempdir().unwrap();
    let patches = real_patches(dir.path());
    let mut rng = Rng(0x00bd_17a5);
    let (mut ok, mut refused, mut worst) = (0u32, 0u32, 0f64);
    for (k, (old, list, patch)) in patches.iter().enumerate() {
        let (h, raw) = raw_manifest(patch);
        // The real patch itself opens within its bound.
        let mut budget = bundelta::format::Budget::unlimited();
        bundelta::format::Manifest::decode_with_budget(&raw, &h, Some(list), &mut budget).unwrap();
        eprintln!(
            "real patch {k}: form {}, raw {} B, decoding charged {:.2} per raw byte",
            raw[0],
            raw.len(),
            budget.peak() as f64 / raw.len() as f64
        );
        let o = open_measured(
            dir.path(),
            patch,
            None,
            Some((old, list)),
            &format!("real {k}"),
        );
        o.result.unwrap_or_else(|e| panic!("real patch {k}: {e}"));
        for i in 0..400 {
            let m = mutate(&mut rng, &raw);
            let store = [Store::Stored, Store::Stored, Store::Zstd, Store::Lzma][i % 4];
            let case = format!("patch {k} mutation {i} {store:?}");
            let bytes = patch_of(h.flags & !FLAG_MANIFEST_LZMA, &m, store, h.new_total, &[]);
            let o = open_measured(dir.path(), &bytes, None, Some((old, list)), &case);
            worst = worst.max(o.peak as f64 / o.bound as f64);
            if o.result.is_ok() {
                ok += 1;
            } else {
                refused += 1;
            }
        }
    }
    eprintln!("mutations: {ok} opened, {refused} refused; worst peak / bound {worst:.3}");
}

/// Manifest bytes in the pattern of the issue's cases: one 4,095-byte directory name, then
/// 4-byte records each repeating it whole, `raw_len` bytes in all.
fn issue_manifest(raw_len: usize) -> Vec<u8> {
    let p = MAX_PATH_LEN - 1;
    let first = long_first(p);
    let entry = prefixed(p, b"", DIR);
    let mut m = full_head();
    v(&mut m, 0);
    let n = (raw_len - m.len() - 5 - first.len() - 1) / entry.len();
    v(&mut m, n as u64 + 1);
    m.extend_from_slice(&first);
    for _ in 0..n {
        m.extend_from_slice(&entry);
    }
    v(&mut m, 0);
    m
}

/// The issue's two cases: a patch of a few hundred bytes whose header declares under 12 MiB
/// by the old formula (`4 × manifest_raw_len` + 512 KiB: 11.2 MiB; now refused up front), and
/// one that fits the default limit under the new formula too (11.5 MiB), so that the decoder's
/// budget is what refuses it. The unfixed decoder took about 2.8 GB and 490 MB.
fn issue_patches() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        (
            "11.2 MiB declared by the old formula",
            patch_of(
                FLAG_DIRECTORY,
                &issue_manifest(2_800_000),
                Store::Lzma,
                0,
                &[],
            ),
        ),
        (
            "under 12 MiB by the new formula",
            patch_of(
                FLAG_DIRECTORY,
                &issue_manifest(480_000),
                Store::Lzma,
                0,
                &[],
            ),
        ),
    ]
}

#[test]
fn issue_cases_are_refused_with_little_heap() {
    let _g = lock();
    let dir = tempfile::tempdir().unwrap();
    for (name, bytes) in issue_patches() {
        let h = Header::decode(&bytes).unwrap();
        assert!(bytes.len() < 2048, "{name}: {} bytes", bytes.len());
        // With the default limit, as `apply`, `verify` and `info` open it.
        let o = open_measured(
            dir.path(),
            &bytes,
            Some(bundelta::DEFAULT_MEMORY_LIMIT),
            None,
            name,
        );
        let e = o.result.expect_err(name).to_string();
        assert!(e.contains("limit") || e.contains("declares"), "{name}: {e}");
        eprintln!(
            "{name}: {} bytes, manifest_raw_len {}, memory_needed {}: peak heap {} ({e})",
            bytes.len(),
            h.manifest_raw_len,
            memory_needed(&h),
            o.peak
        );
    }
}

/// `bundelta info` on the issue's patches fails at once with a one-line error (it used to
/// raise its own limit to 1 GiB and abort); run under a 256 MiB address-space limit.
#[cfg(feature = "cli")]
#[test]
fn info_refuses_the_issue_cases_cleanly() {
    use std::os::unix::process::CommandExt;
    let _g = lock();
    let dir = tempfile::tempdir().unwrap();
    for (name, bytes) in issue_patches() {
        let p = dir.path().join("p.bdp");
        fs::write(&p, &bytes).unwrap();
        for args in [
            vec!["info"],
            vec!["info", "--memory-limit", "12M"],
            vec!["verify"],
        ] {
            let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_bundelta"));
            cmd.args(&args).arg(&p);
            // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
            unsafe {
                cmd.pre_exec(|| {
                    let lim = libc::rlimit {
                        rlim_cur: 256 << 20,
                        rlim_max: 256 << 20,
                    };
                    if libc::setrlimit(libc::RLIMIT_AS, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            let out = cmd.output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{name} {args:?}: {out:?}");
            assert_eq!(err.trim().lines().count(), 1, "{name} {args:?}: {err}");
            assert!(err.contains("manifest") || err.contains("memory"), "{err}");
        }
    }
}

/// A dense real layout still fits: 2,000 numbered files in one directory 60 bytes deep (as
/// `node_modules/@scope/package/dist/esm/chunk-00042.js`), so each 10-byte record expands to
/// an 80-byte entry and a 75-byte path: about 17 bytes of heap per raw byte, under the 22 the
/// budget allows. (Real trees measure 5 to 10: see `measure_real_path_sets`.)
#[test]
fn dense_real_manifest_fits() {
    let _g = lock();
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = (dir.path().join("old"), dir.path().join("new"));
    fs::create_dir(&old).unwrap();
    let sub = new.join("node_modules/@scope/package-name/dist/esm/internal/generated");
    fs::create_dir_all(&sub).unwrap();
    for i in 0..2000 {
        fs::write(sub.join(format!("chunk-{i:05}.js")), format!("{i}")).unwrap();
    }
    let (patch, _) = DiffOptions::new().diff_paths(&old, &new).unwrap();
    let o = open_measured(
        dir.path(),
        &patch,
        Some(bundelta::DEFAULT_MEMORY_LIMIT),
        None,
        "dense",
    );
    o.result.unwrap();
    eprintln!(
        "dense: raw {} peak {} ({:.1} x raw), bound {}",
        o.header.manifest_raw_len,
        o.peak,
        o.peak as f64 / o.header.manifest_raw_len as f64,
        o.bound
    );
}

/// Measure heap per raw manifest byte on trees shaped like real ones: every directory and
/// file path under each root in `BUNDELTA_PATH_SETS` (colon-separated), files of a few bytes.
/// Prints, for a diff from nothing (full form) and for a small edit (usually relative), the
/// raw length and the peak heap of opening. `cargo test --release --test manifest_memory
/// measure -- --ignored --nocapture`.
#[test]
#[ignore]
fn measure_real_path_sets() {
    let _g = lock();
    let sets = std::env::var("BUNDELTA_PATH_SETS").unwrap_or_default();
    for src in sets.split(':').filter(|s| !s.is_empty()) {
        let dir = tempfile::tempdir().unwrap();
        let (empty, a, b) = (
            dir.path().join("empty"),
            dir.path().join("a"),
            dir.path().join("b"),
        );
        fs::create_dir(&empty).unwrap();
        let mut files = 0usize;
        let mut paths = Vec::new();
        fn walk(dir: &Path, out: &mut Vec<(std::path::PathBuf, bool)>) {
            let Ok(rd) = fs::read_dir(dir) else { return };
            for e in rd.flatten() {
                let p = e.path();
                let Ok(md) = fs::symlink_metadata(&p) else {
                    continue;
                };
                if md.is_dir() {
                    out.push((p.clone(), true));
                    walk(&p, out);
                } else if md.is_file() && p.to_str().is_some() {
                    out.push((p, false));
                }
            }
        }
        walk(Path::new(src), &mut paths);
        // Bundles may not hold two paths equal up to case: keep the first of each.
        let mut seen = std::collections::HashSet::new();
        paths.retain(|(p, _)| seen.insert(p.to_str().unwrap().to_lowercase()));
        for (p, is_dir) in &paths {
            let rel = p.strip_prefix(src).unwrap();
            for root in [&a, &b] {
                if *is_dir {
                    fs::create_dir_all(root.join(rel)).unwrap();
                } else {
                    fs::create_dir_all(root.join(rel).parent().unwrap()).unwrap();
                    fs::write(root.join(rel), rel.to_str().unwrap().as_bytes()).unwrap();
                }
            }
            files += usize::from(!is_dir);
        }
        // b: every 20th file changed, every 50th renamed.
        let mut k = 0;
        for (p, is_dir) in &paths {
            if *is_dir {
                continue;
            }
            k += 1;
            let rel = p.strip_prefix(src).unwrap();
            if k % 20 == 0 {
                fs::write(b.join(rel), b"changed").unwrap();
            } else if k % 50 == 1 {
                let to = b.join(rel).with_extension("renamed");
                let _ = fs::rename(b.join(rel), to);
            }
        }
        let old_list = scan_listing(&a);
        for (name, from, list) in [("full", &empty, Vec::new()), ("edit", &a, old_list)] {
            let (patch, _) = DiffOptions::new().diff_paths(from, &b).unwrap();
            let o = open_measured(
                dir.path(),
                &patch,
                Some(u64::MAX),
                Some((from, &list)),
                name,
            );
            o.result.unwrap();
            let (h, raw) = raw_manifest(&patch);
            let form = if raw[0] == FORM_FULL {
                "full"
            } else {
                "relative"
            };
            let mut budget = bundelta::format::Budget::unlimited();
            bundelta::format::Manifest::decode_with_budget(&raw, &h, Some(&list), &mut budget)
                .unwrap();
            eprintln!(
                "{src} {name}: decoding charged {} B at most: {:.2} per raw byte",
                budget.peak(),
                budget.peak() as f64 / h.manifest_raw_len as f64
            );
            let listing = listing_memory(&list);
            eprintln!(
                "{src} {name}: {} paths ({files} files), {form} form, raw {} B, peak {} B \
                 (listing {listing}), (peak - listing) / raw = {:.2}, memory_needed {}",
                paths.len(),
                h.manifest_raw_len,
                o.peak,
                (o.peak - listing.min(o.peak)) as f64 / h.manifest_raw_len as f64,
                memory_needed(&h)
            );
        }
    }
}

/// The Rust-heap encoders of the inflate transform's target streams stay within what the
/// applier sets aside for a deflater: miniz (MINIZ_MEMORY) and the token encoder
/// (ENCODER_MEMORY, with a predicted block at its bounds).
#[test]
fn target_stream_encoders_stay_within_their_memory() {
    use bundelta::format::tokens::{
        parse, Encoder, MinizDeflater, ENCODER_MEMORY, MAX_PREDICTED_ITEMS, MINIZ_MEMORY,
    };
    let _g = lock();
    let mut rng = Rng(0xe0c);
    let plain = rng.text(3 << 20);
    for level in 0..=10u8 {
        let (comp, peak) = peak_of(|| {
            let mut d = MinizDeflater::new(level).unwrap();
            let mut n = 0usize;
            let mut put = |b: &[u8]| {
                n += b.len();
                true
            };
            assert!(d.push(&plain, &mut put) && d.finish(&mut put));
            n
        });
        assert!(comp > 0);
        assert!(peak <= MINIZ_MEMORY, "miniz level {level}: {peak} bytes");
        eprintln!("miniz level {level}: peak {peak} bytes of {MINIZ_MEMORY}");
    }
    // A zlib stream (level 9, memory level 8: blocks of up to 16,383 symbols), all predicted.
    let mut c = flate2::Compress::new(flate2::Compression::new(9), false);
    let mut comp = Vec::with_capacity(2 << 20);
    c.compress_vec(&plain, &mut comp, flate2::FlushCompress::Finish)
        .unwrap();
    let mut s = Vec::new();
    let mut input = &comp[..];
    parse(&mut input, comp.len() as u64, u64::MAX, &mut |b| {
        s.extend_from_slice(b);
        Ok(())
    })
    .unwrap();
    let (made, peak) = peak_of(|| {
        let mut e = Encoder::new(&s[..], s.len() as u64);
        let mut n = 0u64;
        let mut put = |b: &[u8]| {
            n += b.len() as u64;
            Ok(())
        };
        for piece in plain.chunks(100_000) {
            e.push(piece, &mut put).unwrap();
        }
        e.finish(&mut put).unwrap()
    });
    assert_eq!(made, comp.len() as u64);
    assert!(peak <= ENCODER_MEMORY, "token encoder: {peak} bytes");
    assert!(ENCODER_MEMORY >= MAX_PREDICTED_ITEMS as u64);
    eprintln!("token encoder: peak {peak} bytes of {ENCODER_MEMORY}");
}
