//! Sign-in on the status pages: GitHub's OAuth web flow (GitHub Enterprise
//! too), a session sealed into a cookie (`session`), and roles read from
//! the fleet repo's fleet.kdl (`viewers`, `operators`, as users or teams).
//! No database: everything a request needs is in its cookie and the last
//! pass's view of the repo.
//!
//! With sign-in on, every page wants a session whose person fleet.kdl
//! names as a viewer or an operator; agents' reports, GitHub's webhooks,
//! /metrics and the health checks stay as they are (they carry their own
//! signatures, or nothing secret).

use std::sync::{Arc, OnceLock};

use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};
use chrono::Utc;
use gitfleet_schemas::FleetFile;

use super::html::esc;
use super::session::{self, Pending, Sealer, Session};
use super::AppState;

/// How sign-in is set up (`gitfleet serve --github-client-id ...`).
#[derive(Debug)]
pub struct SignIn {
    pub client_id: String,
    client_secret: String,
    /// Where people sign in: `https://github.com`, or the Enterprise host.
    web: String,
    /// GitHub's REST API, for who signed in and their teams.
    api: String,
    /// This server as people reach it (`https://fleet.example.com`): the
    /// OAuth redirect goes back here, and writes must come from here.
    public_url: OnceLock<String>,
    sealer: Sealer,
    http: reqwest::Client,
    /// Every team the roles of the fleets served name, as their passes
    /// read them: a sign-in looks up membership of each, whichever
    /// fleet's page it started from.
    named_teams: std::sync::Mutex<std::collections::BTreeSet<String>>,
}

/// What a page knows of who asks.
#[derive(Clone, PartialEq, Eq)]
pub struct Viewer {
    pub login: String,
    pub role: Role,
    /// What forms must send back.
    pub csrf: String,
    /// Their OAuth token (approving reviews in their name).
    pub token: String,
}

impl std::fmt::Debug for Viewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Viewer")
            .field("login", &self.login)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Viewer,
    Operator,
}

/// A person's role under `fleet`'s `viewers` and `operators`: operators
/// are viewers too; nobody else has one.
pub fn role(fleet: Option<&FleetFile>, login: &str, teams: &[String]) -> Option<Role> {
    let fleet = fleet?;
    let admits = |a: &Option<gitfleet_schemas::fleet::Access>| {
        a.as_ref().is_some_and(|a| a.admits(login, teams))
    };
    if admits(&fleet.operators) {
        Some(Role::Operator)
    } else if admits(&fleet.viewers) {
        Some(Role::Viewer)
    } else {
        None
    }
}

impl SignIn {
    pub fn new(
        client_id: String,
        client_secret: String,
        web: &str,
        api: &str,
        public_url: Option<String>,
        sealer: Sealer,
    ) -> SignIn {
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(15))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("gitfleet/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_default();
        let public = OnceLock::new();
        if let Some(url) = public_url {
            let _ = public.set(url.trim_end_matches('/').to_owned());
        }
        SignIn {
            client_id,
            client_secret,
            web: web.trim_end_matches('/').to_owned(),
            api: api.trim_end_matches('/').to_owned(),
            public_url: public,
            sealer,
            http,
            named_teams: Default::default(),
        }
    }

    /// Note the teams `fleet`'s roles name.
    pub fn note_teams(&self, fleet: &FleetFile) {
        let mut named = self.named_teams.lock().unwrap_or_else(|p| p.into_inner());
        for access in [&fleet.viewers, &fleet.operators].into_iter().flatten() {
            for t in access.team_names() {
                if !named.contains(t) {
                    named.insert(t.to_owned());
                }
            }
        }
    }

    /// Take `url` as this server's address unless one was given.
    pub fn default_public_url(&self, url: String) {
        let _ = self.public_url.set(url.trim_end_matches('/').to_owned());
    }

    pub fn public_url(&self) -> &str {
        self.public_url.get().map_or("", String::as_str)
    }

    fn secure(&self) -> bool {
        self.public_url().starts_with("https://")
    }

