//! A signed approval: `approvals/<environment>/<commit>/<approver>.json` on
//! the state branch, written by `gitfleet approve`. It says that one person
//! (an `approver` of fleet.kdl, signing with their key) lets the changes of
//! one fleet repo commit into one environment. The reconciler counts them
//! against the environment's `approvals`; it never writes them.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::trust::Document;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Approval {
    pub fleet: String,
    pub environment: String,
    /// The full id of the fleet repo commit approved: the source commit
    /// the rollout state names.
    pub commit: String,
    /// The approver's name in fleet.kdl.
    pub approver: String,
    pub at: DateTime<Utc>,
}

impl Document for Approval {
    const PAYLOAD_TYPE: &'static str = "application/vnd.gitfleet.approval.v1+json";
    const NAME: &'static str = "approval";
}

/// Where an approval lives on the state branch.
pub fn approval_path(environment: &str, commit: &str, approver: &str) -> String {
    format!("approvals/{environment}/{commit}/{approver}.json")
}
