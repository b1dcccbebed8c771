//! `gitfleet check` as an operator runs it: the real binary, real files,
//! real git repositories.

#![allow(clippy::unwrap_used)] // test helpers fail the test by panicking

use std::path::Path;
use std::process::Command;

use gitfleet_schemas::CheckReport;
use gitfleet_tests::{bin, copy_dir, git, text, workspace};

fn example() -> std::path::PathBuf {
    workspace().join("examples/fleet-repo")
}

fn check(args: &[&str], dir: &Path) -> (i32, String, String) {
    let out = Command::new(bin("gitfleet"))
        .arg("check")
        .args(args)
        .current_dir(dir)
        .env("GITFLEET_COLOR", "never")
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    (out.status.code().unwrap(), stdout, stderr)
}

/// A copy of the example repo with one node pointing at an unknown environment.
fn broken_copy(into: &Path) {
    copy_dir(&example(), into);
    let node = into.join("nodes/edge-fra-1.kdl");
    let text = std::fs::read_to_string(&node).unwrap();
    std::fs::write(
        &node,
        text.replace("environment \"prod\"", "environment \"prdo\""),
    )
    .unwrap();
}

#[test]
fn the_example_fleet_repo_is_clean() {
    let (code, stdout, stderr) = check(&[example().to_str().unwrap()], &workspace());
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains(": ok (11 nodes, 3 environments, 2 configs, 1 mesh, 3 rollouts)"),
        "{stdout}"
    );
}

#[test]
fn an_error_exits_1_with_file_line_and_snippet() {
    let dir = tempfile::tempdir().unwrap();
    broken_copy(dir.path());
    let (code, stdout, _) = check(&["."], dir.path());
    assert_eq!(code, 1, "{stdout}");
    assert!(
        stdout.contains("error[unknown-environment]: unknown environment `prdo`"),
        "{stdout}"
    );
    assert!(stdout.contains("┌─ nodes/edge-fra-1.kdl:3:13"), "{stdout}");
    assert!(stdout.contains("3 │ environment \"prdo\""), "{stdout}");
    assert!(stdout.contains("1 error, 0 warnings"), "{stdout}");
}

#[test]
fn json_output_follows_the_check_report_schema() {
    let dir = tempfile::tempdir().unwrap();
    broken_copy(dir.path());
    let (code, stdout, _) = check(&[".", "--format", "json"], dir.path());
    assert_eq!(code, 1);
    let report: CheckReport = serde_json::from_str(&stdout).unwrap();
    assert_eq!((report.errors, report.warnings), (1, 0));
    let d = &report.diagnostics[0];
    assert_eq!(
        (d.file.as_str(), d.line, d.column),
        ("nodes/edge-fra-1.kdl", 3, 13)
    );
    assert_eq!(d.code, "unknown-environment");
}

#[test]
fn warnings_alone_exit_0() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&example(), dir.path());
    std::fs::write(dir.path().join("stray.kdl"), "version 1\n").unwrap();
    let (code, stdout, _) = check(&["."], dir.path());
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.contains("warning[unexpected-file]"), "{stdout}");
}

#[test]
fn a_missing_directory_exits_2() {
    let (code, _, stderr) = check(&["/nonexistent/fleet"], &workspace());
    assert_eq!(code, 2);
    assert!(
        stderr.contains("error: /nonexistent/fleet is not a directory"),
        "{stderr}"
    );
}

#[test]
fn rev_reads_the_commit_not_the_working_tree() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path();
    copy_dir(&example(), repo);
    git(repo, &["init", "-q"]);
    git(repo, &["add", "-A"]);
    git(repo, &["commit", "-qm", "fleet"]);
    // Break the working tree only.
    let node = repo.join("nodes/edge-fra-1.kdl");
    let t = std::fs::read_to_string(&node).unwrap();
    std::fs::write(&node, t.replace("\"prod\"", "\"prdo\"")).unwrap();

    let (code, stdout, _) = check(&["."], repo);
    assert_eq!(code, 1, "the working tree is broken: {stdout}");
    let (code, stdout, stderr) = check(&[".", "--rev", "HEAD"], repo);
    assert_eq!(code, 0, "HEAD is clean: {stdout}{stderr}");
    assert!(stdout.contains("@HEAD: ok"), "{stdout}");
}

