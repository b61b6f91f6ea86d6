//! The corpus: `pairs.json` (the manifest), `data/NAME/{old,new}` (fetched pairs) and
//! `fetch.py` (downloads through the package clients and checks the pinned sha256).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// One entry of pairs.json.
#[derive(Clone, Debug)]
pub struct Entry {
    pub name: String,
    pub kind: String,
    pub step: String,
    pub raw: Value,
}

pub struct Corpus {
    pub dir: PathBuf,
    pub entries: Vec<Entry>,
}

impl Corpus {
    /// Reads DIR/pairs.json.
    pub fn load(dir: &Path) -> Result<Corpus> {
        let path = dir.join("pairs.json");
        let text = fs::read_to_string(&path)
            .with_context(|| format!("{}: cannot read", path.display()))?;
        let v: Value = serde_json::from_str(&text)
            .with_context(|| format!("{}: not valid JSON", path.display()))?;
        let Some(list) = v.as_array() else {
            bail!("{}: expected a JSON array of pairs", path.display());
        };
        let mut entries = Vec::new();
        for p in list {
            let field = |k: &str| p.get(k).and_then(Value::as_str).unwrap_or("").to_string();
            let name = field("name");
            if name.is_empty() {
                bail!("{}: a pair has no name", path.display());
            }
            entries.push(Entry {
                kind: field("kind"),
                step: field("step"),
                name,
                raw: p.clone(),
            });
        }
        Ok(Corpus {
            dir: dir.to_path_buf(),
            entries,
        })
    }

    pub fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn get(&self, name: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.name == name)
    }

    /// Whether DATA/NAME holds old and new fetched from this very manifest entry (the stamp
    /// that fetch.py writes matches).
    pub fn is_current(&self, e: &Entry) -> bool {
        let d = self.data().join(&e.name);
        let Ok(stamp) = fs::read_to_string(d.join(".stamp")) else {
            return false;
        };
        stamp.trim() == stamp_for(&e.raw)
            && fs::symlink_metadata(d.join("old")).is_ok()
            && fs::symlink_metadata(d.join("new")).is_ok()
    }

    /// Runs `PYTHON DIR/fetch.py --data DIR/data --only NAMES...` as a child (it downloads
    /// through the package clients and verifies every sha256). Its output goes to stderr, or
    /// nowhere when `quiet`. Returns its exit status text when it failed.
    pub fn fetch(&self, python: &Path, names: &[&str], quiet: bool) -> Result<Option<String>> {
        let script = self.dir.join("fetch.py");
        let mut cmd = Command::new(python);
        cmd.arg(&script)
            .arg("--data")
            .arg(self.data())
            .arg("--pairs")
            .arg(self.dir.join("pairs.json"))
            .arg("--only")
            .args(names)
            .stdin(Stdio::null());
        if quiet {
            cmd.stdout(Stdio::null()).stderr(Stdio::null());
        } else {
            cmd.stdout(std::io::stderr());
        }
        let st = cmd
            .status()
            .with_context(|| format!("cannot run {} {}", python.display(), script.display()))?;
        Ok((!st.success()).then(|| format!("{} {}: {st}", python.display(), script.display())))
    }
}

/// The stamp fetch.py writes: Python's `json.dumps({k: pair.get(k) for k in KEYS},
/// sort_keys=True)`, byte for byte (", " and ": " separators, non-ASCII as \uXXXX).
pub fn stamp_for(pair: &Value) -> String {
    let mut keys = vec![
        "source",
        "package",
        "old_version",
        "new_version",
        "old_sha256",
        "new_sha256",
        "select",
        "platform",
        "python_version",
    ];
    // Keys added later count only where a pair has them (older stamps stay valid).
    for k in ["whole", "dist"] {
        if pair.get(k).is_some() {
            keys.push(k);
        }
    }
    keys.sort_unstable();
    let mut s = String::from("{");
    for (i, k) in keys.iter().enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        let v = pair.get(*k).cloned().unwrap_or(Value::Null);
        s.push_str(&py_json(&Value::String(k.to_string())));
        s.push_str(": ");
        s.push_str(&py_json(&v));
    }
    s.push('}');
    s
}

fn py_json(v: &Value) -> String {
    let text = serde_json::to_string(v).unwrap_or_default();
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut buf = [0u16; 2];
            for unit in c.encode_utf16(&mut buf) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out
}

/// Sizes of a file, or of a tree (bytes of regular files, count of files and links).
pub fn size_of(p: &Path) -> Result<(u64, u64)> {
    let md = fs::symlink_metadata(p).with_context(|| format!("{}: cannot stat", p.display()))?;
    if !md.is_dir() {
        return Ok((if md.is_file() { md.len() } else { 0 }, 1));
    }
    let (mut bytes, mut files) = (0, 0);
    bundelta::walk_sorted(p, |e| -> Result<()> {
        match e.kind {
            bundelta::WalkKind::Dir => {}
            bundelta::WalkKind::File => (bytes, files) = (bytes + e.size, files + 1),
            _ => files += 1,
        }
        Ok(())
    })?;
    Ok((bytes, files))
}

/// `python3`, or `$PYTHON` when set (as scripts/install-peers.sh uses).
pub fn python() -> PathBuf {
    std::env::var_os("PYTHON")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("python3"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_matches_python() {
        let v: Value = serde_json::from_str(
            r#"{"name": "x", "source": "npm", "package": "p\u00e9", "old_version": "1.0",
                "new_version": "1.1", "old_sha256": "aa", "new_sha256": "bb", "select": "a/\"b"}"#,
        )
        .unwrap();
        // python3 -c 'import json; print(json.dumps({...}, sort_keys=True))'
        assert_eq!(
            stamp_for(&v),
            r#"{"new_sha256": "bb", "new_version": "1.1", "old_sha256": "aa", "old_version": "1.0", "package": "p\u00e9", "platform": null, "python_version": null, "select": "a/\"b", "source": "npm"}"#
        );
    }
}
