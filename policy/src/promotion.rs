//! Promotion pull requests, decided: for every environment that requires
//! approvals, the changes waiting there in `awaiting-approval`, as the
//! `promotions/<env>.json` a pull request would bring, with its title and
//! body. Pure: rollout state in, documents out; the reconciler pushes the
//! branch and opens the pull request.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use gitfleet_schemas::promotion::{Promotion, Promotions, PROMOTIONS_FORMAT};
use gitfleet_schemas::state::{Phase, RolloutState};
use gitfleet_schemas::Approvals;

use crate::rules::Rules;

/// One environment's promotion pull request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ask {
    pub file: Promotions,
    pub title: String,
    pub body: String,
}

/// Environment -> its promotion pull request, for every environment whose
/// rules in force require approvals and that has a rollout waiting for
/// them.
pub fn wanted(rules: &Rules, state: &BTreeMap<String, RolloutState>) -> BTreeMap<String, Ask> {
    let mut out = BTreeMap::new();
    for (name, in_force) in rules.iter() {
        let env = &in_force.environment;
        let Some(rule) = env.approval_rule() else {
            continue;
        };
        let name = &name.to_owned();
        let rollouts: BTreeMap<String, Promotion> = state
            .iter()
            .filter_map(|(rollout, s)| {
                let e = s.environments.get(name)?;
                (e.phase == Phase::AwaitingApproval).then(|| {
                    let promotion = Promotion {
                        source_commit: e.source_commit.clone(),
                        bundle: e.target.clone(),
                        completed_in: env.after.as_ref().map(|a| a.value.clone()),
                    };
                    (rollout.clone(), promotion)
                })
            })
            .collect();
        if rollouts.is_empty() {
            continue;
        }
        let file = Promotions {
            format: PROMOTIONS_FORMAT,
            environment: name.clone(),
            rollouts,
        };
        let title = title(&file);
        let body = body(&file, rule);
        out.insert(name.clone(), Ask { file, title, body });
    }
    out
}

/// Whether a promotion file asks for `commit` of `rollout` in its
/// environment.
pub fn asks_for(file: &Promotions, rollout: &str, commit: &str) -> bool {
    file.rollouts
        .get(rollout)
        .is_some_and(|p| p.source_commit == commit)
}

fn short(commit: &str) -> &str {
    &commit[..12.min(commit.len())]
}

fn title(file: &Promotions) -> String {
    let names: Vec<&str> = file.rollouts.keys().map(String::as_str).collect();
    let listed = match names.as_slice() {
        [one] => (*one).to_owned(),
        [first, rest @ ..] if rest.len() < 3 => format!("{first} and {}", rest.join(", ")),
        _ => format!("{} rollouts", names.len()),
    };
    format!("Promote {listed} to {}", file.environment)
}

