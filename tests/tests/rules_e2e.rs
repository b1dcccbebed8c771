//! A change must not loosen the rules that judge it, with real processes:
//! `gitfleet up` (reconciler and simulated agents) on the example fleet
//! with its change windows removed, so only approvals hold prod, changed by
//! `git push` from its working clone and approved with `gitfleet approve`.
//!
//! The reproduction of the security issue: prod's rollouts wait for two
//! approvals; an unreviewed commit deletes prod's `approvals` block. Prod
//! must keep waiting until two approvals of that commit are given (by the
//! approvers of the rules in force); a commit that adds an approver cannot
//! approve with that approver's key. Once the deletion is approved, the
//! rules change, and later changes need no approvals.

#![allow(clippy::unwrap_used)] // test helpers fail the test by panicking

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use gitfleet_schemas::state::{Phase, RolloutState, RulesState};
use gitfleet_tests::{bin, git, state_file, text, Spawned};

const ROLLOUTS: [&str; 3] = ["api-gateway", "backbone", "edge"];

fn prod(bare: &Path, rollout: &str) -> Option<gitfleet_schemas::state::EnvState> {
    state_file::<RolloutState>(bare, &format!("rollouts/{rollout}.json"))?
        .environments
        .get("prod")
        .cloned()
}

fn rules(bare: &Path) -> Option<RulesState> {
    state_file(bare, "rules.json")
}

