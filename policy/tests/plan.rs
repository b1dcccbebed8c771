//! The rollout planner, driven tick by tick against simulated agents that
//! follow the channel manifests exactly as real agents will
//! (`ChannelRollout::includes`).

#![allow(clippy::unwrap_used)] // test helpers fail the test by panicking

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Duration, TimeZone, Utc};
use gitfleet_policy::owners::Hold;
use gitfleet_policy::plan::{plan, planned, Desired, Inputs, Observation, Plan, Targets};
use gitfleet_policy::rules::Rules;
use gitfleet_policy::{FleetModel, RepoFiles};
use gitfleet_schemas::state::{Phase, RolloutState};
use gitfleet_schemas::status::RouteTraffic;
use gitfleet_schemas::trust::BundleRef;
use gitfleet_schemas::StepSize;
use proptest::prelude::*;

fn bundle(n: u8) -> BundleRef {
    BundleRef {
        digest: format!("sha256:{}", format!("{n:02x}").repeat(32)),
        length: 100 + u64::from(n),
    }
}

fn node_key(i: usize) -> String {
    use base64::Engine as _;
    let mut seed = [7u8; 32];
    seed[..8].copy_from_slice(&(i as u64).to_be_bytes());
    let k = ed25519_dalek::SigningKey::from_bytes(&seed);
    base64::engine::general_purpose::STANDARD.encode(k.verifying_key().to_bytes())
}

/// A fleet with `per_env` nodes in each of dev → staging → prod and one
/// rollout `web` with the given body.
fn fleet(per_env: usize, prod_approvals: bool, rollout_body: &str) -> FleetModel {
    fleet_with("", per_env, prod_approvals, rollout_body)
}

/// [`fleet`] with `more` appended to fleet.kdl.
fn fleet_with(more: &str, per_env: usize, prod_approvals: bool, rollout_body: &str) -> FleetModel {
    let mut f = RepoFiles::new();
    f.insert("fleet.kdl", format!("version 1\nname \"t\"\n{more}"));
    let approvals = if prod_approvals {
        "approvals 1 { users \"alice\"; }"
    } else {
        ""
    };
    f.insert(
        "environments.kdl",
        format!("version 1\nenvironment \"dev\"\nenvironment \"staging\" {{ after \"dev\"; }}\nenvironment \"prod\" {{ after \"staging\"; {approvals} }}\n"),
    );
    let mut i = 0;
    for env in ["dev", "staging", "prod"] {
        for _ in 0..per_env {
            f.insert(
                format!("nodes/n{i}.kdl"),
                format!("version 1\nid \"n{i}\"\nenvironment \"{env}\"\nlabels role=\"web\"\nnode-key \"{}\"\n", node_key(i)),
            );
            i += 1;
        }
    }
    f.insert("configs/web/sentinel.kdl", "system { worker-threads 1; }\nlisteners { listener \"h\" { address \"127.0.0.1:8080\"; protocol \"http\"; }; }\n");
    f.insert(
        "rollouts/web.kdl",
        format!("version 1\nconfig \"web\"\nselector role=\"web\"\n{rollout_body}"),
    );
    let checked = gitfleet_policy::check(&f);
    if more.is_empty() {
        assert!(!checked.has_errors(), "{:#?}", checked.diagnostics);
    }
    checked.model
}

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 23, 12, 0, 0).unwrap()
}

/// A fleet of simulated agents: each runs what the channel tells it, one
/// tick after the manifest changes, and is healthy unless it runs a bundle
/// listed in `bad`.
struct Sim {
    model: FleetModel,
    rules: Rules,
    targets: Targets,
    state: BTreeMap<String, RolloutState>,
    reports: HashMap<String, Observation>,
    approvals: BTreeSet<(String, String)>,
    owners: BTreeMap<(String, String, String), Hold>,
    desired: BTreeMap<String, Desired>,
    bad: BTreeSet<String>,
    /// Metrics nodes report; None leaves the metric out.
    error_rate: Option<f64>,
    requests: Option<u64>,
    /// Per route: (requests, error rate) every node reports.
    routes: Vec<(String, u64, f64)>,
    silent: BTreeSet<String>,
    now: DateTime<Utc>,
    last: Option<Plan>,
}

