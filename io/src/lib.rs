//! The IO both gitfleet binaries share, kept out of the pure crates: the
//! object store ([`store`]), durable writes of local files ([`write`]) and
//! Prometheus metrics: latency histograms and the text format ([`metrics`]);
//! crash injection for the fault tests ([`faults`]); stopping on SIGTERM
//! or Ctrl-C ([`signals`]).
//! With feature `test-servers` (and in this crate's own tests), [`moto`]
//! and [`git_daemon`] start a real S3 API and a real git server for tests.

pub mod delay;
pub mod faults;
#[cfg(any(test, feature = "test-servers"))]
pub mod git_daemon;
pub mod memory;
pub mod metrics;
#[cfg(any(test, feature = "test-servers"))]
pub mod moto;
pub mod signals;
pub mod store;
#[cfg(any(test, feature = "test-servers"))]
pub mod tools;
pub mod write;

/// An error and its sources, `outer: inner: innermost`, for logs and
/// reports that keep one line per error.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
