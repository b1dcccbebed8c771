//! The buttons of the status pages, as git changes: pause, resume and
//! roll back commit the same edit of `rollouts/<name>.kdl` the CLI makes
//! (`crate::steer`), authored by the signed-in operator and pushed to the
//! spec branch; approve posts an approving review, with the operator's own
//! GitHub token, on the pull request that brought the waiting change. The
//! audit log stays `git log` (and the pull request's reviews).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::Extension;
use gitfleet_schemas::state::Phase;

use super::auth::{Role, Viewer};
use super::html::esc;
use super::session;
use super::AppState;
use crate::git::{Author, GitError, Mirror};
use crate::steer::Steer;

/// How many times a commit is tried again on a branch that moved.
const TRIES: u32 = 3;

/// The mirror the buttons commit through: its own, so a pass never waits
/// for a person and a person never waits for a pass.
pub struct Actions {
    /// Opened at the first button pressed (so a fleet whose repo is away
    /// at start never holds the server up), and kept.
    mirror: Mutex<Option<Mirror>>,
    git: crate::setup::GitArgs,
    cache: std::path::PathBuf,
    /// The fleet repo on GitHub, for approvals (made as the operator).
    pub github: Option<crate::github::GitHubConfig>,
}

impl std::fmt::Debug for Actions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Actions")
            .field("github", &self.github)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    #[error("rollouts/{0}.kdl is not in the fleet repo")]
    NoRollout(String),
    #[error("the edit would leave the fleet repo with errors: {0}")]
    Check(String),
    #[error("opening the mirror the pages' actions commit through: {0}")]
    Open(String),
    #[error("the spec branch kept moving while committing {TRIES} times; try again")]
    Busy,
    #[error(transparent)]
    Git(#[from] GitError),
}

impl Actions {
    /// Actions on the repo `git` names, through a mirror kept in `cache`.
    pub fn new(
        git: crate::setup::GitArgs,
        cache: std::path::PathBuf,
        github: Option<crate::github::GitHubConfig>,
    ) -> Actions {
        Actions {
            mirror: Mutex::new(None),
            git,
            cache,
            github,
        }
    }

