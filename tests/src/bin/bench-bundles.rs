//! `bench-bundles`: benchmark (not a test) of building and verifying bundles.
//!
//! ```text
//! bench-bundles --repo DIR [--runs N] [--verify-mib N] [--only build|verify]
//! ```
//!
//! Prints figures and ratios against baselines measured in the same run; it
//! never asserts a time. Exit status is non-zero only when something fails
//! to work (the repo does not check clean, a bundle does not verify, `tar`
//! or `zstd` fail).
//!
//! **build**: `DIR` is a repo written by `gen-fleet`. It is read into a
//! `RepoFiles` and checked once (not timed); then every config is bundled
//! with `gitfleet_policy::bundle::sentinel_config`, in this process, on one
//! thread. Baselines, on the same config directories on disk:
//!
//! - A, as the issue states: for each config directory, one
//!   `tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -cf - -C DIR . | zstd -3 -q -c > /dev/null`
//!   (both processes spawned directly, tar's stdout piped into zstd's stdin,
//!   no shell);
//! - B, stricter: one such pipeline over all config directories at once.
//!
//! **verify**: two bundles of about N MiB (compressed), one of pseudo-random
//! bytes (incompressible) and one of generated config-like KDL text with
//! random names, addresses, ports and key pins; `verify_bundle` (default
//! `Limits`) is timed against SHA-256 (`sha2`, the crate the verifier uses)
//! of the same bundle bytes. `verify_bundle` uses two threads for bundles of
//! 1 MiB or more (after the digest, one unpacks while the other hashes the
//! files), so its CPU time per run and the load average are printed too:
//! with another build on the second core it cannot beat doing the work in
//! turn.
//!
//! Every timing: one warm-up, then `--runs` repetitions (default 10), median
//! reported. Where the two timings of a ratio can be interleaved they are, so
//! that load on a shared machine hits both alike.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use gitfleet_policy::bundle::{self, Built, Input};
use gitfleet_policy::{sbom, ConfigDir, RepoFiles};
use gitfleet_schemas::bundle::BundleKind;
use gitfleet_schemas::verify::{verify_bundle, Limits};
use gitfleet_schemas::Proxy;
use gitfleet_tests::Rng;
use sha2::{Digest as _, Sha256};

const USAGE: &str =
    "usage: bench-bundles --repo DIR [--runs N] [--verify-mib N] [--only build|verify]";

/// A 40-hex-digit commit id; its value does not matter.
const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// `tar` arguments before `-C DIR .`, as the issue gives them.
const TAR_ARGS: &[&str] = &[
    "--sort=name",
    "--mtime=@0",
    "--owner=0",
    "--group=0",
    "--numeric-owner",
    "-cf",
    "-",
];

#[derive(Debug)]
struct Args {
    repo: Option<PathBuf>,
    runs: usize,
    verify_mib: u64,
    build: bool,
    verify: bool,
}

type Res<T> = Result<T, String>;

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("bench-bundles: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let result = (|| -> Res<()> {
        if args.build {
            let repo = args.repo.as_deref().ok_or("--repo is required for build")?;
            bench_build(repo, args.runs)?;
        }
        if args.verify {
            bench_verify(args.verify_mib, args.runs)?;
        }
        Ok(())
    })();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-bundles: {e}");
            ExitCode::FAILURE
        }
    }
}

fn parse_args(mut it: impl Iterator<Item = String>) -> Res<Args> {
    let mut args = Args {
        repo: None,
        runs: 10,
        verify_mib: 10,
        build: true,
        verify: true,
    };
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            return Err("help".to_owned());
        }
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = |v: &str| {
            v.parse::<u64>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("{flag}: `{v}` is not a positive number"))
        };
        match flag.as_str() {
            "--repo" => args.repo = Some(PathBuf::from(value)),
            "--runs" => args.runs = number(&value)? as usize,
            "--verify-mib" => args.verify_mib = number(&value)?,
            "--only" => match value.as_str() {
                "build" => args.verify = false,
                "verify" => args.build = false,
                _ => return Err(format!("--only: `{value}` is not build or verify")),
            },
            _ => return Err(format!("unknown argument `{flag}`")),
        }
    }
    Ok(args)
}

