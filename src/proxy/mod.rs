//! The proxy stage: a Pingora `ProxyHttp` that forwards every request to
//! the importer untouched and, for requests a route could match, copies
//! bounded parts of the exchange. The finished exchange is handed to the
//! pipeline in `logging`: a full queue makes the exchange wait for room
//! (up to `tap.max_wait`, after the client has its response) or, with
//! `tap.when_full: drop`, drops it (counted); never the request.

pub mod drain;
pub mod listener;
pub mod multipart;
pub mod tls;
pub mod upstream;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::ErrorSource;
use prometheus::{Histogram, IntCounter};
use tokio::sync::mpsc::{self, error::SendTimeoutError, error::TrySendError};

use crate::app::Shared;
use crate::config::WhenFull;
use crate::derive::exchange::{Budget, Headers};
use crate::derive::{Captured, Exchange};
use crate::metrics::{status_class, status_class_index, Metrics, STATUS_CLASSES};
use multipart::MultipartScanner;

/// The tap in front of the importer.
pub struct Tap {
    shared: Arc<Shared>,
    queue: mpsc::Sender<Exchange>,
    /// The importer: its address, resolved once at start, and how it is
    /// spoken to (plain or TLS), cloned for each request.
    upstream: HttpPeer,
    budget: Arc<Budget>,
    dropped: AtomicU64,
    untapped: Untapped,
    /// `record.all`: every exchange is copied (for the recording), not
    /// only those a route could match.
    copy_all: bool,
    /// `record:` is on: with no route at all, every exchange is recorded.
    recording: bool,
}

impl Tap {
    pub fn new(
        shared: Arc<Shared>,
        queue: mpsc::Sender<Exchange>,
        upstream: HttpPeer,
        budget: Arc<Budget>,
    ) -> Self {
        Self {
            untapped: Untapped::new(&shared.metrics),
            copy_all: shared.config.record.as_ref().is_some_and(|r| r.all),
            recording: shared.config.record.is_some(),
            shared,
            queue,
            upstream,
            budget,
            dropped: AtomicU64::new(0),
        }
    }

    /// A new body copy: under the cap, charged to the budget, and for at
    /// most `capture.max_duration` from now.
    fn capture(&self, cap: usize) -> Captured {
        let copy = Captured::with_budget(cap, self.budget.clone());
        // A duration too long to add is no deadline.
        match Instant::now().checked_add(self.shared.config.max_capture_duration) {
            Some(deadline) => copy.until(deadline),
            None => copy,
        }
    }

    /// Hands a finished exchange to the pipeline. When the queue is full
    /// the exchange waits for room up to `tap.max_wait` (the client has
    /// its response already: only this connection's next request waits),
    /// or is dropped at once with `tap.when_full: drop`. A drop is
    /// counted; the request is never affected.
    async fn hand_off(&self, exchange: Exchange) {
        let exchange = match self.queue.try_send(exchange) {
            Ok(()) => return,
            Err(TrySendError::Closed(_)) => return self.dropped("shutting_down"),
            Err(TrySendError::Full(exchange)) => exchange,
        };
        let WhenFull::Wait(max_wait) = self.shared.config.tap_when_full else {
            return self.dropped("tap_queue_full");
        };
        self.shared.metrics.tap_waits.inc();
        match self.queue.send_timeout(exchange, max_wait).await {
            Ok(()) => {}
            Err(SendTimeoutError::Timeout(_)) => self.dropped("tap_queue_full"),
            Err(SendTimeoutError::Closed(_)) => self.dropped("shutting_down"),
        }
    }

    fn dropped(&self, reason: &'static str) {
        self.shared
            .metrics
            .events_dropped
            .with_label_values(&[reason])
            .inc();
        let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        if n.is_power_of_two() {
            tracing::warn!(
                dropped = n,
                reason,
                "exchanges dropped before derivation (requests unaffected)"
            );
        }
    }
}

/// Per-request state. Pingora keeps it inside each request's future,
/// which it moves into a box per request: an untapped request carries
/// its start times and an empty box, and only a tapped one allocates its
/// copies.
#[derive(Default)]
pub struct TapCtx {
    /// When the request's headers were read.
    started: Option<Instant>,
    /// The same moment on the wall clock, for the request's span (traces
    /// on, and the request tapped or `telemetry.trace_untapped`).
    traced_at: Option<SystemTime>,
    /// What a tapped exchange has copied so far; `None` when no route
    /// can match.
    tapped: Option<Box<Tapped>>,
}

