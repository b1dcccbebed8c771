//! The CycloneDX 1.5 SBOM inside every bundle (`sbom.cdx.json`): the subset
//! gitfleet writes, for config and mesh bundles alike. Fields are in the
//! order of their JSON names, so the bytes are the same as they have always
//! been: a bundle's digest must not change with gitfleet's version.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A CycloneDX 1.5 document.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Sbom {
    /// Always `CycloneDX`.
    #[serde(rename = "bomFormat")]
    pub bom_format: String,
    pub components: Vec<Component>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dependencies: Option<Vec<Dependency>>,
    pub metadata: Metadata,
    pub services: Vec<Service>,
    /// Always `1.5`.
    #[serde(rename = "specVersion")]
    pub spec_version: String,
    pub version: u32,
}

impl Sbom {
    /// A CycloneDX 1.5 document about `component`, made by gitfleet.
    pub fn new(component: Component) -> Sbom {
        Sbom {
            bom_format: "CycloneDX".to_owned(),
            components: Vec::new(),
            dependencies: None,
            metadata: Metadata {
                component,
                tools: Tools {
                    components: vec![Component::new("application", None, "gitfleet")],
                },
            },
            services: Vec::new(),
            spec_version: "1.5".to_owned(),
            version: 1,
        }
    }

    /// Pretty JSON and a newline, as bundles carry it.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).unwrap_or_default();
        out.push(b'\n');
        out
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Metadata {
    /// What the SBOM describes: the config or the mesh.
    pub component: Component,
    pub tools: Tools,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Tools {
    pub components: Vec<Component>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Component {
    #[serde(rename = "bom-ref", default, skip_serializing_if = "Option::is_none")]
    pub bom_ref: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hashes: Vec<Hash>,
    pub name: String,
    /// `application`, `data` or `file`.
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

impl Component {
    pub fn new(kind: &str, bom_ref: Option<String>, name: impl Into<String>) -> Component {
        Component {
            bom_ref,
            description: None,
            hashes: Vec::new(),
            name: name.into(),
            kind: kind.to_owned(),
            version: None,
        }
    }

    /// A file of the bundle and its SHA-256.
    pub fn file(bom_ref: String, name: String, sha256_hex: String) -> Component {
        Component {
            hashes: vec![Hash {
                alg: "SHA-256".to_owned(),
                content: sha256_hex,
            }],
            ..Component::new("file", Some(bom_ref), name)
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Hash {
    pub alg: String,
    pub content: String,
}

/// A listener, route, upstream, agent or WireGuard peer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Service {
    #[serde(rename = "bom-ref")]
    pub bom_ref: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoints: Option<Vec<String>>,
    pub name: String,
    pub properties: Vec<Property>,
    /// Whether traffic crosses a trust boundary here (listeners, peers).
    #[serde(
        rename = "x-trust-boundary",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub trust_boundary: Option<bool>,
}

/// `gitfleet:<name>` = value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Property {
    pub name: String,
    pub value: String,
}

impl Property {
    /// The property `gitfleet:<name>`.
    pub fn gitfleet(name: &str, value: impl Into<String>) -> Property {
        Property {
            name: format!("gitfleet:{name}"),
            value: value.into(),
        }
    }
}

/// `ref` depends on each of `dependsOn`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Dependency {
    #[serde(rename = "dependsOn")]
    pub depends_on: Vec<String>,
    #[serde(rename = "ref")]
    pub reference: String,
}
