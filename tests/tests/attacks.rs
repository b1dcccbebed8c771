//! The attack corpus: every way a stored document or bundle can be forged,
//! replayed, rolled back or booby-trapped, each refused with its exact error.

#![allow(clippy::unwrap_used)] // test helpers fail the test by panicking

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, TimeZone, Utc};
use ed25519_dalek::SigningKey;
use gitfleet_policy::bundle::{self, Input};
use gitfleet_schemas::bundle::{bundle_path_ok, BundleKind};
use gitfleet_schemas::trust::{
    BundleRef, ChannelManifest, ChannelRollout, Document, Envelope, PublicKey, Root,
};
use gitfleet_schemas::verify::{
    bundle_digest, sha256_hex, verify_bundle_into, verify_channel, verify_first_root,
    verify_root_rotation, Bundle, Limits, Verified, VerifyError,
};
use proptest::prelude::*;

/// Both verifiers, in memory and streaming into a sink (as an agent writes
/// a bundle to disk), on the same bytes: they accept the same bundles with
/// the same files and refuse the rest with the same error (a longer input's
/// length is where the streaming one stopped reading).
fn verify_bundle(
    reference: &BundleRef,
    bytes: &[u8],
    limits: Limits,
) -> Result<Verified<Bundle>, VerifyError> {
    let whole = gitfleet_schemas::verify::verify_bundle(reference, bytes, limits);
    let mut sunk: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let streamed = verify_bundle_into(reference, bytes, limits, |path, data| {
        let mut file = Vec::new();
        data.read_to_end(&mut file)?;
        sunk.insert(path.to_owned(), file);
        Ok(())
    });
    match (&whole, &streamed) {
        (Ok(b), Ok(h)) => {
            assert_eq!(b.manifest, h.manifest);
            assert_eq!(b.reference, h.reference);
            sunk.remove(gitfleet_schemas::bundle::MANIFEST_PATH);
            assert_eq!(b.files, sunk);
        }
        (
            Err(VerifyError::BundleLength { expected, .. }),
            Err(VerifyError::BundleLength { expected: e, .. }),
        ) => {
            assert_eq!(expected, e)
        }
        (Err(a), Err(b)) => assert_eq!(a, b, "in memory and streamed"),
        (a, b) => panic!(
            "in memory: {:?}; streamed: {:?}",
            a.as_ref().map(|_| ()),
            b.as_ref().map(|_| ())
        ),
    }
    whole
}

fn key(n: u8) -> SigningKey {
    SigningKey::from_bytes(&[n; 32])
}

fn public(k: &SigningKey) -> PublicKey {
    PublicKey(k.verifying_key().to_bytes())
}

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 23, 12, 0, 0).unwrap()
}

/// Root keys 1, 2, 3 (2 of 3 sign); online key 10.
fn root_v1() -> Root {
    Root {
        fleet: "acme".into(),
        version: 1,
        expires: now() + Duration::days(365),
        root_keys: vec![public(&key(1)), public(&key(2)), public(&key(3))],
        root_threshold: 2,
        online_keys: vec![public(&key(10))],
        online_threshold: 1,
    }
}

fn signed<T: Document>(doc: &T, keys: &[&SigningKey]) -> Vec<u8> {
    let mut env = doc.envelope();
    for k in keys {
        env.sign(k).unwrap();
    }
    env.to_json()
}

fn pinned() -> Vec<PublicKey> {
    root_v1().root_keys
}

fn trusted_root() -> Verified<Root> {
    let bytes = signed(&root_v1(), &[&key(1), &key(2)]);
    verify_first_root(&bytes, "acme", &pinned(), 2).unwrap()
}

fn channel(serial: u64) -> ChannelManifest {
    ChannelManifest {
        settings: None,
        revoked: Vec::new(),
        held: Vec::new(),
        pinned: Vec::new(),
        decommissioned: Vec::new(),
        fleet: "acme".into(),
        environment: "prod".into(),
        serial,
        expires: now() + Duration::hours(1),
        rollouts: vec![ChannelRollout {
            name: "edge".into(),
            selector: BTreeMap::from([("role".into(), "edge".into())]),
            requirements: Vec::new(),
            nodes: None,
            bundle: BundleRef {
                digest: format!("sha256:{}", "ab".repeat(32)),
                length: 1234,
            },
            previous: None,
            step: 1,
            steps: 3,
            membership_threshold: u64::MAX / 4,
            http_checks: Vec::new(),
            traffic_route: None,
            min_requests: None,
            rolled_back: false,
            proxy: None,
        }],
    }
}

fn check_channel(
    bytes: &[u8],
    trusted: Option<u64>,
) -> Result<Verified<ChannelManifest>, VerifyError> {
    verify_channel(&trusted_root(), bytes, "prod", trusted, now())
}

// --- roots and manifests ---------------------------------------------------

#[test]
fn a_properly_signed_chain_is_accepted() {
    let m = check_channel(&signed(&channel(42), &[&key(10)]), Some(41)).unwrap();
    assert_eq!(m.serial, 42);
}

#[test]
fn the_same_serial_again_is_accepted() {
    assert!(check_channel(&signed(&channel(42), &[&key(10)]), Some(42)).is_ok());
}

#[test]
fn a_tampered_payload_fails_its_signature() {
    let mut env: Envelope = serde_json::from_slice(&signed(&channel(42), &[&key(10)])).unwrap();
    let forged = channel(43).payload();
    env.payload = base64_encode(&forged);
    let err = check_channel(&env.to_json(), None).unwrap_err();
    assert_eq!(
        err,
        VerifyError::BadSignature {
            what: "channel manifest",
            key: public(&key(10))
        }
    );
}

#[test]
fn a_signature_by_an_unknown_key_is_refused() {
    let err = check_channel(&signed(&channel(42), &[&key(66)]), None).unwrap_err();
    assert_eq!(
        err,
        VerifyError::UnknownKey {
            what: "channel manifest",
            key: public(&key(66))
        }
    );
}

#[test]
fn a_manifest_signed_by_a_root_key_instead_of_an_online_key_is_refused() {
    let err = check_channel(&signed(&channel(42), &[&key(1)]), None).unwrap_err();
    assert!(matches!(err, VerifyError::UnknownKey { .. }), "{err}");
}

