//! bsdiff-class matching: a suffix array over the source, approximate matches extended forward
//! and backward while at least half their bytes agree, so that the byte differences (mostly
//! zeros) compress well.
//!
//! The suffix array comes from libsais (single-threaded; parallelism is ours, over chunks of
//! the new file). A 65,536-entry bucket table over the first two bytes of every suffix narrows
//! each binary search by about 16 steps.
//!
//! Searches are the diff's cost: each is a chain of dependent cache misses down the suffix
//! array, about 6,500 cycles (2.7 µs, by rdtsc) for a 7 to 15-byte match in a 40 MB
//! executable. Three things avoid most of them, measured on the corpus (executable-big: 44.9
//! -> about 20 CPU-seconds):
//! - Where the current alignment goes on matching for [`MIN_MATCH`] bytes or more, that
//!   continuation is taken without a search (zstd tries its repeat offsets first the same way);
//!   a longer match elsewhere is found where the alignment breaks.
//! - Before any of this, about 60% of the searches on executable-small ended shorter than
//!   [`MIN_MATCH`] bytes (new code, changed operands, edited text) and took 72% of the search
//!   cycles. [`scans`] ignores matches
//!   that short, and a bit table of the source's [`MIN_MATCH`]-byte strings (hashed, so it can
//!   say "maybe" for a string that is absent but never "no" for one that is present) answers
//!   most of those searches with one memory access. The table changes no output: a search it
//!   skips could only have found a match the scan ignores.
//! - The scans of the several slacks search mostly the same positions, so the first one's
//!   searches are kept for the others (no output change either).
//!
//! The oracle test runs the scans with and without the last two.
//!
//! Pathology guard: plain bsdiff re-searches at every byte while a match is long but not quite
//! as good as the current alignment, which is quadratic on repetitive data (hours on some
//! 10 MB inputs). Here a match of [`LONG_MATCH`] bytes or more is always taken, which bounds the
//! work per new byte by `O(LONG_MATCH + log n)`.

use crate::format::Control;

/// Matches at least this long are taken at once (see module docs).
pub(crate) const LONG_MATCH: usize = 256;

/// Slacks the diff tries for every chunk ([`scans`]), keeping the scan whose streams
/// compress smallest. bsdiff's single value is 8. A small slack switches to a new match
/// sooner (better on executables, whose code moves by small offsets: -6.7% on
/// executable-small); a large one keeps an approximate match through more differences (better
/// on minified JavaScript, where renamed identifiers break exact matches: -11% on
/// js-bundle-big). The second scan reuses the first's searches ([`scans`]).
pub(crate) const SLACKS: [isize; 2] = [6, 16];

/// Matches shorter than this are ignored by [`scans`]. With a slack of `MIN_MATCH - 1` or more
/// such a match could never displace the current alignment; the scan moves on past the
/// alignment's own short continuation instead, as bsdiff does past a match no better than the
/// alignment. The [`Index`]'s bit table of source strings is keyed by this many bytes.
pub(crate) const MIN_MATCH: usize = 7;
const _: () = assert!(SLACKS[0] >= MIN_MATCH as isize - 1 && SLACKS[1] >= SLACKS[0]);

/// The first [`MIN_MATCH`] bytes of `t` as an integer, if `t` has that many.
#[inline]
fn gram(t: &[u8]) -> Option<u64> {
    const MASK: u64 = (1 << (8 * MIN_MATCH)) - 1;
    if let Some(w) = t.first_chunk::<8>() {
        Some(u64::from_le_bytes(*w) & MASK)
    } else {
        let w = t.first_chunk::<MIN_MATCH>()?;
        Some(w.iter().rev().fold(0u64, |a, &b| a << 8 | u64::from(b)))
    }
}

/// Bit table of the hashes of every [`MIN_MATCH`]-byte string of a source (a blocked Bloom
/// filter: two bits of one 64-bit word per string): 4 to 8 bits per source byte (the power of
/// two at or below 8, at least 64 bits in all; 256 MiB for a 512 MiB source), so that for a
/// string absent from the source about one lookup in twenty to seven answers "maybe" (fewer on
/// sources with repeated strings), for one cache miss. The search it spares is a binary search
/// of a few cache misses; on compressed data, where nearly every position is searched, one bit
/// per string at 2 to 4 bits per byte let one lookup in three to five through, and the scan
/// of npm's typescript tarball (4 MiB, compressed) took 6.9 s of its 10.4 s diff.
struct Grams {
    bits: Vec<u64>,
    shift: u32,
}

