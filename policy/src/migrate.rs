//! Rewriting a Sentinel 0.4 config into its Zentinel 0.6 form, where the
//! mapping is mechanical and keeps what the config did on Sentinel; what
//! needs a person is listed, never guessed.
//!
//! The rewrite edits the text in place (by the spans of the parsed
//! document), so comments and layout stay as the operator wrote them.
//! `gitfleet migrate-config` prints or writes the result and validates it
//! with `zentinel-config`.

use gitfleet_schemas::Span;
use kdl::{KdlDocument, KdlNode};

/// One thing the rewrite did, or left for a person, at a place in the
/// input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    pub span: Span,
    pub message: String,
}

/// The Zentinel form of a config and what went into it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Migrated {
    pub text: String,
    /// Rewrites made.
    pub done: Vec<Note>,
    /// Constructs that need a decision; the text keeps them as they were.
    pub left: Vec<Note>,
}

/// The top-level blocks Sentinel 0.4 read only the last of, when repeated,
/// and Zentinel 0.6 merges.
const LAST_WINS: &[&str] = &["listeners", "routes", "upstreams", "filters", "agents"];

/// A text edit: replace `range` of the input by `with`.
struct Edit {
    start: usize,
    end: usize,
    with: String,
}

/// The Zentinel 0.6 form of Sentinel 0.4 config `text`; `Err` with the
/// parser's message when it is not KDL v2.
pub fn to_zentinel(text: &str) -> Result<Migrated, String> {
    let doc = KdlDocument::parse(text).map_err(|e| {
        e.diagnostics
            .first()
            .and_then(|d| d.message.clone())
            .unwrap_or_else(|| "not valid KDL".to_owned())
    })?;
    let mut m = Rewrite {
        text,
        edits: Vec::new(),
        deleted: Vec::new(),
        done: Vec::new(),
        left: Vec::new(),
    };
    m.server_block(&doc);
    m.repeated_blocks(&doc);
    for node in doc.nodes() {
        match node.name().value() {
            "agents" => m.agents(node),
            "listeners" => m.listeners(node),
            _ => {}
        }
    }
    m.metrics_server(&doc);
    Ok(m.finish())
}

struct Rewrite<'t> {
    text: &'t str,
    edits: Vec<Edit>,
    /// Spans of the nodes deleted: notes inside them no longer apply.
    deleted: Vec<Span>,
    done: Vec<Note>,
    left: Vec<Note>,
}

fn span(node: &KdlNode) -> Span {
    node.span().into()
}

fn children(node: &KdlNode) -> &[KdlNode] {
    node.children().map_or(&[], KdlDocument::nodes)
}

fn first_string(node: &KdlNode) -> Option<&str> {
    node.entries()
        .iter()
        .find(|e| e.name().is_none())
        .and_then(|e| e.value().as_string())
}

