//! Crash injection for the fault tests: with `GITFLEET_AGENT_CRASH_AT` set
//! to a point's name, the agent sends itself SIGKILL there, so a test can
//! restart it and check that the node runs a whole old or a whole new
//! config. Unset (always, outside tests) a point does nothing.

use std::sync::OnceLock;

/// The variable that names the point to die at.
pub const CRASH_AT: &str = "GITFLEET_AGENT_CRASH_AT";

/// The activation points, in order.
pub const POINTS: &[&str] = &[
    "after-download",
    "after-unpack",
    "after-swap",
    "after-reload",
];

pub fn point(name: &str) {
    static AT: OnceLock<Option<String>> = OnceLock::new();
    let at = AT.get_or_init(|| std::env::var(CRASH_AT).ok());
    if at.as_deref() == Some(name) {
        tracing::warn!(point = name, "crash injected: SIGKILL to self");
        let me = rustix::process::getpid();
        let _ = rustix::process::kill_process(me, rustix::process::Signal::KILL);
        // SIGKILL cannot be caught; should it not arrive, still stop here.
        std::process::abort();
    }
}
