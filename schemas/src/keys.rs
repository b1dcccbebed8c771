//! Every object key of the store, in one place. Agents and the reconciler
//! build keys only through these functions, so a layout change is one edit
//! and both sides always agree.
//!
//! ```text
//! bundles/sha256/<hex>.tar.zst   immutable; named by the digest of its bytes
//! root/<version>.json            signed root of trust
//! channels/<environment>.json    signed channel manifest agents poll
//! status/<node>.json             a node's signed status report
//! events/<day>/<node>.json       a node's signed events of one UTC day
//!                                (<day> is YYYY-MM-DD); removable by age
//! liveness/<replica>/<n>.json    when a reconciler replica last heard
//!                                from each node of shard n over HTTP
//! enroll/<node>.json             a node asking to join
//! leases/reconciler.json         the reconcilers' leader lease
//! ```
//!
//! Names that go into keys (environments, nodes) are restricted by the
//! fleet repo's checks to `[A-Za-z0-9][A-Za-z0-9._-]*`; a bundle key is
//! made only from a well-formed sha256 digest.

use crate::digest::valid_digest;

/// Where status reports live: list this prefix to find them all.
pub const STATUS_PREFIX: &str = "status/";

/// Where reconciler replicas share the liveness they heard over HTTP.
pub const LIVENESS_PREFIX: &str = "liveness/";

/// Nodes per liveness shard object, at most (as many as one listing page).
pub const LIVENESS_SHARD_NODES: usize = 1000;

/// `liveness/<replica>/<shard>.json`; `replica` is a hex name.
pub fn liveness(replica: &str, shard: usize) -> String {
    format!("{LIVENESS_PREFIX}{replica}/{shard}.json")
}

/// The replica and shard a liveness key names, if it is one.
pub fn liveness_shard(key: &str) -> Option<(&str, usize)> {
    let (replica, shard) = key.strip_prefix(LIVENESS_PREFIX)?.split_once('/')?;
    let shard = shard.strip_suffix(".json")?.parse().ok()?;
    Some((replica, shard))
}

/// The leader lease of the reconcilers sharing a store.
pub const LEASE: &str = "leases/reconciler.json";

/// `bundles/sha256/<hex>.tar.zst`, or `None` when `digest` is not
/// `sha256:<64 lowercase hex>`: a digest read from storage never becomes a
/// key with anything else in it.
pub fn bundle(digest: &str) -> Option<String> {
    let hex = digest
        .strip_prefix("sha256:")
        .filter(|_| valid_digest(digest))?;
    Some(format!("bundles/sha256/{hex}.tar.zst"))
}

/// `root/<version>.json`.
pub fn root(version: u64) -> String {
    format!("root/{version}.json")
}

/// `channels/<environment>.json`.
pub fn channel(environment: &str) -> String {
    format!("channels/{environment}.json")
}

/// `status/<node>.json`.
pub fn status(node: &str) -> String {
    format!("{STATUS_PREFIX}{node}.json")
}

/// The node a status report key names, if it is one.
pub fn status_node(key: &str) -> Option<&str> {
    key.strip_prefix(STATUS_PREFIX)?.strip_suffix(".json")
}

/// Where node events live: one prefix per day below it.
pub const EVENTS_PREFIX: &str = "events/";

/// `events/<day>/`: list it for every node's events of `day`.
pub fn events_day(day: chrono::NaiveDate) -> String {
    format!("{EVENTS_PREFIX}{}/", day.format("%Y-%m-%d"))
}

/// `events/<day>/<node>.json`.
pub fn events(day: chrono::NaiveDate, node: &str) -> String {
    format!("{}{node}.json", events_day(day))
}

/// The node an events key names, if it is one.
pub fn events_node(key: &str) -> Option<&str> {
    let rest = key.strip_prefix(EVENTS_PREFIX)?;
    rest.split_once('/')?.1.strip_suffix(".json")
}

/// The leader's notification outbox (`notify::NotifyLedger`).
pub const NOTIFY_LEDGER: &str = "notify/ledger.json";

/// `enroll/<node>.json`.
pub fn enroll(node: &str) -> String {
    format!("enroll/{node}.json")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_documented_layout() {
        let hex = "ab".repeat(32);
        assert_eq!(
            bundle(&format!("sha256:{hex}")),
            Some(format!("bundles/sha256/{hex}.tar.zst"))
        );
        assert_eq!(root(3), "root/3.json");
        assert_eq!(channel("prod"), "channels/prod.json");
        assert_eq!(status("edge-1"), "status/edge-1.json");
        assert_eq!(status_node("status/edge-1.json"), Some("edge-1"));
        assert_eq!(status_node("status/edge-1.txt"), None);
        assert_eq!(status_node("channels/prod.json"), None);
        assert_eq!(enroll("edge-1"), "enroll/edge-1.json");
        assert_eq!(liveness("ab12", 3), "liveness/ab12/3.json");
        assert_eq!(liveness_shard("liveness/ab12/3.json"), Some(("ab12", 3)));
        assert_eq!(liveness_shard("liveness/ab12/x.json"), None);
        assert_eq!(liveness_shard("status/ab12/3.json"), None);
    }

    #[test]
    fn only_well_formed_sha256_digests_become_bundle_keys() {
        for bad in [
            "sha256:../../etc/passwd",
            "sha512:abc",
            &format!("sha256:{}", "AB".repeat(32)),
            &format!("sha256:{}", "ab".repeat(31)),
        ] {
            assert_eq!(bundle(bad), None, "{bad}");
        }
    }
}
