//! `gitfleet reconcile`: passes in the foreground, or one with --once;
//! `--dry-run` prints what a pass would do and writes nothing.

use chrono::Utc;

use crate::pass::{run_passes, Done, Mode, Outcome};
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
    /// Observe and decide, print the plan with every write it would make,
    /// in order; upload, commit and publish nothing.
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
    let mode = if args.dry_run {
        Mode::DryRun
    } else {
        Mode::Execute
    };
    runtime.block_on(async {
        if args.once {
            let outcome = reconciler.pass(Utc::now(), mode).await?;
            report(&outcome);
            reconciler.notifier.finish(NOTIFY_BUDGET).await;
            return Ok(std::process::ExitCode::SUCCESS);
        }
        let (trigger_tx, trigger) = tokio::sync::mpsc::channel(1);
        let _watcher = args.reconciler.watch(trigger_tx);
        let (stop_tx, stop) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            gitfleet_io::signals::shutdown().await;
            tracing::info!("stopping");
            let _ = stop_tx.send(true);
        });
        run_passes(
            &mut reconciler,
            args.reconciler.interval,
            mode,
            trigger,
            stop,
            |pass, _| {
                if let Ok(outcome) = pass {
                    report(outcome);
                }
            },
        )
        .await;
        Ok(std::process::ExitCode::SUCCESS)
    })
}
/// How long `--once` waits for its notifications before it exits; what is
/// not sent by then stays in the outbox for the next run.
const NOTIFY_BUDGET: std::time::Duration = std::time::Duration::from_secs(30);

/// What a pass did, as `gitfleet reconcile` prints it: the whole plan,
/// writes and all, for a dry run; what was written otherwise.
fn report(o: &Outcome) {
    let p = &o.plan;
    let written = match &o.done {
        Done::DryRun => {
            print!("{p}");
            // Who would be told of the state change this pass plans.
            let model = &o.observed.checked.checked.model;
            if let (Some(fleet), Ok(before)) = (model.fleet.as_ref(), o.observed.state()) {
                let after = p.rollouts.state();
                let told = gitfleet_policy::notify::planned(
                    &fleet.doc.name.value,
                    &fleet.doc.notify,
                    &before,
                    &after,
                );
                for (receiver, n) in told {
                    println!("would tell {receiver}: {} ({})", n.summary, n.kind);
                }
            }
            println!("dry run: nothing uploaded, committed, published or told");
            return;
        }
        Done::Follower { leader } => {
            print!("{}{}", p.rollouts, p.rules);
            println!("follower: {leader} holds the lease; nothing written");
            return;
        }
        Done::Wrote(w) => w,
    };
    print!("{}{}", p.rollouts, p.rules);
    for line in &p.allocations {
        println!("{line}");
    }
    println!(
        "commit {}: {} error(s) in the fleet repo",
        &p.commit[..p.commit.len().min(12)],
        p.errors
    );
    for d in &written.bundles_uploaded {
        println!("uploaded bundle {d}");
    }
    match &written.state_commit {
        Some(c) => println!("state commit {}", &c[..c.len().min(12)]),
        None => println!("state unchanged"),
    }
    for (env, serial) in &written.manifests {
        println!("published channels/{env}.json serial {serial}");
    }
    for (reason, n) in &o.observed.reports_ignored {
        println!("ignored {n} status report(s): {reason}");
    }
    for (mesh, reason) in &p.mesh_errors {
        println!("mesh {mesh} not built, its last good bundle stays: {reason}");
    }
    if !p.approvals_ignored.is_empty() {
        println!(
            "ignored {} approval(s) on the state branch (run with -v for why)",
            p.approvals_ignored.len()
        );
    }
}
