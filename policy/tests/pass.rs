//! A pass decided as a pure function (`policy::pass::decide`): the rules of
//! a pass as table-driven cases, and a property: executing a `PassPlan`'s
//! writes, killed after any of them, and deciding again from what was
//! written, never skips or repeats a step, never names a bundle the store
//! lacks, and never publishes a manifest ahead of the committed state.

#![allow(clippy::unwrap_used)] // test helpers fail the test by panicking

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use chrono::{DateTime, Duration, TimeZone, Utc};
use common::example_repo;
use gitfleet_policy::decommission::Removed;
use gitfleet_policy::pass::{decide, Builds, Current, Observed, PassError, PassPlan, Write};
use gitfleet_policy::plan::{Observation, Targets};
use gitfleet_policy::rules::{self, Rules, RulesPlan};
use gitfleet_policy::{Checked, RepoFiles};
use gitfleet_schemas::state::{Phase, RolloutState};
use gitfleet_schemas::trust::{ChannelManifest, ChannelRollout};
use gitfleet_schemas::{Proxy, ProxyKind, RolloutTarget};
use proptest::prelude::*;

const HEAD: &str = "c9c9c9c9c9c9c9c9c9c9c9c9c9c9c9c9c9c9c9c9";

/// A Tuesday morning in Berlin, inside prod's window, outside the freeze.
fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 24, 8, 0, 0).unwrap()
}

/// Everything a pass observes, held by the test as the world it writes to.
struct World {
    checked: Checked,
    targets: Targets,
    config_changes: BTreeMap<String, String>,
    builds: Builds,
    stored: HashSet<String>,
    refused: HashSet<String>,
    state_files: BTreeMap<String, Vec<u8>>,
    reports: HashMap<String, Observation>,
    manifests: BTreeMap<String, Current>,
    approvals: BTreeSet<(String, String)>,
    now: DateTime<Utc>,
    /// Node files removed since `departed.json`'s commit, as git says.
    removed_nodes: Vec<Removed>,
    /// Store objects the passes removed.
    removed_objects: Vec<String>,
    /// Pinned bundles the store has.
    pins: BTreeMap<String, gitfleet_schemas::trust::BundleRef>,
}

impl World {
    fn new(files: &RepoFiles) -> Self {
        let checked = gitfleet_policy::check(files);
        let targets = Targets::from_model(&checked.model);
        let config_changes = checked
            .model
            .rollouts
            .values()
            .filter_map(|r| match &r.doc.target.value {
                RolloutTarget::Config(c) => Some((c.clone(), format!("{c}-commit"))),
                RolloutTarget::Mesh(_) => None,
            })
            .collect();
        World {
            checked,
            targets,
            config_changes,
            builds: Builds::default(),
            stored: HashSet::new(),
            refused: HashSet::new(),
            state_files: BTreeMap::new(),
            reports: HashMap::new(),
            manifests: BTreeMap::new(),
            approvals: BTreeSet::new(),
            now: t0(),
            removed_nodes: Vec::new(),
            removed_objects: Vec::new(),
            pins: BTreeMap::new(),
        }
    }

    fn rules(&self) -> RulesPlan {
        let model = &self.checked.model;
        let record = rules::first_seen(model, HEAD, t0());
        let in_force = Rules::from_state(&record, |_| Some(model)).unwrap();
        rules::decide(
            &record,
            &in_force,
            model,
            HEAD,
            &BTreeSet::new(),
            &BTreeMap::new(),
            self.now,
        )
    }

    fn decide(&self) -> Result<PassPlan, PassError> {
        let rules = self.rules();
        decide(
            &Observed {
                commit: HEAD,
                checked: &self.checked,
                targets: &self.targets,
                config_changes: &self.config_changes,
                mesh_changes: &BTreeMap::new(),
                builds: &self.builds,
                stored: &self.stored,
                refused: &self.refused,
                state_files: &self.state_files,
                reports: &self.reports,
                heard: &HashMap::new(),
                rules: &rules,
                rules_first_seen: false,
                approvals: &self.approvals,
                owners: &BTreeMap::new(),
                manifests: &self.manifests,
                fleet: "acme-edge",
                removed_nodes: &self.removed_nodes,
                pins: &self.pins,
            },
            self.now,
        )
    }

