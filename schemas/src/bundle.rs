//! The bundle format: a deterministic `tar.zst` holding a config's files,
//! `manifest.json` and a CycloneDX SBOM.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

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
