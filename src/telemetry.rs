//! Traces: an OpenTelemetry span for each tapped exchange, with children
//! for derive, each event, the event's write to the outbox and every
//! delivery attempt, exported over OTLP (HTTP/protobuf or gRPC).
//!
//! Off unless `telemetry.otlp` is configured. A tapped exchange continues
//! the caller's W3C `traceparent`; an event keeps its span's context with
//! its deliveries (`StoredEvent::trace`), so an attempt made hours later,
//! after a restart, is still a child of it, and the receiver gets a
//! `traceparent` naming the attempt's span.
//!
//! The export never holds anything up: ended spans go into a bounded
//! queue (a full queue drops the span and counts it in
//! `taphook_telemetry_dropped_total`), and one thread of its own batches
//! them to the collector; a batch the collector does not take is dropped
//! and counted too.
//!
//! Spans carry names, ids, route templates, statuses and counts, never a
//! body, a header's value, a query or a webhook URL (docs/SECURITY.md).

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId,
    TraceState, Tracer,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    Sampler, SdkTracer, SdkTracerProvider, SpanData, SpanExporter, SpanProcessor,
};
use opentelemetry_sdk::Resource;
use prometheus::IntCounter;

use crate::config;

/// The tracer, once traces are on.
static TRACING: OnceLock<Tracing> = OnceLock::new();

struct Tracing {
    tracer: SdkTracer,
    trace_untapped: bool,
}

/// The OTLP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    HttpProtobuf,
}

impl Protocol {
    /// The names OpenTelemetry's settings use (`OTEL_EXPORTER_OTLP_PROTOCOL`).
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "grpc" => Ok(Protocol::Grpc),
            "http/protobuf" => Ok(Protocol::HttpProtobuf),
            "http/json" => {
                Err("`http/json` is not supported: use `http/protobuf` or `grpc`".into())
            }
            other => Err(format!(
                "unknown protocol `{other}`: expected `http/protobuf` or `grpc`"
            )),
        }
    }
}

/// Checks an endpoint as written: an http or https URL.
pub fn check_endpoint(text: &str) -> Result<(), String> {
    let url = reqwest::Url::parse(text).map_err(|e| format!("not a URL: {e}"))?;
    match (url.scheme(), url.host_str()) {
        ("http" | "https", Some(_)) => Ok(()),
        _ => Err(format!(
            "`{}` must be an http:// or https:// URL with a host",
            crate::secret::redact_url(&url)
        )),
    }
}

/// Where and how spans are exported, resolved from `telemetry:` and the
/// standard `OTEL_*` environment.
#[derive(Debug, Clone)]
pub struct Settings {
    pub protocol: Protocol,
    /// The full URL spans are sent to; `None`: the exporter reads
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `OTEL_EXPORTER_OTLP_ENDPOINT`
    /// or uses the default for the protocol.
    pub endpoint: Option<String>,
    /// Headers from the config; the exporter adds `OTEL_EXPORTER_OTLP_HEADERS`.
    pub headers: Vec<(String, crate::secret::Secret)>,
    pub sample_ratio: f64,
    pub trace_untapped: bool,
    pub service_name: String,
    /// Ended spans waiting for export, at most (`OTEL_BSP_MAX_QUEUE_SIZE`).
    pub queue: usize,
    /// Spans per export, at most (`OTEL_BSP_MAX_EXPORT_BATCH_SIZE`).
    pub batch: usize,
    /// How long a span may wait for a batch to fill (`OTEL_BSP_SCHEDULE_DELAY`).
    pub delay: Duration,
    /// How long one export may take (`OTEL_EXPORTER_OTLP_TIMEOUT`).
    pub timeout: Duration,
}

