//! `gitfleet simulate` against `gitfleet reconcile --once`, both as real
//! processes, on a bare fleet repo and a file:// store: simulated agents
//! (the real agent code over a simulated node) carry a rollout through dev
//! to completion, and with every activation failing a new bundle trips the
//! health gate and is rolled back to the previous one. A reconciler killed
//! at each point of a pass and restarted skips and repeats no step, both
//! there and with the repo behind `git daemon` and the store in moto's S3.
//! Through all of it a webhook receiver (fleet.kdl's `notify`) that fails
//! its first two requests is told each rollout event exactly once by id,
//! signed, including when the reconciler dies between an event and its
//! notification.

#![allow(clippy::unwrap_used)] // test helpers fail the test by panicking

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use chrono::Utc;
use gitfleet_agent::core::wanted;
use gitfleet_agent::sim::sim_key;
use gitfleet_io::faults::CRASH_AT;
use gitfleet_io::git_daemon::GitDaemon;
use gitfleet_io::moto::Moto;
use gitfleet_io::store::Store;
use gitfleet_schemas::state::{EnvState, Phase, RolloutState};
use gitfleet_schemas::status::StatusReport;
use gitfleet_schemas::trust::{BundleRef, ChannelManifest, PublicKey};
use gitfleet_schemas::verify::{verify_channel, verify_status};
use gitfleet_tests::alerts;
use gitfleet_tests::receiver::Receiver;
use gitfleet_tests::Spawned;
use gitfleet_tests::{append_commit_push, bin, copy_dir, interrupt, text, workspace};

/// The edge config of the example fleet.
const EDGE: &str = "configs/edge/sentinel.kdl";

/// The dev nodes of the edge rollout: the example's one and two more.
const DEV_EDGE: [&str; 3] = ["edge-dev-fra-1", "edge-dev-fra-2", "edge-dev-fra-3"];

/// Rollouts short enough for a test: one canary, then everyone; one-second
/// bakes, no windows, gates the simulated metrics can pass.
const EDGE_ROLLOUT: &str = r#"version 1
config "edge"
selector role="edge"
step count=1
step percent=100
max-unavailable 2
bake "1s"
progress-deadline "60s"
gates {
    healthy
    max-error-rate 0.01
    max-p99-latency "250ms"
    max-cpu-percent 80
    max-memory-percent 90
}
"#;

/// Where `gitfleet reconcile` can be made to die, in the order a pass
/// reaches them (`gitfleet_io::faults::point` in reconciler/src/pass/,
/// git.rs and notify.rs): bundles uploaded; state commit made but not
/// pushed; pushed but not yet known to the mirror; committed, no manifest
/// published; one manifest published of several; notifications in the
/// outbox, none sent; sent, the outbox not yet cleared.
const CRASH_POINTS: [&str; 7] = [
    "after-bundles",
    "before-push",
    "after-push",
    "after-commit",
    "after-manifest",
    "after-outbox",
    "after-send",
];

/// The HMAC secret of the test's webhook receiver, given to the
/// reconciler in its environment as fleet.kdl's `secret-env` names it.
const HOOK_SECRET: &str = "test-hook-secret";

/// A receiver of the edge rollout's dev events, by webhook.
fn notify_block(url: &str) -> String {
    format!(
        r#"notify "ops" {{
    webhook "{url}/hooks/gitfleet" secret-env="GITFLEET_NOTIFY_TEST_SECRET"
    events "rollout-started" "step-completed" "rollout-completed" "rollout-failed" "rollout-rolled-back"
    environments "dev"
}}
"#
    )
}

fn sim_public(node: &str) -> PublicKey {
    PublicKey(sim_key(node).verifying_key().to_bytes())
}

struct Fleet {
    /// The servers, when the fleet is reached through them; dropped (and
    /// so stopped) before `dir` is removed.
    servers: Option<Servers>,
    dir: tempfile::TempDir,
    /// The fleet repo's URL and the store's, as the processes get them.
    repo: String,
    store: String,
}

/// `git daemon` serving the bare repository and moto_server holding the
/// store, both on 127.0.0.1.
struct Servers {
    _daemon: GitDaemon,
    moto: Moto,
    s3: Store,
    runtime: tokio::runtime::Runtime,
}

/// A running `gitfleet simulate`, killed if the test fails before it stops.
struct Simulation {
    child: Option<Child>,
    log: PathBuf,
}

impl Simulation {
    /// Interrupt it as Ctrl-C would and wait for a clean exit.
    fn stop(mut self) -> String {
        let mut child = self.child.take().unwrap();
        let status = interrupt(&mut child, Duration::from_secs(20));
        let log = std::fs::read_to_string(&self.log).unwrap();
        assert!(status.success(), "simulate exited with {status}:\n{log}");
        assert!(log.contains("stopped: interrupted"), "{log}");
        assert!(log.contains("store requests by the agents: "), "{log}");
        log
    }
}

