//! What a pull request would do, for its plan-preview check run: the
//! diagnostics of its head as line annotations, the configs and rollouts it
//! changes, the nodes each environment's steps would take, a risk summary
//! and the config diff. Pure: both sides come checked, as values.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use gitfleet_schemas::diagnostic::{Diagnostic, Severity};
use gitfleet_schemas::rollout::RolloutTarget;

use crate::model::FleetModel;
use crate::plan::{planned, Targets};
use crate::rules::{Rules, RulesChange};

/// One side of the comparison: a checked commit.
#[derive(Clone, Copy, Debug)]
pub struct Side<'a> {
    pub model: &'a FleetModel,
    pub diagnostics: &'a [Diagnostic],
    pub targets: &'a Targets,
}

/// A line annotation, as a check run takes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Annotation {
    pub path: String,
    pub start_line: u32,
    pub end_line: u32,
    /// `failure`, `warning` or `notice`.
    pub level: &'static str,
    pub title: String,
    pub message: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Preview {
    /// `success` or `failure` (an error in the head).
    pub conclusion: &'static str,
    pub title: String,
    /// Markdown: configs, rollouts, nodes per step, risks.
    pub summary: String,
    /// Markdown: the config diff.
    pub text: String,
    pub annotations: Vec<Annotation>,
}

/// GitHub takes at most 50 annotations per request.
pub const MAX_ANNOTATIONS: usize = 50;
/// GitHub keeps 65,535 characters of a check run's summary or text.
const MAX_TEXT: usize = 60_000;

/// Who owns what a pull request touches: the paths it changes (from where
/// it branched to its head) and the owners rules an approving review of
/// its head already satisfies, `(pattern, owner)`.
#[derive(Clone, Copy, Debug, Default)]
pub struct PullOwners<'a> {
    pub paths: &'a [String],
    pub approved: &'a [(String, String)],
}

/// The preview of `head` against `base` (the branch it merges into), with
/// `rules` the rules in force in each environment: a change to them is
/// named, with the approvals it will wait for, and the owners the paths
/// it touches ask are listed with those who already approved.
pub fn preview(base: Side<'_>, head: Side<'_>, rules: &Rules, owners: PullOwners<'_>) -> Preview {
    let errors = head
        .diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .count();
    let warnings = head.diagnostics.len() - errors;
    let annotations: Vec<Annotation> = head
        .diagnostics
        .iter()
        .take(MAX_ANNOTATIONS)
        .map(|d| Annotation {
            path: d.file.clone(),
            start_line: d.line.max(1),
            end_line: d.end_line.max(d.line).max(1),
            level: match d.severity {
                Severity::Error => "failure",
                _ => "warning",
            },
            title: d.code.clone(),
            message: match &d.help {
                Some(h) => format!("{}\nhelp: {h}", d.message),
                None => d.message.clone(),
            },
        })
        .collect();

    let changed = changed_configs(base.model, head.model);
    let rollouts = affected_rollouts(base.model, head.model, &changed);
    let mut summary = String::new();
    if errors > 0 {
        let _ = writeln!(
            summary,
            "**{errors} error(s)** in the fleet repo at this head: nothing of it would be rolled out until they are fixed.\n"
        );
    }
    if head.diagnostics.len() > MAX_ANNOTATIONS {
        let _ = writeln!(
            summary,
            "{} diagnostics; the first {MAX_ANNOTATIONS} are annotated. `gitfleet check` lists them all.\n",
            head.diagnostics.len()
        );
    }
    let rule_changes = crate::rules::changes(rules, head.model);
    if !rule_changes.is_empty() {
        summary.push_str("### Rules that change\n\n");
        for c in &rule_changes {
            let _ = writeln!(
                summary,
                "- **{}**: {}. {}",
                c.environment,
                c.differences.join("; "),
                rules_wait(rules, c)
            );
        }
        summary.push('\n');
    }
    owners_lines(&mut summary, rules, head.model, owners);
    if changed.is_empty() && rollouts.is_empty() {
        summary.push_str("No config or rollout changes: no bundle would change.\n");
    } else {
        summary.push_str("### Configs that change\n\n");
        if changed.is_empty() {
            summary.push_str("None.\n");
        }
        for (name, how) in &changed {
            let _ = writeln!(summary, "- `{name}`: {how}");
        }
        summary.push_str("\n### Rollouts and the nodes they would take\n\n");
        for name in &rollouts {
            rollout_lines(&mut summary, head, name);
        }
        let risks = risks(base.model, head.model, &changed);
        summary.push_str("\n### Risks\n\n");
        if risks.is_empty() {
            summary.push_str("None found (TLS, auth filters, upstreams, routes).\n");
        }
        for r in risks {
            let _ = writeln!(summary, "- {r}");
        }
    }
    let text = cut(config_diff(base.model, head.model, &changed));
    let title = if errors > 0 {
        format!("{errors} error(s), {warnings} warning(s)")
    } else {
        format!(
            "{} config(s) and {} rollout(s) change; {warnings} warning(s)",
            changed.len(),
            rollouts.len()
        )
    };
    Preview {
        conclusion: if errors > 0 { "failure" } else { "success" },
        title,
        summary: cut(summary),
        text,
        annotations,
    }
}

