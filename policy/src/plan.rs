//! The rollout planner: where every rollout should stand in every
//! environment, given the fleet repo, the last committed state, what nodes
//! report, approvals and the time.
//!
//! `plan` is a pure function and moves each (rollout, environment) at most
//! one phase per call; the reconciler calls it again on every tick. Its
//! result prints (`--dry-run`), becomes the state commit, and becomes the
//! channel manifests: one rollout step is O(1) objects written, because a
//! step is a membership threshold over a stable hash that nodes evaluate
//! themselves.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use chrono::{DateTime, Duration, Utc};
use gitfleet_schemas::state::{EnvState, Phase, RolloutState, Variant, STATE_FORMAT};
use gitfleet_schemas::trust::{member_hash, BundleRef, ChannelRollout};
use gitfleet_schemas::{Gates, Proxy, RolloutFile, RolloutTarget, StepSize, Window};

use crate::model::FleetModel;
use crate::rules::{EnvRules, Rules};
use crate::select::select;
use crate::{lint, window};

/// What one node last reported, as far as the planner cares. Built by the
/// reconciler from a verified, signed status report.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Observation {
    pub at: DateTime<Utc>,
    /// Active bundle digest per rollout name. A short list rather than a
    /// map: a node runs a few rollouts, and a fleet has a million nodes.
    pub active: Vec<(String, String)>,
    pub healthy: bool,
    /// Bundle digest each rollout ran before its active one, where the
    /// node kept one.
    pub previous: Vec<(String, String)>,
    /// The proxy's traffic in the report's window: requests (none when the
    /// node does not read the proxy's metrics), error rate and p99.
    pub requests: Option<u64>,
    pub error_rate: Option<f64>,
    pub p99_latency_ms: Option<u64>,
    /// The same for the routes a rollout's gates are scoped to.
    pub routes: Vec<gitfleet_schemas::status::RouteTraffic>,
    pub cpu_percent: Option<f64>,
    pub memory_percent: Option<f64>,
    /// The HTTP checks the node ran. Empty for most nodes, so it costs a
    /// fleet of a million nodes little.
    pub http_checks: Vec<SeenCheck>,
}

/// One HTTP check result of a report.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SeenCheck {
    /// The check's `ChannelCheck::key`.
    pub key: String,
    /// The URL requested.
    pub url: String,
    pub status: Option<u16>,
    /// The agent's verdict on what only it saw (the body).
    pub ok: bool,
    pub detail: Option<String>,
}

/// The bundle a rollout should deliver, built from the fleet repo.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    pub bundle: BundleRef,
    pub source_commit: String,
    /// The proxy `bundle` is for; `None` for a mesh.
    pub proxy: Option<Proxy>,
    /// A config whose targets run several proxies: the bundle of each
    /// proxy but `proxy`.
    pub variants: BTreeMap<Proxy, BundleRef>,
}

impl Desired {
    /// A rollout's one bundle, for every target (a mesh, or a config
    /// whose targets run one proxy).
    pub fn single(bundle: BundleRef, source_commit: String, proxy: Option<Proxy>) -> Self {
        Desired {
            bundle,
            source_commit,
            proxy,
            variants: BTreeMap::new(),
        }
    }

    /// Its bundle for each proxy (`None`: a mesh's one bundle).
    fn by_proxy(&self) -> BTreeMap<Option<&Proxy>, &BundleRef> {
        std::iter::once((self.proxy.as_ref(), &self.bundle))
            .chain(self.variants.iter().map(|(p, b)| (Some(p), b)))
            .collect()
    }

    /// What an environment whose targets run `proxies` takes: only their
    /// proxies' bundles, the first as its own (all of them when none of
    /// the proxies has one, or for a mesh). An environment of Sentinel
    /// nodes so keeps a one-bundle rollout while another environment
    /// migrates.
    pub fn narrowed(&self, proxies: &BTreeSet<Proxy>) -> Desired {
        if self.proxy.is_none() {
            return self.clone();
        }
        let mut kept: BTreeMap<Proxy, BundleRef> = self
            .by_proxy()
            .into_iter()
            .filter_map(|(p, b)| Some((p?.clone(), b.clone())))
            .filter(|(p, _)| proxies.contains(p))
            .collect();
        let Some((proxy, bundle)) = kept.pop_first() else {
            return self.clone();
        };
        Desired {
            bundle,
            source_commit: self.source_commit.clone(),
            proxy: Some(proxy),
            variants: kept,
        }
    }

    /// `state`'s bundle for each proxy, keyed as [`Desired::by_proxy`]: a
    /// config state without a recorded proxy is Sentinel 0.4.14's.
    fn of_state<'s>(
        &self,
        state: &'s EnvState,
    ) -> BTreeMap<Option<Proxy>, (&'s BundleRef, Option<&'s BundleRef>)> {
        let own = self
            .proxy
            .as_ref()
            .map(|_| state.proxy.clone().unwrap_or_else(Proxy::legacy));
        std::iter::once((own, (&state.target, state.previous.as_ref())))
            .chain(
                state
                    .variants
                    .iter()
                    .map(|(p, v)| (Some(p.clone()), (&v.target, v.previous.as_ref()))),
            )
            .collect()
    }

    /// Whether `state` rolls out these bundles: every proxy it has a bundle
    /// for gets this release's bundle for that proxy. (It may lack some of
    /// them, or have others: see [`Desired::is_target_of`].)
    pub fn agrees_with(&self, state: &EnvState) -> bool {
        let mine = self.by_proxy();
        let theirs = self.of_state(state);
        !theirs.is_empty()
            && theirs
                .iter()
                .all(|(p, (b, _))| mine.get(&p.as_ref()).is_some_and(|m| *m == *b))
    }

    /// Whether `state` rolls out exactly these bundles, for exactly these
    /// proxies.
    pub fn is_target_of(&self, state: &EnvState) -> bool {
        let theirs = self.of_state(state);
        let mine = self.by_proxy();
        self.agrees_with(state)
            && theirs.len() == mine.len()
            && state.proxy.clone().unwrap_or_else(Proxy::legacy)
                == self.proxy.clone().unwrap_or_else(Proxy::legacy)
    }

    /// Every bundle it names.
    pub fn bundles(&self) -> impl Iterator<Item = &BundleRef> {
        std::iter::once(&self.bundle).chain(self.variants.values())
    }
}

/// The proxy a state records for `d`: none for a mesh, nor for a config
/// only Sentinel 0.4.14 runs, whose states so read as they did before
/// proxies were recorded.
fn recorded(d: &Desired) -> Option<Proxy> {
    d.proxy
        .clone()
        .filter(|p| *p != Proxy::legacy() || !d.variants.is_empty())
}

