//! `gen-fleet`: write a large, valid fleet repo for benchmarks.
//!
//! ```text
//! gen-fleet --nodes 10000 --configs 200 --out DIR [--seed N]
//! ```
//!
//! The repo has the shape of `examples/fleet-repo`, scaled up:
//!
//! - `fleet.kdl` with three generated root keys and the example's lint rules
//!   (`listener-tls` applies to every config that reaches prod, since there is
//!   no `edge` config here);
//! - `environments.kdl`: dev → staging → prod, as in the example;
//! - `nodes/<id>.kdl`: nodes spread over 4 regions, 2 roles and the three
//!   environments, each with a unique ed25519 node key derived from the seed
//!   and the node's index; edge nodes also carry a unique WireGuard key;
//! - `configs/svc-NNN/sentinel.kdl`: Sentinel configs of 5 to 20 KiB modelled
//!   on the example's api-gateway (4 to 21 proxied routes with upstreams, each
//!   route referencing a timeout filter, a TLS listener and a loopback admin
//!   listener);
//! - `rollouts/svc-NNN.kdl`: one rollout per config selecting `svc="svc-NNN"`;
//!   every node carries exactly one `svc` label, so the selectors are
//!   disjoint;
//! - `meshes/backbone.kdl` over the edge nodes in a /16, and its rollout.
//!
//! Output is deterministic for a given seed. `gitfleet check DIR` reports it
//! ok with no diagnostics.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use base64::Engine as _;
use ed25519_dalek::SigningKey;

const USAGE: &str = "usage: gen-fleet --nodes N --configs N --out DIR [--seed N]";

const REGIONS: &[&str] = &["fra", "iad", "sin", "gru"];
const ROLES: &[&str] = &["edge", "api"];

#[derive(Debug)]
struct Args {
    nodes: usize,
    configs: usize,
    out: PathBuf,
    seed: u64,
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("gen-fleet: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match generate(&args) {
        Ok(stats) => {
            println!(
                "gen-fleet: wrote {} ({} nodes, {} configs, {} files, {} bytes)",
                args.out.display(),
                args.nodes,
                args.configs,
                stats.files,
                stats.bytes
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("gen-fleet: {e}");
            ExitCode::FAILURE
        }
    }
}

fn parse_args(mut it: impl Iterator<Item = String>) -> Result<Args, String> {
    let (mut nodes, mut configs, mut out, mut seed) = (None, None, None, 0u64);
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            return Err("help".to_owned());
        }
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = |v: &str| {
            v.replace('_', "")
                .parse::<u64>()
                .map_err(|_| format!("{flag}: `{v}` is not a number"))
        };
        match flag.as_str() {
            "--nodes" => nodes = Some(number(&value)? as usize),
            "--configs" => configs = Some(number(&value)? as usize),
            "--seed" => seed = number(&value)?,
            "--out" => out = Some(PathBuf::from(value)),
            _ => return Err(format!("unknown argument `{flag}`")),
        }
    }
    let nodes = nodes.ok_or("--nodes is required")?;
    let configs = configs.ok_or("--configs is required")?;
    let out = out.ok_or("--out is required")?;
    if configs == 0 {
        return Err("--configs must be at least 1".to_owned());
    }
    if nodes < configs {
        return Err("--nodes must be at least --configs (every rollout selects a node)".to_owned());
    }
    // One /16 mesh over the edge nodes: at most 65534 members.
    if nodes.div_ceil(ROLES.len()) > 65_534 {
        return Err("--nodes is too large for the /16 mesh".to_owned());
    }
    Ok(Args {
        nodes,
        configs,
        out,
        seed,
    })
}

#[derive(Debug, Default)]
struct Stats {
    files: usize,
    bytes: usize,
}

struct Writer<'a> {
    root: &'a Path,
    stats: Stats,
}

impl Writer<'_> {
    fn write(&mut self, rel: &str, text: &str) -> Result<(), String> {
        let path = self.root.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| format!("creating {}: {e}", parent.display()))?;
        }
        std::fs::write(&path, text).map_err(|e| format!("writing {}: {e}", path.display()))?;
        self.stats.files += 1;
        self.stats.bytes += text.len();
        Ok(())
    }
}

fn generate(args: &Args) -> Result<Stats, String> {
    if args.out.exists() {
        let mut entries = std::fs::read_dir(&args.out)
            .map_err(|e| format!("reading {}: {e}", args.out.display()))?;
        if entries.next().is_some() {
            return Err(format!(
                "{} exists and is not empty; give a new or empty directory",
                args.out.display()
            ));
        }
    }
    let mut w = Writer {
        root: &args.out,
        stats: Stats::default(),
    };
    let width = digits(args.configs - 1).max(3);
    let svc = |c: usize| format!("svc-{c:0width$}");

    w.write("fleet.kdl", &fleet_kdl(args.seed))?;
    w.write("environments.kdl", ENVIRONMENTS)?;

    let node_width = digits(args.nodes - 1).max(4);
    for i in 0..args.nodes {
        let (text, id) = node_kdl(args.seed, i, node_width, &svc(i % args.configs));
        w.write(&format!("nodes/{id}.kdl"), &text)?;
    }
    for c in 0..args.configs {
        let name = svc(c);
        w.write(
            &format!("configs/{name}/sentinel.kdl"),
            &sentinel_kdl(c, &name),
        )?;
        w.write(&format!("rollouts/{name}.kdl"), &rollout_kdl(c, &name))?;
    }
    w.write("meshes/backbone.kdl", MESH)?;
    w.write("rollouts/backbone.kdl", MESH_ROLLOUT)?;
    Ok(w.stats)
}

