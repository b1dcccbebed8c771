//! Helpers for gitfleet's end-to-end tests: locating the real binaries,
//! copying fixture repos, driving the real `git`.

// Test support: a failed step should fail the test loudly, which is what
// unwrap does.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

pub mod alerts;
pub mod app_thread;
pub mod fake_github;
pub mod fleet;
pub mod netns;
pub mod real;
pub mod receiver;
pub mod sentinel;

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace")
        .to_owned()
}

/// Path to a binary of the workspace. `cargo test --workspace` builds it
/// (its package has integration tests); it is rebuilt here only when it is
/// missing or older than a source file, since a `cargo build` from inside
/// the tests resolves features differently and would relink every time.
pub fn bin(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    // target/<profile>/deps/<test-binary> -> target/<profile>/<name>
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps");
    let path = dir.join(name);
    BUILT.get_or_init(|| {
        // One build makes both binaries, so both are checked once.
        if ["gitfleet", "gitfleet-agent"]
            .iter()
            .all(|b| is_fresh(&dir.join(b)))
        {
            return;
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let release = dir.file_name().is_some_and(|n| n == "release");
        let mut cmd = Command::new(cargo);
        cmd.args([
            "build",
            "-q",
            "-p",
            "gitfleet-reconciler",
            "-p",
            "gitfleet-agent",
        ])
        .current_dir(workspace());
        if release {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("running cargo build");
        assert!(
            status.success(),
            "cargo build of the gitfleet binaries failed"
        );
    });
    assert!(path.exists(), "{} was not built", path.display());
    path
}

/// The workspace crates (directories) each binary is built from: cargo
/// relinks a binary only when one of these changes, so a newer file in any
/// other crate says nothing about it.
fn crates_of(binary: &str) -> &'static [&'static str] {
    match binary {
        "gitfleet-agent" => &["schemas", "policy", "io", "agent"],
        _ => &["schemas", "policy", "io", "agent", "reconciler"],
    }
}

/// The binary exists and no source file or manifest of its crates is newer.
fn is_fresh(binary: &Path) -> bool {
    let Ok(built) = std::fs::metadata(binary).and_then(|m| m.modified()) else {
        return false;
    };
    let name = binary.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let mut stack: Vec<PathBuf> = crates_of(name)
        .iter()
        .flat_map(|c| {
            let dir = workspace().join(c);
            [dir.join("src"), dir.join("Cargo.toml")]
        })
        .collect();
    stack.push(workspace().join("Cargo.lock"));
    stack.push(workspace().join("Cargo.toml"));
    if name == "gitfleet" {
        // `gitfleet up` has the example fleet built in (include_str!).
        stack.push(workspace().join("examples"));
    }
    while let Some(p) = stack.pop() {
        let Ok(meta) = std::fs::metadata(&p) else {
            continue;
        };
        if meta.is_dir() {
            if let Ok(entries) = std::fs::read_dir(&p) {
                stack.extend(entries.flatten().map(|e| e.path()));
            }
        } else if meta.modified().is_ok_and(|m| m > built) {
            return false;
        }
    }
    true
}

/// Recursively copy a directory tree.
/// The example fleet (examples/fleet-repo) copied to `dir` without its
/// change windows, so that what a test sees does not depend on the day and
/// hour it runs (its edge rollout never starts on a Friday afternoon, prod
/// only on weekday mornings and never over the year end): only approvals
/// hold prod.
pub fn example_fleet_without_windows(dir: &Path) {
    copy_dir(&workspace().join("examples/fleet-repo"), dir);
    for file in ["environments.kdl", "rollouts/edge.kdl"] {
        let path = dir.join(file);
        let text = std::fs::read_to_string(&path).unwrap();
        let kept: Vec<&str> = text
            .lines()
            .filter(|l| {
                let l = l.trim_start();
                !l.starts_with("window ") && !l.starts_with("deny-window ")
            })
            .collect();
        std::fs::write(&path, kept.join("\n") + "\n").unwrap();
    }
}

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Run the real `git` in `dir`, failing the test on error.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=gitfleet-test",
            "-c",
            "user.email=test@gitfleet.invalid",
        ])
        .args([
            "-c",
            "init.defaultBranch=main",
            "-c",
            "protocol.file.allow=always",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("running git");
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// In the working clone `work`: append each text to its file (relative
/// path), commit everything with `message` and push `main` to `remote`.
pub fn append_commit_push(work: &Path, edits: &[(&str, &str)], message: &str, remote: &str) {
    for (file, text) in edits {
        let path = work.join(file);
        let mut t = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        t.push_str(text);
        std::fs::write(&path, t).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    }
    git(work, &["commit", "-qam", message]);
    git(work, &["push", "-q", remote, "main"]);
}

/// Interrupt `child` as Ctrl-C would (SIGINT to its pid) and wait for it
/// to exit, failing the test when it takes longer than `within`.
pub fn interrupt(
    child: &mut std::process::Child,
    within: std::time::Duration,
) -> std::process::ExitStatus {
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("running kill");
    assert!(status.success(), "kill -INT {} failed", child.id());
    let started = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("waiting for the child") {
            return status;
        }
        assert!(
            started.elapsed() < within,
            "process {} did not stop within {within:?} of SIGINT",
            child.id()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// stdout and stderr of a finished command, as text.
pub fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// splitmix64 for benchmarks and generators: deterministic, fast, good
/// enough to defeat compression; not for anything secret.
#[derive(Debug)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    pub fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[self.below(from.len() as u64) as usize]
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// A `gitfleet` process started in `cwd` with stdout and stderr in
/// `<name>.out` and `<name>.err` there; killed on drop unless taken.
#[derive(Debug)]
pub struct Spawned {
    pub child: Option<std::process::Child>,
    pub out: PathBuf,
}

impl Spawned {
    pub fn gitfleet(cwd: &Path, name: &str, args: &[&str]) -> Spawned {
        Spawned::gitfleet_with(cwd, name, args, [])
    }

    /// [`Spawned::gitfleet`] with `env` added to its environment.
    pub fn gitfleet_with(
        cwd: &Path,
        name: &str,
        args: &[&str],
        env: impl IntoIterator<Item = (&'static str, String)>,
    ) -> Spawned {
        let out = cwd.join(format!("{name}.out"));
        let child = Command::new(bin("gitfleet"))
            .args(args)
            .envs(env)
            .current_dir(cwd)
            .stdin(std::process::Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(cwd.join(format!("{name}.err"))).unwrap())
            .spawn()
            .unwrap();
        Spawned {
            child: Some(child),
            out,
        }
    }

    /// `gitfleet up` in `cwd` with the demo in `demo/`, at test speed
    /// (agents poll every 300 ms, a pass every second, 1 s bakes, 50 ms
    /// activations), with `extra` arguments (a fleet repo to start from,
    /// `--listen`); its output goes to `<name>.out`.
    pub fn up(cwd: &Path, name: &str, extra: &[&str]) -> Spawned {
        let mut args = vec![
            "up",
            "--dir",
            "demo",
            "--poll",
            "300ms",
            "--interval",
            "1s",
            "--bake",
            "1s",
            "--apply-latency",
            "50ms",
        ];
        args.extend_from_slice(extra);
        Spawned::gitfleet(cwd, name, &args)
    }

    /// What it printed so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    /// The URL it prints after `marker` (`serving http://...`), without a
    /// trailing `/`; waits up to a minute for it.
    pub fn printed_url(&self, marker: &str) -> String {
        let started = std::time::Instant::now();
        loop {
            if let Some(rest) = self.output().split(marker).nth(1) {
                if let Some(url) = rest.split_whitespace().next() {
                    return url.trim_end_matches('/').to_owned();
                }
            }
            assert!(
                started.elapsed() < std::time::Duration::from_secs(60),
                "no {marker:?} in:\n{}",
                self.output()
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    /// Interrupt it as Ctrl-C would; it must exit 0. Returns its output.
    pub fn stop(mut self) -> String {
        let mut child = self.child.take().unwrap();
        let status = interrupt(&mut child, std::time::Duration::from_secs(30));
        let out = self.output();
        assert!(status.success(), "exited with {status}:\n{out}");
        out
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A JSON file on the state branch (`gitfleet/state`) of the bare repo
/// `bare`, parsed; `None` while there is none.
pub fn state_file<T: serde::de::DeserializeOwned>(bare: &Path, path: &str) -> Option<T> {
    let out = Command::new("git")
        .arg("--git-dir")
        .arg(bare)
        .args(["show", &format!("gitfleet/state:{path}")])
        .output()
        .unwrap();
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).unwrap())
}

/// The count of successful reconcile passes in a `/metrics` text of
/// `gitfleet serve`, 0 when it has none yet (or the text is empty).
pub fn ok_passes(metrics: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("gitfleet_reconcile_passes_total{result=\"ok\"} "))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Wait until `passes` has not moved for 3 s and return it: the passes a
/// reconciler's own commits trigger are over, so with a long poll interval
/// only a webhook can bring the next one.
pub fn quiet_passes(mut passes: impl FnMut() -> u64) -> u64 {
    let mut before = passes();
    let mut quiet_since = std::time::Instant::now();
    while quiet_since.elapsed() < std::time::Duration::from_secs(3) {
        std::thread::sleep(std::time::Duration::from_millis(250));
        let now = passes();
        if now != before {
            (before, quiet_since) = (now, std::time::Instant::now());
        }
    }
    before
}

/// A fleet's keys in `dir`, as an operator makes them: `online.key`,
/// `root.key` and `root-1.json` (a root of `fleet` naming the online key,
/// signed by the root key, for a day). Returns the root's public key, for
/// fleet.kdl's `trust` block.
pub fn fleet_keys(dir: &Path, fleet: &str) -> String {
    let keygen = |role: &str, file: &str| {
        let out = Command::new(bin("gitfleet"))
            .args(["keygen", role, "-o"])
            .arg(dir.join(file))
            .output()
            .unwrap();
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{stderr}");
        stdout.trim().to_owned()
    };
    let online = keygen("--online", "online.key");
    let root_key = keygen("--root", "root.key");
    let out = Command::new(bin("gitfleet"))
        .args(["root", "init", "--fleet", fleet, "--root-key", &root_key])
        .args(["--root-threshold", "1", "--online-key", &online])
        .args(["--expires", "1d", "--sign"])
        .arg(dir.join("root.key"))
        .arg("-o")
        .arg(dir.join("root-1.json"))
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    root_key
}

/// The example fleet committed as `<dir>/origin.git` (its working copy in
/// `<dir>/work`), with its keys in `dir` (`online.key`, ...): the bare
/// repository's path, for `--repo`.
pub fn example_origin(dir: &Path) -> String {
    let work = dir.join("work");
    copy_dir(&workspace().join("examples/fleet-repo"), &work);
    commit_fleet(dir, &work, "origin.git");
    fleet_keys(dir, "acme-edge");
    dir.join("origin.git").display().to_string()
}

/// Check the fleet repo in `work` (it must pass), commit it on `main`,
/// clone it bare into `<dir>/<bare>` and make that `work`'s origin.
pub fn commit_fleet(dir: &Path, work: &Path, bare: &str) {
    let out = Command::new(bin("gitfleet"))
        .arg("check")
        .arg(work)
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    git(work, &["init", "-q", "-b", "main"]);
    git(work, &["add", "-A"]);
    git(work, &["commit", "-qm", "fleet"]);
    let name = work.file_name().unwrap().to_string_lossy().into_owned();
    git(dir, &["clone", "-q", "--bare", &name, bare]);
    git(work, &["remote", "add", "origin", &format!("../{bare}")]);
}

/// The example fleet with a fleet.kdl that does not check (an unknown
/// node), committed as it is into the bare `<dir>/<bare>` (from
/// `<dir>/<bare>-work`), with an online key of its own at `<dir>/<key>`.
pub fn broken_fleet(dir: &Path, bare: &str, key: &str) {
    let work_name = format!("{bare}-work");
    let work = dir.join(&work_name);
    example_fleet_without_windows(&work);
    let fleet_kdl = work.join("fleet.kdl");
    let mut broken = std::fs::read_to_string(&fleet_kdl).unwrap();
    broken.push_str("colour \"red\"\n");
    std::fs::write(&fleet_kdl, broken).unwrap();
    git(&work, &["init", "-q", "-b", "main"]);
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "-qm", "broken fleet"]);
    git(dir, &["clone", "-q", "--bare", &work_name, bare]);
    let out = Command::new(bin("gitfleet"))
        .args(["keygen", "--online", "-o"])
        .arg(dir.join(key))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out).1);
}

/// An S3 endpoint that takes connections and never answers (held open
/// while the listener lives), and the environment that points a
/// `gitfleet` process's `s3://` stores at it.
pub fn silent_s3() -> (std::net::TcpListener, Vec<(&'static str, String)>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let env = vec![
        ("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}")),
        ("AWS_ACCESS_KEY_ID", "testing".to_owned()),
        ("AWS_SECRET_ACCESS_KEY", "testing".to_owned()),
        ("AWS_REGION", "us-east-1".to_owned()),
    ];
    (listener, env)
}