    /// Carry out the first `k` writes of `plan`, as the executor would
    /// before being killed, checking what each write may rely on.
    fn execute(&mut self, plan: &PassPlan, k: usize) {
        self.builds = plan.builds.clone();
        for w in plan.writes().into_iter().take(k) {
            match w {
                Write::Upload(u) => {
                    self.stored.insert(u.built.reference.digest.clone());
                }
                Write::Remove(key) => self.removed_objects.push(key.to_owned()),
                Write::Commit(c) => {
                    for (path, bytes) in &c.files {
                        match bytes {
                            Some(b) => self.state_files.insert(path.clone(), b.clone()),
                            None => self.state_files.remove(path),
                        };
                    }
                }
                Write::Publish(p) => {
                    self.check_publish(&p.manifest);
                    self.manifests.insert(
                        p.environment.clone(),
                        Current::Ours(Box::new(p.manifest.clone())),
                    );
                }
                Write::Status(_) | Write::Promote(..) => {}
            }
        }
    }

    /// A manifest names only stored bundles, follows the committed state,
    /// and has a higher serial than the one it replaces.
    fn check_publish(&self, m: &ChannelManifest) {
        let state = committed(&self.state_files);
        for r in &m.rollouts {
            for b in std::iter::once(&r.bundle).chain(&r.previous) {
                assert!(
                    self.stored.contains(&b.digest),
                    "{} names {} before it is stored",
                    m.environment,
                    b.digest
                );
            }
            let Some(st) = state
                .get(&r.name)
                .and_then(|s| s.environments.get(&m.environment))
            else {
                panic!("{} names {} before the state has it", m.environment, r.name);
            };
            assert_eq!(
                *st.target_for(r.proxy.as_ref()),
                r.bundle,
                "manifest ahead of the state"
            );
            assert_eq!(st.step, r.step, "manifest ahead of the state");
        }
        if let Some(Current::Ours(old)) = self.manifests.get(&m.environment) {
            assert!(
                m.serial > old.serial,
                "serial {} after {}",
                m.serial,
                old.serial
            );
        }
    }

    /// Agents follow the manifests in the store; time goes on.
    fn tick(&mut self) {
        let model = &self.checked.model;
        for n in &model.nodes {
            let id = &n.doc.id.value;
            let labels: BTreeMap<String, String> = n
                .doc
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.value.clone()))
                .collect();
            let report = self.reports.entry(id.clone()).or_insert(Observation {
                healthy: true,
                error_rate: Some(0.0),
                p99_latency_ms: Some(20),
                cpu_percent: Some(10.0),
                memory_percent: Some(20.0),
                http_checks: vec![gitfleet_policy::plan::SeenCheck {
                    key: "http://127.0.0.1:9090/-/health".into(),
                    url: "http://127.0.0.1:9090/-/health".into(),
                    status: Some(200),
                    ok: true,
                    detail: None,
                }],
                ..Observation::default()
            });
            let proxy = self.targets.proxy(id);
            if let Some(Current::Ours(m)) = self.manifests.get(&n.doc.environment.value) {
                let mine = |r: &&ChannelRollout| r.proxy.as_ref().is_none_or(|p| *p == proxy);
                for r in m
                    .rollouts
                    .iter()
                    .filter(|r| r.selects(id, &labels))
                    .filter(mine)
                {
                    let run = if r.includes(id) {
                        Some(r.bundle.digest.clone())
                    } else {
                        r.previous.as_ref().map(|p| p.digest.clone())
                    };
                    report.set_active(&r.name, run);
                }
            }
            report.at = self.now;
        }
        self.now += Duration::seconds(60);
    }
}

