//! Push to every agent converged (issues 7 and 23), with every simulated
//! agent and the reconciler in this process over one in-memory store.
//!
//! ```sh
//! cargo build --release -p gitfleet-tests --bin gen-fleet -p gitfleet-reconciler --example bench-converge
//! bash bench/converge.sh          # NODES=1000 POLL=1s RUNS=5; see the script
//! ```
//!
//! Given a fleet repo (from `gen-fleet`, made to converge in one step by
//! `bench/converge.sh`), it sets the repo up as `gitfleet up` does (fresh
//! keys, a root, a bare repo to push to, every node's key its simulator
//! key), with fleet.kdl's poll intervals taken out so that the agents'
//! own apply (`--poll`, `--jitter`, `--idle-poll`: agent.kdl's `poll`).
//! Then, in this process:
//! the real reconciler (its own thread, passes on every push and every
//! `--interval`) and one real agent per node over a simulated node
//! (`gitfleet simulate`'s code: each verifies its manifests and bundles
//! itself; activation takes `--apply-latency`), all against one
//! `memory://` store, every request delayed by `--store-latency`. With
//! `--idle`, fleet.kdl names a `report-to` served here
//! (`POST /v1/reports/<node>`), so a manifest tells its agents when no
//! rollout moves and they poll at their idle interval (`--idle-poll`, the
//! agent's default 5 minutes) and send heartbeats over HTTP.
//!
//! Once every node runs its first bundle, each of `--pushes` runs commits
//! a change to every config, pushes it and measures:
//!
//!   published: push -> every environment's manifest in the store names
//!              the new bundles (the whole pass: git fetch, check, build,
//!              upload, state commit, signing), looked at every 10 ms
//!   limit:     published + the longest poll interval in force before the
//!              push (interval + jitter), the latest an agent can look
//!   converged: push -> when each node began running its new bundle (the
//!              agent's own activation, as its next report says); p50, max
//!
//! and prints PASS when max <= limit + `--margin`. Also printed: CPU time
//! and peak RSS of this process, the agents' store requests per node and
//! minute, and the reconciler's. Results are printed, never asserted.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use chrono::Utc;
use gitfleet_agent::cadence::{Cadence, Local};
use gitfleet_agent::sim::SimSettings;
use gitfleet_io::store::{Fetch, Store};
use gitfleet_reconciler::commands::simulate::{self, millis, Swarm, View};
use gitfleet_reconciler::commands::up::{self, Layout};
use gitfleet_reconciler::git::{Mirror, Remote};
use gitfleet_reconciler::pass::{self, Reconciler};
use gitfleet_schemas::fleet::DriftPolicy;
use gitfleet_schemas::keyfile::KeyRole;
use gitfleet_schemas::trust::ChannelManifest;
use std::collections::BTreeMap;

const USAGE: &str = "usage: bench-converge --repo DIR --dir NEW_DIR [--poll 1s] [--jitter D] \
[--idle] [--idle-poll 5m] [--heartbeat 1m] [--store-latency 0ms] [--apply-latency 50ms] \
[--interval 5s] [--pushes 1] [--margin 1s]";

struct Args {
    repo: PathBuf,
    dir: PathBuf,
    poll: Duration,
    jitter: Option<Duration>,
    idle: bool,
    idle_poll: Duration,
    heartbeat: Duration,
    store_latency: Duration,
    apply_latency: Duration,
    interval: Duration,
    pushes: usize,
    margin: Duration,
}

