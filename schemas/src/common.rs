//! Pieces shared by several documents: selectors and change windows.

use std::collections::BTreeMap;

use kdl::KdlNode;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::decode::{self, Decoder};
use crate::span::{Span, Spanned};

/// Label equality, all of which must hold: `selector role="edge" region="fra"`.
/// An empty selector matches every node.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Selector {
    pub labels: BTreeMap<String, Spanned<String>>,
    #[serde(skip)]
    #[schemars(skip)]
    pub span: Span,
}

impl Selector {
    pub fn matches(&self, labels: &BTreeMap<String, Spanned<String>>) -> bool {
        labels_match(
            self.labels
                .iter()
                .map(|(k, v)| (k.as_str(), v.value.as_str())),
            |k| labels.get(k).map(|l| l.value.as_str()),
        )
    }

    pub(crate) fn decode(d: &mut Decoder, node: &KdlNode) -> Self {
        Selector {
            labels: d.string_map(node),
            span: decode::node_span(node),
        }
    }
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
        if self.labels.is_empty() {
            return f.write_str("(all nodes)");
        }
        let parts: Vec<_> = self
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={}", v.value))
            .collect();
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
