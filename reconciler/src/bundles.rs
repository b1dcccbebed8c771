//! What is inside verified bundles, for people: the SBOM's services by
//! kind, and the differences between two bundles. `gitfleet bundle` and
//! the bundle pages show them.

use std::collections::{BTreeMap, BTreeSet};

use gitfleet_schemas::bundle::SBOM_PATH;
use gitfleet_schemas::verify::Bundle;

/// How many services of each `gitfleet:kind` the SBOM declares: listeners,
/// routes, upstreams and agents first, then any other kind.
pub fn sbom_counts(bundle: &Bundle) -> Result<Vec<(String, usize)>, String> {
    const KINDS: [&str; 4] = ["listener", "route", "upstream", "agent"];
    let bytes = bundle
        .files
        .get(SBOM_PATH)
        .ok_or_else(|| format!("no {SBOM_PATH}"))?;
    let sbom: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| format!("{SBOM_PATH} is not JSON: {e}"))?;
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let services = sbom["services"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    for service in services {
        let properties = service["properties"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        let kind = properties
            .iter()
            .find(|p| p["name"] == "gitfleet:kind")
            .and_then(|p| p["value"].as_str());
        if let Some(kind) = kind {
            *counts.entry(kind.to_owned()).or_default() += 1;
        }
    }
    let mut out: Vec<(String, usize)> = KINDS
        .iter()
        .map(|k| (k.to_string(), counts.remove(*k).unwrap_or(0)))
        .collect();
    out.extend(counts);
    Ok(out)
}

/// The differences between two verified bundles, as text; empty when their
/// contents are the same.
pub fn difference(a: &Bundle, b: &Bundle) -> String {
    let mut out = String::new();
    let (ma, mb) = (&a.manifest, &b.manifest);
    let kind = |k| {
        serde_json::to_value(k)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    };
    for (what, x, y) in [
        ("name", ma.name.clone(), mb.name.clone()),
        ("kind", kind(ma.kind), kind(mb.kind)),
        (
            "source commit",
            ma.source_commit.clone(),
            mb.source_commit.clone(),
        ),
        ("validator", ma.validator.clone(), mb.validator.clone()),
    ] {
        if x != y {
            out.push_str(&format!("{what}: {x} -> {y}\n"));
        }
    }
    let paths: BTreeSet<&String> = a.files.keys().chain(b.files.keys()).collect();
    for path in paths {
        match (a.files.get(path), b.files.get(path)) {
            (Some(x), None) => out.push_str(&format!("removed: {path} ({} bytes)\n", x.len())),
            (None, Some(y)) => out.push_str(&format!("added: {path} ({} bytes)\n", y.len())),
            (Some(x), Some(y)) if x != y => {
                match (std::str::from_utf8(x), std::str::from_utf8(y)) {
                    (Ok(x), Ok(y)) => {
                        let diff = similar::TextDiff::from_lines(x, y);
                        out.push_str(
                            &diff
                                .unified_diff()
                                .context_radius(3)
                                .header(&format!("a/{path}"), &format!("b/{path}"))
                                .to_string(),
                        );
                    }
                    _ => out.push_str(&format!("binary file {path} differs\n")),
                }
            }
            _ => {}
        }
    }
    out
}