impl Sim {
    fn new(model: FleetModel) -> Self {
        let targets = Targets::from_model(&model);
        let mut reports = HashMap::new();
        for n in &model.nodes {
            reports.insert(
                n.doc.id.value.clone(),
                Observation {
                    at: t0(),
                    healthy: true,
                    error_rate: Some(0.0),
                    ..Observation::default()
                },
            );
        }
        Sim {
            rules: Rules::of_model(&model, "c0"),
            model,
            targets,
            state: BTreeMap::new(),
            reports,
            approvals: BTreeSet::new(),
            owners: BTreeMap::new(),
            desired: BTreeMap::new(),
            bad: BTreeSet::new(),
            error_rate: Some(0.0),
            requests: None,
            routes: Vec::new(),
            silent: BTreeSet::new(),
            now: t0(),
            last: None,
        }
    }

    fn deploy(&mut self, b: BundleRef, commit: &str) {
        self.desired
            .insert("web".into(), Desired::single(b, commit.into(), None));
    }

    fn plan(&self) -> Plan {
        plan(&Inputs {
            model: &self.model,
            targets: &self.targets,
            desired: &self.desired,
            state: &self.state,
            reports: &self.reports,
            approvals: &self.approvals,
            owners: &self.owners,
            rules: &self.rules,
            now: self.now,
        })
    }

    /// Plan, commit the state, let agents follow the manifests, advance time.
    fn tick(&mut self) -> Plan {
        let p = self.plan();
        assert_eq!(p, self.plan(), "same inputs must give the same plan");
        self.state = p.state();
        for n in &self.model.nodes {
            let id = &n.doc.id.value;
            if self.silent.contains(id) {
                continue;
            }
            let env = &n.doc.environment.value;
            // As agents do: a held node keeps what it runs.
            if gitfleet_policy::channel::held(&self.model, env).contains(id) {
                continue;
            }
            let report = self.reports.get_mut(id).unwrap();
            for cr in p.channel_rollouts(&self.model, env) {
                let active = report.active_digest(&cr.name).map(str::to_owned);
                let mine = report
                    .previous
                    .iter()
                    .find(|(r, _)| *r == cr.name)
                    .map(|(_, d)| d.clone());
                // As agents do: a rolled-back rollout with no previous
                // bundle sends each node back to the one it ran before.
                let run = if cr.rolled_back && cr.previous.is_none() {
                    if active.as_deref() == Some(cr.bundle.digest.as_str()) {
                        mine
                    } else {
                        active.clone()
                    }
                } else if cr.includes(id) {
                    Some(cr.bundle.digest.clone())
                } else {
                    cr.previous.clone().map(|b| b.digest)
                };
                let Some(run) = run else { continue };
                if active.as_deref() != Some(run.as_str()) {
                    report.previous.retain(|(r, _)| *r != cr.name);
                    if let Some(a) = active {
                        report.previous.push((cr.name.clone(), a));
                    }
                }
                report.set_active(&cr.name, Some(run));
            }
            report.healthy = !report.active.iter().any(|(_, d)| self.bad.contains(d));
            report.error_rate = self.error_rate;
            report.requests = self.requests;
            report.routes = self
                .routes
                .iter()
                .map(|(route, requests, rate)| RouteTraffic {
                    route: route.clone(),
                    requests: *requests,
                    errors: (*requests as f64 * rate) as u64,
                    error_rate: Some(*rate),
                    p50_latency_ms: None,
                    p99_latency_ms: None,
                })
                .collect();
            report.at = self.now;
        }
        self.now += Duration::seconds(60);
        self.last = Some(p.clone());
        p
    }

    fn phase(&self, env: &str) -> Option<Phase> {
        self.state
            .get("web")?
            .environments
            .get(env)
            .map(|e| e.phase)
    }

    fn run_until(&mut self, max_ticks: usize, mut done: impl FnMut(&Sim) -> bool) {
        for _ in 0..max_ticks {
            if done(self) {
                return;
            }
            self.tick();
        }
        panic!(
            "not done after {max_ticks} ticks:\n{}",
            self.last.as_ref().unwrap()
        );
    }

    fn reason(&self, env: &str) -> String {
        self.state
            .get("web")
            .and_then(|s| s.environments.get(env))
            .map(|e| e.reason.clone())
            .unwrap_or_default()
    }

    fn running(&self, env: &str, digest: &str) -> usize {
        self.model
            .nodes
            .iter()
            .filter(|n| n.doc.environment.value == env)
            .filter(|n| self.reports[&n.doc.id.value].active_digest("web") == Some(digest))
            .count()
    }
}

