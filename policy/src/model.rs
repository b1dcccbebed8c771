//! The whole fleet repo as one typed value, and the loader that builds it.

use std::collections::BTreeMap;

use gitfleet_schemas::{
    Decoded, Environment, EnvironmentsFile, FleetFile, MeshFile, NodeFile, RolloutFile, Span,
};

use gitfleet_schemas::Proxy;

use crate::diagnostics::Diagnostics;
use crate::proxy::ProxyConfig;
use crate::repo::RepoFiles;

pub const FLEET_FILE: &str = "fleet.kdl";
pub const ENVIRONMENTS_FILE: &str = "environments.kdl";

/// A document and the repo path it was read from.
#[derive(Clone, Debug)]
pub struct Located<T> {
    pub path: String,
    pub doc: T,
}

/// A proxy config directory: `configs/<name>/`.
#[derive(Clone, Debug)]
pub struct ConfigDir {
    pub name: String,
    /// Every file of the directory, by path relative to it.
    pub files: BTreeMap<String, Vec<u8>>,
    /// Each proxy the config is validated and bundled for: the proxies the
    /// nodes of its rollouts run, or, while none do, the proxy of each
    /// entry file it has.
    pub variants: BTreeMap<Proxy, Variant>,
}

/// The config of a directory for one proxy.
#[derive(Clone, Debug)]
pub struct Variant {
    /// The entry file it is read from: the proxy's own (`zentinel.kdl`), or
    /// the other proxy's while the directory has only that.
    pub file: &'static str,
    /// The parsed config, when the proxy's crate accepts it.
    pub config: Option<ProxyConfig>,
}

impl ConfigDir {
    /// Whether every proxy the config targets accepts it: only then is it
    /// bundled.
    pub fn valid(&self) -> bool {
        !self.variants.is_empty() && self.variants.values().all(|v| v.config.is_some())
    }

    /// A parsed form of the config, for what reads its listeners and routes
    /// (lint rules, plan previews): Sentinel's first, while it has one.
    pub fn parsed(&self) -> Option<(&'static str, &ProxyConfig)> {
        self.variants
            .values()
            .find_map(|v| Some((v.file, v.config.as_ref()?)))
    }

    /// The text of entry file `file`, if it is UTF-8.
    pub fn text(&self, file: &str) -> Option<&str> {
        std::str::from_utf8(self.files.get(file)?).ok()
    }

    pub fn total_bytes(&self) -> usize {
        self.files.values().map(Vec::len).sum()
    }
}

/// Everything the fleet repo declares. Parts that failed to read are absent;
/// the diagnostics say why.
#[derive(Clone, Debug, Default)]
pub struct FleetModel {
    pub fleet: Option<Located<FleetFile>>,
    pub environments: Vec<Environment>,
    /// Whether `environments.kdl` could be read. When it is missing or not
    /// KDL, that is reported once, and references to environments are not
    /// checked against the empty list.
    pub environments_read: bool,
    /// In path order.
    pub nodes: Vec<Located<NodeFile>>,
    pub configs: BTreeMap<String, ConfigDir>,
    pub meshes: BTreeMap<String, Located<MeshFile>>,
    /// Each rollout as in effect: with its template's parts under its own.
    pub rollouts: BTreeMap<String, Located<RolloutFile>>,
    /// The rollouts that take a template, as their files say (their own
    /// parts are checked where they are written).
    pub written: BTreeMap<String, RolloutFile>,
}

impl FleetModel {
    pub fn environment(&self, name: &str) -> Option<&Environment> {
        self.environments.iter().find(|e| e.name.value == name)
    }
}

