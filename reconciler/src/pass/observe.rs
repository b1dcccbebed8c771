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

/// Status reports fetched at once.
const FETCH_CONCURRENCY: usize = 16;

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
    fn new(checked: Checked) -> Self {
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
struct Reports {
    /// Verified reports by node id.
    verified: HashMap<String, Arc<StatusReport>>,
    /// When the store wrote each verified one.
    written: HashMap<String, DateTime<Utc>>,
    /// The rest, counted by reason.
    ignored: BTreeMap<&'static str, usize>,
}

/// Reads the fleet, remembering what it can between observations.
#[derive(Debug)]
pub struct Observer {
    pub mirror: Mirror,
    pub store: Store,
    checked: Option<(git2::Oid, Arc<CheckedCommit>)>,
    reports: HashMap<String, Cached>,
}

impl Observer {
    pub fn new(mirror: Mirror, store: Store) -> Self {
        Observer {
            mirror,
            store,
            checked: None,
            reports: HashMap::new(),
        }
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
        let reports = match checked.fleet() {
            Some(fleet) => self.reports(&checked.node_keys, fleet).await?,
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

    /// Verified reports of the fleet's nodes; the rest are counted by reason.
    async fn reports(
        &mut self,
        keys: &HashMap<String, PublicKey>,
        fleet: &str,
    ) -> Result<Reports, ObserveError> {
        let mut ignored: BTreeMap<&'static str, usize> = BTreeMap::new();
        let mut wanted = Vec::new();
        let mut seen = HashMap::new();
        for listed in self.store.list_versions(object_keys::STATUS_PREFIX).await? {
            let Some(node) = object_keys::status_node(&listed.key).map(str::to_owned) else {
                continue;
            };
            let Some(node_key) = keys.get(&node).copied() else {
                *ignored.entry("unknown-node").or_default() += 1;
                continue;
            };
            // A cached verdict holds only for the same key and fleet; with
            // the same listed version it holds without a request.
            let unchanged = self.reports.get(&node).is_some_and(|c| {
                c.key == node_key && c.fleet == fleet && c.listed == listed.version
            });
            if unchanged {
                if let Some(c) = self.reports.remove(&node) {
                    seen.insert(node, c);
                }
                continue;
            }
            wanted.push((node, listed, node_key));
        }
        let store = &self.store;
        let cache = &self.reports;
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
                Fetch::NotModified => match self.reports.remove(&node) {
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
        let mut reports = Reports::default();
        for (node, c) in &seen {
            match &c.outcome {
                Ok(report) => {
                    reports.verified.insert(node.clone(), Arc::clone(report));
                    reports.written.insert(node.clone(), c.written);
                }
                Err(reason) => *ignored.entry(reason).or_default() += 1,
            }
        }
        reports.ignored = ignored;
        // Only nodes still reporting stay cached.
        self.reports = seen;
        Ok(reports)
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