impl Settings {
    /// `None` when traces are off: no `telemetry.otlp`, or
    /// `OTEL_SDK_DISABLED=true`. The config wins over the environment.
    pub fn resolve(
        config: &config::Telemetry,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Option<Self>, String> {
        let Some(otlp) = &config.otlp else {
            return Ok(None);
        };
        if env("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        let protocol = match otlp
            .protocol
            .clone()
            .or_else(|| env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"))
            .or_else(|| env("OTEL_EXPORTER_OTLP_PROTOCOL"))
        {
            Some(p) => Protocol::parse(p.trim())?,
            None => Protocol::HttpProtobuf,
        };
        let endpoint = otlp.endpoint.as_deref().map(|e| match protocol {
            Protocol::HttpProtobuf => traces_url(e),
            Protocol::Grpc => e.to_string(),
        });
        let sample_ratio = match otlp.sample_ratio {
            Some(r) => r,
            None => sampler_arg(env)?,
        };
        let number = |name: &str, default: u64| -> Result<u64, String> {
            match env(name) {
                Some(v) => v
                    .trim()
                    .parse()
                    .map_err(|_| format!("{name}: `{v}` is not a whole number")),
                None => Ok(default),
            }
        };
        let timeout = match env("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT") {
            Some(_) => number("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", 10_000)?,
            None => number("OTEL_EXPORTER_OTLP_TIMEOUT", 10_000)?,
        };
        Ok(Some(Settings {
            protocol,
            endpoint,
            headers: otlp
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            sample_ratio,
            trace_untapped: config.trace_untapped,
            service_name: env("OTEL_SERVICE_NAME").unwrap_or_else(|| "taphook".into()),
            queue: number("OTEL_BSP_MAX_QUEUE_SIZE", 2048)?.max(1) as usize,
            batch: number("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512)?.max(1) as usize,
            delay: Duration::from_millis(number("OTEL_BSP_SCHEDULE_DELAY", 5000)?),
            timeout: Duration::from_millis(timeout),
        }))
    }

    /// The endpoint as a log line may show it: no userinfo, no query.
    pub fn shown_endpoint(&self) -> String {
        match &self.endpoint {
            Some(e) => reqwest::Url::parse(e)
                .map(|u| crate::secret::redact_url(&u))
                .unwrap_or_else(|_| "(not a URL)".into()),
            None => "from OTEL_EXPORTER_OTLP_ENDPOINT or the default".into(),
        }
    }
}

/// An OTLP/HTTP base URL with the traces path (`/v1/traces`) added, as
/// `OTEL_EXPORTER_OTLP_ENDPOINT` is read; a URL that already ends with it
/// is kept.
fn traces_url(base: &str) -> String {
    let trimmed = base.trim_end_matches('/');
    if trimmed.ends_with("/v1/traces") {
        trimmed.to_string()
    } else {
        format!("{trimmed}/v1/traces")
    }
}

/// `OTEL_TRACES_SAMPLER_ARG` when `OTEL_TRACES_SAMPLER` is a ratio
/// sampler (or unset); 1.0 otherwise.
fn sampler_arg(env: &dyn Fn(&str) -> Option<String>) -> Result<f64, String> {
    let sampler = env("OTEL_TRACES_SAMPLER").unwrap_or_default();
    let ratio_sampler = matches!(
        sampler.trim(),
        "" | "traceidratio" | "parentbased_traceidratio"
    );
    match env("OTEL_TRACES_SAMPLER_ARG") {
        Some(arg) if ratio_sampler => match arg.trim().parse::<f64>() {
            Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
            _ => Err(format!(
                "OTEL_TRACES_SAMPLER_ARG: `{arg}` is not a ratio between 0 and 1"
            )),
        },
        _ => Ok(1.0),
    }
}

/// Flushes what is queued when taphook stops.
pub struct Guard {
    provider: SdkTracerProvider,
}

impl Guard {
    pub fn shutdown(&self) {
        let _ = self.provider.shutdown_with_timeout(Duration::from_secs(3));
    }
}

/// Starts the export thread and turns traces on for the process.
pub fn start(settings: &Settings, metrics: &crate::metrics::Metrics) -> anyhow::Result<Guard> {
    let pending = std::sync::Arc::new(Pending {
        spans: Default::default(),
        ready: std::sync::Condvar::new(),
        capacity: settings.queue,
        batch: settings.batch,
    });
    let resource = Resource::builder()
        .with_service_name(settings.service_name.clone())
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build();
    let counters = Counters {
        exported: metrics.telemetry_exported.clone(),
        dropped: metrics.telemetry_dropped.clone(),
    };
    let export = Export {
        settings: settings.clone(),
        resource: resource.clone(),
        counters: counters.clone(),
        pending: pending.clone(),
    };
    std::thread::Builder::new()
        .name("taphook-otlp".into())
        .spawn(move || export.run())?;
    let provider = SdkTracerProvider::builder()
        .with_span_processor(Queue {
            pending,
            dropped: counters.dropped,
        })
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            settings.sample_ratio,
        ))))
        .with_resource(resource)
        .build();
    let tracer = opentelemetry::trace::TracerProvider::tracer(&provider, "taphook");
    let _ = TRACING.set(Tracing {
        tracer,
        trace_untapped: settings.trace_untapped,
    });
    Ok(Guard { provider })
}

