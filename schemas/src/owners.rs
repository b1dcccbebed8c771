//! `owners` in fleet.kdl: who owns which paths of the fleet repo, like a
//! CODEOWNERS file.
//!
//! ```kdl
//! owners "configs/edge/**" teams="acme/edge"
//! owners "configs/edge/tls/*.kdl" users="alice"
//! owners "fleet.kdl" {
//!     users "alice" "bob"
//!     teams "acme/platform"
//! }
//! ```
//!
//! Patterns are matched against whole repo paths from the root: `*` and
//! `?` stay within one path segment, `**` stands for any number of whole
//! segments, and a pattern ending in `/` means everything under that
//! directory. When several patterns match a path, the last one owns it.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::decode::{self, children, Decoder};
use crate::environments::Approvals;
use crate::span::Spanned;

/// One `owners` rule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Owners {
    /// The paths owned, as a pattern (see the module docs).
    pub pattern: Spanned<String>,
    /// Owners by git host login; an owner signing with `gitfleet approve`
    /// needs an `approver` key of that name too.
    pub users: Vec<Spanned<String>>,
    /// Owners by team (`org/slug`), resolved through GitHub.
    pub teams: Vec<Spanned<String>>,
}

impl Owners {
    /// Whether this rule's pattern covers `path`.
    pub fn matches(&self, path: &str) -> bool {
        glob_matches(&self.pattern.value, path)
    }

    /// What an approval of a change to these paths takes: one approving
    /// review (or signed approval) by any of the owners.
    pub fn as_approvals(&self) -> Approvals {
        Approvals {
            required: Spanned::new(1, self.pattern.span),
            users: self.users.clone(),
            teams: self.teams.clone(),
        }
    }

    /// `configs/edge/** (alice, team acme/edge)`.
    pub fn describe(&self) -> String {
        format!("{} ({})", self.pattern.value, self.describe_owners())
    }

    /// `alice, team acme/edge`.
    pub fn describe_owners(&self) -> String {
        let mut who: Vec<String> = self.users.iter().map(|u| u.value.clone()).collect();
        who.extend(self.teams.iter().map(|t| format!("team {}", t.value)));
        who.join(", ")
    }
}

/// Whether `pattern` (see the module docs) matches the repo path `path`.
pub fn glob_matches(pattern: &str, path: &str) -> bool {
    let pattern = pattern.trim_start_matches('/');
    let owned;
    let pattern = if pattern.ends_with('/') {
        owned = format!("{pattern}**");
        owned.as_str()
    } else {
        pattern
    };
    let p: Vec<&str> = pattern.split('/').collect();
    let s: Vec<&str> = path.split('/').collect();
    segments_match(&p, &s)
}

/// Whether two patterns may match a path in common. Conservative: true as
/// soon as either reaches a wildcard with their literal segments alike so
/// far; false only when a literal segment differs, or one is a file the
/// other cannot reach.
pub fn may_overlap(a: &str, b: &str) -> bool {
    let norm = |p: &str| {
        let p = p.trim_start_matches('/');
        if p.ends_with('/') {
            format!("{p}**")
        } else {
            p.to_owned()
        }
    };
    let (a, b) = (norm(a), norm(b));
    let wild = |seg: &str| seg.contains(['*', '?']);
    let (mut x, mut y) = (a.split('/'), b.split('/'));
    loop {
        match (x.next(), y.next()) {
            (None, None) => return true,
            (Some(s), None) | (None, Some(s)) => return s == "**",
            (Some(s), Some(t)) if wild(s) || wild(t) => return true,
            (Some(s), Some(t)) if s != t => return false,
            _ => {}
        }
    }
}

fn segments_match(p: &[&str], s: &[&str]) -> bool {
    match p.split_first() {
        None => s.is_empty(),
        Some((&"**", rest)) => (0..=s.len()).any(|i| segments_match(rest, &s[i..])),
        Some((first, rest)) => s
            .split_first()
            .is_some_and(|(seg, more)| segment_matches(first, seg) && segments_match(rest, more)),
    }
}

/// `*` and `?` within one segment.
fn segment_matches(p: &str, s: &str) -> bool {
    let (p, s): (Vec<char>, Vec<char>) = (p.chars().collect(), s.chars().collect());
    // The classic two-pointer match with one backtrack point.
    let (mut i, mut j) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while j < s.len() {
        if i < p.len() && (p[i] == '?' || p[i] == s[j]) {
            i += 1;
            j += 1;
        } else if i < p.len() && p[i] == '*' {
            star = Some((i, j));
            i += 1;
        } else if let Some((si, sj)) = star {
            i = si + 1;
            j = sj + 1;
            star = Some((si, sj + 1));
        } else {
            return false;
        }
    }
    p[i..].iter().all(|c| *c == '*')
}

