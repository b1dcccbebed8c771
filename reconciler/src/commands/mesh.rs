//! `gitfleet mesh client`: the WireGuard configuration of a peer that is
//! not a fleet node (a laptop, a phone, a partner's gateway).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use gitfleet_agent::wireguard::PrivateKey;
use gitfleet_policy::mesh;
use gitfleet_schemas::state::MeshAllocation;
use gitfleet_schemas::Severity;

use super::check;

/// Work with the WireGuard meshes of a fleet repo.
#[derive(Debug, clap::Subcommand)]
pub enum MeshCommand {
    Client(ClientArgs),
}

/// Print the wg-quick configuration of an external peer of a mesh.
///
/// An external peer is `peer "NAME" public-key="…" address="…"` in
/// meshes/MESH.kdl: the members peer with it like with a member (in a
/// hub-and-spoke mesh, the hubs do). Its private key never enters git: it
/// stays in the file --key names, made on the machine that runs this.
///
/// A peer not yet in the mesh file: the key file is made (mode 0600) when
/// missing, and the `peer` line to add, with its public key and a free
/// address, is printed. Once the line is merged and the reconciler has
/// given the members their addresses, the same command prints the
/// configuration: the peer's address and, for every member it peers
/// with, its key, endpoint and the addresses routed to it.
///
/// Addresses are read from the state branch (origin/<state-branch>, else
/// <state-branch>, of the git repository around --repo): `git fetch`
/// first for the latest.
///
/// Examples:
///   gitfleet mesh client backbone anna-laptop --key anna.key
///       # prints: peer "anna-laptop" public-key="…" address="10.40.0.254"
///   gitfleet mesh client backbone anna-laptop --key anna.key -o wg-backbone.conf
///   wg-quick up ./wg-backbone.conf
///       # -o writes the file with mode 0600: it holds the private key
///   gitfleet mesh client backbone anna-laptop --key anna.key --qr   # for the mobile app
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct ClientArgs {
    /// The mesh: meshes/MESH.kdl.
    mesh: String,

    /// The external peer's name in the mesh file.
    peer: String,

    /// The peer's private key file (base64, as `wg genkey` writes it); made
    /// when missing.
    #[arg(long, value_name = "FILE")]
    key: PathBuf,

    /// The fleet repo (a directory; with --rev, any path in its git
    /// repository).
    #[arg(long, default_value = ".", value_name = "DIR")]
    repo: PathBuf,

    /// Read the mesh file at this git revision instead of the files on disk.
    #[arg(long, value_name = "REV")]
    rev: Option<String>,

    /// Read the tunnel addresses at this ref instead of the state branch.
    #[arg(long, value_name = "REF")]
    state_ref: Option<String>,

    /// Print the configuration as a QR code (the WireGuard mobile apps scan
    /// it) instead of as text.
    #[arg(long, conflicts_with = "output")]
    qr: bool,

    /// Write the configuration to FILE (mode 0600, replacing it) instead of
    /// printing it: it holds the peer's private key.
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
}

pub fn run(cmd: &MeshCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        MeshCommand::Client(args) => client(args),
    }
}

