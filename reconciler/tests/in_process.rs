//! The reconciler as a library, in one process: a pass over a real git
//! repository (file://) and the in-memory object store, and `serve`'s
//! handlers driven with `tower::ServiceExt::oneshot`, no socket opened.

#![allow(clippy::unwrap_used)] // test helpers fail the test by panicking

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use chrono::Utc;
use ed25519_dalek::SigningKey;
use gitfleet_agent::sim::sim_key;
use gitfleet_io::store::{Fetch, Store};
use gitfleet_reconciler::git::{Mirror, Remote};
use gitfleet_reconciler::pass::{Done, Mode, Outcome, Reconciler};
use gitfleet_reconciler::web::{router, AppState, Io};
use gitfleet_schemas::keys;
use gitfleet_schemas::status::StatusReport;
use gitfleet_schemas::trust::Document as _;
use gitfleet_schemas::trust::{ChannelManifest, PublicKey};
use gitfleet_schemas::verify::verify_signed_by;
use gitfleet_schemas::view::FleetStatus;
use http_body_util::BodyExt as _;
use tower::ServiceExt as _;

fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.invalid")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.invalid")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn copy(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

/// The example fleet in a bare repository, and a reconciler over it and a
/// fresh in-memory store.
fn reconciler(dir: &Path) -> Reconciler {
    reconciler_with(dir, |_| {})
}

/// [`reconciler`], with `edit` applied to the working copy before it is
/// committed.
fn reconciler_with(dir: &Path, edit: impl FnOnce(&Path)) -> Reconciler {
    let work = dir.join("work");
    copy(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/fleet-repo"),
        &work,
    );
    edit(&work);
    git(&work, &["init", "-q", "-b", "main"]);
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "-qm", "fleet"]);
    git(dir, &["clone", "-q", "--bare", "work", "origin.git"]);
    let remote = Remote::new(format!("file://{}", dir.join("origin.git").display()));
    let mirror = Mirror::open_or_clone(remote, &dir.join("mirror")).unwrap();
    let store = Store::open("memory://").unwrap();
    Reconciler::new(
        mirror,
        store,
        SigningKey::from_bytes(&[7; 32]),
        "test".to_owned(),
    )
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn a_pass_over_the_memory_store_uploads_commits_and_publishes_what_it_planned() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = reconciler(dir.path());
    let rt = runtime();

    // A dry run decides the same writes and makes none of them.
    let dry = rt.block_on(r.pass(Utc::now(), Mode::DryRun)).unwrap();
    assert_eq!(dry.done, Done::DryRun);
    assert!(!dry.plan.uploads.is_empty() && dry.plan.state.is_some());
    let listed = rt.block_on(r.observer.store.list("")).unwrap();
    assert!(listed.is_empty(), "{listed:?}");

    let o = rt.block_on(r.pass(Utc::now(), Mode::Execute)).unwrap();
    let written = o.written().unwrap();
    assert_eq!(written.bundles_uploaded.len(), o.plan.uploads.len());
    assert!(written.state_commit.is_some());
    let online = PublicKey(SigningKey::from_bytes(&[7; 32]).verifying_key().to_bytes());
    for p in &o.plan.manifests {
        let Fetch::Found(obj) = rt
            .block_on(
                r.observer
                    .store
                    .get_if_changed(&keys::channel(&p.environment), None),
            )
            .unwrap()
        else {
            panic!("{} not published", p.environment);
        };
        let m = verify_signed_by::<ChannelManifest>(&obj.bytes, &online).unwrap();
        assert_eq!(m.serial, p.manifest.serial);
        for cr in &m.rollouts {
            let key = cr.bundle.object_key().unwrap();
            assert!(
                rt.block_on(r.observer.store.get(&key)).unwrap().is_some(),
                "{key}"
            );
        }
    }
    // Nothing new: the next pass writes nothing.
    let again = rt.block_on(r.pass(Utc::now(), Mode::Execute)).unwrap();
    assert!(
        again.plan.writes().iter().all(|w| matches!(
            w,
            gitfleet_policy::pass::Write::Status(_) | gitfleet_policy::pass::Write::Promote(..)
        )),
        "{}",
        again.plan
    );
}

/// The pages and endpoints of `serve`, after one pass.
struct Served {
    state: Arc<AppState>,
    _trigger: tokio::sync::mpsc::Receiver<()>,
}

impl Served {
    fn after(outcome: Option<&Outcome>, r: &mut Reconciler) -> Served {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let state = Arc::new(AppState::new(
            Some(b"hush".to_vec()),
            tx,
            chrono::Duration::minutes(3),
            Some(Io::of(r)),
        ));
        if let Some(o) = outcome {
            state.record(Ok(o), std::time::Duration::from_millis(5));
        }
        Served {
            state,
            _trigger: rx,
        }
    }

