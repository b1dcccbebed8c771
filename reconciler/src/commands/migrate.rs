//! `gitfleet migrate-config`: the Zentinel 0.6 form of a config directory's
//! `sentinel.kdl`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;
use gitfleet_policy::migrate::{self, Note};
use gitfleet_policy::proxy;
use gitfleet_policy::LineIndex;
use gitfleet_schemas::{ProxyKind, Span};

/// Write the Zentinel 0.6 form of a config's Sentinel 0.4 `sentinel.kdl`.
///
/// Makes the rewrites that are mechanical and keep what the config did on
/// Sentinel (`server` → `system`, agents' `protocol-version` dropped,
/// `cipher-suites` as one `cipher-suite` per suite, earlier copies of a
/// repeated top-level block dropped, Zentinel's own metrics server
/// switched off), lists with their lines what needs a person, and
/// validates the result with zentinel-config 0.6.45. Comments and layout
/// stay as written.
///
/// Without --write the result goes to standard output and the notes to
/// standard error; with it, a result Zentinel refuses is not written
/// (unless --force). Exit status: 0 when Zentinel accepts the result, 1 when
/// it still refuses it (the problems are listed), 2 when the config could
/// not be read or the result not written.
///
/// Examples:
///   gitfleet migrate-config configs/edge              # print the Zentinel form
///   gitfleet migrate-config configs/edge --write      # write configs/edge/zentinel.kdl
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct MigrateArgs {
    /// The config directory (`configs/<name>`), or its `sentinel.kdl`.
    path: PathBuf,

    /// Write `zentinel.kdl` beside `sentinel.kdl` (refused when it exists,
    /// unless --force) instead of printing it.
    #[arg(long)]
    write: bool,

    /// With --write, replace an existing `zentinel.kdl`, and write the
    /// result even when Zentinel refuses it.
    #[arg(long, requires = "write")]
    force: bool,
}

pub fn run(args: &MigrateArgs) -> anyhow::Result<ExitCode> {
    let source = if args.path.is_dir() {
        args.path.join(ProxyKind::Sentinel.entry())
    } else {
        args.path.clone()
    };
    let text = std::fs::read_to_string(&source)
        .with_context(|| format!("reading {}", source.display()))?;
    let migrated = match migrate::to_zentinel(&text) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("error: {} is not KDL v2: {e}", source.display());
            return Ok(ExitCode::from(2));
        }
    };
    let lines = LineIndex::new(&text);
    let at = |span: Span| {
        let (line, column) = lines.position(span.start);
        format!("{}:{line}:{column}", source.display())
    };
    let print = |kind: &str, notes: &[Note]| {
        for n in notes {
            eprintln!("{kind}: {}: {}", at(n.span), n.message);
        }
    };
    print("rewrote", &migrated.done);
    print("left for you", &migrated.left);
    let refused = proxy::validate(ProxyKind::Zentinel, &migrated.text).err();
    let target = proxy::default_of(ProxyKind::Zentinel);
    match &refused {
        None => eprintln!("ok: {target} accepts the result"),
        Some(problems) => {
            let result = LineIndex::new(&migrated.text);
            for p in problems {
                let (line, _) = result.position(p.span.start);
                eprintln!(
                    "error: {target} still refuses the result at line {line}: {}",
                    p.message
                );
                if let Some(help) = &p.help {
                    eprintln!("    help: {help}");
                }
            }
        }
    }
    if args.write {
        let dest = source.with_file_name(ProxyKind::Zentinel.entry());
        if refused.is_some() && !args.force {
            eprintln!(
                "error: {} not written: {target} refuses the result; fix what is listed above in {} and run again, or pass --force to write it anyway",
                dest.display(),
                source.display()
            );
            return Ok(ExitCode::from(1));
        }
        write_new(&dest, &migrated.text, args.force)?;
        eprintln!("wrote {}", dest.display());
    } else {
        print!("{}", migrated.text);
    }
    Ok(if refused.is_some() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn write_new(dest: &Path, text: &str, force: bool) -> anyhow::Result<()> {
    if force {
        gitfleet_io::write::replace(dest, text.as_bytes(), None)?;
    } else {
        gitfleet_io::write::new_file(dest, text.as_bytes(), 0o644).map_err(|e| match e {
            gitfleet_io::write::WriteError::Exists { .. } => {
                anyhow::anyhow!("{} exists; pass --force to replace it", dest.display())
            }
            e => e.into(),
        })?;
    }
    Ok(())
}
