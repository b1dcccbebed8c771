#![allow(clippy::unwrap_used)]
//! Real userspace WireGuard: three network namespaces this test creates,
//! joined by veth pairs on a bridge (192.168.77.0/24), each running a
//! `boringtun-cli` interface (`wg<run>-a`, `-b`, `-c`) that a real
//! `gitfleet-agent` configures from a signed mesh bundle in a shared
//! `file://` store.
//!
//! A mesh of a and b carries a ping across the tunnel; a new mesh that adds
//! c makes c reachable without touching the a–b peers: their handshake and
//! counters, read from the agents' signed status reports, carry on.
//!
//! Needs root, /dev/net/tun, `ip` (iproute2), `ping` (iputils-ping) and
//! `boringtun-cli` (`cargo install boringtun-cli --locked`); a missing one
//! fails the test with how to install it. Only the namespaces the test
//! created are ever configured; they, and the processes it started (by
//! pid), are removed when it ends, however it ends.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use gitfleet_policy::bundle::{self, Input};
use gitfleet_schemas::bundle::{BundleKind, MeshBundle, MeshMember, MESH_FORMAT};
use gitfleet_schemas::status::{PeerStatus, StatusReport};
use gitfleet_schemas::trust::{BundleRef, PublicKey};
use gitfleet_schemas::verify::verify_status;
use gitfleet_tests::{bin, fleet};

const PORT: u16 = 51820;

/// `boringtun-cli`: `$GITFLEET_BORINGTUN`, cargo's bin directory, or PATH.
fn boringtun() -> PathBuf {
    gitfleet_io::tools::Tool::Boringtun.require()
}

