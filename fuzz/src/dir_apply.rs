//! Patches built field by field from the input: hostile paths and symlink targets, old-file
//! tables, every file operation, and control blocks (streams stored raw, zstd, LZMA2 or bzip2,
//! as one or two concatenated frames), with a valid (or deliberately broken) header, a zstd or
//! stored manifest and the trailer. Applied against the fixed OLD into
//! `ROOT/tmp/out`.
//!
//! Format 2.2: entries may be copy-new (op 4; honest, or pointing at a directory, a symlink,
//! another copy-new, before the first entry, or with the wrong size), and a byte after the
//! codecs chooses whether the header carries flag bit 5 (relative sizes). The manifest is written
//! here from FORMAT.md (`encode_manifest`), which can also write a distance back past the first
//! entry; when `Manifest` can hold it, the bytes must equal `Manifest::encode_sized`'s.
//!
//! Format 2.3: from the input's tail, some modify entries use delta transform 1 (reference
//! prediction, FORMAT.md 4.2) with fuzzed parameters before their first control block (valid,
//! or invalid: the model then expects an error), header flag bit 6 sometimes left off and
//! transform 1 sometimes over 2+ sources (the manifest must refuse both). The model adds each
//! control's diff to `Refs::predict_region` of the whole region; the applier predicts block by
//! block, so agreement checks its carried look-ahead.
//!
//! Alongside, an independent model of the apply semantics (FORMAT.md: base checks, solid streams
//! consumed in manifest order, bsdiff-style controls, exact stream ends) predicts the outcome.
//! When the crate's own `Manifest::decode` accepts the manifest, the model materialises the
//! expected tree in a separate scratch directory and its `bundle_digest` becomes the patch's
//! `new_digest` (when the "honest digest" flag is set).
//!
//! Checked: no panic; ROOT holds only `tmp`, `tmp` holds only the patch and (exactly on Ok)
//! `out`; OLD is untouched; every path of a manifest that decodes is a safe relative path
//! (an independent re-statement of `validate_path`); apply succeeds exactly when the model
//! says so, and then OUT has the expected digest.

use std::fs;
use std::path::Path;

use bundelta::format::{
    lzma_dict_size, put_svarint, put_varint, BaseTags, Entry, EntryKind, FileOp, Hash, Header,
    Load, Manifest, OldFile, Refs, Region, CODEC_LZMA2, CODEC_RAW, CODEC_ZSTD, FLAG_BASE_TAGS,
    FLAG_DIFF_RUNS, FLAG_DIRECTORY, FLAG_EXE_REFS, FLAG_RELATIVE_SIZES, MAX_LOADS, TRANSFORM_REFS,
    VERSION_MINOR,
};

/// The zero-run coding of FORMAT.md 4.1, written here from the spec (not the crate's writer):
/// blocks of `block` bytes, each its pair count, (zeros, literals) pairs, then the literals.
fn zero_run_code(data: &[u8], block: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for chunk in data.chunks(block) {
        let mut pairs = Vec::new();
        let mut lits = Vec::new();
        let mut n = 0u64;
        let mut i = 0;
        while i < chunk.len() {
            let z = chunk[i..].iter().take_while(|&&x| x == 0).count();
            let l = chunk[i + z..].iter().take_while(|&&x| x != 0).count();
            put_varint(&mut pairs, z as u64);
            put_varint(&mut pairs, l as u64);
            lits.extend_from_slice(&chunk[i + z..i + z + l]);
            i += z + l;
            n += 1;
        }
        put_varint(&mut out, n);
        out.extend(pairs);
        out.extend(lits);
    }
    out
}
use bundelta::{bundle_digest, memory_needed, Patcher};

use super::{assert_only, fixture, scratch, set_exec, with_trailer, write, Bytes, LIMIT};

/// Stream codec value of bzip2 (format minor addition; a build that lacks it refuses the
/// header, which the model checks with `Header::decode`).
const CODEC_BZIP2: u8 = 3;

/// Path components the generator picks from: ordinary names, names of the fixture, and every
/// kind of trouble `validate_path` must catch.
const COMPONENTS: &[&str] = &[
    "a",
    "b",
    "A",
    "lib",
    "bin",
    "util",
    "tool",
    "core.js",
    "strings.js",
    "README.md",
    "readme.md",
    "empty",
    "link",
    "out",
    "tmp",
    "..",
    ".",
    "",
    "é",
    "e\u{301}",
    "ß",
    "SS",
    "C:",
    "c:",
    "a\\b",
    "nul\0",
    "tab\t",
    "nl\n",
    ".hidden",
    "...",
    " ",
    "~",
    "\u{202e}rtl",
    "*",
];

/// Symlink targets: inside the bundle, escaping it, absolute, empty, NUL.
const TARGETS: &[&str] = &[
    "lib/core.js",
    "a",
    "../../escape",
    "../p.bdp",
    "../../tmp",
    "/etc/passwd",
    "..",
    ".",
    "",
    "a\0b",
    "link",
    "../../../../../../../../tmp",
    "//",
    "a/../../..",
];

/// Old-file table candidates for a directory bundle: fixture files, a symlink, a directory, a
/// missing file, and a path escaping OLD.
const OLD_CANDIDATES: &[&str] = &[
    "../old.txt",
    "README.md",
    "bin/tool",
    "empty",
    "lib",
    "lib/core.js",
    "lib/util/strings.js",
    "link",
    "missing",
];

fn gen_path(b: &mut Bytes<'_>) -> String {
    let n = 1 + b.u8() % 4;
    let mut parts = Vec::new();
    for _ in 0..n {
        let c = usize::from(b.u8());
        let k = COMPONENTS.len();
        parts.push(match c % (k + 3) {
            i if i < k => COMPONENTS[i].to_string(),
            i if i == k => "x".repeat(255 + c / (k + 3) % 2), // 255 ok, 256 too long
            i if i == k + 1 => {
                let n = usize::from(b.u8() % 8);
                String::from_utf8_lossy(b.take(n)).into_owned()
            }
            _ => format!("f{c}"),
        });
    }
    let mut p = parts.join("/");
    let lead = b.u8();
    if lead >= 0xf0 {
        p.insert(0, '/');
    } else if lead >= 0xe8 {
        p.push('/');
    }
    p
}

fn gen_target(b: &mut Bytes<'_>) -> String {
    let c = usize::from(b.u8());
    if c < TARGETS.len() * 8 {
        TARGETS[c % TARGETS.len()].to_string()
    } else {
        let n = usize::from(b.u8() % 16);
        String::from_utf8_lossy(b.take(n)).into_owned()
    }
}