    fn cookie(&self, name: &str, value: &str, path: &str, max_age: i64) -> HeaderValue {
        let secure = if self.secure() { "; Secure" } else { "" };
        HeaderValue::from_str(&format!(
            "{name}={value}; Path={path}; Max-Age={max_age}; HttpOnly; SameSite=Lax{secure}"
        ))
        .unwrap_or_else(|_| HeaderValue::from_static(""))
    }

    /// The session a request's cookies carry, if it opens and is not over.
    pub fn session(&self, headers: &HeaderMap) -> Option<Session> {
        let cookies = headers.get(header::COOKIE)?.to_str().ok()?;
        let sealed = session::cookie(cookies, session::COOKIE)?;
        let s: Session = self.sealer.open(session::COOKIE, sealed)?;
        (s.expires > Utc::now().timestamp()).then_some(s)
    }

    /// A cookie telling the next page what an action did (sealed, so no
    /// link can make a page say something it did not do).
    pub fn flash_cookie(&self, text: &str) -> HeaderValue {
        let sealed = self.sealer.seal(session::FLASH_COOKIE, &text);
        self.cookie(session::FLASH_COOKIE, &sealed, "/", 60)
    }

    /// What the flash cookie says. It is not cleared: it lives a minute,
    /// so the page's live updates keep saying it.
    pub fn flash(&self, headers: &HeaderMap) -> Option<String> {
        let cookies = headers.get(header::COOKIE)?.to_str().ok()?;
        let sealed = session::cookie(cookies, session::FLASH_COOKIE)?;
        self.sealer.open(session::FLASH_COOKIE, sealed)
    }

    /// Whether a write comes from these pages: an `Origin` (or, without
    /// one, a `Referer`) naming this server, and no browser saying it
    /// came from another site.
    pub fn same_origin(&self, headers: &HeaderMap) -> bool {
        let public = self.public_url();
        if headers
            .get("sec-fetch-site")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v != "same-origin")
        {
            return false;
        }
        let from = |name| {
            headers
                .get(name)
                .and_then(|v: &HeaderValue| v.to_str().ok())
        };
        match (from(header::ORIGIN), from(header::REFERER)) {
            (Some(origin), _) => origin.trim_end_matches('/') == public,
            (None, Some(referer)) => {
                referer == public || referer.starts_with(&format!("{public}/"))
            }
            (None, None) => false,
        }
    }

    /// GitHub's access token for an authorization `code`.
    async fn exchange(&self, code: &str) -> Result<String, String> {
        let redirect = format!("{}/auth/callback", self.public_url());
        let resp = self
            .http
            .post(format!("{}/login/oauth/access_token", self.web))
            .header(header::ACCEPT, "application/json")
            .form(&[
                ("client_id", self.client_id.as_str()),
                ("client_secret", self.client_secret.as_str()),
                ("code", code),
                ("redirect_uri", redirect.as_str()),
            ])
            .send()
            .await
            .map_err(|e| format!("GitHub did not answer the token exchange: {e}"))?;
        let body: serde_json::Value = json(resp).await?;
        match body.get("access_token").and_then(|t| t.as_str()) {
            Some(t) if !t.is_empty() => Ok(t.to_owned()),
            _ => Err(format!(
                "GitHub gave no token: {}",
                body.get("error_description")
                    .or_else(|| body.get("error"))
                    .and_then(|e| e.as_str())
                    .unwrap_or("no reason given")
            )),
        }
    }

    async fn get(&self, token: &str, path: &str) -> Result<reqwest::Response, String> {
        self.http
            .get(format!("{}{path}", self.api))
            .bearer_auth(token)
            .header(header::ACCEPT, "application/vnd.github+json")
            .send()
            .await
            .map_err(|e| format!("GitHub did not answer GET {path}: {e}"))
    }

    /// The login the token belongs to.
    async fn login(&self, token: &str) -> Result<String, String> {
        let body: serde_json::Value = json(self.get(token, "/user").await?).await?;
        body.get("login")
            .and_then(|l| l.as_str())
            .map(str::to_owned)
            .ok_or_else(|| "GitHub's /user has no login".to_owned())
    }

    /// Of `teams`, those `login` is an active member of (read with their
    /// own token, which `read:org` lets see their memberships).
    async fn teams_of(&self, token: &str, login: &str, teams: &[String]) -> Vec<String> {
        let mut out = Vec::new();
        for team in teams {
            let Some((org, slug)) = team.split_once('/') else {
                continue;
            };
            let path = format!(
                "/orgs/{}/teams/{}/memberships/{}",
                crate::fmt::url_part(org),
                crate::fmt::url_part(slug),
                crate::fmt::url_part(login)
            );
            match self.get(token, &path).await {
                Ok(r) if r.status().is_success() => {
                    let body: Result<serde_json::Value, _> = json(r).await;
                    if body.is_ok_and(|b| b.get("state").and_then(|s| s.as_str()) == Some("active"))
                    {
                        out.push(team.clone());
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(team = %team, user = %login, error = %e, "cannot read a team membership at sign-in")
                }
            }
        }
        out
    }
}