/// Why a pattern cannot be an owners pattern, if it cannot.
fn pattern_problem(pattern: &str) -> Option<&'static str> {
    if pattern.trim_start_matches('/').is_empty() {
        return Some("an owners pattern cannot be empty");
    }
    let body = pattern.trim_start_matches('/').trim_end_matches('/');
    if body.split('/').any(str::is_empty) {
        return Some("an owners pattern cannot have an empty segment (`//`)");
    }
    if body.split('/').any(|seg| seg.contains("**") && seg != "**") {
        return Some("`**` must be a whole path segment, as in `configs/**/tls.kdl`");
    }
    None
}

pub(crate) fn decode_owners(d: &mut Decoder, node: &kdl::KdlNode) -> Option<Owners> {
    d.allow_props(node, &["users", "teams"]);
    d.max_args(node, 1);
    let pattern = d.arg(node, 0, decode::as_string, "the paths owned, as a pattern");
    let mut users: Vec<Spanned<String>> = d.prop_string(node, "users").into_iter().collect();
    let mut teams: Vec<Spanned<String>> = d.prop_string(node, "teams").into_iter().collect();
    for c in children(node) {
        match decode::name(c) {
            "users" => users.extend(d.strings(c)),
            "teams" => teams.extend(d.strings(c)),
            _ => d.unknown_node(c, "`owners`", &["users", "teams"]),
        }
    }
    let pattern = pattern?;
    if let Some(problem) = pattern_problem(&pattern.value) {
        d.error(
            pattern.span,
            "owners-pattern",
            problem.to_owned(),
            Some("write a repo path with `*`, `?` or `**`, like `configs/edge/**`".to_owned()),
        );
        return None;
    }
    for t in &teams {
        if t.value
            .split_once('/')
            .is_none_or(|(o, s)| o.is_empty() || s.is_empty())
        {
            d.error(
                t.span,
                "owners-team",
                format!("team `{}` is not `org/slug`", t.value),
                Some("name a team as GitHub does, like `acme/edge`".to_owned()),
            );
        }
    }
    if users.is_empty() && teams.is_empty() {
        d.error(
            decode::node_span(node),
            "owners-empty",
            format!("owners `{}` names nobody", pattern.value),
            Some("add `users=\"alice\"` or `teams=\"acme/edge\"`".to_owned()),
        );
        return None;
    }
    Some(Owners {
        pattern,
        users,
        teams,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_whole_paths_from_the_root() {
        let cases = [
            ("configs/edge/**", "configs/edge/routes.kdl", true),
            ("configs/edge/**", "configs/edge/tls/a.kdl", true),
            ("configs/edge/**", "configs/edge-2/routes.kdl", false),
            ("configs/edge/", "configs/edge/tls/a.kdl", true),
            ("/configs/edge/", "configs/edge/a.kdl", true),
            ("configs/*/tls.kdl", "configs/edge/tls.kdl", true),
            ("configs/*/tls.kdl", "configs/edge/x/tls.kdl", false),
            ("configs/**/tls.kdl", "configs/tls.kdl", true),
            ("configs/**/tls.kdl", "configs/a/b/tls.kdl", true),
            ("fleet.kdl", "fleet.kdl", true),
            ("fleet.kdl", "configs/fleet.kdl", false),
            ("configs/edge/*.kdl", "configs/edge/a.kdl", true),
            ("configs/edge/*.kdl", "configs/edge/a.kdl.bak", false),
            ("configs/edge/r?utes.kdl", "configs/edge/routes.kdl", true),
            ("configs/edge/r?utes.kdl", "configs/edge/r/utes.kdl", false),
            ("**", "anything/at/all", true),
            ("nodes/*-fra-*.kdl", "nodes/edge-fra-1.kdl", true),
        ];
        for (pattern, path, expected) in cases {
            assert_eq!(glob_matches(pattern, path), expected, "{pattern} ~ {path}");
        }
    }

    #[test]
    fn patterns_that_may_share_a_path_are_found() {
        let cases = [
            ("configs/edge/**", "configs/edge/tls/*.kdl", true),
            ("configs/edge/**", "configs/edge/", true),
            ("configs/**", "nodes/*.kdl", false),
            ("**", "fleet.kdl", true),
            ("fleet.kdl", "fleet.kdl", true),
            ("fleet.kdl", "environments.kdl", false),
            ("configs/edge", "configs/edge/a.kdl", false),
            ("configs/*/tls.kdl", "configs/api/routes.kdl", true),
            ("configs/edge/**", "configs/edge", true),
        ];
        for (a, b, expected) in cases {
            assert_eq!(may_overlap(a, b), expected, "{a} ~ {b}");
            assert_eq!(may_overlap(b, a), expected, "{b} ~ {a}");
        }
    }

    #[test]
    fn bad_patterns_are_named() {
        assert!(pattern_problem("").is_some());
        assert!(pattern_problem("/").is_some());
        assert!(pattern_problem("configs//edge").is_some());
        assert!(pattern_problem("configs/**edge").is_some());
        assert!(pattern_problem("configs/edge/**").is_none());
        assert!(pattern_problem("configs/edge/").is_none());
    }
}
