//! HTTP checks as a node runs them: a rollout's gate checks and the fleet's
//! health checks, each a URL on the node's loopback or a path on every
//! target of an upstream of the active config.

use std::net::IpAddr;
use std::time::Duration;

use gitfleet_schemas::rollout::MAX_HTTP_CHECK_TIMEOUT_MS;
use gitfleet_schemas::status::HttpCheckResult;
use gitfleet_schemas::trust::ChannelCheck;

/// How long a check waits when it does not say.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
/// The most of a body a check reads to match it.
const MAX_BODY: usize = 64 * 1024;

/// Where a check goes: its own URL, or its path on each of its upstream's
/// targets (`host:port`, as the active config names them).
pub fn urls(check: &ChannelCheck, targets: Option<&[String]>) -> Result<Vec<String>, String> {
    let Some(upstream) = &check.upstream else {
        return Ok(vec![check.url.clone()]);
    };
    let targets =
        targets.ok_or_else(|| format!("the active config has no upstream `{upstream}`"))?;
    if targets.is_empty() {
        return Err(format!("upstream `{upstream}` has no targets"));
    }
    // A path, and it must leave the target's host and port alone.
    if !check.url.starts_with('/') {
        return Err(format!("`{}` is not a path", check.url));
    }
    targets
        .iter()
        .map(|t| {
            let url = format!("http://{t}{}", check.url);
            let parsed = reqwest::Url::parse(&url).map_err(|e| format!("{url}: {e}"))?;
            let target = reqwest::Url::parse(&format!("http://{t}/"))
                .map_err(|e| format!("upstream target `{t}`: {e}"))?;
            let same = parsed.host() == target.host()
                && parsed.port_or_known_default() == target.port_or_known_default()
                && parsed.username().is_empty()
                && parsed.password().is_none();
            if same {
                Ok(url)
            } else {
                Err(format!("{url} is not on upstream target `{t}`"))
            }
        })
        .collect()
}

/// The result of `check` for one URL it requests. Only plain http is
/// dialled, and only loopback unless the URL is a target of the check's
/// upstream (named by the signed config).
pub async fn run(check: &ChannelCheck, url: &str) -> HttpCheckResult {
    let answer = request(check, url).await;
    result(
        check,
        url,
        answer
            .as_ref()
            .map(|(s, b)| (*s, b.as_slice()))
            .map_err(String::clone),
    )
}

/// The result of `check` on `url` given its answer (status and body) or
/// why there was none. `detail` says why a check other than the plain kind
/// failed, except for a status the report shows anyway; a plain check's
/// result is written as older reconcilers read it.
pub fn result(
    check: &ChannelCheck,
    url: &str,
    answer: Result<(u16, &[u8]), String>,
) -> HttpCheckResult {
    let (status, why) = match answer {
        Ok((status, body)) => (
            Some(status),
            judge(check, status, body)
                .err()
                .filter(|_| check.accepts(status)),
        ),
        Err(why) => (None, Some(why)),
    };
    let ok = status.is_some_and(|s| check.accepts(s)) && why.is_none();
    let plain = check.is_plain();
    if let Some(why) = why.as_deref().filter(|_| plain) {
        tracing::debug!(url, reason = why, "http check failed");
    }
    HttpCheckResult {
        url: url.to_owned(),
        status,
        ok,
        check: (!plain).then(|| check.key()),
        detail: why.filter(|_| !plain),
    }
}

/// Whether an answer passes `check`, or why not.
pub fn judge(check: &ChannelCheck, status: u16, body: &[u8]) -> Result<(), String> {
    if !check.accepts(status) {
        return Err(format!("answered {status}"));
    }
    let text = String::from_utf8_lossy(body);
    if let Some(want) = &check.body_contains {
        if !text.contains(want.as_str()) {
            return Err(format!("body lacks {want:?}"));
        }
    }
    if let Some(pattern) = &check.body_matches {
        let re = regex::Regex::new(pattern)
            .map_err(|e| format!("body-matches {pattern:?} is not a regular expression: {e}"))?;
        if !re.is_match(&text) {
            return Err(format!("body does not match {pattern:?}"));
        }
    }
    Ok(())
}

fn timeout(check: &ChannelCheck) -> Duration {
    check.timeout_ms.map_or(DEFAULT_TIMEOUT, |ms| {
        Duration::from_millis(ms.clamp(1, MAX_HTTP_CHECK_TIMEOUT_MS))
    })
}

