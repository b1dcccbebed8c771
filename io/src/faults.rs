//! Crash injection for the fault tests: with `GITFLEET_CRASH_AT` set to a
//! point's name, the process sends itself SIGKILL there, so a test can
//! restart it and check that nothing was half done. Unset (always, outside
//! tests) a point does nothing but read the variable once.

use std::sync::OnceLock;

/// The variable that names the point to die at.
pub const CRASH_AT: &str = "GITFLEET_CRASH_AT";

/// Die here when `GITFLEET_CRASH_AT` names this point.
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
