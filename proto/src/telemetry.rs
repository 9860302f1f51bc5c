//! Logs and traces of every binary. Logs go to stderr, filtered by `RUST_LOG`. Traces are off
//! unless `--otlp-endpoint` names a collector: then the spans of a connection's setup, each
//! request, the JetStream publish, each node's live fan-out and the worker's write are sent there
//! over OTLP (gRPC), a share of the traces (`--trace-sample-ratio`) decided where a trace starts.
//! The trace context travels in NATS headers (W3C `traceparent`), so one message is one trace
//! across the gateways and the worker, and logs inside a traced span carry its `trace_id`.
//!
//! A collector that is down or slow costs the chat nothing: finished spans wait in a bounded
//! queue ([`QUEUE`]) for a task that exports them in batches, each export within a timeout, and
//! what does not fit is dropped and counted ([`span_counts`]).

use std::hash::BuildHasher as _;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_nats::HeaderMap;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator as _};
use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    Sampler, SdkTracerProvider, Span as SdkSpan, SpanData, SpanExporter as _, SpanProcessor,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use tokio::sync::mpsc;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

/// Finished spans waiting for export, at most.
pub const QUEUE: usize = 4_096;
/// Spans in one export, at most.
const BATCH: usize = 512;
/// How long a span may wait for a batch to fill.
const BATCH_WAIT: Duration = Duration::from_secs(1);
/// How long one export may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);
/// The W3C trace context header.
const TRACEPARENT: &str = "traceparent";

/// The tracing options every binary takes.
#[derive(Debug, Clone, clap::Args)]
pub struct TraceOptions {
    /// OTLP gRPC endpoint of a trace collector (`http://otel-collector:4317`); without one,
    /// traces are off.
    #[arg(long, env = "CHAT_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,

    /// Share of traces kept, 0 to 1, decided where a trace starts (a client's request); the other
    /// processes of the trace follow that decision.
    #[arg(long, env = "CHAT_TRACE_SAMPLE_RATIO", default_value_t = 0.01)]
    pub trace_sample_ratio: f64,
}

impl TraceOptions {
    /// Checks the options.
    pub fn validate(&self) -> Result<(), crate::options::OptionError> {
        if !(0.0..=1.0).contains(&self.trace_sample_ratio) {
            return Err(crate::options::OptionError::OutOfRange {
                option: "trace-sample-ratio",
                reason: "must be from 0 to 1".to_owned(),
            });
        }
        if let Some(endpoint) = &self.otlp_endpoint
            && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
        {
            return Err(crate::options::OptionError::OutOfRange {
                option: "otlp-endpoint",
                reason: format!("{endpoint:?} is not an http:// or https:// URL"),
            });
        }
        Ok(())
    }
}

/// Whether traces are on in this process.
static ENABLED: AtomicBool = AtomicBool::new(false);
/// The share of new traces kept (an `f64`'s bits).
static RATIO: AtomicU64 = AtomicU64::new(0);

/// Spans exported and dropped by this process (one exporter a process).
#[derive(Debug, Clone, Default)]
pub struct SpanCounts {
    exported: Counter,
    dropped: Counter,
    failed_exports: Counter,
}

static SPAN_COUNTS: LazyLock<SpanCounts> = LazyLock::new(SpanCounts::default);

/// The process's span counts.
pub fn span_counts() -> SpanCounts {
    SPAN_COUNTS.clone()
}

impl SpanCounts {
    /// Registers the counts (`trace_spans_exported_total`, `trace_spans_dropped_total`,
    /// `trace_exports_failed_total` under the registry's prefix).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "trace_spans_exported",
            "Spans sent to the trace collector",
            self.exported.clone(),
        );
        registry.register(
            "trace_spans_dropped",
            "Spans dropped: the export queue was full, or the export failed",
            self.dropped.clone(),
        );
        registry.register(
            "trace_exports_failed",
            "Exports to the trace collector that failed or timed out",
            self.failed_exports.clone(),
        );
    }

    /// Spans dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.get()
    }
}

/// What [`init`] started: the exporter's task, stopped by [`Telemetry::shutdown`].
#[derive(Debug)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
    exporter: Option<tokio::task::JoinHandle<()>>,
}

impl Telemetry {
    /// Ends the spans' export: what is queued is sent, within 2 seconds.
    pub async fn shutdown(mut self) {
        if let Some(provider) = self.provider.take() {
            let _ = provider.shutdown();
        }
        if let Some(exporter) = self.exporter.take() {
            let _ = tokio::time::timeout(Duration::from_secs(2), exporter).await;
        }
    }
}

/// Why tracing could not start.
#[derive(Debug, thiserror::Error)]
#[error("the OTLP exporter could not be built: {0}")]
pub struct TelemetryError(String);

