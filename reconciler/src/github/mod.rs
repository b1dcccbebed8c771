//! The reconciler's side of GitHub: approvals read from the reviews of the
//! pull request that brought a change (or of the merged promotion pull
//! request that asks for it), a commit status per environment
//! (`gitfleet/<env>`) on each rollout's source commit, plan previews as
//! check runs, and promotion pull requests for changes waiting for
//! approvals.
//!
//! Through octocrab's raw REST calls with our own small response types, so
//! a field GitHub adds or a fake leaves out never breaks a pass. GitHub is
//! optional and never blocks the fleet: a failed call is logged, the change
//! keeps waiting for its approvals, and the next pass asks again.

pub mod webhook;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::PathBuf;

use gitfleet_policy::plan::Targets;
use gitfleet_policy::promotion;
use gitfleet_policy::reviews::{self, Members, PullRequest, Review, ReviewState};
use gitfleet_policy::rules::Rules;
use gitfleet_policy::statuses::{CommitStatus, Status};
use gitfleet_schemas::promotion::{promotion_branch, promotions_path, rotation_branch};
use gitfleet_schemas::state::RolloutState;
use serde::{Deserialize, Serialize};

use crate::git::{Author, Mirror};

/// How to reach GitHub. Without `--github-repo`, nothing here runs.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct GitHubArgs {
    /// The fleet repo on GitHub, `owner/name`: approvals come from its
    /// pull request reviews, and commit statuses go to it.
    #[arg(long, env = "GITFLEET_GITHUB_REPO", value_name = "OWNER/NAME")]
    pub github_repo: Option<String>,
    /// The REST API's base URL (GitHub Enterprise: https://HOST/api/v3).
    #[arg(
        long,
        env = "GITFLEET_GITHUB_API",
        default_value = "https://api.github.com"
    )]
    pub github_api: String,
    /// A file holding a token (personal or fine-grained) to call GitHub with.
    #[arg(
        long,
        env = "GITFLEET_GITHUB_TOKEN_FILE",
        conflicts_with = "github_app_id"
    )]
    pub github_token_file: Option<PathBuf>,
    /// Authenticate as this GitHub App (with --github-app-key and
    /// --github-installation).
    #[arg(long, env = "GITFLEET_GITHUB_APP_ID", requires_all = ["github_app_key", "github_installation"])]
    pub github_app_id: Option<u64>,
    /// The App's private key (PEM).
    #[arg(long, env = "GITFLEET_GITHUB_APP_KEY")]
    pub github_app_key: Option<PathBuf>,
    /// The App's installation id on the fleet repo's owner.
    #[arg(long, env = "GITFLEET_GITHUB_INSTALLATION")]
    pub github_installation: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum GitHubError {
    #[error("--github-repo {0:?} is not owner/name")]
    Repo(String),
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("--github-repo needs --github-token-file, or --github-app-id with --github-app-key and --github-installation")]
    NoAuth,
    #[error("{path} is not an RSA private key in PEM: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("setting up the GitHub client for {api}: {source}")]
    Client {
        api: String,
        source: Box<octocrab::Error>,
    },
    #[error("GitHub {what}: {source}")]
    Call {
        what: String,
        source: Box<octocrab::Error>,
    },
}

/// A GitHub client for one repository.
pub struct GitHub {
    crab: octocrab::Octocrab,
    owner: String,
    repo: String,
    /// The last status per (commit, context), posted or read from GitHub:
    /// posted again only when it changes.
    posted: HashMap<(String, String), (String, String)>,
    /// Commits whose statuses were read, so a restarted replica does not
    /// post them all again.
    seeded: HashSet<String>,
    /// Pull request heads whose plan preview is published.
    previewed: HashSet<String>,
    /// Heads whose preview could not be published, and when: retried
    /// after PREVIEW_BACKOFF.
    preview_failed: HashMap<String, std::time::Instant>,
    /// The last pass's approvals, with the commit of the rules they were
    /// judged under: kept for a change whose reviews cannot be read this
    /// pass, so a GitHub hiccup does not send it back, as long as the
    /// rules in force are the same.
    last_approved: BTreeSet<(String, String, String)>,
    /// Whether plan previews can be published (App auth only).
    previews: bool,
    /// Environment -> the promotion file its pull request (or the spec
    /// branch) holds, as this process last pushed or saw it.
    promoted: BTreeMap<String, Vec<u8>>,
    /// Environments known to have no open promotion pull request.
    unpromoted: BTreeSet<String>,
    /// Node -> the node file its key rotation pull request holds, as this
    /// process last pushed it.
    rotated: BTreeMap<String, Vec<u8>>,
}

