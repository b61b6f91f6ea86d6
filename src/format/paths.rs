//! Path rules (format section 3, "Paths"): what a bundle path may be, the case-clash check,
//! and reading prefix-compressed paths.

use super::{Budget, Reader, MAX_NAME_LEN, MAX_PATH_LEN};
use crate::error::{Error, Result};

/// Check that a bundle path is safe to create under a root: relative, `/`-separated, no empty,
/// `.` or `..` component, no NUL, backslash or control character, no drive prefix, bounded
/// lengths.
pub fn validate_path(p: &str) -> Result<()> {
    let bad = |why: &str| {
        Err(Error::corrupt(
            "manifest",
            format!("unsafe path {p:?}: {why}"),
        ))
    };
    if p.is_empty() {
        return bad("empty");
    }
    if p.len() > MAX_PATH_LEN {
        return bad("too long");
    }
    if p.starts_with('/') {
        return bad("absolute");
    }
    if p.chars().any(|c| c == '\\' || c.is_control()) {
        return bad("backslash or control character");
    }
    for (i, c) in p.split('/').enumerate() {
        if c.is_empty() || c == "." || c == ".." {
            return bad("empty, '.' or '..' component");
        }
        if c.len() > MAX_NAME_LEN {
            return bad("component too long");
        }
        if i == 0 && c.len() == 2 && c.ends_with(':') {
            return bad("drive prefix");
        }
    }
    Ok(())
}

/// Two paths equal after Unicode lowercasing, as indices `(earlier, later)`, if any.
///
/// Sorts a 64-bit hash of every lowercased path (16 bytes per path, where a set of lowercased
/// strings takes about 80) and compares the paths of equal hashes in full. The lowercased
/// copies of the paths compared are charged to `budget` (the hash table is the caller's to
/// charge: in a relative manifest most of it stands for OLD's entries).
pub(crate) fn case_clash<'p>(
    paths: impl Iterator<Item = &'p str> + Clone,
    budget: &mut Budget,
) -> Result<Option<(usize, usize)>> {
    let fold = |p: &str| -> u64 {
        let mut h = blake3::Hasher::new();
        let mut b = [0u8; 4];
        for c in p.chars().flat_map(char::to_lowercase) {
            h.update(c.encode_utf8(&mut b).as_bytes());
        }
        u64::from_le_bytes(h.finalize().as_bytes()[..8].try_into().expect("8 bytes"))
    };
    let mut keys: Vec<(u64, usize)> = Vec::with_capacity(paths.clone().count());
    keys.extend(paths.clone().map(fold).zip(0..));
    keys.sort_unstable();
    let nth = |i: usize| paths.clone().nth(i).expect("index from the same iterator");
    let mut start = 0;
    while start < keys.len() {
        let mut end = start + 1;
        while end < keys.len() && keys[end].0 == keys[start].0 {
            end += 1;
        }
        // Equal hashes (almost always a real clash): compare every pair in full.
        for a in start..end {
            for b in a + 1..end {
                let (i, j) = (keys[a].1, keys[b].1);
                // A lowercased copy is at most 1.5 times as long; with the growth of the
                // string that builds it, 5 times the path covers it.
                let temp = 5 * (nth(i).len() + nth(j).len()) as u64;
                budget.charge(temp, "the case check")?;
                let same = nth(i).to_lowercase() == nth(j).to_lowercase();
                budget.release(temp);
                if same {
                    return Ok(Some((i.min(j), i.max(j))));
                }
            }
        }
        start = end;
    }
    Ok(None)
}

/// Read a path stored as the length of the prefix it shares with `prev` and the rest. Its
/// length and the length of the component spanning the two parts are checked, and its bytes
/// charged, before it is built: a 2-byte record must not expand to more than one path. (The
/// other components are whole in `prev`, checked when it was read, or in the suffix.)
pub(super) fn read_prefixed(r: &mut Reader<'_>, prev: &str, budget: &mut Budget) -> Result<String> {
    let shared = r.varint_max(prev.len() as u64, "shared path prefix")? as usize;
    if !prev.is_char_boundary(shared) {
        return Err(Error::corrupt(
            "manifest",
            "shared path prefix splits a character",
        ));
    }
    let suffix = r.string(MAX_PATH_LEN)?;
    let len = shared + suffix.len();
    if len > MAX_PATH_LEN {
        return Err(Error::corrupt(
            "manifest",
            format!(
                "a path of {len} bytes ({shared} shared with the previous path, {} new), above \
                 {MAX_PATH_LEN}",
                suffix.len()
            ),
        ));
    }
    let head = &prev[..shared];
    let joined =
        head.rsplit('/').next().unwrap_or("").len() + suffix.split('/').next().unwrap_or("").len();
    if joined > MAX_NAME_LEN || suffix.split('/').skip(1).any(|c| c.len() > MAX_NAME_LEN) {
        return Err(Error::corrupt(
            "manifest",
            format!("a path component is longer than {MAX_NAME_LEN} bytes"),
        ));
    }
    budget.charge(len as u64, "a path")?;
    let mut path = String::with_capacity(shared + suffix.len());
    path.push_str(&prev[..shared]);
    path.push_str(suffix);
    Ok(path)
}

pub(super) fn common_prefix(a: &str, b: &str) -> usize {
    let n = a.bytes().zip(b.bytes()).take_while(|(x, y)| x == y).count();
    // Never split a UTF-8 sequence.
    (0..=n).rev().find(|&i| b.is_char_boundary(i)).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        for ok in ["a", "a/b", "a.b/c d", "ü/ñ"] {
            validate_path(ok).unwrap();
        }
        for bad in [
            "", "/a", "a//b", "a/./b", "../a", "a/..", "a\\b", "C:/x", "a\0b", "a/",
        ] {
            assert!(validate_path(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn case_clash_finds_pairs() {
        let f = |v: &[&str]| case_clash(v.iter().copied(), &mut Budget::unlimited()).unwrap();
        assert_eq!(f(&[]), None);
        assert_eq!(f(&["a", "b", "ab", "A/b"]), None);
        assert_eq!(f(&["a", "b", "B"]), Some((1, 2)));
        assert_eq!(f(&["Straße", "x", "STRASSE", "strasse"]), Some((2, 3)));
        // The Kelvin sign lowercases to 'k'.
        assert_eq!(f(&["k.txt", "\u{212A}.txt"]), Some((0, 1)));
        assert_eq!(f(&["dir/ÄB", "dir/äb", "dir/äc"]), Some((0, 1)));
    }
}
