//! Choosing the source of a `modify` when the new file's path has no twin in OLD.
//!
//! Bundlers rename files on every build (`app.3f9a1c.js` -> `app.b7e210.js`), so the best
//! source is found by content: each file gets a bottom-k sketch of content-defined features
//! (hashes of the 32 bytes after every position where a gear rolling hash has its low 6 bits
//! zero, so an insertion shifts no feature but its neighbours). An inverted index from feature
//! to old files makes the search linear in the number of features, never quadratic in the
//! number of files. Ties break on the name stem (the name with hash-like parts removed), the
//! extension, the size difference, then the path, so the choice is deterministic.

use std::collections::HashMap;

/// Features kept per file.
const K: usize = 64;
/// A feature present in more old files than this says nothing about similarity.
const MAX_POSTINGS: usize = 64;
/// Fewest shared features for a content match.
const MIN_SHARED: usize = 3;

fn gear_table() -> [u64; 256] {
    let mut t = [0u64; 256];
    let mut s: u64 = 0x9e37_79b9_7f4a_7c15;
    for v in t.iter_mut() {
        // splitmix64
        s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        *v = z ^ (z >> 31);
    }
    t
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 33)).wrapping_mul(0xff51_afd7_ed55_8ccd);
    z = (z ^ (z >> 33)).wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    z ^ (z >> 33)
}

/// Calls `f` with the feature hash of the 32 bytes after every position where the gear
/// rolling hash has its low bits `mask` all zero (`0x3f`: one position in 64 on average).
/// A denser mask gives a superset of a sparser one's features.
pub(crate) fn for_each_feature(data: &[u8], mask: u64, mut f: impl FnMut(u64)) {
    let gear = gear_table();
    let mut h: u64 = 0;
    for (i, &b) in data.iter().enumerate() {
        h = (h << 1).wrapping_add(gear[b as usize]);
        if h & mask == 0 && i + 32 <= data.len() {
            let w = &data[i..i + 32];
            let mut x: u64 = 0xcbf2_9ce4_8422_2325;
            for c in w.chunks(8) {
                let mut a = [0u8; 8];
                a[..c.len()].copy_from_slice(c);
                x = mix(x ^ u64::from_le_bytes(a));
            }
            f(x);
        }
    }
}

/// Bottom-k sketch of a file's content: up to `K` smallest distinct feature hashes, sorted.
pub(crate) fn sketch(data: &[u8]) -> Vec<u64> {
    let mut feats: Vec<u64> = Vec::new();
    for_each_feature(data, 0x3f, |x| {
        feats.push(x);
        if feats.len() >= 8 * K {
            feats.sort_unstable();
            feats.dedup();
            feats.truncate(K);
        }
    });
    feats.sort_unstable();
    feats.dedup();
    feats.truncate(K);
    feats
}

/// Split a path's file name into (stem without hash-like parts, extension).
pub(crate) fn stem_ext(path: &str) -> (String, String) {
    let name = path.rsplit('/').next().unwrap_or(path);
    let (base, ext) = match name.rfind('.') {
        Some(i) if i > 0 => (&name[..i], &name[i + 1..]),
        _ => (name, ""),
    };
    let looks_hashed = |s: &str| {
        s.len() >= 6
            && s.chars().all(|c| c.is_ascii_alphanumeric())
            && s.chars().any(|c| c.is_ascii_digit())
    };
    let parts: Vec<&str> = base
        .split(['.', '-', '_', '~'])
        .filter(|p| !looks_hashed(p))
        .collect();
    (parts.join("."), ext.to_string())
}

/// An old file that may serve as a source.
pub(crate) struct Candidate<'a> {
    pub path: &'a str,
    pub size: u64,
    pub sketch: Vec<u64>,
}

/// Inverted index over old files' sketches.
pub(crate) struct SimilarIndex<'a> {
    cands: Vec<Candidate<'a>>,
    postings: HashMap<u64, Vec<u32>>,
    by_stem: HashMap<(String, String, String), Vec<u32>>, // (dir, stem, ext)
}

