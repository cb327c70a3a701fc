//! The `meta` object of a publication envelope: what an engine may put in it (any
//! JSON object of at most [`MAX_META_BYTES`], without the key `node`), and how the
//! delivering node's `node` key joins the engine's members without re-serializing
//! them.
//!
//! The same rules are written in `sluice.lua` (for `FCALL sluice_publish`); the
//! embedded broker, `POST /publish` and `Publisher` use [`check_meta`], and the node
//! checks stored entries with it again, since anyone with Redis access can write one.

use serde_json::{Map, Value};

/// The largest engine meta accepted, in bytes of its JSON text: meta is for a
/// source, a trace id, a few tags; a bulky document belongs in the payload.
pub const MAX_META_BYTES: usize = 4096;

/// The key the delivering node fills in with its `SLUICE_NODE_ID`; an engine may
/// not set it.
pub const NODE_KEY: &str = "node";

/// Why an engine's meta was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetaError {
    #[error("meta is {0} bytes, more than the {MAX_META_BYTES} allowed")]
    TooLarge(usize),
    #[error("meta is not valid JSON")]
    NotJson,
    #[error("meta must be a JSON object")]
    NotObject,
    #[error("meta key \"node\" is reserved: the delivering node fills it in")]
    Reserved,
}

/// Checks an engine's meta text: a JSON object (as clients parse JSON: see
/// [`super::is_json`]) of at most [`MAX_META_BYTES`] with no `node` key.
pub fn check_meta(text: &str) -> Result<(), MetaError> {
    if text.len() > MAX_META_BYTES {
        return Err(MetaError::TooLarge(text.len()));
    }
    if !super::is_json(text) {
        return Err(MetaError::NotJson);
    }
    // Small by the check above, so building it costs little; a publication is
    // decoded once per node, never per session.
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(m)) => check_keys(&m),
        Ok(_) => Err(MetaError::NotObject),
        Err(_) => Err(MetaError::NotJson),
    }
}

/// Checks the members of an engine's meta object (as `POST /publish` has it).
pub fn check_keys(m: &Map<String, Value>) -> Result<(), MetaError> {
    if m.contains_key(NODE_KEY) {
        return Err(MetaError::Reserved);
    }
    Ok(())
}

/// `{"node":"<node_id>"}`: the meta of a publication with no engine meta. A node
/// builds it once and reuses it for every such publication.
pub fn node_meta(node_id: &str) -> String {
    let mut out = String::with_capacity(node_id.len() + 12);
    out.push_str("{\"node\":");
    out.push_str(&Value::String(node_id.to_owned()).to_string());
    out.push('}');
    out
}

/// The node's meta (`node_meta`'s text) joined with an engine's meta object, whose
/// members are kept verbatim: `{"node":"n"}` and `{"source":"feed"}` give
/// `{"node":"n","source":"feed"}`; an empty engine object (`{}`, `{ }`) adds
/// nothing. `engine` must have passed [`check_meta`] (a JSON object).
pub fn merge_meta(node: &str, engine: &str) -> String {
    let inner = engine
        .trim_matches(is_json_space)
        .strip_prefix('{')
        .and_then(|s| s.strip_suffix('}'))
        .unwrap_or("")
        .trim_matches(is_json_space);
    let node = node.strip_suffix('}').unwrap_or(node);
    if inner.is_empty() {
        return format!("{node}}}");
    }
    let mut out = String::with_capacity(node.len() + inner.len() + 2);
    out.push_str(node);
    out.push(',');
    out.push_str(inner);
    out.push('}');
    out
}

/// JSON's four whitespace characters (RFC 8259 `ws`), nothing more.
fn is_json_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merges_the_node_first_and_keeps_the_engine_members_verbatim() {
        let node = node_meta("node-a");
        assert_eq!(node, r#"{"node":"node-a"}"#);
        assert_eq!(merge_meta(&node, "{}"), r#"{"node":"node-a"}"#);
        assert_eq!(merge_meta(&node, " {\n \t} \r\n"), r#"{"node":"node-a"}"#);
        assert_eq!(
            merge_meta(&node, r#"{"source":"feed","n":1.50}"#),
            r#"{"node":"node-a","source":"feed","n":1.50}"#,
            "numbers keep their text"
        );
        let pretty = "{\n  \"trace\": \"t-1\",\n  \"tags\": [1, {\"a\": {}}]\n}\n";
        let merged = merge_meta(&node, pretty);
        let v: Value = serde_json::from_str(&merged).unwrap();
        assert_eq!(
            v,
            json!({"node":"node-a","trace":"t-1","tags":[1,{"a":{}}]})
        );
        assert!(merged.starts_with(r#"{"node":"node-a","#));
    }

    #[test]
    fn a_node_id_is_escaped_as_a_json_string() {
        let node = node_meta("a\"b\\c");
        let v: Value = serde_json::from_str(&merge_meta(&node, r#"{"x":1}"#)).unwrap();
        assert_eq!(v, json!({"node":"a\"b\\c","x":1}));
    }

    #[test]
    fn refuses_what_is_not_a_small_object_without_node() {
        assert_eq!(check_meta("{}"), Ok(()));
        assert_eq!(check_meta(r#" {"source":"feed"} "#), Ok(()));
        assert_eq!(check_meta("[1]"), Err(MetaError::NotObject));
        assert_eq!(check_meta("7"), Err(MetaError::NotObject));
        assert_eq!(check_meta(r#""s""#), Err(MetaError::NotObject));
        assert_eq!(check_meta("null"), Err(MetaError::NotObject));
        assert_eq!(check_meta(""), Err(MetaError::NotJson));
        assert_eq!(check_meta("{oops"), Err(MetaError::NotJson));
        assert_eq!(check_meta(r#"{"a":1e999}"#), Err(MetaError::NotJson));
        assert_eq!(check_meta(r#"{"node":"x"}"#), Err(MetaError::Reserved));
        assert_eq!(
            check_meta(r#"{"a":1,"node":null}"#),
            Err(MetaError::Reserved)
        );
        let big = format!(r#"{{"a":"{}"}}"#, "x".repeat(MAX_META_BYTES));
        assert_eq!(check_meta(&big), Err(MetaError::TooLarge(big.len())));
        let fits = format!(r#"{{"a":"{}"}}"#, "x".repeat(MAX_META_BYTES - 8));
        assert_eq!(fits.len(), MAX_META_BYTES);
        assert_eq!(check_meta(&fits), Ok(()));
    }
}