/// Whether traces are on.
pub fn on() -> bool {
    TRACING.get().is_some()
}

/// Whether a request no route taps gets a span.
pub fn traces_untapped() -> bool {
    TRACING.get().is_some_and(|t| t.trace_untapped)
}

/// A span's context, as a parent for the spans that follow it.
#[derive(Debug, Clone, PartialEq)]
pub struct Parent(SpanContext);

impl Parent {
    /// The W3C `traceparent` naming this span.
    pub fn traceparent(&self) -> String {
        let c = &self.0;
        format!(
            "00-{}-{}-{:02x}",
            c.trace_id(),
            c.span_id(),
            c.trace_flags().to_u8()
        )
    }

    /// A `traceparent` read back (from the store); `None` when it is not
    /// one (version `00`, 32 and 16 hex digits, not all zero, two of flags).
    pub fn from_traceparent(text: &str) -> Option<Self> {
        let mut parts = text.split('-');
        let (version, trace, span, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some()
            || version != "00"
            || trace.len() != 32
            || span.len() != 16
            || flags.len() != 2
        {
            return None;
        }
        let hex = |t: &str| t.bytes().all(|b| b.is_ascii_hexdigit());
        if !(hex(trace) && hex(span) && hex(flags)) {
            return None;
        }
        let sc = SpanContext::new(
            TraceId::from_hex(trace).ok()?,
            SpanId::from_hex(span).ok()?,
            TraceFlags::new(u8::from_str_radix(flags, 16).ok()? & TraceFlags::SAMPLED.to_u8()),
            true,
            TraceState::default(),
        );
        sc.is_valid().then_some(Parent(sc))
    }

    /// The trace's id, as logs show it.
    pub fn trace_id(&self) -> String {
        self.0.trace_id().to_string()
    }

    fn context(&self) -> Context {
        Context::new().with_remote_span_context(self.0.clone())
    }
}

/// A request's headers, for the propagator.
struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// What the proxied request's span says about it.
pub struct Request<'a> {
    pub headers: &'a http::HeaderMap,
    pub method: &'a str,
    /// The first matching route's name and path template.
    pub route: Option<(&'a str, &'a str)>,
    pub status: u16,
    pub start: SystemTime,
    pub end: SystemTime,
}

/// The proxied request's span, a child of the caller's `traceparent` when
/// it sent one; `None` when traces are off.
pub fn request(r: &Request<'_>) -> Option<Parent> {
    let t = TRACING.get()?;
    let parent = TraceContextPropagator::new().extract(&Headers(r.headers));
    let name = match r.route {
        Some((_, template)) => format!("{} {template}", r.method),
        None => r.method.to_string(),
    };
    let mut attributes = vec![
        KeyValue::new("http.request.method", r.method.to_string()),
        KeyValue::new("http.response.status_code", i64::from(r.status)),
    ];
    if let Some((route, template)) = r.route {
        attributes.push(KeyValue::new("http.route", template.to_string()));
        attributes.push(KeyValue::new("taphook.route", route.to_string()));
    }
    let builder = t
        .tracer
        .span_builder(name)
        .with_kind(SpanKind::Server)
        .with_start_time(r.start)
        .with_attributes(attributes);
    let mut span = t.tracer.build_with_context(builder, &parent);
    if r.status >= 500 || r.status == 0 {
        span.set_status(Status::error(""));
    }
    let context = span.span_context().clone();
    span.end_with_timestamp(r.end);
    Some(Parent(context))
}

