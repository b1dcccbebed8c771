//! Showing diagnostics: rustc-style with source snippets, or JSON.

use std::collections::HashMap;
use std::io::Write;

use codespan_reporting::diagnostic::{Diagnostic as Report, Label, Severity as Level};
use codespan_reporting::files::SimpleFiles;
use codespan_reporting::term::{self, termcolor::StandardStream};
use gitfleet_policy::{LineIndex, RepoFiles};
use gitfleet_schemas::{CheckReport, Diagnostic, Severity};

pub fn counts(diags: &[Diagnostic]) -> (usize, usize) {
    let errors = diags
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .count();
    let warnings = diags
        .iter()
        .filter(|d| d.severity == Severity::Warning)
        .count();
    (errors, warnings)
}

/// Print diagnostics the way rustc does, each with the lines it points at.
pub fn human(
    out: &mut StandardStream,
    files: &RepoFiles,
    diags: &[Diagnostic],
) -> anyhow::Result<()> {
    let mut db = SimpleFiles::new();
    let mut ids = HashMap::new();
    let config = term::Config::default();
    let mut out = out.lock();
    for d in diags {
        let text = files.text(&d.file).unwrap_or("");
        let id = *ids
            .entry(d.file.clone())
            .or_insert_with(|| db.add(d.file.clone(), text.to_owned()));
        let index = LineIndex::new(text);
        let start = index.offset(d.line, d.column);
        let end = index.offset(d.end_line, d.end_column).max(start);
        let level = match d.severity {
            Severity::Error => Level::Error,
            Severity::Warning => Level::Warning,
            Severity::Info => Level::Note,
        };
        let mut report = Report::new(level)
            .with_code(d.code.clone())
            .with_message(d.message.clone())
            .with_labels(vec![Label::primary(id, start..end)]);
        if let Some(help) = &d.help {
            report = report.with_notes(vec![format!("help: {help}")]);
        }
        term::emit_to_write_style(&mut out, &config, &db, &report)?;
    }
    let (errors, warnings) = counts(diags);
    if errors + warnings > 0 {
        writeln!(out, "{}", summary(errors, warnings))?;
    }
    Ok(())
}

pub fn summary(errors: usize, warnings: usize) -> String {
    let plural = |n: usize, word: &str| format!("{n} {word}{}", if n == 1 { "" } else { "s" });
    format!(
        "{}, {}",
        plural(errors, "error"),
        plural(warnings, "warning")
    )
}

pub fn json(source: String, diags: Vec<Diagnostic>) -> anyhow::Result<String> {
    let (errors, warnings) = counts(&diags);
    let report = CheckReport {
        version: 1,
        source,
        errors,
        warnings,
        diagnostics: diags,
    };
    Ok(serde_json::to_string_pretty(&report)?)
}
