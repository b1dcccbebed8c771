//! The HTTP side of `gitfleet serve` (and `gitfleet up --listen`): status
//! pages with live updates, JSON, Prometheus metrics, health probes, and
//! GitHub webhooks taken as triggers for the next pass.
//!
//! Everything shown comes from the last pass's observation: the fleet
//! repo, the state branch and the verified status reports. The server
//! writes nothing; the pages are read-only.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::Context as _;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use chrono::{DateTime, Utc};
use gitfleet_io::metrics::{family, label, GitLatency, Histogram};
use gitfleet_schemas::events::NodeEvent;
use gitfleet_schemas::state::{RolloutState, RulesState};
use gitfleet_schemas::view::{FleetStatus, Health, RolloutView};

pub mod actions;
pub mod auth;
pub mod bundle_page;
mod chart;
pub mod fleets;
pub mod html;
pub mod page;
pub mod session;
pub mod tls;

use crate::github::webhook::{Outcome, Webhooks};
use crate::pass::live::{LiveReports, Refused};
use crate::pass::observe::Observed;
use crate::pass::{self as reconcile};
use bundle_page::Bundles;
use page::{NodeFilter, PassLine};

/// The last pass, as the server shows it.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Passes so far: the SSE event id.
    pub passes: u64,
    pub at: Option<DateTime<Utc>>,
    pub observed: Option<Observed>,
    /// The rollout state the pass planned (what it committed).
    pub state: BTreeMap<String, RolloutState>,
    /// The rules in force the pass decided (what it committed).
    pub rules: Option<RulesState>,
    pub error: Option<String>,
    pub follower_of: Option<String>,
    pub pass_seconds: f64,
}

impl Snapshot {
    /// Fold one pass's result in.
    pub fn record(
        &mut self,
        result: Result<&reconcile::Outcome, &reconcile::ReconcileError>,
        at: DateTime<Utc>,
        seconds: f64,
    ) {
        self.passes += 1;
        self.at = Some(at);
        self.pass_seconds = seconds;
        match result {
            Ok(o) => {
                let mut observed = o.observed.clone();
                if o.follower_of().is_some() {
                    // Nothing was written: show what the leader committed,
                    // not what this replica would have.
                    match observed.state() {
                        Ok(state) => self.state = state,
                        Err(e) => self.error = Some(gitfleet_io::error_chain(&e)),
                    }
                    match crate::pass::rules::recorded(&observed.state_files) {
                        Ok(rules) => self.rules = rules,
                        Err(e) => self.error = Some(gitfleet_io::error_chain(&e)),
                    }
                } else {
                    // What this pass committed, and the commit it made.
                    self.state = o.plan.rollouts.state();
                    self.rules = Some(o.plan.rules.state.clone());
                    let committed = o.written().and_then(|w| w.state_commit.as_deref());
                    if let Some(c) = committed.and_then(|c| c.parse().ok()) {
                        observed.state_commit = Some(c);
                    }
                    self.error = None;
                }
                self.observed = Some(observed);
                self.follower_of = o.follower_of().map(str::to_owned);
            }
            Err(e) => self.error = Some(gitfleet_io::error_chain(e)),
        }
    }
}

/// Counters that live as long as the server.
#[derive(Debug, Default)]
pub struct Counters {
    passes_ok: AtomicU64,
    passes_failed: AtomicU64,
    webhooks: [AtomicU64; Outcome::ALL.len()],
    /// Per REPORT_OUTCOMES.
    reports: [AtomicU64; REPORT_OUTCOMES.len()],
    /// Per reconcile::PHASES.
    phases: [Histogram; reconcile::PHASES.len()],
}

/// The IO the reconciler waits on, for the bundle pages and the latency
/// metrics.
#[derive(Clone, Debug)]
pub struct Io {
    pub store: gitfleet_io::store::Store,
    pub git: Arc<GitLatency>,
    /// Where reports taken over HTTP go; the passes read them from there.
    pub live: Arc<LiveReports>,
    /// What the notifier sent.
    pub notified: Arc<crate::notify::NotifyTotals>,
    /// The rollouts' history, when the reconciler keeps it.
    pub timeline: Option<tokio::sync::watch::Receiver<Arc<crate::pass::timeline::Timeline>>>,
}