/// A span under `parent` from `start` to now; `None` when traces are off
/// or the trace is not sampled (its children would not be recorded
/// either: the parent's context is passed on as it is).
fn child(
    parent: &Parent,
    name: String,
    kind: SpanKind,
    start: SystemTime,
    attributes: Vec<KeyValue>,
) -> Option<opentelemetry_sdk::trace::Span> {
    let t = TRACING.get()?;
    if !parent.0.is_sampled() {
        return None;
    }
    let builder = t
        .tracer
        .span_builder(name)
        .with_kind(kind)
        .with_start_time(start)
        .with_attributes(attributes);
    Some(t.tracer.build_with_context(builder, &parent.context()))
}

/// Derive's span for one exchange: the routes that fired and the events
/// they made. Its context is the parent of those events' spans.
pub fn derive(parent: &Parent, start: SystemTime, routes: Vec<String>, events: usize) -> Parent {
    let attributes = vec![
        KeyValue::new(
            "taphook.routes",
            opentelemetry::Value::Array(
                routes
                    .into_iter()
                    .map(opentelemetry::StringValue::from)
                    .collect::<Vec<_>>()
                    .into(),
            ),
        ),
        KeyValue::new("taphook.events", events as i64),
    ];
    match child(
        parent,
        "derive".into(),
        SpanKind::Internal,
        start,
        attributes,
    ) {
        Some(mut span) => {
            let context = span.span_context().clone();
            span.end();
            Parent(context)
        }
        None => parent.clone(),
    }
}

/// One event's span, open while the event is deduplicated, fanned out
/// and handed to the outbox.
pub struct EventSpan(opentelemetry_sdk::trace::Span);

impl EventSpan {
    pub fn start(
        parent: &Parent,
        event_type: &str,
        uuid: &str,
        session: Option<&str>,
    ) -> Option<Self> {
        let mut attributes = vec![
            KeyValue::new("taphook.event.type", event_type.to_string()),
            KeyValue::new("taphook.event.uuid", uuid.to_string()),
        ];
        if let Some(s) = session {
            attributes.push(KeyValue::new("taphook.session", s.to_string()));
        }
        child(
            parent,
            format!("event {event_type}"),
            SpanKind::Internal,
            SystemTime::now(),
            attributes,
        )
        .map(EventSpan)
    }

    pub fn context(&self) -> Parent {
        Parent(self.0.span_context().clone())
    }

    /// A duplicate, dropped: said on the span.
    pub fn duplicate(&mut self) {
        self.0
            .set_attribute(KeyValue::new("taphook.event.duplicate", true));
    }

    pub fn deliveries(&mut self, n: usize) {
        self.0
            .set_attribute(KeyValue::new("taphook.deliveries", n as i64));
    }
}

/// The write of an event (and its deliveries) to the outbox, from the
/// moment it was handed over (`queued_ms`, since the epoch) to now, when
/// it is committed.
pub fn outbox_written(traceparent: &str, queued_ms: i64, deliveries: usize, backend: &str) {
    let Some(parent) = Parent::from_traceparent(traceparent) else {
        return;
    };
    let start = UNIX_EPOCH + Duration::from_millis(queued_ms.max(0) as u64);
    let attributes = vec![
        KeyValue::new("taphook.deliveries", deliveries as i64),
        KeyValue::new("taphook.store", backend.to_string()),
    ];
    if let Some(mut span) = child(
        &parent,
        "outbox write".into(),
        SpanKind::Internal,
        start,
        attributes,
    ) {
        span.end();
    }
}