/// Read every document of the repo into the model, reporting what cannot
/// be read; config validation (`configs`), the cross-document checks and
/// lint rules run on top (`check`).
pub(crate) fn load(files: &RepoFiles, diags: &mut Diagnostics<'_>) -> FleetModel {
    let mut model = FleetModel::default();

    match document(files, FLEET_FILE, diags, FleetFile::decode) {
        Some(doc) => {
            model.fleet = Some(Located {
                path: FLEET_FILE.to_owned(),
                doc,
            });
        }
        None if files.get(FLEET_FILE).is_none() => {
            missing(diags, FLEET_FILE, "the fleet's name, store and trust roots")
        }
        None => {}
    }
    match document(files, ENVIRONMENTS_FILE, diags, EnvironmentsFile::decode) {
        Some(doc) => {
            model.environments = doc.environments;
            model.environments_read = true;
        }
        None if files.get(ENVIRONMENTS_FILE).is_none() => {
            missing(diags, ENVIRONMENTS_FILE, "the ordered environments")
        }
        None => {}
    }

    for (path, _) in files.iter() {
        match classify(path) {
            Kind::Node => {
                if let Some(doc) = document(files, path, diags, NodeFile::decode) {
                    model.nodes.push(Located {
                        path: path.to_owned(),
                        doc,
                    });
                }
            }
            Kind::Mesh(name) => {
                if let Some(doc) = document(files, path, diags, MeshFile::decode) {
                    model.meshes.insert(
                        name.to_owned(),
                        Located {
                            path: path.to_owned(),
                            doc,
                        },
                    );
                }
            }
            Kind::Rollout(name) => {
                if let Some(doc) = document(files, path, diags, RolloutFile::decode) {
                    model.rollouts.insert(
                        name.to_owned(),
                        Located {
                            path: path.to_owned(),
                            doc,
                        },
                    );
                }
            }
            Kind::ConfigFile { config, relative } => {
                let dir = model
                    .configs
                    .entry(config.to_owned())
                    .or_insert_with(|| ConfigDir {
                        name: config.to_owned(),
                        files: BTreeMap::new(),
                        variants: BTreeMap::new(),
                    });
                dir.files.insert(
                    relative.to_owned(),
                    files.get(path).unwrap_or_default().to_vec(),
                );
            }
            Kind::Unexpected(help) => diags.warning(
                path,
                Span::default(),
                "unexpected-file",
                format!("`{path}` is not part of any fleet format and is ignored"),
                Some(help.to_owned()),
            ),
            Kind::Other => {}
        }
    }
    apply_templates(&mut model);
    model
}

/// Put each rollout's template (of fleet.kdl) under it; one naming no
/// template there is left as written (a check reports it).
fn apply_templates(model: &mut FleetModel) {
    let Some(fleet) = &model.fleet else {
        return;
    };
    for (name, located) in &mut model.rollouts {
        let Some(wanted) = &located.doc.template else {
            continue;
        };
        let Some(template) = fleet
            .doc
            .templates
            .iter()
            .find(|t| t.name.value == wanted.value)
        else {
            continue;
        };
        let effective = located.doc.with_template(template);
        model
            .written
            .insert(name.clone(), std::mem::replace(&mut located.doc, effective));
    }
}

/// Decode one document, recording its problems.
fn document<T>(
    files: &RepoFiles,
    path: &str,
    diags: &mut Diagnostics<'_>,
    decode: fn(&str) -> Decoded<T>,
) -> Option<T> {
    let bytes = files.get(path)?;
    let Ok(text) = std::str::from_utf8(bytes) else {
        not_utf8(diags, path);
        return None;
    };
    let decoded = decode(text);
    diags.decode_errors(path, decoded.errors);
    decoded.value
}

pub(crate) fn not_utf8(diags: &mut Diagnostics<'_>, path: &str) {
    diags.error(
        path,
        Span::default(),
        "not-utf8",
        format!("`{path}` is not valid UTF-8"),
        Some("fleet files are UTF-8 text".to_owned()),
    );
}

fn missing(diags: &mut Diagnostics<'_>, path: &str, what: &str) {
    diags.error(
        path,
        Span::default(),
        "missing-file",
        format!("the fleet repo has no `{path}`"),
        Some(format!("add `{path}` with {what}")),
    );
}

enum Kind<'a> {
    Node,
    Mesh(&'a str),
    Rollout(&'a str),
    ConfigFile { config: &'a str, relative: &'a str },
    Unexpected(&'static str),
    Other,
}

fn classify(path: &str) -> Kind<'_> {
    if let Some(rest) = path.strip_prefix("nodes/") {
        return match rest.strip_suffix(".kdl") {
            Some(stem) if !stem.contains('/') => Kind::Node,
            _ => Kind::Unexpected("node files are `nodes/<id>.kdl`"),
        };
    }
    if let Some(rest) = path.strip_prefix("meshes/") {
        return match rest.strip_suffix(".kdl") {
            Some(stem) if !stem.contains('/') => Kind::Mesh(stem),
            _ => Kind::Unexpected("mesh files are `meshes/<name>.kdl`"),
        };
    }
    if let Some(rest) = path.strip_prefix("rollouts/") {
        return match rest.strip_suffix(".kdl") {
            Some(stem) if !stem.contains('/') => Kind::Rollout(stem),
            _ => Kind::Unexpected("rollout files are `rollouts/<name>.kdl`"),
        };
    }
    if let Some(rest) = path.strip_prefix("configs/") {
        return match rest.split_once('/') {
            Some((config, relative)) if !config.is_empty() && !relative.is_empty() => {
                Kind::ConfigFile { config, relative }
            }
            _ => {
                Kind::Unexpected("config files live in a directory: `configs/<name>/sentinel.kdl`")
            }
        };
    }
    if path.ends_with(".kdl") && path != FLEET_FILE && path != ENVIRONMENTS_FILE {
        return Kind::Unexpected(
            "fleet documents are fleet.kdl, environments.kdl, nodes/, configs/, meshes/ and rollouts/",
        );
    }
    Kind::Other
}
