//! `gitfleet up`: a whole fleet on this machine. A fleet repo (the example
//! built into gitfleet, or one given) becomes a local bare git repository
//! with a working clone to edit, a `file://` store, fresh keys and a root;
//! then the reconciler and one simulated agent per node run in this process
//! and the screen shows every rollout's progress.
//!
//! Everything lives in one directory (`.gitfleet/up`). It is set up in a
//! sibling directory and renamed into place, so it is either whole or not
//! there; when it is there, `up` resumes from it: the state branch, the
//! store and every simulated node's state carry on where they stopped.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use chrono::{DateTime, Utc};
use ed25519_dalek::SigningKey;
use gitfleet_agent::sim::{sim_key, SimSettings};
use gitfleet_policy::plan::Plan;
use gitfleet_policy::RepoFiles;
use gitfleet_schemas::keyfile::{KeyFile, KeyRole};
use gitfleet_schemas::state::Phase;
use gitfleet_schemas::trust::{Document as _, PublicKey, Root};
use gitfleet_schemas::{FleetFile, NodeFile, RolloutFile, Severity, Span};

use super::simulate::{self, millis, Swarm, View};
use crate::fmt::{bar, BAR};
use crate::git::{Mirror, Remote};
use crate::pass::{self as reconcile, Reconciler};
use gitfleet_io::store::Store;

/// Run a whole fleet on this machine and watch it roll out.
///
/// A local fleet repo, a file:// store, the reconciler and one simulated
/// agent per node, with live progress. With no FLEET_REPO it starts from
/// the example fleet built into gitfleet (11 nodes in dev, staging and
/// prod). The first run sets up DIR:
///   fleet.git    the fleet repo the reconciler follows (bare, branch main)
///   fleet/       a clone of it to edit, commit and push from
///   store/       the object store: bundles, root, channel manifests, status
///   keys/        fresh root keys and the online key (mode 0600)
///   agents/      each simulated node's state
/// The copy is made runnable here: fleet.kdl trusts the new root keys and
/// names the store and no poll intervals (so agents poll at --poll), each
/// node's node-key is its simulator key, and bake and progress-deadline
/// are shortened (--bake; --keep-timings keeps them).
/// Change windows and approvals stay as written, so an environment that
/// needs approvals waits for them.
///
/// Then it reconciles on every push (and every --interval), the agents poll
/// every --poll, and the screen shows each rollout per environment. Ctrl-C
/// stops everything cleanly; running it again resumes from DIR. Remove DIR
/// to start over.
///
/// Examples:
///   gitfleet up
///   gitfleet up --failure-rate 0.3          # watch health gates roll back
///   gitfleet up --listen 127.0.0.1:8080     # and watch it in a browser
///   gitfleet up ~/src/my-fleet --dir /tmp/my-fleet-demo
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct UpArgs {
    /// A fleet repo directory to start from (read once, when DIR is set up).
    #[arg(value_name = "FLEET_REPO")]
    repo: Option<PathBuf>,
    /// Where the demo fleet lives.
    #[arg(long, value_name = "DIR", default_value = ".gitfleet/up")]
    dir: PathBuf,
    /// Time between the simulated agents' polls.
    #[arg(long, value_name = "D", default_value = "1s", value_parser = humantime::parse_duration)]
    poll: Duration,
    /// Time between reconcile passes when nothing was pushed.
    #[arg(long, value_name = "D", default_value = "2s", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// The bake time every rollout gets in the copy (on first set-up).
    #[arg(long, value_name = "D", default_value = "5s", value_parser = humantime::parse_duration)]
    bake: Duration,
    /// Keep the repo's bake and progress-deadline times as written.
    #[arg(long)]
    keep_timings: bool,
    /// The fraction (0 to 1) of (node, bundle) pairs unhealthy once
    /// activated.
    #[arg(long, value_name = "P", default_value_t = 0.0, value_parser = simulate::parse_rate)]
    failure_rate: f64,
    /// How long a simulated activation takes.
    #[arg(long, value_name = "D", default_value = "200ms", value_parser = humantime::parse_duration)]
    apply_latency: Duration,
    /// Stop after this long (default: run until Ctrl-C).
    #[arg(long, value_name = "D", value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Also serve the status pages, /metrics and /api/status here, as
    /// `gitfleet serve` does (e.g. 127.0.0.1:8080; port 0 picks one).
    #[arg(long, value_name = "ADDR")]
    listen: Option<std::net::SocketAddr>,
}

/// The progress deadline the copy gets: long enough for a slow machine.
const DEMO_DEADLINE: Duration = Duration::from_secs(120);

/// This replica's name in the leader lease.
const HOLDER: &str = "gitfleet-up";

/// The example fleet repo, built in so that `gitfleet up` works from any
/// directory. A test keeps this list equal to `examples/fleet-repo/`.
const EXAMPLE: &[(&str, &str)] = &[
    (
        "fleet.kdl",
        include_str!("../../../examples/fleet-repo/fleet.kdl"),
    ),
    (
        "environments.kdl",
        include_str!("../../../examples/fleet-repo/environments.kdl"),
    ),
    (
        "configs/edge/sentinel.kdl",
        include_str!("../../../examples/fleet-repo/configs/edge/sentinel.kdl"),
    ),
    (
        "configs/api-gateway/sentinel.kdl",
        include_str!("../../../examples/fleet-repo/configs/api-gateway/sentinel.kdl"),
    ),
    (
        "meshes/backbone.kdl",
        include_str!("../../../examples/fleet-repo/meshes/backbone.kdl"),
    ),
    (
        "rollouts/edge.kdl",
        include_str!("../../../examples/fleet-repo/rollouts/edge.kdl"),
    ),
    (
        "rollouts/api-gateway.kdl",
        include_str!("../../../examples/fleet-repo/rollouts/api-gateway.kdl"),
    ),
    (
        "rollouts/backbone.kdl",
        include_str!("../../../examples/fleet-repo/rollouts/backbone.kdl"),
    ),
    (
        "nodes/api-dev-fra-1.kdl",
        include_str!("../../../examples/fleet-repo/nodes/api-dev-fra-1.kdl"),
    ),
    (
        "nodes/api-fra-1.kdl",
        include_str!("../../../examples/fleet-repo/nodes/api-fra-1.kdl"),
    ),
    (
        "nodes/api-iad-1.kdl",
        include_str!("../../../examples/fleet-repo/nodes/api-iad-1.kdl"),
    ),
    (
        "nodes/api-stg-iad-1.kdl",
        include_str!("../../../examples/fleet-repo/nodes/api-stg-iad-1.kdl"),
    ),
    (
        "nodes/edge-dev-fra-1.kdl",
        include_str!("../../../examples/fleet-repo/nodes/edge-dev-fra-1.kdl"),
    ),
    (
        "nodes/edge-fra-1.kdl",
        include_str!("../../../examples/fleet-repo/nodes/edge-fra-1.kdl"),
    ),
    (
        "nodes/edge-fra-2.kdl",
        include_str!("../../../examples/fleet-repo/nodes/edge-fra-2.kdl"),
    ),
    (
        "nodes/edge-iad-1.kdl",
        include_str!("../../../examples/fleet-repo/nodes/edge-iad-1.kdl"),
    ),
    (
        "nodes/edge-iad-2.kdl",
        include_str!("../../../examples/fleet-repo/nodes/edge-iad-2.kdl"),
    ),
    (
        "nodes/edge-stg-fra-1.kdl",
        include_str!("../../../examples/fleet-repo/nodes/edge-stg-fra-1.kdl"),
    ),
    (
        "nodes/edge-stg-iad-1.kdl",
        include_str!("../../../examples/fleet-repo/nodes/edge-stg-iad-1.kdl"),
    ),
];