/// How long a head whose preview failed waits before the next try.
const PREVIEW_BACKOFF: std::time::Duration = std::time::Duration::from_secs(600);
/// Plan previews published per pass at most; the rest wait for the next.
pub const PREVIEWS_PER_PASS: usize = 5;
/// Connect and read timeouts of every GitHub request.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
const READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

impl std::fmt::Debug for GitHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitHub")
            .field("repo", &format!("{}/{}", self.owner, self.repo))
            .finish_non_exhaustive()
    }
}

fn read(path: &PathBuf) -> Result<String, GitHubError> {
    std::fs::read_to_string(path).map_err(|source| GitHubError::Read {
        path: path.clone(),
        source,
    })
}

/// How the client authenticates.
#[derive(Clone)]
enum Auth {
    Token(String),
    App {
        id: u64,
        key: octocrab::EncodingKey,
        installation: u64,
    },
}

/// Everything checked before a runtime exists: the repo name, the
/// credentials read. [`GitHubConfig::connect`] makes the client.
#[derive(Clone)]
pub struct GitHubConfig {
    api: String,
    owner: String,
    repo: String,
    auth: Auth,
}

impl std::fmt::Debug for GitHubConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitHubConfig")
            .field("api", &self.api)
            .field("repo", &format!("{}/{}", self.owner, self.repo))
            .finish_non_exhaustive()
    }
}

impl GitHubArgs {
    /// The configuration these arguments describe, or `None` without a
    /// repo: a bad repo name or an unreadable credential fails here, at
    /// start-up.
    pub fn config(&self) -> Result<Option<GitHubConfig>, GitHubError> {
        let Some(full) = &self.github_repo else {
            return Ok(None);
        };
        let (owner, repo) = full
            .split_once('/')
            .filter(|(o, r)| !o.is_empty() && !r.is_empty() && !r.contains('/'))
            .ok_or_else(|| GitHubError::Repo(full.clone()))?;
        let auth = match (&self.github_token_file, self.github_app_id) {
            (Some(path), _) => Auth::Token(read(path)?.trim().to_owned()),
            (None, Some(id)) => {
                let path = self.github_app_key.as_ref().ok_or(GitHubError::NoAuth)?;
                let key =
                    octocrab::EncodingKey::from_rsa_pem(read(path)?.as_bytes()).map_err(|e| {
                        GitHubError::Key {
                            path: path.clone(),
                            reason: e.to_string(),
                        }
                    })?;
                let installation = self.github_installation.ok_or(GitHubError::NoAuth)?;
                Auth::App {
                    id,
                    key,
                    installation,
                }
            }
            (None, None) => return Err(GitHubError::NoAuth),
        };
        // A bad URL fails here, at start-up, not in every pass.
        octocrab::Octocrab::builder()
            .base_uri(self.github_api.as_str())
            .map_err(|source| GitHubError::Client {
                api: self.github_api.clone(),
                source: Box::new(source),
            })?;
        Ok(Some(GitHubConfig {
            api: self.github_api.clone(),
            owner: owner.to_owned(),
            repo: repo.to_owned(),
            auth,
        }))
    }
}

impl GitHubConfig {
    /// The same repo, reached as the person `token` belongs to (a
    /// signed-in operator): what they do there is theirs.
    pub fn as_user(&self, token: &str) -> GitHubConfig {
        GitHubConfig {
            auth: Auth::Token(token.to_owned()),
            ..self.clone()
        }
    }

    /// The client; inside a Tokio runtime (octocrab's service spawns).
    pub fn connect(&self) -> Result<GitHub, GitHubError> {
        let client = |source| GitHubError::Client {
            api: self.api.clone(),
            source: Box::new(source),
        };
        let builder = octocrab::Octocrab::builder()
            .set_connect_timeout(Some(CONNECT_TIMEOUT))
            .set_read_timeout(Some(READ_TIMEOUT))
            .base_uri(self.api.as_str())
            .map_err(client)?;
        let crab = match &self.auth {
            Auth::Token(token) => builder
                .personal_token(token.clone())
                .build()
                .map_err(client)?,
            Auth::App {
                id,
                key,
                installation,
            } => builder
                .app(octocrab::models::AppId(*id), key.clone())
                .build()
                .map_err(client)?
                .installation(octocrab::models::InstallationId(*installation))
                .map_err(client)?,
        };
        Ok(GitHub {
            crab,
            owner: self.owner.clone(),
            repo: self.repo.clone(),
            posted: HashMap::new(),
            seeded: HashSet::new(),
            previewed: HashSet::new(),
            preview_failed: HashMap::new(),
            last_approved: BTreeSet::new(),
            promoted: BTreeMap::new(),
            unpromoted: BTreeSet::new(),
            rotated: BTreeMap::new(),
            previews: matches!(self.auth, Auth::App { .. }),
        })
    }
}

