//! `Header::decode` on the input; when it succeeds, `Manifest::decode` on the rest
//! (the manifest body as it is *after* decompression), in both forms: the relative form is
//! resolved against a small fixed OLD listing. Nothing may panic; a manifest that decodes must
//! re-encode to bytes that decode to the same manifest (the relative form: the same entries).
//! Decoding (and summarizing) must hold no more heap than the header declares for it
//! ([`Budget::for_manifest`]) plus [`SLACK`], measured by the target binary's counting
//! allocator ([`super::heap`]).

use bundelta::format::{
    listing_digest, listing_tag, BaseTags, Budget, EntryKind, FileOp, Header, ListEntry, ListKind,
    Manifest,
};

/// Heap decoding may hold besides its budget: an error message (it quotes a path of at most
/// 4 KiB, escaped) and the listing digest's record buffer.
pub const SLACK: u64 = 64 << 10;

fn listing() -> Vec<ListEntry> {
    let e = |p: &str, kind: ListKind| ListEntry {
        path: p.to_string(),
        kind,
    };
    vec![
        e("a", ListKind::Dir),
        e(
            "a/b.js",
            ListKind::File {
                exec: false,
                size: 3,
            },
        ),
        e(
            "a/c",
            ListKind::Symlink {
                target: "b.js".into(),
            },
        ),
        e(
            "d.bin",
            ListKind::File {
                exec: true,
                size: 0,
            },
        ),
    ]
}

/// Fuzz body.
pub fn run(data: &[u8]) {
    let Ok(header) = Header::decode(data) else {
        return;
    };
    let rest = &data[header.encoded_len()..];
    // Header round trip both ways: decode(encode(h)) == h, and (shortest-form varints only)
    // encode(decode(bytes)) == the bytes decoded.
    assert_eq!(Header::decode(&header.encode()).unwrap(), header);
    assert_eq!(header.encode(), &data[..header.encoded_len()]);
    let list = listing();
    // Let relative manifests reach the item parser: patch in the right listing digest.
    let mut body = rest.to_vec();
    if body.len() >= 97 && body[0] == 1 && data.len() % 2 == 0 {
        body[65..97].copy_from_slice(&listing_digest(&list));
    }
    let declared = Budget::for_manifest(&header).limit().saturating_add(SLACK);
    let (_, peak) = super::heap::peak_of(|| Manifest::summarize_relative(&body, &header));
    assert!(
        peak <= declared,
        "summarize took {peak} bytes, header declares {declared}"
    );
    let (_, peak) = super::heap::peak_of(|| Manifest::relative_prefix(&body, &header));
    assert!(
        peak <= declared,
        "prefix took {peak} bytes, header declares {declared}"
    );
    let (m, peak) = super::heap::peak_of(|| Manifest::decode_with_old(&body, &header, Some(&list)));
    assert!(
        peak <= declared,
        "decoding took {peak} bytes, header declares {declared}"
    );
    let Ok(m) = m else {
        return;
    };
    m.validate(&header)
        .expect("a decoded manifest must pass validate");
    // With header flag bit 5 (format 2.2) sizes are written relative to their sources: the
    // re-encoding must use the coding the header declares.
    let rel_sizes = header.has_relative_sizes();
    let again = m.encode_sized(rel_sizes);
    // The full form of a relative manifest may need more than the header declared for the
    // relative bytes: the round trip is checked without a budget.
    let m2 = Manifest::decode_with_budget(&again, &header, None, &mut Budget::unlimited())
        .expect("re-encoded manifest must decode");
    assert_eq!(m, m2, "manifest changed through encode/decode");
    assert_eq!(
        again,
        m2.encode_sized(rel_sizes),
        "encoding is not deterministic"
    );
    if header.is_directory() {
        // Tags of the listing itself, as a writer would make them (no contents: sizes only).
        let hashes: Vec<_> = list.iter().map(|e| listing_tag(e, None)).collect();
        let tags = BaseTags::from_hashes(m.base_tags.bits, &hashes);
        if let Some(rel) = m.encode_relative_sized(&list, &tags, rel_sizes) {
            // Old records take their sizes from the listing in this form, so an arbitrary
            // manifest need not survive it; decoding must still never panic.
            // With relative sizes (FORMAT.md 3.3) a size is resolved against the listing's: the
            // entries survive only when the manifest's old-record sizes and same-path base
            // sizes are the listing's.
            let listed = |p: &str| {
                list.iter()
                    .find(|e| e.path == p)
                    .and_then(|e| match e.kind {
                        ListKind::File { size, .. } => Some(size),
                        _ => None,
                    })
            };
            let sizes_hold = !rel_sizes
                || (m.old_files.iter().all(|f| listed(&f.path) == Some(f.size))
                    && m.entries.iter().all(|e| match &e.kind {
                        EntryKind::File {
                            op:
                                FileOp::Delta {
                                    sources, base_size, ..
                                },
                            ..
                        } if sources.is_empty() => listed(&e.path).is_none_or(|s| s == *base_size),
                        _ => true,
                    }));
            let m3 = Manifest::decode_with_old(&rel, &header, Some(&list));
            if let (Ok(m3), true) = (m3, sizes_hold) {
                assert_eq!(
                    m.entries, m3.entries,
                    "entries changed through the relative form"
                );
            }
        }
    }
}
