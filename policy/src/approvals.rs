//! Which changes have their approvals: the signed approvals on the state
//! branch (`gitfleet approve`), counted against each environment's
//! `approvals` in environments.kdl. Pure: the caller hands over the files.
//!
//! An approval counts when it is signed by the key fleet.kdl gives its
//! approver, names this fleet, matches the path it is stored under, and its
//! approver is one of the environment's `users`, where fleet.kdl and the
//! environment are read at the commit the environment's rules come from
//! (`crate::rules`). Each approver counts once.
//! Teams are resolved only by the GitHub path; here only users count.

use std::collections::{BTreeMap, BTreeSet};

use gitfleet_schemas::approval::{approval_path, Approval};
use gitfleet_schemas::trust::PublicKey;
use gitfleet_schemas::verify::verify_signed_by;

use gitfleet_schemas::state::{Phase, RolloutState, RulesState};
use gitfleet_schemas::view::WaitingCommit;

use crate::model::FleetModel;
use crate::rules::{Rules, RulesPlan};

/// The outcome: approved `(environment, commit)` pairs, and every approval
/// that did not count with the reason, for logs and metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counted {
    pub approved: BTreeSet<(String, String)>,
    /// `(environment, commit)` -> every approver whose signed approval
    /// verified there, the environment's approvers and owners alike: what
    /// `crate::owners::Hold::judge` takes.
    pub signed: BTreeMap<(String, String), BTreeSet<String>>,
    pub ignored: Vec<(String, String)>,
}

/// Count the approvals among `files` (state branch path → bytes), each
/// against the rules in force in its environment: its approval rule and
/// the approver keys of the commit those rules come from, never the keys
/// of the commit being approved.
pub fn count(model: &FleetModel, rules: &Rules, files: &BTreeMap<String, Vec<u8>>) -> Counted {
    let mut out = Counted::default();
    let Some(fleet) = model.fleet.as_ref().map(|f| &f.doc) else {
        return out;
    };
    // (environment, commit) -> approvers that count
    let mut by_change: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for (path, bytes) in files.range("approvals/".to_owned()..) {
        if !path.starts_with("approvals/") {
            break;
        }
        match one(rules, &fleet.name.value, path, bytes) {
            Ok(a) => {
                let change = (a.environment, a.commit);
                out.signed
                    .entry(change.clone())
                    .or_default()
                    .insert(a.approver.clone());
                let users = rules
                    .env(&change.0)
                    .and_then(|r| r.approval_rule())
                    .map(|r| &r.users);
                if users.is_some_and(|u| u.iter().any(|u| u.value == a.approver)) {
                    by_change.entry(change).or_default().insert(a.approver);
                }
            }
            Err(reason) => out.ignored.push((path.clone(), reason)),
        }
    }
    for ((env, commit), approvers) in by_change {
        let required = rules
            .env(&env)
            .and_then(|r| r.approval_rule())
            .map_or(0, |a| a.required.value);
        if required > 0 && approvers.len() as u64 >= required {
            out.approved.insert((env, commit));
        }
    }
    out
}

/// The commits waiting for approvals in `environment`: the source commits
/// of rollouts at its approval gate, and a pending change to its rules;
/// each once, in commit order of first appearance (rollouts by name, the
/// rules change last).
pub fn waiting(
    state: &BTreeMap<String, RolloutState>,
    rules: Option<&RulesState>,
    environment: &str,
) -> Vec<WaitingCommit> {
    let mut out: Vec<WaitingCommit> = Vec::new();
    let mut add = |commit: &str, rollout: Option<&str>| {
        let i = match out.iter().position(|w| w.commit == commit) {
            Some(i) => i,
            None => {
                out.push(WaitingCommit {
                    commit: commit.to_owned(),
                    rollouts: Vec::new(),
                    rules: false,
                });
                out.len() - 1
            }
        };
        match rollout {
            Some(r) => out[i].rollouts.push(r.to_owned()),
            None => out[i].rules = true,
        }
    };
    for (name, st) in state {
        if let Some(e) = st.environments.get(environment) {
            if e.phase == Phase::AwaitingApproval {
                add(&e.source_commit, Some(name));
            }
        }
    }
    if let Some(p) = rules
        .and_then(|r| r.environments.get(environment))
        .and_then(|r| r.pending.as_ref())
    {
        add(&p.commit, None);
    }
    out
}

/// The approvals the planner may go by once `decided` is in force:
/// `before` were judged under the rules before it, so they stand only in
/// environments whose rules did not change; there `again` (judged under
/// `decided.rules`) counts instead. A change adopted with a stricter rule
/// never rides on approvals given under a looser one.
pub fn under(
    decided: &RulesPlan,
    before: BTreeSet<(String, String)>,
    again: BTreeSet<(String, String)>,
) -> BTreeSet<(String, String)> {
    let changed = |(env, _): &(String, String)| decided.adopted.contains(env);
    before
        .into_iter()
        .filter(|a| !changed(a))
        .chain(again.into_iter().filter(changed))
        .collect()
}

