//! Notifications: who is told what (`notify` blocks of fleet.kdl), what
//! they receive (the webhook's JSON body) and the leader's record of what
//! is still to be sent (`notify/ledger.json` in the store).
//!
//! ```kdl
//! notify "ops" {
//!     webhook "https://hooks.internal/gitfleet" secret-env="GITFLEET_NOTIFY_OPS_SECRET"
//!     events "rollout-failed" "rollout-rolled-back" "waiting-for-approval"
//!     environments "prod" "staging"
//! }
//! notify "chat" {
//!     slack url-env="GITFLEET_NOTIFY_SLACK_URL"    // the URL is the secret
//! }
//! ```
//!
//! Secrets never live in the repo: a webhook's HMAC key, and a URL that is
//! itself a secret (Slack's), are read from the reconciler's environment.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::decode::{self, children, Decoder};
use crate::span::Spanned;

/// What a notification is about.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum NotifyKind {
    /// The first step of a rollout began taking nodes in an environment.
    RolloutStarted,
    /// A step's nodes passed its gates.
    StepCompleted,
    /// Every step completed in an environment.
    RolloutCompleted,
    /// A gate or deadline failed with nothing to roll back to.
    RolloutFailed,
    /// A gate or deadline failed and nodes went back to the previous bundle.
    RolloutRolledBack,
    /// A rollout waits for approving reviews.
    WaitingForApproval,
    /// A node reports files that differ from its active bundle.
    DriftFound,
    /// A node has not been heard from for longer than it should.
    NodeStale,
    /// An environment's signed channel manifest is close to its expiry.
    ManifestExpiring,
    /// The reconciler cannot reach the store (told directly by the
    /// replica that led last: the outbox lives in the store).
    StoreUnreachable,
}

impl NotifyKind {
    pub const ALL: [NotifyKind; 10] = [
        NotifyKind::RolloutStarted,
        NotifyKind::StepCompleted,
        NotifyKind::RolloutCompleted,
        NotifyKind::RolloutFailed,
        NotifyKind::RolloutRolledBack,
        NotifyKind::WaitingForApproval,
        NotifyKind::DriftFound,
        NotifyKind::NodeStale,
        NotifyKind::ManifestExpiring,
        NotifyKind::StoreUnreachable,
    ];

    /// The kinds a rollout's state change makes (read from the state
    /// branch); the others are conditions of the fleet.
    pub const ROLLOUT: [NotifyKind; 6] = [
        NotifyKind::RolloutStarted,
        NotifyKind::StepCompleted,
        NotifyKind::RolloutCompleted,
        NotifyKind::RolloutFailed,
        NotifyKind::RolloutRolledBack,
        NotifyKind::WaitingForApproval,
    ];

    /// The name fleet.kdl and the JSON body use.
    pub fn as_str(self) -> &'static str {
        match self {
            NotifyKind::RolloutStarted => "rollout-started",
            NotifyKind::StepCompleted => "step-completed",
            NotifyKind::RolloutCompleted => "rollout-completed",
            NotifyKind::RolloutFailed => "rollout-failed",
            NotifyKind::RolloutRolledBack => "rollout-rolled-back",
            NotifyKind::WaitingForApproval => "waiting-for-approval",
            NotifyKind::DriftFound => "drift-found",
            NotifyKind::NodeStale => "node-stale",
            NotifyKind::ManifestExpiring => "manifest-expiring",
            NotifyKind::StoreUnreachable => "store-unreachable",
        }
    }

    pub fn parse(name: &str) -> Option<NotifyKind> {
        Self::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

impl std::fmt::Display for NotifyKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A value given in fleet.kdl or named there and read from the
/// reconciler's environment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub enum Given {
    Value(Spanned<String>),
    Env(Spanned<String>),
}

/// Where a receiver's notifications go.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub enum NotifyTarget {
    /// The JSON body as is, signed like GitHub's webhooks:
    /// `X-Gitfleet-Signature-256: sha256=<hex HMAC-SHA256 of the body>`
    /// under the secret read from `secret_env`.
    Webhook {
        url: Given,
        secret_env: Spanned<String>,
    },
    /// A Slack-compatible incoming webhook: `{"text": ...}`.
    Slack { url: Given },
}

