//! Several fleets behind one server (`gitfleet serve --fleets`): each
//! fleet's own routes under `/fleets/<name>/` (what agents' `report-to`
//! and GitHub's webhooks name), the pages at `/` for the fleet a browser
//! picked (a cookie, the first fleet by default), one `/metrics` with a
//! `fleet` label, and `/fleets` to switch.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use tower::ServiceExt as _;

use super::html::esc;
use super::AppState;

/// The cookie naming the fleet a browser looks at.
pub const FLEET_COOKIE: &str = "gitfleet_fleet";

/// One fleet served.
#[derive(Clone)]
struct Served {
    pub name: String,
    pub state: Arc<AppState>,
    routes: Router,
}

struct Fleets {
    list: Vec<Served>,
}

impl Fleets {
    fn get(&self, name: &str) -> Option<&Served> {
        self.list.iter().find(|f| f.name == name)
    }
}

/// The routes of every fleet in `fleets` (in order; the first is the
/// default), over one listener.
pub fn router(fleets: Vec<(String, Arc<AppState>)>) -> Router {
    let list: Vec<Served> = fleets
        .into_iter()
        .map(|(name, state)| Served {
            routes: super::router(Arc::clone(&state)),
            name,
            state,
        })
        .collect();
    let nested: Vec<(String, Router)> = list
        .iter()
        .map(|f| (format!("/fleets/{}", f.name), f.routes.clone()))
        .collect();
    let shared = Arc::new(Fleets { list });
    let mut app: Router = Router::new()
        .route("/fleets", get(list_page))
        .route("/select-fleet/{name}", get(select))
        .route("/metrics", get(metrics))
        .fallback(dispatch)
        .with_state(shared);
    for (path, routes) in nested {
        app = app.nest(&path, routes);
    }
    app
}

/// A request outside `/fleets/`: to the fleet the browser picked.
async fn dispatch(State(f): State<Arc<Fleets>>, req: Request) -> Response {
    // `/fleets/<name>/` itself: that fleet's pages.
    if let Some(name) = req
        .uri()
        .path()
        .strip_prefix("/fleets/")
        .and_then(|rest| rest.strip_suffix('/'))
        .filter(|name| f.get(name).is_some())
    {
        return Redirect::to(&format!("/select-fleet/{name}")).into_response();
    }
    let picked = req
        .headers()
        .get(header::COOKIE)
        .and_then(|c| c.to_str().ok())
        .and_then(|c| super::session::cookie(c, FLEET_COOKIE))
        .and_then(|name| f.get(name))
        .or_else(|| f.list.first());
    match picked {
        Some(fleet) => match fleet.routes.clone().oneshot(req).await {
            Ok(resp) => resp,
            Err(never) => match never {},
        },
        None => (StatusCode::NOT_FOUND, "no fleet is served\n").into_response(),
    }
}

/// `/select-fleet/<name>`: look at this fleet from now on (a path of its
/// own: `/fleets/<name>/...` is the fleet's).
async fn select(State(f): State<Arc<Fleets>>, Path(name): Path<String>) -> Response {
    if f.get(&name).is_none() {
        return (
            StatusCode::NOT_FOUND,
            format!("no fleet `{name}` is served\n"),
        )
            .into_response();
    }
    let mut resp = Redirect::to("/").into_response();
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{FLEET_COOKIE}={name}; Path=/; Max-Age=31536000; SameSite=Lax"
    )) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    resp
}

/// `/fleets`: every fleet and how its last pass went.
async fn list_page(State(f): State<Arc<Fleets>>, headers: axum::http::HeaderMap) -> Response {
    // With sign-in, only someone signed in sees which fleets fail and why.
    // With sign-in, only someone with a role in some fleet sees which
    // fleets fail and why.
    if let Some(sign_in) = f.list.iter().find_map(|fleet| fleet.state.sign_in.as_ref()) {
        let Some(session) = sign_in.session(&headers) else {
            return Redirect::to("/auth/login?next=%2Ffleets").into_response();
        };
        let allowed = f.list.iter().any(|fleet| {
            super::auth::role(
                fleet.state.fleet_file().as_ref(),
                &session.login,
                &session.teams,
            )
            .is_some()
        });
        if !allowed {
            return (
                StatusCode::FORBIDDEN,
                "no fleet here names you among its viewers or operators\n",
            )
                .into_response();
        }
    }
    let mut body = String::from(
        "<h2>Fleets</h2><table><tr><th>Fleet</th><th>Passes</th><th>Last pass</th></tr>",
    );
    for fleet in &f.list {
        let snap = fleet.state.snapshot.borrow();
        let last = match (&snap.error, snap.at) {
            (Some(e), _) => format!("<span class=alert>failed: {}</span>", esc(e)),
            (None, Some(at)) => format!("ok at {}", at.format("%H:%M:%S")),
            (None, None) => "none yet".to_owned(),
        };
        let _ = write!(
            body,
            "<tr data-fleet=\"{n}\"><td><a href=\"/select-fleet/{n}\">{n}</a></td><td>{}</td><td>{last}</td></tr>",
            snap.passes,
            n = esc(&fleet.name),
        );
    }
    body.push_str("</table>");
    Html(super::page::layout("Fleets", "", &body)).into_response()
}