/// One approval, verified and checked against the rules in force, or why
/// not.
fn one(rules: &Rules, fleet: &str, path: &str, bytes: &[u8]) -> Result<Approval, String> {
    // approvals/<environment>/<commit>/<approver>.json
    let mut parts = path.split('/');
    let (Some("approvals"), Some(env), Some(_), Some(file), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err("not an approval file".to_owned());
    };
    let approver = file.strip_suffix(".json").ok_or("not an approval file")?;
    let in_force = rules
        .env(env)
        .filter(|r| r.approval_rule().is_some() || !r.owners.is_empty())
        .ok_or_else(|| format!("environment `{env}` takes no approvals"))?;
    let approves = in_force
        .approval_rule()
        .iter()
        .flat_map(|a| &a.users)
        .chain(in_force.owners.iter().flat_map(|o| &o.users))
        .any(|u| u.value == approver);
    if !approves {
        return Err(format!(
            "`{approver}` is neither among the users who may approve {env} nor an owner under the rules from {}",
            short(&in_force.commit)
        ));
    }
    let key = in_force
        .approvers
        .get(approver)
        .and_then(|k| PublicKey::parse(k).ok())
        .ok_or_else(|| {
            format!(
                "`{approver}` is not an approver in fleet.kdl at {}, where the rules of {env} come from",
                short(&in_force.commit)
            )
        })?;
    let approval = verify_signed_by::<Approval>(bytes, &key).map_err(|e| e.to_string())?;
    let approval = (*approval).clone();
    if approval.fleet != fleet {
        return Err(format!(
            "approval is for fleet `{}`, not `{fleet}`",
            approval.fleet
        ));
    }
    if approval_path(&approval.environment, &approval.commit, &approval.approver) != path {
        return Err("its content does not match its path".to_owned());
    }
    Ok(approval)
}

