//! Validating proxy configs with each proxy's own configuration crate, and
//! which proxy each node runs.
//!
//! `sentinel-config` 0.4.14 and `zentinel-config` 0.6.45 are the code the
//! proxies themselves run at start-up and on reload, so a config one
//! rejects here would be rejected on a node running that proxy too. Their
//! data models are the same shape (Zentinel is Sentinel renamed), so the
//! code that reads a parsed config is written once, over [`with_config!`].
//! Two of their checks look at the local filesystem (static-file roots and
//! the directories of agents' unix sockets). Those describe the node, not
//! the reconciler's host, so they are neutralised here to keep the result
//! the same on every machine; the agent runs them when it stages a bundle.

use std::path::PathBuf;

use gitfleet_schemas::{NodeFile, Proxy, ProxyKind, ProxyRule, Span};

/// The two config crates, for code outside this crate that reads a parsed
/// config through [`with_config!`].
pub use {sentinel_config, zentinel_config};

/// The proxy versions gitfleet validates configs for: one config crate,
/// pinned exactly, per version.
pub fn supported() -> [Proxy; 2] {
    [Proxy::legacy(), Proxy::new(ProxyKind::Zentinel, "0.6.45")]
}

/// Whether gitfleet can validate configs for `proxy`.
pub fn is_supported(proxy: &Proxy) -> bool {
    supported().contains(proxy)
}

/// The supported version of a proxy, e.g. for a config file nothing
/// targets yet.
pub fn default_of(kind: ProxyKind) -> Proxy {
    supported()
        .into_iter()
        .find(|p| p.kind == kind)
        .unwrap_or_else(Proxy::legacy)
}

/// The proxy `node` runs: its own `proxy`, else the first of fleet.kdl's
/// rules whose selector picks it, else Sentinel 0.4.14.
pub fn of_node(rules: &[ProxyRule], node: &NodeFile) -> Proxy {
    if let Some(p) = &node.proxy {
        return p.value.clone();
    }
    rules
        .iter()
        .find(|r| r.selector.matches_labels(&node.labels))
        .map_or_else(Proxy::legacy, |r| r.proxy.value.clone())
}

/// A config parsed and validated by one proxy's crate.
#[derive(Clone, Debug)]
pub enum ProxyConfig {
    Sentinel(Box<sentinel_config::Config>),
    Zentinel(Box<zentinel_config::Config>),
}

/// Run `$body` on the parsed config of either proxy, with `$c` bound to it
/// and `$krate` naming its config crate: the two crates' models are the
/// same shape, so code that reads one reads the other.
#[macro_export]
macro_rules! with_config {
    ($config:expr, |$c:ident, $krate:ident| $body:expr) => {
        match $config {
            $crate::proxy::ProxyConfig::Sentinel($c) => {
                #[allow(unused_imports)]
                use $crate::proxy::sentinel_config as $krate;
                $body
            }
            $crate::proxy::ProxyConfig::Zentinel($c) => {
                #[allow(unused_imports)]
                use $crate::proxy::zentinel_config as $krate;
                $body
            }
        }
    };
}

/// What a plan preview compares between two versions of a config: its
/// listeners (id, whether TLS), upstream ids, and routes (id, filters).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outline {
    pub listeners: Vec<(String, bool)>,
    pub upstreams: Vec<String>,
    pub routes: Vec<(String, Vec<String>)>,
}

impl ProxyConfig {
    pub fn outline(&self) -> Outline {
        with_config!(self, |c, k| {
            let mut upstreams: Vec<String> = c.upstreams.keys().cloned().collect();
            upstreams.sort();
            Outline {
                listeners: c
                    .listeners
                    .iter()
                    .map(|l| (l.id.clone(), l.tls.is_some()))
                    .collect(),
                upstreams,
                routes: c
                    .routes
                    .iter()
                    .map(|r| (r.id.clone(), r.filters.clone()))
                    .collect(),
            }
        })
    }
}

