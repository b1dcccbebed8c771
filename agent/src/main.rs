//! `gitfleet-agent`: the only gitfleet code on a node.
//!
//! It will poll the signed channel manifest of its environment, verify and
//! stage bundles, activate them, health-check, roll back and report signed
//! status. Those commands land with the agent work (issue 5); today the
//! binary exists so the workspace and its dependency boundaries are in place:
//! the agent never depends on git2, octocrab or axum.

use clap::Parser;

/// The gitfleet node agent: verifies and activates signed bundles on this node.
///
/// No commands are available in this version yet: the agent's run, enroll,
/// status and verify commands are being built.
#[derive(Debug, Parser)]
#[command(name = "gitfleet-agent", version)]
struct Cli {}

fn main() {
    let _ = Cli::parse();
    eprintln!(
        "gitfleet-agent: no commands are available in this version; see `gitfleet-agent --help`"
    );
    std::process::exit(2);
}
