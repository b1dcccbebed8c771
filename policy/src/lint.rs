//! Fleet policy on top of what the proxy accepts: rules switched on in
//! `fleet.kdl` with a severity, optionally only for some environments.

use std::collections::{BTreeSet, HashMap};

use gitfleet_schemas::{LintRule, RolloutTarget, Severity, Span};

use crate::checks::known_list;
use crate::diagnostics::Diagnostics;
use crate::model::{ConfigDir, FleetModel, ENVIRONMENTS_FILE, FLEET_FILE};
use crate::proxy::{find_quoted, ProxyConfig};
use crate::repo::RepoFiles;
use crate::select::select;

/// Every rule gitfleet knows, with what it checks.
pub const RULES: &[(&str, &str)] = &[
    (
        "listener-tls",
        "every listener not bound to loopback terminates TLS",
    ),
    (
        "route-timeout",
        "every proxied route references a `timeout` filter",
    ),
    (
        "health-route",
        "the config declares a `builtin-handler \"health\"` route",
    ),
    (
        "max-config-bytes",
        "the config directory is at most `limit` bytes",
    ),
];

pub(crate) fn run(model: &FleetModel, files: &RepoFiles, d: &mut Diagnostics<'_>) {
    let Some(fleet) = &model.fleet else { return };
    let rules: Vec<&LintRule> = first_of_each_name(&fleet.doc.lints, d)
        .into_iter()
        .filter(|r| known(d, model, r))
        .collect();
    if rules.is_empty() {
        return;
    }
    let reach = environments_by_config(model);
    for dir in model.configs.values() {
        let envs = reach.get(dir.name.as_str());
        for rule in &rules {
            let in_env = rule.environments.is_empty()
                || envs.is_some_and(|e| {
                    rule.environments
                        .iter()
                        .any(|r| e.contains(r.value.as_str()))
                });
            let in_configs =
                rule.configs.is_empty() || rule.configs.iter().any(|c| c.value == dir.name);
            let applies = in_env && in_configs;
            if applies {
                apply(rule, dir, files, d);
            }
        }
    }
}

/// The rules in order, without later rules of a name already switched on,
/// which are reported: one rule has one severity and one scope.
fn first_of_each_name<'m>(rules: &'m [LintRule], d: &mut Diagnostics<'_>) -> Vec<&'m LintRule> {
    let mut first: HashMap<&str, Span> = HashMap::new();
    let mut out = Vec::new();
    for rule in rules {
        match first.get(rule.name.value.as_str()) {
            Some(&span) => {
                let at = d.location(FLEET_FILE, span);
                d.error(
                    FLEET_FILE,
                    rule.name.span,
                    "duplicate-lint",
                    format!("lint `{}` is switched on twice", rule.name.value),
                    Some(format!(
                        "first switched on at {at}; keep one `lint` node per rule, with all its environments and configs"
                    )),
                );
            }
            None => {
                first.insert(&rule.name.value, rule.name.span);
                out.push(rule);
            }
        }
    }
    out
}

/// Whether `rule` is one of the fleet's own: patterns or a file size.
fn custom(rule: &LintRule) -> bool {
    !rule.patterns.is_empty() || rule.max_file_bytes.is_some() || !rule.paths.is_empty()
}

