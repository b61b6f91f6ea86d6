//! The header (format section 2): fixed bytes and shortest-form varint lengths.

use super::{
    put_varint, varint_len, Reader, CODEC_BZIP2, FLAG_BASE_TAGS, FLAG_DIRECTORY,
    FLAG_RELATIVE_SIZES, FLAG_SIGNED, KNOWN_FLAGS, MAGIC, MAX_HEADER_LEN, MAX_WINDOW_LOG,
    MIN_WINDOW_LOG, SIGNATURE_LEN, TRAILER_LEN, VERSION_MAJOR,
};
use crate::error::{Error, Result};

/// Header of a patch (format section 2): fixed fields and varint lengths.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// Minor version found (major is always [`VERSION_MAJOR`]).
    pub minor: u8,
    /// [`FLAG_DIRECTORY`], [`FLAG_MANIFEST_LZMA`](super::FLAG_MANIFEST_LZMA) and [`FLAG_SIGNED`]
    /// bits.
    pub flags: u32,
    /// Largest zstd window log of any frame in the patch; decoders are capped to it.
    pub window_log: u8,
    /// Codec of the control, diff and extra streams ([`CODEC_RAW`](super::CODEC_RAW) ..
    /// [`CODEC_BZIP2`]).
    pub codecs: [u8; 3],
    /// Compressed length of the manifest frame.
    pub manifest_len: u64,
    /// Decompressed length of the manifest.
    pub manifest_raw_len: u64,
    /// Sum of the sizes of all files of the new bundle.
    pub new_total: u64,
    /// Stored lengths of the control, diff and extra streams.
    pub stream_lens: [u64; 3],
}

impl Header {
    /// Whether the bundle is a directory.
    pub fn is_directory(&self) -> bool {
        self.flags & FLAG_DIRECTORY != 0
    }

    /// Whether the manifest carries base tags ([`FLAG_BASE_TAGS`]).
    pub fn has_base_tags(&self) -> bool {
        self.flags & FLAG_BASE_TAGS != 0
    }

    /// Whether the sizes of copy and modify entries are written relative to their sources'
    /// ([`FLAG_RELATIVE_SIZES`]).
    pub fn has_relative_sizes(&self) -> bool {
        self.flags & FLAG_RELATIVE_SIZES != 0
    }

    /// Whether the patch carries a signature block.
    pub fn is_signed(&self) -> bool {
        self.flags & FLAG_SIGNED != 0
    }

    /// Length of the encoded header.
    pub fn encoded_len(&self) -> usize {
        4 + 2
            + varint_len(self.flags.into())
            + 1
            + 3
            + [self.manifest_len, self.manifest_raw_len, self.new_total]
                .iter()
                .chain(&self.stream_lens)
                .map(|&v| varint_len(v))
                .sum::<usize>()
    }

    /// Length of the three streams together, or `None` on overflow.
    pub fn data_len(&self) -> Option<u64> {
        self.stream_lens[0]
            .checked_add(self.stream_lens[1])?
            .checked_add(self.stream_lens[2])
    }

    /// Offset of the manifest from the start of the patch.
    pub fn manifest_offset(&self) -> u64 {
        self.encoded_len() as u64
    }

    /// Offset of stream `i` (0 control, 1 diff, 2 extra; 3 is the end of the streams) from the
    /// start of the patch. Only meaningful once [`Header::patch_len`] has been checked.
    pub fn stream_offset(&self, i: usize) -> u64 {
        self.manifest_offset() + self.manifest_len + self.stream_lens[..i].iter().sum::<u64>()
    }

    /// Offset of the signature block (or of the trailer, when unsigned).
    pub fn signature_offset(&self) -> u64 {
        self.stream_offset(3)
    }

    /// Total patch length implied by the header, or `None` on overflow.
    pub fn patch_len(&self) -> Option<u64> {
        let sig = if self.is_signed() { SIGNATURE_LEN } else { 0 };
        ((self.encoded_len() + sig + TRAILER_LEN) as u64)
            .checked_add(self.manifest_len)?
            .checked_add(self.data_len()?)
    }

