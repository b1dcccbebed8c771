//! The real node: bundles in the state directory, the Sentinel proxy
//! reloaded and checked, system metrics from procfs.
//!
//! An activation, and where a crash can stop it:
//! 1. unpack into `bundles/<hex>/` (via staging; complete or absent);
//! 2. validate in-process (and with `sentinel test -c` when configured);
//! 3. write `journal.json` {from, to};
//! 4. swap the `sentinel` link to the new bundle (one rename);
//! 5. reload the proxy and confirm it runs the new config;
//! 6. on failure swap back and reload; record the outcome in `state.json`;
//! 7. remove the journal.
//!
//! At start-up ([`DiskNode::recover`]) a journal means the agent died between
//! 3 and 7: if `state.json` already names the new bundle the activation
//! finished; otherwise the link goes back to the old bundle and the proxy is
//! reloaded, so the node runs the whole old config and the next poll tries
//! again.
//!
//! A mesh bundle changes no link: its activation configures the WireGuard
//! interface from the verified bundle, writing only what differs (see
//! [`crate::wireguard`]); on failure the previous mesh is applied again.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use std::path::PathBuf;
use std::time::Duration;

use gitfleet_io::store::{Store, StoreError};
use gitfleet_schemas::agent::{LocalState, Monitor, ReloadBy, SentinelSettings, WireguardSettings};
use gitfleet_schemas::bundle::{BundleKind, MeshBundle, MESH_FILE};
use gitfleet_schemas::fleet::DriftPolicy;
use gitfleet_schemas::status::{Drift, HttpCheckResult, Metrics, WireguardStatus};
use gitfleet_schemas::trust::{BundleRef, ChannelCheck};
use gitfleet_schemas::verify::{BundleHead, Digesting, Limits, Verified};

use crate::checks;
use crate::core::{FetchError, Node, NodeError};
use crate::local::{LocalError, StateDir, SENTINEL_LINK};
use crate::sentinel::{self, Reload};
use gitfleet_schemas::ProxyKind;

use crate::system::Sampler;
use crate::wireguard::{self, Desired, PrivateKey, WIREGUARD_KEY};

/// How long one HTTP check of a rollout's gate may take.
const HTTP_CHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// The targets of one upstream a check requests, at most.
const MAX_UPSTREAM_TARGETS: usize = 16;

#[derive(Debug)]
pub struct DiskNode {
    dir: StateDir,
    /// This node's id: how it finds itself in a mesh.
    node: String,
    sentinel: Option<SentinelSettings>,
    wireguard: Option<WireguardSettings>,
    /// The active mesh bundle and what it asks of this node, read from the
    /// verified archive once per process.
    mesh: Option<(BundleRef, Desired)>,
    /// What this process last wrote to the mesh's interface, successfully:
    /// the next mesh is written as the difference from it, without reading
    /// the interface. `None` at start, after a failed write and before a
    /// drift repair (which reads the interface whole).
    written: Option<Desired>,
    sampler: Sampler,
    limits: Limits,
    /// The metrics route the active config declares, found once per
    /// active bundle.
    metrics_route: Option<(BundleRef, Option<String>)>,
    /// The active config's upstreams and their targets, read once per
    /// active bundle (HTTP checks of an upstream run every report).
    upstreams: Option<(BundleRef, HashMap<String, Vec<String>>)>,
    /// The proxy this node runs, which decides the config file a bundle's
    /// entry is (`sentinel.kdl`, `zentinel.kdl`) and the crate that
    /// validates it.
    proxy: ProxyKind,
    /// agent.kdl's `monitor`s, and the previous reading of each interface.
    monitors: Vec<Monitor>,
    readings: HashMap<String, (DateTime<Utc>, WireguardStatus)>,
}

fn reload_of(by: &ReloadBy) -> Reload {
    match by {
        ReloadBy::Pid(p) => Reload::Pid(*p),
        ReloadBy::PidFile(p) => Reload::PidFile(PathBuf::from(p)),
        ReloadBy::Command(c) => Reload::Command(c.clone()),
    }
}

impl DiskNode {
    pub fn new(
        dir: StateDir,
        node: &str,
        sentinel: Option<SentinelSettings>,
        wireguard: Option<WireguardSettings>,
        limits: Limits,
    ) -> Self {
        let sampler = Sampler::new(dir.path().to_owned());
        DiskNode {
            dir,
            node: node.to_owned(),
            sentinel,
            wireguard,
            mesh: None,
            written: None,
            sampler,
            limits,
            metrics_route: None,
            upstreams: None,
            proxy: ProxyKind::Sentinel,
            monitors: Vec::new(),
            readings: HashMap::new(),
        }
    }

