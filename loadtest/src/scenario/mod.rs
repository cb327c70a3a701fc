//! The scenarios, one per file; each turns a `RunConfig` (and its own options)
//! into a `Report`.

pub mod fanout;
pub mod idle;
pub mod latency;
pub mod mixed;
mod mixed_publish;
pub mod mixed_run;
pub mod storm;
pub mod topics;
