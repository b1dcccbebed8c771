//! `gitfleet keygen`, `gitfleet root` and `gitfleet bundle` as an operator
//! runs them: the real binary, real files, real umasks.

#![allow(clippy::unwrap_used)] // test helpers fail the test by panicking

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use gitfleet_schemas::keyfile::{KeyFile, KeyRole};
use gitfleet_schemas::trust::{Document, Envelope, PublicKey, Root};
use gitfleet_schemas::verify::sha256_hex;
use gitfleet_tests::{bin, copy_dir, git, text, workspace};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

fn example() -> PathBuf {
    workspace().join("examples/fleet-repo")
}

fn command(dir: &Path) -> Command {
    let mut cmd = Command::new(bin("gitfleet"));
    cmd.current_dir(dir)
        .env("GITFLEET_COLOR", "never")
        .env_remove("RUST_LOG")
        .env_remove("GITFLEET_SOURCE_COMMIT");
    cmd
}

fn gitfleet(args: &[&str], dir: &Path) -> (i32, String, String) {
    let out = command(dir).args(args).output().unwrap();
    let (stdout, stderr) = text(&out);
    (out.status.code().unwrap(), stdout, stderr)
}

/// `gitfleet args` under `umask`, through the shell, as a login would run it.
fn gitfleet_with_umask(umask: &str, args: &[&str], dir: &Path) -> (i32, String, String) {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("umask {umask}; exec \"$0\" \"$@\""))
        .arg(bin("gitfleet"))
        .args(args)
        .current_dir(dir)
        .env("GITFLEET_COLOR", "never")
        .env_remove("RUST_LOG")
        .env_remove("GITFLEET_SOURCE_COMMIT")
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    (out.status.code().unwrap(), stdout, stderr)
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// `gitfleet keygen --ROLE -o NAME.key`, with the public key also written
/// to NAME.pub; returns the public key.
fn keygen(dir: &Path, role: &str, name: &str) -> PublicKey {
    let key = format!("{name}.key");
    let (code, stdout, stderr) = gitfleet(&["keygen", &format!("--{role}"), "-o", &key], dir);
    assert_eq!(code, 0, "{stderr}");
    std::fs::write(dir.join(format!("{name}.pub")), &stdout).unwrap();
    PublicKey::parse(stdout.trim()).unwrap()
}

#[test]
fn keygen_writes_a_private_key_file_and_never_overwrites_one() {
    let dir = tempfile::tempdir().unwrap();
    let public = keygen(dir.path(), "root", "r1");
    let path = dir.path().join("r1.key");
    let bytes = std::fs::read(&path).unwrap();
    let (file, _) = KeyFile::parse(&bytes).unwrap();
    assert_eq!((file.role, file.public_key), (KeyRole::Root, public));
    #[cfg(unix)]
    assert_eq!(mode(&path), 0o600);

    let (code, stdout, stderr) = gitfleet(&["keygen", "--online", "-o", "r1.key"], dir.path());
    assert_eq!(code, 2, "{stdout}");
    assert!(
        stderr.contains("error: r1.key already exists; refusing to overwrite it"),
        "{stderr}"
    );
    assert_eq!(std::fs::read(&path).unwrap(), bytes, "the key is untouched");

    // Two keys are never the same.
    assert_ne!(keygen(dir.path(), "root", "r2"), public);
}

/// Keys r1, r2, r3 (root) and online, and root/1.json (2 of 3) signed by r1.
fn first_root(dir: &Path) {
    for name in ["r1", "r2", "r3"] {
        keygen(dir, "root", name);
    }
    keygen(dir, "online", "online");
    let (code, stdout, stderr) = gitfleet(
        &[
            "root",
            "init",
            "--fleet",
            "acme-edge",
            "--root-key",
            "r1.pub",
            "r2.pub",
            "r3.key",
            "--root-threshold",
            "2",
            "--online-key",
            "online.pub",
            "--expires",
            "365d",
            "--sign",
            "r1.key",
            "-o",
            "root/1.json",
        ],
        dir,
    );
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("root keys, 2 of 3 must sign:"), "{stdout}");
}