fn args() -> Result<Args, String> {
    let mut out = Args {
        repo: PathBuf::new(),
        dir: PathBuf::new(),
        poll: Duration::from_secs(1),
        jitter: None,
        idle: false,
        idle_poll: Duration::from_secs(300),
        heartbeat: Duration::from_secs(60),
        store_latency: Duration::ZERO,
        apply_latency: Duration::from_millis(50),
        interval: Duration::from_secs(5),
        pushes: 1,
        margin: Duration::from_secs(1),
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().ok_or(format!("{a} needs a value\n{USAGE}"));
        let duration =
            |v: String| humantime::parse_duration(&v).map_err(|e| format!("{a} {v}: {e}"));
        match a.as_str() {
            "--repo" => out.repo = value()?.into(),
            "--dir" => out.dir = value()?.into(),
            "--poll" => out.poll = duration(value()?)?,
            "--jitter" => out.jitter = Some(duration(value()?)?),
            "--idle" => out.idle = true,
            "--idle-poll" => out.idle_poll = duration(value()?)?,
            "--heartbeat" => out.heartbeat = duration(value()?)?,
            "--store-latency" => out.store_latency = duration(value()?)?,
            "--apply-latency" => out.apply_latency = duration(value()?)?,
            "--interval" => out.interval = duration(value()?)?,
            "--margin" => out.margin = duration(value()?)?,
            "--pushes" => {
                let v = value()?;
                out.pushes = v.parse().map_err(|e| format!("--pushes {v}: {e}"))?;
            }
            "-h" | "--help" => return Err(USAGE.to_owned()),
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    if out.repo.as_os_str().is_empty() || out.dir.as_os_str().is_empty() {
        return Err(format!("--repo and --dir are required\n{USAGE}"));
    }
    Ok(out)
}

fn main() -> anyhow::Result<()> {
    let args = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("GITFLEET_LOG")
                .unwrap_or_else(|_| "warn,gitfleet_agent=error".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(run(&args))
}

/// fleet.kdl's `defaults` without poll intervals (the agents' own are
/// used: `--poll`, `--idle-poll`) and, when given, with `report-to`
/// naming `report_to`.
fn fleet_kdl(text: &str, report_to: Option<&str>) -> anyhow::Result<String> {
    let mut out = String::new();
    let mut seen = false;
    for line in text.lines() {
        let t = line.trim_start();
        if t.starts_with("poll-interval ")
            || t.starts_with("idle-poll-interval ")
            || t.starts_with("report-to ")
        {
            continue;
        }
        out.push_str(line);
        out.push('\n');
        if t.starts_with("defaults {") {
            seen = true;
            if let Some(url) = report_to {
                out.push_str(&format!("    report-to \"{url}\"\n"));
            }
        }
    }
    if !seen {
        bail!("fleet.kdl has no `defaults {{` line");
    }
    Ok(out)
}

/// environment -> rollout -> bundle digest, from the channel manifests
/// (their payloads; the agents verify them).
async fn targets(
    store: &Store,
    environments: &[String],
) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for env in environments {
        let key = gitfleet_schemas::keys::channel(env);
        let Ok(Fetch::Found(o)) = store.get_if_changed(&key, None).await else {
            continue;
        };
        let Some(m) = manifest(&o.bytes) else {
            continue;
        };
        out.insert(
            env.clone(),
            m.rollouts
                .into_iter()
                .map(|r| (r.name, r.bundle.digest))
                .collect(),
        );
    }
    out
}

fn manifest(bytes: &[u8]) -> Option<ChannelManifest> {
    use base64::Engine as _;
    let envelope: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    let payload = base64::engine::general_purpose::STANDARD
        .decode(envelope.get("payload")?.as_str()?)
        .ok()?;
    serde_json::from_slice(&payload).ok()
}

/// Whether `view` runs, of every rollout it runs that its environment's
/// manifest names, that manifest's bundle (and runs at least one).
fn converged(view: &View, want: &BTreeMap<String, BTreeMap<String, String>>) -> bool {
    let Some(t) = want.get(&view.environment) else {
        return false;
    };
    let mut any = false;
    for (rollout, digest) in &view.running {
        if let Some(d) = t.get(rollout) {
            if d != digest {
                return false;
            }
            any = true;
        }
    }
    any
}

fn cpu_seconds() -> f64 {
    // utime + stime of this process, from /proc (Linux).
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn git(dir: &Path, args: &[&str]) -> anyhow::Result<()> {
    let status = std::process::Command::new("git")
        .args(["-c", "user.name=bench", "-c", "user.email=bench@localhost"])
        .args(args)
        .current_dir(dir)
        .status()
        .context("running git")?;
    if !status.success() {
        bail!("git {} failed in {}", args.join(" "), dir.display());
    }
    Ok(())
}

/// Append a comment to every config of the work clone, commit and push.
fn push_a_change(work: &Path, n: usize) -> anyhow::Result<()> {
    let configs = work.join("configs");
    let mut changed = 0;
    for entry in
        std::fs::read_dir(&configs).with_context(|| format!("reading {}", configs.display()))?
    {
        let dir = entry?.path();
        for name in ["sentinel.kdl", "zentinel.kdl"] {
            let file = dir.join(name);
            if file.exists() {
                let mut text = std::fs::read_to_string(&file)?;
                text.push_str(&format!("// bench: change {n}\n"));
                std::fs::write(&file, text)?;
                changed += 1;
            }
        }
    }
    if changed == 0 {
        bail!("{} holds no configs to change", configs.display());
    }
    git(
        work,
        &[
            "commit",
            "-qam",
            &format!("bench: change every config ({n})"),
        ],
    )?;
    git(work, &["push", "-q"])
}

async fn run(args: &Args) -> anyhow::Result<()> {
    let layout = Layout::new(&args.dir)?;
    if args.dir.exists() {
        bail!("{} exists; give a new directory", args.dir.display());
    }
    let (mut files, _) = gitfleet_reconciler::source::read_worktree(&args.repo)?;

    // Heartbeats over HTTP, when asked: the listener first, for its port.
    let listener = if args.idle {
        Some(gitfleet_reconciler::web::listen("127.0.0.1:0".parse()?).await?)
    } else {
        None
    };
    let report_to = match &listener {
        Some(l) => Some(format!("http://{}", l.local_addr()?)),
        None => None,
    };
    let fleet = files
        .text(gitfleet_policy::model::FLEET_FILE)
        .context("the repo has no fleet.kdl")?
        .to_owned();
    files.insert(
        gitfleet_policy::model::FLEET_FILE,
        fleet_kdl(&fleet, report_to.as_deref())?.as_bytes(),
    );
    let t = Instant::now();
    up::set_up(&layout, &files, None, Utc::now())?;
    eprintln!(
        "set up {} in {:.1} s",
        args.dir.display(),
        t.elapsed().as_secs_f64()
    );

    // One in-memory store; each party counts its own requests.
    let base = Store::open("memory://")?;
    let root = std::fs::read(layout.root())?;
    base.put(&gitfleet_schemas::keys::root(1), root.clone().into())
        .await?;
    let slow = base.with_latency(args.store_latency);
    let agents_store = slow.with_own_counts();
    let reconciler_store = slow.with_own_counts();
    let look = base.with_own_counts();

    let online = gitfleet_reconciler::keys::load(&layout.online_key(), KeyRole::Online, "signing")?;
    let mut remote = Remote::new(format!("file://{}", layout.bare().display()));
    remote.state_branch = "gitfleet/state".to_owned();
    let mirror = Mirror::open_or_clone(remote, &layout.mirror())?;
    let mut reconciler =
        Reconciler::new(mirror, reconciler_store.clone(), online.key, "bench".into());

    let t = Instant::now();
    let agents = simulate::agents(&simulate::Setup {
        repo: &layout.bare(),
        rev: Some("main"),
        nodes: None,
        store: &agents_store,
        root: &root,
        root_name: "root-1.json",
        settings: SimSettings {
            apply_latency: args.apply_latency,
            failure_rate: 0.0,
        },
        state_dir: None,
    })?;
    let nodes = agents.len();
    let mut environments: Vec<String> = agents.iter().map(|(e, _)| e.clone()).collect();
    environments.sort();
    environments.dedup();
    eprintln!("{nodes} agents made in {:.1} s", t.elapsed().as_secs_f64());

    let (trigger_tx, trigger_rx) = tokio::sync::mpsc::channel(1);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let pages = Arc::new(gitfleet_reconciler::web::AppState::new(
        None,
        trigger_tx.clone(),
        chrono::Duration::minutes(15),
        Some(gitfleet_reconciler::web::Io::of(&mut reconciler)),
    ));
    let on_pass = Arc::clone(&pages);
    let passes = Arc::new(std::sync::Mutex::new(Vec::<(Duration, bool)>::new()));
    let passes_seen = Arc::clone(&passes);
    let thread = pass::spawn_passes(
        reconciler,
        args.interval,
        trigger_rx,
        stop_rx,
        move |r, took| {
            on_pass.record(r, took);
            if let Err(e) = r {
                eprintln!("pass failed: {}", gitfleet_io::error_chain(e));
            }
            if let Ok(mut p) = passes_seen.lock() {
                p.push((took, r.is_ok()));
            }
        },
    )?;
    if let Some(l) = listener {
        let router = gitfleet_reconciler::web::router(Arc::clone(&pages));
        tokio::spawn(async move {
            if let Err(e) = axum::serve(l, router).await {
                eprintln!("serving reports: {e}");
            }
        });
    }

    let jitter = args.jitter.unwrap_or(args.poll / 10);
    let local = Local {
        poll_ms: millis(args.poll),
        jitter_ms: millis(jitter),
        idle_poll_ms: millis(args.idle_poll),
        heartbeat_ms: millis(args.heartbeat),
        drift: DriftPolicy::Report,
    };
    let swarm = Swarm::start(agents, local)?;
    let started = Instant::now();

    // The first rollout.
    eprintln!("waiting for every node's first bundle ...");
    let cpu0 = cpu_seconds();
    loop {
        let want = targets(&look, &environments).await;
        let done = swarm.with_views(|v| v.iter().filter(|v| converged(v, &want)).count());
        if done == nodes {
            break;
        }
        if started.elapsed() > Duration::from_secs(1800) {
            bail!("only {done} of {nodes} nodes converged on the first rollout in 30 minutes");
        }
        if started.elapsed().as_secs().is_multiple_of(10) {
            eprintln!("  [{:>4} s] {done}/{nodes}", started.elapsed().as_secs());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    eprintln!(
        "first rollout: {nodes} nodes in {:.1} s, {:.1} s CPU",
        started.elapsed().as_secs_f64(),
        cpu_seconds() - cpu0
    );
    // Let the fleet settle (reports read, rollouts complete, manifests
    // idle when they say so), then count what an idle minute costs.
    let settle = (args.poll * 3).max(Duration::from_secs(10));
    tokio::time::sleep(settle).await;
    if args.idle {
        settle_idle(&look, &environments, args.poll + jitter).await?;
    }

    println!(
        "nodes={nodes} poll={} jitter={} idle={} idle_poll={} store_latency={} apply_latency={}",
        humantime::format_duration(args.poll),
        humantime::format_duration(jitter),
        args.idle,
        humantime::format_duration(args.idle_poll),
        humantime::format_duration(args.store_latency),
        humantime::format_duration(args.apply_latency)
    );
    println!(
        "| push | published | limit | converged p50 | converged max | goal (limit + {}) | CPU |",
        humantime::format_duration(args.margin)
    );
    println!("|---|---|---|---|---|---|---|");
    let work = layout.work();
    let mut passed = 0;
    for n in 1..=args.pushes {
        let before = targets(&look, &environments).await;
        // The interval in force before the push: idle when the manifests
        // say so.
        let interval = longest_interval(&look, &environments, &local).await;
        let a0 = agents_store.counts();
        let cpu0 = cpu_seconds();
        let t0 = Instant::now();
        push_a_change(&work, n)?;
        let _ = trigger_tx.try_send(());
        // Published: every environment's manifest names new bundles.
        let published = loop {
            let want = targets(&look, &environments).await;
            let all_new = before.iter().all(|(env, rs)| {
                rs.iter()
                    .all(|(r, d)| want.get(env).and_then(|t| t.get(r)).is_some_and(|w| w != d))
            });
            if all_new {
                break t0.elapsed();
            }
            if t0.elapsed() > Duration::from_secs(600) {
                bail!("push {n}: the manifests did not change in 10 minutes");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let want = targets(&look, &environments).await;
        let mut times: Vec<Duration> = loop {
            let seen: Option<Vec<Duration>> = swarm.with_views(|views| {
                views
                    .iter()
                    .map(|v| {
                        v.since
                            .filter(|_| converged(v, &want))
                            .map(|s| s.saturating_duration_since(t0))
                    })
                    .collect()
            });
            if let Some(all) = seen {
                break all;
            }
            if t0.elapsed() > published + interval * 3 + Duration::from_secs(600) {
                let done = swarm.with_views(|v| v.iter().filter(|v| converged(v, &want)).count());
                bail!("push {n}: only {done} of {nodes} nodes converged");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        times.sort();
        let p50 = times[times.len() / 2];
        let max = times[times.len() - 1];
        let limit = published + interval;
        let ok = max <= limit + args.margin;
        passed += usize::from(ok);
        let a1 = agents_store.counts();
        println!(
            "| {n} | {:.2} s | {:.2} s | {:.2} s | {:.2} s | {} ({:.2} s) | {:.1} s |",
            published.as_secs_f64(),
            limit.as_secs_f64(),
            p50.as_secs_f64(),
            max.as_secs_f64(),
            if ok { "PASS" } else { "FAIL" },
            (limit + args.margin).as_secs_f64(),
            cpu_seconds() - cpu0,
        );
        eprintln!(
            "  push {n}: agents' store requests from push to converged: {} GET ({} not modified), {} PUT",
            a1.get + a1.get_not_modified - a0.get - a0.get_not_modified,
            a1.get_not_modified - a0.get_not_modified,
            a1.put + a1.put_conditional - a0.put - a0.put_conditional
        );
        // Let the rollout complete and the fleet go idle again.
        tokio::time::sleep(settle).await;
        if args.idle {
            settle_idle(&look, &environments, args.poll + jitter).await?;
        }
    }
    let minutes = started.elapsed().as_secs_f64() / 60.0;
    let a = agents_store.counts();
    let r = reconciler_store.counts();
    let per = |n: u64| n as f64 / nodes as f64 / minutes;
    println!(
        "within the goal: {passed} of {} pushes; this process: {:.0} s CPU over {:.0} s, peak RSS {:.0} MiB",
        args.pushes,
        cpu_seconds(),
        started.elapsed().as_secs_f64(),
        peak_rss_mib()
    );
    println!(
        "agents' store requests per node and minute: {:.3} GET ({:.3} not modified), {:.4} PUT; reconciler: {} LIST, {} GET, {} PUT in {} passes",
        per(a.get + a.get_not_modified),
        per(a.get_not_modified),
        per(a.put + a.put_conditional),
        r.list,
        r.get + r.get_not_modified,
        r.put + r.put_conditional,
        passes.lock().map(|p| p.len()).unwrap_or(0),
    );
    swarm.stop(Duration::from_secs(5)).await;
    let _ = stop_tx.send(true);
    match thread.join() {
        Ok(r) => r?,
        Err(_) => bail!("the reconciler thread panicked"),
    }
    Ok(())
}

/// Wait until every environment's manifest says no rollout moves there,
/// then one fast poll interval more, by which every agent has read it and
/// polls at its idle interval.
async fn settle_idle(store: &Store, environments: &[String], poll: Duration) -> anyhow::Result<()> {
    let start = Instant::now();
    eprintln!("waiting for every manifest to say the fleet is idle ...");
    loop {
        let mut idle = true;
        for env in environments {
            let key = gitfleet_schemas::keys::channel(env);
            idle &= match store.get_if_changed(&key, None).await {
                Ok(Fetch::Found(o)) => manifest(&o.bytes)
                    .and_then(|m| m.settings)
                    .is_some_and(|s| s.idle),
                _ => false,
            };
        }
        if idle {
            break;
        }
        if start.elapsed() > Duration::from_secs(1800) {
            bail!("the manifests did not say idle within 30 minutes");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    eprintln!(
        "idle after {:.0} s; one more poll interval",
        start.elapsed().as_secs_f64()
    );
    tokio::time::sleep(poll).await;
    Ok(())
}

/// The longest wait between two polls an agent may have now: the
/// cadence each environment's manifest puts in force (idle or not), with
/// all of its jitter.
async fn longest_interval(store: &Store, environments: &[String], local: &Local) -> Duration {
    let mut longest = Duration::ZERO;
    for env in environments {
        let key = gitfleet_schemas::keys::channel(env);
        let settings = match store.get_if_changed(&key, None).await {
            Ok(Fetch::Found(o)) => manifest(&o.bytes).and_then(|m| m.settings),
            _ => None,
        };
        let c = Cadence::of(local, settings.as_ref());
        longest = longest.max(Duration::from_millis(c.poll_ms + c.jitter_ms));
    }
    longest
}