impl Rewrite<'_> {
    fn done(&mut self, at: Span, message: impl Into<String>) {
        self.done.push(Note {
            span: at,
            message: message.into(),
        });
    }

    fn left(&mut self, at: Span, message: impl Into<String>) {
        self.left.push(Note {
            span: at,
            message: message.into(),
        });
    }

    /// Remove `node`: the whole lines it takes, or, sharing a line with
    /// others, the node and the `;` that ends it.
    fn delete(&mut self, node: &KdlNode) {
        let s = span(node);
        self.deleted.push(s);
        let line_start = self.text[..s.start].rfind('\n').map_or(0, |i| i + 1);
        let rest = &self.text[s.end..];
        let after = rest.len() - rest.trim_start_matches([' ', '\t']).len();
        let mut end = s.end + after;
        if self.text[end..].starts_with(';') {
            end += 1;
            let rest = &self.text[end..];
            end += rest.len() - rest.trim_start_matches([' ', '\t']).len();
        }
        let line_end = self.text[end..].starts_with('\n').then_some(end + 1);
        let (start, end) = match line_end {
            Some(e) if self.text[line_start..s.start].trim().is_empty() => (line_start, e),
            _ => (s.start, end),
        };
        self.edits.push(Edit {
            start,
            end,
            with: String::new(),
        });
    }

    /// `server { ... }` is deprecated for `system { ... }` (the same
    /// settings) in both proxies; Zentinel will drop it.
    fn server_block(&mut self, doc: &KdlDocument) {
        let has_system = doc.nodes().iter().any(|n| n.name().value() == "system");
        for node in doc.nodes().iter().filter(|n| n.name().value() == "server") {
            if has_system {
                self.left(
                    span(node),
                    "both `server` and `system`: each proxy keeps only the later one; merge them into one `system` block",
                );
                continue;
            }
            let name: Span = node.name().span().into();
            self.edits.push(Edit {
                start: name.start,
                end: name.end,
                with: "system".to_owned(),
            });
            self.done(
                span(node),
                "renamed the deprecated `server` block to `system`",
            );
        }
    }

    /// Sentinel 0.4 read only the last of repeated top-level blocks;
    /// Zentinel 0.6 merges them, so the earlier ones would come alive.
    fn repeated_blocks(&mut self, doc: &KdlDocument) {
        for name in LAST_WINS {
            let blocks: Vec<&KdlNode> = doc
                .nodes()
                .iter()
                .filter(|n| n.name().value() == *name)
                .collect();
            if let Some((_, earlier)) = blocks.split_last() {
                for node in earlier {
                    self.delete(node);
                    self.done(
                        span(node),
                        format!(
                            "deleted an earlier `{name}` block: Sentinel 0.4 read only the last one, Zentinel 0.6 would merge them"
                        ),
                    );
                }
            }
        }
    }

    /// Agents' `protocol-version` is deprecated and ignored by Zentinel.
    fn agents(&mut self, agents: &KdlNode) {
        for agent in children(agents) {
            for c in children(agent) {
                if c.name().value() != "protocol-version" {
                    continue;
                }
                self.delete(c);
                self.done(
                    span(c),
                    "deleted `protocol-version`: Zentinel ignores it, every agent speaks protocol v2",
                );
                if matches!(first_string(c), Some("v1" | "1")) {
                    self.left(
                        span(c),
                        format!(
                            "agent `{}` spoke protocol v1: Zentinel talks to agents in v2 only, so the agent itself must be upgraded",
                            first_string(agent).unwrap_or("?")
                        ),
                    );
                }
            }
        }
    }

    fn listeners(&mut self, listeners: &KdlNode) {
        for listener in children(listeners) {
            let id = first_string(listener).unwrap_or("?").to_owned();
            for c in children(listener) {
                match c.name().value() {
                    "protocol" if first_string(c) == Some("h3") => self.left(
                        span(c),
                        format!("listener `{id}` is HTTP/3, which Zentinel 0.6 refuses (Sentinel 0.4 bound nothing for it): delete the listener or make it \"https\""),
                    ),
                    "tls" => self.tls(&id, c),
                    _ => {}
                }
            }
        }
    }

    fn tls(&mut self, listener: &str, tls: &KdlNode) {
        let has = |name: &str| children(tls).iter().any(|c| c.name().value() == name);
        for c in children(tls) {
            match c.name().value() {
                "cipher-suites" => {
                    let suites: Vec<String> = c
                        .entries()
                        .iter()
                        .filter(|e| e.name().is_none())
                        .filter_map(|e| e.value().as_string())
                        .map(|s| format!("cipher-suite {}", kdl_string(s)))
                        .collect();
                    let s = span(c);
                    // One per line at the node's indent, or `; ` between
                    // them on a line shared with others.
                    let line_start = self.text[..s.start].rfind('\n').map_or(0, |i| i + 1);
                    let sep = if self.text[line_start..s.start].trim().is_empty() {
                        format!("\n{}", &self.text[line_start..s.start])
                    } else {
                        "; ".to_owned()
                    };
                    self.edits.push(Edit {
                        start: s.start,
                        end: s.end,
                        with: suites.join(&sep),
                    });
                    self.done(
                        s,
                        "wrote `cipher-suites` as one `cipher-suite` per suite, the form Zentinel reads (Sentinel 0.4 ignored it; Zentinel 0.6 uses rustls' defaults either way)",
                    );
                }
                "additional-certs" => self.left(
                    span(c),
                    format!("listener `{listener}`: Sentinel 0.4 never loaded `additional-certs`, and Zentinel refuses it; write one `sni {{ hostnames ...; cert-file ...; key-file ... }}` per certificate that should be served, or delete the block"),
                ),
                "client-auth" if !has("ca-file") => self.left(
                    span(c),
                    format!("listener `{listener}`: `client-auth` without `ca-file` did nothing on Sentinel and is refused by Zentinel; add the CA that signs client certificates, or delete it"),
                ),
                "acme" if !children(c).iter().any(|a| a.name().value() == "storage") => self.left(
                    span(c),
                    "`acme` without `storage`: Zentinel keeps accounts in /var/lib/zentinel/acme, Sentinel in /var/lib/sentinel/acme; add `storage \"/var/lib/sentinel/acme\"` to keep the existing account and certificates",
                ),
                _ => {}
            }
        }
    }

    /// Zentinel 0.6 starts its own metrics server on 0.0.0.0:9090 unless
    /// told not to; Sentinel 0.4 had none.
    fn metrics_server(&mut self, doc: &KdlDocument) {
        match doc
            .nodes()
            .iter()
            .find(|n| n.name().value() == "observability")
        {
            None => {
                let end = self.text.len();
                let sep = if self.text.ends_with('\n') { "" } else { "\n" };
                self.edits.push(Edit {
                    start: end,
                    end,
                    with: format!(
                        "{sep}\n// Sentinel 0.4 had no metrics server of its own; Zentinel 0.6 would\n// start one on 0.0.0.0:9090.\nobservability {{\n    metrics {{\n        enabled #false\n    }}\n}}\n"
                    ),
                });
                self.done(
                    Span::new(end, end),
                    "switched off Zentinel's own metrics server (on 0.0.0.0:9090 by default), which Sentinel 0.4 did not have; metrics routes (`builtin-handler \"metrics\"`) serve as before",
                );
            }
            Some(o) if !children(o).iter().any(|c| c.name().value() == "metrics") => self.left(
                span(o),
                "Zentinel 0.6 starts a metrics server on 0.0.0.0:9090 unless `observability` says otherwise: add `metrics { address \"127.0.0.1:PORT\" }` or `metrics { enabled #false }`",
            ),
            Some(_) => {}
        }
    }

    fn finish(mut self) -> Migrated {
        self.edits.sort_by_key(|e| (e.start, e.end));
        let mut out = String::with_capacity(self.text.len() + 128);
        let mut at = 0;
        for e in &self.edits {
            if e.start < at {
                continue; // inside a block already deleted
            }
            out.push_str(&self.text[at..e.start]);
            out.push_str(&e.with);
            at = e.end;
        }
        out.push_str(&self.text[at..]);
        // What was found inside a deleted block went with it.
        let gone = |n: &Note| {
            self.deleted
                .iter()
                .any(|d| *d != n.span && d.start <= n.span.start && n.span.end <= d.end)
        };
        self.done.retain(|n| !gone(n));
        self.left.retain(|n| !gone(n));
        self.done.sort_by_key(|n| n.span.start);
        self.left.sort_by_key(|n| n.span.start);
        Migrated {
            text: out,
            done: self.done,
            left: self.left,
        }
    }
}