// ---------------------------------------------------------------- timing

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    match v.len() {
        0 => Duration::ZERO,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2,
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn time<T>(f: impl FnOnce() -> T) -> (Duration, T) {
    let start = Instant::now();
    let out = f();
    (start.elapsed(), out)
}

/// Summary of a set of timings: median, min, max.
fn summary(v: &[Duration]) -> String {
    let min = v.iter().min().copied().unwrap_or_default();
    let max = v.iter().max().copied().unwrap_or_default();
    format!(
        "median {:.4} s  (min {:.4}, max {:.4})",
        secs(median(v.to_vec())),
        secs(min),
        secs(max)
    )
}

/// CPU seconds of this process and of its reaped children, from
/// `/proc/self/stat` (clock ticks; `getconf CLK_TCK`, usually 100).
#[derive(Clone, Copy, Debug, Default)]
struct Cpu {
    own: f64,
    children: f64,
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .unwrap_or(100.0)
}

fn cpu(ticks: f64) -> Cpu {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name: state is field 3, utime 14, stime 15,
    // cutime 16, cstime 17 (1-based, whole line).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    let at = |i: usize| f.get(i - 3).copied().unwrap_or(0.0);
    Cpu {
        own: (at(14) + at(15)) / ticks,
        children: (at(16) + at(17)) / ticks,
    }
}

/// The first three fields of `/proc/loadavg`: other work on the machine
/// slows `verify_bundle`, which needs both cores, more than the baseline.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_owned())
}

fn kib(n: usize) -> f64 {
    n as f64 / 1024.0
}

fn mib(n: usize) -> f64 {
    n as f64 / (1024.0 * 1024.0)
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "PASS"
    } else {
        "FAIL"
    }
}

// ----------------------------------------------------------------- build

/// Every file under `root` but hidden ones, by `/`-separated relative path.
fn read_repo(root: &Path) -> Res<RepoFiles> {
    let mut files = RepoFiles::new();
    let mut stack = vec![(root.to_owned(), String::new())];
    while let Some((dir, prefix)) = stack.pop() {
        let entries =
            std::fs::read_dir(&dir).map_err(|e| format!("reading {}: {e}", dir.display()))?;
        for entry in entries {
            let entry = entry.map_err(|e| format!("reading {}: {e}", dir.display()))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            let rel = format!("{prefix}{name}");
            let ty = entry
                .file_type()
                .map_err(|e| format!("{}: {e}", entry.path().display()))?;
            if ty.is_dir() {
                stack.push((entry.path(), format!("{rel}/")));
            } else if ty.is_file() {
                let bytes = std::fs::read(entry.path())
                    .map_err(|e| format!("reading {}: {e}", entry.path().display()))?;
                files.insert(rel, bytes);
            }
        }
    }
    Ok(files)
}

fn build_all(configs: &[&ConfigDir]) -> Res<Vec<Built>> {
    configs
        .iter()
        .map(|dir| {
            bundle::proxy_config(dir, &Proxy::legacy(), COMMIT)
                .map_err(|e| format!("bundling {}: {e}", dir.name))
        })
        .collect()
}

