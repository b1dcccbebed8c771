//! A stateful fake of the GitHub REST endpoints gitfleet calls, on
//! 127.0.0.1: pull requests (listed, opened from a branch of a real bare
//! repository, updated, closed) and the commits they contain, reviews, team
//! memberships, commit statuses and check runs, and the OAuth web flow
//! people sign in to `gitfleet serve` with (authorize, token exchange,
//! `/user`), whose user tokens then act as their person. The reconciler reaches it through
//! octocrab's `base_uri`; tests arrange and inspect its state directly.
//!
//! Answers carry the fields GitHub's do that gitfleet reads (and a few
//! more), with GitHub's status codes; a request without the token is 401.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

#[derive(Clone, Debug, Default)]
pub struct Pull {
    pub number: u64,
    pub author: String,
    /// The head commit; for an open pull request from a branch of
    /// [`GitHubState::repo`], that branch's tip when it is read.
    pub head: String,
    /// The branch it is from (`change-<number>` when not given).
    pub head_ref: String,
    pub base: String,
    pub title: String,
    pub body: String,
    /// Every commit the pull request contains, its merge commit included.
    pub commits: Vec<String>,
    pub merged: bool,
    /// Closed without being merged.
    pub closed: bool,
}

impl Pull {
    fn open(&self) -> bool {
        !self.merged && !self.closed
    }
}

#[derive(Clone, Debug)]
pub struct Review {
    pub user: String,
    pub state: String,
    pub commit: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub commit: String,
    pub context: String,
    pub state: String,
    pub description: String,
}

#[derive(Clone, Debug)]
pub struct CheckRun {
    pub id: u64,
    pub name: String,
    pub head_sha: String,
    pub conclusion: Option<String>,
    /// `output` as posted: title, summary, text, annotations.
    pub output: Value,
    /// How many times it was updated after creation.
    pub updates: u32,
}

#[derive(Debug, Default)]
pub struct GitHubState {
    pub pulls: Vec<Pull>,
    pub reviews: BTreeMap<u64, Vec<Review>>,
    /// `org/slug` -> logins.
    pub teams: BTreeMap<String, BTreeSet<String>>,
    /// Every status posted, in order.
    pub statuses: Vec<Status>,
    pub check_runs: Vec<CheckRun>,
    /// `METHOD path` of every request, in order.
    pub requests: Vec<String>,
    /// The repository as GitHub holds it (bare): pull requests opened from
    /// a branch get their head from it.
    pub repo: Option<std::path::PathBuf>,
    /// The OAuth app people sign in through: `(client id, secret)`.
    pub oauth: Option<(String, String)>,
    /// Who is signed in to GitHub in the browser, when the sign-in names
    /// nobody (`login=`).
    pub signed_in: String,
    /// Authorization code -> (login, redirect URI), each good once.
    codes: BTreeMap<String, (String, String)>,
    /// User token -> login.
    user_tokens: BTreeMap<String, String>,
}

impl GitHubState {
    /// The tip of `branch` in [`GitHubState::repo`].
    fn tip(&self, branch: &str) -> Option<String> {
        let out = std::process::Command::new("git")
            .args([
                "rev-parse",
                "--verify",
                "-q",
                &format!("refs/heads/{branch}"),
            ])
            .current_dir(self.repo.as_ref()?)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// `p` with its head read from the repository while it is open.
    fn live(&self, p: &Pull) -> Pull {
        let mut p = p.clone();
        if p.open() {
            if let Some(tip) = self.tip(&p.head_ref) {
                p.head = tip;
            }
        }
        p
    }
}

#[derive(Debug)]
struct Shared {
    token: String,
    /// `(app id, installation id)`: the fake issues `token` to this App's
    /// installation for a JWT the App signed.
    app: Option<(u64, u64)>,
    state: Mutex<GitHubState>,
}

/// The fake, serving until dropped.
#[derive(Debug)]
pub struct FakeGitHub {
    pub url: String,
    shared: Arc<Shared>,
    _server: crate::app_thread::AppThread,
}

impl FakeGitHub {
    /// Serve on a free loopback port, accepting only `token`.
    pub fn start(token: &str) -> FakeGitHub {
        FakeGitHub::serve(token, None)
    }

    /// Serve for a GitHub App: a JWT whose `iss` is `app_id` buys an
    /// installation token for `installation`; only that token is accepted.
    pub fn start_app(app_id: u64, installation: u64) -> FakeGitHub {
        FakeGitHub::serve(&format!("ghs_{installation}"), Some((app_id, installation)))
    }

