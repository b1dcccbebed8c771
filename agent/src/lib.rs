//! The gitfleet node agent as a library: the binary `gitfleet-agent` and the
//! fleet simulator run the same verification and decision code.

pub mod system;
