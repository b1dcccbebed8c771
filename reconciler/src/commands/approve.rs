//! `gitfleet approve`: a signed approval of one commit for one environment,
//! committed to the state branch, for fleets that approve without GitHub
//! reviews.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context as _};
use chrono::{DateTime, Utc};
use gitfleet_policy::rules::EnvRules;
use gitfleet_schemas::approval::{approval_path, Approval};
use gitfleet_schemas::keyfile::KeyRole;
use gitfleet_schemas::trust::{Document as _, PublicKey};
use gitfleet_schemas::FleetFile;

use crate::git::{Author, StateCommit};
use crate::setup::GitArgs;

/// Approve a commit of the fleet repo for an environment.
///
/// Environments with `approvals N { users ...; }` in environments.kdl hold
/// a change in awaiting-approval until N of those users approve the commit
/// that brought it (the commit `gitfleet reconcile --dry-run` and the
/// rollout state name). This records your approval: signed with your
/// approver key (gitfleet keygen --approver), whose public half fleet.kdl
/// lists as `approver "NAME" key="..."`, and committed to the state branch
/// as approvals/<env>/<commit>/<name>.json. The reconciler verifies every
/// approval there on each pass. Approvals on GitHub pull requests are the
/// other way to approve.
///
/// Who may approve, and with which key, is what the rules in force in the
/// environment say (the commit `rules.json` on the state branch names for
/// it), not the branch tip: a commit that adds an approver cannot approve
/// itself. A change to the rules waits for approvals of the commit that
/// last changed fleet.kdl or environments.kdl; `gitfleet status` names it.
///
/// Examples:
///   gitfleet approve --repo https://git.example.com/fleet.git \
///       --env prod --key ~/.gitfleet/alice.key 2d7f9ab4bceb
///   gitfleet approve --repo .gitfleet/up/fleet.git --env prod \
///       --key .gitfleet/up/keys/approver-alice.key     # main's tip
///   gitfleet approve --env prod --key alice.key --all-waiting
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct ApproveArgs {
    /// The commit to approve: a full id or a unique prefix, on the spec
    /// branch (default: its tip).
    #[arg(value_name = "COMMIT", conflicts_with = "all_waiting")]
    commit: Option<String>,
    /// Approve every commit waiting for approvals in the environment (the
    /// changes at its approval gate and a pending change to its rules),
    /// listing each first.
    #[arg(long)]
    all_waiting: bool,
    /// The environment the commit may enter.
    #[arg(long, value_name = "ENV")]
    env: String,
    /// Your approver key file.
    #[arg(long, value_name = "FILE", env = "GITFLEET_APPROVER_KEY")]
    key: PathBuf,
    #[command(flatten)]
    git: GitArgs,
    /// Where a mirror of the repo is kept between runs (default: a
    /// temporary one).
    #[arg(long, value_name = "DIR")]
    cache: Option<PathBuf>,
}

