//! `chat-loadtest`: the load harness. Scenarios so far:
//!
//! - `bus-longtail`: the bus under a long tail of quiet conversations. It fills a stream with
//!   about 100,000 conversations (hundreds of MB), lets the server's block cache go cold, then
//!   sends to quiet and to hot conversations and reports send-to-ack and send-to-delivery
//!   latency for each, through the product's mechanism (durable publish, then a live publish
//!   after the ack) or through the stream's RePublish, for comparison.
//!
//! The socket-level scenarios (idle, fanout, ramp, longtail, storm) come with the load-harness
//! issue.

mod longtail;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "chat-loadtest",
    version,
    about = "Load harness of the chat backend"
)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// Publish-to-ack and publish-to-delivery for quiet and hot conversations on a large stream.
    BusLongtail(longtail::Options),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().scenario {
        Scenario::BusLongtail(options) => longtail::run(options).await,
    }
}
