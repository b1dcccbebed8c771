//! The rules that judge a change, and how a change to them is judged.
//!
//! A *rule* is a setting that decides whether a change may enter an
//! environment:
//!
//! - from `environments.kdl`, the environment's whole block: its place in
//!   the order (`after`), its `approvals`, its change windows (`window`,
//!   `deny-window`) and its manifest `freshness`;
//! - from `fleet.kdl`: the `lint` rules that apply in the environment (with
//!   their severities, limits and scopes), the keys of the approvers its
//!   `approvals` and the `owners` name (`approver`), the fleet's trust
//!   roots (`trust`) and who owns which paths (`owners`, see
//!   `crate::owners`).
//!
//! Each environment's rules are read from the commit recorded for it on the
//! state branch (`rules.json`, [`RulesState`]), never from the commit being
//! judged. A new fleet records the first commit the reconciler sees. When
//! the branch tip's rules for an environment differ from those in force,
//! the change waits for what the rules in force ask of it (their approvals,
//! of the commit that last changed a rule file) and is recorded, so takes
//! effect, only once that is given. So a change can never loosen the rules
//! that judge it, nor approve itself with a key it adds.
//!
//! Pure: models in, decisions out; the caller reads the commits.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use chrono::{DateTime, Utc};
use gitfleet_schemas::owners::Owners;
use gitfleet_schemas::state::{EnvRulesState, PendingRules, RulesState, RULES_FORMAT};
use gitfleet_schemas::{Approvals, Environment, LintRule, Span, Trust};

use crate::model::{FleetModel, ENVIRONMENTS_FILE, FLEET_FILE};

/// The files rules are read from: a commit that leaves both alone leaves
/// every environment's rules alone.
pub const RULE_FILES: [&str; 2] = [FLEET_FILE, ENVIRONMENTS_FILE];

/// One environment's rules, as read from one commit. Spans are dropped:
/// the same rules written elsewhere in a file are the same rules.
#[derive(Clone, Debug)]
pub struct EnvRules {
    /// The commit they were read from.
    pub commit: String,
    pub environment: Environment,
    /// The lint rules that apply in this environment, first of each name.
    pub lints: Vec<LintRule>,
    /// Approver name -> base64 key, for the users `approvals` and the
    /// `owners` rules name.
    pub approvers: BTreeMap<String, String>,
    pub trust: Option<Trust>,
    /// fleet.kdl's `owners` rules, in order.
    pub owners: Vec<Owners>,
}

impl EnvRules {
    /// Environment `env`'s rules in `model`, read at `commit`; `None` when
    /// the model has no such environment.
    pub fn of(model: &FleetModel, env: &str, commit: &str) -> Option<EnvRules> {
        let mut environment = model.environment(env)?.clone();
        environment.span = Span::default();
        let fleet = model.fleet.as_ref().map(|f| &f.doc);
        let mut lints: Vec<LintRule> = Vec::new();
        for rule in fleet.into_iter().flat_map(|f| &f.lints) {
            let here =
                rule.environments.is_empty() || rule.environments.iter().any(|e| e.value == env);
            if here && !lints.iter().any(|l| l.name == rule.name) {
                lints.push(rule.clone());
            }
        }
        let owners: Vec<Owners> = fleet.into_iter().flat_map(|f| f.owners.clone()).collect();
        let mut approvers = BTreeMap::new();
        let users = environment
            .approval_rule()
            .into_iter()
            .flat_map(|a| &a.users)
            .chain(owners.iter().flat_map(|o| &o.users));
        for user in users {
            let key = fleet
                .into_iter()
                .flat_map(|f| &f.approvers)
                .find(|p| p.name.value == user.value);
            if let Some(key) = key {
                approvers.insert(user.value.clone(), key.key.value.clone());
            }
        }
        let trust = fleet.and_then(|f| f.trust.clone()).map(|mut t| {
            t.span = Span::default();
            t
        });
        Some(EnvRules {
            commit: commit.to_owned(),
            environment,
            lints,
            approvers,
            trust,
            owners,
        })
    }

    /// The approvals a change needs here, if any.
    pub fn approval_rule(&self) -> Option<&Approvals> {
        self.environment.approval_rule()
    }

    /// Whether `other` holds the same rules (wherever they were read).
    pub fn same_rules(&self, other: &EnvRules) -> bool {
        self.differences(other).is_empty()
    }

