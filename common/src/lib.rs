//! Sluice's shared vocabulary: wire protocol v1, topic rules, close and error codes,
//! stream positions and the Redis key layout. Free of any async runtime so every
//! program (node, engines, tests, load generator) can depend on it.

pub mod close_code;
pub mod error_code;
pub mod keys;
pub mod lock;
pub mod position;
pub mod protocol;
pub mod redact;
pub mod redis_info;
pub mod redis_url;
pub mod rng;
pub mod time_fmt;
pub mod topic;

#[cfg(feature = "publisher")]
pub mod function_library;
#[cfg(feature = "publisher")]
pub mod publisher;
#[cfg(feature = "publisher")]
pub mod redis_client;
#[cfg(feature = "publisher")]
pub mod replica_wait;

#[cfg(feature = "client")]
pub mod client;

pub use close_code::CloseCode;
pub use error_code::ErrorCode;
pub use position::StreamPosition;
pub use topic::{Topic, TopicError, TopicFilter, TopicPattern};

/// Version of the wire protocol announced in the `connected` frame.
pub const PROTOCOL_VERSION: u32 = 1;
