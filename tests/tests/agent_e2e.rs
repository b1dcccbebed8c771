#![allow(clippy::unwrap_used)]
//! The real `gitfleet-agent` binary against a `file://` store and the real
//! Sentinel proxy: first install, a new bundle changes the route the proxy
//! serves, a bundle the proxy refuses is rolled back and reported, and a
//! SIGKILL at each activation point restarts into a whole old or a whole
//! new config.
//!
//! The agent reloads the proxy with a `reload-command` that restarts it:
//! Sentinel 0.4.14 stops applying routes to traffic after its first SIGHUP
//! reload (see tests/tests/sentinel_proxy.rs), so a restart is the reload
//! that works with it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use gitfleet_agent::faults::{CRASH_AT, POINTS};
use gitfleet_policy::bundle::{self, Input};
use gitfleet_schemas::agent::LocalState;
use gitfleet_schemas::bundle::BundleKind;
use gitfleet_schemas::status::StatusReport;
use gitfleet_schemas::trust::{BundleRef, PublicKey};
use gitfleet_schemas::verify::verify_status;
use gitfleet_tests::alerts::Scrape;
use gitfleet_tests::sentinel::{free_port, try_get, upstream};
use gitfleet_tests::{bin, fleet};

/// How long the agent waits for the proxy to show a new config. Generous:
/// a first start on a fresh machine reads the proxy's 100 MB debug binary
/// from a cold disk while other tests start theirs. A test that waits for a
/// refusal shortens it once the binary is warm ([`Fleet::confirm_within`]).
const CONFIRM_TIMEOUT: &str = "60s";

/// A fleet of one node: a store, the node's state directory and config,
/// two loopback upstreams answering `one` and `two`.
struct Fleet {
    dir: tempfile::TempDir,
    port: u16,
    one: u16,
    two: u16,
    serial: u64,
    previous: Option<BundleRef>,
}

impl Fleet {
    fn new() -> Fleet {
        let dir = tempfile::tempdir().unwrap();
        let f = Fleet {
            port: free_port(),
            one: upstream("one"),
            two: upstream("two"),
            dir,
            serial: 0,
            previous: None,
        };
        std::fs::create_dir_all(f.path("store")).unwrap();
        // The agent runs here, where `www` exists; the proxy runs in
        // `proxy-cwd`, where it does not (see `refused_config`).
        std::fs::create_dir_all(f.path("www")).unwrap();
        std::fs::create_dir_all(f.path("proxy-cwd")).unwrap();
        std::fs::write(f.path("root-1.json"), fleet::root_bytes()).unwrap();
        let config = format!(
            r#"version 1
node "edge-1"
environment "prod"
labels role="edge"
store "file://{store}"
state-dir "{state}"
poll "200ms" jitter="0ms"
sentinel {{
    reload-command "sh" "{restart}"
    config-url "http://127.0.0.1:{port}/-/config"
    confirm-timeout "{CONFIRM_TIMEOUT}"
}}
"#,
            store = f.path("store").display(),
            state = f.path("state").display(),
            restart = f.path("restart.sh").display(),
            port = f.port,
        );
        std::fs::write(f.path("agent.kdl"), config).unwrap();
        let restart = gitfleet_tests::sentinel::restart_script(
            &f.path("sentinel.pid"),
            &f.path("proxy-cwd"),
            &f.path("state/sentinel/sentinel.kdl"),
        );
        std::fs::write(f.path("restart.sh"), restart).unwrap();
        f
    }

    /// Let the agent wait at most `timeout` for the proxy to show a config.
    fn confirm_within(&self, timeout: &str) {
        let path = self.path("agent.kdl");
        let text = std::fs::read_to_string(&path).unwrap();
        let from = format!("confirm-timeout \"{CONFIRM_TIMEOUT}\"");
        assert!(text.contains(&from), "{text}");
        let to = format!("confirm-timeout \"{timeout}\"");
        std::fs::write(&path, text.replace(&from, &to)).unwrap();
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.path("proxy-cwd/sentinel.log")).unwrap_or_default()
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn agent(&self, args: &[&str], crash_at: Option<&str>) -> Output {
        let mut cmd = Command::new(bin("gitfleet-agent"));
        cmd.arg("-c")
            .arg(self.path("agent.kdl"))
            .args(args)
            .current_dir(self.dir.path())
            .env_remove(CRASH_AT);
        if let Some(point) = crash_at {
            cmd.env(CRASH_AT, point);
        }
        cmd.output().unwrap()
    }

