//! `gitfleet events`: what happened, in one timeline: on the nodes, from
//! the signed event objects agents write to the store
//! (`events/<day>/<node>.json`), each verified against its node's key from
//! the fleet repo; and to the rollouts, from the state branch's commits
//! (each change of a rollout's state, as `policy::notify` reads it).

use std::collections::{BTreeSet, HashMap};
use std::io::Write as _;
use std::process::ExitCode;

use anyhow::Context as _;
use chrono::{DateTime, NaiveDate, Utc};
use gitfleet_io::store::{ETag, Fetch, Store};
use gitfleet_schemas::events::{EventKind, NodeEvent};
use gitfleet_schemas::keys;
use gitfleet_schemas::notify::{Notification, NotifyKind};
use gitfleet_schemas::state::RolloutState;
use gitfleet_schemas::trust::PublicKey;
use serde::Serialize;

use crate::fmt::printable;
use crate::pass::observe::CheckedCommit;
use crate::setup::{open_store, GitArgs};

/// Show what happened, oldest first: on the nodes (activations,
/// rollbacks, refused configs, drift found or repaired, the store going
/// away and back, root rotations) and to the rollouts (started, a step
/// completed, completed, failed, rolled back, waiting for approval).
///
/// Agents write their events to the object store with their status
/// reports, one signed object per node and UTC day
/// (events/<YYYY-MM-DD>/<node>.json); only events signed by the node's key
/// in the fleet repo are shown. Reading one node's events costs one GET per
/// day; all nodes' events, a listing and a GET per node with events that
/// day. Rollout events are read from the state branch's history (git
/// only); --node leaves them out.
///
/// Output: one line per event (human), or one JSON object per line
/// (--format json: at, node, environment, kind, rollout, step, bundle,
/// detail; absent fields are left out).
///
/// Examples:
///   gitfleet events --repo .gitfleet/up/fleet.git --node edge-1
///   gitfleet events --since 7d --kind drift-repaired --kind rolled-back
///   gitfleet events --rollout api-gateway --follow
///   gitfleet events --kind rollout-rolled-back --kind rollout-failed --since 30d
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct EventsArgs {
    #[command(flatten)]
    git: GitArgs,
    /// Object store URL; defaults to the `store` of fleet.kdl.
    #[arg(long, env = "GITFLEET_STORE")]
    store: Option<String>,
    /// Where the local mirror of the repo is kept.
    #[arg(
        long,
        env = "GITFLEET_EVENTS_CACHE",
        default_value = ".gitfleet/events-mirror"
    )]
    cache: std::path::PathBuf,
    /// Only this node's events.
    #[arg(long, value_name = "ID")]
    node: Option<String>,
    /// Only events about this rollout.
    #[arg(long, value_name = "NAME")]
    rollout: Option<String>,
    /// Only events of these kinds (repeat for several).
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(kind_names()))]
    kind: Vec<String>,
    /// How far back.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    since: std::time::Duration,
    /// Keep going: print new events as they are written, until Ctrl-C.
    #[arg(long)]
    follow: bool,
    /// How often --follow looks (one conditional GET per node and day).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    interval: std::time::Duration,
    #[arg(long, value_enum, default_value_t = Format::Human)]
    format: Format,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    Human,
    Json,
}

/// `--kind`: the node event kinds and the rollout event kinds, by their
/// JSON names.
fn kind_names() -> Vec<&'static str> {
    let mut names: Vec<&'static str> = EventKind::ALL.map(EventKind::name).to_vec();
    names.extend(NotifyKind::ROLLOUT.map(NotifyKind::as_str));
    names
}

/// How many state branch commits a look walks at most.
const STATE_WALK_LIMIT: usize = 5000;

/// One line of output.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
struct Line {
    at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    node: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    environment: Option<String>,
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    rollout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    step: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bundle: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<String>,
}

impl Line {
    fn new(node: &str, e: NodeEvent) -> Line {
        Line {
            at: e.at,
            node: Some(node.to_owned()),
            environment: None,
            kind: e.kind.name(),
            rollout: e.rollout,
            step: None,
            bundle: e.bundle,
            detail: e.detail,
        }
    }

