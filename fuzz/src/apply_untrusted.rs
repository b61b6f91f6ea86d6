//! A whole patch file from the input, applied against the fixed OLD file or directory.
//!
//! The first input byte picks how the rest becomes a patch (`mode % 3`):
//! - 0: the bytes as they are (the trailer must match by itself: almost never, for mutations);
//! - 1: the bytes are the patch body; the blake3 trailer is recomputed and appended;
//! - 2: as 1, and the extra stream's length in the header is first fixed up so the header's
//!   section lengths add up to the file length (mutations that grow or shrink a real patch stay
//!   well-formed and reach the manifest and stream parsers).
//!
//! Bit 0x40 of the mode byte also runs `apply_in_place` on a copy of OLD.
//!
//! Checked: no panic; the scratch directory holds only the patch and, exactly when apply
//! returned Ok, the output (no staging leftovers); an Ok output has the reported digest and
//! `verify` agrees with it; the same bytes applied from a reader (`open_reader`) are never
//! accepted where the file was refused, give the same output where both succeed, and leave
//! nothing when refused; OLD is never modified; an in-place apply leaves the target at
//! the old digest on error and at the patch's new digest on success, with no side files.

use std::fs;
use std::path::Path;

use bundelta::format::{Header, SIGNATURE_LEN};
use bundelta::{bundle_digest, InPlaceOutcome, Patcher};

use super::{
    assert_only, fixture, materialize_old_dir, names, scratch, with_trailer, write, LIMIT,
};

/// Turn the input into patch bytes according to the mode byte.
pub fn patch_bytes(mode: u8, rest: &[u8]) -> Vec<u8> {
    match mode % 3 {
        0 => rest.to_vec(),
        1 => with_trailer(rest),
        _ => {
            let mut body = rest.to_vec();
            fix_lengths(&mut body);
            with_trailer(&body)
        }
    }
}

/// Set the extra stream length so that the header's sections add up to `body.len() + 32`
/// (re-encoding the header, whose own length may change with it).
fn fix_lengths(body: &mut Vec<u8>) {
    for _ in 0..3 {
        let Ok(mut h) = Header::decode(body) else {
            return;
        };
        let sig = if h.is_signed() { SIGNATURE_LEN } else { 0 } as u64;
        let Some(extra) = (body.len() as u64)
            .checked_sub(h.encoded_len() as u64 + sig)
            .and_then(|avail| avail.checked_sub(h.manifest_len))
            .and_then(|avail| avail.checked_sub(h.stream_lens[0]))
            .and_then(|avail| avail.checked_sub(h.stream_lens[1]))
        else {
            return;
        };
        if h.stream_lens[2] == extra {
            return;
        }
        let old_len = h.encoded_len();
        h.stream_lens[2] = extra;
        let mut b = h.encode();
        b.extend_from_slice(&body[old_len..]);
        *body = b;
    }
}

fn patcher() -> Patcher {
    let mut p = Patcher::new();
    p.memory_limit(LIMIT).output_limit(LIMIT);
    p
}

/// [`patcher`] with the streams decoded on the applying thread.
fn serial() -> Patcher {
    let mut p = patcher();
    p.parallel(false);
    p
}

