//! `gitfleet-agent`: the only gitfleet code on a node.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context as _};
use chrono::Utc;
use clap::{Parser, Subcommand, ValueEnum};
use gitfleet_agent::cadence::{Cadence, Local};
use gitfleet_agent::core::{wanted, Agent, Identity, Polled};
use gitfleet_agent::local::StateDir;
use gitfleet_agent::metrics::AgentMetrics;
use gitfleet_agent::node::DiskNode;
use gitfleet_io::store::Store;
use gitfleet_schemas::agent::{AgentConfig, EnrollRequest};
use gitfleet_schemas::trust::{Document as _, PublicKey};
use gitfleet_schemas::verify::{self, Limits};
use gitfleet_schemas::Proxy;
use tracing_subscriber::EnvFilter;

/// The gitfleet node agent: verifies and activates signed bundles on this
/// node, rolls back what fails, and reports signed status.
///
/// A node is set up once with `enroll`, then runs `run` (as a service; see
/// agent/gitfleet-agent.service). The Sentinel proxy is started with
/// `-c <state-dir>/sentinel/sentinel.kdl`, the config the agent swaps.
#[derive(Debug, Parser)]
#[command(name = "gitfleet-agent", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,

    /// The agent config file.
    #[arg(
        short,
        long,
        global = true,
        env = "GITFLEET_AGENT_CONFIG",
        default_value = "/etc/gitfleet/agent.kdl"
    )]
    config: PathBuf,

    /// Override the config's store URL.
    #[arg(long, global = true, env = "GITFLEET_AGENT_STORE")]
    store: Option<String>,

    /// Override the config's state directory.
    #[arg(long, global = true, env = "GITFLEET_AGENT_STATE_DIR")]
    state_dir: Option<PathBuf>,

    /// Log format on stderr, as `gitfleet` takes it. auto: JSON lines for
    /// `run` when stderr is not a terminal (a service's logs), human
    /// otherwise.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Auto, env = "GITFLEET_LOG_FORMAT")]
    log_format: LogFormat,

    /// The same as `--log-format json` (kept for existing unit files).
    #[arg(long, global = true, hide = true)]
    log_json: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Auto,
    Json,
    Human,
}

#[derive(Debug, Subcommand)]
enum Command {
    Run(RunArgs),
    Enroll(EnrollArgs),
    Status(StatusArgs),
    /// Check the current channel manifest against the pinned root, and
    /// which bundles it names for this node, without changing anything.
    ///
    /// Exits 0 when it verifies, 1 when it is refused (and says why).
    ///
    /// Example:
    ///   gitfleet-agent -c /etc/gitfleet/agent.kdl verify
    #[command(verbatim_doc_comment)]
    Verify,
    /// Make a new WireGuard key for this node and ask the fleet to move to it.
    ///
    /// The new key waits in the state directory (wireguard.key.next) and
    /// its public key goes into every status report, signed with the node
    /// key; `gitfleet status --mesh` and the node's page show the request.
    /// Put the printed public key in the node's file
    /// (`wireguard public-key="…"`) by pull request: when the mesh bundle
    /// lists it, this agent switches its interface to the new key and the
    /// other members change that one peer, leaving their other sessions
    /// alone. Every old key is kept (wireguard-keys/, mode 0600) in case the mesh
    /// rolls back. Running it again prints the same pending key.
    ///
    /// Example:
    ///   gitfleet-agent -c /etc/gitfleet/agent.kdl rotate-key
    #[command(verbatim_doc_comment)]
    RotateKey,
}

/// Poll the channel manifest, activate what this node should run, report.
///
/// Keeps the running config whatever happens upstream: a store that cannot
/// be reached, a manifest that does not verify, or a bundle that fails
/// validation or the proxy's confirmation leave the node as it was, and the
/// next status report says why. Stops cleanly on SIGTERM or Ctrl-C.
///
/// Example:
///   gitfleet-agent -c /etc/gitfleet/agent.kdl run
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
struct RunArgs {
    /// Poll and report once, then exit: 0 when the manifest was applied or
    /// unchanged, 1 when it was refused.
    #[arg(long)]
    once: bool,

