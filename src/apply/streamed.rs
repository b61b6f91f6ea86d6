//! A patch read once, front to back, from any reader: a pipe, a socket, an HTTP body.
//!
//! A patch file is read twice: a checksum pass, then the streams at their offsets (control,
//! diff and extra are consumed side by side). A reader gives each byte once and in order, so
//! the applier holds what comes before the extra stream in memory: the header, the manifest,
//! the control and diff streams (compressed, as they are in the patch), charged to the memory
//! limit on top of [`super::memory_needed`] before a byte of them is allocated. The extra
//! stream, the signature and the trailer are read from the reader as the apply consumes them,
//! and every byte read is hashed on the way.
//!
//! The checksum and the signature are therefore known only when the whole patch has been
//! read: after every file was rebuilt and hashed, before anything is committed. An apply
//! from a reader stages its output and commits it (renames it into place) only once the
//! trailer matched, the signature verified (when one is required) and every output digest
//! matched, so that a damaged or forged patch still leaves nothing behind; what it changes is
//! that it is refused at the end rather than before the first file. A patch whose header
//! says it is unsigned is refused at once when a signature is required. In-place apply needs
//! the patch as a file (its journal names the patch by its checksum before the first write).

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::codec::decode::read_retry;
use crate::error::{Error, Result};
use crate::format::{Hash, Header, MAX_HEADER_LEN, SIGNATURE_LEN, TRAILER_LEN};
use crate::readat::ReadAt;
use crate::tree::hex;

use super::{memory_needed, Patch};

/// The bytes of a streamed patch: those before the extra stream held, the rest read in order.
pub(crate) struct Streamed {
    /// Header, manifest, control and diff streams: patch offsets `[0, held.len())`.
    held: Vec<u8>,
    tail: Mutex<Tail>,
}

/// The reader's side of a streamed patch.
struct Tail {
    reader: Box<dyn Read + Send>,
    /// Bytes already read past `held` (the header read can reach that far in a tiny patch).
    pending: Vec<u8>,
    pending_at: usize,
    /// Patch offset of the next byte the reader gives.
    pos: u64,
    hasher: blake3::Hasher,
    /// Where the signature (or, unsigned, the trailer) starts.
    sig_at: u64,
    signed: bool,
    public_key: Option<crate::PublicKey>,
    path: PathBuf,
    /// The outcome of [`Streamed::finish`], once run.
    finished: Option<std::result::Result<Hash, String>>,
}

impl Tail {
    /// Up to `buf.len()` next bytes, hashed; `Ok(0)` only at the reader's end.
    fn next(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = if self.pending_at < self.pending.len() {
            let n = buf.len().min(self.pending.len() - self.pending_at);
            buf[..n].copy_from_slice(&self.pending[self.pending_at..self.pending_at + n]);
            self.pending_at += n;
            n
        } else {
            read_retry(&mut self.reader, buf)?
        };
        self.pos += n as u64;
        Ok(n)
    }

    /// Exactly `buf.len()` next bytes (not hashed here).
    fn exact(&mut self, buf: &mut [u8], what: &'static str) -> Result<()> {
        let mut got = 0;
        while got < buf.len() {
            let k = self
                .next(&mut buf[got..])
                .map_err(|e| Error::io(&self.path, "read", e))?;
            if k == 0 {
                return Err(Error::corrupt(
                    what,
                    format!("the patch stream ended {} bytes early", buf.len() - got),
                ));
            }
            got += k;
        }
        Ok(())
    }
}

