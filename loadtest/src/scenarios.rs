//! The scenarios: what each plans and runs. Each returns its report (also printed and written).

use std::collections::HashMap;
use std::time::Duration;

use anyhow::bail;

use crate::report::RunReport;
use crate::scenario::{Common, Plan, Run, create_rooms, user};
use crate::wire::Socket;

fn run_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_owned()
}

/// Options of `idle`.
#[derive(Debug, Clone, clap::Args, serde::Serialize)]
pub(crate) struct IdleOptions {
    #[command(flatten)]
    pub(crate) common: Common,
    /// Sockets to open and hold.
    #[arg(long, default_value_t = 1_000)]
    pub(crate) sockets: usize,
    /// Direct conversations per user (0 to 3).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(0..=3))]
    pub(crate) direct: u8,
    /// Group conversations per user (0 or 1), of `--group-size` members.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
    pub(crate) groups: u8,
    /// Members of a group.
    #[arg(long, default_value_t = 10)]
    pub(crate) group_size: usize,
    /// How long the sockets are held open.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde_compat")]
    pub(crate) hold: Duration,
}

/// Serializes durations as strings in the JSON report.
mod humantime_serde_compat {
    pub(crate) fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }
}

/// Options of `fanout`.
#[derive(Debug, Clone, clap::Args, serde::Serialize)]
pub(crate) struct FanoutOptions {
    #[command(flatten)]
    pub(crate) common: Common,
    /// Rooms.
    #[arg(long, default_value_t = 200)]
    pub(crate) rooms: usize,
    /// Members of each room (each a socket).
    #[arg(long, default_value_t = 10)]
    pub(crate) members: usize,
    /// Senders, spread over the rooms (default: one per room).
    #[arg(long)]
    pub(crate) senders: Option<usize>,
    /// Messages a second, all senders together.
    #[arg(long, default_value_t = 1_000.0)]
    pub(crate) rate: f64,
    /// How long senders send.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde_compat")]
    pub(crate) duration: Duration,
    /// How long deliveries are awaited after the last send.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde_compat")]
    pub(crate) drain: Duration,
}

/// Options of `ramp`.
#[derive(Debug, Clone, clap::Args, serde::Serialize)]
pub(crate) struct RampOptions {
    #[command(flatten)]
    pub(crate) fanout: FanoutOptions,
    /// The first step's rate, messages a second in.
    #[arg(long, default_value_t = 1_000.0)]
    pub(crate) start_rate: f64,
    /// Each step's rate is the previous one times this.
    #[arg(long, default_value_t = 1.25)]
    pub(crate) step_factor: f64,
    /// The highest rate tried.
    #[arg(long, default_value_t = 50_000.0)]
    pub(crate) max_rate: f64,
    /// A step holds while its p99 delivery latency is at most this many ms (and nothing is lost).
    #[arg(long, default_value_t = 50.0)]
    pub(crate) p99_bound_ms: f64,
}

/// Options of `storm`.
#[derive(Debug, Clone, clap::Args, serde::Serialize)]
pub(crate) struct StormOptions {
    #[command(flatten)]
    pub(crate) fanout: FanoutOptions,
}

/// Options of `longtail`.
#[derive(Debug, Clone, clap::Args, serde::Serialize)]
pub(crate) struct LongtailOptions {
    #[command(flatten)]
    pub(crate) common: Common,
    /// NATS, to fill the stream directly (the fill's realism does not matter; its size does).
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    pub(crate) nats_url: String,
    /// Conversations of the fill (quiet, never sent to again).
    #[arg(long, default_value_t = 100_000)]
    pub(crate) fill_conversations: usize,
    /// Messages per fill conversation.
    #[arg(long, default_value_t = 2)]
    pub(crate) fill_per_conversation: usize,
    /// Content bytes of each fill message.
    #[arg(long, default_value_t = 1_200)]
    pub(crate) fill_bytes: usize,
    /// Measured quiet conversations: each gets one message, long after its creation.
    #[arg(long, default_value_t = 1_000)]
    pub(crate) quiet_rooms: usize,
    /// Measured hot conversations.
    #[arg(long, default_value_t = 10)]
    pub(crate) hot_rooms: usize,
    /// Messages a second to quiet conversations, and (separately) to hot ones.
    #[arg(long, default_value_t = 100.0)]
    pub(crate) rate: f64,
    /// How long the stream is left alone after the fill.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde_compat")]
    pub(crate) cool_down: Duration,
}

