//! The stream codecs: each encoder (feature `diff`, in [`encode`]) beside the decoder that
//! inverts it (always built, in [`decode`]). The patch format fixes what the bytes mean
//! (FORMAT.md sections 2 and 4); this module is the only place that turns them into data and
//! back, so a change to a codec is made, and tested, in one file pair.

pub(crate) mod decode;
#[cfg(feature = "diff")]
pub(crate) mod encode;
#[cfg(feature = "inflate")]
pub(crate) mod tokens;
#[cfg(feature = "inflate")]
pub(crate) mod trees;
pub(crate) mod zlib;

/// Text of `n` bytes with repeats at every distance (xorshift-chosen words), for the codec
/// tests.
#[cfg(test)]
pub(crate) fn sample_text(n: usize, seed: u64) -> Vec<u8> {
    let mut s = seed;
    let mut v = Vec::new();
    while v.len() < n {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        v.extend_from_slice(format!("word {} and {}; ", s % 500, s % 13).as_bytes());
    }
    v.truncate(n);
    v
}