const STEPS: &str = "step count=1\nstep percent=50\nstep percent=100\nmax-unavailable 1\nbake \"2m\"\ngates { healthy; max-error-rate 0.01; }\n";

#[test]
fn a_good_bundle_completes_environment_by_environment() {
    let mut sim = Sim::new(fleet(4, false, STEPS));
    sim.deploy(bundle(1), "c1");
    let mut completed: Vec<String> = Vec::new();
    for _ in 0..200 {
        sim.tick();
        for env in ["dev", "staging", "prod"] {
            if sim.phase(env) == Some(Phase::Complete) && !completed.iter().any(|e| e == env) {
                completed.push(env.to_owned());
            }
        }
        if completed.len() == 3 {
            break;
        }
    }
    assert_eq!(completed, ["dev", "staging", "prod"]);
    for env in ["dev", "staging", "prod"] {
        assert_eq!(sim.running(env, &bundle(1).digest), 4, "{env}");
    }
}

#[test]
fn a_later_environment_waits_for_the_earlier_one() {
    let mut sim = Sim::new(fleet(2, false, STEPS));
    sim.deploy(bundle(1), "c1");
    sim.tick();
    let p = sim.tick();
    let staging = &p.rollouts[0].environments[1];
    assert_eq!(staging.environment, "staging");
    assert_eq!(staging.after.phase, Phase::Pending);
    assert!(
        staging
            .after
            .reason
            .starts_with("waiting for dev to complete"),
        "{}",
        staging.after.reason
    );
    assert_eq!(sim.running("staging", &bundle(1).digest), 0);
}

/// What `web`'s change `commit` waits for of its owners in `env`.
fn owners_hold(sim: &mut Sim, env: &str, commit: &str, hold: Hold) {
    sim.owners
        .insert(("web".into(), env.into(), commit.into()), hold);
}

#[test]
fn a_change_waits_for_its_owners_and_the_next_starts_from_what_completed() {
    let model = fleet_with(
        "owners \"configs/web/**\" users=\"alice\"\n",
        2,
        false,
        STEPS,
    );
    let owners = model.fleet.as_ref().unwrap().doc.owners.clone();
    let mut sim = Sim::new(model);
    sim.deploy(bundle(1), "c1");
    // Not judged yet (its paths unread): it waits, as it does for owners.
    sim.tick();
    assert_eq!(sim.phase("dev"), Some(Phase::AwaitingApproval));
    assert!(
        sim.reason("dev").contains("not known yet"),
        "{}",
        sim.reason("dev")
    );
    for env in ["dev", "staging", "prod"] {
        owners_hold(
            &mut sim,
            env,
            "c1",
            Hold::judge(&owners, &BTreeSet::new(), &[]),
        );
    }
    sim.tick();
    assert_eq!(
        sim.reason("dev"),
        "awaiting owners: configs/web/** (alice) of c1"
    );
    assert_eq!(sim.running("dev", &bundle(1).digest), 0);
    // An approval of another rule's paths, or of another commit, is no
    // approval of this one; alice's is.
    let alice = BTreeSet::from(["alice".to_owned()]);
    owners_hold(&mut sim, "dev", "c0", Hold::judge(&owners, &alice, &[]));
    sim.tick();
    assert_eq!(sim.phase("dev"), Some(Phase::AwaitingApproval));
    for env in ["dev", "staging", "prod"] {
        owners_hold(&mut sim, env, "c1", Hold::judge(&owners, &alice, &[]));
    }
    sim.run_until(300, |s| s.phase("prod") == Some(Phase::Complete));
    // The next change runs from what completed: the reconciler diffs c1..c2.
    sim.deploy(bundle(2), "c2");
    sim.tick();
    let dev = &sim.state["web"].environments["dev"];
    assert_eq!(dev.changed_from.as_deref(), Some("c1"));
    assert_eq!(dev.phase, Phase::AwaitingApproval);
    // A change touching no owned path has an empty hold: it goes on.
    owners_hold(
        &mut sim,
        "dev",
        "c2",
        Hold::judge(&[], &BTreeSet::new(), &[]),
    );
    sim.tick();
    assert_ne!(sim.phase("dev"), Some(Phase::AwaitingApproval));
}

