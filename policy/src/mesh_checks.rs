//! The checks of a mesh's topology, external peers and routed prefixes:
//! who the hubs are, that an external peer's name, key and address belong
//! to it alone, and that every subnet a mesh routes has one owner.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use gitfleet_schemas::mesh::Topology;
use gitfleet_schemas::{MeshFile, Span, Spanned};
use ipnet::IpNet;

use crate::checks::{check_name, decode_key};
use crate::diagnostics::Diagnostics;
use crate::mesh::{endpoint_ok, is_host_address};
use crate::model::{FleetModel, Located};
use crate::select::select;

/// Who routes a subnet into a mesh, for the overlap error.
struct Announcement<'a> {
    who: String,
    path: &'a str,
    span: Span,
    net: IpNet,
}

pub(crate) fn run(model: &FleetModel, d: &mut Diagnostics<'_>) {
    // Keys of fleet nodes, so an external peer cannot take one.
    let node_keys: BTreeMap<[u8; 32], &str> = model
        .nodes
        .iter()
        .filter_map(|n| {
            let wg = n.doc.wireguard.as_ref()?;
            Some((
                decode_key(&wg.public_key.value).ok()?,
                n.doc.id.value.as_str(),
            ))
        })
        .collect();
    let node_ids: BTreeSet<&str> = model
        .nodes
        .iter()
        .map(|n| n.doc.id.value.as_str())
        .collect();
    for (name, Located { path, doc: mesh }) in &model.meshes {
        let net = mesh.cidr.value.parse::<IpNet>().ok().map(|n| n.trunc());
        topology(model, d, name, path, mesh);
        peers(d, name, path, mesh, net, &node_keys, &node_ids);
        if let Some(net) = net {
            routes(model, d, name, path, mesh, net);
        }
    }
}

fn topology(model: &FleetModel, d: &mut Diagnostics<'_>, name: &str, path: &str, mesh: &MeshFile) {
    let topology = mesh.topology();
    match (&mesh.hubs, topology) {
        (Some(hubs), Topology::FullMesh) => d.error(
            path,
            hubs.span,
            "mesh-hubs-without-topology",
            format!("mesh `{name}` names hubs but is a full mesh"),
            Some("add `topology \"hub-and-spoke\"`, or remove `hubs`".to_owned()),
        ),
        (None, Topology::HubAndSpoke) => d.error(
            path,
            mesh.topology.as_ref().map_or(mesh.cidr.span, |t| t.span),
            "mesh-without-hubs",
            format!("hub-and-spoke mesh `{name}` names no hubs"),
            Some("add `hubs role=\"...\"`: the members the others peer with".to_owned()),
        ),
        (Some(hubs), Topology::HubAndSpoke) => {
            let members: BTreeSet<usize> = select(model, &mesh.members).into_iter().collect();
            let mut any = false;
            for i in select(model, hubs) {
                let node = &model.nodes[i];
                if !members.contains(&i) {
                    d.warning(
                        &node.path,
                        node.doc.id.span,
                        "hub-not-member",
                        format!(
                            "node `{}` matches the hubs of mesh `{name}` but is not a member",
                            node.doc.id.value
                        ),
                        Some("hubs are chosen among the mesh's members".to_owned()),
                    );
                    continue;
                }
                let Some(wg) = &node.doc.wireguard else {
                    continue;
                };
                any = true;
                if wg.endpoint.is_none() {
                    d.warning(
                        &node.path,
                        wg.public_key.span,
                        "hub-without-endpoint",
                        format!(
                            "node `{}` is a hub of mesh `{name}` but has no endpoint",
                            node.doc.id.value
                        ),
                        Some(
                            "spokes reach hubs at their endpoint: add `endpoint=\"host:port\"`"
                                .to_owned(),
                        ),
                    );
                }
            }
            if !any {
                d.error(
                    path,
                    hubs.span,
                    "mesh-without-hubs",
                    format!("`{hubs}` picks no member of mesh `{name}` with a WireGuard key"),
                    Some(
                        "spokes peer with the hubs only, so at least one member must be a hub"
                            .to_owned(),
                    ),
                );
            }
        }
        (None, Topology::FullMesh) => {}
    }
}

