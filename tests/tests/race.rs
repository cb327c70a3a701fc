//! Publishes racing subscribes: while a publisher hammers one topic, clients
//! subscribe again and again at arbitrary moments (fresh, resuming, resuming with a
//! stale epoch). Every subscription must see a gap-free, duplicate-free run of seqs
//! starting exactly where the protocol says, and the last one runs to the very last
//! publication.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use serde_json::{json, Value};
use sluice_tests::{publish_to, seqs, start_node, WsClient};

const TOPIC: &str = "race.hammer";
const CLIENTS: u64 = 24;
/// Subscriptions per client; all but the last read `SHORT_READ` publications.
const CYCLES: u64 = 12;
const SHORT_READ: usize = 30;
/// A snapshot rides along every this many publications.
const SNAPSHOT_EVERY: u64 = 50;
/// Published after every client made its last subscription.
const TAIL: u64 = 300;

/// xorshift64*: deterministic per-client choices without a dependency.
fn rng(seed: u64) -> impl FnMut(u64) -> u64 {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    move |bound| {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        s.wrapping_mul(0x2545_F491_4F6C_DD1D) % bound.max(1)
    }
}

/// Asserts `got` is exactly `first..=last`; on failure names the first duplicate or
/// gap instead of printing thousands of seqs.
fn assert_run(got: &[u64], first: u64, last: u64, ctx: &str) {
    let ok = got.len() as u64 == last + 1 - first
        && got.first() == Some(&first)
        && got.windows(2).all(|w| w[1] == w[0] + 1);
    if !ok {
        let dup = got.windows(2).find(|w| w[1] <= w[0]);
        let gap = got.windows(2).find(|w| w[1] > w[0] + 1);
        panic!(
            "{ctx}: want {first}..={last}, got {} seqs from {:?} to {:?}; \
             first duplicate/reorder {dup:?}, first gap {gap:?}",
            got.len(),
            got.first(),
            got.last()
        );
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Fresh,
    Resume,
    ResumeNoEpoch,
    ResumeStaleEpoch,
}

/// What the publisher and the clients share.
#[derive(Debug, Default)]
struct Shared {
    /// The seq of the latest publication.
    head: AtomicU64,
    epoch: Mutex<Option<String>>,
    /// Clients that made their final subscription.
    final_subscribed: AtomicU64,
    /// The last seq, once the publisher is done (0 before).
    last: AtomicU64,
    started: AtomicBool,
}

/// Checks the first publication of one subscription against its ack and mode.
fn check_start(mode: Mode, from: u64, ack: &Value, pubs: &[Value], ctx: &str) {
    let head = ack["payload"]["head_seq"].as_u64().expect("head_seq");
    let recovered = ack["payload"]["recovered"].as_bool().expect("recovered");
    let first = pubs[0]["seq"].as_u64().expect("seq");
    let ctx = format!("{ctx} {mode:?} from={from} head={head} first={first}");
    // A resume without an epoch is a mismatch (SPEC §3): it goes as a fresh one.
    assert_eq!(recovered, matches!(mode, Mode::Resume), "{ctx}");
    if recovered {
        assert_eq!(first, from, "{ctx}: a resume starts exactly at N");
        assert_eq!(pubs[0]["type"], "delta", "{ctx}");
    } else if head >= SNAPSHOT_EVERY {
        let snap = head / SNAPSHOT_EVERY * SNAPSHOT_EVERY;
        assert_eq!(pubs[0]["type"], "snapshot", "{ctx}");
        assert_eq!(first, snap, "{ctx}: the latest snapshot at subscribe time");
        assert_eq!(pubs[0]["payload"]["state"], snap, "{ctx}");
    } else {
        assert_eq!(first, head + 1, "{ctx}: no snapshot yet, live from head");
    }
    assert!(
        pubs[1..].iter().all(|p| p["type"] == "delta"),
        "{ctx}: only the first may be a snapshot"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_racing_subscribes_give_no_gap_and_no_duplicate() {
    // A big outbox: this test is about ordering, not about slow consumers.
    let node = start_node(|cfg| cfg.queue_size = 1 << 20).await;
    let broker = node.node().state.broker.clone();
    let shared = Arc::new(Shared::default());

    let publisher = {
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut next = rng(7);
            let mut tail_end = None;
            loop {
                // A burst of 1..=10 publications, then let the clients run.
                for _ in 0..=next(10) {
                    let seq = shared.head.load(Ordering::Relaxed) + 1;
                    let payload = format!(r#"{{"n":{seq}}}"#);
                    let snap = format!(r#"{{"state":{seq}}}"#);
                    let snap = (seq % SNAPSHOT_EVERY == 0).then_some(snap.as_str());
                    let (s, e) = publish_to(&*broker, TOPIC, &payload, snap).await;
                    assert_eq!(s, seq, "the only publisher sees consecutive seqs");
                    shared.epoch.lock().expect("lock").get_or_insert(e);
                    shared.head.store(s, Ordering::Release);
                }
                shared.started.store(true, Ordering::Release);
                let head = shared.head.load(Ordering::Relaxed);
                if tail_end.is_none() && shared.final_subscribed.load(Ordering::Acquire) == CLIENTS
                {
                    tail_end = Some(head + TAIL);
                }
                if tail_end.is_some_and(|end| head >= end) {
                    shared.last.store(head, Ordering::Release);
                    return head;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };

    let url = node.ws_url("/ws");
    let mut tasks = tokio::task::JoinSet::new();
    for id in 0..CLIENTS {
        let (url, shared) = (url.clone(), shared.clone());
        tasks.spawn(async move {
            let mut next = rng(1000 + id);
            // A few clients make their first subscription before anything exists.
            if id >= 4 {
                while !shared.started.load(Ordering::Acquire) {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            let mut subscriptions = 0;
            for cycle in 0..CYCLES {
                let ctx = format!("client {id} cycle {cycle}");
                let is_final = cycle + 1 == CYCLES;
                let mode = match next(4) {
                    0 => Mode::Fresh,
                    1 => Mode::Resume,
                    2 => Mode::ResumeNoEpoch,
                    _ => Mode::ResumeStaleEpoch,
                };
                tokio::time::sleep(Duration::from_millis(next(25))).await;
                let mut c = WsClient::connect(&url).await.expect("connect");
                let h = shared.head.load(Ordering::Acquire);
                let e = shared.epoch.lock().expect("lock").clone();
                // Resume somewhere in the recent past, or exactly at head + 1.
                let from = (h.saturating_sub(next(120)) + u64::from(next(5) == 0)).max(1);
                let req = match mode {
                    Mode::Fresh => json!({"topic": TOPIC}),
                    Mode::Resume => json!({"topic": TOPIC, "resume_from_seq": from, "epoch": e}),
                    Mode::ResumeNoEpoch => json!({"topic": TOPIC, "resume_from_seq": from}),
                    Mode::ResumeStaleEpoch => {
                        json!({"topic": TOPIC, "resume_from_seq": from, "epoch": "stale"})
                    }
                };
                let ack = c.subscribe(req).await;
                subscriptions += 1;
                if is_final {
                    shared.final_subscribed.fetch_add(1, Ordering::AcqRel);
                }
                let mut pubs: Vec<Value> = Vec::new();
                let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
                loop {
                    // `last` is set only after the final publish: re-check it while
                    // waiting rather than block on a frame that may never come.
                    let last = shared.last.load(Ordering::Acquire);
                    let seen = pubs.last().and_then(|p| p["seq"].as_u64());
                    if (!is_final && pubs.len() >= SHORT_READ) || (last != 0 && seen == Some(last))
                    {
                        break;
                    }
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "{ctx} ({mode:?}): waiting for seq {last}, got up to {seen:?}"
                    );
                    let Ok(f) = tokio::time::timeout(Duration::from_millis(100), c.recv()).await
                    else {
                        continue;
                    };
                    let f =
                        f.unwrap_or_else(|err| panic!("{ctx} ({mode:?}) after {seen:?}: {err}"));
                    if matches!(f["type"].as_str(), Some("delta" | "snapshot")) {
                        pubs.push(f);
                    }
                }
                check_start(mode, from, &ack, &pubs, &ctx);
                let got = seqs(&pubs);
                let end = *got.last().expect("at least one publication");
                assert_run(&got, got[0], end, &format!("{ctx} ({mode:?})"));
                if is_final {
                    return (id, subscriptions, end);
                }
                c.close().await;
            }
            unreachable!("the final cycle returns")
        });
    }

    // The first client to fail fails the test at once (the publisher would otherwise
    // wait forever for its final subscription).
    let mut ends = Vec::new();
    while let Some(res) = tasks.join_next().await {
        match res {
            Ok(end) => ends.push(end),
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => panic!("client task: {e}"),
        }
    }
    let last = publisher.await.expect("publisher");
    assert!(last > TAIL, "published {last}");
    assert_eq!(ends.len() as u64, CLIENTS);
    for (id, subscriptions, end) in ends {
        assert_eq!(subscriptions, CYCLES, "client {id}");
        assert_eq!(end, last, "client {id} read up to the last publication");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishers_still_deliver_in_seq_order_without_gaps() {
    const PUBLISHERS: u64 = 3;
    const EACH: u64 = 1_000;
    const TOTAL: u64 = PUBLISHERS * EACH;
    /// The warm-up publication plus the publishers'.
    const LAST: u64 = TOTAL + 1;
    let node = start_node(|cfg| cfg.queue_size = 1 << 20).await;
    let mut early = Vec::new();
    for _ in 0..4 {
        let mut c = node.client().await;
        c.subscribe(json!({"topic": "race.multi"})).await;
        early.push(c);
    }
    // Seq 1 first, so the resuming clients below know the epoch to resume in (a
    // resume without one is a mismatch, SPEC §3); the publishers race after it.
    let (_, epoch) = publish_to(&*node.node().state.broker, "race.multi", "0", None).await;
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|p| {
            let broker = node.node().state.broker.clone();
            tokio::spawn(async move {
                for i in 0..EACH {
                    publish_to(
                        &*broker,
                        "race.multi",
                        &format!(r#"{{"p":{p},"i":{i}}}"#),
                        None,
                    )
                    .await;
                    if i % 16 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
            })
        })
        .collect();
    // Late subscribers join while the publishers run: two resume from 1, two are fresh.
    let mut late = Vec::new();
    for k in 0..4 {
        let mut c = node.client().await;
        let req = if k % 2 == 0 {
            json!({"topic": "race.multi", "resume_from_seq": 1, "epoch": epoch})
        } else {
            json!({"topic": "race.multi"})
        };
        let ack = c.subscribe(req).await;
        late.push((k, ack, c));
    }
    for p in publishers {
        p.await.expect("publisher");
    }
    for (n, c) in early.iter_mut().enumerate() {
        let got = seqs(&c.recv_pubs_until(LAST).await);
        assert_run(&got, 1, LAST, &format!("early client {n}"));
    }
    for (k, ack, mut c) in late {
        let head = ack["payload"]["head_seq"].as_u64().expect("head");
        let first = if k % 2 == 0 { 1 } else { head + 1 };
        assert_eq!(ack["payload"]["recovered"], k % 2 == 0, "{ack}");
        if first > LAST {
            continue; // subscribed after the last publish: nothing to deliver
        }
        let got = seqs(&c.recv_pubs_until(LAST).await);
        assert_run(&got, first, LAST, &format!("late client {k}: {ack}"));
    }
}
