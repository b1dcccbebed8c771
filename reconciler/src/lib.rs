//! The gitfleet reconciler and operator CLI, as a library: the binary
//! (`main.rs`) parses the command line and calls `commands`.
//!
//! A reconcile pass runs in three stages, in `pass`: observe (git, the
//! state branch, the store), decide (`gitfleet_policy`, pure) and execute
//! (uploads, the state commit, signed manifests, GitHub). `web` serves
//! what the last pass saw; `github` talks to GitHub's API and takes its
//! webhooks; `notify` tells fleet.kdl's receivers what happened. Below them: `git` (the mirror), `setup` (repo, store, keys and
//! holder from the command line and the fleet's settings), `keys`,
//! `source`, `steer` (the rollout file edits people ask for), `render`,
//! `bundles` and `fmt`.

pub mod bundles;
pub mod commands;
pub mod fmt;
pub mod git;
pub mod github;
pub mod keys;
pub mod notify;
pub mod pass;
pub mod render;
pub mod setup;
pub mod source;
pub mod steer;
pub mod web;
