//! Reports that reached this replica over HTTP, and the liveness replicas
//! share through the store.
//!
//! An idle agent whose state has not changed sends its heartbeat report to
//! a reconciler (`POST /v1/reports/<node>`, see `web`) instead of writing
//! it to the store. The replica that takes it keeps it in memory
//! ([`LiveReports`]) and, at most once per [`SHARE_EVERY`], writes when it
//! last heard from each node as `liveness/<replica>/<shard>.json`, one
//! object per 1,000 nodes; the other replicas read those. Liveness then
//! costs a store write per 1,000 nodes a minute instead of one per node
//! per heartbeat.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Duration, Utc};
use gitfleet_schemas::keys::LIVENESS_SHARD_NODES;
use gitfleet_schemas::status::{Heard, Liveness, StatusReport};
use sha2::{Digest as _, Sha256};

/// How often a replica writes its liveness shards, at most.
pub const SHARE_EVERY: Duration = Duration::seconds(60);

/// A report taken over HTTP, and when (this replica's clock).
#[derive(Clone, Debug)]
pub struct Live {
    pub report: Arc<StatusReport>,
    pub received: DateTime<Utc>,
}

/// How far a report's own time may be from the reconciler's when it is
/// taken: a report captured and replayed later than this is refused, and
/// so is one from a node whose clock is that far off (it writes to the
/// store instead, which needs no clock).
pub const MAX_SKEW: Duration = Duration::minutes(10);

/// Why a report was not taken.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// Not newer (by the node's own `at`) than a report already held: a
    /// replay, or two replicas' copies crossing.
    NotNewer { held: DateTime<Utc> },
    /// Its time is more than [`MAX_SKEW`] from the reconciler's.
    Skewed { at: DateTime<Utc> },
}

/// The reports this replica took over HTTP, by node.
#[derive(Debug, Default)]
pub struct LiveReports {
    heard: Mutex<HashMap<String, Live>>,
    /// Bumped on every report taken: whether there is anything to share.
    version: AtomicU64,
}

impl LiveReports {
    /// Take `report` (verified by the caller), received at `received`,
    /// unless it is not newer than the one held or than `known` (the `at`
    /// of the node's report read from the store).
    pub fn take(
        &self,
        report: Arc<StatusReport>,
        received: DateTime<Utc>,
        known: Option<DateTime<Utc>>,
    ) -> Result<(), Refused> {
        if (report.at - received).abs() > MAX_SKEW {
            return Err(Refused::Skewed { at: report.at });
        }
        let mut heard = self.heard.lock().unwrap_or_else(|p| p.into_inner());
        let held = heard.get(&report.node).map(|l| l.report.at).max(known);
        if let Some(held) = held.filter(|h| report.at <= *h) {
            return Err(Refused::NotNewer { held });
        }
        heard.insert(report.node.clone(), Live { report, received });
        self.version.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// What is held, and the version it is at.
    pub fn snapshot(&self) -> (u64, HashMap<String, Live>) {
        let heard = self.heard.lock().unwrap_or_else(|p| p.into_inner());
        (self.version.load(Ordering::Relaxed), heard.clone())
    }

    /// Forget nodes `keep` says no longer belong to the fleet.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        let mut heard = self.heard.lock().unwrap_or_else(|p| p.into_inner());
        heard.retain(|node, _| keep(node));
    }
}

