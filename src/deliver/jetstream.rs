//! The deliver stage on the JetStream backend: every instance pulls from
//! one durable consumer per webhook, so each delivery goes to whichever
//! instance is free, and the consumer's `max_ack_pending` holds
//! `concurrency_per_webhook` across all of them. A delivery is acked
//! after a 2xx. A failed attempt with a retry left is parked on the
//! webhook's retry subject with its due time; the retry mover (any
//! instance) puts it back when due, so a delivery waiting out its backoff
//! holds no slot. Out of retries, it goes to the dead-letter stream, then
//! is terminated. An instance that dies holding a delivery loses nothing:
//! JetStream hands it to another after `ack_wait` (the webhook's timeout
//! plus a margin, so a slow attempt is never sent twice).

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{AckKind, Message};
use async_nats::HeaderMap;
use futures::StreamExt as _;
use pingora::server::ShutdownWatch;
use tokio::sync::{watch, Semaphore};
use tracing::Instrument as _;

use super::retry::Attempt;
use super::{delivery_span, Dispatcher};
use crate::rules::model::Ordering;
use crate::store::jetstream::{
    attempted, order_of, JetStream, WebhookHealth, ATTEMPTED, ATTEMPTS, DUE, LAST_STATUS, PART,
};
use crate::store::sqlite::{now_ms, Due};
use crate::store::StoredEvent;

/// Added to a webhook's timeout for `ack_wait`: an attempt's timeout
/// covers connecting and sending, the margin the rest.
const ACK_MARGIN: Duration = Duration::from_secs(5);

/// A failing webhook's shared state is written at most this often (ms)
/// while nothing else about it changes (and 4 times per `pause_after` at
/// least, so a run of failures is never taken for separate ones).
const FAILURE_WRITE_EVERY: i64 = 1000;

/// Failing already, its last failure recorded moments ago, and not due to
/// pause: a new failure need not be written (every instance's failures
/// would contend for the one key).
fn recorded_lately(health: &WebhookHealth, now: i64, pause_after: Duration) -> bool {
    let pause_after = pause_after.as_millis() as i64;
    let every = FAILURE_WRITE_EVERY.min(pause_after / 4);
    !health.paused
        && health.last_failure.is_some_and(|at| now - at < every)
        && health
            .failing_since
            .is_some_and(|since| now - since < pause_after)
}

/// How long a delivery handed back while its webhook is disabled or paused
/// waits before it is offered again (to whoever pulls then).
const HOLD: Duration = Duration::from_secs(1);

