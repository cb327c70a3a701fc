//! A segment trie of wildcard filters: which held `prefix.*` / `prefix.>` filters
//! match a topic, in time proportional to the topic's segments, not to the number
//! of filters held.
//!
//! Each node is one prefix segment; a node holds the entries of the filters whose
//! prefix ends there, split by kind. Matching `a.b.c` walks `a`, `a.b`, `a.b.c`:
//! at depth d of n segments it takes the `.>` entries while d < n and the `.*`
//! entries when d == n - 1. The hub consults it only when a topic is first seen or
//! a filter is added, never per publication.

use std::{collections::HashMap, hash::Hash};

use sluice_common::TopicFilter;

#[derive(Debug)]
struct Node<K, V> {
    children: HashMap<Box<str>, Node<K, V>>,
    /// Filters `<this prefix>.*`.
    one: HashMap<K, V>,
    /// Filters `<this prefix>.>`.
    any: HashMap<K, V>,
}

impl<K, V> Default for Node<K, V> {
    fn default() -> Self {
        Node {
            children: HashMap::new(),
            one: HashMap::new(),
            any: HashMap::new(),
        }
    }
}

impl<K, V> Node<K, V> {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.one.is_empty() && self.any.is_empty()
    }
}

/// Wildcard filters, each holding entries keyed by `K` (a subscriber).
#[derive(Debug)]
pub struct FilterTrie<K, V> {
    root: Node<K, V>,
    len: usize,
}

impl<K, V> Default for FilterTrie<K, V> {
    fn default() -> Self {
        FilterTrie {
            root: Node::default(),
            len: 0,
        }
    }
}

impl<K: Eq + Hash, V> FilterTrie<K, V> {
    /// Entries held, over every filter.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds `key`'s entry under `filter` (replacing an earlier one). An exact
    /// filter is not a wildcard and is refused (returns false).
    pub fn insert(&mut self, filter: &TopicFilter, key: K, value: V) -> bool {
        let mut node = &mut self.root;
        for seg in filter.base().segments() {
            node = node.children.entry(seg.into()).or_default();
        }
        let slot = match filter {
            TopicFilter::OneLevel(_) => &mut node.one,
            TopicFilter::AnyDepth(_) => &mut node.any,
            TopicFilter::Exact(_) => return false,
        };
        if slot.insert(key, value).is_none() {
            self.len += 1;
        }
        true
    }

    /// Removes `key`'s entry under `filter`, pruning nodes left empty.
    pub fn remove(&mut self, filter: &TopicFilter, key: &K) -> Option<V> {
        let segs: Vec<&str> = filter.base().segments().collect();
        let removed = remove_at(&mut self.root, &segs, filter, key);
        if removed.is_some() {
            self.len -= 1;
        }
        removed
    }

    /// Calls `f` with every entry whose filter matches `topic`.
    pub fn for_each_match(&self, topic: &str, mut f: impl FnMut(&K, &V)) {
        let segs: Vec<&str> = topic.split('.').collect();
        let n = segs.len();
        let mut node = &self.root;
        for (i, seg) in segs.iter().enumerate() {
            let Some(next) = node.children.get(*seg) else {
                return;
            };
            node = next;
            let depth = i + 1;
            if depth >= n {
                return; // a filter's prefix is never the whole topic
            }
            node.any.iter().for_each(|(k, v)| f(k, v));
            if depth == n - 1 {
                node.one.iter().for_each(|(k, v)| f(k, v));
            }
        }
    }
}

