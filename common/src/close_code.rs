//! WebSocket close codes Sluice uses, and what each tells a client to do.

use std::fmt;

/// A close code from the wire protocol. Clients decide from it whether to
/// reconnect and resume (`NodeDraining`, `SlowConsumer`, `Overloaded`) or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseCode {
    /// 1000: the session ended normally (client asked, or idle timeout).
    Normal,
    /// 1008: authentication or authorization failed.
    Policy,
    /// 1009: a client frame was larger than `SLUICE_MAX_MESSAGE_BYTES`.
    TooLarge,
    /// 1011: the node hit an internal error.
    Internal,
    /// 1012: the node is draining; reconnect to another node and resume.
    NodeDraining,
    /// 1013: the node is overloaded; back off and retry.
    Overloaded,
    /// 4008: the client read too slowly and its queue filled; resume to catch up.
    SlowConsumer,
    /// 4029: the client breached rate limits repeatedly.
    RateLimited,
}

impl CloseCode {
    pub const fn code(self) -> u16 {
        match self {
            CloseCode::Normal => 1000,
            CloseCode::Policy => 1008,
            CloseCode::TooLarge => 1009,
            CloseCode::Internal => 1011,
            CloseCode::NodeDraining => 1012,
            CloseCode::Overloaded => 1013,
            CloseCode::SlowConsumer => 4008,
            CloseCode::RateLimited => 4029,
        }
    }

    pub fn from_code(code: u16) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.code() == code)
    }

    /// Whether a client should reconnect (elsewhere) and resume after this close.
    pub const fn should_reconnect(self) -> bool {
        !matches!(
            self,
            CloseCode::Policy | CloseCode::TooLarge | CloseCode::RateLimited
        )
    }

    pub const ALL: [CloseCode; 8] = [
        CloseCode::Normal,
        CloseCode::Policy,
        CloseCode::TooLarge,
        CloseCode::Internal,
        CloseCode::NodeDraining,
        CloseCode::Overloaded,
        CloseCode::SlowConsumer,
        CloseCode::RateLimited,
    ];
}

impl fmt::Display for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_are_distinct() {
        let mut seen = std::collections::HashSet::new();
        for c in CloseCode::ALL {
            assert!(seen.insert(c.code()));
            assert_eq!(CloseCode::from_code(c.code()), Some(c));
        }
        assert_eq!(CloseCode::from_code(1001), None);
        assert_eq!(CloseCode::SlowConsumer.code(), 4008);
        assert!(CloseCode::NodeDraining.should_reconnect());
        assert!(!CloseCode::Policy.should_reconnect());
    }
}
