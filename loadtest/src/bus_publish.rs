//! The `bus-publish` scenario: the floor of a chat message's cost in nats-server. A bare
//! JetStream publish, as the gateways make one for each message (a chat event of the same size,
//! a de-duplication id, the ack awaited), at a steady rate on a stream configured as the
//! product's, with no consumer, no live publish and no other client; and the CPU the server
//! spent on it, per publish, read from its pid.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream::message::PublishMessage;
use bytes::Bytes;
use chat_proto::subjects;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use prost::Message as _;

use crate::scenario::cpu_micros;

/// Options of the scenario.
#[derive(Debug, clap::Args)]
pub(crate) struct Options {
    /// NATS server to use; the stream `CHAT` on it is deleted and created anew.
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    /// The nats-server's process id, for its CPU.
    #[arg(long)]
    nats_pid: u32,
    /// Publishes a second.
    #[arg(long, default_value_t = 2_000)]
    rate: u64,
    /// How long to publish (the CPU is read over the whole of it).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Conversations the publishes go to, in turn (each its own subject).
    #[arg(long, default_value_t = 200)]
    conversations: usize,
}

pub(crate) async fn run(options: Options) -> anyhow::Result<()> {
    let (_client, js) = crate::bus_longtail::fresh_stream(&options.nats_url, None).await?;
    let conversations: Vec<String> = (0..options.conversations)
        .map(|i| format!("bench-{i:04}"))
        .collect();
    let total = options.rate * options.duration.as_secs();
    let every = Duration::from_secs(1) / u32::try_from(options.rate.max(1))?;
    let mut acks = FuturesUnordered::new();
    let mut failed = 0u64;
    let cpu_before = cpu_micros(&[options.nats_pid]).context("no such nats-server pid")?;
    let started = Instant::now();
    let mut tick = tokio::time::interval(every);
    for n in 0..total {
        tick.tick().await;
        let conversation = &conversations[n as usize % conversations.len()];
        let event = crate::bus_longtail::event(conversation.clone(), format!("message {n}"));
        let publish = PublishMessage::build()
            .payload(Bytes::from(event.encode_to_vec()))
            .message_id(format!("bench:{conversation}:{n}"));
        acks.push(
            js.send_publish(subjects::conversation_stream(conversation), publish)
                .await?
                .into_future(),
        );
        // Acks that arrived meanwhile, without waiting.
        while let Some(Some(ack)) = futures_util::FutureExt::now_or_never(acks.next()) {
            failed += u64::from(ack.is_err());
        }
    }
    while let Some(ack) = acks.next().await {
        failed += u64::from(ack.is_err());
    }
    let elapsed = started.elapsed();
    let cpu = cpu_micros(&[options.nats_pid]).context("nats-server is gone")? - cpu_before;
    println!(
        "bus-publish: {total} publishes in {elapsed:.1?} ({:.0}/s), {failed} failed; nats-server CPU {:.1}% of a core, {:.1} µs per publish",
        total as f64 / elapsed.as_secs_f64(),
        cpu as f64 / elapsed.as_micros() as f64 * 100.0,
        cpu as f64 / total as f64
    );
    Ok(())
}
