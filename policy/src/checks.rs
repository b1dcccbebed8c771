//! Checks that look across documents: references, uniqueness, address space,
//! keys, schedules.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::str::FromStr;

use base64::Engine as _;
use gitfleet_schemas::trust::PublicKey;
use gitfleet_schemas::{
    Gates, HttpCheck, RolloutTarget, Span, Spanned, Step, StepSize, Window, WindowKind,
};
use ipnet::IpNet;

use crate::diagnostics::Diagnostics;
use crate::model::{FleetModel, Located, ENVIRONMENTS_FILE, FLEET_FILE};
use crate::repo::RepoFiles;

pub(crate) fn run(model: &FleetModel, files: &RepoFiles, d: &mut Diagnostics<'_>) {
    fleet(model, d);
    environments(model, d);
    nodes(model, files, d);
    meshes(model, d);
    templates(model, d);
    revocations(model, d);
    groups(model, d);
    rollouts(model, d);
    proxies(model, d);
    notify(model, d);
}

/// fleet.kdl's `notify` blocks: valid names, environments that exist.
fn notify(model: &FleetModel, d: &mut Diagnostics<'_>) {
    let Some(fleet) = &model.fleet else {
        return;
    };
    let f = fleet.path.as_str();
    for n in &fleet.doc.notify {
        check_name(d, f, &n.name, "notify receiver");
        for env in &n.environments {
            unknown_environment(model, d, f, env);
        }
    }
}

/// fleet.kdl's groups: named once each, listing nodes that exist; every
/// `group` a selector names is one of them, and only rollouts name groups
/// (a mesh's members and a proxy rule are read from node files alone, so
/// that a node file's change says whether it changes them).
fn groups(model: &FleetModel, d: &mut Diagnostics<'_>) {
    let Some(fleet) = &model.fleet else {
        return;
    };
    let f = fleet.path.as_str();
    let mut seen = BTreeSet::new();
    for g in &fleet.doc.groups {
        check_name(d, f, &g.name, "group");
        if !seen.insert(g.name.value.as_str()) {
            d.error(
                f,
                g.name.span,
                "duplicate-group",
                format!("group `{}` is defined more than once", g.name.value),
                Some("keep one of them".to_owned()),
            );
        }
        // A listed node without a file is left out (a decommissioned one,
        // say): the rest of the group still holds.
        for n in &g.nodes {
            if !model.nodes.iter().any(|m| m.doc.id.value == n.value) {
                d.warning(
                    f,
                    n.span,
                    "unknown-node",
                    format!(
                        "group `{}` lists node `{}`, which has no node file",
                        g.name.value, n.value
                    ),
                    Some(format!(
                        "nodes are `nodes/<id>.kdl`; {}",
                        known_list(model.nodes.iter().map(|m| &m.doc.id.value))
                    )),
                );
            }
        }
    }
    let known = || known_list(fleet.doc.groups.iter().map(|g| &g.name.value));
    for (name, r) in &model.rollouts {
        for g in &r.doc.selector.groups {
            if crate::select::group(model, &g.value).is_none() {
                d.error(
                    &r.path,
                    g.span,
                    "unknown-group",
                    format!(
                        "rollout `{name}` selects group `{}`, which fleet.kdl does not define",
                        g.value
                    ),
                    Some(format!(
                        "groups are `group \"NAME\" {{ nodes ... }}` in fleet.kdl; {}",
                        known()
                    )),
                );
            }
        }
    }
    let not_here = |d: &mut Diagnostics<'_>, path: &str, g: &Spanned<String>, what: &str| {
        d.error(
            path,
            g.span,
            "group-not-allowed",
            format!("{what} cannot select by group (`{}`)", g.value),
            Some("write the group's labels here, or add a label to its nodes".to_owned()),
        );
    };
    for (name, m) in &model.meshes {
        for g in &m.doc.members.groups {
            not_here(d, &m.path, g, &format!("mesh `{name}`'s members"));
        }
        for g in m.doc.hubs.iter().flat_map(|h| &h.groups) {
            not_here(d, &m.path, g, &format!("mesh `{name}`'s hubs"));
        }
    }
    for rule in &fleet.doc.proxies {
        for g in &rule.selector.groups {
            not_here(d, f, g, "a proxy rule");
        }
    }
}

/// Revoked bundles of fleet.kdl: each a bundle digest, each once.
fn revocations(model: &FleetModel, d: &mut Diagnostics<'_>) {
    let Some(fleet) = &model.fleet else {
        return;
    };
    let mut seen = BTreeSet::new();
    for r in &fleet.doc.revoked {
        let digest = &r.digest;
        if !gitfleet_schemas::trust::valid_digest(&digest.value) {
            d.error(
                FLEET_FILE,
                digest.span,
                "invalid-digest",
                format!("`{}` is not a bundle digest", digest.value),
                Some("revoke takes `sha256:` and 64 lowercase hex digits, as `gitfleet status` and bundle names show them".to_owned()),
            );
        } else if !seen.insert(digest.value.as_str()) {
            d.warning(
                FLEET_FILE,
                digest.span,
                "duplicate-revocation",
                format!("bundle {} is revoked twice", digest.value),
                Some("remove one of the two lines".to_owned()),
            );
        }
    }
}

/// Rollout templates of fleet.kdl: unique names, and their parts checked
/// there, as a rollout's are in its file.
fn templates(model: &FleetModel, d: &mut Diagnostics<'_>) {
    let Some(fleet) = &model.fleet else {
        return;
    };
    let mut seen = BTreeSet::new();
    for t in &fleet.doc.templates {
        let what = format!("template `{}`", t.name.value);
        check_name(d, FLEET_FILE, &t.name, "template");
        if !seen.insert(t.name.value.as_str()) {
            d.error(
                FLEET_FILE,
                t.name.span,
                "duplicate-template",
                format!("{what} is defined twice"),
                Some("rename one; rollouts name templates with `template \"NAME\"`".to_owned()),
            );
        }
        steps(d, FLEET_FILE, &what, &t.steps);
        for w in &t.windows {
            window(d, FLEET_FILE, w);
        }
        max_unavailable(d, FLEET_FILE, t.max_unavailable.as_ref());
        gates(d, FLEET_FILE, &t.gates);
        let used = model.rollouts.values().any(|r| {
            r.doc
                .template
                .as_ref()
                .is_some_and(|n| n.value == t.name.value)
        });
        if !used {
            d.warning(
                FLEET_FILE,
                t.name.span,
                "unused-template",
                format!("no rollout uses {what}"),
                Some(format!(
                    "a rollout takes it with `template \"{}\"`",
                    t.name.value
                )),
            );
        }
    }
}

