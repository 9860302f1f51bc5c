//! An agent process: opens its share of the sockets and runs the phases the parent asks for.
//!
//! Each socket is a task. Senders send open-loop: message `k` of a phase is due at
//! `start + k / rate`, carries that intended time in its content, and is sent as soon as it is
//! due, whatever became of the earlier ones, so a stalled server cannot hide its stall. A
//! receiver reads the intended time back and records delivery latency from it. Content:
//! `lt:<phase>:<intended µs since the epoch>:<sender>:<k>`.
//!
//! Server frames are parsed with the protocol's own reading types ([`received`]), in one pass
//! that borrows from the frame and skips what the agent does not need: fields may come in any
//! order, and a frame that does not parse is counted, not guessed at.

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use chat_proto::client::received;
use futures_util::{FutureExt, SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::Deserialize;
use serde::de::value::MapAccessDeserializer;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpSocket;
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use crate::wire::{
    AgentConfig, Buckets, Command, ConnectReport, Event, Phase, PhaseReport, Receipts,
    SenderReceipts, Socket, histogram,
};

/// How long one connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

pub(crate) fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// A phase as the sockets see it, numbered.
#[derive(Debug, Clone, Copy, Default)]
struct Current {
    id: u64,
    phase: Option<Phase>,
    /// Bumped by each storm: every socket drops its connection and reconnects.
    storm: u64,
}

#[derive(Default)]
struct Results {
    latency: Option<Histogram<u64>>,
    ack_latency: Option<Histogram<u64>>,
    per_second: Vec<Histogram<u64>>,
    sent: BTreeMap<u32, u64>,
    receipts: Vec<Receipts>,
    closed: BTreeMap<String, u64>,
}

struct Shared {
    secret: String,
    current: watch::Receiver<Current>,
    results: Mutex<Results>,
    acked: AtomicU64,
    errors: AtomicU64,
    /// Frames that are not a protocol envelope, or a `message:new` without a message.
    unreadable: AtomicU64,
}

fn now_ms() -> u64 {
    unix_micros() / 1000
}

/// Runs an agent on stdin/stdout until `Quit` or the end of stdin.
pub(crate) async fn run() -> anyhow::Result<()> {
    let limit = crate::raise_nofile_limit();
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let config: AgentConfig =
        serde_json::from_str(&lines.next_line().await?.context("no config line")?)?;
    if (config.sockets.len() as u64) + 64 > limit {
        anyhow::bail!(
            "{} sockets need more open files than this process may have ({limit}); use more agents",
            config.sockets.len()
        );
    }
    let (current_tx, current) = watch::channel(Current::default());
    let shared = Arc::new(Shared {
        secret: config.secret.clone(),
        current,
        results: Mutex::default(),
        acked: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        unreadable: AtomicU64::new(0),
    });

    let (outcomes_tx, mut outcomes) = mpsc::channel(config.sockets.len().max(1));
    let started = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / config.connect_rate.max(0.001));
    for (i, socket) in config.sockets.iter().cloned().enumerate() {
        let source = config.source_ips[i % config.source_ips.len()];
        let (shared, outcomes) = (Arc::clone(&shared), outcomes_tx.clone());
        let due = tokio::time::Instant::now() + interval * u32::try_from(i).unwrap_or(u32::MAX);
        tokio::spawn(async move {
            tokio::time::sleep_until(due).await;
            socket_task(socket, source, shared, outcomes).await;
        });
    }
    drop(outcomes_tx);
    let report = collect_connects(&mut outcomes, config.sockets.len(), started).await;
    emit(&Event::Connected(report));

    let mut phase_id = 0;
    while let Some(line) = lines.next_line().await? {
        match serde_json::from_str::<Command>(&line)? {
            Command::Run(phase) => {
                phase_id += 1;
                *shared.results.lock().expect("results lock") = Results::default();
                shared.acked.store(0, Ordering::Relaxed);
                shared.errors.store(0, Ordering::Relaxed);
                shared.unreadable.store(0, Ordering::Relaxed);
                current_tx.send_modify(|c| {
                    c.id = phase_id;
                    c.phase = Some(phase);
                });
                // The phase runs on while further commands (a storm) arrive.
                let shared = Arc::clone(&shared);
                tokio::spawn(async move {
                    let end = phase.start_unix_ms + phase.duration_ms + phase.drain_ms;
                    tokio::time::sleep(Duration::from_millis(end.saturating_sub(now_ms()) + 300))
                        .await;
                    emit(&Event::Ran(take_report(&shared)));
                });
            }
            Command::Storm => {
                let started = Instant::now();
                current_tx.send_modify(|c| c.storm += 1);
                let report = collect_connects(&mut outcomes, config.sockets.len(), started).await;
                emit(&Event::Stormed(report));
            }
            Command::Quit => break,
        }
    }
    Ok(())
}