/// `/metrics`: every fleet's, each series labelled with its fleet.
async fn metrics(State(f): State<Arc<Fleets>>) -> Response {
    let parts: Vec<(String, String)> = f
        .list
        .iter()
        .map(|fleet| (fleet.name.clone(), super::render_metrics(&fleet.state)))
        .collect();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        labelled(&parts),
    )
        .into_response()
}

/// Expositions merged: each family's `# HELP` and `# TYPE` once, then its
/// samples from every part with `fleet="<name>"` first among the labels.
pub fn labelled(parts: &[(String, String)]) -> String {
    // family -> (header lines, samples); families in first-seen order.
    let mut order: Vec<String> = Vec::new();
    let mut families: BTreeMap<String, (Vec<String>, Vec<String>)> = BTreeMap::new();
    for (fleet, text) in parts {
        let mut current = String::new();
        for line in text.lines() {
            if let Some(rest) = line
                .strip_prefix("# HELP ")
                .or_else(|| line.strip_prefix("# TYPE "))
            {
                current = rest.split_whitespace().next().unwrap_or("").to_owned();
                let entry = families.entry(current.clone()).or_insert_with(|| {
                    order.push(current.clone());
                    Default::default()
                });
                if !entry.0.iter().any(|h| h == line) {
                    entry.0.push(line.to_owned());
                }
                continue;
            }
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let label = format!("fleet=\"{fleet}\"");
            let sample = match line.find(['{', ' ']) {
                Some(i) if line.as_bytes()[i] == b'{' => {
                    let rest = &line[i + 1..];
                    let sep = if rest.starts_with('}') { "" } else { "," };
                    format!("{}{{{label}{sep}{rest}", &line[..i])
                }
                Some(i) => format!("{}{{{label}}}{}", &line[..i], &line[i..]),
                None => continue,
            };
            let entry = families.entry(current.clone()).or_insert_with(|| {
                order.push(current.clone());
                Default::default()
            });
            entry.1.push(sample);
        }
    }
    let mut out = String::new();
    for name in order {
        if let Some((headers, samples)) = families.get(&name) {
            for l in headers.iter().chain(samples) {
                out.push_str(l);
                out.push('\n');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_of_fleets_merge_by_family_with_a_fleet_label() {
        let a = "# HELP x_total Things.\n# TYPE x_total counter\nx_total{kind=\"a\"} 1\nx_total{kind=\"b\"} 2\n# HELP up Up.\n# TYPE up gauge\nup 1\n";
        let b = "# HELP x_total Things.\n# TYPE x_total counter\nx_total{kind=\"a\"} 5\n# HELP up Up.\n# TYPE up gauge\nup 0\n";
        let got = labelled(&[("edge".into(), a.into()), ("core".into(), b.into())]);
        assert_eq!(
            got,
            "# HELP x_total Things.\n# TYPE x_total counter\n\
x_total{fleet=\"edge\",kind=\"a\"} 1\nx_total{fleet=\"edge\",kind=\"b\"} 2\nx_total{fleet=\"core\",kind=\"a\"} 5\n\
# HELP up Up.\n# TYPE up gauge\nup{fleet=\"edge\"} 1\nup{fleet=\"core\"} 0\n"
        );
    }

    #[test]
    fn an_empty_label_set_takes_the_fleet_alone() {
        let got = labelled(&[("e".into(), "# TYPE h histogram\nh_bucket{} 1\n".into())]);
        assert_eq!(got, "# TYPE h histogram\nh_bucket{fleet=\"e\"} 1\n");
    }
}