// The few fields read from GitHub's answers.
#[derive(Debug, Deserialize)]
struct User {
    login: String,
}

#[derive(Debug, Deserialize)]
struct Head {
    sha: String,
}

#[derive(Debug, Deserialize)]
struct Pull {
    number: u64,
    user: User,
    head: Head,
    #[serde(default)]
    merged_at: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ReviewJson {
    user: Option<User>,
    state: String,
    #[serde(default)]
    commit_id: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Membership {
    state: String,
}

#[derive(Debug, Deserialize)]
struct CheckRuns {
    #[serde(default)]
    check_runs: Vec<CheckRunId>,
}

#[derive(Debug, Deserialize)]
struct CheckRunId {
    id: u64,
}

#[derive(Debug, Serialize)]
struct AnnotationJson<'a> {
    path: &'a str,
    start_line: u32,
    end_line: u32,
    annotation_level: &'a str,
    title: &'a str,
    message: &'a str,
}

/// The check run that carries a pull request's plan preview.
pub const PLAN_CHECK: &str = "gitfleet/plan";

#[derive(Debug, Deserialize)]
struct Combined {
    #[serde(default)]
    statuses: Vec<StatusJson>,
}

#[derive(Debug, Deserialize)]
struct StatusJson {
    context: String,
    state: String,
    #[serde(default)]
    description: Option<String>,
}

#[derive(Debug, Serialize)]
struct StatusBody<'a> {
    state: &'a str,
    context: &'a str,
    description: &'a str,
}

/// One path segment of an API route, percent-encoded: a name from the repo
/// or from GitHub never changes which route is called.
fn seg(part: &str) -> String {
    crate::fmt::url_part(part)
}

fn not_found(e: &octocrab::Error) -> bool {
    matches!(e, octocrab::Error::GitHub { source, .. } if source.status_code == 404)
}

impl GitHub {
    fn call(what: impl Into<String>) -> impl FnOnce(octocrab::Error) -> GitHubError {
        let what = what.into();
        move |source| GitHubError::Call {
            what,
            source: Box::new(source),
        }
    }

    /// The merged pull request that brought `commit`, with its reviews.
    pub async fn pull_of(&self, commit: &str) -> Result<Option<PullRequest>, GitHubError> {
        let (o, r) = (&self.owner, &self.repo);
        let pulls: Vec<Pull> = self
            .crab
            .get(
                format!("/repos/{o}/{r}/commits/{}/pulls", seg(commit)),
                None::<&()>,
            )
            .await
            .map_err(Self::call(format!("pull requests of commit {commit}")))?;
        // The merged one (a commit can be in several open ones too).
        let Some(pull) = pulls.into_iter().find(|p| p.merged_at.is_some()) else {
            return Ok(None);
        };
        self.with_reviews(pull.number, pull.user.login, pull.head.sha)
            .await
            .map(Some)
    }

    /// Pull request `n` (by `author`, at `head`) with its reviews.
    async fn with_reviews(
        &self,
        n: u64,
        author: String,
        head: String,
    ) -> Result<PullRequest, GitHubError> {
        let (o, r) = (&self.owner, &self.repo);
        let mut reviews = Vec::new();
        for page in 1u32.. {
            let batch: Vec<ReviewJson> = self
                .crab
                .get(
                    format!("/repos/{o}/{r}/pulls/{n}/reviews"),
                    Some(&[("per_page", 100), ("page", page)]),
                )
                .await
                .map_err(Self::call(format!("reviews of pull request #{n}")))?;
            let last = batch.len() < 100;
            reviews.extend(batch.into_iter().filter_map(|r| {
                Some(Review {
                    user: r.user?.login,
                    state: ReviewState::parse(&r.state)?,
                    commit: r.commit_id.unwrap_or_default(),
                })
            }));
            if last {
                break;
            }
        }
        Ok(PullRequest {
            number: n,
            author,
            head,
            reviews,
        })
    }

