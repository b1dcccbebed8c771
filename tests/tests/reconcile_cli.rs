//! `gitfleet reconcile --once` against a real bare git repository and a
//! file:// object store (and once over `git daemon` and moto's S3): bundles, the state commit, signed manifests that
//! the agent's verifier accepts, idempotence, a broken config that does
//! not stop the rest of the fleet, and WireGuard mesh bundles whose tunnel
//! addresses stay put when the mesh grows.

#![allow(clippy::unwrap_used)] // test helpers fail the test by panicking

use std::path::{Path, PathBuf};
use std::process::Command;

use chrono::{Duration, Utc};
use ed25519_dalek::SigningKey;
use gitfleet_io::git_daemon::GitDaemon;
use gitfleet_io::moto::Moto;
use gitfleet_schemas::bundle::{BundleKind, MeshBundle, MESH_FILE};
use gitfleet_schemas::state::{MeshAllocation, Phase, RolloutState};
use gitfleet_schemas::trust::{BundleRef, Document, PublicKey, Root};
use gitfleet_schemas::verify::{verify_bundle, verify_channel, verify_first_root, Limits};
use gitfleet_tests::{append_commit_push, bin, git, text, workspace};

/// The edge config of the example fleet.
const EDGE: &str = "configs/edge/sentinel.kdl";

struct Fleet {
    dir: tempfile::TempDir,
    online_public: PublicKey,
}

impl Fleet {
    /// The example fleet pushed to a bare repository, and an online key.
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let work = dir.path().join("work");
        // Windows would make what a pass does depend on when it runs.
        gitfleet_tests::example_fleet_without_windows(&work);
        git(&work, &["init", "-q", "-b", "main"]);
        git(&work, &["add", "-A"]);
        git(&work, &["commit", "-qm", "fleet"]);
        git(dir.path(), &["clone", "-q", "--bare", "work", "origin.git"]);
        git(&work, &["remote", "add", "origin", "../origin.git"]);
        git(&work, &["fetch", "-q", "origin"]);
        git(
            &work,
            &["branch", "-q", "--set-upstream-to=origin/main", "main"],
        );
        git(&work, &["config", "user.name", "Operator"]);
        git(&work, &["config", "user.email", "ops@example.invalid"]);
        let out = Command::new(bin("gitfleet"))
            .args(["keygen", "--online", "-o"])
            .arg(dir.path().join("online.key"))
            .output()
            .unwrap();
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{stderr}");
        let online_public = PublicKey::parse(stdout.trim()).unwrap();
        Fleet { dir, online_public }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn reconcile(&self, store: &str, extra: &[&str]) -> (i32, String, String) {
        let out = Command::new(bin("gitfleet"))
            .arg("reconcile")
            .arg("--once")
            .arg("--repo")
            .arg(self.path("origin.git"))
            .args(["--store", store])
            .arg("--online-key")
            .arg(self.path("online.key"))
            .arg("--cache")
            .arg(self.path("mirror"))
            .args(["--holder", "test-replica"])
            .args(extra)
            .output()
            .unwrap();
        let (stdout, stderr) = text(&out);
        (out.status.code().unwrap(), stdout, stderr)
    }

    fn state(&self, rollout: &str) -> RolloutState {
        serde_json::from_slice(&self.state_file(&format!("rollouts/{rollout}.json"))).unwrap()
    }

    fn allocation(&self, mesh: &str) -> MeshAllocation {
        serde_json::from_slice(&self.state_file(&format!("meshes/{mesh}.json"))).unwrap()
    }

