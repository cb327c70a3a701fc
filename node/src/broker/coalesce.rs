//! Single flight for the broker's reads: concurrent reads of one topic share one
//! read of the store, so a storm of resuming clients costs Redis a read per topic,
//! not one per client.
//!
//! [`Coalescing`] wraps any [`Broker`]. A read with no matching read to join starts
//! one in a spawned task and registers it; reads arriving before it is sent to the
//! store join it and get the same result, or the same error. A read is joinable
//! only until it is sent: a caller must get a state at least as new as its own
//! request (a session joins the hub first, then reads; a read that ran before the
//! join could miss publications that reached neither the read nor the session's
//! mailbox). The task yields once before sending, so sessions woken together (a
//! storm) join it. The task, not the caller, owns the read, so a caller that is
//! cancelled (its session closed) strands no one. The task unregisters its read
//! before its result is handed out: nothing is cached, and a read issued after one
//! completed goes to the store again. The tables hold only reads in flight (the
//! newest per key; at most [`MAX_HISTORY_FLIGHTS`] history reads per topic).
//!
//! Reads the inner broker can answer from memory (`Broker::local_history`, and a
//! follow of a topic it follows and is caught up with, `Broker::local_head`) are
//! answered at once, without a task or a table entry: in a storm on a followed
//! topic that is every resume but the first few.
//!
//! History reads of one topic share one read of the widest range: a read from
//! `from` joins an unsent read of the topic and widens it to cover both ranges (up
//! to [`MAX_HISTORY_SPAN`] entries), and every caller takes its slice, the entries
//! with `seq >= from`, at most its own limit. The read runs after every joiner
//! asked, so each slice is what a read of its own could have returned.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex, MutexGuard,
    },
    time::Duration,
};

use futures_util::future::{BoxFuture, FutureExt, Shared};
use sluice_common::{StreamPosition, Topic};

use super::{Broker, BrokerError, PublishRequest, TopicState};
use crate::publication::Pub;

/// Distinct history reads of one topic in flight at once; past this, a read goes
/// to the store without registering (the table stays bounded whatever arrives).
pub const MAX_HISTORY_FLIGHTS: usize = 16;
/// The widest range one shared history read covers (the REST history limit).
pub const MAX_HISTORY_SPAN: u64 = 1000;

type SharedRead<T> = Shared<BoxFuture<'static, Result<T, BrokerError>>>;

/// Set by the read task just before it sends its read: from then on, the read may
/// have run before a new caller's request, which must not join it.
type Sent = Arc<AtomicBool>;

struct Flight<T> {
    id: u64,
    read: SharedRead<T>,
    sent: Sent,
}

struct HistoryFlight {
    id: u64,
    from: u64,
    limit: usize,
    read: SharedRead<Arc<Vec<Pub>>>,
    sent: Sent,
}

impl HistoryFlight {
    /// The range this read would cover with `[from, from + limit)` joined to it,
    /// if it is not sent yet and that stays within [`MAX_HISTORY_SPAN`].
    fn widened(&self, from: u64, limit: usize) -> Option<(u64, usize)> {
        if self.sent.load(Ordering::SeqCst) {
            return None;
        }
        let start = self.from.min(from);
        let end = self
            .from
            .saturating_add(self.limit as u64)
            .max(from.saturating_add(limit as u64));
        (end - start <= MAX_HISTORY_SPAN).then(|| (start, (end - start) as usize))
    }
}

type Table<T> = Arc<Mutex<HashMap<Topic, Flight<T>>>>;
type HistoryTable = Arc<Mutex<HashMap<Topic, Vec<HistoryFlight>>>>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs its closure when dropped: the read task unregisters itself this way even
/// if the read panics.
struct OnDrop<F: FnOnce()>(Option<F>);

impl<F: FnOnce()> Drop for OnDrop<F> {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f();
        }
    }
}

/// Starts `read` in its own task; `unregister` runs when the task ends, before the
/// result reaches any waiter. Called with the table's lock held, so the task cannot
/// unregister before it is registered.
fn spawn_read<T, F, U>(read: F, unregister: U) -> (SharedRead<T>, Sent)
where
    T: Clone + Send + Sync + 'static,
    F: std::future::Future<Output = Result<T, BrokerError>> + Send + 'static,
    U: FnOnce() + Send + 'static,
{
    let sent = Sent::default();
    let mark = sent.clone();
    let task = tokio::spawn(async move {
        let _unregister = OnDrop(Some(unregister));
        // One pass of the scheduler first: the sessions woken with the one that
        // started this read (a storm) join it before it goes out.
        tokio::task::yield_now().await;
        mark.store(true, Ordering::SeqCst);
        read.await
    });
    let shared = async move {
        task.await.unwrap_or_else(|e| {
            Err(BrokerError::Unavailable(format!(
                "a broker read failed: {e}"
            )))
        })
    }
    .boxed()
    .shared();
    (shared, sent)
}

