//! Base tags (format section 3.2): short per-unit hashes of the base that name the first old
//! entry that differs once the base check has failed.

use super::relative::listing_record;
use super::{put_varint, Budget, Hash, ListEntry, Reader, MAX_TAG_BITS};
use crate::error::{Error, Result};

/// Base tags (format section 3.2): the first `bits` bits of a hash of each unit of the base,
/// packed, stored so that an applier whose OLD fails the base check can name the first entry
/// that differs. They are read only when the base check has already failed: the check itself
/// is the 32-byte base digest, whatever the tags say.
///
/// Units: in the full form, every old file the patch relies on, in base-digest order (tag =
/// the file's BLAKE3); in the relative form, every entry of OLD's listing (tag =
/// `listing_tag`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BaseTags {
    /// Bits per tag, 1..=[`MAX_TAG_BITS`]; 0 when there are none.
    pub bits: u8,
    /// Number of units.
    pub count: usize,
    /// The tags, `bits` each, packed most significant bit first; the last byte's unused low
    /// bits are 0.
    pub packed: Vec<u8>,
}

/// The first `bits` bits of `bytes` starting at bit `at` (most significant first), as a u64.
fn bits_at(bytes: &[u8], at: usize, bits: usize) -> Option<u64> {
    let mut v = 0u64;
    for k in at..at + bits {
        let b = bytes.get(k / 8)?;
        v = (v << 1) | u64::from((b >> (7 - k % 8)) & 1);
    }
    Some(v)
}

impl BaseTags {
    /// Tags of the given full hashes, `bits` bits each (0: none; at most [`MAX_TAG_BITS`]).
    pub fn from_hashes<'h>(bits: u8, hashes: impl IntoIterator<Item = &'h Hash>) -> BaseTags {
        let b = usize::from(bits.min(MAX_TAG_BITS));
        if b == 0 {
            return BaseTags::default();
        }
        let mut packed = Vec::new();
        let mut count = 0usize;
        for h in hashes {
            for k in 0..b {
                let at = count * b + k;
                if at % 8 == 0 {
                    packed.push(0);
                }
                let bit = (h[k / 8] >> (7 - k % 8)) & 1;
                *packed.last_mut().expect("pushed above") |= bit << (7 - at % 8);
            }
            count += 1;
        }
        BaseTags {
            bits: b as u8,
            count,
            packed,
        }
    }

    /// Number of units.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether there are no tags.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Whether unit `i`'s tag matches the full hash `h` (false past the end).
    pub fn matches(&self, i: usize, h: &Hash) -> bool {
        let b = usize::from(self.bits);
        b > 0 && i < self.count && bits_at(&self.packed, i * b, b) == bits_at(h, 0, b)
    }

    pub(super) fn put(&self, out: &mut Vec<u8>) {
        out.push(self.bits);
        put_varint(out, self.count as u64);
        out.extend_from_slice(&self.packed);
    }

    pub(super) fn read(r: &mut Reader<'_>, budget: &mut Budget) -> Result<BaseTags> {
        let bits = r.u8()?;
        if !(1..=MAX_TAG_BITS).contains(&bits) {
            return Err(Error::corrupt(
                "manifest",
                format!("base tag size {bits} bits, outside 1..={MAX_TAG_BITS}"),
            ));
        }
        let b = u64::from(bits);
        // Bounded by the bytes left, so the allocation below is too.
        let max = (r.remaining() as u64).saturating_mul(8) / b;
        let count = r.varint_max(max, "base tag count")?;
        let total_bits = count * b;
        let packed = r.bytes(total_bits.div_ceil(8) as usize)?;
        budget.charge(packed.len() as u64, "the base tags")?;
        let packed = packed.to_vec();
        let pad = (8 - total_bits % 8) % 8;
        if pad > 0 && packed.last().is_some_and(|l| l & ((1u8 << pad) - 1) != 0) {
            return Err(Error::corrupt(
                "manifest",
                "base tag padding bits are not 0",
            ));
        }
        Ok(BaseTags {
            bits,
            count: count as usize,
            packed,
        })
    }
}

/// The hash behind a relative-form base tag: BLAKE3 in derive_key mode (context
/// `"bundelta base tag v1"`) over the entry's listing record (as for
/// [`listing_digest`](super::listing_digest)) and,
/// for a regular file, the BLAKE3 of its content.
pub fn listing_tag(e: &ListEntry, content: Option<&Hash>) -> Hash {
    let mut h = blake3::Hasher::new_derive_key("bundelta base tag v1");
    let mut b = Vec::with_capacity(e.path.len() + 16);
    listing_record(e, &mut b);
    h.update(&b);
    if let Some(c) = content {
        h.update(c);
    }
    *h.finalize().as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_tags_pack_and_match() {
        let hashes: Vec<Hash> = (0u8..9).map(|i| *blake3::hash(&[i]).as_bytes()).collect();
        for bits in [1u8, 3, 4, 7, 8, 13, 32] {
            let t = BaseTags::from_hashes(bits, &hashes);
            assert_eq!(t.len(), 9);
            assert_eq!(t.packed.len(), (9 * usize::from(bits)).div_ceil(8));
            for (i, h) in hashes.iter().enumerate() {
                assert!(t.matches(i, h), "bits {bits} unit {i}");
                // Flipping the tag's last bit of the hash must break the match.
                let mut g = *h;
                let k = usize::from(bits) - 1;
                g[k / 8] ^= 0x80 >> (k % 8);
                assert!(!t.matches(i, &g), "bits {bits} unit {i}");
                // A bit past the tag does not matter.
                let mut g = *h;
                g[31] ^= 1;
                assert!(t.matches(i, &g));
            }
            assert!(!t.matches(9, &hashes[0]));
            let mut out = Vec::new();
            t.put(&mut out);
            let back =
                BaseTags::read(&mut Reader::new(&out, "t"), &mut Budget::unlimited()).unwrap();
            assert_eq!(back, t);
        }
        // Nonzero padding, a zero width and a count past the bytes are corrupt.
        let t = BaseTags::from_hashes(3, &hashes[..1]);
        let mut out = Vec::new();
        t.put(&mut out);
        *out.last_mut().unwrap() |= 1;
        assert!(BaseTags::read(&mut Reader::new(&out, "t"), &mut Budget::unlimited()).is_err());
        assert!(BaseTags::read(&mut Reader::new(&[0, 0], "t"), &mut Budget::unlimited()).is_err());
        assert!(BaseTags::read(
            &mut Reader::new(&[8, 3, 1, 2], "t"),
            &mut Budget::unlimited()
        )
        .is_err());
    }
}