/// Fail, saying what to install, when the host cannot run this test.
fn preflight() -> PathBuf {
    let runs = |program: &str, arg: &str| {
        Command::new(program)
            .arg(arg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    assert!(
        runs("ip", "-V"),
        "the WireGuard end-to-end test needs `ip`: apt-get install --no-install-recommends iproute2"
    );
    assert!(
        runs("ping", "-V"),
        "the WireGuard end-to-end test needs `ping`: apt-get install --no-install-recommends iputils-ping"
    );
    let uid = Command::new("id").arg("-u").output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&uid.stdout).trim(),
        "0",
        "the WireGuard end-to-end test creates network namespaces and TUN devices: run it as root"
    );
    assert!(
        Path::new("/dev/net/tun").exists(),
        "the WireGuard end-to-end test needs /dev/net/tun (a container needs --device /dev/net/tun)"
    );
    let boringtun = boringtun();
    let version = Command::new(&boringtun).arg("--version").output().unwrap();
    assert!(
        version.status.success(),
        "{} --version failed: reinstall with `cargo install boringtun-cli --locked`",
        boringtun.display()
    );
    boringtun
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn ip(args: &[&str]) {
    run(Command::new("ip").args(args));
}

/// One node of the lab: its namespace, interface and agent files.
struct Member {
    name: &'static str,
    netns: String,
    interface: String,
    underlay: String,
    tunnel: String,
    wireguard_key: Option<String>,
}

/// The namespaces, boringtun processes and agents of one test, removed on
/// drop.
struct Lab {
    dir: tempfile::TempDir,
    boringtun: PathBuf,
    members: Vec<Member>,
    namespaces: Vec<String>,
    /// boringtun processes, by the child handle of their pid (`ip netns
    /// exec` execs the program, so the pid is boringtun's).
    children: Vec<Child>,
    sockets: Vec<PathBuf>,
    serial: u64,
    previous: Option<BundleRef>,
}

impl Lab {
    fn new() -> Lab {
        let boringtun = preflight();
        let dir = tempfile::tempdir().unwrap();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let tag = format!("{:06x}", (nanos ^ std::process::id()) & 0xff_ffff);
        let members = ["a", "b", "c"]
            .iter()
            .zip(1u8..)
            .map(|(name, n)| Member {
                name,
                netns: format!("gf-{tag}-{name}"),
                // Unique per run: the control sockets share one directory.
                interface: format!("wg{tag}-{name}"),
                underlay: format!("192.168.77.{n}"),
                tunnel: format!("10.77.0.{n}"),
                wireguard_key: None,
            })
            .collect();
        let mut lab = Lab {
            dir,
            boringtun,
            members,
            namespaces: Vec::new(),
            children: Vec::new(),
            sockets: Vec::new(),
            serial: 0,
            previous: None,
        };
        lab.network();
        lab.trust();
        lab
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn member(&self, name: &str) -> &Member {
        self.members.iter().find(|m| m.name == name).unwrap()
    }

    /// a holds a bridge; b and c hang off it by veth pairs created inside
    /// the namespaces (nothing is ever created in the host's namespace).
    fn network(&mut self) {
        for m in &self.members {
            ip(&["netns", "add", &m.netns]);
            self.namespaces.push(m.netns.clone());
            ip(&["-n", &m.netns, "link", "set", "lo", "up"]);
        }
        let a = self.members[0].netns.clone();
        ip(&["-n", &a, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &a, "address", "add", "192.168.77.1/24", "dev", "br0"]);
        ip(&["-n", &a, "link", "set", "br0", "up"]);
        for m in &self.members[1..] {
            let port = format!("to-{}", m.name);
            ip(&[
                "-n", &a, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
                &m.netns,
            ]);
            ip(&["-n", &a, "link", "set", &port, "master", "br0", "up"]);
            let address = format!("{}/24", m.underlay);
            ip(&["-n", &m.netns, "address", "add", &address, "dev", "eth0"]);
            ip(&["-n", &m.netns, "link", "set", "eth0", "up"]);
        }
        for m in &self.members[1..] {
            self.ping("a", &m.underlay);
        }
    }

    /// The fleet's root, pinned by every agent, and the store.
    fn trust(&self) {
        std::fs::create_dir_all(self.path("store/channels")).unwrap();
        std::fs::write(self.path("root-1.json"), fleet::root_bytes()).unwrap();
    }

    /// Start boringtun for `name`'s interface in its namespace and wait for
    /// its control socket.
    fn start_wireguard(&mut self, name: &str) {
        let m = self.member(name);
        let (netns, interface) = (m.netns.clone(), m.interface.clone());
        let socket = PathBuf::from(format!("/var/run/wireguard/{interface}.sock"));
        if socket.exists() {
            assert!(
                UnixStream::connect(&socket).is_err(),
                "{} is live: another userspace WireGuard runs {interface} (a concurrent run of this test?)",
                socket.display()
            );
            // Left by a boringtun that was killed; it would be replaced anyway.
            std::fs::remove_file(&socket).unwrap();
        }
        let log = File::create(self.path(&format!("boringtun-{name}.log"))).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &netns])
            .arg(&self.boringtun)
            .args([
                "--foreground",
                "--disable-drop-privileges",
                "--threads",
                "1",
            ])
            .args(["--verbosity", "info"])
            .arg(&interface)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.children.push(child);
        self.sockets.push(socket.clone());
        let start = Instant::now();
        while UnixStream::connect(&socket).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "boringtun did not open {} in 10s; log:\n{}",
                socket.display(),
                std::fs::read_to_string(self.path(&format!("boringtun-{name}.log")))
                    .unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn write_config(&self, name: &str) {
        let m = self.member(name);
        let config = format!(
            r#"version 1
node "node-{name}"
environment "prod"
labels role="mesh"
store "file://{store}"
state-dir "{state}"
poll "200ms" jitter="0ms"
wireguard {{
    interface "{interface}"
    backend "userspace"
}}
"#,
            store = self.path("store").display(),
            state = self.path(&format!("state-{name}")).display(),
            interface = m.interface,
        );
        std::fs::write(self.path(&format!("agent-{name}.kdl")), config).unwrap();
    }

    fn agent(&self, name: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.member(name).netns])
            .arg(bin("gitfleet-agent"))
            .arg("-c")
            .arg(self.path(&format!("agent-{name}.kdl")))
            .args(["--log-format", "json"])
            .current_dir(self.dir.path());
        cmd
    }

    /// Enroll `name`: its WireGuard public key, from the nodes file it
    /// prints.
    fn enroll(&mut self, name: &str) {
        self.write_config(name);
        let endpoint = format!("{}:{PORT}", self.member(name).underlay);
        let root = self.path("root-1.json");
        let out = run(self
            .agent(name)
            .args(["enroll", "--root"])
            .arg(&root)
            .args(["--endpoint", &endpoint]));
        let stdout = String::from_utf8(out.stdout).unwrap();
        let line = stdout
            .lines()
            .find(|l| l.starts_with("wireguard public-key="))
            .unwrap_or_else(|| panic!("no wireguard line in:\n{stdout}"));
        let key = line
            .trim_start_matches("wireguard public-key=\"")
            .split('"')
            .next()
            .unwrap()
            .to_owned();
        assert!(line.contains(&format!("endpoint=\"{endpoint}\"")), "{line}");
        self.members
            .iter_mut()
            .find(|m| m.name == name)
            .unwrap()
            .wireguard_key = Some(key);
    }

    /// Build a mesh bundle of `names`, upload it and publish a manifest
    /// (next serial) that puts every node on it.
    fn publish(&mut self, names: &[&str]) -> BundleRef {
        let members = names
            .iter()
            .map(|n| {
                let m = self.member(n);
                MeshMember {
                    node: format!("node-{n}"),
                    public_key: m.wireguard_key.clone().unwrap(),
                    endpoint: Some(format!("{}:{PORT}", m.underlay)),
                    address: format!("{}/24", m.tunnel),
                    allowed_ips: vec![format!("{}/32", m.tunnel)],
                }
            })
            .collect();
        let mesh = MeshBundle {
            format: MESH_FORMAT,
            mesh: "lab".into(),
            interface: "wg-lab".into(),
            listen_port: Some(PORT),
            persistent_keepalive_seconds: Some(25),
            members,
        };
        let files = BTreeMap::from([(
            "mesh.json".to_owned(),
            serde_json::to_vec_pretty(&mesh).unwrap(),
        )]);
        let built = bundle::build(Input {
            kind: BundleKind::WireguardMesh,
            name: "lab",
            source_commit: &format!("{:040}", self.serial + 1),
            validator: "gitfleet mesh format 1",
            files: &files,
            sbom: b"{}".to_vec(),
        })
        .unwrap();
        self.serial += 1;
        let previous = self.previous.replace(built.reference.clone());
        let manifest = fleet::manifest_bytes(
            self.serial,
            "lab",
            &[("role", "mesh")],
            &built.reference,
            previous.as_ref(),
        );
        fleet::publish(&self.path("store"), &built, &manifest).unwrap();
        built.reference
    }

    /// One poll of `name`'s agent in its namespace: what it wrote to the
    /// interface (the fields of its "wireguard interface configured" event),
    /// if it wrote anything.
    fn poll(&self, name: &str) -> Option<serde_json::Value> {
        let out = run(self.agent(name).args(["run", "--once"]));
        let log = String::from_utf8_lossy(&out.stderr);
        let events: Vec<serde_json::Value> = log
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        let configured: Vec<&serde_json::Value> = events
            .iter()
            .filter(|e| e["fields"]["message"] == "wireguard interface configured")
            .map(|e| &e["fields"])
            .collect();
        assert!(configured.len() <= 1, "{name} configured twice:\n{log}");
        configured.first().map(|f| (*f).clone())
    }

    /// `name`'s last status report, verified with its node key.
    fn report(&self, name: &str) -> StatusReport {
        let text = std::fs::read_to_string(self.path(&format!("state-{name}/node.key"))).unwrap();
        let file: serde_json::Value = serde_json::from_str(&text).unwrap();
        let key = PublicKey::parse(file["public_key"].as_str().unwrap()).unwrap();
        let bytes = std::fs::read(self.path(&format!("store/status/node-{name}.json"))).unwrap();
        let node = format!("node-{name}");
        let verified = verify_status(&bytes, "acme", &node, &key).unwrap();
        (*verified).clone()
    }

    /// What `name`'s last report says about its peer `other`.
    fn peer(&self, name: &str, other: &str) -> PeerStatus {
        let report = self.report(name);
        let wg = report
            .wireguard
            .unwrap_or_else(|| panic!("node-{name} reports no wireguard interface"));
        let key = self.member(other).wireguard_key.clone().unwrap();
        wg.peers
            .into_iter()
            .find(|p| p.public_key == key)
            .unwrap_or_else(|| panic!("node-{name} reports no peer for node-{other}"))
    }

    /// `ping -c1 -W2` from `from`'s namespace, a few tries (the first
    /// packet may wait for a handshake).
    fn ping(&self, from: &str, to: &str) {
        let mut last = None;
        for _ in 0..5 {
            let out = Command::new("ip")
                .args(["netns", "exec", &self.member(from).netns])
                .args(["ping", "-c1", "-W2", to])
                .output()
                .unwrap();
            if out.status.success() {
                return;
            }
            last = Some(out);
        }
        let out = last.unwrap();
        panic!(
            "{from} cannot ping {to}:\n{}{}\nboringtun logs:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.logs()
        );
    }

    /// Configure `name`'s interface by hand over boringtun's control
    /// socket (the WireGuard cross-platform protocol: `set=1`, then
    /// `key=value` lines, then an empty line).
    fn uapi_set(&self, name: &str, lines: &str) {
        use std::io::{BufRead as _, Write as _};
        let socket = format!("/var/run/wireguard/{}.sock", self.member(name).interface);
        let mut stream = UnixStream::connect(&socket).unwrap();
        write!(stream, "set=1\n{lines}\n").unwrap();
        let mut answer = String::new();
        std::io::BufReader::new(&stream)
            .read_line(&mut answer)
            .unwrap();
        assert_eq!(answer.trim(), "errno=0", "{socket} refused:\n{lines}");
    }

    fn logs(&self) -> String {
        self.members
            .iter()
            .map(|m| {
                let log = std::fs::read_to_string(self.path(&format!("boringtun-{}.log", m.name)))
                    .unwrap_or_default();
                format!("--- {}:\n{log}", m.name)
            })
            .collect()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // The boringtun processes this test started, by pid: SIGTERM lets
        // them remove their sockets; SIGKILL if they do not go.
        for child in &mut self.children {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
        }
        for child in &mut self.children {
            let start = Instant::now();
            while matches!(child.try_wait(), Ok(None)) && start.elapsed() < Duration::from_secs(3) {
                std::thread::sleep(Duration::from_millis(20));
            }
            if matches!(child.try_wait(), Ok(None)) {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        for socket in &self.sockets {
            let _ = std::fs::remove_file(socket);
        }
        for netns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", netns]).status();
        }
    }
}

