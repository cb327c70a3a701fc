//! A session: one WebSocket connection, owned by one task.
//!
//! `actor` is the `select!` loop; `delivery` keeps each subscription's position
//! (epoch + last seq) and turns live publications, replays and snapshots into an
//! exactly-once, in-order stream per topic.

mod actor;
#[cfg(test)]
mod actor_tests;
mod context;
mod deadlines;
mod delivery;
mod fast;
mod inbound;
mod join;
mod limits;
mod outbound;
mod position;
mod refresh;
mod registry;
mod subscribe;
mod wildcard;
mod writer;

use sluice_common::CloseCode;

pub use actor::{Session, SessionParams};
pub use context::{Lifecycle, SessionContext};
pub use registry::{SessionId, SessionInfo, SessionRegistry};

/// Why a session ended; [`SessionEnd::close`] is the one place mapping that to a
/// close code and reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEnd {
    /// The client closed or the connection broke: nothing left to send.
    ClientGone,
    /// The node was killed (tests simulating a crash): drop the socket, send nothing.
    Killed,
    /// No frame from the client within the connection timeout.
    IdleTimeout,
    /// The client's outbox filled (or its position could not be repaired).
    SlowConsumer(&'static str),
    /// The node is draining or shutting down.
    Draining,
    /// A client frame exceeded the size limit.
    TooLarge,
    /// Authentication failed or expired.
    Policy(String),
    /// The client kept breaching rate limits.
    RateLimited,
    /// The broker failed in a way the session can't recover from.
    Internal(String),
}

impl SessionEnd {
    /// The close frame to send, if any.
    pub fn close(&self) -> Option<(CloseCode, String)> {
        match self {
            SessionEnd::ClientGone | SessionEnd::Killed => None,
            SessionEnd::IdleTimeout => Some((
                CloseCode::Normal,
                "connection timeout: no frame from client".into(),
            )),
            SessionEnd::SlowConsumer(why) => Some((
                CloseCode::SlowConsumer,
                format!("slow consumer: {why}; resume to catch up"),
            )),
            SessionEnd::Draining => Some((
                CloseCode::NodeDraining,
                "node draining: reconnect and resume".into(),
            )),
            SessionEnd::TooLarge => Some((
                CloseCode::TooLarge,
                "frame exceeds SLUICE_MAX_MESSAGE_BYTES".into(),
            )),
            SessionEnd::Policy(why) => Some((CloseCode::Policy, why.clone())),
            SessionEnd::RateLimited => Some((
                CloseCode::RateLimited,
                "rate limits breached repeatedly".into(),
            )),
            SessionEnd::Internal(why) => Some((CloseCode::Internal, why.clone())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_end_maps_to_its_close_code() {
        let code = |e: SessionEnd| e.close().map(|(c, _)| c.code());
        assert_eq!(code(SessionEnd::ClientGone), None);
        assert_eq!(code(SessionEnd::IdleTimeout), Some(1000));
        assert_eq!(code(SessionEnd::SlowConsumer("x")), Some(4008));
        assert_eq!(code(SessionEnd::Draining), Some(1012));
        assert_eq!(code(SessionEnd::TooLarge), Some(1009));
        assert_eq!(code(SessionEnd::Policy("p".into())), Some(1008));
        assert_eq!(code(SessionEnd::Internal("i".into())), Some(1011));
        assert_eq!(code(SessionEnd::RateLimited), Some(4029));
    }
}