fn dir_of(p: &str) -> &str {
    p.rsplit_once('/').map(|(d, _)| d).unwrap_or("")
}

impl<'a> SimilarIndex<'a> {
    pub(crate) fn new(cands: Vec<Candidate<'a>>) -> SimilarIndex<'a> {
        let mut postings: HashMap<u64, Vec<u32>> = HashMap::new();
        let mut by_stem: HashMap<(String, String, String), Vec<u32>> = HashMap::new();
        for (i, c) in cands.iter().enumerate() {
            for &f in &c.sketch {
                postings.entry(f).or_default().push(i as u32);
            }
            let (s, e) = stem_ext(c.path);
            by_stem
                .entry((dir_of(c.path).to_string(), s, e))
                .or_default()
                .push(i as u32);
        }
        SimilarIndex {
            cands,
            postings,
            by_stem,
        }
    }

    /// The best old source for a new file, by content, else by name in the same directory.
    pub(crate) fn best(&self, path: &str, size: u64, sk: &[u64]) -> Option<&'a str> {
        let (stem, ext) = stem_ext(path);
        let mut counts: HashMap<u32, usize> = HashMap::new();
        for f in sk {
            if let Some(list) = self.postings.get(f) {
                if list.len() <= MAX_POSTINGS {
                    for &i in list {
                        *counts.entry(i).or_default() += 1;
                    }
                }
            }
        }
        let rank = |i: u32, shared: usize| {
            let c = &self.cands[i as usize];
            let (cs, ce) = stem_ext(c.path);
            (
                shared,
                cs == stem && ce == ext,
                ce == ext,
                std::cmp::Reverse(c.size.abs_diff(size)),
                std::cmp::Reverse(c.path),
            )
        };
        let best = counts
            .iter()
            .filter(|(_, &n)| n >= MIN_SHARED.min(sk.len().max(1)))
            .map(|(&i, &n)| (rank(i, n), i))
            .max()
            .map(|(_, i)| i);
        if let Some(i) = best {
            return Some(self.cands[i as usize].path);
        }
        let list = self.by_stem.get(&(dir_of(path).to_string(), stem, ext))?;
        list.iter()
            .map(|&i| {
                (
                    std::cmp::Reverse(self.cands[i as usize].size.abs_diff(size)),
                    std::cmp::Reverse(self.cands[i as usize].path),
                    i,
                )
            })
            .max()
            .map(|(_, _, i)| self.cands[i as usize].path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stems() {
        assert_eq!(stem_ext("a/app.3f9a1c.js"), ("app".into(), "js".into()));
        assert_eq!(stem_ext("index-B7xk2Lq9.js"), ("index".into(), "js".into()));
        assert_eq!(
            stem_ext("chunk-5HUGE4RT.mjs"),
            ("chunk".into(), "mjs".into())
        );
        assert_eq!(stem_ext("README"), ("README".into(), "".into()));
        assert_eq!(stem_ext("lib/util.js"), ("util".into(), "js".into()));
    }

    #[test]
    fn finds_renamed_file_by_content() {
        let mut rng = crate::testutil::XorShift(12345);
        let a = rng.bytes(20_000);
        let b = rng.bytes(20_000);
        let mut a2 = a.clone();
        a2.splice(5000..5000, b"inserted text".iter().copied());
        let cands = vec![
            Candidate {
                path: "x/one.111aaa.js",
                size: 20_000,
                sketch: sketch(&b),
            },
            Candidate {
                path: "x/two.222bbb.js",
                size: 20_000,
                sketch: sketch(&a),
            },
        ];
        let ix = SimilarIndex::new(cands);
        assert_eq!(
            ix.best("y/zzz.999ccc.js", a2.len() as u64, &sketch(&a2)),
            Some("x/two.222bbb.js")
        );
        // No content match: falls back to the name stem in the same directory.
        assert_eq!(ix.best("x/one.444ddd.js", 10, &[]), Some("x/one.111aaa.js"));
        assert_eq!(ix.best("z/other.js", 10, &[]), None);
    }
}
