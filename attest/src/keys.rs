//! Ed25519 provider keys, public keys, signatures and DIDs.
//!
//! A key file holds the 32-byte Ed25519 secret seed as lowercase hex and a newline.
//! It is created with mode 0600 and refused when group or others can read it.
//!
//! A provider's DID is `did:tenzro:machine:{uuid}` where the UUID is derived from its
//! public key alone: take SHA-256 of the 32 public-key bytes, keep the first 16
//! bytes, and set the version nibble to 8 (custom, RFC 9562) and the variant bits to
//! `10`. The same key always gives the same DID, and anyone can recompute it.

use std::fmt;
use std::io::Write as _;
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::Error;

/// An Ed25519 signing key: a provider's identity, or any Tenzro signer
/// (a gateway or an agent signing vouchers).
pub struct ProviderKey {
    secret: ed25519_dalek::SigningKey,
    /// The secret scalar and nonce prefix, derived once: `SigningKey::sign` derives
    /// them (a SHA-512 of the seed) on every call, and a gateway signs every
    /// request it forwards. Zeroed when dropped.
    expanded: ed25519_dalek::hazmat::ExpandedSecretKey,
}

impl fmt::Debug for ProviderKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProviderKey")
            .field("public", &self.public_key_hex())
            .finish_non_exhaustive()
    }
}

impl ProviderKey {
    /// A fresh key from the operating system's random source.
    pub fn generate() -> Result<Self, Error> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| Error::Random(e.to_string()))?;
        let key = Self::from_seed(&seed);
        seed.fill(0);
        Ok(key)
    }

    /// The key with this 32-byte secret seed (tests and tools).
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        Self {
            secret: ed25519_dalek::SigningKey::from_bytes(seed),
            expanded: ed25519_dalek::hazmat::ExpandedSecretKey::from(seed),
        }
    }

    /// Loads the key at `path`, or makes one there (mode 0600) when none exists.
    pub fn load_or_create(path: &Path) -> Result<Self, Error> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse_file(path, &text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Self::create(path),
            Err(e) => Err(Error::io(path, e)),
        }
    }

    fn parse_file(path: &Path, text: &str) -> Result<Self, Error> {
        check_private(path)?;
        let refuse = |reason: &str| Error::KeyFile {
            path: path.to_path_buf(),
            reason: reason.to_string(),
        };
        let mut seed = [0u8; 32];
        hex::decode_to_slice(text.trim(), &mut seed)
            .map_err(|_| refuse("expected 64 hex characters (an Ed25519 seed)"))?;
        let key = Self::from_seed(&seed);
        seed.fill(0);
        Ok(key)
    }

    fn create(path: &Path) -> Result<Self, Error> {
        let key = Self::generate()?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            options.mode(0o600);
        }
        let mut file = match options.open(path) {
            Ok(f) => f,
            // Another process made it first: use theirs.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
                return Self::parse_file(path, &text);
            }
            Err(e) => return Err(Error::io(path, e)),
        };
        let mut text = hex::encode(key.secret.to_bytes());
        text.push('\n');
        let written = file
            .write_all(text.as_bytes())
            .and_then(|()| file.sync_all());
        // Overwrite our copy of the secret text before reporting anything.
        text.clear();
        text.shrink_to_fit();
        written.map_err(|e| Error::io(path, e))?;
        Ok(key)
    }

    /// The public half.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.secret.verifying_key())
    }

    /// The public key as 64 lowercase hex characters.
    pub fn public_key_hex(&self) -> String {
        self.public_key().to_hex()
    }

    /// `did:tenzro:machine:{uuid}`, derived from the public key (see the module docs).
    pub fn did(&self) -> String {
        self.public_key().did()
    }

    /// Signs `message` (already domain-separated by the caller).
    pub fn sign(&self, message: &[u8]) -> Signature {
        // The same signature as `self.secret.sign(message)` (RFC 8032), without
        // expanding the seed again.
        Signature(ed25519_dalek::hazmat::raw_sign::<sha2::Sha512>(
            &self.expanded,
            message,
            &self.secret.verifying_key(),
        ))
    }
}

