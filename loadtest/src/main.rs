//! `chat-loadtest`: the load harness. It drives real WebSocket clients against one gateway or a
//! cluster (a list of URLs, spread as a load balancer would) and reports what users feel.
//!
//! Scenarios ([`scenarios`]): `idle`, `fanout`, `ramp`, `longtail`, `storm`, and the bus-level
//! `bus-longtail` ([`bus_longtail`]) and `bus-publish` ([`bus_publish`]). A run is a parent ([`scenario`]) and agent processes
//! ([`agent`]): each agent holds a share of the sockets (a process may have only so many open
//! files) and ships raw histograms and receipt counts ([`wire`]) that the parent merges into the
//! report ([`report`]: terminal, JSON, SVG). It connects only to the URLs it is given, and every
//! run is bounded in sockets and time.

mod agent;
mod bus_longtail;
mod bus_publish;
mod report;
mod scenario;
mod scenarios;
mod wire;

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
    /// Open N authenticated sockets with a realistic membership and hold them.
    Idle(scenarios::IdleOptions),
    /// Rooms of members spread over the gateways, senders at a total rate (open loop).
    Fanout(scenarios::FanoutOptions),
    /// `fanout` with the rate stepped up until p99 passes a bound.
    Ramp(scenarios::RampOptions),
    /// Quiet and hot conversations on a stream of hundreds of MB: send-to-ack and -delivery.
    Longtail(scenarios::LongtailOptions),
    /// Drop every socket at once and reconnect them during a `fanout`.
    Storm(scenarios::StormOptions),
    /// The bus alone: publish-to-ack and -delivery on a long-tail stream (see docs/BENCHMARKS.md).
    BusLongtail(bus_longtail::Options),
    /// The bus alone: a bare JetStream publish with a de-duplication id, and nats-server's CPU
    /// per publish.
    BusPublish(bus_publish::Options),
    /// Internal: an agent process, driven by its parent over stdin/stdout.
    #[command(hide = true)]
    Agent,
}

/// Raises the soft open-files limit to the hard one; returns the limit in force.
pub(crate) fn raise_nofile_limit() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(error) => {
            eprintln!(
                "cannot raise the open-files limit: {error}; raise `ulimit -n` (hard limit) to run more sockets"
            );
            rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft)
        }
    }
}

/// Runs a scenario within its time bound; its agents are killed with it when the bound passes.
async fn bounded<T>(
    max_seconds: u64,
    run: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<()> {
    match tokio::time::timeout(std::time::Duration::from_secs(max_seconds), run).await {
        Ok(result) => result.map(drop),
        Err(_) => {
            anyhow::bail!("the run took longer than --max-seconds {max_seconds} and was stopped")
        }
    }
}

fn main() -> anyhow::Result<()> {
    let scenario = Cli::parse().scenario;
    // An agent is one thread: its sockets' tasks wake each other with no cross-thread hand-offs
    // (a quarter less CPU per delivery than two workers), and a run uses several agents.
    let runtime = match scenario {
        Scenario::Agent => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    }
    .enable_all()
    .build()?;
    runtime.block_on(async {
        match scenario {
            Scenario::Idle(o) => bounded(o.common.max_seconds, scenarios::idle(o)).await,
            Scenario::Fanout(o) => bounded(o.common.max_seconds, scenarios::fanout(o)).await,
            Scenario::Ramp(o) => bounded(o.fanout.common.max_seconds, scenarios::ramp(o)).await,
            Scenario::Longtail(o) => bounded(o.common.max_seconds, scenarios::longtail(o)).await,
            Scenario::Storm(o) => bounded(o.fanout.common.max_seconds, scenarios::storm(o)).await,
            Scenario::BusLongtail(options) => bus_longtail::run(options).await,
            Scenario::BusPublish(options) => bus_publish::run(options).await,
            Scenario::Agent => agent::run().await,
        }
    })
}