fn emit(event: &Event) {
    println!(
        "{}",
        serde_json::to_string(event).expect("events serialize")
    );
}

type Outcome = Result<Duration, String>;

async fn collect_connects(
    outcomes: &mut mpsc::Receiver<Outcome>,
    count: usize,
    started: Instant,
) -> ConnectReport {
    let mut report = ConnectReport::default();
    let mut latency = histogram();
    let deadline =
        tokio::time::Instant::now() + CONNECT_TIMEOUT + Duration::from_secs(5 + count as u64 / 100);
    for _ in 0..count {
        match tokio::time::timeout_at(deadline, outcomes.recv()).await {
            Ok(Some(Ok(took))) => {
                report.connected += 1;
                latency.record((took.as_micros() as u64).max(1)).ok();
            }
            Ok(Some(Err(kind))) => {
                report.failed += 1;
                *report.errors.entry(kind).or_default() += 1;
            }
            Ok(None) | Err(_) => {
                report.failed += 1;
                *report
                    .errors
                    .entry("no outcome in time".into())
                    .or_default() += 1;
            }
        }
    }
    report.latency = Buckets::of(&latency);
    report.elapsed_ms = started.elapsed().as_millis() as u64;
    report
}

fn take_report(shared: &Shared) -> PhaseReport {
    let mut results = shared.results.lock().expect("results lock");
    let results = std::mem::take(&mut *results);
    PhaseReport {
        latency: results
            .latency
            .as_ref()
            .map(Buckets::of)
            .unwrap_or_default(),
        ack_latency: results
            .ack_latency
            .as_ref()
            .map(Buckets::of)
            .unwrap_or_default(),
        per_second: results.per_second.iter().map(Buckets::of).collect(),
        sent: results.sent,
        acked: shared.acked.load(Ordering::Relaxed),
        errors: shared.errors.load(Ordering::Relaxed),
        unreadable: shared.unreadable.load(Ordering::Relaxed),
        receipts: results.receipts,
        closed: results.closed,
    }
}

pub(crate) type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// Opens a socket as `socket.user_id` from `source` and waits for `connected`.
pub(crate) async fn connect(socket: &Socket, source: Ipv4Addr, secret: &str) -> Result<Ws, String> {
    let mut request = socket
        .url
        .as_str()
        .into_client_request()
        .map_err(|e| e.to_string())?;
    let token = chat_gateway::auth::mint_hs256(
        secret.as_bytes(),
        &socket.user_id,
        Duration::from_secs(24 * 3600),
        None,
    );
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {token}")
            .parse()
            .map_err(|_| "bad token header")?,
    );
    let authority = request
        .uri()
        .authority()
        .ok_or("no host in the URL")?
        .as_str()
        .to_owned();
    let target: SocketAddr = tokio::net::lookup_host(&authority)
        .await
        .map_err(|e| format!("resolve: {e}"))?
        .next()
        .ok_or("no address")?;
    let tcp = TcpSocket::new_v4().map_err(|e| format!("socket: {}", e.kind()))?;
    tcp.bind(SocketAddr::from((source, 0)))
        .map_err(|e| format!("bind: {}", e.kind()))?;
    let stream = tcp
        .connect(target)
        .await
        .map_err(|e| format!("connect: {}", e.kind()))?;
    let _ = stream.set_nodelay(true);
    // tungstenite zero-fills its read size on every read: 1 KiB holds a delivery (~350 bytes).
    let config = WebSocketConfig::default()
        .read_buffer_size(1024)
        .write_buffer_size(16 * 1024);
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(request, stream, Some(config))
        .await
        .map_err(|e| format!("upgrade: {e}"))?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => match read(&text) {
                Received::Connected => return Ok(ws),
                Received::Error(code) => {
                    return Err(format!("refused: {}", code.as_deref().unwrap_or("unknown")));
                }
                _ => {}
            },
            Some(Ok(Message::Close(frame))) => {
                return Err(format!("closed {}", frame.map_or(0, |f| u16::from(f.code))));
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(format!("read: {e}")),
            None => return Err("closed before connected".into()),
        }
    }
}