fn client(args: &ClientArgs) -> anyhow::Result<ExitCode> {
    let loaded = check::load(&args.repo, args.rev.as_deref())?;
    let model = &loaded.checked.model;
    let Some(located) = model.meshes.get(&args.mesh) else {
        let known: Vec<&str> = model.meshes.keys().map(String::as_str).collect();
        anyhow::bail!(
            "{} has no mesh `{}` (meshes/{}.kdl); its meshes: {}",
            loaded.source,
            args.mesh,
            args.mesh,
            if known.is_empty() {
                "none".to_owned()
            } else {
                known.join(", ")
            }
        );
    };
    let file = &located.path;
    if let Some(d) = loaded
        .checked
        .diagnostics
        .iter()
        .find(|d| d.severity == Severity::Error && d.file == *file)
    {
        anyhow::bail!(
            "{file}:{}: {}; `gitfleet check` lists every problem",
            d.line,
            d.message
        );
    }
    let doc = &located.doc;
    let net = mesh::parse_cidr(&args.mesh, &doc.cidr.value)?;
    if model.nodes.iter().any(|n| n.doc.id.value == args.peer) {
        anyhow::bail!(
            "`{}` is a fleet node: its agent configures its interface; external peers have names of their own",
            args.peer
        );
    }
    let (key, made) = PrivateKey::read_or_create(&args.key)?;
    if made {
        eprintln!(
            "made {} (mode 0600): the private key of `{}`; keep it there, it never goes into git",
            args.key.display(),
            args.peer
        );
    }
    let branch = model
        .fleet
        .as_ref()
        .and_then(|f| f.doc.state_branch.as_ref())
        .map_or("gitfleet/state", |b| b.value.as_str());
    let state = read_allocation(&args.repo, args.state_ref.as_deref(), branch, &args.mesh)?;

    let Some(peer) = doc.peers.iter().find(|p| p.name.value == args.peer) else {
        let allocation = state
            .as_ref()
            .map(|(_, a)| mesh::from_state(a))
            .unwrap_or_default();
        // Departed members' held addresses are taken too.
        let mut taken = mesh::external_addresses(doc);
        taken.extend(
            state
                .iter()
                .flat_map(|(_, a)| a.held.values().map(|h| h.address)),
        );
        let address = mesh::free_address_from_top(net, &allocation, &taken)
            .with_context(|| format!("mesh `{}` has no free address in {net}", args.mesh))?;
        println!(
            "peer \"{}\" public-key=\"{}\" address=\"{address}\"",
            args.peer,
            key.public()
        );
        eprintln!(
            "`{}` is not a peer of mesh `{}` yet: add the line above to {file} in a pull request, \
             then run this again once the reconciler has run",
            args.peer, args.mesh
        );
        return Ok(ExitCode::SUCCESS);
    };
    if peer.public_key.value.trim() != key.public().to_string() {
        anyhow::bail!(
            "{} holds the private key of another public key ({}) than {file} gives peer `{}` ({}): pass the key file made when the peer was added",
            args.key.display(),
            key.public(),
            args.peer,
            peer.public_key.value
        );
    }
    let Some((at, recorded)) = state else {
        anyhow::bail!(
            "no tunnel addresses for mesh `{}` yet (no meshes/{}.json on the state branch `{branch}` of {}): \
             the reconciler writes them on its first pass; `git fetch` for the latest",
            args.mesh,
            args.mesh,
            args.repo.display()
        );
    };
    let allocation = mesh::from_state(&recorded);
    let members = mesh::members(model, doc);
    let (placed, waiting): (Vec<_>, Vec<_>) = members
        .into_iter()
        .filter(|n| n.wireguard.is_some())
        .partition(|n| allocation.contains_key(&n.id.value));
    for n in &waiting {
        eprintln!(
            "member `{}` has no address on {at} yet: left out until the reconciler gives it one",
            n.id.value
        );
    }
    let bundle = mesh::mesh_file(&args.mesh, doc, &placed, &allocation)?;
    let text = mesh::wg_quick(&bundle, &args.peer, &key.expose_base64())
        .context("the peer is missing from the mesh it was read from")?;
    if args.qr {
        let code = qrcode::QrCode::new(text.as_bytes())
            .context("the configuration is too long for a QR code")?;
        let image = code
            .render::<qrcode::render::unicode::Dense1x2>()
            .dark_color(qrcode::render::unicode::Dense1x2::Light)
            .light_color(qrcode::render::unicode::Dense1x2::Dark)
            .quiet_zone(true)
            .build();
        println!("{image}");
    } else if let Some(out) = &args.output {
        gitfleet_io::write::replace_private(out, text.as_bytes())
            .with_context(|| format!("writing {}", out.display()))?;
        eprintln!(
            "wrote {} (mode 0600): `wg-quick up` it on {}",
            out.display(),
            args.peer
        );
    } else {
        print!("{text}");
    }
    Ok(ExitCode::SUCCESS)
}

/// The address record of mesh `mesh` on the state branch of the git
/// repository around `repo`, and the ref they were read at: `state_ref`
/// when given, else `origin/<branch>`, else `<branch>`. `None` when no such
/// ref or no allocation exists.
fn read_allocation(
    repo: &Path,
    state_ref: Option<&str>,
    branch: &str,
    mesh: &str,
) -> anyhow::Result<Option<(String, MeshAllocation)>> {
    let Ok(git) = git2::Repository::discover(repo) else {
        if let Some(r) = state_ref {
            anyhow::bail!(
                "--state-ref {r}: {} is not in a git repository",
                repo.display()
            );
        }
        return Ok(None);
    };
    let candidates = match state_ref {
        Some(r) => vec![r.to_owned()],
        None => vec![format!("origin/{branch}"), branch.to_owned()],
    };
    let path = format!("meshes/{mesh}.json");
    for r in &candidates {
        let Ok(commit) = git.revparse_single(r).and_then(|o| o.peel_to_commit()) else {
            if state_ref.is_some() {
                anyhow::bail!("--state-ref {r}: no such commit in {}", repo.display());
            }
            continue;
        };
        let tree = commit.tree()?;
        let Ok(entry) = tree.get_path(Path::new(&path)) else {
            return Ok(None);
        };
        let blob = git
            .find_blob(entry.id())
            .with_context(|| format!("{r}:{path} is not a file"))?;
        let state: MeshAllocation = serde_json::from_slice(blob.content())
            .with_context(|| format!("reading {r}:{path}"))?;
        return Ok(Some((r.clone(), state)));
    }
    Ok(None)
}