    /// Report the WireGuard interfaces `monitors` name.
    pub fn with_monitors(self, monitors: Vec<Monitor>) -> Self {
        DiskNode { monitors, ..self }
    }

    /// The node runs `proxy` (Sentinel unless said).
    pub fn with_proxy(self, proxy: ProxyKind) -> Self {
        DiskNode { proxy, ..self }
    }

    /// Where to read the proxy's metrics: agent.kdl's `metrics-url`, else
    /// the metrics route of the active config.
    fn metrics_url(&mut self, active: Option<&BundleRef>) -> Option<String> {
        let settings = self.sentinel.as_ref()?;
        if let Some(url) = &settings.metrics_url {
            return Some(url.clone());
        }
        let active = active?;
        match &self.metrics_route {
            Some((bundle, url)) if bundle == active => url.clone(),
            _ => {
                let url = self
                    .dir
                    .bundle_files(active)
                    .ok()
                    .and_then(|dir| sentinel::metrics_url(&dir, self.proxy));
                if url.is_none() {
                    tracing::warn!(
                        bundle = %active.digest,
                        "the active config has no metrics route (builtin-handler \"metrics\") and agent.kdl sets no metrics-url: traffic gates cannot judge this node"
                    );
                }
                self.metrics_route = Some((active.clone(), url.clone()));
                url
            }
        }
    }

    /// The targets (`host:port`) of upstream `name` in the config of the
    /// Sentinel bundle `active`.
    fn upstream_targets(&mut self, active: &BundleRef, name: &str) -> Option<Vec<String>> {
        if self.upstreams.as_ref().is_none_or(|(b, _)| b != active) {
            let read = self
                .dir
                .bundle_files(active)
                .ok()
                .and_then(|dir| sentinel::upstreams(&dir, self.proxy))
                .unwrap_or_default();
            self.upstreams = Some((active.clone(), read));
        }
        self.upstreams.as_ref()?.1.get(name).cloned()
    }

    pub fn dir(&self) -> &StateDir {
        &self.dir
    }

    /// Finish or undo an activation a crash interrupted, then check that the
    /// link and `state.json` agree.
    pub async fn recover(&mut self, state: &LocalState) -> Result<(), LocalError> {
        let active = state.sentinel.as_ref().map(|s| &s.active);
        if let Some(j) = self.dir.journal()? {
            if active == Some(&j.to) {
                tracing::info!(bundle = %j.to.digest, "an interrupted activation had finished");
                self.dir.link(SENTINEL_LINK, Some(&j.to))?;
            } else {
                tracing::warn!(
                    from = ?j.from.as_ref().map(|b| &b.digest),
                    to = %j.to.digest,
                    "undoing an interrupted activation"
                );
                self.dir.link(SENTINEL_LINK, j.from.as_ref())?;
                if j.from.is_some() {
                    if let Err(e) = self.reload_linked().await {
                        tracing::warn!(error = %e, "the proxy did not confirm the restored config");
                    }
                }
            }
            self.dir.end()?;
        }
        let linked = self.dir.linked(SENTINEL_LINK)?;
        if linked.as_deref() != active.map(|a| a.digest.as_str()) {
            return Err(LocalError::Corrupt {
                path: self.dir.path().join(SENTINEL_LINK),
                reason: format!(
                    "it points at {}, but state.json says {}",
                    linked.as_deref().unwrap_or("nothing"),
                    active.map_or("nothing", |a| a.digest.as_str())
                ),
            });
        }
        if let Some(slot) = &state.wireguard {
            if let Err(e) = self.recover_mesh(&slot.active).await {
                tracing::warn!(bundle = %slot.active.digest, error = %e, "cannot restore the wireguard interface");
            }
        }
        Ok(())
    }

    fn settings(&self) -> Result<&SentinelSettings, NodeError> {
        self.sentinel
            .as_ref()
            .ok_or(NodeError::NotConfigured { block: "sentinel" })
    }