    fn get(&self, rt: &tokio::runtime::Runtime, uri: &str) -> (StatusCode, String) {
        self.send(rt, Request::get(uri).body(Body::empty()).unwrap())
    }

    fn send(&self, rt: &tokio::runtime::Runtime, req: Request<Body>) -> (StatusCode, String) {
        rt.block_on(async {
            let res = router(Arc::clone(&self.state)).oneshot(req).await.unwrap();
            let status = res.status();
            let body = res.into_body().collect().await.unwrap().to_bytes();
            (status, String::from_utf8_lossy(&body).into_owned())
        })
    }
}

#[test]
fn the_handlers_answer_before_and_after_a_pass() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = reconciler(dir.path());
    let rt = runtime();

    let before = Served::after(None, &mut r);
    assert_eq!(before.get(&rt, "/healthz").0, StatusCode::OK);
    assert_eq!(
        before.get(&rt, "/readyz").0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        before.get(&rt, "/api/status").0,
        StatusCode::SERVICE_UNAVAILABLE
    );

    let o = rt.block_on(r.pass(Utc::now(), Mode::Execute)).unwrap();
    let served = Served::after(Some(&o), &mut r);
    assert_eq!(served.get(&rt, "/readyz").0, StatusCode::OK);
    let (status, page) = served.get(&rt, "/");
    assert_eq!(status, StatusCode::OK);
    for name in ["api-gateway", "edge", "backbone"] {
        assert!(page.contains(name), "{name} missing:\n{page}");
    }
    assert!(page.contains("Rules"), "{page}");
    let (status, json) = served.get(&rt, "/api/status?env=dev");
    assert_eq!(status, StatusCode::OK);
    let view: FleetStatus = serde_json::from_str(&json).unwrap();
    assert_eq!(view.environments.len(), 1);
    assert_eq!(view.environments[0].name, "dev");
    assert_eq!(
        view.environments[0].rules.as_ref().unwrap().commit,
        o.plan.commit,
        "a new fleet's rules come from the first commit seen"
    );
    let (status, metrics) = served.get(&rt, "/metrics");
    assert_eq!(status, StatusCode::OK);
    assert!(
        metrics.contains("gitfleet_reconcile_passes_total{result=\"ok\"} 1"),
        "{metrics}"
    );
    let (status, page) = served.get(&rt, "/nodes/no-such-node");
    assert_eq!(status, StatusCode::NOT_FOUND, "{page}");

    // A webhook without a valid signature is refused, with why.
    let (status, body) = served.send(
        &rt,
        Request::post("/webhooks/github")
            .header("x-github-event", "ping")
            .header("x-github-delivery", "1")
            .header("x-hub-signature-256", "sha256=00")
            .body(Body::from("{}"))
            .unwrap(),
    );
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(body.contains("does not match"), "{body}");
}

/// Every node of the example fleet, with its environment, after its
/// node key was made its simulator key (so the test can sign its reports).
fn sim_keyed(work: &Path) -> Vec<(String, String)> {
    let mut nodes = Vec::new();
    for entry in std::fs::read_dir(work.join("nodes")).unwrap() {
        let path = entry.unwrap().path();
        let id = path.file_stem().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&path).unwrap();
        let key = PublicKey(sim_key(&id).verifying_key().to_bytes()).to_string();
        let mut env = String::new();
        let text: Vec<String> = text
            .lines()
            .map(|l| {
                if let Some(e) = l.strip_prefix("environment ") {
                    env = e.trim_matches('"').to_owned();
                }
                if l.starts_with("node-key ") {
                    format!("node-key \"{key}\"")
                } else {
                    l.to_owned()
                }
            })
            .collect();
        std::fs::write(&path, text.join("\n") + "\n").unwrap();
        nodes.push((id, env));
    }
    nodes
}

fn signed_report(node: &str, env: &str, note: &str) -> Vec<u8> {
    let report = StatusReport {
        fleet: "acme-edge".into(),
        node: node.into(),
        environment: env.into(),
        at: Utc::now(),
        channel_serial: None,
        channel_expires: None,
        rollouts: Default::default(),
        healthy: true,
        metrics: Default::default(),
        http_checks: Vec::new(),
        routes: Vec::new(),
        wireguard: None,
        monitored: Vec::new(),
        drift: Vec::new(),
        last_error: Some(note.into()),
        proxy: None,
    };
    let mut envelope = report.envelope();
    envelope.sign(&sim_key(node)).unwrap();
    envelope.to_json()
}

