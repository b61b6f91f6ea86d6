//! Shared logic of the bundelta fuzz targets (the `fuzz_targets/*.rs` bodies are one line each).
//!
//! - [`header_manifest`]: `Header::decode` + `Manifest::decode` on raw bytes; never panic, and a
//!   decoded manifest re-encodes to itself.
//! - [`apply_untrusted`]: a whole patch file from the input, applied (and verified, and applied
//!   in place) against a fixed OLD; never panic, never write outside the scratch directory,
//!   never leave staging files, never touch OLD.
//! - [`dir_apply`]: a structurally built patch with hostile paths and symlinks plus an
//!   independent model of the apply semantics; the applier must agree with the model.
//! - [`refs`]: reference-prediction parameters decoded from raw varints; predicting block by
//!   block (the applier) equals predicting a region whole (the diff).
//! - [`roundtrip`]: diff then apply restores NEW exactly.
//! - [`inflate`]: a single-file patch around hostile inflate recipes and controls (delta
//!   transform 2); never panic, never leave the scratch file of the expanded source.
//! - [`archive`]: the diff's zip and gzip readers on hostile archives; diff then apply gives
//!   NEW back exactly.
//! - [`index`]: the update repository's index on hostile bytes: parsing, re-writing, route
//!   planning and signature checks.
//! - [`tokens`]: deflate token structures; a stream the parser accepts is made again exactly
//!   by the encoder, and whatever the encoder accepts parses back to what it was given.
//!
//! Scratch directories live under `/dev/shm` when it exists (the applier fsyncs every file).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use bundelta::format::Hash;

pub mod apply_untrusted;
pub mod archive;
pub mod dir_apply;
pub mod header_manifest;
pub mod heap;
pub mod index;
pub mod inflate;
pub mod refs;
pub mod roundtrip;
pub mod tokens;

/// Heap and output limits every target applies with.
pub const LIMIT: u64 = 16 << 20;

/// The fixed OLD bundles patches are applied against (also written out by `seed.sh`).
pub mod fixture {
    /// The OLD single file.
    pub const OLD_FILE: &[u8] = include_bytes!("../fixtures/old.txt");
    /// Directories of the OLD tree (parents first).
    pub const DIRS: &[&str] = &["bin", "lib", "lib/util"];
    /// Regular files of the OLD tree: (path, content, executable).
    pub const FILES: &[(&str, &[u8], bool)] = &[
        (
            "README.md",
            include_bytes!("../fixtures/old-dir/README.md"),
            false,
        ),
        (
            "bin/tool",
            include_bytes!("../fixtures/old-dir/bin/tool"),
            true,
        ),
        ("empty", include_bytes!("../fixtures/old-dir/empty"), false),
        (
            "lib/core.js",
            include_bytes!("../fixtures/old-dir/lib/core.js"),
            false,
        ),
        (
            "lib/util/strings.js",
            include_bytes!("../fixtures/old-dir/lib/util/strings.js"),
            false,
        ),
    ];
    /// Symlinks of the OLD tree (created at run time; `seed.sh` creates the same).
    pub const SYMLINKS: &[(&str, &str)] = &[("link", "lib/core.js")];

    /// Content and exec bit of a regular file of the OLD tree.
    pub fn file(path: &str) -> Option<(&'static [u8], bool)> {
        FILES
            .iter()
            .find(|(p, _, _)| *p == path)
            .map(|(_, d, x)| (*d, *x))
    }
}

/// Whether `BUNDELTA_FUZZ_DEBUG` is set: targets then print each input's outcome on stderr
/// (useful with `cargo fuzz run TARGET corpus/TARGET -- -runs=0` to see what a corpus reaches).
pub fn debug() -> bool {
    static D: OnceLock<bool> = OnceLock::new();
    *D.get_or_init(|| std::env::var_os("BUNDELTA_FUZZ_DEBUG").is_some())
}

