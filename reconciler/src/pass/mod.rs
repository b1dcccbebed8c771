//! One reconcile pass in three stages: observe (git, the state branch,
//! the store, GitHub approvals), decide (`gitfleet_policy::pass::decide`,
//! pure: the `PassPlan`) and execute (`execute.rs`: the plan's writes in
//! order, the lease checked before each). A bad config or node never stops
//! the pass, and a pass can be killed at any point and rerun: the next one
//! decides again from what was written.

pub mod execute;
pub mod lease;
pub mod live;
pub mod observe;
pub mod owners;
pub mod rules;
pub mod timeline;
pub mod trigger;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use ed25519_dalek::SigningKey;
use gitfleet_policy::decommission::Removed;
use gitfleet_policy::mesh;
use gitfleet_policy::pass::{self as policy_pass, Builds, Current, PassError, PassPlan};
use gitfleet_policy::plan::{self, Observation};
use gitfleet_policy::rules::Rules;
use gitfleet_policy::FleetModel;
use gitfleet_schemas::keys;
use gitfleet_schemas::promotion::{promotions_path, Promotions};
use gitfleet_schemas::state;
use gitfleet_schemas::trust::{ChannelManifest, PublicKey};
use gitfleet_schemas::verify::verify_signed_by;
use gitfleet_schemas::{MeshFile, RolloutTarget};

