//! Setting a reconciler up: where the fleet repo is and how to reach it,
//! the store, the keys, this replica's name, all from the command line
//! and the fleet's own settings.

use anyhow::Context as _;
use gitfleet_io::store::Store;

use crate::git::Mirror;
use crate::pass::Reconciler;

/// What a reconciler needs: the repo, the store, its key and its name.
#[derive(Clone, Debug, clap::Args)]
pub struct ReconcilerArgs {
    #[command(flatten)]
    pub git: GitArgs,
    /// Object store URL; defaults to the `store` of fleet.kdl.
    #[arg(long, env = "GITFLEET_STORE")]
    pub store: Option<String>,
    /// The online key file that signs channel manifests (gitfleet keygen --online).
    /// (Required, but for `serve --fleets`, whose file names each fleet's.)
    #[arg(long, env = "GITFLEET_ONLINE_KEY")]
    pub online_key: Option<std::path::PathBuf>,
    /// Where the local mirror of the repo is kept.
    #[arg(long, env = "GITFLEET_CACHE", default_value = ".gitfleet/mirror")]
    pub cache: std::path::PathBuf,
    /// This replica's name in the leader lease (default: gitfleet@<hostname>).
    #[arg(long, env = "GITFLEET_HOLDER")]
    pub holder: Option<String>,
    /// Time between passes (a push to a local repo or a webhook starts one
    /// sooner).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub interval: std::time::Duration,
    #[command(flatten)]
    pub github: crate::github::GitHubArgs,
}

impl ReconcilerArgs {
    /// The reconciler these arguments describe (the mirror cloned if new).
    pub fn open(&self) -> anyhow::Result<Reconciler> {
        let path = self
            .online_key
            .as_ref()
            .context("--online-key is required: the key file that signs channel manifests (gitfleet keygen --online)")?;
        let online = crate::keys::load(
            path,
            gitfleet_schemas::keyfile::KeyRole::Online,
            "signing channel manifests",
        )?;
        let mirror = open_mirror(&self.git, &self.cache)?;
        let store = open_store(&mirror, self.store.as_deref())?;
        let holder = self.holder.clone().unwrap_or_else(default_holder);
        let mut reconciler = Reconciler::new(mirror, store, online.key, holder);
        reconciler.github = self.github.config()?;
        Ok(reconciler)
    }

    /// A watcher that triggers a pass when a local repo's refs move; none
    /// for a remote one (polled every --interval, or woken by webhooks).
    pub fn watch(
        &self,
        trigger: tokio::sync::mpsc::Sender<()>,
    ) -> Option<notify::RecommendedWatcher> {
        let path = local_repo(&self.git.repo)?;
        crate::pass::trigger::watch_refs(&path, trigger)
            .map_err(|e| tracing::warn!(repo = %path.display(), error = %e, "cannot watch the fleet repo; polling only"))
            .ok()
    }
}

/// Where the fleet repo is and how to reach it.
#[derive(Clone, Debug, clap::Args)]
pub struct GitArgs {
    /// The fleet repo: a path, file://, http(s)://, ssh:// or git:// URL.
    #[arg(long, env = "GITFLEET_REPO", default_value = ".")]
    pub repo: String,
    /// The branch people write the fleet spec to.
    #[arg(long, env = "GITFLEET_BRANCH", default_value = "main")]
    pub branch: String,
    /// The branch the reconciler commits rollout state to (default: the
    /// `state-branch` of fleet.kdl at the spec branch's tip, or
    /// gitfleet/state).
    #[arg(long, env = "GITFLEET_STATE_BRANCH")]
    pub state_branch: Option<String>,
    /// HTTPS token for the repo (sent as user x-access-token).
    #[arg(long, env = "GITFLEET_GIT_TOKEN", hide_env_values = true)]
    pub git_token: Option<String>,
    /// SSH private key for ssh:// repos (default: ask the ssh agent).
    #[arg(long, env = "GITFLEET_SSH_KEY", conflicts_with = "git_token")]
    pub ssh_key: Option<std::path::PathBuf>,
}

