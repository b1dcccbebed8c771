//! The status pages of `gitfleet serve`, rendered on the server from a
//! [`FleetStatus`]: pure functions from a view to HTML. Every value from the
//! repo or a report is escaped; nothing secret is in a view to render.

use std::fmt::Write as _;

use std::collections::{BTreeMap, HashSet};

use gitfleet_policy::view::{link_is_stale, LINK_STALE_AFTER_SECONDS};
use gitfleet_schemas::status::{PeerStatus, WireguardStatus};
use gitfleet_schemas::view::{Counts, FleetStatus, Health, MeshView, NodeView, RolloutView};

use gitfleet_schemas::events::NodeEvent;

use super::bundle_page;
use super::html::esc;
use crate::fmt::url_part;
use crate::fmt::{age, bytes, short_commit, short_digest};
use crate::pass::timeline::Timeline;

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#1d232a}\
header{background:#1d232a;color:#fff;padding:8px 16px;display:flex;gap:16px;align-items:baseline}\
header a{color:#cde}main{padding:8px 16px}table{border-collapse:collapse}\
form.inline{display:inline-block;margin:0 8px 4px 0}.controls{margin:12px 0;padding:4px 12px;border:1px solid #e3e6ea}\
.notice{background:#e7f5ff;border-left:4px solid #1971c2;padding:6px 10px}\
td,th{padding:2px 8px;text-align:left;border-bottom:1px solid #e3e6ea}\
.cards{display:flex;gap:12px}.card{border:1px solid #d0d5da;border-radius:6px;padding:6px 12px}\
.card b{display:block;font-size:22px}.bar{display:inline-block;width:160px;height:10px;background:#e3e6ea;border-radius:5px;vertical-align:middle}\
.bar i{display:block;height:10px;background:#2f9e44;border-radius:5px}\
.healthy{color:#2f9e44}.unhealthy,.failed,.rolled-back{color:#c92a2a}.stale,.unreported,.paused{color:#e67700}\
code{font-size:12px}pre{background:#f6f8fa;padding:6px;overflow-x:auto}\
.add{color:#2f9e44}.del{color:#c92a2a}.hunk{color:#1971c2}.alert{background:#fff4e6;border:1px solid #e67700;padding:6px 12px;border-radius:6px}.hold{background:#e7f5ff;border:1px solid #1971c2;padding:6px 12px;border-radius:6px}tr.stale td{background:#fff4e6;color:#c92a2a}";

/// Re-fetch the page body after every reconcile pass (server-sent events).
const SCRIPT: &str = "const es=new EventSource('/events');\
es.addEventListener('pass',async()=>{const f=document.activeElement;if(f&&f.closest&&f.closest('form'))return;\
const u=new URL(location.href);u.searchParams.set('fragment','1');\
const r=await fetch(u);if(r.ok){document.querySelector('main').innerHTML=await r.text();}});";

/// The fleets this server serves, when it serves several: the header
/// links to each.
static FLEETS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();

/// Name the fleets served (`serve --fleets`), for the switcher.
pub fn set_fleets(names: Vec<String>) {
    let _ = FLEETS.set(names);
}

fn switcher() -> String {
    let Some(names) = FLEETS.get().filter(|n| n.len() > 1) else {
        return String::new();
    };
    let mut out = String::from("<span class=fleets>Fleet:");
    for n in names {
        let _ = write!(
            out,
            " <a href=\"/select-fleet/{}\">{}</a>",
            url_part(n),
            esc(n)
        );
    }
    out.push_str(" · <a href=\"/fleets\">all</a></span>");
    out
}

/// A whole page around `body`.
pub fn layout(title: &str, fleet: &str, body: &str) -> String {
    format!(
        "<!doctype html><html lang=en><head><meta charset=utf-8><title>{} · gitfleet</title>\
<style>{STYLE}</style></head><body><header><strong>gitfleet · {}</strong>\
<a href=\"/\">Overview</a><a href=\"/nodes\">Nodes</a><a href=\"/rollouts\">Rollouts</a><a href=\"/meshes\">Meshes</a><a href=\"/bundles\">Bundles</a>\
<a href=\"/api/status\">JSON</a><a href=\"/metrics\">Metrics</a>{}</header>\
<main>{body}</main><script>{SCRIPT}</script></body></html>",
        esc(title),
        esc(fleet),
        switcher()
    )
}

/// The last pass, as a line above every page.
#[derive(Debug, Default)]
pub struct PassLine {
    pub seconds_ago: Option<i64>,
    pub error: Option<String>,
    pub follower_of: Option<String>,
}

fn pass_line(p: &PassLine) -> String {
    let mut out = match p.seconds_ago {
        Some(s) => format!("<p>Last reconcile pass {} ago", age(s)),
        None => "<p>No reconcile pass yet".to_owned(),
    };
    if let Some(l) = &p.follower_of {
        let _ = write!(out, "; following {} (it holds the lease)", esc(l));
    }
    out.push_str(".</p>");
    if let Some(e) = &p.error {
        let _ = write!(out, "<p class=alert>The last pass failed: {}</p>", esc(e));
    }
    out
}

fn bar(done: u64, total: u64) -> String {
    let pct = (done.min(total) * 100).checked_div(total).unwrap_or(0);
    format!("<span class=bar title=\"{done}/{total}\"><i style=\"width:{pct}%\"></i></span> {done}/{total}")
}

fn cards(c: &Counts) -> String {
    let mut out = String::from("<div class=cards>");
    for (n, what) in [
        (c.nodes, "nodes"),
        (c.healthy, "healthy"),
        (c.unhealthy, "unhealthy"),
        (c.stale, "stale"),
        (c.unreported, "unreported"),
        (c.drifted, "drifted"),
    ] {
        let _ = write!(
            out,
            "<div class=\"card {what}\" data-count=\"{what}\"><b>{n}</b>{what}</div>"
        );
    }
    out.push_str("</div>");
    out
}

fn rollout_row(env: &str, r: &RolloutView) -> String {
    let step = if r.steps == 0 {
        String::new()
    } else {
        format!("{}/{}", r.step, r.steps)
    };
    format!(
        "<tr data-rollout=\"{}\" data-env=\"{}\"><td><a href=\"/rollouts#{}\">{}</a></td><td>{}</td>\
<td class=\"{}\">{}</td><td>{step}</td><td class=progress>{}</td><td>{}</td><td>{}</td></tr>",
        esc(&r.name),
        esc(env),
        url_part(&r.name),
        esc(&r.name),
        esc(env),
        r.phase,
        r.phase,
        bar(r.on_target, r.nodes),
        bundle_page::link(&r.target),
        esc(&r.reason),
    )
}

const ROLLOUT_HEAD: &str =
    "<table><tr><th>Rollout</th><th>Environment</th><th>Phase</th><th>Step</th>\
<th>On target</th><th>Bundle</th><th>Why</th></tr>";

/// `/`: counts, active rollouts, drift and ignored reports.
pub fn overview(v: &FleetStatus, pass: &PassLine) -> String {
    let mut out = pass_line(pass);
    let _ = write!(
        out,
        "<p>Fleet repo at <code>{}</code>; state branch at <code>{}</code>.</p>",
        esc(short_commit(&v.commit)),
        esc(v.state_commit.as_deref().map_or("(none yet)", short_commit))
    );
    out.push_str(&cards(&v.totals));
    for (reason, n) in &v.reports_ignored {
        let _ = write!(
            out,
            "<p class=alert>{n} status report(s) ignored: {}</p>",
            esc(reason)
        );
    }
    out.push_str("<h2>Rollouts</h2>");
    out.push_str(ROLLOUT_HEAD);
    for env in &v.environments {
        for r in &env.rollouts {
            out.push_str(&rollout_row(&env.name, r));
        }
    }
    out.push_str("</table><h2>Environments</h2><table><tr><th>Environment</th><th>Nodes</th><th>Healthy</th><th>Unhealthy</th><th>Stale</th><th>Unreported</th><th>Drifted</th><th>Rules</th></tr>");
    for env in &v.environments {
        let c = &env.counts;
        let rules = env.rules.as_ref().map_or(String::new(), |r| {
            format!("from <code>{}</code>", esc(short_commit(&r.commit)))
        });
        let _ = write!(
            out,
            "<tr><td><a href=\"/nodes?env={}\">{}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{rules}</td></tr>",
            url_part(&env.name),
            esc(&env.name),
            c.nodes,
            c.healthy,
            c.unhealthy,
            c.stale,
            c.unreported,
            c.drifted
        );
    }
    out.push_str("</table>");
    for env in &v.environments {
        if let Some(p) = env.rules.as_ref().and_then(|r| r.pending.as_ref()) {
            let _ = write!(
                out,
                "<p class=alert>Rules change <code>{}</code> for {}: {}</p>",
                esc(short_commit(&p.commit)),
                esc(&env.name),
                esc(&p.reason)
            );
        }
    }
    let drifted: Vec<&NodeView> = v.nodes.iter().filter(|n| !n.drift.is_empty()).collect();
    if !drifted.is_empty() {
        out.push_str("<h2>Drift</h2><ul>");
        for n in drifted {
            for d in &n.drift {
                let _ = write!(
                    out,
                    "<li class=alert><a href=\"/nodes/{}\">{}</a>: {} differs from its bundle</li>",
                    url_part(&n.id),
                    esc(&n.id),
                    esc(&d.path)
                );
            }
        }
        out.push_str("</ul>");
    }
    out
}

/// A node filter: `env` and `label` (`key=value`) from the query.
#[derive(Debug, Default, serde::Deserialize)]
pub struct NodeFilter {
    pub env: Option<String>,
    pub label: Option<String>,
    pub health: Option<String>,
}

impl NodeFilter {
    fn keeps(&self, n: &NodeView) -> bool {
        let env = self
            .env
            .as_deref()
            .filter(|e| !e.is_empty())
            .is_none_or(|e| n.environment == e);
        let label = self
            .label
            .as_deref()
            .filter(|l| !l.is_empty())
            .is_none_or(|l| match l.split_once('=') {
                Some((k, val)) => n.labels.get(k).is_some_and(|x| x == val),
                None => n.labels.contains_key(l),
            });
        let health = self
            .health
            .as_deref()
            .filter(|h| !h.is_empty())
            .is_none_or(|h| n.health.as_str() == h);
        env && label && health
    }
}

/// Rows shown at most on `/nodes`; the filter narrows a larger fleet.
const NODE_ROWS: usize = 500;

/// `/nodes`: a filterable table.
pub fn nodes(v: &FleetStatus, filter: &NodeFilter) -> String {
    let mut out =
        String::from("<form><label>Environment <select name=env><option value=\"\">all</option>");
    for env in &v.environments {
        let selected = if filter.env.as_deref() == Some(env.name.as_str()) {
            " selected"
        } else {
            ""
        };
        let _ = write!(out, "<option{selected}>{}</option>", esc(&env.name));
    }
    let _ = write!(
        out,
        "</select></label> <label>Label <input name=label placeholder=\"role=edge\" value=\"{}\"></label> \
<label>Health <input name=health placeholder=unhealthy value=\"{}\"></label> <button>Filter</button></form>",
        esc(filter.label.as_deref().unwrap_or("")),
        esc(filter.health.as_deref().unwrap_or(""))
    );
    let kept: Vec<&NodeView> = v.nodes.iter().filter(|n| filter.keeps(n)).collect();
    let _ = write!(out, "<p>{} of {} nodes.</p>", kept.len(), v.nodes.len());
    out.push_str("<table><tr><th>Node</th><th>Environment</th><th>Health</th><th>Last report</th><th>Active</th><th>Labels</th></tr>");
    for n in kept.iter().take(NODE_ROWS) {
        let active: Vec<String> = n
            .active
            .iter()
            .map(|(r, d)| format!("{}={}", esc(r), esc(short_digest(d))))
            .collect();
        let labels: Vec<String> = n
            .labels
            .iter()
            .map(|(k, val)| format!("{}={}", esc(k), esc(val)))
            .collect();
        let _ = write!(
            out,
            "<tr data-node=\"{}\"><td><a href=\"/nodes/{}\">{}</a></td><td>{}</td><td class=\"{}\">{}</td><td>{}</td><td><code>{}</code></td><td>{}</td></tr>",
            esc(&n.id),
            url_part(&n.id),
            esc(&n.id),
            esc(&n.environment),
            n.health.as_str(),
            n.health.as_str(),
            n.report_age_seconds.map_or("never".to_owned(), |a| format!("{} ago", age(a))),
            active.join(" "),
            labels.join(" ")
        );
    }
    out.push_str("</table>");
    if kept.len() > NODE_ROWS {
        let _ = write!(
            out,
            "<p>{} more; narrow the filter to see them.</p>",
            kept.len() - NODE_ROWS
        );
    }
    out
}

fn metric(name: &str, value: Option<String>) -> String {
    format!(
        "<tr><td>{name}</td><td>{}</td></tr>",
        esc(&value.unwrap_or_else(|| "-".to_owned()))
    )
}

/// `/nodes/<id>`: one node's report: bundles, metrics, drift, peers.
pub fn node(v: &FleetStatus, n: &NodeView) -> String {
    let mut out = format!(
        "<h2>{}</h2><p>Environment {}; {}; <span class=\"{}\" data-health>{}</span>; last report {}; channel serial {}.</p>",
        esc(&n.id),
        esc(&n.environment),
        esc(&n.proxy.to_string()),
        n.health.as_str(),
        n.health.as_str(),
        n.report_age_seconds
            .map_or("never".to_owned(), |a| format!("{} ago", age(a))),
        n.channel_serial.map_or("-".to_owned(), |s| s.to_string())
    );
    if n.health == Health::Unreported {
        out.push_str("<p class=alert>No verified report: the node has not reported, or its reports do not verify against its key in the repo.</p>");
    }
    out.push_str("<h3>Labels</h3><p>");
    for (k, val) in &n.labels {
        let _ = write!(
            out,
            "<a href=\"/nodes?label={}\"><code>{}={}</code></a> ",
            url_part(&format!("{k}={val}")),
            esc(k),
            esc(val)
        );
    }
    out.push_str(
        "</p><h3>Bundles</h3><table><tr><th>Rollout</th><th>Active</th><th>Before it</th><th>Error</th></tr>",
    );
    let rollouts: std::collections::BTreeSet<&String> = n
        .active
        .keys()
        .chain(n.previous.keys())
        .chain(n.errors.keys())
        .collect();
    for r in rollouts {
        let cell = |d: Option<&String>| d.map_or("-".to_owned(), |d| bundle_page::link(d));
        let diff = match (n.previous.get(r), n.active.get(r)) {
            (Some(p), Some(a)) => {
                format!(" <a href=\"{}\">diff</a>", bundle_page::diff_href(p, a))
            }
            _ => String::new(),
        };
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}{diff}</td><td>{}</td></tr>",
            esc(r),
            cell(n.active.get(r)),
            cell(n.previous.get(r)),
            esc(n.errors.get(r).map_or("", String::as_str))
        );
    }
    out.push_str("</table>");
    if !n.http_checks.is_empty() {
        out.push_str(
            "<h3>Health checks</h3><table><tr><th>URL</th><th>Status</th><th>Result</th></tr>",
        );
        for c in &n.http_checks {
            let (class, word) = if c.ok {
                ("healthy", "ok".to_owned())
            } else {
                let why = c
                    .detail
                    .as_deref()
                    .map(|d| format!(": {d}"))
                    .unwrap_or_default();
                ("unhealthy", format!("failed{why}"))
            };
            // The check's whole description on hover, where it is more
            // than the URL.
            let title = c
                .check
                .as_deref()
                .map(|k| format!(" title=\"{}\"", esc(k)))
                .unwrap_or_default();
            let _ = write!(
                out,
                "<tr><td><code{title}>{}</code></td><td>{}</td><td class={class}>{}</td></tr>",
                esc(&c.url),
                c.status.map_or("-".to_owned(), |s| s.to_string()),
                esc(&word)
            );
        }
        out.push_str("</table>");
    }
    if let Some(e) = &n.last_error {
        let _ = write!(out, "<p class=alert>Last error: {}</p>", esc(e));
    }
    if let Some(m) = &n.proxy_mismatch {
        let _ = write!(out, "<p class=alert>Proxy: {}</p>", esc(m));
    }
    if let Some(h) = &n.hold {
        match &n.pinned {
            Some(b) => {
                let _ = write!(
                    out,
                    "<p class=hold>On hold: {} (its node file's <code>hold</code>; rollouts skip it, and it is pinned to <code>{}</code> once the store has that bundle)</p>",
                    esc(h),
                    esc(b)
                );
            }
            None => {
                let _ = write!(
                    out,
                    "<p class=hold>On hold: {} (its node file's <code>hold</code>; rollouts skip it and it keeps what it runs)</p>",
                    esc(h)
                );
            }
        }
    }
    if let Some(m) = &n.metrics {
        out.push_str("<h3>System</h3><table>");
        out.push_str(&metric(
            "requests",
            m.requests.map(|r| match m.window_seconds {
                Some(w) if w > 0.0 => format!("{r} in {w:.0}s ({:.1}/s)", r as f64 / w),
                _ => r.to_string(),
            }),
        ));
        out.push_str(&metric("5xx answers", m.errors.map(|e| e.to_string())));
        out.push_str(&metric(
            "p50 latency",
            m.p50_latency_ms.map(|x| format!("{x} ms")),
        ));
        out.push_str(&metric(
            "error rate",
            m.error_rate.map(|x| format!("{:.3}%", x * 100.0)),
        ));
        out.push_str(&metric(
            "p99 latency",
            m.p99_latency_ms.map(|x| format!("{x} ms")),
        ));
        out.push_str(&metric("cpu", m.cpu_percent.map(|x| format!("{x:.1}%"))));
        out.push_str(&metric(
            "memory",
            m.memory_percent.map(|x| format!("{x:.1}%")),
        ));
        out.push_str(&metric("disk", m.disk_percent.map(|x| format!("{x:.1}%"))));
        out.push_str(&metric("load (1 min)", m.load1.map(|x| format!("{x:.2}"))));
        out.push_str(&metric("uptime", m.uptime_seconds.map(|x| age(x as i64))));
        out.push_str(&metric("network rx", m.network_rx_bytes.map(bytes)));
        out.push_str(&metric("network tx", m.network_tx_bytes.map(bytes)));
        out.push_str("</table>");
    }
    if !n.drift.is_empty() {
        out.push_str("<h3>Drift</h3><ul>");
        for d in &n.drift {
            let _ = write!(out, "<li class=alert>{}</li>", esc(&d.path));
        }
        out.push_str("</ul>");
    }
    out.push_str("<h3>WireGuard</h3>");
    let nodes = node_ids(v);
    match &n.wireguard {
        None => out.push_str("<p>No interface reported.</p>"),
        Some(wg) => {
            if let Some(next) = &wg.next_public_key {
                let _ = write!(
                    out,
                    "<p class=alert>Key rotation requested: list <code>{}</code> as the wireguard public-key of <code>nodes/{}.kdl</code>.</p>",
                    esc(next),
                    esc(&n.id)
                );
            }
            interface_table(&mut out, v.at, wg, &n.peer_names, &nodes, "peers");
        }
    }
    for wg in &n.monitored {
        let _ = write!(
            out,
            "<h3>Monitored: <code>{}</code></h3>",
            esc(&wg.interface)
        );
        interface_table(&mut out, v.at, wg, &n.peer_names, &nodes, "monitored");
    }
    out
}

/// One WireGuard interface and its peers: a peer of the fleet by its node
/// id (its key on hover), a stale one highlighted.
fn interface_table(
    out: &mut String,
    at: chrono::DateTime<chrono::Utc>,
    wg: &WireguardStatus,
    names: &BTreeMap<String, String>,
    nodes: &HashSet<&str>,
    id: &str,
) {
    let _ = write!(
        out,
        "<p>Interface <code>{}</code>, key <code>{}</code>, port {}.</p>\
<table id={id}><tr><th>Peer</th><th>Endpoint</th><th>Allowed IPs</th><th>Handshake</th><th>rx</th><th>tx</th></tr>",
        esc(&wg.interface),
        esc(&wg.public_key),
        wg.listen_port.map_or("-".to_owned(), |p| p.to_string())
    );
    for p in &wg.peers {
        let who = match names.get(&p.public_key) {
            None => format!("<code>{}</code>", esc(&p.public_key)),
            Some(node) if nodes.contains(node.as_str()) => format!(
                "<a href=\"/nodes/{0}\" title=\"{1}\">{0}</a>",
                esc(node),
                esc(&p.public_key)
            ),
            // An external peer of a mesh: no page of its own.
            Some(name) => format!(
                "<span title=\"{}\">{} (external)</span>",
                esc(&p.public_key),
                esc(name)
            ),
        };
        let rate = |total: u64, per_second: Option<u64>| match per_second {
            Some(r) => format!("{} ({}/s)", bytes(total), bytes(r)),
            None => bytes(total),
        };
        let handshake = p.latest_handshake.map_or("never".to_owned(), |t| {
            format!("{} ago", age((at - t).num_seconds()))
        });
        let class = if p.stale { "peer stale" } else { "peer" };
        let _ = write!(
            out,
            "<tr class=\"{class}\"><td>{who}</td><td>{}</td><td>{}</td><td>{handshake}{}</td><td>{}</td><td>{}</td></tr>",
            esc(p.endpoint.as_deref().unwrap_or("-")),
            esc(&p.allowed_ips.join(", ")),
            if p.stale { " (stale)" } else { "" },
            rate(p.rx_bytes, p.rx_bytes_per_second),
            rate(p.tx_bytes, p.tx_bytes_per_second)
        );
    }
    out.push_str("</table>");
}

fn node_ids(v: &FleetStatus) -> HashSet<&str> {
    v.nodes.iter().map(|n| n.id.as_str()).collect()
}

/// A WireGuard link is stale after this long without a handshake.
fn link_stale_after() -> chrono::Duration {
    chrono::Duration::seconds(LINK_STALE_AFTER_SECONDS)
}

/// `/meshes`: every mesh with its members and how its links are.
pub fn meshes(v: &FleetStatus) -> String {
    let mut out = String::from("<h2>Meshes</h2>");
    if v.meshes.is_empty() {
        out.push_str("<p>The fleet repo has no meshes (<code>meshes/&lt;name&gt;.kdl</code>).</p>");
        return out;
    }
    out.push_str("<table><tr><th>Mesh</th><th>Range</th><th>Topology</th><th>Members</th><th>External peers</th><th>Links</th></tr>");
    for m in &v.meshes {
        let (links, stale) = link_counts(v, m);
        let _ = write!(
            out,
            "<tr data-mesh=\"{0}\"><td><a href=\"/meshes/{1}\">{0}</a></td><td>{2}</td><td>{3}</td><td>{4}</td><td>{5}</td><td{6}>{7} of {8} stale</td></tr>",
            esc(&m.name),
            url_part(&m.name),
            esc(&m.cidr),
            m.topology.as_str(),
            m.members.len(),
            m.external.len(),
            if stale > 0 { " class=stale" } else { "" },
            stale,
            links
        );
    }
    out.push_str("</table>");
    out
}

/// The links the members of `m` report, and how many are stale.
fn link_counts(v: &FleetStatus, m: &MeshView) -> (usize, usize) {
    let mut links = 0;
    let mut stale = 0;
    for p in member_views(v, m)
        .filter_map(|n| n.wireguard.as_ref())
        .flat_map(|wg| &wg.peers)
    {
        links += 1;
        if link_is_stale(p, v.at, link_stale_after()) {
            stale += 1;
        }
    }
    (links, stale)
}

fn member_views<'a>(v: &'a FleetStatus, m: &'a MeshView) -> impl Iterator<Item = &'a NodeView> {
    v.nodes
        .iter()
        .filter(|n| m.members.binary_search(&n.id).is_ok())
}

/// `/meshes/<name>`: each member's peers (by node id, external peers by
/// name) with handshake age and traffic, stale links highlighted, and the
/// external peers as the members see them.
pub fn mesh(v: &FleetStatus, m: &MeshView) -> String {
    let (links, stale) = link_counts(v, m);
    let mut out = String::new();
    let _ = write!(
        out,
        "<h2>Mesh {}</h2><p><code>{}</code>, {}, {} member(s){}, {} external peer(s); \
<span data-stale-links=\"{stale}\">{stale} of {links} link(s) stale</span> (no handshake within {}).</p>",
        esc(&m.name),
        esc(&m.cidr),
        m.topology.as_str(),
        m.members.len(),
        if m.hubs.is_empty() {
            String::new()
        } else {
            format!(", hubs {}", esc(&m.hubs.join(", ")))
        },
        m.external.len(),
        age(LINK_STALE_AFTER_SECONDS),
    );
    let mut seen: BTreeMap<&str, Vec<(&str, &PeerStatus)>> = BTreeMap::new();
    for n in member_views(v, m) {
        for p in n.wireguard.iter().flat_map(|wg| &wg.peers) {
            seen.entry(p.public_key.as_str())
                .or_default()
                .push((n.id.as_str(), p));
        }
    }
    if !m.external.is_empty() {
        out.push_str("<h3>External peers</h3><table id=external><tr><th>Peer</th><th>Address</th><th>Seen by</th><th>Latest handshake</th><th>rx</th><th>tx</th></tr>");
        for e in &m.external {
            let links = seen
                .get(e.public_key.as_str())
                .map_or(&[][..], Vec::as_slice);
            let live: Vec<&str> = links
                .iter()
                .filter(|(_, p)| !link_is_stale(p, v.at, link_stale_after()))
                .map(|(n, _)| *n)
                .collect();
            let latest = links.iter().filter_map(|(_, p)| p.latest_handshake).max();
            let class = if live.is_empty() {
                " class=\"peer stale\""
            } else {
                " class=peer"
            };
            let _ = write!(
                out,
                "<tr{class}><td title=\"{}\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&e.public_key),
                esc(&e.name),
                esc(&e.address),
                if live.is_empty() {
                    "nobody".to_owned()
                } else {
                    esc(&live.join(", "))
                },
                latest.map_or("never".to_owned(), |t| format!("{} ago", age((v.at - t).num_seconds()))),
                bytes(links.iter().map(|(_, p)| p.rx_bytes).sum()),
                bytes(links.iter().map(|(_, p)| p.tx_bytes).sum()),
            );
        }
        out.push_str("</table>");
    }
    let nodes = node_ids(v);
    for n in member_views(v, m) {
        let hub = if m.hubs.contains(&n.id) { " (hub)" } else { "" };
        let _ = write!(
            out,
            "<h3><a href=\"/nodes/{}\">{}</a>{hub}</h3>",
            url_part(&n.id),
            esc(&n.id)
        );
        match &n.wireguard {
            None => out.push_str("<p>No interface reported.</p>"),
            Some(wg) => {
                let mut wg = wg.clone();
                for p in &mut wg.peers {
                    p.stale = link_is_stale(p, v.at, link_stale_after());
                }
                let id = format!("peers-{}", n.id);
                interface_table(&mut out, v.at, &wg, &n.peer_names, &nodes, &id);
            }
        }
    }
    out
}

/// `/rollouts`: every rollout per environment, with how to steer it.
pub fn rollouts(v: &FleetStatus) -> String {
    let mut names: Vec<&str> = v
        .environments
        .iter()
        .flat_map(|e| e.rollouts.iter().map(|r| r.name.as_str()))
        .collect();
    names.sort_unstable();
    names.dedup();
    let mut out = String::new();
    if names.is_empty() {
        out.push_str("<p>No rollout has state yet.</p>");
    }
    for name in names {
        let _ = write!(
            out,
            "<h2 id=\"{}\"><a href=\"/rollouts/{}\">{}</a></h2>",
            url_part(name),
            url_part(name),
            esc(name)
        );
        out.push_str(ROLLOUT_HEAD);
        for env in &v.environments {
            for r in env.rollouts.iter().filter(|r| r.name == name) {
                out.push_str(&rollout_row(&env.name, r));
                if !r.failed_nodes.is_empty() {
                    let _ = write!(
                        out,
                        "<tr><td></td><td colspan=6 class=failed>Failed gates: {}</td></tr>",
                        esc(&r.failed_nodes.join(", "))
                    );
                }
            }
        }
        out.push_str("</table>");
        let first = v
            .environments
            .iter()
            .flat_map(|e| e.rollouts.iter())
            .find(|r| r.name == name);
        if let Some(r) = first {
            let _ = write!(
                out,
                "<p>Built from commit <code>{}</code>; bundle {}; previous bundle {}.</p>",
                esc(short_commit(&r.source_commit)),
                bundle_page::link(&r.target),
                r.previous
                    .as_deref()
                    .map_or("none".to_owned(), bundle_page::link)
            );
            if let Some(p) = &r.previous {
                let _ = write!(
                    out,
                    "<p><a href=\"{}\">What changed from the previous bundle</a></p>",
                    bundle_page::diff_href(p, &r.target)
                );
            }
        }
        let _ = write!(
            out,
            "<details><summary>Steer it (commits to the fleet repo)</summary><pre>\
gitfleet rollout pause {n}      # hold at the current step\n\
gitfleet rollout resume {n}\n\
gitfleet rollout rollback {n} -m \"why\"   # every node back to the previous bundle</pre></details>",
            n = esc(name)
        );
    }
    out
}

/// Who is signed in, and for an operator the buttons.
fn controls(name: &str, viewer: &super::auth::Viewer, awaiting: &[String], fleet: &str) -> String {
    use super::auth::Role;
    let role = match viewer.role {
        Role::Operator => "operator",
        Role::Viewer => "viewer",
    };
    let mut out = format!(
        "<div class=controls data-role=\"{role}\"><p>Signed in as <b data-login>{}</b> ({role}). {}</p>",
        esc(&viewer.login),
        super::auth::sign_out_form(&viewer.csrf)
    );
    if viewer.role == Role::Operator {
        let form = |action: &str, label: &str, extra: &str| {
            format!(
                "<form method=post action=\"/rollouts/{}/{action}\" class=inline>\
<input type=hidden name=csrf value=\"{}\"><input type=hidden name=fleet value=\"{}\">{extra}<button type=submit data-action=\"{action}\">{label}</button></form>",
                url_part(name),
                esc(&viewer.csrf),
                esc(fleet),
            )
        };
        out.push_str("<p>Each button commits to the fleet repo as you (or approves on GitHub as you); the reconciler acts on its next pass.</p><p>");
        out.push_str(&form("pause", "Pause", ""));
        out.push_str(&form("resume", "Resume", ""));
        out.push_str(&form(
            "rollback",
            "Roll back",
            "<input name=why placeholder=\"why (for the commit)\">",
        ));
        for env in awaiting {
            out.push_str(&form(
                "approve",
                &format!("Approve for {}", esc(env)),
                &format!("<input type=hidden name=env value=\"{}\">", esc(env)),
            ));
        }
        out.push_str("</p>");
    }
    out.push_str("</div>");
    out
}

/// `/rollouts/<name>`: where the rollout stands in each environment, a
/// chart per environment of its nodes admitted and on target over the
/// state branch's history, and its events, newest first.
///
/// Signed in (`viewer`), it says who; an operator also gets the buttons
/// (pause, resume, roll back, and approve where the rollout awaits
/// approval), each a form carrying the session's CSRF token. `done` is
/// what an action just did.
pub fn rollout(
    v: &FleetStatus,
    name: &str,
    timeline: &Timeline,
    viewer: Option<&super::auth::Viewer>,
    done: Option<&str>,
    fleet: Option<&str>,
) -> String {
    let mut out = format!("<h2>{}</h2>", esc(name));
    if let Some(done) = done {
        let _ = write!(
            out,
            "<p class=notice data-done>{}. The reconciler acts on its next pass.</p>",
            esc(done)
        );
    }
    out.push_str(ROLLOUT_HEAD);
    let mut awaiting = Vec::new();
    for env in &v.environments {
        for r in env.rollouts.iter().filter(|r| r.name == name) {
            out.push_str(&rollout_row(&env.name, r));
            if r.phase == gitfleet_schemas::state::Phase::AwaitingApproval {
                awaiting.push(env.name.clone());
            }
        }
    }
    out.push_str("</table>");
    if let Some(viewer) = viewer {
        out.push_str(&controls(name, viewer, &awaiting, fleet.unwrap_or("")));
    }
    out.push_str("<h3>Over time</h3>");
    let mut charted = false;
    for env in &v.environments {
        let Some(r) = env.rollouts.iter().find(|r| r.name == name) else {
            continue;
        };
        let Some(points) = timeline.points.get(&(name.to_owned(), env.name.clone())) else {
            continue;
        };
        let points: Vec<_> = points.iter().cloned().collect();
        let _ = write!(
            out,
            "<h4>{}</h4><p class=legend><span style=\"color:#1971c2\">━ admitted</span> \
<span style=\"color:#2f9e44\">╍ on target</span> of {} nodes; dashed lines: completed (green), failed or rolled back (red)</p>{}",
            esc(&env.name),
            r.nodes,
            super::chart::rollout_chart(&env.name, &points, r.nodes, v.at)
        );
        charted = true;
    }
    if !charted {
        out.push_str("<p>The state branch has no history of it in the last 14 days.</p>");
    }
    out.push_str("<h3>Events</h3>");
    match timeline.events.get(name).filter(|e| !e.is_empty()) {
        None => out.push_str("<p>None in the last 14 days.</p>"),
        Some(events) => {
            out.push_str(
                "<table class=events><tr><th>When</th><th>Environment</th><th>Event</th><th>Bundle</th><th>What</th></tr>",
            );
            for e in events.iter().rev().take(100) {
                let _ = write!(
                    out,
                    "<tr data-kind=\"{kind}\"><td>{}</td><td>{}</td><td class=\"{kind}\">{kind}</td><td>{}</td><td>{}</td></tr>",
                    e.at.format("%Y-%m-%d %H:%M:%S"),
                    esc(e.environment.as_deref().unwrap_or("-")),
                    e.target.as_deref().map_or("-".to_owned(), bundle_page::link),
                    esc(&e.summary),
                    kind = e.kind,
                );
            }
            out.push_str("</table>");
        }
    }
    out
}

/// The node's events of the last days, newest first (`events`: as read
/// from the store and verified with its key, or why they could not be).
pub fn node_events(events: &Result<Vec<NodeEvent>, String>) -> String {
    let mut out = String::from("<h3>Events</h3>");
    match events {
        Err(why) => {
            let _ = write!(
                out,
                "<p class=alert>Cannot read its events: {}</p>",
                esc(why)
            );
        }
        Ok(events) if events.is_empty() => {
            out.push_str("<p>None today or yesterday (UTC).</p>");
        }
        Ok(events) => {
            out.push_str(
                "<table class=events><tr><th>When (node's clock)</th><th>Event</th><th>Rollout</th><th>Bundle</th><th>Detail</th></tr>",
            );
            for e in events.iter().rev() {
                let _ = write!(
                    out,
                    "<tr data-kind=\"{kind}\"><td>{}</td><td>{kind}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    e.at.format("%Y-%m-%d %H:%M:%S"),
                    esc(e.rollout.as_deref().unwrap_or("-")),
                    e.bundle.as_deref().map_or("-".to_owned(), bundle_page::link),
                    esc(e.detail.as_deref().unwrap_or("")),
                    kind = e.kind.name(),
                );
            }
            out.push_str("</table>");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_of_the_fleet_is_named_by_its_node_and_a_stale_one_is_marked() {
        use gitfleet_schemas::status::{PeerStatus, WireguardStatus};
        let at = chrono::DateTime::UNIX_EPOCH + chrono::Duration::hours(1);
        let peer = |key: &str, stale: bool| PeerStatus {
            public_key: key.to_owned(),
            endpoint: Some("192.0.2.1:51820".into()),
            allowed_ips: vec!["10.0.0.2/32".into()],
            latest_handshake: Some(at - chrono::Duration::seconds(400)),
            rx_bytes: 2048,
            tx_bytes: 1024,
            persistent_keepalive_seconds: None,
            rx_bytes_per_second: Some(512),
            tx_bytes_per_second: None,
            stale,
        };
        let wg = WireguardStatus {
            interface: "wg0".into(),
            public_key: "me".into(),
            listen_port: Some(51820),
            peers: vec![peer("KEY-A", false), peer("LAPTOP", true)],
            next_public_key: None,
        };
        let names = BTreeMap::from([("KEY-A".to_owned(), "edge-1".to_owned())]);
        let mut out = String::new();
        let nodes = HashSet::from(["edge-1"]);
        interface_table(&mut out, at, &wg, &names, &nodes, "monitored");
        assert!(
            out.contains("<a href=\"/nodes/edge-1\" title=\"KEY-A\">edge-1</a>"),
            "{out}"
        );
        assert!(
            out.contains("<tr class=\"peer stale\"><td><code>LAPTOP</code>"),
            "{out}"
        );
        assert!(out.contains("(stale)"), "{out}");
        assert!(out.contains("/s)"), "{out}");
    }

    #[test]
    fn a_mesh_page_shows_each_members_links_its_hubs_and_external_peers_as_seen() {
        use gitfleet_schemas::mesh::Topology;
        use gitfleet_schemas::view::ExternalPeerView;
        let mut v = bundle_page::tests::sample_view();
        let at = v.at;
        let peer = |key: &str, handshake: Option<i64>| PeerStatus {
            public_key: key.to_owned(),
            endpoint: None,
            allowed_ips: vec![],
            latest_handshake: handshake.map(|s| at - chrono::Duration::seconds(s)),
            rx_bytes: 100,
            tx_bytes: 50,
            persistent_keepalive_seconds: Some(25),
            rx_bytes_per_second: None,
            tx_bytes_per_second: None,
            stale: false,
        };
        let mut n2 = v.nodes[0].clone();
        n2.id = "n2".into();
        v.nodes[0].wireguard = Some(WireguardStatus {
            interface: "wg-lab".into(),
            public_key: "KEY-1".into(),
            listen_port: Some(51820),
            peers: vec![peer("KEY-2", Some(30)), peer("KEY-LAPTOP", None)],
            next_public_key: None,
        });
        v.nodes[0].peer_names = BTreeMap::from([
            ("KEY-2".to_owned(), "n2".to_owned()),
            ("KEY-LAPTOP".to_owned(), "laptop".to_owned()),
        ]);
        v.nodes.push(n2);
        v.meshes = vec![MeshView {
            name: "lab".into(),
            cidr: "10.77.0.0/24".into(),
            topology: Topology::HubAndSpoke,
            members: vec!["n1".into(), "n2".into()],
            hubs: vec!["n1".into()],
            external: vec![ExternalPeerView {
                name: "laptop".into(),
                public_key: "KEY-LAPTOP".into(),
                address: "10.77.0.254".into(),
            }],
        }];
        let page = mesh(&v, &v.meshes[0]);
        assert!(
            page.contains("hub-and-spoke, 2 member(s), hubs n1, 1 external peer(s)"),
            "{page}"
        );
        assert!(
            page.contains("data-stale-links=\"1\">1 of 2 link(s) stale"),
            "{page}"
        );
        assert!(
            page.contains("<h3><a href=\"/nodes/n1\">n1</a> (hub)</h3>"),
            "{page}"
        );
        assert!(
            page.contains("<h3><a href=\"/nodes/n2\">n2</a></h3><p>No interface reported.</p>"),
            "{page}"
        );
        assert!(
            page.contains("<a href=\"/nodes/n2\" title=\"KEY-2\">n2</a>"),
            "{page}"
        );
        // The laptop: named, no page to link, never seen.
        assert!(
            page.contains("<span title=\"KEY-LAPTOP\">laptop (external)</span>"),
            "{page}"
        );
        assert!(
            page.contains("<tr class=\"peer stale\"><td title=\"KEY-LAPTOP\">laptop</td><td>10.77.0.254</td><td>nobody</td><td>never</td>"),
            "{page}"
        );
        let index = meshes(&v);
        assert!(index.contains("<a href=\"/meshes/lab\">lab</a>"), "{index}");
        assert!(
            index.contains("<td class=stale>1 of 2 stale</td>"),
            "{index}"
        );
    }

    #[test]
    fn markup_in_values_is_escaped() {
        assert_eq!(
            esc("<script>\"x\" & 'y'</script>"),
            "&lt;script&gt;&quot;x&quot; &amp; &#39;y&#39;&lt;/script&gt;"
        );
        assert_eq!(url_part("role=edge/x y"), "role%3Dedge%2Fx%20y");
    }

    #[test]
    fn bars_are_proportional_and_capped() {
        assert!(bar(1, 4).contains("width:25%"));
        assert!(bar(9, 4).contains("width:100%"));
        assert!(bar(0, 0).contains("width:0%"));
    }
}