/// A [`Broker`] whose concurrent reads of one topic share one read of the inner one.
pub struct Coalescing {
    inner: Arc<dyn Broker>,
    states: Table<TopicState>,
    heads: Table<Option<StreamPosition>>,
    follows: Table<()>,
    histories: HistoryTable,
    next_id: AtomicU64,
    /// Counts `unfollow` calls, so a follow in flight can tell one happened.
    unfollows: Arc<AtomicU64>,
}

impl std::fmt::Debug for Coalescing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coalescing")
            .field("inner", &self.inner)
            .field("in_flight", &self.in_flight())
            .finish()
    }
}

impl Coalescing {
    pub fn new(inner: Arc<dyn Broker>) -> Self {
        Coalescing {
            inner,
            states: Table::default(),
            heads: Table::default(),
            follows: Table::default(),
            histories: HistoryTable::default(),
            next_id: AtomicU64::new(0),
            unfollows: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Reads in flight now, over every kind (0 when nothing is being read).
    pub fn in_flight(&self) -> usize {
        lock(&self.states).len()
            + lock(&self.heads).len()
            + lock(&self.follows).len()
            + lock(&self.histories).values().map(Vec::len).sum::<usize>()
    }

    fn id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Joins the read of `topic` in flight in `table` (only if not sent yet, when
    /// `fresh`), or starts one with `read`.
    async fn single<T, R>(
        &self,
        table: &Table<T>,
        topic: &Topic,
        fresh: bool,
        read: R,
    ) -> Result<T, BrokerError>
    where
        T: Clone + Send + Sync + 'static,
        R: FnOnce(Arc<dyn Broker>, Topic) -> BoxFuture<'static, Result<T, BrokerError>>,
    {
        let shared = {
            let mut map = lock(table);
            match map.get(topic) {
                Some(f) if !(fresh && f.sent.load(Ordering::SeqCst)) => f.read.clone(),
                // None, or one already sent (it stays with its waiters; this one
                // takes its place in the table).
                _ => {
                    let id = self.id();
                    let (table, key) = (table.clone(), topic.clone());
                    let (shared, sent) =
                        spawn_read(read(self.inner.clone(), topic.clone()), move || {
                            let mut map = lock(&table);
                            if map.get(&key).is_some_and(|f| f.id == id) {
                                map.remove(&key);
                            }
                        });
                    map.insert(
                        topic.clone(),
                        Flight {
                            id,
                            read: shared.clone(),
                            sent,
                        },
                    );
                    shared
                }
            }
        };
        shared.await
    }

    /// Starts a history read and registers it under `topic` (lock held by caller).
    /// Its range is read when it is sent: joiners may have widened it until then.
    fn start_history(
        &self,
        flights: &mut Vec<HistoryFlight>,
        topic: &Topic,
        from: u64,
        limit: usize,
    ) -> SharedRead<Arc<Vec<Pub>>> {
        let id = self.id();
        let (inner, t) = (self.inner.clone(), topic.clone());
        let (table, key) = (self.histories.clone(), topic.clone());
        let read = async move {
            let range = {
                let map = lock(&table);
                map.get(&key)
                    .and_then(|v| v.iter().find(|f| f.id == id))
                    .map(|f| (f.from, f.limit))
            };
            let (from, limit) = range.unwrap_or((from, limit));
            inner.history(&t, from, limit).await.map(Arc::new)
        };
        let (table, key) = (self.histories.clone(), topic.clone());
        let (shared, sent) = spawn_read(read, move || {
            let mut map = lock(&table);
            if let Some(flights) = map.get_mut(&key) {
                flights.retain(|f| f.id != id);
                if flights.is_empty() {
                    map.remove(&key);
                }
            }
        });
        flights.push(HistoryFlight {
            id,
            from,
            limit,
            read: shared.clone(),
            sent,
        });
        shared
    }
}

/// How one history read is served.
enum Plan {
    /// A shared read (its own, or one it joined and widened): its slice of it.
    Shared(SharedRead<Arc<Vec<Pub>>>),
    /// Straight to the store (too many distinct reads of the topic in flight).
    Direct,
}

#[async_trait::async_trait]
impl Broker for Coalescing {
    async fn publish(&self, req: PublishRequest<'_>) -> Result<StreamPosition, BrokerError> {
        self.inner.publish(req).await
    }

    async fn state(&self, topic: &Topic) -> Result<TopicState, BrokerError> {
        self.single(&self.states, topic, true, |inner, t| {
            async move { inner.state(&t).await }.boxed()
        })
        .await
    }

    async fn head(&self, topic: &Topic) -> Result<Option<StreamPosition>, BrokerError> {
        self.single(&self.heads, topic, true, |inner, t| {
            async move { inner.head(&t).await }.boxed()
        })
        .await
    }

    async fn history(
        &self,
        topic: &Topic,
        from: u64,
        limit: usize,
    ) -> Result<Vec<Pub>, BrokerError> {
        if limit == 0 {
            return self.inner.history(topic, from, limit).await;
        }
        if let Some(page) = self.inner.local_history(topic, from, limit) {
            return Ok(page);
        }
        let plan = {
            let mut map = lock(&self.histories);
            let flights = map.entry(topic.clone()).or_default();
            // The unsent read this one widens least (none at all when it covers it).
            let join = flights
                .iter()
                .enumerate()
                .filter_map(|(i, f)| f.widened(from, limit).map(|w| (i, w, w.1 - f.limit)))
                .min_by_key(|(_, _, grows)| *grows);
            match join {
                Some((i, (start, span), _)) => {
                    let f = &mut flights[i];
                    (f.from, f.limit) = (start, span);
                    Plan::Shared(f.read.clone())
                }
                None if flights.len() < MAX_HISTORY_FLIGHTS => {
                    Plan::Shared(self.start_history(flights, topic, from, limit))
                }
                None => Plan::Direct,
            }
        };
        match plan {
            Plan::Shared(read) => {
                let page = read.await?;
                Ok(page
                    .iter()
                    .filter(|p| p.seq >= from)
                    .take(limit)
                    .cloned()
                    .collect())
            }
            Plan::Direct => self.inner.history(topic, from, limit).await,
        }
    }

    async fn follow(&self, topic: &Topic) -> Result<(), BrokerError> {
        // Followed and caught up already: live delivery is armed, nothing to do
        // (and no task to spawn for every joiner of a followed topic).
        if self.inner.local_head(topic).is_some() {
            return Ok(());
        }
        // Arming is lasting, so any follow in flight will do (what was published
        // before it is the caller's state or head read's business, read after).
        let unfollows = self.unfollows.clone();
        self.single(&self.follows, topic, false, move |inner, t| {
            async move {
                let seen = unfollows.load(Ordering::Acquire);
                let r = inner.follow(&t).await;
                // A session that started this follow may have been cancelled and
                // left the hub meanwhile; its unfollow ran before this follow armed
                // the topic. Unfollow again: the broker re-checks the hub, so this
                // does nothing while any session still wants the topic.
                if unfollows.load(Ordering::Acquire) != seen {
                    inner.unfollow(&t);
                }
                r
            }
            .boxed()
        })
        .await
    }

    /// The topics not followed yet go to the inner broker in one call (its
    /// batches), in a task of its own: a wildcard join that is cancelled (its
    /// session closed) leaves no topic half armed. Topics the inner broker follows
    /// and is caught up with are left out, as in [`Coalescing::follow`]. Not joined
    /// with concurrent follows of the same topics: arming twice is harmless, and a
    /// wildcard join is rare (once per pattern subscribe).
    async fn follow_many(&self, topics: &[Topic]) -> Result<(), BrokerError> {
        let todo: Vec<Topic> = topics
            .iter()
            .filter(|t| self.inner.local_head(t).is_none())
            .cloned()
            .collect();
        if todo.is_empty() {
            return Ok(());
        }
        let (inner, unfollows) = (self.inner.clone(), self.unfollows.clone());
        let task = tokio::spawn(async move {
            let seen = unfollows.load(Ordering::Acquire);
            let r = inner.follow_many(&todo).await;
            // As in `follow`: an unfollow meanwhile may have run before these
            // topics were armed; the broker re-checks the hub for each.
            if unfollows.load(Ordering::Acquire) != seen {
                for t in &todo {
                    inner.unfollow(t);
                }
            }
            r
        });
        task.await.unwrap_or_else(|e| {
            Err(BrokerError::Unavailable(format!(
                "following topics failed: {e}"
            )))
        })
    }

    fn unfollow(&self, topic: &Topic) {
        self.unfollows.fetch_add(1, Ordering::AcqRel);
        self.inner.unfollow(topic);
    }

    fn is_connected(&self) -> bool {
        self.inner.is_connected()
    }

    // Wildcard discovery passes straight through (rare: once per wildcard
    // subscribe and once per new topic).
    async fn follow_new(&self, topic: &Topic, epoch: &str) -> Result<(), BrokerError> {
        self.inner.follow_new(topic, epoch).await
    }

    fn discovers_topics(&self) -> bool {
        self.inner.discovers_topics()
    }

    async fn topics_matching(
        &self,
        filter: &sluice_common::TopicFilter,
    ) -> Result<Vec<Topic>, BrokerError> {
        self.inner.topics_matching(filter).await
    }

    async fn shutdown(&self) {
        self.inner.shutdown().await;
    }

    async fn register_node(
        &self,
        node_id: &str,
        record: &str,
        ttl: Duration,
    ) -> Result<(), BrokerError> {
        self.inner.register_node(node_id, record, ttl).await
    }

    async fn deregister_node(&self, node_id: &str) {
        self.inner.deregister_node(node_id).await;
    }

    fn local_head(&self, topic: &Topic) -> Option<StreamPosition> {
        self.inner.local_head(topic)
    }

    fn local_history(&self, topic: &Topic, from: u64, limit: usize) -> Option<Vec<Pub>> {
        self.inner.local_history(topic, from, limit)
    }

    fn fork_of(&self, topic: &Topic, epoch: &str) -> Option<sluice_common::position::Fork> {
        self.inner.fork_of(topic, epoch)
    }

    async fn live_nodes(&self) -> Result<Vec<String>, BrokerError> {
        self.inner.live_nodes().await
    }
}

#[cfg(test)]
#[path = "coalesce_tests.rs"]
mod tests;
