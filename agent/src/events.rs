//! The node's event log: what happened here (activations, rollbacks,
//! refused configs, drift, the store going away and back, root rotations),
//! written to the store as one signed object per UTC day
//! (`events/<day>/<node>.json`, see `gitfleet_schemas::events`).
//!
//! Events wait in memory until the next status report, which writes them:
//! one PUT of the day's object for however many there are, none when
//! nothing happened. A write that fails keeps them for the next report;
//! they are lost only if the agent stops before one succeeds.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use ed25519_dalek::SigningKey;
use gitfleet_io::store::Store;
use gitfleet_schemas::events::{EventKind, NodeEvent, NodeEvents};
use gitfleet_schemas::fleet::DriftPolicy;
use gitfleet_schemas::keys;
use gitfleet_schemas::status::Drift;
use gitfleet_schemas::trust::{Document as _, PublicKey};

/// At most this many events wait for a write; the oldest go first.
const MAX_WAITING: usize = 1000;

#[derive(Debug)]
pub struct EventLog {
    fleet: String,
    node: String,
    /// Not yet written, oldest first.
    waiting: Vec<NodeEvent>,
    /// The day last written (or read back), as the store has it.
    day: Option<NodeEvents>,
    /// The drift the last report found under each rollout's active
    /// bundle, to record only changes.
    drift: BTreeMap<String, Vec<Drift>>,
    /// The store could not be read at the last poll.
    store_down: bool,
}

impl EventLog {
    pub fn new(fleet: &str, node: &str) -> EventLog {
        EventLog {
            fleet: fleet.to_owned(),
            node: node.to_owned(),
            waiting: Vec::new(),
            day: None,
            drift: BTreeMap::new(),
            store_down: false,
        }
    }

    /// Events recorded and not yet written.
    pub fn waiting(&self) -> &[NodeEvent] {
        &self.waiting
    }

    pub fn record(
        &mut self,
        at: DateTime<Utc>,
        kind: EventKind,
        rollout: Option<&str>,
        bundle: Option<&str>,
        detail: Option<String>,
    ) {
        tracing::info!(node = %self.node, kind = kind.name(), rollout, bundle, detail, "event");
        self.waiting.push(NodeEvent {
            at,
            kind,
            rollout: rollout.map(str::to_owned),
            bundle: bundle.map(str::to_owned),
            detail,
        });
        let over = self.waiting.len().saturating_sub(MAX_WAITING);
        self.waiting.drain(..over);
    }

    /// What a report found against `rollout`'s active `bundle`: an event
    /// when it differs from what the last one found there (and is not
    /// nothing).
    pub fn drift(
        &mut self,
        at: DateTime<Utc>,
        policy: DriftPolicy,
        rollout: &str,
        bundle: &str,
        drift: &[Drift],
    ) {
        let last = self.drift.entry(rollout.to_owned()).or_default();
        if drift == last.as_slice() {
            return;
        }
        *last = drift.to_vec();
        if drift.is_empty() {
            return;
        }
        let kind = match policy {
            DriftPolicy::Repair => EventKind::DriftRepaired,
            _ => EventKind::DriftFound,
        };
        let paths: Vec<&str> = drift.iter().map(|d| d.path.as_str()).collect();
        self.record(
            at,
            kind,
            Some(rollout),
            Some(bundle),
            Some(paths.join(", ")),
        );
    }

    /// Whether a poll could read the store (or a mirror): an event when
    /// that changes.
    pub fn store_reachable(&mut self, at: DateTime<Utc>, reachable: bool, detail: Option<String>) {
        let down = !reachable;
        if down == self.store_down {
            return;
        }
        self.store_down = down;
        let kind = if reachable {
            EventKind::StoreRecovered
        } else {
            EventKind::StoreUnreachable
        };
        self.record(at, kind, None, None, detail);
    }