async fn json<T: serde::de::DeserializeOwned>(resp: reqwest::Response) -> Result<T, String> {
    let status = resp.status();
    let url = resp.url().path().to_owned();
    let bytes = resp
        .bytes()
        .await
        .map_err(|e| format!("reading GitHub's answer: {e}"))?;
    if !status.is_success() {
        return Err(format!(
            "GitHub answered {status} to {url}: {}",
            String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
        ));
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| format!("GitHub's answer is not the JSON expected: {e}"))
}

/// `a=1&b=2`, each value percent-encoded.
fn query(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={}", crate::fmt::url_part(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// Paths that never need a session.
fn open_path(path: &str) -> bool {
    matches!(
        path,
        "/healthz" | "/readyz" | "/metrics" | "/webhooks/github"
    ) || path.starts_with("/v1/reports/")
        || path.starts_with("/auth/")
}

/// Only paths of this server: `/x`, never `//host` or a full URL.
fn local_path(next: &str) -> &str {
    // Browsers drop tabs and newlines from a Location before following it
    // (`/\t/evil` is `//evil`): no control character, no backslash.
    let plain = !next.contains('\\') && !next.chars().any(char::is_control);
    if plain && next.starts_with('/') && !next.starts_with("//") {
        next
    } else {
        "/"
    }
}

/// The gate in front of every route: with sign-in on, a page needs a
/// session whose person is a viewer or operator; the `Viewer` goes along
/// for the handler.
pub async fn gate(State(s): State<Arc<AppState>>, mut req: Request, next: Next) -> Response {
    let Some(sign_in) = s.sign_in.as_ref() else {
        return next.run(req).await;
    };
    let path = req.uri().path().to_owned();
    if open_path(&path) {
        return next.run(req).await;
    }
    let Some(session) = sign_in.session(req.headers()) else {
        if req.method() == axum::http::Method::GET {
            let target = req
                .uri()
                .path_and_query()
                .map_or("/".to_owned(), |p| p.as_str().to_owned());
            return Redirect::to(&format!("/auth/login?{}", query(&[("next", &target)])))
                .into_response();
        }
        return (StatusCode::UNAUTHORIZED, "sign in first\n").into_response();
    };
    let fleet = s.fleet_file();
    let Some(role) = role(fleet.as_ref(), &session.login, &session.teams) else {
        return (
            StatusCode::FORBIDDEN,
            Html(super::page::layout(
                "Not allowed",
                "",
                &format!(
                    "<p>You are signed in as <b>{}</b>, whom fleet.kdl names neither among its <code>viewers</code> nor its <code>operators</code>.</p>{}",
                    esc(&session.login),
                    sign_out_form(&session.csrf)
                ),
            )),
        )
            .into_response();
    };
    req.extensions_mut().insert(Viewer {
        login: session.login,
        role,
        csrf: session.csrf,
        token: session.token,
    });
    next.run(req).await
}

/// A form that signs out.
pub fn sign_out_form(csrf: &str) -> String {
    format!(
        "<form method=post action=\"/auth/logout\" class=inline><input type=hidden name=csrf value=\"{}\"><button type=submit>Sign out</button></form>",
        esc(csrf)
    )
}

#[derive(Debug, serde::Deserialize)]
pub struct LoginQuery {
    next: Option<String>,
    /// Suggests an account at GitHub (its `login` parameter).
    login: Option<String>,
}

/// `GET /auth/login`: off to GitHub, with a state only this browser holds.
pub async fn login(State(s): State<Arc<AppState>>, Query(q): Query<LoginQuery>) -> Response {
    let Some(sign_in) = s.sign_in.as_ref() else {
        return (StatusCode::NOT_FOUND, "sign-in is not set up\n").into_response();
    };
    let Some(state) = session::token() else {
        return (StatusCode::INTERNAL_SERVER_ERROR, "no randomness\n").into_response();
    };
    let pending = Pending {
        state: state.clone(),
        next: local_path(q.next.as_deref().unwrap_or("/")).to_owned(),
        expires: Utc::now().timestamp() + session::STATE_SECONDS,
    };
    let sealed = sign_in.sealer.seal(session::STATE_COOKIE, &pending);
    let redirect = format!("{}/auth/callback", sign_in.public_url());
    let mut params = vec![
        ("client_id", sign_in.client_id.as_str()),
        ("redirect_uri", redirect.as_str()),
        ("state", state.as_str()),
        // Team memberships, and reviews in the person's name (`repo`
        // covers private fleet repos; approve needs it).
        ("scope", "read:org repo"),
    ];
    if let Some(l) = q.login.as_deref() {
        params.push(("login", l));
    }
    let mut resp = Redirect::to(&format!(
        "{}/login/oauth/authorize?{}",
        sign_in.web,
        query(&params)
    ))
    .into_response();
    resp.headers_mut().append(
        header::SET_COOKIE,
        sign_in.cookie(
            session::STATE_COOKIE,
            &sealed,
            "/auth",
            session::STATE_SECONDS,
        ),
    );
    resp
}

#[derive(Debug, serde::Deserialize)]
pub struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error_description: Option<String>,
}

