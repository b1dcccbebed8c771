//! The fleet at a glance ([`FleetStatus`]) from what git and the store
//! hold: the repo's model, the rollout state and verified status reports.
//! Pure: the caller reads them and says what time it is.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use gitfleet_schemas::mesh::Topology;
use gitfleet_schemas::state::{EnvState, Phase, RolloutState, RulesState};
use gitfleet_schemas::status::PeerStatus;
use gitfleet_schemas::status::StatusReport;
use gitfleet_schemas::view::{
    Counts, EnvironmentView, ExternalPeerView, FleetStatus, Health, MeshView, NodeView,
    RolloutView, FLEET_STATUS_FORMAT,
};
use gitfleet_schemas::{NodeFile, Proxy};

use crate::model::FleetModel;
use crate::plan::{environment_order, short_of_traffic, Observation, Targets};

/// Everything [`fleet_status`] reads.
#[derive(Clone, Copy, Debug)]
pub struct ViewInputs<'a> {
    pub model: &'a FleetModel,
    pub targets: &'a Targets,
    pub state: &'a BTreeMap<String, RolloutState>,
    /// The rules in force per environment (`rules.json`), when recorded.
    pub rules: Option<&'a RulesState>,
    /// Verified reports by node id.
    pub reports: &'a HashMap<String, Arc<StatusReport>>,
    /// When the store last wrote each node's report (the store's clock):
    /// what liveness is judged on. A node's own `at` counts only where
    /// this has no entry.
    pub written: &'a HashMap<String, DateTime<Utc>>,
    pub reports_ignored: &'a BTreeMap<&'static str, usize>,
    pub commit: &'a str,
    pub state_commit: Option<&'a str>,
    pub now: DateTime<Utc>,
    pub stale_after: Duration,
    /// Only this environment's rollouts and nodes.
    pub environment: Option<&'a str>,
}

/// How long a WireGuard link may go without a handshake before it is
/// stale: WireGuard re-handshakes every 2 minutes while a link is used.
pub const LINK_STALE_AFTER_SECONDS: i64 = 180;

/// A peer its agent marked stale, or without a handshake within
/// `stale_after` of `at`.
pub fn link_is_stale(p: &PeerStatus, at: DateTime<Utc>, stale_after: Duration) -> bool {
    p.stale || p.latest_handshake.is_none_or(|t| at - t > stale_after)
}

/// A node's health as of `now`. Liveness goes by when the store wrote the
/// report (`written`), so a node's clock cannot make it look alive; without
/// that time, by the report's own date, and one dated further ahead than
/// the stale limit is stale too.
pub fn health(
    report: Option<&StatusReport>,
    written: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    stale_after: Duration,
) -> Health {
    match report {
        None => Health::Unreported,
        Some(r) => {
            let last = written.unwrap_or(r.at);
            if now - last > stale_after || last - now > stale_after {
                Health::Stale
            } else if !r.healthy {
                Health::Unhealthy
            } else {
                Health::Healthy
            }
        }
    }
}

fn count(c: &mut Counts, node: &NodeView) {
    c.nodes += 1;
    match node.health {
        Health::Healthy => c.healthy += 1,
        Health::Unhealthy => c.unhealthy += 1,
        Health::Stale => c.stale += 1,
        Health::Unreported => c.unreported += 1,
    }
    if !node.drift.is_empty() {
        c.drifted += 1;
    }
}

