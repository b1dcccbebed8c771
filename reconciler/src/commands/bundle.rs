//! `gitfleet bundle`: building bundles from a fleet repo, and looking into,
//! checking and comparing bundle files.
//!
//! Every command that reads a bundle runs the agents' verifier on it first
//! (`verify_bundle`), so what it shows is what an agent would accept.

use std::collections::BTreeSet;
use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Subcommand, ValueEnum};
use codespan_reporting::term::termcolor::StandardStream;
use gitfleet_policy::{ConfigDir, FleetModel};
use gitfleet_schemas::trust::BundleRef;
use gitfleet_schemas::verify::{
    bundle_digest, verify_bundle, Bundle, Limits, Verified, VerifyError,
};

use super::{check, Color};
use crate::bundles::{difference, sbom_counts};
use crate::source;
use gitfleet_io::write;

#[derive(Debug, Subcommand)]
pub enum BundleCommand {
    Build(BuildArgs),
    Inspect(InspectArgs),
    Verify(VerifyArgs),
    Diff(DiffArgs),
}

/// Build a bundle for each config of a fleet repo.
///
/// Checks the repo first and builds nothing when it has errors (they are
/// printed as by `gitfleet check`). Each bundle is written as
/// DIR/<sha256 hex>.tar.zst; a file that already holds the same bytes is
/// left alone. The same repo and source commit give the same bytes on any
/// machine.
///
/// The source commit recorded in each bundle is the commit of --rev; for
/// the working tree, the HEAD commit of the git repository around PATH (with
/// a warning when files differ from it), or `worktree` outside git.
///
/// Exit status: 0 when built, 1 when the repo has errors, 2 when the build
/// could not run.
///
/// Examples:
///   gitfleet bundle build examples/fleet-repo -o bundles
///   gitfleet bundle build --rev origin/main --config edge --dry-run
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct BuildArgs {
    /// The fleet repo: a directory (or, with --rev, any path inside a git repository).
    #[arg(default_value = ".")]
    path: PathBuf,

    /// Build from this git revision (branch, tag, commit) instead of the files on disk.
    #[arg(long, value_name = "REV")]
    rev: Option<String>,

    /// Build only this config (repeat for more; default: every config).
    #[arg(long = "config", value_name = "NAME")]
    configs: Vec<String>,

    /// The directory bundles are written to.
    #[arg(short, long, value_name = "DIR", default_value = "bundles")]
    output: PathBuf,

    /// Show what would be built, with digests, without writing anything.
    #[arg(long)]
    dry_run: bool,

    /// Record this as the source commit instead of the one found in git.
    #[arg(long, value_name = "ID", env = "GITFLEET_SOURCE_COMMIT")]
    source_commit: Option<String>,
}

/// Check a bundle file and show its manifest and SBOM summary.
///
/// Example:
///   gitfleet bundle inspect bundles/<hex>.tar.zst --format json
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct InspectArgs {
    /// The bundle file (.tar.zst).
    file: PathBuf,

    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Human)]
    format: Format,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Format {
    /// Aligned text.
    Human,
    /// One JSON document: digest, length, manifest and SBOM counts.
    Json,
}

/// Verify a bundle file as an agent does before it stages it.
///
/// Checks length and digest against the reference (by default the file's
/// own, which checks only the contents), then every entry: regular files
/// under the bundle root, within the size limits, each matching the
/// manifest.
///
/// Exit status: 0 when the bundle is accepted, 1 when it is refused (the
/// reason is printed), 2 when the file cannot be read.
///
/// Example (the digest and length a channel manifest names):
///   gitfleet bundle verify edge.tar.zst --digest sha256:<hex> --length 4242
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct VerifyArgs {
    /// The bundle file (.tar.zst).
    file: PathBuf,

    /// The digest the bundle must have: sha256:<64 hex digits> (default: its own).
    #[arg(long, value_name = "DIGEST", value_parser = parse_digest)]
    digest: Option<String>,

    /// The length in bytes the bundle must have (default: its own).
    #[arg(long, value_name = "BYTES")]
    length: Option<u64>,
}

/// Show how two bundles differ, file by file, as a unified diff.
///
/// Both bundles are verified first. Files only in one are listed; text
/// files in both are diffed line by line.
///
/// Exit status: 0 when the bundles are identical, 1 when they differ, 2
/// when one cannot be read or is refused (like diff(1)).
///
/// Example:
///   gitfleet bundle diff bundles/<old>.tar.zst bundles/<new>.tar.zst
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct DiffArgs {
    /// The old bundle.
    a: PathBuf,
    /// The new bundle.
    b: PathBuf,
}