/// Every proxy a node or a fleet.kdl rule names is one gitfleet validates
/// configs for.
fn proxies(model: &FleetModel, d: &mut Diagnostics<'_>) {
    let supported = crate::proxy::supported()
        .map(|p| format!("`{p}`"))
        .join(", ");
    let mut check = |path: &str, p: &Spanned<gitfleet_schemas::Proxy>| {
        if !crate::proxy::is_supported(&p.value) {
            d.error(
                path,
                p.span,
                "unsupported-proxy",
                format!("gitfleet cannot validate configs for {}", p.value),
                Some(format!(
                    "gitfleet validates each config with the proxy's own config crate, pinned exactly; it has those of {supported}"
                )),
            );
        }
    };
    if let Some(f) = &model.fleet {
        for rule in &f.doc.proxies {
            check(&f.path, &rule.proxy);
        }
    }
    for n in &model.nodes {
        if let Some(p) = &n.doc.proxy {
            check(&n.path, p);
        }
    }
}

use crate::select::select;

/// Names usable in object keys and file names: `edge-fra-1`, `prod`.
pub fn valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && s.len() <= 63
}

pub(crate) fn check_name(d: &mut Diagnostics<'_>, file: &str, name: &Spanned<String>, what: &str) {
    if !valid_name(&name.value) {
        d.error(
            file,
            name.span,
            "invalid-name",
            format!("{what} `{}` is not a valid name", name.value),
            Some("use 1 to 63 ASCII letters, digits, `-`, `_` or `.`, starting with a letter or digit".to_owned()),
        );
    }
}

pub(crate) fn known_list(names: impl Iterator<Item = impl AsRef<str>>) -> String {
    let names: Vec<String> = names.map(|n| format!("`{}`", n.as_ref())).collect();
    if names.is_empty() {
        "none are defined".to_owned()
    } else {
        format!("known: {}", names.join(", "))
    }
}

fn unknown_environment(
    model: &FleetModel,
    d: &mut Diagnostics<'_>,
    file: &str,
    name: &Spanned<String>,
) {
    // Without environments.kdl every name would be unknown; its absence is
    // reported once, on its own.
    if model.environments_read && model.environment(&name.value).is_none() {
        d.error(
            file,
            name.span,
            "unknown-environment",
            format!("unknown environment `{}`", name.value),
            Some(format!(
                "environments are declared in {ENVIRONMENTS_FILE}; {}",
                known_list(model.environments.iter().map(|e| e.name.value.as_str()))
            )),
        );
    }
}

// ---------------------------------------------------------------------------
// keys

/// Whether `s` is a WireGuard or node key as written, nothing around it:
/// 32 bytes of base64, no whitespace (which [`decode_key`] trims).
pub(crate) fn is_key_text(s: &str) -> bool {
    !s.contains(char::is_whitespace) && decode_key(s).is_ok()
}

pub(crate) fn decode_key(s: &str) -> Result<[u8; 32], String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .map_err(|_| "not valid base64".to_owned())?;
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| format!("{} bytes, not 32", bytes.len()))
}

/// An ed25519 public key, by the verifier's own rule
/// ([`PublicKey::from_bytes`], which [`PublicKey::parse`] applies): the
/// canonical encoding of a prime-order curve point, so no weak key and no
/// `K + torsion` twin of another key gets into the fleet.
fn check_ed25519(
    d: &mut Diagnostics<'_>,
    file: &str,
    key: &Spanned<String>,
    what: &str,
) -> Option<[u8; 32]> {
    let result = decode_key(&key.value).and_then(|bytes| PublicKey::from_bytes(bytes).map(|k| k.0));
    match result {
        Ok(bytes) => Some(bytes),
        Err(why) => {
            d.error(
                file,
                key.span,
                "invalid-key",
                format!("{what} is not a valid ed25519 public key: {why}"),
                Some("use the base64 public key printed by `gitfleet keygen`".to_owned()),
            );
            None
        }
    }
}

// ---------------------------------------------------------------------------
// fleet.kdl

fn fleet(model: &FleetModel, d: &mut Diagnostics<'_>) {
    let Some(Located { doc: fleet, .. }) = &model.fleet else {
        return;
    };
    let f = FLEET_FILE;
    check_name(d, f, &fleet.name, "fleet");
    http_checks(d, f, &fleet.defaults.health_checks);
    no_upstream_checks(
        d,
        f,
        &fleet.defaults.health_checks,
        "fleet.kdl's health checks",
    );
    if let Some(store) = &fleet.store {
        let scheme = store.value.split_once("://").map(|(s, _)| s);
        if !matches!(scheme, Some("file" | "s3" | "memory")) {
            d.error(
                f,
                store.span,
                "invalid-store-url",
                format!("`{}` is not a store URL gitfleet can use", store.value),
                Some("use file:///path, s3://bucket/prefix or memory://".to_owned()),
            );
        }
    }
    match &fleet.trust {
        None => d.warning(
            f,
            Span::default(),
            "no-trust-roots",
            "fleet.kdl names no root keys, so agents have nothing to verify bundles against",
            Some(
                "add `trust threshold=1 { root-key \"<base64 ed25519 public key>\"; }`".to_owned(),
            ),
        ),
        Some(trust) => {
            let mut seen = BTreeMap::new();
            for key in &trust.root_keys {
                if let Some(bytes) = check_ed25519(d, f, key, "root key") {
                    if let Some(first) = seen.insert(bytes, key.span) {
                        let at = d.location(f, first);
                        d.error(
                            f,
                            key.span,
                            "duplicate-key",
                            "root key is listed twice",
                            Some(format!("first listed at {at}")),
                        );
                    }
                }
            }
            let n = trust.root_keys.len() as u64;
            if trust.threshold.value == 0 || trust.threshold.value > n {
                d.error(
                    f,
                    trust.threshold.span,
                    "trust-threshold",
                    format!(
                        "threshold {} cannot be met by {n} root key{}",
                        trust.threshold.value,
                        if n == 1 { "" } else { "s" }
                    ),
                    Some("the threshold must be between 1 and the number of root keys".to_owned()),
                );
            }
        }
    }
    let mut names = BTreeMap::new();
    let mut keys = BTreeMap::new();
    for a in &fleet.approvers {
        if !valid_name(&a.name.value) {
            d.error(
                f,
                a.name.span,
                "invalid-name",
                format!("approver name `{}` is not valid", a.name.value),
                Some("use [A-Za-z0-9][A-Za-z0-9._-]*, at most 63 characters: it names files on the state branch".to_owned()),
            );
        }
        if let Some(first) = names.insert(a.name.value.as_str(), a.name.span) {
            let at = d.location(f, first);
            d.error(
                f,
                a.name.span,
                "duplicate-approver",
                format!("approver `{}` is declared twice", a.name.value),
                Some(format!("first declared at {at}")),
            );
        }
        if let Some(bytes) = check_ed25519(d, f, &a.key, "approver key") {
            if let Some(first) = keys.insert(bytes, a.key.span) {
                let at = d.location(f, first);
                d.error(
                    f,
                    a.key.span,
                    "duplicate-key",
                    "two approvers share this key",
                    Some(format!("first used at {at}")),
                );
            }
        }
    }
    if let Some(m) = &fleet.defaults.max_unavailable {
        if m.value == 0 {
            d.error(
                f,
                m.span,
                "invalid-value",
                "max-unavailable 0 lets no rollout progress",
                Some("use 1 or more".to_owned()),
            );
        }
    }
}

