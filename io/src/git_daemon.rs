//! Test support: a real git server (`git daemon`) on a loopback port.

// Test support: a failure to start the server is a panic that says why.
#![allow(clippy::unwrap_used)]

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::moto::free_port;

/// `git daemon` serving the repositories under a base directory over
/// `git://` with pushes enabled; killed (by its PID) on drop, pass or fail.
#[derive(Debug)]
pub struct GitDaemon {
    child: Child,
    port: u16,
}

impl GitDaemon {
    /// Starts it on a free loopback port and waits until it listens. The
    /// user's and the system's git configuration are not read.
    pub fn start(base: &Path) -> GitDaemon {
        let port = free_port();
        // `git daemon` runs `git-daemon` as a child of its own, which
        // killing `git` would orphan: start `git-daemon` itself, so the
        // PID we hold is the server's.
        let exec_path = Command::new("git")
            .arg("--exec-path")
            .output()
            .expect("running git --exec-path");
        let exec_path = String::from_utf8(exec_path.stdout).expect("git --exec-path is UTF-8");
        let child = Command::new(Path::new(exec_path.trim()).join("git-daemon"))
            .args(["--reuseaddr", "--export-all", "--enable=receive-pack"])
            .arg(format!("--base-path={}", base.display()))
            .args(["--listen=127.0.0.1", &format!("--port={port}")])
            .arg(base)
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting git daemon");
        let mut daemon = GitDaemon { child, port };
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = daemon.child.try_wait().unwrap() {
                panic!("git daemon exited with {status} before listening on {port}");
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "git daemon is not listening on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        daemon
    }

    /// The `git://` URL of `repo`, a path under the base.
    pub fn url(&self, repo: &str) -> String {
        format!("git://127.0.0.1:{}/{repo}", self.port)
    }
}

impl Drop for GitDaemon {
    fn drop(&mut self) {
        // Our own child, by PID.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
