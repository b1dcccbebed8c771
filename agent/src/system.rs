//! The node's system metrics for its signed status report: CPU, memory,
//! disk, load, uptime and network bytes, read from Linux procfs and
//! `statvfs`.
//!
//! The parsers are pure functions over the text of one procfs file, so they
//! are tested on captured samples; a file that does not look as expected
//! gives `None`, never a panic. [`Sampler`] does the reading: it is called on
//! every heartbeat, so it reuses one buffer and allocates nothing per poll on
//! the usual path (no `sysinfo`: the agent's idle RSS goal is 10 MiB).
//!
//! A metric the node cannot measure is `None` in the report; the sampler
//! never fails. The proxy metrics (`error_rate`, `p99_latency_ms`) are filled
//! elsewhere.

use std::borrow::Cow;
use std::fmt::Display;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use gitfleet_schemas::status::Metrics;

/// Cumulative CPU time from the aggregate `cpu` line of `/proc/stat`, in
/// jiffies (clock ticks) since boot. Two samples give a CPU percentage with
/// [`cpu_percent`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuTimes {
    /// Time not spent idle or waiting for IO.
    pub busy: u64,
    /// All time: user, nice, system, idle, iowait, irq, softirq and steal.
    /// (`guest` and `guest_nice` are already counted in user and nice.)
    pub total: u64,
}

/// Network byte counters summed over every interface except loopback, from
/// `/proc/net/dev`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetBytes {
    /// Bytes received since the interfaces came up.
    pub rx: u64,
    /// Bytes transmitted since the interfaces came up.
    pub tx: u64,
}

/// Parses the aggregate `cpu` line of `/proc/stat` into busy and total
/// jiffies. `None` when the line is missing, has fewer than the four
/// original fields (user, nice, system, idle), or has a field that is not a
/// number.
pub fn parse_stat(text: &str) -> Option<CpuTimes> {
    let line = text
        .lines()
        .find(|line| line.split_ascii_whitespace().next() == Some("cpu"))?;
    let mut total: u64 = 0;
    let mut idle: u64 = 0;
    let mut count = 0;
    for (index, field) in line.split_ascii_whitespace().skip(1).enumerate() {
        let value: u64 = field.parse().ok()?;
        count += 1;
        match index {
            // idle, iowait
            3 | 4 => {
                idle = idle.checked_add(value)?;
                total = total.checked_add(value)?;
            }
            // user, nice, system, irq, softirq, steal
            0..=7 => total = total.checked_add(value)?,
            // guest, guest_nice (included in user and nice) and anything a
            // future kernel adds: validated above, not counted.
            _ => {}
        }
    }
    if count < 4 {
        return None;
    }
    Some(CpuTimes {
        busy: total - idle,
        total,
    })
}

/// CPU use in percent between two [`parse_stat`] samples, `previous` taken
/// before `current`. `None` when no time passed between them or the counters
/// went backwards.
pub fn cpu_percent(previous: CpuTimes, current: CpuTimes) -> Option<f64> {
    let total = current.total.checked_sub(previous.total)?;
    if total == 0 {
        return None;
    }
    // iowait may decrease between samples (see proc(5)), so busy time can
    // look like it ran backwards or faster than the clock: clamp it.
    let busy = current.busy.saturating_sub(previous.busy).min(total);
    Some(busy as f64 * 100.0 / total as f64)
}

/// Memory in use in percent from `/proc/meminfo`: `MemTotal` minus
/// `MemAvailable` (which counts reclaimable cache as available), over
/// `MemTotal`. `None` when either field is missing or malformed, or the
/// total is zero.
pub fn parse_meminfo(text: &str) -> Option<f64> {
    let mut total = None;
    let mut available = None;
    for line in text.lines() {
        let Some((name, rest)) = line.split_once(':') else {
            continue;
        };
        let slot = match name.trim() {
            "MemTotal" => &mut total,
            "MemAvailable" => &mut available,
            _ => continue,
        };
        let value: u64 = rest.split_ascii_whitespace().next()?.parse().ok()?;
        *slot = Some(value);
        if total.is_some() && available.is_some() {
            break;
        }
    }
    let (total, available) = (total?, available?);
    if total == 0 {
        return None;
    }
    let used = total.saturating_sub(available);
    Some(used as f64 * 100.0 / total as f64)
}