/// The view of the fleet `inputs` describe.
pub fn fleet_status(inputs: &ViewInputs<'_>) -> FleetStatus {
    let model = inputs.model;
    let wanted = |env: &str| inputs.environment.is_none_or(|e| e == env);
    // WireGuard keys to the nodes they belong to, for naming peers.
    let keys: HashMap<&str, &str> = model
        .nodes
        .iter()
        .filter_map(|n| {
            let wg = n.doc.wireguard.as_ref()?;
            Some((wg.public_key.value.as_str(), n.doc.id.value.as_str()))
        })
        // External peers of the meshes, by their names.
        .chain(model.meshes.values().flat_map(|m| {
            m.doc
                .peers
                .iter()
                .map(|p| (p.public_key.value.as_str(), p.name.value.as_str()))
        }))
        .collect();
    let nodes: Vec<NodeView> = model
        .nodes
        .iter()
        .filter(|n| wanted(&n.doc.environment.value))
        .map(|n| node_view(inputs, &n.doc, &keys))
        .collect();
    let mut nodes = nodes;
    nodes.sort_by(|a, b| a.id.cmp(&b.id));

    let mut order: Vec<String> = environment_order(model)
        .into_iter()
        .map(str::to_owned)
        .collect();
    for n in &nodes {
        if !order.contains(&n.environment) {
            order.push(n.environment.clone());
        }
    }
    let mut counts: BTreeMap<&str, Counts> = BTreeMap::new();
    let mut totals = Counts::default();
    for n in &nodes {
        count(counts.entry(&n.environment).or_default(), n);
        count(&mut totals, n);
    }
    let environments = order
        .iter()
        .filter(|e| wanted(e))
        .map(|env| EnvironmentView {
            name: env.clone(),
            counts: counts.get(env.as_str()).copied().unwrap_or_default(),
            rules: inputs
                .rules
                .and_then(|r| r.environments.get(env.as_str()))
                .cloned(),
            waiting: crate::approvals::waiting(inputs.state, inputs.rules, env),
            rollouts: rollouts_in(inputs, env),
        })
        .collect();
    let meshes = model
        .meshes
        .iter()
        .map(|(name, m)| {
            let members: Vec<&NodeFile> = crate::mesh::members(model, &m.doc)
                .into_iter()
                .filter(|n| n.wireguard.is_some() && wanted(&n.environment.value))
                .collect();
            let hubs = match (&m.doc.hubs, m.doc.topology()) {
                (Some(h), Topology::HubAndSpoke) => members
                    .iter()
                    .filter(|n| h.matches_labels(&n.labels))
                    .map(|n| n.id.value.clone())
                    .collect(),
                _ => Vec::new(),
            };
            let mut members: Vec<String> = members.iter().map(|n| n.id.value.clone()).collect();
            members.sort();
            MeshView {
                name: name.clone(),
                cidr: m.doc.cidr.value.clone(),
                topology: m.doc.topology(),
                members,
                hubs,
                external: m
                    .doc
                    .peers
                    .iter()
                    .map(|p| ExternalPeerView {
                        name: p.name.value.clone(),
                        public_key: p.public_key.value.clone(),
                        address: p.address.value.clone(),
                    })
                    .collect(),
            }
        })
        .collect();
    FleetStatus {
        format: FLEET_STATUS_FORMAT,
        fleet: model
            .fleet
            .as_ref()
            .map(|f| f.doc.name.value.clone())
            .unwrap_or_default(),
        at: inputs.now,
        commit: inputs.commit.to_owned(),
        state_commit: inputs.state_commit.map(str::to_owned),
        stale_after_seconds: u64::try_from(inputs.stale_after.num_seconds()).unwrap_or(0),
        totals,
        environments,
        nodes,
        reports_ignored: inputs
            .reports_ignored
            .iter()
            .map(|(k, v)| ((*k).to_owned(), *v as u64))
            .collect(),
        meshes,
    }
}

fn node_view(inputs: &ViewInputs<'_>, node: &NodeFile, keys: &HashMap<&str, &str>) -> NodeView {
    let id = node.id.value.as_str();
    let environment = node.environment.value.as_str();
    let labels: BTreeMap<String, String> = node
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), v.value.clone()))
        .collect();
    let report = inputs.reports.get(id).map(|r| &**r);
    let written = inputs.written.get(id).copied();
    let proxy = &inputs.targets.proxy(id);
    let (now, stale_after) = (inputs.now, inputs.stale_after);
    let mut active = BTreeMap::new();
    let mut previous = BTreeMap::new();
    let mut errors = BTreeMap::new();
    if let Some(r) = report {
        for (rollout, s) in &r.rollouts {
            if let Some(a) = &s.active {
                active.insert(rollout.clone(), a.digest.clone());
            }
            if let Some(p) = &s.previous {
                previous.insert(rollout.clone(), p.digest.clone());
            }
            if let Some(e) = &s.error {
                errors.insert(rollout.clone(), e.clone());
            }
        }
    }
    NodeView {
        id: id.to_owned(),
        environment: environment.to_owned(),
        labels,
        health: health(report, written, now, stale_after),
        last_report: report.map(|r| written.unwrap_or(r.at)),
        report_age_seconds: report.map(|r| (now - written.unwrap_or(r.at)).num_seconds()),
        channel_serial: report.and_then(|r| r.channel_serial),
        active,
        previous,
        errors,
        last_error: report.and_then(|r| r.last_error.clone()),
        http_checks: report.map(|r| r.http_checks.clone()).unwrap_or_default(),
        drift: report.map(|r| r.drift.clone()).unwrap_or_default(),
        metrics: report.map(|r| r.metrics.clone()),
        wireguard: report.and_then(|r| r.wireguard.clone()).map(|mut wg| {
            // A rotation request is shown (and would go into git) only as
            // what it must be: a WireGuard key.
            wg.next_public_key = wg
                .next_public_key
                .filter(|k| crate::checks::is_key_text(k));
            wg
        }),
        monitored: report.map(|r| r.monitored.clone()).unwrap_or_default(),
        peer_names: report
            .into_iter()
            .flat_map(|r| r.wireguard.iter().chain(&r.monitored))
            .flat_map(|wg| &wg.peers)
            .filter_map(|p| {
                let id = keys.get(p.public_key.as_str())?;
                Some((p.public_key.clone(), (*id).to_owned()))
            })
            .collect(),
        proxy: proxy.clone(),
        proxy_mismatch: report.and_then(|r| {
            let runs = r.proxy.clone().unwrap_or_else(Proxy::legacy);
            (runs != *proxy).then(|| {
                format!("the agent drives {runs}, and the fleet repo says {proxy}: it refuses the bundles built for {proxy}")
            })
        }),
        hold: node.hold.as_ref().map(|h| h.value.clone()),
        pinned: node.hold_bundle.as_ref().map(|b| b.value.clone()),
    }
}