fn refused(why: &str) -> Response {
    tracing::warn!(reason = %why, "sign-in refused");
    (
        StatusCode::BAD_REQUEST,
        Html(super::page::layout(
            "Sign-in failed",
            "",
            &format!(
                "<p class=alert>Sign-in failed: {}.</p><p><a href=\"/auth/login\">Try again</a></p>",
                esc(why)
            ),
        )),
    )
        .into_response()
}

/// `GET /auth/callback`: GitHub sends the browser back with a code.
pub async fn callback(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<CallbackQuery>,
) -> Response {
    let Some(sign_in) = s.sign_in.as_ref() else {
        return (StatusCode::NOT_FOUND, "sign-in is not set up\n").into_response();
    };
    if let Some(e) = q.error_description {
        return refused(&format!("GitHub said: {e}"));
    }
    let pending: Option<Pending> = headers
        .get(header::COOKIE)
        .and_then(|c| c.to_str().ok())
        .and_then(|c| session::cookie(c, session::STATE_COOKIE))
        .and_then(|sealed| sign_in.sealer.open(session::STATE_COOKIE, sealed));
    let (Some(pending), Some(state), Some(code)) = (pending, q.state, q.code) else {
        return refused("the sign-in was not started here, or took too long");
    };
    if !session::same(&pending.state, &state) || pending.expires < Utc::now().timestamp() {
        return refused("the sign-in was not started here, or took too long");
    }
    let token = match sign_in.exchange(&code).await {
        Ok(t) => t,
        Err(e) => return refused(&e),
    };
    let login = match sign_in.login(&token).await {
        Ok(l) => l,
        Err(e) => return refused(&e),
    };
    if let Some(f) = s.fleet_file() {
        sign_in.note_teams(&f);
    }
    let named: Vec<String> = sign_in
        .named_teams
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .cloned()
        .collect();
    let teams = sign_in.teams_of(&token, &login, &named).await;
    let Some(csrf) = session::token() else {
        return (StatusCode::INTERNAL_SERVER_ERROR, "no randomness\n").into_response();
    };
    let session = Session {
        login: login.clone(),
        teams,
        token,
        csrf,
        expires: Utc::now().timestamp() + session::SESSION_SECONDS,
    };
    tracing::info!(user = %login, teams = ?session.teams, "signed in");
    let sealed = sign_in.sealer.seal(session::COOKIE, &session);
    let mut resp = Redirect::to(local_path(&pending.next)).into_response();
    let h = resp.headers_mut();
    h.append(
        header::SET_COOKIE,
        sign_in.cookie(session::COOKIE, &sealed, "/", session::SESSION_SECONDS),
    );
    h.append(
        header::SET_COOKIE,
        sign_in.cookie(session::STATE_COOKIE, "", "/auth", 0),
    );
    resp
}

