//! The Sentinel side of activating a config: validate it, reload the proxy,
//! and confirm the proxy really runs it.
//!
//! Sentinel 0.4.14 keeps its old config when a reload fails (it logs the
//! error and carries on), so a refused config never shows as a crash. The
//! only proof that a reload took is the proxy's own `builtin-handler
//! "config"` route, which dumps the active config as JSON. [`validate`]
//! computes, in-process and with the same `sentinel-config` crate, the dump
//! the proxy will show once the config is loaded ([`Fingerprint`]);
//! [`confirm`] polls the dump until it matches and otherwise says what
//! differs. The `health` handler answers healthy whatever is loaded, so
//! [`confirm_health`] is only a weaker fallback for proxies without a dump
//! route.
//!
//! What the dump does not prove, in sentinel-proxy 0.4.14 (pinned by
//! `tests/tests/sentinel_proxy.rs`):
//!
//! - The dump changes as soon as a reload is accepted; routes are rebuilt by
//!   a task that runs just after, so traffic follows a moment later.
//! - That task hangs for good in the first accepted reload of a process
//!   (it holds the scoped route table's write guard while awaiting a read
//!   guard, `src/proxy/mod.rs` `setup_reload_handler`), after swapping the
//!   global routes and before rebuilding the upstream pools. So the first
//!   reload changes routes but never upstreams, and every later reload
//!   changes the dump and nothing else.
//! - Listeners are bound and static-file servers built once, at start.
//!
//! So on 0.4.14 a SIGHUP reliably applies only the first route-only change
//! of a proxy process. A reload command that restarts the proxy (e.g.
//! `systemctl restart sentinel`) applies every change; [`confirm`] then
//! proves the new process started with the config, and a config it refuses
//! leaves no dump at all (the proxy is down until the previous config is
//! swapped back and the proxy restarted). [`Fingerprint::restart_needed`]
//! names the changes no reload applies.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use gitfleet_policy::proxy::{self, ProxyConfig};
use gitfleet_policy::with_config;
use gitfleet_schemas::ProxyKind;
use serde::Serialize;
use serde_json::{Map, Value};

/// How long a reload command may run before it is killed.
pub const RELOAD_COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// How long `sentinel test` may run before it is killed.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Pause between two polls of a dump or health URL.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// The most a single HTTP request to the proxy may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// The most bytes of a child's stderr (or of a JSON value) kept in an error.
const EXCERPT: usize = 2000;

/// Why a config could not be validated, the proxy reloaded, or its config
/// confirmed.
#[derive(Debug, thiserror::Error)]
pub enum SentinelError {
    #[error("cannot read sentinel config {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("sentinel config {path} is invalid: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("cannot render the config dump of {path}: {source}")]
    Render {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("config dump is not usable: {message}")]
    BadDump { message: String },
    #[error("{url} is not a plain http url on a loopback address")]
    NotLoopback { url: String },
    #[error("cannot build the http client: {source}")]
    Client {
        #[source]
        source: reqwest::Error,
    },
    #[error("proxy at {url} still serves another config after {waited:?}: {difference}")]
    Mismatch {
        url: String,
        waited: Duration,
        difference: String,
    },
    #[error("no usable config dump from {url} within {waited:?}: {reason}")]
    NoDump {
        url: String,
        waited: Duration,
        reason: String,
    },
    #[error("http check {url} got no answer: {reason}")]
    NoAnswer { url: String, reason: String },
    #[error("health check {url} did not answer 2xx within {waited:?}: {reason}")]
    Unhealthy {
        url: String,
        waited: Duration,
        reason: String,
    },
    #[error("{pid} is not a process id that can be signalled")]
    BadPid { pid: u64 },
    #[error("cannot read pid file {path}: {source}")]
    PidFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("pid file {path} does not hold a process id: {content:?}")]
    PidFileContent { path: PathBuf, content: String },
    #[error("cannot send SIGHUP to pid {pid}: {source}")]
    Signal {
        pid: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("reload command is empty")]
    EmptyCommand,
    #[error("cannot run `{}`: {source}", .command.join(" "))]
    Spawn {
        command: Vec<String>,
        #[source]
        source: std::io::Error,
    },
    #[error("`{}` did not finish within {timeout:?} and was killed", .command.join(" "))]
    Timeout {
        command: Vec<String>,
        timeout: Duration,
    },
    #[error("`{}` failed ({status}): {stderr}", .command.join(" "))]
    Failed {
        command: Vec<String>,
        status: ExitStatus,
        stderr: String,
    },
}

/// The normalized JSON that Sentinel's `builtin-handler "config"` route shows
/// for a config: the dump's `config` object, without the per-request
/// `timestamp` and `request_id`, with upstreams sorted by id and filter names
/// sorted (the proxy keeps both in hash maps, so their order changes from
/// one process to the next). Objects compare by key, not by order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fingerprint(Value);

impl Fingerprint {
    /// The dump the proxy shows once it runs `config`.
    pub fn from_config(config: &ProxyConfig) -> Result<Self, serde_json::Error> {
        Ok(Self::normalize(config_dump(config)?))
    }

