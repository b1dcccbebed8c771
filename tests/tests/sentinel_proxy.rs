#![allow(clippy::unwrap_used)]
//! The facts about the real Sentinel 0.4.14 proxy that the agent's
//! activation relies on, pinned against the real binary: the in-process
//! fingerprint equals the proxy's config dump, SIGHUP (by pid, pid file or
//! command) reloads it and traffic follows, a config the proxy refuses on
//! reload leaves the old one serving and is caught by `confirm`, `sentinel
//! test -c` checks without dialing, and listeners are not rebound by a
//! reload.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use gitfleet_agent::sentinel::{
    confirm, confirm_health, reload, test_with_binary, validate, Fingerprint, Reload, SentinelError,
};
use gitfleet_schemas::ProxyKind;
use gitfleet_tests::sentinel::{self as proxy, free_port, upstream, Sentinel};

/// The file the proxy is started with.
const CONFIG_FILE: &str = "sentinel.kdl";

const CONFIRM: Duration = Duration::from_secs(15);

/// A config with a dump route, a health route and `/app` proxied to
/// `app_upstream`; `extra_routes` go before the app route.
fn config(port: u16, ups: &Upstreams, app_upstream: &str, extra_routes: &str) -> String {
    format!(
        r#"schema-version "1.0"
system {{
    worker-threads 1
}}
listeners {{
    listener "http" {{
        address "127.0.0.1:{port}"
        protocol "http"
    }}
}}
routes {{
    route "config" {{
        priority "high"
        matches {{
            path "/-/config"
        }}
        builtin-handler "config"
    }}
    route "health" {{
        priority "high"
        matches {{
            path "/-/health"
        }}
        builtin-handler "health"
    }}
{extra_routes}
    route "app" {{
        matches {{
            path-prefix "/app"
        }}
        upstream "{app_upstream}"
    }}
}}
upstreams {{
    upstream "one" {{
        target "127.0.0.1:{one}"
    }}
    upstream "two" {{
        target "127.0.0.1:{two}"
    }}
}}
"#,
        one = ups.one,
        two = ups.two,
    )
}

/// Two loopback upstreams answering `one` and `two`.
struct Upstreams {
    one: u16,
    two: u16,
}

fn upstreams() -> Upstreams {
    Upstreams {
        one: upstream("one"),
        two: upstream("two"),
    }
}

/// What the agent does: a fresh staging directory with the config in it.
fn stage(root: &Path, name: &str, text: &str) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(CONFIG_FILE), text).unwrap();
    dir
}

/// Write `staged`'s config to the path the proxy was started with: temp
/// file + rename, as the agent does.
fn activate(staged: &Path, live: &Path) {
    let tmp = live.with_extension("kdl.tmp");
    std::fs::copy(staged.join(CONFIG_FILE), &tmp).unwrap();
    std::fs::rename(&tmp, live).unwrap();
}

