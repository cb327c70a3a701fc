//! Alerts first on the live path: the reader takes every pub/sub message already
//! waiting for it (up to [`BATCH_MAX`]) and hands the batch's alerts to the hub
//! before its deltas, so an alert to a few sessions does not wait behind the
//! fan-out of deltas that arrived just before it.
//!
//! Per topic the order never changes: an alert takes the batch's earlier messages
//! of its own topic along (they precede it in seq order), as the session's mailbox
//! does. Across topics there is no order to keep.

use fred::types::Message;
use tokio::sync::broadcast::{error::TryRecvError, Receiver};

use super::Live;
use crate::{
    broker::redis::decode::Decoder,
    publication::{Pub, Sink},
};
use sluice_common::protocol::FrameType;

/// Messages taken from the pub/sub buffer per batch: a bound on how long the
/// reader goes without looking at its other inputs (arming, reconnects).
pub(super) const BATCH_MAX: usize = 256;

/// Reorders `batch` so that every alert, with the earlier messages of its topic,
/// comes before the other messages; each group keeps the batch's order. Returns
/// whether anything moved.
pub(super) fn alerts_first(batch: &mut Vec<Pub>) -> bool {
    let Some(last_alert) = batch.iter().rposition(|p| p.kind == FrameType::Alert) else {
        return false;
    };
    // A message goes ahead when an alert of its topic comes at or after it: one
    // backward pass, collecting the topics of the alerts seen so far.
    let mut ahead = vec![false; batch.len()];
    let mut alerted: Vec<&sluice_common::Topic> = Vec::new();
    for (p, a) in batch
        .iter()
        .zip(ahead.iter_mut())
        .take(last_alert + 1)
        .rev()
    {
        if p.kind == FrameType::Alert && !alerted.contains(&&p.topic) {
            alerted.push(&p.topic);
        }
        *a = alerted.contains(&&p.topic);
    }
    if ahead.iter().take_while(|a| **a).count() == ahead.iter().filter(|a| **a).count() {
        // The alerts and their topics' messages lead already.
        return false;
    }
    let (mut first, mut rest) = (Vec::with_capacity(batch.len()), Vec::new());
    for (p, a) in batch.drain(..).zip(ahead) {
        if a {
            first.push(p);
        } else {
            rest.push(p);
        }
    }
    first.append(&mut rest);
    *batch = first;
    true
}

/// What draining the pub/sub buffer found besides messages.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Drained {
    /// Messages were lost to a full buffer: every followed stream must be read.
    pub lagged: Option<u64>,
    /// The channel is closed: the reader ends after this batch.
    pub closed: bool,
}

/// Appends to `out` the messages waiting in `rx`, up to [`BATCH_MAX`] in all.
pub(super) fn drain_waiting(rx: &mut Receiver<Message>, out: &mut Vec<Message>) -> Drained {
    let mut d = Drained::default();
    while out.len() < BATCH_MAX {
        match rx.try_recv() {
            Ok(m) => out.push(m),
            Err(TryRecvError::Empty) => break,
            Err(TryRecvError::Lagged(n)) => {
                d.lagged = Some(n);
                break;
            }
            Err(TryRecvError::Closed) => {
                d.closed = true;
                break;
            }
        }
    }
    d
}

impl Live {
    /// Decodes a batch of pub/sub messages and offers its publications alerts
    /// first. An announcement keeps its place: the publications before it are
    /// offered before it is handled.
    pub(super) async fn on_batch(
        &self,
        messages: Vec<Message>,
        sink: &dyn Sink,
        decoder: &mut Decoder,
    ) {
        let mut pubs = Vec::with_capacity(messages.len());
        for m in messages {
            if Live::is_announcement(&m) {
                self.offer_all(&mut pubs, sink, decoder).await;
            }
            if let Some(p) = self.decode_message(m, sink, decoder) {
                pubs.push(p);
            }
        }
        self.offer_all(&mut pubs, sink, decoder).await;
    }