#[test]
fn an_unsigned_manifest_misses_the_threshold() {
    let err = check_channel(&signed(&channel(42), &[]), None).unwrap_err();
    assert_eq!(
        err,
        VerifyError::Threshold {
            what: "channel manifest",
            role: "online",
            valid: 0,
            threshold: 1
        }
    );
}

#[test]
fn a_root_signed_below_the_threshold_is_refused() {
    let bytes = signed(&root_v1(), &[&key(1)]);
    let err = verify_first_root(&bytes, "acme", &pinned(), 2).unwrap_err();
    assert_eq!(
        err,
        VerifyError::Threshold {
            what: "root",
            role: "pinned root",
            valid: 1,
            threshold: 2
        }
    );
}

#[test]
fn a_duplicate_signature_counts_once() {
    let mut env = root_v1().envelope();
    env.sign(&key(1)).unwrap();
    let dup = env.signatures[0].clone();
    env.signatures.push(dup);
    let err = verify_first_root(&env.to_json(), "acme", &pinned(), 2).unwrap_err();
    assert!(
        matches!(err, VerifyError::Threshold { valid: 1, .. }),
        "{err}"
    );
}

#[test]
fn an_expired_manifest_is_refused() {
    let mut m = channel(42);
    m.expires = now() - Duration::seconds(1);
    let err = check_channel(&signed(&m, &[&key(10)]), None).unwrap_err();
    assert_eq!(
        err,
        VerifyError::Expired {
            what: "channel manifest",
            expires: m.expires,
            now: now()
        }
    );
}

#[test]
fn an_expired_root_freezes_everything() {
    let mut r = root_v1();
    r.expires = now() - Duration::days(1);
    let root = verify_first_root(&signed(&r, &[&key(1), &key(2)]), "acme", &pinned(), 2).unwrap();
    let err = verify_channel(
        &root,
        &signed(&channel(42), &[&key(10)]),
        "prod",
        None,
        now(),
    )
    .unwrap_err();
    assert_eq!(
        err,
        VerifyError::Expired {
            what: "root",
            expires: r.expires,
            now: now()
        }
    );
}

#[test]
fn a_lower_serial_is_a_rollback() {
    let err = check_channel(&signed(&channel(41), &[&key(10)]), Some(42)).unwrap_err();
    assert_eq!(
        err,
        VerifyError::Rollback {
            trusted: 42,
            found: 41
        }
    );
    assert_eq!(
        err.to_string(),
        "channel manifest serial 41 < trusted 42: refusing a rollback"
    );
}

#[test]
fn a_manifest_for_another_environment_is_refused() {
    let mut m = channel(42);
    m.environment = "dev".into();
    let err = check_channel(&signed(&m, &[&key(10)]), None).unwrap_err();
    assert_eq!(
        err,
        VerifyError::WrongEnvironment {
            expected: "prod".into(),
            found: "dev".into()
        }
    );
}

#[test]
fn a_manifest_for_another_fleet_is_refused() {
    let mut m = channel(42);
    m.fleet = "evil".into();
    let err = check_channel(&signed(&m, &[&key(10)]), None).unwrap_err();
    assert!(matches!(err, VerifyError::WrongFleet { .. }), "{err}");
}

#[test]
fn a_root_presented_as_a_manifest_has_the_wrong_type() {
    let bytes = signed(&root_v1(), &[&key(10)]);
    let err = check_channel(&bytes, None).unwrap_err();
    assert_eq!(
        err,
        VerifyError::WrongType {
            what: "channel manifest",
            expected: ChannelManifest::PAYLOAD_TYPE,
            found: Root::PAYLOAD_TYPE.into()
        }
    );
}

#[test]
fn unknown_fields_in_a_signed_payload_are_refused() {
    let mut payload: serde_json::Value = serde_json::to_value(channel(42)).unwrap();
    payload["surprise"] = serde_json::json!(true);
    let mut env = Envelope::new(
        ChannelManifest::PAYLOAD_TYPE,
        payload.to_string().as_bytes(),
    );
    env.sign(&key(10)).unwrap();
    let err = check_channel(&env.to_json(), None).unwrap_err();
    assert!(
        matches!(&err, VerifyError::Malformed { reason, .. } if reason.contains("surprise")),
        "{err}"
    );
}

#[test]
fn a_reformatted_envelope_is_refused() {
    let bytes = signed(&channel(42), &[&key(10)]);
    let compact = serde_json::to_vec(&serde_json::from_slice::<Envelope>(&bytes).unwrap()).unwrap();
    let err = check_channel(&compact, None).unwrap_err();
    assert!(matches!(err, VerifyError::Malformed { .. }), "{err}");
}

fn root_v2() -> Root {
    Root {
        version: 2,
        root_keys: vec![public(&key(4)), public(&key(5)), public(&key(6))],
        online_keys: vec![public(&key(11))],
        ..root_v1()
    }
}

#[test]
fn a_rotation_signed_by_old_and_new_roots_is_accepted() {
    let bytes = signed(&root_v2(), &[&key(1), &key(2), &key(4), &key(5)]);
    let v2 = verify_root_rotation(&trusted_root(), &bytes).unwrap();
    assert_eq!(v2.version, 2);
    // The new online key now signs manifests; the old one no longer does.
    assert!(verify_channel(&v2, &signed(&channel(1), &[&key(11)]), "prod", None, now()).is_ok());
    assert!(verify_channel(&v2, &signed(&channel(1), &[&key(10)]), "prod", None, now()).is_err());
}

#[test]
fn a_rotation_without_the_old_roots_signatures_is_refused() {
    let bytes = signed(&root_v2(), &[&key(4), &key(5)]);
    let err = verify_root_rotation(&trusted_root(), &bytes).unwrap_err();
    assert_eq!(
        err,
        VerifyError::Threshold {
            what: "root",
            role: "trusted root",
            valid: 0,
            threshold: 2
        }
    );
}

#[test]
fn a_rotation_without_the_new_roots_signatures_is_refused() {
    let bytes = signed(&root_v2(), &[&key(1), &key(2)]);
    let err = verify_root_rotation(&trusted_root(), &bytes).unwrap_err();
    assert_eq!(
        err,
        VerifyError::Threshold {
            what: "root",
            role: "new root",
            valid: 0,
            threshold: 2
        }
    );
}

