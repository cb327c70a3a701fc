//! Rolling upgrades never downgrade the `sluice` function library: a node (and an
//! engine's `Publisher`) loads its library only where none is loaded or an older
//! version is, leaves a newer one in place (and still works with it), and a
//! running node repairs a library an older node put back, within its check
//! period. One `redis-server` process on loopback per test.

use std::time::Duration;

use fred::{
    clients::Client,
    interfaces::{ClientLike, FunctionInterface},
    types::{config::Config as RedisConfig, Builder, Value},
};
use serde_json::json;
use sluice_common::{
    function_library::{version_of, with_version, LIBRARY_VERSION, VERSION_LINE},
    publisher::{PublishError, Publisher},
    redis_client::RedisFailure,
};
use sluice_node::broker::redis::library_source;
use sluice_tests::{
    eventually,
    redis_topology::{free_port, temp_dir, RedisProcess},
    start_node, TestNode,
};

/// The node's history settings in these tests (its library text depends on them).
const HISTORY_SIZE: usize = 300;
const HISTORY_TTL: Duration = Duration::from_secs(900);

/// The node checks the library every 4 health probes of 500 ms: 2 s.
const CHECK_PERIOD: Duration = Duration::from_secs(2);

fn ours() -> String {
    library_source(HISTORY_SIZE, HISTORY_TTL)
}

