//! The bundle pages of `gitfleet serve`: which bundles the fleet runs,
//! what one holds (files, contents, SBOM) and how two differ.
//!
//! A bundle is read from the object store and verified against the digest
//! in the URL before anything of it is shown, so a page shows exactly the
//! bytes a node would activate. Bundles are immutable, so verified ones are
//! kept (a few, the most recently used).

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use gitfleet_io::store::Store;
use gitfleet_schemas::bundle::SBOM_PATH;
use gitfleet_schemas::trust::{valid_digest, BundleRef};
use gitfleet_schemas::verify::{verify_bundle, Bundle, Limits, Verified};
use gitfleet_schemas::view::FleetStatus;

use super::html::esc;
use crate::fmt::url_part;
use crate::fmt::{short_commit, short_digest};

/// Verified bundles kept in memory.
const KEPT: usize = 8;
/// A file's contents are shown up to this size.
const SHOWN_BYTES: usize = 64 * 1024;
/// A diff is shown up to this size.
const SHOWN_DIFF: usize = 1024 * 1024;

/// Why a bundle page cannot be shown.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{0:?} is not a bundle digest (sha256:<64 lowercase hex digits>, or the 64 digits)")]
    BadDigest(String),
    #[error("no bundle {0} in the object store")]
    Missing(String),
    #[error("bundle {digest} in the object store does not verify: {reason}")]
    Invalid { digest: String, reason: String },
    #[error("reading bundle {digest} from the object store: {reason}")]
    Store { digest: String, reason: String },
}

/// The digest a URL names: `sha256:<hex>` or the bare hex.
pub fn digest_of(part: &str) -> Result<String, BundleError> {
    let digest = if part.starts_with("sha256:") {
        part.to_owned()
    } else {
        format!("sha256:{part}")
    };
    if valid_digest(&digest) {
        Ok(digest)
    } else {
        Err(BundleError::BadDigest(part.to_owned()))
    }
}

/// Bundles read from the store, verified, the last few kept.
#[derive(Debug)]
pub struct Bundles {
    /// Set once the fleet is open.
    store: std::sync::OnceLock<Store>,
    kept: Mutex<VecDeque<Arc<Verified<Bundle>>>>,
}

impl Bundles {
    pub fn new(store: Option<Store>) -> Self {
        let cell = std::sync::OnceLock::new();
        if let Some(store) = store {
            let _ = cell.set(store);
        }
        Bundles {
            store: cell,
            kept: Mutex::new(VecDeque::new()),
        }
    }

    /// The store, once the fleet it belongs to is open.
    pub fn set_store(&self, store: Store) {
        let _ = self.store.set(store);
    }

    /// The verified bundle `digest` names.
    pub async fn get(&self, digest: &str) -> Result<Arc<Verified<Bundle>>, BundleError> {
        if let Some(b) = self.lookup(digest) {
            return Ok(b);
        }
        let store_error = |reason: String| BundleError::Store {
            digest: digest.to_owned(),
            reason,
        };
        let store = self
            .store
            .get()
            .ok_or_else(|| store_error("no object store".to_owned()))?;
        let mut reference = BundleRef {
            digest: digest.to_owned(),
            length: 0,
        };
        let key = reference
            .object_key()
            .ok_or_else(|| BundleError::BadDigest(digest.to_owned()))?;
        let object = store
            .get(&key)
            .await
            .map_err(|e| store_error(gitfleet_io::error_chain(&e)))?
            .ok_or_else(|| BundleError::Missing(digest.to_owned()))?;
        reference.length = object.bytes.len() as u64;
        // Decompressing and hashing is CPU work: off the request threads.
        let verified = tokio::task::spawn_blocking(move || {
            verify_bundle(&reference, &object.bytes, Limits::default())
        })
        .await
        .map_err(|e| store_error(format!("verifying: {e}")))?
        .map_err(|e| BundleError::Invalid {
            digest: digest.to_owned(),
            reason: e.to_string(),
        })?;
        let bundle = Arc::new(verified);
        self.keep(Arc::clone(&bundle));
        Ok(bundle)
    }

