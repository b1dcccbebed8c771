//! The agent's state directory: everything it persists, and the one atomic
//! step that changes what the proxy runs.
//!
//! ```text
//! <state-dir>/
//!   node.key               the node's ed25519 key (0600); never leaves the node
//!   roots/1.json ...       the pinned root and every rotation since, verified as a chain
//!   state.json             highest serial, active/previous bundle, failed bundles
//!   journal.json           an activation in flight (see `Journal`)
//!   bundles/<hex>/         a verified bundle: bundle.tar.zst, manifest.json, files/...
//!   staging/               unpacks in progress; emptied at start-up
//!   sentinel -> bundles/<hex>/files      what the proxy loads (`-c <state-dir>/sentinel/sentinel.kdl`)
//! ```
//!
//! A bundle directory appears under `bundles/` by one rename after it was
//! fully written and synced (one `syncfs` for all its files), so it is
//! complete or absent. The proxy's config
//! changes by one rename of the `sentinel` symlink, so the proxy sees the
//! whole old or the whole new config, never a mix.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;
use gitfleet_io::write::{self, WriteError};
use gitfleet_schemas::agent::{Journal, LocalState, LOCAL_STATE_FORMAT};
use gitfleet_schemas::bundle::{BundleManifest, MANIFEST_PATH};
use gitfleet_schemas::keyfile::{KeyFile, KeyRole};
use gitfleet_schemas::status::Drift;
use gitfleet_schemas::trust::{BundleRef, Envelope, Root};
use gitfleet_schemas::verify::{self, Bundle, BundleHead, Verified, VerifyError};

/// The name of the link the proxy's config path goes through.
pub const SENTINEL_LINK: &str = "sentinel";
const ARCHIVE: &str = "bundle.tar.zst";

#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error("{path} is corrupt: {reason}; fix or remove it by hand (the agent never resets its state silently)")]
    Corrupt { path: PathBuf, reason: String },
    #[error("{path} does not exist; run `gitfleet-agent enroll` first")]
    NotEnrolled { path: PathBuf },
    #[error("{path}: {source}")]
    Trust {
        path: PathBuf,
        #[source]
        source: VerifyError,
    },
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> LocalError + '_ {
    move |source| LocalError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Remember the first failed write of a staging copy, and pass the error on.
fn keep(first: &mut Option<LocalError>, path: &Path, e: io::Error) -> io::Error {
    let kind = e.kind();
    let shown = e.to_string();
    first.get_or_insert(LocalError::Io {
        path: path.to_owned(),
        source: e,
    });
    io::Error::new(kind, shown)
}

/// A reader that remembers its first error: a read of a local file that
/// failed is the node's problem, whatever the verifier makes of it.
struct Noting<'a, R> {
    inner: R,
    path: &'a Path,
    failed: &'a mut Option<LocalError>,
}

impl<R: io::Read> io::Read for Noting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner
            .read(buf)
            .map_err(|e| keep(self.failed, self.path, e))
    }
}

/// The hex part of a well-formed `sha256:<hex>` digest.
fn hex(reference: &BundleRef) -> Result<&str, LocalError> {
    reference
        .digest
        .strip_prefix("sha256:")
        .filter(|_| gitfleet_schemas::trust::valid_digest(&reference.digest))
        .ok_or_else(|| LocalError::Corrupt {
            path: PathBuf::from("state.json"),
            reason: format!("`{}` is not a sha256 digest", reference.digest),
        })
}