/// One reason a proxy's config crate rejects a config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub span: Span,
    pub code: &'static str,
    pub message: String,
    pub help: Option<String>,
}

/// The diagnostic codes of one proxy: syntax, include, config.
fn codes(kind: ProxyKind) -> (&'static str, &'static str, &'static str) {
    match kind {
        ProxyKind::Sentinel => ("sentinel-syntax", "sentinel-include", "sentinel-config"),
        ProxyKind::Zentinel => ("zentinel-syntax", "zentinel-include", "zentinel-config"),
    }
}

/// Parse one config file for `kind` as its proxy would, without the
/// semantic checks: for the agent, which runs them on its own host.
pub fn parse(kind: ProxyKind, text: &str) -> Result<ProxyConfig, String> {
    match kind {
        ProxyKind::Sentinel => sentinel_config::Config::from_kdl(text)
            .map(|c| ProxyConfig::Sentinel(Box::new(c)))
            .map_err(|e| format!("{e:#}")),
        ProxyKind::Zentinel => zentinel_config::Config::from_kdl(text)
            .map(|c| ProxyConfig::Zentinel(Box::new(c)))
            .map_err(|e| format!("{e:#}")),
    }
}

/// Parse and validate one config file for `kind`, as its proxy would.
pub fn validate(kind: ProxyKind, text: &str) -> Result<ProxyConfig, Vec<Problem>> {
    /// The crate parses the text once; only when it refuses do we parse
    /// again ourselves, to point at each syntax error and at an `include`.
    /// Parsing is most of the cost of `check` on a large fleet.
    macro_rules! run {
        ($krate:ident, $variant:ident) => {{
            let mut config = $krate::Config::from_kdl(text)
                .map_err(|e| rejected(kind, text, &format!("{e:#}")))?;
            // Node-local paths point at `/`, which exists and is a
            // directory everywhere, while the crate checks; then back.
            let mut saved = Vec::new();
            for route in &mut config.routes {
                if let Some(files) = route.static_files.as_mut() {
                    saved.push(std::mem::replace(&mut files.root, PathBuf::from("/")));
                }
            }
            for agent in &mut config.agents {
                if let $krate::AgentTransport::UnixSocket { path } = &mut agent.transport {
                    saved.push(std::mem::replace(path, PathBuf::from("/")));
                }
            }
            let verdict = config.validate();
            let mut saved = saved.into_iter();
            for route in &mut config.routes {
                if let Some(files) = route.static_files.as_mut() {
                    files.root = saved.next().unwrap_or_default();
                }
            }
            for agent in &mut config.agents {
                if let $krate::AgentTransport::UnixSocket { path } = &mut agent.transport {
                    *path = saved.next().unwrap_or_default();
                }
            }
            match verdict {
                Ok(()) => Ok(ProxyConfig::$variant(Box::new(config))),
                Err(e) => Err(split_issues(&e.to_string())
                    .into_iter()
                    .map(|m| problem(kind, text, &m))
                    .collect()),
            }
        }};
    }
    match kind {
        ProxyKind::Sentinel => run!(sentinel_config, Sentinel),
        ProxyKind::Zentinel => run!(zentinel_config, Zentinel),
    }
}

