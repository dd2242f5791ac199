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

use super::{delivery_span, Dispatcher};
use crate::store::jetstream::{JetStream, ATTEMPTS, DUE, LAST_STATUS, PART};
use crate::store::sqlite::{now_ms, Due, StoredEvent};

/// Added to a webhook's timeout for `ack_wait`: an attempt's timeout
/// covers connecting and sending, the margin the rest.
const ACK_MARGIN: Duration = Duration::from_secs(5);

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
    loop {
        // Every instance reports the same counts: aggregate them with max.
        if last_gauges.elapsed() >= Duration::from_secs(2) {
            last_gauges = tokio::time::Instant::now();
            if let Ok(counts) = js.counts().await {
                dispatcher.set_outbox_gauges(&counts);
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
    let deadline = tokio::time::sleep(drain());
    tokio::pin!(deadline);
    for (_, h) in loops {
        tokio::select! {
            _ = h => {}
            _ = &mut deadline => break,
        }
    }
    mover.abort();
}

/// One webhook's loop: (re)creates its consumer when the webhook's
/// settings change, and attempts what it hands over.
async fn consume(
    d: Arc<Dispatcher>,
    js: Arc<JetStream>,
    key: String,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let Some(webhook) = d.webhook(&key) else {
            return;
        };
        let concurrency = d.shared.config.delivery.concurrency_per_webhook;
        let timeout = webhook.timeout.unwrap_or(d.shared.config.delivery.timeout);
        let messages = match js
            .webhook_consumer(&key, concurrency, timeout + ACK_MARGIN)
            .await
        {
            Ok(c) => c.messages().await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let mut messages = match messages {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(webhook = %key, error = %e, "cannot consume deliveries; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    _ = stop.changed() => return,
                }
            }
        };
        let slots = Arc::new(Semaphore::new(concurrency));
        let mut check = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                next = messages.next() => match next {
                    Some(Ok(msg)) => {
                        let Ok(slot) = slots.clone().acquire_owned().await else { return };
                        let (d, js, key) = (d.clone(), js.clone(), key.clone());
                        tokio::spawn(async move {
                            deliver(&d, &js, &key, msg).await;
                            drop(slot);
                        });
                    }
                    Some(Err(e)) => {
                        tracing::debug!(webhook = %key, error = %e, "pulling deliveries");
                    }
                    None => break,
                },
                _ = check.tick() => {
                    // New settings (timeout, concurrency) or gone: start over.
                    if !d.webhook(&key).is_some_and(|w| Arc::ptr_eq(&w, &webhook)) {
                        break;
                    }
                }
                _ = stop.changed() => {
                    // In flight: let them finish (the caller bounds the wait).
                    let _ = slots.acquire_many(concurrency as u32).await;
                    return;
                }
            }
        }
    }
}

fn header<T: std::str::FromStr>(headers: Option<&HeaderMap>, name: &str) -> Option<T> {
    headers?.get(name)?.as_str().parse().ok()
}

/// One attempt of the delivery `msg` holds, and what follows from it.
async fn deliver(d: &Dispatcher, js: &JetStream, key: &str, msg: Message) {
    let Ok(event) = serde_json::from_slice::<StoredEvent>(&msg.payload) else {
        tracing::error!(webhook = %key, "unreadable delivery message; terminated");
        let _ = msg.ack_with(AckKind::Term).await;
        return;
    };
    let due = Due {
        id: msg.info().map_or(0, |i| i.stream_sequence as i64),
        attempts: header(msg.headers.as_ref(), ATTEMPTS).unwrap_or(0),
        part: header(msg.headers.as_ref(), PART).unwrap_or(0),
        event,
    };
    let span = delivery_span(key, &due);
    async {
        let Some(webhook) = d.webhook(key) else {
            // Deleted since: its deliveries wait for a webhook of that key.
            let _ = msg.ack_with(AckKind::Nak(Some(Duration::from_secs(60)))).await;
            return;
        };
        let outcome = d.attempt(&webhook, &due).await;
        let label = outcome.attempt.label();
        let metrics = &d.shared.metrics;
        let settled = if outcome.attempt.succeeded() {
            if (due.part as usize) + 1 < outcome.parts {
                let (headers, body) =
                    JetStream::delivery_message(key, &due.event, due.part + 1, 0);
                js.publish_now(js.names.delivery_subject(key), headers, body)
                    .await
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
                        JetStream::delivery_message(key, &due.event, due.part, due.attempts + 1);
                    headers.insert(DUE, at.to_string().as_str());
                    headers.insert(LAST_STATUS, label.as_str());
                    js.publish_now(js.names.retry_subject(key), headers, body).await
                }
                None => {
                    tracing::warn!(attempt = ?outcome.attempt, "delivery failed; dead letter");
                    metrics.deliveries.with_label_values(&[key, "dead"]).inc();
                    let (mut headers, body) =
                        JetStream::delivery_message(key, &due.event, due.part, due.attempts + 1);
                    let id = format!("dead:{key}:{}:p{}", due.event.event.uuid, due.part);
                    headers.insert("Nats-Msg-Id", id.as_str());
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
            let id = format!(
                "{}:due",
                headers
                    .get("Nats-Msg-Id")
                    .map(|v| v.as_str())
                    .unwrap_or_default()
            );
            headers.insert("Nats-Msg-Id", id.as_str());
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