fn committed(files: &BTreeMap<String, Vec<u8>>) -> BTreeMap<String, RolloutState> {
    gitfleet_policy::pass::parse_rollouts(files).unwrap()
}

fn edit(files: &mut RepoFiles, path: &str, f: impl Fn(&str) -> String) {
    let text = f(files.text(path).unwrap());
    files.insert(path, text);
}

#[test]
fn an_error_in_a_fleet_wide_document_plans_nothing() {
    let mut files = example_repo();
    edit(&mut files, "environments.kdl", |t| {
        t.replace(
            "environment \"staging\" {",
            "environment \"staging\" {\n    frobnicate 1",
        )
    });
    let err = World::new(&files).decide().unwrap_err();
    match err {
        PassError::FleetDocument { file, line, .. } => {
            assert_eq!((file.as_str(), line), ("environments.kdl", 10));
        }
        other => panic!("{other:?}"),
    }
    let mut files = RepoFiles::new();
    for (path, bytes) in example_repo().iter() {
        if path != "fleet.kdl" {
            files.insert(path, bytes.to_vec());
        }
    }
    assert!(matches!(
        World::new(&files).decide(),
        Err(PassError::NoFleet { .. })
    ));
}

#[test]
fn an_invalid_config_keeps_its_last_good_bundle_while_the_rest_moves_on() {
    let files = example_repo();
    let mut w = World::new(&files);
    let first = w.decide().unwrap();
    w.execute(&first, usize::MAX);
    let edge_before = committed(&w.state_files)["edge"].environments["dev"]
        .target
        .clone();

    let mut broken = files.clone();
    edit(&mut broken, "configs/edge/sentinel.kdl", |t| {
        t.replace(
            "listeners {",
            "listeners {\n    listener \"x\" { protocol \"quic\"; }",
        )
    });
    edit(&mut broken, "configs/api-gateway/sentinel.kdl", |t| {
        format!("{t}// tuned\n")
    });
    let mut w2 = World::new(&broken);
    w2.config_changes
        .insert("api-gateway".into(), "tuned-commit".into());
    w2.state_files = w.state_files.clone();
    w2.stored = w.stored.clone();
    w2.manifests = w.manifests.clone();
    let plan = w2.decide().unwrap();
    assert!(plan.errors > 0);
    let state = plan.rollouts.state();
    assert_eq!(state["edge"].environments["dev"].target, edge_before);
    assert_eq!(
        state["api-gateway"].environments["dev"].source_commit,
        "tuned-commit"
    );
    let uploaded: Vec<&str> = plan.uploads.iter().map(|u| u.name.as_str()).collect();
    assert_eq!(uploaded, ["api-gateway"]);
}

#[test]
fn a_bundles_source_commit_is_the_last_change_to_its_config_directory() {
    let w = World::new(&example_repo());
    let plan = w.decide().unwrap();
    for (name, want) in [
        ("edge", "edge-commit"),
        ("api-gateway", "api-gateway-commit"),
    ] {
        let st = &plan.rollouts.state()[name].environments["dev"];
        assert_eq!(st.source_commit, want, "{name}");
        let upload = plan.uploads.iter().find(|u| u.name == name).unwrap();
        assert_eq!(upload.built.manifest.source_commit, want, "{name}");
    }
    // Not the branch head: without the history fact, the head is used.
    let mut w = World::new(&example_repo());
    w.config_changes.clear();
    let st = &w.decide().unwrap().rollouts.state()["edge"].environments["dev"];
    assert_eq!(st.source_commit, HEAD);
}

