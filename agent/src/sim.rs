//! A simulated node for `gitfleet simulate`: the real agent's decisions
//! ([`crate::core::Agent`]) over a [`Node`] that keeps everything in memory.
//!
//! Activating a bundle (a Sentinel config or a WireGuard mesh) takes
//! [`SimSettings::apply_latency`] and always succeeds; with a failure rate
//! `P`, the node is then unhealthy on that bundle when a hash of (node,
//! bundle digest) falls in the lowest `P` of its range. The same node and
//! bundle fail on every run, so a simulation is reproducible; a node becomes
//! healthy again as soon as it replaces the failing bundle by one that is
//! not failing for it (such as the previous one, after an automatic
//! rollback). With `P` = 1 every bundle fails, the previous one included.
//! System metrics are fixed, plausible values. The proxy's traffic is not
//! a ready-made rate: each node's simulated proxy counts requests (a steady
//! rate of its own) into the same `sentinel_requests_total` counters and
//! `sentinel_request_duration_seconds` histogram a real Sentinel serves,
//! and the agent reads them through the same Prometheus text and window
//! code ([`crate::traffic`]). While healthy almost every request succeeds
//! quickly; while failing, a third answer 502 and they are slow, so health
//! gates can pass or trip.
//!
//! With a state directory ([`SimNode::persist_to`]) each node's
//! [`LocalState`] is kept as `<dir>/<node>.json`, in the real agent's
//! `state.json` format, and `<dir>/<node>.unhealthy` names the kinds of
//! bundle the node was unhealthy on, so the next simulation resumes where
//! this one stopped.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use gitfleet_schemas::agent::{LocalState, LOCAL_STATE_FORMAT};
use gitfleet_schemas::bundle::{BundleKind, MeshBundle, MESH_FILE};
use gitfleet_schemas::fleet::DriftPolicy;
use gitfleet_schemas::status::{Drift, HttpCheckResult, Metrics, PeerStatus, WireguardStatus};
use gitfleet_schemas::trust::{BundleRef, ChannelCheck};
use gitfleet_schemas::verify::{sha256_hex, BundleHead, Limits, Verified};

use crate::core::{FetchError, Node, NodeError};
use crate::traffic::Sample;

/// The deterministic node key of a simulated node: the first 32 bytes of
/// SHA-256 over `gitfleet-simulator`, a zero byte and the node id.
///
/// For simulations only: anyone can compute it from the node's name, so a
/// fleet whose `nodes/<id>.kdl` names this key trusts reports anyone could
/// sign. Real nodes generate their key with `gitfleet-agent enroll`.
pub fn sim_key(node: &str) -> SigningKey {
    let mut input = b"gitfleet-simulator\0".to_vec();
    input.extend_from_slice(node.as_bytes());
    SigningKey::from_bytes(&hash_bytes(&input))
}

/// SHA-256 of `input` as bytes.
fn hash_bytes(input: &[u8]) -> [u8; 32] {
    let hex = sha256_hex(input);
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        // sha256_hex is 64 lowercase hex digits: both parse.
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2).unwrap_or("00"), 16).unwrap_or(0);
    }
    out
}

/// The first 8 bytes of SHA-256 over the parts, each followed by a zero byte.
fn hash64(parts: &[&str]) -> u64 {
    let mut input = Vec::new();
    for p in parts {
        input.extend_from_slice(p.as_bytes());
        input.push(0);
    }
    let h = hash_bytes(&input);
    u64::from_be_bytes([h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]])
}

/// Whether `node` is unhealthy on the bundle `digest` at `failure_rate`:
/// the same answer on every run for the same inputs. A rate of 0 never
/// fails, 1 always does.
pub fn fails(node: &str, digest: &str, failure_rate: f64) -> bool {
    // 53 bits: exactly representable, so the fraction is in [0, 1).
    let h = hash64(&["gitfleet-simulator-failure", node, digest]) >> 11;
    let fraction = h as f64 / (1u64 << 53) as f64;
    fraction < failure_rate
}

/// How simulated nodes behave.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SimSettings {
    /// How long an activation takes.
    pub apply_latency: Duration,
    /// The fraction of (node, bundle) pairs that are unhealthy once active,
    /// between 0 and 1.
    pub failure_rate: f64,
}