impl Drop for Simulation {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Fleet {
    /// The example fleet with two more dev edge nodes, short rollouts, and
    /// every node's key its simulator key; pushed to a bare repository.
    /// An online key and a root naming it.
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let work = dir.path().join("work");
        copy_dir(&workspace().join("examples/fleet-repo"), &work);
        let first = std::fs::read_to_string(work.join("nodes/edge-dev-fra-1.kdl")).unwrap();
        for (i, id) in DEV_EDGE.iter().enumerate().skip(1) {
            let mut lines: Vec<String> = Vec::new();
            for line in first.lines() {
                lines.push(if line.starts_with("id ") {
                    format!("id {id:?}")
                } else if line.starts_with("wireguard ") {
                    // Any distinct 32-byte key will do; nothing dials it.
                    let wg = sim_public(&format!("{id}-wireguard"));
                    format!(
                        "wireguard public-key={:?} endpoint=\"198.51.100.{}:51820\"",
                        wg.to_string(),
                        40 + i
                    )
                } else {
                    line.to_owned()
                });
            }
            std::fs::write(
                work.join(format!("nodes/{id}.kdl")),
                lines.join("\n") + "\n",
            )
            .unwrap();
        }
        // The fleet's poll interval would win over the agents' --poll.
        let fleet = std::fs::read_to_string(work.join("fleet.kdl")).unwrap();
        let fleet: String = fleet
            .lines()
            .filter(|l| !l.trim_start().starts_with("poll-interval "))
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(work.join("fleet.kdl"), fleet).unwrap();
        std::fs::write(work.join("rollouts/edge.kdl"), EDGE_ROLLOUT).unwrap();
        let gw = work.join("rollouts/api-gateway.kdl");
        let t = std::fs::read_to_string(&gw).unwrap();
        std::fs::write(&gw, t.replace("bake \"5m\"", "bake \"1s\"")).unwrap();

        // The node keys the simulator signs with, as the repo must name them.
        let out = Command::new(bin("gitfleet"))
            .args(["simulate", "--print-keys", "--repo"])
            .arg(&work)
            .output()
            .unwrap();
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{stderr}");
        let mut printed = 0;
        for line in stdout.lines() {
            let (node, key) = line.split_once(' ').unwrap();
            assert_eq!(key, sim_public(node).to_string());
            let path = work.join(format!("nodes/{node}.kdl"));
            let t = std::fs::read_to_string(&path).unwrap();
            let t: Vec<String> = t
                .lines()
                .map(|l| {
                    if l.starts_with("node-key ") {
                        format!("node-key {key:?}")
                    } else {
                        l.to_owned()
                    }
                })
                .collect();
            std::fs::write(&path, t.join("\n") + "\n").unwrap();
            printed += 1;
        }
        assert_eq!(printed, 13, "{stdout}");
        gitfleet_tests::commit_fleet(dir.path(), &work, "origin.git");
        gitfleet_tests::fleet_keys(dir.path(), "acme-edge");

        let repo = dir.path().join("origin.git").display().to_string();
        let store = format!("file://{}", dir.path().join("store").display());
        Fleet {
            servers: None,
            dir,
            repo,
            store,
        }
    }

    /// The same fleet, its repo served by `git daemon` and its store in S3.
    fn over_servers() -> Self {
        let mut fleet = Fleet::new();
        let daemon = GitDaemon::start(fleet.dir.path());
        fleet.repo = daemon.url("origin.git");
        fleet.store = "s3://gitfleet/fleet".to_owned();
        let moto = Moto::start();
        let s3 = moto.store(&fleet.store);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        fleet.servers = Some(Servers {
            _daemon: daemon,
            moto,
            s3,
            runtime,
        });
        fleet
    }

    /// What a process needs in its environment to reach the store.
    fn store_env(&self) -> Vec<(&'static str, String)> {
        self.servers
            .as_ref()
            .map_or_else(Vec::new, |s| s.moto.env().to_vec())
    }

    /// `gitfleet serve` of this fleet (a pass a second, the test's hook
    /// secret in its environment) with `extra` arguments, and its URL.
    fn serve(&self, extra: &[&str]) -> (Spawned, String) {
        let mut args = vec![
            "serve",
            "--repo",
            &self.repo,
            "--store",
            &self.store,
            "--online-key",
            "online.key",
            "--cache",
            "serve-mirror",
            "--listen",
            "127.0.0.1:0",
            "--interval",
            "1s",
            "--holder",
            "test-replica",
        ];
        args.extend_from_slice(extra);
        let serve = Spawned::gitfleet_with(
            self.dir.path(),
            "serve",
            &args,
            [("GITFLEET_NOTIFY_TEST_SECRET", HOOK_SECRET.to_owned())],
        );
        let base = serve.printed_url("serving ");
        (serve, base)
    }