#[test]
fn writes_come_in_the_order_the_invariants_need() {
    let plan = World::new(&example_repo()).decide().unwrap();
    let kinds: Vec<u8> = plan
        .writes()
        .iter()
        .map(|w| match w {
            Write::Upload(_) => 0,
            Write::Remove(_) | Write::Commit(_) => 1,
            Write::Publish(_) => 2,
            Write::Status(_) | Write::Promote(..) => 3,
        })
        .collect();
    let mut sorted = kinds.clone();
    sorted.sort_unstable();
    assert_eq!(kinds, sorted, "{plan}");
    assert!(
        kinds.contains(&0) && kinds.contains(&1) && kinds.contains(&2),
        "{plan}"
    );
    // The dry run shows them.
    let text = plan.to_string();
    assert!(text.contains("writes, in order:"), "{text}");
    assert!(text.contains("upload bundles/sha256/"), "{text}");
    assert!(
        text.contains("sign and publish channels/dev.json serial 1"),
        "{text}"
    );
}

#[test]
fn a_pass_after_a_complete_one_with_nothing_new_writes_nothing() {
    let mut w = World::new(&example_repo());
    let plan = w.decide().unwrap();
    w.execute(&plan, usize::MAX);
    let again = w.decide().unwrap();
    assert!(
        again.uploads.is_empty() && again.state.is_none() && again.manifests.is_empty(),
        "{again}"
    );
}

#[test]
fn a_refused_bundle_is_never_named_and_a_foreign_manifest_never_replaced() {
    let mut w = World::new(&example_repo());
    let plan = w.decide().unwrap();
    let edge = plan.uploads.iter().find(|u| u.name == "edge").unwrap();
    w.refused.insert(edge.built.reference.digest.clone());
    w.manifests.insert("staging".into(), Current::Foreign);
    let plan = w.decide().unwrap();
    assert!(
        !plan.rollouts.state().contains_key("edge")
            || plan.rollouts.state()["edge"].environments.is_empty()
    );
    assert!(plan.uploads.iter().all(|u| u.name != "edge"));
    assert!(plan.manifests.iter().all(|p| p.environment != "staging"));
    assert_eq!(plan.foreign_manifests, ["staging"]);
}

/// `configs/edge/zentinel.kdl`: the edge config's Zentinel form (its
/// Sentinel form, with Zentinel's own metrics server off: it would take
/// the admin listener's port).
fn add_zentinel_form(files: &mut RepoFiles) {
    let sentinel = files.get("configs/edge/sentinel.kdl").unwrap().to_vec();
    let mut zentinel = String::from_utf8(sentinel).unwrap();
    zentinel.push_str("\nobservability {\n    metrics {\n        enabled #false\n    }\n}\n");
    files.insert(
        "configs/edge/zentinel.kdl".to_owned(),
        zentinel.into_bytes(),
    );
}

/// The example fleet with two edge nodes on Zentinel (one in dev, one in
/// prod) and the edge config's Zentinel form beside its Sentinel one.
fn mixed_fleet() -> RepoFiles {
    let mut files = example_repo();
    add_zentinel_form(&mut files);
    for node in ["nodes/edge-dev-fra-1.kdl", "nodes/edge-fra-2.kdl"] {
        edit(&mut files, node, |t| {
            format!("{t}proxy \"zentinel\" version=\"0.6.45\"\n")
        });
    }
    files
}

