//! The dynamic block header that zlib's `trees.c` writes for given symbol counts, for the
//! token structures' *predicted* blocks (FORMAT.md section 4.3.1).
//!
//! Why: an encoder of the zlib family (stock zlib, Node's and Chromium's zlib, which differ
//! in how they find matches but share `trees.c`) cuts a block every few thousand symbols, so
//! after one edit every later block starts elsewhere and its code tables differ: 142 blocks of
//! an npm tarball cost about 9 KiB of patch. Those tables follow from the block's symbol
//! counts, which the structure and the plain bytes already give; a block whose header is
//! exactly what `trees.c` makes of its counts is stored without it.
//!
//! This is a port of zlib 1.3's `build_tree`, `gen_bitlen`, `scan_tree`, `send_tree` and
//! `build_bl_tree` (the heap and its tie-break by subtree depth included), giving the header as
//! the structure writes it: HLIT, HDIST, HCLEN, the code length code lengths, then the code
//! length symbols with their extra bits' values. Its test checks it against stock zlib's own
//! output at every level.

/// Literal/length symbols zlib counts (286), distance symbols (30), code length symbols (19).
pub const L_CODES: usize = 286;
/// Distance symbols.
pub const D_CODES: usize = 30;
const BL_CODES: usize = 19;
const HEAP_SIZE: usize = 2 * L_CODES + 1;
const BL_ORDER: [usize; 19] = [
    16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15,
];

/// Code lengths of `freq` by zlib's `build_tree` with `gen_bitlen` (lengths at most `max_len`),
/// and the largest symbol with a code (`max_code`). The returned lengths have one slot past
/// the symbols for `scan_tree`'s guard.
fn build_tree(freq_in: &[u32], max_len: u16) -> (Vec<u16>, usize) {
    let elems = freq_in.len();
    let nodes = 2 * elems + 1;
    let mut freq = vec![0u64; nodes];
    for (f, &x) in freq.iter_mut().zip(freq_in) {
        *f = u64::from(x);
    }
    let mut len = vec![0u16; nodes];
    let mut dad = vec![0usize; nodes];
    let mut depth = vec![0u8; nodes];
    let mut heap = [0usize; HEAP_SIZE];
    let mut heap_len = 0usize;
    let mut heap_max = HEAP_SIZE;
    let mut max_code: isize = -1;
    for (n, &f) in freq.iter().enumerate().take(elems) {
        if f != 0 {
            heap_len += 1;
            heap[heap_len] = n;
            max_code = n as isize;
        }
    }
    // At least two codes of non-zero frequency.
    while heap_len < 2 {
        let node = if max_code < 2 {
            max_code += 1;
            max_code as usize
        } else {
            0
        };
        heap_len += 1;
        heap[heap_len] = node;
        freq[node] = 1;
        depth[node] = 0;
    }
    let smaller = |freq: &[u64], depth: &[u8], n: usize, m: usize| {
        freq[n] < freq[m] || (freq[n] == freq[m] && depth[n] <= depth[m])
    };
    let down = |heap: &mut [usize; HEAP_SIZE], heap_len: usize, freq: &[u64], depth: &[u8], k| {
        let mut k = k;
        let v = heap[k];
        let mut j = k << 1;
        while j <= heap_len {
            if j < heap_len && smaller(freq, depth, heap[j + 1], heap[j]) {
                j += 1;
            }
            if smaller(freq, depth, v, heap[j]) {
                break;
            }
            heap[k] = heap[j];
            k = j;
            j <<= 1;
        }
        heap[k] = v;
    };
    for n in (1..=heap_len / 2).rev() {
        down(&mut heap, heap_len, &freq, &depth, n);
    }
    let mut node = elems;
    loop {
        let n = heap[1];
        heap[1] = heap[heap_len];
        heap_len -= 1;
        down(&mut heap, heap_len, &freq, &depth, 1);
        let m = heap[1];
        heap_max -= 1;
        heap[heap_max] = n;
        heap_max -= 1;
        heap[heap_max] = m;
        freq[node] = freq[n] + freq[m];
        depth[node] = depth[n].max(depth[m]) + 1;
        dad[n] = node;
        dad[m] = node;
        heap[1] = node;
        node += 1;
        down(&mut heap, heap_len, &freq, &depth, 1);
        if heap_len < 2 {
            break;
        }
    }
    heap_max -= 1;
    heap[heap_max] = heap[1];

    // gen_bitlen
    let max_code = max_code as usize;
    let mut bl_count = [0u16; 16];
    len[heap[heap_max]] = 0;
    let mut overflow: i32 = 0;
    for &n in &heap[heap_max + 1..HEAP_SIZE] {
        let mut bits = len[dad[n]] + 1;
        if bits > max_len {
            bits = max_len;
            overflow += 1;
        }
        len[n] = bits;
        if n > max_code {
            continue;
        }
        bl_count[bits as usize] += 1;
    }
    if overflow > 0 {
        loop {
            let mut bits = max_len as usize - 1;
            while bl_count[bits] == 0 {
                bits -= 1;
            }
            bl_count[bits] -= 1;
            bl_count[bits + 1] += 2;
            bl_count[max_len as usize] -= 1;
            overflow -= 2;
            if overflow <= 0 {
                break;
            }
        }
        let mut h = HEAP_SIZE;
        for bits in (1..=max_len).rev() {
            let mut n = bl_count[bits as usize];
            while n != 0 {
                h -= 1;
                let m = heap[h];
                if m > max_code {
                    continue;
                }
                len[m] = bits;
                n -= 1;
            }
        }
    }
    len.truncate(elems + 1);
    len[elems] = 0;
    (len, max_code)
}

