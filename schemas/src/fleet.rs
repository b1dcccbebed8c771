//! `fleet.kdl`: the fleet's name, where bundles go, whom to trust, defaults
//! and lint rules.
//!
//! ```kdl
//! version 1
//! name "acme-edge"
//! store "s3://acme-fleet/edge"
//! trust threshold=1 {
//!     root-key "base64 ed25519 public key"
//! }
//! defaults {
//!     max-unavailable 1
//!     bake "5m"
//!     poll-interval "30s"
//!     idle-poll-interval "5m"
//!     poll-jitter "5s"
//!     heartbeat "1m"
//!     report-to "https://gitfleet.internal:8080"   // reports over HTTP(S)
//!     decommission-grace "7d"
//!     drift "repair"
//!     health-check "http://127.0.0.1:9000/-/health" expect-status=200
//! }
//! lint "listener-tls" severity="error" {
//!     environments "prod"
//! }
//! lint "no-debug-logs" severity="error" {      // a rule of the fleet's own
//!     forbid "level\\s+\"debug\"" message="debug logs leak request bodies"
//!     require "request-timeout-secs"
//!     max-file-bytes 65536
//! }
//! approver "alice" key="base64 ed25519 public key"
//! proxy "zentinel" version="0.6.45" {
//!     selector role="edge"
//! }
//! revoke "sha256:<64 hex digits>" reason="CVE-2026-1234"
//! group "pilot" {                              // by node list
//!     nodes "edge-fra-1" "edge-ams-1"
//! }
//! group "eu-edge" role="edge" {                // or by labels
//!     in "region" "fra" "ams"
//! }
//! owners "configs/edge/**" teams="acme/edge"   // see `owners`
//! viewers { teams "acme/eng"; }              // `gitfleet serve` sign-in
//! operators { users "alice"; teams "acme/sre"; }
//! notify "ops" {                             // see `notify` for the rest
//!     webhook "https://hooks.internal/gitfleet" secret-env="GITFLEET_NOTIFY_OPS_SECRET"
//!     events "rollout-failed" "rollout-rolled-back"
//! }
//! template "canary" {
//!     step count=1
//!     step percent=100
//!     bake "10m"
//!     gates { healthy; }
//! }
//! ```

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::decode::{self, children, Decoded, Decoder};
use crate::diagnostic::Severity;
use crate::span::{Span, Spanned};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FleetFile {
    pub name: Spanned<String>,
    /// Object store URL: `file:///path`, `s3://bucket/prefix` or `memory://`.
    pub store: Option<Spanned<String>>,
    /// Branch the reconciler writes rollout state to.
    pub state_branch: Option<Spanned<String>>,
    pub trust: Option<Trust>,
    pub defaults: Defaults,
    pub lints: Vec<LintRule>,
    /// People who may approve with `gitfleet approve`, by the name
    /// environments.kdl's `approvals { users ... }` uses, and their key.
    pub approvers: Vec<Approver>,
    /// Which proxy the nodes a selector picks run, in order: the first
    /// rule that matches a node wins, and its node file's own `proxy` wins
    /// over every rule.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub proxies: Vec<crate::proxy::ProxyRule>,
    /// Rollout templates (`template "canary" { ... }`), by the name a
    /// rollout's `template` uses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub templates: Vec<crate::rollout::Template>,
    /// Bundles no node may run (`revoke "sha256:..." reason="..."`): the
    /// reconciler never rolls one out and rolls back where one is the
    /// target; the list travels in every signed channel manifest and agents
    /// never activate a listed bundle, moving off one that is active.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub revoked: Vec<Revocation>,
    /// Named sets of nodes selectors take with `group "NAME"`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<Group>,
    /// Who is told what (`notify "ops" { webhook ... }`), by receiver name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notify: Vec<crate::notify::Notify>,
    /// Who owns which paths (`owners "configs/edge/**" teams="acme/edge"`):
    /// a change to owned paths waits for an owner's approval. A rule, read
    /// from the commit the rules in force come from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub owners: Vec<crate::owners::Owners>,
    /// Who may see the status pages of `gitfleet serve` once sign-in is
    /// on (`viewers { users "a"; teams "acme/ops" }`); operators may too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub viewers: Option<Access>,
    /// Who may also pause, resume, roll back and approve from the pages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operators: Option<Access>,
}

