//! The diff side of reference prediction (delta transform 1, [`crate::format::Refs`]): which
//! variants to try for a pair of files, their parameters, and the diff stream they give.
//!
//! The region map is the file's matched regions (the diff parts of its controls), sorted by
//! OLD offset with overlaps trimmed; when there are more than [`MAX_MAP`], the longest are
//! kept (a reference into a dropped region is left as it is, not mispredicted: its target has
//! no mapping). Adjacent regions that moved by the same amount are merged.

use crate::format::{elf_loads, pe_loads, Control, Refs, Region, Scan, MAX_MAP};

/// The reference kind of this pair's machine code, when both are ELF64 or both PE32+ files of
/// the same machine. Absolute pointers ([`crate::format::REFS_ABS64`]) are tried on top: they
/// pay on non-PIE executables and can cost a little on shared libraries, whose pointers
/// mostly sit in relocation tables.
pub(super) fn kind(old: &[u8], new: &[u8]) -> Option<u8> {
    match (loads(old), loads(new)) {
        (Some((a, _)), Some((b, _))) if a == b => Some(a),
        _ => None,
    }
}

/// Resolutions of the region map the diff tries (see [`params`]), chosen per file by the
/// estimated size of parameters plus diff stream. Measured (bytes of patch): shared-lib-small
/// 244,081 / 246,417 / 253,934 at 16 / 64 / 256, shared-lib-big 1,823,393 (no gain) /
/// 1,813,561 / 1,790,919 / 1,807,627 at 16 / 64 / 256 / 1024; executables move by 0.1%.
pub(super) const MIN_LENS: [u64; 3] = [16, 128, 1024];

fn loads(b: &[u8]) -> Option<(u8, Vec<crate::format::Load>)> {
    elf_loads(b).or_else(|| pe_loads(b))
}

/// A matched region of a file's controls: `len` bytes at `old` reappear at `new`.
struct Matched {
    old: u64,
    new: u64,
    len: u64,
}

/// The matched regions of a file's controls, in control order.
fn regions(ctrls: &[Control]) -> Vec<Matched> {
    let mut out = Vec::new();
    let (mut o, mut n) = (0i64, 0u64);
    for c in ctrls {
        if c.diff > 0 {
            out.push(Matched {
                old: o as u64,
                new: n,
                len: c.diff,
            });
        }
        o += c.diff as i64 + c.seek;
        n += c.diff + c.extra;
    }
    out
}

/// The parameters of `kinds` for this pair, given the file's final controls: a breakpoint
/// wherever a matched region of at least `min_len` bytes moved by another amount than the
/// one before it (shorter regions cost a breakpoint each and are rarely a reference's
/// target); `min_len` doubles until the map fits [`MAX_MAP`].
pub(super) fn params(kinds: u8, old: &[u8], new: &[u8], ctrls: &[Control], min_len: u64) -> Refs {
    let mut rs = regions(ctrls);
    rs.sort_by_key(|r| (r.old, r.new));
    // Trim overlaps in OLD: a later region starts where the previous one ends.
    let mut trimmed: Vec<Matched> = Vec::with_capacity(rs.len());
    let mut end = 0u64;
    for mut r in rs {
        if r.old < end {
            let cut = end - r.old;
            if cut >= r.len {
                continue;
            }
            r.old += cut;
            r.new += cut;
            r.len -= cut;
        }
        end = r.old + r.len;
        trimmed.push(r);
    }
    let mut min_len = min_len.max(1);
    let map = loop {
        let mut map: Vec<Region> = Vec::new();
        for r in trimmed.iter().filter(|r| r.len >= min_len) {
            let delta = r.new.wrapping_sub(r.old) as i64;
            if map.last().is_none_or(|b| b.delta != delta) {
                map.push(Region { old: r.old, delta });
            }
        }
        if map.len() <= MAX_MAP {
            break map;
        }
        min_len *= 2;
    };
    let lo = |b: &[u8]| loads(b).map(|l| l.1).unwrap_or_default();
    Refs {
        kinds,
        old_loads: lo(old),
        new_loads: lo(new),
        map,
    }
}

/// The diff stream of the controls with `refs`' prediction: `new - predicted` over every
/// matched region, in control order.
pub(super) fn predicted_diff(refs: &Refs, old: &[u8], new: &[u8], ctrls: &[Control]) -> Vec<u8> {
    let mut out = Vec::with_capacity(ctrls.iter().map(|c| c.diff as usize).sum());
    for r in regions(ctrls) {
        let (o, n, l) = (r.old as usize, r.new as usize, r.len as usize);
        // Predict in place in the output (no buffer per region), then take NEW minus it.
        let at = out.len();
        out.extend_from_slice(&old[o..o + l]);
        let mut scan = Scan::new(r.old, r.new);
        refs.predict(&mut scan, &mut out[at..], 0, l);
        for (d, x) in out[at..].iter_mut().zip(&new[n..n + l]) {
            *d = x.wrapping_sub(*d);
        }
    }
    out
}