/// `tar … -cf - -C dir . | zstd -3 -q -c`, both spawned directly. With
/// `count`, zstd's output is read and its length returned; otherwise it goes
/// to /dev/null.
fn tar_zstd(dir: &Path, count: bool) -> Res<usize> {
    let mut tar = Command::new("tar")
        .args(TAR_ARGS)
        .arg("-C")
        .arg(dir)
        .arg(".")
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawning tar: {e}"))?;
    let tar_out = tar.stdout.take().ok_or("tar has no stdout")?;
    let mut zstd = Command::new("zstd")
        .args(["-3", "-q", "-c"])
        .stdin(Stdio::from(tar_out))
        .stdout(if count { Stdio::piped() } else { Stdio::null() })
        .spawn()
        .map_err(|e| format!("spawning zstd: {e}"))?;
    let mut n = 0;
    if let Some(mut out) = zstd.stdout.take() {
        let mut buf = Vec::new();
        out.read_to_end(&mut buf)
            .map_err(|e| format!("reading zstd's output: {e}"))?;
        n = buf.len();
    }
    let zs = zstd.wait().map_err(|e| format!("waiting for zstd: {e}"))?;
    let ts = tar.wait().map_err(|e| format!("waiting for tar: {e}"))?;
    if !ts.success() || !zs.success() {
        return Err(format!(
            "tar | zstd on {} failed: tar {ts}, zstd {zs}",
            dir.display()
        ));
    }
    Ok(n)
}

fn per_config_baseline(dirs: &[PathBuf], count: bool) -> Res<usize> {
    let mut total = 0;
    for d in dirs {
        total += tar_zstd(d, count)?;
    }
    Ok(total)
}

fn bench_build(repo: &Path, runs: usize) -> Res<()> {
    let ticks = clock_ticks();
    let files = read_repo(repo)?;
    let checked = gitfleet_policy::check(&files);
    if checked.has_errors() {
        return Err(format!(
            "{} does not check clean: {} diagnostics, first: {:?}",
            repo.display(),
            checked.diagnostics.len(),
            checked.diagnostics.first().map(|d| &d.message)
        ));
    }
    let configs: Vec<&ConfigDir> = checked.model.configs.values().collect();
    if configs.is_empty() {
        return Err(format!("{} has no configs", repo.display()));
    }
    let sizes: Vec<usize> = configs.iter().map(|c| c.total_bytes()).collect();
    let total: usize = sizes.iter().sum();
    let dirs: Vec<PathBuf> = configs
        .iter()
        .map(|c| repo.join("configs").join(&c.name))
        .collect();
    let configs_root = repo.join("configs");

    println!(
        "== bundle build: {} configs, {} files, {:.1} to {:.1} KiB each (mean {:.1} KiB), {:.2} MB in all; {runs} runs after 1 warm-up, median",
        configs.len(),
        configs.iter().map(|c| c.files.len()).sum::<usize>(),
        kib(sizes.iter().copied().min().unwrap_or(0)),
        kib(sizes.iter().copied().max().unwrap_or(0)),
        kib(total / configs.len()),
        total as f64 / 1e6,
    );

    // Warm-up, and the sizes of what each side writes.
    let built = build_all(&configs)?;
    let ours: usize = built.iter().map(|b| b.bytes.len()).sum();
    let size_a = per_config_baseline(&dirs, true)?;
    let size_b = tar_zstd(&configs_root, true)?;

    // Interleaved: build, A, B in each run.
    let (mut t_build, mut t_a, mut t_b) = (Vec::new(), Vec::new(), Vec::new());
    let (mut c_build, mut c_a, mut c_b) = (0.0, 0.0, 0.0);
    for _ in 0..runs {
        let before = cpu(ticks);
        let (d, r) = time(|| build_all(&configs));
        let after = cpu(ticks);
        std::hint::black_box(r?);
        t_build.push(d);
        c_build += after.own - before.own;

        let before = cpu(ticks);
        let (d, r) = time(|| per_config_baseline(&dirs, false));
        let after = cpu(ticks);
        r?;
        t_a.push(d);
        c_a += after.children - before.children;

        let before = cpu(ticks);
        let (d, r) = time(|| tar_zstd(&configs_root, false));
        let after = cpu(ticks);
        r?;
        t_b.push(d);
        c_b += after.children - before.children;
    }
    let runs_f = runs as f64;
    let (m_build, m_a, m_b) = (
        median(t_build.clone()),
        median(t_a.clone()),
        median(t_b.clone()),
    );
    println!(
        "gitfleet build, in process, 1 thread:        {}  cpu {:.3} s/run",
        summary(&t_build),
        c_build / runs_f
    );
    println!(
        "baseline A: tar | zstd -3 per config ({} x 2 processes): {}  cpu (children) {:.3} s/run",
        dirs.len(),
        summary(&t_a),
        c_a / runs_f
    );
    println!(
        "baseline B: one tar | zstd -3 over all dirs: {}  cpu (children) {:.3} s/run",
        summary(&t_b),
        c_b / runs_f
    );
    println!(
        "per config: build {:.1} us, A {:.1} us",
        secs(m_build) * 1e6 / configs.len() as f64,
        secs(m_a) * 1e6 / configs.len() as f64
    );
    println!(
        "output bytes: build {} ({:.2}x of input; includes manifest.json and sbom.cdx.json), A {} ({:.2}x), B {} ({:.2}x)",
        ours,
        ours as f64 / total as f64,
        size_a,
        size_a as f64 / total as f64,
        size_b,
        size_b as f64 / total as f64
    );
    let ratio_a = secs(m_build) / secs(m_a);
    let ratio_b = secs(m_build) / secs(m_b);
    println!(
        "RATIO build / A (per-config tar|zstd, the issue's baseline): {ratio_a:.3}  goal <= 1.0: {}",
        verdict(ratio_a <= 1.0)
    );
    println!(
        "RATIO build / B (one tar|zstd, stricter):                     {ratio_b:.3}  goal <= 1.0: {}",
        verdict(ratio_b <= 1.0)
    );

    build_breakdown(&configs, &built, runs)?;
    Ok(())
}