/// One delivery attempt's span (kind client): the receiver gets its
/// `traceparent`. In a trace that is not sampled there is no span, and the
/// receiver gets the event's `traceparent` as it was stored.
pub struct Attempt {
    span: Option<opentelemetry_sdk::trace::Span>,
    parent: Parent,
}

impl Attempt {
    /// `traceparent` is the event's span, as stored with the delivery;
    /// `attempt` counts from 1. `None` when traces are off or the stored
    /// value is not a `traceparent`.
    pub fn start(traceparent: &str, webhook: &str, delivery: i64, attempt: u32) -> Option<Self> {
        TRACING.get()?;
        let parent = Parent::from_traceparent(traceparent)?;
        let attributes = || {
            vec![
                KeyValue::new("http.request.method", "POST"),
                KeyValue::new("taphook.webhook", webhook.to_string()),
                KeyValue::new("taphook.delivery.id", delivery),
                KeyValue::new("taphook.attempt", i64::from(attempt)),
                KeyValue::new("taphook.retry", i64::from(attempt.saturating_sub(1))),
            ]
        };
        let span = parent
            .0
            .is_sampled()
            .then(|| {
                child(
                    &parent,
                    format!("deliver {webhook}"),
                    SpanKind::Client,
                    SystemTime::now(),
                    attributes(),
                )
            })
            .flatten();
        Some(Attempt { span, parent })
    }

    /// The `traceparent` header the receiver gets.
    pub fn header(&self) -> Option<(http::HeaderName, http::HeaderValue)> {
        let value = match &self.span {
            Some(span) => Parent(span.span_context().clone()).traceparent(),
            None => self.parent.traceparent(),
        };
        http::HeaderValue::from_str(&value)
            .ok()
            .map(|v| (http::HeaderName::from_static("traceparent"), v))
    }

    /// Ends the span with the attempt's outcome: the receiver's status,
    /// or the kind of failure.
    pub fn finish(self, status: Option<u16>, outcome: &str, succeeded: bool) {
        let Some(mut span) = self.span else { return };
        if let Some(s) = status {
            span.set_attribute(KeyValue::new("http.response.status_code", i64::from(s)));
        }
        span.set_attribute(KeyValue::new("taphook.outcome", outcome.to_string()));
        if !succeeded {
            span.set_status(Status::error(outcome.to_string()));
        }
        span.end();
    }
}

/// The export's two counters.
#[derive(Clone)]
struct Counters {
    exported: IntCounter,
    dropped: IntCounter,
}

/// Ended spans waiting for export. A span is pushed under a short lock;
/// the export thread is woken only when a batch is full (or on a flush),
/// else it takes what is there every `delay`: no wake-up per span.
struct Pending {
    spans: std::sync::Mutex<Waiting>,
    ready: std::sync::Condvar,
    capacity: usize,
    batch: usize,
}

#[derive(Default)]
struct Waiting {
    spans: Vec<SpanData>,
    /// Flushes asked for: answered once what was queued before is sent.
    flushes: Vec<std::sync::mpsc::Sender<()>>,
    closed: bool,
}

impl Pending {
    fn lock(&self) -> std::sync::MutexGuard<'_, Waiting> {
        self.spans.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The span processor: an ended span goes into the bounded queue, or is
/// counted as dropped. Never blocks on the export.
struct Queue {
    pending: std::sync::Arc<Pending>,
    dropped: IntCounter,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Queue")
    }
}

impl Queue {
    fn flush(&self, timeout: Duration) -> OTelSdkResult {
        let (tx, rx) = std::sync::mpsc::channel();
        self.pending.lock().flushes.push(tx);
        self.pending.ready.notify_one();
        let _ = rx.recv_timeout(timeout);
        Ok(())
    }
}