#[test]
fn a_rotation_that_skips_a_version_is_refused() {
    let mut r = root_v2();
    r.version = 3;
    let bytes = signed(&r, &[&key(1), &key(2), &key(4), &key(5)]);
    let err = verify_root_rotation(&trusted_root(), &bytes).unwrap_err();
    assert_eq!(
        err,
        VerifyError::RootVersion {
            trusted: 1,
            found: 3
        }
    );
}

#[test]
fn replaying_the_trusted_root_as_a_rotation_is_refused() {
    let bytes = signed(&root_v1(), &[&key(1), &key(2)]);
    let err = verify_root_rotation(&trusted_root(), &bytes).unwrap_err();
    assert_eq!(
        err,
        VerifyError::RootVersion {
            trusted: 1,
            found: 1
        }
    );
}

#[test]
fn a_root_whose_thresholds_cannot_be_met_is_refused() {
    let mut r = root_v1();
    r.online_threshold = 2;
    let err =
        verify_first_root(&signed(&r, &[&key(1), &key(2)]), "acme", &pinned(), 2).unwrap_err();
    assert_eq!(
        err,
        VerifyError::UnreachableThreshold {
            role: "online",
            keys: 1,
            threshold: 2
        }
    );
}

// --- bundles ---------------------------------------------------------------

fn base64_encode(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(b)
}

fn good_bundle() -> bundle::Built {
    let files = BTreeMap::from([("sentinel.kdl".to_owned(), b"system {}\n".to_vec())]);
    bundle::build(Input {
        kind: BundleKind::Sentinel,
        name: "edge",
        source_commit: "0123456789abcdef0123456789abcdef01234567",
        validator: "sentinel-config 0.4.14",
        files: &files,
        sbom: b"{}\n".to_vec(),
    })
    .unwrap()
}

/// One raw tar entry, written byte by byte so that anything can be forged.
struct Raw<'a> {
    name: &'a [u8],
    kind: tar::EntryType,
    data: &'a [u8],
}

fn raw_header(name: &[u8], kind: tar::EntryType, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.as_old_mut().name[..name.len()].copy_from_slice(name);
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(0o644);
    h.set_mtime(0);
    if matches!(kind, tar::EntryType::Symlink | tar::EntryType::Link) {
        h.set_link_name("files/sentinel.kdl").unwrap();
    }
    h.set_cksum();
    h
}

