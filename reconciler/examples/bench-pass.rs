//! What reading the fleet's status reports costs a pass when nothing
//! changed, against a store as slow as S3 (issue 23's "Done when"): at
//! most ceil(N / 1000) list requests plus the reports that changed, and
//! under 2 s with 20 ms a request.
//!
//! ```sh
//! cargo run --release -p gitfleet-reconciler --example bench-pass -- [--nodes 10000,100000] [--latency 20ms] [--changed 10]
//! ```
//!
//! For each fleet size: N signed status reports (each node its own key)
//! are written to an in-memory store; a `StatusReader` (the code a pass
//! and `gitfleet status` read reports with) reads them once with no
//! latency (the cold read: every report fetched and verified). Then every
//! request is delayed (`Store::with_latency`: per request, and per 1,000
//! keys of a listing, as S3 pages them) and it reads again with nothing
//! changed, then with `--changed` reports rewritten. Baseline, in the same
//! run: one plain listing of `status/` over the same slow store, page
//! after page (what a pass did before its listing was split).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::Utc;
use gitfleet_agent::sim::sim_key;
use gitfleet_io::store::Store;
use gitfleet_reconciler::pass::observe::StatusReader;
use gitfleet_schemas::keys;
use gitfleet_schemas::status::StatusReport;
use gitfleet_schemas::trust::{Document as _, PublicKey};

const USAGE: &str = "usage: bench-pass [--nodes N[,N...]] [--latency 20ms] [--changed N]";

struct Args {
    nodes: Vec<usize>,
    latency: Duration,
    changed: usize,
}

fn args() -> Result<Args, String> {
    let mut out = Args {
        nodes: vec![10_000, 100_000],
        latency: Duration::from_millis(20),
        changed: 10,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().ok_or(format!("{a} needs a value\n{USAGE}"));
        match a.as_str() {
            "--nodes" => {
                out.nodes = value()?
                    .split(',')
                    .map(|n| n.parse().map_err(|e| format!("--nodes {n}: {e}")))
                    .collect::<Result<_, _>>()?;
            }
            "--latency" => {
                let v = value()?;
                out.latency =
                    humantime::parse_duration(&v).map_err(|e| format!("--latency {v}: {e}"))?;
            }
            "--changed" => {
                let v = value()?;
                out.changed = v.parse().map_err(|e| format!("--changed {v}: {e}"))?;
            }
            "-h" | "--help" => return Err(USAGE.to_owned()),
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    Ok(out)
}

fn report(node: &str, note: &str) -> Vec<u8> {
    let report = StatusReport {
        fleet: "bench".into(),
        node: node.into(),
        environment: "prod".into(),
        at: Utc::now(),
        channel_serial: Some(1),
        channel_expires: None,
        rollouts: Default::default(),
        healthy: true,
        metrics: Default::default(),
        http_checks: Vec::new(),
        routes: Vec::new(),
        wireguard: None,
        monitored: Vec::new(),
        drift: Vec::new(),
        last_error: Some(note.into()),
        proxy: None,
    };
    let mut envelope = report.envelope();
    envelope.sign(&sim_key(node)).expect("signing a report");
    envelope.to_json()
}

async fn run(n: usize, latency: Duration, changed: usize) -> Result<bool, String> {
    let store = Store::open("memory://").map_err(|e| e.to_string())?;
    let nodes: Vec<String> = (0..n).map(|i| format!("edge-{i:06}")).collect();
    let started = Instant::now();
    let mut node_keys = HashMap::new();
    for node in &nodes {
        store
            .put(&keys::status(node), Bytes::from(report(node, "first")))
            .await
            .map_err(|e| e.to_string())?;
        node_keys.insert(
            node.clone(),
            PublicKey(sim_key(node).verifying_key().to_bytes()),
        );
    }
    println!(
        "\n== {n} nodes: {n} signed reports written in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let mut reader = StatusReader::new(store.clone());
    let started = Instant::now();
    let cold = reader
        .read(&node_keys, "bench")
        .await
        .map_err(|e| e.to_string())?;
    println!(
        "cold read, no latency: {} verified in {:.2} s",
        cold.verified.len(),
        started.elapsed().as_secs_f64()
    );
    if cold.verified.len() != n {
        return Err(format!("{} of {n} reports verified", cold.verified.len()));
    }

    let slow = store.with_latency(latency);
    reader.store = slow.clone();
    let lists_allowed = n.div_ceil(1000) as u64;

    // Baseline: one listing, page after page.
    let before = slow.counts();
    let started = Instant::now();
    let listed = slow
        .list_versions(keys::STATUS_PREFIX)
        .await
        .map_err(|e| e.to_string())?;
    let baseline = started.elapsed();
    let base_lists = slow.counts().since(&before).list;
    println!(
        "baseline, one listing page after page: {} keys, {base_lists} list requests, {:.3} s",
        listed.len(),
        baseline.as_secs_f64()
    );

    let mut pass = true;
    for (what, rewrite) in [("nothing changed", 0), ("some reports changed", changed)] {
        for node in nodes.iter().take(rewrite) {
            store
                .put(&keys::status(node), Bytes::from(report(node, "second")))
                .await
                .map_err(|e| e.to_string())?;
        }
        let before = slow.counts();
        let started = Instant::now();
        let read = reader
            .read(&node_keys, "bench")
            .await
            .map_err(|e| e.to_string())?;
        let took = started.elapsed();
        let cost = slow.counts().since(&before);
        let lists_ok = cost.list <= lists_allowed;
        let gets_ok = cost.get + cost.get_not_modified <= rewrite as u64;
        let time_ok = took < Duration::from_secs(2);
        let ok = lists_ok && gets_ok && time_ok && read.verified.len() == n;
        pass &= ok;
        println!(
            "{what}: {} list requests (goal <= {lists_allowed}), {} GETs (goal <= {rewrite}), {:.3} s (goal < 2 s), ratio to the baseline {:.2}: {}",
            cost.list,
            cost.get + cost.get_not_modified,
            took.as_secs_f64(),
            took.as_secs_f64() / baseline.as_secs_f64(),
            if ok { "PASS" } else { "FAIL" }
        );
    }
    Ok(pass)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> std::process::ExitCode {
    let args = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return std::process::ExitCode::from(2);
        }
    };
    println!(
        "bench-pass: reading status reports with {:?} a request ({} CPUs)",
        args.latency,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    let mut all = true;
    for n in args.nodes {
        match run(n, args.latency, args.changed).await {
            Ok(pass) => all &= pass,
            Err(e) => {
                eprintln!("bench-pass: {n} nodes: {e}");
                return std::process::ExitCode::FAILURE;
            }
        }
    }
    println!("\nresult: {}", if all { "PASS" } else { "FAIL" });
    if all {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}