#[test]
fn prod_waits_for_approval_of_the_commit() {
    let mut sim = Sim::new(fleet(2, true, STEPS));
    sim.deploy(bundle(1), "c1");
    sim.run_until(200, |s| s.phase("prod") == Some(Phase::AwaitingApproval));
    for _ in 0..20 {
        sim.tick();
    }
    assert_eq!(sim.phase("prod"), Some(Phase::AwaitingApproval));
    assert_eq!(sim.running("prod", &bundle(1).digest), 0);
    // An approval of another commit does not count.
    sim.approvals.insert(("prod".into(), "c0".into()));
    sim.tick();
    assert_eq!(sim.phase("prod"), Some(Phase::AwaitingApproval));
    sim.approvals.insert(("prod".into(), "c1".into()));
    sim.run_until(200, |s| s.phase("prod") == Some(Phase::Complete));
}

#[test]
fn a_bundle_that_fails_its_gates_is_rolled_back() {
    let mut sim = Sim::new(fleet(4, false, STEPS));
    sim.deploy(bundle(1), "c1");
    sim.run_until(300, |s| s.phase("prod") == Some(Phase::Complete));
    sim.bad.insert(bundle(2).digest);
    sim.deploy(bundle(2), "c2");
    sim.run_until(50, |s| s.phase("dev") == Some(Phase::RolledBack));
    let reason = &sim.state["web"].environments["dev"].reason;
    assert!(
        reason.starts_with(
            "rolled back to 010101010101: step 1/3: 1 node is unhealthy on the new bundle"
        ),
        "{reason}"
    );
    // The canary goes back to the previous bundle; later environments never start.
    sim.tick();
    sim.tick();
    assert_eq!(sim.running("dev", &bundle(1).digest), 4);
    assert_eq!(sim.running("staging", &bundle(2).digest), 0);
    assert_eq!(sim.phase("staging"), Some(Phase::Pending));
}

#[test]
fn a_missing_metric_fails_a_gate_that_asks_for_it() {
    let mut sim = Sim::new(fleet(2, false, STEPS));
    sim.error_rate = None;
    sim.deploy(bundle(1), "c1");
    sim.run_until(50, |s| s.phase("dev") == Some(Phase::Failed));
    let reason = &sim.state["web"].environments["dev"].reason;
    assert!(reason.contains("reports no traffic"), "{reason}");
}

const TRAFFIC: &str = "step count=1\nstep percent=100\nbake \"2m\"\nprogress-deadline \"10m\"\ngates { healthy; max-error-rate 0.05; min-requests 100; }\n";

#[test]
fn a_step_without_enough_traffic_waits_and_fails_at_its_deadline_never_passes() {
    let mut sim = Sim::new(fleet(2, false, TRAFFIC));
    sim.requests = Some(37);
    sim.deploy(bundle(1), "c1");
    sim.run_until(20, |s| s.reason("dev").contains("waiting for traffic"));
    let reason = &sim.state["web"].environments["dev"].reason;
    assert_eq!(
        reason,
        "step 1/2: waiting for traffic: 100 requests per node"
    );
    // The live count, as status pages show it.
    let p = sim.plan();
    let rules = p.channel_rollouts(&sim.model, "dev");
    assert_eq!(rules.len(), 1);
    let gates = &sim.model.rollouts["web"].doc.gates;
    let digest = bundle(1).digest;
    let short = gitfleet_policy::plan::short_of_traffic(
        gates,
        sim.reports
            .iter()
            .map(|(n, r)| (n.as_str(), r, digest.as_str())),
        "web",
    );
    assert_eq!(
        short.map(|(_, seen, needed)| (seen, needed)),
        Some((37, 100))
    );
    sim.run_until(20, |s| s.phase("dev") == Some(Phase::Failed));
    let reason = &sim.state["web"].environments["dev"].reason;
    assert!(
        reason.contains(
            "step 1/2: not enough traffic by the progress deadline: 1 node below 100 requests"
        ),
        "{reason}"
    );
}

#[test]
fn enough_traffic_lets_the_traffic_gates_judge() {
    let mut sim = Sim::new(fleet(2, false, TRAFFIC));
    sim.requests = Some(100);
    sim.deploy(bundle(1), "c1");
    sim.run_until(100, |s| s.phase("prod") == Some(Phase::Complete));
    // The state records what the gates passed on.
    assert!(
        sim.reason("prod")
            .ends_with("gates passed (per node: at least 100 requests, error rate at most 0.000)"),
        "{}",
        sim.reason("prod")
    );
    sim.error_rate = Some(0.2);
    sim.deploy(bundle(2), "c2");
    // It fails on the first report over the limit from the new bundle,
    // before the step has converged and baked.
    let mut verified = false;
    sim.run_until(5, |s| {
        verified |= s.phase("dev") == Some(Phase::Verifying);
        s.phase("dev") == Some(Phase::RolledBack)
    });
    assert!(!verified);
    let reason = &sim.state["web"].environments["dev"].reason;
    assert!(reason.contains("error rate 0.2 > 0.05"), "{reason}");
}