/// Where the build time goes: each part timed on its own, medians.
fn build_breakdown(configs: &[&ConfigDir], built: &[Built], runs: usize) -> Res<()> {
    let sboms = |configs: &[&ConfigDir]| -> Vec<Vec<u8>> {
        configs
            .iter()
            .map(|c| {
                let legacy = Proxy::legacy();
                match c.variants.get(&legacy).and_then(|v| v.config.as_ref()) {
                    Some(cfg) => sbom::of_config(&c.name, COMMIT, &legacy, cfg, &c.files),
                    None => Vec::new(),
                }
            })
            .collect()
    };
    let made = sboms(configs);
    let without_sbom = |made: &[Vec<u8>]| -> Res<usize> {
        let mut n = 0;
        for (c, s) in configs.iter().zip(made) {
            let b = bundle::build(Input {
                kind: BundleKind::Sentinel,
                name: &c.name,
                source_commit: COMMIT,
                validator: &Proxy::legacy().validator(),
                files: &c.files,
                sbom: s.clone(),
            })
            .map_err(|e| format!("bundling {}: {e}", c.name))?;
            n += b.bytes.len();
        }
        Ok(n)
    };
    let tars: Vec<Vec<u8>> = built
        .iter()
        .map(|b| zstd::bulk::decompress(&b.bytes, 64 << 20).map_err(|e| e.to_string()))
        .collect::<Res<_>>()?;
    let compress = |tars: &[Vec<u8>]| -> Res<usize> {
        let mut n = 0;
        for t in tars {
            n += zstd::bulk::compress(t, bundle::ZSTD_LEVEL)
                .map_err(|e| e.to_string())?
                .len();
        }
        Ok(n)
    };
    let hash_files = |configs: &[&ConfigDir]| -> usize {
        let mut n = 0;
        for c in configs {
            for bytes in c.files.values() {
                n += Sha256::digest(bytes)[0] as usize;
            }
        }
        n
    };
    std::hint::black_box(without_sbom(&made)?);
    std::hint::black_box(compress(&tars)?);
    let (mut t_sbom, mut t_rest, mut t_zstd, mut t_clone, mut t_hash) =
        (vec![], vec![], vec![], vec![], vec![]);
    for _ in 0..runs {
        let (d, r) = time(|| sboms(configs));
        std::hint::black_box(r);
        t_sbom.push(d);
        let (d, r) = time(|| without_sbom(&made));
        std::hint::black_box(r?);
        t_rest.push(d);
        // The clone of each SBOM that `without_sbom` does and a real build
        // does not.
        let (d, r) = time(|| made.to_vec());
        std::hint::black_box(r);
        t_clone.push(d);
        let (d, r) = time(|| compress(&tars));
        std::hint::black_box(r?);
        t_zstd.push(d);
        let (d, r) = time(|| hash_files(configs));
        std::hint::black_box(r);
        t_hash.push(d);
    }
    let tar_bytes: usize = tars.iter().map(Vec::len).sum();
    let sbom_bytes: usize = made.iter().map(Vec::len).sum();
    let manifest_bytes: usize = built
        .iter()
        .map(|b| serde_json::to_vec_pretty(&b.manifest).map_or(0, |m| m.len() + 1))
        .sum();
    let (sb, rest, zs, cl, hs) = (
        secs(median(t_sbom)),
        secs(median(t_rest)),
        secs(median(t_zstd)),
        secs(median(t_clone)),
        secs(median(t_hash)),
    );
    let rest = (rest - cl).max(0.0);
    let whole = sb + rest;
    println!(
        "bundle contents: {:.2} MB of config files, {:.2} MB of sbom.cdx.json, {:.2} MB of manifest.json, {:.2} MB of tar in all",
        configs.iter().map(|c| c.total_bytes()).sum::<usize>() as f64 / 1e6,
        sbom_bytes as f64 / 1e6,
        manifest_bytes as f64 / 1e6,
        tar_bytes as f64 / 1e6
    );
    println!("where the build time goes (each part timed alone, medians, all configs):");
    println!(
        "  SBOM (sbom::sentinel: JSON from the parsed config + sha256 of each file): {:.4} s  {:4.1} %",
        sb,
        100.0 * sb / whole
    );
    println!(
        "  bundle::build given the SBOM:                                              {:.4} s  {:4.1} %",
        rest,
        100.0 * rest / whole
    );
    println!(
        "    of which zstd level 3 of the {:.2} MB of tar (zstd::bulk::compress):     {:.4} s  {:4.1} %",
        tar_bytes as f64 / 1e6,
        zs,
        100.0 * zs / whole
    );
    println!(
        "    of which sha256 of every config file once (the manifest's hashes):     {:.4} s  {:4.1} %",
        hs,
        100.0 * hs / whole
    );
    println!(
        "    rest (tar headers and copies, manifest JSON, bundle digest):           {:.4} s  {:4.1} %",
        (rest - zs - hs).max(0.0),
        100.0 * (rest - zs - hs).max(0.0) / whole
    );
    Ok(())
}

