//! Validating each config directory for every proxy that runs it: the
//! proxies of the nodes its rollouts select, each with that proxy's own
//! config crate (`proxy::validate`), reading the proxy's own entry file
//! or, while the directory has only the other one, that.

use std::collections::BTreeMap;

use gitfleet_schemas::{Proxy, ProxyKind, RolloutTarget, Span};

use crate::diagnostics::Diagnostics;
use crate::model::{not_utf8, ConfigDir, FleetModel, Variant};
use crate::proxy;
use crate::select::select;

/// Validate every config of `model`, recording each variant on its
/// directory and every refusal in `diags`.
pub(crate) fn validate(model: &mut FleetModel, diags: &mut Diagnostics<'_>) {
    let targets = config_targets(model);
    for dir in model.configs.values_mut() {
        validate_config(dir, targets.get(&dir.name), diags);
    }
}

/// For each config, the proxies (supported by gitfleet) that the nodes of
/// its rollouts run, with those nodes' ids.
fn config_targets(model: &FleetModel) -> BTreeMap<String, BTreeMap<Proxy, Vec<String>>> {
    let rules = model
        .fleet
        .as_ref()
        .map_or(&[][..], |f| f.doc.proxies.as_slice());
    let mut out: BTreeMap<String, BTreeMap<Proxy, Vec<String>>> = BTreeMap::new();
    for r in model.rollouts.values() {
        let RolloutTarget::Config(config) = &r.doc.target.value else {
            continue;
        };
        let by_proxy = out.entry(config.clone()).or_default();
        for i in select(model, &r.doc.selector) {
            let node = &model.nodes[i].doc;
            let p = proxy::of_node(rules, node);
            if proxy::is_supported(&p) {
                by_proxy.entry(p).or_default().push(node.id.value.clone());
            }
        }
    }
    out
}

/// Validate `dir` for each proxy in `wanted` (or, when no node targets it,
/// each entry file for its own proxy), recording what refuses it and why.
fn validate_config(
    dir: &mut ConfigDir,
    wanted: Option<&BTreeMap<Proxy, Vec<String>>>,
    diags: &mut Diagnostics<'_>,
) {
    let has = |kind: ProxyKind| dir.files.contains_key(kind.entry());
    if !ProxyKind::ALL.into_iter().any(has) {
        let path = format!("configs/{}/{}", dir.name, ProxyKind::Sentinel.entry());
        diags.error(
            &dir.files
                .keys()
                .next()
                .map_or(path.clone(), |f| format!("configs/{}/{f}", dir.name)),
            Span::default(),
            "missing-file",
            format!(
                "config `{}` has no `sentinel.kdl` or `zentinel.kdl`",
                dir.name
            ),
            Some(format!(
                "add `{path}` (or `zentinel.kdl` for Zentinel nodes): the proxy config the agent activates"
            )),
        );
        return;
    }
    let wanted: BTreeMap<Proxy, Vec<String>> = match wanted {
        Some(w) if !w.is_empty() => w.clone(),
        _ => ProxyKind::ALL
            .into_iter()
            .filter(|k| has(*k))
            .map(|k| (proxy::default_of(k), Vec::new()))
            .collect(),
    };
    let several = wanted.len() > 1;
    let mut warned: Vec<(&str, ProxyKind)> = Vec::new();
    for (target, nodes) in wanted {
        let own = target.kind;
        let other = ProxyKind::ALL
            .into_iter()
            .find(|k| *k != own)
            .unwrap_or(own);
        let Some(file) = [own, other]
            .into_iter()
            .find(|k| has(*k))
            .map(ProxyKind::entry)
        else {
            continue;
        };
        let path = format!("configs/{}/{file}", dir.name);
        let config = match dir.text(file) {
            None => {
                not_utf8(diags, &path);
                None
            }
            Some(text) => match proxy::validate(own, text) {
                Ok(config) => {
                    if !warned.contains(&(file, own)) {
                        warned.push((file, own));
                        for p in proxy::deprecated(own, text) {
                            diags.warning(&path, p.span, p.code, p.message, p.help);
                        }
                    }
                    Some(config)
                }
                Err(problems) => {
                    // Say which proxy refused, when the file alone does not.
                    let prefix = if several || file != own.entry() {
                        format!("{target} refuses it: ")
                    } else {
                        String::new()
                    };
                    let runs = match nodes.as_slice() {
                        [] => String::new(),
                        [one] => format!("node `{one}` runs {target}"),
                        [first, rest @ ..] => {
                            format!("nodes `{first}` and {} more run {target}", rest.len())
                        }
                    };
                    for p in problems {
                        let help = match (p.help, runs.is_empty() || prefix.is_empty()) {
                            (help, true) => help,
                            (None, false) => Some(runs.clone()),
                            (Some(h), false) => Some(format!("{h} ({runs})")),
                        };
                        diags.error(
                            &path,
                            p.span,
                            p.code,
                            format!("{prefix}{}", p.message),
                            help,
                        );
                    }
                    None
                }
            },
        };
        dir.variants.insert(target, Variant { file, config });
    }
}