impl Grams {
    fn new(src: &[u8]) -> Grams {
        let want = src.len().saturating_mul(8).max(64);
        let nwords = (1usize << want.ilog2()) / 64;
        let mut g = Grams {
            bits: vec![0u64; nwords],
            shift: 64 - nwords.trailing_zeros(),
        };
        for i in 0..src.len().saturating_sub(MIN_MATCH - 1) {
            let (w, m) = g.slot(gram(&src[i..]).expect("MIN_MATCH bytes remain"));
            g.bits[w] |= m;
        }
        g
    }

    /// The word of `gram` and its two bits there.
    #[inline]
    fn slot(&self, gram: u64) -> (usize, u64) {
        let h = (gram ^ gram >> 31).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        // `shift` is 64 for a single word (no index bits): checked_shr gives word 0 then.
        let w = h.checked_shr(self.shift).unwrap_or(0) as usize;
        (w, 1 << (h >> 20 & 63) | 1 << (h >> 26 & 63))
    }

    /// `false` only if no [`MIN_MATCH`]-byte prefix of `t` occurs in the source.
    #[inline]
    fn may_occur(&self, t: &[u8]) -> bool {
        gram(t).is_some_and(|x| {
            let (w, m) = self.slot(x);
            self.bits[w] & m == m
        })
    }
}

enum SaVec {
    I32(Vec<i32>),
    I64(Vec<i64>),
}

/// Suffix-array index over one source buffer.
pub(crate) struct Index<'a> {
    old: &'a [u8],
    sa: SaVec,
    /// `bucket[k]` = number of suffixes whose 2-byte key is below `k`.
    bucket: Vec<usize>,
    grams: Grams,
}

fn key_at(old: &[u8], i: usize) -> usize {
    let hi = usize::from(old[i]) << 8;
    match old.get(i + 1) {
        Some(&b) => hi | usize::from(b),
        None => hi,
    }
}

