//! The fleet repository as the reconciler sees it: a bare mirror that
//! fetches the spec branch and the state branch, reads trees into memory,
//! and writes status back to the state branch.
//!
//! Humans write `main`; the reconciler writes only `refs/heads/<state
//! branch>`. A push that loses a race is rebuilt on the new tip and retried;
//! nothing here ever force-pushes.

// The reconcile loop that drives the mirror is not written yet.

use std::cell::{Cell, Ref, RefCell};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use git2::build::TreeUpdateBuilder;
use git2::{
    AutotagOption, Cred, CredentialType, Direction, ErrorCode, FetchOptions, FileMode, Oid,
    PushOptions, RemoteCallbacks, Repository, Signature,
};
use gitfleet_io::metrics::GitLatency;
use gitfleet_policy::RepoFiles;

use crate::source;

mod compact;
mod history;

pub use compact::{kept_at, Compaction};
pub use history::{StateChange, StateHistory, WalkEnd};

/// Where the fleet repository lives and how to reach it.
#[derive(Clone)]
pub struct Remote {
    /// `https://`, `http://`, `ssh://` (or `user@host:path`), `git://`,
    /// `file://` or a plain path.
    pub url: String,
    /// The branch humans write the spec to.
    pub branch: String,
    /// The branch the reconciler writes its state to.
    pub state_branch: String,
    pub auth: Auth,
}

impl Remote {
    /// A remote with the default branches (`main`, `gitfleet/state`) and no
    /// credentials.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            branch: "main".to_owned(),
            state_branch: "gitfleet/state".to_owned(),
            auth: Auth::None,
        }
    }

    /// The URL without any password or token it carries, for messages.
    /// Whether the repository is on this machine (`file://` or a path),
    /// reached through libgit2's local transport.
    pub fn is_local(&self) -> bool {
        self.url.starts_with("file://") || (!self.url.contains("://") && !self.url.contains('@'))
    }

    pub fn display_url(&self) -> String {
        redact_url(&self.url)
    }
}

impl fmt::Debug for Remote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Remote")
            .field("url", &self.display_url())
            .field("branch", &self.branch)
            .field("state_branch", &self.state_branch)
            .field("auth", &self.auth)
            .finish()
    }
}

/// Credentials for the remote.
#[derive(Clone)]
pub enum Auth {
    /// Anonymous access (public HTTPS, `git://`, local paths).
    None,
    /// An access token, sent over HTTP(S) as basic auth with the user
    /// `x-access-token` (GitHub app and fine-grained tokens, GitLab and
    /// Gitea tokens accept this).
    Token(String),
    /// A private key file, optionally encrypted. The user is the one in the
    /// URL, else `git`.
    SshKey {
        path: PathBuf,
        passphrase: Option<String>,
    },
    /// Keys held by the running ssh-agent (`SSH_AUTH_SOCK`).
    SshAgent,
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Auth::None => f.write_str("None"),
            Auth::Token(_) => f.write_str("Token(<redacted>)"),
            Auth::SshKey { path, passphrase } => f
                .debug_struct("SshKey")
                .field("path", path)
                .field("passphrase", &passphrase.as_ref().map(|_| "<redacted>"))
                .finish(),
            Auth::SshAgent => f.write_str("SshAgent"),
        }
    }
}

/// The user an access token is sent with.
const TOKEN_USER: &str = "x-access-token";
/// How often libgit2 may ask for credentials in one operation before we
/// call them rejected (it asks again after every 401 or refused key).
const CREDENTIAL_TRIES: u32 = 3;

impl Auth {
    fn credential(
        &self,
        username_from_url: Option<&str>,
        allowed: CredentialType,
    ) -> Result<Cred, git2::Error> {
        let user = username_from_url.unwrap_or("git");
        match self {
            Auth::None => Err(git2::Error::from_str(
                "the remote asks for credentials and none are configured",
            )),
            Auth::Token(token) if allowed.contains(CredentialType::USER_PASS_PLAINTEXT) => {
                Cred::userpass_plaintext(TOKEN_USER, token)
            }
            Auth::Token(_) => Err(git2::Error::from_str(
                "a token is sent only as https basic auth, which this remote does not accept",
            )),
            Auth::SshKey { .. } | Auth::SshAgent if allowed.contains(CredentialType::USERNAME) => {
                Cred::username(user)
            }
            Auth::SshKey { path, passphrase } if allowed.contains(CredentialType::SSH_KEY) => {
                Cred::ssh_key(user, None, path, passphrase.as_deref())
            }
            Auth::SshAgent if allowed.contains(CredentialType::SSH_KEY) => {
                Cred::ssh_key_from_agent(user)
            }
            Auth::SshKey { .. } | Auth::SshAgent => Err(git2::Error::from_str(
                "an ssh key is used only over ssh, which this remote does not accept",
            )),
        }
    }
}

/// Callbacks that answer credential requests from `auth`, giving up after
/// a few refusals instead of looping.
fn callbacks(auth: &Auth) -> RemoteCallbacks<'_> {
    let mut callbacks = RemoteCallbacks::new();
    let tries = Cell::new(0u32);
    callbacks.credentials(move |_url, username_from_url, allowed| {
        tries.set(tries.get() + 1);
        if tries.get() > CREDENTIAL_TRIES {
            return Err(git2::Error::from_str("the remote rejected the credentials"));
        }
        auth.credential(username_from_url, allowed)
    });
    callbacks
}

/// The author and committer of state commits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Author {
    pub name: String,
    pub email: String,
}

impl Default for Author {
    fn default() -> Self {
        Self {
            name: "gitfleet".to_owned(),
            email: "gitfleet@localhost".to_owned(),
        }
    }
}

/// How many times a rejected push is rebuilt and tried again, and the wait
/// before the first retry (doubled for each further one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retry {
    pub attempts: u32,
    pub backoff: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Self {
            attempts: 5,
            backoff: Duration::from_millis(100),
        }
    }
}

/// Files of the state branch by `/`-separated path.
pub type StateFiles = BTreeMap<String, Vec<u8>>;

/// Files by path, with their bytes.
pub type PathsAndBytes = Vec<(String, Vec<u8>)>;

/// The tips of the two branches at the last fetch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Heads {
    pub branch: Oid,
    /// `None` until the reconciler writes its first state.
    pub state: Option<Oid>,
}

/// What `commit_state` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StateCommit {
    /// A commit was pushed to the state branch.
    Committed { oid: Oid },
    /// The state branch already held exactly these files.
    NoChange,
}

#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("opening the git mirror at {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: git2::Error,
    },
    #[error("reading the mirror directory {path}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a bare git repository")]
    NotBare { path: PathBuf },
    #[error("creating a git mirror of {url} at {path}")]
    Init {
        url: String,
        path: PathBuf,
        #[source]
        source: git2::Error,
    },
    #[error("invalid branch name `{branch}` for {url}")]
    InvalidBranch { url: String, branch: String },
    #[error("the spec branch and the state branch of {url} are both `{branch}`")]
    SameBranch { url: String, branch: String },
    #[error("fetching {branches} from {url}")]
    Fetch {
        url: String,
        branches: String,
        #[source]
        source: git2::Error,
    },
    #[error("branch {branch} does not exist at {url}")]
    MissingBranch { url: String, branch: String },
    #[error("the history of branch {branch} at {url} ends at {at}, a commit whose parents the remote does not send")]
    HistoryEnds {
        url: String,
        branch: String,
        at: Oid,
    },
    #[error("tag {tag} already exists at {url}, at {at}; choose another name")]
    TagTaken { url: String, tag: String, at: Oid },
    #[error("branch {branch} of {url} has a merge commit, {merge}, which gitfleet never writes; compact it by hand")]
    NotLinear {
        url: String,
        branch: String,
        merge: Oid,
    },
    #[error("{name} at {url} is at {}, not {}: it moved meanwhile; nothing was replaced, run again", found.map_or("nothing".to_owned(), |o| o.to_string()), expected.map_or("nothing".to_owned(), |o| o.to_string()))]
    Moved {
        url: String,
        name: String,
        expected: Option<Oid>,
        found: Option<Oid>,
    },
    #[error("reading {what} of the mirror of {url}")]
    Read {
        url: String,
        what: String,
        #[source]
        source: git2::Error,
    },
    #[error("invalid state file path `{path}` for branch {branch}: {reason}")]
    InvalidPath {
        path: String,
        branch: String,
        reason: &'static str,
    },
    #[error("writing a commit for branch {branch} of {url}")]
    Commit {
        url: String,
        branch: String,
        #[source]
        source: git2::Error,
    },
    #[error("pushing branch {branch} to {url}")]
    Push {
        url: String,
        branch: String,
        #[source]
        source: git2::Error,
    },
    #[error("push of branch {branch} to {url} rejected {attempts} times, last: {status}")]
    Rejected {
        url: String,
        branch: String,
        attempts: u32,
        status: String,
    },
    #[error("push of branch {branch} to {url} got no status for the branch from the server")]
    Unconfirmed { url: String, branch: String },
}

/// A local bare copy of the fleet repository, holding the spec branch and
/// the state branch as remote-tracking refs (`refs/remotes/origin/<name>`).
pub struct Mirror {
    /// Reopened after history is deepened: libgit2 keeps the commits it
    /// parsed, and a commit at the edge of shallow history stays parentless
    /// in that cache.
    repo: RefCell<Repository>,
    remote: Remote,
    path: PathBuf,
    retry: Retry,
    /// How long fetches and pushes take; shared with whoever shows it.
    latency: Arc<GitLatency>,
    /// How many commits of the spec branch the last fetch of its history
    /// asked for (see [`Mirror::deepen`]).
    spec_depth: Cell<i32>,
}

/// How many commits of the spec branch a cold start fetches: enough for
/// the last change of each config directory in most fleets; a walk that
/// needs more fetches more (see [`Mirror::deepen`]).
const SPEC_DEPTH: i32 = 64;

/// The most history one deepening asks for: a depth past any real
/// branch's length, which brings the whole history.
const MAX_DEPTH: i32 = 1 << 30;

/// The first parent of a commit, as far as this mirror knows it.
enum Parent<'r> {
    Of(git2::Commit<'r>),
    /// A root commit.
    Root,
    /// A commit at the edge of a shallow mirror's history: it has parents
    /// the mirror has not fetched.
    Edge,
    /// A commit whose parents this repository handle hides though the
    /// mirror has them now (see [`Mirror::first_parent`]).
    Stale,
}

/// What a walk down the spec branch's history ended on.
enum Walked<T> {
    Found(T),
    /// The edge of what this mirror holds, at this commit.
    Edge(Oid),
    /// A commit shown parentless by a stale cache.
    Stale(Oid),
}

impl fmt::Debug for Mirror {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mirror")
            .field("remote", &self.remote)
            .field("path", &self.path)
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

/// How a push attempt ended, when the transport itself worked.
enum Pushed {
    Accepted,
    /// Someone else moved the branch first, or the server said no.
    Rejected(String),
}

impl Mirror {
    /// The spec branch.
    pub fn branch(&self) -> &str {
        &self.remote.branch
    }

    /// The state branch.
    pub fn state_branch(&self) -> &str {
        &self.remote.state_branch
    }

    /// Follow `branch` as the state branch from the next fetch on.
    pub fn set_state_branch(&mut self, branch: &str) -> Result<(), GitError> {
        let url = self.remote.display_url();
        if !git2::Reference::is_valid_name(&format!("refs/heads/{branch}")) {
            return Err(GitError::InvalidBranch {
                url,
                branch: branch.to_owned(),
            });
        }
        if branch == self.remote.branch {
            return Err(GitError::SameBranch {
                url,
                branch: branch.to_owned(),
            });
        }
        branch.clone_into(&mut self.remote.state_branch);
        Ok(())
    }

    /// The repository, as last opened.
    fn repo(&self) -> Ref<'_, Repository> {
        self.repo.borrow()
    }

    /// How long this mirror's fetches and pushes have taken.
    pub fn latency(&self) -> Arc<GitLatency> {
        Arc::clone(&self.latency)
    }

