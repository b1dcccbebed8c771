//! Owners per path: which `owners` rules of fleet.kdl a change touches, and
//! which of them still wait for an owner's approval. Pure: the caller reads
//! the paths a change touches (a tree diff) and the approvals.
//!
//! Owners are rules (see the rules module): they are read from the commit the
//! rules in force come from, never from the change being judged, so a
//! change that edits an `owners` rule is judged by the one before it. A
//! change to the rules themselves needs the owners in force of the rule
//! files it edits, and the owners of every `owners` rule it changes or
//! removes.
//!
//! The change a rollout brings into an environment runs from the source
//! commit of the last target that completed there ([`change_base`]) to the
//! new source commit: every file of the rollout's inputs that differs
//! between the two is touched. A first target touches every file.

use std::collections::BTreeSet;
use std::fmt;

use gitfleet_schemas::owners::Owners;
use gitfleet_schemas::state::{EnvState, Phase};

/// The rule that owns `path`: the last one whose pattern matches, as in a
/// CODEOWNERS file.
pub fn owner_of<'a>(owners: &'a [Owners], path: &str) -> Option<&'a Owners> {
    owners.iter().rev().find(|o| o.matches(path))
}

/// The rules owning any of `paths`, each once, in fleet.kdl's order.
pub fn needed<'a, 'p>(
    owners: &'a [Owners],
    paths: impl IntoIterator<Item = &'p str>,
) -> Vec<&'a Owners> {
    let mut hit: BTreeSet<usize> = BTreeSet::new();
    for path in paths {
        if let Some(i) = owners.iter().rposition(|o| o.matches(path)) {
            hit.insert(i);
        }
    }
    hit.into_iter().map(|i| &owners[i]).collect()
}

/// Where the change a new target brings starts: the source commit of the
/// last target that completed here, which `before` (the state the new
/// target replaces) either is or still remembers. `None`: no target ever
/// completed here, so every file is new.
pub fn change_base(before: Option<&EnvState>) -> Option<String> {
    let b = before?;
    match b.phase {
        Phase::Complete => Some(b.source_commit.clone()),
        _ => b.changed_from.clone(),
    }
}

/// Whether owners can hold a change to `path` in `model`: a path of a
/// rollout's inputs ([`input_paths`]), or a rule file (a change to the
/// rules). Other paths (rollout files, nodes outside a mesh rollout) are
/// not held by owners.
pub fn held(model: &crate::model::FleetModel, path: &str) -> bool {
    if path == crate::model::FLEET_FILE || path == crate::model::ENVIRONMENTS_FILE {
        return true;
    }
    model.rollouts.values().any(|r| {
        input_paths(&r.doc.target.value).iter().any(|p| {
            if p.ends_with('/') {
                path.starts_with(p.as_str())
            } else {
                path == p
            }
        })
    })
}

/// Whether a rollout wanting `commit` in an environment where its state is
/// `state` has yet to pass the approval gate there: a new commit, or one
/// still pending, awaiting approvals or a window.
pub fn before_gate(state: Option<&EnvState>, commit: &str) -> bool {
    !state.is_some_and(|e| {
        e.source_commit == commit
            && !matches!(
                e.phase,
                Phase::Pending | Phase::AwaitingApproval | Phase::WaitingWindow
            )
    })
}

/// The files under which a rollout's inputs lie: `configs/<name>/` for a
/// config, the mesh file and the node files for a mesh (a member's node
/// file is part of the mesh).
pub fn input_paths(target: &gitfleet_schemas::RolloutTarget) -> Vec<String> {
    match target {
        gitfleet_schemas::RolloutTarget::Config(c) => vec![format!("configs/{c}/")],
        gitfleet_schemas::RolloutTarget::Mesh(m) => {
            vec![format!("meshes/{m}.kdl"), "nodes/".to_owned()]
        }
    }
}

/// Same patterns and owners, wherever they are written.
pub fn same_owners(a: &[Owners], b: &[Owners]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| same_rule(x, y))
}

/// Same pattern and owners, in any order.
pub fn same_rule(a: &Owners, b: &Owners) -> bool {
    let names = |v: &[gitfleet_schemas::Spanned<String>]| -> BTreeSet<String> {
        v.iter().map(|s| s.value.clone()).collect()
    };
    a.pattern.value == b.pattern.value
        && names(&a.users) == names(&b.users)
        && names(&a.teams) == names(&b.teams)
}

/// One owners rule a change asks, and what a review must cover.
#[derive(Clone, Debug, PartialEq)]
pub struct Need {
    pub rule: Owners,
    /// The commits since the change began that changed the rule's paths:
    /// reviews release the rule only when an owner approved the pull
    /// request of every one of them. `None`: reviews cannot tell (too
    /// many), and only a signed approval releases it.
    pub commits: Option<Vec<String>>,
}

/// What one change still waits for: the owners rules it touches that no
/// owner approved yet.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hold {
    /// `pattern (who)` of each rule still waiting.
    pub waiting: Vec<String>,
    /// `pattern: approver` of each rule an owner approved.
    pub approved: Vec<String>,
}

