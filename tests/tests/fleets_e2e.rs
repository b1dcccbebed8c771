//! Several fleets in one `gitfleet serve` (`--fleets`), with real bare
//! repos: fleet `a` is the example fleet on a file store; fleet `b` has a
//! broken fleet.kdl and an S3 store that never answers (a listener that
//! accepts nothing). `a` rolls out as if alone, every series of /metrics
//! carries its fleet, and the pages switch between the two.

#![allow(clippy::unwrap_used)] // test helpers fail the test by panicking

use std::time::{Duration, Instant};

use gitfleet_schemas::state::{Phase, RolloutState};
use gitfleet_tests::{commit_fleet, example_fleet_without_windows, state_file, Spawned};

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

fn get(url: &str, cookie: Option<&str>) -> (u16, String) {
    let mut req = client().get(url);
    if let Some(c) = cookie {
        req = req.header("cookie", c);
    }
    let r = req.send().unwrap();
    (r.status().as_u16(), r.text().unwrap())
}

/// The value of the series `name{labels}` in a /metrics text.
fn series(metrics: &str, name_and_labels: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.trim().parse().ok())
}

#[test]
fn a_broken_unreachable_fleet_never_holds_up_another_in_the_same_server() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    // Fleet a: the example, without change windows.
    example_fleet_without_windows(&root.join("a-work"));
    commit_fleet(root, &root.join("a-work"), "a.git");
    gitfleet_tests::fleet_keys(root, "acme-edge");
    // Fleet b: a broken fleet.kdl, and a store that never answers.
    gitfleet_tests::broken_fleet(root, "b.git", "b-online.key");
    let (blackhole, s3_env) = gitfleet_tests::silent_s3();
    std::fs::write(
        root.join("fleets.kdl"),
        format!(
            "version 1\n\
fleet \"a\" {{\n    repo \"a.git\"\n    store \"file://{}\"\n    online-key \"online.key\"\n}}\n\
fleet \"b\" {{\n    repo \"b.git\"\n    store \"s3://fleet-b/edge\"\n    online-key \"b-online.key\"\n}}\n",
            root.join("a-store").display()
        ),
    )
    .unwrap();
    let serve = Spawned::gitfleet_with(
        root,
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

    // a rolls out: its first environment moves, its passes go on.
    let started = Instant::now();
    let bare_a = root.join("a.git");
    while !state_file::<RolloutState>(&bare_a, "rollouts/edge.json")
        .and_then(|s| s.environments.get("dev").map(|e| e.phase))
        .is_some_and(|p| p == Phase::Progressing)
    {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "fleet a never progressed:\n{}",
            serve.output()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let ok_a = |m: &str| {
        series(
            m,
            "gitfleet_reconcile_passes_total{fleet=\"a\",result=\"ok\"}",
        )
    };
    let (_, first) = get(&format!("{base}/metrics"), None);
    let before = ok_a(&first).unwrap_or_else(|| panic!("no fleet a series:\n{first}"));
    std::thread::sleep(Duration::from_secs(3));
    let (code, metrics) = get(&format!("{base}/metrics"), None);
    assert_eq!(code, 200);
    let after = ok_a(&metrics).unwrap();
    assert!(
        after > before,
        "a kept passing while b is stuck: {before} -> {after}"
    );
    // b never had a good pass; its series are there, labelled.
    assert_eq!(
        series(
            &metrics,
            "gitfleet_reconcile_passes_total{fleet=\"b\",result=\"ok\"}"
        ),
        Some(0.0),
        "{metrics}"
    );
    assert_eq!(
        metrics
            .matches("# TYPE gitfleet_reconcile_passes_total ")
            .count(),
        1,
        "one family, both fleets: {metrics}"
    );

    // Each fleet's pages under /fleets/<name>/; `/` is the one picked.
    let (code, page) = get(&format!("{base}/fleets/a/rollouts/edge"), None);
    assert_eq!(code, 200, "{page}");
    assert!(page.contains("data-rollout=\"edge\""), "{page}");
    assert!(page.contains("/select-fleet/b"), "the switcher: {page}");
    let (code, _) = get(&format!("{base}/fleets/b/"), None);
    assert_eq!(code, 303, "a fleet's own root picks it");
    let (code, list) = get(&format!("{base}/fleets"), None);
    assert_eq!(code, 200);
    assert!(
        list.contains("data-fleet=\"a\"") && list.contains("data-fleet=\"b\""),
        "{list}"
    );
    let (code, _) = get(&format!("{base}/"), Some("gitfleet_fleet=a"));
    assert_eq!(code, 200, "a's overview by default or by choice");
    let picked = client()
        .get(format!("{base}/select-fleet/b"))
        .send()
        .unwrap();
    assert_eq!(picked.status().as_u16(), 303);
    let cookie = picked.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(cookie.starts_with("gitfleet_fleet=b;"), "{cookie}");
    let (code, body) = get(&format!("{base}/"), Some("gitfleet_fleet=b"));
    assert_eq!(code, 503, "b has read nothing yet: {body}");
    drop(blackhole);
    serve.stop();
}
