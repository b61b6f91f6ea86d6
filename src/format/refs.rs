//! Reference prediction for executables: delta transform 1 (FORMAT.md section 4.2).
//!
//! # Why
//!
//! Machine code changes in a way byte matching cannot see. When a release inserts a function
//! or grows a data section, every relative call, jump and RIP-relative operand that crosses the
//! insertion changes by the same displacement, and so does every absolute pointer into what
//! moved. bsdiff-class matching still aligns the code, but each such operand leaves a few
//! nonzero diff bytes: on a Go executable's patch release they were most of the patch.
//!
//! Zucchini (Chromium) labels the reference targets of both binaries and diffs in that space.
//! This transform reaches the same operands more cheaply: the applier already knows, from the
//! matched regions, where each piece of OLD went in NEW. For a reference found in the OLD bytes
//! of a matched region, it computes where the old target went and predicts the new operand
//! from that; the diff stream then holds `new - predicted` instead of `new - old`, which is
//! zero where the prediction is right. Measured on the corpus (format 2.3 prototype): the diff
//! stream of executable-small (Go, non-PIE) shrank 28%, of shared-lib-small (Rust .so) 21%.
//!
//! # What the applier needs
//!
//! The parameters of a file (found references' kinds, the load segments of OLD and NEW, and
//! the map of matched regions, at most [`MAX_MAP`] entries) precede the file's controls in the
//! control stream. Holding them takes at most [`REFS_MEMORY`] bytes, counted in
//! [`crate::memory_needed`] when the header has [`super::FLAG_EXE_REFS`]. Prediction reads no
//! byte beyond the matched region it works on, so the applier keeps reading OLD by position
//! in blocks, each with [`LOOK_AHEAD`] bytes more; it carries those bytes, as predicted, to
//! the next block.
//!
//! Nothing here affects safety: the parameters are bounds-checked as they are read, every
//! computation wraps, and a wrong prediction only makes output that fails its hash.

use crate::error::{Error, Result};

use super::varint::{put_svarint, put_varint};

/// Delta transform value of reference prediction.
pub const TRANSFORM_REFS: u8 = 1;
/// Reference kind: x86-64 rel32 branches and calls and RIP-relative disp32 operands.
pub const REFS_X86: u8 = 1;
/// Reference kind: 8-byte-aligned absolute 64-bit addresses (pointers, relocation entries).
pub const REFS_ABS64: u8 = 2;
/// Reference kind: AArch64 B and BL (imm26).
pub const REFS_ARM64: u8 = 4;
/// Every kind this version defines.
pub const KNOWN_REFS: u8 = REFS_X86 | REFS_ABS64 | REFS_ARM64;
/// Most load segments described per side.
pub const MAX_LOADS: usize = 16;
/// Most entries of a file's region map.
pub const MAX_MAP: usize = 1 << 15;
/// Bytes past a block that [`Refs::predict`] may read: more than the longest reference it
/// examines (12 bytes: prefix, REX, opcode, ModRM, disp32, imm32).
pub const LOOK_AHEAD: usize = 16;
/// Heap of the parameters of one file at most: the map at 16 bytes an entry, and the loads.
pub const REFS_MEMORY: u64 = (MAX_MAP as u64) * 16 + 2 * (MAX_LOADS as u64) * 32;

const C: &str = "control stream";

/// One loadable segment: `filesz` bytes at file offset `off` are mapped at `vaddr`; memory
/// continues, zero-filled, up to `memsz` (ELF `PT_LOAD`, PE section).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Load {
    /// File offset.
    pub off: u64,
    /// Address of the segment in memory.
    pub vaddr: u64,
    /// Bytes backed by the file.
    pub filesz: u64,
    /// Bytes in memory.
    pub memsz: u64,
}

/// A breakpoint of the region map: from OLD offset `old` on (up to the next breakpoint), OLD's
/// bytes are taken to reappear in NEW `delta` bytes further on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    /// Offset in the source.
    pub old: u64,
    /// NEW offset minus OLD offset.
    pub delta: i64,
}

/// The parameters of one file's reference prediction.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Refs {
    /// Which references to predict ([`REFS_X86`], [`REFS_ABS64`], [`REFS_ARM64`]).
    pub kinds: u8,
    /// Load segments of OLD.
    pub old_loads: Vec<Load>,
    /// Load segments of NEW.
    pub new_loads: Vec<Load>,
    /// Breakpoints, strictly increasing in `old`: a piecewise-constant map from OLD offsets
    /// to NEW offsets.
    pub map: Vec<Region>,
}

fn find_off(loads: &[Load], o: u64) -> Option<u64> {
    loads
        .iter()
        .find(|s| o >= s.off && o - s.off < s.filesz)
        .map(|s| (o - s.off).wrapping_add(s.vaddr))
}

fn find_vaddr(loads: &[Load], v: u64) -> Option<u64> {
    loads
        .iter()
        .find(|s| v >= s.vaddr && v - s.vaddr < s.filesz)
        .map(|s| (v - s.vaddr).wrapping_add(s.off))
}

