//! The update repository's index: what releases exist, which patches lead into each, and the
//! policy around them (FORMAT.md section 9), signed with the same Ed25519 keys as patches.
//!
//! # Why it looks like this
//!
//! - **Plain files.** A repository is `index.json`, its signature `index.json.sig`, and
//!   `blobs/<blake3>`: any web server, CDN or USB stick serves it. Every blob is named by the
//!   blake3 of its bytes, so the index never carries a path (nothing to traverse), a client
//!   checks each download against its name, publishing never rewrites a blob, and a partial
//!   download is resumed under the name it will have.
//! - **Signed bytes, not signed values.** The signature covers the exact bytes of
//!   `index.json` (domain-separated from patch signatures); the client verifies them before
//!   parsing, so no canonical JSON form is needed and no unsigned byte is ever interpreted.
//! - **Replay and freeze.** The index carries a version that every publication increases and
//!   an expiry. A client keeps the highest version it has accepted and refuses a lower one (a
//!   replayed old index could hide a fix), and refuses an expired one (a frozen mirror could
//!   withhold updates forever): TUF's timestamp and snapshot roles in one signed file.
//! - **Bounded parsing.** The index is untrusted until its signature checks, and large only
//!   in proportion to the release history: it is read with a size cap
//!   ([`MAX_INDEX_BYTES`]), and every count and string is checked after parsing.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::format::Hash;
use crate::sign::{verify_digest, PublicKey, SecretKey};

/// Domain of index signatures: an index signature can never pass for a patch signature.
pub const INDEX_SIGNATURE_DOMAIN: &[u8] = b"bundelta index signature v1\0";
/// The `format` field every index carries.
pub const INDEX_FORMAT: &str = "bundelta-index";
/// The schema version this build reads and writes (`format_version`).
pub const INDEX_FORMAT_VERSION: u32 = 1;
/// Largest `index.json` a client reads (about 20,000 releases with a few patches each).
pub const MAX_INDEX_BYTES: u64 = 16 << 20;
/// Most releases one index may list.
pub const MAX_RELEASES: usize = 100_000;
/// Most patches into one release.
pub const MAX_PATCHES_PER_RELEASE: usize = 1_000;
/// Longest release name, notes or app version string (bytes).
pub const MAX_NAME: usize = 128;
/// Longest release notes (bytes).
pub const MAX_NOTES: usize = 64 << 10;
/// First tag of `index.json.sig`.
const SIG_TAG: &str = "bundelta-index-signature-v1";

/// A blob of the repository: `blobs/<blake3>` holding `bytes` bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Blob {
    /// blake3 of the blob's bytes, 64 lowercase hex digits: also its file name.
    pub blake3: String,
    /// Its size in bytes.
    pub bytes: u64,
}

/// A patch into a release from the bundle whose digest is `from`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchRef {
    /// Bundle digest of the version it applies to (64 hex digits).
    pub from: String,
    /// blake3 of the patch file's bytes: its name under `blobs/`.
    pub blake3: String,
    /// Its size in bytes.
    pub bytes: u64,
}

impl PatchRef {
    /// The patch file as a blob.
    pub fn blob(&self) -> Blob {
        Blob {
            blake3: self.blake3.clone(),
            bytes: self.bytes,
        }
    }
}

/// One release of the bundle.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Release {
    /// Its name ("1.4.2"): unique in the index, shown to users, compared by nothing.
    pub version: String,
    /// Bundle digest ([`crate::bundle_digest`]) of the release: how a client recognises an
    /// install of it, whatever version file it may hold.
    pub digest: String,
    /// Bytes of the bundle's file contents.
    pub bytes: u64,
    /// The whole release as a patch from nothing (an empty directory, or an empty file): the
    /// route of a client too far behind, or with no known version.
    pub full: Blob,
    /// Patches into this release, by base.
    pub patches: Vec<PatchRef>,
    /// A client must install it (the client reports it; it does not skip it).
    #[serde(default)]
    pub mandatory: bool,
    /// Release notes (plain text).
    #[serde(default)]
    pub notes: String,
    /// A client on a release published before this named one must reach it first (a data
    /// migration, a key rotation): routes from there pass through it.
    #[serde(default)]
    pub requires: Option<String>,
    /// Lowest client (app) version allowed to install it, dotted numbers ("2.1").
    #[serde(default)]
    pub min_app: Option<String>,
    /// Highest client (app) version allowed to install it.
    #[serde(default)]
    pub max_app: Option<String>,
    /// Percentage of clients (0 to 100, by a hash of their id) offered it as a target.
    pub rollout: u8,
    /// Withdrawn: never a target, never a step of a route.
    #[serde(default)]
    pub yanked: bool,
}

