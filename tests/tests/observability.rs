//! What an operator sees: after real traffic, `/metrics` counts heartbeats,
//! subscription changes, errors and close codes by code, durations, mailbox depth,
//! frame sizes and the process's memory and descriptors, with no topic in any label;
//! every metric the Prometheus rules and the Grafana dashboard name exists; and with
//! `SLUICE_LOG_FORMAT=json` every log line is JSON, with connect, disconnect and
//! parse-error lines carrying their fields.

use std::{
    collections::BTreeSet,
    io::{BufRead, BufReader},
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use serde_json::{json, Value};
use sluice_tests::{
    eventually, process::sluice_binary, security::connect_with, start_node, TestNode,
};

/// Every `sluice_…` name in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("sluice_") {
        let tail = &rest[i..];
        let len = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
            .unwrap_or(tail.len());
        // `sluice_` inside a longer word (e.g. a recording rule's `x_sluice_y`) is no
        // metric of ours.
        let boundary = i == 0 || !rest.as_bytes()[i - 1].is_ascii_alphanumeric();
        if boundary && len > "sluice_".len() {
            names.insert(tail[..len].trim_end_matches('_').to_owned());
        }
        rest = &tail[len.max(1)..];
    }
    names
}

/// Sample names and `# TYPE` declarations of a scrape: `(samples, histograms, all)`.
fn exported(scrape: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut samples = BTreeSet::new();
    let mut histograms = BTreeSet::new();
    for line in scrape.lines() {
        if let Some(decl) = line.strip_prefix("# TYPE ") {
            let mut parts = decl.split_whitespace();
            if let (Some(name), Some("histogram")) = (parts.next(), parts.next()) {
                histograms.insert(name.to_owned());
            }
        } else if !line.starts_with('#') && !line.is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            samples.insert(line[..end].to_owned());
        }
    }
    (samples, histograms)
}

fn value(scrape: &str, sample: &str) -> f64 {
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{sample} missing from the scrape"))
}

/// One subscribe, one delivery, one unsubscribe, one bad frame, a heartbeat, then a
/// normal close by the client; returns the scrape once the session has ended.
async fn traffic(node: &TestNode) -> String {
    let mut c = node.client().await;
    c.subscribe(json!({"type": "subscribe", "topic": "prices.OBS1"}))
        .await;
    node.publish("prices.OBS1", json!({"bid": 1})).await;
    assert_eq!(c.recv_pubs(1).await[0]["seq"], 1);
    c.send_json(json!({"type": "unsubscribe", "topic": "prices.OBS1"}))
        .await;
    let ack = c.recv().await.expect("unsubscribe ack");
    assert_eq!(ack["payload"]["was_subscribed"], true, "{ack}");
    c.send_text("{not json").await;
    let err = c.recv().await.expect("error frame");
    assert_eq!(err["code"], "INVALID_MESSAGE", "{err}");
    node.wait_metric("sluice_heartbeats_sent_total", 1.0, Duration::from_secs(20))
        .await;
    c.close().await;
    node.wait_sessions(0, Duration::from_secs(10)).await;
    node.get("/metrics", None).await.1
}

#[tokio::test]
async fn metrics_count_what_sessions_do_with_fixed_labels_only() {
    let node = start_node(|c| c.heartbeat_interval = Duration::from_secs(1)).await;
    let scrape = traffic(&node).await;
    for (sample, want) in [
        ("sluice_subscribes_total", 1.0),
        ("sluice_unsubscribes_total", 1.0),
        ("sluice_errors_total{code=\"INVALID_MESSAGE\"}", 1.0),
        ("sluice_errors_total{code=\"FORBIDDEN\"}", 0.0),
        // The client closed: no close frame from the node.
        ("sluice_disconnects_total{code=\"none\"}", 1.0),
        ("sluice_disconnects_total{code=\"4008\"}", 0.0),
        ("sluice_connection_duration_seconds_count", 1.0),
        ("sluice_connections_max", 100_000.0),
        ("sluice_ready", 1.0),
    ] {
        assert_eq!(value(&scrape, sample), want, "{sample}");
    }
    // connected, ack, delta, ack, error and at least one heartbeat.
    assert!(value(&scrape, "sluice_outbound_message_bytes_count") >= 6.0);
    assert!(value(&scrape, "sluice_mailbox_depth_count") >= 1.0);
    assert!(value(&scrape, "sluice_process_resident_memory_bytes") > 1e6);
    assert!(value(&scrape, "sluice_process_open_fds") >= 3.0);
    assert!(
        !scrape.contains("OBS1"),
        "a topic name leaked into a label:\n{scrape}"
    );
}

