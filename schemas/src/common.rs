//! Pieces shared by several documents: selectors and change windows.

use std::collections::BTreeMap;

use kdl::KdlNode;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::decode::{self, Decoder};
use crate::span::{Span, Spanned};

/// Which nodes a rollout, mesh or proxy rule takes: every part must hold.
///
/// ```kdl
/// selector role="edge" {        // label equality
///     in "region" "fra" "ams"    // the label is one of these
///     not-in "tier" "canary"     // absent, or none of these
///     exists "gpu"               // the node has the label
///     not-exists "retired"       // the node lacks it
///     group "pilot"              // a member of fleet.kdl's group
/// }
/// ```
///
/// An empty selector matches every node. Groups are resolved against
/// fleet.kdl (`gitfleet_policy`'s `select`); [`Selector::matches_labels`]
/// judges the rest.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Selector {
    pub labels: BTreeMap<String, Spanned<String>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requirements: Vec<Requirement>,
    /// Groups of fleet.kdl a node must be a member of.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<Spanned<String>>,
    #[serde(skip)]
    #[schemars(skip)]
    pub span: Span,
}

/// A set-based requirement on one label, as Kubernetes' label selectors
/// have them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Requirement {
    pub key: Spanned<String>,
    pub operator: Operator,
    /// The values of `in` and `not-in`; empty for the others.
    pub values: Vec<Spanned<String>>,
    #[serde(skip)]
    #[schemars(skip)]
    pub span: Span,
}

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum Operator {
    /// The label is one of the values.
    In,
    /// The label is absent or none of the values.
    NotIn,
    /// The node has the label, whatever its value.
    Exists,
    /// The node does not have the label.
    NotExists,
}

impl Operator {
    pub const NAMES: [&'static str; 4] = ["in", "not-in", "exists", "not-exists"];

    pub fn name(self) -> &'static str {
        match self {
            Operator::In => "in",
            Operator::NotIn => "not-in",
            Operator::Exists => "exists",
            Operator::NotExists => "not-exists",
        }
    }

    fn parse(name: &str) -> Option<Operator> {
        Some(match name {
            "in" => Operator::In,
            "not-in" => Operator::NotIn,
            "exists" => Operator::Exists,
            "not-exists" => Operator::NotExists,
            _ => return None,
        })
    }

    /// Whether a node whose label `key` is `label` meets `key <op> values`:
    /// the one rule for the fleet repo's selectors and the channel
    /// manifest's alike.
    pub fn holds<'a>(self, label: Option<&str>, mut values: impl Iterator<Item = &'a str>) -> bool {
        match self {
            Operator::In => label.is_some_and(|l| values.any(|v| v == l)),
            Operator::NotIn => label.is_none_or(|l| values.all(|v| v != l)),
            Operator::Exists => label.is_some(),
            Operator::NotExists => label.is_none(),
        }
    }
}

impl Selector {
    /// Whether the labels and requirements hold for a node with `labels`;
    /// its groups are not judged here.
    pub fn matches_labels(&self, labels: &BTreeMap<String, Spanned<String>>) -> bool {
        let label = |k: &str| labels.get(k).map(|l| l.value.as_str());
        labels_match(
            self.labels
                .iter()
                .map(|(k, v)| (k.as_str(), v.value.as_str())),
            label,
        ) && self.requirements.iter().all(|r| {
            r.operator.holds(
                label(&r.key.value),
                r.values.iter().map(|v| v.value.as_str()),
            )
        })
    }

    /// Whether the selector says nothing: every node matches.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty() && self.requirements.is_empty() && self.groups.is_empty()
    }

    /// `name key="value" ... { in "key" "a" "b"; group "g"; ... }`.
    pub(crate) fn decode(d: &mut Decoder, node: &KdlNode) -> Self {
        Self::decode_with(d, node, 0, &mut |d, c| {
            d.unknown_node(c, "a selector", &SELECTOR_CHILDREN);
        })
    }

    /// As [`Selector::decode`] on a node taking `values` positional values
    /// (the caller's), handing children that are no requirement or group to
    /// `other` (a group's `nodes`).
    pub(crate) fn decode_with(
        d: &mut Decoder,
        node: &KdlNode,
        values: usize,
        other: &mut dyn FnMut(&mut Decoder, &KdlNode),
    ) -> Self {
        d.max_args(node, values);
        let labels = d.string_props(node);
        let (mut requirements, mut groups) = (Vec::new(), Vec::new());
        for c in decode::children(node) {
            let name = decode::name(c);
            if let Some(operator) = Operator::parse(name) {
                requirements.extend(decode_requirement(d, c, operator));
            } else if name == "group" {
                groups.extend(d.strings(c));
            } else {
                other(d, c);
            }
        }
        Selector {
            labels,
            requirements,
            groups,
            span: decode::node_span(node),
        }
    }
}