/// Where everything of one demo fleet lives.
#[derive(Clone, Debug)]
pub struct Layout {
    dir: PathBuf,
}

impl Layout {
    pub fn new(dir: &Path) -> anyhow::Result<Layout> {
        let dir = if dir.is_absolute() {
            dir.to_owned()
        } else {
            std::env::current_dir()
                .context("reading the current directory")?
                .join(dir)
        };
        Ok(Layout { dir })
    }

    /// The same layout rooted somewhere else (the set-up directory).
    fn at(&self, dir: PathBuf) -> Layout {
        Layout { dir }
    }

    pub fn bare(&self) -> PathBuf {
        self.dir.join("fleet.git")
    }

    pub fn work(&self) -> PathBuf {
        self.dir.join("fleet")
    }

    pub fn store(&self) -> PathBuf {
        self.dir.join("store")
    }

    pub fn store_url(&self) -> String {
        format!("file://{}", self.store().display())
    }

    pub fn keys(&self) -> PathBuf {
        self.dir.join("keys")
    }

    pub fn online_key(&self) -> PathBuf {
        self.keys().join("online.key")
    }

    pub fn root(&self) -> PathBuf {
        self.dir.join("root-1.json")
    }

    pub fn mirror(&self) -> PathBuf {
        self.dir.join("mirror")
    }

    pub fn agents(&self) -> PathBuf {
        self.dir.join("agents")
    }

    /// A path as the user can type it from where they ran `up`.
    fn show(&self, path: &Path) -> String {
        std::env::current_dir()
            .ok()
            .and_then(|cwd| path.strip_prefix(cwd).ok().map(Path::to_owned))
            .unwrap_or_else(|| path.to_owned())
            .display()
            .to_string()
    }
}

pub fn run(args: &UpArgs) -> anyhow::Result<ExitCode> {
    let layout = Layout::new(&args.dir)?;
    if layout.dir.exists() {
        if let Some(repo) = &args.repo {
            bail!(
                "{} is already set up, so {} would not be read; run `gitfleet up --dir {}` to resume it, or remove it to start over from {}",
                layout.show(&layout.dir),
                repo.display(),
                layout.show(&layout.dir),
                repo.display()
            );
        }
        println!("resuming the fleet in {}", layout.show(&layout.dir));
    } else {
        let files = match &args.repo {
            Some(repo) => {
                let (files, skipped) = crate::source::read_worktree(repo)?;
                for link in &skipped.symlinks {
                    tracing::warn!(path = %link, "skipping symlink: fleet repos hold plain files");
                }
                files
            }
            None => example(),
        };
        let timings = (!args.keep_timings).then_some((args.bake, DEMO_DEADLINE));
        set_up(&layout, &files, timings, Utc::now())?;
        println!(
            "set up {} from {}",
            layout.show(&layout.dir),
            args.repo
                .as_ref()
                .map_or("the example fleet".to_owned(), |r| r.display().to_string())
        );
    }
    serve(args, &layout)
}

/// The built-in example fleet repo.
fn example() -> RepoFiles {
    let mut files = RepoFiles::new();
    for (path, text) in EXAMPLE {
        files.insert(*path, text.as_bytes());
    }
    files
}

/// What the copy of the fleet repo changes so it runs here.
#[derive(Debug)]
struct Demo<'a> {
    /// In the order of fleet.kdl's `root-key` entries.
    root_keys: &'a [PublicKey],
    store_url: &'a str,
    /// Approvers whose key is set (or who are added) in fleet.kdl.
    approvers: &'a [(String, PublicKey)],
    /// (bake, progress deadline) for every rollout, or keep them.
    timings: Option<(Duration, Duration)>,
}

#[derive(Debug, thiserror::Error)]
enum DemoError {
    #[error("{file}: {what}")]
    Unreadable { file: String, what: String },
    #[error("{file}:{offset}: expected a quoted value to replace, found `{found}`")]
    NotAString {
        file: String,
        offset: usize,
        found: String,
    },
}

/// A replacement of the quoted value inside `span`.
struct Edit {
    span: Span,
    value: String,
}