impl Release {
    /// A release with the default policy: not mandatory, no notes, no `requires`, no app
    /// bounds, offered to every client, not yanked, no patches yet.
    pub fn new(version: &str, digest: String, bytes: u64, full: Blob) -> Release {
        Release {
            version: version.into(),
            digest,
            bytes,
            full,
            patches: Vec::new(),
            mandatory: false,
            notes: String::new(),
            requires: None,
            min_app: None,
            max_app: None,
            rollout: 100,
            yanked: false,
        }
    }
}

/// The whole index (`index.json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Index {
    /// Always [`INDEX_FORMAT`].
    pub format: String,
    /// Always [`INDEX_FORMAT_VERSION`] for this build.
    pub format_version: u32,
    /// The product's name.
    pub name: String,
    /// Increased by every publication; a client refuses an index older than one it accepted.
    pub version: u64,
    /// Unix time (seconds) after which a client refuses the index as stale.
    pub expires: u64,
    /// `"directory"` or `"file"`: what a bundle is.
    pub bundle: String,
    /// Every release, in publication order (oldest first).
    pub releases: Vec<Release>,
}

impl Index {
    /// An empty index for a new repository.
    pub fn new(name: &str, directory: bool) -> Index {
        Index {
            format: INDEX_FORMAT.into(),
            format_version: INDEX_FORMAT_VERSION,
            name: name.into(),
            version: 0,
            expires: 0,
            bundle: if directory { "directory" } else { "file" }.into(),
            releases: Vec::new(),
        }
    }

    /// The bytes of `index.json`: the same index always gives the same bytes (field order is
    /// fixed, maps are not used), two-space indented, with a final newline.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("an index always serialises");
        v.push(b'\n');
        v
    }

    /// Parse and check `index.json` (only ever called on signature-checked bytes by a
    /// client). Every field is checked: digests are 64 hex digits, names are unique and
    /// bounded, `requires` names an earlier release, rollout is at most 100.
    pub fn parse(bytes: &[u8]) -> Result<Index> {
        if bytes.len() as u64 > MAX_INDEX_BYTES {
            return Err(bad(format!(
                "{} bytes, more than the {MAX_INDEX_BYTES} an index may have",
                bytes.len()
            )));
        }
        let ix: Index =
            serde_json::from_slice(bytes).map_err(|e| bad(format!("not a valid index: {e}")))?;
        ix.check()?;
        Ok(ix)
    }

    /// The checks [`Index::parse`] makes, for an index built in memory.
    pub fn check(&self) -> Result<()> {
        if self.format != INDEX_FORMAT {
            return Err(bad(format!(
                "format is {:?}, not {INDEX_FORMAT:?}",
                self.format
            )));
        }
        if self.format_version != INDEX_FORMAT_VERSION {
            return Err(Error::Unsupported {
                what: "update index format version",
                value: self.format_version.into(),
            });
        }
        if self.bundle != "directory" && self.bundle != "file" {
            return Err(bad(format!("bundle is {:?}", self.bundle)));
        }
        check_text("name", &self.name, MAX_NAME)?;
        if self.releases.len() > MAX_RELEASES {
            return Err(bad(format!(
                "{} releases (at most {MAX_RELEASES})",
                self.releases.len()
            )));
        }
        let mut names = std::collections::HashSet::new();
        let mut digests = std::collections::HashSet::new();
        for r in &self.releases {
            check_text("release version", &r.version, MAX_NAME)?;
            check_text("release notes", &r.notes, MAX_NOTES)?;
            parse_hash(&r.digest)?;
            check_blob(&r.full)?;
            if !names.insert(r.version.as_str()) {
                return Err(bad(format!("release {} is listed twice", r.version)));
            }
            if !digests.insert(r.digest.as_str()) {
                return Err(bad(format!(
                    "release {} repeats an earlier bundle",
                    r.version
                )));
            }
            if r.rollout > 100 {
                return Err(bad(format!(
                    "release {}: rollout {}%",
                    r.version, r.rollout
                )));
            }
            if let Some(req) = &r.requires {
                if !names.contains(req.as_str()) || *req == r.version {
                    return Err(bad(format!(
                        "release {} requires {req}, which is not an earlier release",
                        r.version
                    )));
                }
            }
            for (what, v) in [("min_app", &r.min_app), ("max_app", &r.max_app)] {
                if let Some(v) = v {
                    parse_app_version(v)
                        .ok_or_else(|| bad(format!("release {}: {what} {v:?}", r.version)))?;
                }
            }
            if r.patches.len() > MAX_PATCHES_PER_RELEASE {
                return Err(bad(format!(
                    "release {}: {} patches",
                    r.version,
                    r.patches.len()
                )));
            }
            for p in &r.patches {
                parse_hash(&p.from)?;
                parse_hash(&p.blake3)?;
                if p.from == r.digest {
                    return Err(bad(format!("release {}: a patch from itself", r.version)));
                }
            }
        }
        Ok(())
    }

    /// The release whose bundle digest is `digest`.
    pub fn release_by_digest(&self, digest: &Hash) -> Option<&Release> {
        let hex = crate::hex(digest);
        self.releases.iter().find(|r| r.digest == hex)
    }

    /// The release named `version`.
    pub fn release(&self, version: &str) -> Option<&Release> {
        self.releases.iter().find(|r| r.version == version)
    }
}