// ---------------------------------------------------------------- verify

const WORDS: &[&str] = &[
    "alpha", "amber", "anchor", "apex", "arc", "atlas", "aurora", "axis", "beacon", "birch",
    "blaze", "bolt", "breeze", "bridge", "brook", "canyon", "cedar", "cinder", "cirrus", "cobalt",
    "comet", "coral", "crest", "crystal", "cypress", "dawn", "delta", "drift", "dune", "eagle",
    "echo", "ember", "falcon", "fern", "fjord", "flint", "forge", "frost", "gale", "garnet",
    "glacier", "granite", "grove", "harbor", "hawk", "helix", "heron", "horizon", "iris", "ivory",
    "jade", "juniper", "kestrel", "lagoon", "lark", "lattice", "lumen", "lynx", "maple", "marble",
    "meadow", "mesa", "meteor", "mist", "nebula", "nimbus", "oak", "onyx", "orbit", "orchid",
    "osprey", "pebble", "pine", "pixel", "plume", "prairie", "prism", "pulse", "quartz", "quill",
    "raven", "reef", "ridge", "river", "saffron", "sage", "sequoia", "shadow", "sierra", "slate",
    "sparrow", "spruce", "summit", "tundra", "vapor", "willow", "zephyr", "zenith", "basalt",
    "cascade",
];
const VERBS: &[&str] = &[
    "serves",
    "proxies",
    "fronts",
    "caches",
    "routes",
    "throttles",
    "mirrors",
    "forwards",
    "balances",
    "shields",
];
const REGIONS: &[&str] = &["fra", "iad", "sin", "gru", "syd", "nrt", "ams", "ord"];
const LBS: &[&str] = &["round_robin", "least_connections", "weighted", "ip_hash"];
const METHODS: &[&str] = &["GET", "POST", "PUT", "DELETE", "PATCH"];

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// One Sentinel-like route and upstream, with random names, addresses,
/// ports, limits and a random key pin, in KDL.
fn config_block(rng: &mut Rng, out: &mut String) {
    use std::fmt::Write as _;
    let name = format!(
        "{}-{}-{}",
        rng.pick(WORDS),
        rng.pick(WORDS),
        rng.below(1000)
    );
    let region = rng.pick(REGIONS);
    let mut pin = [0u8; 32];
    rng.fill(&mut pin);
    let _ = writeln!(
        out,
        "// {} {} {} traffic for the {} {} team in {region}.",
        name,
        rng.pick(VERBS),
        rng.pick(WORDS),
        rng.pick(WORDS),
        rng.pick(WORDS),
    );
    let _ = write!(
        out,
        r#"route "{name}" {{
    priority {prio}
    matches {{
        path-prefix "/v{v}/{w1}/{w2}"
        method "{m}"
        header "x-tenant" "{tenant:08x}"
    }}
    upstream "{name}-svc"
    filters "timeout-{w3}" "ratelimit-{rl}"
    policy {{
        max-body-bytes {body}
        retry attempts={att} backoff-ms={back}
    }}
}}

