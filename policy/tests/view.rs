//! The fleet view: counts, health and rollout progress from the model, the
//! rollout state and verified reports.

#![allow(clippy::unwrap_used)] // test helpers fail the test by panicking

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use chrono::{DateTime, Duration, TimeZone, Utc};
use gitfleet_policy::plan::Targets;
use gitfleet_policy::view::{fleet_status, health, ViewInputs};
use gitfleet_policy::{FleetModel, RepoFiles};
use gitfleet_schemas::state::{EnvState, Phase, RolloutState, STATE_FORMAT};
use gitfleet_schemas::status::{Drift, Metrics, RolloutStatus, StatusReport};
use gitfleet_schemas::trust::BundleRef;
use gitfleet_schemas::view::{Counts, FleetStatus, Health};

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 12, 1, 12, 0, 0).unwrap()
}

fn node_key(i: usize) -> String {
    use base64::Engine as _;
    let mut seed = [9u8; 32];
    seed[..8].copy_from_slice(&(i as u64).to_be_bytes());
    let k = ed25519_dalek::SigningKey::from_bytes(&seed);
    base64::engine::general_purpose::STANDARD.encode(k.verifying_key().to_bytes())
}

/// n0..n3 in dev, n4..n5 in prod; one rollout `web` of every node.
fn model() -> FleetModel {
    model_with("")
}

/// [`model`] with `more` in the rollout file.
fn model_with(more: &str) -> FleetModel {
    let mut f = RepoFiles::new();
    f.insert("fleet.kdl", "version 1\nname \"t\"\n");
    f.insert(
        "environments.kdl",
        "version 1\nenvironment \"dev\"\nenvironment \"prod\" { after \"dev\"; }\n",
    );
    for i in 0..6 {
        let env = if i < 4 { "dev" } else { "prod" };
        f.insert(
            format!("nodes/n{i}.kdl"),
            format!("version 1\nid \"n{i}\"\nenvironment \"{env}\"\nlabels role=\"web\" idx=\"{i}\"\nnode-key \"{}\"\n", node_key(i)),
        );
    }
    f.insert("configs/web/sentinel.kdl", "system { worker-threads 1; }\nlisteners { listener \"h\" { address \"127.0.0.1:8080\"; protocol \"http\"; }; }\n");
    f.insert(
        "rollouts/web.kdl",
        format!("version 1\nconfig \"web\"\nselector role=\"web\"\nstep count=1\nstep percent=100\n{more}"),
    );
    let checked = gitfleet_policy::check(&f);
    assert!(!checked.has_errors(), "{:#?}", checked.diagnostics);
    checked.model
}

fn bundle(n: u8) -> BundleRef {
    BundleRef {
        digest: format!("sha256:{}", format!("{n:02x}").repeat(32)),
        length: 100,
    }
}

fn report(node: &str, env: &str, age_s: i64, healthy: bool, active: Option<u8>) -> StatusReport {
    let mut rollouts = BTreeMap::new();
    rollouts.insert(
        "web".to_owned(),
        RolloutStatus {
            active: active.map(bundle),
            previous: active.filter(|n| *n > 1).map(|n| bundle(n - 1)),
            error: None,
        },
    );
    StatusReport {
        fleet: "t".into(),
        node: node.into(),
        environment: env.into(),
        at: now() - Duration::seconds(age_s),
        channel_serial: Some(3),
        channel_expires: None,
        rollouts,
        healthy,
        metrics: Metrics::default(),
        http_checks: Vec::new(),
        routes: Vec::new(),
        wireguard: None,
        monitored: Vec::new(),
        drift: Vec::new(),
        last_error: None,
        proxy: None,
    }
}

fn state() -> BTreeMap<String, RolloutState> {
    let mut environments = BTreeMap::new();
    environments.insert(
        "dev".to_owned(),
        EnvState {
            target: bundle(2),
            source_commit: "c2".into(),
            changed_from: None,
            previous: Some(bundle(1)),
            phase: Phase::Progressing,
            step: 2,
            admitted: 4,
            on_target: None,
            since: now() - Duration::seconds(30),
            reason: "step 2/2".into(),
            failed_nodes: Vec::new(),
            proxy: None,
            variants: Default::default(),
        },
    );
    let mut out = BTreeMap::new();
    out.insert(
        "web".to_owned(),
        RolloutState {
            format: STATE_FORMAT,
            environments,
        },
    );
    out
}

fn view(reports: Vec<StatusReport>, environment: Option<&str>) -> FleetStatus {
    view_of(&model(), &state(), reports, environment)
}

