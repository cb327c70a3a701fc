//! The result of a run: one JSON object, printed as the last line of stdout (the
//! contract the team's tools parse), and a progress line on stderr while it runs.

use serde::Serialize;

use crate::latency::Percentiles;

/// Everything a scenario reports. Scenario-specific figures go in `extra`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub scenario: String,
    pub system: String,
    pub clients: u64,
    pub topics: u64,
    /// Publishes per second asked of the publisher.
    pub offered_rate: f64,
    pub duration_s: f64,
    pub payload_bytes: u64,
    pub published: u64,
    pub publish_errors: u64,
    /// Deliveries owed: per topic, subscribers × successful publishes.
    pub expected: u64,
    /// Stamped messages received (duplicates included).
    pub delivered: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
    /// Messages of another topic than the connection subscribed to.
    pub misrouted: u64,
    /// Distinct deliveries inside the publishing window, per second of it.
    pub deliveries_per_sec: f64,
    pub latency_ms: Percentiles,
    pub connect_errors: u64,
    pub disconnects: u64,
    pub server_errors: u64,
    /// CPU used during the publishing window, in % of one core.
    pub cpu_percent: Cpu,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Cpu {
    /// The system under test (the processes named with --server-pid and children).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis: Option<f64>,
    pub loadtest: f64,
}

impl Report {
    /// One line of JSON.
    pub fn to_json_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!(r#"{{"error":"{e}"}}"#))
    }

    /// A few lines for people.
    pub fn human(&self) -> String {
        let l = &self.latency_ms;
        format!(
            "{} on {}: {} clients, {} topics, {:.0} msg/s offered for {:.1}s\n  \
             published {} ({} errors), delivered {} of {} expected: lost {}, duplicated {}, out of order {}\n  \
             {:.0} deliveries/s; latency ms p50 {:.3} p99 {:.3} p99.9 {:.3} max {:.3}\n  \
             connect errors {}, disconnects {}, server errors {}; CPU % server {:?} redis {:?} loadtest {:.0}",
            self.scenario,
            self.system,
            self.clients,
            self.topics,
            self.offered_rate,
            self.duration_s,
            self.published,
            self.publish_errors,
            self.delivered,
            self.expected,
            self.lost,
            self.duplicated,
            self.out_of_order,
            self.deliveries_per_sec,
            l.p50,
            l.p99,
            l.p999,
            l.max,
            self.connect_errors,
            self.disconnects,
            self.server_errors,
            self.cpu_percent.server.map(|c| c.round()),
            self.cpu_percent.redis.map(|c| c.round()),
            self.cpu_percent.loadtest,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_line_has_the_contract_fields() {
        let mut r = Report {
            scenario: "fanout".into(),
            clients: 10,
            offered_rate: 100.0,
            delivered: 5,
            ..Default::default()
        };
        r.extra.insert("max_rate".into(), 7.into());
        let line = r.to_json_line();
        assert!(!line.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).expect("JSON");
        for k in [
            "scenario",
            "clients",
            "offered_rate",
            "delivered",
            "lost",
            "duplicated",
            "deliveries_per_sec",
            "connect_errors",
        ] {
            assert!(v.get(k).is_some(), "{k} missing from {line}");
        }
        for k in ["p50", "p99", "p999", "max"] {
            assert!(v["latency_ms"].get(k).is_some(), "latency_ms.{k} missing");
        }
        assert_eq!(v["max_rate"], 7, "extra fields are flattened in");
        assert!(v.get("first_error").is_none());
    }
}
