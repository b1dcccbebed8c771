//! `gitfleet check --explain ROLLOUT`: the plan a rollout runs on, part by
//! part, and where each part comes from (its file, its template, fleet.kdl's
//! defaults or gitfleet's own), so a template's effect is never a guess.

use std::fmt;

use gitfleet_schemas::{Gates, RolloutFile, RolloutTarget, StepSize, Template, WindowKind};

use crate::model::{FleetModel, FLEET_FILE};

/// One rollout's effective plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Explained {
    pub name: String,
    pub path: String,
    pub target: String,
    pub selector: String,
    /// How many nodes the selector picks now.
    pub nodes: usize,
    pub template: Option<String>,
    pub parts: Vec<Part>,
}

/// One part of a plan: what it is, its value, where it comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Part {
    pub what: &'static str,
    pub value: String,
    pub from: String,
}

/// The effective plan of rollout `name`, or `None` when the model has no
/// such rollout.
pub fn rollout(model: &FleetModel, name: &str) -> Option<Explained> {
    let located = model.rollouts.get(name)?;
    let effective = &located.doc;
    let own = model.written.get(name).unwrap_or(effective);
    let fleet = model.fleet.as_ref().map(|f| &f.doc);
    let template: Option<&Template> = own
        .template
        .as_ref()
        .and_then(|t| fleet.and_then(|f| f.templates.iter().find(|x| x.name.value == t.value)));
    let defaults = fleet.map(|f| &f.defaults);
    let here = located.path.as_str();
    let from_template = template.map(|t| format!("template `{}` ({FLEET_FILE})", t.name.value));
    let defaults_from = format!("defaults ({FLEET_FILE})");
    // Where a part comes from: the file, the template, the defaults.
    let origin = |own: bool, template: bool, default: bool, fallback: &str| -> String {
        if own {
            here.to_owned()
        } else if template {
            from_template.clone().unwrap_or_default()
        } else if default {
            defaults_from.clone()
        } else {
            fallback.to_owned()
        }
    };
    let mut parts = Vec::new();
    parts.push(Part {
        what: "steps",
        value: steps(effective),
        from: origin(!own.steps.is_empty(), template.is_some(), false, "none"),
    });
    let d_max = defaults.and_then(|d| d.max_unavailable.as_ref());
    parts.push(Part {
        what: "max-unavailable",
        value: effective
            .max_unavailable
            .as_ref()
            .or(d_max)
            .map_or(1, |m| m.value.max(1))
            .to_string(),
        from: origin(
            own.max_unavailable.is_some(),
            template.is_some_and(|t| t.max_unavailable.is_some()),
            d_max.is_some(),
            "gitfleet's default",
        ),
    });
    let d_bake = defaults.and_then(|d| d.bake_seconds.as_ref());
    parts.push(Part {
        what: "bake",
        value: effective
            .bake_seconds
            .as_ref()
            .or(d_bake)
            .map_or("none".to_owned(), |b| duration(b.value)),
        from: origin(
            own.bake_seconds.is_some(),
            template.is_some_and(|t| t.bake_seconds.is_some()),
            d_bake.is_some(),
            "gitfleet's default",
        ),
    });
    let d_deadline = defaults.and_then(|d| d.progress_deadline_seconds.as_ref());
    parts.push(Part {
        what: "progress-deadline",
        value: effective
            .progress_deadline_seconds
            .as_ref()
            .or(d_deadline)
            .map_or("none".to_owned(), |b| duration(b.value)),
        from: origin(
            own.progress_deadline_seconds.is_some(),
            template.is_some_and(|t| t.progress_deadline_seconds.is_some()),
            d_deadline.is_some(),
            "gitfleet's default",
        ),
    });
    let no_gates = Gates::default();
    let t_gates = template.map_or(&no_gates, |t| &t.gates);
    for (what, value, mine, theirs) in gates(&effective.gates, &own.gates, t_gates) {
        let fallback = match what {
            "gate min-requests" => "gitfleet's default",
            _ => "",
        };
        parts.push(Part {
            what,
            value,
            from: origin(mine, theirs, false, fallback),
        });
    }
    let windows: Vec<String> = effective
        .windows
        .iter()
        .map(|w| {
            let kind = match w.kind {
                WindowKind::Allow => "allow",
                WindowKind::Deny => "deny",
            };
            format!(
                "{kind} `{}` cron=\"{}\" for {} ({})",
                w.name.value,
                w.cron.value,
                duration(w.duration_seconds.value),
                w.time_zone.value
            )
        })
        .collect();
    parts.push(Part {
        what: "windows",
        value: if windows.is_empty() {
            "none of its own (the environments' apply)".to_owned()
        } else {
            windows.join("; ")
        },
        from: origin(
            !own.windows.is_empty(),
            template.is_some_and(|t| !t.windows.is_empty()),
            false,
            "",
        ),
    });
    let target = match &effective.target.value {
        RolloutTarget::Config(c) => format!("config `{c}`"),
        RolloutTarget::Mesh(m) => format!("mesh `{m}`"),
    };
    Some(Explained {
        name: name.to_owned(),
        path: here.to_owned(),
        target,
        selector: effective.selector.to_string(),
        nodes: crate::select::select(model, &effective.selector).len(),
        template: own.template.as_ref().map(|t| t.value.clone()),
        parts,
    })
}

