//! `gitfleet reconcile`: passes in the foreground, or one with --once;
//! `--dry-run` prints what a pass would do and writes nothing.

use chrono::Utc;

use crate::pass::{run_passes, Outcome};
use crate::setup::ReconcilerArgs;

/// Reconcile the fleet: build and upload bundles for every valid config,
/// plan every rollout, commit rollout state to the state branch and publish
/// signed channel manifests.
///
/// Runs forever (polling git every --interval) unless --once is given. A
/// failed pass is logged and the next one starts on schedule; git is always
/// re-read. Several replicas may run: a lease in the store makes one the
/// writer.
///
/// Examples:
///   gitfleet reconcile --once --dry-run --repo . --online-key online.key
///   gitfleet reconcile --repo https://git.example.com/fleet.git \
///       --store s3://acme-fleet/edge --online-key /etc/gitfleet/online.key
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct ReconcileArgs {
    #[command(flatten)]
    pub reconciler: ReconcilerArgs,
    /// Run one pass and exit.
    #[arg(long)]
    once: bool,
    /// Compute and print the plan; upload, commit and publish nothing.
    #[arg(long)]
    dry_run: bool,
}

pub fn run(args: &ReconcileArgs) -> anyhow::Result<std::process::ExitCode> {
    use anyhow::Context as _;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let mut reconciler = args.reconciler.open()?;
    runtime.block_on(async {
        if args.once {
            let outcome = reconciler.once(Utc::now(), args.dry_run).await?;
            report(&outcome, args.dry_run);
            return Ok(std::process::ExitCode::SUCCESS);
        }
        let (trigger_tx, trigger) = tokio::sync::mpsc::channel(1);
        let _watcher = args.reconciler.watch(trigger_tx);
        let (stop_tx, stop) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            gitfleet_agent::signals::shutdown().await;
            tracing::info!("stopping");
            let _ = stop_tx.send(true);
        });
        let dry_run = args.dry_run;
        run_passes(
            &mut reconciler,
            args.reconciler.interval,
            dry_run,
            trigger,
            stop,
            |pass, _| {
                if let Ok(outcome) = pass {
                    report(outcome, dry_run);
                }
            },
        )
        .await;
        Ok(std::process::ExitCode::SUCCESS)
    })
}
fn report(o: &Outcome, dry_run: bool) {
    print!("{}", o.plan);
    print!("{}", o.rules);
    for line in &o.allocations {
        println!("{line}");
    }
    println!(
        "commit {}: {} error(s) in the fleet repo",
        &o.commit[..o.commit.len().min(12)],
        o.errors
    );
    if dry_run {
        println!("dry run: nothing uploaded, committed or published");
        return;
    }
    if let Some(leader) = &o.follower_of {
        println!("follower: {leader} holds the lease; nothing written");
        return;
    }
    for d in &o.bundles_uploaded {
        println!("uploaded bundle {d}");
    }
    match &o.state_commit {
        Some(c) => println!("state commit {}", &c[..c.len().min(12)]),
        None => println!("state unchanged"),
    }
    for (env, serial) in &o.manifests {
        println!("published channels/{env}.json serial {serial}");
    }
    for (reason, n) in &o.reports_ignored {
        println!("ignored {n} status report(s): {reason}");
    }
    if o.approvals_ignored > 0 {
        println!(
            "ignored {} approval(s) on the state branch (run with -v for why)",
            o.approvals_ignored
        );
    }
}