fn remove_at<K: Eq + Hash, V>(
    node: &mut Node<K, V>,
    segs: &[&str],
    filter: &TopicFilter,
    key: &K,
) -> Option<V> {
    let Some((first, rest)) = segs.split_first() else {
        return match filter {
            TopicFilter::OneLevel(_) => node.one.remove(key),
            TopicFilter::AnyDepth(_) => node.any.remove(key),
            TopicFilter::Exact(_) => None,
        };
    };
    let child = node.children.get_mut(*first)?;
    let removed = remove_at(child, rest, filter, key);
    if child.is_empty() {
        node.children.remove(*first);
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn f(s: &str) -> TopicFilter {
        TopicFilter::parse(s).unwrap()
    }

    fn matches(trie: &FilterTrie<u32, &'static str>, topic: &str) -> Vec<&'static str> {
        let mut out = Vec::new();
        trie.for_each_match(topic, |_, v| out.push(*v));
        out.sort_unstable();
        out
    }

    #[test]
    fn finds_the_filters_of_each_depth_and_prunes_on_remove() {
        let mut trie = FilterTrie::default();
        assert!(trie.insert(&f("prices.*"), 1, "prices.*"));
        assert!(trie.insert(&f("prices.>"), 1, "prices.>"));
        assert!(trie.insert(&f("prices.EU.*"), 2, "prices.EU.*"));
        assert!(!trie.insert(&f("prices.EU"), 3, "exact"));
        assert_eq!(trie.len(), 3);
        assert_eq!(matches(&trie, "prices.EU"), ["prices.*", "prices.>"]);
        assert_eq!(matches(&trie, "prices.EU.X"), ["prices.>", "prices.EU.*"]);
        assert_eq!(matches(&trie, "prices.EU.X.Y"), ["prices.>"]);
        assert!(matches(&trie, "prices").is_empty());
        assert!(matches(&trie, "pricesX.EU").is_empty());
        assert_eq!(trie.remove(&f("prices.EU.*"), &2), Some("prices.EU.*"));
        assert_eq!(trie.remove(&f("prices.EU.*"), &2), None);
        assert_eq!(trie.remove(&f("prices.*"), &9), None);
        assert_eq!(trie.remove(&f("prices.*"), &1), Some("prices.*"));
        assert_eq!(trie.remove(&f("prices.>"), &1), Some("prices.>"));
        assert!(trie.is_empty());
        assert!(trie.root.is_empty(), "every node pruned");
    }

    #[test]
    fn one_filter_keeps_an_entry_per_key() {
        let mut trie = FilterTrie::default();
        trie.insert(&f("a.>"), 1, "one");
        trie.insert(&f("a.>"), 2, "two");
        trie.insert(&f("a.>"), 2, "two again");
        assert_eq!(trie.len(), 2);
        assert_eq!(matches(&trie, "a.b"), ["one", "two again"]);
    }

    fn segment() -> impl Strategy<Value = String> {
        prop::sample::select(vec!["a", "b", "c"]).prop_map(str::to_owned)
    }

    fn filter_text() -> impl Strategy<Value = String> {
        (prop::collection::vec(segment(), 1..4), prop::bool::ANY)
            .prop_map(|(p, one)| format!("{}.{}", p.join("."), if one { "*" } else { ">" }))
    }

    proptest! {
        /// The trie finds exactly the filters `TopicFilter::matches` accepts, after
        /// any sequence of inserts and removes.
        #[test]
        fn agrees_with_topic_filter_matches(
            filters in prop::collection::vec(filter_text(), 0..30),
            removes in prop::collection::vec(0..30usize, 0..15),
            topics in prop::collection::vec(prop::collection::vec(segment(), 1..6), 1..20),
        ) {
            let mut trie: FilterTrie<usize, TopicFilter> = FilterTrie::default();
            let mut held: Vec<Option<TopicFilter>> = Vec::new();
            for (i, text) in filters.iter().enumerate() {
                let filter = f(text);
                trie.insert(&filter, i, filter.clone());
                held.push(Some(filter));
            }
            for r in removes {
                if let Some(Some(filter)) = held.get(r).cloned() {
                    prop_assert_eq!(trie.remove(&filter, &r), Some(filter));
                    held[r] = None;
                }
            }
            prop_assert_eq!(trie.len(), held.iter().flatten().count());
            for segs in topics {
                let topic = segs.join(".");
                let mut got = Vec::new();
                trie.for_each_match(&topic, |k, _| got.push(*k));
                got.sort_unstable();
                let want: Vec<usize> = held
                    .iter()
                    .enumerate()
                    .filter(|(_, h)| h.as_ref().is_some_and(|h| h.matches(&topic)))
                    .map(|(i, _)| i)
                    .collect();
                prop_assert_eq!(got, want, "topic {}", topic);
            }
        }
    }
}