/// How often deliveries on the subjects of earlier builds are looked for.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// Until `shutdown`: one consumer loop per webhook of the current rules,
/// and the retry mover. Then in-flight deliveries finish, up to `drain`.
pub async fn supervise(
    dispatcher: Arc<Dispatcher>,
    js: Arc<JetStream>,
    mut shutdown: ShutdownWatch,
    drain: impl Fn() -> Duration,
) {
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut loops: std::collections::HashMap<String, tokio::task::JoinHandle<()>> =
        std::collections::HashMap::new();
    let mover = tokio::spawn(move_retries(js.clone(), stop_rx.clone()));
    let mut last_gauges = tokio::time::Instant::now() - Duration::from_secs(3600);
    let mut last_sweep = tokio::time::Instant::now();
    loop {
        // What an instance of an earlier build published, during a
        // rolling upgrade, moves to its session's subject.
        if last_sweep.elapsed() >= SWEEP_EVERY {
            last_sweep = tokio::time::Instant::now();
            if let Err(e) = js.move_to_session_subjects().await {
                tracing::warn!(error = %e, "cannot move deliveries to their session's subject");
            }
        }
        // Every instance reports the same counts: aggregate them with max.
        if last_gauges.elapsed() >= Duration::from_secs(2) {
            last_gauges = tokio::time::Instant::now();
            if let Ok(counts) = js.counts().await {
                dispatcher.set_outbox_gauges(&counts);
            }
            let metrics = &dispatcher.shared.metrics;
            for w in dispatcher.shared.rules.load().webhooks.iter() {
                let health = js.webhook_health(&w.key);
                metrics
                    .webhook_disabled
                    .with_label_values(&[&w.key])
                    .set(health.disabled.is_some() as i64);
                metrics
                    .webhook_paused
                    .with_label_values(&[&w.key])
                    .set(health.paused as i64);
            }
        }
        loops.retain(|_, h| !h.is_finished());
        for w in dispatcher.shared.rules.load().webhooks.iter() {
            if !loops.contains_key(&w.key) {
                let task = consume(
                    dispatcher.clone(),
                    js.clone(),
                    w.key.clone(),
                    stop_rx.clone(),
                );
                loops.insert(w.key.clone(), tokio::spawn(task));
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = shutdown.changed() => break,
        }
    }
    let _ = stop_tx.send(true);
    super::join_until(loops.into_values(), drain()).await;
    mover.abort();
}

/// One webhook's loop: (re)creates its consumer when the webhook's
/// settings change, pulls as many deliveries as it has free slots (none
/// while the webhook is disabled; one probe at a time, cluster-wide, while
/// it is paused), and attempts them.
async fn consume(
    d: Arc<Dispatcher>,
    js: Arc<JetStream>,
    key: String,
    mut stop: watch::Receiver<bool>,
) {
    let concurrency = d.shared.config.delivery.concurrency_per_webhook;
    let slots = Arc::new(Semaphore::new(concurrency));
    loop {
        let Some(webhook) = d.webhook(&key) else {
            return;
        };
        let timeout = webhook.timeout.unwrap_or(d.shared.config.delivery.timeout);
        let consumer = match js
            .webhook_consumer(&key, concurrency, timeout + ACK_MARGIN)
            .await
        {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(webhook = %key, error = %e, "cannot consume deliveries; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    _ = stop.changed() => return,
                }
            }
        };
        let mut failed_pulls = 0u32;
        loop {
            if *stop.borrow() {
                // In flight: let them finish (the caller bounds the wait).
                let _ = slots.acquire_many(concurrency as u32).await;
                return;
            }
            // New settings (timeout, concurrency) or gone: start over.
            if !d.webhook(&key).is_some_and(|w| Arc::ptr_eq(&w, &webhook)) {
                break;
            }
            let health = js.webhook_health(&key);
            let free = slots.available_permits();
            let (want, probe) = if health.disabled.is_some() {
                (0, false)
            } else if health.paused {
                let idle = free == concurrency;
                let probe = idle
                    && js
                        .claim_probe(&key, d.shared.config.delivery.probe_interval)
                        .await;
                (usize::from(probe), true)
            } else {
                (free, false)
            };
            if want == 0 && free == 0 && !probe && health.disabled.is_none() {
                // Every slot busy (a backlog): pull again as soon as one
                // is free, not after a nap (which capped a backlog's drain
                // at a few slots' worth every 200 ms).
                tokio::select! {
                    slot = slots.acquire() => drop(slot),
                    _ = stop.changed() => {}
                }
                continue;
            }
            if want == 0 {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    _ = stop.changed() => {}
                }
                continue;
            }
            let batch = consumer
                .fetch()
                .max_messages(want)
                .expires(Duration::from_millis(500))
                .messages()
                .await;
            let mut batch = match batch {
                Ok(b) => {
                    failed_pulls = 0;
                    b
                }
                Err(e) => {
                    failed_pulls += 1;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    if failed_pulls >= 10 {
                        // The consumer may be gone (NATS lost its state):
                        // create it again.
                        tracing::warn!(webhook = %key, error = %e, "cannot pull deliveries; creating the consumer again");
                        break;
                    }
                    continue;
                }
            };
            let limit = super::limit::limit_of(&webhook, d.shared.config.delivery.rate_limit);
            // Starts taken from the shared rate limit and not used yet.
            let mut allowance = 0u32;
            while let Some(next) = batch.next().await {
                let Ok(msg) = next else { continue };
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    return;
                };
                if let Some(limit) = limit.filter(|_| allowance == 0) {
                    let want = u32::try_from(want).unwrap_or(u32::MAX);
                    allowance = start_allowed(&d, &js, &key, limit, want, &msg, &mut stop).await;
                    if allowance == 0 {
                        // Stopping: back to the queue, for whoever pulls next.
                        let _ = msg.ack_with(AckKind::Nak(None)).await;
                        return;
                    }
                }
                allowance = allowance.saturating_sub(1);
                let (d, js, key) = (d.clone(), js.clone(), key.clone());
                tokio::spawn(async move {
                    deliver(&d, &js, &key, msg, probe).await;
                    drop(slot);
                });
            }
        }
    }
}