/// Report unknown rule names and bad settings; true when the rule can run.
fn known(d: &mut Diagnostics<'_>, model: &FleetModel, rule: &LintRule) -> bool {
    let name = rule.name.value.as_str();
    let builtin = RULES.iter().any(|(r, _)| *r == name);
    if !builtin && !custom(rule) {
        let names: Vec<&str> = RULES.iter().map(|(r, _)| *r).collect();
        d.error(
            FLEET_FILE,
            rule.name.span,
            "unknown-lint",
            format!("unknown lint rule `{name}`"),
            Some(format!(
                "known rules: {}; a rule of the fleet's own has `forbid`, `require` or `max-file-bytes` in its block",
                names.join(", ")
            )),
        );
        return false;
    }
    if builtin && custom(rule) {
        d.error(
            FLEET_FILE,
            rule.name.span,
            "invalid-lint",
            format!(
                "lint `{name}` is built in and takes no `forbid`, `require` or `max-file-bytes`"
            ),
            Some("give a rule of the fleet's own a name of its own".to_owned()),
        );
        return false;
    }
    let mut ok = true;
    for p in &rule.paths {
        if p.path.value.split('/').any(str::is_empty) {
            d.error(
                FLEET_FILE,
                p.path.span,
                "invalid-value",
                format!("lint `{name}`: `{}` is not a node path", p.path.value),
                Some("name nodes from the top, separated by `/`: \"listeners/listener/request-timeout-secs\"".to_owned()),
            );
            ok = false;
        }
    }
    for p in &rule.patterns {
        if let Err(e) = regex::Regex::new(&p.regex.value) {
            d.error(
                FLEET_FILE,
                p.regex.span,
                "invalid-regex",
                format!(
                    "lint `{name}`: `{}` is not a regular expression",
                    p.regex.value
                ),
                Some(
                    e.to_string()
                        .lines()
                        .last()
                        .unwrap_or_default()
                        .trim()
                        .to_owned(),
                ),
            );
            ok = false;
        }
    }
    if !ok {
        return false;
    }
    for env in &rule.environments {
        // Without environments.kdl, whose absence is reported on its own,
        // every name would be unknown.
        if model.environments_read && model.environment(&env.value).is_none() {
            d.error(
                FLEET_FILE,
                env.span,
                "unknown-environment",
                format!("lint `{name}` names unknown environment `{}`", env.value),
                Some(format!(
                    "environments are declared in {ENVIRONMENTS_FILE}; {}",
                    known_list(model.environments.iter().map(|e| e.name.value.as_str()))
                )),
            );
        }
    }
    for config in &rule.configs {
        if !model.configs.contains_key(&config.value) {
            d.error(
                FLEET_FILE,
                config.span,
                "unknown-config",
                format!("lint `{name}` names unknown config `{}`", config.value),
                Some(format!(
                    "configs live in `configs/<name>/sentinel.kdl`; {}",
                    known_list(model.configs.keys())
                )),
            );
        }
    }
    if name == "max-config-bytes" && rule.limit.is_none() {
        d.error(
            FLEET_FILE,
            rule.name.span,
            "missing-property",
            "lint `max-config-bytes` needs `limit=BYTES`",
            Some("e.g. `lint \"max-config-bytes\" severity=\"error\" limit=65536`".to_owned()),
        );
        return false;
    }
    true
}

/// The environments each config reaches through the rollouts that target it.
fn environments_by_config(model: &FleetModel) -> HashMap<&str, BTreeSet<&str>> {
    let mut out: HashMap<&str, BTreeSet<&str>> = HashMap::new();
    for r in model.rollouts.values() {
        if let RolloutTarget::Config(c) = &r.doc.target.value {
            let envs = out.entry(c.as_str()).or_default();
            for i in select(model, &r.doc.selector) {
                envs.insert(model.nodes[i].doc.environment.value.as_str());
            }
        }
    }
    out
}