/// `viewers { ... }` or `operators { ... }`: people by git host login, and
/// teams (`org/slug`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Access {
    pub users: Vec<Spanned<String>>,
    pub teams: Vec<Spanned<String>>,
}

impl Access {
    /// Whether `login`, a member of `teams`, is among these people.
    pub fn admits(&self, login: &str, teams: &[String]) -> bool {
        self.users
            .iter()
            .any(|u| u.value.eq_ignore_ascii_case(login))
            || self
                .teams
                .iter()
                .any(|t| teams.iter().any(|m| m.eq_ignore_ascii_case(&t.value)))
    }

    /// Every team named.
    pub fn team_names(&self) -> impl Iterator<Item = &str> {
        self.teams.iter().map(|t| t.value.as_str())
    }
}

fn decode_access(d: &mut Decoder, node: &kdl::KdlNode) -> Access {
    d.allow_props(node, &[]);
    d.max_args(node, 0);
    let mut out = Access::default();
    for c in children(node) {
        match decode::name(c) {
            "users" => out.users.extend(d.strings(c)),
            "teams" => {
                for t in d.strings(c) {
                    if t.value
                        .split_once('/')
                        .is_none_or(|(o, s)| o.is_empty() || s.is_empty())
                    {
                        d.error(
                            t.span,
                            "access-team",
                            format!("team `{}` is not `org/slug`", t.value),
                            Some("name a team as GitHub does, like `acme/sre`".to_owned()),
                        );
                    } else {
                        out.teams.push(t);
                    }
                }
            }
            _ => d.unknown_node(c, &format!("`{}`", decode::name(node)), &["users", "teams"]),
        }
    }
    out
}

/// `group "pilot" { nodes "a" "b" }` or `group "eu" region="fra" { in ... }`:
/// a set of nodes, by a node list or by labels (never both).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Group {
    pub name: Spanned<String>,
    /// Labels and requirements (never other groups).
    pub selector: crate::common::Selector,
    /// Node ids; when given, exactly these nodes are the group.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<Spanned<String>>,
}

impl Group {
    /// Whether the node `id` with `labels` is a member.
    pub fn contains(
        &self,
        id: &str,
        labels: &std::collections::BTreeMap<String, Spanned<String>>,
    ) -> bool {
        if self.nodes.is_empty() {
            self.selector.matches_labels(labels)
        } else {
            self.nodes.iter().any(|n| n.value == id)
        }
    }
}

/// `revoke "sha256:<hex>" reason="CVE-2026-1234"`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Revocation {
    pub digest: Spanned<String>,
    pub reason: Option<Spanned<String>>,
}

/// `approver "alice" key="..."`: an approval signed with this key counts
/// as alice's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Approver {
    pub name: Spanned<String>,
    /// Base64 ed25519 public key.
    pub key: Spanned<String>,
}

/// The offline root keys agents pin, and how many must sign a root.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Trust {
    pub threshold: Spanned<u64>,
    /// Base64 ed25519 public keys.
    pub root_keys: Vec<Spanned<String>>,
    #[serde(skip)]
    #[schemars(skip)]
    pub span: Span,
}

