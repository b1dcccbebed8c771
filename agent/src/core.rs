//! The agent's decisions, independent of how a bundle is made live: poll the
//! channel manifest, verify it, work out what this node should run, fetch
//! and verify that bundle, hand it to a [`Node`], record the outcome, and
//! report signed status. The real agent's [`Node`] is the state directory
//! and the proxy (`DiskNode`, in node.rs); the simulator's is in memory.

use std::collections::BTreeMap;
use std::future::Future;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use ed25519_dalek::SigningKey;
use gitfleet_io::store::{ETag, Fetch, Store, StoreError};
use gitfleet_schemas::agent::{LocalState, Slot};
use gitfleet_schemas::bundle::BundleKind;
use gitfleet_schemas::events::EventKind;
use gitfleet_schemas::fleet::DriftPolicy;
use gitfleet_schemas::keys;
use gitfleet_schemas::status::{
    Drift, HttpCheckResult, Metrics, RolloutStatus, RouteTraffic, StatusReport, WireguardStatus,
};
use gitfleet_schemas::trust::{
    AgentSettings, BundleRef, ChannelCheck, ChannelManifest, ChannelRollout, Document as _, Root,
};
use gitfleet_schemas::verify::{self, BundleHead, Limits, Verified, VerifyError};
use gitfleet_schemas::Proxy;

use crate::events::EventLog;
use crate::sentinel::SentinelError;
use crate::traffic::{self, Sample};

/// The local side of an agent: where bundles become live and state is kept.
/// Why a node could not do what the agent asked of it. The agent reports
/// it (`to_string`) and goes on; the running config stays.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Local(#[from] crate::local::LocalError),
    #[error(transparent)]
    Sentinel(#[from] SentinelError),
    #[error(transparent)]
    Wireguard(#[from] crate::wireguard::WireguardError),
    #[error(
        "this node has no `{block}` block in its agent config, so it cannot run {block} bundles"
    )]
    NotConfigured { block: &'static str },
    #[error("{failed}; and restoring the previous {what}: {restore}")]
    NotRestored {
        failed: Box<NodeError>,
        what: &'static str,
        restore: Box<NodeError>,
    },
    #[error("{0}")]
    Simulated(String),
    #[error("{what}: {reason}")]
    Other { what: &'static str, reason: String },
}

/// Why a bundle could not be taken from a source.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("it does not exist there")]
    Missing,
    /// The source failed: unreachable, refused, or longer than signed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The bytes are not the bundle the manifest names.
    #[error(transparent)]
    Refused(#[from] VerifyError),
    /// This node could not keep it (a full disk, say): not the bundle's
    /// fault.
    #[error("keeping it on this node: {0}")]
    Local(NodeError),
}

pub trait Node {
    /// Take the bundle `target` from `source` (at `key`) and verify it,
    /// keeping it where [`Node::activate`] finds it.
    fn fetch(
        &mut self,
        source: &Store,
        key: &str,
        target: &BundleRef,
        limits: Limits,
    ) -> impl Future<Output = Result<Verified<BundleHead>, FetchError>>;
    /// Make `bundle` (the last one fetched) the running config in place of
    /// `from`. On `Err` the config of `from` must be running again, and the
    /// message says why the new one was refused.
    fn activate(
        &mut self,
        rollout: &str,
        from: Option<&BundleRef>,
        bundle: &Verified<BundleHead>,
    ) -> impl Future<Output = Result<(), NodeError>>;
    /// Persist `state` (after an activation, before [`Node::settle`]).
    fn save(&mut self, state: &LocalState) -> Result<(), NodeError>;
    /// The activation whose outcome `save` recorded is over.
    fn settle(&mut self, state: &LocalState) -> Result<(), NodeError>;
    /// Keep a verified root rotation for the next start.
    fn save_root(&mut self, version: u64, bytes: &[u8]) -> Result<(), NodeError>;
    /// Whether the running config serves (a health check), if known.
    fn healthy(&mut self) -> impl Future<Output = bool>;
    /// What differs from the `kind` bundle `active` (files of a config, or
    /// a live WireGuard interface); with [`DriftPolicy::Repair`] it is
    /// restored first and what was found is still returned.
    fn drift(
        &mut self,
        kind: BundleKind,
        active: &BundleRef,
        policy: DriftPolicy,
    ) -> impl Future<Output = Result<Vec<Drift>, NodeError>>;
    fn metrics(&mut self) -> Metrics;
    /// The proxy's metrics as Prometheus text (what its `builtin-handler
    /// "metrics"` route serves) while it runs the Sentinel bundle `active`;
    /// `None` when this node has no proxy metrics to read.
    fn scrape(
        &mut self,
        active: Option<&BundleRef>,
    ) -> impl Future<Output = Option<Result<String, NodeError>>>;
    /// The results of `check` on this node: one, or one per target of its
    /// upstream in the config of the Sentinel bundle `active`.
    fn http_check(
        &mut self,
        check: &ChannelCheck,
        active: Option<&BundleRef>,
    ) -> impl Future<Output = Vec<HttpCheckResult>>;
    /// The live WireGuard interface and peers, when this node has one.
    fn wireguard(&mut self) -> impl Future<Output = Option<WireguardStatus>>;
    /// The interfaces agent.kdl's `monitor` names, read at `now`, with
    /// each peer's rates since the previous reading and whether it is
    /// stale.
    fn monitored(&mut self, now: DateTime<Utc>) -> impl Future<Output = Vec<WireguardStatus>>;
}

/// Who this agent is and what it accepts.
#[derive(Clone, Debug)]
pub struct Identity {
    pub node: String,
    pub environment: String,
    pub labels: BTreeMap<String, String>,
    pub drift: DriftPolicy,
    pub max_bundle_bytes: u64,
    /// The proxy the node runs: it takes only bundles for it.
    pub proxy: Proxy,
}

/// The bundles this node should run: per rollout whose selector its labels
/// match, the rollout's bundle when the node is in the current step, else
/// the previous bundle (if there is one). A rolled-back rollout with no
/// previous bundle sends a node that runs the failed bundle back to the one
/// it ran before (`state` remembers it). A rollout to nodes of several
/// proxies lists an entry per proxy; the node takes its own proxy's.
pub fn wanted<'m>(
    manifest: &'m ChannelManifest,
    id: &Identity,
    state: &LocalState,
) -> Vec<(&'m ChannelRollout, BundleRef)> {
    let (node, labels) = (id.node.as_str(), &id.labels);
    let held = manifest.held.iter().any(|h| h == node);
    manifest
        .rollouts
        .iter()
        .filter(|r| r.selects(node, labels))
        .filter(|r| r.proxy.as_ref().is_none_or(|p| *p == id.proxy))
        .filter_map(|r| {
            if held {
                // Pinned: the pinned bundle of this rollout, unless it is
                // revoked.
                let pin = manifest
                    .pinned
                    .iter()
                    .find(|p| p.node == node && p.rollout == r.name)
                    .filter(|p| !manifest.revokes(&p.bundle));
                if let Some(pin) = pin {
                    return Some((r, pin.bundle.clone()));
                }
                // Keeps what it runs; only a revoked bundle is left.
                let active = &slot_of(state, &r.name)?.active;
                if !manifest.revokes(active) {
                    return None;
                }
                // Back to what it ran before, never on to a bundle it did
                // not run.
                let back = slot_of(state, &r.name)?
                    .previous
                    .clone()
                    .filter(|p| !manifest.revokes(p))?;
                return Some((r, back));
            }
            let target = if r.rolled_back && r.previous.is_none() {
                ran_before(state, r)
            } else if r.includes(node) {
                Some(r.bundle.clone())
            } else {
                r.previous.clone()
            };
            let target = match target {
                Some(t) if manifest.revokes(&t) => instead_of_revoked(manifest, state, r),
                t => t,
            };
            Some((r, target?))
        })
        .collect()
}