    /// A rollout's change, as the state branch recorded it.
    fn rollout(n: Notification) -> Line {
        Line {
            at: n.at,
            node: None,
            environment: n.environment,
            kind: n.kind.as_str(),
            rollout: n.rollout,
            step: n.step,
            bundle: n.target,
            detail: Some(n.summary),
        }
    }

    fn human(&self) -> String {
        let mut out = format!(
            "{}  {}  {}",
            self.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            match (&self.node, &self.environment) {
                (Some(node), _) => node.clone(),
                (None, Some(env)) => format!("[{env}]"),
                (None, None) => "-".to_owned(),
            },
            self.kind
        );
        if let Some(r) = &self.rollout {
            out.push_str(&format!("  rollout {r}"));
        }
        if let Some(s) = self.step {
            out.push_str(&format!("  step {s}"));
        }
        if let Some(b) = &self.bundle {
            out.push_str(&format!("  bundle {}", crate::fmt::short_digest(b)));
        }
        if let Some(d) = &self.detail {
            out.push_str(&format!("  {d}"));
        }
        printable(&out)
    }
}

/// What the command keeps between looks.
struct Reader {
    store: Store,
    fleet: String,
    keys: HashMap<String, PublicKey>,
    /// The version of each object last read, to skip unchanged ones.
    etags: HashMap<String, ETag>,
    /// Lines already printed (an object is rewritten whole).
    seen: BTreeSet<Line>,
}

impl Reader {
    /// Events of `day`, of `node` or every node, not seen before.
    async fn day(&mut self, day: NaiveDate, node: Option<&str>) -> anyhow::Result<Vec<Line>> {
        let objects: Vec<String> = match node {
            Some(node) => vec![keys::events(day, node)],
            None => self
                .store
                .list(&keys::events_day(day))
                .await
                .with_context(|| format!("listing {}", keys::events_day(day)))?,
        };
        let mut out = Vec::new();
        for object in objects {
            let Some(node) = keys::events_node(&object).map(str::to_owned) else {
                continue;
            };
            let Some(key) = self.keys.get(&node) else {
                eprintln!("warning: {object}: no node {node} in the fleet repo; skipped");
                continue;
            };
            let fetched = self
                .store
                .get_if_changed(&object, self.etags.get(&object))
                .await
                .with_context(|| format!("reading {object}"))?;
            let bytes = match fetched {
                Fetch::Found(o) => {
                    self.etags.insert(object.clone(), o.etag);
                    o.bytes
                }
                Fetch::NotModified | Fetch::Missing => continue,
            };
            match gitfleet_schemas::verify::verify_node_events(&bytes, &self.fleet, &node, key) {
                Ok(events) if events.day != day => {
                    eprintln!(
                        "warning: {object}: holds the events of {}; skipped",
                        events.day
                    );
                }
                Ok(events) => {
                    if events.dropped > 0 {
                        eprintln!(
                            "note: {node} had more events on {day} than are kept: the first {} are gone",
                            events.dropped
                        );
                    }
                    for e in events.into_inner().events {
                        let line = Line::new(&node, e);
                        if self.seen.insert(line.clone()) {
                            out.push(line);
                        }
                    }
                }
                Err(e) => eprintln!("warning: {object}: {e}; skipped"),
            }
        }
        Ok(out)
    }
}

