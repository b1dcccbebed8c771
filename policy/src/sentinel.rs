//! Validating Sentinel proxy configs with the proxy's own configuration crate.
//!
//! `sentinel-config` is the code the proxy itself runs at start-up and on
//! reload, so a config it rejects here would be rejected on the node too.
//! Two of its checks look at the local filesystem (static-file roots and the
//! directories of agents' unix sockets). Those describe the node, not the
//! reconciler's host, so they are neutralised here to keep the result the same
//! on every machine; the agent runs them when it stages a bundle.

use std::path::PathBuf;

use gitfleet_schemas::Span;
use sentinel_config::Config;

/// The version of the validator, recorded in every bundle manifest.
pub const VALIDATOR: &str = "sentinel-config 0.4.14";

/// One reason `sentinel-config` rejects a config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub span: Span,
    pub code: &'static str,
    pub message: String,
    pub help: Option<String>,
}

/// Parse and validate one Sentinel config file.
pub fn validate(text: &str) -> Result<Config, Vec<Problem>> {
    // The crate parses the text once; only when it refuses do we parse again
    // ourselves, to point at each syntax error and at an `include`. Parsing
    // is most of the cost of `check` on a large fleet.
    let config = Config::from_kdl(text).map_err(|e| rejected(text, &format!("{e:#}")))?;
    let mut probe = config.clone();
    neutralise_host_paths(&mut probe);
    match probe.validate() {
        Ok(()) => Ok(config),
        Err(e) => Err(split_issues(&e.to_string())
            .into_iter()
            .map(|m| problem(text, &m))
            .collect()),
    }
}

/// The problems of a config `Config::from_kdl` refused with `message`.
fn rejected(text: &str, message: &str) -> Vec<Problem> {
    let doc = match kdl::KdlDocument::parse(text) {
        Ok(doc) => doc,
        Err(e) => {
            return e
                .diagnostics
                .iter()
                .map(|d| Problem {
                    span: d.span.into(),
                    code: "sentinel-syntax",
                    message: lowercase_first(
                        d.message
                            .as_deref()
                            .or(d.label.as_deref())
                            .unwrap_or("invalid KDL")
                            .trim_end_matches('.'),
                    ),
                    help: d.help.clone(),
                })
                .collect();
        }
    };
    if let Some(include) = doc.nodes().iter().find(|n| n.name().value() == "include") {
        return vec![Problem {
            span: include.span().into(),
            code: "sentinel-include",
            message: format!("includes are not supported by {VALIDATOR}"),
            help: Some(
                "keep the proxy config in one `sentinel.kdl`; other files in the config directory are bundled as they are"
                    .to_owned(),
            ),
        }];
    }
    vec![problem(text, message)]
}

/// Point node-local paths at `/`, which exists and is a directory everywhere,
/// so that `validate()` does not depend on the host it runs on.
fn neutralise_host_paths(config: &mut Config) {
    for route in &mut config.routes {
        if let Some(files) = route.static_files.as_mut() {
            files.root = PathBuf::from("/");
        }
    }
    for agent in &mut config.agents {
        if let sentinel_config::AgentTransport::UnixSocket { path } = &mut agent.transport {
            *path = PathBuf::from("/");
        }
    }
}

/// `validate()` folds many issues into one message:
/// `... failed: __all__: Configuration has N issues:\n\n1. first\n\n2. second`.
fn split_issues(message: &str) -> Vec<String> {
    let body = message
        .split_once("__all__: ")
        .map_or(message, |(_, rest)| rest);
    let Some((_, list)) = body.split_once("issues:\n\n") else {
        return vec![strip_prefixes(body).to_owned()];
    };
    list.split("\n\n")
        .filter(|s| !s.trim().is_empty())
        .map(|item| {
            let item = item.trim();
            match item.split_once(". ") {
                Some((n, rest)) if n.chars().all(|c| c.is_ascii_digit()) => rest.to_owned(),
                _ => item.to_owned(),
            }
        })
        .collect()
}

fn strip_prefixes(s: &str) -> &str {
    let s = s.trim();
    let s = s.strip_prefix("Configuration error: ").unwrap_or(s);
    s.strip_prefix("Configuration validation failed: ")
        .unwrap_or(s)
}

