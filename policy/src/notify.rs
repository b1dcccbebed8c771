//! What to tell whom: notifications derived from the state branch (a
//! rollout's changes between two commits) and from the fleet's status (a
//! node gone stale, drift), and the outbox they wait in until a receiver
//! takes them. Pure: the reconciler's notifier feeds it commits, views and
//! the clock, and carries out the sends.
//!
//! Every notification's id comes from what identifies its event (the state
//! commit and the rollout's change; the node and its last report), so any
//! leader deriving it again, after a crash or on another replica, sends it
//! under the same id and receivers de-duplicate.

use chrono::{DateTime, Duration, Utc};
use gitfleet_schemas::notify::{
    notification_id, Notification, Notify, NotifyKind, NotifyLedger, Outgoing, NOTIFICATION_FORMAT,
};
use gitfleet_schemas::state::{EnvState, Phase, RolloutState};
use gitfleet_schemas::view::{FleetStatus, Health};

/// A delivery is given up after this many failed attempts (about three
/// hours of retries with [`backoff`]).
pub const MAX_ATTEMPTS: u32 = 24;

/// How long to wait after the `attempts`-th failed attempt: 5 s doubling,
/// at most 10 minutes.
pub fn backoff(attempts: u32) -> Duration {
    let secs = 5u64.saturating_mul(1u64 << attempts.saturating_sub(1).min(10));
    Duration::seconds(secs.min(600) as i64)
}

/// The rollout events one state commit records for `rollout`: what changed
/// from `before` (the parent's state, if it had one) to `after`.
pub fn rollout_notifications(
    fleet: &str,
    state_commit: &str,
    rollout: &str,
    before: Option<&RolloutState>,
    after: Option<&RolloutState>,
) -> Vec<Notification> {
    let Some(after) = after else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (env, now) in &after.environments {
        // The same change: a rollout whose nodes moved to another proxy
        // goes on where it was (its main bundle may change with it).
        let was = before
            .and_then(|b| b.environments.get(env))
            .filter(|w| w.source_commit == now.source_commit);
        for (kind, step) in changes(was, now) {
            let step_part = step.map(|s| s.to_string()).unwrap_or_default();
            // What the change is, not which commit holds it: compaction
            // rebuilds commits under new ids.
            let id = notification_id(&[
                fleet,
                rollout,
                env,
                &now.target.digest,
                &now.source_commit,
                kind.as_str(),
                &step_part,
                &now.since.to_rfc3339(),
            ]);
            out.push(Notification {
                format: NOTIFICATION_FORMAT,
                id,
                fleet: fleet.to_owned(),
                kind,
                environment: Some(env.clone()),
                rollout: Some(rollout.to_owned()),
                node: None,
                step,
                target: Some(now.target.digest.clone()),
                source_commit: Some(now.source_commit.clone()),
                state_commit: Some(state_commit.to_owned()),
                at: now.since,
                summary: rollout_summary(rollout, env, kind, step, now),
            });
        }
    }
    out
}

/// What a pass's state change would tell each receiver, receiver by
/// receiver: for `--dry-run`, which writes nothing and so tells nobody.
pub fn planned(
    fleet: &str,
    receivers: &[Notify],
    before: &std::collections::BTreeMap<String, RolloutState>,
    after: &std::collections::BTreeMap<String, RolloutState>,
) -> Vec<(String, Notification)> {
    let mut out = Vec::new();
    for (rollout, state) in after {
        let notes = rollout_notifications(
            fleet,
            "(not committed)",
            rollout,
            before.get(rollout),
            Some(state),
        );
        for n in notes {
            for r in receivers.iter().filter(|r| r.wants(&n)) {
                out.push((r.name.value.clone(), n.clone()));
            }
        }
    }
    out
}

/// The steps completed by a state: all of them once complete, else the
/// ones before the current.
fn steps_done(s: &EnvState) -> u32 {
    match s.phase {
        Phase::Complete => s.step,
        _ => s.step.saturating_sub(1),
    }
}

/// Whether nodes have begun taking the target (or it already ended).
fn started(s: &EnvState) -> bool {
    s.step >= 1
        && !matches!(
            s.phase,
            Phase::Pending | Phase::AwaitingApproval | Phase::WaitingWindow
        )
}

