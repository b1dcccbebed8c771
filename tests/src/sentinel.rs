//! The real Sentinel proxy as a test fixture: started with `-c <config>` on
//! a loopback port, waited for, signalled by its PID, and killed by that PID
//! when dropped.

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The version the tests and the agent are written against.
pub const VERSION: &str = "0.4.14";

/// How long the proxy may take to answer after it was started.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The `sentinel` binary: `$GITFLEET_SENTINEL`, or `sentinel` where cargo
/// installs it or on `PATH`. Panics with every missing tool when there is
/// none.
pub fn binary() -> PathBuf {
    gitfleet_io::tools::Tool::Sentinel.require()
}

/// The `zentinel` binary (Zentinel 0.6.45, Sentinel's successor), found as
/// [`binary`] finds Sentinel's.
pub fn zentinel_binary() -> PathBuf {
    gitfleet_io::tools::Tool::Zentinel.require()
}

/// A free TCP port on 127.0.0.1 (bound, read and released).
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding a free loopback port")
}

/// A running `sentinel -c <config>`.
#[derive(Debug)]
pub struct Sentinel {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Sentinel {
    /// Start the proxy with `config`, whose listener must be
    /// `127.0.0.1:<port>`, in `config`'s directory, and wait until it answers
    /// HTTP on that port. Its output goes to `sentinel.log` next to the
    /// config.
    pub fn start(config: &Path, port: u16) -> Sentinel {
        let dir = config.parent().expect("config file has a directory");
        Sentinel::start_in(config, port, dir)
    }

    /// As [`Sentinel::start`], with `cwd` as the proxy's working directory
    /// (where it resolves relative paths) and `sentinel.log` in `cwd`: the
    /// config's directory may be a bundle the agent swaps and checks.
    pub fn start_in(config: &Path, port: u16, cwd: &Path) -> Sentinel {
        let log = cwd.join("sentinel.log");
        let out = File::create(&log).expect("creating the proxy log");
        let err = out.try_clone().expect("cloning the log handle");
        let child = Command::new(binary())
            .arg("-c")
            .arg(config)
            .current_dir(cwd)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .env_remove("SENTINEL_CONFIG")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("starting sentinel");
        let mut proxy = Sentinel { child, port, log };
        proxy.wait_until_answering();
        proxy
    }

    fn wait_until_answering(&mut self) {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("polling the proxy") {
                panic!(
                    "sentinel exited with {status} before answering; its log:\n{}",
                    self.log()
                );
            }
            if try_get(self.port, "/").is_ok() {
                return;
            }
            assert!(
                start.elapsed() < START_TIMEOUT,
                "sentinel did not answer on 127.0.0.1:{} within {START_TIMEOUT:?}; its log:\n{}",
                self.port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The proxy's process id, for SIGHUP.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Everything the proxy printed so far.
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    /// GET `path` through the proxy: status and body.
    ///
    /// A connection closed without any response is retried (twice): debug
    /// builds of sentinel-proxy 0.4.14 (`cargo install --debug`, overflow
    /// checks on) drop the first proxied request after a builtin-handler or
    /// unrouted request. Its active-request counter is decremented for
    /// every request but incremented only for proxied ones
    /// (`src/reload/coordinator.rs`); the underflow wraps, and the next
    /// increment panics that request's task. Release builds wrap silently.
    pub fn get(&self, path: &str) -> (u16, String) {
        let mut tries = 0;
        loop {
            tries += 1;
            match try_get(self.port, path) {
                Ok(answer) => return answer,
                Err(e) if e.kind() == ErrorKind::ConnectionAborted && tries < 3 => continue,
                Err(e) => panic!(
                    "GET {} failed: {e}; proxy log:\n{}",
                    self.url(path),
                    self.log()
                ),
            }
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        // SIGKILL to the pid of the child we started, then reap it.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 GET to 127.0.0.1:`port`, `Connection: close`: status and
/// body.
pub fn try_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    if raw.is_empty() {
        return Err(std::io::Error::new(
            ErrorKind::ConnectionAborted,
            "connection closed without a response",
        ));
    }
    let text = String::from_utf8_lossy(&raw);
    let bad = || std::io::Error::new(ErrorKind::InvalidData, text.to_string());
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(bad)?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(bad)?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .replace(' ', "")
            .starts_with("transfer-encoding:chunked")
    });
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Ok((status, body))
}

fn dechunk(mut rest: &str) -> String {
    let mut body = String::new();
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 || tail.len() < size {
            break;
        }
        body.push_str(&tail[..size]);
        rest = tail[size..].trim_start_matches("\r\n");
    }
    body
}

/// A tiny HTTP upstream on 127.0.0.1 that answers every request with 200
/// and `body`, on a thread that lives as long as the test process.
pub fn upstream(body: &'static str) -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("binding an upstream");
    let port = listener.local_addr().expect("upstream address").port();
    serve_upstream(listener, 200, Duration::ZERO, body);
    port
}

/// Answer every request on `listener` with `status` and `body` after
/// `delay`, on threads that live as long as the test process: a healthy,
/// failing or slow upstream.
pub fn serve_upstream(listener: TcpListener, status: u16, delay: Duration, body: &'static str) {
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || answer(stream, status, delay, body));
        }
    });
}

fn answer(mut stream: TcpStream, status: u16, delay: Duration, body: &str) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    std::thread::sleep(delay);
    let _ = write!(
        stream,
        "HTTP/1.1 {status} X\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

/// A shell script that reloads Sentinel by restarting it, as an agent's
/// `reload-command`: stop the proxy this test started (by the pid in
/// `pid_file`), wait until it is gone, start it again in `cwd` on `config`
/// (its output appended to `sentinel.log` there) and record the new pid.
/// Sentinel 0.4.14 stops applying routes after a SIGHUP reload (see
/// tests/tests/sentinel_proxy.rs), so a restart is the reload that works.
pub fn restart_script(pid_file: &Path, cwd: &Path, config: &Path) -> String {
    restart_script_of(&binary(), pid_file, cwd, config)
}

/// [`restart_script`] for the proxy `proxy` (the `sentinel` or `zentinel`
/// binary): both start with `-c FILE` and stop on SIGTERM.
pub fn restart_script_of(proxy: &Path, pid_file: &Path, cwd: &Path, config: &Path) -> String {
    format!(
        r#"set -e
pid_file="{pid}"
if [ -f "$pid_file" ]; then
    pid=$(cat "$pid_file")
    kill "$pid" 2>/dev/null || true
    # Gone, or a zombie its new parent has not reaped yet (its sockets are
    # closed already).
    while kill -0 "$pid" 2>/dev/null && [ "$(cut -d' ' -f3 /proc/$pid/stat 2>/dev/null)" != Z ]; do
        sleep 0.02
    done
fi
cd "{cwd}"
"{sentinel}" -c "{config}" >> sentinel.log 2>&1 &
echo $! > "$pid_file"
"#,
        pid = pid_file.display(),
        cwd = cwd.display(),
        sentinel = proxy.display(),
        config = config.display(),
    )
}
