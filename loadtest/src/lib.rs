//! `sluice-loadtest`: the load generator and benchmark instrument for Sluice, its
//! peers and a raw baseline. Subscribers run on a few current-thread workers; a
//! constant-rate publisher stamps each message with its scheduled time and a
//! per-topic seq; every receipt is checked and timed.

pub mod accounting;
pub mod attack;
pub mod baseline;
pub mod cli;
pub mod commandstats;
pub mod cpu;
pub mod fleet;
pub mod latency;
pub mod masters;
pub mod patterns;
pub mod payload;
pub mod procfs;
pub mod report;
pub mod run;
pub mod scenario;
pub mod schedule;
pub mod stage;
pub mod target;
pub mod ws;