    /// Commit `steer` of rollout `name` for `login`: the commit, or `None`
    /// when the file already says so. Blocking (git).
    pub fn steer(
        &self,
        name: &str,
        steer: Steer,
        login: &str,
        why: Option<&str>,
    ) -> Result<Option<git2::Oid>, ActionError> {
        let mut held = self.mirror.lock().unwrap_or_else(|p| p.into_inner());
        if held.is_none() {
            let opened = crate::setup::open_mirror(&self.git, &self.cache)
                .map_err(|e| ActionError::Open(format!("{e:#}")))?;
            *held = Some(opened);
        }
        let Some(mirror) = held.as_ref() else {
            return Err(ActionError::Busy);
        };
        let path = format!("rollouts/{name}.kdl");
        let author = Author {
            name: login.to_owned(),
            email: format!("{login}@users.noreply.github.com"),
        };
        let message = steer.message(
            name,
            why,
            &format!(
                "Requested by {login} on the status pages of gitfleet serve.\n\nRequested-by: {login}"
            ),
        );
        for _ in 0..TRIES {
            let heads = mirror.fetch()?;
            let mut files = mirror.files_at(heads.branch)?;
            let text = files
                .text(&path)
                .ok_or_else(|| ActionError::NoRollout(name.to_owned()))?
                .to_owned();
            let edited = steer.edit(&text);
            if edited == text {
                return Ok(None);
            }
            files.insert(path.clone(), edited.clone().into_bytes());
            let checked = gitfleet_policy::check(&files);
            if checked.has_errors() {
                let first = checked
                    .diagnostics
                    .iter()
                    .find(|d| d.severity == gitfleet_schemas::Severity::Error)
                    .map(|d| d.to_string())
                    .unwrap_or_default();
                return Err(ActionError::Check(first));
            }
            let changes = BTreeMap::from([(path.clone(), Some(edited.into_bytes()))]);
            match mirror.commit_to_spec(heads.branch, &changes, &message, &author) {
                Ok(made) => return Ok(made),
                // The branch moved under us: read it again. Any other
                // refusal (protection, a hook) is the answer.
                Err(GitError::Rejected { status, .. })
                    if status.starts_with("non-fast-forward") =>
                {
                    continue
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(ActionError::Busy)
    }
}

#[derive(Debug, serde::Deserialize)]
pub struct ActionForm {
    #[serde(default)]
    csrf: String,
    /// Why, for the commit message.
    #[serde(default)]
    why: String,
    /// The environment an approval is for.
    #[serde(default)]
    env: String,
    /// The fleet whose page the form is on (empty with one fleet).
    #[serde(default)]
    fleet: String,
}

fn refuse(status: StatusCode, why: &str) -> Response {
    (
        status,
        Html(super::page::layout(
            "Refused",
            "",
            &format!("<p class=alert>Refused: {}.</p>", esc(why)),
        )),
    )
        .into_response()
}

/// `POST /rollouts/<name>/<action>`: an operator's button.
pub async fn act(
    State(s): State<Arc<AppState>>,
    Path((name, action)): Path<(String, String)>,
    viewer: Option<Extension<Viewer>>,
    headers: HeaderMap,
    axum::Form(form): axum::Form<ActionForm>,
) -> Response {
    let (Some(sign_in), Some(actions)) = (s.sign_in.as_ref(), s.actions.as_ref()) else {
        return refuse(
            StatusCode::NOT_FOUND,
            "the pages take actions only with sign-in set up",
        );
    };
    let Some(Extension(viewer)) = viewer else {
        return refuse(StatusCode::UNAUTHORIZED, "sign in first");
    };
    // The form must carry this session's token and come from these pages.
    if !session::same(&viewer.csrf, &form.csrf) || !sign_in.same_origin(&headers) {
        tracing::warn!(user = %viewer.login, rollout = %name, action = %action, "refused a write without this session's CSRF token or from another origin");
        return refuse(
            StatusCode::FORBIDDEN,
            "the form did not come from this page (CSRF check)",
        );
    }
    // Several fleets share the pages' paths: the form says whose it was.
    let here = s.name.as_deref().unwrap_or("");
    if form.fleet != here {
        return refuse(
            StatusCode::CONFLICT,
            &format!(
                "this page was fleet `{}`'s, but the browser now looks at fleet `{here}`; reload the page and press again",
                form.fleet
            ),
        );
    }
    if viewer.role != Role::Operator {
        tracing::warn!(user = %viewer.login, rollout = %name, action = %action, "refused a write by a viewer");
        return refuse(
            StatusCode::FORBIDDEN,
            &format!(
                "{} may look, not act: fleet.kdl's `operators` do not name them",
                viewer.login
            ),
        );
    }
    let done = |what: String| {
        let _ = s.trigger.try_send(());
        let mut resp =
            Redirect::to(&format!("/rollouts/{}", crate::fmt::url_part(&name))).into_response();
        resp.headers_mut()
            .append(axum::http::header::SET_COOKIE, sign_in.flash_cookie(&what));
        resp
    };
    if action == "approve" {
        return match approve(&s, actions, &viewer, &name, &form.env).await {
            Ok(what) => done(what),
            Err(why) => refuse(StatusCode::CONFLICT, &why),
        };
    }
    let Some(steer) = Steer::parse(&action) else {
        return refuse(StatusCode::NOT_FOUND, &format!("no action `{action}`"));
    };
    let why = Some(form.why.as_str()).filter(|w| !w.trim().is_empty());
    let (login, rollout) = (viewer.login.clone(), name.clone());
    let why = why.map(str::to_owned);
    let actions = Arc::clone(&s);
    let made = tokio::task::spawn_blocking(move || {
        let Some(actions) = actions.actions.as_ref() else {
            return Err(ActionError::Busy);
        };
        actions.steer(&rollout, steer, &login, why.as_deref())
    })
    .await;
    match made {
        Ok(Ok(Some(oid))) => {
            tracing::info!(user = %viewer.login, rollout = %name, action = steer.verb(), commit = %oid, "committed for an operator");
            done(format!(
                "{} committed as {} by {}",
                steer.verb(),
                &oid.to_string()[..12],
                viewer.login
            ))
        }
        Ok(Ok(None)) => done(format!(
            "rollouts/{name}.kdl already says {}; nothing committed",
            steer.verb()
        )),
        Ok(Err(e)) => {
            tracing::warn!(user = %viewer.login, rollout = %name, action = steer.verb(), error = %gitfleet_io::error_chain(&e), "an operator's action failed");
            refuse(StatusCode::CONFLICT, &gitfleet_io::error_chain(&e))
        }
        Err(_) => refuse(StatusCode::INTERNAL_SERVER_ERROR, "the action panicked"),
    }
}

/// Approve, as the operator on GitHub, the change `name` waits with in
/// `env`: an approving review of the head of the pull request that
/// brought it.
async fn approve(
    s: &AppState,
    actions: &Actions,
    viewer: &Viewer,
    name: &str,
    env: &str,
) -> Result<String, String> {
    let github = actions
        .github
        .as_ref()
        .ok_or("approving from the pages needs --github-repo")?
        .as_user(&viewer.token)
        .connect()
        .map_err(|e| gitfleet_io::error_chain(&e))?;
    let commit = {
        let snap = s.snapshot.borrow();
        snap.state
            .get(name)
            .and_then(|r| r.environments.get(env))
            .filter(|e| e.phase == Phase::AwaitingApproval)
            .map(|e| e.source_commit.clone())
    }
    .ok_or_else(|| format!("{name} is not awaiting approval in {env}"))?;
    let short = &commit[..commit.len().min(12)];
    let pull = github
        .pull_of(&commit)
        .await
        .map_err(|e| gitfleet_io::error_chain(&e))?
        .ok_or_else(|| {
            format!("no merged pull request brought {short}; approve it with `gitfleet approve --env {env} {short}`")
        })?;
    let number = pull.number;
    github
        .approve(number, &pull.head)
        .await
        .map_err(|e| gitfleet_io::error_chain(&e))?;
    tracing::info!(user = %viewer.login, rollout = %name, environment = %env, pull = number, "approved for an operator");
    Ok(format!(
        "{} approved pull request #{number} (which brought {short}) for {env}",
        viewer.login
    ))
}