/// The one-minute load average, the first field of `/proc/loadavg`.
/// `None` when it is missing, not a number, negative or not finite.
pub fn parse_loadavg(text: &str) -> Option<f64> {
    let load1: f64 = text.split_ascii_whitespace().next()?.parse().ok()?;
    (load1.is_finite() && load1 >= 0.0).then_some(load1)
}

/// Whole seconds since boot, the first field of `/proc/uptime` (seconds with
/// a fractional part, which is dropped). `None` when it is missing or not a
/// non-negative decimal number.
pub fn parse_uptime(text: &str) -> Option<u64> {
    let field = text.split_ascii_whitespace().next()?;
    let (whole, fraction) = field.split_once('.').unwrap_or((field, ""));
    if !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // `parse` alone would accept a leading `+`.
    if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    whole.parse().ok()
}

/// Received and transmitted bytes summed over every interface in
/// `/proc/net/dev` except `lo`. `None` when the two header lines are
/// missing or any interface line is malformed (a partial sum would look
/// like a counter reset).
pub fn parse_net_dev(text: &str) -> Option<NetBytes> {
    let mut lines = text.lines();
    for _ in 0..2 {
        if !lines.next()?.contains('|') {
            return None;
        }
    }
    let mut sum = NetBytes { rx: 0, tx: 0 };
    for line in lines {
        if line.trim().is_empty() {
            continue;
        }
        // The counters may follow the colon without a space ("eth0:123").
        let (name, counters) = line.split_once(':')?;
        let name = name.trim();
        if name.is_empty() {
            return None;
        }
        // Receive: bytes packets errs drop fifo frame compressed multicast,
        // then Transmit: bytes ...
        let mut fields = counters.split_ascii_whitespace();
        let rx: u64 = fields.next()?.parse().ok()?;
        let tx: u64 = fields.nth(7)?.parse().ok()?;
        if name != "lo" {
            sum.rx = sum.rx.checked_add(rx)?;
            sum.tx = sum.tx.checked_add(tx)?;
        }
    }
    Some(sum)
}

/// Percent of a filesystem in use from its `statvfs` block counts, as `df`
/// computes it: used blocks over used plus those available to unprivileged
/// users (blocks reserved for root count as neither). `None` for a
/// filesystem with no blocks (procfs, tmpfs without a size) or inconsistent
/// counts.
pub fn disk_used_percent(blocks: u64, free: u64, available: u64) -> Option<f64> {
    let used = blocks.checked_sub(free)?;
    let usable = used.checked_add(available)?;
    if usable == 0 {
        return None;
    }
    Some(used as f64 * 100.0 / usable as f64)
}

/// Percent in use of the filesystem that holds `path`, via `statvfs`.
/// `None` when it cannot be measured.
pub fn disk_percent(path: &Path) -> Option<f64> {
    let stat = rustix::fs::statvfs(path).ok()?;
    disk_used_percent(stat.f_blocks, stat.f_bfree, stat.f_bavail)
}

/// Reads the system metrics for one status report at a time.
///
/// Keeps the previous CPU counters (CPU use is a rate: the first
/// [`Sampler::sample`] has none) and one reused read buffer. A file that is
/// missing, unreadable or not in the expected format makes its metric `None`
/// and is logged at debug level once, until it can be read again.
#[derive(Debug)]
pub struct Sampler {
    disk_path: PathBuf,
    stat: Source,
    meminfo: Source,
    loadavg: Source,
    uptime: Source,
    net_dev: Source,
    disk_failing: bool,
    previous_cpu: Option<CpuTimes>,
    buf: Vec<u8>,
}

/// Only the aggregate line of `/proc/stat` is needed and it comes first; the
/// rest (per-CPU lines, interrupt counts) can be long on big machines.
const STAT_PREFIX: u64 = 4096;
/// Larger than any procfs file we parse in full: a file that fills it is
/// refused rather than parsed truncated.
const READ_LIMIT: u64 = 1 << 20;
/// A buffer grown past this by one read is given back afterwards.
const KEEP_CAPACITY: usize = 64 * 1024;

