//! WireGuard meshes: tunnel address allocation and the mesh bundle.
//!
//! Addresses are stable across membership changes: a member keeps the
//! address it was given while it stays a member, a new member takes the
//! lowest free host address of the mesh's CIDR, and a member that leaves
//! frees its address. The allocation is committed to the state branch by
//! the reconciler (`meshes/<name>.json`, a
//! [`gitfleet_schemas::state::MeshAllocation`]) and read back from its tip,
//! so it is an input here like everything else: no IO, no clock, and the
//! same inputs give the same allocation and the same bundle bytes.
//!
//! A mesh bundle holds one file, [`MESH_FILE`]: the whole mesh, the same
//! bytes for every member. Members without a `wireguard` public key are left
//! out of the mesh (and get no address); `gitfleet check` reports them as
//! `mesh-member-without-wireguard`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use gitfleet_schemas::bundle::{BundleKind, MeshBundle, MeshMember, FILES_DIR, MESH_FILE};
use gitfleet_schemas::sbom::{Component, Property, Sbom, Service};
use gitfleet_schemas::state::{MeshAllocation, MESH_ALLOCATION_FORMAT};
use gitfleet_schemas::verify::sha256_hex;
use gitfleet_schemas::{Diagnostic, MeshFile, NodeFile, Severity};

use crate::bundle::{self, BuildError, Built, Input};
use crate::model::FleetModel;
use crate::select::select;

/// What a mesh bundle's manifest names as its validator: the format of the
/// mesh file that gitfleet wrote and checked (never gitfleet's version, which
/// would rename every bundle on upgrade).
pub const VALIDATOR: &str = "gitfleet mesh format 1";

/// The longest interface name Linux accepts (`IFNAMSIZ` - 1).
pub const MAX_INTERFACE_LEN: usize = 15;

/// The diagnostic of a member without a WireGuard key: such a member is
/// left out of the mesh rather than holding the mesh back.
const MEMBER_WITHOUT_WIREGUARD: &str = "mesh-member-without-wireguard";

/// Tunnel address (without prefix length) by node id.
pub type Allocation = BTreeMap<String, IpAddr>;

#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    #[error("mesh `{mesh}`: cidr `{cidr}` is not a CIDR range")]
    Cidr { mesh: String, cidr: String },
    #[error(
        "mesh `{mesh}` is full: {cidr} holds {usable} tunnel addresses, {members} members need one"
    )]
    Full {
        mesh: String,
        cidr: IpNet,
        usable: u128,
        members: usize,
    },
    #[error("mesh `{mesh}`: {what} {value} is out of range (at most {max})")]
    OutOfRange {
        mesh: String,
        what: &'static str,
        value: u64,
        max: u16,
    },
    #[error("mesh `{mesh}`: node `{node}` is listed twice")]
    DuplicateMember { mesh: String, node: String },
    #[error("mesh `{mesh}`: member `{node}` has no tunnel address in the allocation")]
    Unallocated { mesh: String, node: String },
    #[error("mesh `{mesh}`: address {address} of member `{node}` is not a host address of {cidr}")]
    Outside {
        mesh: String,
        node: String,
        address: IpAddr,
        cidr: IpNet,
    },
    #[error("building the bundle of mesh `{mesh}`")]
    Build {
        mesh: String,
        #[source]
        source: BuildError,
    },
}

// ---------------------------------------------------------------------------
// addresses

/// The mesh's CIDR, host bits cleared (`gitfleet check` warns about them).
pub fn parse_cidr(mesh: &str, cidr: &str) -> Result<IpNet, MeshError> {
    cidr.trim()
        .parse::<IpNet>()
        .map(|net| net.trunc())
        .map_err(|_| MeshError::Cidr {
            mesh: mesh.to_owned(),
            cidr: cidr.to_owned(),
        })
}

