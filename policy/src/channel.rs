//! When to publish a channel manifest, and what it says.

use chrono::{DateTime, Duration, Utc};
use gitfleet_schemas::trust::{AgentSettings, ChannelCheck, ChannelManifest, ChannelRollout};

use crate::model::FleetModel;

/// An HTTP check of the fleet repo as manifests carry it.
pub fn channel_check(c: &gitfleet_schemas::HttpCheck) -> ChannelCheck {
    // check() refuses statuses outside 100..=599 and an empty list.
    let status = |s: &u64| u16::try_from(*s).unwrap_or(u16::MAX);
    let mut statuses = c.expect_status.value.iter().map(status);
    ChannelCheck {
        url: c.url.value.clone(),
        expect_status: statuses.next().unwrap_or(200),
        also_status: statuses.collect(),
        method: c
            .method
            .as_ref()
            .map(|m| m.value.clone())
            .filter(|m| m != "GET"),
        body_contains: c.body_contains.as_ref().map(|v| v.value.clone()),
        body_matches: c.body_matches.as_ref().map(|v| v.value.clone()),
        timeout_ms: c.timeout_ms.as_ref().map(|v| v.value),
        upstream: c.upstream.as_ref().map(|v| v.value.clone()),
    }
}

/// The agent settings fleet.kdl's `defaults` give the nodes of an
/// environment: polls at `poll-interval` while a rollout is `moving`
/// there, at `idle-poll-interval` otherwise (what an idle fleet costs);
/// with `report-to`, `idle` tells agents to use their own idle interval
/// where fleet.kdl sets none.
pub fn agent_settings(model: &FleetModel, moving: bool) -> Option<AgentSettings> {
    let d = &model.fleet.as_ref()?.doc.defaults;
    let busy = d.poll_interval_seconds.as_ref().map(|v| v.value);
    let idle = d.idle_poll_interval_seconds.as_ref().map(|v| v.value);
    let s = AgentSettings {
        drift: d.drift.as_ref().map(|v| v.value),
        poll_seconds: if moving { busy } else { idle.or(busy) },
        poll_jitter_seconds: d.poll_jitter_seconds.as_ref().map(|v| v.value),
        heartbeat_seconds: d.heartbeat_seconds.as_ref().map(|v| v.value),
        health_checks: d.health_checks.iter().map(channel_check).collect(),
        // Both are read only by agents of this version (older ones refuse
        // a manifest with fields they do not know): a fleet turns them on
        // together, by naming `report-to`, once its agents are upgraded.
        idle: !moving && !d.report_to.is_empty(),
        report_to: d.report_to.iter().map(|u| u.value.clone()).collect(),
    };
    (!s.is_empty()).then_some(s)
}

/// The digests fleet.kdl revokes, sorted and each once, as manifests carry
/// them.
pub fn revoked(model: &FleetModel) -> Vec<String> {
    let Some(fleet) = &model.fleet else {
        return Vec::new();
    };
    let set: std::collections::BTreeSet<&str> = fleet
        .doc
        .revoked
        .iter()
        .map(|r| r.digest.value.as_str())
        .collect();
    set.into_iter().map(str::to_owned).collect()
}

/// What a channel manifest says, apart from its serial and expiry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Says {
    pub rollouts: Vec<ChannelRollout>,
    pub settings: Option<AgentSettings>,
    /// Sorted digests ([`revoked`]).
    pub revoked: Vec<String>,
    /// Sorted ids of the environment's held nodes ([`held`]).
    pub held: Vec<String>,
    /// The environment's pinned nodes, sorted.
    pub pinned: Vec<gitfleet_schemas::trust::ChannelPin>,
    /// Sorted ids of the environment's departed nodes.
    pub decommissioned: Vec<String>,
}

/// The nodes of `environment` whose node file holds them, sorted.
pub fn held(model: &FleetModel, environment: &str) -> Vec<String> {
    let mut held: Vec<String> = model
        .nodes
        .iter()
        .filter(|n| n.doc.environment.value == environment && n.doc.hold.is_some())
        .map(|n| n.doc.id.value.clone())
        .collect();
    held.sort();
    held
}