fn verify_roots(dir: &Path, files: &[&str]) -> (i32, String, String) {
    let mut args = vec!["root", "verify"];
    args.extend_from_slice(files);
    args.extend([
        "--fleet",
        "acme-edge",
        "--pinned",
        "r1.pub",
        "r2.pub",
        "r3.pub",
        "--threshold",
        "2",
    ]);
    gitfleet(&args, dir)
}

#[test]
fn a_2_of_3_root_is_trusted_once_two_holders_signed() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    first_root(dir);

    let (code, stdout, stderr) = verify_roots(dir, &["root/1.json"]);
    assert_eq!(code, 1, "{stdout}");
    assert!(
        stderr.contains(
            "error: root/1.json: root has 1 valid signatures by pinned root keys, needs 2"
        ),
        "{stderr}"
    );

    // The holder sees what they sign: the root, and the digest of its bytes.
    let payload = root_payload(&dir.join("root/1.json"));
    let (code, stdout, stderr) = gitfleet(&["root", "sign", "root/1.json", "--key", "r2.key"], dir);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("(2 signatures)"), "{stdout}");
    let r2 = std::fs::read_to_string(dir.join("r2.pub")).unwrap();
    let online = std::fs::read_to_string(dir.join("online.pub")).unwrap();
    for expected in [
        "signing root/1.json:\n".to_owned(),
        "root version 1 of fleet `acme-edge`, expires ".to_owned(),
        "  root keys, 2 of 3 must sign:".to_owned(),
        format!("    {}\n", r2.trim()),
        "  online keys, 1 of 1 must sign:".to_owned(),
        format!("    {}\n", online.trim()),
        format!("  payload sha256: {}\n", sha256_hex(&payload)),
    ] {
        assert!(stdout.contains(&expected), "{expected}\n{stdout}");
    }
    assert!(
        stdout.find("payload sha256").unwrap() < stdout.find("signed root/1.json").unwrap(),
        "{stdout}"
    );
    let (code, stdout, stderr) = verify_roots(dir, &["root/1.json"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains("ok: root version 1 of fleet `acme-edge`"),
        "{stdout}"
    );

    // An online key cannot sign a root.
    let (code, _, stderr) = gitfleet(&["root", "sign", "root/1.json", "--key", "online.key"], dir);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("key file online.key has role `online`; signing a root needs role `root`"),
        "{stderr}"
    );
}

/// The payload bytes of a root file.
fn root_payload(path: &Path) -> Vec<u8> {
    use base64::Engine as _;
    let env: Envelope = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    base64::engine::general_purpose::STANDARD
        .decode(env.payload)
        .unwrap()
}

#[test]
fn sign_refuses_a_root_agents_would_refuse() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let r1 = keygen(dir, "root", "r1");
    let online = keygen(dir, "online", "online");
    // r1 twice, 2 of them: one holder would meet the threshold alone.
    let root = Root {
        fleet: "acme-edge".into(),
        version: 1,
        expires: chrono::Utc::now() + chrono::Duration::days(30),
        root_keys: vec![r1, r1],
        root_threshold: 2,
        online_keys: vec![online],
        online_threshold: 1,
    };
    std::fs::write(dir.join("1.json"), root.envelope().to_json()).unwrap();
    let before = std::fs::read(dir.join("1.json")).unwrap();
    let (code, stdout, stderr) = gitfleet(&["root", "sign", "1.json", "--key", "r1.key"], dir);
    assert_eq!(code, 2, "{stdout}");
    assert!(
        stderr.contains(&format!(
            "error: 1.json is not a root agents would accept; refusing to sign it: root key {r1} is listed more than once"
        )),
        "{stderr}"
    );
    assert_eq!(std::fs::read(dir.join("1.json")).unwrap(), before);
}

#[test]
fn rotate_refuses_a_chain_that_does_not_verify() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    first_root(dir); // signed by r1 only: 1 of the 2 pinned signatures
    let (code, stdout, stderr) = gitfleet(
        &[
            "root",
            "rotate",
            "--trusted",
            "root/1.json",
            "--fleet",
            "acme-edge",
            "--pinned",
            "r1.pub",
            "r2.pub",
            "r3.pub",
            "--threshold",
            "2",
            "--expires",
            "180d",
            "--sign",
            "r1.key",
        ],
        dir,
    );
    assert_eq!(code, 1, "{stdout}");
    assert!(
        stderr.contains(
            "error: root/1.json: root has 1 valid signatures by pinned root keys, needs 2"
        ),
        "{stderr}"
    );
    assert!(!dir.join("root/2.json").exists());

    // Without the pinned keys there is nothing to verify against.
    let (code, _, stderr) = gitfleet(
        &[
            "root",
            "rotate",
            "--trusted",
            "root/1.json",
            "--fleet",
            "acme-edge",
            "--expires",
            "180d",
        ],
        dir,
    );
    assert_eq!(code, 2);
    assert!(stderr.contains("--pinned"), "{stderr}");
}

