//! A session's mailbox: the bounded queue of publications the hub fills and the
//! session task drains, and the signals that end the session (drain, slow consumer,
//! kill), all behind one waker.
//!
//! The hub fills it; the session owns the other end ([`crate::session::SessionInfo`]
//! holds it, shared with the hub). An idle session's queue holds no buffer at all:
//! the buffer is allocated by the first publication and given back once a burst has
//! been drained. The session drains a whole batch under one lock per wake-up.
//!
//! Alerts first, past the runtime too: the queue puts a session's alerts ahead of
//! its deltas, but tokio runs woken tasks in the order they were woken, so a
//! session woken earlier for deltas runs before one woken later for an alert. The
//! [`AlertLane`] counts the mailboxes that hold an alert; while one does, a session
//! about to write deltas only steps back once (see [`Mailbox::defer_to_alerts`]).

use sluice_common::lock::MutexExt;
use std::{
    collections::VecDeque,
    sync::{
        atomic::{AtomicU32, AtomicU8, AtomicUsize, Ordering},
        Mutex,
    },
    task::Context,
};

use futures_util::task::AtomicWaker;
use sluice_common::protocol::FrameType;

use crate::publication::Pub;

/// Why others want a session to end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// The node is draining: close with 1012.
    Stop = 1,
    /// The node was killed (tests simulating a crash): drop the socket.
    Killed = 2,
    /// The outbox filled: close with 4008.
    Slow = 4,
}

impl Signal {
    /// In the order the session acts on them when several are raised.
    pub(crate) const ALL: [Signal; 3] = [Signal::Stop, Signal::Killed, Signal::Slow];
}

/// Why [`Mailbox::try_send`] refused a publication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The queue holds its capacity already.
    Full,
    /// The session is gone.
    Closed,
}

/// Alerts waiting in mailboxes, process-wide as the runtime's run queue is. Only
/// *when* sessions run depends on it, never what they deliver, so its counts are
/// relaxed.
#[derive(Debug)]
pub struct AlertLane {
    /// Mailboxes holding at least one alert not yet drained.
    waiting: AtomicUsize,
    /// Bumped each time a mailbox starts holding an alert: a session steps back at
    /// most once per arrival, so alerts that stay (a session blocked on its
    /// socket) never make the others spin.
    arrivals: AtomicU32,
}

impl AlertLane {
    pub const fn new() -> Self {
        AlertLane {
            waiting: AtomicUsize::new(0),
            arrivals: AtomicU32::new(0),
        }
    }

    fn arrived(&self) {
        self.waiting.fetch_add(1, Ordering::Relaxed);
        self.arrivals.fetch_add(1, Ordering::Relaxed);
    }

    fn left(&self) {
        self.waiting.fetch_sub(1, Ordering::Relaxed);
    }

    /// Mailboxes holding an alert now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }
}

impl Default for AlertLane {
    fn default() -> Self {
        Self::new()
    }
}

/// The node's lane: every session of the process shares one runtime.
pub static ALERT_LANE: AlertLane = AlertLane::new();

/// A queue that has drained keeps at most this many slots; a longer one is freed.
const KEEP_SLOTS: usize = 8;

/// Alerts first: an `alert` goes ahead of every queued message of other topics,
/// taking the queued messages of its own topic with it (they precede it in seq
/// order, which holds per topic whatever the queue does). So `alerts` holds, in
/// arrival order, each alert and the earlier messages of its topic; `items` the rest.
#[derive(Debug, Default)]
struct Queue {
    alerts: VecDeque<Pub>,
    items: VecDeque<Pub>,
    closed: bool,
}

impl Queue {
    fn len(&self) -> usize {
        self.alerts.len() + self.items.len()
    }

    /// Queues `p`; returns whether the queue started holding an alert.
    fn push(&mut self, p: &Pub) -> bool {
        if p.kind != FrameType::Alert {
            self.items.push_back(p.clone());
            return false;
        }
        let first = self.alerts.is_empty();
        // Alerts are rare: a scan of the queue per alert is cheap.
        if self.items.iter().any(|q| q.topic == p.topic) {
            let (own, rest): (VecDeque<Pub>, VecDeque<Pub>) =
                self.items.drain(..).partition(|q| q.topic == p.topic);
            self.alerts.extend(own);
            self.items = rest;
        }
        self.alerts.push_back(p.clone());
        first
    }

    /// A burst is over: an idle session keeps no queue buffer.
    fn shrink(&mut self) {
        for q in [&mut self.alerts, &mut self.items] {
            if q.is_empty() && q.capacity() > KEEP_SLOTS {
                *q = VecDeque::new();
            }
        }
    }
}