/// Rooms of `members` sockets, member `j` of room `r` on gateway `(r·members + j) mod gateways`;
/// `senders` spread over the rooms. Creates the rooms.
async fn rooms_plan(
    common: &Common,
    run_id: &str,
    rooms: usize,
    members: usize,
    senders: usize,
    class: u8,
    offset: usize,
) -> anyhow::Result<Plan> {
    if members < 2 || senders > rooms * members {
        bail!("rooms need 2 or more members, and senders can be at most rooms × members");
    }
    let url = |i: usize| common.urls[i % common.urls.len()].clone();
    let specs = (0..rooms)
        .map(|r| {
            let first = offset + r * members;
            (
                url(first),
                user(run_id, first),
                (1..members).map(|j| user(run_id, first + j)).collect(),
            )
        })
        .collect();
    let ids = create_rooms(common, specs, 16).await?;
    let mut sockets = Vec::with_capacity(rooms * members);
    for (r, id) in ids.iter().enumerate() {
        for j in 0..members {
            let i = offset + r * members + j;
            sockets.push(Socket {
                user_id: user(run_id, i),
                url: url(i),
                room: Some(id.clone()),
                sender: None,
                class,
            });
        }
    }
    let mut room_of_sender = HashMap::new();
    for s in 0..senders {
        // Member `s` of its room: consecutive senders land on different gateways.
        let (room, member) = (s % rooms, (s / rooms + s) % members);
        let sender = u32::try_from(offset + s).expect("fewer than 4 billion senders");
        sockets[room * members + member].sender = Some(sender);
        room_of_sender.insert(sender, ids[room].clone());
    }
    Ok(Plan {
        sockets,
        room_of_sender,
    })
}

async fn start_fanout(options: &FanoutOptions, scenario: &str) -> anyhow::Result<Run> {
    let run_id = run_id();
    let senders = options.senders.unwrap_or(options.rooms);
    println!(
        "{scenario}: creating {} rooms of {} …",
        options.rooms, options.members
    );
    let plan = rooms_plan(
        &options.common,
        &run_id,
        options.rooms,
        options.members,
        senders,
        0,
        0,
    )
    .await?;
    println!("{scenario}: connecting {} sockets …", plan.sockets.len());
    Run::start(
        options.common.clone(),
        scenario,
        run_id,
        serde_json::to_value(options)?,
        plan,
    )
    .await
}

/// `fanout`.
pub(crate) async fn fanout(options: FanoutOptions) -> anyhow::Result<RunReport> {
    let mut run = start_fanout(&options, "fanout").await?;
    let phase = run
        .phase(options.rate, options.duration, options.drain)
        .await?;
    run.report.phases.push(phase);
    run.finish().await
}

/// `ramp`.
pub(crate) async fn ramp(options: RampOptions) -> anyhow::Result<RunReport> {
    let fanout = &options.fanout;
    let mut run = start_fanout(fanout, "ramp").await?;
    let mut rate = options.start_rate;
    while rate <= options.max_rate {
        let phase = run.phase(rate, fanout.duration, fanout.drain).await?;
        let held = phase.clean() && phase.latency.p99 <= options.p99_bound_ms;
        println!(
            "ramp: {rate:.0}/s in, {:.0} deliveries/s, p99 {:.2} ms, lost {}: {}",
            phase.deliveries_per_s,
            phase.latency.p99,
            phase.lost,
            if held { "held" } else { "did not hold" }
        );
        run.report.phases.push(phase);
        if !held {
            break;
        }
        run.report.highest_rate_held = Some(rate);
        rate *= options.step_factor;
    }
    run.finish().await
}

/// `storm`.
pub(crate) async fn storm(options: StormOptions) -> anyhow::Result<RunReport> {
    let fanout = &options.fanout;
    let mut run = start_fanout(fanout, "storm").await?;
    let (storm, phase) = run
        .storm(fanout.rate, fanout.duration, fanout.drain)
        .await?;
    run.report.notes.push(format!(
        "messages missed live while the sockets were away: {} (there is no resume yet: clients sync)",
        phase.lost
    ));
    run.report.storm = Some(storm);
    run.report.phases.push(phase);
    run.finish().await
}