pub fn run(cmd: &BundleCommand, color: Color) -> anyhow::Result<ExitCode> {
    match cmd {
        BundleCommand::Build(args) => build(args, color),
        BundleCommand::Inspect(args) => inspect(args),
        BundleCommand::Verify(args) => verify(args),
        BundleCommand::Diff(args) => diff(args),
    }
}

fn parse_digest(s: &str) -> Result<String, String> {
    let hex = s.strip_prefix("sha256:").unwrap_or(s);
    if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(format!("sha256:{}", hex.to_ascii_lowercase()))
    } else {
        Err(format!("`{s}` is not sha256:<64 hex digits>"))
    }
}

fn build(args: &BuildArgs, color: Color) -> anyhow::Result<ExitCode> {
    // Resolve the revision once, so the files and the recorded commit agree
    // even if the branch moves meanwhile.
    let rev = match &args.rev {
        Some(rev) => Some(source::resolve_commit(&args.path, rev)?),
        None => None,
    };
    let loaded = check::load(&args.path, rev.as_deref())?;
    if !loaded.checked.diagnostics.is_empty() {
        let choice = color.choice(std::io::stderr().is_terminal());
        check::print_diagnostics(StandardStream::stderr(choice), &loaded)?;
    }
    if loaded.checked.has_errors() {
        eprintln!("error: {} has errors; no bundle was built", loaded.source);
        return Ok(ExitCode::from(1));
    }
    let commit = match (&args.source_commit, rev) {
        (Some(id), _) => {
            anyhow::ensure!(
                !id.is_empty() && id.bytes().all(|b| b.is_ascii_graphic()),
                "--source-commit `{id}` must be non-empty printable ASCII without spaces"
            );
            id.clone()
        }
        (None, Some(commit)) => commit,
        (None, None) => match source::head_commit(&args.path) {
            Some((id, dirty)) => {
                if dirty {
                    tracing::warn!(
                        "{} differs from commit {id}, which the bundles record anyway; \
                         commit first or build with --rev HEAD",
                        args.path.display()
                    );
                }
                id
            }
            None => "worktree".to_owned(),
        },
    };
    let configs = select(&loaded.checked.model, &args.configs)?;
    if configs.is_empty() {
        println!("{}: no configs to bundle", loaded.source);
        return Ok(ExitCode::SUCCESS);
    }
    let width = configs.iter().map(|c| c.name.len()).max().unwrap_or(0);
    let bundles = configs
        .iter()
        .flat_map(|dir| dir.variants.keys().map(move |proxy| (*dir, proxy)));
    for (dir, proxy) in bundles {
        let built = gitfleet_policy::bundle::proxy_config(dir, proxy, &commit)
            .with_context(|| format!("building the bundle of config `{}` for {proxy}", dir.name))?;
        let hex = built.reference.digest.trim_start_matches("sha256:");
        let path = args.output.join(format!("{hex}.tar.zst"));
        let action = if args.dry_run {
            "would write"
        } else {
            store(&path, &built.bytes)?
        };
        println!(
            "{:<width$}  {}  {} bytes  {} files  for {proxy}  {action} {}",
            dir.name,
            built.reference.digest,
            built.reference.length,
            built.manifest.files.len(),
            path.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The configs to build: all, or the named ones (each must exist).
fn select<'a>(model: &'a FleetModel, names: &[String]) -> anyhow::Result<Vec<&'a ConfigDir>> {
    if names.is_empty() {
        return Ok(model.configs.values().collect());
    }
    let wanted: BTreeSet<&str> = names.iter().map(String::as_str).collect();
    for name in &wanted {
        if !model.configs.contains_key(*name) {
            let known: Vec<String> = model.configs.keys().map(|k| format!("`{k}`")).collect();
            anyhow::bail!(
                "config `{name}` is not in the fleet repo; known: {}",
                known.join(", ")
            );
        }
    }
    Ok(model
        .configs
        .values()
        .filter(|c| wanted.contains(c.name.as_str()))
        .collect())
}

/// Write a content-addressed bundle unless the same bytes are already there.
fn store(path: &Path, bytes: &[u8]) -> anyhow::Result<&'static str> {
    match std::fs::read(path) {
        Ok(existing) if existing == bytes => Ok("unchanged"),
        Ok(_) => {
            tracing::warn!(
                "{} does not hold the bytes its name says (corrupt or tampered); replacing it",
                path.display()
            );
            write::replace(path, bytes, None)?;
            Ok("replaced")
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            write::replace(path, bytes, None)?;
            Ok("wrote")
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Read a bundle file and verify it against `reference`, or its own digest
/// and length.
fn open(
    path: &Path,
    reference: Option<BundleRef>,
) -> anyhow::Result<Result<Verified<Bundle>, VerifyError>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let reference = reference.unwrap_or_else(|| BundleRef {
        digest: bundle_digest(&bytes),
        length: bytes.len() as u64,
    });
    Ok(verify_bundle(&reference, &bytes, Limits::default()))
}

/// A bundle that must verify against its own digest, or an error naming it.
fn open_valid(path: &Path) -> anyhow::Result<Verified<Bundle>> {
    open(path, None)?.with_context(|| format!("{} is not a valid bundle", path.display()))
}

fn plural(n: usize, word: &str) -> String {
    crate::fmt::count(n, word, &format!("{word}s"))
}

fn inspect(args: &InspectArgs) -> anyhow::Result<ExitCode> {
    let bundle = match open(&args.file, None)? {
        Ok(bundle) => bundle,
        Err(e) => {
            eprintln!("error: {}: {e}", args.file.display());
            return Ok(ExitCode::from(1));
        }
    };
    let m = &bundle.manifest;
    let sbom = sbom_counts(&bundle);
    match args.format {
        Format::Json => {
            let sbom = match &sbom {
                Ok(counts) => serde_json::Value::Object(
                    counts
                        .iter()
                        .map(|(k, n)| (k.clone(), serde_json::json!(n)))
                        .collect(),
                ),
                Err(reason) => serde_json::json!({ "error": reason }),
            };
            let doc = serde_json::json!({
                "file": args.file.display().to_string(),
                "digest": bundle.reference.digest,
                "length": bundle.reference.length,
                "manifest": m,
                "sbom": sbom,
            });
            println!("{}", serde_json::to_string_pretty(&doc)?);
        }
        Format::Human => {
            println!("bundle:         {}", args.file.display());
            println!("digest:         {}", bundle.reference.digest);
            println!("length:         {} bytes", bundle.reference.length);
            println!("name:           {}", m.name);
            let kind = serde_json::to_value(m.kind)?;
            println!("kind:           {}", kind.as_str().unwrap_or_default());
            println!("source commit:  {}", m.source_commit);
            println!("validator:      {}", m.validator);
            println!("files:          {}", m.files.len());
            let width = m
                .files
                .iter()
                .map(|f| f.size.to_string().len())
                .max()
                .unwrap_or(0);
            for f in &m.files {
                println!("  {:>width$}  sha256:{}  {}", f.size, f.sha256, f.path);
            }
            match &sbom {
                Ok(counts) => {
                    let parts: Vec<String> =
                        counts.iter().map(|(kind, n)| plural(*n, kind)).collect();
                    println!("sbom:           {}", parts.join(", "));
                }
                Err(reason) => println!("sbom:           unreadable: {reason}"),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn verify(args: &VerifyArgs) -> anyhow::Result<ExitCode> {
    let reference = if args.digest.is_some() || args.length.is_some() {
        let bytes = std::fs::read(&args.file)
            .with_context(|| format!("reading {}", args.file.display()))?;
        Some(BundleRef {
            digest: args.digest.clone().unwrap_or_else(|| bundle_digest(&bytes)),
            length: args.length.unwrap_or(bytes.len() as u64),
        })
    } else {
        None
    };
    match open(&args.file, reference)? {
        Ok(bundle) => {
            println!(
                "ok: {} ({})",
                bundle.reference.digest,
                plural(bundle.manifest.files.len(), "file")
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("error: {}: {e}", args.file.display());
            Ok(ExitCode::from(1))
        }
    }
}

fn diff(args: &DiffArgs) -> anyhow::Result<ExitCode> {
    let a = open_valid(&args.a)?;
    let b = open_valid(&args.b)?;
    if a.reference == b.reference {
        return Ok(ExitCode::SUCCESS);
    }
    let text = difference(&a, &b);
    if text.is_empty() {
        println!(
            "{} and {} hold the same files in different archives",
            args.a.display(),
            args.b.display()
        );
    } else {
        print!("{text}");
    }
    Ok(ExitCode::from(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_normalised() {
        let hex = "AB".repeat(32);
        assert_eq!(
            parse_digest(&format!("sha256:{hex}")).unwrap(),
            format!("sha256:{}", "ab".repeat(32))
        );
        assert_eq!(
            parse_digest(&hex).unwrap(),
            format!("sha256:{}", "ab".repeat(32))
        );
        assert!(parse_digest("sha256:abc").is_err());
        assert!(parse_digest(&format!("md5:{hex}")).is_err());
    }
}
