//! CycloneDX 1.5 SBOMs of what a config declares, built from the parsed
//! config (not by pattern matching over its text) and placed inside the
//! signed bundle.
//!
//! Files are `file` components with their SHA-256; listeners, routes,
//! upstreams and agents are `services` with their endpoints; a route depends
//! on its upstream. No timestamp or random serial number: the SBOM is as
//! reproducible as the bundle around it.

use std::collections::BTreeMap;

use sentinel_config::{AgentTransport, Config, MatchCondition};
use serde_json::{json, Value};

use gitfleet_schemas::bundle::FILES_DIR;
use gitfleet_schemas::verify::sha256_hex;

fn property(name: &str, value: impl Into<String>) -> Value {
    json!({ "name": format!("gitfleet:{name}"), "value": value.into() })
}

fn match_property(m: &MatchCondition) -> Value {
    match m {
        MatchCondition::PathPrefix(p) => property("match.path-prefix", p.clone()),
        MatchCondition::Path(p) => property("match.path", p.clone()),
        MatchCondition::PathRegex(p) => property("match.path-regex", p.clone()),
        MatchCondition::Host(h) => property("match.host", h.clone()),
        other => property("match", format!("{other:?}")),
    }
}

/// The SBOM of a Sentinel config directory, as pretty JSON.
pub fn sentinel(
    name: &str,
    source_commit: &str,
    config: &Config,
    files: &BTreeMap<String, Vec<u8>>,
) -> Vec<u8> {
    let components: Vec<Value> = files
        .iter()
        .map(|(path, bytes)| {
            json!({
                "type": "file",
                "bom-ref": format!("file:{path}"),
                "name": format!("{FILES_DIR}{path}"),
                "hashes": [{ "alg": "SHA-256", "content": sha256_hex(bytes) }],
            })
        })
        .collect();

    let mut services = Vec::new();
    let mut dependencies = Vec::new();
    for l in &config.listeners {
        let scheme = if l.tls.is_some() { "https" } else { "http" };
        services.push(json!({
            "bom-ref": format!("listener:{}", l.id),
            "name": format!("listener {}", l.id),
            "endpoints": [format!("{scheme}://{}", l.address)],
            "x-trust-boundary": true,
            "properties": [
                property("kind", "listener"),
                property("protocol", format!("{:?}", l.protocol).to_lowercase()),
                property("tls", l.tls.is_some().to_string()),
            ],
        }));
    }
    let mut upstreams: Vec<_> = config.upstreams.values().collect();
    upstreams.sort_by(|a, b| a.id.cmp(&b.id));
    for u in &upstreams {
        let scheme = if u.tls.is_some() { "https" } else { "http" };
        let endpoints: Vec<String> = u
            .targets
            .iter()
            .map(|t| format!("{scheme}://{}", t.address))
            .collect();
        services.push(json!({
            "bom-ref": format!("upstream:{}", u.id),
            "name": format!("upstream {}", u.id),
            "endpoints": endpoints,
            "properties": [property("kind", "upstream")],
        }));
    }
    for r in &config.routes {
        let mut properties = vec![property("kind", "route")];
        properties.extend(r.matches.iter().map(match_property));
        if let Some(h) = &r.builtin_handler {
            properties.push(property("builtin-handler", format!("{h:?}").to_lowercase()));
        }
        let mut filters = r.filters.clone();
        filters.sort();
        properties.extend(filters.iter().map(|f| property("filter", f.clone())));
        services.push(json!({
            "bom-ref": format!("route:{}", r.id),
            "name": format!("route {}", r.id),
            "properties": properties,
        }));
        if let Some(u) = r
            .upstream
            .as_ref()
            .filter(|u| config.upstreams.contains_key(*u))
        {
            dependencies.push(json!({
                "ref": format!("route:{}", r.id),
                "dependsOn": [format!("upstream:{u}")],
            }));
        }
    }
    for a in &config.agents {
        let endpoint = match &a.transport {
            AgentTransport::UnixSocket { path } => format!("unix:{}", path.display()),
            AgentTransport::Grpc { address, .. } => format!("grpc://{address}"),
            AgentTransport::Http { url, .. } => url.clone(),
        };
        services.push(json!({
            "bom-ref": format!("agent:{}", a.id),
            "name": format!("agent {}", a.id),
            "endpoints": [endpoint],
            "properties": [property("kind", "agent")],
        }));
    }

    let bom = json!({
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "version": 1,
        "metadata": {
            "component": {
                "type": "application",
                "bom-ref": format!("config:{name}"),
                "name": name,
                "version": source_commit,
                "description": "Sentinel proxy config from the fleet repo",
            },
            "tools": {
                "components": [{
                    "type": "application",
                    "name": "gitfleet",
                    "version": env!("CARGO_PKG_VERSION"),
                }],
            },
        },
        "components": components,
        "services": services,
        "dependencies": dependencies,
    });
    let mut out = serde_json::to_vec_pretty(&bom).unwrap_or_default();
    out.push(b'\n');
    out
}
