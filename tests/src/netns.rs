//! Network namespaces as test hosts: each simulated machine of a test gets
//! its own loopback, so several real proxies can run the same config (the
//! same `127.0.0.1:<port>` listener) side by side, as they would on
//! separate machines.
//!
//! A namespace is created with `ip netns add` and deleted when dropped.
//! Processes run in it through `ip netns exec` (which execs, so the child's
//! pid is the program's); test threads enter it with `setns` for their own
//! sockets. [`Netns::relay`] makes a port of the test's loopback (an S3
//! server, say) reachable on the namespace's loopback at the same port:
//! its listener is bound inside the namespace, and its connections are
//! dialled from outside.
//!
//! Needs root (CAP_SYS_ADMIN) and iproute2.

use std::fs::File;
use std::io;
use std::net::{Ipv4Addr, Shutdown, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use rustix::thread::{move_into_link_name_space, LinkNameSpaceType};

/// The namespace the test process started in, kept open to come back to.
fn home() -> &'static File {
    static HOME: OnceLock<File> = OnceLock::new();
    HOME.get_or_init(|| File::open("/proc/self/ns/net").expect("opening this process's netns"))
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("running ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Whether this process may create namespaces (runs as root).
pub fn available() -> bool {
    rustix::process::geteuid().is_root()
}

/// A network namespace this test created.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Create `name` (removing a leftover of that name from a killed run)
    /// with its loopback up.
    pub fn create(name: &str) -> Netns {
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        ip(&["netns", "add", name]);
        let ns = Netns {
            name: name.to_owned(),
        };
        ip(&["-n", name, "link", "set", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn path(&self) -> PathBuf {
        PathBuf::from("/var/run/netns").join(&self.name)
    }

    /// Move the calling thread into this namespace: sockets it opens from
    /// now on are the namespace's.
    pub fn enter(&self) -> io::Result<()> {
        let file = File::open(self.path())?;
        move_into_link_name_space(file.as_fd(), Some(LinkNameSpaceType::Network))?;
        Ok(())
    }

    /// Move the calling thread back to the test's own namespace.
    pub fn leave() -> io::Result<()> {
        move_into_link_name_space(home().as_fd(), Some(LinkNameSpaceType::Network))?;
        Ok(())
    }

    /// Run `f` on a new thread inside this namespace.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let path = self.path();
        // Open here, so a missing namespace fails the caller, not a thread.
        let file = File::open(&path).expect("opening the namespace");
        std::thread::spawn(move || {
            move_into_link_name_space(file.as_fd(), Some(LinkNameSpaceType::Network))
                .expect("entering the namespace");
            f()
        })
    }

    /// `program` to be run inside this namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Make the test's `127.0.0.1:port` reachable as `127.0.0.1:port`
    /// inside this namespace, for as long as the test process lives.
    pub fn relay(&self, port: u16) {
        let _ = home();
        // Bind in the namespace, then go home: accepted connections stay the
        // namespace's, the dialled ones (on threads started at home) are
        // the test's.
        self.enter().expect("entering the namespace");
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, port));
        Netns::leave().expect("leaving the namespace");
        let listener = listener.expect("binding the relay in the namespace");
        std::thread::spawn(move || {
            for inside in listener.incoming().flatten() {
                std::thread::spawn(move || {
                    if let Ok(outside) = TcpStream::connect((Ipv4Addr::LOCALHOST, port)) {
                        pipe(inside, outside);
                    }
                });
            }
        });
    }
}

/// Copy both ways until either side closes.
fn pipe(a: TcpStream, b: TcpStream) {
    let (Ok(mut a2), Ok(mut b2)) = (a.try_clone(), b.try_clone()) else {
        return;
    };
    let forward = std::thread::spawn(move || {
        let mut a = a;
        let mut b = b;
        let _ = io::copy(&mut a, &mut b);
        let _ = b.shutdown(Shutdown::Write);
    });
    let _ = io::copy(&mut b2, &mut a2);
    let _ = a2.shutdown(Shutdown::Write);
    let _ = forward.join();
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}