fn bad(detail: String) -> Error {
    Error::corrupt("update index", detail)
}

fn check_text(what: &str, s: &str, max: usize) -> Result<()> {
    if s.len() > max {
        return Err(bad(format!("{what} is {} bytes (at most {max})", s.len())));
    }
    if what != "release notes" && (s.is_empty() || s.chars().any(char::is_control)) {
        return Err(bad(format!(
            "{what} {s:?} is empty or has control characters"
        )));
    }
    Ok(())
}

fn check_blob(b: &Blob) -> Result<()> {
    parse_hash(&b.blake3).map(|_| ())
}

/// 64 lowercase hex digits to a hash.
pub fn parse_hash(s: &str) -> Result<Hash> {
    let ok = s.len() == 64
        && s.bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c));
    if !ok {
        return Err(bad(format!("{s:?} is not 64 lowercase hex digits")));
    }
    let mut h = [0u8; 32];
    for (i, b) in h.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).expect("checked hex");
    }
    Ok(h)
}

/// A dotted app version ("2", "2.1", "10.0.3") as numbers, for `min_app`/`max_app`; `None`
/// for anything else (letters, empty parts, more than 8 parts, a part above u32).
pub fn parse_app_version(s: &str) -> Option<Vec<u32>> {
    let parts: Option<Vec<u32>> = s
        .split('.')
        .map(|p| {
            (!p.is_empty() && p.len() <= 10 && p.bytes().all(|c| c.is_ascii_digit()))
                .then(|| p.parse().ok())
                .flatten()
        })
        .collect();
    parts.filter(|v| !v.is_empty() && v.len() <= 8)
}

/// Compare two dotted app versions numerically, a missing part counting as 0 (`2.1` = `2.1.0`).
pub fn cmp_app_versions(a: &[u32], b: &[u32]) -> std::cmp::Ordering {
    let n = a.len().max(b.len());
    (0..n)
        .map(|i| (a.get(i).unwrap_or(&0), b.get(i).unwrap_or(&0)))
        .map(|(x, y)| x.cmp(y))
        .find(|o| o.is_ne())
        .unwrap_or(std::cmp::Ordering::Equal)
}

/// The text of `index.json.sig` for the index bytes `index`: one line,
/// `bundelta-index-signature-v1 <128 hex digits>`.
pub fn sign_index(index: &[u8], key: &SecretKey) -> String {
    let digest = *blake3::hash(index).as_bytes();
    let sig = key.sign_digest(INDEX_SIGNATURE_DOMAIN, &digest);
    format!("{SIG_TAG} {}\n", crate::tree::hex_bytes(&sig))
}