/// The repo with the changes of `demo` made in place, as text edits of
/// the values the decoders located, so comments and layout stay.
fn demo_files(files: &RepoFiles, demo: &Demo<'_>) -> Result<RepoFiles, DemoError> {
    let mut out = RepoFiles::new();
    for (path, bytes) in files.iter() {
        let Ok(text) = std::str::from_utf8(bytes) else {
            out.insert(path, bytes);
            continue;
        };
        let unreadable = |what: &str| DemoError::Unreadable {
            file: path.to_owned(),
            what: what.to_owned(),
        };
        let mut edits = Vec::new();
        let mut append = String::new();
        let timing_edits = |bake: Option<Span>, deadline: Option<Span>, edits: &mut Vec<Edit>| {
            if let Some((b, d)) = demo.timings {
                for (span, value) in [(bake, b), (deadline, d)] {
                    if let Some(span) = span {
                        edits.push(Edit {
                            span,
                            value: humantime::format_duration(value).to_string(),
                        });
                    }
                }
            }
        };
        if path == gitfleet_policy::model::FLEET_FILE {
            let fleet = FleetFile::decode(text)
                .value
                .ok_or_else(|| unreadable("fleet.kdl cannot be read; run gitfleet check"))?;
            let trust = fleet.trust.as_ref().ok_or_else(|| {
                unreadable("fleet.kdl has no trust block to put the new root keys in")
            })?;
            if trust.root_keys.len() != demo.root_keys.len() {
                return Err(unreadable(
                    "the number of root keys changed while setting up",
                ));
            }
            for (k, new) in trust.root_keys.iter().zip(demo.root_keys) {
                edits.push(Edit {
                    span: k.span,
                    value: new.to_string(),
                });
            }
            if let Some(store) = &fleet.store {
                edits.push(Edit {
                    span: store.span,
                    value: demo.store_url.to_owned(),
                });
            }
            timing_edits(
                fleet.defaults.bake_seconds.as_ref().map(|s| s.span),
                fleet
                    .defaults
                    .progress_deadline_seconds
                    .as_ref()
                    .map(|s| s.span),
                &mut edits,
            );
            for t in &fleet.templates {
                timing_edits(
                    t.bake_seconds.as_ref().map(|s| s.span),
                    t.progress_deadline_seconds.as_ref().map(|s| s.span),
                    &mut edits,
                );
            }
            for (name, key) in demo.approvers {
                match fleet.approvers.iter().find(|a| a.name.value == *name) {
                    Some(a) => edits.push(Edit {
                        span: a.key.span,
                        value: key.to_string(),
                    }),
                    None => append.push_str(&format!("approver {name:?} key=\"{key}\"\n")),
                }
            }
        } else if path.starts_with("nodes/") && path.ends_with(".kdl") {
            if let Some(node) = NodeFile::decode(text).value {
                let public = PublicKey(sim_key(&node.id.value).verifying_key().to_bytes());
                edits.push(Edit {
                    span: node.node_key.span,
                    value: public.to_string(),
                });
            }
        } else if path.starts_with("rollouts/") && path.ends_with(".kdl") {
            if let Some(r) = RolloutFile::decode(text).value {
                timing_edits(
                    r.bake_seconds.as_ref().map(|s| s.span),
                    r.progress_deadline_seconds.as_ref().map(|s| s.span),
                    &mut edits,
                );
            }
        }
        let mut text = apply(path, text, edits)?;
        if path == gitfleet_policy::model::FLEET_FILE {
            text = without_poll_intervals(&text);
        }
        if !append.is_empty() {
            if !text.ends_with('\n') {
                text.push('\n');
            }
            text.push_str("\n// Added by gitfleet up: who may run gitfleet approve.\n");
            text.push_str(&append);
        }
        out.insert(path, text.into_bytes());
    }
    Ok(out)
}

/// fleet.kdl without `poll-interval`, `idle-poll-interval` and
/// `poll-jitter`: the fleet's settings win over an agent's own, and the
/// simulated agents are to poll at `--poll`. Each setting is cut from its
/// name to the end of its value (and a `;` after it), wherever it is
/// written; a line left empty says why.
fn without_poll_intervals(text: &str) -> String {
    let Some(fleet) = FleetFile::decode(text).value else {
        return text.to_owned();
    };
    let d = &fleet.defaults;
    let mut cuts: Vec<(usize, usize)> = [
        (
            "poll-interval",
            d.poll_interval_seconds.as_ref().map(|v| v.span),
        ),
        (
            "idle-poll-interval",
            d.idle_poll_interval_seconds.as_ref().map(|v| v.span),
        ),
        (
            "poll-jitter",
            d.poll_jitter_seconds.as_ref().map(|v| v.span),
        ),
    ]
    .into_iter()
    .filter_map(|(name, span)| {
        let span = span?;
        let start = text.get(..span.start)?.rfind(name)?;
        let end = if text.get(span.end..span.end + 1) == Some(";") {
            span.end + 1
        } else {
            span.end
        };
        Some((start, end))
    })
    .collect();
    cuts.sort_by_key(|c| std::cmp::Reverse(c.0));
    let mut out = text.to_owned();
    for (start, end) in cuts {
        out.replace_range(start..end, "");
        let line_start = out[..start].rfind('\n').map_or(0, |i| i + 1);
        let line_end = out[start..].find('\n').map_or(out.len(), |i| start + i);
        if out[line_start..line_end].trim().is_empty() {
            out.replace_range(start..line_end, "// gitfleet up: agents poll at --poll");
        }
    }
    out
}

/// Replace the quoted value in each edit's span, last first so earlier
/// offsets stay valid.
fn apply(file: &str, text: &str, mut edits: Vec<Edit>) -> Result<String, DemoError> {
    edits.sort_by_key(|e| std::cmp::Reverse(e.span.start));
    let mut out = text.to_owned();
    for e in edits {
        let found = text.get(e.span.start..e.span.end).unwrap_or_default();
        let (Some(open), Some(close)) = (found.find('"'), found.rfind('"')) else {
            return Err(DemoError::NotAString {
                file: file.to_owned(),
                offset: e.span.start,
                found: found.to_owned(),
            });
        };
        if open == close {
            return Err(DemoError::NotAString {
                file: file.to_owned(),
                offset: e.span.start,
                found: found.to_owned(),
            });
        }
        out.replace_range(
            e.span.start + open + 1..e.span.start + close,
            &e.value.replace('\\', "\\\\").replace('"', "\\\""),
        );
    }
    Ok(out)
}

