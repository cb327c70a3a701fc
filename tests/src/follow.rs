//! Following one topic with reconnecting clients and proving, at the end, that each
//! client holds every message exactly once and in seq order (the failover tests).

use std::{sync::Arc, time::Duration};

use sluice_common::client::{Client, ClientState, Event};
use tokio::{sync::Mutex, task::JoinHandle};

/// What one client saw.
#[derive(Debug, Default)]
pub struct Received {
    pub seqs: Vec<u64>,
    pub reconnects: usize,
    /// Resumes the server answered with `recovered: false`.
    pub not_recovered: usize,
    /// Frames the client's tracker dropped as repeated, out of order or of an older
    /// epoch: each one is a frame the *server* should not have sent.
    pub duplicates_dropped: u64,
}

/// Records every event of `client` into a shared log until the client ends.
pub fn follow(mut client: Client) -> (Arc<Mutex<Received>>, JoinHandle<()>) {
    let log = Arc::new(Mutex::new(Received::default()));
    let into = log.clone();
    let task = tokio::spawn(async move {
        while let Some(ev) = client.next_event().await {
            let mut r = into.lock().await;
            r.duplicates_dropped = client
                .stats()
                .duplicates_dropped
                .load(std::sync::atomic::Ordering::Relaxed);
            match ev {
                Event::Publication(f) => r.seqs.push(f.seq.unwrap_or(0)),
                Event::State(ClientState::Reconnecting) => r.reconnects += 1,
                Event::Subscribed {
                    resumed: true,
                    recovered: false,
                    ..
                } => r.not_recovered += 1,
                _ => {}
            }
        }
    });
    (log, task)
}

/// Waits until every client has received something.
pub async fn wait_all_receiving(logs: &[Arc<Mutex<Received>>], within: Duration) {
    crate::eventually(within, "every client receives", || async {
        let mut all = true;
        for l in logs {
            all &= !l.lock().await.seqs.is_empty();
        }
        all
    })
    .await;
}

/// Waits until every client's last seq is `last`, then asserts each holds exactly
/// the seqs from where it joined to `last`, once each and in order, and was never
/// told history was lost. Returns how many clients reconnected at least once.
pub async fn assert_every_message_exactly_once(
    logs: &[Arc<Mutex<Received>>],
    last: u64,
    within: Duration,
) -> usize {
    let caught_up = async {
        loop {
            let mut all = true;
            for l in logs {
                all &= l.lock().await.seqs.last() == Some(&last);
            }
            if all {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    if tokio::time::timeout(within, caught_up).await.is_err() {
        let mut report = Vec::new();
        for (i, l) in logs.iter().enumerate() {
            let r = l.lock().await;
            report.push(format!(
                "client {i}: last {:?} of {last}, {} reconnects",
                r.seqs.last(),
                r.reconnects
            ));
        }
        panic!(
            "clients did not catch up within {within:?}:\n{}",
            report.join("\n")
        );
    }
    let want: Vec<u64> = (1..=last).collect();
    let mut reconnected = 0;
    for (i, l) in logs.iter().enumerate() {
        let r = l.lock().await;
        // A client that subscribed after some messages went out starts where it joined.
        let start = r.seqs[0];
        assert_eq!(
            r.seqs,
            want[(start - 1) as usize..],
            "client {i}: lost, duplicated or reordered messages"
        );
        assert_eq!(r.not_recovered, 0, "client {i} was told history was lost");
        assert_eq!(
            r.duplicates_dropped, 0,
            "client {i}: the server sent frames the client had to drop"
        );
        reconnected += usize::from(r.reconnects > 0);
    }
    reconnected
}