/// What nodes running `proxy` (`None`: a mesh) settled on under `before`:
/// its target once complete, else the bundle it was replacing. A state
/// without a recorded proxy is from before proxies were recorded, when
/// every config ran on Sentinel 0.4.14.
fn settled(before: &EnvState, proxy: Option<&Proxy>) -> Option<BundleRef> {
    let complete = before.phase == Phase::Complete;
    if let Some(v) = proxy.and_then(|p| before.variants.get(p)) {
        return if complete {
            Some(v.target.clone())
        } else {
            v.previous.clone()
        };
    }
    let same = match (proxy, &before.proxy) {
        (None, _) => true,
        (Some(p), Some(q)) => p == q,
        (Some(p), None) => *p == Proxy::legacy(),
    };
    match (same, complete) {
        (false, _) => None,
        (true, true) => Some(before.target.clone()),
        (true, false) => before.previous.clone(),
    }
}

/// A rollout's target nodes in one environment, ordered by member hash.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Members {
    hashes: Vec<u64>,
    nodes: Vec<String>,
}

impl Members {
    pub fn new(rollout: &str, nodes: impl IntoIterator<Item = String>) -> Self {
        let mut v: Vec<(u64, String)> = nodes
            .into_iter()
            .map(|n| (member_hash(rollout, &n), n))
            .collect();
        v.sort_unstable();
        let (hashes, nodes) = v.into_iter().unzip();
        Members { hashes, nodes }
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Node ids in admission order.
    pub fn nodes(&self) -> &[String] {
        &self.nodes
    }

    /// The threshold under which exactly the first `admitted` nodes fall.
    pub fn threshold(&self, admitted: u64) -> u64 {
        match usize::try_from(admitted) {
            Ok(i) if i < self.hashes.len() => self.hashes[i],
            _ => u64::MAX,
        }
    }
}

/// Every rollout's targets, per environment, and the proxy of each node
/// that does not run Sentinel 0.4.14.
#[derive(Clone, Debug, Default)]
pub struct Targets {
    by_rollout: BTreeMap<String, BTreeMap<String, Members>>,
    proxies: HashMap<String, Proxy>,
}

impl Targets {
    /// Targets as the fleet repo selects them.
    pub fn from_model(model: &FleetModel) -> Self {
        let mut t = Targets::default();
        let rules = model
            .fleet
            .as_ref()
            .map_or(&[][..], |f| f.doc.proxies.as_slice());
        for n in &model.nodes {
            let p = crate::proxy::of_node(rules, &n.doc);
            if p != Proxy::legacy() {
                t.proxies.insert(n.doc.id.value.clone(), p);
            }
        }
        for (name, r) in &model.rollouts {
            let mut by_env: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for i in select(model, &r.doc.selector) {
                let n = &model.nodes[i].doc;
                // A held node is no target: skipped by every step, and
                // not counted against max-unavailable.
                if n.hold.is_some() {
                    continue;
                }
                by_env
                    .entry(n.environment.value.clone())
                    .or_default()
                    .push(n.id.value.clone());
            }
            for (env, nodes) in by_env {
                t.insert(name, &env, Members::new(name, nodes));
            }
        }
        t
    }

    pub fn insert(&mut self, rollout: &str, environment: &str, members: Members) {
        self.by_rollout
            .entry(rollout.to_owned())
            .or_default()
            .insert(environment.to_owned(), members);
    }

    pub fn get(&self, rollout: &str, environment: &str) -> Option<&Members> {
        self.by_rollout.get(rollout)?.get(environment)
    }

    /// The proxy `node` runs.
    pub fn proxy(&self, node: &str) -> Proxy {
        self.proxies
            .get(node)
            .cloned()
            .unwrap_or_else(Proxy::legacy)
    }
}

/// Everything `plan` reads.
#[derive(Clone, Copy, Debug)]
pub struct Inputs<'a> {
    pub model: &'a FleetModel,
    pub targets: &'a Targets,
    /// Per rollout; a rollout without a desired bundle is left as it is.
    pub desired: &'a BTreeMap<String, Desired>,
    pub state: &'a BTreeMap<String, RolloutState>,
    pub reports: &'a HashMap<String, Observation>,
    /// `(environment, source commit)` pairs that have their approvals,
    /// counted under `rules`.
    pub approvals: &'a BTreeSet<(String, String)>,
    /// What each `(rollout, environment, source commit)` still waits for
    /// of the owners its change touches; a change in an environment whose rules
    /// name owners and that is missing here was not judged, and waits.
    pub owners: &'a BTreeMap<(String, String, String), crate::owners::Hold>,
    /// The rules in force in each environment (order, approvals, windows,
    /// lint): those of the last commit deployed there, never the tip's.
    pub rules: &'a Rules,
    pub now: DateTime<Utc>,
}

/// The decision for one rollout in one environment.
#[derive(Clone, Debug, PartialEq)]
pub struct EnvPlan {
    pub environment: String,
    pub before: Option<EnvState>,
    pub after: EnvState,
    pub targets: usize,
    pub steps: u32,
    /// Nodes with a member hash below this run `after.target`.
    pub membership_threshold: u64,
}

impl EnvPlan {
    pub fn changed(&self) -> bool {
        self.before.as_ref() != Some(&self.after)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct RolloutPlan {
    pub name: String,
    pub environments: Vec<EnvPlan>,
}

/// The planner's whole decision: printable, comparable, committable.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub now: DateTime<Utc>,
    pub rollouts: Vec<RolloutPlan>,
}

impl Plan {
    /// Whether a rollout is moving (progressing or verifying) in
    /// `environment`, or in any environment when `None`.
    pub fn moving(&self, environment: Option<&str>) -> bool {
        self.rollouts.iter().any(|r| {
            r.environments.iter().any(|e| {
                environment.is_none_or(|env| e.environment == env)
                    && matches!(e.after.phase, Phase::Progressing | Phase::Verifying)
            })
        })
    }

    /// The state to commit.
    pub fn state(&self) -> BTreeMap<String, RolloutState> {
        self.rollouts
            .iter()
            .map(|r| {
                let environments = r
                    .environments
                    .iter()
                    .map(|e| (e.environment.clone(), e.after.clone()))
                    .collect();
                (
                    r.name.clone(),
                    RolloutState {
                        format: STATE_FORMAT,
                        environments,
                    },
                )
            })
            .collect()
    }

    /// What the channel manifest of `environment` should list.
    pub fn channel_rollouts(&self, model: &FleetModel, environment: &str) -> Vec<ChannelRollout> {
        let mut out = Vec::new();
        for r in &self.rollouts {
            let Some(e) = r.environments.iter().find(|e| e.environment == environment) else {
                continue;
            };
            let doc = model.rollouts.get(&r.name).map(|f| &f.doc);
            let (selector, requirements, nodes) = doc
                .map(|d| crate::select::Flat::of(model, &d.selector).into_channel())
                .unwrap_or_default();
            let http_checks = doc
                .map(|d| {
                    d.gates
                        .http_checks
                        .iter()
                        .map(crate::channel::channel_check)
                        .collect()
                })
                .unwrap_or_default();
            let entry = ChannelRollout {
                name: r.name.clone(),
                selector,
                requirements,
                nodes,
                bundle: e.after.target.clone(),
                previous: e.after.previous.clone(),
                step: e.after.step,
                steps: e.steps,
                membership_threshold: e.membership_threshold,
                http_checks,
                traffic_route: doc.and_then(|d| d.gates.route.as_ref().map(|r| r.value.clone())),
                min_requests: doc
                    .filter(|d| d.gates.judges_traffic())
                    .map(|d| d.gates.min_requests()),
                rolled_back: matches!(e.after.phase, Phase::Failed | Phase::RolledBack),
                proxy: None,
            };
            // Nodes of several proxies: one entry per proxy, each naming
            // that proxy's bundles; a node takes only its own proxy's.
            if !e.after.variants.is_empty() {
                for (proxy, v) in &e.after.variants {
                    out.push(ChannelRollout {
                        bundle: v.target.clone(),
                        previous: v.previous.clone(),
                        proxy: Some(proxy.clone()),
                        ..entry.clone()
                    });
                }
                out.push(ChannelRollout {
                    proxy: Some(e.after.proxy.clone().unwrap_or_else(Proxy::legacy)),
                    ..entry
                });
            } else {
                out.push(entry);
            }
        }
        out
    }