/// A tapped exchange's copies.
#[derive(Default)]
struct Tapped {
    /// The first matching route's name.
    route: String,
    /// Its path template, for the request's span (empty: traces off).
    template: String,
    /// Text bodies are copied as well as JSON and forms (for a recording
    /// of every exchange).
    text_too: bool,
    cap: usize,
    method: String,
    path: String,
    query: Option<String>,
    request_headers: Headers,
    request_body: Option<Captured>,
    multipart: Option<MultipartScanner>,
    status: u16,
    response_headers: Headers,
    response_body: Option<Captured>,
    /// The upstream's response body ended.
    response_complete: bool,
}

/// The id lines about this exchange's events carry: the client's
/// `X-Request-Id` when it is short printable ASCII, else a new one (128
/// random bits from the thread's generator: a v4 UUID would cost a
/// `getrandom` system call per tapped request).
fn request_id(headers: &Headers) -> String {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_string)
        .unwrap_or_else(|| format!("{:032x}", fastrand::u128(..)))
}

/// The metrics of requests no route taps, looked up once: an untapped
/// request only bumps a counter and observes a histogram.
struct Untapped {
    /// By status class, in [`STATUS_CLASSES`]' order.
    requests: [IntCounter; STATUS_CLASSES.len()],
    duration: Histogram,
}

impl Untapped {
    fn new(metrics: &Metrics) -> Self {
        Self {
            requests: STATUS_CLASSES
                .map(|class| metrics.proxy_requests.with_label_values(&[UNTAPPED, class])),
            duration: metrics
                .proxy_request_duration
                .with_label_values(&[UNTAPPED]),
        }
    }

    fn requests(&self, status: u16) -> &IntCounter {
        &self.requests[status_class_index(status)]
    }
}

/// The `route` label of requests no route taps.
const UNTAPPED: &str = "none";

/// The downstream connection's write buffer (Pingora's default is one
/// TCP segment, 1,460 bytes): a response head and body up to 16 KiB leave
/// in one `write`, not one per 1,460 bytes (issue 26; measured in
/// docs/BENCHMARKS.md).
pub const DOWNSTREAM_WRITE_BUFFER: usize = 16 * 1024;

fn content_type(headers: &http::HeaderMap) -> Option<&str> {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
}

/// Bodies worth copying: JSON, forms, or untyped; with `text_too`, pages
/// and plain text as well (HTML, text, CSV), for a recording: not
/// stylesheets and scripts.
fn capturable(content_type: Option<&str>, text_too: bool) -> bool {
    let Some(ct) = content_type else { return true };
    let ct = ct.trim().to_ascii_lowercase();
    let essence = ct.split(';').next().unwrap_or("").trim();
    essence == "application/json"
        || essence.ends_with("+json")
        || essence == "application/x-www-form-urlencoded"
        || essence == "text/json"
        || (text_too
            && matches!(
                essence,
                "text/html" | "text/plain" | "text/csv" | "text/tab-separated-values"
            ))
}

/// Whether an exchange that ended with `error` still carries a step the
/// upstream completed: only when the error is the client's (it went away
/// after the upstream answered).
fn upstream_answered(error: Option<&pingora::Error>, ctx: &Tapped) -> bool {
    ctx.status != 0 && error.is_none_or(|e| matches!(e.esource(), ErrorSource::Downstream))
}

#[async_trait]
impl ProxyHttp for Tap {
    type CTX = TapCtx;

    fn new_ctx(&self) -> TapCtx {
        TapCtx::default()
    }

    /// No downstream modules. Pingora's default adds its response
    /// compression module, disabled, which still built a context and ran
    /// two filters (four allocations) on every request; taphook never
    /// compresses: the client gets the upstream's bytes.
    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {}

