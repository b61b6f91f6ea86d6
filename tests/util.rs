//! Shared helpers: a small PRNG, tree builders, and a naive in-memory applier (the oracle).

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use bundelta::format::{self, EntryKind, FileOp, Header, Manifest};

// The PRNG is its own file so that xtask/tests can share it without this file's dependencies.
#[path = "rng.rs"]
mod rng;
pub use rng::Rng;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Item {
    Dir,
    File { data: Vec<u8>, exec: bool },
    Link(String),
}

pub type Tree = BTreeMap<String, Item>;

pub fn write_tree(root: &Path, t: &Tree) {
    fs::create_dir_all(root).unwrap();
    for (p, item) in t {
        let full = root.join(p);
        match item {
            Item::Dir => fs::create_dir_all(&full).unwrap(),
            Item::File { data, exec } => {
                fs::create_dir_all(full.parent().unwrap()).unwrap();
                fs::write(&full, data).unwrap();
                set_exec(&full, *exec);
            }
            Item::Link(target) => {
                fs::create_dir_all(full.parent().unwrap()).unwrap();
                std::os::unix::fs::symlink(target, &full).unwrap();
            }
        }
    }
}

pub fn set_exec(p: &Path, exec: bool) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(
        p,
        fs::Permissions::from_mode(if exec { 0o755 } else { 0o644 }),
    )
    .unwrap();
}

pub fn read_tree(root: &Path) -> Tree {
    let mut t = Tree::new();
    fn walk(root: &Path, dir: &Path, t: &mut Tree) {
        for e in fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().to_str().unwrap().to_string();
            let md = fs::symlink_metadata(&p).unwrap();
            if md.is_dir() {
                t.insert(rel, Item::Dir);
                walk(root, &p, t);
            } else if md.file_type().is_symlink() {
                t.insert(
                    rel,
                    Item::Link(fs::read_link(&p).unwrap().to_str().unwrap().to_string()),
                );
            } else {
                use std::os::unix::fs::PermissionsExt;
                let exec = md.permissions().mode() & 0o111 != 0;
                t.insert(
                    rel,
                    Item::File {
                        data: fs::read(&p).unwrap(),
                        exec,
                    },
                );
            }
        }
    }
    walk(root, root, &mut t);
    t
}

fn parent(p: &str) -> Option<&str> {
    p.rsplit_once('/').map(|(a, _)| a)
}

/// A random tree of up to `n` entries with lowercase names (no case clashes).
pub fn random_tree(rng: &mut Rng, n: usize) -> Tree {
    let mut t = Tree::new();
    let names = ["a", "b", "c", "lib", "app.3f9a1c.js", "x.bin", "empty", "d"];
    for _ in 0..n {
        let depth = rng.below(3) as usize;
        let mut path = String::new();
        for i in 0..=depth {
            if i > 0 {
                path.push('/');
            }
            path.push_str(names[rng.below(names.len() as u64) as usize]);
        }
        add_item(rng, &mut t, &path);
    }
    t
}

fn add_item(rng: &mut Rng, t: &mut Tree, path: &str) {
    // Every ancestor must be a directory; give up if one is a file or link.
    let mut anc = Vec::new();
    let mut p = path;
    while let Some(q) = parent(p) {
        anc.push(q.to_string());
        p = q;
    }
    for a in &anc {
        match t.get(a) {
            None | Some(Item::Dir) => {}
            _ => return,
        }
    }
    if t.contains_key(path) || t.keys().any(|k| k.starts_with(&format!("{path}/"))) {
        return;
    }
    for a in anc {
        t.insert(a, Item::Dir);
    }
    let item = match rng.below(8) {
        0 => Item::Dir,
        1 => Item::Link(["../a", "b", "/etc/passwd", "x/y"][rng.below(4) as usize].to_string()),
        2 => Item::File {
            data: Vec::new(),
            exec: false,
        },
        3 => Item::File {
            data: vec![rng.next() as u8],
            exec: rng.below(2) == 0,
        },
        _ => {
            let n = rng.below(6000) as usize;
            Item::File {
                data: rng.text(n),
                exec: rng.below(3) == 0,
            }
        }
    };
    t.insert(path.to_string(), item);
}