    /// The changes, one line each, for a commit message.
    pub fn changes(&self) -> Vec<String> {
        let mut out = Vec::new();
        for r in &self.rollouts {
            for e in r.environments.iter().filter(|e| e.changed()) {
                out.push(format!("{}/{}: {}", r.name, e.environment, e.after.reason));
            }
        }
        out
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "plan at {}", self.now.to_rfc3339())?;
        for r in &self.rollouts {
            writeln!(f, "rollout {}", r.name)?;
            for e in &r.environments {
                let mark = if e.changed() { "*" } else { " " };
                writeln!(
                    f,
                    " {mark} {:<10} {:<17} step {}/{}  {}/{} nodes  {}",
                    e.environment,
                    e.after.phase.to_string(),
                    e.after.step,
                    e.steps,
                    match e.after.phase {
                        Phase::Complete => e.targets as u64,
                        Phase::Failed | Phase::RolledBack => 0,
                        _ => e.after.admitted,
                    },
                    e.targets,
                    e.after.reason
                )?;
            }
        }
        Ok(())
    }
}

/// Where the membership threshold stands in a phase: everyone on the target
/// once complete, no one after a failure (they run the previous bundle),
/// otherwise as far as admission has got.
fn threshold_for(phase: Phase, admitted: impl FnOnce() -> u64) -> u64 {
    match phase {
        Phase::Complete => u64::MAX,
        Phase::Failed | Phase::RolledBack => 0,
        _ => admitted(),
    }
}

/// Environments in order: every environment after the one it follows.
/// Environments in a cycle (which `check` reports) are left out.
pub fn environment_order(model: &FleetModel) -> Vec<&str> {
    crate::rules::order(model.environments.iter())
}

/// How many of `n` targets step `size` covers.
pub fn planned(size: &StepSize, n: usize) -> u64 {
    let n = n as u64;
    match *size {
        StepSize::Count(c) => c.min(n),
        StepSize::Percent(p) => (p.min(100) * n).div_ceil(100),
    }
}

/// Settings of one rollout, with fleet defaults applied.
struct Spec<'a> {
    name: &'a str,
    file: &'a RolloutFile,
    steps: Vec<StepSize>,
    max_unavailable: u64,
    bake: Duration,
    deadline: Option<Duration>,
}

fn seconds(s: u64) -> Duration {
    Duration::seconds(i64::try_from(s).unwrap_or(i64::MAX / 1000))
}

/// Decide the next state of every rollout in every environment.
pub fn plan(inputs: &Inputs<'_>) -> Plan {
    let model = inputs.model;
    let defaults = model.fleet.as_ref().map(|f| &f.doc.defaults);
    let order = inputs.rules.order();
    let mut rollouts = Vec::new();
    for (name, located) in &model.rollouts {
        let file = &located.doc;
        let spec = Spec {
            name,
            file,
            steps: file.steps.iter().map(|s| s.size.value.clone()).collect(),
            max_unavailable: file
                .max_unavailable
                .as_ref()
                .or(defaults.and_then(|d| d.max_unavailable.as_ref()))
                .map_or(1, |m| m.value.max(1)),
            bake: seconds(
                file.bake_seconds
                    .as_ref()
                    .or(defaults.and_then(|d| d.bake_seconds.as_ref()))
                    .map_or(0, |b| b.value),
            ),
            deadline: file
                .progress_deadline_seconds
                .as_ref()
                .or(defaults.and_then(|d| d.progress_deadline_seconds.as_ref()))
                .map(|d| seconds(d.value)),
        };
        let state = inputs.state.get(name.as_str());
        let mut envs: Vec<EnvPlan> = Vec::new();
        for env in &order {
            let before = state.and_then(|s| s.environments.get(*env)).cloned();
            let Some(members) = inputs.targets.get(name, env).filter(|m| !m.is_empty()) else {
                // No targets here now (a selector or label edit): keep what
                // the state says, so `previous` survives a passing mistake.
                if let Some(b) = before {
                    let membership_threshold = threshold_for(b.phase, || 0);
                    envs.push(EnvPlan {
                        environment: (*env).to_owned(),
                        before: Some(b.clone()),
                        after: b,
                        targets: 0,
                        steps: spec.steps.len() as u32,
                        membership_threshold,
                    });
                }
                continue;
            };
            let after = match (inputs.desired.get(name.as_str()), inputs.rules.env(env)) {
                (Some(desired), Some(rules)) => {
                    let gate =
                        predecessor_gate(inputs.rules, inputs.targets, name, env, &envs, desired);
                    let proxies: BTreeSet<Proxy> = members
                        .nodes()
                        .iter()
                        .map(|n| inputs.targets.proxy(n))
                        .collect();
                    let desired = desired.narrowed(&proxies);
                    Step {
                        inputs,
                        spec: &spec,
                        env,
                        rules,
                        members,
                        desired: &desired,
                        gate,
                    }
                    .next(before.as_ref())
                }
                _ => match &before {
                    Some(b) => b.clone(),
                    None => continue,
                },
            };
            let membership_threshold =
                threshold_for(after.phase, || members.threshold(after.admitted));
            envs.push(EnvPlan {
                environment: (*env).to_owned(),
                before,
                after,
                targets: members.len(),
                steps: spec.steps.len() as u32,
                membership_threshold,
            });
        }
        rollouts.push(RolloutPlan {
            name: name.clone(),
            environments: envs,
        });
    }
    Plan {
        now: inputs.now,
        rollouts,
    }
}

/// The environment this one waits for, if that one has not completed the
/// desired bundle: the nearest earlier environment that has targets, by
/// the order the rules in force give.
fn predecessor_gate(
    rules: &Rules,
    targets: &Targets,
    rollout: &str,
    env: &str,
    planned: &[EnvPlan],
    desired: &Desired,
) -> Option<String> {
    let mut at = rules
        .environment(env)?
        .after
        .as_ref()
        .map(|a| a.value.clone());
    let mut hops = 0;
    while let Some(prev) = at {
        hops += 1;
        if hops > rules.iter().count() {
            return None;
        }
        if targets.get(rollout, &prev).is_some_and(|m| !m.is_empty()) {
            let done = planned.iter().any(|p| {
                p.environment == prev
                    && p.after.phase == Phase::Complete
                    && desired.agrees_with(&p.after)
            });
            return (!done).then_some(prev);
        }
        at = rules
            .environment(&prev)?
            .after
            .as_ref()
            .map(|a| a.value.clone());
    }
    None
}