/// The first and last host offsets of `net`. IPv4 skips the network and
/// broadcast addresses, IPv6 the subnet-router anycast address (offset 0),
/// as `gitfleet check` counts them; /31, /32 and /128 use every address.
fn host_range(net: &IpNet) -> (u128, u128) {
    let host_bits = u32::from(net.max_prefix_len() - net.prefix_len());
    let last = if host_bits == 0 {
        0
    } else {
        u128::MAX >> (128 - host_bits)
    };
    match net {
        IpNet::V4(_) if host_bits >= 2 => (1, last - 1),
        IpNet::V6(_) if host_bits >= 1 => (1, last),
        _ => (0, last),
    }
}

/// The host offset of `ip` in `net`, when it is one of its host addresses.
fn host_offset(net: &IpNet, ip: IpAddr) -> Option<u128> {
    let offset = match (net, ip) {
        (IpNet::V4(n), IpAddr::V4(a)) if n.contains(&a) => {
            u128::from(u32::from(a) - u32::from(n.network()))
        }
        (IpNet::V6(n), IpAddr::V6(a)) if n.contains(&a) => u128::from(a) - u128::from(n.network()),
        _ => return None,
    };
    let (first, last) = host_range(net);
    (first..=last).contains(&offset).then_some(offset)
}

/// The address at host offset `offset` of `net` (an offset from
/// [`host_range`], so it fits).
fn at_offset(net: &IpNet, offset: u128) -> IpAddr {
    match net {
        IpNet::V4(n) => {
            let o = u32::try_from(offset).unwrap_or(u32::MAX);
            IpAddr::V4(Ipv4Addr::from(u32::from(n.network()).saturating_add(o)))
        }
        IpNet::V6(n) => IpAddr::V6(Ipv6Addr::from(
            u128::from(n.network()).saturating_add(offset),
        )),
    }
}

/// Tunnel addresses for `members` of mesh `mesh`, keeping every address of
/// `previous` that still belongs to a member and is a host address of
/// `cidr`. New members take the lowest free host address, in node id
/// order; members that left free theirs. The order of `members` does not
/// matter and duplicates count once.
pub fn allocate(
    mesh: &str,
    cidr: IpNet,
    members: &[String],
    previous: &Allocation,
) -> Result<Allocation, MeshError> {
    let net = cidr.trunc();
    let (first, last) = host_range(&net);
    let members: BTreeSet<&str> = members.iter().map(String::as_str).collect();
    let usable = last - first + 1;
    if (members.len() as u128) > usable {
        return Err(MeshError::Full {
            mesh: mesh.to_owned(),
            cidr: net,
            usable,
            members: members.len(),
        });
    }
    let mut used: BTreeSet<u128> = BTreeSet::new();
    let mut out = Allocation::new();
    let mut new = Vec::new();
    for &node in &members {
        // An address outside the range (the CIDR changed) or already taken
        // (a hand-edited state file) is given again.
        match previous.get(node).and_then(|&ip| host_offset(&net, ip)) {
            Some(offset) if used.insert(offset) => {
                out.insert(node.to_owned(), at_offset(&net, offset));
            }
            _ => new.push(node),
        }
    }
    let mut candidate = first;
    for node in new {
        while used.contains(&candidate) {
            candidate += 1;
        }
        // `members.len() <= usable` leaves a free address for everyone.
        used.insert(candidate);
        out.insert(node.to_owned(), at_offset(&net, candidate));
    }
    Ok(out)
}

/// The allocation recorded on the state branch.
pub fn from_state(state: &MeshAllocation) -> Allocation {
    state.addresses.clone()
}

/// The state-branch record of `allocation`.
pub fn to_state(mesh: &str, cidr: IpNet, allocation: &Allocation) -> MeshAllocation {
    MeshAllocation {
        format: MESH_ALLOCATION_FORMAT,
        mesh: mesh.to_owned(),
        cidr: cidr.trunc().to_string(),
        addresses: allocation.clone(),
    }
}

/// What changed between two allocations of `mesh`, one line each, for a
/// commit message: `mesh backbone: edge-fra-1 gets 10.40.0.1`.
pub fn changes(mesh: &str, previous: &Allocation, next: &Allocation) -> Vec<String> {
    let mut out = Vec::new();
    for (node, ip) in next {
        match previous.get(node) {
            None => out.push(format!("mesh {mesh}: {node} gets {ip}")),
            Some(old) if old != ip => out.push(format!("mesh {mesh}: {node} moves {old} -> {ip}")),
            Some(_) => {}
        }
    }
    for (node, ip) in previous {
        if !next.contains_key(node) {
            out.push(format!("mesh {mesh}: {node} left, {ip} freed"));
        }
    }
    out
}

