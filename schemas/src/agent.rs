//! `agent.kdl`: how one node's agent runs.
//!
//! ```kdl
//! version 1
//! node "edge-fra-1"
//! environment "prod"
//! labels region="fra" role="edge"
//! store "s3://acme-fleet/prod"
//! mirror "https://cache.example.net/fleet"   // tried first; any number
//! state-dir "/var/lib/gitfleet-agent"
//! poll "30s" jitter="5s" idle="5m"   // idle: while no rollout moves here
//! heartbeat "1m"
//! drift "report"
//! proxy "zentinel" version="0.6.45"
//! monitor "wg0" stale-after="3m"   // report a WireGuard interface gitfleet does not manage
//! sentinel {
//!     pid-file "/run/sentinel.pid"
//!     config-url "http://127.0.0.1:9901/_gitfleet/config"
//!     health-url "http://127.0.0.1:9901/health"
//!     confirm-timeout "10s"
//! }
//! ```
//!
//! `node`, `environment` and `labels` repeat what the node's
//! `nodes/<id>.kdl` says in the fleet repo (`gitfleet-agent enroll` prints
//! both from one set of answers): the agent decides its own membership from
//! them, because the manifest it polls is the same for the whole environment.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::decode::{self, children, Decoded, Decoder};
use crate::fleet::DriftPolicy;
use crate::span::Spanned;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    pub node: String,
    pub environment: String,
    pub labels: BTreeMap<String, String>,
    /// Store URL: `file:///path`, `s3://bucket/prefix` or `memory://`.
    pub store: String,
    /// HTTP(S) mirrors of the store (web servers or caches serving its
    /// objects under their keys), tried in order before the store for
    /// manifests and bundles; what they serve is verified as always.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mirrors: Vec<String>,
    /// Node key, pinned root, highest serial and bundle directories.
    pub state_dir: String,
    pub poll_ms: u64,
    /// Each wait is `poll_ms` plus a random part of up to `jitter_ms`, so a
    /// fleet does not poll in lockstep.
    pub jitter_ms: u64,
    /// How often to poll while the manifest says no rollout is moving in
    /// the node's environment (and the fleet sets no interval): what an
    /// idle fleet costs. `poll`'s own interval when `poll` is written
    /// without `idle=`; 5 minutes when `poll` is not written at all.
    pub idle_poll_ms: u64,
    /// A status report is written at least this often.
    pub heartbeat_ms: u64,
    pub drift: DriftPolicy,
    /// A bundle larger than this is refused before download.
    pub max_bundle_bytes: u64,
    /// The proxy this node runs (as its `nodes/<id>.kdl` says); absent:
    /// Sentinel 0.4.14. The agent takes only bundles for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<crate::proxy::Proxy>,
    pub sentinel: Option<SentinelSettings>,
    pub wireguard: Option<WireguardSettings>,
    /// WireGuard interfaces to report, managed by gitfleet or not.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub monitors: Vec<Monitor>,
}

/// `monitor "wg0" backend="userspace" stale-after="3m"`: report this
/// interface and its peers in every status report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Monitor {
    pub interface: String,
    /// Unset: the kernel's where its module is loaded, else userspace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<WireguardBackend>,
    /// A peer whose latest handshake is older is stale (WireGuard
    /// re-handshakes every 2 minutes while traffic flows).
    pub stale_after_seconds: u64,
}

/// When a monitored peer is stale, unless agent.kdl says.
pub const DEFAULT_STALE_AFTER_SECONDS: u64 = 180;

/// How the agent applies WireGuard mesh bundles on this node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WireguardSettings {
    /// The interface to configure, instead of the one the mesh names.
    pub interface: Option<String>,
    pub backend: WireguardBackend,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum WireguardBackend {
    /// The kernel module, over netlink.
    Kernel,
    /// A userspace implementation (boringtun, wireguard-go) over its
    /// control socket in /var/run/wireguard.
    Userspace,
}

