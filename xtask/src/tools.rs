//! The tools `cargo xtask bench` runs, each as a child process, with the settings
//! that gave each its smallest patches on the corpus.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Every tool name `--tools` accepts, in table order.
pub const ALL: &[&str] = &[
    "bundelta",
    "bsdiff",
    "xdelta3",
    "zstd-19",
    "zstd-3",
    "zstd-22",
    "hdiffpatch",
    "detools",
    "qbsdiff",
];

/// What runs without `--tools`: every installed tool but zstd-22 (ultra levels: slower than
/// zstd-19 for a few percent smaller patches).
pub const DEFAULT: &[&str] = &[
    "bundelta",
    "bsdiff",
    "xdelta3",
    "zstd-19",
    "zstd-3",
    "hdiffpatch",
    "detools",
    "qbsdiff",
];

/// The hdiffpatch PyPI module has no command line: this child script drives it.
const HDIFF_CHILD: &str = r#"
import sys, hdiffpatch
def rd(p):
    with open(p, 'rb') as f:
        return f.read()
if sys.argv[1] == 'diff':
    old, new, patch, window = sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
    data = hdiffpatch.diff(rd(old), rd(new), hdiffpatch.LzmaConfig(level=9, window=window),
                           validate=False)
    with open(patch, 'wb') as f:
        f.write(data)
else:
    old, patch, out = sys.argv[2], sys.argv[3], sys.argv[4]
    data = hdiffpatch.apply(rd(old), rd(patch))
    with open(out, 'wb') as f:
        f.write(data)
"#;

#[derive(Clone, Debug)]
enum Kind {
    Bundelta(PathBuf),
    Bsdiff,
    Xdelta3,
    Zstd(u32),
    Hdiff(PathBuf),
    Detools(Vec<OsString>),
    Qbsdiff,
}

#[derive(Clone, Debug)]
pub struct Tool {
    pub name: &'static str,
    pub version: String,
    /// Diffs single files only: directory pairs reach it as two tars.
    pub files_only: bool,
    kind: Kind,
}

/// Sizes a tool's settings depend on: old and new input bytes.
#[derive(Clone, Copy)]
pub struct Sizes {
    pub old: u64,
    pub new: u64,
}

fn next_pow2(n: u64) -> u64 {
    n.max(1).next_power_of_two()
}

/// ceil(log2(n)) clamped to [lo, hi].
fn log2_ceil(n: u64, lo: u32, hi: u32) -> u32 {
    let n = n.max(2);
    (64 - (n - 1).leading_zeros()).clamp(lo, hi)
}

fn on_path(cmd: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| {
        std::env::split_paths(&p).any(|d| {
            let f = d.join(cmd);
            std::fs::metadata(&f).is_ok_and(|m| {
                use std::os::unix::fs::PermissionsExt;
                m.is_file() && m.permissions().mode() & 0o111 != 0
            })
        })
    })
}

/// First line of a command's output (stdout, else stderr), or None if it cannot run.
fn first_line(prog: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .ok()?;
    let text = if out.stdout.iter().any(|b| !b.is_ascii_whitespace()) {
        out.stdout
    } else {
        out.stderr
    };
    let s = String::from_utf8_lossy(&text);
    Some(s.lines().next().unwrap_or("").trim().to_string())
}

/// A version number out of a tool's banner ("*** zstd ... v1.5.4, by ..." -> "1.5.4").
fn version_in(line: &str) -> String {
    let bytes = line.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if b.is_ascii_digit()
            && (i == 0 || !bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'v')
        {
            let v: String = line[i..]
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.')
                .collect();
            if v.contains('.') {
                return v.trim_end_matches('.').to_string();
            }
        }
    }
    line.chars().take(40).collect()
}

fn deb_version(pkg: &str) -> String {
    first_line(Path::new("dpkg-query"), &["-W", "-f=${Version}", pkg])
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "?".into())
}

