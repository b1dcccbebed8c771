//! The proxy's own traffic, as the health gates judge it: Sentinel's
//! `sentinel_requests_total{route,method,status}` counters and its
//! `sentinel_request_duration_seconds` histogram, scraped from the
//! `builtin-handler "metrics"` route (Prometheus text, read by
//! `prometheus-parse`), turned into what happened between two scrapes:
//! requests, 5xx answers, the error rate, p50 and p99.
//!
//! A request the proxy answers itself with a proxy error (an upstream it
//! marked down answers 502 at once) is not in `sentinel_requests_total`:
//! Sentinel counts it as `sentinel_blocked_requests_total{reason=
//! "proxy_error_502"}`, with no route. Those count as requests and 5xx
//! answers in every window, a route's included, since they cannot be told
//! apart: a gate would rather see an error that is not its route's than
//! miss its route failing.
//!
//! Counters only grow while the proxy runs; a restart (a reload by
//! restart) starts them at zero again. As Prometheus' `rate()` does, a
//! series that went down counts its whole new value as the increase.
//! The simulator renders its traffic in the same text and goes through
//! the same code, so a gate sees the same thing from both.
//!
//! Zentinel 0.6 exports the same metrics as `zentinel_*`. Unlike Sentinel,
//! it answers 500 itself for an upstream it marked down and records that
//! only as `proxy_error_500`, the reason it also records for every answer
//! of a builtin handler; so those answers are not counted as errors on
//! Zentinel either, and a route whose upstream is down shows as a route
//! without traffic (which the `min-requests` gate does not pass).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use prometheus_parse::{Scrape, Value};

/// The counter of requests by route, method and status.
pub const REQUESTS: &str = "sentinel_requests_total";
/// The histogram of request durations by route and method.
pub const DURATION: &str = "sentinel_request_duration_seconds";
/// Requests the proxy answered itself, by reason (no route).
pub const BLOCKED: &str = "sentinel_blocked_requests_total";

/// A metric's name without its proxy's prefix: Zentinel 0.6 exports the
/// same metrics, with the same labels, as `zentinel_*`.
fn unprefixed(name: &str) -> Option<&str> {
    name.strip_prefix("sentinel_")
        .or_else(|| name.strip_prefix("zentinel_"))
}

/// One scrape: every series of the two metrics, by its labels.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sample {
    /// (route, method, status) -> requests so far.
    requests: BTreeMap<(String, String, String), f64>,
    /// (route, method) -> upper bound (seconds) -> requests at most that
    /// long, so far (cumulative, as Prometheus buckets are).
    buckets: BTreeMap<(String, String), Vec<(f64, f64)>>,
    /// `proxy_error_5xx` reason -> requests the proxy answered with that
    /// status itself, so far.
    proxy_errors: BTreeMap<String, f64>,
}

/// Whether a blocked-request reason is a 5xx the proxy answered itself
/// for want of an upstream: 502, 503 or 504. Not `proxy_error_500`, which
/// Sentinel 0.4.14 also records for every answer of a builtin handler (each
/// metrics scrape and config dump, answered 200), nor
/// `proxy_error_ConnectRefused`, which names the cause of a request that
/// is also counted by its status.
fn proxy_5xx(reason: &str) -> bool {
    matches!(
        reason.strip_prefix("proxy_error_"),
        Some("502" | "503" | "504")
    )
}