#[derive(Debug)]
pub struct Mailbox {
    queue: Mutex<Queue>,
    capacity: usize,
    signals: AtomicU8,
    /// The session task, woken by a publication or a signal.
    waker: AtomicWaker,
    lane: &'static AlertLane,
}

impl Mailbox {
    pub fn new(capacity: usize) -> Self {
        Self::in_lane(capacity, &ALERT_LANE)
    }

    /// A mailbox whose alerts count in `lane` (tests use lanes of their own).
    pub fn in_lane(capacity: usize, lane: &'static AlertLane) -> Self {
        Mailbox {
            lane,
            queue: Mutex::new(Queue::default()),
            capacity: capacity.max(1),
            signals: AtomicU8::new(0),
            waker: AtomicWaker::new(),
        }
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock_unpoisoned()
    }

    /// Queues `p` for the session without waiting.
    pub fn try_send(&self, p: &Pub) -> Result<(), Refused> {
        {
            let mut q = self.queue();
            if q.closed {
                return Err(Refused::Closed);
            }
            if q.len() >= self.capacity {
                return Err(Refused::Full);
            }
            if q.push(p) {
                self.lane.arrived();
            }
        }
        self.waker.wake();
        Ok(())
    }

    /// Raises `signal`; the session acts on it at its next wake-up.
    pub fn signal(&self, signal: Signal) {
        self.signals.fetch_or(signal as u8, Ordering::AcqRel);
        self.waker.wake();
    }

    pub fn is_signalled(&self, signal: Signal) -> bool {
        self.signals.load(Ordering::Acquire) & signal as u8 != 0
    }

    /// Registers the task to be woken, then returns the first raised signal among
    /// `wanted`, in [`Signal::ALL`] order.
    pub fn poll_signal(&self, cx: &mut Context<'_>, wanted: &[Signal]) -> Option<Signal> {
        self.waker.register(cx.waker());
        let raised = self.signals.load(Ordering::Acquire);
        Signal::ALL
            .into_iter()
            .find(|s| raised & *s as u8 != 0 && wanted.contains(s))
    }

    /// The next queued publication, if any (the hub's tests read mailboxes so).
    #[cfg(test)]
    pub fn try_recv(&self) -> Option<Pub> {
        let mut q = self.queue();
        let p = match q.alerts.pop_front() {
            Some(p) => {
                if q.alerts.is_empty() {
                    self.lane.left();
                }
                Some(p)
            }
            None => q.items.pop_front(),
        };
        q.shrink();
        p
    }

    /// Moves up to `max` queued publications into `out` under one lock; returns
    /// how many were queued before (the queue's depth at this wake-up).
    pub fn drain_into(&self, out: &mut Vec<Pub>, max: usize) -> usize {
        let mut q = self.queue();
        let depth = q.len();
        let first = q.alerts.len().min(max);
        if first > 0 && first == q.alerts.len() {
            self.lane.left();
        }
        out.extend(q.alerts.drain(..first));
        let rest = q.items.len().min(max - first);
        out.extend(q.items.drain(..rest));
        q.shrink();
        depth
    }

    /// Whether the session should let the runtime run other sessions before it
    /// writes: another mailbox holds an alert that arrived since `seen` (the
    /// arrival the session last stepped back for), and this one holds deltas but no
    /// alert. Returns the arrival to remember. Stepping back (a wake of its own and
    /// `Pending`) puts the session behind those queued after it, so a session
    /// holding an alert, woken later, runs first; it is cheap, since the session
    /// has done nothing yet.
    pub fn defer_to_alerts(&self, seen: u32) -> Option<u32> {
        if self.lane.waiting() == 0 {
            return None;
        }
        let now = self.lane.arrivals.load(Ordering::Relaxed);
        if now == seen {
            return None;
        }
        let q = self.queue();
        (q.alerts.is_empty() && !q.items.is_empty()).then_some(now)
    }

    /// The session is gone: refuse publications from now on and drop the queued ones.
    pub fn close(&self) {
        let items = {
            let mut q = self.queue();
            q.closed = true;
            if !q.alerts.is_empty() {
                self.lane.left();
            }
            (std::mem::take(&mut q.alerts), std::mem::take(&mut q.items))
        };
        drop(items);
    }

    pub fn len(&self) -> usize {
        self.queue().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, task::Wake};

    use sluice_common::{protocol::FrameType, Topic};

    use super::*;
    use crate::publication::Publication;

    fn publication(seq: u64) -> Pub {
        on("t", seq, FrameType::Delta)
    }