// ---------------------------------------------------------------------------
// environments.kdl

fn environments(model: &FleetModel, d: &mut Diagnostics<'_>) {
    let f = ENVIRONMENTS_FILE;
    let mut first: HashMap<&str, Span> = HashMap::new();
    for env in &model.environments {
        check_name(d, f, &env.name, "environment");
        if let Some(prev) = first.insert(&env.name.value, env.name.span) {
            let at = d.location(f, prev);
            d.error(
                f,
                env.name.span,
                "duplicate-environment",
                format!("environment `{}` is declared twice", env.name.value),
                Some(format!("first declared at {at}")),
            );
        }
        if let Some(after) = &env.after {
            unknown_environment(model, d, f, after);
        }
        if let Some(fresh) = &env.freshness_seconds {
            if fresh.value == 0 {
                d.error(
                    f,
                    fresh.span,
                    "invalid-value",
                    format!(
                        "environment `{}`: a freshness of 0s makes every channel manifest stale as soon as it is signed",
                        env.name.value
                    ),
                    Some("use a duration such as \"30m\" or \"1h\", or remove `freshness`".to_owned()),
                );
            }
        }
        for w in &env.windows {
            window(d, f, w);
        }
        if let Some(a) = &env.approvals {
            if a.required.value == 0 {
                d.warning(
                    f,
                    a.required.span,
                    "approvals-zero",
                    "`approvals 0` requires nothing",
                    Some("remove `approvals` or require 1 or more".to_owned()),
                );
            } else if a.teams.is_empty() && (a.users.len() as u64) < a.required.value {
                d.error(
                    f,
                    a.required.span,
                    "approvals-unsatisfiable",
                    format!(
                        "{} approvals are required but only {} users may approve",
                        a.required.value,
                        a.users.len()
                    ),
                    Some("add users or teams, or lower the number".to_owned()),
                );
            }
        }
    }
    // Each environment has at most one predecessor, so following `after`
    // from any environment either ends or loops.
    let after: HashMap<&str, &str> = model
        .environments
        .iter()
        .filter_map(|e| {
            e.after
                .as_ref()
                .map(|a| (e.name.value.as_str(), a.value.as_str()))
        })
        .collect();
    let mut reported: BTreeSet<&str> = BTreeSet::new();
    for env in &model.environments {
        let mut path = vec![env.name.value.as_str()];
        let mut at = env.name.value.as_str();
        while let Some(&next) = after.get(at) {
            if let Some(i) = path.iter().position(|p| *p == next) {
                let cycle = &path[i..];
                // Report a cycle once, at the environment that comes first in the file.
                if cycle.iter().all(|c| !reported.contains(c)) {
                    reported.extend(cycle.iter().copied());
                    let start = model
                        .environments
                        .iter()
                        .find(|e| cycle.contains(&e.name.value.as_str()))
                        .map_or(env.span, |e| e.after.as_ref().map_or(e.span, |a| a.span));
                    let mut shown: Vec<&str> = cycle.to_vec();
                    shown.push(cycle[0]);
                    d.error(
                        f,
                        start,
                        "environment-cycle",
                        format!("environment order has a cycle: {}", shown.join(" → ")),
                        Some("one environment must come first: remove an `after`".to_owned()),
                    );
                }
                break;
            }
            path.push(next);
            at = next;
        }
    }
}

fn window(d: &mut Diagnostics<'_>, f: &str, w: &Window) {
    let kind = match w.kind {
        WindowKind::Allow => "window",
        WindowKind::Deny => "deny-window",
    };
    match parse_window_cron(&w.cron.value) {
        Ok(_) => {}
        Err(CronError::Invalid(why)) => d.error(
            f,
            w.cron.span,
            "invalid-cron",
            format!(
                "{kind} `{}`: `{}` is not a cron expression: {why}",
                w.name.value, w.cron.value
            ),
            Some(format!(
                "five fields: {CRON_FIELDS}, e.g. \"0 9 * * Mon-Fri\" or \"0 9 * * 1-5\""
            )),
        ),
        Err(CronError::NeverOpens) => d.error(
            f,
            w.cron.span,
            "invalid-cron",
            format!(
                "{kind} `{}` never opens: no date matches `{}`",
                w.name.value, w.cron.value
            ),
            Some(
                "check the day of the month against the month (and the day of the week, which must match too)"
                    .to_owned(),
            ),
        ),
    }
    if chrono_tz::Tz::from_str(&w.time_zone.value).is_err() {
        d.error(
            f,
            w.time_zone.span,
            "invalid-time-zone",
            format!(
                "{kind} `{}`: unknown time zone `{}`",
                w.name.value, w.time_zone.value
            ),
            Some("use an IANA name such as \"Europe/Berlin\" or \"UTC\"".to_owned()),
        );
    }
    if w.duration_seconds.value == 0 {
        d.error(
            f,
            w.duration_seconds.span,
            "invalid-value",
            format!("{kind} `{}` is open for no time", w.name.value),
            None,
        );
    }
}

/// The five cron fields operators write, in order.
const CRON_FIELDS: &str = "minute hour day-of-month month day-of-week";

/// Where the search for a window's first opening starts: a fixed instant, so
/// that the check gives the same answer whenever it runs.
const NEVER_OPENS_FROM: (i32, u32, u32) = (2000, 1, 1);

/// How far ahead a window must open at least once. Every date pattern of five
/// cron fields recurs within this many years (February 29 on a given weekday
/// does so within 28 years of 2000).
const NEVER_OPENS_YEARS: i32 = 30;

/// Why a cron expression cannot be used for a window.
#[derive(Clone, Debug, PartialEq, Eq)]
enum CronError {
    /// Not a cron expression.
    Invalid(String),
    /// A valid expression that matches no date, e.g. February 31.
    NeverOpens,
}

impl std::fmt::Display for CronError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CronError::Invalid(why) => f.write_str(why),
            CronError::NeverOpens => f.write_str("it never opens: no date matches all its fields"),
        }
    }
}

/// A standard five-field cron expression (minute hour day-of-month month
/// day-of-week, day-of-week 0-7 with 0 and 7 for Sunday, or names), read with
/// the `cron` crate.
pub fn parse_cron(expr: &str) -> Result<cron::Schedule, String> {
    parse_window_cron(expr).map_err(|e| e.to_string())
}

