//! One reconcile pass, decided: from what the reconciler observed (the
//! checked spec branch tip, the state branch, verified reports, the
//! manifests in the store, the rules in force and the approvals) and the
//! time, every write the pass will make, in the order they must be made.
//! Pure: `decide(&Observed, now) -> PassPlan`, printable as the dry run; the
//! reconciler's executor carries it out.
//!
//! The rules of a pass live here:
//! - an error in a fleet-wide document (fleet.kdl, environments.kdl) plans
//!   nothing: it could make every rollout look gone;
//! - a config that does not validate keeps its rollout on its last good
//!   bundle, and a mesh with errors in it or its members likewise;
//! - a bundle's source commit is the last commit that changed its config
//!   directory (or its mesh and members), so an unrelated commit never
//!   changes a bundle's bytes or restarts a rollout;
//! - bundles are uploaded before anything names them; the state is
//!   committed before the manifests derived from it; a bundle whose key
//!   holds other bytes is never named.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;

use chrono::{DateTime, Duration, Utc};
use gitfleet_schemas::state::{
    self, Departed, MeshAllocation, RolloutState, DEPARTED_PATH, RULES_PATH,
};
use gitfleet_schemas::trust::{BundleRef, ChannelManifest};
use gitfleet_schemas::{Diagnostic, Proxy, RolloutTarget, Severity};

use crate::bundle::{self, Built};
use crate::check::Checked;
use crate::mesh::{self, Allocation, MeshBuild};
use crate::plan::{self, Desired, Inputs, Observation, Plan, Targets};
use crate::promotion::{self, Ask};
use crate::rules::RulesPlan;
use crate::statuses::{commit_statuses, CommitStatus};
use crate::{approvals, channel};
use gitfleet_schemas::keys;

/// How long a channel manifest stays valid when the environment sets no
/// `freshness`.
pub const DEFAULT_FRESHNESS_SECONDS: i64 = 3600;

/// How long an environment's channel manifests live (`freshness` in
/// environments.kdl); they are re-signed when half of it is left.
pub fn freshness(env: &gitfleet_schemas::Environment) -> Duration {
    Duration::seconds(
        env.freshness_seconds
            .as_ref()
            .map_or(DEFAULT_FRESHNESS_SECONDS, |f| {
                i64::try_from(f.value).unwrap_or(DEFAULT_FRESHNESS_SECONDS)
            }),
    )
}

/// The current channel manifest of an environment, as the store holds it.
#[derive(Clone, Debug, PartialEq)]
pub enum Current {
    /// None yet.
    Missing,
    /// One our online key signed: it seeds the next serial.
    Ours(Box<ChannelManifest>),
    /// One our key did not sign: never overwritten (its serial is unknown).
    Foreign,
}

/// Bundles built in earlier passes: the same (name, source commit) give
/// the same bytes, so nothing is built twice. The reconciler keeps the
/// `builds` of each plan for the next.
#[derive(Clone, Debug, Default)]
pub struct Builds {
    /// (config, proxy, source commit) -> its bundle.
    pub configs: BTreeMap<(String, Proxy, String), Built>,
    /// Mesh -> the source commit, previous allocation and held addresses
    /// it was built from, and the build.
    pub meshes: BTreeMap<String, (String, Allocation, Allocation, MeshBuild)>,
}

