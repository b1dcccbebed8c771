//! Key files: one ed25519 key pair as JSON, written by `gitfleet keygen`.
//!
//! ```json
//! {
//!   "format": 1,
//!   "role": "root",
//!   "private_key": "base64 of the 32-byte seed",
//!   "public_key": "base64 of the 32-byte public key"
//! }
//! ```
//!
//! The public key is stored next to the seed so that a holder can see which
//! key a file holds without tools, and so that a file whose two halves do not
//! match is refused instead of signing with a key nobody expects. Reading and
//! writing the file (and its permissions) is the caller's job: this module
//! does no IO.

use std::fmt;

use base64::Engine as _;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::trust::PublicKey;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// The only key file format so far.
pub const KEY_FILE_FORMAT: u32 = 1;

/// What a key is for. A key of one role is refused where another is needed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum KeyRole {
    /// Offline key that signs `root/<version>.json`.
    Root,
    /// Key held by the reconciler that signs channel manifests.
    Online,
    /// A node's key, which signs its status reports.
    Node,
    /// A person's key, which signs approvals (`gitfleet approve`).
    Approver,
}

impl KeyRole {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyRole::Root => "root",
            KeyRole::Online => "online",
            KeyRole::Node => "node",
            KeyRole::Approver => "approver",
        }
    }
}

impl fmt::Display for KeyRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A private ed25519 key and its public half.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyFile {
    /// Format version of this file; 1.
    pub format: u32,
    pub role: KeyRole,
    /// base64 of the 32-byte ed25519 seed. Secret.
    pub private_key: String,
    /// base64 of the 32-byte ed25519 public key derived from `private_key`.
    pub public_key: PublicKey,
}

// Never print the seed, not even in a debug log.
impl fmt::Debug for KeyFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyFile")
            .field("format", &self.format)
            .field("role", &self.role)
            .field("private_key", &"<redacted>")
            .field("public_key", &self.public_key)
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyFileError {
    #[error("key file is not valid JSON of format {KEY_FILE_FORMAT}: {reason}")]
    Malformed { reason: String },
    #[error("key file has format {found}, expected {KEY_FILE_FORMAT}")]
    Format { found: u32 },
    #[error("private key is not base64 of 32 bytes")]
    PrivateKey,
    #[error("public key {found} does not belong to the private key, which gives {expected}")]
    Mismatch {
        expected: PublicKey,
        found: PublicKey,
    },
}

impl KeyFile {
    /// The key file for the key pair with this 32-byte seed.
    pub fn new(role: KeyRole, seed: &[u8; 32]) -> Self {
        let key = ed25519_dalek::SigningKey::from_bytes(seed);
        KeyFile {
            format: KEY_FILE_FORMAT,
            role,
            private_key: B64.encode(seed),
            public_key: PublicKey(key.verifying_key().to_bytes()),
        }
    }

    /// Parse a key file and check it: format, seed, and that the public key
    /// is the seed's.
    pub fn parse(bytes: &[u8]) -> Result<(Self, ed25519_dalek::SigningKey), KeyFileError> {
        let file: KeyFile = serde_json::from_slice(bytes).map_err(|e| KeyFileError::Malformed {
            reason: e.to_string(),
        })?;
        let key = file.signing_key()?;
        Ok((file, key))
    }

    /// The signing key, after checking the format and both halves.
    pub fn signing_key(&self) -> Result<ed25519_dalek::SigningKey, KeyFileError> {
        if self.format != KEY_FILE_FORMAT {
            return Err(KeyFileError::Format { found: self.format });
        }
        let seed = B64
            .decode(self.private_key.trim())
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok())
            .ok_or(KeyFileError::PrivateKey)?;
        let key = ed25519_dalek::SigningKey::from_bytes(&seed);
        let expected = PublicKey(key.verifying_key().to_bytes());
        if expected != self.public_key {
            return Err(KeyFileError::Mismatch {
                expected,
                found: self.public_key,
            });
        }
        Ok(key)
    }

    /// Pretty JSON with a trailing newline, as `gitfleet keygen` writes it.
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).unwrap_or_default();
        out.push(b'\n');
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_new_key_file_round_trips() {
        let file = KeyFile::new(KeyRole::Online, &[7; 32]);
        let (parsed, key) = KeyFile::parse(&file.to_json()).unwrap();
        assert_eq!(parsed, file);
        assert_eq!(key.to_bytes(), [7; 32]);
        let text = String::from_utf8(file.to_json()).unwrap();
        assert!(text.contains("\"role\": \"online\""), "{text}");
    }

    #[test]
    fn mismatched_halves_are_refused() {
        let mut file = KeyFile::new(KeyRole::Root, &[1; 32]);
        file.public_key = KeyFile::new(KeyRole::Root, &[2; 32]).public_key;
        assert!(matches!(
            KeyFile::parse(&file.to_json()),
            Err(KeyFileError::Mismatch { .. })
        ));
    }

    #[test]
    fn unknown_fields_and_formats_are_refused() {
        let file = KeyFile::new(KeyRole::Node, &[3; 32]);
        let mut value: serde_json::Value = serde_json::from_slice(&file.to_json()).unwrap();
        value["comment"] = "x".into();
        let bytes = serde_json::to_vec(&value).unwrap();
        assert!(matches!(
            KeyFile::parse(&bytes),
            Err(KeyFileError::Malformed { .. })
        ));
        let mut file = file;
        file.format = 2;
        assert_eq!(
            KeyFile::parse(&file.to_json()).unwrap_err(),
            KeyFileError::Format { found: 2 }
        );
    }

    #[test]
    fn debug_output_hides_the_seed() {
        let file = KeyFile::new(KeyRole::Root, &[9; 32]);
        let shown = format!("{file:?}");
        assert!(!shown.contains(&file.private_key), "{shown}");
    }
}
