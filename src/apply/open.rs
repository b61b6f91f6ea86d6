//! Opening a patch: the checksum pass, the signature, the limits, the manifest decoded from
//! the verified bytes; and the accessors of an opened patch.

use std::fs::{self, File};
use std::path::Path;

use crate::codec::decode::{decoder, read_exact_stream, stream_err, Stream};
use crate::error::{Error, Result};
use crate::format::{
    EntryKind, Hash, Header, Manifest, CODEC_LZMA2, FLAG_MANIFEST_LZMA, FORM_RELATIVE,
    MAX_HEADER_LEN, SIGNATURE_LEN, TRAILER_LEN,
};
use crate::readat::{read_at_most, ReadAt, Section};
use crate::tree::{self, hex};

use super::{memory_needed, Patch};

/// Open the patch file for reading. A FIFO or device named as the patch is refused at once,
/// without blocking in `open`.
fn open_patch_file(path: &Path) -> Result<File> {
    let f = crate::sys::open_nonblocking(path).map_err(|e| Error::io(path, "open", e))?;
    let md = f.metadata().map_err(|e| Error::io(path, "stat", e))?;
    if !md.is_file() {
        return Err(Error::invalid_input(
            path,
            "the patch is not a regular file (a directory, FIFO or device)",
        ));
    }
    Ok(f)
}

/// Refuse a patch whose new version is larger than `limit`.
pub(super) fn output_within(h: &Header, limit: u64) -> Result<()> {
    if h.new_total > limit {
        return Err(Error::LimitExceeded {
            what: "output size",
            needed: h.new_total,
            limit,
        });
    }
    Ok(())
}

/// Refuse, before anything is decoded or written, a patch that needs a decoder or transform
/// left out of this build.
fn not_built_in(h: &Header) -> Result<()> {
    let lzma = h.codecs.contains(&crate::format::CODEC_LZMA2)
        || (h.flags & FLAG_MANIFEST_LZMA != 0 && h.manifest_len != h.manifest_raw_len);
    if lzma && !cfg!(feature = "lzma") {
        return Err(Error::NotBuiltIn {
            what: "LZMA2 streams",
            feature: "lzma",
        });
    }
    if h.codecs.contains(&crate::format::CODEC_BZIP2) && !cfg!(feature = "bzip2") {
        return Err(Error::NotBuiltIn {
            what: "bzip2 streams",
            feature: "bzip2",
        });
    }
    if h.flags & crate::format::FLAG_INFLATE != 0 && !cfg!(feature = "inflate") {
        return Err(Error::NotBuiltIn {
            what: "archive patches (delta transform 2)",
            feature: "inflate",
        });
    }
    Ok(())
}

impl Patch {
    /// Open and fully validate a patch file, refusing it (before reading the manifest) when it
    /// needs more than `memory_limit` bytes of heap or produces more than `output_limit` bytes,
    /// and requiring a signature by `public_key` when one is given.
    pub(super) fn open_checked(
        path: &Path,
        memory_limit: u64,
        output_limit: u64,
        public_key: Option<&crate::PublicKey>,
    ) -> Result<Patch> {
        let file = open_patch_file(path)?;
        let len = file
            .metadata()
            .map_err(|e| Error::io(path, "stat", e))?
            .len();
        Patch::from_source(
            Box::new(file),
            len,
            path,
            memory_limit,
            output_limit,
            public_key,
        )
    }