    fn on(topic: &str, seq: u64, kind: FrameType) -> Pub {
        let t = Topic::parse(topic).expect("topic");
        Publication::new(t, seq, "e".into(), kind, 0, "{}")
    }

    fn drained(m: &Mailbox, max: usize) -> Vec<String> {
        let mut out = Vec::new();
        m.drain_into(&mut out, max);
        out.iter()
            .map(|p| format!("{}/{}", p.topic, p.seq))
            .collect()
    }

    #[test]
    fn alerts_go_first_taking_their_own_topic_along_in_seq_order() {
        use FrameType::{Alert, Delta};
        let m = Mailbox::new(16);
        for p in [
            on("prices.a", 1, Delta),
            on("risk.u", 1, Delta),
            on("prices.a", 2, Delta),
            on("risk.u", 2, Delta),
            on("prices.b", 1, Delta),
            on("risk.u", 3, Alert),
            on("prices.a", 3, Delta),
            on("risk.u", 4, Delta),
            on("risk.v", 1, Alert),
            on("risk.u", 5, Alert),
        ] {
            m.try_send(&p).expect("room");
        }
        assert_eq!(m.len(), 10);
        // risk.u's alert 3 took deltas 1 and 2 of its topic ahead; alert 5 took
        // delta 4; risk.v's alert sits between them in arrival order.
        assert_eq!(
            drained(&m, 4),
            ["risk.u/1", "risk.u/2", "risk.u/3", "risk.v/1"]
        );
        assert_eq!(
            drained(&m, 16),
            [
                "risk.u/4",
                "risk.u/5",
                "prices.a/1",
                "prices.a/2",
                "prices.b/1",
                "prices.a/3"
            ]
        );
        assert!(m.is_empty());
    }

    #[test]
    fn alerts_count_against_the_same_capacity() {
        let m = Mailbox::new(2);
        m.try_send(&on("prices.a", 1, FrameType::Delta)).unwrap();
        m.try_send(&on("risk.u", 1, FrameType::Alert)).unwrap();
        assert_eq!(
            m.try_send(&on("risk.u", 2, FrameType::Alert)),
            Err(Refused::Full)
        );
        m.close();
        assert!(m.is_empty());
    }

