//! `gitfleet simulate`: one in-process agent per node of a fleet repo, each
//! running the real agent's verification and decision code
//! ([`gitfleet_agent::core::Agent`]) over a simulated node
//! ([`gitfleet_agent::sim::SimNode`]), against any store.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use chrono::Utc;
use gitfleet_agent::cadence::{Cadence, Local};
use gitfleet_agent::core::{Agent, Identity, Polled};
use gitfleet_agent::sim::{sim_key, SimNode, SimSettings};
use gitfleet_io::store::Store;
use gitfleet_schemas::agent::{LocalState, DEFAULT_MAX_BUNDLE_BYTES, LOCAL_STATE_FORMAT};
use gitfleet_schemas::fleet::DriftPolicy;
use gitfleet_schemas::trust::PublicKey;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Run simulated agents, one per node of a fleet repo, against a store.
///
/// Each simulated agent runs the real agent's code: it polls its
/// environment's channel manifest, verifies it against the root, works out
/// its own membership, downloads and verifies bundles and writes signed
/// status reports. Only activation is simulated: it takes --apply-latency,
/// and with --failure-rate P a node is unhealthy on a bundle for a fraction
/// P of (node, bundle) pairs, the same ones on every run, so health gates
/// trip and the reconciler rolls the bundle back.
///
/// Nodes sign their reports with a key derived from their id (for
/// simulations only: anyone can compute it). The reconciler accepts a
/// report only when the node's `node-key` in the fleet repo is that key;
/// `--print-keys` lists them for setting up a test fleet.
///
/// Progress (which bundle each rollout's nodes run) goes to stderr every
/// few seconds. Ctrl-C stops cleanly; with --state-dir a later run resumes
/// where this one stopped.
///
/// Examples:
///   gitfleet simulate --print-keys --repo fleet
///   gitfleet simulate --repo fleet --store file:///tmp/store --root root/1.json \
///       --nodes 100 --failure-rate 0.05 --apply-latency 500ms --poll 2s
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct SimulateArgs {
    /// The fleet repo (a directory); its nodes/ are the nodes simulated.
    #[arg(long, default_value = ".")]
    repo: PathBuf,
    /// The object store URL the reconciler publishes to.
    #[arg(long, env = "GITFLEET_STORE", required_unless_present = "print_keys")]
    store: Option<String>,
    /// The fleet's first root (root/1.json) the agents pin.
    #[arg(long, value_name = "FILE", required_unless_present = "print_keys")]
    root: Option<PathBuf>,
    /// Simulate only the first N nodes, by id.
    #[arg(long, value_name = "N")]
    nodes: Option<usize>,
    /// The fraction (0 to 1) of (node, bundle) pairs that are unhealthy
    /// once activated.
    #[arg(long, value_name = "P", default_value_t = 0.0, value_parser = parse_rate)]
    failure_rate: f64,
    /// How long an activation takes.
    #[arg(long, value_name = "D", default_value = "200ms", value_parser = humantime::parse_duration)]
    apply_latency: Duration,
    /// Time between polls of the channel manifest while a rollout moves
    /// in the node's environment (or the fleet does not say).
    #[arg(long, value_name = "D", default_value = "5s", value_parser = humantime::parse_duration)]
    poll: Duration,
    /// Time between polls while the signed manifest says no rollout moves
    /// in the node's environment (fleets with `report-to`), as agent.kdl's
    /// `poll idle=` (default: --poll). The fleet's own poll settings win
    /// over both, as on a real agent.
    #[arg(long, value_name = "D", value_parser = humantime::parse_duration)]
    idle_poll: Option<Duration>,
    /// Up to this much is added to each poll interval at random
    /// (default: a tenth of --poll).
    #[arg(long, value_name = "D", value_parser = humantime::parse_duration)]
    jitter: Option<Duration>,
    /// A status report is written at least this often.
    #[arg(long, value_name = "D", default_value = "30s", value_parser = humantime::parse_duration)]
    heartbeat: Duration,
    /// Stop after this long (default: run until Ctrl-C).
    #[arg(long, value_name = "D", value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Keep each node's state here (<node>.json, as an agent's state.json),
    /// so the next run resumes from it.
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Time between progress lines on stderr.
    #[arg(long, value_name = "D", default_value = "5s", value_parser = humantime::parse_duration)]
    progress: Duration,
    /// Print `<node> <public key>` for every simulated node (the node-key
    /// its nodes/<id>.kdl must name) and exit.
    #[arg(long)]
    print_keys: bool,
    /// Delay every store request by this much (a listing: per 1,000 keys),
    /// to stand in for S3 (about 20ms) with a local store.
    #[arg(long, value_name = "D", value_parser = humantime::parse_duration)]
    store_latency: Option<Duration>,
}

