//! The `sluice` function library's version, and the one rule every loader (a node,
//! an engine's `Publisher`) follows so a rolling upgrade never downgrades it: read
//! the version each master holds, load only where none is loaded or an older one
//! is, and leave a newer one in place.
//!
//! The version is a header line of the library text,
//! `-- sluice-library-version: N`, read back with
//! `FUNCTION LIST LIBRARYNAME sluice WITHCODE`. Not a function such as
//! `FCALL_RO sluice_version 0`, because the listing
//! - tells "no library" (an empty list) from "a library from before versions" (a
//!   listing without the line: version 0), where an older library simply lacks
//!   the function and `Function not found` is the same answer for both;
//! - runs no Lua and needs no key, so it is addressed to each primary of a
//!   Cluster like any keyless command (fred 10.1 routes an `FCALL` with no key to
//!   one node of its choice; `with_cluster_node` sends this one where we say);
//! - works whatever the functions of the loaded library are.

use fred::{
    clients::Client,
    interfaces::{ClientLike, ClusterInterface, FunctionInterface},
    types::{config::Server, Value},
};

use crate::redis_client::{classify, RedisFailure};

/// The version of the library text this build loads (`node/src/broker/redis/
/// sluice.lua` carries the same number in its header; a test keeps them equal).
///
/// 1 is the first versioned library; a library without the header line (loaded by
/// a node from before versions) counts as 0. Raise it by one whenever the library
/// text changes in a way a node or engine should get (a new function, a fix, new
/// fields): a library of a higher version replaces a lower one and is never
/// replaced by it. Every version must keep the calls and replies of the older ones
/// (the rule is written in the library's header).
pub const LIBRARY_VERSION: u32 = 1;
// 0 stands for every library from before versions.
const _: () = assert!(LIBRARY_VERSION >= 1);

/// The header line's prefix; the version follows it (`-- sluice-library-version: 1`).
pub const VERSION_LINE: &str = "-- sluice-library-version:";

/// The library's name (`#!lua name=sluice`).
pub const LIBRARY_NAME: &str = "sluice";

/// The version a library text declares: the number on its [`VERSION_LINE`] within
/// the leading block of comment lines (the `#!lua` line, `--` lines, blank lines).
/// 0 when there is none or it is not a number: a library from before versions,
/// which any versioned one replaces. The rest of the text (the history settings
/// a node fills in) plays no part.
pub fn version_of(code: &str) -> u32 {
    for line in code.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix(VERSION_LINE) {
            return rest.trim().parse().unwrap_or(0);
        }
        if !(line.is_empty() || line.starts_with("--") || line.starts_with("#!")) {
            break;
        }
    }
    0
}

/// `text` with its version line saying `version` instead (a line is added after
/// the `#!lua` line when it has none). For tests and tools that need a library
/// of another version.
pub fn with_version(text: &str, version: u32) -> String {
    let line = format!("{VERSION_LINE} {version}");
    let mut lines: Vec<&str> = text.split('\n').collect();
    let mut at = None;
    for (i, l) in lines.iter().enumerate() {
        let t = l.trim();
        if t.starts_with(VERSION_LINE) {
            at = Some(i);
            break;
        }
        if !(t.is_empty() || t.starts_with("--") || t.starts_with("#!")) {
            break;
        }
    }
    match at {
        Some(i) => lines[i] = &line,
        None => lines.insert(1.min(lines.len()), &line),
    }
    lines.join("\n")
}

/// When a loader replaces the library a master holds (none loaded: always).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replace {
    /// Only an older version (the periodic check, a publisher that found the
    /// library missing): an equal version with other history settings stays, so
    /// two nodes with different settings never take turns.
    IfOlder,
    /// An older version, or the same version with another text (a node starting:
    /// its history settings take effect, the last node started wins, as before
    /// versions). Never a newer version.
    IfOlderOrOtherText,
}

/// What one master held and what the loader did about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MasterLibrary {
    /// `host:port` on Cluster; empty for the one master otherwise.
    pub master: String,
    /// The version found there (`None`: no library).
    pub found: Option<u32>,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// This loader's text was loaded (none, or an older one, or another text).
    Loaded,
    /// The same version was there and stays.
    Kept,
    /// A newer version was there and stays: this loader is the older one.
    KeptNewer,
}

