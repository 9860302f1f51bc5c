//! Any bytes as a client's text frame: decoded, and validated as `message:send` and
//! `room:create` data, as the gateway does. A panic or a hang is a finding.

#![no_main]

use chat_gateway::request::{Body, decode};
use chat_gateway::validation::{self, ContentLimits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    // A text frame is UTF-8 by the time it reaches the decoder (tungstenite checks).
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    let Ok(request) = decode(text, 64 * 1024) else {
        return;
    };
    let limits = ContentLimits {
        max_content_chars: 5_000,
        max_attachments: 10,
        max_metadata_bytes: 4 * 1024,
        max_metadata_depth: 8,
    };
    match request.body {
        Body::Send(data) => {
            let _ = validation::new_message(data, "fuzz", &limits);
        }
        Body::Create(data) => {
            let _ = validation::new_conversation(data, "fuzz");
        }
        _ => {}
    }
});