    fn serve(token: &str, app: Option<(u64, u64)>) -> FakeGitHub {
        let shared = Arc::new(Shared {
            token: token.to_owned(),
            app,
            state: Mutex::new(GitHubState::default()),
        });
        let app = router(Arc::clone(&shared));
        let server = crate::app_thread::AppThread::start(app);
        FakeGitHub {
            url: server.url(),
            shared,
            _server: server,
        }
    }

    /// Take sign-ins for the OAuth app `client_id` with `secret`.
    pub fn with_oauth(&self, client_id: &str, secret: &str) {
        self.with(|s| s.oauth = Some((client_id.to_owned(), secret.to_owned())));
    }

    /// Look at or change the state.
    pub fn with<T>(&self, f: impl FnOnce(&mut GitHubState) -> T) -> T {
        f(&mut self.shared.state.lock().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn add_pull(&self, pull: Pull) {
        self.with(|s| s.pulls.push(pull));
    }

    /// The pull request `number`, its head as GitHub would show it now.
    pub fn pull(&self, number: u64) -> Option<Pull> {
        self.with(|s| {
            let p = s.pulls.iter().find(|p| p.number == number)?;
            Some(s.live(p))
        })
    }

    /// The pull requests from `branch`, oldest first.
    pub fn pulls_from(&self, branch: &str) -> Vec<Pull> {
        self.with(|s| {
            s.pulls
                .iter()
                .filter(|p| p.head_ref == branch)
                .map(|p| s.live(p))
                .collect()
        })
    }

    /// Record that `number` was merged by `merge_commit` (which the test
    /// made in the repository), as GitHub does: its head is fixed and both
    /// commits list it.
    pub fn merged(&self, number: u64, merge_commit: &str) {
        self.with(|s| {
            let Some(i) = s.pulls.iter().position(|p| p.number == number) else {
                return;
            };
            let head = s.live(&s.pulls[i]).head;
            let p = &mut s.pulls[i];
            p.head = head.clone();
            p.merged = true;
            p.commits.extend([head, merge_commit.to_owned()]);
        });
    }

    pub fn review(&self, number: u64, user: &str, state: &str, commit: &str) {
        self.with(|s| {
            s.reviews.entry(number).or_default().push(Review {
                user: user.into(),
                state: state.into(),
                commit: commit.into(),
            });
        });
    }

    /// Dismiss `user`'s reviews of `number`, as GitHub does: their state
    /// becomes `DISMISSED`.
    pub fn dismiss(&self, number: u64, user: &str) {
        self.with(|s| {
            for r in s.reviews.entry(number).or_default() {
                if r.user == user {
                    r.state = "DISMISSED".into();
                }
            }
        });
    }

    /// The last status posted on `commit` for `context`.
    pub fn status(&self, commit: &str, context: &str) -> Option<Status> {
        self.with(|s| {
            s.statuses
                .iter()
                .rev()
                .find(|st| st.commit == commit && st.context == context)
                .cloned()
        })
    }
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route(
            "/repos/{owner}/{repo}/commits/{sha}/pulls",
            get(commit_pulls),
        )
        .route(
            "/repos/{owner}/{repo}/pulls/{number}/reviews",
            get(reviews).post(create_review),
        )
        .route("/login/oauth/authorize", get(authorize))
        .route("/login/oauth/access_token", post(access_token))
        .route("/user", get(user))
        .route(
            "/orgs/{org}/teams/{slug}/memberships/{user}",
            get(membership),
        )
        .route("/repos/{owner}/{repo}/statuses/{sha}", post(create_status))
        .route(
            "/repos/{owner}/{repo}/commits/{sha}/status",
            get(combined_status),
        )
        .route(
            "/app/installations/{id}/access_tokens",
            post(installation_token),
        )
        .route(
            "/repos/{owner}/{repo}/pulls",
            get(open_pulls).post(create_pull),
        )
        .route(
            "/repos/{owner}/{repo}/pulls/{number}",
            axum::routing::patch(update_pull),
        )
        .route(
            "/repos/{owner}/{repo}/commits/{sha}/check-runs",
            get(commit_check_runs),
        )
        .route("/repos/{owner}/{repo}/check-runs", post(create_check_run))
        .route(
            "/repos/{owner}/{repo}/check-runs/{id}",
            axum::routing::patch(update_check_run),
        )
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                Json(json!({ "message": "Not Found" })),
            )
        })
        .with_state(shared)
}