#[test]
fn a_gate_scoped_to_a_route_judges_that_routes_traffic_only() {
    let body = TRAFFIC.replace("min-requests 100;", "min-requests 100; route \"api\";");
    let mut sim = Sim::new(fleet(2, false, &body));
    // The whole proxy looks fine; the api route fails.
    sim.requests = Some(10_000);
    sim.routes = vec![("api".into(), 200, 0.5), ("static".into(), 9_800, 0.0)];
    sim.deploy(bundle(1), "c1");
    sim.run_until(20, |s| s.phase("dev") == Some(Phase::Failed));
    let reason = &sim.state["web"].environments["dev"].reason;
    assert!(
        reason.contains("error rate on route api 0.5 > 0.05"),
        "{reason}"
    );
    // A node that lists no traffic on the route saw none: it waits.
    let mut sim = Sim::new(fleet(2, false, &body));
    sim.requests = Some(10_000);
    sim.deploy(bundle(1), "c1");
    sim.run_until(20, |s| s.reason("dev").contains("waiting for traffic"));
    let manifest = sim.plan().channel_rollouts(&sim.model, "dev");
    assert_eq!(manifest[0].traffic_route.as_deref(), Some("api"));
}

#[test]
fn a_failed_step_without_a_previous_bundle_sends_nodes_back_to_the_one_each_ran() {
    let mut sim = Sim::new(fleet(2, false, TRAFFIC));
    sim.requests = Some(500);
    // The first rollout fails where nodes never ran anything.
    sim.bad.insert(bundle(1).digest);
    sim.deploy(bundle(1), "c1");
    sim.run_until(20, |s| s.phase("dev") == Some(Phase::Failed));
    let reason = &sim.state["web"].environments["dev"].reason;
    assert!(
        reason.starts_with("failed, nothing to roll back to"),
        "{reason}"
    );
    // Fixed, but the next push fails too: the canary ran bundle 1 before.
    sim.bad.clear();
    sim.bad.insert(bundle(2).digest);
    sim.deploy(bundle(2), "c2");
    sim.run_until(20, |s| s.phase("dev") == Some(Phase::RolledBack));
    let reason = &sim.state["web"].environments["dev"].reason;
    assert!(
        reason.starts_with("rolled back to the bundle each node ran before: step 1/2"),
        "{reason}"
    );
    let manifest = sim.plan().channel_rollouts(&sim.model, "dev");
    assert!(manifest[0].rolled_back && manifest[0].previous.is_none());
    sim.tick();
    assert_eq!(sim.running("dev", &bundle(2).digest), 0);
    assert_eq!(sim.running("dev", &bundle(1).digest), 1);
}

#[test]
fn a_paused_rollout_holds_its_step() {
    let mut sim = Sim::new(fleet(4, false, &format!("{STEPS}paused #true\n")));
    sim.deploy(bundle(1), "c1");
    for _ in 0..30 {
        sim.tick();
    }
    assert_eq!(sim.phase("dev"), Some(Phase::Paused));
    assert_eq!(sim.running("dev", &bundle(1).digest), 0);
}

#[test]
fn an_approval_withdrawn_before_the_window_opens_sends_the_change_back_to_wait() {
    let body = format!(
        "{STEPS}deny-window \"always\" cron=\"* * * * *\" duration=\"1h\" time-zone=\"UTC\"\n"
    );
    let mut sim = Sim::new(fleet(2, true, &body));
    sim.approvals.insert(("prod".into(), "c1".into()));
    sim.deploy(bundle(1), "c1");
    // The window holds dev already; every environment waits for it.
    sim.tick();
    assert_eq!(sim.phase("dev"), Some(Phase::WaitingWindow));
    // Bring prod to its gate by completing the earlier environments.
    for env in ["dev", "staging"] {
        let e = sim
            .state
            .get_mut("web")
            .unwrap()
            .environments
            .get_mut(env)
            .unwrap();
        e.phase = Phase::Complete;
    }
    sim.tick();
    assert_eq!(sim.phase("prod"), Some(Phase::WaitingWindow));
    sim.approvals.clear();
    sim.tick();
    assert_eq!(sim.phase("prod"), Some(Phase::AwaitingApproval));
}