/// The users environments.kdl takes approvals from, each once, by name;
/// names that cannot be file names are left out.
fn approval_users(files: &RepoFiles) -> Vec<String> {
    let mut out: Vec<String> = files
        .text(gitfleet_policy::model::ENVIRONMENTS_FILE)
        .and_then(|t| gitfleet_schemas::EnvironmentsFile::decode(t).value)
        .map(|f| {
            f.environments
                .iter()
                .filter_map(|e| e.approvals.as_ref())
                .flat_map(|a| a.users.iter().map(|u| u.value.clone()))
                .filter(|u| gitfleet_policy::valid_name(u))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out.dedup();
    out
}

/// Fresh key files: `keys/<name>.key`, mode 0600.
fn new_key(dir: &Path, name: &str, role: KeyRole) -> anyhow::Result<SigningKey> {
    let mut seed = [0u8; 32];
    getrandom::getrandom(&mut seed)
        .map_err(|e| anyhow::anyhow!("reading randomness from the operating system: {e}"))?;
    let file = KeyFile::new(role, &seed);
    let key = SigningKey::from_bytes(&seed);
    seed.fill(0);
    gitfleet_io::write::new_file(&dir.join(format!("{name}.key")), &file.to_json(), 0o600)?;
    Ok(key)
}

/// Set up `layout` from `files`: in a sibling directory first, renamed
/// into place when everything is there. `timings`: the bake and progress
/// deadline every rollout gets (`None` keeps the repo's).
pub fn set_up(
    layout: &Layout,
    files: &RepoFiles,
    timings: Option<(Duration, Duration)>,
    now: DateTime<Utc>,
) -> anyhow::Result<()> {
    let fleet = files
        .text(gitfleet_policy::model::FLEET_FILE)
        .and_then(|t| FleetFile::decode(t).value)
        .context("the fleet repo has no readable fleet.kdl; run gitfleet check on it")?;
    let trust = fleet
        .trust
        .as_ref()
        .context("fleet.kdl has no trust block: agents would have no root keys to pin")?;
    let parent = layout
        .dir
        .parent()
        .context("the demo directory has no parent")?;
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let name = layout
        .dir
        .file_name()
        .map_or("up".into(), |n| n.to_string_lossy().into_owned());
    // A set-up that was interrupted left this behind; it was never used.
    let partial = layout.at(parent.join(format!(".{name}.partial")));
    match std::fs::remove_dir_all(&partial.dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", partial.dir.display())),
    }
    std::fs::create_dir_all(partial.keys())
        .with_context(|| format!("creating {}", partial.keys().display()))?;

    // Keys: as many root keys as fleet.kdl lists, at its threshold.
    let mut root_keys = Vec::new();
    for i in 1..=trust.root_keys.len() {
        root_keys.push(new_key(
            &partial.keys(),
            &format!("root-{i}"),
            KeyRole::Root,
        )?);
    }
    let online = new_key(&partial.keys(), "online", KeyRole::Online)?;
    // A key for every user an environment takes approvals from, so the
    // demo's approvals can be given with `gitfleet approve`.
    let mut approvers = Vec::new();
    for name in approval_users(files) {
        let key = new_key(
            &partial.keys(),
            &format!("approver-{name}"),
            KeyRole::Approver,
        )?;
        approvers.push((name, PublicKey(key.verifying_key().to_bytes())));
    }
    let publics: Vec<PublicKey> = root_keys
        .iter()
        .map(|k| PublicKey(k.verifying_key().to_bytes()))
        .collect();
    let store_url = layout.store_url();
    let copy = demo_files(
        files,
        &Demo {
            root_keys: &publics,
            store_url: &store_url,
            approvers: &approvers,
            timings,
        },
    )?;
    let checked = gitfleet_policy::check(&copy);
    let errors: Vec<String> = checked
        .diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .map(|d| format!("  {}:{}:{}: {}", d.file, d.line, d.column, d.message))
        .collect();
    if !errors.is_empty() {
        bail!(
            "the fleet repo has {} error(s); fix them first (gitfleet check shows them in full):\n{}",
            errors.len(),
            errors.join("\n")
        );
    }

    // The first root: every root key signs, the new online key is named.
    let root = Root {
        fleet: fleet.name.value.clone(),
        version: 1,
        expires: now + chrono::Duration::days(365),
        root_keys: publics,
        root_threshold: u32::try_from(trust.threshold.value).unwrap_or(u32::MAX),
        online_keys: vec![PublicKey(online.verifying_key().to_bytes())],
        online_threshold: 1,
    };
    gitfleet_schemas::verify::validate_root(&root)
        .context("the root of trust built from fleet.kdl is not valid")?;
    let mut envelope = root.envelope();
    for k in &root_keys {
        envelope
            .sign(k)
            .map_err(|e| anyhow::anyhow!("signing the first root: {e}"))?;
    }
    let root_bytes = envelope.to_json();
    gitfleet_io::write::new_file(&partial.root(), &root_bytes, 0o644)?;
    // The file store keeps objects as plain files under their keys.
    std::fs::create_dir_all(partial.store().join("root"))
        .with_context(|| format!("creating {}", partial.store().display()))?;
    gitfleet_io::write::new_file(
        &partial.store().join(gitfleet_schemas::keys::root(1)),
        &root_bytes,
        0o644,
    )?;

    init_repos(&partial, layout, &copy)?;

    std::fs::rename(&partial.dir, &layout.dir).with_context(|| {
        format!(
            "moving {} into place at {}",
            partial.dir.display(),
            layout.dir.display()
        )
    })?;
    gitfleet_io::write::sync_dir(parent)?;
    Ok(())
}

/// The bare fleet repo with `files` as the first commit of `main`, and a
/// clone of it to work in whose `origin` is the bare repo at its final
/// place (`layout`), ready for `git push`.
fn init_repos(partial: &Layout, layout: &Layout, files: &RepoFiles) -> anyhow::Result<()> {
    let git = |what: &str, e: git2::Error| anyhow::anyhow!("{what}: {}", e.message());
    let mut opts = git2::RepositoryInitOptions::new();
    opts.initial_head("main");
    let work = git2::Repository::init_opts(partial.work(), &opts)
        .map_err(|e| git(&format!("creating {}", partial.work().display()), e))?;
    for (path, bytes) in files.iter() {
        let dest = partial.work().join(path);
        if let Some(dir) = dest.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::write(&dest, bytes).with_context(|| format!("writing {}", dest.display()))?;
    }
    let mut index = work.index().map_err(|e| git("opening the index", e))?;
    index
        .add_all(["*"], git2::IndexAddOption::DEFAULT, None)
        .map_err(|e| git("adding the fleet repo's files", e))?;
    index.write().map_err(|e| git("writing the index", e))?;
    let tree_id = index.write_tree().map_err(|e| git("writing the tree", e))?;
    let tree = work
        .find_tree(tree_id)
        .map_err(|e| git("reading the tree", e))?;
    let who = git2::Signature::now("gitfleet up", "gitfleet@localhost")
        .map_err(|e| git("making the commit's author", e))?;
    work.commit(
        Some("HEAD"),
        &who,
        &who,
        "The fleet, set up by gitfleet up\n\nRoot keys, node keys and the store are this machine's; \
         rollout timings may be shortened for the demo.\n",
        &tree,
        &[],
    )
    .map_err(|e| git("committing the fleet repo", e))?;

    let mut bare_opts = git2::RepositoryInitOptions::new();
    bare_opts.initial_head("main").bare(true);
    git2::Repository::init_opts(partial.bare(), &bare_opts)
        .map_err(|e| git(&format!("creating {}", partial.bare().display()), e))?;
    let mut remote = work
        .remote_anonymous(&partial.bare().display().to_string())
        .map_err(|e| git("naming the bare repository", e))?;
    remote
        .push(&["refs/heads/main:refs/heads/main"], None)
        .map_err(|e| git("pushing main to the bare repository", e))?;
    work.remote("origin", &layout.bare().display().to_string())
        .map_err(|e| git("adding the origin remote", e))?;
    let mut config = work
        .config()
        .map_err(|e| git("opening the clone's config", e))?;
    config
        .set_str("branch.main.remote", "origin")
        .and_then(|()| config.set_str("branch.main.merge", "refs/heads/main"))
        .map_err(|e| git("setting main's upstream", e))?;
    // The remote-tracking ref `git status` compares with.
    let head = work
        .refname_to_id("refs/heads/main")
        .map_err(|e| git("reading main", e))?;
    work.reference("refs/remotes/origin/main", head, true, "gitfleet up")
        .map_err(|e| git("recording origin/main", e))?;
    Ok(())
}

/// The reconciler's latest word, for the screen.
#[derive(Clone, Debug, Default)]
struct Pass {
    at: Option<DateTime<Utc>>,
    commit: String,
    plan: Option<Plan>,
    /// Errors in the fleet repo at `commit`.
    repo_errors: usize,
    /// Why the last pass failed, when it did.
    error: Option<String>,
}

/// Reconcile and simulate until Ctrl-C or --duration, drawing progress.
fn serve(args: &UpArgs, layout: &Layout) -> anyhow::Result<ExitCode> {
    let online = crate::keys::load(
        &layout.online_key(),
        KeyRole::Online,
        "signing channel manifests",
    )?;
    let bare = layout.bare();
    let main = crate::source::read_revision(&bare, "main")
        .map(|(files, _)| files)
        .unwrap_or_default();
    let state_branch = main
        .text(gitfleet_policy::model::FLEET_FILE)
        .and_then(|t| FleetFile::decode(t).value)
        .and_then(|f| f.state_branch.map(|s| s.value))
        .unwrap_or_else(|| "gitfleet/state".to_owned());
    let mut remote = Remote::new(format!("file://{}", bare.display()));
    remote.state_branch = state_branch;
    let mirror = Mirror::open_or_clone(remote, &layout.mirror())?;
    let store_url = layout.store_url();
    let store = Store::open(&store_url)?;
    let mut reconciler = Reconciler::new(mirror, store, online.key, HOLDER.to_owned());
    // The agents' own: /metrics counts the reconciler's requests alone.
    let agents_store = Store::open(&store_url)?;

    let root = std::fs::read(layout.root())
        .with_context(|| format!("reading {}", layout.root().display()))?;
    let agents_dir = layout.agents();
    let agents = simulate::agents(&simulate::Setup {
        repo: &bare,
        rev: Some("main"),
        nodes: None,
        store: &agents_store,
        root: &root,
        root_name: &layout.root().display().to_string(),
        settings: SimSettings {
            apply_latency: args.apply_latency,
            failure_rate: args.failure_rate,
        },
        state_dir: Some(&agents_dir),
    })?;
    let node_count = agents.len();
    // In the order changes pass through them; any environment the repo
    // does not order (yet) after them.
    let model = gitfleet_policy::check(&main).model;
    let mut environments: Vec<String> = gitfleet_policy::plan::environment_order(&model)
        .into_iter()
        .filter(|e| agents.iter().any(|(a, _)| a == e))
        .map(str::to_owned)
        .collect();
    for (e, _) in &agents {
        if !environments.contains(e) {
            environments.push(e.clone());
        }
    }

    // The reconciler runs on its own thread: its git work blocks.
    let (pass_tx, mut pass_rx) = tokio::sync::watch::channel(Pass::default());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (trigger_tx, trigger_rx) = tokio::sync::mpsc::channel(1);
    let trigger_tx_pages = trigger_tx.clone();
    let watcher = crate::pass::trigger::watch_refs(&bare, trigger_tx)
        .map_err(|e| tracing::warn!(repo = %bare.display(), error = %e, "cannot watch the fleet repo; polling it every --interval"))
        .ok();
    let interval = args.interval;
    let pages = Arc::new(crate::web::AppState::new(
        None,
        trigger_tx_pages,
        chrono::Duration::seconds(60),
        Some(crate::web::Io::of(&mut reconciler)),
    ));
    let pages_of_passes = Arc::clone(&pages);
    let reconciler_thread = reconcile::spawn_passes(
        reconciler,
        interval,
        trigger_rx,
        stop_rx,
        move |result, took| {
            pages_of_passes.record(result, took);
            pass_tx.send_modify(|p| {
                p.at = Some(Utc::now());
                match result {
                    Ok(o) => {
                        p.commit.clone_from(&o.plan.commit);
                        p.plan = Some(o.plan.rollouts.clone());
                        p.repo_errors = o.plan.errors;
                        p.error = None;
                    }
                    Err(e) => p.error = Some(gitfleet_io::error_chain(e)),
                }
            });
        },
    )?;

    let work = layout.show(&layout.work());
    println!(
        "{node_count} simulated nodes in {}; the reconciler follows {} (branch main)",
        environments.join(", "),
        layout.show(&bare)
    );
    println!();
    println!("Change the fleet and watch it roll out:");
    println!("    cd {work}");
    println!("    $EDITOR configs/edge/sentinel.kdl        # say, a route's timeout");
    println!("    git commit -am \"edge: shorter timeout\" && git push");
    print!("{}", approval_hints(layout, &main));
    println!("Ctrl-C stops; `gitfleet up` again resumes where it stopped.");
    println!();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let timing = gitfleet_agent::cadence::Local {
        poll_ms: millis(args.poll),
        jitter_ms: millis(args.poll / 5),
        idle_poll_ms: millis(args.poll),
        heartbeat_ms: 5_000,
        drift: gitfleet_schemas::fleet::DriftPolicy::Report,
    };
    let tty = std::io::stdout().is_terminal();
    let reason = runtime.block_on(async {
        if let Some(addr) = args.listen {
            let listener = crate::web::listen(addr).await?;
            println!("Status pages: http://{}/", listener.local_addr()?);
            println!();
            tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, crate::web::router(pages)).await {
                    tracing::error!(error = %e, "serving the status pages");
                }
            });
        }
        let swarm = Swarm::start(agents, timing)?;
        let started = Instant::now();
        let mut deadline = std::pin::pin!(simulate::after(args.duration));
        let mut stop = std::pin::pin!(gitfleet_io::signals::shutdown());
        let mut ticker = tokio::time::interval(Duration::from_millis(500));
        let mut screen = Screen::new(tty);
        let reason = loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = pass_rx.changed() => {}
                () = &mut deadline => break "the duration is over",
                () = &mut stop => break "interrupted",
            }
            let pass = pass_rx.borrow_and_update().clone();
            screen.draw(&render(
                &pass,
                &swarm.views(),
                started.elapsed(),
                Utc::now(),
            ));
        };
        let views = swarm.views();
        swarm
            .stop(args.apply_latency + Duration::from_secs(5))
            .await;
        let pass = pass_rx.borrow().clone();
        screen.finish(&render(&pass, &views, started.elapsed(), Utc::now()));
        anyhow::Ok(reason)
    })?;
    let _ = stop_tx.send(true);
    drop(watcher);
    match reconciler_thread.join() {
        Ok(result) => result?,
        Err(_) => bail!("the reconciler thread panicked"),
    }
    println!("stopped: {reason}; run `gitfleet up` again to resume");
    Ok(ExitCode::SUCCESS)
}

