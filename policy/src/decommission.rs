//! Nodes that leave the fleet: a node file removed from the repo makes the
//! node departed (`departed.json` on the state branch). Channel manifests
//! name departed nodes, whose agents send a final report and stop; after
//! a grace period the node's status and enrollment objects are removed
//! from the store and the record is dropped. A node file added back ends
//! the departure.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use gitfleet_schemas::keys;
use gitfleet_schemas::state::{Departed, DepartedNode, DEPARTED_FORMAT};

use crate::model::FleetModel;

/// How long a departed node's objects stay when fleet.kdl does not say.
pub const DEFAULT_GRACE_SECONDS: u64 = 7 * 24 * 3600;

/// A node file removed between the recorded commit and the tip.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Removed {
    pub id: String,
    pub environment: String,
}

/// What a pass does about departed nodes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decommission {
    /// The record as it should be after this pass.
    pub record: Departed,
    /// Whether its nodes differ from what the state branch holds.
    pub changed: bool,
    /// Store objects to remove before the record drops their nodes.
    pub remove: Vec<String>,
    /// What changed, one line each, for the state commit's message.
    pub lines: Vec<String>,
}

impl Decommission {
    /// The departed nodes of `environment`, sorted, as manifests carry them.
    pub fn of_environment(&self, environment: &str) -> Vec<String> {
        self.record
            .nodes
            .iter()
            .filter(|(_, n)| n.environment == environment)
            .map(|(id, _)| id.clone())
            .collect()
    }
}

/// The grace period fleet.kdl sets, or the default.
pub fn grace(model: &FleetModel) -> Duration {
    let seconds = model
        .fleet
        .as_ref()
        .and_then(|f| f.doc.defaults.decommission_grace_seconds.as_ref())
        .map_or(DEFAULT_GRACE_SECONDS, |g| g.value);
    i64::try_from(seconds)
        .ok()
        .and_then(Duration::try_seconds)
        .unwrap_or(Duration::MAX)
}

/// The most nodes one push may remove from a fleet of `fleet` (counting
/// them): a tenth of it, at least one, and never all.
pub fn departure_limit(fleet: usize) -> usize {
    (fleet / 10).max(1).min(fleet.saturating_sub(1))
}

