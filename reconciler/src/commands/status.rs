//! `gitfleet status`: the fleet at a glance, read straight from git and the
//! object store (no server): environments, rollouts with step progress,
//! nodes with health and report age, drift, WireGuard peers.

use std::fmt::Write as _;
use std::io::{IsTerminal as _, Write as _};
use std::process::ExitCode;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use gitfleet_schemas::view::{FleetStatus, Health, NodeView};

use crate::fmt::{age, bytes, printable, short_commit, short_digest};
use crate::pass::observe::Observer;
use crate::pass::ReconcileError;
use crate::setup::open_store;
use crate::setup::GitArgs;

/// Show the fleet: environments, rollouts with step progress, nodes with
/// health and last report, drift and WireGuard peers.
///
/// Reads the fleet repo, the state branch and the signed status reports in
/// the object store directly; no server is needed. Only reports that verify
/// against the node keys in the repo are shown. A node whose last report is
/// older than --stale-after is stale.
///
/// Exit status: 0 when every node is healthy, 1 when some node is not (or
/// has not reported), 2 on error.
///
/// Examples:
///   gitfleet status --repo .gitfleet/up/fleet.git
///   gitfleet status --env prod --watch
///   gitfleet status --format json | jq '.nodes[] | select(.health != "healthy")'
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct StatusArgs {
    #[command(flatten)]
    git: GitArgs,
    /// Object store URL; defaults to the `store` of fleet.kdl.
    #[arg(long, env = "GITFLEET_STORE")]
    store: Option<String>,
    /// Where the local mirror of the repo is kept.
    #[arg(
        long,
        env = "GITFLEET_STATUS_CACHE",
        default_value = ".gitfleet/status-mirror"
    )]
    cache: std::path::PathBuf,
    /// Only this environment.
    #[arg(long = "env", value_name = "ENV")]
    environment: Option<String>,
    /// Show again every --interval until Ctrl-C (JSON: one document a line).
    #[arg(long)]
    watch: bool,
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    interval: std::time::Duration,
    #[arg(long, value_enum, default_value_t = Format::Human)]
    format: Format,
    /// A node whose last report is older than this is stale.
    #[arg(long, default_value = "3m", value_parser = humantime::parse_duration)]
    stale_after: std::time::Duration,
    /// List every node, not only the ones that need attention, in a fleet
    /// of more than 50.
    #[arg(long)]
    all_nodes: bool,
    /// Only the members of this WireGuard mesh, each with its peers:
    /// handshake age, traffic rates, stale links (JSON: the same view with
    /// only those nodes).
    #[arg(long, value_name = "NAME")]
    mesh: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    Human,
    /// The fleet-status format (schemas/json/fleet-status.schema.json).
    Json,
}

