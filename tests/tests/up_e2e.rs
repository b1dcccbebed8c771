//! `gitfleet up` as a user runs it: the built-in example fleet set up in a
//! fresh directory, rolled out by the reconciler and simulated agents,
//! stopped with Ctrl-C, changed with `git push` from the working clone,
//! and resumed by running `gitfleet up` again.

#![allow(clippy::unwrap_used)] // test helpers fail the test by panicking

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use gitfleet_schemas::state::{Phase, RolloutState};
use gitfleet_schemas::view::FleetStatus;
use gitfleet_tests::{bin, git, text, Spawned};

/// A running `gitfleet up`, killed if the test fails before it stops.
struct Up(Spawned);

impl Up {
    fn start(cwd: &Path, run: usize) -> Up {
        Up(Spawned::up(cwd, &format!("up-{run}"), &[]))
    }

    fn output(&self) -> String {
        self.0.output()
    }

    /// Interrupt it as Ctrl-C would; it must exit 0, saying so.
    fn stop(self) -> String {
        let out = self.0.stop();
        assert!(out.contains("stopped: interrupted"), "{out}");
        out
    }
}

/// `gitfleet status` on the stopped demo: JSON in its published schema,
/// with dev's api-gateway complete on every node, and the human picture.
fn fleet_status_shows_the_first_run(cwd: &Path) {
    let status = |format: &str| {
        let out = Command::new(bin("gitfleet"))
            .args(["status", "--repo", "demo/fleet.git", "--format", format])
            .current_dir(cwd)
            .output()
            .unwrap();
        let (stdout, stderr) = text(&out);
        assert!(matches!(out.status.code(), Some(0 | 1)), "{stdout}{stderr}");
        (out.status.code(), stdout)
    };
    let (code, json) = status("json");
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            gitfleet_tests::workspace().join("schemas/json/fleet-status.schema.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let errors: Vec<String> = validator
        .iter_errors(&value)
        .map(|e| e.to_string())
        .collect();
    assert!(errors.is_empty(), "{errors:#?}\n{json}");
    let view: FleetStatus = serde_json::from_value(value).unwrap();
    // 0 exactly when every node is healthy.
    let all_healthy = view.totals.healthy == view.totals.nodes;
    assert_eq!(code, Some(if all_healthy { 0 } else { 1 }), "{json}");
    assert_eq!(view.fleet, "acme-edge");
    assert_eq!(view.totals.nodes, 11);
    let dev = view.environments.iter().find(|e| e.name == "dev").unwrap();
    let api = dev
        .rollouts
        .iter()
        .find(|r| r.name == "api-gateway")
        .unwrap();
    assert_eq!(api.phase, Phase::Complete);
    assert!(api.nodes > 0 && api.on_target == api.nodes, "{api:?}");

    let (_, human) = status("human");
    assert!(human.starts_with("fleet acme-edge at "), "{human}");
    assert!(
        human
            .lines()
            .any(|l| l.contains("api-gateway") && l.contains("complete")),
        "{human}"
    );
}

/// The committed state of `rollout` on the demo's state branch, if any.
fn state(bare: &Path, rollout: &str) -> Option<RolloutState> {
    gitfleet_tests::state_file(bare, &format!("rollouts/{rollout}.json"))
}

/// Wait until `done` holds for `rollout`'s state, failing with the output.
fn wait_for(up: &Up, bare: &Path, rollout: &str, done: impl Fn(&RolloutState) -> bool) {
    let started = Instant::now();
    loop {
        if state(bare, rollout).is_some_and(|s| done(&s)) {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "rollout {rollout} did not get there; state {:?}\noutput:\n{}",
            state(bare, rollout),
            up.output()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn up_rolls_out_the_example_stops_on_ctrl_c_and_resumes_after_a_push() {
    let cwd = tempfile::tempdir().unwrap();
    let demo = cwd.path().join("demo");
    let bare = demo.join("fleet.git");

    // First run: set up from the built-in example, roll it out in dev.
    let up = Up::start(cwd.path(), 1);
    // api-gateway has no change windows, so this holds on any day; its
    // gates ask for metrics, edge's (waited for below) an HTTP check too.
    wait_for(&up, &bare, "api-gateway", |s| {
        s.environments.get("dev").map(|e| e.phase) == Some(Phase::Complete)
    });
    let first = state(&bare, "api-gateway").unwrap().environments["dev"]
        .target
        .clone();
    let out = up.stop();
    assert!(out.contains("set up demo from the example fleet"), "{out}");
    assert!(
        out.contains("11 simulated nodes in dev, staging, prod"),
        "{out}"
    );
    assert!(out.contains("cd demo/fleet"), "{out}");
    // The last block drawn shows the completed environment with a full bar.
    let last = out.rsplit("nodes, ").next().unwrap();
    assert!(
        last.lines().any(|l| l.starts_with("api-gateway  dev")
            && l.contains("complete")
            && l.contains(&format!("[{}]", "#".repeat(20)))),
        "{out}"
    );
    for key in ["root-1.key", "root-2.key", "root-3.key", "online.key"] {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(demo.join("keys").join(key))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{key}");
    }
    fleet_status_shows_the_first_run(cwd.path());

    // A change, pushed from the working clone as the screen says.
    let work = demo.join("fleet");
    let config = work.join("configs/api-gateway/sentinel.kdl");
    let mut text_now = std::fs::read_to_string(&config).unwrap();
    text_now.push_str("// a comment changes the bundle's bytes\n");
    std::fs::write(&config, text_now).unwrap();
    git(&work, &["commit", "-qam", "api-gateway: a comment"]);
    git(&work, &["push", "-q"]);

    // Second run resumes: the state branch carries on, and the new bundle
    // replaces the one that completed, which becomes the previous one.
    let up = Up::start(cwd.path(), 2);
    wait_for(&up, &bare, "api-gateway", |s| {
        s.environments.get("dev").is_some_and(|e| {
            e.phase == Phase::Complete && e.target != first && e.previous.as_ref() == Some(&first)
        })
    });
    // Edge's gates include an HTTP check, which the simulated nodes run.
    wait_for(&up, &bare, "edge", |s| {
        s.environments
            .get("dev")
            .is_some_and(|e| e.phase == Phase::Complete || e.phase == Phase::WaitingWindow)
    });
    // prod waits for two approvals of the commit; give them as the
    // screen says, while everything runs.
    wait_for(&up, &bare, "api-gateway", |s| {
        s.environments.get("prod").map(|e| e.phase) == Some(Phase::AwaitingApproval)
    });
    let approve = |who: &str, env: &str| {
        let out = Command::new(bin("gitfleet"))
            .args(["approve", "--repo", "demo/fleet.git", "--env", env, "--key"])
            .arg(format!("demo/keys/approver-{who}.key"))
            .arg("--all-waiting")
            .current_dir(cwd.path())
            .output()
            .unwrap();
        let (stdout, stderr) = text(&out);
        (out.status.code(), format!("{stdout}{stderr}"))
    };
    let (code, said) = approve("alice", "dev");
    assert_eq!(code, Some(2), "{said}");
    assert!(
        said.contains("environment `dev` takes no approvals"),
        "{said}"
    );
    // `gitfleet status` names what waits there and how to approve it.
    let out = Command::new(bin("gitfleet"))
        .args(["status", "--repo", "demo/fleet.git", "--env", "prod"])
        .current_dir(cwd.path())
        .output()
        .unwrap();
    let (status, _) = text(&out);
    let waiting_for = state(&bare, "api-gateway").unwrap().environments["prod"]
        .source_commit
        .clone();
    assert!(status.contains("waiting for approval:"), "{status}");
    assert!(
        status
            .lines()
            .any(|l| l.contains(&waiting_for[..12]) && l.contains("api-gateway")),
        "{status}"
    );
    assert!(
        status.contains(" approve --repo demo/fleet.git --env prod --key KEY --all-waiting"),
        "{status}"
    );
    for who in ["alice", "bob"] {
        let (code, said) = approve(who, "prod");
        assert_eq!(code, Some(0), "{said}");
        // Every commit waiting is listed before it is approved.
        assert!(said.contains("waiting for approval in prod:"), "{said}");
        assert!(said.contains(&waiting_for[..12]), "{said}");
        assert!(said.contains(&format!("for prod as {who}")), "{said}");
    }
    // Released: prod goes on, or waits for its change window.
    wait_for(&up, &bare, "api-gateway", |s| {
        s.environments.get("prod").is_some_and(|e| {
            matches!(
                e.phase,
                Phase::WaitingWindow | Phase::Progressing | Phase::Verifying | Phase::Complete
            )
        })
    });
    let out = up.stop();
    assert!(out.contains("resuming the fleet in demo"), "{out}");
    assert!(
        out.contains(
            "prod waits for 2 approval(s) of each commit it is offered; give them as alice and bob to all that wait there:"
        ),
        "{out}"
    );
    assert!(!out.contains("set up demo"), "{out}");

    // Naming a repo to start from is refused once the directory is set up.
    let again = Command::new(bin("gitfleet"))
        .args(["up", "--dir", "demo", "some-repo"])
        .current_dir(cwd.path())
        .output()
        .unwrap();
    let (stdout, stderr) = text(&again);
    assert_eq!(again.status.code(), Some(2), "{stdout}{stderr}");
    assert!(
        stderr.contains("demo is already set up, so some-repo would not be read"),
        "{stderr}"
    );
}