/// `s` as a quoted KDL string.
fn kdl_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::validate;
    use gitfleet_schemas::ProxyKind;

    const SENTINEL: &str = r#"// the edge
server {
    worker-threads 1
}
listeners {
    listener "old" {
        address "127.0.0.1:8081"
        protocol "http"
    }
}
listeners {
    listener "http" {
        address "127.0.0.1:8080"
        protocol "http"
    }
}
agents {
    agent "auth" {
        type "auth"
        unix-socket "/run/auth.sock"
        protocol-version "v2"
        events "request_headers"
    }
}
routes {
    route "app" {
        matches {
            path-prefix "/"
        }
        upstream "app"
    }
}
upstreams {
    upstream "app" {
        target "127.0.0.1:9000"
    }
}
"#;

    #[test]
    fn mechanical_rewrites_keep_comments_and_make_a_config_zentinel_accepts() {
        let m = to_zentinel(SENTINEL).unwrap();
        assert!(m.text.starts_with("// the edge\nsystem {"), "{}", m.text);
        assert!(!m.text.contains("protocol-version"), "{}", m.text);
        assert!(!m.text.contains("\"old\""), "{}", m.text);
        assert!(m.text.contains("enabled #false"), "{}", m.text);
        assert_eq!(m.done.len(), 4, "{:?}", m.done);
        assert!(m.left.is_empty(), "{:?}", m.left);
        // Sentinel accepts the original; Zentinel the rewrite.
        assert!(validate(ProxyKind::Sentinel, SENTINEL).is_ok());
        if let Err(p) = validate(ProxyKind::Zentinel, &m.text) {
            panic!("{p:?}\n{}", m.text);
        }
    }

    #[test]
    fn what_needs_a_person_is_listed_and_left_as_it_was() {
        let text = r#"system { worker-threads 1; }
listeners {
    listener "h3" {
        address "0.0.0.0:443"
        protocol "h3"
        tls {
            cert-file "/c.crt"
            key-file "/c.key"
            client-auth #true
            cipher-suites "TLS_AES_128_GCM_SHA256" "TLS_AES_256_GCM_SHA384"
            additional-certs {
                cert "b" {
                    cert-file "/b.crt"
                }
            }
        }
    }
}
observability {
    tracing {
        backend "otlp"
    }
}
"#;
        let m = to_zentinel(text).unwrap();
        let left: Vec<&str> = m
            .left
            .iter()
            .map(|n| &text[n.span.start..n.span.end])
            .collect();
        assert_eq!(left.len(), 4, "{:?}", m.left);
        assert!(left[0].starts_with("protocol \"h3\""), "{left:?}");
        assert!(left[1].starts_with("client-auth"), "{left:?}");
        assert!(left[2].starts_with("additional-certs"), "{left:?}");
        assert!(left[3].starts_with("observability"), "{left:?}");
        assert!(
            m.text.contains(
                "cipher-suite \"TLS_AES_128_GCM_SHA256\"\n            cipher-suite \"TLS_AES_256_GCM_SHA384\""
            ),
            "{}",
            m.text
        );
        assert!(m.text.contains("additional-certs"), "{}", m.text);
    }

    #[test]
    fn a_node_deleted_from_a_shared_line_takes_its_semicolon() {
        let text = "system { worker-threads 1; }\nlisteners { listener \"http\" { address \"127.0.0.1:8080\"; protocol \"http\"; }; }\nagents { agent \"auth\" { type \"auth\"; unix-socket \"/run/a.sock\"; protocol-version \"v2\"; events \"request_headers\"; }; }\n";
        let m = to_zentinel(text).unwrap();
        assert!(
            m.text
                .contains("unix-socket \"/run/a.sock\"; events \"request_headers\"; }"),
            "{}",
            m.text
        );
        assert!(KdlDocument::parse(&m.text).is_ok(), "{}", m.text);
    }

    #[test]
    fn notes_inside_a_deleted_block_are_dropped_with_it() {
        let text = "listeners {\n    listener \"old\" {\n        address \"0.0.0.0:443\"\n        protocol \"h3\"\n    }\n}\nlisteners {\n    listener \"http\" {\n        address \"127.0.0.1:8080\"\n        protocol \"http\"\n    }\n}\n";
        let m = to_zentinel(text).unwrap();
        assert!(m.left.is_empty(), "{:?}", m.left);
        assert!(!m.text.contains("h3"), "{}", m.text);
        assert!(m
            .done
            .iter()
            .any(|n| n.message.contains("earlier `listeners`")));
    }

    #[test]
    fn cipher_suites_on_a_shared_line_stay_on_it() {
        let text = "listeners { listener \"s\" { address \"0.0.0.0:443\"; protocol \"https\"; tls { cert-file \"/c\"; key-file \"/k\"; cipher-suites \"A\" \"B\"; }; }; }\n";
        let m = to_zentinel(text).unwrap();
        assert!(
            m.text.contains("cipher-suite \"A\"; cipher-suite \"B\";"),
            "{}",
            m.text
        );
        assert!(KdlDocument::parse(&m.text).is_ok(), "{}", m.text);
    }

    #[test]
    fn a_config_that_is_not_kdl_is_refused() {
        assert!(to_zentinel("system {").is_err());
    }
}
