//! The gitfleet node agent as a library: the binary `gitfleet-agent` and the
//! fleet simulator run the same verification and decision code.
//!
//! - [`cadence`]: how often to poll and report, fast or idle;
//! - [`core`]: poll, verify, decide, report; generic over a [`core::Node`];
//! - [`events`]: what happened on the node, written with its reports;
//! - [`node`]: the real node (state directory, Sentinel proxy, procfs);
//! - [`local`]: the state directory's layout and atomic steps;
//! - [`metrics`]: the agent's own `/metrics` on a loopback port;
//! - [`sentinel`]: validate, reload and confirm the proxy's config;
//! - [`sim`]: the simulated node of `gitfleet simulate`;
//! - [`system`]: system metrics for status reports;
//! - [`wireguard`]: WireGuard meshes: the desired interface, the peer diff,
//!   applying only that diff, drift and status.

pub mod cadence;
pub mod checks;
pub mod core;
pub mod events;
pub mod faults;
pub mod local;
pub mod metrics;
pub mod node;
pub mod sentinel;
pub mod sim;
pub mod system;
pub mod traffic;
pub mod wireguard;
