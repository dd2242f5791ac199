//! The deliver stage: each webhook has a scheduler that starts attempts
//! for its due deliveries, at most `concurrency_per_webhook` at once, and
//! writes every outcome back (the attempt and the new state in one
//! write): delivered, retried later (the webhook's policy, with jitter),
//! dead, or the webhook disabled (410). A delivery is started only once
//! it is committed to the outbox: fresh ones come from the outbox's
//! in-memory hand-off ([`crate::store::handoff`]), a backlog (a receiver
//! that was away, a restart) and retries from the outbox on disk, a page
//! at a time, oldest first.
//! A webhook failing continuously past `pause_after` is paused and
//! probed with one delivery every `probe_interval` until it answers.
//!
//! A crash or restart loses nothing: what was not marked delivered is
//! still pending and is sent again (at least once; receivers dedup by
//! UUID).
//!
//! Every attempt goes through the SSRF guard ([`guard`]): a webhook URL
//! whose host is or resolves to a private address is refused like a
//! connection that failed, unless `delivery.allow_private_networks`
//! covers it.

pub mod amqp;
pub mod destination;
pub mod exchange;
pub mod formats;
pub mod guard;
pub mod jetstream;
pub mod limit;
pub mod nats;
pub mod redis_stream;
pub mod retry;
pub mod signing;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pingora::server::ShutdownWatch;
use tokio::sync::{mpsc, watch};
use tracing::Instrument as _;

use crate::app::Shared;
use crate::rules::model::{Ordering, Webhook};
use crate::store::handoff::Taken;
use crate::store::sqlite::{
    now_ms, AttemptRecord, Due, State, Store, StoreError, WebhookChange, WebhookState,
};
use crate::store::StoredEvent;
use formats::Outgoing;
use guard::{Guard, GuardedResolver, Refused};
use retry::{parse_retry_after, Attempt};

/// Bytes of a response body read at most (then the connection is dropped).
const RESPONSE_BODY_LIMIT: usize = 64 * 1024;
/// The longest a scheduler sleeps before looking at the outbox again.
const MAX_IDLE: Duration = Duration::from_secs(1);
/// How often the outbox gauges are refreshed at most.
const GAUGES_EVERY: Duration = Duration::from_secs(2);
/// Due deliveries read from the outbox at once.
const PAGE: usize = 256;
/// How often a scheduler looks at the outbox at least, whatever the
/// hand-off says.
const OUTBOX_LOOK: Duration = Duration::from_secs(5);

/// Whether a webhook is failing, as its scheduler last wrote it. A
/// success clears the stored failure only when there is one, so a
/// healthy webhook costs no state write per delivery. The lock orders
/// the flag and the writes it stands for.
struct Failing(std::sync::Mutex<bool>);

impl Failing {
    fn succeeded(&self, write: impl FnOnce() -> Result<(), StoreError>) {
        let mut failing = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if *failing && write().is_ok() {
            *failing = false;
        }
    }

    fn failed(&self, write: impl FnOnce() -> Result<(), StoreError>) {
        let mut failing = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *failing = true;
        let _ = write();
    }
}

/// What one attempt came to, as the scheduler records it.
pub(crate) struct Outcome {
    pub(crate) attempt: Attempt,
    pub(crate) duration: Duration,
    /// What was sent and what came back (`None`: nothing was sent).
    pub(crate) exchange: Option<exchange::Exchange>,
    pub(crate) parts: usize,
}

/// Runs the schedulers, the outbox gauges and the retention sweep.
pub struct Dispatcher {
    shared: Arc<Shared>,
    store: Arc<Store>,
    client: reqwest::Client,
    guard: Arc<Guard>,
    limits: limit::Limits,
    /// Destinations beyond HTTP: NATS, RabbitMQ, Redis Streams.
    destinations: destination::Destinations,
}

impl Dispatcher {
    pub fn new(shared: Arc<Shared>) -> anyhow::Result<Self> {
        let guard = Arc::new(Guard::new(
            shared.config.delivery.allow_private_networks.clone(),
        ));
        // Redirects are not followed (a 3xx is the attempt's answer) and
        // no proxy is used: the guard vets the address connected to, which
        // its resolver hands to the connector.
        let mut client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .dns_resolver(Arc::new(GuardedResolver::new(guard.clone())))
            .user_agent(concat!("taphook/", env!("CARGO_PKG_VERSION")))
            .pool_idle_timeout(Duration::from_secs(60));
        let ca = match &shared.config.delivery.ca {
            Some(path) => Some(destination::Ca::read(path)?),
            None => None,
        };
        for cert in ca.iter().flat_map(|ca| ca.der()) {
            client = client.add_root_certificate(reqwest::Certificate::from_der(cert)?);
        }
        Ok(Self {
            store: shared.store.clone(),
            client: client.build()?,
            shared,
            guard,
            limits: limit::Limits::default(),
            destinations: destination::Destinations::new(ca),
        })
    }