/// `notify "NAME" { ... }` in fleet.kdl: one receiver and what it hears.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Notify {
    pub name: Spanned<String>,
    pub target: NotifyTarget,
    /// The kinds it hears; empty: every kind.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<Spanned<NotifyKind>>,
    /// The environments it hears about; empty: all. Notifications about
    /// no environment (a node of none) always pass.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub environments: Vec<Spanned<String>>,
}

impl Notify {
    /// Whether this receiver hears `n`.
    pub fn wants(&self, n: &Notification) -> bool {
        let kind = self.events.is_empty() || self.events.iter().any(|k| k.value == n.kind);
        let env = match &n.environment {
            Some(env) => {
                self.environments.is_empty() || self.environments.iter().any(|e| &e.value == env)
            }
            None => true,
        };
        kind && env
    }
}

const NOTIFY_CHILDREN: &[&str] = &["webhook", "slack", "events", "environments"];

pub(crate) fn decode_notify(d: &mut Decoder, node: &kdl::KdlNode) -> Option<Notify> {
    d.allow_props(node, &[]);
    d.max_args(node, 1);
    let name = d.arg(node, 0, decode::as_string, "the receiver's name");
    let mut target = None;
    let mut events = Vec::new();
    let mut environments = Vec::new();
    let mut named_target = false;
    for c in children(node) {
        match decode::name(c) {
            "webhook" => {
                named_target = true;
                d.allow_props(c, &["url-env", "secret-env"]);
                let url = given_url(d, c);
                let secret_env = d.required_prop(
                    c,
                    "secret-env",
                    decode::as_string,
                    "the environment variable holding the HMAC secret",
                );
                let secret_env = secret_env.filter(|e| check_env(d, e));
                let v = match (url, secret_env) {
                    (Some(url), Some(secret_env)) => {
                        Some(NotifyTarget::Webhook { url, secret_env })
                    }
                    _ => None,
                };
                d.once(&mut target, c, v);
            }
            "slack" => {
                named_target = true;
                d.allow_props(c, &["url-env"]);
                let v = given_url(d, c).map(|url| NotifyTarget::Slack { url });
                d.once(&mut target, c, v);
            }
            "events" => {
                for s in d.strings(c) {
                    match NotifyKind::parse(&s.value) {
                        Some(k) => events.push(Spanned::new(k, s.span)),
                        None => {
                            let names: Vec<&str> =
                                NotifyKind::ALL.iter().map(|k| k.as_str()).collect();
                            d.error(
                                s.span,
                                "unknown-notify-event",
                                format!("unknown notification kind `{}`", s.value),
                                Some(format!("use one of: {}", names.join(", "))),
                            );
                        }
                    }
                }
            }
            "environments" => environments.extend(d.strings(c)),
            _ => d.unknown_node(c, "a notify block", NOTIFY_CHILDREN),
        }
    }
    // A target given wrong has its own error.
    if !named_target {
        d.error(
            decode::node_span(node),
            "notify-without-target",
            "a notify block needs `webhook` or `slack`".to_owned(),
            Some(
                "add `webhook \"https://...\" secret-env=\"GITFLEET_NOTIFY_HOOK_SECRET\"`"
                    .to_owned(),
            ),
        );
    }
    Some(Notify {
        name: name?,
        target: target?,
        events,
        environments,
    })
}

/// Environment variables a `notify` block may read: only these, so a
/// commit to the fleet repo cannot make the reconciler sign with, or send
/// to, any other secret of its environment.
pub const ENV_PREFIX: &str = "GITFLEET_NOTIFY_";

/// `name` as an environment variable a notify block may read.
fn check_env(d: &mut Decoder, name: &Spanned<String>) -> bool {
    if name.value.starts_with(ENV_PREFIX) && name.value.len() > ENV_PREFIX.len() {
        return true;
    }
    d.error(
        name.span,
        "notify-env",
        format!("`{}` is not a variable notify blocks may read", name.value),
        Some(format!(
            "name it {ENV_PREFIX}<SOMETHING> in the reconciler's environment"
        )),
    );
    false
}