#[test]
fn an_idle_pass_reads_only_the_listing_not_the_reports_that_did_not_change() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = Vec::new();
    let mut r = reconciler_with(dir.path(), |work| nodes = sim_keyed(work));
    let rt = runtime();
    rt.block_on(r.pass(Utc::now(), Mode::Execute)).unwrap();
    // What an idle pass costs with no reports at all: the baseline.
    let cost = |r: &mut Reconciler| {
        let before = r.observer.store.counts();
        let o = rt.block_on(r.pass(Utc::now(), Mode::Execute)).unwrap();
        (
            r.observer.store.counts().since(&before),
            o.observed.reports.len(),
        )
    };
    let (baseline, seen) = cost(&mut r);
    assert_eq!(seen, 0);
    for (node, env) in &nodes {
        let key = keys::status(node);
        rt.block_on(
            r.observer
                .store
                .put(&key, signed_report(node, env, "first").into()),
        )
        .unwrap();
    }
    // The first pass after they report reads each report once...
    let (first, seen) = cost(&mut r);
    assert_eq!(seen, nodes.len());
    assert_eq!(first.get, baseline.get + nodes.len() as u64, "{first:?}");
    // ...an idle one reads none of them: the listing says they are the same.
    let (idle, seen) = cost(&mut r);
    assert_eq!(seen, nodes.len());
    // Requests, not bytes: the lease's timestamp varies in length.
    assert_eq!(idle.each(), baseline.each(), "{idle:?} vs {baseline:?}");
    // One node reports again: one more read.
    let (node, env) = &nodes[0];
    let key = keys::status(node);
    rt.block_on(
        r.observer
            .store
            .put(&key, signed_report(node, env, "second").into()),
    )
    .unwrap();
    let (one, seen) = cost(&mut r);
    assert_eq!(seen, nodes.len());
    assert_eq!(one.get, baseline.get + 1, "{one:?}");
}

/// [`reconciler_with`] for a fleet whose agents report over HTTP, every
/// node keyed for the test; with its nodes.
fn reporting_over_http(dir: &Path, rollouts: bool) -> (Reconciler, Vec<(String, String)>) {
    let mut nodes = Vec::new();
    let r = reconciler_with(dir, |work| {
        nodes = sim_keyed(work);
        if !rollouts {
            std::fs::remove_dir_all(work.join("rollouts")).unwrap();
        }
        let fleet = std::fs::read_to_string(work.join("fleet.kdl")).unwrap();
        let fleet = fleet.replacen(
            "defaults {",
            "defaults {\n    report-to \"http://127.0.0.1:8080\"",
            1,
        );
        std::fs::write(work.join("fleet.kdl"), fleet).unwrap();
    });
    (r, nodes)
}

fn post_report(
    served: &Served,
    rt: &tokio::runtime::Runtime,
    node: &str,
    body: Vec<u8>,
) -> StatusCode {
    served
        .send(
            rt,
            Request::post(format!("/v1/reports/{node}"))
                .header("content-type", "application/json")
                .body(Body::from(body))
                .unwrap(),
        )
        .0
}

