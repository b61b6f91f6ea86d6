//! The update index (FORMAT.md section 9) on hostile bytes: `Index::parse` never panics and
//! bounds what it accepts; an accepted index writes bytes that parse back to itself; route
//! planning over it (every client position to every target) never panics, ends, and plans
//! only steps the index lists, whose sizes add up to the route's; the signature check on a
//! split of the input never panics and never passes.
//!
//! Input: the bytes of `index.json`; the last 140 bytes also serve as a signature file.

use bundelta::release::{plan, sign_index, verify_index, Index, Step, MAX_RELEASES};
use bundelta::SecretKey;

pub fn run(data: &[u8]) {
    let key = SecretKey::from_bytes([0x42; 32]);
    let split = data.len().saturating_sub(140);
    assert!(verify_index(&data[..split], &data[split..], &key.public_key()).is_err());
    let Ok(ix) = Index::parse(data) else {
        return;
    };
    assert!(ix.releases.len() <= MAX_RELEASES);
    let bytes = ix.to_bytes();
    assert_eq!(Index::parse(&bytes).expect("written index parses"), ix);
    // A valid signature over what the writer wrote verifies.
    let sig = sign_index(&bytes, &key);
    verify_index(&bytes, sig.as_bytes(), &key.public_key()).expect("own signature");
    let n = ix.releases.len().min(12);
    for target in 0..n {
        for from in std::iter::once(None).chain((0..n).map(Some)) {
            let Some(route) = plan(&ix, from, target) else {
                continue;
            };
            assert!(!ix.releases[target].yanked);
            let mut sum = 0u64;
            for s in &route.steps {
                sum = sum.saturating_add(s.blob().bytes);
                let r = &ix.releases[s.to()];
                assert!(!r.yanked, "a route enters a yanked release");
                match s {
                    Step::Patch { from, blob, .. } => assert!(r.patches.iter().any(|p| {
                        p.blake3 == blob.blake3 && p.from == ix.releases[*from].digest
                    })),
                    Step::Full { blob, .. } => assert_eq!(blob, &r.full),
                    _ => unreachable!("the steps this build plans"),
                }
            }
            assert_eq!(sum, route.bytes);
            assert_eq!(
                route.steps.last().map(|s| s.to()),
                (from != Some(target)).then_some(target)
            );
        }
    }
}