/// Whether the request carries the token, or a person's token from the
/// OAuth flow; records it.
fn authorized(shared: &Shared, headers: &HeaderMap, what: String) -> bool {
    shared
        .state
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .requests
        .push(what);
    bearer(headers) == Some(shared.token.as_str()) || user_of(shared, headers).is_some()
}

/// The token an `Authorization` header carries (`Bearer` or `token`).
fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("token "))
        })
}

/// The person a user token (from the OAuth flow) belongs to.
fn user_of(shared: &Shared, headers: &HeaderMap) -> Option<String> {
    let given = bearer(headers)?;
    let state = shared.state.lock().unwrap_or_else(|p| p.into_inner());
    state.user_tokens.get(given).cloned()
}

/// `GET /login/oauth/authorize`: GitHub's consent, given at once for the
/// person signed in (or named by `login`): back to `redirect_uri` with a
/// code and the caller's `state`.
async fn authorize(
    State(shared): State<Arc<Shared>>,
    axum::extract::Query(q): axum::extract::Query<BTreeMap<String, String>>,
) -> Response {
    let mut state = shared.state.lock().unwrap_or_else(|p| p.into_inner());
    state.requests.push("GET login/oauth/authorize".to_owned());
    let known = state
        .oauth
        .as_ref()
        .is_some_and(|(id, _)| q.get("client_id") == Some(id));
    let (true, Some(redirect), Some(caller_state)) = (known, q.get("redirect_uri"), q.get("state"))
    else {
        return error(StatusCode::NOT_FOUND, "no such OAuth application");
    };
    let login = q
        .get("login")
        .cloned()
        .unwrap_or_else(|| state.signed_in.clone());
    let code = format!(
        "code-{}-{}",
        login,
        state.codes.len() + state.user_tokens.len()
    );
    state.codes.insert(code.clone(), (login, redirect.clone()));
    let sep = if redirect.contains('?') { '&' } else { '?' };
    let to = format!("{redirect}{sep}code={code}&state={}", encode(caller_state));
    (StatusCode::FOUND, [("location", to)]).into_response()
}

/// A query value, percent-encoded.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// `POST /login/oauth/access_token`: a code, once, for a user token.
async fn access_token(
    State(shared): State<Arc<Shared>>,
    axum::Form(form): axum::Form<BTreeMap<String, String>>,
) -> Response {
    let mut state = shared.state.lock().unwrap_or_else(|p| p.into_inner());
    state
        .requests
        .push("POST login/oauth/access_token".to_owned());
    let client_ok = state.oauth.as_ref().is_some_and(|(id, secret)| {
        form.get("client_id") == Some(id) && form.get("client_secret") == Some(secret)
    });
    if !client_ok {
        return Json(json!({ "error": "incorrect_client_credentials" })).into_response();
    }
    let code = form.get("code").cloned().unwrap_or_default();
    match state.codes.remove(&code) {
        Some((login, redirect)) if form.get("redirect_uri") == Some(&redirect) => {
            let token = format!("gho_{login}_{}", state.user_tokens.len());
            state.user_tokens.insert(token.clone(), login);
            Json(json!({ "access_token": token, "token_type": "bearer", "scope": "read:org" }))
                .into_response()
        }
        _ => Json(json!({
            "error": "bad_verification_code",
            "error_description": "The code passed is incorrect or expired."
        }))
        .into_response(),
    }
}

/// `GET /user`: who the user token belongs to.
async fn user(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    match user_of(&shared, &headers) {
        Some(login) => Json(json!({ "login": login, "id": 1 })).into_response(),
        None => unauthorized(),
    }
}

/// `POST .../pulls/<n>/reviews`: a review by the user token's person.
async fn create_review(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path((_, _, number)): Path<(String, String, u64)>,
    Json(body): Json<Value>,
) -> Response {
    let Some(login) = user_of(&shared, &headers) else {
        return unauthorized();
    };
    let mut state = shared.state.lock().unwrap_or_else(|p| p.into_inner());
    state
        .requests
        .push(format!("POST pulls/{number}/reviews by {login}"));
    let Some(pull) = state.pulls.iter().find(|p| p.number == number) else {
        return error(StatusCode::NOT_FOUND, "Not Found");
    };
    if pull.author == login && body["event"] == "APPROVE" {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Can not approve your own pull request",
        );
    }
    let commit = body["commit_id"].as_str().unwrap_or(&pull.head).to_owned();
    let review_state = match body["event"].as_str() {
        Some("APPROVE") => "APPROVED",
        Some("REQUEST_CHANGES") => "CHANGES_REQUESTED",
        _ => "COMMENTED",
    };
    state.reviews.entry(number).or_default().push(Review {
        user: login.clone(),
        state: review_state.to_owned(),
        commit: commit.clone(),
    });
    Json(json!({ "id": 1, "user": { "login": login }, "state": review_state, "commit_id": commit }))
        .into_response()
}

