//! `gitfleet state compact`: the state branch's history older than a
//! cut-off squashed into one root commit, the newer commits rebuilt on it
//! (same trees, authors, dates and messages), the old tip kept under a tag.
//!
//! The branch is replaced only if it still points where the compaction
//! started: over the network the push names that tip as the ref's old value
//! on the same connection whose advertisement was checked (the server
//! refuses the update if the ref moved since); on a local repository the ref
//! is swapped with a compare-and-swap under the ref's lock. A reconciler
//! whose state push then loses the race rebuilds its change on the new tip,
//! as after any lost race.

use git2::{Direction, ErrorCode, Oid, PushOptions, Repository, Signature};

use super::{callbacks, tracking_ref, GitError, Mirror, MAX_DEPTH};

/// A compaction made in the mirror (not yet pushed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compaction {
    /// The state branch's tip it starts from; the tag keeps it.
    pub old_tip: Oid,
    /// The rebuilt tip: the new root plus the kept commits.
    pub new_tip: Oid,
    /// The new root: the tree of the newest squashed commit.
    pub root: Oid,
    /// How many commits the root replaces, and the oldest and newest.
    pub squashed: usize,
    pub oldest: Oid,
    pub newest_squashed: Oid,
    /// How many newer commits were rebuilt on the root.
    pub kept: usize,
}

/// How many of a first-parent history's commits (newest first, by
/// committer time in seconds) stay when history older than `cutoff` is
/// squashed: every commit down to the first one older than the cut-off,
/// which with all below it becomes the new root. `None` when fewer than two
/// commits would be squashed: nothing to gain.
pub fn kept_at(times: &[i64], cutoff: i64) -> Option<usize> {
    let kept = times.iter().position(|t| *t < cutoff)?;
    (times.len() - kept >= 2).then_some(kept)
}

impl Mirror {
    /// Squash the state branch's history older than `cutoff` (seconds
    /// since the epoch) into one root commit in this mirror and rebuild
    /// the newer commits on it; `None` when there is nothing to squash.
    /// The whole history of the state branch is fetched first.
    pub fn compact_state(
        &self,
        cutoff: i64,
        author: &super::Author,
    ) -> Result<Option<Compaction>, GitError> {
        let branch = self.remote.state_branch.clone();
        let depth = (!self.remote.is_local()).then_some(MAX_DEPTH);
        let Some(old_tip) = self.fetch_branches_to(&[&branch], depth)?[0] else {
            return Err(GitError::MissingBranch {
                url: self.remote.display_url(),
                branch,
            });
        };
        self.reopen()?;
        let read = |source| GitError::Read {
            url: self.remote.display_url(),
            what: format!("the history of {branch}"),
            source,
        };
        let repo = self.repo();
        let history = first_parent_history(&repo, old_tip).map_err(read)?;
        if let Some(merge) = history.merges.first() {
            return Err(GitError::NotLinear {
                url: self.remote.display_url(),
                branch,
                merge: *merge,
            });
        }
        let times: Vec<i64> = history.commits.iter().map(|(_, t)| *t).collect();
        let Some(kept) = kept_at(&times, cutoff) else {
            return Ok(None);
        };
        let newest_squashed = history.commits[kept].0;
        let oldest = history.commits[history.commits.len() - 1].0;
        let squashed = history.commits.len() - kept;
        let write = |source| GitError::Commit {
            url: self.remote.display_url(),
            branch: branch.clone(),
            source,
        };
        let build = || -> Result<(Oid, Oid), git2::Error> {
            let base = repo.find_commit(newest_squashed)?;
            let signature = Signature::now(&author.name, &author.email)?;
            let message = format!(
                "gitfleet: state history up to {} squashed\n\n\
                 {squashed} commits, from {oldest} to {newest_squashed}, are one commit here:\n\
                 the files as they were at {newest_squashed}. The whole history stays\n\
                 under the tag that `gitfleet state compact` printed, at {old_tip}.\n",
                base.committer().when().seconds()
            );
            let root = repo.commit(None, &signature, &signature, &message, &base.tree()?, &[])?;
            let mut tip = root;
            for (oid, _) in history.commits[..kept].iter().rev() {
                let old = repo.find_commit(*oid)?;
                let parent = repo.find_commit(tip)?;
                tip = repo.commit(
                    None,
                    &old.author(),
                    &old.committer(),
                    old.message_raw().unwrap_or_default(),
                    &old.tree()?,
                    &[&parent],
                )?;
            }
            Ok((root, tip))
        };
        let (root, new_tip) = build().map_err(write)?;
        Ok(Some(Compaction {
            old_tip,
            new_tip,
            root,
            squashed,
            oldest,
            newest_squashed,
            kept,
        }))
    }