/// Fuzz body.
pub fn run(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let patch = patch_bytes(mode, rest);
    let fx = fixture();
    let root = scratch();
    let tmp = root.path().join("tmp");
    fs::create_dir(&tmp).unwrap();
    let p = tmp.join("p.bdp");
    write(&p, &patch);
    let directory = Header::decode(&patch)
        .map(|h| h.is_directory())
        .unwrap_or(mode & 0x80 != 0);
    let old = fx.old(directory);
    let out = tmp.join("out");

    let patcher = patcher();
    let result = patcher.apply(old, &p, &out);
    if super::debug() {
        match &result {
            Ok(r) => eprintln!("apply_untrusted: Ok {} files", r.files),
            Err(e) => eprintln!("apply_untrusted: Err {e}"),
        }
    }
    match &result {
        Ok(report) => {
            assert_only(&tmp, &["p.bdp", "out"], "after Ok apply");
            assert!(out.exists(), "apply returned Ok but OUT is missing");
            let d = bundle_digest(&out).expect("digest of OUT");
            assert_eq!(d, report.digest, "OUT does not hash to the reported digest");
            // The verify runs serially: the streams decoded on the applying thread must
            // give what the parallel apply gave.
            let v = serial().verify(&p, Some(old));
            match v {
                Ok(Some(vr)) => assert_eq!(&vr, report, "verify disagrees with apply"),
                other => panic!("apply Ok but verify gave {other:?}"),
            }
        }
        Err(e) => {
            assert_only(&tmp, &["p.bdp"], "after failed apply");
            // Decoding the streams serially refuses it too, with the same error (each coded
            // stream is read through the same fills on either path).
            match serial().apply(old, &p, &out) {
                Ok(r) => panic!("parallel apply refused ({e}) what a serial one accepted: {r:?}"),
                Err(e2) => assert_eq!(e.to_string(), e2.to_string(), "serial vs parallel"),
            }
            assert_only(&tmp, &["p.bdp"], "after failed serial apply");
        }
    }
    // The same bytes read once from a reader ([`Patcher::open_reader`]), whose checksum and
    // signature are checked only at the end: never Ok where the file apply refused, the same
    // output where both succeed, nothing left behind when refused. It may refuse what the
    // file apply took only for memory (it holds the control and diff streams).
    let out2 = tmp.join("out2");
    let streamed = patcher
        .open_reader(std::io::Cursor::new(patch.clone()), "stream")
        .and_then(|pt| patcher.apply_patch(old, pt, &out2));
    match (&streamed, &result) {
        (Ok(s), Ok(f)) => {
            assert_eq!(s, f, "streamed apply disagrees with the file apply");
            assert_eq!(bundle_digest(&out2).expect("digest of OUT2"), f.digest);
            if out2.is_dir() {
                fs::remove_dir_all(&out2).unwrap();
            } else {
                fs::remove_file(&out2).unwrap();
            }
        }
        (Ok(s), Err(e)) => {
            panic!("a streamed apply accepted ({s:?}) what the file apply refused: {e}")
        }
        (Err(e), Ok(_)) => assert!(
            matches!(e, bundelta::Error::LimitExceeded { .. }),
            "a streamed apply refused what the file apply took: {e}"
        ),
        (Err(_), Err(_)) => {}
    }
    assert!(!out2.exists(), "a refused streamed apply left OUT2");
    if super::debug() {
        eprintln!(
            "apply_untrusted: streamed {:?}",
            streamed.as_ref().map(|r| r.files)
        );
    }

    // `info`'s walk over the recipes in the control stream: never a panic, and it reads
    // through every patch that applied.
    if let Ok(mut opened) = patcher.open(&p) {
        if opened.manifest().is_none() {
            let _ = opened.bind(old);
        }
        let walk = opened.remade_streams();
        if result.is_ok() {
            assert!(
                matches!(walk, Ok(Some(_))),
                "apply Ok but the recipe walk gave {walk:?}"
            );
        }
    }
    assert_only(root.path(), &["tmp"], "scratch root");
    fx.check_untouched();

    if mode & 0x40 != 0 {
        in_place(&tmp, &p, directory, result.as_ref().ok().map(|r| r.digest));
    }
}

/// Apply in place to a fresh copy of OLD and check the target's state afterwards.
fn in_place(tmp: &Path, patch: &Path, directory: bool, apply_digest: Option<[u8; 32]>) {
    let target = tmp.join("target");
    if directory {
        materialize_old_dir(&target);
    } else {
        write(&target, super::fixture::OLD_FILE);
    }
    let fx = fixture();
    let old_digest = if directory {
        fx.dir_digest
    } else {
        fx.file_digest
    };
    let before = names(tmp);
    let r = patcher().apply_in_place(&target, patch);
    let now = bundle_digest(&target).expect("digest of in-place target");
    assert_eq!(
        names(tmp),
        before,
        "in-place apply left side files behind ({r:?})"
    );
    match r {
        Ok(rep) => {
            let m = Patcher::new()
                .memory_limit(LIMIT)
                .output_limit(LIMIT)
                .open(patch)
                .expect("patch applied but won't open");
            assert_eq!(now, m.new_digest(), "in-place Ok but target is not NEW");
            if let (InPlaceOutcome::Applied(a), Some(d)) = (&rep.outcome, apply_digest) {
                assert_eq!(a.digest, d);
            }
        }
        Err(e) => {
            assert_eq!(
                now, old_digest,
                "in-place apply failed ({e}) but changed the target"
            );
            assert!(
                apply_digest.is_none(),
                "apply succeeded but in-place apply failed: {e}"
            );
        }
    }
}