/// Where a node goes instead of a revoked bundle: the rollout's previous
/// bundle, else what it runs now, else what it ran before that, the first
/// that is not revoked itself; none when every one is.
fn instead_of_revoked(
    manifest: &ChannelManifest,
    state: &LocalState,
    rollout: &ChannelRollout,
) -> Option<BundleRef> {
    let slot = slot_of(state, &rollout.name);
    rollout
        .previous
        .iter()
        .chain(slot.map(|s| &s.active))
        .chain(slot.and_then(|s| s.previous.as_ref()))
        .find(|b| !manifest.revokes(b))
        .cloned()
}

/// The slot (of either kind) that `rollout` fills on this node.
fn slot_of<'s>(state: &'s LocalState, rollout: &str) -> Option<&'s Slot> {
    KINDS
        .iter()
        .filter_map(|k| slot(state, *k))
        .find(|s| s.rollout == rollout)
}

/// Where a node goes when `rollout` failed and the environment has no
/// bundle to go back to: the one it ran before the failed bundle, or, if it
/// already left it, what it runs now. None when it never ran another.
fn ran_before(state: &LocalState, rollout: &ChannelRollout) -> Option<BundleRef> {
    let slot = slot_of(state, &rollout.name)?;
    if slot.active == rollout.bundle {
        slot.previous.clone()
    } else {
        Some(slot.active.clone())
    }
}

/// Why a bundle validated by `validator` is not for a node running
/// `proxy`, if it is not: a proxy config is validated for, and names, the
/// exact proxy and version it targets.
fn wrong_proxy(kind: BundleKind, validator: &str, proxy: &Proxy) -> Option<String> {
    if kind != BundleKind::Sentinel {
        return None;
    }
    match Proxy::of_validator(validator) {
        Some(p) if p == *proxy => None,
        Some(p) => Some(format!("the bundle is for {p}, and this node runs {proxy}")),
        None => Some(format!(
            "the bundle was validated by `{validator}`, which names no proxy"
        )),
    }
}

/// What one poll did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Polled {
    /// The manifest had not changed and nothing was left to do.
    Unchanged,
    /// A manifest was verified and applied; `activated` bundles went live.
    Applied { serial: u64, activated: usize },
    /// The store could not be read or the manifest was refused; the running
    /// config stays.
    Refused(String),
    /// The verified manifest names this node as decommissioned (its node
    /// file left the fleet repo): it sends a final report and stops.
    Decommissioned { serial: u64 },
}

/// The kinds of bundle a node runs, one of each at a time.
const KINDS: [BundleKind; 2] = [BundleKind::Sentinel, BundleKind::WireguardMesh];

fn kind_index(kind: BundleKind) -> usize {
    match kind {
        BundleKind::Sentinel => 0,
        BundleKind::WireguardMesh => 1,
    }
}

fn kind_name(kind: BundleKind) -> &'static str {
    match kind {
        BundleKind::Sentinel => "sentinel config",
        BundleKind::WireguardMesh => "wireguard mesh",
    }
}

/// The slot of `state` that bundles of `kind` occupy.
pub fn slot(state: &LocalState, kind: BundleKind) -> Option<&Slot> {
    match kind {
        BundleKind::Sentinel => state.sentinel.as_ref(),
        BundleKind::WireguardMesh => state.wireguard.as_ref(),
    }
}

fn slot_mut(state: &mut LocalState, kind: BundleKind) -> &mut Option<Slot> {
    match kind {
        BundleKind::Sentinel => &mut state.sentinel,
        BundleKind::WireguardMesh => &mut state.wireguard,
    }
}

/// Which rollout delivers each kind of bundle to this node in one pass.
type Claims = [Option<String>; KINDS.len()];

/// Bundles that failed here are remembered, at most this many.
const MAX_FAILED: usize = 32;

/// How a failed scrape of the proxy's metrics starts its message.
const SCRAPE_FAILED: &str = "reading the proxy's metrics";

/// At most this many HTTP checks run for one report, whatever a manifest
/// asks: a report must not take minutes.
const MAX_HTTP_CHECKS: usize = 16;

/// Why a manifest was refused, and whether the same bytes always will be.
struct Refusal {
    reason: String,
    lasting: bool,
}

#[derive(Debug)]
pub struct Agent<N> {
    id: Identity,
    store: Store,
    root: Verified<Root>,
    key: SigningKey,
    node: N,
    state: LocalState,
    etag: Option<ETag>,
    manifest: Option<Verified<ChannelManifest>>,
    /// Why the last attempt at each rollout's bundle failed.
    errors: BTreeMap<String, String>,
    last_error: Option<String>,
    last_report: Option<DateTime<Utc>>,
    /// Something a report should say has changed since the last report.
    dirty: bool,
    /// A poll left work undone (a transient download error): retry it even
    /// if the manifest has not changed.
    retry: bool,
    /// The proxy's counters at the previous report (or at the last
    /// activation): a report's traffic is what happened since.
    traffic_base: Option<(DateTime<Utc>, Sample)>,
    /// A Sentinel bundle went live and its gates have not yet heard of as
    /// much traffic as they need: report as soon as it has served that.
    judging: bool,
    /// The state ([`StatusReport::state`]) of the last report written to
    /// the store: a report with the same state only says "alive".
    stored: Option<StatusReport>,
    /// Mirrors of the store, read before it ([`Agent::with_mirrors`]).
    mirrors: Vec<Store>,
    /// The source (an index into mirrors, then the store) whose etag
    /// `etag` is.
    etag_from: usize,
    /// Why the bytes `etag` names were refused, when they were.
    etag_refused: Option<String>,
    /// A report could not be sent: the next attempt waits until then.
    report_retry_at: Option<DateTime<Utc>>,
    /// What happened here, written with the next report.
    events: EventLog,
    /// The `report_to` URL that took the last report: tried first.
    report_via: usize,
    /// The next report goes to the store whatever it says.
    must_store: bool,
}

/// Where a status report went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReportedTo {
    /// `status/<node>.json` in the store: every change goes there.
    Store,
    /// A reconciler's `POST /v1/reports/<node>`: a report that says only
    /// "alive, nothing changed", which costs no store request.
    Reconciler,
}

/// How long after a report that could not be sent the next is tried.
pub const REPORT_RETRY: chrono::Duration = chrono::Duration::seconds(10);

/// A channel manifest larger than this is not read: a hostile mirror or
/// store could otherwise make the agent hold gigabytes.
const MAX_MANIFEST_BYTES: u64 = 16 << 20;