#[test]
fn a_deny_window_stops_admission() {
    let body = format!(
        "{STEPS}deny-window \"always\" cron=\"* * * * *\" duration=\"1h\" time-zone=\"UTC\"\n"
    );
    let mut sim = Sim::new(fleet(4, false, &body));
    sim.deploy(bundle(1), "c1");
    for _ in 0..30 {
        sim.tick();
    }
    assert_eq!(sim.phase("dev"), Some(Phase::WaitingWindow));
    assert_eq!(sim.running("dev", &bundle(1).digest), 0);
    assert!(sim.state["web"].environments["dev"]
        .reason
        .contains("deny window `always` is open"));
}

#[test]
fn nodes_that_never_converge_miss_the_deadline() {
    let body = format!("{STEPS}progress-deadline \"5m\"\n");
    let mut sim = Sim::new(fleet(2, false, &body));
    for n in ["n0", "n1"] {
        sim.silent.insert(n.into());
    }
    sim.deploy(bundle(1), "c1");
    sim.run_until(30, |s| s.phase("dev") == Some(Phase::Failed));
    let e = &sim.state["web"].environments["dev"];
    assert!(
        e.reason.contains("missed its progress deadline"),
        "{}",
        e.reason
    );
    assert!(!e.failed_nodes.is_empty());
}

#[test]
fn a_step_plan_prints_each_environment() {
    let mut sim = Sim::new(fleet(2, false, STEPS));
    sim.deploy(bundle(1), "c1");
    let text = sim.tick().to_string();
    assert!(text.contains("rollout web"), "{text}");
    assert!(text.contains("* dev        progressing"), "{text}");
    assert!(text.contains("staging    pending"), "{text}");
}

#[test]
fn planned_counts_round_up_and_cap() {
    assert_eq!(planned(&StepSize::Percent(50), 5), 3);
    assert_eq!(planned(&StepSize::Percent(1), 5), 1);
    assert_eq!(planned(&StepSize::Percent(100), 5), 5);
    assert_eq!(planned(&StepSize::Count(3), 2), 2);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Whatever the fleet size, steps, max-unavailable and failures:
    /// membership only grows within a rollout, exactly `admitted` nodes fall
    /// under the threshold, a step is verified only at its planned count,
    /// admission never exceeds max-unavailable, and a failed gate never
    /// leads to the next step.
    #[test]
    fn planner_invariants_hold(
        per_env in 1usize..12,
        mut percents in proptest::collection::btree_set(1u64..100, 0..3),
        max_unavailable in 1u64..4,
        bad in any::<bool>(),
    ) {
        percents.insert(100);
        let steps: Vec<u64> = percents.into_iter().collect();
        let mut body = String::new();
        for p in &steps {
            body.push_str(&format!("step percent={p}\n"));
        }
        body.push_str(&format!("max-unavailable {max_unavailable}\nbake \"1m\"\ngates {{ healthy; }}\n"));
        let mut sim = Sim::new(fleet(per_env, false, &body));
        sim.deploy(bundle(1), "c1");
        if bad {
            sim.bad.insert(bundle(1).digest);
        }
        let mut last_admitted: HashMap<String, u64> = HashMap::new();
        for _ in 0..120 {
            let p = sim.tick();
            for e in &p.rollouts[0].environments {
                let a = &e.after;
                let members = sim.targets.get("web", &e.environment).unwrap();
                if !a.phase.is_terminal() {
                    let under = members.nodes().iter().filter(|n| {
                        gitfleet_schemas::trust::member_hash("web", n) < e.membership_threshold
                            || e.membership_threshold == u64::MAX
                    }).count() as u64;
                    prop_assert_eq!(under, a.admitted, "threshold admits exactly `admitted`");
                    let prev = last_admitted.get(&e.environment).copied().unwrap_or(0);
                    prop_assert!(a.admitted >= prev, "membership never shrinks mid-rollout");
                    last_admitted.insert(e.environment.clone(), a.admitted);
                }
                if let Some(b) = &e.before {
                    // Admission respects max-unavailable: newly admitted nodes
                    // are unavailable until they report the new bundle.
                    let grew = a.admitted.saturating_sub(b.admitted);
                    prop_assert!(grew <= max_unavailable, "admitted {grew} at once");
                    if a.phase == Phase::Verifying && b.phase != Phase::Verifying {
                        let size = StepSize::Percent(steps[a.step as usize - 1]);
                        prop_assert_eq!(a.admitted, planned(&size, members.len()));
                    }
                    if b.phase == Phase::Verifying && bad {
                        prop_assert!(a.step <= b.step, "advanced past a failed gate");
                        prop_assert!(a.phase != Phase::Complete);
                    }
                }
            }
        }
        let dev = sim.phase("dev");
        if bad {
            prop_assert_eq!(dev, Some(Phase::Failed));
        } else {
            prop_assert_eq!(sim.phase("prod"), Some(Phase::Complete));
        }
    }
}