/// The config rollout that delivers `node`'s proxy config, if one does.
pub fn config_rollout_of<'m>(
    model: &'m FleetModel,
    node: &gitfleet_schemas::NodeFile,
) -> Option<&'m str> {
    model
        .rollouts
        .iter()
        .filter(|(_, r)| {
            matches!(
                r.doc.target.value,
                gitfleet_schemas::RolloutTarget::Config(_)
            )
        })
        .find(|(_, r)| crate::select::selects(model, &r.doc.selector, node))
        .map(|(name, _)| name.as_str())
}

/// The pins of `environment`'s held nodes, sorted: each node's bundle for
/// its config rollout, where `known` (bundles by digest, as the store
/// has them) has it. A pin whose bundle the store lacks leaves the node
/// held on what it runs.
pub fn pinned(
    model: &FleetModel,
    environment: &str,
    known: &std::collections::BTreeMap<String, gitfleet_schemas::trust::BundleRef>,
) -> Vec<gitfleet_schemas::trust::ChannelPin> {
    let mut out: Vec<_> = model
        .nodes
        .iter()
        .filter(|n| n.doc.environment.value == environment && n.doc.hold.is_some())
        .filter_map(|n| {
            let digest = &n.doc.hold_bundle.as_ref()?.value;
            Some(gitfleet_schemas::trust::ChannelPin {
                node: n.doc.id.value.clone(),
                rollout: config_rollout_of(model, &n.doc)?.to_owned(),
                bundle: known.get(digest)?.clone(),
            })
        })
        .collect();
    out.sort();
    out
}

/// The digests node files pin, each once.
pub fn pin_digests(model: &FleetModel) -> std::collections::BTreeSet<String> {
    model
        .nodes
        .iter()
        .filter_map(|n| n.doc.hold_bundle.as_ref().map(|b| b.value.clone()))
        .filter(|d| gitfleet_schemas::trust::valid_digest(d))
        .collect()
}

