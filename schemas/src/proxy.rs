//! Which proxy a node runs: Sentinel 0.4, or Zentinel 0.6 (Sentinel's name
//! since 2026). Fleets run both while they migrate node by node, and each
//! config is validated for, and bundled for, exactly the proxy that runs it.
//!
//! A node file says `proxy "zentinel" version="0.6.45"`; fleet.kdl may say
//! it for a role (`proxy "zentinel" version="0.6.45" { selector role="edge" }`);
//! a node neither names runs [`Proxy::legacy`], the proxy every fleet ran
//! before the rename.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::Selector;
use crate::decode::{self, children, Decoder};
use crate::span::Spanned;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ProxyKind {
    Sentinel,
    Zentinel,
}

impl ProxyKind {
    pub const ALL: [ProxyKind; 2] = [ProxyKind::Sentinel, ProxyKind::Zentinel];

    pub fn name(self) -> &'static str {
        match self {
            ProxyKind::Sentinel => "sentinel",
            ProxyKind::Zentinel => "zentinel",
        }
    }

    /// The file of a config directory, and of a bundle's `files/`, that the
    /// proxy is started with.
    pub fn entry(self) -> &'static str {
        match self {
            ProxyKind::Sentinel => "sentinel.kdl",
            ProxyKind::Zentinel => "zentinel.kdl",
        }
    }

    /// The proxy whose config file `file` (a name relative to a config
    /// directory) is, if it is one.
    pub fn of_entry(file: &str) -> Option<ProxyKind> {
        ProxyKind::ALL.into_iter().find(|k| k.entry() == file)
    }

    /// The crate the proxy validates its configs with.
    pub fn config_crate(self) -> &'static str {
        match self {
            ProxyKind::Sentinel => "sentinel-config",
            ProxyKind::Zentinel => "zentinel-config",
        }
    }
}

impl FromStr for ProxyKind {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        ProxyKind::ALL.into_iter().find(|k| k.name() == s).ok_or(())
    }
}

/// A proxy and its exact version: `zentinel 0.6.45`. It serializes as that
/// text.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Proxy {
    pub kind: ProxyKind,
    pub version: String,
}

impl Proxy {
    pub fn new(kind: ProxyKind, version: &str) -> Self {
        Proxy {
            kind,
            version: version.to_owned(),
        }
    }

    /// Sentinel 0.4.14: what a node runs when nothing names its proxy.
    pub fn legacy() -> Self {
        Proxy::new(ProxyKind::Sentinel, "0.4.14")
    }

    /// The validator a bundle for this proxy records:
    /// `zentinel-config 0.6.45`.
    pub fn validator(&self) -> String {
        format!("{} {}", self.kind.config_crate(), self.version)
    }

    /// The proxy a bundle manifest's validator names.
    pub fn of_validator(validator: &str) -> Option<Proxy> {
        let (krate, version) = validator.split_once(' ')?;
        let kind = ProxyKind::ALL
            .into_iter()
            .find(|k| k.config_crate() == krate)?;
        Some(Proxy::new(kind, version))
    }
}

impl fmt::Display for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind.name(), self.version)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a proxy and version: write `sentinel 0.4.14` or `zentinel 0.6.45`")]
pub struct BadProxy(String);

impl FromStr for Proxy {
    type Err = BadProxy;

    fn from_str(s: &str) -> Result<Self, BadProxy> {
        let bad = || BadProxy(s.to_owned());
        let (kind, version) = s.split_once(' ').ok_or_else(bad)?;
        let kind = kind.parse().map_err(|()| bad())?;
        if !version_ok(version) {
            return Err(bad());
        }
        Ok(Proxy::new(kind, version))
    }
}

/// `MAJOR.MINOR.PATCH`, digits only: versions are pinned exactly.
fn version_ok(v: &str) -> bool {
    let parts: Vec<&str> = v.split('.').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 6 && p.bytes().all(|b| b.is_ascii_digit()))
}

