//! Every metric the node exports, named in one place.
//!
//! Each node owns its own Prometheus recorder instead of installing a process-global
//! one, so several nodes in one process (the integration tests) keep separate counts.
//! Handles are registered once; updating one is an atomic add on the hot path.
//! Labels come from fixed sets only (error codes, close codes), never from a topic
//! or a user: a label per topic would grow the scrape without bound.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use metrics::{Counter, Gauge, Histogram, Key, Label, Metadata, Recorder, Unit};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
use sluice_common::ErrorCode;

mod fixed;

pub use fixed::FixedHistogram;

pub const CONNECTIONS_ACTIVE: &str = "sluice_connections_active";
pub const CONNECTIONS_TOTAL: &str = "sluice_connections_total";
pub const MESSAGES_SENT: &str = "sluice_messages_sent_total";
pub const MESSAGES_RECEIVED: &str = "sluice_messages_received_total";
pub const MESSAGES_DROPPED: &str = "sluice_messages_dropped_total";
pub const SLOW_CONSUMER_DISCONNECTS: &str = "sluice_slow_consumer_disconnects_total";
pub const RATE_LIMITED: &str = "sluice_rate_limited_total";
pub const AUTH_FAILURES: &str = "sluice_auth_failures_total";
pub const DELIVERY_LATENCY: &str = "sluice_delivery_latency_seconds";
pub const ALERT_STAGE: &str = "sluice_alert_stage_seconds";
pub const DELTA_STAGE: &str = "sluice_delta_stage_seconds";
pub const PUBLISHED: &str = "sluice_published_total";
pub const REDIS_CONNECTED: &str = "sluice_redis_connected";
pub const HEARTBEATS_SENT: &str = "sluice_heartbeats_sent_total";
pub const SUBSCRIBES: &str = "sluice_subscribes_total";
pub const UNSUBSCRIBES: &str = "sluice_unsubscribes_total";
pub const WILDCARD_TOPICS_SKIPPED: &str = "sluice_wildcard_topics_skipped_total";
pub const CONNECTION_DURATION: &str = "sluice_connection_duration_seconds";
pub const ERRORS: &str = "sluice_errors_total";
pub const DISCONNECTS: &str = "sluice_disconnects_total";
pub const MAILBOX_DEPTH: &str = "sluice_mailbox_depth";
pub const OUTBOUND_BYTES: &str = "sluice_outbound_message_bytes";
pub const CONNECTIONS_MAX: &str = "sluice_connections_max";
pub const READY: &str = "sluice_ready";
pub const PROCESS_RSS: &str = "sluice_process_resident_memory_bytes";
pub const PROCESS_FDS: &str = "sluice_process_open_fds";

/// Every error code a session can send, in the order of [`error_index`].
const ERROR_CODES: [ErrorCode; 11] = [
    ErrorCode::AuthRequired,
    ErrorCode::AuthInvalid,
    ErrorCode::TokenExpired,
    ErrorCode::Forbidden,
    ErrorCode::InvalidMessage,
    ErrorCode::UnknownType,
    ErrorCode::InvalidTopic,
    ErrorCode::MessageTooLarge,
    ErrorCode::TooManySubscriptions,
    ErrorCode::RateLimitExceeded,
    ErrorCode::InternalError,
];

/// The position of `code` in [`ERROR_CODES`]; exhaustive, so a new code cannot be
/// forgotten here.
const fn error_index(code: ErrorCode) -> usize {
    match code {
        ErrorCode::AuthRequired => 0,
        ErrorCode::AuthInvalid => 1,
        ErrorCode::TokenExpired => 2,
        ErrorCode::Forbidden => 3,
        ErrorCode::InvalidMessage => 4,
        ErrorCode::UnknownType => 5,
        ErrorCode::InvalidTopic => 6,
        ErrorCode::MessageTooLarge => 7,
        ErrorCode::TooManySubscriptions => 8,
        ErrorCode::RateLimitExceeded => 9,
        ErrorCode::InternalError => 10,
    }
}

/// The `code` label of a session's end: the close codes of SPEC §3, `none` when no
/// close frame was sent (the client left or the connection broke), `other` for a
/// code outside the set (none today).
const CLOSE_LABELS: [&str; 10] = [
    "1000", "1008", "1009", "1011", "1012", "1013", "4008", "4029", "none", "other",
];

fn close_index(code: Option<u16>) -> usize {
    match code {
        Some(1000) => 0,
        Some(1008) => 1,
        Some(1009) => 2,
        Some(1011) => 3,
        Some(1012) => 4,
        Some(1013) => 5,
        Some(4008) => 6,
        Some(4029) => 7,
        None => 8,
        Some(_) => 9,
    }
}

/// Delivery latency buckets, seconds: sub-millisecond up to seconds.
/// The node's own stage, seconds: fine below 10 ms, where alerts and deltas of a
/// healthy node part.
const STAGE_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.000_75, 0.001, 0.001_5, 0.002, 0.003, 0.004, 0.005,
    0.007_5, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25, 1.0,
];