/// How the agent hands a new config to the Sentinel proxy. The proxy is
/// started with `-c <state-dir>/sentinel/sentinel.kdl`; the agent swaps that
/// directory (a symlink) atomically and asks the proxy to reload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SentinelSettings {
    pub reload: ReloadBy,
    /// A route with `builtin-handler "config"`: the loaded config must match
    /// the bundle's before an activation counts.
    pub config_url: Option<String>,
    /// A route that must answer 2xx after a reload (weaker: Sentinel's health
    /// handler answers even when a reload was refused).
    pub health_url: Option<String>,
    /// The proxy's `builtin-handler "metrics"` route, scraped for the
    /// health gates (default: the one the active bundle's config declares,
    /// on a loopback address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_url: Option<String>,
    /// Run `<binary> test -c FILE` on a staged config before activating it.
    pub test_binary: Option<String>,
    pub confirm_timeout_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ReloadBy {
    /// SIGHUP to this process id.
    Pid(u32),
    /// SIGHUP to the process id read from this file at each reload.
    PidFile(String),
    /// Run this program with these arguments; exit status 0 means reloaded.
    Command(Vec<String>),
}

/// `<state-dir>/state.json`: what the agent has verified and activated.
/// Written by atomic rename after each change; a file that does not parse
/// stops the agent (it is never reset silently).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LocalState {
    pub format: u32,
    /// The highest channel manifest serial verified: a lower one is a
    /// rollback attack.
    pub serial: Option<u64>,
    /// When the manifest of `serial` was first verified here (this node's
    /// clock): what the expiry alert measures its life from, across
    /// restarts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial_received: Option<chrono::DateTime<chrono::Utc>>,
    /// The Sentinel config this node runs.
    pub sentinel: Option<Slot>,
    /// The WireGuard mesh this node is configured for.
    #[serde(default)]
    pub wireguard: Option<Slot>,
    /// Bundles whose activation failed here, with the reason, so a bad
    /// bundle is not retried on every poll.
    pub failed: BTreeMap<String, String>,
    /// When a channel manifest said this node left the fleet: the agent
    /// stops at start-up from then on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decommissioned: Option<chrono::DateTime<chrono::Utc>>,
}

pub const LOCAL_STATE_FORMAT: u32 = 1;

/// What runs in one slot (the Sentinel config) and what ran before it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Slot {
    /// The rollout that delivered `active`.
    pub rollout: String,
    pub active: crate::trust::BundleRef,
    pub previous: Option<crate::trust::BundleRef>,
}

/// `<state-dir>/journal.json`: an activation in flight. Present only between
/// the swap and the record of its outcome; at start-up it means the agent
/// died there, and the swap is undone before anything else.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Journal {
    pub rollout: String,
    pub from: Option<crate::trust::BundleRef>,
    pub to: crate::trust::BundleRef,
}

/// `enroll/<node-id>.json`: a node asking to join, signed with the key it
/// just generated. An operator adds the matching `nodes/<id>.kdl` by pull
/// request; nothing is trusted because this object exists.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    pub fleet: String,
    pub node: String,
    pub environment: String,
    pub labels: BTreeMap<String, String>,
    pub node_key: crate::trust::PublicKey,
    /// Base64 x25519 public key; the private key stays on the node.
    pub wireguard_public_key: String,
    pub at: chrono::DateTime<chrono::Utc>,
}

impl crate::trust::Document for EnrollRequest {
    const PAYLOAD_TYPE: &'static str = "application/vnd.gitfleet.enroll.v1+json";
    const NAME: &'static str = "enrollment request";
}

pub const DEFAULT_POLL_MS: u64 = 30_000;
pub const DEFAULT_IDLE_POLL_MS: u64 = 300_000;
pub const DEFAULT_HEARTBEAT_MS: u64 = 60_000;
pub const DEFAULT_CONFIRM_TIMEOUT_MS: u64 = 10_000;
pub const DEFAULT_MAX_BUNDLE_BYTES: u64 = 64 << 20;

const TOP: &[&str] = &[
    "node",
    "environment",
    "labels",
    "store",
    "mirror",
    "state-dir",
    "poll",
    "heartbeat",
    "drift",
    "max-bundle-bytes",
    "proxy",
    "sentinel",
    "wireguard",
    "monitor",
];
const SENTINEL: &[&str] = &[
    "pid",
    "pid-file",
    "reload-command",
    "config-url",
    "health-url",
    "metrics-url",
    "test-binary",
    "confirm-timeout",
];