/// Each distinct entry file of `dir` with its parsed config: a file read
/// for two proxies is linted once.
fn parsed_files(dir: &ConfigDir) -> Vec<(&'static str, &ProxyConfig)> {
    let mut out: Vec<(&'static str, &ProxyConfig)> = Vec::new();
    for v in dir.variants.values() {
        if let Some(config) = &v.config {
            if !out.iter().any(|(f, _)| *f == v.file) {
                out.push((v.file, config));
            }
        }
    }
    out
}

fn apply(rule: &LintRule, dir: &ConfigDir, files: &RepoFiles, d: &mut Diagnostics<'_>) {
    let sev = rule.severity.value;
    let code = format!("lint/{}", rule.name.value);
    let entry = dir
        .variants
        .values()
        .next()
        .map_or("sentinel.kdl", |v| v.file);
    if custom(rule) {
        for f in custom_findings(rule, dir) {
            d.push(&f.path, f.span, sev, &code, f.message, f.help);
        }
        return;
    }
    match rule.name.value.as_str() {
        "max-config-bytes" => {
            let limit = rule.limit.as_ref().map_or(u64::MAX, |l| l.value);
            let size = dir.total_bytes() as u64;
            if size > limit {
                d.push(
                    &format!("configs/{}/{entry}", dir.name),
                    Span::default(),
                    sev,
                    &code,
                    format!(
                        "config `{}` is {size} bytes, over the limit of {limit}",
                        dir.name
                    ),
                    Some("split shared parts out or raise the limit in fleet.kdl".to_owned()),
                );
            }
        }
        rule_name => {
            // The remaining rules read the parsed config; an invalid one has
            // already been reported.
            for (file, config) in parsed_files(dir) {
                let path = format!("configs/{}/{file}", dir.name);
                let text = files.text(&path).unwrap_or("");
                for (span, message, help) in findings(rule_name, config, text) {
                    d.push(&path, span, sev, &code, message, Some(help.to_owned()));
                }
            }
        }
    }
}

/// The error-severity findings of `rules` (the lint rules in force in
/// environment `env`) on config `dir`, one line each: while there are any,
/// a change to the config may not enter the environment. Rules gitfleet
/// does not know are skipped (`check` reports them).
pub fn blocking(rules: &[LintRule], env: &str, dir: &ConfigDir) -> Vec<String> {
    let mut out = Vec::new();
    for rule in rules {
        let applies = rule.severity.value == Severity::Error
            && (rule.environments.is_empty() || rule.environments.iter().any(|e| e.value == env))
            && (rule.configs.is_empty() || rule.configs.iter().any(|c| c.value == dir.name));
        if !applies {
            continue;
        }
        let name = rule.name.value.as_str();
        if custom(rule) {
            for f in custom_findings(rule, dir) {
                let line = format!("lint `{name}`: {}", f.message);
                if !out.contains(&line) {
                    out.push(line);
                }
            }
            continue;
        }
        if name == "max-config-bytes" {
            let limit = rule.limit.as_ref().map_or(u64::MAX, |l| l.value);
            let size = dir.total_bytes() as u64;
            if size > limit {
                out.push(format!(
                    "lint `{name}`: config `{}` is {size} bytes, over the limit of {limit}",
                    dir.name
                ));
            }
            continue;
        }
        for (file, config) in parsed_files(dir) {
            let text = dir.text(file).unwrap_or("");
            for (_, message, _) in findings(name, config, text) {
                let line = format!("lint `{name}`: {message}");
                if !out.contains(&line) {
                    out.push(line);
                }
            }
        }
    }
    out
}

/// What a rule of the fleet's own found in one file.
#[derive(Debug, PartialEq, Eq)]
struct Finding {
    path: String,
    span: Span,
    message: String,
    help: Option<String>,
}

/// The findings of a rule of the fleet's own on config `dir`: each match
/// of a forbidden pattern in any of its text files (at the match), each
/// entry file (sentinel.kdl, zentinel.kdl) without a match of a required
/// one, each file over `max-file-bytes`. A pattern that does not compile
/// finds nothing (`check` reports it).
fn custom_findings(rule: &LintRule, dir: &ConfigDir) -> Vec<Finding> {
    let mut out = Vec::new();
    let compiled: Vec<_> = rule
        .patterns
        .iter()
        .filter_map(|p| regex::Regex::new(&p.regex.value).ok().map(|re| (p, re)))
        .collect();
    for (file, bytes) in &dir.files {
        let path = format!("configs/{}/{file}", dir.name);
        if let Some(max) = &rule.max_file_bytes {
            if bytes.len() as u64 > max.value {
                out.push(Finding {
                    path: path.clone(),
                    span: Span::default(),
                    message: format!(
                        "`{file}` of config `{}` is {} bytes, over {}",
                        dir.name,
                        bytes.len(),
                        max.value
                    ),
                    help: Some("split it, or raise `max-file-bytes` in fleet.kdl".to_owned()),
                });
            }
        }
        let Ok(text) = std::str::from_utf8(bytes) else {
            continue;
        };
        for (p, re) in compiled.iter().filter(|(p, _)| p.forbid) {
            for m in re.find_iter(text) {
                out.push(Finding {
                    path: path.clone(),
                    span: Span::new(m.start(), m.end()),
                    message: p.message.as_ref().map_or_else(
                        || format!("matches the forbidden pattern `{}`", p.regex.value),
                        |m| m.value.clone(),
                    ),
                    help: Some(format!(
                        "forbidden by lint `{}` in fleet.kdl",
                        rule.name.value
                    )),
                });
            }
        }
    }
    let mut entries: Vec<&str> = dir.variants.values().map(|v| v.file).collect();
    entries.sort_unstable();
    entries.dedup();
    for required in &rule.paths {
        for file in &entries {
            let Some(text) = dir.text(file) else { continue };
            // A file that does not parse is reported by validation.
            let Ok(doc) = kdl::KdlDocument::parse(text) else {
                continue;
            };
            let path = format!("configs/{}/{file}", dir.name);
            for (span, what) in missing_path(&doc, &required.path.value) {
                out.push(Finding {
                    path: path.clone(),
                    span,
                    message: required.message.as_ref().map_or(what, |m| m.value.clone()),
                    help: Some(format!(
                        "required by lint `{}` in fleet.kdl",
                        rule.name.value
                    )),
                });
            }
        }
    }
    for (p, re) in compiled.iter().filter(|(p, _)| !p.forbid) {
        for file in &entries {
            let Some(text) = dir.text(file) else { continue };
            if !re.is_match(text) {
                out.push(Finding {
                    path: format!("configs/{}/{file}", dir.name),
                    span: Span::default(),
                    message: p.message.as_ref().map_or_else(
                        || format!("has no match of the required pattern `{}`", p.regex.value),
                        |m| m.value.clone(),
                    ),
                    help: Some(format!(
                        "required by lint `{}` in fleet.kdl",
                        rule.name.value
                    )),
                });
            }
        }
    }
    out
}

/// Where `doc` lacks `path` ("a/b/c"): each `a/b` node without a `c`
/// child node or property, at that node; or, when there is no `a/b` at
/// all, one finding at the start of the file.
fn missing_path(doc: &kdl::KdlDocument, path: &str) -> Vec<(Span, String)> {
    let segments: Vec<&str> = path.split('/').collect();
    let Some((last, prefix)) = segments.split_last() else {
        return Vec::new();
    };
    if prefix.is_empty() {
        return if doc.nodes().iter().any(|n| n.name().value() == *last) {
            Vec::new()
        } else {
            vec![(Span::default(), format!("has no `{path}`"))]
        };
    }
    let parents = nodes_at(doc, prefix);
    if parents.is_empty() {
        return vec![(
            Span::default(),
            format!("has no `{}` to hold `{last}`", prefix.join("/")),
        )];
    }
    parents
        .into_iter()
        .filter(|n| {
            let child = n
                .children()
                .is_some_and(|c| c.nodes().iter().any(|c| c.name().value() == *last));
            let property = n
                .entries()
                .iter()
                .any(|e| e.name().is_some_and(|k| k.value() == *last));
            !child && !property
        })
        .map(|n| {
            let name = n.name().value();
            let what = match n.entries().first().filter(|e| e.name().is_none()) {
                Some(id) => match id.value().as_string() {
                    Some(id) => format!("{name} \"{id}\" has no `{last}`"),
                    None => format!("{name} {} has no `{last}`", id.value()),
                },
                None => format!("`{}` has no `{last}`", prefix.join("/")),
            };
            (n.span().into(), what)
        })
        .collect()
}

/// The nodes at `path` from the top of `doc` (every match at each level).
fn nodes_at<'d>(doc: &'d kdl::KdlDocument, path: &[&str]) -> Vec<&'d kdl::KdlNode> {
    let mut level: Vec<&kdl::KdlNode> = doc.nodes().iter().collect();
    let mut matched = Vec::new();
    for (i, segment) in path.iter().enumerate() {
        matched = level
            .into_iter()
            .filter(|n| n.name().value() == *segment)
            .collect();
        if i + 1 == path.len() {
            break;
        }
        level = matched
            .iter()
            .flat_map(|n| n.children().into_iter().flat_map(|c| c.nodes().iter()))
            .collect();
    }
    matched
}