/// When message `k` of `sender` is due, µs since the epoch. Senders are offset from each other
/// by a fraction of their interval (golden-ratio spacing), so that they do not all send at once.
fn due_micros(p: &Phase, sender: u32, k: u64) -> u64 {
    let offset = (f64::from(sender) * 0.618_033_988_75).fract();
    p.start_unix_ms * 1000 + ((k as f64 + offset) * 1e6 / p.rate_per_sender.max(1e-9)) as u64
}

/// A socket's receipts in the current phase.
#[derive(Default)]
struct Tally {
    from: BTreeMap<u32, (Vec<u64>, u64, SenderReceipts)>,
}

impl Tally {
    fn record(&mut self, sender: u32, k: u64) {
        let (seen, last, receipts) = self.from.entry(sender).or_default();
        let (word, bit) = ((k / 64) as usize, k % 64);
        if seen.len() <= word {
            seen.resize(word + 1, 0);
        }
        if seen[word] & (1 << bit) != 0 {
            receipts.duplicate += 1;
            return;
        }
        seen[word] |= 1 << bit;
        receipts.unique += 1;
        if receipts.unique > 1 && k < *last {
            receipts.out_of_order += 1;
        }
        *last = (*last).max(k);
    }

    fn into_receipts(self, room: String) -> Receipts {
        Receipts {
            room,
            from: self.from.into_iter().map(|(s, (_, _, r))| (s, r)).collect(),
        }
    }
}

/// What a harness message carries in its content: `lt:<phase>:<due µs>:<sender>:<k>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Marker {
    phase: u64,
    due_us: u64,
    sender: u32,
    k: u64,
}

impl Marker {
    /// The marker of a message's content; `None` for any other text.
    fn parse(content: &str) -> Option<Self> {
        let mut parts = content.strip_prefix("lt:")?.split(':');
        let marker = Self {
            phase: parts.next()?.parse().ok()?,
            due_us: parts.next()?.parse().ok()?,
            sender: parts.next()?.parse().ok()?,
            k: parts.next()?.parse().ok()?,
        };
        parts.next().is_none().then_some(marker)
    }
}

/// The data of the frames the agent reads, whatever their event, read in the same pass as the
/// envelope (reading `data` raw, then again by event, scans a delivery twice): `message:new` and
/// the ack of a send carry `message`, `error` carries `code`; other fields are skipped.
#[derive(Debug, Deserialize)]
struct Data<'a> {
    /// The message; `None` where `message` is not an object (an `error`'s text).
    #[serde(borrow, default, deserialize_with = "message_or_other")]
    message: Option<received::Message<'a>>,
    /// An `error`'s code, read only when the event is `error`.
    #[serde(borrow)]
    code: Option<&'a RawValue>,
}