    /// Open a patch read through `src`, which holds `len` bytes.
    ///
    /// The header and the manifest are read exactly once, during the checksum pass, and kept
    /// in memory: what is decoded is what was hashed (and signed), even if the bytes behind
    /// `src` change afterwards. The streams are read from `src` again while applying; a change
    /// there can only make an output differ from the hashes the verified manifest holds, which
    /// is refused before anything is committed.
    pub(crate) fn from_source(
        src: Box<dyn ReadAt + Send + Sync>,
        len: u64,
        path: &Path,
        memory_limit: u64,
        output_limit: u64,
        public_key: Option<&crate::PublicKey>,
    ) -> Result<Patch> {
        let read_err = |e| Error::io(path, "read", e);
        let mut hb = [0u8; MAX_HEADER_LEN];
        let want = (hb.len() as u64).min(len) as usize;
        let got = read_at_most(&*src, &mut hb[..want], 0).map_err(read_err)?;
        let header = Header::decode(&hb[..got])?;
        let expect = header.patch_len().unwrap_or(u64::MAX);
        if len != expect {
            return Err(Error::corrupt(
                "header",
                format!(
                    "patch is {len} bytes but its header describes {expect} (truncated or padded)"
                ),
            ));
        }
        // The manifest is held in memory from the checksum pass on; the header bounds it by
        // manifest_raw_len, which the memory limit covers.
        let need = memory_needed(&header);
        if header.manifest_len > memory_limit {
            return Err(Error::LimitExceeded {
                what: "apply memory",
                needed: need,
                limit: memory_limit,
            });
        }
        // Whole-patch checksum in one streaming pass over bytes read once: the header from
        // `hb`, the manifest into `mbytes`, the streams through a buffer. For a signed patch
        // the signed digest is the hash of the bytes before the signature block.
        let hlen = header.encoded_len();
        let body = len - TRAILER_LEN as u64;
        let sig_at = header.signature_offset();
        let mut hasher = blake3::Hasher::new();
        hasher.update(&hb[..hlen]);
        // At most the memory limit (checked above), and within the patch's length.
        let mut mbytes = vec![0u8; header.manifest_len as usize];
        let mut n = hlen as u64;
        n += read_at_most(&*src, &mut mbytes, n).map_err(read_err)? as u64;
        hasher.update(&mbytes);
        let streams_at = header.manifest_offset() + header.manifest_len;
        n += tree::hash_into(
            &mut hasher,
            Section::new(&*src, streams_at, sig_at - streams_at),
            path,
        )?;
        let mut sig = [0u8; SIGNATURE_LEN];
        let mut signed_digest = None;
        if header.is_signed() {
            signed_digest = Some(*hasher.finalize().as_bytes());
            n += read_at_most(&*src, &mut sig, sig_at).map_err(read_err)? as u64;
            hasher.update(&sig);
        }
        if n != body {
            return Err(Error::corrupt("trailer", "patch shrank while reading"));
        }
        let found = *hasher.finalize().as_bytes();
        let mut trailer = [0u8; TRAILER_LEN];
        let got = read_at_most(&*src, &mut trailer, body).map_err(read_err)?;
        if got != TRAILER_LEN {
            return Err(Error::corrupt("trailer", "missing"));
        }
        if found != trailer {
            return Err(Error::Checksum {
                expected: hex(&trailer),
                found: hex(&found),
            });
        }
        if let Some(key) = public_key {
            match signed_digest {
                Some(d) => crate::sign::verify_digest(key, crate::SIGNATURE_DOMAIN, &d, &sig)?,
                None => return Err(Error::Unsigned),
            }
        }
        Patch::checked(
            src,
            path,
            header,
            mbytes,
            trailer,
            memory_limit,
            output_limit,
        )
    }