use crate::git::{Mirror, StateFiles};
use crate::github::{GitHub, GitHubConfig};
use crate::pass::rules::RulesReader;
use gitfleet_io::store::{ETag, Fetch, Store};
use gitfleet_policy::preview::Side;
use observe::{CheckedCommit, Observed, Observer};

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("syncing the fleet repo")]
    Git(#[from] crate::git::GitError),
    #[error("talking to the object store")]
    Store(#[from] gitfleet_io::store::StoreError),
    #[error("connecting to GitHub")]
    GitHub(#[from] crate::github::GitHubError),
    #[error(transparent)]
    Pass(#[from] PassError),
    #[error("the leader lease ends at {until}; stopped writing for this pass")]
    LeaseLost { until: DateTime<Utc> },
    #[error("leader lease")]
    Lease(#[from] lease::LeaseError),
    #[error("signing the channel manifest of {environment}: {reason}")]
    Sign { environment: String, reason: String },
    #[error("{key} in the store holds other bytes than the bundle its name promises; it is named nowhere, and the pass stopped before writing state or manifests")]
    BundleConflict { key: String },
    #[error("observing the fleet")]
    Observe(#[from] observe::ObserveError),
    #[error("state branch {branch} holds no state, yet the store already serves this fleet ({key} is ours): starting over would take the rules from the spec branch's tip; point --state-branch or fleet.kdl's state-branch at the branch with the fleet's state, or remove channels/ from the store to start the fleet over")]
    StateMissing { branch: String, key: String },
    #[error("reading the rules in force")]
    Rules(#[from] rules::RulesReadError),
}

/// Whether a pass carries out its plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Execute,
    /// Observe and decide; write nothing.
    DryRun,
}

/// What a pass decided, from what it observed.
#[derive(Debug)]
pub struct Decided {
    pub plan: PassPlan,
    pub observed: Observed,
    /// The promotion files on the spec branch tip (GitHub only).
    promotions: PromotionFiles,
    /// The etag of each channel manifest observed: a publish replaces
    /// exactly the one the plan was decided over.
    manifest_etags: BTreeMap<String, ETag>,
    phases: Phases,
}

/// What one pass did, for logs, `--dry-run`, the pages and tests.
#[derive(Debug)]
pub struct Outcome {
    pub plan: PassPlan,
    /// What the pass read: with `plan.rollouts.state()`, the fleet view.
    pub observed: Observed,
    pub done: Done,
    /// How long each phase of the pass took, in order (see [`PHASES`]).
    pub phases: Vec<(&'static str, std::time::Duration)>,
}

/// How far a pass got with its plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Done {
    /// `--dry-run`: nothing was written.
    DryRun,
    /// Another replica holds the lease: nothing was written.
    Follower { leader: String },
    /// The plan was carried out.
    Wrote(Written),
}

/// The writes a pass made.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Written {
    /// Digests of bundles this pass created in the store.
    pub bundles_uploaded: Vec<String>,
    pub state_commit: Option<String>,
    /// `(environment, serial)` of each manifest published.
    pub manifests: Vec<(String, u64)>,
    /// When the lease this pass wrote under ends.
    pub lease_until: Option<DateTime<Utc>>,
}

impl Outcome {
    /// The replica that leads, when this one only followed.
    pub fn follower_of(&self) -> Option<&str> {
        match &self.done {
            Done::Follower { leader } => Some(leader),
            _ => None,
        }
    }

    pub fn written(&self) -> Option<&Written> {
        match &self.done {
            Done::Wrote(w) => Some(w),
            _ => None,
        }
    }
}

/// The phases of a pass, as `Outcome::phases` and `/metrics` name them.
pub const PHASES: [&str; 6] = ["observe", "plan", "bundles", "commit", "publish", "github"];

/// Times the phases of a pass.
#[derive(Debug)]
struct Phases {
    last: std::time::Instant,
    done: Vec<(&'static str, std::time::Duration)>,
}

impl Phases {
    fn start() -> Self {
        Phases {
            last: std::time::Instant::now(),
            done: Vec::with_capacity(PHASES.len()),
        }
    }

    /// `phase` ended now.
    fn end(&mut self, phase: &'static str) {
        let now = std::time::Instant::now();
        self.done.push((phase, now - self.last));
        self.last = now;
    }
}

pub struct Reconciler {
    /// Git, the store, and what the last pass read from them.
    pub observer: Observer,
    pub online_key: SigningKey,
    /// This replica's name in the leader lease.
    pub holder: String,
    pub lease_ttl: Duration,
    /// Bundle digests known to be in the store.
    stored: HashSet<String>,
    /// Bundle digests whose key holds other bytes: never named.
    refused: HashSet<String>,
    /// The last plan's bundles: the same inputs give the same bytes.
    builds: Builds,
    /// Config directory tree id -> the commit that made it so.
    source_commits: HashMap<git2::Oid, String>,
    /// (mesh, mesh file id, `nodes/` tree id) -> the commit that made the
    /// mesh so.
    mesh_source_commits: HashMap<(String, Option<git2::Oid>, Option<git2::Oid>), String>,
    /// GitHub, when configured: connected on the first pass (in the
    /// runtime), then kept.
    pub github: Option<GitHubConfig>,
    github_client: Option<GitHub>,
    /// The last spec branch commit looked at and its promotion files.
    promotions: Option<(git2::Oid, PromotionFiles)>,
    /// Rule files at the commits the rules in force come from.
    rules: RulesReader,
    /// The paths changes touch, for owners.
    touched: owners::Touched,
    /// (recorded commit, tip) -> the node files removed between them.
    removed_nodes: Option<((String, git2::Oid), Vec<Removed>)>,
    /// Pinned bundles found in the store, by digest (their bytes never
    /// change, so once found is found for good).
    pins: BTreeMap<String, gitfleet_schemas::trust::BundleRef>,
    /// Tells receivers of fleet.kdl's `notify` blocks what happened.
    pub notifier: crate::notify::Notifier,
    /// The rollouts' history for serve's pages, when kept
    /// ([`Reconciler::keep_timeline`]).
    timeline: Option<(
        timeline::Timeline,
        tokio::sync::watch::Sender<Arc<timeline::Timeline>>,
    )>,
}

/// What the promotion files at one spec branch commit say.
#[derive(Clone, Debug, Default)]
struct PromotionFiles {
    /// Environment -> the bytes of its promotion file.
    files: BTreeMap<String, Vec<u8>>,
    /// `(environment, commit)` -> the spec branch commit that brought the
    /// environment's promotion file asking for that commit: its pull
    /// request's reviews approve the commit there.
    brought: BTreeMap<(String, String), String>,
}

impl PromotionFiles {
    fn read(mirror: &Mirror, head: git2::Oid, rules: &Rules) -> PromotionFiles {
        let mut out = PromotionFiles::default();
        for (name, in_force) in rules.iter() {
            if in_force.approval_rule().is_none() {
                continue;
            }
            let name = &name.to_owned();
            let path = promotions_path(name);
            let bytes = match mirror.blob_at(head, &path) {
                Ok(Some(bytes)) => bytes,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(path = %path, error = %e, "cannot read the promotion file");
                    continue;
                }
            };
            match Promotions::parse(&bytes) {
                Some(file) if file.environment == *name => match mirror.last_change(head, &path) {
                    Ok(brought) => {
                        for p in file.rollouts.into_values() {
                            out.brought
                                .insert((name.clone(), p.source_commit), brought.to_string());
                        }
                    }
                    Err(e) => {
                        tracing::warn!(path = %path, error = %e, "cannot find the commit that brought the promotion file")
                    }
                },
                Some(_) => {
                    tracing::warn!(path = %path, "promotion file names another environment; ignored")
                }
                None => tracing::warn!(path = %path, "promotion file does not parse; ignored"),
            }
            out.files.insert(name.clone(), bytes);
        }
        out
    }
}

/// What GitHub approvals are asked about: the changes rollouts want, and
/// where they stand.
struct Asks<'a> {
    targets: &'a plan::Targets,
    state: &'a BTreeMap<String, state::RolloutState>,
    /// Rollout -> the source commit it wants.
    wanted: &'a BTreeMap<String, String>,
    /// `(environment, commit)` -> the commit that brought its promotion
    /// file.
    promoted: &'a BTreeMap<(String, String), String>,
}

impl std::fmt::Debug for Reconciler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reconciler")
            .field("stored", &self.stored.len())
            .finish_non_exhaustive()
    }
}

impl Reconciler {
    pub fn new(mirror: Mirror, store: Store, online_key: SigningKey, holder: String) -> Self {
        let notifier = crate::notify::Notifier::new(store.clone());
        let mut observer = Observer::new(mirror, store);
        observer.set_holder(&holder);
        Reconciler {
            notifier,
            timeline: None,
            observer,
            online_key,
            holder,
            lease_ttl: Duration::seconds(30),
            stored: HashSet::new(),
            refused: HashSet::new(),
            builds: Builds::default(),
            source_commits: HashMap::new(),
            mesh_source_commits: HashMap::new(),
            github: None,
            github_client: None,
            promotions: None,
            rules: RulesReader::default(),
            touched: owners::Touched::default(),
            removed_nodes: None,
            pins: BTreeMap::new(),
        }
    }

    /// Keep the rollouts' history from now on, advanced after each pass:
    /// what the receiver shows.
    pub fn keep_timeline(&mut self) -> tokio::sync::watch::Receiver<Arc<timeline::Timeline>> {
        let (tx, rx) = tokio::sync::watch::channel(Arc::default());
        self.timeline = Some((timeline::Timeline::default(), tx));
        rx
    }

    /// Read the state commits the pass made or saw into the timeline.
    fn advance_timeline(&mut self, o: &Outcome, now: DateTime<Utc>) {
        let Some((timeline, tx)) = self.timeline.as_mut() else {
            return;
        };
        let Some(fleet) = o.observed.checked.fleet() else {
            return;
        };
        match timeline.advance(&self.observer.mirror, fleet, now) {
            Ok(true) => {
                tx.send_replace(Arc::new(timeline.clone()));
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(error = %gitfleet_io::error_chain(&e), "cannot read the state branch's history for the pages")
            }
        }
    }

    /// One pass: observe, decide, and (unless `mode` is a dry run) execute.
    /// A failed pass is told to the notify receivers by the replica that
    /// led last.
    pub async fn pass(
        &mut self,
        now: DateTime<Utc>,
        mode: Mode,
    ) -> Result<Outcome, ReconcileError> {
        let result = self.pass_once(now, mode).await;
        if let (Mode::Execute, Err(e)) = (mode, &result) {
            let store = match e {
                ReconcileError::Store(_)
                | ReconcileError::Observe(observe::ObserveError::Store(_))
                | ReconcileError::Lease(lease::LeaseError::Store(_)) => {
                    Some(gitfleet_io::error_chain(e))
                }
                _ => None,
            };
            self.notifier.failed(store, now);
        }
        result
    }

    async fn pass_once(
        &mut self,
        now: DateTime<Utc>,
        mode: Mode,
    ) -> Result<Outcome, ReconcileError> {
        let before = self.observer.store.counts();
        if mode == Mode::Execute {
            // Liveness is this replica's own to share, leader or not, and
            // whether or not the rest of the pass goes well.
            if let Err(e) = self.observer.share_liveness(Utc::now()).await {
                tracing::warn!(error = %gitfleet_io::error_chain(&e), "cannot share the liveness heard over HTTP");
            }
        }
        let decided = self.decide(now).await?;
        self.observer.busy = decided.plan.rollouts.moving(None);
        let outcome = match mode {
            Mode::DryRun => Ok(Outcome {
                plan: decided.plan,
                observed: decided.observed,
                done: Done::DryRun,
                phases: decided.phases.done,
            }),
            Mode::Execute => {
                let outcome = self.execute(decided).await;
                if let Ok(o) = &outcome {
                    self.notify(o, now).await;
                }
                outcome
            }
        };
        if let Ok(o) = &outcome {
            self.advance_timeline(o, now);
        }
        log_store_requests(&self.observer.store.counts().since(&before));
        outcome
    }

    /// The notifier's round after a pass that wrote (a follower's
    /// forgets the ledger it held). Its failures are logged: telling
    /// people never stops the fleet.
    async fn notify(&mut self, o: &Outcome, now: DateTime<Utc>) {
        let written = match &o.done {
            Done::Wrote(w) => w,
            Done::Follower { .. } => return self.notifier.follow(),
            Done::DryRun => return,
        };
        let Some(until) = written.lease_until else {
            return;
        };
        let Some(fleet) = o.observed.checked.checked.model.fleet.as_ref() else {
            return;
        };
        let receivers = &fleet.doc.notify;
        let conditions = if crate::notify::Notifier::wants_conditions(receivers) {
            let view = o.observed.view(
                &o.plan.rollouts.state(),
                Some(&o.plan.rules.state),
                now,
                self.notifier.stale_after,
                None,
            );
            gitfleet_policy::notify::condition_notifications(&view)
        } else {
            Vec::new()
        };
        let input = crate::notify::RoundInput {
            fleet: &fleet.doc.name.value,
            receivers,
            conditions,
            until,
            now,
        };
        match self.notifier.round(&self.observer.mirror, input).await {
            Ok(round) if round != Default::default() => {
                tracing::info!(
                    queued = round.queued,
                    sending = round.sending,
                    "notifications"
                )
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %gitfleet_io::error_chain(&e), "notifications wait for the next pass")
            }
        }
    }

    /// Observe the fleet and decide the pass. Reads only.
    /// Look up the bundles node files pin that are not found yet: one
    /// HEAD request each (a pin of a bundle the store lacks costs one a
    /// pass until it is there or the pin goes).
    async fn find_pins(&mut self, model: &FleetModel) -> Result<(), ReconcileError> {
        for digest in gitfleet_policy::channel::pin_digests(model) {
            if self.pins.contains_key(&digest) {
                continue;
            }
            let Some(key) = keys::bundle(&digest) else {
                continue;
            };
            match self.observer.store.size(&key).await? {
                Some(length) => {
                    self.pins.insert(
                        digest.clone(),
                        gitfleet_schemas::trust::BundleRef { digest, length },
                    );
                }
                None => {
                    tracing::warn!(bundle = %digest, "a node file pins a bundle the store does not have: the node stays held on what it runs");
                }
            }
        }
        Ok(())
    }

    /// The node files removed between the commit `departed.json` records
    /// and `head` (none before there is a record). Each range is diffed
    /// once.
    fn removed_nodes(
        &mut self,
        state_files: &StateFiles,
        head: git2::Oid,
    ) -> Result<Vec<Removed>, ReconcileError> {
        let Some(from) = state_files
            .get(state::DEPARTED_PATH)
            .and_then(|b| serde_json::from_slice::<state::Departed>(b).ok())
            .map(|d| d.checked)
        else {
            return Ok(Vec::new());
        };
        let range = (from, head);
        if let Some((cached, removed)) = &self.removed_nodes {
            if *cached == range {
                return Ok(removed.clone());
            }
        }
        let files = self
            .observer
            .mirror
            .removed_files(&range.0, head, "nodes/")?
            .unwrap_or_else(|| {
                tracing::warn!(commit = %range.0, "departed.json names a commit the spec branch no longer has: node files removed before now are not looked for");
                Vec::new()
            });
        let removed: Vec<Removed> = files
            .iter()
            .filter_map(|(path, bytes)| {
                let text = std::str::from_utf8(bytes).ok()?;
                let Some(node) = gitfleet_schemas::NodeFile::decode(text).value else {
                    tracing::warn!(path = %path, "a node file's old version does not read as one: its node is not decommissioned");
                    return None;
                };
                Some(Removed {
                    id: node.id.value,
                    environment: node.environment.value,
                })
            })
            .collect();
        self.removed_nodes = Some((range, removed.clone()));
        Ok(removed)
    }

    pub async fn decide(&mut self, now: DateTime<Utc>) -> Result<Decided, ReconcileError> {
        let mut phases = Phases::start();
        let observed = self.observer.observe().await?;
        let head = observed.commit;
        let commit = head.to_string();
        let checked = Arc::clone(&observed.checked);
        let model = &checked.checked.model;
        for d in checked
            .checked
            .diagnostics
            .iter()
            .filter(|d| d.severity == gitfleet_schemas::Severity::Error)
        {
            tracing::warn!(file = %d.file, line = d.line, code = %d.code, message = %d.message, "fleet repo error");
        }
        let Some(fleet) = checked.fleet().map(str::to_owned) else {
            return Err(PassError::NoFleet { commit }.into());
        };
        let state_files = &observed.state_files;
        let removed_nodes = self.removed_nodes(state_files, head)?;
        self.find_pins(model).await?;

        // The rules in force (never the tip's own), and any change to them
        // the tip brings, which waits for what they ask.
        let in_force = self
            .rules
            .in_force(&self.observer.mirror, state_files, head, model, now)?;
        if in_force.first && state_files.is_empty() {
            self.refuse_a_second_start(model).await?;
        }
        let rule_changes = gitfleet_policy::rules::changes(&in_force.rules, model);
        let change_commit = if rule_changes.is_empty() {
            commit.clone()
        } else {
            self.rules.change_commit(&self.observer.mirror, head)?
        };
        let rule_asks = gitfleet_policy::rules::asks(&rule_changes, &change_commit);

        // What history says: the commit that last changed each config and
        // mesh rollouts target.
        let (config_changes, mesh_changes) = self.changes(head, model)?;

        // Approvals, judged under the rules in force; where this pass
        // changes the rules, judged again under the new ones.
        let promotions = match self.github {
            Some(_) => self.promotions(head, &in_force.rules).clone(),
            None => PromotionFiles::default(),
        };
        let rollout_state = policy_pass::parse_rollouts(state_files)?;
        let wanted: BTreeMap<String, String> = model
            .rollouts
            .iter()
            .filter_map(|(name, r)| {
                let c = match &r.doc.target.value {
                    RolloutTarget::Config(c) => config_changes.get(c),
                    RolloutTarget::Mesh(m) => mesh_changes.get(m),
                };
                Some((name.clone(), c?.clone()))
            })
            .collect();
        let asks = Asks {
            targets: &checked.targets,
            state: &rollout_state,
            wanted: &wanted,
            promoted: &promotions.brought,
        };
        let approvals = self
            .approvals(model, &in_force.rules, state_files, &asks, &rule_asks)
            .await;
        // Owners a change to the rules asks are those in force.
        let rule_owners = owners::judge(
            &owners::rules_asks(&rule_changes, &change_commit),
            Clone::clone,
            model,
            &in_force.rules,
            state_files,
            self.github_client().map(|g| &*g),
        )
        .await;
        let rules = gitfleet_policy::rules::decide(
            &in_force.record,
            &in_force.rules,
            model,
            &change_commit,
            &approvals,
            &rule_owners,
            now,
        );
        let approvals = if rules.adopted.is_empty() {
            approvals
        } else {
            let again = self
                .approvals(model, &rules.rules, state_files, &asks, &BTreeSet::new())
                .await;
            gitfleet_policy::approvals::under(&rules, approvals, again)
        };

        // Owners of what each rollout's change touches, under the rules
        // this pass decided (a change to owners was judged by the old ones
        // before it was adopted).
        let owner_asks = owners::rollout_asks(
            &mut self.touched,
            &self.observer.mirror,
            model,
            &rules.rules,
            &rollout_state,
            &wanted,
        );
        let rollout_owners = owners::judge(
            &owner_asks,
            |(_, env, commit)| (env.clone(), commit.clone()),
            model,
            &rules.rules,
            state_files,
            self.github_client().map(|g| &*g),
        )
        .await;

        let (manifests, manifest_etags) = self.manifests(&rules.rules).await?;
        for (env, in_force) in rules.rules.iter() {
            if let Some(Current::Ours(m)) = manifests.get(env) {
                let freshness = policy_pass::freshness(&in_force.environment);
                self.notifier.manifest(env, m.expires, freshness);
            }
        }
        phases.end("observe");
        let reports: HashMap<String, Observation> = observed
            .reports
            .iter()
            .map(|(node, r)| (node.clone(), Observation::from_report(r)))
            .collect();
        let plan = policy_pass::decide(
            &policy_pass::Observed {
                commit: &commit,
                checked: &checked.checked,
                targets: &checked.targets,
                config_changes: &config_changes,
                mesh_changes: &mesh_changes,
                builds: &self.builds,
                stored: &self.stored,
                refused: &self.refused,
                state_files,
                reports: &reports,
                heard: &observed.written,
                rules: &rules,
                rules_first_seen: in_force.first,
                approvals: &approvals,
                owners: &rollout_owners,
                manifests: &manifests,
                fleet: &fleet,
                removed_nodes: &removed_nodes,
                pins: &self.pins,
            },
            now,
        )?;
        for (path, reason) in &plan.approvals_ignored {
            tracing::warn!(path = %path, reason = %reason, "ignoring approval");
        }
        for (mesh, reason) in &plan.mesh_errors {
            tracing::error!(mesh = %mesh, reason = %reason, "cannot build the mesh; its last good bundle stays");
        }
        for env in &plan.foreign_manifests {
            tracing::error!(key = %keys::channel(env), "refusing to overwrite a channel manifest not signed by our online key");
        }
        // Only this pass's bundles are kept: the cache never grows past
        // what the repo has.
        self.builds = plan.builds.clone();
        phases.end("plan");
        Ok(Decided {
            plan,
            observed,
            promotions,
            manifest_etags,
            phases,
        })
    }

    /// The commit that last changed each config directory and each mesh
    /// (its file, or a member's node file) that a rollout targets.
    #[allow(clippy::type_complexity)]
    fn changes(
        &mut self,
        head: git2::Oid,
        model: &FleetModel,
    ) -> Result<(BTreeMap<String, String>, BTreeMap<String, String>), ReconcileError> {
        let mut configs = BTreeMap::new();
        let mut meshes = BTreeMap::new();
        for r in model.rollouts.values() {
            match &r.doc.target.value {
                RolloutTarget::Config(c) if !configs.contains_key(c) => {
                    let commit = self.source_commit(head, c)?;
                    configs.insert(c.clone(), commit);
                }
                RolloutTarget::Mesh(m) if !meshes.contains_key(m) => {
                    if let Some(located) = model.meshes.get(m) {
                        let commit =
                            self.mesh_source_commit(head, m, &located.path, &located.doc)?;
                        meshes.insert(m.clone(), commit);
                    }
                }
                _ => {}
            }
        }
        Ok((configs, meshes))
    }

    /// The channel manifest of each environment in the store: ours (it
    /// seeds the next serial), someone else's (left alone), or none.
    #[allow(clippy::type_complexity)]
    async fn manifests(
        &self,
        rules: &Rules,
    ) -> Result<(BTreeMap<String, Current>, BTreeMap<String, ETag>), ReconcileError> {
        let mut out = BTreeMap::new();
        let mut etags = BTreeMap::new();
        for (env, _) in rules.iter() {
            let key = keys::channel(env);
            let current = match self.observer.store.get_if_changed(&key, None).await? {
                Fetch::Found(o) => match current_manifest(&o.bytes, &self.online_key) {
                    Some(m) => {
                        etags.insert(env.to_owned(), o.etag);
                        Current::Ours(Box::new(m))
                    }
                    None => Current::Foreign,
                },
                Fetch::Missing | Fetch::NotModified => Current::Missing,
            };
            out.insert(env.to_owned(), current);
        }
        Ok((out, etags))
    }

    /// The GitHub client, connected on first use; a failed connect is
    /// logged and tried again next pass, and the pass goes on without it.
    fn github_client(&mut self) -> Option<&mut GitHub> {
        if self.github_client.is_none() {
            if let Some(config) = &self.github {
                match config.connect() {
                    Ok(gh) => self.github_client = Some(gh),
                    Err(e) => {
                        tracing::warn!(error = %gitfleet_io::error_chain(&e), "cannot connect to GitHub; going on without it")
                    }
                }
            }
        }
        self.github_client.as_mut()
    }

    /// Publish a plan preview for every open pull request head that has
    /// none yet. A pull request that cannot be previewed is logged and
    /// tried again next pass; it never fails the pass.
    async fn previews(&mut self, tip: git2::Oid, base: &CheckedCommit, rules: &Rules) {
        let Some(gh) = self.github_client.as_mut() else {
            return;
        };
        let pulls = match gh.pulls_to_preview().await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list pull requests to preview");
                return;
            }
        };
        let mirror = &self.observer.mirror;
        let in_force = rules.owners();
        for pull in pulls {
            let (number, head) = (pull.number, pull.head.clone());
            let mut head_oid = None;
            let files = match mirror.fetch_pull(number) {
                Ok(Some(oid)) if oid.to_string() == head => {
                    head_oid = Some(oid);
                    mirror.files_at(oid)
                }
                Ok(_) => {
                    tracing::info!(pull = number, head = %head, "the pull request's head is not fetchable yet; trying again later");
                    gh.preview_failed(&head);
                    continue;
                }
                Err(e) => Err(e),
            };
            let files = match files {
                Ok(f) => f,
                Err(e) => {
                    tracing::warn!(pull = number, error = %e, "cannot read the pull request's head; trying again later");
                    gh.preview_failed(&head);
                    continue;
                }
            };
            let checked = gitfleet_policy::check(&files);
            let targets = plan::Targets::from_model(&checked.model);
            // What it touches, from where it branched, and which owners
            // already approved its head.
            let (mut paths, mut approved) = (Vec::new(), Vec::new());
            if let (false, Some(oid)) = (in_force.is_empty(), head_oid) {
                let touched = mirror.merge_base(tip, oid).and_then(|b| {
                    mirror.changed_paths(b.map(|b| b.to_string()).as_deref(), &head, &[])
                });
                match touched {
                    Ok(p) => paths = p,
                    Err(e) => {
                        tracing::warn!(pull = number, error = %e, "cannot read the paths the pull request touches");
                        gh.preview_failed(&head);
                        continue;
                    }
                }
                let needs: Vec<_> =
                    gitfleet_policy::owners::needed(&in_force, paths.iter().map(String::as_str))
                        .into_iter()
                        .cloned()
                        .collect();
                if !needs.is_empty() {
                    match gh.owners_of_pull(&pull, &needs).await {
                        Ok(a) => approved = a,
                        Err(e) => {
                            tracing::warn!(pull = number, error = %e, "cannot read the pull request's reviews");
                            gh.preview_failed(&head);
                            continue;
                        }
                    }
                }
            }
            let preview = gitfleet_policy::preview::preview(
                Side {
                    model: &base.checked.model,
                    diagnostics: &base.checked.diagnostics,
                    targets: &base.targets,
                },
                Side {
                    model: &checked.model,
                    diagnostics: &checked.diagnostics,
                    targets: &targets,
                },
                rules,
                gitfleet_policy::preview::PullOwners {
                    paths: &paths,
                    approved: &approved,
                },
            );
            match gh.publish_preview(&head, &preview).await {
                Ok(()) => {
                    tracing::info!(pull = number, head = %head, conclusion = preview.conclusion, "published the plan preview")
                }
                Err(e) => {
                    tracing::warn!(pull = number, error = %e, "cannot publish the plan preview; trying again later");
                    gh.preview_failed(&head);
                }
            }
        }
    }

    /// The commit that made mesh `name` what it is at `head`: the last
    /// commit that changed its mesh file, or a node file that is a member
    /// on either side of the change (or cannot be read, so might be one).
    /// A commit that edits a node outside the mesh leaves the mesh
    /// bundle's bytes, and digest, alone.
    fn mesh_source_commit(
        &mut self,
        head: git2::Oid,
        name: &str,
        path: &str,
        mesh: &MeshFile,
    ) -> Result<String, ReconcileError> {
        let key = (
            name.to_owned(),
            self.observer.mirror.dir_id(head, path)?,
            self.observer.mirror.dir_id(head, "nodes")?,
        );
        if let Some(c) = self.mesh_source_commits.get(&key) {
            return Ok(c.clone());
        }
        let c = self
            .observer
            .mirror
            .last_change_where(head, path, "nodes", |file, old, new| {
                // Only `nodes/<id>.kdl` are node files.
                !file.contains('/') && file.ends_with(".kdl") && mesh::touches(mesh, old, new)
            })?
            .to_string();
        self.mesh_source_commits.insert(key, c.clone());
        Ok(c)
    }

    fn source_commit(&mut self, head: git2::Oid, config: &str) -> Result<String, ReconcileError> {
        let dir = format!("configs/{config}");
        let Some(id) = self.observer.mirror.dir_id(head, &dir)? else {
            return Ok(head.to_string());
        };
        if let Some(c) = self.source_commits.get(&id) {
            return Ok(c.clone());
        }
        let c = self.observer.mirror.last_change(head, &dir)?.to_string();
        self.source_commits.insert(id, c.clone());
        Ok(c)
    }

    /// The `(environment, commit)` pairs approved under `rules`: signed
    /// approvals on the state branch, and (with GitHub) reviews of the
    /// pull requests that brought the changes `asks` and `rule_asks` name.
    async fn approvals(
        &mut self,
        model: &FleetModel,
        rules: &Rules,
        state_files: &StateFiles,
        asks: &Asks<'_>,
        rule_asks: &BTreeSet<(String, String)>,
    ) -> BTreeSet<(String, String)> {
        let mut approvals = gitfleet_policy::approvals::count(model, rules, state_files).approved;
        if let Some(gh) = self.github_client() {
            let asked = gh.approvals(
                rules,
                asks.targets,
                asks.state,
                asks.wanted,
                rule_asks,
                asks.promoted,
            );
            match tokio::time::timeout(GITHUB_BUDGET, asked).await {
                Ok(approved) => approvals.extend(approved),
                Err(_) => tracing::warn!(
                    seconds = GITHUB_BUDGET.as_secs(),
                    "GitHub approvals took too long; going on without them"
                ),
            }
        }
        approvals
    }

    /// A fleet is new when its state branch is empty; but if the store
    /// already holds a channel manifest our key signed, the state was lost
    /// or the state branch switched (`state-branch` of fleet.kdl is read
    /// from the tip), and starting over would take the rules from the very
    /// commit they should judge.
    async fn refuse_a_second_start(&self, model: &FleetModel) -> Result<(), ReconcileError> {
        for env in &model.environments {
            let key = keys::channel(&env.name.value);
            if let Fetch::Found(o) = self.observer.store.get_if_changed(&key, None).await? {
                if current_manifest(&o.bytes, &self.online_key).is_some() {
                    return Err(ReconcileError::StateMissing {
                        branch: self.observer.mirror.state_branch().to_owned(),
                        key,
                    });
                }
            }
        }
        Ok(())
    }

    /// The promotion files at `head` (`promotions/<env>.json` of each
    /// environment that requires approvals), read once per spec branch
    /// commit: history is walked only when the branch moves.
    fn promotions(&mut self, head: git2::Oid, rules: &Rules) -> &PromotionFiles {
        if self.promotions.as_ref().is_none_or(|(at, _)| *at != head) {
            let files = PromotionFiles::read(&self.observer.mirror, head, rules);
            self.promotions = Some((head, files));
        }
        &self.promotions.as_ref().expect("just read").1
    }
}