/// Reads `data.message` as a message when it is an object and skips it otherwise: the field
/// holds a message in `message:new` and acks, and a text in `error`, whichever comes first in
/// the frame, `event` or `data`.
fn message_or_other<'de: 'a, 'a, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<received::Message<'a>>, D::Error> {
    struct MessageOrOther<'a>(PhantomData<received::Message<'a>>);

    impl<'de: 'a, 'a> Visitor<'de> for MessageOrOther<'a> {
        type Value = Option<received::Message<'a>>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a message object or any other JSON value")
        }

        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            received::Message::deserialize(MapAccessDeserializer::new(map)).map(Some)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok(None)
        }

        fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
    }

    deserializer.deserialize_any(MessageOrOther(PhantomData))
}

/// What a server frame means to the agent.
#[derive(Debug, PartialEq, Eq)]
enum Received {
    /// The session is open.
    Connected,
    /// A `message:new`, with the marker of its content when a harness sent it.
    Delivery(Option<Marker>),
    /// An `ack`, with its request id's `(phase, k)` when it answers a harness send.
    Ack(Option<(u64, u64)>),
    /// An `error`, with its code.
    Error(Option<String>),
    /// Any other event.
    Other,
    /// Not a protocol envelope, or a `message:new` without a message.
    Unreadable,
}

/// Reads a server frame (one JSON parse, borrowing from `text`).
fn read(text: &str) -> Received {
    let Ok(frame) = serde_json::from_str::<received::Frame<'_, Data<'_>>>(text) else {
        return Received::Unreadable;
    };
    match &*frame.event {
        "message:new" => match frame.data.and_then(|data| data.message) {
            Some(message) => Received::Delivery(Marker::parse(&message.content)),
            None => Received::Unreadable,
        },
        // requestId "<phase>:<k>": the due time follows from k.
        "ack" => Received::Ack(frame.request_id.as_deref().and_then(|id| {
            let (phase, k) = id.split_once(':')?;
            Some((phase.parse().ok()?, k.parse().ok()?))
        })),
        "error" => Received::Error(
            frame
                .data
                .and_then(|data| data.code)
                .and_then(|code| serde_json::from_str(code.get()).ok()),
        ),
        "connected" => Received::Connected,
        _ => Received::Other,
    }
}

fn record(histogram: &mut Option<Histogram<u64>>, micros: u64) {
    histogram
        .get_or_insert_with(crate::wire::histogram)
        .record(micros.max(1))
        .ok();
}

async fn socket_task(
    socket: Socket,
    source: Ipv4Addr,
    shared: Arc<Shared>,
    outcomes: mpsc::Sender<Outcome>,
) {
    let mut current = shared.current.clone();
    let phase = *current.borrow_and_update();
    let mut state = SocketState {
        phase,
        tally: Tally::default(),
        next_k: 0,
        reported: phase.phase.is_none(),
        latencies: Vec::with_capacity(LATENCY_BATCH),
    };
    loop {
        let started = Instant::now();
        let ws =
            tokio::time::timeout(CONNECT_TIMEOUT, connect(&socket, source, &shared.secret)).await;
        let ws = match ws {
            Ok(Ok(ws)) => {
                let _ = outcomes.send(Ok(started.elapsed())).await;
                ws
            }
            Ok(Err(kind)) => {
                let _ = outcomes.send(Err(kind)).await;
                return;
            }
            Err(_) => {
                let _ = outcomes.send(Err("timed out".into())).await;
                return;
            }
        };
        if !run_socket(ws, &socket, &shared, &mut current, &mut state).await {
            return;
        }
        // A storm: the socket was dropped; connect again at once.
    }
}

/// What a socket knows of the current phase; kept across reconnections.
struct SocketState {
    phase: Current,
    tally: Tally,
    next_k: u64,
    reported: bool,
    /// Delivery latencies (µs, with the second of the phase), recorded into the shared
    /// histograms in batches rather than under a lock per delivery.
    latencies: Vec<(u64, usize)>,
}

/// Latencies a socket holds before it records them.
const LATENCY_BATCH: usize = 256;

fn flush_latencies(latencies: &mut Vec<(u64, usize)>, shared: &Shared) {
    if latencies.is_empty() {
        return;
    }
    let mut results = shared.results.lock().expect("results lock");
    for &(micros, second) in latencies.iter() {
        record(&mut results.latency, micros);
        if results.per_second.len() <= second {
            results
                .per_second
                .resize_with(second + 1, crate::wire::histogram);
        }
        results.per_second[second].record(micros.max(1)).ok();
    }
    latencies.clear();
}