/// The events between `was` (the same target's earlier state, if any)
/// and `now`, in the order they happened.
fn changes(was: Option<&EnvState>, now: &EnvState) -> Vec<(NotifyKind, Option<u32>)> {
    let mut out = Vec::new();
    let entered = |phase: Phase| now.phase == phase && was.is_none_or(|w| w.phase != phase);
    if entered(Phase::AwaitingApproval) {
        out.push((NotifyKind::WaitingForApproval, None));
    }
    if started(now) && !was.is_some_and(started) {
        out.push((NotifyKind::RolloutStarted, None));
    }
    let done_before = was.map_or(0, steps_done);
    // A rollout that failed did not complete the step it failed in.
    if !matches!(now.phase, Phase::Failed | Phase::RolledBack) {
        for step in (done_before + 1)..=steps_done(now) {
            out.push((NotifyKind::StepCompleted, Some(step)));
        }
    }
    for (phase, kind) in [
        (Phase::Complete, NotifyKind::RolloutCompleted),
        (Phase::Failed, NotifyKind::RolloutFailed),
        (Phase::RolledBack, NotifyKind::RolloutRolledBack),
    ] {
        if entered(phase) {
            out.push((kind, None));
        }
    }
    out
}

fn short(digest: &str) -> &str {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    hex.get(..12).unwrap_or(hex)
}

fn rollout_summary(
    rollout: &str,
    env: &str,
    kind: NotifyKind,
    step: Option<u32>,
    s: &EnvState,
) -> String {
    let target = short(&s.target.digest);
    let what = match kind {
        NotifyKind::RolloutStarted => format!("started rolling out {target}"),
        NotifyKind::StepCompleted => format!("step {} completed", step.unwrap_or(0)),
        NotifyKind::RolloutCompleted => format!("{target} completed"),
        NotifyKind::RolloutFailed => format!("{target} failed: {}", s.reason),
        NotifyKind::RolloutRolledBack => format!("{target} rolled back: {}", s.reason),
        NotifyKind::WaitingForApproval => format!("{target} waits for approval: {}", s.reason),
        other => other.as_str().to_owned(),
    };
    format!("{rollout} in {env}: {what}")
}

/// The conditions that hold in `status` and are worth telling: stale
/// nodes (once per last report) and drift (once per set of drifted files
/// and active bundles).
pub fn condition_notifications(status: &FleetStatus) -> Vec<Notification> {
    let mut out = Vec::new();
    for node in &status.nodes {
        let base = |kind: NotifyKind, key: &str, summary: String, at: DateTime<Utc>| {
            let id = notification_id(&[&status.fleet, kind.as_str(), &node.id, key]);
            Notification {
                environment: Some(node.environment.clone()),
                node: Some(node.id.clone()),
                ..Notification::new(id, &status.fleet, kind, at, summary)
            }
        };
        if node.health == Health::Stale {
            if let Some(last) = node.last_report {
                out.push(base(
                    NotifyKind::NodeStale,
                    &last.to_rfc3339(),
                    format!(
                        "node {} in {}: not heard from since {}",
                        node.id,
                        node.environment,
                        last.format("%Y-%m-%d %H:%M:%S UTC")
                    ),
                    status.at,
                ));
            }
        }
        if !node.drift.is_empty() {
            let mut key: Vec<String> = node
                .drift
                .iter()
                .map(|d| {
                    format!(
                        "{}={}",
                        d.path,
                        d.found_sha256.as_deref().unwrap_or("missing")
                    )
                })
                .collect();
            key.extend(node.active.iter().map(|(r, b)| format!("{r}@{b}")));
            key.sort();
            let paths: Vec<&str> = node.drift.iter().map(|d| d.path.as_str()).collect();
            out.push(base(
                NotifyKind::DriftFound,
                &key.join("\n"),
                format!(
                    "node {} in {}: files differ from the active bundle: {}",
                    node.id,
                    node.environment,
                    paths.join(", ")
                ),
                node.last_report.unwrap_or(status.at),
            ));
        }
    }
    out
}

