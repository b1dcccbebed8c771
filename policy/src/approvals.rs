//! Which changes have their approvals: the signed approvals on the state
//! branch (`gitfleet approve`), counted against each environment's
//! `approvals` in environments.kdl. Pure: the caller hands over the files.
//!
//! An approval counts when it is signed by the key fleet.kdl gives its
//! approver, names this fleet, matches the path it is stored under, and its
//! approver is one of the environment's `users`. Each approver counts once.
//! Teams are resolved only by the GitHub path; here only users count.

use std::collections::{BTreeMap, BTreeSet};

use gitfleet_schemas::approval::{approval_path, Approval};
use gitfleet_schemas::trust::PublicKey;
use gitfleet_schemas::verify::verify_signed_by;

use crate::model::FleetModel;

/// The outcome: approved `(environment, commit)` pairs, and every approval
/// that did not count with the reason, for logs and metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counted {
    pub approved: BTreeSet<(String, String)>,
    pub ignored: Vec<(String, String)>,
}

/// Count the approvals among `files` (state branch path → bytes).
pub fn count(model: &FleetModel, files: &BTreeMap<String, Vec<u8>>) -> Counted {
    let mut out = Counted::default();
    let Some(fleet) = model.fleet.as_ref().map(|f| &f.doc) else {
        return out;
    };
    let keys: BTreeMap<&str, PublicKey> = fleet
        .approvers
        .iter()
        .filter_map(|a| Some((a.name.value.as_str(), PublicKey::parse(&a.key.value).ok()?)))
        .collect();
    // (environment, commit) -> approvers that count
    let mut by_change: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for (path, bytes) in files.range("approvals/".to_owned()..) {
        if !path.starts_with("approvals/") {
            break;
        }
        match one(model, &fleet.name.value, &keys, path, bytes) {
            Ok(a) => {
                by_change
                    .entry((a.environment, a.commit))
                    .or_default()
                    .insert(a.approver);
            }
            Err(reason) => out.ignored.push((path.clone(), reason)),
        }
    }
    for ((env, commit), approvers) in by_change {
        let required = model
            .environments
            .iter()
            .find(|e| e.name.value == env)
            .and_then(|e| e.approvals.as_ref())
            .map_or(0, |a| a.required.value);
        if required > 0 && approvers.len() as u64 >= required {
            out.approved.insert((env, commit));
        }
    }
    out
}

