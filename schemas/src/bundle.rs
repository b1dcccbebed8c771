//! The bundle format: a deterministic `tar.zst` holding a config's files,
//! `manifest.json` and a CycloneDX SBOM.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::mesh::Topology;

/// The name of the manifest inside every bundle.
pub const MANIFEST_PATH: &str = "manifest.json";
/// The name of the SBOM inside every bundle.
pub const SBOM_PATH: &str = "sbom.cdx.json";
/// Config files sit under this directory inside the bundle.
pub const FILES_DIR: &str = "files/";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum BundleKind {
    /// A Sentinel proxy config; `files/sentinel.kdl` is the entry point.
    Sentinel,
    /// A WireGuard mesh description.
    WireguardMesh,
}

/// `manifest.json`: what the bundle holds and where it came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BundleManifest {
    /// Format version of this manifest.
    pub format: u32,
    pub kind: BundleKind,
    /// The config or mesh name in the fleet repo.
    pub name: String,
    /// The fleet repo commit the bundle was built from.
    pub source_commit: String,
    /// The validator that accepted the config, e.g. `sentinel-config 0.4.14`.
    pub validator: String,
    /// Every other entry of the archive, sorted by path.
    pub files: Vec<BundleFile>,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BundleFile {
    /// Path inside the archive, `/`-separated, relative.
    pub path: String,
    pub size: u64,
    /// Lowercase hex SHA-256 of the file's bytes.
    pub sha256: String,
}

pub const MANIFEST_FORMAT: u32 = 1;

/// The longest entry path, in bytes: it fits a plain tar header's name
/// field with its terminating NUL, so no GNU long-name or PAX entry is ever
/// needed (and verifiers refuse them).
pub const MAX_PATH_LEN: usize = 99;

/// The one rule for a path inside a bundle, shared by the builder and the
/// verifier: at most [`MAX_PATH_LEN`] bytes of printable ASCII without
/// spaces or `\` (so no control characters and no Unicode normalisation
/// twins); `/`-separated components that are neither empty, `.` nor `..`;
/// and either [`MANIFEST_PATH`], [`SBOM_PATH`] or a file under
/// [`FILES_DIR`].
pub fn bundle_path_ok(path: &str) -> bool {
    if path.is_empty()
        || path.len() > MAX_PATH_LEN
        || !path
            .bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && b != b'\\')
        || !path
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..")
    {
        return false;
    }
    path == MANIFEST_PATH
        || path == SBOM_PATH
        || path
            .strip_prefix(FILES_DIR)
            .is_some_and(|rest| !rest.is_empty())
}

/// Two paths of one bundle that would collide when unpacked on some file
/// system.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathClash {
    /// The two differ only in ASCII case (`files/A`, `files/a`).
    Case { first: String, second: String },
    /// `file` is a file, and `inside` needs it to be a directory
    /// (`files/x`, `files/x/y`); compared ignoring case.
    FileAsDirectory { file: String, inside: String },
}

/// The first clash among `paths` (each already [`bundle_path_ok`] and
/// distinct), if any. Deterministic: the same paths give the same answer.
pub fn find_clash<'a>(paths: impl IntoIterator<Item = &'a str>) -> Option<PathClash> {
    use std::collections::BTreeMap;
    let mut folded: BTreeMap<String, &str> = BTreeMap::new();
    for p in paths {
        if let Some(first) = folded.insert(p.to_ascii_lowercase(), p) {
            let (first, second) = if first <= p { (first, p) } else { (p, first) };
            return Some(PathClash::Case {
                first: first.to_owned(),
                second: second.to_owned(),
            });
        }
    }
    for (lower, inside) in &folded {
        for (i, _) in lower.match_indices('/') {
            if let Some(file) = folded.get(&lower[..i]) {
                return Some(PathClash::FileAsDirectory {
                    file: (*file).to_owned(),
                    inside: (*inside).to_owned(),
                });
            }
        }
    }
    None
}