#[test]
fn a_report_over_http_is_verified_taken_once_and_merged_without_a_store_request() {
    let dir = tempfile::tempdir().unwrap();
    let (mut r, nodes) = reporting_over_http(dir.path(), true);
    let rt = runtime();
    let (node, env) = nodes[0].clone();
    // The node's first report (a change) is in the store.
    rt.block_on(r.observer.store.put(
        &keys::status(&node),
        signed_report(&node, &env, "first").into(),
    ))
    .unwrap();
    let o = rt.block_on(r.pass(Utc::now(), Mode::Execute)).unwrap();
    let stored_at = o.observed.written[&node];
    let served = Served::after(Some(&o), &mut r);

    // Nobody's signature but the node's own is taken, for a node of the
    // fleet only; the same report twice is a replay.
    let (other, _) = &nodes[1];
    let forged = signed_report(other, &env, "forged");
    assert_eq!(
        post_report(&served, &rt, &node, forged),
        StatusCode::FORBIDDEN
    );
    let alive = signed_report(&node, &env, "alive");
    assert_eq!(
        post_report(&served, &rt, "no-such-node", alive.clone()),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        post_report(&served, &rt, &node, alive.clone()),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        post_report(&served, &rt, &node, alive),
        StatusCode::CONFLICT
    );
    let (_, metrics) = served.get(&rt, "/metrics");
    for line in [
        "gitfleet_reports_received_total{outcome=\"taken\"} 1",
        "gitfleet_reports_received_total{outcome=\"not-newer\"} 1",
        "gitfleet_reports_received_total{outcome=\"refused\"} 1",
        "gitfleet_reports_received_total{outcome=\"unknown-node\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} missing:\n{metrics}");
    }

    // The next pass shows the report taken over HTTP, heard just now, and
    // reads no status report from the store for it.
    let before = r.observer.store.counts();
    let o = rt.block_on(r.pass(Utc::now(), Mode::Execute)).unwrap();
    let cost = r.observer.store.counts().since(&before);
    let report = &o.observed.reports[&node];
    assert_eq!(report.last_error.as_deref(), Some("alive"));
    assert!(o.observed.written[&node] > stored_at);
    // Reads: the three manifests and the lease, no report; lists:
    // `status/` (rollouts are moving) and `liveness/`; puts: the lease and
    // the one liveness shard.
    assert_eq!((cost.get, cost.list), (4, 2), "{cost:?}");
    assert_eq!(cost.put + cost.put_conditional, 2, "{cost:?}");

    // Another replica over the same store hears of the node through the
    // shard: alive, though its store copy is older.
    let mirror = Mirror::open_or_clone(
        Remote::new(format!(
            "file://{}",
            dir.path().join("origin.git").display()
        )),
        &dir.path().join("mirror-2"),
    )
    .unwrap();
    let mut r2 = Reconciler::new(
        mirror,
        r.observer.store.clone(),
        SigningKey::from_bytes(&[7; 32]),
        "replica-2".to_owned(),
    );
    let o2 = rt.block_on(r2.pass(Utc::now(), Mode::DryRun)).unwrap();
    assert_eq!(
        o2.observed.reports[&node].last_error.as_deref(),
        Some("first"),
        "the other replica has only the store's copy of the report"
    );
    let heard = o2.observed.written[&node];
    assert!(
        heard > stored_at,
        "liveness through the shard: {heard} vs the store's write {stored_at}"
    );
}

#[test]
fn an_idle_fleet_reporting_over_http_lists_status_reports_once_a_minute_not_every_pass() {
    let dir = tempfile::tempdir().unwrap();
    let (mut r, nodes) = reporting_over_http(dir.path(), false);
    let rt = runtime();
    let (node, env) = nodes[0].clone();
    let put = |r: &Reconciler, note: &str| {
        rt.block_on(r.observer.store.put(
            &keys::status(&node),
            signed_report(&node, &env, note).into(),
        ))
        .unwrap();
    };
    put(&r, "first");
    let o = rt.block_on(r.pass(Utc::now(), Mode::Execute)).unwrap();
    assert_eq!(
        o.observed.reports[&node].last_error.as_deref(),
        Some("first")
    );
    // A change written to the store while nothing moves is read at the
    // next listing, up to a minute later: this pass lists only
    // `liveness/`.
    put(&r, "second");
    let before = r.observer.store.counts();
    let o = rt.block_on(r.pass(Utc::now(), Mode::Execute)).unwrap();
    let cost = r.observer.store.counts().since(&before);
    assert_eq!(cost.list, 1, "{cost:?}");
    assert_eq!(
        o.observed.reports[&node].last_error.as_deref(),
        Some("first")
    );
    // A push (new nodes, keys or a fleet name, maybe) lists at once.
    let work = dir.path().join("work");
    git(&work, &["commit", "-q", "--allow-empty", "-m", "moved"]);
    git(&work, &["push", "-q", "../origin.git", "main"]);
    let o = rt.block_on(r.pass(Utc::now(), Mode::Execute)).unwrap();
    assert_eq!(
        o.observed.reports[&node].last_error.as_deref(),
        Some("second")
    );
    // A fleet without `report-to` lists every pass, as before.
    let dir = tempfile::tempdir().unwrap();
    let mut plain = reconciler_with(dir.path(), |work| {
        sim_keyed(work);
        std::fs::remove_dir_all(work.join("rollouts")).unwrap();
    });
    rt.block_on(plain.pass(Utc::now(), Mode::Execute)).unwrap();
    let before = plain.observer.store.counts();
    rt.block_on(plain.pass(Utc::now(), Mode::Execute)).unwrap();
    assert_eq!(plain.observer.store.counts().since(&before).list, 1);
}

