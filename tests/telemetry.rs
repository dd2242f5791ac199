//! Traces (issue 27): an OTLP collector in the test (HTTP/protobuf and
//! gRPC, decoded with the `opentelemetry-proto` types) receives what the
//! real taphook exports: one trace from the caller's `traceparent` through
//! the proxied request, derive, the event, its outbox write and every
//! delivery attempt, with the receiver's `traceparent` naming the attempt;
//! a retry across a restart stays in the trace; a dead collector blocks
//! nothing and counts what it drops.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use common::*;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde_json::json;

/// The caller's trace: taphook's spans continue it.
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

fn traceparent() -> String {
    format!("00-{TRACE_ID}-{CALLER_SPAN}-01")
}

/// Spans export 100 ms after they end, not the default 5 s.
fn fast_export() {
    std::env::set_var("OTEL_BSP_SCHEDULE_DELAY", "100");
}

/// What the collector received, and the `service.name` it came under.
#[derive(Clone, Default)]
struct Collected {
    spans: Arc<Mutex<Vec<Span>>>,
    services: Arc<Mutex<Vec<String>>>,
}

impl Collected {
    fn take(&self, request: ExportTraceServiceRequest) {
        for rs in request.resource_spans {
            if let Some(r) = &rs.resource {
                for kv in &r.attributes {
                    if kv.key == "service.name" {
                        if let Some(Any::StringValue(s)) =
                            kv.value.as_ref().and_then(|v| v.value.clone())
                        {
                            self.services.lock().unwrap().push(s);
                        }
                    }
                }
            }
            for ss in rs.scope_spans {
                self.spans.lock().unwrap().extend(ss.spans);
            }
        }
    }

    fn spans(&self) -> Vec<Span> {
        self.spans.lock().unwrap().clone()
    }

    /// Waits until `pred` holds of the spans received.
    async fn wait(&self, what: &str, pred: impl Fn(&[Span]) -> bool) -> Vec<Span> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let spans = self.spans();
            if pred(&spans) {
                return spans;
            }
            assert!(
                Instant::now() < deadline,
                "no {what} in 15 s; spans: {:#?}",
                spans.iter().map(|s| &s.name).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// An OTLP/HTTP collector: `POST /v1/traces`, protobuf.
async fn http_collector() -> (SocketAddr, Collected) {
    let collected = Collected::default();
    let c = collected.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: Bytes| {
            let c = c.clone();
            async move {
                match ExportTraceServiceRequest::decode(body) {
                    Ok(r) => {
                        c.take(r);
                        (
                            axum::http::StatusCode::OK,
                            [("content-type", "application/x-protobuf")],
                            ExportTraceServiceResponse::default().encode_to_vec(),
                        )
                    }
                    Err(_) => (
                        axum::http::StatusCode::BAD_REQUEST,
                        [("content-type", "text/plain")],
                        b"not an ExportTraceServiceRequest".to_vec(),
                    ),
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, collected)
}

/// An OTLP/gRPC collector (tonic, the proto crate's service).
struct Grpc(Collected);

#[tonic::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.take(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

async fn grpc_collector() -> (SocketAddr, Collected) {
    let collected = Collected::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = TraceServiceServer::new(Grpc(collected.clone()));
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
    });
    (addr, collected)
}

/// The `traceparent` a receiver got, split into its four fields.
fn traceparent_at(r: &taphook::demo::receiver::Recorded) -> Vec<String> {
    r.header("traceparent")
        .expect("the receiver gets a traceparent")
        .split('-')
        .map(str::to_string)
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attr(span: &Span, key: &str) -> Option<Any> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.clone())
}

fn text(span: &Span, key: &str) -> Option<String> {
    match attr(span, key) {
        Some(Any::StringValue(s)) => Some(s),
        _ => None,
    }
}

fn int(span: &Span, key: &str) -> Option<i64> {
    match attr(span, key) {
        Some(Any::IntValue(i)) => Some(i),
        _ => None,
    }
}

/// Every attribute value of every span, as text (for the secrets check).
fn all_values(spans: &[Span]) -> String {
    spans
        .iter()
        .flat_map(|s| s.attributes.iter())
        .map(|kv| format!("{}={:?}\n", kv.key, kv.value))
        .collect()
}

fn named<'a>(spans: &'a [Span], name: &str) -> Vec<&'a Span> {
    spans.iter().filter(|s| s.name == name).collect()
}

