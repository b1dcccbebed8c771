//! `rollouts/<name>.kdl`: how a config or mesh reaches its nodes.
//!
//! ```kdl
//! version 1
//! config "edge"
//! selector role="edge"
//! max-unavailable 1
//! bake "10m"
//! progress-deadline "15m"
//! step count=1
//! step percent=25
//! step percent=100
//! gates {
//!     healthy
//!     max-error-rate 0.01
//!     max-p99-latency "250ms"
//!     min-requests 100
//!     route "api"
//! }
//! ```

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{Selector, Window, WindowKind};
use crate::decode::{self, children, Decoded, Decoder};
use crate::span::Spanned;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RolloutFile {
    pub target: Spanned<RolloutTarget>,
    pub selector: Selector,
    pub steps: Vec<Step>,
    pub max_unavailable: Option<Spanned<u64>>,
    pub bake_seconds: Option<Spanned<u64>>,
    pub progress_deadline_seconds: Option<Spanned<u64>>,
    pub gates: Gates,
    pub windows: Vec<Window>,
    /// A paused rollout finishes nothing new and starts no further step.
    pub paused: bool,
    /// Return every node of the rollout to the previous bundle and hold
    /// there until this is removed (`gitfleet rollout rollback`).
    pub rollback: bool,
    /// The template of fleet.kdl this rollout starts from; what the file
    /// itself says wins ([`RolloutFile::with_template`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<Spanned<String>>,
}

/// `template "canary" { ... }` in fleet.kdl: steps, waits, gates and
/// windows a rollout takes with `template "canary"`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Template {
    pub name: Spanned<String>,
    pub steps: Vec<Step>,
    pub max_unavailable: Option<Spanned<u64>>,
    pub bake_seconds: Option<Spanned<u64>>,
    pub progress_deadline_seconds: Option<Spanned<u64>>,
    pub gates: Gates,
    pub windows: Vec<Window>,
}

impl RolloutFile {
    /// This rollout with `template` under it: every part the rollout file
    /// gives wins (its steps as a whole, each of max-unavailable, bake and
    /// progress-deadline, its windows as a whole, and each gate; `healthy`
    /// holds if either asks for it, and its HTTP checks replace the
    /// template's when it has any).
    pub fn with_template(&self, template: &Template) -> RolloutFile {
        let mut r = self.clone();
        if r.steps.is_empty() {
            r.steps.clone_from(&template.steps);
        }
        r.max_unavailable = r
            .max_unavailable
            .or_else(|| template.max_unavailable.clone());
        r.bake_seconds = r.bake_seconds.or_else(|| template.bake_seconds.clone());
        r.progress_deadline_seconds = r
            .progress_deadline_seconds
            .or_else(|| template.progress_deadline_seconds.clone());
        if r.windows.is_empty() {
            r.windows.clone_from(&template.windows);
        }
        let (g, t) = (&mut r.gates, &template.gates);
        g.healthy |= t.healthy;
        g.max_error_rate = g.max_error_rate.take().or_else(|| t.max_error_rate.clone());
        g.max_p99_latency_ms = g
            .max_p99_latency_ms
            .take()
            .or_else(|| t.max_p99_latency_ms.clone());
        g.max_cpu_percent = g
            .max_cpu_percent
            .take()
            .or_else(|| t.max_cpu_percent.clone());
        g.max_memory_percent = g
            .max_memory_percent
            .take()
            .or_else(|| t.max_memory_percent.clone());
        g.min_requests = g.min_requests.take().or_else(|| t.min_requests.clone());
        g.route = g.route.take().or_else(|| t.route.clone());
        if g.http_checks.is_empty() {
            g.http_checks.clone_from(&t.http_checks);
        }
        r
    }
}

/// The parts a rollout file and a template share, as they are decoded.
#[derive(Default)]
struct Parts {
    steps: Vec<Step>,
    max_unavailable: Option<Spanned<u64>>,
    bake: Option<Spanned<u64>>,
    deadline: Option<Spanned<u64>>,
    gates: Option<Gates>,
    windows: Vec<Window>,
}