const LATENCY_BUCKETS: &[f64] = &[
    0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Connection lifetimes, seconds: from a reconnecting client's few seconds to a
/// trading day.
const DURATION_BUCKETS: &[f64] = &[
    1.0,
    5.0,
    15.0,
    60.0,
    300.0,
    900.0,
    3600.0,
    4.0 * 3600.0,
    12.0 * 3600.0,
    86400.0,
];
/// Publications waiting in a session's mailbox when it starts a burst. Powers of 4
/// up to past the default `SLUICE_QUEUE_SIZE` (1024): a depth near the queue size
/// is a session about to be closed as slow.
const DEPTH_BUCKETS: &[f64] = &[0.0, 1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0];
/// Frame sizes written to clients, bytes: heartbeats (~40) up to the largest batch.
const BYTES_BUCKETS: &[f64] = &[
    64.0,
    128.0,
    256.0,
    512.0,
    1024.0,
    4096.0,
    16384.0,
    65536.0,
    262_144.0,
    1_048_576.0,
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
    pub delivery_latency: FixedHistogram,
    /// From a live alert reaching the node to its frame written to the socket.
    pub alert_stage: FixedHistogram,
    /// The same for live deltas, one in 8 (by seq).
    pub delta_stage: FixedHistogram,
    pub published: Counter,
    pub redis_connected: Gauge,
    pub heartbeats_sent: Counter,
    pub subscribes: Counter,
    pub unsubscribes: Counter,
    /// Announced topics a wildcard matched but the node could not follow
    /// (`SLUICE_MAX_TOPICS` reached).
    pub wildcard_topics_skipped: Counter,
    pub connection_duration: Histogram,
    /// Error frames sent to clients, one counter per code of [`ERROR_CODES`].
    errors: Vec<Counter>,
    /// Ended sessions, one counter per label of [`CLOSE_LABELS`].
    disconnects: Vec<Counter>,
    pub mailbox_depth: FixedHistogram,
    pub outbound_bytes: FixedHistogram,
    connections_max: Gauge,
    ready: Gauge,
    process_rss: Gauge,
    process_fds: Gauge,
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
            .set_buckets_for_metric(Matcher::Full(CONNECTION_DURATION.into()), DURATION_BUCKETS)
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
        let histogram = |name: &'static str, unit: Option<Unit>, help: &'static str| {
            recorder.describe_histogram(name.into(), unit, help.into());
            recorder.register_histogram(&Key::from_static_name(name), &meta)
        };
        // Every label value is registered up front, so a scrape shows each at 0
        // before it first happens (rate() and alerts need the series to exist).
        let labelled = |name: &'static str, help: &'static str, values: &[&'static str]| {
            recorder.describe_counter(name.into(), None, help.into());
            values
                .iter()
                .map(|v| {
                    let key = Key::from_parts(name, vec![Label::new("code", *v)]);
                    recorder.register_counter(&key, &meta)
                })
                .collect::<Vec<_>>()
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
            heartbeats_sent: counter(HEARTBEATS_SENT, "heartbeat frames sent to clients"),
            subscribes: counter(SUBSCRIBES, "subscriptions started by clients"),
            unsubscribes: counter(UNSUBSCRIBES, "subscriptions ended by a client unsubscribe"),
            wildcard_topics_skipped: counter(
                WILDCARD_TOPICS_SKIPPED,
                "new topics a wildcard matched that the node could not follow (topic limit)",
            ),
            connection_duration: histogram(
                CONNECTION_DURATION,
                Some(Unit::Seconds),
                "how long WebSocket sessions lasted",
            ),
            errors: labelled(
                ERRORS,
                "error frames sent to clients, by code",
                &ERROR_CODES.map(ErrorCode::as_str),
            ),
            disconnects: labelled(
                DISCONNECTS,
                "sessions ended, by close code (none: the client left)",
                &CLOSE_LABELS,
            ),
            mailbox_depth: FixedHistogram::new(
                MAILBOX_DEPTH,
                "publications waiting in a session's mailbox when it starts a burst",
                DEPTH_BUCKETS,
            ),
            outbound_bytes: FixedHistogram::new(
                OUTBOUND_BYTES,
                "size of each data frame written to a client",
                BYTES_BUCKETS,
            ),
            connections_max: gauge(CONNECTIONS_MAX, "SLUICE_MAX_CONNECTIONS"),
            ready: gauge(READY, "1 while /ready answers 200"),
            process_rss: gauge(PROCESS_RSS, "resident memory of the node's process"),
            process_fds: gauge(PROCESS_FDS, "open file descriptors of the node's process"),
            delivery_latency: FixedHistogram::new(
                DELIVERY_LATENCY,
                "time from publish to socket write",
                LATENCY_BUCKETS,
            ),
            alert_stage: FixedHistogram::new(
                ALERT_STAGE,
                "time from a live alert reaching the node to its frame written to the socket",
                STAGE_BUCKETS,
            ),
            delta_stage: FixedHistogram::new(
                DELTA_STAGE,
                "time from a live delta reaching the node to its frame written to the socket (one in 8 by seq)",
                STAGE_BUCKETS,
            ),
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

    pub fn heartbeat_sent(&self) {
        self.heartbeats_sent.increment(1);
    }

    /// An `error` frame went to a client (`code` is the frame's; `None`: not an error).
    pub fn error_sent(&self, code: Option<ErrorCode>) {
        if let Some(code) = code {
            self.errors[error_index(code)].increment(1);
        }
    }

    /// A session ended with close `code` (`None`: no close frame) after `secs`.
    pub fn session_ended(&self, code: Option<u16>, secs: f64) {
        self.disconnects[close_index(code)].increment(1);
        self.connection_duration.record(secs);
    }

    /// A frame is about to be written: data frames count their size.
    /// What a session wrote since its last flush, accounted once: `frames` of any
    /// kind, of which `data` text or binary frames of `bytes` bytes in all. The
    /// size histogram gets the data frames at their mean size (one sample per batch
    /// rather than one per frame, which the fan-out profile showed costly).
    pub fn written(&self, frames: u64, data: u64, bytes: u64) {
        if frames == 0 {
            return;
        }
        self.frames_sent(frames);
        if data > 0 {
            self.outbound_bytes
                .record_many(bytes as f64 / data as f64, data);
        }
    }

    /// How many publications wait in a session's mailbox.
    pub fn mailbox_depth(&self, depth: usize) {
        self.mailbox_depth.record(depth as f64);
    }

    /// Sets the gauges read at scrape time: the connection cap, readiness, and the
    /// process's memory and descriptors from `/proc` (left as they were where there
    /// is no `/proc`).
    pub fn sample(&self, max_connections: usize, ready: bool) {
        self.connections_max.set(max_connections as f64);
        self.ready.set(if ready { 1.0 } else { 0.0 });
        if let Some(rss) = process_rss_bytes() {
            self.process_rss.set(rss as f64);
        }
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            self.process_fds.set(dir.count() as f64);
        }
    }

    /// Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut text = self.handle.render();
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        for h in [
            &self.delivery_latency,
            &self.alert_stage,
            &self.delta_stage,
            &self.mailbox_depth,
            &self.outbound_bytes,
        ] {
            h.render(&mut text);
        }
        text
    }

    /// Drains histogram buffers; called periodically by the node.
    pub fn upkeep(&self) {
        self.handle.run_upkeep();
        let _ = &self.recorder;
    }
}

