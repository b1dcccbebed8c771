//! Collecting diagnostics with their positions resolved.

use std::collections::HashMap;

use gitfleet_schemas::{DecodeError, Diagnostic, Severity, Span};

use crate::repo::{LineIndex, RepoFiles};

/// Gathers every problem found in a repo, turning byte spans into lines and
/// columns of the file they point into.
pub(crate) struct Diagnostics<'r> {
    files: &'r RepoFiles,
    indexes: HashMap<String, LineIndex<'r>>,
    out: Vec<Diagnostic>,
}

impl<'r> Diagnostics<'r> {
    pub(crate) fn new(files: &'r RepoFiles) -> Self {
        Self {
            files,
            indexes: HashMap::new(),
            out: Vec::new(),
        }
    }

    pub(crate) fn push(
        &mut self,
        file: &str,
        span: Span,
        severity: Severity,
        code: &str,
        message: impl Into<String>,
        help: Option<String>,
    ) {
        let files = self.files;
        let index = self
            .indexes
            .entry(file.to_owned())
            .or_insert_with(|| LineIndex::new(files.text(file).unwrap_or("")));
        let (line, column) = index.position(span.start);
        let (end_line, end_column) = index.position(span.end.max(span.start));
        self.out.push(Diagnostic {
            file: file.to_owned(),
            line,
            column,
            end_line,
            end_column,
            severity,
            code: code.to_owned(),
            message: message.into(),
            help,
        });
    }

    pub(crate) fn error(
        &mut self,
        file: &str,
        span: Span,
        code: &str,
        message: impl Into<String>,
        help: Option<String>,
    ) {
        self.push(file, span, Severity::Error, code, message, help);
    }

    pub(crate) fn warning(
        &mut self,
        file: &str,
        span: Span,
        code: &str,
        message: impl Into<String>,
        help: Option<String>,
    ) {
        self.push(file, span, Severity::Warning, code, message, help);
    }

    pub(crate) fn decode_errors(&mut self, file: &str, errors: Vec<DecodeError>) {
        for e in errors {
            self.error(file, e.span, e.code, e.message, e.help);
        }
    }

    /// `file:line` of a span, for "first defined at ..." hints.
    pub(crate) fn location(&mut self, file: &str, span: Span) -> String {
        let files = self.files;
        let index = self
            .indexes
            .entry(file.to_owned())
            .or_insert_with(|| LineIndex::new(files.text(file).unwrap_or("")));
        let (line, _) = index.position(span.start);
        format!("{file}:{line}")
    }

    /// All diagnostics, in file, line and column order.
    pub(crate) fn finish(mut self) -> Vec<Diagnostic> {
        self.out.sort();
        self.out.dedup();
        self.out
    }
}