impl Streamed {
    /// Read the header and everything up to the extra stream from `reader`, and check the
    /// limits; the manifest is then decoded by [`Patch::checked`] from the held bytes.
    pub(crate) fn open(
        mut reader: Box<dyn Read + Send>,
        path: &Path,
        memory_limit: u64,
        output_limit: u64,
        public_key: Option<&crate::PublicKey>,
    ) -> Result<Patch> {
        let read_err = |e| Error::io(path, "read", e);
        let mut hb = [0u8; MAX_HEADER_LEN];
        let got = read_up_to(&mut reader, &mut hb).map_err(read_err)?;
        let header = Header::decode(&hb[..got])?;
        if header.patch_len().is_none() {
            return Err(Error::corrupt("header", "section lengths overflow"));
        }
        if public_key.is_some() && !header.is_signed() {
            return Err(Error::Unsigned);
        }
        // Held: header, manifest, control and diff streams; the manifest is also copied out
        // for decoding.
        let held_len = header.stream_offset(2);
        let need = memory_needed(&header)
            .saturating_add(held_len)
            .saturating_add(header.manifest_len);
        if need > memory_limit {
            return Err(Error::LimitExceeded {
                what: "apply memory (a patch read from a stream holds its manifest, control \
                       and diff streams)",
                needed: need,
                limit: memory_limit,
            });
        }
        super::open::output_within(&header, output_limit)?;
        // Within the memory limit, checked above.
        let held_len = held_len as usize;
        let mut held = Vec::with_capacity(held_len);
        let first = got.min(held_len);
        held.extend_from_slice(&hb[..first]);
        let mut tail = Tail {
            reader,
            pending: hb[first..got].to_vec(),
            pending_at: 0,
            pos: first as u64,
            hasher: blake3::Hasher::new(),
            sig_at: header.signature_offset(),
            signed: header.is_signed(),
            public_key: public_key.copied(),
            path: path.to_path_buf(),
            finished: None,
        };
        held.resize(held_len, 0);
        tail.exact(&mut held[first..], "patch")?;
        tail.hasher.update(&held);
        let hlen = header.encoded_len();
        let mbytes = held[hlen..hlen + header.manifest_len as usize].to_vec();
        let streamed = Arc::new(Streamed {
            held,
            tail: Mutex::new(tail),
        });
        let mut p = Patch::checked(
            Box::new(Arc::clone(&streamed)),
            path,
            header,
            mbytes,
            [0; 32],
            memory_limit,
            output_limit,
        )?;
        p.streamed = Some(streamed);
        Ok(p)
    }

    /// Read what is left of the patch (the rest of the extra stream, if the apply did not
    /// consume it all, the signature and the trailer), then check the checksum, that nothing
    /// follows, and the signature when one is required. The patch's checksum, once it holds;
    /// a second call gives the first one's outcome.
    pub(crate) fn finish(&self) -> Result<Hash> {
        let mut t = self.lock();
        if let Some(r) = &t.finished {
            return r
                .clone()
                .map_err(|e| Error::corrupt("patch stream", e.to_string()));
        }
        let r = Self::finish_tail(&mut t);
        t.finished = Some(r.as_ref().map(|h| *h).map_err(|e| e.to_string()));
        r
    }

    fn finish_tail(t: &mut Tail) -> Result<Hash> {
        let mut buf = vec![0u8; 64 << 10];
        while t.pos < t.sig_at {
            let n = buf.len().min((t.sig_at - t.pos) as usize);
            t.exact(&mut buf[..n], "extra stream")?;
            t.hasher.update(&buf[..n]);
        }
        let mut sig = [0u8; SIGNATURE_LEN];
        let mut signed_digest = None;
        if t.signed {
            signed_digest = Some(*t.hasher.finalize().as_bytes());
            t.exact(&mut sig, "signature")?;
            t.hasher.update(&sig);
        }
        let found = *t.hasher.finalize().as_bytes();
        let mut trailer = [0u8; TRAILER_LEN];
        t.exact(&mut trailer, "trailer")?;
        if found != trailer {
            return Err(Error::Checksum {
                expected: hex(&trailer),
                found: hex(&found),
            });
        }
        let mut one = [0u8; 1];
        if t.next(&mut one)
            .map_err(|e| Error::io(&t.path, "read", e))?
            != 0
        {
            return Err(Error::corrupt(
                "trailer",
                "the patch stream goes on after the trailer",
            ));
        }
        if let Some(key) = &t.public_key {
            match signed_digest {
                Some(d) => crate::sign::verify_digest(key, crate::SIGNATURE_DOMAIN, &d, &sig)?,
                None => return Err(Error::Unsigned),
            }
        }
        Ok(trailer)
    }

    /// The checksum, once [`Streamed::finish`] found it good.
    pub(crate) fn checksum(&self) -> Option<Hash> {
        match &self.lock().finished {
            Some(Ok(h)) => Some(*h),
            _ => None,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tail> {
        // A panic while holding the lock leaves a reader in an unknown place; the checksum
        // still decides, so the state is used as it is.
        self.tail.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl ReadAt for Streamed {
    /// Held bytes at any offset; past them, only the next byte the reader gives (the extra
    /// stream is read once, in order), and never the signature or the trailer.
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        let held = self.held.len() as u64;
        if pos < held {
            return self.held.as_slice().read_at(buf, pos);
        }
        let mut t = self.lock();
        if pos != t.pos {
            return Err(io::Error::other(format!(
                "a patch read from a stream is read once, in order (byte {pos} asked, byte {} \
                 next)",
                t.pos
            )));
        }
        let n = buf.len().min(t.sig_at.saturating_sub(pos) as usize);
        let k = t.next(&mut buf[..n])?;
        t.hasher.update(&buf[..k]);
        Ok(k)
    }
}

/// Read until `buf` is full or the reader ends; the bytes read.
fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match read_retry(r, &mut buf[got..])? {
            0 => break,
            k => got += k,
        }
    }
    Ok(got)
}
