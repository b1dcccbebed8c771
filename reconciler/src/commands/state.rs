//! `gitfleet state compact`: maintenance of the state branch, which gains a
//! commit per rollout step for as long as the fleet lives.

use std::process::ExitCode;

use anyhow::Context as _;
use chrono::{DateTime, Utc};

use crate::fmt::short_commit;
use crate::git::Author;
use crate::setup::GitArgs;

/// Maintain the state branch (the reconciler's rollout state, a commit per
/// step).
///
/// Reconcilers and `gitfleet status` read only the state branch's tip and
/// start from a shallow fetch, so a long history costs them nothing. Teams
/// who also want the branch itself small compact it now and then.
///
/// Example: squash what is older than 90 days, see first, then do it:
///   gitfleet state compact --repo git@github.com:acme/fleet.git --dry-run
///   gitfleet state compact --repo git@github.com:acme/fleet.git
#[derive(Debug, clap::Subcommand)]
#[command(verbatim_doc_comment)]
pub enum StateCommand {
    Compact(CompactArgs),
}

/// Squash the state branch's history older than --older-than into one
/// commit, keeping the old tip under a tag.
///
/// The newer commits are rebuilt on that one commit with their trees,
/// authors, dates and messages; the rollout state at the tip is exactly
/// what it was. The trade-off: `git log` of the state branch then starts at
/// the squash, and the audit log of older steps (when each step advanced,
/// was held or rolled back, and why) moves to the tag, which must be kept
/// for it (the tag is pushed before the branch is replaced). Clones that hold the old history
/// keep it until they fetch; reconcilers follow the new tip on their next
/// fetch, and one whose state push loses the race rebuilds its change on
/// it as after any lost race.
///
/// The branch is replaced only if it still points where the compaction
/// started; if a reconciler committed meanwhile, nothing is replaced and
/// the command says to run again.
///
/// Examples:
///   gitfleet state compact --dry-run                    # what would go
///   gitfleet state compact --older-than 30d
///   gitfleet state compact --tag audit/state-2026
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct CompactArgs {
    #[command(flatten)]
    git: GitArgs,
    /// Where the local mirror of the repo is kept (the whole state branch
    /// is fetched into it).
    #[arg(
        long,
        env = "GITFLEET_STATE_CACHE",
        default_value = ".gitfleet/state-mirror"
    )]
    cache: std::path::PathBuf,
    /// Squash commits older than this (by committer date), e.g. 90d, 26w.
    #[arg(long, default_value = "90d", value_parser = humantime::parse_duration)]
    older_than: std::time::Duration,
    /// The tag that keeps the old history (default:
    /// gitfleet/state-archive/<UTC time, e.g. 20261203T171800Z>).
    #[arg(long)]
    tag: Option<String>,
    /// Build the compacted branch in the mirror and say what it holds;
    /// push nothing.
    #[arg(long)]
    dry_run: bool,
}

pub fn run(cmd: &StateCommand, now: DateTime<Utc>) -> anyhow::Result<ExitCode> {
    match cmd {
        StateCommand::Compact(args) => compact(args, now),
    }
}

fn compact(args: &CompactArgs, now: DateTime<Utc>) -> anyhow::Result<ExitCode> {
    let older_than =
        chrono::Duration::from_std(args.older_than).context("--older-than is too long")?;
    let cutoff = now - older_than;
    let tag = args
        .tag
        .clone()
        .unwrap_or_else(|| format!("gitfleet/state-archive/{}", now.format("%Y%m%dT%H%M%SZ")));
    let mirror = crate::setup::open_mirror(&args.git, &args.cache)?;
    let branch = mirror.state_branch().to_owned();
    println!("fetching the whole history of {branch}");
    let Some(c) = mirror.compact_state(cutoff.timestamp(), &Author::default())? else {
        println!(
            "nothing to compact: fewer than two commits of {branch} are older than {}",
            cutoff.format("%Y-%m-%d %H:%M UTC")
        );
        return Ok(ExitCode::SUCCESS);
    };
    println!(
        "{branch} at {}: {} commits",
        short_commit(&c.old_tip.to_string()),
        c.squashed + c.kept
    );
    println!(
        "squash the {} commits older than {} ({}..{}) into one: {}",
        c.squashed,
        cutoff.format("%Y-%m-%d %H:%M UTC"),
        short_commit(&c.oldest.to_string()),
        short_commit(&c.newest_squashed.to_string()),
        short_commit(&c.root.to_string())
    );
    println!(
        "rebuild the {} newer commits on it: new tip {} (the same files as {})",
        c.kept,
        short_commit(&c.new_tip.to_string()),
        short_commit(&c.old_tip.to_string())
    );
    if args.dry_run {
        println!("dry run: tag {tag} and the new {branch} not pushed");
        return Ok(ExitCode::SUCCESS);
    }
    mirror.publish_compaction(&c, &tag)?;
    println!(
        "pushed tag {tag} at {} (the whole old history)",
        short_commit(&c.old_tip.to_string())
    );
    println!(
        "pushed {branch}: {} -> {}",
        short_commit(&c.old_tip.to_string()),
        short_commit(&c.new_tip.to_string())
    );
    Ok(ExitCode::SUCCESS)
}