    /// Open the mirror at `dir`, or create it there and fetch both branches
    /// when `dir` does not exist or is empty. An opened mirror holds what it
    /// last fetched: call [`Mirror::fetch`] before reading the spec.
    #[tracing::instrument(skip_all, fields(url = %remote.display_url(), dir = %dir.display()))]
    pub fn open_or_clone(remote: Remote, dir: &Path) -> Result<Self, GitError> {
        let url = remote.display_url();
        for branch in [&remote.branch, &remote.state_branch] {
            if !git2::Reference::is_valid_name(&format!("refs/heads/{branch}")) {
                return Err(GitError::InvalidBranch {
                    url,
                    branch: branch.clone(),
                });
            }
        }
        if remote.branch == remote.state_branch {
            return Err(GitError::SameBranch {
                url,
                branch: remote.branch.clone(),
            });
        }
        let fresh = match std::fs::read_dir(dir) {
            Ok(mut entries) => entries.next().is_none(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
            Err(source) => {
                return Err(GitError::Dir {
                    path: dir.to_owned(),
                    source,
                })
            }
        };
        let repo = if fresh {
            tracing::info!("creating mirror");
            Repository::init_bare(dir).map_err(|source| GitError::Init {
                url,
                path: dir.to_owned(),
                source,
            })?
        } else {
            let repo = open_mirror(dir).map_err(|source| GitError::Open {
                path: dir.to_owned(),
                source,
            })?;
            if !repo.is_bare() {
                return Err(GitError::NotBare {
                    path: dir.to_owned(),
                });
            }
            repo
        };
        let mirror = Self {
            repo: RefCell::new(repo),
            remote,
            path: dir.to_owned(),
            retry: Retry::default(),
            latency: Arc::default(),
            spec_depth: Cell::new(SPEC_DEPTH),
        };
        if fresh {
            mirror.fetch()?;
        }
        Ok(mirror)
    }

    /// Use `retry` for rejected pushes instead of the default.
    #[cfg(test)]
    pub fn with_retry(mut self, retry: Retry) -> Self {
        self.retry = retry;
        self
    }

    /// Fetch exactly the spec branch and the state branch, force-updating
    /// their remote-tracking refs to what the remote has now (a state branch
    /// the remote no longer has is forgotten).
    #[tracing::instrument(skip_all, fields(
        url = %self.remote.display_url(),
        branch = %self.remote.branch,
        state_branch = %self.remote.state_branch,
    ))]
    pub fn fetch(&self) -> Result<Heads, GitError> {
        self.fetch_cold()?;
        let tips = self.fetch_branches(&[&self.remote.branch, &self.remote.state_branch])?;
        let branch = tips[0].ok_or_else(|| GitError::MissingBranch {
            url: self.remote.display_url(),
            branch: self.remote.branch.clone(),
        })?;
        let heads = Heads {
            branch,
            state: tips[1],
        };
        tracing::debug!(branch = %heads.branch, state = ?heads.state, "fetched");
        Ok(heads)
    }

    /// On a cold start (no tracking ref of a branch yet), fetch the state
    /// branch's tip alone and the spec branch's last [`SPEC_DEPTH`]
    /// commits, not their history: a pass reads the state branch's tip
    /// only, and what it needs of the spec branch's history (the last
    /// change of a config directory, an approved commit, the rules at a
    /// commit) is fetched when a walk reaches the edge ([`Mirror::deepen`]).
    /// Both branches gain commits for as long as the fleet lives. Later
    /// fetches bring only the commits made since, so the mirror stays as
    /// shallow as the process is young; a mirror from before (with the
    /// whole history) goes on as it is. Local remotes (`file://`, paths)
    /// get whole branches: libgit2's local transport cannot fetch shallow.
    fn fetch_cold(&self) -> Result<(), GitError> {
        if self.remote.is_local() {
            return Ok(());
        }
        for (branch, depth) in [
            (self.remote.state_branch.as_str(), 1),
            (self.remote.branch.as_str(), SPEC_DEPTH),
        ] {
            if self.tracking(branch)?.is_none() {
                let tip = self.fetch_branches_to(&[branch], Some(depth))?[0];
                tracing::debug!(branch, depth, tip = ?tip, "fetched a branch without its history");
            }
        }
        Ok(())
    }

    /// The commits at the edge of this mirror's history: fetched without
    /// their parents (git's `shallow` file; empty for a whole mirror).
    fn shallow_roots(&self) -> Result<Vec<Oid>, GitError> {
        let path = self.path.join("shallow");
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(GitError::Dir { path, source }),
        };
        Ok(text
            .lines()
            .filter_map(|line| Oid::from_str(line.trim()).ok())
            .collect())
    }

    /// The first parent of `commit`, or whether it is a root or the edge
    /// of a shallow mirror's history. A commit that shows no parents is a
    /// root only if its own bytes name none: one at an edge another
    /// process (or an earlier deepen) has since fetched past stays
    /// parentless in this handle's cache, and that is `Stale`.
    fn first_parent<'r>(
        &self,
        repo: &Repository,
        commit: &git2::Commit<'r>,
        edges: &[Oid],
    ) -> Result<Parent<'r>, git2::Error> {
        if commit.parent_count() > 0 {
            return Ok(Parent::Of(commit.parent(0)?));
        }
        let odb = repo.odb()?;
        let raw = odb.read(commit.id())?;
        let names_a_parent = raw
            .data()
            .split(|b| *b == b'\n')
            .take_while(|line| !line.is_empty())
            .any(|line| line.starts_with(b"parent "));
        Ok(if !names_a_parent {
            Parent::Root
        } else if edges.contains(&commit.id()) {
            Parent::Edge
        } else {
            Parent::Stale
        })
    }

    /// Run `walk` down the spec branch's history; each time it reaches the
    /// edge of what this mirror holds, fetch more ([`Mirror::deepen`]) and
    /// walk again (after reopening the repository when its cache was
    /// stale).
    fn walk_history<T>(
        &self,
        what: impl Fn() -> String,
        mut walk: impl FnMut(&Repository, &[Oid]) -> Result<Walked<T>, git2::Error>,
    ) -> Result<T, GitError> {
        let mut reopened = false;
        loop {
            let edges = self.shallow_roots()?;
            let walked = walk(&self.repo(), &edges).map_err(|source| GitError::Read {
                url: self.remote.display_url(),
                what: what(),
                source,
            })?;
            match walked {
                Walked::Found(found) => return Ok(found),
                Walked::Edge(at) => self.deepen(at)?,
                // Once: a fresh handle parses each commit with the edges
                // as they are now.
                Walked::Stale(_) if !reopened => {
                    reopened = true;
                    self.reopen()?;
                }
                Walked::Stale(at) => {
                    return Err(GitError::HistoryEnds {
                        url: self.remote.display_url(),
                        branch: self.remote.branch.clone(),
                        at,
                    })
                }
            }
        }
    }

    /// Fetch more of the spec branch's history, to get past `at`, a commit
    /// at the edge of what this mirror holds: four times the commits of
    /// the last fetch, counted from the remote's tip, so a walk that needs
    /// n commits fetches fewer than 4n and asks O(log n) times. Errs when
    /// the whole history does not get past `at`.
    fn deepen(&self, at: Oid) -> Result<(), GitError> {
        let branch = self.remote.branch.as_str();
        // Never less than the mirror holds already (a cache an earlier
        // process deepened): a smaller depth would cut its history.
        let held = match self.tracking(branch)? {
            Some(tip) => {
                let repo = self.repo();
                let walked = repo.revwalk().and_then(|mut w| {
                    w.push(tip)?;
                    Ok(w.count())
                });
                i32::try_from(walked.unwrap_or(0)).unwrap_or(MAX_DEPTH)
            }
            None => 0,
        };
        let depth = self
            .spec_depth
            .get()
            .max(held)
            .saturating_mul(4)
            .min(MAX_DEPTH);
        self.spec_depth.set(depth);
        tracing::info!(branch, depth, edge = %at, "fetching more of the spec branch's history");
        let fetch_error = |source| GitError::Fetch {
            url: self.remote.display_url(),
            branches: branch.to_owned(),
            source,
        };
        // Objects only: the tracking ref moves with the next fetch.
        self.download_depth(
            &[(format!("refs/heads/{branch}"), tracking_ref(branch))],
            Some(depth),
        )
        .map_err(fetch_error)?;
        self.reopen()?;
        if depth == MAX_DEPTH && self.shallow_roots()?.contains(&at) {
            return Err(GitError::HistoryEnds {
                url: self.remote.display_url(),
                branch: branch.to_owned(),
                at,
            });
        }
        Ok(())
    }

    /// Open the repository again, dropping the commits libgit2 parsed: one
    /// that was at the edge of shallow history stays parentless in that
    /// cache after more history is fetched.
    fn reopen(&self) -> Result<(), GitError> {
        let repo = open_mirror(&self.path).map_err(|source| GitError::Open {
            path: self.path.clone(),
            source,
        })?;
        *self.repo.borrow_mut() = repo;
        Ok(())
    }

    /// The first edge of shallow history a walk of every parent from
    /// `head` reaches, if any.
    fn edge_below(&self, head: Oid) -> Result<Option<Oid>, GitError> {
        let edges = self.shallow_roots()?;
        if edges.is_empty() {
            return Ok(None);
        }
        let repo = self.repo();
        let walk = || -> Result<Option<Oid>, git2::Error> {
            let mut walk = repo.revwalk()?;
            walk.push(head)?;
            for oid in walk {
                let oid = oid?;
                if edges.contains(&oid) {
                    return Ok(Some(oid));
                }
            }
            Ok(None)
        };
        walk().map_err(|source| GitError::Read {
            url: self.remote.display_url(),
            what: format!("the history of {head}"),
            source,
        })
    }

    /// Make sure commit `oid` of the spec branch's history is here,
    /// deepening a shallow mirror until it is or the history is whole.
    fn ensure_commit(&self, oid: Oid) -> Result<(), GitError> {
        loop {
            if self.repo().find_commit(oid).is_ok() {
                return Ok(());
            }
            let Some(tip) = self.tracking(&self.remote.branch)? else {
                return Ok(());
            };
            match self.edge_below(tip)? {
                Some(edge) => self.deepen(edge)?,
                // Whole: reading it reports that it is missing.
                None => return Ok(()),
            }
        }
    }

    /// Fetch `branches` and point their tracking refs at the advertised
    /// tips; the tip of each, `None` where the remote has no such branch.
    fn fetch_branches(&self, branches: &[&str]) -> Result<Vec<Option<Oid>>, GitError> {
        self.fetch_branches_to(branches, None)
    }

    /// [`Mirror::fetch_branches`], with at most `depth` commits of each
    /// branch's history when given.
    fn fetch_branches_to(
        &self,
        branches: &[&str],
        depth: Option<i32>,
    ) -> Result<Vec<Option<Oid>>, GitError> {
        let fetch_error = |source| GitError::Fetch {
            url: self.remote.display_url(),
            branches: branches.join(" and "),
            source,
        };
        let refs: Vec<(String, String)> = branches
            .iter()
            .map(|b| (format!("refs/heads/{b}"), tracking_ref(b)))
            .collect();
        let tips = self.download_depth(&refs, depth).map_err(fetch_error)?;
        for (branch, tip) in branches.iter().zip(&tips) {
            self.set_tracking(branch, *tip).map_err(fetch_error)?;
        }
        Ok(tips)
    }

    /// Fetch pull request `number`'s head (`refs/pull/<n>/head`, as GitHub
    /// serves it) into `refs/gitfleet/pull/<n>`; its tip, or `None` when the
    /// remote has no such ref.
    pub fn fetch_pull(&self, number: u64) -> Result<Option<Oid>, GitError> {
        let source = format!("refs/pull/{number}/head");
        let local = format!("refs/gitfleet/pull/{number}");
        let fetch_error = |e| GitError::Fetch {
            url: self.remote.display_url(),
            branches: source.clone(),
            source: e,
        };
        let tip = self
            .download(&[(source.clone(), local.clone())])
            .map_err(fetch_error)?[0];
        if let Some(oid) = tip {
            self.repo()
                .reference(&local, oid, true, "gitfleet: fetch pull request")
                .map_err(fetch_error)?;
        }
        Ok(tip)
    }

    /// Connect, read what the remote advertises, and download the objects
    /// of each `(remote ref, local ref)` it has (no tags). The remote tip of
    /// each, `None` where it has no such ref; the caller points the refs.
    fn download(&self, refs: &[(String, String)]) -> Result<Vec<Option<Oid>>, git2::Error> {
        self.download_depth(refs, None)
    }

    /// [`Mirror::download`], with at most `depth` commits of history of
    /// each ref when given.
    fn download_depth(
        &self,
        refs: &[(String, String)],
        depth: Option<i32>,
    ) -> Result<Vec<Option<Oid>>, git2::Error> {
        let _timer = self.latency.fetch.start();
        let repo = self.repo();
        let mut remote = repo.remote_anonymous(&self.remote.url)?;
        let mut connection =
            remote.connect_auth(Direction::Fetch, Some(callbacks(&self.remote.auth)), None)?;
        let advertised: BTreeMap<String, Oid> = connection
            .list()?
            .iter()
            .map(|head| (head.name().to_owned(), head.oid()))
            .collect();
        let tips: Vec<Option<Oid>> = refs
            .iter()
            .map(|(source, _)| advertised.get(source).copied())
            .collect();
        let wanted: Vec<String> = refs
            .iter()
            .zip(&tips)
            .filter(|(_, tip)| tip.is_some())
            .map(|((source, local), _)| format!("{source}:{local}"))
            .collect();
        if !wanted.is_empty() {
            let mut options = FetchOptions::new();
            options
                .remote_callbacks(callbacks(&self.remote.auth))
                .download_tags(AutotagOption::None);
            if let Some(depth) = depth {
                options.depth(depth);
            }
            connection.remote().download(&wanted, Some(&mut options))?;
        }
        Ok(tips)
    }

    fn set_tracking(&self, branch: &str, tip: Option<Oid>) -> Result<(), git2::Error> {
        let name = tracking_ref(branch);
        match tip {
            Some(oid) => self
                .repo()
                .reference(&name, oid, true, "gitfleet: fetch")
                .map(drop),
            None => match self.repo().find_reference(&name) {
                Ok(mut stale) => stale.delete(),
                Err(e) if e.code() == ErrorCode::NotFound => Ok(()),
                Err(e) => Err(e),
            },
        }
    }

    fn tracking(&self, branch: &str) -> Result<Option<Oid>, GitError> {
        let id = self.repo().refname_to_id(&tracking_ref(branch));
        match id {
            Ok(oid) => Ok(Some(oid)),
            Err(e) if e.code() == ErrorCode::NotFound => Ok(None),
            Err(source) => Err(GitError::Read {
                url: self.remote.display_url(),
                what: format!("the tracking ref of {branch}"),
                source,
            }),
        }
    }

    /// The files of commit `oid` (as fetched), for `policy::check`.
    /// Symlinks and submodules are left out.
    pub fn files_at(&self, oid: Oid) -> Result<RepoFiles, GitError> {
        self.ensure_commit(oid)?;
        let repo = self.repo();
        let (files, skipped) = repo
            .find_commit(oid)
            .and_then(|c| c.tree())
            .and_then(|tree| source::read_tree(&repo, &tree))
            .map_err(|source| GitError::Read {
                url: self.remote.display_url(),
                what: format!("commit {oid}"),
                source,
            })?;
        if !skipped.symlinks.is_empty() {
            tracing::warn!(commit = %oid, symlinks = ?skipped.symlinks, "symlinks left out");
        }
        Ok(files)
    }

    /// The commit `spec` (a full id or a unique prefix) names, when it is
    /// `head` or one of its ancestors: only commits of the spec branch can
    /// be approved.
    pub fn commit_on(&self, head: Oid, spec: &str) -> Result<Option<Oid>, GitError> {
        let read = |source| GitError::Read {
            url: self.remote.display_url(),
            what: format!("commit {spec}"),
            source,
        };
        // Only a commit id (or a prefix of one) can be further down.
        let an_id = spec.len() >= 4 && spec.bytes().all(|b| b.is_ascii_hexdigit());
        loop {
            let found = self
                .repo()
                .revparse_single(spec)
                .and_then(|o| o.peel_to_commit())
                .map(|c| c.id());
            match found {
                Ok(id) if id == head => return Ok(Some(id)),
                Ok(id) if self.repo().graph_descendant_of(head, id).map_err(read)? => {
                    return Ok(Some(id))
                }
                // Missing, or here (a pull request's history, say) but not
                // reached from `head` through what the mirror holds.
                _ => {}
            }
            // Not fetched that far yet, perhaps: deepen while there is more.
            match (an_id, self.edge_below(head)?) {
                (true, Some(edge)) => self.deepen(edge)?,
                _ => return Ok(None),
            }
        }
    }

    /// The tree id of `dir` at commit `head` (None when absent): the same
    /// id means the same files.
    pub fn dir_id(&self, head: Oid, dir: &str) -> Result<Option<Oid>, GitError> {
        let repo = self.repo();
        let tree = repo
            .find_commit(head)
            .and_then(|c| c.tree())
            .map_err(|source| GitError::Read {
                url: self.remote.display_url(),
                what: format!("commit {head}"),
                source,
            })?;
        Ok(tree.get_path(Path::new(dir)).ok().map(|e| e.id()))
    }

    /// The commit that made `dir` what it is at `head`: walking first-parent
    /// history, the last commit whose tree at `dir` differs from its
    /// parent's. Bundles record it as their source commit, so a commit that
    /// leaves a config alone leaves its bundle's bytes, and digest, alone.
    pub fn last_change(&self, head: Oid, dir: &str) -> Result<Oid, GitError> {
        self.last_change_of(head, &[dir])
    }

    /// [`Mirror::last_change`] of several paths at once: the last commit
    /// that changed any of them (the rule files, for a change to the
    /// rules).
    pub fn last_change_of(&self, head: Oid, paths: &[&str]) -> Result<Oid, GitError> {
        let entries = |commit: &git2::Commit<'_>| -> Result<Vec<Option<Oid>>, git2::Error> {
            let tree = commit.tree()?;
            paths
                .iter()
                .map(|p| match tree.get_path(Path::new(p)) {
                    Ok(e) => Ok(Some(e.id())),
                    Err(e) if e.code() == ErrorCode::NotFound => Ok(None),
                    Err(e) => Err(e),
                })
                .collect()
        };
        self.walk_history(
            || format!("the history of {} from {head}", paths.join(", ")),
            |repo, edges| {
                let mut commit = repo.find_commit(head)?;
                let target = entries(&commit)?;
                loop {
                    let parent = match self.first_parent(repo, &commit, edges)? {
                        Parent::Of(parent) => parent,
                        Parent::Root => return Ok(Walked::Found(commit.id())),
                        Parent::Edge => return Ok(Walked::Edge(commit.id())),
                        Parent::Stale => return Ok(Walked::Stale(commit.id())),
                    };
                    if entries(&parent)? != target {
                        return Ok(Walked::Found(commit.id()));
                    }
                    commit = parent;
                }
            },
        )
    }

    /// Like [`Mirror::last_change`] for something made of one file and
    /// some of the files under a directory: walking first-parent history
    /// from `head`, the last commit that changed `file`, or changed a file
    /// under `dir` for which `relevant(path under dir, old bytes, new
    /// bytes)` holds (`None`: the file is absent on that side). A mesh
    /// bundle uses it with its mesh file and the node files of its members,
    /// so editing a node outside the mesh leaves the mesh bundle alone.
    pub fn last_change_where(
        &self,
        head: Oid,
        file: &str,
        dir: &str,
        mut relevant: impl FnMut(&str, Option<&[u8]>, Option<&[u8]>) -> bool,
    ) -> Result<Oid, GitError> {
        let entry = |commit: &git2::Commit<'_>, path: &str| -> Result<Option<Oid>, git2::Error> {
            match commit.tree()?.get_path(Path::new(path)) {
                Ok(e) => Ok(Some(e.id())),
                Err(e) if e.code() == ErrorCode::NotFound => Ok(None),
                Err(e) => Err(e),
            }
        };
        // Whether `dir` changed between `parent` and `commit` in a way
        // `relevant` cares about.
        let mut dir_changed = |repo: &Repository,
                               parent: &git2::Commit<'_>,
                               commit: &git2::Commit<'_>|
         -> Result<bool, git2::Error> {
            let (old, new) = (entry(parent, dir)?, entry(commit, dir)?);
            if old == new {
                return Ok(false);
            }
            let blob = |id: Oid| -> Result<Option<git2::Blob<'_>>, git2::Error> {
                if id.is_zero() {
                    return Ok(None);
                }
                repo.find_blob(id).map(Some)
            };
            let tree = |id: Option<Oid>| id.map(|id| repo.find_tree(id)).transpose();
            let (old, new) = (tree(old)?, tree(new)?);
            let diff = repo.diff_tree_to_tree(old.as_ref(), new.as_ref(), None)?;
            for delta in diff.deltas() {
                let path = delta
                    .new_file()
                    .path()
                    .or_else(|| delta.old_file().path())
                    .and_then(Path::to_str)
                    .unwrap_or_default();
                let old = blob(delta.old_file().id())?;
                let new = blob(delta.new_file().id())?;
                if relevant(
                    path,
                    old.as_ref().map(git2::Blob::content),
                    new.as_ref().map(git2::Blob::content),
                ) {
                    return Ok(true);
                }
            }
            Ok(false)
        };
        self.walk_history(
            || format!("the history of {file} and {dir} from {head}"),
            |repo, edges| {
                let mut commit = repo.find_commit(head)?;
                let target = entry(&commit, file)?;
                loop {
                    let parent = match self.first_parent(repo, &commit, edges)? {
                        Parent::Of(parent) => parent,
                        Parent::Root => return Ok(Walked::Found(commit.id())),
                        Parent::Edge => return Ok(Walked::Edge(commit.id())),
                        Parent::Stale => return Ok(Walked::Stale(commit.id())),
                    };
                    if entry(&parent, file)? != target || dir_changed(repo, &parent, &commit)? {
                        return Ok(Walked::Found(commit.id()));
                    }
                    commit = parent;
                }
            },
        )
    }

    /// The files at the tip of the state branch as last fetched (or pushed),
    /// and that tip. Only the tip's tree is read, never the history.
    pub fn state_files(&self) -> Result<(Option<Oid>, StateFiles), GitError> {
        let branch = &self.remote.state_branch;
        let Some(tip) = self.tracking(branch)? else {
            return Ok((None, BTreeMap::new()));
        };
        let files = self.files_at(tip)?;
        Ok((
            Some(tip),
            files
                .iter()
                .map(|(path, bytes)| (path.to_owned(), bytes.to_vec()))
                .collect(),
        ))
    }

    /// Commit `changes` (path → new bytes, or `None` to delete) on top of the
    /// state branch as last fetched, and push it without force. When another
    /// writer moved the branch first, fetch it, apply the same changes to
    /// its new tip (ours win for the paths we write, everything else they
    /// wrote is kept) and try again, up to the retry limit.
    #[tracing::instrument(skip_all, fields(
        url = %self.remote.display_url(),
        state_branch = %self.remote.state_branch,
        files = changes.len(),
    ))]
    pub fn commit_state(
        &self,
        changes: &BTreeMap<String, Option<Vec<u8>>>,
        message: &str,
        author: &Author,
    ) -> Result<StateCommit, GitError> {
        let branch = &self.remote.state_branch;
        for path in changes.keys() {
            check_path(path).map_err(|reason| GitError::InvalidPath {
                path: path.clone(),
                branch: branch.clone(),
                reason,
            })?;
        }
        let attempts = self.retry.attempts.max(1);
        let mut tip = self.tracking(branch)?;
        let mut last_status = String::new();
        for attempt in 1..=attempts {
            let Some(oid) = self.build_commit(tip, changes, message, author)? else {
                tracing::debug!(tip = ?tip, "state already up to date");
                return Ok(StateCommit::NoChange);
            };
            gitfleet_io::faults::point("before-push");
            match self.push(branch, oid, tip)? {
                Pushed::Accepted => {
                    gitfleet_io::faults::point("after-push");
                    self.set_tracking(branch, Some(oid))
                        .map_err(|source| self.commit_error(source))?;
                    tracing::info!(commit = %oid, parent = ?tip, attempt, "state pushed");
                    return Ok(StateCommit::Committed { oid });
                }
                Pushed::Rejected(status) => {
                    tracing::warn!(attempt, attempts, %status, "state push rejected");
                    last_status = status;
                    if attempt == attempts {
                        break;
                    }
                    std::thread::sleep(self.retry.backoff * 2u32.saturating_pow(attempt - 1));
                    tip = self.fetch_branches(&[branch])?[0];
                }
            }
        }
        Err(GitError::Rejected {
            url: self.remote.display_url(),
            branch: branch.clone(),
            attempts,
            status: last_status,
        })
    }

    fn commit_error(&self, source: git2::Error) -> GitError {
        GitError::Commit {
            url: self.remote.display_url(),
            branch: self.remote.state_branch.clone(),
            source,
        }
    }

    /// A commit of `parent`'s tree with `changes` applied, whose only parent
    /// is `parent` (a root commit when there is none); `None` when that tree
    /// is the one `parent` already has.
    fn build_commit(
        &self,
        parent: Option<Oid>,
        changes: &BTreeMap<String, Option<Vec<u8>>>,
        message: &str,
        author: &Author,
    ) -> Result<Option<Oid>, GitError> {
        let repo = self.repo();
        let repo = &*repo;
        let build = || -> Result<Option<Oid>, git2::Error> {
            let parent = parent.map(|oid| repo.find_commit(oid)).transpose()?;
            let base = match &parent {
                Some(commit) => commit.tree()?,
                None => repo.find_tree(repo.treebuilder(None)?.write()?)?,
            };
            let tree = tree_with(repo, &base, changes)?;
            if tree.id() == base.id() {
                return Ok(None);
            }
            let parents: Vec<_> = parent.iter().collect();
            write_commit(repo, &tree, &parents, message, author).map(Some)
        };
        build().map_err(|source| self.commit_error(source))
    }

    /// The files under `dir` (`"nodes/"`) that commit `from` has and `to`
    /// lacks or holds changed, with their bytes at `from`: a tree diff,
    /// whatever the number of commits between. `None` when `from` is no commit the spec
    /// branch's history holds (rewritten away, or not an id).
    pub fn removed_files(
        &self,
        from: &str,
        to: Oid,
        dir: &str,
    ) -> Result<Option<PathsAndBytes>, GitError> {
        let Ok(from) = Oid::from_str(from) else {
            return Ok(None);
        };
        self.ensure_commit(from)?;
        let repo = self.repo();
        let read = || -> Result<Option<PathsAndBytes>, git2::Error> {
            let Ok(old) = repo.find_commit(from) else {
                return Ok(None);
            };
            let (old, new) = (old.tree()?, repo.find_commit(to)?.tree()?);
            let mut options = git2::DiffOptions::new();
            options.pathspec(dir);
            let diff = repo.diff_tree_to_tree(Some(&old), Some(&new), Some(&mut options))?;
            let mut out = Vec::new();
            for delta in diff.deltas() {
                // A file rewritten in place may name another id now: its
                // old bytes say which id it held (the caller skips ids
                // still in the repo).
                if !matches!(delta.status(), git2::Delta::Deleted | git2::Delta::Modified) {
                    continue;
                }
                let file = delta.old_file();
                let Some(path) = file.path().and_then(|p| p.to_str()) else {
                    continue;
                };
                let blob = repo.find_blob(file.id())?;
                out.push((path.to_owned(), blob.content().to_vec()));
            }
            Ok(Some(out))
        };
        read().map_err(|source| GitError::Read {
            url: self.remote.display_url(),
            what: format!("the files removed under {dir} since {from}"),
            source,
        })
    }

    /// The commits after `from` up to `to` that change any of `paths`
    /// (against their first parent, merges too), newest first; `None` when
    /// there are more than `limit`.
    pub fn commits_touching(
        &self,
        from: &str,
        to: &str,
        paths: &[String],
        limit: usize,
    ) -> Result<Option<Vec<String>>, GitError> {
        let read_error = |source| GitError::Read {
            url: self.remote.display_url(),
            what: format!(
                "the commits from {from} to {to} changing {}",
                paths.join(", ")
            ),
            source,
        };
        let (Ok(from), Ok(to)) = (Oid::from_str(from), Oid::from_str(to)) else {
            return Ok(None);
        };
        self.ensure_commit(from)?;
        self.ensure_commit(to)?;
        let repo = self.repo();
        let walk = || -> Result<Option<Vec<String>>, git2::Error> {
            let mut revwalk = repo.revwalk()?;
            revwalk.push(to)?;
            revwalk.hide(from)?;
            let mut out = Vec::new();
            for oid in revwalk {
                let commit = repo.find_commit(oid?)?;
                // A merge counts when it changes the paths against its
                // first parent: whatever it brings (its pull request's
                // commits, or edits of its own) needs its review too.
                let old = match commit.parent(0) {
                    Ok(p) => Some(p.tree()?),
                    Err(_) => None,
                };
                let mut options = git2::DiffOptions::new();
                for p in paths {
                    options.pathspec(p);
                }
                let diff = repo.diff_tree_to_tree(
                    old.as_ref(),
                    Some(&commit.tree()?),
                    Some(&mut options),
                )?;
                if diff.deltas().len() > 0 {
                    if out.len() == limit {
                        return Ok(None);
                    }
                    out.push(commit.id().to_string());
                }
            }
            Ok(Some(out))
        };
        walk().map_err(read_error)
    }

    /// Where `a` and `b` branched: their best common ancestor, if any.
    pub fn merge_base(&self, a: Oid, b: Oid) -> Result<Option<Oid>, GitError> {
        match self.repo().merge_base(a, b) {
            Ok(base) => Ok(Some(base)),
            Err(e) if e.code() == ErrorCode::NotFound => Ok(None),
            Err(source) => Err(GitError::Read {
                url: self.remote.display_url(),
                what: format!("where {a} and {b} branched"),
                source,
            }),
        }
    }

    /// The paths under `pathspecs` that differ between commit `from` and
    /// `to` (added, changed or removed): a tree diff, whatever lies
    /// between. Without `from`, or when `from` is no commit the spec
    /// branch's history holds, every file under them at `to`.
    pub fn changed_paths(
        &self,
        from: Option<&str>,
        to: &str,
        pathspecs: &[String],
    ) -> Result<Vec<String>, GitError> {
        let to = Oid::from_str(to).map_err(|source| GitError::Read {
            url: self.remote.display_url(),
            what: format!("`{to}`, which is not a commit id"),
            source,
        })?;
        let from = from.and_then(|f| Oid::from_str(f).ok());
        if let Some(from) = from {
            self.ensure_commit(from)?;
        }
        self.ensure_commit(to)?;
        let repo = self.repo();
        let read = || -> Result<Vec<String>, git2::Error> {
            let old = match from.map(|f| repo.find_commit(f)) {
                Some(Ok(c)) => Some(c.tree()?),
                _ => None,
            };
            let new = repo.find_commit(to)?.tree()?;
            let mut options = git2::DiffOptions::new();
            for p in pathspecs {
                options.pathspec(p);
            }
            let diff = repo.diff_tree_to_tree(old.as_ref(), Some(&new), Some(&mut options))?;
            let mut out = Vec::new();
            for delta in diff.deltas() {
                for file in [delta.old_file(), delta.new_file()] {
                    if let Some(path) = file.path().and_then(|p| p.to_str()) {
                        if !out.iter().any(|o| o == path) {
                            out.push(path.to_owned());
                        }
                    }
                }
            }
            Ok(out)
        };
        read().map_err(|source| GitError::Read {
            url: self.remote.display_url(),
            what: format!("the paths changed up to {to}"),
            source,
        })
    }

    /// The bytes of `path` at commit `oid`; `None` when it has no such file.
    pub fn blob_at(&self, oid: Oid, path: &str) -> Result<Option<Vec<u8>>, GitError> {
        self.ensure_commit(oid)?;
        let repo = self.repo();
        let read = || -> Result<Option<Vec<u8>>, git2::Error> {
            let tree = repo.find_commit(oid)?.tree()?;
            let entry = match tree.get_path(Path::new(path)) {
                Ok(entry) => entry,
                Err(e) if e.code() == ErrorCode::NotFound => return Ok(None),
                Err(e) => return Err(e),
            };
            Ok(entry
                .to_object(&repo)?
                .as_blob()
                .map(|b| b.content().to_vec()))
        };
        read().map_err(|source| GitError::Read {
            url: self.remote.display_url(),
            what: format!("{path} at {oid}"),
            source,
        })
    }

    /// Make `branch` (one of ours, never the spec or the state branch) hold
    /// `base`'s files with `changes` applied, and push it without force;
    /// its tip. A tip that already holds them is left alone. The new
    /// commit's parents are `base` and, unless `base` already contains it,
    /// the branch's old tip: the push is a fast-forward, and a pull request
    /// from the branch into the spec branch shows only `changes`.
    #[tracing::instrument(skip_all, fields(url = %self.remote.display_url(), branch = %branch))]
    pub fn update_branch(
        &self,
        branch: &str,
        base: Oid,
        changes: &BTreeMap<String, Option<Vec<u8>>>,
        message: &str,
        author: &Author,
    ) -> Result<Oid, GitError> {
        if branch == self.remote.branch
            || branch == self.remote.state_branch
            || !git2::Reference::is_valid_name(&format!("refs/heads/{branch}"))
        {
            return Err(GitError::InvalidBranch {
                url: self.remote.display_url(),
                branch: branch.to_owned(),
            });
        }
        for path in changes.keys() {
            check_path(path).map_err(|reason| GitError::InvalidPath {
                path: path.clone(),
                branch: branch.to_owned(),
                reason,
            })?;
        }
        let tip = self.fetch_branches(&[branch])?[0];
        let commit_error = |source| GitError::Commit {
            url: self.remote.display_url(),
            branch: branch.to_owned(),
            source,
        };
        let repo = self.repo();
        let repo = &*repo;
        let build = || -> Result<Option<Oid>, git2::Error> {
            let base = repo.find_commit(base)?;
            let tree = tree_with(repo, &base.tree()?, changes)?;
            let old = tip.map(|t| repo.find_commit(t)).transpose()?;
            if old.as_ref().is_some_and(|o| o.tree_id() == tree.id()) {
                return Ok(None);
            }
            let mut parents = vec![&base];
            if let Some(old) = old.as_ref() {
                let merged =
                    old.id() == base.id() || repo.graph_descendant_of(base.id(), old.id())?;
                if !merged {
                    parents.insert(0, old);
                }
            }
            write_commit(repo, &tree, &parents, message, author).map(Some)
        };
        let Some(oid) = build().map_err(commit_error)? else {
            return Ok(tip.unwrap_or(base));
        };
        match self.push(branch, oid, tip)? {
            Pushed::Accepted => {
                self.set_tracking(branch, Some(oid)).map_err(commit_error)?;
                tracing::info!(commit = %oid, "branch pushed");
                Ok(oid)
            }
            Pushed::Rejected(status) => Err(GitError::Rejected {
                url: self.remote.display_url(),
                branch: branch.to_owned(),
                attempts: 1,
                status,
            }),
        }
    }

    /// Commit `changes` on the spec branch, on `tip` (what the caller read
    /// the files from), and push it without force: a person's edit made
    /// for them (`gitfleet serve`'s buttons), authored by them. `None` when
    /// `tip` already holds the changes; [`GitError::Rejected`] when the
    /// branch moved since (read it again and retry).
    pub fn commit_to_spec(
        &self,
        tip: Oid,
        changes: &BTreeMap<String, Option<Vec<u8>>>,
        message: &str,
        author: &Author,
    ) -> Result<Option<Oid>, GitError> {
        let branch = self.remote.branch.clone();
        for path in changes.keys() {
            check_path(path).map_err(|reason| GitError::InvalidPath {
                path: path.clone(),
                branch: branch.clone(),
                reason,
            })?;
        }
        let commit_error = |source| GitError::Commit {
            url: self.remote.display_url(),
            branch: branch.clone(),
            source,
        };
        let oid = {
            let repo = self.repo();
            let repo = &*repo;
            let build = || -> Result<Option<Oid>, git2::Error> {
                let base = repo.find_commit(tip)?;
                let tree = tree_with(repo, &base.tree()?, changes)?;
                if tree.id() == base.tree_id() {
                    return Ok(None);
                }
                write_commit(repo, &tree, &[&base], message, author).map(Some)
            };
            match build().map_err(commit_error)? {
                Some(oid) => oid,
                None => return Ok(None),
            }
        };
        match self.push(&branch, oid, Some(tip))? {
            Pushed::Accepted => {
                self.set_tracking(&branch, Some(oid))
                    .map_err(commit_error)?;
                tracing::info!(commit = %oid, author = %author.name, "spec branch pushed");
                Ok(Some(oid))
            }
            Pushed::Rejected(status) => Err(GitError::Rejected {
                url: self.remote.display_url(),
                branch,
                attempts: 1,
                status,
            }),
        }
    }

    /// Push `oid` to `branch`, expected to be at `tip` on the remote. A
    /// rejection is a value; only transport failures are errors.
    fn push(&self, branch: &str, oid: Oid, tip: Option<Oid>) -> Result<Pushed, GitError> {
        let _timer = self.latency.push.start();
        let target = format!("refs/heads/{branch}");
        let push_error = |source| GitError::Push {
            url: self.remote.display_url(),
            branch: branch.to_owned(),
            source,
        };
        let repo = self.repo();
        let mut remote = repo
            .remote_anonymous(&self.remote.url)
            .map_err(push_error)?;
        // No `+`: the remote moves only if `oid` descends from its tip.
        let refspec = format!("{oid}:{target}");
        // libgit2 reports a refusal by the server through this callback and
        // still returns success from `push`.
        let mut status: Option<Option<String>> = None;
        let pushed = {
            let mut callbacks = callbacks(&self.remote.auth);
            callbacks.push_update_reference(|name, refused| {
                if name == target {
                    status = Some(refused.map(str::to_owned));
                }
                Ok(())
            });
            let mut options = PushOptions::new();
            options.remote_callbacks(callbacks);
            remote.push(&[refspec.as_str()], Some(&mut options))
        };
        match pushed {
            Ok(()) => {}
            // libgit2 refuses before sending when the remote tip is not an
            // ancestor of ours or is a commit we have not fetched.
            Err(e) if e.code() == ErrorCode::NotFastForward => {
                return Ok(Pushed::Rejected(match tip {
                    Some(tip) => format!("non-fast-forward: the remote branch moved from {tip}"),
                    None => "non-fast-forward: another writer created the branch".to_owned(),
                }));
            }
            Err(e) => return Err(push_error(e)),
        }
        match status {
            Some(None) => Ok(Pushed::Accepted),
            Some(Some(refused)) => Ok(Pushed::Rejected(refused)),
            None => Err(GitError::Unconfirmed {
                url: self.remote.display_url(),
                branch: branch.to_owned(),
            }),
        }
    }
}