/// A receiver on 127.0.0.1 answering 204 to every POST, served on the
/// test's runtime (it answers while a pass or `finish` runs there): its
/// URL, and the bodies it got.
fn receiver(rt: &tokio::runtime::Runtime) -> (String, Arc<std::sync::Mutex<Vec<String>>>) {
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let got = Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = Arc::clone(&got);
    let app = axum::Router::new().fallback(axum::routing::post(move |body: String| {
        let keep = Arc::clone(&keep);
        async move {
            keep.lock().unwrap().push(body);
            StatusCode::NO_CONTENT
        }
    }));
    rt.spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, got)
}

/// The example fleet telling a Slack-compatible receiver at `url` of
/// everything.
fn told_at(dir: &Path, url: &str) -> Reconciler {
    reconciler_with(dir, |work| {
        let fleet = work.join("fleet.kdl");
        let mut text = std::fs::read_to_string(&fleet).unwrap();
        text.push_str(&format!(
            "notify \"chat\" {{\n    slack \"{url}/services/x\"\n}}\n"
        ));
        std::fs::write(&fleet, text).unwrap();
    })
}

/// `gitfleet state compact` squashing every commit the notifier had read
/// into a new root: nothing is told again.
#[test]
fn a_compacted_state_branch_is_not_told_again() {
    let rt = runtime();
    let (url, got) = receiver(&rt);
    let dir = tempfile::tempdir().unwrap();
    let mut r = told_at(dir.path(), &url);
    let pass = |r: &mut Reconciler| {
        rt.block_on(async {
            r.pass(Utc::now(), Mode::Execute).await.unwrap();
            r.notifier.finish(std::time::Duration::from_secs(5)).await;
        })
    };
    pass(&mut r);
    let told = got.lock().unwrap().len();
    assert!(told > 0, "the first pass's rollouts start");
    // A second commit, so that there is history to squash.
    let note =
        std::collections::BTreeMap::from([("notes.txt".to_owned(), Some(b"kept\n".to_vec()))]);
    r.observer
        .mirror
        .commit_state(
            &note,
            "a note",
            &gitfleet_reconciler::git::Author::default(),
        )
        .unwrap();
    pass(&mut r);
    let told = got.lock().unwrap().len();
    // Compacted by another process, the way `gitfleet state compact` does.
    let mut remote = Remote::new(format!(
        "file://{}",
        dir.path().join("origin.git").display()
    ));
    remote.state_branch = r.observer.mirror.state_branch().to_owned();
    let other = Mirror::open_or_clone(remote, &dir.path().join("compactor")).unwrap();
    other.fetch().unwrap();
    let cutoff = Utc::now().timestamp() + 60;
    let compaction = other
        .compact_state(cutoff, &gitfleet_reconciler::git::Author::default())
        .unwrap()
        .expect("two commits to squash");
    other
        .publish_compaction(&compaction, "audit/before")
        .unwrap();
    pass(&mut r);
    pass(&mut r);
    let after = got.lock().unwrap().clone();
    assert_eq!(after.len(), told, "{after:#?}");
}

/// What notifications cost in store requests, against the same fleet
/// without a receiver: a pass with news reads the outbox once and writes
/// it twice (before sending and after); an idle pass costs nothing more.
#[test]
fn notifications_cost_two_writes_when_something_happens_and_nothing_when_idle() {
    let rt = runtime();
    let (url, _) = receiver(&rt);
    let cost = |r: &mut Reconciler| {
        let before = r.observer.store.counts();
        rt.block_on(async {
            r.pass(Utc::now(), Mode::Execute).await.unwrap();
            r.notifier.finish(std::time::Duration::from_secs(5)).await;
        });
        r.observer.store.counts().since(&before)
    };
    let plain_dir = tempfile::tempdir().unwrap();
    let mut plain = reconciler(plain_dir.path());
    let told_dir = tempfile::tempdir().unwrap();
    let mut told = told_at(told_dir.path(), &url);
    let (first_plain, first_told) = (cost(&mut plain), cost(&mut told));
    assert_eq!(first_told.get, first_plain.get + 1, "{first_told:?}");
    assert_eq!(
        first_told.put_conditional,
        first_plain.put_conditional + 2,
        "{first_told:?}"
    );
    assert_eq!(first_told.list, first_plain.list);
    let totals = &told.notifier.totals;
    assert!(totals.delivered.load(std::sync::atomic::Ordering::Relaxed) > 0);
    assert_eq!(totals.waiting.load(std::sync::atomic::Ordering::Relaxed), 0);
    // Idle: nothing new, nothing waiting: no request at all.
    let (idle_plain, idle_told) = (cost(&mut plain), cost(&mut told));
    assert_eq!(
        idle_told.each(),
        idle_plain.each(),
        "{idle_told:?} vs {idle_plain:?}"
    );
}
