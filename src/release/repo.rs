//! A repository on a local file system: reading and writing its index and blobs (both sides:
//! the publisher writes it, a client may read one from a USB stick).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::index::{sign_index, verify_index, Blob, Index, MAX_INDEX_BYTES};
use crate::error::{Error, Result};
use crate::sign::{PublicKey, SecretKey};

/// File name of the index in a repository.
pub const INDEX_FILE: &str = "index.json";
/// File name of the index's signature.
pub const INDEX_SIG_FILE: &str = "index.json.sig";
/// Directory of the blobs.
pub const BLOBS_DIR: &str = "blobs";

/// An update repository in a local directory.
///
/// ```
/// # fn main() -> Result<(), bundelta::Error> {
/// let dir = tempfile::tempdir().unwrap();
/// let key = bundelta::SecretKey::from_bytes([7u8; 32]);
/// let repo = bundelta::release::Repo::init(dir.path().join("repo"), "app", true, &key, 0)?;
/// let index = repo.load_index(&key.public_key())?;
/// assert_eq!((index.name.as_str(), index.releases.len()), ("app", 0));
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Repo {
    root: PathBuf,
}

impl Repo {
    /// Create an empty repository at `root` (which must not hold one yet): `blobs/` and an
    /// index of version 1 with no release, signed by `key`, expiring at `expires` (Unix
    /// seconds; 0 for an index no client should trust until the first release re-signs it).
    pub fn init(
        root: impl AsRef<Path>,
        name: &str,
        directory: bool,
        key: &SecretKey,
        expires: u64,
    ) -> Result<Repo> {
        let root = root.as_ref();
        if root.join(INDEX_FILE).exists() {
            return Err(Error::Repository {
                repo: root.display().to_string(),
                detail: "already holds an index.json".into(),
            });
        }
        fs::create_dir_all(root.join(BLOBS_DIR))
            .map_err(|e| Error::io(&root.join(BLOBS_DIR), "create directory", e))?;
        let repo = Repo {
            root: root.to_path_buf(),
        };
        let mut ix = Index::new(name, directory);
        ix.version = 1;
        ix.expires = expires;
        ix.check()?;
        repo.write_index(&ix, key)?;
        Ok(repo)
    }

    /// The repository at `root` (checked when its index is loaded).
    pub fn open(root: impl AsRef<Path>) -> Repo {
        Repo {
            root: root.as_ref().to_path_buf(),
        }
    }

    /// Its directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the blob named `blake3` (hex) is.
    pub fn blob_path(&self, blake3: &str) -> PathBuf {
        self.root.join(BLOBS_DIR).join(blake3)
    }

    fn err(&self, detail: impl Into<String>) -> Error {
        Error::Repository {
            repo: self.root.display().to_string(),
            detail: detail.into(),
        }
    }

    /// Read the index and its signature, check the signature with `key`, then parse (no
    /// freshness check: that is the client's, against what it accepted before).
    pub fn load_index(&self, key: &PublicKey) -> Result<Index> {
        let (bytes, sig) = self.read_signed()?;
        verify_index(&bytes, &sig, key)?;
        Index::parse(&bytes)
    }

    /// The raw bytes of `index.json` and `index.json.sig`, size-capped.
    pub fn read_signed(&self) -> Result<(Vec<u8>, Vec<u8>)> {
        let read = |name: &str, cap: u64| -> Result<Vec<u8>> {
            let p = self.root.join(name);
            let f = fs::File::open(&p).map_err(|e| Error::io(&p, "open", e))?;
            let mut v = Vec::new();
            std::io::Read::read_to_end(&mut std::io::Read::take(f, cap + 1), &mut v)
                .map_err(|e| Error::io(&p, "read", e))?;
            if v.len() as u64 > cap {
                return Err(self.err(format!("{name} is larger than {cap} bytes")));
            }
            Ok(v)
        };
        Ok((
            read(INDEX_FILE, MAX_INDEX_BYTES)?,
            read(INDEX_SIG_FILE, 512)?,
        ))
    }

    /// Sign and write the index: the signature first, then the index, each replaced
    /// atomically (a reader between the two renames sees a pair that does not verify and
    /// retries; never a half-written file).
    pub fn write_index(&self, ix: &Index, key: &SecretKey) -> Result<()> {
        ix.check()?;
        let bytes = ix.to_bytes();
        let sig = sign_index(&bytes, key);
        crate::write_atomic(&self.root.join(INDEX_SIG_FILE), "sig", 0o644, |f| {
            f.write_all(sig.as_bytes())
        })?;
        crate::write_atomic(&self.root.join(INDEX_FILE), "index", 0o644, |f| {
            f.write_all(&bytes)
        })
    }

    /// Store `bytes` as a blob (named by their blake3); an existing blob of that name is kept
    /// as it is (content addressing: same name, same bytes).
    pub fn put_blob(&self, bytes: &[u8]) -> Result<Blob> {
        let blake3 = crate::hex(blake3::hash(bytes).as_bytes());
        let path = self.blob_path(&blake3);
        let have = fs::metadata(&path).map(|m| m.len()).ok();
        if have != Some(bytes.len() as u64) {
            crate::write_atomic(&path, "blob", 0o644, |f| f.write_all(bytes))?;
        }
        Ok(Blob {
            blake3,
            bytes: bytes.len() as u64,
        })
    }

    /// The path of a blob after checking its size and blake3 against the index (streamed:
    /// any size). A client checks again what it reads from the path (the patch's own
    /// trailer, signature and output digests), so a file changed after this check is refused
    /// by the apply, never used.
    pub fn blob_file(&self, blob: &Blob) -> Result<PathBuf> {
        let path = self.blob_path(&blob.blake3);
        check_blob_file(&path, blob)
            .map_err(|d| self.err(format!("blobs/{}: {d}", blob.blake3)))?;
        Ok(path)
    }
}

/// Whether the file at `path` is the blob the index describes: its size, then its blake3.
pub(crate) fn check_blob_file(path: &Path, blob: &Blob) -> std::result::Result<(), String> {
    let f = fs::File::open(path).map_err(|e| format!("cannot open: {e}"))?;
    let mut h = blake3::Hasher::new();
    let n = std::io::copy(&mut std::io::Read::take(f, blob.bytes + 1), &mut h)
        .map_err(|e| format!("cannot read: {e}"))?;
    if n != blob.bytes {
        return Err(format!("{n} bytes where the index says {}", blob.bytes));
    }
    let found = crate::hex(h.finalize().as_bytes());
    if found != blob.blake3 {
        return Err(format!("its blake3 is {found}: damaged or replaced"));
    }
    Ok(())
}
