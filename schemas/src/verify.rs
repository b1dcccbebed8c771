//! The verifier agents run before they trust anything from object storage.
//!
//! Only this module can construct a [`Verified`]: code that activates a
//! bundle or follows a manifest takes `&Verified<_>` and so cannot be handed
//! bytes that skipped a check. Every check works on the exact bytes that were
//! signed or digested and parses only those. Errors name both sides of the
//! comparison.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;

use base64::Engine as _;
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use crate::bundle::{BundleManifest, MANIFEST_FORMAT, MANIFEST_PATH};
use crate::trust::{pae, BundleRef, ChannelManifest, Document, Envelope, PublicKey, Root};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// A value that passed verification. It cannot be built outside this module.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified<T>(T);

impl<T> Verified<T> {
    pub fn get(&self) -> &T {
        &self.0
    }
}

impl<T> std::ops::Deref for Verified<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("{what} is not a signed envelope: {reason}")]
    Malformed { what: &'static str, reason: String },
    #[error("{what} has payload type `{found}`, expected `{expected}`")]
    WrongType {
        what: &'static str,
        expected: &'static str,
        found: String,
    },
    #[error("{what} is signed by unknown key {key}")]
    UnknownKey { what: &'static str, key: PublicKey },
    #[error("{what} has a bad signature by key {key}")]
    BadSignature { what: &'static str, key: PublicKey },
    #[error("{what} has {valid} valid signatures by {role} keys, needs {threshold}")]
    Threshold {
        what: &'static str,
        role: &'static str,
        valid: usize,
        threshold: u32,
    },
    #[error("{what} expired at {expires}, now is {now}")]
    Expired {
        what: &'static str,
        expires: DateTime<Utc>,
        now: DateTime<Utc>,
    },
    #[error("{what} is for fleet `{found}`, expected `{expected}`")]
    WrongFleet {
        what: &'static str,
        expected: String,
        found: String,
    },
    #[error("channel manifest is for environment `{found}`, expected `{expected}`")]
    WrongEnvironment { expected: String, found: String },
    #[error("channel manifest serial {found} < trusted {trusted}: refusing a rollback")]
    Rollback { trusted: u64, found: u64 },
    #[error("root version {found} is not the trusted version {trusted} + 1")]
    RootVersion { trusted: u64, found: u64 },
    #[error("root names {keys} {role} keys, fewer than its threshold {threshold}")]
    UnreachableThreshold {
        role: &'static str,
        keys: usize,
        threshold: u32,
    },

    #[error("bundle is {found} bytes, the manifest says {expected}")]
    BundleLength { expected: u64, found: u64 },
    #[error("bundle digest is {found}, the manifest says {expected}")]
    BundleDigest { expected: String, found: String },
    #[error("bundle is not a valid tar.zst: {reason}")]
    Corrupt { reason: String },
    #[error("bundle entry `{path}` is a {kind}; only regular files are allowed")]
    EntryType { path: String, kind: &'static str },
    #[error("bundle entry `{path}` is not a relative path inside the bundle")]
    EntryPath { path: String },
    #[error("bundle entry `{path}` appears more than once")]
    DuplicateEntry { path: String },
    #[error("bundle unpacks to more than {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("bundle has more than {limit} entries")]
    TooManyEntries { limit: usize },
    #[error("bundle has no {MANIFEST_PATH}")]
    MissingManifest,
    #[error("bundle manifest is invalid: {reason}")]
    BadManifest { reason: String },
    #[error("bundle file `{path}` has sha256 {found}, the manifest says {expected}")]
    FileDigest {
        path: String,
        expected: String,
        found: String,
    },
    #[error("bundle file `{path}` has {found} bytes, the manifest says {expected}")]
    FileSize {
        path: String,
        expected: u64,
        found: u64,
    },
    #[error("bundle file `{path}` is in the manifest but not in the archive")]
    MissingFile { path: String },
    #[error("bundle file `{path}` is in the archive but not in the manifest")]
    UnlistedFile { path: String },
}

/// Which keys may sign, and how many must.
struct KeySet<'a> {
    role: &'static str,
    keys: &'a [PublicKey],
    threshold: u32,
}

/// Check signatures and type, then parse the verified bytes. Every signature
/// must be by a key of one of `sets` and valid; each set's threshold must be
/// met by distinct keys.
fn open<T: Document>(bytes: &[u8], sets: &[KeySet<'_>]) -> Result<T, VerifyError> {
    let what = T::NAME;
    let malformed = |reason: String| VerifyError::Malformed { what, reason };
    let env = parse_envelope(what, bytes)?;
    if env.payload_type != T::PAYLOAD_TYPE {
        return Err(VerifyError::WrongType {
            what,
            expected: T::PAYLOAD_TYPE,
            found: env.payload_type,
        });
    }
    let payload = B64
        .decode(&env.payload)
        .map_err(|e| malformed(format!("payload is not base64: {e}")))?;
    let message = pae(&env.payload_type, &payload);
    let mut valid: BTreeSet<PublicKey> = BTreeSet::new();
    for s in &env.signatures {
        if !sets.iter().any(|set| set.keys.contains(&s.key)) {
            return Err(VerifyError::UnknownKey { what, key: s.key });
        }
        let bad = || VerifyError::BadSignature { what, key: s.key };
        let sig = B64
            .decode(&s.sig)
            .ok()
            .and_then(|b| ed25519_dalek::Signature::from_slice(&b).ok())
            .ok_or_else(bad)?;
        let key = ed25519_dalek::VerifyingKey::from_bytes(&s.key.0).map_err(|_| bad())?;
        key.verify_strict(&message, &sig).map_err(|_| bad())?;
        valid.insert(s.key);
    }
    for set in sets {
        let count = set.keys.iter().filter(|k| valid.contains(k)).count();
        if set.threshold == 0 || count < set.threshold as usize {
            return Err(VerifyError::Threshold {
                what,
                role: set.role,
                valid: count,
                threshold: set.threshold,
            });
        }
    }
    serde_json::from_slice(&payload).map_err(|e| malformed(format!("payload: {e}")))
}

/// Parse an envelope and insist on its canonical form, so that no byte of a
/// stored document can change without it being refused.
fn parse_envelope(what: &'static str, bytes: &[u8]) -> Result<Envelope, VerifyError> {
    let env: Envelope = serde_json::from_slice(bytes).map_err(|e| VerifyError::Malformed {
        what,
        reason: e.to_string(),
    })?;
    if env.to_json() != bytes {
        return Err(VerifyError::Malformed {
            what,
            reason: "not in canonical form (pretty JSON, one trailing newline)".to_owned(),
        });
    }
    Ok(env)
}

fn reachable(root: &Root) -> Result<(), VerifyError> {
    for (role, keys, threshold) in [
        ("root", root.root_keys.len(), root.root_threshold),
        ("online", root.online_keys.len(), root.online_threshold),
    ] {
        if threshold == 0 || keys < threshold as usize {
            return Err(VerifyError::UnreachableThreshold {
                role,
                keys,
                threshold,
            });
        }
    }
    Ok(())
}

fn fleet_matches(what: &'static str, expected: &str, found: &str) -> Result<(), VerifyError> {
    if expected != found {
        return Err(VerifyError::WrongFleet {
            what,
            expected: expected.to_owned(),
            found: found.to_owned(),
        });
    }
    Ok(())
}

/// Trust a first root (`root/1.json`) because `threshold` of the `pinned`
/// keys (from `fleet.kdl`, copied at enrollment) signed it, and it meets its
/// own root threshold.
pub fn verify_first_root(
    bytes: &[u8],
    fleet: &str,
    pinned: &[PublicKey],
    threshold: u32,
) -> Result<Verified<Root>, VerifyError> {
    let pinned_set = KeySet {
        role: "pinned root",
        keys: pinned,
        threshold,
    };
    let root: Root = open(bytes, &[pinned_set])?;
    fleet_matches("root", fleet, &root.fleet)?;
    if root.version != 1 {
        return Err(VerifyError::RootVersion {
            trusted: 0,
            found: root.version,
        });
    }
    reachable(&root)?;
    // The root must also satisfy itself, so the next rotation can be checked.
    let own: Root = open(
        bytes,
        &[KeySet {
            role: "root",
            keys: &root.root_keys,
            threshold: root.root_threshold,
        }],
    )
    .or_else(|e| match e {
        // Signatures by pinned keys that are not in the root are fine here.
        VerifyError::UnknownKey { .. } => Ok(root.clone()),
        other => Err(other),
    })?;
    Ok(Verified(own))
}

/// Move from a trusted root to the next: version must be exactly
/// `trusted + 1`, and thresholds of both the old and the new root keys must
/// have signed it. Expiry is not checked here: a chain of old roots is walked
/// to reach the current one, and [`verify_channel`] refuses an expired root.
pub fn verify_root_rotation(
    trusted: &Verified<Root>,
    bytes: &[u8],
) -> Result<Verified<Root>, VerifyError> {
    // First with the old keys alone, to learn the new key set from bytes the
    // old root vouches for; unknown keys are the new root's and checked next.
    let env = parse_envelope(Root::NAME, bytes)?;
    let payload = B64
        .decode(&env.payload)
        .map_err(|e| VerifyError::Malformed {
            what: Root::NAME,
            reason: format!("payload is not base64: {e}"),
        })?;
    let claimed: Root = serde_json::from_slice(&payload).map_err(|e| VerifyError::Malformed {
        what: Root::NAME,
        reason: format!("payload: {e}"),
    })?;
    let new: Root = open(
        bytes,
        &[
            KeySet {
                role: "trusted root",
                keys: &trusted.root_keys,
                threshold: trusted.root_threshold,
            },
            KeySet {
                role: "new root",
                keys: &claimed.root_keys,
                threshold: claimed.root_threshold,
            },
        ],
    )?;
    fleet_matches("root", &trusted.fleet, &new.fleet)?;
    if new.version != trusted.version + 1 {
        return Err(VerifyError::RootVersion {
            trusted: trusted.version,
            found: new.version,
        });
    }
    reachable(&new)?;
    Ok(Verified(new))
}

/// Verify a channel manifest against the trusted root: online keys'
/// signatures, freshness of both, the environment, and no rollback below
/// `trusted_serial` (the highest serial this agent has seen).
pub fn verify_channel(
    root: &Verified<Root>,
    bytes: &[u8],
    environment: &str,
    trusted_serial: Option<u64>,
    now: DateTime<Utc>,
) -> Result<Verified<ChannelManifest>, VerifyError> {
    if root.expires <= now {
        return Err(VerifyError::Expired {
            what: Root::NAME,
            expires: root.expires,
            now,
        });
    }
    let m: ChannelManifest = open(
        bytes,
        &[KeySet {
            role: "online",
            keys: &root.online_keys,
            threshold: root.online_threshold,
        }],
    )?;
    fleet_matches(ChannelManifest::NAME, &root.fleet, &m.fleet)?;
    if m.environment != environment {
        return Err(VerifyError::WrongEnvironment {
            expected: environment.to_owned(),
            found: m.environment,
        });
    }
    if m.expires <= now {
        return Err(VerifyError::Expired {
            what: ChannelManifest::NAME,
            expires: m.expires,
            now,
        });
    }
    if let Some(trusted) = trusted_serial {
        if m.serial < trusted {
            return Err(VerifyError::Rollback {
                trusted,
                found: m.serial,
            });
        }
    }
    Ok(Verified(m))
}

/// Caps on what a bundle may unpack to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_unpacked_bytes: u64,
    pub max_entries: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_unpacked_bytes: 64 << 20,
            max_entries: 10_000,
        }
    }
}

