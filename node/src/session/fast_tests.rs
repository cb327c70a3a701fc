//! The fast path of live delivery ([`super::super::fast`]): a run of next-seq
//! publications is decided without the general path and written back to back,
//! and every publication that is not the common case (a gap, another epoch, a
//! duplicate or old seq, a background session, a held wildcard, batched frames)
//! goes through the general path in its place in the burst.

use std::sync::Mutex;

use sluice_common::{protocol::FrameType, Topic, TopicFilter};

use super::*;
use crate::{
    broker::PublishRequest,
    publication::{Pub, Publication},
    session::{
        delivery::SubState, fast::Fast, outbound::FrameOptions, position::Position,
        wildcard::PatternSub,
    },
};

/// What the session handed its socket: each frame (as `topic/seq/epoch`), and
/// each flush.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Event {
    Frame(String),
    Flush,
}

type Log = Arc<Mutex<Vec<Event>>>;

/// A socket that records every frame and flush; it reads the test's frames.
struct Recorder {
    incoming: mpsc::UnboundedReceiver<Message>,
    log: Log,
}

impl Stream for Recorder {
    type Item = Result<Message, std::io::Error>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.incoming.poll_recv(cx).map(|m| m.map(Ok))
    }
}

impl Sink<Message> for Recorder {
    type Error = std::io::Error;
    fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }
    fn start_send(self: Pin<&mut Self>, item: Message) -> Result<(), Self::Error> {
        if let Message::Text(t) = item {
            let v: Value = serde_json::from_str(t.as_str()).expect("JSON");
            let tag = match v["seq"].as_u64() {
                Some(seq) => format!(
                    "{}/{seq}/{}",
                    v["topic"].as_str().unwrap_or("?"),
                    v["epoch"].as_str().unwrap_or("?")
                ),
                None => v["type"].as_str().unwrap_or("?").to_owned(),
            };
            self.log.lock().expect("log").push(Event::Frame(tag));
        }
        Ok(())
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.log.lock().expect("log").push(Event::Flush);
        Poll::Ready(Ok(()))
    }
    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }
}

fn t(name: &str) -> Topic {
    Topic::parse(name).expect("topic")
}

/// A session on `state` over a [`Recorder`], not running: the tests call its
/// delivery directly.
fn session(state: &Arc<AppState>) -> (Session<Recorder>, Log, mpsc::UnboundedSender<Message>) {
    let (to_session, incoming) = mpsc::unbounded_channel();
    let log = Log::default();
    let info = Arc::new(SessionInfo::new(([127, 0, 0, 1], 1).into(), None, 1024));
    let params = SessionParams {
        id: 1,
        info,
        initial: Vec::new(),
        background: false,
        identity: None,
    };
    let socket = Recorder {
        incoming,
        log: log.clone(),
    };
    (
        Session::new(state.session.clone(), socket, params),
        log,
        to_session,
    )
}

/// Publishes `n` messages to `topic` through the broker (nobody is subscribed in
/// the hub, so they only land in its history) and returns them as publications.
async fn history_of(state: &AppState, topic: &Topic, n: u64) -> Vec<Pub> {
    for i in 1..=n {
        state
            .broker
            .publish(PublishRequest {
                topic,
                kind: sluice_common::publisher::PublishKind::Delta,
                payload_json: &i.to_string(),
                snapshot_json: None,
                meta_json: None,
            })
            .await
            .expect("publish");
    }
    let h = state
        .broker
        .history(topic, 1, n as usize)
        .await
        .expect("history");
    assert_eq!(h.len() as u64, n);
    h
}

fn at(epoch: &Arc<str>, last: u64) -> SubState {
    SubState {
        pos: Position::at(Some(epoch.clone()), last),
        ..Default::default()
    }
}

fn tag(p: &Pub) -> String {
    format!("{}/{}/{}", p.topic, p.seq, p.epoch)
}

fn frames(log: &Log) -> Vec<String> {
    log.lock()
        .expect("log")
        .iter()
        .filter_map(|e| match e {
            Event::Frame(f) => Some(f.clone()),
            Event::Flush => None,
        })
        .collect()
}