impl Serialize for Proxy {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Proxy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Proxy {
    fn schema_name() -> Cow<'static, str> {
        "Proxy".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A proxy and its exact version, e.g. `zentinel 0.6.45`.",
            "type": "string",
            "pattern": "^(sentinel|zentinel) [0-9]+\\.[0-9]+\\.[0-9]+$"
        })
    }
}

/// `proxy "zentinel" version="0.6.45" { selector role="edge" }` in
/// fleet.kdl: the nodes the selector picks run this proxy, unless their
/// node file names another. The first rule that matches wins.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProxyRule {
    pub proxy: Spanned<Proxy>,
    pub selector: Selector,
}

/// `proxy "NAME" version="X.Y.Z"`: the proxy, spanned at the node.
pub(crate) fn decode_proxy(d: &mut Decoder, node: &kdl::KdlNode) -> Option<Spanned<Proxy>> {
    d.allow_props(node, &["version"]);
    d.max_args(node, 1);
    let kind = d.arg(node, 0, decode::as_string, "the proxy's name")?;
    let version = d.required_prop(node, "version", decode::as_string, "its exact version")?;
    let kind = match kind.value.parse::<ProxyKind>() {
        Ok(k) => k,
        Err(()) => {
            d.error(
                kind.span,
                "invalid-value",
                format!("unknown proxy `{}`", kind.value),
                Some("use \"sentinel\" or \"zentinel\"".to_owned()),
            );
            return None;
        }
    };
    if !version_ok(&version.value) {
        d.error(
            version.span,
            "invalid-value",
            format!("`{}` is not an exact version", version.value),
            Some("pin the version the node runs, e.g. version=\"0.6.45\"".to_owned()),
        );
        return None;
    }
    Some(Spanned::new(
        Proxy::new(kind, &version.value),
        decode::node_span(node),
    ))
}

/// fleet.kdl's `proxy` rule: the proxy and a `selector` child.
pub(crate) fn decode_rule(d: &mut Decoder, node: &kdl::KdlNode) -> Option<ProxyRule> {
    let mut selector = None;
    for c in children(node) {
        match decode::name(c) {
            "selector" => {
                let v = Selector::decode(d, c);
                d.once(&mut selector, c, Some(v));
            }
            _ => d.unknown_node(c, "`proxy`", &["selector"]),
        }
    }
    let proxy = decode_proxy(d, node)?;
    Some(ProxyRule {
        proxy,
        selector: selector.unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proxy_round_trips_through_its_text() {
        let p: Proxy = "zentinel 0.6.45".parse().unwrap();
        assert_eq!(p, Proxy::new(ProxyKind::Zentinel, "0.6.45"));
        assert_eq!(p.to_string(), "zentinel 0.6.45");
        assert_eq!(
            serde_json::to_string(&p).unwrap(),
            "\"zentinel 0.6.45\"".to_owned()
        );
        let back: Proxy = serde_json::from_str("\"sentinel 0.4.14\"").unwrap();
        assert_eq!(back, Proxy::legacy());
    }

    #[test]
    fn a_proxy_needs_a_known_name_and_an_exact_version() {
        for bad in [
            "nginx 1.2.3",
            "zentinel 0.6",
            "zentinel",
            "zentinel 0.6.x",
            "",
        ] {
            assert!(bad.parse::<Proxy>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_validator_names_the_proxy() {
        let p = Proxy::new(ProxyKind::Zentinel, "0.6.45");
        assert_eq!(p.validator(), "zentinel-config 0.6.45");
        assert_eq!(Proxy::of_validator(&p.validator()), Some(p));
        assert_eq!(
            Proxy::of_validator("sentinel-config 0.4.14"),
            Some(Proxy::legacy())
        );
        assert_eq!(Proxy::of_validator("gitfleet-mesh 1"), None);
    }

    #[test]
    fn each_proxy_has_its_own_entry_file() {
        assert_eq!(
            ProxyKind::of_entry("zentinel.kdl"),
            Some(ProxyKind::Zentinel)
        );
        assert_eq!(
            ProxyKind::of_entry("sentinel.kdl"),
            Some(ProxyKind::Sentinel)
        );
        assert_eq!(ProxyKind::of_entry("routes.kdl"), None);
    }
}