/// The tar stream of the good bundle's entries (those `keep` accepts) with
/// `before` ahead of them and `extra` after them, without the
/// end-of-archive marker.
fn forged_tar(before: &[Raw<'_>], extra: &[Raw<'_>], keep: impl Fn(&str) -> bool) -> Vec<u8> {
    let good = good_bundle();
    let bundle = verify_bundle(&good.reference, &good.bytes, Limits::default()).unwrap();
    let mut entries: Vec<(Vec<u8>, tar::EntryType, Vec<u8>)> = Vec::new();
    for e in before {
        entries.push((e.name.to_vec(), e.kind, e.data.to_vec()));
    }
    let manifest = serde_json::to_vec_pretty(&bundle.manifest).unwrap();
    entries.push((b"manifest.json".to_vec(), tar::EntryType::Regular, manifest));
    for (path, data) in &bundle.files {
        if keep(path) {
            entries.push((
                path.as_bytes().to_vec(),
                tar::EntryType::Regular,
                data.clone(),
            ));
        }
    }
    for e in extra {
        entries.push((e.name.to_vec(), e.kind, e.data.to_vec()));
    }
    let mut out = Vec::new();
    for (name, kind, data) in &entries {
        out.extend_from_slice(raw_header(name, *kind, data.len() as u64).as_bytes());
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out
}

/// Compressed, with a reference that matches the bytes (so only the
/// contents are wrong).
fn compressed(tar: &[u8]) -> (BundleRef, Vec<u8>) {
    let bytes = zstd::bulk::compress(tar, 3).unwrap();
    (reference_of(&bytes), bytes)
}

/// An archive of the good bundle's entries plus `extra`, compressed, with a
/// reference that matches its bytes (so only the contents are wrong).
fn forged(extra: &[Raw<'_>], keep: impl Fn(&str) -> bool) -> (BundleRef, Vec<u8>) {
    let mut tar = forged_tar(&[], extra, keep);
    tar.extend_from_slice(&[0; 1024]);
    compressed(&tar)
}

fn reference_of(bytes: &[u8]) -> BundleRef {
    BundleRef {
        digest: bundle_digest(bytes),
        length: bytes.len() as u64,
    }
}

fn reject(extra: &[Raw<'_>]) -> VerifyError {
    let (r, bytes) = forged(extra, |_| true);
    verify_bundle(&r, &bytes, Limits::default()).unwrap_err()
}

#[test]
fn the_forging_helper_builds_acceptable_bundles() {
    let (r, bytes) = forged(&[], |_| true);
    assert!(verify_bundle(&r, &bytes, Limits::default()).is_ok());
}

#[test]
fn a_bundle_with_another_digest_is_refused() {
    let good = good_bundle();
    let mut bytes = good.bytes.clone();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    let err = verify_bundle(&good.reference, &bytes, Limits::default()).unwrap_err();
    assert_eq!(
        err,
        VerifyError::BundleDigest {
            expected: good.reference.digest.clone(),
            found: bundle_digest(&bytes)
        }
    );
}

#[test]
fn a_bundle_of_another_length_is_refused_before_hashing() {
    let good = good_bundle();
    let mut bytes = good.bytes.clone();
    bytes.extend_from_slice(&[0; 1 << 16]);
    let err = verify_bundle(&good.reference, &bytes, Limits::default()).unwrap_err();
    assert_eq!(
        err,
        VerifyError::BundleLength {
            expected: good.reference.length,
            found: good.reference.length + (1 << 16)
        }
    );
}

#[test]
fn an_absolute_path_is_refused() {
    let err = reject(&[Raw {
        name: b"/etc/cron.d/evil",
        kind: tar::EntryType::Regular,
        data: b"x",
    }]);
    assert_eq!(
        err,
        VerifyError::EntryPath {
            path: "/etc/cron.d/evil".into()
        }
    );
}

#[test]
fn a_dot_dot_path_is_refused() {
    let err = reject(&[Raw {
        name: b"files/../../etc/passwd",
        kind: tar::EntryType::Regular,
        data: b"x",
    }]);
    assert_eq!(
        err,
        VerifyError::EntryPath {
            path: "files/../../etc/passwd".into()
        }
    );
}

#[test]
fn a_symlink_is_refused() {
    let err = reject(&[Raw {
        name: b"files/link",
        kind: tar::EntryType::Symlink,
        data: b"",
    }]);
    assert_eq!(
        err,
        VerifyError::EntryType {
            path: "files/link".into(),
            kind: "symlink"
        }
    );
}

#[test]
fn a_hardlink_is_refused() {
    let err = reject(&[Raw {
        name: b"files/hard",
        kind: tar::EntryType::Link,
        data: b"",
    }]);
    assert_eq!(
        err,
        VerifyError::EntryType {
            path: "files/hard".into(),
            kind: "hardlink"
        }
    );
}

#[test]
fn devices_and_fifos_are_refused() {
    for (kind, name) in [
        (tar::EntryType::Char, "character device"),
        (tar::EntryType::Block, "block device"),
        (tar::EntryType::Fifo, "fifo"),
        (tar::EntryType::Directory, "directory"),
    ] {
        let err = reject(&[Raw {
            name: b"files/dev",
            kind,
            data: b"",
        }]);
        assert_eq!(
            err,
            VerifyError::EntryType {
                path: "files/dev".into(),
                kind: name
            }
        );
    }
}

#[test]
fn a_duplicate_path_is_refused() {
    let err = reject(&[Raw {
        name: b"files/sentinel.kdl",
        kind: tar::EntryType::Regular,
        data: b"system {}\n",
    }]);
    assert_eq!(
        err,
        VerifyError::DuplicateEntry {
            path: "files/sentinel.kdl".into()
        }
    );
}

#[test]
fn a_file_that_is_not_in_the_manifest_is_refused() {
    let err = reject(&[Raw {
        name: b"files/extra.kdl",
        kind: tar::EntryType::Regular,
        data: b"x",
    }]);
    assert_eq!(
        err,
        VerifyError::UnlistedFile {
            path: "files/extra.kdl".into()
        }
    );
}

#[test]
fn a_listed_file_that_is_missing_is_refused() {
    let (r, bytes) = forged(&[], |p| p != "sbom.cdx.json");
    let err = verify_bundle(&r, &bytes, Limits::default()).unwrap_err();
    assert_eq!(
        err,
        VerifyError::MissingFile {
            path: "sbom.cdx.json".into()
        }
    );
}

#[test]
fn a_bundle_without_a_manifest_is_refused() {
    let mut tar = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(1);
    h.set_mode(0o644);
    tar.append_data(&mut h, "files/sentinel.kdl", &b"x"[..])
        .unwrap();
    let bytes = zstd::bulk::compress(&tar.into_inner().unwrap(), 3).unwrap();
    let err = verify_bundle(&reference_of(&bytes), &bytes, Limits::default()).unwrap_err();
    assert_eq!(err, VerifyError::MissingManifest);
}

/// The good bundle with its config file's bytes replaced under the
/// unchanged manifest (well-formed archive, reference matching its bytes).
fn swapped_config(content: &[u8]) -> VerifyError {
    let good = good_bundle();
    let bundle = verify_bundle(&good.reference, &good.bytes, Limits::default()).unwrap();
    let mut tar = tar::Builder::new(Vec::new());
    for (path, data) in [
        ("files/sentinel.kdl", content.to_vec()),
        (
            "manifest.json",
            serde_json::to_vec(&bundle.manifest).unwrap(),
        ),
        ("sbom.cdx.json", bundle.files["sbom.cdx.json"].clone()),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        tar.append_data(&mut h, path, data.as_slice()).unwrap();
    }
    let bytes = zstd::bulk::compress(&tar.into_inner().unwrap(), 3).unwrap();
    verify_bundle(&reference_of(&bytes), &bytes, Limits::default()).unwrap_err()
}

#[test]
fn a_file_whose_digest_differs_from_the_manifest_is_refused() {
    // Same size, different content: only the digest can tell.
    let err = swapped_config(b"system []\n");
    assert_eq!(
        err,
        VerifyError::FileDigest {
            path: "files/sentinel.kdl".into(),
            expected: sha256_hex(b"system {}\n"),
            found: sha256_hex(b"system []\n")
        }
    );
}

#[test]
fn a_file_whose_size_differs_from_the_manifest_is_refused() {
    let err = swapped_config(b"system { }\n");
    assert_eq!(
        err,
        VerifyError::FileSize {
            path: "files/sentinel.kdl".into(),
            expected: 10,
            found: 11
        }
    );
}

#[test]
fn a_decompression_bomb_stops_at_the_cap() {
    // 64 MiB of zeros compresses to a few KiB.
    let zeros = vec![0u8; 64 << 20];
    let (r, bytes) = forged(
        &[Raw {
            name: b"files/bomb",
            kind: tar::EntryType::Regular,
            data: &zeros,
        }],
        |_| true,
    );
    assert!(bytes.len() < 64 << 10, "the bomb is small: {}", bytes.len());
    let limits = Limits {
        max_unpacked_bytes: 1 << 20,
        ..Limits::default()
    };
    let err = verify_bundle(&r, &bytes, limits).unwrap_err();
    assert_eq!(err, VerifyError::TooLarge { limit: 1 << 20 });
}

#[test]
fn too_many_entries_are_refused() {
    let names: Vec<Vec<u8>> = (0..20)
        .map(|i| format!("files/f{i}").into_bytes())
        .collect();
    let extra: Vec<Raw<'_>> = names
        .iter()
        .map(|n| Raw {
            name: n,
            kind: tar::EntryType::Regular,
            data: b"x",
        })
        .collect();
    let (r, bytes) = forged(&extra, |_| true);
    let limits = Limits {
        max_entries: 10,
        ..Limits::default()
    };
    assert_eq!(
        verify_bundle(&r, &bytes, limits).unwrap_err(),
        VerifyError::TooManyEntries { limit: 10 }
    );
}

#[test]
fn truncated_zstd_is_corrupt() {
    let good = good_bundle();
    let bytes = &good.bytes[..good.bytes.len() / 2];
    let err = verify_bundle(&reference_of(bytes), bytes, Limits::default()).unwrap_err();
    assert!(matches!(err, VerifyError::Corrupt { .. }), "{err}");
}

#[test]
fn garbage_is_corrupt() {
    let bytes = b"this is not zstd at all, just text".to_vec();
    let err = verify_bundle(&reference_of(&bytes), &bytes, Limits::default()).unwrap_err();
    assert!(matches!(err, VerifyError::Corrupt { .. }), "{err}");
}

#[test]
fn a_bundle_manifest_with_unknown_fields_is_refused() {
    let mut tar = tar::Builder::new(Vec::new());
    let manifest = br#"{"format":1,"kind":"sentinel","name":"x","source_commit":"c","validator":"v","files":[],"extra":1}"#;
    let mut h = tar::Header::new_gnu();
    h.set_size(manifest.len() as u64);
    h.set_mode(0o644);
    tar.append_data(&mut h, "manifest.json", &manifest[..])
        .unwrap();
    let bytes = zstd::bulk::compress(&tar.into_inner().unwrap(), 3).unwrap();
    let err = verify_bundle(&reference_of(&bytes), &bytes, Limits::default()).unwrap_err();
    assert!(
        matches!(&err, VerifyError::BadManifest { reason } if reason.contains("extra")),
        "{err}"
    );
}

// --- duplicate keys (a key listed twice must not count twice) ---------------

#[test]
fn a_pinned_key_listed_twice_is_refused() {
    // One signature by K1 would have met "2 of [K1, K1]".
    let bytes = signed(&root_v1(), &[&key(1)]);
    let pinned = vec![public(&key(1)), public(&key(1))];
    let err = verify_first_root(&bytes, "acme", &pinned, 2).unwrap_err();
    assert_eq!(
        err,
        VerifyError::DuplicateKey {
            role: "pinned root",
            key: public(&key(1))
        }
    );
    assert_eq!(
        err.to_string(),
        format!(
            "pinned root key {} is listed more than once",
            public(&key(1))
        )
    );
}

#[test]
fn a_root_key_listed_twice_is_refused() {
    let r = Root {
        root_keys: vec![public(&key(1)), public(&key(1))],
        ..root_v1()
    };
    let err =
        verify_first_root(&signed(&r, &[&key(1), &key(2)]), "acme", &pinned(), 2).unwrap_err();
    assert_eq!(
        err,
        VerifyError::DuplicateKey {
            role: "root",
            key: public(&key(1))
        }
    );
}

#[test]
fn an_online_key_listed_twice_is_refused() {
    let r = Root {
        online_keys: vec![public(&key(10)), public(&key(10))],
        online_threshold: 2,
        ..root_v1()
    };
    let err =
        verify_first_root(&signed(&r, &[&key(1), &key(2)]), "acme", &pinned(), 2).unwrap_err();
    assert_eq!(
        err,
        VerifyError::DuplicateKey {
            role: "online",
            key: public(&key(10))
        }
    );
}

#[test]
fn a_rotation_to_one_key_listed_three_times_is_refused() {
    let r = Root {
        root_keys: vec![public(&key(7)), public(&key(7)), public(&key(7))],
        root_threshold: 3,
        ..root_v2()
    };
    let bytes = signed(&r, &[&key(1), &key(2), &key(7)]);
    let err = verify_root_rotation(&trusted_root(), &bytes).unwrap_err();
    assert_eq!(
        err,
        VerifyError::DuplicateKey {
            role: "new root",
            key: public(&key(7))
        }
    );
}

// --- the first root must meet its own threshold ----------------------------

/// Pinned K1, K2, K3 (2 of 3); the root names K1, X, Y (3 of 3).
fn root_with_other_keys() -> Root {
    Root {
        root_keys: vec![public(&key(1)), public(&key(20)), public(&key(21))],
        root_threshold: 3,
        ..root_v1()
    }
}

#[test]
fn a_first_root_below_its_own_threshold_is_refused_even_with_pinned_signers_outside_it() {
    // K2 is pinned but not a root key: it used to make the self-check be
    // skipped altogether.
    let bytes = signed(&root_with_other_keys(), &[&key(1), &key(2)]);
    let err = verify_first_root(&bytes, "acme", &pinned(), 2).unwrap_err();
    assert_eq!(
        err,
        VerifyError::Threshold {
            what: "root",
            role: "root",
            valid: 1,
            threshold: 3
        }
    );
}

#[test]
fn pinned_signers_outside_the_root_are_ignored_by_its_own_threshold() {
    let bytes = signed(
        &root_with_other_keys(),
        &[&key(1), &key(2), &key(20), &key(21)],
    );
    let root = verify_first_root(&bytes, "acme", &pinned(), 2).unwrap();
    assert_eq!(root.root_threshold, 3);
}

#[test]
fn a_first_root_signed_by_a_key_neither_pinned_nor_its_own_is_refused() {
    let bytes = signed(
        &root_with_other_keys(),
        &[&key(1), &key(2), &key(20), &key(21), &key(66)],
    );
    let err = verify_first_root(&bytes, "acme", &pinned(), 2).unwrap_err();
    assert_eq!(
        err,
        VerifyError::UnknownKey {
            what: "root",
            key: public(&key(66))
        }
    );
}

// --- root and online keys are kept apart ------------------------------------

#[test]
fn a_root_whose_online_key_is_also_a_root_key_is_refused() {
    let r = Root {
        online_keys: vec![public(&key(1))],
        ..root_v1()
    };
    let err =
        verify_first_root(&signed(&r, &[&key(1), &key(2)]), "acme", &pinned(), 2).unwrap_err();
    assert_eq!(
        err,
        VerifyError::SharedKey {
            key: public(&key(1))
        }
    );
}

#[test]
fn a_rotation_that_makes_a_root_key_an_online_key_is_refused() {
    let r = Root {
        online_keys: vec![public(&key(4))],
        ..root_v2()
    };
    let bytes = signed(&r, &[&key(1), &key(2), &key(4), &key(5)]);
    let err = verify_root_rotation(&trusted_root(), &bytes).unwrap_err();
    assert_eq!(
        err,
        VerifyError::SharedKey {
            key: public(&key(4))
        }
    );
}

// --- weak and mixed-order keys ----------------------------------------------

/// A point of order 8 (from the well-known list of small-order points).
const ORDER_8: [u8; 32] = [
    0xc7, 0x17, 0x6a, 0x70, 0x3d, 0x4d, 0xd8, 0x4f, 0xba, 0x3c, 0x0b, 0x76, 0x0d, 0x10, 0x67, 0x0f,
    0x2a, 0x20, 0x53, 0xfa, 0x2c, 0x39, 0xcc, 0xc6, 0x4e, 0xc7, 0xfd, 0x77, 0x92, 0xac, 0x03, 0x7a,
];

/// `k + T8`: a second key the holder of `k` can sign for.
fn with_torsion(k: &SigningKey) -> [u8; 32] {
    let t = ed25519_dalek::VerifyingKey::from_bytes(&ORDER_8).unwrap();
    assert!(t.is_weak());
    let t = t.to_edwards();
    let mut identity = [0u8; 32];
    identity[0] = 1;
    assert_ne!(
        (t + t + t + t).compress().to_bytes(),
        identity,
        "T8 has order 8, not 4"
    );
    (k.verifying_key().to_edwards() + t).compress().to_bytes()
}

#[test]
fn weak_mixed_order_and_non_canonical_keys_do_not_parse() {
    let mut identity = [0u8; 32];
    identity[0] = 1;
    // y = p + 1: a non-canonical name for the point y = 1.
    let mut non_canonical = [0xffu8; 32];
    non_canonical[0] = 0xee;
    non_canonical[31] = 0x7f;
    let mixed = with_torsion(&key(10));
    assert!(ed25519_dalek::VerifyingKey::from_bytes(&mixed).is_ok());
    for (bytes, why) in [
        (identity, "weak"),
        (ORDER_8, "weak"),
        (mixed, "torsion"),
        (non_canonical, "canonical"),
    ] {
        let err = PublicKey::parse(&base64_encode(&bytes)).unwrap_err();
        assert!(err.contains(why), "{err}");
    }
    // The good key itself parses.
    assert_eq!(
        PublicKey::parse(&public(&key(10)).to_string()),
        Ok(public(&key(10)))
    );
}

#[test]
fn a_root_naming_a_key_and_its_torsion_twin_is_refused() {
    // Online K10 and K10 + T8, 2 of 2: one private key could meet it.
    let r = Root {
        online_keys: vec![public(&key(10)), PublicKey(with_torsion(&key(10)))],
        online_threshold: 2,
        ..root_v1()
    };
    let err =
        verify_first_root(&signed(&r, &[&key(1), &key(2)]), "acme", &pinned(), 2).unwrap_err();
    assert!(
        matches!(&err, VerifyError::Malformed { what: "root", reason } if reason.contains("torsion")),
        "{err}"
    );
}

// --- channel manifest structure ----------------------------------------------

#[test]
fn a_bundle_digest_that_is_not_sha256_hex_is_refused() {
    for digest in [
        "sha256:../../etc/passwd#".to_owned(),
        format!("sha256:{}", "AB".repeat(32)),
        format!("sha256:{}", "ab".repeat(31)),
        format!("sha512:{}", "ab".repeat(32)),
        format!("sha256:{}/x", "ab".repeat(32)),
    ] {
        let mut m = channel(42);
        m.rollouts[0].bundle.digest = digest.clone();
        let err = check_channel(&signed(&m, &[&key(10)]), None).unwrap_err();
        assert_eq!(
            err,
            VerifyError::BadDigest {
                rollout: "edge".into(),
                digest: digest.clone()
            }
        );
        assert_eq!(m.rollouts[0].bundle.object_key(), None, "{digest}");
    }
    let mut m = channel(42);
    m.rollouts[0].previous = Some(BundleRef {
        digest: "sha256:../x".into(),
        length: 1,
    });
    let err = check_channel(&signed(&m, &[&key(10)]), None).unwrap_err();
    assert!(matches!(err, VerifyError::BadDigest { .. }), "{err}");
    assert_eq!(
        channel(42).rollouts[0].bundle.object_key().unwrap(),
        format!("bundles/sha256/{}.tar.zst", "ab".repeat(32))
    );
}

#[test]
fn a_step_beyond_the_steps_is_refused() {
    let mut m = channel(42);
    m.rollouts[0].step = 4;
    let err = check_channel(&signed(&m, &[&key(10)]), None).unwrap_err();
    assert_eq!(
        err,
        VerifyError::BadStep {
            rollout: "edge".into(),
            step: 4,
            steps: 3
        }
    );
}

#[test]
fn a_rollout_named_twice_is_refused() {
    let mut m = channel(42);
    let again = m.rollouts[0].clone();
    m.rollouts.push(again);
    let err = check_channel(&signed(&m, &[&key(10)]), None).unwrap_err();
    assert_eq!(
        err,
        VerifyError::DuplicateRollout {
            name: "edge".into()
        }
    );
}

// --- archive ends and frames -------------------------------------------------

fn corrupt_reason(tar: &[u8]) -> String {
    let (r, bytes) = compressed(tar);
    match verify_bundle(&r, &bytes, Limits::default()).unwrap_err() {
        VerifyError::Corrupt { reason } => reason,
        other => panic!("not corrupt: {other}"),
    }
}

#[test]
fn entries_after_the_end_of_archive_marker_are_refused() {
    let mut tar = forged_tar(&[], &[], |_| true);
    tar.extend_from_slice(&[0; 1024]);
    // GNU tar with --ignore-zeros would read this one; tar-rs stops before it.
    tar.extend_from_slice(raw_header(b"files/hidden", tar::EntryType::Regular, 1).as_bytes());
    tar.extend_from_slice(&[b'x'; 512]);
    tar.extend_from_slice(&[0; 1024]);
    assert_eq!(
        corrupt_reason(&tar),
        "there is data after the end-of-archive marker"
    );
}

#[test]
fn a_missing_or_short_end_of_archive_marker_is_refused() {
    for zeros in [0, 512] {
        let mut tar = forged_tar(&[], &[], |_| true);
        tar.extend_from_slice(&vec![0; zeros]);
        assert_eq!(
            corrupt_reason(&tar),
            "the archive has no end-of-archive marker (two zero blocks)",
            "{zeros} zero bytes"
        );
    }
    let mut tar = forged_tar(&[], &[], |_| true);
    tar.extend_from_slice(&[0; 1100]);
    assert_eq!(
        corrupt_reason(&tar),
        "the archive does not end on a 512-byte block"
    );
    // Padding to a record, as GNU tar writes, is fine.
    let mut tar = forged_tar(&[], &[], |_| true);
    tar.resize(tar.len().div_ceil(10240) * 10240 + 10240, 0);
    let (r, bytes) = compressed(&tar);
    assert!(verify_bundle(&r, &bytes, Limits::default()).is_ok());
}

fn frame_error(bytes: &[u8]) -> VerifyError {
    verify_bundle(&reference_of(bytes), bytes, Limits::default()).unwrap_err()
}

fn corrupt(reason: &str) -> VerifyError {
    VerifyError::Corrupt {
        reason: reason.into(),
    }
}

/// A zstd skippable frame holding `data`.
fn skippable(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x50, 0x2a, 0x4d, 0x18];
    out.extend_from_slice(&u32::try_from(data.len()).unwrap().to_le_bytes());
    out.extend_from_slice(data);
    out
}

#[test]
fn garbage_after_the_zstd_frame_is_refused() {
    let mut bytes = good_bundle().bytes;
    bytes.extend_from_slice(b"trailing garbage");
    assert_eq!(
        frame_error(&bytes),
        corrupt("there is data after the zstd frame")
    );
}

#[test]
fn skippable_frames_are_refused() {
    let good = good_bundle().bytes;
    let mut before = skippable(b"hidden");
    before.extend_from_slice(&good);
    assert_eq!(
        frame_error(&before),
        corrupt("it does not start with a zstd frame (skippable frames are not accepted)")
    );
    let mut after = good.clone();
    after.extend_from_slice(&skippable(b"hidden"));
    assert_eq!(
        frame_error(&after),
        corrupt("there is data after the zstd frame")
    );
}

#[test]
fn a_second_zstd_frame_is_refused() {
    // Split the tar stream over two frames: a multi-frame reader sees one
    // valid archive, so only the frame count can tell.
    let mut tar = forged_tar(&[], &[], |_| true);
    tar.extend_from_slice(&[0; 1024]);
    let (head, tail) = tar.split_at(tar.len() - 512);
    let mut bytes = zstd::bulk::compress(head, 3).unwrap();
    bytes.extend_from_slice(&zstd::bulk::compress(tail, 3).unwrap());
    assert_eq!(
        frame_error(&bytes),
        corrupt("the archive has no end-of-archive marker (two zero blocks)")
    );
    // A whole second archive after the first one's end.
    let mut bytes = good_bundle().bytes;
    bytes.extend_from_slice(&good_bundle().bytes);
    assert_eq!(
        frame_error(&bytes),
        corrupt("there is data after the zstd frame")
    );
}

/// A PAX extended header record: `<len> <key>=<value>\n`.
fn pax_record(key: &str, value: &str) -> Vec<u8> {
    let body = format!(" {key}={value}\n");
    let mut len = body.len() + 1;
    while format!("{len}").len() + body.len() != len {
        len += 1;
    }
    format!("{len}{body}").into_bytes()
}

fn reject_before(before: &[Raw<'_>]) -> VerifyError {
    let mut tar = forged_tar(before, &[], |_| true);
    tar.extend_from_slice(&[0; 1024]);
    let (r, bytes) = compressed(&tar);
    verify_bundle(&r, &bytes, Limits::default()).unwrap_err()
}

#[test]
fn a_gnu_long_name_entry_is_refused() {
    let err = reject_before(&[Raw {
        name: b"././@LongLink",
        kind: tar::EntryType::GNULongName,
        data: b"files/sentinel.kdl\0",
    }]);
    assert_eq!(
        err,
        VerifyError::EntryType {
            path: "././@LongLink".into(),
            kind: "GNU long name"
        }
    );
}

#[test]
fn a_pax_header_is_refused_whatever_it_says() {
    for record in [
        pax_record("path", "files/other.kdl"),
        pax_record("size", "not-a-number"),
        pax_record("size", "3"),
    ] {
        let err = reject_before(&[Raw {
            name: b"PaxHeaders/x",
            kind: tar::EntryType::XHeader,
            data: &record,
        }]);
        assert_eq!(
            err,
            VerifyError::EntryType {
                path: "PaxHeaders/x".into(),
                kind: "PAX extended header"
            }
        );
    }
    let err = reject_before(&[Raw {
        name: b"pax_global_header",
        kind: tar::EntryType::XGlobalHeader,
        data: &pax_record("path", "files/other.kdl"),
    }]);
    assert!(
        matches!(
            err,
            VerifyError::EntryType {
                kind: "PAX global header",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn a_gnu_long_name_and_a_pax_path_together_are_refused() {
    // tar-rs and GNU tar disagree on which name wins; neither is read.
    let pax = pax_record("path", "files/pax.kdl");
    let err = reject_before(&[
        Raw {
            name: b"././@LongLink",
            kind: tar::EntryType::GNULongName,
            data: b"files/gnu.kdl\0",
        },
        Raw {
            name: b"PaxHeaders/x",
            kind: tar::EntryType::XHeader,
            data: &pax,
        },
    ]);
    assert!(
        matches!(
            err,
            VerifyError::EntryType {
                kind: "GNU long name",
                ..
            }
        ),
        "{err}"
    );
}

// --- the path rule -------------------------------------------------------------

#[test]
fn paths_outside_the_rule_are_refused() {
    let long = format!("files/{}", "x".repeat(94));
    assert_eq!(long.len(), 100);
    for name in [
        b"files/tab\there".as_slice(),
        b"files/nl\nhere",
        b"files/esc\x1b[31m",
        b"files/del\x7f",
        b"files/a b",
        b"files/back\\slash",
        b"files/caf\xc3\xa9",
        b"files/cafe\xcc\x81",
        b"files/\xff",
        b"evil.sh",
        b"Manifest.json",
        b"files",
        b"./files/x",
        long.as_bytes(),
    ] {
        let err = reject(&[Raw {
            name,
            kind: tar::EntryType::Regular,
            data: b"x",
        }]);
        assert_eq!(
            err,
            VerifyError::EntryPath {
                path: String::from_utf8_lossy(name).into_owned()
            },
            "{:?}",
            String::from_utf8_lossy(name)
        );
    }
}

#[test]
fn nfc_and_nfd_twins_cannot_both_exist() {
    // Both are refused on their own, so the twins never meet.
    assert!(!bundle_path_ok("files/caf\u{e9}"));
    assert!(!bundle_path_ok("files/cafe\u{301}"));
}

#[test]
fn paths_that_differ_only_in_case_are_refused() {
    let err = reject(&[Raw {
        name: b"files/Sentinel.kdl",
        kind: tar::EntryType::Regular,
        data: b"x",
    }]);
    assert_eq!(
        err,
        VerifyError::CaseClash {
            first: "files/Sentinel.kdl".into(),
            second: "files/sentinel.kdl".into()
        }
    );
}

#[test]
fn a_file_used_as_a_directory_is_refused() {
    let err = reject(&[Raw {
        name: b"files/sentinel.kdl/x",
        kind: tar::EntryType::Regular,
        data: b"x",
    }]);
    assert_eq!(
        err,
        VerifyError::FileAsDirectory {
            file: "files/sentinel.kdl".into(),
            inside: "files/sentinel.kdl/x".into()
        }
    );
}

/// A verified bundle holds exactly the files its manifest lists, with their
/// sizes and digests, at paths the rule allows.
fn consistent(b: &Bundle) -> bool {
    b.files.len() == b.manifest.files.len()
        && b.files.keys().all(|p| bundle_path_ok(p))
        && b.manifest.files.iter().all(|f| {
            b.files
                .get(&f.path)
                .is_some_and(|d| d.len() as u64 == f.size && sha256_hex(d) == f.sha256)
        })
}

fn good_tar() -> Vec<u8> {
    zstd::stream::decode_all(good_bundle().bytes.as_slice()).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Changing any single byte of a signed manifest makes it unacceptable.
    #[test]
    fn any_single_byte_change_to_a_signed_document_is_rejected(pos in any::<prop::sample::Index>(), delta in 1u8..=255) {
        let mut bytes = signed(&channel(42), &[&key(10)]);
        let i = pos.index(bytes.len());
        bytes[i] = bytes[i].wrapping_add(delta);
        prop_assert!(check_channel(&bytes, None).is_err(), "byte {i} changed and still verified");
    }

    /// Changing any single byte of a bundle makes it unacceptable.
    #[test]
    fn any_single_byte_change_to_a_bundle_is_rejected(pos in any::<prop::sample::Index>(), delta in 1u8..=255) {
        let good = good_bundle();
        let mut bytes = good.bytes.clone();
        let i = pos.index(bytes.len());
        bytes[i] = bytes[i].wrapping_add(delta);
        prop_assert!(verify_bundle(&good.reference, &bytes, Limits::default()).is_err());
    }

    /// Fuzz the parser: change bytes of the compressed bundle and give it a
    /// matching reference, so only the structure checks stand in the way.
    /// It never panics, and what it accepts is consistent.
    #[test]
    fn a_mutated_bundle_with_a_matching_reference_is_refused_or_consistent(
        changes in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let mut bytes = good_bundle().bytes;
        for (pos, value) in &changes {
            let i = pos.index(bytes.len());
            bytes[i] = *value;
        }
        if let Ok(b) = verify_bundle(&reference_of(&bytes), &bytes, Limits::default()) {
            prop_assert!(consistent(&b), "{b:?}");
        }
    }

    /// The same one layer down: change bytes of the tar stream, then
    /// compress it and reference it properly.
    #[test]
    fn a_mutated_tar_stream_is_refused_or_consistent(
        changes in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in proptest::option::of(any::<prop::sample::Index>()),
    ) {
        let mut tar = good_tar();
        for (pos, value) in &changes {
            let i = pos.index(tar.len());
            tar[i] = *value;
        }
        if let Some(cut) = cut {
            let at = cut.index(tar.len());
            tar.truncate(at);
        }
        let (r, bytes) = compressed(&tar);
        if let Ok(b) = verify_bundle(&r, &bytes, Limits::default()) {
            prop_assert!(consistent(&b), "{b:?}");
        }
    }
}

// --- status reports ----------------------------------------------------------

fn report(node: &str) -> gitfleet_schemas::status::StatusReport {
    gitfleet_schemas::status::StatusReport {
        fleet: "acme".into(),
        node: node.into(),
        environment: "prod".into(),
        at: now(),
        channel_serial: Some(42),
        channel_expires: None,
        rollouts: BTreeMap::new(),
        healthy: true,
        metrics: Default::default(),
        http_checks: vec![],
        routes: vec![],
        wireguard: None,
        monitored: Vec::new(),
        drift: vec![],
        last_error: None,
        proxy: None,
    }
}

fn check_status(bytes: &[u8]) -> Result<(), VerifyError> {
    gitfleet_schemas::verify::verify_status(bytes, "acme", "edge-1", &public(&key(20))).map(|_| ())
}

#[test]
fn a_status_report_signed_by_its_node_is_accepted() {
    assert_eq!(
        check_status(&signed(&report("edge-1"), &[&key(20)])),
        Ok(())
    );
}

#[test]
fn an_unsigned_status_report_is_ignored() {
    let err = check_status(&signed(&report("edge-1"), &[])).unwrap_err();
    assert!(
        matches!(
            err,
            VerifyError::Threshold {
                role: "node",
                valid: 0,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn a_status_report_signed_by_another_key_is_ignored() {
    let err = check_status(&signed(&report("edge-1"), &[&key(21)])).unwrap_err();
    assert_eq!(
        err,
        VerifyError::UnknownKey {
            what: "status report",
            key: public(&key(21))
        }
    );
}

#[test]
fn a_status_report_about_another_node_is_ignored() {
    let err = check_status(&signed(&report("edge-2"), &[&key(20)])).unwrap_err();
    assert_eq!(
        err,
        VerifyError::WrongNode {
            expected: "edge-1".into(),
            found: "edge-2".into()
        }
    );
}

#[test]
fn a_status_report_of_another_fleet_is_ignored() {
    let mut r = report("edge-1");
    r.fleet = "other".into();
    let err = check_status(&signed(&r, &[&key(20)])).unwrap_err();
    assert!(matches!(err, VerifyError::WrongFleet { .. }), "{err}");
}
