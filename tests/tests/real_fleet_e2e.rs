//! A rollout on real parts only: `git daemon` serving the fleet repo,
//! moto_server as S3, `gitfleet serve` reconciling, and three real
//! `gitfleet-agent` processes, each on its own test host (a network
//! namespace) driving a real Sentinel 0.4.14 in front of real upstream
//! servers, with real requests sent through every proxy.
//!
//! What it proves, in order:
//! 1. a good config goes through dev and staging step by step, each gate
//!    judged on the metrics the agents scraped from their proxies, and the
//!    state branch records the measured values that passed;
//! 2. a config that sends the route to an upstream answering 500 trips the
//!    error-rate gate, is rolled back, and the proxy serves the previous
//!    route again (timed: first failing request to back on the previous
//!    bundle, printed for BENCHMARKS.md);
//! 3. a slow upstream trips the p99 gate, a second bad push in a row, and
//!    nodes again go back to the bundle they ran before;
//! 4. with no traffic the step waits ("waiting for traffic") and fails at
//!    its deadline with "not enough traffic", never passing;
//! 5. `drift "repair"` in fleet.kdl (agent.kdl says "report") makes a real
//!    agent restore an edited config file; `heartbeat` in fleet.kdl beats
//!    agent.kdl's too;
//! 6. fleet.kdl's webhook receiver, down for its first two requests, is
//!    told by `serve` that dev completed the first config and rolled back
//!    each of the three after it, each once by id, signed.
//!
//! Needs root (network namespaces), sentinel, moto_server and git.

#![allow(clippy::unwrap_used)] // test helpers fail the test by panicking

use std::net::{Ipv4Addr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gitfleet_io::git_daemon::GitDaemon;
use gitfleet_io::moto::Moto;
use gitfleet_schemas::agent::LocalState;
use gitfleet_schemas::state::{EnvState, Phase, RolloutState};
use gitfleet_tests::netns::{self, Netns};
use gitfleet_tests::real::{self, wait_for};
use gitfleet_tests::receiver::Receiver;
use gitfleet_tests::sentinel::{free_port, restart_script, serve_upstream, try_get};
use gitfleet_tests::{bin, git, state_file, text};

/// Where the test talks to each proxy, inside each node's namespace.
struct Ports {
    proxy: u16,
    good: u16,
    failing: u16,
    slow: u16,
}

/// One request through a proxy: when, and the status it answered.
#[derive(Clone, Debug)]
struct Answer {
    at: Instant,
    wall: chrono::DateTime<chrono::Utc>,
    status: Option<u16>,
}

/// A test host: its namespace, agent, and the proxy its agent starts.
struct Node {
    id: String,
    dir: PathBuf,
    ns: Netns,
    agent: Option<Child>,
    answers: Arc<Mutex<Vec<Answer>>>,
}

impl Node {
    fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    fn state(&self) -> Option<LocalState> {
        serde_json::from_slice(&std::fs::read(self.path("state/state.json")).ok()?).ok()
    }

    fn active(&self) -> Option<String> {
        self.state()?.sentinel.map(|s| s.active.digest)
    }

    fn agent_log(&self) -> String {
        std::fs::read_to_string(self.path("agent.err")).unwrap_or_default()
    }

    /// One GET of `/app` through this node's proxy, from inside its host.
    fn get(&self, port: u16) -> Option<(u16, String)> {
        self.ns
            .spawn(move || try_get(port, "/app").ok())
            .join()
            .unwrap()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut agent) = self.agent.take() {
            let _ = agent.kill();
            let _ = agent.wait();
        }
        // The proxy the restart script started, by the pid it recorded.
        if let Ok(pid) = std::fs::read_to_string(self.path("sentinel.pid")) {
            let _ = Command::new("kill").arg("-9").arg(pid.trim()).status();
        }
    }
}

/// An upstream on the calling thread's loopback (its namespace's).
fn upstream(port: u16, status: u16, delay: Duration, body: &'static str) {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, port)).unwrap();
    serve_upstream(listener, status, delay, body);
}

