//! `events/<day>/<node>.json`: what happened on one node during one UTC
//! day, signed by the node's key.
//!
//! Events are rare (an activation, a rollback, a refused config, drift, the
//! store going away and coming back, a root rotation), so an agent rewrites
//! the day's object when it has something new to add, together with its
//! next status report: an idle node writes no event object at all, and a
//! busy one at most one a report. Old days are removed by a lifecycle rule
//! on the `events/` prefix (no reader needs them; see the README).

use chrono::{DateTime, NaiveDate, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::trust::Document;

/// At most this many events are kept for one node and day; the oldest go
/// first (and are counted in [`NodeEvents::dropped`]).
pub const MAX_EVENTS_PER_DAY: usize = 500;

/// One node's events of one UTC day, oldest first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeEvents {
    pub format: u32,
    pub fleet: String,
    pub node: String,
    /// The UTC day every event's `at` falls on.
    pub day: NaiveDate,
    pub events: Vec<NodeEvent>,
    /// Events of this day no longer kept (over [`MAX_EVENTS_PER_DAY`]).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub dropped: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl NodeEvents {
    pub const FORMAT: u32 = 1;

    /// An empty day.
    pub fn new(fleet: &str, node: &str, day: NaiveDate) -> NodeEvents {
        NodeEvents {
            format: Self::FORMAT,
            fleet: fleet.to_owned(),
            node: node.to_owned(),
            day,
            events: Vec::new(),
            dropped: 0,
        }
    }

    /// Add `event`, dropping the oldest beyond [`MAX_EVENTS_PER_DAY`].
    pub fn push(&mut self, event: NodeEvent) {
        self.events.push(event);
        let over = self.events.len().saturating_sub(MAX_EVENTS_PER_DAY);
        if over > 0 {
            self.events.drain(..over);
            self.dropped = self.dropped.saturating_add(over as u64);
        }
    }
}

impl Document for NodeEvents {
    const PAYLOAD_TYPE: &'static str = "application/vnd.gitfleet.node-events.v1+json";
    const NAME: &'static str = "node events";
}

/// Something that happened on a node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeEvent {
    /// On the node's clock.
    pub at: DateTime<Utc>,
    pub kind: EventKind,
    /// The rollout it concerns, if one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<String>,
    /// The bundle digest it concerns, if one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle: Option<String>,
    /// What a person needs to know: the reason, the files, the store's error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    /// A bundle became the running config (or mesh).
    Activated,
    /// The node went back to the previous bundle (revoked, or its rollout
    /// rolled back).
    RolledBack,
    /// A bundle's config was refused before it went live (validation, the
    /// proxy's own test).
    ValidationRefused,
    /// The proxy refused the config on reload (or never confirmed it); the
    /// previous one runs again.
    ReloadRefused,
    /// An activation failed for another reason (the previous one runs).
    ActivationFailed,
    /// A bundle could not be verified or taken (wrong bytes, wrong proxy).
    BundleRefused,
    /// Files or the live interface differ from the active bundle.
    DriftFound,
    /// Drift was found and put back as the bundle says.
    DriftRepaired,
    /// The store (and every mirror) could not be read.
    StoreUnreachable,
    /// The store answered again.
    StoreRecovered,
    /// The agent now trusts the next root of trust.
    RootRotated,
}

impl EventKind {
    pub const ALL: [EventKind; 11] = [
        EventKind::Activated,
        EventKind::RolledBack,
        EventKind::ValidationRefused,
        EventKind::ReloadRefused,
        EventKind::ActivationFailed,
        EventKind::BundleRefused,
        EventKind::DriftFound,
        EventKind::DriftRepaired,
        EventKind::StoreUnreachable,
        EventKind::StoreRecovered,
        EventKind::RootRotated,
    ];

    /// The kebab-case name, as in JSON.
    pub fn name(self) -> &'static str {
        match self {
            EventKind::Activated => "activated",
            EventKind::RolledBack => "rolled-back",
            EventKind::ValidationRefused => "validation-refused",
            EventKind::ReloadRefused => "reload-refused",
            EventKind::ActivationFailed => "activation-failed",
            EventKind::BundleRefused => "bundle-refused",
            EventKind::DriftFound => "drift-found",
            EventKind::DriftRepaired => "drift-repaired",
            EventKind::StoreUnreachable => "store-unreachable",
            EventKind::StoreRecovered => "store-recovered",
            EventKind::RootRotated => "root-rotated",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_names_are_their_json_names() {
        for kind in EventKind::ALL {
            assert_eq!(
                serde_json::to_string(&kind).unwrap(),
                format!("\"{}\"", kind.name())
            );
        }
    }

    #[test]
    fn a_full_day_drops_its_oldest_events_and_counts_them() {
        let day = NaiveDate::from_ymd_opt(2026, 12, 4).unwrap();
        let mut events = NodeEvents::new("acme", "edge-1", day);
        let at = day.and_hms_opt(0, 0, 0).unwrap().and_utc();
        for i in 0..MAX_EVENTS_PER_DAY + 3 {
            events.push(NodeEvent {
                at: at + chrono::Duration::seconds(i as i64),
                kind: EventKind::DriftFound,
                rollout: None,
                bundle: None,
                detail: Some(i.to_string()),
            });
        }
        assert_eq!(events.events.len(), MAX_EVENTS_PER_DAY);
        assert_eq!(events.dropped, 3);
        assert_eq!(events.events[0].detail.as_deref(), Some("3"));
    }

    #[test]
    fn unknown_fields_and_kinds_are_refused() {
        let good = r#"{"format":1,"fleet":"acme","node":"edge-1","day":"2026-12-04","events":[{"at":"2026-12-04T10:00:00Z","kind":"drift-repaired","detail":"files/sentinel.kdl"}]}"#;
        let parsed: NodeEvents = serde_json::from_str(good).unwrap();
        assert_eq!(parsed.events[0].kind, EventKind::DriftRepaired);
        for bad in [
            good.replace("drift-repaired", "drift-ignored"),
            good.replace("\"format\":1", "\"format\":1,\"extra\":true"),
        ] {
            assert!(serde_json::from_str::<NodeEvents>(&bad).is_err(), "{bad}");
        }
    }
}