#[derive(Debug, thiserror::Error)]
#[error("the proxy's metrics are not Prometheus text")]
pub struct ParseError(#[source] std::io::Error);

impl Sample {
    /// Read the two metrics out of a scrape; other metrics are ignored.
    pub fn parse(text: &str) -> Result<Sample, ParseError> {
        let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).map_err(ParseError)?;
        let mut out = Sample::default();
        let name = |full: &'static str| unprefixed(full).unwrap_or(full);
        let (requests, blocked, duration) = (name(REQUESTS), name(BLOCKED), name(DURATION));
        for s in scrape.samples {
            let label = |name: &str| s.labels.get(name).unwrap_or_default().to_owned();
            let Some(metric) = unprefixed(&s.metric) else {
                continue;
            };
            match (metric, &s.value) {
                (m, Value::Counter(v) | Value::Untyped(v)) if m == requests => {
                    *out.requests
                        .entry((label("route"), label("method"), label("status")))
                        .or_default() += v;
                }
                (m, Value::Counter(v) | Value::Untyped(v))
                    if m == blocked && proxy_5xx(&label("reason")) =>
                {
                    *out.proxy_errors.entry(label("reason")).or_default() += v;
                }
                (m, Value::Histogram(buckets)) if m == duration => {
                    let mut b: Vec<(f64, f64)> =
                        buckets.iter().map(|c| (c.less_than, c.count)).collect();
                    b.sort_by(|x, y| x.0.total_cmp(&y.0));
                    out.buckets.insert((label("route"), label("method")), b);
                }
                _ => {}
            }
        }
        Ok(out)
    }

    /// Render as the proxy would (for the simulator): the same two metrics
    /// in Prometheus text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# TYPE {REQUESTS} counter");
        for ((route, method, status), v) in &self.requests {
            let _ = writeln!(
                out,
                "{REQUESTS}{{method=\"{method}\",route=\"{route}\",status=\"{status}\"}} {v}"
            );
        }
        if !self.proxy_errors.is_empty() {
            let _ = writeln!(out, "# TYPE {BLOCKED} counter");
        }
        for (reason, v) in &self.proxy_errors {
            let _ = writeln!(out, "{BLOCKED}{{reason=\"{reason}\"}} {v}");
        }
        let _ = writeln!(out, "# TYPE {DURATION} histogram");
        for ((route, method), buckets) in &self.buckets {
            for (le, count) in buckets {
                let le = if le.is_infinite() {
                    "+Inf".to_owned()
                } else {
                    le.to_string()
                };
                let _ = writeln!(
                    out,
                    "{DURATION}_bucket{{method=\"{method}\",route=\"{route}\",le=\"{le}\"}} {count}"
                );
            }
        }
        out
    }

    /// Count `n` requests to `route` answered `status` in `seconds` each
    /// (the simulator's traffic), into buckets of the proxy's bounds.
    pub fn record(&mut self, route: &str, status: u16, seconds: f64, n: u64) {
        const BOUNDS: [f64; 13] = [
            0.001,
            0.005,
            0.01,
            0.025,
            0.05,
            0.1,
            0.25,
            0.5,
            1.0,
            2.5,
            5.0,
            10.0,
            f64::INFINITY,
        ];
        let n = n as f64;
        *self
            .requests
            .entry((route.to_owned(), "GET".to_owned(), status.to_string()))
            .or_default() += n;
        let buckets = self
            .buckets
            .entry((route.to_owned(), "GET".to_owned()))
            .or_insert_with(|| BOUNDS.iter().map(|b| (*b, 0.0)).collect());
        for (le, count) in buckets.iter_mut() {
            if seconds <= *le {
                *count += n;
            }
        }
    }
}

/// What the proxy served between two scrapes.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Window {
    pub requests: u64,
    /// Answers with a 5xx status.
    pub errors: u64,
    /// `errors / requests`; none without requests.
    pub error_rate: Option<f64>,
    /// From the histogram's bucket increases; none without requests.
    pub p50_ms: Option<u64>,
    pub p99_ms: Option<u64>,
}

/// The increase of a counter from `before` to `now`; a counter that went
/// down was reset (the proxy restarted), and all of `now` is new.
fn increase(before: Option<f64>, now: f64) -> f64 {
    match before {
        Some(b) if now >= b => now - b,
        _ => now,
    }
}

