//! `gitfleet`: the operator CLI and (in time) the reconciler server.

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use codespan_reporting::term::termcolor::ColorChoice;
use tracing_subscriber::EnvFilter;

use gitfleet_reconciler::commands::{
    approve, bundle, check, events, keygen, mesh, migrate, reconcile, rollout, root, serve,
    simulate, state, status, up, Color,
};

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

    /// Log format on stderr. auto: JSON lines for `serve` and `reconcile`
    /// when stderr is not a terminal (a service's logs), human otherwise.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Auto, env = "GITFLEET_LOG_FORMAT")]
    log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Auto,
    Json,
    Human,
}

#[derive(Debug, Subcommand)]
enum Command {
    Up(up::UpArgs),
    Check(check::CheckArgs),
    Keygen(keygen::KeygenArgs),
    Reconcile(reconcile::ReconcileArgs),
    #[command(subcommand)]
    Rollout(rollout::RolloutCommand),
    Approve(approve::ApproveArgs),
    Status(status::StatusArgs),
    Events(events::EventsArgs),
    Serve(Box<serve::ServeArgs>),
    /// Work with the fleet's WireGuard meshes.
    ///
    /// Example: the configuration of a laptop that joins mesh backbone:
    ///   gitfleet mesh client backbone anna-laptop --key anna.key
    #[command(subcommand, verbatim_doc_comment)]
    Mesh(mesh::MeshCommand),
    /// Create, sign, rotate and verify the fleet's root of trust.
    ///
    /// The root (root/<version>.json) names the offline root keys and the
    /// online keys that sign channel manifests. Agents pin the root keys of
    /// fleet.kdl at enrollment and follow rotations one version at a time.
    ///
    /// Example: a first root, signed by two of three holders in turn:
    ///   gitfleet root init --fleet acme-edge --root-key r1.pub r2.pub r3.pub \
    ///       --root-threshold 2 --online-key online.pub --expires 365d -o root/1.json
    ///   gitfleet root sign root/1.json --key r1.key     # holder 1
    ///   gitfleet root sign root/1.json --key r2.key     # holder 2
    ///   gitfleet root verify root/*.json --fleet acme-edge \
    ///       --pinned r1.pub r2.pub r3.pub --threshold 2
    #[command(subcommand, verbatim_doc_comment)]
    Root(root::RootCommand),
    /// Build, inspect, verify and compare bundles.
    ///
    /// A bundle is a deterministic tar.zst of one config directory with its
    /// manifest.json and a CycloneDX SBOM, named by the sha256 of its bytes.
    ///
    /// Examples:
    ///   gitfleet bundle build examples/fleet-repo -o bundles
    ///   gitfleet bundle inspect bundles/<hex>.tar.zst
    ///   gitfleet bundle verify bundles/<hex>.tar.zst --digest sha256:<hex>
    ///   gitfleet bundle diff old.tar.zst new.tar.zst
    #[command(subcommand, verbatim_doc_comment)]
    Bundle(bundle::BundleCommand),
    Simulate(simulate::SimulateArgs),
    #[command(subcommand)]
    State(state::StateCommand),
    MigrateConfig(migrate::MigrateArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Simulated agents would each log every refused poll; the progress
    // lines summarise them.
    let quiet = match cli.command {
        Command::Simulate(_) => Quiet::Agents,
        // Logs would run through the progress block; it shows what matters.
        Command::Up(_) => Quiet::All,
        _ => Quiet::No,
    };
    let service = matches!(cli.command, Command::Serve(_) | Command::Reconcile(_));
    let json = match cli.log_format {
        LogFormat::Json => true,
        LogFormat::Human => false,
        LogFormat::Auto => service && !std::io::IsTerminal::is_terminal(&std::io::stderr()),
    };
    init_tracing(cli.verbose, cli.color, quiet, json);
    match run(&cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Whose logs are left out by default.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Quiet {
    No,
    Agents,
    All,
}

fn init_tracing(verbose: u8, color: Color, quiet: Quiet, json: bool) {
    // sentinel-config logs its own parse steps; they are noise here.
    let default = match verbose {
        0 if quiet == Quiet::All => "off",
        0 if quiet == Quiet::Agents => "warn,sentinel_config=error,gitfleet_agent=error",
        0 => "warn,sentinel_config=error",
        1 => "debug,sentinel_config=warn",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    if json {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
        return;
    }
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(
            color.choice(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                != ColorChoice::Never,
        )
        .init();
}

fn run(cli: &Cli) -> anyhow::Result<ExitCode> {
    // The one place the clock is read: commands take the time as a value.
    let now = chrono::Utc::now();
    match &cli.command {
        Command::Check(args) => check::run(args, cli.color),
        Command::Keygen(args) => keygen::keygen(args),
        Command::Reconcile(args) => reconcile::run(args),
        Command::Rollout(cmd) => rollout::run(cmd),
        Command::Approve(args) => approve::run(args, now),
        Command::Root(cmd) => root::run(cmd, now),
        Command::Bundle(cmd) => bundle::run(cmd, cli.color),
        Command::Simulate(args) => simulate::run(args),
        Command::Up(args) => up::run(args),
        Command::Status(args) => status::run(args),
        Command::Events(args) => events::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Mesh(cmd) => mesh::run(cmd),
        Command::MigrateConfig(args) => migrate::run(args),
        Command::State(cmd) => state::run(cmd, now),
    }
}
