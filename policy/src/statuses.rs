//! Commit statuses: what each environment says on the source commit of
//! the rollouts that carry it there (`gitfleet/<env>`). Pure: rollout
//! state in, statuses out; the reconciler posts the ones that changed.

use std::collections::BTreeMap;

use gitfleet_schemas::state::{Phase, RolloutState};

use crate::model::FleetModel;

/// A commit status: `pending`, `success` or `failure`, and a line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub state: &'static str,
    pub description: String,
}

/// One rollout in one environment, as a commit status sums it up.
#[derive(Clone, Copy, Debug)]
pub struct RolloutAt<'a> {
    pub rollout: &'a str,
    pub phase: Phase,
    pub step: u32,
    pub steps: u32,
    pub reason: &'a str,
}

/// The status of one environment for one source commit, from the state of
/// the rollouts that carry it there.
pub fn status_of<'a>(states: impl IntoIterator<Item = RolloutAt<'a>>) -> Option<Status> {
    let mut failed = None;
    let mut pending = None;
    let mut complete = 0;
    for RolloutAt {
        rollout,
        phase,
        step,
        steps,
        reason,
    } in states
    {
        match phase {
            Phase::Failed | Phase::RolledBack => {
                failed.get_or_insert_with(|| format!("{rollout}: {reason}"));
            }
            Phase::Complete => complete += 1,
            _ => {
                pending.get_or_insert_with(|| {
                    // The planner's reasons name the step already.
                    if steps > 0 && step > 0 && !reason.contains("step ") {
                        format!("{rollout}: step {step}/{steps}, {reason}")
                    } else {
                        format!("{rollout}: {reason}")
                    }
                });
            }
        }
    }
    // GitHub keeps 140 characters of a description.
    let cut = |s: String| s.chars().take(140).collect::<String>();
    if let Some(f) = failed {
        return Some(Status {
            state: "failure",
            description: cut(f),
        });
    }
    if let Some(p) = pending {
        return Some(Status {
            state: "pending",
            description: cut(p),
        });
    }
    (complete > 0).then(|| Status {
        state: "success",
        description: format!(
            "complete ({complete} rollout{})",
            if complete == 1 { "" } else { "s" }
        ),
    })
}

/// One status to post: `context` (`gitfleet/<env>`) on `commit`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommitStatus {
    pub commit: String,
    pub context: String,
    pub status: Status,
}

/// The status of every (source commit, environment) pair in `state`.
pub fn commit_statuses(
    model: &FleetModel,
    state: &BTreeMap<String, RolloutState>,
) -> Vec<CommitStatus> {
    // (commit, environment) -> the rollouts there
    let mut by: BTreeMap<(&str, &str), Vec<RolloutAt<'_>>> = BTreeMap::new();
    for (name, r) in state {
        let steps = model
            .rollouts
            .get(name)
            .map_or(0, |r| r.doc.steps.len() as u32);
        for (env, e) in &r.environments {
            by.entry((&e.source_commit, env))
                .or_default()
                .push(RolloutAt {
                    rollout: name,
                    phase: e.phase,
                    step: e.step,
                    steps,
                    reason: &e.reason,
                });
        }
    }
    by.into_iter()
        .filter_map(|((commit, env), rs)| {
            Some(CommitStatus {
                commit: commit.to_owned(),
                context: format!("gitfleet/{env}"),
                status: status_of(rs)?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_rollout_fails_the_environment_and_a_running_one_is_pending() {
        let at = |rollout, phase, step, reason| RolloutAt {
            rollout,
            phase,
            step,
            steps: 3,
            reason,
        };
        let done = at("a", Phase::Complete, 3, "complete");
        let s = status_of([done, at("b", Phase::Progressing, 1, "admitting")]).unwrap();
        assert_eq!(s.state, "pending");
        assert_eq!(s.description, "b: step 1/3, admitting");
        let s = status_of([done, at("b", Phase::Verifying, 1, "step 1/3: baking")]).unwrap();
        assert_eq!(
            s.description, "b: step 1/3: baking",
            "the step is named once"
        );
        let s = status_of([done, at("b", Phase::Failed, 1, "gate error-rate")]).unwrap();
        assert_eq!(s.state, "failure");
        assert!(s.description.contains("gate error-rate"));
        let s = status_of([done]).unwrap();
        assert_eq!(
            (s.state, s.description.as_str()),
            ("success", "complete (1 rollout)")
        );
        assert_eq!(status_of([]), None);
        let long = "x".repeat(500);
        let s = status_of([at("a", Phase::Progressing, 0, long.as_str())]).unwrap();
        assert_eq!(s.description.chars().count(), 140);
    }
}