    /// The fingerprint of a body served by the config route.
    pub fn from_dump(body: &[u8]) -> Result<Self, SentinelError> {
        let value: Value = serde_json::from_slice(body).map_err(|e| SentinelError::BadDump {
            message: format!(
                "not json ({e}): {}",
                excerpt(&String::from_utf8_lossy(body))
            ),
        })?;
        match value {
            Value::Object(mut map) => match map.remove("config") {
                Some(config @ Value::Object(_)) => Ok(Self::normalize(config)),
                _ => Err(SentinelError::BadDump {
                    message: format!(
                        "no `config` object in {}",
                        excerpt(&Value::Object(map).to_string())
                    ),
                }),
            },
            other => Err(SentinelError::BadDump {
                message: format!("not a json object: {}", excerpt(&other.to_string())),
            }),
        }
    }

    /// The normalized `config` object.
    pub fn as_json(&self) -> &Value {
        &self.0
    }

    /// Where `actual` (what the proxy shows) first differs from `self` (what
    /// was expected), as `routes["app"].upstream: expected "two", proxy has
    /// "one"`; `None` when they are the same.
    pub fn diff(&self, actual: &Fingerprint) -> Option<String> {
        first_difference("", &self.0, &actual.0)
    }

    /// Why running `self` needs a proxy restart when `running` is loaded,
    /// or `None` when a reload can apply it: a reload neither rebinds
    /// listeners, nor builds upstream pools, nor static-file servers for new
    /// routes. (On 0.4.14 only the first reload of a process applies even
    /// the rest; see the module docs.)
    pub fn restart_needed(&self, running: &Fingerprint) -> Option<String> {
        let part = |f: &Fingerprint, key: &str| f.0.get(key).cloned().unwrap_or(Value::Null);
        for key in ["listeners", "upstreams"] {
            if let Some(difference) = first_difference(key, &part(self, key), &part(running, key)) {
                return Some(format!("{key} change: {difference}"));
            }
        }
        let running_static = static_routes(running);
        static_routes(self)
            .into_iter()
            .find(|id| !running_static.contains(id))
            .map(|id| format!("static-files route {id:?} is new"))
    }

    fn normalize(mut config: Value) -> Self {
        // A dump of a whole response is reduced to its config object; the
        // per-request fields never take part.
        if let Value::Object(map) = &mut config {
            map.remove("timestamp");
            map.remove("request_id");
            if let Some(Value::Array(upstreams)) = map.get_mut("upstreams") {
                upstreams.sort_by(|a, b| id_of(a).cmp(&id_of(b)));
            }
            if let Some(Value::Array(filters)) = map.get_mut("filters") {
                filters.sort_by(|a, b| a.as_str().cmp(&b.as_str()));
            }
        }
        Self(sorted(config))
    }
}

/// Canonical JSON: keys sorted at every level, no whitespace.
impl std::fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Parse and validate `dir/<entry>` (`sentinel.kdl` or `zentinel.kdl`)
/// with the proxy's own configuration crate, as the proxy does on start
/// and on reload, and return the config dump the proxy will show once it
/// runs it. Zentinel 0.6 dumps its config as Sentinel 0.4 did.
///
/// Host paths count: static-file roots and agents' unix-socket directories
/// must exist on this node. Relative paths resolve against this process's
/// working directory, the proxy resolves them against its own.
pub fn validate(dir: &Path, kind: ProxyKind) -> Result<Fingerprint, SentinelError> {
    let path = dir.join(kind.entry());
    let text = std::fs::read_to_string(&path).map_err(|source| SentinelError::Read {
        path: path.clone(),
        source,
    })?;
    let config = proxy::parse(kind, &text).map_err(|message| SentinelError::Invalid {
        path: path.clone(),
        message,
    })?;
    with_config!(&config, |c, k| c.validate().map_err(|e| e.to_string())).map_err(|message| {
        SentinelError::Invalid {
            path: path.clone(),
            message,
        }
    })?;
    let fingerprint =
        Fingerprint::from_config(&config).map_err(|source| SentinelError::Render {
            path: path.clone(),
            source,
        })?;
    let (routes, upstreams, listeners) = with_config!(&config, |c, k| (
        c.routes.len(),
        c.upstreams.len(),
        c.listeners.len()
    ));
    tracing::debug!(
        path = %path.display(),
        proxy = kind.name(),
        routes,
        upstreams,
        listeners,
        "proxy config is valid"
    );
    Ok(fingerprint)
}

/// Where the proxy serves its own metrics under the config in
/// `dir/<entry>`: the path of the route whose `builtin-handler` is
/// `"metrics"`, on a plain-http listener reached over loopback (a listener
/// on every address is reached on 127.0.0.1). None when the config has no
/// such route or listener.
pub fn metrics_url(dir: &Path, kind: ProxyKind) -> Option<String> {
    let text = std::fs::read_to_string(dir.join(kind.entry())).ok()?;
    let config = proxy::parse(kind, &text).ok()?;
    let (path, address) = with_config!(&config, |c, k| {
        let path = c.routes.iter().find_map(|r| {
            if r.builtin_handler != Some(k::BuiltinHandler::Metrics) {
                return None;
            }
            r.matches.iter().find_map(|m| match m {
                k::MatchCondition::Path(p) | k::MatchCondition::PathPrefix(p) => Some(p.clone()),
                _ => None,
            })
        })?;
        let address = c
            .listeners
            .iter()
            .filter(|l| l.tls.is_none())
            .filter_map(|l| l.address.parse::<std::net::SocketAddr>().ok())
            .min_by_key(|a| !a.ip().is_loopback())?;
        (path, address)
    });
    let host = match address.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => "127.0.0.1".to_owned(),
        ip if ip.is_unspecified() => "[::1]".to_owned(),
        IpAddr::V6(ip) => format!("[{ip}]"),
        IpAddr::V4(ip) => ip.to_string(),
    };
    Some(format!("http://{host}:{}{path}", address.port()))
}

