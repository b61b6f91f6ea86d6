//! Reference prediction (delta transform 1) on hostile parameters: `Refs::decode` reads
//! arbitrary varints; whatever it accepts must satisfy the format's bounds, and predicting a
//! region block by block (as the applier does, carrying look-ahead bytes) must give exactly
//! the bytes of predicting it whole (as the diff does), without a panic.
//!
//! Input: `[src_len u16][block u8][pos u8]` then the parameters' varints, then the region's
//! OLD bytes.

use bundelta::format::{Reader, Refs, MAX_LOADS, MAX_MAP};

pub fn run(data: &[u8]) {
    if data.len() < 4 {
        return;
    }
    let src_len = u64::from(u16::from_le_bytes([data[0], data[1]]));
    let block = 1 + usize::from(data[2]);
    let pos = u64::from(data[3]);
    let mut r = Reader::new(&data[4..], "control stream");
    let Ok(refs) = Refs::decode(|| r.varint(), src_len) else {
        return;
    };
    assert!(refs.old_loads.len() <= MAX_LOADS && refs.new_loads.len() <= MAX_LOADS);
    assert!(refs.map.len() <= MAX_MAP);
    assert!(refs.map.windows(2).all(|w| w[0].old < w[1].old));
    assert!(refs.map.iter().all(|b| b.old < src_len));
    let old = &data[data.len() - r.remaining()..];
    // The region sits at `pos * 977` in OLD and `pos * 1009` in NEW (any offsets will do:
    // prediction only reads the region's bytes).
    let (at_old, at_new) = (pos * 977, pos * 1009);
    let whole = refs.predict_region(old, at_old, at_new);
    assert_eq!(whole.len(), old.len());
    let out = refs.predict_blocks(old, at_old, at_new, block);
    assert_eq!(out, whole, "block-wise prediction differs (block {block})");
}
