//! The network edge below HTTP: the accept loop with its handshake deadline and
//! connection cap, the PROXY protocol header, and who the client is (trusted
//! proxies, the key of its per-IP cap).

mod cidr;
mod client;
mod hold;
pub mod proxy;
mod serve;

pub use cidr::{canonical, Cidr};
pub use client::{cap_key, client_ip};
pub use serve::{serve, Accepted};