/// How to give the approvals environments wait for, with the approver
/// keys set up in `layout`.
fn approval_hints(layout: &Layout, files: &RepoFiles) -> String {
    let Some(envs) = files
        .text(gitfleet_policy::model::ENVIRONMENTS_FILE)
        .and_then(|t| gitfleet_schemas::EnvironmentsFile::decode(t).value)
    else {
        return String::new();
    };
    let exe = std::env::current_exe()
        .map(|p| layout.show(&p))
        .unwrap_or_else(|_| "gitfleet".to_owned());
    let mut out = String::new();
    for env in &envs.environments {
        let Some(a) = &env.approvals else { continue };
        let keys: Vec<(String, PathBuf)> = a
            .users
            .iter()
            .map(|u| {
                (
                    u.value.clone(),
                    layout.keys().join(format!("approver-{}.key", u.value)),
                )
            })
            .filter(|(_, k)| k.exists())
            .collect();
        if keys.is_empty() {
            continue;
        }
        let names: Vec<&str> = keys.iter().map(|(n, _)| n.as_str()).collect();
        let _ = writeln!(
            out,
            "{} waits for {} approval(s) of each commit it is offered; give them as {} to all that wait there:",
            env.name.value,
            a.required.value,
            names.join(" and ")
        );
        for (_, key) in &keys {
            let _ = writeln!(
                out,
                "    {exe} approve --repo {} --env {} --key {} --all-waiting",
                layout.show(&layout.bare()),
                env.name.value,
                layout.show(key)
            );
        }
    }
    out
}