/// Random edits of a tree: modify, delete, rename/move, mode change, new files, dirs, links.
pub fn edit_tree(rng: &mut Rng, old: &Tree) -> Tree {
    let mut t = old.clone();
    let n = 1 + rng.below(6);
    for _ in 0..n {
        let keys: Vec<String> = t.keys().cloned().collect();
        let pick = |rng: &mut Rng| keys.get(rng.below(keys.len() as u64) as usize).cloned();
        match rng.below(7) {
            6 => {
                // The same new content at two paths (`x.d.ts` and `x.d.cts` of a dual
                // package): an edited file and its copy beside it.
                if let Some(k) = pick(rng) {
                    if let Some(Item::File { data, exec }) = t.get(&k).cloned() {
                        let data = rng.edit(&data, 2);
                        t.insert(
                            k.clone(),
                            Item::File {
                                data: data.clone(),
                                exec,
                            },
                        );
                        t.entry(format!("{k}.dup"))
                            .or_insert(Item::File { data, exec: !exec });
                    }
                }
            }
            0 => {
                if let Some(k) = pick(rng) {
                    if let Some(Item::File { data, .. }) = t.get_mut(&k) {
                        let k = 1 + rng.below(10) as usize;
                        *data = rng.edit(&data.clone(), k);
                    }
                }
            }
            1 => {
                if let Some(k) = pick(rng) {
                    let prefix = format!("{k}/");
                    t.retain(|p, _| p != &k && !p.starts_with(&prefix));
                }
            }
            2 => {
                // Rename a file (optionally with edits): content-hashed chunk names.
                if let Some(k) = pick(rng) {
                    if let Some(Item::File { data, exec }) = t.get(&k).cloned() {
                        t.remove(&k);
                        let dir = parent(&k).map(|d| format!("{d}/")).unwrap_or_default();
                        let nn = format!("{dir}app.{:06x}.js", rng.below(1 << 24));
                        let data = if rng.below(2) == 0 {
                            rng.edit(&data, 3)
                        } else {
                            data
                        };
                        t.entry(nn).or_insert(Item::File { data, exec });
                    }
                }
            }
            3 => {
                if let Some(k) = pick(rng) {
                    if let Some(Item::File { exec, .. }) = t.get_mut(&k) {
                        *exec = !*exec;
                    }
                }
            }
            _ => {
                let extra = random_tree(rng, 2);
                for (p, _) in extra {
                    add_item(rng, &mut t, &p);
                }
            }
        }
    }
    t
}

/// The manifest of a patch made from OLD (resolved against OLD's listing when relative).
pub fn manifest_of(old: &Tree, patch: &[u8]) -> Manifest {
    let h = Header::decode(patch).unwrap();
    let body_end = patch.len() - format::TRAILER_LEN;
    assert_eq!(
        blake3::hash(&patch[..body_end]).as_bytes(),
        &patch[body_end..]
    );
    let m_start = h.encoded_len();
    let m_end = m_start + h.manifest_len as usize;
    let raw = if h.manifest_len == h.manifest_raw_len {
        patch[m_start..m_end].to_vec()
    } else if h.flags & format::FLAG_MANIFEST_LZMA != 0 {
        lzma_decode_all(&patch[m_start..m_end], format::lzma_dict_size(h.window_log))
    } else {
        zstd::decode_all(&patch[m_start..m_end]).unwrap()
    };
    // A relative manifest resolves against OLD's sorted listing (a BTreeMap iterates in byte
    // order, as the applier's scan sorts).
    let listing: Vec<format::ListEntry> = old
        .iter()
        .filter(|(p, _)| !p.is_empty())
        .map(|(p, item)| format::ListEntry {
            path: p.clone(),
            kind: match item {
                Item::Dir => format::ListKind::Dir,
                Item::File { data, exec } => format::ListKind::File {
                    exec: *exec,
                    size: data.len() as u64,
                },
                Item::Link(t) => format::ListKind::Symlink { target: t.clone() },
            },
        })
        .collect();
    Manifest::decode_with_old(&raw, &h, Some(&listing)).unwrap()
}

