//! The Sluice gateway node as a library: `main.rs` and the integration tests both
//! start nodes through [`app`].

pub mod app;
pub mod auth;
pub mod broker;
pub mod config;
pub mod http;
pub mod hub;
pub mod metrics;
pub mod net;
pub mod publication;
pub mod registry;
pub mod session;
pub mod state;
pub mod token;
pub mod ws;

pub use app::{start, RunningNode};
pub use config::Config;
