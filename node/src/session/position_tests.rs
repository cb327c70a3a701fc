//! The exactly-once rules of [`Position`], by example and against a model of a
//! topic's history with lost histories and Redis takeovers (continuation epochs).

use std::collections::HashMap;

use super::*;
use proptest::prelude::*;

fn e(s: &str) -> Arc<str> {
    Arc::from(s)
}

fn fork(parent: &str, at: u64) -> Fork {
    Fork {
        parent: e(parent),
        at,
    }
}

#[test]
fn live_decisions() {
    let mut p = Position::at(Some(e("e1")), 5);
    assert_eq!(p.on_live(&e("e1"), 5, None), Live::Duplicate);
    assert_eq!(p.on_live(&e("e1"), 6, None), Live::Deliver);
    assert_eq!(
        p.on_live(&e("e1"), 9, None),
        Live::FillFrom { from: 6, until: 9 }
    );
    // Epoch ids order by creation; an older one is stale, a newer one restarts.
    assert_eq!(p.on_live(&e("e0"), 7, None), Live::Stale);
    assert_eq!(p.on_live(&e("e2"), 1, None), Live::Deliver);
    assert_eq!(p.epoch().map(|x| &**x), Some("e2"));
    assert_eq!(p.last(), 0);
    let mut far = Position::at(Some(e("e1")), u64::MAX);
    assert_eq!(far.on_live(&e("e1"), u64::MAX, None), Live::Duplicate);
}

#[test]
fn a_continuation_goes_on_below_the_fork_and_is_refused_at_or_past_it() {
    // Delivered 1..=3 of e1; e2 continues e1 up to 3 (forks at 4): seamless.
    let mut p = Position::at(Some(e("e1")), 3);
    assert_eq!(p.on_live(&e("e2"), 4, Some(&fork("e1", 4))), Live::Deliver);
    assert_eq!((p.epoch().map(|x| &**x), p.last()), (Some("e2"), 3));
    // Further behind: the gap is filled from e2's history, not from seq 1.
    let mut behind = Position::at(Some(e("e1")), 2);
    assert_eq!(
        behind.on_live(&e("e2"), 5, Some(&fork("e1", 4))),
        Live::FillFrom { from: 3, until: 5 }
    );
    // Delivered e1's 4, which e2 lacks: told, and the position is kept.
    let mut ahead = Position::at(Some(e("e1")), 4);
    assert_eq!(
        ahead.on_live(&e("e2"), 4, Some(&fork("e1", 4))),
        Live::Forked
    );
    assert_eq!((ahead.epoch().map(|x| &**x), ahead.last()), (Some("e1"), 4));
    // A continuation of another epoch is a new history: restart from its seq 1.
    let mut other = Position::at(Some(e("e0")), 9);
    assert_eq!(
        other.on_live(&e("e2"), 4, Some(&fork("e1", 4))),
        Live::FillFrom { from: 1, until: 4 }
    );
    // An older epoch stays stale whatever its fork says.
    let mut newer = Position::at(Some(e("e3")), 1);
    assert_eq!(
        newer.on_live(&e("e2"), 4, Some(&fork("e3", 4))),
        Live::Stale
    );
}

#[test]
fn a_page_continues_only_from_the_next_seq_in_the_same_epoch() {
    let p = Position::at(Some(e("e1")), 3);
    let (a, b) = (e("e1"), e("e2"));
    assert_eq!(p.continues([(&a, 4), (&a, 5), (&a, 6)], 6), 2);
    assert_eq!(
        p.continues([(&a, 5), (&a, 6)], 9),
        0,
        "trimmed: starts late"
    );
    assert_eq!(
        p.continues([(&a, 4), (&a, 6)], 9),
        1,
        "a hole inside the page"
    );
    assert_eq!(p.continues([(&b, 4)], 9), 0, "another history");
    assert_eq!(p.continues(std::iter::empty(), 9), 0);
}

#[test]
fn resume_rules() {
    use Resume::*;
    assert_eq!(Position::resume(None, None, Some("e"), 5, None), Mismatch);
    assert_eq!(
        Position::resume(Some(3), None, Some("e"), 5, None),
        Mismatch
    );
    assert_eq!(
        Position::resume(Some(3), Some("x"), Some("e"), 5, None),
        Mismatch
    );
    assert_eq!(
        Position::resume(Some(3), Some("e"), None, 0, None),
        Mismatch
    );
    assert_eq!(
        Position::resume(Some(3), Some("e"), Some("e"), 5, None),
        Replay(3)
    );
    assert_eq!(
        Position::resume(Some(0), Some("e"), Some("e"), 5, None),
        Replay(1)
    );
    assert_eq!(
        Position::resume(Some(6), Some("e"), Some("e"), 5, None),
        AtHead
    );
    assert_eq!(
        Position::resume(Some(7), Some("e"), Some("e"), 5, None),
        Mismatch
    );
    assert_eq!(
        Position::resume(Some(u64::MAX), Some("e"), Some("e"), u64::MAX, None),
        Replay(u64::MAX)
    );
}