    /// The limits, then the manifest decoded from `mbytes` (bytes read once and hashed).
    pub(super) fn checked(
        src: Box<dyn ReadAt + Send + Sync>,
        path: &Path,
        header: Header,
        mbytes: Vec<u8>,
        checksum: Hash,
        memory_limit: u64,
        output_limit: u64,
    ) -> Result<Patch> {
        not_built_in(&header)?;
        let need = memory_needed(&header);
        if need > memory_limit {
            return Err(Error::LimitExceeded {
                what: "apply memory",
                needed: need,
                limit: memory_limit,
            });
        }
        output_within(&header, output_limit)?;
        // Manifest: decoded from the verified bytes in memory to exactly manifest_raw_len bytes.
        let raw_len = header.manifest_raw_len;
        let cap = usize::try_from(raw_len)
            .map_err(|_| Error::corrupt("header", "manifest length does not fit in memory"))?;
        let raw = if header.manifest_len == header.manifest_raw_len {
            // Stored as it is.
            mbytes
        } else {
            let mut raw = Vec::new();
            let mem: &Vec<u8> = &mbytes;
            if header.flags & FLAG_MANIFEST_LZMA != 0 {
                let mut dec = Stream::open(
                    mem,
                    0,
                    header.manifest_len,
                    CODEC_LZMA2,
                    header.window_log,
                    "manifest",
                )?;
                read_exact_stream(&mut dec, &mut raw, cap, "manifest")?;
            } else {
                let sec = Section::new(mem, 0, header.manifest_len);
                let mut dec =
                    decoder(sec, header.window_log).map_err(|e| stream_err("manifest", e))?;
                read_exact_stream(&mut dec, &mut raw, cap, "manifest")?;
            }
            raw
        };
        // A relative manifest is resolved against OLD's file list by `bind`; here its
        // structure is checked and its target digest read.
        let (manifest, relative, new_digest) =
            if raw.first() == Some(&FORM_RELATIVE) && header.is_directory() {
                Manifest::summarize_relative(&raw, &header)?;
                let mut d = [0u8; 32];
                d.copy_from_slice(&raw[1..33]);
                (None, raw, d)
            } else {
                let m = Manifest::decode(&raw, &header)?;
                let d = m.new_digest;
                (Some(m), Vec::new(), d)
            };
        Ok(Patch {
            src,
            path: path.to_path_buf(),
            header,
            manifest,
            relative,
            new_digest,
            checksum,
            unknown: Vec::new(),
            memory_limit,
            listing_bytes: 0,
            parallel: true,
            streamed: None,
        })
    }

    /// The bundle digest this patch produces.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # #[cfg(feature = "diff")] {
    /// # let dir = tempfile::tempdir()?;
    /// # let (old, patch) = (dir.path().join("old"), dir.path().join("p.bdp"));
    /// # let out = dir.path().join("out");
    /// # let text: String = (0..1000).map(|i| format!("line {i}\n")).collect();
    /// # let new = text.replace("line 500\n", "line five hundred\n").into_bytes();
    /// # std::fs::write(&old, &text)?;
    /// # let made = bundelta::DiffOptions::new().diff_bytes(text.as_bytes(), &new)?;
    /// # std::fs::write(&patch, made)?;
    /// let p = bundelta::Patcher::new().open(&patch)?;
    /// let target = p.new_digest();
    /// bundelta::Patcher::new().apply_patch(&old, p, &out)?;
    /// assert_eq!(bundelta::bundle_digest(&out)?, target);
    /// # }
    /// # Ok(()) }
    /// ```
    pub fn new_digest(&self) -> Hash {
        self.new_digest
    }

    /// The patch's identity: its whole-patch blake3 checksum (the trailer, verified on open).
    /// An in-place journal records it, so that only the same patch finishes an interrupted run.
    /// For a patch read from a stream ([`Patcher::open_reader`](super::Patcher::open_reader)),
    /// zero until the apply has read and checked the whole patch.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # #[cfg(feature = "diff")] {
    /// # let dir = tempfile::tempdir()?;
    /// # let (old, patch) = (dir.path().join("old"), dir.path().join("p.bdp"));
    /// # let out = dir.path().join("out");
    /// # let text: String = (0..1000).map(|i| format!("line {i}\n")).collect();
    /// # let new = text.replace("line 500\n", "line five hundred\n").into_bytes();
    /// # std::fs::write(&old, &text)?;
    /// # let made = bundelta::DiffOptions::new().diff_bytes(text.as_bytes(), &new)?;
    /// # std::fs::write(&patch, made)?;
    /// let bytes = std::fs::read(&patch)?;
    /// let p = bundelta::Patcher::new().open(&patch)?;
    /// assert_eq!(p.checksum()[..], bytes[bytes.len() - 32..]); // the trailer
    /// let streamed = bundelta::Patcher::new().open_reader(std::io::Cursor::new(bytes), "stream")?;
    /// assert_eq!(streamed.checksum(), [0; 32]); // not yet read to its end
    /// # }
    /// # Ok(()) }
    /// ```
    pub fn checksum(&self) -> Hash {
        match &self.streamed {
            Some(s) => s.checksum().unwrap_or([0; 32]),
            None => self.checksum,
        }
    }

