//! A repository's storage: a local directory (a publisher's disk, a shared volume, a USB stick)
//! or, with feature `s3`, a bucket of S3-compatible object storage (`s3://BUCKET/PREFIX`).
//! Objects are addressed by keys (`index.json`, `blobs/<blake3>`, `jobs/...`); blobs that
//! must be read as files (to apply or diff them) are fetched into a local work directory and
//! checked against their name first.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::index::{sign_index, verify_index, Blob, Index, MAX_INDEX_BYTES};
use crate::error::{Error, Result};
use crate::sign::{PublicKey, SecretKey};

/// Key of the index in a repository.
pub const INDEX_FILE: &str = "index.json";
/// Key of the index's signature.
pub const INDEX_SIG_FILE: &str = "index.json.sig";
/// Prefix of the blobs.
pub const BLOBS_DIR: &str = "blobs";

#[derive(Debug)]
enum Backend {
    Dir(PathBuf),
    #[cfg(feature = "s3")]
    S3(super::s3::S3),
}

/// An update repository: a local directory, or (feature `s3`) `s3://BUCKET/PREFIX`.
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
#[derive(Debug)]
pub struct Repo {
    backend: Backend,
    /// Where blobs are fetched to and publishing works (the directory itself when local).
    work: PathBuf,
}

impl Repo {
    /// Create an empty repository at `location` (which must not hold one yet): an index of
    /// version 1 with no release, signed by `key`, expiring at `expires` (Unix seconds; 0 for
    /// an index no client should trust until the first release re-signs it).
    pub fn init(
        location: impl AsRef<Path>,
        name: &str,
        directory: bool,
        key: &SecretKey,
        expires: u64,
    ) -> Result<Repo> {
        let repo = Repo::open(location)?;
        if repo.len(INDEX_FILE)?.is_some() {
            return Err(repo.err("already holds an index.json"));
        }
        if let Some(root) = repo.local_dir() {
            fs::create_dir_all(root.join(BLOBS_DIR))
                .map_err(|e| Error::io(&root.join(BLOBS_DIR), "create directory", e))?;
        }
        let mut ix = Index::new(name, directory);
        ix.version = 1;
        ix.expires = expires;
        ix.check()?;
        repo.write_index(&ix, key)?;
        Ok(repo)
    }

    /// The repository at `location`: a directory, or `s3://BUCKET[/PREFIX]` (feature `s3`;
    /// endpoint, region and credentials from the `AWS_*` environment variables, as the AWS
    /// tools read them: `AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, `AWS_ALLOW_HTTP=true` for a plain-HTTP endpoint).
    pub fn open(location: impl AsRef<Path>) -> Result<Repo> {
        let location = location.as_ref();
        let text = location.to_string_lossy();
        if let Some(rest) = text.strip_prefix("s3://") {
            #[cfg(feature = "s3")]
            {
                let s3 = super::s3::S3::open(rest)?;
                let work = std::env::temp_dir().join(format!(
                    "bundelta-s3-{}",
                    &crate::hex(blake3::hash(text.as_bytes()).as_bytes())[..16]
                ));
                return Ok(Repo {
                    backend: Backend::S3(s3),
                    work,
                });
            }
            #[cfg(not(feature = "s3"))]
            {
                let _ = rest;
                return Err(Error::NotBuiltIn {
                    what: "repositories on S3-compatible storage",
                    feature: "s3",
                });
            }
        }
        Ok(Repo {
            backend: Backend::Dir(location.to_path_buf()),
            work: location.to_path_buf(),
        })
    }

    /// The repository in the local directory `dir` (what a client reads from a USB stick).
    pub fn local(dir: impl AsRef<Path>) -> Repo {
        Repo {
            backend: Backend::Dir(dir.as_ref().to_path_buf()),
            work: dir.as_ref().to_path_buf(),
        }
    }

    /// How messages name it.
    pub fn name(&self) -> String {
        match &self.backend {
            Backend::Dir(p) => p.display().to_string(),
            #[cfg(feature = "s3")]
            Backend::S3(s) => s.name(),
        }
    }

    /// Its directory when it is local (a client reads a USB stick through it).
    pub fn local_dir(&self) -> Option<&Path> {
        match &self.backend {
            Backend::Dir(p) => Some(p),
            #[cfg(feature = "s3")]
            Backend::S3(_) => None,
        }
    }

    /// The local directory publishing works in (scratch copies, fetched blobs).
    pub fn work_dir(&self) -> &Path {
        &self.work
    }

    pub(crate) fn err(&self, detail: impl Into<String>) -> Error {
        Error::Repository {
            repo: self.name(),
            detail: detail.into(),
        }
    }

    /// The object `key`, at most `cap` bytes; `None` when there is none.
    pub(crate) fn get(&self, key: &str, cap: u64) -> Result<Option<Vec<u8>>> {
        let v = match &self.backend {
            Backend::Dir(root) => {
                let p = root.join(key);
                let f = match fs::File::open(&p) {
                    Ok(f) => f,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                    Err(e) => return Err(Error::io(&p, "open", e)),
                };
                let mut v = Vec::new();
                std::io::Read::read_to_end(&mut std::io::Read::take(f, cap + 1), &mut v)
                    .map_err(|e| Error::io(&p, "read", e))?;
                v
            }
            #[cfg(feature = "s3")]
            Backend::S3(s) => match s.get(key, cap)? {
                Some(v) => v,
                None => return Ok(None),
            },
        };
        if v.len() as u64 > cap {
            return Err(self.err(format!("{key} is larger than {cap} bytes")));
        }
        Ok(Some(v))
    }

