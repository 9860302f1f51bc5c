//! The parent of a run: plans users and rooms, creates the rooms through the protocol, spreads
//! the sockets over agent processes, runs the phases, and merges what the agents report.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail};
use chat_proto::client::received;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command as Process};
use tokio_tungstenite::tungstenite::Message;

use crate::report::{ConnectSummary, PhaseSummary, RunReport};
use crate::wire::{AgentConfig, Command, ConnectReport, Event, Phase, PhaseReport, Socket};

/// Options every scenario shares.
#[derive(Debug, Clone, clap::Args, serde::Serialize)]
pub(crate) struct Common {
    /// Gateway WebSocket URLs, comma-separated; sockets are spread over them as a load balancer
    /// would. Only these addresses are ever connected to.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "ws://127.0.0.1:8080/ws,ws://127.0.0.1:8081/ws"
    )]
    pub(crate) urls: Vec<String>,
    /// The gateways' HS256 secret, to sign the test users' tokens.
    #[arg(long, env = "CHAT_JWT_SECRET", hide_env_values = true)]
    #[serde(skip)]
    pub(crate) jwt_secret: String,
    /// Agent processes to spread the sockets over (each is one thread and stays under its
    /// open-files limit); default: one per 15,000 sockets.
    #[arg(long)]
    pub(crate) agents: Option<usize>,
    /// Source addresses 127.0.0.1, 127.0.0.2, … to spread the sockets over (about 28,000 ports each).
    #[arg(long, default_value_t = 8)]
    pub(crate) source_ips: u8,
    /// New connections a second, over all agents.
    #[arg(long, default_value_t = 2_000.0)]
    pub(crate) connect_rate: f64,
    /// Where `report.json` and `report.svg` go.
    #[arg(long, default_value = "loadtest-report")]
    pub(crate) out: PathBuf,
    /// Gateway process ids, for memory per connection.
    #[arg(long, value_delimiter = ',')]
    pub(crate) gateway_pids: Vec<u32>,
    /// Every server-side process id (gateways, nats-server, worker), for CPU per delivery.
    #[arg(long, value_delimiter = ',')]
    pub(crate) server_pids: Vec<u32>,
    /// Most seconds the whole run may take.
    #[arg(long, default_value_t = 1_800)]
    pub(crate) max_seconds: u64,
}

/// One agent process and its pipes.
pub(crate) struct Agent {
    child: Child,
    stdin: ChildStdin,
    stdout: tokio::io::Lines<BufReader<ChildStdout>>,
}

impl Agent {
    async fn send(&mut self, command: &Command) -> anyhow::Result<()> {
        let mut line = serde_json::to_string(command)?;
        line.push('\n');
        self.stdin.write_all(line.as_bytes()).await?;
        Ok(self.stdin.flush().await?)
    }

    async fn next(&mut self) -> anyhow::Result<Event> {
        let line = self
            .stdout
            .next_line()
            .await?
            .context("an agent exited early (see its stderr)")?;
        Ok(serde_json::from_str(&line)?)
    }
}

/// The sockets of a run and the room each sender sends to.
pub(crate) struct Plan {
    pub(crate) sockets: Vec<Socket>,
    pub(crate) room_of_sender: HashMap<u32, String>,
}

/// A run under way: its agents and its report.
pub(crate) struct Run {
    pub(crate) common: Common,
    pub(crate) agents: Vec<Agent>,
    pub(crate) report: RunReport,
    pub(crate) room_of_sender: HashMap<u32, String>,
    senders_of_class: HashMap<u8, usize>,
    rss_before: Option<u64>,
    num_sockets: usize,
}

pub(crate) fn user(run_id: &str, i: usize) -> String {
    format!("lt-{run_id}-{i}")
}

/// Creates a conversation of `owner` with `others` through the protocol; its id.
pub(crate) async fn create_room(
    common: &Common,
    url: &str,
    owner: &str,
    others: &[String],
    title: &str,
) -> anyhow::Result<String> {
    let socket = Socket {
        user_id: owner.to_owned(),
        url: url.to_owned(),
        room: None,
        sender: None,
        class: 0,
    };
    let mut ws = crate::agent::connect(&socket, Ipv4Addr::LOCALHOST, &common.jwt_secret)
        .await
        .map_err(|e| anyhow::anyhow!("setup connection: {e}"))?;
    let frame = serde_json::json!({"event": "room:create", "requestId": "c", "data": {"title": title, "participantIds": others}});
    ws.send(Message::Text(frame.to_string().into())).await?;
    let answer = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(frame) = ws.next().await {
            if let Message::Text(text) = frame?
                && serde_json::from_str::<received::Frame<'_>>(&text)
                    .is_ok_and(|answer| answer.request_id.as_deref() == Some("c"))
            {
                return Ok(text.to_string());
            }
        }
        bail!("closed while creating a room")
    })
    .await
    .context("room:create timed out")??;
    let value: serde_json::Value = serde_json::from_str(&answer)?;
    let id = value["data"]["conversation"]["id"]
        .as_str()
        .with_context(|| format!("room:create failed: {answer}"))?;
    let _ = ws.close(None).await;
    Ok(id.to_owned())
}

