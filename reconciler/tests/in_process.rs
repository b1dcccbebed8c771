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
use gitfleet_io::store::{Fetch, Store};
use gitfleet_reconciler::git::{Mirror, Remote};
use gitfleet_reconciler::pass::{Done, Mode, Outcome, Reconciler};
use gitfleet_reconciler::web::{router, AppState, Io};
use gitfleet_schemas::keys;
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
    let work = dir.join("work");
    copy(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/fleet-repo"),
        &work,
    );
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
    fn after(outcome: Option<&Outcome>, r: &Reconciler) -> Served {
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

    let before = Served::after(None, &r);
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
    let served = Served::after(Some(&o), &r);
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
