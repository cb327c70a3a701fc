//! Wire protocol v1: the JSON frames clients send, the frames the server sends (in
//! `protocol/server.rs`, re-exported here), and the one function that turns any
//! client text into a frame or a coded error.
//!
//! Parsing never panics and never loses the client's `correlation_id` when one was
//! readable, so even an error can be matched to the request that caused it.

use serde_json::{Map, Value};

use crate::{error_code::ErrorCode, topic::TopicFilter};

/// Largest `batch_size` a subscription may ask for.
pub const MAX_BATCH_SIZE: u32 = 1000;

/// Most topic entries one `subscribe` may expand to when the caller gives no bound
/// of its own ([`ClientFrame::parse`]); the node passes its per-connection limit to
/// [`ClientFrame::parse_bounded`].
pub const MAX_SUBSCRIBE_ENTRIES: usize = 1_000_000;

/// A frame from a client, validated.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientFrame {
    Subscribe(Subscribe),
    Unsubscribe {
        topics: Vec<TopicFilter>,
        correlation_id: Option<Value>,
    },
    Ping {
        correlation_id: Option<Value>,
        ts: Option<Value>,
    },
    BackgroundMode {
        enabled: bool,
        correlation_id: Option<Value>,
    },
    Refresh {
        token: String,
        correlation_id: Option<Value>,
    },
}

/// A `subscribe` request: one entry per topic, plus options shared by all of them.
#[derive(Debug, Clone, PartialEq)]
pub struct Subscribe {
    pub entries: Vec<SubscribeEntry>,
    /// Up to this many envelopes may be sent together as one JSON array frame.
    pub batch_size: Option<u32>,
    /// Envelopes over 1 KiB are sent as gzip binary frames.
    pub compression: bool,
    pub correlation_id: Option<Value>,
}

/// One topic of a `subscribe`, with where to resume it from.
#[derive(Debug, Clone, PartialEq)]
pub struct SubscribeEntry {
    pub filter: TopicFilter,
    /// Deliver every message with `seq >= resume_from_seq` (inclusive).
    pub resume_from_seq: Option<u64>,
    /// The epoch the client last saw; a different current epoch means history was lost.
    pub epoch: Option<String>,
}

/// A client frame that could not be accepted, with the code the error frame carries.
#[derive(Debug, Clone, PartialEq)]
pub struct FrameError {
    pub code: ErrorCode,
    pub message: String,
    pub details: Option<Value>,
    pub correlation_id: Option<Value>,
    /// Topic entries the frame asked for and was refused as a whole (a `subscribe`
    /// over the entry bound); 0 for a frame that is merely malformed. The node counts
    /// them as rate-limit strikes.
    pub refused_entries: u64,
}

impl FrameError {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        FrameError {
            code,
            message: message.into(),
            details: None,
            correlation_id: None,
            refused_entries: 0,
        }
    }

    /// The `error` frame for this failure.
    pub fn to_frame(&self) -> ServerFrame {
        let mut f = ServerFrame::error(self.code, &self.message);
        f.details = self.details.clone();
        f.correlation_id = self.correlation_id.clone();
        f
    }
}

fn invalid(message: impl Into<String>) -> FrameError {
    FrameError::new(ErrorCode::InvalidMessage, message)
}

impl ClientFrame {
    /// Parses one text frame from a client, with the default entry bound.
    pub fn parse(text: &str) -> Result<ClientFrame, FrameError> {
        Self::parse_bounded(text, MAX_SUBSCRIBE_ENTRIES)
    }