impl Default for SimSettings {
    fn default() -> Self {
        SimSettings {
            apply_latency: Duration::from_millis(200),
            failure_rate: 0.0,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not a simulated node's state: {reason}")]
    Corrupt { path: PathBuf, reason: String },
}

/// A node that runs bundles in memory.
#[derive(Debug)]
pub struct SimNode {
    node: String,
    settings: SimSettings,
    /// The kinds of bundle whose active bundle fails here.
    failing: Vec<BundleKind>,
    activations: u64,
    /// Where state is kept between runs, if anywhere.
    dir: Option<PathBuf>,
    started: Instant,
    /// The mesh bundle activated last in this run, for the simulated
    /// interface's peers.
    mesh: Option<MeshBundle>,
    /// The mesh of the mesh bundle fetched last, parsed from its verified
    /// bytes (the simulator keeps no files).
    fetched_mesh: Option<(BundleRef, Option<MeshBundle>)>,
    /// The simulated proxy's counters, and when they last grew.
    traffic: Sample,
    served_until: Option<Instant>,
}

impl SimNode {
    /// A healthy node that runs nothing yet.
    pub fn new(node: &str, settings: SimSettings) -> Self {
        SimNode {
            node: node.to_owned(),
            settings,
            failing: Vec::new(),
            activations: 0,
            dir: None,
            started: Instant::now(),
            mesh: None,
            fetched_mesh: None,
            traffic: Sample::default(),
            served_until: None,
        }
    }

    /// Serve the requests that arrived since the last call (at least a
    /// second's worth, so a quick test sees traffic) into the counters.
    fn serve(&mut self) {
        let now = Instant::now();
        let seconds = self
            .served_until
            .map_or(1.0, |t| now.duration_since(t).as_secs_f64().max(1.0));
        self.served_until = Some(now);
        let rate = self.spread("requests-per-second", 20.0, 80.0);
        let n = (rate * seconds).round() as u64;
        let base = self.spread("latency", 0.005, 0.05);
        let (errors, slow, status) = if self.failing.contains(&BundleKind::Sentinel) {
            (n / 3, base * 60.0, 502)
        } else {
            (n / 1000, base * 3.0, 500)
        };
        // One in a hundred successes is slow: that is what p99 sees.
        let tail = (n / 100).min(n - errors);
        self.traffic.record("default", 200, base, n - errors - tail);
        self.traffic.record("default", 200, slow, tail);
        self.traffic.record("default", status, slow, errors);
    }

    /// Keep this node's state in `dir` from now on (see the module
    /// documentation), and resume from what it holds: the agent's
    /// [`LocalState`] to start with. A node the directory does not know
    /// starts empty and healthy.
    pub fn persist_to(&mut self, dir: &Path) -> Result<LocalState, SimError> {
        let (state, failing) = load(dir, &self.node)?;
        self.failing = failing;
        self.dir = Some(dir.to_owned());
        Ok(state)
    }

    pub fn id(&self) -> &str {
        &self.node
    }

    pub fn is_healthy(&self) -> bool {
        self.failing.is_empty()
    }

    /// How many bundles this node activated since it was created.
    pub fn activations(&self) -> u64 {
        self.activations
    }

    /// A value in `lo..hi` fixed for this node, so nodes differ but runs
    /// do not.
    fn spread(&self, what: &str, lo: f64, hi: f64) -> f64 {
        let h = hash64(&["gitfleet-simulator-metric", &self.node, what]) >> 11;
        lo + (hi - lo) * (h as f64 / (1u64 << 53) as f64)
    }
}

fn state_path(dir: &Path, node: &str) -> PathBuf {
    dir.join(format!("{node}.json"))
}

fn unhealthy_path(dir: &Path, node: &str) -> PathBuf {
    dir.join(format!("{node}.unhealthy"))
}

fn kind_name(kind: BundleKind) -> &'static str {
    match kind {
        BundleKind::Sentinel => "sentinel",
        BundleKind::WireguardMesh => "wireguard-mesh",
    }
}

/// A node's saved state and failing kinds of bundle in `dir`; empty and
/// healthy when the directory holds nothing for it.
fn load(dir: &Path, node: &str) -> Result<(LocalState, Vec<BundleKind>), SimError> {
    let path = state_path(dir, node);
    let state = match std::fs::read(&path) {
        Ok(bytes) => {
            let state: LocalState =
                serde_json::from_slice(&bytes).map_err(|e| SimError::Corrupt {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
            if state.format != LOCAL_STATE_FORMAT {
                return Err(SimError::Corrupt {
                    path,
                    reason: format!("format {} is not {LOCAL_STATE_FORMAT}", state.format),
                });
            }
            state
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => LocalState {
            format: LOCAL_STATE_FORMAT,
            ..LocalState::default()
        },
        Err(source) => return Err(SimError::Io { path, source }),
    };
    let marker = unhealthy_path(dir, node);
    let failing = match std::fs::read_to_string(&marker) {
        Ok(text) => text
            .lines()
            .map(|line| match line.trim() {
                "sentinel" => Ok(BundleKind::Sentinel),
                "wireguard-mesh" => Ok(BundleKind::WireguardMesh),
                other => Err(SimError::Corrupt {
                    path: marker.clone(),
                    reason: format!("`{other}` is not a kind of bundle"),
                }),
            })
            .collect::<Result<Vec<_>, _>>()?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(source) => {
            return Err(SimError::Io {
                path: marker,
                source,
            })
        }
    };
    Ok((state, failing))
}

/// Why a simulated node could not save its state.
fn saving(e: &dyn std::fmt::Display) -> NodeError {
    NodeError::Other {
        what: "saving the simulated node",
        reason: e.to_string(),
    }
}

impl Node for SimNode {
    /// Read whole and verified in memory, as the simulator keeps no files:
    /// the same verification a real agent does.
    async fn fetch(
        &mut self,
        source: &gitfleet_io::store::Store,
        key: &str,
        target: &BundleRef,
        limits: Limits,
    ) -> Result<Verified<BundleHead>, FetchError> {
        let Some(object) = source.get_at_most(key, target.length).await? else {
            return Err(FetchError::Missing);
        };
        let bundle = gitfleet_schemas::verify::verify_bundle(target, &object.bytes, limits)?;
        if bundle.manifest.kind == BundleKind::WireguardMesh {
            let mesh = bundle
                .files
                .get(MESH_FILE)
                .and_then(|bytes| serde_json::from_slice(bytes).ok());
            self.fetched_mesh = Some((target.clone(), mesh));
        }
        Ok(bundle.into())
    }

    async fn activate(
        &mut self,
        rollout: &str,
        _from: Option<&BundleRef>,
        bundle: &Verified<BundleHead>,
    ) -> Result<(), NodeError> {
        tokio::time::sleep(self.settings.apply_latency).await;
        let digest = &bundle.reference.digest;
        let kind = bundle.manifest.kind;
        self.failing.retain(|k| *k != kind);
        if fails(&self.node, digest, self.settings.failure_rate) {
            tracing::info!(node = %self.node, rollout, bundle = %digest, "simulated failure: unhealthy on this bundle");
            self.failing.push(kind);
        }
        if kind == BundleKind::WireguardMesh {
            self.mesh = self
                .fetched_mesh
                .take()
                .filter(|(r, _)| *r == bundle.reference)
                .and_then(|(_, mesh)| mesh);
        }
        self.activations += 1;
        Ok(())
    }

    fn save(&mut self, state: &LocalState) -> Result<(), NodeError> {
        let Some(dir) = &self.dir else {
            return Ok(());
        };
        let mut bytes = serde_json::to_vec_pretty(state).map_err(|e| saving(&e))?;
        bytes.push(b'\n');
        // A simulated node's state: not worth an fsync per save, which
        // would stall this runtime thread and every agent on it.
        gitfleet_io::write::replace_unsynced(&state_path(dir, &self.node), &bytes)
            .map_err(|e| saving(&e))?;
        let marker = unhealthy_path(dir, &self.node);
        if self.failing.is_empty() {
            match std::fs::remove_file(&marker) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(NodeError::Other {
                    what: "removing the unhealthy marker",
                    reason: format!("{}: {e}", marker.display()),
                }),
            }
        } else {
            let text: String = self
                .failing
                .iter()
                .map(|k| format!("{}\n", kind_name(*k)))
                .collect();
            gitfleet_io::write::replace_unsynced(&marker, text.as_bytes()).map_err(|e| saving(&e))
        }
    }

    fn settle(&mut self, _state: &LocalState) -> Result<(), NodeError> {
        Ok(())
    }

    fn save_root(&mut self, _version: u64, _bytes: &[u8]) -> Result<(), NodeError> {
        // A rotation is found again in the store on the next start.
        Ok(())
    }

    async fn healthy(&mut self) -> bool {
        self.is_healthy()
    }

    async fn drift(
        &mut self,
        _kind: BundleKind,
        _active: &BundleRef,
        _policy: DriftPolicy,
    ) -> Result<Vec<Drift>, NodeError> {
        Ok(Vec::new())
    }

    async fn wireguard(&mut self) -> Option<WireguardStatus> {
        // The interface the last mesh bundle describes, with the peers its
        // topology gives this node: handshakes a little while ago when
        // healthy, traffic growing with uptime at a rate of the node's own.
        let mesh = self.mesh.as_ref()?;
        let me = mesh.members.iter().find(|m| m.node == self.node)?;
        let up = self.started.elapsed().as_secs();
        let now = chrono::Utc::now();
        let peers = gitfleet_policy::mesh::peers_of(mesh, &self.node)
            .into_iter()
            .map(
                |gitfleet_policy::mesh::PeerOf {
                     member: m,
                     allowed_ips,
                 }| {
                    let rate = self.spread(&format!("wg-rate-{}", m.node), 200.0, 4000.0) as u64;
                    let ago = self.spread(&format!("wg-handshake-{}", m.node), 1.0, 110.0) as i64;
                    PeerStatus {
                        public_key: m.public_key.clone(),
                        endpoint: m.endpoint.clone(),
                        allowed_ips,
                        latest_handshake: self
                            .is_healthy()
                            .then(|| now - chrono::Duration::seconds(ago)),
                        rx_bytes: rate * up,
                        tx_bytes: rate * up * 3 / 4,
                        rx_bytes_per_second: None,
                        tx_bytes_per_second: None,
                        stale: false,
                        persistent_keepalive_seconds: mesh.persistent_keepalive_seconds,
                    }
                },
            )
            .collect();
        Some(WireguardStatus {
            interface: mesh.interface.clone(),
            public_key: me.public_key.clone(),
            listen_port: mesh.listen_port,
            peers,
            next_public_key: None,
        })
    }

    async fn monitored(&mut self, _now: chrono::DateTime<chrono::Utc>) -> Vec<WireguardStatus> {
        // A simulated node has no interfaces beside its mesh.
        Vec::new()
    }

    async fn http_check(
        &mut self,
        check: &ChannelCheck,
        _active: Option<&BundleRef>,
    ) -> Vec<HttpCheckResult> {
        // The simulated proxy answers as healthy as the node is, with a
        // body that says so.
        let (status, body): (u16, &[u8]) = if self.is_healthy() {
            (200, b"ok")
        } else {
            (503, b"unhealthy")
        };
        vec![crate::checks::result(check, &check.url, Ok((status, body)))]
    }

    async fn scrape(&mut self, _active: Option<&BundleRef>) -> Option<Result<String, NodeError>> {
        self.serve();
        Some(Ok(self.traffic.render()))
    }

    fn metrics(&mut self) -> Metrics {
        let cpu = if self.is_healthy() {
            self.spread("cpu", 5.0, 35.0)
        } else {
            self.spread("cpu-failing", 90.0, 100.0)
        };
        Metrics {
            cpu_percent: Some(cpu),
            memory_percent: Some(self.spread("memory", 25.0, 55.0)),
            disk_percent: Some(self.spread("disk", 20.0, 60.0)),
            load1: Some(self.spread("load1", 0.1, 1.5)),
            uptime_seconds: Some(self.started.elapsed().as_secs()),
            network_rx_bytes: None,
            network_tx_bytes: None,
            ..Metrics::default()
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use gitfleet_schemas::agent::Slot;

    #[test]
    fn sim_keys_are_fixed_per_node() {
        assert_eq!(sim_key("edge-1").to_bytes(), sim_key("edge-1").to_bytes());
        assert_ne!(sim_key("edge-1").to_bytes(), sim_key("edge-2").to_bytes());
        // Pinned: test fleets are written with these keys.
        let mut input = b"gitfleet-simulator\0".to_vec();
        input.extend_from_slice(b"edge-1");
        assert_eq!(
            sim_key("edge-1")
                .to_bytes()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>(),
            sha256_hex(&input)
        );
    }

    #[test]
    fn failures_follow_the_rate_and_repeat() {
        let digest = format!("sha256:{}", "a".repeat(64));
        let nodes: Vec<String> = (0..2000).map(|i| format!("n{i}")).collect();
        let failing = |rate| nodes.iter().filter(|n| fails(n, &digest, rate)).count();
        assert_eq!(failing(0.0), 0);
        assert_eq!(failing(1.0), nodes.len());
        let tenth = failing(0.1);
        assert!((150..250).contains(&tenth), "{tenth}");
        assert_eq!(failing(0.1), tenth);
        // Another bundle fails on other nodes.
        let other = format!("sha256:{}", "b".repeat(64));
        let both = nodes
            .iter()
            .filter(|n| fails(n, &digest, 0.5) && fails(n, &other, 0.5))
            .count();
        assert!((400..600).contains(&both), "{both}");
    }

    #[test]
    fn state_and_health_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let mut node = SimNode::new("edge-1", SimSettings::default());
        let state = node.persist_to(dir.path()).unwrap();
        assert_eq!(state.format, LOCAL_STATE_FORMAT);
        assert!(state.sentinel.is_none());

        let active = BundleRef {
            digest: format!("sha256:{}", "c".repeat(64)),
            length: 10,
        };
        let state = LocalState {
            serial: Some(7),
            sentinel: Some(Slot {
                rollout: "edge".into(),
                active: active.clone(),
                previous: None,
            }),
            ..state
        };
        node.failing = vec![BundleKind::WireguardMesh, BundleKind::Sentinel];
        node.save(&state).unwrap();

        let mut again = SimNode::new("edge-1", SimSettings::default());
        assert_eq!(again.persist_to(dir.path()).unwrap(), state);
        assert!(!again.is_healthy());
        assert_eq!(again.failing, node.failing);

        again.failing.clear();
        again.save(&state).unwrap();
        let mut third = SimNode::new("edge-1", SimSettings::default());
        third.persist_to(dir.path()).unwrap();
        assert!(third.is_healthy());
    }

    fn signed<T: gitfleet_schemas::trust::Document>(doc: &T, key: &SigningKey) -> Vec<u8> {
        let mut env = doc.envelope();
        env.sign(key).unwrap();
        env.to_json()
    }

    /// A file store with a root, bundles `a` and `b`, and a way to publish
    /// the next manifest.
    struct World {
        dir: tempfile::TempDir,
        online: SigningKey,
        serial: u64,
        /// The fleet settings the next manifest carries.
        settings: Option<gitfleet_schemas::trust::AgentSettings>,
    }

    impl World {
        fn new() -> (World, Verified<gitfleet_schemas::trust::Root>) {
            use gitfleet_schemas::trust::{Document as _, PublicKey, Root};
            let dir = tempfile::tempdir().unwrap();
            let root_key = SigningKey::from_bytes(&[1; 32]);
            let online = SigningKey::from_bytes(&[2; 32]);
            let root = Root {
                fleet: "acme".into(),
                version: 1,
                expires: chrono::Utc::now() + chrono::Duration::days(1),
                root_keys: vec![PublicKey(root_key.verifying_key().to_bytes())],
                root_threshold: 1,
                online_keys: vec![PublicKey(online.verifying_key().to_bytes())],
                online_threshold: 1,
            };
            let mut env = root.envelope();
            env.sign(&root_key).unwrap();
            let root = gitfleet_schemas::verify::verify_first_root(
                &env.to_json(),
                "acme",
                &root.root_keys,
                1,
            )
            .unwrap();
            (
                World {
                    dir,
                    online,
                    serial: 0,
                    settings: None,
                },
                root,
            )
        }

        /// The real agent's decisions over a simulated `edge-1` in prod,
        /// with no state yet, reading this world's store.
        fn agent(
            &self,
            root: Verified<gitfleet_schemas::trust::Root>,
            settings: SimSettings,
        ) -> crate::core::Agent<SimNode> {
            let id = crate::core::Identity {
                node: "edge-1".into(),
                environment: "prod".into(),
                labels: std::collections::BTreeMap::new(),
                drift: DriftPolicy::Report,
                max_bundle_bytes: 1 << 20,
                proxy: gitfleet_schemas::Proxy::legacy(),
            };
            crate::core::Agent::new(
                id,
                gitfleet_io::store::Store::open(&self.url()).unwrap(),
                root,
                sim_key("edge-1"),
                SimNode::new("edge-1", settings),
                LocalState {
                    format: LOCAL_STATE_FORMAT,
                    ..LocalState::default()
                },
            )
        }

        fn url(&self) -> String {
            format!("file://{}", self.dir.path().display())
        }

        fn bundle(&self, text: &str) -> BundleRef {
            use gitfleet_policy::bundle::{build, Input};
            let files = std::collections::BTreeMap::from([(
                "sentinel.kdl".to_owned(),
                text.as_bytes().to_vec(),
            )]);
            let built = build(Input {
                kind: BundleKind::Sentinel,
                name: "edge",
                source_commit: &"1".repeat(40),
                validator: "sentinel-config 0.4.14",
                files: &files,
                sbom: b"{}".to_vec(),
            })
            .unwrap();
            let path = self.dir.path().join(built.reference.object_key().unwrap());
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, &built.bytes).unwrap();
            built.reference
        }

        /// The http check every manifest of this world asks for.
        const HEALTH: &'static str = "http://127.0.0.1:9090/-/health";

        fn publish(&mut self, bundle: &BundleRef, previous: Option<&BundleRef>, threshold: u64) {
            use gitfleet_schemas::trust::{ChannelManifest, ChannelRollout};
            self.serial += 1;
            let manifest = ChannelManifest {
                settings: self.settings.clone(),
                revoked: Vec::new(),
                held: Vec::new(),
                pinned: Vec::new(),
                decommissioned: Vec::new(),
                fleet: "acme".into(),
                environment: "prod".into(),
                serial: self.serial,
                expires: chrono::Utc::now() + chrono::Duration::hours(1),
                rollouts: vec![ChannelRollout {
                    name: "edge".into(),
                    selector: std::collections::BTreeMap::new(),
                    requirements: Vec::new(),
                    nodes: None,
                    bundle: bundle.clone(),
                    previous: previous.cloned(),
                    step: 1,
                    steps: 1,
                    membership_threshold: threshold,
                    http_checks: vec![ChannelCheck {
                        url: Self::HEALTH.into(),
                        expect_status: 200,
                        ..ChannelCheck::default()
                    }],
                    traffic_route: None,
                    // Gates that need 20 requests from each node.
                    min_requests: Some(20),
                    rolled_back: false,
                    proxy: None,
                }],
            };
            let path = self.dir.path().join("channels/prod.json");
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, signed(&manifest, &self.online)).unwrap();
        }
    }

    #[tokio::test]
    async fn the_real_agent_trips_on_a_failing_bundle_and_recovers_on_the_previous() {
        use crate::core::Polled;
        let (mut world, root) = World::new();
        let a = world.bundle("// a\n");
        let b = world.bundle("// b\n");
        let settings = SimSettings {
            apply_latency: Duration::ZERO,
            failure_rate: 0.0,
        };
        let mut agent = world.agent(root, settings);
        let now = chrono::Utc::now();

        world.publish(&a, None, u64::MAX);
        // Before anything runs there is nothing to report early.
        assert!(!agent.evidence_ready().await);
        assert_eq!(
            agent.poll(now).await,
            Polled::Applied {
                serial: 1,
                activated: 1
            }
        );
        let report = agent.report(now).await.unwrap().0;
        assert!(report.healthy);
        assert_eq!(report.rollouts["edge"].active.as_ref(), Some(&a));
        // That report set the new bundle's baseline; once it has served the
        // 20 requests its gates need, the agent reports at once, and only
        // once.
        assert_eq!(report.metrics.requests, Some(0));
        assert!(agent.evidence_ready().await);
        assert!(!agent.evidence_ready().await);
        let check = |status, ok| {
            vec![HttpCheckResult {
                url: World::HEALTH.into(),
                status: Some(status),
                ok,
                check: None,
                detail: None,
            }]
        };
        assert_eq!(report.http_checks, check(200, true));

        // Every bundle fails from now on: the new one makes the node sick.
        agent.node_mut().settings.failure_rate = 1.0;
        world.publish(&b, Some(&a), u64::MAX);
        agent.poll(now).await;
        let report = agent.report(now).await.unwrap().0;
        assert!(!report.healthy);
        assert_eq!(report.rollouts["edge"].active.as_ref(), Some(&b));
        // Traffic on the new bundle counts from its activation on.
        assert_eq!(report.metrics.requests, Some(0));
        let report = agent.report(now).await.unwrap().0;
        assert!(report.metrics.requests.unwrap() >= 20);
        assert!(report.metrics.error_rate.unwrap() > 0.1);
        assert_eq!(report.http_checks, check(503, false));
        // The report is signed with the node's simulator key.
        let bytes = std::fs::read(world.dir.path().join("status/edge-1.json")).unwrap();
        let key = gitfleet_schemas::trust::PublicKey(sim_key("edge-1").verifying_key().to_bytes());
        gitfleet_schemas::verify::verify_status(&bytes, "acme", "edge-1", &key).unwrap();

        // Rolled back: the previous bundle, not failing for this node, heals it.
        agent.node_mut().settings.failure_rate = 0.0;
        world.publish(&b, Some(&a), 0);
        agent.poll(now).await;
        let report = agent.report(now).await.unwrap().0;
        assert!(report.healthy);
        assert_eq!(report.rollouts["edge"].active.as_ref(), Some(&a));
        assert_eq!(agent.node().activations(), 3);

        // Each step is an event, written with the reports, signed by the
        // node: a, b, and back to a.
        // (Today's object, and tomorrow's should the test cross midnight.)
        let mut events = Vec::new();
        for day in [now.date_naive(), now.date_naive() + chrono::Days::new(1)] {
            let path = world
                .dir
                .path()
                .join(gitfleet_schemas::keys::events(day, "edge-1"));
            if let Ok(bytes) = std::fs::read(path) {
                let day =
                    gitfleet_schemas::verify::verify_node_events(&bytes, "acme", "edge-1", &key)
                        .unwrap()
                        .into_inner();
                events.extend(day.events);
            }
        }
        let seen: Vec<(gitfleet_schemas::events::EventKind, Option<&str>)> = events
            .iter()
            .map(|e| (e.kind, e.bundle.as_deref()))
            .collect();
        use gitfleet_schemas::events::EventKind::{Activated, RolledBack};
        assert_eq!(
            seen,
            [
                (Activated, Some(a.digest.as_str())),
                (Activated, Some(b.digest.as_str())),
                (RolledBack, Some(a.digest.as_str())),
            ]
        );
    }

    /// A reconciler stand-in on loopback that answers every request 204
    /// and counts them.
    async fn taking_reports(
        listener: tokio::net::TcpListener,
        taken: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    ) {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            // Read the head, then as many bytes as it says the body has.
            let want = loop {
                let n = conn.read(&mut chunk).await.unwrap_or(0);
                if n == 0 {
                    break None;
                }
                buf.extend_from_slice(&chunk[..n]);
                if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                    let length = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    break Some(end + 4 + length);
                }
            };
            let Some(want) = want else { continue };
            while buf.len() < want {
                let n = conn.read(&mut chunk).await.unwrap_or(0);
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            taken.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _ = conn
                .write_all(b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n")
                .await;
        }
    }

    #[tokio::test]
    async fn an_idle_node_sends_unchanged_reports_to_a_reconciler_and_changes_to_the_store() {
        use crate::core::ReportedTo;
        use gitfleet_schemas::trust::AgentSettings;
        use std::sync::atomic::Ordering;
        let (mut world, root) = World::new();
        let a = world.bundle("// a\n");
        let mut agent = world.agent(root, SimSettings::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let taken = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let server = tokio::spawn(taking_reports(listener, std::sync::Arc::clone(&taken)));
        // The first reconciler listed refuses connections (nothing listens
        // on a fresh port of this test's own): the next one is tried.
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://{}", l.local_addr().unwrap())
        };
        world.settings = Some(AgentSettings {
            idle: true,
            report_to: vec![closed, url],
            ..AgentSettings::default()
        });
        world.publish(&a, None, u64::MAX);
        let mut now = chrono::Utc::now();
        agent.poll(now).await;
        macro_rules! report {
            ($at:expr) => {
                agent.report($at).await.unwrap().1
            };
        }
        // A change (the activation) goes to the store; the next report,
        // the same state with new readings, to the reconciler.
        assert_eq!(report!(now), ReportedTo::Store);
        now += chrono::Duration::minutes(1);
        assert_eq!(report!(now), ReportedTo::Reconciler);
        assert_eq!(taken.load(Ordering::SeqCst), 1);
        // While a rollout moves, the leader reads reports from the store.
        world.settings.as_mut().unwrap().idle = false;
        world.publish(&a, None, u64::MAX);
        agent.poll(now).await;
        now += chrono::Duration::minutes(1);
        assert_eq!(report!(now), ReportedTo::Store);
        now += chrono::Duration::minutes(1);
        assert_eq!(report!(now), ReportedTo::Store);
        // Idle again, with no reconciler answering: the store.
        world.settings.as_mut().unwrap().idle = true;
        world.publish(&a, None, u64::MAX);
        agent.poll(now).await;
        server.abort();
        let _ = server.await;
        now += chrono::Duration::minutes(1);
        assert_eq!(report!(now), ReportedTo::Store);
        now += chrono::Duration::minutes(1);
        assert_eq!(report!(now), ReportedTo::Store);
        assert_eq!(taken.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn the_fleets_health_checks_and_drift_policy_come_from_the_manifest() {
        use gitfleet_schemas::trust::{AgentSettings, ChannelCheck};
        let (mut world, root) = World::new();
        let a = world.bundle("// a\n");
        let mut agent = world.agent(root, SimSettings::default());
        let now = chrono::Utc::now();
        // The simulated proxy answers 200 while healthy; the fleet wants 204.
        let check = "http://127.0.0.1:9000/-/ready";
        world.settings = Some(AgentSettings {
            drift: Some(DriftPolicy::Repair),
            health_checks: vec![ChannelCheck {
                url: check.into(),
                expect_status: 204,
                ..ChannelCheck::default()
            }],
            ..AgentSettings::default()
        });
        world.publish(&a, None, u64::MAX);
        agent.poll(now).await;
        assert_eq!(agent.drift(), DriftPolicy::Repair);
        let report = agent.report(now).await.unwrap().0;
        assert!(!report.healthy);
        let result = report.http_checks.iter().find(|c| c.url == check).unwrap();
        assert_eq!((result.status, result.ok), (Some(200), false));
        // Expecting what it answers, the node is healthy again.
        world.settings.as_mut().unwrap().health_checks[0].expect_status = 200;
        world.publish(&a, None, u64::MAX);
        agent.poll(now).await;
        assert!(agent.report(now).await.unwrap().0.healthy);
        // Without fleet settings, agent.kdl's drift policy stands.
        world.settings = None;
        world.publish(&a, None, u64::MAX);
        agent.poll(now).await;
        assert_eq!(agent.drift(), DriftPolicy::Report);
    }

    #[tokio::test]
    async fn failing_nodes_serve_traffic_that_trips_gates_through_the_real_window_code() {
        let mut node = SimNode::new("edge-1", SimSettings::default());
        let text = |node: &mut SimNode| {
            node.serve();
            Sample::parse(&node.traffic.render()).unwrap()
        };
        let start = text(&mut node);
        let ok = text(&mut node);
        let w = crate::traffic::window(Some(&start), &ok, None);
        assert!(w.requests >= 20, "{w:?}");
        assert!(w.error_rate.unwrap() < 0.005, "{w:?}");
        assert!(w.p99_ms.unwrap() < 250, "{w:?}");
        let m = node.metrics();
        assert!(m.cpu_percent.unwrap() < 80.0);
        assert!(m.memory_percent.unwrap() < 90.0);
        // The simulator reports no ready-made traffic rates.
        assert_eq!(
            (m.error_rate, m.p99_latency_ms, m.requests),
            (None, None, None)
        );
        node.failing.push(BundleKind::Sentinel);
        let bad = text(&mut node);
        let w = crate::traffic::window(Some(&ok), &bad, None);
        assert!(w.error_rate.unwrap() > 0.1, "{w:?}");
        assert!(w.p99_ms.unwrap() > 250, "{w:?}");
        assert!(node.scrape(None).await.is_some());
    }

    /// An HTTP mirror of a store on loopback: serves the files under its
    /// directory by key, with an etag from their bytes and 304 to a
    /// matching `If-None-Match` (with `etags`), as a web server or cache in
    /// front of a store would; records what it answered.
    struct Mirror {
        dir: tempfile::TempDir,
        url: String,
        answered: std::sync::Arc<std::sync::Mutex<Vec<(String, u16)>>>,
        task: tokio::task::JoinHandle<()>,
        /// Its open connections, to close them when it goes down.
        connections: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
    }

    impl Mirror {
        async fn start(etags: bool) -> Mirror {
            use http_body_util::Full;
            use hyper::body::Bytes;
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path().to_owned();
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}/fleet", listener.local_addr().unwrap());
            let answered = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
            let log = std::sync::Arc::clone(&answered);
            let connections = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
            let open = std::sync::Arc::clone(&connections);
            let task = tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        return;
                    };
                    let root = root.clone();
                    let log = std::sync::Arc::clone(&log);
                    let connection = tokio::spawn(async move {
                        let service =
                            hyper::service::service_fn(move |req: hyper::Request<_>| {
                                let path =
                                    req.uri().path().trim_start_matches("/fleet/").to_owned();
                                let file = (!path.contains("..")).then(|| root.join(&path));
                                let bytes = file.and_then(|f| std::fs::read(f).ok());
                                let response =
                                    match bytes {
                                        None => hyper::Response::builder()
                                            .status(404)
                                            .body(Full::new(Bytes::new())),
                                        Some(b) => {
                                            let etag = format!("\"{}\"", &sha256_hex(&b)[..16]);
                                            let same = etags
                                                && req.headers().get("if-none-match").is_some_and(
                                                    |v| v.as_bytes() == etag.as_bytes(),
                                                );
                                            let mut r = hyper::Response::builder()
                                                .status(if same { 304 } else { 200 });
                                            if etags {
                                                r = r.header("etag", &etag);
                                            }
                                            r.body(Full::new(if same {
                                                Bytes::new()
                                            } else {
                                                Bytes::from(b)
                                            }))
                                        }
                                    };
                                if let Ok(r) = &response {
                                    log.lock().unwrap().push((path, r.status().as_u16()));
                                }
                                std::future::ready(response)
                            });
                        let io = hyper_util::rt::TokioIo::new(stream);
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(io, service)
                            .await;
                    });
                    open.lock().unwrap().push(connection.abort_handle());
                }
            });
            Mirror {
                dir,
                url,
                answered,
                task,
                connections,
            }
        }