fn parse_window_cron(expr: &str) -> Result<cron::Schedule, CronError> {
    let fields: Vec<&str> = expr.split_whitespace().collect();
    if fields.len() != 5 {
        return Err(CronError::Invalid(format!(
            "expected 5 fields ({CRON_FIELDS}), found {}",
            fields.len()
        )));
    }
    let day_of_week = crate_days_of_week(fields[4]).map_err(CronError::Invalid)?;
    // The crate wants seconds first, and counts days of the week from
    // 1 = Sunday.
    let full = format!(
        "0 {} {} {} {} {day_of_week}",
        fields[0], fields[1], fields[2], fields[3]
    );
    let schedule = cron::Schedule::from_str(&full).map_err(|e| {
        // The crate's message repeats the expression with a caret under it;
        // the last line is the explanation.
        let text = e.to_string();
        let why = text
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("invalid");
        CronError::Invalid(why.trim().trim_end_matches('.').to_owned())
    })?;
    let (y, m, d) = NEVER_OPENS_FROM;
    let from = chrono::NaiveDate::from_ymd_opt(y, m, d)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc());
    let until = chrono::NaiveDate::from_ymd_opt(y + NEVER_OPENS_YEARS, m, d)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc());
    if let (Some(from), Some(until)) = (from, until) {
        if schedule.after(&from).next().is_none_or(|next| next > until) {
            return Err(CronError::NeverOpens);
        }
    }
    Ok(schedule)
}

/// Translate a standard day-of-week field (0-7, 0 and 7 = Sunday) to the
/// `cron` crate's numbering (1 = Sunday ... 7 = Saturday). Numeric items
/// (`5`, `1-5`, `*/2`, `5-7`, `1-5/2`) become lists of the crate's numbers;
/// `*` and names (`Mon-Fri`) mean the same to both and are kept as written.
fn crate_days_of_week(field: &str) -> Result<String, String> {
    if field.is_empty() {
        return Err("day-of-week is empty".to_owned());
    }
    let mut out = Vec::new();
    for item in field.split(',') {
        let (base, step) = match item.split_once('/') {
            Some((b, s)) => (b, Some(s)),
            None => (item, None),
        };
        let has_name = base.chars().any(|c| c.is_ascii_alphabetic());
        let has_number = base.chars().any(|c| c.is_ascii_digit());
        if has_name && has_number {
            return Err(format!(
                "day-of-week `{item}` mixes day names and numbers; use one or the other"
            ));
        }
        if has_name || (base == "*" && step.is_none()) || base.is_empty() {
            // Names, `*` and anything malformed go to the crate as written.
            out.push(item.to_owned());
            continue;
        }
        let number = |s: &str| -> Result<u32, String> {
            match s.parse::<u32>() {
                Ok(n) if n <= 7 => Ok(n),
                _ => Err(format!(
                    "day-of-week `{s}` is not a day: use 0-7 (0 and 7 are Sunday) or Sun-Sat"
                )),
            }
        };
        let (first, last) = match base.split_once('-') {
            _ if base == "*" => (0, 6),
            Some((a, b)) => (number(a)?, number(b)?),
            // `5/2`: from 5 to the end of the week.
            None if step.is_some() => {
                let n = number(base)?;
                (n, n.max(6))
            }
            None => {
                let n = number(base)?;
                (n, n)
            }
        };
        if first > last {
            return Err(format!(
                "day-of-week range `{base}` runs backwards; write it as a list, e.g. `5,6,0`"
            ));
        }
        let step = match step {
            None => 1,
            Some(s) => match s.parse::<usize>() {
                Ok(n) if n > 0 => n,
                _ => return Err(format!("day-of-week step `{s}` is not a positive number")),
            },
        };
        for day in (first..=last).step_by(step) {
            out.push((day % 7 + 1).to_string());
        }
    }
    Ok(out.join(","))
}

// ---------------------------------------------------------------------------
// nodes

/// A hold's `bundle=`: a bundle digest, not revoked, of the config
/// rollout that selects the node.
fn pinned_bundle(
    model: &FleetModel,
    d: &mut Diagnostics<'_>,
    path: &str,
    node: &gitfleet_schemas::NodeFile,
    pin: &Spanned<String>,
) {
    if !gitfleet_schemas::trust::valid_digest(&pin.value) {
        d.error(
            path,
            pin.span,
            "invalid-digest",
            format!("`{}` is not a bundle digest", pin.value),
            Some("write it as `gitfleet status` and bundle pages show it: `sha256:` and 64 lowercase hex digits".to_owned()),
        );
        return;
    }
    let revoked = model
        .fleet
        .as_ref()
        .is_some_and(|f| f.doc.revoked.iter().any(|r| r.digest.value == pin.value));
    if revoked {
        d.error(
            path,
            pin.span,
            "pin-revoked",
            format!(
                "node `{}` is pinned to a bundle fleet.kdl revokes",
                node.id.value
            ),
            Some("pin it to another bundle, or lift the hold".to_owned()),
        );
    }
    if crate::channel::config_rollout_of(model, node).is_none() {
        d.error(
            path,
            pin.span,
            "pin-without-rollout",
            format!(
                "node `{}` is pinned to a bundle, but no config rollout selects it",
                node.id.value
            ),
            Some(
                "a pin holds the node on one bundle of the config rollout that selects it"
                    .to_owned(),
            ),
        );
    }
}

fn nodes(model: &FleetModel, files: &RepoFiles, d: &mut Diagnostics<'_>) {
    let mut ids: HashMap<&str, (&str, Span)> = HashMap::new();
    let mut node_keys: HashMap<[u8; 32], (&str, Span)> = HashMap::new();
    let mut wg_keys: HashMap<[u8; 32], (&str, Span)> = HashMap::new();
    for Located { path, doc: node } in &model.nodes {
        let path = path.as_str();
        check_name(d, path, &node.id, "node id");
        if let Some(h) = node.hold.as_ref().filter(|h| h.value.trim().is_empty()) {
            d.error(
                path,
                h.span,
                "invalid-value",
                "a hold needs a reason",
                Some("say why, for the pages and whoever lifts it: `hold \"disk replacement, INC-88\"`".to_owned()),
            );
        }
        if let Some(pin) = &node.hold_bundle {
            pinned_bundle(model, d, path, node, pin);
        }
        if let Some((first_path, first_span)) = ids.insert(&node.id.value, (path, node.id.span)) {
            let at = d.location(first_path, first_span);
            d.error(
                path,
                node.id.span,
                "duplicate-node-id",
                format!("node id `{}` is used twice", node.id.value),
                Some(format!("first used at {at}; every node needs its own id")),
            );
        }
        if let Some(better) = better_node_path(path, &node.id.value, files) {
            d.warning(
                path,
                node.id.span,
                "node-file-name",
                format!("node `{}` is in `{path}`", node.id.value),
                Some(format!("name the file `{better}` so it is easy to find")),
            );
        }
        unknown_environment(model, d, path, &node.environment);
        if let Some(bytes) = check_ed25519(d, path, &node.node_key, "node-key") {
            if let Some((p, s)) = node_keys.insert(bytes, (path, node.node_key.span)) {
                let at = d.location(p, s);
                d.error(
                    path,
                    node.node_key.span,
                    "duplicate-key",
                    "node-key is already used by another node",
                    Some(format!("first used at {at}; every node has its own key")),
                );
            }
        }
        if let Some(wg) = &node.wireguard {
            match decode_key(&wg.public_key.value) {
                Err(why) => d.error(
                    path,
                    wg.public_key.span,
                    "invalid-key",
                    format!("wireguard public-key is not a valid key: {why}"),
                    Some(
                        "use the base64 key printed by `wg pubkey` or `gitfleet-agent enroll`"
                            .to_owned(),
                    ),
                ),
                Ok(bytes) => {
                    if let Some((p, s)) = wg_keys.insert(bytes, (path, wg.public_key.span)) {
                        let at = d.location(p, s);
                        d.error(
                            path,
                            wg.public_key.span,
                            "duplicate-wireguard-key",
                            "wireguard public-key is already used by another node",
                            Some(format!("first used at {at}; keys are generated on each node and never shared")),
                        );
                    }
                }
            }
            for route in &wg.routes {
                if route.value.parse::<IpNet>().is_err() {
                    d.error(
                        path,
                        route.span,
                        "invalid-cidr",
                        format!("route `{}` is not a CIDR range", route.value),
                        Some("e.g. \"10.20.0.0/16\"".to_owned()),
                    );
                }
            }
            if let Some(ep) = &wg.endpoint {
                if !crate::mesh::endpoint_ok(&ep.value) {
                    d.error(
                        path,
                        ep.span,
                        "invalid-endpoint",
                        format!("`{}` is not a host:port endpoint", ep.value),
                        Some("e.g. \"198.51.100.7:51820\"".to_owned()),
                    );
                }
            }
        }
    }
}