/// Runs one connection; true when a storm asks for a reconnection.
async fn run_socket(
    mut ws: Ws,
    socket: &Socket,
    shared: &Shared,
    current: &mut watch::Receiver<Current>,
    state: &mut SocketState,
) -> bool {
    let SocketState {
        phase,
        tally,
        next_k,
        reported,
        latencies,
    } = state;
    // Made once and reset when their deadline moves: a timer or a watch registration made anew
    // on every turn of the loop (once per frame received) costs more than reading the frame.
    let change = next_change(current.clone());
    let send_timer = tokio::time::sleep(Duration::ZERO);
    let report_timer = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(change, send_timer, report_timer);
    let (mut send_set, mut report_set) = (None, None);
    loop {
        let (send_due, report_due) = match phase.phase {
            Some(p) => {
                let sending_class = p.class.is_none_or(|c| c == socket.class);
                let due_us = socket
                    .sender
                    .map_or(u64::MAX, |s| due_micros(&p, s, *next_k));
                let sending = sending_class && due_us < (p.start_unix_ms + p.duration_ms) * 1000;
                (
                    sending.then_some(due_us),
                    (!*reported).then_some((p.start_unix_ms + p.duration_ms + p.drain_ms) * 1000),
                )
            }
            None => (None, None),
        };
        reset_timer(send_timer.as_mut(), &mut send_set, send_due);
        reset_timer(report_timer.as_mut(), &mut report_set, report_due);
        tokio::select! {
            next = &mut change => {
                let Some((next, rx)) = next else {
                    return false;
                };
                current.borrow_and_update();
                change.set(next_change(rx));
                if next.id != phase.id {
                    *tally = Tally::default();
                    latencies.clear();
                    *next_k = 0;
                    *reported = false;
                }
                let storm = next.storm != phase.storm;
                *phase = next;
                if storm {
                    return true;
                }
            }
            () = &mut send_timer, if send_due.is_some() => {
                let (Some(p), Some(sender), Some(room)) = (phase.phase, socket.sender, &socket.room) else { continue };
                // Send every message that is due, even if late: latency counts from the due time.
                let now = unix_micros();
                let mut batch = 0;
                loop {
                    let due_us = due_micros(&p, sender, *next_k);
                    if due_us > now || due_us >= (p.start_unix_ms + p.duration_ms) * 1000 || batch == 64 {
                        break;
                    }
                    let frame = format!(
                        r#"{{"event":"message:send","requestId":"{}:{next_k}","data":{{"conversationId":"{room}","content":"lt:{}:{due_us}:{sender}:{next_k}"}}}}"#,
                        phase.id, phase.id
                    );
                    if ws.feed(Message::Text(Utf8Bytes::from(frame))).await.is_err() {
                        return false;
                    }
                    *next_k += 1;
                    batch += 1;
                }
                if ws.flush().await.is_err() {
                    return false;
                }
                *shared.results.lock().expect("results lock").sent.entry(sender).or_default() = *next_k;
            }
            () = &mut report_timer, if report_due.is_some() => {
                *reported = true;
                flush_latencies(latencies, shared);
                if let Some(room) = &socket.room {
                    let receipts = std::mem::take(tally).into_receipts(room.clone());
                    shared.results.lock().expect("results lock").receipts.push(receipts);
                }
            }
            frame = ws.next() => {
                // Handle what is already buffered in one go: one turn of the loop for a burst.
                let mut frame = Some(frame);
                while let Some(next) = frame.take() {
                    match next {
                        Some(Ok(Message::Text(text))) => {
                            on_frame(&text, *phase, socket.sender, shared, tally, latencies);
                        }
                        Some(Ok(Message::Close(close))) => {
                            let code = close.map_or(0, |f| u16::from(f.code)).to_string();
                            *shared.results.lock().expect("results lock").closed.entry(code).or_default() += 1;
                            return false;
                        }
                        Some(Ok(_)) => {}
                        Some(Err(_)) | None => {
                            *shared.results.lock().expect("results lock").closed.entry("reset".into()).or_default() += 1;
                            return false;
                        }
                    }
                    frame = ws.next().now_or_never();
                }
                if latencies.len() >= LATENCY_BATCH {
                    flush_latencies(latencies, shared);
                }
            }
        }
    }
}

