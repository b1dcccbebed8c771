//! `bench-agent`: benchmark (not a test) of the node agent, for issue 5's
//! "Done when": idle RSS, requests and bytes per no-change poll, and the time
//! to activate a 1 MiB bundle excluding the proxy's reload.
//!
//! ```text
//! bench-agent [--agent PATH] [--runs N] [--polls N] [--only rss|poll|activate]
//! ```
//!
//! Prints figures, goals, PASS/FAIL and ratios against baselines measured in
//! the same run; it never asserts a time. Exit status is non-zero only when
//! something fails to work (the agent does not activate, moto_server is
//! missing, a poll is refused).
//!
//! **rss**: the release `gitfleet-agent run` (poll 1 s, no jitter) against a
//! `file://` store holding a valid channel manifest that does not change and
//! one bundle, which it activates first (reload command `true`, no proxy).
//! After at least `--polls` poll intervals with nothing to do, VmRSS and
//! VmHWM are read from `/proc/<pid>/status`; then it is stopped with SIGTERM
//! by its pid. Then again after a restart, the bundle already active.
//! Baseline: `sleep`, measured the same way.
//!
//! **poll**: the same agent against `s3://` on a local `moto_server`
//! ($GITFLEET_MOTO_SERVER or PATH), through a counting TCP forwarder on
//! 127.0.0.1 that this program runs between the two. Every HTTP exchange is
//! recorded (request line, status, bytes each way, TCP connections); the
//! figures are taken over 2 x `--polls` no-change polls (0.5 s apart),
//! after the first activation; other requests in that window (a status
//! report) are listed apart. Baseline: one unconditional GET of the same
//! manifest by the same client code (`gitfleet-agent verify`).
//!
//! **activate**: in this process, `gitfleet_agent::core::Agent` over a
//! `gitfleet_agent::node::DiskNode` (no config or health URL) and a
//! `file://` store in $TMPDIR. Each run publishes a new manifest naming a
//! new 1 MiB bundle (untimed), then times one `Agent::poll` from start to
//! `Applied { activated: 1 }`: conditional read of the manifest,
//! verification, reading and verifying the bundle, unpacking with fsync,
//! in-process validation, journal, link swap, reload, state. The reload is
//! excluded by reloading with SIGHUP to a process that ignores it (`nohup
//! sleep`): one kill(2). The same runs with reload command `true` are shown
//! too; `true` alone (`sentinel::reload`, the same code) is timed apart: the
//! agent checks a command's exit every 10 ms. Baselines, interleaved with the runs: writing the same 1 MiB
//! of files (each file created, written, fsynced) and SHA-256 of them; and
//! the same without fsync. Two bundles: a typical config (a ~20 KiB
//! `sentinel.kdl` plus static files up to 1 MiB) and the worst case (all of
//! the 1 MiB in `sentinel.kdl`, which validation parses).

use std::collections::BTreeMap;
use std::fmt::Display;
use std::io::{Read as _, Write as _};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use gitfleet_agent::core::{Agent, Identity, Polled};
use gitfleet_agent::local::StateDir;
use gitfleet_agent::node::DiskNode;
use gitfleet_agent::sentinel::{self, Reload};
use gitfleet_io::store::Store;
use gitfleet_policy::bundle::{self, Built, Input};
use gitfleet_schemas::agent::{ReloadBy, SentinelSettings};
use gitfleet_schemas::bundle::BundleKind;
use gitfleet_schemas::fleet::DriftPolicy;
use gitfleet_schemas::trust::BundleRef;
use gitfleet_schemas::verify::{self, Limits};
use gitfleet_tests::{fleet, Rng};
use sha2::{Digest as _, Sha256};

const USAGE: &str =
    "usage: bench-agent [--agent PATH] [--runs N] [--polls N] [--only rss|poll|activate]";

const MIB: usize = 1 << 20;
/// Goals from issue 5.
const RSS_GOAL_MIB: f64 = 10.0;
const ACTIVATE_GOAL_MS: f64 = 50.0;

type Res<T> = Result<T, String>;

trait Ctx<T> {
    fn ctx(self, what: impl Display) -> Res<T>;
}

impl<T, E: Display> Ctx<T> for Result<T, E> {
    fn ctx(self, what: impl Display) -> Res<T> {
        self.map_err(|e| format!("{what}: {e}"))
    }
}

impl<T> Ctx<T> for Option<T> {
    fn ctx(self, what: impl Display) -> Res<T> {
        self.ok_or_else(|| what.to_string())
    }
}

#[derive(Debug)]
struct Args {
    agent: PathBuf,
    runs: usize,
    polls: usize,
    rss: bool,
    poll: bool,
    activate: bool,
}

