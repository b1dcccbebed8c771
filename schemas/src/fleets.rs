//! The fleets one `gitfleet serve` runs (`--fleets fleets.kdl`): each with
//! its own repo, store, keys, cache and webhook secret, so each has its
//! own lease, state branch and passes.
//!
//! ```kdl
//! version 1
//! fleet "edge" {
//!     repo "https://github.com/acme/edge-fleet.git"
//!     branch "main"                          // default main
//!     state-branch "gitfleet/state"          // default: fleet.kdl's
//!     store "s3://acme-fleet/edge"           // default: fleet.kdl's
//!     online-key "/etc/gitfleet/edge/online.key"
//!     cache "/var/lib/gitfleet/edge"         // default: <--cache>/<name>
//!     webhook-secret-file "/etc/gitfleet/edge/webhook.secret"
//!     github-repo "acme/edge-fleet"
//!     github-token-file "/etc/gitfleet/github.token"
//! }
//! ```

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::decode::{self, children, Decoded, Decoder};
use crate::span::Spanned;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FleetsFile {
    pub fleets: Vec<FleetEntry>,
}

/// One fleet served.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FleetEntry {
    /// Its name in URLs (`/fleets/<name>/`) and the `fleet` metric label.
    pub name: Spanned<String>,
    pub repo: Spanned<String>,
    pub branch: Option<Spanned<String>>,
    pub state_branch: Option<Spanned<String>>,
    pub store: Option<Spanned<String>>,
    pub online_key: Spanned<String>,
    pub cache: Option<Spanned<String>>,
    pub webhook_secret_file: Option<Spanned<String>>,
    pub github_repo: Option<Spanned<String>>,
    pub github_token_file: Option<Spanned<String>>,
}

const FLEET: &[&str] = &[
    "repo",
    "branch",
    "state-branch",
    "store",
    "online-key",
    "cache",
    "webhook-secret-file",
    "github-repo",
    "github-token-file",
];

/// A name fit for a URL segment and a metric label.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
}

impl FleetsFile {
    pub fn decode(text: &str) -> Decoded<FleetsFile> {
        let mut d = Decoder::default();
        let Some(doc) = d.parse(text) else {
            return d.finish(None);
        };
        let mut fleets: Vec<FleetEntry> = Vec::new();
        for node in d.versioned(&doc, "fleets.kdl") {
            match decode::name(node) {
                "fleet" => {
                    if let Some(f) = decode_fleet(&mut d, node) {
                        if fleets.iter().any(|o| o.name.value == f.name.value) {
                            d.error(
                                f.name.span,
                                "duplicate-fleet",
                                format!("fleet `{}` is given more than once", f.name.value),
                                Some("give each fleet its own name".to_owned()),
                            );
                        } else {
                            fleets.push(f);
                        }
                    }
                }
                _ => d.unknown_node(node, "fleets.kdl", &["fleet"]),
            }
        }
        if fleets.is_empty() {
            d.error(
                decode::document_start(&doc),
                "no-fleets",
                "fleets.kdl names no fleet".to_owned(),
                Some("add `fleet \"edge\" { repo \"...\"; online-key \"...\"; }`".to_owned()),
            );
        }
        d.finish(Some(FleetsFile { fleets }))
    }
}

fn decode_fleet(d: &mut Decoder, node: &kdl::KdlNode) -> Option<FleetEntry> {
    d.allow_props(node, &[]);
    d.max_args(node, 1);
    let name = d.arg(node, 0, decode::as_string, "the fleet's name")?;
    if !valid_name(&name.value) {
        d.error(
            name.span,
            "fleet-name",
            format!(
                "fleet name `{}` is not lowercase letters, digits and `-`",
                name.value
            ),
            Some("it names the fleet in URLs and metric labels: `edge`, `eu-west`".to_owned()),
        );
        return None;
    }
    let mut slots: [Option<Spanned<String>>; 9] = Default::default();
    for c in children(node) {
        let key = decode::name(c);
        match FLEET.iter().position(|k| *k == key) {
            Some(i) => {
                let v = d.string(c);
                d.once(&mut slots[i], c, v);
            }
            None => d.unknown_node(c, "a fleet", FLEET),
        }
    }
    let [repo, branch, state_branch, store, online_key, cache, webhook_secret_file, github_repo, github_token_file] =
        slots;
    let span = decode::node_span(node);
    let repo = d.required(repo, span, "repo", "a fleet", "repo \"https://...\"");
    let online_key = d.required(
        online_key,
        span,
        "online-key",
        "a fleet",
        "online-key \"/etc/gitfleet/online.key\"",
    );
    Some(FleetEntry {
        name,
        repo: repo?,
        branch,
        state_branch,
        store,
        online_key: online_key?,
        cache,
        webhook_secret_file,
        github_repo,
        github_token_file,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fleets_are_read_with_their_settings() {
        let got = FleetsFile::decode(
            "version 1\nfleet \"edge\" {\n    repo \"/srv/edge.git\"\n    online-key \"edge.key\"\n    store \"file:///s\"\n}\nfleet \"core\" {\n    repo \"/srv/core.git\"\n    online-key \"core.key\"\n}\n",
        );
        assert!(got.is_clean(), "{:?}", got.errors);
        let f = got.value.unwrap();
        assert_eq!(f.fleets.len(), 2);
        assert_eq!(f.fleets[0].store.as_ref().unwrap().value, "file:///s");
        assert_eq!(f.fleets[1].branch, None);
    }

    #[test]
    fn mistakes_are_named() {
        for (text, code) in [
            ("version 1\nfleet \"Edge\" { repo \"r\"; online-key \"k\"; }\n", "fleet-name"),
            ("version 1\nfleet \"e\" { online-key \"k\"; }\n", "missing-node"),
            ("version 1\nfleet \"e\" { repo \"r\"; online-key \"k\"; }\nfleet \"e\" { repo \"r\"; online-key \"k\"; }\n", "duplicate-fleet"),
            ("version 1\nfleet \"e\" { repo \"r\"; online-key \"k\"; colour \"red\"; }\n", "unknown-node"),
            ("version 1\n", "no-fleets"),
        ] {
            let got = FleetsFile::decode(text);
            assert!(got.errors.iter().any(|e| e.code == code), "{text}: {:?}", got.errors);
        }
    }
}