/// The owners the pull request's paths ask, under the rules in force.
fn owners_lines(summary: &mut String, rules: &Rules, head: &FleetModel, pull: PullOwners<'_>) {
    let in_force = rules.owners();
    // Only what owners hold: a rollout's inputs, and the rule files.
    let held: Vec<String> = pull
        .paths
        .iter()
        .filter(|p| crate::owners::held(head, p))
        .cloned()
        .collect();
    let pull = PullOwners {
        paths: &held,
        approved: pull.approved,
    };
    let needs = crate::owners::needed(&in_force, pull.paths.iter().map(String::as_str));
    if needs.is_empty() {
        return;
    }
    summary.push_str("### Owners who must approve\n\n");
    for rule in needs {
        let by = pull
            .approved
            .iter()
            .find(|(p, _)| *p == rule.pattern.value)
            .map(|(_, who)| who);
        let touched: Vec<&str> = pull
            .paths
            .iter()
            .filter(|p| crate::owners::owner_of(&in_force, p).is_some_and(|o| o == rule))
            .map(String::as_str)
            .collect();
        let _ = writeln!(
            summary,
            "- `{}` ({}): {}; touches {}",
            rule.pattern.value,
            rule.describe_owners(),
            match by {
                Some(who) => format!("approved by {who}"),
                None => "**waiting**".to_owned(),
            },
            touched
                .iter()
                .take(5)
                .map(|p| format!("`{p}`"))
                .collect::<Vec<_>>()
                .join(", ")
                + &match touched.len() {
                    n if n > 5 => format!(" and {} more", n - 5),
                    _ => String::new(),
                }
        );
    }
    summary.push_str(
        "\nOwners are read from the rules in force, never from this pull request: an approving review of its head by an owner (not its author), or `gitfleet approve` with an owner's key, releases their paths.\n\n",
    );
}

/// What a change to an environment's rules waits for once merged.
fn rules_wait(rules: &Rules, c: &RulesChange) -> String {
    let from = rules
        .env(&c.environment)
        .map_or(String::new(), |r| format!(" (from `{}`)", short(&r.commit)));
    match &c.needs {
        Some(a) => format!(
            "The rules in force{from} ask for {} approval(s) of the merge commit in {} ({}): until then {} keeps its rules.",
            a.required.value,
            c.environment,
            crate::rules::describe_approvals(Some(a)),
            c.environment
        ),
        None => format!(
            "The rules in force{from} ask for no approvals in {}: the new rules apply once merged.",
            c.environment
        ),
    }
}

fn short(commit: &str) -> &str {
    &commit[..commit.len().min(12)]
}

fn cut(mut s: String) -> String {
    if s.len() > MAX_TEXT {
        let mut end = MAX_TEXT;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push_str("\n\n… cut; `gitfleet bundle diff` shows it all.\n");
    }
    s
}

/// Config name -> what happens to it.
fn changed_configs(base: &FleetModel, head: &FleetModel) -> BTreeMap<String, String> {
    let names: BTreeSet<&String> = base.configs.keys().chain(head.configs.keys()).collect();
    let mut out = BTreeMap::new();
    for name in names {
        match (base.configs.get(name), head.configs.get(name)) {
            (None, Some(_)) => {
                out.insert(name.clone(), "added".to_owned());
            }
            (Some(_), None) => {
                out.insert(name.clone(), "removed".to_owned());
            }
            (Some(a), Some(b)) if a.files != b.files => {
                let files: BTreeSet<&String> = a.files.keys().chain(b.files.keys()).collect();
                let touched: Vec<&str> = files
                    .into_iter()
                    .filter(|f| a.files.get(*f) != b.files.get(*f))
                    .map(String::as_str)
                    .collect();
                let valid = if b.valid() {
                    ""
                } else {
                    " (invalid: the last good bundle stays)"
                };
                out.insert(
                    name.clone(),
                    format!("{} changed{valid}", touched.join(", ")),
                );
            }
            _ => {}
        }
    }
    out
}

