//! `gitfleet rollout pause|resume|rollback NAME`: the edits of
//! `rollouts/<name>.kdl` that steer a rollout, committed for the operator so
//! the audit log is `git log`.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{bail, Context as _};
use gitfleet_schemas::RolloutFile;

use crate::steer::Steer;

/// Pause, resume or roll back a rollout by committing an edit of its file.
///
/// The command edits rollouts/<NAME>.kdl in the fleet repo's working tree,
/// checks the whole repo still passes `gitfleet check`, commits, and pushes
/// the current branch with `git push` (your usual credentials apply). The
/// reconciler acts on the next pass; `git revert` undoes it.
///
/// Examples:
///   gitfleet rollout pause edge            # stop before the next step
///   gitfleet rollout resume edge
///   gitfleet rollout rollback edge -m "p99 regression, INC-412"
#[derive(Debug, clap::Subcommand)]
#[command(verbatim_doc_comment)]
pub enum RolloutCommand {
    /// Hold the rollout at its current step (`paused #true`).
    Pause(Target),
    /// Let a paused rollout continue (removes `paused`).
    Resume(Target),
    /// Return every node of the rollout to its previous bundle and hold
    /// there (`rollback #true`); remove the line, or revert, to roll forward.
    Rollback(Target),
}

#[derive(Debug, clap::Args)]
pub struct Target {
    /// The rollout: rollouts/<NAME>.kdl.
    name: String,
    /// The fleet repo working tree.
    #[arg(long, default_value = ".")]
    repo: PathBuf,
    /// Why, for the commit message.
    #[arg(short, long)]
    message: Option<String>,
    /// Commit but do not push.
    #[arg(long)]
    no_push: bool,
}

pub fn run(cmd: &RolloutCommand) -> anyhow::Result<ExitCode> {
    let (verb, target) = match cmd {
        RolloutCommand::Pause(t) => ("pause", t),
        RolloutCommand::Resume(t) => ("resume", t),
        RolloutCommand::Rollback(t) => ("rollback", t),
    };
    let rel = format!("rollouts/{}.kdl", target.name);
    let path = target.repo.join(&rel);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "reading {}: is `{}` a rollout of this fleet repo",
            path.display(),
            target.name
        )
    })?;
    let steer = match cmd {
        RolloutCommand::Pause(_) => Steer::Pause,
        RolloutCommand::Resume(_) => Steer::Resume,
        RolloutCommand::Rollback(_) => Steer::Rollback,
    };
    let edited = steer.edit(&text);
    if edited == text {
        println!("{rel} already says so; nothing to commit");
        return Ok(ExitCode::SUCCESS);
    }
    let decoded = RolloutFile::decode(&edited);
    if let Some(e) = decoded.errors.first() {
        bail!("editing {rel} would make it invalid: {}", e.message);
    }

    let repo = git2::Repository::discover(&target.repo)
        .with_context(|| format!("{} is not in a git repository", target.repo.display()))?;
    let workdir = repo
        .workdir()
        .context("the fleet repo has no working tree")?
        .to_owned();
    let repo_rel = relative_to(&workdir, &path)?;
    let status = repo.status_file(&repo_rel).unwrap_or(git2::Status::CURRENT);
    if !status.is_empty() && status != git2::Status::CURRENT {
        bail!("{rel} has uncommitted changes; commit or discard them first");
    }

    // The whole repo must still check clean with the edit.
    let (mut files, _) = crate::source::read_worktree(&target.repo)?;
    files.insert(rel.clone(), edited.clone().into_bytes());
    let checked = gitfleet_policy::check(&files);
    if checked.has_errors() {
        for d in checked
            .diagnostics
            .iter()
            .filter(|d| d.severity == gitfleet_schemas::Severity::Error)
        {
            eprintln!("{d}");
        }
        bail!("the fleet repo has errors; fix them before steering rollouts");
    }

    gitfleet_io::write::replace(&path, edited.as_bytes(), None)?;
    let mut index = repo.index()?;
    index.add_path(&repo_rel)?;
    index.write()?;
    let tree = repo.find_tree(index.write_tree()?)?;
    let sig = repo
        .signature()
        .context("git has no user.name/user.email configured for the commit")?;
    let parent = repo.head()?.peel_to_commit()?;
    let message = steer.message(
        &target.name,
        target.message.as_deref(),
        &format!("Requested with `gitfleet rollout {verb} {}`.", target.name),
    );
    let oid = repo.commit(Some("HEAD"), &sig, &sig, &message, &tree, &[&parent])?;
    let short = &oid.to_string()[..12];
    println!("committed {short}: rollout {}: {verb}", target.name);

    if target.no_push {
        println!("not pushed (--no-push); the reconciler acts once it is on the tracked branch");
        return Ok(ExitCode::SUCCESS);
    }
    let out = Command::new("git")
        .arg("push")
        .current_dir(&workdir)
        .output()
        .context("running git push")?;
    if !out.status.success() {
        bail!(
            "committed {short} locally but `git push` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    println!("pushed; the reconciler acts on its next pass");
    Ok(ExitCode::SUCCESS)
}

fn relative_to(workdir: &Path, path: &Path) -> anyhow::Result<PathBuf> {
    let abs = path.canonicalize()?;
    let root = workdir.canonicalize()?;
    Ok(abs
        .strip_prefix(&root)
        .context("the rollout file is outside the repository")?
        .to_owned())
}