/// Open the bare repository at `dir` with its shallow edges known:
/// `Repository::open_bare` skips reading git's `shallow` file, and a
/// commit at the edge would then show parents the mirror does not hold.
fn open_mirror(dir: &Path) -> Result<Repository, git2::Error> {
    Repository::open_ext(
        dir,
        git2::RepositoryOpenFlags::NO_SEARCH | git2::RepositoryOpenFlags::BARE,
        std::iter::empty::<&std::ffi::OsStr>(),
    )
}

/// `base` with `changes` applied (path → new bytes, or `None` to delete).
fn tree_with<'r>(
    repo: &'r Repository,
    base: &git2::Tree<'_>,
    changes: &BTreeMap<String, Option<Vec<u8>>>,
) -> Result<git2::Tree<'r>, git2::Error> {
    let mut update = TreeUpdateBuilder::new();
    for (path, bytes) in changes {
        match bytes {
            Some(bytes) => {
                update.upsert(path.as_str(), repo.blob(bytes)?, FileMode::Blob);
            }
            // Deleting what is not there is no change.
            None if base.get_path(Path::new(path)).is_ok() => {
                update.remove(path.as_str());
            }
            None => {}
        }
    }
    repo.find_tree(update.create_updated(repo, base)?)
}

fn write_commit(
    repo: &Repository,
    tree: &git2::Tree<'_>,
    parents: &[&git2::Commit<'_>],
    message: &str,
    author: &Author,
) -> Result<Oid, git2::Error> {
    let signature = Signature::now(&author.name, &author.email)?;
    let message = format!("{}\n", message.trim_end());
    repo.commit(None, &signature, &signature, &message, tree, parents)
}

fn tracking_ref(branch: &str) -> String {
    format!("refs/remotes/origin/{branch}")
}

/// Refuse paths that git would store oddly or that escape the tree.
fn check_path(path: &str) -> Result<(), &'static str> {
    if path.is_empty() {
        return Err("empty path");
    }
    if path.contains('\0') {
        return Err("contains a NUL byte");
    }
    if path.contains('\\') {
        return Err("contains a backslash");
    }
    for part in path.split('/') {
        match part {
            "" => return Err("empty path component (leading, trailing or doubled `/`)"),
            "." | ".." => return Err("`.` or `..` component"),
            _ if part.eq_ignore_ascii_case(".git") => return Err("`.git` component"),
            _ => {}
        }
    }
    Ok(())
}

