//! Reading KDL v2 documents into typed models.
//!
//! A [`Decoder`] walks a parsed document and collects every problem it finds
//! instead of stopping at the first: an operator fixing a repo wants the whole
//! list. Unknown nodes and properties, wrong value types and repeated nodes are
//! all errors, each with the span of the offending text.

use std::collections::BTreeMap;
use std::fmt;

use kdl::{KdlDocument, KdlEntry, KdlNode, KdlValue};

use crate::span::{Span, Spanned};

/// The version every fleet repo document declares today.
pub const FORMAT_VERSION: i128 = 1;

/// The help for a syntax error the parser gives no help for: most are KDL v1
/// habits.
const KDL_V2_HELP: &str =
    "fleet files are KDL v2: strings are quoted, booleans are #true/#false, null is #null";

/// A problem found while reading one document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodeError {
    pub span: Span,
    /// A stable, kebab-case identifier, e.g. `unknown-node`.
    pub code: &'static str,
    pub message: String,
    pub help: Option<String>,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} at bytes {}..{}",
            self.message, self.span.start, self.span.end
        )
    }
}

/// The result of decoding one document: as much of the model as could be
/// read, and every problem found on the way.
///
/// `value` is `None` only when something required is missing or unreadable.
#[derive(Debug)]
pub struct Decoded<T> {
    pub value: Option<T>,
    pub errors: Vec<DecodeError>,
}

impl<T> Decoded<T> {
    pub fn is_clean(&self) -> bool {
        self.errors.is_empty()
    }
}

#[derive(Default)]
pub(crate) struct Decoder {
    errors: Vec<DecodeError>,
}

/// What a value looks like, for "expected a string, found an integer".
fn kind_of(v: &KdlValue) -> &'static str {
    match v {
        KdlValue::String(_) => "a string",
        KdlValue::Integer(_) => "an integer",
        KdlValue::Float(_) => "a number",
        KdlValue::Bool(_) => "a boolean",
        KdlValue::Null => "#null",
    }
}

fn name_of(node: &KdlNode) -> &str {
    node.name().value()
}

fn args(node: &KdlNode) -> impl Iterator<Item = &KdlEntry> {
    node.entries().iter().filter(|e| e.name().is_none())
}

fn props(node: &KdlNode) -> impl Iterator<Item = &KdlEntry> {
    node.entries().iter().filter(|e| e.name().is_some())
}

/// The nodes of a block, or none.
pub(crate) fn children(node: &KdlNode) -> &[KdlNode] {
    node.children().map(KdlDocument::nodes).unwrap_or(&[])
}

/// A "did you mean" hint when `got` is close to one of `expected`.
fn suggestion(got: &str, expected: &[&str]) -> String {
    let close = expected
        .iter()
        .map(|e| (strsim::damerau_levenshtein(got, e), *e))
        .filter(|(d, e)| *d <= 2.max(e.len() / 3))
        .min();
    match close {
        Some((_, e)) => format!("did you mean `{e}`?"),
        None => format!("expected one of: {}", expected.join(", ")),
    }
}

impl Decoder {
    /// Parse `text` as KDL v2. Syntax errors are recorded, one per problem the
    /// parser reports.
    pub(crate) fn parse(&mut self, text: &str) -> Option<KdlDocument> {
        match KdlDocument::parse(text) {
            Ok(doc) => Some(doc),
            Err(e) => {
                for d in e.diagnostics {
                    let message = d
                        .message
                        .clone()
                        .or(d.label.clone())
                        .unwrap_or_else(|| "invalid KDL".to_owned());
                    let message = lowercase_first(message.trim_end_matches('.'));
                    let help = d.help.clone().or_else(|| Some(KDL_V2_HELP.to_owned()));
                    self.error(d.span, "kdl-syntax", message, help);
                }
                None
            }
        }
    }

    pub(crate) fn error(
        &mut self,
        span: impl Into<Span>,
        code: &'static str,
        message: impl Into<String>,
        help: Option<String>,
    ) {
        self.errors.push(DecodeError {
            span: span.into(),
            code,
            message: message.into(),
            help,
        });
    }

    pub(crate) fn finish<T>(self, value: Option<T>) -> Decoded<T> {
        Decoded {
            value,
            errors: self.errors,
        }
    }