fn body(file: &Promotions, rule: &Approvals) -> String {
    let env = &file.environment;
    let mut b = String::new();
    let _ = writeln!(
        b,
        "gitfleet asks to promote these changes to **{env}**, where they wait for approval:\n"
    );
    let _ = writeln!(b, "| rollout | source commit | bundle | completed in |");
    let _ = writeln!(b, "|---|---|---|---|");
    for (rollout, p) in &file.rollouts {
        let digest = p.bundle.digest.trim_start_matches("sha256:");
        let _ = writeln!(
            b,
            "| {rollout} | {} | `{}` | {} |",
            short(&p.source_commit),
            &digest[..12.min(digest.len())],
            p.completed_in.as_deref().unwrap_or("-")
        );
    }
    let n = rule.required.value;
    let mut who: Vec<String> = rule.users.iter().map(|u| u.value.clone()).collect();
    who.extend(
        rule.teams
            .iter()
            .map(|t| format!("a member of {}", t.value)),
    );
    let _ = writeln!(
        b,
        "\n{env} needs {n} approving review{} on this pull request's head commit{}. \
         Merge it with them and the rollouts go ahead in {env}; a review of an \
         older head, or by the pull request's author, does not count.",
        if n == 1 { "" } else { "s" },
        if who.is_empty() {
            String::new()
        } else {
            format!(" by {}", who.join(", "))
        }
    );
    let _ = writeln!(
        b,
        "\nWritten by gitfleet; when another change completes before this is \
         merged, the branch gets a new commit and this description is updated."
    );
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::FleetModel;
    use chrono::{TimeZone, Utc};
    use gitfleet_schemas::state::{EnvState, STATE_FORMAT};
    use gitfleet_schemas::trust::BundleRef;
    use gitfleet_schemas::{Environment, Span, Spanned};

    fn s<T>(value: T) -> Spanned<T> {
        Spanned {
            value,
            span: Span::default(),
        }
    }

    fn model() -> FleetModel {
        let env = |name: &str, after: Option<&str>, required: u64| Environment {
            name: s(name.to_owned()),
            after: after.map(|a| s(a.to_owned())),
            freshness_seconds: None,
            approvals: (required > 0).then(|| Approvals {
                required: s(required),
                users: vec![s("alice".to_owned())],
                teams: vec![s("acme/sre".to_owned())],
            }),
            windows: Vec::new(),
            span: Span::default(),
        };
        FleetModel {
            fleet: None,
            environments: vec![
                env("dev", None, 0),
                env("staging", Some("dev"), 0),
                env("prod", Some("staging"), 2),
            ],
            environments_read: true,
            nodes: Vec::new(),
            configs: BTreeMap::new(),
            meshes: BTreeMap::new(),
            rollouts: BTreeMap::new(),
            written: BTreeMap::new(),
        }
    }

    fn at(phase: Phase, commit: char) -> EnvState {
        EnvState {
            target: BundleRef {
                digest: format!("sha256:{}", "d".repeat(64)),
                length: 1,
            },
            source_commit: commit.to_string().repeat(40),
            changed_from: None,
            previous: None,
            phase,
            step: 0,
            admitted: 0,
            on_target: None,
            since: Utc.timestamp_opt(0, 0).single().unwrap_or_default(),
            reason: String::new(),
            failed_nodes: Vec::new(),
            proxy: None,
            variants: Default::default(),
        }
    }

    fn state(rollouts: &[(&str, &[(&str, EnvState)])]) -> BTreeMap<String, RolloutState> {
        rollouts
            .iter()
            .map(|(name, envs)| {
                let environments = envs
                    .iter()
                    .map(|(e, s)| ((*e).to_owned(), s.clone()))
                    .collect();
                (
                    (*name).to_owned(),
                    RolloutState {
                        format: STATE_FORMAT,
                        environments,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn a_change_awaiting_approval_gets_one_pull_request_per_environment() {
        let st = state(&[
            (
                "edge",
                &[
                    ("staging", at(Phase::Complete, 'a')),
                    ("prod", at(Phase::AwaitingApproval, 'a')),
                ],
            ),
            ("api", &[("prod", at(Phase::AwaitingApproval, 'b'))]),
            ("web", &[("prod", at(Phase::Progressing, 'c'))]),
        ]);
        let asks = wanted(&Rules::of_model(&model(), "c0"), &st);
        assert_eq!(asks.keys().collect::<Vec<_>>(), ["prod"]);
        let prod = &asks["prod"];
        assert_eq!(prod.title, "Promote api and edge to prod");
        assert_eq!(
            prod.file.rollouts.keys().collect::<Vec<_>>(),
            ["api", "edge"]
        );
        let edge = &prod.file.rollouts["edge"];
        assert_eq!(edge.source_commit, "a".repeat(40));
        assert_eq!(edge.completed_in.as_deref(), Some("staging"));
        assert!(asks_for(&prod.file, "edge", &"a".repeat(40)));
        assert!(!asks_for(&prod.file, "edge", &"b".repeat(40)));
        assert!(!asks_for(&prod.file, "web", &"c".repeat(40)));
        assert!(prod
            .body
            .contains("| edge | aaaaaaaaaaaa | `dddddddddddd` | staging |"));
        assert!(
            prod.body
                .contains("prod needs 2 approving reviews on this pull request's head commit by alice, a member of acme/sre"),
            "{}",
            prod.body
        );
    }

    #[test]
    fn nothing_waiting_or_no_approvals_required_asks_for_nothing() {
        let st = state(&[(
            "edge",
            &[
                ("dev", at(Phase::AwaitingApproval, 'a')),
                ("prod", at(Phase::Pending, 'a')),
            ],
        )]);
        // dev requires no approvals: a phase there never asks.
        assert!(wanted(&Rules::of_model(&model(), "c0"), &st).is_empty());
    }

    #[test]
    fn the_same_state_asks_for_the_same_bytes() {
        let st = state(&[("edge", &[("prod", at(Phase::AwaitingApproval, 'a'))])]);
        let a = wanted(&Rules::of_model(&model(), "c0"), &st);
        let b = wanted(&Rules::of_model(&model(), "c0"), &st);
        assert_eq!(a, b);
        assert_eq!(a["prod"].file.to_bytes(), b["prod"].file.to_bytes());
    }

    #[test]
    fn many_rollouts_are_counted_in_the_title() {
        let waiting = at(Phase::AwaitingApproval, 'a');
        let envs: &[(&str, EnvState)] = &[("prod", waiting)];
        let st = state(&[("a", envs), ("b", envs), ("c", envs), ("d", envs)]);
        assert_eq!(
            wanted(&Rules::of_model(&model(), "c0"), &st)["prod"].title,
            "Promote 4 rollouts to prod"
        );
    }
}
