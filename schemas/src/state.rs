//! Rollout state, as the reconciler commits it to the state branch
//! (`rollouts/<name>.json`): small, readable, one file per rollout. Next to
//! it, one file per WireGuard mesh (`meshes/<name>.json`) records the
//! tunnel addresses handed out, so they stay put across membership changes.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::trust::BundleRef;

pub const STATE_FORMAT: u32 = 1;

/// `rollouts/<name>.json`: where a rollout's state lives on the state
/// branch.
pub fn rollout_path(rollout: &str) -> String {
    format!("rollouts/{rollout}.json")
}

/// The rollout a state branch path is the state of, if it is one.
pub fn rollout_of(path: &str) -> Option<&str> {
    path.strip_prefix("rollouts/")?.strip_suffix(".json")
}

/// `meshes/<name>.json`: a mesh's tunnel addresses, next to the rollout
/// state.
pub fn allocation_path(mesh: &str) -> String {
    format!("meshes/{mesh}.json")
}

/// Where one rollout stands in every environment it reaches.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RolloutState {
    pub format: u32,
    pub environments: BTreeMap<String, EnvState>,
}

/// One rollout in one environment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EnvState {
    /// The bundle being rolled out.
    pub target: BundleRef,
    /// The fleet repo commit the target was built from.
    pub source_commit: String,
    /// The source commit of the last target that completed here, which
    /// this one replaces: the change owners are asked about runs from it
    /// to `source_commit`. Absent for a first target (every file is new),
    /// and in states written before owners were kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed_from: Option<String>,
    /// The last bundle that completed here: what nodes outside the current
    /// step run, and what a rollback returns to.
    pub previous: Option<BundleRef>,
    pub phase: Phase,
    /// 1-based current step; 0 before the first.
    pub step: u32,
    /// Nodes admitted to the new bundle so far (grows within a step as
    /// `max-unavailable` allows).
    pub admitted: u64,
    /// Of the rollout's nodes here, those reporting the target active, as
    /// the pass that wrote this state counted them (absent before a first
    /// admission, and in states written before it was recorded): with
    /// `admitted`, what the rollout page charts over the branch's history.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_target: Option<u64>,
    /// When the current phase (or step) began.
    pub since: DateTime<Utc>,
    /// Why the rollout is where it is, in words.
    pub reason: String,
    /// Nodes whose reports failed a gate, for the operator.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed_nodes: Vec<String>,
    /// The proxy `target` and `previous` are for; absent for a mesh, and
    /// in states written before proxies were recorded (Sentinel 0.4.14).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<crate::proxy::Proxy>,
    /// A config whose nodes run more than one proxy: the bundles of each
    /// proxy but `proxy`, which its nodes take instead.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub variants: BTreeMap<crate::proxy::Proxy, Variant>,
}

/// One proxy's own bundles in a rollout of a config to a mixed fleet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Variant {
    pub target: BundleRef,
    pub previous: Option<BundleRef>,
}

impl EnvState {
    /// The bundle nodes running `proxy` take (`None`: a mesh, or a node
    /// outside any variant).
    pub fn target_for(&self, proxy: Option<&crate::proxy::Proxy>) -> &BundleRef {
        proxy
            .and_then(|p| self.variants.get(p))
            .map_or(&self.target, |v| &v.target)
    }
}

/// The format version of [`MeshAllocation`].
pub const MESH_ALLOCATION_FORMAT: u32 = 1;

/// `meshes/<name>.json` on the state branch: the tunnel address of every
/// member of one mesh. A member keeps its address while it stays a member;
/// the reconciler is its only writer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MeshAllocation {
    /// Format version of this file: [`MESH_ALLOCATION_FORMAT`].
    pub format: u32,
    /// The mesh's name in the fleet repo (`meshes/<name>.kdl`).
    pub mesh: String,
    /// The range the addresses were allocated from, e.g. `10.40.0.0/24`.
    pub cidr: String,
    /// Tunnel address (without prefix length) by node id.
    pub addresses: BTreeMap<String, IpAddr>,
    /// Addresses of members that left, by node id: given to nobody else
    /// while a member may still run a bundle that names them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub held: BTreeMap<String, HeldAddress>,
}

