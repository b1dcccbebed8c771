//! Owners per path, read: the paths each change touches (a tree diff from
//! what last completed), and who of the owners it asks approved, by
//! signed approval or by pull request review. What that decides lives in
//! `gitfleet_policy::owners`; this module only reads.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use gitfleet_policy::owners::{self, Hold, Need};
use gitfleet_policy::rules::{Rules, RulesChange};
use gitfleet_policy::FleetModel;
use gitfleet_schemas::owners::Owners;
use gitfleet_schemas::state::RolloutState;
use gitfleet_schemas::RolloutTarget;

use crate::git::{Mirror, StateFiles};
use crate::github::GitHub;

/// `(rollout, environment, commit)`: one rollout's change into one
/// environment.
pub type RolloutChange = (String, String, String);

/// The most commits of one change whose pull requests are judged; past
/// that, only a signed approval releases it.
const MAX_REVIEWED_COMMITS: usize = 50;

/// The paths changes touch, kept across passes: a change is diffed once.
#[derive(Debug, Default)]
pub struct Touched {
    /// (base, commit, input paths) -> the paths changed.
    paths: HashMap<(Option<String>, String, Vec<String>), Vec<String>>,
    /// (commit, rollout) -> what the rollout file targeted there.
    targets: HashMap<(String, String), Option<RolloutTarget>>,
}

impl Touched {
    /// What `rollouts/<rollout>.kdl` targeted at `commit`: `None` when it
    /// had no such file (or not a valid one); an error when git could not
    /// say (not kept: asked again next pass).
    fn target_at(
        &mut self,
        mirror: &Mirror,
        commit: &str,
        rollout: &str,
    ) -> Result<Option<RolloutTarget>, crate::git::GitError> {
        let key = (commit.to_owned(), rollout.to_owned());
        if let Some(t) = self.targets.get(&key) {
            return Ok(t.clone());
        }
        let Ok(oid) = git2::Oid::from_str(commit) else {
            return Ok(None);
        };
        let target = mirror
            .blob_at(oid, &format!("rollouts/{rollout}.kdl"))?
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .and_then(|text| gitfleet_schemas::RolloutFile::decode(&text).value)
            .map(|f| f.target.value);
        if self.targets.len() > 256 {
            self.targets.clear();
        }
        self.targets.insert(key, target.clone());
        Ok(target)
    }

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
) -> BTreeMap<RolloutChange, Vec<Need>> {
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
            // A base where the rollout targeted something else (another
            // config) says nothing of this one's files: all of them count.
            let target = &spec.doc.target.value;
            let base = match base {
                None => None,
                Some(b) => match touched.target_at(mirror, &b, rollout) {
                    Ok(then) => (then.as_ref() == Some(target)).then_some(b),
                    Err(e) => {
                        tracing::warn!(rollout = %rollout, environment = %env, commit = %commit, error = %e, "cannot read what the rollout targeted when its change began; it waits for its owners");
                        continue;
                    }
                },
            };
            let inputs = owners::input_paths(target);
            let paths = match touched.paths(mirror, base.clone(), commit, inputs) {
                Ok(paths) => paths.to_vec(),
                Err(e) => {
                    tracing::warn!(rollout = %rollout, environment = %env, commit = %commit, error = %e, "cannot read the paths a change touches; it waits for its owners");
                    continue;
                }
            };
            let mut needs = Vec::new();
            let mut unread = false;
            for rule in owners::needed(&in_force.owners, paths.iter().map(String::as_str)) {
                // Every commit since the change began that changed the
                // rule's paths needs an owner's review, not only the last.
                let commits = match &base {
                    None => Ok(Some(vec![commit.clone()])),
                    Some(base) => {
                        let owned: Vec<String> = paths
                            .iter()
                            .filter(|p| owners::owner_of(&in_force.owners, p) == Some(rule))
                            .cloned()
                            .collect();
                        mirror.commits_touching(base, commit, &owned, MAX_REVIEWED_COMMITS)
                    }
                };
                match commits {
                    Ok(commits) => needs.push(Need {
                        rule: rule.clone(),
                        // No commit changed them since (a branch rewound to
                        // older files, say): nothing reviews can vouch for.
                        commits: commits.filter(|c| !c.is_empty()),
                    }),
                    Err(e) => {
                        tracing::warn!(rollout = %rollout, environment = %env, commit = %commit, error = %e, "cannot read the commits a change brings; it waits for its owners");
                        unread = true;
                        break;
                    }
                }
            }
            // Left out when unread: the planner holds it.
            if !unread {
                out.insert((rollout.clone(), env.to_owned(), commit.clone()), needs);
            }
        }
    }
    out
}

/// The owners each change to the rules asks, by `(environment, commit)`.
pub fn rules_asks(
    changes: &[RulesChange],
    change_commit: &str,
) -> BTreeMap<(String, String), Vec<Need>> {
    changes
        .iter()
        .filter(|c| !c.owners.is_empty())
        .map(|c| {
            let needs = c
                .owners
                .iter()
                .map(|rule| Need {
                    rule: rule.clone(),
                    commits: Some(vec![change_commit.to_owned()]),
                })
                .collect();
            ((c.environment.clone(), change_commit.to_owned()), needs)
        })
        .collect()
}

/// Judge `asks` (keyed by `(environment, commit)` and whatever else `K`
/// carries) by the signed approvals of each commit in its environment
/// among `state_files`, verified under `rules`, and (with GitHub) the
/// reviews of the pull request that brought each commit.
pub async fn judge<K: Ord + Clone>(
    asks: &BTreeMap<K, Vec<Need>>,
    env_commit: impl Fn(&K) -> (String, String),
    model: &FleetModel,
    rules: &Rules,
    state_files: &StateFiles,
    github: Option<&GitHub>,
) -> BTreeMap<K, Hold> {
    if asks.is_empty() {
        return BTreeMap::new();
    }
    // A signed approval counts in the environment it is stored under,
    // verified with the keys of the rules in force there: another
    // environment's keys (a new one's, say, taken from the tip) never
    // release this one's owners.
    let signed = gitfleet_policy::approvals::count(model, rules, state_files).signed;
    // One judgement per (environment, commit) and rule; rollouts asking
    // the same rule there must all be covered.
    let mut by_pull: BTreeMap<(String, String), Vec<Need>> = BTreeMap::new();
    for (k, needs) in asks {
        let slot = by_pull.entry(env_commit(k)).or_default();
        for n in needs {
            match slot
                .iter_mut()
                .find(|o| o.rule.pattern.value == n.rule.pattern.value)
            {
                None => slot.push(n.clone()),
                Some(o) => {
                    o.commits = match (o.commits.take(), &n.commits) {
                        (Some(mut a), Some(b)) => {
                            a.extend(
                                b.iter()
                                    .filter(|c| !a.contains(c))
                                    .cloned()
                                    .collect::<Vec<_>>(),
                            );
                            Some(a)
                        }
                        _ => None,
                    }
                }
            }
        }
    }
    by_pull.retain(|_, needs| needs.iter().any(|n| n.commits.is_some()));
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
            let signed = signed.get(&key).unwrap_or(&none);
            let reviewed = reviewed.get(&key).map_or(&[][..], Vec::as_slice);
            let rules: Vec<Owners> = needs.iter().map(|n| n.rule.clone()).collect();
            (k.clone(), Hold::judge(&rules, signed, reviewed))
        })
        .collect()
}