    /// Check that the document starts with `version 1` and return the nodes
    /// after it.
    pub(crate) fn versioned<'d>(&mut self, doc: &'d KdlDocument, what: &str) -> &'d [KdlNode] {
        let nodes = doc.nodes();
        match nodes.first() {
            Some(first) if name_of(first) == "version" => {
                if let Some(v) = self.scalar(first, |v| v.as_integer(), "an integer") {
                    if v.value != FORMAT_VERSION {
                        self.error(
                            v.span,
                            "unsupported-version",
                            format!("{what} version {} is not supported", v.value),
                            Some(format!(
                                "this gitfleet reads version {FORMAT_VERSION}; upgrade gitfleet or write `version {FORMAT_VERSION}`"
                            )),
                        );
                    }
                }
                &nodes[1..]
            }
            _ => {
                let span = nodes.first().map_or(Span::default(), |n| n.span().into());
                self.error(
                    Span::new(span.start, span.start),
                    "missing-version",
                    format!("{what} must start with `version {FORMAT_VERSION}`"),
                    Some(format!(
                        "add `version {FORMAT_VERSION}` as the first line so future formats can be told apart"
                    )),
                );
                nodes
            }
        }
    }

    pub(crate) fn unknown_node(&mut self, node: &KdlNode, within: &str, expected: &[&str]) {
        let name = name_of(node);
        self.error(
            node.name().span(),
            "unknown-node",
            format!("unknown node `{name}` in {within}"),
            Some(suggestion(name, expected)),
        );
    }

    /// Record `value` in `slot`, reporting a node given twice.
    pub(crate) fn once<T>(&mut self, slot: &mut Option<T>, node: &KdlNode, value: Option<T>) {
        if slot.is_some() {
            self.error(
                node.name().span(),
                "duplicate-node",
                format!("`{}` is given more than once", name_of(node)),
                Some("keep one of them".to_owned()),
            );
            return;
        }
        if value.is_some() {
            *slot = value;
        }
    }

    /// Report a required node that is missing.
    pub(crate) fn required<T>(
        &mut self,
        slot: Option<T>,
        at: Span,
        name: &str,
        within: &str,
        example: &str,
    ) -> Option<T> {
        if slot.is_none() {
            self.error(
                at,
                "missing-node",
                format!("{within} has no `{name}`"),
                Some(format!("add `{example}`")),
            );
        }
        slot
    }

    /// Reject properties other than `allowed`, and properties given twice.
    pub(crate) fn allow_props(&mut self, node: &KdlNode, allowed: &[&str]) {
        let mut seen = Vec::new();
        for p in props(node) {
            let key = p.name().map(|n| n.value()).unwrap_or_default();
            if !allowed.contains(&key) {
                let help = if allowed.is_empty() {
                    format!("`{}` takes no properties", name_of(node))
                } else {
                    suggestion(key, allowed)
                };
                self.error(
                    p.span(),
                    "unknown-property",
                    format!("unknown property `{key}` on `{}`", name_of(node)),
                    Some(help),
                );
            } else if seen.contains(&key) {
                self.error(
                    p.span(),
                    "duplicate-property",
                    format!("property `{key}` is given more than once"),
                    None,
                );
            }
            seen.push(key);
        }
    }

    pub(crate) fn no_children(&mut self, node: &KdlNode) {
        if let Some(c) = node.children() {
            self.error(
                c.span(),
                "unexpected-children",
                format!("`{}` takes no block", name_of(node)),
                Some("remove the `{ ... }`".to_owned()),
            );
        }
    }

    pub(crate) fn max_args(&mut self, node: &KdlNode, max: usize) {
        for extra in args(node).skip(max) {
            self.error(
                extra.span(),
                "too-many-values",
                format!(
                    "`{}` takes {} value{}",
                    name_of(node),
                    if max == 0 {
                        "no".to_owned()
                    } else {
                        format!("at most {max}")
                    },
                    if max == 1 { "" } else { "s" }
                ),
                None,
            );
        }
    }

    fn typed<T>(
        &mut self,
        node: &KdlNode,
        entry: &KdlEntry,
        get: impl Fn(&KdlValue) -> Option<T>,
        expected: &str,
    ) -> Option<Spanned<T>> {
        if let Some(ty) = entry.ty() {
            self.error(
                ty.span(),
                "type-annotation",
                "type annotations are not used in fleet files",
                Some("remove the `(...)` before the value".to_owned()),
            );
        }
        match get(entry.value()) {
            Some(v) => Some(Spanned::new(v, entry.span().into())),
            None => {
                let what = match entry.name() {
                    Some(n) => format!("property `{}`", n.value()),
                    None => format!("`{}`", name_of(node)),
                };
                self.error(
                    entry.span(),
                    "wrong-type",
                    format!(
                        "{what} expects {expected}, found {}",
                        kind_of(entry.value())
                    ),
                    None,
                );
                None
            }
        }
    }

    /// A node of the form `name VALUE`: one value, no properties, no block.
    pub(crate) fn scalar<T>(
        &mut self,
        node: &KdlNode,
        get: impl Fn(&KdlValue) -> Option<T>,
        expected: &str,
    ) -> Option<Spanned<T>> {
        self.allow_props(node, &[]);
        self.no_children(node);
        self.max_args(node, 1);
        match args(node).next() {
            Some(e) => self.typed(node, e, get, expected),
            None => {
                self.error(
                    node.span(),
                    "missing-value",
                    format!("`{}` needs {expected}", name_of(node)),
                    None,
                );
                None
            }
        }
    }

    pub(crate) fn string(&mut self, node: &KdlNode) -> Option<Spanned<String>> {
        self.scalar(node, |v| v.as_string().map(str::to_owned), "a string")
    }

    pub(crate) fn u64(&mut self, node: &KdlNode) -> Option<Spanned<u64>> {
        self.scalar(node, as_u64, "a non-negative integer")
    }

    pub(crate) fn bool(&mut self, node: &KdlNode) -> Option<Spanned<bool>> {
        self.scalar(node, KdlValue::as_bool, "#true or #false")
    }

    /// `name "10m"`: a human duration, in whole seconds.
    pub(crate) fn duration(&mut self, node: &KdlNode) -> Option<Spanned<u64>> {
        let s = self.string(node)?;
        self.parse_duration(&s)
    }

    pub(crate) fn parse_duration(&mut self, s: &Spanned<String>) -> Option<Spanned<u64>> {
        match humantime::parse_duration(&s.value) {
            Ok(d) => Some(Spanned::new(d.as_secs(), s.span)),
            Err(e) => {
                self.error(
                    s.span,
                    "invalid-duration",
                    format!("`{}` is not a duration: {e}", s.value),
                    Some("write durations like \"90s\", \"10m\" or \"1h 30m\"".to_owned()),
                );
                None
            }
        }
    }

    /// `name "a" "b" ...`: one or more strings, no properties, no block.
    pub(crate) fn strings(&mut self, node: &KdlNode) -> Vec<Spanned<String>> {
        self.allow_props(node, &[]);
        self.no_children(node);
        let out: Vec<_> = args(node)
            .filter_map(|e| self.typed(node, e, |v| v.as_string().map(str::to_owned), "strings"))
            .collect();
        if args(node).next().is_none() {
            self.error(
                node.span(),
                "missing-value",
                format!("`{}` needs at least one string", name_of(node)),
                None,
            );
        }
        out
    }

    /// `name key="value" ...`: string properties only (labels, selectors).
    pub(crate) fn string_map(&mut self, node: &KdlNode) -> BTreeMap<String, Spanned<String>> {
        self.no_children(node);
        self.max_args(node, 0);
        self.string_props(node)
    }

    /// The string properties of `node`; its values and block are the
    /// caller's to read.
    pub(crate) fn string_props(&mut self, node: &KdlNode) -> BTreeMap<String, Spanned<String>> {
        let mut out = BTreeMap::new();
        for p in props(node) {
            let Some(key) = p.name() else { continue };
            let Some(v) = self.typed(node, p, |v| v.as_string().map(str::to_owned), "a string")
            else {
                continue;
            };
            if out.insert(key.value().to_owned(), v).is_some() {
                self.error(
                    p.span(),
                    "duplicate-property",
                    format!("`{}` is given more than once", key.value()),
                    None,
                );
            }
        }
        out
    }

    /// The positional value at `index`, typed.
    pub(crate) fn arg<T>(
        &mut self,
        node: &KdlNode,
        index: usize,
        get: impl Fn(&KdlValue) -> Option<T>,
        expected: &str,
    ) -> Option<Spanned<T>> {
        match args(node).nth(index) {
            Some(e) => self.typed(node, e, get, expected),
            None => {
                self.error(
                    node.span(),
                    "missing-value",
                    format!("`{}` needs {expected}", name_of(node)),
                    None,
                );
                None
            }
        }
    }

    /// An optional property, typed.
    pub(crate) fn prop<T>(
        &mut self,
        node: &KdlNode,
        key: &str,
        get: impl Fn(&KdlValue) -> Option<T>,
        expected: &str,
    ) -> Option<Spanned<T>> {
        let entry = props(node).find(|p| p.name().is_some_and(|n| n.value() == key))?;
        self.typed(node, entry, get, expected)
    }

    pub(crate) fn prop_string(&mut self, node: &KdlNode, key: &str) -> Option<Spanned<String>> {
        self.prop(node, key, |v| v.as_string().map(str::to_owned), "a string")
    }

    /// A property that must be present.
    pub(crate) fn required_prop<T>(
        &mut self,
        node: &KdlNode,
        key: &str,
        get: impl Fn(&KdlValue) -> Option<T>,
        expected: &str,
    ) -> Option<Spanned<T>> {
        let has = props(node).any(|p| p.name().is_some_and(|n| n.value() == key));
        if !has {
            self.error(
                node.span(),
                "missing-property",
                format!("`{}` needs property `{key}`", name_of(node)),
                Some(format!("add `{key}=...` ({expected})")),
            );
            return None;
        }
        self.prop(node, key, get, expected)
    }
}