/// The oracle: apply a patch entirely in memory, straight from the spec, with none of the
/// streaming machinery. Returns the new tree (for a file bundle: one entry with path "").
pub fn naive_apply(old: &Tree, patch: &[u8]) -> Tree {
    let h = Header::decode(patch).unwrap();
    let m = manifest_of(old, patch);
    let stream = |i: usize| {
        let a = h.stream_offset(i) as usize;
        let b = a + h.stream_lens[i] as usize;
        decode_stream(h.codecs[i], h.window_log, &patch[a..b])
    };
    let (ctrl, mut diff, extra) = (stream(0), stream(1), stream(2));
    if h.flags & format::FLAG_DIFF_RUNS != 0 {
        diff = expand_zero_runs(&diff);
    }
    let mut c = format::Reader::new(&ctrl, "ctrl");
    let (mut d, mut x) = (0usize, 0usize);
    let old_data = |p: &str| match old.get(p) {
        Some(Item::File { data, .. }) => data.clone(),
        other => panic!("old {p:?} is {other:?}"),
    };
    let mut out = Tree::new();
    for e in &m.entries {
        let item = match &e.kind {
            EntryKind::Dir => Item::Dir,
            EntryKind::Symlink { target } => Item::Link(target.clone()),
            EntryKind::File { exec, op, size } => {
                let size = *size as usize;
                let data = match op {
                    FileOp::Unchanged => old_data(&e.path),
                    FileOp::Copy { source } => old_data(&m.old_files[*source as usize].path),
                    FileOp::Add => {
                        x += size;
                        extra[x - size..x].to_vec()
                    }
                    FileOp::Delta {
                        sources, transform, ..
                    } => {
                        let mut src: Vec<u8> = if sources.is_empty() {
                            old_data(&e.path)
                        } else {
                            sources
                                .iter()
                                .flat_map(|s| old_data(&m.old_files[*s as usize].path))
                                .collect()
                        };
                        // Transform 2 (FORMAT.md 4.3): expand the source whole, note the target
                        // recipe, run the controls over the expansion, deflate again at the end.
                        let mut recipe = None;
                        let mut size = size;
                        if *transform == format::TRANSFORM_INFLATE {
                            let (exp, r) = naive_recipes(&mut c, &src);
                            src = exp;
                            size = r.iter().map(NaiveSeg::expanded).sum::<u64>() as usize;
                            recipe = Some(r);
                        }
                        let mut o = Vec::new();
                        let mut pos = 0i64;
                        let mut block: Vec<(usize, usize, i64)> = Vec::new();
                        while o.len() < size {
                            if block.is_empty() {
                                let n = c.varint().unwrap() as usize;
                                let d: Vec<u64> = (0..n).map(|_| c.varint().unwrap()).collect();
                                let x: Vec<u64> = (0..n).map(|_| c.varint().unwrap()).collect();
                                let k: Vec<i64> = (0..n).map(|_| c.svarint().unwrap()).collect();
                                block = (0..n)
                                    .rev()
                                    .map(|i| (d[i] as usize, x[i] as usize, k[i]))
                                    .collect();
                            }
                            let (dl, el, sk) = block.pop().unwrap();
                            for i in 0..dl {
                                o.push(src[pos as usize + i].wrapping_add(diff[d + i]));
                            }
                            pos += dl as i64;
                            d += dl;
                            o.extend_from_slice(&extra[x..x + el]);
                            x += el;
                            pos += sk;
                        }
                        assert_eq!(o.len(), size);
                        assert!(block.is_empty(), "control block crosses a file end");
                        match recipe {
                            None => o,
                            Some(r) => naive_recompose(&o, &r),
                        }
                    }
                    FileOp::CopyNew { entry } => match out.get(&m.entries[*entry as usize].path) {
                        Some(Item::File { data, .. }) => data.clone(),
                        other => panic!("copy of new entry {entry}: {other:?}"),
                    },
                    other => panic!("unknown op {other:?}"),
                };
                Item::File { data, exec: *exec }
            }
            other => panic!("unknown kind {other:?}"),
        };
        out.insert(e.path.clone(), item);
    }
    assert!(
        c.is_empty() && d == diff.len() && x == extra.len(),
        "streams not consumed exactly"
    );
    out
}

/// A target segment of transform 2 as the oracle keeps it.
#[derive(Clone, Copy)]
enum NaiveSeg {
    /// Expanded bytes as they are.
    Raw(u64),
    /// Plain length, compressed length, level and window bits (memory level 8 and the default
    /// strategy only: what flate2 can make).
    Zlib(u64, u64, u32, u8),
    /// Structure, plain and compressed lengths.
    Tokens(u64, u64, u64),
    /// Plain length, compressed length, miniz level.
    Miniz(u64, u64, u8),
}

impl NaiveSeg {
    fn expanded(&self) -> u64 {
        match *self {
            NaiveSeg::Raw(n) | NaiveSeg::Zlib(n, ..) | NaiveSeg::Miniz(n, ..) => n,
            NaiveSeg::Tokens(s, p, _) => s + p,
        }
    }
}