    fn webhook(&self, key: &str) -> Option<Arc<Webhook>> {
        self.shared.rules.load().webhook(key).cloned()
    }

    /// Until `shutdown` turns true: one scheduler per webhook of the
    /// current rules. Then in-flight deliveries finish, up to `drain`
    /// (read when the stop comes: shorter after SIGINT).
    pub async fn supervise(
        self: Arc<Self>,
        mut shutdown: ShutdownWatch,
        drain: impl Fn() -> Duration,
    ) {
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut schedulers: HashMap<String, tokio::task::JoinHandle<()>> = HashMap::new();
        let mut last_sweep = Instant::now() - Duration::from_secs(3600);
        let mut next_gauges = Instant::now();
        loop {
            schedulers.retain(|_, h| !h.is_finished());
            for w in self.shared.rules.load().webhooks.iter() {
                if !schedulers.contains_key(&w.key) {
                    let this = self.clone();
                    let (key, stop) = (w.key.clone(), stop_rx.clone());
                    schedulers.insert(
                        w.key.clone(),
                        tokio::spawn(async move { this.schedule(key, stop).await }),
                    );
                }
            }
            // Counting a large outbox is not free (a million pending rows
            // take ~0.1 s): every 2 s, or less often, so that counting
            // never takes more than 2% of a core.
            if Instant::now() >= next_gauges {
                let started = Instant::now();
                self.refresh_gauges();
                next_gauges = Instant::now() + (started.elapsed() * 50).max(GAUGES_EVERY);
            }
            if last_sweep.elapsed() > Duration::from_secs(60) {
                last_sweep = Instant::now();
                let cutoff = now_ms() - self.shared.config.events_retention.as_millis() as i64;
                if let Err(e) = self.store.sweep(cutoff) {
                    tracing::error!(error = %e, "retention sweep failed");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = shutdown.changed() => break,
            }
        }
        // Finish what is in flight, up to the deadline; the rest stays pending.
        let _ = stop_tx.send(true);
        join_until(schedulers.into_values(), drain()).await;
        self.refresh_gauges();
    }

    /// Sets the outbox gauges from the store's counts.
    fn refresh_gauges(&self) {
        let keys: Vec<String> = self.shared.rules.load().webhook_keys();
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        let Ok(counts) = self.store.counts(&keys) else {
            return;
        };
        self.set_outbox_gauges(&counts);
        let metrics = &self.shared.metrics;
        let rules = self.shared.rules.load();
        for w in rules.webhooks.iter() {
            if let Ok(state) = self.store.webhook_state(&w.key) {
                metrics
                    .webhook_disabled
                    .with_label_values(&[&w.key])
                    .set(state.disabled.is_some() as i64);
                metrics
                    .webhook_paused
                    .with_label_values(&[&w.key])
                    .set(state.paused as i64);
            }
        }
    }

    /// One webhook's scheduler. Due deliveries are read a page at a time
    /// (`PAGE`) and started as slots free up. A slot is free again as
    /// soon as its attempt has an answer; the delivery's id stays busy
    /// until its outcome is committed, so it is never picked up again
    /// while its new state is on its way to disk (and an fsync never
    /// holds a slot).
    async fn schedule(self: Arc<Self>, key: String, mut stop: watch::Receiver<bool>) {
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Done>();
        let mut lane = Lane::new();
        self.store.handoff.open(&key);
        let _close = CloseLane(&self.store, &key);
        let mut next_probe = 0i64;
        let mut stopping = false;
        let mut states = StateCache::default();
        let failing = {
            let (state, _) = states.get(&self.store, &key);
            Arc::new(Failing(std::sync::Mutex::new(
                state.failing_since.is_some() || state.paused,
            )))
        };
        loop {
            let webhook = self.webhook(&key);
            if webhook.is_none() {
                lane.forget_ready();
            }
            if (webhook.is_none() || stopping) && lane.idle() {
                return;
            }
            // Register for the store's wake-up before looking, so no commit is missed.
            let committed = self.store.committed.clone();
            let notified = committed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (state, changed) = states.get(&self.store, &key);
            if changed {
                // A webhook was renamed, deleted or changed state: what was
                // read ahead may have changed hands; read it again.
                lane.forget_ready();
            }
            let now = now_ms();
            let mut idle = false;
            // Held back by the rate limit: until the next start is free.
            let mut limited = None;
            if let Some(webhook) = webhook.filter(|_| !stopping && state.disabled.is_none()) {
                let concurrency = self.shared.config.delivery.concurrency_per_webhook;
                let mut free = concurrency.saturating_sub(lane.attempting);
                if state.paused {
                    lane.forget_ready();
                    free = usize::from(lane.attempting == 0 && now >= next_probe);
                }
                while free > 0 {
                    let Some(d) = self.next_due(&key, now, &mut lane, state.paused) else {
                        idle = true;
                        break;
                    };
                    // `ordering: session`: the session it goes in order in.
                    let ordered = (webhook.ordering == Ordering::Session)
                        .then(|| d.event.session_key())
                        .flatten();
                    if let Some(session) = &ordered {
                        if self.out_of_order(&key, d.id, session, &mut lane) {
                            continue;
                        }
                    }
                    if let Err(wait) = self.rate_limited(&webhook, &d, &mut lane) {
                        lane.ready.push_front(d);
                        limited = Some(wait);
                        break;
                    }
                    if let Some(session) = ordered {
                        lane.order.started(d.id, session);
                    }
                    if state.paused {
                        next_probe =
                            now + self.shared.config.delivery.probe_interval.as_millis() as i64;
                    }
                    free -= 1;
                    lane.attempting += 1;
                    let (this, webhook, tx) = (self.clone(), webhook.clone(), done_tx.clone());
                    let (probe, failing) = (state.paused, failing.clone());
                    let span = delivery_span(&key, &d);
                    tokio::spawn(
                        async move {
                            let outcome = this.attempt(&webhook, &d).await;
                            let recorded = this.record(&webhook, &d, outcome, probe, &failing);
                            let _ = tx.send(Done::Answered);
                            let mut retry_at = None;
                            if let Some(recorded) = recorded {
                                retry_at = recorded.retry_at;
                                this.settled(&webhook.key, recorded).await;
                            }
                            let _ = tx.send(Done::Settled { id: d.id, retry_at });
                        }
                        .instrument(span),
                    );
                }
            }
            let wait = match limited {
                Some(wait) => wait.min(MAX_IDLE),
                None if idle => self.idle_wait(&state, next_probe, &lane),
                None => MAX_IDLE,
            };
            tokio::select! {
                Some(done) = done_rx.recv() => lane.finished(done),
                _ = &mut notified => {}
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed(), if !stopping => {
                    stopping = true;
                    lane.forget_ready();
                }
            }
            // Take every answer already in, before looking again.
            while let Ok(done) = done_rx.try_recv() {
                lane.finished(done);
            }
        }
    }

    /// `ordering: session`: whether `d` must wait for an earlier delivery
    /// of its session to this webhook (one being attempted here, or still
    /// pending in the outbox: waiting for a retry, or not read yet). A
    /// delivery that waits is held (busy, not read again) until that
    /// session's delivery here settles; then the outbox is read again.
    fn out_of_order(&self, key: &str, id: i64, session: &str, lane: &mut Lane) -> bool {
        if lane.order.is_open(session) {
            lane.order.hold(id, session);
            return true;
        }
        match self.store.earlier_pending(key, session, id) {
            Ok(false) => false,
            Ok(true) => {
                lane.order.hold(id, session);
                true
            }
            Err(e) => {
                tracing::error!(webhook = %key, error = %e, "cannot check the session's order; trying again");
                lane.busy.remove(&id);
                lane.read_at = now_ms() + MAX_IDLE.as_millis() as i64;
                true
            }
        }
    }

    /// Takes a start from the webhook's rate limit for `d`, or says how
    /// long until one is free (counted once per delivery held back).
    fn rate_limited(&self, webhook: &Webhook, d: &Due, lane: &mut Lane) -> Result<(), Duration> {
        let metrics = &self.shared.metrics;
        let Some(limit) = limit::limit_of(webhook, self.shared.config.delivery.rate_limit) else {
            return Ok(());
        };
        let wait_gauge = metrics
            .webhook_rate_limit_wait
            .with_label_values(&[&webhook.key]);
        match self.limits.take(&webhook.key, limit) {
            Ok(()) => {
                wait_gauge.set(0.0);
                Ok(())
            }
            Err(wait) => {
                if lane.limited != Some(d.id) {
                    lane.limited = Some(d.id);
                    metrics
                        .webhook_rate_limited
                        .with_label_values(&[&webhook.key])
                        .inc();
                }
                wait_gauge.set(wait.as_secs_f64());
                Err(wait)
            }
        }
    }

    /// The next delivery of `key` to start: from what was read ahead, else
    /// from the hand-off (deliveries just committed, in memory) and, when
    /// the outbox holds some that were not handed over or a retry falls
    /// due, from the outbox (one at a time for a probe).
    fn next_due(&self, key: &str, now: i64, lane: &mut Lane, probe: bool) -> Option<Due> {
        if lane.ready.is_empty() {
            self.refill(key, now, lane, if probe { 1 } else { PAGE });
        }
        lane.ready.pop_front()
    }

    fn refill(&self, key: &str, now: i64, lane: &mut Lane, limit: usize) {
        let mut fresh = Vec::new();
        let taken = self.store.handoff.take(key, &mut fresh);
        // Busy before the outbox is read (it holds them too), started
        // after what the outbox gives: older ids first.
        lane.busy.extend(fresh.iter().map(|d| d.id));
        self.read_backlog(key, now, limit, lane, taken);
        lane.ready.extend(fresh);
    }

    /// Reads the outbox when the hand-off says so or a retry is due; once
    /// a backlog is read to its end, reopens the hand-off.
    fn read_backlog(&self, key: &str, now: i64, limit: usize, lane: &mut Lane, taken: Taken) {
        let handoff = &self.store.handoff;
        if !taken.overflowed && now < lane.read_at {
            return;
        }
        let Some(read) = self.read_outbox(key, now, limit, lane, taken.upto) else {
            return;
        };
        if read >= limit || !taken.overflowed {
            // More backlog than a page (the lane stays overflowed), or a
            // look for due retries only.
            return;
        }
        // Caught up with the backlog: the writer hands over again; what it
        // left on disk in the meantime is read now.
        let upto = handoff.reopen(key);
        if upto > taken.upto
            && self
                .read_outbox(key, now, limit, lane, upto)
                .is_none_or(|read| read >= limit)
        {
            handoff.overflow(key);
        }
    }

    /// Reads up to `limit` due deliveries of `key` with ids up to `upto`
    /// into `lane`, and when the outbox must be looked at next; returns
    /// how many were read (`None`: the read failed, tried again soon).
    fn read_outbox(
        &self,
        key: &str,
        now: i64,
        limit: usize,
        lane: &mut Lane,
        upto: i64,
    ) -> Option<usize> {
        let due = match self.store.due_upto(key, now, limit, &lane.busy, upto) {
            Ok(due) => due,
            Err(e) => {
                tracing::error!(webhook = %key, error = %e, "cannot read the outbox");
                lane.read_at = now + MAX_IDLE.as_millis() as i64;
                return None;
            }
        };
        let read = due.len();
        lane.take(due);
        // The next look: when the earliest delivery left on disk is due,
        // and every few seconds whatever happens.
        let next = match self.store.next_due_at(key, &lane.busy, upto) {
            Ok(Some(at)) => at.max(now + 1),
            _ => i64::MAX,
        };
        lane.read_at = next.min(now + OUTBOX_LOOK.as_millis() as i64);
        Some(read)
    }

    /// How long to sleep when nothing else wakes the scheduler.
    fn idle_wait(&self, state: &WebhookState, next_probe: i64, lane: &Lane) -> Duration {
        let concurrency = self.shared.config.delivery.concurrency_per_webhook;
        if state.disabled.is_some() || lane.attempting >= concurrency {
            return MAX_IDLE;
        }
        let next = if state.paused {
            lane.read_at.max(next_probe)
        } else {
            lane.read_at
        };
        Duration::from_millis(next.saturating_sub(now_ms()).max(1) as u64).min(MAX_IDLE)
    }

    /// `taphook_outbox_pending` and `taphook_outbox_dead` of every webhook
    /// from (webhook, state, count) rows.
    fn set_outbox_gauges(&self, counts: &[(String, String, i64)]) {
        let metrics = &self.shared.metrics;
        for w in self.shared.rules.load().webhooks.iter() {
            let count = |state: &str| {
                counts
                    .iter()
                    .find(|(k, s, _)| *k == w.key && s == state)
                    .map_or(0, |c| c.2)
            };
            metrics
                .outbox_pending
                .with_label_values(&[&w.key])
                .set(count("pending"));
            metrics
                .outbox_dead
                .with_label_values(&[&w.key])
                .set(count("dead"));
        }
    }

    /// Sends the delivery's current part once.
    pub(crate) async fn attempt(&self, webhook: &Webhook, due: &Due) -> Outcome {
        let mut requests = formats::requests(webhook, &due.event.derived());
        if due.event.test {
            for r in &mut requests {
                r.headers.push((
                    http::header::HeaderName::from_static("taphook-test"),
                    http::header::HeaderValue::from_static("1"),
                ));
            }
        }
        let Some(request) = requests.get(due.part as usize) else {
            // Nothing left to send (the format changed): done.
            return Outcome {
                attempt: Attempt::Status {
                    status: 200,
                    retry_after: None,
                },
                duration: Duration::ZERO,
                exchange: None,
                parts: requests.len(),
            };
        };
        // The attempt's span, a child of the event's (traces on): the
        // receiver gets its `traceparent`.
        let traced = due.event.trace.as_deref().and_then(|parent| {
            crate::telemetry::Attempt::start(parent, &webhook.key, due.id, due.attempts + 1)
        });
        let traceparent = traced.as_ref().and_then(crate::telemetry::Attempt::header);
        let started = Instant::now();
        let (attempt, exchange) = self
            .send(webhook, request, due.part, traceparent, &due.event)
            .await;
        let duration = started.elapsed();
        if let Some(span) = traced {
            let status = match &attempt {
                Attempt::Status { status, .. } => Some(*status),
                _ => None,
            };
            span.finish(status, attempt.class(), attempt.succeeded());
        }
        let metrics = &self.shared.metrics;
        metrics
            .delivery_attempts
            .with_label_values(&[&webhook.key, attempt.class()])
            .inc();
        metrics
            .activity
            .attempt(&webhook.key, attempt.succeeded(), now_ms());
        metrics
            .delivery_duration
            .with_label_values(&[&webhook.key])
            .observe(duration.as_secs_f64());
        self.shared
            .history
            .attempt(&webhook.key, attempt.class(), duration, now_ms());
        Outcome {
            attempt,
            duration,
            exchange: Some(exchange),
            parts: requests.len(),
        }
    }

    async fn send(
        &self,
        webhook: &Webhook,
        request: &Outgoing,
        part: u32,
        traceparent: Option<(http::HeaderName, http::HeaderValue)>,
        event: &StoredEvent,
    ) -> (Attempt, exchange::Exchange) {
        let started = Instant::now();
        let mut shown = exchange::Exchange {
            request: exchange::Sent {
                method: "POST".into(),
                url: crate::secret::redact_url(&webhook.url),
                body_bytes: request.body.len(),
                part,
                ..Default::default()
            },
            response: Default::default(),
        };
        let failed = |shown: &mut exchange::Exchange, kind: &str, message: String| {
            shown.response.total_ms = started.elapsed().as_millis() as u64;
            shown.response.error = Some(exchange::Failure {
                kind: kind.into(),
                message,
            });
        };
        // A host written as an address never reaches the resolver.
        if let Err(refused) = self.guard.check_url(&webhook.url) {
            let attempt = self.refused(webhook, &refused);
            failed(&mut shown, "ssrf", attempt.label());
            return (attempt, shown);
        }
        let timeout = webhook
            .timeout
            .unwrap_or(self.shared.config.delivery.timeout);
        if let Some(target) = destination::Destinations::target(&webhook.url) {
            return self
                .publish(webhook, request, traceparent, event, target, timeout, shown)
                .await;
        }
        let mut builder = self
            .client
            .post(webhook.url.clone())
            .timeout(timeout)
            .body(request.body.clone());
        for (name, value) in &request.headers {
            builder = builder.header(name, value);
        }
        if !webhook.signing.is_empty() {
            // Signed at each attempt, so the timestamp is the attempt's.
            for (name, value) in signing::headers(&request.id, &request.body, &webhook.signing) {
                builder = builder.header(name, value);
            }
        }
        if let Some((name, value)) = traceparent {
            builder = builder.header(name, value);
        }
        let built = match builder.build() {
            Ok(built) => built,
            Err(e) => {
                let attempt = Attempt::Error(error_chain(&e));
                failed(&mut shown, "other", attempt.label());
                return (attempt, shown);
            }
        };
        shown.request.headers = exchange::shown_headers(built.headers());
        match self.client.execute(built).await {
            Ok(mut response) => {
                shown.response.first_byte_ms = Some(started.elapsed().as_millis() as u64);
                let status = response.status().as_u16();
                let retry_after = response
                    .headers()
                    .get(http::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(parse_retry_after);
                shown.response.status = Some(status);
                shown.response.headers = exchange::shown_headers(response.headers());
                let (body, truncated) = read_excerpt(&mut response).await;
                shown.response.body = Some(body);
                shown.response.body_truncated = truncated;
                shown.response.total_ms = started.elapsed().as_millis() as u64;
                let attempt = Attempt::Status {
                    status,
                    retry_after,
                };
                (attempt, shown)
            }
            Err(e) => {
                let (attempt, kind) = match guard::refusal(&e) {
                    Some(refused) => (self.refused(webhook, refused), "ssrf"),
                    None if e.is_timeout() => (Attempt::Timeout, "timeout"),
                    None => {
                        let chain = error_chain(&e);
                        let kind = exchange::failure_kind(&e, &chain);
                        (Attempt::Error(chain), kind)
                    }
                };
                let message = match &attempt {
                    Attempt::Timeout => {
                        format!("no answer within {}", humantime::format_duration(timeout))
                    }
                    other => other.label(),
                };
                failed(&mut shown, kind, message);
                (attempt, shown)
            }
        }
    }

    /// One attempt to a destination that is not HTTP (NATS, RabbitMQ,
    /// Redis Streams): the body to its subject, routing key or stream
    /// (`target`, placeholders not yet filled), the headers (the format's,
    /// the signature, `traceparent`) as the message's.
    #[allow(clippy::too_many_arguments)]
    async fn publish(
        &self,
        webhook: &Webhook,
        request: &Outgoing,
        traceparent: Option<(http::HeaderName, http::HeaderValue)>,
        event: &StoredEvent,
        target: String,
        timeout: Duration,
        mut shown: exchange::Exchange,
    ) -> (Attempt, exchange::Exchange) {
        let started = Instant::now();
        let mut headers = request.headers.clone();
        if !webhook.signing.is_empty() {
            headers.extend(signing::headers(
                &request.id,
                &request.body,
                &webhook.signing,
            ));
        }
        headers.extend(traceparent);
        let template_key = match &event.event.template_key {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Null => "none".into(),
            other => other.to_string(),
        };
        let target = destination::fill(
            &target,
            &webhook.key,
            &event.event.event_type,
            &template_key,
        );
        let mut shown_headers = http::HeaderMap::new();
        for (name, value) in &headers {
            shown_headers.append(name.clone(), value.clone());
        }
        shown.request.method = destination::Kind::of(&webhook.url).name().to_uppercase();
        shown.request.headers = exchange::shown_headers(&shown_headers);
        let message = destination::Message {
            target,
            id: &request.id,
            headers: &headers,
            body: request.body.clone(),
        };
        let attempt = self
            .destinations
            .publish(&self.guard, webhook, message, timeout)
            .await;
        shown.response.total_ms = started.elapsed().as_millis() as u64;
        match &attempt {
            Attempt::Status { status, .. } => shown.response.status = Some(*status),
            other => {
                shown.response.error = Some(exchange::Failure {
                    kind: if matches!(other, Attempt::Timeout) {
                        "timeout"
                    } else {
                        "other"
                    }
                    .into(),
                    message: other.label(),
                })
            }
        }
        (attempt, shown)
    }

    /// Counts and logs a refusal, and makes it the attempt's error. The
    /// log names the host only: the URL's userinfo and query may hold
    /// secrets.
    fn refused(&self, webhook: &Webhook, refused: &Refused) -> Attempt {
        tracing::warn!(
            webhook = %webhook.key,
            host = %webhook.url.host_str().unwrap_or_default(),
            reason = refused.reason(),
            "delivery refused by the SSRF guard: {refused}"
        );
        self.shared
            .metrics
            .delivery_refused
            .with_label_values(&[&webhook.key, refused.reason()])
            .inc();
        Attempt::Error(format!("refused by the SSRF guard: {refused}"))
    }

    /// Waits for an outcome's commit, then counts a delivery that ended
    /// (delivered or dead): the metric never runs ahead of what the API
    /// shows.
    async fn settled(&self, webhook: &str, recorded: Recorded) {
        if recorded.committed.await.is_err() {
            tracing::error!("outcome not committed");
            return;
        }
        if let Some(end) = recorded.ended {
            self.shared
                .metrics
                .deliveries
                .with_label_values(&[webhook, end])
                .inc();
        }
    }

    /// Writes an attempt's outcome back to the outbox: the attempt and
    /// the delivery's new state in one write. A failed probe of a paused
    /// webhook does not spend the delivery's retries. Returns what
    /// answers once the write is committed, and when the delivery is due
    /// again if it stays pending.
    fn record(
        &self,
        webhook: &Webhook,
        due: &Due,
        outcome: Outcome,
        probe: bool,
        failing: &Failing,
    ) -> Option<Recorded> {
        let key = webhook.key.as_str();
        let label = outcome.attempt.label();
        let (store, metrics) = (&self.store, &self.shared.metrics);
        let now = now_ms();
        // (state, attempts, part, next attempt at)
        let (state, attempts, next_part, next_at) = if outcome.attempt.succeeded() {
            failing.succeeded(|| store.webhook_change(key, WebhookChange::Success));
            if (due.part as usize) + 1 < outcome.parts {
                (State::Pending, 0, due.part + 1, now)
            } else {
                tracing::debug!(status = %label, "delivered");
                let latency = now as f64 / 1000.0 - due.event.event.created_at;
                metrics.event_delivery_latency.observe(latency.max(0.0));
                (State::Delivered, due.attempts + 1, due.part, now)
            }
        } else if matches!(outcome.attempt, Attempt::Status { status: 410, .. }) {
            // Gone: the receiver asks us to stop. Deliveries wait.
            tracing::warn!(webhook = %key, "receiver answered 410 Gone; webhook disabled until enabled again");
            metrics.webhook_disabled.with_label_values(&[key]).set(1);
            let reason = format!(
                "410 Gone at {}",
                humantime::format_rfc3339_seconds(std::time::SystemTime::now())
            );
            let _ = store.webhook_change(key, WebhookChange::Disable(reason));
            (State::Pending, due.attempts, due.part, now)
        } else {
            let delivery = &self.shared.config.delivery;
            failing.failed(|| {
                store.webhook_change(
                    key,
                    WebhookChange::Failure {
                        now,
                        pause_after: delivery.pause_after.as_millis() as i64,
                    },
                )
            });
            if probe {
                let next = now + delivery.probe_interval.as_millis() as i64;
                (State::Pending, due.attempts, due.part, next)
            } else {
                match webhook.retry.next_delay(&outcome.attempt, due.attempts + 1) {
                    Some(delay) => {
                        let jitter = fastrand::u64(0..=(delay.as_millis() as u64 / 10));
                        let next = now + delay.as_millis() as i64 + jitter as i64;
                        tracing::debug!(attempt = ?outcome.attempt, ?delay, "attempt failed; retrying");
                        (State::Pending, due.attempts + 1, due.part, next)
                    }
                    None => {
                        tracing::warn!(attempt = ?outcome.attempt, "delivery failed; dead letter");
                        (State::Dead, due.attempts + 1, due.part, now)
                    }
                }
            }
        };
        let record = AttemptRecord {
            id: due.id,
            part: due.part,
            outcome: label,
            duration: outcome.duration,
            response: outcome
                .exchange
                .as_ref()
                .and_then(|e| e.response.body.clone()),
            detail: outcome.exchange.as_ref().map(exchange::Exchange::to_json),
            state,
            attempts,
            next_part,
            next_at,
        };
        let retry_at = (state == State::Pending).then_some(next_at);
        let ended = match state {
            State::Delivered => Some("delivered"),
            State::Dead => Some("dead"),
            _ => None,
        };
        match store.record_outcome(record) {
            Ok(committed) => Some(Recorded {
                committed,
                retry_at,
                ended,
            }),
            Err(e) => {
                tracing::error!(error = %e, "cannot record the delivery's outcome; it will be sent again");
                None
            }
        }
    }
}

/// An outcome handed to the writer.
struct Recorded {
    /// Answers once the outcome is committed.
    committed: tokio::sync::oneshot::Receiver<()>,
    /// When the delivery is due again, if it stays pending.
    retry_at: Option<i64>,
    /// The `outcome` label of a delivery that ended with this attempt.
    ended: Option<&'static str>,
}

/// What a delivery task tells its scheduler.
enum Done {
    /// The attempt has its answer: its slot is free.
    Answered,
    /// Its outcome is committed: the delivery may be read again, from
    /// the outbox at `retry_at` if it is to be tried again then.
    Settled { id: i64, retry_at: Option<i64> },
}

/// A scheduler's deliveries: read ahead, being attempted, or waiting for
/// their outcome's commit.
struct Lane {
    /// Read from the outbox or taken from the hand-off, not started yet.
    ready: VecDeque<Due>,
    /// Attempts without an answer yet (the slots in use).
    attempting: usize,
    /// Every id read ahead, attempting or not yet settled: never read
    /// again until settled.
    busy: HashSet<i64>,
    /// When the outbox must be looked at next (ms): a retry falls due.
    read_at: i64,
    /// `ordering: session`: which sessions have a delivery on its way.
    order: SessionOrder,
    /// The delivery last held back by the rate limit.
    limited: Option<i64>,
}

impl Lane {
    fn new() -> Self {
        Self {
            ready: VecDeque::new(),
            attempting: 0,
            busy: HashSet::new(),
            read_at: 0,
            order: SessionOrder::default(),
            limited: None,
        }
    }

    fn take(&mut self, due: Vec<Due>) {
        self.busy.extend(due.iter().map(|d| d.id));
        self.ready.extend(due);
    }

    fn finished(&mut self, done: Done) {
        match done {
            Done::Answered => self.attempting = self.attempting.saturating_sub(1),
            Done::Settled { id, retry_at } => {
                self.busy.remove(&id);
                if let Some(at) = retry_at {
                    self.read_at = self.read_at.min(at);
                }
                let released = self.order.settled(id);
                if !released.is_empty() {
                    for id in released {
                        self.busy.remove(&id);
                    }
                    // What waited for it is read again now.
                    self.read_at = 0;
                }
            }
        }
    }

    /// Drops what was read ahead or held: it stays pending in the outbox,
    /// which is read again next time.
    fn forget_ready(&mut self) {
        for d in self.ready.drain(..) {
            self.busy.remove(&d.id);
        }
        for id in self.order.release_all() {
            self.busy.remove(&id);
        }
        self.read_at = 0;
    }

    /// Nothing started is still on its way.
    fn idle(&self) -> bool {
        self.attempting == 0 && self.busy.len() == self.ready.len() + self.order.held()
    }
}

/// `ordering: session` in one scheduler: the deliveries started and not
/// settled yet, by session, and those held until their session's is.
/// Held deliveries are only ids: they stay in the outbox, and are read
/// from it again once released.
#[derive(Default)]
struct SessionOrder {
    started: HashMap<i64, String>,
    open: HashSet<String>,
    held: HashMap<String, Vec<i64>>,
}

impl SessionOrder {
    fn is_open(&self, session: &str) -> bool {
        self.open.contains(session)
    }

    fn started(&mut self, id: i64, session: String) {
        self.open.insert(session.clone());
        self.started.insert(id, session);
    }

    fn hold(&mut self, id: i64, session: &str) {
        self.held.entry(session.to_string()).or_default().push(id);
    }

    /// Delivery `id` settled: its session is free; what it held goes.
    fn settled(&mut self, id: i64) -> Vec<i64> {
        let Some(session) = self.started.remove(&id) else {
            return Vec::new();
        };
        self.open.remove(&session);
        self.held.remove(&session).unwrap_or_default()
    }

    fn release_all(&mut self) -> Vec<i64> {
        self.held.drain().flat_map(|(_, ids)| ids).collect()
    }

    fn held(&self) -> usize {
        self.held.values().map(Vec::len).sum()
    }
}

/// Closes a scheduler's hand-off lane when the scheduler ends.
struct CloseLane<'a>(&'a Store, &'a str);

impl Drop for CloseLane<'_> {
    fn drop(&mut self) {
        self.0.handoff.close(self.1);
    }
}

/// A webhook's delivery state, read again only after a commit changed
/// some webhook's state (the store's `webhook_epoch`).
#[derive(Default)]
struct StateCache {
    seen: Option<(u64, WebhookState)>,
}

impl StateCache {
    /// The state, and whether some webhook's state changed since the
    /// last call.
    fn get(&mut self, store: &Store, key: &str) -> (WebhookState, bool) {
        let epoch = store
            .webhook_epoch
            .load(std::sync::atomic::Ordering::Acquire);
        match &self.seen {
            Some((at, state)) if *at == epoch => (state.clone(), false),
            _ => {
                let state = store.webhook_state(key).unwrap_or_default();
                let changed = self.seen.is_some();
                self.seen = Some((epoch, state.clone()));
                (state, changed)
            }
        }
    }
}

/// Waits for `tasks` to end, for at most `limit` in all.
async fn join_until(tasks: impl IntoIterator<Item = tokio::task::JoinHandle<()>>, limit: Duration) {
    let deadline = tokio::time::sleep(limit);
    tokio::pin!(deadline);
    for task in tasks {
        tokio::select! {
            _ = task => {}
            _ = &mut deadline => break,
        }
    }
}

/// The context of every log line about one delivery: the webhook, the
/// delivery, its event's UUID and the id of the request the event came from.
fn delivery_span(webhook: &str, due: &Due) -> tracing::Span {
    tracing::info_span!(
        "delivery",
        webhook = %webhook,
        delivery = due.id,
        event = %due.event.event.uuid,
        request_id = due.event.request_id.as_deref(),
        trace_id = due.event.trace.as_deref().and_then(|t| t.get(3..35)),
    )
}

/// The start of a response body, for the attempt log, and whether there
/// was more; the rest (up to a limit) is read and dropped so the
/// connection can be reused.
async fn read_excerpt(response: &mut reqwest::Response) -> (String, bool) {
    let limit = exchange::BODY_EXCERPT;
    let mut kept = Vec::new();
    let mut read = 0;
    while let Ok(Some(chunk)) = response.chunk().await {
        read += chunk.len();
        if kept.len() < limit {
            kept.extend_from_slice(&chunk[..chunk.len().min(limit - kept.len())]);
        }
        if read > RESPONSE_BODY_LIMIT {
            break;
        }
    }
    (
        String::from_utf8_lossy(&kept).into_owned(),
        read > kept.len(),
    )
}

/// The error and its causes, without the URL (which may hold secrets).
fn error_chain(e: &reqwest::Error) -> String {
    let mut parts = Vec::new();
    let mut source: Option<&dyn std::error::Error> = std::error::Error::source(e);
    while let Some(s) = source {
        parts.push(s.to_string());
        source = s.source();
    }
    if parts.is_empty() {
        "request failed".to_string()
    } else {
        parts.join(": ")
    }
}