/// How to run this very `gitfleet` in a suggested command: its name when
/// it is the one on PATH, else its path (a build under target/, say).
pub fn command_name() -> String {
    let Ok(exe) = std::env::current_exe() else {
        return "gitfleet".to_owned();
    };
    let on_path = std::env::var_os("PATH").is_some_and(|p| {
        std::env::split_paths(&p).any(|d| {
            std::fs::canonicalize(d.join("gitfleet")).ok() == std::fs::canonicalize(&exe).ok()
        })
    });
    if on_path {
        return "gitfleet".to_owned();
    }
    let cwd = std::env::current_dir().unwrap_or_default();
    exe.strip_prefix(&cwd)
        .map_or_else(|_| exe.display().to_string(), |p| p.display().to_string())
}

/// The mirror of the fleet repo `args` describe, kept in `cache`. It
/// follows the state branch `--state-branch` names, or else the one
/// fleet.kdl at the spec branch's tip names (`state-branch`), or else
/// gitfleet/state: every command finds the fleet's state where its
/// reconciler writes it.
pub fn open_mirror(args: &GitArgs, cache: &std::path::Path) -> anyhow::Result<Mirror> {
    let mut mirror = Mirror::open_or_clone(remote(args)?, cache)?;
    if args.state_branch.is_none() {
        let heads = mirror.fetch()?;
        let named = mirror
            .blob_at(heads.branch, gitfleet_policy::model::FLEET_FILE)?
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .and_then(|text| gitfleet_schemas::FleetFile::decode(&text).value)
            .and_then(|fleet| fleet.state_branch)
            .map(|b| b.value);
        if let Some(branch) = named.filter(|b| b != mirror.state_branch()) {
            tracing::info!(state_branch = %branch, "following the state branch fleet.kdl names");
            mirror.set_state_branch(&branch)?;
        }
    }
    Ok(mirror)
}

/// The remote `args` describe, with its credentials.
pub fn remote(args: &GitArgs) -> anyhow::Result<crate::git::Remote> {
    let mut remote = crate::git::Remote::new(repo_url(&args.repo)?);
    remote.branch.clone_from(&args.branch);
    if let Some(b) = &args.state_branch {
        remote.state_branch.clone_from(b);
    }
    remote.auth = match (&args.git_token, &args.ssh_key) {
        (Some(token), _) => crate::git::Auth::Token(token.clone()),
        (None, Some(path)) => crate::git::Auth::SshKey {
            path: path.clone(),
            passphrase: std::env::var("GITFLEET_SSH_KEY_PASSPHRASE").ok(),
        },
        (None, None) if remote.url.starts_with("ssh://") || remote.url.contains('@') => {
            crate::git::Auth::SshAgent
        }
        (None, None) => crate::git::Auth::None,
    };
    Ok(remote)
}

/// The directory of a fleet repo given as a local path or file:// URL.
fn local_repo(repo: &str) -> Option<std::path::PathBuf> {
    let path = match repo.strip_prefix("file://") {
        Some(p) => p,
        None if repo.contains("://") || repo.contains('@') => return None,
        None => repo,
    };
    std::fs::canonicalize(path).ok()
}

/// Stable across restarts on one machine, so a restarted reconciler takes
/// its own lease straight back; replicas sharing a host pass --holder.
fn default_holder() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned());
    format!("gitfleet@{host}")
}

/// A plain path becomes a file:// URL; URLs pass through.
fn repo_url(repo: &str) -> anyhow::Result<String> {
    if repo.contains("://") || repo.contains('@') {
        return Ok(repo.to_owned());
    }
    let path = std::fs::canonicalize(repo)
        .map_err(|e| anyhow::anyhow!("fleet repo {repo} not found: {e}"))?;
    Ok(format!("file://{}", path.display()))
}

/// The store `explicit` names, or else the one fleet.kdl at the branch tip
/// names.
pub fn open_store(mirror: &Mirror, explicit: Option<&str>) -> anyhow::Result<Store> {
    let url = match explicit {
        Some(url) => url.to_owned(),
        None => {
            // Only fleet.kdl is needed to learn the store.
            let heads = mirror.fetch()?;
            let files = mirror.files_at(heads.branch)?;
            files
                .text(gitfleet_policy::model::FLEET_FILE)
                .and_then(|t| gitfleet_schemas::FleetFile::decode(t).value)
                .and_then(|f| f.store.map(|s| s.value))
                .context("no --store given and fleet.kdl names no store")?
        }
    };
    Ok(Store::open(&url)?)
}