impl Parts {
    /// Decode `node` into these parts when it is one of them.
    fn decode(&mut self, d: &mut Decoder, node: &kdl::KdlNode) -> bool {
        match decode::name(node) {
            "step" => self.steps.extend(decode_step(d, node)),
            "max-unavailable" => {
                let v = d.u64(node);
                d.once(&mut self.max_unavailable, node, v);
            }
            "bake" => {
                let v = d.duration(node);
                d.once(&mut self.bake, node, v);
            }
            "progress-deadline" => {
                let v = d.duration(node);
                d.once(&mut self.deadline, node, v);
            }
            "gates" => {
                let v = decode_gates(d, node);
                d.once(&mut self.gates, node, Some(v));
            }
            "window" => self
                .windows
                .extend(Window::decode(d, node, WindowKind::Allow)),
            "deny-window" => self
                .windows
                .extend(Window::decode(d, node, WindowKind::Deny)),
            _ => return false,
        }
        true
    }
}

/// What a `template` block may hold.
pub(crate) const TEMPLATE: &[&str] = &[
    "step",
    "max-unavailable",
    "bake",
    "progress-deadline",
    "gates",
    "window",
    "deny-window",
];

/// `template "NAME" { step ...; bake ...; gates { ... } }` in fleet.kdl.
pub(crate) fn decode_template(d: &mut Decoder, node: &kdl::KdlNode) -> Option<Template> {
    d.allow_props(node, &[]);
    d.max_args(node, 1);
    let name = d.arg(node, 0, decode::as_string, "the template's name");
    let mut parts = Parts::default();
    for c in children(node) {
        if !parts.decode(d, c) {
            d.unknown_node(c, "`template`", TEMPLATE);
        }
    }
    Some(Template {
        name: name?,
        steps: parts.steps,
        max_unavailable: parts.max_unavailable,
        bake_seconds: parts.bake,
        progress_deadline_seconds: parts.deadline,
        gates: parts.gates.unwrap_or_default(),
        windows: parts.windows,
    })
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RolloutTarget {
    /// A Sentinel config under `configs/<name>/`.
    Config(String),
    /// A WireGuard mesh under `meshes/<name>.kdl`.
    Mesh(String),
}

/// How many of the rollout's nodes in an environment run the new bundle once
/// this step is done.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum StepSize {
    Count(u64),
    Percent(u64),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Step {
    pub size: Spanned<StepSize>,
}

/// Health gates checked on the signed reports of a step's nodes before the
/// next step starts. A gate whose metric a node does not report fails.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Gates {
    pub healthy: bool,
    pub max_error_rate: Option<Spanned<f64>>,
    pub max_p99_latency_ms: Option<Spanned<u64>>,
    pub max_cpu_percent: Option<Spanned<f64>>,
    pub max_memory_percent: Option<Spanned<f64>>,
    pub http_checks: Vec<HttpCheck>,
    /// How many requests each node must have served in its latest report
    /// before the traffic gates (error rate, p99) judge it; fewer is not
    /// health, and the step waits ([`DEFAULT_MIN_REQUESTS`] when unset).
    pub min_requests: Option<Spanned<u64>>,
    /// Judge the traffic gates on this proxy route only (its `route`
    /// label), not on all the proxy's traffic.
    pub route: Option<Spanned<String>>,
}

/// The requests a traffic gate needs per node when `min-requests` is unset.
pub const DEFAULT_MIN_REQUESTS: u64 = 20;

impl Gates {
    /// Whether a gate judges the proxy's traffic (and so needs requests).
    pub fn judges_traffic(&self) -> bool {
        self.max_error_rate.is_some() || self.max_p99_latency_ms.is_some()
    }

    pub fn min_requests(&self) -> u64 {
        self.min_requests
            .as_ref()
            .map_or(DEFAULT_MIN_REQUESTS, |m| m.value)
    }
}

