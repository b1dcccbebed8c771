//! The status pages in a real browser: headless Chromium, driven by
//! Playwright (`tests/browser/status.mjs`), against `gitfleet up --listen`
//! with simulated agents. Checks the overview's counts, a progress bar that
//! advances without a reload, a node's WireGuard peers and the way to its
//! bundle; screenshots go to `target/browser-artifacts/`.
//!
//! Needs Debian's `chromium` (or `GITFLEET_CHROMIUM`), Node.js and
//! `npm ci` in `tests/browser`; `bash scripts/test.sh` installs them.

#![allow(clippy::unwrap_used)] // test helpers fail the test by panicking

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};

use gitfleet_tests::{workspace, Spawned};

fn chromium() -> PathBuf {
    gitfleet_io::tools::Tool::Chromium.require()
}

#[test]
fn the_status_pages_update_live_in_a_browser() {
    let artifacts = artifacts("status");
    // The browser first: its cold launch on a fresh machine can outlast
    // the rollouts the pages must catch in progress.
    let (mut node, stdout, printed) = start_browser(
        "status.mjs",
        &artifacts,
        &[
            ("GITFLEET_NODES", "11"),
            ("GITFLEET_PEER_NODE", "edge-dev-fra-1"),
        ],
    );

    // Slow enough steps that the page is open before the rollouts finish.
    let cwd = tempfile::tempdir().unwrap();
    let up = Spawned::gitfleet(
        cwd.path(),
        "up",
        &[
            "up",
            "--dir",
            "demo",
            "--poll",
            "500ms",
            "--interval",
            "1s",
            "--bake",
            "4s",
            "--apply-latency",
            "200ms",
            "--listen",
            "127.0.0.1:0",
        ],
    );
    let base = up.printed_url("Status pages: ");
    let mut stdin = node.0.stdin.take().unwrap();
    writeln!(stdin, "{base}").unwrap();
    drop(stdin);
    let out = node.finish(stdout);
    let status = node.0.wait().unwrap();
    assert!(
        status.success(),
        "the browser checks failed ({status}):\n{printed}{out}\ngitfleet up printed:\n{}",
        up.output()
    );
    for shot in [
        "overview-start",
        "overview-advanced",
        "node-peers",
        "bundle",
    ] {
        let png = artifacts.join(format!("{shot}.png"));
        let bytes = std::fs::read(&png).unwrap_or_else(|e| panic!("{}: {e}", png.display()));
        assert!(
            bytes.starts_with(b"\x89PNG"),
            "{} is not a PNG",
            png.display()
        );
    }
    up.stop();
}

