//! Prometheus metrics for every stage, in one registry of their own.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Every metric taphook exports.
pub struct Metrics {
    pub registry: Registry,
    /// Every registered family's name, sorted.
    names: Vec<String>,
    pub proxy_requests: IntCounterVec,
    pub events_derived: IntCounterVec,
    pub events_duplicate: IntCounter,
    /// Exchanges that found the tap queue full and waited for room.
    pub tap_waits: IntCounter,
    /// 1 per webhook: its destination's kind and its format (join on
    /// `webhook` to label any per-webhook series with them).
    pub webhook_info: IntGaugeVec,
    /// Spans exported to the OTLP collector.
    pub telemetry_exported: IntCounter,
    /// Spans lost: the export queue was full, or the collector did not
    /// take them.
    pub telemetry_dropped: IntCounter,
    pub events_dropped: IntCounterVec,
    pub filter_rejected: IntCounterVec,
    pub deliveries: IntCounterVec,
    pub delivery_attempts: IntCounterVec,
    pub delivery_refused: IntCounterVec,
    pub delivery_duration: HistogramVec,
    pub event_delivery_latency: Histogram,
    pub outbox_pending: IntGaugeVec,
    pub outbox_dead: IntGaugeVec,
    pub outbox_accepted: IntCounter,
    pub webhook_disabled: IntGaugeVec,
    pub webhook_paused: IntGaugeVec,
    pub rules_reloads: IntCounterVec,
    /// Reads of a changed TLS certificate on the listener, by result.
    pub tls_reloads: IntCounterVec,
    /// Bytes the tap's body copies hold now.
    pub capture_bytes: IntGauge,
    pub proxy_request_duration: HistogramVec,
    pub funnel_sessions: IntCounterVec,
    pub funnel_stage_duration: HistogramVec,
    pub funnel_open_sessions: IntGauge,
    pub sessions_stalled: IntCounterVec,
    /// JetStream backend: 1 while connected to NATS.
    pub store_connected: IntGauge,
    /// JetStream backend: writes waiting in the local buffer.
    pub store_buffered: IntGauge,
    /// JetStream backend: writes dropped because the local buffer was full.
    pub store_buffer_dropped: IntCounterVec,
    pub webhook_rate_limited: IntCounterVec,
    pub webhook_rate_limit_wait: prometheus::GaugeVec,
    /// The last hour, minute by minute, for the console (not exported).
    pub activity: crate::activity::Activity,
}

const PROXY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Time between funnel stages: people take seconds to hours.
const STAGE_BUCKETS: &[f64] = &[
    1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 21600.0, 86400.0,
];