/// The rollout events of the state branch's commits after `from` (or, when
/// following, after `last`, the tip looked at before), newest commit last.
fn rollout_lines(
    mirror: &crate::git::Mirror,
    fleet: &str,
    from: DateTime<Utc>,
    last: Option<git2::Oid>,
) -> anyhow::Result<(Vec<Line>, Option<git2::Oid>)> {
    let history = mirror
        .state_history(STATE_WALK_LIMIT, |commit, _, time| {
            Some(commit) == last || time < from
        })
        .context("reading the state branch's history")?;
    let mut lines = Vec::new();
    for change in history.changes.iter().rev() {
        let commit = change.commit.to_string();
        for (rollout, before, after) in &change.rollouts {
            let parse = |b: &Option<Vec<u8>>| -> Option<RolloutState> {
                serde_json::from_slice(b.as_ref()?).ok()
            };
            let notes = gitfleet_policy::notify::rollout_notifications(
                fleet,
                &commit,
                rollout,
                parse(before).as_ref(),
                parse(after).as_ref(),
            );
            lines.extend(notes.into_iter().map(Line::rollout));
        }
    }
    Ok((lines, history.tip.map(|(tip, _, _)| tip).or(last)))
}

pub fn run(args: &EventsArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let mirror = crate::setup::open_mirror(&args.git, &args.cache)?;
    let store = open_store(&mirror, args.store.as_deref())?;
    // Only the node keys are needed: the branch tip, checked; no reports.
    let heads = mirror.fetch()?;
    let files = mirror.files_at(heads.branch)?;
    let checked = CheckedCommit::new(gitfleet_policy::check(&files));
    let since = chrono::Duration::from_std(args.since).context("--since is too long")?;
    let kinds = &args.kind;
    runtime.block_on(async {
        let fleet = checked
            .fleet()
            .context("fleet.kdl names no fleet")?
            .to_owned();
        if let Some(node) = &args.node {
            if !checked.node_keys.contains_key(node) {
                anyhow::bail!("no node {node} in the fleet repo");
            }
        }
        let mut reader = Reader {
            store,
            fleet,
            keys: checked.node_keys.clone(),
            etags: HashMap::new(),
            seen: BTreeSet::new(),
        };
        let from = Utc::now() - since;
        let mut stop = std::pin::pin!(gitfleet_io::signals::shutdown());
        let mut first = from.date_naive();
        let mut state_tip = None;
        let mut told = BTreeSet::new();
        let mut fetched = true;
        loop {
            let today = Utc::now().date_naive();
            let mut lines = Vec::new();
            if args.node.is_none() {
                if !fetched {
                    if let Err(e) = mirror.fetch() {
                        eprintln!("warning: {}; trying again", gitfleet_io::error_chain(&e));
                    }
                }
                fetched = false;
                let (more, tip) = rollout_lines(&mirror, &reader.fleet, from, state_tip)?;
                // A compacted branch is walked again from --since: only
                // what was not printed yet.
                lines.extend(more.into_iter().filter(|l| told.insert(l.clone())));
                state_tip = tip;
            }
            let mut day = first;
            while day <= today {
                match reader.day(day, args.node.as_deref()).await {
                    Ok(more) => lines.extend(more),
                    // Following rides out a moment without the store.
                    Err(e) if args.follow => {
                        eprintln!(
                            "warning: {e:#}; trying again in {}",
                            humantime::format_duration(args.interval)
                        );
                    }
                    Err(e) => return Err(e),
                }
                day = day.succ_opt().context("the calendar ended")?;
            }
            lines.retain(|l| {
                l.at >= from
                    && args
                        .rollout
                        .as_ref()
                        .is_none_or(|r| l.rollout.as_ref() == Some(r))
                    && (kinds.is_empty() || kinds.iter().any(|k| k == l.kind))
            });
            // By time; events of one moment in the order they were told (a
            // commit's start before its steps, its steps before its end).
            lines.sort_by_key(|l| l.at);
            let mut out = std::io::stdout().lock();
            for line in &lines {
                match args.format {
                    Format::Human => writeln!(out, "{}", line.human())?,
                    Format::Json => writeln!(out, "{}", serde_json::to_string(line)?)?,
                }
            }
            out.flush()?;
            if !args.follow {
                return Ok(ExitCode::SUCCESS);
            }
            // Only today (and yesterday, for a day that just turned) can grow.
            first = today.pred_opt().unwrap_or(today).max(from.date_naive());
            tokio::select! {
                () = tokio::time::sleep(args.interval) => {}
                () = &mut stop => return Ok(ExitCode::SUCCESS),
            }
        }
    })
}
