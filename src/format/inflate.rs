//! Transform 2, *inflate* (minor 4, FORMAT.md section 4.3): a `modify` whose source and target
//! are deflate containers (gzip and zip files) is diffed between their *expanded* forms, where
//! every deflate stream stands as the bytes it inflates to, and the target's streams are
//! made again on apply by the encoder setting that made them (stock zlib, miniz_oxide) or
//! from their token structure (minor 5).
//!
//! Why: one changed line re-encodes a whole deflate stream after it, so two compressed files
//! share almost no bytes even when their contents do (a patch of 91% of an npm tarball where
//! the unpacked trees differ by under 0.01%). Expanded, they share what their contents share.
//!
//! This module holds the two *recipes* that a transform-2 file's controls start with: how to
//! expand the source ([`OldSeg`]) and how to build the target from its expanded form
//! ([`NewSeg`]), with every number checked as it is read. Since minor 6 they cost little for
//! an archive of many entries: the source's streams are found by inflating them (kind 3), and
//! the target's unchanged entries are copy runs of the source's segments (kind 4), so that a
//! jar of 7,053 streams needs no lengths for the ones that did not change.

use crate::codec::zlib::{DeflateParams, DEFLATE_MEMORY, FEED, INFLATE_MEMORY};
use crate::error::{Error, Result};

/// Delta transform 2: the file's source and target are diffed in expanded form (section 4.3).
pub const TRANSFORM_INFLATE: u8 = 2;

/// Most segments in one recipe. A target recipe is held in memory while its file is made:
/// `INFLATE_RECIPE_BYTES` per segment. Writers keep further deflate streams as they are.
pub const MAX_SEGMENTS: usize = 1 << 14;

/// Bytes of memory one held target segment takes.
pub const INFLATE_RECIPE_BYTES: u64 = 32;

/// Largest ratio of plain to compressed bytes deflate can reach is 1032:1 (a 258-byte match
/// per 2 bits, and the block overhead): a source segment that claims more is corrupt.
pub const MAX_RATIO: u64 = 1032;

/// Bytes of memory one held source segment takes: the source recipe is held while the
/// target recipe, whose copy runs (kind 4, minor 6) name source segments, is read.
pub const INFLATE_SOURCE_BYTES: u64 = 32;
const _: () = assert!(std::mem::size_of::<OldSeg>() as u64 <= INFLATE_SOURCE_BYTES);

/// Heap the applier sets aside with header flag [`super::FLAG_INFLATE`]: one held target
/// recipe and, while it is read, the source recipe (minor 6), one inflater, one deflater with
/// its input piece and output buffer (or, instead of the deflater, a token encoder with its
/// buffers, which takes less).
pub const INFLATE_MEMORY_TOTAL: u64 = MAX_SEGMENTS as u64 * INFLATE_RECIPE_BYTES
    + MAX_SEGMENTS as u64 * INFLATE_SOURCE_BYTES
    + INFLATE_MEMORY
    + DEFLATE_MEMORY
    + FEED as u64
    + (16 << 10);

/// A piece of the source as it is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OldSeg {
    /// A raw deflate stream whose lengths the reader learns by inflating it (kind 3, minor 6):
    /// it ends with its final block, rounded up to a byte, within the source, and inflates to
    /// at most [`MAX_RATIO`] times its length. An applier holds it, once inflated, as the
    /// [`OldSeg::Deflate`] it found; a writer gives [`put_old`] that [`OldSeg::Deflate`], and
    /// [`put_old`] writes this kind for it.
    Inflate,
    /// `before` bytes as they are, then a zip local file header (kind 4, minor 6), whose
    /// length `header` the reader learns from its bytes: `30 + name length + extra length`
    /// (the little-endian `u16`s at its offsets 26 and 28), after its signature `50 4B 03 04`.
    /// Expanded as they are. A writer gives the header's length, a reader 0 until it has read
    /// it; an applier holds it, once read, as the [`OldSeg::Raw`] of `before + header` bytes.
    Header {
        /// Bytes before the header (a data descriptor, a stored entry...).
        before: u64,
        /// The header's length.
        header: u64,
    },
    /// `len` bytes that stand for themselves in the expanded form.
    Raw(u64),
    /// A raw deflate stream of `comp` bytes that inflates to exactly `plain` bytes.
    Deflate {
        /// Compressed bytes (up to the end of its final block, rounded up to a byte).
        comp: u64,
        /// Plain bytes.
        plain: u64,
    },
    /// A raw deflate stream of `comp` bytes whose token structure (section 4.3.1) takes
    /// `structure` bytes and which inflates to `plain` bytes: expanded as its structure, then
    /// its plain bytes (minor 5).
    Tokens {
        /// Compressed bytes.
        comp: u64,
        /// Plain bytes.
        plain: u64,
        /// Structure bytes.
        structure: u64,
    },
}

