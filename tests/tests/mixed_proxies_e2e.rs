//! A fleet halfway through the move from Sentinel to Zentinel, on real
//! parts only: `git daemon` serving the fleet repo, moto_server as S3,
//! `gitfleet serve` reconciling, and two real `gitfleet-agent` processes,
//! each on its own test host (a network namespace): one driving the real
//! Sentinel 0.4.14, the other the real Zentinel 0.6.45, each in front of
//! real upstream servers, with real requests sent through both.
//!
//! The config directory carries each proxy's form (`sentinel.kdl`, and
//! `zentinel.kdl` with Zentinel's own metrics server switched off); one
//! rollout takes both nodes through each push, each node on the bundle
//! built and validated for its own proxy, gated on its own proxy's
//! metrics. A second push moves the route to another upstream, and the
//! traffic through both proxies shows it.
//!
//! Needs root (network namespaces), sentinel, zentinel, moto_server and git.

#![allow(clippy::unwrap_used)] // test helpers fail the test by panicking

use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use gitfleet_io::git_daemon::GitDaemon;
use gitfleet_io::moto::Moto;
use gitfleet_schemas::agent::LocalState;
use gitfleet_schemas::state::{EnvState, Phase, RolloutState};
use gitfleet_schemas::{Proxy, ProxyKind};
use gitfleet_tests::netns::{self, Netns};
use gitfleet_tests::real::{self, wait_for};
use gitfleet_tests::sentinel::{
    binary, free_port, restart_script_of, serve_upstream, try_get, zentinel_binary,
};
use gitfleet_tests::{bin, git, state_file, text};

/// A test host: its namespace, the proxy it runs and its agent.
struct Node {
    id: String,
    proxy: ProxyKind,
    dir: PathBuf,
    ns: Netns,
    agent: Option<Child>,
}

impl Node {
    fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    fn active(&self) -> Option<String> {
        let state: LocalState =
            serde_json::from_slice(&std::fs::read(self.path("state/state.json")).ok()?).ok()?;
        state.sentinel.map(|s| s.active.digest)
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
        if let Ok(pid) = std::fs::read_to_string(self.path("proxy.pid")) {
            let _ = Command::new("kill").arg("-9").arg(pid.trim()).status();
        }
    }
}