impl Sampler {
    /// A sampler for this host's `/proc`, reporting the disk use of the
    /// filesystem that holds `disk_path` (for example the agent's state
    /// directory).
    pub fn new(disk_path: PathBuf) -> Sampler {
        Sampler::with_proc_root(Path::new("/proc"), disk_path)
    }

    fn with_proc_root(proc_root: &Path, disk_path: PathBuf) -> Sampler {
        let source = |metric, file| Source {
            metric,
            path: proc_root.join(file),
            failing: false,
        };
        Sampler {
            disk_path,
            stat: source("cpu", "stat"),
            meminfo: source("memory", "meminfo"),
            loadavg: source("load", "loadavg"),
            uptime: source("uptime", "uptime"),
            net_dev: source("network", "net/dev"),
            disk_failing: false,
            previous_cpu: None,
            buf: Vec::with_capacity(STAT_PREFIX as usize),
        }
    }

    /// Reads the current system metrics. Never fails: what cannot be
    /// measured is `None`. `cpu_percent` is the average since the previous
    /// successful call, so it is `None` on the first.
    pub fn sample(&mut self) -> Metrics {
        let cpu_percent = match read(&mut self.stat, &mut self.buf, Extent::Prefix, parse_stat) {
            Some(current) => {
                let percent = self
                    .previous_cpu
                    .and_then(|previous| cpu_percent(previous, current));
                self.previous_cpu = Some(current);
                percent
            }
            None => None,
        };
        let memory_percent = read(
            &mut self.meminfo,
            &mut self.buf,
            Extent::Whole,
            parse_meminfo,
        );
        let load1 = read(
            &mut self.loadavg,
            &mut self.buf,
            Extent::Whole,
            parse_loadavg,
        );
        let uptime_seconds = read(&mut self.uptime, &mut self.buf, Extent::Whole, parse_uptime);
        let net = read(
            &mut self.net_dev,
            &mut self.buf,
            Extent::Whole,
            parse_net_dev,
        );
        if self.buf.capacity() > KEEP_CAPACITY {
            self.buf = Vec::with_capacity(STAT_PREFIX as usize);
        }
        Metrics {
            cpu_percent,
            memory_percent,
            disk_percent: self.disk(),
            load1,
            uptime_seconds,
            network_rx_bytes: net.map(|net| net.rx),
            network_tx_bytes: net.map(|net| net.tx),
            ..Metrics::default()
        }
    }

    fn disk(&mut self) -> Option<f64> {
        let result = match rustix::fs::statvfs(&self.disk_path) {
            Ok(stat) => disk_used_percent(stat.f_blocks, stat.f_bfree, stat.f_bavail)
                .ok_or(Cow::Borrowed("filesystem reports no usable blocks")),
            Err(error) => Err(Cow::Owned(error.to_string())),
        };
        match result {
            Ok(percent) => {
                self.disk_failing = false;
                Some(percent)
            }
            Err(error) => {
                if !self.disk_failing {
                    self.disk_failing = true;
                    tracing::debug!(
                        metric = "disk",
                        path = %self.disk_path.display(),
                        %error,
                        "system metric unavailable"
                    );
                }
                None
            }
        }
    }
}

/// One procfs file behind one metric, and whether its last read failed (so
/// a persistent failure is logged once, not on every poll).
#[derive(Debug)]
struct Source {
    metric: &'static str,
    path: PathBuf,
    failing: bool,
}

impl Source {
    fn failed(&mut self, error: &dyn Display) {
        if !self.failing {
            self.failing = true;
            tracing::debug!(
                metric = self.metric,
                path = %self.path.display(),
                %error,
                "system metric unavailable"
            );
        }
    }
}

/// How much of a file [`read`] takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Extent {
    /// The whole file, refused if it reaches [`READ_LIMIT`] bytes.
    Whole,
    /// At most [`STAT_PREFIX`] bytes: the parser needs only the first line.
    Prefix,
}

