//! `Header::decode` on the first 64 bytes; when it succeeds, `Manifest::decode` on the rest
//! (the manifest body as it is *after* decompression). Neither may panic, and a manifest that
//! decodes must re-encode to a body that decodes to the same manifest.

use bundelta::format::{Header, Manifest, HEADER_LEN};

/// Fuzz body.
pub fn run(data: &[u8]) {
    let (head, rest) = data.split_at(data.len().min(HEADER_LEN));
    let Ok(header) = Header::decode(head) else {
        return;
    };
    // Header round trip: decode(encode(h)) == h.
    assert_eq!(Header::decode(&header.encode()).unwrap(), header);
    let Ok(m) = Manifest::decode(rest, &header) else {
        return;
    };
    m.validate(&header)
        .expect("a decoded manifest must pass validate");
    let again = m.encode();
    let m2 = Manifest::decode(&again, &header).expect("re-encoded manifest must decode");
    assert_eq!(m, m2, "manifest changed through encode/decode");
    assert_eq!(again, m2.encode(), "encoding is not deterministic");
}