    /// What Pingora's own error lines show of a request: the method, the
    /// path without the query (which may carry tokens) and the host.
    fn request_summary(&self, session: &Session, _ctx: &TapCtx) -> String {
        let req = session.req_header();
        let host = req
            .headers
            .get(http::header::HOST)
            .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned())
            .unwrap_or_default();
        format!("{} {}, Host: {host}", req.method, req.uri.path())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut TapCtx) -> Result<bool> {
        ctx.started = Some(Instant::now());
        let req = session.req_header();
        let rules = self.shared.rules.load();
        let plan = rules.routes.tap_plan(req.method.as_str(), req.uri.path());
        // Recording every exchange (`record.all`, or no route yet): text
        // bodies (pages, CSV) are copied too, for the recording.
        let record_all = self.copy_all || (self.recording && rules.routes.routes().is_empty());
        let (route, template, cap) = match plan {
            Some(plan) => (plan.route, plan.template, plan.cap),
            // Recorded, not tapped: counted under `route="none"`.
            None if record_all => (UNTAPPED, "", None),
            None => {
                if crate::telemetry::traces_untapped() {
                    ctx.traced_at = Some(SystemTime::now());
                }
                return Ok(false);
            }
        };
        let traced = crate::telemetry::on();
        ctx.traced_at = traced.then(SystemTime::now);
        ctx.tapped = Some(Box::new(Tapped {
            text_too: record_all,
            route: route.to_string(),
            template: if traced {
                template.to_string()
            } else {
                String::new()
            },
            cap: cap.unwrap_or(self.shared.config.max_body_bytes),
            method: req.method.as_str().to_string(),
            path: req.uri.path().to_string(),
            query: req.uri.query().map(str::to_string),
            ..Tapped::default()
        }));
        Ok(false)
    }

    /// The tap reads the request's headers as the upstream gets them:
    /// after Pingora removed the hop-by-hop ones and those the request's
    /// `Connection` header names. A header the upstream never saw (an
    /// `Authorization` named in `Connection`) must not feed an event.
    /// Runs again if Pingora retries the upstream, so copies start over.
    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut TapCtx,
    ) -> Result<()> {
        let Some(ctx) = ctx.tapped.as_deref_mut() else {
            return Ok(());
        };
        ctx.request_headers = detached(&upstream_request.headers);
        let ct = content_type(&upstream_request.headers);
        ctx.multipart = ct.and_then(MultipartScanner::for_content_type);
        ctx.request_body = (ctx.multipart.is_none() && capturable(ct, ctx.text_too))
            .then(|| self.capture(ctx.cap));
        Ok(())
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut TapCtx,
    ) -> Result<Box<HttpPeer>> {
        Ok(Box::new(self.upstream.clone()))
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut TapCtx,
    ) -> Result<()> {
        if let (Some(chunk), Some(ctx)) = (body, ctx.tapped.as_deref_mut()) {
            if let Some(c) = &mut ctx.request_body {
                c.push(chunk);
            }
            if let Some(m) = &mut ctx.multipart {
                m.feed(chunk);
            }
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut TapCtx,
    ) -> Result<()> {
        if self.shared.draining.load(Ordering::Acquire) {
            // `Connection: close`: the client's next request opens a new
            // connection, which the process taking over accepts.
            session.set_keepalive(None);
        }
        if let Some(ctx) = ctx.tapped.as_deref_mut() {
            ctx.status = resp.status.as_u16();
            ctx.response_headers = detached(&resp.headers);
            if capturable(content_type(&resp.headers), ctx.text_too) {
                ctx.response_body = Some(self.capture(ctx.cap));
            }
        }
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut TapCtx,
    ) -> Result<Option<std::time::Duration>> {
        if let Some(ctx) = ctx.tapped.as_deref_mut() {
            if let (Some(chunk), Some(c)) = (body.as_ref(), &mut ctx.response_body) {
                c.push(chunk);
            }
            ctx.response_complete |= end_of_stream;
        }
        Ok(None)
    }

    async fn logging(
        &self,
        session: &mut Session,
        error: Option<&pingora::Error>,
        ctx: &mut TapCtx,
    ) {
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .unwrap_or(0);
        let elapsed = ctx.started.map(|t| t.elapsed().as_secs_f64());
        let traced_at = ctx.traced_at;
        let Some(mut ctx) = ctx.tapped.take() else {
            self.untapped.requests(status).inc();
            if let Some(elapsed) = elapsed {
                self.untapped.duration.observe(elapsed);
            }
            if let Some(start) = traced_at {
                request_span(session, None, status, start);
            }
            return;
        };
        let trace = traced_at.and_then(|start| {
            let route =
                (!ctx.template.is_empty()).then_some((ctx.route.as_str(), ctx.template.as_str()));
            request_span(session, route, status, start)
        });
        let metrics = &self.shared.metrics;
        metrics
            .proxy_requests
            .with_label_values(&[&ctx.route, status_class(status)])
            .inc();
        if let Some(elapsed) = elapsed {
            metrics
                .proxy_request_duration
                .with_label_values(&[&ctx.route])
                .observe(elapsed);
        }
        // Events come only from responses the upstream gave.
        if !upstream_answered(error, &ctx) {
            return;
        }
        let mut response_body = ctx.response_body.take();
        if let Some(body) = response_body.as_mut().filter(|_| !ctx.response_complete) {
            // The client left before the body ended: what we have is partial.
            body.truncate();
        }
        let files = ctx
            .multipart
            .take()
            .map(MultipartScanner::into_files)
            .unwrap_or_default();
        let request_id = request_id(&ctx.request_headers);
        self.hand_off(Exchange {
            request_id,
            method: std::mem::take(&mut ctx.method),
            path: std::mem::take(&mut ctx.path),
            query: ctx.query.take(),
            request_headers: std::mem::take(&mut ctx.request_headers),
            request_body: ctx.request_body.take(),
            files,
            status: ctx.status,
            response_headers: std::mem::take(&mut ctx.response_headers),
            response_body,
            completed_at: SystemTime::now(),
            trace,
        })
        .await;
    }
}