pub(crate) fn parse_rate(s: &str) -> Result<f64, String> {
    let p: f64 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a number between 0 and 1"))?;
    if !(0.0..=1.0).contains(&p) {
        return Err(format!("{p} is not between 0 and 1"));
    }
    Ok(p)
}

/// A node of the fleet repo.
struct SimNodeSpec {
    identity: Identity,
    /// Whether the repo's `node-key` is the node's simulator key.
    key_matches: bool,
}

/// The nodes to simulate: valid ones, sorted by id, the first `limit`.
fn nodes(
    repo: &Path,
    rev: Option<&str>,
    limit: Option<usize>,
) -> anyhow::Result<(String, Vec<SimNodeSpec>)> {
    let loaded = super::check::load(repo, rev)?;
    let errors = loaded
        .checked
        .diagnostics
        .iter()
        .filter(|d| d.severity == gitfleet_schemas::Severity::Error)
        .count();
    if errors > 0 {
        tracing::warn!(
            repo = %repo.display(),
            errors,
            "the fleet repo has errors (see gitfleet check); simulating the nodes it names anyway"
        );
    }
    let model = &loaded.checked.model;
    let fleet = model
        .fleet
        .as_ref()
        .map(|f| f.doc.name.value.clone())
        .with_context(|| format!("{}: fleet.kdl could not be read", repo.display()))?;
    let drift = model
        .fleet
        .as_ref()
        .and_then(|f| f.doc.defaults.drift.as_ref())
        .map_or(DriftPolicy::Report, |d| d.value);
    let mut out: Vec<SimNodeSpec> = model
        .nodes
        .iter()
        .filter(|n| {
            gitfleet_policy::valid_name(&n.doc.id.value)
                && gitfleet_policy::valid_name(&n.doc.environment.value)
        })
        .map(|n| {
            let id = n.doc.id.value.clone();
            let sim = PublicKey(sim_key(&id).verifying_key().to_bytes());
            SimNodeSpec {
                key_matches: PublicKey::parse(&n.doc.node_key.value).ok() == Some(sim),
                identity: Identity {
                    node: id,
                    environment: n.doc.environment.value.clone(),
                    labels: n
                        .doc
                        .labels
                        .iter()
                        .map(|(k, v)| (k.clone(), v.value.clone()))
                        .collect(),
                    drift,
                    max_bundle_bytes: DEFAULT_MAX_BUNDLE_BYTES,
                    proxy: gitfleet_schemas::Proxy::legacy(),
                },
            }
        })
        .collect();
    out.sort_by(|a, b| a.identity.node.cmp(&b.identity.node));
    out.dedup_by(|a, b| a.identity.node == b.identity.node);
    if let Some(n) = limit {
        if n > out.len() {
            bail!(
                "--nodes {n}: the fleet repo at {} has only {} nodes",
                repo.display(),
                out.len()
            );
        }
        out.truncate(n);
    }
    if out.is_empty() {
        bail!("the fleet repo at {} names no nodes", repo.display());
    }
    Ok((fleet, out))
}