    /// Write what waits, one object per day it falls on. On an error what
    /// was not written waits for the next call.
    pub async fn flush(&mut self, store: &Store, key: &SigningKey) -> Result<usize, String> {
        let mut written = 0;
        while let Some(first) = self.waiting.first() {
            let day = first.at.date_naive();
            let n = self
                .waiting
                .iter()
                .take_while(|e| e.at.date_naive() == day)
                .count();
            let mut doc = match self.day.take() {
                Some(d) if d.day == day => d,
                _ => self.read_day(store, key, day).await?,
            };
            let kept = doc.clone();
            for e in &self.waiting[..n] {
                doc.push(e.clone());
            }
            let object = keys::events(day, &self.node);
            let mut envelope = doc.envelope();
            envelope.sign(key)?;
            if let Err(e) = store
                .put(&object, bytes::Bytes::from(envelope.to_json()))
                .await
            {
                self.day = Some(kept);
                return Err(format!("writing {object}: {e}"));
            }
            self.waiting.drain(..n);
            self.day = Some(doc);
            written += n;
        }
        Ok(written)
    }

    /// The day's events as the store has them (after a restart), or none.
    async fn read_day(
        &self,
        store: &Store,
        key: &SigningKey,
        day: NaiveDate,
    ) -> Result<NodeEvents, String> {
        let object = keys::events(day, &self.node);
        let fresh = NodeEvents::new(&self.fleet, &self.node, day);
        match store.get(&object).await {
            Ok(None) => Ok(fresh),
            Ok(Some(o)) => {
                let public = PublicKey(key.verifying_key().to_bytes());
                match gitfleet_schemas::verify::verify_node_events(
                    &o.bytes,
                    &self.fleet,
                    &self.node,
                    &public,
                ) {
                    Ok(events) if events.day == day => Ok(events.into_inner()),
                    Ok(_) => Ok(fresh),
                    Err(e) => {
                        tracing::warn!(key = %object, error = %e, "replacing events this node did not sign");
                        Ok(fresh)
                    }
                }
            }
            Err(e) => Err(format!("reading {object}: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn drift(path: &str) -> Drift {
        Drift {
            path: path.to_owned(),
            expected_sha256: Some("a".repeat(64)),
            found_sha256: Some("b".repeat(64)),
        }
    }

    fn kinds(log: &EventLog) -> Vec<EventKind> {
        log.waiting().iter().map(|e| e.kind).collect()
    }

    #[test]
    fn drift_is_an_event_when_what_is_found_changes() {
        let mut log = EventLog::new("acme", "edge-1");
        let t = at("2026-12-04T10:00:00Z");
        log.drift(t, DriftPolicy::Report, "edge", "sha256:aa", &[]);
        log.drift(
            t,
            DriftPolicy::Report,
            "edge",
            "sha256:aa",
            &[drift("files/a")],
        );
        log.drift(
            t,
            DriftPolicy::Report,
            "edge",
            "sha256:aa",
            &[drift("files/a")],
        );
        log.drift(
            t,
            DriftPolicy::Report,
            "edge",
            "sha256:aa",
            &[drift("files/a"), drift("files/b")],
        );
        log.drift(t, DriftPolicy::Report, "edge", "sha256:aa", &[]);
        log.drift(
            t,
            DriftPolicy::Repair,
            "edge",
            "sha256:aa",
            &[drift("files/a")],
        );
        // A repair that does not hold finds the same again: no news.
        log.drift(
            t,
            DriftPolicy::Repair,
            "edge",
            "sha256:aa",
            &[drift("files/a")],
        );
        log.drift(t, DriftPolicy::Repair, "edge", "sha256:aa", &[]);
        log.drift(
            t,
            DriftPolicy::Repair,
            "edge",
            "sha256:aa",
            &[drift("files/a")],
        );
        assert_eq!(
            kinds(&log),
            [
                EventKind::DriftFound,
                EventKind::DriftFound,
                EventKind::DriftRepaired,
                EventKind::DriftRepaired
            ]
        );
        assert_eq!(log.waiting()[1].detail.as_deref(), Some("files/a, files/b"));
        assert_eq!(log.waiting()[1].rollout.as_deref(), Some("edge"));
        // Another rollout's bundle is judged on its own.
        log.drift(
            t,
            DriftPolicy::Report,
            "mesh",
            "sha256:bb",
            &[drift("files/a")],
        );
        assert_eq!(log.waiting().len(), 5);
    }

    #[test]
    fn the_store_going_away_and_back_is_two_events_however_many_polls() {
        let mut log = EventLog::new("acme", "edge-1");
        let t = at("2026-12-04T10:00:00Z");
        log.store_reachable(t, true, None);
        log.store_reachable(t, false, Some("down".into()));
        log.store_reachable(t, false, Some("down".into()));
        log.store_reachable(t, true, None);
        log.store_reachable(t, true, None);
        assert_eq!(
            kinds(&log),
            [EventKind::StoreUnreachable, EventKind::StoreRecovered]
        );
    }

    #[tokio::test]
    async fn events_are_written_per_day_signed_and_added_to_after_a_restart() {
        let store = Store::open("memory://").unwrap();
        let key = SigningKey::from_bytes(&[7; 32]);
        let public = PublicKey(key.verifying_key().to_bytes());
        let mut log = EventLog::new("acme", "edge-1");
        log.record(
            at("2026-12-03T23:59:00Z"),
            EventKind::Activated,
            Some("edge"),
            Some("sha256:aa"),
            None,
        );
        log.record(
            at("2026-12-04T00:01:00Z"),
            EventKind::RolledBack,
            Some("edge"),
            None,
            None,
        );
        assert_eq!(log.flush(&store, &key).await.unwrap(), 2);
        assert!(log.waiting().is_empty());
        let requests = store.counts();
        // Nothing waiting: nothing written.
        assert_eq!(log.flush(&store, &key).await.unwrap(), 0);
        assert_eq!(store.counts(), requests);

        // A restarted agent adds to the day the store has.
        let mut restarted = EventLog::new("acme", "edge-1");
        restarted.record(
            at("2026-12-04T08:00:00Z"),
            EventKind::DriftRepaired,
            None,
            None,
            Some("files/x".into()),
        );
        restarted.flush(&store, &key).await.unwrap();
        let read = |day: &str| {
            let store = store.clone();
            let day = NaiveDate::parse_from_str(day, "%Y-%m-%d").unwrap();
            async move {
                let o = store
                    .get(&keys::events(day, "edge-1"))
                    .await
                    .unwrap()
                    .unwrap();
                gitfleet_schemas::verify::verify_node_events(&o.bytes, "acme", "edge-1", &public)
                    .unwrap()
                    .into_inner()
            }
        };
        let third = read("2026-12-03").await;
        assert_eq!(third.events.len(), 1);
        assert_eq!(third.events[0].kind, EventKind::Activated);
        let fourth = read("2026-12-04").await;
        let kinds: Vec<EventKind> = fourth.events.iter().map(|e| e.kind).collect();
        assert_eq!(kinds, [EventKind::RolledBack, EventKind::DriftRepaired]);
    }

    #[tokio::test]
    async fn a_failed_write_keeps_the_events_for_the_next_one() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}/store", dir.path().display());
        let store = Store::open(&url).unwrap();
        let key = SigningKey::from_bytes(&[7; 32]);
        let mut log = EventLog::new("acme", "edge-1");
        log.record(
            at("2026-12-04T08:00:00Z"),
            EventKind::Activated,
            None,
            None,
            None,
        );
        // The store's directory replaced by a file: every request fails.
        std::fs::remove_dir_all(dir.path().join("store")).unwrap();
        std::fs::write(dir.path().join("store"), b"not a directory").unwrap();
        assert!(log.flush(&store, &key).await.is_err());
        assert_eq!(log.waiting().len(), 1);
        std::fs::remove_file(dir.path().join("store")).unwrap();
        std::fs::create_dir(dir.path().join("store")).unwrap();
        assert_eq!(log.flush(&store, &key).await.unwrap(), 1);
    }
}
