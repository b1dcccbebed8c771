//! Every gitfleet file and wire format, and nothing that does IO.
//!
//! Fleet repo documents are KDL v2, read by [`decode`]rs that keep spans and
//! collect every problem. Each document starts with `version 1`; unknown nodes
//! and properties are errors. JSON Schemas for the formats are generated from
//! these types by [`json_schemas`] and committed under `schemas/json/`.

pub mod agent;
pub mod approval;
pub mod bundle;
mod common;
mod decode;
pub mod diagnostic;
mod digest;
pub mod environments;
pub mod events;
pub mod fleet;
pub mod fleets;
pub mod keyfile;
pub mod keys;
pub mod mesh;
pub mod net;
pub mod node;
pub mod notify;
pub mod owners;
pub mod promotion;
pub mod proxy;
pub mod rollout;
pub mod sbom;
mod span;
pub mod state;
pub mod status;
pub mod trust;
pub mod verify;
pub mod view;

pub use common::{labels_match, Operator, Requirement, Selector, Window, WindowKind};
pub use decode::{DecodeError, Decoded, FORMAT_VERSION};
pub use diagnostic::{CheckReport, Diagnostic, Severity};
pub use environments::{Approvals, Environment, EnvironmentsFile};
pub use fleet::{Approver, Defaults, DriftPolicy, FleetFile, LintRule, Revocation, Trust};
pub use mesh::MeshFile;
pub use node::{NodeFile, NodeWireguard};
pub use proxy::{Proxy, ProxyKind, ProxyRule};
pub use rollout::{Gates, HttpCheck, RolloutFile, RolloutTarget, Step, StepSize, Template};
pub use span::{Span, Spanned};

/// `(file name, schema text)` for every format, as committed under
/// `schemas/json/`.
pub fn json_schemas() -> Vec<(&'static str, String)> {
    fn one<T: schemars::JsonSchema>(name: &'static str) -> (&'static str, String) {
        let schema = schemars::schema_for!(T);
        let mut text = serde_json::to_string_pretty(&schema).unwrap_or_default();
        text.push('\n');
        (name, text)
    }
    vec![
        one::<FleetFile>("fleet.schema.json"),
        one::<EnvironmentsFile>("environments.schema.json"),
        one::<NodeFile>("node.schema.json"),
        one::<MeshFile>("mesh.schema.json"),
        one::<RolloutFile>("rollout.schema.json"),
        one::<CheckReport>("check-report.schema.json"),
        one::<bundle::BundleManifest>("bundle-manifest.schema.json"),
        one::<bundle::MeshBundle>("mesh-bundle.schema.json"),
        one::<sbom::Sbom>("sbom.schema.json"),
        one::<trust::Envelope>("envelope.schema.json"),
        one::<trust::Root>("root.schema.json"),
        one::<trust::ChannelManifest>("channel-manifest.schema.json"),
        one::<state::RolloutState>("rollout-state.schema.json"),
        one::<state::MeshAllocation>("mesh-allocation.schema.json"),
        one::<state::RulesState>("rules-state.schema.json"),
        one::<state::Departed>("departed.schema.json"),
        one::<notify::Notification>("notification.schema.json"),
        one::<notify::NotifyLedger>("notify-ledger.schema.json"),
        one::<status::StatusReport>("status-report.schema.json"),
        one::<status::Liveness>("liveness.schema.json"),
        one::<events::NodeEvents>("node-events.schema.json"),
        one::<keyfile::KeyFile>("key-file.schema.json"),
        one::<approval::Approval>("approval.schema.json"),
        one::<promotion::Promotions>("promotions.schema.json"),
        one::<agent::AgentConfig>("agent-config.schema.json"),
        one::<agent::LocalState>("agent-state.schema.json"),
        one::<agent::Journal>("agent-journal.schema.json"),
        one::<agent::EnrollRequest>("enroll-request.schema.json"),
        one::<view::FleetStatus>("fleet-status.schema.json"),
    ]
}