/// The proxied request's span (traces on), continuing the caller's
/// `traceparent`: its method, route template and status, nothing else.
fn request_span(
    session: &Session,
    route: Option<(&str, &str)>,
    status: u16,
    start: SystemTime,
) -> Option<crate::telemetry::Parent> {
    let req = session.req_header();
    crate::telemetry::request(&crate::telemetry::Request {
        headers: &req.headers,
        method: req.method.as_str(),
        route,
        status,
        start,
        end: SystemTime::now(),
    })
}

/// A copy of `headers` that owns its values, all in one new buffer.
/// Pingora's header values are slices of the connection's read buffer
/// (several KiB): an exchange waiting in the tap queue with them kept that
/// whole buffer alive, twice (measured: about 8.5 KiB an exchange, 85 MiB
/// of RSS with the default 10,000 waiting).
fn detached(headers: &Headers) -> Headers {
    let all: Vec<_> = headers.iter().collect();
    let mut buf = bytes::BytesMut::with_capacity(all.iter().map(|(_, v)| v.len()).sum());
    for (_, value) in &all {
        buf.extend_from_slice(value.as_bytes());
    }
    let buf = buf.freeze();
    let mut out = Headers::with_capacity(all.len());
    let mut at = 0;
    for (name, value) in all {
        let end = at + value.len();
        let mut copy = http::HeaderValue::from_maybe_shared(buf.slice(at..end))
            .unwrap_or_else(|_| value.clone());
        copy.set_sensitive(value.is_sensitive());
        out.append(name.clone(), copy);
        at = end;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detached_headers_are_the_same_headers_in_the_same_order() {
        let read = Bytes::from_static(b"text/csv; charset=utf-8 a=1 b=2 secret");
        let slice = |from: usize, to: usize| {
            http::HeaderValue::from_maybe_shared(read.slice(from..to)).unwrap()
        };
        let mut headers = Headers::new();
        headers.append("content-type", slice(0, 23));
        headers.append("cookie", slice(24, 27));
        headers.append("x-empty", http::HeaderValue::from_static(""));
        headers.append("cookie", slice(28, 31));
        let mut secret = slice(32, 38);
        secret.set_sensitive(true);
        headers.append("authorization", secret);
        let copy = detached(&headers);
        let pairs = |h: &Headers| -> Vec<(String, Vec<u8>, bool)> {
            h.iter()
                .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec(), v.is_sensitive()))
                .collect()
        };
        assert_eq!(pairs(&copy), pairs(&headers));
        assert_eq!(copy.get_all("cookie").iter().count(), 2);
    }
}