fn rd32(b: &[u8], i: usize) -> i32 {
    i32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

/// `X86_OP[b]`: the immediate bytes after the disp32 of one-byte opcode `b` with a ModRM
/// operand that can be RIP-relative, [`IMM_Z`] for an imm16/imm32 chosen by the operand size,
/// [`NOT_OP`] when `b` is no such opcode.
const X86_OP: [u8; 256] = {
    let mut t = [NOT_OP; 256];
    let zero: [u8; 22] = [
        0x01, 0x03, 0x09, 0x0B, 0x11, 0x13, 0x19, 0x1B, 0x21, 0x23, 0x29, 0x2B, 0x31, 0x33, 0x39,
        0x3B, 0x63, 0x8D, 0xFF, 0x84, 0x85, 0x86,
    ];
    let mut k = 0;
    while k < zero.len() {
        t[zero[k] as usize] = 0;
        k += 1;
    }
    let mut b = 0x87;
    while b <= 0x8B {
        t[b] = 0;
        b += 1;
    }
    t[0x80] = 1;
    t[0x83] = 1;
    t[0xC6] = 1;
    t[0x81] = IMM_Z;
    t[0xC7] = IMM_Z;
    t
};
/// `X86_OP2[b]`: 0 when the two-byte opcode `0F b` has a ModRM operand that can be
/// RIP-relative and no immediate, [`NOT_OP`] otherwise.
const X86_OP2: [u8; 256] = {
    let mut t = [NOT_OP; 256];
    let ranges: [(u8, u8); 11] = [
        (0x10, 0x17),
        (0x28, 0x2F),
        (0x51, 0x5F),
        (0x6E, 0x6F),
        (0x7E, 0x7F),
        (0xAF, 0xAF),
        (0xB6, 0xB7),
        (0xBE, 0xBF),
        (0xD6, 0xD6),
        (0xE7, 0xE7),
        (0xEF, 0xEF),
    ];
    let mut k = 0;
    while k < ranges.len() {
        let mut b = ranges[k].0 as usize;
        while b <= ranges[k].1 as usize {
            t[b] = 0;
            b += 1;
        }
        k += 1;
    }
    t
};
const NOT_OP: u8 = 0xFF;
const IMM_Z: u8 = 0xFE;
/// `X86_TRIGGER[b]`: whether byte `b` can be the byte that makes [`x86_ref`] find an
/// instruction: E8, E9 or 0F as its first byte, or a ModRM byte with mod=00 rm=101 in its
/// second to fifth. Where none of a position's first 5 bytes is one, `x86_ref` finds nothing.
const X86_TRIGGER: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        t[b] = matches!(b, 0xE8 | 0xE9 | 0x0F) || b & 0xC7 == 0x05;
        b += 1;
    }
    t
};
/// The index of the first byte at or after `from` in `b` that is an [`X86_TRIGGER`], or
/// `b.len()`. Eight bytes at a time: a byte of a word is flagged by the usual zero-byte test
/// of the word XOR the pattern, which may also flag bytes above a true zero (a borrow) but
/// never below one, so the lowest flag of any of the four tests is the first trigger.
fn next_trigger(b: &[u8], from: usize) -> usize {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let zero = |x: u64| x.wrapping_sub(LO) & !x & HI;
    let mut i = from;
    while i + 8 <= b.len() {
        let x = u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        let m = zero(x ^ (0xE8 * LO))
            | zero(x ^ (0xE9 * LO))
            | zero(x ^ (0x0F * LO))
            | zero((x & (0xC7 * LO)) ^ (0x05 * LO));
        if m != 0 {
            return i + (m.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    b[i.min(b.len())..]
        .iter()
        .position(|&c| X86_TRIGGER[c as usize])
        .map_or(b.len(), |k| i + k)
}

/// `X86_START[b]`: whether an instruction that [`x86_ref`] recognises can begin with byte `b`
/// (a branch, a 0F escape, a prefix, a REX byte or a one-byte opcode of [`X86_OP`]).
const X86_START: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        t[b] = X86_OP[b] != NOT_OP
            || matches!(b, 0xE8 | 0xE9 | 0x0F | 0x66 | 0xF2 | 0xF3)
            || (b >= 0x40 && b <= 0x4F);
        b += 1;
    }
    t
};

/// An x86-64 instruction with a 32-bit relative operand at `p`: (operand offset, length).
/// `b` holds the bytes from `p` to the end of the region. Table-driven; [`x86_ref_naive`] in
/// the tests is the plain form it must agree with on every input.
#[inline]
fn x86_ref(b: &[u8]) -> Option<(usize, usize)> {
    let b0 = *b.first()?;
    if !X86_START[b0 as usize] {
        return None;
    }
    let at = |k: usize| b.get(k).copied();
    match b0 {
        // call, jmp rel32
        0xE8 | 0xE9 => return (5 <= b.len()).then_some((1, 5)),
        // jcc rel32
        0x0F if matches!(at(1), Some(0x80..=0x8F)) => return (6 <= b.len()).then_some((2, 6)),
        _ => {}
    }
    // [prefix] [REX] opcode ModRM disp32 [imm] with ModRM mod=00 rm=101: RIP-relative.
    let mut i = 0;
    let mut op16 = false;
    if let 0x66 | 0xF2 | 0xF3 = b0 {
        op16 = b0 == 0x66;
        i = 1;
    }
    let mut wide = false;
    if let Some(r @ 0x40..=0x4F) = at(i) {
        wide = r & 8 != 0;
        i += 1;
    }
    let op = at(i)?;
    let imm = if op == 0x0F {
        i += 1;
        X86_OP2[at(i)? as usize]
    } else {
        X86_OP[op as usize]
    };
    let imm = match imm {
        NOT_OP => return None,
        IMM_Z if op16 && !wide => 2,
        IMM_Z => 4,
        n => n as usize,
    };
    let modrm = at(i + 1)?;
    if modrm & 0xC7 != 0x05 {
        return None;
    }
    let (oo, ie) = (i + 2, i + 6 + imm);
    (ie <= b.len()).then_some((oo, ie))
}

/// The low 12 bits of an address that the AArch64 instruction `n` adds to register `rd` (an
/// ADRP's result): `ADD Xd, Xrd, #imm12` or a load/store with an unsigned, scaled offset from
/// `[Xrd]`; returns (the bits, the scale).
fn arm64_low12(n: u32, rd: u32) -> Option<(u64, u64)> {
    if n >> 5 & 0x1F != rd {
        return None;
    }
    let imm12 = u64::from(n >> 10 & 0xFFF);
    if n & 0xFFC0_0000 == 0x9100_0000 {
        return Some((imm12, 1));
    }
    if n & 0x3B00_0000 == 0x3900_0000 {
        let size = n >> 30;
        let simd128 = n & (1 << 26) != 0 && n & (1 << 23) != 0 && size == 0;
        let scale = if simd128 { 16 } else { 1u64 << size };
        return Some((imm12 * scale, scale));
    }
    None
}

impl Refs {
    /// Where OLD offset `o` went in NEW, by the map: moved by the delta of the last breakpoint
    /// at or before it (none before the first).
    #[cfg_attr(not(feature = "internals"), allow(dead_code))] // tests, fuzz targets
    pub fn lookup(&self, o: u64) -> Option<u64> {
        let i = self.map.partition_point(|r| r.old <= o);
        let r = self.map.get(i.checked_sub(1)?)?;
        Some(o.wrapping_add(r.delta as u64))
    }

    /// [`Refs::lookup`] that first tries the breakpoint interval `*hint` (pointer tables,
    /// repeated constants and nearby calls often land in the same interval as the previous
    /// reference) and leaves the interval it used there. Same answer for any hint.
    fn lookup_near(&self, o: u64, hint: &mut usize) -> Option<u64> {
        let h = *hint;
        let i = match self.map.get(h) {
            Some(r) if r.old <= o && self.map.get(h + 1).is_none_or(|n| o < n.old) => h + 1,
            _ => self.map.partition_point(|r| r.old <= o),
        };
        let r = self.map.get(i.checked_sub(1)?)?;
        *hint = i - 1;
        Some(o.wrapping_add(r.delta as u64))
    }

    /// Where the OLD address `v` went in NEW: through the file when a load holds it, or, in a
    /// load's zero-filled tail, relative to the end of the same-numbered load of NEW.
    #[cfg_attr(not(feature = "internals"), allow(dead_code))] // tests, fuzz targets
    pub fn map_vaddr(&self, v: u64) -> Option<u64> {
        self.map_vaddr_near(v, &mut 0)
    }

    /// [`Refs::map_vaddr`] through [`Refs::lookup_near`].
    fn map_vaddr_near(&self, v: u64, hint: &mut usize) -> Option<u64> {
        if let Some(o) = find_vaddr(&self.old_loads, v) {
            return find_off(&self.new_loads, self.lookup_near(o, hint)?);
        }
        let k = self.old_loads.iter().position(|s| {
            let end = s.vaddr.wrapping_add(s.filesz);
            v >= end && v - end < s.memsz.saturating_sub(s.filesz)
        })?;
        let (s, n) = (self.old_loads[k], self.new_loads.get(k)?);
        Some(
            (v - s.vaddr.wrapping_add(s.filesz))
                .wrapping_add(n.vaddr)
                .wrapping_add(n.filesz),
        )
    }

    /// Predict the references in part of a matched region, in place.
    ///
    /// `buf` holds the OLD bytes of region offsets `at..at + buf.len()`, which must reach
    /// `at + emit + LOOK_AHEAD` or the region's end; positions `scan.next..at + emit` are
    /// examined (each reads fewer than [`LOOK_AHEAD`] bytes from it: an x86-64 instruction
    /// here is at most 12 bytes, all within `buf`) and `scan.next` moves past them.
    /// Bytes are only written below the new `scan.next`, and only read at or above it, so a
    /// caller that goes on with the next block carries `buf[emit..]` over to it.
    pub fn predict(&self, scan: &mut Scan, buf: &mut [u8], at: u64, emit: usize) {
        self.predict_with(scan, buf, at, emit, true)
    }

    /// [`Refs::predict`], with its two shortcuts (skipping positions that cannot start a
    /// reference, rejecting words outside the old loads) on or off: off, it examines every
    /// position plainly, the oracle the tests hold the shortcuts to.
    fn predict_with(&self, scan: &mut Scan, buf: &mut [u8], at: u64, emit: usize, fast: bool) {
        let end = at + emit as u64;
        // Addresses outside every old load (the common case for an arbitrary 8-byte word)
        // are rejected with two compares before `map_vaddr` searches the loads; loads that
        // wrap around the address space (only a crafted patch has them) disable the shortcut.
        let span = self
            .old_loads
            .iter()
            .try_fold((u64::MAX, 0), |(lo, hi), s| {
                let end = s.vaddr.checked_add(s.memsz.max(s.filesz))?;
                Some((lo.min(s.vaddr), hi.max(end)))
            });
        let (lo, hi) = span.unwrap_or((0, u64::MAX));
        let all = span.is_none() || !fast;
        let mut next = scan.next;
        // Without AArch64, a position can start something only if an x86 trigger byte lies in
        // its first 5 bytes or, with absolute pointers, it is 8-aligned in OLD: the others
        // are skipped in one step (`trig` is the buffer index of the next trigger byte).
        let skip = fast && self.kinds & REFS_X86 != 0 && self.kinds & REFS_ARM64 == 0;
        let abs64 = self.kinds & REFS_ABS64 != 0;
        let mut trig = 0usize;
        while next < end {
            let p = next;
            let i = (p - at) as usize;
            let q = scan.old.wrapping_add(p);
            if skip {
                if trig < i {
                    trig = next_trigger(buf, i);
                }
                let mut to = trig.saturating_sub(4).max(i) as u64 + at;
                if abs64 {
                    // The next 8-aligned position in OLD, this one if it is aligned.
                    to = to.min(p + (8 - q % 8) % 8);
                }
                if to > p {
                    next = to.min(end);
                    continue;
                }
            }
            let b = &buf[i..];
            if self.kinds & REFS_ABS64 != 0 && q % 8 == 0 && b.len() >= 8 {
                let v = u64::from_le_bytes(b[..8].try_into().expect("8 bytes"));
                if all || (lo..hi).contains(&v) {
                    if let Some(w) = self.map_vaddr_near(v, &mut scan.hint) {
                        buf[i..i + 8].copy_from_slice(&w.to_le_bytes());
                        next = p + 8;
                        continue;
                    }
                }
            }
            if self.kinds & REFS_X86 != 0 {
                if let Some((oo, ie)) = x86_ref(b) {
                    let pred = (|| {
                        let src = find_off(&self.old_loads, q)?.wrapping_add(ie as u64);
                        let disp = rd32(b, oo);
                        let t = self
                            .map_vaddr_near(src.wrapping_add(disp as i64 as u64), &mut scan.hint)?;
                        let dst = find_off(&self.new_loads, scan.new.wrapping_add(p))?
                            .wrapping_add(ie as u64);
                        i32::try_from(t.wrapping_sub(dst) as i64).ok()
                    })();
                    if let Some(v) = pred {
                        buf[i + oo..i + oo + 4].copy_from_slice(&v.to_le_bytes());
                    }
                    next = p + ie as u64;
                    continue;
                }
            }
            if self.kinds & REFS_ARM64 != 0 && q % 4 == 0 && b.len() >= 4 {
                let insn = u32::from_le_bytes(b[..4].try_into().expect("4 bytes"));
                if insn & 0x7C00_0000 == 0x1400_0000 {
                    let pred = (|| {
                        let src = find_off(&self.old_loads, q)?;
                        let imm = (((insn << 6) as i32) >> 4) as i64;
                        let t =
                            self.map_vaddr_near(src.wrapping_add(imm as u64), &mut scan.hint)?;
                        let dst = find_off(&self.new_loads, scan.new.wrapping_add(p))?;
                        let d = t.wrapping_sub(dst) as i64;
                        (d % 4 == 0 && (-(1 << 27)..(1 << 27)).contains(&d))
                            .then_some((insn & 0xFC00_0000) | ((d >> 2) as u32 & 0x03FF_FFFF))
                    })();
                    if let Some(v) = pred {
                        buf[i..i + 4].copy_from_slice(&v.to_le_bytes());
                    }
                    next = p + 4;
                    continue;
                }
                if insn & 0x9F00_0000 == 0x9000_0000 {
                    // ADRP, and the ADD or load/store that completes its address.
                    let second = b
                        .get(4..8)
                        .map(|n| u32::from_le_bytes(n.try_into().expect("4 bytes")));
                    let low = second.and_then(|n| arm64_low12(n, insn & 0x1F).map(|l| (n, l)));
                    let pred = (|| {
                        let src = find_off(&self.old_loads, q)?;
                        let imm = ((((insn >> 5 & 0x7FFFF) << 2 | (insn >> 29 & 3)) << 11) as i32
                            as i64)
                            << 1;
                        let lo = low.map_or(0, |(_, (v, _))| v);
                        let t_old = (src & !0xFFF).wrapping_add(imm as u64).wrapping_add(lo);
                        let t = self.map_vaddr_near(t_old, &mut scan.hint)?;
                        let dst = find_off(&self.new_loads, scan.new.wrapping_add(p))?;
                        let pages = ((t & !0xFFF).wrapping_sub(dst & !0xFFF) as i64) >> 12;
                        if !(-(1 << 20)..(1 << 20)).contains(&pages) {
                            return None;
                        }
                        let adrp = (insn & 0x9F00_001F)
                            | ((pages as u32 & 3) << 29)
                            | ((pages as u32 >> 2 & 0x7FFFF) << 5);
                        let second = low.and_then(|(n, (_, scale))| {
                            let l = t & 0xFFF;
                            (l % scale == 0)
                                .then_some((n & !(0xFFF << 10)) | (((l / scale) as u32) << 10))
                        });
                        Some((adrp, second))
                    })();
                    if let Some((adrp, second)) = pred {
                        buf[i..i + 4].copy_from_slice(&adrp.to_le_bytes());
                        if let Some(s) = second {
                            buf[i + 4..i + 8].copy_from_slice(&s.to_le_bytes());
                        }
                    }
                    next = p + if low.is_some() { 8 } else { 4 };
                    continue;
                }
            }
            next = p + 1;
        }
        scan.next = next;
    }

    /// The predicted OLD bytes of a region predicted in blocks of `block` bytes, each with
    /// [`LOOK_AHEAD`] bytes more and the carry, as the applier reads OLD (the reference the
    /// tests and the `refs` fuzz target hold [`Refs::predict_region`] to).
    #[doc(hidden)]
    #[cfg_attr(not(feature = "internals"), allow(dead_code))] // tests, fuzz targets
    pub fn predict_blocks(&self, old: &[u8], old_pos: u64, new_pos: u64, block: usize) -> Vec<u8> {
        let mut scan = Scan::new(old_pos, new_pos);
        let mut out = Vec::with_capacity(old.len());
        let mut carry: Vec<u8> = Vec::new();
        let mut at = 0usize;
        while at < old.len() {
            let emit = block.max(1).min(old.len() - at);
            let look = LOOK_AHEAD.min(old.len() - at - emit);
            let mut buf = old[at..at + emit + look].to_vec();
            buf[..carry.len()].copy_from_slice(&carry);
            self.predict(&mut scan, &mut buf, at as u64, emit);
            out.extend_from_slice(&buf[..emit]);
            carry = buf[emit..].to_vec();
            at += emit;
        }
        out
    }

    /// The predicted OLD bytes of a whole matched region (the diff side's form of
    /// [`Refs::predict`]).
    #[cfg_attr(not(feature = "internals"), allow(dead_code))] // tests, fuzz targets
    pub fn predict_region(&self, old: &[u8], old_pos: u64, new_pos: u64) -> Vec<u8> {
        let mut buf = old.to_vec();
        let mut scan = Scan::new(old_pos, new_pos);
        self.predict(&mut scan, &mut buf, 0, old.len());
        buf
    }

    /// Append the parameters (FORMAT.md section 4.2).
    pub fn encode(&self, out: &mut Vec<u8>) {
        put_varint(out, u64::from(self.kinds));
        for loads in [&self.old_loads, &self.new_loads] {
            put_varint(out, loads.len() as u64);
            for l in loads {
                for v in [l.off, l.vaddr, l.filesz, l.memsz] {
                    put_varint(out, v);
                }
            }
        }
        put_varint(out, self.map.len() as u64);
        let (mut at, mut delta) = (0u64, 0i64);
        for r in &self.map {
            put_varint(out, r.old - at);
            put_svarint(out, r.delta.wrapping_sub(delta));
            at = r.old;
            delta = r.delta;
        }
    }

    /// Read the parameters of a file diffed from a source of `src_len` bytes; `next` yields
    /// the varints of the control stream.
    pub fn decode(mut next: impl FnMut() -> Result<u64>, src_len: u64) -> Result<Refs> {
        let kinds = next()?;
        if kinds == 0 || kinds & !u64::from(KNOWN_REFS) != 0 {
            return Err(Error::Unsupported {
                what: "reference kinds",
                value: kinds,
            });
        }
        let mut loads = |side: &str| -> Result<Vec<Load>> {
            let n = next()?;
            if n > MAX_LOADS as u64 {
                return Err(Error::corrupt(
                    C,
                    format!("{n} {side} load segments (at most {MAX_LOADS})"),
                ));
            }
            (0..n)
                .map(|_| {
                    Ok(Load {
                        off: next()?,
                        vaddr: next()?,
                        filesz: next()?,
                        memsz: next()?,
                    })
                })
                .collect()
        };
        let old_loads = loads("old")?;
        let new_loads = loads("new")?;
        let n = next()?;
        if n > MAX_MAP as u64 {
            return Err(Error::corrupt(
                C,
                format!("a region map of {n} entries (at most {MAX_MAP})"),
            ));
        }
        // Bounded by MAX_MAP (counted in REFS_MEMORY), not by the patch.
        let mut map = Vec::with_capacity(n as usize);
        let (mut at, mut delta) = (0u64, 0i64);
        for i in 0..n {
            let gap = next()?;
            let z = next()?;
            delta = delta.wrapping_add(((z >> 1) as i64) ^ -((z & 1) as i64));
            match at.checked_add(gap) {
                Some(old) if (gap > 0 || i == 0) && old < src_len => {
                    map.push(Region { old, delta });
                    at = old;
                }
                _ => {
                    return Err(Error::corrupt(
                        C,
                        format!(
                            "region map breakpoint {i} is not inside the {src_len}-byte \
                             source or not after the previous one"
                        ),
                    ))
                }
            }
        }
        Ok(Refs {
            kinds: kinds as u8,
            old_loads,
            new_loads,
            map,
        })
    }
}

/// Where the scan of one matched region is: the region's offsets in OLD and NEW, and the next
/// region offset to examine.
#[derive(Clone, Copy, Debug)]
pub struct Scan {
    old: u64,
    new: u64,
    next: u64,
    /// The breakpoint interval of the last reference (a hint only: any value is correct).
    hint: usize,
}

impl Scan {
    /// The scan of a region that starts at `old` in the source and `new` in the file.
    pub fn new(old: u64, new: u64) -> Scan {
        Scan {
            old,
            new,
            next: 0,
            hint: 0,
        }
    }
}

/// Bounds-checked little-endian readers of u16, u32 and u64 at an offset of `b`.
#[allow(clippy::type_complexity)]
fn le_readers(
    b: &[u8],
) -> (
    impl Fn(usize) -> Option<u16> + '_,
    impl Fn(usize) -> Option<u32> + '_,
    impl Fn(usize) -> Option<u64> + '_,
) {
    (
        move |i: usize| {
            Some(u16::from_le_bytes(
                b.get(i..i.checked_add(2)?)?.try_into().ok()?,
            ))
        },
        move |i: usize| {
            Some(u32::from_le_bytes(
                b.get(i..i.checked_add(4)?)?.try_into().ok()?,
            ))
        },
        move |i: usize| {
            Some(u64::from_le_bytes(
                b.get(i..i.checked_add(8)?)?.try_into().ok()?,
            ))
        },
    )
}

/// The load segments of an ELF64 little-endian file (x86-64 or AArch64), with the reference
/// kind of its machine, or `None` when `b` is not one.
pub fn elf_loads(b: &[u8]) -> Option<(u8, Vec<Load>)> {
    let (u16_, u32_, u64_) = le_readers(b);
    if b.get(..6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    let kind = match u16_(18)? {
        62 => REFS_X86,
        183 => REFS_ARM64,
        _ => return None,
    };
    let (phoff, phentsize, phnum) = (u64_(32)? as usize, u16_(54)? as usize, u16_(56)?);
    let mut loads = Vec::new();
    for k in 0..usize::from(phnum) {
        let h = phoff.checked_add(k.checked_mul(phentsize)?)?;
        if u32_(h)? == 1 && loads.len() < MAX_LOADS {
            loads.push(Load {
                off: u64_(h + 8)?,
                vaddr: u64_(h + 16)?,
                filesz: u64_(h + 32)?,
                memsz: u64_(h + 40)?,
            });
        }
    }
    Some((kind, loads))
}

/// The sections of a PE32+ file (x86-64 or ARM64) as load segments at their virtual
/// addresses (image base + RVA), with the reference kind of its machine.
pub fn pe_loads(b: &[u8]) -> Option<(u8, Vec<Load>)> {
    let (u16_, u32_, u64_) = le_readers(b);
    if b.get(..2)? != b"MZ" {
        return None;
    }
    let pe = u32_(0x3C)? as usize;
    if b.get(pe..pe + 4)? != b"PE\0\0" {
        return None;
    }
    let kind = match u16_(pe + 4)? {
        0x8664 => REFS_X86,
        0xAA64 => REFS_ARM64,
        _ => return None,
    };
    let nsec = usize::from(u16_(pe + 6)?);
    let opt = pe + 24;
    if u16_(opt)? != 0x20B {
        return None;
    }
    let base = u64_(opt + 24)?;
    let sec = opt + usize::from(u16_(pe + 20)?);
    let mut loads = Vec::new();
    for k in 0..nsec.min(MAX_LOADS) {
        let h = sec + 40 * k;
        let (vsize, rva, rawsize, rawoff) =
            (u32_(h + 8)?, u32_(h + 12)?, u32_(h + 16)?, u32_(h + 20)?);
        // Raw data past the virtual size is padding, not mapped.
        let filesz = if vsize == 0 {
            rawsize
        } else {
            rawsize.min(vsize)
        };
        loads.push(Load {
            off: u64::from(rawoff),
            vaddr: base.wrapping_add(u64::from(rva)),
            filesz: u64::from(filesz),
            memsz: u64::from(vsize.max(filesz)),
        });
    }
    Some((kind, loads))
}

#[cfg(test)]
mod tests {

    /// The plain form of [`super::x86_ref`], kept as its oracle.
    fn x86_ref_naive(b: &[u8]) -> Option<(usize, usize)> {
        let at = |k: usize| b.get(k).copied();
        let found = match (at(0)?, at(1)) {
            // call, jmp rel32
            (0xE8 | 0xE9, _) => Some((1, 5)),
            // jcc rel32
            (0x0F, Some(0x80..=0x8F)) => Some((2, 6)),
            _ => None,
        };
        if let Some((oo, ie)) = found {
            return (ie <= b.len()).then_some((oo, ie));
        }
        // [prefix] [REX] opcode ModRM disp32 [imm] with ModRM mod=00 rm=101: RIP-relative.
        let mut i = 0;
        let mut op16 = false;
        if let Some(p @ (0x66 | 0xF2 | 0xF3)) = at(0) {
            op16 = p == 0x66;
            i = 1;
        }
        let mut wide = false;
        if let Some(r @ 0x40..=0x4F) = at(i) {
            wide = r & 8 != 0;
            i += 1;
        }
        let imm = match at(i)? {
            0x0F => {
                i += 1;
                match at(i)? {
                    0x10..=0x17
                    | 0x28..=0x2F
                    | 0x51..=0x5F
                    | 0x6E
                    | 0x6F
                    | 0x7E
                    | 0x7F
                    | 0xAF
                    | 0xB6
                    | 0xB7
                    | 0xBE
                    | 0xBF
                    | 0xD6
                    | 0xE7
                    | 0xEF => 0,
                    _ => return None,
                }
            }
            0x01
            | 0x03
            | 0x09
            | 0x0B
            | 0x11
            | 0x13
            | 0x19
            | 0x1B
            | 0x21
            | 0x23
            | 0x29
            | 0x2B
            | 0x31
            | 0x33
            | 0x39
            | 0x3B
            | 0x63
            | 0x84..=0x8B
            | 0x8D
            | 0xFF => 0,
            0x80 | 0x83 | 0xC6 => 1,
            0x81 | 0xC7 if op16 && !wide => 2,
            0x81 | 0xC7 => 4,
            _ => return None,
        };
        let modrm = at(i + 1)?;
        if modrm & 0xC7 != 0x05 {
            return None;
        }
        let (oo, ie) = (i + 2, i + 6 + imm);
        (ie <= b.len()).then_some((oo, ie))
    }

    use super::*;

    fn refs(kinds: u8) -> Refs {
        let id = |len| Load {
            off: 0,
            vaddr: 0x1000,
            filesz: len,
            memsz: len + 64,
        };
        Refs {
            kinds,
            old_loads: vec![id(200)],
            new_loads: vec![id(216)],
            // 0..100 stays, 100..200 moved up by 16 bytes.
            map: vec![
                Region { old: 0, delta: 0 },
                Region {
                    old: 100,
                    delta: 16,
                },
            ],
        }
    }

    #[test]
    fn predicts_a_call_across_an_insertion() {
        let r = refs(REFS_X86);
        // call at old 10 to old 150 (vaddr 0x1096): rel = 150 - 15.
        let mut old = [0x90u8; 200];
        old[10] = 0xE8;
        old[11..15].copy_from_slice(&(135i32).to_le_bytes());
        let pred = r.predict_region(&old[..100], 0, 0);
        assert_eq!(rd32(&pred, 11), 151);
        // Block-wise with carries gives the same bytes.
        for block in 1..20 {
            assert_eq!(
                r.predict_blocks(&old[..100], 0, 0, block),
                pred,
                "block {block}"
            );
        }
    }

    #[test]
    fn shortcuts_agree_with_the_plain_scan() {
        // Code-like bytes (rich in branch opcodes, 0F escapes, RIP-relative ModRM bytes and
        // words that point into the loads) predicted with and without the shortcuts, whole
        // and in blocks, for every kind set.
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        let mut rnd = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let pick = [
            0xE8, 0xE9, 0x0F, 0x85, 0x05, 0x0D, 0x48, 0x8B, 0x8D, 0x66, 0x00, 0x10,
        ];
        for round in 0..400 {
            let len = 1 + (rnd() % 200) as usize;
            let mut old: Vec<u8> = (0..len)
                .map(|_| match rnd() % 4 {
                    0 => rnd() as u8,
                    _ => pick[(rnd() % pick.len() as u64) as usize],
                })
                .collect();
            for k in (0..len.saturating_sub(8)).step_by(8) {
                if rnd() % 5 == 0 {
                    let v = 0x1000 + rnd() % 300;
                    old[k..k + 8].copy_from_slice(&v.to_le_bytes());
                }
            }
            for kinds in 1..=KNOWN_REFS {
                let r = refs(kinds);
                let from = rnd() % 3;
                let plain = {
                    let mut buf = old.clone();
                    r.predict_with(&mut Scan::new(from, 0), &mut buf, 0, len, false);
                    buf
                };
                assert_eq!(
                    r.predict_region(&old, from, 0),
                    plain,
                    "round {round} {kinds}"
                );
                let block = 1 + (rnd() % 40) as usize;
                assert_eq!(
                    r.predict_blocks(&old, from, 0, block),
                    plain,
                    "round {round}"
                );
            }
        }
    }

    #[test]
    fn x86_table_agrees_with_the_plain_decoder() {
        // Every first two bytes, then every third byte under interesting prefixes, with tails
        // of every length: the table form must agree with the plain one everywhere.
        let interesting: Vec<u8> = (0u8..=255)
            .filter(|&b| X86_START[b as usize] || b & 0xC7 == 0x05 || (0x80..=0x8F).contains(&b))
            .collect();
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut rnd = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        };
        let mut buf = [0u8; 14];
        for a in 0..=255u8 {
            for b in 0..=255u8 {
                for len in 0..=14 {
                    buf[0] = a;
                    buf[1] = b;
                    for x in &mut buf[2..] {
                        *x = rnd();
                    }
                    let s = &buf[..len];
                    assert_eq!(x86_ref(s), x86_ref_naive(s), "{s:02x?}");
                }
                for &c in interesting.iter().filter(|_| X86_START[a as usize]) {
                    for &d in &interesting[..8] {
                        buf[..4].copy_from_slice(&[a, b, c, d]);
                        for len in 3..=14 {
                            let s = &buf[..len];
                            assert_eq!(x86_ref(s), x86_ref_naive(s), "{s:02x?}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn lookup_with_any_hint_agrees_with_the_search() {
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut rnd = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for n in 0..12 {
            let mut old = 0;
            let map: Vec<Region> = (0..n)
                .map(|k| {
                    old += 1 + rnd() % 50;
                    Region {
                        old,
                        delta: k as i64 * 7 - 20,
                    }
                })
                .collect();
            let r = Refs {
                kinds: REFS_X86,
                map,
                ..Refs::default()
            };
            let mut hint = 0;
            for _ in 0..2_000 {
                let o = rnd() % (old + 60);
                if rnd() % 4 == 0 {
                    hint = (rnd() % 16) as usize;
                }
                assert_eq!(r.lookup_near(o, &mut hint), r.lookup(o), "{o} {:?}", r.map);
            }
        }
    }

    #[test]
    fn trigger_search_agrees_with_the_table() {
        // Every byte value at every position of a word and its neighbours, over backgrounds
        // that provoke the zero-byte test's borrows (zeros, ones, pattern-adjacent values).
        let plain = |b: &[u8], from: usize| {
            (from..b.len())
                .find(|&k| X86_TRIGGER[b[k] as usize])
                .unwrap_or(b.len())
        };
        for bg in [0x00u8, 0x01, 0x04, 0x06, 0xE7, 0xEA, 0x0E, 0x10, 0x90] {
            for t in 0..=255u8 {
                for at in 0..19 {
                    for len in [at + 1, 19, 24] {
                        let mut b = vec![bg; len];
                        b[at] = t;
                        for from in [0, 1, 3, at.min(len - 1)] {
                            assert_eq!(next_trigger(&b, from), plain(&b, from), "{b:02x?} {from}");
                        }
                    }
                }
            }
        }
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        for _ in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let b: Vec<u8> = (0..(seed % 40) as usize)
                .map(|k| [0u8, 1, 0xE8, 0x05, 0x90, 0x0F][(seed >> (k % 60)) as usize % 6])
                .collect();
            let from = (seed >> 40) as usize % (b.len() + 1);
            assert_eq!(next_trigger(&b, from), plain(&b, from), "{b:02x?} {from}");
        }
    }

    #[test]
    fn x86_operands() {
        let d = [0x11u8, 0x22, 0x33, 0x44];
        let ins = |pre: &[u8], post: &[u8]| [pre, &d[..], post].concat();
        // call, jcc, lea rax,[rip+d], mov [rip+d],imm32, cmp byte [rip+d],imm8,
        // movss xmm0,[rip+d], mov word [rip+d],imm16, movzx eax,byte [rip+d].
        assert_eq!(x86_ref(&ins(b"\xe8", b"")), Some((1, 5)));
        assert_eq!(x86_ref(&ins(b"\x0f\x84", b"")), Some((2, 6)));
        assert_eq!(x86_ref(&ins(b"\x48\x8d\x05", b"")), Some((3, 7)));
        assert_eq!(x86_ref(&ins(b"\xc7\x05", b"\x01\0\0\0")), Some((2, 10)));
        assert_eq!(x86_ref(&ins(b"\x80\x3d", b"\x01")), Some((2, 7)));
        assert_eq!(x86_ref(&ins(b"\xf3\x0f\x10\x05", b"")), Some((4, 8)));
        assert_eq!(x86_ref(&ins(b"\x66\xc7\x05", b"\x01\0")), Some((3, 9)));
        assert_eq!(
            x86_ref(&ins(b"\x66\x48\xc7\x05", b"\x01\0\0\0")),
            Some((4, 12))
        );
        assert_eq!(x86_ref(&ins(b"\x0f\xb6\x05", b"")), Some((3, 7)));
        // Not RIP-relative (mod=01), unknown opcode, and cut short.
        assert_eq!(x86_ref(&ins(b"\x48\x8d\x45", b"")), None);
        assert_eq!(x86_ref(&ins(b"\x48\x0f\x05", b"")), None);
        assert_eq!(x86_ref(&ins(b"\xc7\x05", b"\x01")), None);
        assert_eq!(x86_ref(b"\xe8\x00"), None);
    }

    #[test]
    fn predicts_pointers_and_bss() {
        let r = refs(REFS_ABS64);
        assert_eq!(r.map_vaddr(0x1000 + 150), Some(0x1000 + 166));
        assert_eq!(r.map_vaddr(0x1000 + 50), Some(0x1000 + 50));
        // bss: relative to the end of the file part.
        assert_eq!(r.map_vaddr(0x1000 + 210), Some(0x1000 + 226));
        assert_eq!(r.map_vaddr(0x1000 + 300), None);
        let mut old = vec![0u8; 32];
        old[8..16].copy_from_slice(&(0x1000u64 + 120).to_le_bytes());
        let pred = r.predict_region(&old, 0, 0);
        assert_eq!(&pred[8..16], &(0x1000u64 + 136).to_le_bytes());
    }

    #[test]
    fn predicts_arm64_branches() {
        let r = refs(REFS_ARM64);
        // bl at old 8 to old 160: imm26 = (160 - 8) / 4.
        let mut old = vec![0u8; 100];
        old[8..12].copy_from_slice(&(0x9400_0000u32 | 38).to_le_bytes());
        let pred = r.predict_region(&old, 0, 0);
        assert_eq!(
            u32::from_le_bytes(pred[8..12].try_into().unwrap()),
            0x9400_0000 | 42
        );
    }

    #[test]
    fn predicts_arm64_adrp_pairs() {
        let r = refs(REFS_ARM64);
        // adrp x3 + add x3, x3 (or ldr x5, [x3]) at old 16, to old 120 (vaddr 0x1078): the
        // same page, low bits 0x78; in NEW the target is at 0x1088, the code did not move.
        let adrp = 0x9000_0003u32;
        for (second, want) in [
            (0x9100_0063u32 | (0x78 << 10), 0x9100_0063u32 | (0x88 << 10)),
            (
                0xF940_0065 | ((0x78 / 8) << 10),
                0xF940_0065 | ((0x88 / 8) << 10),
            ),
        ] {
            let mut old = [0u8; 40];
            old[16..20].copy_from_slice(&adrp.to_le_bytes());
            old[20..24].copy_from_slice(&second.to_le_bytes());
            let pred = r.predict_region(&old, 0, 0);
            assert_eq!(&pred[16..20], &adrp.to_le_bytes());
            assert_eq!(&pred[20..24], &want.to_le_bytes(), "{second:#x}");
        }
        // Another base register: the ADRP alone.
        assert_eq!(arm64_low12(0x9100_0041, 3), None);
        assert_eq!(arm64_low12(0x3DC0_0062 | (3 << 10), 3), Some((48, 16)));
    }

    #[test]
    fn load_tables_of_elf_and_pe() {
        // ELF64 x86-64 with two program headers, one of them PT_LOAD.
        let mut elf = vec![0u8; 64 + 2 * 56];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        elf[18..20].copy_from_slice(&62u16.to_le_bytes());
        elf[32..40].copy_from_slice(&64u64.to_le_bytes());
        elf[54..56].copy_from_slice(&56u16.to_le_bytes());
        elf[56..58].copy_from_slice(&2u16.to_le_bytes());
        let ph = 64 + 56;
        elf[ph..ph + 4].copy_from_slice(&1u32.to_le_bytes());
        for (k, v) in [(8, 0x1000u64), (16, 0x40_1000), (32, 0x500), (40, 0x900)] {
            elf[ph + k..ph + k + 8].copy_from_slice(&v.to_le_bytes());
        }
        let load = |off, vaddr, filesz, memsz| Load {
            off,
            vaddr,
            filesz,
            memsz,
        };
        assert_eq!(
            elf_loads(&elf),
            Some((REFS_X86, vec![load(0x1000, 0x40_1000, 0x500, 0x900)]))
        );
        elf[18] = 183;
        assert_eq!(elf_loads(&elf).unwrap().0, REFS_ARM64);
        assert_eq!(elf_loads(&elf[..100]), None, "program headers cut off");
        // PE32+ x86-64 with two sections; raw data past the virtual size is not mapped.
        let mut pe = vec![0u8; 0x80 + 24 + 240 + 2 * 40];
        pe[..2].copy_from_slice(b"MZ");
        pe[0x3C..0x40].copy_from_slice(&0x80u32.to_le_bytes());
        pe[0x80..0x84].copy_from_slice(b"PE\0\0");
        pe[0x84..0x86].copy_from_slice(&0x8664u16.to_le_bytes());
        pe[0x86..0x88].copy_from_slice(&2u16.to_le_bytes());
        pe[0x94..0x96].copy_from_slice(&240u16.to_le_bytes());
        let opt = 0x80 + 24;
        pe[opt..opt + 2].copy_from_slice(&0x20Bu16.to_le_bytes());
        pe[opt + 24..opt + 32].copy_from_slice(&0x1_4000_0000u64.to_le_bytes());
        for (k, (vsize, rva, raw, rawoff)) in [
            (0x1234u32, 0x1000u32, 0x1400u32, 0x400u32),
            (0x80, 0x3000, 0x200, 0x1800),
        ]
        .into_iter()
        .enumerate()
        {
            let h = opt + 240 + 40 * k;
            for (i, v) in [(8, vsize), (12, rva), (16, raw), (20, rawoff)] {
                pe[h + i..h + i + 4].copy_from_slice(&v.to_le_bytes());
            }
        }
        assert_eq!(
            pe_loads(&pe),
            Some((
                REFS_X86,
                vec![
                    load(0x400, 0x1_4000_1000, 0x1234, 0x1234),
                    load(0x1800, 0x1_4000_3000, 0x80, 0x80)
                ]
            ))
        );
        assert_eq!(pe_loads(&pe[..0x90]), None);
    }

    #[test]
    fn parameters_round_trip_and_are_checked() {
        let r = refs(REFS_X86 | REFS_ABS64);
        let mut out = Vec::new();
        r.encode(&mut out);
        let read = |bytes: &[u8], src: u64| {
            let mut rd = super::super::Reader::new(bytes, "control stream");
            Refs::decode(|| rd.varint(), src)
        };
        assert_eq!(read(&out, 200).unwrap(), r);
        assert!(read(&out, 100).is_err());
        for cut in 0..out.len() {
            assert!(read(&out[..cut], 200).is_err());
        }
        let mut bad = out.clone();
        bad[0] = 8;
        assert!(matches!(read(&bad, 200), Err(Error::Unsupported { .. })));
        // Breakpoints must increase.
        let mut dup = r.clone();
        dup.map[1].old = 0;
        let mut out = Vec::new();
        dup.encode(&mut out);
        assert!(read(&out, 200).is_err());
    }
}
