//! The fleet at a glance, as `gitfleet status --format json` prints it and
//! `gitfleet serve` renders it: built from the fleet repo, the state branch
//! and the verified status reports, never from a database.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::mesh::Topology;
use crate::state::{EnvRulesState, Phase};
use crate::status::{Drift, HttpCheckResult, Metrics, WireguardStatus};

/// The format version of [`FleetStatus`].
pub const FLEET_STATUS_FORMAT: u32 = 1;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FleetStatus {
    /// Format version of this document: [`FLEET_STATUS_FORMAT`].
    pub format: u32,
    pub fleet: String,
    /// When the view was taken; report ages count from here.
    pub at: DateTime<Utc>,
    /// The fleet repo commit read.
    pub commit: String,
    /// The tip of the state branch read; none before the first state.
    pub state_commit: Option<String>,
    /// A node whose last report is older than this is stale.
    pub stale_after_seconds: u64,
    pub totals: Counts,
    /// In rollout order (each environment after the ones it follows).
    pub environments: Vec<EnvironmentView>,
    /// By node id.
    pub nodes: Vec<NodeView>,
    /// Status reports that failed verification, by reason.
    pub reports_ignored: BTreeMap<String, u64>,
    /// The fleet repo's WireGuard meshes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub meshes: Vec<MeshView>,
}

/// A WireGuard mesh of the fleet repo (`meshes/<name>.kdl`): who is in it;
/// each member's [`NodeView::wireguard`] says how its links are.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MeshView {
    pub name: String,
    pub cidr: String,
    pub topology: Topology,
    /// Member node ids (those with a WireGuard key), sorted; within the
    /// view's environment when it has one.
    pub members: Vec<String>,
    /// The members that are hubs (hub-and-spoke).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hubs: Vec<String>,
    /// Peers outside the fleet.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub external: Vec<ExternalPeerView>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExternalPeerView {
    pub name: String,
    pub public_key: String,
    pub address: String,
}

/// Nodes by health.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Counts {
    pub nodes: u64,
    pub healthy: u64,
    pub unhealthy: u64,
    pub stale: u64,
    /// Declared in the repo, never reported (or never verifiably).
    pub unreported: u64,
    /// Nodes reporting files that differ from their bundle.
    pub drifted: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EnvironmentView {
    pub name: String,
    pub counts: Counts,
    /// Where the rules that judge changes entering this environment are
    /// read from (the state branch's `rules.json`); none before the
    /// reconciler's first pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<EnvRulesState>,
    /// Commits that wait for approvals here, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waiting: Vec<WaitingCommit>,
    /// Rollouts with state here, by name.
    pub rollouts: Vec<RolloutView>,
}

/// A commit that waits for approvals in an environment, and what it holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WaitingCommit {
    pub commit: String,
    /// Rollouts whose change it brought, waiting at the approval gate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rollouts: Vec<String>,
    /// Whether it changes the environment's rules.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rules: bool,
}

/// One rollout in one environment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RolloutView {
    pub name: String,
    pub phase: Phase,
    /// 1-based current step; 0 before the first.
    pub step: u32,
    pub steps: u32,
    /// The bundle being rolled out.
    pub target: String,
    pub previous: Option<String>,
    /// The fleet repo commit the target was built from.
    pub source_commit: String,
    /// Nodes this rollout selects here.
    pub nodes: u64,
    /// Of those, nodes admitted to the target so far.
    pub admitted: u64,
    /// Of those, nodes reporting the target active.
    pub on_target: u64,
    pub since: DateTime<Utc>,
    pub reason: String,
    pub failed_nodes: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Health {
    Healthy,
    Unhealthy,
    /// Its last report is older than the stale limit.
    Stale,
    /// No verified report.
    Unreported,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
            Health::Stale => "stale",
            Health::Unreported => "unreported",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeView {
    pub id: String,
    pub environment: String,
    pub labels: BTreeMap<String, String>,
    pub health: Health,
    pub last_report: Option<DateTime<Utc>>,
    /// Seconds between the last report and the view.
    pub report_age_seconds: Option<i64>,
    pub channel_serial: Option<u64>,
    /// Active bundle digest by rollout.
    pub active: BTreeMap<String, String>,
    /// The bundle each rollout ran before the active one (what a rollback
    /// on this node returns to).
    #[serde(default)]
    pub previous: BTreeMap<String, String>,
    /// Why the last activation of a rollout failed, by rollout.
    pub errors: BTreeMap<String, String>,
    pub last_error: Option<String>,
    /// The health-check URLs of the last report and their results.
    #[serde(default)]
    pub http_checks: Vec<HttpCheckResult>,
    pub drift: Vec<Drift>,
    pub metrics: Option<Metrics>,
    pub wireguard: Option<WireguardStatus>,
    /// The interfaces its agent.kdl monitors.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub monitored: Vec<WireguardStatus>,
    /// The fleet's nodes among the peers shown, by WireGuard public key.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub peer_names: BTreeMap<String, String>,
    /// The proxy the fleet repo says the node runs.
    #[serde(default = "crate::proxy::Proxy::legacy")]
    pub proxy: crate::proxy::Proxy,
    /// The agent reports driving another proxy than the fleet repo says:
    /// it refuses the bundles built for the repo's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_mismatch: Option<String>,
    /// Why the node is on hold (its node file's `hold`): rollouts skip it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold: Option<String>,
    /// The bundle a hold pins the node to, if it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pinned: Option<String>,
}
