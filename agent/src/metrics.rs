//! The agent's own `/metrics`, in the Prometheus text format, for a scraper
//! on the node itself: polls and their outcomes, activations, reports, and
//! the last status report's bundles, errors, drift, system metrics and
//! WireGuard peers.
//!
//! [`render`] is pure; [`serve`] answers on a loopback listener. Labels are
//! bounded: outcome names from fixed sets, the node's rollouts, and one
//! digest per rollout at a time.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use gitfleet_io::metrics::{family, label};
use gitfleet_schemas::status::StatusReport;

use crate::core::{Polled, ReportedTo};

/// What the metrics are made of, updated after every poll and report.
#[derive(Debug, Default)]
pub struct AgentMetrics {
    pub polls_unchanged: u64,
    pub polls_applied: u64,
    pub polls_refused: u64,
    pub activations: u64,
    /// Reports written to the store.
    pub reports_written: u64,
    /// Reports a reconciler took over HTTP (no store request).
    pub reports_sent: u64,
    pub reports_failed: u64,
    pub last_poll: Option<DateTime<Utc>>,
    /// The last report sent.
    pub last_report: Option<StatusReport>,
    /// When the channel serial `serial_of_since` arrived: from the local
    /// state at start (kept across restarts), else when it was first
    /// reported.
    pub serial_since: Option<DateTime<Utc>>,
    pub serial_of_since: Option<u64>,
}

impl AgentMetrics {
    /// Metrics of an agent starting from `state`: the manifest it holds
    /// arrived when the state says, not at this start.
    pub fn starting(state: &gitfleet_schemas::agent::LocalState) -> AgentMetrics {
        let mut m = AgentMetrics::default();
        m.holding(state);
        m
    }

    /// The agent's state after a poll: when its manifest arrived, as the
    /// state records it (kept across restarts).
    pub fn holding(&mut self, state: &gitfleet_schemas::agent::LocalState) {
        if let (Some(serial), Some(at)) = (state.serial, state.serial_received) {
            self.serial_of_since = Some(serial);
            self.serial_since = Some(at);
        }
    }

    pub fn polled(&mut self, polled: &Polled, at: DateTime<Utc>) {
        self.last_poll = Some(at);
        match polled {
            Polled::Unchanged => self.polls_unchanged += 1,
            Polled::Applied { activated, .. } => {
                self.polls_applied += 1;
                self.activations += *activated as u64;
            }
            Polled::Refused(_) => self.polls_refused += 1,
            // The agent stops right after.
            Polled::Decommissioned { .. } => self.polls_unchanged += 1,
        }
    }

    pub fn reported(&mut self, result: Result<&(StatusReport, ReportedTo), &String>) {
        match result {
            Ok((report, to)) => {
                match to {
                    ReportedTo::Store => self.reports_written += 1,
                    ReportedTo::Reconciler => self.reports_sent += 1,
                }
                if self.serial_of_since != report.channel_serial || self.serial_since.is_none() {
                    self.serial_since = Some(report.at);
                    self.serial_of_since = report.channel_serial;
                }
                self.last_report = Some(report.clone());
            }
            Err(_) => self.reports_failed += 1,
        }
    }
}

fn seconds(t: DateTime<Utc>) -> f64 {
    t.timestamp_millis() as f64 / 1000.0
}