/// The targets (`host:port`) of upstream `name` in the config in
/// `dir/<entry>`, or `None` when it has no such upstream.
pub fn upstream_targets(dir: &Path, kind: ProxyKind, name: &str) -> Option<Vec<String>> {
    upstreams(dir, kind)?.remove(name)
}

/// Every upstream of the config in `dir/<entry>` with its targets
/// (`host:port`); `None` when the config cannot be read.
pub fn upstreams(dir: &Path, kind: ProxyKind) -> Option<HashMap<String, Vec<String>>> {
    let text = std::fs::read_to_string(dir.join(kind.entry())).ok()?;
    let config = proxy::parse(kind, &text).ok()?;
    Some(with_config!(&config, |c, _k| {
        c.upstreams
            .iter()
            .map(|(name, u)| {
                let targets = u.targets.iter().map(|t| t.address.clone()).collect();
                (name.clone(), targets)
            })
            .collect()
    }))
}

/// The Prometheus text the proxy serves at `url` (plain http on loopback).
pub async fn scrape(url: &str, timeout: Duration) -> Result<String, SentinelError> {
    let client = loopback_client(url)?;
    match fetch(&client, url, timeout).await {
        Ok((status, body)) if status.is_success() => {
            Ok(String::from_utf8_lossy(&body).into_owned())
        }
        Ok((status, body)) => Err(SentinelError::NoAnswer {
            url: url.to_owned(),
            reason: format!(
                "status {status}: {}",
                excerpt(&String::from_utf8_lossy(&body))
            ),
        }),
        Err(reason) => Err(SentinelError::NoAnswer {
            url: url.to_owned(),
            reason,
        }),
    }
}

