//! Deflate token structures (FORMAT.md section 4.3.1), both directions, against each other.
//!
//! Input: `[split u16]` then bytes. The whole tail is read as a raw deflate stream: when the
//! parser accepts it, the stream must inflate (miniz_oxide) to exactly the plain length it
//! reports, and the encoder must make exactly the stream's bytes again from the structure
//! and the plain bytes. Then the tail is cut at `split` into a structure and plain bytes for
//! the encoder (what a hostile patch hands the applier): no panic, it makes as many bytes as
//! it says, and when its output parses, that output is made again exactly from its own
//! structure and plain bytes.

use bundelta::format::tokens::{parse, Encoder};

fn encode(s: &[u8], p: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut e = Encoder::new(s, s.len() as u64);
    let mut put = |b: &[u8]| {
        out.extend_from_slice(b);
        Ok(())
    };
    e.push(p, &mut put).ok()?;
    let n = e.finish(&mut put).ok()?;
    assert_eq!(n, out.len() as u64);
    Some(out)
}

fn structure(c: &[u8], max_plain: u64) -> Option<(Vec<u8>, u64, u64)> {
    let mut s = Vec::new();
    let mut input = c;
    let p = parse(&mut input, c.len() as u64, max_plain, &mut |b| {
        s.extend_from_slice(b);
        Ok(())
    })
    .ok()?;
    assert_eq!(p.structure, s.len() as u64);
    Some((s, p.comp, p.plain))
}

pub fn run(data: &[u8]) {
    if data.len() < 2 {
        return;
    }
    let split = usize::from(u16::from_le_bytes([data[0], data[1]]));
    let tail = &data[2..];
    if let Some((s, comp, plain)) = structure(tail, 1 << 20) {
        let c = &tail[..comp as usize];
        let p = miniz_oxide::inflate::decompress_to_vec(c).expect("a parsed stream inflates");
        assert_eq!(p.len() as u64, plain);
        assert_eq!(
            encode(&s, &p).as_deref(),
            Some(c),
            "the stream is made again exactly"
        );
    }
    let cut = split.min(tail.len());
    let (s, p) = tail.split_at(cut);
    if let Some(out) = encode(s, p) {
        // The structure does not say which bytes a match copies (the plain bytes do not have
        // to agree with it: the output's digest refuses what is wrong), so the check is that
        // the output, parsed again, is made again exactly.
        if let Some((s2, comp, _)) = structure(&out, 1 << 22) {
            assert_eq!(comp, out.len() as u64, "the whole output is the stream");
            let back = miniz_oxide::inflate::decompress_to_vec(&out).expect("inflates");
            assert_eq!(encode(&s2, &back).as_deref(), Some(&out[..]));
        }
    }
}