    /// Reload the proxy and wait until it shows the config now linked.
    /// Reload the proxy and confirm it runs the config now linked.
    async fn reload_linked(&self) -> Result<(), NodeError> {
        let expected = match &self.settings()?.config_url {
            Some(_) => Some(sentinel::validate(
                &self.dir.path().join(SENTINEL_LINK),
                self.proxy,
            )?),
            None => None,
        };
        self.reload_and_confirm(expected.as_ref(), false).await
    }

    /// Reload the proxy and wait until its config dump shows `expected`
    /// (or, without a config URL, until its health URL answers).
    async fn reload_and_confirm(
        &self,
        expected: Option<&sentinel::Fingerprint>,
        first: bool,
    ) -> Result<(), NodeError> {
        let settings = self.settings()?;
        let timeout = Duration::from_millis(settings.confirm_timeout_ms);
        match sentinel::reload(&reload_of(&settings.reload)) {
            Ok(()) => {}
            // Nothing ran before: the proxy may not be started yet, and
            // loads this config when it is.
            Err(e) if first && proxy_absent(&e) => {
                tracing::info!(reason = %e, "the proxy is not running; it loads this config when it starts");
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        }
        if let (Some(url), Some(expected)) = (&settings.config_url, expected) {
            sentinel::confirm(url, expected, timeout).await?;
        } else if let Some(url) = &settings.health_url {
            sentinel::confirm_health(url, timeout).await?;
        }
        Ok(())
    }

    async fn try_activate(
        &mut self,
        rollout: &str,
        from: Option<&BundleRef>,
        bundle: &Verified<BundleHead>,
    ) -> Result<(), NodeError> {
        let settings = self.settings()?.clone();
        let dir = self.dir.bundle_files(&bundle.reference)?;
        // Parsed once: the same fingerprint confirms the reload.
        let expected = sentinel::validate(&dir, self.proxy)?;
        if let Some(binary) = &settings.test_binary {
            sentinel::test_with_binary(binary.as_ref(), &dir.join(self.proxy.entry())).await?;
        }
        self.dir.begin(&gitfleet_schemas::agent::Journal {
            rollout: rollout.to_owned(),
            from: from.cloned(),
            to: bundle.reference.clone(),
        })?;
        self.dir.swap(SENTINEL_LINK, Some(&bundle.reference))?;
        crate::faults::point("after-swap");
        let outcome = self
            .reload_and_confirm(Some(&expected), from.is_none())
            .await;
        crate::faults::point("after-reload");
        if let Err(reason) = outcome {
            if let Err(e) = self.dir.link(SENTINEL_LINK, from) {
                return Err(NodeError::NotRestored {
                    failed: Box::new(reason),
                    what: "config",
                    restore: Box::new(e.into()),
                });
            }
            if from.is_some() {
                if let Err(e) = self.reload_linked().await {
                    return Err(NodeError::NotRestored {
                        failed: Box::new(reason),
                        what: "config's reload",
                        restore: Box::new(e),
                    });
                }
            }
            return Err(reason);
        }
        Ok(())
    }
}

impl DiskNode {
    fn wireguard_settings(&self) -> Result<&WireguardSettings, NodeError> {
        self.wireguard
            .as_ref()
            .ok_or(NodeError::NotConfigured { block: "wireguard" })
    }

    /// What a mesh bundle asks of this node, from its `MESH_FILE`.
    fn mesh_of(&self, reference: &BundleRef, bytes: Option<&[u8]>) -> Result<Desired, NodeError> {
        let settings = self.wireguard_settings()?;
        let digest = &reference.digest;
        let bytes = bytes.ok_or_else(|| NodeError::Other {
            what: "reading the mesh bundle",
            reason: format!("bundle {digest} has no {MESH_FILE}"),
        })?;
        let mesh: MeshBundle = serde_json::from_slice(bytes).map_err(|e| NodeError::Other {
            what: "reading the mesh bundle",
            reason: format!("{MESH_FILE} of bundle {digest}: {e}"),
        })?;
        // The key the mesh lists for this node: a rotated one is made
        // current here, once the fleet repo names it.
        let listed = mesh.members.iter().find(|m| m.node == self.node);
        let key = match listed {
            Some(m) => wireguard::key_for(self.dir.path(), &m.public_key)?.map(|(k, _)| k),
            None => None,
        };
        let key = match key {
            Some(k) => k,
            None => PrivateKey::read(&self.dir.path().join(WIREGUARD_KEY))?,
        };
        Ok(wireguard::desired(
            &mesh,
            &self.node,
            &key,
            settings.interface.as_deref(),
        )?)
    }