    /// Whether the patch is read from a stream rather than from a file.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # #[cfg(feature = "diff")] {
    /// # let dir = tempfile::tempdir()?;
    /// # let (old, patch) = (dir.path().join("old"), dir.path().join("p.bdp"));
    /// # let out = dir.path().join("out");
    /// # let text: String = (0..1000).map(|i| format!("line {i}\n")).collect();
    /// # let new = text.replace("line 500\n", "line five hundred\n").into_bytes();
    /// # std::fs::write(&old, &text)?;
    /// # let made = bundelta::DiffOptions::new().diff_bytes(text.as_bytes(), &new)?;
    /// # std::fs::write(&patch, made)?;
    /// assert!(!bundelta::Patcher::new().open(&patch)?.is_streamed());
    /// let reader = std::fs::File::open(&patch)?; // or a socket, a pipe, an HTTP body
    /// let p = bundelta::Patcher::new().open_reader(reader, &patch)?;
    /// assert!(p.is_streamed());
    /// # }
    /// # Ok(()) }
    /// ```
    pub fn is_streamed(&self) -> bool {
        self.streamed.is_some()
    }

    pub(super) fn m(&self) -> &Manifest {
        self.manifest
            .as_ref()
            .expect("Patch::bind runs before the manifest is used")
    }

    /// The path the patch was opened from.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # #[cfg(feature = "diff")] {
    /// # let dir = tempfile::tempdir()?;
    /// # let (old, patch) = (dir.path().join("old"), dir.path().join("p.bdp"));
    /// # let out = dir.path().join("out");
    /// # let text: String = (0..1000).map(|i| format!("line {i}\n")).collect();
    /// # let new = text.replace("line 500\n", "line five hundred\n").into_bytes();
    /// # std::fs::write(&old, &text)?;
    /// # let made = bundelta::DiffOptions::new().diff_bytes(text.as_bytes(), &new)?;
    /// # std::fs::write(&patch, made)?;
    /// let p = bundelta::Patcher::new().open(&patch)?;
    /// assert_eq!(p.path(), patch.as_path());
    /// # }
    /// # Ok(()) }
    /// ```
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The fixed header.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # #[cfg(feature = "diff")] {
    /// # let dir = tempfile::tempdir()?;
    /// # let (old, patch) = (dir.path().join("old"), dir.path().join("p.bdp"));
    /// # let out = dir.path().join("out");
    /// # let text: String = (0..1000).map(|i| format!("line {i}\n")).collect();
    /// # let new = text.replace("line 500\n", "line five hundred\n").into_bytes();
    /// # std::fs::write(&old, &text)?;
    /// # let made = bundelta::DiffOptions::new().diff_bytes(text.as_bytes(), &new)?;
    /// # std::fs::write(&patch, made)?;
    /// let p = bundelta::Patcher::new().open(&patch)?;
    /// let h = p.header();
    /// assert!(!h.is_directory() && !h.is_signed());
    /// assert_eq!(h.new_total, new.len() as u64);
    /// assert_eq!(h.window_log, bundelta::DEFAULT_WINDOW_LOG);
    /// # }
    /// # Ok(()) }
    /// ```
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The validated manifest, once known: always for a manifest stored in full; for one
    /// stored relative to OLD's file list, after [`Patch::bind`].
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # #[cfg(feature = "diff")] {
    /// # let dir = tempfile::tempdir()?;
    /// # let (old, patch) = (dir.path().join("old"), dir.path().join("p.bdp"));
    /// # let out = dir.path().join("out");
    /// # let text: String = (0..1000).map(|i| format!("line {i}\n")).collect();
    /// # let new = text.replace("line 500\n", "line five hundred\n").into_bytes();
    /// # std::fs::write(&old, &text)?;
    /// # let made = bundelta::DiffOptions::new().diff_bytes(text.as_bytes(), &new)?;
    /// # std::fs::write(&patch, made)?;
    /// let p = bundelta::Patcher::new().open(&patch)?;
    /// let m = p.manifest().expect("a single file's manifest is stored in full");
    /// assert_eq!(m.entries.len(), 1);
    /// assert_eq!(m.new_digest, p.new_digest());
    /// # }
    /// # Ok(()) }
    /// ```
    pub fn manifest(&self) -> Option<&Manifest> {
        self.manifest.as_ref()
    }