/// One control with its diff and extra bytes.
#[derive(Clone, Debug)]
struct Ctl {
    diff: u64,
    extra: u64,
    seek: i64,
    dbytes: Vec<u8>,
    ebytes: Vec<u8>,
}

/// Reference-prediction parameters of a transform-1 file as written to the control stream
/// (FORMAT.md 4.2), valid or not.
#[derive(Clone, Debug)]
struct Params {
    kinds: u64,
    /// Declared load counts (old, new): above MAX_LOADS only a few entries follow.
    counts: [u64; 2],
    loads: [Vec<Load>; 2],
    /// (gap, delta_change) of every breakpoint.
    map: Vec<(u64, i64)>,
    /// Cut short: only this many varints (and maybe a dangling continuation byte), and the
    /// control stream ends there.
    cut: Option<(usize, bool)>,
}

/// What the control stream holds, in order: a file's parameters or one control block.
#[derive(Clone, Debug)]
enum Item {
    Params(Params),
    Block(Vec<Ctl>),
}

/// Prefix of a model "error" that means the outcome is not predicted: a file's controls run
/// into a transform-1 file's parameters or the reverse (the applier then parses the one as the
/// other).
const UNPREDICTABLE: &str = "unpredictable: ";

/// A little-endian u64 of `src` at an 8-aligned offset chosen by `i` (0 when it is shorter).
fn word(src: &[u8], i: u8) -> u64 {
    if src.len() < 8 {
        return 0;
    }
    let at = usize::from(i) % (src.len() / 8) * 8;
    u64::from_le_bytes(src[at..at + 8].try_into().unwrap())
}

/// One load segment, chosen so that predictions can hit on the fixture's bytes: a small
/// address, one taken from an 8-byte word of the source (less a small constant: absolute
/// pointers), or an ELF-like one; a small, 4 GiB-plus (covers the i32 of an x86-64 operand
/// read from ASCII), huge or source-sized extent.
fn gen_load(b: &mut Bytes<'_>, src: &[u8]) -> Load {
    let s = b.u8();
    let off = u64::from(b.u8() % 64) * if s & 1 != 0 { 16 } else { 1 };
    let vaddr = match s >> 1 & 3 {
        0 => u64::from(b.u16()) << 4,
        1 => {
            let w = b.u8();
            word(src, w).wrapping_sub(u64::from(b.u8()))
        }
        2 => 0x40_0000 + (u64::from(b.u8()) << 12),
        _ => {
            let w = b.u8();
            word(src, w) & !0xFFFF_FFFF
        }
    };
    let filesz = match s >> 3 & 3 {
        0 => u64::from(b.u16()),
        1 => (1 << 32) + u64::from(b.u16()),
        2 => u64::MAX >> (b.u8() % 4),
        _ => src.len() as u64,
    };
    let memsz = if s & 0x20 != 0 {
        filesz.saturating_add(u64::from(b.u16()))
    } else {
        filesz
    };
    Load {
        off,
        vaddr,
        filesz,
        memsz,
    }
}

/// Parameters for a file whose source is `src`: valid most of the time; else unknown kinds,
/// too many loads, a breakpoint not after the previous one or at / past the source's end, or
/// cut short.
fn gen_params(b: &mut Bytes<'_>, src: &[u8]) -> Params {
    let src_len = src.len() as u64;
    let sel = b.u8();
    let kinds = match sel % 16 {
        0 => 0,
        1 => 8 | u64::from(b.u8() % 8),
        _ => 1 + u64::from(b.u8() % 7),
    };
    let mut loads: [Vec<Load>; 2] = Default::default();
    for side in &mut loads {
        let n = b.u8() % 4;
        *side = (0..n).map(|_| gen_load(b, src)).collect();
    }
    let mut counts = [loads[0].len() as u64, loads[1].len() as u64];
    let mut map = Vec::new();
    let mut at = 0u64;
    for i in 0..b.u8() % 7 {
        let gap = if i == 0 {
            u64::from(b.u16()) % src_len.max(1)
        } else {
            1 + u64::from(b.u8())
        };
        if at + gap >= src_len {
            break;
        }
        at += gap;
        let dc = i64::from(b.u8() as i8) * if sel & 0x10 != 0 { 4096 } else { 1 };
        map.push((gap, dc));
    }
    let mut cut = None;
    match (sel >> 5, b.u8() % 4) {
        (0, 0) => counts[usize::from(sel & 1)] = (MAX_LOADS + 1) as u64 + u64::from(b.u8()),
        (0, 1) => map.push((0, 1)),
        (0, 2) => map.push((src_len - at + u64::from(b.u8() % 3), 0)),
        (0, _) => {
            let k = b.u8();
            cut = Some((usize::from(k >> 1), k & 1 != 0));
        }
        _ => {}
    }
    Params {
        kinds,
        counts,
        loads,
        map,
        cut,
    }
}

/// The parameters' bytes, written from FORMAT.md 4.2 (not with the crate's writer).
fn put_params(out: &mut Vec<u8>, p: &Params) {
    let mut v: Vec<Vec<u8>> = Vec::new();
    let mut one = |x: u64| {
        let mut o = Vec::new();
        put_varint(&mut o, x);
        o
    };
    v.push(one(p.kinds));
    for (n, loads) in p.counts.iter().zip(&p.loads) {
        v.push(one(*n));
        for l in loads {
            v.extend([l.off, l.vaddr, l.filesz, l.memsz].map(&mut one));
        }
    }
    v.push(one(p.map.len() as u64));
    for &(gap, dc) in &p.map {
        v.push(one(gap));
        let mut o = Vec::new();
        put_svarint(&mut o, dc);
        v.push(o);
    }
    if let Some((k, dangling)) = p.cut {
        v.truncate(k % v.len());
        if dangling {
            v.push(vec![0x80]);
        }
    }
    out.extend(v.concat());
}

/// The model's reading of parameters for a source of `src_len` bytes (FORMAT.md 4.2).
fn check_params(p: &Params, src_len: u64) -> Result<Refs, String> {
    if p.cut.is_some() {
        return Err("parameters cut short".into());
    }
    if p.kinds == 0 || p.kinds & !7 != 0 {
        return Err("unsupported reference kinds".into());
    }
    if p.counts.iter().any(|&n| n > MAX_LOADS as u64) {
        return Err("too many load segments".into());
    }
    let mut map = Vec::new();
    let (mut at, mut delta) = (0u64, 0i64);
    for (i, &(gap, dc)) in p.map.iter().enumerate() {
        if i > 0 && gap == 0 {
            return Err("breakpoint not after the previous one".into());
        }
        at = at.checked_add(gap).ok_or("breakpoint overflows")?;
        if at >= src_len {
            return Err("breakpoint past the source".into());
        }
        delta = delta.wrapping_add(dc);
        map.push(Region { old: at, delta });
    }
    Ok(Refs {
        kinds: p.kinds as u8,
        old_loads: p.loads[0].clone(),
        new_loads: p.loads[1].clone(),
        map,
    })
}

