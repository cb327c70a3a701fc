//! The Redis key layout, shared by the node, the `Publisher` and the function library.
//!
//! Every key of a topic carries the hash tag `{<topic>}`. Topics cannot contain
//! braces, so the tag is the whole topic name and all of a topic's keys live in the
//! same cluster slot as the key `FCALL sluice_publish 1 <topic>` declares.
//!
//! | key | type | holds |
//! | --- | --- | --- |
//! | `sluice:{T}:meta` | hash | `seq` (last seq), `epoch`, `ems` (epoch creation ms), `snap`, `snap_seq`, `snap_ts` |
//! | `sluice:{T}:stream` | stream | one entry per message, id `<ems>-<seq>`, fields `e` epoch, `t` type, `p` payload, `ts` publish ms |
//! | `sluice:{T}:live` | sharded pub/sub channel | every publish, `SPUBLISH`ed by the function: `<seq>\n<epoch>\n<type>\n<ts>\n<payload>`; only nodes following `T` subscribe |
//! | `sluice:topics` | classic pub/sub channel | `<topic>\n<epoch>` when a topic starts a new epoch, for nodes holding wildcards |
//! | `sluice:registry:{nodes}:<id>` | string (JSON), TTL | the cluster registry record of a live node |
//! | `sluice:registry:{nodes}` | sorted set | node ids scored by their last refresh (Unix ms), to list records without `KEYS` |
//!
//! The registry keys share the hash tag `{nodes}`: one `MULTI` writes a record and
//! the index, and one `MGET` reads every record, which on Redis Cluster works only
//! within one slot.

/// The hash holding a topic's seq counter, epoch and snapshot.
pub fn meta(topic: &str) -> String {
    format!("sluice:{{{topic}}}:meta")
}

/// The stream holding a topic's retained history.
pub fn stream(topic: &str) -> String {
    format!("sluice:{{{topic}}}:stream")
}

/// The sharded pub/sub channel on which `sluice_publish` sends each entry of a
/// topic to the nodes that follow it (in the topic's slot, like its keys).
pub fn live(topic: &str) -> String {
    format!("sluice:{{{topic}}}:live")
}

/// Recovers the topic from a channel built by [`live`].
pub fn topic_of_live(channel: &str) -> Option<&str> {
    channel.strip_prefix("sluice:{")?.strip_suffix("}:live")
}

/// The classic pub/sub channel on which `sluice_publish` announces each topic that
/// starts a new epoch (`<topic>\n<epoch>`): nodes holding wildcard subscriptions
/// subscribe to it. Classic PUBLISH reaches every node of a Cluster; it is sent
/// once per topic life, not per message.
pub const TOPICS: &str = "sluice:topics";

/// The SCAN pattern of the meta keys of topics that may match a wildcard with
/// `prefix` (every topic below it; the caller filters by depth). Topic characters
/// are never glob-special, so the prefix needs no escaping.
pub fn meta_scan(prefix: &str) -> String {
    format!("sluice:{{{prefix}.*}}:meta")
}

/// SCAN pattern of every topic's meta key.
pub const META_SCAN_ALL: &str = "sluice:{*}:meta";

/// Recovers the topic from a key built by [`meta`].
pub fn topic_of_meta(key: &str) -> Option<&str> {
    key.strip_prefix("sluice:{")?.strip_suffix("}:meta")
}

/// The index of registered nodes.
pub const NODES: &str = "sluice:registry:{nodes}";

/// A node's registry record.
pub fn node(node_id: &str) -> String {
    format!("sluice:registry:{{nodes}}:{node_id}")
}

/// Recovers the topic from a stream key built by [`stream`].
pub fn topic_of_stream(key: &str) -> Option<&str> {
    key.strip_prefix("sluice:{")?.strip_suffix("}:stream")
}

/// A stream entry id for `seq` in the epoch created at `epoch_ms`.
pub fn entry_id(epoch_ms: u64, seq: u64) -> String {
    format!("{epoch_ms}-{seq}")
}

/// Splits an entry id `<ms>-<seq>` into its parts.
pub fn parse_entry_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_the_topic_hash_tag() {
        assert_eq!(meta("prices.IN1"), "sluice:{prices.IN1}:meta");
        assert_eq!(stream("prices.IN1"), "sluice:{prices.IN1}:stream");
        assert_eq!(topic_of_stream(&stream("a.b:c")), Some("a.b:c"));
        assert_eq!(topic_of_stream("other"), None);
        assert_eq!(live("prices.IN1"), "sluice:{prices.IN1}:live");
        assert_eq!(topic_of_live(&live("a.b:c")), Some("a.b:c"));
        assert_eq!(topic_of_live(&stream("a")), None);
        assert_eq!(topic_of_meta(&meta("a.b:c")), Some("a.b:c"));
        assert_eq!(meta_scan("prices.EU"), "sluice:{prices.EU.*}:meta");
    }

    #[test]
    fn registry_keys_share_one_hash_tag_apart_from_topic_keys() {
        assert_eq!(node("gw-1"), "sluice:registry:{nodes}:gw-1");
        assert_eq!(NODES, "sluice:registry:{nodes}");
        // The first `{…}` is the hash tag (Redis Cluster's rule): the same for both.
        let tag = |k: &str| {
            k.split_once('{')
                .and_then(|(_, r)| r.split_once('}'))
                .map(|(t, _)| t.to_owned())
        };
        assert_eq!(tag(&node("gw-1")), Some("nodes".to_owned()));
        assert_eq!(tag(NODES), tag(&node("x")));
        // Topic keys (and only they) start with `sluice:{`.
        assert!(!node("gw-1").starts_with("sluice:{") && !NODES.starts_with("sluice:{"));
    }

    #[test]
    fn entry_ids_round_trip() {
        assert_eq!(
            parse_entry_id(&entry_id(1_700_000_000_123, 42)),
            Some((1_700_000_000_123, 42))
        );
        assert_eq!(parse_entry_id("12"), None);
        assert_eq!(parse_entry_id("a-1"), None);
    }
}
