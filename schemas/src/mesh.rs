//! `meshes/<name>.kdl`: a WireGuard mesh among the nodes a selector picks,
//! and the peers outside the fleet it takes in.
//!
//! ```kdl
//! version 1
//! cidr "10.40.0.0/24"
//! members role="edge"
//! listen-port 51820
//! persistent-keepalive "25s"
//! allowed-ips "10.50.0.0/16"
//! address-hold "1h"   // a departed member's address waits at least this long
//! // optional: spokes peer with the hubs only, and the hubs route between them
//! topology "hub-and-spoke"
//! hubs role="gateway"
//! // a peer that is not a fleet node: a laptop, a phone, a partner's gateway
//! peer "anna-laptop" public-key="base64 x25519 public key" address="10.40.0.200"
//! peer "partner-gw" public-key="..." address="10.40.0.201" endpoint="203.0.113.9:51820" {
//!     routes "172.16.0.0/16"
//! }
//! ```

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::Selector;
use crate::decode::{self, Decoded, Decoder};
use crate::span::Spanned;

/// Who peers with whom.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum Topology {
    /// Every member peers with every other member (and every external peer).
    #[default]
    FullMesh,
    /// The hubs peer with everyone; every other member and external peer
    /// (a spoke) peers with the hubs only and reaches the other spokes
    /// through the first hub.
    HubAndSpoke,
}

impl Topology {
    pub fn is_full_mesh(&self) -> bool {
        *self == Topology::FullMesh
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Topology::FullMesh => "full-mesh",
            Topology::HubAndSpoke => "hub-and-spoke",
        }
    }
}

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
    /// `full-mesh` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topology: Option<Spanned<Topology>>,
    /// The members that are hubs of a hub-and-spoke mesh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hubs: Option<Selector>,
    /// Peers that are not fleet nodes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<ExternalPeer>,
    /// How long a departed member's address is held at least, beyond the
    /// time every member has moved to a bundle without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address_hold_seconds: Option<Spanned<u64>>,
}

/// [`MeshFile::address_hold_seconds`] when the file says nothing.
pub const DEFAULT_ADDRESS_HOLD_SECONDS: u64 = 3600;

impl MeshFile {
    pub fn topology(&self) -> Topology {
        self.topology.as_ref().map(|t| t.value).unwrap_or_default()
    }

    pub fn address_hold_seconds(&self) -> u64 {
        self.address_hold_seconds
            .as_ref()
            .map_or(DEFAULT_ADDRESS_HOLD_SECONDS, |h| h.value)
    }
}

/// `peer "NAME" public-key="…" address="…" [endpoint="host:port"]`: a
/// WireGuard peer that is not a fleet node. Its private key never enters
/// git; `gitfleet mesh client` prints its configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExternalPeer {
    pub name: Spanned<String>,
    pub public_key: Spanned<String>,
    /// Its tunnel address, a host address of the mesh's CIDR (without a
    /// prefix length); never given to a member.
    pub address: Spanned<String>,
    pub endpoint: Option<Spanned<String>>,
    /// Subnets it serves, routed to it like a member's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Spanned<String>>,
}

const TOP: &[&str] = &[
    "cidr",
    "members",
    "listen-port",
    "persistent-keepalive",
    "allowed-ips",
    "topology",
    "hubs",
    "peer",
    "address-hold",
];

impl MeshFile {
    pub fn decode(text: &str) -> Decoded<MeshFile> {
        let mut d = Decoder::default();
        let Some(doc) = d.parse(text) else {
            return d.finish(None);
        };
        let (mut cidr, mut members, mut listen_port, mut keepalive) = (None, None, None, None);
        let (mut topology, mut hubs, mut address_hold) = (None, None, None);
        let mut allowed_ips = Vec::new();
        let mut peers = Vec::new();
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
                "topology" => {
                    let v = decode_topology(&mut d, node);
                    d.once(&mut topology, node, v);
                }
                "hubs" => {
                    let v = Selector::decode(&mut d, node);
                    d.once(&mut hubs, node, Some(v));
                }
                "peer" => peers.extend(decode_peer(&mut d, node)),
                "address-hold" => {
                    let v = d.duration(node);
                    d.once(&mut address_hold, node, v);
                }
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
                topology,
                hubs,
                peers,
                address_hold_seconds: address_hold,
            }),
            _ => None,
        };
        d.finish(value)
    }
}

fn decode_topology(d: &mut Decoder, node: &kdl::KdlNode) -> Option<Spanned<Topology>> {
    let s = d.string(node)?;
    let topology = match s.value.as_str() {
        "full-mesh" => Topology::FullMesh,
        "hub-and-spoke" => Topology::HubAndSpoke,
        other => {
            d.error(
                s.span,
                "invalid-value",
                format!("unknown mesh topology `{other}`"),
                Some("write `topology \"full-mesh\"` or `topology \"hub-and-spoke\"`".to_owned()),
            );
            return None;
        }
    };
    Some(Spanned::new(topology, s.span))
}

fn decode_peer(d: &mut Decoder, node: &kdl::KdlNode) -> Option<ExternalPeer> {
    d.allow_props(node, &["public-key", "address", "endpoint"]);
    d.max_args(node, 1);
    let name = d.arg(node, 0, decode::as_string, "the peer's name");
    let public_key = d.required_prop(
        node,
        "public-key",
        decode::as_string,
        "a base64 WireGuard public key",
    );
    let address = d.required_prop(
        node,
        "address",
        decode::as_string,
        "a tunnel address of the mesh's CIDR",
    );
    let endpoint = d.prop_string(node, "endpoint");
    let mut routes = Vec::new();
    for c in decode::children(node) {
        match decode::name(c) {
            "routes" => routes.extend(d.strings(c)),
            _ => d.unknown_node(c, "peer", &["routes"]),
        }
    }
    Some(ExternalPeer {
        name: name?,
        public_key: public_key?,
        address: address?,
        endpoint,
        routes,
    })
}