/// An epoch that compares newer than every epoch the memory broker makes (a
/// longer one is newer).
const NEWER: &str = "zzzzzzzzzzzzzzzzzzzz";

#[tokio::test(start_paused = true)]
async fn the_fast_path_takes_only_the_next_seq_of_the_subscriptions_own_epoch() {
    let state = app(|_| {});
    let a = t("prices.A");
    let h = history_of(&state, &a, 6).await;
    let epoch = h[0].epoch.clone();
    let (mut s, log, _to) = session(&state);
    s.subs.insert(a.clone(), at(&epoch, 2));
    let last = |s: &Session<Recorder>| s.subs.get(&a).expect("sub").pos.last();

    // The next seq: a frame to write, the position moved past it.
    match s.fast(&h[2]) {
        Fast::Write(Message::Text(f)) => assert_eq!(f.as_str(), h[2].frame.as_str()),
        _ => panic!("seq 3 after 2 is the fast path's"),
    }
    assert_eq!(last(&s), 3);
    // Delivered already, or older: nothing.
    assert!(matches!(s.fast(&h[2]), Fast::Skip), "a duplicate");
    assert!(matches!(s.fast(&h[0]), Fast::Skip), "an old seq");
    // A gap, or another epoch: the general path, and nothing changed.
    assert!(matches!(s.fast(&h[4]), Fast::Slow), "5 after 3 is a gap");
    let other = Publication::new(a.clone(), 4, NEWER.into(), FrameType::Delta, 0, "{}");
    assert!(matches!(s.fast(&other), Fast::Slow), "another epoch");
    assert_eq!(last(&s), 3, "a slow answer changes nothing");
    // Not subscribed (unsubscribed meanwhile): nothing.
    let b = Publication::new(t("prices.B"), 1, epoch.clone(), FrameType::Delta, 0, "{}");
    assert!(matches!(s.fast(&b), Fast::Skip));
    // The next seq, but batched frames, background mode, or a held wildcard.
    s.subs.get_mut(&a).expect("sub").opts = FrameOptions {
        batch: 10,
        compress: false,
    };
    assert!(matches!(s.fast(&h[3]), Fast::Slow), "batched frames");
    s.subs.get_mut(&a).expect("sub").opts = FrameOptions::default();
    s.background = true;
    assert!(matches!(s.fast(&h[3]), Fast::Slow), "background mode");
    s.background = false;
    s.patterns = Some(Box::new(vec![PatternSub::new_for_tests(
        TopicFilter::parse("news.>").expect("filter"),
    )]));
    assert!(matches!(s.fast(&h[3]), Fast::Slow), "a wildcard held");
    assert_eq!(last(&s), 3);
    assert!(frames(&log).is_empty(), "deciding writes nothing");
}

