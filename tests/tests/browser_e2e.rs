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
    let browser = chromium();
    let scripts = workspace().join("tests/browser");
    let artifacts = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"))
        .join("browser-artifacts");
    let _ = std::fs::remove_dir_all(&artifacts);

    // The browser first: its cold launch on a fresh machine can outlast
    // the rollouts the pages must catch in progress.
    let mut node = Reaped(
        Command::new("node")
            .arg(scripts.join("status.mjs"))
            .current_dir(&scripts)
            .env("GITFLEET_URL", "-")
            .env("GITFLEET_CHROMIUM", &browser)
            .env("GITFLEET_ARTIFACTS", &artifacts)
            .env("GITFLEET_NODES", "11")
            .env("GITFLEET_PEER_NODE", "edge-dev-fra-1")
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
            break;
        }
    }

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
