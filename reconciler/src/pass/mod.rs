//! One reconcile pass: git → check → bundles → plan → state commit → signed
//! channel manifests. Every step's outcome is a value; a bad config or node
//! never stops the pass, and a pass can be killed at any point and rerun.
//!
//! Order matters for crash safety: bundles are uploaded before anything
//! names them, and the state commit lands before the manifests derived from
//! it, so a restart re-derives the same manifests from git.

pub mod lease;
pub mod observe;
pub mod rules;
pub mod trigger;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use ed25519_dalek::SigningKey;
use gitfleet_policy::bundle::{self, Built};
use gitfleet_policy::mesh::{self, Allocation, MeshBuild};
use gitfleet_policy::plan::{self, Desired, Inputs, Observation, Plan};
use gitfleet_policy::rules::{Rules, RulesPlan};
use gitfleet_policy::{channel, Checked, FleetModel};
use gitfleet_schemas::keys;
use gitfleet_schemas::promotion::{promotions_path, Promotions};
use gitfleet_schemas::state::{self, MeshAllocation, RULES_PATH};
use gitfleet_schemas::trust::{ChannelManifest, Document, PublicKey};
use gitfleet_schemas::verify::verify_signed_by;
use gitfleet_schemas::{Diagnostic, MeshFile, RolloutTarget, Severity};

use crate::git::{Author, Mirror, StateCommit, StateFiles};
use crate::github::{GitHub, GitHubConfig};
use crate::pass::rules::RulesReader;
use gitfleet_io::store::{Create, Fetch, Store, Update};
use gitfleet_policy::preview::Side;
use lease::LeaseOutcome;
use observe::{CheckedCommit, Observed, Observer};