/// How long a reconciler may take to take a report.
const REPORT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The HTTP client "alive" reports go through: one per process, built on
/// first use (a simulator runs 100,000 agents in one).
fn report_client() -> &'static reqwest::Client {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .timeout(REPORT_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default()
    })
}

impl<N: Node> Agent<N> {
    pub fn new(
        id: Identity,
        store: Store,
        root: Verified<Root>,
        key: SigningKey,
        node: N,
        state: LocalState,
    ) -> Self {
        let events = EventLog::new(&root.fleet, &id.node);
        Agent {
            id,
            store,
            root,
            key,
            node,
            state,
            etag: None,
            manifest: None,
            errors: BTreeMap::new(),
            last_error: None,
            last_report: None,
            dirty: true,
            retry: false,
            traffic_base: None,
            judging: false,
            stored: None,
            report_via: 0,
            must_store: false,
            mirrors: Vec::new(),
            etag_from: 0,
            etag_refused: None,
            report_retry_at: None,
            events,
        }
    }

    pub fn state(&self) -> &LocalState {
        &self.state
    }

    /// The fleet-wide settings of the verified channel manifest, if any:
    /// they win over agent.kdl.
    pub fn fleet_settings(&self) -> Option<&AgentSettings> {
        self.manifest.as_ref()?.settings.as_ref()
    }

    /// The drift policy in force: the fleet's, else this node's own.
    pub fn drift(&self) -> DriftPolicy {
        self.fleet_settings()
            .and_then(|s| s.drift)
            .unwrap_or(self.id.drift)
    }

    pub fn node(&self) -> &N {
        &self.node
    }

    pub fn node_mut(&mut self) -> &mut N {
        &mut self.node
    }

    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    fn manifest_key(&self) -> String {
        keys::channel(&self.id.environment)
    }

    /// Read manifests and bundles from these HTTP(S) mirrors of the store
    /// first, in order ([`Store::open_mirror`]); the store is asked when
    /// none of them answers with something that verifies.
    pub fn with_mirrors(mut self, mirrors: Vec<Store>) -> Self {
        self.mirrors = mirrors;
        self
    }

    /// Where objects are read from, in order: the mirrors, then the store.
    fn sources(&self) -> impl Iterator<Item = &Store> {
        self.mirrors.iter().chain(std::iter::once(&self.store))
    }

    /// How a source is named in a refusal: the store as before, a mirror
    /// by its url.
    fn source_name(&self, at: usize) -> String {
        match self.mirrors.get(at) {
            Some(m) => format!("mirror {}", m.url()),
            None => "the store".to_owned(),
        }
    }

    /// One poll: a conditional GET of the channel manifest (from the first
    /// mirror that answers, else the store); if it changed, verify and
    /// apply it. A mirror whose answer fails, is missing or does not verify
    /// (a stale cache serving an older serial) is passed over for the next.
    pub async fn poll(&mut self, now: DateTime<Utc>) -> Polled {
        let key = self.manifest_key();
        let sources: Vec<Store> = self.sources().cloned().collect();
        let mut refused: Vec<String> = Vec::new();
        // Whether any source answered: the store is unreachable only when
        // none did.
        let mut answered = false;
        for (at, source) in sources.iter().enumerate() {
            let last = at + 1 == sources.len();
            let mirror = if last {
                String::new()
            } else {
                format!("{}: ", self.source_name(at))
            };
            // An etag means something only to the source that gave it.
            let etag = self.etag.clone().filter(|_| self.etag_from == at);
            let fetched = match source
                .get_if_changed_at_most(&key, etag.as_ref(), MAX_MANIFEST_BYTES)
                .await
            {
                Ok(f) => {
                    answered = true;
                    self.events.store_reachable(now, true, None);
                    f
                }
                Err(e) => {
                    refused.push(format!("{mirror}reading {key}: {e}"));
                    if last && !answered {
                        // Neither a mirror nor the store answered.
                        self.events
                            .store_reachable(now, false, Some(refused.join("; ")));
                    }
                    continue;
                }
            };
            let (bytes, etag) = match fetched {
                // "Not modified" to a question that named no version: a
                // cache answering nonsense, which must not hide the store.
                Fetch::NotModified if etag.is_none() => {
                    refused.push(format!(
                        "{mirror}{key}: answered \"not modified\" to an unconditional read"
                    ));
                    continue;
                }
                // The bytes this source gave were refused: still refused.
                Fetch::NotModified if self.etag_refused.is_some() => {
                    refused.extend(self.etag_refused.clone());
                    continue;
                }
                Fetch::NotModified => {
                    // A manifest nobody re-signs goes stale: a stopped
                    // reconciler, a stuck cache, or a store frozen by an
                    // attacker.
                    if let Some(m) = self.manifest.as_ref().filter(|m| m.expires <= now) {
                        refused.push(format!(
                            "{mirror}{key} (serial {}) expired at {} and was not re-signed",
                            m.serial,
                            m.expires.to_rfc3339()
                        ));
                        continue;
                    }
                    if self.retry {
                        if let Some(m) = &self.manifest {
                            return self.apply(m.clone(), now).await;
                        }
                    }
                    // The source answered: a store error that was reported
                    // is over.
                    if self.last_error.take().is_some() {
                        self.dirty = true;
                    }
                    return Polled::Unchanged;
                }
                Fetch::Missing => {
                    refused.push(format!("{key} does not exist in {}", self.source_name(at)));
                    continue;
                }
                Fetch::Found(o) => (o.bytes, o.etag),
            };
            match self.verify_manifest(&bytes, now).await {
                Ok(manifest) => {
                    self.etag = Some(etag);
                    self.etag_from = at;
                    self.etag_refused = None;
                    return self.accept(manifest, now).await;
                }
                Err(Refusal { reason: e, lasting }) => {
                    let reason = format!("{mirror}refusing {key}: {e}");
                    if last && lasting {
                        // Remember the etag, and why: the same bytes would
                        // be refused again. (Not a mirror's: its next
                        // answer must not hide the store's. Not one signed
                        // by keys a root not yet published may trust: the
                        // next poll looks for that root again.)
                        self.etag = Some(etag);
                        self.etag_from = at;
                        self.etag_refused = Some(reason.clone());
                    } else {
                        tracing::warn!(node = %self.id.node, mirror = %source.url(), error = %e, "refusing a mirror's manifest; trying the next source");
                    }
                    refused.push(reason);
                }
            }
        }
        self.refuse(refused.join("; "))
    }

    /// Take a verified manifest and apply it.
    async fn accept(&mut self, manifest: Verified<ChannelManifest>, now: DateTime<Utc>) -> Polled {
        self.last_error = None;
        self.dirty = true;
        if self.state.serial != Some(manifest.serial) {
            self.state.serial = Some(manifest.serial);
            self.state.serial_received = Some(now);
            if let Err(e) = self.node.save(&self.state) {
                // Read the manifest again next poll: its etag must not
                // hide it behind a "not modified".
                self.etag = None;
                return self.refuse(format!("saving the manifest serial: {e}"));
            }
        }
        self.manifest = Some(manifest.clone());
        if manifest.decommissioned.contains(&self.id.node) {
            tracing::warn!(node = %self.id.node, serial = manifest.serial, "this node's file left the fleet repo: it takes no new bundle");
            return Polled::Decommissioned {
                serial: manifest.serial,
            };
        }
        self.apply(manifest, now).await
    }

