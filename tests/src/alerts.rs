//! The shipped alerting rules (`deploy/prometheus/gitfleet-alerts.yml`),
//! evaluated by Prometheus's own `promtool` against `/metrics` scraped
//! from real processes.
//!
//! Two scrapes of one process, taken a while apart, become promtool input
//! series over 150 minutes: the first scrape's values for the first 30,
//! the second's for the rest (a series gone by then is absent). Counters
//! go on growing at the rate between the two scrapes, so "keeps failing"
//! stays true. A `*_timestamp_seconds` gauge is mapped onto promtool's
//! clock at its distance from the scrape's own; one that moved between the
//! scrapes keeps moving with the clock (a pass ends every few seconds), one
//! that did not over [`STUCK_AFTER`] stays where it is while the clock runs
//! on (no pass ends, no manifest is re-signed, the process started when it
//! started). The alerts
//! firing at the end are compared with the expected ones, by name.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::workspace;

/// One scrape of `/metrics` and when it was taken.
#[derive(Clone, Debug)]
pub struct Scrape {
    pub text: String,
    /// Unix seconds.
    pub at: f64,
}

impl Scrape {
    pub fn now(text: String) -> Scrape {
        Scrape {
            text,
            at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
        }
    }
}

/// Scrape `metrics` (a `/metrics` URL) until `done` says it shows what
/// the test waits for; fail the test after `limit`, with the last scrape.
pub fn scrape_until(
    metrics: &str,
    what: &str,
    limit: std::time::Duration,
    done: impl Fn(&str) -> bool,
) -> Scrape {
    let start = std::time::Instant::now();
    loop {
        let text = reqwest::blocking::get(metrics)
            .and_then(|r| r.text())
            .unwrap_or_default();
        if done(&text) {
            return Scrape::now(text);
        }
        assert!(start.elapsed() < limit, "no {what} in {metrics}:\n{text}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// The rules file.
pub fn rules_file() -> PathBuf {
    workspace().join("deploy/prometheus/gitfleet-alerts.yml")
}

/// Seconds between the scrapes after which a timestamp that did not move
/// counts as stuck: tests that mean it wait this long between scrapes.
pub const STUCK_AFTER: f64 = 10.0;

/// Minutes the first scrape holds, and in all.
const FIRST: u64 = 30;
const TOTAL: u64 = 150;

/// `(series, value)` of a scrape, and which families are counters.
fn samples(text: &str) -> (BTreeMap<String, f64>, BTreeSet<String>) {
    let mut out = BTreeMap::new();
    let mut counters = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            // A histogram's or summary's parts count up too.
            if let (Some(name), Some("counter" | "histogram" | "summary")) =
                (parts.next(), parts.next())
            {
                counters.insert(name.to_owned());
            }
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        // `name{labels} value`: label values may hold spaces, the value
        // does not.
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        if let Ok(v) = value.parse::<f64>() {
            out.insert(series.trim().to_owned(), v);
        }
    }
    (out, counters)
}

fn family(series: &str) -> &str {
    series.split('{').next().unwrap_or(series)
}

/// The promtool input series for two scrapes (see the module docs).
pub fn input_series(before: &Scrape, after: &Scrape) -> String {
    let (first, mut counters) = samples(&before.text);
    let (second, more) = samples(&after.text);
    counters.extend(more);
    let apart_min = ((after.at - before.at) / 60.0).max(1.0 / 60.0);
    let names: BTreeSet<&String> = first.keys().chain(second.keys()).collect();
    let mut out = String::new();
    for series in names {
        let name = family(series);
        // A histogram's parts are counters too.
        let base = name
            .strip_suffix("_bucket")
            .or_else(|| name.strip_suffix("_sum"))
            .or_else(|| name.strip_suffix("_count"))
            .unwrap_or(name);
        let counter = counters.contains(name) || counters.contains(base);
        let timestamp = name.ends_with("_timestamp_seconds");
        // A timestamp both scrapes have and that did not move in
        // STUCK_AFTER is stuck (a pass ends every few seconds in tests).
        let stuck = after.at - before.at >= STUCK_AFTER
            && matches!((first.get(series), second.get(series)), (Some(a), Some(b)) if a == b);
        let mut values = Vec::with_capacity(TOTAL as usize);
        for minute in 0..TOTAL {
            // A series the first scrape lacks begins with the second.
            let (scrape, value) = if minute < FIRST {
                (before, first.get(series).copied())
            } else {
                (after, second.get(series).copied())
            };
            let Some(v) = value else {
                values.push("_".to_owned());
                continue;
            };
            let v = if counter {
                let rate = match (first.get(series), second.get(series)) {
                    (Some(a), Some(b)) => (b - a).max(0.0) / apart_min,
                    _ => 0.0,
                };
                let last = second
                    .get(series)
                    .or(first.get(series))
                    .copied()
                    .unwrap_or(v);
                (last + rate * (minute as f64 - FIRST as f64)).max(0.0)
            } else if timestamp && stuck && minute >= FIRST {
                v - after.at + (FIRST * 60) as f64
            } else if timestamp {
                v - scrape.at + (minute * 60) as f64
            } else {
                v
            };
            values.push(format!("{v}"));
        }
        let _ = writeln!(
            out,
            "      - series: '{}'\n        values: '{}'",
            series.replace('\'', "''"),
            values.join(" ")
        );
    }
    out
}

/// Check that exactly the `firing` alerts fire after these two scrapes,
/// with promtool; its own report when not.
pub fn check(before: &Scrape, after: &Scrape, firing: &[&str]) -> Result<(), String> {
    let promtool = gitfleet_io::tools::Tool::Promtool.require();
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut test = format!(
        "rule_files: ['{}']\nevaluation_interval: 1m\ntests:\n  - interval: 1m\n    input_series:\n",
        rules_file().display()
    );
    test.push_str(&input_series(before, after));
    let _ = write!(
        test,
        "    promql_expr_test:\n      - expr: group by (alertname) (ALERTS{{alertstate=\"firing\"}})\n        eval_time: {}m\n        exp_samples:\n",
        TOTAL - 1
    );
    for name in firing {
        let _ = writeln!(
            test,
            "          - labels: '{{alertname=\"{name}\"}}'\n            value: 1"
        );
    }
    if firing.is_empty() {
        test.push_str("          []\n");
        test = test.replace("exp_samples:\n          []", "exp_samples: []");
    }
    let path = dir.path().join("alerts.test.yml");
    std::fs::write(&path, &test).map_err(|e| e.to_string())?;
    let out = Command::new(promtool)
        .args(["test", "rules"])
        .arg(&path)
        .output()
        .map_err(|e| format!("running promtool: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "promtool: the alerts firing are not {firing:?}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEFORE: &str = "# TYPE x_total counter\nx_total{a=\"b c\"} 10\n# TYPE t_timestamp_seconds gauge\nt_timestamp_seconds 1000\ng 1\n";
    const AFTER: &str = "# TYPE x_total counter\nx_total{a=\"b c\"} 12\n# TYPE t_timestamp_seconds gauge\nt_timestamp_seconds 1300\n";

    #[test]
    fn counters_keep_their_rate_timestamps_their_distance_and_gone_series_end() {
        let text = input_series(
            &Scrape {
                text: BEFORE.into(),
                at: 1000.0,
            },
            &Scrape {
                text: AFTER.into(),
                at: 1120.0,
            },
        );
        let values = |series: &str| -> Vec<String> {
            let at = text.find(&format!("series: '{series}'")).unwrap();
            let line = text[at..].lines().nth(1).unwrap();
            line.trim()
                .trim_start_matches("values: '")
                .trim_end_matches('\'')
                .split(' ')
                .map(str::to_owned)
                .collect()
        };
        // 2 in 2 minutes: one a minute, 12 at minute 30.
        let x = values("x_total{a=\"b c\"}");
        assert_eq!(
            (x[30].as_str(), x[31].as_str(), x[0].as_str()),
            ("12", "13", "0")
        );
        // 1300 s at a scrape taken at 1120 s: 180 s ahead of its clock.
        let t = values("t_timestamp_seconds");
        assert_eq!((t[0].as_str(), t[30].as_str()), ("0", "1980"));
        let g = values("g");
        assert_eq!((g[29].as_str(), g[30].as_str()), ("1", "_"));
        // A timestamp that did not move between the scrapes stays put
        // from the second on, while the clock runs.
        let stuck = input_series(
            &Scrape {
                text: "s_timestamp_seconds 900\n".into(),
                at: 1000.0,
            },
            &Scrape {
                text: "s_timestamp_seconds 900\n".into(),
                at: 1060.0,
            },
        );
        // Equal over a moment only: still moving, as far as we know.
        let moving = input_series(
            &Scrape {
                text: "s_timestamp_seconds 900\n".into(),
                at: 1000.0,
            },
            &Scrape {
                text: "s_timestamp_seconds 900\n".into(),
                at: 1001.0,
            },
        );
        assert!(moving.contains(" 8839'"), "{moving}");
        let line = stuck.lines().nth(1).unwrap();
        let v: Vec<&str> = line
            .trim()
            .trim_start_matches("values: '")
            .trim_end_matches('\'')
            .split(' ')
            .collect();
        // 100 s behind at the first scrape, 160 s at the second (minute
        // 30 = 1800 s), and there it stays.
        assert_eq!(
            (v[0], v[29], v[30], v[149]),
            ("-100", "1640", "1640", "1640")
        );
        // A series only the second scrape has starts with it.
        let late = input_series(
            &Scrape {
                text: String::new(),
                at: 0.0,
            },
            &Scrape {
                text: "late 2\n".into(),
                at: 60.0,
            },
        );
        assert!(
            late.contains(&format!("values: '{}2", "_ ".repeat(30))),
            "{late}"
        );
    }
}
