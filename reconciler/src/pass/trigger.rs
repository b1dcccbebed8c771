//! Triggers for the reconcile loop: a pass as soon as something changed,
//! instead of at the next interval. A trigger is a hint; every pass re-reads
//! git, and the interval still runs.

use std::path::Path;

use notify::Watcher as _;
use tokio::sync::mpsc;

/// Send on `tx` whenever a ref of the local git repository at `git_dir`
/// (a bare repository, or a `.git` directory) changes: a push landed.
/// Object writes, which come first, are ignored. Keep the watcher alive
/// as long as triggers are wanted.
pub fn watch_refs(
    git_dir: &Path,
    tx: mpsc::Sender<()>,
) -> Result<notify::RecommendedWatcher, notify::Error> {
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if event.kind.is_access() {
            return;
        }
        if event.paths.iter().any(|p| is_ref_path(p)) {
            // Full: a pass is already due, which reads the new refs too.
            let _ = tx.try_send(());
        }
    })?;
    watcher.watch(&git_dir.join("refs"), notify::RecursiveMode::Recursive)?;
    // packed-refs is rewritten at the top level by `git gc` and some pushes.
    watcher.watch(git_dir, notify::RecursiveMode::NonRecursive)?;
    Ok(watcher)
}

/// Whether a changed path is a ref (and not a lock file being written).
fn is_ref_path(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    if name.ends_with(".lock") {
        return false;
    }
    name == "packed-refs" || path.components().any(|c| c.as_os_str() == "refs")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn refs_count_and_locks_and_objects_do_not() {
        assert!(is_ref_path(Path::new("/r/fleet.git/refs/heads/main")));
        assert!(is_ref_path(Path::new("/r/fleet.git/refs/heads/team/x")));
        assert!(is_ref_path(Path::new("/r/fleet.git/packed-refs")));
        assert!(!is_ref_path(Path::new("/r/fleet.git/refs/heads/main.lock")));
        assert!(!is_ref_path(Path::new("/r/fleet.git/objects/ab/cdef")));
        assert!(!is_ref_path(Path::new("/r/fleet.git/config")));
    }

    #[tokio::test]
    async fn a_ref_update_triggers() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let git = dir.path().join("fleet.git");
        std::fs::create_dir_all(git.join("refs/heads")).expect("refs/heads");
        let (tx, mut rx) = mpsc::channel(1);
        let _watcher = watch_refs(&git, tx).expect("watching the refs");
        // Written the way git writes a ref: a lock file renamed into place.
        std::fs::write(git.join("refs/heads/main.lock"), "0".repeat(40)).expect("lock file");
        std::fs::rename(
            git.join("refs/heads/main.lock"),
            git.join("refs/heads/main"),
        )
        .expect("rename");
        let got = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await;
        assert_eq!(got.ok().flatten(), Some(()));
    }
}