#[test]
fn a_rotation_needs_old_and_new_holders_and_verify_walks_to_it() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    first_root(dir);
    let (code, _, stderr) = gitfleet(&["root", "sign", "root/1.json", "--key", "r2.key"], dir);
    assert_eq!(code, 0, "{stderr}");
    keygen(dir, "root", "r4");

    // r3 leaves, r4 joins; r1 and r4 sign: 2 new keys, but 1 old one.
    let (code, stdout, stderr) = gitfleet(
        &[
            "root",
            "rotate",
            "--trusted",
            "root/1.json",
            "--fleet",
            "acme-edge",
            "--pinned",
            "r1.pub",
            "r2.pub",
            "r3.pub",
            "--threshold",
            "2",
            "--root-key",
            "r1.pub",
            "r2.pub",
            "r4.pub",
            "--expires",
            "180d",
            "--sign",
            "r1.key",
            "--sign",
            "r4.key",
        ],
        dir,
    );
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains("root/1.json: root version 1 trusted (verified from the 3 pinned keys)"),
        "{stdout}"
    );
    assert!(stdout.contains("wrote root/2.json"), "{stdout}");
    assert!(
        stdout.contains("root version 2 of fleet `acme-edge`"),
        "{stdout}"
    );

    let (code, _, stderr) = verify_roots(dir, &["root/1.json", "root/2.json"]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains(
            "error: root/2.json: root has 1 valid signatures by trusted root keys, needs 2"
        ),
        "{stderr}"
    );

    let (code, _, stderr) = gitfleet(&["root", "sign", "root/2.json", "--key", "r2.key"], dir);
    assert_eq!(code, 0, "{stderr}");
    // Files are walked in version order, whatever order they are given in.
    let (code, stdout, stderr) = verify_roots(dir, &["root/2.json", "root/1.json"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains("root/1.json: root version 1 trusted")
            && stdout.contains("root/2.json: root version 2 trusted (rotated from version 1)")
            && stdout.contains("ok: root version 2 of fleet `acme-edge`"),
        "{stdout}"
    );
    let r4 = std::fs::read_to_string(dir.join("r4.pub")).unwrap();
    assert!(stdout.contains(r4.trim()), "{stdout}");
}

/// Per config: digest and bundle path, from `bundle build` output.
fn built(stdout: &str) -> BTreeMap<String, (String, PathBuf)> {
    stdout
        .lines()
        .map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            let path = PathBuf::from(words.last().unwrap());
            (words[0].to_owned(), (words[1].to_owned(), path))
        })
        .collect()
}

fn build(dir: &Path, extra: &[&str]) -> BTreeMap<String, (String, PathBuf)> {
    let mut args = vec!["bundle", "build", ".", "--source-commit", COMMIT];
    args.extend_from_slice(extra);
    let (code, stdout, stderr) = gitfleet(&args, dir);
    assert_eq!(code, 0, "{stdout}{stderr}");
    built(&stdout)
}

/// Every file under `dir` gets `mode` and modification time `mtime`.
fn touch_all(dir: &Path, mode: u32, mtime: std::time::SystemTime) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            touch_all(&path, mode, mtime);
            continue;
        }
        let file = std::fs::File::options().write(true).open(&path).unwrap();
        file.set_modified(mtime).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            file.set_permissions(std::fs::Permissions::from_mode(mode))
                .unwrap();
        }
    }
}