/// `url` with the password or token of its user info replaced.
fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            let user = if userinfo.contains(':') {
                format!("{user}:***")
            } else if user.len() > 20 {
                // A token passed as the user name (`https://<token>@host`).
                "***".to_owned()
            } else {
                user.to_owned()
            };
            format!("{scheme}://{user}@{host}{path}")
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::io::{BufRead, BufReader};
    use std::net::TcpStream;
    use std::process::{Child, Command, Stdio};
    use std::time::Instant;

    use gitfleet_io::git_daemon::GitDaemon;

    /// Run the real `git` in `dir`, ignoring the user's configuration.
    fn git(dir: &Path, args: &[&str]) -> String {
        let out = Command::new("git")
            .args([
                "-c",
                "user.name=human",
                "-c",
                "user.email=human@example.invalid",
                "-c",
                "init.defaultBranch=main",
            ])
            .args(args)
            .current_dir(dir)
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .output()
            .expect("running git");
        assert!(
            out.status.success(),
            "git {args:?} in {} failed: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    fn write(dir: &Path, rel: &str, text: &str) {
        let path = dir.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    /// A bare `remote.git` with a `main` holding two files, and the working
    /// clone (`human/`) that made it.
    struct Fixture {
        dir: tempfile::TempDir,
    }

    impl Fixture {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let human = dir.path().join("human");
            std::fs::create_dir(&human).unwrap();
            git(&human, &["init", "-q"]);
            write(&human, "fleet.kdl", "fleet \"acme\"\n");
            write(&human, "configs/edge/sentinel.kdl", "server {}\n");
            git(&human, &["add", "-A"]);
            git(&human, &["commit", "-qm", "spec"]);
            git(dir.path(), &["init", "-q", "--bare", "remote.git"]);
            git(&human, &["remote", "add", "origin", "../remote.git"]);
            git(&human, &["push", "-q", "origin", "main"]);
            Self { dir }
        }

        fn path(&self, rel: &str) -> PathBuf {
            self.dir.path().join(rel)
        }

        fn bare(&self) -> PathBuf {
            self.path("remote.git")
        }

        fn file_url(&self) -> String {
            format!("file://{}", self.bare().display())
        }

        /// The remote's tip of `branch`.
        fn tip(&self, branch: &str) -> Oid {
            Oid::from_str(&git(
                &self.bare(),
                &["rev-parse", &format!("refs/heads/{branch}")],
            ))
            .unwrap()
        }

        /// `path` at `rev` in the remote.
        fn show(&self, rev: &str, path: &str) -> String {
            git(&self.bare(), &["show", &format!("{rev}:{path}")])
        }

        fn ls_tree(&self, rev: &str) -> Vec<String> {
            git(&self.bare(), &["ls-tree", "-r", "--name-only", rev])
                .lines()
                .map(str::to_owned)
                .collect()
        }

        fn parents(&self, rev: &str) -> Vec<String> {
            git(&self.bare(), &["rev-list", "--parents", "-n1", rev])
                .split_whitespace()
                .skip(1)
                .map(str::to_owned)
                .collect()
        }

        /// Another writer: a clone of the remote, on `branch`, that writes
        /// `files` and pushes them (not forced). Returns the commit.
        fn other_writer(&self, name: &str, url: &str, branch: &str, files: &[(&str, &str)]) -> Oid {
            let dir = self.path(name);
            if !dir.exists() {
                git(self.dir.path(), &["clone", "-q", url, name]);
            }
            git(&dir, &["fetch", "-q", "origin"]);
            let exists = !git(
                &dir,
                &["ls-remote", "origin", &format!("refs/heads/{branch}")],
            )
            .is_empty();
            if exists {
                git(
                    &dir,
                    &["checkout", "-q", "-B", branch, &format!("origin/{branch}")],
                );
            } else {
                git(&dir, &["checkout", "-q", "--orphan", branch]);
                git(&dir, &["rm", "-rqf", "."]);
            }
            for (path, text) in files {
                write(&dir, path, text);
            }
            git(&dir, &["add", "-A"]);
            git(&dir, &["commit", "-qm", &format!("{name} writes")]);
            git(
                &dir,
                &["push", "-q", "origin", &format!("HEAD:refs/heads/{branch}")],
            );
            Oid::from_str(&git(&dir, &["rev-parse", "HEAD"])).unwrap()
        }
    }

    fn changes(entries: &[(&str, Option<&str>)]) -> BTreeMap<String, Option<Vec<u8>>> {
        entries
            .iter()
            .map(|(p, b)| ((*p).to_owned(), b.map(|b| b.as_bytes().to_vec())))
            .collect()
    }

    fn fast_retry() -> Retry {
        Retry {
            attempts: 5,
            backoff: Duration::from_millis(10),
        }
    }

    fn committed(result: Result<StateCommit, GitError>) -> Oid {
        match result {
            Ok(StateCommit::Committed { oid }) => oid,
            other => panic!("expected a commit, got {other:?}"),
        }
    }

    /// Kills the process it holds, by its id, when dropped.
    struct Server(Child);

    impl Drop for Server {
        fn drop(&mut self) {
            drop(self.0.kill());
            drop(self.0.wait());
        }
    }

    fn wait_for_port(server: &mut Server, port: u16) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                server.0.try_wait().unwrap().is_none(),
                "server on port {port} exited"
            );
            assert!(Instant::now() < deadline, "nothing listens on port {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn file_remote_creates_the_state_branch_then_adds_to_it() {
        let fx = Fixture::new();
        let mirror_dir = fx.path("cache/mirror");
        let mirror = Mirror::open_or_clone(Remote::new(fx.file_url()), &mirror_dir)
            .unwrap()
            .with_retry(fast_retry());

        let heads = mirror.fetch().unwrap();
        assert_eq!(heads.branch, fx.tip("main"));
        assert_eq!(heads.state, None);
        let files = mirror.files_at(heads.branch).unwrap();
        assert_eq!(files.text("fleet.kdl"), Some("fleet \"acme\"\n"));
        assert_eq!(files.text("configs/edge/sentinel.kdl"), Some("server {}\n"));
        assert_eq!(files.len(), 2);
        assert_eq!(mirror.state_files().unwrap(), (None, BTreeMap::new()));

        // Nothing to write on a branch that does not exist: no commit.
        let none = changes(&[("rollouts/edge.json", None)]);
        let nothing = mirror.commit_state(&none, "nothing", &Author::default());
        assert_eq!(nothing.unwrap(), StateCommit::NoChange);

        let first = changes(&[
            ("rollouts/edge.json", Some("{\"step\":1}")),
            ("wireguard/mesh.json", Some("{}")),
        ]);
        let a = committed(mirror.commit_state(&first, "rollout edge: step 1", &Author::default()));
        assert_eq!(fx.tip("gitfleet/state"), a);
        assert!(fx.parents(&a.to_string()).is_empty(), "an orphan root");
        assert_eq!(
            fx.ls_tree(&a.to_string()),
            ["rollouts/edge.json", "wireguard/mesh.json"],
            "none of main's files"
        );
        assert_eq!(
            git(
                &fx.bare(),
                &[
                    "log",
                    "-1",
                    "--format=%an <%ae>|%cn <%ce>|%s",
                    &a.to_string()
                ]
            ),
            "gitfleet <gitfleet@localhost>|gitfleet <gitfleet@localhost>|rollout edge: step 1"
        );

        let again = mirror.commit_state(&first, "same", &Author::default());
        assert_eq!(again.unwrap(), StateCommit::NoChange);
        let empty = mirror.commit_state(&BTreeMap::new(), "empty", &Author::default());
        assert_eq!(empty.unwrap(), StateCommit::NoChange);
        assert_eq!(fx.tip("gitfleet/state"), a);

        let second = changes(&[
            ("rollouts/edge.json", Some("{\"step\":2}")),
            ("wireguard/mesh.json", None),
            ("enroll/n1.json", Some("{}")),
        ]);
        let bot = Author {
            name: "fleet bot".to_owned(),
            email: "bot@example.invalid".to_owned(),
        };
        let b = committed(mirror.commit_state(&second, "rollout edge: step 2", &bot));
        assert_eq!(fx.parents(&b.to_string()), [a.to_string()]);
        assert_eq!(
            fx.ls_tree(&b.to_string()),
            ["enroll/n1.json", "rollouts/edge.json"]
        );
        assert_eq!(
            git(
                &fx.bare(),
                &["log", "-1", "--format=%an <%ae>", &b.to_string()]
            ),
            "fleet bot <bot@example.invalid>"
        );
        assert_eq!(fx.tip("main"), heads.branch);

        // A reopened mirror reads the state it pushed without fetching.
        drop(mirror);
        let reopened = Mirror::open_or_clone(Remote::new(fx.file_url()), &mirror_dir).unwrap();
        let (tip, state) = reopened.state_files().unwrap();
        assert_eq!(tip, Some(b));
        assert_eq!(
            state,
            BTreeMap::from([
                ("enroll/n1.json".to_owned(), b"{}".to_vec()),
                ("rollouts/edge.json".to_owned(), b"{\"step\":2}".to_vec()),
            ])
        );
        assert_eq!(
            reopened.fetch().unwrap(),
            Heads {
                branch: heads.branch,
                state: Some(b)
            }
        );
    }

    #[test]
    fn last_change_where_skips_changes_nobody_cares_about() {
        let fx = Fixture::new();
        let human = fx.path("human");
        let commit = |files: &[(&str, Option<&str>)], message: &str| {
            for (path, text) in files {
                match text {
                    Some(t) => write(&human, path, t),
                    None => std::fs::remove_file(human.join(path)).unwrap(),
                }
            }
            git(&human, &["add", "-A"]);
            git(&human, &["commit", "-qm", message]);
            git(&human, &["push", "-q", "origin", "main"]);
            Oid::from_str(&git(&human, &["rev-parse", "HEAD"])).unwrap()
        };
        let mirror = Mirror::open_or_clone(Remote::new(fx.file_url()), &fx.path("mirror")).unwrap();
        // Files whose text contains "member" matter.
        let cares = |_: &str, old: Option<&[u8]>, new: Option<&[u8]>| {
            [old, new]
                .into_iter()
                .flatten()
                .any(|b| String::from_utf8_lossy(b).contains("member"))
        };
        let last = |mirror: &Mirror| {
            let head = mirror.fetch().unwrap().branch;
            mirror
                .last_change_where(head, "meshes/m.kdl", "nodes", cares)
                .unwrap()
        };

        let mesh = commit(&[("meshes/m.kdl", Some("cidr\n"))], "mesh");
        assert_eq!(last(&mirror), mesh);
        let a = commit(&[("nodes/a.kdl", Some("member\n"))], "a joins");
        commit(&[("nodes/b.kdl", Some("other\n"))], "b, not a member");
        commit(&[("fleet.kdl", Some("fleet \"x\"\n"))], "unrelated");
        assert_eq!(last(&mirror), a);
        // A member leaving counts, by label edit or by deletion.
        let leaves = commit(&[("nodes/a.kdl", Some("other\n"))], "a leaves");
        assert_eq!(last(&mirror), leaves);
        commit(&[("nodes/a.kdl", Some("member\n"))], "a is back");
        let deleted = commit(&[("nodes/a.kdl", None)], "a is gone");
        commit(&[("nodes/b.kdl", None)], "b is gone");
        assert_eq!(last(&mirror), deleted);
        let edited = commit(&[("meshes/m.kdl", Some("cidr 2\n"))], "mesh edit");
        assert_eq!(last(&mirror), edited);
    }

    #[test]
    fn plain_paths_work_and_bad_input_is_refused() {
        let fx = Fixture::new();
        let mirror = Mirror::open_or_clone(
            Remote::new(fx.bare().display().to_string()),
            &fx.path("mirror"),
        )
        .unwrap();
        assert_eq!(mirror.fetch().unwrap().branch, fx.tip("main"));
        for bad in [
            "",
            "/abs",
            "a//b",
            "a/../b",
            ".git/config",
            "x/.GIT/y",
            "dir/",
        ] {
            let err = mirror
                .commit_state(&changes(&[(bad, Some("x"))]), "bad", &Author::default())
                .unwrap_err();
            assert!(
                matches!(err, GitError::InvalidPath { .. }),
                "{bad:?}: {err}"
            );
        }

        let mut remote = Remote::new(fx.file_url());
        remote.branch = "nope".to_owned();
        let err = Mirror::open_or_clone(remote, &fx.path("other")).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("branch nope does not exist at {}", fx.file_url())
        );
        let mut remote = Remote::new(fx.file_url());
        remote.state_branch = "main".to_owned();
        assert!(matches!(
            Mirror::open_or_clone(remote, &fx.path("same")),
            Err(GitError::SameBranch { .. })
        ));
    }

    #[test]
    fn git_daemon_fetch_and_commit() {
        let fx = Fixture::new();
        let daemon = GitDaemon::start(fx.dir.path());
        let url = daemon.url("remote.git");
        let mirror = Mirror::open_or_clone(Remote::new(url), &fx.path("mirror"))
            .unwrap()
            .with_retry(fast_retry());
        let heads = mirror.fetch().unwrap();
        assert_eq!(
            heads,
            Heads {
                branch: fx.tip("main"),
                state: None
            }
        );
        assert_eq!(mirror.files_at(heads.branch).unwrap().len(), 2);

        let a = committed(mirror.commit_state(
            &changes(&[("rollouts/edge.json", Some("1"))]),
            "step 1",
            &Author::default(),
        ));
        let b = committed(mirror.commit_state(
            &changes(&[("rollouts/edge.json", Some("2"))]),
            "step 2",
            &Author::default(),
        ));
        assert_eq!(fx.tip("gitfleet/state"), b);
        assert_eq!(fx.parents(&b.to_string()), [a.to_string()]);
        assert_eq!(fx.show("gitfleet/state", "rollouts/edge.json"), "2");
    }

    /// A refusal the server sends back (here a pre-receive hook) arrives
    /// only through the per-ref status: it is retried, and reported when it
    /// never stops.
    #[test]
    fn server_side_rejection_is_seen_and_retried() {
        let fx = Fixture::new();
        let marker = fx.path("refused-once");
        let hook = fx.bare().join("hooks/pre-receive");
        std::fs::write(
            &hook,
            format!(
                "#!/bin/sh\nif [ ! -e '{m}' ]; then touch '{m}'; echo busy >&2; exit 1; fi\n",
                m = marker.display()
            ),
        )
        .unwrap();
        let mut mode = std::fs::metadata(&hook).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut mode, 0o755);
        std::fs::set_permissions(&hook, mode).unwrap();

        let daemon = GitDaemon::start(fx.dir.path());
        let url = daemon.url("remote.git");
        let mirror = Mirror::open_or_clone(Remote::new(url.clone()), &fx.path("mirror"))
            .unwrap()
            .with_retry(fast_retry());
        let oid = committed(mirror.commit_state(
            &changes(&[("a.json", Some("1"))]),
            "a",
            &Author::default(),
        ));
        assert!(marker.exists(), "the first push was refused");
        assert_eq!(fx.tip("gitfleet/state"), oid);

        std::fs::write(&hook, "#!/bin/sh\necho 'branch is frozen' >&2\nexit 1\n").unwrap();
        let err = mirror
            .commit_state(&changes(&[("a.json", Some("2"))]), "a", &Author::default())
            .unwrap_err();
        assert!(
            matches!(&err, GitError::Rejected { attempts: 5, status, .. } if status.contains("hook declined")),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            format!(
                "push of branch gitfleet/state to {url} rejected 5 times, last: pre-receive hook declined"
            )
        );
        assert_eq!(fx.tip("gitfleet/state"), oid, "unchanged");
    }

    #[test]
    fn a_lost_race_is_rebuilt_on_the_other_writers_commit() {
        let fx = Fixture::new();
        lost_race_is_rebuilt(&fx, &fx.file_url());
    }

    #[test]
    fn over_git_daemon_a_lost_race_is_rebuilt_on_the_other_writers_commit() {
        let fx = Fixture::new();
        let daemon = GitDaemon::start(fx.dir.path());
        lost_race_is_rebuilt(&fx, &daemon.url("remote.git"));
    }

    /// Another writer (a person, another replica) pushes to the state
    /// branch between our fetch and our push: our commit is rebuilt on
    /// theirs, and both their files and ours are on the branch.
    fn lost_race_is_rebuilt(fx: &Fixture, url: &str) {
        let url = url.to_owned();
        let mirror = Mirror::open_or_clone(Remote::new(url.clone()), &fx.path("mirror"))
            .unwrap()
            .with_retry(fast_retry());
        let first = committed(mirror.commit_state(
            &changes(&[
                ("shared.json", Some("base")),
                ("rollouts/a.json", Some("1")),
            ]),
            "first",
            &Author::default(),
        ));
        mirror.fetch().unwrap();

        // Another writer pushes after our fetch, on the same branch.
        let theirs = fx.other_writer(
            "other",
            &url,
            "gitfleet/state",
            &[("other.json", "theirs"), ("shared.json", "theirs")],
        );
        assert_eq!(fx.parents(&theirs.to_string()), [first.to_string()]);

        let ours = committed(mirror.commit_state(
            &changes(&[
                ("shared.json", Some("ours")),
                ("rollouts/b.json", Some("2")),
            ]),
            "second",
            &Author::default(),
        ));
        assert_eq!(fx.tip("gitfleet/state"), ours);
        // Linear, on top of theirs: nothing was forced over it.
        assert_eq!(fx.parents(&ours.to_string()), [theirs.to_string()]);
        git(
            &fx.bare(),
            &[
                "merge-base",
                "--is-ancestor",
                &theirs.to_string(),
                &ours.to_string(),
            ],
        );
        assert_eq!(
            fx.ls_tree("gitfleet/state"),
            [
                "other.json",
                "rollouts/a.json",
                "rollouts/b.json",
                "shared.json"
            ]
        );
        assert_eq!(fx.show("gitfleet/state", "other.json"), "theirs");
        assert_eq!(fx.show("gitfleet/state", "shared.json"), "ours");
        assert_eq!(mirror.state_files().unwrap().0, Some(ours));
    }

    /// A fresh replica over `git daemon` fetches the state branch's tip
    /// alone: the same rollout state as a full mirror, one commit of
    /// history; it commits on that tip, loses a race, rebuilds on the
    /// other writer's commit and pushes, and the remote keeps every commit.
    #[test]
    fn a_cold_start_fetches_the_state_tip_alone_and_commits_and_races_from_it() {
        let fx = Fixture::new();
        let daemon = GitDaemon::start(fx.dir.path());
        let url = daemon.url("remote.git");
        let full = Mirror::open_or_clone(Remote::new(url.clone()), &fx.path("full"))
            .unwrap()
            .with_retry(fast_retry());
        for i in 0..30 {
            let n = i.to_string();
            committed(full.commit_state(
                &changes(&[("rollouts/a.json", Some(n.as_str()))]),
                "step",
                &Author::default(),
            ));
        }
        let fresh = Mirror::open_or_clone(Remote::new(url.clone()), &fx.path("fresh"))
            .unwrap()
            .with_retry(fast_retry());
        let heads = fresh.fetch().unwrap();
        assert_eq!(heads.state, Some(fx.tip("gitfleet/state")));
        assert!(fresh.repo().is_shallow());
        assert_eq!(history_len(&fresh, heads.state.unwrap()), 1);
        assert_eq!(fresh.state_files().unwrap(), full.state_files().unwrap());

        // The full mirror commits after the fresh one fetched: the fresh
        // one loses the race and rebuilds on that commit.
        let theirs = committed(full.commit_state(
            &changes(&[("rollouts/b.json", Some("theirs"))]),
            "theirs",
            &Author::default(),
        ));
        let ours = committed(fresh.commit_state(
            &changes(&[("rollouts/c.json", Some("ours"))]),
            "ours",
            &Author::default(),
        ));
        assert_eq!(fx.tip("gitfleet/state"), ours);
        assert_eq!(fx.parents(&ours.to_string()), [theirs.to_string()]);
        assert_eq!(
            fx.ls_tree("gitfleet/state"),
            ["rollouts/a.json", "rollouts/b.json", "rollouts/c.json"]
        );
        assert_eq!(
            git(&fx.bare(), &["rev-list", "--count", "gitfleet/state"]),
            "32"
        );
        // Still shallow after the fetches of the race: it holds only what
        // came since it started.
        fresh.fetch().unwrap();
        assert_eq!(history_len(&fresh, ours), 3);
    }

    /// How many commits of `tip`'s history `mirror` holds.
    fn history_len(mirror: &Mirror, tip: Oid) -> usize {
        let repo = mirror.repo();
        let mut walk = repo.revwalk().unwrap();
        walk.push(tip).unwrap();
        walk.count()
    }

    /// `n` commits on `main` of `fx`'s remote, each rewriting
    /// `history.txt`, made with `git fast-import` (fast enough for
    /// thousands); `dated` is added to the committer time, so histories
    /// made twice differ.
    fn grow_main(fx: &Fixture, n: usize) {
        use std::io::Write;
        let tip = fx.tip("main");
        let mut stream = String::new();
        for i in 1..=n {
            let data = format!("step {i}\n");
            stream.push_str(&format!(
                "commit refs/heads/main\nmark :{i}\ncommitter bench <b@example.invalid> {} +0000\ndata 4\nstep\n",
                1_700_000_000 + i
            ));
            if i == 1 {
                stream.push_str(&format!("from {tip}\n"));
            } else {
                stream.push_str(&format!("from :{}\n", i - 1));
            }
            stream.push_str(&format!(
                "M 100644 inline history.txt\ndata {}\n{data}\n",
                data.len()
            ));
        }
        let mut child = Command::new("git")
            .args(["fast-import", "--quiet"])
            .current_dir(fx.bare())
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stream.as_bytes())
            .unwrap();
        assert!(child.wait().unwrap().success());
    }

    /// A commit on `main` of the remote, changing `path`, made by the
    /// human's clone; its id.
    fn human_commit(fx: &Fixture, path: &str, text: &str) -> Oid {
        let human = fx.path("human");
        git(&human, &["pull", "-q", "--ff-only", "origin", "main"]);
        write(&human, path, text);
        git(&human, &["add", "-A"]);
        git(&human, &["commit", "-qm", &format!("edit {path}")]);
        git(&human, &["push", "-q", "origin", "main"]);
        Oid::from_str(&git(&human, &["rev-parse", "HEAD"])).unwrap()
    }

    /// A cold start over `git daemon` fetches the spec branch's last
    /// commits only; the last change of a directory further down, an old
    /// commit to approve and the files of an old commit are found by
    /// fetching more, the same as a whole mirror finds them, and the
    /// mirror still does not hold the whole history.
    #[test]
    fn a_shallow_spec_branch_deepens_only_as_far_as_a_walk_needs() {
        let fx = Fixture::new();
        // Older than anything the walks below reach, to see that the
        // mirror stays shallow.
        grow_main(&fx, 2000);
        let configs = human_commit(&fx, "configs/edge/sentinel.kdl", "server { }\n");
        grow_main(&fx, 300);
        let recent = human_commit(&fx, "configs/api/sentinel.kdl", "api\n");
        grow_main(&fx, 2);
        let head = human_commit(&fx, "fleet.kdl", "fleet \"acme\" // renamed\n");
        let whole = git(&fx.bare(), &["rev-list", "--count", "main"]);
        let daemon = GitDaemon::start(fx.dir.path());
        let url = daemon.url("remote.git");

        let full = Mirror::open_or_clone(Remote::new(fx.file_url()), &fx.path("full")).unwrap();
        assert_eq!(full.fetch().unwrap().branch, head);
        let fresh = Mirror::open_or_clone(Remote::new(url.clone()), &fx.path("fresh")).unwrap();
        assert_eq!(fresh.fetch().unwrap().branch, head);
        assert_eq!(history_len(&fresh, head), SPEC_DEPTH as usize);

        // Not a commit id (and the mirror still shallow): nothing to fetch for it.
        let fetches = fresh.latency().fetch.count();
        assert_eq!(fresh.commit_on(head, "main~3000").unwrap(), None);
        assert_eq!(fresh.latency().fetch.count(), fetches);
        // Within what a cold start fetched: nothing more is fetched.
        assert_eq!(fresh.last_change(head, "configs/api").unwrap(), recent);
        assert_eq!(history_len(&fresh, head), SPEC_DEPTH as usize);
        // Another process on the same cache has parsed the edge commit
        // (parentless, in its cache) before this one deepens.
        let other = Mirror::open_or_clone(Remote::new(url.clone()), &fx.path("fresh")).unwrap();
        assert_eq!(history_len(&other, head), SPEC_DEPTH as usize);
        // Further down: deepened, to the same answer as the whole mirror.
        assert_eq!(full.last_change(head, "configs/edge").unwrap(), configs);
        assert_eq!(fresh.last_change(head, "configs/edge").unwrap(), configs);
        // The other process's cache is stale: it reopens, not stops there.
        assert_eq!(other.last_change(head, "configs/edge").unwrap(), configs);
        let held = history_len(&fresh, head);
        assert!(held > 304 && held.to_string() != whole, "{held} of {whole}");
        assert!(fresh.repo().is_shallow());
        // Once there, found again without a fetch, also by the next
        // process on the same cache.
        let before = fresh.latency().fetch.count();
        assert_eq!(fresh.last_change(head, "configs/edge").unwrap(), configs);
        assert_eq!(fresh.latency().fetch.count(), before);
        let next = Mirror::open_or_clone(Remote::new(url), &fx.path("fresh")).unwrap();
        assert_eq!(next.last_change(head, "configs/edge").unwrap(), configs);
        assert_eq!(next.latency().fetch.count(), 0);
        assert_eq!(next.last_change(head, "history.txt").unwrap(), {
            Oid::from_str(&git(&fx.bare(), &["rev-parse", "main~1"])).unwrap()
        });

        // The first commit: the whole history, and the root is a root.
        let root = git(&fx.bare(), &["rev-list", "--max-parents=0", "main"]);
        assert_eq!(
            fresh.commit_on(head, &root).unwrap(),
            full.commit_on(head, &root).unwrap()
        );
        assert_eq!(
            fresh.commit_on(head, &root).unwrap().unwrap().to_string(),
            root
        );
        assert_eq!(
            fresh.last_change(head, "history.txt").unwrap().to_string(),
            {
                git(
                    &fx.bare(),
                    &["log", "-1", "--format=%H", "main", "--", "history.txt"],
                )
            }
        );
        assert_eq!(
            fresh.files_at(Oid::from_str(&root).unwrap()).unwrap(),
            full.files_at(Oid::from_str(&root).unwrap()).unwrap()
        );
        // No such commit: looked for in the whole history, not found.
        assert_eq!(fresh.commit_on(head, &"0".repeat(40)).unwrap(), None);
        // Later fetches bring what is new.
        let newer = human_commit(&fx, "configs/api/sentinel.kdl", "api 2\n");
        assert_eq!(fresh.fetch().unwrap().branch, newer);
        assert_eq!(fresh.last_change(newer, "configs/api").unwrap(), newer);
    }

    /// The files of an old commit (the rules in force at it) on a shallow
    /// mirror: fetched as far down as that commit, not the whole history.
    #[test]
    fn the_files_of_an_old_commit_are_fetched_on_demand() {
        let fx = Fixture::new();
        grow_main(&fx, 2000);
        let rules = human_commit(&fx, "rules.kdl", "rule\n");
        grow_main(&fx, 150);
        let daemon = GitDaemon::start(fx.dir.path());
        let fresh = Mirror::open_or_clone(Remote::new(daemon.url("remote.git")), &fx.path("fresh"))
            .unwrap();
        let head = fresh.fetch().unwrap().branch;
        assert_eq!(
            fresh.files_at(rules).unwrap().text("rules.kdl"),
            Some("rule\n")
        );
        assert_eq!(
            fresh.blob_at(rules, "rules.kdl").unwrap().as_deref(),
            Some(&b"rule\n"[..])
        );
        let held = history_len(&fresh, head);
        assert!((151..2000).contains(&held), "{held}");
    }

    /// A mirror made before cold starts were shallow (the whole history
    /// under the same refs) goes on as it is: fetches add to it, walks
    /// read it, nothing is fetched shallow.
    #[test]
    fn a_whole_mirror_from_before_keeps_working() {
        let fx = Fixture::new();
        let first = human_commit(&fx, "configs/edge/sentinel.kdl", "v1\n");
        grow_main(&fx, 100);
        let old = fx.path("old");
        git(fx.dir.path(), &["init", "-q", "--bare", "old"]);
        git(
            &old,
            &[
                "fetch",
                "-q",
                &fx.file_url(),
                "+refs/heads/main:refs/remotes/origin/main",
            ],
        );
        let daemon = GitDaemon::start(fx.dir.path());
        let mirror = Mirror::open_or_clone(Remote::new(daemon.url("remote.git")), &old).unwrap();
        let head = human_commit(&fx, "fleet.kdl", "fleet \"b\"\n");
        assert_eq!(mirror.fetch().unwrap().branch, head);
        assert!(!mirror.repo().is_shallow());
        assert_eq!(mirror.last_change(head, "configs/edge").unwrap(), first);
    }

    /// `n` commits on the remote's state branch dated `date` (e.g.
    /// "2025-01-01T00:00:00Z"), each writing `rollouts/old.json`, pushed
    /// by a clone of `url`; the last one.
    fn old_state_commits(fx: &Fixture, url: &str, n: usize, date: &str) -> Oid {
        let dir = fx.path("old-writer");
        if !dir.exists() {
            git(fx.dir.path(), &["clone", "-q", url, "old-writer"]);
        }
        git(&dir, &["checkout", "-q", "--orphan", "gitfleet/state"]);
        git(&dir, &["rm", "-rqf", "."]);
        for i in 0..n {
            write(&dir, "rollouts/old.json", &i.to_string());
            git(&dir, &["add", "-A"]);
            let out = Command::new("git")
                .args([
                    "-c",
                    "user.name=old",
                    "-c",
                    "user.email=old@example.invalid",
                ])
                .args(["commit", "-qm", &format!("old step {i}")])
                .current_dir(&dir)
                .env("GIT_CONFIG_GLOBAL", "/dev/null")
                .env("GIT_AUTHOR_DATE", date)
                .env("GIT_COMMITTER_DATE", date)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        git(
            &dir,
            &["push", "-q", "origin", "HEAD:refs/heads/gitfleet/state"],
        );
        Oid::from_str(&git(&dir, &["rev-parse", "HEAD"])).unwrap()
    }

    /// Old state history squashed, newer commits rebuilt on it with their
    /// messages and files, the old tip kept under a tag, and a replica that
    /// still has the old tip loses its next push and rebuilds on the new.
    fn compaction_round_trip(url: &str, fx: &Fixture) {
        let old_tip = old_state_commits(fx, url, 20, "2025-01-01T00:00:00Z");
        let replica = Mirror::open_or_clone(Remote::new(url), &fx.path("replica"))
            .unwrap()
            .with_retry(fast_retry());
        replica.fetch().unwrap();
        let mut recent = Vec::new();
        for i in 0..3 {
            let n = i.to_string();
            recent.push(committed(replica.commit_state(
                &changes(&[("rollouts/new.json", Some(n.as_str()))]),
                &format!("new step {i}"),
                &Author::default(),
            )));
        }
        let tip = fx.tip("gitfleet/state");
        assert_eq!(tip, recent[2]);
        let files_before = fx.ls_tree("gitfleet/state");

        let admin = Mirror::open_or_clone(Remote::new(url), &fx.path("admin")).unwrap();
        // 2026-01-01: the 20 old commits go, the 3 new stay.
        let c = admin
            .compact_state(1_767_225_600, &Author::default())
            .unwrap()
            .unwrap();
        assert_eq!((c.squashed, c.kept, c.old_tip), (20, 3, tip));
        assert_eq!(c.newest_squashed, old_tip);
        admin.publish_compaction(&c, "archive/one").unwrap();

        assert_eq!(fx.tip("gitfleet/state"), c.new_tip);
        assert_eq!(
            git(&fx.bare(), &["rev-parse", "refs/tags/archive/one"]),
            tip.to_string()
        );
        assert_eq!(
            git(&fx.bare(), &["rev-list", "--count", "gitfleet/state"]),
            "4"
        );
        assert_eq!(fx.ls_tree("gitfleet/state"), files_before);
        assert_eq!(
            git(
                &fx.bare(),
                &["diff", &tip.to_string(), &c.new_tip.to_string()]
            ),
            ""
        );
        assert_eq!(
            git(&fx.bare(), &["log", "--format=%s", "gitfleet/state"]),
            "new step 2\nnew step 1\nnew step 0\ngitfleet: state history up to 1735689600 squashed"
        );

        // The replica still stands on the old tip: its push is refused
        // and rebuilt on the compacted branch.
        let after = committed(replica.commit_state(
            &changes(&[("rollouts/new.json", Some("after"))]),
            "after the compaction",
            &Author::default(),
        ));
        assert_eq!(fx.parents(&after.to_string()), [c.new_tip.to_string()]);
        assert_eq!(fx.show("gitfleet/state", "rollouts/old.json"), "19");

        // Again, while another writer moves the branch: nothing replaced.
        let c2 = admin
            .compact_state(2_000_000_000, &Author::default())
            .unwrap()
            .unwrap();
        let moved = committed(replica.commit_state(
            &changes(&[("rollouts/new.json", Some("meanwhile"))]),
            "meanwhile",
            &Author::default(),
        ));
        let err = admin.publish_compaction(&c2, "archive/two").unwrap_err();
        assert!(matches!(err, GitError::Moved { .. }), "{err}");
        assert!(err.to_string().contains("moved meanwhile"), "{err}");
        assert_eq!(fx.tip("gitfleet/state"), moved);
        // ... and no tag left behind: the same name works next time.
        assert!(git(&fx.bare(), &["tag", "--list", "archive/two"]).is_empty());
        // The same tag name at another commit is refused too.
        let c3 = admin
            .compact_state(2_000_000_000, &Author::default())
            .unwrap()
            .unwrap();
        let err = admin.publish_compaction(&c3, "archive/one").unwrap_err();
        assert!(matches!(err, GitError::TagTaken { .. }), "{err}");
        assert_eq!(fx.tip("gitfleet/state"), moved);
        // Nothing old enough: nothing to do.
        assert_eq!(
            admin
                .compact_state(1_000_000_000, &Author::default())
                .unwrap(),
            None
        );
    }

    #[test]
    fn over_git_daemon_state_history_is_compacted_under_a_tag() {
        let fx = Fixture::new();
        let daemon = GitDaemon::start(fx.dir.path());
        compaction_round_trip(&daemon.url("remote.git"), &fx);
    }

    #[test]
    fn a_local_state_branch_is_compacted_under_a_tag() {
        let fx = Fixture::new();
        compaction_round_trip(&fx.file_url(), &fx);
    }

    #[test]
    fn a_local_remote_is_fetched_whole() {
        let fx = Fixture::new();
        let mirror = Mirror::open_or_clone(Remote::new(fx.file_url()), &fx.path("mirror"))
            .unwrap()
            .with_retry(fast_retry());
        for i in 0..3 {
            let n = i.to_string();
            committed(mirror.commit_state(
                &changes(&[("rollouts/a.json", Some(n.as_str()))]),
                "step",
                &Author::default(),
            ));
        }
        let fresh = Mirror::open_or_clone(Remote::new(fx.file_url()), &fx.path("fresh")).unwrap();
        fresh.fetch().unwrap();
        assert!(!fresh.repo().is_shallow());
        assert_eq!(fresh.state_files().unwrap(), mirror.state_files().unwrap());
    }

    #[test]
    fn a_lost_race_to_create_the_state_branch_is_rebuilt_too() {
        let fx = Fixture::new();
        let url = fx.file_url();
        let mirror = Mirror::open_or_clone(Remote::new(url.clone()), &fx.path("mirror"))
            .unwrap()
            .with_retry(fast_retry());
        assert_eq!(mirror.fetch().unwrap().state, None);
        let theirs = fx.other_writer("other", &url, "gitfleet/state", &[("other.json", "x")]);
        let ours = committed(mirror.commit_state(
            &changes(&[("ours.json", Some("y"))]),
            "ours",
            &Author::default(),
        ));
        assert_eq!(fx.parents(&ours.to_string()), [theirs.to_string()]);
        assert_eq!(fx.ls_tree("gitfleet/state"), ["other.json", "ours.json"]);
    }

    #[test]
    fn a_promotion_branch_fast_forwards_and_shows_only_its_file() {
        let fx = Fixture::new();
        let mirror = Mirror::open_or_clone(Remote::new(fx.file_url()), &fx.path("m")).unwrap();
        let main = mirror.fetch().unwrap().branch;
        let branch = "gitfleet/promote/prod";
        let file = |text: &str| changes(&[("promotions/prod.json", Some(text))]);
        let a = mirror
            .update_branch(branch, main, &file("1"), "promote 1", &Author::default())
            .unwrap();
        assert_eq!(fx.tip(branch), a);
        assert_eq!(fx.parents(&a.to_string()), [main.to_string()]);
        assert_eq!(fx.show(branch, "promotions/prod.json"), "1");
        assert_eq!(fx.show(branch, "fleet.kdl"), "fleet \"acme\"");

        // The same files again: no new commit.
        let same = mirror.update_branch(branch, main, &file("1"), "again", &Author::default());
        assert_eq!(same.unwrap(), a);

        // main moved on: a merge of the old tip and main, a fast-forward.
        let human = fx.path("human");
        write(&human, "fleet.kdl", "fleet \"acme\" // moved\n");
        git(&human, &["commit", "-qam", "move main"]);
        git(&human, &["push", "-q", "origin", "main"]);
        let main2 = mirror.fetch().unwrap().branch;
        let b = mirror
            .update_branch(branch, main2, &file("2"), "promote 2", &Author::default())
            .unwrap();
        assert_eq!(
            fx.parents(&b.to_string()),
            [a.to_string(), main2.to_string()]
        );
        assert_eq!(fx.show(branch, "fleet.kdl"), "fleet \"acme\" // moved");
        let diff = git(
            &fx.bare(),
            &["diff", "--name-only", &format!("main...{branch}")],
        );
        assert_eq!(diff, "promotions/prod.json");

        // Once main has merged it, the next commit has main alone as parent.
        git(&human, &["pull", "-q", "--no-rebase", "origin", branch]);
        git(&human, &["push", "-q", "origin", "main"]);
        let main3 = mirror.fetch().unwrap().branch;
        let c = mirror
            .update_branch(branch, main3, &file("3"), "promote 3", &Author::default())
            .unwrap();
        assert_eq!(fx.parents(&c.to_string()), [main3.to_string()]);

        // Never the spec or state branch.
        for wrong in ["main", "gitfleet/state", "bad..name"] {
            let e = mirror.update_branch(wrong, main3, &file("4"), "x", &Author::default());
            assert!(
                matches!(e, Err(GitError::InvalidBranch { .. })),
                "{wrong}: {e:?}"
            );
        }
    }

    #[test]
    fn a_human_commit_to_main_is_left_alone() {
        let fx = Fixture::new();
        let url = fx.file_url();
        let mirror = Mirror::open_or_clone(Remote::new(url.clone()), &fx.path("mirror"))
            .unwrap()
            .with_retry(fast_retry());
        let before = mirror.fetch().unwrap();
        let human = fx.other_writer("person", &url, "main", &[("nodes/n1.kdl", "node")]);
        assert_ne!(human, before.branch);

        committed(mirror.commit_state(
            &changes(&[("rollouts/edge.json", Some("1"))]),
            "state",
            &Author::default(),
        ));
        assert_eq!(fx.tip("main"), human, "main is as the human left it");
        let after = mirror.fetch().unwrap();
        assert_eq!(after.branch, human);
        assert!(mirror
            .files_at(after.branch)
            .unwrap()
            .get("nodes/n1.kdl")
            .is_some());
        assert!(!fx
            .ls_tree("gitfleet/state")
            .contains(&"fleet.kdl".to_owned()));
    }

    #[test]
    fn a_deleted_state_branch_is_forgotten_on_fetch() {
        let fx = Fixture::new();
        let mirror = Mirror::open_or_clone(Remote::new(fx.file_url()), &fx.path("mirror")).unwrap();
        committed(mirror.commit_state(&changes(&[("a", Some("1"))]), "a", &Author::default()));
        git(&fx.bare(), &["branch", "-D", "gitfleet/state"]);
        assert_eq!(mirror.fetch().unwrap().state, None);
        assert_eq!(mirror.state_files().unwrap(), (None, BTreeMap::new()));
    }

    /// Smart HTTP through `git http-backend`, behind a small Python server
    /// that demands the token as basic auth.
    const HTTP_SERVER: &str = r#"
import base64, os, subprocess, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
root, token = sys.argv[1], sys.argv[2]
expected = "Basic " + base64.b64encode(("x-access-token:" + token).encode()).decode()

class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return out
                out += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def serve(self):
        data = self.body()
        if self.headers.get("Authorization") != expected:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="git"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        path, _, query = self.path.partition("?")
        env = dict(os.environ, GIT_PROJECT_ROOT=root, GIT_HTTP_EXPORT_ALL="1",
                   GATEWAY_INTERFACE="CGI/1.1", REQUEST_METHOD=self.command,
                   PATH_INFO=path, QUERY_STRING=query, REMOTE_USER="x-access-token",
                   REMOTE_ADDR="127.0.0.1", CONTENT_LENGTH=str(len(data)),
                   CONTENT_TYPE=self.headers.get("Content-Type", ""))
        if self.headers.get("Content-Encoding"):
            env["HTTP_CONTENT_ENCODING"] = self.headers["Content-Encoding"]
        out = subprocess.run(["git", "http-backend"], input=data, env=env,
                             stdout=subprocess.PIPE).stdout
        head, _, rest = out.partition(b"\r\n\r\n")
        status, headers = 200, []
        for line in head.decode().split("\r\n"):
            name, _, value = line.partition(": ")
            if name.lower() == "status":
                status = int(value.split()[0])
            elif name:
                headers.append((name, value))
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(rest)))
        self.end_headers()
        self.wfile.write(rest)

    do_GET = serve
    do_POST = serve

