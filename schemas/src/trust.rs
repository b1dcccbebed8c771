//! Signed documents: the root of trust, channel manifests, and the envelope
//! that carries their exact signed bytes.
//!
//! An [`Envelope`] holds a payload as base64 of the exact bytes that were
//! signed, a payload type, and signatures over the DSSE pre-authentication
//! encoding of both (`DSSEv1 <len> <type> <len> <payload>`). Verifiers check
//! those bytes and only then parse them, so there is no canonical-JSON step
//! to get wrong, and a signature over one document type can never be replayed
//! as another.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;
use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// An ed25519 public key, written as base64 of its 32 bytes.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PublicKey(pub [u8; 32]);

impl PublicKey {
    /// Parse base64 of 32 bytes and check them with [`PublicKey::from_bytes`].
    pub fn parse(s: &str) -> Result<Self, String> {
        let bytes = B64
            .decode(s.trim())
            .map_err(|e| format!("not base64 ({e})"))?;
        let bytes = <[u8; 32]>::try_from(bytes.as_slice())
            .map_err(|_| format!("{} bytes, not 32", bytes.len()))?;
        PublicKey::from_bytes(bytes)
    }

    /// The one rule for what a public key is: the canonical encoding of a
    /// point on the curve, in the prime-order subgroup. A small-order
    /// ("weak") key would accept signatures on almost any message, and a key
    /// with a torsion component (`K + T`) lets the holder of `K` sign as a
    /// second, different-looking key; a non-canonical encoding is a second
    /// name for the same point. All are refused.
    pub fn from_bytes(bytes: [u8; 32]) -> Result<Self, String> {
        let key = ed25519_dalek::VerifyingKey::from_bytes(&bytes)
            .map_err(|_| "not a point on the ed25519 curve".to_owned())?;
        let point = key.to_edwards();
        if point.compress().to_bytes() != bytes {
            return Err("not the canonical encoding of its curve point".to_owned());
        }
        if key.is_weak() {
            return Err("a small-order (weak) point".to_owned());
        }
        if !point.is_torsion_free() {
            return Err("not in the prime-order subgroup (has a torsion component)".to_owned());
        }
        Ok(PublicKey(bytes))
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&B64.encode(self.0))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl Serialize for PublicKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for PublicKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        PublicKey::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for PublicKey {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "PublicKey".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "base64 of a 32-byte ed25519 public key",
            "type": "string",
            "pattern": "^[A-Za-z0-9+/]{43}=$"
        })
    }
}

/// A signed document: the exact payload bytes, their type, and signatures.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    pub payload_type: String,
    /// base64 of the signed bytes.
    pub payload: String,
    pub signatures: Vec<Signature>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Signature {
    /// The signing key (base64 ed25519 public key).
    pub key: PublicKey,
    /// base64 ed25519 signature over the pre-authentication encoding.
    pub sig: String,
}

/// DSSE's pre-authentication encoding: what is actually signed.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "DSSEv1 {} {} {} ",
        payload_type.len(),
        payload_type,
        payload.len()
    )
    .into_bytes();
    out.extend_from_slice(payload);
    out
}

impl Envelope {
    /// Wrap `payload` (the exact bytes to sign) with no signatures yet.
    pub fn new(payload_type: &str, payload: &[u8]) -> Self {
        Envelope {
            payload_type: payload_type.to_owned(),
            payload: B64.encode(payload),
            signatures: Vec::new(),
        }
    }

    /// The payload bytes the signatures cover (not yet verified).
    pub fn payload_bytes(&self) -> Result<Vec<u8>, base64::DecodeError> {
        B64.decode(&self.payload)
    }

    /// Add a signature by `key`. Signing is pure: the key is a value.
    pub fn sign(&mut self, key: &ed25519_dalek::SigningKey) -> Result<(), String> {
        use ed25519_dalek::Signer as _;
        let payload = self
            .payload_bytes()
            .map_err(|e| format!("payload is not base64: {e}"))?;
        let sig = key.sign(&pae(&self.payload_type, &payload));
        let public = PublicKey(key.verifying_key().to_bytes());
        self.signatures.retain(|s| s.key != public);
        self.signatures.push(Signature {
            key: public,
            sig: B64.encode(sig.to_bytes()),
        });
        Ok(())
    }

    pub fn to_json(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).unwrap_or_default();
        out.push(b'\n');
        out
    }
}