/// One (rollout, environment) moving one phase.
struct Step<'a, 'i> {
    inputs: &'a Inputs<'i>,
    spec: &'a Spec<'a>,
    env: &'a str,
    /// The rules in force in `env`.
    rules: &'a EnvRules,
    members: &'a Members,
    desired: &'a Desired,
    gate: Option<String>,
}

fn short(digest: &str) -> &str {
    let hex = digest.trim_start_matches("sha256:");
    &hex[..hex.len().min(12)]
}

fn short_commit(commit: &str) -> &str {
    &commit[..commit.len().min(12)]
}

impl Step<'_, '_> {
    fn now(&self) -> DateTime<Utc> {
        self.inputs.now
    }

    fn steps(&self) -> u32 {
        self.spec.steps.len() as u32
    }

    /// The state after this pass, with the nodes on target counted while
    /// the rollout moves and once as it ends (an ended rollout's state
    /// stays put, whatever nodes come and go).
    fn next(&self, before: Option<&EnvState>) -> EnvState {
        let s = self.next_phase(before);
        let ends_now = before.is_none_or(|b| b.phase != s.phase || b.target != s.target);
        match s.phase {
            Phase::Progressing | Phase::Verifying | Phase::Paused => self.counted(s),
            Phase::Complete | Phase::Failed | Phase::RolledBack if ends_now => self.counted(s),
            _ => s,
        }
    }

    fn counted(&self, s: EnvState) -> EnvState {
        let on = self
            .members
            .nodes()
            .iter()
            .filter(|n| self.on_target(n))
            .count() as u64;
        EnvState {
            on_target: Some(on),
            ..s
        }
    }

    fn next_phase(&self, before: Option<&EnvState>) -> EnvState {
        let s = match before {
            Some(b) if self.desired.is_target_of(b) => b.clone(),
            // Same bundles, another set of proxies (a node moved to
            // another proxy): the rollout goes on where it is.
            Some(b) if self.desired.agrees_with(b) => self.regroup(b),
            b => self.fresh(b),
        };
        if self.spec.file.rollback && !matches!(s.phase, Phase::Failed | Phase::RolledBack) {
            let reason = format!("rollback requested in rollouts/{}.kdl", self.spec.name);
            return self.fail(s, reason, Vec::new());
        }
        if let Some(reason) = self.revoked(&s) {
            if !matches!(s.phase, Phase::Failed | Phase::RolledBack) {
                return self.fail(s, reason, Vec::new());
            }
        }
        match s.phase {
            Phase::Complete | Phase::Failed | Phase::RolledBack => s,
            Phase::Progressing | Phase::Verifying | Phase::WaitingWindow
                if self.spec.file.paused =>
            {
                self.to(
                    s,
                    Phase::Paused,
                    format!("paused in rollouts/{}.kdl", self.spec.name),
                )
            }
            Phase::Paused if self.spec.file.paused => s,
            Phase::Paused => {
                let s = self.to(s, Phase::Progressing, "resumed".to_owned());
                self.progress(s)
            }
            Phase::Pending => match &self.gate {
                Some(prev) => {
                    let reason = format!(
                        "waiting for {prev} to complete {}",
                        short(&self.desired.bundle.digest)
                    );
                    EnvState { reason, ..s }
                }
                None => self.after_gate(s),
            },
            Phase::AwaitingApproval => self.after_gate(s),
            // Approvals hold until the first node is admitted: one dismissed
            // while the window is closed sends the change back to wait.
            Phase::WaitingWindow => self.after_gate(s),
            Phase::Progressing => self.progress(s),
            Phase::Verifying => self.verify(s),
        }
    }

    /// Why `s`'s target (or one proxy's) may not run, when fleet.kdl
    /// revokes it: the rollout rolls back, and a revoked bundle is never
    /// rolled out.
    fn revoked(&self, s: &EnvState) -> Option<String> {
        let fleet = &self.inputs.model.fleet.as_ref()?.doc;
        let targets = std::iter::once(&s.target).chain(s.variants.values().map(|v| &v.target));
        for target in targets {
            if let Some(r) = fleet
                .revoked
                .iter()
                .find(|r| r.digest.value == target.digest)
            {
                let why = r
                    .reason
                    .as_ref()
                    .map_or(String::new(), |w| format!(": {}", w.value));
                return Some(format!(
                    "bundle {} is revoked in fleet.kdl{why}",
                    short(&target.digest)
                ));
            }
        }
        None
    }

    /// `before` with this release's proxies: a proxy it had keeps its
    /// previous bundle, one it lacked starts from what its nodes settled
    /// on; phase, step and admissions stay.
    fn regroup(&self, before: &EnvState) -> EnvState {
        let d = self.desired;
        let theirs = d.of_state(before);
        let previous = |p: Option<&Proxy>| match theirs.get(&p.cloned()) {
            Some((_, previous)) => previous.cloned(),
            None => settled(before, p),
        };
        EnvState {
            target: d.bundle.clone(),
            proxy: recorded(d),
            previous: previous(d.proxy.as_ref()),
            variants: d
                .variants
                .iter()
                .map(|(p, target)| {
                    let v = Variant {
                        target: target.clone(),
                        previous: previous(Some(p)),
                    };
                    (p.clone(), v)
                })
                .collect(),
            ..before.clone()
        }
    }

    /// A new target, replacing `before`: each proxy's nodes keep what they
    /// settled on under it as their previous bundle.
    fn fresh(&self, before: Option<&EnvState>) -> EnvState {
        let d = self.desired;
        let previous = before.and_then(|b| settled(b, d.proxy.as_ref()));
        let variants = d
            .variants
            .iter()
            .map(|(p, target)| {
                let previous = before.and_then(|b| settled(b, Some(p)));
                (
                    p.clone(),
                    Variant {
                        target: target.clone(),
                        previous,
                    },
                )
            })
            .collect();
        EnvState {
            target: d.bundle.clone(),
            source_commit: d.source_commit.clone(),
            changed_from: crate::owners::change_base(before),
            proxy: recorded(d),
            variants,
            previous,
            phase: Phase::Pending,
            step: 0,
            admitted: 0,
            on_target: None,
            since: self.now(),
            reason: format!("new bundle {}", short(&self.desired.bundle.digest)),
            failed_nodes: Vec::new(),
        }
    }

    fn to(&self, s: EnvState, phase: Phase, reason: String) -> EnvState {
        EnvState {
            phase,
            since: self.now(),
            reason,
            ..s
        }
    }

