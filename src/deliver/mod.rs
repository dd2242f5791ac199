//! The deliver stage: per-webhook queues, each drained by up to
//! `concurrency_per_webhook` concurrent deliveries, so one slow receiver
//! never holds back another.

pub mod formats;
pub mod retry;
pub mod signing;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, Semaphore};

use crate::config::Delivery;
use crate::event::DerivedEvent;
use crate::metrics::Metrics;
use crate::rules::model::Webhook;
use formats::Outgoing;
use retry::{parse_retry_after, Attempt};

/// Bytes of a receiver's response body read (and then dropped).
const RESPONSE_BODY_LIMIT: usize = 64 * 1024;

/// One event for one webhook.
struct Job {
    webhook: Arc<Webhook>,
    event: Arc<DerivedEvent>,
}

/// Sends deliveries, one queue per webhook key.
pub struct Dispatcher {
    client: reqwest::Client,
    settings: Delivery,
    metrics: Arc<Metrics>,
    queues: Mutex<HashMap<String, mpsc::Sender<Job>>>,
}

impl Dispatcher {
    pub fn new(settings: Delivery, metrics: Arc<Metrics>) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .user_agent(concat!("taphook/", env!("CARGO_PKG_VERSION")))
            .pool_idle_timeout(Duration::from_secs(60))
            .build()?;
        Ok(Self {
            client,
            settings,
            metrics,
            queues: Mutex::new(HashMap::new()),
        })
    }

    /// Queues `event` for `webhook`. Must be called inside a Tokio
    /// runtime. A full queue drops the delivery and counts it.
    pub fn enqueue(self: &Arc<Self>, webhook: Arc<Webhook>, event: Arc<DerivedEvent>) {
        let key = webhook.key.clone();
        let sender = {
            let mut queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
            queues
                .entry(key.clone())
                .or_insert_with(|| self.spawn_queue(&key))
                .clone()
        };
        let pending = self.metrics.outbox_pending.with_label_values(&[&key]);
        pending.inc();
        if sender.try_send(Job { webhook, event }).is_err() {
            pending.dec();
            self.metrics
                .events_dropped
                .with_label_values(&["webhook_queue_full"])
                .inc();
            tracing::warn!(webhook = %key, "delivery queue full; event dropped");
        }
    }

    fn spawn_queue(self: &Arc<Self>, key: &str) -> mpsc::Sender<Job> {
        let (tx, mut rx) = mpsc::channel::<Job>(self.settings.queue_per_webhook);
        let permits = Arc::new(Semaphore::new(self.settings.concurrency_per_webhook));
        let this = self.clone();
        let key = key.to_string();
        tokio::spawn(async move {
            while let Some(job) = rx.recv().await {
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    break;
                };
                let this = this.clone();
                tokio::spawn(async move {
                    this.deliver(&job).await;
                    this.metrics
                        .outbox_pending
                        .with_label_values(&[&job.webhook.key])
                        .dec();
                    drop(permit);
                });
            }
            tracing::debug!(webhook = %key, "delivery queue closed");
        });
        tx
    }

    async fn deliver(&self, job: &Job) {
        let webhook = &job.webhook;
        let mut delivered = true;
        // Each request (a batch part) is retried alone.
        for request in formats::requests(webhook, &job.event) {
            delivered &= self
                .send_with_retries(webhook, &request, &job.event.event.uuid)
                .await;
        }
        let outcome = if delivered { "delivered" } else { "dead" };
        self.metrics
            .deliveries
            .with_label_values(&[&webhook.key, outcome])
            .inc();
        if delivered {
            self.metrics
                .event_delivery_latency
                .observe(job.event.derived_at.elapsed().as_secs_f64());
        }
    }

    /// Attempts `request` until it succeeds or the retry policy gives up.
    async fn send_with_retries(&self, webhook: &Webhook, request: &Outgoing, uuid: &str) -> bool {
        let mut retry = 0;
        loop {
            let attempt = self.attempt(webhook, request).await;
            self.metrics
                .delivery_attempts
                .with_label_values(&[&webhook.key, attempt.class()])
                .inc();
            if attempt.succeeded() {
                return true;
            }
            retry += 1;
            match webhook.retry.next_delay(&attempt, retry) {
                Some(delay) => {
                    tracing::debug!(webhook = %webhook.key, event = %uuid, ?attempt, ?delay, "delivery attempt failed; retrying");
                    tokio::time::sleep(delay).await;
                }
                None => {
                    tracing::warn!(webhook = %webhook.key, event = %uuid, ?attempt, attempts = retry, "delivery failed; giving up");
                    return false;
                }
            }
        }
    }

    async fn attempt(&self, webhook: &Webhook, request: &Outgoing) -> Attempt {
        let timeout = webhook.timeout.unwrap_or(self.settings.timeout);
        let started = Instant::now();
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
        let result = match builder.send().await {
            Ok(mut response) => {
                let status = response.status().as_u16();
                let retry_after = response
                    .headers()
                    .get(http::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(parse_retry_after);
                drain(&mut response).await;
                Attempt::Status {
                    status,
                    retry_after,
                }
            }
            Err(e) if e.is_timeout() => Attempt::Timeout,
            Err(e) => Attempt::Error(error_chain(&e)),
        };
        self.metrics
            .delivery_duration
            .with_label_values(&[&webhook.key])
            .observe(started.elapsed().as_secs_f64());
        result
    }
}

/// Reads (and drops) up to [`RESPONSE_BODY_LIMIT`] bytes so the
/// connection can be reused.
async fn drain(response: &mut reqwest::Response) {
    let mut read = 0;
    while let Ok(Some(chunk)) = response.chunk().await {
        read += chunk.len();
        if read > RESPONSE_BODY_LIMIT {
            break;
        }
    }
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