#[test]
fn resume_from_the_parent_of_a_continuation() {
    use Resume::*;
    // e2 continues e1 up to 3 and is at 6.
    let f = fork("e1", 4);
    let r = |n: u64, theirs: &str| Position::resume(Some(n), Some(theirs), Some("e2"), 6, Some(&f));
    assert_eq!(r(4, "e1"), Replay(4), "saw 3: gets e2's 4, 5, 6");
    assert_eq!(r(2, "e1"), Replay(2));
    assert_eq!(r(5, "e1"), Mismatch, "saw e1's 4, which e2 lacks");
    assert_eq!(r(9, "e1"), Mismatch);
    assert_eq!(r(4, "e0"), Mismatch, "one level of parent only");
    assert_eq!(r(7, "e2"), AtHead);
    // Nothing published in e2 past the fork yet (head 3 = fork - 1).
    let at_head = Position::resume(Some(4), Some("e1"), Some("e2"), 3, Some(&f));
    assert_eq!(at_head, AtHead);
}

/// A message as the model knows it: its seq and a unique id (two messages with
/// one seq in two lineages differ by id).
type Msg = (Arc<str>, u64, u64);

/// A topic as Redis keeps it: per epoch, the ids of its lineage by seq (a
/// continuation copies its parent's up to the fork) and where it came from; of
/// the current epoch, history retains the last `keep`.
#[derive(Debug, Clone)]
struct Topic {
    order: Vec<Arc<str>>,
    lineage: HashMap<Arc<str>, Vec<u64>>,
    forks: HashMap<Arc<str>, Fork>,
    keep: u64,
    next_id: u64,
}

impl Topic {
    fn new(epoch: Arc<str>, head: u64, keep: u64) -> Self {
        let ids: Vec<u64> = (1..=head).collect();
        Topic {
            order: vec![epoch.clone()],
            lineage: HashMap::from([(epoch, ids)]),
            forks: HashMap::new(),
            keep,
            next_id: head + 1,
        }
    }

    fn current(&self) -> (Arc<str>, u64) {
        let epoch = self.order.last().cloned().expect("one epoch");
        let head = self.lineage[&epoch].len() as u64;
        (epoch, head)
    }

    /// A history read from `from`, at most `limit`, as the broker answers it
    /// (entries of a continuation's lineage carry its epoch).
    fn history(&self, from: u64, limit: u64) -> Vec<Msg> {
        let (epoch, head) = self.current();
        let oldest = head.saturating_sub(self.keep) + 1;
        (from.max(oldest)..=head)
            .take(limit as usize)
            .map(|s| (epoch.clone(), s, self.lineage[&epoch][s as usize - 1]))
            .collect()
    }

    fn publish(&mut self) -> Msg {
        let (epoch, _) = self.current();
        let id = self.next_id;
        self.next_id += 1;
        let ids = self.lineage.get_mut(&epoch).expect("lineage");
        ids.push(id);
        (epoch, ids.len() as u64, id)
    }

    fn start(&mut self, epoch: Arc<str>, ids: Vec<u64>, fork: Option<Fork>) {
        self.order.push(epoch.clone());
        self.lineage.insert(epoch.clone(), ids);
        if let Some(f) = fork {
            self.forks.insert(epoch, f);
        }
    }
}

#[derive(Debug, Clone)]
enum Step {
    /// The engine publishes one message (the reader may or may not see it).
    Publish { seen: bool },
    /// The reader delivers a message it already delivered (a re-read).
    Redeliver,
    /// Redis loses the topic: the next publish starts a new epoch.
    LoseHistory,
    /// The master is replaced, without its last `lost` entries: the next publish
    /// opens a continuation epoch.
    Takeover { lost: u64 },
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec(
        prop_oneof![
            8 => Just(Step::Publish { seen: true }),
            2 => Just(Step::Publish { seen: false }),
            2 => Just(Step::Redeliver),
            1 => Just(Step::LoseHistory),
            2 => (0u64..3).prop_map(|lost| Step::Takeover { lost }),
        ],
        1..120,
    )
}

/// What the client saw.
#[derive(Debug, Default)]
struct Client {
    got: Vec<Msg>,
    /// The session was cut (4008): the client knows to resume.
    cut: bool,
    /// Cut because it saw a message the new epoch lacks.
    forked: bool,
}