    /// Past the environment order: lint, approvals, then the window, each
    /// as the rules in force here say.
    fn after_gate(&self, s: EnvState) -> EnvState {
        if let Some(why) = self.lint_hold() {
            let reason = format!(
                "held by lint under the rules from {}: {why}",
                short_commit(&self.rules.commit)
            );
            if s.phase == Phase::Pending && s.reason == reason {
                return s;
            }
            return self.to(s, Phase::Pending, reason);
        }
        let change = (
            self.spec.name.to_owned(),
            self.env.to_owned(),
            s.source_commit.clone(),
        );
        let owners = match self.inputs.owners.get(&change) {
            Some(hold) if hold.holds() => Some(format!(
                "{hold} of {}",
                &s.source_commit[..s.source_commit.len().min(12)]
            )),
            Some(_) => None,
            None if !self.rules.owners.is_empty() => Some(format!(
                "awaiting owners: the paths {} touches are not known yet",
                &s.source_commit[..s.source_commit.len().min(12)]
            )),
            None => None,
        };
        if let Some(reason) = owners {
            if s.phase == Phase::AwaitingApproval && s.reason == reason {
                return s;
            }
            return self.to(s, Phase::AwaitingApproval, reason);
        }
        if let Some(a) = self.rules.approval_rule() {
            let key = (self.env.to_owned(), s.source_commit.clone());
            if !self.inputs.approvals.contains(&key) {
                let reason = format!(
                    "awaiting {} approval{} of {}",
                    a.required.value,
                    if a.required.value == 1 { "" } else { "s" },
                    &s.source_commit[..s.source_commit.len().min(12)]
                );
                if s.phase == Phase::AwaitingApproval && s.reason == reason {
                    return s;
                }
                return self.to(s, Phase::AwaitingApproval, reason);
            }
        }
        self.start(s)
    }

    /// The first lint finding that keeps the rollout's config out of this
    /// environment, with how many more there are.
    fn lint_hold(&self) -> Option<String> {
        let RolloutTarget::Config(config) = &self.spec.file.target.value else {
            return None;
        };
        let dir = self.inputs.model.configs.get(config)?;
        let found = lint::blocking(&self.rules.lints, self.env, dir);
        let first = found.first()?;
        Some(match found.len() {
            1 => first.clone(),
            n => format!("{first} (and {} more)", n - 1),
        })
    }

    /// The environment's windows (from the rules in force) and the
    /// rollout's own.
    fn windows(&self) -> impl Iterator<Item = &Window> {
        self.rules
            .environment
            .windows
            .iter()
            .chain(self.spec.file.windows.iter())
    }

    /// Begin (or continue) stepping if the window allows.
    fn start(&self, s: EnvState) -> EnvState {
        if self.spec.file.paused {
            return self.to(
                s,
                Phase::Paused,
                format!("paused in rollouts/{}.kdl", self.spec.name),
            );
        }
        match window::verdict(self.windows(), self.now()) {
            window::Verdict::Closed { reason } => {
                if s.phase == Phase::WaitingWindow {
                    EnvState { reason, ..s }
                } else {
                    self.to(s, Phase::WaitingWindow, reason)
                }
            }
            window::Verdict::Open { .. } => {
                let step = s.step.max(1);
                let s = EnvState {
                    step,
                    ..self.to(s, Phase::Progressing, String::new())
                };
                self.progress(s)
            }
        }
    }

    fn report(&self, node: &str) -> Option<&Observation> {
        self.inputs.reports.get(node)
    }

    /// The new bundle `node` takes: its proxy's.
    fn digest_for(&self, node: &str) -> &str {
        let d = self.desired;
        if d.variants.is_empty() {
            return &d.bundle.digest;
        }
        let proxy = self.inputs.targets.proxy(node);
        &d.variants.get(&proxy).unwrap_or(&d.bundle).digest
    }

    /// The node reports running the new bundle (healthy or not: health is
    /// for the gates).
    fn on_target(&self, node: &str) -> bool {
        self.report(node)
            .is_some_and(|r| r.active_digest(self.spec.name) == Some(self.digest_for(node)))
    }

    fn healthy(&self, node: &str) -> bool {
        self.report(node).is_some_and(|r| r.healthy)
    }

    fn progress(&self, mut s: EnvState) -> EnvState {
        let k = s.step.clamp(1, self.steps().max(1));
        let planned = self
            .spec
            .steps
            .get(k as usize - 1)
            .map_or(self.members.len() as u64, |size| {
                planned(size, self.members.len())
            });
        let nodes = self.members.nodes();
        let admitted = usize::try_from(s.admitted)
            .unwrap_or(usize::MAX)
            .min(nodes.len());
        let converged = nodes[..admitted]
            .iter()
            .filter(|n| self.on_target(n))
            .count() as u64;
        // A node that took the new bundle and is unhealthy fails the step
        // now: waiting would only hold up admission behind it.
        let sick: Vec<String> = nodes[..admitted]
            .iter()
            .filter(|n| self.on_target(n) && !self.healthy(n))
            .cloned()
            .collect();
        if let Some(first) = sick.first() {
            let reason = format!(
                "step {k}/{}: {} node{} unhealthy on the new bundle ({first})",
                self.steps(),
                sick.len(),
                if sick.len() == 1 { " is" } else { "s are" }
            );
            return self.fail(s, reason, sick);
        }
        // So does one whose traffic on it already fails a gate.
        let failing: Vec<(String, String)> = nodes[..admitted]
            .iter()
            .filter_map(|n| {
                let why = traffic_failure(
                    &self.spec.file.gates,
                    self.report(n)?,
                    self.spec.name,
                    self.digest_for(n),
                )?;
                Some((n.clone(), why))
            })
            .collect();
        if !failing.is_empty() {
            return self.gates_failed(s, k, failing);
        }
        // Unavailable: admitted but not yet on the new bundle, or anywhere in
        // the environment unhealthy or silent.
        let unavailable = nodes
            .iter()
            .enumerate()
            .filter(|(i, n)| (*i < admitted && !self.on_target(n)) || !self.healthy(n))
            .count() as u64;
        if let Some(deadline) = self.spec.deadline {
            if self.now() - s.since > deadline && converged < planned {
                let reason = format!(
                    "step {k}/{} missed its progress deadline: {converged} of {planned} nodes on the new bundle",
                    self.steps()
                );
                let failed = nodes[..admitted]
                    .iter()
                    .filter(|n| !self.on_target(n))
                    .cloned()
                    .collect();
                return self.fail(s, reason, failed);
            }
        }
        if s.admitted < planned {
            let verdict = window::verdict(self.windows(), self.now());
            if let window::Verdict::Closed { reason } = verdict {
                s.reason = format!(
                    "step {k}/{}: {reason}; {} of {planned} admitted",
                    self.steps(),
                    s.admitted
                );
                return s;
            }
            let room = self.spec.max_unavailable.saturating_sub(unavailable);
            s.admitted += room.min(planned - s.admitted);
        }
        if s.admitted == planned && converged == planned {
            let reason = format!(
                "step {k}/{}: {planned} of {} nodes on the new bundle; baking {}s",
                self.steps(),
                self.members.len(),
                self.spec.bake.num_seconds()
            );
            return EnvState {
                step: k,
                ..self.to(s, Phase::Verifying, reason)
            };
        }
        s.step = k;
        s.reason = format!(
            "step {k}/{}: {converged} of {planned} nodes on the new bundle, {} admitted; {unavailable} unavailable (unhealthy, silent or switching), max-unavailable {}",
            self.steps(),
            s.admitted,
            self.spec.max_unavailable
        );
        s
    }