/// This replica's name in liveness keys: a hex digest of its lease holder
/// name (which may hold characters keys must not).
pub fn replica_id(holder: &str) -> String {
    let digest = Sha256::digest(holder.as_bytes());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// How many shards `nodes` nodes take.
pub fn shards_for(nodes: usize) -> usize {
    nodes.div_ceil(LIVENESS_SHARD_NODES).max(1)
}

/// The shard of `node` among `shards`: stable for a given count.
pub fn shard_of(node: &str, shards: usize) -> usize {
    let digest = Sha256::digest(node.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    (u64::from_be_bytes(first) % shards.max(1) as u64) as usize
}

/// The shard documents of what `heard` holds, written at `now`: one per
/// shard, in shard order (empty shards included, so a reader never keeps
/// an older copy of a shard that emptied). `heard` maps each node to its
/// report's `at` and when it was heard.
pub fn shard_documents(
    holder: &str,
    heard: &HashMap<String, (DateTime<Utc>, DateTime<Utc>)>,
    now: DateTime<Utc>,
) -> Vec<Liveness> {
    let count = shards_for(heard.len());
    let mut shards: Vec<BTreeMap<String, Heard>> = vec![BTreeMap::new(); count];
    for (node, (at, received)) in heard {
        let age = (now - *received).num_milliseconds().max(0);
        shards[shard_of(node, count)].insert(
            node.clone(),
            Heard {
                at: *at,
                age_ms: u64::try_from(age).unwrap_or(0),
            },
        );
    }
    shards
        .into_iter()
        .map(|nodes| Liveness {
            version: Liveness::VERSION,
            replica: holder.to_owned(),
            nodes,
        })
        .collect()
}

/// When each node of `doc` was last heard from, by the store's clock
/// (the object's write time less each entry's age), with the `at` of the
/// report heard. An age beyond what a date can hold (the object is
/// untrusted) leaves the entry out.
pub fn heard_at(
    doc: &Liveness,
    written: DateTime<Utc>,
) -> impl Iterator<Item = (&str, DateTime<Utc>, DateTime<Utc>)> {
    doc.nodes.iter().filter_map(move |(node, h)| {
        let age = Duration::try_milliseconds(i64::try_from(h.age_ms).ok()?)?;
        Some((node.as_str(), written.checked_sub_signed(age)?, h.at))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use gitfleet_schemas::status::Metrics;

    fn report(node: &str, at: i64) -> Arc<StatusReport> {
        Arc::new(StatusReport {
            fleet: "f".into(),
            node: node.into(),
            environment: "prod".into(),
            at: DateTime::from_timestamp(at, 0).unwrap(),
            channel_serial: None,
            channel_expires: None,
            rollouts: BTreeMap::new(),
            healthy: true,
            metrics: Metrics::default(),
            http_checks: Vec::new(),
            routes: Vec::new(),
            wireguard: None,
            monitored: Vec::new(),
            drift: Vec::new(),
            last_error: None,
            proxy: None,
        })
    }

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(s, 0).unwrap()
    }

    #[test]
    fn a_report_is_taken_only_when_newer_than_what_is_held_or_stored() {
        let live = LiveReports::default();
        assert_eq!(live.take(report("a", 1000), t(1000), None), Ok(()));
        // The same report again (a replay) and an older one are refused.
        assert_eq!(
            live.take(report("a", 1000), t(1001), None),
            Err(Refused::NotNewer { held: t(1000) })
        );
        assert!(live.take(report("a", 990), t(1002), None).is_err());
        // Not newer than the copy in the store either.
        assert_eq!(
            live.take(report("b", 950), t(1003), Some(t(960))),
            Err(Refused::NotNewer { held: t(960) })
        );
        // A report from more than ten minutes ago, or ahead, is refused
        // whatever is held: a replay from long ago, or a clock far off.
        assert_eq!(
            live.take(report("c", 300), t(1003), None),
            Err(Refused::Skewed { at: t(300) })
        );
        assert!(live.take(report("c", 1700), t(1003), None).is_err());
        assert_eq!(live.take(report("a", 1010), t(1004), None), Ok(()));
        let (version, heard) = live.snapshot();
        assert_eq!(version, 2);
        assert_eq!(heard["a"].received, t(1004));
        live.retain(|n| n != "a");
        assert!(live.snapshot().1.is_empty());
    }

    #[test]
    fn shards_hold_each_node_once_and_give_back_when_it_was_heard_by_the_store_clock() {
        let heard: HashMap<String, (DateTime<Utc>, DateTime<Utc>)> = (0..2500)
            .map(|i| (format!("edge-{i}"), (t(100), t(1000 - i64::from(i % 7)))))
            .collect();
        let docs = shard_documents("r1", &heard, t(1000));
        assert_eq!(docs.len(), 3);
        let total: usize = docs.iter().map(|d| d.nodes.len()).sum();
        assert_eq!(total, 2500);
        for (i, doc) in docs.iter().enumerate() {
            for node in doc.nodes.keys() {
                assert_eq!(shard_of(node, 3), i);
            }
        }
        // The store wrote the object 2 s after the replica's `now` (its own
        // clock): every node is heard 2 s later than the replica saw it,
        // consistently on the store's clock.
        let written = t(1002);
        let back: HashMap<&str, DateTime<Utc>> = docs
            .iter()
            .flat_map(|d| heard_at(d, written))
            .map(|(n, t, _)| (n, t))
            .collect();
        assert_eq!(back["edge-0"], t(1002));
        assert_eq!(back["edge-3"], t(999));
        // An age no date can hold (the store is untrusted) is left out, not
        // a panic.
        let mut forged = docs[0].clone();
        let node = forged.nodes.keys().next().unwrap().clone();
        for age in [u64::MAX, 9_000_000_000_000_000] {
            forged.nodes.get_mut(&node).unwrap().age_ms = age;
            assert!(heard_at(&forged, written).all(|(n, _, _)| n != node));
        }
    }

    #[test]
    fn replica_ids_are_key_safe_and_stable() {
        let id = replica_id("gitfleet@host-1");
        assert_eq!(id.len(), 16);
        assert!(id.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(id, replica_id("gitfleet@host-1"));
        assert_ne!(id, replica_id("gitfleet@host-2"));
        assert_eq!(shards_for(0), 1);
        assert_eq!(shards_for(1000), 1);
        assert_eq!(shards_for(1001), 2);
    }
}
