//! Topic names and subscription filters: the one place that knows what a valid topic is.
//!
//! A topic is 1 to 200 bytes of `[A-Za-z0-9_.:-]`, split into non-empty segments by
//! `.`. A filter is a topic, or a topic prefix followed by `.*` (exactly one more
//! segment) or `.>` (one or more further segments).

use std::{fmt, sync::Arc};

/// Longest topic name accepted, in bytes.
pub const MAX_TOPIC_LEN: usize = 200;

/// Why a topic or filter was refused; the message is shown to clients as is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("topic is empty")]
    Empty,
    #[error("topic is longer than {MAX_TOPIC_LEN} bytes")]
    TooLong,
    #[error("topic contains {0:?}; allowed are A-Z a-z 0-9 _ . : -")]
    BadChar(char),
    #[error("topic has an empty segment (leading, trailing or doubled '.')")]
    EmptySegment,
    #[error("a wildcard may only be the last segment, as '.*' or '.>'")]
    MisplacedWildcard,
    #[error("wildcard topics can't be published to or resumed")]
    WildcardNotAllowed,
}

/// A validated, concrete topic name. Cheap to clone: the hub and every session
/// holding a subscription share one allocation.
#[derive(Clone, Eq, PartialOrd, Ord)]
pub struct Topic(Arc<str>);

/// Names compare equal when their text does; two handles of one allocation (the
/// hub's copy, held by every subscriber and publication of the topic) answer
/// without reading the text. (`Arc<str>`'s own `==` always compares the bytes.)
impl PartialEq for Topic {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || *self.0 == *other.0
    }
}

/// As the text hashes, so that equal names hash alike (and `Borrow<str>` lookups work).
impl std::hash::Hash for Topic {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

impl Topic {
    /// Validates `name` as a concrete topic (no wildcard).
    pub fn parse(name: &str) -> Result<Self, TopicError> {
        validate_concrete(name)?;
        Ok(Topic(Arc::from(name)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The segments of the name, in order.
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.0.split('.')
    }
}

impl fmt::Debug for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for Topic {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for Topic {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl serde::Serialize for Topic {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// What a subscription names: one topic, or a family of topics.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TopicFilter {
    /// Exactly this topic; gets snapshots, history and resume.
    Exact(Topic),
    /// `prefix.*`: every topic with exactly one more segment than `prefix`.
    OneLevel(Topic),
    /// `prefix.>`: every topic with at least one more segment than `prefix`.
    AnyDepth(Topic),
}

impl TopicFilter {
    pub fn parse(text: &str) -> Result<Self, TopicError> {
        if text.len() > MAX_TOPIC_LEN {
            return Err(TopicError::TooLong);
        }
        if let Some(prefix) = text.strip_suffix(".*") {
            return Ok(TopicFilter::OneLevel(Topic::parse(prefix)?));
        }
        if let Some(prefix) = text.strip_suffix(".>") {
            return Ok(TopicFilter::AnyDepth(Topic::parse(prefix)?));
        }
        if text.contains(['*', '>']) {
            return Err(TopicError::MisplacedWildcard);
        }
        Ok(TopicFilter::Exact(Topic::parse(text)?))
    }

    /// The concrete topic, or an error for a wildcard filter.
    pub fn exact(self) -> Result<Topic, TopicError> {
        match self {
            TopicFilter::Exact(t) => Ok(t),
            _ => Err(TopicError::WildcardNotAllowed),
        }
    }

    pub fn is_wildcard(&self) -> bool {
        !matches!(self, TopicFilter::Exact(_))
    }

    /// The topic itself, or the prefix a wildcard extends.
    pub fn base(&self) -> &Topic {
        match self {
            TopicFilter::Exact(t) | TopicFilter::OneLevel(t) | TopicFilter::AnyDepth(t) => t,
        }
    }

    /// Whether a concrete topic falls under this filter.
    pub fn matches(&self, topic: &str) -> bool {
        match self {
            TopicFilter::Exact(t) => t.as_str() == topic,
            TopicFilter::OneLevel(p) => rest_after(p, topic).is_some_and(|r| !r.contains('.')),
            TopicFilter::AnyDepth(p) => rest_after(p, topic).is_some(),
        }
    }
}

impl fmt::Display for TopicFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TopicFilter::Exact(t) => write!(f, "{t}"),
            TopicFilter::OneLevel(p) => write!(f, "{p}.*"),
            TopicFilter::AnyDepth(p) => write!(f, "{p}.>"),
        }
    }
}

/// The part of `topic` after `prefix.`, if `topic` lies below `prefix`.
fn rest_after<'a>(prefix: &Topic, topic: &'a str) -> Option<&'a str> {
    topic
        .strip_prefix(prefix.as_str())?
        .strip_prefix('.')
        .filter(|r| !r.is_empty())
}