/// A piece of the target, made from its expanded form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NewSeg {
    /// `len` expanded bytes written as they are.
    Raw(u64),
    /// `plain` expanded bytes deflated with `params` into exactly `comp` bytes.
    Deflate {
        /// Plain bytes taken from the expanded form.
        plain: u64,
        /// Compressed bytes written.
        comp: u64,
        /// zlib parameters.
        params: DeflateParams,
    },
    /// `plain` expanded bytes compressed by miniz_oxide at `level` into exactly `comp` bytes
    /// (minor 5).
    Miniz {
        /// Plain bytes taken from the expanded form.
        plain: u64,
        /// Compressed bytes written.
        comp: u64,
        /// miniz level, 0..=10.
        level: u8,
    },
    /// `structure` expanded bytes, the token structure of a deflate stream (section 4.3.1),
    /// then `plain` expanded bytes: encoded together into exactly `comp` bytes (minor 5).
    Tokens {
        /// Structure bytes taken from the expanded form.
        structure: u64,
        /// Plain bytes taken from the expanded form.
        plain: u64,
        /// Compressed bytes written.
        comp: u64,
    },
}

/// Most structure bytes per compressed byte: a structure item is at most 14 bytes and codes
/// at least one bit; a stored block's 3 structure bytes stand for at least 5 compressed ones,
/// and a dynamic header's symbols take at least one bit each.
pub const MAX_STRUCTURE_RATIO: u64 = 8 * 14;

const C: &str = "control stream";

fn count(next: &mut impl FnMut() -> Result<u64>, what: &str) -> Result<usize> {
    let n = next()?;
    if n == 0 || n > MAX_SEGMENTS as u64 {
        return Err(Error::corrupt(
            C,
            format!("{what} recipe of {n} segments (1..={MAX_SEGMENTS})"),
        ));
    }
    Ok(n as usize)
}

fn nonzero(v: u64, what: &str) -> Result<u64> {
    if v == 0 {
        return Err(Error::corrupt(C, format!("an empty {what} segment")));
    }
    Ok(v)
}

/// Refuse a token segment whose plain or structure length no `comp`-byte stream has.
fn bounds(comp: u64, plain: u64, structure: u64) -> Result<()> {
    if plain > comp.saturating_mul(MAX_RATIO)
        || structure > comp.saturating_mul(MAX_STRUCTURE_RATIO)
    {
        return Err(Error::corrupt(
            C,
            format!(
                "a {comp}-byte deflate stream said to hold {plain} plain and {structure} \
                 structure bytes"
            ),
        ));
    }
    Ok(())
}

/// zlib's four parameters of a deflate segment or copy run.
fn read_params(next: &mut impl FnMut() -> Result<u64>) -> Result<DeflateParams> {
    let mut field = |what: &'static str| -> Result<u8> {
        let v = next()?;
        u8::try_from(v).map_err(|_| Error::Unsupported { what, value: v })
    };
    let params = DeflateParams {
        level: field("deflate level")?,
        window_bits: field("deflate window")?,
        mem_level: field("deflate memory level")?,
        strategy: field("deflate strategy")?,
    };
    if !params.valid() {
        return Err(Error::Unsupported {
            what: "deflate parameters",
            value: u64::from_le_bytes([
                params.level,
                params.window_bits,
                params.mem_level,
                params.strategy,
                0,
                0,
                0,
                0,
            ]),
        });
    }
    Ok(params)
}

/// The level of a miniz segment or copy run.
fn read_miniz_level(next: &mut impl FnMut() -> Result<u64>) -> Result<u8> {
    let level = next()?;
    if level > u64::from(crate::codec::zlib::MINIZ_MAX_LEVEL) {
        return Err(Error::Unsupported {
            what: "miniz level",
            value: level,
        });
    }
    Ok(level as u8)
}