// ---------------------------------------------------------------------------
// members

/// The nodes `mesh` selects, in repo path order.
pub fn members<'a>(model: &'a FleetModel, mesh: &MeshFile) -> Vec<&'a NodeFile> {
    select(model, &mesh.members)
        .into_iter()
        .map(|i| &model.nodes[i].doc)
        .collect()
}

/// The ids of `members` that can join the mesh: those with a WireGuard
/// public key.
pub fn eligible(members: &[&NodeFile]) -> Vec<String> {
    members
        .iter()
        .filter(|n| n.wireguard.is_some())
        .map(|n| n.id.value.clone())
        .collect()
}

/// Whether a change of one node file, from `old` to `new` bytes (`None`:
/// absent), can change mesh `mesh`'s bundle: either side is a member, or
/// cannot be read (so might be one). Lets the reconciler find the last
/// commit that changed a mesh without rebuilding it at every commit.
pub fn touches(mesh: &MeshFile, old: Option<&[u8]>, new: Option<&[u8]>) -> bool {
    let member = |bytes: Option<&[u8]>| match bytes {
        None => false,
        Some(b) => match std::str::from_utf8(b)
            .ok()
            .and_then(|t| NodeFile::decode(t).value)
        {
            Some(node) => mesh.members.matches_labels(&node.labels),
            None => true,
        },
    };
    member(old) || member(new)
}

/// The first error that makes the fleet repo unsafe to build mesh `name`
/// from, if any: an error in the mesh file, or in a node file that is a
/// member now, was one (`previous`), or could not be read at all (so its
/// membership is unknown). Building anyway could drop a member and free its
/// address because of a typo. A member without a WireGuard key is not one
/// of these: it is left out of the mesh.
pub fn blocking<'a>(
    model: &FleetModel,
    diagnostics: &'a [Diagnostic],
    name: &str,
    previous: &Allocation,
) -> Option<&'a Diagnostic> {
    let mesh = model.meshes.get(name)?;
    let members: BTreeSet<&str> = select(model, &mesh.doc.members)
        .into_iter()
        .map(|i| model.nodes[i].path.as_str())
        .collect();
    diagnostics.iter().find(|d| {
        if d.severity != Severity::Error {
            return false;
        }
        if d.file == mesh.path {
            return true;
        }
        if !d.file.starts_with("nodes/") || d.code == MEMBER_WITHOUT_WIREGUARD {
            return false;
        }
        match model.nodes.iter().find(|n| n.path == d.file) {
            None => true,
            Some(n) => members.contains(d.file.as_str()) || previous.contains_key(&n.doc.id.value),
        }
    })
}

// ---------------------------------------------------------------------------
// the bundle

/// The interface name of mesh `mesh`: `wg-<mesh>`, cut to
/// [`MAX_INTERFACE_LEN`] bytes.
pub fn interface_name(mesh: &str) -> String {
    let mut name = format!("wg-{mesh}");
    let mut end = name.len().min(MAX_INTERFACE_LEN);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name.truncate(end);
    name
}

fn small(mesh: &str, what: &'static str, value: Option<u64>) -> Result<Option<u16>, MeshError> {
    value
        .map(|v| {
            u16::try_from(v).map_err(|_| MeshError::OutOfRange {
                mesh: mesh.to_owned(),
                what,
                value: v,
                max: u16::MAX,
            })
        })
        .transpose()
}