/// What a master holds: `None` without a library, else its code.
async fn listed<C: FunctionInterface + Send + Sync>(
    client: &C,
) -> Result<Option<String>, RedisFailure> {
    let reply: Value = client
        .function_list(Some(LIBRARY_NAME), true)
        .await
        .map_err(|e| classify(&e))?;
    library_code(&reply)
}

/// The code of the first library in a `FUNCTION LIST … WITHCODE` reply (RESP2: a
/// flat array of names and values per library; RESP3: a map).
fn library_code(reply: &Value) -> Result<Option<String>, RedisFailure> {
    let unexpected = || RedisFailure::Rejected("unexpected FUNCTION LIST reply".into());
    let libs = match reply {
        Value::Array(libs) => libs,
        Value::Null => return Ok(None),
        _ => return Err(unexpected()),
    };
    let Some(lib) = libs.first() else {
        return Ok(None);
    };
    let code = match lib {
        Value::Array(fields) => fields
            .chunks(2)
            .find(|kv| kv[0].as_str().as_deref() == Some("library_code"))
            .and_then(|kv| kv.get(1))
            .and_then(|v| v.as_str().map(|s| s.into_owned())),
        Value::Map(map) => map
            .iter()
            .find(|(k, _)| k.as_str() == Some("library_code"))
            .and_then(|(_, v)| v.as_str().map(|s| s.into_owned())),
        _ => None,
    };
    code.map(Some).ok_or_else(unexpected)
}

/// The masters to look at: each primary on Cluster, else the one the client
/// talks to (through Sentinel: the current master).
fn masters(client: &Client) -> Option<Vec<Server>> {
    client.is_clustered().then(|| {
        client
            .cached_cluster_state()
            .map(|s| s.unique_primary_nodes())
            .unwrap_or_default()
    })
}

/// The decision for one master holding `found` (`None`: nothing), with `ours`
/// being this loader's text.
pub fn decide(found: Option<&str>, ours: &str, replace: Replace) -> Outcome {
    let Some(theirs) = found else {
        return Outcome::Loaded;
    };
    let (v, mine) = (version_of(theirs), version_of(ours));
    if v > mine {
        Outcome::KeptNewer
    } else if v < mine || (replace == Replace::IfOlderOrOtherText && theirs != ours) {
        Outcome::Loaded
    } else {
        Outcome::Kept
    }
}

