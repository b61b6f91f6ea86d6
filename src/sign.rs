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

/// First line tag of a secret key file written by [`SecretKey::to_text`].
const SECRET_TAG: &str = "bundelta-secret-key";
/// First line tag of a public key file written by [`PublicKey::to_text`].
const PUBLIC_TAG: &str = "bundelta-public-key";

fn message(domain: &[u8], digest: &Hash) -> Vec<u8> {
    let mut m = domain.to_vec();
    m.extend_from_slice(digest);
    m
}

/// An Ed25519 public key: what a client holds to check that a patch (or, with the release
/// layer, an index) was made by the holder of the matching [`SecretKey`].
///
/// Always a valid curve point: [`PublicKey::from_bytes`] and [`PublicKey::from_text`] refuse
/// anything else. `Debug` and `Display` print the [fingerprint](PublicKey::fingerprint).
///
/// ```
/// let secret = bundelta::SecretKey::from_bytes([7u8; 32]); // in real use: 32 random bytes
/// let public = secret.public_key();
/// let text = public.to_text(); // the `.pub` file `bundelta keygen` writes
/// assert_eq!(bundelta::PublicKey::from_text(text.as_bytes())?, public);
/// assert_eq!(public.fingerprint().len(), 16);
/// # Ok::<(), bundelta::Error>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey([u8; 32]);

impl PublicKey {
    /// The key from its 32 raw bytes; [`Error::Config`] if they are not an Ed25519 point.
    ///
    /// ```
    /// let public = bundelta::SecretKey::from_bytes([7u8; 32]).public_key();
    /// assert_eq!(bundelta::PublicKey::from_bytes(public.to_bytes())?, public);
    /// // 32 bytes that are no point of the curve are refused.
    /// assert!(bundelta::PublicKey::from_bytes([2u8; 32]).is_err());
    /// # Ok::<(), bundelta::Error>(())
    /// ```
    pub fn from_bytes(bytes: [u8; 32]) -> Result<PublicKey> {
        VerifyingKey::from_bytes(&bytes).map_err(|_| Error::Config {
            detail: "32 bytes that are not an Ed25519 public key".into(),
        })?;
        Ok(PublicKey(bytes))
    }

    /// The 32 raw bytes (what the C API and the patch's signature check take).
    ///
    /// ```
    /// let public = bundelta::SecretKey::from_bytes([7u8; 32]).public_key();
    /// let raw: [u8; 32] = public.to_bytes(); // e.g. for the C API
    /// assert_eq!(bundelta::PublicKey::from_bytes(raw)?, public);
    /// # Ok::<(), bundelta::Error>(())
    /// ```
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0
    }

    /// A short, human-comparable name for the key: 16 hex digits of its blake3.
    ///
    /// ```
    /// let public = bundelta::SecretKey::from_bytes([7u8; 32]).public_key();
    /// let fingerprint = public.fingerprint();
    /// assert_eq!(fingerprint.len(), 16);
    /// assert!(fingerprint.bytes().all(|b| b.is_ascii_hexdigit()));
    /// assert_eq!(public.to_string(), fingerprint); // `Display` (and `Debug`) print it
    /// ```
    pub fn fingerprint(&self) -> String {
        crate::tree::hex_bytes(&blake3::hash(&self.0).as_bytes()[..8])
    }

    /// The text of a public key file: `bundelta-public-key <64 hex digits>` and a newline.
    ///
    /// ```
    /// let public = bundelta::SecretKey::from_bytes([7u8; 32]).public_key();
    /// let text = public.to_text(); // the `.pub` file `bundelta keygen` writes
    /// assert!(text.starts_with("bundelta-public-key ") && text.ends_with('\n'));
    /// assert_eq!(text.len(), "bundelta-public-key ".len() + 64 + 1);
    /// ```
    pub fn to_text(&self) -> String {
        encode_key(PUBLIC_TAG, &self.0)
    }

    /// Parse the contents of a public key file written by [`PublicKey::to_text`] (a secret
    /// key file is refused: it has another tag).
    ///
    /// ```
    /// let secret = bundelta::SecretKey::from_bytes([7u8; 32]); // in real use: 32 random bytes
    /// let public = bundelta::PublicKey::from_text(secret.public_key().to_text().as_bytes())?;
    /// assert_eq!(public, secret.public_key());
    /// // A secret key file is not accepted as a public one.
    /// assert!(bundelta::PublicKey::from_text(secret.to_text().as_bytes()).is_err());
    /// # Ok::<(), bundelta::Error>(())
    /// ```
    pub fn from_text(text: &[u8]) -> Result<PublicKey> {
        let k = decode_key(PUBLIC_TAG, text, "public")?;
        PublicKey::from_bytes(k).map_err(|_| Error::Config {
            detail: "the public key file holds bytes that are not an Ed25519 public key".into(),
        })
    }
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({})", self.fingerprint())
    }
}