    /// Store `bytes` as `key`, replacing it atomically.
    pub(crate) fn put(&self, key: &str, bytes: &[u8]) -> Result<()> {
        match &self.backend {
            Backend::Dir(root) => {
                let p = root.join(key);
                if let Some(d) = p.parent() {
                    fs::create_dir_all(d).map_err(|e| Error::io(d, "create directory", e))?;
                }
                crate::write_atomic(&p, "put", 0o644, |f| f.write_all(bytes))
            }
            #[cfg(feature = "s3")]
            Backend::S3(s) => s.put(key, bytes),
        }
    }

    /// The size of object `key`, or `None`.
    pub(crate) fn len(&self, key: &str) -> Result<Option<u64>> {
        match &self.backend {
            Backend::Dir(root) => Ok(fs::metadata(root.join(key)).ok().map(|m| m.len())),
            #[cfg(feature = "s3")]
            Backend::S3(s) => s.len(key),
        }
    }

    /// The keys under `prefix` (a "directory", ending in `/`), sorted.
    #[cfg_attr(not(feature = "diff"), allow(dead_code))] // publishing's
    pub(crate) fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let mut v = match &self.backend {
            Backend::Dir(root) => {
                let mut out = Vec::new();
                let mut stack = vec![prefix.trim_end_matches('/').to_string()];
                while let Some(d) = stack.pop() {
                    let Ok(rd) = fs::read_dir(root.join(&d)) else {
                        continue;
                    };
                    for e in rd.flatten() {
                        let k = format!("{d}/{}", e.file_name().to_string_lossy());
                        match e.file_type() {
                            Ok(t) if t.is_dir() => stack.push(k),
                            Ok(t) if t.is_file() => out.push(k),
                            _ => {}
                        }
                    }
                }
                out
            }
            #[cfg(feature = "s3")]
            Backend::S3(s) => s.list(prefix)?,
        };
        v.sort();
        Ok(v)
    }

    /// Remove the object `key` (gone already is fine).
    #[cfg_attr(not(feature = "diff"), allow(dead_code))] // publishing's
    pub(crate) fn delete(&self, key: &str) -> Result<()> {
        match &self.backend {
            Backend::Dir(root) => match fs::remove_file(root.join(key)) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(Error::io(&root.join(key), "remove", e)),
            },
            #[cfg(feature = "s3")]
            Backend::S3(s) => s.delete(key),
        }
    }

    /// Remove every object under `prefix`.
    #[cfg_attr(not(feature = "diff"), allow(dead_code))] // publishing's
    pub(crate) fn delete_prefix(&self, prefix: &str) -> Result<()> {
        match &self.backend {
            Backend::Dir(root) => {
                let p = root.join(prefix.trim_end_matches('/'));
                crate::sys::remove_all(&p);
                if let Some(parent) = p.parent() {
                    let _ = fs::remove_dir(parent);
                }
                Ok(())
            }
            #[cfg(feature = "s3")]
            Backend::S3(s) => {
                for k in s.list(prefix)? {
                    s.delete(&k)?;
                }
                Ok(())
            }
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
        let get = |k: &str, cap: u64| {
            self.get(k, cap)?.ok_or_else(|| {
                self.err(format!("has no {k}: not a repository (run `release init`)"))
            })
        };
        Ok((get(INDEX_FILE, MAX_INDEX_BYTES)?, get(INDEX_SIG_FILE, 512)?))
    }

    /// Sign and write the index: the signature first, then the index, each replaced
    /// atomically (a reader between the two sees a pair that does not verify and retries;
    /// never a half-written object).
    pub fn write_index(&self, ix: &Index, key: &SecretKey) -> Result<()> {
        ix.check()?;
        let bytes = ix.to_bytes();
        let sig = sign_index(&bytes, key);
        self.put(INDEX_SIG_FILE, sig.as_bytes())?;
        self.put(INDEX_FILE, &bytes)
    }

    /// Where the blob named `blake3` (hex) is in a local repository.
    pub fn blob_path(&self, blake3: &str) -> PathBuf {
        match &self.backend {
            Backend::Dir(root) => root.join(BLOBS_DIR).join(blake3),
            #[cfg(feature = "s3")]
            Backend::S3(_) => self.work.join(BLOBS_DIR).join(blake3),
        }
    }

    /// Store `bytes` as a blob (named by their blake3); an existing blob of that name and
    /// size is kept as it is (content addressing: same name, same bytes).
    pub fn put_blob(&self, bytes: &[u8]) -> Result<Blob> {
        let blake3 = crate::hex(blake3::hash(bytes).as_bytes());
        let key = format!("{BLOBS_DIR}/{blake3}");
        if self.len(&key)? != Some(bytes.len() as u64) {
            self.put(&key, bytes)?;
        }
        Ok(Blob {
            blake3,
            bytes: bytes.len() as u64,
        })
    }

    /// A local file holding the blob, after checking its size and blake3 against the index
    /// (streamed: any size). From object storage it is fetched into the work directory
    /// first. What reads the file checks again (the patch's own trailer, signature and
    /// output digests), so a file changed after this check is refused, never used.
    pub fn blob_file(&self, blob: &Blob) -> Result<PathBuf> {
        let path = self.blob_path(&blob.blake3);
        #[cfg(feature = "s3")]
        if let Backend::S3(s) = &self.backend {
            if check_blob_file(&path, blob).is_err() {
                let key = format!("{BLOBS_DIR}/{}", blob.blake3);
                let bytes = s
                    .get(&key, blob.bytes)?
                    .ok_or_else(|| self.err(format!("has no {key}")))?;
                if let Some(d) = path.parent() {
                    fs::create_dir_all(d).map_err(|e| Error::io(d, "create directory", e))?;
                }
                crate::write_atomic(&path, "blob", 0o644, |f| f.write_all(&bytes))?;
            }
        }
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