/// Loads `library` on every master where [`decide`] says so, with
/// `FUNCTION LOAD REPLACE`, and reports what each master held. The first failure
/// (reading or loading) is returned after every master was tried.
///
/// Two loaders may race: both read an older (or no) library, then both load, and
/// the last `REPLACE` wins even when it is the older text. Redis has no
/// conditional `FUNCTION LOAD` (a function cannot load a library, and `WATCH`
/// covers keys only), so the end state is made right afterwards: every node
/// re-reads the version every few seconds and loads its own again over an older
/// one (`Replace::IfOlder`), so the newest loader present wins within one check.
pub async fn ensure_library(
    client: &Client,
    library: &str,
    replace: Replace,
) -> Result<Vec<MasterLibrary>, RedisFailure> {
    let mut report = Vec::new();
    let mut first_error = None;
    let targets: Vec<Option<Server>> = match masters(client) {
        Some(p) => p.into_iter().map(Some).collect(),
        None => vec![None],
    };
    for target in targets {
        let master = target.as_ref().map(|s| s.to_string()).unwrap_or_default();
        let node = target.map(|s| client.with_cluster_node(s));
        let found = match &node {
            Some(n) => listed(n).await,
            None => listed(client).await,
        };
        let found = match found {
            Ok(f) => f,
            Err(e) => {
                first_error.get_or_insert(e);
                continue;
            }
        };
        let outcome = decide(found.as_deref(), library, replace);
        if outcome == Outcome::Loaded {
            let loaded = match &node {
                Some(n) => n.function_load::<Value, _>(true, library).await,
                None => client.function_load::<Value, _>(true, library).await,
            };
            if let Err(e) = loaded {
                first_error.get_or_insert(classify(&e));
                continue;
            }
        }
        report.push(MasterLibrary {
            master,
            found: found.as_deref().map(version_of),
            outcome,
        });
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(report),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: &str = "#!lua name=sluice\n-- sluice-library-version: 1\n--\n-- text\n\nlocal HISTORY_SIZE = 100\nredis.register_function('f', f)\n";

    #[test]
    fn the_version_is_read_from_the_header_line() {
        assert_eq!(version_of(V1), 1);
        assert_eq!(
            version_of("#!lua name=sluice\n--\n-- about\n--sluice-library-version: 17\n"),
            0,
            "the prefix is exact"
        );
        assert_eq!(
            version_of(
                "#!lua name=sluice\n--\n-- about\n-- sluice-library-version:   17  \nlocal x = 1\n"
            ),
            17
        );
    }

    #[test]
    fn a_library_without_the_line_or_with_a_bad_number_is_version_0() {
        assert_eq!(
            version_of("#!lua name=sluice\n-- Sluice's library\nlocal x = 1\n"),
            0
        );
        assert_eq!(
            version_of("#!lua name=sluice\n-- sluice-library-version: two\n"),
            0
        );
        assert_eq!(
            version_of("#!lua name=sluice\n-- sluice-library-version: -1\n"),
            0
        );
        assert_eq!(version_of(""), 0);
    }

    #[test]
    fn a_version_line_after_the_header_comments_does_not_count() {
        let late = "#!lua name=sluice\n-- about\nlocal x = 1\n-- sluice-library-version: 9\n";
        assert_eq!(version_of(late), 0);
    }

    #[test]
    fn history_settings_do_not_change_the_version_or_the_decision() {
        let other = V1.replace("HISTORY_SIZE = 100", "HISTORY_SIZE = 5");
        assert_eq!(version_of(&other), version_of(V1));
        assert_eq!(decide(Some(&other), V1, Replace::IfOlder), Outcome::Kept);
        // A node starting brings its own settings (same version, other text).
        assert_eq!(
            decide(Some(&other), V1, Replace::IfOlderOrOtherText),
            Outcome::Loaded
        );
        assert_eq!(
            decide(Some(V1), V1, Replace::IfOlderOrOtherText),
            Outcome::Kept
        );
    }

    #[test]
    fn only_a_missing_or_older_library_is_replaced_never_a_newer_one() {
        let v0 = V1.replace("-- sluice-library-version: 1\n", "");
        let v2 = with_version(V1, 2);
        for replace in [Replace::IfOlder, Replace::IfOlderOrOtherText] {
            assert_eq!(decide(None, V1, replace), Outcome::Loaded);
            assert_eq!(decide(Some(&v0), V1, replace), Outcome::Loaded);
            assert_eq!(decide(Some(&v2), V1, replace), Outcome::KeptNewer);
            // The older loader's view of the same pair.
            assert_eq!(decide(Some(V1), &v0, replace), Outcome::KeptNewer);
        }
    }

    #[test]
    fn with_version_rewrites_or_adds_the_line_and_keeps_the_rest() {
        let v5 = with_version(V1, 5);
        assert_eq!(version_of(&v5), 5);
        assert_eq!(v5, V1.replace("version: 1", "version: 5"));
        let v0 = V1.replace("-- sluice-library-version: 1\n", "");
        let added = with_version(&v0, 3);
        assert_eq!(version_of(&added), 3);
        assert!(added.starts_with("#!lua name=sluice\n-- sluice-library-version: 3\n"));
        assert_eq!(added.lines().count(), v0.lines().count() + 1);
    }

    #[test]
    fn the_code_is_found_in_a_resp2_listing_and_an_empty_one_is_none() {
        let s = |t: &str| Value::String(t.into());
        let lib = Value::Array(vec![
            s("library_name"),
            s("sluice"),
            s("engine"),
            s("LUA"),
            s("functions"),
            Value::Array(vec![]),
            s("library_code"),
            s(V1),
        ]);
        assert_eq!(
            library_code(&Value::Array(vec![lib])).unwrap().as_deref(),
            Some(V1)
        );
        assert_eq!(library_code(&Value::Array(vec![])).unwrap(), None);
        let no_code = Value::Array(vec![Value::Array(vec![s("library_name"), s("sluice")])]);
        assert!(matches!(
            library_code(&no_code),
            Err(RedisFailure::Rejected(_))
        ));
    }
}