impl AgentConfig {
    pub fn decode(text: &str) -> Decoded<AgentConfig> {
        let mut d = Decoder::default();
        let Some(doc) = d.parse(text) else {
            return d.finish(None);
        };
        let mut node = None;
        let mut environment = None;
        let mut labels = None;
        let mut store = None;
        let mut state_dir = None;
        let mut poll = None;
        let mut heartbeat = None;
        let mut drift = None;
        let mut max_bundle_bytes = None;
        let mut sentinel = None;
        let mut wireguard = None;
        let mut proxy = None;
        let mut monitors: Vec<Monitor> = Vec::new();
        let mut mirrors: Vec<String> = Vec::new();
        for n in d.versioned(&doc, "agent config") {
            match decode::name(n) {
                "node" => {
                    let v = d.string(n);
                    d.once(&mut node, n, v);
                }
                "environment" => {
                    let v = d.string(n);
                    d.once(&mut environment, n, v);
                }
                "labels" => {
                    let v = d.string_map(n);
                    d.once(&mut labels, n, Some(v));
                }
                "store" => {
                    let v = d.string(n);
                    d.once(&mut store, n, v);
                }
                "mirror" => {
                    d.no_children(n);
                    if let Some(url) = d.string(n).map(|u| u.value) {
                        let web = url.starts_with("https://") || crate::net::is_loopback_http(&url);
                        if !web {
                            d.error(
                                decode::node_span(n),
                                "invalid-value",
                                format!("mirror `{url}` is not an https:// url (plain http only to a loopback address)"),
                                Some("mirror \"https://cache.example.net/fleet\"".to_owned()),
                            );
                        } else if mirrors.contains(&url) {
                            d.error(
                                decode::node_span(n),
                                "duplicate-node",
                                format!("mirror `{url}` is named twice"),
                                Some("keep one `mirror` per url".to_owned()),
                            );
                        } else {
                            mirrors.push(url);
                        }
                    }
                }
                "state-dir" => {
                    let v = d.string(n);
                    d.once(&mut state_dir, n, v);
                }
                "poll" => {
                    let v = decode_poll(&mut d, n);
                    d.once(&mut poll, n, v);
                }
                "heartbeat" => {
                    let v = duration_ms(&mut d, n);
                    d.once(&mut heartbeat, n, v);
                }
                "drift" => {
                    let v = decode_drift(&mut d, n);
                    d.once(&mut drift, n, v);
                }
                "max-bundle-bytes" => {
                    let v = d.u64(n);
                    d.once(&mut max_bundle_bytes, n, v);
                }
                "proxy" => {
                    d.no_children(n);
                    let v = crate::proxy::decode_proxy(&mut d, n);
                    d.once(&mut proxy, n, v);
                }
                "sentinel" => {
                    let v = decode_sentinel(&mut d, n);
                    d.once(&mut sentinel, n, v);
                }
                "wireguard" => {
                    let v = decode_wireguard(&mut d, n);
                    d.once(&mut wireguard, n, v);
                }
                "monitor" => {
                    if let Some(m) = decode_monitor(&mut d, n) {
                        if monitors.iter().any(|o| o.interface == m.interface) {
                            d.error(
                                decode::node_span(n),
                                "duplicate-node",
                                format!("interface `{}` is monitored twice", m.interface),
                                Some("keep one `monitor` per interface".to_owned()),
                            );
                        } else {
                            monitors.push(m);
                        }
                    }
                }
                _ => d.unknown_node(n, "agent config", TOP),
            }
        }
        let at = decode::document_start(&doc);
        let node = d.required(node, at, "node", "agent config", "node \"edge-fra-1\"");
        let environment = d.required(
            environment,
            at,
            "environment",
            "agent config",
            "environment \"prod\"",
        );
        let store = d.required(
            store,
            at,
            "store",
            "agent config",
            "store \"file:///var/lib/gitfleet/store\"",
        );
        let state_dir = d.required(
            state_dir,
            at,
            "state-dir",
            "agent config",
            "state-dir \"/var/lib/gitfleet-agent\"",
        );
        let value = match (node, environment, store, state_dir) {
            (Some(node), Some(environment), Some(store), Some(state_dir)) => {
                let (poll_ms, jitter_ms, idle_poll_ms) =
                    poll.unwrap_or((DEFAULT_POLL_MS, DEFAULT_POLL_MS / 10, DEFAULT_IDLE_POLL_MS));
                Some(AgentConfig {
                    node: node.value,
                    environment: environment.value,
                    labels: labels
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, v)| (k, v.value))
                        .collect(),
                    store: store.value,
                    mirrors,
                    state_dir: state_dir.value,
                    poll_ms,
                    jitter_ms,
                    idle_poll_ms,
                    heartbeat_ms: heartbeat.unwrap_or(DEFAULT_HEARTBEAT_MS),
                    drift: drift.unwrap_or(DriftPolicy::Report),
                    max_bundle_bytes: max_bundle_bytes
                        .map_or(DEFAULT_MAX_BUNDLE_BYTES, |v: Spanned<u64>| v.value),
                    proxy: proxy.map(|p: Spanned<crate::proxy::Proxy>| p.value),
                    sentinel: sentinel.flatten(),
                    wireguard,
                    monitors,
                })
            }
            _ => None,
        };
        d.finish(value)
    }
}