    /// Serve Prometheus metrics at http://ADDR/metrics; a loopback
    /// address only (e.g. 127.0.0.1:9464), for a scraper on this node.
    #[arg(long, value_name = "ADDR", env = "GITFLEET_AGENT_METRICS")]
    metrics_listen: Option<std::net::SocketAddr>,
}

/// Set this node up: generate its node key and WireGuard key, pin the
/// fleet's root, and ask to join.
///
/// Writes `enroll/<node>.json` (signed with the new node key) to the store
/// and prints the `nodes/<id>.kdl` to add to the fleet repo by pull request.
/// The private keys never leave the state directory. Running it again
/// reuses the keys and prints the same file.
///
/// Example:
///   gitfleet-agent -c /etc/gitfleet/agent.kdl enroll --root root/1.json
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
struct EnrollArgs {
    /// The fleet's first root (`root/1.json`), handed over out of band.
    #[arg(long, value_name = "FILE")]
    root: PathBuf,

    /// This node's WireGuard endpoint (`host:port`), if others reach it.
    #[arg(long)]
    endpoint: Option<String>,
}

/// Show what this node runs, from its state directory (no network).
///
/// Example:
///   gitfleet-agent -c /etc/gitfleet/agent.kdl status --format json
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
struct StatusArgs {
    #[arg(long, value_enum, default_value_t = Format::Human)]
    format: Format,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Format {
    Human,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let json = cli.log_json
        || match cli.log_format {
            LogFormat::Json => true,
            LogFormat::Human => false,
            LogFormat::Auto => {
                matches!(cli.command, Command::Run(_))
                    && !std::io::IsTerminal::is_terminal(&std::io::stderr())
            }
        };
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
    // One task does everything in turn, so one thread for blocking work
    // (file-store requests, verifying a bundle into the staging copy,
    // WireGuard) is enough; each extra one keeps its own stack and malloc
    // arena resident while it lives.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(1)
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// The exit status of an agent whose node left the fleet: the systemd unit
/// does not restart it (`RestartPreventExitStatus`).
const DECOMMISSIONED: u8 = 3;

async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let mut config = load_config(&cli.config)?;
    if let Some(store) = &cli.store {
        config.store = store.clone();
    }
    if let Some(dir) = &cli.state_dir {
        config.state_dir = dir.display().to_string();
    }
    match &cli.command {
        Command::Run(args) => run(&config, args).await,
        Command::Enroll(args) => enroll(&config, args).await,
        Command::Status(args) => status(&config, args),
        Command::Verify => verify_now(&config).await,
        Command::RotateKey => rotate_key(&config),
    }
}

/// `rotate-key`: the pending key, made when there is none; its public key
/// on stdout.
fn rotate_key(config: &AgentConfig) -> anyhow::Result<ExitCode> {
    use gitfleet_agent::wireguard::{self, PrivateKey};
    let dir = Path::new(&config.state_dir);
    let current = PrivateKey::read(&dir.join(wireguard::WIREGUARD_KEY))?;
    let (next, made) = PrivateKey::read_or_create(&dir.join(wireguard::WIREGUARD_KEY_NEXT))?;
    println!("{}", next.public());
    eprintln!(
        "{} key {} waits in {}; list it as `wireguard public-key=\"{}\"` in nodes/{}.kdl (today {}): \
         the agent switches when the mesh names it",
        if made { "new" } else { "the pending" },
        next.public(),
        dir.join(wireguard::WIREGUARD_KEY_NEXT).display(),
        next.public(),
        config.node,
        current.public()
    );
    Ok(ExitCode::SUCCESS)
}

/// Read and decode the config, every problem with its line and column.
fn load_config(path: &Path) -> anyhow::Result<AgentConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading agent config {}", path.display()))?;
    let decoded = AgentConfig::decode(&text);
    if decoded.errors.is_empty() {
        if let Some(c) = decoded.value {
            return Ok(c);
        }
    }
    let mut out = String::new();
    for e in &decoded.errors {
        let (line, col) = line_col(&text, e.span.start);
        out.push_str(&format!(
            "\n  {}:{line}:{col}: {}",
            path.display(),
            e.message
        ));
        if let Some(help) = &e.help {
            out.push_str(&format!(" (help: {help})"));
        }
    }
    bail!("agent config {} is invalid:{out}", path.display())
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, col)
}

