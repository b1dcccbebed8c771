//! `meshes/<name>.kdl`: a WireGuard mesh among the nodes a selector picks.
//!
//! ```kdl
//! version 1
//! cidr "10.40.0.0/24"
//! members role="edge"
//! listen-port 51820
//! persistent-keepalive "25s"
//! allowed-ips "10.50.0.0/16"
//! ```

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::Selector;
use crate::decode::{self, Decoded, Decoder};
use crate::span::Spanned;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MeshFile {
    /// The address range members' tunnel addresses are allocated from.
    pub cidr: Spanned<String>,
    pub members: Selector,
    pub listen_port: Option<Spanned<u64>>,
    pub persistent_keepalive_seconds: Option<Spanned<u64>>,
    /// Extra ranges routed into the mesh, beyond the members' own addresses.
    pub allowed_ips: Vec<Spanned<String>>,
}

const TOP: &[&str] = &[
    "cidr",
    "members",
    "listen-port",
    "persistent-keepalive",
    "allowed-ips",
];

impl MeshFile {
    pub fn decode(text: &str) -> Decoded<MeshFile> {
        let mut d = Decoder::default();
        let Some(doc) = d.parse(text) else {
            return d.finish(None);
        };
        let (mut cidr, mut members, mut listen_port, mut keepalive) = (None, None, None, None);
        let mut allowed_ips = Vec::new();
        for node in d.versioned(&doc, "mesh file") {
            match decode::name(node) {
                "cidr" => {
                    let v = d.string(node);
                    d.once(&mut cidr, node, v);
                }
                "members" => {
                    let v = Selector::decode(&mut d, node);
                    d.once(&mut members, node, Some(v));
                }
                "listen-port" => {
                    let v = d.u64(node);
                    d.once(&mut listen_port, node, v);
                }
                "persistent-keepalive" => {
                    let v = d.duration(node);
                    d.once(&mut keepalive, node, v);
                }
                "allowed-ips" => allowed_ips.extend(d.strings(node)),
                _ => d.unknown_node(node, "mesh file", TOP),
            }
        }
        let at = decode::document_start(&doc);
        let cidr = d.required(cidr, at, "cidr", "mesh file", "cidr \"10.40.0.0/24\"");
        let members = d.required(members, at, "members", "mesh file", "members role=\"edge\"");
        let value = match (cidr, members) {
            (Some(cidr), Some(members)) => Some(MeshFile {
                cidr,
                members,
                listen_port,
                persistent_keepalive_seconds: keepalive,
                allowed_ips,
            }),
            _ => None,
        };
        d.finish(value)
    }
}
