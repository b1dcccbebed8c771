//! `nodes/<id>.kdl`: one node of the fleet.
//!
//! ```kdl
//! version 1
//! id "edge-fra-1"
//! environment "prod"
//! labels region="fra" role="edge"
//! node-key "base64 ed25519 public key"
//! wireguard public-key="base64 x25519 public key" endpoint="198.51.100.7:51820" {
//!     routes "10.20.0.0/16"   // optional: subnets this node serves to its meshes
//! }
//! proxy "zentinel" version="0.6.45"
//! hold "disk replacement, INC-88"     // optional: rollouts skip it
//! // or held on one bundle of its config rollout:
//! // hold "waits for the kernel fix" bundle="sha256:<64 hex digits>"
//! ```

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::decode::{self, Decoded, Decoder};
use crate::span::Spanned;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeFile {
    pub id: Spanned<String>,
    pub environment: Spanned<String>,
    pub labels: BTreeMap<String, Spanned<String>>,
    /// The node's ed25519 public key (base64); its status reports are signed
    /// with the matching private key.
    pub node_key: Spanned<String>,
    pub wireguard: Option<NodeWireguard>,
    /// The proxy the node runs, when its file says (see [`crate::proxy`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<Spanned<crate::proxy::Proxy>>,
    /// `hold "reason"`: rollouts skip the node, it keeps what it runs, and
    /// it does not count against `max-unavailable`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold: Option<Spanned<String>>,
    /// `hold "reason" bundle="sha256:..."`: held, and running this bundle
    /// of its config rollout (a pin).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold_bundle: Option<Spanned<String>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeWireguard {
    /// Base64 WireGuard public key; the private key never leaves the node.
    pub public_key: Spanned<String>,
    /// `host:port` other peers reach this node at, if it is reachable.
    pub endpoint: Option<Spanned<String>>,
    /// Subnets this node serves (`routes "10.20.0.0/16"`): every mesh it
    /// is a member of routes them to it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Spanned<String>>,
}

const TOP: &[&str] = &[
    "id",
    "environment",
    "labels",
    "node-key",
    "wireguard",
    "proxy",
    "hold",
];

impl NodeFile {
    pub fn decode(text: &str) -> Decoded<NodeFile> {
        let mut d = Decoder::default();
        let Some(doc) = d.parse(text) else {
            return d.finish(None);
        };
        let (mut id, mut environment, mut labels, mut node_key, mut wireguard) =
            (None, None, None, None, None);
        let (mut proxy, mut hold, mut hold_bundle) = (None, None, None);
        for node in d.versioned(&doc, "node file") {
            match decode::name(node) {
                "id" => {
                    let v = d.string(node);
                    d.once(&mut id, node, v);
                }
                "environment" => {
                    let v = d.string(node);
                    d.once(&mut environment, node, v);
                }
                "labels" => {
                    let v = d.string_map(node);
                    d.once(&mut labels, node, Some(v));
                }
                "node-key" => {
                    let v = d.string(node);
                    d.once(&mut node_key, node, v);
                }
                "wireguard" => {
                    let v = decode_wireguard(&mut d, node);
                    d.once(&mut wireguard, node, v);
                }
                "proxy" => {
                    d.no_children(node);
                    let v = crate::proxy::decode_proxy(&mut d, node);
                    d.once(&mut proxy, node, v);
                }
                "hold" => {
                    d.allow_props(node, &["bundle"]);
                    d.max_args(node, 1);
                    d.no_children(node);
                    let v = d.arg(node, 0, decode::as_string, "why, for the pages");
                    if hold.is_none() {
                        hold_bundle = d.prop_string(node, "bundle");
                    }
                    d.once(&mut hold, node, v);
                }
                _ => d.unknown_node(node, "node file", TOP),
            }
        }
        let at = decode::document_start(&doc);
        let id = d.required(id, at, "id", "node file", "id \"edge-fra-1\"");
        let environment = d.required(
            environment,
            at,
            "environment",
            "node file",
            "environment \"prod\"",
        );
        let node_key = d.required(
            node_key,
            at,
            "node-key",
            "node file",
            "node-key \"<base64 ed25519 public key>\"",
        );
        let value = match (id, environment, node_key) {
            (Some(id), Some(environment), Some(node_key)) => Some(NodeFile {
                id,
                environment,
                labels: labels.unwrap_or_default(),
                node_key,
                wireguard,
                proxy,
                hold,
                hold_bundle,
            }),
            _ => None,
        };
        d.finish(value)
    }
}

fn decode_wireguard(d: &mut Decoder, node: &kdl::KdlNode) -> Option<NodeWireguard> {
    d.allow_props(node, &["public-key", "endpoint"]);
    d.max_args(node, 0);
    let mut routes = Vec::new();
    for c in decode::children(node) {
        match decode::name(c) {
            "routes" => routes.extend(d.strings(c)),
            _ => d.unknown_node(c, "wireguard", &["routes"]),
        }
    }
    let public_key = d.required_prop(
        node,
        "public-key",
        decode::as_string,
        "a base64 WireGuard public key",
    );
    let endpoint = d.prop_string(node, "endpoint");
    Some(NodeWireguard {
        public_key: public_key?,
        endpoint,
        routes,
    })
}
