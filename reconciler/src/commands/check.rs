//! `gitfleet check`: read a fleet repo and print every problem.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::ValueEnum;
use codespan_reporting::term::termcolor::StandardStream;
use gitfleet_policy::{Checked, RepoFiles};

use super::Color;
use crate::fmt::count;
use crate::{render, source};

/// Check a fleet repo and print every problem with its file and line.
///
/// Reads fleet.kdl, environments.kdl, nodes/, configs/, meshes/ and
/// rollouts/, validates Sentinel configs with the proxy's own
/// configuration crate and applies the lint rules of fleet.kdl.
///
/// Exit status: 0 when there are no errors (warnings allowed), 1 when
/// there are errors, 2 when the check could not run.
///
/// Examples:
///   gitfleet check examples/fleet-repo
///   gitfleet check --rev origin/main
///   gitfleet check --format json > report.json
///   gitfleet check --explain edge     # edge's steps, waits and gates, and where each comes from
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct CheckArgs {
    /// The fleet repo: a directory (or, with --rev, any path inside a git repository).
    #[arg(default_value = ".")]
    path: PathBuf,

    /// Check this git revision (branch, tag, commit) instead of the files on disk.
    #[arg(long, value_name = "REV")]
    rev: Option<String>,

    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Human)]
    format: Format,

    /// After the diagnostics, print the plan rollout ROLLOUT runs on: its
    /// steps, waits, gates and windows, each with where it comes from (the
    /// rollout's file, its template, fleet.kdl's defaults).
    #[arg(long, value_name = "ROLLOUT", conflicts_with = "format")]
    explain: Option<String>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Format {
    /// rustc-style diagnostics with source snippets.
    Human,
    /// One JSON document (schemas/json/check-report.schema.json).
    Json,
}

/// A fleet repo read into memory and checked.
#[derive(Debug)]
pub struct Loaded {
    pub files: RepoFiles,
    pub checked: Checked,
    /// How to name the source in messages: the path, with `@REV`.
    pub source: String,
}

/// Read the repo at `path` (or its revision `rev`) and check it.
pub fn load(path: &std::path::Path, rev: Option<&str>) -> anyhow::Result<Loaded> {
    let not_a_fleet_repo = |source: &str| {
        anyhow::anyhow!(
            "{source} is not a fleet repo: it has no fleet.kdl, environments.kdl, nodes/, configs/, meshes/ or rollouts/; \
             run `gitfleet check PATH` on one (for example `gitfleet check examples/fleet-repo`)"
        )
    };
    let (files, skipped, source) = match rev {
        Some(rev) => {
            let (f, s) = source::read_revision(path, rev)?;
            (f, s, format!("{}@{rev}", path.display()))
        }
        None => {
            // Look before reading: a directory that is no fleet repo (a
            // source tree with a build directory, say) is not read whole.
            let top = FLEET_ENTRIES.iter().any(|e| path.join(e).exists());
            if path.is_dir() && !top {
                return Err(not_a_fleet_repo(&path.display().to_string()));
            }
            let (f, s) = source::read_worktree(path)?;
            (f, s, path.display().to_string())
        }
    };
    if !is_fleet_repo(&files) {
        return Err(not_a_fleet_repo(&source));
    }
    for link in &skipped.symlinks {
        tracing::warn!(path = %link, "skipping symlink: fleet repos hold plain files");
    }
    let started = std::time::Instant::now();
    let checked = gitfleet_policy::check(&files);
    tracing::debug!(
        files = files.len(),
        nodes = checked.model.nodes.len(),
        configs = checked.model.configs.len(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "checked fleet repo"
    );
    Ok(Loaded {
        files,
        checked,
        source,
    })
}

/// Whether `files` look like a fleet repo at all: any of its documents or
/// directories. One missing file is a diagnostic; all of them missing means
/// the wrong directory.
/// The top-level entries of which a fleet repo has at least one.
const FLEET_ENTRIES: [&str; 6] = [
    "fleet.kdl",
    "environments.kdl",
    "nodes",
    "configs",
    "meshes",
    "rollouts",
];

fn is_fleet_repo(files: &RepoFiles) -> bool {
    files.iter().any(|(path, _)| {
        FLEET_ENTRIES
            .iter()
            .any(|e| path == *e || path.strip_prefix(e).is_some_and(|r| r.starts_with('/')))
    })
}

/// Print the diagnostics rustc-style on `out` (stdout or stderr).
pub fn print_diagnostics(mut out: StandardStream, loaded: &Loaded) -> anyhow::Result<()> {
    render::human(&mut out, &loaded.files, &loaded.checked.diagnostics)
        .context("writing diagnostics")
}

pub fn run(args: &CheckArgs, color: Color) -> anyhow::Result<ExitCode> {
    let loaded = load(&args.path, args.rev.as_deref())?;
    let failed = loaded.checked.has_errors();
    match args.format {
        Format::Json => {
            println!(
                "{}",
                render::json(loaded.source, loaded.checked.diagnostics)?
            );
        }
        Format::Human => {
            let choice = color.choice(std::io::stdout().is_terminal());
            print_diagnostics(StandardStream::stdout(choice), &loaded)?;
            if loaded.checked.diagnostics.is_empty() {
                let m = &loaded.checked.model;
                println!(
                    "{}: ok ({}, {}, {}, {}, {})",
                    loaded.source,
                    count(m.nodes.len(), "node", "nodes"),
                    count(m.environments.len(), "environment", "environments"),
                    count(m.configs.len(), "config", "configs"),
                    count(m.meshes.len(), "mesh", "meshes"),
                    count(m.rollouts.len(), "rollout", "rollouts")
                );
            }
            if let Some(name) = &args.explain {
                let model = &loaded.checked.model;
                let explained =
                    gitfleet_policy::explain::rollout(model, name).with_context(|| {
                        format!(
                        "no rollout `{name}` to explain (rollouts/{name}.kdl); the repo has: {}",
                        if model.rollouts.is_empty() {
                            "none".to_owned()
                        } else {
                            model.rollouts.keys().cloned().collect::<Vec<_>>().join(", ")
                        }
                    )
                    })?;
                println!();
                print!("{explained}");
            }
        }
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