/// The problems of a config `Config::from_kdl` refused with `message`.
fn rejected(kind: ProxyKind, text: &str, message: &str) -> Vec<Problem> {
    let (syntax, include_code, _) = codes(kind);
    let doc = match kdl::KdlDocument::parse(text) {
        Ok(doc) => doc,
        Err(e) => {
            return e
                .diagnostics
                .iter()
                .map(|d| Problem {
                    span: d.span.into(),
                    code: syntax,
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
            code: include_code,
            message: format!(
                "includes are not supported by {}",
                default_of(kind).validator()
            ),
            help: Some(format!(
                "keep the proxy config in one `{}`; other files in the config directory are bundled as they are",
                kind.entry()
            )),
        }];
    }
    vec![problem(kind, text, message)]
}

/// What `kind` still accepts in `text` but deprecates, or does in a way
/// the operator may not expect: warnings, with the place they are written.
/// Only called on a config the proxy accepted.
pub fn deprecated(kind: ProxyKind, text: &str) -> Vec<Problem> {
    // Parsing is most of what `check` costs: a Sentinel config, for which
    // only `server` is looked for, is parsed again only when a line could
    // open one.
    let may_have_server = || text.lines().any(|l| l.trim_start().starts_with("server"));
    if kind == ProxyKind::Sentinel && !may_have_server() {
        return Vec::new();
    }
    let Ok(doc) = kdl::KdlDocument::parse(text) else {
        return Vec::new();
    };
    let proxy = default_of(kind);
    let mut out = Vec::new();
    let warn = |node: &kdl::KdlNode, message: String, help: &str| Problem {
        span: node.span().into(),
        code: "deprecated",
        message,
        help: Some(help.to_owned()),
    };
    let top = |name: &'static str| doc.nodes().iter().filter(move |n| n.name().value() == name);
    for node in top("server") {
        out.push(warn(
            node,
            format!("{proxy} deprecates the `server` block"),
            "rename it `system` (same settings); `gitfleet migrate-config` does",
        ));
    }
    if kind == ProxyKind::Zentinel {
        let children = |n: &kdl::KdlNode| -> Vec<kdl::KdlNode> {
            n.children().map(|c| c.nodes().to_vec()).unwrap_or_default()
        };
        for agents in top("agents") {
            for agent in children(agents) {
                for c in children(&agent) {
                    if c.name().value() == "protocol-version" {
                        out.push(warn(
                            &c,
                            format!("{proxy} ignores `protocol-version`: every agent speaks protocol v2"),
                            "delete it; `gitfleet migrate-config` does",
                        ));
                    }
                }
            }
        }
        let metrics_set =
            top("observability").any(|o| children(o).iter().any(|c| c.name().value() == "metrics"));
        if !metrics_set {
            let at = doc
                .nodes()
                .first()
                .map_or(Span::default(), |n| n.span().into());
            out.push(Problem {
                span: Span::new(at.start, at.start),
                code: "zentinel-metrics-server",
                message: format!(
                    "{proxy} starts its own metrics server on 0.0.0.0:9090, reachable from every network the node is on"
                ),
                help: Some(
                    "add `observability { metrics { address \"127.0.0.1:9090\"; }; }`, or `enabled #false` when a `builtin-handler \"metrics\"` route serves them"
                        .to_owned(),
                ),
            });
        }
    }
    out
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
fn problem(kind: ProxyKind, text: &str, raw: &str) -> Problem {
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
        code: codes(kind).2,
        message: lowercase_first(first.trim_end_matches('.')),
        help: (!rest.is_empty()).then(|| join_lines(&rest)),
    }
}

/// The crate's extra lines as one help text: `; ` between lines, a space
/// after a line that ends a sentence, introduces what follows (`Each route
/// must either:`) or opens a block of an example, which so stays valid KDL
/// (`listeners { listener "http" { address "0.0.0.0:8080"; }; }`).
fn join_lines(lines: &[String]) -> String {
    let mut out = String::new();
    for line in lines {
        if !out.is_empty() {
            out.push_str(if out.ends_with([':', '{', '.']) {
                " "
            } else {
                "; "
            });
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

    fn sentinel(text: &str) -> Result<Box<sentinel_config::Config>, Vec<Problem>> {
        match validate(ProxyKind::Sentinel, text)? {
            ProxyConfig::Sentinel(c) => Ok(c),
            ProxyConfig::Zentinel(_) => panic!("validated by the wrong crate"),
        }
    }

    const MINIMAL: &str = r#"
system { worker-threads 1; }
listeners {
    listener "http" { address "127.0.0.1:8080"; protocol "http"; }
}
"#;

    #[test]
    fn minimal_config_is_accepted() {
        let config = sentinel(MINIMAL).unwrap();
        assert_eq!(config.listeners.len(), 1);
    }

    #[test]
    fn kdl_syntax_error_has_a_span() {
        let errs = sentinel("system {\n  worker-threads 1\n").unwrap_err();
        assert!(errs.iter().all(|e| e.code == "sentinel-syntax"));
        assert!(errs.iter().any(|e| e.span.start > 0));
    }

    #[test]
    fn missing_listeners_is_rejected() {
        let errs = sentinel("system { worker-threads 1; }\n").unwrap_err();
        assert_eq!(errs.len(), 1);
        assert!(errs[0].message.contains("listeners"), "{errs:?}");
    }

    #[test]
    fn unknown_upstream_points_at_the_reference() {
        let text = format!(
            "{MINIMAL}routes {{\n    route \"api\" {{\n        matches {{ path-prefix \"/\"; }}\n        upstream \"nowhere\"\n    }}\n}}\n"
        );
        let errs = sentinel(&text).unwrap_err();
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
            ProxyKind::Sentinel,
            text,
            "Route 'app' references upstream 'gone' which doesn't exist.",
        );
        assert_eq!(&text[p.span.start..p.span.end], "\"app\"");
    }

    #[test]
    fn extra_lines_become_one_help() {
        let p = problem(
            ProxyKind::Sentinel,
            "",
            "Route 'a' has no upstream.\nEach route must either:\n1. Reference an upstream\n2. Serve static files",
        );
        assert_eq!(p.message, "route 'a' has no upstream");
        assert_eq!(
            p.help.as_deref(),
            Some("Each route must either: 1. Reference an upstream; 2. Serve static files")
        );
        let p = problem(
            ProxyKind::Sentinel,
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
        let errs = sentinel("system {\n  worker-threads 1\n").unwrap_err();
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
        let config = sentinel(&text).unwrap();
        // The model keeps the path the operator wrote.
        let root = &config.routes[0].static_files.as_ref().unwrap().root;
        assert_eq!(root, &PathBuf::from("/definitely/not/here"));
    }

    #[test]
    fn node_paths_are_checked_as_slash_and_kept_as_written_by_both_crates() {
        let text = format!(
            r#"{MINIMAL}agents {{
    agent "auth" {{
        type "auth"
        unix-socket "/no/such/dir/auth.sock"
        events "request_headers"
    }}
}}
routes {{
    route "api" {{
        matches {{ path-prefix "/api"; }}
        upstream "app"
    }}
    route "files" {{
        matches {{ path-prefix "/"; }}
        static-files {{ root "/no/such/root"; }}
    }}
}}
upstreams {{
    upstream "app" {{ target "127.0.0.1:9000"; }}
}}
"#
        );
        for kind in ProxyKind::ALL {
            let config = validate(kind, &text).unwrap_or_else(|e| panic!("{kind:?}: {e:?}"));
            let (root, socket) = with_config!(&config, |c, k| {
                let root = c.routes[1].static_files.as_ref().map(|f| f.root.clone());
                let socket = match &c.agents[0].transport {
                    k::AgentTransport::UnixSocket { path } => Some(path.clone()),
                    _ => None,
                };
                (root, socket)
            });
            assert_eq!(root, Some(PathBuf::from("/no/such/root")), "{kind:?}");
            assert_eq!(
                socket,
                Some(PathBuf::from("/no/such/dir/auth.sock")),
                "{kind:?}"
            );
        }
    }

    #[test]
    fn include_is_reported_as_unsupported() {
        let errs = sentinel(&format!("include \"routes.kdl\"\n{MINIMAL}")).unwrap_err();
        assert_eq!(errs[0].code, "sentinel-include");
    }

    #[test]
    fn many_issues_are_split() {
        let m = "Configuration error: Configuration validation failed: __all__: Configuration has 2 issues:\n\n1. Route 'a' has no match conditions.\nAdd one.\n\n2. Route 'b' has no match conditions.";
        assert_eq!(split_issues(m).len(), 2);
    }
}
