//! `gitfleet root`: writing, signing, rotating and checking the fleet's root
//! of trust (`root/<version>.json`).
//!
//! Roots are written unsigned or signed by the keys at hand, then passed from
//! holder to holder, each adding a signature with `root sign`: the private
//! root keys never have to meet on one machine. `root verify` walks the
//! chain with the agents' own verifier.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use clap::Subcommand;
use gitfleet_schemas::keyfile::KeyRole;
use gitfleet_schemas::trust::{Document, Envelope, PublicKey, Root};
use gitfleet_schemas::verify::{
    sha256_hex, validate_root, verify_first_root, verify_root_rotation, Verified, VerifyError,
};

use crate::keys;
use gitfleet_io::write;

#[derive(Debug, Subcommand)]
pub enum RootCommand {
    Init(InitArgs),
    Sign(SignArgs),
    Rotate(RotateArgs),
    Verify(VerifyArgs),
}

/// Write the first root of trust, version 1.
///
/// Keys are given as base64 public keys, files holding one (`.pub`), or key
/// files (only their public half is read). Each --sign key file adds its
/// signature; the others sign later with `gitfleet root sign`. Refuses to
/// overwrite an existing file.
///
/// Example (a 2-of-3 root, signed by the first holder):
///   gitfleet root init --fleet acme-edge \
///       --root-key r1.pub r2.pub r3.pub --root-threshold 2 \
///       --online-key online.pub --expires 365d --sign r1.key -o root/1.json
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct InitArgs {
    /// The fleet's name, as in fleet.kdl; agents refuse a root of another fleet.
    #[arg(long)]
    fleet: String,

    /// The offline root keys (base64, .pub files or key files).
    #[arg(long = "root-key", value_name = "KEY", required = true, num_args = 1..)]
    root_keys: Vec<String>,

    /// How many root keys must sign this root and the next one.
    #[arg(long, value_name = "N")]
    root_threshold: u32,

    /// The online keys the reconciler signs channel manifests with.
    #[arg(long = "online-key", value_name = "KEY", required = true, num_args = 1..)]
    online_keys: Vec<String>,

    /// How many online keys must sign a channel manifest.
    #[arg(long, value_name = "N", default_value_t = 1)]
    online_threshold: u32,

    /// When the root expires: a duration from now (365d, 52weeks) or an RFC 3339 time.
    #[arg(long, value_name = "WHEN", value_parser = parse_expires)]
    expires: Expires,

    /// Sign with this root key file (repeat for more).
    #[arg(long = "sign", value_name = "KEYFILE")]
    sign: Vec<PathBuf>,

    /// The file to write, usually root/1.json.
    #[arg(short, long, value_name = "FILE")]
    output: PathBuf,
}

/// Add a signature to a root, in place.
///
/// For threshold ceremonies: each holder signs in turn, on their own
/// machine. Signing twice with one key replaces its signature. A rotation
/// (version n + 1) is signed by holders of the old root and of the new one.
///
/// The root is checked first (thresholds reachable, no key listed twice, no
/// key both a root and an online key) and shown before it is signed: its
/// fleet, version, expiry, key sets and the SHA-256 of the exact bytes
/// signed. Compare them with what the ceremony agreed on.
///
/// Example:
///   gitfleet root sign root/2.json --key r2.key
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct SignArgs {
    /// The root to sign.
    file: PathBuf,

    /// The root key file to sign with.
    #[arg(long, value_name = "KEYFILE")]
    key: PathBuf,
}