/// Runs the session's side of the rules: a live publication through `on_live`
/// (with the fork of its epoch, as the broker knows it), gaps filled from
/// history a page at a time.
fn live(pos: &mut Position, topic: &Topic, m: &Msg, page: u64, c: &mut Client) {
    let (epoch, seq, _) = m;
    match pos.on_live(epoch, *seq, topic.forks.get(epoch)) {
        Live::Deliver => {
            c.got.push(m.clone());
            pos.delivered(*seq);
        }
        Live::Duplicate | Live::Stale => {}
        Live::Forked => {
            c.cut = true;
            c.forked = true;
        }
        Live::FillFrom { until, .. } => {
            while pos.next() < until {
                let read = topic.history(pos.next(), page);
                let n = pos.continues(read.iter().map(|(e, s, _)| (e, *s)), until);
                if n == 0 {
                    c.cut = true;
                    return;
                }
                for m in read.into_iter().take(n) {
                    pos.delivered(m.1);
                    c.got.push(m);
                }
            }
            c.got.push(m.clone());
            pos.delivered(*seq);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Whatever the interleaving of publishes the reader saw or missed, re-reads,
    /// history trimming, lost histories and master takeovers that lose the last
    /// entries, a subscription delivers each message at most once, in seq order,
    /// and without a silent gap or a phantom: within an epoch and across a
    /// continuation the next message is the next seq of the same lineage (a
    /// continuation never restarts from seq 1 and never follows a message it
    /// lacks); a run only skips ahead or restarts when the client is told (a new
    /// epoch that is not a continuation, or a cut it resumes from).
    #[test]
    fn exactly_once_in_order_or_told(
        start_head in 0u64..20,
        keep in 1u64..30,
        page in 1u64..8,
        steps in steps(),
    ) {
        let mut topic = Topic::new(e("e00"), start_head, keep);
        let mut next_epoch = 1;
        let mut new_epoch = || {
            let name = format!("e{next_epoch:02}");
            next_epoch += 1;
            e(&name)
        };
        // Subscribed fresh at the head: live continues after it.
        let (epoch, head) = topic.current();
        let mut pos = Position::at(Some(epoch), head);
        let mut c = Client::default();
        let mut last_live: Option<Msg> = None;
        let mut lost = false;
        let mut takeover: Option<u64> = None;
        for step in steps {
            if c.cut {
                break;
            }
            match step {
                Step::Publish { seen } => {
                    let (cur, head) = topic.current();
                    if lost {
                        topic.start(new_epoch(), Vec::new(), None);
                    } else if let Some(n) = takeover.filter(|_| head > 0) {
                        // The new master has the lineage without its last n.
                        let mut ids = topic.lineage[&cur].clone();
                        ids.truncate(ids.len().saturating_sub(n as usize).max(1));
                        let at = ids.len() as u64 + 1;
                        topic.start(new_epoch(), ids, Some(Fork { parent: cur, at }));
                    }
                    (lost, takeover) = (false, None);
                    let m = topic.publish();
                    if seen {
                        live(&mut pos, &topic, &m, page, &mut c);
                        last_live = Some(m);
                    }
                }
                Step::Redeliver => {
                    if let Some(m) = last_live.clone() {
                        live(&mut pos, &topic, &m, page, &mut c);
                    }
                }
                Step::LoseHistory => lost = true,
                Step::Takeover { lost } => takeover = Some(lost),
            }
        }
        for w in c.got.windows(2) {
            let ((e0, s0, i0), (e1, s1, i1)) = (&w[0], &w[1]);
            let continuation = topic.forks.get(e1).is_some_and(|f| f.parent == *e0);
            if e0 == e1 || continuation {
                // The next seq of one lineage, both messages its own.
                prop_assert_eq!(*s1, s0 + 1, "gap, duplicate or restart in {:?}", c.got);
                let ids = &topic.lineage[e1];
                prop_assert_eq!(ids.get(*s0 as usize - 1), Some(i0), "phantom before {:?}", w);
                prop_assert_eq!(ids.get(*s1 as usize - 1), Some(i1));
            } else {
                prop_assert!(epoch_cmp(e1, e0) == Ordering::Greater, "older epoch after newer: {:?}", c.got);
            }
        }
        // The first message continues the subscribe position (or opens a new epoch).
        if let Some((e0, s0, _)) = c.got.first() {
            if **e0 == *"e00" {
                prop_assert_eq!(*s0, start_head + 1);
            }
        }
        // Told of a fork only when it delivered a message the new epoch lacks (or
        // subscribed at a head that reflected one: ids of the start are the seqs).
        if c.forked {
            let start = (e("e00"), start_head, start_head);
            let (epoch, s, id) = c.got.last().cloned().unwrap_or(start);
            let (cur, _) = topic.current();
            let f = &topic.forks[&cur];
            prop_assert_eq!(&f.parent, &epoch);
            prop_assert!(s >= f.at && topic.lineage[&cur].get(s as usize - 1) != Some(&id));
        }
        // Nothing is missing from the current epoch unless the client was told.
        if !c.cut {
            if let Some((epoch, _, _)) = c.got.last() {
                let (cur, head) = topic.current();
                let seen_live = last_live.as_ref().map(|(e, s, _)| (e.clone(), *s));
                if *epoch == cur && seen_live.as_ref().is_some_and(|(e, _)| *e == cur) {
                    let want = seen_live.map(|(_, s)| s).unwrap_or(head);
                    prop_assert_eq!(pos.last(), want);
                }
            }
        }
    }
}