fn view_of(
    model: &FleetModel,
    state: &BTreeMap<String, RolloutState>,
    reports: Vec<StatusReport>,
    environment: Option<&str>,
) -> FleetStatus {
    let model = model.clone();
    let targets = Targets::from_model(&model);
    let reports: HashMap<String, Arc<StatusReport>> = reports
        .into_iter()
        .map(|r| (r.node.clone(), Arc::new(r)))
        .collect();
    let mut ignored = BTreeMap::new();
    ignored.insert("bad-signature", 2);
    fleet_status(&ViewInputs {
        model: &model,
        targets: &targets,
        state,
        rules: None,
        reports: &reports,
        written: &HashMap::new(),
        reports_ignored: &ignored,
        commit: "c2",
        state_commit: Some("s1"),
        now: now(),
        stale_after: Duration::seconds(120),
        environment,
    })
}

fn fleet_reports() -> Vec<StatusReport> {
    let mut drifted = report("n3", "dev", 10, true, Some(1));
    drifted.drift.push(Drift {
        path: "sentinel.kdl".into(),
        expected_sha256: Some("a".into()),
        found_sha256: Some("b".into()),
    });
    vec![
        report("n0", "dev", 5, true, Some(2)),
        report("n1", "dev", 5, false, Some(2)),
        report("n2", "dev", 600, true, Some(2)),
        drifted,
        report("n4", "prod", 5, true, Some(1)),
        // n5 never reported.
    ]
}

#[test]
fn health_is_unreported_then_stale_then_the_reported_flag() {
    let stale = Duration::seconds(60);
    assert_eq!(health(None, None, now(), stale), Health::Unreported);
    let old = report("n0", "dev", 61, true, None);
    assert_eq!(health(Some(&old), None, now(), stale), Health::Stale);
    let sick = report("n0", "dev", 60, false, None);
    assert_eq!(health(Some(&sick), None, now(), stale), Health::Unhealthy);
    let fine = report("n0", "dev", 0, true, None);
    assert_eq!(health(Some(&fine), None, now(), stale), Health::Healthy);
    let ahead = report("n0", "dev", -30, true, None);
    assert_eq!(health(Some(&ahead), None, now(), stale), Health::Healthy);
    let far_ahead = report("n0", "dev", -61, true, None);
    assert_eq!(health(Some(&far_ahead), None, now(), stale), Health::Stale);
}

#[test]
fn liveness_goes_by_when_the_store_wrote_the_report_not_by_the_nodes_clock() {
    let stale = Duration::seconds(60);
    // A node whose clock runs an hour fast, reporting now: alive.
    let fast = report("n0", "dev", -3600, true, None);
    assert_eq!(
        health(Some(&fast), Some(now()), now(), stale),
        Health::Healthy
    );
    // A node that went silent ten minutes ago, whose last report claims
    // to be from now (a clock set ahead): stale.
    let silent = report("n0", "dev", 0, true, None);
    let written = now() - Duration::minutes(10);
    assert_eq!(
        health(Some(&silent), Some(written), now(), stale),
        Health::Stale
    );
}

#[test]
fn counts_add_up_per_environment_and_in_total() {
    let v = view(fleet_reports(), None);
    let dev = Counts {
        nodes: 4,
        healthy: 2,
        unhealthy: 1,
        stale: 1,
        unreported: 0,
        drifted: 1,
    };
    let prod = Counts {
        nodes: 2,
        healthy: 1,
        unreported: 1,
        ..Counts::default()
    };
    let names: Vec<&str> = v.environments.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["dev", "prod"]);
    assert_eq!(v.environments[0].counts, dev);
    assert_eq!(v.environments[1].counts, prod);
    assert_eq!(
        v.totals,
        Counts {
            nodes: 6,
            healthy: 3,
            unhealthy: 1,
            stale: 1,
            unreported: 1,
            drifted: 1,
        }
    );
    assert_eq!(v.reports_ignored.get("bad-signature"), Some(&2));
}

#[test]
fn rollout_progress_counts_nodes_reporting_the_target() {
    let v = view(fleet_reports(), None);
    let dev = &v.environments[0].rollouts;
    assert_eq!(dev.len(), 1);
    let web = &dev[0];
    assert_eq!((web.step, web.steps), (2, 2));
    assert_eq!(web.nodes, 4);
    // n3 still runs bundle 1.
    assert_eq!(web.on_target, 3);
    assert_eq!(web.previous.as_deref(), Some(bundle(1).digest.as_str()));
    // No state in prod yet.
    assert!(v.environments[1].rollouts.is_empty());
}

#[test]
fn nodes_carry_labels_reports_and_ages() {
    let v = view(fleet_reports(), None);
    let ids: Vec<&str> = v.nodes.iter().map(|n| n.id.as_str()).collect();
    assert_eq!(ids, ["n0", "n1", "n2", "n3", "n4", "n5"]);
    let n2 = &v.nodes[2];
    assert_eq!(n2.health, Health::Stale);
    assert_eq!(n2.report_age_seconds, Some(600));
    assert_eq!(n2.labels.get("idx").map(String::as_str), Some("2"));
    assert_eq!(n2.active.get("web"), Some(&bundle(2).digest));
    assert_eq!(
        n2.previous.get("web"),
        Some(&bundle(1).digest),
        "what a rollback returns to"
    );
    let n5 = &v.nodes[5];
    assert_eq!(n5.health, Health::Unreported);
    assert_eq!(n5.last_report, None);
    assert!(n5.active.is_empty());
}

