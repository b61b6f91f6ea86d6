//! Transform 2, *inflate* (minor 4, FORMAT.md section 4.3): a `modify` whose source and target
//! are deflate containers (gzip members today) is diffed between their *expanded* forms, where
//! every deflate stream stands as the bytes it inflates to, and the target is deflated again
//! on apply with the stock-zlib parameters that made it.
//!
//! Why: one changed line re-encodes a whole deflate stream after it, so two compressed files
//! share almost no bytes even when their contents do (a patch of 91% of an npm tarball where
//! the unpacked trees differ by under 0.01%). Expanded, they share what their contents share.
//!
//! This module holds the two *recipes* that a transform-2 file's controls start with: how to
//! expand the source ([`OldSeg`]) and how to build the target from its expanded form
//! ([`NewSeg`]), with every number checked as it is read.

use crate::codec::zlib::{DeflateParams, DEFLATE_MEMORY, FEED, INFLATE_MEMORY};
use crate::error::{Error, Result};

/// Delta transform 2: the file's source and target are diffed in expanded form (section 4.3).
pub const TRANSFORM_INFLATE: u8 = 2;

/// Most segments in one recipe. A target recipe is held in memory while its file is made:
/// [`INFLATE_RECIPE_BYTES`] per segment. Writers keep further deflate streams as they are.
pub const MAX_SEGMENTS: usize = 1 << 14;

/// Bytes of memory one held target segment takes.
pub const INFLATE_RECIPE_BYTES: u64 = 32;

/// Largest ratio of plain to compressed bytes deflate can reach is 1032:1 (a 258-byte match
/// per 2 bits, and the block overhead): a source segment that claims more is corrupt.
pub const MAX_RATIO: u64 = 1032;

/// Heap the applier sets aside with header flag [`super::FLAG_INFLATE`]: one held target
/// recipe, one inflater, one deflater with its input piece and output buffer (or, instead of
/// the deflater, a token encoder with its buffers, which takes less).
pub const INFLATE_MEMORY_TOTAL: u64 = MAX_SEGMENTS as u64 * INFLATE_RECIPE_BYTES
    + INFLATE_MEMORY
    + DEFLATE_MEMORY
    + FEED as u64
    + (16 << 10);

/// A piece of the source as it is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OldSeg {
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
}

impl NewRecipe {
    /// Read a target recipe, checking that it makes a file of `size` bytes.
    pub fn read(next: &mut impl FnMut() -> Result<u64>, size: u64) -> Result<NewRecipe> {
        let n = count(next, "target")?;
        // Bounded by MAX_SEGMENTS (the memory set aside for it), not by the patch.
        let mut segs = Vec::with_capacity(n);
        let (mut expanded, mut made) = (0u64, 0u64);
        let over = || Error::corrupt(C, "target recipe lengths overflow");
        for _ in 0..n {
            let seg = match next()? {
                0 => NewSeg::Raw(nonzero(next()?, "raw")?),
                1 => {
                    let plain = next()?;
                    let comp = nonzero(next()?, "deflate")?;
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
                    NewSeg::Deflate {
                        plain,
                        comp,
                        params,
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
                    let level = next()?;
                    if level > u64::from(crate::codec::zlib::MINIZ_MAX_LEVEL) {
                        return Err(Error::Unsupported {
                            what: "miniz level",
                            value: level,
                        });
                    }
                    NewSeg::Miniz {
                        plain,
                        comp,
                        level: level as u8,
                    }
                }
                k => {
                    return Err(Error::Unsupported {
                        what: "target segment kind",
                        value: k,
                    })
                }
            };
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
            expanded = expanded.checked_add(e).ok_or_else(over)?;
            made = made.checked_add(m).ok_or_else(over)?;
            segs.push(seg);
        }
        if made != size {
            return Err(Error::corrupt(
                C,
                format!("target recipe makes {made} bytes, the file has {size}"),
            ));
        }
        Ok(NewRecipe {
            segs,
            expanded,
            size,
        })
    }
}

/// Write a source recipe (the encoder's side of [`read_old_seg`]).
pub fn put_old(out: &mut Vec<u8>, segs: &[OldSeg]) {
    use super::put_varint;
    put_varint(out, segs.len() as u64);
    for s in segs {
        match *s {
            OldSeg::Raw(n) => {
                put_varint(out, 0);
                put_varint(out, n);
            }
            OldSeg::Deflate { comp, plain } => {
                put_varint(out, 1);
                put_varint(out, comp);
                put_varint(out, plain);
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

/// Write a target recipe (the encoder's side of [`NewRecipe::read`]).
pub fn put_new(out: &mut Vec<u8>, segs: &[NewSeg]) {
    use super::put_varint;
    put_varint(out, segs.len() as u64);
    for s in segs {
        match *s {
            NewSeg::Raw(n) => {
                put_varint(out, 0);
                put_varint(out, n);
            }
            NewSeg::Deflate {
                plain,
                comp,
                params,
            } => {
                put_varint(out, 1);
                put_varint(out, plain);
                put_varint(out, comp);
                for v in [
                    params.level,
                    params.window_bits,
                    params.mem_level,
                    params.strategy,
                ] {
                    put_varint(out, v.into());
                }
            }
            NewSeg::Tokens {
                structure,
                plain,
                comp,
            } => {
                for v in [2, structure, plain, comp] {
                    put_varint(out, v);
                }
            }
            NewSeg::Miniz { plain, comp, level } => {
                for v in [3, plain, comp, level.into()] {
                    put_varint(out, v);
                }
            }
        }
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
        assert_eq!(back, old);

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
        put_new(&mut b, &new);
        let r = NewRecipe::read(&mut reader(&b), 258).unwrap();
        assert_eq!((r.segs, r.expanded, r.size), (new.clone(), 7918, 258));
        assert!(NewRecipe::read(&mut reader(&b), 259).is_err());
        assert!(std::mem::size_of::<NewSeg>() as u64 <= INFLATE_RECIPE_BYTES);
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
            assert!(NewRecipe::read(&mut reader(&b), 5).is_err(), "{v:?}");
        }
    }
}