/// Read one source segment (the caller reads the count with [`read_old_count`]).
pub fn read_old_seg(next: &mut impl FnMut() -> Result<u64>) -> Result<OldSeg> {
    match next()? {
        0 => Ok(OldSeg::Raw(nonzero(next()?, "raw")?)),
        1 => {
            let comp = nonzero(next()?, "deflate")?;
            let plain = next()?;
            if plain > comp.saturating_mul(MAX_RATIO) {
                return Err(Error::corrupt(
                    C,
                    format!("a {comp}-byte deflate stream said to inflate to {plain} bytes"),
                ));
            }
            Ok(OldSeg::Deflate { comp, plain })
        }
        2 => {
            let comp = nonzero(next()?, "token")?;
            let plain = next()?;
            let structure = next()?;
            bounds(comp, plain, structure)?;
            Ok(OldSeg::Tokens {
                comp,
                plain,
                structure,
            })
        }
        3 => Ok(OldSeg::Inflate),
        4 => Ok(OldSeg::Header {
            before: next()?,
            header: 0,
        }),
        k => Err(Error::Unsupported {
            what: "source segment kind",
            value: k,
        }),
    }
}

/// Read the segment count of a source recipe.
pub fn read_old_count(next: &mut impl FnMut() -> Result<u64>) -> Result<usize> {
    count(next, "source")
}

/// A target recipe: its segments, the expanded length they take and the file length they make.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NewRecipe {
    /// The segments, in file order.
    pub segs: Vec<NewSeg>,
    /// Sum of raw and plain lengths: what the controls must produce.
    pub expanded: u64,
    /// Sum of raw and compressed lengths: the file's size.
    pub size: u64,
    /// Whether every segment's lengths are known: `false` only when a copy run names a
    /// source stream not inflated yet ([`OldSeg::Inflate`]: a reader that walks the control
    /// stream without the source), whose segments then have lengths 0 and whose `expanded`
    /// is the recipe's stated one.
    pub known: bool,
}

