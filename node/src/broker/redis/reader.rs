//! The live path: each published entry arrives on its topic's sharded pub/sub
//! channel (`SPUBLISH sluice:{T}:live`), and a node subscribes (`SSUBSCRIBE`) only
//! to the channels of the topics its sessions follow. A publish of a topic nobody
//! follows costs Redis no work per node, and on Cluster the channel lives in the
//! topic's slot, on the master that runs the publish.
//!
//! The stream stays the source of truth. Per followed topic the reader keeps its
//! position in a [`Tail`] and delivers a live message only when it is the next seq
//! of the same epoch; a seq jump or another epoch makes it read the topic's stream
//! (`sluice_history`, one key) from the position first. After the subscriber
//! connection comes back (or the reader falls behind its messages) every followed
//! topic is read from its position, so a quiet topic's last message does not wait
//! for the next publish. Pub/sub may lose messages; the position never skips one.
//!
//! One task per node runs the reader: live messages, arming of new topics and
//! catch-up reads are handled in that one order, so the hub sees each topic's
//! publications in seq order without a lock held across an `.await`.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use fred::{
    clients::{Client, Pool},
    interfaces::{EventInterface, PubsubInterface},
    types::{config::Server, Message, MessageKind, Value},
};
use sluice_common::{keys, redact, StreamPosition, Topic};
use tokio::sync::{broadcast::error::RecvError, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

mod batch;
mod catch_up;
mod discovery;
mod fill;
mod forks;
mod owners;

use super::{
    decode::{decode_live, Decoder},
    tail::{Fit, Tail},
};
use crate::{
    broker::BrokerError,
    publication::{Pub, Sink},
};

/// How long `follow` waits for the subscription and the arming.
const ARM_TIMEOUT: Duration = Duration::from_secs(3);
/// Catch-up reads of many topics (after a reconnect) run this many at a time.
const CATCH_UP_CONCURRENCY: usize = 64;
/// Topics a wildcard's follow subscribes to and reads the positions of per batch
/// ([`Live::follow_many`]): one pipeline of this many `HMGET`s (a few kB) per
/// round trip, and the arming waits per batch, not per topic.
pub(super) const FOLLOW_BATCH: usize = 256;
/// Live messages of a topic kept while its position is being read; beyond that
/// the arming reads the stream instead.
const EARLY_MAX: usize = 1_024;
/// A topic whose catch-up read failed is read again after this long.
const RETRY: Duration = Duration::from_secs(1);
/// Pub/sub messages fred buffers for the reader task before it counts as lagging
/// (and reads every followed stream): fred's default of 32 is one burst.
pub(super) const MESSAGE_BUFFER: usize = 65_536;

#[derive(Debug)]
struct Followed {
    /// The position reached, and the recent publications.
    tail: Tail,
    /// Whether the position has been read; until then live messages wait in `early`.
    armed: bool,
    early: Vec<Pub>,
    /// Messages may have been missed before arming: read the stream when arming.
    read_on_arm: bool,
    /// The last catch-up read failed: try again in [`RETRY`].
    stale: bool,
    /// The Cluster master the channel's `SSUBSCRIBE` was routed to (`None` on one
    /// server or Sentinel); see [`owners`].
    owner: Option<Server>,
    /// The latest continuation epoch read of, and its fork ([`forks`]).
    fork: Option<(Arc<str>, sluice_common::position::Fork)>,
}

/// The position `follow` read, handed to the reader task.
#[derive(Debug)]
struct Arm {
    topic: Topic,
    epoch: Option<Arc<str>>,
    head: u64,
    /// Read the stream from `head` on arming (a topic followed from an announced
    /// epoch's start: its first entries came before the subscription).
    read: bool,
    /// The newest entries up to `head`, read with it ([`fill`]): the tail's start.
    fill: fill::Entries,
    done: oneshot::Sender<()>,
}

#[derive(Debug)]
pub(super) struct Live {
    /// Subscribed to the followed topics' channels; a subscribed connection can do
    /// nothing else.
    subscriber: Client,
    /// For the position and catch-up reads.
    pool: Pool,
    followed: Mutex<HashMap<Topic, Followed>>,
    /// Held across each (un)subscribe so that a follow and an unfollow of one
    /// topic reach Redis in the order they were decided.
    subscribing: tokio::sync::Mutex<()>,
    arm_tx: mpsc::UnboundedSender<Arm>,
    arm_rx: Mutex<Option<mpsc::UnboundedReceiver<Arm>>>,
    tail_size: usize,
    /// Subscribed to the new-topic announcements ([`keys::TOPICS`]), which a
    /// wildcard subscription turns on ([`discovery`]).
    discovery: std::sync::atomic::AtomicBool,
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Unavailable(redact::scrub(&format!("{what}: {e}")))
}

impl Live {
    pub(super) fn new(subscriber: Client, pool: Pool, tail_size: usize) -> Arc<Self> {
        let (arm_tx, arm_rx) = mpsc::unbounded_channel();
        Arc::new(Live {
            subscriber,
            pool,
            followed: Mutex::new(HashMap::new()),
            subscribing: tokio::sync::Mutex::new(()),
            arm_tx,
            arm_rx: Mutex::new(Some(arm_rx)),
            tail_size,
            discovery: Default::default(),
        })
    }

    pub(super) fn client(&self) -> &Client {
        &self.subscriber
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Topic, Followed>> {
        self.followed.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Subscribes to `topic`'s channel, reads its position, and returns once the
    /// reader delivers every later publication of it.
    pub(super) async fn follow(&self, topic: &Topic) -> Result<(), BrokerError> {
        self.follow_from(topic, None).await
    }

    /// [`Live::follow`]; with `start`, the position is not read but taken as seq 0
    /// of that epoch, and the stream is read from there once armed.
    pub(super) async fn follow_from(
        &self,
        topic: &Topic,
        start: Option<Arc<str>>,
    ) -> Result<(), BrokerError> {
        if !self.register(topic) {
            return Ok(());
        }
        {
            let _order = self.subscribing.lock().await;
            // Where fred routes it; if it is redirected, the next owner check
            // subscribes once more, which is harmless.
            let owner = self.owner_of(topic);
            if let Some(f) = self.lock().get_mut(topic) {
                f.owner = owner;
            }
            let sub = self.subscriber.ssubscribe(keys::live(topic.as_str()));
            match tokio::time::timeout(ARM_TIMEOUT, sub).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(unavailable("subscribing to the topic", e.details())),
                Err(_) => return Err(unavailable("subscribing to the topic", "timed out")),
            }
        }
        let (done, armed) = oneshot::channel();
        let arm = match start {
            Some(epoch) => Arm {
                topic: topic.clone(),
                head: 0,
                epoch: Some(epoch),
                read: true,
                fill: Vec::new(),
                done,
            },
            None => {
                // Read after the subscription took effect: anything later arrives
                // live; the entries up to the position fill the tail.
                let f = self.read_position_and_tail(topic).await?;
                Arm {
                    topic: topic.clone(),
                    head: f.head,
                    epoch: f.epoch.map(Arc::from),
                    read: false,
                    fill: f.newest_first,
                    done,
                }
            }
        };
        if self.arm_tx.send(arm).is_err() {
            return Err(BrokerError::Unavailable(
                "the live reader has stopped".into(),
            ));
        }
        if tokio::time::timeout(ARM_TIMEOUT, armed).await.is_err() {
            debug!(%topic, "live reader did not confirm the new topic in time");
        }
        Ok(())
    }

    /// Records `topic` as followed (not armed yet) if it is not; `false` when it
    /// is armed already (nothing to do). One being armed by another follow is
    /// armed again, which is harmless.
    fn register(&self, topic: &Topic) -> bool {
        let mut m = self.lock();
        match m.get(topic) {
            Some(f) => !f.armed,
            None => {
                m.insert(
                    topic.clone(),
                    Followed {
                        tail: Tail::new(self.tail_size),
                        armed: false,
                        early: Vec::new(),
                        read_on_arm: false,
                        stale: false,
                        owner: None,
                        fork: None,
                    },
                );
                true
            }
        }
    }

    /// Follows many topics for a wildcard ([`crate::broker::Broker::follow_many`]):
    /// per batch of [`FOLLOW_BATCH`], subscribes to every channel, then reads every
    /// position in one pipeline ([`Live::read_positions`]; no stream read, so the
    /// tails start empty), hands them all to the reader and waits for the batch's
    /// arming. The `SSUBSCRIBE`s stay one command per topic, issued together:
    /// fred matches one answer per command, so a command naming many channels
    /// (which on Cluster would have to share a slot anyway) would leave the other
    /// answers to be taken for later commands' (fred 10.1).
    pub(super) async fn follow_many(&self, topics: &[Topic]) -> Result<(), BrokerError> {
        for batch in topics.chunks(FOLLOW_BATCH) {
            self.follow_batch(batch).await?;
        }
        Ok(())
    }

    async fn follow_batch(&self, topics: &[Topic]) -> Result<(), BrokerError> {
        let todo: Vec<Topic> = topics
            .iter()
            .filter(|t| self.register(t))
            .cloned()
            .collect();
        if todo.is_empty() {
            return Ok(());
        }
        {
            let _order = self.subscribing.lock().await;
            {
                let mut m = self.lock();
                for topic in &todo {
                    let owner = self.owner_of(topic);
                    if let Some(f) = m.get_mut(topic) {
                        f.owner = owner;
                    }
                }
            }
            let subs = futures_util::future::join_all(
                todo.iter()
                    .map(|t| self.subscriber.ssubscribe(keys::live(t.as_str()))),
            );
            match tokio::time::timeout(ARM_TIMEOUT, subs).await {
                Ok(results) => {
                    if let Some(e) = results.into_iter().find_map(Result::err) {
                        return Err(unavailable("subscribing to the topics", e.details()));
                    }
                }
                Err(_) => return Err(unavailable("subscribing to the topics", "timed out")),
            }
        }
        // Read after every subscription took effect, as in `follow_from`.
        let positions = self.read_positions(&todo).await?;
        let mut armed = Vec::with_capacity(todo.len());
        for (topic, position) in todo.into_iter().zip(positions) {
            let (done, wait) = oneshot::channel();
            let arm = Arm {
                topic,
                head: position.head,
                epoch: position.epoch.map(Arc::from),
                read: false,
                fill: Vec::new(),
                done,
            };
            if self.arm_tx.send(arm).is_err() {
                return Err(BrokerError::Unavailable(
                    "the live reader has stopped".into(),
                ));
            }
            armed.push(wait);
        }
        let all = futures_util::future::join_all(armed);
        if tokio::time::timeout(ARM_TIMEOUT, all).await.is_err() {
            debug!("live reader did not confirm a wildcard's topics in time");
        }
        Ok(())
    }

    /// Stops following `topic` unless a local session follows it again.
    pub(super) fn unfollow(self: &Arc<Self>, topic: &Topic, sink: &dyn Sink) {
        {
            let mut m = self.lock();
            if sink.wants(topic.as_str()) || m.remove(topic).is_none() {
                return;
            }
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let me = self.clone();
        let topic = topic.clone();
        rt.spawn(async move {
            let _order = me.subscribing.lock().await;
            if me.lock().contains_key(&topic) {
                return; // followed again meanwhile
            }
            let unsub = me.subscriber.sunsubscribe(keys::live(topic.as_str()));
            if let Ok(Err(e)) = tokio::time::timeout(ARM_TIMEOUT, unsub).await {
                debug!(%topic, error = %redact::scrub(e.details()), "unsubscribing failed");
            }
        });
    }

    /// History from the topic's tail, when it holds `from` and everything after it.
    pub(super) fn history(&self, topic: &Topic, from: u64, limit: usize) -> Option<Vec<Pub>> {
        let m = self.lock();
        let f = m.get(topic).filter(|f| f.armed)?;
        f.tail.read(from, limit)
    }

    /// Lets a history read from Redis extend the topic's tail backwards.
    /// The position the reader has handed `topic` to the sink up to, when it is
    /// armed and caught up (not waiting for a read); see `Broker::local_head`. The
    /// tail's position moves before the publication is delivered (`place`, then
    /// `deliver`), so a session in the hub gets every seq after it live.
    pub(super) fn local_head(&self, topic: &Topic) -> Option<StreamPosition> {
        let m = self.lock();
        let f = m.get(topic)?;
        if !f.armed || f.stale || f.read_on_arm {
            return None;
        }
        let (epoch, seq) = f.tail.position()?;
        Some(StreamPosition {
            seq,
            epoch: epoch.to_string(),
        })
    }

    pub(super) fn backfill(&self, topic: &Topic, page: &[Pub]) {
        if let Some(f) = self.lock().get_mut(topic).filter(|f| f.armed) {
            f.tail.backfill(page);
        }
    }

    /// Followed topics, and how many publications their tails hold (for tests).
    pub(super) fn followed(&self) -> Vec<(Topic, usize)> {
        let m = self.lock();
        m.iter().map(|(t, f)| (t.clone(), f.tail.len())).collect()
    }

    /// The reader task; ends when `stop` is cancelled. It decodes with `decoder`
    /// (this node's origin), so the publications it delivers name this node.
    pub(super) async fn run(
        self: Arc<Self>,
        sink: Arc<dyn Sink>,
        mut decoder: Decoder,
        stop: CancellationToken,
    ) {
        let Some(mut arms) = self.arm_rx.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            return;
        };
        let mut messages = self.subscriber.message_rx();
        let mut reconnects = self.subscriber.reconnect_rx();
        let mut retry = tokio::time::interval(RETRY);
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut owners = tokio::time::interval(owners::OWNER_CHECK);
        owners.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut slot_map = None;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                r = reconnects.recv() => match r {
                    Ok(_) | Err(RecvError::Lagged(_)) => self.recover(&*sink, &mut decoder).await,
                    Err(RecvError::Closed) => return,
                },
                m = messages.recv() => match m {
                    Ok(m) => {
                        // Alerts first among the messages waiting ([`batch`]).
                        let mut waiting = vec![m];
                        let d = batch::drain_waiting(&mut messages, &mut waiting);
                        self.on_batch(waiting, &*sink, &mut decoder).await;
                        if let Some(n) = d.lagged {
                            warn!(missed = n, "live reader fell behind; reading every followed stream");
                            let all = self.armed_topics();
                            self.catch_up(all, &*sink, &mut decoder).await;
                        }
                        if d.closed {
                            return;
                        }
                    }
                    Err(RecvError::Lagged(n)) => {
                        warn!(missed = n, "live reader fell behind; reading every followed stream");
                        let all = self.armed_topics();
                        self.catch_up(all, &*sink, &mut decoder).await;
                    }
                    Err(RecvError::Closed) => return,
                },
                a = arms.recv() => match a {
                    Some(a) => self.arm(a, &*sink, &mut decoder).await,
                    None => return,
                },
                _ = retry.tick() => {
                    let stale: Vec<Topic> = self
                        .lock()
                        .iter()
                        .filter(|(_, f)| f.stale && f.armed)
                        .map(|(t, _)| t.clone())
                        .collect();
                    if !stale.is_empty() {
                        self.catch_up(stale, &*sink, &mut decoder).await;
                    }
                }
                _ = owners.tick(), if self.clustered() => {
                    self.check_owners(&mut slot_map, &*sink, &mut decoder).await;
                }
            }
        }
    }

    fn armed_topics(&self) -> Vec<Topic> {
        let m = self.lock();
        m.iter()
            .filter(|(_, f)| f.armed)
            .map(|(t, _)| t.clone())
            .collect()
    }

    fn is_announcement(m: &Message) -> bool {
        m.kind == MessageKind::Message && m.channel == keys::TOPICS
    }

    /// A live message's publication; an announcement is handled here and now.
    fn decode_message(&self, m: Message, sink: &dyn Sink, decoder: &mut Decoder) -> Option<Pub> {
        if Self::is_announcement(&m) {
            self.on_announcement(&m.value, sink);
            return None;
        }
        if m.kind != MessageKind::SMessage {
            return None;
        }
        let name = keys::topic_of_live(&m.channel)?;
        // The followed topic's own handle: sessions compare it by address.
        let known = self.lock().get_key_value(name).map(|(t, _)| t.clone());
        let topic = known.or_else(|| Topic::parse(name).ok())?;
        let body: &[u8] = match &m.value {
            Value::Bytes(b) => b,
            Value::String(s) => s.as_bytes(),
            _ => return None,
        };
        match decode_live(&topic, body, decoder) {
            Ok(p) => Some(p),
            // Not written by the function (anyone may SPUBLISH): the stream decides.
            Err(e) => {
                warn!(%topic, error = %e, "ignoring a malformed live message");
                None
            }
        }
    }

    /// Delivers `p` if it is the topic's next publication; after a jump, reads the
    /// stream up to it first.
    async fn offer(&self, p: Pub, sink: &dyn Sink, decoder: &mut Decoder) {
        match self.place(&p) {
            Some(Fit::Gap) => {
                debug!(topic = %p.topic, seq = p.seq, "seq jump on the live path; reading the stream");
                if self.other_epoch(&p) && !self.switch_epoch(&p.topic, false).await {
                    // Redis failed (the topic is stale, read again later), or `p`
                    // is of an older epoch than the topic's (dropped).
                    return;
                }
                self.catch_up(vec![p.topic.clone()], sink, decoder).await;
                // The read covers `p` unless Redis failed (then the topic is stale
                // and read again) or `p` was of an older epoch (dropped).
                if self.place(&p) == Some(Fit::Next) {
                    sink.deliver(&p);
                }
            }
            Some(Fit::Next) => {
                sink.deliver(&p);
            }
            Some(Fit::Seen) | None => {}
        }
    }

    /// Whether `p` is of another epoch than the position reached: the topic
    /// restarted (Redis lost its state) or continues under a new master
    /// ([`Live::switch_epoch`] decides where the read starts).
    fn other_epoch(&self, p: &Pub) -> bool {
        self.lock()
            .get(&p.topic)
            .is_some_and(|f| f.tail.position().is_some_and(|(e, _)| *e != p.epoch))
    }

    /// Appends `p` to its topic's tail if it is next; keeps it for later if the
    /// topic is not armed yet (`None`, as for a topic not followed).
    fn place(&self, p: &Pub) -> Option<Fit> {
        let mut m = self.lock();
        let f = m.get_mut(&p.topic)?;
        if !f.armed {
            if f.early.len() < EARLY_MAX {
                f.early.push(p.clone());
            } else {
                f.read_on_arm = true;
            }
            return None;
        }
        let fit = f.tail.fit(p);
        if fit == Fit::Next {
            f.tail.push(p);
        }
        Some(fit)
    }

    async fn arm(&self, a: Arm, sink: &dyn Sink, decoder: &mut Decoder) {
        let filled = fill::decode(&a.topic, &a.fill, decoder);
        let (early, read) = {
            let mut m = self.lock();
            match m.get_mut(&a.topic) {
                Some(f) if !f.armed => {
                    f.tail.reset(a.epoch, a.head);
                    f.tail.backfill(&filled);
                    f.armed = true;
                    (
                        std::mem::take(&mut f.early),
                        std::mem::take(&mut f.read_on_arm) || a.read,
                    )
                }
                _ => (Vec::new(), false),
            }
        };
        for p in early {
            self.offer(p, sink, decoder).await;
        }
        if read {
            self.catch_up(vec![a.topic.clone()], sink, decoder).await;
        }
        let _ = a.done.send(());
    }

    /// The subscriber connection came back: subscribe again to every followed
    /// topic, then read each from its position.
    async fn recover(&self, sink: &dyn Sink, decoder: &mut Decoder) {
        let topics: Vec<Topic> = {
            let mut m = self.lock();
            for f in m.values_mut().filter(|f| !f.armed) {
                f.read_on_arm = true;
            }
            m.keys().cloned().collect()
        };
        {
            let _order = self.subscribing.lock().await;
            self.resubscribe_discovery().await;
        }
        self.resubscribe(&topics).await;
        self.rediscover(sink).await;
        let armed = self.armed_topics();
        debug!(
            topics = armed.len(),
            "live connection back; reading every followed stream"
        );
        self.catch_up(armed, sink, decoder).await;
    }
}
