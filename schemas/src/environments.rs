//! `environments.kdl`: the environments a change passes through, in order,
//! with their approval rules and change windows.
//!
//! ```kdl
//! version 1
//! environment "dev"
//! environment "staging" { after "dev"; }
//! environment "prod" {
//!     after "staging"
//!     approvals 2 { users "alice" "bob"; teams "acme/sre"; }
//!     window "weekdays" cron="0 8 * * Mon-Thu" duration="9h" time-zone="Europe/Berlin"
//! }
//! ```

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{Window, WindowKind};
use crate::decode::{self, children, Decoded, Decoder};
use crate::span::{Span, Spanned};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EnvironmentsFile {
    pub environments: Vec<Environment>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Environment {
    pub name: Spanned<String>,
    /// The environment a change must complete in before it enters this one.
    pub after: Option<Spanned<String>>,
    /// How long a signed channel manifest stays valid.
    pub freshness_seconds: Option<Spanned<u64>>,
    pub approvals: Option<Approvals>,
    pub windows: Vec<Window>,
    #[serde(skip)]
    #[schemars(skip)]
    pub span: Span,
}

/// `approvals 2 { users "alice"; teams "acme/sre"; }`: approving reviews needed
/// on the pull request that brought a change, from these people or teams.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Approvals {
    pub required: Spanned<u64>,
    pub users: Vec<Spanned<String>>,
    pub teams: Vec<Spanned<String>>,
}

impl Environment {
    /// The approval rule, when it asks for at least one approving review
    /// (`approvals 0` is the same as none).
    pub fn approval_rule(&self) -> Option<&Approvals> {
        self.approvals.as_ref().filter(|a| a.required.value > 0)
    }
}

const ENV: &[&str] = &["after", "freshness", "approvals", "window", "deny-window"];

impl EnvironmentsFile {
    pub fn decode(text: &str) -> Decoded<EnvironmentsFile> {
        let mut d = Decoder::default();
        let Some(doc) = d.parse(text) else {
            return d.finish(None);
        };
        let mut environments = Vec::new();
        for node in d.versioned(&doc, "environments.kdl") {
            match decode::name(node) {
                "environment" => environments.extend(decode_environment(&mut d, node)),
                _ => d.unknown_node(node, "environments.kdl", &["environment"]),
            }
        }
        d.finish(Some(EnvironmentsFile { environments }))
    }
}

fn decode_environment(d: &mut Decoder, node: &kdl::KdlNode) -> Option<Environment> {
    d.allow_props(node, &[]);
    d.max_args(node, 1);
    let name = d.arg(node, 0, decode::as_string, "an environment name");
    let (mut after, mut freshness_seconds, mut approvals) = (None, None, None);
    let mut windows = Vec::new();
    for c in children(node) {
        match decode::name(c) {
            "after" => {
                let v = d.string(c);
                d.once(&mut after, c, v);
            }
            "freshness" => {
                let v = d.duration(c);
                d.once(&mut freshness_seconds, c, v);
            }
            "approvals" => {
                let v = decode_approvals(d, c);
                d.once(&mut approvals, c, v);
            }
            "window" => windows.extend(Window::decode(d, c, WindowKind::Allow)),
            "deny-window" => windows.extend(Window::decode(d, c, WindowKind::Deny)),
            _ => d.unknown_node(c, "`environment`", ENV),
        }
    }
    Some(Environment {
        name: name?,
        after,
        freshness_seconds,
        approvals,
        windows,
        span: decode::node_span(node),
    })
}

fn decode_approvals(d: &mut Decoder, node: &kdl::KdlNode) -> Option<Approvals> {
    d.allow_props(node, &[]);
    d.max_args(node, 1);
    let required = d.arg(node, 0, decode::as_u64, "the number of approving reviews");
    let (mut users, mut teams) = (Vec::new(), Vec::new());
    for c in children(node) {
        match decode::name(c) {
            "users" => users.extend(d.strings(c)),
            "teams" => teams.extend(d.strings(c)),
            _ => d.unknown_node(c, "`approvals`", &["users", "teams"]),
        }
    }
    Some(Approvals {
        required: required?,
        users,
        teams,
    })
}