    /// The object at `key` in the store, if there is one.
    fn object(&self, key: &str) -> Option<Vec<u8>> {
        match &self.servers {
            None => std::fs::read(self.path("store").join(key)).ok(),
            Some(s) => s
                .runtime
                .block_on(s.s3.get(key))
                .unwrap()
                .map(|o| o.bytes.to_vec()),
        }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn reconcile(&self) {
        let out = self.reconcile_crashing_at(None);
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{stdout}{stderr}");
    }

    /// One pass, killed at `point` if it gets there.
    fn reconcile_crashing_at(&self, point: Option<&str>) -> Output {
        let mut cmd = Command::new(bin("gitfleet"));
        cmd.args(["reconcile", "--once", "--repo", &self.repo])
            .args(["--store", &self.store])
            .envs(self.store_env())
            .arg("--online-key")
            .arg(self.path("online.key"))
            .arg("--cache")
            .arg(self.path("mirror"))
            .args(["--holder", "test-replica"])
            .env("GITFLEET_NOTIFY_TEST_SECRET", HOOK_SECRET)
            .env_remove(CRASH_AT);
        if let Some(point) = point {
            cmd.env(CRASH_AT, point);
        }
        cmd.output().unwrap()
    }

    /// The edge rollout's dev state in every state commit that changed it,
    /// oldest first.
    fn dev_history(&self) -> Vec<EnvState> {
        let repo = self.path("origin.git");
        let out = Command::new("git")
            .args(["log", "--reverse", "--format=%H", "gitfleet/state"])
            .args(["--", "rollouts/edge.json"])
            .current_dir(&repo)
            .output()
            .unwrap();
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{stderr}");
        stdout
            .lines()
            .filter_map(|commit| {
                let out = Command::new("git")
                    .args(["show", &format!("{commit}:rollouts/edge.json")])
                    .current_dir(&repo)
                    .output()
                    .unwrap();
                assert!(out.status.success(), "{}", text(&out).1);
                let state: RolloutState = serde_json::from_slice(&out.stdout).unwrap();
                state.environments.get("dev").cloned()
            })
            .collect()
    }

    /// Start simulating every node in the background.
    fn simulate(&self, failure_rate: &str, log: &str) -> Simulation {
        let log = self.path(log);
        let child = Command::new(bin("gitfleet"))
            .args(["simulate", "--repo"])
            .arg(self.path("work"))
            .args(["--store", &self.store])
            .envs(self.store_env())
            .arg("--root")
            .arg(self.path("root-1.json"))
            .arg("--state-dir")
            .arg(self.path("sim-state"))
            .args(["--failure-rate", failure_rate])
            .args([
                "--poll",
                "200ms",
                "--jitter",
                "50ms",
                "--heartbeat",
                "500ms",
            ])
            .args(["--apply-latency", "50ms", "--progress", "1s"])
            // Every store request a little slower, as S3's are.
            .args(["--store-latency", "5ms"])
            // A bound in case the test dies without stopping it.
            .args(["--duration", "90s"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Simulation {
            child: Some(child),
            log,
        }
    }

    fn state(&self, rollout: &str) -> Option<RolloutState> {
        let out = Command::new("git")
            .args(["show", &format!("gitfleet/state:rollouts/{rollout}.json")])
            .current_dir(self.path("origin.git"))
            .output()
            .unwrap();
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).unwrap())
    }

    fn dev(&self, rollout: &str) -> Option<EnvState> {
        self.state(rollout)
            .and_then(|s| s.environments.get("dev").cloned())
    }

    /// Reconcile until `done` holds for the edge rollout in dev.
    fn reconcile_until(
        &self,
        what: &str,
        sim: &Simulation,
        done: impl Fn(&EnvState) -> bool,
    ) -> EnvState {
        let started = Instant::now();
        loop {
            self.reconcile();
            if let Some(dev) = self.dev("edge") {
                if done(&dev) {
                    return dev;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(45),
                    "edge/dev never got {what}; now {:?}: {}\nsimulate:\n{}",
                    dev.phase,
                    dev.reason,
                    std::fs::read_to_string(&sim.log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    fn manifest(&self, env: &str) -> ChannelManifest {
        let root_bytes = std::fs::read(self.path("root-1.json")).unwrap();
        let root = gitfleet_agent::local::pin_first_root(&root_bytes).unwrap();
        let key = format!("channels/{env}.json");
        let bytes = self.object(&key).unwrap_or_else(|| panic!("no {key}"));
        let verified = verify_channel(&root, &bytes, env, None, Utc::now()).unwrap();
        (*verified).clone()
    }

    /// A node's last status report, verified with its simulator key.
    fn report(&self, node: &str) -> StatusReport {
        let key = format!("status/{node}.json");
        let bytes = self.object(&key).unwrap_or_else(|| panic!("no {key}"));
        let verified = verify_status(&bytes, "acme-edge", node, &sim_public(node)).unwrap();
        (*verified).clone()
    }

    fn active(&self, node: &str) -> Option<BundleRef> {
        self.report(node)
            .rollouts
            .get("edge")
            .and_then(|r| r.active.clone())
    }
}

#[test]
fn simulated_agents_complete_a_rollout_and_a_failing_bundle_is_rolled_back() {
    let fleet = Fleet::over_servers();
    let receiver = Receiver::start(2);
    // A Slack-compatible incoming webhook hears of rollbacks only.
    let chat = Receiver::start(0);
    let slack = format!(
        "notify \"chat\" {{\n    slack \"{}/services/T0/B0/x\"\n    events \"rollout-rolled-back\"\n}}\n",
        chat.url
    );
    append_commit_push(
        &fleet.path("work"),
        &[(
            "fleet.kdl",
            &format!("{}{slack}", notify_block(&receiver.url)),
        )],
        "tell ops",
        "origin",
    );

    // 1. Healthy nodes: the first edge bundle completes in dev.
    let sim = fleet.simulate("0", "simulate-1.log");
    let dev = fleet.reconcile_until("complete", &sim, |d| d.phase == Phase::Complete);
    let first = dev.target.clone();
    assert_eq!(dev.step, 2, "{}", dev.reason);
    assert!(dev.reason.contains("gates passed"), "{}", dev.reason);
    let manifest = fleet.manifest("dev");
    let edge = manifest.rollouts.iter().find(|r| r.name == "edge").unwrap();
    assert_eq!(edge.bundle, first);
    assert_eq!(edge.membership_threshold, u64::MAX);
    // Every dev edge node runs it, says so in a report signed with its
    // simulator key, and is healthy.
    let started = Instant::now();
    while !DEV_EDGE
        .iter()
        .all(|n| fleet.active(n).as_ref() == Some(&first))
    {
        assert!(started.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(100));
    }
    for node in DEV_EDGE {
        assert!(fleet.report(node).healthy, "{node}");
    }
    let log = sim.stop();
    let short = &first.digest["sha256:".len()..][..12];
    assert!(
        log.contains(&format!("edge/dev: 3 on {short}")),
        "no progress line for edge/dev:\n{log}"
    );
    assert!(log.contains("13/13 nodes polling"), "{log}");

    // 2. A new edge bundle, and every activation fails from now on: the
    // canary goes unhealthy and dev rolls back to the first bundle.
    let work = fleet.path("work");
    append_commit_push(&work, &[(EDGE, "// tuned\n")], "tune edge", "origin");

    // The nodes resume from the state the first run kept: on the first
    // bundle, healthy.
    let sim = fleet.simulate("1.0", "simulate-2.log");
    let dev = fleet.reconcile_until("rolled back", &sim, |d| d.phase == Phase::RolledBack);
    assert_ne!(dev.target, first);
    assert_eq!(dev.previous.as_ref(), Some(&first));
    assert!(
        dev.reason.contains("unhealthy on the new bundle"),
        "{}",
        dev.reason
    );
    assert_eq!(dev.failed_nodes.len(), 1, "{:?}", dev.failed_nodes);
    assert!(DEV_EDGE.contains(&dev.failed_nodes[0].as_str()));

    // The manifest sends every dev edge node back to the first bundle.
    let manifest = fleet.manifest("dev");
    let edge = manifest.rollouts.iter().find(|r| r.name == "edge").unwrap();
    assert_eq!(edge.bundle, dev.target);
    assert_eq!(edge.previous.as_ref(), Some(&first));
    assert_eq!(edge.membership_threshold, 0);
    for node in DEV_EDGE {
        let id = gitfleet_agent::core::Identity {
            node: (*node).to_owned(),
            environment: "dev".to_owned(),
            labels: [
                ("region".to_owned(), "fra".to_owned()),
                ("role".to_owned(), "edge".to_owned()),
            ]
            .into(),
            drift: gitfleet_schemas::DriftPolicy::Report,
            max_bundle_bytes: 1 << 20,
            proxy: gitfleet_schemas::Proxy::legacy(),
        };
        let w = wanted(&manifest, &id, &Default::default());
        let (_, bundle) = w.iter().find(|(r, _)| r.name == "edge").unwrap();
        assert_eq!(bundle, &first, "{node}");
    }
    // And the nodes follow: the canary went back, the others never left.
    let started = Instant::now();
    while !DEV_EDGE
        .iter()
        .all(|n| fleet.active(n).as_ref() == Some(&first))
    {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "dev edge nodes did not return to the first bundle"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Staging never starts the bundle dev rolled back.
    let staging = fleet.state("edge").unwrap().environments["staging"].clone();
    assert_eq!(staging.phase, Phase::Pending, "{}", staging.reason);
    assert!(
        staging.reason.starts_with("waiting for dev to complete"),
        "{}",
        staging.reason
    );
    sim.stop();

    // The receiver, down for its first two requests, was told each step
    // of both, once by id, signed.
    let (a, b) = (first.digest.as_str(), dev.target.digest.as_str());
    // `gitfleet events` tells the same story in one timeline with what the
    // nodes did: rollout changes from the state branch, the nodes'
    // activations and the canary's rollback from their signed events.
    let out = Command::new(bin("gitfleet"))
        .args(["events", "--repo", &fleet.repo, "--store", &fleet.store])
        .args(["--rollout", "edge", "--format", "json", "--since", "1h"])
        .arg("--cache")
        .arg(fleet.path("events-mirror"))
        .envs(fleet.store_env())
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let dev_rollout: Vec<(&str, Option<u64>, &str)> = lines
        .iter()
        .filter(|l| l["environment"] == "dev" && l["node"].is_null())
        .map(|l| {
            (
                l["kind"].as_str().unwrap(),
                l["step"].as_u64(),
                l["bundle"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        dev_rollout,
        [
            ("rollout-started", None, a),
            ("step-completed", Some(1), a),
            ("step-completed", Some(2), a),
            ("rollout-completed", None, a),
            ("rollout-started", None, b),
            ("rollout-rolled-back", None, b),
        ],
        "{stdout}"
    );
    let canary = &dev.failed_nodes[0];
    let node_kinds: Vec<&str> = lines
        .iter()
        .filter(|l| l["node"] == canary.as_str())
        .map(|l| l["kind"].as_str().unwrap())
        .collect();
    assert!(
        node_kinds.ends_with(&["rolled-back"]) && node_kinds.contains(&"activated"),
        "{stdout}"
    );
    // Sorted by time throughout.
    let times: Vec<&str> = lines.iter().map(|l| l["at"].as_str().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{stdout}");
    told_each_event_once(
        &fleet,
        &receiver,
        &[
            ("rollout-started", None, a),
            ("step-completed", Some(1), a),
            ("step-completed", Some(2), a),
            ("rollout-completed", None, a),
            ("rollout-started", None, b),
            ("rollout-rolled-back", None, b),
        ],
    );
    // Slack got the rollback as `{"text": ...}`, and nothing else of edge.
    let texts: Vec<String> = chat
        .delivered()
        .iter()
        .map(|d| d.json()["text"].as_str().unwrap_or_default().to_owned())
        .filter(|t| t.contains("edge in dev"))
        .collect();
    assert_eq!(texts.len(), 1, "{texts:?}");
    assert!(
        texts[0].starts_with("[acme-edge] edge in dev: ") && texts[0].contains("rolled back"),
        "{texts:?}"
    );
    assert!(chat
        .received()
        .iter()
        .all(|r| r.path == "/services/T0/B0/x"));
}

/// Revoking the bundle dev completed: the next pass rolls dev back, the
/// manifest lists the revoked digest, and every dev edge node is on the
/// bundle before within a poll interval (200 ms here) of that pass.
#[test]
fn revoking_the_active_bundle_moves_every_node_back_after_one_pass() {
    let fleet = Fleet::new();
    let sim = fleet.simulate("0", "simulate-revoke.log");
    let first = fleet
        .reconcile_until("complete", &sim, |d| d.phase == Phase::Complete)
        .target;
    let work = fleet.path("work");
    append_commit_push(&work, &[(EDGE, "// tuned\n")], "tune edge", "origin");
    let second = fleet
        .reconcile_until("the second bundle complete", &sim, |d| {
            d.phase == Phase::Complete && d.target != first
        })
        .target;
    let on = |b: &BundleRef| DEV_EDGE.iter().all(|n| fleet.active(n).as_ref() == Some(b));
    let started = Instant::now();
    while !on(&second) {
        assert!(started.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(50));
    }

    let revoke = format!("revoke \"{}\" reason=\"CVE-2026-0001\"\n", second.digest);
    append_commit_push(
        &work,
        &[("fleet.kdl", &revoke)],
        "revoke the tuned edge bundle",
        "origin",
    );
    fleet.reconcile();
    let passed = Instant::now();
    let dev = fleet.dev("edge").unwrap();
    assert_eq!(dev.phase, Phase::RolledBack, "{}", dev.reason);
    assert!(
        dev.reason.contains("revoked in fleet.kdl: CVE-2026-0001"),
        "{}",
        dev.reason
    );
    assert_eq!(fleet.manifest("dev").revoked, vec![second.digest.clone()]);
    while !on(&first) {
        assert!(
            passed.elapsed() < Duration::from_secs(10),
            "dev edge nodes did not leave the revoked bundle:\n{}",
            sim.stop()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!(
        "every dev edge node left the revoked bundle {} ms after the pass",
        passed.elapsed().as_millis()
    );
    // Later passes never plan it again.
    fleet.reconcile();
    assert_eq!(fleet.dev("edge").unwrap().phase, Phase::RolledBack);
    assert!(on(&first));
    sim.stop();
}

/// A node put on hold in its node file keeps the bundle it runs while the
/// next rollout completes around it, and `gitfleet status` says why.
#[test]
fn a_held_node_keeps_its_bundle_while_the_rollout_completes_around_it() {
    let fleet = Fleet::new();
    let sim = fleet.simulate("0", "simulate-hold.log");
    let first = fleet
        .reconcile_until("complete", &sim, |d| d.phase == Phase::Complete)
        .target;
    let work = fleet.path("work");
    let held = DEV_EDGE[0];
    append_commit_push(
        &work,
        &[
            (
                &format!("nodes/{held}.kdl"),
                "hold \"disk replacement, INC-88\"\n",
            ),
            (EDGE, "// tuned\n"),
        ],
        "hold one node, tune edge",
        "origin",
    );
    let dev = fleet.reconcile_until("the second bundle complete", &sim, |d| {
        d.phase == Phase::Complete && d.target != first
    });
    let second = dev.target;
    let started = Instant::now();
    while !DEV_EDGE[1..]
        .iter()
        .all(|n| fleet.active(n).as_ref() == Some(&second))
    {
        assert!(started.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(fleet.active(held), Some(first));
    assert_eq!(fleet.manifest("dev").held, [held.to_owned()]);
    sim.stop();

    let out = Command::new(bin("gitfleet"))
        .args(["status", "--repo", &fleet.repo, "--store", &fleet.store])
        .envs(fleet.store_env())
        .arg("--cache")
        .arg(fleet.path("status-mirror"))
        .args(["--env", "dev"])
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(
        stdout.contains("on hold: disk replacement, INC-88 (rollouts skip it)"),
        "{stdout}{stderr}"
    );

    // The backbone mesh's members in dev, and a mesh that does not exist.
    let status_mesh = |mesh: &str| {
        let out = Command::new(bin("gitfleet"))
            .args(["status", "--repo", &fleet.repo, "--store", &fleet.store])
            .envs(fleet.store_env())
            .arg("--cache")
            .arg(fleet.path("status-mirror"))
            .args(["--env", "dev", "--mesh", mesh])
            .output()
            .unwrap();
        text(&out)
    };
    let (stdout, stderr) = status_mesh("backbone");
    assert!(stdout.starts_with("mesh backbone: "), "{stdout}{stderr}");
    for node in DEV_EDGE {
        assert!(
            stdout.contains(&format!("\n{node} ")) || stdout.contains(&format!("\n{node}:")),
            "{node}: {stdout}"
        );
    }
    assert!(!stdout.contains("api-dev"), "only members: {stdout}");
    let (_, stderr) = status_mesh("nope");
    assert!(
        stderr.contains("no mesh nope in the fleet repo (known: backbone)"),
        "{stderr}"
    );
}

#[test]
fn a_reconciler_killed_at_any_point_and_restarted_skips_and_repeats_no_step() {
    killed_at_each_point_and_restarted(Fleet::new());
}

#[test]
fn over_git_daemon_and_s3_a_reconciler_killed_at_any_point_skips_and_repeats_no_step() {
    killed_at_each_point_and_restarted(Fleet::over_servers());
}

/// Kill a pass at each crash point in turn, restarting after each, with
/// simulated agents running throughout: what nodes are told only moves
/// forward, the state history enters each step once, in order, and a
/// webhook receiver that fails its first two requests is told each of the
/// rollout's events, each under one id, signed.
fn killed_at_each_point_and_restarted(fleet: Fleet) {
    let receiver = Receiver::start(2);
    append_commit_push(
        &fleet.path("work"),
        &[("fleet.kdl", &notify_block(&receiver.url))],
        "tell ops",
        "origin",
    );
    let sim = fleet.simulate("0", "simulate.log");
    let started = Instant::now();
    // Each point in turn until it has killed a pass, then plain passes.
    let mut points = CRASH_POINTS.iter();
    let mut point = points.next();
    let mut serials: Vec<(u64, u64)> = Vec::new();
    loop {
        let out = fleet.reconcile_crashing_at(point.copied());
        let (stdout, stderr) = text(&out);
        match out.status.signal() {
            Some(9) => {
                assert!(
                    stderr.contains("crash injected"),
                    "{point:?}: killed, but not by the injection:\n{stderr}"
                );
                point = points.next();
            }
            _ => assert!(out.status.success(), "{point:?}: {stdout}{stderr}"),
        }
        // What the dev nodes are told only moves forward: a higher serial,
        // and for the same bundle never a lower membership threshold.
        if fleet.object("channels/dev.json").is_some() {
            let m = fleet.manifest("dev");
            let edge = m.rollouts.iter().find(|r| r.name == "edge");
            let threshold = edge.map_or(0, |r| r.membership_threshold);
            if let Some(&(serial, before)) = serials.last() {
                assert!(m.serial >= serial, "serial {} after {serial}", m.serial);
                assert!(threshold >= before, "threshold {threshold} after {before}");
            }
            serials.push((m.serial, threshold));
        }
        let done = fleet
            .dev("edge")
            .is_some_and(|d| d.phase == Phase::Complete);
        if point.is_none() && done {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "edge/dev did not complete; crash point {point:?}, state {:?}\nsimulate:\n{}",
            fleet.dev("edge"),
            std::fs::read_to_string(&sim.log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    sim.stop();

    // Written back to git: steps 1 and 2 in order, each entered once, and
    // admissions within a step only grow.
    let history = fleet.dev_history();
    let mut entered = Vec::new();
    for pair in history.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        assert_eq!(a.target, b.target, "one bundle throughout");
        assert!(
            b.step == a.step || b.step == a.step + 1,
            "step {} after step {}: {history:#?}",
            b.step,
            a.step
        );
        if b.step == a.step {
            assert!(b.admitted >= a.admitted, "{history:#?}");
        }
    }
    for s in &history {
        if entered.last() != Some(&s.step) {
            entered.push(s.step);
        }
    }
    assert_eq!(entered, [1, 2], "{history:#?}");
    assert_eq!(history.last().map(|s| s.phase), Some(Phase::Complete));
    for node in DEV_EDGE {
        let active = fleet.active(node);
        assert_eq!(active.as_ref(), Some(&history[0].target), "{node}");
    }
    let a = history[0].target.digest.as_str();
    told_each_event_once(
        &fleet,
        &receiver,
        &[
            ("rollout-started", None, a),
            ("step-completed", Some(1), a),
            ("step-completed", Some(2), a),
            ("rollout-completed", None, a),
        ],
    );
}

/// Reconcile until the receiver took as many of the edge rollout's dev
/// events as `want` lists, then check what it got: every request signed,
/// exactly `want` (kind, step, target) in the order they happened, one id
/// per event whatever the crashes and retries, the same body each time an
/// id came again. (The example's other rollouts start in dev too.)
fn told_each_event_once(fleet: &Fleet, receiver: &Receiver, want: &[(&str, Option<u64>, &str)]) {
    let started = Instant::now();
    let distinct = |r: &Receiver| {
        let mut ids: Vec<String> = r
            .delivered()
            .iter()
            .filter(|d| d.json()["rollout"] == "edge")
            .map(|d| d.headers["x-gitfleet-delivery"].clone())
            .collect();
        ids.sort();
        ids.dedup();
        ids.len()
    };
    while distinct(receiver) < want.len() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the receiver got {:#?}",
            receiver.received()
        );
        fleet.reconcile();
        std::thread::sleep(Duration::from_millis(500));
    }
    let received = receiver.received();
    assert!(
        received.iter().filter(|r| r.status == 503).count() == 2,
        "{received:#?}"
    );
    let mut by_id: std::collections::BTreeMap<String, Vec<u8>> = Default::default();
    for r in &received {
        assert_eq!(r.path, "/hooks/gitfleet");
        assert!(
            r.signed_with(HOOK_SECRET.as_bytes()),
            "bad signature: {r:#?}"
        );
        let id = r.headers["x-gitfleet-delivery"].clone();
        assert_eq!(r.json()["id"], id.as_str());
        assert_eq!(
            r.headers["x-gitfleet-event"],
            r.json()["kind"].as_str().unwrap()
        );
        let body = by_id.entry(id).or_insert_with(|| r.body.clone());
        assert_eq!(body, &r.body, "one id, two bodies");
    }
    let mut events: Vec<serde_json::Value> = by_id
        .values()
        .map(|b| serde_json::from_slice::<serde_json::Value>(b).unwrap())
        .filter(|e| e["rollout"] == "edge")
        .collect();
    // In the order they happened: by when their phase began, then as a
    // commit tells them (a start before its steps, steps before the end).
    let order = [
        "rollout-started",
        "step-completed",
        "rollout-completed",
        "rollout-failed",
        "rollout-rolled-back",
    ];
    events.sort_by_key(|e| {
        let kind = e["kind"].as_str().unwrap();
        (
            e["at"].as_str().unwrap().to_owned(),
            order.iter().position(|k| *k == kind),
            e["step"].as_u64(),
        )
    });
    let told: Vec<(&str, Option<u64>, &str)> = events
        .iter()
        .map(|e| {
            (
                e["kind"].as_str().unwrap(),
                e["step"].as_u64(),
                e["target"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(told, want, "{events:#?}");
    for e in &events {
        assert_eq!(e["fleet"], "acme-edge");
        assert_eq!(e["environment"], "dev");
    }
}

/// Simulated nodes that stop reporting go stale in `gitfleet serve`'s
/// view, and the shipped stale-nodes alert fires over its /metrics (with
/// the approval wait, when prod got that far, and nothing else).
#[test]
fn nodes_that_stop_reporting_raise_the_stale_nodes_alert() {
    let fleet = Fleet::new();
    let receiver = Receiver::start(0);
    let block = format!(
        "notify \"ops\" {{\n    webhook \"{}/hook\" secret-env=\"GITFLEET_NOTIFY_TEST_SECRET\"\n    events \"node-stale\"\n}}\n",
        receiver.url
    );
    append_commit_push(
        &fleet.path("work"),
        &[("fleet.kdl", &block)],
        "tell ops of silent nodes",
        "origin",
    );
    let sim = fleet.simulate("0", "simulate.log");
    let (serve, base) = fleet.serve(&["--stale-after", "3s"]);
    let nodes = |text: &str, health: &str| -> u64 {
        let label = format!("health=\"{health}\"");
        text.lines()
            .filter(|l| l.starts_with("gitfleet_nodes{") && l.contains(&label))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    let metrics = format!("{base}/metrics");
    let scrape_until = |what: &str, done: &dyn Fn(&str) -> bool| {
        alerts::scrape_until(&metrics, what, Duration::from_secs(60), done)
    };
    scrape_until("13 healthy nodes", &|t| nodes(t, "healthy") == 13);
    sim.stop();
    let stale = |t: &str| nodes(t, "stale") == 13;
    let first = scrape_until("13 stale nodes", &stale);
    std::thread::sleep(Duration::from_secs(2));
    let second = scrape_until("them still stale", &stale);
    let mut expected = vec!["GitfleetNodesStale"];
    if second.text.contains("phase=\"awaiting-approval\"} 1") {
        expected.push("GitfleetRolloutAwaitingApproval");
    }
    alerts::check(&first, &second, &expected).unwrap();
    // The receiver is told of each silent node once, by node.
    let started = Instant::now();
    let stale_nodes = |r: &Receiver| -> Vec<String> {
        let mut nodes: Vec<String> = r
            .delivered()
            .iter()
            .map(|d| d.json()["node"].as_str().unwrap_or_default().to_owned())
            .collect();
        nodes.sort();
        nodes
    };
    while stale_nodes(&receiver).len() < 13 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{:?}",
            stale_nodes(&receiver)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(2));
    let mut told = stale_nodes(&receiver);
    let all = told.len();
    told.dedup();
    assert_eq!((all, told.len()), (13, 13), "{told:?}");
    assert!(receiver
        .delivered()
        .iter()
        .all(|d| d.json()["kind"] == "node-stale" && d.signed_with(HOOK_SECRET.as_bytes())));
    drop(serve);
}

/// A store that goes away under `gitfleet serve`: its passes fail, and the
/// replica that led tells fleet.kdl's receiver, without the store, that the
/// store is unreachable and, once dev's 30-second manifest has under a
/// third of its life left, that it expires soon; each once by id, signed.
#[test]
fn a_store_that_goes_away_is_told_with_the_manifests_about_to_expire() {
    let fleet = Fleet::new();
    let receiver = Receiver::start(0);
    let work = fleet.path("work");
    let envs = std::fs::read_to_string(work.join("environments.kdl")).unwrap();
    let envs = envs.replacen("freshness \"1h\"", "freshness \"30s\"", 1);
    std::fs::write(work.join("environments.kdl"), envs).unwrap();
    let block = format!(
        "notify \"ops\" {{\n    webhook \"{}/hook\" secret-env=\"GITFLEET_NOTIFY_TEST_SECRET\"\n    events \"store-unreachable\" \"manifest-expiring\"\n}}\n",
        receiver.url
    );
    append_commit_push(
        &work,
        &[("fleet.kdl", &block)],
        "tell ops of outages",
        "origin",
    );
    let (serve, base) = fleet.serve(&[]);
    let passes = |result: &str| -> u64 {
        let prefix = format!("gitfleet_reconcile_passes_total{{result=\"{result}\"}} ");
        reqwest::blocking::get(format!("{base}/metrics"))
            .and_then(|r| r.text())
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix(prefix.as_str())?.parse().ok())
            .unwrap_or(0)
    };
    let started = Instant::now();
    while passes("ok") < 2 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{}",
            serve.output()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(fleet.object("channels/dev.json").is_some());
    // The store's directory replaced by a file: every request fails.
    let store = fleet.path("store");
    std::fs::rename(&store, fleet.path("store.away")).unwrap();
    std::fs::write(&store, b"not a directory").unwrap();
    let kinds = |r: &Receiver| -> Vec<(String, Option<String>)> {
        let mut ids = std::collections::BTreeSet::new();
        let mut out: Vec<(String, Option<String>)> = r
            .delivered()
            .iter()
            .filter(|d| ids.insert(d.headers["x-gitfleet-delivery"].clone()))
            .map(|d| {
                let j = d.json();
                (
                    j["kind"].as_str().unwrap_or_default().to_owned(),
                    j["environment"].as_str().map(str::to_owned),
                )
            })
            .collect();
        out.sort();
        out
    };
    let want = vec![
        ("manifest-expiring".to_owned(), Some("dev".to_owned())),
        ("store-unreachable".to_owned(), None),
    ];
    let started = Instant::now();
    while kinds(&receiver) != want {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "told {:?}; received {:#?}",
            kinds(&receiver),
            receiver.received()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(passes("failed") > 0);
    // Each once: the passes that keep failing tell nothing again.
    std::thread::sleep(Duration::from_secs(3));
    let received = receiver.received();
    assert_eq!(received.len(), 2, "{received:#?}");
    for r in &received {
        assert!(r.signed_with(HOOK_SECRET.as_bytes()), "{r:#?}");
    }
    std::fs::remove_file(&store).unwrap();
    std::fs::rename(fleet.path("store.away"), &store).unwrap();
    drop(serve);
}

#[test]
fn simulate_refuses_bad_arguments_clearly() {
    let repo = workspace().join("examples/fleet-repo");
    let run = |args: &[&str]| {
        let out = Command::new(bin("gitfleet"))
            .arg("simulate")
            .arg("--repo")
            .arg(&repo)
            .args(args)
            .output()
            .unwrap();
        let (_, stderr) = text(&out);
        (out.status.code(), stderr)
    };
    let (code, stderr) = run(&["--print-keys", "--nodes", "500"]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("has only 11 nodes"), "{stderr}");
    let (code, stderr) = run(&["--failure-rate", "2", "--print-keys"]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("not between 0 and 1"), "{stderr}");
    let (code, stderr) = run(&["--store", "memory://"]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("--root"), "{stderr}");
    let missing = Path::new("/nonexistent/root.json");
    let (code, stderr) = run(&["--store", "memory://", "--root", missing.to_str().unwrap()]);
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("reading /nonexistent/root.json"),
        "{stderr}"
    );
}

/// Two fleets in one `gitfleet serve --fleets`: fleet `a` with simulated
/// agents, fleet `b` with a broken fleet.kdl and an S3 store that accepts
/// connections and never answers. `a` carries its edge rollout through
/// dev to the end as if alone; `b` never has a good pass; /metrics keeps
/// them apart by its `fleet` label.
#[test]
fn a_fleet_completes_its_rollout_beside_a_broken_unreachable_one_in_the_same_server() {
    let fleet = Fleet::new();
    // Fleet b: a broken fleet.kdl, and a store that never answers.
    gitfleet_tests::broken_fleet(fleet.dir.path(), "b.git", "b-online.key");
    let (blackhole, s3_env) = gitfleet_tests::silent_s3();
    std::fs::write(
        fleet.path("fleets.kdl"),
        format!(
            "version 1\n\
fleet \"a\" {{\n    repo \"origin.git\"\n    store \"{}\"\n    online-key \"online.key\"\n}}\n\
fleet \"b\" {{\n    repo \"b.git\"\n    store \"s3://fleet-b/edge\"\n    online-key \"b-online.key\"\n}}\n",
            fleet.store
        ),
    )
    .unwrap();
    let serve = Spawned::gitfleet_with(
        fleet.dir.path(),
        "serve",
        &[
            "serve",
            "--fleets",
            "fleets.kdl",
            "--cache",
            "mirrors",
            "--interval",
            "1s",
            "--listen",
            "127.0.0.1:0",
        ],
        s3_env,
    );
    let base = serve.printed_url("serving ");
    let sim = fleet.simulate("0", "simulate-fleets.log");
    let started = Instant::now();
    loop {
        if fleet
            .dev("edge")
            .is_some_and(|d| d.phase == Phase::Complete)
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "fleet a's edge never completed in dev: {:?}\nserve:\n{}\nsimulate:\n{}",
            fleet.dev("edge"),
            serve.output(),
            std::fs::read_to_string(&sim.log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let metrics = reqwest::blocking::get(format!("{base}/metrics"))
        .unwrap()
        .text()
        .unwrap();
    let value = |series: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse::<f64>().ok())
    };
    assert!(
        value("gitfleet_reconcile_passes_total{fleet=\"a\",result=\"ok\"}").unwrap_or(0.0) > 0.0,
        "{metrics}"
    );
    assert_eq!(
        value("gitfleet_reconcile_passes_total{fleet=\"b\",result=\"ok\"}"),
        Some(0.0),
        "{metrics}"
    );
    sim.stop();
    drop(blackhole);
    serve.stop();
}