impl<'a> Index<'a> {
    /// Build the index (about 5 bytes per source byte below 2 GiB, 9 above). The suffix
    /// array (single-threaded) is built on one core while the bit table and the bucket table
    /// are built on another.
    pub(crate) fn new(old: &'a [u8]) -> Index<'a> {
        let (sa, (grams, bucket)) = rayon::join(
            || Self::suffixes(old),
            || (Grams::new(old), Self::buckets(old)),
        );
        Index {
            old,
            sa,
            bucket,
            grams,
        }
    }

    fn buckets(old: &[u8]) -> Vec<usize> {
        let mut bucket = vec![0usize; 65537];
        for i in 0..old.len() {
            bucket[key_at(old, i) + 1] += 1;
        }
        for k in 1..bucket.len() {
            bucket[k] += bucket[k - 1];
        }
        bucket
    }

    fn suffixes(old: &[u8]) -> SaVec {
        if old.is_empty() {
            SaVec::I32(Vec::new())
        } else if old.len() < i32::MAX as usize {
            SaVec::I32(
                libsais::SuffixArrayConstruction::for_text(old)
                    .in_owned_buffer32()
                    .single_threaded()
                    .run()
                    .expect("libsais: suffix array of a byte text below 2 GiB cannot fail")
                    .into_vec(),
            )
        } else {
            SaVec::I64(
                libsais::SuffixArrayConstruction::for_text(old)
                    .in_owned_buffer64()
                    .single_threaded()
                    .run()
                    .expect("libsais: suffix array of a byte text cannot fail")
                    .into_vec(),
            )
        }
    }

    #[inline]
    fn sa(&self, i: usize) -> usize {
        match &self.sa {
            SaVec::I32(v) => v[i] as usize,
            SaVec::I64(v) => v[i] as usize,
        }
    }

    /// Longest match of a prefix of `t` in the source: `(position, length)`.
    pub(crate) fn search(&self, t: &[u8]) -> (usize, usize) {
        if self.old.is_empty() || t.is_empty() {
            return (0, 0);
        }
        let k1 = usize::from(t[0]) << 8;
        let (mut lo, mut hi) = if t.len() >= 2 {
            let k = k1 | usize::from(t[1]);
            (self.bucket[k], self.bucket[k + 1])
        } else {
            (self.bucket[k1], self.bucket[k1 + 256])
        };
        if lo >= hi {
            lo = self.bucket[k1];
            hi = self.bucket[k1 + 256];
            if lo >= hi {
                return (0, 0);
            }
        }
        let (mut st, mut en) = (lo, hi - 1);
        // Binary search that remembers how much of `t` each boundary suffix matches: every
        // suffix between the boundaries shares at least the smaller of the two with `t`, so
        // the comparison at `mid` starts there instead of at byte 0 (Manber and Myers).
        let (mut lst, mut len_) = (
            match_len(&self.old[self.sa(st)..], t),
            match_len(&self.old[self.sa(en)..], t),
        );
        loop {
            if en - st < 2 {
                return if lst >= len_ {
                    (self.sa(st), lst)
                } else {
                    (self.sa(en), len_)
                };
            }
            let mid = st + (en - st) / 2;
            let p = self.sa(mid);
            let skip = lst.min(len_);
            let l = skip + match_len(&self.old[p + skip..], &t[skip..]);
            // A suffix that is a proper prefix of `t` sorts before it (plain bsdiff treats it
            // as equal and can miss the longest match).
            let before = l < t.len() && (p + l == self.old.len() || self.old[p + l] < t[l]);
            if before {
                st = mid;
                lst = l;
            } else {
                en = mid;
                len_ = l;
            }
        }
    }
}

/// Length of the common prefix of `a` and `b`.
#[inline]
pub(crate) fn match_len(a: &[u8], b: &[u8]) -> usize {
    let n = a.len().min(b.len());
    let mut i = 0;
    while i + 8 <= n {
        let x = u64::from_le_bytes(a[i..i + 8].try_into().unwrap());
        let y = u64::from_le_bytes(b[i..i + 8].try_into().unwrap());
        let d = x ^ y;
        if d != 0 {
            return i + (d.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while i < n && a[i] == b[i] {
        i += 1;
    }
    i
}

/// The raw (uncompressed) output of scanning one chunk: controls, diff bytes, extra bytes.
#[derive(Default, Debug)]
pub(crate) struct Streams {
    pub ctrls: Vec<Control>,
    pub diff: Vec<u8>,
    pub extra: Vec<u8>,
}

/// Diff one chunk of new data against the indexed source (bsdiff's scan, with the guard),
/// once for each slack of `slacks`, in that order. A candidate match replaces the current
/// alignment when it is longer than the bytes the current alignment already gets right by more
/// than the slack (bsdiff: 8). Matches shorter than [`MIN_MATCH`] are ignored.
///
/// The scans search the same positions where the new data matches little, so each scan after
/// the first reuses the searches of the first (a search depends only on the position): on
/// executable-big the second scan's search cycles went down by about 40% (rdtsc).
pub(crate) fn scans(ix: &Index<'_>, nw: &[u8], slacks: &[isize]) -> Vec<Streams> {
    let mut memo = Memo::default();
    slacks
        .iter()
        .map(|&slack| {
            let st = scan_with(ix, nw, slack, true, &mut memo);
            memo.replay();
            st
        })
        .collect()
}

/// At most this many searches are remembered for the next scan (12 bytes each, 6 MiB; a 4 MiB
/// chunk of an executable makes about 400,000).
const MEMO_MAX: usize = 1 << 19;

/// The searches of a scan: `(new offset, source position, length)`, by increasing offset,
/// length 0 for "nothing of [`MIN_MATCH`] bytes or more". Kept in `u32`s: a chunk or a source
/// of 4 GiB or more is not remembered.
struct Memo {
    found: Vec<[u32; 3]>,
    read: usize,
    recording: bool,
}

impl Default for Memo {
    fn default() -> Memo {
        Memo {
            found: Vec::new(),
            read: 0,
            recording: true,
        }
    }
}

impl Memo {
    /// Stop recording; the next scan reads the searches from the first offset again.
    fn replay(&mut self) {
        self.recording = false;
        self.read = 0;
    }

    /// The remembered search at `at`; offsets must be asked in increasing order.
    fn get(&mut self, at: usize) -> Option<(usize, usize)> {
        while self
            .found
            .get(self.read)
            .is_some_and(|f| (f[0] as usize) < at)
        {
            self.read += 1;
        }
        self.found
            .get(self.read)
            .filter(|f| f[0] as usize == at)
            .map(|f| (f[1] as usize, f[2] as usize))
    }

    fn put(&mut self, at: usize, found: (usize, usize)) {
        if !self.recording || self.found.len() >= MEMO_MAX {
            return;
        }
        if let (Ok(a), Ok(p), Ok(l)) = (
            u32::try_from(at),
            u32::try_from(found.0),
            u32::try_from(found.1),
        ) {
            self.found.push([a, p, l]);
        } else {
            self.recording = false;
        }
    }
}

/// One scan with one slack.
#[cfg(test)]
pub(crate) fn scan(ix: &Index<'_>, nw: &[u8], slack: isize) -> Streams {
    scans(ix, nw, &[slack]).pop().expect("one slack, one scan")
}

/// One scan: with the bit table's shortcut or without it (the oracle: same output), reusing
/// and recording searches in `memo`.
fn scan_with(ix: &Index<'_>, nw: &[u8], slack: isize, shortcut: bool, memo: &mut Memo) -> Streams {
    let old = ix.old;
    let oldsize = old.len() as isize;
    let newsize = nw.len();
    let mut st = Streams::default();
    let (mut scan, mut len, mut pos) = (0usize, 0usize, 0usize);
    let (mut lastscan, mut lastpos, mut lastoffset) = (0usize, 0usize, 0isize);
    let at_off = |i: usize, off: isize| -> Option<u8> {
        let j = i as isize + off;
        if j >= 0 && j < oldsize {
            Some(old[j as usize])
        } else {
            None
        }
    };
    // The longest match of `MIN_MATCH` bytes or more at `at`, or length 0.
    let mut find = |at: usize| -> (usize, usize) {
        if let Some(f) = memo.get(at) {
            return f;
        }
        let t = &nw[at..];
        if shortcut && !ix.grams.may_occur(t) {
            // Cheaper to ask the bit table again than to remember.
            return (0, 0);
        }
        let (p, l) = ix.search(t);
        let f = if l >= MIN_MATCH { (p, l) } else { (0, 0) };
        memo.put(at, f);
        f
    };
    while scan < newsize {
        let mut oldscore: isize = 0;
        scan += len;
        let mut scsc = scan;
        while scan < newsize {
            // The current alignment's own continuation: when it is a match of MIN_MATCH bytes
            // or more, it is taken without a search (like zstd's repeat offsets; a longer
            // match elsewhere is found where the alignment breaks). Otherwise the search's
            // match, or failing one, the short continuation (so that the scan can move on past
            // it, as bsdiff does when no match is better).
            let j = scan as isize + lastoffset;
            let cont = if j >= 0 && j < oldsize {
                match_len(&old[j as usize..], &nw[scan..])
            } else {
                0
            };
            len = 0;
            if cont >= MIN_MATCH {
                (pos, len) = (j as usize, cont);
            } else {
                let (p, l) = find(scan);
                if l > 0 {
                    (pos, len) = (p, l);
                } else if cont > 0 {
                    (pos, len) = (j as usize, cont);
                }
            }
            // Count at least the byte at `scan`, which the score drops below when it moves on.
            while scsc < scan + len.max(1) {
                if at_off(scsc, lastoffset) == Some(nw[scsc]) {
                    oldscore += 1;
                }
                scsc += 1;
            }
            let l = len as isize;
            if (l == oldscore && len != 0) || l > oldscore + slack || len >= LONG_MATCH {
                break;
            }
            if at_off(scan, lastoffset) == Some(nw[scan]) {
                oldscore -= 1;
            }
            scan += 1;
        }
        if len as isize != oldscore || scan == newsize {
            // Forward extension of the previous match.
            let (mut s, mut sf, mut lenf) = (0isize, 0isize, 0usize);
            let mut i = 0usize;
            while lastscan + i < scan && lastpos + i < old.len() {
                if old[lastpos + i] == nw[lastscan + i] {
                    s += 1;
                }
                i += 1;
                if s * 2 - i as isize > sf * 2 - lenf as isize {
                    sf = s;
                    lenf = i;
                }
            }
            // Backward extension of the new match.
            let mut lenb = 0usize;
            if scan < newsize {
                let (mut s, mut sb) = (0isize, 0isize);
                let mut i = 1usize;
                while scan >= lastscan + i && pos >= i {
                    if old[pos - i] == nw[scan - i] {
                        s += 1;
                    }
                    if s * 2 - i as isize > sb * 2 - lenb as isize {
                        sb = s;
                        lenb = i;
                    }
                    i += 1;
                }
            }
            // Resolve overlap between the two extensions.
            if lastscan + lenf > scan - lenb {
                let overlap = (lastscan + lenf) - (scan - lenb);
                let (mut s, mut ss, mut lens) = (0isize, 0isize, 0usize);
                for i in 0..overlap {
                    if nw[lastscan + lenf - overlap + i] == old[lastpos + lenf - overlap + i] {
                        s += 1;
                    }
                    if nw[scan - lenb + i] == old[pos - lenb + i] {
                        s -= 1;
                    }
                    if s > ss {
                        ss = s;
                        lens = i + 1;
                    }
                }
                lenf = lenf + lens - overlap;
                lenb -= lens;
            }
            for i in 0..lenf {
                st.diff
                    .push(nw[lastscan + i].wrapping_sub(old[lastpos + i]));
            }
            let extra_end = scan - lenb;
            st.extra.extend_from_slice(&nw[lastscan + lenf..extra_end]);
            let seek = (pos as i64 - lenb as i64) - (lastpos + lenf) as i64;
            st.ctrls.push(Control {
                diff: lenf as u64,
                extra: (extra_end - (lastscan + lenf)) as u64,
                seek,
            });
            lastscan = scan - lenb;
            lastpos = pos - lenb;
            lastoffset = pos as isize - scan as isize;
        }
    }
    st
}

/// Estimated coded sizes, in 1/16 bytes, that [`prune`] weighs matches with.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Costs {
    /// One control (three varints after LZMA2).
    pub ctrl: u32,
    /// One extra byte.
    pub extra: u32,
    /// One nonzero diff byte.
    pub nonzero: u32,
    /// One zero diff byte.
    pub zero: u32,
    /// Only matches shorter than this are reconsidered.
    pub max_len: usize,
}

/// The costs the diff prunes with. Tuned on the corpus (whole patches, LZMA2), not measured
/// averages: the compressed streams average 3.6-5.1 bytes a control and 0.27-0.51 bytes an
/// extra byte, but a control weighed at 8 bytes against 0.5 an extra byte gave the smallest
/// patches; a zero diff byte is not free (a nonzero cost there keeps long approximate
/// extensions over unrelated bytes out of the diff stream: js-bundle-big 876,242 -> 868,405
/// bytes; at 2/16, hashed-dir-big grew 0.6%).
pub(crate) const COSTS: Costs = Costs {
    ctrl: 128,
    extra: 8,
    nonzero: 16,
    zero: 1,
    max_len: 32,
};

/// One match of a scan: `len` new bytes from `new` coded as differences from `old`.
#[derive(Clone, Copy, Debug)]
struct Cover {
    new: usize,
    old: usize,
    len: usize,
}

/// Post-pass over a scan's output: drop each short match whose estimated cost (a control
/// plus its diff bytes) exceeds that of the alternatives, which are leaving its bytes (and
/// the gap before it) in the extra stream, or extending the previous match across the gap
/// and it as approximate diff bytes. Left to right, greedy.
pub(crate) fn prune(old: &[u8], nw: &[u8], st: Streams, k: &Costs) -> Streams {
    // Controls to covers (the first may be empty).
    let mut covers = Vec::with_capacity(st.ctrls.len());
    let (mut n, mut p) = (0usize, 0i64);
    for c in &st.ctrls {
        covers.push(Cover {
            new: n,
            old: p as usize,
            len: c.diff as usize,
        });
        n += (c.diff + c.extra) as usize;
        p += c.diff as i64 + c.seek;
    }
    debug_assert_eq!(n, nw.len());
    // In u64: a gap can be as long as a chunk, and `--chunk-size` has no upper bound.
    let diff_cost = |nb: usize, ob: usize, len: usize| -> u64 {
        let nz = (0..len).filter(|&i| nw[nb + i] != old[ob + i]).count() as u64;
        nz * u64::from(k.nonzero) + (len as u64 - nz) * u64::from(k.zero)
    };
    let mut out: Vec<Cover> = Vec::with_capacity(covers.len());
    let mut changed = false;
    for c in covers {
        let Some(prev) = out.last_mut().filter(|_| c.len < k.max_len) else {
            out.push(c);
            continue;
        };
        let pend = prev.new + prev.len;
        let gap = c.new - pend;
        let keep =
            gap as u64 * u64::from(k.extra) + u64::from(k.ctrl) + diff_cost(c.new, c.old, c.len);
        let drop = (gap + c.len) as u64 * u64::from(k.extra);
        let ext_len = gap + c.len;
        let extend = if prev.old + prev.len + ext_len <= old.len() {
            diff_cost(pend, prev.old + prev.len, ext_len)
        } else {
            u64::MAX
        };
        if extend < keep && extend <= drop {
            prev.len += ext_len;
            changed = true;
        } else if drop < keep {
            changed = true;
        } else {
            out.push(c);
        }
    }
    if !changed {
        return st;
    }
    let mut r = Streams::default();
    for (i, c) in out.iter().enumerate() {
        r.diff
            .extend((0..c.len).map(|j| nw[c.new + j].wrapping_sub(old[c.old + j])));
        let (next_new, next_old) = match out.get(i + 1) {
            Some(nx) => (nx.new, nx.old),
            None => (nw.len(), c.old + c.len),
        };
        r.extra.extend_from_slice(&nw[c.new + c.len..next_new]);
        r.ctrls.push(Control {
            diff: c.len as u64,
            extra: (next_new - c.new - c.len) as u64,
            seek: next_old as i64 - (c.old + c.len) as i64,
        });
    }
    r
}

/// Oracle: rebuild a chunk from its raw streams (used by tests to check `scan`).
#[cfg(test)]
pub(crate) fn naive_apply(old: &[u8], s: &Streams) -> Vec<u8> {
    let mut out = Vec::new();
    let (mut d, mut e, mut pos) = (0usize, 0usize, 0i64);
    for c in &s.ctrls {
        let (dl, el, sk) = (c.diff as usize, c.extra as usize, c.seek);
        for i in 0..dl {
            out.push(old[pos as usize + i].wrapping_add(s.diff[d + i]));
        }
        d += dl;
        pos += dl as i64;
        out.extend_from_slice(&s.extra[e..e + el]);
        e += el;
        pos += sk;
        assert!(pos >= 0 && pos as usize <= old.len());
    }
    assert_eq!(d, s.diff.len());
    assert_eq!(e, s.extra.len());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn naive_search(old: &[u8], t: &[u8]) -> usize {
        (0..old.len())
            .map(|p| match_len(&old[p..], t))
            .max()
            .unwrap_or(0)
    }

    /// The bit table's promise on strings absent from the source: at 8 bits per source byte
    /// (a power of two here), about one in twenty answers "maybe".
    #[test]
    fn grams_let_few_absent_strings_through() {
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let old: Vec<u8> = (0..1 << 16).map(|_| next() as u8).collect();
        let g = Grams::new(&old);
        assert_eq!(g.bits.len() * 64, 8 << 16);
        let present: std::collections::HashSet<&[u8]> = old.windows(MIN_MATCH).collect();
        let (mut maybe, mut absent) = (0, 0);
        for _ in 0..100_000 {
            let t = next().to_le_bytes();
            if present.contains(&t[..MIN_MATCH]) {
                continue;
            }
            absent += 1;
            maybe += usize::from(g.may_occur(&t));
        }
        let rate = maybe as f64 / absent as f64;
        assert!(
            rate < 0.08,
            "{maybe} of {absent} absent strings answered maybe"
        );
    }

    proptest! {
        #[test]
        fn search_finds_longest(old in proptest::collection::vec(0u8..4, 0..300),
                                t in proptest::collection::vec(0u8..4, 1..40)) {
            let ix = Index::new(&old);
            let (p, l) = ix.search(&t);
            prop_assert_eq!(l, naive_search(&old, &t));
            if l > 0 {
                prop_assert_eq!(&old[p..p + l], &t[..l]);
            }
        }

        #[test]
        fn grams_never_miss(old in proptest::collection::vec(0u8..3, 0..3000),
                            t in proptest::collection::vec(0u8..3, 0..12)) {
            let g = Grams::new(&old);
            // Every string of the source itself, up to its last one.
            for i in 0..old.len() {
                prop_assert_eq!(g.may_occur(&old[i..]), old.len() - i >= MIN_MATCH);
            }
            let occurs = t.len() >= MIN_MATCH
                && old.windows(MIN_MATCH).any(|w| w == &t[..MIN_MATCH]);
            if occurs {
                prop_assert!(g.may_occur(&t));
            }
            if t.len() < MIN_MATCH {
                prop_assert!(!g.may_occur(&t));
            }
        }

        #[test]
        fn shortcuts_change_nothing(old in proptest::collection::vec(0u8..4, 0..4000),
                                    edits in proptest::collection::vec((0usize..4000, any::<u8>()), 0..40),
                                    slacks in proptest::collection::vec(
                                        prop_oneof![Just(0isize), Just(6), Just(16), 0isize..40], 1..4)) {
            // Few distinct bytes: many 7-byte strings occur, many do not, and the bit table
            // answers "maybe" for some that do not. The scans after the
            // first reuse its searches.
            let mut new = old.clone();
            for (i, b) in edits {
                new.insert(i % (new.len() + 1), b);
            }
            let ix = Index::new(&old);
            let fast = scans(&ix, &new, &slacks);
            prop_assert_eq!(fast.len(), slacks.len());
            for (f, &slack) in fast.iter().zip(&slacks) {
                let plain = scan_with(&ix, &new, slack, false, &mut Memo::default());
                prop_assert_eq!(&f.ctrls, &plain.ctrls);
                prop_assert_eq!(&f.diff, &plain.diff);
                prop_assert_eq!(&f.extra, &plain.extra);
                prop_assert_eq!(&naive_apply(&old, f), &new);
            }
        }

        #[test]
        fn scan_roundtrips(old in proptest::collection::vec(any::<u8>(), 0..2000),
                           edits in proptest::collection::vec((0usize..2000, any::<u8>()), 0..20),
                           slack in prop_oneof![Just(0isize), Just(6), Just(8), Just(16), 0isize..64]) {
            let mut new = old.clone();
            for (i, b) in edits {
                if !new.is_empty() { let k = i % new.len(); new[k] = b; }
                new.insert(i % (new.len() + 1), b);
            }
            let ix = Index::new(&old);
            let s = scan(&ix, &new, slack);
            prop_assert_eq!(naive_apply(&old, &s), new);
        }
    }

    /// Naive oracle of [`prune`]'s estimate: the whole streams' cost under `k`.
    fn estimate(old: &[u8], s: &Streams, k: &Costs) -> u64 {
        let mut pos = 0i64;
        let mut d = 0usize;
        let mut nz = 0u64;
        for c in &s.ctrls {
            for i in 0..c.diff as usize {
                if s.diff[d + i] != 0 {
                    nz += 1;
                }
                assert!(old.get(pos as usize + i).is_some());
            }
            d += c.diff as usize;
            pos += c.diff as i64 + c.seek;
        }
        let zeros = s.diff.len() as u64 - nz;
        s.ctrls.len() as u64 * u64::from(k.ctrl)
            + s.extra.len() as u64 * u64::from(k.extra)
            + nz * u64::from(k.nonzero)
            + zeros * u64::from(k.zero)
    }

    fn clone_streams(s: &Streams) -> Streams {
        Streams {
            ctrls: s.ctrls.clone(),
            diff: s.diff.clone(),
            extra: s.extra.clone(),
        }
    }

    proptest! {
        #[test]
        fn prune_roundtrips_and_never_costs_more(
            old in proptest::collection::vec(0u8..8, 0..2000),
            edits in proptest::collection::vec((0usize..2000, any::<u8>(), 0usize..12), 0..30),
            slack in prop_oneof![Just(6isize), Just(16)],
            ctrl in 0u32..200, extra in 0u32..32, nonzero in 0u32..32, zero in 0u32..4,
            max_len in prop_oneof![Just(0usize), Just(32), 0usize..300]) {
            // Copies of other source bytes pasted in: short matches at other offsets.
            let mut new = old.clone();
            for (i, b, n) in edits {
                let at = i % (new.len() + 1);
                if b % 2 == 0 && !old.is_empty() {
                    let from = usize::from(b) * 7 % old.len();
                    let piece = old[from..(from + n).min(old.len())].to_vec();
                    new.splice(at..at, piece);
                } else {
                    new.insert(at, b);
                }
            }
            let k = Costs { ctrl, extra, nonzero, zero, max_len };
            let ix = Index::new(&old);
            let raw = scan(&ix, &new, slack);
            let pruned = prune(&old, &new, clone_streams(&raw), &k);
            prop_assert_eq!(naive_apply(&old, &pruned), new);
            prop_assert!(pruned.ctrls.len() <= raw.ctrls.len());
            prop_assert!(estimate(&old, &pruned, &k) <= estimate(&old, &raw, &k));
        }
    }

    #[test]
    fn short_useless_match_is_dropped() {
        // A 10-byte piece of the source's far end, surrounded by unrelated bytes, inside an
        // otherwise unchanged copy: the scan takes it as a match of its own (a control for 10
        // bytes), which the costs say is dearer than 10 extra bytes.
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut rnd = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        };
        let old: Vec<u8> = (0..4000).map(|_| rnd()).collect();
        let mut new = old[..1000].to_vec();
        new.extend((0..7).map(|_| rnd()));
        new.extend_from_slice(&old[3000..3010]);
        new.extend((0..7).map(|_| rnd()));
        new.extend_from_slice(&old[1024..]);
        let ix = Index::new(&old);
        // (With slack 16 the scan itself keeps the first alignment over the piece.)
        let raw = scan(&ix, &new, SLACKS[0]);
        {
            assert_eq!(naive_apply(&old, &raw), new);
            let far = |s: &Streams| {
                let mut pos = 0i64;
                s.ctrls.iter().any(|c| {
                    let hit = c.diff > 0 && c.diff < 16 && (pos as usize) >= 2990;
                    pos += c.diff as i64 + c.seek;
                    hit
                })
            };
            assert!(
                far(&raw),
                "the scan matches the pasted piece: {:?}",
                raw.ctrls
            );
            let pruned = prune(&old, &new, clone_streams(&raw), &COSTS);
            assert_eq!(naive_apply(&old, &pruned), new);
            assert!(!far(&pruned), "{:?}", pruned.ctrls);
            assert_eq!(pruned.ctrls.len() + 1, raw.ctrls.len());
            assert!(pruned.extra.len() >= raw.extra.len() + 10);
            assert!(estimate(&old, &pruned, &COSTS) < estimate(&old, &raw, &COSTS));
        }
    }

    #[test]
    fn match_len_words() {
        let a = b"abcdefghijklmnopq";
        let mut b = *a;
        assert_eq!(match_len(a, &b), 17);
        b[11] = b'X';
        assert_eq!(match_len(a, &b), 11);
        assert_eq!(match_len(a, b"abc"), 3);
        assert_eq!(match_len(b"", a), 0);
    }

    #[test]
    fn repetitive_input_is_fast_and_correct() {
        // Pathological for plain bsdiff: long periodic runs with a shifted period.
        let old: Vec<u8> = (0..400_000u32).map(|i| (i % 251) as u8).collect();
        let new: Vec<u8> = (0..400_000u32).map(|i| (i % 241) as u8).collect();
        let ix = Index::new(&old);
        for slack in SLACKS {
            let s = scan(&ix, &new, slack);
            assert_eq!(naive_apply(&old, &s), new);
        }
    }
}