fn sentinel_config(ports: &Ports, upstream: &str, note: &str) -> String {
    format!(
        r#"// {note}
schema-version "1.0"
system {{
    worker-threads 1
}}
listeners {{
    listener "http" {{
        address "127.0.0.1:{proxy}"
        protocol "http"
    }}
}}
routes {{
    route "config" {{
        priority "high"
        matches {{
            path "/-/config"
        }}
        builtin-handler "config"
    }}
    route "metrics" {{
        priority "high"
        matches {{
            path "/-/metrics"
        }}
        builtin-handler "metrics"
    }}
    route "app" {{
        matches {{
            path-prefix "/app"
        }}
        upstream "{upstream}"
    }}
}}
upstreams {{
    upstream "good" {{
        target "127.0.0.1:{good}"
    }}
    upstream "failing" {{
        target "127.0.0.1:{failing}"
    }}
    upstream "slow" {{
        target "127.0.0.1:{slow}"
    }}
}}
"#,
        proxy = ports.proxy,
        good = ports.good,
        failing = ports.failing,
        slow = ports.slow,
    )
}

const ROLLOUT: &str = r#"version 1
config "edge"
selector role="edge"
step count=1
step percent=100
max-unavailable 1
bake "2s"
progress-deadline "15s"
gates {
    healthy
    max-error-rate 0.05
    max-p99-latency "500ms"
    min-requests 8
    route "app"
}
"#;

/// The fleet's store, in moto.
const STORE: &str = "s3://gitfleet/fleet";

struct World {
    dir: tempfile::TempDir,
    ports: Ports,
    nodes: Vec<Node>,
    serve: Option<Child>,
    traffic_on: Arc<AtomicBool>,
    /// Traffic clients stop when this goes false.
    alive: Arc<AtomicBool>,
    _daemon: GitDaemon,
    moto: Moto,
    /// fleet.kdl's `notify "ops"` webhook: down for its first two requests.
    receiver: Receiver,
}

/// The receiver's HMAC secret, in serve's environment.
const HOOK_SECRET: &str = "real-fleet-hook-secret";

impl Drop for World {
    fn drop(&mut self) {
        if let Some(mut serve) = self.serve.take() {
            let _ = serve.kill();
            let _ = serve.wait();
        }
        self.alive.store(false, Ordering::SeqCst);
        // Nodes (agents, proxies, namespaces) go before the directory.
        self.nodes.clear();
    }
}

impl World {
    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn bare(&self) -> PathBuf {
        self.path("fleet.git")
    }

    fn env(&self, name: &str) -> Option<EnvState> {
        state_file::<RolloutState>(&self.bare(), "rollouts/edge.json")?
            .environments
            .get(name)
            .cloned()
    }