impl Hold {
    /// The owners `needs` asks, judged by who approved: `signed` (names of
    /// approvers whose signed approval of the change verified) and
    /// `reviewed` (patterns a pull request review satisfied, with the
    /// reviewer).
    pub fn judge(
        needs: &[Owners],
        signed: &BTreeSet<String>,
        reviewed: &[(String, String)],
    ) -> Hold {
        let mut hold = Hold::default();
        for rule in needs {
            let by_key = rule.users.iter().find(|u| signed.contains(&u.value));
            let by_review = reviewed.iter().find(|(p, _)| *p == rule.pattern.value);
            match (by_key, by_review) {
                (Some(u), _) => hold
                    .approved
                    .push(format!("{}: {}", rule.pattern.value, u.value)),
                (None, Some((_, who))) => {
                    hold.approved.push(format!("{}: {who}", rule.pattern.value))
                }
                (None, None) => hold.waiting.push(rule.describe()),
            }
        }
        hold
    }

    pub fn holds(&self) -> bool {
        !self.waiting.is_empty()
    }
}

impl fmt::Display for Hold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "awaiting owners: {}", self.waiting.join("; "))?;
        if !self.approved.is_empty() {
            write!(f, " (approved: {})", self.approved.join("; "))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gitfleet_schemas::{Span, Spanned};

    fn s(v: &str) -> Spanned<String> {
        Spanned::new(v.to_owned(), Span::default())
    }

    fn rule(pattern: &str, users: &[&str], teams: &[&str]) -> Owners {
        Owners {
            pattern: s(pattern),
            users: users.iter().map(|u| s(u)).collect(),
            teams: teams.iter().map(|t| s(t)).collect(),
        }
    }

    #[test]
    fn the_last_matching_rule_owns_a_path() {
        let owners = [
            rule("configs/**", &["platform"], &[]),
            rule("configs/edge/tls/**", &["alice"], &[]),
        ];
        assert_eq!(
            owner_of(&owners, "configs/edge/tls/a.kdl").map(|o| o.users[0].value.as_str()),
            Some("alice")
        );
        assert_eq!(
            owner_of(&owners, "configs/edge/routes.kdl").map(|o| o.users[0].value.as_str()),
            Some("platform")
        );
        assert!(owner_of(&owners, "nodes/a.kdl").is_none());
        let hit = needed(
            &owners,
            [
                "configs/edge/tls/a.kdl",
                "configs/edge/tls/b.kdl",
                "nodes/x.kdl",
            ],
        );
        assert_eq!(hit.len(), 1, "one rule, asked once");
        assert_eq!(hit[0].pattern.value, "configs/edge/tls/**");
    }

    fn state(phase: Phase, source: &str, from: Option<&str>) -> EnvState {
        EnvState {
            target: gitfleet_schemas::trust::BundleRef {
                digest: format!("sha256:{}", "0".repeat(64)),
                length: 1,
            },
            source_commit: source.to_owned(),
            changed_from: from.map(str::to_owned),
            previous: None,
            phase,
            step: 0,
            admitted: 0,
            on_target: None,
            since: chrono::DateTime::UNIX_EPOCH,
            reason: String::new(),
            failed_nodes: Vec::new(),
            proxy: None,
            variants: Default::default(),
        }
    }

    #[test]
    fn a_change_starts_from_what_last_completed() {
        assert_eq!(change_base(None), None);
        assert_eq!(
            change_base(Some(&state(Phase::Complete, "c1", Some("c0")))),
            Some("c1".to_owned())
        );
        // Superseded mid-way, rolled back or failed: what completed before.
        for phase in [Phase::Progressing, Phase::RolledBack, Phase::Failed] {
            assert_eq!(
                change_base(Some(&state(phase, "c2", Some("c1")))),
                Some("c1".to_owned()),
                "{phase:?}"
            );
        }
        assert_eq!(change_base(Some(&state(Phase::Pending, "c1", None))), None);
    }

    #[test]
    fn an_owner_by_key_or_by_review_releases_only_their_rule() {
        let needs = [
            rule("configs/edge/**", &["alice"], &["acme/edge"]),
            rule("fleet.kdl", &["bob"], &[]),
        ];
        let none = Hold::judge(&needs, &BTreeSet::new(), &[]);
        assert_eq!(none.waiting.len(), 2);
        assert!(none
            .to_string()
            .contains("configs/edge/** (alice, team acme/edge)"));
        let signed = BTreeSet::from(["bob".to_owned(), "mallory".to_owned()]);
        let reviewed = vec![("configs/edge/**".to_owned(), "dave".to_owned())];
        let both = Hold::judge(&needs, &signed, &reviewed);
        assert!(!both.holds(), "{both:?}");
        assert_eq!(both.approved, ["configs/edge/**: dave", "fleet.kdl: bob"]);
        let only_mallory = Hold::judge(&needs, &BTreeSet::from(["mallory".to_owned()]), &[]);
        assert_eq!(only_mallory.waiting.len(), 2, "mallory owns nothing");
    }
}