/// The edge config in one proxy's form, routing `/app` to `upstream`.
fn config(proxy: ProxyKind, port: u16, one: u16, two: u16, upstream: &str) -> String {
    // Zentinel 0.6 starts a metrics server of its own on 0.0.0.0:9090
    // unless told not to; the metrics route below serves the gates.
    let observability = match proxy {
        ProxyKind::Sentinel => "",
        ProxyKind::Zentinel => "observability {\n    metrics {\n        enabled #false\n    }\n}\n",
    };
    format!(
        r#"schema-version "1.0"
system {{
    worker-threads 1
}}
{observability}listeners {{
    listener "http" {{
        address "127.0.0.1:{port}"
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
    upstream "one" {{
        target "127.0.0.1:{one}"
    }}
    upstream "two" {{
        target "127.0.0.1:{two}"
    }}
}}
"#
    )
}

const ROLLOUT: &str = r#"version 1
config "edge"
selector role="edge"
step count=1
step percent=100
max-unavailable 1
bake "2s"
progress-deadline "30s"
gates {
    healthy
    max-error-rate 0.05
    min-requests 8
    route "app"
}
"#;

struct World {
    dir: tempfile::TempDir,
    ports: (u16, u16, u16),
    nodes: Vec<Node>,
    serve: Option<Child>,
    alive: Arc<AtomicBool>,
    _daemon: GitDaemon,
    _moto: Moto,
}

impl Drop for World {
    fn drop(&mut self) {
        if let Some(mut serve) = self.serve.take() {
            let _ = serve.kill();
            let _ = serve.wait();
        }
        self.alive.store(false, Ordering::SeqCst);
        self.nodes.clear();
    }
}

impl World {
    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn prod(&self) -> Option<EnvState> {
        state_file::<RolloutState>(&self.path("fleet.git"), "rollouts/edge.json")?
            .environments
            .get("prod")
            .cloned()
    }

    fn context(&self) -> String {
        let mut out = format!(
            "prod: {:?}\nserve:\n{}\n",
            self.prod(),
            tail(&self.path("serve.err"), 20)
        );
        for n in &self.nodes {
            out.push_str(&format!(
                "--- {} ({}, active {:?})\n{}\nproxy:\n{}\n",
                n.id,
                n.proxy.name(),
                n.active(),
                tail(&n.path("agent.err"), 15),
                tail(&n.path("proxy/proxy.log"), 8)
            ));
        }
        out
    }

    fn write_configs(&self, work: &Path, upstream: &str) {
        let (port, one, two) = self.ports;
        write_configs(work, port, one, two, upstream);
    }

    fn push(&self, upstream: &str) -> String {
        let work = self.path("work");
        self.write_configs(&work, upstream);
        git(
            &work,
            &["commit", "-qam", &format!("edge: /app to {upstream}")],
        );
        git(&work, &["push", "-q", "origin", "main"]);
        git(&work, &["rev-parse", "HEAD"]).trim().to_owned()
    }

    fn wait_complete(&self, commit: &str) -> EnvState {
        wait_for(
            &format!("prod complete at {commit}"),
            Duration::from_secs(180),
            || self.context(),
            || {
                self.prod()
                    .filter(|s| s.source_commit == commit && s.phase == Phase::Complete)
            },
        )
    }

    /// Every node runs the bundle of its own proxy in `state`, and its
    /// proxy answers `/app` from `body`'s upstream.
    fn check_serving(&self, state: &EnvState, body: &str) {
        for n in &self.nodes {
            let proxy = match n.proxy {
                ProxyKind::Sentinel => Proxy::legacy(),
                ProxyKind::Zentinel => Proxy::new(ProxyKind::Zentinel, "0.6.45"),
            };
            let want = state.target_for(Some(&proxy)).digest.clone();
            wait_for(
                &format!("{} on its {} bundle, serving {body}", n.id, n.proxy.name()),
                Duration::from_secs(30),
                || self.context(),
                || {
                    (n.active().as_deref() == Some(want.as_str())
                        && n.get(self.ports.0)
                            .is_some_and(|(s, b)| s == 200 && b == body))
                    .then_some(())
                },
            );
        }
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn write_configs(work: &Path, port: u16, one: u16, two: u16, upstream: &str) {
    for kind in ProxyKind::ALL {
        std::fs::write(
            work.join("configs/edge").join(kind.entry()),
            config(kind, port, one, two, upstream),
        )
        .unwrap();
    }
}

fn start() -> World {
    assert!(
        netns::available(),
        "the mixed-proxy end-to-end test runs each node in its own network namespace: run it as root"
    );
    let (sentinel, zentinel) = (binary(), zentinel_binary());
    let dir = tempfile::tempdir().unwrap();
    let moto = Moto::start();
    let store = "s3://gitfleet/fleet";
    moto.store(store);
    let ports = (free_port(), free_port(), free_port());
    let root_key = gitfleet_tests::fleet_keys(dir.path(), "acme");

    let work = dir.path().join("work");
    for sub in ["configs/edge", "rollouts", "nodes"] {
        std::fs::create_dir_all(work.join(sub)).unwrap();
    }
    std::fs::write(
        work.join("fleet.kdl"),
        format!(
            "version 1\nname \"acme\"\nstore \"{store}\"\ntrust threshold=1 {{\n    root-key \"{root_key}\"\n}}\ndefaults {{\n    heartbeat \"2s\"\n}}\n"
        ),
    )
    .unwrap();
    std::fs::write(
        work.join("environments.kdl"),
        "version 1\nenvironment \"prod\"\n",
    )
    .unwrap();
    std::fs::write(work.join("rollouts/edge.kdl"), ROLLOUT).unwrap();
    write_configs(&work, ports.0, ports.1, ports.2, "one");

    let tag = std::process::id() % 100_000;
    let alive = Arc::new(AtomicBool::new(true));
    let mut nodes = Vec::new();
    for (i, kind) in ProxyKind::ALL.into_iter().enumerate() {
        let id = format!("edge-{}", kind.name());
        let ndir = dir.path().join(&id);
        std::fs::create_dir_all(ndir.join("proxy")).unwrap();
        let ns = Netns::create(&format!("gfm{tag}-{i}"));
        ns.relay(moto.port());
        {
            let (one, two) = (ports.1, ports.2);
            ns.spawn(move || {
                for (port, body) in [(one, "one"), (two, "two")] {
                    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, port)).unwrap();
                    serve_upstream(listener, 200, Duration::ZERO, body);
                }
            })
            .join()
            .unwrap();
        }
        // What the node runs, said in agent.kdl and (below) its node file.
        let proxy_line = match kind {
            ProxyKind::Sentinel => String::new(),
            ProxyKind::Zentinel => "proxy \"zentinel\" version=\"0.6.45\"\n".to_owned(),
        };
        std::fs::write(
            ndir.join("agent.kdl"),
            format!(
                r#"version 1
node "{id}"
environment "prod"
labels role="edge"
store "{store}"
state-dir "{state}"
poll "200ms" jitter="0ms"
{proxy_line}sentinel {{
    reload-command "sh" "{restart}"
    config-url "http://127.0.0.1:{port}/-/config"
    confirm-timeout "60s"
}}
"#,
                state = ndir.join("state").display(),
                restart = ndir.join("restart.sh").display(),
                port = ports.0,
            ),
        )
        .unwrap();
        let program = match kind {
            ProxyKind::Sentinel => &sentinel,
            ProxyKind::Zentinel => &zentinel,
        };
        std::fs::write(
            ndir.join("restart.sh"),
            restart_script_of(
                program,
                &ndir.join("proxy.pid"),
                &ndir.join("proxy"),
                &ndir.join("state/sentinel").join(kind.entry()),
            )
            .replace("sentinel.log", "proxy.log"),
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
        std::fs::write(
            work.join(format!("nodes/{id}.kdl")),
            format!("{stdout}{proxy_line}"),
        )
        .unwrap();
        nodes.push(Node {
            id,
            proxy: kind,
            dir: ndir,
            ns,
            agent: None,
        });
    }
    // The fleet repo checks clean: each form is valid for its own proxy.
    let out = Command::new(bin("gitfleet"))
        .args(["check", "."])
        .current_dir(&work)
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    gitfleet_tests::commit_fleet(dir.path(), &work, "fleet.git");
    let daemon = GitDaemon::start(dir.path());

    let serve = real::serve(dir.path(), &daemon.url("fleet.git"), store, moto.env());
    for n in &mut nodes {
        n.agent = Some(real::agent(&n.ns, &n.dir, moto.env()));
        // Two clients per host, each a request every 50 ms.
        for _ in 0..2 {
            let (alive, port) = (Arc::clone(&alive), ports.0);
            n.ns.spawn(move || {
                while alive.load(Ordering::SeqCst) {
                    let _ = try_get(port, "/app");
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
        alive,
        _daemon: daemon,
        _moto: moto,
    }
}

#[test]
fn one_rollout_reaches_sentinel_and_zentinel_nodes_each_with_its_own_bundle() {
    let world = start();
    let work = world.path("work");
    let first = git(&work, &["rev-parse", "HEAD"]).trim().to_owned();

    // The first config reaches both nodes, gated on each proxy's traffic.
    let state = world.wait_complete(&first);
    assert!(
        state.reason.contains("gates passed (per node: at least"),
        "{}",
        state.reason
    );
    let zentinel = Proxy::new(ProxyKind::Zentinel, "0.6.45");
    assert_eq!(state.proxy, Some(Proxy::legacy()), "{state:?}");
    assert!(state.variants.contains_key(&zentinel), "{state:?}");
    assert_ne!(state.target, state.variants[&zentinel].target);
    world.check_serving(&state, "one");

    // A push that moves the route: both proxies serve the new upstream.
    let second = world.push("two");
    let state = world.wait_complete(&second);
    world.check_serving(&state, "two");
    // The Zentinel node got there by restarting Zentinel on zentinel.kdl.
    let zentinel_node = &world.nodes[1];
    let log = std::fs::read_to_string(zentinel_node.path("proxy/proxy.log")).unwrap_or_default();
    assert!(
        log.to_ascii_lowercase().contains("zentinel"),
        "{}",
        world.context()
    );
}
