//! `gitfleet`: the operator CLI and (in time) the reconciler server.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use codespan_reporting::term::termcolor::{ColorChoice, StandardStream};
use tracing_subscriber::EnvFilter;

mod render;
mod source;

/// Pull-based GitOps for Sentinel proxy fleets and WireGuard meshes.
///
/// A git repository says what every node should run; gitfleet checks it,
/// builds signed bundles and rolls them out step by step.
#[derive(Debug, Parser)]
#[command(name = "gitfleet", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,

    /// More log output on stderr (-v: debug, -vv: trace). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,

    /// When to colour output.
    #[arg(long, global = true, value_enum, default_value_t = Color::Auto, env = "GITFLEET_COLOR")]
    color: Color,
}

#[derive(Debug, Subcommand)]
enum Command {
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
    #[command(verbatim_doc_comment)]
    Check {
        /// The fleet repo: a directory (or, with --rev, any path inside a git repository).
        #[arg(default_value = ".")]
        path: PathBuf,

        /// Check this git revision (branch, tag, commit) instead of the files on disk.
        #[arg(long, value_name = "REV")]
        rev: Option<String>,

        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Human)]
        format: Format,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Format {
    /// rustc-style diagnostics with source snippets.
    Human,
    /// One JSON document (schemas/json/check-report.schema.json).
    Json,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Color {
    Auto,
    Always,
    Never,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.verbose);
    match run(&cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn init_tracing(verbose: u8) {
    // sentinel-config logs its own parse steps; they are noise here.
    let default = match verbose {
        0 => "warn,sentinel_config=error",
        1 => "debug,sentinel_config=warn",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn run(cli: &Cli) -> anyhow::Result<ExitCode> {
    match &cli.command {
        Command::Check { path, rev, format } => check(cli, path, rev.as_deref(), *format),
    }
}

fn check(
    cli: &Cli,
    path: &std::path::Path,
    rev: Option<&str>,
    format: Format,
) -> anyhow::Result<ExitCode> {
    let (files, skipped, source) = match rev {
        Some(rev) => {
            let (f, s) = source::read_revision(path, rev)?;
            (f, s, format!("{}@{rev}", path.display()))
        }
        None => {
            let (f, s) = source::read_worktree(path)?;
            (f, s, path.display().to_string())
        }
    };
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
    let failed = checked.has_errors();
    match format {
        Format::Json => {
            println!("{}", render::json(source, checked.diagnostics)?);
        }
        Format::Human => {
            let choice = match cli.color {
                Color::Always => ColorChoice::Always,
                Color::Never => ColorChoice::Never,
                Color::Auto if std::io::IsTerminal::is_terminal(&std::io::stdout()) => {
                    ColorChoice::Auto
                }
                Color::Auto => ColorChoice::Never,
            };
            let mut out = StandardStream::stdout(choice);
            render::human(&mut out, &files, &checked.diagnostics).context("writing diagnostics")?;
            if checked.diagnostics.is_empty() {
                let m = &checked.model;
                println!(
                    "{source}: ok ({} nodes, {} environments, {} configs, {} meshes, {} rollouts)",
                    m.nodes.len(),
                    m.environments.len(),
                    m.configs.len(),
                    m.meshes.len(),
                    m.rollouts.len()
                );
            }
        }
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