    /// Parses one text frame from a client. A `subscribe` whose `topics` ×
    /// `subtopics` expansion would give more than `max_entries` entries is refused
    /// with `TOO_MANY_SUBSCRIPTIONS` before any entry is built: the product is
    /// computed from the two array lengths, so a 48 KB frame asking for 3000 × 3000
    /// topics costs nothing but its JSON.
    pub fn parse_bounded(text: &str, max_entries: usize) -> Result<ClientFrame, FrameError> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| invalid(format!("frame is not valid JSON: {e}")))?;
        let Value::Object(obj) = value else {
            return Err(invalid("frame must be a JSON object"));
        };
        let correlation_id = obj.get("correlation_id").cloned().filter(|v| !v.is_null());
        Self::from_object(&obj, max_entries).map_err(|mut e| {
            e.correlation_id = correlation_id.clone();
            e
        })
    }

    fn from_object(
        obj: &Map<String, Value>,
        max_entries: usize,
    ) -> Result<ClientFrame, FrameError> {
        let correlation_id = match obj.get("correlation_id") {
            None | Some(Value::Null) => None,
            Some(v @ (Value::String(_) | Value::Number(_))) => Some(v.clone()),
            Some(_) => return Err(invalid("correlation_id must be a string or a number")),
        };
        let kind = match obj.get("type") {
            Some(Value::String(s)) => s.as_str(),
            Some(_) => return Err(invalid("field 'type' must be a string")),
            None => return Err(invalid("field 'type' is missing")),
        };
        match kind {
            "subscribe" => Ok(ClientFrame::Subscribe(parse_subscribe(
                obj,
                correlation_id,
                max_entries,
            )?)),
            "unsubscribe" => Ok(ClientFrame::Unsubscribe {
                topics: topic_list(obj)?
                    .into_iter()
                    .map(|(name, _)| parse_filter(&name))
                    .collect::<Result<_, _>>()?,
                correlation_id,
            }),
            "ping" => Ok(ClientFrame::Ping {
                correlation_id,
                ts: obj.get("ts").cloned(),
            }),
            "background_mode" => Ok(ClientFrame::BackgroundMode {
                enabled: match obj.get("enabled") {
                    Some(Value::Bool(b)) => *b,
                    Some(_) => return Err(invalid("field 'enabled' must be a boolean")),
                    None => return Err(invalid("field 'enabled' is missing")),
                },
                correlation_id,
            }),
            "refresh" => Ok(ClientFrame::Refresh {
                token: match obj.get("token") {
                    Some(Value::String(s)) if !s.is_empty() => s.clone(),
                    Some(Value::String(_)) => return Err(invalid("field 'token' is empty")),
                    Some(_) => return Err(invalid("field 'token' must be a string")),
                    None => return Err(invalid("field 'token' is missing")),
                },
                correlation_id,
            }),
            other => Err(FrameError {
                details: Some(serde_json::json!({ "type": other })),
                ..FrameError::new(
                    ErrorCode::UnknownType,
                    format!("unknown message type '{other}'"),
                )
            }),
        }
    }
}

fn parse_filter(name: &str) -> Result<TopicFilter, FrameError> {
    TopicFilter::parse(name).map_err(|e| FrameError {
        details: Some(serde_json::json!({ "topic": name })),
        ..FrameError::new(ErrorCode::InvalidTopic, e.to_string())
    })
}

/// Per-entry options a `topics` array element may carry as an object.
type EntryOptions = Option<Map<String, Value>>;

/// The `topic` / `topics` fields of a frame: names, each with its own options when
/// the array element was an object `{topic, resume_from_seq?, epoch?}`.
fn topic_list(obj: &Map<String, Value>) -> Result<Vec<(String, EntryOptions)>, FrameError> {
    let mut out = Vec::new();
    match obj.get("topic") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => out.push((s.clone(), None)),
        Some(_) => return Err(invalid("field 'topic' must be a string")),
    }
    match obj.get("topics") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            for item in items {
                match item {
                    Value::String(s) => out.push((s.clone(), None)),
                    Value::Object(o) => match o.get("topic") {
                        Some(Value::String(s)) => out.push((s.clone(), Some(o.clone()))),
                        _ => return Err(invalid("each object in 'topics' needs a string 'topic'")),
                    },
                    _ => return Err(invalid("'topics' must hold strings or objects")),
                }
            }
        }
        Some(_) => return Err(invalid("field 'topics' must be an array")),
    }
    if out.is_empty() {
        return Err(invalid("field 'topic' or 'topics' is missing"));
    }
    Ok(out)
}

