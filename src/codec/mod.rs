//! The stream codecs: each encoder (feature `diff`, in [`encode`]) beside the decoder that
//! inverts it (always built, in [`decode`]). The patch format fixes what the bytes mean
//! (FORMAT.md sections 2 and 4); this module is the only place that turns them into data and
//! back, so a change to a codec is made, and tested, in one file pair.

pub(crate) mod decode;
#[cfg(feature = "diff")]
pub(crate) mod encode;
pub(crate) mod tokens;
pub(crate) mod trees;
pub(crate) mod zlib;