/// A signed document type: its payload type names the format and version.
pub trait Document: serde::de::DeserializeOwned + Serialize {
    const PAYLOAD_TYPE: &'static str;
    /// What the document is called in errors.
    const NAME: &'static str;

    /// The bytes to sign for this document.
    fn payload(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).unwrap_or_default();
        out.push(b'\n');
        out
    }

    /// An unsigned envelope around this document.
    fn envelope(&self) -> Envelope {
        Envelope::new(Self::PAYLOAD_TYPE, &self.payload())
    }
}

/// `root/<version>.json`: which keys sign roots and which sign manifests.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Root {
    /// The fleet this root belongs to; a root of another fleet is refused.
    pub fleet: String,
    /// 1 for the first root; each rotation adds exactly one.
    pub version: u64,
    pub expires: DateTime<Utc>,
    /// Offline keys; `root_threshold` of them sign every root.
    pub root_keys: Vec<PublicKey>,
    pub root_threshold: u32,
    /// Keys held by the reconciler; `online_threshold` of them sign every
    /// channel manifest.
    pub online_keys: Vec<PublicKey>,
    pub online_threshold: u32,
}

impl Document for Root {
    const PAYLOAD_TYPE: &'static str = "application/vnd.gitfleet.root.v1+json";
    const NAME: &'static str = "root";
}

/// `channels/<environment>.json`: the one small object agents poll.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ChannelManifest {
    pub fleet: String,
    pub environment: String,
    /// Strictly increasing; an agent refuses a serial lower than one it saw.
    pub serial: u64,
    pub expires: DateTime<Utc>,
    pub rollouts: Vec<ChannelRollout>,
    /// Fleet-wide agent settings from fleet.kdl's `defaults`; they win
    /// over the same settings in a node's agent.kdl.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settings: Option<AgentSettings>,
    /// Digests of bundles no node may run (fleet.kdl's `revoke`), sorted:
    /// an agent never activates one and moves off one it runs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub revoked: Vec<String>,
    /// Nodes of this environment on hold (their node file's `hold`),
    /// sorted: each keeps what it runs whatever the rollouts say (a revoked
    /// bundle it still leaves).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub held: Vec<String>,
    /// Held nodes pinned to one bundle of a rollout (their node file's
    /// `hold ... bundle=`): each runs that bundle for that rollout.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pinned: Vec<ChannelPin>,
    /// Nodes of this environment whose node file left the fleet repo,
    /// sorted: each sends a final report and stops polling.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub decommissioned: Vec<String>,
}

impl ChannelManifest {
    /// Whether `bundle` is revoked.
    pub fn revokes(&self, bundle: &BundleRef) -> bool {
        self.revoked.contains(&bundle.digest)
    }
}

/// How agents behave, set for the whole fleet. Absent fields leave the
/// node's own agent.kdl (or its defaults) in force.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift: Option<crate::fleet::DriftPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub poll_seconds: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub poll_jitter_seconds: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_seconds: Option<u64>,
    /// Checks every node runs; it is healthy only while each passes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub health_checks: Vec<ChannelCheck>,
    /// No rollout is moving in this environment: without `poll_seconds`
    /// an agent polls at its idle interval (agent.kdl's `poll idle=`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub idle: bool,
    /// Reconciler base URLs that take status reports over HTTP(S): an
    /// agent sends a report that only says it is alive (nothing changed)
    /// to the first that answers, and writes it to the store only when
    /// none does. Reports of changes always go to the store.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub report_to: Vec<String>,
}

impl AgentSettings {
    pub fn is_empty(&self) -> bool {
        *self == AgentSettings::default()
    }
}