    /// What the mesh bundle `reference` on disk asks of this node, from its
    /// archive verified again (never from the unpacked copy).
    fn stored_mesh(&mut self, reference: &BundleRef) -> Result<Desired, NodeError> {
        if let Some((r, d)) = &self.mesh {
            if r == reference {
                return Ok(d.clone());
            }
        }
        let (bundle, _) = self.dir.stored_bundle(reference, self.limits)?;
        let desired = self.mesh_of(reference, bundle.files.get(MESH_FILE).map(Vec::as_slice))?;
        self.mesh = Some((reference.clone(), desired.clone()));
        Ok(desired)
    }

    /// Apply `desired` to the live interface (blocking IO, off the
    /// runtime): as the difference from what this process last wrote when
    /// it knows, else against the interface read whole.
    async fn configure(&mut self, desired: Desired) -> Result<wireguard::Applied, NodeError> {
        let backend = self.wireguard_settings()?.backend;
        let previous = self.written.take();
        let wanted = desired.clone();
        let applied = tokio::task::spawn_blocking(move || match &previous {
            Some(p) => wireguard::apply_since(p, &wanted, backend),
            None => wireguard::apply(&wanted, backend),
        })
        .await
        .map_err(|e| NodeError::Other {
            what: "configuring wireguard",
            reason: e.to_string(),
        })??;
        self.written = Some(desired);
        Ok(applied)
    }

    /// Configure this node's WireGuard interface from a mesh bundle; on
    /// failure apply the previous mesh again.
    async fn apply_mesh(
        &mut self,
        from: Option<&BundleRef>,
        bundle: &Verified<BundleHead>,
    ) -> Result<(), NodeError> {
        // Just installed from the verified copy.
        let bytes = self.dir.bundle_file(&bundle.reference, MESH_FILE)?;
        let desired = self.mesh_of(&bundle.reference, bytes.as_deref())?;
        let reason = match self.configure(desired.clone()).await {
            Ok(_) => {
                self.mesh = Some((bundle.reference.clone(), desired));
                return Ok(());
            }
            Err(reason) => reason,
        };
        let Some(from) = from else {
            return Err(reason);
        };
        tracing::warn!(
            bundle = %bundle.reference.digest,
            previous = %from.digest,
            reason = %reason,
            "restoring the previous mesh"
        );
        let restored = match self.stored_mesh(from) {
            Ok(previous) => self.configure(previous).await.map(|_| ()),
            Err(e) => Err(e),
        };
        match restored {
            Ok(()) => Err(reason),
            Err(e) => Err(NodeError::NotRestored {
                failed: Box::new(reason),
                what: "mesh",
                restore: Box::new(e),
            }),
        }
    }

    /// At start-up: an interface that came up empty (no key: the host or
    /// the userspace implementation restarted) is configured from the
    /// active mesh. Anything else that differs is drift, for the policy.
    async fn recover_mesh(&mut self, active: &BundleRef) -> Result<(), NodeError> {
        let desired = self.stored_mesh(active)?;
        let backend = self.wireguard_settings()?.backend;
        let interface = desired.interface.clone();
        let live = tokio::task::spawn_blocking(move || wireguard::read(&interface, backend))
            .await
            .map_err(|e| NodeError::Other {
                what: "reading wireguard",
                reason: e.to_string(),
            })??;
        if live.public_key.is_none() {
            tracing::info!(
                interface = %desired.interface,
                bundle = %active.digest,
                "configuring an empty wireguard interface from the active mesh"
            );
            self.configure(desired).await?;
        }
        Ok(())
    }

