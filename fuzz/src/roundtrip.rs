//! Diff (level 1, 64 KiB chunks, fuzzer-chosen window) then apply must give NEW back exactly.
//!
//! Input: `[window byte][split u16][old ...][edit script ...]`. NEW is built from OLD by the
//! script (copy / insert / skip / seek / repeat), so it shares long runs with OLD, as real
//! versions do.

use bundelta::{DiffOptions, MIN_CHUNK_SIZE};

use super::Bytes;

/// Largest NEW built (keeps one run fast).
const MAX_NEW: usize = 64 << 10;

/// Build NEW from OLD and an edit script.
pub fn edit(old: &[u8], script: &[u8]) -> Vec<u8> {
    let mut s = Bytes::new(script);
    let mut new = Vec::new();
    let mut cur = 0usize;
    while !s.is_empty() && new.len() < MAX_NEW {
        let op = s.u8();
        let n = usize::from(op >> 3) * 8 + usize::from(s.u8());
        match op & 7 {
            // Copy n bytes of OLD at the cursor.
            0 | 1 => {
                let end = (cur + n).min(old.len());
                new.extend_from_slice(&old[cur.min(end)..end]);
                cur = end;
            }
            // Insert up to 32 literal bytes.
            2 => new.extend_from_slice(s.take(n % 33)),
            // Skip (delete) n bytes of OLD.
            3 => cur = (cur + n).min(old.len()),
            // Move the cursor anywhere in OLD.
            4 => cur = usize::from(s.u16()) * 16 % (old.len() + 1),
            // Repeat the last k bytes of NEW n times (periodic runs).
            5 => {
                let k = (usize::from(s.u8()) + 1).min(new.len());
                if k > 0 {
                    let from = new.len() - k;
                    for _ in 0..n.min(4096) {
                        new.extend_from_within(from..from + k);
                        if new.len() >= MAX_NEW {
                            break;
                        }
                    }
                }
            }
            // Flip one byte of NEW.
            6 => {
                if !new.is_empty() {
                    let i = n % new.len();
                    new[i] ^= 1 + (op >> 3);
                }
            }
            // Copy the rest of OLD.
            _ => {
                new.extend_from_slice(&old[cur..]);
                cur = old.len();
            }
        }
    }
    new.truncate(MAX_NEW);
    new
}

/// Fuzz body.
pub fn run(data: &[u8]) {
    let mut b = Bytes::new(data);
    let window_log = 10 + b.u8() % 12; // 10..=21: fits the default memory limit
    let split = usize::from(b.u16());
    let rest = b.rest();
    let split = if rest.is_empty() {
        0
    } else {
        split % (rest.len() + 1)
    };
    let (old_part, script) = rest.split_at(split);
    // Stretch a small OLD so the suffix array and chunking have something to chew on.
    let mut old = old_part.to_vec();
    if !old.is_empty() {
        while old.len() < 4096 {
            old.extend_from_within(..old_part.len());
        }
    }
    let new = edit(&old, script);

    let mut opts = DiffOptions::new();
    opts.level(1)
        .chunk_size(MIN_CHUNK_SIZE)
        .window_log(window_log);
    let patch = opts.diff_bytes(&old, &new).expect("diff_bytes failed");

    super::apply_gives(&old, &patch, &new, "roundtrip");
}
