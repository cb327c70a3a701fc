//! The session actor driven through channels instead of a socket.

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use axum::extract::ws::Message;
use futures_util::{Sink, Stream};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::{Session, SessionEnd, SessionParams};
use crate::{
    auth::Authenticator,
    broker::{memory::MemoryBroker, Broker},
    config::Config,
    hub::Hub,
    metrics::Metrics,
    session::SessionInfo,
    state::AppState,
};

/// A socket made of two channels: what the test sends, and what the session wrote.
struct ChanSocket {
    incoming: mpsc::UnboundedReceiver<Message>,
    outgoing: mpsc::UnboundedSender<Message>,
}

impl Stream for ChanSocket {
    type Item = Result<Message, std::io::Error>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.incoming.poll_recv(cx).map(|m| m.map(Ok))
    }
}

impl Sink<Message> for ChanSocket {
    type Error = std::io::Error;
    fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }
    fn start_send(self: Pin<&mut Self>, item: Message) -> Result<(), Self::Error> {
        self.outgoing
            .send(item)
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::BrokenPipe))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }
    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }
}

struct Harness {
    to_session: mpsc::UnboundedSender<Message>,
    from_session: mpsc::UnboundedReceiver<Message>,
    state: Arc<AppState>,
    task: tokio::task::JoinHandle<SessionEnd>,
}

fn app(tweak: impl FnOnce(&mut Config)) -> Arc<AppState> {
    let mut config = Config::for_tests();
    tweak(&mut config);
    let metrics = Arc::new(Metrics::new());
    let hub = Arc::new(Hub::new(metrics.clone(), usize::MAX));
    let broker: Arc<dyn Broker> = Arc::new(MemoryBroker::new(
        hub.clone(),
        crate::publication::Origin::new(&config.node_id),
        config.history_size,
        config.history_ttl,
    ));
    hub.attach(&broker);
    let auth = Authenticator::from_config(&config).expect("no key configured");
    Arc::new(AppState::new(config, hub, broker, metrics, auth))
}

/// Session `id` of `state` over `socket`: in the foreground, with `queue` slots and
/// nothing subscribed on connect.
fn new_session(state: &AppState, id: u64, queue: usize, socket: ChanSocket) -> Session<ChanSocket> {
    let info = Arc::new(SessionInfo::new(([127, 0, 0, 1], 1).into(), None, queue));
    let params = SessionParams {
        id,
        info,
        initial: Vec::new(),
        background: false,
        identity: None,
    };
    Session::new(state.session.clone(), socket, params)
}

fn start(state: Arc<AppState>) -> Harness {
    let (to_session, incoming) = mpsc::unbounded_channel();
    let (outgoing, from_session) = mpsc::unbounded_channel();
    let socket = ChanSocket { incoming, outgoing };
    let session = new_session(&state, 1, state.config.queue_size, socket);
    Harness {
        to_session,
        from_session,
        state,
        task: tokio::spawn(session.run()),
    }
}

impl Harness {
    fn send(&self, v: Value) {
        self.to_session
            .send(Message::Text(v.to_string().into()))
            .expect("session alive");
    }

    async fn next_json(&mut self) -> Value {
        next_json(&mut self.from_session).await
    }
}

