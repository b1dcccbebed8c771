//! The SBOMs inside bundles are valid CycloneDX 1.5: checked against the
//! official JSON Schema (tests/cyclonedx-1.5/) and by the CycloneDX project's
//! own Rust model.

#![allow(clippy::unwrap_used)] // test helpers fail the test by panicking

use std::path::{Path, PathBuf};

use cyclonedx_bom::prelude::{Bom, Validate as _};
use serde_json::Value;

mod common;

use common::example_repo;

fn schema_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cyclonedx-1.5")
}

/// Serves `$ref`s such as `spdx.SNAPSHOT.schema.json` from the local copies.
struct Local;

impl jsonschema::Retrieve for Local {
    fn retrieve(
        &self,
        uri: &jsonschema::Uri<String>,
    ) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
        let name = uri
            .path()
            .as_str()
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_owned();
        let text = std::fs::read_to_string(schema_dir().join(&name))?;
        Ok(serde_json::from_str(&text)?)
    }
}

/// The official CycloneDX 1.5 JSON Schema, with its references served locally.
fn cyclonedx_1_5() -> jsonschema::Validator {
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(schema_dir().join("bom-1.5.SNAPSHOT.schema.json")).unwrap(),
    )
    .unwrap();
    jsonschema::options()
        .with_retriever(Local)
        .build(&schema)
        .unwrap()
}

fn sboms() -> Vec<(String, Vec<u8>)> {
    let checked = gitfleet_policy::check(&example_repo());
    assert!(!checked.has_errors(), "{:?}", checked.diagnostics);
    checked
        .model
        .configs
        .values()
        .map(|dir| {
            let (proxy, variant) = dir.variants.iter().next().unwrap();
            let config = variant.config.as_ref().unwrap();
            let sbom =
                gitfleet_policy::sbom::of_config(&dir.name, "0123abc", proxy, config, &dir.files);
            (dir.name.clone(), sbom)
        })
        .collect()
}

#[test]
fn example_sboms_validate_against_the_cyclonedx_1_5_json_schema() {
    let validator = cyclonedx_1_5();
    let all = sboms();
    assert_eq!(all.len(), 2);
    for (name, sbom) in all {
        let instance: Value = serde_json::from_slice(&sbom).unwrap();
        let errors: Vec<String> = validator
            .iter_errors(&instance)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        assert!(
            errors.is_empty(),
            "SBOM of `{name}` is invalid:\n{}",
            errors.join("\n")
        );
    }
}

#[test]
fn the_schema_check_catches_an_invalid_sbom() {
    let validator = cyclonedx_1_5();
    let (_, sbom) = sboms().remove(0);
    let mut instance: Value = serde_json::from_slice(&sbom).unwrap();
    instance["services"][0]["endpoints"] = serde_json::json!("not a list");
    assert!(!validator.is_valid(&instance));
}

#[test]
fn example_sboms_pass_the_cyclonedx_model_validation() {
    for (name, sbom) in sboms() {
        let bom = Bom::parse_from_json_v1_5(sbom.as_slice()).unwrap();
        let result = bom.validate();
        assert!(result.passed(), "SBOM of `{name}`: {result:?}");
    }
}

#[test]
fn sboms_describe_listeners_routes_and_upstreams() {
    let (_, sbom) = sboms().into_iter().find(|(n, _)| n == "edge").unwrap();
    let bom: Value = serde_json::from_slice(&sbom).unwrap();
    let kinds: Vec<&str> = bom["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["properties"][0]["value"].as_str().unwrap())
        .collect();
    for kind in ["listener", "route", "upstream"] {
        assert!(kinds.contains(&kind), "{kind} missing from {kinds:?}");
    }
    assert_eq!(bom["metadata"]["component"]["version"], "0123abc");
    assert_eq!(bom["components"][0]["hashes"][0]["alg"], "SHA-256");
}

/// The SBOM inside the example fleet's `backbone` mesh bundle.
fn mesh_sbom() -> Value {
    let checked = gitfleet_policy::check(&example_repo());
    assert!(!checked.has_errors(), "{:?}", checked.diagnostics);
    let mesh = &checked.model.meshes["backbone"].doc;
    let built = gitfleet_policy::mesh::build(
        &checked.model,
        "backbone",
        mesh,
        &Default::default(),
        &Default::default(),
        "0123abc",
    )
    .unwrap();
    let bundle = gitfleet_schemas::verify::verify_bundle(
        &built.built.reference,
        &built.built.bytes,
        gitfleet_schemas::verify::Limits::default(),
    )
    .unwrap();
    serde_json::from_slice(&bundle.files[gitfleet_schemas::bundle::SBOM_PATH]).unwrap()
}

#[test]
fn the_mesh_sbom_is_valid_cyclonedx_1_5_and_lists_every_peer() {
    let sbom = mesh_sbom();
    let errors: Vec<String> = cyclonedx_1_5()
        .iter_errors(&sbom)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "mesh SBOM is invalid:\n{}",
        errors.join("\n")
    );
    let bytes = serde_json::to_vec(&sbom).unwrap();
    let result = Bom::parse_from_json_v1_5(bytes.as_slice())
        .unwrap()
        .validate();
    assert!(result.passed(), "mesh SBOM: {result:?}");

    let peers: Vec<&str> = sbom["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["bom-ref"].as_str().unwrap())
        .collect();
    // Every edge node of the example fleet, sorted.
    assert_eq!(
        peers,
        [
            "peer:edge-dev-fra-1",
            "peer:edge-fra-1",
            "peer:edge-fra-2",
            "peer:edge-iad-1",
            "peer:edge-iad-2",
            "peer:edge-stg-fra-1",
            "peer:edge-stg-iad-1",
        ]
    );
    let first = &sbom["services"][0];
    assert_eq!(first["endpoints"][0], "udp://198.51.100.11:51820");
    assert_eq!(sbom["metadata"]["component"]["version"], "0123abc");
    assert_eq!(sbom["components"][0]["name"], "files/mesh.json");
}