#[test]
fn a_requested_rollback_returns_every_node_to_the_previous_bundle() {
    let mut sim = Sim::new(fleet(4, false, STEPS));
    sim.deploy(bundle(1), "c1");
    sim.run_until(300, |s| s.phase("prod") == Some(Phase::Complete));
    sim.deploy(bundle(2), "c2");
    sim.run_until(100, |s| s.running("dev", &bundle(2).digest) == 4);
    // The operator asks for a rollback: the rollout file says so.
    sim.model = fleet(4, false, &format!("{STEPS}rollback #true\n"));
    sim.tick();
    sim.tick();
    assert_eq!(sim.phase("dev"), Some(Phase::RolledBack));
    assert!(sim.state["web"].environments["dev"]
        .reason
        .contains("rollback requested in rollouts/web.kdl"));
    assert_eq!(sim.running("dev", &bundle(1).digest), 4);
    assert_eq!(sim.running("staging", &bundle(2).digest), 0);
}

#[test]
fn the_manifest_carries_the_http_checks_of_the_gates() {
    let body = "step percent=100\ngates { healthy; http-check \"http://127.0.0.1:9090/-/health\" expect-status=204; }\n";
    let mut sim = Sim::new(fleet(2, false, body));
    sim.deploy(bundle(1), "c1");
    let p = sim.plan();
    let rollouts = p.channel_rollouts(&sim.model, "dev");
    assert_eq!(rollouts.len(), 1);
    assert_eq!(
        rollouts[0].http_checks,
        vec![gitfleet_schemas::trust::ChannelCheck {
            url: "http://127.0.0.1:9090/-/health".to_owned(),
            expect_status: 204,
            ..Default::default()
        }]
    );
    // Simulated agents report no checks, so the gate holds the step.
    sim.run_until(50, |s| s.phase("dev") == Some(Phase::Failed));
    let reason = &sim.state["web"].environments["dev"].reason;
    assert!(
        reason.contains("reports no http check http://127.0.0.1:9090/-/health"),
        "{reason}"
    );
}

#[test]
fn a_lint_error_under_the_rules_in_force_keeps_the_change_out_of_that_environment() {
    // No health route: an error in prod only, under the rules in force.
    let lint = "lint \"health-route\" severity=\"error\" { environments \"prod\"; }\n";
    let mut sim = Sim::new(fleet_with(lint, 1, false, STEPS));
    sim.rules = Rules::of_model(&sim.model, "r1");
    sim.deploy(bundle(1), "c1");
    sim.run_until(40, |s| s.phase("staging") == Some(Phase::Complete));
    for _ in 0..5 {
        sim.tick();
    }
    let prod = &sim.state["web"].environments["prod"];
    assert_eq!(prod.phase, Phase::Pending);
    assert_eq!(prod.admitted, 0);
    assert_eq!(
        prod.reason,
        "held by lint under the rules from r1: lint `health-route`: config has no health route"
    );
    // The same lint in the tip but not in the rules in force holds nothing.
    let mut sim = Sim::new(fleet_with(lint, 1, false, STEPS));
    sim.rules = Rules::of_model(&fleet(1, false, STEPS), "r0");
    sim.deploy(bundle(1), "c1");
    sim.run_until(60, |s| s.phase("prod") == Some(Phase::Complete));
}

