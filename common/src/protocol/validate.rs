//! JSON validation that builds nothing.
//!
//! Payloads pass through the node as text; they only have to be valid JSON. Parsing
//! one into a `serde_json::Value` to find out allocates a map or vector per object
//! or array and a string per key. [`Valid`] is visited by the same parser under the
//! same rules — RFC 8259 grammar, numbers that fit an `f64`, nesting depth at most
//! 128 — but keeps nothing, so it accepts exactly what `Value` accepts.

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

/// Deserializes from any JSON value and keeps nothing of it.
pub(super) struct Valid;

impl<'de> Deserialize<'de> for Valid {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // `deserialize_any`, unlike `deserialize_ignored_any`, makes serde_json parse
        // every number into its value (so `1e400` fails as it does for `Value`) and
        // count nesting depth.
        d.deserialize_any(ValidVisitor)
    }
}

struct ValidVisitor;

impl<'de> Visitor<'de> for ValidVisitor {
    type Value = Valid;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Valid, E> {
        Ok(Valid)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Valid, E> {
        Ok(Valid)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Valid, E> {
        Ok(Valid)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Valid, E> {
        Ok(Valid)
    }
    fn visit_str<E>(self, _: &str) -> Result<Valid, E> {
        Ok(Valid)
    }
    fn visit_unit<E>(self) -> Result<Valid, E> {
        Ok(Valid)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Valid, A::Error> {
        while seq.next_element::<Valid>()?.is_some() {}
        Ok(Valid)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Valid, A::Error> {
        while map.next_key::<Valid>()?.is_some() {
            map.next_value::<Valid>()?;
        }
        Ok(Valid)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::is_json;

    fn as_value(text: &str) -> bool {
        serde_json::from_str::<serde_json::Value>(text).is_ok()
    }

    #[test]
    fn agrees_with_value_on_the_edges() {
        let deep_ok = "[".repeat(127) + &"]".repeat(127);
        let deep_bad = "[".repeat(129) + &"]".repeat(129);
        let cases = [
            "1",
            "1.",
            "-",
            "01",
            "1e400",
            "-1e400",
            "1.0E-400",
            "1e5",
            "[1,]",
            "{\"a\":1.}",
            "\"\\x\"",
            "\"\u{1}\"",
            "nul",
            "1 2",
            " {\"a\" : [1, {\"b\": null}]} ",
            "{\"a\":1,\"a\":2}",
            "\"\\ud800\"",
            "{1:2}",
            "",
            "   ",
            "true",
            "[]",
            "{}",
            "123456789012345678901234567890",
            &deep_ok,
            &deep_bad,
        ];
        for c in cases {
            assert_eq!(is_json(c), as_value(c), "{c:?}");
        }
        assert!(is_json(&deep_ok));
        assert!(!is_json(&deep_bad));
        assert!(!is_json("1e400"));
    }

    proptest! {
        #[test]
        fn agrees_with_value_on_json_like_text(
            text in r#"[\[\]{}",:0-9eE.+\- a-z\\]{0,40}"#
        ) {
            prop_assert_eq!(is_json(&text), as_value(&text));
        }

        #[test]
        fn accepts_what_value_prints(v in arb_value()) {
            let text = v.to_string();
            prop_assert!(is_json(&text), "{}", text);
        }
    }

    fn arb_value() -> impl Strategy<Value = serde_json::Value> {
        use serde_json::Value;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            ".{0,8}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 32, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(".{0,4}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }
}
