//! Test support: a real S3 API (moto_server) on a loopback port.

// Test support: a failure to start the server is a panic that says why.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use object_store::aws::AmazonS3Builder;

use crate::store::Store;

/// A moto_server process started by this test; killed (by its PID) on drop.
#[derive(Debug)]
pub struct Moto {
    child: Child,
    port: u16,
    /// moto's output, shown if it does not come up.
    _log: tempfile::NamedTempFile,
}

impl Moto {
    /// Starts moto_server on a free loopback port and waits until it answers.
    /// Panics, saying how to install it, when moto_server is missing.
    pub fn start() -> Moto {
        Moto::start_on(free_port())
    }

    /// Starts moto_server on `port` (a server stopped earlier comes back
    /// there, empty, for outage tests).
    pub fn start_on(port: u16) -> Moto {
        let program = crate::tools::Tool::Moto.require();
        let log = tempfile::NamedTempFile::new().unwrap();
        let child = Command::new(&program)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(log.reopen().unwrap())
            .stderr(log.reopen().unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", program.display()));
        let mut moto = Moto {
            child,
            port,
            _log: log,
        };
        moto.wait_ready(&program);
        moto
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The environment a `gitfleet` process needs to reach this server
    /// through `s3://` store URLs.
    pub fn env(&self) -> [(&'static str, String); 4] {
        [
            (
                "AWS_ENDPOINT_URL",
                format!("http://127.0.0.1:{}", self.port),
            ),
            ("AWS_ACCESS_KEY_ID", "testing".to_owned()),
            ("AWS_SECRET_ACCESS_KEY", "testing".to_owned()),
            ("AWS_REGION", "us-east-1".to_owned()),
        ]
    }

    /// A store at `url` (`s3://bucket/prefix`) on this server; the bucket is
    /// created if it does not exist yet.
    pub fn store(&self, url: &str) -> Store {
        let rest = url.strip_prefix("s3://").expect("an s3:// url");
        let bucket = rest.split('/').next().unwrap();
        let (status, _) = self.http("PUT", &format!("/{bucket}"));
        // 200 created, 409 already ours.
        assert!(
            status == 200 || status == 409,
            "creating bucket {bucket}: HTTP {status}"
        );
        let builder = AmazonS3Builder::new()
            .with_access_key_id("testing")
            .with_secret_access_key("testing")
            .with_region("us-east-1")
            .with_endpoint(format!("http://127.0.0.1:{}", self.port));
        Store::open_s3(url, rest, builder).unwrap()
    }

    fn wait_ready(&mut self, program: &Path) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "{} exited with {status} before answering:\n{}",
                    program.display(),
                    std::fs::read_to_string(self._log.path()).unwrap_or_default()
                );
            }
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok()
                && self.try_http("GET", "/").is_some_and(|(s, _)| s == 200)
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not answer on port {} within 60s:\n{}",
                program.display(),
                self.port,
                std::fs::read_to_string(self._log.path()).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn http(&self, method: &str, path: &str) -> (u16, String) {
        self.try_http(method, path)
            .unwrap_or_else(|| panic!("{method} {path} to moto failed"))
    }

    /// One unsigned HTTP/1.1 request with an empty body (moto does not check
    /// signatures).
    fn try_http(&self, method: &str, path: &str) -> Option<(u16, String)> {
        let mut conn = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        conn.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        write!(
            conn,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        )
        .ok()?;
        let mut response = String::new();
        conn.read_to_string(&mut response).ok()?;
        let status = response.split(' ').nth(1)?.parse().ok()?;
        Some((status, response))
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        // Our own child, by PID.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port nothing listens on now, on 127.0.0.1.
pub(crate) fn free_port() -> u16 {
    let listener = TcpListener::bind(("127.0.0.1", 0)).unwrap();
    listener.local_addr().unwrap().port()
}