/// A URL given as the node's value, or named by `url-env=` (not both).
fn given_url(d: &mut Decoder, node: &kdl::KdlNode) -> Option<Given> {
    d.max_args(node, 1);
    d.no_children(node);
    let env = d.prop_string(node, "url-env");
    let has_value = node.entries().iter().any(|e| e.name().is_none());
    match (has_value, env) {
        (true, None) => {
            let url = d.arg(node, 0, decode::as_string, "a URL")?;
            if !(url.value.starts_with("http://") || url.value.starts_with("https://")) {
                d.error(
                    url.span,
                    "notify-url",
                    format!("`{}` is not an http(s) URL", url.value),
                    None,
                );
                return None;
            }
            Some(Given::Value(url))
        }
        (false, Some(env)) => check_env(d, &env).then_some(Given::Env(env)),
        (true, Some(env)) => {
            d.error(
                env.span,
                "notify-url-twice",
                format!(
                    "`{}` takes a URL or `url-env`, not both",
                    decode::name(node)
                ),
                None,
            );
            None
        }
        (false, None) => {
            d.error(
                decode::node_span(node),
                "missing-value",
                format!("`{}` needs a URL or `url-env=\"VAR\"`", decode::name(node)),
                None,
            );
            None
        }
    }
}

/// The format version of [`Notification`].
pub const NOTIFICATION_FORMAT: u32 = 1;

/// What a receiver is sent (a webhook's body as is).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Notification {
    pub format: u32,
    /// The same for every delivery of one event, whoever sends it and
    /// however often: receivers de-duplicate by it.
    pub id: String,
    pub fleet: String,
    pub kind: NotifyKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The step a step event is about (1-based).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<u32>,
    /// The bundle being rolled out (`sha256:...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// The fleet repo commit the target was built from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_commit: Option<String>,
    /// The state branch commit that recorded a rollout event (changes when
    /// the branch is compacted; the id does not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_commit: Option<String>,
    /// When it happened (a rollout event: when its phase began).
    pub at: DateTime<Utc>,
    /// One line for people.
    pub summary: String,
}

impl Notification {
    /// A notification of `kind` about nothing in particular yet: set the
    /// environment, rollout, node and the rest that apply.
    pub fn new(
        id: String,
        fleet: &str,
        kind: NotifyKind,
        at: DateTime<Utc>,
        summary: String,
    ) -> Notification {
        Notification {
            format: NOTIFICATION_FORMAT,
            id,
            fleet: fleet.to_owned(),
            kind,
            environment: None,
            rollout: None,
            node: None,
            step: None,
            target: None,
            source_commit: None,
            state_commit: None,
            at,
            summary,
        }
    }
}

/// A stable notification id from what identifies the event: 32 hex digits
/// of SHA-256 over the parts.
pub fn notification_id(parts: &[&str]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"gitfleet-notification-v1");
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p.as_bytes());
    }
    let digest = h.finalize();
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// The format version of [`NotifyLedger`].
pub const LEDGER_FORMAT: u32 = 1;

/// `notify/ledger.json` in the store: what the leader still has to send.
/// Written before anything is sent (an outbox), so a leader killed between
/// an event and its delivery leaves it here for the next one.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NotifyLedger {
    pub format: u32,
    /// The state branch commit up to which rollout events are in the
    /// outbox (or sent); absent before the first round.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<Cursor>,
    /// Conditions (a stale node, drift, an expiring manifest) that were
    /// told and still hold, by what identifies the condition, with the id
    /// they were told under: told once while they hold; one that clears
    /// and comes back is told again under a new id.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub holding: BTreeMap<String, String>,
    /// Deliveries not yet acknowledged, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outbox: Vec<Outgoing>,
}

/// A state branch commit, recognised again after `gitfleet state compact`
/// rebuilt it (same tree and time, another id).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Cursor {
    pub commit: String,
    pub tree: String,
    pub time: DateTime<Utc>,
}