/// The installed version of a Python distribution, or None if it cannot be imported.
fn py_module_version(python: &Path, module: &str) -> Option<String> {
    let script = format!(
        "import {module}, importlib.metadata as m\ntry: print(m.version('{module}'))\nexcept Exception: print('?')"
    );
    let out = Command::new(python)
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The tool called `name` if it is installed; otherwise why not.
pub fn find(name: &str, exe: &Path, python: &Path) -> Result<Tool, String> {
    let tool = |kind, version: String, files_only| Tool {
        name: ALL.iter().find(|n| **n == name).copied().unwrap_or("?"),
        version,
        files_only,
        kind,
    };
    match name {
        "bundelta" => Ok(tool(
            Kind::Bundelta(exe.to_path_buf()),
            first_line(exe, &["--version"])
                .map(|v| version_in(&v))
                .unwrap_or_else(|| "?".into()),
            false,
        )),
        "bsdiff" => {
            if on_path("bsdiff") && on_path("bspatch") {
                Ok(tool(Kind::Bsdiff, deb_version("bsdiff"), true))
            } else {
                Err("bsdiff/bspatch not on PATH".into())
            }
        }
        "xdelta3" => match on_path("xdelta3")
            .then(|| first_line(Path::new("xdelta3"), &["-V"]))
            .flatten()
        {
            Some(v) => Ok(tool(Kind::Xdelta3, version_in(&v), true)),
            None => Err("xdelta3 not on PATH".into()),
        },
        "zstd-19" | "zstd-3" | "zstd-22" => {
            let level = name[5..].parse().expect("known levels");
            match on_path("zstd")
                .then(|| first_line(Path::new("zstd"), &["-V"]))
                .flatten()
            {
                Some(v) => Ok(tool(Kind::Zstd(level), version_in(&v), true)),
                None => Err("zstd not on PATH".into()),
            }
        }
        "hdiffpatch" => match py_module_version(python, "hdiffpatch") {
            Some(v) => Ok(tool(
                Kind::Hdiff(python.to_path_buf()),
                format!("py {v}"),
                true,
            )),
            None => Err(format!(
                "python module hdiffpatch not importable by {}",
                python.display()
            )),
        },
        "detools" => {
            if let Some(v) = py_module_version(python, "detools") {
                let base = vec![python.as_os_str().to_owned(), "-m".into(), "detools".into()];
                Ok(tool(Kind::Detools(base), v, true))
            } else if on_path("detools") {
                Ok(tool(
                    Kind::Detools(vec!["detools".into()]),
                    "?".into(),
                    true,
                ))
            } else {
                Err("detools not installed".into())
            }
        }
        "qbsdiff" => {
            if on_path("qbsdiff") && on_path("qbspatch") {
                let v = first_line(Path::new("qbsdiff"), &["--version"]).unwrap_or_default();
                Ok(tool(Kind::Qbsdiff, version_in(&v), true))
            } else {
                Err("qbsdiff/qbspatch not on PATH".into())
            }
        }
        _ => Err(format!("unknown tool {name:?}")),
    }
}

fn v<I: IntoIterator<Item = S>, S: Into<OsString>>(items: I) -> Vec<OsString> {
    items.into_iter().map(Into::into).collect()
}

fn cat(mut a: Vec<OsString>, b: Vec<OsString>) -> Vec<OsString> {
    a.extend(b);
    a
}

impl Tool {
    /// The command that writes a patch turning `old` into `new`.
    pub fn diff_cmd(&self, old: &Path, new: &Path, patch: &Path, s: Sizes) -> Vec<OsString> {
        let (o, n, p) = (old.as_os_str(), new.as_os_str(), patch.as_os_str());
        match &self.kind {
            Kind::Bundelta(exe) => v([
                exe.as_os_str().into(),
                OsString::from("diff"),
                o.into(),
                n.into(),
                "-o".into(),
                p.into(),
                "-q".into(),
            ]),
            Kind::Bsdiff => v([OsString::from("bsdiff"), o.into(), n.into(), p.into()]),
            Kind::Xdelta3 => cat(
                // -D: no external decompression (by default xdelta3 gunzips .gz inputs and
                // its decoder recompresses them, which does not give the same bytes back).
                v(["xdelta3", "-D", "-9", "-S", "lzma", "-I", "0", "-B"]),
                v([
                    OsString::from(next_pow2(s.old.max(1 << 20)).to_string()),
                    "-e".into(),
                    "-f".into(),
                    "-s".into(),
                    o.into(),
                    n.into(),
                    p.into(),
                ]),
            ),
            Kind::Zstd(level) => {
                let mut c = v(["zstd", "-q", "-f"]);
                if *level > 19 {
                    c.push("--ultra".into());
                }
                c.push(format!("-{level}").into());
                c.push(format!("--long={}", log2_ceil(s.old.max(s.new), 10, 31)).into());
                c.push(patch_from(o));
                cat(c, v([n.into(), OsString::from("-o"), p.into()]))
            }
            Kind::Hdiff(py) => {
                let window = log2_ceil(s.old.max(s.new), 23, 27).to_string();
                v([
                    py.as_os_str().into(),
                    OsString::from("-c"),
                    HDIFF_CHILD.into(),
                    "diff".into(),
                    o.into(),
                    n.into(),
                    p.into(),
                    window.into(),
                ])
            }
            Kind::Detools(base) => cat(
                base.clone(),
                v([
                    OsString::from("create_patch"),
                    "-c".into(),
                    "lzma".into(),
                    o.into(),
                    n.into(),
                    p.into(),
                ]),
            ),
            Kind::Qbsdiff => v([
                OsString::from("qbsdiff"),
                "-z".into(),
                "9".into(),
                o.into(),
                n.into(),
                p.into(),
            ]),
        }
    }

    /// The command that rebuilds `out` from `old` and `patch`.
    pub fn apply_cmd(&self, old: &Path, patch: &Path, out: &Path, s: Sizes) -> Vec<OsString> {
        let (o, p, t) = (old.as_os_str(), patch.as_os_str(), out.as_os_str());
        match &self.kind {
            Kind::Bundelta(exe) => v([
                exe.as_os_str().into(),
                OsString::from("apply"),
                o.into(),
                p.into(),
                "-o".into(),
                t.into(),
                "-q".into(),
            ]),
            Kind::Bsdiff => v([OsString::from("bspatch"), o.into(), t.into(), p.into()]),
            Kind::Xdelta3 => v([
                OsString::from("xdelta3"),
                "-D".into(),
                "-R".into(),
                "-d".into(),
                "-f".into(),
                "-B".into(),
                next_pow2(s.old.max(1 << 20)).to_string().into(),
                "-s".into(),
                o.into(),
                p.into(),
                t.into(),
            ]),
            Kind::Zstd(_) => v([
                OsString::from("zstd"),
                "-q".into(),
                "-f".into(),
                "-d".into(),
                format!("--long={}", log2_ceil(s.old.max(s.new), 10, 31)).into(),
                patch_from(o),
                p.into(),
                "-o".into(),
                t.into(),
            ]),
            Kind::Hdiff(py) => v([
                py.as_os_str().into(),
                OsString::from("-c"),
                HDIFF_CHILD.into(),
                "apply".into(),
                o.into(),
                p.into(),
                t.into(),
            ]),
            Kind::Detools(base) => cat(
                base.clone(),
                v([OsString::from("apply_patch"), o.into(), p.into(), t.into()]),
            ),
            Kind::Qbsdiff => v([OsString::from("qbspatch"), o.into(), t.into(), p.into()]),
        }
    }
}

fn patch_from(old: &std::ffi::OsStr) -> OsString {
    let mut s = OsString::from("--patch-from=");
    s.push(old);
    s
}

impl Tool {
    /// The diff and apply commands as one line each for the report, with OLD, NEW, PATCH and
    /// OUT for the paths (and `bundelta` for this executable) so that reports from different
    /// machines and work directories compare.
    pub fn shown(&self, s: Sizes) -> (String, String) {
        let (o, n, p, t) = (
            Path::new("OLD"),
            Path::new("NEW"),
            Path::new("PATCH"),
            Path::new("OUT"),
        );
        (
            self.show(&self.diff_cmd(o, n, p, s)),
            self.show(&self.apply_cmd(o, p, t, s)),
        )
    }

    fn show(&self, cmd: &[OsString]) -> String {
        cmd.iter()
            .map(|a| match &self.kind {
                Kind::Bundelta(exe) if a == exe.as_os_str() => "bundelta".to_string(),
                _ if a == HDIFF_CHILD => "<script>".to_string(),
                _ => a.to_string_lossy().into_owned(),
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_follow_the_sizes() {
        assert_eq!(log2_ceil(4_800_000, 10, 31), 23);
        assert_eq!(log2_ceil(1 << 23, 10, 31), 23);
        assert_eq!(log2_ceil((1 << 23) + 1, 10, 31), 24);
        assert_eq!(log2_ceil(100, 10, 31), 10);
        assert_eq!(log2_ceil(1000, 23, 27), 23);
        assert_eq!(next_pow2(5_000_000), 8 << 20);
        assert_eq!(
            version_in("*** Zstandard CLI (64-bit) v1.5.4, by Yann Collet ***"),
            "1.5.4"
        );
        assert_eq!(
            version_in("Xdelta version 3.0.11, Copyright (C) 2007"),
            "3.0.11"
        );
        assert_eq!(version_in("qbsdiff 1.4.4"), "1.4.4");
    }

    #[test]
    fn bundelta_commands() {
        let t = find("bundelta", Path::new("/x/bundelta"), Path::new("python3")).unwrap();
        let s = Sizes { old: 10, new: 20 };
        let d = t.diff_cmd(Path::new("o"), Path::new("n"), Path::new("p"), s);
        assert_eq!(d[0], "/x/bundelta");
        assert_eq!(d[1..], ["diff", "o", "n", "-o", "p", "-q"]);
        assert_eq!(
            t.shown(s),
            (
                "bundelta diff OLD NEW -o PATCH -q".to_string(),
                "bundelta apply OLD PATCH -o OUT -q".to_string()
            )
        );
        assert!(find("nope", Path::new("x"), Path::new("python3")).is_err());
    }
}
