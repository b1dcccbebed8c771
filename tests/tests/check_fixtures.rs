//! A data-driven corpus of broken fleet repos and the diagnostics
//! `gitfleet check` gives for each.
//!
//! `fixtures/base/` is a small fleet repo that checks clean. Every directory
//! under `fixtures/broken/` is an overlay on it that demonstrates one
//! problem: its files replace or add to the base's at the same relative
//! paths, and an optional `REMOVE` file lists base paths (one per line) to
//! delete. The diagnostics of each case are snapshotted in
//! `fixtures/snapshots/<case>.snap`, one line per diagnostic.
//!
//! Cases named `warn-...` must produce warnings only; all other cases must
//! produce at least one error.
//!
//! Add a case by creating its directory, then run
//! `INSTA_UPDATE=always cargo test -p gitfleet-tests --test check_fixtures`
//! and review the new snapshot against the fixture's files and lines.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use gitfleet_policy::RepoFiles;
use gitfleet_schemas::{Diagnostic, Severity};

/// The overlay's list of base paths to delete.
const REMOVE: &str = "REMOVE";

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// Every file under `dir`, by `/`-separated path relative to it, in path order.
fn read_tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
        let entries =
            fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
        for entry in entries {
            let path = entry
                .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
                .path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let relative = path
                    .strip_prefix(root)
                    .unwrap_or_else(|e| {
                        panic!("{} is outside {}: {e}", path.display(), root.display())
                    })
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
                    .join("/");
                let bytes = fs::read(&path)
                    .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
                out.push((relative, bytes));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

fn base_files() -> Vec<(String, Vec<u8>)> {
    read_tree(&fixtures().join("base"))
}

fn repo(files: Vec<(String, Vec<u8>)>) -> RepoFiles {
    let mut repo = RepoFiles::new();
    for (path, bytes) in files {
        repo.insert(path, bytes);
    }
    repo
}

/// Names of the case directories under `fixtures/broken/`, sorted.
fn cases() -> Vec<String> {
    let dir = fixtures().join("broken");
    let mut names: Vec<String> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|entry| entry.unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display())))
        .filter(|entry| entry.path().is_dir())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// The base repo with the case's overlay applied.
fn case_repo(case: &str) -> RepoFiles {
    let base = base_files();
    let base_paths: BTreeSet<&str> = base.iter().map(|(p, _)| p.as_str()).collect();
    let overlay = read_tree(&fixtures().join("broken").join(case));
    assert!(!overlay.is_empty(), "case `{case}` has no files");

    let mut removed = BTreeSet::new();
    for (path, bytes) in &overlay {
        if path != REMOVE {
            continue;
        }
        let list = std::str::from_utf8(bytes)
            .unwrap_or_else(|e| panic!("case `{case}`: {REMOVE} is not UTF-8: {e}"));
        for line in list.lines().map(str::trim).filter(|l| !l.is_empty()) {
            assert!(
                base_paths.contains(line),
                "case `{case}`: {REMOVE} names `{line}`, which is not a base file"
            );
            removed.insert(line.to_owned());
        }
    }

    let mut files = repo(
        base.iter()
            .filter(|(p, _)| !removed.contains(p))
            .cloned()
            .collect(),
    );
    for (path, bytes) in overlay {
        if path != REMOVE {
            files.insert(path, bytes);
        }
    }
    files
}

/// One line per diagnostic, with an indented help line when there is one.
fn render(diagnostics: &[Diagnostic]) -> String {
    let mut out = String::new();
    for d in diagnostics {
        let _ = writeln!(
            out,
            "{}:{}:{}: {}[{}]: {}",
            d.file, d.line, d.column, d.severity, d.code, d.message
        );
        if let Some(help) = &d.help {
            let _ = writeln!(out, "    help: {help}");
        }
    }
    out
}

#[test]
fn base_checks_clean() {
    let checked = gitfleet_policy::check(&repo(base_files()));
    assert!(
        checked.diagnostics.is_empty(),
        "the base fixture must check clean:\n{}",
        render(&checked.diagnostics)
    );
}

#[test]
fn there_are_enough_cases() {
    let cases = cases();
    assert!(cases.len() >= 28, "only {} cases", cases.len());
}

#[test]
fn every_snapshot_has_a_case() {
    let cases: BTreeSet<String> = cases().into_iter().collect();
    let dir = fixtures().join("snapshots");
    let Ok(entries) = fs::read_dir(&dir) else {
        return;
    };
    for entry in entries {
        let name = entry
            .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
            .file_name()
            .to_string_lossy()
            .into_owned();
        let case = name
            .strip_suffix(".snap")
            .unwrap_or_else(|| panic!("unexpected file in snapshots/: {name}"));
        assert!(
            cases.contains(case),
            "snapshots/{name} belongs to no case under broken/"
        );
    }
}

#[test]
fn broken_cases_match_their_snapshots() {
    let mut failed = Vec::new();
    for case in cases() {
        let files = case_repo(&case);
        let result = std::panic::catch_unwind(|| {
            let checked = gitfleet_policy::check(&files);
            let diagnostics = &checked.diagnostics;
            let rendered = render(diagnostics);
            assert!(
                !diagnostics.is_empty(),
                "case `{case}` produced no diagnostics"
            );
            let errors = diagnostics
                .iter()
                .filter(|d| d.severity == Severity::Error)
                .count();
            if case.starts_with("warn-") {
                assert_eq!(
                    errors, 0,
                    "warning case `{case}` produced errors:\n{rendered}"
                );
            } else {
                assert!(errors > 0, "case `{case}` produced no error:\n{rendered}");
            }
            insta::with_settings!({
                snapshot_path => "../fixtures/snapshots",
                prepend_module_to_snapshot => false,
                description => format!("tests/fixtures/broken/{case}"),
                omit_expression => true,
            }, {
                insta::assert_snapshot!(case.as_str(), rendered);
            });
        });
        if result.is_err() {
            failed.push(case);
        }
    }
    assert!(failed.is_empty(), "failing cases: {failed:?}");
}