    /// What changes from these rules to `new`, one phrase each, in a
    /// stable order.
    pub fn differences(&self, new: &EnvRules) -> Vec<String> {
        let (a, b) = (&self.environment, &new.environment);
        let mut out = Vec::new();
        if a.after != b.after {
            let after = |e: &Environment| match &e.after {
                Some(p) => format!("after {}", p.value),
                None => "first".to_owned(),
            };
            out.push(format!("order: {} → {}", after(a), after(b)));
        }
        if a.approval_rule() != b.approval_rule() {
            out.push(format!(
                "approvals: {} → {}",
                describe_approvals(a.approval_rule()),
                describe_approvals(b.approval_rule())
            ));
        }
        for (name, was, now) in by_name(&a.windows, &b.windows, |w| &w.name.value) {
            match (was, now) {
                (Some(_), None) => out.push(format!("window `{name}` removed")),
                (None, Some(_)) => out.push(format!("window `{name}` added")),
                (Some(x), Some(y)) if x != y => out.push(format!("window `{name}` changed")),
                _ => {}
            }
        }
        if a.freshness_seconds != b.freshness_seconds {
            let f = |e: &Environment| {
                e.freshness_seconds
                    .as_ref()
                    .map_or("default".to_owned(), |s| format!("{}s", s.value))
            };
            out.push(format!("freshness: {} → {}", f(a), f(b)));
        }
        for (name, was, now) in by_name(&self.lints, &new.lints, |l| &l.name.value) {
            match (was, now) {
                (Some(x), None) => {
                    out.push(format!("lint `{name}` ({}) removed", x.severity.value))
                }
                (None, Some(y)) => out.push(format!("lint `{name}` ({}) added", y.severity.value)),
                (Some(x), Some(y)) if x.severity != y.severity => out.push(format!(
                    "lint `{name}`: {} → {}",
                    x.severity.value, y.severity.value
                )),
                (Some(x), Some(y)) if x != y => {
                    out.push(format!("lint `{name}`: limit or scope changed"))
                }
                _ => {}
            }
        }
        for (pattern, was, now) in by_name(&self.owners, &new.owners, |o| &o.pattern.value) {
            match (was, now) {
                (Some(_), None) => out.push(format!("owners `{pattern}` removed")),
                (None, Some(_)) => out.push(format!("owners `{pattern}` added")),
                (Some(x), Some(y)) if x != y => out.push(format!(
                    "owners `{pattern}`: {} → {}",
                    x.describe(),
                    y.describe()
                )),
                _ => {}
            }
        }
        if out.iter().all(|d| !d.starts_with("owners"))
            && !crate::owners::same_owners(&self.owners, &new.owners)
        {
            out.push("owners reordered".to_owned());
        }
        // Keys matter only while both sides take approvals (or owners);
        // otherwise the approvals line says it all.
        let takes = |r: &EnvRules| r.approval_rule().is_some() || !r.owners.is_empty();
        let both = takes(self) && takes(new);
        let names: BTreeSet<&String> = self
            .approvers
            .keys()
            .chain(new.approvers.keys())
            .filter(|_| both)
            .collect();
        for name in names {
            match (self.approvers.get(name), new.approvers.get(name)) {
                (Some(x), Some(y)) if x != y => out.push(format!("approver `{name}`: key changed")),
                (Some(_), None) => out.push(format!("approver `{name}`: key removed")),
                (None, Some(_)) => out.push(format!("approver `{name}`: key added")),
                _ => {}
            }
        }
        if self.trust != new.trust {
            out.push("trust roots changed".to_owned());
        }
        out
    }
}

/// `2 of alice, bob or team acme/sre`, or `none`.
pub fn describe_approvals(rule: Option<&Approvals>) -> String {
    let Some(a) = rule else {
        return "none".to_owned();
    };
    let mut who: Vec<String> = a.users.iter().map(|u| u.value.clone()).collect();
    who.extend(a.teams.iter().map(|t| format!("team {}", t.value)));
    let who = match who.len() {
        0 => "nobody".to_owned(),
        1 => who.remove(0),
        n => format!("{} or {}", who[..n - 1].join(", "), who[n - 1]),
    };
    format!("{} of {who}", a.required.value)
}

/// Items of two lists paired by name, in name order.
fn by_name<'a, T>(
    a: &'a [T],
    b: &'a [T],
    name: impl Fn(&T) -> &String,
) -> Vec<(String, Option<&'a T>, Option<&'a T>)> {
    let names: BTreeSet<&String> = a.iter().chain(b).map(&name).collect();
    names
        .into_iter()
        .map(|n| {
            (
                n.clone(),
                a.iter().find(|x| name(x) == n),
                b.iter().find(|x| name(x) == n),
            )
        })
        .collect()
}

fn short(commit: &str) -> &str {
    &commit[..commit.len().min(12)]
}

/// Why the rules in force cannot be built from a record.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RulesError {
    #[error("rules.json has format {found}; this gitfleet reads format {RULES_FORMAT}")]
    Format { found: u32 },
    #[error(
        "rules.json says the rules of {environment} are at commit {commit}, which cannot be read"
    )]
    Unreadable { environment: String, commit: String },
    #[error("rules.json says the rules of {environment} are at commit {commit}, whose environments.kdl has no such environment")]
    NoEnvironment { environment: String, commit: String },
}