    fn verify(&self, s: EnvState) -> EnvState {
        let elapsed = self.now() - s.since;
        let k = s.step;
        let admitted = usize::try_from(s.admitted)
            .unwrap_or(usize::MAX)
            .min(self.members.len());
        let step_nodes = &self.members.nodes()[..admitted];
        let baking = elapsed < self.spec.bake;
        let mut stale = 0;
        let mut failures: Vec<(String, String)> = Vec::new();
        let mut thin: Vec<(&str, u64, u64)> = Vec::new();
        let mut passed: Vec<&Observation> = Vec::new();
        let g = &self.spec.file.gates;
        for n in step_nodes {
            let digest = self.digest_for(n);
            let Some(r) = self.report(n) else {
                stale += 1;
                continue;
            };
            // The traffic on the new bundle fails the step whenever it
            // shows: bake or not, fresh or not (the window of a report
            // that names the new bundle began at its activation).
            if let Some(why) = traffic_failure(g, r, self.spec.name, digest) {
                failures.push((n.clone(), why));
                continue;
            }
            if baking || r.at < s.since {
                stale += usize::from(r.at < s.since);
                continue;
            }
            match judge(g, r, self.spec.name, digest) {
                Judged::Pass => passed.push(r),
                Judged::Fail(why) => failures.push((n.clone(), why)),
                Judged::Short { requests, needed } => thin.push((n, requests, needed)),
            }
        }
        if !failures.is_empty() {
            return self.gates_failed(s, k, failures);
        }
        if baking {
            // A stable reason: the state (and so the state branch) changes
            // only when something happens, not on every pass.
            return EnvState {
                reason: format!(
                    "step {k}/{}: baking until {}",
                    self.steps(),
                    (s.since + self.spec.bake).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                ),
                ..s
            };
        }
        if let Some(&(node, requests, needed)) = thin.iter().min_by_key(|(_, r, _)| *r) {
            if let Some(deadline) = self.spec.deadline {
                if elapsed > self.spec.bake + deadline {
                    let reason = format!(
                        "step {k}/{}: not enough traffic by the progress deadline: {} node{} below {needed} requests ({node}: {requests})",
                        self.steps(),
                        thin.len(),
                        if thin.len() == 1 { "" } else { "s" }
                    );
                    let failed = thin.iter().map(|(n, _, _)| (*n).to_owned()).collect();
                    return self.fail(s, reason, failed);
                }
            }
            // Stable while waiting (the live count is on the status page):
            // the state branch changes when something happens.
            return EnvState {
                reason: format!(
                    "step {k}/{}: waiting for traffic: {needed} requests per node",
                    self.steps()
                ),
                ..s
            };
        }
        if stale > 0 {
            if let Some(deadline) = self.spec.deadline {
                if elapsed > self.spec.bake + deadline {
                    let reason = format!(
                        "step {k}/{}: {stale} nodes sent no report since the step began",
                        self.steps()
                    );
                    let failed = step_nodes
                        .iter()
                        .filter(|n| self.report(n).is_none_or(|r| r.at < s.since))
                        .cloned()
                        .collect();
                    return self.fail(s, reason, failed);
                }
            }
            return EnvState {
                reason: format!(
                    "step {k}/{}: waiting for fresh reports from {stale} nodes",
                    self.steps()
                ),
                ..s
            };
        }
        // What the gates passed on, for the state branch's history.
        let measured = measured(&self.spec.file.gates, &passed);
        if k >= self.steps() {
            let reason = format!(
                "complete: {} nodes on {}, gates passed{measured}",
                self.members.len(),
                short(&self.desired.bundle.digest)
            );
            return EnvState {
                admitted: self.members.len() as u64,
                ..self.to(s, Phase::Complete, reason)
            };
        }
        let s = EnvState {
            step: k + 1,
            ..self.to(s, Phase::Progressing, String::new())
        };
        let next = self.progress(s);
        if measured.is_empty() {
            return next;
        }
        EnvState {
            reason: format!("step {k} passed{measured}; {}", next.reason),
            ..next
        }
    }

    /// Fail step `k` on the (node, why) pairs whose gates failed, naming
    /// the first.
    fn gates_failed(&self, s: EnvState, k: u32, failures: Vec<(String, String)>) -> EnvState {
        let (node, why) = &failures[0];
        let reason = format!(
            "step {k}/{}: gates failed on {} node{} ({node}: {why})",
            self.steps(),
            failures.len(),
            if failures.len() == 1 { "" } else { "s" }
        );
        self.fail(s, reason, failures.into_iter().map(|(n, _)| n).collect())
    }

    /// End the rollout here: its targets go back to a bundle known to work.
    /// That is the environment's previous bundle when it has one (the last
    /// one this rollout completed there); otherwise each node's own, the
    /// one it ran before (agents keep it). Only a node that never ran
    /// another bundle has nothing to go back to.
    fn fail(&self, s: EnvState, reason: String, failed_nodes: Vec<String>) -> EnvState {
        // Each proxy's nodes go back to that proxy's previous bundle; those
        // of a proxy without one, each to the bundle it ran before.
        let previous_of = |node: &str| -> Option<&BundleRef> {
            match s.variants.get(&self.inputs.targets.proxy(node)) {
                Some(v) => v.previous.as_ref(),
                None => s.previous.as_ref(),
            }
        };
        let all = s.previous.is_some() && s.variants.values().all(|v| v.previous.is_some());
        let (phase, reason) = match &s.previous {
            Some(p) if all => (
                Phase::RolledBack,
                format!("rolled back to {}: {reason}", short(&p.digest)),
            ),
            _ => {
                let admitted = usize::try_from(s.admitted)
                    .unwrap_or(usize::MAX)
                    .min(self.members.len());
                let on_new: Vec<&String> = self.members.nodes()[..admitted]
                    .iter()
                    .filter(|n| self.on_target(n) && previous_of(n).is_none())
                    .collect();
                let bare: Vec<&&String> = on_new
                    .iter()
                    .filter(|n| {
                        self.report(n).is_none_or(|r| {
                            !r.previous.iter().any(|(name, _)| name == self.spec.name)
                        })
                    })
                    .collect();
                let some =
                    s.previous.is_some() || s.variants.values().any(|v| v.previous.is_some());
                let to = if some {
                    "their proxy's previous bundle, or the bundle each node ran before"
                } else {
                    "the bundle each node ran before"
                };
                if !some && (on_new.is_empty() || bare.len() == on_new.len()) {
                    (
                        Phase::Failed,
                        format!("failed, nothing to roll back to: {reason}"),
                    )
                } else if let Some(first) = bare.first() {
                    (
                        Phase::RolledBack,
                        format!(
                            "rolled back to {to}, except {} node{} that never ran another ({first}): {reason}",
                            bare.len(),
                            if bare.len() == 1 { "" } else { "s" }
                        ),
                    )
                } else {
                    (Phase::RolledBack, format!("rolled back to {to}: {reason}"))
                }
            }
        };
        EnvState {
            failed_nodes,
            ..self.to(s, phase, reason)
        }
    }
}