#[test]
fn rev_reads_a_branch_of_a_file_clone() {
    let dir = tempfile::tempdir().unwrap();
    let origin = dir.path().join("origin");
    copy_dir(&example(), &origin);
    git(&origin, &["init", "-q"]);
    git(&origin, &["add", "-A"]);
    git(&origin, &["commit", "-qm", "fleet"]);
    // A second commit on a branch breaks a node.
    git(&origin, &["checkout", "-qb", "broken"]);
    let node = origin.join("nodes/edge-fra-1.kdl");
    let t = std::fs::read_to_string(&node).unwrap();
    std::fs::write(&node, t.replace("\"prod\"", "\"prdo\"")).unwrap();
    git(&origin, &["commit", "-qam", "break a node"]);

    let url = format!("file://{}", origin.display());
    git(dir.path(), &["clone", "-q", &url, "clone"]);
    let clone = dir.path().join("clone");
    let (code, stdout, _) = check(&[".", "--rev", "origin/main"], &clone);
    assert_eq!(code, 0, "{stdout}");
    let (code, stdout, _) = check(&[".", "--rev", "origin/broken", "--format", "json"], &clone);
    assert_eq!(code, 1, "{stdout}");
    let report: CheckReport = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report.diagnostics[0].file, "nodes/edge-fra-1.kdl");
}

#[test]
fn rev_of_a_subdirectory_reads_that_subtree() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path();
    copy_dir(&example(), &repo.join("fleet"));
    std::fs::write(repo.join("README.md"), "not part of the fleet\n").unwrap();
    git(repo, &["init", "-q"]);
    git(repo, &["add", "-A"]);
    git(repo, &["commit", "-qm", "fleet in a subdirectory"]);
    let (code, stdout, stderr) = check(&["fleet", "--rev", "HEAD"], repo);
    assert_eq!(code, 0, "{stdout}{stderr}");
}

#[test]
fn an_unknown_revision_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    git(dir.path(), &["init", "-q"]);
    let (code, _, stderr) = check(&[".", "--rev", "no-such-branch"], dir.path());
    assert_eq!(code, 2);
    assert!(
        stderr.contains("resolving revision `no-such-branch`"),
        "{stderr}"
    );
}

#[test]
fn a_directory_that_is_no_fleet_repo_is_named_in_one_line() {
    // The gitfleet source tree itself: no fleet.kdl, nodes/ or configs/.
    let (code, stdout, stderr) = check(&[], &workspace());
    assert_eq!(code, 2, "{stdout}{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("is not a fleet repo: it has no fleet.kdl")
            && stderr.contains("gitfleet check examples/fleet-repo"),
        "{stderr}"
    );
}

/// A node moves to Zentinel: `check` names the Sentinel constructs
/// Zentinel refuses, `migrate-config --write` writes the config's Zentinel
/// form beside it, and the fleet checks clean again.
#[test]
fn a_node_moving_to_zentinel_is_checked_for_it_and_migrate_config_fixes_the_config() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&example(), dir.path());
    let node = dir.path().join("nodes/edge-fra-2.kdl");
    let file = std::fs::read_to_string(&node).unwrap();
    std::fs::write(
        &node,
        format!("{file}proxy \"zentinel\" version=\"0.6.45\"\n"),
    )
    .unwrap();

    let (code, stdout, stderr) = check(&["."], dir.path());
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(
        stdout.contains("error[zentinel-config]: zentinel 0.6.45 refuses it: listener 'admin' binds '127.0.0.1:9090'"),
        "{stdout}"
    );
    assert!(stdout.contains("configs/edge/sentinel.kdl:36:"), "{stdout}");

    let migrate = |args: &[&str]| {
        let out = Command::new(bin("gitfleet"))
            .arg("migrate-config")
            .args(args)
            .current_dir(dir.path())
            .output()
            .unwrap();
        let (stdout, stderr) = text(&out);
        (out.status.code().unwrap(), stdout, stderr)
    };
    let (code, stdout, stderr) = migrate(&["configs/edge", "--write"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stderr.contains("ok: zentinel 0.6.45 accepts the result"),
        "{stderr}"
    );
    let written = std::fs::read_to_string(dir.path().join("configs/edge/zentinel.kdl")).unwrap();
    assert!(written.contains("enabled #false"), "{written}");
    // Comments stay as written.
    assert!(written.starts_with("// Sentinel edge proxy"), "{written}");

    let (code, stdout, stderr) = check(&["."], dir.path());
    assert_eq!(code, 0, "{stdout}{stderr}");
    // A second --write does not overwrite the operator's file.
    let (code, _, stderr) = migrate(&["configs/edge", "--write"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("zentinel.kdl exists; pass --force"),
        "{stderr}"
    );
}
