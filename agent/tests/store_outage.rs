#![allow(clippy::unwrap_used)]
//! The agent's decision loop against a real S3 API (moto_server) that goes
//! away: the running config stays, the manifest's staleness is reported
//! once the store is back, and a fresh manifest brings the node back.

use std::collections::BTreeMap;

use bytes::Bytes;
use chrono::{DateTime, Duration, Utc};
use ed25519_dalek::SigningKey;
use gitfleet_agent::core::{Agent, Identity, Polled};
use gitfleet_agent::local::StateDir;
use gitfleet_agent::node::DiskNode;
use gitfleet_io::moto::Moto;
use gitfleet_io::store::Store;
use gitfleet_policy::bundle::{build, Built, Input};
use gitfleet_schemas::agent::{ReloadBy, SentinelSettings};
use gitfleet_schemas::bundle::BundleKind;
use gitfleet_schemas::fleet::DriftPolicy;
use gitfleet_schemas::trust::{ChannelManifest, ChannelRollout, Document, PublicKey, Root};
use gitfleet_schemas::verify::Limits;

const URL: &str = "s3://fleet/prod";

fn key(n: u8) -> SigningKey {
    SigningKey::from_bytes(&[n; 32])
}

fn public(k: &SigningKey) -> PublicKey {
    PublicKey(k.verifying_key().to_bytes())
}

fn signed<T: Document>(doc: &T, k: &[&SigningKey]) -> Vec<u8> {
    let mut env = doc.envelope();
    for k in k {
        env.sign(k).unwrap();
    }
    env.to_json()
}

const CONFIG: &str = r#"schema-version "1.0"
system {
    worker-threads 1
}
listeners {
    listener "http" {
        address "127.0.0.1:9"
        protocol "http"
    }
}
routes {
    route "health" {
        matches {
            path "/-/health"
        }
        builtin-handler "health"
    }
}
"#;

fn bundle() -> Built {
    let files = BTreeMap::from([("sentinel.kdl".to_owned(), CONFIG.as_bytes().to_vec())]);
    build(Input {
        kind: BundleKind::Sentinel,
        name: "edge",
        source_commit: "c0ffee",
        validator: "sentinel-config 0.4.14",
        files: &files,
        sbom: b"{}".to_vec(),
    })
    .unwrap()
}

/// Upload the bundle and a manifest of `serial` expiring an hour after `at`.
async fn publish(store: &Store, built: &Built, serial: u64, at: DateTime<Utc>) {
    let object = built.reference.object_key().unwrap();
    store
        .put(&object, Bytes::from(built.bytes.clone()))
        .await
        .unwrap();
    let manifest = ChannelManifest {
        settings: None,
        revoked: Vec::new(),
        held: Vec::new(),
        pinned: Vec::new(),
        decommissioned: Vec::new(),
        fleet: "acme".into(),
        environment: "prod".into(),
        serial,
        expires: at + Duration::hours(1),
        rollouts: vec![ChannelRollout {
            name: "edge".into(),
            selector: BTreeMap::new(),
            requirements: Vec::new(),
            nodes: None,
            bundle: built.reference.clone(),
            previous: None,
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
    store
        .put(
            "channels/prod.json",
            Bytes::from(signed(&manifest, &[&key(10)])),
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn a_store_outage_keeps_the_config_and_staleness_is_reported_when_it_returns() {
    let t0 = Utc::now();
    let tmp = tempfile::tempdir().unwrap();
    let dir = StateDir::open(tmp.path()).unwrap();
    let root = Root {
        fleet: "acme".into(),
        version: 1,
        expires: t0 + Duration::days(30),
        root_keys: vec![public(&key(1))],
        root_threshold: 1,
        online_keys: vec![public(&key(10))],
        online_threshold: 1,
    };
    let root = dir.pin_root(&signed(&root, &[&key(1)])).unwrap();
    let node_key = dir.create_node_key(&[7; 32]).unwrap();
    let settings = SentinelSettings {
        reload: ReloadBy::Command(vec!["true".into()]),
        config_url: None,
        health_url: None,
        metrics_url: None,
        test_binary: None,
        confirm_timeout_ms: 1000,
    };
    let node = DiskNode::new(dir, "edge-1", Some(settings), None, Limits::default());
    let identity = Identity {
        node: "edge-1".into(),
        environment: "prod".into(),
        labels: BTreeMap::new(),
        drift: DriftPolicy::Report,
        max_bundle_bytes: 1 << 20,
        proxy: gitfleet_schemas::Proxy::legacy(),
    };

    let moto = Moto::start();
    let port = moto.port();
    let built = bundle();
    publish(&moto.store(URL), &built, 1, t0).await;
    let mut agent = Agent::new(
        identity,
        moto.store(URL),
        root,
        node_key,
        node,
        Default::default(),
    );
    assert_eq!(
        agent.poll(t0).await,
        Polled::Applied {
            serial: 1,
            activated: 1
        },
        "{:?}",
        agent.state().failed
    );
    let active = agent.state().sentinel.clone().unwrap().active;
    assert_eq!(active, built.reference);

    // The store goes away: the config stays, the reason is kept.
    drop(moto);
    let Polled::Refused(reason) = agent.poll(t0 + Duration::minutes(5)).await else {
        panic!("a poll with the store down was not refused");
    };
    assert!(
        reason.starts_with("reading channels/prod.json: "),
        "{reason}"
    );
    assert!(agent.report(t0 + Duration::minutes(5)).await.is_err());
    assert_eq!(agent.state().sentinel.as_ref().unwrap().active, active);

    // It comes back (empty) two hours later with the last manifest the
    // reconciler wrote, now expired: refused, and the report says so.
    let moto = Moto::start_on(port);
    let later = t0 + Duration::hours(2);
    publish(&moto.store(URL), &built, 1, t0).await;
    let Polled::Refused(reason) = agent.poll(later).await else {
        panic!("an expired manifest was not refused");
    };
    assert!(reason.contains("expired at"), "{reason}");
    let (report, _) = agent.report(later).await.unwrap();
    assert_eq!(report.channel_expires, Some(t0 + Duration::hours(1)));
    assert!(report.channel_expires.unwrap() < report.at);
    assert!(report.last_error.unwrap().contains("expired"));
    assert_eq!(report.rollouts["edge"].active, Some(active.clone()));

    // The reconciler re-signs: the node is current again, nothing re-activated.
    publish(&moto.store(URL), &built, 2, later).await;
    assert_eq!(
        agent.poll(later).await,
        Polled::Applied {
            serial: 2,
            activated: 0
        }
    );
    let (report, _) = agent.report(later).await.unwrap();
    assert_eq!(report.last_error, None);
    assert_eq!(report.channel_serial, Some(2));
    assert!(report.channel_expires.unwrap() > later);
    assert!(report.healthy);
}