#[test]
fn a_config_for_nodes_of_two_proxies_rolls_out_one_bundle_per_proxy() {
    let zentinel = Proxy::new(ProxyKind::Zentinel, "0.6.45");
    let mut w = World::new(&mixed_fleet());
    assert!(!w.checked.has_errors(), "{:?}", w.checked.diagnostics);
    let first = w.decide().unwrap();
    // One bundle per proxy, each validated for its own.
    let edge: Vec<_> = first.uploads.iter().filter(|u| u.name == "edge").collect();
    assert_eq!(edge.len(), 2, "{first}");
    let mut validators: Vec<&str> = edge
        .iter()
        .map(|u| u.built.manifest.validator.as_str())
        .collect();
    validators.sort_unstable();
    assert_eq!(
        validators,
        ["sentinel-config 0.4.14", "zentinel-config 0.6.45"]
    );
    let z = edge
        .iter()
        .find(|u| u.built.manifest.validator.starts_with("zentinel"))
        .unwrap();
    let paths: Vec<&str> = z
        .built
        .manifest
        .files
        .iter()
        .map(|f| f.path.as_str())
        .collect();
    assert!(paths.contains(&"files/zentinel.kdl"), "{paths:?}");
    assert!(!paths.contains(&"files/sentinel.kdl"), "{paths:?}");
    let z = z.built.reference.clone();

    w.approvals
        .insert(("prod".to_owned(), "edge-commit".to_owned()));
    for _ in 0..150 {
        let plan = w.decide().unwrap();
        w.execute(&plan, usize::MAX);
        w.tick();
    }
    let state = committed(&w.state_files);
    let prod = &state["edge"].environments["prod"];
    let staging = &state["edge"].environments["staging"];
    assert_eq!(
        staging.phase,
        Phase::Complete,
        "staging: {}",
        staging.reason
    );
    assert_eq!(prod.phase, Phase::Complete, "{}", prod.reason);
    assert_eq!(prod.proxy, Some(Proxy::legacy()));
    assert_eq!(prod.variants[&zentinel].target, z);
    // Each node runs its own proxy's bundle.
    for (node, proxy) in [
        ("edge-fra-1", &Proxy::legacy()),
        ("edge-fra-2", &zentinel),
        ("edge-dev-fra-1", &zentinel),
    ] {
        let env = if node.contains("dev") { "dev" } else { "prod" };
        let want = state["edge"].environments[env].target_for(Some(proxy));
        assert_eq!(
            w.reports[node].active_digest("edge"),
            Some(want.digest.as_str()),
            "{node}"
        );
    }
    // Dev's only edge node runs Zentinel: its rollout has that one bundle;
    // staging's run Sentinel: the first bundle alone, recorded as before.
    let dev = &state["edge"].environments["dev"];
    assert_eq!(dev.proxy, Some(zentinel.clone()));
    assert!(dev.variants.is_empty());
    assert_eq!(dev.target, z);
    let staging = &state["edge"].environments["staging"];
    assert_eq!((staging.proxy.as_ref(), staging.variants.len()), (None, 0));
    assert_eq!(staging.target, prod.target);
    // Prod's manifest lists the rollout once per proxy.
    let Some(Current::Ours(m)) = w.manifests.get("prod") else {
        panic!("no prod manifest")
    };
    let entries: Vec<Option<&Proxy>> = m
        .rollouts
        .iter()
        .filter(|r| r.name == "edge")
        .map(|r| r.proxy.as_ref())
        .collect();
    assert_eq!(entries, [Some(&zentinel), Some(&Proxy::legacy())]);
}