/// Everything a pass decides from.
#[derive(Clone, Copy, Debug)]
pub struct Observed<'a> {
    /// The spec branch tip.
    pub commit: &'a str,
    pub checked: &'a Checked,
    pub targets: &'a Targets,
    /// Config -> the commit that last changed `configs/<name>/`, for the
    /// configs rollouts target (read from history).
    pub config_changes: &'a BTreeMap<String, String>,
    /// Mesh -> the commit that last changed its file or a member's.
    pub mesh_changes: &'a BTreeMap<String, String>,
    pub builds: &'a Builds,
    /// Bundle digests known to be in the store.
    pub stored: &'a HashSet<String>,
    /// Bundle digests whose key in the store holds other bytes.
    pub refused: &'a HashSet<String>,
    /// The state branch tip's files.
    pub state_files: &'a BTreeMap<String, Vec<u8>>,
    pub reports: &'a HashMap<String, Observation>,
    /// When each node was last heard from, on server clocks (the store's
    /// write, a replica taking it over HTTP, a liveness shard); a node
    /// missing here goes by its report's own time.
    pub heard: &'a HashMap<String, DateTime<Utc>>,
    /// The rules in force, already decided for this pass.
    pub rules: &'a RulesPlan,
    /// Whether the rules were first recorded by this pass.
    pub rules_first_seen: bool,
    /// `(environment, commit)` pairs approved under `rules.rules`.
    pub approvals: &'a BTreeSet<(String, String)>,
    /// What each `(rollout, environment, source commit)` still waits for
    /// of the owners its change touches (`crate::owners`).
    pub owners: &'a BTreeMap<(String, String, String), crate::owners::Hold>,
    /// Environment -> its channel manifest in the store.
    pub manifests: &'a BTreeMap<String, Current>,
    /// The fleet's name.
    pub fleet: &'a str,
    /// Node files removed between `departed.json`'s commit and `commit`.
    pub removed_nodes: &'a [crate::decommission::Removed],
    /// The bundles node files pin (`hold ... bundle=`) that the store has,
    /// by digest.
    pub pins: &'a BTreeMap<String, BundleRef>,
}

/// Why a pass plans nothing.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PassError {
    #[error("{file}:{line} at {commit}: {message}; state and manifests left as they are")]
    FleetDocument {
        commit: String,
        file: String,
        line: u32,
        message: String,
    },
    #[error("fleet.kdl could not be read at {commit}; nothing was changed")]
    NoFleet { commit: String },
    #[error("state file {path} on the state branch is not valid: {reason}")]
    State { path: String, reason: String },
}

/// A bundle to put in the store, create-only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upload {
    /// The config or mesh it was built from.
    pub name: String,
    pub key: String,
    pub built: Built,
}

/// The state commit: files to write (`None`: remove) and its message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateCommit {
    pub files: BTreeMap<String, Option<Vec<u8>>>,
    pub message: String,
}

/// A channel manifest to sign and publish over the one observed.
#[derive(Clone, Debug, PartialEq)]
pub struct Publish {
    pub environment: String,
    pub key: String,
    pub manifest: ChannelManifest,
}