/// `files/mesh.json` of mesh `name`: every member of `members` with a
/// WireGuard key, sorted by node id, at its address in `allocation`.
///
/// The mesh file's `allowed-ips` (ranges routed into the mesh beyond the
/// members' own addresses) are not in it: a range has to be routed to one
/// peer, and nothing in the fleet repo says which node serves it yet. Each
/// member's `allowed_ips` is its own tunnel address only.
pub fn mesh_file(
    name: &str,
    mesh: &MeshFile,
    members: &[&NodeFile],
    allocation: &Allocation,
) -> Result<MeshBundle, MeshError> {
    let net = parse_cidr(name, &mesh.cidr.value)?;
    let host_prefix = net.max_prefix_len();
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for node in members {
        let id = &node.id.value;
        if !seen.insert(id.as_str()) {
            return Err(MeshError::DuplicateMember {
                mesh: name.to_owned(),
                node: id.clone(),
            });
        }
        let Some(wg) = &node.wireguard else {
            continue;
        };
        let &address = allocation.get(id).ok_or_else(|| MeshError::Unallocated {
            mesh: name.to_owned(),
            node: id.clone(),
        })?;
        if host_offset(&net, address).is_none() {
            return Err(MeshError::Outside {
                mesh: name.to_owned(),
                node: id.clone(),
                address,
                cidr: net,
            });
        }
        out.push(MeshMember {
            node: id.clone(),
            public_key: wg.public_key.value.clone(),
            endpoint: wg.endpoint.as_ref().map(|e| e.value.clone()),
            address: format!("{address}/{}", net.prefix_len()),
            allowed_ips: vec![format!("{address}/{host_prefix}")],
        });
    }
    out.sort_by(|a, b| a.node.cmp(&b.node));
    Ok(MeshBundle {
        format: gitfleet_schemas::bundle::MESH_FORMAT,
        mesh: name.to_owned(),
        interface: interface_name(name),
        listen_port: small(
            name,
            "listen-port",
            mesh.listen_port.as_ref().map(|p| p.value),
        )?,
        persistent_keepalive_seconds: small(
            name,
            "persistent-keepalive",
            mesh.persistent_keepalive_seconds.as_ref().map(|k| k.value),
        )?,
        members: out,
    })
}

/// The bundle of mesh `name` at `source_commit`: [`MESH_FILE`] as pretty
/// JSON (see [`mesh_file`]) and a CycloneDX SBOM of its peers.
pub fn mesh_bundle(
    name: &str,
    mesh: &MeshFile,
    members: &[&NodeFile],
    allocation: &Allocation,
    source_commit: &str,
) -> Result<Built, MeshError> {
    let doc = mesh_file(name, mesh, members, allocation)?;
    let mut json = serde_json::to_vec_pretty(&doc).unwrap_or_default();
    json.push(b'\n');
    let relative = MESH_FILE.strip_prefix(FILES_DIR).unwrap_or(MESH_FILE);
    let sbom = sbom(&doc, source_commit, &json);
    let files = BTreeMap::from([(relative.to_owned(), json)]);
    bundle::build(Input {
        kind: BundleKind::WireguardMesh,
        name,
        source_commit,
        validator: VALIDATOR,
        files: &files,
        sbom,
    })
    .map_err(|source| MeshError::Build {
        mesh: name.to_owned(),
        source,
    })
}

/// A mesh's new allocation and bundle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeshBuild {
    pub allocation: Allocation,
    pub state: MeshAllocation,
    pub built: Built,
    /// What changed in the allocation, for the commit message.
    pub changes: Vec<String>,
}

/// Allocate addresses for mesh `name` of `model` on top of `previous` and
/// build its bundle at `source_commit`.
pub fn build(
    model: &FleetModel,
    name: &str,
    mesh: &MeshFile,
    previous: &Allocation,
    source_commit: &str,
) -> Result<MeshBuild, MeshError> {
    let net = parse_cidr(name, &mesh.cidr.value)?;
    let members = members(model, mesh);
    let allocation = allocate(name, net, &eligible(&members), previous)?;
    let built = mesh_bundle(name, mesh, &members, &allocation, source_commit)?;
    Ok(MeshBuild {
        changes: changes(name, previous, &allocation),
        state: to_state(name, net, &allocation),
        allocation,
        built,
    })
}