#[test]
fn a_node_moving_to_another_proxy_restarts_nothing_and_leaves_other_environments_alone() {
    let zentinel = Proxy::new(ProxyKind::Zentinel, "0.6.45");
    let mut w = World::new(&example_repo());
    w.approvals
        .insert(("prod".to_owned(), "edge-commit".to_owned()));
    for _ in 0..150 {
        let plan = w.decide().unwrap();
        w.execute(&plan, usize::MAX);
        w.tick();
    }
    let before = committed(&w.state_files)["edge"].clone();
    assert_eq!(before.environments["prod"].phase, Phase::Complete);

    // One prod node moves to Zentinel; the config gains its Zentinel form.
    let mut files = example_repo();
    add_zentinel_form(&mut files);
    edit(&mut files, "nodes/edge-fra-2.kdl", |t| {
        format!("{t}proxy \"zentinel\" version=\"0.6.45\"\n")
    });
    let mut moved = World::new(&files);
    moved.state_files = w.state_files.clone();
    moved.stored = w.stored.clone();
    moved.manifests = w.manifests.clone();
    moved.reports = w.reports.clone();
    moved.approvals = w.approvals.clone();
    moved.now = w.now;
    let plan = moved.decide().unwrap();
    let after = &plan.rollouts.state()["edge"];
    // Environments without a Zentinel node are untouched.
    for env in ["dev", "staging"] {
        assert_eq!(after.environments[env], before.environments[env], "{env}");
    }
    // Prod keeps its phase and bundle; the Zentinel node gets its own.
    let prod = &after.environments["prod"];
    let was = &before.environments["prod"];
    assert_eq!(
        (prod.phase, prod.step, prod.admitted),
        (was.phase, was.step, was.admitted)
    );
    assert_eq!(prod.target, was.target);
    assert_eq!(prod.previous, was.previous);
    assert_eq!(prod.proxy, Some(Proxy::legacy()));
    assert!(prod.variants[&zentinel].previous.is_none());
    // Only prod's manifest changes, and only prod's names proxies.
    let published: Vec<&str> = plan
        .manifests
        .iter()
        .map(|p| p.environment.as_str())
        .collect();
    assert_eq!(published, ["prod"], "{plan}");
    let entries: Vec<_> = plan.manifests[0]
        .manifest
        .rollouts
        .iter()
        .filter(|r| r.name == "edge")
        .map(|r| r.proxy.clone())
        .collect();
    assert_eq!(entries, [Some(zentinel), Some(Proxy::legacy())]);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Kill the executor after any write of any pass, decide again from
    /// what was written: every rollout's committed step moves by at most
    /// one at a time and never goes back for the same target, and dev
    /// still completes.
    #[test]
    fn killed_anywhere_and_decided_again_no_step_is_skipped_or_repeated(
        kills in proptest::collection::vec(0usize..12, 120)
    ) {
        let mut w = World::new(&example_repo());
        // (rollout, env) -> (target, step) as last committed
        let mut last: BTreeMap<(String, String), (String, u32)> = BTreeMap::new();
        for (i, k) in kills.iter().enumerate() {
            let plan = w.decide().unwrap();
            // Every third pass runs to the end; the others stop after `k`
            // writes.
            let k = if i % 3 == 0 { usize::MAX } else { *k };
            w.execute(&plan, k);
            for (name, st) in committed(&w.state_files) {
                for (env, e) in st.environments {
                    let key = (name.clone(), env.clone());
                    if let Some((target, step)) = last.get(&key) {
                        if *target == e.target.digest {
                            prop_assert!(
                                e.step == *step || e.step == step + 1,
                                "{name}/{env}: step {step} -> {}", e.step
                            );
                        }
                    }
                    last.insert(key, (e.target.digest.clone(), e.step));
                }
            }
            w.tick();
        }
        for _ in 0..40 {
            let plan = w.decide().unwrap();
            w.execute(&plan, usize::MAX);
            w.tick();
        }
        let state = committed(&w.state_files);
        for name in ["edge", "api-gateway", "backbone"] {
            prop_assert_eq!(state[name].environments["dev"].phase, Phase::Complete, "{}", name);
        }
    }
}

#[test]
fn environments_where_a_rollout_moves_poll_fast_and_the_rest_slowly() {
    let mut files = example_repo();
    edit(&mut files, "fleet.kdl", |t| {
        t.replace(
            "poll-interval \"30s\"",
            "poll-interval \"30s\"\n    idle-poll-interval \"5m\"",
        )
    });
    let w = World::new(&files);
    let plan = w.decide().unwrap();
    let poll = |env: &str| {
        plan.manifests
            .iter()
            .find(|p| p.environment == env)
            .and_then(|p| p.manifest.settings.as_ref()?.poll_seconds)
    };
    // The first pass starts dev's rollouts; prod waits for staging.
    assert_eq!(poll("dev"), Some(30), "{plan}");
    assert_eq!(poll("prod"), Some(300), "{plan}");
}

