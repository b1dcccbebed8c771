//! `bench-mesh`: benchmark (not a test) of a large WireGuard mesh.
//!
//! ```text
//! bench-mesh [--members N] [--runs R] [--apply INTERFACE]
//! ```
//!
//! **build**: a mesh of N members (default 5,000) built the way the
//! reconciler builds it (`policy::mesh::allocate` and `mesh_bundle`: the
//! mesh file, its SBOM, the deterministic tar.zst), against a baseline of
//! only serialising the same mesh document to JSON and hashing it. Prints
//! the bundle's bytes, and its bytes per member.
//!
//! **apply** (with `--apply`, as root, in a network namespace holding a
//! userspace WireGuard interface of that name, as `bench/mesh.sh` sets it
//! up): the agent's `wireguard::apply` configuring the whole mesh on the
//! empty interface (the baseline), then the same mesh plus one member (one
//! peer added, every other left alone), then the same mesh again (nothing
//! to change), each reading the live interface whole; then one added peer
//! as a running agent writes it (`wireguard::apply_since`: the difference
//! from its last write, nothing read), checked against the interface
//! afterwards (no drift).
//!
//! Every timing: the median of R runs (default 5). Figures are printed,
//! never asserted.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use gitfleet_agent::wireguard::{self, PrivateKey};
use gitfleet_policy::mesh;
use gitfleet_schemas::agent::WireguardBackend;
use gitfleet_schemas::bundle::MeshBundle;
use gitfleet_schemas::{MeshFile, NodeFile};

const CIDR: &str = "10.64.0.0/16";

fn main() -> ExitCode {
    let mut members = 5_000usize;
    let mut runs = 5usize;
    let mut apply_to: Option<String> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--members" => members = args.next().and_then(|v| v.parse().ok()).unwrap_or(members),
            "--runs" => runs = args.next().and_then(|v| v.parse().ok()).unwrap_or(runs),
            "--apply" => apply_to = args.next(),
            other => {
                eprintln!("bench-mesh: unknown argument `{other}`");
                return ExitCode::from(2);
            }
        }
    }
    match run(members, runs.max(1), apply_to.as_deref()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-mesh: {e}");
            ExitCode::FAILURE
        }
    }
}

fn key(n: usize) -> PrivateKey {
    let mut bytes = [0u8; 32];
    // Away from the bits clamping clears (the low three of byte 0).
    bytes[1..9].copy_from_slice(&(n as u64 + 1).to_le_bytes());
    bytes[31] = 0x5a;
    PrivateKey::from_bytes(bytes)
}

fn node_file(n: usize) -> NodeFile {
    let text = format!(
        "version 1\nid \"m{n:05}\"\nenvironment \"prod\"\nlabels role=\"mesh\"\nnode-key \"IOs8C/nAD8rXYMOdNc/cYeTDnFMO2fE/SClf2Wxn0EU=\"\nwireguard public-key=\"{}\" endpoint=\"198.18.{}.{}:51820\"\n",
        key(n).public(),
        (n / 250) % 250,
        n % 250 + 1
    );
    NodeFile::decode(&text)
        .value
        .unwrap_or_else(|| panic!("generated node file {n} does not decode"))
}

