//! Fuzzes the stream-entry decoder (`broker::redis::decode::decode_entry`) and, on
//! the same bytes, the live-message decoder (`decode_live`): anyone with access to
//! Redis can `XADD` or `SPUBLISH` anything, and whatever they decode goes to every
//! subscriber's socket, so they must never panic and must only emit valid JSON
//! frames whose `meta` is an object naming this node (engine meta, field `m`, that
//! is not a JSON object without `node` is dropped).
#![no_main]

use std::collections::HashMap;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use sluice_common::Topic;
use sluice_node::{
    broker::redis::decode::{decode_entry, decode_live, Decoder},
    publication::{Origin, Pub},
};

fn check(p: &Pub) {
    let v: serde_json::Value =
        serde_json::from_str(p.frame.as_str()).expect("a decoded entry is a valid JSON frame");
    assert_eq!(v["seq"].as_u64(), Some(p.seq), "{v}");
    assert_eq!(v["topic"], "prices.FUZZ", "{v}");
    assert!(v.get("payload").is_some(), "{v}");
    assert_eq!(v["meta"]["node"], "fuzz-node", "{v}");
}

fuzz_target!(|data: &[u8]| {
    // Input: `<entry id> 0x00 <field> 0x00 <value> 0x00 <field> 0x00 <value> …`,
    // the shape of one XREAD entry; field names arrive as text, values as bytes.
    let mut parts = data.split(|b| *b == 0);
    let id = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let mut fields = HashMap::new();
    while let (Some(k), Some(v)) = (parts.next(), parts.next()) {
        fields.insert(
            String::from_utf8_lossy(k).into_owned(),
            Bytes::copy_from_slice(v),
        );
    }
    let topic = Topic::parse("prices.FUZZ").expect("a valid topic");
    let mut decoder = Decoder::new(Origin::new("fuzz-node"));
    if let Ok(p) = decode_live(&topic, data, &mut decoder) {
        check(&p);
    }
    if let Some(p) = decode_entry(&topic, &id, &fields, &mut decoder) {
        check(&p);
    }
});
