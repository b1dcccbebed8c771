//! The state branch's history as rollout changes: for each commit (first
//! parent, newest first), the `rollouts/<name>.json` files it changed,
//! before and after. Rollout events are these changes (`gitfleet events`,
//! the notifier); nothing else records them.

use chrono::{DateTime, TimeZone as _, Utc};
use git2::{Oid, Repository};

use super::{tracking_ref, GitError, Mirror, Parent};

/// One state branch commit that changed rollout state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateChange {
    pub commit: Oid,
    pub tree: Oid,
    /// Committer time.
    pub time: DateTime<Utc>,
    /// `(rollout, before, after)`: the state file's bytes in the first
    /// parent and in this commit (`None` where it does not exist).
    pub rollouts: RolloutFiles,
}

/// Where a walk down the state branch stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WalkEnd {
    /// At the commit the caller asked to stop at (not included).
    Stop,
    /// At the branch's first commit (included).
    Root,
    /// After `limit` commits, or where the fetched history ends.
    Limit,
}

/// The commits walked, newest first (only those that changed a rollout),
/// and where the walk ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateHistory {
    pub changes: Vec<StateChange>,
    pub end: WalkEnd,
    /// The commit walked first (the tip), with its tree and time.
    pub tip: Option<(Oid, Oid, DateTime<Utc>)>,
    /// The commit the walk ended on: the one `stop` chose, or the root.
    pub last: Option<Oid>,
}

fn time_of(commit: &git2::Commit<'_>) -> DateTime<Utc> {
    Utc.timestamp_opt(commit.time().seconds(), 0)
        .single()
        .unwrap_or(DateTime::<Utc>::UNIX_EPOCH)
}

impl Mirror {
    /// Walk the state branch from its tip (as last fetched) down its first
    /// parents until `stop` says a commit is where to stop (by its id, tree
    /// and time), at most `limit` commits. A mirror that holds less history
    /// fetches more of it as the walk needs, up to `limit` commits.
    pub fn state_history(
        &self,
        limit: usize,
        stop: impl Fn(Oid, Oid, DateTime<Utc>) -> bool,
    ) -> Result<StateHistory, GitError> {
        let branch = self.remote.state_branch.clone();
        let Some(tip) = self.tracking(&branch)? else {
            return Ok(StateHistory {
                changes: Vec::new(),
                end: WalkEnd::Root,
                tip: None,
                last: None,
            });
        };
        let read = |source| GitError::Read {
            url: self.remote.display_url(),
            what: format!("the history of {branch}"),
            source,
        };
        let ceiling = limit.saturating_add(1);
        let mut depth: usize = 0;
        let mut held = 0;
        loop {
            let (walked, at_edge, count) = self.walk_state(tip, limit, &stop).map_err(read)?;
            // Done: the walk ended on its own; or fetching more brought
            // nothing (the branch was rewritten under us: the next pass
            // walks its new tip); or the whole limit is held.
            if !at_edge
                || self.remote.is_local()
                || depth >= ceiling
                || (depth > 0 && count <= held)
            {
                return Ok(walked);
            }
            held = count;
            // The mirror's history ends before the walk did: fetch more of
            // it, four times what it holds (a young process's mirror holds
            // the tip alone), so a walk of n commits asks O(log n) times.
            depth = depth.max(count).saturating_mul(4).max(64).min(ceiling);
            let git_depth = i32::try_from(depth).unwrap_or(i32::MAX);
            tracing::info!(branch = %branch, depth, "fetching more of the state branch's history");
            self.download_depth(
                &[(format!("refs/heads/{branch}"), tracking_ref(&branch))],
                Some(git_depth),
            )
            .map_err(|source| GitError::Fetch {
                url: self.remote.display_url(),
                branches: branch.clone(),
                source,
            })?;
            self.reopen()?;
        }
    }

    fn walk_state(
        &self,
        tip: Oid,
        limit: usize,
        stop: &impl Fn(Oid, Oid, DateTime<Utc>) -> bool,
    ) -> Result<(StateHistory, bool, usize), git2::Error> {
        let edges = self.shallow_roots().unwrap_or_default();
        let repo = self.repo();
        let mut commit = repo.find_commit(tip)?;
        let mut out = StateHistory {
            changes: Vec::new(),
            end: WalkEnd::Limit,
            tip: Some((tip, commit.tree_id(), time_of(&commit))),
            last: None,
        };
        for walked in 0..limit {
            if stop(commit.id(), commit.tree_id(), time_of(&commit)) {
                out.end = WalkEnd::Stop;
                out.last = Some(commit.id());
                return Ok((out, false, walked));
            }
            let parent = match self.first_parent(&repo, &commit, &edges)? {
                Parent::Of(p) => Some(p),
                Parent::Root => None,
                Parent::Edge | Parent::Stale => return Ok((out, true, walked + 1)),
            };
            let rollouts = rollout_changes(&repo, parent.as_ref(), &commit)?;
            if !rollouts.is_empty() {
                out.changes.push(StateChange {
                    commit: commit.id(),
                    tree: commit.tree_id(),
                    time: time_of(&commit),
                    rollouts,
                });
            }
            match parent {
                Some(p) => commit = p,
                None => {
                    out.end = WalkEnd::Root;
                    out.last = Some(commit.id());
                    return Ok((out, false, walked + 1));
                }
            }
        }
        Ok((out, false, limit))
    }
}

/// `(rollout, before, after)` for each rollout state file a commit changed.
pub type RolloutFiles = Vec<(String, Option<Vec<u8>>, Option<Vec<u8>>)>;

/// The `rollouts/*.json` files that differ between `parent` and `commit`.
fn rollout_changes(
    repo: &Repository,
    parent: Option<&git2::Commit<'_>>,
    commit: &git2::Commit<'_>,
) -> Result<RolloutFiles, git2::Error> {
    let dir = |c: &git2::Commit<'_>| -> Result<Option<Oid>, git2::Error> {
        Ok(c.tree()?.get_name("rollouts").map(|e| e.id()))
    };
    let after_dir = dir(commit)?;
    let before_dir = parent.map(dir).transpose()?.flatten();
    if after_dir == before_dir {
        return Ok(Vec::new());
    }
    let entries = |tree: Option<Oid>| -> Result<Vec<(String, Oid)>, git2::Error> {
        let Some(tree) = tree else {
            return Ok(Vec::new());
        };
        let tree = repo.find_tree(tree)?;
        Ok(tree
            .iter()
            .filter(|e| e.kind() == Some(git2::ObjectType::Blob))
            .filter_map(|e| {
                let name = e.name()?.strip_suffix(".json")?.to_owned();
                Some((name, e.id()))
            })
            .collect())
    };
    let before: std::collections::BTreeMap<String, Oid> =
        entries(before_dir)?.into_iter().collect();
    let after: std::collections::BTreeMap<String, Oid> = entries(after_dir)?.into_iter().collect();
    let blob = |id: Option<&Oid>| -> Result<Option<Vec<u8>>, git2::Error> {
        id.map(|id| repo.find_blob(*id).map(|b| b.content().to_vec()))
            .transpose()
    };
    let mut out = Vec::new();
    let names: std::collections::BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    for name in names {
        let (b, a) = (before.get(name), after.get(name));
        if b != a {
            out.push((name.clone(), blob(b)?, blob(a)?));
        }
    }
    Ok(out)
}
