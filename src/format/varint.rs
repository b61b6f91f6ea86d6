//! Varints (unsigned LEB128 and zigzag), length-prefixed strings, and [`Reader`], the
//! bounds-checked cursor every decoder reads untrusted bytes with.

use super::Hash;
use crate::error::{Error, Result};

/// Bytes of `v` as an unsigned LEB128 varint.
pub fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// Append `v` as an unsigned LEB128 varint.
pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Append a signed value as a zigzag LEB128 varint.
pub fn put_svarint(out: &mut Vec<u8>, v: i64) {
    put_varint(out, ((v << 1) ^ (v >> 63)) as u64);
}

/// Bounds-checked cursor over untrusted bytes.
#[derive(Debug)]
pub struct Reader<'a> {
    pub(super) buf: &'a [u8],
    pub(super) pos: usize,
    pub(super) what: &'static str,
}

impl<'a> Reader<'a> {
    /// A reader over `buf`; `what` names the section in error messages.
    pub fn new(buf: &'a [u8], what: &'static str) -> Reader<'a> {
        Reader { buf, pos: 0, what }
    }

    /// Bytes not yet consumed.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Whether everything was consumed.
    pub fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    fn eof(&self, need: &str) -> Error {
        Error::corrupt(
            self.what,
            format!("ends at byte {} while reading {need}", self.pos),
        )
    }

    /// Read one byte.
    pub fn u8(&mut self) -> Result<u8> {
        let b = *self.buf.get(self.pos).ok_or_else(|| self.eof("a byte"))?;
        self.pos += 1;
        Ok(b)
    }

    /// Read an unsigned LEB128 varint (at most 10 bytes, no overflow).
    pub fn varint(&mut self) -> Result<u64> {
        let mut v: u64 = 0;
        for i in 0..10 {
            let b = self.u8()?;
            let part = u64::from(b & 0x7f);
            if i == 9 && part > 1 {
                return Err(Error::corrupt(
                    self.what,
                    format!("varint overflows at byte {}", self.pos),
                ));
            }
            v |= part << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(Error::corrupt(
            self.what,
            format!("varint longer than 10 bytes at byte {}", self.pos),
        ))
    }

    /// Read a zigzag varint.
    #[cfg_attr(not(feature = "internals"), allow(dead_code))] // tests, fuzz targets
    pub fn svarint(&mut self) -> Result<i64> {
        let u = self.varint()?;
        Ok(((u >> 1) as i64) ^ -((u & 1) as i64))
    }

    /// Read a varint that must be at most `max`.
    pub fn varint_max(&mut self, max: u64, field: &str) -> Result<u64> {
        let v = self.varint()?;
        if v > max {
            return Err(Error::corrupt(
                self.what,
                format!("{field} is {v}, above the bound {max}"),
            ));
        }
        Ok(v)
    }

    /// Read `n` raw bytes.
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(self.eof(&format!("{n} bytes")));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    /// Read a 32-byte hash.
    pub fn hash(&mut self) -> Result<Hash> {
        let mut h = [0u8; 32];
        h.copy_from_slice(self.bytes(32)?);
        Ok(h)
    }

    /// Read a length-prefixed UTF-8 string of at most `max` bytes.
    pub fn string(&mut self, max: usize) -> Result<&'a str> {
        let n = self.varint_max(max as u64, "string length")? as usize;
        let b = self.bytes(n)?;
        std::str::from_utf8(b).map_err(|_| Error::corrupt(self.what, "string is not UTF-8"))
    }
}

pub(super) fn put_str(out: &mut Vec<u8>, s: &str) {
    put_varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_roundtrip_and_overflow() {
        for v in [0u64, 1, 127, 128, 300, u32::MAX as u64, u64::MAX] {
            let mut b = Vec::new();
            put_varint(&mut b, v);
            let mut r = Reader::new(&b, "t");
            assert_eq!(r.varint().unwrap(), v);
            assert!(r.is_empty());
        }
        for v in [0i64, -1, 1, i64::MIN, i64::MAX] {
            let mut b = Vec::new();
            put_svarint(&mut b, v);
            assert_eq!(Reader::new(&b, "t").svarint().unwrap(), v);
        }
        let over = [0xffu8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02];
        assert!(Reader::new(&over, "t").varint().is_err());
        let long = [0x80u8; 11];
        assert!(Reader::new(&long, "t").varint().is_err());
    }
}
