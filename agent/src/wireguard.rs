//! WireGuard meshes on this node.
//!
//! - [`desired`] (pure): what this node's interface should be, from a mesh
//!   bundle, the node's id and its private key;
//! - [`peer_diff`] (pure): which peers to add, remove and change so that the
//!   live interface matches;
//! - [`apply`]: read the live interface with `wireguard-control` and write
//!   only that difference, then the interface address and link state;
//! - [`read`], [`drift`] and [`status`]: what drift checks and status
//!   reports say about the live interface.
//!
//! Peers that already match are never written, so their sessions, counters
//! and handshakes survive a new mesh. boringtun 0.7 needs this twice over: a
//! `set` that names an existing peer without `remove` aborts it, so on the
//! userspace backend a changed peer is removed and added again (its
//! counters restart; it changed anyway), in two requests, as [`apply`]
//! says why. The kernel changes a peer in place.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::{self, BufRead as _, BufReader, Write as _};
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use chrono::{DateTime, Utc};
use gitfleet_policy::mesh::{endpoint_ok, peers_of, PeerOf};
use gitfleet_schemas::agent::WireguardBackend;
use gitfleet_schemas::bundle::{MeshBundle, MESH_FORMAT};
use gitfleet_schemas::status::{Drift, PeerStatus, WireguardStatus};
use ipnet::IpNet;
use sha2::{Digest as _, Sha256};
use wireguard_control::{Backend, Device, DeviceUpdate, InterfaceName, Key, PeerConfigBuilder};

/// The node's WireGuard private key in its state directory, written by
/// `gitfleet-agent enroll`.
pub const WIREGUARD_KEY: &str = "wireguard.key";

/// The key `gitfleet-agent rotate-key` made, waiting for a mesh bundle
/// that lists its public key.
pub const WIREGUARD_KEY_NEXT: &str = "wireguard.key.next";

/// Every key this node has used, by public key (`<hex>.key`), so that a
/// mesh rolled back to a bundle listing an older key still finds it.
pub const WIREGUARD_KEYS_DIR: &str = "wireguard-keys";

/// Which of the node's keys a mesh bundle lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeySlot {
    Current,
    /// The pending key of `rotate-key`: the rotation took effect.
    Next,
    /// A key used before: the mesh went back to a bundle listing it.
    Earlier,
}

/// The key of `dir` whose public key is `listed`, made current first when
/// it is the pending key or one used before. The current key is copied
/// into [`WIREGUARD_KEYS_DIR`] before anything replaces it, and
/// `wireguard.key` is only ever replaced whole (a rename), so a crash at
/// any point leaves it holding a key and loses none. `None` when no key
/// of the node is listed.
pub fn key_for(dir: &Path, listed: &str) -> Result<Option<(PrivateKey, KeySlot)>, WireguardError> {
    let current_path = dir.join(WIREGUARD_KEY);
    let current = PrivateKey::read(&current_path)?;
    let Some(listed) = WgKey::parse(listed) else {
        return Ok(None);
    };
    if current.public() == listed {
        return Ok(Some((current, KeySlot::Current)));
    }
    let error = |path: &Path, reason: String| WireguardError::PrivateKey {
        path: path.to_owned(),
        reason,
    };
    let next_path = dir.join(WIREGUARD_KEY_NEXT);
    let earlier_path = archived(dir, listed);
    let next = match next_path.exists() {
        true => Some(PrivateKey::read(&next_path)?).filter(|k| k.public() == listed),
        false => None,
    };
    let (key, slot) = if let Some(next) = next {
        (next, KeySlot::Next)
    } else if earlier_path.exists() {
        (PrivateKey::read(&earlier_path)?, KeySlot::Earlier)
    } else {
        return Ok(None);
    };
    archive(dir, &current)?;
    match slot {
        KeySlot::Next => std::fs::rename(&next_path, &current_path)
            .map_err(|e| error(&next_path, format!("renaming to {WIREGUARD_KEY}: {e}")))?,
        _ => gitfleet_io::write::replace_private(
            &current_path,
            format!("{}\n", key.expose_base64()).as_bytes(),
        )
        .map_err(|e| error(&current_path, e.to_string()))?,
    }
    let _ = gitfleet_io::write::sync_dir(dir);
    tracing::info!(public_key = %key.public(), from = ?slot, "wireguard key rotated");
    Ok(Some((key, slot)))
}

/// Where key `public` is kept once it was used.
fn archived(dir: &Path, public: WgKey) -> PathBuf {
    let hex: String = public.0.iter().map(|b| format!("{b:02x}")).collect();
    dir.join(WIREGUARD_KEYS_DIR).join(format!("{hex}.key"))
}

/// Keep a copy of `key` in [`WIREGUARD_KEYS_DIR`] (mode 0600, once).
fn archive(dir: &Path, key: &PrivateKey) -> Result<(), WireguardError> {
    let path = archived(dir, key.public());
    if path.exists() {
        return Ok(());
    }
    let keys = dir.join(WIREGUARD_KEYS_DIR);
    if !keys.exists() {
        std::fs::create_dir_all(&keys).map_err(|e| WireguardError::PrivateKey {
            path: keys.clone(),
            reason: e.to_string(),
        })?;
        let _ =
            std::fs::set_permissions(&keys, std::os::unix::fs::PermissionsExt::from_mode(0o700));
    }
    gitfleet_io::write::replace_private(&path, format!("{}\n", key.expose_base64()).as_bytes())
        .map_err(|e| WireguardError::PrivateKey {
            path: path.clone(),
            reason: e.to_string(),
        })
}

/// The public key of a rotation waiting for the fleet repo, if any.
pub fn next_public_key(dir: &Path) -> Option<String> {
    let path = dir.join(WIREGUARD_KEY_NEXT);
    path.exists()
        .then(|| PrivateKey::read(&path).ok())
        .flatten()
        .map(|k| k.public().to_string())
}

/// Where userspace implementations put their control sockets, in the order
/// `wireguard-control` looks.
const SOCKET_DIRS: [&str; 2] = ["/var/run/wireguard", "/run/wireguard"];

#[derive(Debug, thiserror::Error)]
pub enum WireguardError {
    #[error("mesh `{mesh}` has format {found}, this agent reads format {expected}")]
    Format {
        mesh: String,
        found: u32,
        expected: u32,
    },
    #[error("node `{node}` is not a member of mesh `{mesh}`")]
    NotMember { mesh: String, node: String },
    #[error("mesh `{mesh}` lists node `{node}` with public key {listed}, but this node's wireguard.key gives {actual}")]
    KeyMismatch {
        mesh: String,
        node: String,
        listed: String,
        actual: String,
    },
    #[error("mesh `{mesh}`, member `{node}`: {field} `{value}` {reason}")]
    Member {
        mesh: String,
        node: String,
        field: &'static str,
        value: String,
        reason: String,
    },
    #[error("mesh `{mesh}`: interface name `{interface}` is not a valid Linux interface name (1 to 15 bytes, no `/` or spaces)")]
    Interface { mesh: String, interface: String },
    #[error("wireguard key {path}: {reason}")]
    PrivateKey { path: PathBuf, reason: String },
    #[error("resolving the endpoint `{endpoint}` of mesh member `{node}`: {reason}")]
    Resolve {
        node: String,
        endpoint: String,
        reason: String,
    },
    #[error("no userspace wireguard runs interface {interface} (no control socket in /var/run/wireguard or /run/wireguard: {source}); start boringtun or wireguard-go for it first")]
    NotRunning {
        interface: String,
        #[source]
        source: io::Error,
    },
    #[error("{action} wireguard interface {interface} ({backend}): {source}")]
    Device {
        interface: String,
        backend: &'static str,
        action: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("running `{command}`: {reason}")]
    Command { command: String, reason: String },
    #[error("turning on forwarding in {path}: {source}")]
    Forwarding {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// A WireGuard (x25519) public key.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WgKey(pub [u8; 32]);

impl WgKey {
    /// Standard base64 of 32 bytes, as `wg` prints keys.
    pub fn parse(text: &str) -> Option<WgKey> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .ok()?;
        Some(WgKey(<[u8; 32]>::try_from(bytes.as_slice()).ok()?))
    }
}

impl fmt::Display for WgKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&base64::engine::general_purpose::STANDARD.encode(self.0))
    }
}

impl fmt::Debug for WgKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WgKey({self})")
    }
}

/// This node's WireGuard private key (clamped); never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct PrivateKey([u8; 32]);