    /// The raw relative-form manifest, when the patch has one (for summaries without OLD).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # #[cfg(feature = "diff")] {
    /// # let dir = tempfile::tempdir()?;
    /// # let (old, new) = (dir.path().join("old"), dir.path().join("new"));
    /// # for (d, v) in [(&old, "1.0"), (&new, "1.1")] {
    /// #     std::fs::create_dir_all(d.join("docs"))?;
    /// #     for i in 0..100 {
    /// #         std::fs::write(d.join(format!("docs/page-{i}.txt")), format!("page {i}"))?;
    /// #     }
    /// #     std::fs::write(d.join("VERSION"), v)?;
    /// # }
    /// # let patch = dir.path().join("p.bdp");
    /// # bundelta::DiffOptions::new().diff_to_file(&old, &new, &patch)?;
    /// let mut p = bundelta::Patcher::new().open(&patch)?;
    /// // Stored as an edit of OLD's file list: the entries are known once bound to OLD.
    /// assert!(p.relative_manifest().is_some() && p.manifest().is_none());
    /// p.bind(&old)?;
    /// assert!(p.manifest().is_some());
    /// # }
    /// # Ok(()) }
    /// ```
    pub fn relative_manifest(&self) -> Option<&[u8]> {
        if self.relative.is_empty() {
            None
        } else {
            Some(&self.relative)
        }
    }

    /// Total length of the patch file.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # #[cfg(feature = "diff")] {
    /// # let dir = tempfile::tempdir()?;
    /// # let (old, patch) = (dir.path().join("old"), dir.path().join("p.bdp"));
    /// # let out = dir.path().join("out");
    /// # let text: String = (0..1000).map(|i| format!("line {i}\n")).collect();
    /// # let new = text.replace("line 500\n", "line five hundred\n").into_bytes();
    /// # std::fs::write(&old, &text)?;
    /// # let made = bundelta::DiffOptions::new().diff_bytes(text.as_bytes(), &new)?;
    /// # std::fs::write(&patch, made)?;
    /// let p = bundelta::Patcher::new().open(&patch)?;
    /// assert_eq!(p.len(), std::fs::metadata(&patch)?.len());
    /// assert_eq!(Some(p.len()), p.header().patch_len());
    /// # }
    /// # Ok(()) }
    /// ```
    pub fn len(&self) -> u64 {
        self.header.patch_len().unwrap_or(0)
    }