/// Rollout settings used where a rollout file says nothing.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Defaults {
    pub max_unavailable: Option<Spanned<u64>>,
    pub bake_seconds: Option<Spanned<u64>>,
    pub progress_deadline_seconds: Option<Spanned<u64>>,
    pub poll_interval_seconds: Option<Spanned<u64>>,
    pub drift: Option<Spanned<DriftPolicy>>,
    /// How often agents poll while no rollout moves in their environment
    /// (default: `poll-interval`); while one does, they poll at
    /// `poll-interval`.
    pub idle_poll_interval_seconds: Option<Spanned<u64>>,
    /// Agents wait `poll-interval` plus up to this much at random.
    pub poll_jitter_seconds: Option<Spanned<u64>>,
    /// Agents report at least this often.
    pub heartbeat_seconds: Option<Spanned<u64>>,
    /// How long after a node file leaves the repo its status and
    /// enrollment objects stay in the store (default 7 days).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decommission_grace_seconds: Option<Spanned<u64>>,
    /// URLs every agent GETs on its node: a node is healthy only while
    /// each answers its expected status.
    pub health_checks: Vec<crate::rollout::HttpCheck>,
    /// Base URLs of reconcilers (`gitfleet serve`) that take status
    /// reports: a report that says only "alive" goes there instead of the
    /// store, so liveness costs no store write per heartbeat.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub report_to: Vec<Spanned<String>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum DriftPolicy {
    /// Report drift in the node's status and leave the files alone.
    Report,
    /// Report drift and restore the bundle's files.
    Repair,
}

/// A lint rule switched on, e.g. `lint "route-timeout" severity="warning"`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LintRule {
    pub name: Spanned<String>,
    pub severity: Spanned<Severity>,
    /// The rule's threshold, for rules that take one.
    pub limit: Option<Spanned<u64>>,
    /// Environments the rule applies to; empty means all.
    pub environments: Vec<Spanned<String>>,
    /// Configs the rule applies to; empty means all.
    pub configs: Vec<Spanned<String>>,
    /// A rule of the fleet's own (any name that is not a built-in rule):
    /// patterns a config's files must not or must contain.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub patterns: Vec<Pattern>,
    /// A rule of the fleet's own: no file of a config over this size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_file_bytes: Option<Spanned<u64>>,
    /// A rule of the fleet's own: node paths a config's entry file must
    /// have (`require-path "listeners/listener/request-timeout-secs"`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<RequiredPath>,
}

/// `require-path "a/b/c" message="..."`: every `b` node under a
/// top-level `a` has a `c` child node or property (and there is some
/// `a/b`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RequiredPath {
    pub path: Spanned<String>,
    pub message: Option<Spanned<String>>,
}

/// `forbid "REGEX" message="..."` or `require "REGEX" message="..."` in a
/// lint rule of the fleet's own.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Pattern {
    /// Whether a match is a finding (`forbid`) or its absence is (`require`).
    pub forbid: bool,
    /// A regular expression (Rust `regex` syntax), matched against each file.
    pub regex: Spanned<String>,
    /// What a finding says, instead of the pattern.
    pub message: Option<Spanned<String>>,
}

const TOP: &[&str] = &[
    "name",
    "store",
    "state-branch",
    "trust",
    "defaults",
    "lint",
    "approver",
    "proxy",
    "template",
    "revoke",
    "group",
    "notify",
    "owners",
    "viewers",
    "operators",
];
const DEFAULTS: &[&str] = &[
    "max-unavailable",
    "bake",
    "progress-deadline",
    "poll-interval",
    "idle-poll-interval",
    "poll-jitter",
    "heartbeat",
    "report-to",
    "decommission-grace",
    "health-check",
    "drift",
];