/// Channel manifests with under a third of their life left (`watch`:
/// environment → when its manifest expires and how long the environment's
/// manifests live). The reconciler re-signs at half, so one this close
/// means passes have not re-signed it for a while.
pub fn manifest_notifications(
    fleet: &str,
    watch: &std::collections::BTreeMap<String, (DateTime<Utc>, Duration)>,
    now: DateTime<Utc>,
) -> Vec<Notification> {
    watch
        .iter()
        .filter(|(_, (expires, freshness))| *expires - now < *freshness / 3)
        .map(|(env, (expires, _))| {
            let kind = NotifyKind::ManifestExpiring;
            let id = notification_id(&[fleet, kind.as_str(), env, &expires.to_rfc3339()]);
            let summary = format!(
                "the channel manifest of {env} expires at {} and has not been re-signed",
                expires.format("%Y-%m-%d %H:%M:%S UTC")
            );
            Notification {
                environment: Some(env.clone()),
                ..Notification::new(id, fleet, kind, now, summary)
            }
        })
        .collect()
}

/// The reconciler cannot reach the store, since `since` (the first failed
/// pass of this outage: one id per outage).
pub fn store_unreachable(fleet: &str, since: DateTime<Utc>, error: &str) -> Notification {
    let kind = NotifyKind::StoreUnreachable;
    Notification::new(
        notification_id(&[fleet, kind.as_str(), &since.to_rfc3339()]),
        fleet,
        kind,
        since,
        format!("the reconciler cannot reach the object store: {error}"),
    )
}

/// The conditions among `current` not yet told, each under an id of its
/// own: what identifies the condition (`current`'s ids) and when it was
/// first seen to hold (`now`), recorded in the ledger's `holding` with the
/// outbox. One that clears and comes back is a new occurrence, told under
/// a new id.
pub fn new_conditions(
    ledger: &mut NotifyLedger,
    current: Vec<Notification>,
    now: DateTime<Utc>,
) -> Vec<Notification> {
    let mut holding = std::collections::BTreeMap::new();
    let mut fresh = Vec::new();
    for mut n in current {
        let key = n.id.clone();
        let id = match ledger.holding.get(&key) {
            Some(id) => id.clone(),
            None => {
                n.id = notification_id(&[&key, &now.to_rfc3339()]);
                let id = n.id.clone();
                fresh.push(n);
                id
            }
        };
        holding.insert(key, id);
    }
    ledger.holding = holding;
    fresh
}

/// Put `notes` in the outbox, once for each receiver that hears them and
/// does not have them yet.
pub fn enqueue(ledger: &mut NotifyLedger, receivers: &[Notify], notes: &[Notification]) -> usize {
    let mut added = 0;
    for n in notes {
        for r in receivers.iter().filter(|r| r.wants(n)) {
            let queued = ledger
                .outbox
                .iter()
                .any(|o| o.receiver == r.name.value && o.notification.id == n.id);
            if !queued {
                ledger.outbox.push(Outgoing {
                    receiver: r.name.value.clone(),
                    notification: n.clone(),
                    attempts: 0,
                    next_at: None,
                    last_error: None,
                });
                added += 1;
            }
        }
    }
    added
}

/// The outbox entries due at `now` whose receiver still exists, by index.
pub fn due(ledger: &NotifyLedger, receivers: &[Notify], now: DateTime<Utc>) -> Vec<usize> {
    ledger
        .outbox
        .iter()
        .enumerate()
        .filter(|(_, o)| o.next_at.is_none_or(|t| t <= now))
        .filter(|(_, o)| receivers.iter().any(|r| r.name.value == o.receiver))
        .map(|(i, _)| i)
        .collect()
}

/// What became of one attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attempt {
    Delivered,
    Failed(String),
}

/// What recording attempts did to the outbox.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recorded {
    pub delivered: Vec<Outgoing>,
    /// Deliveries dropped after [`MAX_ATTEMPTS`], or whose receiver left
    /// fleet.kdl.
    pub given_up: Vec<Outgoing>,
}