#[test]
fn an_environment_filter_keeps_only_its_nodes_and_rollouts() {
    let v = view(fleet_reports(), Some("prod"));
    let names: Vec<&str> = v.environments.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["prod"]);
    assert!(v.nodes.iter().all(|n| n.environment == "prod"));
    assert_eq!(v.totals.nodes, 2);
}

#[test]
fn the_view_round_trips_through_its_json_format() {
    let v = view(fleet_reports(), None);
    let text = serde_json::to_string(&v).unwrap();
    let back: FleetStatus = serde_json::from_str(&text).unwrap();
    assert_eq!(back, v);
}

#[test]
fn a_step_waiting_for_traffic_shows_the_live_count_of_its_thinnest_node() {
    let model = model_with("gates { max-error-rate 0.01; min-requests 100; }\n");
    let mut state = state();
    let dev = state
        .get_mut("web")
        .unwrap()
        .environments
        .get_mut("dev")
        .unwrap();
    dev.phase = Phase::Verifying;
    dev.reason = "step 2/2: waiting for traffic: 100 requests per node".into();
    let with = |node: &str, requests: u64| {
        let mut r = report(node, "dev", 5, true, Some(2));
        r.metrics.requests = Some(requests);
        r.metrics.error_rate = Some(0.0);
        r
    };
    // Every dev node is in the step; n3 has not reported.
    let reports = vec![with("n0", 250), with("n1", 37), with("n2", 12)];
    let v = view_of(&model, &state, reports, None);
    let dev = v.environments.iter().find(|e| e.name == "dev").unwrap();
    assert_eq!(
        dev.rollouts[0].reason,
        "step 2/2: waiting for traffic: 12 of 100 requests (n2)"
    );
    // Outside a verifying step the state's reason stands.
    let v = view(vec![with("n1", 37)], None);
    let dev = v.environments.iter().find(|e| e.name == "dev").unwrap();
    assert_eq!(dev.rollouts[0].reason, "step 2/2");
}

#[test]
fn a_node_whose_agent_drives_another_proxy_than_the_repo_says_is_flagged() {
    use gitfleet_schemas::{Proxy, ProxyKind, Span, Spanned};
    let zentinel = Proxy::new(ProxyKind::Zentinel, "0.6.45");
    let mut model = model();
    model.nodes[1].doc.proxy = Some(Spanned::new(zentinel.clone(), Span::default()));
    let mut on_zentinel = report("n2", "dev", 10, true, Some(1));
    on_zentinel.proxy = Some(zentinel.clone());
    let reports = vec![
        report("n0", "dev", 10, true, Some(1)),
        report("n1", "dev", 10, true, Some(1)),
        on_zentinel,
    ];
    let v = view_of(&model, &state(), reports, None);
    let node = |id: &str| v.nodes.iter().find(|n| n.id == id).unwrap();
    assert_eq!(node("n0").proxy_mismatch, None);
    assert_eq!(node("n1").proxy, zentinel);
    assert_eq!(
        node("n1").proxy_mismatch.as_deref(),
        Some("the agent drives sentinel 0.4.14, and the fleet repo says zentinel 0.6.45: it refuses the bundles built for zentinel 0.6.45")
    );
    assert!(node("n2").proxy_mismatch.is_some());
    // A node that has not reported is not judged.
    assert_eq!(node("n3").proxy_mismatch, None);
}

#[test]
fn in_a_mixed_fleet_a_node_counts_on_target_on_its_own_proxys_bundle() {
    use gitfleet_schemas::state::Variant;
    use gitfleet_schemas::{Proxy, ProxyKind, Span, Spanned};
    let zentinel = Proxy::new(ProxyKind::Zentinel, "0.6.45");
    let mut model = model();
    model.nodes[1].doc.proxy = Some(Spanned::new(zentinel.clone(), Span::default()));
    let mut state = state();
    let dev = state
        .get_mut("web")
        .unwrap()
        .environments
        .get_mut("dev")
        .unwrap();
    dev.proxy = Some(Proxy::legacy());
    dev.variants.insert(
        zentinel.clone(),
        Variant {
            target: bundle(7),
            previous: None,
        },
    );
    let mut n1 = report("n1", "dev", 10, true, Some(7));
    n1.proxy = Some(zentinel);
    let reports = vec![
        report("n0", "dev", 10, true, Some(2)),
        n1,
        // A Sentinel node on the Zentinel bundle is not on its target.
        report("n2", "dev", 10, true, Some(7)),
    ];
    let v = view_of(&model, &state, reports, None);
    let web = &v.environments[0].rollouts[0];
    assert_eq!(web.on_target, 2);
}