/// How often a delivery held back by the rate limit tells NATS it is
/// still being worked on (well within `ack_wait`).
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// Waits until the webhook's shared rate limit gives starts, `msg`'s
/// and up to `want - 1` more of the batch: how many (0: stopping first).
/// Waiting is not an attempt.
async fn start_allowed(
    d: &Dispatcher,
    js: &JetStream,
    key: &str,
    limit: crate::rules::model::RateLimit,
    want: u32,
    msg: &Message,
    stop: &mut watch::Receiver<bool>,
) -> u32 {
    let metrics = &d.shared.metrics;
    let wait_gauge = metrics.webhook_rate_limit_wait.with_label_values(&[key]);
    let mut counted = false;
    loop {
        let wait = match js.claim_starts(key, limit, want).await {
            Ok(Ok(granted)) => {
                wait_gauge.set(0.0);
                return granted;
            }
            Ok(Err(wait)) => {
                if !counted {
                    counted = true;
                    metrics.webhook_rate_limited.with_label_values(&[key]).inc();
                }
                wait_gauge.set(wait.as_secs_f64());
                wait.min(PROGRESS_EVERY)
            }
            Err(e) => {
                tracing::warn!(webhook = %key, error = %e, "cannot read the rate limit; waiting");
                Duration::from_millis(200)
            }
        };
        if counted {
            let _ = msg.ack_with(AckKind::Progress).await;
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return 0,
        }
    }
}

/// The message `due` moves on to (`kind`: retry, dead, held), with
/// `attempts` of its retry budget spent and `attempted` attempts made,
/// keeping its place `order` in its session.
fn moved(
    kind: &str,
    due: &Due,
    attempts: u32,
    attempted: u32,
    order: u64,
) -> (HeaderMap, bytes::Bytes) {
    let id = JetStream::move_id(kind, due.id as u64);
    let (mut headers, body) =
        JetStream::delivery_message(&id, &due.event, due.part, attempts, Some(order));
    headers.insert(ATTEMPTED, attempted.to_string().as_str());
    (headers, body)
}

/// Keeps the attempt's request and response on the attempts stream, in
/// the background (a record lost is logged; the delivery goes on).
fn keep_attempt(js: &Arc<JetStream>, key: &str, due: &Due, outcome: &crate::deliver::Outcome) {
    let Some(exchange) = outcome.exchange.clone() else {
        return;
    };
    let attempt = crate::store::sqlite::AttemptInfo {
        n: 0,
        at: now_ms(),
        part: due.part,
        outcome: outcome.attempt.label(),
        duration_ms: outcome.duration.as_millis() as i64,
        request: Some(exchange.request),
        response: Some(exchange.response),
    };
    let (js, key, uuid) = (js.clone(), key.to_string(), due.event.event.uuid.clone());
    tokio::spawn(async move {
        if let Err(e) = js.record_attempt(&key, &uuid, &attempt).await {
            tracing::warn!(webhook = %key, error = %e, "attempt record not kept");
        }
    });
}

fn header<T: std::str::FromStr>(headers: Option<&HeaderMap>, name: &str) -> Option<T> {
    headers?.get(name)?.as_str().parse().ok()
}

