//! The network edge below HTTP: address ranges for trusted proxies and per-IP caps.

mod cidr;

pub use cidr::Cidr;