#[test]
fn agents_build_a_mesh_and_a_new_member_leaves_existing_peers_alone() {
    let mut lab = Lab::new();
    for name in ["a", "b", "c"] {
        lab.start_wireguard(name);
    }
    lab.enroll("a");
    lab.enroll("b");

    // A mesh of a and b: each agent configures its own interface.
    let v1 = lab.publish(&["a", "b"]);
    for name in ["a", "b"] {
        let wrote = lab
            .poll(name)
            .expect("the first mesh configures the interface");
        assert_eq!(wrote["added"], 1, "{name}: {wrote}");
        assert_eq!(wrote["private_key"], true, "{name}: {wrote}");
        assert_eq!(wrote["address"], true, "{name}: {wrote}");
        assert_eq!(wrote["link_up"], true, "{name}: {wrote}");
    }
    lab.ping("a", "10.77.0.2");
    lab.ping("b", "10.77.0.1");

    // The next poll reports the live session (and changes nothing).
    assert_eq!(lab.poll("a"), None, "an unchanged mesh writes nothing");
    let report = lab.report("a");
    assert_eq!(report.rollouts["lab"].active, Some(v1.clone()));
    assert_eq!(report.rollouts["lab"].error, None);
    assert!(report.drift.is_empty(), "{:?}", report.drift);
    let wg = report.wireguard.clone().unwrap();
    assert_eq!(wg.interface, lab.member("a").interface);
    assert_eq!(wg.listen_port, Some(PORT));
    assert_eq!(
        wg.public_key,
        lab.member("a").wireguard_key.clone().unwrap()
    );
    assert_eq!(wg.peers.len(), 1);
    let before = lab.peer("a", "b");
    assert_eq!(before.endpoint.as_deref(), Some("192.168.77.2:51820"));
    assert_eq!(before.allowed_ips, ["10.77.0.2/32"]);
    assert_eq!(before.persistent_keepalive_seconds, Some(25));
    assert!(before.rx_bytes > 0 && before.tx_bytes > 0, "{before:?}");
    let handshake = before.latest_handshake.expect("a handshake with b");

    // c joins: a and b each add one peer and leave the other alone.
    lab.enroll("c");
    let v2 = lab.publish(&["a", "b", "c"]);
    for name in ["a", "b"] {
        let wrote = lab.poll(name).expect("a new member is a new peer");
        for (field, value) in [
            ("added", 1),
            ("changed", 0),
            ("removed", 0),
            ("unchanged", 1),
        ] {
            assert_eq!(wrote[field], value, "{name}: {wrote}");
        }
        for field in ["private_key", "listen_port", "address", "link_up"] {
            assert_eq!(wrote[field], false, "{name}: {wrote}");
        }
    }
    let wrote = lab.poll("c").expect("c configures its interface");
    assert_eq!(wrote["added"], 2, "{wrote}");

    // The a–b session survived: same handshake, counters not reset.
    let after = lab.peer("a", "b");
    let moved = (after.latest_handshake.unwrap() - handshake)
        .num_seconds()
        .abs();
    assert!(
        moved <= 2,
        "the a–b handshake changed: {handshake} before, {:?} after",
        after.latest_handshake
    );
    assert!(
        after.rx_bytes >= before.rx_bytes && after.tx_bytes >= before.tx_bytes,
        "a's counters for b went back: {before:?} then {after:?}"
    );
    let report = lab.report("a");
    assert_eq!(report.rollouts["lab"].active, Some(v2.clone()));
    assert_eq!(report.rollouts["lab"].previous, Some(v1));
    assert_eq!(report.wireguard.unwrap().peers.len(), 2);
    assert!(report.drift.is_empty(), "{:?}", report.drift);

    // c is reachable from both, and reaches both.
    lab.ping("a", "10.77.0.3");
    lab.ping("b", "10.77.0.3");
    lab.ping("c", "10.77.0.1");
    lab.ping("c", "10.77.0.2");
    lab.ping("a", "10.77.0.2");
    assert_eq!(lab.poll("a"), None);
    let later = lab.peer("a", "b");
    assert!(
        later.rx_bytes > after.rx_bytes && later.tx_bytes > after.tx_bytes,
        "the a–b session carries the ping: {after:?} then {later:?}"
    );
    assert_eq!(lab.report("c").rollouts["lab"].active, Some(v2));
}