const SELECTOR_CHILDREN: [&str; 5] = ["in", "not-in", "exists", "not-exists", "group"];

/// `in "key" "a" "b"`, `not-in "key" "a"`, `exists "key"`, `not-exists "key"`.
fn decode_requirement(d: &mut Decoder, node: &KdlNode, operator: Operator) -> Option<Requirement> {
    let mut strings = d.strings(node).into_iter();
    let key = strings.next()?;
    let values: Vec<_> = strings.collect();
    let takes_values = matches!(operator, Operator::In | Operator::NotIn);
    if takes_values && values.is_empty() {
        d.error(
            decode::node_span(node),
            "missing-value",
            format!("`{}` needs a label and at least one value", operator.name()),
            Some(format!(
                "write `{} \"{}\" \"a\" \"b\"`",
                operator.name(),
                key.value
            )),
        );
        return None;
    }
    if !takes_values {
        if let Some(extra) = values.first() {
            d.error(
                extra.span,
                "too-many-values",
                format!("`{}` takes one label name, no values", operator.name()),
                Some(format!("write `{} \"{}\"`", operator.name(), key.value)),
            );
            return None;
        }
    }
    Some(Requirement {
        key,
        operator,
        values,
        span: decode::node_span(node),
    })
}

/// The one label-selector rule, for the fleet repo's selectors and the
/// channel manifest's alike: every `key=value` of the selector is a label
/// of the node with that value (an empty selector selects every node).
pub fn labels_match<'a>(
    selector: impl IntoIterator<Item = (&'a str, &'a str)>,
    label: impl Fn(&str) -> Option<&'a str>,
) -> bool {
    selector.into_iter().all(|(k, v)| label(k) == Some(v))
}

impl std::fmt::Display for Selector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_empty() {
            return f.write_str("(all nodes)");
        }
        let mut parts: Vec<_> = self
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={}", v.value))
            .collect();
        for r in &self.requirements {
            let values: Vec<&str> = r.values.iter().map(|v| v.value.as_str()).collect();
            parts.push(match r.operator {
                Operator::In => format!("{} in ({})", r.key.value, values.join(",")),
                Operator::NotIn => format!("{} notin ({})", r.key.value, values.join(",")),
                Operator::Exists => r.key.value.clone(),
                Operator::NotExists => format!("!{}", r.key.value),
            });
        }
        for g in &self.groups {
            parts.push(format!("group {}", g.value));
        }
        f.write_str(&parts.join(","))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum WindowKind {
    /// Changes may proceed while an allow window is open.
    Allow,
    /// Changes stop while a deny window is open, whatever allow windows say.
    Deny,
}

/// A recurring window: opens at each time the cron expression fires, in the
/// given time zone, and stays open for `duration_seconds`.
///
/// `window "business-hours" cron="0 9 * * Mon-Fri" duration="8h" time-zone="Europe/Berlin"`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Window {
    pub name: Spanned<String>,
    pub kind: WindowKind,
    pub cron: Spanned<String>,
    pub duration_seconds: Spanned<u64>,
    pub time_zone: Spanned<String>,
}

impl Window {
    pub(crate) fn decode(d: &mut Decoder, node: &KdlNode, kind: WindowKind) -> Option<Self> {
        d.allow_props(node, &["cron", "duration", "time-zone"]);
        d.no_children(node);
        d.max_args(node, 1);
        let name = d.arg(node, 0, decode::as_string, "a window name");
        let cron = d.required_prop(node, "cron", decode::as_string, "a cron expression");
        let duration = d.required_prop(node, "duration", decode::as_string, "a duration");
        let duration_seconds = duration.and_then(|s| d.parse_duration(&s));
        let time_zone = d.required_prop(node, "time-zone", decode::as_string, "a time zone");
        Some(Window {
            name: name?,
            kind,
            cron: cron?,
            duration_seconds: duration_seconds?,
            time_zone: time_zone?,
        })
    }
}