/// Default freshness of channel manifests when the environment sets none.
const DEFAULT_FRESHNESS_SECONDS: i64 = 3600;

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("syncing the fleet repo")]
    Git(#[from] crate::git::GitError),
    #[error("talking to the object store")]
    Store(#[from] gitfleet_io::store::StoreError),
    #[error("connecting to GitHub")]
    GitHub(#[from] crate::github::GitHubError),
    #[error("{file}:{line} at {commit}: {message}; state and manifests left as they are")]
    FleetDocument {
        commit: String,
        file: String,
        line: u32,
        message: String,
    },
    #[error("fleet.kdl could not be read at {commit}; nothing was changed")]
    NoFleet { commit: String },
    #[error("the leader lease ends at {until}; stopped writing for this pass")]
    LeaseLost { until: DateTime<Utc> },
    #[error("leader lease")]
    Lease(#[from] lease::LeaseError),
    #[error("signing the channel manifest of {environment}: {reason}")]
    Sign { environment: String, reason: String },
    #[error("observing the fleet")]
    Observe(#[from] observe::ObserveError),
    #[error("state branch {branch} holds no state, yet the store already serves this fleet ({key} is ours): starting over would take the rules from the spec branch's tip; point --state-branch or fleet.kdl's state-branch at the branch with the fleet's state, or remove channels/ from the store to start the fleet over")]
    StateMissing { branch: String, key: String },
    #[error("reading the rules in force")]
    Rules(#[from] rules::RulesReadError),
    #[error("state file {path} on the state branch is not valid")]
    State {
        path: String,
        #[source]
        source: serde_json::Error,
    },
}

/// What one pass did, for logs, `--dry-run` and tests.
#[derive(Debug)]
pub struct Outcome {
    pub commit: String,
    pub errors: usize,
    pub bundles_uploaded: Vec<String>,
    pub plan: Plan,
    /// The rules in force from this pass on, per environment, with any
    /// change to them that waits.
    pub rules: RulesPlan,
    /// Tunnel addresses handed out or freed, one line each.
    pub allocations: Vec<String>,
    pub state_commit: Option<String>,
    pub manifests: Vec<(String, u64)>,
    pub reports_ignored: BTreeMap<&'static str, usize>,
    /// Approvals on the state branch that did not count.
    pub approvals_ignored: usize,
    /// Set when another replica holds the lease, so this pass wrote nothing.
    pub follower_of: Option<String>,
    /// What the pass read: with `plan.state()`, the fleet view.
    pub observed: Observed,
    /// How long each phase of the pass took, in order (see [`PHASES`]).
    pub phases: Vec<(&'static str, std::time::Duration)>,
}

/// The phases of a pass, as `Outcome::phases` and `/metrics` name them.
pub const PHASES: [&str; 6] = ["observe", "bundles", "plan", "commit", "publish", "github"];

/// Times the phases of a pass.
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
    uploaded: HashSet<String>,
    /// Config directory tree id -> the commit that made it so.
    source_commits: HashMap<git2::Oid, String>,
    /// (mesh, mesh file id, `nodes/` tree id) -> the commit that made the
    /// mesh so.
    mesh_source_commits: HashMap<(String, Option<git2::Oid>, Option<git2::Oid>), String>,
    /// Mesh -> its last build, with the source commit and the previous
    /// allocation it was built from: the same two give the same build.
    mesh_builds: HashMap<String, (String, Allocation, MeshBuild)>,
    /// (config, source commit) -> its bundle, for the configs of the last
    /// pass: the same two give the same bytes.
    bundles: HashMap<(String, String), Built>,
    /// GitHub, when configured: connected on the first pass (in the
    /// runtime), then kept.
    pub github: Option<GitHubConfig>,
    github_client: Option<GitHub>,
    /// The last spec branch commit looked at and its promotion files.
    promotions: Option<(git2::Oid, PromotionFiles)>,
    /// Rule files at the commits the rules in force come from.
    rules: RulesReader,
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

/// A mesh allocation to commit with the rollout state.
#[derive(Debug)]
struct AllocationChange {
    bytes: Vec<u8>,
    /// What changed, one line each, for the commit message.
    lines: Vec<String>,
}

impl std::fmt::Debug for Reconciler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reconciler")
            .field("uploaded", &self.uploaded.len())
            .finish_non_exhaustive()
    }
}

impl Reconciler {
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
    async fn previews(&mut self, base: &CheckedCommit, rules: &Rules) {
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
        for (number, head) in pulls {
            let files = match mirror.fetch_pull(number) {
                Ok(Some(oid)) if oid.to_string() == head => mirror.files_at(oid),
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

    pub fn new(mirror: Mirror, store: Store, online_key: SigningKey, holder: String) -> Self {
        Reconciler {
            observer: Observer::new(mirror, store),
            online_key,
            holder,
            lease_ttl: Duration::seconds(30),
            uploaded: HashSet::new(),
            source_commits: HashMap::new(),
            mesh_source_commits: HashMap::new(),
            mesh_builds: HashMap::new(),
            bundles: HashMap::new(),
            github: None,
            github_client: None,
            promotions: None,
            rules: RulesReader::default(),
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

    /// Put `built` in the store, create-only, unless it is known to be
    /// there. False when other bytes sit under its digest: then nothing may
    /// name it.
    async fn upload(
        &mut self,
        built: &Built,
        dry_run: bool,
        uploaded: &mut Vec<String>,
    ) -> Result<bool, ReconcileError> {
        let Some(key) = built.reference.object_key() else {
            return Ok(false);
        };
        if self.uploaded.contains(&built.reference.digest) {
            return Ok(true);
        }
        if !dry_run {
            match self
                .observer
                .store
                .put_create(&key, built.bytes.clone().into())
                .await?
            {
                Create::Created => uploaded.push(built.reference.digest.clone()),
                Create::Exists { identical: true } => {}
                Create::Exists { identical: false } => {
                    // Content-addressed: other bytes under this name
                    // were not written by a reconciler.
                    tracing::error!(key = %key, "a different object sits under this bundle's digest; not naming it in any manifest");
                    return Ok(false);
                }
            }
        }
        self.uploaded.insert(built.reference.digest.clone());
        Ok(true)
    }

    /// The bundle of mesh `name` (for rollout `rollout`), on the allocation
    /// at the tip of the state branch, uploaded. A changed allocation goes
    /// into `allocations`, to be committed with the rollout state. `None`
    /// (logged) when the mesh cannot be built now: the rollout keeps its
    /// last good bundle.
    #[allow(clippy::too_many_arguments)]
    async fn mesh_desired(
        &mut self,
        head: git2::Oid,
        model: &FleetModel,
        diagnostics: &[Diagnostic],
        state_files: &StateFiles,
        rollout: &str,
        name: &str,
        dry_run: bool,
        uploaded: &mut Vec<String>,
        allocations: &mut BTreeMap<String, AllocationChange>,
    ) -> Result<Option<Desired>, ReconcileError> {
        let Some(located) = model.meshes.get(name) else {
            tracing::warn!(rollout, mesh = %name, "mesh file is missing or unreadable; keeping the last good bundle");
            return Ok(None);
        };
        let path = state::allocation_path(name);
        let previous = match state_files.get(&path) {
            None => Allocation::new(),
            Some(bytes) => {
                let state: MeshAllocation =
                    serde_json::from_slice(bytes).map_err(|source| ReconcileError::State {
                        path: path.clone(),
                        source,
                    })?;
                mesh::from_state(&state)
            }
        };
        if let Some(d) = mesh::blocking(model, diagnostics, name, &previous) {
            tracing::warn!(rollout, mesh = %name, file = %d.file, line = d.line, code = %d.code, "the mesh or one of its members has errors; keeping the last good bundle");
            return Ok(None);
        }
        let source_commit = self.mesh_source_commit(head, name, &located.path, &located.doc)?;
        let build = match self.mesh_builds.get(name) {
            Some((commit, prev, build)) if *commit == source_commit && *prev == previous => {
                build.clone()
            }
            _ => match mesh::build(model, name, &located.doc, &previous, &source_commit) {
                Ok(build) => {
                    tracing::info!(mesh = %name, members = build.allocation.len(), source_commit = %source_commit, digest = %build.built.reference.digest, "mesh bundle built");
                    self.mesh_builds.insert(
                        name.to_owned(),
                        (source_commit.clone(), previous.clone(), build.clone()),
                    );
                    build
                }
                Err(e) => {
                    tracing::warn!(rollout, mesh = %name, error = %e, "cannot build the mesh bundle; keeping the last good bundle");
                    return Ok(None);
                }
            },
        };
        if !self.upload(&build.built, dry_run, uploaded).await? {
            return Ok(None);
        }
        let mut bytes = serde_json::to_vec_pretty(&build.state).unwrap_or_default();
        bytes.push(b'\n');
        if state_files.get(&path) != Some(&bytes) {
            let mut lines = build.changes.clone();
            if lines.is_empty() {
                lines.push(format!("mesh {name}: allocation record rewritten"));
            }
            allocations.insert(path, AllocationChange { bytes, lines });
        }
        Ok(Some(Desired {
            bundle: build.built.reference,
            source_commit,
        }))
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

    /// One full pass. With `dry_run`, nothing is uploaded, committed or
    /// published; the plan is still computed from real inputs.
    pub async fn once(
        &mut self,
        now: DateTime<Utc>,
        dry_run: bool,
    ) -> Result<Outcome, ReconcileError> {
        let mut phases = Phases::start();
        let observed = self.observer.observe().await?;
        phases.end("observe");
        let commit = observed.commit.to_string();
        let head = observed.commit;
        let checked = Arc::clone(&observed.checked);
        let Checked { model, diagnostics } = &checked.checked;
        let errors = diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .count();
        for d in diagnostics.iter().filter(|d| d.severity == Severity::Error) {
            tracing::warn!(file = %d.file, line = d.line, code = %d.code, message = %d.message, "fleet repo error");
        }
        let Some(fleet) = checked.fleet().map(str::to_owned) else {
            return Err(ReconcileError::NoFleet { commit });
        };
        // Errors in the fleet-wide documents could make every rollout look
        // gone; plan nothing rather than commit a wiped state.
        if let Some(d) = diagnostics.iter().find(|d| {
            d.severity == Severity::Error && (d.file == "fleet.kdl" || d.file == "environments.kdl")
        }) {
            return Err(ReconcileError::FleetDocument {
                commit,
                file: d.file.clone(),
                line: d.line,
                message: d.message.clone(),
            });
        }

        // Rollout state and mesh allocations, from the tip of the state
        // branch.
        let state_files = &observed.state_files;

        // Bundles for every valid config or mesh a rollout targets.
        let mut desired = BTreeMap::new();
        let mut used = HashMap::new();
        let mut bundles_uploaded = Vec::new();
        let mut allocations: BTreeMap<String, AllocationChange> = BTreeMap::new();
        // Mesh -> its bundle this pass, for rollouts that share a mesh.
        let mut meshes: BTreeMap<String, Option<Desired>> = BTreeMap::new();
        for (name, r) in &model.rollouts {
            let config = match &r.doc.target.value {
                RolloutTarget::Config(config) => config,
                RolloutTarget::Mesh(mesh_name) => {
                    let d = match meshes.get(mesh_name) {
                        Some(d) => d.clone(),
                        None => {
                            let d = self
                                .mesh_desired(
                                    head,
                                    model,
                                    diagnostics,
                                    state_files,
                                    name,
                                    mesh_name,
                                    dry_run,
                                    &mut bundles_uploaded,
                                    &mut allocations,
                                )
                                .await?;
                            meshes.insert(mesh_name.clone(), d.clone());
                            d
                        }
                    };
                    if let Some(d) = d {
                        desired.insert(name.clone(), d);
                    }
                    continue;
                }
            };
            let Some(dir) = model.configs.get(config).filter(|d| d.sentinel.is_some()) else {
                tracing::warn!(rollout = %name, config = %config, "config is invalid; keeping the last good bundle");
                continue;
            };
            // The commit that made this config what it is: an unrelated
            // commit must not change the bundle's bytes.
            let source_commit = self.source_commit(head, config)?;
            let key = (config.clone(), source_commit.clone());
            let built = match self.bundles.get(&key) {
                Some(b) => b.clone(),
                None => match bundle::sentinel_config(dir, &source_commit) {
                    Ok(b) => b,
                    Err(e) => {
                        tracing::warn!(rollout = %name, config = %config, error = %e, "cannot bundle config; keeping the last good bundle");
                        continue;
                    }
                },
            };
            used.insert(key.clone(), built.clone());
            if !self.upload(&built, dry_run, &mut bundles_uploaded).await? {
                continue;
            }
            desired.insert(
                name.clone(),
                Desired {
                    bundle: built.reference,
                    source_commit,
                },
            );
        }

        // Only this pass's bundles are kept: the cache never grows past
        // the configs the repo has.
        self.bundles = used;
        phases.end("bundles");
        if !dry_run {
            gitfleet_io::faults::point("after-bundles");
        }
        let state = observed.state()?;
        let reports: HashMap<String, Observation> = observed
            .reports
            .iter()
            .map(|(node, r)| (node.clone(), Observation::from_report(r)))
            .collect();
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
        let promotions = match self.github {
            Some(_) => self.promotions(head, &in_force.rules).clone(),
            None => PromotionFiles::default(),
        };
        let wanted: BTreeMap<String, String> = desired
            .iter()
            .map(|(name, d)| (name.clone(), d.source_commit.clone()))
            .collect();
        let asks = Asks {
            targets: &checked.targets,
            state: &state,
            wanted: &wanted,
            promoted: &promotions.brought,
        };
        let (approvals, approvals_ignored) = self
            .approvals(model, &in_force.rules, state_files, &asks, &rule_asks)
            .await;
        let rules = gitfleet_policy::rules::decide(
            &in_force.record,
            &in_force.rules,
            model,
            &change_commit,
            &approvals,
            now,
        );
        // Approvals were judged under the rules before this pass; where it
        // changed them, they are judged again under the new ones.
        let approvals = if rules.adopted.is_empty() {
            approvals
        } else {
            let (again, _) = self
                .approvals(model, &rules.rules, state_files, &asks, &BTreeSet::new())
                .await;
            gitfleet_policy::approvals::under(&rules, approvals, again)
        };
        let plan = plan::plan(&Inputs {
            model,
            targets: &checked.targets,
            desired: &desired,
            state: &state,
            reports: &reports,
            approvals: &approvals,
            rules: &rules.rules,
            now,
        });
        phases.end("plan");

        let mut outcome = Outcome {
            commit: commit.clone(),
            errors,
            bundles_uploaded,
            plan,
            rules,
            allocations: allocations
                .values()
                .flat_map(|a| a.lines.iter().cloned())
                .collect(),
            state_commit: None,
            manifests: Vec::new(),
            reports_ignored: observed.reports_ignored.clone(),
            approvals_ignored,
            follower_of: None,
            observed,
            phases: Vec::new(),
        };
        if dry_run {
            outcome.phases = phases.done;
            return Ok(outcome);
        }
        // The lease is taken with the real clock just before writing, and
        // checked again before each write: a pass that stalled past its
        // lease stops writing instead of racing the new leader.
        let until = match lease::acquire(
            &self.observer.store,
            &self.holder,
            self.lease_ttl,
            Utc::now(),
        )
        .await?
        {
            LeaseOutcome::Leader { until, .. } => until,
            LeaseOutcome::Follower { holder, until } => {
                tracing::info!(leader = %holder, until = %until, "another replica leads; not writing");
                outcome.follower_of = Some(holder);
                outcome.phases = phases.done;
                return Ok(outcome);
            }
        };

        // State first: manifests are derived from committed state. A new
        // mesh allocation lands in the same commit as the rollout state
        // that names the bundle built from it.
        let mut changes = state_changes(&outcome.plan, &outcome.observed.state_files);
        for (path, a) in allocations {
            changes.insert(path, Some(a.bytes));
        }
        let rules_bytes = json_file(&outcome.rules.state);
        if outcome.observed.state_files.get(RULES_PATH) != Some(&rules_bytes) {
            changes.insert(RULES_PATH.to_owned(), Some(rules_bytes));
        }
        if !changes.is_empty() {
            still_leader(until)?;
            let rollout_lines = outcome.plan.changes();
            let mut rule_lines = outcome.rules.changes.clone();
            if in_force.first {
                rule_lines.insert(
                    0,
                    format!(
                        "rules of every environment first seen at {}",
                        &commit[..12.min(commit.len())]
                    ),
                );
            }
            let mut summary = Vec::new();
            if !rollout_lines.is_empty()
                || (outcome.allocations.is_empty() && rule_lines.is_empty())
            {
                summary.push(format!("{} rollout update(s)", rollout_lines.len()));
            }
            if !rule_lines.is_empty() {
                summary.push(format!("{} rules update(s)", rule_lines.len()));
            }
            if !outcome.allocations.is_empty() {
                summary.push(format!(
                    "{} mesh address change(s)",
                    outcome.allocations.len()
                ));
            }
            let mut message = format!(
                "gitfleet: {} at {}\n\n",
                summary.join(", "),
                &commit[..12.min(commit.len())]
            );
            for line in rule_lines
                .iter()
                .chain(&rollout_lines)
                .chain(&outcome.allocations)
            {
                message.push_str(line);
                message.push('\n');
            }
            if let StateCommit::Committed { oid } =
                self.observer
                    .mirror
                    .commit_state(&changes, &message, &Author::default())?
            {
                outcome.state_commit = Some(oid.to_string());
                gitfleet_io::faults::point("after-commit");
            }
        }
        phases.end("commit");
        outcome.manifests = self
            .publish(
                model,
                &outcome.rules.rules,
                &fleet,
                &outcome.plan,
                now,
                until,
            )
            .await?;
        phases.end("publish");
        if let Some(gh) = self.github_client.as_mut() {
            let state = outcome.plan.state();
            if tokio::time::timeout(GITHUB_BUDGET, gh.report(model, &state))
                .await
                .is_err()
            {
                tracing::warn!(
                    seconds = GITHUB_BUDGET.as_secs(),
                    "posting commit statuses took too long; the next pass goes on"
                );
            }
            let asks = gitfleet_policy::promotion::wanted(&outcome.rules.rules, &state);
            let promote = gh.promote(
                &outcome.rules.rules,
                &self.observer.mirror,
                head,
                &promotions.files,
                &asks,
            );
            if tokio::time::timeout(GITHUB_BUDGET, promote).await.is_err() {
                tracing::warn!(
                    seconds = GITHUB_BUDGET.as_secs(),
                    "promotion pull requests took too long; the next pass goes on"
                );
            }
            if tokio::time::timeout(GITHUB_BUDGET, self.previews(&checked, &outcome.rules.rules))
                .await
                .is_err()
            {
                tracing::warn!(
                    seconds = GITHUB_BUDGET.as_secs(),
                    "plan previews took too long; the next pass goes on"
                );
            }
            phases.end("github");
        }
        outcome.phases = phases.done;
        Ok(outcome)
    }

    /// The `(environment, commit)` pairs approved under `rules`: signed
    /// approvals on the state branch, and (with GitHub) reviews of the
    /// pull requests that brought the changes `asks` and `rule_asks` name.
    /// Also how many signed approvals did not count.
    async fn approvals(
        &mut self,
        model: &FleetModel,
        rules: &Rules,
        state_files: &StateFiles,
        asks: &Asks<'_>,
        rule_asks: &BTreeSet<(String, String)>,
    ) -> (BTreeSet<(String, String)>, usize) {
        let counted = gitfleet_policy::approvals::count(model, rules, state_files);
        for (path, reason) in &counted.ignored {
            tracing::warn!(path = %path, reason = %reason, "ignoring approval");
        }
        let mut approvals = counted.approved;
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
        (approvals, counted.ignored.len())
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

    /// Sign and publish every environment's manifest that changed or is
    /// due for re-signing. Serials grow from what the store holds.
    async fn publish(
        &self,
        model: &FleetModel,
        rules: &Rules,
        fleet: &str,
        plan: &Plan,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<Vec<(String, u64)>, ReconcileError> {
        let mut written = Vec::new();
        for (name, in_force) in rules.iter() {
            let env = &in_force.environment;
            let name = &name.to_owned();
            let key = keys::channel(name);
            let (current, etag) = match self.observer.store.get_if_changed(&key, None).await? {
                Fetch::Found(o) => match current_manifest(&o.bytes, &self.online_key) {
                    Some(m) => (Some(m), Some(o.etag)),
                    None => {
                        // Overwriting it could reset the serial agents hold
                        // on to: someone other than us wrote here.
                        tracing::error!(key = %key, "refusing to overwrite a channel manifest not signed by our online key");
                        continue;
                    }
                },
                Fetch::Missing | Fetch::NotModified => (None, None),
            };
            let freshness = Duration::seconds(
                env.freshness_seconds
                    .as_ref()
                    .map_or(DEFAULT_FRESHNESS_SECONDS, |f| {
                        i64::try_from(f.value).unwrap_or(DEFAULT_FRESHNESS_SECONDS)
                    }),
            );
            let rollouts = plan.channel_rollouts(model, name);
            let Some(next) =
                channel::next_manifest(current.as_ref(), fleet, name, rollouts, now, freshness)
            else {
                continue;
            };
            still_leader(until)?;
            let mut envelope = next.envelope();
            envelope
                .sign(&self.online_key)
                .map_err(|reason| ReconcileError::Sign {
                    environment: name.clone(),
                    reason,
                })?;
            match self
                .observer
                .store
                .put_if_match(&key, envelope.to_json().into(), etag.as_ref())
                .await?
            {
                Update::Updated { .. } => {
                    written.push((name.clone(), next.serial));
                    gitfleet_io::faults::point("after-manifest");
                }
                Update::Conflict => {
                    tracing::warn!(environment = %name, "channel manifest changed under us; next pass retries");
                }
            }
        }
        Ok(written)
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

/// Refuse to write once our lease is about to end.
fn still_leader(until: DateTime<Utc>) -> Result<(), ReconcileError> {
    let margin = Duration::seconds(5);
    if Utc::now() + margin >= until {
        return Err(ReconcileError::LeaseLost { until });
    }
    Ok(())
}

/// A state branch file's bytes: pretty JSON and a newline.
fn json_file(value: &impl serde::Serialize) -> Vec<u8> {
    let mut bytes = serde_json::to_vec_pretty(value).unwrap_or_default();
    bytes.push(b'\n');
    bytes
}

/// Files of the state branch to write: one per rollout whose state changed.
fn state_changes(
    plan: &Plan,
    current: &BTreeMap<String, Vec<u8>>,
) -> BTreeMap<String, Option<Vec<u8>>> {
    let mut out = BTreeMap::new();
    for (name, state) in plan.state() {
        let path = state::rollout_path(&name);
        let bytes = json_file(&state);
        if current.get(&path) != Some(&bytes) {
            out.insert(path, Some(bytes));
        }
    }
    out
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
    dry_run: bool,
    mut trigger: tokio::sync::mpsc::Receiver<()>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    mut on_pass: impl FnMut(Result<&Outcome, &ReconcileError>, std::time::Duration),
) {
    let mut triggers_open = true;
    while !*stop.borrow() {
        let started = std::time::Instant::now();
        let result = reconciler.once(Utc::now(), dry_run).await;
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

/// How long a pass waits for GitHub in each of its GitHub steps.
const GITHUB_BUDGET: std::time::Duration = std::time::Duration::from_secs(60);

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
                false,
                trigger,
                stop,
                on_pass,
            ));
            Ok(())
        })
        .context("starting the reconciler thread")
}