fn opt_u64(obj: &Map<String, Value>, field: &str) -> Result<Option<u64>, FrameError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| invalid(format!("field '{field}' must be a non-negative integer"))),
    }
}

fn opt_string(obj: &Map<String, Value>, field: &str) -> Result<Option<String>, FrameError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(invalid(format!("field '{field}' must be a string"))),
    }
}

/// How many entries a `subscribe` expands to, from its array lengths alone.
fn requested_entries(obj: &Map<String, Value>) -> u64 {
    let len = |k: &str| match obj.get(k) {
        Some(Value::Array(a)) => a.len() as u64,
        _ => 0,
    };
    let topics = len("topics") + u64::from(matches!(obj.get("topic"), Some(Value::String(_))));
    topics.saturating_mul(len("subtopics").max(1))
}

fn parse_subscribe(
    obj: &Map<String, Value>,
    correlation_id: Option<Value>,
    max_entries: usize,
) -> Result<Subscribe, FrameError> {
    let requested = requested_entries(obj);
    if requested > max_entries as u64 {
        return Err(FrameError {
            details: Some(serde_json::json!({ "requested": requested, "limit": max_entries })),
            refused_entries: requested,
            ..FrameError::new(
                ErrorCode::TooManySubscriptions,
                format!("this subscribe asks for {requested} topics; the connection may hold {max_entries}"),
            )
        });
    }
    let shared_resume = opt_u64(obj, "resume_from_seq")?;
    let shared_epoch = opt_string(obj, "epoch")?;
    let batch_size = match opt_u64(obj, "batch_size")? {
        None => None,
        Some(n) if (1..=u64::from(MAX_BATCH_SIZE)).contains(&n) => Some(n as u32),
        Some(_) => {
            return Err(invalid(format!(
                "field 'batch_size' must be 1 to {MAX_BATCH_SIZE}"
            )))
        }
    };
    let compression = match obj.get("compression") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(invalid("field 'compression' must be a boolean")),
    };
    let subtopics = match obj.get("subtopics") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| invalid("field 'subtopics' must be an array of strings"))?,
        Some(_) => return Err(invalid("field 'subtopics' must be an array of strings")),
    };
    let mut entries: Vec<SubscribeEntry> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (name, opts) in topic_list(obj)? {
        let (resume, epoch) = match &opts {
            Some(o) => (opt_u64(o, "resume_from_seq")?, opt_string(o, "epoch")?),
            None => (shared_resume, shared_epoch.clone()),
        };
        // `subtopics` expands a topic into `topic.sub` for each sub, e.g. one request for
        // many instruments under `prices`.
        let names: Vec<String> = if subtopics.is_empty() {
            vec![name]
        } else {
            subtopics.iter().map(|s| format!("{name}.{s}")).collect()
        };
        for n in names {
            let filter = parse_filter(&n)?;
            if filter.is_wildcard() && resume.is_some() {
                return Err(FrameError {
                    details: Some(serde_json::json!({ "topic": n })),
                    ..FrameError::new(
                        ErrorCode::InvalidTopic,
                        "wildcard subscriptions can't be resumed",
                    )
                });
            }
            // A topic named twice in one frame is subscribed once, as first asked.
            if seen.insert(n) {
                entries.push(SubscribeEntry {
                    filter,
                    resume_from_seq: resume,
                    epoch: epoch.clone(),
                });
            }
        }
    }
    Ok(Subscribe {
        entries,
        batch_size,
        compression,
        correlation_id,
    })
}

/// Whether `text` is one complete, strictly valid JSON value: exactly what
/// `serde_json::Value` accepts, checked without building one.
pub fn is_json(text: &str) -> bool {
    serde_json::from_str::<validate::Valid>(text).is_ok()
}

pub mod meta;
mod server;
mod validate;

pub use server::{encode_publication, FrameType, ServerFrame};

#[cfg(test)]
mod tests;