    /// Publish `compaction`: the tag `tag` at the old tip first (kept if it
    /// already points there), then the state branch moved to the new tip
    /// only if it still points at the old one.
    pub fn publish_compaction(&self, compaction: &Compaction, tag: &str) -> Result<(), GitError> {
        let branch = self.remote.state_branch.clone();
        let tag_ref = format!("refs/tags/{tag}");
        if !git2::Reference::is_valid_name(&tag_ref) {
            return Err(GitError::InvalidBranch {
                url: self.remote.display_url(),
                branch: tag_ref,
            });
        }
        // A branch that already moved leaves no tag behind.
        let head_ref = format!("refs/heads/{branch}");
        let now = self.remote_ref(&head_ref)?;
        if now != Some(compaction.old_tip) {
            return Err(GitError::Moved {
                url: self.remote.display_url(),
                name: head_ref,
                expected: Some(compaction.old_tip),
                found: now,
            });
        }
        match self.replace_ref(&tag_ref, None, compaction.old_tip)? {
            Swap::Done => {}
            Swap::Moved(Some(at)) if at == compaction.old_tip => {}
            Swap::Moved(at) => {
                return Err(match at {
                    Some(at) => GitError::TagTaken {
                        url: self.remote.display_url(),
                        tag: tag.to_owned(),
                        at,
                    },
                    None => GitError::Moved {
                        url: self.remote.display_url(),
                        name: tag_ref,
                        expected: None,
                        found: None,
                    },
                })
            }
        }
        match self.replace_ref(&head_ref, Some(compaction.old_tip), compaction.new_tip)? {
            Swap::Done => {}
            Swap::Moved(at) => {
                return Err(GitError::Moved {
                    url: self.remote.display_url(),
                    name: head_ref,
                    expected: Some(compaction.old_tip),
                    found: at,
                })
            }
        }
        self.repo()
            .reference(
                &tracking_ref(&branch),
                compaction.new_tip,
                true,
                "gitfleet: state compact",
            )
            .map_err(|source| GitError::Commit {
                url: self.remote.display_url(),
                branch,
                source,
            })?;
        Ok(())
    }

    /// Where the remote's ref `name` points now.
    fn remote_ref(&self, name: &str) -> Result<Option<Oid>, GitError> {
        let fetch_error = |source| GitError::Fetch {
            url: self.remote.display_url(),
            branches: name.to_owned(),
            source,
        };
        let repo = self.repo();
        let mut remote = repo
            .remote_anonymous(&self.remote.url)
            .map_err(fetch_error)?;
        let connection = remote
            .connect_auth(Direction::Fetch, Some(callbacks(&self.remote.auth)), None)
            .map_err(fetch_error)?;
        Ok(connection
            .list()
            .map_err(fetch_error)?
            .iter()
            .find(|head| head.name() == name)
            .map(git2::RemoteHead::oid))
    }

    /// Point the remote's `name` at `new` if it is now at `expected`
    /// (`None`: absent), sending the objects `new` needs.
    fn replace_ref(&self, name: &str, expected: Option<Oid>, new: Oid) -> Result<Swap, GitError> {
        let push_error = |source| GitError::Push {
            url: self.remote.display_url(),
            branch: name.to_owned(),
            source,
        };
        if self.remote.is_local() {
            return self.replace_local_ref(name, expected, new);
        }
        let repo = self.repo();
        let mut remote = repo
            .remote_anonymous(&self.remote.url)
            .map_err(push_error)?;
        let mut connection = remote
            .connect_auth(Direction::Push, Some(callbacks(&self.remote.auth)), None)
            .map_err(push_error)?;
        let now = connection
            .list()
            .map_err(push_error)?
            .iter()
            .find(|head| head.name() == name)
            .map(git2::RemoteHead::oid);
        if now != expected {
            return Ok(Swap::Moved(now));
        }
        // The same connection: its update names `expected` as the ref's old
        // value, and the server refuses it if the ref moved since.
        let mut status: Option<Option<String>> = None;
        let pushed = {
            let mut callbacks = callbacks(&self.remote.auth);
            callbacks.push_update_reference(|pushed, refused| {
                if pushed == name {
                    status = Some(refused.map(str::to_owned));
                }
                Ok(())
            });
            let mut options = PushOptions::new();
            options.remote_callbacks(callbacks);
            connection
                .remote()
                .push(&[format!("+{new}:{name}").as_str()], Some(&mut options))
        };
        pushed.map_err(push_error)?;
        match status {
            Some(None) => Ok(Swap::Done),
            Some(Some(refused)) => Err(GitError::Rejected {
                url: self.remote.display_url(),
                branch: name.to_owned(),
                attempts: 1,
                status: refused,
            }),
            None => Err(GitError::Unconfirmed {
                url: self.remote.display_url(),
                branch: name.to_owned(),
            }),
        }
    }