impl FleetFile {
    pub fn decode(text: &str) -> Decoded<FleetFile> {
        let mut d = Decoder::default();
        let Some(doc) = d.parse(text) else {
            return d.finish(None);
        };
        let (mut name, mut store, mut state_branch, mut trust, mut defaults) =
            (None, None, None, None, None);
        let mut lints = Vec::new();
        let mut approvers = Vec::new();
        let mut proxies = Vec::new();
        let mut templates = Vec::new();
        let mut revoked = Vec::new();
        let mut groups = Vec::new();
        let mut notify: Vec<crate::notify::Notify> = Vec::new();
        let mut owners = Vec::new();
        let (mut viewers, mut operators) = (None, None);
        for node in d.versioned(&doc, "fleet.kdl") {
            match decode::name(node) {
                "name" => {
                    let v = d.string(node);
                    d.once(&mut name, node, v);
                }
                "store" => {
                    let v = d.string(node);
                    d.once(&mut store, node, v);
                }
                "state-branch" => {
                    let v = d.string(node);
                    d.once(&mut state_branch, node, v);
                }
                "trust" => {
                    let v = decode_trust(&mut d, node);
                    d.once(&mut trust, node, Some(v));
                }
                "defaults" => {
                    let v = decode_defaults(&mut d, node);
                    d.once(&mut defaults, node, Some(v));
                }
                "lint" => lints.extend(decode_lint(&mut d, node)),
                "approver" => approvers.extend(decode_approver(&mut d, node)),
                "proxy" => proxies.extend(crate::proxy::decode_rule(&mut d, node)),
                "template" => templates.extend(crate::rollout::decode_template(&mut d, node)),
                "revoke" => revoked.extend(decode_revocation(&mut d, node)),
                "group" => groups.extend(decode_group(&mut d, node)),
                "owners" => {
                    if let Some(o) = crate::owners::decode_owners(&mut d, node) {
                        let same = |x: &crate::owners::Owners| x.pattern.value == o.pattern.value;
                        if owners.iter().any(same) {
                            d.error(
                                o.pattern.span,
                                "duplicate-owners",
                                format!("owners `{}` is given more than once", o.pattern.value),
                                Some("list every owner of those paths in one rule".to_owned()),
                            );
                        } else {
                            owners.push(o);
                        }
                    }
                }
                "viewers" => {
                    let v = decode_access(&mut d, node);
                    d.once(&mut viewers, node, Some(v));
                }
                "operators" => {
                    let v = decode_access(&mut d, node);
                    d.once(&mut operators, node, Some(v));
                }
                "notify" => {
                    if let Some(n) = crate::notify::decode_notify(&mut d, node) {
                        if notify.iter().any(|o| o.name.value == n.name.value) {
                            d.error(
                                n.name.span,
                                "duplicate-notify",
                                format!("notify `{}` is given more than once", n.name.value),
                                Some("give each receiver its own name".to_owned()),
                            );
                        } else {
                            notify.push(n);
                        }
                    }
                }
                _ => d.unknown_node(node, "fleet.kdl", TOP),
            }
        }
        let name = d.required(
            name,
            decode::document_start(&doc),
            "name",
            "fleet.kdl",
            "name \"my-fleet\"",
        );
        let value = name.map(|name| FleetFile {
            name,
            store,
            state_branch,
            trust,
            defaults: defaults.unwrap_or_default(),
            lints,
            approvers,
            proxies,
            templates,
            revoked,
            groups,
            notify,
            owners,
            viewers,
            operators,
        });
        d.finish(value)
    }
}

fn decode_group(d: &mut Decoder, node: &kdl::KdlNode) -> Option<Group> {
    // The name is the one value; the properties are labels.
    let name = d.arg(node, 0, decode::as_string, "the group's name");
    let mut nodes = Vec::new();
    let selector = crate::common::Selector::decode_with(d, node, 1, &mut |d, c| {
        if decode::name(c) == "nodes" {
            nodes.extend(d.strings(c));
        } else {
            d.unknown_node(
                c,
                "a group",
                &["nodes", "in", "not-in", "exists", "not-exists"],
            );
        }
    });
    for g in &selector.groups {
        d.error(
            g.span,
            "nested-group",
            format!(
                "group `{}` cannot take another group",
                name.as_ref().map_or("", |n| n.value.as_str())
            ),
            Some("list the other group's labels or nodes here".to_owned()),
        );
    }
    let by_labels = !selector.labels.is_empty() || !selector.requirements.is_empty();
    if by_labels && !nodes.is_empty() {
        d.error(
            decode::node_span(node),
            "group-labels-and-nodes",
            "a group lists nodes or selects by labels, not both".to_owned(),
            Some("make two groups and name both in the selector".to_owned()),
        );
        return None;
    }
    if !by_labels && nodes.is_empty() {
        d.error(
            decode::node_span(node),
            "empty-group",
            "a group needs `nodes \"a\" \"b\"` or labels to select by".to_owned(),
            Some(
                "write `group \"pilot\" { nodes \"edge-1\" }` or `group \"eu\" region=\"fra\"`"
                    .to_owned(),
            ),
        );
        return None;
    }
    Some(Group {
        name: name?,
        selector,
        nodes,
    })
}

