//! Who a verified token speaks for, and which topics an identity (or none, with
//! auth off) may read. Pure rules: no token handling here.

use std::time::{Duration, SystemTime};

use sluice_common::{Topic, TopicPattern};

/// Topic families private to one user: `<family>.<user>` and everything below it.
pub const PRIVATE_FAMILIES: &[&str] = &["trading", "portfolio", "risk", "mobile"];

/// Who a verified token speaks for and what it may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub sub: String,
    /// Unix seconds after which the token is no longer valid.
    pub expires_at: u64,
    /// The `topics` claim: when present, the public topics this token may read.
    pub topics: Option<Vec<TopicPattern>>,
    /// `admin: true`: every topic, and the admin HTTP API.
    pub admin: bool,
}

impl Identity {
    /// Whether this identity may subscribe to `topic`.
    pub fn may_read(&self, topic: &Topic) -> bool {
        if self.admin {
            return true;
        }
        let mut segs = topic.segments();
        let family = segs.next().unwrap_or_default();
        if PRIVATE_FAMILIES.contains(&family) {
            // Private topics: the owner only, whatever the `topics` claim says.
            return segs.next() == Some(self.sub.as_str());
        }
        match &self.topics {
            None => true,
            Some(patterns) => patterns.iter().any(|p| p.matches(topic.as_str())),
        }
    }

    /// How long until the token expires (zero if it has), before any leeway.
    pub fn remaining(&self) -> Duration {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        Duration::from_secs(self.expires_at.saturating_sub(now))
    }
}

/// Whether `topic` is in a private family (`trading.{user}`, `portfolio.{user}`,
/// `risk.{user}…`, `mobile.{user}`).
pub fn is_private(topic: &Topic) -> bool {
    topic
        .segments()
        .next()
        .is_some_and(|family| PRIVATE_FAMILIES.contains(&family))
}

/// Whether a session may read `topic`: with a token, as the token allows; with auth
/// off (no identity), every topic but the private families, which only their owner
/// (or an admin) may read — so a gateway run without auth never serves one user's
/// orders to another.
pub fn may_read(identity: Option<&Identity>, topic: &Topic) -> bool {
    match identity {
        Some(id) => id.may_read(topic),
        None => !is_private(topic),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ident(sub: &str, topics: Option<&[&str]>, admin: bool) -> Identity {
        Identity {
            sub: sub.into(),
            expires_at: u64::MAX,
            topics: topics.map(|t| t.iter().map(|p| TopicPattern::parse(p).unwrap()).collect()),
            admin,
        }
    }

    fn t(s: &str) -> Topic {
        Topic::parse(s).unwrap()
    }

    #[test]
    fn private_topics_belong_to_their_user_only() {
        let alice = ident("alice", None, false);
        for own in [
            "trading.alice",
            "portfolio.alice",
            "risk.alice",
            "risk.alice.alerts",
            "mobile.alice",
        ] {
            assert!(alice.may_read(&t(own)), "{own}");
        }
        for other in [
            "trading.bob",
            "portfolio.bob",
            "risk.bob.alerts",
            "mobile.bob",
            "trading",
            "risk.alicex",
        ] {
            assert!(!alice.may_read(&t(other)), "{other}");
        }
        assert!(alice.may_read(&t("prices.IN1")));
        assert!(ident("root", None, true).may_read(&t("trading.bob")));
    }

    #[test]
    fn a_topics_claim_restricts_public_topics_but_not_own_private_ones() {
        let a = ident("alice", Some(&["prices.*", "auctions.>"]), false);
        assert!(a.may_read(&t("prices.IN1")));
        assert!(a.may_read(&t("auctions.x.y")));
        assert!(!a.may_read(&t("market_data.AAPL")));
        assert!(a.may_read(&t("trading.alice")));
        assert!(!a.may_read(&t("trading.bob")));
    }

    #[test]
    fn without_an_identity_every_topic_but_the_private_ones_is_readable() {
        assert!(may_read(None, &t("prices.IN1")));
        assert!(may_read(None, &t("auctions.A1")));
        for private in [
            "trading.alice",
            "portfolio.alice",
            "risk.alice.alerts",
            "mobile.alice",
        ] {
            assert!(is_private(&t(private)), "{private}");
            assert!(!may_read(None, &t(private)), "{private}");
        }
        assert!(!is_private(&t("tradingx.alice")));
        let alice = ident("alice", None, false);
        assert!(may_read(Some(&alice), &t("trading.alice")));
    }
}