/// Creates many rooms, `concurrency` at a time; ids in the order given.
pub(crate) async fn create_rooms(
    common: &Common,
    rooms: Vec<(String, String, Vec<String>)>,
    concurrency: usize,
) -> anyhow::Result<Vec<String>> {
    let results: Vec<anyhow::Result<String>> =
        futures_util::stream::iter(rooms.into_iter().enumerate())
            .map(|(i, (url, owner, others))| async move {
                create_room(common, &url, &owner, &others, &format!("load {i}")).await
            })
            .buffered(concurrency)
            .collect()
            .await;
    results.into_iter().collect()
}

fn rss_bytes(pids: &[u32]) -> Option<u64> {
    if pids.is_empty() {
        return None;
    }
    let mut total = 0;
    for pid in pids {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let kib: u64 = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        total += kib * 1024;
    }
    Some(total)
}

/// CPU time (user + system) of the processes, µs; `/proc/<pid>/stat` counts in ticks of 10 ms
/// (`CLK_TCK` = 100 on Linux).
pub(crate) fn cpu_micros(pids: &[u32]) -> Option<u64> {
    if pids.is_empty() {
        return None;
    }
    let mut total = 0;
    for pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let ticks: u64 =
            fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        total += ticks * 10_000;
    }
    Some(total)
}