impl NewRecipe {
    /// Read a target recipe, checking that it makes a file of `size` bytes and that the
    /// expanded length it states, if any, is the one its segments take. `source` is the
    /// file's source recipe, whose segments copy runs (kind 4, minor 6) name.
    pub fn read(
        next: &mut impl FnMut() -> Result<u64>,
        size: u64,
        source: &[OldSeg],
    ) -> Result<NewRecipe> {
        // A count of 0 (which minor 5 refuses) introduces the stated expanded length (minor 6).
        let (stated, n) = match next()? {
            0 => (Some(next()?), count(next, "target")?),
            n => (None, count(&mut || Ok(n), "target")?),
        };
        let mut known = true;
        // Bounded by MAX_SEGMENTS (the memory set aside for it), not by the patch.
        let mut segs: Vec<NewSeg> = Vec::with_capacity(n);
        let (mut expanded, mut made) = (0u64, 0u64);
        let over = || Error::corrupt(C, "target recipe lengths overflow");
        let mut add = |segs: &mut Vec<NewSeg>, seg: NewSeg, lengths: bool| -> Result<()> {
            if segs.len() == MAX_SEGMENTS {
                return Err(Error::corrupt(
                    C,
                    format!("a target recipe of more than {MAX_SEGMENTS} segments"),
                ));
            }
            if segs.len() == segs.capacity() {
                // Runs grow the list past its item count: never past MAX_SEGMENTS, the
                // memory set aside (a doubling could take it to twice that).
                let more = segs.capacity().max(1).min(MAX_SEGMENTS - segs.len());
                segs.reserve_exact(more);
            }
            let (e, m) = match seg {
                NewSeg::Raw(n) => (n, n),
                NewSeg::Deflate { plain, comp, .. } | NewSeg::Miniz { plain, comp, .. } => {
                    (plain, comp)
                }
                NewSeg::Tokens {
                    structure,
                    plain,
                    comp,
                } => (structure.checked_add(plain).ok_or_else(over)?, comp),
            };
            if lengths {
                expanded = expanded.checked_add(e).ok_or_else(over)?;
                made = made.checked_add(m).ok_or_else(over)?;
            }
            segs.push(seg);
            Ok(())
        };
        for _ in 0..n {
            let seg = match next()? {
                0 => NewSeg::Raw(nonzero(next()?, "raw")?),
                1 => {
                    let plain = next()?;
                    let comp = nonzero(next()?, "deflate")?;
                    NewSeg::Deflate {
                        plain,
                        comp,
                        params: read_params(next)?,
                    }
                }
                2 => {
                    let structure = next()?;
                    let plain = next()?;
                    let comp = nonzero(next()?, "token")?;
                    bounds(comp, plain, structure)?;
                    NewSeg::Tokens {
                        structure,
                        plain,
                        comp,
                    }
                }
                3 => {
                    let plain = next()?;
                    let comp = nonzero(next()?, "miniz")?;
                    bounds(comp, plain, 0)?;
                    NewSeg::Miniz {
                        plain,
                        comp,
                        level: read_miniz_level(next)?,
                    }
                }
                4 => {
                    // A copy run: `count` segments shaped as the source's from `from`, each
                    // stream made by one maker.
                    let from = next()?;
                    let count = next()?;
                    let Some(end) = from
                        .checked_add(count)
                        .filter(|&e| count >= 1 && e <= source.len() as u64)
                    else {
                        return Err(Error::corrupt(
                            C,
                            format!(
                                "a copy run of {count} segments from source segment {from} \
                                 (the source has {})",
                                source.len()
                            ),
                        ));
                    };
                    let maker = match next()? {
                        1 => Maker::Zlib(read_params(next)?),
                        3 => Maker::Miniz(read_miniz_level(next)?),
                        k => {
                            return Err(Error::Unsupported {
                                what: "copy run maker kind",
                                value: k,
                            })
                        }
                    };
                    for s in &source[from as usize..end as usize] {
                        let stream = |comp, plain| match maker {
                            Maker::Zlib(params) => NewSeg::Deflate {
                                plain,
                                comp,
                                params,
                            },
                            Maker::Miniz(level) => NewSeg::Miniz { plain, comp, level },
                        };
                        let (seg, lengths) = match *s {
                            OldSeg::Raw(n) => (NewSeg::Raw(n), true),
                            // Not read yet: a raw segment of unknown length.
                            OldSeg::Header { .. } => (NewSeg::Raw(0), false),
                            OldSeg::Deflate { comp, plain }
                            | OldSeg::Tokens { comp, plain, .. } => (stream(comp, plain), true),
                            OldSeg::Inflate => (stream(0, 0), false),
                        };
                        known &= lengths;
                        add(&mut segs, seg, lengths)?;
                    }
                    continue;
                }
                k => {
                    return Err(Error::Unsupported {
                        what: "target segment kind",
                        value: k,
                    })
                }
            };
            add(&mut segs, seg, true)?;
        }
        if !known {
            // Only the expanded length it states can be checked: the applier, which inflates
            // the source first, checks the rest.
            let Some(e) = stated else {
                return Err(Error::corrupt(
                    C,
                    "a copy run names a source stream not inflated, and the target recipe \
                     states no expanded length",
                ));
            };
            expanded = e;
        } else if made != size {
            return Err(Error::corrupt(
                C,
                format!("target recipe makes {made} bytes, the file has {size}"),
            ));
        } else if stated.is_some_and(|e| e != expanded) {
            return Err(Error::corrupt(
                C,
                format!(
                    "the target recipe states {} expanded bytes, its segments take {expanded}",
                    stated.unwrap_or(0)
                ),
            ));
        }
        Ok(NewRecipe {
            segs,
            expanded,
            size,
            known,
        })
    }
}

/// The encoder of a copy run's streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Maker {
    Zlib(DeflateParams),
    Miniz(u8),
}

/// Write a source recipe (the encoder's side of [`read_old_seg`]). Every
/// [`OldSeg::Deflate`] is written as kind 3 (its lengths are found again by inflating it), so
/// a writer gives only streams that end with their final block exactly where their `comp`
/// says.
pub fn put_old(out: &mut Vec<u8>, segs: &[OldSeg]) {
    use super::put_varint;
    put_varint(out, segs.len() as u64);
    for s in segs {
        match *s {
            OldSeg::Raw(n) => {
                put_varint(out, 0);
                put_varint(out, n);
            }
            // The stream's lengths are found again by inflating it (kind 3).
            OldSeg::Deflate { .. } | OldSeg::Inflate => put_varint(out, 3),
            // The header's length is read from the source (kind 4).
            OldSeg::Header { before, .. } => {
                put_varint(out, 4);
                put_varint(out, before);
            }
            OldSeg::Tokens {
                comp,
                plain,
                structure,
            } => {
                for v in [2, comp, plain, structure] {
                    put_varint(out, v);
                }
            }
        }
    }
}

