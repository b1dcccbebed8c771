//! Prometheus metrics shared by both binaries' `/metrics`: the text
//! format's label escaping and family headers, and latency histograms for
//! the IO the reconciler waits on (the object store, git). Histograms are
//! lock-free counters with fixed buckets, so recording costs a few atomic
//! adds and the label set is fixed.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A label value, escaped as the Prometheus text format wants.
pub fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The `# HELP` and `# TYPE` lines that open a metric family.
pub fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Bucket upper bounds, in seconds (`+Inf` is implied).
pub const BOUNDS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// One histogram of durations.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Per bucket (not cumulative); the last is `+Inf`.
    counts: [AtomicU64; BOUNDS.len() + 1],
    sum_nanos: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        let i = BOUNDS.iter().position(|b| s <= *b).unwrap_or(BOUNDS.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// How many durations it holds.
    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// A guard that records the time until it is dropped: one line at the
    /// top of a function times every way out of it.
    pub fn start(&self) -> Timer<'_> {
        Timer {
            histogram: self,
            started: Instant::now(),
        }
    }

    /// Samples of this histogram as `name{labels,le="..."}` lines, with
    /// `_sum` and `_count`. `labels` is `key="value",...` or empty.
    pub fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (i, count) in self.counts.iter().enumerate() {
            cumulative += count.load(Ordering::Relaxed);
            let le = BOUNDS
                .get(i)
                .map_or_else(|| "+Inf".to_owned(), |b| b.to_string());
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cumulative}"
            );
        }
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(out, "{name}_count{braces} {cumulative}");
    }
}

/// Records into its histogram when dropped.
#[derive(Debug)]
pub struct Timer<'a> {
    histogram: &'a Histogram,
    started: Instant,
}

impl Drop for Timer<'_> {
    fn drop(&mut self) {
        self.histogram.observe(self.started.elapsed());
    }
}

/// Object store requests by kind.
#[derive(Debug, Default)]
pub struct StoreLatency {
    pub get: Histogram,
    pub put: Histogram,
    pub list: Histogram,
}

impl StoreLatency {
    pub fn each(&self) -> [(&'static str, &Histogram); 3] {
        [("get", &self.get), ("put", &self.put), ("list", &self.list)]
    }
}

/// Object store requests counted by kind, and bytes each way: what the
/// store bills. Shared by a store's clones; [`StoreCounts::snapshot`]s
/// subtract, so a pass can say what it cost.
#[derive(Debug, Default)]
pub struct StoreCounts {
    list: AtomicU64,
    get: AtomicU64,
    get_not_modified: AtomicU64,
    put: AtomicU64,
    put_conditional: AtomicU64,
    delete: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    errors: AtomicU64,
}

/// Requests of each kind, and bytes, at one moment (or between two).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreCount {
    pub list: u64,
    /// GETs that returned a body, or found nothing.
    pub get: u64,
    /// Conditional GETs answered "not modified".
    pub get_not_modified: u64,
    pub put: u64,
    /// Create-only and compare-and-swap puts.
    pub put_conditional: u64,
    pub delete: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Requests that failed (unreachable, refused, timed out; not a
    /// missing object or a lost conditional write, which are answers).
    pub errors: u64,
}

/// A kind of store request, as counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    List,
    Get,
    GetNotModified,
    Put,
    PutConditional,
    Delete,
}

impl StoreCounts {
    pub fn count(&self, request: Request) {
        let c = match request {
            Request::List => &self.list,
            Request::Get => &self.get,
            Request::GetNotModified => &self.get_not_modified,
            Request::Put => &self.put,
            Request::PutConditional => &self.put_conditional,
            Request::Delete => &self.delete,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub fn bytes_in(&self, n: usize) {
        self.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub fn bytes_out(&self, n: usize) {
        self.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub fn error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> StoreCount {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StoreCount {
            list: l(&self.list),
            get: l(&self.get),
            get_not_modified: l(&self.get_not_modified),
            put: l(&self.put),
            put_conditional: l(&self.put_conditional),
            delete: l(&self.delete),
            bytes_in: l(&self.bytes_in),
            bytes_out: l(&self.bytes_out),
            errors: l(&self.errors),
        }
    }
}

impl StoreCount {
    /// What happened between `earlier` and this.
    pub fn since(&self, earlier: &StoreCount) -> StoreCount {
        StoreCount {
            list: self.list.saturating_sub(earlier.list),
            get: self.get.saturating_sub(earlier.get),
            get_not_modified: self
                .get_not_modified
                .saturating_sub(earlier.get_not_modified),
            put: self.put.saturating_sub(earlier.put),
            put_conditional: self.put_conditional.saturating_sub(earlier.put_conditional),
            delete: self.delete.saturating_sub(earlier.delete),
            bytes_in: self.bytes_in.saturating_sub(earlier.bytes_in),
            bytes_out: self.bytes_out.saturating_sub(earlier.bytes_out),
            errors: self.errors.saturating_sub(earlier.errors),
        }
    }

    /// Every request, of whatever kind.
    pub fn requests(&self) -> u64 {
        self.list + self.get + self.get_not_modified + self.put + self.put_conditional + self.delete
    }

    /// The request counts as metric (kind label, value) pairs.
    pub fn each(&self) -> [(&'static str, u64); 6] {
        [
            ("list", self.list),
            ("get", self.get),
            ("get-not-modified", self.get_not_modified),
            ("put", self.put),
            ("put-conditional", self.put_conditional),
            ("delete", self.delete),
        ]
    }
}

/// Git operations against the fleet repo's remote.
#[derive(Debug, Default)]
pub struct GitLatency {
    pub fetch: Histogram,
    pub push: Histogram,
}

impl GitLatency {
    pub fn each(&self) -> [(&'static str, &Histogram); 2] {
        [("fetch", &self.fetch), ("push", &self.push)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_count_every_sample() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(20));
        h.observe(Duration::from_secs(60));
        let mut out = String::new();
        h.render(&mut out, "x_seconds", "op=\"get\"");
        assert!(
            out.contains("x_seconds_bucket{op=\"get\",le=\"0.001\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("x_seconds_bucket{op=\"get\",le=\"0.025\"} 2\n"),
            "{out}"
        );
        assert!(
            out.contains("x_seconds_bucket{op=\"get\",le=\"10\"} 2\n"),
            "{out}"
        );
        assert!(
            out.contains("x_seconds_bucket{op=\"get\",le=\"+Inf\"} 3\n"),
            "{out}"
        );
        assert!(out.contains("x_seconds_count{op=\"get\"} 3\n"), "{out}");
        assert!(out.contains("x_seconds_sum{op=\"get\"} 60.0205\n"), "{out}");
    }

    #[test]
    fn a_timer_records_once_when_dropped() {
        let h = Histogram::default();
        drop(h.start());
        let mut out = String::new();
        h.render(&mut out, "t", "");
        assert!(out.contains("t_count 1\n"), "{out}");
        assert!(out.contains("t_bucket{le=\"+Inf\"} 1\n"), "{out}");
    }
}