impl Io {
    /// The reconciler's IO, and from now on its rollout history.
    pub fn of(r: &mut reconcile::Reconciler) -> Io {
        let timeline = r.keep_timeline();
        Io {
            store: r.observer.store.clone(),
            git: r.observer.mirror.latency(),
            live: Arc::clone(&r.observer.live),
            notified: Arc::clone(&r.notifier.totals),
            timeline: Some(timeline),
        }
    }
}

/// What became of a report posted to `/v1/reports/<node>`: a bounded
/// metric label each.
const REPORT_OUTCOMES: [&str; 6] = [
    "taken",
    "not-newer",
    "skewed",
    "refused",
    "unknown-node",
    "not-ready",
];

/// The largest status report taken over HTTP.
const MAX_REPORT_BYTES: usize = 1 << 20;

/// What the handlers share.
#[derive(Debug)]
pub struct AppState {
    pub snapshot: tokio::sync::watch::Sender<Snapshot>,
    pub webhooks: Webhooks,
    pub trigger: tokio::sync::mpsc::Sender<()>,
    pub counters: Counters,
    pub stale_after: chrono::Duration,
    /// Bundles for the bundle pages, read from the store and verified.
    pub bundles: Bundles,
    /// The fleet's IO, once it is open.
    pub io: std::sync::OnceLock<Io>,
    /// Turns true once: the server is stopping.
    pub shutdown: tokio::sync::watch::Sender<bool>,
    /// When this process started serving (a stall before the first pass
    /// ends is counted from here).
    pub started: DateTime<Utc>,
    /// Node event objects read for the node pages, by key: their etag and
    /// events, so a page shown again costs a conditional GET.
    node_events: std::sync::Mutex<HashMap<String, (gitfleet_io::store::ETag, Vec<NodeEvent>)>>,
    /// Sign-in on the pages, when set up; without it they are read-only.
    pub sign_in: Option<Arc<auth::SignIn>>,
    /// What the buttons commit through (with sign-in).
    pub actions: Option<actions::Actions>,
    /// This fleet's name among several (`serve --fleets`): forms carry it,
    /// so a page of one fleet never acts on another.
    pub name: Option<String>,
}

/// The most node event objects the node pages keep.
const NODE_EVENTS_KEPT: usize = 4096;

impl AppState {
    pub fn new(
        webhook_secret: Option<Vec<u8>>,
        trigger: tokio::sync::mpsc::Sender<()>,
        stale_after: chrono::Duration,
        io: Option<Io>,
    ) -> AppState {
        AppState {
            snapshot: tokio::sync::watch::Sender::new(Snapshot::default()),
            webhooks: Webhooks::new(webhook_secret),
            trigger,
            counters: Counters::default(),
            stale_after,
            bundles: Bundles::new(io.as_ref().map(|io| io.store.clone())),
            io: {
                let cell = std::sync::OnceLock::new();
                if let Some(io) = io {
                    let _ = cell.set(io);
                }
                cell
            },
            shutdown: tokio::sync::watch::Sender::new(false),
            started: Utc::now(),
            node_events: Default::default(),
            sign_in: None,
            actions: None,
            name: None,
        }
    }

    /// The fleet's IO, once it is open (a fleet that could not be opened
    /// at start is opened by its own thread later).
    pub fn set_io(&self, io: Io) {
        self.bundles.set_store(io.store.clone());
        let _ = self.io.set(io);
    }

    /// A pass that could not run because the fleet could not be opened.
    pub fn open_failed(&self, error: String) {
        self.counters.passes_failed.fetch_add(1, Ordering::Relaxed);
        self.snapshot.send_modify(|s| {
            s.passes += 1;
            s.at = Some(Utc::now());
            s.error = Some(error);
        });
    }

    /// fleet.kdl as the last pass read it: whom the roles name.
    pub fn fleet_file(&self) -> Option<gitfleet_schemas::FleetFile> {
        let snap = self.snapshot.borrow();
        let observed = snap.observed.as_ref()?;
        observed
            .checked
            .checked
            .model
            .fleet
            .as_ref()
            .map(|f| f.doc.clone())
    }