#[derive(Clone, Debug)]
enum Op {
    Unchanged,
    Copy(u32),
    Add(Vec<u8>),
    Delta {
        sources: Vec<u32>,
        base_size: Option<u64>,
        ctls: Vec<Ctl>,
        /// Sizes of the control blocks this file's controls are written in (sum = ctls.len();
        /// a 0 is an empty block, which the format forbids).
        blocks: Vec<usize>,
    },
    /// Op 4 (format 2.2): the content of an earlier entry of NEW. Which entry is resolved once
    /// the entry order is final (`resolve_copy_new`): `mode % 8` 0..=4 an earlier regular file
    /// that is not itself a copy-new (honest, if there is one), 5 any earlier entry (a
    /// directory, symlink or copy-new too), 6 an earlier copy-new (or any earlier entry), 7 a
    /// distance back past the first entry (out of range). A forward reference cannot be
    /// written: the format stores the distance back.
    CopyNew {
        mode: u8,
        pick: u8,
    },
}

#[derive(Clone, Debug)]
enum Kind {
    Dir,
    Symlink(String),
    File {
        exec: bool,
        op: Op,
        size: Option<u64>,
    },
}

#[derive(Clone, Debug)]
struct Gen {
    path: String,
    kind: Kind,
}

/// Content of a regular file of OLD, as the model sees it ("" is the single OLD file).
fn old_content(single: bool, path: &str) -> Option<&'static [u8]> {
    if single {
        return path.is_empty().then_some(super::fixture::OLD_FILE);
    }
    super::fixture::file(path).map(|(d, _)| d)
}

fn gen_ctls(b: &mut Bytes<'_>) -> Vec<Ctl> {
    let n = b.u8() % 6;
    (0..n)
        .map(|_| {
            let sel = b.u8();
            let diff = u64::from(b.u8()) * if sel & 1 != 0 { 16 } else { 1 };
            let extra = u64::from(b.u8() % 64);
            let seek = i64::from(b.u8() as i8) * if sel & 2 != 0 { 32 } else { 1 };
            let dbytes = if sel & 4 != 0 {
                b.take_padded(diff as usize)
            } else {
                vec![0; diff as usize]
            };
            let ebytes = b.take_padded(extra as usize);
            Ctl {
                diff,
                extra,
                seek,
                dbytes,
                ebytes,
            }
        })
        .collect()
}

/// Split `n` controls into blocks: one block, or (multi) blocks of 1..=4, with an empty block
/// first when `empty` is set.
fn gen_blocks(b: &mut Bytes<'_>, n: usize, multi: bool, empty: bool) -> Vec<usize> {
    let mut v = Vec::new();
    if empty {
        v.push(0);
    }
    let mut left = n;
    while left > 0 {
        let k = if multi {
            (1 + usize::from(b.u8() % 4)).min(left)
        } else {
            left
        };
        v.push(k);
        left -= k;
    }
    v
}

/// Options that shape how entries are generated.
#[derive(Clone, Copy)]
struct GenOpts {
    single: bool,
    n_old: usize,
    multi_blocks: bool,
    empty_block: bool,
}

fn gen_entry(b: &mut Bytes<'_>, o: GenOpts) -> Gen {
    let GenOpts { single, n_old, .. } = o;
    let path = if single { String::new() } else { gen_path(b) };
    let k = if single { 2 + b.u8() % 6 } else { b.u8() % 8 };
    let kind = match k {
        0 => Kind::Dir,
        1 => Kind::Symlink(gen_target(b)),
        _ => {
            let sel = b.u8();
            let exec = sel & 1 != 0;
            let mut size = (sel & 0x80 != 0).then(|| u64::from(b.u16() % 4096));
            let idx = |b: &mut Bytes<'_>| {
                u32::from(b.u8()) % (n_old.max(1) as u32 + (sel >> 6 & 1) as u32)
            };
            let op = match k {
                2 => Op::Unchanged,
                3 => Op::Copy(idx(b)),
                // A single-file bundle's one entry has nothing before it: only sometimes.
                4 | 5 if sel & 8 != 0 && (!single || sel & 0x10 != 0) => Op::CopyNew {
                    mode: b.u8(),
                    pick: b.u8(),
                },
                4 | 5 => {
                    let n = usize::from(b.u8() % 48);
                    Op::Add(b.take_padded(n))
                }
                _ => {
                    let n_src = if sel & 2 != 0 { 1 + b.u8() % 3 } else { 0 };
                    let sources = (0..n_src).map(|_| idx(b)).collect();
                    let base_size = (sel & 4 != 0).then(|| u64::from(b.u16() % 4096));
                    let ctls = gen_ctls(b);
                    let blocks = gen_blocks(b, ctls.len(), o.multi_blocks, o.empty_block);
                    Op::Delta {
                        sources,
                        base_size,
                        ctls,
                        blocks,
                    }
                }
            };
            // A copy-new of a wrong size (the declared size differs from its source's) a
            // quarter of the time, not half.
            if matches!(op, Op::CopyNew { .. }) && sel & 0x20 == 0 {
                size = None;
            }
            Kind::File { exec, op, size }
        }
    };
    Gen { path, kind }
}

/// The stream cursors of the model.
struct Cur<'a> {
    /// Control blocks and parameters in stream order.
    items: &'a [Item],
    /// Next block to read.
    next_block: usize,
    /// The current block and how many of its controls were used.
    block: &'a [Ctl],
    used: usize,
    extra_left: Vec<u8>,
    // Add data and control extras interleave in the extra stream; keep one flat stream.
    extra_pos: usize,
    diff: Vec<u8>,
    diff_pos: usize,
}

