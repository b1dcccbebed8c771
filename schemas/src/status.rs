//! `status/<node-id>.json`: what a node reports, signed with its node key.
//!
//! The same fields the earlier WireGuard manager's agent sent (interface,
//! peers, system metrics), plus what rollouts need (active bundles, health,
//! gate metrics) and drift.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::trust::{BundleRef, Document};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StatusReport {
    pub fleet: String,
    /// The reporting node; a report about another node is ignored.
    pub node: String,
    pub environment: String,
    pub at: DateTime<Utc>,
    /// The highest channel manifest serial this node has verified.
    pub channel_serial: Option<u64>,
    /// When that manifest expires: staleness is visible to operators.
    pub channel_expires: Option<DateTime<Utc>>,
    /// Per rollout name.
    pub rollouts: BTreeMap<String, RolloutStatus>,
    pub healthy: bool,
    pub metrics: Metrics,
    pub http_checks: Vec<HttpCheckResult>,
    /// The traffic of routes a rollout's gates are scoped to, in the same
    /// window as `metrics`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RouteTraffic>,
    pub wireguard: Option<WireguardStatus>,
    /// The interfaces agent.kdl's `monitor` names, managed or not.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub monitored: Vec<WireguardStatus>,
    pub drift: Vec<Drift>,
    pub last_error: Option<String>,
    /// The proxy the agent drives, when it is not Sentinel 0.4.14 (absent
    /// in reports of Sentinel nodes, which reconcilers from before proxies
    /// were named read too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<crate::proxy::Proxy>,
}

impl StatusReport {
    /// What the report says about the node's state, without the readings
    /// that move from one report to the next (its time, the manifest
    /// serial and expiry it last saw, the metrics and traffic of its
    /// window, interface counters and handshakes). Two
    /// reports with equal states differ only in readings: the later one
    /// says "still alive, nothing changed".
    pub fn state(&self) -> StatusReport {
        let interface = |w: &WireguardStatus| WireguardStatus {
            peers: w
                .peers
                .iter()
                .map(|p| PeerStatus {
                    latest_handshake: None,
                    rx_bytes: 0,
                    tx_bytes: 0,
                    rx_bytes_per_second: None,
                    tx_bytes_per_second: None,
                    ..p.clone()
                })
                .collect(),
            ..w.clone()
        };
        StatusReport {
            at: DateTime::<Utc>::MIN_UTC,
            // A manifest re-signed with nothing new for the node (every
            // half freshness) changes no state.
            channel_serial: None,
            channel_expires: None,
            metrics: Metrics::default(),
            routes: Vec::new(),
            wireguard: self.wireguard.as_ref().map(interface),
            monitored: self.monitored.iter().map(interface).collect(),
            ..self.clone()
        }
    }
}

/// `liveness/<replica>/<shard>.json`: when one reconciler replica last
/// heard, over HTTP, from each node of one shard. Written at most once a
/// minute by each replica that takes reports, read by the others, so a
/// node that reports to any replica is alive to all. Not signed: it says
/// only when, and the store's own write time anchors it (whoever can
/// write the store could already replay a report to look alive).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Liveness {
    pub version: u32,
    /// The replica's lease holder name.
    pub replica: String,
    /// By node id.
    pub nodes: BTreeMap<String, Heard>,
}

impl Liveness {
    pub const VERSION: u32 = 1;
}

/// One node in a [`Liveness`] shard.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Heard {
    /// The `at` of the node's last report the replica took (the node's
    /// clock: which report it was).
    pub at: DateTime<Utc>,
    /// How long before this object was written the replica took it: the
    /// store's write time minus this is when the node was last heard from,
    /// on no node's clock.
    pub age_ms: u64,
}

impl Document for StatusReport {
    const PAYLOAD_TYPE: &'static str = "application/vnd.gitfleet.status.v1+json";
    const NAME: &'static str = "status report";
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RolloutStatus {
    pub active: Option<BundleRef>,
    pub previous: Option<BundleRef>,
    /// Why the last activation of this rollout failed, if it did.
    pub error: Option<String>,
}

/// One proxy route's traffic in a report's window.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteTraffic {
    pub route: String,
    pub requests: u64,
    /// Answers with a 5xx status.
    pub errors: u64,
    pub error_rate: Option<f64>,
    pub p50_latency_ms: Option<u64>,
    pub p99_latency_ms: Option<u64>,
}