/// Logs to stderr (as JSON lines when `json`), and traces to the collector when `options` name
/// one, as `service` (its `instance`, a gateway's node id, when given). Must run inside the
/// Tokio runtime.
pub fn init(
    service: &'static str,
    instance: Option<&str>,
    json: bool,
    options: &TraceOptions,
) -> Result<Telemetry, TelemetryError> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let logs = if json {
        logs.json().boxed()
    } else {
        logs.boxed()
    };
    let registry = tracing_subscriber::registry().with(filter).with(logs);
    let Some(endpoint) = &options.otlp_endpoint else {
        registry.init();
        return Ok(Telemetry {
            provider: None,
            exporter: None,
        });
    };
    let mut exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .with_timeout(EXPORT_TIMEOUT)
        .build()
        .map_err(|e| TelemetryError(e.to_string()))?;
    // The exporter sends the resource with its spans (the provider tells only its processors).
    let resource = resource(service, instance);
    exporter.set_resource(&resource);
    let (queue, spans) = mpsc::channel(QUEUE);
    let exporting = tokio::spawn(export(exporter, spans, span_counts()));
    // Which traces are kept is decided where one would start ([`keep`]), before any span is
    // made: a trace that is not kept costs no span at all. What is made is exported.
    let sampler = Sampler::ParentBased(Box::new(Sampler::AlwaysOn));
    RATIO.store(options.trace_sample_ratio.to_bits(), Ordering::Relaxed);
    let provider = SdkTracerProvider::builder()
        .with_sampler(sampler)
        .with_span_processor(Queue {
            spans: queue,
            counts: span_counts(),
        })
        .with_resource(resource)
        .build();
    let traces = tracing_opentelemetry::layer().with_tracer(provider.tracer(service));
    registry.with(traces).init();
    ENABLED.store(true, Ordering::Relaxed);
    tracing::info!(%endpoint, ratio = options.trace_sample_ratio, "traces on");
    Ok(Telemetry {
        provider: Some(provider),
        exporter: Some(exporting),
    })
}

/// What the spans say of their process.
fn resource(service: &'static str, instance: Option<&str>) -> opentelemetry_sdk::Resource {
    let builder = opentelemetry_sdk::Resource::builder().with_service_name(service);
    match instance {
        Some(id) => builder
            .with_attribute(opentelemetry::KeyValue::new(
                "service.instance.id",
                id.to_owned(),
            ))
            .build(),
        None => builder.build(),
    }
}

/// Hands finished spans to the exporter's task without waiting: a full queue drops the span.
#[derive(Debug)]
struct Queue {
    spans: mpsc::Sender<SpanData>,
    counts: SpanCounts,
}

impl SpanProcessor for Queue {
    fn on_start(&self, _span: &mut SdkSpan, _cx: &opentelemetry::Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        if self.spans.try_send(span).is_err() {
            self.counts.dropped.inc();
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

/// Exports what the queue holds in batches, until the queue's last sender is gone.
async fn export(
    exporter: opentelemetry_otlp::SpanExporter,
    mut spans: mpsc::Receiver<SpanData>,
    counts: SpanCounts,
) {
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let Some(first) = spans.recv().await else {
            return;
        };
        batch.push(first);
        let deadline = tokio::time::Instant::now() + BATCH_WAIT;
        while batch.len() < BATCH {
            match tokio::time::timeout_at(deadline, spans.recv()).await {
                Ok(Some(span)) => batch.push(span),
                Ok(None) | Err(_) => break,
            }
        }
        let size = batch.len() as u64;
        let sent = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
        match tokio::time::timeout(EXPORT_TIMEOUT, exporter.export(sent)).await {
            Ok(Ok(())) => {
                counts.exported.inc_by(size);
            }
            _ => {
                counts.failed_exports.inc();
                counts.dropped.inc_by(size);
            }
        }
    }
}

/// Whether traces are on in this process: spans worth a trace are made only then.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The span that `make` makes when it is kept: traces are on, and it is in a kept trace or
/// starts one (at the sampling ratio). Its trace id is noted in its `trace_id` field, for the
/// logs inside it. Else none: a span not kept costs nothing.
pub fn traced(make: impl FnOnce() -> tracing::Span) -> tracing::Span {
    if !keep() {
        return tracing::Span::none();
    }
    let span = make();
    record_trace_id(&span);
    span
}

/// Whether a span made now is kept: inside a kept trace, always; else it would start a trace,
/// kept at the sampling ratio. False when traces are off.
fn keep() -> bool {
    if !enabled() {
        return false;
    }
    let current = tracing::Span::current();
    if !current.is_none() && current.context().span().span_context().is_sampled() {
        return true;
    }
    let ratio = f64::from_bits(RATIO.load(Ordering::Relaxed));
    if ratio >= 1.0 {
        return true;
    }
    // A fresh random number: each `RandomState` has keys of its own.
    let draw = std::collections::hash_map::RandomState::new().hash_one(0u8);
    (draw as f64) < ratio * (u64::MAX as f64)
}

/// Notes `span`'s trace id in its `trace_id` field, for the logs inside it.
fn record_trace_id(span: &tracing::Span) {
    let context = span.context();
    let trace = context.span().span_context().trace_id();
    span.record("trace_id", tracing::field::display(trace));
}

/// The headers that carry `span`'s trace context, when it is in a kept trace.
pub fn headers(span: &tracing::Span) -> Option<HeaderMap> {
    if !enabled() {
        return None;
    }
    let context = span.context();
    if !context.span().span_context().is_sampled() {
        return None;
    }
    let mut headers = HeaderMap::new();
    TraceContextPropagator::new().inject_context(&context, &mut Headers(&mut headers));
    Some(headers)
}

/// Makes `span` a child of the trace context that `headers` carry; false when they carry none.
pub fn follow(span: &tracing::Span, headers: Option<&HeaderMap>) -> bool {
    let Some(headers) = headers.filter(|h| h.get(TRACEPARENT).is_some()) else {
        return false;
    };
    let parent = TraceContextPropagator::new().extract(&Read(headers));
    span.set_parent(parent).is_ok()
}

/// NATS headers as the propagator writes them.
struct Headers<'a>(&'a mut HeaderMap);

impl Injector for Headers<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key, value.as_str());
    }
}

/// NATS headers as the propagator reads them.
struct Read<'a>(&'a HeaderMap);

impl Extractor for Read<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|v| v.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        vec![TRACEPARENT, "tracestate"]
    }
}
