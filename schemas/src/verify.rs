//! The verifier agents run before they trust anything from object storage.
//!
//! Only this module can construct a [`Verified`]: code that activates a
//! bundle or follows a manifest takes `&Verified<_>` and so cannot be handed
//! bytes that skipped a check. Every check works on the exact bytes that were
//! signed or digested and parses only those. Errors name both sides of the
//! comparison.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::Read;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

use base64::Engine as _;
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use crate::bundle::{
    bundle_path_ok, find_clash, BundleManifest, PathClash, MANIFEST_FORMAT, MANIFEST_PATH,
};
use crate::trust::{
    pae, valid_digest, BundleRef, ChannelManifest, Document, Envelope, PublicKey, Root,
};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// A value that passed verification. It cannot be built outside this module.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified<T>(T);

impl<T> Verified<T> {
    /// The verified value, to keep (it can no longer vouch for itself).
    pub fn into_inner(self) -> T {
        self.0
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
    #[error("status report at status/{expected}.json is about node `{found}`")]
    WrongNode { expected: String, found: String },
    #[error("node events filed under node `{expected}` are about node `{found}`")]
    EventsOfOtherNode { expected: String, found: String },
    #[error("channel manifest is for environment `{found}`, expected `{expected}`")]
    WrongEnvironment { expected: String, found: String },
    #[error("channel manifest serial {found} < trusted {trusted}: refusing a rollback")]
    Rollback { trusted: u64, found: u64 },
    #[error("root version {found} is not the trusted version {trusted} + 1")]
    RootVersion { trusted: u64, found: u64 },
    #[error(
        "{role} threshold {threshold} must be between 1 and the number of {role} keys ({keys})"
    )]
    UnreachableThreshold {
        role: &'static str,
        keys: usize,
        threshold: u32,
    },
    #[error("{role} key {key} is listed more than once")]
    DuplicateKey { role: &'static str, key: PublicKey },
    #[error("key {key} is both a root key and an online key; an online key sits on a server and must not sign roots")]
    SharedKey { key: PublicKey },
    #[error("channel manifest rollout `{rollout}` names bundle digest `{digest}`, not sha256:<64 lowercase hex digits>")]
    BadDigest { rollout: String, digest: String },
    #[error("channel manifest rollout `{rollout}` is at step {step} of {steps}")]
    BadStep {
        rollout: String,
        step: u32,
        steps: u32,
    },
    #[error("channel manifest names rollout `{name}` more than once for the same proxy")]
    DuplicateRollout { name: String },

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
    #[error("bundle entries `{first}` and `{second}` differ only in case")]
    CaseClash { first: String, second: String },
    #[error("bundle entry `{file}` is a file, but `{inside}` needs it to be a directory")]
    FileAsDirectory { file: String, inside: String },
    #[error("bundle unpacks to more than {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("bundle has more than {limit} entries")]
    TooManyEntries { limit: usize },
    #[error("bundle has no {MANIFEST_PATH}")]
    MissingManifest,
    #[error("bundle entry `{path}`: {reason}")]
    Unpacking { path: String, reason: String },
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

/// A key set must name each key once and have a threshold its keys can
/// meet: a key listed twice would count twice.
fn check_set(set: &KeySet<'_>) -> Result<(), VerifyError> {
    let mut seen = BTreeSet::new();
    for key in set.keys {
        if !seen.insert(key) {
            return Err(VerifyError::DuplicateKey {
                role: set.role,
                key: *key,
            });
        }
    }
    if set.threshold == 0 || set.threshold as usize > seen.len() {
        return Err(VerifyError::UnreachableThreshold {
            role: set.role,
            keys: seen.len(),
            threshold: set.threshold,
        });
    }
    Ok(())
}

/// Parse an envelope in its canonical form, check its payload type, and
/// decode the payload: the exact bytes the signatures cover.
fn unwrap_envelope<T: Document>(bytes: &[u8]) -> Result<(Envelope, Vec<u8>), VerifyError> {
    let what = T::NAME;
    let env = parse_envelope(what, bytes)?;
    if env.payload_type != T::PAYLOAD_TYPE {
        return Err(VerifyError::WrongType {
            what,
            expected: T::PAYLOAD_TYPE,
            found: env.payload_type,
        });
    }
    let payload = env.payload_bytes().map_err(|e| VerifyError::Malformed {
        what,
        reason: format!("payload is not base64: {e}"),
    })?;
    Ok((env, payload))
}

fn parse_payload<T: Document>(payload: &[u8]) -> Result<T, VerifyError> {
    serde_json::from_slice(payload).map_err(|e| VerifyError::Malformed {
        what: T::NAME,
        reason: format!("payload: {e}"),
    })
}

/// Every signature must be by a key of one of `sets` and valid; each set's
/// threshold must be met by distinct keys of that set.
fn check_signatures(
    what: &'static str,
    env: &Envelope,
    payload: &[u8],
    sets: &[KeySet<'_>],
) -> Result<(), VerifyError> {
    for set in sets {
        check_set(set)?;
    }
    let message = pae(&env.payload_type, payload);
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
        // Distinct keys: `valid` is a set, and so is `set.keys` (checked).
        let count = valid.iter().filter(|k| set.keys.contains(k)).count();
        if count < set.threshold as usize {
            return Err(VerifyError::Threshold {
                what,
                role: set.role,
                valid: count,
                threshold: set.threshold,
            });
        }
    }
    Ok(())
}

/// Check signatures and type, then parse the verified bytes.
fn open<T: Document>(bytes: &[u8], sets: &[KeySet<'_>]) -> Result<T, VerifyError> {
    let (env, payload) = unwrap_envelope::<T>(bytes)?;
    check_signatures(T::NAME, &env, &payload, sets)?;
    parse_payload(&payload)
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

/// The rules every root keeps, whoever checks it (the verifier, and the
/// CLI before it writes or signs one): each key set names each key once
/// and has a threshold between 1 and its size, and no key is both a root
/// key and an online key.
pub fn validate_root(root: &Root) -> Result<(), VerifyError> {
    for (role, keys, threshold) in [
        ("root", &root.root_keys, root.root_threshold),
        ("online", &root.online_keys, root.online_threshold),
    ] {
        check_set(&KeySet {
            role,
            keys,
            threshold,
        })?;
    }
    if let Some(key) = root.online_keys.iter().find(|k| root.root_keys.contains(k)) {
        return Err(VerifyError::SharedKey { key: *key });
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
/// own root threshold. Each signature must be valid and by a pinned key or
/// one of the root's keys; each threshold counts only its own keys, so a
/// pinned signer outside the root never stands in for a root key.
pub fn verify_first_root(
    bytes: &[u8],
    fleet: &str,
    pinned: &[PublicKey],
    threshold: u32,
) -> Result<Verified<Root>, VerifyError> {
    // The root must satisfy both the pinned keys and its own root keys (so
    // the next rotation can be checked against them). Its key set comes
    // from the very bytes whose signatures are checked here.
    let (env, payload) = unwrap_envelope::<Root>(bytes)?;
    let root: Root = parse_payload(&payload)?;
    check_signatures(
        Root::NAME,
        &env,
        &payload,
        &[
            KeySet {
                role: "pinned root",
                keys: pinned,
                threshold,
            },
            KeySet {
                role: "root",
                keys: &root.root_keys,
                threshold: root.root_threshold,
            },
        ],
    )?;
    fleet_matches("root", fleet, &root.fleet)?;
    if root.version != 1 {
        return Err(VerifyError::RootVersion {
            trusted: 0,
            found: root.version,
        });
    }
    validate_root(&root)?;
    Ok(Verified(root))
}

/// Move from a trusted root to the next: version must be exactly
/// `trusted + 1`, and thresholds of both the old and the new root keys must
/// have signed it. Expiry is not checked here: a chain of old roots is walked
/// to reach the current one, and [`verify_channel`] refuses an expired root.
pub fn verify_root_rotation(
    trusted: &Verified<Root>,
    bytes: &[u8],
) -> Result<Verified<Root>, VerifyError> {
    // The new key set comes from the very bytes whose signatures are
    // checked against both the old and the new keys.
    let (env, payload) = unwrap_envelope::<Root>(bytes)?;
    let new: Root = parse_payload(&payload)?;
    check_signatures(
        Root::NAME,
        &env,
        &payload,
        &[
            KeySet {
                role: "trusted root",
                keys: &trusted.root_keys,
                threshold: trusted.root_threshold,
            },
            KeySet {
                role: "new root",
                keys: &new.root_keys,
                threshold: new.root_threshold,
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
    validate_root(&new)?;
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
    check_rollouts(&m)?;
    Ok(Verified(m))
}

/// Rollouts are named once each (once per proxy when each entry of a name
/// is for its own proxy), are at a step within their steps, and name
/// bundles by well-formed digests (digests become object keys).
fn check_rollouts(m: &ChannelManifest) -> Result<(), VerifyError> {
    let mut names = BTreeSet::new();
    for r in &m.rollouts {
        let all = r.proxy.is_none();
        let clash = !names.insert((r.name.as_str(), r.proxy.as_ref()))
            || (all && names.iter().any(|(n, p)| *n == r.name && p.is_some()))
            || (!all && names.contains(&(r.name.as_str(), None)));
        if clash {
            return Err(VerifyError::DuplicateRollout {
                name: r.name.clone(),
            });
        }
        for b in std::iter::once(&r.bundle).chain(&r.previous) {
            if !valid_digest(&b.digest) {
                return Err(VerifyError::BadDigest {
                    rollout: r.name.clone(),
                    digest: b.digest.clone(),
                });
            }
        }
        if r.step > r.steps {
            return Err(VerifyError::BadStep {
                rollout: r.name.clone(),
                step: r.step,
                steps: r.steps,
            });
        }
    }
    Ok(())
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

/// From this many bytes on, a bundle is unpacked on a second thread while
/// the calling thread hashes its files. Below it the second thread would
/// save well under a millisecond (SHA-256 runs at about 1 GiB/s) for the
/// cost of starting it; the agent's usual bundles are a few hundred KB.
const TWO_THREADS_FROM: usize = 1 << 20;

/// Verify downloaded bundle bytes against the reference a verified manifest
/// gave: length, then digest, then every entry and file.
///
/// Nothing is decompressed or parsed before the digest matched. Then, for a
/// bundle of at least [`TWO_THREADS_FROM`] bytes, a scoped thread unpacks
/// (decompression, tar, caps) while this thread takes the SHA-256 of the
/// files it hands over, and the unpacker takes its share when this thread
/// falls behind ([`HashQueue`]): on two cores the unpacking and the
/// manifest's file hashes take about half as long as in turn.
pub fn verify_bundle(
    reference: &BundleRef,
    bytes: &[u8],
    limits: Limits,
) -> Result<Verified<Bundle>, VerifyError> {
    verify_bundle_on(reference, bytes, limits, bytes.len() >= TWO_THREADS_FROM)
}

/// [`verify_bundle`], on one thread or two: the same checks and results
/// either way.
fn verify_bundle_on(
    reference: &BundleRef,
    bytes: &[u8],
    limits: Limits,
    two_threads: bool,
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
    let queue = HashQueue::default();
    let unpacked = if two_threads {
        std::thread::scope(|scope| {
            let unpacker = std::thread::Builder::new()
                .name("bundle-unpack".to_owned())
                .spawn_scoped(scope, || unpack_and_hash(bytes, limits, &queue));
            match unpacker {
                Ok(handle) => {
                    let mut hashed = queue.hash_until_closed();
                    let found = handle
                        .join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
                    found.map(|mut entries| {
                        entries.append(&mut hashed);
                        entries
                    })
                }
                // No second thread to be had: do it all here.
                Err(_) => unpack_and_hash(bytes, limits, &queue),
            }
        })
    } else {
        unpack_and_hash(bytes, limits, &queue)
    }?;
    let mut entries: BTreeMap<String, Entry> = unpacked.into_iter().collect();
    let manifest_bytes = entries
        .remove(MANIFEST_PATH)
        .ok_or(VerifyError::MissingManifest)?
        .data;
    let listing = entries
        .iter()
        .map(|(p, e)| (p.clone(), (e.data.len() as u64, e.sha256)))
        .collect();
    let manifest = check_listing(&manifest_bytes, &listing)?;
    Ok(Verified(Bundle {
        reference: reference.clone(),
        manifest,
        files: entries.into_iter().map(|(p, e)| (p, e.data)).collect(),
    }))
}

/// What a bundle verified into a sink leaves in memory: its reference and
/// manifest; its files are wherever the sink put them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BundleHead {
    pub reference: BundleRef,
    pub manifest: BundleManifest,
}

impl From<Verified<Bundle>> for Verified<BundleHead> {
    fn from(b: Verified<Bundle>) -> Self {
        let Bundle {
            reference,
            manifest,
            ..
        } = b.0;
        Verified(BundleHead {
            reference,
            manifest,
        })
    }
}

/// Verify a bundle read from `input` (its archive bytes) with the checks of
/// [`verify_bundle`], handing each entry to `sink` as it is unpacked instead
/// of holding any whole: `sink(path, data)` reads `data` (into a file, say);
/// what it leaves unread is read and hashed here all the same.
/// `manifest.json` is handed over too, as the archive holds it. Only `Ok`
/// makes what the sink received a bundle: on an error, throw it away.
/// Memory stays at a few buffers and the manifest, whatever the bundle's
/// size.
pub fn verify_bundle_into<R: Read>(
    reference: &BundleRef,
    input: R,
    limits: Limits,
    mut sink: impl FnMut(&str, &mut dyn Read) -> std::io::Result<()>,
) -> Result<Verified<BundleHead>, VerifyError> {
    let mut input = Digesting::new(input.take(reference.length.saturating_add(1)));
    let mut manifest_bytes = None;
    let mut listing: BTreeMap<String, (u64, sha2::digest::Output<Sha256>)> = BTreeMap::new();
    let unpacked = unpack(
        std::io::BufReader::with_capacity(64 << 10, &mut input),
        limits,
        |path, data| {
            let mut data = Digesting::new(data);
            let failed = |e: std::io::Error| VerifyError::Unpacking {
                path: path.clone(),
                reason: e.to_string(),
            };
            if path == MANIFEST_PATH {
                let mut bytes = Vec::new();
                data.read_to_end(&mut bytes).map_err(failed)?;
                sink(&path, &mut bytes.as_slice()).map_err(failed)?;
                manifest_bytes = Some(bytes);
            } else {
                sink(&path, &mut data).map_err(failed)?;
                std::io::copy(&mut data, &mut std::io::sink()).map_err(failed)?;
            }
            listing.insert(path, (data.count, data.hasher.finalize()));
            Ok(())
        },
    );
    // Whatever went wrong inside, bytes that are not the bundle's say so
    // first.
    let rest = std::io::copy(&mut input, &mut std::io::sink());
    input.check_bundle(reference)?;
    unpacked?;
    rest.map_err(corrupt)?;
    let manifest_bytes = manifest_bytes.ok_or(VerifyError::MissingManifest)?;
    listing.remove(MANIFEST_PATH);
    let manifest = check_listing(&manifest_bytes, &listing)?;
    Ok(Verified(BundleHead {
        reference: reference.clone(),
        manifest,
    }))
}

/// Hashes and counts the bytes read or written through it: a bundle's, to
/// hold against its reference as they pass ([`Digesting::check_bundle`]),
/// or one file's.
#[derive(Debug)]
pub struct Digesting<T> {
    inner: T,
    hasher: Sha256,
    count: u64,
}

impl<T> Digesting<T> {
    pub fn new(inner: T) -> Self {
        Digesting {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    /// Whether the bytes that passed are the bundle `reference` names
    /// (its length, then its digest); the inner reader or writer back.
    pub fn check_bundle(self, reference: &BundleRef) -> Result<T, VerifyError> {
        if self.count != reference.length {
            return Err(VerifyError::BundleLength {
                expected: reference.length,
                found: self.count,
            });
        }
        let digest = format!("sha256:{:x}", self.hasher.finalize());
        if digest != reference.digest {
            return Err(VerifyError::BundleDigest {
                expected: reference.digest.clone(),
                found: digest,
            });
        }
        Ok(self.inner)
    }
}

impl<R: Read> Read for Digesting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

impl<W: std::io::Write> std::io::Write for Digesting<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Parse `manifest.json` and check that it lists exactly the other entries
/// (`path -> (size, sha256)`), once each, with their sizes and digests.
fn check_listing(
    manifest_bytes: &[u8],
    entries: &BTreeMap<String, (u64, sha2::digest::Output<Sha256>)>,
) -> Result<BundleManifest, VerifyError> {
    let manifest: BundleManifest =
        serde_json::from_slice(manifest_bytes).map_err(|e| VerifyError::BadManifest {
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
        let (size, sha256) = entries
            .get(&f.path)
            .ok_or_else(|| VerifyError::MissingFile {
                path: f.path.clone(),
            })?;
        if *size != f.size {
            return Err(VerifyError::FileSize {
                path: f.path.clone(),
                expected: f.size,
                found: *size,
            });
        }
        let found = format!("{sha256:x}");
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
    Ok(manifest)
}

/// An unpacked archive entry and the SHA-256 of its data.
struct Entry {
    data: Vec<u8>,
    sha256: sha2::digest::Output<Sha256>,
}

fn hashed(path: String, data: Vec<u8>) -> (String, Entry) {
    let sha256 = Sha256::digest(&data);
    (path, Entry { data, sha256 })
}

/// Unpacked entries waiting for their SHA-256, taken by whichever thread is
/// free: the verifying thread hashes them as they come, and the unpacker
/// hashes one itself whenever more than one is waiting.
#[derive(Default)]
struct HashQueue {
    state: Mutex<Waiting>,
    changed: Condvar,
}

#[derive(Default)]
struct Waiting {
    entries: VecDeque<(String, Vec<u8>)>,
    /// Set when the unpacker has stopped adding entries (finished, failed
    /// or panicked).
    closed: bool,
}

impl HashQueue {
    fn lock(&self) -> MutexGuard<'_, Waiting> {
        // Nothing that holds the lock can panic (hashing is done outside
        // it), so even a poisoned lock holds whole entries.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn push(&self, path: String, data: Vec<u8>) {
        self.lock().entries.push_back((path, data));
        self.changed.notify_one();
    }

    /// Called by the unpacker after each push, so that it does its share
    /// of the hashing when the other thread is behind.
    fn help(&self, out: &mut Vec<(String, Entry)>) {
        let next = {
            let mut waiting = self.lock();
            if waiting.entries.len() > 1 {
                waiting.entries.pop_front()
            } else {
                None
            }
        };
        if let Some((path, data)) = next {
            out.push(hashed(path, data));
        }
    }

    fn close(&self) {
        self.lock().closed = true;
        self.changed.notify_all();
    }

    /// Hash entries until the queue is closed and empty.
    fn hash_until_closed(&self) -> Vec<(String, Entry)> {
        let mut out = Vec::new();
        loop {
            let next = {
                let mut waiting = self.lock();
                loop {
                    if let Some(next) = waiting.entries.pop_front() {
                        break Some(next);
                    }
                    if waiting.closed {
                        break None;
                    }
                    waiting = self
                        .changed
                        .wait(waiting)
                        .unwrap_or_else(PoisonError::into_inner);
                }
            };
            match next {
                Some((path, data)) => out.push(hashed(path, data)),
                None => return out,
            }
        }
    }
}

/// Closes the queue when the unpacker is done, however it ends (a panic
/// included), so that the thread hashing alongside never waits forever.
struct CloseOnDrop<'a>(&'a HashQueue);

impl Drop for CloseOnDrop<'_> {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// The unpacker: [`unpack`], hashing an entry itself whenever more than one
/// is waiting, and at the end whatever is left (everything, when no other
/// thread hashes). Returns the entries it hashed; any others were hashed by
/// the thread running [`HashQueue::hash_until_closed`] alongside.
fn unpack_and_hash(
    bytes: &[u8],
    limits: Limits,
    queue: &HashQueue,
) -> Result<Vec<(String, Entry)>, VerifyError> {
    let close = CloseOnDrop(queue);
    let mut out = Vec::new();
    unpack(bytes, limits, |path, entry| {
        let mut data = Vec::new();
        entry.read_to_end(&mut data).map_err(corrupt)?;
        queue.push(path, data);
        queue.help(&mut out);
        Ok(())
    })?;
    drop(close);
    out.append(&mut queue.hash_until_closed());
    Ok(out)
}

fn corrupt(e: impl std::fmt::Display) -> VerifyError {
    VerifyError::Corrupt {
        reason: e.to_string(),
    }
}

/// The magic number that starts a zstd frame (not a skippable one).
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
const BLOCK: u64 = 512;

/// Counts the bytes read through it: where the tar stream ends.
struct Counting<R> {
    inner: R,
    count: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        Ok(n)
    }
}

/// Unpack exactly one zstd frame, holding exactly one tar stream: plain
/// headers of regular files at [`bundle_path_ok`] paths, then the
/// end-of-archive marker and only zeros. Extension entries (GNU long names,
/// PAX headers) are refused rather than interpreted, so that no two tar
/// readers can see different files in the same bytes. Each entry is handed
/// to `on_entry` as it is read, to be read by it; the archive is good only
/// if this returns `Ok`. Bytes in memory are read in place (`&[u8]` is a
/// `BufRead`), not through a copy.
fn unpack<B: std::io::BufRead>(
    mut input: B,
    limits: Limits,
    mut on_entry: impl FnMut(String, &mut dyn Read) -> Result<(), VerifyError>,
) -> Result<(), VerifyError> {
    if !input.fill_buf().map_err(corrupt)?.starts_with(&ZSTD_MAGIC) {
        return Err(corrupt(
            "it does not start with a zstd frame (skippable frames are not accepted)",
        ));
    }
    let decoder = zstd::stream::read::Decoder::with_buffer(input)
        .map_err(corrupt)?
        .single_frame();
    // Never decompress more than the cap (+1 to notice going over).
    let mut stream = Counting {
        inner: decoder.take(limits.max_unpacked_bytes.saturating_add(1)),
        count: 0,
    };
    let mut paths = BTreeSet::new();
    let mut total: u64 = 0;
    // Where the last entry's data (padded to a block) ends.
    let mut entries_end: u64 = 0;
    {
        let mut archive = tar::Archive::new(&mut stream);
        archive.set_ignore_zeros(false);
        // Raw: extension entries come out as entries (and are refused)
        // instead of silently renaming or resizing the next one.
        for entry in archive.entries().map_err(corrupt)?.raw(true) {
            let mut entry = entry.map_err(|e| cap_or_corrupt(e, total, limits))?;
            if paths.len() >= limits.max_entries {
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
                tar::EntryType::GNULongName => Some("GNU long name"),
                tar::EntryType::GNULongLink => Some("GNU long link name"),
                tar::EntryType::XHeader => Some("PAX extended header"),
                tar::EntryType::XGlobalHeader => Some("PAX global header"),
                tar::EntryType::GNUSparse => Some("sparse file"),
                _ => Some("special entry"),
            };
            if let Some(kind) = kind {
                return Err(VerifyError::EntryType { path: shown, kind });
            }
            let path = std::str::from_utf8(&raw)
                .ok()
                .filter(|p| bundle_path_ok(p))
                .map(str::to_owned)
                .ok_or(VerifyError::EntryPath { path: shown })?;
            let size = entry.size();
            total = total.saturating_add(size);
            if total > limits.max_unpacked_bytes {
                return Err(VerifyError::TooLarge {
                    limit: limits.max_unpacked_bytes,
                });
            }
            entries_end = entry
                .raw_file_position()
                .saturating_add(size.div_ceil(BLOCK).saturating_mul(BLOCK));
            if !paths.insert(path.clone()) {
                return Err(VerifyError::DuplicateEntry { path });
            }
            let mut data = Counting {
                inner: &mut entry,
                count: 0,
            };
            // A read cut by the cap is "too large", not "corrupt".
            on_entry(path.clone(), &mut data).map_err(|e| match e {
                VerifyError::Corrupt { .. } | VerifyError::Unpacking { .. }
                    if total >= limits.max_unpacked_bytes =>
                {
                    VerifyError::TooLarge {
                        limit: limits.max_unpacked_bytes,
                    }
                }
                e => e,
            })?;
            // Whatever `on_entry` left unread, to see where the entry ends.
            std::io::copy(&mut data, &mut std::io::sink())
                .map_err(|e| cap_or_corrupt(e, total, limits))?;
            if data.count != size {
                return Err(corrupt(format!("entry `{path}` is truncated")));
            }
        }
    }
    // tar stops at the first zero block; all that follows must be zeros.
    let mut buf = [0u8; 8192];
    loop {
        let n = stream
            .read(&mut buf)
            .map_err(|e| cap_or_corrupt(e, total, limits))?;
        if n == 0 {
            break;
        }
        if buf[..n].iter().any(|b| *b != 0) {
            return Err(corrupt("there is data after the end-of-archive marker"));
        }
    }
    if stream.inner.limit() == 0 {
        return Err(VerifyError::TooLarge {
            limit: limits.max_unpacked_bytes,
        });
    }
    let trailer = stream.count.saturating_sub(entries_end);
    if trailer < 2 * BLOCK {
        return Err(corrupt(
            "the archive has no end-of-archive marker (two zero blocks)",
        ));
    }
    if !trailer.is_multiple_of(BLOCK) {
        return Err(corrupt("the archive does not end on a 512-byte block"));
    }
    // The one frame must be all of the input.
    if !stream
        .inner
        .into_inner()
        .finish()
        .fill_buf()
        .map_err(corrupt)?
        .is_empty()
    {
        return Err(corrupt("there is data after the zstd frame"));
    }
    match find_clash(paths.iter().map(String::as_str)) {
        None => Ok(()),
        Some(PathClash::Case { first, second }) => Err(VerifyError::CaseClash { first, second }),
        Some(PathClash::FileAsDirectory { file, inside }) => {
            Err(VerifyError::FileAsDirectory { file, inside })
        }
    }
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

/// A document signed by one node's key.
fn open_signed_by_node<T: Document>(bytes: &[u8], node_key: &PublicKey) -> Result<T, VerifyError> {
    let keys = [*node_key];
    open(
        bytes,
        &[KeySet {
            role: "node",
            keys: &keys,
            threshold: 1,
        }],
    )
}

/// Verify a node's events of one day: signed by that node's key (from its
/// `nodes/<id>.kdl`), about that node, in this fleet.
pub fn verify_node_events(
    bytes: &[u8],
    fleet: &str,
    node: &str,
    node_key: &PublicKey,
) -> Result<Verified<crate::events::NodeEvents>, VerifyError> {
    let events: crate::events::NodeEvents = open_signed_by_node(bytes, node_key)?;
    fleet_matches(crate::events::NodeEvents::NAME, fleet, &events.fleet)?;
    if events.node != node {
        return Err(VerifyError::EventsOfOtherNode {
            expected: node.to_owned(),
            found: events.node,
        });
    }
    Ok(Verified(events))
}

/// Verify a node's status report: signed by that node's key (from its
/// `nodes/<id>.kdl`), about that node, in this fleet.
pub fn verify_status(
    bytes: &[u8],
    fleet: &str,
    node: &str,
    node_key: &PublicKey,
) -> Result<Verified<crate::status::StatusReport>, VerifyError> {
    let report: crate::status::StatusReport = open_signed_by_node(bytes, node_key)?;
    fleet_matches(crate::status::StatusReport::NAME, fleet, &report.fleet)?;
    if report.node != node {
        return Err(VerifyError::WrongNode {
            expected: node.to_owned(),
            found: report.node,
        });
    }
    Ok(Verified(report))
}

/// A document of type `T` signed by `key` (and by no other key): for a
/// signer checking its own earlier output, such as the reconciler reading
/// the channel manifest it last published before choosing the next serial.
pub fn verify_signed_by<T: Document>(
    bytes: &[u8],
    key: &PublicKey,
) -> Result<Verified<T>, VerifyError> {
    let keys = [*key];
    open(
        bytes,
        &[KeySet {
            role: "own",
            keys: &keys,
            threshold: 1,
        }],
    )
    .map(Verified)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tar.zst of regular files at the given paths, as the builder writes
    /// them.
    fn tar_zst(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut tar = tar::Builder::new(Vec::new());
        for (path, data) in files {
            let mut header = tar::Header::new_ustar();
            header.set_path(path).unwrap();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_entry_type(tar::EntryType::Regular);
            header.set_cksum();
            tar.append(&header, *data).unwrap();
        }
        zstd::bulk::compress(&tar.into_inner().unwrap(), 3).unwrap()
    }

    fn files() -> Vec<(String, Vec<u8>)> {
        (0..20u8)
            .map(|i| (format!("files/f{i:02}"), vec![i; 1000 * usize::from(i)]))
            .collect()
    }

    /// What `verify_bundle` does when it cannot start a second thread: the
    /// unpacker hashes every entry itself.
    #[test]
    fn one_thread_alone_unpacks_and_hashes_every_entry() {
        let files = files();
        let list: Vec<(&str, &[u8])> = files
            .iter()
            .map(|(p, d)| (p.as_str(), d.as_slice()))
            .collect();
        let bytes = tar_zst(&list);
        let queue = HashQueue::default();
        let entries = unpack_and_hash(&bytes, Limits::default(), &queue).unwrap();
        let entries: BTreeMap<String, Entry> = entries.into_iter().collect();
        assert_eq!(entries.len(), files.len());
        for (path, data) in &files {
            let entry = &entries[path];
            assert_eq!(&entry.data, data, "{path}");
            assert_eq!(entry.sha256, Sha256::digest(data), "{path}");
        }
        assert!(queue.hash_until_closed().is_empty());
    }

    /// A bundle of `entries` (path, data) whose manifest lists `listed` (path,
    /// data as the manifest describes it), and its reference.
    fn bundle(entries: &[(&str, &[u8])], listed: &[(&str, &[u8])]) -> (BundleRef, Vec<u8>) {
        let manifest = BundleManifest {
            format: MANIFEST_FORMAT,
            kind: crate::bundle::BundleKind::Sentinel,
            name: "edge".to_owned(),
            source_commit: "0123456789abcdef0123456789abcdef01234567".to_owned(),
            validator: "test".to_owned(),
            files: listed
                .iter()
                .map(|(path, data)| crate::bundle::BundleFile {
                    path: (*path).to_owned(),
                    size: data.len() as u64,
                    sha256: sha256_hex(data),
                })
                .collect(),
        };
        let json = serde_json::to_vec_pretty(&manifest).unwrap();
        let mut all = entries.to_vec();
        all.push((MANIFEST_PATH, &json));
        let bytes = tar_zst(&all);
        let reference = BundleRef {
            digest: bundle_digest(&bytes),
            length: bytes.len() as u64,
        };
        (reference, bytes)
    }

    /// Every outcome is the same whether the files are hashed on one thread
    /// or two (public `verify_bundle` picks by size; the attack corpus uses
    /// small bundles, so it runs on one).
    #[test]
    fn one_thread_and_two_give_the_same_results() {
        let files: Vec<(String, Vec<u8>)> = (0..40u8)
            .map(|i| {
                let len = if i % 4 == 0 {
                    300_000
                } else {
                    1000 * usize::from(i)
                };
                (format!("files/f{i:02}"), vec![i; len])
            })
            .collect();
        let good: Vec<(&str, &[u8])> = files
            .iter()
            .map(|(p, d)| (p.as_str(), d.as_slice()))
            .collect();
        let mut resized = good.clone();
        resized[17].1 = b"not what the manifest says";
        let other = vec![0xff; 17_000];
        let mut changed = good.clone();
        changed[17].1 = &other;
        let cases = [
            // Accepted.
            bundle(&good, &good),
            bundle(&resized, &good),
            bundle(&changed, &good),
            // UnlistedFile.
            bundle(&good, &good[1..]),
            // MissingFile.
            bundle(&good[1..], &good),
            // DuplicateEntry.
            bundle(&[good[0], good[1], good[0]], &good[..2]),
        ];
        let mut outcomes = Vec::new();
        for (reference, bytes) in &cases {
            for limits in [
                Limits::default(),
                Limits {
                    max_unpacked_bytes: 1 << 20,
                    max_entries: 30,
                },
            ] {
                let one = verify_bundle_on(reference, bytes, limits, false);
                let two = verify_bundle_on(reference, bytes, limits, true);
                assert_eq!(one, two);
                // Streamed into a sink, none of it held: the same outcome.
                let streamed =
                    verify_bundle_into(reference, bytes.as_slice(), limits, |_, data| {
                        std::io::copy(data, &mut std::io::sink()).map(|_| ())
                    });
                assert_eq!(one.clone().map(Verified::<BundleHead>::from), streamed);
                outcomes.push(one.map(|_| ()));
            }
        }
        assert_eq!(
            outcomes,
            vec![
                Ok(()),
                Err(VerifyError::TooLarge { limit: 1 << 20 }),
                Err(VerifyError::FileSize {
                    path: "files/f17".to_owned(),
                    expected: 17_000,
                    found: 26,
                }),
                Err(VerifyError::TooLarge { limit: 1 << 20 }),
                Err(VerifyError::FileDigest {
                    path: "files/f17".to_owned(),
                    expected: sha256_hex(&files[17].1),
                    found: sha256_hex(&other),
                }),
                Err(VerifyError::TooLarge { limit: 1 << 20 }),
                Err(VerifyError::UnlistedFile {
                    path: "files/f00".to_owned()
                }),
                Err(VerifyError::TooLarge { limit: 1 << 20 }),
                Err(VerifyError::MissingFile {
                    path: "files/f00".to_owned()
                }),
                Err(VerifyError::TooLarge { limit: 1 << 20 }),
                Err(VerifyError::DuplicateEntry {
                    path: "files/f00".to_owned()
                }),
                Err(VerifyError::DuplicateEntry {
                    path: "files/f00".to_owned()
                }),
            ]
        );
    }

    /// However the unpacker ends, the thread hashing alongside it is not
    /// left waiting.
    #[test]
    fn a_failing_unpacker_closes_the_queue() {
        let queue = HashQueue::default();
        let bytes = tar_zst(&[("files/a", b"a"), ("files/a", b"b")]);
        let err = unpack_and_hash(&bytes, Limits::default(), &queue)
            .err()
            .unwrap();
        assert_eq!(
            err,
            VerifyError::DuplicateEntry {
                path: "files/a".to_owned()
            }
        );
        // Returns at once, the queue being closed, with the one entry read
        // before the failure (left for the other thread, never looked at).
        assert_eq!(queue.hash_until_closed().len(), 1);

        let queue = HashQueue::default();
        std::thread::scope(|scope| {
            let unpacker = scope.spawn(|| {
                let _close = CloseOnDrop(&queue);
                panic!("unpacker panicked");
            });
            assert!(queue.hash_until_closed().is_empty());
            assert!(unpacker.join().is_err());
        });
    }

    #[test]
    fn a_rollout_is_listed_once_or_once_per_proxy() {
        use crate::proxy::{Proxy, ProxyKind};
        use crate::trust::{BundleRef, ChannelManifest, ChannelRollout};
        let entry = |name: &str, proxy: Option<Proxy>| ChannelRollout {
            name: name.to_owned(),
            selector: Default::default(),
            requirements: Vec::new(),
            nodes: None,
            bundle: BundleRef {
                digest: format!("sha256:{}", "a".repeat(64)),
                length: 1,
            },
            previous: None,
            step: 1,
            steps: 1,
            membership_threshold: u64::MAX,
            http_checks: Vec::new(),
            traffic_route: None,
            min_requests: None,
            rolled_back: false,
            proxy,
        };
        let manifest = |rollouts| ChannelManifest {
            fleet: "f".to_owned(),
            environment: "prod".to_owned(),
            serial: 1,
            expires: DateTime::UNIX_EPOCH,
            rollouts,
            settings: None,
            revoked: Vec::new(),
            held: Vec::new(),
            pinned: Vec::new(),
            decommissioned: Vec::new(),
        };
        let z = Some(Proxy::new(ProxyKind::Zentinel, "0.6.45"));
        let s = Some(Proxy::legacy());
        let ok = |r| check_rollouts(&manifest(r)).is_ok();
        assert!(ok(vec![entry("edge", None), entry("api", None)]));
        assert!(ok(vec![entry("edge", s.clone()), entry("edge", z.clone())]));
        assert!(!ok(vec![entry("edge", None), entry("edge", None)]));
        assert!(!ok(vec![
            entry("edge", z.clone()),
            entry("edge", z.clone())
        ]));
        // An entry for every proxy beside one for a proxy is two for it.
        assert!(!ok(vec![entry("edge", None), entry("edge", z.clone())]));
        assert!(!ok(vec![entry("edge", z), entry("edge", None)]));
    }
}
