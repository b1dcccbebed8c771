//! CycloneDX 1.5 SBOMs of what a config declares, built from the parsed
//! config (not by pattern matching over its text) and placed inside the
//! signed bundle.
//!
//! Files are `file` components with their SHA-256; listeners, routes,
//! upstreams and agents are `services` with their endpoints; a route depends
//! on its upstream. No timestamp, random serial number or gitfleet version:
//! the SBOM is as reproducible as the bundle around it, and upgrading
//! gitfleet does not change the digest of every bundle. Sentinel's enums
//! are written through explicit names here, never their `Debug` form, so a
//! Sentinel upgrade cannot change them silently either.

use std::collections::BTreeMap;

use sentinel_config::{AgentTransport, BuiltinHandler, Config, ListenerProtocol, MatchCondition};

use gitfleet_schemas::bundle::FILES_DIR;
use gitfleet_schemas::sbom::{Component, Dependency, Property, Sbom, Service};
use gitfleet_schemas::verify::sha256_hex;

fn property(name: &str, value: impl Into<String>) -> Property {
    Property::gitfleet(name, value)
}

fn match_property(m: &MatchCondition) -> Property {
    match m {
        MatchCondition::PathPrefix(p) => property("match.path-prefix", p.clone()),
        MatchCondition::Path(p) => property("match.path", p.clone()),
        MatchCondition::PathRegex(p) => property("match.path-regex", p.clone()),
        MatchCondition::Host(h) => property("match.host", h.clone()),
        MatchCondition::Header { name, value } => {
            property("match.header", name_value(name, value.as_deref()))
        }
        MatchCondition::Method(methods) => property("match.method", methods.join(",")),
        MatchCondition::QueryParam { name, value } => {
            property("match.query-param", name_value(name, value.as_deref()))
        }
    }
}

/// `name` when only presence is matched, `name=value` otherwise.
fn name_value(name: &str, value: Option<&str>) -> String {
    match value {
        Some(v) => format!("{name}={v}"),
        None => name.to_owned(),
    }
}

fn protocol_name(p: ListenerProtocol) -> &'static str {
    match p {
        ListenerProtocol::Http => "http",
        ListenerProtocol::Https => "https",
        ListenerProtocol::Http2 => "http2",
        ListenerProtocol::Http3 => "http3",
    }
}

fn handler_name(h: BuiltinHandler) -> &'static str {
    match h {
        BuiltinHandler::Status => "status",
        BuiltinHandler::Health => "health",
        BuiltinHandler::Metrics => "metrics",
        BuiltinHandler::NotFound => "not-found",
        BuiltinHandler::Config => "config",
        BuiltinHandler::Upstreams => "upstreams",
        BuiltinHandler::CachePurge => "cache-purge",
        BuiltinHandler::CacheStats => "cache-stats",
    }
}