/// Read both recipes of a transform-2 file and expand `src` by the first, whole.
fn naive_recipes(c: &mut format::Reader<'_>, src: &[u8]) -> (Vec<u8>, Vec<NaiveSeg>) {
    let mut exp = Vec::new();
    let mut pos = 0usize;
    // Each source segment's (raw length, or compressed and plain lengths of a stream).
    let mut shapes: Vec<(u64, Option<u64>)> = Vec::new();
    for _ in 0..c.varint().unwrap() {
        let (kind, at) = (c.varint().unwrap(), pos);
        let len0 = exp.len();
        match kind {
            0 => {
                let n = c.varint().unwrap() as usize;
                exp.extend_from_slice(&src[pos..pos + n]);
                pos += n;
                shapes.push((n as u64, None));
                continue;
            }
            1 => {
                let comp = c.varint().unwrap() as usize;
                let plain = c.varint().unwrap() as usize;
                let p = miniz_oxide::inflate::decompress_to_vec(&src[pos..pos + comp]).unwrap();
                assert_eq!(p.len(), plain);
                exp.extend_from_slice(&p);
                pos += comp;
            }
            4 => {
                // Raw bytes, then a zip local header whose length its bytes give (minor 6).
                let before = c.varint().unwrap() as usize;
                let h = &src[pos + before..];
                assert_eq!(&h[..4], b"PK\x03\x04");
                let len = 30
                    + u16::from_le_bytes([h[26], h[27]]) as usize
                    + u16::from_le_bytes([h[28], h[29]]) as usize;
                exp.extend_from_slice(&src[pos..pos + before + len]);
                pos += before + len;
                shapes.push(((before + len) as u64, None));
                continue;
            }
            3 => {
                // Lengths found by inflating (minor 6): zlib's inflate says where it ended.
                let mut d = flate2::Decompress::new(false);
                let mut p = Vec::with_capacity(1 << 16);
                loop {
                    let st = d
                        .decompress_vec(
                            &src[pos + d.total_in() as usize..],
                            &mut p,
                            flate2::FlushDecompress::None,
                        )
                        .unwrap();
                    if st == flate2::Status::StreamEnd {
                        break;
                    }
                    p.reserve(p.capacity());
                }
                exp.extend_from_slice(&p);
                pos += d.total_in() as usize;
            }
            2 => {
                let comp = c.varint().unwrap() as usize;
                let plain = c.varint().unwrap() as usize;
                let structure = c.varint().unwrap() as usize;
                let (s, p) = naive_tokens::parse(&src[pos..pos + comp]);
                assert_eq!((s.len(), p.len()), (structure, plain));
                exp.extend_from_slice(&s);
                exp.extend_from_slice(&p);
                pos += comp;
                // Its plain length (its expansion less the structure), for copy runs.
                shapes.push(((pos - at) as u64, Some(p.len() as u64)));
                continue;
            }
            k => panic!("source segment kind {k}"),
        }
        shapes.push(((pos - at) as u64, Some((exp.len() - len0) as u64)));
    }
    assert_eq!(pos, src.len());
    let mut segs = Vec::new();
    let zlib = |c: &mut format::Reader<'_>| {
        let (level, wbits, mem, strategy) = (
            c.varint().unwrap() as u32,
            c.varint().unwrap() as u8,
            c.varint().unwrap(),
            c.varint().unwrap(),
        );
        assert_eq!((mem, strategy), (8, 0), "the oracle deflates with flate2");
        (level, wbits)
    };
    // A count of 0 introduces the stated expanded length (minor 6), checked at the end.
    let (stated, n) = match c.varint().unwrap() {
        0 => (Some(c.varint().unwrap()), c.varint().unwrap()),
        n => (None, n),
    };
    for _ in 0..n {
        match c.varint().unwrap() {
            0 => segs.push(NaiveSeg::Raw(c.varint().unwrap())),
            1 => {
                let plain = c.varint().unwrap();
                let comp = c.varint().unwrap();
                let (level, wbits) = zlib(c);
                segs.push(NaiveSeg::Zlib(plain, comp, level, wbits));
            }
            4 => {
                // A copy run (minor 6): the source's segments from..from+count again.
                let from = c.varint().unwrap() as usize;
                let count = c.varint().unwrap() as usize;
                let maker_kind = c.varint().unwrap();
                let (zl, miniz) = match maker_kind {
                    1 => (Some(zlib(c)), None),
                    3 => (None, Some(c.varint().unwrap() as u8)),
                    k => panic!("copy run maker kind {k}"),
                };
                for &(len, plain) in &shapes[from..from + count] {
                    segs.push(match (plain, zl, miniz) {
                        (None, ..) => NaiveSeg::Raw(len),
                        (Some(p), Some((level, wbits)), _) => NaiveSeg::Zlib(p, len, level, wbits),
                        (Some(p), None, Some(level)) => NaiveSeg::Miniz(p, len, level),
                        _ => unreachable!(),
                    });
                }
            }
            2 => {
                let structure = c.varint().unwrap();
                let plain = c.varint().unwrap();
                let comp = c.varint().unwrap();
                segs.push(NaiveSeg::Tokens(structure, plain, comp));
            }
            3 => {
                let plain = c.varint().unwrap();
                let comp = c.varint().unwrap();
                let level = c.varint().unwrap() as u8;
                segs.push(NaiveSeg::Miniz(plain, comp, level));
            }
            k => panic!("target segment kind {k}"),
        }
    }
    if let Some(e) = stated {
        assert_eq!(e, segs.iter().map(NaiveSeg::expanded).sum::<u64>());
    }
    (exp, segs)
}

/// Raw deflate of `plain` by zlib (through flate2) at `level` with a `2^wbits` window, memory
/// level 8, default strategy, in one call.
pub fn zlib_deflate(plain: &[u8], level: u32, wbits: u8) -> Vec<u8> {
    let mut c =
        flate2::Compress::new_with_window_bits(flate2::Compression::new(level), false, wbits);
    let mut out = Vec::with_capacity(plain.len() + plain.len() / 100 + 1024);
    loop {
        let done = c.total_in() as usize;
        let st = c
            .compress_vec(&plain[done..], &mut out, flate2::FlushCompress::Finish)
            .unwrap();
        if st == flate2::Status::StreamEnd {
            return out;
        }
        out.reserve(out.capacity().max(4096));
    }
}

