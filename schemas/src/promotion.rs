//! `promotions/<environment>.json` in the fleet repo: what one promotion
//! pull request asks for. When a change completes in an environment whose
//! successor requires approvals, the reconciler writes this file on the
//! branch `gitfleet/promote/<environment>` and opens a pull request with it;
//! approving reviews on that pull request's head, once it is merged, are
//! approvals of every change the file names. The reconciler is its only
//! writer; people review and merge it.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::trust::BundleRef;

/// The format version of [`Promotions`].
pub const PROMOTIONS_FORMAT: u32 = 1;

/// The branch prefix of promotion pull requests.
pub const PROMOTION_BRANCH_PREFIX: &str = "gitfleet/promote/";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Promotions {
    pub format: u32,
    /// The environment the changes are promoted into.
    pub environment: String,
    /// Rollout name -> the change it would bring there.
    pub rollouts: BTreeMap<String, Promotion>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Promotion {
    /// The fleet repo commit the bundle was built from: the one approved.
    pub source_commit: String,
    pub bundle: BundleRef,
    /// Where the change completed, when the environment comes after one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_in: Option<String>,
}

impl Promotions {
    /// The file's bytes: pretty JSON with a final newline, so the pull
    /// request's diff reads well.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = serde_json::to_vec_pretty(self).unwrap_or_default();
        bytes.push(b'\n');
        bytes
    }

    /// Read the file; `None` for anything that is not this format.
    pub fn parse(bytes: &[u8]) -> Option<Promotions> {
        serde_json::from_slice::<Promotions>(bytes)
            .ok()
            .filter(|p| p.format == PROMOTIONS_FORMAT)
    }
}

/// Where an environment's promotion file lives in the fleet repo.
pub fn promotions_path(environment: &str) -> String {
    format!("promotions/{environment}.json")
}

/// The branch of an environment's promotion pull request.
pub fn promotion_branch(environment: &str) -> String {
    format!("{PROMOTION_BRANCH_PREFIX}{environment}")
}

/// The branch of a node's key rotation pull request.
pub fn rotation_branch(node: &str) -> String {
    format!("gitfleet/rotate-key/{node}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Promotions {
        Promotions {
            format: PROMOTIONS_FORMAT,
            environment: "prod".into(),
            rollouts: [(
                "edge".to_owned(),
                Promotion {
                    source_commit: "a".repeat(40),
                    bundle: BundleRef {
                        digest: format!("sha256:{}", "b".repeat(64)),
                        length: 10,
                    },
                    completed_in: Some("staging".into()),
                },
            )]
            .into(),
        }
    }

    #[test]
    fn a_promotion_file_reads_back_what_was_written() {
        let p = sample();
        assert_eq!(Promotions::parse(&p.to_bytes()), Some(p));
    }

    #[test]
    fn another_format_or_unknown_fields_are_not_a_promotion() {
        let mut p = sample();
        p.format = 2;
        assert_eq!(Promotions::parse(&p.to_bytes()), None);
        let text = String::from_utf8(sample().to_bytes()).unwrap_or_default();
        let extra = text.replacen('{', "{\"extra\": 1,", 1);
        assert_eq!(Promotions::parse(extra.as_bytes()), None);
        assert_eq!(Promotions::parse(b"not json"), None);
    }
}