/// What happened between `before` (none: since the proxy started) and
/// `now`, over every route or only `route`.
pub fn window(before: Option<&Sample>, now: &Sample, route: Option<&str>) -> Window {
    let wanted = |r: &str| route.is_none_or(|x| x == r);
    let mut requests = 0.0;
    let mut errors = 0.0;
    for (key, v) in &now.requests {
        if !wanted(&key.0) {
            continue;
        }
        let inc = increase(before.and_then(|b| b.requests.get(key).copied()), *v);
        requests += inc;
        if key.2.starts_with('5') {
            errors += inc;
        }
    }
    for (reason, v) in &now.proxy_errors {
        let inc = increase(before.and_then(|b| b.proxy_errors.get(reason).copied()), *v);
        requests += inc;
        errors += inc;
    }
    // The histogram's increase, bucket by bucket, summed over series.
    let mut buckets: BTreeMap<u64, (f64, f64)> = BTreeMap::new();
    for (key, series) in &now.buckets {
        if !wanted(&key.0) {
            continue;
        }
        let old = before.and_then(|b| b.buckets.get(key));
        // A reset shows in the +Inf bucket (the series' total) going down.
        let reset = match (old.and_then(|o| o.last()), series.last()) {
            (Some(o), Some(n)) => n.1 < o.1,
            _ => true,
        };
        for (le, count) in series {
            let prev = if reset {
                None
            } else {
                old.and_then(|o| o.iter().find(|(l, _)| l == le))
                    .map(|(_, c)| *c)
            };
            let e = buckets.entry(le.to_bits()).or_insert((*le, 0.0));
            e.1 += increase(prev, *count);
        }
    }
    let mut cumulative: Vec<(f64, f64)> = buckets.into_values().collect();
    cumulative.sort_by(|x, y| x.0.total_cmp(&y.0));
    let requests_n = requests.round() as u64;
    Window {
        requests: requests_n,
        errors: errors.round() as u64,
        error_rate: (requests > 0.0).then(|| errors / requests),
        p50_ms: quantile(0.50, &cumulative).map(seconds_to_ms),
        p99_ms: quantile(0.99, &cumulative).map(seconds_to_ms),
    }
}

fn seconds_to_ms(s: f64) -> u64 {
    (s * 1000.0).round() as u64
}