    /// [`Mirror::replace_ref`] on a repository on this machine: the objects
    /// go over under a scratch ref, then the ref is swapped under its lock
    /// only if it still holds `expected`.
    fn replace_local_ref(
        &self,
        name: &str,
        expected: Option<Oid>,
        new: Oid,
    ) -> Result<Swap, GitError> {
        let url = self.remote.display_url();
        let scratch = "refs/gitfleet/compact";
        let push_error = |source| GitError::Push {
            url: url.clone(),
            branch: name.to_owned(),
            source,
        };
        {
            let repo = self.repo();
            let mut remote = repo
                .remote_anonymous(&self.remote.url)
                .map_err(push_error)?;
            remote
                .push(&[format!("+{new}:{scratch}").as_str()], None)
                .map_err(push_error)?;
        }
        let path = self
            .remote
            .url
            .strip_prefix("file://")
            .unwrap_or(&self.remote.url);
        let theirs = Repository::open(path).map_err(push_error)?;
        let swapped = match expected {
            Some(old) => theirs.reference_matching(name, new, true, old, "gitfleet: state compact"),
            None => theirs.reference(name, new, false, "gitfleet: state compact"),
        };
        let outcome = match swapped {
            Ok(_) => Swap::Done,
            Err(e) if matches!(e.code(), ErrorCode::Modified | ErrorCode::Exists) => {
                Swap::Moved(theirs.refname_to_id(name).ok())
            }
            Err(e) => return Err(push_error(e)),
        };
        if let Ok(mut r) = theirs.find_reference(scratch) {
            r.delete().map_err(push_error)?;
        }
        Ok(outcome)
    }
}

/// How a compare-and-swap of a remote ref ended.
enum Swap {
    Done,
    /// The ref was not where expected: where it was instead.
    Moved(Option<Oid>),
}

/// A first-parent history, newest first, with each commit's committer time.
struct History {
    commits: Vec<(Oid, i64)>,
    /// Commits with more than one parent (gitfleet never writes them).
    merges: Vec<Oid>,
}

fn first_parent_history(repo: &Repository, tip: Oid) -> Result<History, git2::Error> {
    let mut commits = Vec::new();
    let mut merges = Vec::new();
    let mut commit = repo.find_commit(tip)?;
    loop {
        commits.push((commit.id(), commit.committer().when().seconds()));
        if commit.parent_count() > 1 {
            merges.push(commit.id());
        }
        if commit.parent_count() == 0 {
            return Ok(History { commits, merges });
        }
        commit = commit.parent(0)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn history_older_than_the_cutoff_is_squashed_from_the_first_old_commit() {
        // Newest first.
        assert_eq!(kept_at(&[50, 40, 30, 20, 10], 35), Some(2));
        // A newer commit below an older one (a replica's clock behind)
        // is squashed with it: the cut is where history first gets old.
        assert_eq!(kept_at(&[50, 20, 40, 10], 35), Some(1));
    }

    #[test]
    fn nothing_is_squashed_when_fewer_than_two_commits_are_old() {
        assert_eq!(kept_at(&[50, 40, 30], 25), None);
        assert_eq!(kept_at(&[50, 40, 10], 35), None);
        assert_eq!(kept_at(&[], 35), None);
        assert_eq!(kept_at(&[10, 5], 35), Some(0));
    }

    proptest! {
        #[test]
        fn kept_commits_are_new_and_the_first_squashed_is_old(
            times in proptest::collection::vec(0i64..100, 0..40),
            cutoff in 0i64..100,
        ) {
            match kept_at(&times, cutoff) {
                Some(kept) => {
                    prop_assert!(times[..kept].iter().all(|t| *t >= cutoff));
                    prop_assert!(times[kept] < cutoff);
                    prop_assert!(times.len() - kept >= 2);
                }
                None => {
                    let first_old = times.iter().position(|t| *t < cutoff);
                    prop_assert!(first_old.is_none_or(|i| times.len() - i < 2));
                }
            }
        }
    }
}