/// Reads `source` into `buf` and parses it.
fn read<T>(
    source: &mut Source,
    buf: &mut Vec<u8>,
    extent: Extent,
    parse: fn(&str) -> Option<T>,
) -> Option<T> {
    let limit = match extent {
        Extent::Whole => READ_LIMIT,
        Extent::Prefix => STAT_PREFIX,
    };
    buf.clear();
    let read = File::open(&source.path).and_then(|file| file.take(limit).read_to_end(buf));
    match read {
        Err(error) => {
            source.failed(&error);
            return None;
        }
        Ok(n) if extent == Extent::Whole && n as u64 >= limit => {
            source.failed(&format_args!("larger than {limit} bytes"));
            return None;
        }
        Ok(_) => {}
    }
    // procfs is ASCII except interface names, which may be any bytes:
    // borrowed (no copy) in the usual case.
    let text = String::from_utf8_lossy(buf);
    match parse(&text) {
        Some(value) => {
            source.failing = false;
            Some(value)
        }
        None => {
            source.failed(&"unexpected format");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Captured from a 2-CPU Linux 6.x host.
    const STAT: &str = "\
cpu  1392949 0 145221 518504 10608 0 1976 724 0 0
cpu0 687523 0 71722 271354 3791 0 128 377 0 0
cpu1 705425 0 73498 247149 6816 0 1847 346 0 0
intr 123456 0 9 0 0 0 0 0 0 0 0
ctxt 98765432
btime 1700000000
processes 12345
procs_running 2
procs_blocked 0
softirq 1234 0 1 2 3 4 5 6 7 8 9
";

    const MEMINFO: &str = "\
MemTotal:       24684084 kB
MemFree:        18766704 kB
MemAvailable:   22763544 kB
Buffers:           14808 kB
Cached:          3812232 kB
SwapCached:            0 kB
";

    const NET_DEV: &str = "\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo: 11552850   87873    0    0    0     0          0         0 11552850   87873    0    0    0     0       0          0
  ifb0:       0       0    0    0    0     0          0         0        0       0    0    0    0     0       0          0
  eth0: 576829977   25528    0    0    0     0          0         0  1666123   14967    0    0    0     0       0          0
   wg0:1000   10    0    0    0     0          0         0      2000      20    0    0    0     0       0          0
";

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn stat_aggregate_line() {
        let times = parse_stat(STAT).unwrap();
        let total = 1392949 + 145221 + 518504 + 10608 + 1976 + 724;
        assert_eq!(
            times,
            CpuTimes {
                busy: total - 518504 - 10608,
                total,
            }
        );
    }

    #[test]
    fn stat_ignores_guest_and_accepts_old_kernels() {
        // guest time is already in user time.
        let with_guest = parse_stat("cpu  10 0 10 80 0 0 0 0 50 50\n").unwrap();
        assert_eq!(
            with_guest,
            CpuTimes {
                busy: 20,
                total: 100
            }
        );
        // Linux 2.4 had four fields.
        let old = parse_stat("cpu 10 0 10 80\n").unwrap();
        assert_eq!(
            old,
            CpuTimes {
                busy: 20,
                total: 100
            }
        );
    }

    #[test]
    fn stat_malformed() {
        for text in [
            "",
            "\n",
            "cpu0 1 2 3 4 5 6 7\n",
            "cpu 1 2 3\n",
            "cpu 1 2 x 4 5 6 7\n",
            "cpu 1 2 3 -4 5 6 7\n",
            "cpu  18446744073709551615 1 0 0\n",
            "intr 1 2 3 4 5\n",
        ] {
            assert_eq!(parse_stat(text), None, "{text:?}");
        }
    }

    #[test]
    fn cpu_percent_from_deltas() {
        let before = CpuTimes {
            busy: 100,
            total: 1000,
        };
        let after = CpuTimes {
            busy: 130,
            total: 1100,
        };
        assert!(close(cpu_percent(before, after).unwrap(), 30.0));
        assert_eq!(cpu_percent(before, before), None);
        assert_eq!(cpu_percent(after, before), None);
        // busy ahead of total (iowait went backwards): clamped.
        let odd = CpuTimes {
            busy: 300,
            total: 1010,
        };
        assert!(close(cpu_percent(before, odd).unwrap(), 100.0));
        // busy behind (counter oddity): zero, not negative.
        let idle = CpuTimes {
            busy: 90,
            total: 1100,
        };
        assert!(close(cpu_percent(before, idle).unwrap(), 0.0));
    }

    #[test]
    fn meminfo_used_percent() {
        let percent = parse_meminfo(MEMINFO).unwrap();
        let expected = (24684084.0 - 22763544.0) * 100.0 / 24684084.0;
        assert!(close(percent, expected), "{percent}");
        // Order does not matter; other lines are ignored.
        let reordered = "MemAvailable: 250 kB\nFoo: x\nMemTotal: 1000 kB\n";
        assert!(close(parse_meminfo(reordered).unwrap(), 75.0));
        // More available than total (racy read): zero, not negative.
        assert!(close(
            parse_meminfo("MemTotal: 100 kB\nMemAvailable: 200 kB\n").unwrap(),
            0.0
        ));
    }

    #[test]
    fn meminfo_malformed() {
        for text in [
            "",
            "MemTotal:       24684084 kB\n",
            "MemAvailable:   22763544 kB\n",
            "MemTotal:\nMemAvailable: 1 kB\n",
            "MemTotal: lots kB\nMemAvailable: 1 kB\n",
            "MemTotal: 0 kB\nMemAvailable: 0 kB\n",
            "MemTotal 100 kB\nMemAvailable 50 kB\n",
        ] {
            assert_eq!(parse_meminfo(text), None, "{text:?}");
        }
    }

    #[test]
    fn loadavg() {
        assert_eq!(parse_loadavg("3.64 2.85 2.31 5/118 1474\n"), Some(3.64));
        assert_eq!(parse_loadavg("0.00 0.00 0.00 1/1 1"), Some(0.0));
        for text in [
            "",
            "  \n",
            "x 1 2 3/4 5",
            "-1.0 0 0 1/1 1",
            "NaN 0 0",
            "inf",
        ] {
            assert_eq!(parse_loadavg(text), None, "{text:?}");
        }
    }

    #[test]
    fn uptime() {
        assert_eq!(parse_uptime("10385.73 5185.04\n"), Some(10385));
        assert_eq!(parse_uptime("0.99 0.50"), Some(0));
        assert_eq!(parse_uptime("42"), Some(42));
        for text in [
            "",
            "\n",
            "-5.00 1.00",
            "+5.00 1",
            ".5 1",
            "1.x 2",
            "abc",
            "1e9 2",
        ] {
            assert_eq!(parse_uptime(text), None, "{text:?}");
        }
    }

    #[test]
    fn net_dev_sums_all_but_loopback() {
        assert_eq!(
            parse_net_dev(NET_DEV),
            Some(NetBytes {
                rx: 576829977 + 1000,
                tx: 1666123 + 2000,
            })
        );
        // Only loopback: a measurement of zero.
        let only_lo = NET_DEV.lines().take(3).collect::<Vec<_>>().join("\n");
        assert_eq!(parse_net_dev(&only_lo), Some(NetBytes { rx: 0, tx: 0 }));
    }

    #[test]
    fn net_dev_malformed() {
        let header = NET_DEV.lines().take(2).collect::<Vec<_>>().join("\n");
        for text in [
            String::new(),
            "eth0: 1 2 3 4 5 6 7 8 9 10\n".to_owned(),
            format!("{header}\n  eth0: 1 2 3 4 5 6 7 8\n"),
            format!("{header}\n  eth0 1 2 3 4 5 6 7 8 9 10\n"),
            format!("{header}\n  eth0: x 2 3 4 5 6 7 8 9 10\n"),
            format!("{header}\n  : 1 2 3 4 5 6 7 8 9 10\n"),
            format!("{header}\n  eth0: 18446744073709551615 0 0 0 0 0 0 0 0 0\n  eth1: 1 0 0 0 0 0 0 0 0 0\n"),
        ] {
            assert_eq!(parse_net_dev(&text), None, "{text:?}");
        }
    }

    #[test]
    fn disk_percent_like_df() {
        // 100 blocks, 40 free of which 30 available to users: 60 / 90.
        let percent = disk_used_percent(100, 40, 30).unwrap();
        assert!(close(percent, 60.0 * 100.0 / 90.0));
        assert!(close(disk_used_percent(100, 100, 100).unwrap(), 0.0));
        assert_eq!(disk_used_percent(0, 0, 0), None);
        assert_eq!(disk_used_percent(10, 20, 5), None);
        let here = disk_percent(Path::new(".")).unwrap();
        assert!((0.0..=100.0).contains(&here), "{here}");
        assert_eq!(disk_percent(Path::new("/nonexistent/gitfleet")), None);
    }

    fn fake_proc() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("net")).unwrap();
        std::fs::write(dir.path().join("stat"), "cpu  100 0 0 900 0 0 0 0 0 0\n").unwrap();
        std::fs::write(dir.path().join("meminfo"), MEMINFO).unwrap();
        std::fs::write(dir.path().join("loadavg"), "0.50 0.40 0.30 1/100 42\n").unwrap();
        std::fs::write(dir.path().join("uptime"), "123.45 67.89\n").unwrap();
        std::fs::write(dir.path().join("net/dev"), NET_DEV).unwrap();
        dir
    }

    #[test]
    fn sampler_reads_and_takes_cpu_deltas() {
        let proc_root = fake_proc();
        let mut sampler = Sampler::with_proc_root(proc_root.path(), proc_root.path().into());
        let first = sampler.sample();
        assert_eq!(first.cpu_percent, None);
        assert!(first.memory_percent.is_some());
        assert!(first.disk_percent.is_some());
        assert_eq!(first.load1, Some(0.5));
        assert_eq!(first.uptime_seconds, Some(123));
        assert_eq!(first.network_rx_bytes, Some(576829977 + 1000));
        assert_eq!(first.network_tx_bytes, Some(1666123 + 2000));
        assert_eq!(first.error_rate, None);
        assert_eq!(first.p99_latency_ms, None);

        // No time passed: no rate.
        assert_eq!(sampler.sample().cpu_percent, None);

        std::fs::write(
            proc_root.path().join("stat"),
            "cpu  125 0 0 975 0 0 0 0 0 0\n",
        )
        .unwrap();
        let second = sampler.sample();
        assert!(close(second.cpu_percent.unwrap(), 25.0));
    }

    #[test]
    fn sampler_missing_and_malformed_files_are_none() {
        let proc_root = fake_proc();
        let mut sampler =
            Sampler::with_proc_root(proc_root.path(), proc_root.path().join("missing"));
        std::fs::remove_file(proc_root.path().join("meminfo")).unwrap();
        std::fs::write(proc_root.path().join("loadavg"), "garbage\n").unwrap();
        let metrics = sampler.sample();
        assert_eq!(metrics.memory_percent, None);
        assert_eq!(metrics.load1, None);
        assert_eq!(metrics.disk_percent, None);
        assert_eq!(metrics.uptime_seconds, Some(123));
        assert!(sampler.meminfo.failing && sampler.loadavg.failing && sampler.disk_failing);
        assert!(!sampler.uptime.failing);

        // Recovers when the file is back.
        std::fs::write(proc_root.path().join("meminfo"), MEMINFO).unwrap();
        assert!(sampler.sample().memory_percent.is_some());
        assert!(!sampler.meminfo.failing);
    }

    #[test]
    fn sampler_refuses_oversized_files_and_reads_stat_prefix() {
        let proc_root = fake_proc();
        let mut huge = String::from("cpu  100 0 0 900 0 0 0 0 0 0\n");
        while huge.len() < READ_LIMIT as usize + 10 {
            huge.push_str("intr 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n");
        }
        std::fs::write(proc_root.path().join("stat"), &huge).unwrap();
        std::fs::write(proc_root.path().join("uptime"), &huge).unwrap();
        let mut sampler = Sampler::with_proc_root(proc_root.path(), proc_root.path().into());
        let _ = sampler.sample();
        assert!(!sampler.stat.failing);
        assert_eq!(
            sampler.previous_cpu,
            Some(CpuTimes {
                busy: 100,
                total: 1000
            })
        );
        assert!(sampler.uptime.failing);
        assert!(sampler.buf.capacity() <= KEEP_CAPACITY);
    }

    #[test]
    fn sampler_on_this_host() {
        let mut sampler = Sampler::new(PathBuf::from("."));
        let metrics = sampler.sample();
        if cfg!(target_os = "linux") {
            assert!(metrics.memory_percent.is_some());
            assert!(metrics.uptime_seconds.is_some());
            assert!(metrics.load1.is_some());
            assert!(metrics.network_rx_bytes.is_some());
        }
        assert!(metrics.disk_percent.is_some());
    }
}