fn identity(config: &AgentConfig) -> Identity {
    Identity {
        node: config.node.clone(),
        environment: config.environment.clone(),
        labels: config.labels.clone(),
        drift: config.drift,
        max_bundle_bytes: config.max_bundle_bytes,
        proxy: proxy_of(config),
    }
}

/// The proxy agent.kdl says the node runs: Sentinel 0.4.14 unless it says.
fn proxy_of(config: &AgentConfig) -> Proxy {
    config.proxy.clone().unwrap_or_else(Proxy::legacy)
}

fn limits(config: &AgentConfig) -> Limits {
    Limits {
        max_unpacked_bytes: config.max_bundle_bytes.saturating_mul(4),
        ..Limits::default()
    }
}

async fn run(config: &AgentConfig, args: &RunArgs) -> anyhow::Result<ExitCode> {
    let dir = StateDir::open(Path::new(&config.state_dir))?;
    let state = dir.load_state()?;
    if let Some(at) = state.decommissioned {
        eprintln!(
            "node `{}` was decommissioned at {} (its node file left the fleet repo); the agent stays stopped. To rejoin, remove {} and enroll again",
            config.node,
            at.to_rfc3339(),
            config.state_dir
        );
        return Ok(ExitCode::from(DECOMMISSIONED));
    }
    let root = dir.trusted_root()?;
    let key = dir.node_key()?;
    let mut node = DiskNode::new(
        dir,
        &config.node,
        config.sentinel.clone(),
        config.wireguard.clone(),
        limits(config),
    )
    .with_proxy(proxy_of(config).kind)
    .with_monitors(config.monitors.clone());
    node.recover(&state).await?;
    let store = Store::open(&config.store)?;
    let mirrors = config
        .mirrors
        .iter()
        .map(|url| Store::open_mirror(url))
        .collect::<Result<Vec<_>, _>>()?;
    let mut agent =
        Agent::new(identity(config), store, root, key, node, state).with_mirrors(mirrors);
    let local = Local::of(config);
    let mut cadence = Cadence::of(&local, None);
    tracing::info!(
        node = %config.node,
        environment = %config.environment,
        store = %config.store,
        "agent started"
    );
    let metrics = Arc::new(Mutex::new(AgentMetrics::starting(agent.state())));
    let _metrics_server = match args.metrics_listen {
        Some(addr) => {
            let listener = gitfleet_agent::metrics::listen(addr).await?;
            tracing::info!(address = %listener.local_addr()?, "serving metrics");
            Some(AbortOnDrop(tokio::spawn(gitfleet_agent::metrics::serve(
                listener,
                Arc::clone(&metrics),
            ))))
        }
        None => None,
    };
    let (_watcher, mut changed) = watch(&Path::new(&config.state_dir).join("bundles"));
    let mut stop = std::pin::pin!(gitfleet_io::signals::shutdown());
    // Polls and heartbeats keep their own times: an idle node polls
    // every few minutes but still reports every heartbeat.
    let mut next_poll = tokio::time::Instant::now();
    loop {
        let polled = if tokio::time::Instant::now() >= next_poll {
            let polled = agent.poll(Utc::now()).await;
            let fleet = Cadence::of(&local, agent.fleet_settings());
            let wait = fleet.wait_ms(&cadence, jitter);
            if fleet != cadence {
                fleet.log_overrides(&local, agent.fleet_settings());
                cadence = fleet;
            }
            next_poll = tokio::time::Instant::now() + Duration::from_millis(wait);
            {
                let mut m = metrics.lock().unwrap_or_else(|p| p.into_inner());
                m.polled(&polled, Utc::now());
                m.holding(agent.state());
            }
            Some(polled)
        } else {
            None
        };
        let now = Utc::now();
        let heartbeat = cadence.heartbeat();
        if agent.report_due(now, heartbeat) || agent.evidence_ready().await {
            let reported = agent.report(now).await;
            if let Err(e) = &reported {
                tracing::warn!(error = %e, "cannot write the status report");
            }
            metrics
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .reported(reported.as_ref());
        }
        if let Some(Polled::Decommissioned { serial }) = polled {
            // The last word goes where every replica reads it.
            agent.touch_store();
            let reported = agent.report(now).await;
            if let Err(e) = &reported {
                tracing::warn!(error = %e, "cannot write the final status report");
            }
            agent.decommission(now)?;
            tracing::warn!(node = %config.node, serial, "decommissioned: final report sent, stopping; the running config is left as it is");
            return Ok(ExitCode::from(DECOMMISSIONED));
        }
        if args.once {
            return Ok(match polled {
                Some(Polled::Refused(reason)) => {
                    eprintln!("refused: {reason}");
                    ExitCode::from(1)
                }
                _ => ExitCode::SUCCESS,
            });
        }
        // Wake for whichever is first: the next poll or the next report.
        let until_heartbeat = agent
            .next_report(heartbeat)
            .map(|t| (t - Utc::now()).to_std().unwrap_or_default());
        let wake = match until_heartbeat {
            Some(d) => next_poll.min(tokio::time::Instant::now() + d),
            None => next_poll,
        };
        tokio::select! {
            () = tokio::time::sleep_until(wake) => {}
            Some(()) = changed.recv() => {
                // Let a burst of writes settle, then report (drift is
                // checked as part of every report).
                tokio::time::sleep(Duration::from_millis(200)).await;
                while changed.try_recv().is_ok() {}
                agent.touch();
            }
            () = &mut stop => {
                tracing::info!("stopping");
                return Ok(ExitCode::SUCCESS);
            }
        }
    }
}