    /// `node`'s events of yesterday and today (UTC), verified with its key
    /// in the repo; `None` without a store to read.
    pub async fn node_events(
        &self,
        fleet: &str,
        node: &str,
        now: DateTime<Utc>,
    ) -> Option<Result<Vec<NodeEvent>, String>> {
        let io = self.io.get()?;
        let key = {
            let snap = self.snapshot.borrow();
            let observed = snap.observed.as_ref()?;
            observed.checked.node_keys.get(node).cloned()
        };
        let Some(key) = key else {
            return Some(Err("no node key in the repo".to_owned()));
        };
        let today = now.date_naive();
        let days = [today.pred_opt().unwrap_or(today), today];
        let mut out = Vec::new();
        for day in days {
            let object = gitfleet_schemas::keys::events(day, node);
            let held = self.held_events(&object);
            let fetched = io
                .store
                .get_if_changed(&object, held.as_ref().map(|(etag, _)| etag))
                .await;
            match fetched {
                Ok(gitfleet_io::store::Fetch::Found(o)) => {
                    match gitfleet_schemas::verify::verify_node_events(&o.bytes, fleet, node, &key)
                    {
                        Ok(events) if events.day == day => {
                            let events = events.into_inner().events;
                            out.extend(events.iter().cloned());
                            let mut cache =
                                self.node_events.lock().unwrap_or_else(|p| p.into_inner());
                            if cache.len() >= NODE_EVENTS_KEPT {
                                cache.clear();
                            }
                            cache.insert(object, (o.etag, events));
                        }
                        Ok(_) => return Some(Err(format!("{object} holds another day"))),
                        Err(e) => return Some(Err(format!("{object}: {e}"))),
                    }
                }
                Ok(gitfleet_io::store::Fetch::NotModified) => {
                    out.extend(held.map(|(_, events)| events).unwrap_or_default());
                }
                Ok(gitfleet_io::store::Fetch::Missing) => {}
                Err(e) => return Some(Err(gitfleet_io::error_chain(&e))),
            }
        }
        Some(Ok(out))
    }

    fn held_events(&self, object: &str) -> Option<(gitfleet_io::store::ETag, Vec<NodeEvent>)> {
        let cache = self.node_events.lock().unwrap_or_else(|p| p.into_inner());
        cache.get(object).cloned()
    }

    /// Fold one reconcile pass in: the pages and metrics show it next.
    pub fn record(
        &self,
        result: Result<&reconcile::Outcome, &reconcile::ReconcileError>,
        took: std::time::Duration,
    ) {
        let counter = match result {
            Ok(_) => &self.counters.passes_ok,
            Err(_) => &self.counters.passes_failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if let Ok(o) = result {
            for (phase, took) in &o.phases {
                if let Some(i) = reconcile::PHASES.iter().position(|p| p == phase) {
                    self.counters.phases[i].observe(*took);
                }
            }
        }
        self.snapshot
            .send_modify(|s| s.record(result, Utc::now(), took.as_secs_f64()));
        // The teams this fleet's roles name, for every sign-in.
        if let (Some(sign_in), Some(f)) = (&self.sign_in, self.fleet_file()) {
            sign_in.note_teams(&f);
        }
    }

    fn view(&self, environment: Option<&str>) -> Option<(FleetStatus, PassLine)> {
        let snap = self.snapshot.borrow();
        let now = Utc::now();
        let pass = PassLine {
            seconds_ago: snap.at.map(|at| (now - at).num_seconds()),
            error: snap.error.clone(),
            follower_of: snap.follower_of.clone(),
        };
        let observed = snap.observed.as_ref()?;
        Some((
            observed.view(
                &snap.state,
                snap.rules.as_ref(),
                now,
                self.stale_after,
                environment,
            ),
            pass,
        ))
    }
}

/// The routes, over `state`.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(overview))
        .route("/nodes", get(nodes))
        .route("/nodes/{id}", get(node))
        .route("/rollouts", get(rollouts))
        .route("/rollouts/{name}", get(rollout))
        .route("/rollouts/{name}/{action}", post(actions::act))
        .route("/auth/login", get(auth::login))
        .route("/auth/callback", get(auth::callback))
        .route("/auth/logout", post(auth::logout))
        .route("/meshes", get(meshes))
        .route("/meshes/{name}", get(mesh))
        .route("/bundles", get(bundles))
        .route("/bundles/{digest}", get(bundle))
        .route("/bundles/{a}/diff/{b}", get(bundle_diff))
        .route("/api/status", get(api_status))
        .route("/events", get(events))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/webhooks/github", post(github))
        .route(
            "/v1/reports/{node}",
            post(take_report).layer(axum::extract::DefaultBodyLimit::max(MAX_REPORT_BYTES)),
        )
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            auth::gate,
        ))
        .with_state(state)
}