/// One attempt of the delivery `msg` holds, and what follows from it.
async fn deliver(d: &Dispatcher, js: &Arc<JetStream>, key: &str, msg: Message, probe: bool) {
    let Ok(event) = serde_json::from_slice::<StoredEvent>(&msg.payload) else {
        tracing::error!(webhook = %key, "unreadable delivery message; terminated");
        let _ = msg.ack_with(AckKind::Term).await;
        return;
    };
    let sequence = msg.info().map_or(0, |i| i.stream_sequence);
    let due = Due {
        id: sequence as i64,
        attempts: header(msg.headers.as_ref(), ATTEMPTS).unwrap_or(0),
        part: header(msg.headers.as_ref(), PART).unwrap_or(0),
        event: std::sync::Arc::new(event),
    };
    let attempted = msg.headers.as_ref().map_or(0, attempted);
    let order = order_of(msg.headers.as_ref(), sequence);
    let session = due.event.session_key();
    let span = delivery_span(key, &due);
    async {
        let Some(webhook) = d.webhook(key) else {
            // Deleted since: its deliveries wait for a webhook of that key.
            let _ = msg.ack_with(AckKind::Nak(Some(Duration::from_secs(60)))).await;
            return;
        };
        // Pulled just before the webhook was disabled or paused (by this
        // instance or another): back to the queue, nothing spent.
        let before = js.webhook_health(key);
        if before.disabled.is_some() || (before.paused && !probe) {
            let _ = msg.ack_with(AckKind::Nak(Some(HOLD))).await;
            return;
        }
        if webhook.ordering == Ordering::Session {
            if let Some(session) = &session {
                if !its_turn(js, key, session, order, &due, &msg).await {
                    return;
                }
            }
        }
        let outcome = d.attempt(&webhook, &due).await;
        keep_attempt(js, key, &due, &outcome);
        // What follows (state, moves) gets a fresh ack_wait.
        let _ = msg.ack_with(AckKind::Progress).await;
        let label = outcome.attempt.label();
        let metrics = &d.shared.metrics;
        let now = now_ms();
        let health = js.webhook_health(key);
        let gone = matches!(outcome.attempt, Attempt::Status { status: 410, .. });
        let state = if outcome.attempt.succeeded() {
            // Only a failing webhook's state is written on success.
            if health.failing_since.is_some() || health.paused {
                js.change_webhook(key, |s| {
                    let was = s.clone();
                    s.failing_since = None;
                    s.last_failure = None;
                    s.paused = false;
                    *s != was
                })
                .await
            } else {
                Ok(false)
            }
        } else if gone {
            tracing::warn!("receiver answered 410 Gone; webhook disabled until enabled again");
            let reason = format!(
                "410 Gone at {}",
                humantime::format_rfc3339_seconds(std::time::SystemTime::now())
            );
            js.change_webhook(key, |s| {
                let first = s.disabled.is_none();
                if first {
                    s.disabled = Some(reason.clone());
                }
                first
            })
            .await
        } else if recorded_lately(&health, now, d.shared.config.delivery.pause_after) {
            // Failing already, recorded moments ago, not due to pause:
            // no write (every instance's failures would contend for it).
            Ok(false)
        } else {
            let pause_after = d.shared.config.delivery.pause_after.as_millis() as i64;
            js.change_webhook(key, |s| {
                s.failed(now, pause_after);
                true
            })
            .await
        };
        if let Err(e) = state {
            tracing::warn!(error = %e, "webhook state not shared");
        }
        let settled = if gone || (probe && !outcome.attempt.succeeded()) {
            // Waits, parked: neither a 410 nor a failed probe spends the
            // delivery's retries, but both are attempts, counted.
            let at = now_ms() + HOLD.as_millis() as i64;
            let (mut headers, body) = moved("wait", &due, due.attempts, attempted + 1, order);
            headers.insert(DUE, at.to_string().as_str());
            headers.insert(LAST_STATUS, label.as_str());
            let subject = js.names.retry_subject(key, session.as_deref());
            js.publish_now(subject, headers, body).await
        } else if outcome.attempt.succeeded() {
            if (due.part as usize) + 1 < outcome.parts {
                let id = JetStream::move_id("part", due.id as u64);
                let (mut headers, body) =
                    JetStream::delivery_message(&id, &due.event, due.part + 1, 0, Some(order));
                headers.insert(ATTEMPTED, (attempted + 1).to_string().as_str());
                let subject = js.names.delivery_subject(key, session.as_deref());
                js.publish_now(subject, headers, body).await
            } else {
                metrics.deliveries.with_label_values(&[key, "delivered"]).inc();
                let latency = now_ms() as f64 / 1000.0 - due.event.event.created_at;
                metrics.event_delivery_latency.observe(latency.max(0.0));
                tracing::debug!(status = %label, "delivered");
                Ok(())
            }
        } else {
            match webhook.retry.next_delay(&outcome.attempt, due.attempts + 1) {
                Some(delay) => {
                    let jitter = fastrand::u64(0..=(delay.as_millis() as u64 / 10));
                    let at = now_ms() + delay.as_millis() as i64 + jitter as i64;
                    tracing::debug!(attempt = ?outcome.attempt, ?delay, "attempt failed; retrying");
                    let (mut headers, body) =
                        moved("retry", &due, due.attempts + 1, attempted + 1, order);
                    headers.insert(DUE, at.to_string().as_str());
                    headers.insert(LAST_STATUS, label.as_str());
                    let subject = js.names.retry_subject(key, session.as_deref());
                    js.publish_now(subject, headers, body).await
                }
                None => {
                    tracing::warn!(attempt = ?outcome.attempt, "delivery failed; dead letter");
                    metrics.deliveries.with_label_values(&[key, "dead"]).inc();
                    let (mut headers, body) =
                        moved("dead", &due, due.attempts + 1, attempted + 1, order);
                    headers.insert(LAST_STATUS, label.as_str());
                    js.publish_now(js.names.dead_subject(key), headers, body).await
                }
            }
        };
        match settled {
            // Done here: the work queue forgets it.
            Ok(()) => {
                if let Err(e) = msg.double_ack().await {
                    tracing::warn!(error = %e, "ack not confirmed; the delivery may be sent again");
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot record the delivery's outcome; it will be sent again");
                let _ = msg.ack_with(AckKind::Nak(Some(Duration::from_secs(1)))).await;
            }
        }
    }
    .instrument(span)
    .await
}

/// `ordering: session`: whether the delivery `msg` holds (place `order`
/// in `session`) may be attempted now. If an earlier delivery of the
/// session is not settled, it is parked on the retry subject until that
/// one's turn is likely over (no attempt spent, no slot held), and the
/// message is done with here.
async fn its_turn(
    js: &JetStream,
    key: &str,
    session: &str,
    order: u64,
    due: &Due,
    msg: &Message,
) -> bool {
    let sequence = due.id as u64;
    let until = match js.ahead_in_session(key, session, order, sequence).await {
        Ok(None) => return true,
        Ok(Some(until)) => until,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the session's order; trying again");
            let _ = msg.ack_with(AckKind::Nak(Some(HOLD))).await;
            return false;
        }
    };
    tracing::debug!(
        until,
        "an earlier delivery of the session is not settled; held"
    );
    let attempted = msg.headers.as_ref().map_or(0, attempted);
    let (mut headers, body) = moved("held", due, due.attempts, attempted, order);
    headers.insert(DUE, until.to_string().as_str());
    if let Some(status) = msg.headers.as_ref().and_then(|h| h.get(LAST_STATUS)) {
        headers.insert(LAST_STATUS, status.as_str());
    }
    let subject = js.names.retry_subject(key, Some(session));
    match js.publish_now(subject, headers, body).await {
        Ok(()) => {
            let _ = msg.double_ack().await;
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot park a held delivery; trying again");
            let _ = msg.ack_with(AckKind::Nak(Some(HOLD))).await;
        }
    }
    false
}