/// Turn one message of the crate into a problem. The crate gives no
/// positions for semantic errors, but names objects in quotes
/// (`Route 'api' references upstream 'backend' which doesn't exist`). The
/// last name is usually the bad reference, whose only occurrence is where it
/// is made; earlier names are the objects that make it. Point at the first
/// place the last name that occurs in the text is written.
fn problem(text: &str, raw: &str) -> Problem {
    let raw = strip_prefixes(raw);
    let mut lines = raw.lines().map(|l| sort_available(l.trim()));
    let first = lines.next().unwrap_or_else(|| "invalid config".to_owned());
    let rest: Vec<String> = lines.filter(|l| !l.is_empty()).collect();
    let span = quoted_names(&first)
        .iter()
        .rev()
        .find_map(|name| find_quoted(text, name))
        .unwrap_or_default();
    Problem {
        span,
        code: "sentinel-config",
        message: lowercase_first(first.trim_end_matches('.')),
        help: (!rest.is_empty()).then(|| join_lines(&rest)),
    }
}

/// The crate's extra lines as one help text: `; ` between sentences, a space
/// after a line that introduces what follows (`Each route must either:`) or
/// opens a block of an example, which so stays valid KDL
/// (`listeners { listener "http" { address "0.0.0.0:8080"; }; }`).
fn join_lines(lines: &[String]) -> String {
    let mut out = String::new();
    for line in lines {
        if !out.is_empty() {
            out.push_str(if out.ends_with([':', '{']) { " " } else { "; " });
        }
        out.push_str(line);
    }
    out
}

/// The crate lists the objects it knows from a hash set, in an order that
/// changes from run to run: `Available routes: 'b', 'a'`. Sort the list.
fn sort_available(line: &str) -> String {
    let Some(at) = line.find("Available") else {
        return line.to_owned();
    };
    let Some(colon) = line[at..].find(": ") else {
        return line.to_owned();
    };
    let (head, list) = line.split_at(at + colon + 2);
    // `Available: {"a", "b"}` (a set's debug form) or `Available routes: 'a', 'b'`.
    let (open, inner, close) = match (list.chars().next(), list.chars().last()) {
        (Some(o @ ('{' | '[')), Some(c @ ('}' | ']'))) if list.len() >= 2 => {
            (o.to_string(), &list[1..list.len() - 1], c.to_string())
        }
        _ => (String::new(), list, String::new()),
    };
    let (inner, end) = match inner.strip_suffix('.') {
        Some(i) if open.is_empty() => (i, "."),
        _ => (inner, ""),
    };
    let mut items: Vec<&str> = inner.split(", ").collect();
    items.sort_unstable();
    format!("{head}{open}{}{close}{end}", items.join(", "))
}

fn quoted_names(message: &str) -> Vec<&str> {
    message
        .split('\'')
        .skip(1)
        .step_by(2)
        .filter(|s| !s.is_empty())
        .collect()
}

/// Span of the first `"name"` (as a KDL string) in the text.
pub(crate) fn find_quoted(text: &str, name: &str) -> Option<Span> {
    let needle = format!("\"{name}\"");
    text.find(&needle).map(|i| Span::new(i, i + needle.len()))
}

