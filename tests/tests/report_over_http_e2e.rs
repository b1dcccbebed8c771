//! Liveness without a store write per heartbeat, on real parts: moto_server
//! as S3, `git daemon` serving the fleet repo, two `gitfleet serve`
//! replicas and a real `gitfleet-agent`.
//!
//! The fleet says `report-to` the first replica. The agent's first report
//! (a change: its first) goes to the store; its heartbeats, the same state
//! with new readings, go to the replica over HTTP, so the store object
//! stays as it was while both replicas see the node alive (the second
//! through the first's liveness shard). The agent polls every 10 minutes
//! once idle, and still reports every second. With the first replica
//! stopped, the agent writes its heartbeats to the store again.

#![allow(clippy::unwrap_used)] // test helpers fail the test by panicking

use std::fs::File;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use gitfleet_io::git_daemon::GitDaemon;
use gitfleet_io::moto::Moto;
use gitfleet_io::store::Store;
use gitfleet_schemas::keys;
use gitfleet_schemas::view::FleetStatus;
use gitfleet_tests::real::wait_for;
use gitfleet_tests::sentinel::free_port;
use gitfleet_tests::{bin, text};

/// A child process killed and reaped when dropped, pass or fail.
struct Reaped(Option<Child>);

impl Reaped {
    fn stop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        self.stop();
    }
}

fn serve(dir: &Path, name: &str, repo: &str, store: &str, port: u16, moto: &Moto) -> Reaped {
    let child = Command::new(bin("gitfleet"))
        .args(["serve", "--repo", repo, "--store", store])
        .args(["--interval", "1s", "--holder", name])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .arg("--online-key")
        .arg(dir.join("online.key"))
        .arg("--cache")
        .arg(dir.join(format!("mirror-{name}")))
        .envs(moto.env())
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(File::create(dir.join(format!("{name}.out"))).unwrap())
        .stderr(File::create(dir.join(format!("{name}.err"))).unwrap())
        .spawn()
        .unwrap();
    Reaped(Some(child))
}

fn status(port: u16) -> Option<FleetStatus> {
    let body = reqwest::blocking::Client::new()
        .get(format!("http://127.0.0.1:{port}/api/status"))
        .timeout(Duration::from_secs(5))
        .send()
        .ok()?
        .text()
        .ok()?;
    serde_json::from_str(&body).ok()
}

fn metrics(port: u16) -> String {
    reqwest::blocking::get(format!("http://127.0.0.1:{port}/metrics"))
        .and_then(|r| r.text())
        .unwrap_or_default()
}

/// The counter `name{labels}` in a metrics text, 0 when absent.
fn counter(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0)
}

/// The node's last report time as `port`'s replica sees it.
fn last_heard(port: u16, node: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    status(port)?
        .nodes
        .into_iter()
        .find(|n| n.id == node)?
        .last_report
}

#[test]
fn idle_heartbeats_go_to_a_reconciler_not_the_store_and_fall_back_to_it() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let moto = Moto::start();
    let store_url = "s3://gitfleet/fleet";
    let store: Store = moto.store(store_url);
    let root_key = gitfleet_tests::fleet_keys(dir, "acme");
    let (a, b) = (free_port(), free_port());

    let work = dir.join("work");
    std::fs::create_dir_all(work.join("nodes")).unwrap();
    std::fs::write(
        work.join("fleet.kdl"),
        format!(
            r#"version 1
name "acme"
store "{store_url}"
trust threshold=1 {{
    root-key "{root_key}"
}}
defaults {{
    heartbeat "1s"
    report-to "http://127.0.0.1:{a}"
}}
"#
        ),
    )
    .unwrap();
    std::fs::write(
        work.join("environments.kdl"),
        "version 1\nenvironment \"dev\"\n",
    )
    .unwrap();
    let node = "edge-1";
    let ndir = dir.join(node);
    std::fs::create_dir_all(&ndir).unwrap();
    std::fs::write(
        ndir.join("agent.kdl"),
        format!(
            "version 1\nnode \"{node}\"\nenvironment \"dev\"\nlabels role=\"edge\"\nstore \"{store_url}\"\nstate-dir \"{}\"\npoll \"200ms\" jitter=\"0ms\" idle=\"10m\"\n",
            ndir.join("state").display()
        ),
    )
    .unwrap();
    let out = Command::new(bin("gitfleet-agent"))
        .arg("-c")
        .arg(ndir.join("agent.kdl"))
        .args(["enroll", "--root"])
        .arg(dir.join("root-1.json"))
        .envs(moto.env())
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    std::fs::write(work.join(format!("nodes/{node}.kdl")), stdout).unwrap();
    gitfleet_tests::commit_fleet(dir, &work, "fleet.git");
    let daemon = GitDaemon::start(dir);
    let repo = daemon.url("fleet.git");

    let mut first = serve(dir, "a", &repo, store_url, a, &moto);
    let _second = serve(dir, "b", &repo, store_url, b, &moto);
    let mut agent = Reaped(Some(
        Command::new(bin("gitfleet-agent"))
            .arg("-c")
            .arg(ndir.join("agent.kdl"))
            .args(["--log-format", "human", "run"])
            .envs(moto.env())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(File::create(ndir.join("agent.out")).unwrap())
            .stderr(File::create(ndir.join("agent.err")).unwrap())
            .spawn()
            .unwrap(),
    ));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let key = keys::status(node);
    let stored = || rt.block_on(store.get(&key)).unwrap().map(|o| o.etag);
    let context = || {
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
        format!(
            "agent:\n{}\nreplica a:\n{}\nreplica b:\n{}",
            read("edge-1/agent.err"),
            read("a.err"),
            read("b.err")
        )
    };

    // Replica a takes heartbeats over HTTP...
    let limit = Duration::from_secs(60);
    wait_for("three reports taken over HTTP", limit, context, || {
        (counter(
            &metrics(a),
            "gitfleet_reports_received_total{outcome=\"taken\"}",
        ) >= 3)
            .then_some(())
    });
    // ...and meanwhile the store's copy does not change: a heartbeat costs
    // no store request.
    let etag = stored().expect("the first report is in the store");
    let heard_a = last_heard(a, node).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(stored(), Some(etag.clone()), "{}", context());
    wait_for("replica a hearing the node again", limit, context, || {
        last_heard(a, node).filter(|t| *t > heard_a)
    });
    // Replica b hears of it through a's liveness shard: later than the
    // store's copy was written.
    let written = rt
        .block_on(store.list_versions(keys::STATUS_PREFIX))
        .unwrap()
        .into_iter()
        .find(|l| l.key == key)
        .unwrap()
        .last_modified;
    wait_for(
        "replica b hearing the node through the shard",
        limit,
        context,
        || last_heard(b, node).filter(|t| *t > written + chrono::Duration::seconds(1)),
    );

    // Without a reconciler to take them, heartbeats go to the store.
    first.stop();
    wait_for("a heartbeat written to the store", limit, context, || {
        stored().filter(|e| *e != etag)
    });
    let agent_log = std::fs::read_to_string(ndir.join("agent.err")).unwrap();
    assert!(
        agent_log.contains("cannot reach the reconciler"),
        "{agent_log}"
    );
    agent.stop();
}
