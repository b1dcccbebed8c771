//! Checking a whole fleet repo: every document read into the model, each
//! config validated for the proxies that run it, then the cross-document
//! checks and the lint rules, every problem reported.

use gitfleet_schemas::Diagnostic;

use crate::diagnostics::Diagnostics;
use crate::model::{load, FleetModel};
use crate::repo::RepoFiles;
use crate::{checks, configs, lint};

/// The outcome of reading a repo: the model and every problem, sorted.
#[derive(Debug)]
pub struct Checked {
    pub model: FleetModel,
    pub diagnostics: Vec<Diagnostic>,
}

impl Checked {
    pub fn has_errors(&self) -> bool {
        self.diagnostics
            .iter()
            .any(|d| d.severity == gitfleet_schemas::Severity::Error)
    }
}

/// Read and check a whole fleet repo. Never stops at the first problem.
pub fn check(files: &RepoFiles) -> Checked {
    let mut diags = Diagnostics::new(files);
    let mut model = load(files, &mut diags);
    configs::validate(&mut model, &mut diags);
    checks::run(&model, files, &mut diags);
    crate::mesh_checks::run(&model, &mut diags);
    lint::run(&model, files, &mut diags);
    Checked {
        model,
        diagnostics: diags.finish(),
    }
}
