//! Owners per path, read: the paths each change touches (a tree diff from
//! what last completed), and who of the owners it asks approved, by
//! signed approval or by pull request review. What that decides lives in
//! `gitfleet_policy::owners`; this module only reads.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use gitfleet_policy::owners::{self, Hold};
use gitfleet_policy::rules::{Rules, RulesChange};
use gitfleet_policy::FleetModel;
use gitfleet_schemas::owners::Owners;
use gitfleet_schemas::state::RolloutState;

use crate::git::{Mirror, StateFiles};
use crate::github::GitHub;

/// `(rollout, environment, commit)`: one rollout's change into one
/// environment.
pub type RolloutChange = (String, String, String);

/// The paths changes touch, kept across passes: a change is diffed once.
#[derive(Debug, Default)]
pub struct Touched {
    /// (base, commit, input paths) -> the paths changed.
    paths: HashMap<(Option<String>, String, Vec<String>), Vec<String>>,
}

impl Touched {
    fn paths(
        &mut self,
        mirror: &Mirror,
        base: Option<String>,
        commit: &str,
        inputs: Vec<String>,
    ) -> Result<&[String], crate::git::GitError> {
        let key = (base, commit.to_owned(), inputs);
        if !self.paths.contains_key(&key) {
            let got = mirror.changed_paths(key.0.as_deref(), commit, &key.2)?;
            // Changes in flight are few; a long-running reconciler sees new
            // ones only as the fleet repo moves.
            if self.paths.len() > 256 {
                self.paths.clear();
            }
            self.paths.insert(key.clone(), got);
        }
        Ok(&self.paths[&key])
    }
}

/// The owners each rollout's change asks, in every environment whose rules
/// in force name owners and where the change has yet to pass the gate. A
/// change whose paths cannot be read is left out: the planner holds it.
pub fn rollout_asks(
    touched: &mut Touched,
    mirror: &Mirror,
    model: &FleetModel,
    rules: &Rules,
    state: &BTreeMap<String, RolloutState>,
    wanted: &BTreeMap<String, String>,
) -> BTreeMap<RolloutChange, Vec<Owners>> {
    let mut out = BTreeMap::new();
    for (rollout, commit) in wanted {
        let Some(spec) = model.rollouts.get(rollout) else {
            continue;
        };
        for (env, in_force) in rules.iter() {
            if in_force.owners.is_empty() {
                continue;
            }
            let at = state.get(rollout).and_then(|s| s.environments.get(env));
            if !owners::before_gate(at, commit) {
                continue;
            }
            // The planner replaces a state of another commit, and starts the
            // change from what that one started from.
            let base = match at {
                Some(s) if s.source_commit == *commit => s.changed_from.clone(),
                at => owners::change_base(at),
            };
            let inputs = owners::input_paths(&spec.doc.target.value);
            match touched.paths(mirror, base, commit, inputs) {
                Ok(paths) => {
                    let needs = owners::needed(&in_force.owners, paths.iter().map(String::as_str));
                    out.insert(
                        (rollout.clone(), env.to_owned(), commit.clone()),
                        needs.into_iter().cloned().collect(),
                    );
                }
                Err(e) => {
                    tracing::warn!(rollout = %rollout, environment = %env, commit = %commit, error = %e, "cannot read the paths a change touches; it waits for its owners")
                }
            }
        }
    }
    out
}

/// The owners each change to the rules asks, by `(environment, commit)`.
pub fn rules_asks(
    changes: &[RulesChange],
    change_commit: &str,
) -> BTreeMap<(String, String), Vec<Owners>> {
    changes
        .iter()
        .filter(|c| !c.owners.is_empty())
        .map(|c| {
            (
                (c.environment.clone(), change_commit.to_owned()),
                c.owners.clone(),
            )
        })
        .collect()
}

/// Judge `asks` (keyed by `(environment, commit)` and whatever else `K`
/// carries) by the signed approvals of each commit among `state_files`
/// (in any environment), verified under `rules`, and (with GitHub) the
/// reviews of the pull request that brought each commit.
pub async fn judge<K: Ord + Clone>(
    asks: &BTreeMap<K, Vec<Owners>>,
    env_commit: impl Fn(&K) -> (String, String),
    model: &FleetModel,
    rules: &Rules,
    state_files: &StateFiles,
    github: Option<&GitHub>,
) -> BTreeMap<K, Hold> {
    if asks.is_empty() {
        return BTreeMap::new();
    }
    // An owner approves a change, not an environment: a signed approval
    // of the commit in any environment counts (each verified under the
    // rules in force where it is stored).
    let mut signed: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for ((_, commit), names) in gitfleet_policy::approvals::count(model, rules, state_files).signed
    {
        signed.entry(commit).or_default().extend(names);
    }
    let mut by_pull: BTreeMap<(String, String), Vec<Owners>> = BTreeMap::new();
    for (k, needs) in asks {
        let slot = by_pull.entry(env_commit(k)).or_default();
        for n in needs {
            if !slot.iter().any(|o| o.pattern.value == n.pattern.value) {
                slot.push(n.clone());
            }
        }
    }
    by_pull.retain(|_, needs| !needs.is_empty());
    let reviewed = match github {
        Some(gh) if !by_pull.is_empty() => {
            let asked = gh.owner_reviews(&by_pull);
            match tokio::time::timeout(super::GITHUB_BUDGET, asked).await {
                Ok(r) => r,
                Err(_) => {
                    tracing::warn!(
                        seconds = super::GITHUB_BUDGET.as_secs(),
                        "GitHub reviews for owners took too long; changes wait"
                    );
                    BTreeMap::new()
                }
            }
        }
        _ => BTreeMap::new(),
    };
    let none = BTreeSet::new();
    asks.iter()
        .map(|(k, needs)| {
            let key = env_commit(k);
            let signed = signed.get(&key.1).unwrap_or(&none);
            let reviewed = reviewed.get(&key).map_or(&[][..], Vec::as_slice);
            (k.clone(), Hold::judge(needs, signed, reviewed))
        })
        .collect()
}