/// Whether `url` names this machine: `localhost` or a loopback address.
pub fn is_loopback(url: &reqwest::Url) -> bool {
    let host = url.host_str().unwrap_or_default();
    host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

async fn request(check: &ChannelCheck, url: &str) -> Result<(u16, Vec<u8>), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
    if parsed.scheme() != "http" {
        return Err("only plain http is checked".to_owned());
    }
    if check.upstream.is_none() && !is_loopback(&parsed) {
        return Err("a check without `upstream` only dials loopback".to_owned());
    }
    let method = check.method.as_deref().unwrap_or("GET");
    let method = reqwest::Method::from_bytes(method.as_bytes())
        .map_err(|_| format!("`{method}` is not an HTTP method"))?;
    let client = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| gitfleet_io::error_chain(&e))?;
    let wait = timeout(check);
    let work = async {
        let mut response = client
            .request(method, parsed)
            .send()
            .await
            .map_err(|e| gitfleet_io::error_chain(&e))?;
        let status = response.status().as_u16();
        let mut body = Vec::new();
        while body.len() < MAX_BODY {
            match response.chunk().await {
                Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                Ok(None) => break,
                Err(e) => return Err(gitfleet_io::error_chain(&e)),
            }
        }
        body.truncate(MAX_BODY);
        Ok((status, body))
    };
    tokio::time::timeout(wait, work)
        .await
        .map_err(|_| format!("no answer within {}ms", wait.as_millis()))?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check() -> ChannelCheck {
        ChannelCheck {
            url: "/healthz".into(),
            expect_status: 200,
            also_status: vec![204],
            body_contains: Some("ok".into()),
            body_matches: Some("^ok( |$)".into()),
            upstream: Some("api".into()),
            ..ChannelCheck::default()
        }
    }

    #[test]
    fn an_upstream_check_requests_its_path_on_every_target() {
        let targets = ["10.0.0.1:8080".to_owned(), "[::1]:9000".to_owned()];
        assert_eq!(
            urls(&check(), Some(&targets)).unwrap(),
            ["http://10.0.0.1:8080/healthz", "http://[::1]:9000/healthz"]
        );
        assert!(urls(&check(), None)
            .unwrap_err()
            .contains("no upstream `api`"));
    }

    #[test]
    fn an_upstream_path_cannot_leave_its_target() {
        let targets = ["10.0.0.1:80".to_owned()];
        let mut c = check();
        c.url = "@169.254.169.254/latest".into();
        assert!(urls(&c, Some(&targets)).unwrap_err().contains("not a path"));
        c.url = "/ok?x=@169.254.169.254".into();
        assert_eq!(
            urls(&c, Some(&targets)).unwrap(),
            ["http://10.0.0.1:80/ok?x=@169.254.169.254"]
        );
    }

    #[test]
    fn a_plain_checks_result_carries_no_field_older_reconcilers_refuse() {
        let plain = ChannelCheck {
            url: "http://127.0.0.1:9/health".into(),
            expect_status: 200,
            ..ChannelCheck::default()
        };
        let r = result(&plain, &plain.url, Err("connection refused".into()));
        assert_eq!((r.check, r.detail, r.ok), (None, None, false));
    }

    #[test]
    fn an_answer_passes_on_an_accepted_status_and_a_matching_body() {
        let c = check();
        assert_eq!(judge(&c, 200, b"ok fine"), Ok(()));
        assert_eq!(judge(&c, 204, b"ok"), Ok(()));
        assert_eq!(judge(&c, 503, b"ok"), Err("answered 503".into()));
        assert_eq!(judge(&c, 200, b"bad"), Err("body lacks \"ok\"".into()));
        assert!(judge(&c, 200, b"not ok")
            .unwrap_err()
            .contains("does not match"));
    }

    #[test]
    fn timeouts_are_capped_at_thirty_seconds() {
        let mut c = check();
        assert_eq!(timeout(&c), DEFAULT_TIMEOUT);
        c.timeout_ms = Some(600_000);
        assert_eq!(timeout(&c), Duration::from_secs(30));
    }

    /// A one-request HTTP server on loopback: answers `status` and `body`
    /// (or nothing at all), and hands back the request line it got.
    async fn serve_once(
        answer: Option<(u16, &'static str)>,
    ) -> (String, tokio::task::JoinHandle<String>) {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let n = conn.read(&mut buf).await.unwrap();
            let request = String::from_utf8_lossy(&buf[..n])
                .lines()
                .next()
                .unwrap_or_default()
                .to_owned();
            match answer {
                Some((status, body)) => {
                    let reply = format!(
                        "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    conn.write_all(reply.as_bytes()).await.unwrap();
                }
                None => tokio::time::sleep(Duration::from_secs(5)).await,
            }
            request
        });
        (addr.to_string(), task)
    }

    #[tokio::test]
    async fn a_check_sends_its_method_and_judges_the_real_answer() {
        let (addr, server) = serve_once(Some((200, "ok fine"))).await;
        let mut c = check();
        c.method = Some("POST".into());
        let url = urls(&c, Some(&[addr])).unwrap().remove(0);
        let r = run(&c, &url).await;
        assert_eq!(
            (r.status, r.ok, r.detail.as_deref()),
            (Some(200), true, None)
        );
        assert_eq!(r.check.as_deref(), Some(c.key().as_str()));
        assert_eq!(server.await.unwrap(), "POST /healthz HTTP/1.1");

        let (addr, _server) = serve_once(Some((200, "degraded"))).await;
        let url = urls(&c, Some(&[addr])).unwrap().remove(0);
        let r = run(&c, &url).await;
        assert_eq!((r.status, r.ok), (Some(200), false));
        assert_eq!(r.detail.as_deref(), Some("body lacks \"ok\""));
    }

    #[tokio::test]
    async fn a_silent_server_fails_the_check_at_its_timeout() {
        let (addr, _server) = serve_once(None).await;
        let mut c = check();
        c.timeout_ms = Some(200);
        let url = urls(&c, Some(&[addr])).unwrap().remove(0);
        let r = run(&c, &url).await;
        assert_eq!((r.status, r.ok), (None, false));
        assert_eq!(r.detail.as_deref(), Some("no answer within 200ms"));
    }

    #[tokio::test]
    async fn a_url_check_never_dials_beyond_loopback() {
        let plain = ChannelCheck {
            url: "http://192.0.2.1/health".into(),
            expect_status: 200,
            ..ChannelCheck::default()
        };
        let r = run(&plain, &plain.url).await;
        assert_eq!((r.status, r.ok), (None, false));
        // A check of more than the plain kind says why.
        let c = ChannelCheck {
            method: Some("HEAD".into()),
            ..plain
        };
        let r = run(&c, &c.url).await;
        assert_eq!((r.status, r.ok), (None, false));
        assert!(r.detail.unwrap().contains("only dials loopback"));
    }
}