#[derive(Debug, serde::Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

/// `POST /auth/logout`.
pub async fn logout(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    axum::Form(form): axum::Form<CsrfForm>,
) -> Response {
    let Some(sign_in) = s.sign_in.as_ref() else {
        return (StatusCode::NOT_FOUND, "sign-in is not set up\n").into_response();
    };
    let Some(session) = sign_in.session(&headers) else {
        return Redirect::to("/").into_response();
    };
    if !session::same(&session.csrf, &form.csrf) || !sign_in.same_origin(&headers) {
        return (
            StatusCode::FORBIDDEN,
            "refused: the form did not come from this page\n",
        )
            .into_response();
    }
    let mut resp = Redirect::to("/").into_response();
    resp.headers_mut().append(
        header::SET_COOKIE,
        sign_in.cookie(session::COOKIE, "", "/", 0),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fleet(text: &str) -> FleetFile {
        FleetFile::decode(&format!("version 1\nname \"f\"\n{text}"))
            .value
            .unwrap()
    }

    #[test]
    fn roles_come_from_fleet_kdl_by_user_or_team() {
        let f = fleet("viewers { teams \"acme/eng\"; }\noperators { users \"olivia\"; teams \"acme/sre\"; }\n");
        assert_eq!(role(Some(&f), "olivia", &[]), Some(Role::Operator));
        assert_eq!(
            role(Some(&f), "Olivia", &[]),
            Some(Role::Operator),
            "logins ignore case"
        );
        assert_eq!(
            role(Some(&f), "sam", &["acme/sre".into()]),
            Some(Role::Operator)
        );
        assert_eq!(
            role(Some(&f), "vic", &["acme/eng".into()]),
            Some(Role::Viewer)
        );
        assert_eq!(role(Some(&f), "mallory", &["acme/other".into()]), None);
        assert_eq!(
            role(Some(&fleet("")), "olivia", &[]),
            None,
            "no roles, nobody"
        );
        assert_eq!(role(None, "olivia", &[]), None);
    }

    #[test]
    fn only_local_paths_are_followed_after_sign_in() {
        assert_eq!(local_path("/rollouts/edge?x=1"), "/rollouts/edge?x=1");
        for bad in [
            "//evil.example",
            "https://evil.example/",
            "evil",
            "/\\evil",
            "/\t/evil.example",
            "/\n/evil.example",
        ] {
            assert_eq!(local_path(bad), "/", "{bad}");
        }
    }

    #[test]
    fn writes_must_come_from_this_server() {
        let sign_in = SignIn::new(
            "id".into(),
            "secret".into(),
            "https://github.com",
            "https://api.github.com",
            Some("https://fleet.example.com/".into()),
            Sealer::new(&[1u8; 32]),
        );
        let h = |pairs: &[(&'static str, &'static str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.insert(*k, HeaderValue::from_static(v));
            }
            m
        };
        assert!(sign_in.same_origin(&h(&[("origin", "https://fleet.example.com")])));
        assert!(sign_in.same_origin(&h(&[(
            "referer",
            "https://fleet.example.com/rollouts/edge"
        )])));
        assert!(!sign_in.same_origin(&h(&[("origin", "https://evil.example")])));
        assert!(!sign_in.same_origin(&h(&[("referer", "https://fleet.example.com.evil/")])));
        assert!(!sign_in.same_origin(&h(&[])));
        assert!(!sign_in.same_origin(&h(&[
            ("origin", "https://fleet.example.com"),
            ("sec-fetch-site", "cross-site")
        ])));
    }
}