    fn config(&self, app: &str, extra_routes: &str) -> String {
        format!(
            r#"schema-version "1.0"
system {{
    worker-threads 1
}}
listeners {{
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
{extra_routes}
    route "app" {{
        matches {{
            path-prefix "/app"
        }}
        upstream "{app}"
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
"#,
            port = self.port,
            one = self.one,
            two = self.two,
        )
    }

    /// Build a bundle of `text`, upload it and publish a manifest (next
    /// serial) that puts every node on it.
    fn publish(&mut self, text: &str) -> BundleRef {
        let files = BTreeMap::from([("sentinel.kdl".to_owned(), text.as_bytes().to_vec())]);
        let built = bundle::build(Input {
            kind: BundleKind::Sentinel,
            name: "edge",
            source_commit: &format!("{:040}", self.serial + 1),
            validator: "sentinel-config 0.4.14",
            files: &files,
            sbom: b"{}".to_vec(),
        })
        .unwrap();
        self.serial += 1;
        let previous = self.previous.replace(built.reference.clone());
        let manifest = fleet::manifest_bytes(
            self.serial,
            "edge",
            &[("role", "edge")],
            &built.reference,
            previous.as_ref(),
        );
        fleet::publish(&self.path("store"), &built, &manifest).unwrap();
        built.reference
    }

    fn state(&self) -> LocalState {
        serde_json::from_slice(&std::fs::read(self.path("state/state.json")).unwrap()).unwrap()
    }

    fn active(&self) -> Option<BundleRef> {
        self.state().sentinel.map(|s| s.active)
    }

    /// The node's last status report, verified with its key.
    fn report(&self) -> StatusReport {
        let text = std::fs::read_to_string(self.path("state/node.key")).unwrap();
        let file: serde_json::Value = serde_json::from_str(&text).unwrap();
        let key = PublicKey::parse(file["public_key"].as_str().unwrap()).unwrap();
        let bytes = std::fs::read(self.path("store/status/edge-1.json")).unwrap();
        verify_status(&bytes, "acme", "edge-1", &key)
            .unwrap()
            .clone_inner()
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        // The proxy the restart script started for this test, by its pid.
        if let Ok(pid) = std::fs::read_to_string(self.path("sentinel.pid")) {
            let _ = Command::new("kill").arg("-9").arg(pid.trim()).status();
        }
    }
}

trait CloneInner<T> {
    fn clone_inner(&self) -> T;
}

impl<T: Clone> CloneInner<T> for gitfleet_schemas::verify::Verified<T> {
    fn clone_inner(&self) -> T {
        (**self).clone()
    }
}

fn ok(out: &Output) {
    assert!(
        out.status.success(),
        "agent failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Wait until `/app` answers `want` through the proxy (the proxy rebuilds
/// its routes just after its config dump changes).
fn app_is(fleet: &Fleet, want: &str) {
    let start = Instant::now();
    loop {
        let got = try_get(fleet.port, "/app");
        if matches!(&got, Ok((200, body)) if body == want) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "/app answers {got:?}, want {want:?}; log:\n{}",
            fleet.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What `/app` answers through the proxy, once it answers 200.
fn app(fleet: &Fleet) -> String {
    let start = Instant::now();
    loop {
        if let Ok((200, body)) = try_get(fleet.port, "/app") {
            return body;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "/app does not answer; log:\n{}",
            fleet.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// An enrolled node running `one` behind the proxy its first activation
/// started.
/// A route the agent's check accepts (`www` exists in its directory) but
/// the proxy refuses, resolving the path in its own directory: the
/// restarted proxy exits and the agent restores the previous config.
const REFUSED_ROUTE: &str = r#"    route "files" {
        priority "high"
        matches {
            path-prefix "/files/"
        }
        service-type "static"
        static-files {
            root "www"
        }
    }"#;

fn running() -> (Fleet, BundleRef) {
    let mut fleet = Fleet::new();
    let out = fleet.agent(
        &[
            "enroll",
            "--root",
            fleet.path("root-1.json").to_str().unwrap(),
        ],
        None,
    );
    ok(&out);
    let nodes_kdl = String::from_utf8_lossy(&out.stdout);
    assert!(nodes_kdl.contains("id \"edge-1\""), "{nodes_kdl}");
    assert!(fleet.path("store/enroll/edge-1.json").is_file());

    let v1 = fleet.publish(&fleet.config("one", ""));
    let out = fleet.agent(&["run", "--once"], None);
    ok(&out);
    assert_eq!(
        fleet.active(),
        Some(v1.clone()),
        "the first activation did not stay; the agent said:\n{}\nthe proxy logged:\n{}",
        String::from_utf8_lossy(&out.stderr),
        fleet.log()
    );
    app_is(&fleet, "one");
    (fleet, v1)
}

#[test]
fn a_new_bundle_changes_the_route_the_proxy_serves() {
    let (mut fleet, v1) = running();
    let v2 = fleet.publish(&fleet.config("two", ""));
    ok(&fleet.agent(&["run", "--once"], None));
    app_is(&fleet, "two");
    let state = fleet.state();
    let slot = state.sentinel.unwrap();
    assert_eq!((slot.active, slot.previous), (v2.clone(), Some(v1)));
    assert_eq!(state.serial, Some(2));

    let report = fleet.report();
    assert_eq!(report.channel_serial, Some(2));
    assert_eq!(report.rollouts["edge"].active, Some(v2));
    assert_eq!(report.rollouts["edge"].error, None);
    assert!(report.healthy);
    assert!(report.drift.is_empty());
    assert!(report.metrics.uptime_seconds.is_some());
}

#[test]
fn a_bundle_the_proxy_refuses_is_rolled_back_and_reported() {
    let (mut fleet, v1) = running();
    // The proxy never shows the refused config: wait less for it.
    fleet.confirm_within("5s");
    // The agent restores `one` and restarts the proxy.
    let bad = fleet.publish(&fleet.config("two", REFUSED_ROUTE));
    ok(&fleet.agent(&["run", "--once"], None));
    app_is(&fleet, "one");
    assert_eq!(fleet.active(), Some(v1.clone()));
    let state = fleet.state();
    assert!(
        state.failed[&bad.digest].contains("no usable config dump"),
        "{:?}",
        state.failed
    );
    assert_eq!(
        std::fs::read_link(fleet.path("state/sentinel")).unwrap(),
        Path::new("bundles")
            .join(v1.digest.trim_start_matches("sha256:"))
            .join("files")
    );

    let report = fleet.report();
    assert!(!report.healthy);
    assert_eq!(report.rollouts["edge"].active, Some(v1));
    let error = report.rollouts["edge"].error.clone().unwrap();
    assert!(error.contains("no usable config dump"), "{error}");
    assert!(
        fleet
            .log()
            .contains("static files root directory 'www' does not exist"),
        "{}",
        fleet.log()
    );

    // The failure is remembered: the next poll does not try again.
    let starts = fleet.log().matches("Loading configuration from").count();
    ok(&fleet.agent(&["run", "--once"], None));
    assert_eq!(
        fleet.log().matches("Loading configuration from").count(),
        starts
    );
    app_is(&fleet, "one");
}

/// The real agent with the real proxy: a manifest that still names the
/// active bundle but revokes it moves the node back to the previous one
/// on the next poll, and the proxy serves that config again.
#[test]
fn a_revoked_active_bundle_is_left_for_the_previous_one_on_the_next_poll() {
    let (mut fleet, v1) = running();
    let v2 = fleet.publish(&fleet.config("two", ""));
    ok(&fleet.agent(&["run", "--once"], None));
    app_is(&fleet, "two");
    assert_eq!(fleet.active(), Some(v2.clone()));

    fleet.serial += 1;
    let manifest = fleet::manifest_revoking(
        fleet.serial,
        "edge",
        &[("role", "edge")],
        &v2,
        Some(&v1),
        &[&v2],
    );
    let tmp = fleet.path("store/channels/.prod.json.tmp");
    std::fs::write(&tmp, manifest).unwrap();
    std::fs::rename(&tmp, fleet.path("store/channels/prod.json")).unwrap();
    ok(&fleet.agent(&["run", "--once"], None));
    app_is(&fleet, "one");
    let state = fleet.state();
    let slot = state.sentinel.unwrap();
    assert_eq!(slot.active, v1);
    assert_eq!(fleet.report().rollouts["edge"].active, Some(v1));
}

/// The real agent with the real proxy: a held node pinned to the bundle
/// it ran before goes back to it while the rollout names another, and the
/// proxy serves that config.
#[test]
fn a_pinned_node_runs_its_pinned_bundle_whatever_the_rollout_names() {
    let (mut fleet, v1) = running();
    let v2 = fleet.publish(&fleet.config("two", ""));
    ok(&fleet.agent(&["run", "--once"], None));
    app_is(&fleet, "two");

    fleet.serial += 1;
    let manifest =
        fleet::manifest_with(fleet.serial, "edge", &[("role", "edge")], &v2, None, |m| {
            m.held = vec!["edge-1".to_owned()];
            m.pinned = vec![gitfleet_schemas::trust::ChannelPin {
                node: "edge-1".to_owned(),
                rollout: "edge".to_owned(),
                bundle: v1.clone(),
            }];
        });
    let tmp = fleet.path("store/channels/.prod.json.tmp");
    std::fs::write(&tmp, manifest).unwrap();
    std::fs::rename(&tmp, fleet.path("store/channels/prod.json")).unwrap();
    ok(&fleet.agent(&["run", "--once"], None));
    app_is(&fleet, "one");
    assert_eq!(fleet.active(), Some(v1.clone()));
    assert_eq!(fleet.report().rollouts["edge"].active, Some(v1));
}

/// The real agent: a manifest naming the node as decommissioned gets a
/// final report and a stop (exit status 3, which the systemd unit does not
/// restart); the proxy keeps serving what it ran, and a restarted agent
/// stops at once without reading the store.
#[test]
fn a_decommissioned_node_reports_once_more_and_stops_for_good() {
    let (mut fleet, v1) = running();
    fleet.serial += 1;
    let manifest =
        fleet::manifest_with(fleet.serial, "edge", &[("role", "edge")], &v1, None, |m| {
            m.decommissioned = vec!["edge-1".to_owned()];
        });
    let tmp = fleet.path("store/channels/.prod.json.tmp");
    std::fs::write(&tmp, manifest).unwrap();
    std::fs::rename(&tmp, fleet.path("store/channels/prod.json")).unwrap();
    let report_before = std::fs::read(fleet.path("store/status/edge-1.json")).unwrap();
    let out = fleet.agent(&["run"], None);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The final report was written, with the serial that said so.
    let report = fleet.report();
    assert_ne!(
        std::fs::read(fleet.path("store/status/edge-1.json")).unwrap(),
        report_before
    );
    assert_eq!(report.channel_serial, Some(fleet.serial));
    assert!(fleet.state().decommissioned.is_some());
    app_is(&fleet, "one");

    // No store at all: a restart stops before it would need one.
    std::fs::rename(fleet.path("store"), fleet.path("store-gone")).unwrap();
    let out = fleet.agent(&["run"], None);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("was decommissioned"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_kill_at_any_activation_point_restarts_into_a_whole_config() {
    let (mut fleet, _) = running();
    let mut expect = "one";
    for point in POINTS {
        let old = expect;
        let new = if old == "one" { "two" } else { "one" };
        let before = fleet.active();
        let target = fleet.publish(&fleet.config(new, ""));

        let out = fleet.agent(&["run", "--once"], Some(point));
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&out.status),
            Some(9),
            "{point}: the agent was not killed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Killed: the proxy serves one whole config.
        let serving = app(&fleet);
        assert!(serving == old || serving == new, "{point}: {serving}");
        assert_eq!(
            fleet.active(),
            before,
            "{point}: state moved before the outcome"
        );

        // Restarted: recovery, then the activation is done again.
        let restarted = fleet.agent(&["run", "--once"], None);
        ok(&restarted);
        if try_get(fleet.port, "/app").ok() != Some((200, new.to_owned())) {
            eprintln!(
                "{point}: restarted agent said:\n{}",
                String::from_utf8_lossy(&restarted.stderr)
            );
        }
        app_is(&fleet, new);
        assert_eq!(fleet.active(), Some(target), "{point}");
        assert!(!fleet.path("state/journal.json").exists(), "{point}");
        let status = fleet.agent(&["status", "--format", "json"], None);
        ok(&status);
        expect = new;
    }
}

#[test]
fn metrics_are_served_on_loopback_only() {
    let (fleet, _) = running();
    let out = fleet.agent(&["run", "--once", "--metrics-listen", "0.0.0.0:9464"], None);
    assert!(!out.status.success());
    let (_, stderr) = gitfleet_tests::text(&out);
    assert!(stderr.contains("is not a loopback address"), "{stderr}");
}

#[test]
fn a_changed_active_file_is_reported_as_drift_at_once_in_metrics_and_by_the_alert_rules() {
    let (fleet, v1) = running();
    let before = fleet.report().at;
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    // Polls find nothing new and the heartbeat is a minute away: only the
    // file watcher can make the agent report within the deadline below.
    let agent = Running::with_metrics(&fleet, &metrics_addr);
    // Its start-up report first.
    let start = Instant::now();
    while fleet.report().at == before {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no start-up report"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let settled = fleet.report().at;
    let scrape = || {
        let r = reqwest::blocking::get(format!("http://{metrics_addr}/metrics")).unwrap();
        (r.status().as_u16(), r.text().unwrap())
    };
    let before = Scrape::now(scrape().1);
    std::thread::sleep(Duration::from_millis(500));
    let hex = v1.digest.trim_start_matches("sha256:");
    std::fs::write(
        fleet.path(&format!("state/bundles/{hex}/files/sentinel.kdl")),
        "edited by hand",
    )
    .unwrap();
    let start = Instant::now();
    let report = loop {
        let r = fleet.report();
        if r.at != settled && !r.drift.is_empty() {
            break r;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no drift reported"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    // The agent's own /metrics says the same.
    let get = |path: &str| {
        let r = reqwest::blocking::get(format!("http://{metrics_addr}{path}")).unwrap();
        (r.status().as_u16(), r.text().unwrap())
    };
    let start = Instant::now();
    let metrics = loop {
        let (code, text) = get("/metrics");
        assert_eq!(code, 200, "{text}");
        if text.contains("gitfleet_agent_drifted_files 1\n") {
            break text;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no drift in the metrics:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let active = format!(
        "gitfleet_agent_active_bundle{{rollout=\"edge\",digest=\"{}\"}} 1",
        v1.digest
    );
    assert!(metrics.contains(&active), "{metrics}");
    assert!(
        metrics.contains("gitfleet_agent_polls_total{outcome=\"unchanged\"} "),
        "{metrics}"
    );
    assert!(metrics.contains("gitfleet_agent_healthy "), "{metrics}");
    assert_eq!(get("/other").0, 404);
    drop(agent);
    // The shipped alerting rules, over the agent's own /metrics before and
    // after: the drift alert and no other.
    gitfleet_tests::alerts::check(
        &before,
        &Scrape::now(metrics.clone()),
        &["GitfleetAgentDrift"],
    )
    .unwrap();
    assert_eq!(report.drift.len(), 1, "{:?}", report.drift);
    assert_eq!(report.drift[0].path, "files/sentinel.kdl");
    assert_eq!(
        report.drift[0].found_sha256.as_deref(),
        Some(gitfleet_schemas::verify::sha256_hex(b"edited by hand").as_str())
    );
}

/// Scrape `addr`'s /metrics until `done` holds (10 s at most).
fn scrape_until(addr: &str, what: &str, done: impl Fn(&str) -> bool) -> Scrape {
    gitfleet_tests::alerts::scrape_until(
        &format!("http://{addr}/metrics"),
        what,
        Duration::from_secs(10),
        done,
    )
}

/// A manifest with 90 minutes to live that nothing re-signs: the expiry
/// alert fires (under a third of its life left), and no other.
#[test]
fn a_manifest_nobody_re_signs_raises_the_expiring_alert_and_no_other() {
    let (mut fleet, v1) = running();
    fleet.serial += 1;
    let expires = chrono::Utc::now() + chrono::Duration::minutes(90);
    let manifest =
        fleet::manifest_with(fleet.serial, "edge", &[("role", "edge")], &v1, None, |m| {
            m.expires = expires;
        });
    std::fs::write(fleet.path("store/channels/prod.json"), manifest).unwrap();
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let agent = Running::with_metrics(&fleet, &metrics_addr);
    let line = format!(
        "gitfleet_agent_channel_expires_timestamp_seconds {}.",
        expires.timestamp()
    );
    let taken = |t: &str| {
        t.contains("gitfleet_agent_channel_serial 2\n")
            && t.contains(&line)
            && t.contains("gitfleet_agent_healthy 1\n")
    };
    let first = scrape_until(&metrics_addr, "the short-lived manifest", taken);
    // Long enough apart for an expiry that did not move to count as stuck.
    std::thread::sleep(Duration::from_secs_f64(gitfleet_tests::alerts::STUCK_AFTER));
    let second = scrape_until(&metrics_addr, "it a little later", taken);
    gitfleet_tests::alerts::check(&first, &second, &["GitfleetAgentManifestExpiring"]).unwrap();

    // Restarted, the agent still dates the manifest from when it came
    // (its state keeps that), so the alert does not start over.
    let received = |t: &str| {
        t.lines()
            .find_map(|l| l.strip_prefix("gitfleet_agent_channel_received_timestamp_seconds "))
            .map(str::to_owned)
    };
    let before = received(&first.text);
    assert!(before.is_some(), "{}", first.text);
    drop(agent);
    let _agent = Running::with_metrics(&fleet, &metrics_addr);
    let again = scrape_until(&metrics_addr, "the restarted agent's report", taken);
    assert_eq!(received(&again.text), before, "{}", again.text);
}

/// A bundle the proxy refuses, with the agent serving its metrics: the
/// rollout-failed and unhealthy alerts fire, and no other.
#[test]
fn a_bundle_the_proxy_refuses_raises_the_rollout_failed_and_unhealthy_alerts() {
    let (mut fleet, _v1) = running();
    fleet.confirm_within("5s");
    fleet.publish(&fleet.config("two", REFUSED_ROUTE));
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let _agent = Running::with_metrics(&fleet, &metrics_addr);
    let failed = |t: &str| {
        t.contains("gitfleet_agent_rollout_failed{rollout=\"edge\"} 1\n")
            && t.contains("gitfleet_agent_healthy 0\n")
    };
    // Activation, the proxy's refusal and the restore take a while.
    let first = gitfleet_tests::alerts::scrape_until(
        &format!("http://{metrics_addr}/metrics"),
        "a failed rollout",
        Duration::from_secs(60),
        failed,
    );
    std::thread::sleep(Duration::from_secs(2));
    let second = scrape_until(&metrics_addr, "the failure a little later", failed);
    gitfleet_tests::alerts::check(
        &first,
        &second,
        &["GitfleetAgentRolloutFailed", "GitfleetAgentUnhealthy"],
    )
    .unwrap();
    app_is(&fleet, "one");
}

/// A real agent's report of drift, read by a real `gitfleet serve` (over a
/// store of its own, so its manifests leave the agent alone): serve's
/// /metrics raise the fleet-wide drift alert and no other, and fleet.kdl's
/// webhook is told of the drift once, signed.
#[test]
fn a_drifted_node_raises_the_fleet_drift_alert_and_is_told_once_by_serve() {
    let (fleet, v1) = running();
    let before = fleet.report().at;
    let hex = v1.digest.trim_start_matches("sha256:");
    std::fs::write(
        fleet.path(&format!("state/bundles/{hex}/files/sentinel.kdl")),
        "edited by hand",
    )
    .unwrap();
    ok(&fleet.agent(&["run", "--once"], None));
    let report = fleet.report();
    assert!(report.at > before && !report.drift.is_empty(), "{report:?}");

    // The fleet repo that names this node, as `enroll` printed it.
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir_all(work.join("nodes")).unwrap();
    let root_key = gitfleet_tests::fleet_keys(dir.path(), fleet::FLEET);
    let receiver = gitfleet_tests::receiver::Receiver::start(0);
    let secret = "drift-hook-secret";
    std::fs::write(
        work.join("fleet.kdl"),
        format!(
            "version 1\nname \"{}\"\nstore \"file://{}\"\ntrust threshold=1 {{\n    root-key \"{root_key}\"\n}}\n\
notify \"ops\" {{\n    webhook \"{}/hook\" secret-env=\"GITFLEET_NOTIFY_DRIFT\"\n    events \"drift-found\"\n}}\n",
            fleet::FLEET,
            dir.path().join("store").display(),
            receiver.url
        ),
    )
    .unwrap();
    std::fs::write(
        work.join("environments.kdl"),
        "version 1\nenvironment \"prod\"\n",
    )
    .unwrap();
    let enrolled = fleet.agent(
        &[
            "enroll",
            "--root",
            fleet.path("root-1.json").to_str().unwrap(),
        ],
        None,
    );
    ok(&enrolled);
    std::fs::write(work.join("nodes/edge-1.kdl"), &enrolled.stdout).unwrap();
    gitfleet_tests::commit_fleet(dir.path(), &work, "origin.git");
    // The agent's signed report, as the store would hand it to serve.
    std::fs::create_dir_all(dir.path().join("store/status")).unwrap();
    std::fs::copy(
        fleet.path("store/status/edge-1.json"),
        dir.path().join("store/status/edge-1.json"),
    )
    .unwrap();
    let origin = dir.path().join("origin.git").display().to_string();
    let serve = gitfleet_tests::Spawned::gitfleet_with(
        dir.path(),
        "serve",
        &[
            "serve",
            "--repo",
            &origin,
            "--online-key",
            "online.key",
            "--cache",
            "mirror",
            "--listen",
            "127.0.0.1:0",
            "--interval",
            "1s",
            "--stale-after",
            "1h",
        ],
        [("GITFLEET_NOTIFY_DRIFT", secret.to_owned())],
    );
    let base = serve.printed_url("serving ");
    let drifted = |t: &str| t.contains("gitfleet_nodes_drifted{environment=\"prod\"} 1\n");
    let scrape = || {
        reqwest::blocking::get(format!("{base}/metrics"))
            .and_then(|r| r.text())
            .unwrap_or_default()
    };
    let first = gitfleet_tests::alerts::scrape_until(
        &format!("{base}/metrics"),
        "drift",
        Duration::from_secs(30),
        drifted,
    );
    std::thread::sleep(Duration::from_secs(2));
    let second = Scrape::now(scrape());
    assert!(drifted(&second.text), "{}", second.text);
    gitfleet_tests::alerts::check(&first, &second, &["GitfleetDrift"]).unwrap();
    let start = Instant::now();
    while receiver.delivered().is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{:#?}",
            receiver.received()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // More passes, the drift still there: told once.
    std::thread::sleep(Duration::from_secs(3));
    let told = receiver.received();
    assert_eq!(told.len(), 1, "{told:#?}");
    let body = told[0].json();
    assert_eq!(
        (body["kind"].as_str(), body["node"].as_str()),
        (Some("drift-found"), Some("edge-1"))
    );
    assert!(
        body["summary"]
            .as_str()
            .unwrap()
            .contains("files/sentinel.kdl"),
        "{body}"
    );
    assert!(told[0].signed_with(secret.as_bytes()));
    drop(serve);
}

/// The agent process, stopped by its pid when the test ends, however.
struct Running(std::process::Child);

impl Running {
    /// `gitfleet-agent run` of `fleet`, serving its metrics on `addr`.
    fn with_metrics(fleet: &Fleet, addr: &str) -> Running {
        Running(
            Command::new(bin("gitfleet-agent"))
                .arg("-c")
                .arg(fleet.path("agent.kdl"))
                .args(["run", "--metrics-listen", addr])
                .current_dir(fleet.path(""))
                .env_remove(CRASH_AT)
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap(),
        )
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.0.id().to_string()).status();
        let _ = self.0.wait();
    }
}

/// A store that stops answering: every poll is refused, which the agent's
/// metrics show and the shipped "cannot poll" alert (and no other) fires
/// on; when it answers again the outage is in the node's signed events.
#[test]
fn a_store_that_stops_answering_raises_the_cannot_poll_alert_and_leaves_events() {
    let (fleet, _v1) = running();
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let _agent = Running::with_metrics(&fleet, &metrics_addr);
    let polls = |text: &str, outcome: &str| -> u64 {
        let prefix = format!("gitfleet_agent_polls_total{{outcome=\"{outcome}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let scrape_until = |what: &str, done: &dyn Fn(&str) -> bool| {
        let start = Instant::now();
        loop {
            if let Ok(r) = reqwest::blocking::get(format!("http://{metrics_addr}/metrics")) {
                let text = r.text().unwrap();
                if done(&text) {
                    return Scrape::now(text);
                }
            }
            assert!(start.elapsed() < Duration::from_secs(20), "no {what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    scrape_until("unchanged polls", &|t| polls(t, "unchanged") > 0);

    // The store's directory replaced by a file: every request fails.
    std::fs::rename(fleet.path("store"), fleet.path("store.away")).unwrap();
    std::fs::write(fleet.path("store"), b"not a directory").unwrap();
    let before = scrape_until("a refused poll", &|t| polls(t, "refused") > 0);
    let refused = polls(&before.text, "refused");
    let unchanged = polls(&before.text, "unchanged");
    let after = scrape_until("more refused polls", &|t| {
        polls(t, "refused") >= refused + 3
    });
    assert_eq!(polls(&after.text, "unchanged"), unchanged);
    gitfleet_tests::alerts::check(&before, &after, &["GitfleetAgentCannotPoll"]).unwrap();

    // Back: the outage and the recovery are events, signed by the node.
    std::fs::remove_file(fleet.path("store")).unwrap();
    std::fs::rename(fleet.path("store.away"), fleet.path("store")).unwrap();
    let key_file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fleet.path("state/node.key")).unwrap())
            .unwrap();
    let key = PublicKey::parse(key_file["public_key"].as_str().unwrap()).unwrap();
    let start = Instant::now();
    let kinds = loop {
        let mut kinds = Vec::new();
        let today = chrono::Utc::now().date_naive();
        for day in [today - chrono::Days::new(1), today] {
            let path = fleet.path(&format!(
                "store/{}",
                gitfleet_schemas::keys::events(day, "edge-1")
            ));
            if let Ok(bytes) = std::fs::read(path) {
                let events =
                    gitfleet_schemas::verify::verify_node_events(&bytes, "acme", "edge-1", &key)
                        .unwrap()
                        .into_inner();
                kinds.extend(events.events.into_iter().map(|e| e.kind));
            }
        }
        if kinds.contains(&StoreRecovered) {
            break kinds;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no store-recovered event: {kinds:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    use gitfleet_schemas::events::EventKind::{StoreRecovered, StoreUnreachable};
    let outage: Vec<_> = kinds
        .into_iter()
        .filter(|k| matches!(k, StoreUnreachable | StoreRecovered))
        .collect();
    assert_eq!(outage, [StoreUnreachable, StoreRecovered]);
}