/// A library as a node from before versions loads it: no version line.
fn unversioned() -> String {
    ours()
        .lines()
        .filter(|l| !l.starts_with(VERSION_LINE))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A newer build's library (its own history settings, too).
fn newer() -> String {
    with_version(
        &library_source(50, Duration::from_secs(60)),
        LIBRARY_VERSION + 1,
    )
}

fn start_redis() -> RedisProcess {
    RedisProcess::data(&temp_dir("libver"), free_port(), &[])
}

fn url(redis: &RedisProcess) -> String {
    format!("redis://127.0.0.1:{}", redis.port)
}

async fn client(redis: &RedisProcess) -> Client {
    let c = Builder::from_config(RedisConfig::from_url(&url(redis)).expect("url"))
        .build()
        .expect("client");
    c.init().await.expect("connect to the test redis");
    c
}

async fn node_on(redis: &RedisProcess) -> TestNode {
    let url = url(redis);
    start_node(move |c| {
        c.redis_url = Some(url);
        c.history_size = HISTORY_SIZE;
        c.history_ttl = HISTORY_TTL;
    })
    .await
}

/// `FUNCTION LOAD REPLACE`, as any loader (an older node) does.
async fn load(c: &Client, code: &str) {
    c.function_load::<Value, _>(true, code)
        .await
        .expect("FUNCTION LOAD REPLACE");
}

/// The loaded library's code (`None`: no library).
async fn loaded_code(c: &Client) -> Option<String> {
    let reply: Value = c
        .function_list(Some("sluice"), true)
        .await
        .expect("FUNCTION LIST");
    let Value::Array(libs) = reply else {
        panic!("FUNCTION LIST answered {reply:?}")
    };
    let lib = libs.into_iter().next()?;
    let Value::Array(fields) = lib else {
        panic!("a library entry {lib:?}")
    };
    fields
        .chunks(2)
        .find(|kv| kv[0].as_str().as_deref() == Some("library_code"))
        .map(|kv| kv[1].as_str().expect("code is text").into_owned())
}

async fn loaded_version(c: &Client) -> Option<u32> {
    loaded_code(c).await.map(|code| version_of(&code))
}

/// A subscriber gets what is published through the node and straight through
/// the function: the node works with whatever library is loaded.
async fn serves_publishes_and_subscribes(node: &TestNode, c: &Client, topic: &str) {
    let mut ws = node.client().await;
    ws.subscribe_to(topic).await;
    let (seq, epoch) = node.publish(topic, json!({"i": 1})).await;
    assert_eq!(seq, 1);
    let (seq2, epoch2): (u64, String) = c
        .fcall("sluice_publish", topic, vec![r#"{"i":2}"#])
        .await
        .expect("FCALL sluice_publish");
    assert_eq!((seq2, epoch2.as_str()), (2, epoch.as_str()));
    let pubs = ws.recv_pubs(2).await;
    let got: Vec<(u64, i64)> = pubs
        .iter()
        .map(|p| {
            (
                p["seq"].as_u64().expect("seq"),
                p["payload"]["i"].as_i64().expect("payload.i"),
            )
        })
        .collect();
    assert_eq!(got, vec![(1, 1), (2, 2)]);
}

#[test]
fn the_test_libraries_have_the_versions_they_claim() {
    assert_eq!(version_of(&ours()), LIBRARY_VERSION);
    assert_eq!(version_of(&unversioned()), 0);
    assert_eq!(version_of(&newer()), LIBRARY_VERSION + 1);
}

#[tokio::test]
async fn a_node_started_over_a_newer_library_leaves_it_in_place_and_serves() {
    let redis = start_redis();
    let c = client(&redis).await;
    load(&c, &newer()).await;
    let node = node_on(&redis).await;
    assert_eq!(
        loaded_code(&c).await.as_deref(),
        Some(newer().as_str()),
        "the newer library (with its own history settings) stays"
    );
    serves_publishes_and_subscribes(&node, &c, "libver.newer").await;
    // Nor do the periodic checks replace it.
    tokio::time::sleep(CHECK_PERIOD * 2 + Duration::from_millis(500)).await;
    assert_eq!(loaded_version(&c).await, Some(LIBRARY_VERSION + 1));
    node.shutdown().await;
}

#[tokio::test]
async fn a_node_started_over_an_unversioned_library_replaces_it() {
    let redis = start_redis();
    let c = client(&redis).await;
    load(&c, &unversioned()).await;
    assert_eq!(loaded_version(&c).await, Some(0));
    let node = node_on(&redis).await;
    assert_eq!(loaded_code(&c).await.as_deref(), Some(ours().as_str()));
    serves_publishes_and_subscribes(&node, &c, "libver.older").await;
    node.shutdown().await;
}

#[tokio::test]
async fn an_older_library_loaded_under_a_running_node_is_replaced_within_a_check() {
    let redis = start_redis();
    let c = client(&redis).await;
    let node = node_on(&redis).await;
    assert_eq!(loaded_version(&c).await, Some(LIBRARY_VERSION));
    // An older node restarts and loads its own (what nodes before versions do).
    load(&c, &unversioned()).await;
    assert_eq!(loaded_version(&c).await, Some(0));
    let c2 = c.clone();
    eventually(
        CHECK_PERIOD * 2 + Duration::from_secs(1),
        "the node loads its own library again over the older one",
        move || {
            let c = c2.clone();
            async move { loaded_version(&c).await == Some(LIBRARY_VERSION) }
        },
    )
    .await;
    assert_eq!(loaded_code(&c).await.as_deref(), Some(ours().as_str()));
    // A newer one loaded while it runs stays.
    load(&c, &newer()).await;
    tokio::time::sleep(CHECK_PERIOD * 2 + Duration::from_millis(500)).await;
    assert_eq!(loaded_code(&c).await.as_deref(), Some(newer().as_str()));
    serves_publishes_and_subscribes(&node, &c, "libver.running").await;
    node.shutdown().await;
}

#[tokio::test]
async fn a_publisher_loads_a_missing_library_but_never_over_a_newer_one() {
    let redis = start_redis();
    let c = client(&redis).await;
    let publisher = Publisher::connect(&url(&redis), 1)
        .await
        .expect("publisher connects")
        .with_library(ours());

    // No library: the publisher loads its own and publishes.
    let first = publisher
        .publish("libver.engine", &json!({"i": 1}))
        .await
        .expect("publish after loading the library");
    assert_eq!(first.seq, 1);
    assert_eq!(loaded_code(&c).await.as_deref(), Some(ours().as_str()));

    // A newer library that lacks the publish function (only so that the publisher
    // takes its load path: real newer libraries keep every function). An older
    // loader would replace it; the publisher keeps it and reports the call failed.
    let newer_without_publish = with_version(
        "#!lua name=sluice\n-- a newer library\nredis.register_function('sluice_other', function() return 1 end)\n",
        LIBRARY_VERSION + 1,
    );
    load(&c, &newer_without_publish).await;
    let err = publisher
        .publish("libver.engine", &json!({"i": 2}))
        .await
        .expect_err("the function is not in the newer library");
    assert!(
        matches!(err, PublishError::Redis(RedisFailure::NotLoaded)),
        "{err}"
    );
    assert_eq!(
        loaded_code(&c).await.as_deref(),
        Some(newer_without_publish.as_str()),
        "the publisher did not replace the newer library"
    );

    // An older one (from a node before versions) missing the function is replaced.
    let older_without_publish =
        "#!lua name=sluice\nredis.register_function('sluice_other', function() return 1 end)\n";
    load(&c, older_without_publish).await;
    let again = publisher
        .publish("libver.engine", &json!({"i": 3}))
        .await
        .expect("publish after replacing the older library");
    assert_eq!(again.seq, 2);
    assert_eq!(loaded_version(&c).await, Some(LIBRARY_VERSION));
}