        /// Down: no longer listening, its connections closed.
        async fn stop(&self) {
            self.task.abort();
            for c in self.connections.lock().unwrap().drain(..) {
                c.abort();
            }
            tokio::task::yield_now().await;
        }

        /// Copy `key` from the world's store into the mirror, as a cache
        /// that fetched it would hold it.
        fn cache(&self, world: &World, key: &str) {
            let to = self.dir.path().join(key);
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            std::fs::copy(world.dir.path().join(key), to).unwrap();
        }

        fn answered(&self) -> Vec<(String, u16)> {
            std::mem::take(&mut *self.answered.lock().unwrap())
        }
    }

    #[tokio::test]
    async fn an_agent_reads_through_a_mirror_and_passes_over_one_that_is_stale_wrong_or_down() {
        use crate::core::Polled;
        let (mut world, root) = World::new();
        let a = world.bundle("// a\n");
        let b = world.bundle("// b\n");
        let mirror = Mirror::start(true).await;
        let mut agent = world.agent(root, SimSettings::default()).with_mirrors(vec![
            gitfleet_io::store::Store::open_mirror(&mirror.url).unwrap(),
        ]);
        let bundle_key = |r: &BundleRef| r.object_key().unwrap();
        let now = chrono::Utc::now();

        // The mirror holds the manifest and the bundle: the store is not
        // read for either (the agent's store handle counts its requests).
        world.publish(&a, None, u64::MAX);
        mirror.cache(&world, "channels/prod.json");
        mirror.cache(&world, &bundle_key(&a));
        let store_reads = |agent: &crate::core::Agent<SimNode>| {
            let c = agent.store().counts();
            c.get + c.get_not_modified
        };
        assert_eq!(
            agent.poll(now).await,
            Polled::Applied {
                serial: 1,
                activated: 1
            }
        );
        assert_eq!(store_reads(&agent), 0);
        assert_eq!(
            mirror.answered(),
            vec![
                ("channels/prod.json".to_owned(), 200),
                (bundle_key(&a), 200)
            ]
        );
        // A poll with nothing new is one conditional GET, answered 304.
        assert_eq!(agent.poll(now).await, Polled::Unchanged);
        assert_eq!(
            mirror.answered(),
            vec![("channels/prod.json".to_owned(), 304)]
        );

        // A cache that has not refreshed yet answers 304 to the store's
        // serial 2: the agent keeps what it runs until it does, as behind
        // any cache.
        world.publish(&b, Some(&a), u64::MAX);
        assert_eq!(agent.poll(now).await, Polled::Unchanged);
        assert_eq!(
            mirror.answered(),
            vec![("channels/prod.json".to_owned(), 304)]
        );
        let serial_1 = std::fs::read(mirror.dir.path().join("channels/prod.json")).unwrap();

        // It refreshes, with a bundle whose bytes are wrong: the agent
        // takes the manifest from the mirror, refuses the mirror's bundle
        // and runs the store's; b is not marked failed.
        mirror.cache(&world, "channels/prod.json");
        std::fs::write(mirror.dir.path().join(bundle_key(&b)), b"not the bundle").unwrap();
        assert_eq!(
            agent.poll(now).await,
            Polled::Applied {
                serial: 2,
                activated: 1
            }
        );
        assert_eq!(agent.state().sentinel.as_ref().unwrap().active, b);
        assert!(
            agent.state().failed.is_empty(),
            "{:?}",
            agent.state().failed
        );
        mirror.answered();

        // An old copy put back on the mirror (serial 1, validly signed but
        // older than the agent has seen) is refused and the store asked:
        // its serial 3 runs, with the bundle from the mirror.
        std::fs::write(mirror.dir.path().join("channels/prod.json"), &serial_1).unwrap();
        world.publish(&a, None, u64::MAX);
        let store_gets = store_reads(&agent);
        assert_eq!(
            agent.poll(now).await,
            Polled::Applied {
                serial: 3,
                activated: 1
            }
        );
        assert_eq!(store_reads(&agent), store_gets + 1);
        assert_eq!(
            mirror.answered(),
            vec![
                ("channels/prod.json".to_owned(), 200),
                (bundle_key(&a), 200)
            ]
        );

        // The mirror down: the store alone, for the manifest and the bundle.
        mirror.stop().await;
        world.publish(&b, Some(&a), u64::MAX);
        let store_gets = store_reads(&agent);
        assert_eq!(
            agent.poll(now).await,
            Polled::Applied {
                serial: 4,
                activated: 1
            }
        );
        assert_eq!(agent.state().sentinel.as_ref().unwrap().active, b);
        assert_eq!(store_reads(&agent), store_gets + 2);
        assert_eq!(mirror.answered(), Vec::new());
    }

    #[tokio::test]
    async fn a_mirror_without_etags_is_read_whole_and_compared() {
        use crate::core::Polled;
        let (mut world, root) = World::new();
        let a = world.bundle("// a\n");
        let mirror = Mirror::start(false).await;
        let mut agent = world.agent(root, SimSettings::default()).with_mirrors(vec![
            gitfleet_io::store::Store::open_mirror(&mirror.url).unwrap(),
        ]);
        world.publish(&a, None, u64::MAX);
        mirror.cache(&world, "channels/prod.json");
        mirror.cache(&world, &a.object_key().unwrap());
        let now = chrono::Utc::now();
        assert_eq!(
            agent.poll(now).await,
            Polled::Applied {
                serial: 1,
                activated: 1
            }
        );
        mirror.answered();
        // The same bytes again: no change, and nothing asked of the store.
        assert_eq!(agent.poll(now).await, Polled::Unchanged);
        assert_eq!(
            mirror.answered(),
            vec![("channels/prod.json".to_owned(), 200)]
        );
        let c = agent.store().counts();
        assert_eq!(c.get + c.get_not_modified, 0);
    }

    #[tokio::test]
    async fn a_refused_manifest_stays_refused_while_the_store_answers_not_modified() {
        use crate::core::Polled;
        let (world, root) = World::new();
        let mut agent = world.agent(root, SimSettings::default());
        let path = world.dir.path().join("channels/prod.json");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, b"not a manifest").unwrap();
        let now = chrono::Utc::now();
        let first = agent.poll(now).await;
        assert!(
            matches!(&first, Polled::Refused(r) if r.starts_with("refusing channels/prod.json")),
            "{first:?}"
        );
        // The same bytes: not verified again, and not taken for "all well".
        assert_eq!(agent.poll(now).await, first);
        assert_eq!(
            agent.last_error(),
            Some(match &first {
                Polled::Refused(r) => r.as_str(),
                _ => unreachable!(),
            })
        );
    }

    #[tokio::test]
    async fn a_manifest_signed_under_a_root_published_later_is_taken_once_it_is() {
        use crate::core::Polled;
        use gitfleet_schemas::trust::PublicKey;
        let (mut world, root) = World::new();
        let a = world.bundle("// a\n");
        let mut agent = world.agent(root.clone(), SimSettings::default());
        // The next root's online key signs before that root is published.
        let next_online = SigningKey::from_bytes(&[3; 32]);
        let mut next = (*root).clone();
        next.version = 2;
        next.online_keys = vec![PublicKey(next_online.verifying_key().to_bytes())];
        world.online = next_online;
        world.publish(&a, None, u64::MAX);
        let now = chrono::Utc::now();
        let refused = agent.poll(now).await;
        assert!(matches!(refused, Polled::Refused(_)), "{refused:?}");
        // The root appears; the manifest's bytes (and etag) are the same.
        let path = world.dir.path().join(gitfleet_schemas::keys::root(2));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, signed(&next, &SigningKey::from_bytes(&[1; 32]))).unwrap();
        assert_eq!(
            agent.poll(now).await,
            Polled::Applied {
                serial: 1,
                activated: 1
            }
        );
    }

    #[tokio::test]
    async fn a_stored_bundle_longer_than_signed_is_failed_not_fetched_every_poll() {
        use crate::core::Polled;
        let (mut world, root) = World::new();
        let a = world.bundle("// a\n");
        let path = world.dir.path().join(a.object_key().unwrap());
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.extend_from_slice(b"and more");
        std::fs::write(&path, bytes).unwrap();
        let mut agent = world.agent(root, SimSettings::default());
        world.publish(&a, None, u64::MAX);
        let now = chrono::Utc::now();
        assert_eq!(
            agent.poll(now).await,
            Polled::Applied {
                serial: 1,
                activated: 0
            }
        );
        assert!(agent.state().failed.contains_key(&a.digest));
        let gets = agent.store().counts().get;
        // Nothing new: the manifest is read (a file store reads it whole
        // to compare), the bundle is not.
        assert_eq!(agent.poll(now).await, Polled::Unchanged);
        assert_eq!(agent.store().counts().get, gets + 1);
    }
}