/// The `q` quantile of cumulative buckets `(upper bound, count)`, sorted
/// by bound, interpolated linearly inside the bucket it falls in, as
/// Prometheus' `histogram_quantile` does (a quantile in the `+Inf` bucket
/// is the highest finite bound). None without observations.
pub fn quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for &(le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return Some(lower.0);
            }
            let inside = count - lower.1;
            if inside <= 0.0 {
                return Some(le);
            }
            return Some(lower.0 + (le - lower.0) * (rank - lower.1) / inside);
        }
        lower = (le, count);
    }
    Some(lower.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What Sentinel 0.4.14 served after 5 requests to `app` (200) and 2 to
    /// `bad` (500), trimmed to a few buckets.
    const SCRAPE: &str = r#"# HELP sentinel_requests_total Total number of requests
# TYPE sentinel_requests_total counter
sentinel_requests_total{method="GET",route="app",status="200"} 5
sentinel_requests_total{method="GET",route="bad",status="500"} 2
# HELP sentinel_request_duration_seconds Request duration
# TYPE sentinel_request_duration_seconds histogram
sentinel_request_duration_seconds_bucket{method="GET",route="app",le="0.005"} 2
sentinel_request_duration_seconds_bucket{method="GET",route="app",le="0.01"} 4
sentinel_request_duration_seconds_bucket{method="GET",route="app",le="0.025"} 5
sentinel_request_duration_seconds_bucket{method="GET",route="app",le="+Inf"} 5
sentinel_request_duration_seconds_sum{method="GET",route="app"} 0.0378
sentinel_request_duration_seconds_count{method="GET",route="app"} 5
sentinel_request_duration_seconds_bucket{method="GET",route="bad",le="0.005"} 2
sentinel_request_duration_seconds_bucket{method="GET",route="bad",le="0.01"} 2
sentinel_request_duration_seconds_bucket{method="GET",route="bad",le="0.025"} 2
sentinel_request_duration_seconds_bucket{method="GET",route="bad",le="+Inf"} 2
sentinel_active_requests 0
"#;

    #[test]
    fn a_first_scrape_counts_everything_since_the_proxy_started() {
        let s = Sample::parse(SCRAPE).unwrap();
        let w = window(None, &s, None);
        assert_eq!((w.requests, w.errors), (7, 2));
        assert_eq!(w.error_rate, Some(2.0 / 7.0));
        let app = window(None, &s, Some("app"));
        assert_eq!(
            (app.requests, app.errors, app.error_rate),
            (5, 0, Some(0.0))
        );
        // p50 of app: rank 2.5 falls in (0.005, 0.01] holding 2 -> 6.25 ms.
        assert_eq!(app.p50_ms, Some(6));
        // p99: rank 4.95 in (0.01, 0.025] holding 1 -> 24.25 ms.
        assert_eq!(app.p99_ms, Some(24));
    }

    #[test]
    fn a_window_counts_only_what_happened_since_the_last_scrape() {
        let before = Sample::parse(SCRAPE).unwrap();
        let now = Sample::parse(
            &SCRAPE
                .replace("status=\"200\"} 5", "status=\"200\"} 15")
                .replace(
                    "route=\"app\",le=\"0.025\"} 5",
                    "route=\"app\",le=\"0.025\"} 15",
                )
                .replace(
                    "route=\"app\",le=\"+Inf\"} 5",
                    "route=\"app\",le=\"+Inf\"} 15",
                ),
        )
        .unwrap();
        let w = window(Some(&before), &now, None);
        assert_eq!((w.requests, w.errors, w.error_rate), (10, 0, Some(0.0)));
        // All ten new ones took (0.01, 0.025].
        assert_eq!(w.p50_ms, Some(18));
        // Nothing new: no rate, no latency; too little traffic is not health.
        let idle = window(Some(&now), &now, None);
        assert_eq!(idle, Window::default());
    }

    #[test]
    fn a_restarted_proxy_counts_its_new_counters_whole() {
        let before = Sample::parse(SCRAPE).unwrap();
        // After a restart: 1 request so far, a 500.
        let mut now = Sample::default();
        now.record("bad", 500, 0.002, 1);
        let w = window(Some(&before), &now, None);
        assert_eq!((w.requests, w.errors, w.error_rate), (1, 1, Some(1.0)));
        // p99: rank 0.99 of 1 in (1 ms, 5 ms] -> 4.96 ms.
        assert_eq!(w.p99_ms, Some(5));
    }

    #[test]
    fn the_simulators_traffic_reads_back_the_same_through_the_text() {
        let mut s = Sample::default();
        s.record("app", 200, 0.02, 98);
        s.record("app", 502, 0.3, 2);
        let parsed = Sample::parse(&s.render()).unwrap();
        assert_eq!(parsed, s);
        let w = window(None, &parsed, None);
        assert_eq!((w.requests, w.errors), (100, 2));
        assert_eq!(w.error_rate, Some(0.02));
    }

    #[test]
    fn requests_the_proxy_answered_itself_count_as_errors_of_every_window() {
        // What Sentinel 0.4.14 served after 5 upstream 500s made it mark
        // the upstream down and answer 502 itself, 55 times.
        let before = Sample::parse(SCRAPE).unwrap();
        let now = Sample::parse(&format!(
            "{SCRAPE}# TYPE sentinel_blocked_requests_total counter\nsentinel_blocked_requests_total{{reason=\"proxy_error_502\"}} 55\nsentinel_blocked_requests_total{{reason=\"proxy_error_ConnectRefused\"}} 55\nsentinel_blocked_requests_total{{reason=\"rate_limited\"}} 3\nsentinel_blocked_requests_total{{reason=\"proxy_error_500\"}} 9\n"
        ))
        .unwrap();
        let w = window(Some(&before), &now, Some("app"));
        assert_eq!((w.requests, w.errors, w.error_rate), (55, 55, Some(1.0)));
        let again = window(Some(&now), &now, None);
        assert_eq!(again.requests, 0);
        assert_eq!(Sample::parse(&now.render()).unwrap(), now);
    }

    #[test]
    fn quantiles_interpolate_inside_their_bucket() {
        let b = [(0.1, 50.0), (0.2, 100.0), (f64::INFINITY, 100.0)];
        assert_eq!(quantile(0.5, &b), Some(0.1));
        assert!((quantile(0.75, &b).unwrap() - 0.15).abs() < 1e-9);
        // Beyond the last finite bound: that bound.
        let b = [(0.1, 0.0), (f64::INFINITY, 10.0)];
        assert_eq!(quantile(0.99, &b), Some(0.1));
        assert_eq!(quantile(0.5, &[]), None);
    }
}
