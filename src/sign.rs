//! Patch signatures: Ed25519 over everything a patch says.
//!
//! # Why and what
//!
//! The whole-patch blake3 trailer catches corruption, but anyone can recompute it: it says
//! nothing about *who* made the patch. A signed patch carries a 64-byte Ed25519 signature
//! (format section 6) over
//!
//! ```text
//! "bundelta patch signature v2\0" || blake3(every byte before the signature)
//! ```
//!
//! that is the header (including the "signed" flag, so a signature cannot be stripped without
//! the header changing), the manifest (paths, modes, ops, the *base digest* of every old file
//! relied upon and the *bundle digest* of the result) and all three data streams. The applier,
//! given a public key, checks the signature before it decodes the manifest or writes anything;
//! given no key, it still checks the trailer and every hash, but accepts unsigned patches.
//!
//! # What a signature does not cover
//!
//! - **Replay.** A signed patch stays valid forever. Because the base digest and the bundle
//!   digest are signed, an old patch only ever turns *its own* base into *its own* target: fed
//!   to any other version it is refused before any write ([`crate::Error::WrongBase`]). What
//!   it cannot stop is a client that *is* at that old base being handed the old patch instead of
//!   a newer one (a freeze, not a corruption): clients that care compare the patch's target
//!   ([`crate::Patch::new_digest`]) with the version they expect from their own update channel.
//!   A downgrade needs a signed patch from the newer to the older version; never sign those
//!   unless you mean to ship them.
//! - **Key management.** Secret keys are files; protect them as you would a release key.
//!   There is no revocation and no key id beyond the fingerprint printed by the CLI.
//!
//! The module is part of the apply core: verification is what a client needs.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

use crate::error::{Error, Result};
use crate::format::{Hash, Header, FLAG_SIGNED, MAX_HEADER_LEN, SIGNATURE_LEN, TRAILER_LEN};

/// Bytes prepended to the signed digest (domain separation from any other use of a key).
pub const SIGNATURE_DOMAIN: &[u8] = b"bundelta patch signature v2\0";

/// First line tag of a secret key file written by [`encode_secret_key`].
const SECRET_TAG: &str = "bundelta-secret-key";
/// First line tag of a public key file written by [`encode_public_key`].
const PUBLIC_TAG: &str = "bundelta-public-key";

fn message(digest: &Hash) -> Vec<u8> {
    let mut m = SIGNATURE_DOMAIN.to_vec();
    m.extend_from_slice(digest);
    m
}

/// The public key of a 32-byte Ed25519 secret key (seed).
pub fn public_key(secret: &[u8; 32]) -> [u8; 32] {
    SigningKey::from_bytes(secret).verifying_key().to_bytes()
}

/// A short, human-comparable name for a public key: 16 hex digits of its blake3.
pub fn fingerprint(public: &[u8; 32]) -> String {
    crate::tree::hex_bytes(&blake3::hash(public).as_bytes()[..8])
}

/// Sign the digest of a patch body (everything before the signature block).
pub(crate) fn sign_digest(secret: &[u8; 32], digest: &Hash) -> [u8; SIGNATURE_LEN] {
    SigningKey::from_bytes(secret)
        .sign(&message(digest))
        .to_bytes()
}

/// Check a signature block against a public key; [`Error::Signature`] names the key.
pub(crate) fn verify_digest(
    public: &[u8; 32],
    digest: &Hash,
    sig: &[u8; SIGNATURE_LEN],
) -> Result<()> {
    let bad = |why: &'static str| Error::Signature {
        key: fingerprint(public),
        why,
    };
    let key = VerifyingKey::from_bytes(public).map_err(|_| bad("the public key is not valid"))?;
    key.verify_strict(&message(digest), &Signature::from_bytes(sig))
        .map_err(|_| bad("the signature does not match: signed by another key, or altered"))
}