fn on_frame(
    text: &str,
    phase: Current,
    sender: Option<u32>,
    shared: &Shared,
    tally: &mut Tally,
    latencies: &mut Vec<(u64, usize)>,
) {
    let now = unix_micros();
    match read(text) {
        Received::Delivery(marker) => {
            let Some(Marker {
                phase: id,
                due_us,
                sender: from,
                k,
            }) = marker
            else {
                return; // Not sent by the harness.
            };
            let Some(p) = phase.phase.filter(|_| id == phase.id) else {
                return; // A straggler of an earlier phase.
            };
            tally.record(from, k);
            let second = (due_us / 1000).saturating_sub(p.start_unix_ms) / 1000;
            latencies.push((
                now.saturating_sub(due_us),
                usize::try_from(second).unwrap_or(usize::MAX).min(3_600),
            ));
        }
        Received::Ack(request) => {
            shared.acked.fetch_add(1, Ordering::Relaxed);
            let (Some(p), Some(sender), Some((id, k))) = (phase.phase, sender, request) else {
                return;
            };
            if id != phase.id {
                return;
            }
            let due_us = due_micros(&p, sender, k);
            record(
                &mut shared.results.lock().expect("results lock").ack_latency,
                now.saturating_sub(due_us),
            );
        }
        Received::Error(_) => {
            shared.errors.fetch_add(1, Ordering::Relaxed);
        }
        Received::Unreadable => {
            shared.unreadable.fetch_add(1, Ordering::Relaxed);
        }
        Received::Connected | Received::Other => {}
    }
}

/// The next phase change, with the receiver to wait for the one after.
async fn next_change(
    mut current: watch::Receiver<Current>,
) -> Option<(Current, watch::Receiver<Current>)> {
    current.changed().await.ok()?;
    let next = *current.borrow_and_update();
    Some((next, current))
}

