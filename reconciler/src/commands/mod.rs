//! One module per command family of `gitfleet`: each holds its clap
//! arguments and its `run`, and calls the reconciler's stages (`pass`),
//! the pages (`web`) and the IO modules; nothing below imports a command.

use clap::ValueEnum;
use codespan_reporting::term::termcolor::ColorChoice;

pub mod approve;
pub mod bundle;
pub mod check;
pub mod events;
pub mod keygen;
pub mod mesh;
pub mod migrate;
pub mod reconcile;
pub mod rollout;
pub mod root;
pub mod serve;
pub mod simulate;
pub mod state;
pub mod status;
pub mod up;

/// When to colour output.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Color {
    Auto,
    Always,
    Never,
}

impl Color {
    /// How to colour a stream, given whether it is a terminal.
    pub fn choice(self, terminal: bool) -> ColorChoice {
        match self {
            Color::Always => ColorChoice::Always,
            Color::Never => ColorChoice::Never,
            Color::Auto if terminal => ColorChoice::Auto,
            Color::Auto => ColorChoice::Never,
        }
    }
}