    /// The owners rules among `needs` an approving review of open pull
    /// request `pr` (its head, not by its author) satisfies, with the
    /// owner who approved: what a plan preview lists.
    pub async fn owners_of_pull(
        &self,
        pr: &PullRequest,
        needs: &[gitfleet_schemas::owners::Owners],
    ) -> Result<Vec<(String, String)>, GitHubError> {
        let pr = self
            .with_reviews(pr.number, pr.author.clone(), pr.head.clone())
            .await?;
        let (mut members, mut not_members) = (Members::new(), BTreeSet::new());
        let mut out = Vec::new();
        for owners in needs {
            let (verdict, _) = self
                .judge(
                    "preview",
                    &owners.as_approvals(),
                    &pr,
                    &mut members,
                    &mut not_members,
                )
                .await;
            if let Some(who) = verdict.counted.first() {
                out.push((owners.pattern.value.clone(), who.clone()));
            }
        }
        Ok(out)
    }

    /// Approve pull request `number` at its head `head`, as whoever this
    /// client authenticates as.
    pub async fn approve(&self, number: u64, head: &str) -> Result<(), GitHubError> {
        let (o, r) = (&self.owner, &self.repo);
        let body = serde_json::json!({
            "commit_id": head,
            "event": "APPROVE",
            "body": "Approved from gitfleet serve.",
        });
        let _: serde_json::Value = self
            .crab
            .post(
                format!("/repos/{o}/{r}/pulls/{number}/reviews"),
                Some(&body),
            )
            .await
            .map_err(Self::call(format!(
                "approving review of pull request #{number}"
            )))?;
        Ok(())
    }

    /// Whether `user` is an active member of `team` (`org/slug`).
    async fn member(&self, team: &str, user: &str) -> Result<bool, GitHubError> {
        let Some((org, slug)) = team.split_once('/') else {
            return Ok(false);
        };
        let got: Result<Membership, _> = self
            .crab
            .get(
                format!(
                    "/orgs/{}/teams/{}/memberships/{}",
                    seg(org),
                    seg(slug),
                    seg(user)
                ),
                None::<&()>,
            )
            .await;
        match got {
            Ok(m) => Ok(m.state == "active"),
            Err(e) if not_found(&e) => Ok(false),
            Err(e) => Err(Self::call(format!("membership of {user} in {team}"))(e)),
        }
    }

    /// Whether `pr`'s reviews meet `rule` (the verdict), and whether a team
    /// membership that could have changed the answer could not be read.
    async fn judge(
        &self,
        env: &str,
        rule: &gitfleet_schemas::Approvals,
        pr: &PullRequest,
        members: &mut Members,
        not_members: &mut BTreeSet<(String, String)>,
    ) -> (reviews::Verdict, bool) {
        let mut unreadable = false;
        for user in reviews::candidates(rule, pr) {
            for team in &rule.teams {
                let pair = (team.value.clone(), user.clone());
                let known = members.get(&team.value).is_some_and(|m| m.contains(&user));
                if known || not_members.contains(&pair) {
                    continue;
                }
                match self.member(&team.value, &user).await {
                    Ok(true) => {
                        members
                            .entry(team.value.clone())
                            .or_default()
                            .insert(user.clone());
                    }
                    Ok(false) => {
                        not_members.insert(pair);
                    }
                    Err(e) => {
                        tracing::warn!(team = %team.value, user = %user, error = %e, "cannot read team membership");
                        not_members.insert(pair);
                        unreadable = true;
                    }
                }
            }
        }
        let verdict = reviews::verdict(rule, pr, members);
        for (user, why) in &verdict.ignored {
            tracing::debug!(environment = %env, pull = pr.number, reviewer = %user, reason = %why, "review not counted");
        }
        if verdict.approved {
            tracing::info!(environment = %env, pull = pr.number, head = %pr.head, approvers = ?verdict.counted, "approved by review");
        }
        let unsure = unreadable && !verdict.approved;
        (verdict, unsure)
    }