/// One write of a pass, in the order the executor makes them.
#[derive(Clone, Copy, Debug)]
pub enum Write<'p> {
    Upload(&'p Upload),
    Remove(&'p str),
    Commit(&'p StateCommit),
    Publish(&'p Publish),
    Status(&'p CommitStatus),
    Promote(&'p str, &'p Ask),
}

/// A pass's whole decision: printable, comparable, executable.
#[derive(Clone, Debug)]
pub struct PassPlan {
    pub commit: String,
    /// Errors in the fleet repo at `commit` (their configs keep their last
    /// good bundle).
    pub errors: usize,
    pub uploads: Vec<Upload>,
    pub rollouts: Plan,
    pub rules: RulesPlan,
    /// Tunnel addresses handed out or freed, one line each.
    pub allocations: Vec<String>,
    /// What happened to departed nodes, one line each.
    pub departures: Vec<String>,
    /// Store objects of departed nodes to remove, before the state commit
    /// forgets them.
    pub removals: Vec<String>,
    pub state: Option<StateCommit>,
    pub manifests: Vec<Publish>,
    /// Environments whose manifest in the store is not ours: left alone.
    pub foreign_manifests: Vec<String>,
    /// Commit statuses as they should be (the executor posts changes).
    pub statuses: Vec<CommitStatus>,
    /// Environment -> its promotion pull request, for changes waiting for
    /// approvals there.
    pub promotions: BTreeMap<String, Ask>,
    /// Approvals on the state branch that did not count, with why.
    pub approvals_ignored: Vec<(String, String)>,
    /// Meshes that could not be built (a range full of members and held
    /// addresses, say), with why: each keeps its last good bundle.
    pub mesh_errors: Vec<(String, String)>,
    /// This pass's bundles, for the next pass to reuse.
    pub builds: Builds,
}

impl PassPlan {
    /// Every write, in order: bundles before anything names them, the state
    /// commit before the manifests derived from it, GitHub last.
    pub fn writes(&self) -> Vec<Write<'_>> {
        let mut out: Vec<Write<'_>> = self.uploads.iter().map(Write::Upload).collect();
        out.extend(self.removals.iter().map(|k| Write::Remove(k)));
        out.extend(self.state.iter().map(Write::Commit));
        out.extend(self.manifests.iter().map(Write::Publish));
        out.extend(self.statuses.iter().map(Write::Status));
        out.extend(self.promotions.iter().map(|(e, a)| Write::Promote(e, a)));
        out
    }
}

impl fmt::Display for PassPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.rollouts)?;
        write!(f, "{}", self.rules)?;
        for line in self.allocations.iter().chain(&self.departures) {
            writeln!(f, "{line}")?;
        }
        writeln!(
            f,
            "commit {}: {} error(s) in the fleet repo",
            short(&self.commit),
            self.errors
        )?;
        writeln!(f, "writes, in order:")?;
        let writes = self.writes();
        if writes.is_empty() {
            writeln!(f, "  none")?;
        }
        for w in writes {
            match w {
                Write::Upload(u) => writeln!(
                    f,
                    "  upload {} ({}, {} bytes)",
                    u.key, u.name, u.built.reference.length
                )?,
                Write::Remove(key) => writeln!(f, "  remove {key} (a departed node's)")?,
                Write::Commit(c) => {
                    let paths: Vec<&str> = c.files.keys().map(String::as_str).collect();
                    writeln!(
                        f,
                        "  commit state: {} ({})",
                        c.message.lines().next().unwrap_or(""),
                        paths.join(", ")
                    )?;
                }
                Write::Publish(p) => writeln!(
                    f,
                    "  sign and publish {} serial {} ({} rollouts, expires {})",
                    p.key,
                    p.manifest.serial,
                    p.manifest.rollouts.len(),
                    p.manifest
                        .expires
                        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                )?,
                Write::Status(s) => writeln!(
                    f,
                    "  status {} on {}: {} ({})",
                    s.context,
                    short(&s.commit),
                    s.status.state,
                    s.status.description
                )?,
                Write::Promote(env, a) => {
                    writeln!(f, "  promotion pull request for {env}: {}", a.title)?
                }
            }
        }
        for env in &self.foreign_manifests {
            writeln!(
                f,
                "  left alone: channels/{env}.json is not signed by our online key"
            )?;
        }
        Ok(())
    }
}

fn short(commit: &str) -> &str {
    &commit[..commit.len().min(12)]
}