pub fn run(args: &StatusArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let mirror = crate::setup::open_mirror(&args.git, &args.cache)?;
    let store = open_store(&mirror, args.store.as_deref())?;
    let mut observer = Observer::new(mirror, store);
    let stale_after =
        chrono::Duration::from_std(args.stale_after).context("--stale-after is too long")?;
    let tty = std::io::stdout().is_terminal();
    runtime.block_on(async {
        let mut stop = std::pin::pin!(gitfleet_io::signals::shutdown());
        loop {
            let observed = tokio::select! {
                o = observer.observe() => o,
                () = &mut stop => return Ok(ExitCode::SUCCESS),
            };
            let view = match observed.map_err(ReconcileError::from).and_then(|o| {
                let state = o.state()?;
                let rules = crate::pass::rules::recorded(&o.state_files)?;
                let view = o.view(
                    &state,
                    rules.as_ref(),
                    Utc::now(),
                    stale_after,
                    args.environment.as_deref(),
                );
                let members = args
                    .mesh
                    .as_deref()
                    .map(|name| mesh_members(&o.checked.checked.model, name));
                Ok((view, members))
            }) {
                Ok(view) => view,
                // Watching rides out a moment without git or the store.
                Err(e) if args.watch => {
                    eprintln!(
                        "error: {}; retrying in {}",
                        gitfleet_io::error_chain(&e),
                        humantime::format_duration(args.interval)
                    );
                    tokio::select! {
                        () = tokio::time::sleep(args.interval) => continue,
                        () = &mut stop => return Ok(ExitCode::SUCCESS),
                    }
                }
                Err(e) => return Err(e.into()),
            };
            let (mut view, members) = view;
            let mesh = match (args.mesh.as_deref(), members) {
                (Some(name), Some(members)) => {
                    let members = members.map_err(|known| {
                        anyhow::anyhow!("no mesh {name} in the fleet repo ({known})")
                    })?;
                    view.nodes.retain(|n| members.contains(&n.id));
                    Some(name)
                }
                _ => None,
            };
            if let Some(env) = &args.environment {
                if view.environments.is_empty() {
                    anyhow::bail!("no environment {env} in the fleet repo");
                }
            }
            let text = match args.format {
                Format::Json => {
                    let mut t = serde_json::to_string(&view)?;
                    t.push('\n');
                    t
                }
                Format::Human if mesh.is_some() => {
                    printable(&mesh_human(&view, mesh.unwrap_or_default(), stale_after))
                }
                Format::Human => printable(&human(
                    &view,
                    args.all_nodes,
                    &format!(
                        "{} approve --repo {}",
                        crate::setup::command_name(),
                        args.git.repo
                    ),
                )),
            };
            let mut out = std::io::stdout().lock();
            if args.watch && tty && args.format == Format::Human {
                // Home and clear, then the new picture.
                out.write_all(b"\x1b[H\x1b[2J")?;
            }
            out.write_all(text.as_bytes())?;
            out.flush()?;
            if !args.watch {
                let all_healthy = view.totals.healthy == view.totals.nodes;
                return Ok(if all_healthy {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(1)
                });
            }
            if args.format == Format::Human && !tty {
                writeln!(out)?;
            }
            tokio::select! {
                () = tokio::time::sleep(args.interval) => {}
                () = &mut stop => return Ok(ExitCode::SUCCESS),
            }
        }
    })
}

/// The ids of mesh `name`'s members at the fleet repo's tip, or the
/// known meshes when there is no such mesh.
fn mesh_members(model: &gitfleet_policy::FleetModel, name: &str) -> Result<Vec<String>, String> {
    let Some(mesh) = model.meshes.get(name) else {
        let known: Vec<&str> = model.meshes.keys().map(String::as_str).collect();
        return Err(if known.is_empty() {
            "it has none".to_owned()
        } else {
            format!("known: {}", known.join(", "))
        });
    };
    Ok(gitfleet_policy::mesh::members(model, &mesh.doc)
        .iter()
        .map(|n| n.id.value.clone())
        .collect())
}

/// Mesh `name` as text: each member's peers, by node id where the peer is
/// a fleet node, with handshake age, rates and stale links marked.
pub fn mesh_human(view: &FleetStatus, name: &str, stale_after: chrono::Duration) -> String {
    let mut out = String::new();
    let stale_links = view
        .nodes
        .iter()
        .filter_map(|n| n.wireguard.as_ref())
        .flat_map(|wg| &wg.peers)
        .filter(|p| gitfleet_policy::view::link_is_stale(p, view.at, stale_after))
        .count();
    let _ = writeln!(
        out,
        "mesh {name}: {} members, {stale_links} stale link(s) (no handshake within {})",
        view.nodes.len(),
        age(stale_after.num_seconds())
    );
    for n in &view.nodes {
        let Some(wg) = &n.wireguard else {
            let _ = writeln!(out, "\n{}: reports no interface", n.id);
            continue;
        };
        let _ = writeln!(
            out,
            "\n{} ({}, port {}):",
            n.id,
            wg.interface,
            wg.listen_port.map_or("-".to_owned(), |p| p.to_string())
        );
        if let Some(next) = &wg.next_public_key {
            let _ = writeln!(
                out,
                "  key rotation requested: list public-key=\"{next}\" in nodes/{}.kdl",
                n.id
            );
        }
        for p in &wg.peers {
            let who = n.peer_names.get(&p.public_key).unwrap_or(&p.public_key);
            let handshake = p.latest_handshake.map_or("never".to_owned(), |t| {
                format!("{} ago", age((view.at - t).num_seconds()))
            });
            let rate = |total: u64, per_second: Option<u64>| match per_second {
                Some(r) => format!("{}/s", bytes(r)),
                None => bytes(total),
            };
            let _ = writeln!(
                out,
                "  {who:<24} handshake {handshake:<10} rx {:<10} tx {:<10}{}",
                rate(p.rx_bytes, p.rx_bytes_per_second),
                rate(p.tx_bytes, p.tx_bytes_per_second),
                if gitfleet_policy::view::link_is_stale(p, view.at, stale_after) {
                    "  STALE"
                } else {
                    ""
                }
            );
        }
    }
    out
}