    /// For each `(environment, commit)` of `asks`, the owners rules among
    /// those it asks that reviews satisfy, with an owner whose approval
    /// counted: for every commit the need lists, the merged pull request
    /// that brought it has an approving review of its head, not by its
    /// author, from one of the rule's users or a member of its teams. An
    /// unreadable pull request or membership counts as no approval (the
    /// change waits).
    pub async fn owner_reviews(
        &self,
        asks: &BTreeMap<(String, String), Vec<gitfleet_policy::owners::Need>>,
    ) -> BTreeMap<(String, String), Vec<(String, String)>> {
        let mut pulls: HashMap<String, Option<PullRequest>> = HashMap::new();
        let mut members: Members = BTreeMap::new();
        let mut not_members: BTreeSet<(String, String)> = BTreeSet::new();
        let mut out: BTreeMap<(String, String), Vec<(String, String)>> = BTreeMap::new();
        for ((env, commit), needs) in asks {
            for need in needs {
                let Some(commits) = &need.commits else {
                    continue;
                };
                let rule = need.rule.as_approvals();
                let mut by = None;
                for c in commits {
                    if !pulls.contains_key(c) {
                        let pull = self.pull_of(c).await.unwrap_or_else(|e| {
                            tracing::warn!(commit = %c, error = %e, "cannot read reviews for owners");
                            None
                        });
                        pulls.insert(c.clone(), pull);
                    }
                    let Some(Some(pr)) = pulls.get(c) else {
                        tracing::debug!(commit = %c, pattern = %need.rule.pattern.value, "no merged pull request brought a commit owners must review");
                        by = None;
                        break;
                    };
                    let (verdict, _) = self
                        .judge(env, &rule, pr, &mut members, &mut not_members)
                        .await;
                    match verdict.counted.first() {
                        Some(who) => by = Some((pr.number, who.clone())),
                        None => {
                            by = None;
                            break;
                        }
                    }
                }
                if let Some((pull, who)) = by {
                    tracing::info!(environment = %env, commit = %commit, pull, pattern = %need.rule.pattern.value, owner = %who, "owner approved by review");
                    out.entry((env.clone(), commit.clone()))
                        .or_default()
                        .push((need.rule.pattern.value.clone(), who));
                }
            }
        }
        out
    }

    /// The `(environment, commit)` pairs whose pull request reviews meet the
    /// approval rule in force in the environment (`rules`), among the
    /// rollouts waiting at an approval gate (or past it but not yet
    /// admitted) and the changes to the rules in `rule_asks`. The pull
    /// request is the one that brought the commit, or the merged promotion
    /// pull request that asks for it: `promoted` maps `(environment,
    /// commit)` to the spec branch commit that brought that environment's
    /// promotion file.
    pub async fn approvals(
        &mut self,
        rules: &Rules,
        targets: &Targets,
        state: &BTreeMap<String, RolloutState>,
        wanted: &BTreeMap<String, String>,
        rule_asks: &BTreeSet<(String, String)>,
        promoted: &BTreeMap<(String, String), String>,
    ) -> BTreeSet<(String, String)> {
        let mut asks: BTreeSet<(String, String)> = rule_asks.clone();
        for (rollout, commit) in wanted {
            for (_, in_force) in rules.iter() {
                if in_force.approval_rule().is_none() {
                    continue;
                }
                let env = &in_force.environment;
                // Only environments the rollout has nodes in.
                if targets
                    .get(rollout, &env.name.value)
                    .is_none_or(|m| m.is_empty())
                {
                    continue;
                }
                let at = state
                    .get(rollout)
                    .and_then(|s| s.environments.get(&env.name.value));
                if gitfleet_policy::owners::before_gate(at, commit) {
                    asks.insert((env.name.value.clone(), commit.clone()));
                }
            }
        }
        // commit -> its pull request; Err when it could not be read.
        let mut pulls: HashMap<String, Result<Option<PullRequest>, ()>> = HashMap::new();
        let mut members: Members = BTreeMap::new();
        // (team, user) pairs whose membership could not be read or is none.
        let mut not_members: BTreeSet<(String, String)> = BTreeSet::new();
        let mut out = BTreeSet::new();
        let mut judged = BTreeSet::new();
        for (env, commit) in &asks {
            let Some(in_force) = rules.env(env) else {
                continue;
            };
            let Some(rule) = in_force.approval_rule() else {
                continue;
            };
            let under = (env.clone(), commit.clone(), in_force.commit.clone());
            let ask = (env.clone(), commit.clone());
            let brought_by = std::iter::once(commit).chain(promoted.get(&ask));
            let mut approved = false;
            let mut unreadable = false;
            for via in brought_by {
                if !pulls.contains_key(via) {
                    let pull = self.pull_of(via).await.map_err(|e| {
                        tracing::warn!(commit = %via, error = %e, "cannot read reviews; keeping the last verdict");
                    });
                    pulls.insert(via.clone(), pull);
                }
                let pr = match pulls.get(via) {
                    Some(Ok(Some(pr))) => pr,
                    Some(Ok(None)) => {
                        tracing::debug!(environment = %env, commit = %via, "no merged pull request brought this commit");
                        continue;
                    }
                    _ => {
                        unreadable = true;
                        continue;
                    }
                };
                let (verdict, unsure) = self
                    .judge(env, rule, pr, &mut members, &mut not_members)
                    .await;
                if verdict.approved {
                    approved = true;
                    break;
                }
                unreadable |= unsure;
            }
            if approved || (unreadable && self.last_approved.contains(&under)) {
                out.insert(ask);
                judged.insert(under);
            }
        }
        self.last_approved = judged;
        out
    }