#[derive(Debug, Default, serde::Deserialize)]
struct PageQuery {
    fragment: Option<String>,
    env: Option<String>,
}

fn not_ready() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        "no reconcile pass has read the fleet yet; try again shortly\n",
    )
        .into_response()
}

/// 404: no `what` named `name` in the fleet repo.
fn not_found(fleet: &str, what: &str, name: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        Html(page::layout(
            "Not found",
            fleet,
            &format!("<p>No {what} {} in the fleet repo.</p>", html::esc(name)),
        )),
    )
        .into_response()
}

/// A page, or only its body when the live-update script asks.
fn respond(fragment: bool, title: &str, fleet: &str, body: String) -> Response {
    if fragment {
        Html(body).into_response()
    } else {
        Html(page::layout(title, fleet, &body)).into_response()
    }
}

async fn overview(State(s): State<Arc<AppState>>, Query(q): Query<PageQuery>) -> Response {
    let Some((v, pass)) = s.view(None) else {
        return not_ready();
    };
    respond(
        q.fragment.is_some(),
        "Overview",
        &v.fleet,
        page::overview(&v, &pass),
    )
}

async fn nodes(
    State(s): State<Arc<AppState>>,
    Query(q): Query<PageQuery>,
    Query(filter): Query<NodeFilter>,
) -> Response {
    let Some((v, _)) = s.view(None) else {
        return not_ready();
    };
    respond(
        q.fragment.is_some(),
        "Nodes",
        &v.fleet,
        page::nodes(&v, &filter),
    )
}

async fn node(
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
    Query(q): Query<PageQuery>,
) -> Response {
    let Some((v, _)) = s.view(None) else {
        return not_ready();
    };
    let Some(n) = v.nodes.iter().find(|n| n.id == id) else {
        return not_found(&v.fleet, "node", &id);
    };
    let mut body = page::node(&v, n);
    if let Some(events) = s.node_events(&v.fleet, &n.id, v.at).await {
        body.push_str(&page::node_events(&events));
    }
    respond(q.fragment.is_some(), &n.id, &v.fleet, body)
}

async fn rollouts(State(s): State<Arc<AppState>>, Query(q): Query<PageQuery>) -> Response {
    let Some((v, _)) = s.view(None) else {
        return not_ready();
    };
    respond(
        q.fragment.is_some(),
        "Rollouts",
        &v.fleet,
        page::rollouts(&v),
    )
}

async fn rollout(
    State(s): State<Arc<AppState>>,
    Path(name): Path<String>,
    Query(q): Query<PageQuery>,
    viewer: Option<axum::Extension<auth::Viewer>>,
    headers: HeaderMap,
) -> Response {
    let Some((v, _)) = s.view(None) else {
        return not_ready();
    };
    let known = v
        .environments
        .iter()
        .any(|e| e.rollouts.iter().any(|r| r.name == name));
    if !known {
        return not_found(&v.fleet, "rollout with state", &name);
    }
    let timeline =
        s.io.get()
            .and_then(|io| io.timeline.as_ref())
            .map(|t| Arc::clone(&t.borrow()))
            .unwrap_or_default();
    // What an action just did, for a minute.
    let flash = s.sign_in.as_ref().and_then(|si| si.flash(&headers));
    let mut resp = respond(
        q.fragment.is_some(),
        &name,
        &v.fleet,
        page::rollout(
            &v,
            &name,
            &timeline,
            viewer.as_ref().map(|v| &v.0),
            flash.as_deref(),
            s.name.as_deref(),
        ),
    );
    if viewer.is_some() {
        // The page carries the session's CSRF token: never from a cache.
        resp.headers_mut().insert(
            header::CACHE_CONTROL,
            axum::http::HeaderValue::from_static("no-store"),
        );
    }
    resp
}

async fn meshes(State(s): State<Arc<AppState>>, Query(q): Query<PageQuery>) -> Response {
    let Some((v, _)) = s.view(None) else {
        return not_ready();
    };
    respond(q.fragment.is_some(), "Meshes", &v.fleet, page::meshes(&v))
}