    struct Count(std::sync::atomic::AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn bounded_in_order_and_closed_for_good() {
        let m = Mailbox::new(2);
        assert_eq!(m.try_send(&publication(1)), Ok(()));
        assert_eq!(m.try_send(&publication(2)), Ok(()));
        assert_eq!(m.try_send(&publication(3)), Err(Refused::Full));
        assert_eq!(m.try_recv().map(|p| p.seq), Some(1));
        assert_eq!(m.try_send(&publication(3)), Ok(()));
        assert_eq!(m.len(), 2);
        m.close();
        assert!(m.is_empty());
        assert_eq!(m.try_send(&publication(4)), Err(Refused::Closed));
        assert!(m.try_recv().is_none());
    }

    #[test]
    fn a_drained_burst_gives_its_buffer_back() {
        let m = Mailbox::new(1024);
        for seq in 1..=100 {
            m.try_send(&publication(seq)).expect("room");
        }
        while m.try_recv().is_some() {}
        assert_eq!(m.queue().items.capacity(), 0);
    }

    #[test]
    fn a_batch_drains_in_order_up_to_its_limit_under_one_lock() {
        let m = Mailbox::new(1024);
        for seq in 1..=100 {
            m.try_send(&publication(seq)).expect("room");
        }
        let mut out = Vec::new();
        assert_eq!(m.drain_into(&mut out, 64), 100);
        assert_eq!(
            out.iter().map(|p| p.seq).collect::<Vec<_>>(),
            (1..=64).collect::<Vec<_>>()
        );
        assert_eq!(m.len(), 36);
        out.clear();
        assert_eq!(m.drain_into(&mut out, 64), 36);
        assert_eq!(out.first().map(|p| p.seq), Some(65));
        assert_eq!(out.last().map(|p| p.seq), Some(100));
        assert_eq!(
            m.queue().items.capacity(),
            0,
            "a drained burst gives its buffer back"
        );
        out.clear();
        assert_eq!(m.drain_into(&mut out, 64), 0);
        assert!(out.is_empty());
    }

    #[test]
    fn publications_and_signals_wake_the_registered_task() {
        let m = Mailbox::new(4);
        let count = Arc::new(Count(0.into()));
        let waker = std::task::Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        // The session's wake-up: register (through `poll_signal`), then drain.
        let mut out = Vec::new();
        assert_eq!(m.poll_signal(&mut cx, &Signal::ALL), None);
        assert_eq!(m.drain_into(&mut out, 8), 0);
        m.try_send(&publication(1)).expect("room");
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert_eq!(m.drain_into(&mut out, 8), 1);
        assert_eq!(out.iter().map(|p| p.seq).collect::<Vec<_>>(), [1]);

        assert_eq!(m.poll_signal(&mut cx, &Signal::ALL), None);
        m.signal(Signal::Slow);
        assert_eq!(count.0.load(Ordering::SeqCst), 2);
        m.signal(Signal::Stop);
        assert_eq!(m.poll_signal(&mut cx, &Signal::ALL), Some(Signal::Stop));
        assert_eq!(m.poll_signal(&mut cx, &[Signal::Slow]), Some(Signal::Slow));
        assert_eq!(m.poll_signal(&mut cx, &[Signal::Killed]), None);
        assert!(m.is_signalled(Signal::Slow));
    }

    /// The lane counts mailboxes holding an alert: one per mailbox however many it
    /// holds, given back when the last is drained (not a partial drain), read by
    /// `try_recv`, or dropped by `close`; arrivals count each start of holding.
    #[test]
    fn the_lane_counts_mailboxes_holding_alerts() {
        use FrameType::{Alert, Delta};
        let lane: &'static AlertLane = Box::leak(Box::new(AlertLane::new()));
        let arrivals = || lane.arrivals.load(Ordering::Relaxed);
        let (a, b) = (Mailbox::in_lane(64, lane), Mailbox::in_lane(64, lane));
        a.try_send(&on("prices.a", 1, Delta)).expect("room");
        assert_eq!((lane.waiting(), arrivals()), (0, 0), "deltas do not count");
        a.try_send(&on("risk.a", 1, Alert)).expect("room");
        a.try_send(&on("risk.a", 2, Alert)).expect("room");
        a.try_send(&on("risk.b", 1, Alert)).expect("room");
        assert_eq!((lane.waiting(), arrivals()), (1, 1), "one per mailbox");
        b.try_send(&on("risk.c", 1, Alert)).expect("room");
        assert_eq!((lane.waiting(), arrivals()), (2, 2));

        // A drain that leaves an alert behind keeps the count.
        assert_eq!(drained(&a, 2), ["risk.a/1", "risk.a/2"]);
        assert_eq!(lane.waiting(), 2);
        assert_eq!(drained(&a, 8), ["risk.b/1", "prices.a/1"]);
        assert_eq!(lane.waiting(), 1);
        assert_eq!(b.try_recv().map(|p| p.seq), Some(1));
        assert_eq!(lane.waiting(), 0);

        // Holding again is a new arrival; closing gives the count back.
        b.try_send(&on("risk.c", 2, Alert)).expect("room");
        assert_eq!((lane.waiting(), arrivals()), (1, 3));
        b.close();
        assert_eq!(lane.waiting(), 0);
        assert_eq!(b.try_send(&on("risk.c", 3, Alert)), Err(Refused::Closed));
        assert_eq!((lane.waiting(), arrivals()), (0, 3));
    }

    /// A session with deltas steps back once per alert arrival elsewhere; never
    /// when it holds an alert itself, holds nothing, or no alert waits.
    #[test]
    fn a_mailbox_with_deltas_defers_once_per_alert_arrival_elsewhere() {
        use FrameType::{Alert, Delta};
        let lane: &'static AlertLane = Box::leak(Box::new(AlertLane::new()));
        let (a, b) = (Mailbox::in_lane(64, lane), Mailbox::in_lane(64, lane));
        assert_eq!(a.defer_to_alerts(0), None, "no alert anywhere");
        b.try_send(&on("risk.b", 1, Alert)).expect("room");
        assert_eq!(a.defer_to_alerts(0), None, "nothing to write");
        a.try_send(&on("prices.a", 1, Delta)).expect("room");
        let seen = a.defer_to_alerts(0).expect("an alert waits elsewhere");
        assert_eq!(seen, 1);
        assert_eq!(a.defer_to_alerts(seen), None, "once per arrival");
        assert_eq!(b.defer_to_alerts(0), None, "b holds the alert: it writes");

        // A later arrival (b drained, then another alert) is worth one more.
        let mut out = Vec::new();
        b.drain_into(&mut out, 8);
        assert_eq!(a.defer_to_alerts(seen), None, "nothing waits now");
        b.try_send(&on("risk.b", 2, Alert)).expect("room");
        assert_eq!(a.defer_to_alerts(seen), Some(2));

        // A mailbox holding an alert of its own never defers.
        a.try_send(&on("risk.a", 1, Alert)).expect("room");
        assert_eq!(a.defer_to_alerts(0), None);
    }
}