/// The run-length coding of `len[..=max_code]` (`scan_tree` / `send_tree`): each code length
/// symbol with its extra bits' value.
fn send_tree(len: &mut [u16], max_code: usize, out: &mut Vec<(u8, u8)>) {
    let mut prevlen: i32 = -1;
    let mut nextlen = i32::from(len[0]);
    let mut count = 0i32;
    let (mut max_count, mut min_count) = (7, 4);
    if nextlen == 0 {
        (max_count, min_count) = (138, 3);
    }
    len[max_code + 1] = 0xFFFF;
    for n in 0..=max_code {
        let curlen = nextlen;
        nextlen = i32::from(len[n + 1]);
        count += 1;
        if count < max_count && curlen == nextlen {
            continue;
        } else if count < min_count {
            for _ in 0..count {
                out.push((curlen as u8, 0));
            }
        } else if curlen != 0 {
            if curlen != prevlen {
                out.push((curlen as u8, 0));
                count -= 1;
            }
            out.push((16, (count - 3) as u8));
        } else if count <= 10 {
            out.push((17, (count - 3) as u8));
        } else {
            out.push((18, (count - 11) as u8));
        }
        count = 0;
        prevlen = curlen;
        if nextlen == 0 {
            (max_count, min_count) = (138, 3);
        } else if curlen == nextlen {
            (max_count, min_count) = (6, 3);
        } else {
            (max_count, min_count) = (7, 4);
        }
    }
}

/// The header bytes (as the token structure writes a dynamic block's header) that zlib's
/// `trees.c` sends for a block with these literal/length (`lit`, with the end code counted
/// once) and distance (`dist`) symbol counts; `None` where zlib would send fewer than four
/// code length code lengths (it cannot).
pub fn zlib_header(lit: &[u32; L_CODES], dist: &[u32; D_CODES]) -> Option<Vec<u8>> {
    let (mut ll, lmax) = build_tree(lit, 15);
    let (mut dl, dmax) = build_tree(dist, 15);
    let mut syms = Vec::with_capacity(64);
    send_tree(&mut ll, lmax, &mut syms);
    send_tree(&mut dl, dmax, &mut syms);
    // scan_tree's counts are the symbols send_tree sends.
    let mut bl_freq = [0u32; BL_CODES];
    for &(s, _) in &syms {
        bl_freq[s as usize] += 1;
    }
    let (bl, _) = build_tree(&bl_freq, 7);
    let mut max_blindex = BL_CODES - 1;
    while max_blindex >= 3 && bl[BL_ORDER[max_blindex]] == 0 {
        max_blindex -= 1;
    }
    if max_blindex < 3 || lmax < 256 {
        return None;
    }
    let mut h = Vec::with_capacity(3 + BL_CODES + 2 * syms.len());
    h.push((lmax + 1 - 257) as u8);
    h.push(dmax as u8);
    h.push((max_blindex + 1 - 4) as u8);
    for &i in &BL_ORDER[..=max_blindex] {
        h.push(bl[i] as u8);
    }
    for &(s, x) in &syms {
        h.push(s);
        if s >= 16 {
            h.push(x);
        }
    }
    Some(h)
}