    fn lookup(&self, digest: &str) -> Option<Arc<Verified<Bundle>>> {
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        let i = kept.iter().position(|b| b.reference.digest == digest)?;
        let b = kept.remove(i)?;
        kept.push_front(Arc::clone(&b));
        Some(b)
    }

    fn keep(&self, bundle: Arc<Verified<Bundle>>) {
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        kept.retain(|b| b.reference.digest != bundle.reference.digest);
        kept.push_front(bundle);
        kept.truncate(KEPT);
    }
}

/// What the fleet view says about one bundle.
#[derive(Debug, Default)]
struct Uses {
    /// (environment, rollout) it is the target of.
    target_of: Vec<(String, String)>,
    /// (environment, rollout) it is the previous bundle of.
    previous_of: Vec<(String, String)>,
    /// Nodes that report it active.
    active_on: Vec<String>,
}

fn uses(v: &FleetStatus) -> BTreeMap<&str, Uses> {
    let mut out: BTreeMap<&str, Uses> = BTreeMap::new();
    for env in &v.environments {
        for r in &env.rollouts {
            out.entry(&r.target)
                .or_default()
                .target_of
                .push((env.name.clone(), r.name.clone()));
            if let Some(p) = &r.previous {
                out.entry(p)
                    .or_default()
                    .previous_of
                    .push((env.name.clone(), r.name.clone()));
            }
        }
    }
    for n in &v.nodes {
        for d in n.active.values() {
            out.entry(d).or_default().active_on.push(n.id.clone());
        }
    }
    out
}

/// A digest as a URL path segment: its hex, percent-encoded.
fn segment(digest: &str) -> String {
    url_part(digest.strip_prefix("sha256:").unwrap_or(digest))
}

/// A link to a bundle's page.
pub fn link(digest: &str) -> String {
    format!(
        "<a href=\"/bundles/{}\"><code>{}</code></a>",
        segment(digest),
        esc(short_digest(digest))
    )
}

/// The address of the diff from bundle `from` to bundle `to`.
pub fn diff_href(from: &str, to: &str) -> String {
    format!("/bundles/{}/diff/{}", segment(from), segment(to))
}