impl Cur<'_> {
    /// FORMAT.md: a file's controls come in blocks (count, then the diff, extra and seek
    /// columns); a block holds 1..=4096 controls and never spans two files.
    fn next_control(&mut self) -> Result<Ctl, String> {
        if self.used == self.block.len() {
            let blk = match self.items.get(self.next_block) {
                None => return Err("control stream ends".into()),
                Some(Item::Block(blk)) => blk,
                Some(Item::Params(_)) => {
                    return Err(format!("{UNPREDICTABLE}a file's controls reach parameters"))
                }
            };
            self.next_block += 1;
            if blk.is_empty() {
                return Err("empty control block".into());
            }
            self.block = blk;
            self.used = 0;
        }
        self.used += 1;
        Ok(self.block[self.used - 1].clone())
    }
    /// A transform-1 file's parameters, before its first control block.
    fn next_params(&mut self) -> Result<&Params, String> {
        if self.used != self.block.len() {
            return Err("a control block runs into the next file".into());
        }
        match self.items.get(self.next_block) {
            None => Err("control stream ends before the parameters".into()),
            Some(Item::Block(_)) => Err(format!("{UNPREDICTABLE}parameters read from a block")),
            Some(Item::Params(p)) => {
                self.next_block += 1;
                Ok(p)
            }
        }
    }
    fn take_extra(&mut self, n: u64) -> Result<Vec<u8>, String> {
        let n = usize::try_from(n).map_err(|_| "huge extra")?;
        if self.extra_left.len() - self.extra_pos < n {
            return Err("extra stream ends early".into());
        }
        let v = self.extra_left[self.extra_pos..self.extra_pos + n].to_vec();
        self.extra_pos += n;
        Ok(v)
    }
    fn take_diff(&mut self, n: u64) -> Result<Vec<u8>, String> {
        let n = usize::try_from(n).map_err(|_| "huge diff")?;
        if self.diff.len() - self.diff_pos < n {
            return Err("diff stream ends early".into());
        }
        let v = self.diff[self.diff_pos..self.diff_pos + n].to_vec();
        self.diff_pos += n;
        Ok(v)
    }
}

/// Model of one delta file (FORMAT.md "Controls"); with transform 1 (4.2) its parameters come
/// first and each control's diff is added to the whole region's prediction (as the diff side
/// computes it; the applier predicts block by block).
fn model_delta(src: &[u8], size: u64, transform: u8, cur: &mut Cur<'_>) -> Result<Vec<u8>, String> {
    let refs = match transform {
        TRANSFORM_REFS => Some(check_params(cur.next_params()?, src.len() as u64)?),
        _ => None,
    };
    let mut out: Vec<u8> = Vec::new();
    let mut pos: u64 = 0;
    let mut first = true;
    let src_len = src.len() as u64;
    while (out.len() as u64) < size {
        let c = cur.next_control()?;
        let step = c.diff.checked_add(c.extra).ok_or("overflow")?;
        if step == 0 && !first {
            return Err("empty control".into());
        }
        first = false;
        if out.len() as u64 + step > size {
            return Err("controls overshoot the file".into());
        }
        if pos + c.diff > src_len {
            return Err("diff reads past the source".into());
        }
        let d = cur.take_diff(c.diff)?;
        let region = &src[pos as usize..(pos + c.diff) as usize];
        let pred = match &refs {
            Some(r) => r.predict_region(region, pos, out.len() as u64),
            None => region.to_vec(),
        };
        for (p, x) in pred.iter().zip(&d) {
            out.push(p.wrapping_add(*x));
        }
        out.extend(cur.take_extra(c.extra)?);
        pos += c.diff;
        let np = pos as i64 + c.seek;
        if np < 0 || np as u64 > src_len {
            return Err("seek outside the source".into());
        }
        pos = np as u64;
    }
    if cur.used != cur.block.len() {
        return Err("control block spans two files".into());
    }
    Ok(out)
}

/// An independent statement of what a safe bundle path is.
fn safe_rel(p: &str) -> bool {
    !p.is_empty()
        && !p.starts_with('/')
        && !p.contains('\0')
        && !p.contains('\\')
        && p.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
}

/// What the model predicts for a patch.
enum Expect {
    /// The applier must refuse it.
    Err(String),
    /// The applier must produce a bundle with this digest.
    Ok(Hash),
    /// Either outcome (see [`UNPREDICTABLE`]); only the scratch directory is checked.
    Unknown(String),
}