/// An error as GitHub answers one.
fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "message": message }))).into_response()
}

fn unauthorized() -> Response {
    error(StatusCode::UNAUTHORIZED, "Bad credentials")
}

fn pull_json(p: &Pull) -> Value {
    let head_ref = if p.head_ref.is_empty() {
        format!("change-{}", p.number)
    } else {
        p.head_ref.clone()
    };
    json!({
        "number": p.number,
        "state": if p.open() { "open" } else { "closed" },
        "title": p.title,
        "body": p.body,
        "user": { "login": p.author },
        "head": { "sha": p.head, "ref": head_ref },
        "base": { "ref": if p.base.is_empty() { "main" } else { &p.base } },
        "merged_at": if p.merged { json!("2026-12-01T10:00:00Z") } else { Value::Null },
    })
}

/// The `X-Hub-Signature-256` GitHub sends with `body` for a webhook
/// with `secret`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    use hmac::Mac as _;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).unwrap();
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256={hex}")
}

/// Who opens pull requests through the API here.
pub const BOT: &str = "gitfleet-bot";

async fn create_pull(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    if !authorized(&shared, &headers, "POST pulls".to_owned()) {
        return unauthorized();
    }
    let field = |name: &str| body.get(name).and_then(Value::as_str).map(str::to_owned);
    let (Some(title), Some(head_ref), Some(base)) = (field("title"), field("head"), field("base"))
    else {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Validation Failed: title, head and base are required",
        );
    };
    let mut state = shared.state.lock().unwrap_or_else(|p| p.into_inner());
    if state
        .pulls
        .iter()
        .any(|p| p.open() && p.head_ref == head_ref)
    {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            &format!("A pull request already exists for {head_ref}."),
        );
    }
    let Some(head) = state.tip(&head_ref) else {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Validation Failed: head invalid",
        );
    };
    let number = state.pulls.iter().map(|p| p.number).max().unwrap_or(0) + 1;
    let pull = Pull {
        number,
        author: BOT.to_owned(),
        head,
        head_ref,
        base,
        title,
        body: field("body").unwrap_or_default(),
        ..Pull::default()
    };
    let json = pull_json(&pull);
    state.pulls.push(pull);
    (StatusCode::CREATED, Json(json)).into_response()
}

async fn update_pull(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path((_, _, number)): Path<(String, String, u64)>,
    Json(body): Json<Value>,
) -> Response {
    if !authorized(&shared, &headers, format!("PATCH pulls/{number}")) {
        return unauthorized();
    }
    let mut state = shared.state.lock().unwrap_or_else(|p| p.into_inner());
    let Some(i) = state.pulls.iter().position(|p| p.number == number) else {
        return error(StatusCode::NOT_FOUND, "Not Found");
    };
    let live = state.live(&state.pulls[i]);
    let p = &mut state.pulls[i];
    if let Some(t) = body.get("title").and_then(Value::as_str) {
        p.title = t.to_owned();
    }
    if let Some(b) = body.get("body").and_then(Value::as_str) {
        p.body = b.to_owned();
    }
    match body.get("state").and_then(Value::as_str) {
        Some("closed") if !p.merged => {
            p.head = live.head;
            p.closed = true;
        }
        Some("open") if !p.merged => p.closed = false,
        None => {}
        Some(other) => {
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                &format!("Validation Failed: state {other}"),
            )
        }
    }
    let json = pull_json(&state.live(&state.pulls[i]));
    Json(json).into_response()
}

async fn commit_pulls(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path((_, _, sha)): Path<(String, String, String)>,
) -> Response {
    if !authorized(&shared, &headers, format!("GET commits/{sha}/pulls")) {
        return unauthorized();
    }
    let state = shared.state.lock().unwrap_or_else(|p| p.into_inner());
    let pulls: Vec<Value> = state
        .pulls
        .iter()
        .filter(|p| p.commits.contains(&sha))
        .map(pull_json)
        .collect();
    Json(pulls).into_response()
}