upstream "{name}-svc" {{
"#,
        prio = rng.below(100),
        v = 1 + rng.below(4),
        w1 = rng.pick(WORDS),
        w2 = rng.pick(WORDS),
        m = rng.pick(METHODS),
        tenant = rng.next_u64() as u32,
        w3 = rng.pick(WORDS),
        rl = rng.below(500),
        body = 1024 * (1 + rng.below(4096)),
        att = 1 + rng.below(5),
        back = 10 * (1 + rng.below(100)),
    );
    for _ in 0..1 + rng.below(4) {
        let _ = writeln!(
            out,
            "    target \"10.{}.{}.{}:{}\" weight={}",
            rng.below(256),
            rng.below(256),
            1 + rng.below(254),
            1024 + rng.below(60000),
            1 + rng.below(10)
        );
    }
    let _ = write!(
        out,
        r#"    load-balancing "{lb}"
    tls {{
        sni "{name}.{region}.internal.example"
        pin-sha256 "{pin}"
    }}
    timeouts {{
        connect {c}
        request {r}
    }}
}}

"#,
        lb = rng.pick(LBS),
        pin = b64(&pin),
        c = 1 + rng.below(5),
        r = 5 + rng.below(120),
    );
}

fn text_file(rng: &mut Rng, len: usize) -> Vec<u8> {
    let mut s = String::with_capacity(len + 1024);
    s.push_str("// Generated by bench-bundles: config-like text for the verify benchmark.\n\n");
    while s.len() < len {
        config_block(rng, &mut s);
    }
    s.into_bytes()
}

fn random_file(rng: &mut Rng, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rng.fill(&mut v);
    v
}

/// Makes a file of about the given length.
type MakeFile = fn(&mut Rng, usize) -> Vec<u8>;

fn build_files(name: &str, files: &BTreeMap<String, Vec<u8>>) -> Res<Built> {
    bundle::build(Input {
        kind: BundleKind::Sentinel,
        name,
        source_commit: COMMIT,
        validator: "bench-bundles",
        files,
        sbom: b"{}\n".to_vec(),
    })
    .map_err(|e| format!("building {name}: {e}"))
}