/// A task that ends when this is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Changes under `dir` (the bundle directories), as a channel that yields
/// once per change. Without inotify the heartbeat still re-checks drift.
fn watch(
    dir: &Path,
) -> (
    Option<notify::RecommendedWatcher>,
    tokio::sync::mpsc::UnboundedReceiver<()>,
) {
    use notify::Watcher as _;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|e| e.kind.is_modify() || e.kind.is_create() || e.kind.is_remove()) {
            let _ = tx.send(());
        }
    })
    .and_then(|mut w| w.watch(dir, notify::RecursiveMode::Recursive).map(|()| w));
    match watcher {
        Ok(w) => (Some(w), rx),
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot watch for drift; checking on the heartbeat only");
            (None, rx)
        }
    }
}

/// A random wait in `0..=max_ms`, so a fleet does not poll in lockstep.
fn jitter(max_ms: u64) -> u64 {
    let mut b = [0u8; 8];
    if max_ms == 0 || getrandom::getrandom(&mut b).is_err() {
        return 0;
    }
    u64::from_le_bytes(b) % (max_ms + 1)
}

async fn enroll(config: &AgentConfig, args: &EnrollArgs) -> anyhow::Result<ExitCode> {
    let dir = StateDir::open(Path::new(&config.state_dir))?;
    let root_bytes = std::fs::read(&args.root)
        .with_context(|| format!("reading root {}", args.root.display()))?;
    let root = match dir.trusted_root() {
        Ok(root) => root,
        Err(gitfleet_agent::local::LocalError::NotEnrolled { .. }) => dir.pin_root(&root_bytes)?,
        Err(e) => return Err(e.into()),
    };
    let key = match dir.node_key() {
        Ok(k) => k,
        Err(gitfleet_agent::local::LocalError::NotEnrolled { .. }) => {
            let mut seed = [0u8; 32];
            getrandom::getrandom(&mut seed).map_err(|e| {
                anyhow::anyhow!("reading randomness from the operating system: {e}")
            })?;
            let key = dir.create_node_key(&seed)?;
            seed.fill(0);
            key
        }
        Err(e) => return Err(e.into()),
    };
    let wg_public = wireguard_key(dir.path())?;
    let node_key = PublicKey(key.verifying_key().to_bytes());
    let request = EnrollRequest {
        fleet: root.fleet.clone(),
        node: config.node.clone(),
        environment: config.environment.clone(),
        labels: config.labels.clone(),
        node_key,
        wireguard_public_key: wg_public.clone(),
        at: Utc::now(),
    };
    let mut envelope = request.envelope();
    envelope.sign(&key).map_err(|e| anyhow::anyhow!(e))?;
    let store = Store::open(&config.store)?;
    let object = gitfleet_schemas::keys::enroll(&config.node);
    store
        .put(&object, envelope.to_json().into())
        .await
        .with_context(|| format!("writing {object}"))?;
    eprintln!(
        "enrolled {} in fleet `{}`: wrote {object}; add this file as nodes/{}.kdl by pull request:\n",
        config.node, root.fleet, config.node
    );
    let labels: String = config
        .labels
        .iter()
        .map(|(k, v)| format!(" {k}={v:?}"))
        .collect();
    let endpoint = args
        .endpoint
        .as_ref()
        .map(|e| format!(" endpoint={e:?}"))
        .unwrap_or_default();
    println!("version 1");
    println!("id {:?}", config.node);
    println!("environment {:?}", config.environment);
    if !labels.is_empty() {
        println!("labels{labels}");
    }
    println!("node-key {:?}", node_key.to_string());
    println!("wireguard public-key={wg_public:?}{endpoint}");
    Ok(ExitCode::SUCCESS)
}