#[test]
fn a_rollout_selecting_a_group_and_a_set_reaches_exactly_those_nodes() {
    let mut files = example_repo();
    edit(&mut files, "fleet.kdl", |t| {
        format!("{t}\ngroup \"pilot\" {{\n    nodes \"edge-fra-1\" \"edge-iad-1\" \"edge-dev-fra-1\" \"edge-stg-fra-1\"\n}}\n")
    });
    edit(&mut files, "rollouts/edge.kdl", |t| {
        t.replace(
            "selector role=\"edge\"",
            "selector role=\"edge\" {\n    group \"pilot\"\n    not-in \"region\" \"iad\"\n}",
        )
    });
    let mut w = World::new(&files);
    assert!(!w.checked.has_errors(), "{:?}", w.checked.diagnostics);
    w.approvals
        .insert(("prod".to_owned(), "edge-commit".to_owned()));
    for _ in 0..150 {
        let plan = w.decide().unwrap();
        w.execute(&plan, usize::MAX);
        w.tick();
    }
    let state = committed(&w.state_files);
    let prod = &state["edge"].environments["prod"];
    assert_eq!(prod.phase, Phase::Complete, "{}", prod.reason);
    // In the group and outside iad: the rollout's; the rest: nothing of it.
    for (node, runs) in [
        ("edge-fra-1", true),
        ("edge-dev-fra-1", true),
        ("edge-stg-fra-1", true),
        ("edge-iad-1", false),
        ("edge-fra-2", false),
        ("edge-stg-iad-1", false),
    ] {
        let env = &w
            .checked
            .model
            .nodes
            .iter()
            .find(|n| n.doc.id.value == node)
            .unwrap()
            .doc
            .environment
            .value;
        let want = state["edge"].environments[env].target.digest.as_str();
        let got = w.reports[node].active_digest("edge");
        assert_eq!(got == Some(want), runs, "{node} runs {got:?}");
    }
    // Agents judge the same selector from the manifest.
    let Some(Current::Ours(m)) = w.manifests.get("prod") else {
        panic!("no prod manifest")
    };
    let edge = m.rollouts.iter().find(|r| r.name == "edge").unwrap();
    assert_eq!(
        edge.nodes.as_deref(),
        Some(
            &[
                "edge-dev-fra-1",
                "edge-fra-1",
                "edge-iad-1",
                "edge-stg-fra-1"
            ]
            .map(String::from)[..]
        )
    );
    assert_eq!(edge.requirements.len(), 1);
}

#[test]
fn a_removed_node_file_decommissions_its_node_and_its_objects_go_after_the_grace() {
    let mut files = example_repo();
    let mut w = World::new(&files);
    let first = w.decide().unwrap();
    w.execute(&first, usize::MAX);
    // The first pass records where removals are looked for from.
    let departed: gitfleet_schemas::state::Departed =
        serde_json::from_slice(&w.state_files["departed.json"]).unwrap();
    assert_eq!((departed.checked.as_str(), departed.nodes.len()), (HEAD, 0));

    files.remove("nodes/edge-fra-2.kdl");
    w.checked = gitfleet_policy::check(&files);
    w.targets = Targets::from_model(&w.checked.model);
    w.removed_nodes = vec![Removed {
        id: "edge-fra-2".to_owned(),
        environment: "prod".to_owned(),
    }];
    let plan = w.decide().unwrap();
    assert!(
        plan.to_string()
            .contains("node edge-fra-2 left the fleet repo"),
        "{plan}"
    );
    w.execute(&plan, usize::MAX);
    let named = |w: &World, env: &str| match w.manifests.get(env) {
        Some(Current::Ours(m)) => m.decommissioned.clone(),
        _ => panic!("no {env} manifest"),
    };
    assert_eq!(named(&w, "prod"), ["edge-fra-2"]);
    assert!(named(&w, "staging").is_empty());
    assert!(w.removed_objects.is_empty());

    // Within the grace, passes leave it be; after it, its objects go first,
    // then the record and the manifest forget it.
    w.removed_nodes.clear();
    w.now += Duration::days(6);
    let plan = w.decide().unwrap();
    assert!(plan.removals.is_empty(), "{plan}");
    w.execute(&plan, usize::MAX);
    w.now += Duration::days(2);
    let plan = w.decide().unwrap();
    let kinds: Vec<&str> = plan
        .writes()
        .iter()
        .filter_map(|w| match w {
            Write::Remove(_) => Some("remove"),
            Write::Commit(_) => Some("commit"),
            _ => None,
        })
        .collect();
    assert_eq!(kinds, ["remove", "remove", "commit"], "{plan}");
    w.execute(&plan, usize::MAX);
    assert_eq!(
        w.removed_objects,
        ["status/edge-fra-2.json", "enroll/edge-fra-2.json"]
    );
    assert!(named(&w, "prod").is_empty());
}