fn validate_concrete(name: &str) -> Result<(), TopicError> {
    if name.is_empty() {
        return Err(TopicError::Empty);
    }
    if name.len() > MAX_TOPIC_LEN {
        return Err(TopicError::TooLong);
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-')))
    {
        return Err(if matches!(c, '*' | '>') {
            TopicError::MisplacedWildcard
        } else {
            TopicError::BadChar(c)
        });
    }
    if name.split('.').any(str::is_empty) {
        return Err(TopicError::EmptySegment);
    }
    Ok(())
}

/// A permission pattern from a token's `topics` claim: segments separated by `.`,
/// where `*` matches exactly one segment and a final `>` matches one or more.
/// `prices.*`, `auctions.>`, `risk.*.alerts`, or a plain topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicPattern {
    segments: Vec<String>,
}

impl TopicPattern {
    pub fn parse(text: &str) -> Result<Self, TopicError> {
        if text.is_empty() {
            return Err(TopicError::Empty);
        }
        if text.len() > MAX_TOPIC_LEN {
            return Err(TopicError::TooLong);
        }
        let segments: Vec<String> = text.split('.').map(str::to_owned).collect();
        let last = segments.len() - 1;
        for (i, seg) in segments.iter().enumerate() {
            match seg.as_str() {
                "" => return Err(TopicError::EmptySegment),
                "*" => {}
                ">" if i == last => {}
                s if s.contains(['*', '>']) => return Err(TopicError::MisplacedWildcard),
                s => {
                    if let Some(c) = s
                        .chars()
                        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | ':' | '-')))
                    {
                        return Err(TopicError::BadChar(c));
                    }
                }
            }
        }
        Ok(TopicPattern { segments })
    }

    pub fn matches(&self, topic: &str) -> bool {
        let mut parts = topic.split('.');
        for (i, seg) in self.segments.iter().enumerate() {
            if seg == ">" && i == self.segments.len() - 1 {
                return parts.next().is_some();
            }
            match parts.next() {
                Some(p) if seg == "*" || seg == p => {}
                _ => return false,
            }
        }
        parts.next().is_none()
    }

    /// Whether every topic `filter` can match is matched by this pattern.
    ///
    /// Exact for the filters sessions use: the topics a wildcard filter matches
    /// include ones whose extra segments appear in no pattern, so a set of patterns
    /// covers a filter only if one of them does alone (a union never has to be
    /// considered).
    pub fn covers(&self, filter: &TopicFilter) -> bool {
        let base = filter.base();
        let mut pats = self.segments.iter().map(String::as_str);
        let last = self.segments.len() - 1;
        for (i, seg) in base.segments().enumerate() {
            match pats.next() {
                // A final `>` takes this segment and all after it.
                Some(">") if i == last => return true,
                Some(p) if p == "*" || p == seg => {}
                _ => return false,
            }
        }
        let rest: Vec<&str> = pats.collect();
        match filter {
            TopicFilter::Exact(_) => rest.is_empty(),
            TopicFilter::OneLevel(_) => matches!(rest.as_slice(), ["*"] | [">"]),
            TopicFilter::AnyDepth(_) => rest.as_slice() == [">"],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_the_documented_charset() {
        for ok in [
            "prices.IN0001",
            "a",
            "risk.u-1.alerts",
            "x:y_z",
            &"a".repeat(200),
        ] {
            assert_eq!(Topic::parse(ok).map(|t| t.to_string()), Ok(ok.to_string()));
        }
    }

    #[test]
    fn refuses_each_kind_of_bad_topic() {
        assert_eq!(Topic::parse(""), Err(TopicError::Empty));
        assert_eq!(Topic::parse(&"a".repeat(201)), Err(TopicError::TooLong));
        assert_eq!(Topic::parse("a b"), Err(TopicError::BadChar(' ')));
        assert_eq!(Topic::parse("a/b"), Err(TopicError::BadChar('/')));
        assert_eq!(Topic::parse("prix.é"), Err(TopicError::BadChar('é')));
        assert_eq!(Topic::parse(".a"), Err(TopicError::EmptySegment));
        assert_eq!(Topic::parse("a."), Err(TopicError::EmptySegment));
        assert_eq!(Topic::parse("a..b"), Err(TopicError::EmptySegment));
        assert_eq!(Topic::parse("a.*"), Err(TopicError::MisplacedWildcard));
    }

    #[test]
    fn wildcard_filters_match_the_right_depth() {
        let one = TopicFilter::parse("prices.*").unwrap();
        let any = TopicFilter::parse("prices.>").unwrap();
        assert!(one.matches("prices.IN1"));
        assert!(!one.matches("prices.IN1.bid"));
        assert!(!one.matches("prices"));
        assert!(!one.matches("pricesX.IN1"));
        assert!(any.matches("prices.IN1"));
        assert!(any.matches("prices.IN1.bid"));
        assert!(!any.matches("prices"));
        assert_eq!(TopicFilter::parse("*"), Err(TopicError::MisplacedWildcard));
        assert_eq!(
            TopicFilter::parse("a.*.b"),
            Err(TopicError::MisplacedWildcard)
        );
        assert_eq!(
            TopicFilter::parse("a.>.b"),
            Err(TopicError::MisplacedWildcard)
        );
        assert_eq!(TopicFilter::parse(".*"), Err(TopicError::Empty));
        assert_eq!(one.exact(), Err(TopicError::WildcardNotAllowed));
    }

    #[test]
    fn permission_patterns_match_segments() {
        let p = |s: &str| TopicPattern::parse(s).unwrap();
        assert!(p("prices.*").matches("prices.IN1"));
        assert!(!p("prices.*").matches("prices.IN1.bid"));
        assert!(p("auctions.>").matches("auctions.a.b"));
        assert!(!p("auctions.>").matches("auctions"));
        assert!(p("risk.*.alerts").matches("risk.u1.alerts"));
        assert!(!p("risk.*.alerts").matches("risk.u1"));
        assert!(p("a.b").matches("a.b"));
        assert!(!p("a.b").matches("a.bc"));
        assert!(p(">").matches("anything.at.all"));
        assert_eq!(
            TopicPattern::parse("a.>.b"),
            Err(TopicError::MisplacedWildcard)
        );
        assert_eq!(
            TopicPattern::parse("a.b*"),
            Err(TopicError::MisplacedWildcard)
        );
        assert_eq!(TopicPattern::parse("a..b"), Err(TopicError::EmptySegment));
    }

    #[test]
    fn a_pattern_covers_a_filter_only_when_it_matches_everything_the_filter_can() {
        let covers = |p: &str, f: &str| {
            TopicPattern::parse(p)
                .unwrap()
                .covers(&TopicFilter::parse(f).unwrap())
        };
        assert!(covers("prices.>", "prices.EU.*"));
        assert!(covers("prices.>", "prices.*"));
        assert!(covers("prices.>", "prices.>"));
        assert!(covers("prices.>", "prices.EU.>"));
        assert!(covers("prices.>", "prices.EU"));
        assert!(!covers("prices.>", "prices"));
        assert!(covers("prices.*", "prices.*"));
        assert!(!covers("prices.*", "prices.>"));
        assert!(!covers("prices.*", "prices.EU.*"));
        assert!(covers("*.*", "prices.*"));
        assert!(covers("*.EU.*", "prices.EU.*"));
        assert!(!covers("*.EU.*", "prices.US.*"));
        assert!(covers(">", "a.b.>"));
        assert!(!covers("prices.EU", "prices.*"));
        assert!(!covers("prices.EU.x", "prices.*"));
        assert!(!covers("prices", "prices.*"));
        assert!(!covers("auctions.>", "prices.*"));
    }

    fn segment() -> impl Strategy<Value = String> {
        "[A-Za-z0-9_:-]{1,12}"
    }

    proptest! {
        #[test]
        fn valid_names_round_trip(segs in prop::collection::vec(segment(), 1..6)) {
            let name = segs.join(".");
            prop_assume!(name.len() <= MAX_TOPIC_LEN);
            let t = Topic::parse(&name).unwrap();
            prop_assert_eq!(t.as_str(), name.as_str());
            prop_assert_eq!(t.segments().count(), segs.len());
            prop_assert_eq!(TopicFilter::parse(&name).unwrap(), TopicFilter::Exact(t));
        }

        #[test]
        fn any_string_parses_or_errs_without_panicking(s in ".{0,250}") {
            let verdict = Topic::parse(&s);
            let ok = !s.is_empty() && s.len() <= MAX_TOPIC_LEN
                && s.split('.').all(|seg| !seg.is_empty()
                    && seg.chars().all(|c| c.is_ascii_alphanumeric() || "_:-".contains(c)));
            prop_assert_eq!(verdict.is_ok(), ok);
        }

        #[test]
        fn one_level_matches_exactly_one_more_segment(
            prefix in prop::collection::vec(segment(), 1..4),
            extra in prop::collection::vec(segment(), 0..4),
        ) {
            let p = prefix.join(".");
            let f1 = TopicFilter::parse(&format!("{p}.*")).unwrap();
            let fa = TopicFilter::parse(&format!("{p}.>")).unwrap();
            let mut full = prefix.clone();
            full.extend(extra.iter().cloned());
            let topic = full.join(".");
            prop_assert_eq!(f1.matches(&topic), extra.len() == 1);
            prop_assert_eq!(fa.matches(&topic), !extra.is_empty());
        }

        /// `covers` never grants a topic the pattern refuses (sound), and refuses
        /// only filters some matched topic disproves (exact), checked on topics made
        /// of the filter's prefix and segments both from and outside the pattern.
        #[test]
        fn covers_agrees_with_matching_every_topic(
            pat in prop::collection::vec(prop::sample::select(vec!["a", "b", "*"]), 1..4),
            tail in prop::sample::select(vec!["", ">"]),
            prefix in prop::collection::vec(prop::sample::select(vec!["a", "b"]), 1..4),
            kind in 0..3u8,
        ) {
            let mut text = pat.join(".");
            if !tail.is_empty() { text.push('.'); text.push_str(tail); }
            let pattern = TopicPattern::parse(&text).unwrap();
            let base = prefix.join(".");
            let filter = TopicFilter::parse(&match kind {
                0 => base.clone(),
                1 => format!("{base}.*"),
                _ => format!("{base}.>"),
            }).unwrap();
            // Every topic of up to 3 extra segments over {a, b, fresh}.
            let mut every = true;
            let extras: Vec<Vec<&str>> = {
                let alphabet = ["a", "b", "zz"];
                let mut all = vec![vec![]];
                let mut layer = vec![vec![]];
                for _ in 0..3 {
                    layer = layer.iter().flat_map(|e: &Vec<&str>| alphabet.iter().map(move |s| {
                        let mut n = e.clone(); n.push(*s); n
                    })).collect();
                    all.extend(layer.clone());
                }
                all
            };
            for extra in extras {
                let mut segs: Vec<&str> = prefix.clone();
                segs.extend(extra);
                let topic = segs.join(".");
                if filter.matches(&topic) && !pattern.matches(&topic) {
                    every = false;
                }
            }
            prop_assert_eq!(pattern.covers(&filter), every, "{} vs {}", text, filter);
        }
    }
}