fn duration_ms(d: &mut Decoder, node: &kdl::KdlNode) -> Option<u64> {
    let s = d.string(node)?;
    d.parse_duration_ms(&s).map(|v| v.value)
}

/// `poll "30s" jitter="5s"`.
/// `poll "30s" jitter="3s" idle="5m"`: the interval, its jitter and the
/// idle interval (the interval itself unless given).
fn decode_poll(d: &mut Decoder, node: &kdl::KdlNode) -> Option<(u64, u64, u64)> {
    d.allow_props(node, &["jitter", "idle"]);
    d.no_children(node);
    d.max_args(node, 1);
    let every = d.arg(node, 0, decode::as_string, "a duration such as \"30s\"")?;
    let every = d.parse_duration_ms(&every)?.value;
    let jitter = match d.prop_string(node, "jitter") {
        Some(j) => d.parse_duration_ms(&j)?.value,
        None => every / 10,
    };
    let idle = match d.prop_string(node, "idle") {
        Some(i) => d.parse_duration_ms(&i)?.value,
        None => every,
    };
    if idle < every {
        d.error(
            decode::node_span(node),
            "invalid-value",
            format!(
                "the idle poll interval ({idle} ms) is shorter than the poll interval ({every} ms)"
            ),
            Some("an idle fleet polls less often, not more: raise `idle=` or drop it".to_owned()),
        );
        return None;
    }
    Some((every, jitter, idle))
}

fn decode_drift(d: &mut Decoder, node: &kdl::KdlNode) -> Option<DriftPolicy> {
    let s = d.string(node)?;
    match s.value.as_str() {
        "report" => Some(DriftPolicy::Report),
        "repair" => Some(DriftPolicy::Repair),
        other => {
            d.error(
                s.span,
                "invalid-value",
                format!("drift policy `{other}` is not known"),
                Some("write `drift \"report\"` or `drift \"repair\"`".to_owned()),
            );
            None
        }
    }
}

/// `"kernel"` or `"userspace"`.
fn decode_backend(d: &mut Decoder, s: Spanned<String>) -> Option<WireguardBackend> {
    match s.value.as_str() {
        "kernel" => Some(WireguardBackend::Kernel),
        "userspace" => Some(WireguardBackend::Userspace),
        other => {
            d.error(
                s.span,
                "invalid-value",
                format!("wireguard backend `{other}` is not known"),
                Some("write \"kernel\" or \"userspace\"".to_owned()),
            );
            None
        }
    }
}

fn decode_monitor(d: &mut Decoder, node: &kdl::KdlNode) -> Option<Monitor> {
    d.allow_props(node, &["backend", "stale-after"]);
    d.max_args(node, 1);
    d.no_children(node);
    let interface = d.arg(node, 0, decode::as_string, "an interface name")?;
    let backend = match d.prop_string(node, "backend") {
        Some(s) => Some(decode_backend(d, s)?),
        None => None,
    };
    let stale_after_seconds = match d.prop_string(node, "stale-after") {
        Some(s) => d.parse_duration(&s)?.value,
        None => DEFAULT_STALE_AFTER_SECONDS,
    };
    Some(Monitor {
        interface: interface.value,
        backend,
        stale_after_seconds,
    })
}

/// `wireguard { interface "wg0"; backend "userspace"; }`; both optional,
/// the backend defaults to the kernel's.
fn decode_wireguard(d: &mut Decoder, node: &kdl::KdlNode) -> Option<WireguardSettings> {
    d.allow_props(node, &[]);
    d.max_args(node, 0);
    let (mut interface, mut backend) = (None, None);
    for c in children(node) {
        match decode::name(c) {
            "interface" => {
                let v = d.string(c).map(|s| s.value);
                d.once(&mut interface, c, v);
            }
            "backend" => {
                let v = d.string(c).and_then(|s| decode_backend(d, s));
                d.once(&mut backend, c, v);
            }
            _ => d.unknown_node(c, "`wireguard`", &["interface", "backend"]),
        }
    }
    Some(WireguardSettings {
        interface,
        backend: backend.unwrap_or(WireguardBackend::Kernel),
    })
}