    /// Post `status` as `context` on `commit`, unless it is what was posted
    /// last. A failure is logged; the next pass tries again.
    pub async fn set_status(&mut self, commit: &str, context: &str, status: &Status) {
        if !self.seeded.contains(commit) {
            self.seed(commit).await;
        }
        let key = (commit.to_owned(), context.to_owned());
        let value = (status.state.to_owned(), status.description.clone());
        if self.posted.get(&key) == Some(&value) {
            return;
        }
        let (o, r) = (&self.owner, &self.repo);
        let body = StatusBody {
            state: status.state,
            context,
            description: &status.description,
        };
        let posted: Result<serde_json::Value, _> = self
            .crab
            .post(
                format!("/repos/{o}/{r}/statuses/{}", seg(commit)),
                Some(&body),
            )
            .await;
        match posted {
            Ok(_) => {
                self.posted.insert(key, value);
            }
            Err(e) => {
                tracing::warn!(commit = %commit, context = %context, error = %e, "cannot post the commit status")
            }
        }
    }

    /// Learn the statuses `commit` has (the latest per context) so only
    /// changes are posted. A failed read is retried with the next status.
    async fn seed(&mut self, commit: &str) {
        let (o, r) = (&self.owner, &self.repo);
        let got: Result<Combined, _> = self
            .crab
            .get(
                format!("/repos/{o}/{r}/commits/{}/status", seg(commit)),
                None::<&()>,
            )
            .await;
        match got {
            Ok(combined) => {
                for st in combined.statuses {
                    self.posted.insert(
                        (commit.to_owned(), st.context),
                        (st.state, st.description.unwrap_or_default()),
                    );
                }
                self.seeded.insert(commit.to_owned());
            }
            Err(e) => {
                tracing::warn!(commit = %commit, error = %e, "cannot read the commit's statuses")
            }
        }
    }

    /// Open pull requests whose head has no plan preview yet (without
    /// their reviews), at most PREVIEWS_PER_PASS.
    pub async fn pulls_to_preview(&mut self) -> Result<Vec<PullRequest>, GitHubError> {
        if !self.previews {
            return Ok(Vec::new());
        }
        self.preview_failed
            .retain(|_, at| at.elapsed() < PREVIEW_BACKOFF);
        let (o, r) = (&self.owner, &self.repo);
        let mut out = Vec::new();
        for page in 1u32.. {
            let batch: Vec<Pull> = self
                .crab
                .get(
                    format!("/repos/{o}/{r}/pulls"),
                    Some(&[
                        ("state", "open".to_owned()),
                        ("per_page", "100".to_owned()),
                        ("page", page.to_string()),
                    ]),
                )
                .await
                .map_err(Self::call("open pull requests"))?;
            let last = batch.len() < 100;
            out.extend(
                batch
                    .into_iter()
                    .filter(|p| {
                        !self.previewed.contains(&p.head.sha)
                            && !self.preview_failed.contains_key(&p.head.sha)
                    })
                    .map(|p| PullRequest {
                        number: p.number,
                        author: p.user.login,
                        head: p.head.sha,
                        reviews: Vec::new(),
                    }),
            );
            if last || out.len() >= PREVIEWS_PER_PASS {
                break;
            }
        }
        out.truncate(PREVIEWS_PER_PASS);
        Ok(out)
    }

    /// Note that `head`'s preview failed: it waits PREVIEW_BACKOFF.
    pub fn preview_failed(&mut self, head: &str) {
        self.preview_failed
            .insert(head.to_owned(), std::time::Instant::now());
    }

