//! Stream encoders of the patch writer (feature `diff`): one zstd frame, one raw LZMA2
//! stream, one bzip2 stream, and the zero-run coding of the diff stream (format section 4.1).
//! Each sits beside its decoder in [`super::decode`]; the tests below run them against each
//! other and against a naive reading of the format text.

use crate::format::{lzma_dict_size, put_varint, ZERO_RUN_BLOCK};

/// One zstd frame with the window capped to `window_log`.
pub(crate) fn compress_zstd(data: &[u8], level: i32, window_log: u8) -> Vec<u8> {
    let mut c = zstd::bulk::Compressor::new(level).expect("zstd: level was range-checked");
    c.set_parameter(zstd::zstd_safe::CParameter::WindowLog(u32::from(
        window_log,
    )))
    .expect("zstd: window log was range-checked");
    c.compress(data)
        .expect("zstd: compressing into a growable buffer cannot fail")
}

/// The zero-run coding of a diff stream (format section 4.1): blocks of at most
/// [`ZERO_RUN_BLOCK`] bytes, each written as its number of (zero run, nonzero run) pairs, the
/// pairs, then the nonzero bytes. Runs are maximal, so every literal byte is nonzero.
pub(crate) fn zero_runs(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() / 4 + 16);
    let mut pairs = Vec::new();
    let mut lits = Vec::new();
    for block in data.chunks(ZERO_RUN_BLOCK) {
        pairs.clear();
        lits.clear();
        let mut n = 0u64;
        let mut i = 0;
        while i < block.len() {
            let z = block[i..].iter().take_while(|&&b| b == 0).count();
            i += z;
            let l = block[i..].iter().take_while(|&&b| b != 0).count();
            put_varint(&mut pairs, z as u64);
            put_varint(&mut pairs, l as u64);
            lits.extend_from_slice(&block[i..i + l]);
            i += l;
            n += 1;
        }
        put_varint(&mut out, n);
        out.extend_from_slice(&pairs);
        out.extend_from_slice(&lits);
    }
    out
}

/// What an LZMA2 stream holds, for its literal and position context bits (`lc`, `pb`; `lp` is
/// always 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Model {
    /// Bytes of any kind (extra stream, manifest): LZMA's defaults, lc 3 pb 2.
    Bytes,
    /// The diff stream's zero-run coding, mostly run lengths and few literals: lc 0 pb 0.
    Sparse,
    /// The control stream's varints, whose bytes depend little on the previous byte and not
    /// on alignment: lc 1 pb 0 (measured, in bytes: js-bundle-big 65,649 -> 64,720,
    /// shared-lib-big 287,571 -> 285,012, executable-big 563,834 -> 560,898).
    Controls,
}

/// One raw LZMA2 stream (ended by its end marker) with the dictionary of `window_log`.
///
/// The zstd-style level maps to LZMA match-finder effort, measured on real diff streams: 20 and
/// above is preset 9 "extreme" (nice length 273, depth 512: the smallest, about 1.7 MB/s);
/// 17..=19 keeps nice length 273 (long zero runs of diff streams want it) with depth 16: 2-4%
/// larger and about 2x faster; 10..=16 nice 128, depth 16; below, preset `level / 2`.
/// `model` sets the literal and position context bits (the decoder reads them from the
/// stream, so any choice decodes).
pub(crate) fn compress_lzma(data: &[u8], level: i32, window_log: u8, model: Model) -> Vec<u8> {
    use liblzma::stream::{Action, Filters, LzmaOptions, Status, Stream, PRESET_EXTREME};
    let (preset, tune) = match level {
        20.. => (9 | PRESET_EXTREME, None),
        17..=19 => (9, Some((273, 16))),
        10..=16 => (9, Some((128, 16))),
        _ => ((level / 2).clamp(0, 9) as u32, None),
    };
    let mut opts = LzmaOptions::new_preset(preset).expect("lzma: preset is in range");
    opts.dict_size(lzma_dict_size(window_log));
    if let Some((nice, depth)) = tune {
        opts.nice_len(nice).depth(depth);
    }
    let (lc, pb) = match model {
        Model::Bytes => (3, 2),
        Model::Sparse => (0, 0),
        Model::Controls => (1, 0),
    };
    opts.literal_context_bits(lc).position_bits(pb);
    let mut f = Filters::new();
    f.lzma2(&opts);
    let mut st = Stream::new_raw_encoder(&f).expect("lzma: valid LZMA2 options");
    let mut out: Vec<u8> = Vec::with_capacity(data.len() / 4 + 4096);
    let mut input = data;
    loop {
        if out.capacity() - out.len() < 4096 {
            out.reserve(out.capacity().max(4096));
        }
        let before = st.total_in();
        let status = st
            .process_vec(input, &mut out, Action::Finish)
            .expect("lzma: encoding into memory cannot fail");
        input = &input[(st.total_in() - before) as usize..];
        if status == Status::StreamEnd {
            return out;
        }
    }
}

