//! The `bus-longtail` scenario (see the crate documentation), and the long-tail fill that the
//! socket-level `longtail` scenario shares.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream::{self, stream::Republish};
use bytes::Bytes;
use chat_proto::v1::{ChatMessage, ConversationEvent, MessageCreated, conversation_event::Kind};
use chat_proto::{bus, subjects};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use hdrhistogram::Histogram;
use prost::Message as _;
use tokio::sync::Mutex;

/// Options of the scenario.
#[derive(Debug, clap::Args)]
pub(crate) struct Options {
    /// NATS server to use; the stream `CHAT` on it is deleted and created anew.
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    /// Quiet conversations in the fill.
    #[arg(long, default_value_t = 100_000)]
    quiet: usize,
    /// Messages per quiet conversation in the fill.
    #[arg(long, default_value_t = 2)]
    fill_per_conversation: usize,
    /// Hot conversations.
    #[arg(long, default_value_t = 10)]
    hot: usize,
    /// Bytes of each message's content.
    #[arg(long, default_value_t = 1_200)]
    content_bytes: usize,
    /// How long the stream is left alone after the fill, so that the server's block cache
    /// forgets it.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    cool_down: Duration,
    /// Sends measured per class (quiet, hot).
    #[arg(long, default_value_t = 2_000)]
    samples: usize,
    /// Sends per second per class during the measurement.
    #[arg(long, default_value_t = 200)]
    rate: u64,
    /// Deliver through the stream's RePublish instead of the live publish after the ack.
    #[arg(long)]
    republish: bool,
}

const REPUBLISHED: &str = "bench.republished.>";

/// Connects to `nats_url` and makes the stream `CHAT` anew, configured as the worker makes it
/// (`republish`: with that RePublish); the client, and its JetStream context.
pub(crate) async fn fresh_stream(
    nats_url: &str,
    republish: Option<Republish>,
) -> anyhow::Result<(async_nats::Client, jetstream::Context)> {
    let client = async_nats::connect(nats_url)
        .await
        .context("failed to connect to NATS")?;
    let js = jetstream::new(client.clone());
    let _ = js.delete_stream(subjects::STREAM).await;
    let mut config =
        chat_persistence_worker::stream::config(&chat_persistence_worker::stream::StreamSettings {
            max_age: Duration::from_secs(7 * 24 * 3600),
            max_bytes: 8 * 1024 * 1024 * 1024,
            dedup_window: Duration::from_secs(120),
            replicas: 1,
            audit_retention: Duration::from_secs(90 * 24 * 3600),
            audit_max_bytes: 1024 * 1024 * 1024,
        });
    config.republish = republish;
    js.create_stream(config)
        .await
        .context("failed to create the stream")?;
    Ok((client, js))
}