/// Check `index.json.sig` against the index bytes and a public key. Nothing of the index is
/// parsed before this passes.
pub fn verify_index(index: &[u8], sig_text: &[u8], key: &PublicKey) -> Result<()> {
    let malformed = || {
        bad(format!(
            "index.json.sig is not one line \"{SIG_TAG} <128 hex digits>\""
        ))
    };
    if sig_text.len() > 512 {
        return Err(malformed());
    }
    let text = std::str::from_utf8(sig_text).map_err(|_| malformed())?;
    let hex = text
        .trim()
        .strip_prefix(SIG_TAG)
        .ok_or_else(malformed)?
        .trim();
    if hex.len() != 128 || !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
        return Err(malformed());
    }
    let mut sig = [0u8; crate::format::SIGNATURE_LEN];
    for (i, b) in sig.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| malformed())?;
    }
    verify_digest(
        key,
        INDEX_SIGNATURE_DOMAIN,
        blake3::hash(index).as_bytes(),
        &sig,
    )
}

/// Why a signed index is not fresh enough to use.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Staleness {
    /// Older than an index this client already accepted: a replay (rollback attack).
    Replayed {
        /// The index's version.
        version: u64,
        /// The highest version the client accepted before.
        seen: u64,
    },
    /// Past its expiry: a frozen mirror, or a publisher that stopped re-signing.
    Expired {
        /// The index's expiry (unix seconds).
        expires: u64,
        /// The client's clock (unix seconds).
        now: u64,
    },
}

impl std::fmt::Display for Staleness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Staleness::Replayed { version, seen } => write!(
                f,
                "index version {version} is older than version {seen}, which this client \
                 already accepted: a replayed index (refused, so that no fix can be hidden)"
            ),
            Staleness::Expired { expires, now } => write!(
                f,
                "index expired {} s ago (expiry {expires}, now {now}): the repository was not \
                 re-published in time, or this mirror is frozen; publish again or check the \
                 client's clock",
                now - expires
            ),
        }
    }
}