    /// Record that this node left the fleet, so that a restarted agent
    /// stops at once instead of polling again.
    pub fn decommission(&mut self, now: DateTime<Utc>) -> Result<(), NodeError> {
        self.state.decommissioned = Some(now);
        self.node.save(&self.state)
    }

    fn refuse(&mut self, reason: String) -> Polled {
        tracing::warn!(node = %self.id.node, reason = %reason, "keeping the running config");
        if self.last_error.as_deref() != Some(reason.as_str()) {
            self.dirty = true;
        }
        self.last_error = Some(reason.clone());
        Polled::Refused(reason)
    }

    /// Verify a manifest; a manifest signed by keys the trusted root does
    /// not know may be signed under the next root, so look for that once.
    async fn verify_manifest(
        &mut self,
        bytes: &[u8],
        now: DateTime<Utc>,
    ) -> Result<Verified<ChannelManifest>, Refusal> {
        let env = self.id.environment.clone();
        let refusal = |e: VerifyError| Refusal {
            // Keys the trusted root does not know may be those of a root
            // published later; anything else holds for these bytes.
            lasting: !matches!(
                e,
                VerifyError::UnknownKey { .. } | VerifyError::Threshold { .. }
            ),
            reason: e.to_string(),
        };
        match verify::verify_channel(&self.root, bytes, &env, self.state.serial, now) {
            Ok(m) => Ok(m),
            Err(e @ (VerifyError::UnknownKey { .. } | VerifyError::Threshold { .. })) => {
                if !self.rotate_root().await {
                    return Err(refusal(e));
                }
                verify::verify_channel(&self.root, bytes, &env, self.state.serial, now)
                    .map_err(refusal)
            }
            Err(e) => Err(refusal(e)),
        }
    }

    /// Walk `root/<n+1>.json` in the store as far as it verifies.
    async fn rotate_root(&mut self) -> bool {
        let mut rotated = false;
        loop {
            let next = self.root.version + 1;
            let key = keys::root(next);
            let Ok(Some(object)) = self.store.get(&key).await else {
                return rotated;
            };
            match verify::verify_root_rotation(&self.root, &object.bytes) {
                Ok(root) => {
                    if let Err(e) = self.node.save_root(next, &object.bytes) {
                        tracing::warn!(version = next, error = %e, "cannot keep the new root");
                        return rotated;
                    }
                    tracing::info!(version = next, "trusting the next root");
                    self.root = root;
                    rotated = true;
                    self.events.record(
                        Utc::now(),
                        EventKind::RootRotated,
                        None,
                        None,
                        Some(format!("root version {next}")),
                    );
                }
                Err(e) => {
                    tracing::warn!(key = %key, error = %e, "refusing a root rotation");
                    return rotated;
                }
            }
        }
    }

    async fn apply(&mut self, manifest: Verified<ChannelManifest>, now: DateTime<Utc>) -> Polled {
        let _ = now;
        self.retry = false;
        let mut activated = 0;
        let mut claims = Claims::default();
        let wanted: Vec<(ChannelRollout, BundleRef)> = wanted(&manifest, &self.id, &self.state)
            .into_iter()
            .map(|(r, b)| (r.clone(), b))
            .collect();
        let names: Vec<&str> = wanted.iter().map(|(r, _)| r.name.as_str()).collect();
        self.errors.retain(|r, _| names.contains(&r.as_str()));
        for (rollout, target) in &wanted {
            match self.converge(rollout, target, &mut claims).await {
                Ok(true) => activated += 1,
                Ok(false) => {}
                Err(reason) => {
                    if self.errors.get(&rollout.name) != Some(&reason) {
                        self.dirty = true;
                    }
                    self.errors.insert(rollout.name.clone(), reason);
                }
            }
        }
        // Forget failures of bundles no longer named, so the list stays short.
        let named: Vec<&str> = manifest
            .rollouts
            .iter()
            .flat_map(|r| std::iter::once(&r.bundle).chain(&r.previous))
            .map(|b| b.digest.as_str())
            .collect();
        let before = self.state.failed.len();
        self.state.failed.retain(|d, _| named.contains(&d.as_str()));
        while self.state.failed.len() > MAX_FAILED {
            self.state.failed.pop_first();
        }
        if self.state.failed.len() != before {
            if let Err(e) = self.node.save(&self.state) {
                return self.refuse(format!("saving state: {e}"));
            }
        }
        Polled::Applied {
            serial: manifest.serial,
            activated,
        }
    }

    /// Bring one rollout's target live if it is not. `Ok(true)` when a
    /// bundle was activated.
    async fn converge(
        &mut self,
        rollout: &ChannelRollout,
        target: &BundleRef,
        claims: &mut Claims,
    ) -> Result<bool, String> {
        let name = &rollout.name;
        let mut claim = |kind: BundleKind| {
            match &mut claims[kind_index(kind)] {
            Some(other) if other != name => Err(format!(
                "rollouts `{other}` and `{name}` both deliver a {} to this node; only `{other}` is applied",
                kind_name(kind)
            )),
            taken => {
                *taken = Some(name.clone());
                Ok(())
            }
        }
        };
        for kind in KINDS {
            if let Some(slot) = slot_mut(&mut self.state, kind) {
                if &slot.active == target {
                    claim(kind)?;
                    self.errors.remove(name);
                    if &slot.rollout != name {
                        // A renamed rollout delivering what already runs.
                        slot.rollout = name.clone();
                        self.node.save(&self.state).map_err(|e| e.to_string())?;
                        self.dirty = true;
                    }
                    return Ok(false);
                }
            }
        }
        if let Some(reason) = self.state.failed.get(&target.digest) {
            return Err(reason.clone());
        }
        if target.length > self.id.max_bundle_bytes {
            return Err(self.fail(
                target,
                format!(
                    "bundle {} is {} bytes, over this agent's limit of {}",
                    target.digest, target.length, self.id.max_bundle_bytes
                ),
            ));
        }
        let key = target
            .object_key()
            .ok_or_else(|| format!("bundle digest `{}` is malformed", target.digest))?;
        let bundle = self.download(&rollout.name, target, &key).await?;
        let kind = bundle.manifest.kind;
        claim(kind)?;
        if let Some(why) = wrong_proxy(kind, &bundle.manifest.validator, &self.id.proxy) {
            return Err(self.refuse_bundle(
                &rollout.name,
                target,
                format!("refusing {key}: {why}"),
            ));
        }
        let from = slot(&self.state, kind).map(|s| s.active.clone());
        // Going back: the rollout's previous bundle in place of its own
        // (rolled back, or its bundle revoked).
        let back = *target != rollout.bundle && rollout.previous.as_ref() == Some(target);
        let outcome = self
            .node
            .activate(&rollout.name, from.as_ref(), &bundle)
            .await;
        self.dirty = true;
        let event = match &outcome {
            Ok(()) if back => EventKind::RolledBack,
            Ok(()) => EventKind::Activated,
            Err(e) => activation_failed(e),
        };
        self.events.record(
            Utc::now(),
            event,
            Some(&rollout.name),
            Some(&target.digest),
            outcome.as_ref().err().map(ToString::to_string),
        );
        match outcome {
            Ok(()) => {
                tracing::info!(
                    node = %self.id.node,
                    rollout = %rollout.name,
                    bundle = %target.digest,
                    step = rollout.step,
                    "activated"
                );
                *slot_mut(&mut self.state, kind) = Some(Slot {
                    rollout: rollout.name.clone(),
                    active: target.clone(),
                    previous: from,
                });
                self.state.failed.remove(&target.digest);
                self.errors.remove(&rollout.name);
                if kind == BundleKind::Sentinel {
                    // Traffic on the new config starts counting now.
                    self.traffic_base = None;
                    self.judging = true;
                }
                self.node.save(&self.state).map_err(|e| e.to_string())?;
                self.node.settle(&self.state).map_err(|e| e.to_string())?;
                Ok(true)
            }
            Err(reason) => {
                tracing::warn!(
                    node = %self.id.node,
                    rollout = %rollout.name,
                    bundle = %target.digest,
                    reason = %reason,
                    "activation failed; the previous config runs"
                );
                let reason = self.fail(target, reason.to_string());
                self.node.settle(&self.state).map_err(|e| e.to_string())?;
                Err(reason)
            }
        }
    }