/// Sign an existing patch: returns the patch with the signed flag set, a signature block and a
/// new trailer. A patch that is already signed is re-signed (its old signature is dropped).
/// The input must be a whole, intact patch (its trailer is checked first).
///
/// ```
/// # fn main() -> Result<(), bundelta::Error> {
/// # let dir = std::env::temp_dir().join(format!("bundelta-doc-sign-{}", std::process::id()));
/// # std::fs::create_dir_all(&dir).unwrap();
/// # let (old, new) = (dir.join("old"), dir.join("new"));
/// # std::fs::write(&old, b"hello old world").unwrap();
/// # std::fs::write(&new, b"hello new world").unwrap();
/// let secret = [7u8; 32]; // in real use: 32 random bytes kept secret
/// let patch = bundelta::DiffOptions::new().diff_bytes(b"hello old world", b"hello new world")?;
/// let signed = bundelta::sign_patch(&patch, &secret)?;
///
/// std::fs::write(dir.join("p.bdp"), &signed).unwrap();
/// let mut patcher = bundelta::Patcher::new();
/// patcher.require_signature(bundelta::public_key(&secret));
/// patcher.apply(&old, &dir.join("p.bdp"), &dir.join("out"))?;
/// assert_eq!(std::fs::read(dir.join("out")).unwrap(), b"hello new world");
/// # std::fs::remove_dir_all(&dir).unwrap();
/// # Ok(())
/// # }
/// ```
pub fn sign_patch(patch: &[u8], secret: &[u8; 32]) -> Result<Vec<u8>> {
    let header = Header::decode(&patch[..patch.len().min(MAX_HEADER_LEN)])?;
    let expect = header.patch_len().unwrap_or(u64::MAX);
    if patch.len() as u64 != expect {
        return Err(Error::corrupt(
            "header",
            format!(
                "patch is {} bytes but its header describes {expect}",
                patch.len()
            ),
        ));
    }
    let body_end = patch.len() - TRAILER_LEN;
    let found = blake3::hash(&patch[..body_end]);
    let mut recorded = [0u8; TRAILER_LEN];
    recorded.copy_from_slice(&patch[body_end..]);
    if *found.as_bytes() != recorded {
        return Err(Error::Checksum {
            expected: crate::tree::hex(&recorded),
            found: crate::tree::hex(found.as_bytes()),
        });
    }
    let content = &patch[header.encoded_len()..header.signature_offset() as usize];
    let mut signed = header.clone();
    signed.flags |= FLAG_SIGNED;
    let mut out = signed.encode();
    out.extend_from_slice(content);
    let digest = *blake3::hash(&out).as_bytes();
    out.extend_from_slice(&sign_digest(secret, &digest));
    let trailer = blake3::hash(&out);
    out.extend_from_slice(trailer.as_bytes());
    Ok(out)
}

fn decode_hex32(s: &str) -> Option<[u8; 32]> {
    let s = s.trim();
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut k = [0u8; 32];
    for (i, b) in k.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(k)
}

fn encode_key(tag: &str, key: &[u8; 32]) -> String {
    format!("{tag} {}\n", crate::tree::hex_bytes(key))
}

fn decode_key(tag: &str, text: &[u8], what: &'static str) -> Result<[u8; 32]> {
    let bad = || Error::Config {
        detail: format!(
            "not a bundelta {what} key file (expected one line \"{tag} <64 hex digits>\")"
        ),
    };
    let text = std::str::from_utf8(text).map_err(|_| bad())?;
    let rest = text.trim().strip_prefix(tag).ok_or_else(bad)?;
    decode_hex32(rest).ok_or_else(bad)
}

/// The text of a secret key file: `bundelta-secret-key <64 hex digits>`.
pub fn encode_secret_key(secret: &[u8; 32]) -> String {
    encode_key(SECRET_TAG, secret)
}

/// The text of a public key file: `bundelta-public-key <64 hex digits>`.
pub fn encode_public_key(public: &[u8; 32]) -> String {
    encode_key(PUBLIC_TAG, public)
}

/// Parse the contents of a secret key file written by [`encode_secret_key`].
pub fn decode_secret_key(text: &[u8]) -> Result<[u8; 32]> {
    decode_key(SECRET_TAG, text, "secret")
}

/// Parse the contents of a public key file written by [`encode_public_key`]; the key must be a
/// valid Ed25519 point.
pub fn decode_public_key(text: &[u8]) -> Result<[u8; 32]> {
    let k = decode_key(PUBLIC_TAG, text, "public")?;
    VerifyingKey::from_bytes(&k).map_err(|_| Error::Config {
        detail: "the public key file holds bytes that are not an Ed25519 public key".into(),
    })?;
    Ok(k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_files_round_trip_and_reject_each_other() {
        let secret = [42u8; 32];
        let public = public_key(&secret);
        assert_eq!(
            decode_secret_key(encode_secret_key(&secret).as_bytes()).unwrap(),
            secret
        );
        assert_eq!(
            decode_public_key(encode_public_key(&public).as_bytes()).unwrap(),
            public
        );
        assert!(decode_public_key(encode_secret_key(&secret).as_bytes()).is_err());
        assert!(decode_secret_key(encode_public_key(&public).as_bytes()).is_err());
        assert!(decode_public_key(b"bundelta-public-key 00").is_err());
    }

    #[test]
    fn signature_checks_key_and_digest() {
        let secret = [1u8; 32];
        let digest = [9u8; 32];
        let sig = sign_digest(&secret, &digest);
        verify_digest(&public_key(&secret), &digest, &sig).unwrap();
        let other = public_key(&[2u8; 32]);
        assert!(matches!(
            verify_digest(&other, &digest, &sig),
            Err(Error::Signature { .. })
        ));
        let mut d2 = digest;
        d2[0] ^= 1;
        assert!(verify_digest(&public_key(&secret), &d2, &sig).is_err());
    }
}
