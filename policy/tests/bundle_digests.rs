//! Bundles are named by the digest of their bytes, so the bytes of the
//! example fleet's bundles are pinned here: a change to the bundle format,
//! its manifest or its SBOM that would rename every bundle (and restart
//! every rollout on upgrade) fails this test instead of passing unnoticed.

#![allow(clippy::unwrap_used)] // test helpers fail the test by panicking

mod common;

use gitfleet_policy::mesh::{self, Allocation};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

fn digests() -> Vec<(String, String)> {
    let checked = gitfleet_policy::check(&common::example_repo());
    let model = &checked.model;
    let mut out: Vec<(String, String)> = model
        .configs
        .values()
        .map(|dir| {
            let proxy = dir.variants.keys().next().unwrap();
            let built = gitfleet_policy::bundle::proxy_config(dir, proxy, COMMIT).unwrap();
            (dir.name.clone(), built.reference.digest)
        })
        .collect();
    for (name, m) in &model.meshes {
        let build = mesh::build(
            model,
            name,
            &m.doc,
            &Allocation::new(),
            &Default::default(),
            COMMIT,
        )
        .unwrap();
        out.push((name.clone(), build.built.reference.digest));
    }
    out
}

#[test]
fn the_example_fleets_bundle_digests_do_not_change() {
    let got = digests();
    let printed: Vec<String> = got.iter().map(|(n, d)| format!("{n} {d}")).collect();
    assert_eq!(printed, PINNED, "\n{}", printed.join("\n"));
}

const PINNED: [&str; 3] = [
    "api-gateway sha256:40c790a855335ac55e9aa24949da1fcbbab06cfc393699910a79e0156266fb21",
    "edge sha256:a5b6a82a190d4467a8846cd8ff3474eb6018ba5aa4be33f8c1d4dd546392fef3",
    "backbone sha256:e20ee5530711af4a97d72f9196c41a38fdea0515d31ba9ae7a73b914f2733bcc",
];