async fn mesh(
    State(s): State<Arc<AppState>>,
    Path(name): Path<String>,
    Query(q): Query<PageQuery>,
) -> Response {
    let Some((v, _)) = s.view(None) else {
        return not_ready();
    };
    let Some(m) = v.meshes.iter().find(|m| m.name == name) else {
        return not_found(&v.fleet, "mesh", &name);
    };
    respond(q.fragment.is_some(), &m.name, &v.fleet, page::mesh(&v, m))
}

async fn bundles(State(s): State<Arc<AppState>>, Query(q): Query<PageQuery>) -> Response {
    let Some((v, _)) = s.view(None) else {
        return not_ready();
    };
    respond(
        q.fragment.is_some(),
        "Bundles",
        &v.fleet,
        bundle_page::index(&v),
    )
}

/// A bundle page that cannot be shown.
fn bundle_error(fleet: &str, e: &bundle_page::BundleError) -> Response {
    (
        bundle_page::error_status(e),
        Html(page::layout(
            "Bundle",
            fleet,
            &format!("<p class=alert>{}</p>", html::esc(&e.to_string())),
        )),
    )
        .into_response()
}

async fn bundle(
    State(s): State<Arc<AppState>>,
    Path(digest): Path<String>,
    Query(q): Query<PageQuery>,
) -> Response {
    let Some((v, _)) = s.view(None) else {
        return not_ready();
    };
    let b = match bundle_page::digest_of(&digest) {
        Ok(d) => s.bundles.get(&d).await,
        Err(e) => Err(e),
    };
    match b {
        Ok(b) => respond(
            q.fragment.is_some(),
            &format!("Bundle {}", crate::fmt::short_digest(&b.reference.digest)),
            &v.fleet,
            bundle_page::detail(&v, &b),
        ),
        Err(e) => bundle_error(&v.fleet, &e),
    }
}

async fn bundle_diff(
    State(s): State<Arc<AppState>>,
    Path((a, b)): Path<(String, String)>,
    Query(q): Query<PageQuery>,
) -> Response {
    let Some((v, _)) = s.view(None) else {
        return not_ready();
    };
    let read = async |part: &str| s.bundles.get(&bundle_page::digest_of(part)?).await;
    let (a, b) = match (read(&a).await, read(&b).await) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => return bundle_error(&v.fleet, &e),
    };
    respond(
        q.fragment.is_some(),
        "Bundle diff",
        &v.fleet,
        bundle_page::diff(&a, &b),
    )
}

async fn api_status(State(s): State<Arc<AppState>>, Query(q): Query<PageQuery>) -> Response {
    match s.view(q.env.as_deref()) {
        Some((v, _)) => axum::Json(v).into_response(),
        None => not_ready(),
    }
}

async fn readyz(State(s): State<Arc<AppState>>) -> Response {
    let snap = s.snapshot.borrow();
    // Ready once a pass has read the fleet: a later failed pass (git or
    // the store away for a moment) leaves the last view to serve, and
    // webhooks are wanted most then. /metrics tells how old it is.
    match (&snap.observed, &snap.error) {
        (Some(_), None) => "ready\n".into_response(),
        (Some(_), Some(e)) => {
            format!("ready; the last reconcile pass failed: {e}\n").into_response()
        }
        (None, Some(e)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("no reconcile pass has read the fleet yet; the last one failed: {e}\n"),
        )
            .into_response(),
        (None, None) => not_ready(),
    }
}

