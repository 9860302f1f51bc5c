//! `chat-router`: the routing broker (session placement and presence over gRPC).
//!
//! Not built yet: it arrives with its own issue. The contract reserves its place in
//! `proto/proto/chat/v1/router.proto`. Until then the gateways deliver user events through one
//! subscription per node and presence is not tracked.

use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!(
        "chat-router is not built yet: session placement and presence come with the router issue.\n\
         The chat works without it (gateways, persistence worker and NATS); see README.md."
    );
    ExitCode::from(69)
}