fn decode_revocation(d: &mut Decoder, node: &kdl::KdlNode) -> Option<Revocation> {
    d.allow_props(node, &["reason"]);
    d.max_args(node, 1);
    d.no_children(node);
    let digest = d.arg(node, 0, decode::as_string, "a bundle digest, sha256:<hex>");
    let reason = d.prop(
        node,
        "reason",
        decode::as_string,
        "why, for people and pages",
    );
    Some(Revocation {
        digest: digest?,
        reason,
    })
}

fn decode_approver(d: &mut Decoder, node: &kdl::KdlNode) -> Option<Approver> {
    d.allow_props(node, &["key"]);
    d.max_args(node, 1);
    d.no_children(node);
    let name = d.arg(node, 0, decode::as_string, "the approver's name");
    let key = d.required_prop(
        node,
        "key",
        decode::as_string,
        "a base64 ed25519 public key",
    );
    Some(Approver {
        name: name?,
        key: key?,
    })
}

fn decode_trust(d: &mut Decoder, node: &kdl::KdlNode) -> Trust {
    d.allow_props(node, &["threshold"]);
    d.max_args(node, 0);
    let threshold = d
        .prop(node, "threshold", decode::as_u64, "a positive integer")
        .unwrap_or(Spanned::new(1, decode::node_span(node)));
    let mut root_keys = Vec::new();
    for c in children(node) {
        match decode::name(c) {
            "root-key" => root_keys.extend(d.string(c)),
            _ => d.unknown_node(c, "`trust`", &["root-key"]),
        }
    }
    Trust {
        threshold,
        root_keys,
        span: decode::node_span(node),
    }
}

fn decode_defaults(d: &mut Decoder, node: &kdl::KdlNode) -> Defaults {
    d.allow_props(node, &[]);
    d.max_args(node, 0);
    let mut out = Defaults::default();
    for c in children(node) {
        match decode::name(c) {
            "max-unavailable" => {
                let v = d.u64(c);
                d.once(&mut out.max_unavailable, c, v);
            }
            "bake" => {
                let v = d.duration(c);
                d.once(&mut out.bake_seconds, c, v);
            }
            "progress-deadline" => {
                let v = d.duration(c);
                d.once(&mut out.progress_deadline_seconds, c, v);
            }
            "poll-interval" => {
                let v = d.duration(c);
                d.once(&mut out.poll_interval_seconds, c, v);
            }
            "idle-poll-interval" => {
                let v = d.duration(c);
                d.once(&mut out.idle_poll_interval_seconds, c, v);
            }
            "poll-jitter" => {
                let v = d.duration(c);
                d.once(&mut out.poll_jitter_seconds, c, v);
            }
            "heartbeat" => {
                let v = d.duration(c);
                d.once(&mut out.heartbeat_seconds, c, v);
            }
            "decommission-grace" => {
                let v = d.duration(c);
                d.once(&mut out.decommission_grace_seconds, c, v);
            }
            "report-to" => {
                d.no_children(c);
                if !out.report_to.is_empty() {
                    d.error(
                        decode::node_span(c),
                        "duplicate-node",
                        "`report-to` is given twice".to_owned(),
                        Some("list every URL on one `report-to`".to_owned()),
                    );
                }
                for url in d.strings(c) {
                    let ok = ["http://", "https://"].iter().any(|p| {
                        url.value
                            .strip_prefix(p)
                            .is_some_and(|rest| !rest.is_empty())
                    });
                    if ok {
                        out.report_to.push(url);
                    } else {
                        d.error(
                            url.span,
                            "invalid-value",
                            format!("`{}` is not an http:// or https:// URL", url.value),
                            Some("write the reconciler's base URL, such as \"https://gitfleet.internal:8080\"".to_owned()),
                        );
                    }
                }
            }
            "health-check" => {
                if let Some(check) = crate::rollout::decode_http_check(d, c) {
                    out.health_checks.push(check);
                }
            }
            "drift" => {
                let v = d.string(c).and_then(|s| match s.value.as_str() {
                    "report" => Some(Spanned::new(DriftPolicy::Report, s.span)),
                    "repair" => Some(Spanned::new(DriftPolicy::Repair, s.span)),
                    other => {
                        d.error(
                            s.span,
                            "invalid-value",
                            format!("unknown drift policy `{other}`"),
                            Some("use \"report\" or \"repair\"".to_owned()),
                        );
                        None
                    }
                });
                d.once(&mut out.drift, c, v);
            }
            _ => d.unknown_node(c, "`defaults`", DEFAULTS),
        }
    }
    out
}