/// The rules in force in every environment.
#[derive(Clone, Debug, Default)]
pub struct Rules {
    envs: BTreeMap<String, EnvRules>,
}

impl Rules {
    /// Every environment's rules from one commit: a new fleet's, or a
    /// branch tip's for comparison.
    pub fn of_model(model: &FleetModel, commit: &str) -> Rules {
        let envs = model
            .environments
            .iter()
            .filter_map(|e| {
                let name = e.name.value.clone();
                Some((name.clone(), EnvRules::of(model, &name, commit)?))
            })
            .collect();
        Rules { envs }
    }

    /// The rules `state` records, each read from its commit's model
    /// (`model_at(commit)`, `None` when that commit cannot be read).
    pub fn from_state<'m>(
        state: &RulesState,
        model_at: impl Fn(&str) -> Option<&'m FleetModel>,
    ) -> Result<Rules, RulesError> {
        if state.format != RULES_FORMAT {
            return Err(RulesError::Format {
                found: state.format,
            });
        }
        let mut envs = BTreeMap::new();
        for (name, recorded) in &state.environments {
            let model = model_at(&recorded.commit).ok_or_else(|| RulesError::Unreadable {
                environment: name.clone(),
                commit: recorded.commit.clone(),
            })?;
            let rules = EnvRules::of(model, name, &recorded.commit).ok_or_else(|| {
                RulesError::NoEnvironment {
                    environment: name.clone(),
                    commit: recorded.commit.clone(),
                }
            })?;
            envs.insert(name.clone(), rules);
        }
        Ok(Rules { envs })
    }

    pub fn env(&self, name: &str) -> Option<&EnvRules> {
        self.envs.get(name)
    }

    pub fn environment(&self, name: &str) -> Option<&Environment> {
        self.envs.get(name).map(|r| &r.environment)
    }

    /// Environments by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &EnvRules)> {
        self.envs.iter().map(|(n, r)| (n.as_str(), r))
    }

    /// The `owners` rules in force, each pattern once: those of the first
    /// environment that has it (environments' rules differ only while a
    /// change to them waits).
    pub fn owners(&self) -> Vec<Owners> {
        let mut out: Vec<Owners> = Vec::new();
        for r in self.envs.values() {
            for o in &r.owners {
                if !out.iter().any(|x| x.pattern.value == o.pattern.value) {
                    out.push(o.clone());
                }
            }
        }
        out
    }

    /// Environments in the order the rules in force give them.
    pub fn order(&self) -> Vec<&str> {
        order(self.envs.values().map(|r| &r.environment))
    }
}

/// Environments in order: every environment after the one it follows; one
/// whose `after` names an environment not in the list goes first, and
/// environments in a cycle (which `check` reports) are left out.
pub(crate) fn order<'a>(envs: impl Iterator<Item = &'a Environment> + Clone) -> Vec<&'a str> {
    let known: Vec<&str> = envs.clone().map(|e| e.name.value.as_str()).collect();
    let mut out: Vec<&str> = Vec::new();
    let mut progress = true;
    while progress {
        progress = false;
        for e in envs.clone() {
            let name = e.name.value.as_str();
            if out.contains(&name) {
                continue;
            }
            let ready = e.after.as_ref().is_none_or(|a| {
                out.contains(&a.value.as_str()) || !known.contains(&a.value.as_str())
            });
            if ready {
                out.push(name);
                progress = true;
            }
        }
    }
    out
}

/// A change to one environment's rules, between those in force and those
/// of the branch tip.
#[derive(Clone, Debug, PartialEq)]
pub struct RulesChange {
    pub environment: String,
    /// What changes, one phrase each; `environment removed` or `new
    /// environment` when one side has none.
    pub differences: Vec<String>,
    /// The approvals the rules in force ask for it, if any.
    pub needs: Option<Approvals>,
    /// The owners whose approval it waits for besides
    /// (`crate::owners::rules_change_needs`).
    pub owners: Vec<Owners>,
}

/// Every environment whose rules at the branch tip (`head`) differ from
/// those in force.
pub fn changes(in_force: &Rules, head: &FleetModel) -> Vec<RulesChange> {
    let names: BTreeSet<&str> = in_force
        .envs
        .keys()
        .map(String::as_str)
        .chain(head.environments.iter().map(|e| e.name.value.as_str()))
        .collect();
    let mut out = Vec::new();
    for name in names {
        let new = EnvRules::of(head, name, "");
        match (in_force.env(name), new) {
            (None, Some(_)) => out.push(RulesChange {
                environment: name.to_owned(),
                differences: vec!["new environment".to_owned()],
                needs: None,
                // Judged by the owners of another environment's rules, if
                // any: a new environment edits environments.kdl.
                owners: in_force
                    .envs
                    .values()
                    .next()
                    .map(|any| rules_change_needs(any, None))
                    .unwrap_or_default(),
            }),
            (Some(cur), None) => out.push(RulesChange {
                environment: name.to_owned(),
                differences: vec!["environment removed".to_owned()],
                needs: cur.approval_rule().cloned(),
                owners: rules_change_needs(cur, None),
            }),
            (Some(cur), Some(new)) => {
                let differences = cur.differences(&new);
                if !differences.is_empty() {
                    out.push(RulesChange {
                        environment: name.to_owned(),
                        differences,
                        needs: cur.approval_rule().cloned(),
                        owners: rules_change_needs(cur, Some(&new)),
                    });
                }
            }
            (None, None) => {}
        }
    }
    out
}