fn steps(r: &RolloutFile) -> String {
    if r.steps.is_empty() {
        return "none".to_owned();
    }
    r.steps
        .iter()
        .map(|s| match s.size.value {
            StepSize::Count(c) => format!("count={c}"),
            StepSize::Percent(p) => format!("percent={p}"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Each gate the rollout runs: its name, value, and whether the rollout's
/// file or its template gives it.
fn gates(
    effective: &Gates,
    own: &Gates,
    template: &Gates,
) -> Vec<(&'static str, String, bool, bool)> {
    let mut out = Vec::new();
    if effective.healthy {
        out.push((
            "gate healthy",
            "yes".to_owned(),
            own.healthy,
            template.healthy,
        ));
    }
    let mut add = |what, value: Option<String>, mine: bool, theirs: bool| {
        if let Some(value) = value {
            out.push((what, value, mine, theirs));
        }
    };
    add(
        "gate max-error-rate",
        effective
            .max_error_rate
            .as_ref()
            .map(|v| v.value.to_string()),
        own.max_error_rate.is_some(),
        template.max_error_rate.is_some(),
    );
    add(
        "gate max-p99-latency",
        effective
            .max_p99_latency_ms
            .as_ref()
            .map(|v| format!("{} ms", v.value)),
        own.max_p99_latency_ms.is_some(),
        template.max_p99_latency_ms.is_some(),
    );
    add(
        "gate max-cpu-percent",
        effective
            .max_cpu_percent
            .as_ref()
            .map(|v| v.value.to_string()),
        own.max_cpu_percent.is_some(),
        template.max_cpu_percent.is_some(),
    );
    add(
        "gate max-memory-percent",
        effective
            .max_memory_percent
            .as_ref()
            .map(|v| v.value.to_string()),
        own.max_memory_percent.is_some(),
        template.max_memory_percent.is_some(),
    );
    add(
        "gate min-requests",
        effective
            .judges_traffic()
            .then(|| effective.min_requests().to_string()),
        own.min_requests.is_some(),
        template.min_requests.is_some(),
    );
    add(
        "gate route",
        effective.route.as_ref().map(|v| v.value.clone()),
        own.route.is_some(),
        template.route.is_some(),
    );
    for check in &effective.http_checks {
        out.push((
            "gate http-check",
            crate::channel::channel_check(check).describe(),
            !own.http_checks.is_empty(),
            !template.http_checks.is_empty(),
        ));
    }
    if out.is_empty() {
        out.push(("gates", "none".to_owned(), false, false));
    }
    out
}

/// Seconds as the largest whole unit: `10m`, `1h`, `90s`.
fn duration(s: u64) -> String {
    match s {
        0 => "0s".to_owned(),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

impl fmt::Display for Explained {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rollout `{}` ({})", self.name, self.path)?;
        if let Some(t) = &self.template {
            write!(f, ", template `{t}`")?;
        }
        writeln!(f)?;
        writeln!(f, "  {:<24} {}", "target", self.target)?;
        writeln!(
            f,
            "  {:<24} {} ({} node{} now)",
            "selector",
            self.selector,
            self.nodes,
            if self.nodes == 1 { "" } else { "s" }
        )?;
        for p in &self.parts {
            if p.from.is_empty() {
                writeln!(f, "  {:<24} {}", p.what, p.value)?;
            } else {
                writeln!(f, "  {:<24} {:<40} from {}", p.what, p.value, p.from)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::RepoFiles;

    fn model(fleet_more: &str, rollout: &str) -> FleetModel {
        let mut f = RepoFiles::new();
        f.insert(
            "fleet.kdl",
            format!("version 1\nname \"t\"\ndefaults {{\n bake \"5m\"\n}}\n{fleet_more}"),
        );
        f.insert("environments.kdl", "version 1\nenvironment \"dev\"\n");
        f.insert("configs/web/sentinel.kdl", "system { worker-threads 1; }\n");
        f.insert(
            "rollouts/web.kdl",
            format!("version 1\nconfig \"web\"\nselector role=\"web\"\n{rollout}"),
        );
        crate::check::check(&f).model
    }

    fn part<'a>(e: &'a Explained, what: &str) -> &'a Part {
        e.parts.iter().find(|p| p.what == what).unwrap()
    }

    #[test]
    fn each_part_names_the_file_the_template_or_the_defaults() {
        let m = model(
            "template \"canary\" {\n step count=1\n step percent=100\n max-unavailable 2\n gates { healthy; }\n}\n",
            "template \"canary\"\nprogress-deadline \"15m\"\ngates { max-error-rate 0.01; }\n",
        );
        let e = rollout(&m, "web").unwrap();
        assert_eq!(e.template.as_deref(), Some("canary"));
        let canary = "template `canary` (fleet.kdl)";
        assert_eq!(part(&e, "steps").value, "count=1, percent=100");
        assert_eq!(part(&e, "steps").from, canary);
        assert_eq!(part(&e, "max-unavailable").value, "2");
        assert_eq!(part(&e, "max-unavailable").from, canary);
        assert_eq!(part(&e, "bake").value, "5m");
        assert_eq!(part(&e, "bake").from, "defaults (fleet.kdl)");
        assert_eq!(part(&e, "progress-deadline").from, "rollouts/web.kdl");
        assert_eq!(part(&e, "gate healthy").from, canary);
        assert_eq!(part(&e, "gate max-error-rate").from, "rollouts/web.kdl");
        assert_eq!(part(&e, "gate min-requests").value, "20");
        let text = e.to_string();
        assert!(
            text.starts_with("rollout `web` (rollouts/web.kdl), template `canary`\n"),
            "{text}"
        );
    }

    #[test]
    fn a_rollout_without_a_template_is_all_its_own_or_defaults() {
        let m = model("", "step percent=100\n");
        let e = rollout(&m, "web").unwrap();
        assert_eq!(e.template, None);
        assert_eq!(part(&e, "steps").from, "rollouts/web.kdl");
        assert_eq!(part(&e, "max-unavailable").from, "gitfleet's default");
        assert_eq!(part(&e, "gates").value, "none");
        assert!(rollout(&m, "nope").is_none());
    }
}
