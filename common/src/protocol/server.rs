//! The frames the server sends: [`ServerFrame`] for every kind, and
//! [`encode_publication`], which writes a publication envelope around payload and
//! meta text without parsing them.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{error_code::ErrorCode, time_fmt};

/// The `type` of a server frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FrameType {
    Connected,
    Snapshot,
    Delta,
    Alert,
    Ack,
    Error,
    Pong,
    Heartbeat,
}

impl FrameType {
    pub const fn as_str(self) -> &'static str {
        match self {
            FrameType::Connected => "connected",
            FrameType::Snapshot => "snapshot",
            FrameType::Delta => "delta",
            FrameType::Alert => "alert",
            FrameType::Ack => "ack",
            FrameType::Error => "error",
            FrameType::Pong => "pong",
            FrameType::Heartbeat => "heartbeat",
        }
    }
}

/// Any frame the server sends. Fields that do not apply stay `None` and are left out
/// of the JSON. Clients (tests, the reconnecting client) deserialize into it too.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerFrame {
    #[serde(rename = "type")]
    pub kind: FrameType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ts: Option<String>,
    /// `Some(Value::Null)` is a payload of JSON `null`, which is not the same as none.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub payload: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<ErrorCode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<Value>,
}

impl ServerFrame {
    /// A frame of `kind` stamped with the current time and nothing else.
    pub fn new(kind: FrameType) -> Self {
        ServerFrame {
            kind,
            topic: None,
            seq: None,
            epoch: None,
            ts: Some(time_fmt::now()),
            payload: None,
            meta: None,
            correlation_id: None,
            code: None,
            error: None,
            details: None,
        }
    }

    pub fn error(code: ErrorCode, message: &str) -> Self {
        ServerFrame {
            code: Some(code),
            error: Some(message.to_owned()),
            ..Self::new(FrameType::Error)
        }
    }

    pub fn with_payload(mut self, payload: Value) -> Self {
        self.payload = Some(payload);
        self
    }

    pub fn with_topic(mut self, topic: &str) -> Self {
        self.topic = Some(topic.to_owned());
        self
    }

    pub fn with_correlation_id(mut self, id: Option<Value>) -> Self {
        self.correlation_id = id;
        self
    }

    pub fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }

    pub fn to_json(&self) -> String {
        // A struct of strings, numbers and JSON values always serializes.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Deserializes a field that is present (even as `null`) into `Some`.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// Encodes a publication envelope (`delta`, `alert` or `snapshot`) around a payload
/// and a meta object that are already JSON text, without parsing them: the payload
/// bytes an engine stored go to every socket as they are, serialized once per
/// message, not once per client. `meta_json` is the whole `meta` object (the node's
/// `node` merged with the engine's members: [`super::meta::merge_meta`]).
pub fn encode_publication(
    kind: FrameType,
    topic: &str,
    seq: u64,
    epoch: &str,
    ts_ms: i64,
    payload_json: &str,
    meta_json: &str,
) -> String {
    let mut out = String::with_capacity(
        104 + topic.len() + epoch.len() + payload_json.len() + meta_json.len(),
    );
    out.push_str("{\"type\":\"");
    out.push_str(kind.as_str());
    out.push_str("\",\"topic\":");
    push_json_str(&mut out, topic);
    out.push_str(",\"seq\":");
    out.push_str(&seq.to_string());
    out.push_str(",\"epoch\":");
    push_json_str(&mut out, epoch);
    out.push_str(",\"ts\":\"");
    out.push_str(&time_fmt::format_ms(ts_ms));
    out.push_str("\",\"payload\":");
    out.push_str(payload_json);
    out.push_str(",\"meta\":");
    out.push_str(meta_json);
    out.push('}');
    out
}

fn push_json_str(out: &mut String, s: &str) {
    // Topics and epochs are plain ASCII by construction: written as they are unless
    // a byte needs escaping, which serde_json then does.
    if s.bytes()
        .all(|b| b >= 0x20 && b != b'"' && b != b'\\' && b < 0x7f)
    {
        out.push('"');
        out.push_str(s);
        out.push('"');
    } else {
        out.push_str(&Value::String(s.to_owned()).to_string());
    }
}
