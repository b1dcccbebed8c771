//! The shipped Prometheus alerting rules (deploy/prometheus/gitfleet-alerts.yml)
//! against real processes: promtool checks the file, then evaluates the
//! rules over `/metrics` scraped from a running `gitfleet up --listen`
//! (the real reconciler and status server, simulated nodes) in the states
//! the rules are about, and exactly the expected alerts fire. The agent's
//! rules are evaluated over a real agent's `/metrics` in agent_e2e.rs.

#![allow(clippy::unwrap_used)] // test helpers fail the test by panicking

use std::net::TcpListener;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use gitfleet_tests::alerts::{self, Scrape};
use gitfleet_tests::Spawned;

/// Unhealthy nodes in all environments.
fn unhealthy(metrics: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("gitfleet_nodes{") && l.contains("health=\"unhealthy\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Scrape `base`'s `/metrics` until `done` says it shows what the test
/// waits for (two minutes at most).
fn scrape_until(base: &str, what: &str, done: impl Fn(&str) -> bool) -> Scrape {
    alerts::scrape_until(
        &format!("{base}/metrics"),
        what,
        Duration::from_secs(120),
        done,
    )
}

#[test]
fn promtool_accepts_the_rules_file() {
    let promtool = gitfleet_io::tools::Tool::Promtool.require();
    let out = Command::new(promtool)
        .args(["check", "rules"])
        .arg(alerts::rules_file())
        .output()
        .unwrap();
    let (stdout, stderr) = gitfleet_tests::text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
}

#[test]
fn a_failing_rollout_an_ignored_report_and_a_broken_store_raise_their_alerts_and_no_others() {
    let cwd = tempfile::tempdir().unwrap();
    // Every bundle makes its node unhealthy: dev's rollouts trip their
    // gates and fail (nothing to roll back to).
    let up = Spawned::up(
        cwd.path(),
        "up",
        &["--failure-rate", "1", "--listen", "127.0.0.1:0"],
    );
    let base = up.printed_url("Status pages: ");
    let first = scrape_until(&base, "unhealthy nodes", |t| unhealthy(t) > 0);

    // A report from a node the fleet does not know (nothing overwrites it).
    let store = cwd.path().join("demo/store/status");
    std::fs::write(store.join("stranger.json"), b"{\"not\": \"a report\"}").unwrap();
    let failed = scrape_until(&base, "a failed rollout and an ignored report", |t| {
        (t.contains("phase=\"rolled-back\"} 1") || t.contains("phase=\"failed\"} 1"))
            && t.contains("gitfleet_status_reports_ignored{")
    });
    // A rollout with nothing to go back to fails (critical); one that had
    // a previous bundle rolls back (warning).
    let phases = |text: &str| -> Vec<&'static str> {
        [
            ("phase=\"failed\"} 1", "GitfleetRolloutFailed"),
            ("phase=\"rolled-back\"} 1", "GitfleetRolloutRolledBack"),
        ]
        .into_iter()
        .filter(|(phase, _)| text.contains(phase))
        .map(|(_, alert)| alert)
        .collect()
    };
    // Before: the nodes were already unhealthy, so "for: 15m" holds too.
    let mut expected = vec!["GitfleetNodesUnhealthy", "GitfleetReportsIgnored"];
    expected.extend(phases(&failed.text));
    expected.sort_unstable();
    alerts::check(&first, &failed, &expected).unwrap();

    // The store's directory replaced by a file: every request fails.
    let demo = cwd.path().join("demo");
    std::fs::rename(demo.join("store"), demo.join("store.away")).unwrap();
    std::fs::write(demo.join("store"), b"not a directory").unwrap();
    let broken = scrape_until(&base, "failed passes and store errors", |t| {
        t.lines().any(|l| {
            l.starts_with("gitfleet_reconcile_passes_total{result=\"failed\"} ")
                && !l.ends_with(" 0")
        }) && !t.contains("gitfleet_store_errors_total 0\n")
    });
    let later = scrape_until(&base, "more failed passes", |t| {
        let failed = |t: &str| {
            t.lines()
                .find_map(|l| l.strip_prefix("gitfleet_reconcile_passes_total{result=\"failed\"} "))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        failed(t) > failed(&broken.text)
    });
    // The last good pass's view stays on the pages and in /metrics.
    let mut expected = vec![
        "GitfleetNodesUnhealthy",
        "GitfleetPassesFailing",
        "GitfleetReportsIgnored",
        "GitfleetStoreErrors",
    ];
    expected.extend(phases(&later.text));
    expected.sort_unstable();
    alerts::check(&broken, &later, &expected).unwrap();
    std::fs::remove_file(demo.join("store")).unwrap();
    std::fs::rename(demo.join("store.away"), demo.join("store")).unwrap();
    up.stop();
}

/// A TCP server on 127.0.0.1 that takes connections and never answers,
/// as a store stuck behind a broken proxy would; stopped when dropped.
struct Silent {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Silent {
    fn start() -> Silent {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            for conn in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(c) = conn {
                    held.push(c);
                }
            }
        });
        Silent {
            port,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Silent {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = std::net::TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The first pass waits on a store that never answers: no pass ends, and
/// the stalled alert (counted from the process start) fires, and no other.
#[test]
fn a_reconciler_whose_first_pass_never_ends_raises_the_stalled_alert() {
    let dir = tempfile::tempdir().unwrap();
    let origin = gitfleet_tests::example_origin(dir.path());
    let silent = Silent::start();
    let env = [
        (
            "AWS_ENDPOINT_URL",
            format!("http://127.0.0.1:{}", silent.port),
        ),
        ("AWS_ACCESS_KEY_ID", "testing".to_owned()),
        ("AWS_SECRET_ACCESS_KEY", "testing".to_owned()),
        ("AWS_REGION", "us-east-1".to_owned()),
    ];
    let serve = Spawned::gitfleet_with(
        dir.path(),
        "serve",
        &[
            "serve",
            "--repo",
            &origin,
            "--store",
            "s3://gitfleet/fleet",
            "--online-key",
            "online.key",
            "--cache",
            "mirror",
            "--listen",
            "127.0.0.1:0",
        ],
        env,
    );
    let base = serve.printed_url("serving ");
    let stuck = |t: &str| {
        t.contains("gitfleet_reconciler_start_timestamp_seconds ")
            && !t.contains("gitfleet_reconcile_last_pass_timestamp_seconds ")
    };
    let first = scrape_until(&base, "a start and no pass ended", stuck);
    std::thread::sleep(Duration::from_secs_f64(alerts::STUCK_AFTER));
    let second = scrape_until(&base, "still no pass ended", stuck);
    alerts::check(&first, &second, &["GitfleetReconcilerStalled"]).unwrap();
    drop(serve);
}

#[test]
fn a_healthy_fleet_waiting_for_approval_raises_only_that_alert() {
    let cwd = tempfile::tempdir().unwrap();
    let up = Spawned::up(cwd.path(), "up", &["--listen", "127.0.0.1:0"]);
    let base = up.printed_url("Status pages: ");
    // dev and staging rolled out, every node healthy; prod waits for the
    // two approving reviews environments.kdl asks for.
    let done = |t: &str| {
        unhealthy(t) == 0
            && t.contains(
                "gitfleet_rollout_phase{rollout=\"api-gateway\",environment=\"staging\",phase=\"complete\"} 1",
            )
            && t.contains(
                "gitfleet_rollout_phase{rollout=\"api-gateway\",environment=\"prod\",phase=\"awaiting-approval\"} 1",
            )
    };
    let first = scrape_until(&base, "staging complete and prod awaiting approval", done);
    std::thread::sleep(Duration::from_secs(2));
    let second = scrape_until(&base, "the same a little later", done);
    alerts::check(&first, &second, &["GitfleetRolloutAwaitingApproval"]).unwrap();
    up.stop();
}