/// The findings on one proxy's parsed config; `$k` names its config crate.
macro_rules! findings_in {
    ($k:ident, $rule:expr, $config:expr, $text:expr) => {{
    let (rule, config, text) = ($rule, $config, $text);
    let mut out = Vec::new();
    match rule {
        "listener-tls" => {
            for l in &config.listeners {
                if l.tls.is_none() && !is_loopback(&l.address) {
                    out.push((
                        declaration(text, "listener", &l.id),
                        format!("listener `{}` on {} does not use TLS", l.id, l.address),
                        "add a `tls { cert-file ...; key-file ...; }` block, or bind it to 127.0.0.1",
                    ));
                }
            }
        }
        "route-timeout" => {
            for r in &config.routes {
                if r.upstream.is_none() {
                    continue;
                }
                let has_timeout = r.filters.iter().any(|f| {
                    config
                        .filters
                        .get(f)
                        .is_some_and(|fc| matches!(fc.filter, $k::Filter::Timeout(_)))
                });
                if !has_timeout {
                    out.push((
                        declaration(text, "route", &r.id),
                        format!("route `{}` has no timeout", r.id),
                        "reference a filter of `type \"timeout\"` in the route's `filters`",
                    ));
                }
            }
        }
        "health-route" => {
            let has = config
                .routes
                .iter()
                .any(|r| matches!(r.builtin_handler, Some($k::BuiltinHandler::Health)));
            if !has {
                out.push((
                    Span::default(),
                    "config has no health route".to_owned(),
                    "add a route with `builtin-handler \"health\"` so agents can check the proxy",
                ));
            }
        }
        _ => {}
    }
    out
    }};
}

