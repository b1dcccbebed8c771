//! Writing files whole or not at all: a temporary file in the same
//! directory, synced, then renamed over (or linked to) the target, so a
//! reader or a crash never sees half a key, root or bundle.

use std::fs::Permissions;
use std::io::Write as _;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("{path} already exists; refusing to overwrite it")]
    Exists { path: PathBuf },
    #[error("creating directory {path}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn parent(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// A synced temporary file next to `path` holding `bytes`.
fn staged(
    path: &Path,
    bytes: &[u8],
    create_mode: u32,
) -> Result<tempfile::NamedTempFile, WriteError> {
    let tmp = unsynced(path, bytes, create_mode)?;
    tmp.as_file().sync_all().map_err(|source| WriteError::Io {
        path: path.to_owned(),
        source,
    })?;
    Ok(tmp)
}

/// A temporary file next to `path` holding `bytes`, not synced.
fn unsynced(
    path: &Path,
    bytes: &[u8],
    create_mode: u32,
) -> Result<tempfile::NamedTempFile, WriteError> {
    let dir = parent(path);
    std::fs::create_dir_all(dir).map_err(|source| WriteError::Dir {
        path: dir.to_owned(),
        source,
    })?;
    let io = |source| WriteError::Io {
        path: path.to_owned(),
        source,
    };
    let mut builder = tempfile::Builder::new();
    builder.prefix(".gitfleet-").suffix(".tmp");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        // Applied at creation, so the umask still narrows it.
        builder.permissions(Permissions::from_mode(create_mode));
    }
    #[cfg(not(unix))]
    let _ = create_mode;
    let mut tmp = builder.tempfile_in(dir).map_err(io)?;
    tmp.write_all(bytes).map_err(io)?;
    Ok(tmp)
}

/// Create `path` with `bytes`, refusing if it exists. `mode` (narrowed by
/// the umask) is set from the first byte on: a key file is never readable
/// by others, not even for a moment.
pub fn new_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), WriteError> {
    if path.symlink_metadata().is_ok() {
        return Err(WriteError::Exists {
            path: path.to_owned(),
        });
    }
    let tmp = staged(path, bytes, mode)?;
    tmp.persist_noclobber(path).map_err(|e| {
        if e.error.kind() == std::io::ErrorKind::AlreadyExists {
            WriteError::Exists {
                path: path.to_owned(),
            }
        } else {
            WriteError::Io {
                path: path.to_owned(),
                source: e.error,
            }
        }
    })?;
    Ok(())
}

/// Write `path` with `bytes`, replacing it if it exists. With `keep`, the
/// new file gets exactly those permissions (those of the file it
/// replaces); otherwise 0644 narrowed by the umask.
pub fn replace(path: &Path, bytes: &[u8], keep: Option<Permissions>) -> Result<(), WriteError> {
    let io = |source| WriteError::Io {
        path: path.to_owned(),
        source,
    };
    let tmp = staged(path, bytes, 0o644)?;
    if let Some(perms) = keep {
        tmp.as_file().set_permissions(perms).map_err(io)?;
    }
    tmp.persist(path).map_err(|e| io(e.error))?;
    Ok(())
}

/// [`replace`] for a secret: the new file is created with mode 0600, so
/// its bytes are never readable by others, not even while staged.
pub fn replace_private(path: &Path, bytes: &[u8]) -> Result<(), WriteError> {
    let tmp = staged(path, bytes, 0o600)?;
    tmp.persist(path).map_err(|e| WriteError::Io {
        path: path.to_owned(),
        source: e.error,
    })?;
    Ok(())
}

/// [`replace`] without the sync: readers and a crash of this process
/// still see the old or the new bytes, whole, but a power loss may keep
/// neither. For files that are cheap to lose, such as a simulated node's
/// state, where an fsync per write would be most of the cost.
pub fn replace_unsynced(path: &Path, bytes: &[u8]) -> Result<(), WriteError> {
    let tmp = unsynced(path, bytes, 0o644)?;
    tmp.persist(path).map_err(|e| WriteError::Io {
        path: path.to_owned(),
        source: e.error,
    })?;
    Ok(())
}

/// Sync directory `dir`, so the entries renamed into it last survive a
/// crash.
pub fn sync_dir(dir: &Path) -> Result<(), WriteError> {
    let io = |source| WriteError::Io {
        path: dir.to_owned(),
        source,
    };
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_file_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/k.key");
        new_file(&path, b"one", 0o600).unwrap();
        assert!(matches!(
            new_file(&path, b"two", 0o600),
            Err(WriteError::Exists { .. })
        ));
        assert_eq!(std::fs::read(&path).unwrap(), b"one");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn replace_keeps_the_given_permissions_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("root.json");
        new_file(&path, b"one", 0o640).unwrap();
        let perms = std::fs::metadata(&path).unwrap().permissions();
        replace(&path, b"two", Some(perms.clone())).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions(), perms);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