/// miniz_oxide at `level`, raw deflate, its input given in pieces of 65,536 bytes (FORMAT.md
/// 4.3), through miniz's own streaming call.
fn miniz_in_pieces(plain: &[u8], level: u8) -> Vec<u8> {
    use miniz_oxide::deflate::core::{
        compress, create_comp_flags_from_zip_params, CompressorOxide, TDEFLFlush, TDEFLStatus,
    };
    let mut c = CompressorOxide::new(create_comp_flags_from_zip_params(level.into(), 0, 0));
    let mut out = Vec::new();
    let mut buf = vec![0u8; 1 << 20];
    let pieces: Vec<&[u8]> = if plain.is_empty() {
        vec![&[]]
    } else {
        plain.chunks(65_536).collect()
    };
    for (k, piece) in pieces.iter().enumerate() {
        let last = k + 1 == pieces.len();
        let flush = if last {
            TDEFLFlush::Finish
        } else {
            TDEFLFlush::None
        };
        let mut rest: &[u8] = piece;
        loop {
            let (st, used, made) = compress(&mut c, rest, &mut buf, flush);
            out.extend_from_slice(&buf[..made]);
            rest = &rest[used..];
            if st == TDEFLStatus::Done || (!last && rest.is_empty() && made < buf.len()) {
                break;
            }
            assert_eq!(st, TDEFLStatus::Okay);
        }
    }
    out
}

/// Build a transform-2 file from its expanded form.
fn naive_recompose(exp: &[u8], segs: &[NaiveSeg]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut at = 0usize;
    for seg in segs {
        let n = seg.expanded();
        let part = &exp[at..at + n as usize];
        at += n as usize;
        match *seg {
            NaiveSeg::Raw(_) => out.extend_from_slice(part),
            NaiveSeg::Tokens(structure, _, comp) => {
                let (s, p) = part.split_at(structure as usize);
                let z = naive_tokens::encode(s, p);
                assert_eq!(z.len() as u64, comp);
                out.extend_from_slice(&z);
            }
            NaiveSeg::Miniz(_, comp, level) => {
                let z = miniz_in_pieces(part, level);
                assert_eq!(z.len() as u64, comp);
                out.extend_from_slice(&z);
            }
            NaiveSeg::Zlib(_, comp, level, wbits) => {
                let z = zlib_deflate(part, level, wbits);
                assert_eq!(z.len() as u64, comp);
                out.extend_from_slice(&z);
            }
        }
    }
    assert_eq!(at, exp.len());
    out
}

/// Decode a whole stream in memory (the oracle's way).
pub fn decode_stream(codec: u8, window_log: u8, bytes: &[u8]) -> Vec<u8> {
    match codec {
        format::CODEC_ZSTD => zstd::decode_all(bytes).unwrap(),
        format::CODEC_LZMA2 => lzma_decode_all(bytes, format::lzma_dict_size(window_log)),
        format::CODEC_BZIP2 => {
            let mut v = Vec::new();
            std::io::Read::read_to_end(&mut bzip2::read::MultiBzDecoder::new(bytes), &mut v)
                .unwrap();
            v
        }
        _ => bytes.to_vec(),
    }
}

/// The zero-run coding of the diff stream, expanded straight from the spec (FORMAT.md 4.1):
/// blocks of `n` varint, `n` (zero run, nonzero run) varint pairs, then the nonzero bytes.
pub fn expand_zero_runs(mut t: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while !t.is_empty() {
        let mut r = format::Reader::new(t, "runs");
        let n = r.varint().unwrap();
        let pairs: Vec<(u64, u64)> = (0..n)
            .map(|_| (r.varint().unwrap(), r.varint().unwrap()))
            .collect();
        let total: u64 = pairs.iter().map(|(z, l)| z + l).sum();
        assert!(n >= 1 && total >= 1 && total <= format::ZERO_RUN_BLOCK as u64);
        for (z, l) in pairs {
            out.resize(out.len() + z as usize, 0);
            out.extend_from_slice(r.bytes(l as usize).unwrap());
        }
        t = &t[t.len() - r.remaining()..];
    }
    out
}

/// One raw LZMA2 stream with a 2 MiB dictionary (matches window log 21).
pub fn lzma_encode(data: &[u8]) -> Vec<u8> {
    use liblzma::stream::{Action, Filters, LzmaOptions, Status, Stream};
    let mut o = LzmaOptions::new_preset(6).unwrap();
    o.dict_size(1 << 21);
    let mut f = Filters::new();
    f.lzma2(&o);
    let mut st = Stream::new_raw_encoder(&f).unwrap();
    let mut out = Vec::new();
    let mut input = data;
    loop {
        out.reserve(1 << 16);
        let before = st.total_in();
        let status = st.process_vec(input, &mut out, Action::Finish).unwrap();
        input = &input[(st.total_in() - before) as usize..];
        if status == Status::StreamEnd {
            return out;
        }
    }
}

/// Decode concatenated raw LZMA2 streams in one go.
fn lzma_decode_all(mut input: &[u8], dict: u32) -> Vec<u8> {
    use liblzma::stream::{Action, Filters, LzmaOptions, Status, Stream};
    let mut out = Vec::new();
    while !input.is_empty() {
        let mut o = LzmaOptions::new_preset(6).unwrap();
        o.dict_size(dict);
        let mut f = Filters::new();
        f.lzma2(&o);
        let mut st = Stream::new_raw_decoder(&f).unwrap();
        loop {
            out.reserve(1 << 16);
            let before = st.total_in();
            let status = st.process_vec(input, &mut out, Action::Run).unwrap();
            input = &input[(st.total_in() - before) as usize..];
            if status == Status::StreamEnd {
                break;
            }
        }
    }
    out
}