impl SpanProcessor for Queue {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        let full = {
            let mut waiting = self.pending.lock();
            if waiting.spans.len() >= self.pending.capacity {
                drop(waiting);
                self.dropped.inc();
                return;
            }
            waiting.spans.push(span);
            waiting.spans.len() == self.pending.batch
        };
        if full {
            self.pending.ready.notify_one();
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.flush(Duration::from_secs(5))
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        let result = self.flush(timeout);
        self.pending.lock().closed = true;
        self.pending.ready.notify_one();
        result
    }
}

/// The export thread: batches spans to the collector.
struct Export {
    settings: Settings,
    resource: Resource,
    counters: Counters,
    pending: std::sync::Arc<Pending>,
}

impl Export {
    fn run(self) {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "traces: cannot start the export thread's runtime; spans are dropped");
                return;
            }
        };
        // The exporter is built inside the runtime (gRPC's channel needs one).
        let exporter = runtime.block_on(async {
            match exporter(&self.settings) {
                Ok(mut e) => {
                    e.set_resource(&self.resource);
                    Some(e)
                }
                Err(e) => {
                    tracing::error!(error = %e, "traces: cannot build the OTLP exporter; spans are dropped");
                    None
                }
            }
        });
        let mut warned: Option<std::time::Instant> = None;
        loop {
            let (batch, flushes, closed) = self.take();
            for spans in batch {
                let n = spans.len() as u64;
                let result = match exporter.as_ref() {
                    Some(e) => runtime.block_on(async {
                        tokio::time::timeout(self.settings.timeout, e.export(spans))
                            .await
                            .map_err(|_| "timed out".to_string())
                            .and_then(|r| r.map_err(|e| e.to_string()))
                    }),
                    None => Err("no exporter".into()),
                };
                match result {
                    Ok(()) => self.counters.exported.inc_by(n),
                    Err(e) => {
                        self.counters.dropped.inc_by(n);
                        // One line a minute at most: a dead collector is
                        // a counter, not a flood of logs.
                        if warned.is_none_or(|w| w.elapsed() > Duration::from_secs(60)) {
                            warned = Some(std::time::Instant::now());
                            tracing::warn!(endpoint = %self.settings.shown_endpoint(), error = %e, spans = n, "traces: the collector did not take a batch; dropped");
                        }
                    }
                }
            }
            for tx in flushes {
                let _ = tx.send(());
            }
            if closed {
                return;
            }
        }
    }

    /// Waits for a full batch, a flush or `delay`, then takes what is
    /// queued, in batches.
    fn take(&self) -> (Vec<Vec<SpanData>>, Vec<std::sync::mpsc::Sender<()>>, bool) {
        let mut waiting = self.pending.lock();
        if waiting.spans.len() < self.settings.batch
            && waiting.flushes.is_empty()
            && !waiting.closed
        {
            waiting = self
                .pending
                .ready
                .wait_timeout(waiting, self.settings.delay)
                .map(|(w, _)| w)
                .unwrap_or_else(|e| e.into_inner().0);
        }
        let spans = std::mem::take(&mut waiting.spans);
        let flushes = std::mem::take(&mut waiting.flushes);
        let closed = waiting.closed;
        drop(waiting);
        let mut batches = Vec::new();
        let mut spans = spans.into_iter().peekable();
        while spans.peek().is_some() {
            batches.push(spans.by_ref().take(self.settings.batch).collect());
        }
        (batches, flushes, closed)
    }
}

