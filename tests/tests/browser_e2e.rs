//! The status pages in a real browser: headless Chromium, driven by
//! Playwright (`tests/browser/status.mjs`), against `gitfleet up --listen`
//! with simulated agents. Checks the overview's counts, a progress bar that
//! advances without a reload, a node's WireGuard peers and the way to its
//! bundle; screenshots go to `target/browser-artifacts/`.
//!
//! Needs Debian's `chromium` (or `GITFLEET_CHROMIUM`), Node.js and
//! `npm ci` in `tests/browser`; `bash scripts/test.sh` installs them.

#![allow(clippy::unwrap_used)] // test helpers fail the test by panicking

use std::path::PathBuf;
use std::process::Command;

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

    let out = Command::new("node")
        .arg(scripts.join("status.mjs"))
        .current_dir(&scripts)
        .env("GITFLEET_URL", &base)
        .env("GITFLEET_CHROMIUM", &browser)
        .env("GITFLEET_ARTIFACTS", &artifacts)
        .env("GITFLEET_NODES", "11")
        .env("GITFLEET_PEER_NODE", "edge-dev-fra-1")
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "running node: {e}; {}",
                gitfleet_io::tools::missing_message()
            )
        });
    let (stdout, stderr) = gitfleet_tests::text(&out);
    assert!(
        out.status.success(),
        "the browser checks failed ({}):\n{stdout}\n{stderr}\ngitfleet up printed:\n{}",
        out.status,
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