server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
"#;

    fn http_server(root: &Path, token: &str) -> Option<(Server, u16)> {
        let child = Command::new("python3")
            .args(["-c", HTTP_SERVER])
            .arg(root)
            .arg(token)
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .ok()?;
        let mut server = Server(child);
        let stdout = server.0.stdout.take()?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).ok()?;
        let port = line.trim().parse().ok()?;
        wait_for_port(&mut server, port);
        Some((server, port))
    }

    #[test]
    fn smart_http_with_a_token() {
        let fx = Fixture::new();
        let Some((_server, port)) = http_server(fx.dir.path(), "s3cret") else {
            eprintln!("python3 is not available: skipping the smart HTTP test");
            return;
        };
        let url = format!("http://127.0.0.1:{port}/remote.git");

        let mut wrong = Remote::new(url.clone());
        wrong.auth = Auth::Token("wrong".to_owned());
        let err = Mirror::open_or_clone(wrong, &fx.path("wrong")).unwrap_err();
        assert!(matches!(err, GitError::Fetch { .. }), "{err:?}");
        let source = std::error::Error::source(&err).map(ToString::to_string);
        assert_eq!(
            source.as_deref(),
            Some("the remote rejected the credentials"),
            "refused tokens are not retried forever"
        );
        let err = Mirror::open_or_clone(Remote::new(url.clone()), &fx.path("anon")).unwrap_err();
        let source = std::error::Error::source(&err).map(ToString::to_string);
        assert_eq!(
            source.as_deref(),
            Some("the remote asks for credentials and none are configured")
        );

        let mut remote = Remote::new(url);
        remote.auth = Auth::Token("s3cret".to_owned());
        let mirror = Mirror::open_or_clone(remote, &fx.path("mirror"))
            .unwrap()
            .with_retry(fast_retry());
        let heads = mirror.fetch().unwrap();
        assert_eq!(heads.branch, fx.tip("main"));
        assert_eq!(mirror.files_at(heads.branch).unwrap().len(), 2);
        let a = committed(mirror.commit_state(
            &changes(&[("rollouts/edge.json", Some("1"))]),
            "step 1",
            &Author::default(),
        ));
        let b = committed(mirror.commit_state(
            &changes(&[("rollouts/edge.json", Some("2"))]),
            "step 2",
            &Author::default(),
        ));
        assert_eq!(fx.tip("gitfleet/state"), b);
        assert_eq!(fx.parents(&b.to_string()), [a.to_string()]);
    }

    #[test]
    fn urls_lose_their_secrets_in_messages() {
        assert_eq!(
            redact_url("https://x-access-token:ghp_abc@github.com/o/r.git"),
            "https://x-access-token:***@github.com/o/r.git"
        );
        assert_eq!(
            redact_url("https://ghp_0123456789abcdefghijklmnop@github.com/o/r"),
            "https://***@github.com/o/r"
        );
        assert_eq!(redact_url("ssh://git@host/o/r"), "ssh://git@host/o/r");
        assert_eq!(redact_url("git@host:o/r.git"), "git@host:o/r.git");
        assert_eq!(redact_url("/srv/fleet.git"), "/srv/fleet.git");
        let remote = Remote {
            auth: Auth::Token("tok".to_owned()),
            ..Remote::new("https://u:p@h/r")
        };
        let debug = format!("{remote:?}");
        assert!(
            !debug.contains("tok\"") && !debug.contains(":p@"),
            "{debug}"
        );
    }
}