/// Whether an index of `version` expiring at `expires` may be used by a client that accepted
/// `seen` before, at time `now`. Equal versions pass (the same index fetched again).
pub fn check_fresh(
    version: u64,
    expires: u64,
    seen: u64,
    now: u64,
) -> std::result::Result<(), Staleness> {
    if version < seen {
        return Err(Staleness::Replayed { version, seen });
    }
    if now >= expires {
        return Err(Staleness::Expired { expires, now });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(c: char) -> String {
        std::iter::repeat_n(c, 64).collect()
    }

    fn sample() -> Index {
        let mut ix = Index::new("app", true);
        ix.version = 3;
        ix.expires = 2_000_000_000;
        for (i, v) in ["1.0", "1.1"].iter().enumerate() {
            let full = Blob {
                blake3: h(['c', 'd'][i]),
                bytes: 400,
            };
            let mut r = Release::new(v, h(['a', 'b'][i]), 1000, full);
            if i == 1 {
                r.patches.push(PatchRef {
                    from: h('a'),
                    blake3: h('e'),
                    bytes: 20,
                });
            }
            ix.releases.push(r);
        }
        ix
    }

    #[test]
    fn round_trips_deterministically() {
        let ix = sample();
        let b = ix.to_bytes();
        assert_eq!(Index::parse(&b).unwrap(), ix);
        assert_eq!(Index::parse(&b).unwrap().to_bytes(), b);
    }

    #[test]
    fn refuses_what_a_client_must_not_use() {
        type Edit = Box<dyn Fn(&mut Index)>;
        let cases: Vec<(&str, Edit)> = vec![
            ("format", Box::new(|ix| ix.format = "other".into())),
            ("format version", Box::new(|ix| ix.format_version = 2)),
            ("bundle", Box::new(|ix| ix.bundle = "disk".into())),
            (
                "duplicate name",
                Box::new(|ix| ix.releases[1].version = "1.0".into()),
            ),
            (
                "duplicate digest",
                Box::new(|ix| ix.releases[1].digest = h('a')),
            ),
            (
                "bad digest",
                Box::new(|ix| ix.releases[0].digest = "A".repeat(64)),
            ),
            (
                "short blob",
                Box::new(|ix| ix.releases[0].full.blake3 = "ab".into()),
            ),
            ("rollout", Box::new(|ix| ix.releases[0].rollout = 101)),
            (
                "requires later",
                Box::new(|ix| ix.releases[0].requires = Some("1.1".into())),
            ),
            (
                "self patch",
                Box::new(|ix| ix.releases[1].patches[0].from = h('b')),
            ),
            (
                "app version",
                Box::new(|ix| ix.releases[0].min_app = Some("2.x".into())),
            ),
            (
                "control char",
                Box::new(|ix| ix.releases[0].version = "1\n0".into()),
            ),
        ];
        for (what, f) in cases {
            let mut ix = sample();
            f(&mut ix);
            let e = Index::parse(&ix.to_bytes());
            assert!(e.is_err(), "{what} accepted");
        }
        // An unknown field is refused, not ignored: every byte of a signed index means
        // something this client understands.
        let text = String::from_utf8(sample().to_bytes()).unwrap();
        for (field, at) in [("\"name\"", 0), ("\"from\"", 0), ("\"blake3\"", 0)] {
            let extra = text.replacen(field, &format!("\"surprise\": {at},\n  {field}"), 1);
            assert_ne!(extra, text);
            assert!(
                Index::parse(extra.as_bytes()).is_err(),
                "unknown field before {field}"
            );
        }
        assert!(Index::parse(b"{").is_err());
        assert!(Index::parse(&vec![b' '; (MAX_INDEX_BYTES + 1) as usize]).is_err());
    }

    #[test]
    fn signature_binds_bytes_key_and_domain() {
        let key = SecretKey::from_bytes([0x42; 32]);
        let bytes = sample().to_bytes();
        let sig = sign_index(&bytes, &key);
        verify_index(&bytes, sig.as_bytes(), &key.public_key()).unwrap();
        let other = SecretKey::from_bytes([0x43; 32]).public_key();
        assert!(verify_index(&bytes, sig.as_bytes(), &other).is_err());
        let mut changed = bytes.clone();
        changed[10] ^= 1;
        assert!(verify_index(&changed, sig.as_bytes(), &key.public_key()).is_err());
        // A patch signature over the same digest is not an index signature.
        let digest = *blake3::hash(&bytes).as_bytes();
        let patch_sig = key.sign_digest(crate::SIGNATURE_DOMAIN, &digest);
        let forged = format!("{SIG_TAG} {}\n", crate::tree::hex_bytes(&patch_sig));
        assert!(verify_index(&bytes, forged.as_bytes(), &key.public_key()).is_err());
        for junk in [
            "",
            "bundelta-index-signature-v1",
            "bundelta-index-signature-v1 zz",
        ] {
            assert!(verify_index(&bytes, junk.as_bytes(), &key.public_key()).is_err());
        }
    }

    #[test]
    fn freshness_refuses_replay_and_expiry() {
        assert!(check_fresh(5, 100, 5, 99).is_ok());
        assert!(check_fresh(6, 100, 5, 99).is_ok());
        assert_eq!(
            check_fresh(4, 100, 5, 99),
            Err(Staleness::Replayed {
                version: 4,
                seen: 5
            })
        );
        assert_eq!(
            check_fresh(5, 100, 5, 100),
            Err(Staleness::Expired {
                expires: 100,
                now: 100
            })
        );
    }

    #[test]
    fn app_versions_compare_numerically() {
        let v = |s| parse_app_version(s).unwrap();
        assert_eq!(
            cmp_app_versions(&v("2.10"), &v("2.9")),
            std::cmp::Ordering::Greater
        );
        assert_eq!(
            cmp_app_versions(&v("2.1"), &v("2.1.0")),
            std::cmp::Ordering::Equal
        );
        for badv in ["", "1..2", "a", "1.-2", "99999999999"] {
            assert!(parse_app_version(badv).is_none(), "{badv}");
        }
    }
}
