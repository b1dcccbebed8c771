//! `gitfleet serve` over HTTPS: a real `gitfleet serve` with a test
//! certificate made by openssl, reached by curl (checking the certificate
//! against it) and by `openssl s_client`; a certificate swapped on disk is
//! served without a restart. And a non-loopback listener is refused
//! without --public-read-only.

#![allow(clippy::unwrap_used)] // test helpers fail the test by panicking

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use gitfleet_tests::{bin, text, Spawned};

/// A self-signed certificate for 127.0.0.1 named `cn`, as
/// `<name>.cert.pem` and `<name>.key.pem` in `dir`.
fn certificate(dir: &Path, name: &str, cn: &str) {
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:P-256", "-nodes", "-days", "1"])
        .arg("-keyout")
        .arg(dir.join(format!("{name}.key.pem")))
        .arg("-out")
        .arg(dir.join(format!("{name}.cert.pem")))
        .args(["-subj", &format!("/CN={cn}")])
        .args(["-addext", "subjectAltName=IP:127.0.0.1"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out).1);
}

/// The subject of the certificate the server at `addr` presents.
fn presented(addr: &str) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect {addr} </dev/null 2>/dev/null | openssl x509 -noout -subject"
        ))
        .output()
        .unwrap();
    text(&out).0.trim().to_owned()
}

/// GET `url` with curl, trusting only `ca`.
fn curl(url: &str, ca: &Path) -> (bool, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(ca)
        .arg(url)
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    (out.status.success(), format!("{stdout}{stderr}"))
}

#[test]
fn serve_speaks_https_and_picks_up_a_swapped_certificate_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let origin = gitfleet_tests::example_origin(dir.path());
    certificate(dir.path(), "a", "gitfleet-a");
    certificate(dir.path(), "b", "gitfleet-b");
    std::fs::copy(dir.path().join("a.cert.pem"), dir.path().join("cert.pem")).unwrap();
    std::fs::copy(dir.path().join("a.key.pem"), dir.path().join("key.pem")).unwrap();
    let store = format!("file://{}", dir.path().join("store").display());
    let serve = Spawned::gitfleet(
        dir.path(),
        "serve",
        &[
            "serve",
            "--repo",
            &origin,
            "--store",
            &store,
            "--online-key",
            "online.key",
            "--cache",
            "mirror",
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
            "cert.pem",
            "--tls-key",
            "key.pem",
        ],
    );
    let base = serve.printed_url("serving ");
    assert!(base.starts_with("https://127.0.0.1:"), "{base}");
    let addr = base.trim_start_matches("https://").to_owned();
    let (ok, body) = curl(&format!("{base}/healthz"), &dir.path().join("a.cert.pem"));
    assert!(ok && body == "ok\n", "{body}");
    assert!(
        presented(&addr).contains("CN = gitfleet-a"),
        "{}",
        presented(&addr)
    );
    // A client that trusts another certificate is refused by its own check.
    let (ok, body) = curl(&format!("{base}/healthz"), &dir.path().join("b.cert.pem"));
    assert!(!ok, "{body}");

    // Renewal: the new pair moved into place, key first. The server may
    // see the new key with the old certificate for a moment; it keeps
    // the old pair until both match.
    for (from, to) in [("b.key.pem", "key.pem"), ("b.cert.pem", "cert.pem")] {
        let tmp = dir.path().join(format!("{to}.tmp"));
        std::fs::copy(dir.path().join(from), &tmp).unwrap();
        std::fs::rename(&tmp, dir.path().join(to)).unwrap();
    }
    let started = Instant::now();
    while !presented(&addr).contains("CN = gitfleet-b") {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "still {}:\n{}",
            presented(&addr),
            serve.output()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (ok, body) = curl(&format!("{base}/healthz"), &dir.path().join("b.cert.pem"));
    assert!(ok && body == "ok\n", "{body}");
    // The same process throughout.
    let mut serve = serve;
    let child = serve.child.as_mut().unwrap();
    assert!(child.try_wait().unwrap().is_none(), "serve exited");
    serve.stop();
}

#[test]
fn serve_refuses_a_public_listener_without_public_read_only_and_bad_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(bin("gitfleet"))
            .args(["serve", "--repo", "nowhere.git", "--online-key", "none.key"])
            .args(args)
            .current_dir(dir.path())
            .output()
            .unwrap();
        let (stdout, stderr) = text(&out);
        (out.status.code(), format!("{stdout}{stderr}"))
    };
    let (code, said) = run(&["--listen", "0.0.0.0:0"]);
    assert_ne!(code, Some(0), "{said}");
    assert!(
        said.contains("refusing to serve the status pages on 0.0.0.0:0")
            && said.contains("--public-read-only"),
        "{said}"
    );
    std::fs::write(dir.path().join("cert.pem"), "not a certificate").unwrap();
    std::fs::write(dir.path().join("key.pem"), "not a key").unwrap();
    let (code, said) = run(&["--tls-cert", "cert.pem", "--tls-key", "key.pem"]);
    assert_ne!(code, Some(0), "{said}");
    assert!(
        said.contains("loading the TLS certificate")
            && said.contains("cert.pem holds no PEM certificate"),
        "{said}"
    );
    let (code, said) = run(&["--tls-cert", "cert.pem"]);
    assert_eq!(code, Some(2), "{said}");
    assert!(said.contains("--tls-key"), "{said}");
}