    /// Download and verify the bundle `target` names (at `key`): from the
    /// first mirror whose copy verifies, else the store. Only the store's
    /// copy failing to verify marks the bundle failed here; a missing or
    /// unreachable one is retried at the next poll.
    async fn download(
        &mut self,
        rollout: &str,
        target: &BundleRef,
        key: &str,
    ) -> Result<Verified<BundleHead>, String> {
        let limits = Limits {
            max_unpacked_bytes: self.id.max_bundle_bytes.saturating_mul(4),
            ..Limits::default()
        };
        let sources: Vec<Store> = self.sources().cloned().collect();
        for (at, source) in sources.iter().enumerate() {
            let last = at + 1 == sources.len();
            let e = match self.node.fetch(source, key, target, limits).await {
                Ok(bundle) => return Ok(bundle),
                Err(e) => e,
            };
            match e {
                FetchError::Local(e) => {
                    self.retry = true;
                    return Err(format!("downloading {key}: {e}"));
                }
                FetchError::Missing if last => {
                    self.retry = true;
                    return Err(format!("{key} is not in the store yet"));
                }
                // Longer than signed, or not the signed bytes: these never
                // verify.
                e @ (FetchError::Refused(_) | FetchError::Store(StoreError::TooLarge { .. }))
                    if last =>
                {
                    return Err(self.refuse_bundle(
                        rollout,
                        target,
                        format!("refusing {key}: {e}"),
                    ));
                }
                FetchError::Store(e) if last => {
                    self.retry = true;
                    return Err(format!("downloading {key}: {e}"));
                }
                FetchError::Missing => {}
                e => {
                    tracing::warn!(node = %self.id.node, mirror = %source.url(), error = %e, "cannot take a bundle from a mirror; trying the next source");
                }
            }
        }
        Err(format!("{key}: no source to read it from"))
    }

    /// A bundle whose bytes or proxy this node refuses: an event, and
    /// failed here ([`Agent::fail`]).
    fn refuse_bundle(&mut self, rollout: &str, target: &BundleRef, reason: String) -> String {
        self.events.record(
            Utc::now(),
            EventKind::BundleRefused,
            Some(rollout),
            Some(&target.digest),
            Some(reason.clone()),
        );
        self.fail(target, reason)
    }

    /// Remember that `target` failed here, so it is not retried every poll.
    fn fail(&mut self, target: &BundleRef, reason: String) -> String {
        self.state
            .failed
            .insert(target.digest.clone(), reason.clone());
        if let Err(e) = self.node.save(&self.state) {
            tracing::warn!(error = %e, "cannot record a failed bundle");
        }
        reason
    }

    /// Something under the active bundles changed on disk: the next report
    /// checks drift (and repairs it when the policy says so).
    pub fn touch(&mut self) {
        self.dirty = true;
    }

    /// The next report goes to the store, even if it says only "alive"
    /// (the last one before the agent stops for good).
    pub fn touch_store(&mut self) {
        self.must_store = true;
    }

    /// The store this agent polls and writes.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// When the last report was sent.
    pub fn last_report(&self) -> Option<DateTime<Utc>> {
        self.last_report
    }

    /// Whether a report is due: something changed, or a heartbeat passed;
    /// not until [`REPORT_RETRY`] after one that could not be sent.
    pub fn report_due(&self, now: DateTime<Utc>, heartbeat: chrono::Duration) -> bool {
        if self.report_retry_at.is_some_and(|t| now < t) {
            return false;
        }
        self.dirty || self.last_report.is_none_or(|t| now - t >= heartbeat)
    }

    /// When the next report is due at the latest (a heartbeat after the
    /// last, or a retry after a failed one); `None` before the first.
    pub fn next_report(&self, heartbeat: chrono::Duration) -> Option<DateTime<Utc>> {
        let beat = self.last_report.map(|t| t + heartbeat);
        if self.dirty {
            // Something changed: as soon as a failed report may be retried.
            return self.report_retry_at.or(beat);
        }
        match (beat, self.report_retry_at) {
            (Some(b), Some(r)) => Some(b.max(r)),
            (b, r) => b.or(r),
        }
    }