/// Poll the proxy's config dump at `url` until it shows `expected`. On
/// timeout the error names the first difference, or why no dump was read.
pub async fn confirm(
    url: &str,
    expected: &Fingerprint,
    timeout: Duration,
) -> Result<(), SentinelError> {
    let client = loopback_client(url)?;
    let start = Instant::now();
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let outcome = match fetch(&client, url, remaining(start, timeout)).await {
            Ok((status, body)) if status.is_success() => match Fingerprint::from_dump(&body) {
                Ok(actual) => match expected.diff(&actual) {
                    None => {
                        tracing::info!(
                            url,
                            attempt,
                            elapsed_ms = start.elapsed().as_millis() as u64,
                            "proxy runs the expected config"
                        );
                        return Ok(());
                    }
                    Some(difference) => Outcome::Differs(difference),
                },
                Err(e) => Outcome::Unusable(e.to_string()),
            },
            Ok((status, body)) => Outcome::Unusable(format!(
                "status {status}: {}",
                excerpt(&String::from_utf8_lossy(&body))
            )),
            Err(e) => Outcome::Unusable(e),
        };
        tracing::debug!(url, attempt, outcome = ?outcome, "config dump does not match yet");
        if start.elapsed() + POLL_INTERVAL >= timeout {
            let waited = start.elapsed();
            let error = match outcome {
                Outcome::Differs(difference) => SentinelError::Mismatch {
                    url: url.to_owned(),
                    waited,
                    difference,
                },
                Outcome::Unusable(reason) => SentinelError::NoDump {
                    url: url.to_owned(),
                    waited,
                    reason,
                },
            };
            tracing::warn!(url, attempt, error = %error, "proxy did not confirm the config");
            return Err(error);
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Poll a health URL until it answers 2xx. Sentinel's `health` handler
/// answers healthy whatever config is loaded: this proves the proxy is up,
/// not that it took a reload.
/// The status one GET of `url` (plain http on loopback) answers with, for
/// a rollout's HTTP check.
pub async fn http_status(url: &str, timeout: Duration) -> Result<u16, SentinelError> {
    let client = loopback_client(url)?;
    fetch(&client, url, timeout)
        .await
        .map(|(status, _)| status.as_u16())
        .map_err(|reason| SentinelError::NoAnswer {
            url: url.to_owned(),
            reason,
        })
}

pub async fn confirm_health(url: &str, timeout: Duration) -> Result<(), SentinelError> {
    let client = loopback_client(url)?;
    let start = Instant::now();
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let reason = match fetch(&client, url, remaining(start, timeout)).await {
            Ok((status, _)) if status.is_success() => {
                tracing::info!(url, attempt, %status, "proxy is healthy");
                return Ok(());
            }
            Ok((status, body)) => format!(
                "status {status}: {}",
                excerpt(&String::from_utf8_lossy(&body))
            ),
            Err(e) => e,
        };
        tracing::debug!(url, attempt, reason, "proxy not healthy yet");
        if start.elapsed() + POLL_INTERVAL >= timeout {
            return Err(SentinelError::Unhealthy {
                url: url.to_owned(),
                waited: start.elapsed(),
                reason,
            });
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// How to make the proxy re-read its config file. On sentinel-proxy 0.4.14
/// only a restart applies every change (see the module docs): prefer a
/// command that restarts it over SIGHUP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reload {
    /// Send SIGHUP to this process.
    Pid(u32),
    /// Send SIGHUP to the process whose id this file holds (read each time).
    PidFile(PathBuf),
    /// Run this command (program and arguments, no shell); it must exit 0.
    Command(Vec<String>),
}

/// Ask the proxy to reload. This only asks: whether the proxy took the new
/// config is for [`confirm`] to say.
pub fn reload(target: &Reload) -> Result<(), SentinelError> {
    match target {
        Reload::Pid(pid) => signal_hup(*pid),
        Reload::PidFile(path) => {
            let content =
                std::fs::read_to_string(path).map_err(|source| SentinelError::PidFile {
                    path: path.clone(),
                    source,
                })?;
            let pid = content
                .trim()
                .parse::<u32>()
                .map_err(|_| SentinelError::PidFileContent {
                    path: path.clone(),
                    content: excerpt(&content),
                })?;
            tracing::debug!(path = %path.display(), pid, "read proxy pid file");
            signal_hup(pid)
        }
        Reload::Command(command) => {
            run_command(command, RELOAD_COMMAND_TIMEOUT)?;
            tracing::info!(?command, "reload command succeeded");
            Ok(())
        }
    }
}

/// Run the real proxy's `sentinel test -c FILE` (parse and validate, no
/// network; unlike `sentinel validate`, which dials every upstream). Its
/// stderr is in the error when it refuses the config.
pub async fn test_with_binary(binary: &Path, config: &Path) -> Result<(), SentinelError> {
    let command = vec![
        binary.display().to_string(),
        "test".to_owned(),
        "-c".to_owned(),
        config.display().to_string(),
    ];
    let child = tokio::process::Command::new(binary)
        .arg("test")
        .arg("-c")
        .arg(config)
        .env("NO_COLOR", "1")
        // anyhow would append a stack backtrace to the error.
        .env("RUST_BACKTRACE", "0")
        .env("RUST_LIB_BACKTRACE", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| SentinelError::Spawn {
            command: command.clone(),
            source,
        })?;
    let output = match tokio::time::timeout(TEST_TIMEOUT, child.wait_with_output()).await {
        Ok(Ok(output)) => output,
        Ok(Err(source)) => return Err(SentinelError::Spawn { command, source }),
        // Dropping the future drops the child, which kills it.
        Err(_) => {
            return Err(SentinelError::Timeout {
                command,
                timeout: TEST_TIMEOUT,
            })
        }
    };
    if output.status.success() {
        tracing::info!(config = %config.display(), "sentinel test accepted the config");
        return Ok(());
    }
    // The proxy prints its error to stderr and its log lines to stdout.
    let mut stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
    if stderr.is_empty() {
        stderr = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    }
    let error = SentinelError::Failed {
        command,
        status: output.status,
        stderr: excerpt(&stderr),
    };
    tracing::warn!(config = %config.display(), error = %error, "sentinel test refused the config");
    Err(error)
}

/// Why one poll of the dump did not confirm.
#[derive(Debug)]
enum Outcome {
    Differs(String),
    Unusable(String),
}

fn signal_hup(pid: u32) -> Result<(), SentinelError> {
    // kill(0) and negative ids would signal process groups: refused.
    let pid_t = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .ok_or(SentinelError::BadPid { pid: pid.into() })?;
    rustix::process::kill_process(pid_t, rustix::process::Signal::HUP).map_err(|e| {
        SentinelError::Signal {
            pid,
            source: e.into(),
        }
    })?;
    tracing::info!(pid, "sent SIGHUP to the proxy");
    Ok(())
}

/// Run `command` to completion, killing it after `timeout`.
fn run_command(command: &[String], timeout: Duration) -> Result<(), SentinelError> {
    let Some((program, args)) = command.split_first() else {
        return Err(SentinelError::EmptyCommand);
    };
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| SentinelError::Spawn {
            command: command.to_vec(),
            source,
        })?;
    // Read stderr on a thread so a chatty command cannot block on a full pipe.
    let stderr = child.stderr.take().map(|mut pipe| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = std::io::Read::read_to_end(&mut pipe, &mut buf);
            buf
        })
    });
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if start.elapsed() < timeout => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                // Only the child we started, by its own pid.
                let _ = child.kill();
                let _ = child.wait();
                return Err(SentinelError::Timeout {
                    command: command.to_vec(),
                    timeout,
                });
            }
            Err(source) => {
                return Err(SentinelError::Spawn {
                    command: command.to_vec(),
                    source,
                })
            }
        }
    };
    let stderr = stderr
        .and_then(|t| t.join().ok())
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    if status.success() {
        Ok(())
    } else {
        Err(SentinelError::Failed {
            command: command.to_vec(),
            status,
            stderr: excerpt(&stderr),
        })
    }
}