impl PrivateKey {
    pub fn from_bytes(mut bytes: [u8; 32]) -> PrivateKey {
        bytes[0] &= 248;
        bytes[31] = (bytes[31] & 127) | 64;
        PrivateKey(bytes)
    }

    /// `<state-dir>/wireguard.key`: base64 of 32 bytes, as
    /// `gitfleet-agent enroll` writes it.
    pub fn read(path: &Path) -> Result<PrivateKey, WireguardError> {
        let error = |reason: String| WireguardError::PrivateKey {
            path: path.to_owned(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                error("does not exist; run `gitfleet-agent enroll` first".to_owned())
            } else {
                error(e.to_string())
            }
        })?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|e| error(format!("is not base64: {e}")))?;
        let bytes = <[u8; 32]>::try_from(bytes.as_slice())
            .map_err(|_| error(format!("holds {} bytes, not 32", bytes.len())))?;
        Ok(PrivateKey::from_bytes(bytes))
    }

    /// The key in `path` ([`PrivateKey::read`]), made first (random,
    /// clamped, base64, mode 0600, never replacing a file) when there is
    /// no file. Whether it was made.
    pub fn read_or_create(path: &Path) -> Result<(PrivateKey, bool), WireguardError> {
        let error = |reason: String| WireguardError::PrivateKey {
            path: path.to_owned(),
            reason,
        };
        match std::fs::symlink_metadata(path) {
            Ok(_) => return Ok((PrivateKey::read(path)?, false)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(error(e.to_string())),
        }
        let mut bytes = [0u8; 32];
        getrandom::getrandom(&mut bytes)
            .map_err(|e| error(format!("reading randomness from the operating system: {e}")))?;
        let key = PrivateKey::from_bytes(bytes);
        bytes.fill(0);
        let text = format!("{}\n", key.expose_base64());
        gitfleet_io::write::new_file(path, text.as_bytes(), 0o600)
            .map_err(|e| error(e.to_string()))?;
        Ok((key, true))
    }

    pub fn public(&self) -> WgKey {
        WgKey(curve25519_dalek::MontgomeryPoint::mul_base_clamped(self.0).to_bytes())
    }

    /// The key itself, base64: only for the key file and a peer's own
    /// wg-quick configuration, never for a log or a report.
    pub fn expose_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.0)
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PrivateKey(public {})", self.public())
    }
}

impl Drop for PrivateKey {
    fn drop(&mut self) {
        self.0.fill(0);
    }
}

/// A peer as the mesh describes it: the endpoint as written (`host:port`),
/// resolved only when applied ([`resolve`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeshPeer {
    pub node: String,
    pub public_key: WgKey,
    pub endpoint: Option<String>,
    pub allowed_ips: BTreeSet<IpNet>,
    pub keepalive: Option<u16>,
}

/// A peer's configuration, desired or live: what [`peer_diff`] compares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub public_key: WgKey,
    pub endpoint: Option<SocketAddr>,
    /// Host bits cleared, as the kernel and boringtun store them.
    pub allowed_ips: BTreeSet<IpNet>,
    /// `None` when off (an interval of 0 is off).
    pub keepalive: Option<u16>,
}

impl Peer {
    /// Whether the live peer `live` is configured as this desired peer. A
    /// peer the mesh gives no endpoint may be at whatever address it last
    /// sent from (WireGuard learns it), so its endpoint is not compared.
    pub fn satisfied_by(&self, live: &Peer) -> bool {
        self.public_key == live.public_key
            && self.allowed_ips == live.allowed_ips
            && self.keepalive == live.keepalive
            && (self.endpoint.is_none() || self.endpoint == live.endpoint)
    }

    /// One line per setting, for drift digests.
    fn canonical(&self) -> String {
        let ips: Vec<String> = self.allowed_ips.iter().map(IpNet::to_string).collect();
        format!(
            "public-key={}\nendpoint={}\nallowed-ips={}\npersistent-keepalive={}\n",
            self.public_key,
            self.endpoint.map_or("any".to_owned(), |e| e.to_string()),
            ips.join(","),
            self.keepalive.map_or("off".to_owned(), |k| k.to_string()),
        )
    }
}

/// What this node's interface should be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    pub mesh: String,
    pub node: String,
    pub interface: String,
    pub private_key: PrivateKey,
    pub public_key: WgKey,
    pub listen_port: Option<u16>,
    /// This node's tunnel address with the mesh's prefix length.
    pub address: IpNet,
    /// The members it peers with ([`peers_of`]), sorted by node id.
    pub peers: Vec<MeshPeer>,
    /// Ranges the peers serve beyond the mesh's own range: each routed to
    /// the interface (the mesh's range is routed by its address).
    pub routes: BTreeSet<IpNet>,
    /// A hub of a hub-and-spoke mesh: it forwards between its peers.
    pub forward: bool,
}

/// What this node's interface should be: it finds itself in `mesh` by
/// `node`, and peers as the mesh's topology says ([`peers_of`]).
/// `interface` (the agent config's) replaces the mesh's interface name.
pub fn desired(
    mesh: &MeshBundle,
    node: &str,
    private_key: &PrivateKey,
    interface: Option<&str>,
) -> Result<Desired, WireguardError> {
    if mesh.format != MESH_FORMAT {
        return Err(WireguardError::Format {
            mesh: mesh.mesh.clone(),
            found: mesh.format,
            expected: MESH_FORMAT,
        });
    }
    let interface = interface.unwrap_or(&mesh.interface);
    if InterfaceName::from_str(interface).is_err() {
        return Err(WireguardError::Interface {
            mesh: mesh.mesh.clone(),
            interface: interface.to_owned(),
        });
    }
    let bad = |node: &str, field: &'static str, value: &str, reason: &str| WireguardError::Member {
        mesh: mesh.mesh.clone(),
        node: node.to_owned(),
        field,
        value: value.to_owned(),
        reason: reason.to_owned(),
    };
    let me = mesh
        .members
        .iter()
        .find(|m| m.node == node)
        .ok_or_else(|| WireguardError::NotMember {
            mesh: mesh.mesh.clone(),
            node: node.to_owned(),
        })?;
    let public_key = private_key.public();
    if WgKey::parse(&me.public_key) != Some(public_key) {
        return Err(WireguardError::KeyMismatch {
            mesh: mesh.mesh.clone(),
            node: node.to_owned(),
            listed: me.public_key.clone(),
            actual: public_key.to_string(),
        });
    }
    let address: IpNet = me.address.parse().map_err(|_| {
        bad(
            node,
            "address",
            &me.address,
            "is not an address with a prefix length",
        )
    })?;
    let keepalive = mesh.persistent_keepalive_seconds.filter(|&s| s != 0);
    let mut seen = BTreeMap::from([(public_key, node)]);
    let mut peers = Vec::new();
    let mut routes = BTreeSet::new();
    let connected = address.trunc();
    for PeerOf {
        member: m,
        allowed_ips: ips,
    } in peers_of(mesh, node)
    {
        let key = WgKey::parse(&m.public_key).ok_or_else(|| {
            bad(
                &m.node,
                "public key",
                &m.public_key,
                "is not base64 of 32 bytes",
            )
        })?;
        if let Some(other) = seen.insert(key, &m.node) {
            return Err(bad(
                &m.node,
                "public key",
                &m.public_key,
                &format!("is also the key of `{other}`"),
            ));
        }
        let mut allowed_ips = BTreeSet::new();
        for ip in &ips {
            let net: IpNet = ip
                .parse()
                .map_err(|_| bad(&m.node, "allowed ip", ip, "is not a CIDR range"))?;
            let net = net.trunc();
            if !connected.contains(&net) {
                routes.insert(net);
            }
            allowed_ips.insert(net);
        }
        if let Some(e) = &m.endpoint {
            if !endpoint_ok(e) {
                return Err(bad(&m.node, "endpoint", e, "is not `host:port`"));
            }
        }
        peers.push(MeshPeer {
            node: m.node.clone(),
            public_key: key,
            endpoint: m.endpoint.clone(),
            allowed_ips,
            keepalive,
        });
    }
    peers.sort_by(|a, b| a.node.cmp(&b.node));
    Ok(Desired {
        mesh: mesh.mesh.clone(),
        node: node.to_owned(),
        interface: interface.to_owned(),
        private_key: private_key.clone(),
        public_key,
        listen_port: mesh.listen_port,
        address,
        peers,
        routes,
        // A hub routes between spokes; a member serving subnets routes
        // between the mesh and them.
        forward: (me.hub && !mesh.topology.is_full_mesh()) || !me.routes.is_empty(),
    })
}