/// `VmRSS` of this process, from `/proc/self/status` (kB there).
fn process_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
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
    fn labelled_metrics_use_fixed_sets_and_count_each_code() {
        let m = Metrics::new();
        m.error_sent(Some(ErrorCode::InvalidTopic));
        m.error_sent(Some(ErrorCode::InvalidTopic));
        m.error_sent(None);
        m.session_ended(Some(4008), 2.0);
        m.session_ended(None, 0.5);
        m.session_ended(Some(4999), 0.5);
        m.written(2, 1, 100);
        m.mailbox_depth(3);
        m.heartbeat_sent();
        m.sample(77, true);
        let text = m.render();
        for line in [
            "sluice_errors_total{code=\"INVALID_TOPIC\"} 2",
            "sluice_errors_total{code=\"FORBIDDEN\"} 0",
            "sluice_disconnects_total{code=\"4008\"} 1",
            "sluice_disconnects_total{code=\"none\"} 1",
            "sluice_disconnects_total{code=\"other\"} 1",
            "sluice_disconnects_total{code=\"1012\"} 0",
            "sluice_connection_duration_seconds_bucket{le=\"1\"} 2",
            "sluice_connection_duration_seconds_count 3",
            "sluice_outbound_message_bytes_bucket{le=\"128\"} 1",
            "sluice_outbound_message_bytes_count 1",
            "sluice_mailbox_depth_bucket{le=\"4\"} 1",
            "sluice_heartbeats_sent_total 1",
            "sluice_connections_max 77",
            "sluice_ready 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from\n{text}"
            );
        }
        let rss = text
            .lines()
            .find_map(|l| l.strip_prefix("sluice_process_resident_memory_bytes "))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap();
        assert!(rss > 1_000_000.0, "RSS {rss}");
        let fds = text
            .lines()
            .find_map(|l| l.strip_prefix("sluice_process_open_fds "))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap();
        assert!(fds >= 3.0, "fds {fds}");
    }

    #[test]
    fn two_nodes_keep_separate_counts() {
        let (a, b) = (Metrics::new(), Metrics::new());
        a.frames_sent(5);
        assert!(b.render().contains("sluice_messages_sent_total 0"));
    }
}