/// Puts parked retries back on their webhook's subject when they are due.
async fn move_retries(js: Arc<JetStream>, mut stop: watch::Receiver<bool>) {
    loop {
        let messages = match js.retry_consumer().await {
            Ok(c) => c.messages().await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let mut messages = match messages {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "cannot consume retries; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    _ = stop.changed() => return,
                }
            }
        };
        while let Some(next) = tokio::select! {
            n = messages.next() => n,
            _ = stop.changed() => return,
        } {
            let Ok(msg) = next else { continue };
            let due: i64 = header(msg.headers.as_ref(), DUE).unwrap_or(0);
            let wait = due - now_ms();
            if wait > 0 {
                let _ = msg
                    .ack_with(AckKind::Nak(Some(Duration::from_millis(wait as u64))))
                    .await;
                continue;
            }
            let mut headers = msg.headers.clone().unwrap_or_default();
            let sequence = msg.info().map_or(0, |i| i.stream_sequence);
            headers.insert("Nats-Msg-Id", JetStream::move_id("due", sequence).as_str());
            let subject = msg.subject.as_str().replacen(".retry.", ".deliveries.", 1);
            match js.publish_now(subject, headers, msg.payload.clone()).await {
                Ok(()) => {
                    let _ = msg.double_ack().await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot move a due retry; trying again");
                    let _ = msg
                        .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                        .await;
                }
            }
        }
    }
}
