//! The CLI teaches: every command is listed with a sentence, and each
//! command's help has an example.

use std::process::Command;

fn help(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_gitfleet"))
        .args(args)
        .arg("--help")
        .output()
        .expect("running gitfleet");
    assert!(out.status.success(), "{args:?} --help failed");
    String::from_utf8(out.stdout).expect("help is UTF-8")
}

#[test]
fn top_level_help_lists_every_command() {
    let text = help(&[]);
    for cmd in [
        "check",
        "keygen",
        "reconcile",
        "rollout",
        "root",
        "bundle",
        "simulate",
        "up",
        "approve",
        "status",
        "serve",
    ] {
        assert!(
            text.contains(&format!("  {cmd} ")),
            "`{cmd}` missing from:\n{text}"
        );
    }
}

#[test]
fn each_command_help_shows_an_example() {
    for cmd in [
        &["check"][..],
        &["reconcile"],
        &["rollout"],
        &["root"],
        &["bundle"],
        &["simulate"],
        &["up"],
        &["approve"],
        &["status"],
        &["serve"],
    ] {
        let text = help(cmd);
        assert!(
            text.contains("Example"),
            "no example in `gitfleet {cmd:?} --help`:\n{text}"
        );
    }
}
