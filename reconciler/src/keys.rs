//! Reading the keys commands are given: key files for signing, public keys
//! as base64 or as files.

use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;
use gitfleet_schemas::keyfile::{KeyFile, KeyFileError, KeyRole};
use gitfleet_schemas::trust::PublicKey;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("reading key file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("key file {path} is invalid")]
    Invalid {
        path: PathBuf,
        #[source]
        source: KeyFileError,
    },
    #[error("key file {path} has role `{found}`; {purpose} needs role `{expected}`")]
    Role {
        path: PathBuf,
        found: KeyRole,
        expected: KeyRole,
        purpose: &'static str,
    },
    #[error("`{arg}` is not a base64 ed25519 public key ({reason}) nor a readable file")]
    NotAKey {
        arg: String,
        reason: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} holds neither a key file nor a base64 ed25519 public key: {reason}")]
    NotAPublicKey { path: PathBuf, reason: String },
}

/// A signing key read from a checked key file.
#[derive(Debug)]
pub struct Loaded {
    pub key: SigningKey,
    pub public: PublicKey,
}

/// Read a key file of `role`: the public key must be the private key's.
/// A file others can read is used, with a warning.
pub fn load(path: &Path, role: KeyRole, purpose: &'static str) -> Result<Loaded, KeyError> {
    let bytes = std::fs::read(path).map_err(|source| KeyError::Read {
        path: path.to_owned(),
        source,
    })?;
    let (file, key) = KeyFile::parse(&bytes).map_err(|source| KeyError::Invalid {
        path: path.to_owned(),
        source,
    })?;
    warn_if_readable(path);
    if file.role != role {
        return Err(KeyError::Role {
            path: path.to_owned(),
            found: file.role,
            expected: role,
            purpose,
        });
    }
    Ok(Loaded {
        key,
        public: file.public_key,
    })
}

#[cfg(unix)]
fn warn_if_readable(path: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(
                "key file {} has mode {mode:04o}: others can read it; `chmod 600` it",
                path.display()
            );
        }
    }
}

#[cfg(not(unix))]
fn warn_if_readable(_: &Path) {}

/// A public key given on the command line: base64, a file holding base64
/// (`.pub`), or a key file of `role` (only its public half is used).
pub fn public(arg: &str, role: KeyRole, purpose: &'static str) -> Result<PublicKey, KeyError> {
    let reason = match PublicKey::parse(arg) {
        Ok(key) => return Ok(key),
        Err(reason) => reason,
    };
    let path = Path::new(arg);
    let bytes = std::fs::read(path).map_err(|source| KeyError::NotAKey {
        arg: arg.to_owned(),
        reason,
        source,
    })?;
    if bytes.trim_ascii_start().starts_with(b"{") {
        return load(path, role, purpose).map(|k| k.public);
    }
    let text = String::from_utf8_lossy(&bytes);
    PublicKey::parse(text.trim()).map_err(|reason| KeyError::NotAPublicKey {
        path: path.to_owned(),
        reason,
    })
}

/// Every key of `args`, refusing one given twice.
pub fn public_set(
    args: &[String],
    role: KeyRole,
    purpose: &'static str,
) -> anyhow::Result<Vec<PublicKey>> {
    let mut keys = Vec::with_capacity(args.len());
    for arg in args {
        let key = public(arg, role, purpose)?;
        anyhow::ensure!(
            !keys.contains(&key),
            "{purpose}: key {key} is given twice (again as `{arg}`)"
        );
        keys.push(key);
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;
    use gitfleet_io::write;

    fn key_file(dir: &Path, name: &str, role: KeyRole, seed: u8) -> PathBuf {
        let path = dir.join(name);
        write::new_file(&path, &KeyFile::new(role, &[seed; 32]).to_json(), 0o600).unwrap();
        path
    }

    #[test]
    fn public_keys_come_as_base64_pub_files_or_key_files() {
        let dir = tempfile::tempdir().unwrap();
        let expected = KeyFile::new(KeyRole::Root, &[5; 32]).public_key;
        let key = key_file(dir.path(), "r.key", KeyRole::Root, 5);
        let pubfile = dir.path().join("r.pub");
        std::fs::write(&pubfile, format!("{expected}\n")).unwrap();
        for arg in [
            expected.to_string(),
            key.display().to_string(),
            pubfile.display().to_string(),
        ] {
            assert_eq!(public(&arg, KeyRole::Root, "test").unwrap(), expected);
        }
    }

    #[test]
    fn a_key_of_another_role_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let key = key_file(dir.path(), "o.key", KeyRole::Online, 6);
        let err = load(&key, KeyRole::Root, "signing a root").unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "key file {} has role `online`; signing a root needs role `root`",
                key.display()
            )
        );
    }

    #[test]
    fn neither_key_nor_file_says_both() {
        let err = public("nope", KeyRole::Root, "test").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("`nope` is not a base64 ed25519 public key"),
            "{err}"
        );
    }
}