/// An HTTP client for `url`, which must be plain http on a loopback address:
/// the agent only talks to the proxy on its own node, and no environment
/// proxy may stand in between.
fn loopback_client(url: &str) -> Result<reqwest::Client, SentinelError> {
    let not_loopback = || SentinelError::NotLoopback {
        url: url.to_owned(),
    };
    let parsed = reqwest::Url::parse(url).map_err(|_| not_loopback())?;
    if parsed.scheme() != "http" || !crate::checks::is_loopback(&parsed) {
        return Err(not_loopback());
    }
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|source| SentinelError::Client { source })
}

/// One GET; the status and body, or why there is none.
async fn fetch(
    client: &reqwest::Client,
    url: &str,
    budget: Duration,
) -> Result<(reqwest::StatusCode, bytes::Bytes), String> {
    let response = client
        .get(url)
        .timeout(budget.clamp(Duration::from_millis(50), REQUEST_TIMEOUT))
        .send()
        .await
        .map_err(|e| gitfleet_io::error_chain(&e))?;
    let status = response.status();
    let body = response
        .bytes()
        .await
        .map_err(|e| gitfleet_io::error_chain(&e))?;
    Ok((status, body))
}

fn remaining(start: Instant, timeout: Duration) -> Duration {
    timeout.saturating_sub(start.elapsed())
}

/// `text`, cut to at most [`EXCERPT`] bytes on a character boundary.
fn excerpt(text: &str) -> String {
    if text.len() <= EXCERPT {
        return text.to_owned();
    }
    let mut end = EXCERPT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

// ---------------------------------------------------------------------------
// The dump, as sentinel-proxy 0.4.14's `config_handler` builds it
// (src/builtin_handlers.rs), minus `timestamp` and `request_id`;
// zentinel-proxy 0.6.45 builds the same.

/// The dump of one proxy's parsed config: the two crates' models have
/// the same fields.
macro_rules! dump_of {
    ($cfg:expr) => {{
        let cfg = $cfg;
        let listeners = cfg
            .listeners
            .iter()
            .map(|l| {
                Ok(object([
                    ("id", json(&l.id)?),
                    ("address", json(&l.address)?),
                    ("protocol", json(&l.protocol)?),
                    ("default_route", json(&l.default_route)?),
                    ("request_timeout_secs", json(&l.request_timeout_secs)?),
                    ("keepalive_timeout_secs", json(&l.keepalive_timeout_secs)?),
                    ("tls_enabled", Value::Bool(l.tls.is_some())),
                ]))
            })
            .collect::<Result<Vec<_>, serde_json::Error>>()?;
        let routes = cfg
            .routes
            .iter()
            .map(|r| {
                Ok(object([
                    ("id", json(&r.id)?),
                    ("priority", json(&r.priority)?),
                    ("matches", json(&r.matches)?),
                    ("upstream", json(&r.upstream)?),
                    ("service_type", json(&r.service_type)?),
                    ("builtin_handler", json(&r.builtin_handler)?),
                    ("filters", json(&r.filters)?),
                    ("waf_enabled", json(&r.waf_enabled)?),
                ]))
            })
            .collect::<Result<Vec<_>, serde_json::Error>>()?;
        let upstreams = cfg
            .upstreams
            .iter()
            .map(|(id, u)| {
                let targets = u
                    .targets
                    .iter()
                    .map(|t| {
                        Ok(object([
                            ("address", json(&t.address)?),
                            ("weight", json(&t.weight)?),
                        ]))
                    })
                    .collect::<Result<Vec<_>, serde_json::Error>>()?;
                let health_check = match &u.health_check {
                    Some(h) => object([
                        ("interval_secs", json(&h.interval_secs)?),
                        ("timeout_secs", json(&h.timeout_secs)?),
                        ("healthy_threshold", json(&h.healthy_threshold)?),
                        ("unhealthy_threshold", json(&h.unhealthy_threshold)?),
                    ]),
                    None => Value::Null,
                };
                Ok(object([
                    ("id", json(id)?),
                    ("targets", Value::Array(targets)),
                    ("load_balancing", json(&u.load_balancing)?),
                    ("health_check", health_check),
                    ("tls_enabled", Value::Bool(u.tls.is_some())),
                ]))
            })
            .collect::<Result<Vec<_>, serde_json::Error>>()?;
        let agents = cfg
            .agents
            .iter()
            .map(|a| {
                Ok(object([
                    ("id", json(&a.id)?),
                    ("agent_type", json(&a.agent_type)?),
                    ("timeout_ms", json(&a.timeout_ms)?),
                ]))
            })
            .collect::<Result<Vec<_>, serde_json::Error>>()?;
        let waf = match &cfg.waf {
            Some(w) => object([
                ("mode", json(&w.mode)?),
                ("engine", json(&w.engine)?),
                ("audit_log", json(&w.audit_log)?),
            ]),
            None => Value::Null,
        };
        Ok(object([
            ("server", json(&cfg.server)?),
            ("listeners", Value::Array(listeners)),
            ("routes", Value::Array(routes)),
            ("upstreams", Value::Array(upstreams)),
            ("agents", Value::Array(agents)),
            ("filters", json(&cfg.filters.keys().collect::<Vec<_>>())?),
            ("waf", waf),
            ("limits", json(&cfg.limits)?),
        ]))
    }};
}

fn config_dump(config: &ProxyConfig) -> Result<Value, serde_json::Error> {
    with_config!(config, |cfg, k| dump_of!(cfg))
}

fn json<T: Serialize + ?Sized>(value: &T) -> Result<Value, serde_json::Error> {
    serde_json::to_value(value)
}

fn object<const N: usize>(fields: [(&str, Value); N]) -> Value {
    Value::Object(fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
}

// ---------------------------------------------------------------------------
// Normalization and comparison.

/// Ids of the routes that serve static files.
fn static_routes(f: &Fingerprint) -> Vec<&str> {
    f.0.get("routes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|r| r.get("service_type").and_then(Value::as_str) == Some("static"))
        .filter_map(id_of)
        .collect()
}

fn id_of(value: &Value) -> Option<&str> {
    value.get("id").and_then(Value::as_str)
}

/// `value` with every object's keys in sorted order.
fn sorted(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(String, Value)> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k, sorted(v)))
                    .collect::<Map<_, _>>(),
            )
        }
        Value::Array(items) => Value::Array(items.into_iter().map(sorted).collect()),
        other => other,
    }
}