impl Document for ChannelManifest {
    const PAYLOAD_TYPE: &'static str = "application/vnd.gitfleet.channel.v1+json";
    const NAME: &'static str = "channel manifest";
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ChannelRollout {
    pub name: String,
    /// Labels a node must carry to be a target.
    pub selector: BTreeMap<String, String>,
    /// Set-based requirements on labels a target must meet as well.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requirements: Vec<ChannelRequirement>,
    /// When given, only these nodes are targets (a selector naming a group
    /// of listed nodes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<Vec<String>>,
    pub bundle: BundleRef,
    /// What targets outside the current step keep running.
    pub previous: Option<BundleRef>,
    /// 1-based index of the current step.
    pub step: u32,
    pub steps: u32,
    /// A target is in the current step when the stable hash of
    /// `(rollout, node id)` is below this value.
    pub membership_threshold: u64,
    /// HTTP checks the rollout's gates ask for: each target runs them and
    /// puts the results in its status report.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http_checks: Vec<ChannelCheck>,
    /// The proxy route the rollout's traffic gates judge: each target
    /// reports that route's traffic beside its total.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_route: Option<String>,
    /// The requests the traffic gates need from each target: an agent
    /// reports as soon as its new bundle has served that many, rather than
    /// at its next heartbeat.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_requests: Option<u64>,
    /// `bundle` failed its gates. Targets running it go back to `previous`,
    /// or, without one, each to the bundle it ran before `bundle`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rolled_back: bool,
    /// Only nodes running this proxy take this entry: a rollout to nodes
    /// of several proxies lists one entry, of the same name, per proxy.
    /// Absent: every target takes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<crate::proxy::Proxy>,
}

/// A held node and the bundle it runs for one rollout.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ChannelPin {
    pub node: String,
    pub rollout: String,
    pub bundle: BundleRef,
}

/// `key <operator> values`, judged by [`crate::common::Operator::holds`].
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ChannelRequirement {
    pub key: String,
    pub operator: crate::common::Operator,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

/// One HTTP check a node runs for a rollout's health gate. A check with
/// only `url` and `expect_status` is written as older agents read it; the
/// rest appear only when used.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ChannelCheck {
    /// The URL the agent requests: plain http on loopback. With `upstream`,
    /// a path requested on each of that upstream's targets.
    pub url: String,
    /// The status that counts as passing.
    pub expect_status: u16,
    /// Further statuses that pass.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub also_status: Vec<u16>,
    /// GET when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_contains: Option<String>,
    /// A regular expression (Rust `regex` syntax) the body must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_matches: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// An upstream of the active config: the check runs against each of
    /// its targets (plain http), not only loopback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
}

impl ChannelCheck {
    /// Whether `status` passes.
    pub fn accepts(&self, status: u16) -> bool {
        status == self.expect_status || self.also_status.contains(&status)
    }

    /// Whether the check is the plain kind older agents run: GET one URL,
    /// one status, the default timeout.
    pub fn is_plain(&self) -> bool {
        *self
            == ChannelCheck {
                url: self.url.clone(),
                expect_status: self.expect_status,
                ..ChannelCheck::default()
            }
    }

    /// The check in words: `http://127.0.0.1:9000/-/health expects 200`.
    pub fn describe(&self) -> String {
        if self.is_plain() {
            format!("{} expects {}", self.url, self.expect_status)
        } else {
            self.key()
        }
    }

    /// How reports name this check's results: a plain check by its URL (as
    /// older agents do), any other by all it asks, so two rollouts asking
    /// different things of one URL get a result each.
    pub fn key(&self) -> String {
        if self.is_plain() {
            return self.url.clone();
        }
        let mut key = format!("{} ", self.method.as_deref().unwrap_or("GET"));
        if let Some(u) = &self.upstream {
            key.push_str(&format!("upstream={u} "));
        }
        key.push_str(&self.url);
        let statuses: Vec<String> = std::iter::once(self.expect_status)
            .chain(self.also_status.iter().copied())
            .map(|s| s.to_string())
            .collect();
        key.push_str(&format!(" status={}", statuses.join(",")));
        // Quoted by hand: the key must not change with a compiler's
        // `Debug` escaping.
        let quoted = |s: &str| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""));
        if let Some(b) = &self.body_contains {
            key.push_str(&format!(" body-contains={}", quoted(b)));
        }
        if let Some(b) = &self.body_matches {
            key.push_str(&format!(" body-matches={}", quoted(b)));
        }
        if let Some(t) = self.timeout_ms {
            key.push_str(&format!(" timeout={t}ms"));
        }
        key
    }
}

/// Names a bundle by the digest and length of its bytes.
#[derive(
    Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(deny_unknown_fields)]
pub struct BundleRef {
    /// `sha256:<64 hex digits>`.
    pub digest: String,
    pub length: u64,
}

pub use crate::digest::valid_digest;

impl BundleRef {
    /// `bundles/sha256/<hex>.tar.zst`, or `None` when the digest is not
    /// `sha256:<64 lowercase hex>`: a digest from storage never becomes a
    /// path with anything else in it.
    pub fn object_key(&self) -> Option<String> {
        crate::keys::bundle(&self.digest)
    }
}