/// The `sentinel { ... }` block; `Some(None)` when it had errors (already
/// reported), so a second block is still seen as a duplicate.
fn decode_sentinel(d: &mut Decoder, node: &kdl::KdlNode) -> Option<Option<SentinelSettings>> {
    d.allow_props(node, &[]);
    d.max_args(node, 0);
    let mut reload: Option<ReloadBy> = None;
    let mut config_url = None;
    let mut health_url = None;
    let mut metrics_url = None;
    let mut test_binary = None;
    let mut confirm = None;
    for c in children(node) {
        let by = match decode::name(c) {
            "pid" => d
                .scalar(c, |v| decode::as_u64(v)?.try_into().ok(), "a process id")
                .map(|p| ReloadBy::Pid(p.value)),
            "pid-file" => d.string(c).map(|s| ReloadBy::PidFile(s.value)),
            "reload-command" => {
                let args: Vec<String> = d.strings(c).into_iter().map(|s| s.value).collect();
                (!args.is_empty()).then_some(ReloadBy::Command(args))
            }
            "config-url" => {
                let v = d.string(c).map(|s| s.value);
                d.once(&mut config_url, c, v);
                continue;
            }
            "health-url" => {
                let v = d.string(c).map(|s| s.value);
                d.once(&mut health_url, c, v);
                continue;
            }
            "metrics-url" => {
                let v = d.string(c).map(|s| s.value);
                d.once(&mut metrics_url, c, v);
                continue;
            }
            "test-binary" => {
                let v = d.string(c).map(|s| s.value);
                d.once(&mut test_binary, c, v);
                continue;
            }
            "confirm-timeout" => {
                let v = duration_ms(d, c);
                d.once(&mut confirm, c, v);
                continue;
            }
            _ => {
                d.unknown_node(c, "`sentinel`", SENTINEL);
                continue;
            }
        };
        if reload.is_some() {
            d.error(
                c.name().span(),
                "duplicate-node",
                "`sentinel` names more than one way to reload the proxy",
                Some("keep one of `pid`, `pid-file` and `reload-command`".to_owned()),
            );
        } else {
            reload = by;
        }
    }
    let Some(reload) = reload else {
        d.error(
            node.name().span(),
            "missing-node",
            "`sentinel` does not say how to reload the proxy",
            Some("add `pid-file \"/run/sentinel.pid\"`, `pid 1234` or `reload-command \"systemctl\" \"reload\" \"sentinel\"`".to_owned()),
        );
        return Some(None);
    };
    Some(Some(SentinelSettings {
        reload,
        config_url,
        metrics_url,
        health_url,
        test_binary,
        confirm_timeout_ms: confirm.unwrap_or(DEFAULT_CONFIRM_TIMEOUT_MS),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"
version 1
node "edge-fra-1"
environment "prod"
labels region="fra" role="edge"
store "file:///srv/store"
state-dir "/var/lib/gitfleet-agent"
poll "2s" jitter="500ms"
heartbeat "1m"
drift "repair"
max-bundle-bytes 1048576
sentinel {
    pid-file "/run/sentinel.pid"
    config-url "http://127.0.0.1:9901/_gitfleet/config"
    confirm-timeout "3s"
}
"#;

    #[test]
    fn a_full_config_decodes() {
        let d = AgentConfig::decode(FULL);
        assert!(d.errors.is_empty(), "{:?}", d.errors);
        let c = d.value.unwrap();
        assert_eq!(c.node, "edge-fra-1");
        assert_eq!(c.labels["role"], "edge");
        assert_eq!(
            (c.poll_ms, c.jitter_ms, c.heartbeat_ms),
            (2000, 500, 60_000)
        );
        // `poll` written without `idle=`: the node polls as often when idle.
        assert_eq!(c.idle_poll_ms, 2000);
        assert_eq!(c.drift, DriftPolicy::Repair);
        assert_eq!(c.max_bundle_bytes, 1 << 20);
        let s = c.sentinel.unwrap();
        assert_eq!(s.reload, ReloadBy::PidFile("/run/sentinel.pid".into()));
        assert_eq!(s.confirm_timeout_ms, 3000);
        assert_eq!(s.health_url, None);
    }

    #[test]
    fn an_idle_poll_interval_is_read_and_may_not_be_shorter_than_the_poll() {
        let base =
            "version 1\nnode \"n\"\nenvironment \"dev\"\nstore \"memory://\"\nstate-dir \"/s\"\n";
        let c = AgentConfig::decode(&format!("{base}poll \"10s\" idle=\"10m\"\n"))
            .value
            .unwrap();
        assert_eq!((c.poll_ms, c.idle_poll_ms), (10_000, 600_000));
        let d = AgentConfig::decode(&format!("{base}poll \"10s\" idle=\"1s\"\n"));
        assert!(
            d.errors
                .iter()
                .any(|e| e.message.contains("shorter than the poll")),
            "{:?}",
            d.errors
        );
    }

    #[test]
    fn mirrors_are_read_in_order_and_must_be_web_urls_named_once() {
        let base =
            "version 1\nnode \"n\"\nenvironment \"dev\"\nstore \"memory://\"\nstate-dir \"/s\"\n";
        let c = AgentConfig::decode(&format!(
            "{base}mirror \"https://b.example/fleet\"\nmirror \"http://127.0.0.1:8080/fleet\"\n"
        ))
        .value
        .unwrap();
        assert_eq!(
            c.mirrors,
            ["https://b.example/fleet", "http://127.0.0.1:8080/fleet"]
        );
        let messages = |text: &str| -> Vec<String> {
            AgentConfig::decode(&format!("{base}{text}"))
                .errors
                .into_iter()
                .map(|e| e.message)
                .collect()
        };
        assert_eq!(
            messages("mirror \"s3://bucket/fleet\"\n"),
            ["mirror `s3://bucket/fleet` is not an https:// url (plain http only to a loopback address)"]
        );
        assert_eq!(
            messages("mirror \"http://cache.example.net/fleet\"\n").len(),
            1
        );
        assert_eq!(
            messages("mirror \"https://a/\"\nmirror \"https://a/\"\n"),
            ["mirror `https://a/` is named twice"]
        );
    }

    #[test]
    fn defaults_fill_what_is_not_said() {
        let d = AgentConfig::decode(
            "version 1\nnode \"n\"\nenvironment \"dev\"\nstore \"memory://\"\nstate-dir \"/s\"\n",
        );
        let c = d.value.unwrap();
        assert_eq!(
            (c.poll_ms, c.jitter_ms, c.idle_poll_ms),
            (DEFAULT_POLL_MS, DEFAULT_POLL_MS / 10, DEFAULT_IDLE_POLL_MS)
        );
        assert_eq!(c.drift, DriftPolicy::Report);
        assert!(c.labels.is_empty() && c.sentinel.is_none());
    }

    #[test]
    fn a_missing_node_and_an_unknown_setting_are_both_reported() {
        let d = AgentConfig::decode(
            "version 1\nenvironment \"dev\"\nstore \"memory://\"\nstate-dir \"/s\"\npol \"1s\"\n",
        );
        assert!(d.value.is_none());
        let messages: Vec<_> = d.errors.iter().map(|e| e.message.as_str()).collect();
        assert!(
            messages.contains(&"unknown node `pol` in agent config"),
            "{messages:?}"
        );
        assert!(
            messages.contains(&"agent config has no `node`"),
            "{messages:?}"
        );
        assert!(d
            .errors
            .iter()
            .any(|e| e.help.as_deref() == Some("did you mean `poll`?")));
    }

    #[test]
    fn sentinel_needs_exactly_one_way_to_reload() {
        let none = AgentConfig::decode(
            "version 1\nnode \"n\"\nenvironment \"dev\"\nstore \"memory://\"\nstate-dir \"/s\"\nsentinel { config-url \"http://127.0.0.1:1/\"; }\n",
        );
        assert_eq!(
            none.errors[0].message,
            "`sentinel` does not say how to reload the proxy"
        );
        let two = AgentConfig::decode(
            "version 1\nnode \"n\"\nenvironment \"dev\"\nstore \"memory://\"\nstate-dir \"/s\"\nsentinel { pid 4; reload-command \"true\"; }\n",
        );
        assert_eq!(
            two.errors[0].message,
            "`sentinel` names more than one way to reload the proxy"
        );
    }

    #[test]
    fn an_unknown_drift_policy_is_refused() {
        let d = AgentConfig::decode(
            "version 1\nnode \"n\"\nenvironment \"dev\"\nstore \"memory://\"\nstate-dir \"/s\"\ndrift \"ignore\"\n",
        );
        assert_eq!(d.errors[0].message, "drift policy `ignore` is not known");
    }
}
