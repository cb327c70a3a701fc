//! Tests of a run's accounting, run ids and topic names.

use super::*;
use crate::accounting::Tally;

#[test]
fn accounting_owes_each_subscriber_every_successful_publish() {
    let out = WorkerOut {
        tally: Tally {
            unique: 1490,
            duplicated: 3,
            out_of_order: 2,
            gaps: 1,
        },
        in_window: 1400,
        per_topic_unique: vec![1000, 490],
        ..Default::default()
    };
    let mut r = Report::default();
    // Topic 0: 10 subscribers × 100; topic 1: 5 × 100 (but 10 received less).
    account(&mut r, &out, &[10, 5], &[100, 100], Duration::from_secs(2));
    assert_eq!(r.expected, 1500);
    assert_eq!(r.lost, 10);
    assert_eq!(r.delivered, 1493);
    assert_eq!(r.duplicated, 3);
    assert_eq!(r.out_of_order, 2);
    assert_eq!(r.deliveries_per_sec, 700.0);
}

#[test]
fn topics_without_subscribers_owe_nothing() {
    let out = WorkerOut {
        per_topic_unique: vec![0, 0],
        ..Default::default()
    };
    let mut r = Report::default();
    account(&mut r, &out, &[0, 0], &[50, 7], Duration::from_secs(1));
    assert_eq!((r.expected, r.lost, r.delivered), (0, 0, 0));
}

#[test]
fn run_ids_and_topic_names_are_valid_and_fresh() {
    let a = topic_names(3);
    std::thread::sleep(Duration::from_millis(2));
    let b = topic_names(1);
    assert_eq!(a.len(), 3);
    assert!(a[0] != b[0]);
    for t in a.iter() {
        sluice_common::topic::Topic::parse(t).expect("valid topic");
    }
}