/// The exposition at `now`.
pub fn render(m: &AgentMetrics, now: DateTime<Utc>) -> String {
    let mut out = String::new();
    family(
        &mut out,
        "gitfleet_agent_polls_total",
        "counter",
        "Channel manifest polls by outcome.",
    );
    for (outcome, n) in [
        ("unchanged", m.polls_unchanged),
        ("applied", m.polls_applied),
        ("refused", m.polls_refused),
    ] {
        let _ = writeln!(
            out,
            "gitfleet_agent_polls_total{{outcome=\"{outcome}\"}} {n}"
        );
    }
    family(
        &mut out,
        "gitfleet_agent_activations_total",
        "counter",
        "Bundles activated.",
    );
    let _ = writeln!(out, "gitfleet_agent_activations_total {}", m.activations);
    family(
        &mut out,
        "gitfleet_agent_reports_total",
        "counter",
        "Signed status reports by result: written to the store, sent to a reconciler, failed.",
    );
    for (result, n) in [
        ("written", m.reports_written),
        ("sent", m.reports_sent),
        ("failed", m.reports_failed),
    ] {
        let _ = writeln!(
            out,
            "gitfleet_agent_reports_total{{result=\"{result}\"}} {n}"
        );
    }
    if let Some(at) = m.last_poll {
        family(
            &mut out,
            "gitfleet_agent_last_poll_age_seconds",
            "gauge",
            "Seconds since the last poll.",
        );
        let age = (now - at).num_milliseconds().max(0) as f64 / 1000.0;
        let _ = writeln!(out, "gitfleet_agent_last_poll_age_seconds {age}");
    }
    let Some(r) = &m.last_report else {
        return out;
    };
    family(
        &mut out,
        "gitfleet_agent_last_report_timestamp_seconds",
        "gauge",
        "When the last status report was written (Unix time).",
    );
    let _ = writeln!(
        out,
        "gitfleet_agent_last_report_timestamp_seconds {}",
        seconds(r.at)
    );
    family(
        &mut out,
        "gitfleet_agent_healthy",
        "gauge",
        "1 when the last report says the node is healthy.",
    );
    let _ = writeln!(out, "gitfleet_agent_healthy {}", u8::from(r.healthy));
    if let Some(serial) = r.channel_serial {
        family(
            &mut out,
            "gitfleet_agent_channel_serial",
            "gauge",
            "The highest channel manifest serial verified.",
        );
        let _ = writeln!(out, "gitfleet_agent_channel_serial {serial}");
    }
    if let Some(expires) = r.channel_expires {
        family(
            &mut out,
            "gitfleet_agent_channel_expires_timestamp_seconds",
            "gauge",
            "When the verified channel manifest expires (Unix time).",
        );
        let _ = writeln!(
            out,
            "gitfleet_agent_channel_expires_timestamp_seconds {}",
            seconds(expires)
        );
        if let Some(since) = m.serial_since {
            family(
                &mut out,
                "gitfleet_agent_channel_received_timestamp_seconds",
                "gauge",
                "When the verified channel manifest (its serial) arrived here, kept across restarts (Unix time).",
            );
            let _ = writeln!(
                out,
                "gitfleet_agent_channel_received_timestamp_seconds {}",
                seconds(since)
            );
        }
    }
    family(
        &mut out,
        "gitfleet_agent_active_bundle",
        "gauge",
        "1 for the bundle each rollout runs here.",
    );
    for (rollout, s) in &r.rollouts {
        if let Some(active) = &s.active {
            let _ = writeln!(
                out,
                "gitfleet_agent_active_bundle{{rollout=\"{}\",digest=\"{}\"}} 1",
                label(rollout),
                label(&active.digest)
            );
        }
    }
    family(
        &mut out,
        "gitfleet_agent_rollout_failed",
        "gauge",
        "1 when the last activation of the rollout failed here.",
    );
    for (rollout, s) in &r.rollouts {
        let _ = writeln!(
            out,
            "gitfleet_agent_rollout_failed{{rollout=\"{}\"}} {}",
            label(rollout),
            u8::from(s.error.is_some())
        );
    }
    family(
        &mut out,
        "gitfleet_agent_drifted_files",
        "gauge",
        "Files under the active bundles that differ from them.",
    );
    let _ = writeln!(out, "gitfleet_agent_drifted_files {}", r.drift.len());
    family(
        &mut out,
        "gitfleet_agent_http_checks_failing",
        "gauge",
        "Health-check URLs that failed in the last report.",
    );
    let failing = r.http_checks.iter().filter(|c| !c.ok).count();
    let _ = writeln!(out, "gitfleet_agent_http_checks_failing {failing}");
    let x = &r.metrics;
    for (name, help, value) in [
        ("error_rate", "Proxy error rate (0..1).", x.error_rate),
        (
            "p99_latency_milliseconds",
            "Proxy p99 latency.",
            x.p99_latency_ms.map(|v| v as f64),
        ),
        ("cpu_percent", "CPU busy.", x.cpu_percent),
        ("memory_percent", "Memory used.", x.memory_percent),
        ("disk_percent", "Disk used.", x.disk_percent),
        ("load1", "One-minute load average.", x.load1),
        (
            "uptime_seconds",
            "System uptime.",
            x.uptime_seconds.map(|v| v as f64),
        ),
        (
            "network_receive_bytes",
            "Bytes received on all interfaces.",
            x.network_rx_bytes.map(|v| v as f64),
        ),
        (
            "network_transmit_bytes",
            "Bytes sent on all interfaces.",
            x.network_tx_bytes.map(|v| v as f64),
        ),
    ] {
        if let Some(v) = value {
            let name = format!("gitfleet_agent_{name}");
            family(&mut out, &name, "gauge", help);
            let _ = writeln!(out, "{name} {v}");
        }
    }
    if let Some(wg) = &r.wireguard {
        let iface = label(&wg.interface);
        family(
            &mut out,
            "gitfleet_agent_wireguard_peers",
            "gauge",
            "WireGuard peers on the mesh interface.",
        );
        let _ = writeln!(
            out,
            "gitfleet_agent_wireguard_peers{{interface=\"{iface}\"}} {}",
            wg.peers.len()
        );
        family(
            &mut out,
            "gitfleet_agent_wireguard_peers_handshaken",
            "gauge",
            "Peers with a handshake in the last 3 minutes.",
        );
        let recent = wg
            .peers
            .iter()
            .filter(|p| {
                p.latest_handshake
                    .is_some_and(|t| (r.at - t).num_seconds() < 180)
            })
            .count();
        let _ = writeln!(
            out,
            "gitfleet_agent_wireguard_peers_handshaken{{interface=\"{iface}\"}} {recent}"
        );
        for (name, help, value) in [
            (
                "gitfleet_agent_wireguard_receive_bytes",
                "Bytes received from all peers.",
                wg.peers.iter().map(|p| p.rx_bytes).sum::<u64>(),
            ),
            (
                "gitfleet_agent_wireguard_transmit_bytes",
                "Bytes sent to all peers.",
                wg.peers.iter().map(|p| p.tx_bytes).sum::<u64>(),
            ),
        ] {
            family(&mut out, name, "gauge", help);
            let _ = writeln!(out, "{name}{{interface=\"{iface}\"}} {value}");
        }
    }
    out
}