/// Our own last manifest: it seeds the next serial, so it counts only when
/// our online key signed it (the store is untrusted).
fn current_manifest(bytes: &[u8], online: &SigningKey) -> Option<ChannelManifest> {
    let ours = PublicKey(online.verifying_key().to_bytes());
    verify_signed_by::<ChannelManifest>(bytes, &ours)
        .ok()
        .map(|m| (*m).clone())
}

/// Run passes until `stop` turns true: one at once, then one every
/// `interval`, and one as soon as `trigger` fires (a watched ref moved, a
/// webhook came in), but no sooner than MIN_GAP after the last one began.
/// A trigger only makes the next pass come sooner: every
/// pass re-reads git. A failed pass is logged and the loop goes on; each
/// outcome is handed to `on_pass`, with how long the pass took.
pub async fn run_passes(
    reconciler: &mut Reconciler,
    interval: std::time::Duration,
    mode: Mode,
    mut trigger: tokio::sync::mpsc::Receiver<()>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    mut on_pass: impl FnMut(Result<&Outcome, &ReconcileError>, std::time::Duration),
) {
    let mut triggers_open = true;
    while !*stop.borrow() {
        let started = std::time::Instant::now();
        let result = reconciler.pass(Utc::now(), mode).await;
        match &result {
            Ok(_) => {}
            Err(e) => {
                tracing::error!(error = %gitfleet_io::error_chain(e), "reconcile pass failed; retrying next interval")
            }
        }
        let took = started.elapsed();
        tracing::debug!(elapsed_ms = took.as_millis() as u64, "reconcile pass done");
        on_pass(result.as_ref(), took);
        let mut triggered = false;
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            t = trigger.recv(), if triggers_open => {
                // A closed trigger leaves polling.
                triggers_open = t.is_some();
                triggered = t.is_some();
            }
            _ = stop.wait_for(|s| *s) => {}
        }
        if triggered {
            tracing::debug!("triggered");
            // A flood of triggers (webhooks, pushes) runs passes at most
            // every MIN_GAP; the ones in between coalesce.
            let wait = MIN_GAP.saturating_sub(started.elapsed());
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                _ = stop.wait_for(|s| *s) => {}
            }
        }
    }
}

