//! What the fleet looks like now, read from git and the store: the checked
//! model at the branch tip, the state branch, and every node's verified
//! status report. The reconciler plans from it; `gitfleet status` and
//! `gitfleet serve` show it.
//!
//! Repeated observations are cheap: an unmoved branch is not checked again,
//! and a report the `status/` listing shows unchanged (same etag, size and
//! write time) is not requested at all; one that changed is fetched with a
//! conditional GET and verified again only when its bytes changed. An idle
//! pass costs its listing: one request per 1,000 nodes.
//!
//! Where the fleet has agents report over HTTP (`report-to`), an idle
//! node's heartbeat reaches a replica instead of the store: the reports
//! this replica took ([`LiveReports`]) and when the other replicas heard
//! from each node (their liveness shards) are merged in, and `status/` is
//! listed every pass only while a rollout moves; otherwise once per
//! [`LIST_IDLE_EVERY`], since only state changes are written there.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use futures::StreamExt as _;
use gitfleet_io::store::{ETag, Fetch, Store};
use gitfleet_policy::plan::Targets;
use gitfleet_policy::view::{fleet_status, ViewInputs};
use gitfleet_policy::Checked;
use gitfleet_schemas::keys as object_keys;
use gitfleet_schemas::state::{RolloutState, RulesState};
use gitfleet_schemas::status::StatusReport;
use gitfleet_schemas::trust::PublicKey;
use gitfleet_schemas::verify::{verify_status, VerifyError};
use gitfleet_schemas::view::FleetStatus;

use crate::git::{Mirror, StateFiles};
use crate::pass::live::{self, LiveReports};

