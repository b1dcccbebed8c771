//! Reading a fleet repo into memory: from a working tree, or from a git
//! revision without touching any working tree.

use std::path::{Path, PathBuf};

use gitfleet_policy::RepoFiles;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("reading {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("opening git repository at {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: git2::Error,
    },
    #[error("resolving revision `{rev}` in {path}")]
    Revision {
        rev: String,
        path: PathBuf,
        #[source]
        source: git2::Error,
    },
    #[error("reading the tree of `{rev}`")]
    Tree {
        rev: String,
        #[source]
        source: git2::Error,
    },
    #[error("{path} is not a directory")]
    NotADirectory { path: PathBuf },
}

/// What a walk of a working tree left out, so the caller can say so.
#[derive(Debug, Default)]
pub struct Skipped {
    pub symlinks: Vec<String>,
}

/// Every file under `root`, skipping hidden entries (`.git`, `.gitfleet`).
/// Symlinks are not followed: a fleet repo is plain files.
pub fn read_worktree(root: &Path) -> Result<(RepoFiles, Skipped), SourceError> {
    if !root.is_dir() {
        return Err(SourceError::NotADirectory {
            path: root.to_owned(),
        });
    }
    let mut files = RepoFiles::new();
    let mut skipped = Skipped::default();
    let mut stack = vec![(root.to_owned(), String::new())];
    while let Some((dir, prefix)) = stack.pop() {
        let io = |source| SourceError::Io {
            path: dir.clone(),
            source,
        };
        for entry in std::fs::read_dir(&dir).map_err(io)? {
            let entry = entry.map_err(io)?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            let rel = format!("{prefix}{name}");
            let ty = entry.file_type().map_err(io)?;
            if ty.is_dir() {
                stack.push((entry.path(), format!("{rel}/")));
            } else if ty.is_file() {
                let bytes = std::fs::read(entry.path()).map_err(|source| SourceError::Io {
                    path: entry.path(),
                    source,
                })?;
                files.insert(rel, bytes);
            } else if ty.is_symlink() {
                skipped.symlinks.push(rel);
            }
        }
    }
    skipped.symlinks.sort();
    Ok((files, skipped))
}

/// Every blob of the tree at `rev` in the repository that contains `path`.
/// Submodules and symlinks are left out.
pub fn read_revision(path: &Path, rev: &str) -> Result<(RepoFiles, Skipped), SourceError> {
    let repo = git2::Repository::discover(path).map_err(|source| SourceError::Open {
        path: path.to_owned(),
        source,
    })?;
    let tree = repo
        .revparse_single(rev)
        .and_then(|o| o.peel_to_tree())
        .map_err(|source| SourceError::Revision {
            rev: rev.to_owned(),
            path: path.to_owned(),
            source,
        })?;
    // When PATH is a subdirectory of the repository, read that subtree.
    let sub = repo
        .workdir()
        .and_then(|wd| {
            path.canonicalize()
                .ok()?
                .strip_prefix(wd.canonicalize().ok()?)
                .ok()
                .map(Path::to_owned)
        })
        .filter(|p| !p.as_os_str().is_empty());
    let tree = match sub {
        Some(sub) => {
            let entry = tree.get_path(&sub).map_err(|source| SourceError::Tree {
                rev: rev.to_owned(),
                source,
            })?;
            repo.find_tree(entry.id())
                .map_err(|source| SourceError::Tree {
                    rev: rev.to_owned(),
                    source,
                })?
        }
        None => tree,
    };
    read_tree(&repo, &tree).map_err(|source| SourceError::Tree {
        rev: rev.to_owned(),
        source,
    })
}

/// Every blob of `tree` (executable or not), by `/`-separated path.
/// Submodules and symlinks are left out; symlinks are listed in [`Skipped`].
pub fn read_tree(
    repo: &git2::Repository,
    tree: &git2::Tree<'_>,
) -> Result<(RepoFiles, Skipped), git2::Error> {
    let mut files = RepoFiles::new();
    let mut skipped = Skipped::default();
    let mut failure = None;
    let walked = tree.walk(git2::TreeWalkMode::PreOrder, |dir, entry| {
        let name = entry.name().unwrap_or_default();
        let rel = format!("{dir}{name}");
        match entry.filemode() {
            0o120000 => skipped.symlinks.push(rel),
            0o100644 | 0o100755 => match repo.find_blob(entry.id()) {
                Ok(blob) => files.insert(rel, blob.content()),
                Err(e) => {
                    failure = Some(e);
                    return git2::TreeWalkResult::Abort;
                }
            },
            _ => {}
        }
        git2::TreeWalkResult::Ok
    });
    // An aborted walk reports only that it was aborted; the blob error that
    // stopped it is the one worth returning.
    if let Some(e) = failure {
        return Err(e);
    }
    walked?;
    Ok((files, skipped))
}

/// The commit id `rev` names in the repository that contains `path`.
pub fn resolve_commit(path: &Path, rev: &str) -> Result<String, SourceError> {
    let repo = git2::Repository::discover(path).map_err(|source| SourceError::Open {
        path: path.to_owned(),
        source,
    })?;
    let commit = repo
        .revparse_single(rev)
        .and_then(|o| o.peel_to_commit())
        .map_err(|source| SourceError::Revision {
            rev: rev.to_owned(),
            path: path.to_owned(),
            source,
        })?;
    Ok(commit.id().to_string())
}

/// The commit checked out in the git repository around `path`, if `path` is
/// inside one with at least one commit, and whether files under `path`
/// differ from it (modified, added or untracked).
pub fn head_commit(path: &Path) -> Option<(String, bool)> {
    let repo = git2::Repository::discover(path).ok()?;
    let head = repo.head().ok()?.peel_to_commit().ok()?;
    let sub = repo.workdir().and_then(|wd| {
        path.canonicalize()
            .ok()?
            .strip_prefix(wd.canonicalize().ok()?)
            .ok()
            .map(Path::to_owned)
    });
    let mut options = git2::StatusOptions::new();
    options.include_untracked(true).recurse_untracked_dirs(true);
    if let Some(sub) = sub.filter(|p| !p.as_os_str().is_empty()) {
        options.pathspec(sub);
    }
    // When the status cannot be read, say it may differ: that only adds a
    // warning.
    let dirty = repo
        .statuses(Some(&mut options))
        .map(|s| !s.is_empty())
        .unwrap_or(true);
    Some((head.id().to_string(), dirty))
}