pub fn run(args: &SimulateArgs) -> anyhow::Result<ExitCode> {
    if args.print_keys {
        use std::io::Write as _;
        let (_, specs) = nodes(&args.repo, None, args.nodes)?;
        let mut out = std::io::stdout().lock();
        for s in &specs {
            let public = PublicKey(sim_key(&s.identity.node).verifying_key().to_bytes());
            match writeln!(out, "{} {public}", s.identity.node) {
                Ok(()) => {}
                // `| head`: the reader has what it wanted.
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => break,
                Err(e) => return Err(e).context("writing the keys"),
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let (Some(store_url), Some(root_path)) = (&args.store, &args.root) else {
        bail!("--store and --root are required unless --print-keys is given");
    };
    let root_bytes =
        std::fs::read(root_path).with_context(|| format!("reading {}", root_path.display()))?;
    // One store for all: one connection pool, and one count of requests.
    let store = Store::open(store_url)?;
    let store = match args.store_latency {
        Some(by) => store.with_latency(by),
        None => store,
    };
    let agents = agents(&Setup {
        repo: &args.repo,
        rev: None,
        nodes: args.nodes,
        store: &store,
        root: &root_bytes,
        root_name: &root_path.display().to_string(),
        settings: SimSettings {
            apply_latency: args.apply_latency,
            failure_rate: args.failure_rate,
        },
        state_dir: args.state_dir.as_deref(),
    })?;
    let timing = Local {
        poll_ms: millis(args.poll),
        jitter_ms: millis(args.jitter.unwrap_or(args.poll / 10)),
        idle_poll_ms: millis(args.idle_poll.unwrap_or(args.poll)),
        heartbeat_ms: millis(args.heartbeat),
        drift: DriftPolicy::Report,
    };

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    eprintln!(
        "simulating {} nodes against {store_url} (poll {}, apply latency {}, failure rate {}); Ctrl-C stops",
        agents.len(),
        humantime::format_duration(args.poll),
        humantime::format_duration(args.apply_latency),
        args.failure_rate
    );
    let nodes = agents.len();
    let started = Instant::now();
    runtime.block_on(simulate(agents, timing, args))?;
    {
        let c = store.counts();
        let minutes = started.elapsed().as_secs_f64() / 60.0;
        let per = |n: u64| n as f64 / nodes as f64 / minutes.max(1.0 / 60.0);
        eprintln!(
            "store requests by the agents: {} GET ({} not modified), {} PUT, {} LIST; per node and minute: {:.2} GET, {:.2} PUT",
            c.get + c.get_not_modified,
            c.get_not_modified,
            c.put + c.put_conditional,
            c.list,
            per(c.get + c.get_not_modified),
            per(c.put + c.put_conditional),
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// What simulated agents are made from.
#[derive(Debug)]
pub struct Setup<'a> {
    /// The fleet repo (a directory); its nodes are the nodes simulated.
    pub repo: &'a Path,
    /// Read this revision of it instead of its files.
    pub rev: Option<&'a str>,
    /// Only the first N nodes, by id.
    pub nodes: Option<usize>,
    /// The store every agent polls and reports to (one pool, one count).
    pub store: &'a Store,
    /// The first root the agents pin, and where it came from.
    pub root: &'a [u8],
    pub root_name: &'a str,
    pub settings: SimSettings,
    /// Where each node's state is kept between runs.
    pub state_dir: Option<&'a Path>,
}

/// One agent (and its environment) per node of the fleet repo, each over
/// a simulated node, resumed from `state_dir` when given.
pub fn agents(setup: &Setup<'_>) -> anyhow::Result<Vec<(String, Agent<SimNode>)>> {
    let (fleet, specs) = nodes(setup.repo, setup.rev, setup.nodes)?;
    let root = gitfleet_agent::local::pin_first_root(setup.root)
        .with_context(|| format!("{} is not a root agents can pin", setup.root_name))?;
    if root.fleet != fleet {
        tracing::warn!(root = %root.fleet, repo = %fleet, "the root is for another fleet than the repo; the reconciler will ignore the reports");
    }
    let strangers: Vec<&str> = specs
        .iter()
        .filter(|s| !s.key_matches)
        .map(|s| s.identity.node.as_str())
        .collect();
    if !strangers.is_empty() {
        let shown: Vec<&str> = strangers.iter().take(5).copied().collect();
        tracing::warn!(
            nodes = strangers.len(),
            first = %shown.join(", "),
            "these nodes' node-key in the fleet repo is not their simulator key, so the reconciler will ignore their reports (gitfleet simulate --print-keys lists the keys to use)"
        );
    }
    if let Some(dir) = setup.state_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut agents = Vec::with_capacity(specs.len());
    for spec in specs {
        let node_id = spec.identity.node.clone();
        let environment = spec.identity.environment.clone();
        let mut node = SimNode::new(&node_id, setup.settings);
        let state = match setup.state_dir {
            Some(dir) => node.persist_to(dir)?,
            None => LocalState {
                format: LOCAL_STATE_FORMAT,
                ..LocalState::default()
            },
        };
        let store = setup.store.clone();
        agents.push((
            environment,
            Agent::new(
                spec.identity,
                store,
                root.clone(),
                sim_key(&node_id),
                node,
                state,
            ),
        ));
    }
    Ok(agents)
}

/// What the progress line knows of one node.
#[derive(Clone, Debug, Default)]
pub struct View {
    pub environment: String,
    /// (rollout, bundle digest) per kind of bundle the node runs.
    pub running: Vec<(String, String)>,
    pub healthy: bool,
    /// Why the last poll was refused or the last report not written.
    pub error: Option<String>,
    pub polled: bool,
    /// When `running` last changed (first seen, for a node's first view).
    pub since: Option<Instant>,
}

impl View {
    fn of(
        agent: &Agent<SimNode>,
        environment: &str,
        polled: &Polled,
        report_error: Option<String>,
    ) -> View {
        let state = agent.state();
        View {
            environment: environment.to_owned(),
            running: [&state.sentinel, &state.wireguard]
                .into_iter()
                .flatten()
                .map(|s| (s.rollout.clone(), s.active.digest.clone()))
                .collect(),
            healthy: agent.node().is_healthy(),
            error: match polled {
                Polled::Refused(reason) => Some(reason.clone()),
                _ => report_error,
            },
            polled: true,
            since: None,
        }
    }
}

/// Simulated agents running on the current runtime, each in its own task.
pub struct Swarm {
    views: Arc<Mutex<Vec<View>>>,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl std::fmt::Debug for Swarm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Swarm")
            .field("agents", &self.tasks.len())
            .finish_non_exhaustive()
    }
}

impl Swarm {
    /// Start every agent; their first polls are spread over one interval.
    pub fn start(agents: Vec<(String, Agent<SimNode>)>, timing: Local) -> anyhow::Result<Swarm> {
        let views = Arc::new(Mutex::new(vec![View::default(); agents.len()]));
        let (stop, stop_rx) = watch::channel(false);
        let mut seed = [0u8; 8];
        getrandom::getrandom(&mut seed)
            .map_err(|e| anyhow::anyhow!("reading randomness from the operating system: {e}"))?;
        let seed = u64::from_le_bytes(seed);
        let mut tasks = JoinSet::new();
        for (i, (environment, agent)) in agents.into_iter().enumerate() {
            let rng = Rng(seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
            tasks.spawn(run_agent(
                agent,
                environment,
                i,
                timing,
                rng,
                views.clone(),
                stop_rx.clone(),
            ));
        }
        Ok(Swarm { views, stop, tasks })
    }

    /// What every agent last did, in the order they were given.
    pub fn views(&self) -> Vec<View> {
        self.with_views(<[View]>::to_vec)
    }

    /// Look at what every agent last did without copying it (100,000
    /// views are worth not cloning twice a second).
    pub fn with_views<R>(&self, f: impl FnOnce(&[View]) -> R) -> R {
        match self.views.lock() {
            Ok(v) => f(&v),
            Err(poisoned) => f(&poisoned.into_inner()),
        }
    }

    /// The progress lines: per rollout, how many nodes run which bundle.
    pub fn progress(&self, elapsed: Duration) -> String {
        progress(&self.views(), elapsed)
    }

    /// Tell every agent to stop and wait up to `grace` for them to finish
    /// the poll they are in (at most one activation each); a second Ctrl-C
    /// or the end of `grace` stops them where they are.
    pub async fn stop(mut self, grace: Duration) {
        let _ = self.stop.send(true);
        let all_done = async { while self.tasks.join_next().await.is_some() {} };
        tokio::select! {
            () = all_done => {}
            () = tokio::time::sleep(grace) => {
                tracing::warn!("agents still busy after the grace period; stopping them");
            }
            () = gitfleet_io::signals::shutdown() => {
                tracing::warn!("interrupted again; stopping the agents now");
            }
        }
        self.tasks.abort_all();
    }
}

async fn simulate(
    agents: Vec<(String, Agent<SimNode>)>,
    timing: Local,
    args: &SimulateArgs,
) -> anyhow::Result<()> {
    let swarm = Swarm::start(agents, timing)?;
    let started = Instant::now();
    let mut deadline = std::pin::pin!(after(args.duration));
    let mut stop = std::pin::pin!(gitfleet_io::signals::shutdown());
    let mut ticker = tokio::time::interval(args.progress.max(Duration::from_millis(100)));
    ticker.tick().await;
    let reason = loop {
        tokio::select! {
            _ = ticker.tick() => eprint!("{}", swarm.progress(started.elapsed())),
            () = &mut deadline => break "the duration is over",
            () = &mut stop => break "interrupted",
        }
    };
    tracing::info!(reason, "stopping the simulated agents");
    let views = swarm.views.clone();
    swarm
        .stop(args.apply_latency + Duration::from_secs(10))
        .await;
    eprint!(
        "{}",
        progress(
            &views.lock().map(|v| v.clone()).unwrap_or_default(),
            started.elapsed()
        )
    );
    eprintln!("stopped: {reason}");
    Ok(())
}

/// Resolves once `duration` has passed; never without one.
pub(crate) async fn after(duration: Option<Duration>) {
    match duration {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

/// Poll, report and wait, until told to stop: the real agent's loop
/// (`gitfleet-agent run`), with its cadence rule ([`Cadence`]): polls at
/// the interval the manifest asks for, heartbeats on their own timer.
async fn run_agent(
    mut agent: Agent<SimNode>,
    environment: String,
    index: usize,
    local: Local,
    mut rng: Rng,
    views: Arc<Mutex<Vec<View>>>,
    mut stop: watch::Receiver<bool>,
) {
    // Spread the first polls over one interval, as agents started at
    // different times would be.
    let mut next_poll =
        tokio::time::Instant::now() + rng.duration_below(Duration::from_millis(local.poll_ms));
    let mut cadence = Cadence::of(&local, None);
    let mut polled = Polled::Unchanged;
    loop {
        let wake = match agent.next_report(cadence.heartbeat()) {
            Some(t) => {
                let until = (t - Utc::now()).to_std().unwrap_or_default();
                next_poll.min(tokio::time::Instant::now() + until)
            }
            None => next_poll,
        };
        if stopped_until(wake, &mut stop).await {
            return;
        }
        if tokio::time::Instant::now() >= next_poll {
            polled = agent.poll(Utc::now()).await;
            let fleet = Cadence::of(&local, agent.fleet_settings());
            let wait = fleet.wait_ms(&cadence, |n| {
                let n = Duration::from_millis(n.saturating_add(1));
                u64::try_from(rng.duration_below(n).as_millis()).unwrap_or(u64::MAX)
            });
            cadence = fleet;
            next_poll = tokio::time::Instant::now() + Duration::from_millis(wait);
        }
        let now = Utc::now();
        let mut report_error = None;
        if agent.report_due(now, cadence.heartbeat()) {
            if let Err(e) = agent.report(now).await {
                // Summarised in the progress lines, not logged per node.
                tracing::debug!(node = %agent.node().id(), error = %e, "cannot write the status report");
                report_error = Some(format!("cannot write the status report: {e}"));
            }
        }
        let mut view = View::of(&agent, &environment, &polled, report_error);
        if let Ok(mut views) = views.lock() {
            if let Some(slot) = views.get_mut(index) {
                view.since = match slot.since {
                    Some(t) if slot.running == view.running => Some(t),
                    _ => Some(Instant::now()),
                };
                *slot = view;
            }
        }
    }
}

/// Wait until `t`; true when told to stop first.
async fn stopped_until(t: tokio::time::Instant, stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        () = tokio::time::sleep_until(t) => false,
        r = stop.wait_for(|s| *s) => {
            // A dropped sender also means stop.
            let _ = r;
            true
        }
    }
}

/// A duration in whole milliseconds (saturating).
pub fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The progress lines: per rollout, how many nodes run which bundle.
fn progress(views: &[View], elapsed: Duration) -> String {
    let total = views.len();
    let started = views.iter().filter(|v| v.polled).count();
    let unhealthy = views.iter().filter(|v| v.polled && !v.healthy).count();
    let errors: Vec<&str> = views.iter().filter_map(|v| v.error.as_deref()).collect();
    let idle = views
        .iter()
        .filter(|v| v.polled && v.running.is_empty())
        .count();
    // (rollout, environment) -> digest -> (nodes, unhealthy)
    type Counts<'a> = BTreeMap<&'a str, (usize, usize)>;
    let mut by_rollout: BTreeMap<(&str, &str), Counts> = BTreeMap::new();
    for v in views.iter() {
        for (r, d) in &v.running {
            let e = by_rollout
                .entry((r.as_str(), v.environment.as_str()))
                .or_default()
                .entry(d.as_str())
                .or_default();
            e.0 += 1;
            if !v.healthy {
                e.1 += 1;
            }
        }
    }
    let mut out = format!(
        "[{:>5}s] {started}/{total} nodes polling, {idle} running nothing, {unhealthy} unhealthy",
        elapsed.as_secs()
    );
    if let Some(first) = errors.first() {
        out.push_str(&format!(", {} with errors ({first})", errors.len()));
    }
    out.push('\n');
    for ((rollout, environment), bundles) in by_rollout {
        // Most nodes first.
        let mut bundles: Vec<(&str, (usize, usize))> = bundles.into_iter().collect();
        bundles.sort_by(|a, b| b.1 .0.cmp(&a.1 .0).then(a.0.cmp(b.0)));
        let parts: Vec<String> = bundles
            .into_iter()
            .map(|(digest, (n, sick))| {
                let short: String = digest
                    .trim_start_matches("sha256:")
                    .chars()
                    .take(12)
                    .collect();
                match sick {
                    0 => format!("{n} on {short}"),
                    _ => format!("{n} on {short} ({sick} unhealthy)"),
                }
            })
            .collect();
        out.push_str(&format!(
            "  {rollout}/{environment}: {}\n",
            parts.join(", ")
        ));
    }
    out
}

/// splitmix64: jitter needs spread, not secrecy.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn duration_below(&mut self, max: Duration) -> Duration {
        let nanos = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
        if nanos == 0 {
            return Duration::ZERO;
        }
        Duration::from_nanos(self.next() % nanos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_fractions() {
        assert_eq!(parse_rate("0.25"), Ok(0.25));
        assert_eq!(parse_rate("1"), Ok(1.0));
        assert!(parse_rate("1.5").is_err());
        assert!(parse_rate("-0.1").is_err());
        assert!(parse_rate("lots").is_err());
    }

    #[test]
    fn progress_counts_nodes_per_bundle() {
        let a = format!("sha256:{}", "a".repeat(64));
        let b = format!("sha256:{}", "b".repeat(64));
        let view = |active: Option<&str>, healthy| View {
            environment: "dev".to_owned(),
            running: active
                .map(|d| ("edge".to_owned(), d.to_owned()))
                .into_iter()
                .collect(),
            healthy,
            error: None,
            polled: true,
            since: None,
        };
        let views = [
            view(Some(&a), true),
            view(Some(&a), true),
            view(Some(&b), false),
            view(None, true),
            View {
                error: Some("channels/dev.json does not exist in the store".to_owned()),
                ..view(None, true)
            },
            View::default(),
        ];
        let text = progress(&views, Duration::from_secs(7));
        assert!(
            text.starts_with(
                "[    7s] 5/6 nodes polling, 2 running nothing, 1 unhealthy, \
                 1 with errors (channels/dev.json does not exist in the store)\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("  edge/dev: 2 on aaaaaaaaaaaa, 1 on bbbbbbbbbbbb (1 unhealthy)\n"),
            "{text}"
        );
    }

    #[test]
    fn jitter_stays_below_its_bound() {
        let mut rng = Rng(7);
        for _ in 0..1000 {
            assert!(rng.duration_below(Duration::from_millis(30)) < Duration::from_millis(30));
        }
        assert_eq!(rng.duration_below(Duration::ZERO), Duration::ZERO);
    }
}
