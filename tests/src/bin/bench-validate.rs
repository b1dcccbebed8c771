//! Benchmark (not a test): validating proxy configs in-process with each
//! proxy's own config crate, against spawning the proxy's own config test
//! (`sentinel test -c FILE`, `zentinel test -c FILE`) per config, in the
//! same run.
//!
//!   cargo run --release -p gitfleet-tests --bin bench-validate -- [CONFIGS]
//!
//! Writes CONFIGS (default 50) distinct configs of the size of the example
//! edge proxy (routes and upstreams numbered per config) in each proxy's
//! form, validates each in-process (`gitfleet_policy::proxy::validate`,
//! what `gitfleet check` runs) and with the proxy binary, and prints the
//! time per config and the ratio. Goal (issue 27): in-process at least 20
//! times faster. The binaries come from `$GITFLEET_SENTINEL` and
//! `$GITFLEET_ZENTINEL` or cargo's bin directory (`bash scripts/test.sh`
//! installs both).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gitfleet_io::tools::Tool;
use gitfleet_schemas::ProxyKind;

/// A config with `routes` routes, each to its own upstream, in `kind`'s
/// form (Zentinel's without its own metrics server, which would bind a
/// port while the test runs).
fn config(kind: ProxyKind, seed: usize, routes: usize) -> String {
    let mut out = String::from("schema-version \"1.0\"\nsystem {\n    worker-threads 1\n}\n");
    if kind == ProxyKind::Zentinel {
        out.push_str("observability {\n    metrics {\n        enabled #false\n    }\n}\n");
    }
    out.push_str(&format!(
        "listeners {{\n    listener \"http\" {{\n        address \"127.0.0.1:{}\"\n        protocol \"http\"\n    }}\n}}\nroutes {{\n",
        20_000 + seed % 10_000
    ));
    for r in 0..routes {
        out.push_str(&format!(
            "    route \"r{seed}-{r}\" {{\n        matches {{\n            path-prefix \"/s{seed}/r{r}\"\n        }}\n        upstream \"u{r}\"\n    }}\n"
        ));
    }
    out.push_str("}\nupstreams {\n");
    for r in 0..routes {
        out.push_str(&format!(
            "    upstream \"u{r}\" {{\n        target \"127.0.0.1:{}\"\n    }}\n",
            30_000 + r
        ));
    }
    out.push_str("}\n");
    out
}

fn spawn_test(binary: &Path, file: &Path) -> Result<(), String> {
    let out = Command::new(binary)
        .args(["test", "-c"])
        .arg(file)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", binary.display()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{} test -c {} failed: {}",
            binary.display(),
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn main() -> Result<(), String> {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(50);
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    println!("{n} configs of 12 routes and 12 upstreams each, per proxy");
    for (kind, tool) in [
        (ProxyKind::Sentinel, Tool::Sentinel),
        (ProxyKind::Zentinel, Tool::Zentinel),
    ] {
        let binary = tool.find().ok_or_else(|| {
            format!(
                "no {} binary: set ${} or run `bash scripts/test.sh`",
                kind.name(),
                tool.variable()
            )
        })?;
        let texts: Vec<String> = (0..n).map(|i| config(kind, i, 12)).collect();
        let files: Vec<_> = texts
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let path = dir.path().join(format!("{}-{i}.kdl", kind.name()));
                std::fs::write(&path, t).map(|()| path)
            })
            .collect::<Result<_, _>>()
            .map_err(|e| e.to_string())?;

        // Where the in-process time goes: parsing alone.
        let started = Instant::now();
        for t in &texts {
            gitfleet_policy::proxy::parse(kind, t)?;
        }
        let parse = started.elapsed();

        let started = Instant::now();
        for t in &texts {
            gitfleet_policy::proxy::validate(kind, t)
                .map_err(|p| format!("{} refused a generated config: {p:?}", kind.name()))?;
        }
        let in_process = started.elapsed();

        let started = Instant::now();
        for f in &files {
            spawn_test(&binary, f)?;
        }
        let spawned = started.elapsed();

        let per = |d: Duration| d.as_secs_f64() * 1000.0 / n as f64;
        println!(
            "{:<9} in-process {:>8.3} ms/config (parse {:.3})   `{} test -c` {:>8.1} ms/config   ratio {:>6.0}x",
            kind.name(),
            per(in_process),
            per(parse),
            kind.name(),
            per(spawned),
            spawned.as_secs_f64() / in_process.as_secs_f64().max(1e-9)
        );
    }
    Ok(())
}
