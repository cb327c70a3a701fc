//! Who a verified token speaks for, and which topics an identity (or none, with
//! auth off) may read. Pure rules: no token handling here.

use std::time::{Duration, SystemTime};

use sluice_common::{Topic, TopicFilter, TopicPattern};

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

    /// Whether this identity may subscribe to `filter`: for a wildcard, only if it
    /// may read every topic the filter can match. A private family's wildcard needs
    /// the owner fixed in the prefix (`risk.bob.>` is bob's; `risk.*` spans every
    /// user and needs an admin). A `topics` claim allows a public wildcard when one
    /// of its patterns covers the whole filter ([`TopicPattern::covers`]).
    pub fn may_read_filter(&self, filter: &TopicFilter) -> bool {
        if self.admin {
            return true;
        }
        let base = filter.base();
        if !filter.is_wildcard() {
            return self.may_read(base);
        }
        let mut segs = base.segments();
        let family = segs.next().unwrap_or_default();
        if PRIVATE_FAMILIES.contains(&family) {
            return segs.next() == Some(self.sub.as_str());
        }
        match &self.topics {
            None => true,
            Some(patterns) => patterns.iter().any(|p| p.covers(filter)),
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

/// [`may_read`] for a subscription filter: a wildcard is allowed only if every
/// topic it can match is. With no identity, a wildcard is refused when its prefix
/// lies in a private family (its topics belong to users) and allowed otherwise.
pub fn may_read_filter(identity: Option<&Identity>, filter: &TopicFilter) -> bool {
    match identity {
        Some(id) => id.may_read_filter(filter),
        None => !is_private(filter.base()),
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

    fn f(s: &str) -> TopicFilter {
        TopicFilter::parse(s).unwrap()
    }

    #[test]
    fn an_admin_may_hold_every_wildcard() {
        let admin = ident("root", Some(&["prices.EU"]), true);
        for w in ["trading.*", "risk.>", "risk.bob.>", "prices.>", "a.*"] {
            assert!(admin.may_read_filter(&f(w)), "{w}");
        }
    }

    #[test]
    fn anonymous_wildcards_are_refused_over_private_families_only() {
        for public in ["prices.*", "prices.>", "auctions.A.>", "tradingx.*"] {
            assert!(may_read_filter(None, &f(public)), "{public}");
        }
        for private in [
            "trading.*",
            "trading.>",
            "portfolio.*",
            "risk.>",
            "risk.bob.>",
            "mobile.bob.*",
        ] {
            assert!(!may_read_filter(None, &f(private)), "{private}");
        }
        assert!(may_read_filter(None, &f("prices.IN1")));
        assert!(!may_read_filter(None, &f("trading.bob")));
    }

    #[test]
    fn a_user_may_hold_wildcards_over_their_own_private_topics_only() {
        let bob = ident("bob", None, false);
        assert!(bob.may_read_filter(&f("risk.bob.>")));
        assert!(bob.may_read_filter(&f("risk.bob.*")));
        assert!(bob.may_read_filter(&f("trading.bob.>")));
        for refused in [
            "risk.*",
            "risk.>",
            "trading.*",
            "trading.>",
            "risk.alice.>",
            "risk.bobby.*",
            "mobile.*",
        ] {
            assert!(!bob.may_read_filter(&f(refused)), "{refused}");
        }
        assert!(
            bob.may_read_filter(&f("prices.>")),
            "no claim: every public topic"
        );
    }

    #[test]
    fn a_topics_claim_allows_only_the_wildcards_it_covers() {
        let a = ident("alice", Some(&["prices.>", "auctions.*"]), false);
        for ok in [
            "prices.*",
            "prices.>",
            "prices.EU.*",
            "prices.EU.>",
            "auctions.*",
            "prices.EU",
            "risk.alice.>",
        ] {
            assert!(a.may_read_filter(&f(ok)), "{ok}");
        }
        for refused in [
            "auctions.>",
            "auctions.A.*",
            "market_data.*",
            "pricesX.>",
            "risk.bob.>",
            "risk.*",
        ] {
            assert!(!a.may_read_filter(&f(refused)), "{refused}");
        }
        let star = ident("carol", Some(&["*.EU.*"]), false);
        assert!(star.may_read_filter(&f("prices.EU.*")));
        assert!(!star.may_read_filter(&f("prices.EU.>")));
        assert!(!star.may_read_filter(&f("prices.*")));
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