/// One notification for one receiver, not yet delivered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Outgoing {
    /// The `notify` block's name.
    pub receiver: String,
    pub notification: Notification,
    /// Attempts made so far.
    pub attempts: u32,
    /// Not before this time (after a failed attempt).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_at: Option<DateTime<Utc>>,
    /// The last attempt's failure, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::FleetFile;

    fn decode(notify: &str) -> decode::Decoded<FleetFile> {
        FleetFile::decode(&format!("version 1\nname \"acme\"\n{notify}"))
    }

    #[test]
    fn a_webhook_with_kinds_and_environments_decodes() {
        let d = decode(
            r#"notify "ops" {
    webhook "https://hooks.example/x" secret-env="GITFLEET_NOTIFY_OPS"
    events "rollout-failed" "node-stale"
    environments "prod"
}"#,
        );
        let fleet = d.value.expect("decodes");
        assert!(d.errors.is_empty(), "{:?}", d.errors);
        let n = &fleet.notify[0];
        assert_eq!(n.name.value, "ops");
        assert!(matches!(
            &n.target,
            NotifyTarget::Webhook { url: Given::Value(u), secret_env } if u.value == "https://hooks.example/x" && secret_env.value == "GITFLEET_NOTIFY_OPS"
        ));
        let kinds: Vec<_> = n.events.iter().map(|k| k.value).collect();
        assert_eq!(kinds, [NotifyKind::RolloutFailed, NotifyKind::NodeStale]);
    }

    #[test]
    fn a_slack_url_may_come_from_the_environment() {
        let d = decode("notify \"chat\" {\n    slack url-env=\"GITFLEET_NOTIFY_SLACK\"\n}");
        let fleet = d.value.expect("decodes");
        assert!(matches!(
            &fleet.notify[0].target,
            NotifyTarget::Slack { url: Given::Env(e) } if e.value == "GITFLEET_NOTIFY_SLACK"
        ));
    }

    #[test]
    fn mistakes_in_a_notify_block_are_errors_with_their_place() {
        for (block, code) in [
            (
                "notify \"x\" {\n    events \"rollout-failed\"\n}",
                "notify-without-target",
            ),
            (
                "notify \"x\" {\n    webhook \"https://h/\"\n}",
                "missing-property",
            ),
            (
                "notify \"x\" {\n    slack \"https://h/\"\n    events \"rolout-failed\"\n}",
                "unknown-notify-event",
            ),
            ("notify \"x\" {\n    slack \"ftp://h/\"\n}", "notify-url"),
            (
                "notify \"x\" {\n    slack \"https://h/\" url-env=\"GITFLEET_NOTIFY_A\"\n}",
                "notify-url-twice",
            ),
            (
                "notify \"x\" {\n    webhook \"https://h/\" secret-env=\"AWS_SECRET_ACCESS_KEY\"\n}",
                "notify-env",
            ),
            ("notify \"x\" {\n    slack url-env=\"HOME\"\n}", "notify-env"),
            (
                "notify \"x\" {\n    slack \"https://h/\"\n    slack \"https://i/\"\n}",
                "duplicate-node",
            ),
            ("notify \"x\" {\n    email \"a@b\"\n}", "unknown-node"),
        ] {
            let d = decode(block);
            assert!(
                d.errors.iter().any(|x| x.code == code),
                "{block}: want {code}, got {:?}",
                d.errors
            );
        }
    }

    #[test]
    fn a_receiver_hears_only_its_kinds_and_environments() {
        let d = decode(
            "notify \"ops\" {\n    slack \"https://h/\"\n    events \"rollout-failed\"\n    environments \"prod\"\n}",
        );
        let rule = d.value.expect("decodes").notify.remove(0);
        let n = |kind, env: Option<&str>| Notification {
            environment: env.map(str::to_owned),
            ..Notification::new(
                "x".into(),
                "acme",
                kind,
                DateTime::<Utc>::UNIX_EPOCH,
                String::new(),
            )
        };
        assert!(rule.wants(&n(NotifyKind::RolloutFailed, Some("prod"))));
        assert!(!rule.wants(&n(NotifyKind::RolloutFailed, Some("dev"))));
        assert!(!rule.wants(&n(NotifyKind::RolloutStarted, Some("prod"))));
        assert!(rule.wants(&n(NotifyKind::RolloutFailed, None)));
    }

    #[test]
    fn notification_ids_are_stable_and_tell_parts_apart() {
        let a = notification_id(&["c0ffee", "edge", "dev", "rollout-failed"]);
        assert_eq!(
            a,
            notification_id(&["c0ffee", "edge", "dev", "rollout-failed"])
        );
        assert_eq!(a.len(), 32);
        assert_ne!(
            a,
            notification_id(&["c0ffee", "edgedev", "", "rollout-failed"])
        );
    }
}
