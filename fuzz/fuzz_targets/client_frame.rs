//! Fuzzes `ClientFrame::parse`, the one function that turns a client's text frame
//! into a request: it must never panic, and every refusal must become an error
//! frame that is valid JSON.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_common::protocol::ClientFrame;

fuzz_target!(|data: &[u8]| {
    // The node hands the parser only text frames, which tungstenite has checked
    // are UTF-8; invalid bytes never get this far.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match ClientFrame::parse(text) {
        Ok(frame) => {
            let _ = format!("{frame:?}");
        }
        Err(e) => {
            let json = e.to_frame().to_json();
            let v: serde_json::Value =
                serde_json::from_str(&json).expect("an error frame is valid JSON");
            assert_eq!(v["type"], "error", "{json}");
            assert!(v["code"].is_string(), "{json}");
        }
    }
});