/// Sign-in and actions in a real browser, against the fake GitHub's OAuth
/// flow and `gitfleet serve` on a real bare repo: no session means a
/// redirect to sign in; a viewer sees no buttons and a forged POST of
/// theirs is refused; a POST without the CSRF token, or from another
/// origin, is refused; an operator presses pause, a commit by them lands
/// on main, and the reconciler pauses the rollout, which the page shows;
/// their approve button makes a review in their name that releases prod.
#[test]
fn an_operator_pauses_a_rollout_from_the_page_and_a_viewer_cannot() {
    use gitfleet_tests::fake_github::FakeGitHub;
    let artifacts = artifacts("actions");

    let github = FakeGitHub::start("ghp_reconciler");
    github.with_oauth("Iv1.gitfleet-test", "oauth-secret");
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    // Without change windows: the rollout moves whatever the time.
    gitfleet_tests::example_fleet_without_windows(&work);
    let fleet_kdl = work.join("fleet.kdl");
    let mut text = std::fs::read_to_string(&fleet_kdl).unwrap();
    text.push_str("viewers { users \"victor\"; }\noperators { users \"olivia\"; }\n");
    std::fs::write(&fleet_kdl, text).unwrap();
    // prod goes first and takes olivia's approval; dev moves freely.
    std::fs::write(
        work.join("environments.kdl"),
        "version 1\nenvironment \"dev\"\nenvironment \"staging\" { after \"dev\"; }\nenvironment \"prod\" {\n    approvals 1 { users \"olivia\"; }\n}\n",
    )
    .unwrap();
    gitfleet_tests::commit_fleet(dir.path(), &work, "origin.git");
    gitfleet_tests::fleet_keys(dir.path(), "acme-edge");
    std::fs::write(dir.path().join("token"), "ghp_reconciler\n").unwrap();
    std::fs::write(dir.path().join("oauth.secret"), "oauth-secret\n").unwrap();
    let bare = dir.path().join("origin.git");
    // carol's merged pull request brought the fleet.
    let first = gitfleet_tests::git(&bare, &["rev-parse", "main"])
        .trim()
        .to_owned();
    github.add_pull(gitfleet_tests::fake_github::Pull {
        number: 5,
        author: "carol".into(),
        head: first.clone(),
        commits: vec![first.clone()],
        merged: true,
        ..Default::default()
    });

    let (mut node, stdout, printed) = start_browser(
        "actions.mjs",
        &artifacts,
        &[
            ("GITFLEET_ROLLOUT", "edge"),
            ("GITFLEET_VIEWER", "victor"),
            ("GITFLEET_OPERATOR", "olivia"),
            ("GITFLEET_APPROVE", "api-gateway:prod"),
        ],
    );

    let store = format!("file://{}", dir.path().join("store").display());
    let serve = Spawned::gitfleet(
        dir.path(),
        "serve",
        &[
            "serve",
            "--repo",
            &bare.display().to_string(),
            "--store",
            &store,
            "--online-key",
            "online.key",
            "--cache",
            "mirror",
            "--interval",
            "1s",
            "--listen",
            "127.0.0.1:0",
            "--github-repo",
            "acme/fleet",
            "--github-api",
            &github.url,
            "--github-token-file",
            "token",
            "--github-web",
            &github.url,
            "--github-client-id",
            "Iv1.gitfleet-test",
            "--github-client-secret-file",
            "oauth.secret",
        ],
    );
    let base = serve.printed_url("serving ");
    // edge moves in dev (no agent ever reports, so it stays there).
    let started = std::time::Instant::now();
    while !gitfleet_tests::state_file::<gitfleet_schemas::state::RolloutState>(
        &bare,
        "rollouts/edge.json",
    )
    .and_then(|s| s.environments.get("dev").map(|e| e.phase))
    .is_some_and(|p| p == gitfleet_schemas::state::Phase::Progressing)
    {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(120),
            "edge never progressed in dev:\n{}",
            serve.output()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let mut stdin = node.0.stdin.take().unwrap();
    writeln!(stdin, "{base}").unwrap();
    drop(stdin);
    let out = node.finish(stdout);
    let status = node.0.wait().unwrap();
    assert!(
        status.success(),
        "the browser checks failed ({status}):\n{printed}{out}\nserve printed:\n{}",
        serve.output()
    );
    // The commit on main is the operator's, and says who asked.
    let made = out
        .lines()
        .find_map(|l| l.strip_prefix("commit "))
        .unwrap_or_else(|| panic!("no commit printed:\n{out}"))
        .trim()
        .to_owned();
    let log = gitfleet_tests::git(&bare, &["log", "-1", "--format=%H%n%an%n%B", "main"]);
    let mut lines = log.lines();
    assert!(lines.next().unwrap().starts_with(&made), "{log}");
    assert_eq!(lines.next(), Some("olivia"), "{log}");
    assert!(log.contains("rollout edge: pause"), "{log}");
    assert!(log.contains("Requested-by: olivia"), "{log}");
    let show = gitfleet_tests::git(&bare, &["show", "main:rollouts/edge.kdl"]);
    assert!(show.contains("paused #true"), "{show}");
    let dev = gitfleet_tests::state_file::<gitfleet_schemas::state::RolloutState>(
        &bare,
        "rollouts/edge.json",
    )
    .unwrap()
    .environments["dev"]
        .clone();
    assert_eq!(dev.phase, gitfleet_schemas::state::Phase::Paused, "{dev:?}");
    // Nothing of the viewer's or the forged requests reached the repo.
    let count = gitfleet_tests::git(&bare, &["rev-list", "--count", "main"]);
    assert_eq!(count.trim(), "2", "the fleet, and the one pause");
    // The approval is olivia's review of the pull request's head.
    github.with(|s| {
        let reviews = &s.reviews[&5];
        assert_eq!(reviews.len(), 1, "{reviews:?}");
        assert_eq!(reviews[0].user, "olivia");
        assert_eq!(reviews[0].state, "APPROVED");
        assert_eq!(reviews[0].commit, first);
    });
    serve.stop();
}

/// Where screenshots of `what` go, emptied first.
fn artifacts(what: &str) -> PathBuf {
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"))
        .join("browser-artifacts")
        .join(what);
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Run `script` of tests/browser with `env`, and wait for it to say the
/// browser is up: its stdout from there, and what it printed so far.
fn start_browser(
    script: &str,
    artifacts: &std::path::Path,
    env: &[(&str, &str)],
) -> (Reaped, BufReader<ChildStdout>, String) {
    let scripts = workspace().join("tests/browser");
    let mut node = Reaped(
        Command::new("node")
            .arg(scripts.join(script))
            .current_dir(&scripts)
            .env("GITFLEET_URL", "-")
            .env("GITFLEET_CHROMIUM", chromium())
            .env("GITFLEET_ARTIFACTS", artifacts)
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "running node: {e}; {}",
                    gitfleet_io::tools::missing_message()
                )
            }),
    );
    let mut stdout = BufReader::new(node.0.stdout.take().unwrap());
    let mut printed = String::new();
    loop {
        let mut line = String::new();
        if stdout.read_line(&mut line).unwrap() == 0 {
            let out = node.finish(stdout);
            panic!("the browser did not start:\n{printed}{out}");
        }
        printed.push_str(&line);
        if line.trim() == "browser ready" {
            return (node, stdout, printed);
        }
    }
}

/// The node process driving the browser, killed if the test ends early.
struct Reaped(Child);

impl Reaped {
    /// The rest of its stdout (to its exit), then its stderr.
    fn finish(&mut self, mut stdout: BufReader<ChildStdout>) -> String {
        let mut out = String::new();
        let _ = stdout.read_to_string(&mut out);
        if let Some(mut err) = self.0.stderr.take() {
            let _ = err.read_to_string(&mut out);
        }
        out
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}