/// Decide one pass.
pub fn decide(o: &Observed<'_>, now: DateTime<Utc>) -> Result<PassPlan, PassError> {
    let Checked { model, diagnostics } = o.checked;
    let errors = diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .count();
    if model.fleet.is_none() {
        return Err(PassError::NoFleet {
            commit: o.commit.to_owned(),
        });
    }
    // Errors in the fleet-wide documents could make every rollout look
    // gone; plan nothing rather than commit a wiped state.
    if let Some(d) = diagnostics.iter().find(|d| {
        d.severity == Severity::Error && (d.file == "fleet.kdl" || d.file == "environments.kdl")
    }) {
        return Err(PassError::FleetDocument {
            commit: o.commit.to_owned(),
            file: d.file.clone(),
            line: d.line,
            message: d.message.clone(),
        });
    }

    let mut desired = BTreeMap::new();
    let mut uploads: Vec<Upload> = Vec::new();
    let mut builds = Builds::default();
    let mut allocations: BTreeMap<String, (Vec<u8>, Vec<String>)> = BTreeMap::new();
    let mut meshes: BTreeMap<String, Option<Desired>> = BTreeMap::new();
    let mut mesh_errors = Vec::new();
    for (name, r) in &model.rollouts {
        let d = match &r.doc.target.value {
            RolloutTarget::Mesh(mesh_name) => match meshes.get(mesh_name) {
                Some(d) => d.clone(),
                None => {
                    let d = mesh_desired(
                        o,
                        diagnostics,
                        mesh_name,
                        &mut builds,
                        &mut allocations,
                        &mut mesh_errors,
                        now,
                    )?;
                    meshes.insert(mesh_name.clone(), d.clone());
                    d
                }
            },
            RolloutTarget::Config(config) => config_desired(o, config, &mut builds),
        };
        let Some(d) = d else { continue };
        if d.bundles().any(|b| o.refused.contains(&b.digest)) {
            continue;
        }
        desired.insert(name.clone(), d);
    }
    // Every bundle a rollout names and the store may lack, once each.
    let mut queued = BTreeSet::new();
    let all_builds = builds
        .configs
        .iter()
        .map(|((n, _, _), b)| (n, b))
        .chain(builds.meshes.iter().map(|(n, (_, _, _, m))| (n, &m.built)));
    for (name, built) in all_builds {
        let digest = &built.reference.digest;
        let named = desired
            .values()
            .any(|d| d.bundles().any(|b| b.digest == *digest));
        if !named || o.stored.contains(digest) || !queued.insert(digest.clone()) {
            continue;
        }
        let Some(key) = built.reference.object_key() else {
            continue;
        };
        uploads.push(Upload {
            name: name.clone(),
            key,
            built: built.clone(),
        });
    }

    let rollout_state = parse_rollouts(o.state_files)?;
    let rollouts = plan::plan(&Inputs {
        model,
        targets: o.targets,
        desired: &desired,
        state: &rollout_state,
        reports: o.reports,
        approvals: o.approvals,
        owners: o.owners,
        rules: &o.rules.rules,
        now,
    });

    // The state commit: rollouts, mesh allocations and the rules record.
    let mut files: BTreeMap<String, Option<Vec<u8>>> = BTreeMap::new();
    for (name, st) in rollouts.state() {
        let path = state::rollout_path(&name);
        let bytes = json_file(&st);
        if o.state_files.get(&path) != Some(&bytes) {
            files.insert(path, Some(bytes));
        }
    }
    let mut allocation_lines = Vec::new();
    for (path, (bytes, lines)) in allocations {
        files.insert(path, Some(bytes));
        allocation_lines.extend(lines);
    }
    let rules_bytes = json_file(&o.rules.state);
    if o.state_files.get(RULES_PATH) != Some(&rules_bytes) {
        files.insert(RULES_PATH.to_owned(), Some(rules_bytes));
    }
    // Departed nodes. The record is written when its nodes change, when
    // there is none yet, and otherwise only with other state, so that an
    // idle push costs no commit.
    let departed_before = match o.state_files.get(DEPARTED_PATH) {
        None => None,
        Some(bytes) => {
            Some(
                serde_json::from_slice::<Departed>(bytes).map_err(|e| PassError::State {
                    path: DEPARTED_PATH.to_owned(),
                    reason: e.to_string(),
                })?,
            )
        }
    };
    let departed = crate::decommission::decide(
        departed_before.as_ref(),
        o.removed_nodes,
        model,
        o.commit,
        now,
    );
    let departed_bytes = json_file(&departed.record);
    if (departed.changed || departed_before.is_none() || !files.is_empty())
        && o.state_files.get(DEPARTED_PATH) != Some(&departed_bytes)
    {
        files.insert(DEPARTED_PATH.to_owned(), Some(departed_bytes));
    }
    let state = (!files.is_empty()).then(|| StateCommit {
        message: state_message(o, &rollouts, &allocation_lines, &departed.lines),
        files,
    });

    // The manifests, from the state as it will be committed.
    let mut manifests = Vec::new();
    let mut foreign_manifests = Vec::new();
    for (env, in_force) in o.rules.rules.iter() {
        let current = match o.manifests.get(env).unwrap_or(&Current::Missing) {
            Current::Missing => None,
            Current::Ours(m) => Some(&**m),
            Current::Foreign => {
                foreign_manifests.push(env.to_owned());
                continue;
            }
        };
        let freshness = freshness(&in_force.environment);
        let channel_rollouts = rollouts.channel_rollouts(model, env);
        let moving = rollouts.moving(Some(env));
        let settings = channel::agent_settings(model, moving);
        if let Some(next) = channel::next_manifest(
            current,
            o.fleet,
            env,
            channel::Says {
                rollouts: channel_rollouts,
                settings: settings.clone(),
                revoked: channel::revoked(model),
                held: channel::held(model, env),
                pinned: channel::pinned(model, env, o.pins),
                decommissioned: departed.of_environment(env),
            },
            now,
            freshness,
        ) {
            manifests.push(Publish {
                environment: env.to_owned(),
                key: keys::channel(env),
                manifest: next,
            });
        }
    }

    let planned_state = rollouts.state();
    let statuses = commit_statuses(model, &planned_state);
    let promotions = promotion::wanted(&o.rules.rules, &planned_state);
    let approvals_ignored = approvals::count(model, &o.rules.rules, o.state_files).ignored;
    Ok(PassPlan {
        commit: o.commit.to_owned(),
        errors,
        uploads,
        rollouts,
        rules: o.rules.clone(),
        allocations: allocation_lines,
        departures: departed.lines,
        removals: departed.remove,
        state,
        manifests,
        foreign_manifests,
        statuses,
        promotions,
        approvals_ignored,
        mesh_errors,
        builds,
    })
}