fn short(commit: &str) -> &str {
    &commit[..commit.len().min(12)]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::RepoFiles;
    use chrono::TimeZone as _;
    use ed25519_dalek::SigningKey;
    use gitfleet_schemas::trust::Document as _;

    fn key(n: u8) -> SigningKey {
        SigningKey::from_bytes(&[n; 32])
    }

    fn public(n: u8) -> String {
        PublicKey(key(n).verifying_key().to_bytes()).to_string()
    }

    const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

    fn model() -> FleetModel {
        let mut f = RepoFiles::new();
        f.insert(
            "fleet.kdl",
            format!(
                "version 1\nname \"acme\"\napprover \"alice\" key=\"{}\"\napprover \"bob\" key=\"{}\"\napprover \"eve\" key=\"{}\"\n",
                public(1),
                public(2),
                public(3)
            ),
        );
        f.insert(
            "environments.kdl",
            "version 1\nenvironment \"dev\"\nenvironment \"prod\" { after \"dev\"; approvals 2 { users \"alice\" \"bob\" \"carol\"; }; }\n",
        );
        crate::check::check(&f).model
    }

    fn count(model: &FleetModel, files: &BTreeMap<String, Vec<u8>>) -> Counted {
        super::count(model, &Rules::of_model(model, "c0"), files)
    }

    fn approval(env: &str, commit: &str, who: &str, signer: u8) -> (String, Vec<u8>) {
        let a = Approval {
            fleet: "acme".into(),
            environment: env.into(),
            commit: commit.into(),
            approver: who.into(),
            at: chrono::Utc.with_ymd_and_hms(2026, 12, 1, 12, 0, 0).unwrap(),
        };
        let mut env_ = a.envelope();
        env_.sign(&key(signer)).unwrap();
        (approval_path(env, commit, who), env_.to_json())
    }

    fn files(list: &[(String, Vec<u8>)]) -> BTreeMap<String, Vec<u8>> {
        list.iter().cloned().collect()
    }

    #[test]
    fn two_allowed_approvers_approve_a_commit() {
        let got = count(
            &model(),
            &files(&[
                approval("prod", COMMIT, "alice", 1),
                approval("prod", COMMIT, "bob", 2),
            ]),
        );
        assert_eq!(
            got.approved,
            BTreeSet::from([("prod".to_owned(), COMMIT.to_owned())])
        );
        assert!(got.ignored.is_empty(), "{:?}", got.ignored);
    }

    #[test]
    fn one_approval_of_two_is_not_enough() {
        let got = count(&model(), &files(&[approval("prod", COMMIT, "alice", 1)]));
        assert!(got.approved.is_empty());
    }

    #[test]
    fn approvals_that_do_not_count_say_why() {
        let other = "fedcba9876543210fedcba9876543210fedcba98";
        let (moved_path, moved) = approval("prod", other, "bob", 2);
        let cases: Vec<((String, Vec<u8>), &str)> = vec![
            // Signed by alice's key but claiming to be bob.
            (approval("prod", COMMIT, "bob", 1), "unknown key"),
            // A declared approver, but not one of prod's users.
            (
                approval("prod", COMMIT, "eve", 3),
                "neither among the users",
            ),
            // Nobody declared.
            (
                approval("prod", COMMIT, "mallory", 4),
                "neither among the users",
            ),
            // One of prod's users, without a key in fleet.kdl.
            (approval("prod", COMMIT, "carol", 4), "not an approver"),
            // dev takes no approvals.
            (approval("dev", COMMIT, "alice", 1), "takes no approvals"),
            // Another commit's approval copied under this one's path.
            (
                (moved_path.replace(other, COMMIT), moved),
                "does not match its path",
            ),
        ];
        for ((path, bytes), want) in cases {
            let got = count(
                &model(),
                &files(&[approval("prod", COMMIT, "alice", 1), (path.clone(), bytes)]),
            );
            assert!(got.approved.is_empty(), "{path} counted");
            assert_eq!(got.ignored.len(), 1, "{path}: {:?}", got.ignored);
            assert!(
                got.ignored[0].1.contains(want),
                "{path}: {} lacks {want}",
                got.ignored[0].1
            );
        }
    }

    #[test]
    fn approvals_of_different_commits_do_not_add_up() {
        let other = "fedcba9876543210fedcba9876543210fedcba98";
        let got = count(
            &model(),
            &files(&[
                approval("prod", COMMIT, "alice", 1),
                approval("prod", other, "bob", 2),
            ]),
        );
        assert!(got.approved.is_empty());
    }

    #[test]
    fn a_commit_cannot_approve_itself_with_a_key_it_adds() {
        let trusted = model();
        // The commit adds mallory's key and makes her one of prod's users.
        let mut f = RepoFiles::new();
        f.insert(
            "fleet.kdl",
            format!(
                "version 1\nname \"acme\"\napprover \"alice\" key=\"{}\"\napprover \"mallory\" key=\"{}\"\n",
                public(1),
                public(4)
            ),
        );
        f.insert(
            "environments.kdl",
            "version 1\nenvironment \"dev\"\nenvironment \"prod\" { after \"dev\"; approvals 2 { users \"alice\" \"mallory\"; }; }\n",
        );
        let head = crate::check::check(&f).model;
        let signed = files(&[
            approval("prod", COMMIT, "alice", 1),
            approval("prod", COMMIT, "mallory", 4),
        ]);
        // Counted under the head's own rules, it would pass...
        assert_eq!(count(&head, &signed).approved.len(), 1);
        // ...but the rules in force are the trusted commit's.
        let got = super::count(&head, &Rules::of_model(&trusted, "c0"), &signed);
        assert!(got.approved.is_empty());
        assert_eq!(got.ignored.len(), 1);
        assert!(
            got.ignored[0].1.contains(
                "neither among the users who may approve prod nor an owner under the rules from c0"
            ),
            "{:?}",
            got.ignored
        );
    }

    #[test]
    fn what_waits_in_an_environment_is_listed_once_per_commit() {
        use gitfleet_schemas::state::{EnvRulesState, EnvState, PendingRules, RulesState};
        use gitfleet_schemas::trust::BundleRef;
        let env = |phase, commit: &str| EnvState {
            target: BundleRef {
                digest: "sha256:00".into(),
                length: 1,
            },
            source_commit: commit.into(),
            changed_from: None,
            previous: None,
            phase,
            step: 0,
            admitted: 0,
            on_target: None,
            since: chrono::Utc.with_ymd_and_hms(2026, 12, 1, 12, 0, 0).unwrap(),
            reason: String::new(),
            failed_nodes: Vec::new(),
            proxy: None,
            variants: Default::default(),
        };
        let rollout = |phase, commit: &str| RolloutState {
            format: 1,
            environments: BTreeMap::from([("prod".to_owned(), env(phase, commit))]),
        };
        let state = BTreeMap::from([
            ("api".to_owned(), rollout(Phase::AwaitingApproval, "c1")),
            ("edge".to_owned(), rollout(Phase::AwaitingApproval, "c1")),
            ("mesh".to_owned(), rollout(Phase::AwaitingApproval, "c2")),
            ("web".to_owned(), rollout(Phase::Progressing, "c3")),
        ]);
        let rules = RulesState {
            format: 1,
            first_seen: "c0".into(),
            environments: BTreeMap::from([(
                "prod".to_owned(),
                EnvRulesState {
                    commit: "c0".into(),
                    since: chrono::Utc.with_ymd_and_hms(2026, 12, 1, 12, 0, 0).unwrap(),
                    pending: Some(PendingRules {
                        commit: "c2".into(),
                        reason: String::new(),
                    }),
                },
            )]),
        };
        let got = waiting(&state, Some(&rules), "prod");
        let summary: Vec<(&str, Vec<&str>, bool)> = got
            .iter()
            .map(|w| {
                (
                    w.commit.as_str(),
                    w.rollouts.iter().map(String::as_str).collect(),
                    w.rules,
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("c1", vec!["api", "edge"], false),
                ("c2", vec!["mesh"], true)
            ]
        );
        assert!(waiting(&state, Some(&rules), "dev").is_empty());
    }
}