/// What a target segment must match in the source to join a copy run, and its maker.
fn shape(seg: &NewSeg) -> Option<((bool, u64, u64), Option<Maker>)> {
    match *seg {
        NewSeg::Raw(n) => Some(((false, n, 0), None)),
        NewSeg::Deflate {
            plain,
            comp,
            params,
        } => Some(((true, comp, plain), Some(Maker::Zlib(params)))),
        NewSeg::Miniz { plain, comp, level } => {
            Some(((true, comp, plain), Some(Maker::Miniz(level))))
        }
        NewSeg::Tokens { .. } => None,
    }
}

fn old_shape(seg: &OldSeg) -> (bool, u64, u64) {
    match *seg {
        OldSeg::Raw(n) => (false, n, 0),
        OldSeg::Deflate { comp, plain } | OldSeg::Tokens { comp, plain, .. } => (true, comp, plain),
        // A writer knows its streams' lengths: never matched.
        OldSeg::Inflate => (true, u64::MAX, u64::MAX),
        OldSeg::Header { before, header } => (false, before.saturating_add(header), 0),
    }
}

/// Write a target recipe (the encoder's side of [`NewRecipe::read`]), as copy runs of
/// `source`'s segments where two or more in a row have the same lengths (an archive's
/// unchanged entries: their headers and streams), one maker for the run's streams.
pub fn put_new(out: &mut Vec<u8>, segs: &[NewSeg], source: &[OldSeg]) {
    use super::put_varint;
    use std::collections::HashMap;
    // Where each shape occurs in the source, in order.
    let mut at: HashMap<(bool, u64, u64), Vec<usize>> = HashMap::new();
    for (j, s) in source.iter().enumerate() {
        at.entry(old_shape(s)).or_default().push(j);
    }
    // The run that starts with target segment `i` at source segment `j`: its length and maker.
    let run_at = |i: usize, j: usize| -> (usize, Option<Maker>) {
        let (mut len, mut maker) = (0, None);
        while let (Some(n), Some(o)) = (segs.get(i + len), source.get(j + len)) {
            match shape(n) {
                Some((k, m))
                    if old_shape(o) == k && (m.is_none() || maker.is_none() || m == maker) =>
                {
                    maker = maker.or(m);
                    len += 1;
                }
                _ => break,
            }
        }
        (len, maker)
    };
    let mut items: Vec<u8> = Vec::new();
    let mut n_items = 0u64;
    let (mut i, mut next_src) = (0, 0);
    while i < segs.len() {
        // Where to start: the first four fitting places from where the last run ended, and
        // the first in the source; the longest run (the first on a tie), if two or more long.
        let start = shape(&segs[i]).and_then(|(k, _)| {
            let v = at.get(&k)?;
            let after = v.partition_point(|&j| j < next_src);
            v[after..v.len().min(after + 4)]
                .iter()
                .chain(v.first())
                .map(|&j| (j, run_at(i, j)))
                .fold(
                    None,
                    |best: Option<(usize, (usize, Option<Maker>))>, c| match best {
                        Some(b) if b.1 .0 >= c.1 .0 => Some(b),
                        _ => Some(c),
                    },
                )
                .filter(|(_, (len, _))| *len >= 2)
        });
        n_items += 1;
        if let Some((j, (len, maker))) = start {
            for v in [4, j as u64, len as u64] {
                put_varint(&mut items, v);
            }
            match maker.unwrap_or(Maker::Zlib(DeflateParams::DEFAULT)) {
                Maker::Zlib(p) => {
                    put_varint(&mut items, 1);
                    put_params(&mut items, p);
                }
                Maker::Miniz(level) => {
                    put_varint(&mut items, 3);
                    put_varint(&mut items, level.into());
                }
            }
            i += len;
            next_src = j + len;
            continue;
        }
        match segs[i] {
            NewSeg::Raw(n) => {
                put_varint(&mut items, 0);
                put_varint(&mut items, n);
            }
            NewSeg::Deflate {
                plain,
                comp,
                params,
            } => {
                put_varint(&mut items, 1);
                put_varint(&mut items, plain);
                put_varint(&mut items, comp);
                put_params(&mut items, params);
            }
            NewSeg::Tokens {
                structure,
                plain,
                comp,
            } => {
                for v in [2, structure, plain, comp] {
                    put_varint(&mut items, v);
                }
            }
            NewSeg::Miniz { plain, comp, level } => {
                for v in [3, plain, comp, level.into()] {
                    put_varint(&mut items, v);
                }
            }
        }
        i += 1;
    }
    // The expanded length first (a reader without the source cannot add it up).
    let expanded: u64 = segs
        .iter()
        .map(|s| match *s {
            NewSeg::Raw(n) => n,
            NewSeg::Deflate { plain, .. } | NewSeg::Miniz { plain, .. } => plain,
            NewSeg::Tokens {
                structure, plain, ..
            } => structure + plain,
        })
        .sum();
    put_varint(out, 0);
    put_varint(out, expanded);
    put_varint(out, n_items);
    out.extend_from_slice(&items);
}