/// The bundles rollout targets of `config`, one per proxy its nodes run,
/// built (or reused) at the commit that last changed the config directory;
/// `None` while the config does not validate for each of them (its rollout
/// keeps its last good bundles).
fn config_desired(o: &Observed<'_>, config: &str, builds: &mut Builds) -> Option<Desired> {
    let dir = o.checked.model.configs.get(config)?;
    if !dir.valid() {
        return None;
    }
    let source_commit = o
        .config_changes
        .get(config)
        .cloned()
        .unwrap_or_else(|| o.commit.to_owned());
    let mut bundles = BTreeMap::new();
    for proxy in dir.variants.keys() {
        let key = (config.to_owned(), proxy.clone(), source_commit.clone());
        let built = match builds
            .configs
            .get(&key)
            .or_else(|| o.builds.configs.get(&key))
        {
            Some(b) => b.clone(),
            None => bundle::proxy_config(dir, proxy, &source_commit).ok()?,
        };
        bundles.insert(proxy.clone(), built.reference.clone());
        builds.configs.insert(key, built);
    }
    // The first proxy's bundle is the rollout's own; the others ride along.
    let (proxy, bundle) = bundles.pop_first()?;
    Some(Desired {
        bundle,
        source_commit,
        proxy: Some(proxy),
        variants: bundles,
    })
}