fn findings(rule: &str, config: &ProxyConfig, text: &str) -> Vec<(Span, String, &'static str)> {
    crate::with_config!(config, |config, k| findings_in!(k, rule, config, text))
}

fn is_loopback(address: &str) -> bool {
    let host = address.rsplit_once(':').map_or(address, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Where `keyword "id"` is written, e.g. `route "api"`; else the first `"id"`.
fn declaration(text: &str, keyword: &str, id: &str) -> Span {
    let needle = format!("{keyword} \"{id}\"");
    text.find(&needle)
        .map(|i| Span::new(i, i + needle.len()))
        .or_else(|| find_quoted(text, id))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rule_switched_on_twice_is_reported_and_runs_once() {
        let text = "version 1\nname \"f\"\nlint \"route-timeout\" severity=\"error\"\nlint \"route-timeout\" severity=\"warning\"\nlint \"health-route\" severity=\"info\"\n";
        let fleet = gitfleet_schemas::FleetFile::decode(text)
            .value
            .expect("fleet.kdl decodes");
        let mut files = RepoFiles::new();
        files.insert(FLEET_FILE, text);
        let mut d = Diagnostics::new(&files);
        let kept: Vec<(&str, String)> = first_of_each_name(&fleet.lints, &mut d)
            .iter()
            .map(|r| (r.name.value.as_str(), r.severity.value.to_string()))
            .collect();
        assert_eq!(
            kept,
            [
                ("route-timeout", "error".to_owned()),
                ("health-route", "info".to_owned())
            ]
        );
        let found = d.finish();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].code, "duplicate-lint");
        assert_eq!((found[0].line, found[0].column), (4, 6));
        assert_eq!(
            found[0].help.as_deref(),
            Some("first switched on at fleet.kdl:3; keep one `lint` node per rule, with all its environments and configs")
        );
    }

    /// A rule of the fleet's own at error severity keeps a config whose
    /// files match its forbidden pattern out of the environments it names,
    /// and only those.
    #[test]
    fn a_fleets_own_rule_blocks_a_forbidden_pattern_where_it_applies() {
        let fleet = "version 1\nname \"f\"\nlint \"no-debug\" severity=\"error\" {\n forbid \"level \\\"debug\\\"\" message=\"debug logs leak bodies\"\n require \"listeners\"\n environments \"prod\"\n}\n";
        let rules = gitfleet_schemas::FleetFile::decode(fleet)
            .value
            .expect("fleet.kdl decodes")
            .lints;
        let dir = |text: &str| ConfigDir {
            name: "web".into(),
            files: [("sentinel.kdl".to_owned(), text.as_bytes().to_vec())].into(),
            variants: [(
                gitfleet_schemas::Proxy::legacy(),
                crate::model::Variant {
                    file: "sentinel.kdl",
                    config: None,
                },
            )]
            .into(),
        };
        let bad = dir("listeners {}\nlogging { level \"debug\"; }\n");
        assert_eq!(
            blocking(&rules, "prod", &bad),
            ["lint `no-debug`: debug logs leak bodies"]
        );
        assert!(blocking(&rules, "dev", &bad).is_empty());
        let good = dir("listeners {}\nlogging { level \"info\"; }\n");
        assert!(blocking(&rules, "prod", &good).is_empty());
        let bare = dir("logging { level \"info\"; }\n");
        assert_eq!(
            blocking(&rules, "prod", &bare),
            ["lint `no-debug`: has no match of the required pattern `listeners`"]
        );
        let found = custom_findings(&rules[0], &bad);
        assert_eq!(found.len(), 1);
        assert_eq!(
            &"listeners {}\nlogging { level \"debug\"; }\n"[found[0].span.start..found[0].span.end],
            "level \"debug\""
        );
    }

    #[test]
    fn a_required_path_is_checked_on_every_node_it_reaches() {
        let text = "system { worker-threads 2; }\nlisteners {\n    listener \"a\" { tls { cert-file \"x\"; }; }\n    listener \"b\" address=\"127.0.0.1:1\"\n}\n";
        let doc = kdl::KdlDocument::parse(text).unwrap();
        let found = missing_path(&doc, "listeners/listener/tls");
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].1, "listener \"b\" has no `tls`");
        assert!(text[found[0].0.start..found[0].0.end].starts_with("listener \"b\""));
        // A property counts as well as a child node.
        assert!(missing_path(&doc, "listeners/listener/address").len() == 1);
        assert!(missing_path(&doc, "system/worker-threads").is_empty());
        assert_eq!(
            missing_path(&doc, "upstreams/upstream/target")[0].1,
            "has no `upstreams/upstream` to hold `target`"
        );
        assert!(missing_path(&doc, "system").is_empty());
        assert_eq!(missing_path(&doc, "routes")[0].1, "has no `routes`");
    }

    #[test]
    fn loopback_listeners_need_no_tls() {
        assert!(is_loopback("127.0.0.1:9090"));
        assert!(is_loopback("[::1]:9090"));
        assert!(is_loopback("localhost:80"));
        assert!(!is_loopback("0.0.0.0:443"));
        assert!(!is_loopback("10.0.0.10:8080"));
    }
}