/// Write the next root: version n + 1 of a trusted root n.
///
/// The chain root/1.json ... root/<n>.json (the files next to --trusted,
/// which is the last) is verified first, as agents do: root 1 by
/// --threshold of the --pinned keys, each next one by its predecessor.
/// Key sets and thresholds not given are carried over from the verified
/// root n. Agents accept the new root only when enough keys of the old root
/// and of the new root signed it.
///
/// Example (replace root key r3 by r4, signed by r1 and r2):
///   gitfleet root rotate --trusted root/1.json --fleet acme-edge \
///       --pinned r1.pub r2.pub r3.pub --threshold 2 \
///       --root-key r1.pub r2.pub r4.pub --expires 365d \
///       --sign r1.key --sign r2.key -o root/2.json
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct RotateArgs {
    /// The current root, root/<n>.json; roots 1 to n - 1 are read from
    /// the same directory.
    #[arg(long, value_name = "FILE")]
    trusted: PathBuf,

    /// The fleet's name, as in fleet.kdl (the fleet never changes).
    #[arg(long)]
    fleet: String,

    /// The pinned root keys (fleet.kdl's `trust` block) that root 1 is
    /// verified against (base64, .pub files or key files).
    #[arg(long, value_name = "KEY", required = true, num_args = 1..)]
    pinned: Vec<String>,

    /// How many pinned keys must have signed root version 1.
    #[arg(long, value_name = "N")]
    threshold: u32,

    /// The new root keys (default: those of the trusted root).
    #[arg(long = "root-key", value_name = "KEY", num_args = 1..)]
    root_keys: Vec<String>,

    /// How many new root keys must sign (default: the trusted root's threshold).
    #[arg(long, value_name = "N")]
    root_threshold: Option<u32>,

    /// The new online keys (default: those of the trusted root).
    #[arg(long = "online-key", value_name = "KEY", num_args = 1..)]
    online_keys: Vec<String>,

    /// How many online keys must sign a manifest (default: the trusted root's).
    #[arg(long, value_name = "N")]
    online_threshold: Option<u32>,

    /// When the new root expires: a duration from now (365d) or an RFC 3339 time.
    #[arg(long, value_name = "WHEN", value_parser = parse_expires)]
    expires: Expires,

    /// Sign with this root key file, old or new (repeat for more).
    #[arg(long = "sign", value_name = "KEYFILE")]
    sign: Vec<PathBuf>,

    /// The file to write (default: <n+1>.json next to the trusted root).
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
}

/// Check a chain of roots the way an agent does, and show the one trusted.
///
/// Root 1 must be signed by --threshold of the --pinned keys (fleet.kdl's
/// `trust` block) and by its own root threshold; each next version by the
/// thresholds of both the previous and its own root keys. Files are taken in
/// the order of the versions they claim.
///
/// Exit status: 0 when the last root is trusted and not expired, 1 when a
/// root is refused (the reason is printed), 2 when files cannot be read.
///
/// Example:
///   gitfleet root verify root/*.json --fleet acme-edge \
///       --pinned r1.pub r2.pub r3.pub --threshold 2
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct VerifyArgs {
    /// The roots: 1.json, 2.json, ...
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,

    /// The fleet's name, as in fleet.kdl.
    #[arg(long)]
    fleet: String,

    /// The pinned root keys (base64, .pub files or key files).
    #[arg(long, value_name = "KEY", required = true, num_args = 1..)]
    pinned: Vec<String>,

    /// How many pinned keys must have signed root version 1.
    #[arg(long, value_name = "N")]
    threshold: u32,
}

pub fn run(cmd: &RootCommand, now: DateTime<Utc>) -> anyhow::Result<ExitCode> {
    match cmd {
        RootCommand::Init(args) => init(args, now),
        RootCommand::Sign(args) => sign(args, now),
        RootCommand::Rotate(args) => rotate(args, now),
        RootCommand::Verify(args) => verify(args, now),
    }
}

/// When a root expires, as given on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expires {
    In(std::time::Duration),
    At(DateTime<Utc>),
}

fn parse_expires(s: &str) -> Result<Expires, String> {
    if let Ok(d) = humantime::parse_duration(s) {
        return Ok(Expires::In(d));
    }
    DateTime::parse_from_rfc3339(s)
        .map(|t| Expires::At(t.with_timezone(&Utc)))
        .map_err(|_| {
            format!(
                "`{s}` is neither a duration (365d, 52weeks) nor an RFC 3339 time (2027-01-01T00:00:00Z)"
            )
        })
}

impl Expires {
    /// The expiry time, in whole seconds, which must be after `now`.
    fn resolve(self, now: DateTime<Utc>) -> anyhow::Result<DateTime<Utc>> {
        let at = match self {
            Expires::At(t) => t,
            Expires::In(d) => {
                let d = chrono::Duration::from_std(d).context("--expires is too far away")?;
                now.checked_add_signed(d)
                    .context("--expires is too far away")?
            }
        };
        let at =
            DateTime::from_timestamp(at.timestamp(), 0).context("--expires is out of range")?;
        anyhow::ensure!(at > now, "--expires {at} is not after now ({now})");
        Ok(at)
    }
}

const ROOT_KEY: &str = "a root key";
const ONLINE_KEY: &str = "an online key";
const SIGNING: &str = "signing a root";