/// The next text frame a session wrote, as JSON (pings skipped).
async fn next_json(from_session: &mut mpsc::UnboundedReceiver<Message>) -> Value {
    loop {
        match from_session.recv().await.expect("session wrote something") {
            Message::Text(t) => return serde_json::from_str(t.as_str()).expect("JSON"),
            Message::Ping(_) => continue,
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn the_first_frame_is_connected_and_pings_are_answered() {
    let mut h = start(app(|_| {}));
    let first = h.next_json().await;
    assert_eq!(first["type"], "connected");
    assert_eq!(first["payload"]["protocol"], 1);
    h.send(json!({"type": "ping", "correlation_id": "c", "ts": 1}));
    let pong = h.next_json().await;
    assert_eq!(
        (pong["type"].as_str(), pong["correlation_id"].as_str()),
        (Some("pong"), Some("c"))
    );
}

#[tokio::test(start_paused = true)]
async fn heartbeats_tick_and_a_silent_client_times_out() {
    let mut h = start(app(|c| {
        c.heartbeat_interval = Duration::from_secs(10);
        c.connection_timeout = Duration::from_secs(25);
    }));
    assert_eq!(h.next_json().await["type"], "connected");
    assert_eq!(h.next_json().await["type"], "heartbeat");
    assert_eq!(h.next_json().await["type"], "heartbeat");
    let end = h.task.await.expect("session task");
    assert_eq!(end, SessionEnd::IdleTimeout);
    let close = loop {
        match h.from_session.recv().await {
            Some(Message::Close(f)) => break f,
            Some(_) => continue,
            None => panic!("no close frame"),
        }
    };
    assert_eq!(close.map(|f| f.code), Some(1000));
}

#[tokio::test(start_paused = true)]
async fn live_publications_arrive_in_order_after_the_ack() {
    let mut h = start(app(|_| {}));
    assert_eq!(h.next_json().await["type"], "connected");
    h.send(json!({"type": "subscribe", "topic": "prices.A"}));
    let ack = h.next_json().await;
    assert_eq!(ack["payload"]["head_seq"], 0);
    let topic = sluice_common::Topic::parse("prices.A").expect("topic");
    for i in 0..5 {
        let payload = i.to_string();
        h.state
            .broker
            .publish(crate::broker::PublishRequest {
                topic: &topic,
                kind: sluice_common::publisher::PublishKind::Delta,
                payload_json: &payload,
                snapshot_json: None,
                meta_json: None,
            })
            .await
            .expect("publish");
    }
    let mut seqs = Vec::new();
    for _ in 0..5 {
        seqs.push(h.next_json().await["seq"].as_u64().expect("seq"));
    }
    assert_eq!(seqs, [1, 2, 3, 4, 5]);
}

#[test]
fn an_idle_session_task_is_small() {
    // The future a session runs as: its size is per-connection memory.
    let (_to, incoming) = mpsc::unbounded_channel();
    let (outgoing, _from) = mpsc::unbounded_channel();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    let state = rt.block_on(async { app(|_| {}) });
    let session = new_session(&state, 1, 16, ChanSocket { incoming, outgoing });
    let fut = session.run();
    let size = std::mem::size_of_val(&fut);
    println!("session future: {size} bytes");
    assert!(size <= 640, "the session future is {size} bytes");
}

async fn publish(
    h: &Harness,
    topic: &str,
    kind: sluice_common::publisher::PublishKind,
    payload: &str,
) {
    publish_on(&h.state, topic, kind, payload).await;
}

async fn publish_on(
    state: &AppState,
    topic: &str,
    kind: sluice_common::publisher::PublishKind,
    payload: &str,
) {
    let topic = sluice_common::Topic::parse(topic).expect("topic");
    state
        .broker
        .publish(crate::broker::PublishRequest {
            topic: &topic,
            kind,
            payload_json: payload,
            snapshot_json: None,
            meta_json: None,
        })
        .await
        .expect("publish");
}

fn tag(v: &Value) -> String {
    format!(
        "{}/{}/{}",
        v["type"].as_str().unwrap_or("?"),
        v["topic"].as_str().unwrap_or("?"),
        v["seq"]
    )
}

#[tokio::test(start_paused = true)]
async fn a_backlogged_session_writes_its_alerts_before_queued_deltas_of_other_topics() {
    use sluice_common::publisher::PublishKind::{Alert, Delta};
    let mut h = start(app(|_| {}));
    assert_eq!(h.next_json().await["type"], "connected");
    h.send(json!({"type": "subscribe", "topics": ["prices.A", "news.flash"]}));
    assert_eq!(h.next_json().await["type"], "ack");
    assert_eq!(h.next_json().await["type"], "ack");
    // The session task does not run while this one publishes (one thread, no
    // await that yields): everything below waits in its mailbox, as for a
    // consumer that fell behind.
    for i in 1..=10 {
        publish(&h, "prices.A", Delta, &i.to_string()).await;
    }
    publish(&h, "news.flash", Delta, "1").await;
    publish(&h, "prices.A", Delta, "11").await;
    publish(&h, "news.flash", Alert, "2").await;
    let mut order = Vec::new();
    for _ in 0..13 {
        order.push(tag(&h.next_json().await));
    }
    let mut want = vec![
        "delta/news.flash/1".to_owned(),
        "alert/news.flash/2".to_owned(),
    ];
    want.extend((1..=11).map(|i| format!("delta/prices.A/{i}")));
    assert_eq!(
        order, want,
        "the alert (with its topic's earlier delta) first, then the backlog in seq order"
    );
}

/// Starts session `id` on `state`, writing into the shared `outgoing` (so the
/// order in which sessions write is the order the test reads); returns the sender
/// of its incoming frames.
fn start_sharing(
    state: &Arc<AppState>,
    id: u64,
    outgoing: mpsc::UnboundedSender<Message>,
) -> mpsc::UnboundedSender<Message> {
    let (to_session, incoming) = mpsc::unbounded_channel();
    tokio::spawn(new_session(state, id, 64, ChanSocket { incoming, outgoing }).run());
    to_session
}

/// Alerts first across sessions: the runtime runs woken tasks in the order they
/// were woken, so session A (woken for a delta) would write before B (woken for a
/// delta, then given an alert). A steps back once, and B writes first.
#[tokio::test(start_paused = true)]
async fn a_session_with_only_deltas_lets_one_holding_an_alert_write_first() {
    use sluice_common::publisher::PublishKind::{Alert, Delta};
    let state = app(|_| {});
    let (outgoing, mut from_sessions) = mpsc::unbounded_channel();
    let a = start_sharing(&state, 1, outgoing.clone());
    let b = start_sharing(&state, 2, outgoing);
    let rx = &mut from_sessions;
    assert_eq!(next_json(rx).await["type"], "connected");
    assert_eq!(next_json(rx).await["type"], "connected");
    let send = |to: &mpsc::UnboundedSender<Message>, v: Value| {
        to.send(Message::Text(v.to_string().into()))
            .expect("session alive")
    };
    send(&a, json!({"type": "subscribe", "topic": "prices.A"}));
    assert_eq!(next_json(rx).await["type"], "ack");
    send(
        &b,
        json!({"type": "subscribe", "topics": ["prices.B", "news.B"]}),
    );
    assert_eq!(next_json(rx).await["type"], "ack");
    assert_eq!(next_json(rx).await["type"], "ack");
    // Nothing yields while the test publishes: A is woken first, then B, whose
    // alert comes last.
    publish_on(&state, "prices.A", Delta, "1").await;
    publish_on(&state, "prices.B", Delta, "1").await;
    publish_on(&state, "news.B", Alert, "1").await;
    let mut order = Vec::new();
    for _ in 0..3 {
        order.push(tag(&next_json(rx).await));
    }
    assert_eq!(
        order,
        ["alert/news.B/1", "delta/prices.B/1", "delta/prices.A/1"],
        "B's alert (then its delta) before A's delta"
    );
}

#[tokio::test(start_paused = true)]
async fn in_background_mode_an_alert_is_not_conflated_or_held_for_the_tick() {
    use sluice_common::publisher::PublishKind::{Alert, Delta};
    let mut h = start(app(|c| c.conflate = Duration::from_secs(60)));
    assert_eq!(h.next_json().await["type"], "connected");
    h.send(json!({"type": "subscribe", "topic": "prices.A"}));
    assert_eq!(h.next_json().await["type"], "ack");
    h.send(json!({"type": "background_mode", "enabled": true}));
    // Let the session take the frame (and run its first conflation tick).
    tokio::time::sleep(Duration::from_millis(10)).await;
    let t0 = tokio::time::Instant::now();
    for i in 1..=5 {
        publish(&h, "prices.A", Delta, &i.to_string()).await;
    }
    publish(&h, "prices.A", Alert, "6").await;
    publish(&h, "prices.A", Delta, "7").await;
    let mut got = Vec::new();
    while got.len() < 2 {
        let v = h.next_json().await;
        if v["type"] == "ack" || v["type"] == "heartbeat" {
            continue; // background_mode's ack
        }
        got.push(tag(&v));
    }
    assert_eq!(
        got,
        ["delta/prices.A/5", "alert/prices.A/6"],
        "the newest conflated delta, then the alert"
    );
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "not held for the 60 s tick: {:?}",
        t0.elapsed()
    );
    // Delta 7 waits for the tick, conflated.
    let v = loop {
        let v = h.next_json().await;
        if v["type"] != "heartbeat" {
            break v;
        }
    };
    assert_eq!(tag(&v), "delta/prices.A/7");
    assert!(
        t0.elapsed() >= Duration::from_secs(59),
        "{:?}",
        t0.elapsed()
    );
}

/// Entering background mode a while after the session started: the first conflated
/// flush is one whole period after the `background_mode` frame. (The deadline used
/// to still hold the session's start, so a tick fell at once or part-way into the
/// first period, racing the first publications: a flaky wildcard test showed it.)
#[tokio::test(start_paused = true)]
async fn entering_background_mode_later_waits_one_whole_period_for_the_first_flush() {
    use sluice_common::publisher::PublishKind::Delta;
    let mut h = start(app(|c| {
        c.conflate = Duration::from_secs(10);
        c.heartbeat_interval = Duration::from_secs(3600);
    }));
    assert_eq!(h.next_json().await["type"], "connected");
    h.send(json!({"type": "subscribe", "topic": "prices.A"}));
    assert_eq!(h.next_json().await["type"], "ack");
    // 5 s into the session (half a period), the client goes to the background.
    tokio::time::sleep(Duration::from_secs(5)).await;
    h.send(json!({"type": "background_mode", "enabled": true}));
    let ack = h.next_json().await;
    assert_eq!(ack["payload"]["background_mode"], true, "{ack}");
    let entered = tokio::time::Instant::now();
    tokio::time::sleep(Duration::from_millis(10)).await;
    for i in 1..=3 {
        publish(&h, "prices.A", Delta, &i.to_string()).await;
    }
    let v = h.next_json().await;
    assert_eq!(tag(&v), "delta/prices.A/3", "only the newest, conflated");
    let waited = entered.elapsed();
    assert!(
        waited >= Duration::from_secs(10) && waited < Duration::from_secs(11),
        "the first flush one period after entering, not at the session's tick: {waited:?}"
    );
}

/// The node-stage histograms: every live alert, one delta in 8 (by seq), and
/// nothing from a session in background mode.
#[tokio::test(start_paused = true)]
async fn the_node_stage_times_every_alert_and_one_delta_in_eight() {
    use sluice_common::publisher::PublishKind::{Alert, Delta};
    let mut h = start(app(|_| {}));
    assert_eq!(h.next_json().await["type"], "connected");
    h.send(json!({"type": "subscribe", "topic": "prices.A"}));
    assert_eq!(h.next_json().await["type"], "ack");
    for i in 1..=16 {
        publish(&h, "prices.A", Delta, &i.to_string()).await;
    }
    publish(&h, "prices.A", Alert, "17").await;
    publish(&h, "prices.A", Alert, "18").await;
    let mut seen = 0;
    while seen < 18 {
        if h.next_json().await["seq"].is_u64() {
            seen += 1;
        }
    }
    // The histograms are recorded after the burst's flush.
    tokio::task::yield_now().await;
    let state = h.state.clone();
    let count = move |name: &str| -> u64 {
        let text = state.metrics.render();
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}_count ")))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name}_count missing"))
    };
    assert_eq!(count("sluice_alert_stage_seconds"), 2);
    assert_eq!(count("sluice_delta_stage_seconds"), 2, "seqs 8 and 16");
    h.send(json!({"type": "background_mode", "enabled": true}));
    loop {
        let v = h.next_json().await;
        if v["payload"]["background_mode"] == true {
            break;
        }
    }
    for i in 19..=26 {
        publish(&h, "prices.A", Delta, &i.to_string()).await;
    }
    publish(&h, "prices.A", Alert, "27").await;
    loop {
        let v = h.next_json().await;
        if v["type"] == "alert" {
            break;
        }
    }
    tokio::task::yield_now().await;
    assert_eq!(
        count("sluice_alert_stage_seconds"),
        2,
        "background: not timed"
    );
    assert_eq!(
        count("sluice_delta_stage_seconds"),
        2,
        "background: not timed"
    );
}

