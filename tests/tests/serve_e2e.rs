//! The status pages, JSON, metrics and live updates of a running fleet
//! (`gitfleet up --listen`, simulated agents reporting), then
//! `gitfleet serve` on the same fleet taking GitHub webhook deliveries.
//! Real processes, real HTTP on loopback.

#![allow(clippy::unwrap_used)] // test helpers fail the test by panicking

use std::io::Read as _;
use std::time::{Duration, Instant};

use gitfleet_schemas::state::Phase;
use gitfleet_schemas::view::FleetStatus;
use gitfleet_tests::fake_github::signature as sign;
use gitfleet_tests::{ok_passes, quiet_passes, Spawned};

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

fn get(url: &str) -> (u16, String) {
    let r = client().get(url).send().unwrap();
    (r.status().as_u16(), r.text().unwrap())
}

/// Poll `what` until it gives a value, for at most two minutes.
fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn status(base: &str) -> FleetStatus {
    let (code, body) = get(&format!("{base}/api/status"));
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

#[test]
fn the_status_pages_follow_a_rollout_and_serve_takes_signed_webhooks() {
    let cwd = tempfile::tempdir().unwrap();
    let up = Spawned::up(cwd.path(), "up", &["--listen", "127.0.0.1:0"]);
    let base = up.printed_url("Status pages: ");
    eventually("/readyz", || {
        (get(&format!("{base}/readyz")).0 == 200).then_some(())
    });
    assert_eq!(get(&format!("{base}/healthz")), (200, "ok\n".to_owned()));

    // The rollout advances while we watch: dev's api-gateway goes from
    // not all nodes on target to all of them, and complete.
    let done = eventually("api-gateway complete in dev", || {
        let v = status(&base);
        let dev = v.environments.iter().find(|e| e.name == "dev")?;
        let r = dev.rollouts.iter().find(|r| r.name == "api-gateway")?;
        (r.phase == Phase::Complete && r.on_target == r.nodes).then_some(v)
    });
    assert_eq!(done.fleet, "acme-edge");
    assert_eq!(done.totals.nodes, 11);

    let (code, page) = get(&format!("{base}/"));
    assert_eq!(code, 200);
    assert!(page.contains("data-count=\"nodes\"><b>11</b>"), "{page}");
    assert!(
        page.contains("data-rollout=\"api-gateway\" data-env=\"dev\""),
        "{page}"
    );
    assert!(page.contains("new EventSource('/events')"), "{page}");
    // The fragment the live update swaps in is the page's body alone.
    let (_, fragment) = get(&format!("{base}/?fragment=1"));
    assert!(!fragment.contains("<html"), "{fragment}");
    assert!(fragment.contains("data-count=\"nodes\""), "{fragment}");

    let (_, prod) = get(&format!("{base}/nodes?env=prod"));
    assert!(prod.contains("<p>6 of 11 nodes.</p>"), "{prod}");
    let (_, edges) = get(&format!("{base}/nodes?label=role%3Dedge"));
    assert!(!edges.contains("data-node=\"api-fra-1\""), "{edges}");
    assert!(edges.contains("data-node=\"edge-fra-1\""), "{edges}");
    let (code, node) = get(&format!("{base}/nodes/edge-dev-fra-1"));
    assert_eq!(code, 200);
    assert!(node.contains("<h2>edge-dev-fra-1</h2>"), "{node}");
    assert!(node.contains("<h3>System</h3>"), "{node}");
    assert!(
        node.contains("<th>Before it</th>"),
        "bundle history: {node}"
    );
    // A backbone member's page lists its WireGuard peers once the mesh
    // bundle is active there (the simulated interface peers with every
    // other member).
    let peers = eventually("edge-dev-fra-1's WireGuard peers", || {
        let (_, page) = get(&format!("{base}/nodes/edge-dev-fra-1"));
        (page.matches("<tr class=\"peer\">").count() >= 2).then_some(page)
    });
    assert!(peers.contains("<table id=peers>"), "{peers}");
    assert!(peers.contains(" ago</td>"), "handshake age: {peers}");
    // Peers that are fleet nodes are named by their node id.
    assert!(
        peers.contains("<a href=\"/nodes/edge-"),
        "peer names: {peers}"
    );
    let (code, _) = get(&format!("{base}/nodes/no-such-node"));
    assert_eq!(code, 404);
    // The mesh page: every member's links, by node id.
    let (code, meshes) = get(&format!("{base}/meshes"));
    assert_eq!(code, 200);
    assert!(
        meshes.contains("<a href=\"/meshes/backbone\">backbone</a>"),
        "{meshes}"
    );
    let (code, mesh) = get(&format!("{base}/meshes/backbone"));
    assert_eq!(code, 200);
    assert!(mesh.contains("<h2>Mesh backbone</h2>"), "{mesh}");
    assert!(
        mesh.contains("<h3><a href=\"/nodes/edge-dev-fra-1\">edge-dev-fra-1</a></h3>"),
        "{mesh}"
    );
    assert!(mesh.contains("<table id=peers-edge-dev-fra-1>"), "{mesh}");
    let (code, _) = get(&format!("{base}/meshes/no-such-mesh"));
    assert_eq!(code, 404);
    let (_, rollouts) = get(&format!("{base}/rollouts"));
    assert!(
        rollouts.contains("gitfleet rollout pause edge"),
        "{rollouts}"
    );
    // A rollout's page: where it stands, a chart per environment from the
    // state branch's history (server-rendered SVG), and its events.
    assert!(
        rollouts.contains("<a href=\"/rollouts/api-gateway\">api-gateway</a>"),
        "{rollouts}"
    );
    let (code, gateway) = get(&format!("{base}/rollouts/api-gateway"));
    assert_eq!(code, 200);
    assert!(gateway.contains("<h2>api-gateway</h2>"), "{gateway}");
    assert!(
        gateway.contains("<svg class=chart") && gateway.contains("data-env=\"dev\""),
        "{gateway}"
    );
    assert!(gateway.contains("<path class=admitted d=\"M"), "{gateway}");
    assert!(gateway.contains("<line class=\"complete\""), "{gateway}");
    for kind in ["rollout-started", "rollout-completed"] {
        assert!(
            gateway.contains(&format!("<tr data-kind=\"{kind}\">")),
            "{kind}: {gateway}"
        );
    }
    let (code, _) = get(&format!("{base}/rollouts/no-such-rollout"));
    assert_eq!(code, 404);
    // A node's page: its signed events from the store.
    let (_, node) = get(&format!("{base}/nodes/edge-dev-fra-1"));
    assert!(node.contains("<h3>Events</h3>"), "{node}");
    assert!(node.contains("<tr data-kind=\"activated\">"), "{node}");

    // Bundle pages: read from the store and verified before shown.
    let target = |name: &str| {
        let dev = done.environments.iter().find(|e| e.name == "dev").unwrap();
        let r = dev.rollouts.iter().find(|r| r.name == name).unwrap();
        r.target.strip_prefix("sha256:").unwrap().to_owned()
    };
    let (gateway, edge) = (target("api-gateway"), target("edge"));
    let (code, list) = get(&format!("{base}/bundles"));
    assert_eq!(code, 200, "{list}");
    assert!(
        list.contains(&format!("href=\"/bundles/{gateway}\"")),
        "{list}"
    );
    let (code, bundle) = get(&format!("{base}/bundles/{gateway}"));
    assert_eq!(code, 200, "{bundle}");
    assert!(bundle.contains("Verified against its digest"), "{bundle}");
    assert!(bundle.contains("<table id=sbom>"), "{bundle}");
    assert!(
        bundle.contains("<code>files/sentinel.kdl</code>"),
        "{bundle}"
    );
    assert!(bundle.contains("listener "), "SBOM services: {bundle}");
    let (code, diff) = get(&format!("{base}/bundles/{gateway}/diff/{edge}"));
    assert_eq!(code, 200, "{diff}");
    assert!(diff.contains("<pre class=diff>"), "{diff}");
    assert!(diff.contains("<span class=add>"), "{diff}");
    assert_eq!(get(&format!("{base}/bundles/not-a-digest")).0, 400);
    assert_eq!(get(&format!("{base}/bundles/{}", "0".repeat(64))).0, 404);
    // Bytes in the store that do not match their name are refused.
    let forged = "f".repeat(64);
    let dir = cwd.path().join("demo/store/bundles/sha256");
    std::fs::write(dir.join(format!("{forged}.tar.zst")), b"not a bundle").unwrap();
    let (code, refused) = get(&format!("{base}/bundles/{forged}"));
    assert_eq!(code, 502, "{refused}");
    assert!(refused.contains("does not verify"), "{refused}");

    let (_, metrics) = get(&format!("{base}/metrics"));
    assert!(
        metrics.contains("gitfleet_rollout_phase{rollout=\"api-gateway\",environment=\"dev\",phase=\"complete\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("gitfleet_nodes{environment=\"dev\",health=\"healthy\"} ")),
        "{metrics}"
    );
    assert!(!metrics.contains("edge-fra-1"), "node ids are not labels");
    // Latencies of the IO a pass waits on, and of its phases, are counted.
    let count = |series: &str| -> u64 {
        let line = metrics
            .lines()
            .find(|l| l.starts_with(series))
            .unwrap_or_else(|| panic!("no {series} in:\n{metrics}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert!(count("gitfleet_git_seconds_count{op=\"fetch\"}") > 0);
    assert!(count("gitfleet_git_seconds_count{op=\"push\"}") > 0);
    assert!(count("gitfleet_store_request_seconds_count{op=\"list\"}") > 0);
    assert!(count("gitfleet_store_request_seconds_count{op=\"get\"}") > 0);
    assert!(count("gitfleet_reconcile_phase_seconds_count{phase=\"observe\"}") > 0);
    assert!(count("gitfleet_reconcile_phase_seconds_count{phase=\"publish\"}") > 0);
    count("gitfleet_rollout_step_seconds{rollout=\"api-gateway\",environment=\"dev\"}");
    let mut families: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("# TYPE "))
        .collect();
    let declared = families.len();
    families.sort_unstable();
    families.dedup();
    assert_eq!(
        families.len(),
        declared,
        "a family declared twice:\n{metrics}"
    );

    // A pass is announced on the event stream.
    let mut events = client().get(format!("{base}/events")).send().unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 512];
    while !seen.contains("event: pass") {
        let n = events.read(&mut buf).unwrap();
        assert!(n > 0, "the event stream ended: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    drop(events);
    up.stop();

    // `gitfleet serve` on the same fleet, with a webhook secret.
    std::fs::write(cwd.path().join("webhook.secret"), "s3cret\n").unwrap();
    let serve = Spawned::gitfleet(
        cwd.path(),
        "serve",
        &[
            "serve",
            "--repo",
            "demo/fleet.git",
            "--online-key",
            "demo/keys/online.key",
            "--holder",
            "gitfleet-up",
            "--cache",
            "serve-mirror",
            "--interval",
            "10m",
            "--listen",
            "127.0.0.1:0",
            "--webhook-secret-file",
            "webhook.secret",
        ],
    );
    let base = serve.printed_url("serving ");
    eventually("/readyz of serve", || {
        (get(&format!("{base}/readyz")).0 == 200).then_some(())
    });
    let passes = || ok_passes(&get(&format!("{base}/metrics")).1);
    // Quiet first: the passes its own state commits trigger are over, so
    // the next pass can only come from a webhook (the interval is 10 min).
    let before = quiet_passes(passes);
    let push =
        br#"{"ref":"refs/heads/main","after":"abc","repository":{"full_name":"acme/fleet"}}"#;
    let deliver = |delivery: &str, signature: &str| {
        let r = client()
            .post(format!("{base}/webhooks/github"))
            .header("X-GitHub-Event", "push")
            .header("X-GitHub-Delivery", delivery)
            .header("X-Hub-Signature-256", signature)
            .header("Content-Type", "application/json")
            .body(push.to_vec())
            .send()
            .unwrap();
        (r.status().as_u16(), r.text().unwrap())
    };
    let good = sign(b"s3cret", push);
    let (code, said) = deliver("d-1", &good);
    assert_eq!(code, 202, "{said}");
    assert_eq!(deliver("d-1", &good).0, 200, "a redelivery is handled once");
    let (code, said) = deliver("d-2", &sign(b"guess", push));
    assert_eq!(code, 401, "{said}");
    // The accepted delivery triggered a pass.
    eventually("a pass triggered by the webhook", || {
        (passes() > before).then_some(())
    });
    let (_, metrics) = get(&format!("{base}/metrics"));
    for (outcome, n) in [("accepted", 1), ("duplicate", 1), ("bad-signature", 1)] {
        assert!(
            metrics.contains(&format!(
                "gitfleet_webhook_deliveries_total{{outcome=\"{outcome}\"}} {n}\n"
            )),
            "{metrics}"
        );
    }
    // An open page's event stream does not hold the server up: it ends
    // when the server stops.
    let mut events = client().get(format!("{base}/events")).send().unwrap();
    serve.stop();
    let mut rest = Vec::new();
    let _ = events.read_to_end(&mut rest);
}