/// A departed member's address, held (see [`MeshAllocation::held`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HeldAddress {
    pub address: IpAddr,
    /// When the pass that saw it leave ran.
    pub since: DateTime<Utc>,
    /// The mesh's bundles built since it left (digests): a member running
    /// one of them no longer names it.
    pub clean: BTreeSet<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Waiting for the previous environment to complete.
    Pending,
    /// Waiting for approving reviews.
    AwaitingApproval,
    /// Waiting for a change window to open.
    WaitingWindow,
    /// Nodes of the current step are taking the new bundle.
    Progressing,
    /// The step's nodes run the new bundle; baking, then gates.
    Verifying,
    Paused,
    Complete,
    /// A gate or deadline failed and there was nothing to roll back to.
    Failed,
    /// A gate or deadline failed; every node runs the previous bundle again.
    RolledBack,
}

impl Phase {
    /// Phases that end a rollout of a target; only a new target moves on.
    pub fn is_terminal(self) -> bool {
        matches!(self, Phase::Complete | Phase::Failed | Phase::RolledBack)
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Pending => "pending",
            Phase::AwaitingApproval => "awaiting-approval",
            Phase::WaitingWindow => "waiting-window",
            Phase::Progressing => "progressing",
            Phase::Verifying => "verifying",
            Phase::Paused => "paused",
            Phase::Complete => "complete",
            Phase::Failed => "failed",
            Phase::RolledBack => "rolled-back",
        })
    }
}

/// The format version of [`RulesState`].
pub const RULES_FORMAT: u32 = 1;

/// Where [`RulesState`] lives on the state branch.
pub const RULES_PATH: &str = "rules.json";

/// `rules.json` on the state branch: for every environment, the spec
/// commit whose rules (environment order, approvals, change windows, lint
/// severities, approver keys, trust roots) judge the changes entering it.
/// A change to the rules is itself judged by the rules in force, and
/// recorded here once it is adopted. The reconciler is its only writer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RulesState {
    /// Format version of this file: [`RULES_FORMAT`].
    pub format: u32,
    /// The first spec commit the reconciler saw: a new fleet's rules come
    /// from it.
    pub first_seen: String,
    pub environments: BTreeMap<String, EnvRulesState>,
}

/// The rules in force in one environment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EnvRulesState {
    /// The spec commit the environment's rules are read from.
    pub commit: String,
    /// When they took effect.
    pub since: DateTime<Utc>,
    /// A change to them that waits for what the rules in force ask.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<PendingRules>,
}

/// A change to an environment's rules, not in force yet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PendingRules {
    /// The commit that brought the change: the one to approve.
    pub commit: String,
    /// What changes and what it waits for, in words.
    pub reason: String,
}

/// The format version of [`Departed`].
pub const DEPARTED_FORMAT: u32 = 1;

/// Where [`Departed`] lives on the state branch.
pub const DEPARTED_PATH: &str = "departed.json";

/// `departed.json` on the state branch: nodes whose node file left the
/// fleet repo, from the pass that saw it go until their status and
/// enrollment objects are removed from the store. Channel manifests name
/// them, and their agents stop after a final report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Departed {
    /// Format version of this file: [`DEPARTED_FORMAT`].
    pub format: u32,
    /// The spec commit up to which removed node files are recorded: the
    /// next pass looks for removals between it and the tip.
    pub checked: String,
    #[serde(default)]
    pub nodes: BTreeMap<String, DepartedNode>,
}

/// One node that left the fleet repo.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DepartedNode {
    pub environment: String,
    /// The spec commit the pass that saw it go planned from.
    pub commit: String,
    /// When that pass ran: the grace period counts from here.
    pub since: DateTime<Utc>,
}