    /// Files of the mesh bundle that changed on disk, and how the live
    /// interface differs from the mesh; with [`DriftPolicy::Repair`] both
    /// are restored (only what differs is written).
    async fn mesh_drift(
        &mut self,
        active: &BundleRef,
        policy: DriftPolicy,
    ) -> Result<Vec<Drift>, NodeError> {
        let mut drift = self.dir.drift(active)?;
        if !drift.is_empty() && policy == DriftPolicy::Repair {
            tracing::warn!(files = drift.len(), bundle = %active.digest, "repairing drift");
            self.dir.repair(active, &drift, self.limits)?;
        }
        let desired = self.stored_mesh(active)?;
        let backend = self.wireguard_settings()?.backend;
        let wanted = desired.clone();
        let live = tokio::task::spawn_blocking(move || {
            let peers = wireguard::resolve(&wanted.peers)?;
            let live = wireguard::read(&wanted.interface, backend)?;
            let mut drift = wireguard::drift(&wanted, &peers, &live);
            if live.up {
                let installed = wireguard::installed_routes(&wanted.interface)?;
                drift.extend(wireguard::route_drift(&wanted, &installed));
                drift.sort_by(|a, b| a.path.cmp(&b.path));
            }
            Ok::<_, wireguard::WireguardError>(drift)
        })
        .await
        .map_err(|e| NodeError::Other {
            what: "reading wireguard",
            reason: e.to_string(),
        })??;
        if !live.is_empty() && policy == DriftPolicy::Repair {
            tracing::warn!(
                interface = %desired.interface,
                differences = live.len(),
                bundle = %active.digest,
                "repairing wireguard drift"
            );
            self.written = None;
            self.configure(desired).await?;
        }
        drift.extend(live);
        Ok(drift)
    }

    /// The live interface of the active mesh, if one is active.
    async fn mesh_status(&mut self) -> Option<WireguardStatus> {
        let backend = self.wireguard.as_ref()?.backend;
        let interface = self.mesh.as_ref()?.1.interface.clone();
        let name = interface.clone();
        let read = tokio::task::spawn_blocking(move || wireguard::status(&name, backend))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()));
        match read {
            Ok(status) => Some(status),
            Err(e) => {
                tracing::warn!(interface = %interface, error = %e, "cannot read the wireguard interface");
                None
            }
        }
    }
}

/// Whether a reload failed because no proxy runs (no pid file, no such
/// process), as opposed to one that refused.
fn proxy_absent(e: &sentinel::SentinelError) -> bool {
    match e {
        sentinel::SentinelError::PidFile { source, .. } => {
            source.kind() == std::io::ErrorKind::NotFound
        }
        sentinel::SentinelError::Signal { source, .. } => {
            source.raw_os_error() == Some(rustix::io::Errno::SRCH.raw_os_error())
        }
        _ => false,
    }
}

impl Node for DiskNode {
    /// Streamed to `staging/` as it arrives, then verified from there into
    /// a staging copy, a block at a time: the agent never holds a bundle's
    /// archive or files whole.
    async fn fetch(
        &mut self,
        source: &Store,
        key: &str,
        target: &BundleRef,
        limits: Limits,
    ) -> Result<Verified<BundleHead>, FetchError> {
        let local = |e: LocalError| FetchError::Local(e.into());
        self.dir.clear_staging().map_err(local)?;
        let path = self.dir.download_path(target).map_err(local)?;
        let file = std::fs::File::create(&path).map_err(|source| {
            local(LocalError::Io {
                path: path.clone(),
                source,
            })
        })?;
        // Hashed as it is written: bytes that are not the signed ones are
        // refused before anything decompresses or unpacks them.
        let mut download = Digesting::new(file);
        match source.get_into(key, target.length, &mut download).await {
            Ok(Some(_)) => {}
            Ok(None) => return Err(FetchError::Missing),
            Err(StoreError::WriteOut { source, .. }) => {
                return Err(local(LocalError::Io { path, source }))
            }
            Err(e) => return Err(FetchError::Store(e)),
        }
        if let Err(e) = download.check_bundle(target) {
            let _ = std::fs::remove_file(&path);
            return Err(FetchError::Refused(e));
        }
        crate::faults::point("after-download");
        // Blocking file IO and hashing: off the runtime's threads.
        let dir = self.dir.clone();
        let target = target.clone();
        let staged = tokio::task::spawn_blocking(move || dir.stage(&target, limits))
            .await
            .map_err(|e| {
                FetchError::Local(NodeError::Other {
                    what: "verifying a bundle",
                    reason: e.to_string(),
                })
            })?;
        match staged {
            Ok(head) => Ok(head),
            Err(LocalError::Trust { source, .. }) => Err(FetchError::Refused(source)),
            Err(e) => Err(local(e)),
        }
    }

    async fn activate(
        &mut self,
        rollout: &str,
        from: Option<&BundleRef>,
        bundle: &Verified<BundleHead>,
    ) -> Result<(), NodeError> {
        self.dir.install(bundle)?;
        crate::faults::point("after-unpack");
        match bundle.manifest.kind {
            BundleKind::Sentinel => self.try_activate(rollout, from, bundle).await,
            BundleKind::WireguardMesh => self.apply_mesh(from, bundle).await,
        }
    }