    /// What went wrong, for a failing wait: the rollout state, the logs.
    fn context(&self) -> String {
        let mut out = format!(
            "dev: {:?}\nstaging: {:?}\nserve:\n{}\n",
            self.env("dev"),
            self.env("staging"),
            std::fs::read_to_string(self.path("serve.err")).unwrap_or_default()
        );
        for n in &self.nodes {
            let log = n.agent_log();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            let proxy = std::fs::read_to_string(n.path("proxy/sentinel.log")).unwrap_or_default();
            let errors: Vec<&str> = proxy.lines().filter(|l| l.contains("ERROR")).collect();
            out.push_str(&format!(
                "--- {} (active {:?})\n{}\nproxy errors (last 5 of {}):\n{}\n",
                n.id,
                n.active(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
                errors.len(),
                errors[errors.len().saturating_sub(5)..].join("\n")
            ));
        }
        out
    }

    fn push(&self, upstream: &str, note: &str) -> String {
        let work = self.path("work");
        std::fs::write(
            work.join("configs/edge/sentinel.kdl"),
            sentinel_config(&self.ports, upstream, note),
        )
        .unwrap();
        git(&work, &["commit", "-qam", note]);
        git(&work, &["push", "-q", "origin", "main"]);
        git(&work, &["rev-parse", "HEAD"]).trim().to_owned()
    }

    /// Wait until `env` reaches `phase` for a bundle built from `commit`.
    fn wait_phase(&self, env: &str, commit: &str, phase: Phase, limit: Duration) -> EnvState {
        wait_for(
            &format!("{env} {phase:?} at {commit}"),
            limit,
            || self.context(),
            || {
                self.env(env)
                    .filter(|s| s.source_commit == commit && s.phase == phase)
            },
        )
    }

    /// Wait until `node` runs `bundle` again and its proxy serves the good
    /// upstream.
    fn wait_back(&self, node: &Node, bundle: &str, what: &str) {
        wait_for(
            what,
            Duration::from_secs(60),
            || self.context(),
            || {
                (node.active().as_deref() == Some(bundle)
                    && node.get(self.ports.proxy).is_some_and(|(_, b)| b == "good"))
                .then_some(())
            },
        );
    }

    /// Every node's proxy answers `/app` with `body`.
    fn all_serve(&self, body: &str) -> bool {
        self.nodes.iter().all(|n| {
            n.get(self.ports.proxy)
                .is_some_and(|(s, b)| s == 200 && b == body)
        })
    }
}

fn start() -> World {
    assert!(
        netns::available(),
        "the real-fleet end-to-end test runs each node in its own network namespace: run it as root"
    );
    gitfleet_tests::sentinel::binary();
    let dir = tempfile::tempdir().unwrap();
    let moto = Moto::start();
    let store = STORE;
    moto.store(store);
    let ports = Ports {
        proxy: free_port(),
        good: free_port(),
        failing: free_port(),
        slow: free_port(),
    };
    let root_key = gitfleet_tests::fleet_keys(dir.path(), "acme");
    let receiver = Receiver::start(2);

    let work = dir.path().join("work");
    std::fs::create_dir_all(work.join("configs/edge")).unwrap();
    std::fs::create_dir_all(work.join("rollouts")).unwrap();
    std::fs::create_dir_all(work.join("nodes")).unwrap();
    std::fs::write(
        work.join("fleet.kdl"),
        format!(
            r#"version 1
name "acme"
store "{store}"
trust threshold=1 {{
    root-key "{root_key}"
}}
defaults {{
    heartbeat "2s"
    drift "repair"
}}
notify "ops" {{
    webhook "{hook}/gitfleet" secret-env="GITFLEET_NOTIFY_TEST_SECRET"
    events "rollout-completed" "rollout-rolled-back"
    environments "dev"
}}
"#,
            hook = receiver.url,
        ),
    )
    .unwrap();
    std::fs::write(
        work.join("environments.kdl"),
        "version 1\nenvironment \"dev\"\nenvironment \"staging\" {\n    after \"dev\"\n}\n",
    )
    .unwrap();
    std::fs::write(work.join("rollouts/edge.kdl"), ROLLOUT).unwrap();
    std::fs::write(
        work.join("configs/edge/sentinel.kdl"),
        sentinel_config(&ports, "good", "first"),
    )
    .unwrap();

    // Three hosts, enrolled as a real node is: the agent makes its keys and
    // prints the node file the fleet repo takes.
    let tag = std::process::id() % 100_000;
    let traffic_on = Arc::new(AtomicBool::new(true));
    let alive = Arc::new(AtomicBool::new(true));
    let mut nodes = Vec::new();
    for (i, env) in ["dev", "staging", "staging"].iter().enumerate() {
        let id = format!("edge-{}", i + 1);
        let ndir = dir.path().join(&id);
        std::fs::create_dir_all(ndir.join("proxy")).unwrap();
        let ns = Netns::create(&format!("gfr{tag}-{}", i + 1));
        ns.relay(moto.port());
        {
            let (good, failing, slow) = (ports.good, ports.failing, ports.slow);
            ns.spawn(move || {
                upstream(good, 200, Duration::ZERO, "good");
                upstream(failing, 500, Duration::ZERO, "failing");
                upstream(slow, 200, Duration::from_millis(700), "slow");
            })
            .join()
            .unwrap();
        }
        std::fs::write(
            ndir.join("agent.kdl"),
            format!(
                r#"version 1
node "{id}"
environment "{env}"
labels role="edge"
store "{store}"
state-dir "{state}"
poll "200ms" jitter="0ms"
heartbeat "1m"
drift "report"
sentinel {{
    reload-command "sh" "{restart}"
    config-url "http://127.0.0.1:{proxy}/-/config"
    confirm-timeout "60s"
}}
"#,
                state = ndir.join("state").display(),
                restart = ndir.join("restart.sh").display(),
                proxy = ports.proxy,
            ),
        )
        .unwrap();
        std::fs::write(
            ndir.join("restart.sh"),
            restart_script(
                &ndir.join("sentinel.pid"),
                &ndir.join("proxy"),
                &ndir.join("state/sentinel/sentinel.kdl"),
            ),
        )
        .unwrap();
        let out = Command::new(bin("gitfleet-agent"))
            .arg("-c")
            .arg(ndir.join("agent.kdl"))
            .args(["enroll", "--root"])
            .arg(dir.path().join("root-1.json"))
            .envs(moto.env())
            .output()
            .unwrap();
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{stdout}{stderr}");
        std::fs::write(work.join(format!("nodes/{id}.kdl")), stdout).unwrap();
        nodes.push(Node {
            id,
            dir: ndir,
            ns,
            agent: None,
            answers: Arc::new(Mutex::new(Vec::new())),
        });
    }
    gitfleet_tests::commit_fleet(dir.path(), &work, "fleet.git");
    let daemon = GitDaemon::start(dir.path());

    let serve_env = moto
        .env()
        .into_iter()
        .chain([("GITFLEET_NOTIFY_TEST_SECRET", HOOK_SECRET.to_owned())]);
    let serve = real::serve(dir.path(), &daemon.url("fleet.git"), store, serve_env);
    for n in &mut nodes {
        n.agent = Some(real::agent(&n.ns, &n.dir, moto.env()));
        // Four clients per host, each a request every 50 ms while on.
        for _ in 0..4 {
            let (on, alive) = (Arc::clone(&traffic_on), Arc::clone(&alive));
            let (answers, port) = (Arc::clone(&n.answers), ports.proxy);
            n.ns.spawn(move || {
                while alive.load(Ordering::SeqCst) {
                    if !on.load(Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_millis(50));
                        continue;
                    }
                    let got = try_get(port, "/app").ok();
                    answers.lock().unwrap().push(Answer {
                        at: Instant::now(),
                        wall: chrono::Utc::now(),
                        status: got.map(|g| g.0),
                    });
                    std::thread::sleep(Duration::from_millis(50));
                }
            });
        }
    }
    World {
        dir,
        ports,
        nodes,
        serve: Some(serve),
        traffic_on,
        alive,
        _daemon: daemon,
        moto,
        receiver,
    }
}