impl std::fmt::Display for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.fingerprint())
    }
}

/// An Ed25519 secret key (the 32-byte seed): signs patches ([`sign_patch`],
/// `DiffOptions::sign_with`). A distinct type from [`PublicKey`], so one cannot be passed where
/// the other is expected; its bytes are wiped from memory when it is dropped, and `Debug`
/// prints only the fingerprint of its public key.
///
/// The library has no random generator of its own (the apply core needs none): make a key
/// from 32 bytes of the operating system's randomness, as `bundelta keygen` does.
///
/// ```
/// let secret = bundelta::SecretKey::from_bytes([7u8; 32]); // in real use: 32 random bytes
/// let again = bundelta::SecretKey::from_text(secret.to_text().as_bytes())?;
/// assert_eq!(again.public_key(), secret.public_key());
/// assert!(!format!("{secret:?}").contains("0707"));
/// # Ok::<(), bundelta::Error>(())
/// ```
#[derive(Clone)]
pub struct SecretKey(SigningKey);

impl SecretKey {
    /// The key from its 32-byte seed. Every seed is a valid key.
    ///
    /// ```
    /// let seed = [7u8; 32]; // in real use: 32 bytes of the operating system's randomness
    /// let secret = bundelta::SecretKey::from_bytes(seed);
    /// assert_eq!(secret.to_bytes(), seed);
    /// let other = bundelta::SecretKey::from_bytes([8u8; 32]);
    /// assert_ne!(other.public_key(), secret.public_key());
    /// ```
    pub fn from_bytes(seed: [u8; 32]) -> SecretKey {
        SecretKey(SigningKey::from_bytes(&seed))
    }

    /// The 32-byte seed (handle with care: whoever has it can sign).
    ///
    /// ```
    /// let secret = bundelta::SecretKey::from_bytes([7u8; 32]); // in real use: 32 random bytes
    /// let again = bundelta::SecretKey::from_bytes(secret.to_bytes());
    /// assert_eq!(again.public_key(), secret.public_key());
    /// ```
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// The matching public key, for clients.
    ///
    /// ```
    /// # fn main() -> Result<(), bundelta::Error> {
    /// # #[cfg(feature = "diff")] {
    /// let secret = bundelta::SecretKey::from_bytes([7u8; 32]); // in real use: 32 random bytes
    /// let mut patcher = bundelta::Patcher::new(); // the client holds only the public key
    /// patcher.require_signature(secret.public_key());
    /// let patch = bundelta::DiffOptions::new().sign_with(secret).diff_bytes(b"old", b"new")?;
    /// let p = patcher.open_reader(std::io::Cursor::new(patch), "signed patch")?;
    /// assert_eq!(patcher.verify_patch(p, None)?, None); // signed by the matching secret key
    /// # }
    /// # Ok(()) }
    /// ```
    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.0.verifying_key().to_bytes())
    }

    /// The text of a secret key file: `bundelta-secret-key <64 hex digits>` and a newline.
    ///
    /// ```
    /// let secret = bundelta::SecretKey::from_bytes([7u8; 32]); // in real use: 32 random bytes
    /// let text = secret.to_text(); // the secret key file `bundelta keygen` writes
    /// assert!(text.starts_with("bundelta-secret-key "));
    /// assert_eq!(bundelta::SecretKey::from_text(text.as_bytes())?.to_bytes(), [7u8; 32]);
    /// # Ok::<(), bundelta::Error>(())
    /// ```
    pub fn to_text(&self) -> String {
        encode_key(SECRET_TAG, &self.0.to_bytes())
    }

    /// Parse the contents of a secret key file written by [`SecretKey::to_text`] (a public
    /// key file is refused: it has another tag).
    ///
    /// ```
    /// let secret = bundelta::SecretKey::from_bytes([7u8; 32]); // in real use: 32 random bytes
    /// let again = bundelta::SecretKey::from_text(secret.to_text().as_bytes())?;
    /// assert_eq!(again.public_key(), secret.public_key());
    /// // A public key file is not accepted as a secret one.
    /// assert!(bundelta::SecretKey::from_text(secret.public_key().to_text().as_bytes()).is_err());
    /// # Ok::<(), bundelta::Error>(())
    /// ```
    pub fn from_text(text: &[u8]) -> Result<SecretKey> {
        Ok(SecretKey::from_bytes(decode_key(
            SECRET_TAG, text, "secret",
        )?))
    }

    /// An Ed25519 signature of `domain || digest`, for the signed objects of this crate (each
    /// with a domain of its own, so that a signature over one can never pass for another).
    pub(crate) fn sign_digest(&self, domain: &[u8], digest: &Hash) -> [u8; SIGNATURE_LEN] {
        self.0.sign(&message(domain, digest)).to_bytes()
    }
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretKey(public {})", self.public_key().fingerprint())
    }
}

