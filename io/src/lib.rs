//! The IO both gitfleet binaries share, kept out of the pure crates: the
//! object store ([`store`]) and durable writes of local files ([`write`]).
//! `moto` (feature `moto`, or in this crate's own tests) starts a real S3
//! API for tests.

#[cfg(any(test, feature = "moto"))]
pub mod moto;
pub mod store;
pub mod write;