/// Wait up to two minutes for `done`, failing with `up`'s output.
fn wait_for(up: &Spawned, what: &str, done: impl Fn() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "{what}: not there after two minutes\noutput:\n{}",
            up.output()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// No prod node has been admitted to anything but what it started with.
fn prod_admitted_nothing(bare: &Path) {
    for r in ROLLOUTS {
        if let Some(p) = prod(bare, r) {
            assert_eq!(p.admitted, 0, "{r} in prod: {p:?}");
            assert_ne!(p.phase, Phase::Complete, "{r} in prod: {p:?}");
        }
    }
}

fn approve(cwd: &Path, key: &Path, commit: &str) -> (Option<i32>, String) {
    let out = Command::new(bin("gitfleet"))
        .args([
            "approve",
            "--repo",
            "demo/fleet.git",
            "--env",
            "prod",
            "--key",
        ])
        .arg(key)
        .arg(commit)
        .current_dir(cwd)
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    (out.status.code(), format!("{stdout}{stderr}"))
}

fn commit_and_push(work: &Path, message: &str) -> String {
    git(work, &["commit", "-qam", message]);
    git(work, &["push", "-q"]);
    git(work, &["rev-parse", "HEAD"]).trim().to_owned()
}

#[test]
fn deleting_prods_approvals_waits_for_the_approvals_it_deletes() {
    let cwd = tempfile::tempdir().unwrap();
    let cwd = cwd.path();
    gitfleet_tests::example_fleet_without_windows(&cwd.join("start"));
    let up = Spawned::up(cwd, "up", &["start"]);
    let bare = cwd.join("demo/fleet.git");
    let work = cwd.join("demo/fleet");

    // Every rollout reaches prod and waits there for two approvals.
    wait_for(&up, "prod awaiting approvals", || {
        ROLLOUTS
            .iter()
            .all(|r| prod(&bare, r).is_some_and(|p| p.phase == Phase::AwaitingApproval))
    });
    let first = rules(&bare).expect("rules.json recorded on the first pass");
    assert_eq!(first.environments["prod"].pending, None);

    // A commit makes mallory an approver of prod, with her own key: it is
    // a change to the rules, and her key is nobody's under the rules in
    // force, so she cannot approve it (or anything).
    let mallory_key = cwd.join("mallory.key");
    let out = Command::new(bin("gitfleet"))
        .args(["keygen", "--approver", "-o"])
        .arg(&mallory_key)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out).1);
    let mallory_public = text(&out).0.trim().to_owned();
    let fleet_kdl = work.join("fleet.kdl");
    let mut fleet_text = std::fs::read_to_string(&fleet_kdl).unwrap();
    fleet_text.push_str(&format!("approver \"mallory\" key=\"{mallory_public}\"\n"));
    std::fs::write(&fleet_kdl, fleet_text).unwrap();
    let envs = work.join("environments.kdl");
    let envs_text = std::fs::read_to_string(&envs).unwrap();
    assert!(envs_text.contains("users \"alice\" \"bob\""), "{envs_text}");
    std::fs::write(
        &envs,
        envs_text.replace(
            "users \"alice\" \"bob\"",
            "users \"alice\" \"bob\" \"mallory\"",
        ),
    )
    .unwrap();
    let add_mallory = commit_and_push(&work, "prod: mallory approves too");
    let (code, said) = approve(cwd, &mallory_key, &add_mallory);
    assert_eq!(code, Some(2), "{said}");
    assert!(
        said.contains("is not the key of one of prod's approvers under the rules in force"),
        "{said}"
    );

    // The unreviewed commit that deletes prod's approvals.
    let text_now = std::fs::read_to_string(&envs).unwrap();
    let start = text_now.find("    approvals 2 {").unwrap();
    let end = start + text_now[start..].find("    }\n").unwrap() + "    }\n".len();
    std::fs::write(&envs, format!("{}{}", &text_now[..start], &text_now[end..])).unwrap();
    let delete = commit_and_push(&work, "prod: no approvals");
    wait_for(&up, "the deletion pending in prod", || {
        rules(&bare).is_some_and(|r| {
            r.environments["prod"]
                .pending
                .as_ref()
                .is_some_and(|p| p.commit == delete)
        })
    });
    let pending = rules(&bare).unwrap().environments["prod"].clone();
    assert_eq!(pending.commit, first.environments["prod"].commit);
    let reason = pending.pending.unwrap().reason;
    assert!(reason.contains("awaiting 2 approvals"), "{reason}");
    // Several passes later (interval 1s), prod still has admitted nothing.
    std::thread::sleep(Duration::from_secs(5));
    prod_admitted_nothing(&bare);
    for r in ROLLOUTS {
        let p = prod(&bare, r).unwrap();
        assert_eq!(p.phase, Phase::AwaitingApproval, "{r}: {p:?}");
    }
    // `gitfleet status` says where prod's rules come from and what waits.
    let out = Command::new(bin("gitfleet"))
        .args(["status", "--repo", "demo/fleet.git", "--env", "prod"])
        .current_dir(cwd)
        .output()
        .unwrap();
    let (status, _) = text(&out);
    let short = |c: &str| c[..12].to_owned();
    assert!(
        status.contains(&format!(
            "rules from {}",
            short(&first.environments["prod"].commit)
        )),
        "{status}"
    );
    assert!(
        status.contains(&format!(
            "rules change {}: awaiting 2 approvals",
            short(&delete)
        )),
        "{status}"
    );

    // One approval is not enough.
    let keys = cwd.join("demo/keys");
    let (code, said) = approve(cwd, &keys.join("approver-alice.key"), &delete);
    assert_eq!(code, Some(0), "{said}");
    assert!(
        said.contains("a change to the rules of prod waits"),
        "{said}"
    );
    std::thread::sleep(Duration::from_secs(4));
    prod_admitted_nothing(&bare);

    // The second approval puts the new rules in force: what waited in prod
    // goes ahead, with no approvals of its own.
    let (code, said) = approve(cwd, &keys.join("approver-bob.key"), &delete);
    assert_eq!(code, Some(0), "{said}");
    wait_for(&up, "the deletion in force", || {
        rules(&bare).is_some_and(|r| {
            r.environments["prod"].commit == delete && r.environments["prod"].pending.is_none()
        })
    });
    wait_for(&up, "prod complete", || {
        ROLLOUTS
            .iter()
            .all(|r| prod(&bare, r).is_some_and(|p| p.phase == Phase::Complete))
    });

    // A later change needs none either.
    let config = work.join("configs/api-gateway/sentinel.kdl");
    let mut config_text = std::fs::read_to_string(&config).unwrap();
    config_text.push_str("// a later change\n");
    std::fs::write(&config, config_text).unwrap();
    let later = commit_and_push(&work, "api-gateway: a later change");
    wait_for(&up, "the later change complete in prod", || {
        prod(&bare, "api-gateway")
            .is_some_and(|p| p.source_commit == later && p.phase == Phase::Complete)
    });
    up.stop();
}