    /// Publish `preview` as the `gitfleet/plan` check run of `head`: the
    /// existing run updated in place, or a new one.
    pub async fn publish_preview(
        &mut self,
        head: &str,
        preview: &gitfleet_policy::preview::Preview,
    ) -> Result<(), GitHubError> {
        let (o, r) = (&self.owner, &self.repo);
        let existing: CheckRuns = self
            .crab
            .get(
                format!("/repos/{o}/{r}/commits/{}/check-runs", seg(head)),
                Some(&[("check_name", PLAN_CHECK)]),
            )
            .await
            .map_err(Self::call(format!("check runs of {head}")))?;
        let annotations: Vec<AnnotationJson<'_>> = preview
            .annotations
            .iter()
            .map(|a| AnnotationJson {
                path: &a.path,
                start_line: a.start_line,
                end_line: a.end_line,
                annotation_level: a.level,
                title: &a.title,
                message: &a.message,
            })
            .collect();
        let body = serde_json::json!({
            "name": PLAN_CHECK,
            "head_sha": head,
            "status": "completed",
            "conclusion": preview.conclusion,
            "output": {
                "title": preview.title,
                "summary": preview.summary,
                "text": preview.text,
                "annotations": annotations,
            },
        });
        let what = format!("the {PLAN_CHECK} check run of {head}");
        let _: serde_json::Value = match existing.check_runs.first() {
            Some(run) => self
                .crab
                .patch(format!("/repos/{o}/{r}/check-runs/{}", run.id), Some(&body))
                .await
                .map_err(Self::call(what))?,
            None => self
                .crab
                .post(format!("/repos/{o}/{r}/check-runs"), Some(&body))
                .await
                .map_err(Self::call(what))?,
        };
        self.previewed.insert(head.to_owned());
        Ok(())
    }

    /// Open or update the promotion pull request of each environment in
    /// `asks` (see [`gitfleet_policy::promotion`]): its file on the branch
    /// `gitfleet/promote/<env>` over `head` of the spec branch `base`
    /// (whose promotion files are `on_base`), and
    /// one open pull request from that branch. Any other environment that
    /// requires approvals has its open promotion pull request closed: what
    /// it asked for went ahead, or is gone. Failures are logged; the next
    /// pass tries again.
    pub async fn promote(
        &mut self,
        rules: &Rules,
        mirror: &Mirror,
        head: git2::Oid,
        on_base: &BTreeMap<String, Vec<u8>>,
        asks: &BTreeMap<String, promotion::Ask>,
    ) {
        let base = mirror.branch();
        for (env, ask) in asks {
            self.unpromoted.remove(env);
            let bytes = ask.file.to_bytes();
            if self.promoted.get(env) == Some(&bytes) {
                continue;
            }
            // Merged already: its reviews are what counts now.
            if on_base.get(env) == Some(&bytes) {
                self.promoted.insert(env.clone(), bytes);
                continue;
            }
            let path = promotions_path(env);
            let branch = promotion_branch(env);
            let changes = BTreeMap::from([(path, Some(bytes.clone()))]);
            let mut message = format!("{}\n\n", ask.title);
            for (rollout, p) in &ask.file.rollouts {
                message.push_str(&format!(
                    "{rollout}: {} at {}\n",
                    p.bundle.digest, p.source_commit
                ));
            }
            if let Err(e) =
                mirror.update_branch(&branch, head, &changes, &message, &Author::default())
            {
                tracing::warn!(environment = %env, branch = %branch, error = %e, "cannot push the promotion branch");
                continue;
            }
            match self
                .open_or_update_pull(&branch, base, &ask.title, &ask.body)
                .await
            {
                Ok(number) => {
                    tracing::info!(environment = %env, pull = number, rollouts = ask.file.rollouts.len(), "promotion pull request up to date");
                    self.promoted.insert(env.clone(), bytes);
                }
                Err(e) => {
                    tracing::warn!(environment = %env, error = %e, "cannot open the promotion pull request");
                }
            }
        }
        let settled: Vec<&str> = rules
            .iter()
            .filter(|(_, r)| r.approval_rule().is_some())
            .map(|(env, _)| env)
            .filter(|env| !asks.contains_key(*env) && !self.unpromoted.contains(*env))
            .collect();
        for env in settled {
            match self.close_pull(&promotion_branch(env), base).await {
                Ok(closed) => {
                    if let Some(number) = closed {
                        tracing::info!(environment = %env, pull = number, "closed the promotion pull request: nothing waits there now");
                    }
                    self.promoted.remove(env);
                    self.unpromoted.insert(env.to_owned());
                }
                Err(e) => {
                    tracing::warn!(environment = %env, error = %e, "cannot close the promotion pull request");
                }
            }
        }
    }