#[test]
fn rollouts_on_real_proxies_are_judged_on_their_own_traffic() {
    let world = start();
    let minute = Duration::from_secs(60);
    let first = git(&world.path("work"), &["rev-parse", "HEAD"])
        .trim()
        .to_owned();
    let first_commit = first.clone();

    // 1. The first config goes through dev, then staging, step by step.
    let staging = world.wait_phase("staging", &first, Phase::Complete, 3 * minute);
    let dev = world.env("dev").unwrap();
    assert_eq!(dev.phase, Phase::Complete, "{dev:?}");
    for s in [&dev, &staging] {
        assert!(
            s.reason.contains("gates passed (per node: at least"),
            "{}",
            s.reason
        );
    }
    let good = staging.target.digest.clone();
    let history = git(
        &world.bare(),
        &[
            "log",
            "--format=%B",
            "gitfleet/state",
            "--",
            "rollouts/edge.json",
        ],
    );
    assert!(
        history.contains("edge/staging: step 1 passed (per node: at least"),
        "{history}"
    );
    assert!(history.contains("error rate at most 0.0"), "{history}");
    wait_for(
        "every proxy serving the good upstream",
        minute,
        || world.context(),
        || world.all_serve("good").then_some(()),
    );
    // The fleet's heartbeat and drift policy reached the agents.
    for n in &world.nodes {
        let log = n.agent_log();
        assert!(
            log.contains("heartbeat set by the fleet overrides agent.kdl"),
            "{log}"
        );
        assert!(
            log.contains("drift policy set by the fleet overrides agent.kdl"),
            "{log}"
        );
    }

    // 2. A route to an upstream answering 500: the error-rate gate trips
    //    on what the proxy counted, and dev goes back to the good bundle.
    let dev_node = &world.nodes[0];
    let pushed = Instant::now();
    let failing = world.push("failing", "app to the failing upstream");
    let rolled = world.wait_phase("dev", &failing, Phase::RolledBack, minute);
    assert!(
        rolled.reason.contains("error rate on route app"),
        "{}",
        rolled.reason
    );
    assert!(
        rolled.reason.starts_with("rolled back to "),
        "{}",
        rolled.reason
    );
    world.wait_back(dev_node, &good, "dev back on the good bundle");
    // Timed from what the traffic clients saw: the first 5xx after the
    // push, and the first success after the last 5xx (the proxy on the
    // previous bundle again); the pass that rolled back stamped the state.
    let answers = dev_node.answers.lock().unwrap().clone();
    let failures: Vec<&Answer> = answers
        .iter()
        .filter(|a| a.at > pushed && a.status.is_some_and(|s| s >= 500))
        .collect();
    let first = failures
        .first()
        .expect("the dev proxy answered 5xx while on the failing config");
    let last = failures.last().unwrap();
    let recovered = answers
        .iter()
        .find(|a| a.at > last.at && a.status == Some(200))
        .expect("a success after the last failure");
    let tripped = (rolled.since - first.wall).num_milliseconds();
    let took = recovered.at.duration_since(first.at).as_millis();
    // The limit: a report interval (2 s) + a pass (1 s) + a poll (0.2 s).
    let limit = 3200;
    println!(
        "rollback: first failing request -> pass that rolled back {tripped} ms -> proxy serving the previous bundle {took} ms; limit {limit} ms (2000 report + 1000 pass + 200 poll), ratio {:.2}; {} requests failed",
        took as f64 / f64::from(limit),
        failures.len()
    );
    // Staging never took it: it waits for dev, admitting no one.
    let staging = world.env("staging").unwrap();
    assert_eq!(staging.admitted, 0, "{staging:?}");
    assert!(staging.reason.starts_with("waiting for dev"), "{staging:?}");
    for n in &world.nodes[1..] {
        assert_eq!(n.active().as_deref(), Some(good.as_str()), "{}", n.id);
    }

    // 3. Then a slow upstream: the p99 gate trips, a second bad push in a
    //    row, and dev again returns to the bundle it ran before.
    let slow = world.push("slow", "app to the slow upstream");
    let rolled = world.wait_phase("dev", &slow, Phase::RolledBack, minute);
    assert!(
        rolled.reason.contains("p99 latency ms on route app"),
        "{}\n{}",
        rolled.reason,
        world.context()
    );
    world.wait_back(
        dev_node,
        &good,
        "dev back on the good bundle after the slow one",
    );

    // 4. No traffic: the step waits for it, then fails at its deadline.
    world.traffic_on.store(false, Ordering::SeqCst);
    let quiet = world.push("good", "the same upstream, a new bundle");
    let waiting = wait_for(
        "dev waiting for traffic",
        minute,
        || world.context(),
        || {
            world
                .env("dev")
                .filter(|s| s.source_commit == quiet && s.reason.contains("waiting for traffic"))
        },
    );
    assert_eq!(waiting.phase, Phase::Verifying);
    let failed = world.wait_phase("dev", &quiet, Phase::RolledBack, minute);
    assert!(
        failed
            .reason
            .contains("not enough traffic by the progress deadline"),
        "{}",
        failed.reason
    );
    world.traffic_on.store(true, Ordering::SeqCst);

    // 5. drift "repair" from fleet.kdl: an edited config file comes back.
    let node = &world.nodes[1];
    let config = node.path("state/sentinel/sentinel.kdl");
    let original = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("{original}// edited by hand\n")).unwrap();
    wait_for(
        "the edited config restored",
        minute,
        || world.context(),
        || (std::fs::read_to_string(&config).ok()? == original).then_some(()),
    );
    assert!(
        node.agent_log().contains("repairing drift"),
        "{}",
        node.agent_log()
    );
    wait_for(
        "every proxy serving the good upstream after the repair",
        minute,
        || world.context(),
        || world.all_serve("good").then_some(()),
    );

    // The repair, and the activations before it, are in the node's signed
    // events in the store, as `gitfleet events --node` reads them.
    let events = wait_for(
        "the repair in `gitfleet events --node`",
        minute,
        || world.context(),
        || {
            let out = Command::new(bin("gitfleet"))
                .args(["events", "--repo"])
                .arg(world.bare())
                .args(["--store", STORE, "--node", &node.id, "--format", "json"])
                .arg("--cache")
                .arg(world.path("events-mirror"))
                .envs(world.moto.env())
                .output()
                .unwrap();
            let (stdout, stderr) = text(&out);
            assert!(out.status.success(), "{stdout}{stderr}");
            stdout
                .lines()
                .any(|l| {
                    l.contains("\"kind\":\"drift-repaired\"") && l.contains("files/sentinel.kdl")
                })
                .then_some(stdout)
        },
    );
    let kinds: Vec<serde_json::Value> = events
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["kind"].clone())
        .collect();
    assert!(kinds.contains(&"activated".into()), "{events}");
    assert!(
        events
            .lines()
            .all(|l| l.contains(&format!("\"node\":\"{}\"", node.id))),
        "{events}"
    );

    // 6. Told by `gitfleet serve` through fleet.kdl's webhook, which
    //    refused its first two requests: dev completed the first config and
    //    rolled back each of the three after it, each once by id, signed.
    let told = |r: &Receiver| {
        let mut by_id = std::collections::BTreeMap::new();
        for d in r.delivered() {
            by_id.insert(d.headers["x-gitfleet-delivery"].clone(), d.json());
        }
        let mut events: Vec<serde_json::Value> = by_id.into_values().collect();
        events.sort_by_key(|e| e["at"].as_str().unwrap_or_default().to_owned());
        events
    };
    let events = wait_for(
        "four notifications delivered",
        minute,
        || format!("{:#?}\n{}", world.receiver.received(), world.context()),
        || {
            let events = told(&world.receiver);
            (events.len() >= 4).then_some(events)
        },
    );
    let got: Vec<(&str, &str)> = events
        .iter()
        .map(|e| {
            (
                e["kind"].as_str().unwrap(),
                e["source_commit"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("rollout-completed", first_commit.as_str()),
            ("rollout-rolled-back", failing.as_str()),
            ("rollout-rolled-back", slow.as_str()),
            ("rollout-rolled-back", quiet.as_str()),
        ],
        "{events:#?}"
    );
    let received = world.receiver.received();
    assert_eq!(
        received.iter().filter(|r| r.status == 503).count(),
        2,
        "{received:#?}"
    );
    for r in &received {
        assert!(r.signed_with(HOOK_SECRET.as_bytes()), "{r:#?}");
        assert_eq!(r.json()["environment"], "dev");
    }
}