    /// The status report as of `now`.
    pub async fn status(&mut self, now: DateTime<Utc>) -> StatusReport {
        let mut rollouts: BTreeMap<String, RolloutStatus> = BTreeMap::new();
        if let Some(m) = &self.manifest {
            for (r, _) in wanted(m, &self.id, &self.state) {
                rollouts.insert(
                    r.name.clone(),
                    RolloutStatus {
                        active: None,
                        previous: None,
                        error: None,
                    },
                );
            }
        }
        let mut drift = Vec::new();
        for kind in KINDS {
            let Some(slot) = slot(&self.state, kind).cloned() else {
                continue;
            };
            let s = rollouts
                .entry(slot.rollout.clone())
                .or_insert(RolloutStatus {
                    active: None,
                    previous: None,
                    error: None,
                });
            s.active = Some(slot.active.clone());
            s.previous = slot.previous.clone();
            match self.node.drift(kind, &slot.active, self.drift()).await {
                Ok(d) => {
                    self.events
                        .drift(now, self.drift(), &slot.rollout, &slot.active.digest, &d);
                    drift.extend(d);
                }
                Err(e) => self.last_error = Some(format!("checking drift: {e}")),
            }
        }
        for (name, error) in &self.errors {
            if let Some(s) = rollouts.get_mut(name) {
                s.error = Some(error.clone());
            }
        }
        // The fleet's health checks first (always run), then those of every
        // rollout this node is a target of; each once.
        let fleet_checks: Vec<ChannelCheck> = self
            .fleet_settings()
            .map(|s| {
                s.health_checks
                    .iter()
                    .take(MAX_HTTP_CHECKS)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        let mut checks: Vec<ChannelCheck> = Vec::new();
        for c in &fleet_checks {
            if !checks.iter().any(|k| k.key() == c.key()) {
                checks.push(c.clone());
            }
        }
        if let Some(m) = &self.manifest {
            for (r, _) in wanted(m, &self.id, &self.state) {
                for c in &r.http_checks {
                    if checks.len() < 2 * MAX_HTTP_CHECKS
                        && !checks.iter().any(|k| k.key() == c.key())
                    {
                        checks.push(c.clone());
                    }
                }
            }
        }
        let mut http_checks = Vec::with_capacity(checks.len());
        let active = slot(&self.state, BundleKind::Sentinel).map(|s| s.active.clone());
        for check in &checks {
            for r in self.node.http_check(check, active.as_ref()).await {
                if !r.ok {
                    tracing::debug!(url = %r.url, status = ?r.status, detail = ?r.detail, "http check failed");
                }
                http_checks.push(r);
            }
        }
        // Healthy only while each fleet check passes on every URL it
        // requested; a plain one on its status alone (a rollout's check of
        // the same URL may expect another status).
        let checks_pass = fleet_checks.iter().all(|c| {
            let key = c.key();
            let mut results = http_checks.iter().filter(|r| r.key() == key).peekable();
            results.peek().is_some()
                && results.all(|r| r.status.is_some_and(|s| c.accepts(s)) && (c.is_plain() || r.ok))
        });
        let serving = self.node.healthy().await && checks_pass;
        let mut metrics = self.node.metrics();
        let routes = self.traffic(now, &mut metrics).await;
        StatusReport {
            fleet: self.root.fleet.clone(),
            node: self.id.node.clone(),
            environment: self.id.environment.clone(),
            at: now,
            channel_serial: self.state.serial,
            channel_expires: self.manifest.as_ref().map(|m| m.expires),
            healthy: serving && self.errors.is_empty(),
            rollouts,
            metrics,
            http_checks,
            routes,
            wireguard: self.node.wireguard().await,
            monitored: self.node.monitored(now).await,
            drift,
            last_error: self.last_error.clone(),
            proxy: (self.id.proxy != Proxy::legacy()).then(|| self.id.proxy.clone()),
        }
    }

    /// The proxy's traffic since the previous report, into `metrics`, and
    /// that of each route a rollout's gates are scoped to. The first scrape
    /// (after a start or an activation) only sets the baseline: it reports
    /// no requests, since what came before belongs to another config.
    async fn traffic(&mut self, now: DateTime<Utc>, metrics: &mut Metrics) -> Vec<RouteTraffic> {
        let sample = match self.scrape().await {
            None => return Vec::new(),
            Some(Ok(sample)) => {
                // A scrape that failed once (the proxy restarting) is no
                // error once one succeeds.
                if self
                    .last_error
                    .as_deref()
                    .is_some_and(|e| e.starts_with(SCRAPE_FAILED))
                {
                    self.last_error = None;
                }
                sample
            }
            Some(Err(e)) => {
                self.last_error = Some(e);
                return Vec::new();
            }
        };
        let base = self.traffic_base.take();
        let before = base.as_ref().map(|(_, s)| s);
        let since_base = |route: Option<&str>| {
            before.map_or_else(traffic::Window::default, |b| {
                traffic::window(Some(b), &sample, route)
            })
        };
        let whole = since_base(None);
        metrics.requests = Some(whole.requests);
        metrics.errors = Some(whole.errors);
        metrics.error_rate = whole.error_rate;
        metrics.p50_latency_ms = whole.p50_ms;
        metrics.p99_latency_ms = whole.p99_ms;
        metrics.window_seconds = Some(
            base.as_ref()
                .map_or(0.0, |(at, _)| (now - *at).as_seconds_f64()),
        );
        let mut routes: Vec<String> = Vec::new();
        if let Some(m) = &self.manifest {
            for (r, _) in wanted(m, &self.id, &self.state) {
                if let Some(route) = &r.traffic_route {
                    if !routes.contains(route) && routes.len() < MAX_HTTP_CHECKS {
                        routes.push(route.clone());
                    }
                }
            }
        }
        let out = routes
            .into_iter()
            .map(|route| {
                let w = since_base(Some(&route));
                RouteTraffic {
                    route,
                    requests: w.requests,
                    errors: w.errors,
                    error_rate: w.error_rate,
                    p50_latency_ms: w.p50_ms,
                    p99_latency_ms: w.p99_ms,
                }
            })
            .collect();
        // A report that already carries the evidence ends the early-report
        // watch.
        if self.judging && before.is_some_and(|b| self.evidence_in(b, &sample) == Some(true)) {
            self.judging = false;
        }
        self.traffic_base = Some((now, sample));
        out
    }

    /// The proxy's metrics, read and parsed; `None` when this node has none.
    async fn scrape(&mut self) -> Option<Result<Sample, String>> {
        let active = slot(&self.state, BundleKind::Sentinel).map(|s| s.active.clone());
        let text = match self.node.scrape(active.as_ref()).await? {
            Ok(text) => text,
            Err(e) => return Some(Err(format!("{SCRAPE_FAILED}: {e}"))),
        };
        Some(Sample::parse(&text).map_err(|e| e.to_string()))
    }

    /// Whether the proxy served, between `base` and `now`, the requests the
    /// gates of the rollout delivering this node's Sentinel bundle need;
    /// `None` when they judge no traffic.
    fn evidence_in(&self, base: &Sample, now: &Sample) -> Option<bool> {
        let m = self.manifest.as_ref()?;
        let running = slot(&self.state, BundleKind::Sentinel)?;
        let r = m.rollouts.iter().find(|r| r.name == running.rollout)?;
        let needed = r.min_requests?;
        Some(traffic::window(Some(base), now, r.traffic_route.as_deref()).requests >= needed)
    }

    /// Whether a new bundle has now served the requests its gates need
    /// since the last report: then report at once, so a bad bundle is
    /// judged (and rolled back) within a poll of the evidence, not a
    /// heartbeat. Scrapes the proxy only while that is pending.
    pub async fn evidence_ready(&mut self) -> bool {
        if !self.judging || self.traffic_base.is_none() {
            return false;
        }
        let Some(Ok(sample)) = self.scrape().await else {
            return false;
        };
        let evidence = self
            .traffic_base
            .as_ref()
            .and_then(|(_, base)| self.evidence_in(base, &sample));
        match evidence {
            // The gates judge no traffic: nothing to wait for.
            None => {
                self.judging = false;
                false
            }
            Some(ready) => {
                if ready {
                    self.judging = false;
                }
                ready
            }
        }
    }

    /// Sign and send this node's status report: to the store when its
    /// state changed since the last one written there (or a rollout is
    /// moving in the environment, where the leader judges gates from the
    /// store), else to the first reconciler of the manifest's `report_to`
    /// that takes it, and to the store when none does.
    pub async fn report(
        &mut self,
        now: DateTime<Utc>,
    ) -> Result<(StatusReport, ReportedTo), String> {
        let sent = self.send_report(now).await;
        // A store that is down is not asked again at once.
        self.report_retry_at = sent.is_err().then(|| now + REPORT_RETRY);
        sent
    }

    async fn send_report(
        &mut self,
        now: DateTime<Utc>,
    ) -> Result<(StatusReport, ReportedTo), String> {
        let report = self.status(now).await;
        let mut envelope = report.envelope();
        envelope.sign(&self.key)?;
        let body = envelope.to_json();
        let state = report.state();
        // A changed state (or a last word) goes to the store; a report that
        // only says "alive" need not.
        let alive_only =
            !std::mem::take(&mut self.must_store) && self.stored.as_ref() == Some(&state);
        let to = match self.fleet_settings() {
            Some(s) if alive_only && s.idle && !s.report_to.is_empty() => {
                let urls = s.report_to.clone();
                self.send_to_reconciler(&urls, &body).await
            }
            _ => None,
        };
        let to = match to {
            Some(to) => to,
            None => {
                let key = keys::status(&self.id.node);
                self.store
                    .put(&key, Bytes::from(body))
                    .await
                    .map_err(|e| format!("writing {key}: {e}"))?;
                self.stored = Some(state);
                ReportedTo::Store
            }
        };
        self.last_report = Some(now);
        self.dirty = false;
        // What happened goes with the report (nothing waiting costs no
        // request); if it cannot, with the next.
        if let Err(e) = self.events.flush(&self.store, &self.key).await {
            tracing::warn!(node = %self.id.node, error = %e, "cannot write events; they wait for the next report");
        }
        Ok((report, to))
    }

    /// POST the signed report to the first of `urls` that takes it,
    /// starting with the one that took the last; `None` when none does.
    async fn send_to_reconciler(&mut self, urls: &[String], body: &[u8]) -> Option<ReportedTo> {
        for i in 0..urls.len() {
            let at = (self.report_via + i) % urls.len();
            let url = format!(
                "{}/v1/reports/{}",
                urls[at].trim_end_matches('/'),
                self.id.node
            );
            let sent = report_client()
                .post(&url)
                .header("content-type", "application/json")
                .body(body.to_vec())
                .send()
                .await;
            match sent {
                // 204 exactly: a proxy or portal answering 200 to
                // anything has not taken the report.
                Ok(r) if r.status() == reqwest::StatusCode::NO_CONTENT => {
                    self.report_via = at;
                    return Some(ReportedTo::Reconciler);
                }
                Ok(r) => {
                    tracing::warn!(url = %url, status = r.status().as_u16(), "reconciler refused the report");
                }
                Err(e) => tracing::warn!(url = %url, error = %e, "cannot reach the reconciler"),
            }
        }
        None
    }
}

/// Which event a failed activation is.
fn activation_failed(e: &NodeError) -> EventKind {
    match e {
        // The previous config is not back either: not what the kinds
        // below promise.
        NodeError::NotRestored { .. } => EventKind::ActivationFailed,
        NodeError::Sentinel(
            SentinelError::Read { .. }
            | SentinelError::Invalid { .. }
            | SentinelError::Render { .. },
        ) => EventKind::ValidationRefused,
        NodeError::Sentinel(
            SentinelError::Mismatch { .. }
            | SentinelError::NoDump { .. }
            | SentinelError::BadDump { .. }
            | SentinelError::Unhealthy { .. }
            | SentinelError::NoAnswer { .. },
        ) => EventKind::ReloadRefused,
        _ => EventKind::ActivationFailed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gitfleet_schemas::trust::member_hash;
    use gitfleet_schemas::ProxyKind;

    fn rollout(name: &str, selector: &[(&str, &str)], threshold: u64) -> ChannelRollout {
        ChannelRollout {
            name: name.into(),
            selector: selector
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
            requirements: Vec::new(),
            nodes: None,
            bundle: BundleRef {
                digest: format!("sha256:{}", "a".repeat(64)),
                length: 10,
            },
            previous: Some(BundleRef {
                digest: format!("sha256:{}", "b".repeat(64)),
                length: 9,
            }),
            step: 1,
            steps: 2,
            membership_threshold: threshold,
            http_checks: Vec::new(),
            traffic_route: None,
            min_requests: None,
            rolled_back: false,
            proxy: None,
        }
    }

    fn manifest(rollouts: Vec<ChannelRollout>) -> ChannelManifest {
        ChannelManifest {
            settings: None,
            revoked: Vec::new(),
            held: Vec::new(),
            pinned: Vec::new(),
            decommissioned: Vec::new(),
            fleet: "f".into(),
            environment: "prod".into(),
            serial: 1,
            expires: DateTime::<Utc>::MIN_UTC,
            rollouts,
        }
    }

    fn none() -> LocalState {
        LocalState::default()
    }

    fn running(active: &BundleRef, previous: Option<&BundleRef>) -> LocalState {
        LocalState {
            sentinel: Some(Slot {
                rollout: "edge".into(),
                active: active.clone(),
                previous: previous.cloned(),
            }),
            ..LocalState::default()
        }
    }

    #[test]
    fn a_rolled_back_rollout_without_a_previous_bundle_sends_each_node_back_to_its_own() {
        let mut r = rollout("edge", &[], u64::MAX);
        let failed = r.bundle.clone();
        let mine = BundleRef {
            digest: format!("sha256:{}", "c".repeat(64)),
            length: 7,
        };
        r.previous = None;
        r.rolled_back = true;
        r.membership_threshold = 0;
        let m = manifest(vec![r]);
        // Runs the failed bundle and kept the one before: goes back to it.
        let w = wanted(&m, &id(&BTreeMap::new()), &running(&failed, Some(&mine)));
        assert_eq!(w[0].1, mine);
        // Already back (or never took the failed one): stays where it is.
        let w = wanted(&m, &id(&BTreeMap::new()), &running(&mine, Some(&failed)));
        assert_eq!(w[0].1, mine);
        // Never ran anything else: nothing to go back to, nothing changes.
        assert!(wanted(&m, &id(&BTreeMap::new()), &running(&failed, None)).is_empty());
        assert!(wanted(&m, &id(&BTreeMap::new()), &none()).is_empty());
    }

    /// A revoked bundle is never wanted: a node takes the rollout's
    /// previous bundle instead, or stays on (or goes back to) one of its
    /// own that is not revoked.
    #[test]
    fn a_revoked_bundle_is_never_wanted() {
        let mut r = rollout("edge", &[], u64::MAX);
        let (new, old) = (r.bundle.clone(), r.previous.clone().unwrap());
        let mine = BundleRef {
            digest: format!("sha256:{}", "c".repeat(64)),
            length: 7,
        };
        let mut m = manifest(vec![r.clone()]);
        let me = id(&BTreeMap::new());
        assert_eq!(wanted(&m, &me, &running(&old, None))[0].1, new);
        m.revoked = vec![new.digest.clone()];
        // In the step, running the revoked bundle: off it to the previous.
        assert_eq!(wanted(&m, &me, &running(&new, Some(&old)))[0].1, old);
        // The previous revoked too: back to what it ran before, or stay.
        m.revoked = vec![new.digest.clone(), old.digest.clone()];
        assert_eq!(wanted(&m, &me, &running(&new, Some(&mine)))[0].1, mine);
        assert_eq!(wanted(&m, &me, &running(&mine, Some(&new)))[0].1, mine);
        // Nothing else to run: nothing wanted, nothing activated.
        assert!(wanted(&m, &me, &running(&new, None)).is_empty());
        assert!(wanted(&m, &me, &none()).is_empty());
        // Outside the step, the previous bundle is revoked: stay.
        r.membership_threshold = 0;
        let mut m = manifest(vec![r]);
        m.revoked = vec![old.digest.clone()];
        assert_eq!(wanted(&m, &me, &running(&mine, Some(&old)))[0].1, mine);
    }

    #[test]
    fn a_pinned_node_runs_its_pin_for_that_rollout_whatever_the_step() {
        let mut m = manifest(vec![rollout("edge", &[], u64::MAX)]);
        let pin = BundleRef {
            digest: format!("sha256:{}", "7".repeat(64)),
            length: 7,
        };
        m.held = vec!["n1".into()];
        m.pinned = vec![gitfleet_schemas::trust::ChannelPin {
            node: "n1".into(),
            rollout: "edge".into(),
            bundle: pin.clone(),
        }];
        let w = wanted(&m, &id(&BTreeMap::new()), &none());
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].1, pin);
        // A revoked pin is not taken: held on what it runs, which is nothing.
        m.revoked = vec![pin.digest.clone()];
        assert!(wanted(&m, &id(&BTreeMap::new()), &none()).is_empty());
    }

    /// A held node wants nothing new: it keeps what it runs, and leaves it
    /// only when that is revoked.
    #[test]
    fn a_held_node_keeps_what_it_runs_unless_it_is_revoked() {
        let r = rollout("edge", &[], u64::MAX);
        let (new, old) = (r.bundle.clone(), r.previous.clone().unwrap());
        let mut m = manifest(vec![r]);
        let me = id(&BTreeMap::new());
        m.held = vec!["n1".into()];
        assert!(wanted(&m, &me, &running(&old, None)).is_empty());
        assert!(wanted(&m, &me, &none()).is_empty());
        m.revoked = vec![old.digest.clone()];
        let mine = BundleRef {
            digest: format!("sha256:{}", "c".repeat(64)),
            length: 7,
        };
        // Back to what it ran before, never on to the rollout's new bundle.
        assert_eq!(wanted(&m, &me, &running(&old, Some(&mine)))[0].1, mine);
        // Nor to the rollout's previous bundle, which it never ran.
        m.revoked = vec![mine.digest.clone()];
        assert!(wanted(&m, &me, &running(&mine, None)).is_empty());
        m.revoked = vec![old.digest.clone()];
        m.held = vec!["n2".into()];
        m.revoked.clear();
        assert_eq!(wanted(&m, &me, &running(&old, None))[0].1, new);
    }

    fn id(labels: &BTreeMap<String, String>) -> Identity {
        Identity {
            node: "n1".into(),
            environment: "prod".into(),
            labels: labels.clone(),
            drift: DriftPolicy::Report,
            max_bundle_bytes: 1 << 20,
            proxy: Proxy::legacy(),
        }
    }

    #[test]
    fn a_node_takes_the_entry_for_its_own_proxy() {
        let zentinel = Proxy::new(ProxyKind::Zentinel, "0.6.45");
        let sentinel_entry = ChannelRollout {
            proxy: Some(Proxy::legacy()),
            ..rollout("edge", &[], u64::MAX)
        };
        let mut zentinel_entry = ChannelRollout {
            proxy: Some(zentinel.clone()),
            ..rollout("edge", &[], u64::MAX)
        };
        zentinel_entry.bundle.digest = format!("sha256:{}", "e".repeat(64));
        let m = manifest(vec![sentinel_entry.clone(), zentinel_entry.clone()]);
        let on_sentinel = wanted(&m, &id(&BTreeMap::new()), &none());
        assert_eq!(on_sentinel.len(), 1);
        assert_eq!(on_sentinel[0].1, sentinel_entry.bundle);
        let z = Identity {
            proxy: zentinel,
            ..id(&BTreeMap::new())
        };
        let on_zentinel = wanted(&m, &z, &none());
        assert_eq!(on_zentinel.len(), 1);
        assert_eq!(on_zentinel[0].1, zentinel_entry.bundle);
        // A node of a proxy no entry names takes nothing.
        let other = Identity {
            proxy: Proxy::new(ProxyKind::Zentinel, "0.6.50"),
            ..id(&BTreeMap::new())
        };
        assert!(wanted(&m, &other, &none()).is_empty());
    }

    #[test]
    fn a_node_refuses_a_bundle_validated_for_another_proxy() {
        let zentinel = Proxy::new(ProxyKind::Zentinel, "0.6.45");
        let legacy = Proxy::legacy();
        assert_eq!(
            wrong_proxy(BundleKind::Sentinel, "sentinel-config 0.4.14", &legacy),
            None
        );
        assert_eq!(
            wrong_proxy(BundleKind::Sentinel, "zentinel-config 0.6.45", &zentinel),
            None
        );
        assert_eq!(
            wrong_proxy(BundleKind::Sentinel, "zentinel-config 0.6.45", &legacy).as_deref(),
            Some("the bundle is for zentinel 0.6.45, and this node runs sentinel 0.4.14")
        );
        assert!(wrong_proxy(BundleKind::Sentinel, "zentinel-config 0.6.44", &zentinel).is_some());
        assert!(wrong_proxy(BundleKind::Sentinel, "made-up", &legacy).is_some());
        // A mesh bundle is for any proxy.
        assert_eq!(
            wrong_proxy(BundleKind::WireguardMesh, "gitfleet-mesh 1", &zentinel),
            None
        );
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect()
    }

    #[test]
    fn a_node_in_the_step_wants_the_new_bundle() {
        let m = manifest(vec![rollout("edge", &[("role", "edge")], u64::MAX)]);
        let w = wanted(
            &m,
            &id(&labels(&[("role", "edge"), ("region", "fra")])),
            &none(),
        );
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].1, m.rollouts[0].bundle);
    }

    #[test]
    fn a_node_outside_the_step_keeps_the_previous_bundle() {
        let h = member_hash("edge", "n1");
        let m = manifest(vec![rollout("edge", &[], h)]);
        let w = wanted(&m, &id(&BTreeMap::new()), &none());
        assert_eq!(Some(&w[0].1), m.rollouts[0].previous.as_ref());
        let m = manifest(vec![rollout("edge", &[], h + 1)]);
        assert_eq!(
            wanted(&m, &id(&BTreeMap::new()), &none())[0].1,
            m.rollouts[0].bundle
        );
    }

    #[test]
    fn a_node_whose_labels_do_not_match_wants_nothing() {
        let m = manifest(vec![rollout("edge", &[("role", "edge")], u64::MAX)]);
        assert!(wanted(&m, &id(&labels(&[("role", "api")])), &none()).is_empty());
        assert!(wanted(&m, &id(&BTreeMap::new()), &none()).is_empty());
    }

    #[test]
    fn outside_the_first_step_of_a_first_rollout_there_is_nothing_to_run() {
        let mut r = rollout("edge", &[], 0);
        r.previous = None;
        let m = manifest(vec![r]);
        assert!(wanted(&m, &id(&BTreeMap::new()), &none()).is_empty());
    }
}
