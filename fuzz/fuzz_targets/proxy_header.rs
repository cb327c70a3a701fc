//! Fuzzes the PROXY protocol v1/v2 header parser (`sluice_node::net::proxy::parse`),
//! which reads the first bytes of every connection when `SLUICE_PROXY_PROTOCOL=on`:
//! it must never panic, whatever a peer sends. Built only with the `proxy` feature
//! until that module is on the branch this runs on.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = sluice_node::net::proxy::parse(data);
});