/// The manifest to publish for `environment`, or `None` when the current one
/// says the same and has more than half its freshness left. A changed or
/// nearly expired manifest gets the next serial, so serials only grow.
pub fn next_manifest(
    current: Option<&ChannelManifest>,
    fleet: &str,
    environment: &str,
    says: Says,
    now: DateTime<Utc>,
    freshness: Duration,
) -> Option<ChannelManifest> {
    let Says {
        rollouts,
        settings,
        revoked,
        held,
        pinned,
        decommissioned,
    } = says;
    if let Some(c) = current {
        let same = c.fleet == fleet
            && c.environment == environment
            && c.rollouts == rollouts
            && c.settings == settings
            && c.revoked == revoked
            && c.held == held
            && c.pinned == pinned
            && c.decommissioned == decommissioned;
        if same && c.expires - now > freshness / 2 {
            return None;
        }
    }
    Some(ChannelManifest {
        fleet: fleet.to_owned(),
        environment: environment.to_owned(),
        serial: current.map_or(1, |c| c.serial.saturating_add(1)),
        expires: now + freshness,
        rollouts,
        settings,
        revoked,
        held,
        pinned,
        decommissioned,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 23, 12, 0, 0).unwrap()
    }

    #[test]
    fn the_first_manifest_has_serial_one() {
        let m = next_manifest(
            None,
            "f",
            "prod",
            Says::default(),
            now(),
            Duration::hours(1),
        )
        .unwrap();
        assert_eq!((m.serial, m.expires), (1, now() + Duration::hours(1)));
    }

    #[test]
    fn an_unchanged_fresh_manifest_is_not_rewritten() {
        let m = next_manifest(
            None,
            "f",
            "prod",
            Says::default(),
            now(),
            Duration::hours(1),
        )
        .unwrap();
        let later = now() + Duration::minutes(20);
        assert_eq!(
            next_manifest(
                Some(&m),
                "f",
                "prod",
                Says::default(),
                later,
                Duration::hours(1)
            ),
            None
        );
    }

    #[test]
    fn a_manifest_is_resigned_before_it_expires() {
        let m = next_manifest(
            None,
            "f",
            "prod",
            Says::default(),
            now(),
            Duration::hours(1),
        )
        .unwrap();
        let later = now() + Duration::minutes(31);
        let n = next_manifest(
            Some(&m),
            "f",
            "prod",
            Says::default(),
            later,
            Duration::hours(1),
        )
        .unwrap();
        assert_eq!(n.serial, 2);
        assert_eq!(n.expires, later + Duration::hours(1));
    }

    #[test]
    fn a_new_revocation_republishes_with_the_next_serial() {
        let m = next_manifest(
            None,
            "f",
            "prod",
            Says::default(),
            now(),
            Duration::hours(1),
        )
        .unwrap();
        let later = now() + Duration::minutes(1);
        let revoked = vec![format!("sha256:{}", "a".repeat(64))];
        let n = next_manifest(
            Some(&m),
            "f",
            "prod",
            Says {
                revoked: revoked.clone(),
                ..Says::default()
            },
            later,
            Duration::hours(1),
        )
        .unwrap();
        assert_eq!((n.serial, n.revoked), (2, revoked));
    }

    #[test]
    fn fleet_defaults_become_the_manifests_agent_settings_and_a_change_republishes() {
        use gitfleet_schemas::fleet::DriftPolicy;
        let model = |defaults: &str| {
            let mut f = crate::repo::RepoFiles::new();
            f.insert("fleet.kdl", format!("version 1\nname \"t\"\n{defaults}"));
            crate::check::check(&f).model
        };
        assert_eq!(agent_settings(&model(""), true), None);
        let s = agent_settings(
            &model(
            "defaults {\n    poll-interval \"30s\"\n    poll-jitter \"5s\"\n    heartbeat \"1m\"\n    drift \"repair\"\n    health-check \"http://127.0.0.1:9901/-/health\"\n}\n",
            ),
            true,
        )
        .unwrap();
        assert_eq!(
            s,
            AgentSettings {
                drift: Some(DriftPolicy::Repair),
                poll_seconds: Some(30),
                poll_jitter_seconds: Some(5),
                heartbeat_seconds: Some(60),
                health_checks: vec![ChannelCheck {
                    url: "http://127.0.0.1:9901/-/health".into(),
                    expect_status: 200,
                    ..ChannelCheck::default()
                }],
                idle: false,
                report_to: Vec::new(),
            }
        );
        // Rollout-only defaults say nothing to agents (so agents from
        // before `idle` existed read the manifest).
        for moving in [true, false] {
            assert_eq!(
                agent_settings(&model("defaults {\n    bake \"5m\"\n}\n"), moving),
                None
            );
        }
        // With `report-to`, whether the environment is idle too.
        let reporting = model(
            "defaults {\n    report-to \"https://a.example:8080\" \"http://127.0.0.1:8080\"\n}\n",
        );
        let busy = agent_settings(&reporting, true).unwrap();
        assert_eq!(
            busy.report_to,
            ["https://a.example:8080", "http://127.0.0.1:8080"]
        );
        assert!(!busy.idle);
        assert!(agent_settings(&reporting, false).unwrap().idle);
        // Idle environments poll slowly, where the fleet says so.
        let both =
            model("defaults {\n    poll-interval \"5s\"\n    idle-poll-interval \"5m\"\n}\n");
        let poll = |moving| agent_settings(&both, moving).unwrap().poll_seconds;
        assert_eq!((poll(true), poll(false)), (Some(5), Some(300)));
        let m = next_manifest(
            None,
            "f",
            "prod",
            Says::default(),
            now(),
            Duration::hours(1),
        )
        .unwrap();
        let later = now() + Duration::minutes(1);
        let n = next_manifest(
            Some(&m),
            "f",
            "prod",
            Says {
                settings: Some(s.clone()),
                ..Says::default()
            },
            later,
            Duration::hours(1),
        )
        .unwrap();
        assert_eq!((n.serial, n.settings), (2, Some(s)));
    }
}