/// The first place `actual` differs from `expected`, depth first in key
/// order. Arrays whose items all carry a string `id` are compared by id.
fn first_difference(path: &str, expected: &Value, actual: &Value) -> Option<String> {
    let here = if path.is_empty() { "config" } else { path };
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => {
            let mut keys: Vec<&String> = e.keys().chain(a.keys()).collect();
            keys.sort();
            keys.dedup();
            keys.into_iter().find_map(|key| {
                let sub = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                match (e.get(key), a.get(key)) {
                    (Some(ev), Some(av)) => first_difference(&sub, ev, av),
                    (Some(ev), None) => Some(format!(
                        "{sub}: expected {}, proxy has no such field",
                        short(ev)
                    )),
                    (None, Some(av)) => {
                        Some(format!("{sub}: not expected, proxy has {}", short(av)))
                    }
                    (None, None) => None,
                }
            })
        }
        (Value::Array(e), Value::Array(a)) => {
            let ids = |items: &[Value]| -> Option<Vec<String>> {
                items.iter().map(|v| id_of(v).map(str::to_owned)).collect()
            };
            if let (Some(eids), Some(aids)) = (ids(e), ids(a)) {
                if let Some(missing) = eids.iter().find(|id| !aids.contains(id)) {
                    return Some(format!("{here}: proxy has no {missing:?}"));
                }
                if let Some(extra) = aids.iter().find(|id| !eids.contains(id)) {
                    return Some(format!(
                        "{here}: proxy has {extra:?}, which is not expected"
                    ));
                }
                if eids != aids {
                    return Some(format!(
                        "{here}: expected order {eids:?}, proxy has {aids:?}"
                    ));
                }
                return eids.iter().zip(e.iter().zip(a)).find_map(|(id, (ev, av))| {
                    first_difference(&format!("{path}[{id:?}]"), ev, av)
                });
            }
            if e.len() != a.len() {
                return Some(format!(
                    "{here}: expected {} items {}, proxy has {} {}",
                    e.len(),
                    short(expected),
                    a.len(),
                    short(actual)
                ));
            }
            e.iter()
                .zip(a)
                .enumerate()
                .find_map(|(i, (ev, av))| first_difference(&format!("{path}[{i}]"), ev, av))
        }
        (e, a) if e == a => None,
        (e, a) => Some(format!(
            "{here}: expected {}, proxy has {}",
            short(e),
            short(a)
        )),
    }
}

