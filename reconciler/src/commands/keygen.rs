//! `gitfleet keygen`: a new key file for a role.

use std::path::PathBuf;
use std::process::ExitCode;

use gitfleet_io::write;
use gitfleet_schemas::keyfile::{KeyFile, KeyRole};

/// Generate an ed25519 key pair and write it to a new key file.
///
/// The key comes from the operating system's random number generator. The
/// file is created with mode 0600 and never overwrites an existing file;
/// the public key (base64) is printed on stdout, ready for fleet.kdl or a
/// `.pub` file. Keep root keys offline.
///
/// Examples:
///   gitfleet keygen --root -o root-1.key > root-1.pub
///   gitfleet keygen --online -o /etc/gitfleet/online.key
///   gitfleet keygen --node -o /var/lib/gitfleet-agent/node.key
///   gitfleet keygen --approver -o ~/.gitfleet/alice.key
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
#[command(group(clap::ArgGroup::new("role").required(true).args(["root", "online", "node", "approver"])))]
pub struct KeygenArgs {
    /// An offline root key, which signs root/<version>.json.
    #[arg(long)]
    root: bool,

    /// An online key, held by the reconciler to sign channel manifests.
    #[arg(long)]
    online: bool,

    /// A node key, with which an agent signs its status reports.
    #[arg(long)]
    node: bool,

    /// An approver's key, with which a person signs `gitfleet approve`.
    #[arg(long)]
    approver: bool,

    /// The key file to create; it must not exist yet.
    #[arg(short, long, value_name = "FILE")]
    output: PathBuf,
}

pub fn keygen(args: &KeygenArgs) -> anyhow::Result<ExitCode> {
    let role = if args.root {
        KeyRole::Root
    } else if args.online {
        KeyRole::Online
    } else if args.approver {
        KeyRole::Approver
    } else {
        KeyRole::Node
    };
    let mut seed = [0u8; 32];
    getrandom::getrandom(&mut seed)
        .map_err(|e| anyhow::anyhow!("reading randomness from the operating system: {e}"))?;
    let file = KeyFile::new(role, &seed);
    seed.fill(0);
    write::new_file(&args.output, &file.to_json(), 0o600)?;
    eprintln!("wrote {role} key file {}", args.output.display());
    println!("{}", file.public_key);
    Ok(ExitCode::SUCCESS)
}