/// Refuse a root agents would refuse, or that is unsafe.
fn validate(root: &Root) -> anyhow::Result<()> {
    anyhow::ensure!(
        gitfleet_policy::valid_name(&root.fleet),
        "fleet name `{}` is not valid: use [A-Za-z0-9][A-Za-z0-9._-]*, at most 63 characters",
        root.fleet
    );
    // The verifier's own rules, so nothing is written or signed that agents
    // would refuse.
    validate_root(root)?;
    Ok(())
}

/// Sign `env` with each key file, each of which must be one of `allowed`.
fn sign_all(
    env: &mut Envelope,
    files: &[PathBuf],
    allowed: &[PublicKey],
    version: u64,
) -> anyhow::Result<()> {
    for path in files {
        let key = keys::load(path, KeyRole::Root, SIGNING)?;
        anyhow::ensure!(
            allowed.contains(&key.public),
            "key file {} holds key {}, which may not sign root version {version}: it is not one of its root keys{}",
            path.display(),
            key.public,
            if version > 1 { " nor of the trusted root's" } else { "" }
        );
        env.sign(&key.key)
            .map_err(|e| anyhow::anyhow!("signing with {}: {e}", path.display()))?;
    }
    Ok(())
}

/// Read a root envelope, the root it carries and its payload bytes, without
/// verifying it.
fn read_root(path: &Path) -> anyhow::Result<(Envelope, Root, Vec<u8>)> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let env: Envelope = serde_json::from_slice(&bytes)
        .with_context(|| format!("{} is not a signed envelope", path.display()))?;
    anyhow::ensure!(
        env.payload_type == Root::PAYLOAD_TYPE,
        "{} has payload type `{}`, not a root (`{}`)",
        path.display(),
        env.payload_type,
        Root::PAYLOAD_TYPE
    );
    let payload = env
        .payload_bytes()
        .with_context(|| format!("the payload of {} is not base64", path.display()))?;
    let root: Root = serde_json::from_slice(&payload)
        .with_context(|| format!("the payload of {} is not a root", path.display()))?;
    Ok((env, root, payload))
}

/// A root and who signed it, for people.
fn describe(root: &Root, env: &Envelope, now: DateTime<Utc>) -> String {
    let signed: Vec<PublicKey> = env.signatures.iter().map(|s| s.key).collect();
    let mut out = String::new();
    // Rounded: `--expires 365d` reads "in 365 days", not 364.
    let days = ((root.expires - now).num_seconds() + 43_200).div_euclid(86_400);
    let _ = writeln!(
        out,
        "root version {} of fleet `{}`, expires {} ({})",
        root.version,
        root.fleet,
        root.expires
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        if root.expires <= now {
            "expired".to_owned()
        } else {
            format!("in {days} days")
        }
    );
    for (role, keys, threshold) in [
        ("root", &root.root_keys, root.root_threshold),
        ("online", &root.online_keys, root.online_threshold),
    ] {
        let _ = writeln!(
            out,
            "  {role} keys, {threshold} of {} must sign:",
            keys.len()
        );
        for k in keys {
            let mark = if signed.contains(k) { "  signed" } else { "" };
            let _ = writeln!(out, "    {k}{mark}");
        }
    }
    let others = signed
        .iter()
        .filter(|k| !root.root_keys.contains(k))
        .count();
    let _ = write!(out, "  signatures: {}", signed.len());
    if others > 0 {
        let _ = write!(out, " ({others} by keys of the previous root)");
    }
    out
}

fn init(args: &InitArgs, now: DateTime<Utc>) -> anyhow::Result<ExitCode> {
    let root = Root {
        fleet: args.fleet.clone(),
        version: 1,
        expires: args.expires.resolve(now)?,
        root_keys: keys::public_set(&args.root_keys, KeyRole::Root, ROOT_KEY)?,
        root_threshold: args.root_threshold,
        online_keys: keys::public_set(&args.online_keys, KeyRole::Online, ONLINE_KEY)?,
        online_threshold: args.online_threshold,
    };
    validate(&root)?;
    let mut env = root.envelope();
    sign_all(&mut env, &args.sign, &root.root_keys, root.version)?;
    write::new_file(&args.output, &env.to_json(), 0o644)?;
    println!("wrote {}", args.output.display());
    println!("{}", describe(&root, &env, now));
    Ok(ExitCode::SUCCESS)
}