/// Files of `file_len` bytes each from `make` until the bundle is within
/// 0.5 % of `target` compressed bytes (a few rounds, scaling the unpacked
/// size by the compression seen).
fn sized_bundle(
    name: &str,
    target: usize,
    file_len: usize,
    seed: u64,
    make: MakeFile,
) -> Res<(BTreeMap<String, Vec<u8>>, Built)> {
    let mut want = target;
    for _ in 0..6 {
        let mut rng = Rng(seed);
        let mut files = BTreeMap::new();
        let mut total = 0;
        let mut i = 0;
        while total < want {
            let len = file_len.min(want - total);
            let bytes = make(&mut rng, len);
            total += bytes.len();
            files.insert(format!("conf.d/part-{i:05}.kdl"), bytes);
            i += 1;
        }
        let built = build_files(name, &files)?;
        let got = built.bytes.len();
        if got.abs_diff(target) * 200 <= target {
            return Ok((files, built));
        }
        want = (want as f64 * target as f64 / got as f64) as usize;
    }
    Err(format!(
        "{name}: could not size the bundle to {target} bytes"
    ))
}

fn bench_verify(target_mib: u64, runs: usize) -> Res<()> {
    let target = (target_mib as usize) << 20;
    println!(
        "== bundle verification: {target_mib} MiB bundles, verify_bundle (default Limits) vs sha256 (sha2) of the same bytes; {runs} runs after 1 warm-up, median, interleaved"
    );
    let cases: [(&str, usize, MakeFile); 2] = [
        ("random bytes (incompressible)", 256 << 10, random_file),
        ("config-like KDL text", 64 << 10, text_file),
    ];
    for (seed, (label, file_len, make)) in (1u64..).zip(cases) {
        let (files, built) = sized_bundle(label, target, file_len, seed, make)?;
        verify_case(label, &files, &built, runs)?;
    }
    Ok(())
}

