//! A test fleet's trust and publishing, shared by the agent's end-to-end
//! tests and benchmarks: fixed keys (root keys 1 and 2, online key 10), a
//! first root, and bundles published with a signed `channels/prod.json`
//! into a `file://` store directory.

use std::collections::BTreeMap;
use std::path::Path;

use chrono::Utc;
use ed25519_dalek::SigningKey;
use gitfleet_policy::bundle::Built;
use gitfleet_schemas::trust::{
    BundleRef, ChannelManifest, ChannelRollout, Document, PublicKey, Root,
};

/// The test fleet's name.
pub const FLEET: &str = "acme";

/// A fixed key: seed `[n; 32]`.
pub fn key(n: u8) -> SigningKey {
    SigningKey::from_bytes(&[n; 32])
}

pub fn public(k: &SigningKey) -> PublicKey {
    PublicKey(k.verifying_key().to_bytes())
}

/// `doc` in an envelope signed by `keys`.
pub fn signed<T: Document>(doc: &T, keys: &[&SigningKey]) -> Vec<u8> {
    let mut env = doc.envelope();
    for k in keys {
        env.sign(k).expect("an envelope made from a document signs");
    }
    env.to_json()
}

/// `root/1.json`: root keys 1 and 2 (both sign), online key 10.
pub fn root_bytes() -> Vec<u8> {
    let root = Root {
        fleet: FLEET.into(),
        version: 1,
        expires: Utc::now() + chrono::Duration::days(30),
        root_keys: vec![public(&key(1)), public(&key(2))],
        root_threshold: 2,
        online_keys: vec![public(&key(10))],
        online_threshold: 1,
    };
    signed(&root, &[&key(1), &key(2)])
}

/// A prod manifest at `serial` whose one rollout puts every node matching
/// `selector` on `bundle`, signed by the online key.
pub fn manifest_bytes(
    serial: u64,
    rollout: &str,
    selector: &[(&str, &str)],
    bundle: &BundleRef,
    previous: Option<&BundleRef>,
) -> Vec<u8> {
    manifest_revoking(serial, rollout, selector, bundle, previous, &[])
}

/// [`manifest_bytes`] that also revokes the bundles `revoked`.
pub fn manifest_revoking(
    serial: u64,
    rollout: &str,
    selector: &[(&str, &str)],
    bundle: &BundleRef,
    previous: Option<&BundleRef>,
    revoked: &[&BundleRef],
) -> Vec<u8> {
    manifest_with(serial, rollout, selector, bundle, previous, |m| {
        m.revoked = revoked.iter().map(|b| b.digest.clone()).collect();
    })
}

/// A signed manifest for `prod` with one rollout, changed by `edit`
/// before it is signed.
pub fn manifest_with(
    serial: u64,
    rollout: &str,
    selector: &[(&str, &str)],
    bundle: &BundleRef,
    previous: Option<&BundleRef>,
    edit: impl FnOnce(&mut ChannelManifest),
) -> Vec<u8> {
    let mut manifest = ChannelManifest {
        settings: None,
        revoked: Vec::new(),
        held: Vec::new(),
        pinned: Vec::new(),
        decommissioned: Vec::new(),
        fleet: FLEET.into(),
        environment: "prod".into(),
        serial,
        expires: Utc::now() + chrono::Duration::hours(6),
        rollouts: vec![ChannelRollout {
            name: rollout.into(),
            selector: selector
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<BTreeMap<_, _>>(),
            requirements: Vec::new(),
            nodes: None,
            bundle: bundle.clone(),
            previous: previous.cloned(),
            step: 1,
            steps: 1,
            membership_threshold: u64::MAX,
            http_checks: Vec::new(),
            traffic_route: None,
            min_requests: None,
            rolled_back: false,
            proxy: None,
        }],
    };
    edit(&mut manifest);
    signed(&manifest, &[&key(10)])
}

/// Upload `built` into the store directory `store` and publish `manifest`
/// as `channels/prod.json` (by rename, so a poll never reads half of it).
pub fn publish(store: &Path, built: &Built, manifest: &[u8]) -> std::io::Result<()> {
    let key = built
        .reference
        .object_key()
        .expect("a built bundle has a well-formed digest");
    let object = store.join(key);
    std::fs::create_dir_all(object.parent().unwrap_or(store))?;
    std::fs::write(&object, &built.bytes)?;
    std::fs::create_dir_all(store.join("channels"))?;
    let tmp = store.join("channels/.prod.json.tmp");
    std::fs::write(&tmp, manifest)?;
    std::fs::rename(&tmp, store.join("channels/prod.json"))
}