    /// Never true: a valid patch has at least a header and trailer.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # #[cfg(feature = "diff")] {
    /// # let dir = tempfile::tempdir()?;
    /// # let (old, patch) = (dir.path().join("old"), dir.path().join("p.bdp"));
    /// # let out = dir.path().join("out");
    /// # let text: String = (0..1000).map(|i| format!("line {i}\n")).collect();
    /// # let new = text.replace("line 500\n", "line five hundred\n").into_bytes();
    /// # std::fs::write(&old, &text)?;
    /// # let made = bundelta::DiffOptions::new().diff_bytes(text.as_bytes(), &new)?;
    /// # std::fs::write(&patch, made)?;
    /// let p = bundelta::Patcher::new().open(&patch)?;
    /// assert!(!p.is_empty() && p.len() > 0);
    /// # }
    /// # Ok(()) }
    /// ```
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Whether `target` has exactly the new bundle's shape (paths, kinds, sizes, modes, link
    /// targets), judged without reading file contents: a cheap test before hashing it all.
    pub(crate) fn shape_matches(&self, target: &Path) -> Result<bool> {
        if !self.header.is_directory() {
            let md = fs::symlink_metadata(target).map_err(|e| Error::io(target, "stat", e))?;
            return Ok(md.is_file() && md.len() == self.header.new_total);
        }
        let nodes = match tree::scan(target) {
            Ok(n) => n,
            Err(_) => return Ok(false),
        };
        if nodes.len() != self.m().entries.len() {
            return Ok(false);
        }
        Ok(nodes.iter().zip(&self.m().entries).all(|(n, e)| {
            n.path == e.path
                && match (&n.kind, &e.kind) {
                    (tree::NodeKind::Dir, EntryKind::Dir) => true,
                    (tree::NodeKind::Symlink { target: a }, EntryKind::Symlink { target: b }) => {
                        a == b
                    }
                    (
                        tree::NodeKind::File { exec: x, size: a },
                        EntryKind::File {
                            exec: y, size: b, ..
                        },
                    ) => x == y && a == b,
                    _ => false,
                }
        }))
    }
}

#[cfg(all(test, feature = "diff"))]
mod tests {
    use std::fs;
    use std::io;
    use std::path::Path;
    use std::sync::atomic::{AtomicBool, Ordering};

    use crate::error::Error;
    use crate::format::Header;
    use crate::readat::ReadAt;
    use crate::testutil::noise;

    use super::super::Patcher;

    /// Serves `first` until the read that reaches the end of the file (the trailer, the last
    /// thing the checksum pass reads), then `then`: a patch file rewritten by another process
    /// right after it was verified.
    struct Swapping {
        first: Vec<u8>,
        then: Vec<u8>,
        swapped: AtomicBool,
    }

    impl ReadAt for Swapping {
        fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
            if self.swapped.load(Ordering::SeqCst) {
                return self.then.read_at(buf, pos);
            }
            let k = self.first.read_at(buf, pos)?;
            if pos + k as u64 >= self.first.len() as u64 {
                self.swapped.store(true, Ordering::SeqCst);
            }
            Ok(k)
        }
    }

    /// A FIFO named as the patch is refused at once (the landed code blocked in `open`).
    #[cfg(unix)]
    #[test]
    fn a_fifo_as_the_patch_is_refused_without_blocking() {
        use std::ffi::CString;
        use std::os::unix::ffi::OsStrExt;
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("p.bdp");
        let c = CString::new(fifo.as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(Patcher::new().open(&fifo).err().map(|e| e.to_string()));
        });
        let got = rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("opening a FIFO as the patch blocked");
        let e = got.expect("a FIFO was accepted as a patch");
        assert!(e.contains("not a regular file"), "{e}");
    }

    /// Issue 9, item 2: a patch whose bytes change after the checksum and the signature were
    /// checked must never produce anything but what the signed bytes describe. The landed code
    /// read the manifest from the file again after the check, so the swapped patch's target
    /// (an executable the signer never signed) was rebuilt and reported as verified.
    #[test]
    fn bytes_changed_after_verification_are_never_used() {
        let dir = tempfile::tempdir().unwrap();
        let old = noise(1, 64 << 10);
        let mut new_a = old.clone();
        let mut new_b = old.clone();
        new_a[20_000..24_000].copy_from_slice(&noise(2, 4000));
        new_b[20_000..24_000].copy_from_slice(&noise(3, 4000));
        let (signer, attacker) = (
            crate::SecretKey::from_bytes([7u8; 32]),
            crate::SecretKey::from_bytes([9u8; 32]),
        );
        let mut o = crate::DiffOptions::new();
        o.codec(crate::Codec::Zstd).sign_with(signer.clone());
        let a = o.diff_bytes(&old, &new_a).unwrap();
        o.sign_with(attacker);
        let b = o.diff_bytes(&old, &new_b).unwrap();
        // Same layout, so that rereading any section of B where A was verified yields a
        // well-formed patch for NEW_B: what the attack needs.
        let (ha, hb) = (Header::decode(&a).unwrap(), Header::decode(&b).unwrap());
        assert_eq!(a.len(), b.len());
        assert_eq!(
            (ha.manifest_len, ha.stream_lens),
            (hb.manifest_len, hb.stream_lens)
        );
        let old_path = dir.path().join("old");
        fs::write(&old_path, &old).unwrap();
        let digest_a = *blake3::hash(&new_a).as_bytes();
        let digest_b = *blake3::hash(&new_b).as_bytes();

        let mut patcher = Patcher::new();
        patcher.require_signature(signer.public_key());
        // Control: the signed patch as it is verifies and rebuilds NEW_A; B is refused.
        let p = patcher
            .open_source(Box::new(a.clone()), a.len() as u64, Path::new("a"))
            .unwrap();
        let r = patcher.verify_patch(p, Some(&old_path)).unwrap().unwrap();
        assert_eq!(r.digest, digest_a);
        assert!(patcher
            .open_source(Box::new(b.clone()), b.len() as u64, Path::new("b"))
            .is_err());

        let swapping = Swapping {
            first: a.clone(),
            then: b,
            swapped: AtomicBool::new(false),
        };
        let len = a.len() as u64;
        let result = patcher
            .open_source(Box::new(swapping), len, Path::new("swapped"))
            .and_then(|p| patcher.verify_patch(p, Some(&old_path)));
        match result {
            Ok(Some(r)) => {
                assert_ne!(
                    r.digest, digest_b,
                    "rebuilt the attacker's NEW_B as verified"
                );
                assert_eq!(r.digest, digest_a);
            }
            Ok(None) => unreachable!("OLD was given"),
            Err(e) => assert!(
                matches!(e, Error::OutputMismatch { .. } | Error::Corrupt { .. }),
                "refused, but for an unexpected reason: {e}"
            ),
        }
    }
}