/// One `pass` event per reconcile pass; the pages re-fetch themselves.
async fn events(
    State(s): State<Arc<AppState>>,
) -> Sse<impl futures::Stream<Item = Result<Event, Infallible>>> {
    let rx = (s.snapshot.subscribe(), s.shutdown.subscribe());
    // The stream ends when the server stops, so the drain need not wait
    // for every open page to go away.
    let stream = futures::stream::unfold(rx, |(mut rx, mut stop)| async move {
        tokio::select! {
            changed = rx.changed() => changed.ok()?,
            _ = stop.wait_for(|s| *s) => return None,
        }
        let passes = rx.borrow_and_update().passes;
        let event = Event::default()
            .event("pass")
            .id(passes.to_string())
            .data(passes.to_string());
        Some((Ok(event), (rx, stop)))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

async fn github(State(s): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Response {
    let reply = s.webhooks.handle(&headers, &body);
    if let Some(i) = Outcome::ALL.iter().position(|o| *o == reply.outcome) {
        s.counters.webhooks[i].fetch_add(1, Ordering::Relaxed);
    }
    tracing::info!(
        outcome = reply.outcome.label(),
        event = headers
            .get("x-github-event")
            .and_then(|v| v.to_str().ok())
            .unwrap_or(""),
        delivery = headers
            .get("x-github-delivery")
            .and_then(|v| v.to_str().ok())
            .unwrap_or(""),
        "webhook delivery"
    );
    if reply.outcome == Outcome::Accepted {
        // Full means a pass is queued already; it will read this change.
        let _ = s.trigger.try_send(());
    }
    (reply.status, format!("{}\n", reply.message)).into_response()
}

/// `POST /v1/reports/<node>`: a node's signed status report, sent instead
/// of a store write when it only says the node is alive. Verified with the
/// node's key from the fleet repo, taken only when newer (by the node's
/// own `at`) than any held, so a replayed report is refused. The passes
/// merge it in; nothing is written here.
async fn take_report(
    State(s): State<Arc<AppState>>,
    Path(node): Path<String>,
    body: Bytes,
) -> Response {
    let (outcome, status, message) = judge_report(&s, &node, &body);
    if let Some(i) = REPORT_OUTCOMES.iter().position(|o| *o == outcome) {
        s.counters.reports[i].fetch_add(1, Ordering::Relaxed);
    }
    if status.is_success() {
        tracing::debug!(node = %node, "report taken over HTTP");
        return status.into_response();
    }
    tracing::info!(node = %node, outcome, reason = %message, "report over HTTP not taken");
    (status, format!("{message}\n")).into_response()
}

fn judge_report(s: &AppState, node: &str, body: &[u8]) -> (&'static str, StatusCode, String) {
    let Some(live) = s.io.get().map(|io| Arc::clone(&io.live)) else {
        return not_taking();
    };
    // What judging needs, copied out: a report a second per 1,000 nodes
    // must not clone the observation.
    let looked_up = {
        let snap = s.snapshot.borrow();
        // A replica whose last pass failed shares no liveness: the node
        // must write to the store, where every replica reads.
        let passing = snap.error.is_none();
        snap.observed.as_ref().filter(|_| passing).map(|o| {
            let checked = &o.checked;
            let wanted = checked.reports_over_http();
            (
                checked.node_keys.get(node).copied(),
                checked.fleet().map(str::to_owned).filter(|_| wanted),
                o.reports.get(node).map(|r| r.at),
                o.commit,
            )
        })
    };
    let Some((key, fleet, known, commit)) = looked_up else {
        return not_taking();
    };
    let Some(key) = key else {
        return (
            "unknown-node",
            StatusCode::NOT_FOUND,
            format!("node `{node}` is not in the fleet repo at {commit}"),
        );
    };
    let Some(fleet) = fleet else {
        return not_taking();
    };
    let report = match gitfleet_schemas::verify::verify_status(body, &fleet, node, &key) {
        Ok(r) => Arc::new((*r).clone()),
        Err(e) => {
            return (
                "refused",
                StatusCode::FORBIDDEN,
                format!("status report of `{node}` refused: {e}"),
            )
        }
    };
    match live.take(report, Utc::now(), known) {
        Ok(()) => ("taken", StatusCode::NO_CONTENT, String::new()),
        Err(Refused::Skewed { at }) => (
            "skewed",
            StatusCode::CONFLICT,
            format!(
                "status report of `{node}` is dated {}, more than {} minutes from this reconciler's clock; write it to the store",
                at.to_rfc3339(),
                crate::pass::live::MAX_SKEW.num_minutes()
            ),
        ),
        Err(Refused::NotNewer { held }) => (
            "not-newer",
            StatusCode::CONFLICT,
            format!(
                "status report of `{node}` is not newer than the one held, of {}",
                held.to_rfc3339()
            ),
        ),
    }
}

/// 503: no good pass has read a fleet that takes reports over HTTP (none
/// yet, the last one failed, or fleet.kdl has no `report-to`).
fn not_taking() -> (&'static str, StatusCode, String) {
    (
        "not-ready",
        StatusCode::SERVICE_UNAVAILABLE,
        "this reconciler is not taking reports (no good pass yet, its last pass failed, or fleet.kdl has no report-to); write the report to the store".to_owned(),
    )
}

async fn metrics(State(s): State<Arc<AppState>>) -> Response {
    let text = render_metrics(&s);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// The exposition. Labels are bounded: environments and rollouts come from
/// the repo, phases and health states from fixed sets; no node ids.
pub(crate) fn render_metrics(s: &AppState) -> String {
    let mut out = String::new();
    let c = &s.counters;
    family(
        &mut out,
        "gitfleet_reconcile_passes_total",
        "counter",
        "Reconcile passes by result.",
    );
    let _ = writeln!(
        out,
        "gitfleet_reconcile_passes_total{{result=\"ok\"}} {}\ngitfleet_reconcile_passes_total{{result=\"failed\"}} {}",
        c.passes_ok.load(Ordering::Relaxed),
        c.passes_failed.load(Ordering::Relaxed)
    );
    family(
        &mut out,
        "gitfleet_reports_received_total",
        "counter",
        "Status reports posted over HTTP, by outcome.",
    );
    for (i, o) in REPORT_OUTCOMES.iter().enumerate() {
        let _ = writeln!(
            out,
            "gitfleet_reports_received_total{{outcome=\"{o}\"}} {}",
            c.reports[i].load(Ordering::Relaxed)
        );
    }
    family(
        &mut out,
        "gitfleet_webhook_deliveries_total",
        "counter",
        "GitHub webhook deliveries by outcome.",
    );
    for (i, o) in Outcome::ALL.iter().enumerate() {
        let _ = writeln!(
            out,
            "gitfleet_webhook_deliveries_total{{outcome=\"{}\"}} {}",
            o.label(),
            c.webhooks[i].load(Ordering::Relaxed)
        );
    }
    let snap = s.snapshot.borrow();
    family(
        &mut out,
        "gitfleet_reconcile_pass_seconds",
        "gauge",
        "How long the last reconcile pass took.",
    );
    let _ = writeln!(out, "gitfleet_reconcile_pass_seconds {}", snap.pass_seconds);
    family(
        &mut out,
        "gitfleet_reconciler_start_timestamp_seconds",
        "gauge",
        "When this reconciler process started.",
    );
    let _ = writeln!(
        out,
        "gitfleet_reconciler_start_timestamp_seconds {}",
        s.started.timestamp()
    );
    if let Some(at) = snap.at {
        family(
            &mut out,
            "gitfleet_reconcile_last_pass_timestamp_seconds",
            "gauge",
            "When the last reconcile pass ended.",
        );
        let _ = writeln!(
            out,
            "gitfleet_reconcile_last_pass_timestamp_seconds {}",
            at.timestamp()
        );
    }
    family(
        &mut out,
        "gitfleet_reconcile_phase_seconds",
        "histogram",
        "How long each phase of a reconcile pass took.",
    );
    for (phase, h) in reconcile::PHASES.iter().zip(&c.phases) {
        h.render(
            &mut out,
            "gitfleet_reconcile_phase_seconds",
            &format!("phase=\"{phase}\""),
        );
    }
    if let Some(io) = s.io.get() {
        family(
            &mut out,
            "gitfleet_store_request_seconds",
            "histogram",
            "Object store requests by kind.",
        );
        for (op, h) in io.store.latency().each() {
            h.render(
                &mut out,
                "gitfleet_store_request_seconds",
                &format!("op=\"{op}\""),
            );
        }
        family(
            &mut out,
            "gitfleet_notifications_total",
            "counter",
            "Notification deliveries by outcome (failed: an attempt that will be retried).",
        );
        let n = &io.notified;
        for (outcome, v) in [
            ("delivered", &n.delivered),
            ("failed", &n.failed),
            ("given-up", &n.given_up),
        ] {
            let v = v.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "gitfleet_notifications_total{{outcome=\"{outcome}\"}} {v}"
            );
        }
        family(
            &mut out,
            "gitfleet_notifications_waiting",
            "gauge",
            "Deliveries in the outbox after the notifier's last round.",
        );
        let _ = writeln!(
            out,
            "gitfleet_notifications_waiting {}",
            n.waiting.load(Ordering::Relaxed)
        );
        let counts = io.store.counts();
        family(
            &mut out,
            "gitfleet_store_requests_total",
            "counter",
            "Object store requests by kind: what the store bills.",
        );
        for (kind, n) in counts.each() {
            let _ = writeln!(out, "gitfleet_store_requests_total{{kind=\"{kind}\"}} {n}");
        }
        family(
            &mut out,
            "gitfleet_store_errors_total",
            "counter",
            "Object store requests that failed (unreachable, refused, timed out).",
        );
        let _ = writeln!(out, "gitfleet_store_errors_total {}", counts.errors);
        family(
            &mut out,
            "gitfleet_store_bytes_total",
            "counter",
            "Bytes read from and written to the object store.",
        );
        let _ = writeln!(
            out,
            "gitfleet_store_bytes_total{{direction=\"in\"}} {}",
            counts.bytes_in
        );
        let _ = writeln!(
            out,
            "gitfleet_store_bytes_total{{direction=\"out\"}} {}",
            counts.bytes_out
        );
        family(
            &mut out,
            "gitfleet_git_seconds",
            "histogram",
            "Git fetches and pushes to the fleet repo's remote.",
        );
        for (op, h) in io.git.each() {
            h.render(&mut out, "gitfleet_git_seconds", &format!("op=\"{op}\""));
        }
    }
    let Some(observed) = &snap.observed else {
        return out;
    };
    let now = Utc::now();
    let v = observed.view(&snap.state, snap.rules.as_ref(), now, s.stale_after, None);
    family(
        &mut out,
        "gitfleet_nodes",
        "gauge",
        "Nodes by environment and health.",
    );
    for env in &v.environments {
        let c = &env.counts;
        for (h, n) in [
            (Health::Healthy, c.healthy),
            (Health::Unhealthy, c.unhealthy),
            (Health::Stale, c.stale),
            (Health::Unreported, c.unreported),
        ] {
            let _ = writeln!(
                out,
                "gitfleet_nodes{{environment=\"{}\",health=\"{}\"}} {n}",
                label(&env.name),
                h.as_str()
            );
        }
    }
    family(
        &mut out,
        "gitfleet_nodes_drifted",
        "gauge",
        "Nodes reporting files that differ from their bundle.",
    );
    for env in &v.environments {
        let _ = writeln!(
            out,
            "gitfleet_nodes_drifted{{environment=\"{}\"}} {}",
            label(&env.name),
            env.counts.drifted
        );
    }
    family(
        &mut out,
        "gitfleet_rollout_phase",
        "gauge",
        "1 for the phase each rollout is in, per environment.",
    );
    for env in &v.environments {
        for r in &env.rollouts {
            let _ = writeln!(
                out,
                "gitfleet_rollout_phase{{rollout=\"{}\",environment=\"{}\",phase=\"{}\"}} 1",
                label(&r.name),
                label(&env.name),
                r.phase
            );
        }
    }
    // One family at a time: the text format wants each one whole.
    type Value = fn(&RolloutView) -> u64;
    let families: [(&str, &str, Value); 3] = [
        (
            "gitfleet_rollout_step",
            "Current step of each rollout, per environment.",
            |r| u64::from(r.step),
        ),
        (
            "gitfleet_rollout_nodes",
            "Nodes each rollout selects, per environment.",
            |r| r.nodes,
        ),
        (
            "gitfleet_rollout_nodes_on_target",
            "Nodes reporting the rollout's target bundle.",
            |r| r.on_target,
        ),
    ];
    for (name, help, value) in families {
        family(&mut out, name, "gauge", help);
        for env in &v.environments {
            for r in &env.rollouts {
                let _ = writeln!(
                    out,
                    "{name}{{rollout=\"{}\",environment=\"{}\"}} {}",
                    label(&r.name),
                    label(&env.name),
                    value(r)
                );
            }
        }
    }
    family(
        &mut out,
        "gitfleet_rollout_step_seconds",
        "gauge",
        "How long each rollout has been at its current step and phase.",
    );
    for env in &v.environments {
        for r in &env.rollouts {
            let _ = writeln!(
                out,
                "gitfleet_rollout_step_seconds{{rollout=\"{}\",environment=\"{}\"}} {}",
                label(&r.name),
                label(&env.name),
                (now - r.since).num_seconds().max(0)
            );
        }
    }
    family(
        &mut out,
        "gitfleet_status_reports_ignored",
        "gauge",
        "Status reports that failed verification in the last pass, by reason.",
    );
    for (reason, n) in &v.reports_ignored {
        let _ = writeln!(
            out,
            "gitfleet_status_reports_ignored{{reason=\"{}\"}} {n}",
            label(reason)
        );
    }
    out
}

/// A listener on `addr`, logged with the port it got.
pub async fn listen(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening on {addr}"))?;
    tracing::info!(address = %listener.local_addr()?, "serving");
    Ok(listener)
}