/// Points `timer` at `due` (µs since the epoch) when that is not where it points already.
fn reset_timer(timer: Pin<&mut tokio::time::Sleep>, set: &mut Option<u64>, due: Option<u64>) {
    if let Some(due) = due.filter(|&due| *set != Some(due)) {
        let wait = Duration::from_micros(due.saturating_sub(unix_micros()));
        timer.reset(tokio::time::Instant::now() + wait);
        *set = Some(due);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use chat_proto::v1;

    /// A `message:new` as the server writes it.
    fn delivery(content: &str) -> String {
        let message = v1::ChatMessage {
            id: 9,
            conversation_id: "room-1".into(),
            sender_id: "lt-run-17".into(),
            r#type: "chat".into(),
            content: content.into(),
            created_at_ms: 1_795_456_264_123,
            ..Default::default()
        };
        let event = v1::ConversationEvent {
            seq: 9,
            conversation_id: "room-1".into(),
            kind: Some(v1::conversation_event::Kind::MessageCreated(
                v1::MessageCreated {
                    message: Some(message),
                },
            )),
        };
        chat_proto::client::conversation_push(&event)
            .expect("a message is pushed")
            .0
    }

    const MARKER: Marker = Marker {
        phase: 3,
        due_us: 1_795_456_264_123_456,
        sender: 17,
        k: 42,
    };

    /// A delivery of `content` with the fields in another order, escapes, and fields no server
    /// sends (objects, arrays and strings that look like the fields the agent reads).
    fn reordered_delivery(content: &str) -> String {
        format!(
            r#"{{
                "data": {{
                    "trace": {{"content": "lt:9:9:9:9", "event": "ack", "nested": [1, {{"a": null}}]}},
                    "message": {{
                        "metadata": {{"sentAt": "2026-12-03T07:51:47Z", "k": [42]}},
                        "content": "{content}",
                        "attachments": [],
                        "createdAt": "2026-12-03T07:51:47.123Z",
                        "senderId": "lt-run-\u0031\u0037",
                        "reactions": {{"\ud83d\udc4d": 2}},
                        "conversationId": "room-1",
                        "seq": 9,
                        "id": 9,
                        "type": "chat"
                    }}
                }},
                "priority": 1.5e3,
                "event": "message:new"
            }}"#
        )
    }

    #[test]
    fn a_delivery_is_read_whatever_the_order_of_its_fields() {
        let content = "lt:3:1795456264123456:17:42";
        let canonical = delivery(content);
        assert!(canonical.starts_with(r#"{"event":"message:new""#));
        assert_eq!(read(&canonical), Received::Delivery(Some(MARKER)));
        assert_eq!(
            read(&reordered_delivery(content)),
            Received::Delivery(Some(MARKER))
        );
        // Somebody else's message is a delivery without a marker, not an unreadable frame.
        assert_eq!(read(&delivery("hello")), Received::Delivery(None));
        assert_eq!(read(&delivery("lt:hello")), Received::Delivery(None));
    }

    #[test]
    fn acks_errors_and_connected_are_read_whatever_the_order_of_their_fields() {
        for ack in [
            r#"{"event":"ack","requestId":"3:42","data":{"message":{"id":9,"conversationId":"room-1","senderId":"u","content":"lt:3:1:17:42"}}}"#,
            r#"{"data":{"message":{"senderId":"u","id":9,"conversationId":"room-1","extra":{}}},"version":"1","requestId":"3:42","event":"ack"}"#,
            r#" { "requestId" : "3:42" , "event" : "ack" } "#,
        ] {
            assert_eq!(read(ack), Received::Ack(Some((3, 42))), "{ack}");
        }
        assert_eq!(
            read(r#"{"data":{},"event":"ack","requestId":"c"}"#),
            Received::Ack(None)
        );
        assert_eq!(
            read(
                r#"{"data":{"timestamp":"t","recoverable":false,"code":"FORBIDDEN","message":"no"},"requestId":"3:1","event":"error"}"#
            ),
            Received::Error(Some("FORBIDDEN".into()))
        );
        assert_eq!(
            read(r#"{"data":{"message":"no","code":"NOT_FOUND"},"event":"error"}"#),
            Received::Error(Some("NOT_FOUND".into()))
        );
        assert_eq!(read(r#"{"event":"error"}"#), Received::Error(None));
        assert_eq!(
            read(r#"{"data":{"message":[1,{"a":[]}],"code":{"x":1}},"event":"later:added"}"#),
            Received::Other
        );
        assert_eq!(
            read(r#"{"data":{"rooms":["a"],"userId":"u","resumeToken":"x"},"event":"connected"}"#),
            Received::Connected
        );
        assert_eq!(
            read(r#"{"data":{"userId":"u","timestamp":"t"},"event":"user:online"}"#),
            Received::Other
        );
    }

    #[test]
    fn a_frame_that_is_not_an_envelope_is_unreadable() {
        for text in [
            "",
            "not json",
            r#"{"event":"message:new","data":{"message":{"id":9"#,
            "[1,2,3]",
            r#""message:new""#,
            r#"{"data":{}}"#,
            r#"{"event":7}"#,
            r#"{"event":"message:new","data":{}}"#,
            r#"{"event":"message:new","data":{"message":{"content":"lt:3:1:17:42"}}}"#,
            r#"{"event":"ack","data":"not an object"}"#,
        ] {
            assert_eq!(read(text), Received::Unreadable, "{text}");
        }
    }

    #[test]
    fn a_marker_is_five_fields() {
        assert_eq!(Marker::parse("lt:3:1795456264123456:17:42"), Some(MARKER));
        for content in [
            "",
            "hello",
            "lt:",
            "lt:3:1:17",
            "lt:3:1:17:42:5",
            "lt:3:x:17:42",
        ] {
            assert_eq!(Marker::parse(content), None, "{content}");
        }
    }

    fn shared() -> Shared {
        Shared {
            secret: String::new(),
            current: watch::channel(Current::default()).1,
            results: Mutex::default(),
            acked: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            unreadable: AtomicU64::new(0),
        }
    }

    /// A phase that started 2.5 s ago, and the content of message 42 of sender 17 in it.
    fn phase_and_content() -> (Phase, String) {
        let p = Phase {
            start_unix_ms: now_ms() - 2_500,
            duration_ms: 10_000,
            drain_ms: 1_000,
            rate_per_sender: 100.0,
            class: None,
        };
        // Due in the phase's third second, about 100 ms ago.
        let due_us = p.start_unix_ms * 1000 + 2_400_000;
        (p, format!("lt:3:{due_us}:17:42"))
    }

    /// What one socket measures of `frames` in `p`.
    fn measure(p: Phase, frames: &[&str]) -> (Receipts, Vec<usize>, u64, u64, u64, u64) {
        let phase = Current {
            id: 3,
            phase: Some(p),
            storm: 0,
        };
        let shared = shared();
        let (mut tally, mut latencies) = (Tally::default(), Vec::new());
        for frame in frames {
            on_frame(frame, phase, Some(17), &shared, &mut tally, &mut latencies);
        }
        let acks = shared
            .results
            .lock()
            .unwrap()
            .ack_latency
            .as_ref()
            .map_or(0, Histogram::len);
        (
            tally.into_receipts("room-1".into()),
            latencies.iter().map(|&(_, second)| second).collect(),
            shared.acked.load(Ordering::Relaxed),
            acks,
            shared.errors.load(Ordering::Relaxed),
            shared.unreadable.load(Ordering::Relaxed),
        )
    }

    #[test]
    fn reordered_frames_are_measured_the_same() {
        let (p, content) = phase_and_content();
        let canonical = delivery(&content);
        let canonical_ack = chat_proto::client::ack("3:42", serde_json::json!({}));
        let (receipts, seconds, acked, acks, errors, unreadable) =
            measure(p, &[&canonical, &canonical_ack, &canonical]);
        let reordered_delivery = reordered_delivery(&content);
        let reordered = measure(
            p,
            &[
                &reordered_delivery,
                r#"{"data":{},"requestId":"3:42","event":"ack"}"#,
                &reordered_delivery,
            ],
        );
        assert_eq!(receipts.from[&17].unique, 1);
        assert_eq!(receipts.from[&17].duplicate, 1);
        assert_eq!(seconds, [2, 2]);
        assert_eq!((acked, acks, errors, unreadable), (1, 1, 0, 0));
        assert_eq!(reordered.0.from, receipts.from);
        assert_eq!(
            (
                reordered.1,
                reordered.2,
                reordered.3,
                reordered.4,
                reordered.5
            ),
            (seconds, acked, acks, errors, unreadable)
        );
    }

    #[test]
    fn frames_that_are_not_json_are_counted_and_ignored() {
        let (p, content) = phase_and_content();
        let canonical = delivery(&content);
        let (receipts, seconds, acked, acks, errors, unreadable) = measure(
            p,
            &[
                "not json",
                "",
                "{\"event\":\"message:new\"",
                &canonical,
                "\u{0}\u{ffff}",
            ],
        );
        assert_eq!(receipts.from[&17].unique, 1);
        assert_eq!(seconds, [2]);
        assert_eq!((acked, acks, errors, unreadable), (0, 0, 0, 4));
    }

    #[test]
    fn a_tally_counts_duplicates_and_disorder() {
        let mut tally = Tally::default();
        for k in [0, 1, 3, 2, 3, 200] {
            tally.record(7, k);
        }
        let receipts = tally.into_receipts("r".into()).from[&7];
        assert_eq!(
            (receipts.unique, receipts.duplicate, receipts.out_of_order),
            (5, 1, 1)
        );
    }
}