    /// A file at the tip of the state branch.
    fn state_file(&self, path: &str) -> Vec<u8> {
        let out = Command::new("git")
            .args(["show", &format!("gitfleet/state:{path}")])
            .current_dir(self.path("origin.git"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    /// The mesh file of a bundle in the store, verified like an agent does.
    fn mesh_bundle(&self, bundle: &BundleRef) -> MeshBundle {
        let bytes = std::fs::read(self.path("store").join(bundle.object_key().unwrap())).unwrap();
        let verified = verify_bundle(bundle, &bytes, Limits::default()).unwrap();
        assert_eq!(verified.manifest.kind, BundleKind::WireguardMesh);
        serde_json::from_slice(&verified.files[MESH_FILE]).unwrap()
    }

    fn state_commits(&self) -> usize {
        git(
            &self.path("origin.git"),
            &["rev-list", "--count", "gitfleet/state"],
        )
        .trim()
        .parse()
        .unwrap()
    }

    /// A root naming our online key, trusted the way an agent trusts it.
    fn trusted_root(&self) -> gitfleet_schemas::verify::Verified<Root> {
        let root_key = SigningKey::from_bytes(&[42; 32]);
        let public = PublicKey(root_key.verifying_key().to_bytes());
        let root = Root {
            fleet: "acme-edge".into(),
            version: 1,
            expires: Utc::now() + Duration::days(30),
            root_keys: vec![public],
            root_threshold: 1,
            online_keys: vec![self.online_public],
            online_threshold: 1,
        };
        let mut env = root.envelope();
        env.sign(&root_key).unwrap();
        verify_first_root(&env.to_json(), "acme-edge", &[public], 1).unwrap()
    }
}

fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn a_pass_uploads_bundles_commits_state_and_publishes_verifiable_manifests() {
    let fleet = Fleet::new();
    let store = format!("file://{}", fleet.path("store").display());
    let (code, stdout, stderr) = fleet.reconcile(&store, &[]);
    assert_eq!(code, 0, "{stdout}{stderr}");

    let files = files_under(&fleet.path("store"));
    let bundles = files
        .iter()
        .filter(|f| f.starts_with("bundles/sha256/"))
        .count();
    // edge, api-gateway and the backbone mesh.
    assert_eq!(bundles, 3, "{files:?}");
    for env in ["dev", "staging", "prod"] {
        assert!(files.contains(&format!("channels/{env}.json")), "{files:?}");
    }

    let edge = fleet.state("edge");
    assert_eq!(edge.environments["dev"].phase, Phase::Progressing);
    assert_eq!(edge.environments["staging"].phase, Phase::Pending);
    assert!(edge.environments["staging"]
        .reason
        .starts_with("waiting for dev to complete"));

    let root = fleet.trusted_root();
    let bytes = std::fs::read(fleet.path("store/channels/dev.json")).unwrap();
    let manifest = verify_channel(&root, &bytes, "dev", None, Utc::now()).unwrap();
    assert_eq!(manifest.serial, 1);
    let edge_channel = manifest.rollouts.iter().find(|r| r.name == "edge").unwrap();
    assert_eq!(edge_channel.bundle, edge.environments["dev"].target);
    // Every bundle a manifest names is in the store.
    let key = edge_channel.bundle.object_key().unwrap();
    assert!(fleet.path("store").join(key).exists());
}

#[test]
fn over_git_daemon_and_s3_a_push_becomes_bundles_manifests_and_a_state_commit() {
    let fleet = Fleet::new();
    let daemon = GitDaemon::start(fleet.dir.path());
    let repo = daemon.url("origin.git");
    let moto = Moto::start();
    let url = "s3://gitfleet/fleet";
    let s3 = moto.store(url);
    let pass = || {
        let out = Command::new(bin("gitfleet"))
            .args(["reconcile", "--once", "--repo", &repo, "--store", url])
            .arg("--online-key")
            .arg(fleet.path("online.key"))
            .arg("--cache")
            .arg(fleet.path("mirror"))
            .args(["--holder", "test-replica"])
            .envs(moto.env())
            .output()
            .unwrap();
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{stdout}{stderr}");
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let bundles = || runtime.block_on(s3.list("bundles/")).unwrap();
    let dev = || {
        let bytes = runtime
            .block_on(s3.get("channels/dev.json"))
            .unwrap()
            .expect("channels/dev.json in S3")
            .bytes;
        let root = fleet.trusted_root();
        (*verify_channel(&root, &bytes, "dev", None, Utc::now()).unwrap()).clone()
    };

    pass();
    // edge, api-gateway and the backbone mesh, in S3; the state over git.
    assert_eq!(bundles().len(), 3, "{:?}", bundles());
    let first = fleet.state("edge").environments["dev"].target.clone();
    let manifest = dev();
    let edge = manifest.rollouts.iter().find(|r| r.name == "edge").unwrap();
    assert_eq!(edge.bundle, first);
    assert!(bundles().contains(&first.object_key().unwrap()));

    // Someone pushes a change over git://: the next pass builds, uploads
    // and rolls out the new bundle.
    let work = fleet.path("work");
    append_commit_push(&work, &[(EDGE, "// tuned\n")], "tune edge", &repo);
    pass();
    let second = fleet.state("edge").environments["dev"].target.clone();
    assert_ne!(second, first);
    assert_eq!(bundles().len(), 4, "{:?}", bundles());
    let next = dev();
    assert!(next.serial > manifest.serial);
    let edge = next.rollouts.iter().find(|r| r.name == "edge").unwrap();
    assert_eq!(edge.bundle, second);
}

/// A fresh replica over `git daemon` starts from shallow branches (the
/// state branch's tip, the spec branch's last commits), fetches more of
/// the spec branch where the last change of a config lies deeper, and
/// plans exactly what a replica with the whole history plans.
#[test]
fn over_git_daemon_a_fresh_shallow_replica_plans_what_a_whole_mirror_plans() {
    let fleet = Fleet::new();
    let store = format!("file://{}", fleet.path("store").display());
    let (code, stdout, stderr) = fleet.reconcile(&store, &[]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    // The edge config changes, then 70 commits leave it alone: its last
    // change lies below what a cold start fetches.
    let work = fleet.path("work");
    let config = work.join(EDGE);
    let mut t = std::fs::read_to_string(&config).unwrap();
    t.push_str("// tuned\n");
    std::fs::write(&config, t).unwrap();
    git(&work, &["commit", "-qam", "tune edge"]);
    for i in 0..70 {
        std::fs::write(work.join("NOTES"), format!("{i}\n")).unwrap();
        git(&work, &["add", "NOTES"]);
        git(&work, &["commit", "-qm", "notes"]);
    }
    git(&work, &["push", "-q", "origin", "main"]);

    let daemon = GitDaemon::start(fleet.dir.path());
    let plan = |repo: &str, cache: &str| {
        let out = Command::new(bin("gitfleet"))
            .args(["reconcile", "--once", "--dry-run", "--repo", repo])
            .args(["--store", &store])
            .arg("--online-key")
            .arg(fleet.path("online.key"))
            .arg("--cache")
            .arg(fleet.path(cache))
            .args(["--holder", "test-replica"])
            .output()
            .unwrap();
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{stdout}{stderr}");
        // The plan without what depends on the moment it was made.
        stdout
            .lines()
            .filter(|l| !l.starts_with("plan at "))
            .map(|l| l.split(", expires ").next().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    let whole = plan(fleet.path("origin.git").to_str().unwrap(), "mirror");
    let fresh = plan(&daemon.url("origin.git"), "fresh");
    assert_eq!(fresh, whole);
    assert!(
        whole
            .iter()
            .any(|l| l.contains("upload") && l.contains("(edge,")),
        "{whole:#?}"
    );
    assert!(fleet.path("fresh/shallow").is_file());
}

/// `gitfleet state compact` over `git daemon`: a dry run changes nothing;
/// then the state branch is one commit with the same files, the old tip
/// is under a tag, and the reconciler, whose mirror still holds the old
/// history, goes on from the new tip.
#[test]
fn state_compact_squashes_the_history_and_the_reconciler_goes_on() {
    let fleet = Fleet::new();
    let store = format!("file://{}", fleet.path("store").display());
    let (code, stdout, stderr) = fleet.reconcile(&store, &[]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let work = fleet.path("work");
    append_commit_push(&work, &[(EDGE, "// tuned\n")], "tune edge", "origin");
    let (code, stdout, stderr) = fleet.reconcile(&store, &[]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let commits = fleet.state_commits();
    assert!(commits >= 2, "{commits}");
    let before = git(&fleet.path("origin.git"), &["rev-parse", "gitfleet/state"])
        .trim()
        .to_owned();
    let edge = fleet.state("edge");
    // Every commit so far is older than "now" a second from now.
    std::thread::sleep(std::time::Duration::from_millis(1100));

    let daemon = GitDaemon::start(fleet.dir.path());
    let compact = |extra: &[&str]| {
        let out = Command::new(bin("gitfleet"))
            .args(["state", "compact", "--repo", &daemon.url("origin.git")])
            .args(["--older-than", "0s", "--tag", "audit/state-1"])
            .arg("--cache")
            .arg(fleet.path("admin"))
            .args(extra)
            .output()
            .unwrap();
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{stdout}{stderr}");
        stdout
    };
    let dry = compact(&["--dry-run"]);
    assert!(
        dry.contains(&format!("squash the {commits} commits older than")),
        "{dry}"
    );
    assert!(dry.contains("dry run"), "{dry}");
    assert_eq!(fleet.state_commits(), commits);

    let done = compact(&[]);
    assert!(done.contains("pushed tag audit/state-1"), "{done}");
    assert_eq!(fleet.state_commits(), 1);
    let origin = fleet.path("origin.git");
    assert_eq!(git(&origin, &["rev-parse", "audit/state-1"]).trim(), before);
    assert_eq!(
        git(&origin, &["diff", &before, "gitfleet/state"]).trim(),
        ""
    );
    assert_eq!(fleet.state("edge"), edge);

    // The reconciler's mirror still has the old history; it follows the
    // new tip and finds nothing to do, then commits on it.
    let (code, stdout, stderr) = fleet.reconcile(&store, &[]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("state unchanged"), "{stdout}");
    append_commit_push(
        &work,
        &[(EDGE, "// tuned again\n")],
        "tune edge again",
        "origin",
    );
    let (code, stdout, stderr) = fleet.reconcile(&store, &[]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_eq!(fleet.state_commits(), 2);
    assert_ne!(fleet.state("edge"), edge);
}

#[test]
fn a_second_pass_with_nothing_new_writes_nothing() {
    let fleet = Fleet::new();
    let store = format!("file://{}", fleet.path("store").display());
    let (code, _, stderr) = fleet.reconcile(&store, &[]);
    assert_eq!(code, 0, "{stderr}");
    let before = std::fs::read(fleet.path("store/channels/dev.json")).unwrap();
    let commits = fleet.state_commits();

    let (code, stdout, stderr) = fleet.reconcile(&store, &[]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("state unchanged"), "{stdout}");
    assert!(!stdout.contains("published"), "{stdout}");
    assert_eq!(fleet.state_commits(), commits);
    assert_eq!(
        std::fs::read(fleet.path("store/channels/dev.json")).unwrap(),
        before
    );
}

#[test]
fn dry_run_writes_nothing_and_tells_nobody_but_says_whom_it_would() {
    let fleet = Fleet::new();
    // A receiver nobody listens at: a dry run never sends.
    append_commit_push(
        &fleet.path("work"),
        &[(
            "fleet.kdl",
            "notify \"ops\" {\n    slack \"http://127.0.0.1:9/hooks\"\n    events \"rollout-started\"\n    environments \"dev\"\n}\n",
        )],
        "tell ops",
        "origin",
    );
    let store = format!("file://{}", fleet.path("store").display());
    let (code, stdout, stderr) = fleet.reconcile(&store, &["--dry-run"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("rollout edge"), "{stdout}");
    assert!(
        stdout.contains("would tell ops: edge in dev: started rolling out "),
        "{stdout}"
    );
    assert!(
        !stdout.contains("would tell ops: edge in staging"),
        "{stdout}"
    );
    assert!(
        stdout.contains("dry run: nothing uploaded, committed, published or told"),
        "{stdout}"
    );
    assert!(files_under(&fleet.path("store")).is_empty());
    let branches = git(&fleet.path("origin.git"), &["branch", "--list"]);
    assert!(!branches.contains("gitfleet/state"), "{branches}");
}

#[test]
fn a_broken_config_does_not_stop_the_rest_of_the_fleet() {
    let fleet = Fleet::new();
    let store = format!("file://{}", fleet.path("store").display());
    let (code, _, stderr) = fleet.reconcile(&store, &[]);
    assert_eq!(code, 0, "{stderr}");
    let edge_before = fleet.state("edge");

    // Break the edge config and change the gateway's in one push.
    let work = fleet.path("work");
    let edge = work.join("configs/edge/sentinel.kdl");
    let t = std::fs::read_to_string(&edge).unwrap();
    std::fs::write(
        &edge,
        t.replace(
            "listeners {",
            "listeners {\n    listener \"broken\" { protocol \"quic\"; }",
        ),
    )
    .unwrap();
    let gw = work.join("configs/api-gateway/sentinel.kdl");
    let t = std::fs::read_to_string(&gw).unwrap();
    std::fs::write(&gw, t.replace("worker-threads 4", "worker-threads 8")).unwrap();
    git(&work, &["commit", "-qam", "break edge, tune gateway"]);
    git(&work, &["push", "-q", "origin", "main"]);

    let (code, stdout, stderr) = fleet.reconcile(&store, &[]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("error(s) in the fleet repo"), "{stdout}");
    assert!(!stdout.contains(": 0 error(s)"), "{stdout}");
    // The edge rollout keeps its last good bundle; the gateway moves on.
    assert_eq!(
        fleet.state("edge").environments["dev"].target,
        edge_before.environments["dev"].target
    );
    let gw_state = fleet.state("api-gateway");
    let head = git(&work, &["rev-parse", "HEAD"]);
    assert_eq!(gw_state.environments["dev"].source_commit, head.trim());
}

fn steer(fleet: &Fleet, verb: &str, rollout: &str) -> String {
    let out = Command::new(bin("gitfleet"))
        .args(["rollout", verb, rollout, "-m", "test run"])
        .current_dir(fleet.path("work"))
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "rollout {verb}: {stdout}{stderr}");
    stdout
}

#[test]
fn pause_resume_and_rollback_are_commits_the_reconciler_follows() {
    let fleet = Fleet::new();
    let store = format!("file://{}", fleet.path("store").display());
    let pass = |fleet: &Fleet| {
        let (code, stdout, stderr) = fleet.reconcile(&store, &[]);
        assert_eq!(code, 0, "{stdout}{stderr}");
        fleet.state("edge").environments["dev"].clone()
    };
    assert_eq!(pass(&fleet).phase, Phase::Progressing);

    let out = steer(&fleet, "pause", "edge");
    assert!(
        out.contains("rollout edge: pause") && out.contains("pushed"),
        "{out}"
    );
    let dev = pass(&fleet);
    assert_eq!(dev.phase, Phase::Paused);
    assert_eq!(dev.reason, "paused in rollouts/edge.kdl");

    steer(&fleet, "resume", "edge");
    assert_eq!(pass(&fleet).phase, Phase::Progressing);

    steer(&fleet, "rollback", "edge");
    let dev = pass(&fleet);
    // Nothing completed before, so there is nothing to go back to.
    assert_eq!(dev.phase, Phase::Failed);
    assert!(
        dev.reason
            .contains("rollback requested in rollouts/edge.kdl"),
        "{}",
        dev.reason
    );

    let log = git(
        &fleet.path("origin.git"),
        &["log", "--format=%s%n%an", "main"],
    );
    for verb in ["pause", "resume", "rollback"] {
        assert!(log.contains(&format!("rollout edge: {verb}")), "{log}");
    }
    assert!(log.contains("Operator"), "{log}");
}

#[test]
fn steering_an_unknown_rollout_fails_clearly() {
    let fleet = Fleet::new();
    let out = Command::new(bin("gitfleet"))
        .args(["rollout", "pause", "nope"])
        .current_dir(fleet.path("work"))
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr.contains("is `nope` a rollout of this fleet repo"),
        "{stderr}"
    );
}

#[test]
fn an_unrelated_commit_leaves_bundles_and_rollouts_alone() {
    let fleet = Fleet::new();
    let store = format!("file://{}", fleet.path("store").display());
    let (code, _, stderr) = fleet.reconcile(&store, &[]);
    assert_eq!(code, 0, "{stderr}");
    let before = fleet.state("edge");

    // A commit that touches no config: a node's labels elsewhere.
    let work = fleet.path("work");
    std::fs::write(work.join("NOTES.md"), "on-call: alice\n").unwrap();
    git(&work, &["add", "NOTES.md"]);
    git(&work, &["commit", "-qm", "notes"]);
    git(&work, &["push", "-q", "origin", "main"]);

    let (code, stdout, stderr) = fleet.reconcile(&store, &[]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(!stdout.contains("uploaded bundle"), "{stdout}");
    assert!(stdout.contains("state unchanged"), "{stdout}");
    assert_eq!(fleet.state("edge"), before);
}

/// The edge nodes of the example fleet: the backbone mesh's members.
fn edge_nodes() -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(workspace().join("examples/fleet-repo/nodes"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("edge-"))
        .map(|n| n.trim_end_matches(".kdl").to_owned())
        .collect();
    out.sort();
    out
}

/// Every member has a distinct host address of 10.40.0.0/24, the one the
/// allocation on the state branch gives it.
fn check_mesh(mesh: &MeshBundle, allocation: &MeshAllocation, nodes: &[String]) {
    let members: Vec<&str> = mesh.members.iter().map(|m| m.node.as_str()).collect();
    assert_eq!(members, nodes);
    assert_eq!(mesh.interface, "wg-backbone");
    assert_eq!(mesh.listen_port, Some(51820));
    let mut seen = std::collections::BTreeSet::new();
    for m in &mesh.members {
        let ip = m.address.strip_suffix("/24").unwrap();
        let octets = ip.parse::<std::net::Ipv4Addr>().unwrap().octets();
        assert_eq!(octets[..3], [10, 40, 0], "{}", m.address);
        assert!((1..=254).contains(&octets[3]), "{}", m.address);
        assert!(seen.insert(ip.to_owned()), "{ip} given twice");
        assert_eq!(m.allowed_ips, [format!("{ip}/32")]);
        assert_eq!(allocation.addresses[&m.node].to_string(), ip);
    }
    assert_eq!(allocation.addresses.len(), nodes.len());
    assert_eq!(allocation.cidr, "10.40.0.0/24");
}

#[test]
fn the_backbone_mesh_is_bundled_and_keeps_its_addresses_when_it_grows() {
    let fleet = Fleet::new();
    let store = format!("file://{}", fleet.path("store").display());
    let (code, stdout, stderr) = fleet.reconcile(&store, &[]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains("mesh backbone: edge-dev-fra-1 gets 10.40.0.1"),
        "{stdout}"
    );

    let mut nodes = edge_nodes();
    assert_eq!(nodes.len(), 7, "{nodes:?}");
    let allocation = fleet.allocation("backbone");
    let dev = fleet.state("backbone").environments["dev"].clone();
    assert_eq!(dev.phase, Phase::Progressing);
    let first = fleet.mesh_bundle(&dev.target);
    check_mesh(&first, &allocation, &nodes);
    // The mesh allocation came with the rollout state, in one commit that
    // says who got which address.
    let message = git(
        &fleet.path("origin.git"),
        &["log", "-1", "--format=%B", "gitfleet/state"],
    );
    assert!(message.contains("mesh address change(s)"), "{message}");
    for node in &nodes {
        let ip = allocation.addresses[node];
        assert!(
            message.contains(&format!("mesh backbone: {node} gets {ip}")),
            "{message}"
        );
    }

    // Nothing new: no bundle, no commit.
    let commits = fleet.state_commits();
    let (code, stdout, stderr) = fleet.reconcile(&store, &[]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(!stdout.contains("uploaded bundle"), "{stdout}");
    assert!(stdout.contains("state unchanged"), "{stdout}");
    assert_eq!(fleet.state_commits(), commits);

    // A node outside the mesh changes: the mesh bundle stays as it is.
    let work = fleet.path("work");
    let api = work.join("nodes/api-fra-1.kdl");
    let text = std::fs::read_to_string(&api).unwrap();
    std::fs::write(
        &api,
        text.replace("role=\"api\"", "role=\"api\" tier=\"1\""),
    )
    .unwrap();
    git(&work, &["commit", "-qam", "label an api node"]);
    git(&work, &["push", "-q", "origin", "main"]);
    let (code, stdout, stderr) = fleet.reconcile(&store, &[]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(!stdout.contains("uploaded bundle"), "{stdout}");
    assert_eq!(
        fleet.state("backbone").environments["dev"].target,
        dev.target
    );

    // A new edge node: sorted among the others, but nobody else moves.
    let node_key = SigningKey::from_bytes(&[77; 32]).verifying_key().to_bytes();
    let b64 = |b: &[u8]| {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(b)
    };
    std::fs::write(
        work.join("nodes/edge-fra-3.kdl"),
        format!(
            "version 1\nid \"edge-fra-3\"\nenvironment \"prod\"\nlabels region=\"fra\" role=\"edge\"\nnode-key \"{}\"\nwireguard public-key=\"{}\" endpoint=\"198.51.100.33:51820\"\n",
            b64(&node_key),
            b64(&[0x5a; 32]),
        ),
    )
    .unwrap();
    git(&work, &["add", "nodes/edge-fra-3.kdl"]);
    git(&work, &["commit", "-qm", "edge-fra-3 joins"]);
    git(&work, &["push", "-q", "origin", "main"]);
    let (code, stdout, stderr) = fleet.reconcile(&store, &[]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("uploaded bundle"), "{stdout}");
    assert!(stdout.contains(": 0 error(s)"), "{stdout}");

    let grown = fleet.allocation("backbone");
    for (node, ip) in &allocation.addresses {
        assert_eq!(grown.addresses[node], *ip, "{node} moved");
    }
    assert_eq!(grown.addresses["edge-fra-3"].to_string(), "10.40.0.8");
    nodes.push("edge-fra-3".to_owned());
    nodes.sort();
    let target = fleet.state("backbone").environments["dev"].target.clone();
    assert_ne!(target, dev.target);
    check_mesh(&fleet.mesh_bundle(&target), &grown, &nodes);
    let message = git(
        &fleet.path("origin.git"),
        &["log", "-1", "--format=%B", "gitfleet/state"],
    );
    assert!(
        message.contains("mesh backbone: edge-fra-3 gets 10.40.0.8"),
        "{message}"
    );
    assert!(!message.contains("edge-fra-1 gets"), "{message}");

    // edge-fra-3 leaves the mesh (a new role): its address is held, since
    // every member still runs a bundle that names it, and a newcomer in
    // the same push takes another.
    let fra3 = work.join("nodes/edge-fra-3.kdl");
    let text = std::fs::read_to_string(&fra3).unwrap();
    std::fs::write(&fra3, text.replace("role=\"edge\"", "role=\"lab\"")).unwrap();
    let node_key = SigningKey::from_bytes(&[78; 32]).verifying_key().to_bytes();
    std::fs::write(
        work.join("nodes/edge-fra-4.kdl"),
        format!(
            "version 1\nid \"edge-fra-4\"\nenvironment \"prod\"\nlabels region=\"fra\" role=\"edge\"\nnode-key \"{}\"\nwireguard public-key=\"{}\" endpoint=\"198.51.100.34:51820\"\n",
            b64(&node_key),
            b64(&[0x5b; 32]),
        ),
    )
    .unwrap();
    git(&work, &["add", "-A"]);
    git(
        &work,
        &["commit", "-qm", "edge-fra-3 leaves, edge-fra-4 joins"],
    );
    git(&work, &["push", "-q", "origin", "main"]);
    let (code, stdout, stderr) = fleet.reconcile(&store, &[]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let after = fleet.allocation("backbone");
    assert!(!after.addresses.contains_key("edge-fra-3"));
    assert_eq!(after.held["edge-fra-3"].address.to_string(), "10.40.0.8");
    assert_eq!(after.addresses["edge-fra-4"].to_string(), "10.40.0.9");
    let message = git(
        &fleet.path("origin.git"),
        &["log", "-1", "--format=%B", "gitfleet/state"],
    );
    assert!(
        message.contains("mesh backbone: edge-fra-3 left, 10.40.0.8 held"),
        "{message}"
    );
}

/// `state-branch` in fleet.kdl is where every command finds the state:
/// the reconciler commits there, `gitfleet status` reads it. Switching it
/// to a branch without state, once the store serves the fleet, is refused:
/// starting over there would take the rules from the very commit that
/// switched.
#[test]
fn the_state_branch_fleet_kdl_names_is_followed_and_a_switch_to_an_empty_one_refused() {
    let fleet = Fleet::new();
    let store = format!("file://{}", fleet.path("store").display());
    let work = fleet.path("work");
    let set_state_branch = |name: &str, message: &str| {
        let path = work.join("fleet.kdl");
        let text = std::fs::read_to_string(&path).unwrap();
        let kept: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with("state-branch "))
            .collect();
        std::fs::write(
            &path,
            format!("{}\nstate-branch \"{name}\"\n", kept.join("\n")),
        )
        .unwrap();
        git(&work, &["commit", "-qam", message]);
        git(&work, &["push", "-q", "origin", "main"]);
    };
    set_state_branch("ops/state", "state on ops/state");
    let (code, stdout, stderr) = fleet.reconcile(&store, &[]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let branches = git(&fleet.path("origin.git"), &["branch", "--list"]);
    assert!(branches.contains("ops/state"), "{branches}");
    assert!(!branches.contains("gitfleet/state"), "{branches}");
    let out = Command::new(bin("gitfleet"))
        .args(["status", "--format", "json", "--repo"])
        .arg(fleet.path("origin.git"))
        .arg("--cache")
        .arg(fleet.path("status-cache"))
        .args(["--store", &store])
        .output()
        .unwrap();
    let (json, stderr) = text(&out);
    let view: serde_json::Value = serde_json::from_str(&json).expect(&stderr);
    assert!(view["state_commit"].is_string(), "{json}");

    // A push that points the state at a branch with nothing on it.
    set_state_branch("fresh/state", "state elsewhere");
    let (code, stdout, stderr) = fleet.reconcile(&store, &[]);
    assert_ne!(code, 0, "{stdout}{stderr}");
    assert!(
        stderr.contains(
            "state branch fresh/state holds no state, yet the store already serves this fleet"
        ),
        "{stderr}"
    );
    let branches = git(&fleet.path("origin.git"), &["branch", "--list"]);
    assert!(!branches.contains("fresh/state"), "{branches}");
}

/// A node file removed by a push: the node's manifest names it as
/// decommissioned (its agent stops), and once the grace period is over the
/// pass removes its status and enrollment objects and forgets it.
#[test]
fn a_removed_node_file_decommissions_the_node_and_its_objects_go_after_the_grace() {
    let fleet = Fleet::new();
    let store = format!("file://{}", fleet.path("store").display());
    let (code, stdout, stderr) = fleet.reconcile(&store, &[]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let departed: gitfleet_schemas::state::Departed =
        serde_json::from_slice(&fleet.state_file("departed.json")).unwrap();
    assert!(departed.nodes.is_empty());
    // What the departing node left in the store.
    for key in ["status/edge-iad-2.json", "enroll/edge-iad-2.json"] {
        let path = fleet.path("store").join(key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b"{}").unwrap();
    }

    let work = fleet.path("work");
    git(&work, &["rm", "-q", "nodes/edge-iad-2.kdl"]);
    let kdl = std::fs::read_to_string(work.join("fleet.kdl")).unwrap();
    let kdl = kdl.replacen("defaults {", "defaults {\n    decommission-grace \"1s\"", 1);
    std::fs::write(work.join("fleet.kdl"), kdl).unwrap();
    git(&work, &["commit", "-qam", "edge-iad-2 is retired"]);
    git(&work, &["push", "-q", "origin", "main"]);
    let (code, stdout, stderr) = fleet.reconcile(&store, &[]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let root = fleet.trusted_root();
    let prod = || {
        let bytes = std::fs::read(fleet.path("store/channels/prod.json")).unwrap();
        verify_channel(&root, &bytes, "prod", None, Utc::now()).unwrap()
    };
    assert_eq!(prod().decommissioned, ["edge-iad-2"]);
    let departed: gitfleet_schemas::state::Departed =
        serde_json::from_slice(&fleet.state_file("departed.json")).unwrap();
    assert_eq!(departed.nodes["edge-iad-2"].environment, "prod");
    assert!(fleet.path("store/status/edge-iad-2.json").exists());

    std::thread::sleep(std::time::Duration::from_millis(1100));
    let (code, stdout, stderr) = fleet.reconcile(&store, &[]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(!fleet.path("store/status/edge-iad-2.json").exists());
    assert!(!fleet.path("store/enroll/edge-iad-2.json").exists());
    assert!(prod().decommissioned.is_empty());
    let departed: gitfleet_schemas::state::Departed =
        serde_json::from_slice(&fleet.state_file("departed.json")).unwrap();
    assert!(departed.nodes.is_empty());

    // A node file rewritten in place under another id: the old id departs.
    let path = work.join("nodes/edge-iad-1.kdl");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replace("id \"edge-iad-1\"", "id \"edge-iad-9\""),
    )
    .unwrap();
    git(&work, &["commit", "-qam", "edge-iad-1 is edge-iad-9 now"]);
    git(&work, &["push", "-q", "origin", "main"]);
    let (code, stdout, stderr) = fleet.reconcile(&store, &[]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let departed: gitfleet_schemas::state::Departed =
        serde_json::from_slice(&fleet.state_file("departed.json")).unwrap();
    assert_eq!(departed.nodes.keys().collect::<Vec<_>>(), ["edge-iad-1"]);
}