fn lowercase_first(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_lowercase().chain(c).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
system { worker-threads 1; }
listeners {
    listener "http" { address "127.0.0.1:8080"; protocol "http"; }
}
"#;

    #[test]
    fn minimal_config_is_accepted() {
        let config = validate(MINIMAL).unwrap();
        assert_eq!(config.listeners.len(), 1);
    }

    #[test]
    fn kdl_syntax_error_has_a_span() {
        let errs = validate("system {\n  worker-threads 1\n").unwrap_err();
        assert!(errs.iter().all(|e| e.code == "sentinel-syntax"));
        assert!(errs.iter().any(|e| e.span.start > 0));
    }

    #[test]
    fn missing_listeners_is_rejected() {
        let errs = validate("system { worker-threads 1; }\n").unwrap_err();
        assert_eq!(errs.len(), 1);
        assert!(errs[0].message.contains("listeners"), "{errs:?}");
    }

    #[test]
    fn unknown_upstream_points_at_the_reference() {
        let text = format!(
            "{MINIMAL}routes {{\n    route \"api\" {{\n        matches {{ path-prefix \"/\"; }}\n        upstream \"nowhere\"\n    }}\n}}\n"
        );
        let errs = validate(&text).unwrap_err();
        assert!(errs[0].message.contains("nowhere"), "{errs:?}");
        assert_eq!(&text[errs[0].span.start..errs[0].span.end], "\"nowhere\"");
        assert_eq!(
            errs[0].help.as_deref(),
            Some("Available upstreams: (none defined); Hint: Add an upstream block or fix the reference.")
        );
    }

    #[test]
    fn a_reference_missing_from_the_text_falls_back_to_the_referrer() {
        let text = "route \"app\" {}\n";
        let p = problem(
            text,
            "Route 'app' references upstream 'gone' which doesn't exist.",
        );
        assert_eq!(&text[p.span.start..p.span.end], "\"app\"");
    }

    #[test]
    fn extra_lines_become_one_help() {
        let p = problem(
            "",
            "Route 'a' has no upstream.\nEach route must either:\n1. Reference an upstream\n2. Serve static files",
        );
        assert_eq!(p.message, "route 'a' has no upstream");
        assert_eq!(
            p.help.as_deref(),
            Some("Each route must either: 1. Reference an upstream; 2. Serve static files")
        );
        let p = problem(
            "",
            "Missing required 'listeners' configuration block\nExample:\nlisteners {\nlistener \"http\" {\naddress \"0.0.0.0:8080\"\nprotocol \"http\"\n}\n}",
        );
        let help = p.help.unwrap_or_default();
        assert_eq!(
            help,
            "Example: listeners { listener \"http\" { address \"0.0.0.0:8080\"; protocol \"http\"; }; }"
        );
        let example = help.trim_start_matches("Example: ");
        assert!(kdl::KdlDocument::parse(example).is_ok(), "{example}");
    }

    #[test]
    fn available_lists_are_sorted() {
        assert_eq!(
            sort_available("Available routes: 'health', 'app', 'api'"),
            "Available routes: 'api', 'app', 'health'"
        );
        assert_eq!(
            sort_available("unknown agent 'x'. Available: {\"waf\", \"auth\"}"),
            "unknown agent 'x'. Available: {\"auth\", \"waf\"}"
        );
        assert_eq!(
            sort_available("Available filters: (none defined)"),
            "Available filters: (none defined)"
        );
        assert_eq!(sort_available("no list here"), "no list here");
    }

    #[test]
    fn syntax_messages_keep_their_case_after_the_first_letter() {
        let errs = validate("system {\n  worker-threads 1\n").unwrap_err();
        for e in &errs {
            assert!(!e.message.starts_with(char::is_uppercase), "{e:?}");
        }
        assert_eq!(
            lowercase_first("No closing '}' for KDL"),
            "no closing '}' for KDL"
        );
    }

    #[test]
    fn static_root_is_not_checked_on_this_host() {
        let text = format!(
            "{MINIMAL}routes {{\n    route \"files\" {{\n        matches {{ path-prefix \"/\"; }}\n        static-files {{ root \"/definitely/not/here\"; }}\n    }}\n}}\n"
        );
        let config = validate(&text).unwrap();
        // The model keeps the path the operator wrote.
        let root = &config.routes[0].static_files.as_ref().unwrap().root;
        assert_eq!(root, &PathBuf::from("/definitely/not/here"));
    }

    #[test]
    fn include_is_reported_as_unsupported() {
        let errs = validate(&format!("include \"routes.kdl\"\n{MINIMAL}")).unwrap_err();
        assert_eq!(errs[0].code, "sentinel-include");
    }

    #[test]
    fn many_issues_are_split() {
        let m = "Configuration error: Configuration validation failed: __all__: Configuration has 2 issues:\n\n1. Route 'a' has no match conditions.\nAdd one.\n\n2. Route 'b' has no match conditions.";
        assert_eq!(split_issues(m).len(), 2);
    }
}