#[test]
fn a_pinned_node_is_named_with_its_bundle_once_the_store_has_it() {
    let mut files = example_repo();
    let digest = format!("sha256:{}", "7".repeat(64));
    edit(&mut files, "nodes/edge-fra-1.kdl", |t| {
        format!("{t}hold \"kernel regression, INC-7\" bundle=\"{digest}\"\n")
    });
    let mut w = World::new(&files);
    assert!(!w.checked.has_errors(), "{:?}", w.checked.diagnostics);
    // Held: no target of the rollout.
    let prod = w.targets.get("edge", "prod").unwrap();
    assert!(!prod.nodes().iter().any(|n| n == "edge-fra-1"));
    let pins = |w: &World| {
        let plan = w.decide().unwrap();
        plan.manifests
            .iter()
            .find(|p| p.environment == "prod")
            .map(|p| p.manifest.pinned.clone())
            .unwrap_or_default()
    };
    // Not in the store: held, on what it runs.
    assert!(pins(&w).is_empty());
    let bundle = gitfleet_schemas::trust::BundleRef {
        digest: digest.clone(),
        length: 4096,
    };
    w.pins.insert(digest, bundle.clone());
    let pinned = pins(&w);
    assert_eq!(pinned.len(), 1);
    assert_eq!(
        (
            pinned[0].node.as_str(),
            pinned[0].rollout.as_str(),
            &pinned[0].bundle
        ),
        ("edge-fra-1", "edge", &bundle)
    );
}

#[test]
fn a_mesh_whose_range_is_full_of_held_addresses_keeps_its_bundle_and_says_why() {
    let mut files = example_repo();
    // 14 host addresses for 7 members: enough, says `check`...
    edit(&mut files, "meshes/backbone.kdl", |t| {
        t.replace("10.40.0.0/24", "10.40.0.0/28")
    });
    let mut world = World::new(&files);
    // ...but eight departed members still hold theirs.
    let held: BTreeMap<String, serde_json::Value> = (7..15)
        .map(|n| {
            (
                format!("gone-{n}"),
                serde_json::json!({
                    "address": format!("10.40.0.{n}"),
                    "since": t0(),
                    "clean": [],
                }),
            )
        })
        .collect();
    let record = serde_json::json!({
        "format": 1,
        "mesh": "backbone",
        "cidr": "10.40.0.0/28",
        "addresses": {},
        "held": held,
    });
    world.state_files.insert(
        "meshes/backbone.json".to_owned(),
        serde_json::to_vec(&record).unwrap(),
    );
    let plan = world.decide().unwrap();
    assert!(
        plan.uploads.iter().all(|u| u.name != "backbone"),
        "no bundle to roll out"
    );
    assert_eq!(plan.mesh_errors.len(), 1, "{:?}", plan.mesh_errors);
    let (mesh, why) = &plan.mesh_errors[0];
    assert_eq!(mesh, "backbone");
    assert!(why.contains("is full"), "{why}");
}
