//! Until the agent's commands land, the binary says so instead of
//! pretending to work.

use std::process::Command;

#[test]
fn the_agent_reports_its_version() {
    let out = Command::new(env!("CARGO_BIN_EXE_gitfleet-agent"))
        .arg("--version")
        .output()
        .expect("running gitfleet-agent");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("gitfleet-agent "));
}

#[test]
fn the_agent_refuses_to_run_without_commands() {
    let out = Command::new(env!("CARGO_BIN_EXE_gitfleet-agent"))
        .output()
        .expect("running gitfleet-agent");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no commands are available"));
}