/// What a pass cost in store requests: at info when it did more than list
/// (something changed), at debug otherwise.
fn log_store_requests(c: &gitfleet_io::metrics::StoreCount) {
    macro_rules! log {
        ($level:ident) => {
            tracing::$level!(
                list = c.list,
                get = c.get,
                get_not_modified = c.get_not_modified,
                put = c.put,
                put_conditional = c.put_conditional,
                delete = c.delete,
                bytes_in = c.bytes_in,
                bytes_out = c.bytes_out,
                "store requests this pass"
            )
        };
    }
    if c.requests() > c.list {
        log!(info);
    } else {
        log!(debug);
    }
}

/// How long a pass waits for GitHub in each of its GitHub steps.
pub(crate) const GITHUB_BUDGET: std::time::Duration = std::time::Duration::from_secs(60);

/// The least time from the start of one pass to the start of a triggered
/// next one.
const MIN_GAP: std::time::Duration = std::time::Duration::from_millis(200);

/// [`run_passes`] on a thread of its own (git2 blocks), for commands that
/// serve or simulate beside the reconciler. Join it after `stop` turns
/// true.
pub fn spawn_passes(
    mut reconciler: Reconciler,
    interval: std::time::Duration,
    trigger: tokio::sync::mpsc::Receiver<()>,
    stop: tokio::sync::watch::Receiver<bool>,
    on_pass: impl FnMut(Result<&Outcome, &ReconcileError>, std::time::Duration) + Send + 'static,
) -> anyhow::Result<std::thread::JoinHandle<anyhow::Result<()>>> {
    use anyhow::Context as _;
    std::thread::Builder::new()
        .name("reconciler".to_owned())
        .spawn(move || -> anyhow::Result<()> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the reconciler's runtime")?;
            runtime.block_on(run_passes(
                &mut reconciler,
                interval,
                Mode::Execute,
                trigger,
                stop,
                on_pass,
            ));
            Ok(())
        })
        .context("starting the reconciler thread")
}
