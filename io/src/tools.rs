//! Test support: the external programs the end-to-end tests run, found in
//! one place. A test that lacks its tool fails with the list of every tool
//! missing on this machine, not just its own, and how to get them all at
//! once (`bash scripts/test.sh`), so nobody discovers them one long build
//! at a time.

use std::path::{Path, PathBuf};

/// A program the tests run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tool {
    /// `moto_server` (PyPI `moto[server]`): a real S3 API.
    Moto,
    /// The Sentinel 0.4.14 proxy (`cargo install sentinel-proxy`).
    Sentinel,
    /// The Zentinel 0.6.45 proxy (`cargo install zentinel-proxy`).
    Zentinel,
    /// `boringtun-cli`: userspace WireGuard.
    Boringtun,
    /// Chromium, with playwright-core under `tests/browser/node_modules`.
    Chromium,
    /// Prometheus's `promtool`: checks and unit-tests alerting rules.
    Promtool,
}

impl Tool {
    pub const ALL: [Tool; 6] = [
        Tool::Moto,
        Tool::Sentinel,
        Tool::Zentinel,
        Tool::Boringtun,
        Tool::Chromium,
        Tool::Promtool,
    ];

    /// The variable that names the binary.
    pub fn variable(self) -> &'static str {
        match self {
            Tool::Moto => "GITFLEET_MOTO_SERVER",
            Tool::Sentinel => "GITFLEET_SENTINEL",
            Tool::Zentinel => "GITFLEET_ZENTINEL",
            Tool::Boringtun => "GITFLEET_BORINGTUN",
            Tool::Chromium => "GITFLEET_CHROMIUM",
            Tool::Promtool => "GITFLEET_PROMTOOL",
        }
    }

    fn binary_name(self) -> &'static str {
        match self {
            Tool::Moto => "moto_server",
            Tool::Sentinel => "sentinel",
            Tool::Zentinel => "zentinel",
            Tool::Boringtun => "boringtun-cli",
            Tool::Chromium => "chromium",
            Tool::Promtool => "promtool",
        }
    }

    /// How to install it by hand.
    pub fn install(self) -> &'static str {
        match self {
            Tool::Moto => "python3 -m venv ~/.cache/gitfleet/venv && ~/.cache/gitfleet/venv/bin/pip install 'moto[server]==5.2.5'",
            Tool::Sentinel => "apt-get install protobuf-compiler cmake; cargo install sentinel-proxy --version 0.4.14 --locked --debug",
            Tool::Zentinel => "apt-get install protobuf-compiler cmake; cargo install zentinel-proxy --version 0.6.45 --locked --debug",
            Tool::Boringtun => "cargo install boringtun-cli --locked",
            Tool::Chromium => "apt-get install chromium nodejs npm; (cd tests/browser && npm ci)",
            Tool::Promtool => "apt-get install --no-install-recommends prometheus",
        }
    }

    /// Where the tool is: `$VARIABLE`, else cargo's bin directory, the
    /// venv scripts/test.sh makes, `/usr/bin` or `PATH`; `None` when it is
    /// not on this machine (or Chromium lacks playwright-core).
    pub fn find(self) -> Option<PathBuf> {
        if let Some(path) = std::env::var_os(self.variable()) {
            let path = PathBuf::from(path);
            return path.is_file().then_some(path).filter(|_| self.extras_ok());
        }
        let home = std::env::var_os("HOME").map(PathBuf::from);
        let cargo_bin = std::env::var_os("CARGO_HOME")
            .map(PathBuf::from)
            .or_else(|| home.as_ref().map(|h| h.join(".cargo")))
            .map(|h| h.join("bin"));
        let venv = home.map(|h| h.join(".cache/gitfleet/venv/bin"));
        let path_dirs: Vec<PathBuf> = std::env::var_os("PATH")
            .iter()
            .flat_map(std::env::split_paths)
            .collect();
        cargo_bin
            .into_iter()
            .chain(venv)
            .chain(std::iter::once(PathBuf::from("/usr/bin")))
            .chain(path_dirs)
            .map(|dir| dir.join(self.binary_name()))
            .find(|p| p.is_file())
            .filter(|_| self.extras_ok())
    }

    /// What a tool needs besides its binary.
    fn extras_ok(self) -> bool {
        match self {
            Tool::Chromium => Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../tests/browser/node_modules/playwright-core")
                .is_dir(),
            _ => true,
        }
    }

    /// The tool, or a panic that lists every tool this machine lacks.
    pub fn require(self) -> PathBuf {
        match self.find() {
            Some(p) => p,
            None => panic!("{}", missing_message()),
        }
    }
}

/// What is missing and how to get it, every tool at once.
pub fn missing_message() -> String {
    let missing: Vec<Tool> = Tool::ALL
        .into_iter()
        .filter(|t| t.find().is_none())
        .collect();
    let mut out = format!(
        "this test needs programs that are not on this machine ({} of {}); \
         `bash scripts/test.sh` installs all of them and runs every test. By hand:",
        missing.len(),
        Tool::ALL.len()
    );
    for t in &missing {
        out.push_str(&format!(
            "\n  {} ({}): {}",
            t.binary_name(),
            t.variable(),
            t.install()
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_names_each_missing_tool_with_its_install() {
        let text = missing_message();
        assert!(text.contains("bash scripts/test.sh"), "{text}");
        for t in Tool::ALL.into_iter().filter(|t| t.find().is_none()) {
            assert!(text.contains(t.variable()), "{text}");
            assert!(text.contains(t.install()), "{text}");
        }
    }
}