/// A rollout that takes a template plans step for step what the same
/// rollout written out in full plans; its own bake wins over the
/// template's, and its gates add to the template's.
#[test]
fn a_rollout_from_a_template_plans_as_the_rollout_written_out() {
    let template = "template \"canary\" {\n step count=1\n step percent=50\n step percent=100\n max-unavailable 1\n bake \"30m\"\n gates { healthy; }\n}\n";
    let templated = fleet_with(
        template,
        4,
        false,
        "template \"canary\"\nbake \"2m\"\ngates { max-error-rate 0.01; }\n",
    );
    let written = fleet(4, false, STEPS);
    let effective = &templated.rollouts["web"].doc;
    assert_eq!(effective.bake_seconds.as_ref().unwrap().value, 120);
    assert!(effective.gates.healthy);
    assert_eq!(effective.gates.max_error_rate.as_ref().unwrap().value, 0.01);
    assert_eq!(effective.steps.len(), 3);

    let (mut a, mut b) = (Sim::new(templated), Sim::new(written));
    a.deploy(bundle(1), "c1");
    b.deploy(bundle(1), "c1");
    for tick in 0..60 {
        assert_eq!(a.tick(), b.tick(), "tick {tick}");
    }
    assert_eq!(a.phase("prod"), Some(Phase::Complete));
}

/// fleet.kdl revoking `b` (on top of the plain fleet of [`fleet`]).
fn revoking(b: &BundleRef) -> FleetModel {
    let model = fleet_with(
        &format!("revoke \"{}\" reason=\"CVE-2026-1234\"\n", b.digest),
        2,
        false,
        STEPS,
    );
    assert!(model
        .fleet
        .as_ref()
        .is_some_and(|f| f.doc.revoked.len() == 1));
    model
}

/// A bundle revoked while it rolls out is rolled back where it is the
/// target, every node returns to the bundle before, and the environments
/// after never start it.
#[test]
fn a_revoked_target_is_rolled_back_and_goes_no_further() {
    let mut sim = Sim::new(fleet(2, false, STEPS));
    sim.deploy(bundle(1), "c1");
    sim.run_until(400, |s| s.phase("prod") == Some(Phase::Complete));
    sim.deploy(bundle(2), "c2");
    let two = bundle(2).digest;
    sim.run_until(400, |s| {
        s.phase("dev") == Some(Phase::Complete) && s.running("dev", &two) == 2
    });

    sim.model = revoking(&bundle(2));
    sim.run_until(50, |s| s.running("dev", &bundle(1).digest) == 2);
    assert_eq!(sim.phase("dev"), Some(Phase::RolledBack));
    assert!(
        sim.reason("dev")
            .contains("is revoked in fleet.kdl: CVE-2026-1234"),
        "{}",
        sim.reason("dev")
    );
    for _ in 0..100 {
        sim.tick();
        for env in ["dev", "staging", "prod"] {
            assert_eq!(sim.running(env, &bundle(2).digest), 0, "{env}");
        }
    }
}

/// A bundle revoked before it is built is never rolled out anywhere.
#[test]
fn a_revoked_bundle_is_never_rolled_out() {
    let mut sim = Sim::new(revoking(&bundle(3)));
    sim.deploy(bundle(1), "c1");
    sim.run_until(400, |s| s.phase("prod") == Some(Phase::Complete));
    sim.deploy(bundle(3), "c3");
    for _ in 0..100 {
        sim.tick();
        for env in ["dev", "staging", "prod"] {
            assert_eq!(sim.running(env, &bundle(3).digest), 0, "{env}");
            assert_eq!(sim.running(env, &bundle(1).digest), 2, "{env}");
        }
    }
    assert!(
        sim.reason("dev").contains("revoked"),
        "{}",
        sim.reason("dev")
    );
}

/// A held node is never admitted, the rollout completes without it, and a
/// held node that never reports does not hold the rollout up (it does not
/// count against max-unavailable).
#[test]
fn a_held_node_is_skipped_and_does_not_block_the_rollout() {
    let mut model = fleet(3, false, STEPS);
    let held = model
        .nodes
        .iter_mut()
        .find(|n| n.doc.environment.value == "dev")
        .unwrap();
    held.doc.hold = Some(gitfleet_schemas::Spanned::new(
        "disk replacement".to_owned(),
        gitfleet_schemas::Span::default(),
    ));
    let held = held.doc.id.value.clone();
    let mut sim = Sim::new(model);
    sim.silent.insert(held.clone());
    sim.deploy(bundle(1), "c1");
    sim.run_until(400, |s| s.phase("prod") == Some(Phase::Complete));
    assert_eq!(sim.running("dev", &bundle(1).digest), 2);
    assert_eq!(sim.reports[&held].active_digest("web"), None);
    let plan = sim.plan();
    let dev = plan.rollouts[0]
        .environments
        .iter()
        .find(|e| e.environment == "dev")
        .unwrap();
    assert_eq!(dev.targets, 2);
    assert_eq!(gitfleet_policy::channel::held(&sim.model, "dev"), [held]);
}