/// The owners a change to an environment's rules asks, from `in_force` to
/// `new`: the owners of each rule file the change edits, those of every
/// `owners` rule it changes, removes or moves, and for a rule it adds,
/// changes or moves, the owners in force of every rule whose paths that
/// one may share. A rule over paths nobody owned asks only the owners of
/// fleet.kdl.
pub fn rules_change_needs(in_force: &EnvRules, new: Option<&EnvRules>) -> Vec<Owners> {
    let owners = &in_force.owners;
    let Some(new) = new else {
        // An environment removed edits environments.kdl.
        return crate::owners::needed(owners, [ENVIRONMENTS_FILE])
            .into_iter()
            .cloned()
            .collect();
    };
    let mut files = Vec::new();
    if in_force.environment != new.environment {
        files.push(ENVIRONMENTS_FILE);
    }
    let fleet_changed = in_force.lints != new.lints
        || in_force.approvers != new.approvers
        || in_force.trust != new.trust
        || !crate::owners::same_owners(&in_force.owners, &new.owners);
    if fleet_changed {
        files.push(FLEET_FILE);
    }
    let mut out: Vec<Owners> = crate::owners::needed(owners, files)
        .into_iter()
        .cloned()
        .collect();
    let mut ask = |rule: &Owners| {
        if !out.iter().any(|o| o.pattern.value == rule.pattern.value) {
            out.push(rule.clone());
        }
    };
    // The last matching rule owns a path, so a rule's place matters: one
    // removed, changed or moved asks its own owners in force.
    for (i, rule) in owners.iter().enumerate() {
        let kept = new
            .owners
            .get(i)
            .is_some_and(|n| crate::owners::same_rule(n, rule));
        if !kept {
            ask(rule);
        }
    }
    // One added, changed or moved could take over paths: it asks the
    // owners in force of every rule whose paths it may share.
    for (i, rule) in new.owners.iter().enumerate() {
        let kept = owners
            .get(i)
            .is_some_and(|o| crate::owners::same_rule(o, rule));
        if kept {
            continue;
        }
        for old in owners {
            if gitfleet_schemas::owners::may_overlap(&old.pattern.value, &rule.pattern.value) {
                ask(old);
            }
        }
    }
    out
}

/// The `(environment, commit)` approvals the rules changes at the tip wait
/// for (of the environment's approvers or of owners); `change_commit` is
/// the commit that last changed a rule file.
pub fn asks(changes: &[RulesChange], change_commit: &str) -> BTreeSet<(String, String)> {
    changes
        .iter()
        .filter(|c| c.needs.is_some() || !c.owners.is_empty())
        .map(|c| (c.environment.clone(), change_commit.to_owned()))
        .collect()
}

/// A new fleet's record: every environment's rules from `head`, the first
/// commit seen.
pub fn first_seen(head: &FleetModel, head_commit: &str, now: DateTime<Utc>) -> RulesState {
    RulesState {
        format: RULES_FORMAT,
        first_seen: head_commit.to_owned(),
        environments: head
            .environments
            .iter()
            .map(|e| {
                (
                    e.name.value.clone(),
                    EnvRulesState {
                        commit: head_commit.to_owned(),
                        since: now,
                        pending: None,
                    },
                )
            })
            .collect(),
    }
}

/// What one pass decides about the rules: those in force from now on,
/// their record, and what changed.
#[derive(Clone, Debug)]
pub struct RulesPlan {
    pub rules: Rules,
    pub state: RulesState,
    /// One line each, for the state commit's message.
    pub changes: Vec<String>,
    /// Environments whose rules changed in this decision: approvals counted
    /// under their old rules do not hold under the new ones.
    pub adopted: BTreeSet<String>,
}