/// A bundle's contents, held in memory after verification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bundle {
    pub reference: BundleRef,
    pub manifest: BundleManifest,
    /// Every archive entry but `manifest.json`, by path.
    pub files: BTreeMap<String, Vec<u8>>,
}

/// Lowercase hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// `sha256:<hex>` of a bundle's bytes: its identity.
pub fn bundle_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(bytes))
}

/// Verify downloaded bundle bytes against the reference a verified manifest
/// gave: length, then digest, then every entry and file.
pub fn verify_bundle(
    reference: &BundleRef,
    bytes: &[u8],
    limits: Limits,
) -> Result<Verified<Bundle>, VerifyError> {
    if bytes.len() as u64 != reference.length {
        return Err(VerifyError::BundleLength {
            expected: reference.length,
            found: bytes.len() as u64,
        });
    }
    let digest = bundle_digest(bytes);
    if digest != reference.digest {
        return Err(VerifyError::BundleDigest {
            expected: reference.digest.clone(),
            found: digest,
        });
    }
    let mut entries = unpack(bytes, limits)?;
    let manifest_bytes = entries
        .remove(MANIFEST_PATH)
        .ok_or(VerifyError::MissingManifest)?;
    let manifest: BundleManifest =
        serde_json::from_slice(&manifest_bytes).map_err(|e| VerifyError::BadManifest {
            reason: e.to_string(),
        })?;
    if manifest.format != MANIFEST_FORMAT {
        return Err(VerifyError::BadManifest {
            reason: format!("format {} is not {MANIFEST_FORMAT}", manifest.format),
        });
    }
    let mut listed = BTreeSet::new();
    for f in &manifest.files {
        if !listed.insert(f.path.as_str()) {
            return Err(VerifyError::BadManifest {
                reason: format!("`{}` is listed twice", f.path),
            });
        }
        let data = entries
            .get(&f.path)
            .ok_or_else(|| VerifyError::MissingFile {
                path: f.path.clone(),
            })?;
        if data.len() as u64 != f.size {
            return Err(VerifyError::FileSize {
                path: f.path.clone(),
                expected: f.size,
                found: data.len() as u64,
            });
        }
        let found = sha256_hex(data);
        if found != f.sha256 {
            return Err(VerifyError::FileDigest {
                path: f.path.clone(),
                expected: f.sha256.clone(),
                found,
            });
        }
    }
    if let Some(extra) = entries.keys().find(|p| !listed.contains(p.as_str())) {
        return Err(VerifyError::UnlistedFile {
            path: extra.clone(),
        });
    }
    Ok(Verified(Bundle {
        reference: reference.clone(),
        manifest,
        files: entries,
    }))
}