/// Rollouts whose config changed or whose own file changed.
fn affected_rollouts(
    base: &FleetModel,
    head: &FleetModel,
    changed: &BTreeMap<String, String>,
) -> BTreeSet<String> {
    head.rollouts
        .iter()
        .filter(|(name, r)| {
            let config_changed =
                matches!(&r.doc.target.value, RolloutTarget::Config(c) if changed.contains_key(c));
            let spec_changed = base.rollouts.get(*name).is_none_or(|b| b.doc != r.doc);
            config_changed || spec_changed
        })
        .map(|(name, _)| name.clone())
        .collect()
}

/// `- name: env: step 1 → 2 nodes, step 2 → 6 nodes; ...`
fn rollout_lines(out: &mut String, head: Side<'_>, name: &str) {
    let Some(r) = head.model.rollouts.get(name) else {
        return;
    };
    let _ = write!(out, "- `{name}`");
    for env in &head.model.environments {
        let env = &env.name.value;
        let n = head.targets.get(name, env).map_or(0, |m| m.len());
        if n == 0 {
            continue;
        }
        let steps: Vec<String> = r
            .doc
            .steps
            .iter()
            .enumerate()
            .map(|(i, s)| format!("step {} → {}", i + 1, planned(&s.size.value, n)))
            .collect();
        let _ = write!(out, "; **{env}** ({n} nodes): {}", steps.join(", "));
    }
    out.push('\n');
}

/// Listener TLS, auth filters, upstreams and routes that a change removes
/// or weakens.
fn risks(base: &FleetModel, head: &FleetModel, changed: &BTreeMap<String, String>) -> Vec<String> {
    let mut out = Vec::new();
    for name in changed.keys() {
        let outline = |m: &FleetModel| {
            let (_, config) = m.configs.get(name)?.parsed()?;
            Some(config.outline())
        };
        let (Some(a), Some(b)) = (outline(base), outline(head)) else {
            continue;
        };
        for (id, tls) in &a.listeners {
            match b.listeners.iter().find(|(x, _)| x == id) {
                None => out.push(format!("`{name}`: listener `{id}` removed")),
                Some((_, x_tls)) if *tls && !x_tls => {
                    out.push(format!("`{name}`: listener `{id}` drops TLS"))
                }
                _ => {}
            }
        }
        for id in &a.upstreams {
            if !b.upstreams.contains(id) {
                out.push(format!("`{name}`: upstream `{id}` removed"));
            }
        }
        let auth = |f: &String| {
            let f = f.to_ascii_lowercase();
            f.contains("auth") || f.contains("jwt") || f.contains("oauth")
        };
        for (id, filters) in &a.routes {
            match b.routes.iter().find(|(x, _)| x == id) {
                None => out.push(format!("`{name}`: route `{id}` removed")),
                Some((_, x_filters)) => {
                    for f in filters.iter().filter(|f| auth(f)) {
                        if !x_filters.contains(f) {
                            out.push(format!("`{name}`: route `{id}` loses auth filter `{f}`"));
                        }
                    }
                }
            }
        }
        let ids = |o: &crate::proxy::Outline| -> BTreeSet<String> {
            o.routes.iter().map(|(id, _)| id.clone()).collect()
        };
        let (ra, rb) = (ids(&a), ids(&b));
        let moved = ra.symmetric_difference(&rb).count();
        if moved >= 5 {
            out.push(format!("`{name}`: {moved} routes added or removed"));
        }
    }
    out
}

/// A unified diff of every changed config file.
fn config_diff(base: &FleetModel, head: &FleetModel, changed: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    for name in changed.keys() {
        let empty = BTreeMap::new();
        let a = base.configs.get(name).map_or(&empty, |c| &c.files);
        let b = head.configs.get(name).map_or(&empty, |c| &c.files);
        let files: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
        for f in files {
            let (x, y) = (a.get(f), b.get(f));
            if x == y {
                continue;
            }
            let text = |v: Option<&Vec<u8>>| {
                v.map(|v| String::from_utf8_lossy(v).into_owned())
                    .unwrap_or_default()
            };
            let (x, y) = (text(x), text(y));
            let path = format!("configs/{name}/{f}");
            let diff = similar::TextDiff::from_lines(&x, &y);
            let _ = write!(
                out,
                "```diff\n{}```\n",
                diff.unified_diff()
                    .context_radius(3)
                    .header(&format!("a/{path}"), &format!("b/{path}"))
            );
        }
    }
    out
}