/// Every file and directory name under `dir` (to check that nothing was left behind).
pub fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// OLD and NEW for the manifest-form tests: `lib/` with 12 text files (from `Rng(seed)`), one
/// of them edited in NEW (by `Rng(seed + 1)`). With `renames` every path changes (contents
/// stay) and OLD has many entries NEW drops: the full manifest (tags for relied files only) is
/// then smaller than the relative one (a tag per entry of OLD). Also returns the text
/// generator, to add more entries.
pub fn lib_trees(seed: u64, renames: bool) -> (Tree, Tree, Rng) {
    let mut rng = Rng(seed);
    let mut old = Tree::new();
    old.insert("lib".into(), Item::Dir);
    for i in 0..12 {
        old.insert(
            format!("lib/m{i:02}.js"),
            Item::File {
                data: rng.text(2000 + 100 * i),
                exec: false,
            },
        );
    }
    let mut new = Tree::new();
    for (p, item) in &old {
        let q = if renames {
            p.replace("lib", "src")
        } else {
            p.clone()
        };
        new.insert(q, item.clone());
    }
    if renames {
        old.insert("junk".into(), Item::Dir);
        for i in 0..100 {
            old.insert(
                format!("junk/j{i:03}"),
                Item::File {
                    data: vec![b'j'; i],
                    exec: false,
                },
            );
        }
    }
    let target = if renames { "src/m05.js" } else { "lib/m05.js" };
    if let Some(Item::File { data, .. }) = new.get_mut(target) {
        *data = Rng(seed + 1).edit(data, 3);
    }
    (old, new, rng)
}

/// OLD and NEW written as `old` and `new` in a fresh directory, and the patch between them
/// (base tags of `bits` bits) as `p.bdp`; returns the directory and the patch.
pub fn write_case(old: &Tree, new: &Tree, bits: Option<u8>) -> (tempfile::TempDir, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    write_tree(&dir.path().join("old"), old);
    write_tree(&dir.path().join("new"), new);
    let (patch, _) = bundelta::DiffOptions::new()
        .base_tags(bits)
        .diff_paths(dir.path().join("old"), dir.path().join("new"))
        .unwrap();
    fs::write(dir.path().join("p.bdp"), &patch).unwrap();
    (dir, patch)
}

/// The oracle's deflate token structure (FORMAT.md section 4.3.1), written apart from the
/// applier's: bit by bit over whole buffers, codes looked up in maps.
pub mod naive_tokens {
    use std::collections::HashMap;

    use bundelta::format::tokens::{
        zlib_header, D_CODES, L_CODES, MAX_PREDICTED_ITEMS, MAX_PREDICTED_LITERALS,
    };

    const LB: [u32; 29] = [
        3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115,
        131, 163, 195, 227, 258,
    ];
    const LX: [u32; 29] = [
        0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0,
    ];
    const DB: [u32; 30] = [
        1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025, 1537,
        2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577,
    ];
    const DX: [u32; 30] = [
        0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12,
        13, 13,
    ];
    const ORDER: [usize; 19] = [
        16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15,
    ];

    /// Canonical code of each symbol with a length: (length, code read most significant first).
    fn codes(lens: &[u32]) -> HashMap<usize, (u32, u32)> {
        let mut m = HashMap::new();
        let mut code = 0u32;
        for len in 1..=15 {
            for (s, &l) in lens.iter().enumerate() {
                if l == len {
                    m.insert(s, (len, code));
                    code += 1;
                }
            }
            code <<= 1;
        }
        m
    }

    fn fixed() -> (Vec<u32>, Vec<u32>) {
        let mut l = vec![8; 144];
        l.extend(vec![9; 112]);
        l.extend(vec![7; 24]);
        l.extend(vec![8; 8]);
        (l, vec![5; 30])
    }