/// The node's WireGuard public key, generating the private key (clamped,
/// mode 0600, in the state directory) on first use.
fn wireguard_key(dir: &Path) -> anyhow::Result<String> {
    let path = dir.join(gitfleet_agent::wireguard::WIREGUARD_KEY);
    let (key, _) = gitfleet_agent::wireguard::PrivateKey::read_or_create(&path)?;
    Ok(key.public().to_string())
}

fn status(config: &AgentConfig, args: &StatusArgs) -> anyhow::Result<ExitCode> {
    let dir = StateDir::open(Path::new(&config.state_dir))?;
    let state = dir.load_state()?;
    let journal = dir.journal()?;
    let drift = match &state.sentinel {
        Some(slot) => dir.drift(&slot.active)?,
        None => Vec::new(),
    };
    if args.format == Format::Json {
        let value = serde_json::json!({
            "node": config.node,
            "environment": config.environment,
            "state": state,
            "activation_in_flight": journal,
            "drift": drift,
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("node         {} ({})", config.node, config.environment);
    println!(
        "serial       {}",
        state
            .serial
            .map_or("none verified yet".to_owned(), |s| s.to_string())
    );
    match &state.sentinel {
        Some(slot) => {
            println!("rollout      {}", slot.rollout);
            println!("active       {}", slot.active.digest);
            println!(
                "previous     {}",
                slot.previous.as_ref().map_or("none", |p| p.digest.as_str())
            );
        }
        None => println!("active       nothing yet"),
    }
    for (digest, reason) in &state.failed {
        println!("failed       {digest}: {reason}");
    }
    if let Some(j) = journal {
        println!(
            "in flight    {} (the next start finishes or undoes it)",
            j.to.digest
        );
    }
    for d in &drift {
        println!(
            "drift        {} (expected {}, found {})",
            d.path,
            d.expected_sha256.as_deref().unwrap_or("no file"),
            d.found_sha256.as_deref().unwrap_or("no file")
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Fetch and verify the channel manifest as `run` would, and say what this
/// node would run; changes nothing.
async fn verify_now(config: &AgentConfig) -> anyhow::Result<ExitCode> {
    let dir = StateDir::open(Path::new(&config.state_dir))?;
    let state = dir.load_state()?;
    let root = dir.trusted_root()?;
    let store = Store::open(&config.store)?;
    let key = gitfleet_schemas::keys::channel(&config.environment);
    let Some(object) = store.get(&key).await? else {
        println!("{key}: not in the store");
        return Ok(ExitCode::from(1));
    };
    match verify::verify_channel(
        &root,
        &object.bytes,
        &config.environment,
        state.serial,
        Utc::now(),
    ) {
        Ok(m) => {
            println!(
                "{key}: valid, serial {}, expires {}",
                m.serial,
                m.expires.to_rfc3339()
            );
            for (r, b) in wanted(&m, &identity(config), &state) {
                let running = state.sentinel.as_ref().is_some_and(|s| s.active == b);
                println!(
                    "  {}: step {}/{}, this node runs {}{}",
                    r.name,
                    r.step,
                    r.steps,
                    b.digest,
                    if running { " (active)" } else { " (not yet)" }
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            println!("{key}: refused: {e}");
            Ok(ExitCode::from(1))
        }
    }
}