/// Where scratch directories go: `/dev/shm` (tmpfs: fsync is free) when usable.
pub fn scratch_base() -> PathBuf {
    static BASE: OnceLock<PathBuf> = OnceLock::new();
    BASE.get_or_init(|| {
        let shm = Path::new("/dev/shm");
        if shm.is_dir() && tempfile::tempdir_in(shm).is_ok() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        }
    })
    .clone()
}

/// Prefix of every scratch directory: `bundelta-fuzz-PID-`.
const PREFIX: &str = "bundelta-fuzz-";

/// A fresh scratch directory, named after this process. The first call removes scratch
/// directories left by processes that no longer run (libFuzzer exits without running
/// destructors, so the fixture directory, and the scratch directory of a crashing input, stay).
pub fn scratch() -> tempfile::TempDir {
    static SWEPT: OnceLock<()> = OnceLock::new();
    SWEPT.get_or_init(sweep_stale);
    tempfile::Builder::new()
        .prefix(&format!("{PREFIX}{}-", std::process::id()))
        .tempdir_in(scratch_base())
        .expect("create scratch directory")
}

fn sweep_stale() {
    let Ok(rd) = fs::read_dir(scratch_base()) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

/// Apply a freshly made `patch` to `old` (written to a scratch directory) and require exactly
/// `new` back; `what` names the target in the panic.
pub fn apply_gives(old: &[u8], patch: &[u8], new: &[u8], what: &str) {
    let dir = scratch();
    let (o, p, out) = (
        dir.path().join("old"),
        dir.path().join("p.bdp"),
        dir.path().join("out"),
    );
    write(&o, old);
    write(&p, patch);
    let report = bundelta::Patcher::new()
        .apply(&o, &p, &out)
        .unwrap_or_else(|e| panic!("{what}: apply of a fresh patch failed: {e}"));
    let got = fs::read(&out).unwrap();
    assert!(
        got == new,
        "{what}: output differs from NEW ({} vs {} bytes)",
        got.len(),
        new.len()
    );
    assert_eq!(report.bytes, new.len() as u64);
}

/// Write a file, creating nothing else.
pub fn write(p: &Path, data: &[u8]) {
    fs::write(p, data).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
}

/// Create the OLD directory fixture at `dir` (which must not exist).
pub fn materialize_old_dir(dir: &Path) {
    fs::create_dir(dir).expect("create fixture dir");
    for d in fixture::DIRS {
        fs::create_dir(dir.join(d)).expect("create fixture subdir");
    }
    for (p, data, exec) in fixture::FILES {
        let path = dir.join(p);
        write(&path, data);
        set_exec(&path, *exec);
    }
    for (p, target) in fixture::SYMLINKS {
        std::os::unix::fs::symlink(target, dir.join(p)).expect("create fixture symlink");
    }
}

/// Set a file's mode to 0755 or 0644.
pub fn set_exec(p: &Path, exec: bool) {
    use std::os::unix::fs::PermissionsExt;
    let mode = if exec { 0o755 } else { 0o644 };
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).expect("chmod");
}

/// The process-wide OLD fixtures and their digests.
pub struct Fixture {
    _dir: tempfile::TempDir,
    /// OLD single file.
    pub file: PathBuf,
    /// OLD directory.
    pub dir: PathBuf,
    /// `bundle_digest` of each, taken at creation.
    pub file_digest: Hash,
    /// See `file_digest`.
    pub dir_digest: Hash,
}

impl Fixture {
    /// Panic if an apply changed OLD in any way.
    pub fn check_untouched(&self) {
        assert_eq!(
            bundelta::bundle_digest(&self.file).expect("digest of OLD file"),
            self.file_digest,
            "OLD file fixture was modified"
        );
        assert_eq!(
            bundelta::bundle_digest(&self.dir).expect("digest of OLD dir"),
            self.dir_digest,
            "OLD directory fixture was modified"
        );
        assert_only(self._dir.path(), &["old.txt", "old-dir"], "fixture root");
    }