impl fmt::Display for RulesPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (env, r) in &self.state.environments {
            write!(f, "rules {env:<10} from {}", short(&r.commit))?;
            if let Some(p) = &r.pending {
                write!(f, "; change {} waits: {}", short(&p.commit), p.reason)?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

/// Decide the rules for this pass. `record` and `in_force` are what the
/// state branch says (for a new fleet, [`first_seen`] and its rules);
/// `head` is the spec branch tip, and `change_commit` the commit that last
/// changed a rule file there (the commit approvals must name).
/// `approvals` are the `(environment, commit)` pairs that have theirs,
/// counted under `in_force`; `owners` what each `(environment, commit)`
/// still waits for of the owners it asks (a change that asks owners and
/// is missing here waits for all of them).
///
/// An environment whose rules differ at the tip adopts them when the rules
/// in force ask no approvals, or when `(environment, change_commit)` is
/// approved, and no owner it asks is still waited for; until then it
/// keeps its rules and the change is pending.
pub fn decide(
    record: &RulesState,
    in_force: &Rules,
    head: &FleetModel,
    change_commit: &str,
    approvals: &BTreeSet<(String, String)>,
    owners: &BTreeMap<(String, String), crate::owners::Hold>,
    now: DateTime<Utc>,
) -> RulesPlan {
    let mut state = RulesState {
        format: RULES_FORMAT,
        first_seen: record.first_seen.clone(),
        environments: BTreeMap::new(),
    };
    let mut rules = in_force.clone();
    let mut lines = Vec::new();
    let mut adopted = BTreeSet::new();
    // Unchanged environments keep their record as it is, pending cleared.
    for (name, r) in &record.environments {
        state.environments.insert(
            name.clone(),
            EnvRulesState {
                pending: None,
                ..r.clone()
            },
        );
    }
    for change in changes(in_force, head) {
        let env = &change.environment;
        let what = change.differences.join("; ");
        let key = (env.clone(), change_commit.to_owned());
        let approved = match &change.needs {
            None => true,
            Some(_) => approvals.contains(&key),
        };
        let owners_hold = match owners.get(&key) {
            _ if change.owners.is_empty() => None,
            Some(h) => h.holds().then(|| h.clone()),
            None => Some(crate::owners::Hold::judge(
                &change.owners,
                &BTreeSet::new(),
                &[],
            )),
        };
        if approved && owners_hold.is_none() {
            match EnvRules::of(head, env, change_commit) {
                Some(new) => {
                    rules.envs.insert(env.clone(), new);
                    state.environments.insert(
                        env.clone(),
                        EnvRulesState {
                            commit: change_commit.to_owned(),
                            since: now,
                            pending: None,
                        },
                    );
                }
                None => {
                    rules.envs.remove(env);
                    state.environments.remove(env);
                }
            }
            lines.push(format!(
                "rules {env}: now from {} ({what})",
                short(change_commit)
            ));
            adopted.insert(env.clone());
            continue;
        }
        if let (true, Some(hold)) = (approved, &owners_hold) {
            let reason = format!(
                "{hold} of {} under the rules from {}: {what}",
                short(change_commit),
                in_force.env(env).map_or("", |r| short(&r.commit)),
            );
            pend(&mut state, &mut lines, record, env, change_commit, reason);
            continue;
        }
        let needs = change.needs.as_ref();
        let mut reason = format!(
            "awaiting {} approval{} of {} ({}) under the rules from {}: {what}",
            needs.map_or(0, |a| a.required.value),
            if needs.is_some_and(|a| a.required.value == 1) {
                ""
            } else {
                "s"
            },
            short(change_commit),
            describe_approvals(needs),
            in_force.env(env).map_or("", |r| short(&r.commit)),
        );
        if let Some(hold) = &owners_hold {
            reason.push_str(&format!("; and {hold}"));
        }
        pend(&mut state, &mut lines, record, env, change_commit, reason);
    }
    RulesPlan {
        rules,
        state,
        changes: lines,
        adopted,
    }
}

/// Record the change of `env`'s rules as pending, for `reason`.
fn pend(
    state: &mut RulesState,
    lines: &mut Vec<String>,
    record: &RulesState,
    env: &str,
    change_commit: &str,
    reason: String,
) {
    if let Some(r) = state.environments.get_mut(env) {
        let pending = PendingRules {
            commit: change_commit.to_owned(),
            reason,
        };
        let was = record
            .environments
            .get(env)
            .and_then(|r| r.pending.as_ref());
        if was != Some(&pending) {
            lines.push(format!("rules {env}: change {}", pending.reason));
        }
        r.pending = Some(pending);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::RepoFiles;
    use chrono::TimeZone as _;

    const FLEET: &str = "version 1\nname \"acme\"\napprover \"alice\" key=\"A\"\napprover \"bob\" key=\"B\"\nlint \"route-timeout\" severity=\"error\" { environments \"prod\"; }\n";
    const ENVS: &str = "version 1\nenvironment \"dev\"\nenvironment \"prod\" {\n    after \"dev\"\n    approvals 2 { users \"alice\" \"bob\"; }\n}\n";

    fn model(fleet: &str, envs: &str) -> FleetModel {
        let mut f = RepoFiles::new();
        f.insert("fleet.kdl", fleet);
        f.insert("environments.kdl", envs);
        crate::check::check(&f).model
    }

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 3, 9, 0, 0).unwrap()
    }

    /// The record and rules of a fleet first seen at commit `c0`.
    fn start(m: &FleetModel) -> (RulesState, Rules) {
        let record = first_seen(m, "c0", now());
        let rules = Rules::from_state(&record, |c| (c == "c0").then_some(m)).unwrap();
        (record, rules)
    }

    #[test]
    fn a_new_fleet_takes_its_rules_from_the_first_commit_seen() {
        let m = model(FLEET, ENVS);
        let (record, rules) = start(&m);
        assert_eq!(record.first_seen, "c0");
        assert_eq!(
            record.environments.keys().collect::<Vec<_>>(),
            ["dev", "prod"]
        );
        let plan = decide(
            &record,
            &rules,
            &m,
            "c0",
            &BTreeSet::new(),
            &BTreeMap::new(),
            now(),
        );
        assert_eq!(plan.state, record);
        assert!(plan.changes.is_empty());
        assert_eq!(rules.order(), ["dev", "prod"]);
    }

    #[test]
    fn the_same_rules_written_elsewhere_in_the_file_are_no_change() {
        let m = model(FLEET, ENVS);
        let (_, rules) = start(&m);
        let moved = format!("{ENVS}// a comment moves nothing\n");
        let fleet = FLEET.replace("name \"acme\"\n", "name \"acme\"\n\n\n");
        assert!(changes(&rules, &model(&fleet, &moved)).is_empty());
    }

    #[test]
    fn loosening_prod_waits_for_the_approvals_in_force() {
        let m = model(FLEET, ENVS);
        let (record, rules) = start(&m);
        let loose = model(
            FLEET,
            "version 1\nenvironment \"dev\"\nenvironment \"prod\" { after \"dev\"; }\n",
        );
        let found = changes(&rules, &loose);
        assert_eq!(found.len(), 1);
        assert_eq!(
            found[0].differences,
            ["approvals: 2 of alice or bob → none"]
        );
        assert_eq!(
            asks(&found, "c1"),
            BTreeSet::from([("prod".to_owned(), "c1".to_owned())])
        );
        let plan = decide(
            &record,
            &rules,
            &loose,
            "c1",
            &BTreeSet::new(),
            &BTreeMap::new(),
            now(),
        );
        assert!(plan.rules.env("prod").unwrap().approval_rule().is_some());
        assert_eq!(plan.state.environments["prod"].commit, "c0");
        let pending = plan.state.environments["prod"].pending.as_ref().unwrap();
        assert_eq!(pending.commit, "c1");
        assert_eq!(
            pending.reason,
            "awaiting 2 approvals of c1 (2 of alice or bob) under the rules from c0: approvals: 2 of alice or bob → none"
        );
        // Approvals of another commit do not release it.
        let other = BTreeSet::from([("prod".to_owned(), "c2".to_owned())]);
        let plan = decide(
            &record,
            &rules,
            &loose,
            "c1",
            &other,
            &BTreeMap::new(),
            now(),
        );
        assert!(plan.state.environments["prod"].pending.is_some());
        // Approved: in force from now on.
        let approved = BTreeSet::from([("prod".to_owned(), "c1".to_owned())]);
        let plan = decide(
            &record,
            &rules,
            &loose,
            "c1",
            &approved,
            &BTreeMap::new(),
            now(),
        );
        assert!(plan.rules.env("prod").unwrap().approval_rule().is_none());
        assert_eq!(plan.state.environments["prod"].commit, "c1");
        assert_eq!(plan.state.environments["prod"].pending, None);
        assert_eq!(
            plan.changes,
            ["rules prod: now from c1 (approvals: 2 of alice or bob → none)"]
        );
    }

    #[test]
    fn an_environment_without_approvals_adopts_a_change_at_once() {
        let m = model(FLEET, ENVS);
        let (record, rules) = start(&m);
        let envs = ENVS.replace(
            "environment \"dev\"\n",
            "environment \"dev\" { freshness \"10m\"; }\n",
        );
        let plan = decide(
            &record,
            &rules,
            &model(FLEET, &envs),
            "c1",
            &BTreeSet::new(),
            &BTreeMap::new(),
            now(),
        );
        assert_eq!(plan.state.environments["dev"].commit, "c1");
        assert_eq!(plan.state.environments["prod"].commit, "c0");
        assert_eq!(
            plan.changes,
            ["rules dev: now from c1 (freshness: default → 600s)"]
        );
    }

    #[test]
    fn an_added_approver_key_is_a_rules_change_and_counts_only_once_in_force() {
        let m = model(FLEET, ENVS);
        let (_, rules) = start(&m);
        let fleet = format!("{FLEET}approver \"mallory\" key=\"M\"\n");
        let envs = ENVS.replace("\"alice\" \"bob\"", "\"alice\" \"bob\" \"mallory\"");
        let found = changes(&rules, &model(&fleet, &envs));
        assert_eq!(found.len(), 1);
        assert!(found[0]
            .differences
            .contains(&"approver `mallory`: key added".to_owned()));
        // A key changed under an existing name is a change too.
        let swapped = FLEET.replace("key=\"A\"", "key=\"X\"");
        let found = changes(&rules, &model(&swapped, ENVS));
        assert_eq!(found[0].differences, ["approver `alice`: key changed"]);
        // An approver prod does not take changes nothing of prod.
        let unrelated = format!("{FLEET}approver \"carol\" key=\"C\"\n");
        assert!(changes(&rules, &model(&unrelated, ENVS)).is_empty());
    }

    #[test]
    fn lint_windows_order_and_trust_are_rules() {
        let m = model(FLEET, ENVS);
        let (_, rules) = start(&m);
        let cases = [
            (
                FLEET.replace("severity=\"error\"", "severity=\"warning\""),
                ENVS.to_owned(),
                "lint `route-timeout`: error → warning",
            ),
            (
                FLEET.replace(
                    "lint \"route-timeout\" severity=\"error\" { environments \"prod\"; }\n",
                    "",
                ),
                ENVS.to_owned(),
                "lint `route-timeout` (error) removed",
            ),
            (
                FLEET.to_owned(),
                ENVS.replace("    after \"dev\"\n", ""),
                "order: after dev → first",
            ),
            (
                FLEET.to_owned(),
                ENVS.replace(
                    "    after \"dev\"\n",
                    "    after \"dev\"\n    deny-window \"x\" cron=\"0 0 * * *\" duration=\"1h\" time-zone=\"UTC\"\n",
                ),
                "window `x` added",
            ),
            (
                format!("{FLEET}trust threshold=1 {{ root-key \"K\"; }}\n"),
                ENVS.to_owned(),
                "trust roots changed",
            ),
        ];
        for (fleet, envs, want) in cases {
            let found = changes(&rules, &model(&fleet, &envs));
            let prod = found.iter().find(|c| c.environment == "prod");
            assert!(
                prod.is_some_and(|c| c.differences.contains(&want.to_owned())),
                "{want}: {found:?}"
            );
        }
    }

    #[test]
    fn removing_an_environment_that_takes_approvals_needs_them() {
        let m = model(FLEET, ENVS);
        let (record, rules) = start(&m);
        let gone = model(FLEET, "version 1\nenvironment \"dev\"\n");
        let plan = decide(
            &record,
            &rules,
            &gone,
            "c1",
            &BTreeSet::new(),
            &BTreeMap::new(),
            now(),
        );
        assert!(plan.rules.env("prod").is_some());
        assert!(plan.state.environments["prod"].pending.is_some());
        let approved = BTreeSet::from([("prod".to_owned(), "c1".to_owned())]);
        let plan = decide(
            &record,
            &rules,
            &gone,
            "c1",
            &approved,
            &BTreeMap::new(),
            now(),
        );
        assert!(plan.rules.env("prod").is_none());
        assert!(!plan.state.environments.contains_key("prod"));
    }

    #[test]
    fn a_new_environment_takes_its_rules_at_once() {
        let m = model(FLEET, ENVS);
        let (record, rules) = start(&m);
        let envs = format!("{ENVS}environment \"qa\" {{ after \"dev\"; }}\n");
        let plan = decide(
            &record,
            &rules,
            &model(FLEET, &envs),
            "c1",
            &BTreeSet::new(),
            &BTreeMap::new(),
            now(),
        );
        assert_eq!(plan.state.environments["qa"].commit, "c1");
        assert_eq!(plan.rules.order(), ["dev", "prod", "qa"]);
    }

    #[test]
    fn a_record_naming_an_unreadable_commit_is_an_error() {
        let m = model(FLEET, ENVS);
        let record = first_seen(&m, "c0", now());
        let err = Rules::from_state(&record, |_| None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "rules.json says the rules of dev are at commit c0, which cannot be read"
        );
    }

    const OWNED: &str =
        "owners \"configs/edge/**\" users=\"alice\"\nowners \"fleet.kdl\" users=\"bob\"\n";

    #[test]
    fn a_change_to_an_owners_rule_waits_for_the_owners_in_force() {
        let m = model(&format!("{FLEET}{OWNED}"), ENVS);
        let (record, rules) = start(&m);
        let taken = model(
            &format!(
                "{FLEET}{}",
                OWNED.replace("users=\"alice\"", "users=\"mallory\"")
            ),
            ENVS,
        );
        let changes = changes(&rules, &taken);
        let dev = changes.iter().find(|c| c.environment == "dev").unwrap();
        assert_eq!(dev.needs, None, "dev takes no approvals");
        let asked: Vec<&str> = dev
            .owners
            .iter()
            .map(|o| o.pattern.value.as_str())
            .collect();
        assert_eq!(asked, ["fleet.kdl", "configs/edge/**"], "{dev:?}");
        assert!(
            dev.differences.iter().any(|d| d
                == "owners `configs/edge/**`: configs/edge/** (alice) → configs/edge/** (mallory)"),
            "{:?}",
            dev.differences
        );
        assert!(!asks(&changes, "c1").is_empty());

        // Not judged, or judged by a stranger: the old rules stay.
        let plan = decide(
            &record,
            &rules,
            &taken,
            "c1",
            &BTreeSet::new(),
            &BTreeMap::new(),
            now(),
        );
        assert_eq!(plan.state.environments["dev"].commit, "c0");
        let pending = plan.state.environments["dev"].pending.as_ref().unwrap();
        assert!(
            pending
                .reason
                .starts_with("awaiting owners: fleet.kdl (bob); configs/edge/** (alice) of c1"),
            "{}",
            pending.reason
        );
        let owners_of = |signed: &[&str]| {
            let signed: BTreeSet<String> = signed.iter().map(|s| (*s).to_owned()).collect();
            BTreeMap::from([(
                ("dev".to_owned(), "c1".to_owned()),
                crate::owners::Hold::judge(&dev.owners, &signed, &[]),
            )])
        };
        let plan = decide(
            &record,
            &rules,
            &taken,
            "c1",
            &BTreeSet::new(),
            &owners_of(&["mallory", "bob"]),
            now(),
        );
        assert_eq!(plan.state.environments["dev"].commit, "c0");
        let pending = plan.state.environments["dev"].pending.as_ref().unwrap();
        assert!(
            pending.reason.contains("(approved: fleet.kdl: bob)"),
            "{}",
            pending.reason
        );

        // Both owners in force approve: adopted.
        let plan = decide(
            &record,
            &rules,
            &taken,
            "c1",
            &BTreeSet::new(),
            &owners_of(&["alice", "bob"]),
            now(),
        );
        assert_eq!(plan.state.environments["dev"].commit, "c1");
        assert_eq!(
            plan.rules.env("dev").unwrap().owners[0].users[0].value,
            "mallory"
        );
    }

    #[test]
    fn adding_an_owners_rule_asks_only_the_owners_of_fleet_kdl() {
        let m = model(FLEET, ENVS);
        let (_, rules) = start(&m);
        let owned = model(&format!("{FLEET}{OWNED}"), ENVS);
        let dev = changes(&rules, &owned)
            .into_iter()
            .find(|c| c.environment == "dev")
            .unwrap();
        assert!(
            dev.owners.is_empty(),
            "nobody owned fleet.kdl before: {dev:?}"
        );
        assert!(dev
            .differences
            .iter()
            .any(|d| d == "owners `configs/edge/**` added"));
        // Once fleet.kdl is owned, its owner must approve adding another rule.
        let m = model(&format!("{FLEET}{OWNED}"), ENVS);
        let (_, rules) = start(&m);
        let more = model(
            &format!("{FLEET}{OWNED}owners \"nodes/**\" users=\"carol\"\n"),
            ENVS,
        );
        let asked = owners_asked(&rules, &more);
        assert_eq!(asked, ["fleet.kdl"]);
    }

    /// The patterns of the owners dev's change to `head` asks.
    fn owners_asked(rules: &Rules, head: &FleetModel) -> Vec<String> {
        changes(rules, head)
            .into_iter()
            .find(|c| c.environment == "dev")
            .map(|c| c.owners.iter().map(|o| o.pattern.value.clone()).collect())
            .unwrap_or_default()
    }

    #[test]
    fn a_rule_taking_over_owned_paths_asks_their_owners_in_force() {
        // fleet.kdl is owned by nobody: only the owners of the paths
        // taken can let mallory have them.
        let alice = "owners \"configs/edge/**\" users=\"alice\"\n";
        let m = model(&format!("{FLEET}{alice}"), ENVS);
        let (_, rules) = start(&m);
        for added in [
            "owners \"configs/edge/tls/**\" users=\"mallory\"\n",
            "owners \"configs/**\" users=\"mallory\"\n",
        ] {
            let taken = model(&format!("{FLEET}{alice}{added}"), ENVS);
            let asked = owners_asked(&rules, &taken);
            assert_eq!(asked, ["configs/edge/**"], "{added}");
        }
        // Moving the rule (a new one first, so the old one now comes
        // second) asks the owners of the rule moved.
        let first = model(
            &format!("{FLEET}owners \"nodes/**\" users=\"mallory\"\n{alice}"),
            ENVS,
        );
        let asked = owners_asked(&rules, &first);
        assert_eq!(asked, ["configs/edge/**"]);
    }
}