/// An HTTP request the agent makes; the gate passes when the answer's
/// status is one of `expect_status` and its body matches what is asked.
///
/// `http-check "http://127.0.0.1:9000/-/health"` (a URL on the node), or
/// `http-check "/healthz" upstream="api"` (that path on every target of
/// the config's upstream `api`), with `method="HEAD"`,
/// `expect-status="200,204"`, `body-contains="ok"`, `body-matches="^ok$"`
/// and `timeout="5s"` (at most 30 s; 2 s when unset).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpCheck {
    pub url: Spanned<String>,
    /// The statuses that pass (200 when unset).
    pub expect_status: Spanned<Vec<u64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<Spanned<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_contains: Option<Spanned<String>>,
    /// A regular expression (Rust `regex` syntax) the body must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_matches: Option<Spanned<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<Spanned<u64>>,
    /// Check `url` (a path) on each target of this upstream of the config.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<Spanned<String>>,
}

/// The longest an HTTP check may wait for its answer.
pub const MAX_HTTP_CHECK_TIMEOUT_MS: u64 = 30_000;

const TOP: &[&str] = &[
    "config",
    "mesh",
    "selector",
    "step",
    "max-unavailable",
    "bake",
    "progress-deadline",
    "gates",
    "window",
    "deny-window",
    "paused",
    "rollback",
    "template",
];
const GATES: &[&str] = &[
    "healthy",
    "max-error-rate",
    "max-p99-latency",
    "max-cpu-percent",
    "max-memory-percent",
    "http-check",
    "min-requests",
    "route",
];

impl RolloutFile {
    pub fn decode(text: &str) -> Decoded<RolloutFile> {
        let mut d = Decoder::default();
        let Some(doc) = d.parse(text) else {
            return d.finish(None);
        };
        let (mut target, mut selector, mut template) = (None, None, None);
        let (mut paused, mut rollback) = (None, None);
        let mut parts = Parts::default();
        for node in d.versioned(&doc, "rollout file") {
            if parts.decode(&mut d, node) {
                continue;
            }
            match decode::name(node) {
                "config" | "mesh" => {
                    let v = d.string(node).map(|s| {
                        s.map(|name| match decode::name(node) {
                            "config" => RolloutTarget::Config(name),
                            _ => RolloutTarget::Mesh(name),
                        })
                    });
                    if target.is_some() {
                        d.error(
                            decode::node_span(node),
                            "duplicate-node",
                            "a rollout targets exactly one config or mesh",
                            Some("split it into two rollout files".to_owned()),
                        );
                    } else {
                        target = v;
                    }
                }
                "selector" => {
                    let v = Selector::decode(&mut d, node);
                    d.once(&mut selector, node, Some(v));
                }
                "template" => {
                    let v = d.string(node);
                    d.once(&mut template, node, v);
                }
                "paused" => {
                    let v = d.bool(node);
                    d.once(&mut paused, node, v);
                }
                "rollback" => {
                    let v = d.bool(node);
                    d.once(&mut rollback, node, v);
                }
                _ => d.unknown_node(node, "rollout file", TOP),
            }
        }
        let at = decode::document_start(&doc);
        let target = d.required(
            target,
            at,
            "config",
            "rollout file",
            "config \"edge\" (or mesh \"backbone\")",
        );
        // With a template, its steps may be the ones (checked once the
        // template is known).
        if parts.steps.is_empty() && template.is_none() {
            d.error(
                at,
                "missing-node",
                "rollout file has no `step`",
                Some(
                    "add steps such as `step count=1` and `step percent=100`, or `template \"NAME\"` of fleet.kdl"
                        .to_owned(),
                ),
            );
        }
        let value = target.map(|target| RolloutFile {
            target,
            selector: selector.unwrap_or_default(),
            steps: parts.steps,
            max_unavailable: parts.max_unavailable,
            bake_seconds: parts.bake,
            progress_deadline_seconds: parts.deadline,
            gates: parts.gates.unwrap_or_default(),
            windows: parts.windows,
            paused: paused.is_some_and(|p| p.value),
            rollback: rollback.is_some_and(|r| r.value),
            template,
        });
        d.finish(value)
    }
}