#[test]
fn bundles_are_the_same_bytes_on_any_machine_and_match_the_golden_digest() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    copy_dir(&example(), a.path());
    copy_dir(&example(), b.path());
    let day = std::time::Duration::from_secs(86_400);
    touch_all(a.path(), 0o644, std::time::SystemTime::now());
    touch_all(b.path(), 0o600, std::time::UNIX_EPOCH + 400 * day);

    let args = [
        "bundle",
        "build",
        ".",
        "--source-commit",
        COMMIT,
        "-o",
        "out",
    ];
    let (code, out_a, err) = gitfleet_with_umask("022", &args, a.path());
    assert_eq!(code, 0, "{out_a}{err}");
    let (code, out_b, err) = gitfleet_with_umask("077", &args, b.path());
    assert_eq!(code, 0, "{out_b}{err}");
    let (built_a, built_b) = (built(&out_a), built(&out_b));
    assert_eq!(
        built_a.keys().collect::<Vec<_>>(),
        ["api-gateway", "edge"],
        "{out_a}"
    );
    for (name, (digest, path)) in &built_a {
        assert_eq!(*digest, built_b[name].0, "{name}: {out_a}\n{out_b}");
        let bytes = std::fs::read(a.path().join(path)).unwrap();
        assert_eq!(
            bytes,
            std::fs::read(b.path().join(&built_b[name].1)).unwrap()
        );
        let hex = digest.strip_prefix("sha256:").unwrap();
        assert_eq!(*path, Path::new("out").join(format!("{hex}.tar.zst")));
    }

    let golden_path = workspace().join("tests/fixtures/golden/edge.digest");
    let golden = std::fs::read_to_string(&golden_path).unwrap();
    assert_eq!(
        built_a["edge"].0,
        golden.trim(),
        "the `edge` bundle of examples/fleet-repo at source commit {COMMIT} changed; \
         if the bundle format, the SBOM or the example config changed on purpose, \
         write the new digest into {}",
        golden_path.display()
    );

    // A second build finds the same bytes and writes nothing.
    let (code, again, _) = gitfleet(&args, a.path());
    assert_eq!(code, 0);
    assert!(
        again.lines().all(|l| l.contains("  unchanged out/")),
        "{again}"
    );
}

#[test]
fn the_source_commit_comes_from_git_or_says_worktree() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path();
    copy_dir(&example(), repo);
    let (code, stdout, _) = gitfleet(&["bundle", "build", "--dry-run", "--config", "edge"], repo);
    assert_eq!(code, 0);
    let outside_git = built(&stdout)["edge"].0.clone();
    assert!(stdout.contains("would write bundles/"), "{stdout}");
    assert!(!repo.join("bundles").exists(), "a dry run writes nothing");

    git(repo, &["init", "-q"]);
    git(repo, &["add", "-A"]);
    git(repo, &["commit", "-qm", "fleet"]);
    let head = git(repo, &["rev-parse", "HEAD"]).trim().to_owned();
    let from_tree = build(repo, &["--config", "edge", "-o", "tree"]);
    let (code, stdout, stderr) = gitfleet(
        &[
            "bundle", "build", "--rev", "HEAD", "--config", "edge", "-o", "rev",
        ],
        repo,
    );
    assert_eq!(code, 0, "{stderr}");
    let from_rev = built(&stdout);
    assert_ne!(from_rev["edge"].0, outside_git);
    assert_ne!(
        from_rev["edge"].0, from_tree["edge"].0,
        "--source-commit differs"
    );

    let (code, stdout, _) = gitfleet(
        &["bundle", "inspect", from_rev["edge"].1.to_str().unwrap()],
        repo,
    );
    assert_eq!(code, 0);
    assert!(
        stdout.contains(&format!("source commit:  {head}")),
        "{stdout}"
    );
}

#[test]
fn a_broken_repo_builds_nothing_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&example(), dir.path());
    let node = dir.path().join("nodes/edge-fra-1.kdl");
    let t = std::fs::read_to_string(&node).unwrap();
    std::fs::write(&node, t.replace("\"prod\"", "\"prdo\"")).unwrap();

    let (code, stdout, stderr) = gitfleet(
        &["bundle", "build", ".", "--source-commit", COMMIT],
        dir.path(),
    );
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(
        stderr.contains("error[unknown-environment]: unknown environment `prdo`"),
        "{stderr}"
    );
    assert!(stderr.contains("┌─ nodes/edge-fra-1.kdl:3:13"), "{stderr}");
    assert!(
        stderr.contains("has errors; no bundle was built"),
        "{stderr}"
    );
    assert!(stdout.is_empty(), "{stdout}");
    assert!(!dir.path().join("bundles").exists());
}