/// One approval, verified and checked against the fleet, or why not.
fn one(
    model: &FleetModel,
    fleet: &str,
    keys: &BTreeMap<&str, PublicKey>,
    path: &str,
    bytes: &[u8],
) -> Result<Approval, String> {
    // approvals/<environment>/<commit>/<approver>.json
    let approver = path
        .rsplit('/')
        .next()
        .and_then(|f| f.strip_suffix(".json"))
        .ok_or("not an approval file")?;
    let key = keys
        .get(approver)
        .ok_or_else(|| format!("`{approver}` is not an approver in fleet.kdl"))?;
    let approval = verify_signed_by::<Approval>(bytes, key).map_err(|e| e.to_string())?;
    let approval = (*approval).clone();
    if approval.fleet != fleet {
        return Err(format!(
            "approval is for fleet `{}`, not `{fleet}`",
            approval.fleet
        ));
    }
    if approval_path(&approval.environment, &approval.commit, &approval.approver) != path {
        return Err("its content does not match its path".to_owned());
    }
    let users = model
        .environments
        .iter()
        .find(|e| e.name.value == approval.environment)
        .and_then(|e| e.approvals.as_ref())
        .ok_or_else(|| format!("environment `{}` takes no approvals", approval.environment))?;
    if !users.users.iter().any(|u| u.value == approval.approver) {
        return Err(format!(
            "`{}` is not among the users who may approve {}",
            approval.approver, approval.environment
        ));
    }
    Ok(approval)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::RepoFiles;
    use chrono::TimeZone as _;
    use ed25519_dalek::SigningKey;
    use gitfleet_schemas::trust::Document as _;

    fn key(n: u8) -> SigningKey {
        SigningKey::from_bytes(&[n; 32])
    }

    fn public(n: u8) -> String {
        PublicKey(key(n).verifying_key().to_bytes()).to_string()
    }

    const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

    fn model() -> FleetModel {
        let mut f = RepoFiles::new();
        f.insert(
            "fleet.kdl",
            format!(
                "version 1\nname \"acme\"\napprover \"alice\" key=\"{}\"\napprover \"bob\" key=\"{}\"\napprover \"eve\" key=\"{}\"\n",
                public(1),
                public(2),
                public(3)
            ),
        );
        f.insert(
            "environments.kdl",
            "version 1\nenvironment \"dev\"\nenvironment \"prod\" { after \"dev\"; approvals 2 { users \"alice\" \"bob\"; }; }\n",
        );
        crate::check(&f).model
    }

    fn approval(env: &str, commit: &str, who: &str, signer: u8) -> (String, Vec<u8>) {
        let a = Approval {
            fleet: "acme".into(),
            environment: env.into(),
            commit: commit.into(),
            approver: who.into(),
            at: chrono::Utc.with_ymd_and_hms(2026, 12, 1, 12, 0, 0).unwrap(),
        };
        let mut env_ = a.envelope();
        env_.sign(&key(signer)).unwrap();
        (approval_path(env, commit, who), env_.to_json())
    }

    fn files(list: &[(String, Vec<u8>)]) -> BTreeMap<String, Vec<u8>> {
        list.iter().cloned().collect()
    }

    #[test]
    fn two_allowed_approvers_approve_a_commit() {
        let got = count(
            &model(),
            &files(&[
                approval("prod", COMMIT, "alice", 1),
                approval("prod", COMMIT, "bob", 2),
            ]),
        );
        assert_eq!(
            got.approved,
            BTreeSet::from([("prod".to_owned(), COMMIT.to_owned())])
        );
        assert!(got.ignored.is_empty(), "{:?}", got.ignored);
    }

    #[test]
    fn one_approval_of_two_is_not_enough() {
        let got = count(&model(), &files(&[approval("prod", COMMIT, "alice", 1)]));
        assert!(got.approved.is_empty());
    }

    #[test]
    fn approvals_that_do_not_count_say_why() {
        let other = "fedcba9876543210fedcba9876543210fedcba98";
        let (moved_path, moved) = approval("prod", other, "bob", 2);
        let cases: Vec<((String, Vec<u8>), &str)> = vec![
            // Signed by alice's key but claiming to be bob.
            (approval("prod", COMMIT, "bob", 1), "unknown key"),
            // A declared approver, but not one of prod's users.
            (approval("prod", COMMIT, "eve", 3), "not among the users"),
            // Nobody declared.
            (approval("prod", COMMIT, "mallory", 4), "not an approver"),
            // dev takes no approvals.
            (approval("dev", COMMIT, "alice", 1), "takes no approvals"),
            // Another commit's approval copied under this one's path.
            (
                (moved_path.replace(other, COMMIT), moved),
                "does not match its path",
            ),
        ];
        for ((path, bytes), want) in cases {
            let got = count(
                &model(),
                &files(&[approval("prod", COMMIT, "alice", 1), (path.clone(), bytes)]),
            );
            assert!(got.approved.is_empty(), "{path} counted");
            assert_eq!(got.ignored.len(), 1, "{path}: {:?}", got.ignored);
            assert!(
                got.ignored[0].1.contains(want),
                "{path}: {} lacks {want}",
                got.ignored[0].1
            );
        }
    }

    #[test]
    fn approvals_of_different_commits_do_not_add_up() {
        let other = "fedcba9876543210fedcba9876543210fedcba98";
        let got = count(
            &model(),
            &files(&[
                approval("prod", COMMIT, "alice", 1),
                approval("prod", other, "bob", 2),
            ]),
        );
        assert!(got.approved.is_empty());
    }
}