    fn save(&mut self, state: &LocalState) -> Result<(), NodeError> {
        Ok(self.dir.save_state(state)?)
    }

    fn settle(&mut self, state: &LocalState) -> Result<(), NodeError> {
        self.dir.end()?;
        let keep: Vec<&BundleRef> = [&state.sentinel, &state.wireguard]
            .into_iter()
            .flatten()
            .flat_map(|slot| std::iter::once(&slot.active).chain(&slot.previous))
            .collect();
        if let Err(e) = self.dir.collect_garbage(&keep) {
            tracing::warn!(error = %e, "cannot remove old bundles");
        }
        Ok(())
    }

    fn save_root(&mut self, version: u64, bytes: &[u8]) -> Result<(), NodeError> {
        Ok(self.dir.add_root(version, bytes)?)
    }

    async fn http_check(
        &mut self,
        check: &ChannelCheck,
        active: Option<&BundleRef>,
    ) -> Vec<HttpCheckResult> {
        let targets = match (&check.upstream, active) {
            (Some(name), Some(active)) => self.upstream_targets(active, name),
            _ => None,
        };
        let urls = match checks::urls(check, targets.as_deref()) {
            Ok(urls) => urls,
            Err(why) => {
                let at = format!(
                    "upstream:{}{}",
                    check.upstream.as_deref().unwrap_or(""),
                    check.url
                );
                return vec![checks::result(check, &at, Err(why))];
            }
        };
        // The targets at once: a dead one waits out its timeout alone.
        let mut running = tokio::task::JoinSet::new();
        for (i, url) in urls.into_iter().take(MAX_UPSTREAM_TARGETS).enumerate() {
            let check = check.clone();
            running.spawn(async move { (i, checks::run(&check, &url).await) });
        }
        let mut out: Vec<(usize, HttpCheckResult)> = running.join_all().await;
        out.sort_by_key(|(i, _)| *i);
        out.into_iter().map(|(_, r)| r).collect()
    }

    async fn healthy(&mut self) -> bool {
        let Some(settings) = &self.sentinel else {
            return true;
        };
        match &settings.health_url {
            Some(url) => sentinel::confirm_health(url, Duration::from_secs(2))
                .await
                .is_ok(),
            None => true,
        }
    }

    async fn drift(
        &mut self,
        kind: BundleKind,
        active: &BundleRef,
        policy: DriftPolicy,
    ) -> Result<Vec<Drift>, NodeError> {
        if kind == BundleKind::WireguardMesh {
            return self.mesh_drift(active, policy).await;
        }
        let drift = self.dir.drift(active)?;
        if !drift.is_empty() && policy == DriftPolicy::Repair {
            tracing::warn!(files = drift.len(), bundle = %active.digest, "repairing drift");
            self.dir.repair(active, &drift, self.limits)?;
            self.reload_linked().await?;
        }
        Ok(drift)
    }

    fn metrics(&mut self) -> Metrics {
        self.sampler.sample()
    }

    async fn scrape(&mut self, active: Option<&BundleRef>) -> Option<Result<String, NodeError>> {
        let url = self.metrics_url(active)?;
        Some(
            sentinel::scrape(&url, HTTP_CHECK_TIMEOUT)
                .await
                .map_err(NodeError::from),
        )
    }

    async fn wireguard(&mut self) -> Option<WireguardStatus> {
        let mut status = self.mesh_status().await?;
        status.next_public_key = wireguard::next_public_key(self.dir.path());
        Some(status)
    }

    async fn monitored(&mut self, now: DateTime<Utc>) -> Vec<WireguardStatus> {
        let mut out = Vec::with_capacity(self.monitors.len());
        for m in &self.monitors {
            let backend = wireguard::monitor_backend(m.backend);
            let status = match wireguard::status(&m.interface, backend) {
                Ok(status) => status,
                Err(e) => {
                    tracing::warn!(interface = %m.interface, error = %e, "cannot read a monitored interface");
                    self.readings.remove(&m.interface);
                    continue;
                }
            };
            let stale_after = i64::try_from(m.stale_after_seconds)
                .ok()
                .and_then(chrono::Duration::try_seconds)
                .unwrap_or(chrono::Duration::MAX);
            let status =
                wireguard::monitored(status, now, self.readings.get(&m.interface), stale_after);
            self.readings
                .insert(m.interface.clone(), (now, status.clone()));
            out.push(status);
        }
        out
    }
}