/// The stable hash that orders a rollout's nodes: the first 8 bytes
/// (big-endian) of SHA-256 over `rollout`, a zero byte, and `node`. The same
/// on every machine and in every version, because agents compute their own
/// membership with it.
pub fn member_hash(rollout: &str, node: &str) -> u64 {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(rollout.as_bytes());
    h.update([0u8]);
    h.update(node.as_bytes());
    let d = h.finalize();
    u64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
}

impl ChannelRollout {
    /// Whether the node `node` with `labels` is one of this rollout's
    /// targets.
    pub fn selects(&self, node: &str, labels: &BTreeMap<String, String>) -> bool {
        let label = |k: &str| labels.get(k).map(String::as_str);
        crate::common::labels_match(
            self.selector.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            label,
        ) && self.requirements.iter().all(|r| {
            r.operator
                .holds(label(&r.key), r.values.iter().map(String::as_str))
        }) && self
            .nodes
            .as_ref()
            .is_none_or(|ids| ids.iter().any(|n| n == node))
    }

    /// Whether `node` is in the current step and so runs `bundle`; nodes
    /// outside it run `previous`.
    pub fn includes(&self, node: &str) -> bool {
        self.membership_threshold == u64::MAX
            || member_hash(&self.name, node) < self.membership_threshold
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_hash_is_stable() {
        // Pinned: agents and reconcilers of every version must agree.
        assert_eq!(
            member_hash("edge", "edge-fra-1"),
            member_hash("edge", "edge-fra-1")
        );
        assert_ne!(
            member_hash("edge", "edge-fra-1"),
            member_hash("edge", "edge-fra-2")
        );
        assert_ne!(member_hash("edge", "a"), member_hash("edg", "ea"));
        // Computed independently: sha256(b"r\x00n")[:8], big-endian.
        assert_eq!(member_hash("r", "n"), 0x5a90_1aad_8c4b_1ce0);
    }

    #[test]
    fn a_channel_rollout_selects_nodes_by_the_same_rule_as_the_fleet_repo() {
        let labels: BTreeMap<String, String> = [("role", "edge"), ("region", "fra")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let rollout = |sel: &[(&str, &str)]| ChannelRollout {
            name: "edge".into(),
            selector: sel
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            requirements: Vec::new(),
            nodes: None,
            bundle: BundleRef {
                digest: String::new(),
                length: 0,
            },
            previous: None,
            step: 1,
            steps: 1,
            membership_threshold: 0,
            http_checks: Vec::new(),
            traffic_route: None,
            min_requests: None,
            rolled_back: false,
            proxy: None,
        };
        let n = "edge-fra-1";
        assert!(rollout(&[]).selects(n, &labels));
        assert!(rollout(&[("role", "edge")]).selects(n, &labels));
        assert!(!rollout(&[("role", "edge"), ("region", "iad")]).selects(n, &labels));
        assert!(!rollout(&[("tier", "edge")]).selects(n, &labels));

        let req =
            |key: &str, operator: crate::common::Operator, values: &[&str]| ChannelRequirement {
                key: key.to_owned(),
                operator,
                values: values.iter().map(|v| (*v).to_owned()).collect(),
            };
        let with = |requirements: Vec<ChannelRequirement>, nodes: Option<&[&str]>| {
            let mut r = rollout(&[("role", "edge")]);
            r.requirements = requirements;
            r.nodes = nodes.map(|ns| ns.iter().map(|n| (*n).to_owned()).collect());
            r
        };
        use crate::common::Operator::{Exists, In, NotExists, NotIn};
        assert!(with(vec![req("region", In, &["fra", "ams"])], None).selects(n, &labels));
        assert!(!with(vec![req("region", In, &["ams"])], None).selects(n, &labels));
        assert!(!with(vec![req("region", NotIn, &["fra"])], None).selects(n, &labels));
        // not-in holds where the label is absent, as in Kubernetes.
        assert!(with(vec![req("tier", NotIn, &["canary"])], None).selects(n, &labels));
        assert!(with(vec![req("region", Exists, &[])], None).selects(n, &labels));
        assert!(!with(vec![req("region", NotExists, &[])], None).selects(n, &labels));
        assert!(with(vec![req("gpu", NotExists, &[])], None).selects(n, &labels));
        assert!(with(vec![], Some(&["edge-fra-1", "x"])).selects(n, &labels));
        assert!(!with(vec![], Some(&["edge-ams-1"])).selects(n, &labels));
    }
}