    /// The OLD path for a file or directory patch.
    pub fn old(&self, directory: bool) -> &Path {
        if directory {
            &self.dir
        } else {
            &self.file
        }
    }
}

/// The fixtures, created once per process.
pub fn fixture() -> &'static Fixture {
    static FX: OnceLock<Fixture> = OnceLock::new();
    FX.get_or_init(|| {
        let d = scratch();
        let file = d.path().join("old.txt");
        write(&file, fixture::OLD_FILE);
        let dir = d.path().join("old-dir");
        materialize_old_dir(&dir);
        Fixture {
            file_digest: bundelta::bundle_digest(&file).unwrap(),
            dir_digest: bundelta::bundle_digest(&dir).unwrap(),
            file,
            dir,
            _dir: d,
        }
    })
}

/// Names directly inside `dir`, sorted.
pub fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Panic unless `dir` holds only names from `allowed`.
pub fn assert_only(dir: &Path, allowed: &[&str], what: &str) {
    let found = names(dir);
    let stray: Vec<&String> = found
        .iter()
        .filter(|n| !allowed.contains(&n.as_str()))
        .collect();
    assert!(
        stray.is_empty(),
        "{what}: unexpected entries {stray:?} (allowed {allowed:?}, found {found:?})"
    );
}

/// Append the blake3 trailer (hash of `body`) to make a patch whose checksum passes.
pub fn with_trailer(body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(body.len() + 32);
    v.extend_from_slice(body);
    v.extend_from_slice(blake3::hash(body).as_bytes());
    v
}

/// Deterministic byte source over the fuzz input: yields zeros once exhausted.
pub struct Bytes<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Bytes<'a> {
    /// A cursor at the start of `data`.
    pub fn new(data: &'a [u8]) -> Bytes<'a> {
        Bytes { data, pos: 0 }
    }
    /// Next byte, 0 at the end.
    pub fn u8(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }
    /// Next little-endian u16.
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    /// Up to `n` bytes (fewer at the end of input).
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let start = self.pos.min(self.data.len());
        let end = start.saturating_add(n).min(self.data.len());
        self.pos = self.pos.saturating_add(n);
        &self.data[start..end]
    }
    /// Exactly `n` bytes, zero-padded past the end of input.
    pub fn take_padded(&mut self, n: usize) -> Vec<u8> {
        let mut v = self.take(n).to_vec();
        v.resize(n, 0);
        v
    }
    /// Whether the input is used up.
    pub fn is_empty(&self) -> bool {
        self.pos >= self.data.len()
    }
    /// Everything not consumed yet.
    pub fn rest(&mut self) -> &'a [u8] {
        let r = self.take(usize::MAX / 2);
        self.pos = self.data.len();
        r
    }
}

/// Read every entry of a tree (or a single file at key "") for comparisons in messages.
pub fn tree_listing(root: &Path) -> BTreeMap<String, String> {
    fn walk(dir: &Path, prefix: &str, out: &mut BTreeMap<String, String>) {
        for e in fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            let rel = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            };
            let md = fs::symlink_metadata(e.path()).unwrap();
            if md.is_dir() {
                out.insert(rel.clone(), "dir".into());
                walk(&e.path(), &rel, out);
            } else if md.file_type().is_symlink() {
                out.insert(rel, format!("-> {:?}", fs::read_link(e.path()).unwrap()));
            } else {
                out.insert(rel, format!("file {} bytes", md.len()));
            }
        }
    }
    let mut out = BTreeMap::new();
    match fs::symlink_metadata(root) {
        Ok(md) if md.is_dir() => walk(root, "", &mut out),
        Ok(md) => {
            out.insert(String::new(), format!("file {} bytes", md.len()));
        }
        Err(_) => {}
    }
    out
}