pub(crate) fn as_u64(v: &KdlValue) -> Option<u64> {
    v.as_integer().and_then(|i| u64::try_from(i).ok())
}

pub(crate) fn as_f64(v: &KdlValue) -> Option<f64> {
    match v {
        KdlValue::Float(f) => Some(*f),
        KdlValue::Integer(i) => Some(*i as f64),
        _ => None,
    }
}

pub(crate) fn as_string(v: &KdlValue) -> Option<String> {
    v.as_string().map(str::to_owned)
}

fn lowercase_first(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_lowercase().chain(c).collect(),
        None => String::new(),
    }
}

pub(crate) fn name(node: &KdlNode) -> &str {
    name_of(node)
}

pub(crate) fn node_span(node: &KdlNode) -> Span {
    node.span().into()
}

/// Where to report something the whole document lacks: its first node
/// (normally `version 1`), or the start of the text when it has no nodes.
pub(crate) fn document_start(doc: &KdlDocument) -> Span {
    doc.nodes()
        .first()
        .map_or(Span::new(0, 0), |n| n.span().into())
}

impl Decoder {
    /// A duration in whole milliseconds, for latencies.
    pub(crate) fn parse_duration_ms(&mut self, s: &Spanned<String>) -> Option<Spanned<u64>> {
        match humantime::parse_duration(&s.value) {
            Ok(d) => Some(Spanned::new(
                u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
                s.span,
            )),
            Err(e) => {
                self.error(
                    s.span,
                    "invalid-duration",
                    format!("`{}` is not a duration: {e}", s.value),
                    Some("write latencies like \"250ms\" or \"1s\"".to_owned()),
                );
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start_text(text: &str) -> &str {
        let doc = KdlDocument::parse(text).expect("valid KDL");
        let span = document_start(&doc);
        &text[span.start..span.end]
    }

    #[test]
    fn syntax_errors_always_have_a_help() {
        let mut d = Decoder::default();
        assert!(d.parse("version 1\npaused true\n").is_none());
        let errors = d.finish::<()>(None).errors;
        assert!(!errors.is_empty());
        for e in &errors {
            assert_eq!(e.code, "kdl-syntax");
            assert_eq!(e.help.as_deref(), Some(KDL_V2_HELP), "{e:?}");
        }
        // The parser's own help is kept.
        let mut d = Decoder::default();
        assert!(d.parse("id \"x\n").is_none());
        let errors = d.finish::<()>(None).errors;
        assert!(errors
            .iter()
            .any(|e| e.help.as_deref() != Some(KDL_V2_HELP)));
    }

    #[test]
    fn the_document_starts_at_its_first_node() {
        assert_eq!(
            start_text("// comment\n\nversion 1\nid \"x\"\n"),
            "version 1"
        );
        assert_eq!(
            start_text("id \"x\" { a; }\nversion 1\n"),
            "id \"x\" { a; }"
        );
        assert_eq!(start_text("// only a comment\n"), "");
        assert_eq!(start_text(""), "");
    }
}
