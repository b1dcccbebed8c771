//! What the real-process end-to-end tests share: `gitfleet serve` and
//! `gitfleet-agent run` started as a deployment starts them, and waiting
//! for a condition with the whole picture on failure.

use std::fs::File;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::bin;
use crate::netns::Netns;

/// `gitfleet serve` on `repo` and `store`: a pass every second, signing
/// with `dir/online.key`, mirroring into `dir/mirror`, its output in
/// `dir/serve.out` and `dir/serve.err`. `env` reaches the store (moto's
/// credentials and endpoint).
pub fn serve(
    dir: &Path,
    repo: &str,
    store: &str,
    env: impl IntoIterator<Item = (&'static str, String)>,
) -> Child {
    std::process::Command::new(bin("gitfleet"))
        .args(["serve", "--repo", repo])
        .args(["--store", store, "--interval", "1s"])
        .args(["--listen", "127.0.0.1:0", "--holder", "test"])
        .arg("--online-key")
        .arg(dir.join("online.key"))
        .arg("--cache")
        .arg(dir.join("mirror"))
        .envs(env)
        .stdin(Stdio::null())
        .stdout(File::create(dir.join("serve.out")).expect("creating serve.out"))
        .stderr(File::create(dir.join("serve.err")).expect("creating serve.err"))
        .spawn()
        .expect("starting gitfleet serve")
}

/// `gitfleet-agent run` with `node_dir/agent.kdl`, inside `ns`, logging at
/// info to `node_dir/agent.err` (human format).
pub fn agent(
    ns: &Netns,
    node_dir: &Path,
    env: impl IntoIterator<Item = (&'static str, String)>,
) -> Child {
    ns.command(bin("gitfleet-agent"))
        .arg("-c")
        .arg(node_dir.join("agent.kdl"))
        .args(["--log-format", "human", "run"])
        .envs(env)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(File::create(node_dir.join("agent.out")).expect("creating agent.out"))
        .stderr(File::create(node_dir.join("agent.err")).expect("creating agent.err"))
        .spawn()
        .expect("starting gitfleet-agent")
}

/// Wait up to `limit` for `f` to give a value; fail with `context()`.
pub fn wait_for<T>(
    what: &str,
    limit: Duration,
    context: impl Fn() -> String,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let started = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            started.elapsed() < limit,
            "{what}: not there after {limit:?}\n{}",
            context()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