/// One bzip2 stream, 900 kB blocks.
pub(crate) fn compress_bzip2(data: &[u8]) -> Vec<u8> {
    use std::io::Read as _;
    let mut out = Vec::new();
    bzip2::read::BzEncoder::new(data, bzip2::Compression::best())
        .read_to_end(&mut out)
        .expect("bzip2: encoding from memory cannot fail");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::io::Read;

    /// Naive inverse of [`zero_runs`], straight from the format text.
    fn expand(mut t: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        while !t.is_empty() {
            let mut r = crate::format::Reader::new(t, "runs");
            let n = r.varint().unwrap();
            let pairs: Vec<_> = (0..n)
                .map(|_| (r.varint().unwrap(), r.varint().unwrap()))
                .collect();
            let mut block = Vec::new();
            for (z, l) in pairs {
                block.resize(block.len() + z as usize, 0);
                let lit = r.bytes(l as usize).unwrap();
                assert!(lit.iter().all(|&b| b != 0), "literal runs are maximal");
                block.extend_from_slice(lit);
            }
            assert!(!block.is_empty() && block.len() <= ZERO_RUN_BLOCK);
            out.extend_from_slice(&block);
            t = &t[t.len() - r.remaining()..];
        }
        out
    }

    proptest! {
        #[test]
        fn zero_runs_round_trip(
            data in prop::collection::vec(prop_oneof![Just(0u8), any::<u8>()], 0..5000),
            repeat in 1usize..40,
        ) {
            // Repeating the input crosses block boundaries at every phase.
            let data = data.repeat(repeat);
            prop_assert_eq!(expand(&zero_runs(&data)), data);
        }
    }

    #[test]
    fn zero_runs_edges() {
        for data in [
            vec![],
            vec![0u8; ZERO_RUN_BLOCK],
            vec![0u8; ZERO_RUN_BLOCK + 1],
            vec![7u8; ZERO_RUN_BLOCK * 2 + 3],
            (0..ZERO_RUN_BLOCK * 3).map(|i| (i % 2) as u8).collect(),
        ] {
            assert_eq!(expand(&zero_runs(&data)), data, "len {}", data.len());
        }
        // A sparse stream shrinks to its nonzero bytes plus a few bytes per run and block.
        let mut sparse = vec![0u8; 1 << 20];
        sparse[1000] = 3;
        assert!(zero_runs(&sparse).len() <= 16 * 5 + 4);
    }

    /// The applier's decoders invert the writer's encoders (the naive oracle above checks the
    /// zero-run coding against the format text; this checks the code that applies it).
    #[test]
    fn decoders_invert_encoders() {
        use crate::codec::decode::{DiffSource, Stream};
        use crate::format::{CODEC_BZIP2, CODEC_LZMA2, CODEC_ZSTD};
        let mut data = vec![0u8; 300_000];
        for (i, b) in data.iter_mut().enumerate() {
            if i % 97 < 5 {
                *b = (i * 31 % 251) as u8 + 1;
            }
        }
        for (codec, bytes) in [
            (CODEC_ZSTD, compress_zstd(&data, 3, 20)),
            (CODEC_LZMA2, compress_lzma(&data, 6, 20, Model::Sparse)),
            (CODEC_BZIP2, compress_bzip2(&data)),
        ] {
            let mut s = Stream::open(&bytes, 0, bytes.len() as u64, codec, 20, "test").unwrap();
            let mut out = Vec::new();
            s.read_to_end(&mut out).unwrap();
            assert_eq!(out, data, "codec {codec}");
        }
        let runs = zero_runs(&data);
        let s = Stream::open(&runs, 0, runs.len() as u64, 0, 20, "test").unwrap();
        let mut d = DiffSource::new(s, true);
        // Added onto a base, in pieces of awkward sizes that cut runs anywhere.
        let base: Vec<u8> = (0..data.len()).map(|i| (i * 7 + 3) as u8).collect();
        let mut out = base.clone();
        let mut scratch = vec![0u8; 1000];
        let mut at = 0;
        for k in [1, 999, 3, 1000, 17].iter().cycle() {
            let end = (at + k).min(out.len());
            d.add_to(&mut out[at..end], &mut scratch).unwrap();
            at = end;
            if at == out.len() {
                break;
            }
        }
        d.expect_end().unwrap();
        let want: Vec<u8> = base
            .iter()
            .zip(&data)
            .map(|(b, x)| b.wrapping_add(*x))
            .collect();
        assert_eq!(out, want);
    }
}