/// An opened state directory.
#[derive(Clone, Debug)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// Open (creating its subdirectories) the state directory at `root`,
    /// and clear `staging/` of unpacks a crash left behind.
    pub fn open(root: &Path) -> Result<StateDir, LocalError> {
        for sub in ["bundles", "roots"] {
            let p = root.join(sub);
            fs::create_dir_all(&p).map_err(io_at(&p))?;
        }
        let staging = root.join("staging");
        if staging.exists() {
            fs::remove_dir_all(&staging).map_err(io_at(&staging))?;
        }
        fs::create_dir_all(&staging).map_err(io_at(&staging))?;
        Ok(StateDir {
            root: root.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.root
    }

    /// The config path the proxy is started with.
    pub fn sentinel_config(&self) -> PathBuf {
        self.root.join(SENTINEL_LINK).join("sentinel.kdl")
    }

    fn read_json<T: serde::de::DeserializeOwned>(
        &self,
        name: &str,
    ) -> Result<Option<T>, LocalError> {
        let path = self.root.join(name);
        match fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| LocalError::Corrupt {
                        path,
                        reason: e.to_string(),
                    })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(LocalError::Io { path, source }),
        }
    }

    fn write_json<T: serde::Serialize>(&self, name: &str, value: &T) -> Result<(), LocalError> {
        let mut bytes = serde_json::to_vec_pretty(value).unwrap_or_default();
        bytes.push(b'\n');
        write::replace(&self.root.join(name), &bytes, None)?;
        self.sync_dir(&self.root)
    }

    /// Make a rename in `dir` durable.
    fn sync_dir(&self, dir: &Path) -> Result<(), LocalError> {
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_at(dir))
    }

    pub fn load_state(&self) -> Result<LocalState, LocalError> {
        let state: LocalState = self.read_json("state.json")?.unwrap_or(LocalState {
            format: LOCAL_STATE_FORMAT,
            ..LocalState::default()
        });
        if state.format != LOCAL_STATE_FORMAT {
            return Err(LocalError::Corrupt {
                path: self.root.join("state.json"),
                reason: format!(
                    "format {} is not {LOCAL_STATE_FORMAT}, the one this agent reads",
                    state.format
                ),
            });
        }
        Ok(state)
    }

    pub fn save_state(&self, state: &LocalState) -> Result<(), LocalError> {
        self.write_json("state.json", state)
    }

    pub fn journal(&self) -> Result<Option<Journal>, LocalError> {
        self.read_json("journal.json")
    }

    pub fn begin(&self, journal: &Journal) -> Result<(), LocalError> {
        self.write_json("journal.json", journal)
    }

    /// Remove the journal. Not synced: a journal whose removal a crash
    /// undid names an activation that has ended either way, and recovery
    /// finds the link already where `state.json` wants it; every
    /// activation writes (and syncs) a new journal before it swaps.
    pub fn end(&self) -> Result<(), LocalError> {
        let path = self.root.join("journal.json");
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(LocalError::Io { path, source }),
        }
    }

    /// The node key, created by `gitfleet-agent enroll`.
    pub fn node_key(&self) -> Result<SigningKey, LocalError> {
        let path = self.root.join("node.key");
        let bytes = fs::read(&path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => LocalError::NotEnrolled { path: path.clone() },
            _ => LocalError::Io {
                path: path.clone(),
                source: e,
            },
        })?;
        let (file, key) = KeyFile::parse(&bytes).map_err(|e| LocalError::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        if file.role != KeyRole::Node {
            return Err(LocalError::Corrupt {
                path,
                reason: format!("it holds a {} key, not a node key", file.role),
            });
        }
        Ok(key)
    }

    /// Create the node key; refuses to replace one.
    pub fn create_node_key(&self, seed: &[u8; 32]) -> Result<SigningKey, LocalError> {
        let file = KeyFile::new(KeyRole::Node, seed);
        write::new_file(&self.root.join("node.key"), &file.to_json(), 0o600)?;
        self.node_key()
    }

    /// The trusted root: `roots/1.json`, pinned at enrollment and trusted
    /// for its own keys, then each `roots/<n>.json` verified as a rotation
    /// of the one before.
    pub fn trusted_root(&self) -> Result<Verified<Root>, LocalError> {
        let first = self.root.join("roots/1.json");
        let bytes = fs::read(&first).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => LocalError::NotEnrolled {
                path: first.clone(),
            },
            _ => LocalError::Io {
                path: first.clone(),
                source: e,
            },
        })?;
        let mut root = pin_first_root(&bytes).map_err(|source| LocalError::Trust {
            path: first,
            source,
        })?;
        for n in 2.. {
            let path = self.root.join(format!("roots/{n}.json"));
            let bytes = match fs::read(&path) {
                Ok(b) => b,
                Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                Err(source) => return Err(LocalError::Io { path, source }),
            };
            root = verify::verify_root_rotation(&root, &bytes)
                .map_err(|source| LocalError::Trust { path, source })?;
        }
        Ok(root)
    }

    /// Pin the first root (enrollment).
    pub fn pin_root(&self, bytes: &[u8]) -> Result<Verified<Root>, LocalError> {
        let path = self.root.join("roots/1.json");
        let root = pin_first_root(bytes).map_err(|source| LocalError::Trust {
            path: path.clone(),
            source,
        })?;
        write::new_file(&path, bytes, 0o644)?;
        Ok(root)
    }

    /// Keep a verified rotation, so the chain is there at the next start.
    pub fn add_root(&self, version: u64, bytes: &[u8]) -> Result<(), LocalError> {
        write::replace(
            &self.root.join(format!("roots/{version}.json")),
            bytes,
            None,
        )?;
        self.sync_dir(&self.root.join("roots"))
    }

    fn bundle_dir(&self, reference: &BundleRef) -> Result<PathBuf, LocalError> {
        Ok(self.root.join("bundles").join(hex(reference)?))
    }

    /// The file at `path` (as the bundle names it) of the installed copy
    /// of `reference`, if there is one.
    pub fn bundle_file(
        &self,
        reference: &BundleRef,
        path: &str,
    ) -> Result<Option<Vec<u8>>, LocalError> {
        let path = self.bundle_dir(reference)?.join(path);
        match fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(LocalError::Io { path, source }),
        }
    }

    /// The config files of `reference` (what the `sentinel` link points at).
    pub fn bundle_files(&self, reference: &BundleRef) -> Result<PathBuf, LocalError> {
        Ok(self.bundle_dir(reference)?.join("files"))
    }

    /// Whether a complete copy of `reference` is on disk.
    pub fn has_bundle(&self, reference: &BundleRef) -> bool {
        self.bundle_dir(reference)
            .map(|d| d.join(ARCHIVE).is_file())
            .unwrap_or(false)
    }

    /// Where the archive of `reference` is written as it downloads, before
    /// [`StateDir::stage`] verifies it.
    pub fn download_path(&self, reference: &BundleRef) -> Result<PathBuf, LocalError> {
        Ok(self
            .root
            .join("staging")
            .join(format!("{}.download", hex(reference)?)))
    }

    /// Empty `staging/` of earlier downloads and copies (one bundle is
    /// taken at a time).
    pub fn clear_staging(&self) -> Result<(), LocalError> {
        let staging = self.root.join("staging");
        if staging.exists() {
            fs::remove_dir_all(&staging).map_err(io_at(&staging))?;
        }
        fs::create_dir_all(&staging).map_err(io_at(&staging))
    }

    /// Verify the downloaded archive of `reference` into a staging copy
    /// (`staging/<hex>/`: its files, `manifest.json` and the archive),
    /// a block at a time: neither the archive nor any file is held whole.
    /// A bundle that does not verify is [`LocalError::Trust`]; the copy is
    /// then removed.
    pub fn stage(
        &self,
        reference: &BundleRef,
        limits: verify::Limits,
    ) -> Result<Verified<BundleHead>, LocalError> {
        let download = self.download_path(reference)?;
        let staging = self.root.join("staging").join(hex(reference)?);
        if staging.exists() {
            fs::remove_dir_all(&staging).map_err(io_at(&staging))?;
        }
        fs::create_dir_all(&staging).map_err(io_at(&staging))?;
        let mut failed_read: Option<LocalError> = None;
        let input = Noting {
            inner: fs::File::open(&download).map_err(io_at(&download))?,
            path: &download,
            failed: &mut failed_read,
        };
        // A failed write (or read of the download) is this node's problem,
        // not the bundle's.
        let mut failed_write: Option<LocalError> = None;
        let mut buf = vec![0u8; 64 << 10];
        let verified = verify::verify_bundle_into(reference, input, limits, |path, data| {
            // Paths were checked by the verifier: relative, no `..`.
            let target = staging.join(path);
            let mut file = match target
                .parent()
                .map_or(Ok(()), fs::create_dir_all)
                .and_then(|()| fs::File::create(&target))
            {
                Ok(f) => f,
                Err(e) => return Err(keep(&mut failed_write, &target, e)),
            };
            loop {
                let n = data.read(&mut buf)?;
                if n == 0 {
                    return Ok(());
                }
                if let Err(e) = io::Write::write_all(&mut file, &buf[..n]) {
                    return Err(keep(&mut failed_write, &target, e));
                }
            }
        });
        let head = match (verified, failed_write, failed_read) {
            (Ok(head), _, _) => head,
            (Err(VerifyError::Unpacking { .. }), Some(e), _) | (Err(_), _, Some(e)) => {
                return Err(e)
            }
            (Err(source), _, None) => {
                let _ = fs::remove_dir_all(&staging);
                return Err(LocalError::Trust {
                    path: download,
                    source,
                });
            }
        };
        let archive = staging.join(ARCHIVE);
        fs::rename(&download, &archive).map_err(io_at(&archive))?;
        Ok(head)
    }

    /// Put the staged copy of `bundle` in place as `bundles/<hex>/`, unless
    /// an intact copy is there already. The copy is synced first, so the
    /// directory is complete or absent.
    pub fn install(&self, bundle: &Verified<BundleHead>) -> Result<PathBuf, LocalError> {
        let dir = self.bundle_dir(&bundle.reference)?;
        let staging = self.root.join("staging").join(hex(&bundle.reference)?);
        if dir.join(ARCHIVE).is_file() && self.drift_in(&dir, &bundle.manifest)?.is_empty() {
            let _ = fs::remove_dir_all(&staging);
            return Ok(dir);
        }
        // One flush of the filesystem instead of an fsync per file (19 for a
        // typical bundle) and none for the directories: every file and
        // directory of the copy is on disk before the rename can be. It
        // also flushes other writers' dirty data on this filesystem, which
        // on a node is little.
        fs::File::open(&staging)
            .and_then(|d| rustix::fs::syncfs(&d).map_err(io::Error::from))
            .map_err(io_at(&staging))?;
        if dir.exists() {
            // An incomplete or altered copy: never the active one, whose
            // archive is complete and is repaired file by file instead.
            fs::remove_dir_all(&dir).map_err(io_at(&dir))?;
        }
        fs::rename(&staging, &dir).map_err(io_at(&dir))?;
        self.sync_dir(&self.root.join("bundles"))?;
        Ok(dir)
    }

    /// Write, verify and install a bundle held in memory (as a download
    /// would): [`StateDir::stage`] then [`StateDir::install`].
    pub fn unpack(&self, bundle: &Verified<Bundle>, archive: &[u8]) -> Result<PathBuf, LocalError> {
        let download = self.download_path(&bundle.reference)?;
        fs::write(&download, archive).map_err(io_at(&download))?;
        let limits = verify::Limits {
            max_unpacked_bytes: u64::MAX,
            ..verify::Limits::default()
        };
        let head = self.stage(&bundle.reference, limits)?;
        self.install(&head)
    }

    /// The archive bytes of a bundle on disk, verified again.
    pub fn stored_bundle(
        &self,
        reference: &BundleRef,
        limits: verify::Limits,
    ) -> Result<(Verified<Bundle>, Vec<u8>), LocalError> {
        let path = self.bundle_dir(reference)?.join(ARCHIVE);
        let bytes = fs::read(&path).map_err(io_at(&path))?;
        let bundle = verify::verify_bundle(reference, &bytes, limits)
            .map_err(|source| LocalError::Trust { path, source })?;
        Ok((bundle, bytes))
    }

    /// Point `link` at the files of `target` (or remove it) with one rename,
    /// synced.
    pub fn link(&self, link: &str, target: Option<&BundleRef>) -> Result<(), LocalError> {
        self.swap(link, target)?;
        self.sync_dir(&self.root)
    }

    /// [`StateDir::link`] without the sync, for an activation under a
    /// journal: until `state.json` is saved (which syncs this directory,
    /// the new link with it) a crash is undone from the journal whether
    /// the new link survived it or not.
    pub fn swap(&self, link: &str, target: Option<&BundleRef>) -> Result<(), LocalError> {
        let path = self.root.join(link);
        match target {
            Some(t) => {
                let relative = Path::new("bundles").join(hex(t)?).join("files");
                let tmp = self.root.join(format!(".{link}.tmp"));
                let _ = fs::remove_file(&tmp);
                std::os::unix::fs::symlink(&relative, &tmp).map_err(io_at(&tmp))?;
                fs::rename(&tmp, &path).map_err(io_at(&path))?;
            }
            None => match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => return Err(LocalError::Io { path, source }),
            },
        }
        Ok(())
    }

    /// The digest `link` points at, if any.
    pub fn linked(&self, link: &str) -> Result<Option<String>, LocalError> {
        let path = self.root.join(link);
        let target = match fs::read_link(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(LocalError::Io { path, source }),
        };
        let hex = target
            .strip_prefix("bundles")
            .ok()
            .and_then(|rest| rest.components().next())
            .and_then(|c| c.as_os_str().to_str())
            .map(str::to_owned);
        match hex {
            Some(h) if target.ends_with("files") => Ok(Some(format!("sha256:{h}"))),
            _ => Err(LocalError::Corrupt {
                path,
                reason: format!("it points at {}, not bundles/<hex>/files", target.display()),
            }),
        }
    }

    /// Files of `reference`'s directory that differ from its manifest.
    pub fn drift(&self, reference: &BundleRef) -> Result<Vec<Drift>, LocalError> {
        let dir = self.bundle_dir(reference)?;
        let path = dir.join(MANIFEST_PATH);
        let bytes = fs::read(&path).map_err(io_at(&path))?;
        let manifest: BundleManifest =
            serde_json::from_slice(&bytes).map_err(|e| LocalError::Corrupt {
                path,
                reason: e.to_string(),
            })?;
        self.drift_in(&dir, &manifest)
    }

    fn drift_in(&self, dir: &Path, manifest: &BundleManifest) -> Result<Vec<Drift>, LocalError> {
        let expected: BTreeMap<&str, &str> = manifest
            .files
            .iter()
            .filter(|f| f.path.starts_with(gitfleet_schemas::bundle::FILES_DIR))
            .map(|f| (f.path.as_str(), f.sha256.as_str()))
            .collect();
        let mut found = BTreeMap::new();
        walk(&dir.join("files"), "files", &mut found)?;
        let mut drift = Vec::new();
        for (path, sha) in &expected {
            let now = found.get(*path).cloned();
            if now.as_deref() != Some(*sha) {
                drift.push(Drift {
                    path: (*path).to_owned(),
                    expected_sha256: Some((*sha).to_owned()),
                    found_sha256: now,
                });
            }
        }
        for (path, sha) in found {
            if !expected.contains_key(path.as_str()) {
                drift.push(Drift {
                    path,
                    expected_sha256: None,
                    found_sha256: Some(sha),
                });
            }
        }
        Ok(drift)
    }

    /// Restore the files of `reference` from its archive: each drifted file
    /// rewritten by rename, each extra file removed.
    pub fn repair(
        &self,
        reference: &BundleRef,
        drift: &[Drift],
        limits: verify::Limits,
    ) -> Result<(), LocalError> {
        let (bundle, _) = self.stored_bundle(reference, limits)?;
        let dir = self.bundle_dir(reference)?;
        for d in drift {
            let path = dir.join(&d.path);
            match bundle.files.get(&d.path) {
                Some(bytes) => write::replace(&path, bytes, None)?,
                None => match fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(source) => return Err(LocalError::Io { path, source }),
                },
            }
        }
        Ok(())
    }

    /// Remove bundle directories other than `keep`.
    pub fn collect_garbage(&self, keep: &[&BundleRef]) -> Result<usize, LocalError> {
        let keep: Vec<&str> = keep.iter().filter_map(|r| hex(r).ok()).collect();
        let dir = self.root.join("bundles");
        let mut removed = 0;
        for entry in fs::read_dir(&dir).map_err(io_at(&dir))? {
            let entry = entry.map_err(io_at(&dir))?;
            let name = entry.file_name();
            if !keep.iter().any(|k| name.to_str() == Some(k)) {
                let p = entry.path();
                fs::remove_dir_all(&p).map_err(io_at(&p))?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// Trust a first root for its own keys: the operator handed it over at
/// enrollment, out of band; what is checked is that it is well-formed,
/// version 1, and signed by its own root threshold.
pub fn pin_first_root(bytes: &[u8]) -> Result<Verified<Root>, VerifyError> {
    let malformed = |reason: String| VerifyError::Malformed {
        what: "root",
        reason,
    };
    let envelope: Envelope = serde_json::from_slice(bytes).map_err(|e| malformed(e.to_string()))?;
    let payload = envelope
        .payload_bytes()
        .map_err(|e| malformed(e.to_string()))?;
    let root: Root = serde_json::from_slice(&payload).map_err(|e| malformed(e.to_string()))?;
    verify::verify_first_root(bytes, &root.fleet, &root.root_keys, root.root_threshold)
}

/// `sha256` of every regular file under `dir`, by `prefix/relative` path.
/// Anything else (a symlink, a device) counts as a file that cannot match.
fn walk(dir: &Path, prefix: &str, out: &mut BTreeMap<String, String>) -> Result<(), LocalError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(LocalError::Io {
                path: dir.to_owned(),
                source,
            })
        }
    };
    for entry in entries {
        let entry = entry.map_err(io_at(dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let rel = format!("{prefix}/{name}");
        let path = entry.path();
        let kind = entry.file_type().map_err(io_at(&path))?;
        if kind.is_dir() {
            walk(&path, &rel, out)?;
        } else if kind.is_file() {
            let bytes = fs::read(&path).map_err(io_at(&path))?;
            out.insert(rel, verify::sha256_hex(&bytes));
        } else {
            out.insert(rel, "not a regular file".to_owned());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use gitfleet_policy::bundle::{build, Input};
    use gitfleet_schemas::bundle::BundleKind;

    fn bundle(text: &str) -> (Verified<Bundle>, Vec<u8>) {
        let files = BTreeMap::from([("sentinel.kdl".to_owned(), text.as_bytes().to_vec())]);
        let built = build(Input {
            kind: BundleKind::Sentinel,
            name: "edge",
            source_commit: "c0ffee",
            validator: "test",
            files: &files,
            sbom: b"{}".to_vec(),
        })
        .unwrap();
        let verified =
            verify::verify_bundle(&built.reference, &built.bytes, verify::Limits::default())
                .unwrap();
        (verified, built.bytes)
    }

    #[test]
    fn a_download_that_does_not_verify_is_refused_and_leaves_nothing_staged() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::open(tmp.path()).unwrap();
        let (a, mut bytes) = bundle("a");
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        fs::write(dir.download_path(&a.reference).unwrap(), &bytes).unwrap();
        let err = dir
            .stage(&a.reference, verify::Limits::default())
            .unwrap_err();
        assert!(
            matches!(
                err,
                LocalError::Trust {
                    source: VerifyError::BundleDigest { .. },
                    ..
                }
            ),
            "{err}"
        );
        let staged: Vec<_> = fs::read_dir(tmp.path().join("staging"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(staged.len(), 1, "only the download: {staged:?}");
    }

    #[test]
    fn a_staged_bundle_is_installed_whole_with_its_archive() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::open(tmp.path()).unwrap();
        let (a, bytes) = bundle("a");
        fs::write(dir.download_path(&a.reference).unwrap(), &bytes).unwrap();
        let head = dir.stage(&a.reference, verify::Limits::default()).unwrap();
        assert_eq!(head.manifest, a.manifest);
        let installed = dir.install(&head).unwrap();
        assert_eq!(fs::read(installed.join(ARCHIVE)).unwrap(), bytes);
        assert_eq!(
            fs::read(installed.join("files/sentinel.kdl")).unwrap(),
            b"a"
        );
        assert!(dir.drift(&a.reference).unwrap().is_empty());
        // The stored copy verifies as the download did.
        let (stored, _) = dir
            .stored_bundle(&a.reference, verify::Limits::default())
            .unwrap();
        assert_eq!(stored, a);
    }

    #[test]
    fn a_link_swap_points_at_the_whole_new_bundle() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::open(tmp.path()).unwrap();
        let (a, a_bytes) = bundle("a");
        let (b, b_bytes) = bundle("b");
        dir.unpack(&a, &a_bytes).unwrap();
        dir.unpack(&b, &b_bytes).unwrap();
        assert_eq!(dir.linked(SENTINEL_LINK).unwrap(), None);
        dir.link(SENTINEL_LINK, Some(&a.reference)).unwrap();
        assert_eq!(fs::read_to_string(dir.sentinel_config()).unwrap(), "a");
        dir.link(SENTINEL_LINK, Some(&b.reference)).unwrap();
        assert_eq!(fs::read_to_string(dir.sentinel_config()).unwrap(), "b");
        assert_eq!(
            dir.linked(SENTINEL_LINK).unwrap().as_deref(),
            Some(b.reference.digest.as_str())
        );
        dir.link(SENTINEL_LINK, None).unwrap();
        assert_eq!(dir.linked(SENTINEL_LINK).unwrap(), None);
    }

    #[test]
    fn drift_is_found_and_repaired_from_the_kept_archive() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::open(tmp.path()).unwrap();
        let (a, bytes) = bundle("route a");
        let path = dir.unpack(&a, &bytes).unwrap();
        assert!(dir.drift(&a.reference).unwrap().is_empty());
        fs::write(path.join("files/sentinel.kdl"), "edited").unwrap();
        fs::write(path.join("files/extra.kdl"), "extra").unwrap();
        let drift = dir.drift(&a.reference).unwrap();
        assert_eq!(drift.len(), 2, "{drift:?}");
        assert_eq!(drift[0].path, "files/sentinel.kdl");
        assert_eq!(drift[0].found_sha256, Some(verify::sha256_hex(b"edited")));
        assert_eq!(drift[1].path, "files/extra.kdl");
        assert_eq!(drift[1].expected_sha256, None);
        dir.repair(&a.reference, &drift, verify::Limits::default())
            .unwrap();
        assert!(dir.drift(&a.reference).unwrap().is_empty());
        assert_eq!(
            fs::read_to_string(path.join("files/sentinel.kdl")).unwrap(),
            "route a"
        );
    }

    #[test]
    fn corrupt_state_is_an_error_never_a_reset() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::open(tmp.path()).unwrap();
        assert_eq!(dir.load_state().unwrap().serial, None);
        fs::write(
            tmp.path().join("state.json"),
            "{\"format\": 1, \"serial\": ",
        )
        .unwrap();
        let err = dir.load_state().unwrap_err().to_string();
        assert!(err.contains("state.json is corrupt"), "{err}");
        assert!(err.contains("never resets its state silently"), "{err}");
    }

    #[test]
    fn garbage_collection_keeps_the_active_and_previous_bundles() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::open(tmp.path()).unwrap();
        let bundles: Vec<_> = ["a", "b", "c"].iter().map(|t| bundle(t)).collect();
        for (b, bytes) in &bundles {
            dir.unpack(b, bytes).unwrap();
        }
        let keep = [&bundles[1].0.reference, &bundles[2].0.reference];
        assert_eq!(dir.collect_garbage(&keep).unwrap(), 1);
        assert!(!dir.has_bundle(&bundles[0].0.reference));
        assert!(dir.has_bundle(&bundles[1].0.reference));
    }

    #[test]
    fn a_node_key_is_created_once() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::open(tmp.path()).unwrap();
        assert!(matches!(
            dir.node_key(),
            Err(LocalError::NotEnrolled { .. })
        ));
        let k = dir.create_node_key(&[7; 32]).unwrap();
        assert_eq!(dir.node_key().unwrap().to_bytes(), k.to_bytes());
        assert!(dir.create_node_key(&[8; 32]).is_err());
    }
}