fn mesh_file() -> MeshFile {
    let text = format!("version 1\ncidr \"{CIDR}\"\nmembers role=\"mesh\"\nlisten-port 51820\npersistent-keepalive \"25s\"\n");
    MeshFile::decode(&text)
        .value
        .expect("the mesh file decodes")
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// The mesh of `nodes` as the reconciler builds it: its document and
/// bundle bytes.
fn build(nodes: &[NodeFile]) -> Result<(MeshBundle, Vec<u8>), String> {
    let file = mesh_file();
    let net = mesh::parse_cidr("bench", CIDR).map_err(|e| e.to_string())?;
    let ids: Vec<String> = nodes.iter().map(|n| n.id.value.clone()).collect();
    let allocation =
        mesh::allocate("bench", net, &ids, &Default::default()).map_err(|e| e.to_string())?;
    let refs: Vec<&NodeFile> = nodes.iter().collect();
    let doc = mesh::mesh_file("bench", &file, &refs, &allocation).map_err(|e| e.to_string())?;
    let built = mesh::mesh_bundle("bench", &file, &refs, &allocation, &"0".repeat(40))
        .map_err(|e| e.to_string())?;
    Ok((doc, built.bytes))
}

fn run(members: usize, runs: usize, apply_to: Option<&str>) -> Result<(), String> {
    println!("== a mesh of {members} members, {runs} runs each, median");
    let nodes: Vec<NodeFile> = (0..=members).map(node_file).collect();
    let (base, grown) = (&nodes[..members], &nodes[..]);

    let mut built = Vec::new();
    let mut serialised = Vec::new();
    let mut last = None;
    for _ in 0..runs {
        let t = Instant::now();
        let (doc, bytes) = build(base)?;
        built.push(t.elapsed());
        let t = Instant::now();
        let json = serde_json::to_vec_pretty(&doc).map_err(|e| e.to_string())?;
        let _ = sha2::Digest::finalize(<sha2::Sha256 as sha2::Digest>::new_with_prefix(&json));
        serialised.push(t.elapsed());
        last = Some((doc, bytes, json.len()));
    }
    let (doc, bytes, json_len) = last.expect("at least one run");
    let (b, s) = (median(built), median(serialised));
    println!(
        "build (allocate, mesh file, SBOM, tar.zst): {}   baseline (JSON + SHA-256 only): {}   ratio {:.1}x",
        ms(b),
        ms(s),
        b.as_secs_f64() / s.as_secs_f64()
    );
    println!(
        "bundle: {} bytes ({} bytes of mesh.json), {:.1} bytes per member",
        bytes.len(),
        json_len,
        bytes.len() as f64 / members as f64
    );

    let Some(interface) = apply_to else {
        println!("apply: skipped (run bench/mesh.sh, which sets up an interface)");
        return Ok(());
    };
    let me = key(0);
    let (grown_doc, _) = build(grown)?;
    let desired = |m: &MeshBundle| {
        wireguard::desired(m, "m00000", &me, Some(interface)).map_err(|e| e.to_string())
    };
    let (small, large) = (desired(&doc)?, desired(&grown_doc)?);
    let mut full = Vec::new();
    let mut one = Vec::new();
    let mut none = Vec::new();
    let mut since = Vec::new();
    for _ in 0..runs {
        // Empty the interface's peers: a whole-mesh apply from scratch.
        let empty = MeshBundle {
            members: doc.members[..1].to_vec(),
            ..doc.clone()
        };
        wireguard::apply(&desired(&empty)?, WireguardBackend::Userspace)
            .map_err(|e| e.to_string())?;
        let t = Instant::now();
        let applied =
            wireguard::apply(&small, WireguardBackend::Userspace).map_err(|e| e.to_string())?;
        full.push(t.elapsed());
        if applied.diff.add.len() != members - 1 {
            return Err(format!(
                "the full apply added {} peers",
                applied.diff.add.len()
            ));
        }
        let t = Instant::now();
        let applied =
            wireguard::apply(&large, WireguardBackend::Userspace).map_err(|e| e.to_string())?;
        one.push(t.elapsed());
        if applied.diff.add.len() != 1
            || !applied.diff.remove.is_empty()
            || !applied.diff.update.is_empty()
        {
            return Err(format!("one more member changed {:?}", applied.diff));
        }
        let t = Instant::now();
        let applied =
            wireguard::apply(&large, WireguardBackend::Userspace).map_err(|e| e.to_string())?;
        none.push(t.elapsed());
        if !applied.diff.is_empty() {
            return Err(format!("an unchanged mesh changed {:?}", applied.diff));
        }
        // A running agent: back to the small mesh, then the added peer as
        // the difference from what it wrote, without reading the interface.
        wireguard::apply_since(&large, &small, WireguardBackend::Userspace)
            .map_err(|e| e.to_string())?;
        let t = Instant::now();
        let applied = wireguard::apply_since(&small, &large, WireguardBackend::Userspace)
            .map_err(|e| e.to_string())?;
        since.push(t.elapsed());
        if applied.diff.add.len() != 1 || !applied.diff.remove.is_empty() {
            return Err(format!(
                "one more member, as a difference, changed {:?}",
                applied.diff
            ));
        }
        // ...and the interface is what the mesh says.
        let live =
            wireguard::read(interface, WireguardBackend::Userspace).map_err(|e| e.to_string())?;
        let peers = wireguard::resolve(&large.peers).map_err(|e| e.to_string())?;
        let drift = wireguard::drift(&large, &peers, &live);
        if !drift.is_empty() {
            return Err(format!("the difference left drift: {drift:?}"));
        }
    }
    let (f, o, n, d) = (median(full), median(one), median(none), median(since));
    println!(
        "apply on {interface} (boringtun): whole mesh, {} peers: {}   one added peer: {}   nothing to change: {}   one peer / whole mesh: {:.3}",
        members - 1,
        ms(f),
        ms(o),
        ms(n),
        o.as_secs_f64() / f.as_secs_f64()
    );
    println!(
        "apply one added peer as the difference from the last write (a running agent): {}   / whole mesh: {:.4}",
        ms(d),
        d.as_secs_f64() / f.as_secs_f64()
    );
    Ok(())
}