/// Fuzz body.
pub fn run(data: &[u8]) {
    let mut b = Bytes::new(data);
    let f1 = b.u8();
    let f2 = b.u8();
    let sort = f1 & 1 != 0;
    let parents = f1 & 2 != 0;
    let compressed = f1 & 4 != 0;
    let honest_digest = f1 & 8 != 0;
    let corrupt_old = f1 & 0x10 != 0;
    let single = f1 & 0x20 != 0;
    let with_deleted = f1 & 0x40 != 0;
    let honest_base = f1 & 0x80 != 0;
    let total_off = f2 & 1 != 0;
    let flag_mismatch = f2 & 2 != 0;
    let codec_sel = (f2 >> 2) & 3;
    let split_frames = f2 & 0x10 != 0;
    let multi_blocks = f2 & 0x20 != 0;
    let empty_block = f2 & 0x40 != 0;
    let raw_manifest = f2 & 0x80 != 0;
    // Both: the diff stream is also zero-run coded (FORMAT.md 4.1), in blocks of a third of it.
    let runs = split_frames && multi_blocks;

    // Old-file table.
    let cands: &[&str] = if single { &[""] } else { OLD_CANDIDATES };
    let mask = b.u16();
    let mut old_files = Vec::new();
    for (i, c) in cands.iter().enumerate() {
        if mask & (1 << i) != 0 {
            let size = match old_content(single, c) {
                Some(d) => d.len() as u64,
                None => u64::from(b.u8()),
            };
            old_files.push(OldFile {
                path: c.to_string(),
                size,
            });
        }
    }
    if corrupt_old && !old_files.is_empty() {
        let i = usize::from(b.u8()) % old_files.len();
        old_files[i].size ^= 1;
    }

    // Entries.
    let n = if single { 1 } else { b.u8() % 12 };
    let o = GenOpts {
        single,
        n_old: old_files.len(),
        multi_blocks,
        empty_block,
    };
    let mut gens: Vec<Gen> = (0..n).map(|_| gen_entry(&mut b, o)).collect();
    if parents {
        let mut extra = Vec::new();
        for g in &gens {
            let mut at = 0;
            while let Some(i) = g.path[at..].find('/') {
                let parent = &g.path[..at + i];
                if !parent.is_empty() {
                    extra.push(Gen {
                        path: parent.to_string(),
                        kind: Kind::Dir,
                    });
                }
                at += i + 1;
            }
        }
        for e in extra {
            if !gens.iter().any(|g| g.path == e.path) {
                gens.push(e);
            }
        }
    }
    if sort {
        gens.sort_by(|a, c| a.path.cmp(&c.path));
        gens.dedup_by(|a, c| a.path == c.path);
    }
    let deleted: Vec<String> = if with_deleted {
        (0..b.u8() % 3).map(|_| gen_path(&mut b)).collect()
    } else {
        Vec::new()
    };

    // Streams in manifest order, sizes and base digest.
    let mut diff = Vec::new();
    let mut extra = Vec::new();
    let mut entries = Vec::new();
    // Each delta entry's source bytes as the generator sees them (for its parameters).
    let mut delta_srcs: Vec<Option<Vec<u8>>> = Vec::new();
    // The base digest covers the old-file table first (table order), then same-path files.
    let mut base = blake3::Hasher::new();
    for f in &old_files {
        base.update(blake3::hash(old_content(single, &f.path).unwrap_or(b"")).as_bytes());
    }
    let mut total: u64 = 0;
    // The distance back each copy-new entry writes (None for other entries).
    let mut backs: Vec<Option<u64>> = Vec::new();
    for g in &gens {
        let mut back = None;
        let mut delta_src = None;
        let kind = match &g.kind {
            Kind::Dir => EntryKind::Dir,
            Kind::Symlink(t) => EntryKind::Symlink { target: t.clone() },
            Kind::File { exec, op, size } => {
                let here = old_content(single, &g.path);
                let (honest, fop) = match op {
                    Op::Unchanged => {
                        base.update(blake3::hash(here.unwrap_or(b"")).as_bytes());
                        (here.map_or(0, |d| d.len() as u64), FileOp::Unchanged)
                    }
                    Op::Copy(s) => (
                        old_files.get(*s as usize).map_or(0, |f| f.size),
                        FileOp::Copy { source: *s },
                    ),
                    Op::Add(d) => {
                        extra.extend_from_slice(d);
                        (d.len() as u64, FileOp::Add)
                    }
                    Op::CopyNew { mode, pick } => {
                        let i = entries.len();
                        let d = resolve_copy_new(&entries, *mode, *pick);
                        back = Some(d);
                        // An index the format cannot hold when `d` points before the first
                        // entry: such a manifest exists only as the bytes `encode_manifest`
                        // writes, and must not decode.
                        let entry = (d < i as u64).then(|| i - 1 - d as usize);
                        let honest = match entry.map(|j| &entries[j].kind) {
                            Some(EntryKind::File { size, .. }) => *size,
                            _ => 0,
                        };
                        (
                            honest,
                            FileOp::CopyNew {
                                entry: entry.map_or(u32::MAX, |j| j as u32),
                            },
                        )
                    }
                    Op::Delta {
                        sources,
                        base_size,
                        ctls,
                        blocks,
                    } => {
                        let mut produced = 0u64;
                        for c in ctls {
                            diff.extend_from_slice(&c.dbytes);
                            extra.extend_from_slice(&c.ebytes);
                            produced += c.diff + c.extra;
                        }
                        let _ = blocks; // written with the control stream, below
                        let mut src = Vec::new();
                        if sources.is_empty() {
                            src.extend_from_slice(here.unwrap_or(b""));
                        }
                        for s in sources {
                            let f = old_files.get(*s as usize);
                            src.extend_from_slice(
                                f.and_then(|f| old_content(single, &f.path)).unwrap_or(b""),
                            );
                        }
                        delta_src = Some(src);
                        let base_size = if sources.is_empty() {
                            base.update(blake3::hash(here.unwrap_or(b"")).as_bytes());
                            base_size.unwrap_or(here.map_or(0, |d| d.len() as u64))
                        } else {
                            0
                        };
                        (
                            produced,
                            FileOp::Delta {
                                sources: sources.clone(),
                                base_size,
                                transform: 0,
                            },
                        )
                    }
                };
                let size = size.unwrap_or(honest);
                total += size;
                EntryKind::File {
                    exec: *exec,
                    size,
                    op: fop,
                }
            }
        };
        entries.push(Entry {
            path: g.path.clone(),
            kind,
        });
        backs.push(back);
        delta_srcs.push(delta_src);
    }
    // Every copy-new points at or after the first entry: `Manifest` holds it as it is.
    let representable = backs
        .iter()
        .enumerate()
        .all(|(i, d)| d.is_none_or(|d| d < i as u64));
    let base_digest = if honest_base {
        *base.finalize().as_bytes()
    } else {
        b.take_padded(32).try_into().unwrap()
    };
    let supplied_digest: Hash = b.take_padded(32).try_into().unwrap();
    let mut m = Manifest {
        new_digest: supplied_digest,
        base_digest,
        old_files,
        entries,
        deleted,
        ..Manifest::default()
    };
    let directory = !single ^ flag_mismatch;
    // Base tags (FORMAT.md 3.2): arbitrary bits from the input, one per relied file (or one
    // too many); they only change which file a wrong-base error names, never the outcome.
    let tag_sel = b.u8();
    let tag_bits = tag_sel % 33;
    if tag_bits > 0 {
        let n = m.relied_count() + usize::from(tag_sel & 0x80 != 0);
        let hashes: Vec<Hash> = (0..n)
            .map(|_| b.take_padded(32).try_into().unwrap())
            .collect();
        m.base_tags = BaseTags::from_hashes(tag_bits, &hashes);
    }
    const CODECS: [u8; 4] = [CODEC_RAW, CODEC_ZSTD, CODEC_LZMA2, CODEC_BZIP2];
    let codecs: [u8; 3] = match (compressed, codec_sel) {
        (false, _) => [CODEC_RAW; 3],
        (true, 3) => [0; 3].map(|_: u8| CODECS[usize::from(b.u8() % 4)]),
        (true, c) => [CODECS[usize::from(c) + 1]; 3],
    };
    // Format 2.2 relative sizes (FORMAT.md 3.3): header flag bit 5 and the manifest written
    // with them, or neither.
    let rel_sizes = b.u8() & 1 != 0;
    // Format 2.3 transform 1 (FORMAT.md 4.2), from the input's tail (an input that ends
    // before it has none): a choice byte per delta entry (rarely for 2+ sources, which the
    // manifest must refuse), then its parameters; header flag bit 6 is left off when
    // `refs_sel % 8 == 1`, which the manifest must refuse too.
    let refs_sel = b.u8();
    let mut params: Vec<Option<Params>> = vec![None; gens.len()];
    if refs_sel != 0 {
        for (i, e) in m.entries.iter_mut().enumerate() {
            let EntryKind::File {
                op: FileOp::Delta {
                    sources, transform, ..
                },
                ..
            } = &mut e.kind
            else {
                continue;
            };
            let c = b.u8();
            if c & 1 != 0 && (sources.len() <= 1 || c & 6 == 6) {
                *transform = TRANSFORM_REFS;
                params[i] = Some(gen_params(&mut b, delta_srcs[i].as_deref().unwrap_or(b"")));
            }
        }
    }
    let t1 = |e: &Entry| match &e.kind {
        EntryKind::File {
            op: FileOp::Delta {
                sources, transform, ..
            },
            ..
        } => (*transform == TRANSFORM_REFS).then_some(sources.len()),
        _ => None,
    };
    let any_t1 = m.entries.iter().any(|e| t1(e).is_some());
    let exe_flag = any_t1 && refs_sel % 8 != 1;
    let t1_refused = any_t1 && (!exe_flag || m.entries.iter().any(|e| t1(e) > Some(1)));
    // The control stream: each transform-1 file's parameters, then its blocks (cut-short
    // parameters end the stream).
    let mut ctrl = Vec::new();
    let mut items: Vec<Item> = Vec::new();
    'files: for (g, p) in gens.iter().zip(&params) {
        let Kind::File {
            op: Op::Delta { ctls, blocks, .. },
            ..
        } = &g.kind
        else {
            continue;
        };
        if let Some(p) = p {
            let at = ctrl.len();
            put_params(&mut ctrl, p);
            items.push(Item::Params(p.clone()));
            if p.cut.is_some() {
                break 'files;
            }
            if let Ok(r) = check_params(p, u64::MAX) {
                let mut enc = Vec::new();
                r.encode(&mut enc);
                assert_eq!(enc, ctrl[at..], "Refs::encode differs from FORMAT.md 4.2");
            }
        }
        let mut at = 0;
        for &k in blocks {
            let blk = &ctls[at..at + k];
            at += k;
            put_block(&mut ctrl, blk);
            items.push(Item::Block(blk.to_vec()));
        }
    }
    let mut header = Header {
        minor: VERSION_MINOR,
        flags: if directory { FLAG_DIRECTORY } else { 0 }
            | if tag_bits > 0 { FLAG_BASE_TAGS } else { 0 }
            | if rel_sizes { FLAG_RELATIVE_SIZES } else { 0 }
            | if exe_flag { FLAG_EXE_REFS } else { 0 },
        window_log: 20,
        codecs,
        manifest_len: 0,
        manifest_raw_len: 0,
        new_total: total + u64::from(total_off),
        stream_lens: [0; 3],
    };

    // The model.
    let scratch_exp = scratch();
    let wire = encode_manifest(&m, rel_sizes, &backs);
    if representable {
        assert_eq!(
            wire,
            m.encode_sized(rel_sizes),
            "the crate's writer differs from FORMAT.md (relative sizes: {rel_sizes})"
        );
    }
    // The decoding budget is a multiple of the manifest's raw length (`Budget::for_manifest`):
    // decode under the header the patch will carry, not one that declares 0 bytes (which
    // refused every manifest with an entry or an old file, so the model never reached Ok
    // for them).
    header.manifest_raw_len = wire.len() as u64;
    let mut expect = match Manifest::decode(&wire, &header) {
        Err(e) => Expect::Err(format!("manifest rejected: {e}")),
        Ok(dm) => {
            assert!(
                !t1_refused,
                "Manifest::decode accepted transform 1 without flag bit 6 or over 2+ sources"
            );
            assert!(
                representable,
                "Manifest::decode accepted a copy-new before the first entry"
            );
            assert_eq!(dm, m, "manifest changed through encode/decode");
            if directory {
                for p in dm
                    .entries
                    .iter()
                    .map(|e| &e.path)
                    .chain(dm.old_files.iter().map(|f| &f.path))
                    .chain(dm.deleted.iter())
                {
                    assert!(safe_rel(p), "Manifest::decode accepted unsafe path {p:?}");
                }
            }
            model(&m, !directory, &items, &diff, &extra, scratch_exp.path())
        }
    };
    if let Expect::Ok(d) = expect {
        if honest_digest {
            m.new_digest = d;
        } else if d != m.new_digest {
            expect = Expect::Err("new digest differs".into());
        }
    }

    // Assemble the patch.
    let raw = encode_manifest(&m, rel_sizes, &backs);
    // The manifest is one zstd frame, or stored as it is (then manifest_len == raw length),
    // which a writer must do when the frame would not be smaller.
    let mut comp = zstd::bulk::compress(&raw, 1).unwrap();
    if raw_manifest || comp.len() >= raw.len() {
        comp = raw.clone();
    }
    let diff = if runs {
        header.flags |= FLAG_DIFF_RUNS;
        zero_run_code(&diff, (diff.len() / 3).clamp(1, 1 << 16))
    } else {
        diff
    };
    let streams: Vec<Vec<u8>> = [ctrl, diff, extra]
        .into_iter()
        .zip(codecs)
        .map(|(s, codec)| encode_stream(&s, codec, split_frames))
        .collect();
    header.manifest_len = comp.len() as u64;
    header.manifest_raw_len = raw.len() as u64;
    for (i, s) in streams.iter().enumerate() {
        header.stream_lens[i] = s.len() as u64;
    }
    let mut body = header.encode().to_vec();
    body.extend_from_slice(&comp);
    for s in &streams {
        body.extend_from_slice(s);
    }
    let patch = with_trailer(&body);
    if let Err(e) = Header::decode(&header.encode()) {
        expect = Expect::Err(format!("header rejected: {e}"));
    } else if memory_needed(&header) > LIMIT {
        expect = Expect::Err("memory limit".into());
    }

    // Apply.
    let fx = fixture();
    let root = scratch();
    let tmp = root.path().join("tmp");
    fs::create_dir(&tmp).unwrap();
    let p = tmp.join("p.bdp");
    write(&p, &patch);
    let out = tmp.join("out");
    let mut patcher = Patcher::new();
    // The fixture's entries that a fuzzed manifest does not name are left out of OUT (the
    // model builds exactly the manifest's entries); refusing or keeping them is tested in
    // tests/unknown.rs.
    patcher
        .memory_limit(LIMIT)
        .output_limit(LIMIT)
        .unknown(bundelta::Unknown::Remove);
    let result = patcher.apply(fx.old(directory), &p, &out);

    if super::debug() {
        match (&result, &expect) {
            // Which 2.2 features an applied patch used.
            (Ok(_), _) => eprintln!(
                "dir_apply: Ok{}{}{}",
                if rel_sizes { " relative-sizes" } else { "" },
                if any_t1 { " exe-refs" } else { "" },
                if backs.iter().any(Option::is_some) {
                    " copy-new"
                } else {
                    ""
                }
            ),
            (Err(e), Expect::Err(why)) => eprintln!("dir_apply: Err {e} (model: {why})"),
            (Err(e), Expect::Unknown(why)) => eprintln!("dir_apply: Err {e} (model: ? {why})"),
            (Err(e), _) => eprintln!("dir_apply: Err {e}"),
        }
    }
    assert_only(root.path(), &["tmp"], "scratch root");
    fx.check_untouched();
    match (&result, &expect) {
        (Ok(rep), Expect::Ok(d)) => {
            assert_only(&tmp, &["p.bdp", "out"], "after Ok apply");
            assert_eq!(&rep.digest, d);
            assert_eq!(
                &bundle_digest(&out).expect("digest of OUT"),
                d,
                "OUT differs"
            );
        }
        (Ok(_), Expect::Unknown(_)) => assert_only(&tmp, &["p.bdp", "out"], "after Ok apply"),
        (Err(_), Expect::Err(_) | Expect::Unknown(_)) => {
            assert_only(&tmp, &["p.bdp"], "after failed apply")
        }
        (Ok(_), Expect::Err(why)) => panic!(
            "apply accepted a patch the model rejects ({why}); OUT = {:?}",
            super::tree_listing(&out)
        ),
        (Err(e), Expect::Ok(_)) => panic!("apply failed ({e}) where the model succeeds"),
    }
}