/// Decide departures at spec commit `tip`: `before` is the record on the
/// state branch (`None` before the first pass that keeps one), `removed`
/// the node files removed since `before.checked`.
pub fn decide(
    before: Option<&Departed>,
    removed: &[Removed],
    model: &FleetModel,
    tip: &str,
    now: DateTime<Utc>,
) -> Decommission {
    let mut nodes: BTreeMap<String, DepartedNode> =
        before.map(|b| b.nodes.clone()).unwrap_or_default();
    let mut lines = Vec::new();
    let in_repo = |id: &str| model.nodes.iter().any(|n| n.doc.id.value == id);
    let leaving: Vec<&Removed> = removed
        .iter()
        .filter(|r| !in_repo(&r.id) && !nodes.contains_key(&r.id))
        .collect();
    // A deleted nodes/ directory (a bad merge) must not stop the fleet:
    // past the limit nothing departs, and the check repeats each pass
    // from the same commit until the files are back or fewer go at once.
    let limit = departure_limit(model.nodes.len() + leaving.len());
    if leaving.len() > limit {
        lines.push(format!(
            "{} node files removed at once, more than {limit} (a tenth of the fleet, at least one, never all): nobody departs; restore them, or remove them in smaller pushes",
            leaving.len()
        ));
        return Decommission {
            record: Departed {
                format: DEPARTED_FORMAT,
                checked: before.map_or_else(|| tip.to_owned(), |b| b.checked.clone()),
                nodes,
            },
            changed: false,
            remove: Vec::new(),
            lines,
        };
    }
    for r in leaving {
        lines.push(format!(
            "node {} left the fleet repo: its agent stops after a final report",
            r.id
        ));
        nodes.insert(
            r.id.clone(),
            DepartedNode {
                environment: r.environment.clone(),
                commit: tip.to_owned(),
                since: now,
            },
        );
    }
    nodes.retain(|id, _| {
        let back = in_repo(id);
        if back {
            lines.push(format!("node {id} is back in the fleet repo"));
        }
        !back
    });
    let grace = grace(model);
    let mut remove = Vec::new();
    nodes.retain(|id, n| {
        // Never in the pass that saw it go: its manifest names it first,
        // so its agent stops before its objects go.
        let over = n.since < now
            && n.since
                .checked_add_signed(grace)
                .is_some_and(|end| now >= end);
        if over {
            remove.push(keys::status(id));
            remove.push(keys::enroll(id));
            lines.push(format!(
                "node {id} departed {}: its status and enrollment objects are removed",
                n.since.format("%Y-%m-%d %H:%M UTC")
            ));
        }
        !over
    });
    let changed = before.map_or(!nodes.is_empty(), |b| b.nodes != nodes);
    Decommission {
        record: Departed {
            format: DEPARTED_FORMAT,
            checked: tip.to_owned(),
            nodes,
        },
        changed,
        remove,
        lines,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn model(ids: &[&str], grace: Option<&str>) -> FleetModel {
        let mut files = crate::repo::RepoFiles::new();
        let defaults = grace.map_or(String::new(), |g| {
            format!("defaults {{\n    decommission-grace \"{g}\"\n}}\n")
        });
        files.insert("fleet.kdl", format!("version 1\nname \"f\"\n{defaults}"));
        for id in ids {
            files.insert(
                format!("nodes/{id}.kdl"),
                format!("version 1\nid \"{id}\"\nenvironment \"prod\"\nnode-key \"IOs8C/nAD8rXYMOdNc/cYeTDnFMO2fE/SClf2Wxn0EU=\"\n"),
            );
        }
        crate::check::check(&files).model
    }

    fn t(h: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 1, h, 0, 0).unwrap()
    }

    fn gone(id: &str) -> Removed {
        Removed {
            id: id.to_owned(),
            environment: "prod".to_owned(),
        }
    }

    #[test]
    fn a_removed_node_departs_is_named_for_its_environment_and_is_cleaned_up_after_the_grace() {
        let m = model(&["a"], Some("2h"));
        let first = decide(None, &[gone("b")], &m, "c1", t(0));
        assert!(first.changed);
        assert!(first.remove.is_empty());
        assert_eq!(first.of_environment("prod"), ["b"]);
        assert!(first.of_environment("dev").is_empty());
        // Within the grace nothing more happens, however often it is asked.
        let later = decide(Some(&first.record), &[], &m, "c2", t(1));
        assert!(!later.changed);
        assert_eq!(later.record.nodes, first.record.nodes);
        assert_eq!(later.record.checked, "c2");
        // After it, the objects go and so does the record.
        let over = decide(Some(&later.record), &[], &m, "c3", t(2));
        assert!(over.changed);
        assert_eq!(over.remove, [keys::status("b"), keys::enroll("b")]);
        assert!(over.record.nodes.is_empty());
    }

    #[test]
    fn a_node_still_or_again_in_the_repo_never_departs() {
        let m = model(&["a"], None);
        // Its file was renamed: the id is still there.
        let renamed = decide(None, &[gone("a")], &m, "c1", t(0));
        assert!(!renamed.changed);
        assert!(renamed.record.nodes.is_empty());
        // Departed, then added back.
        let gone_b = decide(None, &[gone("b")], &model(&["a"], None), "c1", t(0));
        let back = decide(
            Some(&gone_b.record),
            &[],
            &model(&["a", "b"], None),
            "c2",
            t(1),
        );
        assert!(back.changed);
        assert!(back.record.nodes.is_empty());
        assert!(back.remove.is_empty());
    }

    #[test]
    fn a_mass_removal_departs_nobody_and_keeps_looking_from_the_same_commit() {
        let m = model(&["a"], None);
        let removed: Vec<Removed> = (0..6).map(|i| gone(&format!("n{i}"))).collect();
        let first = decide(None, &removed, &m, "c1", t(0));
        assert!(first.record.nodes.is_empty());
        let before = Departed {
            checked: "c0".to_owned(),
            ..first.record.clone()
        };
        let again = decide(Some(&before), &removed, &m, "c2", t(1));
        assert!(!again.changed);
        assert_eq!(again.record.checked, "c0");
        assert!(
            again.lines[0].contains("6 node files removed at once"),
            "{:?}",
            again.lines
        );
        // In a fleet of 30, three at once is within the limit, four not.
        let ids: Vec<String> = (0..27).map(|i| format!("k{i}")).collect();
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let big = model(&refs, None);
        let three = decide(Some(&before), &removed[..3], &big, "c2", t(1));
        assert_eq!(three.record.nodes.len(), 3);
        let four = decide(Some(&before), &removed[..4], &big, "c2", t(1));
        assert!(four.record.nodes.is_empty());
        // The last node of a fleet never departs by a push.
        let last = decide(Some(&before), &removed[..1], &model(&[], None), "c2", t(1));
        assert!(last.record.nodes.is_empty());
    }

    #[test]
    fn a_zero_grace_still_names_the_node_for_one_pass_and_a_huge_one_never_ends() {
        let zero = model(&["a"], Some("0s"));
        let first = decide(None, &[gone("b")], &zero, "c1", t(0));
        assert_eq!(first.of_environment("prod"), ["b"]);
        assert!(first.remove.is_empty());
        let next = decide(Some(&first.record), &[], &zero, "c2", t(1));
        assert_eq!(next.remove.len(), 2);
        let forever = model(&["a"], Some("100000000000d"));
        let d = decide(None, &[gone("b")], &forever, "c1", t(0));
        let later = decide(Some(&d.record), &[], &forever, "c2", t(23));
        assert!(later.remove.is_empty());
    }

    #[test]
    fn the_default_grace_is_a_week() {
        let m = model(&["a"], None);
        let d = decide(None, &[gone("b")], &m, "c1", t(0));
        let day6 = decide(Some(&d.record), &[], &m, "c2", t(0) + Duration::days(6));
        assert!(day6.remove.is_empty());
        let day7 = decide(Some(&d.record), &[], &m, "c3", t(0) + Duration::days(7));
        assert_eq!(day7.remove.len(), 2);
    }
}