#[cfg(test)]
mod feature_tests {
    use crate::error::Error;
    use crate::format::{
        Header, CODEC_BZIP2, CODEC_LZMA2, CODEC_RAW, FLAG_INFLATE, FLAG_MANIFEST_LZMA,
        VERSION_MINOR,
    };

    /// A patch that needs a decoder or transform this build lacks is refused by name when it
    /// is opened (run with each feature set: CI's apply-core build has none of them).
    #[test]
    fn what_the_build_lacks_is_refused_by_name() {
        let mut h = Header {
            minor: VERSION_MINOR,
            flags: 0,
            window_log: 20,
            codecs: [CODEC_RAW; 3],
            manifest_len: 10,
            manifest_raw_len: 20,
            new_total: 0,
            stream_lens: [0; 3],
        };
        let lacks = |h: &Header| match super::not_built_in(h) {
            Ok(()) => None,
            Err(Error::NotBuiltIn { feature, .. }) => Some(feature),
            Err(e) => panic!("{e}"),
        };
        assert_eq!(lacks(&h), None);
        h.codecs[1] = CODEC_LZMA2;
        assert_eq!(lacks(&h), (!cfg!(feature = "lzma")).then_some("lzma"));
        h.codecs[1] = CODEC_BZIP2;
        assert_eq!(lacks(&h), (!cfg!(feature = "bzip2")).then_some("bzip2"));
        h.codecs[1] = CODEC_RAW;
        h.flags = FLAG_MANIFEST_LZMA;
        assert_eq!(lacks(&h), (!cfg!(feature = "lzma")).then_some("lzma"));
        h.flags = FLAG_INFLATE;
        assert_eq!(lacks(&h), (!cfg!(feature = "inflate")).then_some("inflate"));
        let e = Error::NotBuiltIn {
            what: "LZMA2 streams",
            feature: "lzma",
        };
        assert!(e.to_string().contains("cargo feature `lzma`"), "{e}");
    }
}