/// `idle`.
pub(crate) async fn idle(options: IdleOptions) -> anyhow::Result<RunReport> {
    let run_id = run_id();
    let n = options.sockets;
    let common = &options.common;
    let url = |i: usize| common.urls[i % common.urls.len()].clone();
    // A 3-regular graph of direct conversations: i–(i+1) around a ring, and i–(i+n/2).
    let mut specs = Vec::new();
    if n >= 4 {
        for i in 0..n {
            if options.direct >= 2 {
                specs.push((url(i), user(&run_id, i), vec![user(&run_id, (i + 1) % n)]));
            }
            if (options.direct == 1 || options.direct == 3) && i < n / 2 {
                specs.push((url(i), user(&run_id, i), vec![user(&run_id, i + n / 2)]));
            }
        }
    }
    if options.groups == 1 {
        for first in (0..n).step_by(options.group_size.max(2)) {
            let others = (first + 1..(first + options.group_size).min(n))
                .map(|j| user(&run_id, j))
                .collect();
            specs.push((url(first), user(&run_id, first), others));
        }
    }
    println!(
        "idle: creating {} conversations for {n} users …",
        specs.len()
    );
    create_rooms(common, specs, 32).await?;
    let sockets = (0..n)
        .map(|i| Socket {
            user_id: user(&run_id, i),
            url: url(i),
            room: None,
            sender: None,
            class: 0,
        })
        .collect();
    println!("idle: connecting {n} sockets …");
    let plan = Plan {
        sockets,
        room_of_sender: HashMap::new(),
    };
    let mut run = Run::start(
        options.common.clone(),
        "idle",
        run_id,
        serde_json::to_value(&options)?,
        plan,
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    run.measure_memory();
    tokio::time::sleep(options.hold).await;
    run.finish().await
}

/// `longtail`.
pub(crate) async fn longtail(options: LongtailOptions) -> anyhow::Result<RunReport> {
    let run_id = run_id();
    let common = &options.common;
    // Measured rooms of two: a sender and a receiver on another gateway. Created first, so
    // that the fill buries them.
    println!(
        "longtail: creating {} quiet and {} hot rooms …",
        options.quiet_rooms, options.hot_rooms
    );
    let mut quiet = rooms_plan(
        common,
        &run_id,
        options.quiet_rooms,
        2,
        options.quiet_rooms,
        1,
        0,
    )
    .await?;
    let hot = rooms_plan(
        common,
        &run_id,
        options.hot_rooms,
        2,
        options.hot_rooms,
        2,
        options.quiet_rooms * 2,
    )
    .await?;
    quiet.sockets.extend(hot.sockets);
    quiet.room_of_sender.extend(hot.room_of_sender);

    let client = async_nats::connect(&options.nats_url).await?;
    let js = async_nats::jetstream::new(client);
    crate::bus_longtail::fill(
        &js,
        options.fill_conversations,
        options.fill_per_conversation,
        10,
        options.fill_bytes,
    )
    .await?;
    println!("longtail: connecting {} sockets …", quiet.sockets.len());
    let mut run = Run::start(
        options.common.clone(),
        "longtail",
        run_id,
        serde_json::to_value(&options)?,
        quiet,
    )
    .await?;
    println!("longtail: cooling down {:?}", options.cool_down);
    tokio::time::sleep(options.cool_down).await;
    // Quiet: every sender sends once, spread over the phase.
    let quiet_duration = Duration::from_secs_f64(options.quiet_rooms as f64 / options.rate);
    let quiet = run
        .phase_of_class(1, options.rate, quiet_duration, Duration::from_secs(2))
        .await?;
    let hot = run
        .phase_of_class(2, options.rate, quiet_duration, Duration::from_secs(2))
        .await?;
    run.report.notes.push(format!(
        "send-to-ack p99: quiet {:.2} ms, hot {:.2} ms (ratio {:.2}); send-to-delivery p99: quiet {:.2} ms, hot {:.2} ms",
        quiet.ack_latency.p99,
        hot.ack_latency.p99,
        quiet.ack_latency.p99 / hot.ack_latency.p99.max(1e-3),
        quiet.latency.p99,
        hot.latency.p99
    ));
    run.report.phases.extend([quiet, hot]);
    run.finish().await
}
