//! The inflate transform (delta transform 2) on hostile recipes and controls. A single-file
//! patch is built around the input (raw streams, a correct base digest, header flag
//! FLAG_INFLATE), so every byte reaches the recipe readers, the source's expansion into a
//! scratch file and the recompression of the target's streams.
//!
//! Input: `[digest of NEW, 32 bytes][old_len u16][old][size u16][diff_len u16][diff][extra_len u16][extra][ctrl...]`
//! (the control stream: the source recipe, the target recipe, then the controls).
//!
//! Checked: no panic; afterwards the directory holds OLD, the patch and, exactly when apply
//! returned Ok, the output (no scratch or staging file is left); an Ok output hashes to the
//! reported digest; OLD is never modified. The seed made from a real patch applies (its first
//! 32 bytes are the digest of the file it makes).

use bundelta::format::{
    put_varint, Header, CODEC_RAW, FLAG_INFLATE, TRANSFORM_INFLATE, VERSION_MINOR,
};
use bundelta::Patcher;

use super::{assert_only, scratch, with_trailer, write, Bytes, LIMIT};

/// The patch bytes for one input, and OLD.
pub fn build(data: &[u8]) -> (Vec<u8>, Vec<u8>, u64) {
    let mut b = Bytes::new(data);
    let digest = b.take_padded(32);
    let old_len = b.u16() as usize;
    let old = b.take_padded(old_len);
    let size = u64::from(b.u16());
    let dl = b.u16() as usize;
    let diff = b.take(dl).to_vec();
    let xl = b.u16() as usize;
    let extra = b.take(xl).to_vec();
    let ctrl = b.rest().to_vec();
    // Full-form manifest of one file: modify from OLD, transform 2.
    let mut m = vec![0u8];
    m.extend_from_slice(&digest);
    m.extend_from_slice(blake3::hash(blake3::hash(&old).as_bytes()).as_bytes());
    put_varint(&mut m, 0); // old records
    put_varint(&mut m, 1); // entries
    put_varint(&mut m, 0); // shared
    put_varint(&mut m, 0); // suffix ""
    m.extend_from_slice(&[1, 0]); // file, not executable
    put_varint(&mut m, size);
    m.push(3); // modify
    put_varint(&mut m, 0); // n sources: the old file at the same path
    put_varint(&mut m, old.len() as u64);
    m.push(TRANSFORM_INFLATE);
    put_varint(&mut m, 0); // deleted
    let h = Header {
        minor: VERSION_MINOR,
        flags: FLAG_INFLATE,
        window_log: 20,
        codecs: [CODEC_RAW; 3],
        manifest_len: m.len() as u64,
        manifest_raw_len: m.len() as u64,
        new_total: size,
        stream_lens: [ctrl.len() as u64, diff.len() as u64, extra.len() as u64],
    };
    let mut body = h.encode();
    body.extend_from_slice(&m);
    body.extend_from_slice(&ctrl);
    body.extend_from_slice(&diff);
    body.extend_from_slice(&extra);
    (with_trailer(&body), old, size)
}

pub fn run(data: &[u8]) {
    let (patch, old, _) = build(data);
    let dir = scratch();
    let (po, pp, out) = (
        dir.path().join("old"),
        dir.path().join("p.bdp"),
        dir.path().join("out"),
    );
    write(&po, &old);
    write(&pp, &patch);
    let mut p = Patcher::new();
    p.memory_limit(LIMIT).output_limit(LIMIT);
    let r = p.apply(&po, &pp, &out);
    if super::debug() {
        eprintln!("inflate: {:?}", r.as_ref().map(|_| ()));
    }
    match r {
        Ok(rep) => {
            let got = std::fs::read(&out).unwrap();
            assert_eq!(blake3::hash(&got).as_bytes(), &rep.digest);
            assert_only(dir.path(), &["old", "p.bdp", "out"], "inflate (ok)");
        }
        Err(_) => assert_only(dir.path(), &["old", "p.bdp"], "inflate (error)"),
    }
    assert_eq!(std::fs::read(&po).unwrap(), old, "OLD was modified");
}