#[tokio::test]
async fn every_metric_the_rules_and_the_dashboard_name_is_exported() {
    let node = start_node(|c| c.heartbeat_interval = Duration::from_secs(1)).await;
    let scrape = traffic(&node).await;
    let (samples, histograms) = exported(&scrape);
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let mut files = Vec::new();
    for dir in ["prometheus", "grafana"] {
        for entry in std::fs::read_dir(deploy.join(dir)).unwrap() {
            files.push(entry.unwrap().path());
        }
    }
    files.sort();
    assert!(files.len() >= 2, "{files:?}");
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        if file.extension().is_some_and(|e| e == "json") {
            let dash: Value = serde_json::from_str(&text).unwrap();
            assert!(!dash["panels"].as_array().unwrap().is_empty());
        }
        let names = metric_names(&text);
        assert!(names.len() >= 10, "{}: only {names:?}", file.display());
        for name in names {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .filter(|b| histograms.contains(*b));
            let known = samples.contains(&name) || histograms.contains(&name) || base.is_some();
            assert!(
                known,
                "{} names {name}, which /metrics does not export",
                file.display()
            );
        }
    }
}

/// Starts the `sluice` binary with JSON logs; returns the child and its port.
fn start_json_node() -> (std::process::Child, u16) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let child = Command::new(sluice_binary())
        .env_clear()
        .env("SLUICE_BIND", format!("127.0.0.1:{port}"))
        .env("SLUICE_NODE_ID", "json-logs")
        .env("SLUICE_LOG_FORMAT", "json")
        .env("SLUICE_MAX_MESSAGE_BYTES", "1024")
        .env("RUST_LOG", "info,sluice_node::session=debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn sluice");
    (child, port)
}

#[tokio::test]
async fn json_logs_carry_connect_disconnect_and_parse_error_lines() {
    let (mut child, port) = start_json_node();
    let ready = format!("http://127.0.0.1:{port}/ready");
    eventually(Duration::from_secs(30), "the node is ready", || {
        let url = ready.clone();
        async move { reqwest::get(&url).await.is_ok_and(|r| r.status() == 200) }
    })
    .await;
    let url = format!("ws://127.0.0.1:{port}/ws");
    let mut c = connect_with(
        &url,
        &[
            ("x-device-type", "iPhone15,2"),
            ("x-client-version", "7.1.0"),
        ],
    )
    .await
    .unwrap();
    let id = c.connected["connection_id"].as_str().unwrap().to_owned();
    c.send_text("{not json").await;
    assert_eq!(c.recv().await.unwrap()["code"], "INVALID_MESSAGE");
    // Over SLUICE_MAX_MESSAGE_BYTES: the node closes with 1009.
    c.send_text(&"x".repeat(2048)).await;
    assert_eq!(c.expect_close().await, sluice_tests::Closed::Code(1009));
    // Refused at the door, before any session: no connect line for it.
    let bad = connect_with(&url, &[("x-background-mode", "maybe")]).await;
    assert_eq!(bad.err().map(|r| r.status), Some(400));

    // Stop the node and read its log to the end: it drains first, so every line of
    // every session is in there.
    let lines_until = |child: &mut std::process::Child| {
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let out = child.stdout.take().unwrap();
        BufReader::new(out)
            .lines()
            .map(Result::unwrap)
            .collect::<Vec<_>>()
    };
    let lines = tokio::task::spawn_blocking(move || {
        let lines = lines_until(&mut child);
        let _ = child.wait();
        lines
    })
    .await
    .unwrap();
    let events: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let find = |msg: &str| {
        events
            .iter()
            .filter(|e| e["message"] == msg && e["connection_id"] == id.as_str())
            .cloned()
            .collect::<Vec<_>>()
    };
    let connected = find("connected");
    assert_eq!(connected.len(), 1, "{lines:#?}");
    let c0 = &connected[0];
    assert_eq!(c0["device_type"], "iPhone15,2");
    assert_eq!(c0["client_version"], "7.1.0");
    assert_eq!(c0["user"], "-");
    assert_eq!(c0["background"], false);
    assert!(
        c0["client"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{c0}"
    );
    let gone = find("disconnected");
    assert_eq!(gone.len(), 1, "{lines:#?}");
    assert_eq!(gone[0]["close_code"], "1009");
    assert!(
        gone[0]["duration_ms"].as_i64().is_some_and(|d| d >= 0),
        "{}",
        gone[0]
    );
    assert_eq!(gone[0]["client"], c0["client"]);
    let parse_errors: Vec<&Value> = events
        .iter()
        .filter(|e| e["message"] == "bad client frame")
        .collect();
    assert_eq!(parse_errors.len(), 1, "{lines:#?}");
    assert_eq!(parse_errors[0]["code"], "INVALID_MESSAGE");
    assert_eq!(
        events
            .iter()
            .filter(|e| e["message"] == "connected")
            .count(),
        1,
        "the refused upgrade logged no connect line"
    );
}

#[tokio::test]
async fn a_bad_log_format_stops_start_up_naming_the_variable() {
    let out = Command::new(sluice_binary())
        .env_clear()
        .env("SLUICE_LOG_FORMAT", "xml")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("SLUICE_LOG_FORMAT") && err.contains("json"),
        "{err}"
    );
}