/// The path a node file should be renamed to, when that advice helps: the
/// file is not named after the node's id, the id is a valid file name, and no
/// other file has that name already (two nodes with one id are an error of
/// their own).
fn better_node_path(path: &str, id: &str, files: &RepoFiles) -> Option<String> {
    let better = format!("nodes/{id}.kdl");
    (path != better && valid_name(id) && files.get(&better).is_none()).then_some(better)
}

// ---------------------------------------------------------------------------
// meshes

fn usable_addresses(net: &IpNet) -> u128 {
    let host_bits = u32::from(net.max_prefix_len() - net.prefix_len());
    let size = if host_bits >= 127 {
        u128::MAX
    } else {
        1u128 << host_bits
    };
    match net {
        // Network and broadcast addresses are not hosts, except in /31 and /32.
        IpNet::V4(_) if host_bits >= 2 => size - 2,
        IpNet::V4(_) => size,
        // The subnet-router anycast address is not a host.
        IpNet::V6(_) if host_bits >= 1 => size - 1,
        IpNet::V6(_) => size,
    }
}

fn meshes(model: &FleetModel, d: &mut Diagnostics<'_>) {
    let mut nets: Vec<(&str, &str, IpNet, Span)> = Vec::new();
    for (name, Located { path, doc: mesh }) in &model.meshes {
        let path = path.as_str();
        check_name(
            d,
            path,
            &Spanned::new(name.clone(), Span::default()),
            "mesh",
        );
        let members = select(model, &mesh.members);
        if members.is_empty() {
            d.warning(
                path,
                mesh.members.span,
                "selector-matches-nothing",
                format!(
                    "mesh `{name}` has no members: `{}` matches no node",
                    mesh.members
                ),
                None,
            );
        }
        for &i in &members {
            let node = &model.nodes[i];
            if node.doc.wireguard.is_none() {
                d.error(
                    &node.path,
                    node.doc.id.span,
                    "mesh-member-without-wireguard",
                    format!(
                        "node `{}` is a member of mesh `{name}` but has no wireguard public-key",
                        node.doc.id.value
                    ),
                    Some(
                        "add `wireguard public-key=\"...\"` (from `gitfleet-agent enroll`)"
                            .to_owned(),
                    ),
                );
            }
        }
        match mesh.cidr.value.parse::<IpNet>() {
            Err(_) => d.error(
                path,
                mesh.cidr.span,
                "invalid-cidr",
                format!("`{}` is not a CIDR range", mesh.cidr.value),
                Some("e.g. \"10.40.0.0/24\"".to_owned()),
            ),
            Ok(net) => {
                if net.trunc() != net {
                    d.warning(
                        path,
                        mesh.cidr.span,
                        "cidr-host-bits",
                        format!("`{net}` has host bits set"),
                        Some(format!("did you mean \"{}\"?", net.trunc())),
                    );
                }
                let net = net.trunc();
                let usable = usable_addresses(&net);
                let needed = members.len() + mesh.peers.len();
                if (needed as u128) > usable {
                    d.error(
                        path,
                        mesh.cidr.span,
                        "mesh-too-small",
                        format!("mesh `{name}` has {needed} members and peers but `{net}` holds only {usable} addresses"),
                        Some("use a larger range (a shorter prefix)".to_owned()),
                    );
                }
                nets.push((name, path, net, mesh.cidr.span));
            }
        }
        for ip in &mesh.allowed_ips {
            if ip.value.parse::<IpNet>().is_err() {
                d.error(
                    path,
                    ip.span,
                    "invalid-cidr",
                    format!("`{}` is not a CIDR range", ip.value),
                    None,
                );
            }
        }
        if let Some(p) = &mesh.listen_port {
            if p.value == 0 || p.value > 65535 {
                d.error(
                    path,
                    p.span,
                    "invalid-value",
                    format!("listen-port {} is not a UDP port", p.value),
                    Some("use 1 to 65535".to_owned()),
                );
            }
        }
        if let Some(k) = &mesh.persistent_keepalive_seconds {
            if k.value > 65535 {
                d.error(
                    path,
                    k.span,
                    "invalid-value",
                    "persistent-keepalive is longer than WireGuard allows (65535s)",
                    None,
                );
            }
        }
    }
    for (i, (a_name, _, a, _)) in nets.iter().enumerate() {
        for (b_name, b_path, b, b_span) in &nets[i + 1..] {
            if a.contains(&b.network()) || b.contains(&a.network()) {
                d.error(
                    b_path,
                    *b_span,
                    "mesh-overlap",
                    format!("mesh `{b_name}` ({b}) overlaps mesh `{a_name}` ({a})"),
                    Some("give each mesh its own address range".to_owned()),
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------
// rollouts

fn rollouts(model: &FleetModel, d: &mut Diagnostics<'_>) {
    // node index -> first config rollout that targets it
    let mut config_owner: HashMap<usize, &str> = HashMap::new();
    let mut config_flats: Vec<(&str, crate::select::Flat)> = Vec::new();
    for (name, Located { path, doc: r }) in &model.rollouts {
        let path = path.as_str();
        check_name(
            d,
            path,
            &Spanned::new(name.clone(), Span::default()),
            "rollout",
        );
        match &r.target.value {
            RolloutTarget::Config(c) if !model.configs.contains_key(c) => d.error(
                path,
                r.target.span,
                "unknown-config",
                format!("rollout `{name}` targets unknown config `{c}`"),
                Some(format!(
                    "configs live in `configs/<name>/sentinel.kdl`; {}",
                    known_list(model.configs.keys())
                )),
            ),
            RolloutTarget::Mesh(m) if !model.meshes.contains_key(m) => d.error(
                path,
                r.target.span,
                "unknown-mesh",
                format!("rollout `{name}` targets unknown mesh `{m}`"),
                Some(format!(
                    "meshes live in `meshes/<name>.kdl`; {}",
                    known_list(model.meshes.keys())
                )),
            ),
            _ => {}
        }
        let targets = select(model, &r.selector);
        if targets.is_empty() {
            d.warning(
                path,
                r.selector.span,
                "selector-matches-nothing",
                format!(
                    "rollout `{name}` selects no node: `{}` matches nothing",
                    r.selector
                ),
                Some("check the labels in nodes/*.kdl".to_owned()),
            );
        }
        if matches!(r.target.value, RolloutTarget::Config(_)) {
            let mut conflicts = BTreeSet::new();
            for &i in &targets {
                if let Some(other) = config_owner.insert(i, name) {
                    if conflicts.insert(other) && conflicts.len() == 1 {
                        d.error(
                            path,
                            r.selector.span,
                            "conflicting-rollouts",
                            format!("node `{}` is selected by rollouts `{other}` and `{name}`, which both deliver a proxy config", model.nodes[i].doc.id.value),
                            Some("a node runs one Sentinel config: make the selectors disjoint".to_owned()),
                        );
                    }
                }
            }
            // Selectors no node meets both of today, but one could.
            let flat = crate::select::Flat::of(model, &r.selector);
            for (other, other_flat) in &config_flats {
                if conflicts.contains(other) || flat.nodes.is_some() || other_flat.nodes.is_some() {
                    continue;
                }
                if let Some(labels) = flat.common_labels(other_flat) {
                    d.warning(
                        path,
                        r.selector.span,
                        "rollouts-may-overlap",
                        format!("rollouts `{other}` and `{name}` both deliver a proxy config, and a node labelled {labels} would be selected by both"),
                        Some("make the selectors exclusive, e.g. `not-in` the other's label values, so a relabelled node cannot get two configs".to_owned()),
                    );
                }
            }
            config_flats.push((name.as_str(), flat));
        }
        match &r.target.value {
            RolloutTarget::Config(config) => {
                upstream_checks(model, d, path, name, config, &r.gates.http_checks);
            }
            RolloutTarget::Mesh(_) => {
                no_upstream_checks(d, path, &r.gates.http_checks, "a mesh rollout's gates");
            }
        }
        // Its own parts where it writes them; a template's in fleet.kdl.
        let own = model.written.get(name).unwrap_or(r);
        if let Some(t) = &own.template {
            let templates = model.fleet.as_ref().map(|f| &f.doc.templates);
            if !model.written.contains_key(name) {
                d.error(
                    path,
                    t.span,
                    "unknown-template",
                    format!(
                        "rollout `{name}` uses template `{}`, which fleet.kdl does not define",
                        t.value
                    ),
                    Some(format!(
                        "templates are `template \"NAME\" {{ ... }}` in fleet.kdl; {}",
                        known_list(templates.into_iter().flatten().map(|t| &t.name.value))
                    )),
                );
            } else if r.steps.is_empty() {
                d.error(
                    path,
                    t.span,
                    "missing-node",
                    format!(
                        "rollout `{name}` has no `step`, and template `{}` has none either",
                        t.value
                    ),
                    Some(
                        "add steps such as `step count=1` and `step percent=100` to either"
                            .to_owned(),
                    ),
                );
            }
        }
        steps(d, path, &format!("rollout `{name}`"), &own.steps);
        for w in &own.windows {
            window(d, path, w);
        }
        max_unavailable(d, path, own.max_unavailable.as_ref());
        gates(d, path, &own.gates);
    }
}

fn max_unavailable(d: &mut Diagnostics<'_>, path: &str, m: Option<&Spanned<u64>>) {
    if let Some(m) = m {
        if m.value == 0 {
            d.error(
                path,
                m.span,
                "invalid-value",
                "max-unavailable 0 lets the rollout make no progress",
                Some("use 1 or more".to_owned()),
            );
        }
    }
}

/// The steps of `what` (a rollout or a template): each grows, and the last
/// reaches 100 %.
fn steps(d: &mut Diagnostics<'_>, path: &str, what: &str, steps: &[Step]) {
    let (mut last_count, mut last_percent) = (0, 0);
    for step in steps {
        match step.size.value {
            StepSize::Count(0) | StepSize::Percent(0) => {
                d.error(
                    path,
                    step.size.span,
                    "invalid-step",
                    "a step of zero nodes does nothing",
                    None,
                );
            }
            StepSize::Percent(p) if p > 100 => {
                d.error(
                    path,
                    step.size.span,
                    "invalid-step",
                    format!("a step of {p} % is more than all nodes"),
                    Some("percentages go up to 100".to_owned()),
                );
            }
            StepSize::Count(c) if c <= last_count => {
                d.error(
                    path,
                    step.size.span,
                    "steps-not-increasing",
                    format!("step count={c} does not grow past the earlier count={last_count}"),
                    Some("each step covers more nodes than the one before".to_owned()),
                );
            }
            StepSize::Percent(p) if p <= last_percent => {
                d.error(
                    path,
                    step.size.span,
                    "steps-not-increasing",
                    format!(
                        "step percent={p} does not grow past the earlier percent={last_percent}"
                    ),
                    Some("each step covers more nodes than the one before".to_owned()),
                );
            }
            StepSize::Count(c) => last_count = c,
            StepSize::Percent(p) => last_percent = p,
        }
    }
    if let Some(last) = steps.last() {
        // A last step that is itself invalid (zero, or over 100 %) has been
        // reported above; saying it also falls short of 100 % would mislead.
        let invalid = matches!(last.size.value, StepSize::Count(0) | StepSize::Percent(0))
            || matches!(last.size.value, StepSize::Percent(p) if p > 100);
        if !invalid && last.size.value != StepSize::Percent(100) {
            let reached = match last.size.value {
                StepSize::Count(c) => format!("count={c}"),
                StepSize::Percent(p) => format!("{p} %"),
            };
            d.error(
                path,
                last.size.span,
                "steps-incomplete",
                format!("{what} ends at {reached}, not 100 %"),
                Some(
                    "end with `step percent=100` so every selected node gets the change".to_owned(),
                ),
            );
        }
    }
}

fn gates(d: &mut Diagnostics<'_>, path: &str, g: &Gates) {
    if let Some(e) = &g.max_error_rate {
        if !(0.0..=1.0).contains(&e.value) {
            d.error(
                path,
                e.span,
                "invalid-value",
                format!("max-error-rate {} is not a ratio between 0 and 1", e.value),
                Some("1 % is 0.01".to_owned()),
            );
        }
    }
    for (what, v) in [
        ("max-cpu-percent", &g.max_cpu_percent),
        ("max-memory-percent", &g.max_memory_percent),
    ] {
        if let Some(v) = v {
            if !(0.0..=100.0).contains(&v.value) {
                d.error(
                    path,
                    v.span,
                    "invalid-value",
                    format!("{what} {} is not a percentage", v.value),
                    None,
                );
            }
        }
    }
    http_checks(d, path, &g.http_checks);
}

/// Checks where no config says what an upstream is take none.
fn no_upstream_checks(d: &mut Diagnostics<'_>, path: &str, checks: &[HttpCheck], what: &str) {
    for check in checks {
        if let Some(u) = &check.upstream {
            d.error(
                path,
                u.span,
                "upstream-not-allowed",
                format!("{what} cannot check an upstream (`{}`)", u.value),
                Some(
                    "check upstreams in the gates of the config rollout whose config names them"
                        .to_owned(),
                ),
            );
        }
    }
}

/// Every upstream a rollout's checks name is one its config defines, for
/// each proxy it is built for.
fn upstream_checks(
    model: &FleetModel,
    d: &mut Diagnostics<'_>,
    path: &str,
    rollout: &str,
    config: &str,
    checks: &[HttpCheck],
) {
    let Some(dir) = model.configs.get(config) else {
        return;
    };
    for check in checks {
        let Some(upstream) = &check.upstream else {
            continue;
        };
        for (proxy, variant) in &dir.variants {
            let Some(parsed) = &variant.config else {
                continue;
            };
            let known = parsed.outline().upstreams;
            if !known.contains(&upstream.value) {
                d.error(
                    path,
                    upstream.span,
                    "unknown-upstream",
                    format!(
                        "rollout `{rollout}` checks upstream `{}`, which config `{config}` does not define for {proxy}",
                        upstream.value
                    ),
                    Some(known_list(known.iter())),
                );
                break;
            }
        }
    }
}

const METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"];

fn http_checks(d: &mut Diagnostics<'_>, path: &str, checks: &[HttpCheck]) {
    for check in checks {
        let url = &check.url.value;
        if check.upstream.is_some() {
            if !url.starts_with('/') {
                d.error(
                    path,
                    check.url.span,
                    "invalid-value",
                    format!("`{url}` is not a path: a check of an upstream requests a path on each of its targets"),
                    Some("write `http-check \"/healthz\" upstream=\"NAME\"`".to_owned()),
                );
            }
        } else if !url.starts_with("http://") {
            d.error(
                path,
                check.url.span,
                "invalid-value",
                format!("`{url}` is not an http URL"),
                Some("agents request plain http on their node's loopback; name an `upstream` to check other addresses".to_owned()),
            );
        }
        let statuses = &check.expect_status;
        if statuses.value.is_empty() || statuses.value.iter().any(|s| !(100..=599).contains(s)) {
            let list: Vec<String> = statuses.value.iter().map(u64::to_string).collect();
            d.error(
                path,
                statuses.span,
                "invalid-value",
                if list.len() == 1 {
                    format!("{} is not an HTTP status", list[0])
                } else {
                    format!("`{}` is not a list of HTTP statuses", list.join(","))
                },
                Some("write `expect-status=200` or `expect-status=\"200,204\"`".to_owned()),
            );
        }
        if let Some(m) = &check.method {
            if !METHODS.contains(&m.value.as_str()) {
                d.error(
                    path,
                    m.span,
                    "invalid-value",
                    format!("`{}` is not an HTTP method a check can use", m.value),
                    Some(format!("use one of {}", METHODS.join(", "))),
                );
            } else if m.value == "HEAD" {
                if let Some(b) = check.body_contains.as_ref().or(check.body_matches.as_ref()) {
                    d.error(
                        path,
                        b.span,
                        "invalid-value",
                        "a HEAD request has no body to match",
                        Some("use GET, or check the status only".to_owned()),
                    );
                }
            }
        }
        if let Some(re) = &check.body_matches {
            if let Err(e) = regex::Regex::new(&re.value) {
                d.error(
                    path,
                    re.span,
                    "invalid-regex",
                    format!("`{}` is not a regular expression: {e}", re.value),
                    None,
                );
            }
        }
        if let Some(t) = &check.timeout_ms {
            if t.value == 0 || t.value > gitfleet_schemas::rollout::MAX_HTTP_CHECK_TIMEOUT_MS {
                d.error(
                    path,
                    t.span,
                    "invalid-value",
                    format!(
                        "a check's timeout must be above 0 and at most 30s, not {}ms",
                        t.value
                    ),
                    None,
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usable_addresses_leave_out_network_and_broadcast() {
        assert_eq!(usable_addresses(&"10.0.0.0/24".parse().unwrap()), 254);
        assert_eq!(usable_addresses(&"10.0.0.0/31".parse().unwrap()), 2);
        assert_eq!(usable_addresses(&"10.0.0.1/32".parse().unwrap()), 1);
        assert_eq!(usable_addresses(&"fd00::/120".parse().unwrap()), 255);
    }

    /// The weekdays of the first `n` openings after a fixed Monday.
    fn weekdays(expr: &str, n: usize) -> Vec<chrono::Weekday> {
        use chrono::{Datelike as _, TimeZone as _};
        let schedule = parse_cron(expr).unwrap_or_else(|e| panic!("`{expr}`: {e}"));
        let monday = chrono::Utc
            .with_ymd_and_hms(2024, 1, 1, 0, 0, 0)
            .single()
            .expect("a valid date");
        assert_eq!(monday.weekday(), chrono::Weekday::Mon);
        schedule
            .after(&monday)
            .take(n)
            .map(|t| t.weekday())
            .collect()
    }

    #[test]
    fn five_field_cron_is_accepted() {
        assert!(parse_cron("0 9 * * Mon-Fri").is_ok());
        assert!(parse_cron("*/15 8-17 1,15 * *").is_ok());
        assert!(parse_cron("61 * * * *").is_err());
    }

    #[test]
    fn only_five_fields_are_accepted() {
        for expr in ["0 0 9 * * Mon-Fri", "0 0 9 * * Mon-Fri 2030", "0 9 * *", ""] {
            let n = expr.split_whitespace().count();
            assert_eq!(
                parse_cron(expr).err(),
                Some(format!(
                    "expected 5 fields (minute hour day-of-month month day-of-week), found {n}"
                )),
                "{expr}"
            );
        }
    }

    #[test]
    fn numeric_days_of_week_are_standard() {
        use chrono::Weekday::{Fri, Mon, Sat, Sun, Thu, Tue, Wed};
        assert_eq!(weekdays("0 9 * * 1-5", 6), [Mon, Tue, Wed, Thu, Fri, Mon]);
        assert_eq!(
            weekdays("0 9 * * Mon-Fri", 6),
            [Mon, Tue, Wed, Thu, Fri, Mon]
        );
        assert_eq!(weekdays("0 9 * * 0", 2), [Sun, Sun]);
        assert_eq!(weekdays("0 9 * * 7", 2), [Sun, Sun]);
        assert_eq!(weekdays("0 9 * * 5-7", 4), [Fri, Sat, Sun, Fri]);
        assert_eq!(weekdays("0 9 * * 0,6", 3), [Sat, Sun, Sat]);
        assert_eq!(weekdays("0 9 * * */2", 5), [Tue, Thu, Sat, Sun, Tue]);
        assert_eq!(weekdays("0 9 * * 1-5/2", 4), [Mon, Wed, Fri, Mon]);
        assert_eq!(weekdays("0 9 * * 6,Sun", 3), [Sat, Sun, Sat]);
        assert_eq!(weekdays("0 9 * * *", 2), [Mon, Tue]);
    }

    #[test]
    fn bad_days_of_week_are_rejected() {
        assert!(parse_cron("0 9 * * 8").is_err());
        assert!(parse_cron("0 9 * * 5-1").is_err());
        assert!(parse_cron("0 9 * * */0").is_err());
        assert!(parse_cron("0 9 * * Mon-5").is_err());
    }

    #[test]
    fn a_window_that_never_opens_is_rejected() {
        assert_eq!(
            parse_window_cron("0 0 31 2 *").err(),
            Some(CronError::NeverOpens)
        );
        assert_eq!(
            parse_window_cron("0 0 31 4 *").err(),
            Some(CronError::NeverOpens)
        );
        // Rare is not never: February 29 on a Monday, Friday the 13th.
        assert!(parse_cron("0 0 29 2 Mon").is_ok());
        assert!(parse_cron("0 0 13 * 5").is_ok());
    }

    #[test]
    fn key_errors_do_not_leak_decoder_details() {
        let bad_symbol = decode_key("Faz0awO3TpxOrdrGl9JOubghLXtHG0qvzoviuH92ZPA!");
        assert_eq!(bad_symbol, Err("not valid base64".to_owned()));
        let bad_padding = decode_key("HUEFj87k8L7OSHttz/kWiAL9hOTz6wOuQtbUMkHVjG");
        assert_eq!(bad_padding, Err("not valid base64".to_owned()));
        assert_eq!(decode_key("AAAA"), Err("3 bytes, not 32".to_owned()));
        assert!(decode_key("Faz0awO3TpxOrdrGl9JOubghLXtHG0qvzoviuH92ZPA=").is_ok());
    }

    #[test]
    fn weak_and_torsion_keys_are_invalid_keys() {
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        let good = ed25519_dalek::SigningKey::from_bytes(&[7; 32]).verifying_key();
        // A point of order 8, and the good key plus it.
        let t8 = ed25519_dalek::VerifyingKey::from_bytes(&[
            0xc7, 0x17, 0x6a, 0x70, 0x3d, 0x4d, 0xd8, 0x4f, 0xba, 0x3c, 0x0b, 0x76, 0x0d, 0x10,
            0x67, 0x0f, 0x2a, 0x20, 0x53, 0xfa, 0x2c, 0x39, 0xcc, 0xc6, 0x4e, 0xc7, 0xfd, 0x77,
            0x92, 0xac, 0x03, 0x7a,
        ])
        .expect("a curve point");
        let twin = (good.to_edwards() + t8.to_edwards()).compress().to_bytes();
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let files = RepoFiles::new();
        for (key, valid) in [
            (b64(good.as_bytes()), true),
            (b64(&identity), false),
            (b64(t8.as_bytes()), false),
            (b64(&twin), false),
        ] {
            let key = Spanned::new(key, Span::default());
            let found = codes(&files, |d| {
                check_ed25519(d, FLEET_FILE, &key, "root key");
            });
            let expected: &[&str] = if valid { &[] } else { &["invalid-key"] };
            assert_eq!(found, expected, "{}", key.value);
        }
    }

    /// The codes of the diagnostics a check gives.
    fn codes(files: &RepoFiles, run: impl FnOnce(&mut Diagnostics<'_>)) -> Vec<String> {
        let mut d = Diagnostics::new(files);
        run(&mut d);
        d.finish().into_iter().map(|x| x.code).collect()
    }

    fn step_codes(step_lines: &str) -> Vec<String> {
        let text = format!("version 1\nconfig \"web\"\n{step_lines}");
        let r = gitfleet_schemas::RolloutFile::decode(&text)
            .value
            .expect("the rollout decodes");
        let mut files = RepoFiles::new();
        files.insert("rollouts/web.kdl", text);
        codes(&files, |d| {
            steps(d, "rollouts/web.kdl", "rollout `web`", &r.steps)
        })
    }

    #[test]
    fn an_invalid_last_step_is_not_also_incomplete() {
        assert_eq!(
            step_codes("step count=1\nstep percent=1000\n"),
            ["invalid-step"]
        );
        assert_eq!(step_codes("step percent=0\n"), ["invalid-step"]);
        assert_eq!(step_codes("step count=0\n"), ["invalid-step"]);
        assert_eq!(
            step_codes("step count=1\nstep percent=50\n"),
            ["steps-incomplete"]
        );
        assert!(step_codes("step count=1\nstep percent=100\n").is_empty());
    }

    #[test]
    fn zero_freshness_is_rejected() {
        let text = "version 1\nenvironment \"dev\" {\n    freshness \"0s\"\n}\n";
        let model = FleetModel {
            environments: gitfleet_schemas::EnvironmentsFile::decode(text)
                .value
                .expect("the file decodes")
                .environments,
            environments_read: true,
            ..FleetModel::default()
        };
        let mut files = RepoFiles::new();
        files.insert(ENVIRONMENTS_FILE, text);
        assert_eq!(
            codes(&files, |d| environments(&model, d)),
            ["invalid-value"]
        );
    }

    #[test]
    fn node_file_name_advice_only_when_it_helps() {
        let mut files = RepoFiles::new();
        files.insert("nodes/web-1.kdl", "");
        files.insert("nodes/web-2.kdl", "");
        assert_eq!(
            better_node_path("nodes/web-2.kdl", "web-02", &files).as_deref(),
            Some("nodes/web-02.kdl")
        );
        assert_eq!(better_node_path("nodes/web-2.kdl", "web-2", &files), None);
        // Another file already has the name: a duplicate id, reported as such.
        assert_eq!(better_node_path("nodes/web-2.kdl", "web-1", &files), None);
        // An id that cannot be a file name is reported as invalid.
        assert_eq!(better_node_path("nodes/web-2.kdl", "web 2", &files), None);
    }

    #[test]
    fn without_environments_kdl_nodes_are_not_each_blamed() {
        let mut files = RepoFiles::new();
        files.insert(
            "nodes/web-1.kdl",
            "version 1\nid \"web-1\"\nenvironment \"prod\"\nnode-key \"Faz0awO3TpxOrdrGl9JOubghLXtHG0qvzoviuH92ZPA=\"\n",
        );
        let checked = crate::check::check(&files);
        let codes: Vec<&str> = checked
            .diagnostics
            .iter()
            .map(|d| d.code.as_str())
            .collect();
        assert!(codes.contains(&"missing-file"), "{codes:?}");
        assert!(!codes.contains(&"unknown-environment"), "{codes:?}");
    }

    #[test]
    fn names_are_restricted_to_safe_characters() {
        assert!(valid_name("edge-fra-1"));
        assert!(valid_name("prod"));
        assert!(!valid_name("../etc"));
        assert!(!valid_name("-x"));
        assert!(!valid_name(""));
        assert!(!valid_name(&"a".repeat(64)));
    }
}