fn digits(mut n: usize) -> usize {
    let mut d = 1;
    while n >= 10 {
        n /= 10;
        d += 1;
    }
    d
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A 32-byte secret from the seed, a domain tag and a counter: no hashing,
/// no randomness, distinct for distinct (tag, index).
fn secret(seed: u64, tag: u8, index: u64) -> [u8; 32] {
    let mut s = [0u8; 32];
    s[..8].copy_from_slice(&seed.to_le_bytes());
    s[8] = tag;
    s[9..17].copy_from_slice(&index.to_le_bytes());
    // Fill the rest so the secret is not mostly zeros.
    for (k, b) in s[17..].iter_mut().enumerate() {
        *b = (k as u8).wrapping_mul(37).wrapping_add(tag) ^ 0x5a;
    }
    s
}

fn ed25519_public(seed: u64, tag: u8, index: u64) -> String {
    let key = SigningKey::from_bytes(&secret(seed, tag, index));
    b64(key.verifying_key().as_bytes())
}

fn fleet_kdl(seed: u64) -> String {
    let roots: Vec<String> = (0..3)
        .map(|k| format!("    root-key \"{}\"", ed25519_public(seed, b'R', k)))
        .collect();
    format!(
        r#"// Generated by gen-fleet (seed {seed}): a large fleet for benchmarks.
version 1

name "bench-fleet"

store "file:///var/lib/gitfleet/store"

state-branch "gitfleet/state"

trust threshold=2 {{
{roots}
}}

defaults {{
    max-unavailable 1
    bake "5m"
    progress-deadline "15m"
    poll-interval "30s"
    drift "report"
}}

// Public listeners in prod must terminate TLS.
lint "listener-tls" severity="error" {{
    environments "prod"
}}
lint "route-timeout" severity="error"
lint "health-route" severity="warning"
lint "max-config-bytes" severity="error" limit=262144
"#,
        roots = roots.join("\n")
    )
}

const ENVIRONMENTS: &str = r#"// Generated by gen-fleet: dev, then staging, then prod.
version 1

environment "dev" {
    freshness "1h"
}

environment "staging" {
    after "dev"
    freshness "1h"
}

environment "prod" {
    after "staging"
    freshness "30m"
    approvals 2 {
        users "alice" "bob"
        teams "acme/sre"
    }
    window "weekday-mornings" cron="0 8 * * Mon-Thu" duration="6h" time-zone="Europe/Berlin"
    deny-window "year-end-freeze" cron="0 0 20 12 *" duration="14d" time-zone="UTC"
}
"#;

/// Node `i`: 10 % dev, 20 % staging, 70 % prod; roles and regions round-robin.
fn node_kdl(seed: u64, i: usize, width: usize, svc: &str) -> (String, String) {
    let env = match i % 10 {
        0 => ("dev", "dev-"),
        1 | 2 => ("staging", "stg-"),
        _ => ("prod", ""),
    };
    let role = ROLES[i % ROLES.len()];
    let region = REGIONS[(i / ROLES.len()) % REGIONS.len()];
    let id = format!("{role}-{}{region}-{i:0width$}", env.1);
    let node_key = ed25519_public(seed, b'N', i as u64);
    let mut text = format!(
        "version 1\nid \"{id}\"\nenvironment \"{}\"\nlabels region=\"{region}\" role=\"{role}\" svc=\"{svc}\"\nnode-key \"{node_key}\"\n",
        env.0
    );
    if role == "edge" {
        // Any distinct 32 bytes make distinct WireGuard keys.
        let wg = secret(seed, b'W', i as u64);
        let ip = 0xc612_0000u32 + i as u32 + 1; // 198.18.0.0/15, benchmarking range
        let [a, b, c, d] = ip.to_be_bytes();
        let _ = writeln!(
            text,
            "wireguard public-key=\"{}\" endpoint=\"{a}.{b}.{c}.{d}:51820\"",
            b64(&wg)
        );
    }
    (text, id)
}

const MESH: &str = r#"// Generated by gen-fleet: WireGuard backbone between all edge nodes.
version 1
cidr "10.64.0.0/16"
members role="edge"
listen-port 51820
persistent-keepalive "25s"
allowed-ips "10.0.0.0/16" "10.1.0.0/16"
"#;

const MESH_ROLLOUT: &str = r#"// Mesh membership changes: one node first, then everyone.
version 1
mesh "backbone"
selector role="edge"
step count=1
step percent=100
gates {
    healthy
}
"#;

fn rollout_kdl(c: usize, name: &str) -> String {
    let bake = [5, 10, 15][c % 3];
    format!(
        r#"// Generated by gen-fleet: config `{name}` to the nodes labelled for it.
version 1
config "{name}"
selector svc="{name}"

step count=1
step percent=25
step percent=100

max-unavailable 2
bake "{bake}m"
progress-deadline "30m"

gates {{
    healthy
    max-error-rate 0.01
    max-p99-latency "300ms"
    http-check "http://127.0.0.1:9090/-/health" expect-status=200
}}
"#
    )
}

const RESOURCES: &[&str] = &[
    "users", "orders", "payments", "reports", "search", "catalog", "carts", "invoices", "shipping",
    "accounts", "sessions", "tokens", "media", "reviews", "coupons", "events",
];
const CLASSES: &[(&str, u32, u32, u32)] = &[
    // name, request, upstream, connect timeouts (seconds)
    ("fast", 5, 4, 1),
    ("standard", 15, 12, 2),
    ("slow", 60, 55, 2),
];

/// A Sentinel config with 4 to 21 proxied routes, each with its upstream:
/// about 5 to 20 KiB.
fn sentinel_kdl(c: usize, name: &str) -> String {
    let routes = 4 + (c * 7) % 18;
    let net = c % 250;
    let mut s = String::with_capacity(24 * 1024);
    let _ = write!(
        s,
        r#"// Sentinel API gateway `{name}`: fronts {routes} services.
//
// Generated by gen-fleet. Managed by gitfleet.

schema-version "1.0"

system {{
    worker-threads {workers}
    max-connections 10000
    graceful-shutdown-timeout-secs 20
}}

listeners {{
    listener "https" {{
        address "0.0.0.0:8443"
        protocol "https"
        request-timeout-secs 60
        keepalive-timeout-secs 75
        default-route "not-found"
        tls {{
            cert-file "/etc/sentinel/tls/{name}.crt"
            key-file "/etc/sentinel/tls/{name}.key"
            min-version "1.2"
        }}
    }}

    listener "admin" {{
        address "127.0.0.1:9090"
        protocol "http"
        request-timeout-secs 5
        keepalive-timeout-secs 15
        default-route "health"
    }}
}}

// Timeout budgets, one per service class. Every proxied route references one.
filters {{
"#,
        workers = 2 + c % 7
    );
    for (class, request, upstream, connect) in CLASSES {
        let _ = write!(
            s,
            r#"    filter "timeout-{class}" {{
        type "timeout"
        request-timeout-secs {request}
        upstream-timeout-secs {upstream}
        connect-timeout-secs {connect}
    }}

"#
        );
    }
    s.push_str(
        r#"}

routes {
    route "health" {
        priority "high"
        matches {
            path "/-/health"
        }
        builtin-handler "health"
    }

"#,
    );
    for r in 0..routes {
        let svc = service(r);
        let class = CLASSES[(c + r) % CLASSES.len()].0;
        let _ = write!(
            s,
            r#"    // /v{v}/{svc}: {class} service.
    route "{svc}" {{
        matches {{
            path-prefix "/v{v}/{svc}"
        }}
        upstream "{svc}-svc"
        filters "timeout-{class}"
    }}

"#,
            v = 1 + r / RESOURCES.len()
        );
    }
    s.push_str(
        r#"    // Fallback for anything unmatched.
    route "not-found" {
        priority "low"
        matches {
            path-prefix "/"
        }
        builtin-handler "not-found"
    }
}

upstreams {
"#,
    );
    for r in 0..routes {
        let svc = service(r);
        let (_, request, read, connect) = CLASSES[(c + r) % CLASSES.len()];
        let lb = ["round_robin", "least_connections", "weighted"][(c + r) % 3];
        let _ = writeln!(s, "    upstream \"{svc}-svc\" {{");
        for t in 0..3 {
            let _ = writeln!(
                s,
                "        target \"10.{}.{r}.{}:{}\" weight=1",
                net / 2 + 2 + 100 * (net % 2),
                11 + t,
                7000 + r
            );
        }
        let _ = write!(
            s,
            r#"        load-balancing "{lb}"
        health-check {{
            type "http" {{
                path "/healthz"
                expected-status 200
            }}
            interval-secs 10
            timeout-secs 2
            healthy-threshold 2
            unhealthy-threshold 3
        }}
        timeouts {{
            connect {connect}
            request {request}
            read {read}
            write {read}
        }}
        connection-pool {{
            max-connections 200
            max-idle 40
            idle-timeout 60
        }}
    }}

"#
        );
    }
    s.push_str("}\n");
    s
}

/// Route and upstream names: `users`, ..., `events`, `users-2`, ...
fn service(r: usize) -> String {
    let base = RESOURCES[r % RESOURCES.len()];
    match r / RESOURCES.len() {
        0 => base.to_owned(),
        n => format!("{base}-{}", n + 1),
    }
}