/// Apply the outcomes of attempts (by outbox index) and drop deliveries
/// whose receiver no longer exists.
pub fn record(
    ledger: &mut NotifyLedger,
    receivers: &[Notify],
    outcomes: &[(usize, Attempt)],
    now: DateTime<Utc>,
) -> Recorded {
    let mut out = Recorded::default();
    for (i, attempt) in outcomes {
        let Some(o) = ledger.outbox.get_mut(*i) else {
            continue;
        };
        o.attempts = o.attempts.saturating_add(1);
        match attempt {
            Attempt::Delivered => {
                o.next_at = None;
                o.last_error = None;
            }
            Attempt::Failed(why) => {
                o.next_at = Some(now + backoff(o.attempts));
                o.last_error = Some(why.clone());
            }
        }
    }
    let delivered: std::collections::BTreeSet<usize> = outcomes
        .iter()
        .filter(|(_, a)| *a == Attempt::Delivered)
        .map(|(i, _)| *i)
        .collect();
    let outbox = std::mem::take(&mut ledger.outbox);
    for (i, o) in outbox.into_iter().enumerate() {
        if delivered.contains(&i) {
            out.delivered.push(o);
        } else if o.attempts >= MAX_ATTEMPTS
            || !receivers.iter().any(|r| r.name.value == o.receiver)
        {
            out.given_up.push(o);
        } else {
            ledger.outbox.push(o);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use gitfleet_schemas::trust::BundleRef;

    fn env(phase: Phase, step: u32, target: &str) -> EnvState {
        env_from(phase, step, target, "c")
    }

    /// A state of the change `source` (a letter).
    fn env_from(phase: Phase, step: u32, target: &str, source: &str) -> EnvState {
        EnvState {
            target: BundleRef {
                digest: format!("sha256:{}", target.repeat(64)),
                length: 1,
            },
            source_commit: source.repeat(40),
            changed_from: None,
            previous: None,
            phase,
            step,
            admitted: 0,
            on_target: None,
            since: DateTime::<Utc>::UNIX_EPOCH,
            reason: "because".into(),
            failed_nodes: vec![],
            proxy: None,
            variants: Default::default(),
        }
    }

    fn state(e: EnvState) -> RolloutState {
        RolloutState {
            format: 1,
            environments: [("dev".to_owned(), e)].into(),
        }
    }

    fn kinds(before: Option<EnvState>, after: EnvState) -> Vec<(NotifyKind, Option<u32>)> {
        let b = before.map(state);
        rollout_notifications("acme", "s1", "edge", b.as_ref(), Some(&state(after)))
            .into_iter()
            .map(|n| (n.kind, n.step))
            .collect()
    }

    use NotifyKind::*;

    #[test]
    fn each_rollout_transition_is_told_once_in_order() {
        type Case = (Option<EnvState>, EnvState, Vec<(NotifyKind, Option<u32>)>);
        let cases: Vec<Case> = vec![
            (None, env(Phase::Pending, 0, "a"), vec![]),
            (
                None,
                env(Phase::AwaitingApproval, 0, "a"),
                vec![(WaitingForApproval, None)],
            ),
            (
                Some(env(Phase::AwaitingApproval, 0, "a")),
                env(Phase::AwaitingApproval, 0, "a"),
                vec![],
            ),
            (
                Some(env(Phase::Pending, 0, "a")),
                env(Phase::Progressing, 1, "a"),
                vec![(RolloutStarted, None)],
            ),
            (
                Some(env(Phase::Verifying, 1, "a")),
                env(Phase::Progressing, 2, "a"),
                vec![(StepCompleted, Some(1))],
            ),
            (
                Some(env(Phase::Verifying, 2, "a")),
                env(Phase::Complete, 2, "a"),
                vec![(StepCompleted, Some(2)), (RolloutCompleted, None)],
            ),
            (
                Some(env(Phase::Progressing, 1, "a")),
                env(Phase::Complete, 3, "a"),
                vec![
                    (StepCompleted, Some(1)),
                    (StepCompleted, Some(2)),
                    (StepCompleted, Some(3)),
                    (RolloutCompleted, None),
                ],
            ),
            (
                Some(env(Phase::Verifying, 2, "a")),
                env(Phase::RolledBack, 2, "a"),
                vec![(RolloutRolledBack, None)],
            ),
            (
                Some(env(Phase::Verifying, 1, "a")),
                env(Phase::Failed, 1, "a"),
                vec![(RolloutFailed, None)],
            ),
            (
                Some(env(Phase::RolledBack, 2, "a")),
                env(Phase::RolledBack, 2, "a"),
                vec![],
            ),
            // A change's bundle regrouped for another proxy (same source
            // commit): the rollout goes on, nothing to tell.
            (
                Some(env(Phase::Verifying, 2, "a")),
                env(Phase::Verifying, 2, "b"),
                vec![],
            ),
        ];
        for (before, after, want) in cases {
            let got = kinds(before.clone(), after.clone());
            assert_eq!(got, want, "{before:?} → {after:?}");
        }
    }

    #[test]
    fn a_new_change_starts_over_whatever_the_last_one_did() {
        let cases = [
            (
                env_from(Phase::Complete, 2, "a", "c"),
                env_from(Phase::Progressing, 1, "b", "d"),
                vec![(RolloutStarted, None)],
            ),
            (
                env_from(Phase::Complete, 1, "a", "c"),
                env_from(Phase::RolledBack, 1, "b", "d"),
                vec![(RolloutStarted, None), (RolloutRolledBack, None)],
            ),
        ];
        for (before, after, want) in cases {
            assert_eq!(
                kinds(Some(before.clone()), after.clone()),
                want,
                "{before:?} → {after:?}"
            );
        }
    }

    #[test]
    fn ids_depend_on_the_event_not_the_commit_holding_it() {
        let after = state(env(Phase::RolledBack, 1, "a"));
        let before = state(env(Phase::Verifying, 1, "a"));
        let one = rollout_notifications("acme", "s1", "edge", Some(&before), Some(&after));
        let again = rollout_notifications("acme", "s1", "edge", Some(&before), Some(&after));
        let compacted = rollout_notifications("acme", "s2", "edge", Some(&before), Some(&after));
        assert_eq!(one, again);
        assert_eq!(one[0].id, compacted[0].id);
        let mut later = after.clone();
        if let Some(e) = later.environments.get_mut("dev") {
            e.since += Duration::seconds(1);
        }
        let other = rollout_notifications("acme", "s1", "edge", Some(&before), Some(&later));
        assert_ne!(one[0].id, other[0].id);
        assert_eq!(one[0].summary.split(':').next(), Some("edge in dev"));
    }

    fn receiver(name: &str, kinds: &[NotifyKind]) -> Notify {
        use gitfleet_schemas::notify::{Given, NotifyTarget};
        use gitfleet_schemas::Spanned;
        let s = |v: &str| Spanned::new(v.to_owned(), Default::default());
        Notify {
            name: s(name),
            target: NotifyTarget::Slack {
                url: Given::Value(s("https://h/")),
            },
            events: kinds
                .iter()
                .map(|k| Spanned::new(*k, Default::default()))
                .collect(),
            environments: vec![],
        }
    }

    #[test]
    fn the_outbox_retries_with_backoff_and_gives_up_at_last() {
        let receivers = [receiver("ops", &[]), receiver("failures", &[RolloutFailed])];
        let mut ledger = NotifyLedger::default();
        let notes = rollout_notifications(
            "acme",
            "s1",
            "edge",
            Some(&state(env(Phase::Verifying, 1, "a"))),
            Some(&state(env(Phase::Failed, 1, "a"))),
        );
        assert_eq!(enqueue(&mut ledger, &receivers, &notes), 2);
        // Enqueuing again adds nothing.
        assert_eq!(enqueue(&mut ledger, &receivers, &notes), 0);
        let t0 = DateTime::<Utc>::UNIX_EPOCH;
        assert_eq!(due(&ledger, &receivers, t0), [0, 1]);
        let r = record(
            &mut ledger,
            &receivers,
            &[(0, Attempt::Delivered), (1, Attempt::Failed("503".into()))],
            t0,
        );
        assert_eq!(r.delivered.len(), 1);
        assert_eq!(ledger.outbox.len(), 1);
        assert_eq!(ledger.outbox[0].receiver, "failures");
        assert!(due(&ledger, &receivers, t0).is_empty());
        assert_eq!(due(&ledger, &receivers, t0 + backoff(1)), [0]);
        let mut at = t0;
        for _ in 1..MAX_ATTEMPTS - 1 {
            at += backoff(ledger.outbox[0].attempts);
            record(
                &mut ledger,
                &receivers,
                &[(0, Attempt::Failed("503".into()))],
                at,
            );
        }
        assert_eq!(ledger.outbox[0].attempts, MAX_ATTEMPTS - 1);
        let r = record(
            &mut ledger,
            &receivers,
            &[(0, Attempt::Failed("x".into()))],
            at,
        );
        assert_eq!(r.given_up.len(), 1);
        assert!(ledger.outbox.is_empty());
    }

    #[test]
    fn a_receiver_removed_from_fleet_kdl_loses_its_deliveries() {
        let mut ledger = NotifyLedger::default();
        let notes = rollout_notifications(
            "acme",
            "s1",
            "edge",
            None,
            Some(&state(env(Phase::Progressing, 1, "a"))),
        );
        enqueue(&mut ledger, &[receiver("ops", &[])], &notes);
        assert!(due(&ledger, &[], DateTime::<Utc>::UNIX_EPOCH).is_empty());
        let r = record(&mut ledger, &[], &[], DateTime::<Utc>::UNIX_EPOCH);
        assert_eq!(r.given_up.len(), 1);
        assert!(ledger.outbox.is_empty());
    }

    #[test]
    fn backoff_doubles_from_five_seconds_to_ten_minutes() {
        let secs: Vec<i64> = (1..=9).map(|a| backoff(a).num_seconds()).collect();
        assert_eq!(secs, [5, 10, 20, 40, 80, 160, 320, 600, 600]);
    }

    #[test]
    fn a_manifest_is_told_expiring_with_a_third_of_its_life_left() {
        let t0 = DateTime::<Utc>::UNIX_EPOCH;
        let hour = Duration::hours(1);
        let watch: std::collections::BTreeMap<String, (DateTime<Utc>, Duration)> = [
            ("dev".to_owned(), (t0 + Duration::minutes(21), hour)),
            ("prod".to_owned(), (t0 + Duration::minutes(19), hour)),
        ]
        .into();
        let told = manifest_notifications("acme", &watch, t0);
        assert_eq!(told.len(), 1);
        assert_eq!(told[0].environment.as_deref(), Some("prod"));
        assert_eq!(told[0].kind, ManifestExpiring);
        // The same manifest, a pass later: the same id.
        let again = manifest_notifications("acme", &watch, t0 + Duration::seconds(30));
        assert_eq!(again[0].id, told[0].id);
    }

    #[test]
    fn one_store_outage_is_one_id() {
        let t0 = DateTime::<Utc>::UNIX_EPOCH;
        let a = store_unreachable("acme", t0, "connection refused");
        let b = store_unreachable("acme", t0, "timed out");
        let c = store_unreachable("acme", t0 + Duration::minutes(5), "connection refused");
        assert_eq!(a.id, b.id);
        assert_ne!(a.id, c.id);
        assert_eq!(a.environment, None);
    }

    #[test]
    fn a_condition_is_told_once_while_it_holds_and_again_after_it_clears() {
        let mut ledger = NotifyLedger::default();
        let n = |id: &str| Notification {
            node: Some("n1".into()),
            ..Notification::new(
                id.into(),
                "acme",
                NodeStale,
                DateTime::<Utc>::UNIX_EPOCH,
                String::new(),
            )
        };
        let t0 = DateTime::<Utc>::UNIX_EPOCH;
        let first = new_conditions(&mut ledger, vec![n("a")], t0);
        assert_eq!(first.len(), 1);
        assert!(new_conditions(&mut ledger, vec![n("a")], t0 + Duration::minutes(1)).is_empty());
        assert!(new_conditions(&mut ledger, vec![], t0 + Duration::minutes(2)).is_empty());
        // Back again: another occurrence, another id.
        let again = new_conditions(&mut ledger, vec![n("a")], t0 + Duration::minutes(3));
        assert_eq!(again.len(), 1);
        assert_ne!(again[0].id, first[0].id);
    }
}