    /// Open or update the key rotation pull request of each node in
    /// `asks` (see [`gitfleet_policy::rotation`]): its node file on the
    /// branch `gitfleet/rotate-key/<node>` over `head` of the spec branch,
    /// and one open pull request from it. Failures are logged; the next
    /// pass tries again.
    pub async fn rotate_keys(
        &mut self,
        mirror: &Mirror,
        head: git2::Oid,
        asks: &BTreeMap<String, gitfleet_policy::rotation::RotationAsk>,
    ) {
        let base = mirror.branch();
        for (node, ask) in asks {
            if self.rotated.get(node) == Some(&ask.bytes) {
                continue;
            }
            let branch = rotation_branch(node);
            let changes = BTreeMap::from([(ask.path.clone(), Some(ask.bytes.clone()))]);
            let message = format!("{}\n\n{}", ask.title, ask.body);
            if let Err(e) =
                mirror.update_branch(&branch, head, &changes, &message, &Author::default())
            {
                tracing::warn!(node = %node, branch = %branch, error = %e, "cannot push the key rotation branch");
                continue;
            }
            match self
                .open_or_update_pull(&branch, base, &ask.title, &ask.body)
                .await
            {
                Ok(number) => {
                    tracing::info!(node = %node, pull = number, "key rotation pull request up to date");
                    self.rotated.insert(node.clone(), ask.bytes.clone());
                }
                Err(e) => {
                    tracing::warn!(node = %node, error = %e, "cannot open the key rotation pull request");
                }
            }
        }
    }

    /// The open pull request from `branch` into `base`, if any.
    async fn open_pull(&self, branch: &str, base: &str) -> Result<Option<Pull>, GitHubError> {
        let (o, r) = (&self.owner, &self.repo);
        let open: Vec<Pull> = self
            .crab
            .get(
                format!("/repos/{o}/{r}/pulls"),
                Some(&[
                    ("state", "open".to_owned()),
                    ("head", format!("{o}:{branch}")),
                    ("base", base.to_owned()),
                ]),
            )
            .await
            .map_err(Self::call(format!("open pull requests from {branch}")))?;
        Ok(open.into_iter().next())
    }

    /// Update the open pull request from `branch` into `base`, or open one;
    /// its number.
    async fn open_or_update_pull(
        &self,
        branch: &str,
        base: &str,
        title: &str,
        body: &str,
    ) -> Result<u64, GitHubError> {
        let (o, r) = (&self.owner, &self.repo);
        let what = format!("the pull request from {branch}");
        if let Some(open) = self.open_pull(branch, base).await? {
            let _: serde_json::Value = self
                .crab
                .patch(
                    format!("/repos/{o}/{r}/pulls/{}", open.number),
                    Some(&serde_json::json!({ "title": title, "body": body })),
                )
                .await
                .map_err(Self::call(what))?;
            return Ok(open.number);
        }
        let created: Pull = self
            .crab
            .post(
                format!("/repos/{o}/{r}/pulls"),
                Some(&serde_json::json!({
                    "title": title,
                    "body": body,
                    "head": branch,
                    "base": base,
                })),
            )
            .await
            .map_err(Self::call(what))?;
        Ok(created.number)
    }

    /// Close the open pull request from `branch` into `base`; its number,
    /// `None` when none is open.
    async fn close_pull(&self, branch: &str, base: &str) -> Result<Option<u64>, GitHubError> {
        let Some(open) = self.open_pull(branch, base).await? else {
            return Ok(None);
        };
        let (o, r) = (&self.owner, &self.repo);
        let _: serde_json::Value = self
            .crab
            .patch(
                format!("/repos/{o}/{r}/pulls/{}", open.number),
                Some(&serde_json::json!({ "state": "closed" })),
            )
            .await
            .map_err(Self::call(format!("closing pull request #{}", open.number)))?;
        Ok(Some(open.number))
    }

    /// A commit status per environment on each rollout's source commit.
    /// Post each status of `statuses` that changed since it was last
    /// posted.
    pub async fn report(&mut self, statuses: &[CommitStatus]) {
        for s in statuses {
            self.set_status(&s.commit, &s.context, &s.status).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repo_must_be_owner_slash_name() {
        for bad in ["acme", "/fleet", "acme/", "a/b/c"] {
            let args = GitHubArgs {
                github_repo: Some(bad.into()),
                github_token_file: Some("/dev/null".into()),
                ..GitHubArgs::default()
            };
            assert!(matches!(args.config(), Err(GitHubError::Repo(_))), "{bad}");
        }
    }
}