/// One burst mixing every case: the general path's publications come out in
/// their place, a gap is filled from history before the publication after it,
/// duplicates and a late message of an older epoch are dropped, and the rest
/// goes out once, in order.
#[tokio::test(start_paused = true)]
async fn a_burst_keeps_its_order_when_publications_fall_back_to_the_general_path() {
    let state = app(|_| {});
    let (a, b) = (t("prices.A"), t("prices.B"));
    let ha = history_of(&state, &a, 8).await;
    let hb = history_of(&state, &b, 3).await;
    let (ea, eb) = (ha[0].epoch.clone(), hb[0].epoch.clone());
    let (mut s, log, _to) = session(&state);
    s.subs.insert(a.clone(), at(&ea, 0));
    s.subs.insert(b.clone(), at(&eb, 0));
    let newer: Arc<str> = NEWER.into();
    let a_new =
        |seq: u64| Publication::new(a.clone(), seq, newer.clone(), FrameType::Delta, 0, "{}");
    let burst: Vec<Pub> = vec![
        ha[0].clone(), // A1 fast
        ha[1].clone(), // A2 fast
        hb[0].clone(), // B1 fast
        ha[2].clone(), // A3 fast
        ha[4].clone(), // A5: a gap (A4 never reached the session) -> read A4
        ha[5].clone(), // A6 fast again
        ha[1].clone(), // A2 again: a duplicate
        hb[1].clone(), // B2 fast
        hb[2].clone(), // B3 fast
        ha[6].clone(), // A7 fast
        a_new(1),      // A restarted under a newer epoch: its first message
        a_new(2),      // fast, in the new epoch
        ha[7].clone(), // A8 of the old epoch, after the restart: dropped
        hb[2].clone(), // B3 again: dropped
    ];
    s.deliver_burst(burst).await.expect("burst");
    let mut want: Vec<String> = [&ha[0], &ha[1], &hb[0], &ha[2], &ha[3], &ha[4], &ha[5]]
        .into_iter()
        .map(tag)
        .collect();
    want.extend([&hb[1], &hb[2], &ha[6]].into_iter().map(tag));
    want.extend([tag(&a_new(1)), tag(&a_new(2))]);
    assert_eq!(frames(&log), want);
    assert_eq!(s.subs.get(&a).expect("a").pos.last(), 2);
    assert_eq!(s.subs.get(&a).expect("a").pos.epoch(), Some(&newer));
    assert_eq!(s.subs.get(&b).expect("b").pos.last(), 3);
}

/// With a wildcard held, every publication takes the general path: the pattern
/// delivers its own copy before the concrete subscription's, for each one. In
/// background mode nothing goes out until the tick (the fast path would write).
#[tokio::test(start_paused = true)]
async fn a_wildcard_or_background_mode_sends_the_whole_burst_the_general_way() {
    let state = app(|_| {});
    let a = t("prices.A");
    let h = history_of(&state, &a, 3).await;
    let epoch = h[0].epoch.clone();

    let (mut s, log, _to) = session(&state);
    s.subs.insert(a.clone(), at(&epoch, 0));
    s.patterns = Some(Box::new(vec![PatternSub::new_for_tests(
        TopicFilter::parse("prices.>").expect("filter"),
    )]));
    s.deliver_burst(h.clone()).await.expect("burst");
    let twice: Vec<String> = h.iter().flat_map(|p| [tag(p), tag(p)]).collect();
    assert_eq!(
        frames(&log),
        twice,
        "the pattern's copy, then the subscription's"
    );

    let (mut s, log, _to) = session(&state);
    s.subs.insert(a.clone(), at(&epoch, 0));
    s.background = true;
    s.deliver_burst(h.clone()).await.expect("burst");
    assert!(frames(&log).is_empty(), "conflated until the tick");
    assert_eq!(
        s.subs
            .get(&a)
            .and_then(|sub| sub.pending.as_ref())
            .map(|p| p.seq),
        Some(3),
        "the newest is pending"
    );
}

/// Through the session loop: a burst of next-seq publications queued while the
/// session was busy goes out in order, all of it before the burst's one flush.
#[tokio::test(start_paused = true)]
async fn a_run_of_next_seq_publications_goes_out_in_order_before_one_flush() {
    let state = app(|_| {});
    let a = t("prices.A");
    let (s, log, to) = session(&state);
    let task = tokio::spawn(s.run());
    to.send(Message::Text(
        json!({"type": "subscribe", "topic": "prices.A"})
            .to_string()
            .into(),
    ))
    .expect("session alive");
    let settled = |n: usize| {
        let log = log.clone();
        async move {
            for _ in 0..1000 {
                if frames(&log).len() >= n {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            panic!("the session wrote {:?}", frames(&log));
        }
    };
    settled(2).await; // connected, ack
    let before = log.lock().expect("log").len();
    // The session task does not run while this one publishes: one burst.
    let h = history_of(&state, &a, 20).await;
    settled(22).await;
    let after: Vec<Event> = log.lock().expect("log")[before..].to_vec();
    let mut want: Vec<Event> = h.iter().map(|p| Event::Frame(tag(p))).collect();
    want.push(Event::Flush);
    assert_eq!(after, want, "every frame in order, then one flush");
    task.abort();
}