/// The SBOM of a Sentinel config directory, as pretty JSON.
pub fn sentinel(
    name: &str,
    source_commit: &str,
    config: &Config,
    files: &BTreeMap<String, Vec<u8>>,
) -> Vec<u8> {
    let components: Vec<Component> = files
        .iter()
        .map(|(path, bytes)| {
            Component::file(
                format!("file:{path}"),
                format!("{FILES_DIR}{path}"),
                sha256_hex(bytes),
            )
        })
        .collect();

    let mut services = Vec::new();
    let mut dependencies = Vec::new();
    for l in &config.listeners {
        let scheme = if l.tls.is_some() { "https" } else { "http" };
        services.push(Service {
            bom_ref: format!("listener:{}", l.id),
            name: format!("listener {}", l.id),
            endpoints: Some(vec![format!("{scheme}://{}", l.address)]),
            trust_boundary: Some(true),
            properties: vec![
                property("kind", "listener"),
                property("protocol", protocol_name(l.protocol)),
                property("tls", l.tls.is_some().to_string()),
            ],
        });
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
        services.push(Service {
            bom_ref: format!("upstream:{}", u.id),
            name: format!("upstream {}", u.id),
            endpoints: Some(endpoints),
            trust_boundary: None,
            properties: vec![property("kind", "upstream")],
        });
    }
    if let Some(d) = &config.default_upstream {
        let scheme = if d.tls { "https" } else { "http" };
        services.push(Service {
            bom_ref: "default-upstream".to_owned(),
            name: "default upstream".to_owned(),
            endpoints: Some(vec![format!("{scheme}://{}", d.address)]),
            trust_boundary: None,
            properties: vec![
                property("kind", "default-upstream"),
                property("host", d.host.clone()),
            ],
        });
    }
    for r in &config.routes {
        let mut properties = vec![property("kind", "route")];
        properties.extend(r.matches.iter().map(match_property));
        if let Some(h) = &r.builtin_handler {
            properties.push(property("builtin-handler", handler_name(*h)));
        }
        let mut filters = r.filters.clone();
        filters.sort();
        properties.extend(filters.iter().map(|f| property("filter", f.clone())));
        services.push(Service {
            bom_ref: format!("route:{}", r.id),
            name: format!("route {}", r.id),
            endpoints: None,
            trust_boundary: None,
            properties,
        });
        // The route's upstream, and the model-routing default upstream
        // of an inference route, in a stable order.
        let model_default = r
            .inference
            .as_ref()
            .and_then(|i| i.model_routing.as_ref())
            .and_then(|m| m.default_upstream.as_ref());
        let mut depends: Vec<String> = r
            .upstream
            .iter()
            .chain(model_default)
            .filter(|u| config.upstreams.contains_key(*u))
            .map(|u| format!("upstream:{u}"))
            .collect();
        depends.dedup();
        if !depends.is_empty() {
            dependencies.push(Dependency {
                reference: format!("route:{}", r.id),
                depends_on: depends,
            });
        }
    }
    for a in &config.agents {
        let endpoint = match &a.transport {
            AgentTransport::UnixSocket { path } => format!("unix:{}", path.display()),
            AgentTransport::Grpc { address, .. } => format!("grpc://{address}"),
            AgentTransport::Http { url, .. } => url.clone(),
        };
        services.push(Service {
            bom_ref: format!("agent:{}", a.id),
            name: format!("agent {}", a.id),
            endpoints: Some(vec![endpoint]),
            trust_boundary: None,
            properties: vec![property("kind", "agent")],
        });
    }

    let mut bom = Sbom::new(Component {
        description: Some("Sentinel proxy config from the fleet repo".to_owned()),
        version: Some(source_commit.to_owned()),
        ..Component::new("application", Some(format!("config:{name}")), name)
    });
    bom.components = components;
    bom.services = services;
    bom.dependencies = Some(dependencies);
    bom.to_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    const CONFIG: &str = r#"
system { worker-threads 1; }
listeners {
    listener "h2" { address "127.0.0.1:8443"; protocol "h2"; }
}
routes {
    route "missing" {
        matches { path "/missing" }
        builtin-handler "not-found"
    }
    route "purge" {
        matches { path-prefix "/purge" }
        builtin-handler "cache-purge"
    }
}
"#;

    fn sbom(config: &Config) -> Value {
        let files = BTreeMap::from([("sentinel.kdl".to_owned(), CONFIG.as_bytes().to_vec())]);
        serde_json::from_slice(&sentinel("edge", "c0ffee", config, &files)).unwrap_or_default()
    }

    fn properties(sbom: &Value, bom_ref: &str) -> Vec<(String, String)> {
        sbom["services"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|s| s["bom-ref"] == bom_ref)
            .flat_map(|s| s["properties"].as_array().cloned().unwrap_or_default())
            .map(|p| {
                (
                    p["name"].as_str().unwrap_or_default().to_owned(),
                    p["value"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    }

    fn has(props: &[(String, String)], name: &str, value: &str) -> bool {
        props.iter().any(|(n, v)| n == name && v == value)
    }

    #[test]
    fn the_sbom_names_sentinel_enums_explicitly_and_has_no_gitfleet_version() {
        let mut config = crate::sentinel::validate(CONFIG).unwrap_or_else(|e| panic!("{e:?}"));
        // Sentinel's KDL reader only yields path and host matches today.
        config.routes[0].matches.extend([
            MatchCondition::Header {
                name: "x-debug".into(),
                value: None,
            },
            MatchCondition::Method(vec!["GET".into(), "HEAD".into()]),
        ]);
        let doc = sbom(&config);
        assert_eq!(
            doc["metadata"]["tools"]["components"],
            json!([{ "type": "application", "name": "gitfleet" }])
        );
        let listener = properties(&doc, "listener:h2");
        assert!(has(&listener, "gitfleet:protocol", "http2"), "{listener:?}");
        let missing = properties(&doc, "route:missing");
        assert!(
            has(&missing, "gitfleet:builtin-handler", "not-found"),
            "{missing:?}"
        );
        assert!(
            has(&missing, "gitfleet:match.header", "x-debug"),
            "{missing:?}"
        );
        assert!(
            has(&missing, "gitfleet:match.method", "GET,HEAD"),
            "{missing:?}"
        );
        let purge = properties(&doc, "route:purge");
        assert!(
            has(&purge, "gitfleet:builtin-handler", "cache-purge"),
            "{purge:?}"
        );

        assert!(!doc.to_string().contains("default-upstream"));
        config.default_upstream = Some(sentinel_config::UpstreamPeer {
            address: "10.0.0.1:8080".into(),
            tls: false,
            host: "backend".into(),
            connect_timeout_secs: 1,
            read_timeout_secs: 1,
            write_timeout_secs: 1,
        });
        let doc = sbom(&config);
        let default = properties(&doc, "default-upstream");
        assert!(
            has(&default, "gitfleet:kind", "default-upstream"),
            "{default:?}"
        );
    }
}