fn one<'a>(spans: &'a [Span], name: &str) -> &'a Span {
    let found = named(spans, name);
    assert_eq!(found.len(), 1, "one `{name}` span: {found:#?}");
    found[0]
}

const HOOK: &str = "    events: [embed_initialized]\n    retry: { backoff: [3s] }\n";

fn telemetry_config(endpoint: &str, protocol: &str, extra: &str) -> String {
    format!(
        "telemetry:\n  otlp:\n    endpoint: {endpoint}\n    protocol: {protocol}\n    headers:\n      x-collector-key: collector-secret\n{extra}"
    )
}

/// Sends `POST /v1/embeds` with the caller's `traceparent`, an API key and
/// a cookie (neither may reach a span).
async fn create_traced_embed(stack: &Stack) {
    let r = stack
        .client
        .post(stack.url("/v1/embeds"))
        .header("traceparent", traceparent())
        .header("x-api-key", "test-key")
        .header("cookie", "sessionid=cookie-secret")
        .json(&json!({"template_key": "contacts"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// taphook exporting to `collector` over `protocol`, with one webhook
/// `hook` on `/hooks/{hook}` (and `extra` telemetry lines).
async fn traced_stack(collector: &str, protocol: &str, extra: &str, hook: &str) -> Stack {
    let config = telemetry_config(collector, protocol, extra);
    Stack::start(Setup {
        rules: vec![(
            "hooks.yaml",
            format!(
                "webhooks:\n{}",
                webhook(hook, &format!("/hooks/{hook}"), HOOK)
            ),
        )],
        config: &config,
        ..Default::default()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_runs_from_the_callers_request_to_the_receiver() {
    fast_export();
    let (collector, collected) = http_collector().await;
    let stack = traced_stack(
        &format!("http://{collector}"),
        "http/protobuf",
        "",
        "traced",
    )
    .await;
    // Untapped: no span (trace_untapped is off).
    let r = stack
        .client
        .get(stack.url("/_fixtures/empty"))
        .header(
            "traceparent",
            format!("00-{}-{CALLER_SPAN}-01", "1".repeat(32)),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    create_traced_embed(&stack).await;
    let got = stack
        .receiver
        .wait_for("/hooks/traced", 1, Duration::from_secs(10))
        .await;
    let parts = traceparent_at(&got[0]);
    assert_eq!(parts.len(), 4, "{parts:?}");
    assert_eq!(parts[0], "00");
    assert_eq!(parts[1], TRACE_ID, "the receiver's trace is the caller's");
    assert_eq!(parts[3], "01", "sampled");
    let attempt_span = parts[2].to_string();

    let spans = collected
        .wait("the delivery attempt's span", |s| {
            s.iter().any(|s| hex(&s.span_id) == attempt_span)
                && s.iter().any(|s| s.name == "outbox write")
        })
        .await;
    assert!(
        spans.iter().all(|s| hex(&s.trace_id) == TRACE_ID),
        "one trace: {spans:#?}"
    );
    // The proxied request: the caller's span is its parent.
    let request = one(&spans, "POST /v1/embeds");
    assert_eq!(request.kind, SpanKind::Server as i32);
    assert_eq!(hex(&request.parent_span_id), CALLER_SPAN);
    assert_eq!(
        text(request, "http.request.method").as_deref(),
        Some("POST")
    );
    assert_eq!(text(request, "http.route").as_deref(), Some("/v1/embeds"));
    assert_eq!(int(request, "http.response.status_code"), Some(200));
    assert!(request.start_time_unix_nano < request.end_time_unix_nano);
    // Derive: the routes that fired.
    let derive = one(&spans, "derive");
    assert_eq!(derive.parent_span_id, request.span_id);
    match attr(derive, "taphook.routes") {
        Some(Any::ArrayValue(a)) => {
            let names: Vec<String> = a
                .values
                .iter()
                .filter_map(|v| match &v.value {
                    Some(Any::StringValue(s)) => Some(s.clone()),
                    _ => None,
                })
                .collect();
            assert!(!names.is_empty(), "the routes that fired");
        }
        other => panic!("taphook.routes: {other:?}"),
    }
    // The event: type, UUID, session.
    let event = one(&spans, "event embed_initialized");
    assert_eq!(event.parent_span_id, derive.span_id);
    assert_eq!(
        text(event, "taphook.event.type").as_deref(),
        Some("embed_initialized")
    );
    let uuid = text(event, "taphook.event.uuid").expect("the event's UUID");
    assert!(
        String::from_utf8_lossy(&got[0].body).contains(&uuid),
        "the span's UUID is the delivered event's"
    );
    assert!(text(event, "taphook.session").is_some());
    // Its write to the outbox.
    let write = one(&spans, "outbox write");
    assert_eq!(write.parent_span_id, event.span_id);
    assert_eq!(int(write, "taphook.deliveries"), Some(1));
    // The attempt: a client span under the event, named in the receiver's
    // traceparent.
    let attempt = one(&spans, "deliver traced");
    assert_eq!(hex(&attempt.span_id), attempt_span);
    assert_eq!(attempt.parent_span_id, event.span_id);
    assert_eq!(attempt.kind, SpanKind::Client as i32);
    assert_eq!(text(attempt, "taphook.webhook").as_deref(), Some("traced"));
    assert_eq!(int(attempt, "taphook.attempt"), Some(1));
    assert_eq!(int(attempt, "taphook.retry"), Some(0));
    assert_eq!(int(attempt, "http.response.status_code"), Some(200));
    // Nothing of the untapped request; no credential anywhere.
    assert!(
        spans
            .iter()
            .all(|s| s.name != "GET" && s.name != "GET /_fixtures/empty"),
        "an untapped request got a span"
    );
    let values = all_values(&spans);
    for secret in ["test-key", "cookie-secret", "collector-secret"] {
        assert!(!values.contains(secret), "`{secret}` in a span:\n{values}");
    }
    assert!(collected
        .services
        .lock()
        .unwrap()
        .iter()
        .all(|s| s == "taphook"));
    // Log lines about the event carry its trace id.
    assert!(
        stack
            .log()
            .lines()
            .any(|l| l.contains("event derived") && l.contains(TRACE_ID)),
        "no log line with trace_id:\n{}",
        stack.log()
    );
    // The request, derive, the event, its write and the attempt.
    assert_eq!(
        spans.len(),
        5,
        "{:#?}",
        spans.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
    assert_eq!(
        stack
            .wait_metric("taphook_telemetry_exported_total", 5.0)
            .await,
        5.0
    );
    assert_eq!(stack.metric("taphook_telemetry_dropped_total").await, 0.0);
    assert!(!stack.log().contains("collector-secret"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_a_restart_stays_in_the_events_trace() {
    fast_export();
    let (collector, collected) = grpc_collector().await;
    let mut stack = traced_stack(&format!("http://{collector}"), "grpc", "", "retried").await;
    stack
        .receiver
        .script("/hooks/retried", &[Reply::Status(429), Reply::Status(200)]);
    create_traced_embed(&stack).await;
    stack
        .receiver
        .wait_for("/hooks/retried", 1, Duration::from_secs(10))
        .await;
    // The failed attempt's span is exported before the process is killed.
    collected
        .wait("the first attempt's span", |s| {
            s.iter().any(|s| s.name == "deliver retried")
        })
        .await;
    stack.restart().await;
    let got = stack
        .receiver
        .wait_for("/hooks/retried", 2, Duration::from_secs(15))
        .await;
    let ids: Vec<Vec<String>> = got.iter().map(traceparent_at).collect();
    assert_eq!(ids[0][1], TRACE_ID);
    assert_eq!(
        ids[1][1], TRACE_ID,
        "the retry after the restart is in the same trace"
    );
    assert_ne!(ids[0][2], ids[1][2], "each attempt is a span of its own");
    let spans = collected
        .wait("both attempts' spans", |s| {
            named(s, "deliver retried").len() == 2
        })
        .await;
    let attempts = named(&spans, "deliver retried");
    let first = attempts
        .iter()
        .find(|s| int(s, "taphook.attempt") == Some(1))
        .unwrap();
    let second = attempts
        .iter()
        .find(|s| int(s, "taphook.attempt") == Some(2))
        .unwrap();
    assert_eq!(hex(&first.span_id), ids[0][2]);
    assert_eq!(hex(&second.span_id), ids[1][2]);
    assert_eq!(int(first, "http.response.status_code"), Some(429));
    assert_eq!(
        first.status.as_ref().map(|s| s.code),
        Some(opentelemetry_proto::tonic::trace::v1::status::StatusCode::Error as i32)
    );
    assert_eq!(int(second, "taphook.retry"), Some(1));
    assert_eq!(int(second, "http.response.status_code"), Some(200));
    // Both are children of the one event span, from before the restart.
    assert_eq!(first.parent_span_id, second.parent_span_id);
    let event = one(&spans, "event embed_initialized");
    assert_eq!(first.parent_span_id, event.span_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_collector_blocks_nothing_and_counts_what_it_drops() {
    fast_export();
    let dead = format!("http://127.0.0.1:{}", taphook::demo::free_port().unwrap());
    let stack = traced_stack(&dead, "http/protobuf", "  trace_untapped: true\n", "alive").await;
    let started = Instant::now();
    for _ in 0..20 {
        stack
            .create_embed(json!({"template_key": "contacts"}), false)
            .await;
        let r = stack
            .client
            .get(stack.url("/_fixtures/empty"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
    }
    stack
        .receiver
        .wait_for("/hooks/alive", 20, Duration::from_secs(15))
        .await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "requests were held up: {:?}",
        started.elapsed()
    );
    // 20 requests, derive, events, writes and attempts: every span lost
    // is counted (the untapped requests' too: trace_untapped).
    stack
        .wait_metric_at_least("taphook_telemetry_dropped_total", 100.0)
        .await;
    assert_eq!(stack.metric("taphook_telemetry_exported_total").await, 0.0);
    assert!(stack
        .log()
        .contains("traces: the collector did not take a batch"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untapped_requests_get_a_span_only_when_asked() {
    fast_export();
    let (collector, collected) = http_collector().await;
    let config = telemetry_config(
        &format!("http://{collector}/v1/traces"),
        "http/protobuf",
        "  trace_untapped: true\n",
    );
    let stack = Stack::start(Setup {
        config: &config,
        ..Default::default()
    })
    .await;
    let r = stack
        .client
        .get(stack.url("/_fixtures/empty?token=query-secret"))
        .header("traceparent", traceparent())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let spans = collected
        .wait("the untapped request's span", |s| {
            s.iter().any(|s| s.name == "GET")
        })
        .await;
    let span = one(&spans, "GET");
    assert_eq!(hex(&span.trace_id), TRACE_ID);
    assert_eq!(hex(&span.parent_span_id), CALLER_SPAN);
    assert_eq!(text(span, "http.route"), None, "no route matched");
    assert_eq!(int(span, "http.response.status_code"), Some(204));
    assert!(!all_values(&spans).contains("query-secret"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_the_caller_did_not_sample_is_passed_on_unrecorded() {
    fast_export();
    let (collector, collected) = http_collector().await;
    let stack = traced_stack(&format!("http://{collector}"), "http/protobuf", "", "quiet").await;
    let unsampled = format!("00-{TRACE_ID}-{CALLER_SPAN}-00");
    let r = stack
        .client
        .post(stack.url("/v1/embeds"))
        .header("traceparent", &unsampled)
        .json(&json!({"template_key": "contacts"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let got = stack
        .receiver
        .wait_for("/hooks/quiet", 1, Duration::from_secs(10))
        .await;
    let parts = traceparent_at(&got[0]);
    assert_eq!(parts[1], TRACE_ID, "the caller's trace is passed on");
    assert_eq!(parts[3], "00", "not sampled: the receiver is told so");
    // A sampled request afterwards is exported, so the export ran: nothing
    // of the unsampled one was.
    create_traced_embed(&stack).await;
    let spans = collected
        .wait("the sampled request's spans", |s| {
            s.iter().any(|s| s.name.starts_with("deliver"))
        })
        .await;
    assert!(
        spans.iter().all(|s| hex(&s.parent_span_id) != parts[2]),
        "{spans:#?}"
    );
    assert_eq!(
        named(&spans, "POST /v1/embeds").len(),
        1,
        "only the sampled request"
    );
}