#[test]
fn inspect_shows_the_manifest_and_the_sbom() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&example(), dir.path());
    let bundles = build(dir.path(), &["--config", "edge"]);
    let (digest, path) = &bundles["edge"];
    let path = path.to_str().unwrap();

    let (code, stdout, stderr) = gitfleet(&["bundle", "inspect", path], dir.path());
    assert_eq!(code, 0, "{stderr}");
    for expected in [
        format!("digest:         {digest}"),
        "name:           edge".to_owned(),
        "kind:           sentinel".to_owned(),
        format!("source commit:  {COMMIT}"),
        "validator:      sentinel-config 0.4.14".to_owned(),
        "  files/sentinel.kdl".to_owned(),
        "  sbom.cdx.json".to_owned(),
        "sbom:           2 listeners, 4 routes, 2 upstreams, 0 agents".to_owned(),
    ] {
        assert!(stdout.contains(&expected), "{expected}\n{stdout}");
    }

    let (code, stdout, _) = gitfleet(&["bundle", "inspect", path, "--format", "json"], dir.path());
    assert_eq!(code, 0);
    let doc: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(doc["digest"], digest.as_str());
    assert_eq!(doc["manifest"]["name"], "edge");
    assert_eq!(doc["manifest"]["files"][0]["path"], "files/sentinel.kdl");
    assert_eq!(doc["sbom"]["route"], 4);
}

#[test]
fn verify_refuses_a_corrupted_copy_with_the_digest_error() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&example(), dir.path());
    let bundles = build(dir.path(), &["--config", "edge"]);
    let (digest, path) = &bundles["edge"];

    let (code, stdout, _) = gitfleet(
        &[
            "bundle",
            "verify",
            path.to_str().unwrap(),
            "--digest",
            digest,
        ],
        dir.path(),
    );
    assert_eq!(code, 0);
    assert_eq!(stdout, format!("ok: {digest} (2 files)\n"));

    let mut bytes = std::fs::read(dir.path().join(path)).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(dir.path().join("copy.tar.zst"), &bytes).unwrap();
    let (code, stdout, stderr) = gitfleet(
        &["bundle", "verify", "copy.tar.zst", "--digest", digest],
        dir.path(),
    );
    assert_eq!(code, 1, "{stdout}");
    assert!(
        stderr.starts_with("error: copy.tar.zst: bundle digest is sha256:")
            && stderr.contains(&format!(", the manifest says {digest}")),
        "{stderr}"
    );

    let short = (bytes.len() - 1).to_string();
    let (code, _, stderr) = gitfleet(
        &[
            "bundle",
            "verify",
            path.to_str().unwrap(),
            "--length",
            &short,
        ],
        dir.path(),
    );
    assert_eq!(code, 1);
    assert!(
        stderr.contains(&format!(
            "bundle is {} bytes, the manifest says {short}",
            bytes.len()
        )),
        "{stderr}"
    );
}

#[test]
fn diff_shows_the_changed_route_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&example(), dir.path());
    let old = build(dir.path(), &["--config", "edge", "-o", "old"]);

    let config = dir.path().join("configs/edge/sentinel.kdl");
    let t = std::fs::read_to_string(&config).unwrap();
    assert!(t.contains("path \"/-/config\""), "the example changed");
    std::fs::write(
        &config,
        t.replace("path \"/-/config\"", "path \"/-/effective-config\""),
    )
    .unwrap();
    let new = build(dir.path(), &["--config", "edge", "-o", "new"]);
    let (a, b) = (
        old["edge"].1.to_str().unwrap(),
        new["edge"].1.to_str().unwrap(),
    );

    let (code, stdout, stderr) = gitfleet(&["bundle", "diff", a, b], dir.path());
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(
        stdout.contains("--- a/files/sentinel.kdl\n+++ b/files/sentinel.kdl\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "\n-            path \"/-/config\"\n+            path \"/-/effective-config\"\n"
        ),
        "{stdout}"
    );
    // The SBOM records the route's match too.
    assert!(stdout.contains("--- a/sbom.cdx.json"), "{stdout}");

    let (code, stdout, _) = gitfleet(&["bundle", "diff", a, a], dir.path());
    assert_eq!((code, stdout.as_str()), (0, ""));
}