fn decode_step(d: &mut Decoder, node: &kdl::KdlNode) -> Option<Step> {
    d.allow_props(node, &["count", "percent"]);
    d.max_args(node, 0);
    d.no_children(node);
    let count = d.prop(node, "count", decode::as_u64, "a positive integer");
    let percent = d.prop(node, "percent", decode::as_u64, "an integer from 1 to 100");
    let size = match (count, percent) {
        (Some(c), None) => c.map(StepSize::Count),
        (None, Some(p)) => p.map(StepSize::Percent),
        (Some(_), Some(_)) | (None, None) => {
            d.error(
                decode::node_span(node),
                "invalid-step",
                "a step needs exactly one of `count` or `percent`",
                Some("write `step count=2` or `step percent=25`".to_owned()),
            );
            return None;
        }
    };
    Some(Step { size })
}

/// `http-check "URL" expect-status=200 ...` (see [`HttpCheck`]).
pub(crate) fn decode_http_check(d: &mut Decoder, c: &kdl::KdlNode) -> Option<HttpCheck> {
    d.allow_props(
        c,
        &[
            "expect-status",
            "method",
            "body-contains",
            "body-matches",
            "timeout",
            "upstream",
        ],
    );
    d.max_args(c, 1);
    d.no_children(c);
    let url = d.arg(c, 0, decode::as_string, "a URL, or a path with `upstream`");
    let expect_status = d
        .prop(
            c,
            "expect-status",
            statuses,
            "an HTTP status, or several as \"200,204\"",
        )
        .unwrap_or(Spanned::new(vec![200], decode::node_span(c)));
    let method = d.prop_string(c, "method");
    let body_contains = d.prop_string(c, "body-contains");
    let body_matches = d.prop_string(c, "body-matches");
    let timeout_ms = d
        .prop_string(c, "timeout")
        .and_then(|t| d.parse_duration_ms(&t));
    let upstream = d.prop_string(c, "upstream");
    Some(HttpCheck {
        url: url?,
        expect_status,
        method,
        body_contains,
        body_matches,
        timeout_ms,
        upstream,
    })
}

/// `200` or `"200,204"`.
fn statuses(v: &kdl::KdlValue) -> Option<Vec<u64>> {
    if let Some(n) = decode::as_u64(v) {
        return Some(vec![n]);
    }
    decode::as_string(v)?
        .split(',')
        .map(|s| s.trim().parse().ok())
        .collect()
}

fn decode_gates(d: &mut Decoder, node: &kdl::KdlNode) -> Gates {
    d.allow_props(node, &[]);
    d.max_args(node, 0);
    let mut g = Gates::default();
    let mut healthy = None;
    for c in children(node) {
        match decode::name(c) {
            "healthy" => {
                d.allow_props(c, &[]);
                d.max_args(c, 0);
                d.no_children(c);
                d.once(&mut healthy, c, Some(true));
            }
            "max-error-rate" => {
                let v = d.scalar(c, decode::as_f64, "a ratio such as 0.01");
                d.once(&mut g.max_error_rate, c, v);
            }
            "max-p99-latency" => {
                let v = d.string(c).and_then(|s| d.parse_duration_ms(&s));
                d.once(&mut g.max_p99_latency_ms, c, v);
            }
            "max-cpu-percent" => {
                let v = d.scalar(c, decode::as_f64, "a percentage");
                d.once(&mut g.max_cpu_percent, c, v);
            }
            "max-memory-percent" => {
                let v = d.scalar(c, decode::as_f64, "a percentage");
                d.once(&mut g.max_memory_percent, c, v);
            }
            "min-requests" => {
                let v = d.scalar(c, decode::as_u64, "a number of requests");
                d.once(&mut g.min_requests, c, v);
            }
            "route" => {
                let v = d.string(c);
                d.once(&mut g.route, c, v);
            }
            "http-check" => {
                if let Some(check) = decode_http_check(d, c) {
                    g.http_checks.push(check);
                }
            }
            _ => d.unknown_node(c, "`gates`", GATES),
        }
    }
    g.healthy = healthy.unwrap_or(false);
    g
}
