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
    // Syntax first, with our own KDL parse: it gives a span for every error,
    // where the crate folds them into one string.
    if let Err(e) = kdl::KdlDocument::parse(text) {
        return Err(e
            .diagnostics
            .iter()
            .map(|d| Problem {
                span: d.span.into(),
                code: "sentinel-syntax",
                message: d
                    .message
                    .clone()
                    .or(d.label.clone())
                    .unwrap_or_else(|| "invalid KDL".to_owned())
                    .trim_end_matches('.')
                    .to_lowercase(),
                help: d.help.clone(),
            })
            .collect());
    }
    if let Some(span) = include_span(text) {
        return Err(vec![Problem {
            span,
            code: "sentinel-include",
            message: format!("includes are not supported by {VALIDATOR}"),
            help: Some(
                "keep the proxy config in one `sentinel.kdl`; other files in the config directory are bundled as they are"
                    .to_owned(),
            ),
        }]);
    }
    let config = Config::from_kdl(text).map_err(|e| vec![problem(text, &format!("{e:#}"))])?;
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
/// positions for semantic errors, but names the object in quotes
/// (`Route 'api' references ...`): point at the first place that object is
/// declared.
fn problem(text: &str, raw: &str) -> Problem {
    let raw = strip_prefixes(raw);
    let mut lines = raw.lines();
    let first = lines.next().unwrap_or("invalid config").trim();
    let rest: Vec<&str> = lines.map(str::trim).filter(|l| !l.is_empty()).collect();
    let span = quoted_names(first)
        .iter()
        .find_map(|name| find_quoted(text, name))
        .unwrap_or_default();
    Problem {
        span,
        code: "sentinel-config",
        message: lowercase_first(first.trim_end_matches('.')),
        help: (!rest.is_empty()).then(|| rest.join(" ")),
    }
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

/// The span of a top-level `include` node, which the crate cannot follow.
fn include_span(text: &str) -> Option<Span> {
    let doc = kdl::KdlDocument::parse(text).ok()?;
    doc.nodes()
        .iter()
        .find(|n| n.name().value() == "include")
        .map(|n| n.span().into())
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
    fn unknown_upstream_points_at_the_route() {
        let text = format!(
            "{MINIMAL}routes {{\n    route \"api\" {{\n        matches {{ path-prefix \"/\"; }}\n        upstream \"nowhere\"\n    }}\n}}\n"
        );
        let errs = validate(&text).unwrap_err();
        assert!(errs[0].message.contains("nowhere"), "{errs:?}");
        assert_eq!(&text[errs[0].span.start..errs[0].span.end], "\"api\"");
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