/// Check a signature of `domain || digest` against a public key; [`Error::Signature`] names
/// the key.
pub(crate) fn verify_digest(
    public: &PublicKey,
    domain: &[u8],
    digest: &Hash,
    sig: &[u8; SIGNATURE_LEN],
) -> Result<()> {
    let bad = |why: &'static str| Error::Signature {
        key: public.fingerprint(),
        why,
    };
    let key =
        VerifyingKey::from_bytes(&public.0).map_err(|_| bad("the public key is not valid"))?;
    key.verify_strict(&message(domain, digest), &Signature::from_bytes(sig))
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
/// let secret = bundelta::SecretKey::from_bytes([7u8; 32]); // in real use: 32 random bytes
/// let patch = bundelta::DiffOptions::new().diff_bytes(b"hello old world", b"hello new world")?;
/// let signed = bundelta::sign_patch(&patch, &secret)?;
///
/// std::fs::write(dir.join("p.bdp"), &signed).unwrap();
/// let mut patcher = bundelta::Patcher::new();
/// patcher.require_signature(secret.public_key());
/// patcher.apply(&old, &dir.join("p.bdp"), &dir.join("out"))?;
/// assert_eq!(std::fs::read(dir.join("out")).unwrap(), b"hello new world");
/// # std::fs::remove_dir_all(&dir).unwrap();
/// # Ok(())
/// # }
/// ```
pub fn sign_patch(patch: &[u8], secret: &SecretKey) -> Result<Vec<u8>> {
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
    out.extend_from_slice(&secret.sign_digest(SIGNATURE_DOMAIN, &digest));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_files_round_trip_and_reject_each_other() {
        let secret = SecretKey::from_bytes([42u8; 32]);
        let public = secret.public_key();
        let again = SecretKey::from_text(secret.to_text().as_bytes()).unwrap();
        assert_eq!(again.to_bytes(), [42u8; 32]);
        assert_eq!(
            PublicKey::from_text(public.to_text().as_bytes()).unwrap(),
            public
        );
        assert!(PublicKey::from_text(secret.to_text().as_bytes()).is_err());
        assert!(SecretKey::from_text(public.to_text().as_bytes()).is_err());
        assert!(PublicKey::from_text(b"bundelta-public-key 00").is_err());
        assert!(!format!("{secret:?}").contains(&crate::tree::hex_bytes(&[42u8; 32])));
    }

    #[test]
    fn signature_checks_key_domain_and_digest() {
        let secret = SecretKey::from_bytes([1u8; 32]);
        let digest = [9u8; 32];
        let sig = secret.sign_digest(SIGNATURE_DOMAIN, &digest);
        verify_digest(&secret.public_key(), SIGNATURE_DOMAIN, &digest, &sig).unwrap();
        let other = SecretKey::from_bytes([2u8; 32]).public_key();
        assert!(matches!(
            verify_digest(&other, SIGNATURE_DOMAIN, &digest, &sig),
            Err(Error::Signature { .. })
        ));
        let mut d2 = digest;
        d2[0] ^= 1;
        assert!(verify_digest(&secret.public_key(), SIGNATURE_DOMAIN, &d2, &sig).is_err());
        assert!(verify_digest(&secret.public_key(), b"another domain\0", &digest, &sig).is_err());
    }
}