/// What the gates make of one node's report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Judged {
    Pass,
    Fail(String),
    /// Everything else passes, but the node has not served the requests
    /// the traffic gates need to judge it.
    Short {
        requests: u64,
        needed: u64,
    },
}

/// The traffic a gate judges: the whole proxy's, or one route's.
fn traffic(g: &Gates, r: &Observation) -> (Option<u64>, Option<f64>, Option<u64>) {
    match &g.route {
        None => (r.requests, r.error_rate, r.p99_latency_ms),
        Some(route) => match r.routes.iter().find(|t| t.route == route.value) {
            Some(t) => (Some(t.requests), t.error_rate, t.p99_latency_ms),
            // A node that reads the proxy's metrics and lists no traffic
            // on the route saw none.
            None => (r.requests.map(|_| 0), None, None),
        },
    }
}

/// Why the results `seen` fail `check`, if they do. The status is judged
/// here (two rollouts may expect different ones of a URL); the body, which
/// only the agent saw, on its verdict. A check of an upstream has a result
/// per target, and every one must pass.
fn http_check_failure(
    check: &gitfleet_schemas::trust::ChannelCheck,
    seen: &[SeenCheck],
) -> Option<String> {
    let key = check.key();
    let mut results = seen.iter().filter(|c| c.key == key).peekable();
    if results.peek().is_none() {
        return Some(format!("reports no http check {key}"));
    }
    for c in results {
        let url = &c.url;
        match c.status {
            None => {
                let why = c
                    .detail
                    .as_deref()
                    .map(|d| format!(" ({d})"))
                    .unwrap_or_default();
                return Some(format!("http check {url} got no answer{why}"));
            }
            Some(status) if !check.accepts(status) => {
                let expected: Vec<String> = std::iter::once(check.expect_status)
                    .chain(check.also_status.iter().copied())
                    .map(|s| s.to_string())
                    .collect();
                return Some(format!(
                    "http check {url} answered {status}, not {}",
                    expected.join(" or ")
                ));
            }
            Some(_) if !check.is_plain() && !c.ok => {
                let why = c.detail.as_deref().unwrap_or("failed");
                return Some(format!("http check {url}: {why}"));
            }
            Some(_) => {}
        }
    }
    None
}

/// Judge one node's report against a rollout's gates. A metric the gates
/// ask for and the node does not report fails; too few requests to judge
/// the traffic gates is neither pass nor fail.
pub fn judge(g: &Gates, r: &Observation, rollout: &str, digest: &str) -> Judged {
    if r.active_digest(rollout) != Some(digest) {
        return Judged::Fail("does not run the new bundle".to_owned());
    }
    if g.healthy && !r.healthy {
        return Judged::Fail("unhealthy".to_owned());
    }
    let over = |what: &str, got, max| limit(what, got, max, true);
    if let Some(max) = &g.max_cpu_percent {
        if let Some(why) = over("cpu percent", r.cpu_percent, max.value) {
            return Judged::Fail(why);
        }
    }
    if let Some(max) = &g.max_memory_percent {
        if let Some(why) = over("memory percent", r.memory_percent, max.value) {
            return Judged::Fail(why);
        }
    }
    for check in &g.http_checks {
        let check = crate::channel::channel_check(check);
        if let Some(why) = http_check_failure(&check, &r.http_checks) {
            return Judged::Fail(why);
        }
    }
    if !g.judges_traffic() {
        return Judged::Pass;
    }
    let (requests, error_rate, p99) = traffic(g, r);
    match requests {
        // An agent that does not say how much traffic it saw (an older
        // one) is judged on the rates it reports.
        None if error_rate.is_none() && p99.is_none() => {
            return Judged::Fail(format!(
                "reports no traffic{} (its agent reads no proxy metrics)",
                on_route(g)
            ))
        }
        None => {}
        Some(n) if n < g.min_requests() => {
            return Judged::Short {
                requests: n,
                needed: g.min_requests(),
            }
        }
        Some(_) => {}
    }
    match traffic_over(g, error_rate, p99, true) {
        Some(why) => Judged::Fail(why),
        None => Judged::Pass,
    }
}

/// `what got > max`, if it is; a missing value fails when `missing_fails`
/// ("reports no what").
fn limit<T: PartialOrd + fmt::Display + Copy>(
    what: &str,
    got: Option<T>,
    max: T,
    missing_fails: bool,
) -> Option<String> {
    match got {
        None if missing_fails => Some(format!("reports no {what}")),
        Some(v) if v > max => Some(format!("{what} {v} > {max}")),
        _ => None,
    }
}

/// " on route api" for a gate scoped to a route, else nothing.
fn on_route(g: &Gates) -> String {
    g.route
        .as_ref()
        .map(|r| format!(" on route {}", r.value))
        .unwrap_or_default()
}

/// The first traffic limit of `g` the error rate or p99 is over.
fn traffic_over(
    g: &Gates,
    error_rate: Option<f64>,
    p99: Option<u64>,
    missing_fails: bool,
) -> Option<String> {
    let on = on_route(g);
    let rate = g.max_error_rate.as_ref().and_then(|max| {
        limit(
            &format!("error rate{on}"),
            error_rate,
            max.value,
            missing_fails,
        )
    });
    rate.or_else(|| {
        g.max_p99_latency_ms.as_ref().and_then(|max| {
            limit(
                &format!("p99 latency ms{on}"),
                p99,
                max.value,
                missing_fails,
            )
        })
    })
}

/// The traffic the gates passed on, across the nodes that passed: " (per
/// node: at least 57 requests, error rate at most 0.002, p99 at most 31
/// ms)"; empty when no gate judges traffic.
fn measured(g: &Gates, passed: &[&Observation]) -> String {
    if !g.judges_traffic() || passed.is_empty() {
        return String::new();
    }
    let seen: Vec<_> = passed.iter().map(|r| traffic(g, r)).collect();
    let mut parts = Vec::new();
    if let Some(n) = seen.iter().filter_map(|t| t.0).min() {
        parts.push(format!("at least {n} requests"));
    }
    if let Some(e) = seen.iter().filter_map(|t| t.1).reduce(f64::max) {
        parts.push(format!("error rate at most {e:.3}"));
    }
    if let Some(p) = seen.iter().filter_map(|t| t.2).max() {
        parts.push(format!("p99 at most {p} ms"));
    }
    if parts.is_empty() {
        return String::new();
    }
    format!(" (per node: {})", parts.join(", "))
}

/// Why a node's traffic on the new bundle fails a traffic gate, on enough
/// evidence (`min-requests`), if it does: what may fail a step before its
/// bake is over. None for a node not on the new bundle, or one that does
/// not say how much traffic it saw.
pub fn traffic_failure(g: &Gates, r: &Observation, rollout: &str, digest: &str) -> Option<String> {
    if r.active_digest(rollout) != Some(digest) || !g.judges_traffic() {
        return None;
    }
    let (requests, error_rate, p99) = traffic(g, r);
    if requests? < g.min_requests() {
        return None;
    }
    traffic_over(g, error_rate, p99, false)
}