/// Encode one solid stream with `codec`; `split`: as two concatenated frames / LZMA2 streams
/// (the format allows any number).
fn encode_stream(s: &[u8], codec: u8, split: bool) -> Vec<u8> {
    if codec == CODEC_RAW {
        return s.to_vec();
    }
    let parts: Vec<&[u8]> = if split {
        let (a, b) = s.split_at(s.len() / 2);
        vec![a, b]
    } else {
        vec![s]
    };
    let mut out = Vec::new();
    for p in parts {
        match codec {
            CODEC_ZSTD => out.extend(zstd::bulk::compress(p, 1).unwrap()),
            CODEC_LZMA2 => out.extend(lzma2(p)),
            _ => out.extend(bzip2(p)),
        }
    }
    out
}

/// One bzip2 stream (block size 100 kB).
fn bzip2(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::new(1));
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// One control block, written from the spec (not with the crate's writer): count, then every
/// diff, every extra, every zigzag seek, as LEB128 varints.
fn put_block(out: &mut Vec<u8>, blk: &[Ctl]) {
    put_varint(out, blk.len() as u64);
    for c in blk {
        put_varint(out, c.diff);
    }
    for c in blk {
        put_varint(out, c.extra);
    }
    for c in blk {
        put_svarint(out, c.seek);
    }
}