#[path = "snapshot_reads_tests.rs"]
mod snapshot_reads;

#[path = "fast_tests.rs"]
mod fast;

/// Over the project's own WebSocket (`ws::WsSocket`): a client that reads nothing
/// fills the connection, the session's write waits, and the write deadline ends the
/// session as a slow consumer (the mailbox, far bigger, never fills).
#[tokio::test(start_paused = true)]
async fn over_a_real_websocket_a_client_that_reads_nothing_is_ended_by_the_write_deadline() {
    use tokio::io::AsyncReadExt;
    let state = app(|c| {
        c.heartbeat_interval = Duration::from_secs(3600);
        c.connection_timeout = Duration::from_secs(20);
    });
    let (server, mut client) = tokio::io::duplex(4096);
    let socket = crate::ws::WsSocket::new(server, 64 * 1024);
    let info = Arc::new(SessionInfo::new(([127, 0, 0, 1], 1).into(), None, 100_000));
    let filter = sluice_common::TopicFilter::parse("prices.S").expect("topic");
    let params = SessionParams {
        id: 1,
        info,
        initial: vec![sluice_common::protocol::SubscribeEntry {
            filter,
            resume_from_seq: None,
            epoch: None,
        }],
        background: false,
        identity: None,
    };
    let task = tokio::spawn(Session::new(state.session.clone(), socket, params).run());
    let h = Harness {
        to_session: mpsc::unbounded_channel().0,
        from_session: mpsc::unbounded_channel().1,
        state,
        task,
    };
    // Paused time: the session runs until it waits (greeted, subscribed) before the
    // clock moves.
    tokio::time::sleep(Duration::from_millis(1)).await;
    let counts = h.state.hub.topic_counts();
    assert_eq!(counts.len(), 1, "subscribed: {counts:?}");
    let payload = format!("\"{}\"", "p".repeat(1024));
    // 200 KiB: over the connection's 4 KiB and the socket's 64 KiB queue.
    for _ in 0..200 {
        publish(
            &h,
            "prices.S",
            sluice_common::publisher::PublishKind::Delta,
            &payload,
        )
        .await;
    }
    let end = h.task.await.expect("session task");
    assert_eq!(
        end,
        SessionEnd::SlowConsumer("the socket accepted no bytes within the connection timeout")
    );
    // What reached the client starts with the `connected` text frame.
    let mut head = [0u8; 64];
    client.read_exact(&mut head).await.expect("bytes");
    assert_eq!(head[0], 0x81, "a final text frame");
    assert!(
        String::from_utf8_lossy(&head).contains("connected"),
        "{head:?}"
    );
}