/// Draws the progress block: in place on a terminal; otherwise (a log, a
/// pipe) the whole block once, then only the rows that changed, each with
/// the time, and the whole block again at the end.
struct Screen {
    tty: bool,
    /// Lines drawn last time (terminal).
    drawn: usize,
    /// Each row as last printed (otherwise).
    last: BTreeMap<String, String>,
}

impl Screen {
    fn new(tty: bool) -> Screen {
        Screen {
            tty,
            drawn: 0,
            last: BTreeMap::new(),
        }
    }

    /// What a log gets of `block`: the whole block the first time, then the
    /// rows that changed, each with the time.
    fn changes(&mut self, block: &Block) -> Vec<String> {
        if self.last.is_empty() {
            self.last = block.rows.iter().cloned().collect();
            let mut all = block.lines(true);
            all.push(String::new());
            return all;
        }
        let mut out = Vec::new();
        for (key, row) in &block.rows {
            if self.last.get(key) != Some(row) {
                out.push(format!("[{:>4}s] {row}", block.elapsed));
                self.last.insert(key.clone(), row.clone());
            }
        }
        out
    }

    /// The last drawing: on a terminal as always, otherwise the whole block.
    fn finish(&mut self, block: &Block) {
        if self.tty {
            self.draw(block);
            return;
        }
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{}\n", block.lines(true).join("\n"));
        let _ = out.flush();
    }

    fn draw(&mut self, block: &Block) {
        let mut out = std::io::stdout().lock();
        if self.tty {
            let width = terminal_width().unwrap_or(120);
            let mut text = String::new();
            if self.drawn > 0 {
                // Up to the block's first line, then clear to the end.
                let _ = write!(text, "\x1b[{}F\x1b[J", self.drawn);
            }
            let lines = block.lines(true);
            for line in &lines {
                text.push_str(&truncate(line, width));
                text.push('\n');
            }
            self.drawn = lines.len();
            let _ = out.write_all(text.as_bytes());
        } else {
            for line in self.changes(block) {
                let _ = writeln!(out, "{line}");
            }
        }
        let _ = out.flush();
    }
}

fn terminal_width() -> Option<usize> {
    let size = rustix::termios::tcgetwinsize(std::io::stdout()).ok()?;
    (size.ws_col > 0).then_some(usize::from(size.ws_col))
}