    async fn offer_all(&self, pubs: &mut Vec<Pub>, sink: &dyn Sink, decoder: &mut Decoder) {
        alerts_first(pubs);
        for p in pubs.drain(..) {
            self.offer(p, sink, decoder).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::publication::Publication;
    use sluice_common::Topic;

    fn on(topic: &str, seq: u64, kind: FrameType) -> Pub {
        Publication::new(Topic::parse(topic).unwrap(), seq, "e".into(), kind, 0, "{}")
    }

    fn names(b: &[Pub]) -> Vec<String> {
        b.iter()
            .map(|p| {
                let k = if p.kind == FrameType::Alert { "!" } else { "" };
                format!("{}/{}{k}", p.topic, p.seq)
            })
            .collect()
    }

    #[test]
    fn alerts_lead_the_batch_with_their_topics_earlier_messages_in_seq_order() {
        use FrameType::{Alert, Delta};
        let mut b = vec![
            on("prices.a", 1, Delta),
            on("risk.u", 1, Delta),
            on("prices.b", 1, Delta),
            on("risk.u", 2, Alert),
            on("prices.a", 2, Delta),
            on("risk.u", 3, Delta),
            on("risk.v", 1, Alert),
            on("prices.a", 3, Alert),
            on("prices.b", 2, Delta),
        ];
        assert!(alerts_first(&mut b));
        assert_eq!(
            names(&b),
            [
                "prices.a/1",
                "risk.u/1",
                "risk.u/2!",
                "prices.a/2",
                "risk.v/1!",
                "prices.a/3!",
                // After the last alert of its topic, in batch order.
                "prices.b/1",
                "risk.u/3",
                "prices.b/2",
            ]
        );
    }

    #[test]
    fn a_batch_without_alerts_or_already_led_by_them_is_left_as_it_is() {
        use FrameType::{Alert, Delta};
        let mut b = vec![on("prices.a", 1, Delta), on("prices.b", 1, Delta)];
        assert!(!alerts_first(&mut b));
        assert_eq!(names(&b), ["prices.a/1", "prices.b/1"]);
        let mut b = vec![
            on("risk.u", 1, Alert),
            on("risk.u", 2, Delta),
            on("prices.a", 1, Delta),
        ];
        assert!(!alerts_first(&mut b));
        assert_eq!(names(&b), ["risk.u/1!", "risk.u/2", "prices.a/1"]);
        assert!(!alerts_first(&mut Vec::new()));
    }

    #[test]
    fn per_topic_order_holds_for_any_mix() {
        // Every interleaving of three topics' kinds from a fixed pseudo-random walk.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..500 {
            let mut seqs = [0u64; 3];
            let mut b = Vec::new();
            for _ in 0..40 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let t = (x % 3) as usize;
                seqs[t] += 1;
                let kind = if x % 7 == 0 {
                    FrameType::Alert
                } else {
                    FrameType::Delta
                };
                b.push(on(["a", "b", "c"][t], seqs[t], kind));
            }
            let alerts_before: Vec<String> =
                names(&b).into_iter().filter(|n| n.ends_with('!')).collect();
            alerts_first(&mut b);
            assert_eq!(b.len(), 40, "nothing lost or doubled");
            for t in ["a", "b", "c"] {
                let got: Vec<u64> = b
                    .iter()
                    .filter(|p| p.topic.as_str() == t)
                    .map(|p| p.seq)
                    .collect();
                let want: Vec<u64> = (1..=got.len() as u64).collect();
                assert_eq!(got, want, "topic {t} keeps seq order");
            }
            // Every alert precedes every message that is not led by an alert.
            let last_led = b
                .iter()
                .rposition(|p| p.kind == FrameType::Alert)
                .unwrap_or(0);
            let alerts_after: Vec<String> = names(&b[..=last_led.min(b.len() - 1)])
                .into_iter()
                .filter(|n| n.ends_with('!'))
                .collect();
            assert_eq!(alerts_after, alerts_before, "alerts keep their order");
            for (i, p) in b.iter().enumerate().take(last_led) {
                if p.kind != FrameType::Alert {
                    let later_alert = b[i..]
                        .iter()
                        .any(|q| q.kind == FrameType::Alert && q.topic == p.topic);
                    assert!(later_alert, "{i}: only an alert's own topic rides ahead");
                }
            }
        }
    }
}
