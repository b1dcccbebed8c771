//! `gitfleet events`: what happened on the nodes, from the signed event
//! objects agents write to the store (`events/<day>/<node>.json`), each
//! verified against its node's key from the fleet repo.

use std::collections::{BTreeSet, HashMap};
use std::io::Write as _;
use std::process::ExitCode;

use anyhow::Context as _;
use chrono::{DateTime, NaiveDate, Utc};
use gitfleet_io::store::{ETag, Fetch, Store};
use gitfleet_schemas::events::{EventKind, NodeEvent};
use gitfleet_schemas::keys;
use gitfleet_schemas::trust::PublicKey;
use serde::Serialize;

use crate::fmt::printable;
use crate::pass::observe::CheckedCommit;
use crate::setup::{open_store, GitArgs};

/// Show what happened on the nodes: activations, rollbacks, refused
/// configs, drift found or repaired, the store going away and back, root
/// rotations; oldest first.
///
/// Agents write their events to the object store with their status
/// reports, one signed object per node and UTC day
/// (events/<YYYY-MM-DD>/<node>.json); only events signed by the node's key
/// in the fleet repo are shown. Reading one node's events costs one GET per
/// day; all nodes' events, a listing and a GET per node with events that
/// day.
///
/// Output: one line per event (human), or one JSON object per line
/// (--format json: at, node, kind, rollout, bundle, detail; absent fields
/// are left out).
///
/// Examples:
///   gitfleet events --repo .gitfleet/up/fleet.git --node edge-1
///   gitfleet events --since 7d --kind drift-repaired --kind rolled-back
///   gitfleet events --rollout api-gateway --follow
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
    #[arg(long, value_parser = kind_parser())]
    kind: Vec<EventKind>,
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

/// `--kind`: the event kinds by their JSON names.
fn kind_parser() -> impl clap::builder::TypedValueParser<Value = EventKind> {
    use clap::builder::TypedValueParser as _;
    clap::builder::PossibleValuesParser::new(EventKind::ALL.map(EventKind::name)).map(|name| {
        EventKind::ALL
            .into_iter()
            .find(|k| k.name() == name)
            .unwrap_or(EventKind::Activated)
    })
}

/// One line of output.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
struct Line {
    at: DateTime<Utc>,
    node: String,
    kind: EventKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    rollout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bundle: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<String>,
}

impl Line {
    fn new(node: &str, e: NodeEvent) -> Line {
        Line {
            at: e.at,
            node: node.to_owned(),
            kind: e.kind,
            rollout: e.rollout,
            bundle: e.bundle,
            detail: e.detail,
        }
    }

    fn human(&self) -> String {
        let mut out = format!(
            "{}  {}  {}",
            self.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            self.node,
            self.kind.name()
        );
        if let Some(r) = &self.rollout {
            out.push_str(&format!("  rollout {r}"));
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
        loop {
            let today = Utc::now().date_naive();
            let mut lines = Vec::new();
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
                    && (kinds.is_empty() || kinds.contains(&l.kind))
            });
            lines.sort();
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
