//! Where a crash can stop an activation; the fault tests kill the agent at
//! each of these points through [`gitfleet_io::faults`].

pub use gitfleet_io::faults::{point, CRASH_AT};

/// The activation points, in order.
pub const POINTS: &[&str] = &[
    "after-download",
    "after-unpack",
    "after-swap",
    "after-reload",
];