fn peers(
    d: &mut Diagnostics<'_>,
    name: &str,
    path: &str,
    mesh: &MeshFile,
    net: Option<IpNet>,
    node_keys: &BTreeMap<[u8; 32], &str>,
    node_ids: &BTreeSet<&str>,
) {
    let mut names: BTreeMap<&str, Span> = BTreeMap::new();
    let mut keys: BTreeMap<[u8; 32], &str> = BTreeMap::new();
    let mut addresses: BTreeMap<IpAddr, &str> = BTreeMap::new();
    for peer in &mesh.peers {
        let who = peer.name.value.as_str();
        check_name(d, path, &peer.name, "external peer");
        if names.insert(who, peer.name.span).is_some() {
            d.error(
                path,
                peer.name.span,
                "duplicate-peer",
                format!("mesh `{name}` has two peers named `{who}`"),
                Some("give each external peer its own name".to_owned()),
            );
        }
        if node_ids.contains(who) {
            d.error(
                path,
                peer.name.span,
                "peer-name-is-node",
                format!("peer `{who}` of mesh `{name}` has the id of a fleet node"),
                Some("external peers and nodes are named apart, so pages and configs can tell them apart".to_owned()),
            );
        }
        match decode_key(&peer.public_key.value) {
            Err(why) => d.error(
                path,
                peer.public_key.span,
                "invalid-key",
                format!("public-key of peer `{who}` is not a valid key: {why}"),
                Some(
                    "use the base64 key printed by `gitfleet mesh client` or `wg pubkey`"
                        .to_owned(),
                ),
            ),
            Ok(key) => {
                let other = node_keys
                    .get(&key)
                    .map(|n| format!("node `{n}`"))
                    .or_else(|| keys.get(&key).map(|p| format!("peer `{p}`")));
                if let Some(other) = other {
                    d.error(
                        path,
                        peer.public_key.span,
                        "duplicate-wireguard-key",
                        format!("public-key of peer `{who}` is also the key of {other}"),
                        Some("every peer has its own key".to_owned()),
                    );
                }
                keys.insert(key, who);
            }
        }
        match peer.address.value.parse::<IpAddr>() {
            Err(_) => d.error(
                path,
                peer.address.span,
                "invalid-address",
                format!("`{}` is not an IP address", peer.address.value),
                Some("write the tunnel address alone, e.g. \"10.40.0.200\"".to_owned()),
            ),
            Ok(ip) => {
                if let Some(net) = net.filter(|n| !is_host_address(n, ip)) {
                    d.error(
                        path,
                        peer.address.span,
                        "peer-address-outside",
                        format!("address {ip} of peer `{who}` is not a host address of {net}"),
                        Some(format!("pick a free address of mesh `{name}`'s {net}")),
                    );
                }
                if let Some(first) = addresses.insert(ip, who) {
                    d.error(
                        path,
                        peer.address.span,
                        "duplicate-address",
                        format!("peers `{first}` and `{who}` both have address {ip}"),
                        Some("every peer has its own tunnel address".to_owned()),
                    );
                }
            }
        }
        if let Some(ep) = &peer.endpoint {
            if !endpoint_ok(&ep.value) {
                d.error(
                    path,
                    ep.span,
                    "invalid-endpoint",
                    format!("`{}` is not a host:port endpoint", ep.value),
                    Some("e.g. \"203.0.113.9:51820\"".to_owned()),
                );
            }
        }
    }
}

/// Every subnet routed into the mesh has one owner: members' `routes`
/// (in their node files), external peers' `routes`, never inside the
/// mesh's own range nor overlapping another's.
fn routes(
    model: &FleetModel,
    d: &mut Diagnostics<'_>,
    name: &str,
    path: &str,
    mesh: &MeshFile,
    net: IpNet,
) {
    let mut all: Vec<Announcement<'_>> = Vec::new();
    for i in select(model, &mesh.members) {
        let node = &model.nodes[i];
        let Some(wg) = &node.doc.wireguard else {
            continue;
        };
        all.extend(announced(&wg.routes).map(|(net, span)| Announcement {
            who: format!("node `{}`", node.doc.id.value),
            path: &node.path,
            span,
            net,
        }));
    }
    for peer in &mesh.peers {
        all.extend(announced(&peer.routes).map(|(net, span)| Announcement {
            who: format!("peer `{}`", peer.name.value),
            path,
            span,
            net,
        }));
    }
    for (i, b) in all.iter().enumerate() {
        if overlaps(&b.net, &net) {
            d.error(
                b.path,
                b.span,
                "mesh-route-overlap",
                format!(
                    "route {} of {} overlaps mesh `{name}`'s own range {net}",
                    b.net, b.who
                ),
                Some("a route is a subnet behind a peer, outside the mesh's addresses".to_owned()),
            );
            continue;
        }
        if let Some(a) = all[..i].iter().find(|a| overlaps(&a.net, &b.net)) {
            let at = d.location(a.path, a.span);
            d.error(
                b.path,
                b.span,
                "mesh-route-overlap",
                format!(
                    "route {} of {} overlaps route {} of {} in mesh `{name}`",
                    b.net, b.who, a.net, a.who
                ),
                Some(format!(
                    "{at} routes it already; a subnet is routed to one peer of a mesh"
                )),
            );
        }
    }
}

/// The routes that parse (the others are reported where they are read).
fn announced(routes: &[Spanned<String>]) -> impl Iterator<Item = (IpNet, Span)> + '_ {
    routes
        .iter()
        .filter_map(|r| Some((r.value.parse::<IpNet>().ok()?.trunc(), r.span)))
}

fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap_or_else(|_| panic!("{s}"))
    }

    #[test]
    fn ranges_overlap_when_one_holds_the_other() {
        assert!(overlaps(&net("10.20.0.0/16"), &net("10.20.5.0/24")));
        assert!(overlaps(&net("10.20.5.0/24"), &net("10.20.0.0/16")));
        assert!(overlaps(&net("10.20.0.0/16"), &net("10.20.0.0/16")));
        assert!(!overlaps(&net("10.20.0.0/16"), &net("10.21.0.0/16")));
        assert!(!overlaps(&net("10.20.0.0/16"), &net("fd00::/8")));
    }
}