/// Poll `/app` through the proxy until it answers `want`. Routes are
/// rebuilt by a task that runs just after the config dump changes.
fn wait_for_app(proxy: &Sentinel, want: &str) {
    let start = Instant::now();
    loop {
        let (status, body) = proxy.get("/app");
        if status == 200 && body == want {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "/app still answers {status} {body:?}, want {want:?}; log:\n{}",
            proxy.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A running proxy on the `one` config, its live config path and the
/// fingerprint of what it runs.
fn running(root: &Path, ups: &Upstreams) -> (Sentinel, PathBuf, Fingerprint) {
    let port = free_port();
    let live_dir = stage(root, "live", &config(port, ups, "one", ""));
    let live = live_dir.join(CONFIG_FILE);
    let proxy = Sentinel::start(&live, port);
    let fingerprint = validate(&live_dir, ProxyKind::Sentinel).unwrap();
    wait_for_app(&proxy, "one");
    (proxy, live, fingerprint)
}

#[tokio::test]
async fn validate_fingerprint_is_what_the_proxy_dumps_and_sighup_switches_the_route() {
    let root = tempfile::tempdir().unwrap();
    let ups = upstreams();
    let (proxy, live, v1) = running(root.path(), &ups);
    let dump = proxy.url("/-/config");

    // The in-process fingerprint of the running config is exactly the dump.
    confirm(&dump, &v1, CONFIRM).await.unwrap();
    confirm_health(&proxy.url("/-/health"), CONFIRM)
        .await
        .unwrap();

    // Stage, check with the real binary, swap, SIGHUP, confirm.
    let staged = stage(
        root.path(),
        "staging-2",
        &config(proxy.port(), &ups, "two", ""),
    );
    let v2 = validate(&staged, ProxyKind::Sentinel).unwrap();
    assert_eq!(
        v1.diff(&v2).unwrap(),
        r#"routes["app"].upstream: expected "one", proxy has "two""#
    );
    test_with_binary(&proxy::binary(), &staged.join(CONFIG_FILE))
        .await
        .unwrap();
    activate(&staged, &live);
    reload(&Reload::Pid(proxy.pid())).unwrap();
    confirm(&dump, &v2, CONFIRM).await.unwrap();
    wait_for_app(&proxy, "two");
    assert_eq!(v2.restart_needed(&v1), None);
}

#[tokio::test]
async fn a_config_refused_on_reload_keeps_the_old_one_and_fails_confirm() {
    // A real divergence: a relative static-files root resolves against the
    // working directory of whoever checks it. Cargo runs this test in
    // tests/, where `src` exists; the proxy runs in an empty directory.
    assert!(
        Path::new("src").is_dir(),
        "this test expects to run in tests/ (cargo sets the package root as cwd)"
    );
    let root = tempfile::tempdir().unwrap();
    let ups = upstreams();
    let port = free_port();
    let live_dir = stage(root.path(), "live", &config(port, &ups, "one", ""));
    let live = live_dir.join(CONFIG_FILE);
    let proxy_cwd = root.path().join("proxy-cwd");
    std::fs::create_dir(&proxy_cwd).unwrap();
    let proxy = Sentinel::start_in(&live, port, &proxy_cwd);
    let v1 = validate(&live_dir, ProxyKind::Sentinel).unwrap();
    let dump = proxy.url("/-/config");
    confirm(&dump, &v1, CONFIRM).await.unwrap();

    let files = r#"    route "files" {
        priority "high"
        matches {
            path-prefix "/files/"
        }
        service-type "static"
        static-files {
            root "src"
        }
    }"#;
    let previous = stage(root.path(), "previous", &config(port, &ups, "one", ""));
    let staged = stage(root.path(), "staging-2", &config(port, &ups, "two", files));
    // Both the in-process check and `sentinel test` (run from here) accept it.
    let v2 = validate(&staged, ProxyKind::Sentinel).unwrap();
    test_with_binary(&proxy::binary(), &staged.join(CONFIG_FILE))
        .await
        .unwrap();

    activate(&staged, &live);
    reload(&Reload::Pid(proxy.pid())).unwrap();
    let err = confirm(&dump, &v2, Duration::from_secs(3))
        .await
        .unwrap_err();
    assert!(matches!(err, SentinelError::Mismatch { .. }), "{err}");
    let message = err.to_string();
    assert!(
        message.starts_with(&format!(
            "proxy at {dump} still serves another config after "
        )),
        "{message}"
    );
    assert!(
        message.ends_with(r#": routes: proxy has no "files""#),
        "{message}"
    );

    // Sentinel logged the refusal and kept serving the old config.
    let log = proxy.log();
    assert!(log.contains("new configuration REJECTED"), "{log}");
    assert!(
        log.contains("static files root directory 'src' does not exist"),
        "{log}"
    );
    confirm(&dump, &v1, CONFIRM).await.unwrap();
    assert_eq!(proxy.get("/app"), (200, "one".to_owned()));

    // The agent's way back: the previous file, another reload, confirmed.
    activate(&previous, &live);
    reload(&Reload::Pid(proxy.pid())).unwrap();
    confirm(&dump, &v1, CONFIRM).await.unwrap();
    assert_eq!(proxy.log().matches("new configuration REJECTED").count(), 1);
}

#[tokio::test]
async fn reload_by_pid_file_and_by_command() {
    // One proxy per method: a 0.4.14 process follows only its first reload
    // (see `only_the_first_reload_of_a_process_reroutes_traffic`).
    let root = tempfile::tempdir().unwrap();
    let ups = upstreams();

    // Pid file, as a service manager writes it.
    let (proxy, live, _) = running(&root.path().join("pidfile"), &ups);
    let pid_file = root.path().join("sentinel.pid");
    std::fs::write(&pid_file, format!("{}\n", proxy.pid())).unwrap();
    let staged = stage(
        root.path(),
        "staging-pidfile",
        &config(proxy.port(), &ups, "two", ""),
    );
    let v2 = validate(&staged, ProxyKind::Sentinel).unwrap();
    activate(&staged, &live);
    reload(&Reload::PidFile(pid_file)).unwrap();
    confirm(&proxy.url("/-/config"), &v2, CONFIRM)
        .await
        .unwrap();
    wait_for_app(&proxy, "two");
    drop(proxy);

    // A configured command (here `kill -HUP`; on a node `systemctl ...`).
    let (proxy, live, _) = running(&root.path().join("command"), &ups);
    let staged = stage(
        root.path(),
        "staging-command",
        &config(proxy.port(), &ups, "two", ""),
    );
    let v2 = validate(&staged, ProxyKind::Sentinel).unwrap();
    activate(&staged, &live);
    reload(&Reload::Command(vec![
        "sh".into(),
        "-c".into(),
        format!("kill -HUP {}", proxy.pid()),
    ]))
    .unwrap();
    confirm(&proxy.url("/-/config"), &v2, CONFIRM)
        .await
        .unwrap();
    wait_for_app(&proxy, "two");

    // A failing command is an error with its stderr.
    let err = reload(&Reload::Command(vec![
        "sh".into(),
        "-c".into(),
        "echo unit sentinel.service not loaded >&2; exit 5".into(),
    ]))
    .unwrap_err()
    .to_string();
    assert!(err.contains("exit status: 5"), "{err}");
    assert!(err.ends_with("unit sentinel.service not loaded"), "{err}");
}

/// Wait `for_` and check that `/app` kept answering `want` all along.
fn app_stays(proxy: &Sentinel, want: &str, for_: Duration) {
    let start = Instant::now();
    while start.elapsed() < for_ {
        assert_eq!(proxy.get("/app"), (200, want.to_owned()), "{}", proxy.log());
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test]
async fn only_the_first_reload_of_a_process_reroutes_traffic() {
    // sentinel-proxy 0.4.14, src/proxy/mod.rs `setup_reload_handler`: the
    // task that rebuilds routes after an accepted reload holds the scoped
    // route table's write guard (an `if let` temporary, edition 2021) while
    // it awaits a read guard, and hangs there for good after swapping the
    // global routes once. The dump keeps following reloads; traffic does
    // not. When this test fails, Sentinel got fixed: revisit the agent's
    // advice to restart rather than SIGHUP.
    let root = tempfile::tempdir().unwrap();
    let ups = upstreams();
    let (proxy, live, v1) = running(root.path(), &ups);
    let dump = proxy.url("/-/config");

    let second = stage(
        root.path(),
        "staging-2",
        &config(proxy.port(), &ups, "two", ""),
    );
    let v2 = validate(&second, ProxyKind::Sentinel).unwrap();
    activate(&second, &live);
    reload(&Reload::Pid(proxy.pid())).unwrap();
    confirm(&dump, &v2, CONFIRM).await.unwrap();
    wait_for_app(&proxy, "two");

    let third = stage(
        root.path(),
        "staging-3",
        &config(proxy.port(), &ups, "one", ""),
    );
    let v3 = validate(&third, ProxyKind::Sentinel).unwrap();
    assert_eq!(v3, v1);
    activate(&third, &live);
    reload(&Reload::Pid(proxy.pid())).unwrap();
    confirm(&dump, &v3, CONFIRM).await.unwrap();
    app_stays(&proxy, "two", Duration::from_secs(2));
    let log = proxy.log();
    assert_eq!(
        log.matches("Configuration reload completed successfully")
            .count(),
        2,
        "{log}"
    );
    assert_eq!(
        log.matches("Global routes reloaded successfully").count(),
        1,
        "{log}"
    );
    assert_eq!(log.matches("Scoped routes reloaded").count(), 0, "{log}");
}

#[tokio::test]
async fn a_reload_builds_no_pool_for_a_new_upstream() {
    // Same cause: the upstream pools are rebuilt after the scoped routes,
    // which the reload task never gets past. A route moved to a new
    // upstream has no pool to send to.
    let root = tempfile::tempdir().unwrap();
    let ups = upstreams();
    let (proxy, live, v1) = running(root.path(), &ups);
    let three = upstream("three");
    let text = config(proxy.port(), &ups, "three", "").replace(
        "upstreams {\n",
        &format!("upstreams {{\n    upstream \"three\" {{\n        target \"127.0.0.1:{three}\"\n    }}\n"),
    );
    let staged = stage(root.path(), "staging-2", &text);
    let v2 = validate(&staged, ProxyKind::Sentinel).unwrap();
    assert_eq!(
        v2.restart_needed(&v1).unwrap(),
        r#"upstreams change: upstreams: proxy has no "three""#
    );
    activate(&staged, &live);
    reload(&Reload::Pid(proxy.pid())).unwrap();
    confirm(&proxy.url("/-/config"), &v2, CONFIRM)
        .await
        .unwrap();
    // The route moved (no more "one"), but nothing reaches "three".
    let start = Instant::now();
    let (status, body) = loop {
        let (status, body) = proxy.get("/app");
        if body != "one" || start.elapsed() > Duration::from_secs(5) {
            break (status, body);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_ne!(body, "one", "the route never moved; log:\n{}", proxy.log());
    assert_ne!((status, body.as_str()), (200, "three"), "{}", proxy.log());
    assert!(status >= 500, "{status} {body}");
}

#[tokio::test]
async fn sentinel_test_checks_without_dialing_and_reports_stderr() {
    let root = tempfile::tempdir().unwrap();
    let binary = proxy::binary();
    // Targets nobody answers (TEST-NET-1): `sentinel validate` would dial
    // them, `sentinel test` must not.
    let ups = Upstreams { one: 9, two: 9 };
    let text = config(free_port(), &ups, "one", "").replace("127.0.0.1:9", "192.0.2.1:9");
    let good = stage(root.path(), "good", &text);
    let start = Instant::now();
    test_with_binary(&binary, &good.join(CONFIG_FILE))
        .await
        .unwrap();
    assert!(start.elapsed() < Duration::from_secs(10));

    let bad = stage(
        root.path(),
        "bad",
        &text.replace("        upstream \"one\"\n", "        upstream \"nope\"\n"),
    );
    // Both checks refuse it, for the same reason.
    let in_process = validate(&bad, ProxyKind::Sentinel).unwrap_err().to_string();
    assert!(in_process.contains("nope"), "{in_process}");
    let err = test_with_binary(&binary, &bad.join(CONFIG_FILE))
        .await
        .unwrap_err();
    assert!(matches!(err, SentinelError::Failed { .. }), "{err}");
    let message = err.to_string();
    assert!(message.contains(" test -c "), "{message}");
    assert!(message.contains("exit status: 1"), "{message}");
    assert!(
        message.contains("Configuration validation failed"),
        "{message}"
    );
    assert!(message.contains("'nope'"), "{message}");
    assert!(!message.contains("Stack backtrace"), "{message}");
}

#[tokio::test]
async fn a_real_fleet_config_dumps_as_validate_predicts() {
    // The example api-gateway config (filters, health checks, load
    // balancing, HTTP versions, four upstreams in a hash map), moved to
    // loopback and given a dump route.
    let root = tempfile::tempdir().unwrap();
    let example = gitfleet_tests::workspace().join("examples/fleet-repo/configs/api-gateway");
    let text = std::fs::read_to_string(example.join(CONFIG_FILE)).unwrap();
    let port = free_port();
    let closed = free_port();
    let mut lines: Vec<String> = Vec::new();
    for line in text.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("address \"10.") {
            lines.push(format!("        address \"127.0.0.1:{port}\""));
        } else if trimmed.starts_with("target \"10.") {
            lines.push(format!("        target \"127.0.0.1:{closed}\""));
        } else if trimmed.starts_with("worker-threads") {
            lines.push("    worker-threads 1".to_owned());
        } else {
            lines.push(line.to_owned());
        }
        if trimmed == "routes {" {
            lines.push(
                "    route \"dump\" {\n        priority \"high\"\n        matches {\n            path \"/-/config\"\n        }\n        builtin-handler \"config\"\n    }"
                    .to_owned(),
            );
        }
    }
    let dir = stage(root.path(), "live", &(lines.join("\n") + "\n"));
    let expected = validate(&dir, ProxyKind::Sentinel).unwrap();
    assert_eq!(expected.as_json()["upstreams"].as_array().unwrap().len(), 4);
    assert_eq!(expected.as_json()["filters"].as_array().unwrap().len(), 3);
    let proxy = Sentinel::start(&dir.join(CONFIG_FILE), port);
    confirm(&proxy.url("/-/config"), &expected, CONFIRM)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_reload_does_not_rebind_listeners() {
    let root = tempfile::tempdir().unwrap();
    let ups = upstreams();
    let (mut proxy, live, v1) = running(root.path(), &ups);
    let new_port = free_port();
    let staged = stage(root.path(), "staging-2", &config(new_port, &ups, "one", ""));
    let v2 = validate(&staged, ProxyKind::Sentinel).unwrap();
    assert_eq!(
        v2.restart_needed(&v1).unwrap(),
        format!(
            r#"listeners change: listeners["http"].address: expected "127.0.0.1:{new_port}", proxy has "127.0.0.1:{}""#,
            proxy.port()
        )
    );
    activate(&staged, &live);
    reload(&Reload::Pid(proxy.pid())).unwrap();
    // The reload is accepted and the dump, still served on the old port,
    // shows the new address; nothing listens on it.
    confirm(&proxy.url("/-/config"), &v2, CONFIRM)
        .await
        .unwrap();
    assert!(proxy::try_get(new_port, "/-/config").is_err());
    assert_eq!(proxy.get("/app"), (200, "one".to_owned()));
    assert!(proxy.is_running());
}