async fn reviews(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path((_, _, number)): Path<(String, String, u64)>,
    axum::extract::Query(q): axum::extract::Query<BTreeMap<String, String>>,
) -> Response {
    if !authorized(&shared, &headers, format!("GET pulls/{number}/reviews")) {
        return unauthorized();
    }
    let state = shared.state.lock().unwrap_or_else(|p| p.into_inner());
    if !state.pulls.iter().any(|p| p.number == number) {
        return error(StatusCode::NOT_FOUND, "Not Found");
    }
    // One page holds them all; later pages are empty, as GitHub's are.
    if q.get("page").is_some_and(|p| p != "1") {
        return Json(Vec::<Value>::new()).into_response();
    }
    let list: Vec<Value> = state
        .reviews
        .get(&number)
        .into_iter()
        .flatten()
        .enumerate()
        .map(|(i, r)| {
            json!({
                "id": i + 1,
                "user": { "login": r.user },
                "state": r.state,
                "commit_id": r.commit,
                "submitted_at": "2026-12-01T10:00:00Z",
            })
        })
        .collect();
    Json(list).into_response()
}

async fn membership(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path((org, slug, user)): Path<(String, String, String)>,
) -> Response {
    if !authorized(&shared, &headers, format!("GET teams/{org}/{slug}/{user}")) {
        return unauthorized();
    }
    let state = shared.state.lock().unwrap_or_else(|p| p.into_inner());
    let member = state
        .teams
        .get(&format!("{org}/{slug}"))
        .is_some_and(|m| m.contains(&user));
    if member {
        Json(json!({ "state": "active", "role": "member" })).into_response()
    } else {
        error(StatusCode::NOT_FOUND, "Not Found")
    }
}

/// An installation token for a JWT of the configured App: RS256, `iss`
/// the App id, not expired. (The signature itself is not checked: the
/// fake has no RSA; GitHub does.)
async fn installation_token(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<u64>,
) -> Response {
    use base64::Engine as _;
    shared
        .state
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .requests
        .push(format!("POST installations/{id}/access_tokens"));
    let Some((app_id, installation)) = shared.app else {
        return error(StatusCode::NOT_FOUND, "Not Found");
    };
    let jwt = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    let part = |i: usize| -> Option<Value> {
        let text = jwt.split('.').nth(i)?;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text)
            .ok()?;
        serde_json::from_slice(&bytes).ok()
    };
    let (Some(header), Some(claims)) = (part(0), part(1)) else {
        return error(
            StatusCode::UNAUTHORIZED,
            "A JSON web token could not be decoded",
        );
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let iss_ok = claims["iss"].as_u64() == Some(app_id)
        || claims["iss"].as_str() == Some(app_id.to_string().as_str());
    let fresh = claims["exp"].as_u64().is_some_and(|exp| exp > now);
    if header["alg"] != "RS256" || !iss_ok || !fresh || id != installation {
        return error(
            StatusCode::UNAUTHORIZED,
            "'Issuer' claim ('iss') must be an Integer",
        );
    }
    (
        StatusCode::CREATED,
        Json(json!({
            "token": shared.token,
            "expires_at": "2099-01-01T00:00:00Z",
            "permissions": { "statuses": "write", "checks": "write", "pull_requests": "read" },
        })),
    )
        .into_response()
}

async fn open_pulls(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    axum::extract::Query(q): axum::extract::Query<BTreeMap<String, String>>,
) -> Response {
    if !authorized(&shared, &headers, "GET pulls".to_owned()) {
        return unauthorized();
    }
    if q.get("page").is_some_and(|p| p != "1") {
        return Json(Vec::<Value>::new()).into_response();
    }
    let state = shared.state.lock().unwrap_or_else(|p| p.into_inner());
    // `head` is `owner:branch`; `base` a branch name.
    let head = q
        .get("head")
        .map(|h| h.split_once(':').map_or(h.as_str(), |(_, b)| b));
    let open: Vec<Value> = state
        .pulls
        .iter()
        .filter(|p| p.open())
        .filter(|p| head.is_none_or(|h| p.head_ref == h))
        .filter(|p| {
            q.get("base")
                .is_none_or(|b| p.base == *b || (p.base.is_empty() && b == "main"))
        })
        .map(|p| pull_json(&state.live(p)))
        .collect();
    Json(open).into_response()
}

fn check_run_json(c: &CheckRun) -> Value {
    json!({
        "id": c.id,
        "name": c.name,
        "head_sha": c.head_sha,
        "status": "completed",
        "conclusion": c.conclusion,
        "output": c.output,
    })
}

