//! WireGuard meshes: tunnel address allocation and the mesh bundle.
//!
//! Addresses are stable across membership changes: a member keeps the
//! address it was given while it stays a member, a new member takes the
//! lowest free host address of the mesh's CIDR (never an external peer's),
//! and a member that leaves holds its address until no member runs a
//! bundle naming it and the mesh's `address-hold` has passed
//! ([`held_after`]); then it is free. The allocation is committed to the state branch by
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
use std::str::FromStr as _;

use ipnet::IpNet;

use chrono::{DateTime, Utc};
use gitfleet_schemas::bundle::{BundleKind, MeshBundle, MeshMember, FILES_DIR, MESH_FILE};
use gitfleet_schemas::sbom::{Component, Property, Sbom, Service};
use gitfleet_schemas::state::{HeldAddress, MeshAllocation, MESH_ALLOCATION_FORMAT};
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
    #[error("mesh `{mesh}`: peer `{peer}` has address `{address}`, not an IP address")]
    Address {
        mesh: String,
        peer: String,
        address: String,
    },
    #[error("mesh `{mesh}`: route `{route}` of `{node}` is not a CIDR range")]
    Route {
        mesh: String,
        node: String,
        route: String,
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

/// Whether `ip` is a host address of `net` (as tunnel addresses are
/// given: not the network or broadcast address of an IPv4 range, not the
/// subnet-router anycast address of an IPv6 one).
pub fn is_host_address(net: &IpNet, ip: IpAddr) -> bool {
    host_offset(&net.trunc(), ip).is_some()
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
    allocate_reserving(mesh, cidr, members, previous, &BTreeSet::new())
}

/// [`allocate`], never giving a member an address of `reserved` (external
/// peers' addresses): a member holding one moves to a free address.
pub fn allocate_reserving(
    mesh: &str,
    cidr: IpNet,
    members: &[String],
    previous: &Allocation,
    reserved: &BTreeSet<IpAddr>,
) -> Result<Allocation, MeshError> {
    let net = cidr.trunc();
    let (first, last) = host_range(&net);
    let members: BTreeSet<&str> = members.iter().map(String::as_str).collect();
    let mut used: BTreeSet<u128> = reserved
        .iter()
        .filter_map(|&ip| host_offset(&net, ip))
        .collect();
    let usable = last - first + 1 - used.len() as u128;
    if (members.len() as u128) > usable {
        return Err(MeshError::Full {
            mesh: mesh.to_owned(),
            cidr: net,
            usable,
            members: members.len(),
        });
    }
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

/// The tunnel addresses the mesh file gives its external peers (those that
/// parse), which no member may take.
pub fn external_addresses(mesh: &MeshFile) -> BTreeSet<IpAddr> {
    mesh.peers
        .iter()
        .filter_map(|p| p.address.value.parse().ok())
        .collect()
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
        held: Held::new(),
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
            out.push(format!("mesh {mesh}: {node} left, {ip} held"));
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

/// Whether `endpoint` is one agents can use: `ip:port`, `[ipv6]:port` or
/// `host:port`, with a port from 1 to 65535. One rule for `gitfleet check`
/// and the agents, so nothing check lets through is refused on a node.
pub fn endpoint_ok(endpoint: &str) -> bool {
    if std::net::SocketAddr::from_str(endpoint).is_ok() {
        return true;
    }
    match endpoint.rsplit_once(':') {
        Some((host, port)) => {
            !host.is_empty()
                && !host.contains([':', '[', ']', '/', ' '])
                && port.parse::<u16>().is_ok_and(|p| p != 0)
        }
        None => false,
    }
}

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
/// WireGuard key at its address in `allocation`, and every external peer
/// of the mesh file at its own, sorted by name. A member's `routes` are its
/// node file's, a hub is a member the mesh's `hubs` pick.
///
/// The mesh file's `allowed-ips` (ranges routed into the mesh beyond the
/// members' own addresses) are not in it: a range has to be routed to one
/// peer, which `routes` in that peer's node file says.
pub fn mesh_file(
    name: &str,
    mesh: &MeshFile,
    members: &[&NodeFile],
    allocation: &Allocation,
) -> Result<MeshBundle, MeshError> {
    let net = parse_cidr(name, &mesh.cidr.value)?;
    let topology = mesh.topology();
    let hubs = mesh.hubs.as_ref().filter(|_| !topology.is_full_mesh());
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
        out.push(member(
            name,
            &net,
            id,
            address,
            &wg.public_key.value,
            wg.endpoint.as_ref(),
            &wg.routes,
        )?);
        if let Some(last) = out.last_mut() {
            last.hub = hubs.is_some_and(|h| h.matches_labels(&node.labels));
        }
    }
    for peer in &mesh.peers {
        let who = &peer.name.value;
        if !seen.insert(who.as_str()) {
            return Err(MeshError::DuplicateMember {
                mesh: name.to_owned(),
                node: who.clone(),
            });
        }
        let address = peer
            .address
            .value
            .parse::<IpAddr>()
            .map_err(|_| MeshError::Address {
                mesh: name.to_owned(),
                peer: who.clone(),
                address: peer.address.value.clone(),
            })?;
        let mut m = member(
            name,
            &net,
            who,
            address,
            &peer.public_key.value,
            peer.endpoint.as_ref(),
            &peer.routes,
        )?;
        m.external = true;
        out.push(m);
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
        topology,
        members: out,
    })
}

/// One entry of the mesh file: `id` at `address` of `net`, its routes
/// normalised (host bits cleared).
fn member(
    mesh: &str,
    net: &IpNet,
    id: &str,
    address: IpAddr,
    public_key: &str,
    endpoint: Option<&gitfleet_schemas::Spanned<String>>,
    routes: &[gitfleet_schemas::Spanned<String>],
) -> Result<MeshMember, MeshError> {
    if host_offset(net, address).is_none() {
        return Err(MeshError::Outside {
            mesh: mesh.to_owned(),
            node: id.to_owned(),
            address,
            cidr: *net,
        });
    }
    let routes = routes
        .iter()
        .map(|r| {
            r.value
                .parse::<IpNet>()
                .map(|n| n.trunc().to_string())
                .map_err(|_| MeshError::Route {
                    mesh: mesh.to_owned(),
                    node: id.to_owned(),
                    route: r.value.clone(),
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(MeshMember {
        node: id.to_owned(),
        public_key: public_key.to_owned(),
        endpoint: endpoint.map(|e| e.value.clone()),
        address: format!("{address}/{}", net.prefix_len()),
        allowed_ips: vec![format!("{address}/{}", net.max_prefix_len())],
        routes,
        hub: false,
        external: false,
    })
}

/// One peer of a member's interface: the mesh member it is, and what the
/// member routes to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerOf<'a> {
    pub member: &'a MeshMember,
    pub allowed_ips: Vec<String>,
}

/// The peers `node` of `mesh` configures, in the mesh's order (empty when
/// it is not in the mesh).
///
/// In a full mesh, every other member, routed its own address and routes.
/// In a hub-and-spoke mesh a hub peers with everyone the same way; a spoke
/// (any other member, or an external peer) peers with the hubs only, and
/// routes the rest of the mesh through the first hub: the mesh's range and
/// the other spokes' routes.
pub fn peers_of<'a>(mesh: &'a MeshBundle, node: &str) -> Vec<PeerOf<'a>> {
    let Some(me) = mesh.members.iter().find(|m| m.node == node) else {
        return Vec::new();
    };
    let own = |m: &MeshMember| -> Vec<String> {
        m.allowed_ips.iter().chain(&m.routes).cloned().collect()
    };
    let others = mesh.members.iter().filter(|m| m.node != node);
    if mesh.topology.is_full_mesh() || me.hub {
        return others
            .map(|m| PeerOf {
                member: m,
                allowed_ips: own(m),
            })
            .collect();
    }
    let first_hub = mesh.members.iter().find(|m| m.hub).map(|m| m.node.as_str());
    let range = me
        .address
        .parse::<IpNet>()
        .map(|n| n.trunc().to_string())
        .ok();
    others
        .filter(|m| m.hub)
        .map(|m| {
            let mut allowed_ips = own(m);
            if Some(m.node.as_str()) == first_hub {
                allowed_ips.extend(range.clone());
                for spoke in mesh.members.iter().filter(|s| !s.hub && s.node != node) {
                    allowed_ips.extend(spoke.routes.iter().cloned());
                }
            }
            PeerOf {
                member: m,
                allowed_ips,
            }
        })
        .collect()
}

/// The highest host address of `cidr` that neither `allocation` nor
/// `reserved` holds: what `gitfleet mesh client` suggests for a new
/// external peer (members are given the lowest free ones).
pub fn free_address_from_top(
    cidr: IpNet,
    allocation: &Allocation,
    reserved: &BTreeSet<IpAddr>,
) -> Option<IpAddr> {
    let net = cidr.trunc();
    let (first, last) = host_range(&net);
    let used: BTreeSet<u128> = allocation
        .values()
        .chain(reserved)
        .filter_map(|&ip| host_offset(&net, ip))
        .collect();
    let mut offset = last;
    loop {
        if !used.contains(&offset) {
            return Some(at_offset(&net, offset));
        }
        if offset == first {
            return None;
        }
        offset -= 1;
    }
}

/// A wg-quick configuration for `peer` (an external peer of `mesh`) with
/// the private key `private_key` (base64): its address, and every member
/// it peers with ([`peers_of`]) with endpoint, routes and keepalive.
/// `None` when `peer` is not in the mesh.
pub fn wg_quick(mesh: &MeshBundle, peer: &str, private_key: &str) -> Option<String> {
    use std::fmt::Write as _;
    let me = mesh.members.iter().find(|m| m.node == peer)?;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# {peer} in WireGuard mesh `{}` ({}), written by `gitfleet mesh client`",
        mesh.mesh,
        mesh.topology.as_str()
    );
    let _ = writeln!(out, "[Interface]");
    let _ = writeln!(out, "PrivateKey = {private_key}");
    let _ = writeln!(out, "Address = {}", me.address);
    if let Some(port) = me
        .endpoint
        .as_deref()
        .and_then(|e| e.rsplit_once(':'))
        .and_then(|(_, p)| p.parse::<u16>().ok())
    {
        let _ = writeln!(out, "ListenPort = {port}");
    }
    for p in peers_of(mesh, peer) {
        let _ = writeln!(out);
        let _ = writeln!(out, "[Peer]");
        let _ = writeln!(out, "# {}", p.member.node);
        let _ = writeln!(out, "PublicKey = {}", p.member.public_key);
        match &p.member.endpoint {
            Some(e) => {
                let _ = writeln!(out, "Endpoint = {e}");
            }
            None => {
                let _ = writeln!(out, "# no endpoint: it reaches this peer first");
            }
        }
        let _ = writeln!(out, "AllowedIPs = {}", p.allowed_ips.join(", "));
        if let Some(k) = mesh.persistent_keepalive_seconds.filter(|&k| k != 0) {
            let _ = writeln!(out, "PersistentKeepalive = {k}");
        }
    }
    Some(out)
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
    /// What it was allocated on: the recorded allocation, with members
    /// that came back given their held addresses.
    pub previous: Allocation,
    pub allocation: Allocation,
    pub state: MeshAllocation,
    pub built: Built,
    /// What changed in the allocation, for the commit message.
    pub changes: Vec<String>,
}

/// Departed members' held addresses by node id (the state's record).
pub type Held = BTreeMap<String, HeldAddress>;

/// Allocate addresses for mesh `name` of `model` on top of `previous` and
/// build its bundle at `source_commit`. Held addresses go to nobody but
/// their member, who gets its own back when it returns.
pub fn build(
    model: &FleetModel,
    name: &str,
    mesh: &MeshFile,
    previous: &Allocation,
    held: &Held,
    source_commit: &str,
) -> Result<MeshBuild, MeshError> {
    let net = parse_cidr(name, &mesh.cidr.value)?;
    let members = members(model, mesh);
    let eligible = eligible(&members);
    let mut reserved = external_addresses(mesh);
    // Members leaving now hold their addresses from this build on.
    reserved.extend(
        previous
            .iter()
            .filter(|(node, _)| !eligible.contains(*node))
            .map(|(_, &ip)| ip),
    );
    let mut previous = previous.clone();
    for (node, h) in held {
        if eligible.contains(node) && !previous.contains_key(node) {
            previous.insert(node.clone(), h.address);
        } else {
            reserved.insert(h.address);
        }
    }
    let allocation = allocate_reserving(name, net, &eligible, &previous, &reserved)?;
    let built = mesh_bundle(name, mesh, &members, &allocation, source_commit)?;
    Ok(MeshBuild {
        changes: changes(name, &previous, &allocation),
        state: to_state(name, net, &allocation),
        previous,
        allocation,
        built,
    })
}

/// How many times the hold time an address is held at most, even while a
/// member still reports a bundle naming it (one that never moves on, or
/// says it does not): the range must not fill up with held addresses.
pub const HOLD_CAP_FACTOR: i32 = 10;

/// The held addresses once `build` is the mesh's bundle: members that
/// left in it are held from `now`, members back in it are not, and the
/// new bundle names none of them. An address is free again, with a line
/// for the commit message saying so, once `hold_for` has passed and no
/// member runs a bundle that names it (`running`: member -> the digest of
/// the mesh bundle its recent report says it runs; the caller leaves out
/// reports older than the hold time; the departed node's own report does
/// not count), and in any case after [`HOLD_CAP_FACTOR`] times `hold_for`.
pub fn held_after(
    name: &str,
    held: &Held,
    build: &MeshBuild,
    running: &BTreeMap<String, String>,
    now: DateTime<Utc>,
    hold_for: chrono::Duration,
) -> (Held, Vec<String>) {
    let mut out: Held = held
        .iter()
        .filter(|(node, _)| !build.allocation.contains_key(*node))
        .map(|(n, h)| (n.clone(), h.clone()))
        .collect();
    for (node, &address) in &build.previous {
        if !build.allocation.contains_key(node) {
            out.entry(node.clone()).or_insert(HeldAddress {
                address,
                since: now,
                clean: BTreeSet::new(),
            });
        }
    }
    let digest = &build.built.reference.digest;
    let mut lines = Vec::new();
    let cap = hold_for
        .checked_mul(HOLD_CAP_FACTOR)
        .unwrap_or(chrono::Duration::MAX);
    out.retain(|node, h| {
        h.clean.insert(digest.clone());
        // Only what a member could still run matters: the record stays small.
        h.clean
            .retain(|d| d == digest || running.values().any(|r| r == d));
        let held_for = now.signed_duration_since(h.since);
        let named = running
            .iter()
            .any(|(n, d)| n != node && !h.clean.contains(d));
        let keep = held_for < hold_for || (named && held_for < cap);
        if !keep {
            lines.push(format!(
                "mesh {name}: {node}'s address {} is free again",
                h.address
            ));
        }
        keep
    });
    (out, lines)
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
    use gitfleet_schemas::mesh::Topology;
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
            vec!["mesh m: b left, 10.40.0.2 held".to_owned()]
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

    /// The backbone mesh of `model` built on `previous`, nothing held.
    fn backbone(model: &FleetModel, previous: &Allocation) -> MeshBuild {
        let mesh = &model.meshes["backbone"].doc;
        build(model, "backbone", mesh, previous, &Held::new(), COMMIT).unwrap()
    }

    #[test]
    fn the_mesh_file_lists_members_with_keys_sorted_at_their_addresses() {
        let (model, _) = model();
        let b = backbone(&model, &Allocation::new());
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
        let first = backbone(&model, &Allocation::new());
        let again = backbone(&model, &first.allocation);
        assert_eq!(again.built, first.built);
        assert!(again.changes.is_empty());
        let mut moved = first.allocation.clone();
        moved.insert("edge-a".into(), ip("10.40.0.200"));
        let other = backbone(&model, &moved);
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

    #[test]
    fn reserved_addresses_go_to_no_member_and_a_member_on_one_moves() {
        let cidr = net("10.40.0.0/29");
        let reserved = BTreeSet::from([ip("10.40.0.1"), ip("10.40.0.3")]);
        let previous = Allocation::from([("a".to_owned(), ip("10.40.0.3"))]);
        let a = allocate_reserving("m", cidr, &ids(&["a", "b"]), &previous, &reserved).unwrap();
        assert_eq!(a["a"], ip("10.40.0.2"));
        assert_eq!(a["b"], ip("10.40.0.4"));
        // Six hosts, two reserved: five members do not fit.
        let err = allocate_reserving("m", cidr, &ids(&["a", "b", "c", "d", "e"]), &a, &reserved)
            .unwrap_err();
        assert!(
            err.to_string().contains("holds 4 tunnel addresses"),
            "{err}"
        );
    }

    fn entry(node: &str, n: u8, hub: bool, routes: &[&str]) -> MeshMember {
        MeshMember {
            node: node.to_owned(),
            public_key: format!("key-{node}"),
            endpoint: None,
            address: format!("10.40.0.{n}/24"),
            allowed_ips: vec![format!("10.40.0.{n}/32")],
            routes: routes.iter().map(|r| (*r).to_owned()).collect(),
            hub,
            external: false,
        }
    }

    fn bundle(topology: Topology, members: Vec<MeshMember>) -> MeshBundle {
        MeshBundle {
            format: gitfleet_schemas::bundle::MESH_FORMAT,
            mesh: "m".to_owned(),
            interface: "wg-m".to_owned(),
            listen_port: None,
            persistent_keepalive_seconds: None,
            topology,
            members,
        }
    }

    fn peer_table(mesh: &MeshBundle, node: &str) -> Vec<(String, Vec<String>)> {
        peers_of(mesh, node)
            .into_iter()
            .map(|p| (p.member.node.clone(), p.allowed_ips))
            .collect()
    }

    fn row(node: &str, ips: &[&str]) -> (String, Vec<String>) {
        (
            node.to_owned(),
            ips.iter().map(|s| (*s).to_owned()).collect(),
        )
    }

    #[test]
    fn in_a_full_mesh_everyone_peers_with_everyone_and_routes_go_to_their_owner() {
        let mesh = bundle(
            Topology::FullMesh,
            vec![
                entry("a", 1, false, &[]),
                entry("b", 2, false, &["10.20.0.0/16"]),
                entry("c", 3, false, &[]),
            ],
        );
        assert_eq!(
            peer_table(&mesh, "a"),
            vec![
                row("b", &["10.40.0.2/32", "10.20.0.0/16"]),
                row("c", &["10.40.0.3/32"]),
            ]
        );
        assert!(peers_of(&mesh, "stranger").is_empty());
    }

    #[test]
    fn spokes_peer_with_hubs_only_and_reach_the_rest_through_the_first_hub() {
        let mesh = bundle(
            Topology::HubAndSpoke,
            vec![
                entry("hub-1", 1, true, &[]),
                entry("hub-2", 2, true, &["10.30.0.0/16"]),
                entry("spoke-a", 3, false, &["10.20.0.0/16"]),
                entry("spoke-b", 4, false, &[]),
            ],
        );
        assert_eq!(
            peer_table(&mesh, "spoke-b"),
            vec![
                row("hub-1", &["10.40.0.1/32", "10.40.0.0/24", "10.20.0.0/16"]),
                row("hub-2", &["10.40.0.2/32", "10.30.0.0/16"]),
            ]
        );
        // A spoke does not route its own subnets away.
        assert_eq!(
            peer_table(&mesh, "spoke-a")[0],
            row("hub-1", &["10.40.0.1/32", "10.40.0.0/24"])
        );
        // A hub peers with everyone, each at its own addresses.
        assert_eq!(
            peer_table(&mesh, "hub-1"),
            vec![
                row("hub-2", &["10.40.0.2/32", "10.30.0.0/16"]),
                row("spoke-a", &["10.40.0.3/32", "10.20.0.0/16"]),
                row("spoke-b", &["10.40.0.4/32"]),
            ]
        );
    }

    const HUB_MESH: &str = r#"version 1
cidr "10.40.0.0/24"
members role="edge"
topology "hub-and-spoke"
hubs hub="yes"
peer "anna-laptop" public-key="AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=" address="10.40.0.1"
peer "partner-gw" public-key="ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=" address="10.40.0.250" endpoint="203.0.113.9:51820" {
    routes "172.16.0.0/16"
}
"#;

    #[test]
    fn the_mesh_file_marks_hubs_keeps_routes_and_lists_external_peers() {
        let mut files = crate::repo::RepoFiles::new();
        files.insert("meshes/backbone.kdl", HUB_MESH);
        let mut a = node(
            "edge-a",
            "edge",
            Some((
                "SLTdULopfRem/Ku4+l4Ze30s66nEV3dPpaZfunVmux4=",
                Some("198.51.100.30:51820"),
            )),
        );
        a = a.replace("role=\"edge\"", "role=\"edge\" hub=\"yes\"");
        files.insert("nodes/edge-a.kdl", a);
        let b = node(
            "edge-b",
            "edge",
            Some(("SNkgnF0XGvM7PGUHMPsVTCQozshsOwBbqBsjJYQ9Z04=", None)),
        );
        files.insert(
            "nodes/edge-b.kdl",
            b.trim_end().to_owned() + " {\n    routes \"10.20.1.7/24\"\n}\n",
        );
        let checked = crate::check::check(&files);
        let errors: Vec<_> = checked
            .diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Error && d.file != "environments.kdl")
            .filter(|d| d.file != "fleet.kdl" && d.code != "unknown-environment")
            .collect();
        assert!(errors.is_empty(), "{errors:#?}");
        let model = checked.model;
        let mesh = &model.meshes["backbone"].doc;
        let b = backbone(&model, &Allocation::new());
        // 10.40.0.1 is anna's: the members start after it.
        assert_eq!(b.allocation["edge-a"], ip("10.40.0.2"));
        assert_eq!(b.allocation["edge-b"], ip("10.40.0.3"));
        let doc = mesh_file("backbone", mesh, &members(&model, mesh), &b.allocation).unwrap();
        assert_eq!(doc.topology, Topology::HubAndSpoke);
        let names: Vec<(&str, bool, bool)> = doc
            .members
            .iter()
            .map(|m| (m.node.as_str(), m.hub, m.external))
            .collect();
        assert_eq!(
            names,
            vec![
                ("anna-laptop", false, true),
                ("edge-a", true, false),
                ("edge-b", false, false),
                ("partner-gw", false, true),
            ]
        );
        assert_eq!(doc.members[2].routes, vec!["10.20.1.0/24".to_owned()]);
        assert_eq!(doc.members[3].address, "10.40.0.250/24");
        assert_eq!(doc.members[3].routes, vec!["172.16.0.0/16".to_owned()]);
        // The laptop, a spoke, peers with the hub alone.
        let table = peer_table(&doc, "anna-laptop");
        assert_eq!(
            table,
            vec![row(
                "edge-a",
                &[
                    "10.40.0.2/32",
                    "10.40.0.0/24",
                    "10.20.1.0/24",
                    "172.16.0.0/16"
                ]
            )]
        );
    }

    #[test]
    fn a_new_external_peer_is_offered_the_highest_free_address() {
        let cidr = net("10.40.0.0/29");
        let allocation = Allocation::from([("a".to_owned(), ip("10.40.0.6"))]);
        let reserved = BTreeSet::from([ip("10.40.0.5")]);
        assert_eq!(
            free_address_from_top(cidr, &allocation, &reserved),
            Some(ip("10.40.0.4"))
        );
        let full: Allocation = (1..=6)
            .map(|n| (format!("m{n}"), ip(&format!("10.40.0.{n}"))))
            .collect();
        assert_eq!(free_address_from_top(cidr, &full, &BTreeSet::new()), None);
    }

    #[test]
    fn an_external_peer_gets_a_wg_quick_config_of_the_peers_it_has() {
        let mut mesh = bundle(
            Topology::HubAndSpoke,
            vec![
                entry("hub", 1, true, &[]),
                entry("laptop", 200, false, &[]),
                entry("spoke", 2, false, &["10.20.0.0/16"]),
            ],
        );
        mesh.members[0].endpoint = Some("203.0.113.1:51820".to_owned());
        mesh.members[1].external = true;
        mesh.persistent_keepalive_seconds = Some(25);
        let text = wg_quick(&mesh, "laptop", "PRIVATE").unwrap();
        assert_eq!(
            text,
            "# laptop in WireGuard mesh `m` (hub-and-spoke), written by `gitfleet mesh client`
[Interface]
PrivateKey = PRIVATE
Address = 10.40.0.200/24

[Peer]
# hub
PublicKey = key-hub
Endpoint = 203.0.113.1:51820
AllowedIPs = 10.40.0.1/32, 10.40.0.0/24, 10.20.0.0/16
PersistentKeepalive = 25
"
        );
        assert_eq!(wg_quick(&mesh, "nobody", "PRIVATE"), None);
    }

    fn at(minutes: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + minutes * 60, 0).unwrap()
    }

    #[test]
    fn a_departed_members_address_is_held_until_no_member_runs_a_bundle_naming_it() {
        let (model, _) = model();
        let recorded = Allocation::from([
            ("edge-a".to_owned(), ip("10.40.0.1")),
            ("edge-b".to_owned(), ip("10.40.0.2")),
            ("edge-gone".to_owned(), ip("10.40.0.3")),
        ]);
        let b = backbone(&model, &recorded);
        assert_eq!(
            b.changes,
            vec!["mesh backbone: edge-gone left, 10.40.0.3 held".to_owned()]
        );
        let digest = b.built.reference.digest.clone();
        let old = "sha256:old".to_owned();
        let hour = chrono::Duration::hours(1);
        let after = |held: &Held, running: BTreeMap<String, String>, minutes: i64| {
            held_after("backbone", held, &b, &running, at(minutes), hour)
        };
        let running = |a: &str, b: &str, gone: &str| {
            BTreeMap::from([
                ("edge-a".to_owned(), a.to_owned()),
                ("edge-b".to_owned(), b.to_owned()),
                // The departed node's own report never counts.
                ("edge-gone".to_owned(), gone.to_owned()),
            ])
        };
        let (held, freed) = after(&Held::new(), running(&old, &old, &old), 0);
        assert!(freed.is_empty());
        assert_eq!(held["edge-gone"].address, ip("10.40.0.3"));
        assert_eq!(held["edge-gone"].since, at(0));
        assert_eq!(held["edge-gone"].clean, BTreeSet::from([digest.clone()]));

        // Everyone moved on, but the hold time has not passed.
        let (kept, freed) = after(&held, running(&digest, &digest, &old), 30);
        assert!(freed.is_empty());
        assert_eq!(kept, held);
        // The hold time passed, but edge-b still runs the old bundle.
        let (kept, freed) = after(&held, running(&digest, &old, &old), 90);
        assert!(freed.is_empty());
        assert_eq!(kept, held);
        // ...though not for ever: at ten times the hold time it goes.
        let (none, freed) = after(&held, running(&digest, &old, &old), 600);
        assert!(none.is_empty(), "{none:?}");
        assert_eq!(freed.len(), 1);
        // Digests nobody runs are not kept.
        let mut stale = held.clone();
        if let Some(h) = stale.get_mut("edge-gone") {
            h.clean.insert("sha256:long-gone".to_owned());
        }
        let (kept, _) = after(&stale, running(&digest, &old, &old), 30);
        assert_eq!(kept["edge-gone"].clean, BTreeSet::from([digest.clone()]));
        // Both: free again.
        let (none, freed) = after(&held, running(&digest, &digest, &old), 90);
        assert!(none.is_empty());
        assert_eq!(
            freed,
            vec!["mesh backbone: edge-gone's address 10.40.0.3 is free again".to_owned()]
        );
    }

    #[test]
    fn a_held_address_goes_to_no_newcomer_and_back_to_its_member_when_it_returns() {
        let (model, _) = model();
        let mesh = &model.meshes["backbone"].doc;
        let held = Held::from([
            (
                "edge-gone".to_owned(),
                HeldAddress {
                    address: ip("10.40.0.1"),
                    since: at(0),
                    clean: BTreeSet::new(),
                },
            ),
            (
                "edge-b".to_owned(),
                HeldAddress {
                    address: ip("10.40.0.9"),
                    since: at(0),
                    clean: BTreeSet::new(),
                },
            ),
        ]);
        let b = build(&model, "backbone", mesh, &Allocation::new(), &held, COMMIT).unwrap();
        assert_eq!(b.allocation["edge-a"], ip("10.40.0.2"), "10.40.0.1 is held");
        assert_eq!(b.allocation["edge-b"], ip("10.40.0.9"), "its own, back");
        let (after, _) = held_after(
            "backbone",
            &held,
            &b,
            &BTreeMap::new(),
            at(1),
            chrono::Duration::hours(1),
        );
        assert_eq!(after.keys().collect::<Vec<_>>(), ["edge-gone"]);
    }

    fn arb_mesh() -> impl Strategy<Value = MeshBundle> {
        (
            prop::bool::ANY,
            prop::collection::vec((prop::bool::ANY, prop::bool::ANY), 1..8),
        )
            .prop_map(|(hub_and_spoke, flags)| {
                let members = flags
                    .iter()
                    .zip(1u8..)
                    .map(|(&(hub, routes), n)| {
                        let r = [format!("10.{}.0.0/16", 100 + n)];
                        let r: Vec<&str> = r
                            .iter()
                            .map(String::as_str)
                            .take(usize::from(routes))
                            .collect();
                        entry(&format!("m{n}"), n, hub, &r)
                    })
                    .collect();
                let topology = if hub_and_spoke {
                    Topology::HubAndSpoke
                } else {
                    Topology::FullMesh
                };
                bundle(topology, members)
            })
    }

    proptest! {
        /// Whoever a member is, no range goes to two of its peers (WireGuard
        /// would move it to the last), and when the mesh can carry it, every
        /// other member's address and routes are reached through some peer.
        #[test]
        fn every_member_reaches_every_other_through_exactly_one_peer(mesh in arb_mesh()) {
            let has_hub = mesh.members.iter().any(|m| m.hub);
            for me in &mesh.members {
                let peers = peers_of(&mesh, &me.node);
                let mut seen = BTreeSet::new();
                for p in &peers {
                    prop_assert!(p.member.node != me.node);
                    for ip in &p.allowed_ips {
                        prop_assert!(seen.insert(ip.clone()), "{} twice on {}", ip, me.node);
                    }
                }
                let nets: Vec<IpNet> = seen.iter().map(|s| s.parse().unwrap()).collect();
                if mesh.topology == Topology::HubAndSpoke && !has_hub {
                    prop_assert!(peers.is_empty());
                    continue;
                }
                for other in mesh.members.iter().filter(|m| m.node != me.node) {
                    for want in other.allowed_ips.iter().chain(&other.routes) {
                        let want: IpNet = want.parse().unwrap();
                        prop_assert!(
                            nets.iter().any(|n| n.contains(&want)),
                            "{} cannot reach {} of {}", me.node, want, other.node
                        );
                    }
                }
            }
        }
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