/// The OTLP exporter the settings describe; built inside the export
/// thread's runtime (gRPC's channel needs one).
fn exporter(s: &Settings) -> Result<opentelemetry_otlp::SpanExporter, anyhow::Error> {
    use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
    let builder = opentelemetry_otlp::SpanExporter::builder();
    let exporter = match s.protocol {
        Protocol::HttpProtobuf => {
            let headers: HashMap<String, String> = s
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), v.expose().to_string()))
                .collect();
            let mut b = builder
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_timeout(s.timeout)
                .with_headers(headers);
            if let Some(e) = &s.endpoint {
                b = b.with_endpoint(e.clone());
            }
            b.build()?
        }
        Protocol::Grpc => {
            let mut headers = http::HeaderMap::new();
            for (k, v) in &s.headers {
                let name = http::HeaderName::from_bytes(k.as_bytes())
                    .map_err(|_| anyhow::anyhow!("header name `{k}` is not valid"))?;
                let value = http::HeaderValue::from_str(v.expose())
                    .map_err(|_| anyhow::anyhow!("the value of header `{k}` is not valid"))?;
                headers.insert(name, value);
            }
            let metadata =
                opentelemetry_otlp::tonic_types::metadata::MetadataMap::from_headers(headers);
            let mut b = builder
                .with_tonic()
                .with_protocol(opentelemetry_otlp::Protocol::Grpc)
                .with_timeout(s.timeout)
                .with_metadata(metadata);
            if let Some(e) = &s.endpoint {
                b = b.with_endpoint(e.clone());
            }
            b.build()?
        }
    };
    Ok(exporter)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    fn on(otlp: config::Otlp) -> config::Telemetry {
        config::Telemetry {
            otlp: Some(otlp),
            trace_untapped: false,
        }
    }

    #[test]
    fn off_without_otlp_or_when_the_sdk_is_disabled() {
        let env = env_of(&[]);
        assert!(Settings::resolve(&config::Telemetry::default(), &env)
            .unwrap()
            .is_none());
        let env = env_of(&[("OTEL_SDK_DISABLED", "true")]);
        assert!(Settings::resolve(&on(Default::default()), &env)
            .unwrap()
            .is_none());
    }

    #[test]
    fn the_config_wins_over_the_environment() {
        let env = env_of(&[
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
            ("OTEL_BSP_SCHEDULE_DELAY", "200"),
        ]);
        let s = Settings::resolve(&on(Default::default()), &env)
            .unwrap()
            .unwrap();
        assert_eq!(s.protocol, Protocol::Grpc);
        assert_eq!(s.sample_ratio, 0.25);
        assert_eq!(s.delay, Duration::from_millis(200));
        assert_eq!(
            s.endpoint, None,
            "the exporter reads the endpoint variables"
        );
        let s = Settings::resolve(
            &on(config::Otlp {
                endpoint: Some("http://collector:4318/".into()),
                protocol: Some("http/protobuf".into()),
                sample_ratio: Some(0.5),
                ..Default::default()
            }),
            &env,
        )
        .unwrap()
        .unwrap();
        assert_eq!(s.protocol, Protocol::HttpProtobuf);
        assert_eq!(s.sample_ratio, 0.5);
        assert_eq!(
            s.endpoint.as_deref(),
            Some("http://collector:4318/v1/traces")
        );
    }

    #[test]
    fn bad_values_are_named() {
        let env = env_of(&[("OTEL_TRACES_SAMPLER_ARG", "lots")]);
        let e = Settings::resolve(&on(Default::default()), &env).unwrap_err();
        assert!(e.contains("OTEL_TRACES_SAMPLER_ARG"), "{e}");
        assert!(Protocol::parse("http/json")
            .unwrap_err()
            .contains("not supported"));
        assert!(check_endpoint("collector:4317").is_err());
        assert!(check_endpoint("https://collector:4317").is_ok());
        assert_eq!(
            traces_url("http://c:4318/v1/traces"),
            "http://c:4318/v1/traces"
        );
    }

    #[test]
    fn a_traceparent_reads_back_as_written() {
        let text = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let parent = Parent::from_traceparent(text).unwrap();
        assert_eq!(parent.traceparent(), text);
        assert_eq!(parent.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(Parent::from_traceparent("00-zz-00f067aa0ba902b7-01").is_none());
        let unsampled = Parent(SpanContext::new(
            opentelemetry::trace::TraceId::from(1),
            opentelemetry::trace::SpanId::from(2),
            TraceFlags::default(),
            true,
            TraceState::default(),
        ));
        assert_eq!(
            unsampled.traceparent(),
            "00-00000000000000000000000000000001-0000000000000002-00"
        );
    }
}