async fn commit_check_runs(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path((_, _, sha)): Path<(String, String, String)>,
    axum::extract::Query(q): axum::extract::Query<BTreeMap<String, String>>,
) -> Response {
    if !authorized(&shared, &headers, format!("GET commits/{sha}/check-runs")) {
        return unauthorized();
    }
    let state = shared.state.lock().unwrap_or_else(|p| p.into_inner());
    let runs: Vec<Value> = state
        .check_runs
        .iter()
        .filter(|c| c.head_sha == sha && q.get("check_name").is_none_or(|n| *n == c.name))
        .map(check_run_json)
        .collect();
    Json(json!({ "total_count": runs.len(), "check_runs": runs })).into_response()
}

/// GitHub's limit: at most 50 annotations per request.
fn annotations_ok(body: &Value) -> bool {
    body["output"]["annotations"]
        .as_array()
        .is_none_or(|a| a.len() <= 50)
}

async fn create_check_run(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    if !authorized(&shared, &headers, "POST check-runs".to_owned()) {
        return unauthorized();
    }
    let (Some(name), Some(head)) = (body["name"].as_str(), body["head_sha"].as_str()) else {
        return error(StatusCode::UNPROCESSABLE_ENTITY, "Validation Failed");
    };
    if !annotations_ok(&body) {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Only 50 annotations per request",
        );
    }
    let mut state = shared.state.lock().unwrap_or_else(|p| p.into_inner());
    let run = CheckRun {
        id: state.check_runs.len() as u64 + 1,
        name: name.to_owned(),
        head_sha: head.to_owned(),
        conclusion: body["conclusion"].as_str().map(str::to_owned),
        output: body["output"].clone(),
        updates: 0,
    };
    let reply = check_run_json(&run);
    state.check_runs.push(run);
    (StatusCode::CREATED, Json(reply)).into_response()
}

async fn update_check_run(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path((_, _, id)): Path<(String, String, u64)>,
    Json(body): Json<Value>,
) -> Response {
    if !authorized(&shared, &headers, format!("PATCH check-runs/{id}")) {
        return unauthorized();
    }
    if !annotations_ok(&body) {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Only 50 annotations per request",
        );
    }
    let mut state = shared.state.lock().unwrap_or_else(|p| p.into_inner());
    let Some(run) = state.check_runs.iter_mut().find(|c| c.id == id) else {
        return error(StatusCode::NOT_FOUND, "Not Found");
    };
    if let Some(c) = body["conclusion"].as_str() {
        run.conclusion = Some(c.to_owned());
    }
    if !body["output"].is_null() {
        run.output = body["output"].clone();
    }
    run.updates += 1;
    Json(check_run_json(run)).into_response()
}

/// The latest status per context on `sha`, newest first, as GitHub's
/// combined status lists them.
async fn combined_status(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path((_, _, sha)): Path<(String, String, String)>,
) -> Response {
    if !authorized(&shared, &headers, format!("GET commits/{sha}/status")) {
        return unauthorized();
    }
    let state = shared.state.lock().unwrap_or_else(|p| p.into_inner());
    let mut seen = BTreeSet::new();
    let statuses: Vec<Value> = state
        .statuses
        .iter()
        .rev()
        .filter(|st| st.commit == sha && seen.insert(st.context.clone()))
        .map(
            |st| json!({ "context": st.context, "state": st.state, "description": st.description }),
        )
        .collect();
    Json(json!({ "sha": sha, "total_count": statuses.len(), "statuses": statuses })).into_response()
}

async fn create_status(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path((_, _, sha)): Path<(String, String, String)>,
    Json(body): Json<Value>,
) -> Response {
    if !authorized(&shared, &headers, format!("POST statuses/{sha}")) {
        return unauthorized();
    }
    let field = |k: &str| body[k].as_str().map(str::to_owned);
    let (Some(state), Some(context)) = (field("state"), field("context")) else {
        return error(StatusCode::UNPROCESSABLE_ENTITY, "Validation Failed");
    };
    if !["error", "failure", "pending", "success"].contains(&state.as_str()) {
        return error(StatusCode::UNPROCESSABLE_ENTITY, "Validation Failed");
    }
    let status = Status {
        commit: sha,
        context,
        state,
        description: field("description").unwrap_or_default(),
    };
    let reply = json!({
        "state": status.state,
        "context": status.context,
        "description": status.description,
    });
    shared
        .state
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .statuses
        .push(status);
    (StatusCode::CREATED, Json(reply)).into_response()
}
