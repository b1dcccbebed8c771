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

use gitfleet_schemas::state::MeshAllocation;
use gitfleet_schemas::status::{PeerStatus, StatusReport};
use gitfleet_schemas::trust::{BundleRef, PublicKey};
use gitfleet_schemas::verify::verify_status;
use gitfleet_tests::{bin, fleet, git, text};

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
    wireguard_key: Option<String>,
}

/// The namespaces, boringtun processes and agents of one test, removed on
/// drop; and the fleet repo (`work/`, pushed to `fleet.git`) that
/// `gitfleet reconcile` turns into the mesh the agents apply.
struct Lab {
    dir: tempfile::TempDir,
    boringtun: PathBuf,
    members: Vec<Member>,
    namespaces: Vec<String>,
    /// boringtun processes and agents, by the child handle of their pid
    /// (`ip netns exec` execs the program, so the pid is the program's).
    children: Vec<Child>,
    sockets: Vec<PathBuf>,
}

/// The mesh every lab's fleet repo starts from.
const MESH: &str = r#"version 1
cidr "10.77.0.0/24"
members role="mesh"
listen-port 51820
persistent-keepalive "25s"
"#;

impl Lab {
    /// Hosts `names`, the first holding the bridge the others hang off.
    fn new(names: &[&'static str]) -> Lab {
        let boringtun = preflight();
        let dir = tempfile::tempdir().unwrap();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let tag = format!("{:06x}", (nanos ^ std::process::id()) & 0xff_ffff);
        let members = names
            .iter()
            .zip(1u8..)
            .map(|(name, n)| Member {
                name,
                netns: format!("gf-{tag}-{name}"),
                // Unique per run: the control sockets share one directory.
                interface: format!("wg{tag}-{name}"),
                underlay: format!("192.168.77.{n}"),
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
        };
        lab.network();
        std::fs::create_dir_all(lab.path("store/channels")).unwrap();
        lab
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn member(&self, name: &str) -> &Member {
        self.members.iter().find(|m| m.name == name).unwrap()
    }

    /// The first host holds a bridge; the others hang off it by veth
    /// pairs created inside the namespaces (nothing is ever created in the
    /// host's namespace).
    fn network(&mut self) {
        for m in &self.members {
            ip(&["netns", "add", &m.netns]);
            self.namespaces.push(m.netns.clone());
            ip(&["-n", &m.netns, "link", "set", "lo", "up"]);
        }
        let first = &self.members[0];
        let a = first.netns.clone();
        ip(&["-n", &a, "link", "add", "br0", "type", "bridge"]);
        let address = format!("{}/24", first.underlay);
        ip(&["-n", &a, "address", "add", &address, "dev", "br0"]);
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
        let first = self.members[0].name;
        for m in &self.members[1..] {
            self.ping(first, &m.underlay);
        }
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

    fn write_config(&self, name: &str, labels: &str) {
        let m = self.member(name);
        let config = format!(
            r#"version 1
node "node-{name}"
environment "prod"
labels {labels}
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

    /// Start `name`'s WireGuard and enroll its agent as a real node is:
    /// the agent makes its keys and prints the node file, which goes into
    /// the fleet repo's `nodes/` (committed by [`Lab::fleet`] or
    /// [`Lab::push`]).
    fn join(&mut self, name: &'static str, labels: &str) {
        self.start_wireguard(name);
        self.write_config(name, labels);
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
        let nodes = self.path("work/nodes");
        std::fs::create_dir_all(&nodes).unwrap();
        std::fs::write(nodes.join(format!("node-{name}.kdl")), stdout).unwrap();
        self.members
            .iter_mut()
            .find(|m| m.name == name)
            .unwrap()
            .wireguard_key = Some(key);
    }

    /// The fleet's keys (`fleet_keys`: the root every agent pins), made
    /// before any agent enrolls.
    fn keys(&self) -> String {
        gitfleet_tests::fleet_keys(self.dir.path(), "acme")
    }

    /// The fleet repo: fleet.kdl, one environment, `mesh` as meshes/lab.kdl
    /// rolled out to all members at once, and the enrolled nodes; checked,
    /// committed and pushed to `fleet.git`.
    fn fleet(&self, root_key: &str, mesh: &str) {
        let work = self.path("work");
        std::fs::create_dir_all(work.join("meshes")).unwrap();
        std::fs::create_dir_all(work.join("rollouts")).unwrap();
        std::fs::write(
            work.join("fleet.kdl"),
            format!(
                "version 1\nname \"acme\"\nstore \"file://{}\"\ntrust threshold=1 {{\n    root-key \"{root_key}\"\n}}\n",
                self.path("store").display()
            ),
        )
        .unwrap();
        std::fs::write(
            work.join("environments.kdl"),
            "version 1\nenvironment \"prod\"\n",
        )
        .unwrap();
        std::fs::write(work.join("meshes/lab.kdl"), mesh).unwrap();
        std::fs::write(
            work.join("rollouts/lab.kdl"),
            "version 1\nmesh \"lab\"\nselector role=\"mesh\"\nmax-unavailable 10\nstep percent=100\n",
        )
        .unwrap();
        gitfleet_tests::commit_fleet(self.dir.path(), &work, "fleet.git");
    }

    /// Write `files` (relative to the fleet repo) and push them as one
    /// commit.
    fn push(&self, files: &[(&str, &str)], message: &str) {
        let work = self.path("work");
        for (file, text) in files {
            std::fs::write(work.join(file), text).unwrap();
        }
        git(&work, &["add", "-A"]);
        git(&work, &["commit", "-qm", message]);
        git(&work, &["push", "-q", "origin", "main"]);
    }

    fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.path("work").join(file)).unwrap()
    }

    /// One `gitfleet reconcile --once` pass over `fleet.git`; its output.
    fn reconcile(&self) -> String {
        let out = Command::new(bin("gitfleet"))
            .args(["reconcile", "--once", "--repo"])
            .arg(self.path("fleet.git"))
            .arg("--store")
            .arg(format!("file://{}", self.path("store").display()))
            .arg("--online-key")
            .arg(self.path("online.key"))
            .arg("--cache")
            .arg(self.path("mirror"))
            .args(["--holder", "lab"])
            .output()
            .unwrap();
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{stdout}{stderr}");
        stdout
    }

    /// A pass that uploads a new mesh bundle, then one poll of each of
    /// `names`: what each wrote to its interface.
    fn roll_out(&self, names: &[&str]) -> BTreeMap<String, Option<serde_json::Value>> {
        let out = self.reconcile();
        assert!(
            out.contains("uploaded bundle"),
            "no new mesh bundle:\n{out}"
        );
        names
            .iter()
            .map(|n| ((*n).to_owned(), self.poll(n)))
            .collect()
    }

    /// `name`'s tunnel address, as the reconciler allocated it.
    fn tunnel(&self, name: &str) -> String {
        let text = git(
            &self.path("fleet.git"),
            &["show", "gitfleet/state:meshes/lab.json"],
        );
        let allocation: MeshAllocation = serde_json::from_str(&text).unwrap();
        allocation.addresses[&format!("node-{name}")].to_string()
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
    /// packet may wait for a handshake); what ping printed.
    fn ping(&self, from: &str, to: &str) -> String {
        let mut last = None;
        for _ in 0..5 {
            let out = Command::new("ip")
                .args(["netns", "exec", &self.member(from).netns])
                .args(["ping", "-c1", "-W2", to])
                .output()
                .unwrap();
            if out.status.success() {
                return String::from_utf8_lossy(&out.stdout).into_owned();
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

    /// Where `from`'s kernel sends a packet for `to` (`ip route get`), or
    /// the error when it has no route.
    fn route(&self, from: &str, to: &str) -> Result<String, String> {
        let out = Command::new("ip")
            .args(["-n", &self.member(from).netns, "route", "get", to])
            .output()
            .unwrap();
        let (stdout, stderr) = text(&out);
        if out.status.success() {
            Ok(stdout)
        } else {
            Err(stderr)
        }
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

/// The fields of an agent's "wireguard interface configured" event.
fn wrote<'a>(
    all: &'a BTreeMap<String, Option<serde_json::Value>>,
    name: &str,
) -> &'a serde_json::Value {
    all[name]
        .as_ref()
        .unwrap_or_else(|| panic!("{name} did not configure its interface: {all:?}"))
}

const MEMBER: &str = r#"role="mesh""#;

/// A lab of hosts `names` whose `members` joined (as plain members) a
/// fleet repo holding `mesh`, pushed, before any pass.
fn mesh_lab(names: &[&'static str], members: &[&'static str], mesh: &str) -> Lab {
    let mut lab = Lab::new(names);
    let root_key = lab.keys();
    for name in members {
        lab.join(name, MEMBER);
    }
    lab.fleet(&root_key, mesh);
    lab
}

/// Test 1: a full mesh of three from a push; every pair pings; a fourth
/// member pushed later becomes reachable while the others only add it:
/// their sessions (handshake, counters) carry on.
#[test]
fn a_pushed_full_mesh_connects_every_pair_and_a_fourth_member_leaves_sessions_alone() {
    let mut lab = mesh_lab(&["a", "b", "c", "d"], &["a", "b", "c"], MESH);
    let first = lab.roll_out(&["a", "b", "c"]);
    for name in ["a", "b", "c"] {
        let w = wrote(&first, name);
        assert_eq!(w["added"], 2, "{name}: {w}");
        for field in ["private_key", "address", "link_up"] {
            assert_eq!(w[field], true, "{name}: {w}");
        }
        assert_eq!(w["routes"], false, "{name}: {w}");
    }
    for from in ["a", "b", "c"] {
        for to in ["a", "b", "c"].into_iter().filter(|t| *t != from) {
            lab.ping(from, &lab.tunnel(to));
        }
    }

    // The next poll reports the live session and changes nothing.
    assert_eq!(lab.poll("a"), None, "an unchanged mesh writes nothing");
    let report = lab.report("a");
    let v1 = report.rollouts["lab"].active.clone().unwrap();
    assert_eq!(report.rollouts["lab"].error, None);
    assert!(report.drift.is_empty(), "{:?}", report.drift);
    let wg = report.wireguard.clone().unwrap();
    assert_eq!(wg.interface, lab.member("a").interface);
    assert_eq!(wg.listen_port, Some(PORT));
    assert_eq!(
        wg.public_key,
        lab.member("a").wireguard_key.clone().unwrap()
    );
    assert_eq!(wg.peers.len(), 2);
    let before = lab.peer("a", "b");
    assert_eq!(before.endpoint.as_deref(), Some("192.168.77.2:51820"));
    assert_eq!(before.allowed_ips, [format!("{}/32", lab.tunnel("b"))]);
    assert_eq!(before.persistent_keepalive_seconds, Some(25));
    assert!(before.rx_bytes > 0 && before.tx_bytes > 0, "{before:?}");
    let handshake = before.latest_handshake.expect("a handshake with b");

    // d joins by a push of its node file: the others add one peer each.
    lab.join("d", MEMBER);
    lab.push(&[], "node-d joins the mesh");
    let second = lab.roll_out(&["a", "b", "c", "d"]);
    for name in ["a", "b", "c"] {
        let w = wrote(&second, name);
        for (field, value) in [
            ("added", 1),
            ("changed", 0),
            ("removed", 0),
            ("unchanged", 2),
        ] {
            assert_eq!(w[field], value, "{name}: {w}");
        }
        for field in ["private_key", "listen_port", "address", "link_up"] {
            assert_eq!(w[field], false, "{name}: {w}");
        }
    }
    assert_eq!(wrote(&second, "d")["added"], 3);

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
    assert_ne!(report.rollouts["lab"].active, Some(v1.clone()));
    assert_eq!(report.rollouts["lab"].previous, Some(v1));
    assert_eq!(report.wireguard.unwrap().peers.len(), 3);

    // d is reachable from everyone, and reaches everyone.
    for other in ["a", "b", "c"] {
        lab.ping(other, &lab.tunnel("d"));
        lab.ping("d", &lab.tunnel(other));
    }
    lab.ping("a", &lab.tunnel("b"));
    assert_eq!(lab.poll("a"), None);
    let later = lab.peer("a", "b");
    assert!(
        later.rx_bytes > after.rx_bytes && later.tx_bytes > after.tx_bytes,
        "the a–b session carries the ping: {after:?} then {later:?}"
    );
}

/// Test 2: hub-and-spoke from a push. Each spoke's interface has one peer,
/// the hub, which turns on forwarding; a ping between the spokes comes
/// back with one hop spent (TTL 63) and shows on the hub's counters of
/// both spokes.
#[test]
fn spokes_of_a_pushed_hub_and_spoke_mesh_reach_each_other_through_the_hub() {
    let mut lab = Lab::new(&["hub", "sa", "sb"]);
    let root_key = lab.keys();
    lab.join("hub", r#"role="mesh" hub="yes""#);
    lab.join("sa", MEMBER);
    lab.join("sb", MEMBER);
    lab.fleet(
        &root_key,
        &format!("{MESH}topology \"hub-and-spoke\"\nhubs hub=\"yes\"\n"),
    );
    let first = lab.roll_out(&["hub", "sa", "sb"]);
    assert_eq!(wrote(&first, "hub")["added"], 2);
    assert_eq!(wrote(&first, "hub")["forwarding"], true);
    for spoke in ["sa", "sb"] {
        let w = wrote(&first, spoke);
        assert_eq!(w["added"], 1, "{spoke}: {w}");
        assert_eq!(w["forwarding"], false, "{spoke}: {w}");
    }

    // A spoke knows only the hub, and routes the whole mesh to it.
    lab.ping("sa", &lab.tunnel("hub"));
    lab.ping("sb", &lab.tunnel("hub"));
    assert_eq!(lab.poll("sa"), None);
    let peers = lab.report("sa").wireguard.unwrap().peers;
    assert_eq!(peers.len(), 1, "{peers:?}");
    assert_eq!(
        Some(&peers[0].public_key),
        lab.member("hub").wireguard_key.as_ref()
    );
    assert!(
        peers[0].allowed_ips.contains(&"10.77.0.0/24".to_owned()),
        "{peers:?}"
    );

    assert_eq!(lab.poll("hub"), None);
    let (sa_before, sb_before) = (lab.peer("hub", "sa"), lab.peer("hub", "sb"));
    let out = lab.ping("sa", &lab.tunnel("sb"));
    assert!(
        out.contains("ttl=63"),
        "the reply should have crossed one router, the hub:\n{out}"
    );
    assert_eq!(lab.poll("hub"), None);
    let (sa_after, sb_after) = (lab.peer("hub", "sa"), lab.peer("hub", "sb"));
    // An echo and its reply are 84 bytes of IP each, more in the tunnel.
    assert!(
        sa_after.rx_bytes >= sa_before.rx_bytes + 84
            && sb_after.tx_bytes >= sb_before.tx_bytes + 84,
        "the hub did not carry the ping: sa {sa_before:?} -> {sa_after:?}, sb {sb_before:?} -> {sb_after:?}"
    );
}

impl Lab {
    /// `gitfleet mesh client lab PEER --key PEER.key` in the fleet repo,
    /// after fetching the state branch; its stdout.
    fn mesh_client(&self, peer: &str, extra: &[&str]) -> String {
        let work = self.path("work");
        git(&work, &["fetch", "-q", "origin"]);
        let out = Command::new(bin("gitfleet"))
            .args(["mesh", "client", "lab", peer, "--key"])
            .arg(self.path(&format!("{peer}.key")))
            .arg("--repo")
            .arg(&work)
            .args(extra)
            .output()
            .unwrap();
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{stdout}{stderr}");
        stdout
    }

    /// Configure `name`'s interface from a wg-quick configuration, as
    /// wg-quick does: keys and peers over the control socket, the address
    /// on the link, a route for every allowed range outside it.
    fn wg_quick_up(&self, name: &str, config: &str) {
        let b64hex = |b64: &str| {
            use base64::Engine as _;
            hex(&base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .unwrap())
        };
        let mut uapi = String::new();
        let mut address: Option<ipnet::IpNet> = None;
        let mut ranges = Vec::new();
        for line in config.lines() {
            let Some((key, value)) = line.split_once(" = ") else {
                continue;
            };
            match key {
                "PrivateKey" => uapi.push_str(&format!("private_key={}\n", b64hex(value))),
                "Address" => address = Some(value.parse().unwrap()),
                "PublicKey" => uapi.push_str(&format!("public_key={}\n", b64hex(value))),
                "Endpoint" => uapi.push_str(&format!("endpoint={value}\n")),
                "PersistentKeepalive" => {
                    uapi.push_str(&format!("persistent_keepalive_interval={value}\n"));
                }
                "AllowedIPs" => {
                    for range in value.split(", ") {
                        uapi.push_str(&format!("allowed_ip={range}\n"));
                        ranges.push(range.parse::<ipnet::IpNet>().unwrap());
                    }
                }
                other => panic!("unexpected `{other}` in:\n{config}"),
            }
        }
        self.uapi_set(name, &format!("replace_peers=true\n{uapi}"));
        let m = self.member(name);
        let address = address.unwrap_or_else(|| panic!("no Address in:\n{config}"));
        ip(&[
            "-n",
            &m.netns,
            "address",
            "add",
            &address.to_string(),
            "dev",
            &m.interface,
        ]);
        ip(&["-n", &m.netns, "link", "set", &m.interface, "up"]);
        for range in ranges.iter().filter(|r| !address.contains(*r)) {
            ip(&[
                "-n",
                &m.netns,
                "route",
                "replace",
                &range.to_string(),
                "dev",
                &m.interface,
            ]);
        }
    }
}

/// Test 3: an external peer (no agent, no node file) joins by the line
/// `gitfleet mesh client` prints; once pushed and rolled out, the members
/// add it, and the configuration the same command prints is all it takes
/// to reach them.
#[test]
fn an_external_peer_configured_from_mesh_client_output_reaches_the_members() {
    let mut lab = Lab::new(&["a", "b", "x"]);
    let root_key = lab.keys();
    lab.join("a", MEMBER);
    lab.join("b", MEMBER);
    lab.start_wireguard("x");
    lab.fleet(&root_key, MESH);
    lab.roll_out(&["a", "b"]);
    lab.ping("a", &lab.tunnel("b"));

    let line = lab.mesh_client("laptop", &[]);
    assert!(line.starts_with("peer \"laptop\" public-key=\""), "{line}");
    assert!(line.contains("address=\"10.77.0.254\""), "{line}");
    let mode = std::fs::metadata(lab.path("laptop.key"))
        .unwrap()
        .permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600
    );
    let mesh = lab.read("meshes/lab.kdl") + &line;
    lab.push(&[("meshes/lab.kdl", &mesh)], "laptop joins mesh lab");
    let second = lab.roll_out(&["a", "b"]);
    for name in ["a", "b"] {
        let w = wrote(&second, name);
        assert_eq!(w["added"], 1, "{name}: {w}");
        assert_eq!(w["unchanged"], 1, "{name}: {w}");
    }

    let conf = lab.path("laptop.conf");
    lab.mesh_client("laptop", &["-o", conf.to_str().unwrap()]);
    let mode = std::fs::metadata(&conf).unwrap().permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600,
        "the configuration holds the private key"
    );
    let config = std::fs::read_to_string(&conf).unwrap();
    assert!(config.contains("Address = 10.77.0.254/24"), "{config}");
    assert!(
        config.contains(&format!("Endpoint = {}:{PORT}", lab.member("a").underlay)),
        "{config}"
    );
    lab.wg_quick_up("x", &config);
    lab.ping("x", &lab.tunnel("a"));
    lab.ping("x", &lab.tunnel("b"));
    lab.ping("a", "10.77.0.254");
    // The members show the laptop's session.
    assert_eq!(lab.poll("a"), None);
    let peers = lab.report("a").wireguard.unwrap().peers;
    let laptop = peers
        .iter()
        .find(|p| p.allowed_ips == ["10.77.0.254/32"])
        .unwrap_or_else(|| panic!("a reports no laptop peer: {peers:?}"));
    assert!(laptop.latest_handshake.is_some(), "{laptop:?}");
    // `gitfleet status --mesh` names it, as the pages do.
    let out = Command::new(bin("gitfleet"))
        .args(["status", "--repo"])
        .arg(lab.path("fleet.git"))
        .arg("--store")
        .arg(format!("file://{}", lab.path("store").display()))
        .arg("--cache")
        .arg(lab.path("status-mirror"))
        .args(["--mesh", "lab"])
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    let line = stdout
        .lines()
        .find(|l| l.contains("laptop"))
        .unwrap_or_else(|| panic!("no laptop in:\n{stdout}{stderr}"));
    assert!(
        !line.contains(&laptop.public_key),
        "named, not keyed: {line}"
    );
}

/// Test 4: a member announces a subnet it serves (`routes` in its node
/// file); the others route it to their interface and reach a host there
/// (its own namespace behind b, on a link only b has) through that
/// member, which forwards. The route goes when the announcement does.
#[test]
fn a_prefix_routed_behind_a_member_becomes_reachable_from_another() {
    let lab = mesh_lab(&["a", "b", "h"], &["a", "b"], MESH);
    lab.roll_out(&["a", "b"]);
    lab.ping("a", &lab.tunnel("b"));
    // The subnet behind b: host h on a link of b's, 10.20.0.0/24, its
    // route back through b. b forwards what comes back from its subnet,
    // as a node serving one is set up to; the agent turns on forwarding
    // from the mesh.
    let (b, h) = (lab.member("b").netns.clone(), lab.member("h").netns.clone());
    ip(&[
        "-n", &b, "link", "add", "lan0", "type", "veth", "peer", "name", "lan0", "netns", &h,
    ]);
    ip(&["-n", &b, "address", "add", "10.20.0.2/24", "dev", "lan0"]);
    ip(&["-n", &b, "link", "set", "lan0", "up"]);
    ip(&["-n", &h, "address", "add", "10.20.0.1/24", "dev", "lan0"]);
    ip(&["-n", &h, "link", "set", "lan0", "up"]);
    ip(&["-n", &h, "route", "add", "10.77.0.0/24", "via", "10.20.0.2"]);
    run(Command::new("ip").args([
        "netns",
        "exec",
        &b,
        "sysctl",
        "-qw",
        "net.ipv4.conf.lan0.forwarding=1",
    ]));
    assert!(lab.route("a", "10.20.0.1").is_err(), "a has no route yet");

    let plain = lab.read("nodes/node-b.kdl");
    let endpoint = format!("endpoint=\"{}:{PORT}\"", lab.member("b").underlay);
    let announced = plain.replace(
        &endpoint,
        &format!("{endpoint} {{\n    routes \"10.20.0.0/16\"\n}}"),
    );
    assert_ne!(announced, plain);
    lab.push(&[("nodes/node-b.kdl", &announced)], "b serves 10.20.0.0/16");
    let second = lab.roll_out(&["a", "b"]);
    let w = wrote(&second, "a");
    assert_eq!(w["changed"], 1, "{w}");
    assert_eq!(w["routes"], true, "{w}");
    assert_eq!(wrote(&second, "b")["forwarding"], true);
    let route = lab.route("a", "10.20.0.1").unwrap();
    assert!(
        route.contains(&format!("dev {}", lab.member("a").interface)),
        "{route}"
    );
    lab.ping("a", "10.20.0.1");
    assert_eq!(lab.poll("a"), None);
    let peer = lab.peer("a", "b");
    assert!(
        peer.allowed_ips.contains(&"10.20.0.0/16".to_owned()),
        "{peer:?}"
    );
    // A route taken away behind the agent's back is drift.
    assert!(lab.report("a").drift.is_empty());
    let interface = lab.member("a").interface.clone();
    ip(&[
        "-n",
        &lab.member("a").netns,
        "route",
        "del",
        "10.20.0.0/16",
        "dev",
        &interface,
    ]);
    assert_eq!(lab.poll("a"), None);
    let drift = lab.report("a").drift;
    assert!(
        drift
            .iter()
            .any(|d| d.path == format!("wireguard/{interface}/routes")),
        "{drift:?}"
    );
    ip(&[
        "-n",
        &lab.member("a").netns,
        "route",
        "add",
        "10.20.0.0/16",
        "dev",
        &interface,
        "proto",
        "173",
    ]);

    // Withdrawn: the route and the allowed range go.
    lab.push(
        &[("nodes/node-b.kdl", &plain)],
        "b no longer serves 10.20.0.0/16",
    );
    let third = lab.roll_out(&["a", "b"]);
    assert_eq!(wrote(&third, "a")["routes"], true);
    assert!(lab.route("a", "10.20.0.1").is_err(), "the route stayed");
}

/// Test 5: key rotation. c makes a new key (`gitfleet-agent rotate-key`),
/// its signed report carries the request, the operator's push lists the
/// new key, and c switches when the mesh names it: a and b replace that
/// one peer, and the a–b session carries on untouched.
#[test]
fn a_member_rotating_its_key_keeps_the_other_pairs_sessions() {
    let mut lab = mesh_lab(&["a", "b", "c"], &["a", "b", "c"], MESH);
    lab.roll_out(&["a", "b", "c"]);
    for (from, to) in [("a", "b"), ("a", "c"), ("b", "c")] {
        lab.ping(from, &lab.tunnel(to));
    }
    assert_eq!(lab.poll("a"), None);
    let before = lab.peer("a", "b");
    let handshake = before.latest_handshake.expect("a handshake with b");

    // c asks for a new key; its next report carries the request.
    let old = lab.member("c").wireguard_key.clone().unwrap();
    let out = run(lab.agent("c").arg("rotate-key"));
    let new = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert_ne!(new, old);
    assert_eq!(
        lab.poll("c"),
        None,
        "nothing changes until the repo says so"
    );
    let wg = lab.report("c").wireguard.unwrap();
    assert_eq!(wg.public_key, old);
    assert_eq!(wg.next_public_key.as_deref(), Some(new.as_str()));

    // The operator's change: c's node file lists the new key.
    let file = lab.read("nodes/node-c.kdl");
    assert!(file.contains(&old), "{file}");
    lab.push(
        &[("nodes/node-c.kdl", &file.replace(&old, &new))],
        "rotate node-c's wireguard key",
    );
    let rotated = lab.roll_out(&["a", "b", "c"]);
    for name in ["a", "b"] {
        let w = wrote(&rotated, name);
        for (field, value) in [("added", 1), ("removed", 1), ("unchanged", 1)] {
            assert_eq!(w[field], value, "{name}: {w}");
        }
    }
    let w = wrote(&rotated, "c");
    assert_eq!(w["private_key"], true, "{w}");
    assert_eq!(w["unchanged"], 2, "{w}");
    lab.members
        .iter_mut()
        .find(|m| m.name == "c")
        .unwrap()
        .wireguard_key = Some(new.clone());

    for (from, to) in [("a", "c"), ("b", "c"), ("c", "a")] {
        lab.ping(from, &lab.tunnel(to));
    }
    assert_eq!(lab.poll("c"), None);
    let wg = lab.report("c").wireguard.unwrap();
    assert_eq!(wg.public_key, new);
    assert_eq!(wg.next_public_key, None, "the rotation is done");
    assert_eq!(lab.poll("a"), None);
    let after = lab.peer("a", "b");
    let moved = (after.latest_handshake.unwrap() - handshake)
        .num_seconds()
        .abs();
    assert!(
        moved <= 2,
        "the a–b session was touched: {before:?} then {after:?}"
    );
    assert!(
        after.rx_bytes >= before.rx_bytes && after.tx_bytes >= before.tx_bytes,
        "a's counters for b went back: {before:?} then {after:?}"
    );
}

/// The "wireguard interface configured" events in an agent's JSON log.
fn configured_events(log: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["fields"]["message"] == "wireguard interface configured")
        .map(|e| e["fields"].clone())
        .collect()
}

/// A long-running agent writes its first mesh against the interface read
/// whole, and the next one as the difference from what it wrote (Tailscale
/// style: one added peer is one write, whatever the mesh's size); the
/// drift check, which reads the interface, finds it as the mesh says.
#[test]
fn a_running_agent_writes_the_next_mesh_as_a_difference_and_it_matches_the_interface() {
    let mut lab = mesh_lab(&["a", "b", "c"], &["a", "b"], MESH);
    let log = lab.path("agent-a.log");
    let agent = lab
        .agent("a")
        .arg("run")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(&log).unwrap())
        .spawn()
        .unwrap();
    lab.children.push(agent);
    let wait_for = |n: usize| {
        let start = Instant::now();
        loop {
            let events = configured_events(&log);
            if events.len() >= n {
                return events;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "agent a configured {} time(s), not {n}; log:\n{}",
                events.len(),
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    lab.reconcile();
    lab.poll("b");
    let first = wait_for(1);
    assert_eq!(first[0]["read_live"], true, "{first:?}");
    lab.ping("a", &lab.tunnel("b"));

    lab.join("c", MEMBER);
    lab.push(&[], "node-c joins");
    lab.reconcile();
    lab.poll("b");
    lab.poll("c");
    let second = wait_for(2);
    let w = &second[1];
    assert_eq!(w["read_live"], false, "{w}");
    assert_eq!(w["added"], 1, "{w}");
    assert_eq!(w["unchanged"], 1, "{w}");
    lab.ping("a", &lab.tunnel("c"));
    lab.ping("a", &lab.tunnel("b"));
    // The agent's own drift check reads the interface: nothing differs.
    let start = Instant::now();
    loop {
        let report = lab.report("a");
        let peers = report.wireguard.as_ref().map_or(0, |w| w.peers.len());
        if peers == 2 && report.rollouts["lab"].active.is_some() {
            assert!(report.drift.is_empty(), "{:?}", report.drift);
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "a never reported both peers: {report:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // And it does read it: a peer removed behind the agent's back is drift.
    let b_key = {
        use base64::Engine as _;
        let key = lab.member("b").wireguard_key.clone().unwrap();
        hex(&base64::engine::general_purpose::STANDARD
            .decode(key)
            .unwrap())
    };
    lab.uapi_set("a", &format!("public_key={b_key}\nremove=true\n"));
    let start = Instant::now();
    loop {
        let drift = lab.report("a").drift;
        if drift.iter().any(|d| d.path.contains("/peers/")) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the removed peer never showed as drift: {drift:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Monitor mode: interfaces configured by hand (keys and peers never in
/// git or a bundle) over boringtun's control socket. An agent that only
/// monitors a's interface reports its peer with handshake, traffic and rates
/// between reports; once b's underlay is down and the handshake is older
/// than `stale-after` (20 s here; WireGuard itself re-handshakes only
/// every 2 minutes), the peer is reported stale.
#[test]
fn a_monitored_hand_configured_interface_reports_its_peer_and_marks_it_stale() {
    let mut lab = Lab::new(&["a", "b"]);
    // The tests' fleet root: the manifest below is signed by its keys.
    std::fs::write(lab.path("root-1.json"), fleet::root_bytes()).unwrap();
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
        let address = format!(
            "{}/24",
            if name == "a" {
                "10.77.0.1"
            } else {
                "10.77.0.2"
            }
        );
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