/// The mesh's peers with their endpoints resolved (an address is used as
/// is; a host name is looked up).
pub fn resolve(peers: &[MeshPeer]) -> Result<Vec<Peer>, WireguardError> {
    peers
        .iter()
        .map(|p| {
            let endpoint = match &p.endpoint {
                None => None,
                Some(e) => Some(match SocketAddr::from_str(e) {
                    Ok(addr) => addr,
                    Err(_) => e
                        .to_socket_addrs()
                        .map_err(|source| WireguardError::Resolve {
                            node: p.node.clone(),
                            endpoint: e.clone(),
                            reason: source.to_string(),
                        })?
                        .next()
                        .ok_or_else(|| WireguardError::Resolve {
                            node: p.node.clone(),
                            endpoint: e.clone(),
                            reason: "no addresses".to_owned(),
                        })?,
                }),
            };
            Ok(Peer {
                public_key: p.public_key,
                endpoint,
                allowed_ips: p.allowed_ips.clone(),
                keepalive: p.keepalive,
            })
        })
        .collect()
}

/// The peers to write so that the live interface matches: each list sorted
/// by public key. A live peer that already matches is in none of them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerDiff {
    pub add: Vec<Peer>,
    pub remove: Vec<WgKey>,
    pub update: Vec<Peer>,
}

impl PeerDiff {
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.remove.is_empty() && self.update.is_empty()
    }
}

pub fn peer_diff(desired: &[Peer], live: &[Peer]) -> PeerDiff {
    let live_by_key: BTreeMap<WgKey, &Peer> = live.iter().map(|p| (p.public_key, p)).collect();
    let wanted: BTreeSet<WgKey> = desired.iter().map(|p| p.public_key).collect();
    let mut diff = PeerDiff::default();
    for d in desired {
        match live_by_key.get(&d.public_key) {
            None => diff.add.push(d.clone()),
            Some(l) if !d.satisfied_by(l) => diff.update.push(d.clone()),
            Some(_) => {}
        }
    }
    diff.remove = live_by_key
        .keys()
        .filter(|k| !wanted.contains(k))
        .copied()
        .collect();
    diff.add.sort_by_key(|p| p.public_key);
    diff.update.sort_by_key(|p| p.public_key);
    diff
}

/// A live peer: its configuration and its session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LivePeer {
    pub config: Peer,
    pub latest_handshake: Option<DateTime<Utc>>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

/// The live interface.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Live {
    /// False when the (kernel) interface does not exist yet.
    pub exists: bool,
    pub public_key: Option<WgKey>,
    pub listen_port: Option<u16>,
    pub peers: Vec<LivePeer>,
    /// Addresses on the interface, IPv6 link-local ones left out.
    pub addresses: Vec<IpNet>,
    pub up: bool,
}

impl Live {
    pub fn configs(&self) -> Vec<Peer> {
        self.peers.iter().map(|p| p.config.clone()).collect()
    }
}

fn backend_of(backend: WireguardBackend) -> Backend {
    match backend {
        WireguardBackend::Kernel => Backend::Kernel,
        WireguardBackend::Userspace => Backend::Userspace,
    }
}

fn backend_name(backend: WireguardBackend) -> &'static str {
    match backend {
        WireguardBackend::Kernel => "kernel",
        WireguardBackend::Userspace => "userspace",
    }
}

fn interface_name(interface: &str) -> Result<InterfaceName, WireguardError> {
    InterfaceName::from_str(interface).map_err(|_| WireguardError::Interface {
        mesh: "(agent config)".to_owned(),
        interface: interface.to_owned(),
    })
}

/// Read the live interface: WireGuard settings and peers with
/// `wireguard-control`, addresses and link state with `ip`.
pub fn read(interface: &str, backend: WireguardBackend) -> Result<Live, WireguardError> {
    let name = interface_name(interface)?;
    let device = match Device::get(&name, backend_of(backend)) {
        Ok(d) => d,
        Err(e) if backend == WireguardBackend::Kernel && no_such_device(&e) => {
            return Ok(Live::default());
        }
        Err(source)
            if backend == WireguardBackend::Userspace
                && matches!(
                    source.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                ) =>
        {
            return Err(WireguardError::NotRunning {
                interface: interface.to_owned(),
                source,
            });
        }
        Err(source) => {
            return Err(WireguardError::Device {
                interface: interface.to_owned(),
                backend: backend_name(backend),
                action: "reading",
                source,
            })
        }
    };
    let device_error = |source: io::Error| WireguardError::Device {
        interface: interface.to_owned(),
        backend: backend_name(backend),
        action: "reading",
        source,
    };
    let mut public_key = device.public_key.map(|k| WgKey(k.0));
    let mut handshakes = None;
    if backend == WireguardBackend::Userspace {
        let extra = userspace_extra(interface).map_err(device_error)?;
        public_key = public_key.or(extra.public_key);
        handshakes = Some(extra.handshakes);
    }
    let now = SystemTime::now();
    let mut peers = Vec::with_capacity(device.peers.len());
    for p in device.peers {
        let mut allowed_ips = BTreeSet::new();
        for ip in &p.config.allowed_ips {
            let net = IpNet::new(ip.address, ip.cidr).map_err(|_| {
                device_error(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "allowed ip {}/{} has a bad prefix length",
                        ip.address, ip.cidr
                    ),
                ))
            })?;
            allowed_ips.insert(net.trunc());
        }
        peers.push(LivePeer {
            config: Peer {
                public_key: WgKey(p.config.public_key.0),
                endpoint: p.config.endpoint,
                allowed_ips,
                keepalive: p.config.persistent_keepalive_interval.filter(|&k| k != 0),
            },
            latest_handshake: match &handshakes {
                Some(h) => h
                    .get(&WgKey(p.config.public_key.0))
                    .and_then(|&(sec, nsec)| userspace_handshake(sec, nsec, now)),
                None => p.stats.last_handshake_time.map(DateTime::<Utc>::from),
            },
            rx_bytes: p.stats.rx_bytes,
            tx_bytes: p.stats.tx_bytes,
        });
    }
    peers.sort_by_key(|p| p.config.public_key);
    let (up, addresses) = link(interface)?;
    Ok(Live {
        exists: true,
        public_key,
        listen_port: device.listen_port.filter(|&p| p != 0),
        peers,
        addresses,
        up,
    })
}

fn no_such_device(e: &io::Error) -> bool {
    e.raw_os_error() == Some(rustix::io::Errno::NODEV.raw_os_error())
        || e.kind() == io::ErrorKind::NotFound
}

/// What wireguard-control does not read from a userspace implementation.
#[derive(Debug, Default)]
struct UserspaceExtra {
    /// boringtun answers `own_public_key` instead of `private_key`.
    public_key: Option<WgKey>,
    /// `last_handshake_time_sec` and `_nsec` by peer, as sent.
    handshakes: BTreeMap<WgKey, (u64, u32)>,
}

/// One `get` on the interface's control socket, for what wireguard-control
/// leaves out: the own public key of boringtun, and handshake times to the
/// nanosecond (wireguard-control reads only whole seconds and takes 0 as
/// "never", which from boringtun means "under a second ago").
fn userspace_extra(interface: &str) -> io::Result<UserspaceExtra> {
    let mut extra = UserspaceExtra::default();
    let Some(path) = SOCKET_DIRS
        .iter()
        .map(|dir| Path::new(dir).join(format!("{interface}.sock")))
        .find(|p| p.exists())
    else {
        return Ok(extra);
    };
    let mut socket = UnixStream::connect(&path)?;
    socket.set_read_timeout(Some(Duration::from_secs(5)))?;
    socket.write_all(b"get=1\n\n")?;
    let mut peer: Option<WgKey> = None;
    let key = |hex: &str| Key::from_hex(hex).ok().map(|k| WgKey(k.0));
    for line in BufReader::new(socket).lines() {
        let line = line?;
        let Some((name, value)) = line.split_once('=') else {
            break;
        };
        match (name, peer) {
            ("errno", _) => break,
            ("public_key", _) => peer = key(value),
            ("own_public_key", None) => extra.public_key = key(value),
            ("private_key", None) => {
                extra.public_key = Key::from_hex(value).ok().map(|k| WgKey(k.get_public().0));
            }
            ("last_handshake_time_sec", Some(p)) => {
                extra.handshakes.entry(p).or_default().0 = value.parse().unwrap_or(0);
            }
            ("last_handshake_time_nsec", Some(p)) => {
                extra.handshakes.entry(p).or_default().1 = value.parse().unwrap_or(0);
            }
            _ => {}
        }
    }
    Ok(extra)
}