/// Why the fleet could not be observed.
#[derive(Debug, thiserror::Error)]
pub enum ObserveError {
    #[error("syncing the fleet repo")]
    Git(#[from] crate::git::GitError),
    #[error("talking to the object store")]
    Store(#[from] gitfleet_io::store::StoreError),
    #[error("state file {path} on the state branch is not valid")]
    State {
        path: String,
        #[source]
        source: serde_json::Error,
    },
}

/// Status reports fetched at once. After a rollout every report changed:
/// at 20 ms a request, 100,000 of them take 125 s 16 at a time and 31 s
/// 64 at a time, still far below S3's 5,500 GETs a second per prefix.
const FETCH_CONCURRENCY: usize = 64;

/// Where agents report over HTTP and no rollout moves, `status/` is listed
/// this often at most.
pub const LIST_IDLE_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// Keys per range of a split `status/` listing: one S3 page.
const LIST_SPLIT: usize = 1000;

/// A liveness shard larger than this is not read.
const MAX_SHARD_BYTES: usize = 16 << 20;

/// A commit's check, and the node keys its reports are verified with
/// (parsing a key checks it is a prime-order point, which is not free at
/// thousands of nodes a pass).
#[derive(Debug)]
pub struct CheckedCommit {
    pub checked: Checked,
    pub node_keys: HashMap<String, PublicKey>,
    /// Who each rollout selects, per environment.
    pub targets: Targets,
}

impl CheckedCommit {
    /// A checked commit with the node keys and targets it implies.
    pub fn new(checked: Checked) -> Self {
        let node_keys = checked
            .model
            .nodes
            .iter()
            .filter_map(|n| {
                Some((
                    n.doc.id.value.clone(),
                    PublicKey::parse(&n.doc.node_key.value).ok()?,
                ))
            })
            .collect();
        let targets = Targets::from_model(&checked.model);
        CheckedCommit {
            checked,
            node_keys,
            targets,
        }
    }

    /// Whether the fleet's agents report over HTTP when idle (fleet.kdl
    /// names `report-to`).
    pub fn reports_over_http(&self) -> bool {
        self.checked
            .model
            .fleet
            .as_ref()
            .is_some_and(|f| !f.doc.defaults.report_to.is_empty())
    }

    pub fn fleet(&self) -> Option<&str> {
        self.checked
            .model
            .fleet
            .as_ref()
            .map(|f| f.doc.name.value.as_str())
    }
}

/// One observation of the fleet.
#[derive(Clone, Debug)]
pub struct Observed {
    pub commit: git2::Oid,
    pub checked: Arc<CheckedCommit>,
    pub state_commit: Option<git2::Oid>,
    pub state_files: StateFiles,
    /// Verified reports by node id.
    pub reports: Arc<HashMap<String, Arc<StatusReport>>>,
    /// When the store last wrote each report (its own clock, from the
    /// listing): liveness goes by this, not by a node's clock.
    pub written: Arc<HashMap<String, DateTime<Utc>>>,
    /// Reports that did not verify, by reason (a bounded label).
    pub reports_ignored: BTreeMap<&'static str, usize>,
}

impl Observed {
    /// The rollout state files, parsed.
    pub fn state(&self) -> Result<BTreeMap<String, RolloutState>, ObserveError> {
        parse_state(&self.state_files)
    }

    /// The fleet view, with `state` and `rules` (the committed ones, or
    /// those a pass just decided) as the rollout state and the rules in
    /// force.
    pub fn view(
        &self,
        state: &BTreeMap<String, RolloutState>,
        rules: Option<&RulesState>,
        now: DateTime<Utc>,
        stale_after: Duration,
        environment: Option<&str>,
    ) -> FleetStatus {
        fleet_status(&ViewInputs {
            model: &self.checked.checked.model,
            targets: &self.checked.targets,
            state,
            rules,
            reports: &self.reports,
            written: &self.written,
            reports_ignored: &self.reports_ignored,
            commit: &self.commit.to_string(),
            state_commit: self.state_commit.map(|c| c.to_string()).as_deref(),
            now,
            stale_after,
            environment,
        })
    }
}

/// A report as last fetched: verified again only when its bytes, the key
/// or the fleet name change.
#[derive(Debug)]
struct Cached {
    /// The version the listing gave when this was read.
    listed: String,
    /// When the store wrote it, as the listing said.
    written: DateTime<Utc>,
    etag: ETag,
    key: PublicKey,
    fleet: String,
    outcome: Result<Arc<StatusReport>, &'static str>,
}

/// The status reports one observation found.
#[derive(Debug, Default)]
pub struct Reports {
    /// Verified reports by node id.
    pub verified: HashMap<String, Arc<StatusReport>>,
    /// When the store wrote each verified one.
    pub written: HashMap<String, DateTime<Utc>>,
    /// The rest, counted by reason.
    pub ignored: BTreeMap<&'static str, usize>,
}

/// The `status/` reports, read for what the listing says changed: a report
/// whose listed version is the same is not requested, one that changed is
/// fetched with a conditional GET and verified again only when its bytes,
/// key or fleet name changed. The listing itself runs in parallel ranges
/// split at every 1,000th key of the last one.
#[derive(Debug)]
pub struct StatusReader {
    pub store: Store,
    cache: HashMap<String, Cached>,
    /// Every 1,000th key of the last listing.
    splits: Vec<String>,
}

/// Another replica's liveness shard as last read.
#[derive(Debug)]
struct Shard {
    listed: String,
    etag: ETag,
    /// Whose shard it is.
    replica: String,
    /// When each node was heard from, by the store's clock, and the `at`
    /// of its report.
    heard: Vec<(String, DateTime<Utc>, DateTime<Utc>)>,
}

/// Reads the fleet, remembering what it can between observations.
#[derive(Debug)]
pub struct Observer {
    pub mirror: Mirror,
    pub store: Store,
    checked: Option<(git2::Oid, Arc<CheckedCommit>)>,
    status: StatusReader,
    /// Reports this replica took over HTTP.
    pub live: Arc<LiveReports>,
    /// This replica's lease holder name, and its id in liveness keys.
    holder: String,
    replica: String,
    /// Other replicas' liveness shards, by key.
    shards: HashMap<String, Shard>,
    /// The live version last shared, when, and how many shards that wrote.
    shared: Option<(u64, DateTime<Utc>, usize)>,
    /// How often liveness is shared, at most.
    pub share_every: Duration,
    /// How many shards of this replica the store listed (from before a
    /// restart too): the ones a smaller count leaves are removed.
    own_shards: usize,
    /// When `status/` was last listed, at which commit, and what it
    /// ignored.
    listed: Option<(std::time::Instant, git2::Oid, BTreeMap<&'static str, usize>)>,
    /// A rollout is moving: list `status/` every observation. True until
    /// a pass says otherwise, so `gitfleet status` always lists.
    pub busy: bool,
}

impl Observer {
    pub fn new(mirror: Mirror, store: Store) -> Self {
        Observer {
            mirror,
            store: store.clone(),
            checked: None,
            status: StatusReader::new(store),
            live: Arc::default(),
            holder: String::new(),
            replica: live::replica_id(""),
            shards: HashMap::new(),
            shared: None,
            share_every: live::SHARE_EVERY,
            own_shards: 0,
            listed: None,
            busy: true,
        }
    }

    /// Name this replica (its lease holder name), for its liveness shards.
    pub fn set_holder(&mut self, holder: &str) {
        self.holder = holder.to_owned();
        self.replica = live::replica_id(holder);
    }

    /// Fetch git, check the branch tip, read the state branch and every
    /// node's report.
    pub async fn observe(&mut self) -> Result<Observed, ObserveError> {
        let heads = self.mirror.fetch()?;
        let checked = match &self.checked {
            Some((oid, checked)) if *oid == heads.branch => Arc::clone(checked),
            _ => {
                let files = self.mirror.files_at(heads.branch)?;
                let checked = Arc::new(CheckedCommit::new(gitfleet_policy::check(&files)));
                self.checked = Some((heads.branch, Arc::clone(&checked)));
                checked
            }
        };
        let (state_commit, state_files) = self.mirror.state_files()?;
        let over_http = checked.reports_over_http();
        let reports = match checked.fleet() {
            Some(fleet) => {
                let mut reports = if self.list_due(over_http, heads.branch) {
                    let r = self.status.read(&checked.node_keys, fleet).await?;
                    self.listed =
                        Some((std::time::Instant::now(), heads.branch, r.ignored.clone()));
                    r
                } else {
                    self.cached_reports()
                };
                if over_http {
                    let heard = self.read_liveness().await?;
                    self.live.retain(|n| checked.node_keys.contains_key(n));
                    merge_live(&mut reports, &self.live.snapshot().1, &heard);
                }
                reports
            }
            None => Reports::default(),
        };
        Ok(Observed {
            commit: heads.branch,
            checked,
            state_commit,
            state_files,
            reports: Arc::new(reports.verified),
            written: Arc::new(reports.written),
            reports_ignored: reports.ignored,
        })
    }

    /// Whether this observation lists `status/`: always, unless agents
    /// report over HTTP and no rollout moves; then once a minute, and at
    /// once when the branch moved (new nodes, keys or fleet name).
    fn list_due(&self, over_http: bool, commit: git2::Oid) -> bool {
        !over_http
            || self.busy
            || self
                .listed
                .as_ref()
                .is_none_or(|(t, at, _)| *at != commit || t.elapsed() >= LIST_IDLE_EVERY)
    }

    /// The reports as last read, without a request.
    fn cached_reports(&self) -> Reports {
        let mut reports = self.status.cached();
        reports.ignored = self
            .listed
            .as_ref()
            .map(|(_, _, ignored)| ignored.clone())
            .unwrap_or_default();
        reports
    }

    /// When the other replicas last heard from each node over HTTP, by the
    /// store's clock: their liveness shards, each read again only when the
    /// listing shows it changed.
    async fn read_liveness(&mut self) -> Result<HashMap<String, DateTime<Utc>>, ObserveError> {
        let mut seen = HashMap::new();
        let mut kept = HashMap::new();
        for listed in self
            .store
            .list_versions(object_keys::LIVENESS_PREFIX)
            .await?
        {
            let Some((replica, shard)) = object_keys::liveness_shard(&listed.key) else {
                continue;
            };
            if replica == self.replica {
                self.own_shards = self.own_shards.max(shard + 1);
                // Ours: what this process heard is in memory; what the
                // process before a restart heard is read until we share.
                if self.shared.is_some() {
                    continue;
                }
            }
            let old = self.shards.remove(&listed.key);
            let shard = match old {
                Some(s) if s.listed == listed.version => s,
                old => {
                    let etag = old.as_ref().map(|s| &s.etag);
                    match self.store.get_if_changed(&listed.key, etag).await? {
                        Fetch::Missing => continue,
                        Fetch::NotModified => match old {
                            Some(s) => Shard {
                                listed: listed.version.clone(),
                                ..s
                            },
                            None => continue,
                        },
                        Fetch::Found(object) => {
                            let doc = (object.bytes.len() <= MAX_SHARD_BYTES)
                                .then(|| {
                                    serde_json::from_slice::<gitfleet_schemas::status::Liveness>(
                                        &object.bytes,
                                    )
                                    .ok()
                                })
                                .flatten()
                                .filter(|d| {
                                    d.version == gitfleet_schemas::status::Liveness::VERSION
                                });
                            let Some(doc) = doc else {
                                tracing::warn!(key = %listed.key, "ignoring a liveness shard that does not read as one");
                                continue;
                            };
                            Shard {
                                listed: listed.version.clone(),
                                etag: object.etag,
                                replica: replica.to_owned(),
                                heard: live::heard_at(&doc, listed.last_modified)
                                    .map(|(n, t, at)| (n.to_owned(), t, at))
                                    .collect(),
                            }
                        }
                    }
                }
            };
            for (node, heard, _) in &shard.heard {
                let e = seen.entry(node.clone()).or_insert(*heard);
                *e = (*e).max(*heard);
            }
            kept.insert(listed.key, shard);
        }
        self.shards = kept;
        Ok(seen)
    }

    /// Write when this replica last heard from each node over HTTP, as
    /// `liveness/<replica>/<n>.json`: when something new was heard and the
    /// last write is [`live::SHARE_EVERY`] old. One PUT per 1,000 nodes.
    pub async fn share_liveness(&mut self, now: DateTime<Utc>) -> Result<usize, ObserveError> {
        let (version, heard) = self.live.snapshot();
        let due = match self.shared {
            None => version > 0,
            Some((v, at, _)) => v != version && now - at >= self.share_every,
        };
        if !due {
            return Ok(0);
        }
        let mut entries: HashMap<String, (DateTime<Utc>, DateTime<Utc>)> = heard
            .into_iter()
            .map(|(node, l)| (node, (l.report.at, l.received)))
            .collect();
        if self.shared.is_none() {
            // The first write after a start carries on what this replica
            // heard before it (its shards as read), so nodes do not drop
            // out of the other replicas' view until they report again.
            for shard in self.shards.values().filter(|s| s.replica == self.replica) {
                for (node, heard, at) in &shard.heard {
                    entries.entry(node.clone()).or_insert((*at, *heard));
                }
            }
        }
        let docs = live::shard_documents(&self.holder, &entries, now);
        for (i, doc) in docs.iter().enumerate() {
            let bytes = serde_json::to_vec(doc).unwrap_or_default();
            self.store
                .put(&object_keys::liveness(&self.replica, i), bytes.into())
                .await?;
        }
        // Shards of a larger count before: gone, so none is read stale.
        let before = self.shared.map_or(0, |(_, _, n)| n).max(self.own_shards);
        for i in docs.len()..before {
            self.store
                .delete(&object_keys::liveness(&self.replica, i))
                .await?;
        }
        self.shared = Some((version, now, docs.len()));
        self.own_shards = docs.len();
        Ok(docs.len())
    }
}

impl StatusReader {
    pub fn new(store: Store) -> Self {
        StatusReader {
            store,
            cache: HashMap::new(),
            splits: Vec::new(),
        }
    }

    /// Verified reports of the fleet's nodes; the rest are counted by reason.
    pub async fn read(
        &mut self,
        keys: &HashMap<String, PublicKey>,
        fleet: &str,
    ) -> Result<Reports, ObserveError> {
        let mut ignored: BTreeMap<&'static str, usize> = BTreeMap::new();
        let mut wanted = Vec::new();
        let mut seen = HashMap::new();
        let listing = self
            .store
            .list_versions_split(object_keys::STATUS_PREFIX, &self.splits)
            .await?;
        // Not at the last key: the range after it would be empty, and an
        // empty listing is a request too.
        let last = listing.len().saturating_sub(1);
        self.splits = listing
            .iter()
            .take(last)
            .skip(LIST_SPLIT - 1)
            .step_by(LIST_SPLIT)
            .map(|l| l.key.clone())
            .collect();
        for listed in listing {
            let Some(node) = object_keys::status_node(&listed.key).map(str::to_owned) else {
                continue;
            };
            let Some(node_key) = keys.get(&node).copied() else {
                *ignored.entry("unknown-node").or_default() += 1;
                continue;
            };
            // A cached verdict holds only for the same key and fleet; with
            // the same listed version it holds without a request.
            let unchanged = self.cache.get(&node).is_some_and(|c| {
                c.key == node_key && c.fleet == fleet && c.listed == listed.version
            });
            if unchanged {
                if let Some(c) = self.cache.remove(&node) {
                    seen.insert(node, c);
                }
                continue;
            }
            wanted.push((node, listed, node_key));
        }
        let store = &self.store;
        let cache = &self.cache;
        let fetched: Vec<_> = futures::stream::iter(wanted)
            .map(|(node, listed, node_key)| async move {
                let etag = cache
                    .get(&node)
                    .filter(|c| c.key == node_key && c.fleet == fleet)
                    .map(|c| &c.etag);
                let fetch = store.get_if_changed(&listed.key, etag).await;
                (node, node_key, listed, fetch)
            })
            .buffer_unordered(FETCH_CONCURRENCY)
            .collect()
            .await;

        for (node, node_key, listed, fetch) in fetched {
            let cached = match fetch? {
                Fetch::Missing => continue,
                Fetch::NotModified => match self.cache.remove(&node) {
                    Some(c) => Cached {
                        listed: listed.version,
                        written: listed.last_modified,
                        ..c
                    },
                    None => continue,
                },
                Fetch::Found(object) => {
                    let outcome = match verify_status(&object.bytes, fleet, &node, &node_key) {
                        Ok(report) => Ok(Arc::new((*report).clone())),
                        Err(e) => {
                            tracing::warn!(node = %node, error = %e, "ignoring status report");
                            Err(ignored_reason(&e))
                        }
                    };
                    Cached {
                        listed: listed.version,
                        written: listed.last_modified,
                        etag: object.etag,
                        key: node_key,
                        fleet: fleet.to_owned(),
                        outcome,
                    }
                }
            };
            seen.insert(node, cached);
        }
        // Only nodes still reporting stay cached.
        self.cache = seen;
        let mut reports = self.cached();
        for (reason, n) in ignored {
            *reports.ignored.entry(reason).or_default() += n;
        }
        Ok(reports)
    }

    /// The reports as last read: the verified ones, the rest counted by
    /// reason.
    fn cached(&self) -> Reports {
        let mut reports = Reports::default();
        for (node, c) in &self.cache {
            match &c.outcome {
                Ok(report) => {
                    reports.verified.insert(node.clone(), Arc::clone(report));
                    reports.written.insert(node.clone(), c.written);
                }
                Err(reason) => *reports.ignored.entry(reason).or_default() += 1,
            }
        }
        reports
    }
}

/// Fold reports taken over HTTP and other replicas' liveness into what the
/// store gave: a node's report is the one heard last (the store's write
/// time against this replica's receipt, server clocks both, never the
/// node's), and it was last heard from at the latest of those and the
/// other replicas' shards.
fn merge_live(
    reports: &mut Reports,
    taken: &HashMap<String, live::Live>,
    heard: &HashMap<String, DateTime<Utc>>,
) {
    for (node, l) in taken {
        let newer = match reports.written.get(node) {
            Some(written) => l.received > *written,
            None => !reports.verified.contains_key(node),
        };
        if newer {
            reports.verified.insert(node.clone(), Arc::clone(&l.report));
        }
        bump(&mut reports.written, node, l.received);
    }
    for (node, at) in heard {
        if reports.verified.contains_key(node) {
            bump(&mut reports.written, node, *at);
        }
    }
}

fn bump(written: &mut HashMap<String, DateTime<Utc>>, node: &str, at: DateTime<Utc>) {
    match written.get_mut(node) {
        Some(w) => *w = (*w).max(at),
        None => {
            written.insert(node.to_owned(), at);
        }
    }
}

/// A status report's fate, as a bounded metric label.
fn ignored_reason(e: &VerifyError) -> &'static str {
    match e {
        VerifyError::UnknownKey { .. } | VerifyError::Threshold { .. } => "unknown-key",
        VerifyError::BadSignature { .. } => "bad-signature",
        VerifyError::WrongNode { .. } | VerifyError::WrongFleet { .. } => "wrong-node",
        _ => "malformed",
    }
}

/// `rollouts/<name>.json` of the state branch, parsed.
pub fn parse_state(files: &StateFiles) -> Result<BTreeMap<String, RolloutState>, ObserveError> {
    let mut out = BTreeMap::new();
    for (path, bytes) in files {
        let Some(name) = gitfleet_schemas::state::rollout_of(path) else {
            continue;
        };
        let state: RolloutState =
            serde_json::from_slice(bytes).map_err(|source| ObserveError::State {
                path: path.clone(),
                source,
            })?;
        out.insert(name.to_owned(), state);
    }
    Ok(out)
}