impl Run {
    /// Starts the agents with their share of `plan` and waits until every socket was tried.
    pub(crate) async fn start(
        common: Common,
        scenario: &str,
        run_id: String,
        settings: serde_json::Value,
        plan: Plan,
    ) -> anyhow::Result<Self> {
        if common.jwt_secret.is_empty() {
            bail!("--jwt-secret (or CHAT_JWT_SECRET) is needed to sign the test users' tokens");
        }
        let num_sockets = plan.sockets.len();
        let mut senders_of_class = HashMap::new();
        for socket in plan.sockets.iter().filter(|s| s.sender.is_some()) {
            *senders_of_class.entry(socket.class).or_default() += 1;
        }
        let num_agents = common.agents.unwrap_or(num_sockets.div_ceil(15_000)).max(1);
        let rss_before = rss_bytes(&common.gateway_pids);
        let source_ips: Vec<Ipv4Addr> = (1..=common.source_ips.max(1))
            .map(|i| Ipv4Addr::new(127, 0, 0, i))
            .collect();
        let exe = std::env::current_exe().context("cannot find this executable to start agents")?;
        let mut agents = Vec::with_capacity(num_agents);
        let per_agent = num_sockets.div_ceil(num_agents).max(1);
        for (i, chunk) in plan.sockets.chunks(per_agent).enumerate() {
            let mut child = Process::new(&exe)
                .arg("agent")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("cannot start agent {i}"))?;
            let stdin = child.stdin.take().expect("piped");
            let stdout = BufReader::new(child.stdout.take().expect("piped")).lines();
            let mut agent = Agent {
                child,
                stdin,
                stdout,
            };
            let config = AgentConfig {
                secret: common.jwt_secret.clone(),
                sockets: chunk.to_vec(),
                source_ips: source_ips.clone(),
                connect_rate: common.connect_rate / num_agents as f64,
            };
            let mut line = serde_json::to_string(&config)?;
            line.push('\n');
            agent.stdin.write_all(line.as_bytes()).await?;
            agents.push(agent);
        }
        let mut reports = Vec::new();
        for agent in &mut agents {
            match agent.next().await? {
                Event::Connected(report) => reports.push(report),
                other => bail!("unexpected agent event {other:?}"),
            }
        }
        let connect = ConnectSummary::merge(&reports);
        let report = RunReport {
            scenario: scenario.to_owned(),
            run_id,
            started_at: chat_proto::timestamp::iso8601(chat_proto::timestamp::now_ms()),
            settings,
            connect,
            ..RunReport::default()
        };
        Ok(Self {
            common,
            agents,
            report,
            room_of_sender: plan.room_of_sender,
            senders_of_class,
            rss_before,
            num_sockets,
        })
    }

    /// Notes the gateway memory per connection now that the sockets are open.
    pub(crate) fn measure_memory(&mut self) {
        let (Some(before), Some(after)) = (self.rss_before, rss_bytes(&self.common.gateway_pids))
        else {
            return;
        };
        let connected = self.report.connect.connected.max(1);
        self.report.gateway_bytes_per_connection =
            Some(after.saturating_sub(before) as f64 / connected as f64);
    }

    fn plan_phase(
        &self,
        class: Option<u8>,
        rate_in: f64,
        duration: Duration,
        drain: Duration,
    ) -> Phase {
        let num_senders = match class {
            Some(class) => self.senders_of_class.get(&class).copied().unwrap_or(0),
            None => self.room_of_sender.len(),
        };
        Phase {
            start_unix_ms: crate::agent::unix_micros() / 1000 + 1_500,
            duration_ms: duration.as_millis() as u64,
            drain_ms: drain.as_millis() as u64,
            rate_per_sender: rate_in / num_senders.max(1) as f64,
            class,
        }
    }

    /// Runs one phase on every agent and merges it.
    pub(crate) async fn phase(
        &mut self,
        rate_in: f64,
        duration: Duration,
        drain: Duration,
    ) -> anyhow::Result<PhaseSummary> {
        self.run_phase(None, rate_in, duration, drain).await
    }

    /// Runs a phase in which only the senders of `class` send.
    pub(crate) async fn phase_of_class(
        &mut self,
        class: u8,
        rate_in: f64,
        duration: Duration,
        drain: Duration,
    ) -> anyhow::Result<PhaseSummary> {
        self.run_phase(Some(class), rate_in, duration, drain).await
    }

    async fn run_phase(
        &mut self,
        class: Option<u8>,
        rate_in: f64,
        duration: Duration,
        drain: Duration,
    ) -> anyhow::Result<PhaseSummary> {
        let phase = self.plan_phase(class, rate_in, duration, drain);
        let cpu_before = cpu_micros(&self.common.server_pids);
        for agent in &mut self.agents {
            agent.send(&Command::Run(phase)).await?;
        }
        let mut reports: Vec<PhaseReport> = Vec::new();
        for agent in &mut self.agents {
            match agent.next().await? {
                Event::Ran(report) => reports.push(report),
                other => bail!("unexpected agent event {other:?}"),
            }
        }
        let mut summary = PhaseSummary::merge(
            &reports,
            &self.room_of_sender,
            rate_in,
            duration.as_secs_f64(),
        );
        if let (Some(before), Some(after)) = (cpu_before, cpu_micros(&self.common.server_pids)) {
            summary.server_cpu_us_per_delivery =
                Some(after.saturating_sub(before) as f64 / summary.delivered.max(1) as f64);
        }
        Ok(summary)
    }

    /// Drops every socket at once and reconnects them, during a phase at `rate_in`.
    pub(crate) async fn storm(
        &mut self,
        rate_in: f64,
        duration: Duration,
        drain: Duration,
    ) -> anyhow::Result<(ConnectSummary, PhaseSummary)> {
        let phase = self.plan_phase(None, rate_in, duration, drain);
        for agent in &mut self.agents {
            agent.send(&Command::Run(phase)).await?;
        }
        tokio::time::sleep(Duration::from_millis(1_500) + duration / 3).await;
        for agent in &mut self.agents {
            agent.send(&Command::Storm).await?;
        }
        let (mut storms, mut phases): (Vec<ConnectReport>, Vec<PhaseReport>) =
            (Vec::new(), Vec::new());
        for agent in &mut self.agents {
            for _ in 0..2 {
                match agent.next().await? {
                    Event::Stormed(report) => storms.push(report),
                    Event::Ran(report) => phases.push(report),
                    other => bail!("unexpected agent event {other:?}"),
                }
            }
        }
        Ok((
            ConnectSummary::merge(&storms),
            PhaseSummary::merge(
                &phases,
                &self.room_of_sender,
                rate_in,
                duration.as_secs_f64(),
            ),
        ))
    }

    /// Stops the agents, prints and writes the report.
    pub(crate) async fn finish(mut self) -> anyhow::Result<RunReport> {
        for agent in &mut self.agents {
            let _ = agent.send(&Command::Quit).await;
        }
        for agent in &mut self.agents {
            let _ = tokio::time::timeout(Duration::from_secs(10), agent.child.wait()).await;
        }
        if self.report.connect.connected < self.num_sockets as u64 {
            self.report.notes.push(format!(
                "{} of {} sockets did not connect: {:?}",
                self.num_sockets as u64 - self.report.connect.connected,
                self.num_sockets,
                self.report.connect.errors
            ));
        }
        print!("{}", self.report.text());
        self.report.write(&self.common.out)?;
        println!(
            "report: {0}/report.json, {0}/report.svg",
            self.common.out.display()
        );
        Ok(self.report)
    }
}