/// A userspace handshake time. The protocol sends a Unix time (0 for
/// never), as wireguard-go does; boringtun 0.7 sends the time since the
/// handshake instead, which is told apart by being before 2000.
fn userspace_handshake(sec: u64, nsec: u32, now: SystemTime) -> Option<DateTime<Utc>> {
    const Y2000: Duration = Duration::from_secs(946_684_800);
    if sec == 0 && nsec == 0 {
        return None;
    }
    let t = Duration::new(sec, nsec);
    let t = if t < Y2000 {
        now.checked_sub(t)?
    } else {
        UNIX_EPOCH.checked_add(t)?
    };
    Some(DateTime::<Utc>::from(t))
}

// Addresses and link state go through the `ip` command: wireguard-control
// configures WireGuard only, and rtnetlink by hand (or another netlink
// crate) would be more code to own than the one tool that is on every node
// with WireGuard (iproute2, which wg-quick itself uses). The agent runs in
// the node's network namespace, and so does `ip`.
fn ip(args: &[&str]) -> Result<Vec<u8>, WireguardError> {
    let command = format!("ip {}", args.join(" "));
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| WireguardError::Command {
            command: command.clone(),
            reason: if e.kind() == io::ErrorKind::NotFound {
                "`ip` is not installed (install iproute2)".to_owned()
            } else {
                e.to_string()
            },
        })?;
    if !out.status.success() {
        return Err(WireguardError::Command {
            command,
            reason: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(out.stdout)
}

/// Whether the link is up, and its addresses.
fn link(interface: &str) -> Result<(bool, Vec<IpNet>), WireguardError> {
    let args = ["-j", "address", "show", "dev", interface];
    let out = ip(&args)?;
    let bad = |reason: String| WireguardError::Command {
        command: format!("ip {}", args.join(" ")),
        reason,
    };
    let links: serde_json::Value =
        serde_json::from_slice(&out).map_err(|e| bad(format!("unreadable output: {e}")))?;
    let Some(link) = links.as_array().and_then(|a| a.first()) else {
        return Ok((false, Vec::new()));
    };
    let up = link["flags"]
        .as_array()
        .is_some_and(|f| f.iter().any(|x| x == "UP"));
    let mut addresses = Vec::new();
    for a in link["addr_info"].as_array().into_iter().flatten() {
        if a["scope"] == "link" {
            continue;
        }
        let (Some(local), Some(prefix)) = (a["local"].as_str(), a["prefixlen"].as_u64()) else {
            continue;
        };
        let net = format!("{local}/{prefix}")
            .parse::<IpNet>()
            .map_err(|_| bad(format!("address `{local}/{prefix}` is not an address")))?;
        addresses.push(net);
    }
    addresses.sort();
    Ok((up, addresses))
}

/// The routing protocol number of the routes this agent installs
/// (`ip route ... proto 173`): it lists and removes those, never a route
/// someone else made.
const ROUTE_PROTO: &str = "173";

/// The routes to `interface` this agent installed.
pub fn installed_routes(interface: &str) -> Result<BTreeSet<IpNet>, WireguardError> {
    let mut out = BTreeSet::new();
    for family in ["-4", "-6"] {
        let args = [
            "-j",
            family,
            "route",
            "show",
            "dev",
            interface,
            "proto",
            ROUTE_PROTO,
        ];
        let text = ip(&args)?;
        let routes: serde_json::Value = if text.iter().all(u8::is_ascii_whitespace) {
            serde_json::Value::Array(Vec::new())
        } else {
            serde_json::from_slice(&text).map_err(|e| WireguardError::Command {
                command: format!("ip {}", args.join(" ")),
                reason: format!("unreadable output: {e}"),
            })?
        };
        for r in routes.as_array().into_iter().flatten() {
            let Some(dst) = r["dst"].as_str() else {
                continue;
            };
            // A host route is printed without its prefix length.
            let net = dst
                .parse::<IpNet>()
                .ok()
                .or_else(|| dst.parse::<std::net::IpAddr>().ok().map(IpNet::from));
            out.extend(net);
        }
    }
    Ok(out)
}

/// Route `wanted` to `interface` and remove the other routes this agent
/// installed there. Whether anything changed.
fn sync_routes(interface: &str, wanted: &BTreeSet<IpNet>) -> Result<bool, WireguardError> {
    let live = installed_routes(interface)?;
    for net in wanted.difference(&live) {
        let net = net.to_string();
        // `add`, never `replace`: a route to that subnet someone else made
        // stays, and the error says so.
        ip(&["route", "add", &net, "dev", interface, "proto", ROUTE_PROTO])?;
    }
    for net in live.difference(wanted) {
        let net = net.to_string();
        ip(&["route", "del", &net, "dev", interface, "proto", ROUTE_PROTO])?;
    }
    Ok(live != *wanted)
}

/// Turn on forwarding for packets arriving on `interface` (a hub routes
/// between spokes, a member serving subnets into them); whether it was
/// off. IPv4 forwards by the incoming interface's setting, so nothing else
/// of the node starts routing (replies from a served subnet need its own
/// interface's forwarding, which is the node's to set). IPv6 forwards only
/// by the node-wide setting, which the agent leaves alone: it says so when
/// it is off.
fn enable_forwarding(interface: &str, v6: bool) -> Result<bool, WireguardError> {
    if v6 {
        let all = "/proc/sys/net/ipv6/conf/all/forwarding";
        if std::fs::read_to_string(all).is_ok_and(|v| v.trim() == "0") {
            tracing::warn!(
                interface,
                setting = all,
                "this node forwards for its IPv6 mesh, but IPv6 forwarding is off node-wide: set net.ipv6.conf.all.forwarding=1"
            );
        }
    }
    let family = if v6 { "ipv6" } else { "ipv4" };
    let path = PathBuf::from(format!(
        "/proc/sys/net/{family}/conf/{interface}/forwarding"
    ));
    let err = |source| WireguardError::Forwarding {
        path: path.clone(),
        source,
    };
    if std::fs::read_to_string(&path).map_err(err)?.trim() == "1" {
        return Ok(false);
    }
    std::fs::write(&path, "1\n").map_err(err)?;
    Ok(true)
}

/// What [`apply`] wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    pub diff: PeerDiff,
    pub private_key: bool,
    pub listen_port: bool,
    pub address: bool,
    pub link_up: bool,
    pub routes: bool,
    pub forwarding: bool,
}

impl Applied {
    pub fn is_empty(&self) -> bool {
        self.diff.is_empty()
            && !self.private_key
            && !self.listen_port
            && !self.address
            && !self.link_up
            && !self.routes
            && !self.forwarding
    }
}

fn builder(peer: &Peer) -> PeerConfigBuilder {
    let mut b = PeerConfigBuilder::new(&Key(peer.public_key.0)).replace_allowed_ips();
    if let Some(e) = peer.endpoint {
        b = b.set_endpoint(e);
    }
    b = b.set_persistent_keepalive_interval(peer.keepalive.unwrap_or(0));
    for ip in &peer.allowed_ips {
        b = b.add_allowed_ip(ip.addr(), ip.prefix_len());
    }
    b
}

/// Make the live interface what `desired` says, writing only what differs:
/// the private key and listen port when they differ, the peers of
/// [`peer_diff`], the address, and the link state. A userspace interface
/// must already run (this agent does not start one); a kernel interface is
/// created when missing.
pub fn apply(desired: &Desired, backend: WireguardBackend) -> Result<Applied, WireguardError> {
    let interface = desired.interface.as_str();
    let name = interface_name(interface)?;
    let peers = resolve(&desired.peers)?;
    let live = read(interface, backend)?;
    let diff = peer_diff(&peers, &live.configs());
    let mut applied = Applied {
        private_key: live.public_key != Some(desired.public_key),
        listen_port: desired
            .listen_port
            .is_some_and(|p| live.listen_port != Some(p)),
        ..Applied::default()
    };
    write_device(&name, desired, backend, !live.exists, &applied, &diff)?;
    let (up, addresses) = if live.exists {
        (live.up, live.addresses.clone())
    } else {
        link(interface)?
    };
    applied.address = set_address(interface, desired.address, &addresses)?;
    if !up {
        ip(&["link", "set", "dev", interface, "up"])?;
        applied.link_up = true;
    }
    // Routes need the link up; an unchanged interface lists them once.
    applied.routes = sync_routes(interface, &desired.routes)?;
    if desired.forward {
        applied.forwarding = enable_forwarding(interface, desired.address.addr().is_ipv6())?;
    }
    applied.diff = diff;
    log_applied(desired, backend, &applied, true);
    Ok(applied)
}

/// [`apply`] for an interface this agent configured as `previous` (its
/// last successful write): the peers to write come from comparing the two
/// meshes, so nothing is read from the interface and an added peer costs
/// the same in a mesh of five or five thousand. Only the peers that change
/// are resolved. What someone else changed since is drift, which the drift
/// check reads the interface for. A different interface, key or port is a
/// whole [`apply`].
pub fn apply_since(
    previous: &Desired,
    desired: &Desired,
    backend: WireguardBackend,
) -> Result<Applied, WireguardError> {
    if previous.interface != desired.interface
        || previous.public_key != desired.public_key
        || previous.listen_port != desired.listen_port
    {
        return apply(desired, backend);
    }
    let interface = desired.interface.as_str();
    let name = interface_name(interface)?;
    let diff = mesh_diff(&previous.peers, &desired.peers)?;
    let mut applied = Applied::default();
    write_device(&name, desired, backend, false, &applied, &diff)?;
    if previous.address != desired.address {
        applied.address = set_address(interface, desired.address, &[previous.address])?;
    }
    // Routes go with the link (a link bounced loses them): looked at
    // whenever the mesh has any.
    if previous.routes != desired.routes || !desired.routes.is_empty() {
        applied.routes = sync_routes(interface, &desired.routes)?;
    }
    if desired.forward && !previous.forward {
        applied.forwarding = enable_forwarding(interface, desired.address.addr().is_ipv6())?;
    }
    applied.diff = diff;
    log_applied(desired, backend, &applied, false);
    Ok(applied)
}

/// The peers that differ between two meshes' peer lists, the changed ones
/// resolved (each list of the result sorted by public key).
pub fn mesh_diff(previous: &[MeshPeer], desired: &[MeshPeer]) -> Result<PeerDiff, WireguardError> {
    let before: BTreeMap<WgKey, &MeshPeer> = previous.iter().map(|p| (p.public_key, p)).collect();
    let after: BTreeMap<WgKey, &MeshPeer> = desired.iter().map(|p| (p.public_key, p)).collect();
    let mut diff = PeerDiff::default();
    for (key, p) in &after {
        match before.get(key) {
            None => diff.add.extend(resolve(std::slice::from_ref(*p))?),
            Some(old) if old != p => diff.update.extend(resolve(std::slice::from_ref(*p))?),
            Some(_) => {}
        }
    }
    diff.remove = before
        .keys()
        .filter(|k| !after.contains_key(*k))
        .copied()
        .collect();
    Ok(diff)
}

/// Write the key and port `applied` says changed and the peers of `diff`,
/// in as few requests as the backend allows.
fn write_device(
    name: &InterfaceName,
    desired: &Desired,
    backend: WireguardBackend,
    create: bool,
    applied: &Applied,
    diff: &PeerDiff,
) -> Result<(), WireguardError> {
    let mut update = DeviceUpdate::new();
    if applied.private_key {
        update = update.set_private_key(Key(desired.private_key.0));
    }
    if let (true, Some(port)) = (applied.listen_port, desired.listen_port) {
        update = update.set_listen_port(port);
    }
    for key in &diff.remove {
        update = update.remove_peer_by_key(&Key(key.0));
    }
    let mut adds: Vec<&Peer> = diff.update.iter().chain(&diff.add).collect();
    let send = |update: DeviceUpdate| {
        update
            .apply(name, backend_of(backend))
            .map_err(|source| WireguardError::Device {
                interface: desired.interface.clone(),
                backend: backend_name(backend),
                action: "configuring",
                source,
            })
    };
    let settings = applied.private_key || applied.listen_port;
    if backend == WireguardBackend::Userspace {
        // boringtun 0.7 reads one request's peer sections into the same
        // variables without resetting them: `remove` and `endpoint` carry
        // over to every section after the one that set them. So a changed
        // peer is removed in a first request (key, port and removals, where
        // carrying `remove` over is harmless) and added back in a second,
        // peers without an endpoint first (nothing to inherit yet), each
        // later one setting its own.
        for peer in &diff.update {
            update = update.remove_peer_by_key(&Key(peer.public_key.0));
        }
        if create || settings || !diff.remove.is_empty() || !diff.update.is_empty() {
            send(update)?;
        }
        adds.sort_by_key(|p| p.endpoint.is_some());
        if !adds.is_empty() {
            send(
                adds.iter()
                    .fold(DeviceUpdate::new(), |u, p| u.add_peer(builder(p))),
            )?;
        }
    } else {
        for peer in adds {
            update = update.add_peer(builder(peer));
        }
        if create || settings || !diff.is_empty() {
            send(update)?;
        }
    }
    Ok(())
}

/// Give `interface` the address `wanted` and take `current`'s others off;
/// whether anything changed.
fn set_address(interface: &str, wanted: IpNet, current: &[IpNet]) -> Result<bool, WireguardError> {
    let mut changed = false;
    if !current.contains(&wanted) {
        ip(&["address", "replace", &wanted.to_string(), "dev", interface])?;
        changed = true;
    }
    for other in current.iter().filter(|a| **a != wanted) {
        ip(&["address", "del", &other.to_string(), "dev", interface])?;
        changed = true;
    }
    Ok(changed)
}

fn log_applied(desired: &Desired, backend: WireguardBackend, applied: &Applied, read_live: bool) {
    let diff = &applied.diff;
    tracing::info!(
        interface = %desired.interface,
        mesh = %desired.mesh,
        backend = backend_name(backend),
        read_live,
        added = diff.add.len(),
        removed = diff.remove.len(),
        changed = diff.update.len(),
        unchanged = desired.peers.len() - diff.add.len() - diff.update.len(),
        private_key = applied.private_key,
        listen_port = applied.listen_port,
        address = applied.address,
        link_up = applied.link_up,
        routes = applied.routes,
        forwarding = applied.forwarding,
        "wireguard interface configured"
    );
}

fn digest(text: &str) -> String {
    format!("{:x}", Sha256::digest(text.as_bytes()))
}

/// How the live interface differs from `desired` (whose peers `peers` are,
/// resolved). Each entry's path is `wireguard/<interface>/…`: `public-key`,
/// `listen-port`, `address`, `link`, or `peers/<base64 key>` (standard
/// base64, as `wg` prints it, so it may hold a `/`); the digests are SHA-256
/// of the setting's canonical text, absent on the side that lacks it.
pub fn drift(desired: &Desired, peers: &[Peer], live: &Live) -> Vec<Drift> {
    let base = format!("wireguard/{}", desired.interface);
    let mut out = Vec::new();
    let mut entry = |path: String, expected: Option<String>, found: Option<String>| {
        out.push(Drift {
            path,
            expected_sha256: expected.map(|t| digest(&t)),
            found_sha256: found.map(|t| digest(&t)),
        });
    };
    if live.public_key != Some(desired.public_key) {
        entry(
            format!("{base}/public-key"),
            Some(desired.public_key.to_string()),
            live.public_key.map(|k| k.to_string()),
        );
    }
    if let Some(port) = desired.listen_port {
        if live.listen_port != Some(port) {
            entry(
                format!("{base}/listen-port"),
                Some(port.to_string()),
                live.listen_port.map(|p| p.to_string()),
            );
        }
    }
    let diff = peer_diff(peers, &live.configs());
    let live_by_key: BTreeMap<WgKey, &LivePeer> = live
        .peers
        .iter()
        .map(|p| (p.config.public_key, p))
        .collect();
    for p in &diff.add {
        entry(
            format!("{base}/peers/{}", p.public_key),
            Some(p.canonical()),
            None,
        );
    }
    for p in &diff.update {
        entry(
            format!("{base}/peers/{}", p.public_key),
            Some(p.canonical()),
            live_by_key.get(&p.public_key).map(|l| l.config.canonical()),
        );
    }
    for k in &diff.remove {
        entry(
            format!("{base}/peers/{k}"),
            None,
            live_by_key.get(k).map(|l| l.config.canonical()),
        );
    }
    if live.addresses != [desired.address] {
        let found: Vec<String> = live.addresses.iter().map(IpNet::to_string).collect();
        entry(
            format!("{base}/address"),
            Some(desired.address.to_string()),
            (!found.is_empty()).then(|| found.join(",")),
        );
    }
    if !live.up {
        entry(
            format!("{base}/link"),
            Some("up".to_owned()),
            live.exists.then(|| "down".to_owned()),
        );
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

/// How the routes this agent installed to the interface differ from
/// `desired`'s: one entry, `wireguard/<interface>/routes`, with digests of
/// the sorted lists (absent on the side that has none).
pub fn route_drift(desired: &Desired, installed: &BTreeSet<IpNet>) -> Option<Drift> {
    let text = |r: &BTreeSet<IpNet>| {
        r.iter()
            .map(IpNet::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    };
    (*installed != desired.routes).then(|| Drift {
        path: format!("wireguard/{}/routes", desired.interface),
        expected_sha256: (!desired.routes.is_empty()).then(|| digest(&text(&desired.routes))),
        found_sha256: (!installed.is_empty()).then(|| digest(&text(installed))),
    })
}

/// The live interface as a status report shows it.
pub fn status(
    interface: &str,
    backend: WireguardBackend,
) -> Result<WireguardStatus, WireguardError> {
    Ok(report(interface, &read(interface, backend)?))
}

/// The backend to read a monitored interface with: the one agent.kdl
/// names, else the kernel's where its module is loaded, else userspace.
pub fn monitor_backend(named: Option<WireguardBackend>) -> WireguardBackend {
    named.unwrap_or_else(|| {
        if Path::new("/sys/module/wireguard").exists() {
            WireguardBackend::Kernel
        } else {
            WireguardBackend::Userspace
        }
    })
}

/// `now`'s reading of a monitored interface with each peer's rates since
/// `before` (the previous reading and when it was taken) and whether it is
/// stale: no handshake, or the latest more than `stale_after` ago.
pub fn monitored(
    mut now_status: WireguardStatus,
    now: DateTime<Utc>,
    before: Option<&(DateTime<Utc>, WireguardStatus)>,
    stale_after: chrono::Duration,
) -> WireguardStatus {
    for peer in &mut now_status.peers {
        peer.stale = peer
            .latest_handshake
            .is_none_or(|at| now.signed_duration_since(at) > stale_after);
        let Some((then, earlier)) = before else {
            continue;
        };
        let Some(old) = earlier
            .peers
            .iter()
            .find(|p| p.public_key == peer.public_key)
        else {
            continue;
        };
        let millis = now.signed_duration_since(*then).num_milliseconds();
        let Ok(millis) = u64::try_from(millis) else {
            continue;
        };
        if millis == 0 {
            continue;
        }
        // Counters that went down belong to a new session: no rate.
        let rate = |new: u64, old: u64| {
            new.checked_sub(old)
                .map(|d| d.saturating_mul(1000) / millis)
        };
        peer.rx_bytes_per_second = rate(peer.rx_bytes, old.rx_bytes);
        peer.tx_bytes_per_second = rate(peer.tx_bytes, old.tx_bytes);
    }
    now_status
}

pub fn report(interface: &str, live: &Live) -> WireguardStatus {
    WireguardStatus {
        interface: interface.to_owned(),
        public_key: live.public_key.map(|k| k.to_string()).unwrap_or_default(),
        listen_port: live.listen_port,
        peers: live
            .peers
            .iter()
            .map(|p| PeerStatus {
                public_key: p.config.public_key.to_string(),
                endpoint: p.config.endpoint.map(|e| e.to_string()),
                allowed_ips: p.config.allowed_ips.iter().map(IpNet::to_string).collect(),
                latest_handshake: p.latest_handshake,
                rx_bytes: p.rx_bytes,
                tx_bytes: p.tx_bytes,
                persistent_keepalive_seconds: p.config.keepalive,
                rx_bytes_per_second: None,
                tx_bytes_per_second: None,
                stale: false,
            })
            .collect(),
        next_public_key: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gitfleet_schemas::bundle::MeshMember;
    use gitfleet_schemas::mesh::Topology;
    use proptest::prelude::*;

    fn private(n: u8) -> PrivateKey {
        PrivateKey::from_bytes([n; 32])
    }

    fn reading(peers: &[(&str, Option<i64>, u64, u64)], at: DateTime<Utc>) -> WireguardStatus {
        WireguardStatus {
            interface: "wg0".into(),
            public_key: "k".into(),
            listen_port: Some(51820),
            peers: peers
                .iter()
                .map(|(key, ago, rx, tx)| PeerStatus {
                    public_key: (*key).to_owned(),
                    endpoint: None,
                    allowed_ips: Vec::new(),
                    latest_handshake: ago.map(|s| at - chrono::Duration::seconds(s)),
                    rx_bytes: *rx,
                    tx_bytes: *tx,
                    persistent_keepalive_seconds: None,
                    rx_bytes_per_second: None,
                    tx_bytes_per_second: None,
                    stale: false,
                })
                .collect(),
            next_public_key: None,
        }
    }

    #[test]
    fn a_monitored_peer_gets_rates_between_readings_and_is_stale_past_the_threshold() {
        use chrono::TimeZone as _;
        let t0 = Utc.with_ymd_and_hms(2026, 12, 3, 12, 0, 0).unwrap();
        let t1 = t0 + chrono::Duration::seconds(10);
        let limit = chrono::Duration::seconds(180);
        let first = monitored(
            reading(&[("a", Some(5), 1000, 500), ("b", None, 0, 0)], t0),
            t0,
            None,
            limit,
        );
        assert_eq!(first.peers[0].rx_bytes_per_second, None);
        assert!(!first.peers[0].stale);
        assert!(first.peers[1].stale, "never handshaken");
        let before = (t0, first);
        let second = monitored(
            reading(
                &[("a", Some(181), 11_000, 400), ("b", Some(1), 100, 100)],
                t1,
            ),
            t1,
            Some(&before),
            limit,
        );
        let a = &second.peers[0];
        assert_eq!(a.rx_bytes_per_second, Some(1000));
        assert_eq!(a.tx_bytes_per_second, None, "a counter that went down");
        assert!(a.stale);
        assert_eq!(second.peers[1].rx_bytes_per_second, Some(10));
        assert!(!second.peers[1].stale);
    }

    fn member(n: u8, node: &str, endpoint: Option<&str>) -> MeshMember {
        MeshMember {
            node: node.to_owned(),
            public_key: private(n).public().to_string(),
            endpoint: endpoint.map(str::to_owned),
            address: format!("10.40.0.{n}/24"),
            allowed_ips: vec![format!("10.40.0.{n}/32")],
            routes: Vec::new(),
            hub: false,
            external: false,
        }
    }

    fn mesh(members: Vec<MeshMember>) -> MeshBundle {
        MeshBundle {
            format: MESH_FORMAT,
            mesh: "core".to_owned(),
            interface: "wg-core".to_owned(),
            listen_port: Some(51820),
            persistent_keepalive_seconds: Some(25),
            topology: Topology::FullMesh,
            members,
        }
    }

    fn three() -> MeshBundle {
        mesh(vec![
            member(1, "a", Some("192.168.7.1:51820")),
            member(2, "b", Some("b.example.invalid:51820")),
            member(3, "c", None),
        ])
    }

    #[test]
    fn a_member_peers_with_every_other_member() {
        let d = desired(&three(), "b", &private(2), None).unwrap();
        assert_eq!(d.interface, "wg-core");
        assert_eq!(d.address, "10.40.0.2/24".parse::<IpNet>().unwrap());
        assert_eq!(d.listen_port, Some(51820));
        assert_eq!(d.public_key, private(2).public());
        let nodes: Vec<&str> = d.peers.iter().map(|p| p.node.as_str()).collect();
        assert_eq!(nodes, ["a", "c"]);
        assert_eq!(d.peers[0].public_key, private(1).public());
        assert_eq!(d.peers[0].endpoint.as_deref(), Some("192.168.7.1:51820"));
        assert_eq!(d.peers[1].endpoint, None);
        assert_eq!(
            d.peers[1].allowed_ips,
            BTreeSet::from(["10.40.0.3/32".parse().unwrap()])
        );
        assert!(d.peers.iter().all(|p| p.keepalive == Some(25)));
    }

    #[test]
    fn a_spoke_peers_with_its_hub_routes_served_subnets_and_only_hubs_forward() {
        let mut m = three();
        m.topology = Topology::HubAndSpoke;
        m.members[0].hub = true;
        m.members[1].routes = vec!["10.20.0.0/16".to_owned()];
        let spoke = desired(&m, "c", &private(3), None).unwrap();
        let nodes: Vec<&str> = spoke.peers.iter().map(|p| p.node.as_str()).collect();
        assert_eq!(nodes, ["a"]);
        // The mesh's range rides on the interface's own address; the
        // subnet behind b is routed to the interface, through the hub.
        assert_eq!(
            spoke.routes,
            BTreeSet::from(["10.20.0.0/16".parse().unwrap()])
        );
        assert!(!spoke.forward);
        let hub = desired(&m, "a", &private(1), None).unwrap();
        assert_eq!(hub.peers.len(), 2);
        assert!(hub.forward);
        // In a full mesh nobody forwards.
        m.topology = Topology::FullMesh;
        assert!(!desired(&m, "a", &private(1), None).unwrap().forward);
    }

    #[test]
    fn a_rotated_key_becomes_current_when_listed_and_a_rollback_brings_the_old_one_back() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = |n: &str| dir.path().join(n);
        let (old, _) = PrivateKey::read_or_create(&path(WIREGUARD_KEY)).unwrap();
        assert_eq!(next_public_key(dir.path()), None);
        let (new, made) = PrivateKey::read_or_create(&path(WIREGUARD_KEY_NEXT)).unwrap();
        assert!(made);
        assert_eq!(next_public_key(dir.path()), Some(new.public().to_string()));
        // The mesh still lists the old key: nothing moves.
        let (k, slot) = key_for(dir.path(), &old.public().to_string())
            .unwrap()
            .unwrap();
        assert_eq!((k.public(), slot), (old.public(), KeySlot::Current));
        assert!(path(WIREGUARD_KEY_NEXT).exists());
        // It lists the new one: rotated, the old one kept (0600).
        let (k, slot) = key_for(dir.path(), &new.public().to_string())
            .unwrap()
            .unwrap();
        assert_eq!((k.public(), slot), (new.public(), KeySlot::Next));
        assert_eq!(PrivateKey::read(&path(WIREGUARD_KEY)).unwrap(), new);
        let kept = archived(dir.path(), old.public());
        assert_eq!(PrivateKey::read(&kept).unwrap(), old);
        let mode = std::fs::metadata(&kept).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(next_public_key(dir.path()), None);
        // A pending rotation made after that one...
        let (newer, _) = PrivateKey::read_or_create(&path(WIREGUARD_KEY_NEXT)).unwrap();
        // ...survives a bundle from before the first rotation: the old key
        // is back, nothing lost.
        let (_, slot) = key_for(dir.path(), &old.public().to_string())
            .unwrap()
            .unwrap();
        assert_eq!(slot, KeySlot::Earlier);
        assert_eq!(PrivateKey::read(&path(WIREGUARD_KEY)).unwrap(), old);
        assert_eq!(
            next_public_key(dir.path()),
            Some(newer.public().to_string())
        );
        let (_, slot) = key_for(dir.path(), &new.public().to_string())
            .unwrap()
            .unwrap();
        assert_eq!(slot, KeySlot::Earlier);
        // A key the node never had, or no key at all.
        assert!(key_for(dir.path(), &private(9).public().to_string())
            .unwrap()
            .is_none());
        assert!(key_for(dir.path(), "not a key").unwrap().is_none());
    }

    #[test]
    fn routes_missing_or_extra_on_the_interface_are_drift() {
        let mut m = three();
        m.members[1].routes = vec!["10.20.0.0/16".to_owned()];
        let d = desired(&m, "a", &private(1), None).unwrap();
        let net = |s: &str| s.parse::<IpNet>().unwrap();
        assert_eq!(
            route_drift(&d, &BTreeSet::from([net("10.20.0.0/16")])),
            None
        );
        let missing = route_drift(&d, &BTreeSet::new()).unwrap();
        assert_eq!(missing.path, "wireguard/wg-core/routes");
        assert!(missing.expected_sha256.is_some() && missing.found_sha256.is_none());
        let extra = route_drift(
            &d,
            &BTreeSet::from([net("10.20.0.0/16"), net("10.99.0.0/16")]),
        )
        .unwrap();
        assert!(extra.found_sha256.is_some());
    }

    #[test]
    fn the_agent_config_names_the_interface() {
        let d = desired(&three(), "a", &private(1), Some("wg-a")).unwrap();
        assert_eq!(d.interface, "wg-a");
        let e = desired(&three(), "a", &private(1), Some("a-name-far-too-long")).unwrap_err();
        assert!(
            e.to_string().contains("not a valid Linux interface name"),
            "{e}"
        );
    }

    #[test]
    fn a_node_that_is_not_a_member_is_refused() {
        let e = desired(&three(), "d", &private(4), None).unwrap_err();
        assert_eq!(e.to_string(), "node `d` is not a member of mesh `core`");
    }

    #[test]
    fn a_mesh_listing_another_key_for_this_node_is_refused() {
        let e = desired(&three(), "a", &private(9), None).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("mesh `core` lists node `a` with public key"),
            "{e}"
        );
    }

    #[test]
    fn bad_members_are_refused_with_the_member_and_field_named() {
        let mut m = three();
        m.members[2].allowed_ips = vec!["10.40.0.300/32".into()];
        let e = desired(&m, "a", &private(1), None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "mesh `core`, member `c`: allowed ip `10.40.0.300/32` is not a CIDR range"
        );
        let mut m = three();
        m.members[1].endpoint = Some("no-port".into());
        let e = desired(&m, "a", &private(1), None).unwrap_err();
        assert!(
            e.to_string()
                .contains("endpoint `no-port` is not `host:port`"),
            "{e}"
        );
        let mut m = three();
        m.members[2].public_key = m.members[1].public_key.clone();
        let e = desired(&m, "a", &private(1), None).unwrap_err();
        assert!(e.to_string().contains("is also the key of `b`"), "{e}");
        let mut m = three();
        m.format = 2;
        assert!(desired(&m, "a", &private(1), None).is_err());
    }

    #[test]
    fn allowed_ips_are_compared_without_host_bits_and_zero_keepalive_is_off() {
        let mut m = three();
        m.members[2].allowed_ips = vec!["10.50.0.7/24".into()];
        m.persistent_keepalive_seconds = Some(0);
        let d = desired(&m, "a", &private(1), None).unwrap();
        assert_eq!(
            d.peers[1].allowed_ips,
            BTreeSet::from(["10.50.0.0/24".parse().unwrap()])
        );
        assert_eq!(d.peers[1].keepalive, None);
    }

    #[test]
    fn endpoints_must_be_host_and_port() {
        for ok in ["1.2.3.4:5", "[::1]:51820", "wg.example.com:51820"] {
            assert!(endpoint_ok(ok), "{ok}");
        }
        for bad in [
            "1.2.3.4",
            ":51820",
            "host:0",
            "host:99999",
            "a b:1",
            "::1:51820",
        ] {
            assert!(!endpoint_ok(bad), "{bad}");
        }
    }

    fn peer(n: u8, endpoint: Option<&str>, ips: &[&str], keepalive: Option<u16>) -> Peer {
        Peer {
            public_key: private(n).public(),
            endpoint: endpoint.map(|e| e.parse().unwrap()),
            allowed_ips: ips.iter().map(|i| i.parse().unwrap()).collect(),
            keepalive,
        }
    }

    #[test]
    fn the_diff_names_only_peers_that_differ() {
        let live = vec![
            peer(1, Some("10.0.0.1:1"), &["10.40.0.1/32"], Some(25)),
            peer(2, Some("10.0.0.2:1"), &["10.40.0.2/32"], Some(25)),
            peer(3, None, &["10.40.0.3/32"], None),
        ];
        let desired = vec![
            peer(1, Some("10.0.0.1:1"), &["10.40.0.1/32"], Some(25)),
            peer(2, Some("10.0.0.9:1"), &["10.40.0.2/32"], Some(25)),
            peer(4, None, &["10.40.0.4/32"], Some(25)),
        ];
        let diff = peer_diff(&desired, &live);
        assert_eq!(diff.add, vec![desired[2].clone()]);
        assert_eq!(diff.update, vec![desired[1].clone()]);
        assert_eq!(diff.remove, vec![live[2].public_key]);
        assert!(peer_diff(&live, &live).is_empty());
    }

    #[test]
    fn an_endpoint_the_mesh_leaves_open_may_be_anything() {
        let desired = vec![peer(1, None, &["10.40.0.1/32"], None)];
        let roamed = vec![peer(1, Some("10.9.9.9:4000"), &["10.40.0.1/32"], None)];
        assert!(peer_diff(&desired, &roamed).is_empty());
        let pinned = vec![peer(1, Some("10.0.0.1:1"), &["10.40.0.1/32"], None)];
        assert_eq!(peer_diff(&pinned, &roamed).update, pinned);
    }

    fn live_of(peers: Vec<Peer>) -> Live {
        Live {
            exists: true,
            public_key: Some(private(1).public()),
            listen_port: Some(51820),
            peers: peers
                .into_iter()
                .map(|config| LivePeer {
                    config,
                    latest_handshake: None,
                    rx_bytes: 10,
                    tx_bytes: 20,
                })
                .collect(),
            addresses: vec!["10.40.0.1/24".parse().unwrap()],
            up: true,
        }
    }

    #[test]
    fn drift_names_each_difference_by_path() {
        let d = desired(&three(), "a", &private(1), Some("wg-a")).unwrap();
        let mut peers = resolve(&d.peers[1..]).unwrap();
        peers.push(peer(2, Some("10.0.0.2:51820"), &["10.40.0.2/32"], Some(25)));
        let mut live = live_of(peers.clone());
        assert_eq!(drift(&d, &peers, &live), Vec::new());

        live.peers.remove(0);
        live.peers[0].config.keepalive = None;
        live.peers.push(LivePeer {
            config: peer(7, None, &["10.40.0.7/32"], None),
            latest_handshake: None,
            rx_bytes: 0,
            tx_bytes: 0,
        });
        live.listen_port = Some(4000);
        live.public_key = Some(private(5).public());
        live.addresses.push("10.99.0.1/24".parse().unwrap());
        live.up = false;
        let found = drift(&d, &peers, &live);
        let paths: Vec<&str> = found.iter().map(|d| d.path.as_str()).collect();
        let mut want = vec![
            "wireguard/wg-a/address".to_owned(),
            "wireguard/wg-a/link".to_owned(),
            "wireguard/wg-a/listen-port".to_owned(),
            format!("wireguard/wg-a/peers/{}", private(2).public()),
            format!("wireguard/wg-a/peers/{}", private(3).public()),
            format!("wireguard/wg-a/peers/{}", private(7).public()),
            "wireguard/wg-a/public-key".to_owned(),
        ];
        want.sort();
        assert_eq!(paths, want);
        let by_path = |p: String| found.iter().find(|d| d.path == p).unwrap().clone();
        let missing = by_path(format!("wireguard/wg-a/peers/{}", private(3).public()));
        assert!(missing.expected_sha256.is_some() && missing.found_sha256.is_none());
        let extra = by_path(format!("wireguard/wg-a/peers/{}", private(7).public()));
        assert!(extra.expected_sha256.is_none() && extra.found_sha256.is_some());
        let changed = by_path(format!("wireguard/wg-a/peers/{}", private(2).public()));
        assert!(changed.expected_sha256.is_some() && changed.found_sha256.is_some());
        assert_ne!(changed.expected_sha256, changed.found_sha256);
    }

    #[test]
    fn a_status_report_shows_peers_and_counters() {
        let live = live_of(vec![peer(
            2,
            Some("10.0.0.2:51820"),
            &["10.40.0.2/32"],
            Some(25),
        )]);
        let s = report("wg-a", &live);
        assert_eq!(s.interface, "wg-a");
        assert_eq!(s.public_key, private(1).public().to_string());
        assert_eq!(s.peers[0].endpoint.as_deref(), Some("10.0.0.2:51820"));
        assert_eq!(s.peers[0].allowed_ips, ["10.40.0.2/32"]);
        assert_eq!((s.peers[0].rx_bytes, s.peers[0].tx_bytes), (10, 20));
        assert_eq!(s.peers[0].persistent_keepalive_seconds, Some(25));
    }

    #[test]
    fn a_handshake_boringtun_reports_as_an_age_is_made_a_time() {
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let t = userspace_handshake(5, 0, now).unwrap();
        assert_eq!(t.timestamp(), 1_800_000_000 - 5);
        let t = userspace_handshake(0, 250_000_000, now).unwrap();
        assert_eq!(t.timestamp_millis(), 1_800_000_000_000 - 250);
        let t = userspace_handshake(1_700_000_000, 0, now).unwrap();
        assert_eq!(t.timestamp(), 1_700_000_000);
        assert_eq!(userspace_handshake(0, 0, now), None);
    }

    #[test]
    fn the_private_key_is_clamped_and_never_printed() {
        let k = PrivateKey::from_bytes([0xff; 32]);
        assert_eq!(k.0[0] & 7, 0);
        assert_eq!(k.0[31] & 0xc0, 0x40);
        assert!(!format!("{k:?}").contains(&base64::engine::general_purpose::STANDARD.encode(k.0)));
    }

    #[test]
    fn a_missing_or_malformed_key_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wireguard.key");
        let e = PrivateKey::read(&path).unwrap_err().to_string();
        assert!(e.contains("run `gitfleet-agent enroll` first"), "{e}");
        std::fs::write(&path, "c2hvcnQ=\n").unwrap();
        let e = PrivateKey::read(&path).unwrap_err().to_string();
        assert!(e.ends_with("holds 5 bytes, not 32"), "{e}");
        let k = PrivateKey::from_bytes([3; 32]);
        std::fs::write(
            &path,
            format!(
                "{}\n",
                base64::engine::general_purpose::STANDARD.encode(k.0)
            ),
        )
        .unwrap();
        assert_eq!(PrivateKey::read(&path).unwrap(), k);
    }

    /// What applying `diff` to `live` leaves: removed peers go, changed
    /// peers are replaced, new peers come; every other peer is untouched.
    fn apply_to(live: &[Peer], diff: &PeerDiff) -> Vec<Peer> {
        let written: BTreeSet<WgKey> = diff
            .remove
            .iter()
            .copied()
            .chain(diff.update.iter().map(|p| p.public_key))
            .collect();
        let mut out: Vec<Peer> = live
            .iter()
            .filter(|p| !written.contains(&p.public_key))
            .cloned()
            .collect();
        for p in diff.update.iter().chain(&diff.add) {
            // A peer written without an endpoint keeps the one it had.
            let mut p = p.clone();
            if p.endpoint.is_none() {
                p.endpoint = live
                    .iter()
                    .find(|l| l.public_key == p.public_key)
                    .and_then(|l| l.endpoint);
            }
            out.push(p);
        }
        out
    }

    fn arb_peer() -> impl Strategy<Value = Peer> {
        (
            0u8..6,
            proptest::option::of(0u8..3),
            proptest::collection::btree_set(0u8..4, 0..3),
            proptest::option::of(prop_oneof![Just(25u16), Just(10u16)]),
        )
            .prop_map(|(k, e, ips, keepalive)| Peer {
                public_key: WgKey([k; 32]),
                endpoint: e.map(|e| SocketAddr::from(([192, 168, 0, e], 51820))),
                allowed_ips: ips
                    .into_iter()
                    .map(|i| IpNet::new([10, 40, 0, i].into(), 32).unwrap())
                    .collect(),
                keepalive,
            })
    }

    fn arb_peers() -> impl Strategy<Value = Vec<Peer>> {
        proptest::collection::vec(arb_peer(), 0..6).prop_map(|v| {
            let mut seen = BTreeSet::new();
            v.into_iter()
                .filter(|p| seen.insert(p.public_key))
                .collect()
        })
    }

    proptest! {
        #[test]
        fn applying_the_diff_to_live_gives_desired(desired in arb_peers(), live in arb_peers()) {
            let diff = peer_diff(&desired, &live);
            let after = apply_to(&live, &diff);
            let keys = |v: &[Peer]| v.iter().map(|p| p.public_key).collect::<BTreeSet<_>>();
            prop_assert_eq!(keys(&after), keys(&desired));
            for d in &desired {
                let a = after.iter().find(|a| a.public_key == d.public_key).unwrap();
                prop_assert!(d.satisfied_by(a), "{:?} not satisfied by {:?}", d, a);
            }
            prop_assert!(peer_diff(&desired, &after).is_empty());
            // Peers the diff does not name are the live ones, untouched.
            for l in &live {
                let named = diff.remove.contains(&l.public_key)
                    || diff.update.iter().any(|u| u.public_key == l.public_key);
                if !named {
                    prop_assert!(after.contains(l));
                }
            }
            // Only live peers are removed or changed; only new ones added.
            prop_assert!(diff.add.iter().all(|p| !keys(&live).contains(&p.public_key)));
            prop_assert!(diff.update.iter().all(|p| keys(&live).contains(&p.public_key)));
            prop_assert!(diff.remove.iter().all(|k| !keys(&desired).contains(k)));
        }
    }
}