/// The bundle of mesh `name` on the allocation the state branch records,
/// and the allocation record to commit when it changed (with departed
/// members' addresses held, and freed once no member runs a bundle naming
/// them); `None` while the mesh or one of its members has errors (the last
/// good bundle stays).
fn mesh_desired(
    o: &Observed<'_>,
    diagnostics: &[Diagnostic],
    name: &str,
    builds: &mut Builds,
    allocations: &mut BTreeMap<String, (Vec<u8>, Vec<String>)>,
    mesh_errors: &mut Vec<(String, String)>,
    now: DateTime<Utc>,
) -> Result<Option<Desired>, PassError> {
    let model = &o.checked.model;
    let Some(located) = model.meshes.get(name) else {
        return Ok(None);
    };
    let path = state::allocation_path(name);
    let (previous, held) = match o.state_files.get(&path) {
        None => (Allocation::new(), mesh::Held::new()),
        Some(bytes) => {
            let recorded: MeshAllocation =
                serde_json::from_slice(bytes).map_err(|e| PassError::State {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
            (mesh::from_state(&recorded), recorded.held)
        }
    };
    if mesh::blocking(model, diagnostics, name, &previous).is_some() {
        return Ok(None);
    }
    let source_commit = o
        .mesh_changes
        .get(name)
        .cloned()
        .unwrap_or_else(|| o.commit.to_owned());
    let reserved = held_addresses(&held);
    let build = match o.builds.meshes.get(name) {
        Some((commit, prev, res, build))
            if *commit == source_commit && *prev == previous && *res == reserved =>
        {
            build.clone()
        }
        _ => match mesh::build(model, name, &located.doc, &previous, &held, &source_commit) {
            Ok(b) => b,
            Err(e) => {
                mesh_errors.push((name.to_owned(), e.to_string()));
                return Ok(None);
            }
        },
    };
    // Which bundle of this mesh each member runs, by its last report.
    let rollouts: BTreeSet<&str> = model
        .rollouts
        .iter()
        .filter(|(_, r)| matches!(&r.doc.target.value, RolloutTarget::Mesh(m) if m == name))
        .map(|(n, _)| n.as_str())
        .collect();
    let hold_for = Duration::try_seconds(
        i64::try_from(located.doc.address_hold_seconds()).unwrap_or(i64::MAX),
    )
    .unwrap_or(Duration::MAX);
    // A member silent for longer than the hold time runs nothing anyone
    // saw lately: it holds no address.
    let running: BTreeMap<String, String> = build
        .allocation
        .keys()
        .filter_map(|node| {
            let heard = o.heard.get(node).copied();
            let report = o
                .reports
                .get(node)
                .filter(|r| now - heard.unwrap_or(r.at).max(r.at) <= hold_for)?;
            let (_, digest) = report
                .active
                .iter()
                .find(|(r, _)| rollouts.contains(r.as_str()))?;
            Some((node.clone(), digest.clone()))
        })
        .collect();
    let (held_next, freed) = mesh::held_after(name, &held, &build, &running, now, hold_for);
    let mut record = build.state.clone();
    record.held = held_next;
    let bytes = json_file(&record);
    if o.state_files.get(&path) != Some(&bytes) {
        let mut lines = build.changes.clone();
        lines.extend(freed);
        if lines.is_empty() {
            lines.push(format!("mesh {name}: allocation record rewritten"));
        }
        allocations.insert(path, (bytes, lines));
    }
    let desired = Desired::single(build.built.reference.clone(), source_commit.clone(), None);
    builds
        .meshes
        .insert(name.to_owned(), (source_commit, previous, reserved, build));
    Ok(Some(desired))
}

/// The held addresses of a mesh by node id: what a build reserved.
fn held_addresses(held: &mesh::Held) -> Allocation {
    held.iter().map(|(n, h)| (n.clone(), h.address)).collect()
}

/// `rollouts/<name>.json` of the state branch, parsed.
pub fn parse_rollouts(
    files: &BTreeMap<String, Vec<u8>>,
) -> Result<BTreeMap<String, RolloutState>, PassError> {
    let mut out = BTreeMap::new();
    for (path, bytes) in files {
        let Some(name) = state::rollout_of(path) else {
            continue;
        };
        let st: RolloutState = serde_json::from_slice(bytes).map_err(|e| PassError::State {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        out.insert(name.to_owned(), st);
    }
    Ok(out)
}

/// A state branch file's bytes: pretty JSON and a newline.
pub fn json_file(value: &impl serde::Serialize) -> Vec<u8> {
    let mut bytes = serde_json::to_vec_pretty(value).unwrap_or_default();
    bytes.push(b'\n');
    bytes
}

/// The state commit's message: a summary line, then what changed and why.
fn state_message(
    o: &Observed<'_>,
    rollouts: &Plan,
    allocations: &[String],
    departures: &[String],
) -> String {
    let rollout_lines = rollouts.changes();
    let mut rule_lines = o.rules.changes.clone();
    if o.rules_first_seen {
        rule_lines.insert(
            0,
            format!(
                "rules of every environment first seen at {}",
                short(o.commit)
            ),
        );
    }
    let mut summary = Vec::new();
    if !rollout_lines.is_empty() || (allocations.is_empty() && rule_lines.is_empty()) {
        summary.push(format!("{} rollout update(s)", rollout_lines.len()));
    }
    if !rule_lines.is_empty() {
        summary.push(format!("{} rules update(s)", rule_lines.len()));
    }
    if !allocations.is_empty() {
        summary.push(format!("{} mesh address change(s)", allocations.len()));
    }
    if !departures.is_empty() {
        summary.push(format!("{} departure update(s)", departures.len()));
    }
    let mut message = format!(
        "gitfleet: {} at {}\n\n",
        summary.join(", "),
        short(o.commit)
    );
    for line in rule_lines
        .iter()
        .chain(&rollout_lines)
        .chain(allocations)
        .chain(departures)
    {
        message.push_str(line);
        message.push('\n');
    }
    message
}
