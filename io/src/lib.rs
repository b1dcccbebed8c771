//! The IO both gitfleet binaries share, kept out of the pure crates: the
//! object store ([`store`]), durable writes of local files ([`write`]) and
//! Prometheus metrics: latency histograms and the text format ([`metrics`]);
//! crash injection for the fault tests ([`faults`]).
//! `moto` (feature `moto`, or in this crate's own tests) starts a real S3
//! API for tests.

pub mod faults;
pub mod metrics;
#[cfg(any(test, feature = "moto"))]
pub mod moto;
pub mod store;
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