    struct In<'a> {
        b: &'a [u8],
        pos: usize,
    }

    impl In<'_> {
        fn bit(&mut self) -> u32 {
            let v = (self.b[self.pos / 8] >> (self.pos % 8)) & 1;
            self.pos += 1;
            v as u32
        }
        fn bits(&mut self, n: u32) -> u32 {
            (0..n).map(|i| self.bit() << i).sum()
        }
        fn sym(&mut self, rev: &HashMap<(u32, u32), usize>) -> usize {
            let mut code = 0;
            for len in 1..=15 {
                code = code << 1 | self.bit();
                if let Some(&s) = rev.get(&(len, code)) {
                    return s;
                }
            }
            panic!("no such code")
        }
    }

    fn rev(lens: &[u32]) -> HashMap<(u32, u32), usize> {
        codes(lens).into_iter().map(|(s, c)| (c, s)).collect()
    }

    fn varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push(v as u8 | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    /// Structure and plain bytes of a whole raw deflate stream.
    pub fn parse(b: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let mut r = In { b, pos: 0 };
        let (mut s, mut p) = (Vec::new(), Vec::new());
        let mut dynamic = None;
        loop {
            let fin = r.bit();
            let ty = r.bits(2);
            s.push((fin | ty << 1) as u8);
            let (ll, dl) = match ty {
                0 => {
                    let k = (8 - r.pos % 8) % 8;
                    s.push(r.bits(k as u32) as u8);
                    let len = r.bits(16);
                    assert_eq!(r.bits(16), !len & 0xFFFF);
                    s.extend_from_slice(&(len as u16).to_le_bytes());
                    p.extend_from_slice(&b[r.pos / 8..r.pos / 8 + len as usize]);
                    r.pos += 8 * len as usize;
                    if fin == 1 {
                        break;
                    }
                    continue;
                }
                1 => fixed(),
                _ => {
                    let head_at = s.len() - 1;
                    let header_from = s.len();
                    let (hl, hd, hc) = (r.bits(5), r.bits(5), r.bits(4));
                    s.extend_from_slice(&[hl as u8, hd as u8, hc as u8]);
                    let mut cl = vec![0u32; 19];
                    for &i in &ORDER[..hc as usize + 4] {
                        cl[i] = r.bits(3);
                        s.push(cl[i] as u8);
                    }
                    let crev = rev(&cl);
                    let total = (hl + 258 + hd) as usize;
                    let mut lens: Vec<u32> = Vec::new();
                    while lens.len() < total {
                        let sym = r.sym(&crev);
                        s.push(sym as u8);
                        match sym {
                            0..=15 => lens.push(sym as u32),
                            16 => {
                                let x = r.bits(2);
                                s.push(x as u8);
                                let last = *lens.last().unwrap();
                                lens.extend(vec![last; 3 + x as usize]);
                            }
                            17 => {
                                let x = r.bits(3);
                                s.push(x as u8);
                                lens.extend(vec![0; 3 + x as usize]);
                            }
                            _ => {
                                let x = r.bits(7);
                                s.push(x as u8);
                                lens.extend(vec![0; 11 + x as usize]);
                            }
                        }
                    }
                    let d = lens.split_off(hl as usize + 257);
                    dynamic = Some((head_at, header_from, s.len()));
                    (lens, d)
                }
            };
            let (lr, dr) = (rev(&ll), rev(&dl));
            let mut run = 0u64;
            let mut lit = [0u32; L_CODES];
            let mut dis = [0u32; D_CODES];
            let mut literals = 0u64;
            loop {
                let sym = r.sym(&lr);
                if sym < 256 {
                    p.push(sym as u8);
                    run += 1;
                    lit[sym] += 1;
                    literals += 1;
                } else if sym == 256 {
                    varint(&mut s, run * 2 + 1);
                    lit[256] = 1;
                    break;
                } else {
                    let len = LB[sym - 257] + r.bits(LX[sym - 257]);
                    let dc = r.sym(&dr);
                    let dist = DB[dc] + r.bits(DX[dc]);
                    lit[sym] += 1;
                    dis[dc] += 1;
                    varint(&mut s, run * 2);
                    s.push((len - 3) as u8);
                    varint(&mut s, u64::from(dist) - 1);
                    run = 0;
                    for _ in 0..len {
                        p.push(p[p.len() - dist as usize]);
                    }
                }
            }
            // A dynamic block whose header is zlib's for its counts is stored without it
            // (section 4.3.1), when its items and literals are within the encoder's bounds.
            if let Some((head_at, from, to)) = dynamic.take() {
                if s.len() - to <= MAX_PREDICTED_ITEMS
                    && literals <= MAX_PREDICTED_LITERALS
                    && zlib_header(&lit, &dis).as_deref() == Some(&s[from..to])
                {
                    s.drain(from..to);
                    s[head_at] |= 6;
                }
            }
            if fin == 1 {
                break;
            }
        }
        let k = (8 - r.pos % 8) % 8;
        s.push(r.bits(k as u32) as u8);
        (s, p)
    }

    struct Out {
        bits: Vec<u32>,
    }

    impl Out {
        fn put(&mut self, v: u32, n: u32) {
            for i in 0..n {
                self.bits.push(v >> i & 1);
            }
        }
        fn code(&mut self, c: &HashMap<usize, (u32, u32)>, s: usize) {
            let (len, code) = c[&s];
            for i in (0..len).rev() {
                self.bits.push(code >> i & 1);
            }
        }
    }

    fn read_varint(s: &[u8], mut i: usize) -> (u64, usize) {
        let (mut v, mut sh) = (0u64, 0);
        loop {
            let b = s[i];
            i += 1;
            v |= u64::from(b & 0x7F) << sh;
            sh += 7;
            if b & 0x80 == 0 {
                return (v, i);
            }
        }
    }

    /// The stream a structure and its plain bytes make.
    pub fn encode(s: &[u8], p: &[u8]) -> Vec<u8> {
        let mut o = Out { bits: Vec::new() };
        let i = std::cell::Cell::new(0usize);
        let mut at = 0usize;
        let next = || {
            i.set(i.get() + 1);
            s[i.get() - 1]
        };
        loop {
            let h = next();
            o.put(u32::from(h.min(h & 1 | 4)), 3);
            let (ll, dl) = match h >> 1 {
                0 => {
                    let k = (8 - o.bits.len() % 8) % 8;
                    o.put(u32::from(next()), k as u32);
                    let len = u32::from(u16::from_le_bytes([next(), next()]));
                    o.put(len, 16);
                    o.put(!len & 0xFFFF, 16);
                    for &b in &p[at..at + len as usize] {
                        o.put(b.into(), 8);
                    }
                    at += len as usize;
                    if h & 1 == 1 {
                        break;
                    }
                    continue;
                }
                1 => fixed(),
                t => {
                    // A predicted block (3): its header is zlib's for the counts of its
                    // items, which follow, and of its literals, the next plain bytes.
                    let predicted: Vec<u8> = if t == 3 {
                        let (mut lit, mut dis) = ([0u32; L_CODES], [0u32; D_CODES]);
                        lit[256] = 1;
                        let (mut j, mut q) = (i.get(), at);
                        loop {
                            let (v, k) = read_varint(s, j);
                            j = k;
                            for &b in &p[q..q + (v / 2) as usize] {
                                lit[usize::from(b)] += 1;
                            }
                            q += (v / 2) as usize;
                            if v & 1 == 1 {
                                break;
                            }
                            let len = u32::from(s[j]) + 3;
                            let (d, k) = read_varint(s, j + 1);
                            j = k;
                            lit[257 + (0..29).rev().find(|&c| LB[c] <= len).unwrap()] += 1;
                            dis[(0..30).rev().find(|&c| DB[c] <= d as u32 + 1).unwrap()] += 1;
                            q += len as usize;
                        }
                        zlib_header(&lit, &dis).expect("zlib sends this header")
                    } else {
                        Vec::new()
                    };
                    let mut hp = 0usize;
                    let mut next = || {
                        if t == 3 {
                            hp += 1;
                            predicted[hp - 1]
                        } else {
                            next()
                        }
                    };
                    let (hl, hd, hc) = (next(), next(), next());
                    o.put(hl.into(), 5);
                    o.put(hd.into(), 5);
                    o.put(hc.into(), 4);
                    let mut cl = vec![0u32; 19];
                    for &k in &ORDER[..hc as usize + 4] {
                        cl[k] = next().into();
                        o.put(cl[k], 3);
                    }
                    let cc = codes(&cl);
                    let total = hl as usize + 258 + hd as usize;
                    let mut lens: Vec<u32> = Vec::new();
                    while lens.len() < total {
                        let sym = next() as usize;
                        o.code(&cc, sym);
                        match sym {
                            0..=15 => lens.push(sym as u32),
                            16 => {
                                let x = next();
                                o.put(x.into(), 2);
                                let last = *lens.last().unwrap();
                                lens.extend(vec![last; 3 + x as usize]);
                            }
                            17 => {
                                let x = next();
                                o.put(x.into(), 3);
                                lens.extend(vec![0; 3 + x as usize]);
                            }
                            _ => {
                                let x = next();
                                o.put(x.into(), 7);
                                lens.extend(vec![0; 11 + x as usize]);
                            }
                        }
                    }
                    let d = lens.split_off(hl as usize + 257);
                    (lens, d)
                }
            };
            let (lc, dc) = (codes(&ll), codes(&dl));
            loop {
                let mut v = 0u64;
                let mut sh = 0;
                loop {
                    let b = next();
                    v |= u64::from(b & 0x7F) << sh;
                    sh += 7;
                    if b & 0x80 == 0 {
                        break;
                    }
                }
                for _ in 0..v / 2 {
                    o.code(&lc, p[at].into());
                    at += 1;
                }
                if v & 1 == 1 {
                    o.code(&lc, 256);
                    break;
                }
                let len = u32::from(next()) + 3;
                let mut dist = 0u64;
                let mut sh = 0;
                loop {
                    let b = next();
                    dist |= u64::from(b & 0x7F) << sh;
                    sh += 7;
                    if b & 0x80 == 0 {
                        break;
                    }
                }
                let dist = dist as u32 + 1;
                let c = (0..29).rev().find(|&c| LB[c] <= len).unwrap();
                o.code(&lc, 257 + c);
                o.put(len - LB[c], LX[c]);
                let d = (0..30).rev().find(|&c| DB[c] <= dist).unwrap();
                o.code(&dc, d);
                o.put(dist - DB[d], DX[d]);
                at += len as usize;
            }
            if h & 1 == 1 {
                break;
            }
        }
        let k = (8 - o.bits.len() % 8) % 8;
        o.put(u32::from(next()), k as u32);
        assert_eq!(
            (i.get(), at),
            (s.len(), p.len()),
            "structure and plain used up"
        );
        o.bits
            .chunks(8)
            .map(|c| c.iter().enumerate().map(|(i, &b)| (b << i) as u8).sum())
            .collect()
    }
}
