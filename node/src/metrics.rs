//! Every metric the node exports, named in one place.
//!
//! Each node owns its own Prometheus recorder instead of installing a process-global
//! one, so several nodes in one process (the integration tests) keep separate counts.
//! Handles are registered once; updating one is an atomic add on the hot path.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use metrics::{Counter, Gauge, Histogram, Key, Metadata, Recorder, Unit};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

pub const CONNECTIONS_ACTIVE: &str = "sluice_connections_active";
pub const CONNECTIONS_TOTAL: &str = "sluice_connections_total";
pub const MESSAGES_SENT: &str = "sluice_messages_sent_total";
pub const MESSAGES_RECEIVED: &str = "sluice_messages_received_total";
pub const MESSAGES_DROPPED: &str = "sluice_messages_dropped_total";
pub const SLOW_CONSUMER_DISCONNECTS: &str = "sluice_slow_consumer_disconnects_total";
pub const RATE_LIMITED: &str = "sluice_rate_limited_total";
pub const AUTH_FAILURES: &str = "sluice_auth_failures_total";
pub const DELIVERY_LATENCY: &str = "sluice_delivery_latency_seconds";
pub const PUBLISHED: &str = "sluice_published_total";
pub const REDIS_CONNECTED: &str = "sluice_redis_connected";

/// Delivery latency buckets, seconds: sub-millisecond up to seconds.
const LATENCY_BUCKETS: &[f64] = &[
    0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// The node's metrics, plus the few plain counters `/health` reports.
pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    pub connections_active: Gauge,
    pub connections_total: Counter,
    pub messages_sent: Counter,
    pub messages_received: Counter,
    pub messages_dropped: Counter,
    pub slow_consumer_disconnects: Counter,
    pub rate_limited: Counter,
    pub auth_failures: Counter,
    pub delivery_latency: Histogram,
    pub published: Counter,
    pub redis_connected: Gauge,
    /// Plain copies of the counters `/health` shows (Prometheus handles can't be read back).
    pub active: AtomicI64,
    pub handled: AtomicU64,
    pub sent: AtomicU64,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(DELIVERY_LATENCY.into()), LATENCY_BUCKETS)
            .map(|b| b.build_recorder())
            .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
        let handle = recorder.handle();
        let meta = Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));
        let counter = |name: &'static str, help: &'static str| {
            recorder.describe_counter(name.into(), None, help.into());
            recorder.register_counter(&Key::from_static_name(name), &meta)
        };
        let gauge = |name: &'static str, help: &'static str| {
            recorder.describe_gauge(name.into(), None, help.into());
            recorder.register_gauge(&Key::from_static_name(name), &meta)
        };
        Metrics {
            connections_active: gauge(CONNECTIONS_ACTIVE, "WebSocket sessions open now"),
            connections_total: counter(
                CONNECTIONS_TOTAL,
                "WebSocket sessions accepted since start",
            ),
            messages_sent: counter(MESSAGES_SENT, "frames written to clients"),
            messages_received: counter(MESSAGES_RECEIVED, "frames received from clients"),
            messages_dropped: counter(
                MESSAGES_DROPPED,
                "publications not queued for a session (queue full or closed)",
            ),
            slow_consumer_disconnects: counter(
                SLOW_CONSUMER_DISCONNECTS,
                "sessions closed with 4008",
            ),
            rate_limited: counter(RATE_LIMITED, "client requests refused by a rate limit"),
            auth_failures: counter(AUTH_FAILURES, "refused tokens"),
            published: counter(PUBLISHED, "messages published through this node"),
            redis_connected: gauge(REDIS_CONNECTED, "1 while the node reaches Redis"),
            delivery_latency: {
                recorder.describe_histogram(
                    DELIVERY_LATENCY.into(),
                    Some(Unit::Seconds),
                    "time from publish to socket write".into(),
                );
                recorder.register_histogram(&Key::from_static_name(DELIVERY_LATENCY), &meta)
            },
            active: AtomicI64::new(0),
            handled: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            recorder,
            handle,
        }
    }

    pub fn session_opened(&self) {
        self.active.fetch_add(1, Ordering::Relaxed);
        self.handled.fetch_add(1, Ordering::Relaxed);
        self.connections_active.increment(1.0);
        self.connections_total.increment(1);
    }

    pub fn session_closed(&self) {
        self.active.fetch_sub(1, Ordering::Relaxed);
        self.connections_active.decrement(1.0);
    }

    pub fn frames_sent(&self, n: u64) {
        self.sent.fetch_add(n, Ordering::Relaxed);
        self.messages_sent.increment(n);
    }

    /// Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        self.handle.render()
    }

    /// Drains histogram buffers; called periodically by the node.
    pub fn upkeep(&self) {
        self.handle.run_upkeep();
        let _ = &self.recorder;
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_contract_metric_and_real_histogram_buckets() {
        let m = Metrics::new();
        m.session_opened();
        m.frames_sent(3);
        m.delivery_latency.record(0.002);
        let text = m.render();
        for name in [
            CONNECTIONS_ACTIVE,
            CONNECTIONS_TOTAL,
            MESSAGES_SENT,
            MESSAGES_RECEIVED,
            MESSAGES_DROPPED,
            SLOW_CONSUMER_DISCONNECTS,
            RATE_LIMITED,
            AUTH_FAILURES,
        ] {
            assert!(text.contains(name), "{name} missing from\n{text}");
        }
        assert!(
            text.contains("sluice_delivery_latency_seconds_bucket{le=\"0.0025\"} 1"),
            "{text}"
        );
        assert!(text.contains("sluice_messages_sent_total 3"), "{text}");
        assert_eq!(m.sent.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn two_nodes_keep_separate_counts() {
        let (a, b) = (Metrics::new(), Metrics::new());
        a.frames_sent(5);
        assert!(b.render().contains("sluice_messages_sent_total 0"));
    }
}