    /// Encode (format section 2).
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(MAX_HEADER_LEN);
        b.extend_from_slice(&MAGIC);
        b.push(VERSION_MAJOR);
        b.push(self.minor);
        put_varint(&mut b, self.flags.into());
        b.push(self.window_log);
        b.extend_from_slice(&self.codecs);
        for v in [self.manifest_len, self.manifest_raw_len, self.new_total] {
            put_varint(&mut b, v);
        }
        for &v in &self.stream_lens {
            put_varint(&mut b, v);
        }
        debug_assert_eq!(b.len(), self.encoded_len());
        b
    }

    /// Decode and range-check a header from the first bytes of a patch (at most
    /// [`MAX_HEADER_LEN`] are looked at; trailing bytes are ignored). The header's own length
    /// is [`Header::encoded_len`].
    pub fn decode(b: &[u8]) -> Result<Header> {
        if b.len() < 6 || b[0..4] != MAGIC {
            return Err(if b.len() >= 4 && b[0..4] != MAGIC {
                Error::corrupt(
                    "header",
                    "bad magic: this is not a bundelta patch".to_string(),
                )
            } else {
                Error::corrupt(
                    "header",
                    format!("patch is {} bytes, shorter than any header", b.len()),
                )
            });
        }
        if b[4] != VERSION_MAJOR {
            return Err(Error::Unsupported {
                what: "format major version",
                value: b[4].into(),
            });
        }
        let mut r = Reader::new(&b[..b.len().min(MAX_HEADER_LEN)], "header");
        r.bytes(6)?;
        // Canonical (shortest) varints only: a header has exactly one encoding.
        let canonical = |r: &mut Reader<'_>, field: &str| -> Result<u64> {
            let at = r.pos;
            let v = r.varint()?;
            if r.pos - at != varint_len(v) {
                return Err(Error::corrupt(
                    "header",
                    format!("{field} is not a shortest-form varint"),
                ));
            }
            Ok(v)
        };
        let flags = canonical(&mut r, "flags")?;
        if flags & !u64::from(KNOWN_FLAGS) != 0 {
            return Err(Error::Unsupported {
                what: "header flags",
                value: flags,
            });
        }
        if flags & u64::from(FLAG_BASE_TAGS) != 0 && flags & u64::from(FLAG_DIRECTORY) == 0 {
            return Err(Error::corrupt(
                "header",
                "base tags flag on a single-file patch",
            ));
        }
        let window_log = r.u8()?;
        if !(MIN_WINDOW_LOG..=MAX_WINDOW_LOG).contains(&window_log) {
            return Err(Error::corrupt(
                "header",
                format!("window log {window_log} outside {MIN_WINDOW_LOG}..={MAX_WINDOW_LOG}"),
            ));
        }
        let c = r.bytes(3)?;
        let codecs = [c[0], c[1], c[2]];
        if let Some(&c) = codecs.iter().find(|&&c| c > CODEC_BZIP2) {
            return Err(Error::Unsupported {
                what: "stream codec",
                value: c.into(),
            });
        }
        let manifest_len = canonical(&mut r, "manifest_len")?;
        let manifest_raw_len = canonical(&mut r, "manifest_raw_len")?;
        let new_total = canonical(&mut r, "new_total")?;
        let mut stream_lens = [0u64; 3];
        for (i, l) in stream_lens.iter_mut().enumerate() {
            *l = canonical(&mut r, ["ctrl_len", "diff_len", "extra_len"][i])?;
        }
        let h = Header {
            minor: b[5],
            flags: flags as u32,
            window_log,
            codecs,
            manifest_len,
            manifest_raw_len,
            new_total,
            stream_lens,
        };
        debug_assert_eq!(h.encoded_len(), r.pos);
        // A compressed manifest is never larger than its raw bytes (a writer stores it as it
        // is otherwise), so what the applier holds of it is bounded by `manifest_raw_len`.
        if manifest_len > manifest_raw_len {
            return Err(Error::corrupt(
                "header",
                format!(
                    "manifest_len {manifest_len} exceeds manifest_raw_len {manifest_raw_len} \
                     (a manifest that does not compress is stored as it is)"
                ),
            ));
        }
        if h.patch_len().is_none() {
            return Err(Error::corrupt("header", "section lengths overflow"));
        }
        Ok(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{CODEC_RAW, CODEC_ZSTD, MIN_HEADER_LEN};

    #[test]
    fn header_roundtrip_and_rejects() {
        let h = Header {
            minor: 0,
            flags: FLAG_DIRECTORY,
            window_log: 21,
            codecs: [CODEC_RAW, CODEC_ZSTD, CODEC_ZSTD],
            manifest_len: 10,
            manifest_raw_len: 20,
            new_total: 40,
            stream_lens: [1, 2, 3],
        };
        let b = h.encode();
        assert_eq!(b.len(), h.encoded_len());
        assert_eq!(b.len(), MIN_HEADER_LEN);
        assert_eq!(Header::decode(&b).unwrap(), h);
        let mut bad = b.clone();
        bad[4] = 1;
        assert!(matches!(
            Header::decode(&bad),
            Err(Error::Unsupported { .. })
        ));
        let mut bad = b.clone();
        bad[7] = 40;
        assert!(Header::decode(&bad).is_err());
        let undefined = Header {
            flags: (KNOWN_FLAGS + 1).next_power_of_two(), // the first undefined flag bit
            ..h.clone()
        };
        assert!(matches!(
            Header::decode(&undefined.encode()),
            Err(Error::Unsupported {
                what: "header flags",
                ..
            })
        ));
        // Base tags belong to directory patches only.
        let mut bad = b.clone();
        bad[6] = (FLAG_BASE_TAGS | (u32::from(bad[6]) & !FLAG_DIRECTORY)) as u8;
        assert!(Header::decode(&bad).is_err());
        let mut bad = b.clone();
        bad[9] = 9;
        assert!(matches!(
            Header::decode(&bad),
            Err(Error::Unsupported {
                what: "stream codec",
                ..
            })
        ));
        // Largest values: every varint at its longest, still within MAX_HEADER_LEN.
        let big = Header {
            flags: KNOWN_FLAGS,
            manifest_len: u64::MAX / 2,
            manifest_raw_len: u64::MAX,
            new_total: u64::MAX,
            stream_lens: [u64::MAX / 4; 3],
            ..h.clone()
        };
        assert!(big.encode().len() <= MAX_HEADER_LEN);
        assert!(Header::decode(&big.encode()).is_err(), "lengths overflow");
        for n in [0, 1, 5, 16] {
            assert!(Header::decode(&b[..n]).is_err());
        }
        for v in [0u64, 1, 127, 128, 16383, 16384, u64::MAX] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            assert_eq!(out.len(), varint_len(v), "{v}");
        }
    }
}