/// One raw LZMA2 stream (preset 1, dictionary of the header's window log 20).
fn lzma2(data: &[u8]) -> Vec<u8> {
    use liblzma::stream::{Action, Filters, LzmaOptions, Status, Stream};
    let mut opts = LzmaOptions::new_preset(1).unwrap();
    opts.dict_size(lzma_dict_size(20));
    let mut f = Filters::new();
    f.lzma2(&opts);
    let mut st = Stream::new_raw_encoder(&f).unwrap();
    let mut out: Vec<u8> = Vec::with_capacity(data.len() + 4096);
    let mut input = data;
    loop {
        if out.capacity() - out.len() < 4096 {
            out.reserve(out.capacity().max(4096));
        }
        let before = st.total_in();
        let status = st.process_vec(input, &mut out, Action::Finish).unwrap();
        input = &input[(st.total_in() - before) as usize..];
        if status == Status::StreamEnd {
            return out;
        }
    }
}

/// Run the model on a manifest that decoded (`single`: the header says single file): base
/// checks, then every entry in order. On success the expected bundle is written under `dir`
/// and its digest returned.
fn model(
    m: &Manifest,
    single: bool,
    items: &[Item],
    diff: &[u8],
    extra: &[u8],
    dir: &Path,
) -> Expect {
    // Base check: only when the patch needs anything from OLD.
    let same_path = |op: &FileOp| match op {
        FileOp::Unchanged => true,
        FileOp::Delta { sources, .. } => sources.is_empty(),
        _ => false,
    };
    let needs_old = !m.old_files.is_empty()
        || m.entries
            .iter()
            .any(|e| matches!(&e.kind, EntryKind::File { op, .. } if same_path(op)));
    if needs_old {
        let mut h = blake3::Hasher::new();
        for f in &m.old_files {
            match old_content(single, &f.path) {
                None => return Expect::Err(format!("old {:?} missing", f.path)),
                Some(d) if d.len() as u64 != f.size => return Expect::Err("old size".into()),
                Some(d) => {
                    h.update(blake3::hash(d).as_bytes());
                }
            }
        }
        for e in &m.entries {
            if let EntryKind::File { size, op, .. } = &e.kind {
                if !same_path(op) {
                    continue;
                }
                let Some(d) = old_content(single, &e.path) else {
                    return Expect::Err(format!("same-path {:?} missing", e.path));
                };
                let want = match op {
                    FileOp::Delta { base_size, .. } => *base_size,
                    _ => *size,
                };
                if d.len() as u64 != want {
                    return Expect::Err("same-path size".into());
                }
                h.update(blake3::hash(d).as_bytes());
            }
        }
        if *h.finalize().as_bytes() != m.base_digest {
            return Expect::Err("base digest".into());
        }
    }

    // Build.
    let mut cur = Cur {
        items,
        next_block: 0,
        block: &[],
        used: 0,
        extra_left: extra.to_vec(),
        extra_pos: 0,
        diff: diff.to_vec(),
        diff_pos: 0,
    };
    let mut outputs: Vec<Option<Vec<u8>>> = Vec::new();
    for e in &m.entries {
        let EntryKind::File { size, op, .. } = &e.kind else {
            outputs.push(None);
            continue;
        };
        let content = match op {
            FileOp::Unchanged => old_content(single, &e.path).unwrap().to_vec(),
            FileOp::Copy { source } => old_content(single, &m.old_files[*source as usize].path)
                .unwrap()
                .to_vec(),
            FileOp::Add => match cur.take_extra(*size) {
                Ok(v) => v,
                Err(why) => return Expect::Err(why),
            },
            FileOp::Delta {
                sources, transform, ..
            } => {
                let mut src = Vec::new();
                if sources.is_empty() {
                    src.extend_from_slice(old_content(single, &e.path).unwrap());
                }
                for s in sources {
                    match old_content(single, &m.old_files[*s as usize].path) {
                        Some(d) => src.extend_from_slice(d),
                        None => return Expect::Err("delta source missing".into()),
                    }
                }
                match model_delta(&src, *size, *transform, &mut cur) {
                    Ok(v) => v,
                    Err(why) => match why.strip_prefix(UNPREDICTABLE) {
                        Some(why) => return Expect::Unknown(why.into()),
                        None => return Expect::Err(why),
                    },
                }
            }
            // The entry's content as this patch produced it (FORMAT.md 3, op 4): an earlier
            // regular file, not itself a copy-new, of the same size.
            FileOp::CopyNew { entry } => {
                let j = *entry as usize;
                if j >= outputs.len() {
                    return Expect::Err("copy-new of a later entry".into());
                }
                match (&m.entries[j].kind, &outputs[j]) {
                    (
                        EntryKind::File {
                            op: FileOp::CopyNew { .. },
                            ..
                        },
                        _,
                    ) => return Expect::Err("copy-new of a copy-new".into()),
                    (EntryKind::File { .. }, Some(d)) => d.clone(),
                    _ => return Expect::Err("copy-new of a non-file".into()),
                }
            }
            _ => return Expect::Err("unknown op".into()),
        };
        if content.len() as u64 != *size {
            return Expect::Err("size mismatch".into());
        }
        outputs.push(Some(content));
    }
    if cur.next_block != items.len() {
        return Expect::Err("control stream has leftovers".into());
    }
    if cur.diff_pos != diff.len() {
        return Expect::Err("diff stream has leftovers".into());
    }
    if cur.extra_pos != extra.len() {
        return Expect::Err("extra stream has leftovers".into());
    }

    // Materialise the expected bundle and take its digest.
    let root = dir.join("expect");
    if single {
        let content = outputs[0].as_ref().unwrap();
        write(&root, content);
    } else {
        fs::create_dir(&root).unwrap();
        for (e, content) in m.entries.iter().zip(&outputs) {
            let at = root.join(&e.path);
            match &e.kind {
                EntryKind::Dir => fs::create_dir(&at).unwrap(),
                EntryKind::Symlink { target } => std::os::unix::fs::symlink(target, &at).unwrap(),
                EntryKind::File { exec, .. } => {
                    write(&at, content.as_ref().unwrap());
                    set_exec(&at, *exec);
                }
                _ => unreachable!(),
            }
        }
    }
    Expect::Ok(bundle_digest(&root).expect("digest of the expected bundle"))
}

