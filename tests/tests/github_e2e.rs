//! Approvals by pull-request review and progress as commit statuses,
//! against a stateful fake GitHub on loopback (`gitfleet_tests::fake_github`)
//! reached through octocrab's base URI, with `gitfleet reconcile --once` on
//! a real bare repository and a file:// store.
//!
//! prod needs one approving review (alice, or a member of acme/sre) and is
//! frozen by a deny window, so an approval shows as prod moving on from
//! awaiting-approval to waiting-window, and a dismissal as moving back. A
//! change waiting there gets a promotion pull request, opened by the
//! reconciler from a branch it pushes. Under `gitfleet serve`, a review
//! delivered by webhook releases a change at once.

#![allow(clippy::unwrap_used)] // test helpers fail the test by panicking

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use gitfleet_schemas::promotion::Promotions;
use gitfleet_schemas::state::{Phase, RolloutState};
use gitfleet_tests::fake_github::{signature, FakeGitHub, Pull, BOT};
use gitfleet_tests::{bin, copy_dir, git, ok_passes, quiet_passes, text, workspace, Spawned};

const TOKEN: &str = "ghp_test_token";

const ENVIRONMENTS: &str = r#"version 1
environment "dev"
environment "staging" { after "dev"; }
environment "prod" {
    approvals 1 {
        users "alice"
        teams "acme/sre"
    }
    deny-window "freeze" cron="* * * * *" duration="1h" time-zone="UTC"
}
"#;

struct Fleet {
    dir: tempfile::TempDir,
}

impl Fleet {
    fn new() -> Fleet {
        Fleet::with_environments(ENVIRONMENTS)
    }