pub(crate) fn event(conversation_id: String, content: String) -> ConversationEvent {
    ConversationEvent {
        seq: 0,
        conversation_id,
        kind: Some(Kind::MessageCreated(MessageCreated {
            message: Some(ChatMessage {
                sender_id: "bench".into(),
                r#type: "chat".into(),
                content,
                ..Default::default()
            }),
        })),
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

struct Class {
    name: &'static str,
    ack: Histogram<u64>,
    delivery: Histogram<u64>,
}

pub(crate) async fn run(options: Options) -> anyhow::Result<()> {
    let republish = options.republish.then(|| Republish {
        source: subjects::STREAM_SUBJECTS.to_owned(),
        destination: REPUBLISHED.to_owned(),
        headers_only: false,
    });
    let (client, js) = fresh_stream(&options.nats_url, republish).await?;

    fill(
        &js,
        options.quiet,
        options.fill_per_conversation,
        options.hot,
        options.content_bytes,
    )
    .await?;
    println!(
        "cooling down {:?} so that the server's block cache forgets the fill",
        options.cool_down
    );
    tokio::time::sleep(options.cool_down).await;

    // Deliveries: the content carries the class and the send time (µs since `epoch`).
    let epoch = Instant::now();
    let classes = Arc::new(Mutex::new([
        Class {
            name: "quiet",
            ack: histogram(),
            delivery: histogram(),
        },
        Class {
            name: "hot",
            ack: histogram(),
            delivery: histogram(),
        },
    ]));
    let delivery_subject = if options.republish {
        "bench.republished.conv.*".to_owned()
    } else {
        "chat.live.conv.>".to_owned()
    };
    let mut deliveries = client.subscribe(delivery_subject).await?;
    client.flush().await?;
    let receiver_classes = Arc::clone(&classes);
    let receiver = tokio::spawn(async move {
        let mut received = 0usize;
        while let Some(message) = deliveries.next().await {
            let Ok(event) = ConversationEvent::decode(message.payload) else {
                continue;
            };
            let Some(Kind::MessageCreated(created)) = event.kind else {
                continue;
            };
            let content = created.message.unwrap_or_default().content;
            let Some((class, sent)) = content.split_once(':') else {
                continue;
            };
            let Ok(sent) = sent.parse::<u64>() else {
                continue;
            };
            let latency = (epoch.elapsed().as_micros() as u64)
                .saturating_sub(sent)
                .max(1);
            let index = usize::from(class == "hot");
            receiver_classes.lock().await[index]
                .delivery
                .record(latency)
                .ok();
            received += 1;
        }
        received
    });

    let mut senders = Vec::new();
    for (index, name) in ["quiet", "hot"].into_iter().enumerate() {
        let (js, client, classes) = (js.clone(), client.clone(), Arc::clone(&classes));
        let (samples, rate, quiet, hot, republish) = (
            options.samples,
            options.rate,
            options.quiet,
            options.hot,
            options.republish,
        );
        senders.push(tokio::spawn(async move {
            let mut ticker = tokio::time::interval(Duration::from_micros(1_000_000 / rate.max(1)));
            for i in 0..samples {
                ticker.tick().await;
                // Quiet sends spread over the whole tail: each goes to a conversation untouched since the fill.
                let conversation_id = if index == 0 {
                    format!("quiet-{}", (i * 7_919) % quiet)
                } else {
                    format!("hot-{}", i % hot)
                };
                let sent = epoch.elapsed().as_micros() as u64;
                let mut event = event(conversation_id, format!("{name}:{sent}"));
                let ack = bus::start_durable(&js, &event, None, None).await?;
                let stored = bus::finish_durable(ack).await?;
                let acked = (epoch.elapsed().as_micros() as u64)
                    .saturating_sub(sent)
                    .max(1);
                classes.lock().await[index].ack.record(acked).ok();
                if !republish {
                    event.seq = stored.seq;
                    client
                        .publish(
                            subjects::conversation_live(&event.conversation_id),
                            Bytes::from(event.encode_to_vec()),
                        )
                        .await?;
                }
            }
            anyhow::Ok(())
        }));
    }
    for sender in senders {
        sender.await??;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    client.flush().await?;
    receiver.abort();
    let mode = if options.republish {
        "RePublish"
    } else {
        "live publish after ack"
    };
    println!(
        "\nmode: {mode}; {} sends per class at {} per second per class",
        options.samples, options.rate
    );
    println!(
        "{:<6} {:<9} {:>8} {:>8} {:>8} {:>8} {:>9} {:>7}",
        "class", "latency", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms", "count"
    );
    for class in classes.lock().await.iter() {
        for (what, h) in [("to ack", &class.ack), ("to deliv", &class.delivery)] {
            let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
            println!(
                "{:<6} {:<9} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>9.2} {:>7}",
                class.name,
                what,
                ms(0.5),
                ms(0.9),
                ms(0.99),
                ms(0.999),
                h.max() as f64 / 1000.0,
                h.len()
            );
        }
    }
    Ok(())
}

/// Fills the stream with `quiet × per_conversation` messages to conversations `quiet-<i>`, and
/// one in fifty more to `hot-<j>`, each with `content_bytes` of content; prints what it made.
pub(crate) async fn fill(
    js: &jetstream::Context,
    quiet: usize,
    per_conversation: usize,
    hot: usize,
    content_bytes: usize,
) -> anyhow::Result<()> {
    let filler = "x".repeat(content_bytes);
    let started = Instant::now();
    let mut in_flight = FuturesUnordered::new();
    for i in 0..quiet * per_conversation {
        let conversation = format!("quiet-{}", i % quiet);
        let hot = format!("hot-{}", (i / 50) % hot.max(1));
        for conversation_id in [conversation, hot]
            .into_iter()
            .take(if i % 50 == 0 { 2 } else { 1 })
        {
            let ack =
                bus::start_durable(js, &event(conversation_id, filler.clone()), None, None).await?;
            in_flight.push(bus::finish_durable(ack));
        }
        while in_flight.len() > 2_000 {
            in_flight.next().await.expect("not empty")?;
        }
    }
    while let Some(ack) = in_flight.next().await {
        ack?;
    }
    let info = js.get_stream(subjects::STREAM).await?.info().await?.clone();
    println!(
        "filled: {} messages, {} MB, {} subjects, in {:.1} s",
        info.state.messages,
        info.state.bytes / 1_000_000,
        info.state.subjects_count,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