fn sign(args: &SignArgs, now: DateTime<Utc>) -> anyhow::Result<ExitCode> {
    let (mut env, root, payload) = read_root(&args.file)?;
    validate(&root).with_context(|| {
        format!(
            "{} is not a root agents would accept; refusing to sign it",
            args.file.display()
        )
    })?;
    let key = keys::load(&args.key, KeyRole::Root, SIGNING)?;
    println!("signing {}:", args.file.display());
    println!("{}", describe(&root, &env, now));
    println!("  payload sha256: {}", sha256_hex(&payload));
    if !root.root_keys.contains(&key.public) {
        tracing::warn!(
            "key {} is not a root key of version {}: the signature only counts if it is a root key of version {}",
            key.public,
            root.version,
            root.version.saturating_sub(1)
        );
    }
    env.sign(&key.key)
        .map_err(|e| anyhow::anyhow!("signing {}: {e}", args.file.display()))?;
    let perms = std::fs::metadata(&args.file)
        .with_context(|| format!("reading {}", args.file.display()))?
        .permissions();
    write::replace(&args.file, &env.to_json(), Some(perms))?;
    println!(
        "signed {} with {} ({} signatures)",
        args.file.display(),
        key.public,
        env.signatures.len()
    );
    Ok(ExitCode::SUCCESS)
}

/// Verify the chain of roots that ends at `tip` (root/<n>.json): versions
/// 1 to n - 1 are the files `<v>.json` next to it. A refusal is printed and
/// given as the exit status to return.
fn verify_chain(
    tip: &Path,
    fleet: &str,
    pinned: &[PublicKey],
    threshold: u32,
) -> anyhow::Result<Result<Verified<Root>, ExitCode>> {
    let tip_bytes = std::fs::read(tip).with_context(|| format!("reading {}", tip.display()))?;
    let n = claimed_version(&tip_bytes)
        .with_context(|| format!("{} is not a signed root", tip.display()))?;
    let mut trusted: Option<Verified<Root>> = None;
    for version in 1..=n {
        let (path, bytes) = if version == n {
            (tip.to_owned(), tip_bytes.clone())
        } else {
            let path = tip.with_file_name(format!("{version}.json"));
            let bytes = std::fs::read(&path).with_context(|| {
                format!(
                    "reading {} (root version {version}, needed to verify the chain to {})",
                    path.display(),
                    tip.display()
                )
            })?;
            (path, bytes)
        };
        let result = match &trusted {
            None => verify_first_root(&bytes, fleet, pinned, threshold),
            Some(root) => verify_root_rotation(root, &bytes),
        };
        match result {
            Ok(root) => trusted = Some(root),
            Err(e) => {
                eprintln!("error: {}: {e}", path.display());
                return Ok(Err(ExitCode::from(1)));
            }
        }
    }
    let root = trusted.with_context(|| format!("{} claims root version 0", tip.display()))?;
    println!(
        "{}: root version {} trusted (verified from the {} pinned keys)",
        tip.display(),
        root.version,
        pinned.len()
    );
    Ok(Ok(root))
}

fn rotate(args: &RotateArgs, now: DateTime<Utc>) -> anyhow::Result<ExitCode> {
    let pinned = keys::public_set(&args.pinned, KeyRole::Root, "a pinned root key")?;
    let trusted = match verify_chain(&args.trusted, &args.fleet, &pinned, args.threshold)? {
        Ok(root) => root,
        Err(code) => return Ok(code),
    };
    let root_keys = if args.root_keys.is_empty() {
        trusted.root_keys.clone()
    } else {
        keys::public_set(&args.root_keys, KeyRole::Root, ROOT_KEY)?
    };
    let online_keys = if args.online_keys.is_empty() {
        trusted.online_keys.clone()
    } else {
        keys::public_set(&args.online_keys, KeyRole::Online, ONLINE_KEY)?
    };
    let root = Root {
        fleet: trusted.fleet.clone(),
        version: trusted.version + 1,
        expires: args.expires.resolve(now)?,
        root_keys,
        root_threshold: args.root_threshold.unwrap_or(trusted.root_threshold),
        online_keys,
        online_threshold: args.online_threshold.unwrap_or(trusted.online_threshold),
    };
    validate(&root)?;
    let mut env = root.envelope();
    let mut allowed = root.root_keys.clone();
    allowed.extend(trusted.root_keys.iter().copied());
    sign_all(&mut env, &args.sign, &allowed, root.version)?;
    let output = match &args.output {
        Some(path) => path.clone(),
        None => args
            .trusted
            .with_file_name(format!("{}.json", root.version)),
    };
    write::new_file(&output, &env.to_json(), 0o644)?;
    println!("wrote {}", output.display());
    println!("{}", describe(&root, &env, now));
    Ok(ExitCode::SUCCESS)
}

