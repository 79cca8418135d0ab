//! The WebSocket protocol v1 parser (`protocol::parse`) on any text frame: it must answer every
//! frame with a message or a `bad_request`, never panic, and its error frame must be JSON.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde::de::IgnoredAny;

fuzz_target!(|data: &[u8]| {
    // The server reads text frames only; tungstenite hands them over as UTF-8.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match lakewire::protocol::parse(text) {
        Ok(lakewire::protocol::ClientMessage::Subscribe(s)) => {
            assert!(!s.id.is_empty() && s.id.len() <= 256, "id {:?}", s.id);
        }
        Ok(_) => {}
        Err(e) => {
            let frame = e.to_json();
            if let Err(err) = serde_json::from_str::<IgnoredAny>(&frame) {
                panic!("error frame is not JSON ({err}): {frame}");
            }
        }
    }
});
