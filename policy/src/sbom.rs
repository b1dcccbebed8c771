//! CycloneDX 1.5 SBOMs of what a config declares, built from the parsed
//! config (not by pattern matching over its text) and placed inside the
//! signed bundle.
//!
//! Files are `file` components with their SHA-256; listeners, routes,
//! upstreams and agents are `services` with their endpoints; a route depends
//! on its upstream. No timestamp, random serial number or gitfleet version:
//! the SBOM is as reproducible as the bundle around it, and upgrading
//! gitfleet does not change the digest of every bundle. The proxies' enums
//! are written through explicit names here, never their `Debug` form, so a
//! proxy upgrade cannot change them silently either.

use std::collections::BTreeMap;

use gitfleet_schemas::bundle::FILES_DIR;
use gitfleet_schemas::sbom::{Component, Dependency, Property, Sbom, Service};
use gitfleet_schemas::verify::sha256_hex;
use gitfleet_schemas::{Proxy, ProxyKind};

use crate::proxy::ProxyConfig;

fn property(name: &str, value: impl Into<String>) -> Property {
    Property::gitfleet(name, value)
}

/// `name` when only presence is matched, `name=value` otherwise.
fn name_value(name: &str, value: Option<&str>) -> String {
    match value {
        Some(v) => format!("{name}={v}"),
        None => name.to_owned(),
    }
}

/// The SBOM of a proxy config directory (the files of its bundle and what
/// `config` declares), as pretty JSON.
pub fn of_config(
    name: &str,
    source_commit: &str,
    proxy: &Proxy,
    config: &ProxyConfig,
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
    let (services, dependencies) = crate::with_config!(config, |c, k| {
        fn match_property(m: &k::MatchCondition) -> Property {
            match m {
                k::MatchCondition::PathPrefix(p) => property("match.path-prefix", p.clone()),
                k::MatchCondition::Path(p) => property("match.path", p.clone()),
                k::MatchCondition::PathRegex(p) => property("match.path-regex", p.clone()),
                k::MatchCondition::Host(h) => property("match.host", h.clone()),
                k::MatchCondition::Header { name, value } => {
                    property("match.header", name_value(name, value.as_deref()))
                }
                k::MatchCondition::Method(methods) => property("match.method", methods.join(",")),
                k::MatchCondition::QueryParam { name, value } => {
                    property("match.query-param", name_value(name, value.as_deref()))
                }
            }
        }

        fn protocol_name(p: k::ListenerProtocol) -> &'static str {
            match p {
                k::ListenerProtocol::Http => "http",
                k::ListenerProtocol::Https => "https",
                k::ListenerProtocol::Http2 => "http2",
                k::ListenerProtocol::Http3 => "http3",
            }
        }

        fn handler_name(h: k::BuiltinHandler) -> &'static str {
            match h {
                k::BuiltinHandler::Status => "status",
                k::BuiltinHandler::Health => "health",
                k::BuiltinHandler::Metrics => "metrics",
                k::BuiltinHandler::NotFound => "not-found",
                k::BuiltinHandler::Config => "config",
                k::BuiltinHandler::Upstreams => "upstreams",
                k::BuiltinHandler::CachePurge => "cache-purge",
                k::BuiltinHandler::CacheStats => "cache-stats",
            }
        }

        let mut services = Vec::new();
        let mut dependencies = Vec::new();
        for l in &c.listeners {
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
        let mut upstreams: Vec<_> = c.upstreams.values().collect();
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
        if let Some(d) = &c.default_upstream {
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
        for r in &c.routes {
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
                .filter(|u| c.upstreams.contains_key(*u))
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
        for a in &c.agents {
            let endpoint = match &a.transport {
                k::AgentTransport::UnixSocket { path } => format!("unix:{}", path.display()),
                k::AgentTransport::Grpc { address, .. } => format!("grpc://{address}"),
                k::AgentTransport::Http { url, .. } => url.clone(),
            };
            services.push(Service {
                bom_ref: format!("agent:{}", a.id),
                name: format!("agent {}", a.id),
                endpoints: Some(vec![endpoint]),
                trust_boundary: None,
                properties: vec![property("kind", "agent")],
            });
        }
        (services, dependencies)
    });
    let proxy_name = match proxy.kind {
        ProxyKind::Sentinel => "Sentinel",
        ProxyKind::Zentinel => "Zentinel",
    };
    let mut bom = Sbom::new(Component {
        description: Some(format!("{proxy_name} proxy config from the fleet repo")),
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

    fn sbom(config: &sentinel_config::Config) -> Value {
        let files = BTreeMap::from([("sentinel.kdl".to_owned(), CONFIG.as_bytes().to_vec())]);
        let config = ProxyConfig::Sentinel(Box::new(config.clone()));
        serde_json::from_slice(&of_config(
            "edge",
            "c0ffee",
            &Proxy::legacy(),
            &config,
            &files,
        ))
        .unwrap_or_default()
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
        let parsed = crate::proxy::validate(ProxyKind::Sentinel, CONFIG);
        let Ok(ProxyConfig::Sentinel(mut config)) = parsed else {
            panic!("{parsed:?}")
        };
        // Sentinel's KDL reader only yields path and host matches today.
        config.routes[0].matches.extend([
            sentinel_config::MatchCondition::Header {
                name: "x-debug".into(),
                value: None,
            },
            sentinel_config::MatchCondition::Method(vec!["GET".into(), "HEAD".into()]),
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