fn pairs(list: &[(String, String)]) -> String {
    list.iter()
        .map(|(env, r)| format!("{}/{}", esc(r), esc(env)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `/bundles`: every bundle a rollout or a node names.
pub fn index(v: &FleetStatus) -> String {
    let all = uses(v);
    let mut out = format!(
        "<p>{} bundles named by rollouts or reported active. Each page reads the bundle from the object store and verifies it first.</p>\
<table><tr><th>Bundle</th><th>Target of</th><th>Previous of</th><th>Active on</th></tr>",
        all.len()
    );
    for (digest, u) in &all {
        let _ = write!(
            out,
            "<tr data-bundle=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td>{} nodes</td></tr>",
            esc(digest),
            link(digest),
            pairs(&u.target_of),
            pairs(&u.previous_of),
            u.active_on.len()
        );
    }
    out.push_str("</table>");
    out
}

/// `/bundles/<digest>`: the manifest, the SBOM's services, every file with
/// its contents, who runs it, and links to diffs.
pub fn detail(v: &FleetStatus, b: &Bundle) -> String {
    let m = &b.manifest;
    let kind = serde_json::to_value(m.kind)
        .ok()
        .and_then(|k| k.as_str().map(str::to_owned))
        .unwrap_or_default();
    let mut out = format!(
        "<h2>Bundle {}</h2><p>Verified against its digest: the bytes a node activates.</p><table>\
<tr><td>digest</td><td><code>{}</code></td></tr><tr><td>length</td><td>{} bytes</td></tr>\
<tr><td>name</td><td>{}</td></tr><tr><td>kind</td><td>{}</td></tr>\
<tr><td>source commit</td><td><code>{}</code></td></tr><tr><td>validator</td><td>{}</td></tr></table>",
        esc(short_digest(&b.reference.digest)),
        esc(&b.reference.digest),
        b.reference.length,
        esc(&m.name),
        esc(&kind),
        esc(&m.source_commit),
        esc(&m.validator),
    );
    let all = uses(v);
    let u = all.get(b.reference.digest.as_str());
    if let Some(u) = u {
        if !u.target_of.is_empty() {
            let _ = write!(out, "<p>Target of {}.</p>", pairs(&u.target_of));
        }
        if !u.previous_of.is_empty() {
            let _ = write!(out, "<p>Previous bundle of {}.</p>", pairs(&u.previous_of));
        }
        let shown: Vec<String> = u
            .active_on
            .iter()
            .take(50)
            .map(|n| format!("<a href=\"/nodes/{}\">{}</a>", url_part(n), esc(n)))
            .collect();
        let more = u.active_on.len().saturating_sub(shown.len());
        let _ = write!(
            out,
            "<p>Active on {} nodes: {}{}</p>",
            u.active_on.len(),
            shown.join(", "),
            if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            }
        );
    }
    // Diffs against the bundles it replaces or is replaced by.
    let mut against: Vec<&str> = Vec::new();
    for env in &v.environments {
        for r in &env.rollouts {
            if r.target == b.reference.digest {
                against.extend(r.previous.as_deref());
            } else if r.previous.as_deref() == Some(b.reference.digest.as_str()) {
                against.push(&r.target);
            }
        }
    }
    against.sort_unstable();
    against.dedup();
    for other in against {
        let _ = write!(
            out,
            "<p><a href=\"{}\">Diff against {}</a></p>",
            diff_href(other, &b.reference.digest),
            esc(short_digest(other))
        );
    }
    out.push_str(&sbom(b));
    out.push_str("<h3>Files</h3><table><tr><th>Path</th><th>Size</th><th>SHA-256</th></tr>");
    for f in &m.files {
        let _ = write!(
            out,
            "<tr><td><code>{}</code></td><td>{}</td><td><code>{}</code></td></tr>",
            esc(&f.path),
            f.size,
            esc(&f.sha256)
        );
    }
    out.push_str("</table>");
    for (path, bytes) in &b.files {
        let _ = write!(
            out,
            "<details><summary><code>{}</code> ({} bytes)</summary>",
            esc(path),
            bytes.len()
        );
        match std::str::from_utf8(bytes) {
            Ok(text) => {
                let shown = truncate(text, SHOWN_BYTES);
                let _ = write!(out, "<pre>{}</pre>", esc(shown));
                if shown.len() < text.len() {
                    let _ = write!(
                        out,
                        "<p>First {} bytes shown; <code>gitfleet bundle inspect</code> reads it all.</p>",
                        shown.len()
                    );
                }
            }
            Err(_) => out.push_str("<p>Binary file.</p>"),
        }
        out.push_str("</details>");
    }
    out
}

/// The longest prefix of `text` of at most `max` bytes, ending on a char.
fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// The SBOM's services (listeners, routes, upstreams, agents; mesh peers).
fn sbom(b: &Bundle) -> String {
    let Some(bytes) = b.files.get(SBOM_PATH) else {
        return format!("<p class=alert>No {SBOM_PATH} in this bundle.</p>");
    };
    let doc: serde_json::Value = match serde_json::from_slice(bytes) {
        Ok(doc) => doc,
        Err(e) => {
            return format!(
                "<p class=alert>{SBOM_PATH} is not JSON: {}</p>",
                esc(&e.to_string())
            )
        }
    };
    let counts = crate::bundles::sbom_counts(b)
        .map(|c| {
            c.iter()
                .map(|(k, n)| format!("{n} {k}"))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    let mut out = format!(
        "<h3>SBOM</h3><p>CycloneDX, <code>{SBOM_PATH}</code>: {}.</p>\
<table id=sbom><tr><th>Service</th><th>Endpoints</th><th>Properties</th></tr>",
        esc(&counts)
    );
    let services = doc["services"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    for s in services {
        let endpoints: Vec<&str> = s["endpoints"]
            .as_array()
            .map(|a| a.iter().filter_map(|e| e.as_str()).collect())
            .unwrap_or_default();
        let properties: Vec<String> = s["properties"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|p| {
                        let name = p["name"].as_str().unwrap_or_default();
                        let name = name.strip_prefix("gitfleet:").unwrap_or(name);
                        format!("{}={}", name, p["value"].as_str().unwrap_or_default())
                    })
                    .collect()
            })
            .unwrap_or_default();
        let _ = write!(
            out,
            "<tr><td>{}</td><td><code>{}</code></td><td><code>{}</code></td></tr>",
            esc(s["name"].as_str().unwrap_or_default()),
            esc(&endpoints.join(" ")),
            esc(&properties.join(" "))
        );
    }
    out.push_str("</table>");
    out
}

/// `/bundles/<a>/diff/<b>`: what changes from `a` to `b`, file by file.
pub fn diff(a: &Bundle, b: &Bundle) -> String {
    let mut out = format!(
        "<h2>{} → {}</h2><p>From {} (commit <code>{}</code>) to {} (commit <code>{}</code>); both verified.</p>",
        esc(short_digest(&a.reference.digest)),
        esc(short_digest(&b.reference.digest)),
        link(&a.reference.digest),
        esc(short_commit(&a.manifest.source_commit)),
        link(&b.reference.digest),
        esc(short_commit(&b.manifest.source_commit)),
    );
    let text = crate::bundles::difference(a, b);
    if a.reference == b.reference {
        out.push_str("<p>The same bundle.</p>");
        return out;
    }
    if text.is_empty() {
        out.push_str("<p>The same files in different archives.</p>");
        return out;
    }
    let shown = truncate(&text, SHOWN_DIFF);
    out.push_str("<pre class=diff>");
    for line in shown.lines() {
        let class = match line.as_bytes().first() {
            Some(b'+') if !line.starts_with("+++") => " class=add",
            Some(b'-') if !line.starts_with("---") => " class=del",
            Some(b'@') => " class=hunk",
            _ => "",
        };
        let _ = writeln!(out, "<span{class}>{}</span>", esc(line));
    }
    out.push_str("</pre>");
    if shown.len() < text.len() {
        let _ = write!(
            out,
            "<p>First {} bytes of the diff shown; <code>gitfleet bundle diff</code> prints it all.</p>",
            shown.len()
        );
    }
    out
}

/// A bundle page that cannot be shown, with its status code.
pub fn error_status(e: &BundleError) -> axum::http::StatusCode {
    use axum::http::StatusCode;
    match e {
        BundleError::BadDigest(_) => StatusCode::BAD_REQUEST,
        BundleError::Missing(_) => StatusCode::NOT_FOUND,
        BundleError::Invalid { .. } | BundleError::Store { .. } => StatusCode::BAD_GATEWAY,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use gitfleet_schemas::bundle::{BundleFile, BundleKind, BundleManifest};

    fn bundle(digest_digit: char, files: &[(&str, &str)]) -> Bundle {
        Bundle {
            reference: BundleRef {
                digest: format!("sha256:{}", digest_digit.to_string().repeat(64)),
                length: 42,
            },
            manifest: BundleManifest {
                format: 1,
                kind: BundleKind::Sentinel,
                name: "edge".into(),
                source_commit: "c".repeat(40),
                validator: "sentinel-config 0.4.14".into(),
                files: files
                    .iter()
                    .map(|(p, t)| BundleFile {
                        path: (*p).into(),
                        size: t.len() as u64,
                        sha256: "0".repeat(64),
                    })
                    .collect(),
            },
            files: files
                .iter()
                .map(|(p, t)| ((*p).to_owned(), t.as_bytes().to_vec()))
                .collect(),
        }
    }

    #[test]
    fn a_digest_is_taken_with_or_without_its_algorithm() {
        let hex = "a".repeat(64);
        assert_eq!(digest_of(&hex).unwrap(), format!("sha256:{hex}"));
        assert_eq!(
            digest_of(&format!("sha256:{hex}")).unwrap(),
            format!("sha256:{hex}")
        );
        for bad in [
            "",
            "abc",
            "../../etc/passwd",
            &"A".repeat(64),
            &"a".repeat(65),
        ] {
            assert!(
                matches!(digest_of(bad), Err(BundleError::BadDigest(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn file_contents_are_escaped_and_cut_on_a_character() {
        let b = bundle('1', &[("files/sentinel.kdl", "<script>alert(1)</script>")]);
        let page = detail(&sample_view(), &b);
        assert!(!page.contains("<script>"), "{page}");
        assert!(page.contains("&lt;script&gt;"), "{page}");
        assert_eq!(truncate("aé", 2), "a");
        assert_eq!(truncate("abc", 10), "abc");
    }

    #[test]
    fn the_diff_marks_added_and_removed_lines() {
        let a = bundle('1', &[("files/sentinel.kdl", "one\ntwo\n")]);
        let b = bundle(
            '2',
            &[("files/sentinel.kdl", "one\nthree\n"), ("files/x", "y")],
        );
        let page = diff(&a, &b);
        assert!(page.contains("<span class=del>-two</span>"), "{page}");
        assert!(page.contains("<span class=add>+three</span>"), "{page}");
        assert!(page.contains("added: files/x (1 bytes)"), "{page}");
        assert!(diff(&a, &a).contains("The same bundle."));
    }

    #[test]
    fn the_index_counts_who_uses_each_bundle() {
        let v = sample_view();
        let page = index(&v);
        assert!(page.contains("<p>2 bundles named"), "{page}");
        let row = page
            .split("<tr ")
            .find(|r| r.contains(&"1".repeat(64)))
            .unwrap();
        assert!(row.contains("edge/prod"), "{row}");
        assert!(row.contains("<td>1 nodes</td>"), "{row}");
    }

    pub(crate) fn sample_view() -> FleetStatus {
        use gitfleet_schemas::state::Phase;
        use gitfleet_schemas::view::{Counts, EnvironmentView, Health, NodeView, RolloutView};
        let d = |c: char| format!("sha256:{}", c.to_string().repeat(64));
        FleetStatus {
            format: 1,
            fleet: "f".into(),
            at: chrono::DateTime::UNIX_EPOCH,
            commit: "c".repeat(40),
            state_commit: None,
            stale_after_seconds: 180,
            totals: Counts::default(),
            environments: vec![EnvironmentView {
                name: "prod".into(),
                counts: Counts::default(),
                rules: None,
                waiting: Vec::new(),
                rollouts: vec![RolloutView {
                    name: "edge".into(),
                    phase: Phase::Complete,
                    step: 1,
                    steps: 1,
                    target: d('1'),
                    previous: Some(d('2')),
                    source_commit: "c".repeat(40),
                    nodes: 1,
                    admitted: 1,
                    on_target: 1,
                    since: chrono::DateTime::UNIX_EPOCH,
                    reason: String::new(),
                    failed_nodes: vec![],
                }],
            }],
            nodes: vec![NodeView {
                id: "n1".into(),
                environment: "prod".into(),
                labels: BTreeMap::new(),
                health: Health::Healthy,
                last_report: None,
                report_age_seconds: None,
                channel_serial: None,
                active: BTreeMap::from([("edge".to_owned(), d('1'))]),
                previous: BTreeMap::new(),
                errors: BTreeMap::new(),
                last_error: None,
                http_checks: vec![],
                drift: vec![],
                metrics: None,
                wireguard: None,
                proxy: gitfleet_schemas::Proxy::legacy(),
                proxy_mismatch: None,
                hold: None,
                pinned: None,
                monitored: Vec::new(),
                peer_names: Default::default(),
            }],
            reports_ignored: BTreeMap::new(),
            meshes: Vec::new(),
        }
    }
}
