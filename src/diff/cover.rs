//! Extra sources for a `modify`: old files that hold content of a new file which its main
//! source does not (code moved between files: split modules, merged chunks, vendored copies).
//!
//! Every old file's content-defined features (as in [`super::similar`], but one anchor in 32
//! and all of them, not a sketch) go into one sorted table of (feature, old file) pairs. A new
//! file's features that its main source lacks are looked up there, and old files are picked
//! greedily by how many of the remaining ones each holds. Whether the extra sources pay is
//! decided later, per file, by diffing with and without them.

use super::similar::for_each_feature;

/// Anchor mask: one position in 32 on average.
const MASK: u64 = 0x1f;
/// Old bytes indexed in full (about one pair of 16 bytes per 32 bytes: 32 MiB of table);
/// above, features are sampled so the table stays about that size.
const FULL_BYTES: u64 = 64 << 20;
/// A feature held by more old files than this is common boilerplate: it picks nothing.
const MAX_POSTINGS: usize = 16;

/// One in `sample` features is kept for an OLD of `old_bytes` (at least 1).
pub(crate) fn sample_for(old_bytes: u64) -> u64 {
    old_bytes.div_ceil(FULL_BYTES).max(1)
}

/// The sampled features of `data`, sorted and distinct.
pub(crate) fn features(data: &[u8], sample: u64) -> Vec<u64> {
    let mut out = Vec::new();
    for_each_feature(data, MASK, |f| {
        if f % sample == 0 {
            out.push(f);
        }
    });
    out.sort_unstable();
    out.dedup();
    out
}

/// The values that occur more than `max` times in `sorted`, once each, sorted.
pub(crate) fn common(sorted: &[u64], max: usize) -> Vec<u64> {
    sorted
        .chunk_by(|a, b| a == b)
        .filter(|run| run.len() > max)
        .map(|run| run[0])
        .collect()
}

/// Sorted (feature, old file index) pairs.
pub(crate) struct CoverIndex {
    pairs: Vec<(u64, u32)>,
}

impl CoverIndex {
    /// `files[i]` holds the features of old file `i`.
    pub(crate) fn new(files: &[Vec<u64>]) -> CoverIndex {
        let mut pairs: Vec<(u64, u32)> = files
            .iter()
            .enumerate()
            .flat_map(|(i, fs)| fs.iter().map(move |&f| (f, i as u32)))
            .collect();
        pairs.sort_unstable();
        CoverIndex { pairs }
    }

    /// The old files that hold feature `f`, in index order.
    fn holders(&self, f: u64) -> &[(u64, u32)] {
        let lo = self.pairs.partition_point(|&(g, _)| g < f);
        let hi = lo + self.pairs[lo..].partition_point(|&(g, _)| g == f);
        &self.pairs[lo..hi]
    }

    /// Up to `max` old files, best first, that hold features of `feats` which `main` (and the
    /// files picked before) do not: each must hold at least `min` of the features still
    /// uncovered, and pass `allowed`. Ties go to the lower index, so the choice is
    /// deterministic.
    pub(crate) fn extras(
        &self,
        feats: &[u64],
        main: Option<u32>,
        max: usize,
        min: usize,
        allowed: impl Fn(u32) -> bool,
    ) -> Vec<u32> {
        let holds = |l: &[(u64, u32)], i: u32| l.iter().any(|&(_, j)| j == i);
        let mut open: Vec<&[(u64, u32)]> = feats
            .iter()
            .map(|&f| self.holders(f))
            .filter(|l| !l.is_empty() && l.len() <= MAX_POSTINGS)
            .filter(|l| main.is_none_or(|m| !holds(l, m)))
            .collect();
        let mut out = Vec::new();
        let mut counts: std::collections::BTreeMap<u32, usize> = Default::default();
        while out.len() < max && open.len() >= min.max(1) {
            counts.clear();
            for l in &open {
                for &(_, i) in l.iter() {
                    *counts.entry(i).or_default() += 1;
                }
            }
            let pick = counts
                .iter()
                .filter(|(&i, _)| allowed(i))
                .map(|(&i, &n)| (n, std::cmp::Reverse(i)))
                .max();
            match pick {
                Some((n, std::cmp::Reverse(i))) if n >= min.max(1) => {
                    out.push(i);
                    open.retain(|l| !holds(l, i));
                }
                _ => break,
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_files_holding_what_the_main_source_lacks() {
        let mut rng = crate::testutil::XorShift(777);
        let a = rng.bytes(40_000);
        let b = rng.bytes(40_000);
        let c = rng.bytes(40_000);
        let noise = rng.bytes(40_000);
        // NEW = most of A, then half of C, then a little of B.
        let new = [&a[..30_000], &c[..20_000], &b[..3_000]].concat();
        let files: Vec<Vec<u64>> = [&a, &b, &c, &noise]
            .iter()
            .map(|d| features(d, 1))
            .collect();
        let ix = CoverIndex::new(&files);
        let nf = features(&new, 1);
        assert_eq!(ix.extras(&nf, Some(0), 4, 4, |_| true), vec![2, 1]);
        // A higher bar keeps only C; a filter can exclude it.
        assert_eq!(ix.extras(&nf, Some(0), 4, 200, |_| true), vec![2]);
        assert_eq!(ix.extras(&nf, Some(0), 4, 4, |i| i != 2), vec![1]);
        // Without a main source, the largest holder comes first.
        assert_eq!(ix.extras(&nf, None, 4, 4, |_| true), vec![0, 2, 1]);
        assert_eq!(ix.extras(&nf, None, 1, 4, |_| true), vec![0]);
    }
}