fn parse_args(mut it: impl Iterator<Item = String>) -> Res<Args> {
    let exe = std::env::current_exe().ctx("locating this program")?;
    let mut args = Args {
        agent: exe.with_file_name("gitfleet-agent"),
        runs: 15,
        polls: 10,
        rss: true,
        poll: true,
        activate: true,
    };
    while let Some(a) = it.next() {
        let mut value = || it.next().ctx(format!("{a} needs a value"));
        match a.as_str() {
            "--agent" => {
                let path = PathBuf::from(value()?);
                args.agent = std::fs::canonicalize(&path).unwrap_or(path);
            }
            "--runs" => args.runs = value()?.parse().ctx("--runs")?,
            "--polls" => args.polls = value()?.parse().ctx("--polls")?,
            "--only" => {
                let v = value()?;
                args.rss = v == "rss";
                args.poll = v == "poll";
                args.activate = v == "activate";
                if !(args.rss || args.poll || args.activate) {
                    return Err(format!("--only {v}: not rss, poll or activate"));
                }
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    if args.runs == 0 || args.polls == 0 {
        return Err("--runs and --polls must be at least 1".to_owned());
    }
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("bench-agent: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let e: String = e.chars().take(4000).collect();
            eprintln!("bench-agent: FAILED TO RUN: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Res<()> {
    if (args.rss || args.poll) && !args.agent.is_file() {
        return Err(format!(
            "{} does not exist; build it with `cargo build --release -p gitfleet-agent`",
            args.agent.display()
        ));
    }
    println!("agent binary: {}", args.agent.display());
    if args.rss {
        idle_rss(args)?;
    }
    if args.poll {
        no_change_polls(args)?;
    }
    if args.activate {
        activation(args)?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// A fleet of one node: keys, root, manifests, bundles.

/// A number below `n`, for indexing.
fn below(rng: &mut Rng, n: usize) -> usize {
    usize::try_from(rng.below(n as u64)).unwrap_or(0)
}

const WORDS: &[&str] = &[
    "alpha", "billing", "cart", "delta", "edge", "feed", "gateway", "health", "images", "jobs",
    "keys", "login", "media", "notify", "orders", "pay", "quota", "search", "tenant", "users",
    "video", "web", "export", "yard", "zone", "assets", "blog", "catalog", "docs", "events",
];

/// A valid Sentinel config of `routes` routes, each to its own upstream
/// with two targets.
fn sentinel_kdl(routes: usize) -> String {
    let mut rng = Rng(7);
    let names: Vec<String> = (0..routes)
        .map(|i| format!("{}-{i:05}", WORDS[below(&mut rng, WORDS.len())]))
        .collect();
    let mut out = String::from(
        "schema-version \"1.0\"\nsystem {\n    worker-threads 1\n}\nlisteners {\n    listener \"http\" {\n        address \"127.0.0.1:18080\"\n        protocol \"http\"\n    }\n}\nroutes {\n",
    );
    for name in &names {
        let (word, _) = name.split_once('-').unwrap_or((name, ""));
        out.push_str(&format!(
            "    route \"{name}\" {{\n        matches {{\n            path-prefix \"/{word}/{name}/\"\n        }}\n        upstream \"{name}\"\n    }}\n"
        ));
    }
    out.push_str("}\nupstreams {\n");
    for name in &names {
        let a = 10 + below(&mut rng, 200);
        let b = 1 + below(&mut rng, 250);
        let port = 8000 + below(&mut rng, 2000);
        out.push_str(&format!(
            "    upstream \"{name}\" {{\n        target \"10.{a}.{b}.1:{port}\"\n        target \"10.{a}.{b}.2:{port}\"\n    }}\n"
        ));
    }
    out.push_str("}\n");
    out
}

/// The largest config of `sentinel_kdl` no larger than `max` bytes.
fn sentinel_kdl_up_to(max: usize) -> String {
    let per_route = sentinel_kdl(2).len() - sentinel_kdl(1).len();
    let mut n = max / per_route;
    loop {
        let text = sentinel_kdl(n);
        if text.len() <= max || n == 0 {
            return text;
        }
        n -= 1;
    }
}

/// Text of random words, like a static page or a certificate bundle compresses.
fn filler(rng: &mut Rng, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 16);
    while out.len() < len {
        out.extend_from_slice(WORDS[below(rng, WORDS.len())].as_bytes());
        out.push(if below(rng, 12) == 0 { b'\n' } else { b' ' });
        if below(rng, 8) == 0 {
            out.extend_from_slice(format!("{:x} ", rng.next_u64()).as_bytes());
        }
    }
    out.truncate(len);
    out
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    /// A ~20 KiB `sentinel.kdl` (the largest gen-fleet makes) and 63 KiB
    /// static files up to 1 MiB.
    Typical,
    /// All of the 1 MiB in `sentinel.kdl` (padded with a KDL comment).
    KdlOnly,
}

impl Shape {
    fn name(self) -> &'static str {
        match self {
            Shape::Typical => "typical: 20 KiB sentinel.kdl + static files",
            Shape::KdlOnly => "worst case: 1 MiB sentinel.kdl",
        }
    }
}

/// Exactly 1 MiB of config files.
fn config_files(shape: Shape) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    match shape {
        Shape::Typical => {
            let kdl = sentinel_kdl_up_to(20 * 1024).into_bytes();
            let mut left = MIB - kdl.len();
            files.insert("sentinel.kdl".to_owned(), kdl);
            let mut rng = Rng(42);
            let mut i = 0;
            while left > 0 {
                let len = left.min(63 * 1024);
                files.insert(format!("static/page-{i:02}.html"), filler(&mut rng, len));
                left -= len;
                i += 1;
            }
        }
        Shape::KdlOnly => {
            let mut kdl = sentinel_kdl_up_to(MIB - 64);
            kdl.push_str("// ");
            while kdl.len() < MIB - 1 {
                kdl.push('x');
            }
            kdl.push('\n');
            files.insert("sentinel.kdl".to_owned(), kdl.into_bytes());
        }
    }
    files
}

/// A bundle of `files`; `n` changes only its source commit, so each `n`
/// is a different bundle (digest) of the same files.
fn build_bundle(files: &BTreeMap<String, Vec<u8>>, n: u64) -> Res<Built> {
    bundle::build(Input {
        kind: BundleKind::Sentinel,
        name: "edge",
        source_commit: &format!("{n:040x}"),
        validator: "sentinel-config 0.4.14",
        files,
        sbom: b"{}".to_vec(),
    })
    .ctx("building a bundle")
}

/// Put a bundle and a manifest naming it into a `file://` store directory.
fn publish_file(store: &Path, built: &Built, serial: u64, previous: Option<&BundleRef>) -> Res<()> {
    let manifest = manifest_bytes(serial, &built.reference, previous);
    fleet::publish(store, built, &manifest).ctx(store.display())
}

/// `channels/prod.json` at `serial`, every `role=edge` node on `bundle`.
fn manifest_bytes(serial: u64, bundle: &BundleRef, previous: Option<&BundleRef>) -> Vec<u8> {
    fleet::manifest_bytes(serial, "edge", &[("role", "edge")], bundle, previous)
}

/// An `agent.kdl` for node `edge-1` (role=edge) in prod.
fn agent_kdl(store: &str, state: &Path, poll: &str, heartbeat: &str) -> String {
    format!(
        r#"version 1
node "edge-1"
environment "prod"
labels role="edge"
store "{store}"
state-dir "{state}"
poll "{poll}" jitter="0ms"
heartbeat "{heartbeat}"
sentinel {{
    reload-command "true"
}}
"#,
        state = state.display()
    )
}

fn agent_cmd(agent: &Path, config: &Path, env: &[(&str, String)]) -> Command {
    let mut cmd = Command::new(agent);
    cmd.arg("-c").arg(config).env("RUST_LOG", "info");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

fn enroll(agent: &Path, dir: &Path, config: &Path, env: &[(&str, String)]) -> Res<()> {
    let root = dir.join("root-1.json");
    std::fs::write(&root, fleet::root_bytes()).ctx(root.display())?;
    let out = agent_cmd(agent, config, env)
        .arg("enroll")
        .arg("--root")
        .arg(&root)
        .output()
        .ctx("running gitfleet-agent enroll")?;
    if !out.status.success() {
        return Err(format!(
            "gitfleet-agent enroll failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

/// Wait until the agent's state.json names `bundle` as active.
fn wait_active(child: &mut Child, state: &Path, bundle: &BundleRef, log: &Path) -> Res<()> {
    let start = Instant::now();
    loop {
        if let Ok(bytes) = std::fs::read(state.join("state.json")) {
            let s: gitfleet_schemas::agent::LocalState =
                serde_json::from_slice(&bytes).ctx("state.json")?;
            if s.sentinel.is_some_and(|s| s.active == *bundle) {
                return Ok(());
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "the agent exited ({status}) before activating:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            ));
        }
        if start.elapsed() > Duration::from_secs(60) {
            stop(child)?;
            return Err(format!(
                "the agent did not activate the bundle within 60 s:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// SIGTERM to our child, by its pid; wait for it to exit.
fn stop(child: &mut Child) -> Res<std::process::ExitStatus> {
    let pid = child.id().to_string();
    let status = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .ctx("running kill")?;
    if !status.success() {
        return Err(format!("kill -TERM {pid} failed"));
    }
    let start = Instant::now();
    loop {
        if let Some(s) = child.try_wait().ctx("waiting for the agent")? {
            return Ok(s);
        }
        if start.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("pid {pid} did not exit within 10 s of SIGTERM"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn log_file(path: &Path) -> Res<(Stdio, Stdio)> {
    let f = std::fs::File::create(path).ctx(path.display())?;
    let g = f.try_clone().ctx(path.display())?;
    Ok((Stdio::from(f), Stdio::from(g)))
}

// ---------------------------------------------------------------------------
// 1. Idle RSS.

/// A field of `/proc/<pid>/status` in KiB.
fn status_kib(pid: u32, field: &str) -> Res<u64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).ctx(&path)?;
    let line = text
        .lines()
        .find(|l| l.starts_with(field))
        .ctx(format!("{path} has no {field}"))?;
    line.split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .ctx(format!("{path}: cannot read {field}"))
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> Res<f64> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).ctx(&path)?;
    let after = text.rsplit_once(')').ctx("malformed stat")?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of stat; `after` starts at field 3.
    let tick = |i: usize| -> f64 { f.get(i - 3).and_then(|v| v.parse().ok()).unwrap_or(0.0) };
    Ok((tick(14) + tick(15)) / 100.0)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn pass(ok: bool) -> &'static str {
    if ok {
        "PASS"
    } else {
        "FAIL"
    }
}

/// What one idle agent process looked like.
#[derive(Debug)]
struct Idle {
    seconds: f64,
    rss: u64,
    hwm: u64,
    anon: u64,
    file: u64,
    pss: Option<u64>,
    threads: u64,
    /// VmRSS sampled every second while idle.
    min: u64,
    max: u64,
    cpu: f64,
}

/// Start `gitfleet-agent run`, wait until `bundle` is active, let it poll
/// (1 s apart) `polls` + 1 times with nothing to do, read its memory, stop
/// it with SIGTERM.
fn idle_agent(args: &Args, dir: &Path, bundle: &BundleRef, log: &str) -> Res<Idle> {
    let log = dir.join(log);
    let (out, err) = log_file(&log)?;
    let mut child = agent_cmd(&args.agent, &dir.join("agent.kdl"), &[])
        .arg("run")
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .ctx("starting gitfleet-agent run")?;
    let pid = child.id();
    wait_active(&mut child, &dir.join("state"), bundle, &log)?;
    let active_at = Instant::now();
    let cpu0 = cpu_seconds(pid)?;
    let mut samples = Vec::new();
    for _ in 0..=args.polls {
        std::thread::sleep(Duration::from_secs(1));
        samples.push(status_kib(pid, "VmRSS:")?);
    }
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let idle = Idle {
        seconds: active_at.elapsed().as_secs_f64(),
        rss: status_kib(pid, "VmRSS:")?,
        hwm: status_kib(pid, "VmHWM:")?,
        anon: status_kib(pid, "RssAnon:")?,
        file: status_kib(pid, "RssFile:")?,
        pss: rollup
            .lines()
            .find(|l| l.starts_with("Pss:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok()),
        threads: status_kib(pid, "Threads:")?,
        min: samples.iter().min().copied().unwrap_or(0),
        max: samples.iter().max().copied().unwrap_or(0),
        cpu: cpu_seconds(pid)? - cpu0,
    };
    let exit = stop(&mut child)?;
    if !exit.success() {
        return Err(format!(
            "the agent exited with {exit} on SIGTERM:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        ));
    }
    Ok(idle)
}

fn print_idle(what: &str, i: &Idle) {
    let polls = i.seconds.floor();
    println!(
        "{what}: idle {:.1} s, {polls} no-change polls at 1 s",
        i.seconds
    );
    println!(
        "  VmRSS {:.2} MiB (RssAnon {:.2}, RssFile {:.2}; Pss {}), VmHWM {:.2} MiB, {} threads",
        mib(i.rss),
        mib(i.anon),
        mib(i.file),
        i.pss.map_or("?".to_owned(), |p| format!("{:.2}", mib(p))),
        mib(i.hwm),
        i.threads
    );
    println!(
        "  VmRSS each second while idle: {:.2} to {:.2} MiB; CPU while idle {:.2} s \
         (utime + stime, counted in 10 ms ticks)",
        mib(i.min),
        mib(i.max),
        i.cpu
    );
}

fn idle_rss(args: &Args) -> Res<()> {
    println!("\n== 1. idle RSS: gitfleet-agent run, file:// store, poll 1s, unchanged manifest");
    let tmp = tempfile::tempdir().ctx("temp dir")?;
    let dir = tmp.path();
    let store = dir.join("store");
    let state = dir.join("state");
    let config = dir.join("agent.kdl");
    std::fs::create_dir_all(&store).ctx("store dir")?;
    let url = format!("file://{}", store.display());
    std::fs::write(&config, agent_kdl(&url, &state, "1s", "1m")).ctx("agent.kdl")?;
    enroll(&args.agent, dir, &config, &[])?;
    let files = config_files(Shape::Typical);
    let built = build_bundle(&files, 1)?;
    publish_file(&store, &built, 1, None)?;
    println!(
        "bundle: {} files, {} bytes of files, {} bytes compressed",
        files.len(),
        files.values().map(Vec::len).sum::<usize>(),
        built.bytes.len()
    );
    // First start: activates the bundle, then idles.
    let activated = idle_agent(args, dir, &built.reference, "agent-1.log")?;
    // Restart: the bundle is already active, nothing to do but poll.
    let restarted = idle_agent(args, dir, &built.reference, "agent-2.log")?;

    // Baseline: a trivial process, measured the same way.
    let mut sleep = Command::new("sleep")
        .arg("60")
        .spawn()
        .ctx("starting sleep")?;
    std::thread::sleep(Duration::from_millis(300));
    let base_rss = status_kib(sleep.id(), "VmRSS:")?;
    let base_hwm = status_kib(sleep.id(), "VmHWM:")?;
    // Our own child, by its pid.
    let _ = sleep.kill();
    let _ = sleep.wait();

    print_idle("after activating the bundle", &activated);
    print_idle("restarted with the bundle active", &restarted);
    println!(
        "baseline: `sleep` VmRSS {:.2} MiB, VmHWM {:.2} MiB",
        mib(base_rss),
        mib(base_hwm)
    );
    let base = base_rss.max(1) as f64;
    println!(
        "RESULT idle RSS after an activation: {:.2} MiB (goal <= {RSS_GOAL_MIB} MiB) {}; {:.1}x the baseline; peak {:.2} MiB",
        mib(activated.rss),
        pass(mib(activated.rss) <= RSS_GOAL_MIB),
        activated.rss as f64 / base,
        mib(activated.hwm)
    );
    println!(
        "RESULT idle RSS after a restart: {:.2} MiB (goal <= {RSS_GOAL_MIB} MiB) {}; {:.1}x the baseline; peak {:.2} MiB",
        mib(restarted.rss),
        pass(mib(restarted.rss) <= RSS_GOAL_MIB),
        restarted.rss as f64 / base,
        mib(restarted.hwm)
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// 2. Requests and bytes per no-change poll, through a counting forwarder.

/// One HTTP exchange seen by the forwarder.
#[derive(Clone, Debug, Default)]
struct Exchange {
    conn: usize,
    /// The request line.
    request: String,
    status: Option<u16>,
    /// Bytes client to server, and server to client.
    up: u64,
    down: u64,
    /// The request's and the response's header blocks, as first seen.
    up_head: String,
    down_head: String,
    /// When the request started, in seconds since the forwarder started.
    at: f64,
}

/// When the forwarder started.
static FORWARDING_SINCE: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

/// The header block at the start of `data` (up to the blank line).
fn head(data: &[u8]) -> String {
    let end = data
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(data.len(), |i| i + 4);
    String::from_utf8_lossy(&data[..end]).into_owned()
}

#[derive(Debug, Default)]
struct ConnState {
    current: Option<usize>,
    /// The server has answered the current request: the client's next
    /// bytes start a new one (HTTP/1.1 without pipelining).
    answered: bool,
}

#[derive(Debug, Default)]
struct Traffic {
    exchanges: Vec<Exchange>,
    conns: Vec<ConnState>,
}

type Shared = Arc<Mutex<Traffic>>;

fn lock(t: &Shared) -> std::sync::MutexGuard<'_, Traffic> {
    t.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Forward 127.0.0.1:<returned port> to 127.0.0.1:`to`, recording each
/// exchange. Runs until the process exits.
fn forwarder(to: u16, traffic: Shared) -> Res<u16> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).ctx("binding the forwarder")?;
    let port = listener.local_addr().ctx("forwarder address")?.port();
    FORWARDING_SINCE.get_or_init(Instant::now);
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { continue };
            let Ok(server) = TcpStream::connect(("127.0.0.1", to)) else {
                continue;
            };
            let id = {
                let mut t = lock(&traffic);
                t.conns.push(ConnState::default());
                t.conns.len() - 1
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
                continue;
            };
            let t1 = traffic.clone();
            std::thread::spawn(move || pump(client, server, id, &t1, true));
            let t2 = traffic.clone();
            std::thread::spawn(move || pump(s2, c2, id, &t2, false));
        }
    });
    Ok(port)
}

fn pump(mut from: TcpStream, mut to: TcpStream, id: usize, traffic: &Shared, up: bool) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        {
            let mut guard = lock(traffic);
            let t = &mut *guard;
            let Some(conn) = t.conns.get_mut(id) else {
                break;
            };
            let data = &buf[..n];
            if up {
                if conn.current.is_none() || conn.answered {
                    let line = data.split(|b| *b == b'\r').next().unwrap_or_default();
                    t.exchanges.push(Exchange {
                        conn: id,
                        request: String::from_utf8_lossy(line).into_owned(),
                        up_head: head(data),
                        at: FORWARDING_SINCE
                            .get_or_init(Instant::now)
                            .elapsed()
                            .as_secs_f64(),
                        ..Exchange::default()
                    });
                    conn.current = Some(t.exchanges.len() - 1);
                    conn.answered = false;
                }
                if let Some(e) = conn.current.and_then(|i| t.exchanges.get_mut(i)) {
                    e.up += n as u64;
                }
            } else {
                conn.answered = true;
                if let Some(e) = conn.current.and_then(|i| t.exchanges.get_mut(i)) {
                    e.down += n as u64;
                    if e.status.is_none() {
                        e.down_head = head(data);
                        e.status = std::str::from_utf8(&data[..data.len().min(16)])
                            .ok()
                            .and_then(|s| s.split(' ').nth(1))
                            .and_then(|s| s.parse().ok());
                    }
                }
            }
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

fn find_moto() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("GITFLEET_MOTO_SERVER") {
        return Some(PathBuf::from(p)).filter(|p| p.is_file());
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join("moto_server"))
        .find(|p| p.is_file())
}

fn free_port() -> Res<u16> {
    let l = TcpListener::bind(("127.0.0.1", 0)).ctx("finding a free port")?;
    Ok(l.local_addr().ctx("port")?.port())
}

/// One unsigned HTTP/1.1 request to moto (which does not check
/// signatures); the status.
fn http(port: u16, method: &str, path: &str, body: &[u8]) -> Res<u16> {
    let mut conn = TcpStream::connect(("127.0.0.1", port)).ctx("connecting to moto")?;
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .ctx("timeout")?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).ctx("writing to moto")?;
    conn.write_all(body).ctx("writing to moto")?;
    let mut response = Vec::new();
    conn.read_to_end(&mut response).ctx("reading from moto")?;
    let text = String::from_utf8_lossy(&response);
    text.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ctx(format!("{method} {path}: no HTTP status from moto"))
}

/// A moto_server we started; killed by its pid on drop.
#[derive(Debug)]
struct Moto(Child);

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_moto(dir: &Path) -> Res<(Moto, u16)> {
    let program = find_moto().ctx(
        "moto_server was not found on PATH nor at $GITFLEET_MOTO_SERVER; install it with\n    \
         python3 -m venv .venv && .venv/bin/pip install 'moto[server]'\n\
         and set GITFLEET_MOTO_SERVER=$PWD/.venv/bin/moto_server",
    )?;
    let port = free_port()?;
    let (out, err) = log_file(&dir.join("moto.log"))?;
    let child = Command::new(&program)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .ctx(format!("starting {}", program.display()))?;
    let mut moto = Moto(child);
    let start = Instant::now();
    loop {
        if let Ok(Some(s)) = moto.0.try_wait() {
            return Err(format!("moto_server exited with {s}"));
        }
        if http(port, "GET", "/", b"").is_ok_and(|s| s == 200) {
            return Ok((moto, port));
        }
        if start.elapsed() > Duration::from_secs(60) {
            return Err("moto_server did not answer within 60 s".to_owned());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn is_manifest_get(e: &Exchange) -> bool {
    e.request.starts_with("GET ") && e.request.contains("/channels/prod.json")
}

fn no_change_polls(args: &Args) -> Res<()> {
    println!("\n== 2. requests and bytes per no-change poll: gitfleet-agent run against s3:// (moto_server)");
    let tmp = tempfile::tempdir().ctx("temp dir")?;
    let dir = tmp.path();
    let (_moto, moto_port) = start_moto(dir)?;
    let traffic: Shared = Arc::default();
    let fwd = forwarder(moto_port, traffic.clone())?;
    let bucket = "fleet";
    let status = http(moto_port, "PUT", &format!("/{bucket}"), b"")?;
    if status != 200 && status != 409 {
        return Err(format!("creating bucket {bucket}: HTTP {status}"));
    }
    let files = config_files(Shape::Typical);
    let built = build_bundle(&files, 1)?;
    let manifest = manifest_bytes(1, &built.reference, None);
    let key = built.reference.object_key().ctx("bundle key")?;
    for (path, body) in [
        (key.as_str(), built.bytes.as_slice()),
        ("channels/prod.json", manifest.as_slice()),
    ] {
        let status = http(moto_port, "PUT", &format!("/{bucket}/{path}"), body)?;
        if status != 200 {
            return Err(format!("uploading {path} to moto: HTTP {status}"));
        }
    }
    let env: Vec<(&str, String)> = vec![
        ("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{fwd}")),
        ("AWS_ACCESS_KEY_ID", "testing".to_owned()),
        ("AWS_SECRET_ACCESS_KEY", "testing".to_owned()),
        ("AWS_REGION", "us-east-1".to_owned()),
        ("AWS_DEFAULT_REGION", "us-east-1".to_owned()),
    ];
    let state = dir.join("state");
    let config = dir.join("agent.kdl");
    let poll_ms = 500;
    // A heartbeat longer than the run: the no-change polls are all it does.
    std::fs::write(
        &config,
        agent_kdl(&format!("s3://{bucket}"), &state, "500ms", "1h"),
    )
    .ctx("agent.kdl")?;
    enroll(&args.agent, dir, &config, &env)?;
    let setup = lock(&traffic).exchanges.len();

    let log = dir.join("agent.log");
    let (out, err) = log_file(&log)?;
    let mut child = agent_cmd(&args.agent, &config, &env)
        .arg("run")
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .ctx("starting gitfleet-agent run")?;
    wait_active(&mut child, &state, &built.reference, &log)?;
    // From the first no-change poll (a manifest GET answered 304), count
    // `polls` of them.
    let want = args.polls.max(10) * 2;
    let start = Instant::now();
    let (first, first_at) = loop {
        let found = lock(&traffic)
            .exchanges
            .iter()
            .enumerate()
            .skip(setup)
            .position(|(_, e)| is_manifest_get(e) && e.status == Some(304));
        if let Some(i) = found {
            break (setup + i, Instant::now());
        }
        if start.elapsed() > Duration::from_secs(30) {
            stop(&mut child)?;
            return Err(format!(
                "no conditional GET answered 304 within 30 s:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    loop {
        let n = lock(&traffic).exchanges[first..]
            .iter()
            .filter(|e| is_manifest_get(e) && e.status.is_some())
            .count();
        if n >= want {
            break;
        }
        if first_at.elapsed() > Duration::from_secs(120) {
            stop(&mut child)?;
            return Err(format!("only {n} polls in 120 s"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let window = first_at.elapsed().as_secs_f64();
    let exit = stop(&mut child)?;
    if !exit.success() {
        return Err(format!("the agent exited with {exit} on SIGTERM"));
    }
    let (activation, polls, conns) = {
        let t = lock(&traffic);
        let activation: Vec<Exchange> = t.exchanges[setup..first].to_vec();
        let polls: Vec<Exchange> = t.exchanges[first..].to_vec();
        let conns_before: std::collections::BTreeSet<usize> =
            t.exchanges[..first].iter().map(|e| e.conn).collect();
        let new_conns = polls
            .iter()
            .map(|e| e.conn)
            .filter(|c| !conns_before.contains(c))
            .collect::<std::collections::BTreeSet<_>>()
            .len();
        (activation, polls, new_conns)
    };

    // Baseline: one unconditional GET of the manifest, same client code.
    let before = lock(&traffic).exchanges.len();
    let out = agent_cmd(&args.agent, &config, &env)
        .arg("verify")
        .output()
        .ctx("running gitfleet-agent verify")?;
    if !out.status.success() {
        return Err(format!(
            "gitfleet-agent verify failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let baseline: Vec<Exchange> = lock(&traffic).exchanges[before..].to_vec();

    println!(
        "manifest: {} bytes; bundle: {} bytes",
        manifest.len(),
        built.bytes.len()
    );
    println!(
        "first poll (activation and its report), {} requests:",
        activation.len()
    );
    for e in &activation {
        println!(
            "  {:<60} {:>4}  up {:>6} B  down {:>7} B",
            e.request,
            e.status.map_or("-".to_owned(), |s| s.to_string()),
            e.up,
            e.down
        );
    }
    // A no-change poll is the conditional GET of the manifest; anything
    // else in the window (a status report) is listed on its own.
    let gets: Vec<&Exchange> = polls.iter().filter(|e| is_manifest_get(e)).collect();
    let others: Vec<&Exchange> = polls.iter().filter(|e| !is_manifest_get(e)).collect();
    let n = gets.len();
    let nf = n.max(1) as f64;
    let not_304 = gets.iter().filter(|e| e.status != Some(304)).count();
    let mut gaps: Vec<f64> = gets.windows(2).map(|w| w[1].at - w[0].at).collect();
    gaps.sort_by(f64::total_cmp);
    let gap = gaps.get(gaps.len() / 2).copied().unwrap_or(0.0);
    // Polls the agent made in the window, from its interval (each wait is
    // the interval plus the poll's own time, hence the floor).
    let by_time = ((gets.last().map_or(0.0, |e| e.at) - gets.first().map_or(0.0, |e| e.at))
        / (poll_ms as f64 / 1000.0))
        .floor()
        + 1.0;
    println!(
        "no-change polls: {n} conditional GETs in {window:.1} s, {not_304} not answered 304; \
         median {:.0} ms between them (poll every {poll_ms} ms, so {by_time} polls); \
         {conns} new TCP connections",
        gap * 1000.0
    );
    for e in &others {
        println!(
            "  not a poll, in the same window: {} -> {:?}, up {} B, down {} B",
            e.request, e.status, e.up, e.down
        );
    }
    if let Some(e) = gets.first() {
        // What the bytes of one poll are: each header line with its size.
        for (what, block, total) in [
            ("request", &e.up_head, e.up),
            ("response", &e.down_head, e.down),
        ] {
            println!("  one poll's {what}, {total} B:");
            for line in block.split("\r\n").filter(|l| !l.is_empty()) {
                let shown: String = line.chars().take(96).collect();
                let more = if shown.len() < line.len() { "..." } else { "" };
                println!("    {:>4} B  {shown}{more}", line.len() + 2);
            }
        }
    }
    let base_up: u64 = baseline.iter().map(|e| e.up).sum();
    let base_down: u64 = baseline.iter().map(|e| e.down).sum();
    println!(
        "baseline: unconditional GET (`gitfleet-agent verify`): {} request(s), up {base_up} B, down {base_down} B, total {} B",
        baseline.len(),
        base_up + base_down
    );
    let up: u64 = gets.iter().map(|e| e.up).sum();
    let down: u64 = gets.iter().map(|e| e.down).sum();
    let per_req = n as f64 / by_time.max(1.0);
    let per_up = up as f64 / nf;
    let per_down = down as f64 / nf;
    let per_total = per_up + per_down;
    let base_total = (base_up + base_down).max(1) as f64;
    println!(
        "RESULT requests per no-change poll: {per_req:.2} (goal 1) {}; baseline {} request",
        pass(per_req <= 1.0 && not_304 == 0),
        baseline.len()
    );
    println!(
        "RESULT bytes per no-change poll: up {per_up:.0} B + down {per_down:.0} B = {per_total:.0} B \
         (goal: a few hundred, taken as < 1000 B) {}; {:.2}x the unconditional GET ({} B)",
        pass(per_total < 1000.0),
        per_total / base_total,
        base_up + base_down
    );
    let all: u64 = polls.iter().map(|e| e.up + e.down).sum();
    println!(
        "  all traffic in the window, reports included: {} requests, {all} B, {:.0} B per poll",
        polls.len(),
        all as f64 / nf
    );
    println!(
        "  (HTTP bytes over TCP; TCP/IP headers and, over https, TLS records are not counted)"
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// 3. Activation of a 1 MiB bundle, in process.

fn median(v: &[Duration]) -> Duration {
    let mut s = v.to_vec();
    s.sort();
    s.get(s.len() / 2).copied().unwrap_or_default()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn range(v: &[Duration]) -> String {
    let min = v.iter().min().copied().unwrap_or_default();
    let max = v.iter().max().copied().unwrap_or_default();
    format!("{:.1} to {:.1} ms", ms(min), ms(max))
}

/// Write `files` under `dir` (each created, written, optionally fsynced)
/// and SHA-256 each: the least an activation must do with them.
fn write_and_hash(dir: &Path, files: &BTreeMap<String, Vec<u8>>, sync: bool) -> Res<Vec<u8>> {
    let mut digests = Vec::with_capacity(files.len() * 32);
    for (path, bytes) in files {
        let target = dir.join(path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).ctx(parent.display())?;
        }
        let mut f = std::fs::File::create(&target).ctx(target.display())?;
        f.write_all(bytes).ctx(target.display())?;
        if sync {
            f.sync_all().ctx(target.display())?;
        }
        digests.extend_from_slice(&Sha256::digest(bytes));
    }
    if sync {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .ctx(dir.display())?;
    }
    Ok(digests)
}

fn activation(args: &Args) -> Res<()> {
    println!("\n== 3. activation of a 1 MiB bundle, in process (Agent + DiskNode, file:// store)");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ctx("starting the runtime")?;
    // The reload command, the same code the agent runs, timed alone.
    let reload = Reload::Command(vec!["true".to_owned()]);
    let mut reloads = Vec::new();
    for _ in 0..=args.runs {
        let t = Instant::now();
        sentinel::reload(&reload).ctx("reload command `true`")?;
        reloads.push(t.elapsed());
    }
    reloads.remove(0);
    println!(
        "reload command `true` alone (`sentinel::reload`): median {:.1} ms ({}); \
         the agent checks the command's exit every 10 ms",
        ms(median(&reloads)),
        range(&reloads)
    );
    // A process that ignores SIGHUP (nohup), so that a reload by signal is
    // one kill(2): the activation without the reload.
    let mut hup = Command::new("nohup")
        .args(["sleep", "3600"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ctx("starting nohup sleep")?;
    std::thread::sleep(Duration::from_millis(100));
    let reloads = [
        ("SIGHUP", ReloadBy::Pid(hup.id())),
        (
            "reload-command `true`",
            ReloadBy::Command(vec!["true".to_owned()]),
        ),
    ];
    let measured = (|| -> Res<Vec<(Shape, &str, Medians)>> {
        let mut out = Vec::new();
        for shape in [Shape::Typical, Shape::KdlOnly] {
            for (name, reload) in &reloads {
                let m = runtime.block_on(activation_of(shape, reload.clone(), name, args.runs))?;
                out.push((shape, *name, m));
            }
        }
        Ok(out)
    })();
    let alive = matches!(hup.try_wait(), Ok(None));
    // Our own child, by its pid.
    let _ = hup.kill();
    let _ = hup.wait();
    let measured = measured?;
    if !alive {
        return Err("the SIGHUP target exited: reloads were not harmless".to_owned());
    }
    for (shape, name, m) in measured {
        if name == "SIGHUP" {
            let t = ms(m.activation);
            println!(
                "RESULT activation, {}: {t:.1} ms without the reload (SIGHUP) (goal <= {ACTIVATE_GOAL_MS} ms) {}; \
                 {:.1}x write+fsync+sha256 of the files ({:.1} ms), {:.0}x write+sha256 ({:.2} ms)",
                shape.name(),
                pass(t <= ACTIVATE_GOAL_MS),
                t / ms(m.base),
                ms(m.base),
                t / ms(m.base_nosync),
                ms(m.base_nosync)
            );
        } else {
            println!(
                "  with {name}: {:.1} ms ({:.1}x write+fsync+sha256)",
                ms(m.activation),
                ms(m.activation) / ms(m.base)
            );
        }
    }
    Ok(())
}

#[derive(Debug)]
struct Medians {
    activation: Duration,
    base: Duration,
    base_nosync: Duration,
}

/// Activations of `runs` new bundles of `shape`, each timed, and the
/// baselines interleaved with them; medians.
async fn activation_of(shape: Shape, reload: ReloadBy, name: &str, runs: usize) -> Res<Medians> {
    // The parts are timed once per shape, with the first reload.
    let parts = matches!(reload, ReloadBy::Pid(_));
    let files = config_files(shape);
    let total: usize = files.values().map(Vec::len).sum();
    let kdl = files.get("sentinel.kdl").map_or(0, Vec::len);
    let tmp = tempfile::tempdir().ctx("temp dir")?;
    let dir = tmp.path();
    let store_dir = dir.join("store");
    std::fs::create_dir_all(&store_dir).ctx("store dir")?;
    let state_dir = StateDir::open(&dir.join("state")).ctx("state dir")?;
    state_dir
        .pin_root(&fleet::root_bytes())
        .ctx("pinning the root")?;
    let key = state_dir.create_node_key(&[7; 32]).ctx("node key")?;
    let root = state_dir.trusted_root().ctx("root")?;
    let state = state_dir.load_state().ctx("state")?;
    let settings = SentinelSettings {
        reload,
        config_url: None,
        health_url: None,
        metrics_url: None,
        test_binary: None,
        confirm_timeout_ms: 10_000,
    };
    let limits = Limits::default();
    let mut node = DiskNode::new(state_dir, "edge-1", Some(settings), None, limits);
    node.recover(&state).await.ctx("recover")?;
    let store = Store::open(&format!("file://{}", store_dir.display())).ctx("store")?;
    let id = Identity {
        node: "edge-1".into(),
        environment: "prod".into(),
        labels: BTreeMap::from([("role".into(), "edge".into())]),
        drift: DriftPolicy::Report,
        max_bundle_bytes: 64 << 20,
        proxy: gitfleet_schemas::Proxy::legacy(),
    };
    let mut agent = Agent::new(id, store, root, key, node, state);

    // The bundles, built beforehand: one already active, then one per run.
    let bundles: Vec<Built> = (0..=runs as u64 + 1)
        .map(|n| build_bundle(&files, n))
        .collect::<Res<_>>()?;
    let (first, rest) = bundles.split_first().ctx("no bundles")?;
    println!(
        "\n{}, reload by {name}: {} files, {total} bytes of files (sentinel.kdl {kdl} bytes), bundle {} bytes",
        shape.name(),
        files.len(),
        first.bytes.len()
    );
    publish_file(&store_dir, first, 1, None)?;
    match agent.poll(Utc::now()).await {
        Polled::Applied { activated: 1, .. } => {}
        other => {
            let failed = agent.state().failed.clone();
            return Err(format!(
                "the first activation: {other:?}; failed: {failed:?}"
            ));
        }
    }

    let mut act = Vec::new();
    let mut base = Vec::new();
    let mut base_nosync = Vec::new();
    let scratch = dir.join("baseline");
    let mut previous = first.reference.clone();
    for (i, built) in rest.iter().enumerate() {
        // Baselines, interleaved with the runs.
        for (sync, out) in [(true, &mut base), (false, &mut base_nosync)] {
            let _ = std::fs::remove_dir_all(&scratch);
            std::fs::create_dir_all(&scratch).ctx("baseline dir")?;
            let t = Instant::now();
            let digests = write_and_hash(&scratch, &files, sync)?;
            out.push(t.elapsed());
            std::hint::black_box(digests);
        }
        publish_file(&store_dir, built, i as u64 + 2, Some(&previous))?;
        let t = Instant::now();
        let polled = agent.poll(Utc::now()).await;
        let took = t.elapsed();
        match polled {
            Polled::Applied { activated: 1, .. } => {}
            other => {
                return Err(format!(
                    "activation {i}: {other:?}; last error {:?}; failed: {:?}",
                    agent.last_error(),
                    agent.state().failed
                ))
            }
        }
        if agent.state().sentinel.as_ref().map(|s| &s.active) != Some(&built.reference) {
            return Err(format!("activation {i}: the bundle is not active"));
        }
        act.push(took);
        previous = built.reference.clone();
    }
    // The first of each is a warm-up.
    act.remove(0);
    base.remove(0);
    base_nosync.remove(0);

    println!(
        "  activation (Agent::poll):                  median {:.1} ms ({}, {} runs)",
        ms(median(&act)),
        range(&act),
        act.len()
    );
    println!(
        "  baseline write+fsync+sha256 of the files:  median {:.1} ms ({})",
        ms(median(&base)),
        range(&base)
    );
    println!(
        "  baseline write+sha256 (no fsync):          median {:.2} ms ({})",
        ms(median(&base_nosync)),
        range(&base_nosync)
    );
    let medians = Medians {
        activation: median(&act),
        base: median(&base),
        base_nosync: median(&base_nosync),
    };
    if !parts {
        return Ok(medians);
    }

    // Where the time goes: the main steps alone, same bytes.
    let last = rest.last().ctx("no bundles")?;
    let mut t_verify = Vec::new();
    let mut t_unpack = Vec::new();
    let mut t_validate = Vec::new();
    let scratch_dir = dir.join("parts");
    for _ in 0..runs {
        let t = Instant::now();
        let verified =
            verify::verify_bundle(&last.reference, &last.bytes, limits).ctx("verify_bundle")?;
        t_verify.push(t.elapsed());
        let _ = std::fs::remove_dir_all(&scratch_dir);
        let scratch_state = StateDir::open(&scratch_dir).ctx("scratch state dir")?;
        let t = Instant::now();
        let unpacked = scratch_state.unpack(&verified, &last.bytes).ctx("unpack")?;
        t_unpack.push(t.elapsed());
        let t = Instant::now();
        sentinel::validate(
            &unpacked.join("files"),
            gitfleet_schemas::ProxyKind::Sentinel,
        )
        .ctx("validate")?;
        t_validate.push(t.elapsed());
    }
    println!(
        "  parts alone: verify_bundle {:.1} ms, unpack (with fsync) {:.1} ms, validate {:.1} ms",
        ms(median(&t_verify)),
        ms(median(&t_unpack)),
        ms(median(&t_validate))
    );
    Ok(medians)
}