/// The distance back a copy-new at index `prior.len()` writes (FORMAT.md 3: it copies entry
/// `i - 1 - back`), chosen by `mode` (see [`Op::CopyNew`]).
fn resolve_copy_new(prior: &[Entry], mode: u8, pick: u8) -> u64 {
    let i = prior.len();
    let pick = usize::from(pick);
    let is_copy_new = |e: &Entry| {
        matches!(
            e.kind,
            EntryKind::File {
                op: FileOp::CopyNew { .. },
                ..
            }
        )
    };
    let files: Vec<usize> = (0..i)
        .filter(|&j| matches!(prior[j].kind, EntryKind::File { .. }) && !is_copy_new(&prior[j]))
        .collect();
    let copies: Vec<usize> = (0..i).filter(|&j| is_copy_new(&prior[j])).collect();
    let j = match mode % 8 {
        0..=4 if !files.is_empty() => Some(files[pick % files.len()]),
        6 if !copies.is_empty() => Some(copies[pick % copies.len()]),
        7 => None,
        _ if i > 0 => Some(pick % i),
        _ => None,
    };
    match j {
        Some(j) => (i - 1 - j) as u64,
        None if pick == 255 => u64::MAX,
        None => (i + pick % 3) as u64,
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// The full-form manifest body written from FORMAT.md section 3 (not with the crate's writer):
/// absolute sizes, or with `rel` (header flag bit 5, section 3.3) the size of a copy, modify
/// or copy-new as the zigzag difference from its reference size (absolute when that cannot be
/// resolved: the reader refuses such an entry for its source anyway). `backs[i]` is the
/// distance back copy-new entry `i` writes, which may reach before the first entry.
fn encode_manifest(m: &Manifest, rel: bool, backs: &[Option<u64>]) -> Vec<u8> {
    let mut out = vec![0u8];
    out.extend_from_slice(&m.new_digest);
    out.extend_from_slice(&m.base_digest);
    if m.base_tags.bits > 0 {
        out.push(m.base_tags.bits);
        put_varint(&mut out, m.base_tags.count as u64);
        out.extend_from_slice(&m.base_tags.packed);
    }
    put_varint(&mut out, m.old_files.len() as u64);
    for f in &m.old_files {
        put_str(&mut out, &f.path);
        put_varint(&mut out, f.size);
    }
    put_varint(&mut out, m.entries.len() as u64);
    let old_size = |s: &u32| m.old_files.get(*s as usize).map(|f| f.size);
    let mut prev = "";
    for (i, e) in m.entries.iter().enumerate() {
        // Longest shared byte prefix, backed off to a character boundary.
        let mut shared = prev
            .bytes()
            .zip(e.path.bytes())
            .take_while(|(x, y)| x == y)
            .count();
        while !e.path.is_char_boundary(shared) {
            shared -= 1;
        }
        put_varint(&mut out, shared as u64);
        put_str(&mut out, &e.path[shared..]);
        prev = &e.path;
        match &e.kind {
            EntryKind::Dir => out.push(0),
            EntryKind::Symlink { target } => {
                out.push(2);
                put_str(&mut out, target);
            }
            EntryKind::File { exec, size, op } => {
                out.push(1);
                out.push(u8::from(*exec));
                let back = backs[i];
                let reference = match op {
                    _ if !rel => None,
                    FileOp::Copy { source } => old_size(source),
                    FileOp::Delta {
                        sources, base_size, ..
                    } if sources.is_empty() => Some(*base_size),
                    FileOp::Delta { sources, .. } => sources
                        .iter()
                        .try_fold(0u64, |a, s| a.checked_add(old_size(s)?)),
                    FileOp::CopyNew { .. } => back.filter(|&d| d < i as u64).and_then(|d| match &m
                        .entries[i - 1 - d as usize]
                        .kind
                    {
                        EntryKind::File { op, size, .. }
                            if !matches!(op, FileOp::CopyNew { .. }) =>
                        {
                            Some(*size)
                        }
                        _ => None,
                    }),
                    _ => None,
                };
                match reference {
                    Some(r) => put_svarint(&mut out, *size as i64 - r as i64),
                    None => put_varint(&mut out, *size),
                }
                match op {
                    FileOp::Unchanged => out.push(0),
                    FileOp::Copy { source } => {
                        out.push(1);
                        put_varint(&mut out, u64::from(*source));
                    }
                    FileOp::Add => out.push(2),
                    FileOp::Delta {
                        sources,
                        base_size,
                        transform,
                    } => {
                        out.push(3);
                        put_varint(&mut out, sources.len() as u64);
                        for s in sources {
                            put_varint(&mut out, u64::from(*s));
                        }
                        if sources.is_empty() {
                            put_varint(&mut out, *base_size);
                        }
                        out.push(*transform);
                    }
                    FileOp::CopyNew { .. } => {
                        out.push(4);
                        put_varint(&mut out, back.expect("a copy-new has its distance"));
                    }
                    _ => unreachable!("the generator makes only ops 0..=4"),
                }
            }
            _ => unreachable!("the generator makes only kinds 0..=2"),
        }
    }
    put_varint(&mut out, m.deleted.len() as u64);
    for d in &m.deleted {
        put_str(&mut out, d);
    }
    out
}
