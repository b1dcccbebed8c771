//! Building bundles: the same inputs give the same bytes, and so the same
//! digest, on any machine.
//!
//! A bundle is a `tar.zst` whose entries are sorted by path, with mode 0644,
//! uid and gid 0, mtime 0 and no user or group names; nothing of the host
//! (umask, clock, file times, owner) reaches it. zstd runs single-threaded at
//! a fixed level from the vendored, locked libzstd.

use std::collections::BTreeMap;

use gitfleet_schemas::bundle::{
    bundle_path_ok, find_clash, BundleFile, BundleKind, BundleManifest, PathClash, FILES_DIR,
    MANIFEST_FORMAT, MANIFEST_PATH, MAX_PATH_LEN, SBOM_PATH,
};
use gitfleet_schemas::trust::BundleRef;
use gitfleet_schemas::verify::{bundle_digest, sha256_hex};

use gitfleet_schemas::{Proxy, ProxyKind};

use crate::model::ConfigDir;
use crate::sbom;

/// zstd level: `zstd -3`, the command line's default.
pub const ZSTD_LEVEL: i32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("config `{name}` did not validate for {proxy}, so it cannot be bundled for it")]
    Invalid { name: String, proxy: Proxy },
    #[error("bundle path `{path}` is not a plain relative path of printable ASCII (no spaces, `\\`, `.` or `..` components)")]
    Path { path: String },
    #[error("bundle path `{path}` is {len} bytes; at most {max} fit a plain tar header, so use a shorter file name")]
    PathTooLong {
        path: String,
        len: usize,
        max: usize,
    },
    #[error("bundle paths `{first}` and `{second}` differ only in case; they would collide on a case-insensitive file system")]
    CaseClash { first: String, second: String },
    #[error("bundle path `{file}` is a file, but `{inside}` needs it to be a directory")]
    FileAsDirectory { file: String, inside: String },
    #[error("writing the archive")]
    Archive(#[source] std::io::Error),
    #[error("compressing the archive")]
    Compress(#[source] std::io::Error),
}

/// A built bundle: its bytes and how a channel manifest names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Built {
    pub bytes: Vec<u8>,
    pub reference: BundleRef,
    pub manifest: BundleManifest,
}

/// What goes into a bundle.
#[derive(Debug)]
pub struct Input<'a> {
    pub kind: BundleKind,
    pub name: &'a str,
    pub source_commit: &'a str,
    pub validator: &'a str,
    /// Files by path relative to the config directory.
    pub files: &'a BTreeMap<String, Vec<u8>>,
    /// CycloneDX JSON describing the files.
    pub sbom: Vec<u8>,
}

/// Bundle a config directory validated for `proxy`, at `source_commit`.
pub fn proxy_config(
    dir: &ConfigDir,
    proxy: &Proxy,
    source_commit: &str,
) -> Result<Built, BuildError> {
    let invalid = || BuildError::Invalid {
        name: dir.name.clone(),
        proxy: proxy.clone(),
    };
    let variant = dir.variants.get(proxy).ok_or_else(invalid)?;
    let config = variant.config.as_ref().ok_or_else(invalid)?;
    let files = files_for(dir, proxy.kind, variant.file);
    let sbom = sbom::of_config(&dir.name, source_commit, proxy, config, &files);
    build(Input {
        kind: BundleKind::Sentinel,
        name: &dir.name,
        source_commit,
        validator: &proxy.validator(),
        files: &files,
        sbom,
    })
}

/// The files of a config directory that a bundle for `kind` carries: its
/// entry file (read from `entry`, the other proxy's file while the
/// directory has only that) and every file that is not a proxy's entry.
/// A directory with only `sentinel.kdl` bundles for Sentinel as it is.
pub fn files_for(dir: &ConfigDir, kind: ProxyKind, entry: &str) -> BTreeMap<String, Vec<u8>> {
    let mut files: BTreeMap<String, Vec<u8>> = dir
        .files
        .iter()
        .filter(|(path, _)| ProxyKind::of_entry(path).is_none())
        .map(|(path, bytes)| (path.clone(), bytes.clone()))
        .collect();
    if let Some(bytes) = dir.files.get(entry) {
        files.insert(kind.entry().to_owned(), bytes.clone());
    }
    files
}