/// The version a root file claims, before anything is verified: only used
/// to put the files in order; the verifier checks the versions.
fn claimed_version(bytes: &[u8]) -> Option<u64> {
    let env: Envelope = serde_json::from_slice(bytes).ok()?;
    let payload = env.payload_bytes().ok()?;
    serde_json::from_slice::<Root>(&payload)
        .ok()
        .map(|r| r.version)
}

fn verify(args: &VerifyArgs, now: DateTime<Utc>) -> anyhow::Result<ExitCode> {
    let pinned = keys::public_set(&args.pinned, KeyRole::Root, "a pinned root key")?;
    let mut docs = Vec::with_capacity(args.files.len());
    for path in &args.files {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        docs.push((claimed_version(&bytes), path, bytes));
    }
    // Unreadable files first, so their error is the one shown.
    docs.sort_by_key(|(version, ..)| *version);
    let mut trusted: Option<(Verified<Root>, Envelope)> = None;
    for (_, path, bytes) in &docs {
        let result = match &trusted {
            None => verify_first_root(bytes, &args.fleet, &pinned, args.threshold),
            Some((root, _)) => verify_root_rotation(root, bytes),
        };
        match result {
            Ok(root) => {
                // Verified bytes parse as an envelope.
                let env: Envelope = serde_json::from_slice(bytes)
                    .with_context(|| format!("{} is not an envelope", path.display()))?;
                let how = if root.version == 1 {
                    let by = env
                        .signatures
                        .iter()
                        .filter(|s| pinned.contains(&s.key))
                        .count();
                    format!("signed by {by} of the {} pinned keys", pinned.len())
                } else {
                    format!("rotated from version {}", root.version - 1)
                };
                println!(
                    "{}: root version {} trusted ({how})",
                    path.display(),
                    root.version
                );
                trusted = Some((root, env));
            }
            Err(e) => {
                eprintln!("error: {}: {e}", path.display());
                return Ok(ExitCode::from(1));
            }
        }
    }
    let Some((root, env)) = trusted else {
        anyhow::bail!("no root files given");
    };
    if root.expires <= now {
        let e = VerifyError::Expired {
            what: Root::NAME,
            expires: root.expires,
            now,
        };
        eprintln!("error: {e}");
        return Ok(ExitCode::from(1));
    }
    println!("ok: {}", describe(&root, &env, now));
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone as _;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 23, 12, 0, 0).unwrap()
    }

    #[test]
    fn expiry_is_a_duration_or_a_time_in_whole_seconds() {
        let now = now() + chrono::Duration::milliseconds(250);
        assert_eq!(
            parse_expires("365d").unwrap().resolve(now).unwrap(),
            Utc.with_ymd_and_hms(2027, 11, 23, 12, 0, 0).unwrap()
        );
        assert_eq!(
            parse_expires("2027-01-01T00:00:00+01:00")
                .unwrap()
                .resolve(now)
                .unwrap(),
            Utc.with_ymd_and_hms(2026, 12, 31, 23, 0, 0).unwrap()
        );
        assert!(parse_expires("soon").is_err());
        let past = parse_expires("2020-01-01T00:00:00Z").unwrap().resolve(now);
        assert!(past.unwrap_err().to_string().contains("is not after now"));
    }

    fn key(n: u8) -> PublicKey {
        gitfleet_schemas::keyfile::KeyFile::new(KeyRole::Root, &[n; 32]).public_key
    }

    #[test]
    fn unreachable_thresholds_and_shared_keys_are_refused() {
        let mut root = Root {
            fleet: "acme".into(),
            version: 1,
            expires: now(),
            root_keys: vec![key(1), key(2)],
            root_threshold: 3,
            online_keys: vec![key(9)],
            online_threshold: 1,
        };
        let err = validate(&root).unwrap_err().to_string();
        assert_eq!(
            err,
            "root threshold 3 must be between 1 and the number of root keys (2)"
        );
        root.root_threshold = 2;
        validate(&root).unwrap();
        root.online_keys.push(key(1));
        let err = validate(&root).unwrap_err().to_string();
        assert!(
            err.contains("is both a root key and an online key"),
            "{err}"
        );
        // A key listed twice would count twice toward the threshold.
        root.online_keys = vec![key(9)];
        root.root_keys = vec![key(1), key(1)];
        let err = validate(&root).unwrap_err().to_string();
        assert_eq!(err, format!("root key {} is listed more than once", key(1)));
    }
}