#[cfg(unix)]
fn check_private(path: &Path) -> Result<(), Error> {
    use std::os::unix::fs::PermissionsExt as _;
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(Error::KeyFile {
            path: path.to_path_buf(),
            reason: "group or others can access it; run chmod 600".to_string(),
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_path: &Path) -> Result<(), Error> {
    Ok(())
}

/// An Ed25519 public key. Text form: 64 hex characters.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey(ed25519_dalek::VerifyingKey);

impl PublicKey {
    /// The key from its 32 bytes; refuses bytes that are not a curve point.
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self, Error> {
        ed25519_dalek::VerifyingKey::from_bytes(bytes)
            .map(Self)
            .map_err(|e| Error::PublicKey(e.to_string()))
    }

    /// Parses 64 hex characters (surrounding whitespace and a `0x` prefix allowed).
    pub fn from_hex(text: &str) -> Result<Self, Error> {
        let bytes = decode_hex::<32>("public key", text)?;
        Self::from_bytes(&bytes)
    }

    /// The 32 key bytes.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// The key as 64 lowercase hex characters.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0.as_bytes())
    }

    /// `did:tenzro:machine:{uuid}` for this key (see the module docs).
    pub fn did(&self) -> String {
        let digest = crate::sha256(self.0.as_bytes());
        let mut first = [0u8; 16];
        first.copy_from_slice(&digest[..16]);
        let uuid = uuid::Builder::from_custom_bytes(first).into_uuid();
        format!("did:tenzro:machine:{}", uuid.hyphenated())
    }

    /// Checks `signature` over `message` (strict: no malleable encodings).
    pub fn verify(&self, message: &[u8], signature: &Signature) -> bool {
        self.0.verify_strict(message, &signature.0).is_ok()
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_hex())
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl FromStr for PublicKey {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Self::from_hex(s)
    }
}

impl Serialize for PublicKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for PublicKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Self::from_hex(&text).map_err(serde::de::Error::custom)
    }
}

/// An Ed25519 signature. Text form: 128 hex characters.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Signature(ed25519_dalek::Signature);

impl Signature {
    /// The signature from its 64 bytes.
    pub fn from_bytes(bytes: &[u8; 64]) -> Self {
        Self(ed25519_dalek::Signature::from_bytes(bytes))
    }

    /// Parses 128 hex characters.
    pub fn from_hex(text: &str) -> Result<Self, Error> {
        Ok(Self::from_bytes(&decode_hex::<64>("signature", text)?))
    }

    /// The 64 signature bytes.
    pub fn to_bytes(&self) -> [u8; 64] {
        self.0.to_bytes()
    }

    /// The signature as 128 lowercase hex characters.
    pub fn to_hex(&self) -> String {
        hex::encode(self.to_bytes())
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({})", self.to_hex())
    }
}

impl Serialize for Signature {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for Signature {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Self::from_hex(&text).map_err(serde::de::Error::custom)
    }
}

/// Decodes exactly `N` bytes of hex (whitespace around it and a `0x` prefix allowed).
pub(crate) fn decode_hex<const N: usize>(what: &'static str, text: &str) -> Result<[u8; N], Error> {
    let text = text.trim();
    let text = text.strip_prefix("0x").unwrap_or(text);
    if text.len() != 2 * N {
        return Err(Error::Length {
            what,
            expected: N,
            got: text.len() / 2,
        });
    }
    let mut out = [0u8; N];
    hex::decode_to_slice(text, &mut out).map_err(|e| Error::Hex {
        what,
        detail: e.to_string(),
    })?;
    Ok(out)
}

/// Serde helpers for `[u8; 32]` digests written as 64 hex characters.
pub(crate) mod hex32 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(v: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let text = String::deserialize(d)?;
        super::decode_hex::<32>("digest", &text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod sign_tests {
    use ed25519_dalek::Signer as _;

    use super::*;

    #[test]
    fn the_kept_expansion_signs_as_the_signing_key_does() {
        for seed in [[0u8; 32], [7; 32], [0xff; 32]] {
            let key = ProviderKey::from_seed(&seed);
            let plain = ed25519_dalek::SigningKey::from_bytes(&seed);
            for msg in [&b""[..], b"tenzro", &[9u8; 300]] {
                let sig = key.sign(msg);
                assert_eq!(sig.0, plain.sign(msg));
                assert!(key.public_key().verify(msg, &sig));
            }
        }
    }
}
