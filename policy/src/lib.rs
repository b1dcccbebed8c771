//! Pure gitfleet decisions. No IO, no clock: every input is a value, every
//! decision is a value you can print.
//!
//! Today: reading a whole fleet repo ([`RepoFiles`]) into a [`FleetModel`]
//! with every problem as a [`gitfleet_schemas::Diagnostic`] ([`check`]),
//! including validation of Sentinel configs with the proxy's own crate and
//! the lint rules declared in `fleet.kdl`.

pub mod approvals;
pub mod bundle;
pub mod channel;
mod check;
mod checks;
mod configs;
pub mod decommission;
mod diagnostics;
pub mod explain;
pub mod lint;
pub mod mesh;
mod mesh_checks;
pub mod migrate;
pub mod model;
pub mod notify;
pub mod owners;
pub mod pass;
pub mod plan;
pub mod preview;
pub mod promotion;
pub mod proxy;
pub mod repo;
pub mod reviews;
pub mod rotation;
pub mod rules;
pub mod sbom;
pub mod select;
pub mod statuses;
pub mod view;
pub mod window;

pub use check::{check, Checked};
pub use checks::{parse_cron, valid_name};
pub use model::{ConfigDir, FleetModel, Located};
pub use repo::{LineIndex, RepoFiles};