pub fn run(args: &ApproveArgs, now: DateTime<Utc>) -> anyhow::Result<ExitCode> {
    let key = crate::keys::load(&args.key, KeyRole::Approver, "signing an approval")?;
    let temp;
    let cache = match &args.cache {
        Some(dir) => dir.clone(),
        None => {
            temp = tempfile::tempdir().context("creating a temporary mirror directory")?;
            temp.path().join("mirror")
        }
    };
    let mirror = crate::setup::open_mirror(&args.git, &cache)?;
    let heads = mirror.fetch()?;
    let files = mirror.files_at(heads.branch)?;
    let fleet = files
        .text(gitfleet_policy::model::FLEET_FILE)
        .and_then(|t| FleetFile::decode(t).value)
        .with_context(|| format!("fleet.kdl at {} cannot be read", heads.branch))?;
    // Who may approve, and with which key, is what the rules in force in
    // the environment say: a commit cannot add its own approver.
    let (_, state_files) = mirror.state_files()?;
    let record = crate::pass::rules::recorded(&state_files)?;
    let mut reader = crate::pass::rules::RulesReader::default();
    let (rules_commit, from) = match record.as_ref().and_then(|r| r.environments.get(&args.env)) {
        Some(r) => (r.commit.clone(), "the rules in force"),
        None => (
            heads.branch.to_string(),
            "the branch tip's rules (none recorded yet)",
        ),
    };
    let model = reader.model_at(&mirror, &rules_commit)?;
    let Some(in_force) = EnvRules::of(&model, &args.env, &rules_commit) else {
        bail!(
            "environment `{}` is not in environments.kdl at {}",
            args.env,
            &rules_commit[..12.min(rules_commit.len())]
        );
    };
    let at = format!(
        "{from}, from {}",
        &rules_commit[..12.min(rules_commit.len())]
    );
    // Owners approve in any environment whose rules name owners.
    let rule = in_force.approval_rule().cloned();
    if rule.is_none() && in_force.owners.is_empty() {
        bail!(
            "environment `{}` takes no approvals and names no owners under {at}: its changes need none",
            args.env
        );
    }
    let approver = in_force
        .approvers
        .iter()
        .find(|(_, k)| PublicKey::parse(k).ok() == Some(key.public))
        .map(|(name, _)| name.clone())
        .with_context(|| {
            let names: Vec<&str> = in_force.approvers.keys().map(String::as_str).collect();
            format!(
                "key {} in {} is not the key of one of {}'s approvers under {at} (approvers with keys: {})",
                key.public,
                args.key.display(),
                args.env,
                if names.is_empty() {
                    "none; teams approve on GitHub".to_owned()
                } else {
                    names.join(", ")
                }
            )
        })?;
    if let Some(p) = record
        .as_ref()
        .and_then(|r| r.environments.get(&args.env))
        .and_then(|r| r.pending.as_ref())
    {
        println!(
            "note: a change to the rules of {} waits for approvals of {}: {}",
            args.env,
            &p.commit[..12.min(p.commit.len())],
            p.reason
        );
    }
    let commits: Vec<git2::Oid> = if args.all_waiting {
        let state = gitfleet_policy::pass::parse_rollouts(&state_files)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let waiting = gitfleet_policy::approvals::waiting(&state, record.as_ref(), &args.env);
        if waiting.is_empty() {
            println!("nothing waits for approvals in {}", args.env);
            return Ok(ExitCode::SUCCESS);
        }
        println!("waiting for approval in {}:", args.env);
        let mut out = Vec::new();
        for w in &waiting {
            let mut what = w.rollouts.clone();
            if w.rules {
                what.push("its rules".to_owned());
            }
            println!(
                "  {}  {}",
                &w.commit[..12.min(w.commit.len())],
                what.join(", ")
            );
            out.push(git2::Oid::from_str(&w.commit).with_context(|| {
                format!(
                    "the state branch names `{}`, which is not a commit id",
                    w.commit
                )
            })?);
        }
        out
    } else {
        let spec = args.commit.as_deref().unwrap_or("");
        vec![if spec.is_empty() {
            heads.branch
        } else {
            mirror.commit_on(heads.branch, spec)?.with_context(|| {
                format!(
                    "`{spec}` names no commit of {} up to {}",
                    args.git.branch, heads.branch
                )
            })?
        }]
    };
    let mut changes = BTreeMap::new();
    let mut paths = Vec::new();
    for commit in &commits {
        let approval = Approval {
            fleet: fleet.name.value.clone(),
            environment: args.env.clone(),
            commit: commit.to_string(),
            approver: approver.clone(),
            at: now,
        };
        let mut envelope = approval.envelope();
        envelope
            .sign(&key.key)
            .map_err(|e| anyhow::anyhow!("signing the approval: {e}"))?;
        let path = approval_path(&approval.environment, &approval.commit, &approver);
        changes.insert(path.clone(), Some(envelope.to_json()));
        paths.push(path);
    }
    let shorts: Vec<String> = commits
        .iter()
        .map(|c| c.to_string()[..12].to_owned())
        .collect();
    let short = shorts.join(", ");
    let message = format!(
        "approve {short} for {}, by {approver}\n\n{}\n",
        args.env,
        match rule.map(|r| r.required.value) {
            None => "An approval by an owner of the paths it touches.".to_owned(),
            Some(1) => "1 approval is required.".to_owned(),
            Some(n) => format!("{n} approvals are required."),
        }
    );
    let author = Author {
        name: approver.clone(),
        email: "gitfleet-approve@localhost".to_owned(),
    };
    match mirror.commit_state(&changes, &message, &author)? {
        StateCommit::Committed { oid } => {
            println!(
                "approved {short} for {} as {approver}: {} in state commit {}",
                args.env,
                paths.join(", "),
                &oid.to_string()[..12]
            );
        }
        StateCommit::NoChange => {
            println!("{approver} had already approved {short} for {}", args.env)
        }
    }
    Ok(ExitCode::SUCCESS)
}