/// The one file of a [`BundleKind::WireguardMesh`] bundle.
pub const MESH_FILE: &str = "files/mesh.json";

/// `files/mesh.json`: a whole WireGuard mesh, the same bytes for every
/// member (so a mesh step is one object, whatever the mesh size). Each node
/// finds itself by id, configures its interface from its own entry and
/// peers as the topology says (`gitfleet_policy::mesh::peers_of`). Private
/// keys are never in it. Fields a mesh does not use are left out, so a
/// full mesh of fleet nodes reads as it did before they existed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MeshBundle {
    /// Format version of this file: [`MESH_FORMAT`].
    pub format: u32,
    /// The mesh's name in the fleet repo (`meshes/<name>.kdl`).
    pub mesh: String,
    /// The interface name on each node (at most 15 bytes), unless the
    /// node's agent config names another.
    pub interface: String,
    pub listen_port: Option<u16>,
    pub persistent_keepalive_seconds: Option<u16>,
    /// `full-mesh` when absent.
    #[serde(default, skip_serializing_if = "Topology::is_full_mesh")]
    pub topology: Topology,
    /// Sorted by node id; external peers among them, by name.
    pub members: Vec<MeshMember>,
}

pub const MESH_FORMAT: u32 = 1;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MeshMember {
    pub node: String,
    /// Base64 x25519 public key (from the node's `wireguard public-key`).
    pub public_key: String,
    /// `host:port` the other members reach this one at, if it is reachable.
    pub endpoint: Option<String>,
    /// The member's tunnel address with the mesh's prefix length, e.g.
    /// `10.40.0.3/24`: set on its interface.
    pub address: String,
    /// What the other members route to this one, e.g. `10.40.0.3/32`.
    pub allowed_ips: Vec<String>,
    /// Subnets it serves: routed to it by the others, beside `allowed_ips`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<String>,
    /// A hub of a hub-and-spoke mesh.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hub: bool,
    /// A peer outside the fleet (`peer` in the mesh file): `node` is its
    /// name; no agent runs there.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub external: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_printable_paths_under_the_bundle_roots_are_ok() {
        for good in [
            "manifest.json",
            "sbom.cdx.json",
            "files/sentinel.kdl",
            "files/pages/503.html",
            "files/a-b_c.d~e+f@g",
        ] {
            assert!(bundle_path_ok(good), "{good}");
        }
        let long = format!("files/{}", "x".repeat(MAX_PATH_LEN - FILES_DIR.len() + 1));
        for bad in [
            "",
            "files/",
            "files",
            "other.json",
            "Manifest.json",
            "etc/passwd",
            "/files/x",
            "files//x",
            "files/./x",
            "files/../x",
            "files/x/",
            "files/a b",
            "files/tab\t",
            "files/nl\n",
            "files/del\u{7f}",
            "files/back\\slash",
            "files/caf\u{e9}",
            "files/cafe\u{301}",
            long.as_str(),
        ] {
            assert!(!bundle_path_ok(bad), "{bad:?}");
        }
        assert!(bundle_path_ok(&long[..long.len() - 1]));
    }

    #[test]
    fn case_twins_and_files_used_as_directories_clash() {
        assert_eq!(find_clash(["files/a", "files/b", "manifest.json"]), None);
        assert_eq!(
            find_clash(["files/a", "files/A"]),
            Some(PathClash::Case {
                first: "files/A".into(),
                second: "files/a".into()
            })
        );
        assert_eq!(
            find_clash(["files/x", "files/x/y"]),
            Some(PathClash::FileAsDirectory {
                file: "files/x".into(),
                inside: "files/x/y".into()
            })
        );
        assert_eq!(
            find_clash(["files/X/y", "files/x"]),
            Some(PathClash::FileAsDirectory {
                file: "files/x".into(),
                inside: "files/X/y".into()
            })
        );
        assert_eq!(find_clash(["files/x.d", "files/x/y"]), None);
    }
}