/// A fleet of at most this many nodes is listed whole.
const LIST_ALL_UP_TO: usize = 50;

fn counts_line(c: &gitfleet_schemas::view::Counts) -> String {
    let mut parts = vec![format!("{} healthy", c.healthy)];
    for (n, what) in [
        (c.unhealthy, "unhealthy"),
        (c.stale, "stale"),
        (c.unreported, "unreported"),
        (c.drifted, "drifted"),
    ] {
        if n > 0 {
            parts.push(format!("{n} {what}"));
        }
    }
    format!("{} nodes: {}", c.nodes, parts.join(", "))
}

fn needs_attention(n: &NodeView) -> bool {
    n.health != Health::Healthy || !n.drift.is_empty() || !n.errors.is_empty() || n.hold.is_some()
}

/// The human picture of `view`.
/// The fleet view as text; `approve` is the command that approves, as the
/// user can run it (`gitfleet approve --repo ...`).
pub fn human(view: &FleetStatus, all_nodes: bool, approve: &str) -> String {
    let mut out = String::new();
    let state = view
        .state_commit
        .as_deref()
        .map_or("no state yet".to_owned(), |s| {
            format!("state {}", short_commit(s))
        });
    let _ = writeln!(
        out,
        "fleet {} at {} ({state}); {}",
        view.fleet,
        short_commit(&view.commit),
        counts_line(&view.totals)
    );
    for (reason, n) in &view.reports_ignored {
        let _ = writeln!(out, "  {n} status report(s) ignored: {reason}");
    }
    for env in &view.environments {
        let rules = env.rules.as_ref().map_or(String::new(), |r| {
            format!("  rules from {}", short_commit(&r.commit))
        });
        let _ = writeln!(out, "\n{}  {}{rules}", env.name, counts_line(&env.counts));
        if let Some(p) = env.rules.as_ref().and_then(|r| r.pending.as_ref()) {
            let _ = writeln!(
                out,
                "  rules change {}: {}",
                short_commit(&p.commit),
                p.reason
            );
        }
        if !env.waiting.is_empty() {
            let _ = writeln!(out, "  waiting for approval:");
            for w in &env.waiting {
                let mut what = w.rollouts.clone();
                if w.rules {
                    what.push("its rules".to_owned());
                }
                let _ = writeln!(out, "    {}  {}", short_commit(&w.commit), what.join(", "));
            }
            let _ = writeln!(
                out,
                "  approve each with: {approve} --env {} --key KEY COMMIT",
                env.name
            );
            let _ = writeln!(
                out,
                "  or all of them:    {approve} --env {} --key KEY --all-waiting",
                env.name
            );
        }
        if env.rollouts.is_empty() {
            let _ = writeln!(out, "  no rollouts yet");
        }
        for r in &env.rollouts {
            let step = if r.steps == 0 {
                String::new()
            } else {
                format!(" step {}/{}", r.step, r.steps)
            };
            let _ = writeln!(
                out,
                "  {:<16} {:<17}{step:<10} {} {}/{} on {} (from {}), {} ago",
                r.name,
                r.phase.to_string(),
                crate::fmt::bar(r.on_target as usize, r.nodes as usize),
                r.on_target,
                r.nodes,
                short_digest(&r.target),
                short_commit(&r.source_commit),
                age((view.at - r.since).num_seconds()),
            );
            let _ = writeln!(out, "  {:<16} {}", "", r.reason);
            if !r.failed_nodes.is_empty() {
                let _ = writeln!(
                    out,
                    "  {:<16} failed gates: {}",
                    "",
                    r.failed_nodes.join(", ")
                );
            }
        }
    }

    let listed: Vec<&NodeView> = if all_nodes || view.nodes.len() <= LIST_ALL_UP_TO {
        view.nodes.iter().collect()
    } else {
        view.nodes.iter().filter(|n| needs_attention(n)).collect()
    };
    let _ = writeln!(out, "\nnodes");
    if listed.is_empty() {
        let _ = writeln!(out, "  every node is healthy and in sync");
    }
    let width = listed.iter().map(|n| n.id.len()).max().unwrap_or(0).max(4);
    for n in &listed {
        let report = n
            .report_age_seconds
            .map_or("never".to_owned(), |a| format!("{} ago", age(a)));
        let active: Vec<String> = n
            .active
            .iter()
            .map(|(r, d)| format!("{r}={}", short_digest(d)))
            .collect();
        let labels: Vec<String> = n.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let _ = writeln!(
            out,
            "  {:<width$}  {:<8} {:<10} {:<10} {}  [{}]",
            n.id,
            n.environment,
            n.health.as_str(),
            report,
            if active.is_empty() {
                "-".to_owned()
            } else {
                active.join(" ")
            },
            labels.join(" "),
        );
        for (rollout, error) in &n.errors {
            let _ = writeln!(out, "  {:<width$}  {rollout}: {error}", "");
        }
        if let Some(e) = &n.last_error {
            let _ = writeln!(out, "  {:<width$}  last error: {e}", "");
        }
        if let Some(m) = &n.proxy_mismatch {
            let _ = writeln!(out, "  {:<width$}  proxy: {m}", "");
        }
        if let Some(h) = &n.hold {
            let pin = n
                .pinned
                .as_deref()
                .map(|b| format!(", pinned to {b}"))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "  {:<width$}  on hold: {h} (rollouts skip it{pin})",
                ""
            );
        }
    }
    let hidden = view.nodes.len() - listed.len();
    if hidden > 0 {
        let _ = writeln!(
            out,
            "  ({hidden} healthy nodes not listed; --all-nodes lists them)"
        );
    }

    let drifted: Vec<&NodeView> = view.nodes.iter().filter(|n| !n.drift.is_empty()).collect();
    if !drifted.is_empty() {
        let _ = writeln!(out, "\ndrift");
        for n in drifted {
            for d in &n.drift {
                let what = match (&d.expected_sha256, &d.found_sha256) {
                    (Some(_), Some(_)) => "changed",
                    (Some(_), None) => "missing",
                    (None, _) => "not in the bundle",
                };
                let _ = writeln!(out, "  {}  {}: {what}", n.id, d.path);
            }
        }
    }

    let meshes: Vec<&NodeView> = listed
        .iter()
        .copied()
        .filter(|n| n.wireguard.is_some())
        .collect();
    if !meshes.is_empty() {
        let _ = writeln!(out, "\nwireguard");
        for n in meshes {
            let Some(wg) = &n.wireguard else { continue };
            let _ = writeln!(
                out,
                "  {} {} ({} peer(s)), key {}",
                n.id,
                wg.interface,
                wg.peers.len(),
                wg.public_key
            );
            for p in &wg.peers {
                let _ = writeln!(
                    out,
                    "    {} {}  handshake {}  rx {}  tx {}",
                    p.public_key,
                    p.endpoint.as_deref().unwrap_or("(no endpoint)"),
                    handshake(p.latest_handshake, view.at),
                    bytes(p.rx_bytes),
                    bytes(p.tx_bytes),
                );
            }
        }
    }
    out
}

fn handshake(at: Option<DateTime<Utc>>, now: DateTime<Utc>) -> String {
    at.map_or("never".to_owned(), |t| {
        format!("{} ago", age((now - t).num_seconds()))
    })
}