    fn with_environments(environments: &str) -> Fleet {
        let dir = tempfile::tempdir().unwrap();
        let work = dir.path().join("work");
        copy_dir(&workspace().join("examples/fleet-repo"), &work);
        std::fs::write(work.join("environments.kdl"), environments).unwrap();
        git(&work, &["init", "-q", "-b", "main"]);
        git(&work, &["config", "user.name", "Operator"]);
        git(&work, &["config", "user.email", "ops@example.invalid"]);
        git(&work, &["add", "-A"]);
        git(&work, &["commit", "-qm", "fleet"]);
        git(dir.path(), &["clone", "-q", "--bare", "work", "origin.git"]);
        git(&work, &["remote", "add", "origin", "../origin.git"]);
        let out = Command::new(bin("gitfleet"))
            .args(["keygen", "--online", "-o"])
            .arg(dir.path().join("online.key"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out).1);
        std::fs::write(dir.path().join("token"), format!("{TOKEN}\n")).unwrap();
        Fleet { dir }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn work(&self) -> PathBuf {
        self.path("work")
    }

    fn head(&self) -> String {
        git(&self.work(), &["rev-parse", "HEAD"]).trim().to_owned()
    }

    /// Change the api-gateway config on `main` and commit it.
    fn change_config(&self, note: &str) -> String {
        let file = self.work().join("configs/api-gateway/sentinel.kdl");
        let mut text = std::fs::read_to_string(&file).unwrap();
        text.push_str(&format!("// {note}\n"));
        std::fs::write(&file, text).unwrap();
        git(&self.work(), &["commit", "-qam", note]);
        self.head()
    }

    fn push(&self) {
        git(&self.work(), &["push", "-q", "origin", "main"]);
    }

    fn reconcile(&self, github: &FakeGitHub) {
        let token = self.path("token");
        self.reconcile_as(github, &["--github-token-file".as_ref(), token.as_os_str()]);
    }

    /// Reconcile as GitHub App 4242, installation 77 (a fresh RSA key).
    fn reconcile_as_app(&self, github: &FakeGitHub) {
        let key = self.path("app.pem");
        if !key.exists() {
            let out = Command::new("openssl")
                .args(["genrsa", "-out"])
                .arg(&key)
                .arg("2048")
                .output()
                .unwrap();
            assert!(out.status.success(), "openssl: {}", text(&out).1);
        }
        self.reconcile_as(
            github,
            &[
                "--github-app-id".as_ref(),
                "4242".as_ref(),
                "--github-app-key".as_ref(),
                key.as_os_str(),
                "--github-installation".as_ref(),
                "77".as_ref(),
            ],
        );
    }

    fn reconcile_as(&self, github: &FakeGitHub, auth: &[&std::ffi::OsStr]) {
        let out = Command::new(bin("gitfleet"))
            .arg("reconcile")
            .arg("--once")
            .arg("--repo")
            .arg(self.path("origin.git"))
            .args([
                "--store",
                &format!("file://{}", self.path("store").display()),
            ])
            .arg("--online-key")
            .arg(self.path("online.key"))
            .arg("--cache")
            .arg(self.path("mirror"))
            .args(["--holder", "test-replica"])
            .args(["--github-repo", "acme/fleet", "--github-api", &github.url])
            .args(auth)
            .output()
            .unwrap();
        let (stdout, stderr) = text(&out);
        assert!(
            out.status.success(),
            "reconcile failed:\n{stdout}\n{stderr}"
        );
    }

    fn prod(&self) -> gitfleet_schemas::state::EnvState {
        self.prod_state().expect("api-gateway has prod state")
    }

    /// api-gateway's prod state, once there is any.
    fn prod_state(&self) -> Option<gitfleet_schemas::state::EnvState> {
        let out = Command::new("git")
            .args(["show", "gitfleet/state:rollouts/api-gateway.json"])
            .current_dir(self.path("origin.git"))
            .output()
            .unwrap();
        if !out.status.success() {
            return None;
        }
        let state: RolloutState = serde_json::from_slice(&out.stdout).unwrap();
        state.environments.get("prod").cloned()
    }

    /// The state branch's record of the rules in force.
    fn rules(&self) -> gitfleet_schemas::state::RulesState {
        let out = Command::new("git")
            .args(["show", "gitfleet/state:rules.json"])
            .current_dir(self.path("origin.git"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out).1);
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

fn short(c: &str) -> &str {
    &c[..12]
}

#[test]
fn reviews_on_the_pull_request_head_release_prod_and_statuses_follow() {
    let github = FakeGitHub::start(TOKEN);
    github.with(|s| {
        s.teams
            .insert("acme/sre".into(), ["dave".to_owned()].into_iter().collect());
    });
    let fleet = Fleet::new();

    // A change pushed straight to main, with no pull request, waits.
    let direct = fleet.head();
    fleet.reconcile(&github);
    let prod = fleet.prod();
    assert_eq!(prod.phase, Phase::AwaitingApproval, "{prod:?}");
    assert_eq!(prod.source_commit, direct);
    let status = github
        .status(&direct, "gitfleet/prod")
        .expect("a prod status");
    assert_eq!(status.state, "pending");
    assert!(
        status.description.contains("awaiting 1 approval"),
        "{status:?}"
    );
    assert!(github.status(&direct, "gitfleet/dev").is_some());

    // A pull request by carol brings the next change; GitHub lists the
    // merged pull request for the commit.
    let change = fleet.change_config("raise the timeout");
    fleet.push();
    github.add_pull(Pull {
        number: 7,
        author: "carol".into(),
        head: change.clone(),
        commits: vec![change.clone()],
        merged: true,
        ..Pull::default()
    });
    fleet.reconcile(&github);
    assert_eq!(fleet.prod().source_commit, change);
    assert_eq!(fleet.prod().phase, Phase::AwaitingApproval);

    // An approval of an older head does not count, nor the author's own.
    github.review(7, "alice", "APPROVED", &direct);
    github.review(7, "carol", "APPROVED", &change);
    fleet.reconcile(&github);
    assert_eq!(fleet.prod().phase, Phase::AwaitingApproval);

    // alice approves the head: prod moves on, to the closed window.
    github.review(7, "alice", "APPROVED", &change);
    fleet.reconcile(&github);
    let prod = fleet.prod();
    assert_eq!(prod.phase, Phase::WaitingWindow, "{prod:?}");
    let status = github.status(&change, "gitfleet/prod").unwrap();
    assert_eq!(status.state, "pending");
    assert!(status.description.contains("freeze"), "{status:?}");

    // Her review is dismissed before any node took the change: it waits again.
    github.dismiss(7, "alice");
    fleet.reconcile(&github);
    assert_eq!(fleet.prod().phase, Phase::AwaitingApproval);

    // A member of an allowed team approves: released again.
    github.review(7, "dave", "APPROVED", &change);
    github.review(7, "mallory", "APPROVED", &change);
    fleet.reconcile(&github);
    assert_eq!(fleet.prod().phase, Phase::WaitingWindow);

    // The freeze is lifted (a commit that leaves the config alone): the
    // approved change goes ahead in prod.
    let envs = fleet.work().join("environments.kdl");
    let text = std::fs::read_to_string(&envs).unwrap();
    std::fs::write(
        &envs,
        text.replace(
            "    deny-window \"freeze\"",
            "    // deny-window \"freeze\"",
        ),
    )
    .unwrap();
    git(&fleet.work(), &["commit", "-qam", "lift the freeze"]);
    fleet.push();
    let lift = fleet.head();
    fleet.reconcile(&github);
    // Lifting it loosens prod's rules, so the rules in force judge it: it
    // waits for an approval of its own, and prod keeps its freeze.
    let prod = fleet.prod();
    assert_eq!(prod.phase, Phase::WaitingWindow, "{prod:?}");
    github.add_pull(Pull {
        number: 8,
        author: "carol".into(),
        head: lift.clone(),
        commits: vec![lift.clone()],
        merged: true,
        ..Pull::default()
    });
    github.review(8, "alice", "APPROVED", &lift);
    fleet.reconcile(&github);
    let prod = fleet.prod();
    assert_eq!(prod.source_commit, change, "the config did not change");
    assert_eq!(prod.phase, Phase::Progressing, "{prod:?}");
    let status = github.status(&change, "gitfleet/prod").unwrap();
    assert!(status.description.contains("step 1/"), "{status:?}");

    // The next direct push waits for its own approvals.
    let direct2 = fleet.change_config("hotfix without review");
    fleet.push();
    fleet.reconcile(&github);
    let prod = fleet.prod();
    assert_eq!(prod.phase, Phase::AwaitingApproval, "{prod:?}");
    assert!(prod.reason.contains(short(&direct2)), "{}", prod.reason);

    // A status is posted only when it changes, across restarts too (each
    // pass here is a new process).
    github.with(|s| {
        assert!(s
            .requests
            .iter()
            .any(|r| r.starts_with("GET teams/acme/sre/dave")));
        assert!(
            !s.requests
                .iter()
                .any(|r| r.contains("teams/acme/sre/alice")),
            "a listed user needs no lookup"
        );
        let mut last: std::collections::HashMap<(&str, &str), (&str, &str)> =
            std::collections::HashMap::new();
        for st in &s.statuses {
            let now = (st.state.as_str(), st.description.as_str());
            let before = last.insert((&st.commit, &st.context), now);
            assert_ne!(before, Some(now), "posted twice unchanged: {st:?}");
        }
    });
}

/// The security fix of the rules: a pull request that lowers prod's
/// approvals from 2 to 0, merged with one review, is judged by the rules
/// in force (2 approvals), not by its own; with the second review the new
/// rules take effect, and release what waited.
#[test]
fn a_pull_request_lowering_prods_approvals_needs_the_approvals_it_removes() {
    let github = FakeGitHub::start(TOKEN);
    let fleet = Fleet::with_environments(
        r#"version 1
environment "dev"
environment "staging" { after "dev"; }
environment "prod" {
    approvals 2 { users "alice" "bob"; }
}
"#,
    );
    let waiting = fleet.head();
    fleet.reconcile(&github);
    let prod = fleet.prod();
    assert_eq!(prod.phase, Phase::AwaitingApproval, "{prod:?}");
    assert!(
        prod.reason.contains("awaiting 2 approvals"),
        "{}",
        prod.reason
    );
    let first = fleet.rules();
    assert_eq!(first.first_seen, waiting);
    assert_eq!(first.environments["prod"].commit, waiting);

    // carol's pull request removes prod's approvals; alice approves it.
    let envs = fleet.work().join("environments.kdl");
    let text_now = std::fs::read_to_string(&envs).unwrap();
    std::fs::write(
        &envs,
        text_now.replace("    approvals 2 { users \"alice\" \"bob\"; }\n", ""),
    )
    .unwrap();
    git(
        &fleet.work(),
        &["commit", "-qam", "prod needs no approvals"],
    );
    fleet.push();
    let lower = fleet.head();
    github.add_pull(Pull {
        number: 9,
        author: "carol".into(),
        head: lower.clone(),
        commits: vec![lower.clone()],
        merged: true,
        ..Pull::default()
    });
    github.review(9, "alice", "APPROVED", &lower);
    for _ in 0..2 {
        fleet.reconcile(&github);
    }
    let prod = fleet.prod();
    assert_eq!(prod.phase, Phase::AwaitingApproval, "{prod:?}");
    assert_eq!(prod.source_commit, waiting);
    let rules = fleet.rules();
    assert_eq!(rules.environments["prod"].commit, waiting, "still in force");
    let pending = rules.environments["prod"].pending.clone().expect("pending");
    assert_eq!(pending.commit, lower);
    assert!(
        pending.reason.contains("awaiting 2 approvals")
            && pending
                .reason
                .contains("approvals: 2 of alice or bob → none"),
        "{}",
        pending.reason
    );

    // bob's review makes two: the new rules are in force, and the change
    // that waited goes ahead without approvals of its own.
    github.review(9, "bob", "APPROVED", &lower);
    fleet.reconcile(&github);
    let rules = fleet.rules();
    assert_eq!(rules.environments["prod"].commit, lower);
    assert_eq!(rules.environments["prod"].pending, None);
    let prod = fleet.prod();
    assert!(
        matches!(prod.phase, Phase::Progressing | Phase::Verifying),
        "{prod:?}"
    );
}

#[test]
fn a_wrong_token_leaves_changes_waiting_and_the_pass_succeeds() {
    let github = FakeGitHub::start("another-token");
    let fleet = Fleet::new();
    fleet.reconcile(&github);
    assert_eq!(fleet.prod().phase, Phase::AwaitingApproval);
    github.with(|s| assert!(s.statuses.is_empty()));
}

#[test]
fn an_open_pull_request_gets_a_plan_preview_check_run_with_annotations() {
    // GitHub lets only Apps write check runs.
    let github = FakeGitHub::start_app(4242, 77);
    let fleet = Fleet::new();
    let work = fleet.work();
    git(&work, &["checkout", "-q", "-b", "change"]);
    let node = work.join("nodes/edge-fra-1.kdl");
    let text = std::fs::read_to_string(&node).unwrap();
    std::fs::write(
        &node,
        text.replace("environment \"prod\"", "environment \"prdo\""),
    )
    .unwrap();
    let broken = fleet.change_config("route the new API");
    // GitHub serves a pull request's head as refs/pull/<n>/head.
    git(&work, &["push", "-q", "origin", "HEAD:refs/pull/8/head"]);
    github.add_pull(Pull {
        number: 8,
        author: "carol".into(),
        head: broken.clone(),
        commits: vec![broken.clone()],
        merged: false,
        ..Pull::default()
    });
    fleet.reconcile_as_app(&github);
    let run = |head: &str| {
        github.with(|s| {
            let runs: Vec<_> = s
                .check_runs
                .iter()
                .filter(|c| c.head_sha == head)
                .cloned()
                .collect();
            assert_eq!(runs.len(), 1, "one check run per head: {runs:?}");
            runs[0].clone()
        })
    };
    let first = run(&broken);
    assert_eq!(first.name, "gitfleet/plan");
    assert_eq!(first.conclusion.as_deref(), Some("failure"));
    let annotations = first.output["annotations"].as_array().unwrap();
    let a = annotations
        .iter()
        .find(|a| a["path"] == "nodes/edge-fra-1.kdl")
        .unwrap_or_else(|| panic!("{annotations:?}"));
    assert_eq!(a["start_line"], 3);
    assert_eq!(a["annotation_level"], "failure");
    assert!(a["message"].as_str().unwrap().contains("prdo"), "{a}");

    // Another pass (a new process) updates that run in place.
    fleet.reconcile_as_app(&github);
    assert_eq!(run(&broken).updates, 1);

    // The author fixes the node; the new head's preview passes and says
    // what would change, where, and how.
    std::fs::write(&node, text).unwrap();
    git(&work, &["commit", "-qam", "fix the environment"]);
    let fixed = fleet.head();
    git(
        &work,
        &["push", "-q", "-f", "origin", "HEAD:refs/pull/8/head"],
    );
    github.with(|s| s.pulls[0].head = fixed.clone());
    fleet.reconcile_as_app(&github);
    let second = run(&fixed);
    assert_eq!(
        second.conclusion.as_deref(),
        Some("success"),
        "{:?}",
        second.output
    );
    let summary = second.output["summary"].as_str().unwrap();
    assert!(
        summary.contains("`api-gateway`: sentinel.kdl changed"),
        "{summary}"
    );
    assert!(
        summary.contains("**prod**"),
        "nodes per environment: {summary}"
    );
    assert!(summary.contains("step 1 → "), "{summary}");
    let diff = second.output["text"].as_str().unwrap();
    assert!(diff.contains("+// route the new API"), "{diff}");
    // Nothing of the pull request reached the fleet: main is unchanged.
    assert_ne!(fleet.prod().source_commit, broken);
}

#[test]
fn a_github_app_works_through_its_installation_token() {
    let github = FakeGitHub::start_app(4242, 77);
    let fleet = Fleet::new();
    fleet.reconcile_as_app(&github);
    let head = fleet.head();
    let status = github
        .status(&head, "gitfleet/prod")
        .expect("a status posted as the App");
    assert_eq!(status.state, "pending");
    github.with(|s| {
        assert!(
            s.requests
                .iter()
                .any(|r| r == "POST installations/77/access_tokens"),
            "{:?}",
            s.requests
        );
    });
}

const PROMOTE_PROD: &str = "gitfleet/promote/prod";

#[test]
fn a_change_waiting_for_prod_gets_a_promotion_pull_request_whose_approval_releases_it() {
    let github = FakeGitHub::start(TOKEN);
    let fleet = Fleet::new();
    let origin = fleet.path("origin.git");
    github.with(|s| s.repo = Some(origin.clone()));
    let promotion = |rev: &str| -> Promotions {
        let bytes = git(&origin, &["show", &format!("{rev}:promotions/prod.json")]);
        Promotions::parse(bytes.as_bytes()).expect("a promotion file")
    };
    let tip = |rev: &str| git(&origin, &["rev-parse", rev]).trim().to_owned();

    // A change pushed straight to main waits for prod's approval: the bot
    // pushes its branch and opens one pull request from it into main.
    let first = fleet.head();
    fleet.reconcile(&github);
    assert_eq!(fleet.prod().phase, Phase::AwaitingApproval);
    let pulls = github.pulls_from(PROMOTE_PROD);
    assert_eq!(pulls.len(), 1, "{pulls:?}");
    let pr = pulls[0].clone();
    assert_eq!((pr.author.as_str(), pr.base.as_str()), (BOT, "main"));
    assert!(pr.title.ends_with(" to prod"), "{}", pr.title);
    assert!(pr.body.contains(short(&first)), "{}", pr.body);
    assert!(
        pr.body.contains("by alice, a member of acme/sre"),
        "{}",
        pr.body
    );
    let asked = promotion(PROMOTE_PROD);
    assert_eq!(asked.environment, "prod");
    assert_eq!(asked.rollouts["api-gateway"].source_commit, first);
    // prod comes after no other environment here.
    assert_eq!(asked.rollouts["api-gateway"].completed_in, None);
    let changed = git(
        &origin,
        &["diff", "--name-only", &format!("main...{PROMOTE_PROD}")],
    );
    assert_eq!(changed.trim(), "promotions/prod.json");

    // Nothing new: the same branch tip and pull request.
    let before = tip(PROMOTE_PROD);
    fleet.reconcile(&github);
    assert_eq!(tip(PROMOTE_PROD), before);
    assert_eq!(github.pulls_from(PROMOTE_PROD).len(), 1);

    // A newer change waits instead: a new commit on the same branch (a
    // fast-forward) and the same pull request, updated.
    let second = fleet.change_config("raise the timeout");
    fleet.push();
    fleet.reconcile(&github);
    assert_eq!(fleet.prod().source_commit, second);
    assert_eq!(github.pulls_from(PROMOTE_PROD).len(), 1);
    let moved = tip(PROMOTE_PROD);
    assert_ne!(moved, before);
    git(&origin, &["merge-base", "--is-ancestor", &before, &moved]);
    assert_eq!(
        promotion(PROMOTE_PROD).rollouts["api-gateway"].source_commit,
        second
    );
    let pr = github.pull(pr.number).unwrap();
    assert_eq!(pr.head, moved);
    assert!(pr.body.contains(short(&second)), "{}", pr.body);

    // Merged without an approval: still waiting.
    let work = fleet.work();
    git(&work, &["fetch", "-q", "origin", PROMOTE_PROD]);
    let message = format!("Merge pull request #{} from acme/{PROMOTE_PROD}", pr.number);
    git(
        &work,
        &["merge", "-q", "--no-ff", "-m", &message, "FETCH_HEAD"],
    );
    fleet.push();
    github.merged(pr.number, &fleet.head());
    fleet.reconcile(&github);
    let prod = fleet.prod();
    assert_eq!(
        prod.source_commit, second,
        "the merge left the config alone"
    );
    assert_eq!(prod.phase, Phase::AwaitingApproval, "{prod:?}");

    // alice approves its head: prod goes ahead (to the closed window).
    github.review(pr.number, "alice", "APPROVED", &moved);
    fleet.reconcile(&github);
    let prod = fleet.prod();
    assert_eq!(prod.phase, Phase::WaitingWindow, "{prod:?}");

    // The next change gets a new promotion pull request; when its own pull
    // request's approval releases it, the promotion one is closed.
    let third = fleet.change_config("hotfix");
    fleet.push();
    fleet.reconcile(&github);
    let pulls = github.pulls_from(PROMOTE_PROD);
    assert_eq!(pulls.len(), 2, "{pulls:?}");
    let next = pulls[1].clone();
    assert!(!next.merged && !next.closed);
    assert_eq!(
        promotion(PROMOTE_PROD).rollouts["api-gateway"].source_commit,
        third
    );
    github.add_pull(Pull {
        number: 90,
        author: "carol".into(),
        head: third.clone(),
        commits: vec![third.clone()],
        merged: true,
        ..Pull::default()
    });
    github.review(90, "alice", "APPROVED", &third);
    fleet.reconcile(&github);
    assert_eq!(fleet.prod().phase, Phase::WaitingWindow);
    let next = github.pull(next.number).unwrap();
    assert!(next.closed, "{next:?}");
}

#[test]
fn under_serve_a_review_delivered_by_webhook_releases_the_change_before_the_next_poll() {
    let github = FakeGitHub::start(TOKEN);
    let fleet = Fleet::new();
    let change = fleet.change_config("raise the timeout");
    fleet.push();
    github.add_pull(Pull {
        number: 7,
        author: "carol".into(),
        head: change.clone(),
        commits: vec![change.clone()],
        merged: true,
        ..Pull::default()
    });
    std::fs::write(fleet.path("webhook.secret"), "s3cret\n").unwrap();
    let store = format!("file://{}", fleet.path("store").display());
    let origin = fleet.path("origin.git");
    let serve = Spawned::gitfleet(
        fleet.dir.path(),
        "serve",
        &[
            "serve",
            "--repo",
            origin.to_str().unwrap(),
            "--store",
            &store,
            "--online-key",
            "online.key",
            "--cache",
            "mirror",
            "--holder",
            "test-replica",
            "--interval",
            "10m",
            "--listen",
            "127.0.0.1:0",
            "--webhook-secret-file",
            "webhook.secret",
            "--github-repo",
            "acme/fleet",
            "--github-api",
            &github.url,
            "--github-token-file",
            "token",
        ],
    );
    let base = serve.printed_url("serving ");
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let passes = || {
        ok_passes(
            &client
                .get(format!("{base}/metrics"))
                .send()
                .and_then(|r| r.text())
                .unwrap_or_default(),
        )
    };
    let eventually = |what: &str, done: &dyn Fn() -> bool| {
        let started = Instant::now();
        while !done() {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "timed out waiting for {what}:\n{}",
                serve.output()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    eventually("prod awaiting approval", &|| {
        fleet
            .prod_state()
            .is_some_and(|p| p.source_commit == change && p.phase == Phase::AwaitingApproval)
    });
    // Quiet: the passes its own commits trigger are over, and the poll is
    // ten minutes away; only the webhook can bring the next pass.
    let before = quiet_passes(passes);

    // alice approves the head, and GitHub tells the reconciler.
    github.review(7, "alice", "APPROVED", &change);
    let body = serde_json::json!({
        "action": "submitted",
        "review": {
            "id": 80,
            "user": { "login": "alice" },
            "state": "approved",
            "commit_id": change,
            "submitted_at": "2026-12-02T09:00:00Z",
        },
        "pull_request": {
            "number": 7,
            "state": "closed",
            "user": { "login": "carol" },
            "head": { "sha": change, "ref": "change-7" },
            "base": { "ref": "main" },
        },
        "repository": { "full_name": "acme/fleet" },
        "sender": { "login": "alice" },
    })
    .to_string();
    let reply = client
        .post(format!("{base}/webhooks/github"))
        .header("X-GitHub-Event", "pull_request_review")
        .header("X-GitHub-Delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958")
        .header("X-Hub-Signature-256", signature(b"s3cret", body.as_bytes()))
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .unwrap();
    assert_eq!(reply.status().as_u16(), 202);
    eventually("prod released by the review", &|| {
        fleet
            .prod_state()
            .is_some_and(|p| p.phase == Phase::WaitingWindow)
    });
    assert!(passes() > before);
    serve.stop();
}

/// A node's key rotation request (`gitfleet-agent rotate-key`), carried by
/// its signed status report, becomes a pull request from the bot that
/// changes the node file's WireGuard key and nothing else; a pass with
/// nothing new leaves it as it is, and a forged report asks for nothing.
#[test]
fn a_nodes_signed_rotation_request_becomes_a_pull_request_changing_its_node_file() {
    use base64::Engine as _;
    use gitfleet_agent::sim::sim_key;
    use gitfleet_schemas::status::{StatusReport, WireguardStatus};
    use gitfleet_schemas::trust::Document as _;

    let github = FakeGitHub::start(TOKEN);
    let fleet = Fleet::new();
    let origin = fleet.path("origin.git");
    github.with(|s| s.repo = Some(origin.clone()));
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    // The node signs with a key the test holds.
    let node = "edge-dev-fra-1";
    let path = format!("nodes/{node}.kdl");
    let file = fleet.work().join(&path);
    let text = std::fs::read_to_string(&file).unwrap();
    let node_key = b64(&sim_key(node).verifying_key().to_bytes());
    let text: String = text
        .lines()
        .map(|l| {
            if l.starts_with("node-key ") {
                format!("node-key \"{node_key}\"\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    std::fs::write(&file, &text).unwrap();
    git(
        &fleet.work(),
        &["commit", "-qam", "edge-dev-fra-1's node key"],
    );
    fleet.push();
    let old = text
        .split("public-key=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap()
        .to_owned();
    let new = b64(&[0x42; 32]);
    let report = |signer: &ed25519_dalek::SigningKey| {
        let report = StatusReport {
            fleet: "acme-edge".into(),
            node: node.into(),
            environment: "dev".into(),
            at: chrono::Utc::now(),
            channel_serial: None,
            channel_expires: None,
            rollouts: Default::default(),
            healthy: true,
            metrics: Default::default(),
            http_checks: Vec::new(),
            routes: Vec::new(),
            wireguard: Some(WireguardStatus {
                interface: "wg-backbone".into(),
                public_key: old.clone(),
                listen_port: Some(51820),
                peers: Vec::new(),
                next_public_key: Some(new.clone()),
            }),
            monitored: Vec::new(),
            drift: Vec::new(),
            last_error: None,
            proxy: None,
        };
        let mut envelope = report.envelope();
        envelope.sign(signer).unwrap();
        envelope.to_json()
    };
    let status = fleet.path("store/status");
    std::fs::create_dir_all(&status).unwrap();
    let branch = gitfleet_schemas::promotion::rotation_branch(node);

    // Signed by another key: not the node's request.
    std::fs::write(
        status.join(format!("{node}.json")),
        report(&sim_key("someone-else")),
    )
    .unwrap();
    fleet.reconcile(&github);
    assert!(github.pulls_from(&branch).is_empty());

    std::fs::write(status.join(format!("{node}.json")), report(&sim_key(node))).unwrap();
    fleet.reconcile(&github);
    let pulls = github.pulls_from(&branch);
    assert_eq!(pulls.len(), 1, "{pulls:?}");
    let pr = &pulls[0];
    assert_eq!((pr.author.as_str(), pr.base.as_str()), (BOT, "main"));
    assert!(pr.title.contains(node), "{}", pr.title);
    assert!(
        pr.body.contains(&new) && pr.body.contains(&old),
        "{}",
        pr.body
    );
    let changed = git(
        &origin,
        &["diff", "--name-only", &format!("main...{branch}")],
    );
    assert_eq!(changed.trim(), path);
    let proposed = git(&origin, &["show", &format!("{branch}:{path}")]);
    assert_eq!(proposed, text.replace(&old, &new));

    // Nothing new: the same branch tip and pull request.
    let tip = git(&origin, &["rev-parse", &branch]);
    fleet.reconcile(&github);
    assert_eq!(git(&origin, &["rev-parse", &branch]), tip);
    assert_eq!(github.pulls_from(&branch).len(), 1);
}

/// api-gateway's state in `env`, once there is any.
fn state_in(fleet: &Fleet, rollout: &str, env: &str) -> Option<gitfleet_schemas::state::EnvState> {
    let out = Command::new("git")
        .args(["show", &format!("gitfleet/state:rollouts/{rollout}.json")])
        .current_dir(fleet.path("origin.git"))
        .output()
        .unwrap();
    if !out.status.success() {
        return None;
    }
    let state: RolloutState = serde_json::from_slice(&out.stdout).unwrap();
    state.environments.get(env).cloned()
}

/// A fleet of dev → staging → prod without approvals whose api-gateway
/// config is owned (`OWNED`), with alice an approver: the fleet, alice's
/// key file and fleet.kdl's text, committed and pushed.
fn owned_fleet() -> (Fleet, PathBuf, String) {
    let fleet = Fleet::with_environments(
        "version 1\nenvironment \"dev\"\nenvironment \"staging\" { after \"dev\"; }\nenvironment \"prod\" { after \"staging\"; }\n",
    );
    let alice_key = fleet.path("alice.key");
    let out = Command::new(bin("gitfleet"))
        .args(["keygen", "--approver", "-o"])
        .arg(&alice_key)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out).1);
    let alice_public = text(&out).0.trim().to_owned();
    let fleet_kdl = fleet.work().join("fleet.kdl");
    let mut fleet_text = std::fs::read_to_string(&fleet_kdl).unwrap();
    fleet_text.push_str(&format!(
        "approver \"alice\" key=\"{alice_public}\"\n{OWNED}"
    ));
    std::fs::write(&fleet_kdl, &fleet_text).unwrap();
    git(&fleet.work(), &["commit", "-qam", "api-gateway is owned"]);
    fleet.push();
    (fleet, alice_key, fleet_text)
}

const OWNED: &str = "owners \"configs/api-gateway/**\" users=\"alice\" teams=\"acme/gw\"\n";

/// Owners per path, over GitHub reviews and signed approvals: a change to
/// api-gateway's config waits for one of its owners (alice, or a member of
/// acme/gw) whatever the environment asks, while edge, which nobody owns,
/// goes on. An approval of an old head, the author's own, or a stranger's
/// does not count; a change that rewrites the owners rule is judged by the
/// rule in force, and the new rule judges only once it is adopted.
#[test]
fn an_owners_rule_holds_a_change_until_an_owner_approves_its_head() {
    let github = FakeGitHub::start(TOKEN);
    github.with(|s| {
        s.teams.insert(
            "acme/gw".into(),
            ["dave".to_owned(), "carol".to_owned()]
                .into_iter()
                .collect(),
        );
    });
    let (fleet, alice_key, mut fleet_text) = owned_fleet();

    // Every file is new at first: api-gateway waits for its owners in dev;
    // edge, owned by nobody, goes ahead.
    fleet.reconcile(&github);
    let dev = state_in(&fleet, "api-gateway", "dev").expect("api-gateway in dev");
    assert_eq!(dev.phase, Phase::AwaitingApproval, "{dev:?}");
    assert!(
        dev.reason
            .contains("awaiting owners: configs/api-gateway/** (alice, team acme/gw)"),
        "{}",
        dev.reason
    );
    let edge = state_in(&fleet, "edge", "dev").expect("edge in dev");
    assert_ne!(edge.phase, Phase::AwaitingApproval, "{edge:?}");

    // No pull request brought it (the config's last change, before the
    // owners rule); alice signs an approval of it with her key.
    let waiting = dev.source_commit.clone();
    assert!(dev.reason.contains(short(&waiting)), "{}", dev.reason);
    let out = Command::new(bin("gitfleet"))
        .args(["approve", "--env", "dev", "--repo"])
        .arg(fleet.path("origin.git"))
        .arg("--key")
        .arg(&alice_key)
        .arg(&waiting)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out).1);
    fleet.reconcile(&github);
    let dev = state_in(&fleet, "api-gateway", "dev").unwrap();
    assert_eq!(dev.phase, Phase::Progressing, "{dev:?}");

    // carol's pull request changes the config: it waits again.
    let change = fleet.change_config("owned change");
    fleet.push();
    github.add_pull(Pull {
        number: 7,
        author: "carol".into(),
        head: change.clone(),
        commits: vec![change.clone()],
        merged: true,
        ..Pull::default()
    });
    // alice approved an older head; carol is in acme/gw but wrote it;
    // mallory owns nothing.
    github.review(7, "alice", "APPROVED", &waiting);
    github.review(7, "carol", "APPROVED", &change);
    github.review(7, "mallory", "APPROVED", &change);
    fleet.reconcile(&github);
    let dev = state_in(&fleet, "api-gateway", "dev").unwrap();
    assert_eq!(dev.source_commit, change);
    assert_eq!(dev.phase, Phase::AwaitingApproval, "{dev:?}");
    assert!(dev.reason.contains("awaiting owners"), "{}", dev.reason);

    // dave, of acme/gw, approves the head: released.
    github.review(7, "dave", "APPROVED", &change);
    fleet.reconcile(&github);
    let dev = state_in(&fleet, "api-gateway", "dev").unwrap();
    assert_eq!(dev.phase, Phase::Progressing, "{dev:?}");

    // carol's next pull request makes mallory the owner and changes the
    // config in the same commit; mallory approves it at once.
    fleet_text = fleet_text.replace(
        OWNED,
        "owners \"configs/api-gateway/**\" users=\"mallory\"\n",
    );
    std::fs::write(fleet.work().join("fleet.kdl"), &fleet_text).unwrap();
    let takeover = fleet.change_config("mallory owns the gateway now");
    fleet.push();
    github.add_pull(Pull {
        number: 8,
        author: "carol".into(),
        head: takeover.clone(),
        commits: vec![takeover.clone()],
        merged: true,
        ..Pull::default()
    });
    github.review(8, "mallory", "APPROVED", &takeover);
    fleet.reconcile(&github);
    let rules = fleet.rules();
    let pending = rules.environments["dev"]
        .pending
        .clone()
        .expect("the owners change waits");
    assert_eq!(pending.commit, takeover);
    assert!(
        pending
            .reason
            .contains("awaiting owners: configs/api-gateway/** (alice, team acme/gw)"),
        "{}",
        pending.reason
    );
    assert_ne!(rules.environments["dev"].commit, takeover, "still in force");
    let dev = state_in(&fleet, "api-gateway", "dev").unwrap();
    assert_eq!(dev.source_commit, takeover);
    assert_eq!(dev.phase, Phase::AwaitingApproval, "{dev:?}");
    assert!(
        dev.reason.contains("(alice, team acme/gw)") && !dev.reason.contains("mallory"),
        "judged by the owners in force: {}",
        dev.reason
    );

    // dave approves as an owner in force: the new rule is adopted, and
    // under it mallory's approval releases the change.
    github.review(8, "dave", "APPROVED", &takeover);
    fleet.reconcile(&github);
    let rules = fleet.rules();
    assert_eq!(rules.environments["dev"].commit, takeover);
    assert_eq!(rules.environments["dev"].pending, None);
    let dev = state_in(&fleet, "api-gateway", "dev").unwrap();
    assert_eq!(dev.phase, Phase::Progressing, "{dev:?}");
}

#[test]
fn a_plan_preview_lists_the_owners_a_pull_request_needs_and_who_approved() {
    let github = FakeGitHub::start_app(4242, 77);
    github.with(|s| {
        s.teams
            .insert("acme/gw".into(), ["dave".to_owned()].into_iter().collect());
    });
    let fleet = Fleet::new();
    let work = fleet.work();
    let fleet_kdl = work.join("fleet.kdl");
    let mut fleet_text = std::fs::read_to_string(&fleet_kdl).unwrap();
    fleet_text.push_str(OWNED);
    fleet_text.push_str("owners \"fleet.kdl\" users=\"erin\"\n");
    std::fs::write(&fleet_kdl, &fleet_text).unwrap();
    git(&work, &["commit", "-qam", "owners"]);
    fleet.push();
    fleet.reconcile_as_app(&github);

    git(&work, &["checkout", "-q", "-b", "change"]);
    let head = fleet.change_config("a reviewed change");
    git(&work, &["push", "-q", "origin", "HEAD:refs/pull/9/head"]);
    github.add_pull(Pull {
        number: 9,
        author: "carol".into(),
        head: head.clone(),
        commits: vec![head.clone()],
        merged: false,
        ..Pull::default()
    });
    github.review(9, "dave", "APPROVED", &head);
    fleet.reconcile_as_app(&github);
    let summary = github.with(|s| {
        let run = s
            .check_runs
            .iter()
            .find(|c| c.head_sha == head)
            .cloned()
            .expect("a check run for the head");
        run.output["summary"].as_str().unwrap().to_owned()
    });
    assert!(
        summary.contains(
            "- `configs/api-gateway/**` (alice, team acme/gw): approved by dave; touches `configs/api-gateway/sentinel.kdl`"
        ),
        "{summary}"
    );
    assert!(
        !summary.contains("`fleet.kdl` (erin)"),
        "fleet.kdl is not touched: {summary}"
    );
}

/// A review releases an owned change only when every commit that changed
/// the owned paths since the last completed target came through a pull
/// request an owner approved: an unreviewed commit before a reviewed pull
/// request keeps the change waiting until its own pull request is
/// approved by an owner too.
#[test]
fn an_owners_review_of_the_last_pull_request_does_not_cover_an_unreviewed_push_before_it() {
    let github = FakeGitHub::start(TOKEN);
    github.with(|s| {
        s.teams
            .insert("acme/gw".into(), ["dave".to_owned()].into_iter().collect());
    });
    let (fleet, _, _) = owned_fleet();
    fleet.reconcile(&github);
    let first = state_in(&fleet, "api-gateway", "dev")
        .unwrap()
        .source_commit;

    // What dev runs completed (no agent runs here: the state says so, as
    // a reconciler would have written it).
    let st = fleet.path("state-work");
    git(
        fleet.dir.path(),
        &[
            "clone",
            "-q",
            "-b",
            "gitfleet/state",
            "origin.git",
            "state-work",
        ],
    );
    let file = st.join("rollouts/api-gateway.json");
    let mut state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    state["environments"]["dev"]["phase"] = "complete".into();
    std::fs::write(&file, serde_json::to_vec_pretty(&state).unwrap()).unwrap();
    git(&st, &["commit", "-qam", "dev completed"]);
    git(&st, &["push", "-q", "origin", "gitfleet/state"]);

    // An unreviewed push changes the owned config, then carol's pull
    // request changes it again and dave, an owner, approves that one.
    let unreviewed = fleet.change_config("pushed without review");
    let reviewed = fleet.change_config("reviewed change");
    fleet.push();
    github.add_pull(Pull {
        number: 9,
        author: "carol".into(),
        head: reviewed.clone(),
        commits: vec![reviewed.clone()],
        merged: true,
        ..Pull::default()
    });
    github.review(9, "dave", "APPROVED", &reviewed);
    fleet.reconcile(&github);
    let dev = state_in(&fleet, "api-gateway", "dev").unwrap();
    assert_eq!(dev.source_commit, reviewed);
    assert_eq!(dev.changed_from.as_deref(), Some(first.as_str()));
    assert_eq!(dev.phase, Phase::AwaitingApproval, "{dev:?}");
    assert!(dev.reason.contains("awaiting owners"), "{}", dev.reason);
    assert_ne!(unreviewed, reviewed);

    // The push turns out to have come through pull request #8; once an
    // owner approves that one too, reviews cover the whole change.
    github.add_pull(Pull {
        number: 8,
        author: "carol".into(),
        head: unreviewed.clone(),
        commits: vec![unreviewed.clone()],
        merged: true,
        ..Pull::default()
    });
    github.review(8, "mallory", "APPROVED", &unreviewed);
    fleet.reconcile(&github);
    let dev = state_in(&fleet, "api-gateway", "dev").unwrap();
    assert_eq!(dev.phase, Phase::AwaitingApproval, "mallory owns nothing");
    github.review(8, "dave", "APPROVED", &unreviewed);
    fleet.reconcile(&github);
    let dev = state_in(&fleet, "api-gateway", "dev").unwrap();
    assert_eq!(dev.phase, Phase::Progressing, "{dev:?}");
}