/// Build the archive for `input`.
pub fn build(input: Input<'_>) -> Result<Built, BuildError> {
    let mut entries: BTreeMap<String, &[u8]> = BTreeMap::new();
    for (path, bytes) in input.files {
        let full = format!("{FILES_DIR}{path}");
        if full.len() > MAX_PATH_LEN {
            return Err(BuildError::PathTooLong {
                path: full.clone(),
                len: full.len(),
                max: MAX_PATH_LEN,
            });
        }
        // The verifier's own rule: what is built is what agents accept.
        if !bundle_path_ok(&full) {
            return Err(BuildError::Path { path: path.clone() });
        }
        entries.insert(full, bytes);
    }
    match find_clash(entries.keys().map(String::as_str)) {
        None => {}
        Some(PathClash::Case { first, second }) => {
            return Err(BuildError::CaseClash { first, second })
        }
        Some(PathClash::FileAsDirectory { file, inside }) => {
            return Err(BuildError::FileAsDirectory { file, inside })
        }
    }
    entries.insert(SBOM_PATH.to_owned(), &input.sbom);
    let manifest = BundleManifest {
        format: MANIFEST_FORMAT,
        kind: input.kind,
        name: input.name.to_owned(),
        source_commit: input.source_commit.to_owned(),
        validator: input.validator.to_owned(),
        files: entries
            .iter()
            .map(|(path, bytes)| BundleFile {
                path: path.clone(),
                size: bytes.len() as u64,
                sha256: sha256_hex(bytes),
            })
            .collect(),
    };
    let mut manifest_json = serde_json::to_vec_pretty(&manifest).unwrap_or_default();
    manifest_json.push(b'\n');
    entries.insert(MANIFEST_PATH.to_owned(), &manifest_json);

    let mut tar = tar::Builder::new(Vec::new());
    for (path, bytes) in &entries {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        // Paths are at most MAX_PATH_LEN bytes of ASCII: they fit the
        // header's name field, so no long-name or PAX entry is written.
        header.set_path(path).map_err(BuildError::Archive)?;
        header.set_cksum();
        tar.append(&header, *bytes).map_err(BuildError::Archive)?;
    }
    let archive = tar.into_inner().map_err(BuildError::Archive)?;
    let bytes = zstd::bulk::compress(&archive, ZSTD_LEVEL).map_err(BuildError::Compress)?;
    let reference = BundleRef {
        digest: bundle_digest(&bytes),
        length: bytes.len() as u64,
    };
    Ok(Built {
        bytes,
        reference,
        manifest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use gitfleet_schemas::verify::{verify_bundle, Limits};

    fn input(files: &BTreeMap<String, Vec<u8>>) -> Input<'_> {
        Input {
            kind: BundleKind::Sentinel,
            name: "edge",
            source_commit: "0123456789abcdef0123456789abcdef01234567",
            validator: "test",
            files,
            sbom: b"{}".to_vec(),
        }
    }

    fn files() -> BTreeMap<String, Vec<u8>> {
        BTreeMap::from([
            ("sentinel.kdl".to_owned(), b"system {}\n".to_vec()),
            ("pages/503.html".to_owned(), b"<h1>busy</h1>\n".to_vec()),
        ])
    }

    #[test]
    fn same_inputs_give_the_same_bytes() {
        let f = files();
        assert_eq!(build(input(&f)).unwrap(), build(input(&f)).unwrap());
    }

    #[test]
    fn any_change_of_input_changes_the_digest() {
        let f = files();
        let base = build(input(&f)).unwrap().reference.digest;
        let mut g = f.clone();
        g.insert("sentinel.kdl".into(), b"system { }\n".to_vec());
        assert_ne!(build(input(&g)).unwrap().reference.digest, base);
        let mut other = input(&f);
        other.source_commit = "ffffffffffffffffffffffffffffffffffffffff";
        assert_ne!(build(other).unwrap().reference.digest, base);
    }

    #[test]
    fn a_built_bundle_verifies_and_round_trips_its_files() {
        let f = files();
        let built = build(input(&f)).unwrap();
        let bundle = verify_bundle(&built.reference, &built.bytes, Limits::default()).unwrap();
        assert_eq!(bundle.files["files/sentinel.kdl"], f["sentinel.kdl"]);
        assert_eq!(bundle.files["files/pages/503.html"], f["pages/503.html"]);
        assert_eq!(bundle.manifest, built.manifest);
    }

    #[test]
    fn unsafe_paths_are_refused() {
        for bad in [
            "../x",
            "/etc/passwd",
            "a//b",
            "a/./b",
            "",
            "a b",
            "tab\t",
            "caf\u{e9}",
            "a\\b",
            "x/",
        ] {
            let f = BTreeMap::from([(bad.to_owned(), Vec::new())]);
            assert!(
                matches!(build(input(&f)), Err(BuildError::Path { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn long_paths_are_refused_before_they_need_a_long_name_entry() {
        let name = "x".repeat(MAX_PATH_LEN - FILES_DIR.len());
        let f = BTreeMap::from([(name.clone(), Vec::new())]);
        assert!(build(input(&f)).is_ok());
        let longer = format!("{name}y");
        let f = BTreeMap::from([(longer.clone(), Vec::new())]);
        let err = build(input(&f)).unwrap_err();
        assert!(
            matches!(
                &err,
                BuildError::PathTooLong {
                    len: 100,
                    max: 99,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn clashing_paths_are_refused() {
        let f = BTreeMap::from([("A".to_owned(), Vec::new()), ("a".to_owned(), Vec::new())]);
        assert!(matches!(
            build(input(&f)),
            Err(BuildError::CaseClash { .. })
        ));
        let f = BTreeMap::from([("x".to_owned(), Vec::new()), ("x/y".to_owned(), Vec::new())]);
        assert!(matches!(
            build(input(&f)),
            Err(BuildError::FileAsDirectory { .. })
        ));
    }
}