fn decode_lint(d: &mut Decoder, node: &kdl::KdlNode) -> Option<LintRule> {
    d.allow_props(node, &["severity", "limit"]);
    d.max_args(node, 1);
    let name = d.arg(node, 0, decode::as_string, "a lint rule name");
    let severity = d
        .required_prop(
            node,
            "severity",
            decode::as_string,
            "\"error\", \"warning\" or \"info\"",
        )
        .and_then(|s| match s.value.parse::<Severity>() {
            Ok(sev) => Some(Spanned::new(sev, s.span)),
            Err(()) => {
                d.error(
                    s.span,
                    "invalid-value",
                    format!("unknown severity `{}`", s.value),
                    Some("use \"error\", \"warning\" or \"info\"".to_owned()),
                );
                None
            }
        });
    let limit = d.prop(node, "limit", decode::as_u64, "a non-negative integer");
    let (mut environments, mut configs, mut patterns) = (Vec::new(), Vec::new(), Vec::new());
    let mut max_file_bytes = None;
    let mut paths = Vec::new();
    for c in children(node) {
        match decode::name(c) {
            "environments" => environments.extend(d.strings(c)),
            "configs" => configs.extend(d.strings(c)),
            "forbid" | "require" => {
                d.allow_props(c, &["message"]);
                d.max_args(c, 1);
                d.no_children(c);
                let regex = d.arg(c, 0, decode::as_string, "a regular expression");
                let message = d.prop(c, "message", decode::as_string, "what a finding says");
                if let Some(regex) = regex {
                    patterns.push(Pattern {
                        forbid: decode::name(c) == "forbid",
                        regex,
                        message,
                    });
                }
            }
            "max-file-bytes" => {
                let v = d.u64(c);
                d.once(&mut max_file_bytes, c, v);
            }
            "require-path" => {
                d.allow_props(c, &["message"]);
                d.max_args(c, 1);
                d.no_children(c);
                let path = d.arg(
                    c,
                    0,
                    decode::as_string,
                    "a node path such as \"system/worker-threads\"",
                );
                let message = d.prop(c, "message", decode::as_string, "what a finding says");
                if let Some(path) = path {
                    paths.push(RequiredPath { path, message });
                }
            }
            _ => d.unknown_node(
                c,
                "`lint`",
                &[
                    "environments",
                    "configs",
                    "forbid",
                    "require",
                    "require-path",
                    "max-file-bytes",
                ],
            ),
        }
    }
    Some(LintRule {
        name: name?,
        severity: severity?,
        limit,
        environments,
        configs,
        patterns,
        max_file_bytes,
        paths,
    })
}
