//! Approvals by pull-request review: whether the reviews of the pull request
//! that brought a change meet an environment's `approvals` rule. Pure: the
//! caller fetches the pull request, its reviews and the team memberships.
//!
//! A reviewer's latest decisive review is the one that counts (a comment
//! neither gives nor takes an approval). It counts only when it approves
//! the pull request's head commit, is not by the pull request's author, and
//! the reviewer is one of the rule's users or a member of one of its teams.
//! A dismissed review, or "changes requested" after an approval, voids it.

use std::collections::{BTreeMap, BTreeSet};

use gitfleet_schemas::environments::Approvals;

/// A review's state, as GitHub names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReviewState {
    Approved,
    ChangesRequested,
    Dismissed,
    Commented,
    Pending,
}

impl ReviewState {
    /// GitHub's `state` string (`APPROVED`, ...); `None` for an unknown one.
    pub fn parse(s: &str) -> Option<ReviewState> {
        Some(match s {
            "APPROVED" => ReviewState::Approved,
            "CHANGES_REQUESTED" => ReviewState::ChangesRequested,
            "DISMISSED" => ReviewState::Dismissed,
            "COMMENTED" => ReviewState::Commented,
            "PENDING" => ReviewState::Pending,
            _ => return None,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Review {
    pub user: String,
    pub state: ReviewState,
    /// The commit the review was made on.
    pub commit: String,
}

/// The pull request that brought a change, with its reviews in the order
/// they were submitted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PullRequest {
    pub number: u64,
    pub author: String,
    pub head: String,
    pub reviews: Vec<Review>,
}

/// Whether a change is released, and why (for the rollout's reason and
/// the commit status).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub approved: bool,
    /// Reviewers whose approval counted.
    pub counted: BTreeSet<String>,
    /// Why the others did not, by reviewer.
    pub ignored: BTreeMap<String, String>,
}

/// The users a rule's teams could add: `members[team]` for every
/// `org/slug` the caller looked up.
pub type Members = BTreeMap<String, BTreeSet<String>>;

/// The reviewers whose latest decisive review is an approval, with the
/// commit it was made on.
fn latest_approvals(pr: &PullRequest) -> BTreeMap<&str, Option<&str>> {
    let mut latest: BTreeMap<&str, Option<&str>> = BTreeMap::new();
    for r in &pr.reviews {
        match r.state {
            ReviewState::Approved => {
                latest.insert(&r.user, Some(&r.commit));
            }
            ReviewState::ChangesRequested | ReviewState::Dismissed => {
                latest.insert(&r.user, None);
            }
            ReviewState::Commented | ReviewState::Pending => {}
        }
    }
    latest
}

/// The reviewers a rule's teams may need looked up: those with a standing
/// approval who are not among the rule's users.
pub fn candidates(rule: &Approvals, pr: &PullRequest) -> BTreeSet<String> {
    latest_approvals(pr)
        .into_iter()
        .filter(|(user, commit)| commit.is_some() && !rule.users.iter().any(|u| u.value == *user))
        .map(|(user, _)| user.to_owned())
        .collect()
}

/// Whether `pr`'s reviews meet `rule`.
pub fn verdict(rule: &Approvals, pr: &PullRequest, members: &Members) -> Verdict {
    let mut counted = BTreeSet::new();
    let mut ignored = BTreeMap::new();
    for (user, commit) in latest_approvals(pr) {
        let why = match commit {
            None => Some("the approval was dismissed or changes were requested".to_owned()),
            Some(c) if c != pr.head => Some(format!(
                "approved {}, not the head commit {}",
                short(c),
                short(&pr.head)
            )),
            Some(_) if user == pr.author => {
                Some("the author cannot approve their own change".to_owned())
            }
            Some(_) => {
                let allowed = rule.users.iter().any(|u| u.value == user)
                    || rule
                        .teams
                        .iter()
                        .any(|t| members.get(&t.value).is_some_and(|m| m.contains(user)));
                (!allowed).then(|| "not an allowed reviewer".to_owned())
            }
        };
        match why {
            Some(why) => {
                ignored.insert(user.to_owned(), why);
            }
            None => {
                counted.insert(user.to_owned());
            }
        }
    }
    Verdict {
        approved: rule.required.value > 0 && counted.len() as u64 >= rule.required.value,
        counted,
        ignored,
    }
}

fn short(commit: &str) -> &str {
    // Commit ids are hex, but these come from GitHub: never split a char.
    commit.get(..12).unwrap_or(commit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use gitfleet_schemas::{Span, Spanned};

    fn s(v: &str) -> Spanned<String> {
        Spanned {
            value: v.to_owned(),
            span: Span::default(),
        }
    }

    fn rule(required: u64, users: &[&str], teams: &[&str]) -> Approvals {
        Approvals {
            required: Spanned {
                value: required,
                span: Span::default(),
            },
            users: users.iter().map(|u| s(u)).collect(),
            teams: teams.iter().map(|t| s(t)).collect(),
        }
    }

    fn review(user: &str, state: ReviewState, commit: &str) -> Review {
        Review {
            user: user.into(),
            state,
            commit: commit.into(),
        }
    }

    fn pr(reviews: Vec<Review>) -> PullRequest {
        PullRequest {
            number: 7,
            author: "carol".into(),
            head: "head".into(),
            reviews,
        }
    }

    use ReviewState::*;

    #[test]
    fn an_approval_on_the_head_by_an_allowed_user_releases() {
        let v = verdict(
            &rule(1, &["alice"], &[]),
            &pr(vec![review("alice", Approved, "head")]),
            &Members::new(),
        );
        assert!(v.approved);
        assert_eq!(v.counted, BTreeSet::from(["alice".to_owned()]));
    }

    #[test]
    fn an_approval_of_an_older_commit_does_not_count() {
        let v = verdict(
            &rule(1, &["alice"], &[]),
            &pr(vec![review("alice", Approved, "old")]),
            &Members::new(),
        );
        assert!(!v.approved);
        assert!(v.ignored["alice"].contains("not the head commit"), "{v:?}");
    }

    #[test]
    fn the_author_cannot_approve_their_own_change() {
        let v = verdict(
            &rule(1, &["carol"], &[]),
            &pr(vec![review("carol", Approved, "head")]),
            &Members::new(),
        );
        assert!(!v.approved);
        assert!(v.ignored["carol"].contains("author"));
    }

    #[test]
    fn dismissal_or_changes_requested_voids_an_approval_and_comments_do_not() {
        let rule = rule(1, &["alice"], &[]);
        for later in [Dismissed, ChangesRequested] {
            let v = verdict(
                &rule,
                &pr(vec![
                    review("alice", Approved, "head"),
                    review("alice", later, "head"),
                ]),
                &Members::new(),
            );
            assert!(!v.approved, "{later:?}");
        }
        let v = verdict(
            &rule,
            &pr(vec![
                review("alice", Approved, "head"),
                review("alice", Commented, "head"),
            ]),
            &Members::new(),
        );
        assert!(v.approved);
    }

    #[test]
    fn team_members_count_once_each_and_strangers_not_at_all() {
        let rule = rule(2, &["alice"], &["acme/sre"]);
        let members = Members::from([("acme/sre".to_owned(), BTreeSet::from(["dave".to_owned()]))]);
        let reviews = vec![
            review("alice", Approved, "head"),
            review("alice", Approved, "head"),
            review("mallory", Approved, "head"),
        ];
        let v = verdict(&rule, &pr(reviews.clone()), &members);
        assert!(!v.approved, "alice twice is one approval");
        assert_eq!(v.ignored["mallory"], "not an allowed reviewer");
        let mut more = reviews;
        more.push(review("dave", Approved, "head"));
        assert_eq!(
            candidates(&rule, &pr(more.clone())),
            BTreeSet::from(["dave".to_owned(), "mallory".to_owned()])
        );
        assert!(verdict(&rule, &pr(more), &members).approved);
    }

    #[test]
    fn a_rule_requiring_none_is_not_a_release_by_review() {
        let v = verdict(&rule(0, &["alice"], &[]), &pr(vec![]), &Members::new());
        assert!(!v.approved);
    }
}