const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let names = std::cell::RefCell::new(Vec::new());
        let register = |c: Box<dyn prometheus::core::Collector>| {
            names
                .borrow_mut()
                .extend(c.desc().into_iter().map(|d| d.fq_name.clone()));
            registry.register(c).expect("unique metric");
        };
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            register(Box::new(c.clone()));
            c
        };
        let proxy_requests = counter(
            "taphook_proxy_requests_total",
            "Requests proxied, by first matching route and status class.",
            &["route", "status_class"],
        );
        let events_derived = counter(
            "taphook_events_derived_total",
            "Events derived from exchanges, by event type.",
            &["event_type"],
        );
        let events_dropped = counter(
            "taphook_events_dropped_total",
            "Exchanges or events dropped before delivery, by reason.",
            &["reason"],
        );
        let filter_rejected = counter(
            "taphook_filter_rejected_total",
            "Events a webhook's filter rejected.",
            &["webhook"],
        );
        let deliveries = counter(
            "taphook_deliveries_total",
            "Deliveries finished, by webhook and outcome (delivered, dead).",
            &["webhook", "outcome"],
        );
        let delivery_attempts = counter(
            "taphook_delivery_attempts_total",
            "Delivery attempts, by webhook and status class (2xx..5xx, timeout, error).",
            &["webhook", "status_class"],
        );
        let delivery_refused = counter(
            "taphook_delivery_refused_total",
            "Delivery attempts refused before connecting (SSRF guard), by webhook and reason (private_address, scheme).",
            &["webhook", "reason"],
        );
        let webhook_rate_limited = counter(
            "taphook_webhook_rate_limited_total",
            "Deliveries held back by the webhook's rate limit (each counted once per wait), by webhook.",
            &["webhook"],
        );
        let webhook_rate_limit_wait = prometheus::GaugeVec::new(
            Opts::new(
                "taphook_webhook_rate_limit_wait_seconds",
                "How long the webhook's next delivery waits for its rate limit now (0: none waits), by webhook.",
            ),
            &["webhook"],
        )
        .expect("valid metric");
        register(Box::new(webhook_rate_limit_wait.clone()));
        let rules_reloads = counter(
            "taphook_rules_reloads_total",
            "Rules loads, by result.",
            &["result"],
        );
        let tls_reloads = counter(
            "taphook_tls_reloads_total",
            "Reloads of the listener's TLS certificate that changed it, by result (error: the current one is kept).",
            &["result"],
        );
        let events_duplicate = IntCounter::new(
            "taphook_events_duplicate_total",
            "Events dropped as duplicates of an event UUID seen before.",
        )
        .expect("valid metric");
        register(Box::new(events_duplicate.clone()));
        let tap_waits = IntCounter::new(
            "taphook_tap_queue_waits_total",
            "Finished exchanges that found the tap queue full and waited for room (tap.when_full: wait).",
        )
        .expect("valid metric");
        register(Box::new(tap_waits.clone()));
        let webhook_info = IntGaugeVec::new(
            Opts::new(
                "taphook_webhook_info",
                "1 per webhook, labelled with its destination's kind (http, nats, amqp, redis) and its format.",
            ),
            &["webhook", "kind", "format"],
        )
        .expect("valid metric");
        register(Box::new(webhook_info.clone()));
        let telemetry_exported = IntCounter::new(
            "taphook_telemetry_exported_total",
            "Trace spans the OTLP collector accepted.",
        )
        .expect("valid metric");
        register(Box::new(telemetry_exported.clone()));
        let telemetry_dropped = IntCounter::new(
            "taphook_telemetry_dropped_total",
            "Trace spans lost: the export queue was full or the OTLP collector did not take them.",
        )
        .expect("valid metric");
        register(Box::new(telemetry_dropped.clone()));
        let delivery_duration = HistogramVec::new(
            HistogramOpts::new(
                "taphook_delivery_duration_seconds",
                "Duration of one delivery attempt.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["webhook"],
        )
        .expect("valid metric");
        register(Box::new(delivery_duration.clone()));
        let event_delivery_latency = Histogram::with_opts(
            HistogramOpts::new(
                "taphook_event_delivery_latency_seconds",
                "Time from the exchange's completion to the event's delivery.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
        )
        .expect("valid metric");
        register(Box::new(event_delivery_latency.clone()));
        let outbox_pending = IntGaugeVec::new(
            Opts::new(
                "taphook_outbox_pending",
                "Deliveries waiting or in flight, by webhook.",
            ),
            &["webhook"],
        )
        .expect("valid metric");
        register(Box::new(outbox_pending.clone()));
        let gauge = |name: &str, help: &str| {
            let g = IntGaugeVec::new(Opts::new(name, help), &["webhook"]).expect("valid metric");
            register(Box::new(g.clone()));
            g
        };
        let outbox_dead = gauge(
            "taphook_outbox_dead",
            "Dead deliveries (out of retries) in the outbox, by webhook.",
        );
        let webhook_disabled = gauge(
            "taphook_webhook_disabled",
            "1 when a webhook is disabled (its receiver answered 410 Gone).",
        );
        let webhook_paused = gauge(
            "taphook_webhook_paused",
            "1 when a webhook is paused after failing continuously, and probed.",
        );
        let outbox_accepted = IntCounter::new(
            "taphook_outbox_accepted_total",
            "Deliveries committed to the outbox.",
        )
        .expect("valid metric");
        register(Box::new(outbox_accepted.clone()));
        let capture_bytes = IntGauge::new(
            "taphook_capture_bytes",
            "Bytes the tap's body copies hold now (requests in flight and exchanges waiting), under capture.max_total_bytes.",
        )
        .expect("valid metric");
        register(Box::new(capture_bytes.clone()));
        let histogram = |name: &str, help: &str, labels: &[&str], buckets: &[f64]| {
            let h = HistogramVec::new(
                HistogramOpts::new(name, help).buckets(buckets.to_vec()),
                labels,
            )
            .expect("valid metric");
            register(Box::new(h.clone()));
            h
        };
        let proxy_request_duration = histogram(
            "taphook_proxy_request_duration_seconds",
            "Time from a request's headers to the end of its response, by first matching route (none: no route).",
            &["route"],
            PROXY_BUCKETS,
        );
        let funnel_sessions = counter(
            "taphook_funnel_sessions_total",
            "Importer sessions that reached a funnel stage (initialized, uploaded, header_selected, mapped, submitted, closed), counted once per session, by template key (past funnel.max_template_keys: other).",
            &["template_key", "stage"],
        );
        let funnel_stage_duration = histogram(
            "taphook_funnel_stage_duration_seconds",
            "Time a session took to reach a funnel stage from the last earlier stage it reached, by template key and stage reached.",
            &["template_key", "stage"],
            STAGE_BUCKETS,
        );
        let sessions_stalled = counter(
            "taphook_sessions_stalled_total",
            "session_stalled events: sessions idle for funnel.stall_after before submitting or closing, by template key and the last stage reached (none: no stage).",
            &["template_key", "stage"],
        );
        let funnel_open_sessions = IntGauge::new(
            "taphook_funnel_open_sessions",
            "Sessions not yet submitted, closed or stalled: those watched for stalls.",
        )
        .expect("valid metric");
        register(Box::new(funnel_open_sessions.clone()));
        let store_buffer_dropped = counter(
            "taphook_store_buffer_dropped_total",
            "JetStream backend: writes dropped because the local buffer (store.buffer) was full while NATS was unreachable, by kind (delivery, event, session).",
            &["kind"],
        );
        let plain_gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            register(Box::new(g.clone()));
            g
        };
        let store_connected = plain_gauge(
            "taphook_store_connected",
            "JetStream backend: 1 while connected to NATS, 0 while not (writes wait in the local buffer).",
        );
        let store_buffered = plain_gauge(
            "taphook_store_buffered",
            "JetStream backend: writes (deliveries, events, sessions) waiting in the local buffer for NATS.",
        );
        let mut names = names.into_inner();
        names.sort();
        Self {
            activity: crate::activity::Activity::default(),
            names,
            registry,
            store_connected,
            store_buffered,
            store_buffer_dropped,
            proxy_request_duration,
            funnel_sessions,
            funnel_stage_duration,
            funnel_open_sessions,
            sessions_stalled,
            proxy_requests,
            events_derived,
            events_duplicate,
            tap_waits,
            webhook_info,
            telemetry_exported,
            telemetry_dropped,
            events_dropped,
            filter_rejected,
            deliveries,
            delivery_attempts,
            delivery_refused,
            webhook_rate_limited,
            webhook_rate_limit_wait,
            delivery_duration,
            event_delivery_latency,
            outbox_pending,
            outbox_dead,
            outbox_accepted,
            webhook_disabled,
            webhook_paused,
            rules_reloads,
            tls_reloads,
            capture_bytes,
        }
    }

    /// Creates the series whose label values are known up front, so they
    /// are exported (as 0) before anything happens.
    pub fn init_known_series<'a>(&self, webhooks: impl IntoIterator<Item = &'a str>) {
        for reason in ["tap_queue_full", "shutting_down", "store_unavailable"] {
            self.events_dropped.with_label_values(&[reason]);
        }
        for result in ["success", "error"] {
            self.rules_reloads.with_label_values(&[result]);
            self.tls_reloads.with_label_values(&[result]);
        }
        for key in webhooks {
            for outcome in ["delivered", "dead"] {
                self.deliveries.with_label_values(&[key, outcome]);
            }
            for reason in crate::deliver::guard::Refused::REASONS {
                self.delivery_refused.with_label_values(&[key, reason]);
            }
            self.filter_rejected.with_label_values(&[key]);
            self.outbox_pending.with_label_values(&[key]);
            self.outbox_dead.with_label_values(&[key]);
            self.webhook_disabled.with_label_values(&[key]);
            self.webhook_paused.with_label_values(&[key]);
            self.webhook_rate_limited.with_label_values(&[key]);
            self.webhook_rate_limit_wait.with_label_values(&[key]);
        }
    }

    /// `taphook_webhook_info`: one series per webhook of the rules in force
    /// (a webhook gone, or moved to another kind, loses its old series).
    pub fn describe_webhooks(&self, webhooks: &[std::sync::Arc<crate::rules::model::Webhook>]) {
        self.webhook_info.reset();
        for w in webhooks {
            let kind = crate::deliver::destination::Kind::of(&w.url).name();
            self.webhook_info
                .with_label_values(&[&w.key, kind, w.format.name()])
                .set(1);
        }
    }

    /// The name of every metric family taphook exports, as scraped (a
    /// histogram's `_bucket`, `_sum` and `_count` series belong to its
    /// family name). Dashboards and alert rules are checked against it.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .ok();
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Every `status_class` label value, in [`status_class_index`]'s order.
pub const STATUS_CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "other"];

/// `2xx`, `4xx`, ... for a status code.
pub fn status_class(status: u16) -> &'static str {
    STATUS_CLASSES[status_class_index(status)]
}

/// The position of a status code's class in [`STATUS_CLASSES`].
pub fn status_class_index(status: u16) -> usize {
    match status / 100 {
        c @ 1..=5 => usize::from(c) - 1,
        _ => 5,
    }
}