/// Monitor mode: interfaces configured by hand (keys and peers never in
/// git or a bundle) over boringtun's control socket. An agent that only
/// monitors a's interface reports its peer with handshake, traffic and rates
/// between reports; once b's underlay is down and the handshake is older
/// than `stale-after` (20 s here; WireGuard itself re-handshakes only
/// every 2 minutes), the peer is reported stale.
#[test]
fn a_monitored_hand_configured_interface_reports_its_peer_and_marks_it_stale() {
    let mut lab = Lab::new();
    lab.start_wireguard("a");
    lab.start_wireguard("b");
    let keys = |n: u8| {
        let private = gitfleet_agent::wireguard::PrivateKey::from_bytes([n; 32]);
        let mut clamped = [n; 32];
        clamped[0] &= 248;
        clamped[31] = (clamped[31] & 127) | 64;
        (hex(&clamped), private.public())
    };
    let (a_private, a_public) = keys(0x11);
    let (b_private, b_public) = keys(0x22);
    // An agent that manages nothing here and monitors a's interface.
    let config = format!(
        r#"version 1
node "node-a"
environment "prod"
labels role="monitor"
store "file://{store}"
state-dir "{state}"
poll "200ms" jitter="0ms"
heartbeat "1s"
monitor "{interface}" backend="userspace" stale-after="20s"
"#,
        interface = lab.member("a").interface,
        store = lab.path("store").display(),
        state = lab.path("state-a").display(),
    );
    std::fs::write(lab.path("agent-a.kdl"), config).unwrap();
    let root = lab.path("root-1.json");
    run(lab.agent("a").args(["enroll", "--root"]).arg(&root));
    // A manifest with nothing for this node: the agent polls and reports.
    let nothing = BundleRef {
        digest: format!("sha256:{}", "0".repeat(64)),
        length: 1,
    };
    let manifest = fleet::manifest_with(1, "none", &[("role", "none")], &nothing, None, |_| {});
    std::fs::write(lab.path("store/channels/prod.json"), manifest).unwrap();
    let agent = lab
        .agent("a")
        .arg("run")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(lab.path("agent-a.log")).unwrap())
        .spawn()
        .unwrap();
    lab.children.push(agent);

    for (name, private, peer, peer_underlay, peer_tunnel) in [
        ("a", &a_private, &b_public, "192.168.77.2", "10.77.0.2"),
        ("b", &b_private, &a_public, "192.168.77.1", "10.77.0.1"),
    ] {
        lab.uapi_set(
            name,
            &format!(
                "private_key={private}\nlisten_port={PORT}\nreplace_peers=true\npublic_key={}\nendpoint={peer_underlay}:{PORT}\nallowed_ip={peer_tunnel}/32\npersistent_keepalive_interval=1\n",
                hex(&peer.0)
            ),
        );
        let m = lab.member(name);
        let address = format!("{}/24", m.tunnel);
        ip(&[
            "-n",
            &m.netns,
            "address",
            "add",
            &address,
            "dev",
            &m.interface,
        ]);
        ip(&["-n", &m.netns, "link", "set", &m.interface, "up"]);
    }
    lab.ping("a", "10.77.0.2");

    let b_key = b_public.to_string();
    let monitored_peer = |lab: &Lab| -> Option<PeerStatus> {
        let bytes = std::fs::read(lab.path("store/status/node-a.json")).ok()?;
        let text = std::fs::read_to_string(lab.path("state-a/node.key")).ok()?;
        let file: serde_json::Value = serde_json::from_str(&text).ok()?;
        let key = PublicKey::parse(file["public_key"].as_str()?).ok()?;
        let report = verify_status(&bytes, "acme", "node-a", &key).ok()?;
        assert!(report.wireguard.is_none(), "nothing is managed here");
        let wg = report
            .monitored
            .iter()
            .find(|w| w.interface == lab.member("a").interface)?
            .clone();
        assert_eq!(wg.public_key, a_public.to_string());
        wg.peers.into_iter().find(|p| p.public_key == b_key)
    };
    let wait_for = |what: &str, ok: &dyn Fn(&PeerStatus) -> bool| -> PeerStatus {
        let start = Instant::now();
        loop {
            if let Some(p) = monitored_peer(&lab).filter(|p| ok(p)) {
                return p;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "no report showed {what}; last: {:?}\nagent log:\n{}",
                monitored_peer(&lab),
                std::fs::read_to_string(lab.path("agent-a.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    // Live: a recent handshake, traffic, and a rate from the second
    // reading on.
    let live = wait_for("a live peer with rates", &|p| {
        p.rx_bytes_per_second.is_some() && !p.stale
    });
    assert_eq!(live.endpoint.as_deref(), Some("192.168.77.2:51820"));
    assert_eq!(live.allowed_ips, ["10.77.0.2/32"]);
    assert!(live.rx_bytes > 0 && live.tx_bytes > 0, "{live:?}");
    assert!(live.latest_handshake.is_some(), "{live:?}");

    // b's endpoint goes away: no new handshake, and the peer goes stale.
    let b = lab.member("b").netns.clone();
    ip(&["-n", &b, "link", "set", "eth0", "down"]);
    let stale = wait_for("a stale peer", &|p| p.stale);
    // The same handshake, aged (boringtun says how long ago, so the time
    // it stands for wobbles by a little).
    let moved = (stale.latest_handshake.unwrap() - live.latest_handshake.unwrap())
        .num_seconds()
        .abs();
    assert!(moved <= 1, "a new handshake: {live:?} then {stale:?}");
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