/// Proxy and system metrics; absent when the node cannot measure them (and
/// a gate that asks for an absent metric fails).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Metrics {
    /// 5xx answers over requests, in the window.
    pub error_rate: Option<f64>,
    pub p99_latency_ms: Option<u64>,
    /// The proxy's traffic since the node's previous report, from its own
    /// metrics: requests, 5xx answers, median latency and the window's
    /// length. Absent when the node does not read the proxy's metrics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errors: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p50_latency_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_seconds: Option<f64>,
    pub cpu_percent: Option<f64>,
    pub memory_percent: Option<f64>,
    pub disk_percent: Option<f64>,
    pub load1: Option<f64>,
    pub uptime_seconds: Option<u64>,
    pub network_rx_bytes: Option<u64>,
    pub network_tx_bytes: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpCheckResult {
    /// The URL requested (for an upstream check, one target's).
    pub url: String,
    pub status: Option<u16>,
    pub ok: bool,
    /// The check's [`crate::trust::ChannelCheck::key`], for any check but
    /// the plain kind, which its URL names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<String>,
    /// Why it failed, when it did for another reason than its status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl HttpCheckResult {
    /// The name of the check this is a result of.
    pub fn key(&self) -> &str {
        self.check.as_deref().unwrap_or(&self.url)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WireguardStatus {
    pub interface: String,
    pub public_key: String,
    pub listen_port: Option<u16>,
    pub peers: Vec<PeerStatus>,
    /// The public key this node asks to move to (`gitfleet-agent
    /// rotate-key`): the fleet repo's node file should list it. Signed
    /// with the report, so the request is the node's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_public_key: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PeerStatus {
    pub public_key: String,
    pub endpoint: Option<String>,
    pub allowed_ips: Vec<String>,
    pub latest_handshake: Option<DateTime<Utc>>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub persistent_keepalive_seconds: Option<u16>,
    /// Bytes per second since the agent's previous reading of this peer
    /// (monitored interfaces; absent on the first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_bytes_per_second: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_bytes_per_second: Option<u64>,
    /// No handshake, or the latest older than the monitor's `stale-after`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stale: bool,
}

/// A file under the active config that no longer matches the bundle.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Drift {
    pub path: String,
    /// None for a file the bundle does not have.
    pub expected_sha256: Option<String>,
    /// None when the file is missing.
    pub found_sha256: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> StatusReport {
        StatusReport {
            fleet: "f".into(),
            node: "n".into(),
            environment: "prod".into(),
            at: DateTime::from_timestamp(100, 0).unwrap(),
            channel_serial: Some(3),
            channel_expires: None,
            rollouts: BTreeMap::new(),
            healthy: true,
            metrics: Metrics {
                requests: Some(40),
                cpu_percent: Some(3.5),
                ..Metrics::default()
            },
            http_checks: Vec::new(),
            routes: Vec::new(),
            wireguard: Some(WireguardStatus {
                interface: "wg0".into(),
                public_key: "k".into(),
                listen_port: Some(51820),
                peers: vec![PeerStatus {
                    public_key: "p".into(),
                    endpoint: None,
                    allowed_ips: vec!["10.0.0.2/32".into()],
                    latest_handshake: DateTime::from_timestamp(90, 0),
                    rx_bytes: 10,
                    tx_bytes: 20,
                    persistent_keepalive_seconds: None,
                    rx_bytes_per_second: Some(1),
                    tx_bytes_per_second: Some(2),
                    stale: false,
                }],
                next_public_key: None,
            }),
            monitored: Vec::new(),
            drift: Vec::new(),
            last_error: None,
            proxy: None,
        }
    }

    #[test]
    fn readings_leave_the_state_alone_and_changes_do_not() {
        let a = report();
        let mut later = report();
        later.at = DateTime::from_timestamp(160, 0).unwrap();
        later.metrics.requests = Some(99);
        let peer = &mut later.wireguard.as_mut().unwrap().peers[0];
        peer.rx_bytes = 1000;
        peer.latest_handshake = DateTime::from_timestamp(150, 0);
        // A re-signed manifest: a new serial and expiry, nothing else.
        later.channel_serial = Some(4);
        later.channel_expires = DateTime::from_timestamp(7200, 0);
        assert_eq!(a.state(), later.state());
        for change in [
            |r: &mut StatusReport| r.healthy = false,
            |r: &mut StatusReport| r.last_error = Some("x".into()),
            |r: &mut StatusReport| r.wireguard.as_mut().unwrap().peers[0].stale = true,
        ] {
            let mut changed = report();
            change(&mut changed);
            assert_ne!(a.state(), changed.state());
        }
    }
}