fn put_params(out: &mut Vec<u8>, p: DeflateParams) {
    for v in [p.level, p.window_bits, p.mem_level, p.strategy] {
        super::put_varint(out, v.into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::Reader;

    fn reader(b: &[u8]) -> impl FnMut() -> Result<u64> + '_ {
        let mut r = Reader::new(b, C);
        move || r.varint()
    }

    #[test]
    fn recipes_round_trip() {
        let old = [
            OldSeg::Raw(10),
            OldSeg::Deflate {
                comp: 100,
                plain: 5000,
            },
            OldSeg::Raw(8),
            OldSeg::Tokens {
                comp: 50,
                plain: 900,
                structure: 300,
            },
        ];
        let mut b = Vec::new();
        put_old(&mut b, &old);
        let mut next = reader(&b);
        let n = read_old_count(&mut next).unwrap();
        let back: Vec<_> = (0..n).map(|_| read_old_seg(&mut next).unwrap()).collect();
        // A stream's lengths are found again by inflating it (kind 3), a zip header's by
        // reading it (kind 4): the reader learns them from the source, not from the recipe.
        let mut want = old.to_vec();
        want[1] = OldSeg::Inflate;
        assert_eq!(back, want);
        let mut b = Vec::new();
        put_old(
            &mut b,
            &[OldSeg::Header {
                before: 16,
                header: 75,
            }],
        );
        assert_eq!(b, [1, 4, 16]);
        let mut next = reader(&b);
        read_old_count(&mut next).unwrap();
        assert_eq!(
            read_old_seg(&mut next).unwrap(),
            OldSeg::Header {
                before: 16,
                header: 0
            }
        );

        let new = vec![
            NewSeg::Raw(10),
            NewSeg::Deflate {
                plain: 6000,
                comp: 120,
                params: DeflateParams::DEFAULT,
            },
            NewSeg::Raw(8),
            NewSeg::Tokens {
                structure: 300,
                plain: 900,
                comp: 50,
            },
            NewSeg::Miniz {
                plain: 700,
                comp: 70,
                level: 10,
            },
        ];
        let mut b = Vec::new();
        put_new(&mut b, &new, &old);
        // The stated expanded length, then five items: no two segments in a row have the
        // source's lengths, so they are written one by one.
        let mut next = reader(&b);
        assert_eq!(
            (next().unwrap(), next().unwrap(), next().unwrap()),
            (0, 7918, 5)
        );
        let r = NewRecipe::read(&mut reader(&b), 258, &old).unwrap();
        assert_eq!(
            (r.segs, r.expanded, r.size, r.known),
            (new.clone(), 7918, 258, true)
        );
        assert!(NewRecipe::read(&mut reader(&b), 259, &old).is_err());
        // A stated length the segments do not take is refused.
        let mut wrong = vec![0];
        crate::format::put_varint(&mut wrong, 7919);
        wrong.extend_from_slice(&b[3..]);
        assert!(NewRecipe::read(&mut reader(&wrong), 258, &old).is_err());
        assert!(std::mem::size_of::<NewSeg>() as u64 <= INFLATE_RECIPE_BYTES);
    }

    /// An archive's unchanged entries: runs of the source's segments, one maker each.
    #[test]
    fn copy_runs_round_trip() {
        let d = |comp, plain| OldSeg::Deflate { comp, plain };
        let t = |comp, plain| OldSeg::Tokens {
            comp,
            plain,
            structure: 7,
        };
        let old = [
            OldSeg::Raw(40),
            d(100, 300),
            OldSeg::Raw(41),
            t(200, 700),
            OldSeg::Raw(40),
            d(100, 300),
            OldSeg::Raw(500),
        ];
        let z = |plain, comp| NewSeg::Deflate {
            plain,
            comp,
            params: DeflateParams::DEFAULT,
        };
        let z9 = |plain, comp| NewSeg::Deflate {
            plain,
            comp,
            params: DeflateParams {
                level: 9,
                ..DeflateParams::DEFAULT
            },
        };
        let m = |plain, comp| NewSeg::Miniz {
            plain,
            comp,
            level: 6,
        };
        let cases: Vec<(Vec<NewSeg>, u64)> = vec![
            // The whole source again, one setting: one run.
            (
                vec![
                    NewSeg::Raw(40),
                    z(300, 100),
                    NewSeg::Raw(41),
                    z(700, 200),
                    NewSeg::Raw(40),
                    z(300, 100),
                    NewSeg::Raw(500),
                ],
                1,
            ),
            // A new entry in the middle; the run after it starts where the first ended.
            (
                vec![
                    NewSeg::Raw(40),
                    z(300, 100),
                    NewSeg::Raw(33),
                    z(50, 20),
                    NewSeg::Raw(41),
                    z(700, 200),
                    NewSeg::Raw(500),
                ],
                5,
            ),
            // Two settings: the run stops where the maker changes.
            (
                vec![
                    NewSeg::Raw(40),
                    z(300, 100),
                    NewSeg::Raw(41),
                    z9(700, 200),
                    NewSeg::Raw(40),
                    m(300, 100),
                    NewSeg::Raw(500),
                ],
                3,
            ),
            // The longer of two runs that start alike: the source's second entry and its tail.
            (vec![NewSeg::Raw(40), m(300, 100), NewSeg::Raw(500)], 1),
            // The second entry first: a run from the source's third segment, then a run from
            // its first (found from the start) for the last two.
            (
                vec![
                    NewSeg::Raw(41),
                    z(700, 200),
                    NewSeg::Raw(40),
                    z(300, 100),
                    NewSeg::Raw(40),
                    z(300, 100),
                ],
                2,
            ),
        ];
        for (new, items) in cases {
            let mut b = Vec::new();
            put_new(&mut b, &new, &old);
            let mut next = reader(&b);
            let (_, _) = (next().unwrap(), next().unwrap());
            assert_eq!(next().unwrap(), items, "{new:?}");
            let size = new
                .iter()
                .map(|s| match *s {
                    NewSeg::Raw(n) => n,
                    NewSeg::Deflate { comp, .. } | NewSeg::Miniz { comp, .. } => comp,
                    NewSeg::Tokens { comp, .. } => comp,
                })
                .sum();
            let r = NewRecipe::read(&mut reader(&b), size, &old).unwrap();
            assert_eq!(r.segs, new);
            // A reader that has not inflated the source's streams (kind 3) knows the
            // expanded length the recipe states, not the runs' lengths.
            let unknown: Vec<OldSeg> = old
                .iter()
                .map(|s| match s {
                    OldSeg::Deflate { .. } => OldSeg::Inflate,
                    s => *s,
                })
                .collect();
            let r2 = NewRecipe::read(&mut reader(&b), 0, &unknown).unwrap();
            assert_eq!(r2.expanded, r.expanded);
        }
        // Without a stated length, a run over streams not inflated is refused.
        let mut b = Vec::new();
        for x in [1, 4, 0, 2, 1, 6, 15, 8, 0] {
            crate::format::put_varint(&mut b, x);
        }
        let unknown = [OldSeg::Raw(40), OldSeg::Inflate];
        assert!(NewRecipe::read(&mut reader(&b), 0, &unknown).is_err());
    }

    #[test]
    fn bad_recipes_are_refused() {
        let bad_old: [&[u64]; 8] = [
            &[0],
            &[(MAX_SEGMENTS + 1) as u64],
            &[1, 0, 0],
            &[1, 1, 0, 5],
            &[1, 1, 10, 10 * MAX_RATIO + 1],
            &[1, 2, 0, 5, 5],
            &[1, 2, 10, 10 * MAX_RATIO + 1, 5],
            &[1, 2, 10, 5, 10 * MAX_STRUCTURE_RATIO + 1],
        ];
        for v in bad_old {
            let mut b = Vec::new();
            for &x in v {
                crate::format::put_varint(&mut b, x);
            }
            let mut next = reader(&b);
            let r = read_old_count(&mut next).and_then(|_| read_old_seg(&mut next));
            assert!(r.is_err(), "{v:?}");
        }
        let bad_new: [&[u64]; 11] = [
            &[1, 3, 10, 0, 6],
            &[1, 3, 10, 5, 11],
            &[1, 3, 10 * MAX_RATIO + 1, 10, 6],
            &[1, 2, 5, 5, 0],
            &[1, 2, 10 * MAX_STRUCTURE_RATIO + 1, 5, 10],
            &[1, 0, 0],
            &[1, 2, 5],
            &[1, 1, 10, 0, 6, 15, 8, 0],
            &[1, 1, 10, 5, 10, 15, 8, 0],
            &[1, 1, 10, 5, 6, 8, 8, 0],
            &[1, 1, 10, 5, 6, 15, 8, 300],
        ];
        for v in bad_new {
            let mut b = Vec::new();
            for &x in v {
                crate::format::put_varint(&mut b, x);
            }
            assert!(NewRecipe::read(&mut reader(&b), 5, &[]).is_err(), "{v:?}");
        }
        // Copy runs: past the source, empty, overflowing, an unknown maker, bad settings,
        // more segments than a recipe holds.
        let source = [OldSeg::Raw(5), OldSeg::Deflate { comp: 5, plain: 9 }];
        let bad_runs: [&[u64]; 7] = [
            &[1, 4, 1, 2, 1, 6, 15, 8, 0],
            &[1, 4, 0, 0, 1, 6, 15, 8, 0],
            &[1, 4, u64::MAX, 2, 1, 6, 15, 8, 0],
            &[1, 4, 0, 2, 2, 6, 15, 8, 0],
            &[1, 4, 0, 2, 1, 6, 15, 10, 0],
            &[1, 4, 0, 2, 3, 11],
            &[1, 4, 0, 1, 3, 6],
        ];
        for v in bad_runs {
            let mut b = Vec::new();
            for &x in v {
                crate::format::put_varint(&mut b, x);
            }
            assert!(
                NewRecipe::read(&mut reader(&b), 10, &source).is_err(),
                "{v:?}"
            );
        }
        // The good run they spoil.
        let mut b = Vec::new();
        for x in [1, 4, 0, 2, 3, 6] {
            crate::format::put_varint(&mut b, x);
        }
        let r = NewRecipe::read(&mut reader(&b), 10, &source).unwrap();
        assert_eq!(r.expanded, 14);
        // Runs that would hold more than MAX_SEGMENTS segments in all.
        let big = vec![OldSeg::Raw(1); MAX_SEGMENTS];
        let mut b = Vec::new();
        for x in [2, 4, 0, MAX_SEGMENTS as u64, 3, 6, 4, 0, 1, 3, 6] {
            crate::format::put_varint(&mut b, x);
        }
        let e = NewRecipe::read(&mut reader(&b), MAX_SEGMENTS as u64 + 1, &big).unwrap_err();
        assert!(e.to_string().contains("more than 16384 segments"), "{e}");
        // 10,000 items of which a run fills the recipe to MAX_SEGMENTS: the list never takes
        // more room than the memory set aside for it.
        let mut b = Vec::new();
        let run = (MAX_SEGMENTS - 9_999) as u64;
        for x in [10_000, 4, 0, run, 3, 6] {
            crate::format::put_varint(&mut b, x);
        }
        for _ in 0..9_999 {
            b.extend_from_slice(&[0, 1]);
        }
        let r = NewRecipe::read(&mut reader(&b), MAX_SEGMENTS as u64, &big).unwrap();
        assert_eq!(r.segs.len(), MAX_SEGMENTS);
        assert!(r.segs.capacity() <= MAX_SEGMENTS, "{}", r.segs.capacity());
    }
}