/// Why a node's report fails the gates, if it does (too little traffic is
/// not a failure).
pub fn gate_failure(g: &Gates, r: &Observation, rollout: &str, digest: &str) -> Option<String> {
    match judge(g, r, rollout, digest) {
        Judged::Fail(why) => Some(why),
        Judged::Pass | Judged::Short { .. } => None,
    }
}

/// The step node furthest from enough traffic, among `nodes` (each with
/// its report and the digest of the new bundle it takes: its proxy's)
/// whose reports pass every gate but the evidence one: (node, requests
/// seen, requests needed). For "waiting for traffic: 37 of 100 requests".
pub fn short_of_traffic<'n>(
    g: &Gates,
    nodes: impl IntoIterator<Item = (&'n str, &'n Observation, &'n str)>,
    rollout: &str,
) -> Option<(&'n str, u64, u64)> {
    nodes
        .into_iter()
        .filter_map(|(n, r, digest)| match judge(g, r, rollout, digest) {
            Judged::Short { requests, needed } => Some((n, requests, needed)),
            _ => None,
        })
        .min_by_key(|(_, requests, _)| *requests)
}

impl Observation {
    /// The digest the node runs for `rollout`.
    pub fn active_digest(&self, rollout: &str) -> Option<&str> {
        self.active
            .iter()
            .find(|(r, _)| r == rollout)
            .map(|(_, d)| d.as_str())
    }

    /// Record that the node runs `digest` for `rollout` (or nothing).
    pub fn set_active(&mut self, rollout: &str, digest: Option<String>) {
        self.active.retain(|(r, _)| r != rollout);
        if let Some(d) = digest {
            self.active.push((rollout.to_owned(), d));
        }
    }

    /// What the planner needs from a verified status report.
    pub fn from_report(r: &gitfleet_schemas::status::StatusReport) -> Self {
        Observation {
            at: r.at,
            active: r
                .rollouts
                .iter()
                .filter_map(|(name, s)| Some((name.clone(), s.active.as_ref()?.digest.clone())))
                .collect(),
            healthy: r.healthy,
            previous: r
                .rollouts
                .iter()
                .filter_map(|(name, s)| Some((name.clone(), s.previous.as_ref()?.digest.clone())))
                .collect(),
            requests: r.metrics.requests,
            error_rate: r.metrics.error_rate,
            p99_latency_ms: r.metrics.p99_latency_ms,
            routes: r.routes.clone(),
            cpu_percent: r.metrics.cpu_percent,
            memory_percent: r.metrics.memory_percent,
            http_checks: r
                .http_checks
                .iter()
                .map(|c| SeenCheck {
                    key: c.key().to_owned(),
                    url: c.url.clone(),
                    status: c.status,
                    ok: c.ok,
                    detail: c.detail.clone(),
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gitfleet_schemas::{HttpCheck, Spanned};

    fn gates(urls: &[&str]) -> Gates {
        Gates {
            http_checks: urls
                .iter()
                .map(|u| HttpCheck {
                    url: Spanned::new((*u).to_owned(), Default::default()),
                    expect_status: Spanned::new(vec![200], Default::default()),
                    method: None,
                    body_contains: None,
                    body_matches: None,
                    timeout_ms: None,
                    upstream: None,
                })
                .collect(),
            ..Gates::default()
        }
    }

    fn on(checks: &[(&str, Option<u16>)]) -> Observation {
        Observation {
            active: vec![("edge".to_owned(), "d".to_owned())],
            healthy: true,
            http_checks: checks
                .iter()
                .map(|(u, s)| SeenCheck {
                    key: (*u).to_owned(),
                    url: (*u).to_owned(),
                    status: *s,
                    ok: *s == Some(200),
                    detail: None,
                })
                .collect(),
            ..Observation::default()
        }
    }

    #[test]
    fn http_check_gates_need_each_url_answering_as_expected() {
        let a = "http://127.0.0.1:9090/-/health";
        let b = "http://127.0.0.1:9090/-/ready";
        let g = gates(&[a, b]);
        let fails = |checks: &[(&str, Option<u16>)]| gate_failure(&g, &on(checks), "edge", "d");
        assert_eq!(fails(&[(a, Some(200)), (b, Some(200))]), None);
        assert_eq!(
            fails(&[(a, Some(200)), (b, Some(503))]),
            Some(format!("http check {b} answered 503, not 200"))
        );
        assert_eq!(
            fails(&[(a, Some(200)), (b, None)]),
            Some(format!("http check {b} got no answer"))
        );
        // A passing check of another URL does not stand in for a missing one.
        assert_eq!(
            fails(&[(a, Some(200))]),
            Some(format!("reports no http check {b}"))
        );
        assert_eq!(fails(&[]), Some(format!("reports no http check {a}")));
        // Without http gates the node's checks do not matter.
        assert_eq!(
            gate_failure(&gates(&[]), &on(&[(a, None)]), "edge", "d"),
            None
        );
    }

    #[test]
    fn a_rich_check_passes_on_an_accepted_status_and_the_agents_body_verdict_for_every_target() {
        let mut g = gates(&["/healthz"]);
        let c = &mut g.http_checks[0];
        c.upstream = Some(Spanned::new("api".into(), Default::default()));
        c.expect_status.value = vec![200, 204];
        c.body_contains = Some(Spanned::new("ok".into(), Default::default()));
        let key = crate::channel::channel_check(c).key();
        assert_eq!(
            key,
            "GET upstream=api /healthz status=200,204 body-contains=\"ok\""
        );
        let seen = |results: &[(&str, Option<u16>, bool)]| Observation {
            active: vec![("edge".to_owned(), "d".to_owned())],
            healthy: true,
            http_checks: results
                .iter()
                .map(|(url, status, ok)| SeenCheck {
                    key: key.clone(),
                    url: (*url).to_owned(),
                    status: *status,
                    ok: *ok,
                    detail: (!ok).then(|| "body lacks \"ok\"".to_owned()),
                })
                .collect(),
            ..Observation::default()
        };
        let (t1, t2) = ("http://10.0.0.1:80/healthz", "http://10.0.0.2:80/healthz");
        let fails = |r: &[(&str, Option<u16>, bool)]| gate_failure(&g, &seen(r), "edge", "d");
        assert_eq!(fails(&[(t1, Some(200), true), (t2, Some(204), true)]), None);
        assert_eq!(
            fails(&[(t1, Some(200), true), (t2, Some(200), false)]),
            Some(format!("http check {t2}: body lacks \"ok\""))
        );
        assert_eq!(
            fails(&[(t1, Some(503), true)]),
            Some(format!("http check {t1} answered 503, not 200 or 204"))
        );
        // A plain check's result of the same path does not stand in.
        assert_eq!(
            gate_failure(&g, &on(&[("/healthz", Some(200))]), "edge", "d"),
            Some(format!("reports no http check {key}"))
        );
    }
}