/// `line` cut to `width` characters.
fn truncate(line: &str, width: usize) -> String {
    if line.chars().count() <= width {
        return line.to_owned();
    }
    let mut out: String = line.chars().take(width.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// One drawing of the progress block.
#[derive(Debug, PartialEq)]
struct Block {
    /// Seconds since `up` started.
    elapsed: u64,
    /// The line that changes with the clock alone.
    clock: String,
    lines: Vec<String>,
    /// The same content as rows that stand alone (a rollout row names its
    /// rollout), by a stable key: what a log shows when one changes.
    rows: Vec<(String, String)>,
}

impl Block {
    fn lines(&self, with_clock: bool) -> Vec<String> {
        let mut out = Vec::with_capacity(self.lines.len() + 1);
        if with_clock {
            out.push(self.clock.clone());
        }
        out.extend(self.lines.iter().cloned());
        out
    }
}

/// The progress block, from the last pass and what the agents run.
fn render(pass: &Pass, views: &[View], elapsed: Duration, now: DateTime<Utc>) -> Block {
    let polling = views.iter().filter(|v| v.polled).count();
    let unhealthy = views.iter().filter(|v| v.polled && !v.healthy).count();
    let clock = format!(
        "[{:>4}s] {} nodes, {polling} polling, {unhealthy} unhealthy; last pass {}",
        elapsed.as_secs(),
        views.len(),
        pass.at.map_or("not yet".to_owned(), |at| format!(
            "{}s ago",
            (now - at).num_seconds().max(0)
        ))
    );
    let mut lines = Vec::new();
    let mut rows: Vec<(String, String)> = Vec::new();
    if !pass.commit.is_empty() {
        let line = format!(
            "main at {}: {}",
            &pass.commit[..pass.commit.len().min(12)],
            match pass.repo_errors {
                0 => "no errors".to_owned(),
                n => format!("{n} error(s) in the fleet repo (gitfleet check shows them); their configs keep their last good bundle"),
            }
        );
        rows.push(("main".to_owned(), line.clone()));
        lines.push(line);
    }
    if let Some(e) = &pass.error {
        let line = format!("last pass failed: {e}");
        rows.push(("pass".to_owned(), line.clone()));
        lines.push(line);
    }
    // (rollout, environment) -> digest -> nodes running it
    let mut running: BTreeMap<(&str, &str), BTreeMap<&str, usize>> = BTreeMap::new();
    for v in views {
        for (r, d) in &v.running {
            *running
                .entry((r.as_str(), v.environment.as_str()))
                .or_default()
                .entry(d.as_str())
                .or_default() += 1;
        }
    }
    if let Some(plan) = &pass.plan {
        let width = plan
            .rollouts
            .iter()
            .map(|r| r.name.len())
            .max()
            .unwrap_or(0)
            .max("rollout".len());
        let env_width = plan
            .rollouts
            .iter()
            .flat_map(|r| r.environments.iter().map(|e| e.environment.len()))
            .max()
            .unwrap_or(0)
            .max("environment".len());
        lines.push(format!(
            "{:<width$}  {:<env_width$}  {:<17}  {:<w$}  nodes  step  why",
            "rollout",
            "environment",
            "phase",
            "on the new bundle",
            w = BAR + 2
        ));
        for r in &plan.rollouts {
            for (i, e) in r.environments.iter().enumerate() {
                // Nodes on the new bundle: each proxy's own.
                let on_target = running
                    .get(&(r.name.as_str(), e.environment.as_str()))
                    .map_or(0, |d| {
                        std::iter::once(&e.after.target)
                            .chain(e.after.variants.values().map(|v| &v.target))
                            .filter_map(|b| d.get(b.digest.as_str()))
                            .sum()
                    });
                let row = |name: &str, reason: &str| {
                    format!(
                        "{name:<width$}  {:<env_width$}  {:<17}  {}  {:>5}  {:>4}  {reason}",
                        e.environment,
                        e.after.phase.to_string(),
                        bar(on_target, e.targets),
                        format!("{on_target}/{}", e.targets),
                        format!("{}/{}", e.after.step, e.steps),
                    )
                };
                let name = if i == 0 { r.name.as_str() } else { "" };
                let sick = views
                    .iter()
                    .filter(|v| {
                        v.environment == e.environment
                            && !v.healthy
                            && v.running.iter().any(|(rn, _)| *rn == r.name)
                    })
                    .count();
                let said = for_people(&e.after.reason, now);
                let reason = match e.after.phase {
                    Phase::Complete if sick == 0 => String::new(),
                    _ if sick > 0 => format!("{sick} unhealthy; {said}"),
                    _ => said,
                };
                lines.push(row(name, &reason));
                rows.push((
                    format!("rollout {} {}", r.name, e.environment),
                    row(&r.name, &reason),
                ));
            }
        }
    } else if pass.error.is_none() {
        lines.push("waiting for the first reconcile pass".to_owned());
    }
    if let Some(e) = views.iter().find_map(|v| v.error.as_deref()) {
        let n = views.iter().filter(|v| v.error.is_some()).count();
        let line = format!("{n} node(s) report errors, e.g.: {e}");
        rows.push(("node errors".to_owned(), line.clone()));
        lines.push(line);
    }
    Block {
        elapsed: elapsed.as_secs(),
        clock,
        lines,
        rows,
    }
}

/// A planner's reason as a person wants it on screen: `baking until <time>`
/// (stable, so the state does not change every pass) becomes how long is
/// left.
fn for_people(reason: &str, now: DateTime<Utc>) -> String {
    const BAKING: &str = "baking until ";
    let Some(at) = reason.find(BAKING) else {
        return reason.to_owned();
    };
    let rest = &reason[at + BAKING.len()..];
    let end = rest.find([' ', ';', ',']).unwrap_or(rest.len());
    let Ok(until) = DateTime::parse_from_rfc3339(&rest[..end]) else {
        return reason.to_owned();
    };
    let left = (until.with_timezone(&Utc) - now).num_seconds();
    let said = if left > 0 {
        format!("baking, {} left", crate::fmt::age(left))
    } else {
        "baked".to_owned()
    };
    format!("{}{said}{}", &reason[..at], &rest[end..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> PublicKey {
        PublicKey(SigningKey::from_bytes(&[n; 32]).verifying_key().to_bytes())
    }

    #[test]
    fn the_built_in_example_is_the_example_directory() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/fleet-repo");
        let (on_disk, _) = crate::source::read_worktree(&dir).expect("the example fleet repo");
        let built_in = example();
        let names = |f: &RepoFiles| f.iter().map(|(p, _)| p.to_owned()).collect::<Vec<_>>();
        assert_eq!(names(&built_in), names(&on_disk), "update EXAMPLE in up.rs");
        for (path, bytes) in on_disk.iter() {
            assert_eq!(built_in.get(path), Some(bytes), "{path}");
        }
    }

    #[test]
    fn the_demo_copy_trusts_new_keys_and_checks_clean() {
        let keys = [key(1), key(2), key(3)];
        let copy = demo_files(
            &example(),
            &Demo {
                root_keys: &keys,
                approvers: &[("alice".to_owned(), key(4)), ("bob".to_owned(), key(5))],
                store_url: "file:///tmp/demo/store",
                timings: Some((Duration::from_secs(5), DEMO_DEADLINE)),
            },
        )
        .expect("the example can be made a demo");
        let fleet = FleetFile::decode(copy.text("fleet.kdl").expect("fleet.kdl"))
            .value
            .expect("fleet.kdl decodes");
        let trust = fleet.trust.expect("a trust block");
        let got: Vec<String> = trust.root_keys.iter().map(|k| k.value.clone()).collect();
        let want: Vec<String> = keys.iter().map(ToString::to_string).collect();
        assert_eq!(got, want);
        assert_eq!(
            fleet.store.map(|s| s.value).as_deref(),
            Some("file:///tmp/demo/store")
        );
        assert_eq!(fleet.defaults.bake_seconds.map(|b| b.value), Some(5));
        // The example's poll-interval would win over --poll.
        assert_eq!(fleet.defaults.poll_interval_seconds, None);
        let edge = RolloutFile::decode(copy.text("rollouts/edge.kdl").expect("edge rollout"))
            .value
            .expect("edge rollout decodes");
        assert_eq!(edge.bake_seconds.map(|b| b.value), Some(5));
        assert_eq!(edge.progress_deadline_seconds.map(|b| b.value), Some(120));
        let node = NodeFile::decode(copy.text("nodes/edge-fra-1.kdl").expect("a node"))
            .value
            .expect("the node decodes");
        assert_eq!(
            node.node_key.value,
            PublicKey(sim_key("edge-fra-1").verifying_key().to_bytes()).to_string()
        );
        let approvers: Vec<(String, String)> = fleet
            .approvers
            .iter()
            .map(|a| (a.name.value.clone(), a.key.value.clone()))
            .collect();
        assert_eq!(
            approvers,
            vec![
                ("alice".to_owned(), key(4).to_string()),
                ("bob".to_owned(), key(5).to_string())
            ]
        );
        // Comments stay.
        assert!(copy
            .text("fleet.kdl")
            .expect("fleet.kdl")
            .contains("// Offline root keys."));
        let checked = gitfleet_policy::check(&copy);
        let errors: Vec<_> = checked
            .diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .collect();
        assert!(errors.is_empty(), "{errors:#?}");
    }

    #[test]
    fn keep_timings_leaves_bakes_alone() {
        let keys = [key(1), key(2), key(3)];
        let copy = demo_files(
            &example(),
            &Demo {
                root_keys: &keys,
                approvers: &[],
                store_url: "file:///s",
                timings: None,
            },
        )
        .expect("the example can be made a demo");
        assert_eq!(
            copy.get("rollouts/edge.kdl"),
            example().get("rollouts/edge.kdl")
        );
    }

    #[test]
    fn a_repo_with_another_number_of_root_keys_is_refused() {
        let keys = [key(1)];
        let err = demo_files(
            &example(),
            &Demo {
                root_keys: &keys,
                approvers: &[],
                store_url: "file:///s",
                timings: None,
            },
        )
        .expect_err("three root keys in fleet.kdl, one given");
        assert!(err.to_string().starts_with("fleet.kdl: "), "{err}");
    }

    #[test]
    fn an_edit_replaces_only_the_quoted_value() {
        let text = "bake \"10m\" // ten\nstore \"file:///x\"\n";
        let edits = vec![
            Edit {
                span: Span::new(5, 10),
                value: "5s".to_owned(),
            },
            Edit {
                span: Span::new(24, 35),
                value: "file:///y \"q\"".to_owned(),
            },
        ];
        assert_eq!(
            apply("f.kdl", text, edits).expect("both spans hold strings"),
            "bake \"5s\" // ten\nstore \"file:///y \\\"q\\\"\"\n"
        );
        let bad = vec![Edit {
            span: Span::new(0, 4),
            value: "x".to_owned(),
        }];
        assert!(matches!(
            apply("f.kdl", text, bad),
            Err(DemoError::NotAString { offset: 0, .. })
        ));
    }

    #[test]
    fn bars_fill_in_proportion() {
        assert_eq!(bar(0, 4), format!("[{}]", ".".repeat(20)));
        assert_eq!(bar(2, 4), format!("[{}{}]", "#".repeat(10), ".".repeat(10)));
        assert_eq!(bar(4, 4), format!("[{}]", "#".repeat(20)));
        assert_eq!(bar(1, 0), format!("[{}]", ".".repeat(20)));
        // One node of many still shows.
        assert_eq!(bar(1, 1000), format!("[#{}]", ".".repeat(19)));
    }

    #[test]
    fn lines_fit_the_terminal() {
        assert_eq!(truncate("abcdef", 10), "abcdef");
        assert_eq!(truncate("abcdef", 4), "abc…");
    }

    #[test]
    fn before_the_first_pass_the_block_says_so() {
        let now = Utc::now();
        let block = render(&Pass::default(), &[], Duration::from_secs(3), now);
        assert_eq!(
            block.clock,
            "[   3s] 0 nodes, 0 polling, 0 unhealthy; last pass not yet"
        );
        assert_eq!(block.lines, vec!["waiting for the first reconcile pass"]);
    }

    #[test]
    fn a_bake_shows_the_time_left_not_the_time_it_ends() {
        let now = DateTime::parse_from_rfc3339("2026-12-03T07:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            for_people("step 1/3: baking until 2026-12-03T07:00:04Z", now),
            "step 1/3: baking, 4s left"
        );
        assert_eq!(
            for_people("step 2/2: baking until 2026-12-03T07:02:05Z", now),
            "step 2/2: baking, 2m05s left"
        );
        assert_eq!(
            for_people("step 1/3: baking until 2026-12-03T06:59:00Z", now),
            "step 1/3: baked"
        );
        assert_eq!(
            for_people("awaiting 2 approvals", now),
            "awaiting 2 approvals"
        );
    }

    #[test]
    fn a_log_gets_the_block_once_then_only_the_rows_that_changed() {
        let block = |elapsed, rows: &[(&str, &str)]| Block {
            elapsed,
            clock: format!("[{elapsed:>4}s] clock"),
            lines: rows.iter().map(|(_, r)| (*r).to_owned()).collect(),
            rows: rows
                .iter()
                .map(|(k, r)| ((*k).to_owned(), (*r).to_owned()))
                .collect(),
        };
        let mut screen = Screen::new(false);
        let first = screen.changes(&block(
            1,
            &[("a", "edge dev progressing"), ("b", "edge prod pending")],
        ));
        assert_eq!(
            first,
            [
                "[   1s] clock",
                "edge dev progressing",
                "edge prod pending",
                ""
            ]
        );
        // The clock alone moved: nothing.
        assert!(screen
            .changes(&block(
                2,
                &[("a", "edge dev progressing"), ("b", "edge prod pending")]
            ))
            .is_empty());
        // One row changed: that row, with its rollout named and the time.
        assert_eq!(
            screen.changes(&block(
                3,
                &[("a", "edge dev complete"), ("b", "edge prod pending")]
            )),
            ["[   3s] edge dev complete"]
        );
    }

    #[test]
    fn poll_settings_are_cut_wherever_they_are_written() {
        let text = "version 1\nname \"f\"\ndefaults {\n    poll-interval \"30s\"\n    drift \"report\"; poll-jitter \"3s\"; bake \"5m\"\n}\n";
        assert_eq!(
            without_poll_intervals(text),
            "version 1\nname \"f\"\ndefaults {\n    // gitfleet up: agents poll at --poll\n    drift \"report\";  bake \"5m\"\n}\n"
        );
    }
}