/// Why the metrics listener cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("metrics address {0} is not a loopback address: the agent's metrics are for a scraper on this node")]
    NotLoopback(SocketAddr),
    #[error("listening for metrics on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A listener on `addr`, which must be a loopback address.
pub async fn listen(addr: SocketAddr) -> Result<tokio::net::TcpListener, ListenError> {
    if !addr.ip().is_loopback() {
        return Err(ListenError::NotLoopback(addr));
    }
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ListenError::Bind { addr, source })
}

/// Answer `GET /metrics` on `listener` until the task is dropped; every
/// other path is 404.
pub async fn serve(listener: tokio::net::TcpListener, metrics: Arc<Mutex<AgentMetrics>>) {
    use http_body_util::Full;
    use hyper::body::Bytes;
    use hyper::{Method, Response, StatusCode};

    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "accepting a metrics connection");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let metrics = Arc::clone(&metrics);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: hyper::Request<_>| {
                let response = if req.method() == Method::GET && req.uri().path() == "/metrics" {
                    let text = {
                        let m = metrics.lock().unwrap_or_else(|p| p.into_inner());
                        render(&m, Utc::now())
                    };
                    Response::builder()
                        .header("content-type", "text/plain; version=0.0.4; charset=utf-8")
                        .body(Full::new(Bytes::from(text)))
                } else {
                    Response::builder()
                        .status(StatusCode::NOT_FOUND)
                        .body(Full::new(Bytes::from_static(b"only /metrics is here\n")))
                };
                std::future::ready(response)
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await
            {
                tracing::debug!(error = %e, "metrics connection");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use gitfleet_schemas::status::{Metrics, RolloutStatus};
    use gitfleet_schemas::trust::BundleRef;

    use super::*;

    fn report() -> StatusReport {
        StatusReport {
            fleet: "f".into(),
            node: "n1".into(),
            environment: "prod".into(),
            at: DateTime::UNIX_EPOCH + chrono::Duration::seconds(100),
            channel_serial: Some(7),
            channel_expires: None,
            rollouts: BTreeMap::from([(
                "ed\"ge".to_owned(),
                RolloutStatus {
                    active: Some(BundleRef {
                        digest: "sha256:ab".into(),
                        length: 1,
                    }),
                    previous: None,
                    error: Some("refused".into()),
                },
            )]),
            healthy: false,
            metrics: Metrics {
                cpu_percent: Some(12.5),
                ..Metrics::default()
            },
            http_checks: vec![],
            routes: vec![],
            wireguard: None,
            monitored: Vec::new(),
            drift: vec![],
            last_error: None,
            proxy: None,
        }
    }

    #[test]
    fn polls_and_reports_are_counted_by_outcome() {
        let mut m = AgentMetrics::default();
        let at = DateTime::UNIX_EPOCH;
        m.polled(&Polled::Unchanged, at);
        m.polled(
            &Polled::Applied {
                serial: 2,
                activated: 2,
            },
            at,
        );
        m.polled(&Polled::Refused("bad".into()), at);
        m.reported(Err(&"store away".to_owned()));
        let text = render(&m, at + chrono::Duration::seconds(3));
        assert!(text.contains("gitfleet_agent_polls_total{outcome=\"unchanged\"} 1\n"));
        assert!(text.contains("gitfleet_agent_polls_total{outcome=\"applied\"} 1\n"));
        assert!(text.contains("gitfleet_agent_polls_total{outcome=\"refused\"} 1\n"));
        assert!(text.contains("gitfleet_agent_activations_total 2\n"));
        assert!(text.contains("gitfleet_agent_reports_total{result=\"failed\"} 1\n"));
        assert!(text.contains("gitfleet_agent_last_poll_age_seconds 3\n"));
        assert!(!text.contains("gitfleet_agent_healthy"), "no report yet");
    }

    #[test]
    fn a_restarted_agent_dates_its_manifest_from_the_state_not_the_restart() {
        let arrived = DateTime::UNIX_EPOCH + chrono::Duration::seconds(40);
        let state = gitfleet_schemas::agent::LocalState {
            serial: Some(7),
            serial_received: Some(arrived),
            ..Default::default()
        };
        let mut report = report();
        report.channel_expires = Some(DateTime::UNIX_EPOCH + chrono::Duration::hours(1));
        let now = DateTime::UNIX_EPOCH + chrono::Duration::seconds(200);
        let received = |m: &AgentMetrics| {
            let text = render(m, now);
            text.lines()
                .find_map(|l| {
                    l.strip_prefix("gitfleet_agent_channel_received_timestamp_seconds ")
                        .map(str::to_owned)
                })
                .unwrap_or_default()
        };
        // Serial 7 arrived at 40 s; the first report after the restart (at
        // 100 s) does not move it.
        let mut m = AgentMetrics::starting(&state);
        m.reported(Ok(&(report.clone(), ReportedTo::Store)));
        assert_eq!(received(&m), "40");
        // A new serial arrives with the report that first carries it.
        report.channel_serial = Some(8);
        report.at += chrono::Duration::seconds(50);
        m.reported(Ok(&(report.clone(), ReportedTo::Store)));
        assert_eq!(received(&m), "150");
        // Without a recorded arrival, the first report dates it.
        let mut fresh = AgentMetrics::starting(&gitfleet_schemas::agent::LocalState::default());
        fresh.reported(Ok(&(report.clone(), ReportedTo::Store)));
        assert_eq!(received(&fresh), "150");
    }

    #[test]
    fn the_last_report_is_exposed_with_escaped_labels() {
        let mut m = AgentMetrics::default();
        m.reported(Ok(&(report(), ReportedTo::Store)));
        m.reported(Ok(&(report(), ReportedTo::Reconciler)));
        let text = render(&m, DateTime::UNIX_EPOCH);
        assert!(text.contains("gitfleet_agent_reports_total{result=\"written\"} 1\n"));
        assert!(text.contains("gitfleet_agent_reports_total{result=\"sent\"} 1\n"));
        assert!(text.contains("gitfleet_agent_healthy 0\n"), "{text}");
        assert!(text.contains("gitfleet_agent_channel_serial 7\n"), "{text}");
        assert!(
            text.contains(
                "gitfleet_agent_active_bundle{rollout=\"ed\\\"ge\",digest=\"sha256:ab\"} 1\n"
            ),
            "{text}"
        );
        assert!(text.contains("gitfleet_agent_rollout_failed{rollout=\"ed\\\"ge\"} 1\n"));
        assert!(text.contains("gitfleet_agent_cpu_percent 12.5\n"));
        assert!(
            !text.contains("gitfleet_agent_error_rate"),
            "absent metrics are left out"
        );
        assert!(text.contains("gitfleet_agent_last_report_timestamp_seconds 100\n"));
        // Every sample's family is declared once.
        let families: Vec<&str> = text.lines().filter(|l| l.starts_with("# TYPE")).collect();
        let mut unique = families.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(families.len(), unique.len(), "{text}");
    }

    #[tokio::test]
    async fn a_non_loopback_address_is_refused() {
        let addr: SocketAddr = "0.0.0.0:0".parse().unwrap();
        assert!(matches!(
            listen(addr).await,
            Err(ListenError::NotLoopback(_))
        ));
    }
}