/// A value in a message: compact JSON, at most 120 characters.
fn short(value: &Value) -> String {
    let text = value.to_string();
    match text.char_indices().nth(120) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use serde_json::json;

    const CONFIG: &str = r#"
schema-version "1.0"
system {
    worker-threads 1
}
listeners {
    listener "http" {
        address "127.0.0.1:18080"
        protocol "http"
    }
}
filters {
    filter "t-a" {
        type "timeout"
        request-timeout-secs 5
    }
    filter "t-b" {
        type "timeout"
        request-timeout-secs 9
    }
}
routes {
    route "config" {
        priority "high"
        matches {
            path "/-/config"
        }
        builtin-handler "config"
    }
    route "app" {
        matches {
            path-prefix "/"
        }
        upstream "one"
        filters "t-a"
    }
}
upstreams {
    upstream "one" {
        target "127.0.0.1:18081"
    }
    upstream "two" {
        target "127.0.0.1:18082"
        target "127.0.0.1:18083" weight=3
    }
    upstream "three" {
        target "127.0.0.1:18084"
    }
}
"#;

    fn write(dir: &Path, text: &str) {
        std::fs::write(dir.join(ProxyKind::Sentinel.entry()), text).unwrap();
    }

    #[test]
    fn an_upstreams_targets_are_read_from_the_config() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), CONFIG);
        assert_eq!(
            upstream_targets(dir.path(), ProxyKind::Sentinel, "two").unwrap(),
            ["127.0.0.1:18082", "127.0.0.1:18083"]
        );
        assert_eq!(
            upstream_targets(dir.path(), ProxyKind::Sentinel, "four"),
            None
        );
    }

    fn valid() -> Fingerprint {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), CONFIG);
        validate(dir.path(), ProxyKind::Sentinel).unwrap()
    }

    /// A dump as the proxy would serve it, with the given order of upstreams
    /// and filters and per-request fields.
    fn served(fingerprint: &Fingerprint, reverse: bool, request_id: &str) -> Vec<u8> {
        let mut config = fingerprint.as_json().clone();
        if reverse {
            for key in ["upstreams", "filters"] {
                config[key].as_array_mut().unwrap().reverse();
            }
        }
        serde_json::to_vec_pretty(&json!({
            "timestamp": "2026-01-01T00:00:00+00:00",
            "request_id": request_id,
            "config": config,
        }))
        .unwrap()
    }

    #[test]
    fn validate_gives_the_dump_shape() {
        let f = valid();
        let v = f.as_json();
        for key in [
            "server",
            "listeners",
            "routes",
            "upstreams",
            "agents",
            "filters",
            "waf",
            "limits",
        ] {
            assert!(v.get(key).is_some(), "no {key} in {v}");
        }
        assert!(v.get("timestamp").is_none() && v.get("request_id").is_none());
        let ids: Vec<_> = v["upstreams"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["one", "three", "two"], "sorted by id");
        assert_eq!(v["filters"], json!(["t-a", "t-b"]));
        assert_eq!(v["routes"][1]["upstream"], json!("one"));
        assert_eq!(v["listeners"][0]["tls_enabled"], json!(false));
        assert_eq!(v["upstreams"][2]["targets"][1]["weight"], json!(3));
    }

    #[test]
    fn hash_map_order_and_request_fields_do_not_matter() {
        let f = valid();
        let a = Fingerprint::from_dump(&served(&f, false, "req-1")).unwrap();
        let b = Fingerprint::from_dump(&served(&f, true, "req-2")).unwrap();
        assert_eq!(a, f);
        assert_eq!(b, f);
        assert_eq!(f.diff(&b), None);
        // The canonical text is the same however the dump was ordered.
        assert_eq!(a.to_string(), b.to_string());
    }

    #[test]
    fn validate_is_deterministic_across_hash_seeds() {
        // Each parse builds new hash maps with new random seeds.
        let first = valid().to_string();
        for _ in 0..20 {
            assert_eq!(valid().to_string(), first);
        }
    }

    #[test]
    fn a_changed_route_is_named_in_the_mismatch() {
        let expected = valid();
        let mut other = expected.as_json().clone();
        other["routes"][1]["upstream"] = json!("two");
        let actual =
            Fingerprint::from_dump(&serde_json::to_vec(&json!({ "config": other })).unwrap())
                .unwrap();
        assert_eq!(
            expected.diff(&actual).unwrap(),
            r#"routes["app"].upstream: expected "one", proxy has "two""#
        );
    }

    #[test]
    fn missing_and_extra_ids_are_named() {
        let expected = valid();
        let mut fewer = expected.as_json().clone();
        fewer["upstreams"]
            .as_array_mut()
            .unwrap()
            .retain(|u| u["id"] != "three");
        let fewer = Fingerprint(fewer);
        assert_eq!(
            expected.diff(&fewer).unwrap(),
            r#"upstreams: proxy has no "three""#
        );
        assert_eq!(
            fewer.diff(&expected).unwrap(),
            r#"upstreams: proxy has "three", which is not expected"#
        );
        let mut reordered = expected.as_json().clone();
        reordered["routes"].as_array_mut().unwrap().reverse();
        assert_eq!(
            expected.diff(&Fingerprint(reordered)).unwrap(),
            r#"routes: expected order ["config", "app"], proxy has ["app", "config"]"#
        );
    }

    #[test]
    fn nested_and_missing_fields_are_named() {
        let expected = valid();
        let mut other = expected.as_json().clone();
        other["upstreams"][2]["targets"][1]["weight"] = json!(1);
        assert_eq!(
            expected.diff(&Fingerprint(other.clone())).unwrap(),
            r#"upstreams["two"].targets[1].weight: expected 3, proxy has 1"#
        );
        other.as_object_mut().unwrap().remove("limits");
        assert!(expected
            .diff(&Fingerprint(other))
            .unwrap()
            .starts_with("limits: expected {"));
        let mut other = expected.as_json().clone();
        other["filters"] = json!(["t-a"]);
        assert_eq!(
            expected.diff(&Fingerprint(other)).unwrap(),
            r#"filters: expected 2 items ["t-a","t-b"], proxy has 1 ["t-a"]"#
        );
    }

    #[test]
    fn listener_and_static_route_changes_need_a_restart() {
        let running = valid();
        assert_eq!(running.restart_needed(&running), None);
        let mut next = running.as_json().clone();
        next["routes"][1]["upstream"] = json!("two");
        assert_eq!(Fingerprint(next.clone()).restart_needed(&running), None);
        next["listeners"][0]["address"] = json!("127.0.0.1:18090");
        assert_eq!(
            Fingerprint(next).restart_needed(&running).unwrap(),
            r#"listeners change: listeners["http"].address: expected "127.0.0.1:18090", proxy has "127.0.0.1:18080""#
        );
        let mut next = running.as_json().clone();
        next["upstreams"][0]["targets"][0]["address"] = json!("127.0.0.1:1");
        assert_eq!(
            Fingerprint(next).restart_needed(&running).unwrap(),
            r#"upstreams change: upstreams["one"].targets[0].address: expected "127.0.0.1:1", proxy has "127.0.0.1:18081""#
        );
        let mut next = running.as_json().clone();
        next["routes"][1]["service_type"] = json!("static");
        assert_eq!(
            Fingerprint(next).restart_needed(&running).unwrap(),
            r#"static-files route "app" is new"#
        );
    }

    #[test]
    fn unusable_dumps_say_why() {
        let e = Fingerprint::from_dump(b"<html>").unwrap_err().to_string();
        assert!(e.starts_with("config dump is not usable: not json"), "{e}");
        let e = Fingerprint::from_dump(br#"{"error":"Configuration unavailable","status":503}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no `config` object"), "{e}");
        assert!(e.contains("Configuration unavailable"), "{e}");
    }

    #[test]
    fn invalid_configs_are_refused_with_the_file_named() {
        let dir = tempfile::tempdir().unwrap();
        let e = validate(dir.path(), ProxyKind::Sentinel)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("cannot read sentinel config "), "{e}");
        assert!(e.contains(ProxyKind::Sentinel.entry()), "{e}");

        write(
            dir.path(),
            &CONFIG.replace("upstream \"one\"\n", "upstream \"nope\"\n"),
        );
        let e = validate(dir.path(), ProxyKind::Sentinel)
            .unwrap_err()
            .to_string();
        assert!(e.contains("is invalid"), "{e}");
        assert!(e.contains("nope"), "{e}");

        write(dir.path(), "routes {");
        let e = validate(dir.path(), ProxyKind::Sentinel).unwrap_err();
        assert!(matches!(e, SentinelError::Invalid { .. }), "{e}");
    }

    #[test]
    fn host_paths_count() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("www");
        let text = CONFIG.replace(
            "upstream \"one\"\n        filters \"t-a\"",
            &format!(
                "service-type \"static\"\n        static-files {{\n            root \"{}\"\n        }}",
                root.display()
            ),
        );
        write(dir.path(), &text);
        let e = validate(dir.path(), ProxyKind::Sentinel)
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not exist"), "{e}");
        std::fs::create_dir(&root).unwrap();
        validate(dir.path(), ProxyKind::Sentinel).unwrap();
    }

    #[test]
    fn only_loopback_http_urls() {
        for url in [
            "http://127.0.0.1:9/-/config",
            "http://[::1]:9/",
            "http://localhost:9/",
            "http://127.1.2.3/",
        ] {
            assert!(loopback_client(url).is_ok(), "{url}");
        }
        for url in [
            "https://127.0.0.1/",
            "http://10.0.0.1/",
            "http://example.com/",
            "file:///etc/passwd",
            "nonsense",
        ] {
            let e = loopback_client(url).unwrap_err().to_string();
            assert!(
                e.contains("not a plain http url on a loopback address"),
                "{e}"
            );
        }
    }

    #[tokio::test]
    async fn confirm_times_out_with_the_reason() {
        // Nothing listens on a port we bound and closed.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("http://127.0.0.1:{port}/-/config");
        let e = confirm(&url, &valid(), Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(matches!(e, SentinelError::NoDump { .. }), "{e}");
        assert!(e
            .to_string()
            .starts_with("no usable config dump from http://127.0.0.1:"));
        let e = confirm_health(&url, Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(matches!(e, SentinelError::Unhealthy { .. }), "{e}");
    }

    #[test]
    fn reload_refuses_bad_targets() {
        for pid in [0, u32::MAX] {
            let e = reload(&Reload::Pid(pid)).unwrap_err();
            assert!(matches!(e, SentinelError::BadPid { .. }), "{e}");
        }
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("sentinel.pid");
        let e = reload(&Reload::PidFile(pidfile.clone()))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("cannot read pid file "), "{e}");
        std::fs::write(&pidfile, "not a pid\n").unwrap();
        let e = reload(&Reload::PidFile(pidfile)).unwrap_err().to_string();
        assert!(
            e.contains("does not hold a process id: \"not a pid\\n\""),
            "{e}"
        );
        let e = reload(&Reload::Command(vec![])).unwrap_err();
        assert!(matches!(e, SentinelError::EmptyCommand));
    }

    #[test]
    fn reload_command_exit_status_and_stderr() {
        reload(&Reload::Command(vec!["true".into()])).unwrap();
        let e = reload(&Reload::Command(vec![
            "sh".into(),
            "-c".into(),
            "echo no proxy here >&2; exit 3".into(),
        ]))
        .unwrap_err()
        .to_string();
        assert!(e.contains("exit status: 3"), "{e}");
        assert!(e.ends_with(": no proxy here"), "{e}");
        let e = reload(&Reload::Command(vec!["/nonexistent/reload".into()]))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("cannot run `/nonexistent/reload`: "), "{e}");
    }

    #[test]
    fn reload_command_is_killed_after_its_timeout() {
        let e =
            run_command(&["sleep".into(), "30".into()], Duration::from_millis(100)).unwrap_err();
        assert!(matches!(e, SentinelError::Timeout { .. }), "{e}");
    }
}
