//! The agent binary's command line: help that teaches, and config errors
//! that say file, line and column.

use std::process::Command;

fn agent(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_gitfleet-agent"))
        .args(args)
        .env_remove("GITFLEET_AGENT_CONFIG")
        .output()
        .expect("running gitfleet-agent")
}

#[test]
fn the_agent_reports_its_version() {
    let out = agent(&["--version"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("gitfleet-agent "));
}

#[test]
fn every_command_has_help_with_an_example() {
    for command in ["run", "enroll", "status"] {
        let out = agent(&[command, "--help"]);
        assert!(out.status.success(), "{command}");
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(help.contains("Example"), "{command}: {help}");
    }
}

#[test]
fn a_config_error_names_the_file_line_and_column() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("agent.kdl");
    std::fs::write(
        &path,
        "version 1\nnode \"n\"\nenvironment \"dev\"\nstore \"memory://\"\nstate-dir \"/s\"\npol \"1s\"\n",
    )
    .expect("writing config");
    let out = agent(&["-c", path.to_str().expect("utf-8 path"), "status"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "{}:6:1: unknown node `pol` in agent config (help: did you mean `poll`?)",
            path.display()
        )),
        "{stderr}"
    );
}

#[test]
fn a_missing_config_is_an_error_that_says_which_file() {
    let out = agent(&["-c", "/nonexistent/agent.kdl", "status"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("reading agent config /nonexistent/agent.kdl"));
}