fn corrupt(e: impl std::fmt::Display) -> VerifyError {
    VerifyError::Corrupt {
        reason: e.to_string(),
    }
}

/// A relative path of normal components only.
fn safe_path(raw: &[u8]) -> Option<String> {
    let s = std::str::from_utf8(raw).ok()?;
    let ok = !s.is_empty()
        && !s.starts_with('/')
        && !s.contains('\\')
        && !s.contains('\0')
        && s.split('/').all(|c| !c.is_empty() && c != "." && c != "..");
    ok.then(|| s.to_owned())
}

fn unpack(bytes: &[u8], limits: Limits) -> Result<BTreeMap<String, Vec<u8>>, VerifyError> {
    let decoder = zstd::stream::read::Decoder::new(bytes).map_err(corrupt)?;
    // Never decompress more than the cap (+1 to notice going over).
    let mut capped = decoder.take(limits.max_unpacked_bytes.saturating_add(1));
    let mut archive = tar::Archive::new(&mut capped);
    let mut out = BTreeMap::new();
    let mut total: u64 = 0;
    for entry in archive.entries().map_err(corrupt)? {
        let mut entry = entry.map_err(|e| cap_or_corrupt(e, total, limits))?;
        if out.len() >= limits.max_entries {
            return Err(VerifyError::TooManyEntries {
                limit: limits.max_entries,
            });
        }
        let raw = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw).into_owned();
        let kind = match entry.header().entry_type() {
            tar::EntryType::Regular => None,
            tar::EntryType::Symlink => Some("symlink"),
            tar::EntryType::Link => Some("hardlink"),
            tar::EntryType::Char => Some("character device"),
            tar::EntryType::Block => Some("block device"),
            tar::EntryType::Fifo => Some("fifo"),
            tar::EntryType::Directory => Some("directory"),
            _ => Some("special entry"),
        };
        if let Some(kind) = kind {
            return Err(VerifyError::EntryType { path: shown, kind });
        }
        let path = safe_path(&raw).ok_or(VerifyError::EntryPath { path: shown })?;
        let size = entry.size();
        total = total.saturating_add(size);
        if total > limits.max_unpacked_bytes {
            return Err(VerifyError::TooLarge {
                limit: limits.max_unpacked_bytes,
            });
        }
        let mut data = Vec::with_capacity(usize::try_from(size).unwrap_or(0).min(1 << 20));
        entry
            .read_to_end(&mut data)
            .map_err(|e| cap_or_corrupt(e, total, limits))?;
        if data.len() as u64 != size {
            return Err(corrupt(format!("entry `{path}` is truncated")));
        }
        if out.insert(path.clone(), data).is_some() {
            return Err(VerifyError::DuplicateEntry { path });
        }
    }
    if capped.limit() == 0 {
        return Err(VerifyError::TooLarge {
            limit: limits.max_unpacked_bytes,
        });
    }
    Ok(out)
}

/// A read that failed because the cap cut the stream is "too large", not
/// "corrupt".
fn cap_or_corrupt(e: std::io::Error, total: u64, limits: Limits) -> VerifyError {
    if total >= limits.max_unpacked_bytes {
        VerifyError::TooLarge {
            limit: limits.max_unpacked_bytes,
        }
    } else {
        corrupt(e)
    }
}