/// The CycloneDX 1.5 SBOM of a mesh bundle: the mesh file as a `file`
/// component, every peer as a service with its endpoint, key and
/// addresses. Like the config SBOMs: no timestamp, serial number or
/// gitfleet version.
pub fn sbom(doc: &MeshBundle, source_commit: &str, mesh_json: &[u8]) -> Vec<u8> {
    let services: Vec<Service> = doc
        .members
        .iter()
        .map(|m| {
            let mut properties = vec![
                Property::gitfleet("kind", "wireguard-peer"),
                Property::gitfleet("public-key", m.public_key.clone()),
                Property::gitfleet("address", m.address.clone()),
            ];
            properties.extend(
                m.allowed_ips
                    .iter()
                    .map(|ip| Property::gitfleet("allowed-ip", ip.clone())),
            );
            Service {
                bom_ref: format!("peer:{}", m.node),
                name: format!("wireguard peer {}", m.node),
                endpoints: m.endpoint.as_ref().map(|e| vec![format!("udp://{e}")]),
                trust_boundary: Some(true),
                properties,
            }
        })
        .collect();
    let mut bom = Sbom::new(Component {
        description: Some("WireGuard mesh from the fleet repo".to_owned()),
        version: Some(source_commit.to_owned()),
        ..Component::new("data", Some(format!("mesh:{}", doc.mesh)), doc.mesh.clone())
    });
    bom.components = vec![Component::file(
        format!(
            "file:{}",
            MESH_FILE.strip_prefix(FILES_DIR).unwrap_or(MESH_FILE)
        ),
        MESH_FILE.to_owned(),
        sha256_hex(mesh_json),
    )];
    bom.services = services;
    bom.to_bytes()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use proptest::prelude::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn new_members_take_the_lowest_free_host_addresses_in_id_order() {
        let a = allocate(
            "backbone",
            net("10.40.0.0/24"),
            &ids(&["b", "a", "c"]),
            &Allocation::new(),
        )
        .unwrap();
        assert_eq!(a["a"], ip("10.40.0.1"));
        assert_eq!(a["b"], ip("10.40.0.2"));
        assert_eq!(a["c"], ip("10.40.0.3"));
    }

    #[test]
    fn members_keep_their_addresses_and_freed_ones_are_reused() {
        let cidr = net("10.40.0.0/24");
        let first = allocate("m", cidr, &ids(&["a", "b", "c"]), &Allocation::new()).unwrap();
        // b leaves: a and c stay where they are.
        let second = allocate("m", cidr, &ids(&["a", "c"]), &first).unwrap();
        assert_eq!(second["a"], first["a"]);
        assert_eq!(second["c"], first["c"]);
        assert!(!second.contains_key("b"));
        // A newcomer takes b's old address, the lowest free one.
        let third = allocate("m", cidr, &ids(&["a", "c", "d"]), &second).unwrap();
        assert_eq!(third["d"], ip("10.40.0.2"));
        assert_eq!(
            changes("m", &second, &third),
            vec!["mesh m: d gets 10.40.0.2".to_owned()]
        );
        assert_eq!(
            changes("m", &first, &second),
            vec!["mesh m: b left, 10.40.0.2 freed".to_owned()]
        );
    }

    #[test]
    fn network_and_broadcast_are_skipped_and_a_full_mesh_is_an_error() {
        let cidr = net("10.40.0.0/30");
        let a = allocate("tiny", cidr, &ids(&["a", "b"]), &Allocation::new()).unwrap();
        assert_eq!(a["a"], ip("10.40.0.1"));
        assert_eq!(a["b"], ip("10.40.0.2"));
        let err = allocate("tiny", cidr, &ids(&["a", "b", "c"]), &a).unwrap_err();
        assert_eq!(
            err.to_string(),
            "mesh `tiny` is full: 10.40.0.0/30 holds 2 tunnel addresses, 3 members need one"
        );
        // /31 and /32 use every address.
        let p2p = allocate(
            "p2p",
            net("10.0.0.0/31"),
            &ids(&["a", "b"]),
            &Allocation::new(),
        );
        assert_eq!(p2p.unwrap()["a"], ip("10.0.0.0"));
        // IPv6 skips only the subnet-router anycast address.
        let v6 = allocate(
            "v6",
            net("fd00::/127"),
            &ids(&["a", "b"]),
            &Allocation::new(),
        );
        assert!(v6.is_err());
        let v6 = allocate("v6", net("fd00::/126"), &ids(&["a"]), &Allocation::new()).unwrap();
        assert_eq!(v6["a"], ip("fd00::1"));
    }

    #[test]
    fn addresses_outside_the_range_or_taken_twice_are_given_again() {
        let cidr = net("10.40.0.0/24");
        let previous = Allocation::from([
            ("a".to_owned(), ip("10.99.0.7")),
            ("b".to_owned(), ip("10.40.0.9")),
            ("c".to_owned(), ip("10.40.0.9")),
            ("d".to_owned(), ip("10.40.0.0")),
        ]);
        let a = allocate("m", cidr, &ids(&["a", "b", "c", "d"]), &previous).unwrap();
        assert_eq!(a["b"], ip("10.40.0.9"));
        assert_eq!(a["a"], ip("10.40.0.1"));
        assert_eq!(a["c"], ip("10.40.0.2"));
        assert_eq!(a["d"], ip("10.40.0.3"));
    }

    #[test]
    fn interface_names_fit_linux() {
        assert_eq!(interface_name("backbone"), "wg-backbone");
        assert_eq!(interface_name("a-very-long-mesh-name"), "wg-a-very-long-");
        assert_eq!(interface_name("a-very-long-mesh-name").len(), 15);
    }

    const MESH: &str = r#"version 1
cidr "10.40.0.0/24"
members role="edge"
listen-port 51820
persistent-keepalive "25s"
allowed-ips "10.0.0.0/24"
"#;

    fn node(id: &str, role: &str, wireguard: Option<(&str, Option<&str>)>) -> String {
        // Every node has its own node key, or `check` reports it.
        let key = match id {
            "edge-a" => "kuh0dwHEsBnYK092vgCoSr5R703wQVk0x5/ihE0g89A=",
            "edge-b" => "tlkyeYhA4W9PzLQN6ofSYyIr2dz+EY+W2DpMLqUzakA=",
            "edge-nokey" => "pPKeDkl6GPJl9lcftI9brxurFUgAhfGEpx/pDbSY9CI=",
            _ => "R51VXwYXX7eEf5MfumAZdNR1KznnrX4+WmsnnPDqIx8=",
        };
        let mut s = format!(
            "version 1\nid \"{id}\"\nenvironment \"prod\"\nlabels role=\"{role}\"\nnode-key \"{key}\"\n"
        );
        if let Some((key, endpoint)) = wireguard {
            s.push_str(&format!("wireguard public-key=\"{key}\""));
            if let Some(e) = endpoint {
                s.push_str(&format!(" endpoint=\"{e}\""));
            }
            s.push('\n');
        }
        s
    }

    fn model() -> (FleetModel, Vec<Diagnostic>) {
        let mut files = crate::repo::RepoFiles::new();
        files.insert("meshes/backbone.kdl", MESH);
        files.insert(
            "nodes/edge-b.kdl",
            node(
                "edge-b",
                "edge",
                Some((
                    "SNkgnF0XGvM7PGUHMPsVTCQozshsOwBbqBsjJYQ9Z04=",
                    Some("198.51.100.31:51820"),
                )),
            ),
        );
        files.insert(
            "nodes/edge-a.kdl",
            node(
                "edge-a",
                "edge",
                Some(("SLTdULopfRem/Ku4+l4Ze30s66nEV3dPpaZfunVmux4=", None)),
            ),
        );
        files.insert("nodes/edge-nokey.kdl", node("edge-nokey", "edge", None));
        files.insert(
            "nodes/api-1.kdl",
            node(
                "api-1",
                "api",
                Some(("HUEFj87k8L7OSHttz/kWiAL9hOTz6wOuQtbUMkHVjGM=", None)),
            ),
        );
        let checked = crate::check::check(&files);
        (checked.model, checked.diagnostics)
    }

    const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

    #[test]
    fn the_mesh_file_lists_members_with_keys_sorted_at_their_addresses() {
        let (model, _) = model();
        let mesh = &model.meshes["backbone"].doc;
        let b = build(&model, "backbone", mesh, &Allocation::new(), COMMIT).unwrap();
        assert_eq!(
            b.changes,
            vec![
                "mesh backbone: edge-a gets 10.40.0.1".to_owned(),
                "mesh backbone: edge-b gets 10.40.0.2".to_owned(),
            ]
        );
        let bundle = gitfleet_schemas::verify::verify_bundle(
            &b.built.reference,
            &b.built.bytes,
            gitfleet_schemas::verify::Limits::default(),
        )
        .unwrap();
        assert_eq!(bundle.manifest.kind, BundleKind::WireguardMesh);
        assert_eq!(bundle.manifest.name, "backbone");
        assert_eq!(bundle.manifest.source_commit, COMMIT);
        let doc: MeshBundle = serde_json::from_slice(&bundle.files[MESH_FILE]).unwrap();
        assert_eq!(doc.interface, "wg-backbone");
        assert_eq!(doc.listen_port, Some(51820));
        assert_eq!(doc.persistent_keepalive_seconds, Some(25));
        let nodes: Vec<&str> = doc.members.iter().map(|m| m.node.as_str()).collect();
        assert_eq!(nodes, ["edge-a", "edge-b"]);
        assert_eq!(doc.members[0].address, "10.40.0.1/24");
        assert_eq!(doc.members[0].allowed_ips, ["10.40.0.1/32"]);
        assert_eq!(doc.members[0].endpoint, None);
        assert_eq!(
            doc.members[1].endpoint.as_deref(),
            Some("198.51.100.31:51820")
        );
        // The mesh-level allowed-ips are not assigned to anyone.
        assert!(!String::from_utf8_lossy(&bundle.files[MESH_FILE]).contains("10.0.0.0"));
        assert_eq!(b.state.cidr, "10.40.0.0/24");
        assert_eq!(b.state.addresses, b.allocation);
    }

    #[test]
    fn same_inputs_give_the_same_bundle_and_a_new_allocation_a_new_one() {
        let (model, _) = model();
        let mesh = &model.meshes["backbone"].doc;
        let first = build(&model, "backbone", mesh, &Allocation::new(), COMMIT).unwrap();
        let again = build(&model, "backbone", mesh, &first.allocation, COMMIT).unwrap();
        assert_eq!(again.built, first.built);
        assert!(again.changes.is_empty());
        let mut moved = first.allocation.clone();
        moved.insert("edge-a".into(), ip("10.40.0.200"));
        let other = build(&model, "backbone", mesh, &moved, COMMIT).unwrap();
        assert_ne!(other.built.reference, first.built.reference);
        assert_eq!(other.allocation["edge-a"], ip("10.40.0.200"));
    }

    #[test]
    fn an_unallocated_or_outside_member_is_refused() {
        let (model, _) = model();
        let mesh = &model.meshes["backbone"].doc;
        let members = members(&model, mesh);
        let err = mesh_bundle("backbone", mesh, &members, &Allocation::new(), COMMIT).unwrap_err();
        assert_eq!(
            err.to_string(),
            "mesh `backbone`: member `edge-a` has no tunnel address in the allocation"
        );
        let outside = Allocation::from([
            ("edge-a".to_owned(), ip("10.40.1.1")),
            ("edge-b".to_owned(), ip("10.40.0.2")),
        ]);
        let err = mesh_bundle("backbone", mesh, &members, &outside, COMMIT).unwrap_err();
        assert!(matches!(err, MeshError::Outside { .. }), "{err}");
    }

    #[test]
    fn errors_in_the_mesh_or_its_members_block_it_but_a_missing_key_does_not() {
        let (model, diagnostics) = model();
        let codes: Vec<&str> = diagnostics.iter().map(|d| d.code.as_str()).collect();
        assert!(codes.contains(&MEMBER_WITHOUT_WIREGUARD), "{codes:?}");
        assert_eq!(
            blocking(&model, &diagnostics, "backbone", &Allocation::new()),
            None
        );

        let mut bad = diagnostics.clone();
        let mut d = diagnostics[0].clone();
        d.severity = Severity::Error;
        d.code = "invalid-endpoint".into();
        d.file = "nodes/api-1.kdl".into();
        bad.push(d.clone());
        // Not a member, never was.
        assert_eq!(blocking(&model, &bad, "backbone", &Allocation::new()), None);
        let was = Allocation::from([("api-1".to_owned(), ip("10.40.0.9"))]);
        assert!(blocking(&model, &bad, "backbone", &was).is_some());
        for file in [
            "nodes/edge-a.kdl",
            "nodes/unreadable.kdl",
            "meshes/backbone.kdl",
        ] {
            d.file = file.into();
            let with = [diagnostics.clone(), vec![d.clone()]].concat();
            assert!(
                blocking(&model, &with, "backbone", &Allocation::new()).is_some(),
                "{file}"
            );
        }
    }

    #[test]
    fn node_changes_touch_a_mesh_when_either_side_is_or_may_be_a_member() {
        let (model, _) = model();
        let mesh = &model.meshes["backbone"].doc;
        let edge = node("x", "edge", None);
        let api = node("x", "api", None);
        assert!(touches(mesh, None, Some(edge.as_bytes())));
        assert!(touches(mesh, Some(edge.as_bytes()), None));
        assert!(touches(mesh, Some(edge.as_bytes()), Some(api.as_bytes())));
        assert!(!touches(mesh, Some(api.as_bytes()), None));
        assert!(!touches(mesh, None, Some(api.as_bytes())));
        assert!(touches(mesh, None, Some(b"labels {")));
    }

    fn cidrs() -> impl Strategy<Value = IpNet> {
        prop_oneof![
            (any::<u32>(), 22u8..=30).prop_map(|(a, p)| IpNet::V4(
                ipnet::Ipv4Net::new(Ipv4Addr::from(a), p).unwrap().trunc()
            )),
            (any::<u128>(), 118u8..=127).prop_map(|(a, p)| IpNet::V6(
                ipnet::Ipv6Net::new(Ipv6Addr::from(a), p).unwrap().trunc()
            )),
        ]
    }

    fn node_sets() -> impl Strategy<Value = Vec<String>> {
        proptest::collection::vec((0u8..60).prop_map(|i| format!("node-{i}")), 0..40)
    }

    fn check(cidr: IpNet, members: &[String], a: &Allocation) {
        let set: BTreeSet<&String> = members.iter().collect();
        assert_eq!(a.keys().collect::<BTreeSet<_>>(), set);
        let distinct: BTreeSet<&IpAddr> = a.values().collect();
        assert_eq!(distinct.len(), a.len(), "shared address in {a:?}");
        for ip in a.values() {
            assert!(
                host_offset(&cidr, *ip).is_some(),
                "{ip} is not a host of {cidr}"
            );
        }
    }

    proptest! {
        #[test]
        fn allocation_is_unique_inside_stable_and_deterministic(
            cidr in cidrs(),
            before in node_sets(),
            after in node_sets(),
        ) {
            let (first, last) = host_range(&cidr);
            let usable = last - first + 1;
            let fits = |m: &[String]| (m.iter().collect::<BTreeSet<_>>().len() as u128) <= usable;
            let Ok(a) = allocate("m", cidr, &before, &Allocation::new()) else {
                prop_assert!(!fits(&before));
                return Ok(());
            };
            check(cidr, &before, &a);
            match allocate("m", cidr, &after, &a) {
                Err(MeshError::Full { .. }) => prop_assert!(!fits(&after)),
                Err(e) => prop_assert!(false, "{e}"),
                Ok(b) => {
                    check(cidr, &after, &b);
                    for (node, ip) in &b {
                        if let Some(old) = a.get(node) {
                            prop_assert_eq!(old, ip, "{} moved", node);
                        }
                    }
                    // Same inputs, in any order: same output.
                    let mut reversed = after.clone();
                    reversed.reverse();
                    prop_assert_eq!(&allocate("m", cidr, &reversed, &a).unwrap(), &b);
                    prop_assert_eq!(&allocate("m", cidr, &after, &a).unwrap(), &b);
                }
            }
        }
    }
}