fn verify_case(
    label: &str,
    files: &BTreeMap<String, Vec<u8>>,
    built: &Built,
    runs: usize,
) -> Res<()> {
    let bytes = &built.bytes;
    let unpacked: usize = files.values().map(Vec::len).sum();
    // Warm-up, and a check that the bundle is what was built.
    let v = verify_bundle(&built.reference, bytes, Limits::default())
        .map_err(|e| format!("{label}: verify_bundle failed: {e}"))?;
    if v.files.len() != files.len() + 1 {
        return Err(format!(
            "{label}: verified bundle has {} files, expected {}",
            v.files.len(),
            files.len() + 1
        ));
    }
    let tar = zstd::bulk::decompress(bytes, 128 << 20).map_err(|e| e.to_string())?;
    let tar_len = tar.len();
    let manifest_len = serde_json::to_vec_pretty(&v.manifest).map_or(0, |m| m.len() + 1);
    drop(v);
    println!(
        "-- {label}: bundle {} bytes ({:.2} MiB), {} files, {:.2} MiB of file data, tar {:.2} MiB; compression ratio (tar / bundle) {:.2}",
        bytes.len(),
        mib(bytes.len()),
        files.len(),
        mib(unpacked),
        mib(tar_len),
        tar_len as f64 / bytes.len() as f64
    );
    std::hint::black_box(Sha256::digest(bytes));

    // As the verifier reads it: in place, one frame.
    let decompress = || -> Res<u64> {
        let mut d = zstd::stream::read::Decoder::with_buffer(&bytes[..])
            .map_err(|e| e.to_string())?
            .single_frame();
        std::io::copy(&mut d, &mut std::io::sink()).map_err(|e| e.to_string())
    };
    let hash_files = || {
        let mut n = 0usize;
        for f in files.values() {
            n += Sha256::digest(f)[0] as usize;
        }
        n
    };
    // Tar parsing and copying each entry into its own Vec, from the
    // decompressed tar in memory: what `unpack` does besides decompressing.
    let untar = || -> Res<usize> {
        let mut out = BTreeMap::new();
        let mut archive = tar::Archive::new(&tar[..]);
        for entry in archive.entries().map_err(|e| e.to_string())?.raw(true) {
            let mut entry = entry.map_err(|e| e.to_string())?;
            let path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let size = entry.size();
            let mut data = Vec::with_capacity(usize::try_from(size).unwrap_or(0).min(1 << 20));
            entry.read_to_end(&mut data).map_err(|e| e.to_string())?;
            out.insert(path, data);
        }
        Ok(out.len())
    };
    std::hint::black_box(decompress()?);
    std::hint::black_box(untar()?);

    let ticks = clock_ticks();
    println!("load average: {}", load_average());
    let (mut t_sha, mut t_verify, mut t_dec, mut t_files, mut t_untar) =
        (vec![], vec![], vec![], vec![], vec![]);
    let mut c_verify = 0.0;
    for _ in 0..runs {
        let (d, r) = time(|| Sha256::digest(bytes));
        std::hint::black_box(r);
        t_sha.push(d);
        let before = cpu(ticks);
        let (d, r) = time(|| verify_bundle(&built.reference, bytes, Limits::default()));
        let after = cpu(ticks);
        std::hint::black_box(r.map_err(|e| e.to_string())?);
        t_verify.push(d);
        c_verify += after.own - before.own;
        let (d, r) = time(decompress);
        std::hint::black_box(r?);
        t_dec.push(d);
        let (d, r) = time(hash_files);
        std::hint::black_box(r);
        t_files.push(d);
        let (d, r) = time(untar);
        std::hint::black_box(r?);
        t_untar.push(d);
    }
    let (sha, ver, dec, fh, ut) = (
        secs(median(t_sha.clone())),
        secs(median(t_verify.clone())),
        secs(median(t_dec)),
        secs(median(t_files)),
        secs(median(t_untar)),
    );
    println!(
        "sha256 of the bundle bytes:  {}  ({:.0} MiB/s)",
        summary(&t_sha),
        mib(bytes.len()) / sha
    );
    let c_verify = c_verify / runs as f64;
    println!(
        "verify_bundle:               {}  ({:.0} MiB/s of bundle); cpu {:.4} s/run, both threads",
        summary(&t_verify),
        mib(bytes.len()) / ver,
        c_verify
    );
    let ratio = ver / sha;
    println!(
        "RATIO verify / sha256: {ratio:.2}  goal <= 2.0: {}",
        verdict(ratio <= 2.0)
    );
    // After the digest, verify_bundle unpacks on one thread while the other
    // hashes files: its wall time is not the sum of these parts.
    let work = sha + dec + fh + ut;
    println!(
        "where the verify work goes (each part timed alone on one thread, medians; verify_bundle spreads it over two threads):"
    );
    let part = |what: &str, t: f64| {
        println!(
            "  {what:<62} {t:.4} s  {:5.1} %  ({:.2}x sha256 of the bundle)",
            100.0 * t / work,
            t / sha
        )
    };
    part("sha256 of the bundle bytes (the bundle digest)", sha);
    part("zstd stream decompression of the bundle to a sink", dec);
    part(
        &format!(
            "sha256 of every file, {:.1} MiB (the manifest's hashes)",
            mib(unpacked)
        ),
        fh,
    );
    part("tar parsing and copying entries into Vecs, from memory", ut);
    println!(
        "  sum of the parts: {work:.4} s ({:.2}x sha256: about what doing it all in turn on one thread takes); verify_bundle: cpu {:.4} s/run ({:.2}x the sum; also manifest JSON of {manifest_len} B, checks, the second thread), wall {:.2}x the sum",
        work / sha,
        c_verify,
        c_verify / work,
        ver / work
    );
    println!(
        "  (for scale: sha256 of the {:.1} MiB of file data alone is {:.2}x sha256 of the bundle; verify is {:.2}x that)",
        mib(unpacked),
        fh / sha,
        ver / fh
    );
    Ok(())
}