/// The state's reason, with the live count where a step waits for
/// traffic (the state keeps a stable reason so it changes only when
/// something happens): "waiting for traffic: 37 of 100 requests (edge-2)".
fn live_reason(inputs: &ViewInputs<'_>, rollout: &str, s: &EnvState, members: &[String]) -> String {
    let waiting = s.phase == Phase::Verifying && s.reason.contains("waiting for traffic");
    let file = inputs.model.rollouts.get(rollout).map(|r| &r.doc);
    let (true, Some(file)) = (waiting, file) else {
        return s.reason.clone();
    };
    let admitted = usize::try_from(s.admitted)
        .unwrap_or(usize::MAX)
        .min(members.len());
    let observed: Vec<(&str, Observation, &str)> = members[..admitted]
        .iter()
        .filter_map(|n| {
            let report = Observation::from_report(inputs.reports.get(n)?);
            Some((n.as_str(), report, target_of(inputs, s, n)))
        })
        .collect();
    let thinnest = short_of_traffic(
        &file.gates,
        observed.iter().map(|(n, o, d)| (*n, o, *d)),
        rollout,
    );
    match thinnest {
        Some((node, seen, needed)) => format!(
            "step {}/{}: waiting for traffic: {seen} of {needed} requests ({node})",
            s.step,
            file.steps.len()
        ),
        None => s.reason.clone(),
    }
}

/// The digest of the bundle `node` takes in `s`: its proxy's.
fn target_of<'s>(inputs: &ViewInputs<'_>, s: &'s EnvState, node: &str) -> &'s str {
    if s.variants.is_empty() {
        return &s.target.digest;
    }
    &s.target_for(Some(&inputs.targets.proxy(node))).digest
}

/// Every rollout with state in `env`, by name.
fn rollouts_in(inputs: &ViewInputs<'_>, env: &str) -> Vec<RolloutView> {
    let mut out = Vec::new();
    for (name, state) in inputs.state {
        let Some(s) = state.environments.get(env) else {
            continue;
        };
        let members = inputs.targets.get(name, env).map_or(&[][..], |m| m.nodes());
        let on_target = members
            .iter()
            .filter(|n| {
                inputs.reports.get(*n).is_some_and(|r| {
                    r.rollouts
                        .get(name)
                        .and_then(|a| a.active.as_ref())
                        .is_some_and(|a| a.digest == target_of(inputs, s, n))
                })
            })
            .count();
        let steps = inputs
            .model
            .rollouts
            .get(name)
            .map_or(0, |r| r.doc.steps.len() as u32);
        out.push(RolloutView {
            name: name.clone(),
            phase: s.phase,
            step: s.step,
            steps,
            target: s.target.digest.clone(),
            previous: s.previous.as_ref().map(|p| p.digest.clone()),
            source_commit: s.source_commit.clone(),
            nodes: members.len() as u64,
            admitted: s.admitted,
            on_target: on_target as u64,
            since: s.since,
            reason: live_reason(inputs, name, s, members),
            failed_nodes: s.failed_nodes.clone(),
        });
    }
    out
}
