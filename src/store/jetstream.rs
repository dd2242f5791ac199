//! The JetStream backend: what the pipeline keeps, on NATS JetStream, so
//! several taphook instances share it. No clustering code of our own:
//!
//! - `<P>_EVENTS` (subjects `<p>.events.<session>`): the event log, and the
//!   cluster-wide dedup of events: each is published with `Nats-Msg-Id` =
//!   its UUID, so the same event seen by two instances is stored once
//!   within the duplicate window (`dedup.ttl`).
//! - `<P>_DELIVERIES`, a work queue (`<p>.deliveries.<webhook>.<session>`,
//!   and `<p>.retry.<webhook>.<session>` for retries waiting their turn):
//!   the outbox. The session token lets `ordering: session` read a
//!   session's own deliveries ([`order`]).
//!   A delivery's `Nats-Msg-Id` is `<webhook>:<uuid>`, so a webhook gets an
//!   event once however many instances saw it. One durable pull consumer
//!   per webhook, shared by every instance, hands each delivery to one of
//!   them ([`crate::deliver::jetstream`]).
//! - `<P>_DEAD` (`<p>.dead.<webhook>`): deliveries out of retries.
//! - KV bucket `<p>_sessions`: sessions, with a local cache in front that
//!   a watch keeps current.
//!
//! Writes never wait for NATS: they go, in order, through a bounded local
//! buffer that one task publishes from, each write retried until NATS has
//! acknowledged it (the message ids make a retry harmless). Up to
//! [`WINDOW`] writes are on the wire at once, acknowledged in the order
//! they were sent. While NATS is unreachable they wait there; a write that
//! finds the buffer full is dropped and counted.

use std::collections::VecDeque;
use std::future::{Future, IntoFuture as _};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::publish::PublishAck;
use async_nats::jetstream::{self, consumer, kv, stream};
use async_nats::HeaderMap;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::Bytes;
use futures::StreamExt as _;
use tokio::sync::mpsc;

use super::sqlite::{lock, AttemptInfo, DeliveryInfo, Filter, Retry, State, StoreError};
use super::{MemorySessions, Session, SessionStore, StoredEvent};
use crate::config::JetStreamConfig;
use crate::event::Event;
use crate::metrics::Metrics;

mod order;
pub use order::{keep_order, order_of, session_in};

/// Headers a delivery message carries besides `Nats-Msg-Id`: the retry
/// budget spent, and every attempt made (a 410 and a failed probe spend
/// no budget, but are attempts).
pub const ATTEMPTS: &str = "Taphook-Attempts";
pub const ATTEMPTED: &str = "Taphook-Attempted";
pub const PART: &str = "Taphook-Part";
/// A parked retry's due time (ms since the epoch).
pub const DUE: &str = "Taphook-Due";
pub const LAST_STATUS: &str = "Taphook-Last-Status";
/// A delivery's place in its session's order: the stream sequence it was
/// first stored at (absent on that first message: its own sequence).
pub const ORDER: &str = "Taphook-Order";

/// How long a read (a session, the event log) waits for NATS. While NATS
/// is unreachable, reads do not wait: the pipeline must keep up.
pub(super) const READ_TIMEOUT: Duration = Duration::from_millis(500);
/// How long a page of the events API may take (up to 1,001 reads).
pub(super) const LIST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a publish waits for NATS's acknowledgement before it is retried.
const ACK_TIMEOUT: Duration = Duration::from_secs(2);
/// How many buffered writes may wait for their acknowledgement at once.
/// NATS keeps one connection's messages in order, so the window keeps the
/// order of writes; one write at a time, an instance wrote ~1,000 events/s
/// (three writes each), bounded by the round trip (docs/BENCHMARKS.md).
pub const WINDOW: usize = 64;

/// A sent write's acknowledgement, to come.
type Ack = Pin<Box<dyn Future<Output = Result<PublishAck, PublishError>> + Send>>;

/// Makes a stream unless it exists. Replicas starting at the same moment
/// each try to make it, and NATS may refuse all but one (`subjects overlap
/// with an existing stream`, before the first one's name is known): a
/// refused create is looked at again, a few times, before it is an error.
async fn create_stream(
    js: &async_nats::jetstream::Context,
    config: stream::Config,
) -> Result<(), StoreError> {
    let name = config.name.clone();
    let mut tries = 0;
    loop {
        match js.get_or_create_stream(config.clone()).await {
            Ok(_) => return Ok(()),
            Err(e) if tries >= 5 => {
                return Err(StoreError::Nats(format!(
                    "cannot create stream {name}: {e}"
                )))
            }
            Err(e) => {
                tracing::debug!(stream = %name, error = %e, "stream not created; looking again (another instance may be making it)");
                tries += 1;
                tokio::time::sleep(Duration::from_millis(100 * tries)).await;
            }
        }
    }
}

/// A name NATS accepts in subjects, consumer names and KV keys, for any
/// text (session keys, webhook keys).
pub fn token(text: &str) -> String {
    if !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        && !text.starts_with('_')
    {
        return text.to_string();
    }
    format!("_{}", URL_SAFE_NO_PAD.encode(text))
}

/// A delivery's session as a subject token: `_` for an event without one
/// (a session's token is never `_`: an encoded one has more after it).
pub fn session_token(session: Option<&str>) -> String {
    token(session.unwrap_or(""))
}

/// The text a [`token`] stands for.
pub fn untoken(token: &str) -> String {
    match token.strip_prefix('_') {
        Some(encoded) => URL_SAFE_NO_PAD
            .decode(encoded)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .unwrap_or_else(|| token.to_string()),
        None => token.to_string(),
    }
}

/// Stream, subject and bucket names under the configured prefix.
#[derive(Debug, Clone)]
pub struct Names {
    prefix: String,
}

impl Names {
    pub fn events_stream(&self) -> String {
        format!("{}_EVENTS", self.prefix)
    }
    pub fn deliveries_stream(&self) -> String {
        format!("{}_DELIVERIES", self.prefix)
    }
    pub fn dead_stream(&self) -> String {
        format!("{}_DEAD", self.prefix)
    }
    /// The admin API's audit trail, shared by every instance.
    pub fn audit_stream(&self) -> String {
        format!("{}_AUDIT", self.prefix)
    }
    pub fn audit_subject(&self) -> String {
        format!("{}.audit", self.prefix)
    }
    /// Every attempt's request and response, by webhook and event.
    pub fn attempts_stream(&self) -> String {
        format!("{}_ATTEMPTS", self.prefix)
    }
    pub fn attempts_subject(&self, webhook: &str, event_uuid: &str) -> String {
        format!(
            "{}.attempts.{}.{}",
            self.prefix,
            token(webhook),
            token(event_uuid)
        )
    }
    pub fn sessions_bucket(&self) -> String {
        format!("{}_sessions", self.prefix)
    }
    pub fn rules_bucket(&self) -> String {
        format!("{}_rules", self.prefix)
    }
    pub fn webhooks_bucket(&self) -> String {
        format!("{}_webhooks", self.prefix)
    }
    pub fn rates_bucket(&self) -> String {
        format!("{}_rates", self.prefix)
    }
    /// Each instance's hourly history of each webhook.
    pub fn history_bucket(&self) -> String {
        format!("{}_history", self.prefix)
    }
    pub fn event_subject(&self, session: &str) -> String {
        format!("{}.events.{}", self.prefix, token(session))
    }
    pub fn delivery_subject(&self, webhook: &str, session: Option<&str>) -> String {
        format!(
            "{}.deliveries.{}.{}",
            self.prefix,
            token(webhook),
            session_token(session)
        )
    }
    pub fn retry_subject(&self, webhook: &str, session: Option<&str>) -> String {
        format!(
            "{}.retry.{}.{}",
            self.prefix,
            token(webhook),
            session_token(session)
        )
    }
    /// Every delivery of `webhook` waiting its turn (its consumer's filter).
    pub fn delivery_filter(&self, webhook: &str) -> String {
        self.backlog_filter("deliveries", Some(webhook), None)
    }
    /// Deliveries of `kind` (`deliveries`, `retry`, `*`) in the work
    /// queue, of one webhook and one session, or (`None`) of every one.
    pub fn backlog_filter(
        &self,
        kind: &str,
        webhook: Option<&str>,
        session: Option<&str>,
    ) -> String {
        let webhook = webhook.map_or("*".to_string(), token);
        let session = session.map_or("*".to_string(), |s| session_token(Some(s)));
        format!("{}.{kind}.{webhook}.{session}", self.prefix)
    }
    pub fn retry_filter(&self) -> String {
        format!("{}.retry.>", self.prefix)
    }
    pub fn dead_subject(&self, webhook: &str) -> String {
        format!("{}.dead.{}", self.prefix, token(webhook))
    }
    /// A webhook's consumer (`_ws_`: of its sessions' subjects; `_wh_`
    /// was the one earlier builds made, of `<p>.deliveries.<webhook>`).
    pub fn webhook_consumer(&self, webhook: &str) -> String {
        format!("{}_ws_{}", self.prefix, token(webhook))
    }
    pub fn retry_consumer(&self) -> String {
        format!("{}_retry", self.prefix)
    }
}

/// One write waiting for NATS.
pub(super) enum Write {
    Publish {
        subject: String,
        headers: HeaderMap,
        body: Bytes,
        kind: &'static str,
        /// A delivery's event span and when the write was queued (ms):
        /// the write's span, once NATS acknowledged it (traces on).
        trace: Option<(String, i64)>,
    },
    Session {
        key: String,
        body: Bytes,
        /// Written only if the bucket has no session of that key: this
        /// instance could not read it before building this one.
        only_if_absent: bool,
    },
}

impl Write {
    fn kind(&self) -> &'static str {
        match self {
            Write::Publish { kind, .. } => kind,
            Write::Session { .. } => "session",
        }
    }
}

/// The connection, the streams and the local buffer.
pub struct JetStream {
    pub names: Names,
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub(super) buffer: mpsc::Sender<Write>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) sessions: kv::Store,
    /// Session keys with puts of this instance on their way: the watch's
    /// echo of an older put must not replace the cached newer one.
    pub(super) pending_sessions: std::sync::Mutex<std::collections::HashMap<String, usize>>,
    /// Session keys whose last read failed (NATS unreachable or slow).
    pub(super) unread_sessions: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Session keys a recent prefetch found absent, and when: their `get`
    /// needs no read of its own for [`ABSENT_FOR`].
    pub(super) absent_sessions:
        std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>,
    /// The rules files the admin API wrote: every instance follows them.
    pub rules: kv::Store,
    /// Each webhook's delivery state (failing, paused, disabled), shared.
    pub(super) webhooks: kv::Store,
    /// Each rate-limited webhook's token bucket, shared ([`JetStream::claim_starts`]).
    pub(super) rates: kv::Store,
    /// Each instance's hours of each webhook: `<webhook>.<instance>`.
    pub(super) history: kv::Store,
    /// The last state of each webhook seen in `webhooks` (watched).
    pub(super) states: std::sync::Mutex<std::collections::HashMap<String, WebhookHealth>>,
    pub(super) cache: MemorySessions,
    /// The runtime reads block on (sync callers: derive, the admin API).
    pub(super) runtime: tokio::runtime::Handle,
}

impl JetStream {
    /// Connects and creates (or updates) the streams and the bucket.
    /// NATS unreachable is an error naming the URL.
    pub async fn connect(
        config: &JetStreamConfig,
        dedup_window: Duration,
        retention: Duration,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Self>, StoreError> {
        let unreachable = |e: &dyn std::fmt::Display| {
            StoreError::Nats(format!("cannot reach NATS at {}: {e}", config.url))
        };
        let connected = metrics.store_connected.clone();
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(config.connect_timeout)
            // A half-open connection is noticed within seconds, not a minute.
            .ping_interval(Duration::from_secs(5))
            // Back within half a second of NATS (the default waits up to 4 s).
            .reconnect_delay_callback(|n: usize| {
                Duration::from_millis((50u64 << n.min(4)).min(500))
            })
            .event_callback(move |event| {
                let connected = connected.clone();
                async move {
                    match event {
                        async_nats::Event::Connected => {
                            tracing::info!("connected to NATS");
                            connected.set(1);
                        }
                        async_nats::Event::Disconnected => {
                            tracing::warn!("NATS connection lost; writes wait in the local buffer");
                            connected.set(0);
                        }
                        other => tracing::debug!(event = %other, "NATS"),
                    }
                }
            })
            .connect(config.url.as_str())
            .await
            .map_err(|e| unreachable(&e))?;
        metrics.store_connected.set(1);
        let js = jetstream::ContextBuilder::new()
            .timeout(Duration::from_secs(5))
            .ack_timeout(ACK_TIMEOUT)
            .build(client.clone());
        let names = Names {
            prefix: config.prefix.clone(),
        };
        let replicas = config.replicas;
        // The server keeps every message id of the window in memory.
        // NATS wants the window within the stream's max_age.
        let window = dedup_window
            .min(Duration::from_secs(24 * 3600))
            .min(retention);
        let limits = |name: String, subjects: Vec<String>| stream::Config {
            name,
            subjects,
            max_age: retention,
            duplicate_window: window,
            allow_direct: true,
            num_replicas: replicas,
            storage: stream::StorageType::File,
            ..Default::default()
        };
        let bucket = |name: String, max_age: Duration| stream::Config {
            subjects: vec![format!("$KV.{name}.>")],
            max_messages_per_subject: 1,
            max_age,
            allow_rollup: true,
            deny_delete: true,
            discard: stream::DiscardPolicy::New,
            duplicate_window: match max_age {
                Duration::ZERO => Duration::from_secs(120),
                age => age.min(Duration::from_secs(120)),
            },
            ..limits(format!("KV_{name}"), vec![])
        };
        let p = &names.prefix;
        let streams = [
            limits(names.events_stream(), vec![format!("{p}.events.>")]),
            stream::Config {
                retention: stream::RetentionPolicy::WorkQueue,
                ..limits(
                    names.deliveries_stream(),
                    vec![format!("{p}.deliveries.>"), format!("{p}.retry.>")],
                )
            },
            limits(names.dead_stream(), vec![format!("{p}.dead.>")]),
            limits(names.attempts_stream(), vec![format!("{p}.attempts.>")]),
            limits(names.audit_stream(), vec![format!("{p}.audit")]),
            // KV buckets, made as their streams: `create_key_value` reads
            // account fields NATS 2.9 does not send.
            bucket(names.sessions_bucket(), retention),
            // What the admin API wrote stays until it is changed.
            bucket(names.rules_bucket(), Duration::ZERO),
            bucket(names.webhooks_bucket(), Duration::ZERO),
            // A rate limit's bucket matters for a burst's length at most.
            bucket(names.rates_bucket(), Duration::from_secs(3600)),
            // An instance's history of a webhook matters for 7 days after
            // its last write.
            bucket(names.history_bucket(), Duration::from_secs(8 * 86400)),
        ];
        for config in streams {
            let name = config.name.clone();
            create_stream(&js, config.clone()).await?;
            // An existing stream takes the configured retention, window
            // and replicas (what NATS can change in place).
            if let Err(e) = js.update_stream(config).await {
                tracing::warn!(stream = %name, error = %e, "stream settings not updated");
            }
        }
        let sessions = js
            .get_key_value(names.sessions_bucket())
            .await
            .map_err(|e| StoreError::Nats(format!("cannot open the sessions bucket: {e}")))?;
        let rules = js
            .get_key_value(names.rules_bucket())
            .await
            .map_err(|e| StoreError::Nats(format!("cannot open the rules bucket: {e}")))?;
        let webhooks = js
            .get_key_value(names.webhooks_bucket())
            .await
            .map_err(|e| StoreError::Nats(format!("cannot open the webhooks bucket: {e}")))?;
        let rates = js
            .get_key_value(names.rates_bucket())
            .await
            .map_err(|e| StoreError::Nats(format!("cannot open the rates bucket: {e}")))?;
        let history = js
            .get_key_value(names.history_bucket())
            .await
            .map_err(|e| StoreError::Nats(format!("cannot open the history bucket: {e}")))?;
        let (buffer, writes) = mpsc::channel(config.buffer);
        let this = Arc::new(Self {
            history,
            names,
            client,
            js,
            buffer,
            metrics,
            sessions,
            pending_sessions: Default::default(),
            unread_sessions: Default::default(),
            absent_sessions: Default::default(),
            rules,
            webhooks,
            rates,
            states: std::sync::Mutex::new(std::collections::HashMap::new()),
            cache: MemorySessions::new(64 << 20, retention),
            runtime: tokio::runtime::Handle::current(),
        });
        if let Err(e) = this.move_to_session_subjects().await {
            tracing::warn!(error = %e, "cannot move deliveries to their session's subject yet; trying again in the background");
        }
        tokio::spawn(this.clone().publish(writes));
        tokio::spawn(this.clone().watch_sessions());
        tokio::spawn(this.clone().watch_webhooks());
        Ok(this)
    }

    /// Queues a write; a full buffer drops it (counted).
    pub(super) fn write(&self, write: Write) -> Result<(), StoreError> {
        let kind = write.kind();
        self.metrics.store_buffered.inc();
        match self.buffer.try_send(write) {
            Ok(()) => Ok(()),
            Err(_) => {
                self.metrics.store_buffered.dec();
                self.metrics
                    .store_buffer_dropped
                    .with_label_values(&[kind])
                    .inc();
                Err(StoreError::Nats(
                    "the local buffer is full (NATS unreachable?)".into(),
                ))
            }
        }
    }

    /// Publishes the buffer's writes in order, each until NATS acknowledged
    /// it: up to [`WINDOW`] on the wire, their acks awaited oldest first.
    /// A write that fails sends itself and every write sent after it again,
    /// one at a time and in order, before the window opens again.
    async fn publish(self: Arc<Self>, mut writes: mpsc::Receiver<Write>) {
        let mut sent: VecDeque<(Write, Ack)> = VecDeque::with_capacity(WINDOW);
        // The oldest sent write, whose ack is awaited.
        let mut oldest: Option<(Write, Ack)> = None;
        // No more writes will come (the buffer's sender is gone).
        let mut closed = false;
        loop {
            if oldest.is_none() {
                oldest = sent.pop_front();
            }
            let room = sent.len() + 1 < WINDOW && !closed;
            let outcome = match &mut oldest {
                Some((_, ack)) => tokio::select! {
                    biased;
                    acked = ack => Err(acked),
                    write = writes.recv(), if room => Ok(write),
                },
                None if closed => break,
                None => Ok(writes.recv().await),
            };
            match outcome {
                Ok(None) => closed = true,
                Ok(Some(write)) => match self.send(&write).await {
                    Ok(ack) => sent.push_back((write, ack)),
                    Err(e) => {
                        let again = oldest.take().into_iter().chain(sent.drain(..));
                        let again: Vec<Write> = again.map(|(w, _)| w).chain([write]).collect();
                        self.write_in_order(again, e).await;
                    }
                },
                Err(acked) => {
                    let Some((write, _)) = oldest.take() else {
                        continue;
                    };
                    match self.settle(&write, acked) {
                        Ok(()) => self.written(&write),
                        Err(e) => {
                            let again =
                                std::iter::once(write).chain(sent.drain(..).map(|(w, _)| w));
                            self.write_in_order(again.collect(), e).await;
                        }
                    }
                }
            }
        }
    }

    /// Writes `writes` one at a time, in order, each retried until NATS
    /// acknowledges it; `error` is why the first one needs it.
    async fn write_in_order(&self, writes: Vec<Write>, error: String) {
        tracing::warn!(error = %error, writes = writes.len(), "NATS write failed; retrying until it succeeds");
        for write in writes {
            let mut failures = 0u32;
            loop {
                let outcome = match self.send(&write).await {
                    Ok(ack) => self.settle(&write, ack.await),
                    Err(e) => Err(e),
                };
                match outcome {
                    Ok(()) => break,
                    // A write NATS will never take (over max_payload):
                    // retrying it would hold up every write behind it.
                    Err(e) if e.contains("maximum payload") => {
                        tracing::error!(error = %e, kind = write.kind(), "NATS refuses this write; dropped");
                        self.metrics
                            .store_buffer_dropped
                            .with_label_values(&[write.kind()])
                            .inc();
                        break;
                    }
                    Err(e) => {
                        failures += 1;
                        tracing::debug!(error = %e, kind = write.kind(), failures, "NATS write failed");
                        tokio::time::sleep(Duration::from_millis(
                            100 * u64::from(failures.min(10)),
                        ))
                        .await;
                    }
                }
            }
            self.written(&write);
        }
    }

    /// A write is done with: stored, or dropped for good.
    fn written(&self, write: &Write) {
        self.metrics.store_buffered.dec();
        match write {
            Write::Session { key, .. } => self.session_written(key),
            Write::Publish {
                kind: "delivery",
                trace,
                ..
            } => {
                self.metrics.outbox_accepted.inc();
                if let Some((trace, queued)) = trace {
                    crate::telemetry::outbox_written(trace, *queued, 1, "jetstream");
                }
            }
            Write::Publish { .. } => {}
        }
    }

    /// Puts the write's message on the wire; its ack comes later.
    async fn send(&self, write: &Write) -> Result<Ack, String> {
        if self.client.connection_state() != async_nats::connection::State::Connected {
            return Err("not connected".into());
        }
        let (subject, headers, body) = match write {
            Write::Publish {
                subject,
                headers,
                body,
                ..
            } => (subject.clone(), headers.clone(), body.clone()),
            Write::Session {
                key,
                body,
                only_if_absent,
            } => {
                // What `kv::Store::put` and `create` send, without their
                // wait for the ack.
                let mut headers = HeaderMap::new();
                if *only_if_absent {
                    headers.insert(async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, "0");
                }
                let subject = format!("$KV.{}.{key}", self.names.sessions_bucket());
                (subject, headers, body.clone())
            }
        };
        let ack = self
            .js
            .publish_with_headers(subject, headers, body)
            .await
            .map_err(|e| e.to_string())?;
        Ok(ack.into_future())
    }

    /// What NATS's answer to a sent write means.
    fn settle(&self, write: &Write, acked: Result<PublishAck, PublishError>) -> Result<(), String> {
        match (write, acked) {
            (_, Ok(_)) => Ok(()),
            // A session created only if absent was there: keep it, not the
            // one built without it; read it again next time.
            (
                Write::Session {
                    key,
                    only_if_absent: true,
                    ..
                },
                Err(e),
            ) if e.kind() == PublishErrorKind::WrongLastSequence => {
                self.cache.forget(key);
                Ok(())
            }
            (_, Err(e)) => Err(e.to_string()),
        }
    }

    /// What a read of session `key` found (`None`: no such session): the
    /// key is known again, and a session found is cached.
    pub(super) fn session_read(&self, key: &str, value: Option<Bytes>) -> Option<Session> {
        lock(&self.unread_sessions).remove(key);
        let session: Session = match serde_json::from_slice(&value?) {
            Ok(session) => session,
            Err(e) => {
                tracing::warn!(error = %e, "a stored session is not valid JSON");
                return None;
            }
        };
        self.cache.put(key, session.clone());
        Some(session)
    }

    /// One put of session `key` is no longer on its way.
    pub(super) fn session_written(&self, key: &str) {
        let mut pending = lock(&self.pending_sessions);
        if let Some(n) = pending.get_mut(key) {
            *n -= 1;
            if *n == 0 {
                pending.remove(key);
            }
        }
    }

    /// Keeps the session cache current with what other instances write.
    async fn watch_sessions(self: Arc<Self>) {
        loop {
            match self.sessions.watch_all().await {
                Ok(mut changes) => {
                    while let Some(change) = changes.next().await {
                        let Ok(entry) = change else { break };
                        let key = entry.key.clone();
                        let mine_pending = lock(&self.pending_sessions).contains_key(&key);
                        if mine_pending {
                            // The cache holds this instance's newer write.
                            continue;
                        }
                        match serde_json::from_slice::<Session>(&entry.value) {
                            Ok(session) if entry.operation == kv::Operation::Put => {
                                self.cache.put(&key, session)
                            }
                            _ => self.cache.forget(&key),
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot watch the sessions bucket"),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Waits until the buffer is empty (everything written reached NATS),
    /// for at most `limit`; what is left is lost with the process.
    pub async fn flush(&self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        while self.metrics.store_buffered.get() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let left = self.metrics.store_buffered.get();
        if left > 0 {
            tracing::error!(
                writes = left,
                "NATS unreachable at shutdown; buffered writes lost"
            );
        }
    }

    /// Runs a read on the runtime from sync code; `None` at once while
    /// NATS is unreachable.
    pub(super) fn block_on<T>(&self, read: impl std::future::Future<Output = T>) -> Option<T> {
        self.block_on_for(read, READ_TIMEOUT)
    }

    pub(super) fn block_on_for<T>(
        &self,
        read: impl std::future::Future<Output = T>,
        limit: Duration,
    ) -> Option<T> {
        if self.client.connection_state() != async_nats::connection::State::Connected {
            return None;
        }
        let read = async { tokio::time::timeout(limit, read).await.ok() };
        match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(|| self.runtime.block_on(read))
            }
            Ok(_) => None,
            Err(_) => self.runtime.block_on(read),
        }
    }

    /// A delivery's message: the stored event as JSON, with its id, and
    /// its place in the session's order once it moves on from its first.
    pub fn delivery_message(
        id: &str,
        event: &StoredEvent,
        part: u32,
        attempts: u32,
        order: Option<u64>,
    ) -> (HeaderMap, Bytes) {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", id);
        headers.insert(ATTEMPTS, attempts.to_string().as_str());
        headers.insert(PART, part.to_string().as_str());
        if let Some(order) = order {
            headers.insert(ORDER, order.to_string().as_str());
        }
        let body = serde_json::to_vec(event).unwrap_or_default();
        (headers, Bytes::from(body))
    }

    /// The id of a delivery's first message: the same event is one
    /// delivery per webhook, however many instances saw it.
    pub fn delivery_id(webhook: &str, event: &StoredEvent) -> String {
        format!("{webhook}:{}", event.event.uuid)
    }

    /// The id of a message that moves a delivery on (`kind`: part, retry,
    /// dead, due), named by the stream sequence of the message it comes
    /// from: the same across that message's redeliveries (a move made
    /// twice after a crash is stored once), new for every copy (a delivery
    /// requeued from the dead letters moves on afresh).
    pub fn move_id(kind: &str, from_sequence: u64) -> String {
        format!("{kind}:{from_sequence}")
    }

    /// Creates or updates a webhook's consumer: at most `concurrency`
    /// deliveries in flight across every instance, and a delivery comes
    /// back to another instance when one holds it past `ack_wait`.
    pub async fn webhook_consumer(
        &self,
        webhook: &str,
        concurrency: usize,
        ack_wait: Duration,
    ) -> Result<consumer::Consumer<consumer::pull::Config>, StoreError> {
        let name = self.names.webhook_consumer(webhook);
        self.consumer(consumer::pull::Config {
            durable_name: Some(name.clone()),
            filter_subject: self.names.delivery_filter(webhook),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait,
            max_ack_pending: concurrency as i64,
            ..Default::default()
        })
        .await
    }

    /// The consumer of parked retries, shared by every instance.
    pub async fn retry_consumer(
        &self,
    ) -> Result<consumer::Consumer<consumer::pull::Config>, StoreError> {
        self.consumer(consumer::pull::Config {
            durable_name: Some(self.names.retry_consumer()),
            filter_subject: self.names.retry_filter(),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: Duration::from_secs(30),
            max_ack_pending: 100_000,
            ..Default::default()
        })
        .await
    }

    async fn consumer(
        &self,
        config: consumer::pull::Config,
    ) -> Result<consumer::Consumer<consumer::pull::Config>, StoreError> {
        let name = config.durable_name.clone().unwrap_or_default();
        let stream = self
            .js
            .get_stream(self.names.deliveries_stream())
            .await
            .map_err(|e| StoreError::Nats(format!("cannot open the deliveries stream: {e}")))?;
        // create_consumer updates an existing one (limits follow the rules).
        stream
            .create_consumer(config)
            .await
            .map_err(|e| StoreError::Nats(format!("cannot create consumer {name}: {e}")))
    }

    /// Publishes now (not through the buffer) and waits for the ack: the
    /// deliverer's moves of a message it holds.
    pub async fn publish_now(
        &self,
        subject: String,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<(), StoreError> {
        let ack = self
            .js
            .publish_with_headers(subject, headers, body)
            .await
            .map_err(|e| StoreError::Nats(e.to_string()))?;
        ack.await
            .map(|_| ())
            .map_err(|e| StoreError::Nats(e.to_string()))
    }
}

/// A webhook's delivery state, shared by every instance: failing since
/// when, paused (probed by one instance at a time), disabled (410).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct WebhookHealth {
    #[serde(default)]
    pub disabled: Option<String>,
    #[serde(default)]
    pub failing_since: Option<i64>,
    #[serde(default)]
    pub last_failure: Option<i64>,
    #[serde(default)]
    pub paused: bool,
    /// When the next probe of a paused webhook may start (ms).
    #[serde(default)]
    pub probe_at: i64,
}

impl WebhookHealth {
    /// A failed attempt at `now`: failing since the first failure of an
    /// unbroken run, paused once that run is `pause_after` long.
    pub fn failed(&mut self, now: i64, pause_after: i64) {
        let broken = self
            .last_failure
            .is_none_or(|last| now - last > pause_after);
        if self.failing_since.is_none() || broken {
            self.failing_since = Some(now);
        }
        self.last_failure = Some(now);
        if self
            .failing_since
            .is_some_and(|since| now - since >= pause_after)
        {
            self.paused = true;
        }
    }
}

/// Cluster-wide webhook state: changed by compare-and-set on the bucket,
/// read from the local copy a watch keeps current.
impl JetStream {
    /// The state last seen; the default (healthy) when there is none.
    pub fn webhook_health(&self, webhook: &str) -> WebhookHealth {
        let states = lock(&self.states);
        states.get(webhook).cloned().unwrap_or_default()
    }

    /// Applies `change` to the webhook's shared state atomically: `change`
    /// says whether it changed anything (nothing is written when not).
    /// Returns whether this call wrote it.
    pub async fn change_webhook(
        &self,
        webhook: &str,
        change: impl Fn(&mut WebhookHealth) -> bool,
    ) -> Result<bool, StoreError> {
        let key = token(webhook);
        for _ in 0..20 {
            let entry = self
                .webhooks
                .entry(key.clone())
                .await
                .map_err(|e| StoreError::Nats(e.to_string()))?;
            let (mut state, revision) = match &entry {
                Some(e) if e.operation == kv::Operation::Put => (
                    serde_json::from_slice(&e.value).unwrap_or_default(),
                    Some(e.revision),
                ),
                Some(e) => (WebhookHealth::default(), Some(e.revision)),
                None => (WebhookHealth::default(), None),
            };
            if !change(&mut state) {
                return Ok(false);
            }
            let body = Bytes::from(serde_json::to_vec(&state).unwrap_or_default());
            let written = match revision {
                Some(rev) => self
                    .webhooks
                    .update(&key, body, rev)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
                None => self
                    .webhooks
                    .create(&key, body)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
            };
            match written {
                Ok(()) => {
                    let mut states = lock(&self.states);
                    states.insert(webhook.to_string(), state);
                    return Ok(true);
                }
                // Another instance changed it first: read it again.
                Err(e) => {
                    tracing::debug!(webhook, error = %e, "webhook state changed meanwhile; again");
                    tokio::time::sleep(Duration::from_millis(fastrand::u64(1..=20))).await;
                }
            }
        }
        Err(StoreError::Nats(format!(
            "cannot change webhook `{webhook}`'s state: too much contention"
        )))
    }

    /// Takes up to `want` starts from `webhook`'s rate limit, shared by
    /// every instance: how many it got (at least 1), or how long until one
    /// is free. The bucket is GCRA's one number, the theoretical arrival
    /// time (µs since the epoch), kept in the rates bucket and changed by
    /// compare-and-set: `k` starts at `now` are allowed while
    /// `max(tat, now) + k × interval - now` stays within `burst`
    /// intervals. Instances' clocks are taken to agree.
    pub async fn claim_starts(
        &self,
        webhook: &str,
        limit: crate::rules::model::RateLimit,
        want: u32,
    ) -> Result<Result<u32, Duration>, StoreError> {
        let key = token(webhook);
        let interval = 1e6 / limit.per_second;
        let capacity = interval * f64::from(limit.burst);
        for _ in 0..50 {
            let entry = self
                .rates
                .entry(key.clone())
                .await
                .map_err(|e| StoreError::Nats(e.to_string()))?;
            let (tat, revision) = match &entry {
                Some(e) if e.operation == kv::Operation::Put => (
                    std::str::from_utf8(&e.value)
                        .ok()
                        .and_then(|v| v.parse::<f64>().ok())
                        .unwrap_or(0.0),
                    Some(e.revision),
                ),
                Some(e) => (0.0, Some(e.revision)),
                None => (0.0, None),
            };
            let now = crate::store::sqlite::now_ms() as f64 * 1000.0;
            let from = tat.max(now);
            let room = ((capacity - (from - now)) / interval).floor();
            if room < 1.0 {
                let wait = (from + interval - capacity - now).max(1000.0);
                return Ok(Err(Duration::from_micros(wait as u64)));
            }
            let granted = (room as u32).min(want.max(1));
            let body = Bytes::from(format!("{:.0}", from + f64::from(granted) * interval));
            let written = match revision {
                Some(rev) => self.rates.update(&key, body, rev).await.is_ok(),
                None => self.rates.create(&key, body).await.is_ok(),
            };
            if written {
                return Ok(Ok(granted));
            }
            // Another instance took some first: read it again.
            tokio::time::sleep(Duration::from_millis(fastrand::u64(0..=2))).await;
        }
        Err(StoreError::Nats(format!(
            "cannot take from webhook `{webhook}`'s rate limit: too much contention"
        )))
    }

    /// May this instance probe the paused webhook now? One instance wins
    /// each `interval`.
    pub async fn claim_probe(&self, webhook: &str, interval: Duration) -> bool {
        let now = crate::store::sqlite::now_ms();
        self.change_webhook(webhook, |s| {
            if s.paused && s.disabled.is_none() && now >= s.probe_at {
                s.probe_at = now + interval.as_millis() as i64;
                true
            } else {
                false
            }
        })
        .await
        .unwrap_or(false)
    }

    async fn watch_webhooks(self: Arc<Self>) {
        loop {
            match self.webhooks.watch_with_history(">").await {
                Ok(mut changes) => {
                    while let Some(change) = changes.next().await {
                        let Ok(entry) = change else { break };
                        let state = match entry.operation {
                            kv::Operation::Put => {
                                serde_json::from_slice(&entry.value).unwrap_or_default()
                            }
                            _ => WebhookHealth::default(),
                        };
                        let mut states = lock(&self.states);
                        states.insert(untoken(&entry.key), state);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot watch the webhooks bucket"),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// The deliveries admin API and `taphook replay` on the streams. Ids are
/// stream sequences: of the work queue for pending and failed (parked)
/// deliveries, and negated, of the dead-letter stream for dead ones (so
/// the two never collide). Delivered
/// deliveries are not kept (the work queue forgets them), and neither are
/// attempts beyond the last status.
impl JetStream {
    /// The stream and subject filter deliveries matching `filter` (and
    /// `webhook`, and `session`: exactly for those waiting, by reading
    /// for dead letters) are read from.
    fn stream_and_filter(
        &self,
        filter: Filter,
        webhook: Option<&str>,
        session: Option<&str>,
    ) -> Option<(String, String)> {
        let queued = |kind| {
            let filter = self.names.backlog_filter(kind, webhook, session);
            Some((self.names.deliveries_stream(), filter))
        };
        match filter {
            // Failed: parked for a retry, or back in the queue after a
            // 410 or a failed probe (the last status says which).
            Filter::State(State::Pending) | Filter::Held | Filter::Failed => queued("*"),
            Filter::State(State::Dead) => {
                let w = webhook.map_or("*".to_string(), token);
                let dead = format!("{}.dead.{w}", self.names.prefix);
                Some((self.names.dead_stream(), dead))
            }
            // Delivered deliveries leave the work queue; `Any` is two reads.
            Filter::State(State::Delivered) | Filter::Any => None,
        }
    }

    /// Deliveries matching `filter` (and `webhook`, and `session`) after
    /// `after`; a session's are found by reading the stream's messages.
    /// `Filter::Any` lists those waiting (ids `after` on, when not
    /// negative), then the dead letters (ids below a negative `after`).
    pub async fn list_deliveries(
        &self,
        filter: Filter,
        webhook: Option<&str>,
        session: Option<&str>,
        after: i64,
        limit: usize,
    ) -> Result<Vec<DeliveryInfo>, StoreError> {
        let reads = match filter {
            Filter::Any if after < 0 => vec![(Filter::State(State::Dead), after)],
            Filter::Any => vec![
                (Filter::State(State::Pending), after),
                (Filter::State(State::Dead), 0),
            ],
            one => vec![(one, after)],
        };
        let mut out = Vec::new();
        for (filter, after) in reads {
            let Some((stream, subjects)) = self.stream_and_filter(filter, webhook, session) else {
                continue;
            };
            let dead = stream == self.names.dead_stream();
            let stream = self.stream(&stream).await?;
            let after = if dead { -after } else { after };
            let from = (after.max(0) as u64) + 1;
            let left = limit - out.len();
            out.extend(
                read_subject(&stream, &subjects, from, left, |m| {
                    // Parked behind its session's order, never attempted:
                    // not failed.
                    delivery_info(&m, session)
                        .map(|(info, _)| info)
                        .filter(|info| match filter {
                            Filter::Failed => last_failed(info),
                            Filter::Held => self.webhook_health(&info.webhook).disabled.is_some(),
                            _ => true,
                        })
                })
                .await,
            );
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// A delivery by id (a dead letter: negative, else one in the work
    /// queue), as the admin API shows it, and the event it sends.
    pub async fn delivery(
        &self,
        id: i64,
    ) -> Result<Option<(DeliveryInfo, StoredEvent)>, StoreError> {
        let (name, sequence) = match id {
            ..0 => (self.names.dead_stream(), id.unsigned_abs()),
            _ => (self.names.deliveries_stream(), id as u64),
        };
        let stream = self.stream(&name).await?;
        Ok(match stream.get_raw_message(sequence).await {
            Ok(m) => delivery_info(&m, None),
            Err(_) => None,
        })
    }

    /// Sends dead letter `id` (negative) again from its first attempt.
    pub async fn requeue(&self, id: i64) -> Result<bool, StoreError> {
        if id >= 0 {
            return Ok(false);
        }
        let dead = self.stream(&self.names.dead_stream()).await?;
        let Ok(m) = dead.get_raw_message(id.unsigned_abs()).await else {
            return Ok(false);
        };
        let Some(webhook) = m.subject.as_str().rsplit('.').next().map(untoken) else {
            return Ok(false);
        };
        let session = session_in(&m.payload);
        let mut headers = HeaderMap::new();
        let msg_id = format!("requeue:{}:{}", self.names.dead_stream(), m.sequence);
        headers.insert("Nats-Msg-Id", msg_id.as_str());
        headers.insert(ATTEMPTS, "0");
        if let Some(attempted) = m.headers.get(ATTEMPTED) {
            headers.insert(ATTEMPTED, attempted.as_str());
        }
        let part = m.headers.get(PART).map_or("0", |v| v.as_str());
        headers.insert(PART, part);
        // Back in its session's order where it was.
        if let Some(order) = m.headers.get(ORDER) {
            headers.insert(ORDER, order.as_str());
        }
        self.publish_now(
            self.names.delivery_subject(&webhook, session.as_deref()),
            headers,
            m.payload.clone(),
        )
        .await?;
        dead.delete_message(m.sequence).await.map_err(|e| {
            StoreError::Nats(format!(
                "requeued, but not removed from the dead letters: {e}"
            ))
        })?;
        Ok(true)
    }

    /// The ids of the dead letters a bulk retry matches (of webhooks that
    /// exist: a deleted one's would wait for it forever).
    async fn dead_matching(&self, retry: &Retry) -> Result<Vec<i64>, StoreError> {
        let dead = self.stream(&self.names.dead_stream()).await?;
        let w = retry.webhook.as_deref().map_or("*".to_string(), token);
        let subject = format!("{}.dead.{w}", self.names.prefix);
        Ok(read_subject(&dead, &subject, 1, usize::MAX, |m| {
            let of_session = retry.session.is_none() || session_in(&m.payload) == retry.session;
            let webhook = m.subject.as_str().rsplit('.').next().map(untoken)?;
            let known = retry.webhooks.contains(&webhook);
            (unix_ms(&m) >= retry.since && of_session && known).then(|| -(m.sequence as i64))
        })
        .await)
    }

    /// How many dead letters a bulk retry would send again.
    pub async fn count_dead(&self, retry: &Retry) -> Result<usize, StoreError> {
        Ok(self.dead_matching(retry).await?.len())
    }

    /// Sends again the dead letters a bulk retry matches; how many.
    pub async fn requeue_dead(&self, retry: &Retry) -> Result<usize, StoreError> {
        let mut n = 0;
        for id in self.dead_matching(retry).await? {
            n += usize::from(self.requeue(id).await?);
        }
        Ok(n)
    }

    /// Keeps an attempt's record (what was sent and what came back) on
    /// the attempts stream, under its webhook and event.
    pub async fn record_attempt(
        &self,
        webhook: &str,
        event_uuid: &str,
        attempt: &AttemptInfo,
    ) -> Result<(), StoreError> {
        let body = serde_json::to_vec(attempt).unwrap_or_default();
        self.publish_now(
            self.names.attempts_subject(webhook, event_uuid),
            HeaderMap::new(),
            Bytes::from(body),
        )
        .await
    }

    /// Puts this instance's hours of `webhook` (JSON) in the history bucket.
    pub async fn put_history(
        &self,
        webhook: &str,
        instance: &str,
        hours: Bytes,
    ) -> Result<(), StoreError> {
        self.history
            .put(format!("{}.{}", token(webhook), token(instance)), hours)
            .await
            .map(|_| ())
            .map_err(|e| StoreError::Nats(format!("cannot write the webhook's history: {e}")))
    }

    /// Every instance's hours of `webhook` (JSON each).
    pub async fn history_of(&self, webhook: &str) -> Result<Vec<Bytes>, StoreError> {
        let prefix = format!("{}.", token(webhook));
        let keys: Vec<String> = self
            .history
            .keys()
            .await
            .map_err(|e| StoreError::Nats(format!("cannot list the history bucket: {e}")))?
            .filter_map(|k| async move { k.ok() })
            .filter(|k| std::future::ready(k.starts_with(&prefix)))
            .collect()
            .await;
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            if let Ok(Some(value)) = self.history.get(key).await {
                out.push(value);
            }
        }
        Ok(out)
    }

    /// Events among the newest `scan` of the event stream that `keep`
    /// takes, newest first, at most `limit`: `(session, stored at, event)`.
    /// Read through an ephemeral ordered consumer (the messages stream in
    /// batches, not one request each), within [`LIST_TIMEOUT`].
    pub async fn find_events(
        &self,
        scan: usize,
        limit: usize,
        keep: impl Fn(&Event) -> bool,
    ) -> Result<Vec<(String, i64, Event)>, StoreError> {
        let nats = |e: &dyn std::fmt::Display| {
            StoreError::Nats(format!("cannot read the event stream: {e}"))
        };
        let mut stream = self.stream(&self.names.events_stream()).await?;
        let state = stream.info().await.map_err(|e| nats(&e))?.state.clone();
        if state.messages == 0 {
            return Ok(Vec::new());
        }
        let last = state.last_sequence;
        let start = last
            .saturating_sub(scan as u64 - 1)
            .max(state.first_sequence);
        let consumer = stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: format!("{}.events.>", self.names.prefix),
                deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: start,
                },
                ..Default::default()
            })
            .await
            .map_err(|e| nats(&e))?;
        let mut messages = consumer.messages().await.map_err(|e| nats(&e))?;
        let mut found = VecDeque::new();
        let read = async {
            while let Some(Ok(m)) = messages.next().await {
                let Ok(info) = m.info() else { break };
                let sequence = info.stream_sequence;
                let at = (info.published.unix_timestamp_nanos() / 1_000_000) as i64;
                if let Ok(event) = serde_json::from_slice::<Event>(&m.payload) {
                    if keep(&event) {
                        let session = m
                            .subject
                            .as_str()
                            .rsplit('.')
                            .next()
                            .map(untoken)
                            .unwrap_or_default();
                        found.push_back((session, at, event));
                        if found.len() > limit {
                            found.pop_front();
                        }
                    }
                }
                if sequence >= last {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(LIST_TIMEOUT, read).await;
        Ok(found.into_iter().rev().collect())
    }

    /// Appends an entry (JSON) to the shared audit trail.
    pub async fn audit(&self, entry: String) -> Result<(), StoreError> {
        self.publish_now(
            self.names.audit_subject(),
            HeaderMap::new(),
            Bytes::from(entry),
        )
        .await
    }

    /// Audit entries, newest first, before sequence `before` (`None`: the
    /// newest): `(seq, entry)`. The trail is one subject, so its
    /// sequences run without gaps from the oldest kept.
    pub async fn audit_page(
        &self,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<(i64, String)>, StoreError> {
        let mut stream = self.stream(&self.names.audit_stream()).await?;
        let state = stream
            .info()
            .await
            .map_err(|e| StoreError::Nats(format!("cannot read the audit stream: {e}")))?
            .state
            .clone();
        if state.messages == 0 {
            return Ok(Vec::new());
        }
        let end = before.map_or(state.last_sequence + 1, |b| b.max(0) as u64);
        let start = end.saturating_sub(limit as u64).max(state.first_sequence);
        if start >= end {
            return Ok(Vec::new());
        }
        let subject = self.names.audit_subject();
        let mut page = read_subject(&stream, &subject, start, (end - start) as usize, |m| {
            (m.sequence < end).then(|| {
                (
                    m.sequence as i64,
                    String::from_utf8_lossy(&m.payload).into_owned(),
                )
            })
        })
        .await;
        page.reverse();
        Ok(page)
    }

    /// Every attempt kept of `webhook`'s delivery of `event_uuid`, in order.
    pub async fn attempts(
        &self,
        webhook: &str,
        event_uuid: &str,
    ) -> Result<Vec<AttemptInfo>, StoreError> {
        let stream = self.stream(&self.names.attempts_stream()).await?;
        let subject = self.names.attempts_subject(webhook, event_uuid);
        let mut out: Vec<AttemptInfo> = read_subject(&stream, &subject, 1, 1000, |m| {
            serde_json::from_slice(&m.payload).ok()
        })
        .await;
        for (i, a) in out.iter_mut().enumerate() {
            a.n = i as u32 + 1;
        }
        Ok(out)
    }

    /// Sends again the dead letters of `webhook` since `since` (ms).
    pub async fn replay(&self, webhook: &str, since: i64) -> Result<usize, StoreError> {
        let dead = self.stream(&self.names.dead_stream()).await?;
        let subject = self.names.dead_subject(webhook);
        let ids = read_subject(&dead, &subject, 1, usize::MAX, |m| {
            (unix_ms(&m) >= since).then(|| -(m.sequence as i64))
        })
        .await;
        let mut n = 0;
        for id in ids {
            n += usize::from(self.requeue(id).await?);
        }
        Ok(n)
    }

    /// A webhook renamed through the admin API: its waiting and parked
    /// deliveries, and its state, move to the new key. A delivery being
    /// attempted meanwhile may be sent twice (at least once).
    pub async fn rename_webhook(&self, from: &str, to: &str) -> Result<usize, StoreError> {
        let health = self.webhook_health(from);
        if health != WebhookHealth::default() {
            let _ = self
                .change_webhook(to, |s| {
                    *s = health.clone();
                    true
                })
                .await;
        }
        let _ = self.webhooks.delete(token(from)).await;
        self.move_backlog(from, "rename", |kind, session| match kind {
            "retry" => (self.names.retry_subject(to, session), None),
            _ => (self.names.delivery_subject(to, session), None),
        })
        .await
    }

    /// A webhook deleted through the admin API: what was waiting for it
    /// becomes dead letters (replayable), as with the embedded store.
    pub async fn delete_webhook(&self, webhook: &str) -> Result<usize, StoreError> {
        let _ = self.webhooks.delete(token(webhook)).await;
        self.move_backlog(webhook, "deleted", |_, _| {
            (self.names.dead_subject(webhook), Some("webhook deleted"))
        })
        .await
    }

    /// Moves every waiting and parked delivery of `webhook` to the subject
    /// `to` gives for its kind (`deliveries`, `retry`) and session, then
    /// removes the original; and removes the webhook's consumer.
    async fn move_backlog(
        &self,
        webhook: &str,
        why: &str,
        to: impl Fn(&str, Option<&str>) -> (String, Option<&'static str>),
    ) -> Result<usize, StoreError> {
        let stream = self.stream(&self.names.deliveries_stream()).await?;
        let _ = stream
            .delete_consumer(&self.names.webhook_consumer(webhook))
            .await;
        let mut moved = 0;
        // Parked ones first: a session's earlier delivery waiting out its
        // backoff is on the new key before a later one that could be
        // attempted there (`ordering: session`).
        for kind in ["retry", "deliveries"] {
            let subject = self.names.backlog_filter(kind, Some(webhook), None);
            for m in read_subject(&stream, &subject, 1, usize::MAX, Some).await {
                let session = session_in(&m.payload);
                let (target, status) = to(kind, session.as_deref());
                let mut headers = m.headers.clone();
                headers.insert("Nats-Msg-Id", Self::move_id(why, m.sequence).as_str());
                keep_order(&mut headers, m.sequence);
                if let Some(status) = status {
                    headers.insert(LAST_STATUS, status);
                }
                self.publish_now(target, headers, m.payload.clone()).await?;
                let _ = stream.delete_message(m.sequence).await;
                moved += 1;
            }
        }
        Ok(moved)
    }

    /// (webhook, state, count) as the embedded store's `counts` gives
    /// them: pending (due, in flight or parked) and dead. Those waiting
    /// their turn are counted by the webhooks' consumers (one read for
    /// all, however many sessions' subjects they span), parked and dead
    /// ones by subject.
    pub async fn counts(&self) -> Result<Vec<(String, String, i64)>, StoreError> {
        let p = &self.names.prefix;
        let mut out: Vec<(String, String, i64)> = Vec::new();
        let mut add = |webhook: String, state: &str, count: i64| match out
            .iter_mut()
            .find(|(w, s, _)| *w == webhook && s == state)
        {
            Some(row) => row.2 += count,
            None => out.push((webhook, state.to_string(), count)),
        };
        let deliveries = self.stream(&self.names.deliveries_stream()).await?;
        let mut consumers = deliveries.consumers();
        while let Some(info) = consumers.next().await {
            let info = info.map_err(|e| StoreError::Nats(e.to_string()))?;
            let filter = info.config.filter_subject.as_str();
            let webhook = filter
                .strip_prefix(&format!("{p}.deliveries."))
                .and_then(|rest| rest.strip_suffix(".*"));
            if let Some(webhook) = webhook {
                let waiting = info.num_pending as i64 + info.num_ack_pending as i64;
                add(untoken(webhook), "pending", waiting);
            }
        }
        for (stream, filter, state) in [
            (deliveries, format!("{p}.retry.*.*"), "pending"),
            (
                self.stream(&self.names.dead_stream()).await?,
                format!("{p}.dead.*"),
                "dead",
            ),
        ] {
            let mut subjects = stream
                .info_with_subjects(filter)
                .await
                .map_err(|e| StoreError::Nats(e.to_string()))?;
            while let Some(Ok((subject, count))) = subjects.next().await {
                let webhook = subject.split('.').nth(2).map(untoken).unwrap_or_default();
                add(webhook, state, count as i64);
            }
        }
        Ok(out)
    }

    async fn stream(&self, name: &str) -> Result<stream::Stream, StoreError> {
        self.js
            .get_stream(name)
            .await
            .map_err(|e| StoreError::Nats(format!("cannot open stream {name}: {e}")))
    }
}

/// The messages on `subject` from stream sequence `from` on, in order,
/// through `keep`, until `limit` are kept or there are no more.
pub(super) async fn read_subject<T>(
    stream: &stream::Stream,
    subject: &str,
    from: u64,
    limit: usize,
    mut keep: impl FnMut(StreamMessage) -> Option<T>,
) -> Vec<T> {
    let mut out = Vec::new();
    let mut next = from;
    while out.len() < limit {
        let Ok(m) = stream
            .direct_get_next_for_subject(subject, Some(next))
            .await
        else {
            break;
        };
        next = m.sequence + 1;
        out.extend(keep(m));
    }
    out
}

/// The attempts a delivery message says were made: `Taphook-Attempted`,
/// and at least `Taphook-Attempts` (the retries spent), which a message
/// from a build before the count carries alone.
pub fn attempted(headers: &HeaderMap) -> u32 {
    let read = |name: &str| -> u32 {
        headers
            .get(name)
            .and_then(|v| v.as_str().parse().ok())
            .unwrap_or(0)
    };
    read(ATTEMPTED).max(read(ATTEMPTS))
}

/// Whether a delivery's last attempt failed.
fn last_failed(info: &DeliveryInfo) -> bool {
    info.last_status
        .as_deref()
        .is_some_and(|s| !(s.len() == 3 && s.starts_with('2')))
}

fn unix_ms(m: &StreamMessage) -> i64 {
    (m.time.unix_timestamp_nanos() / 1_000_000) as i64
}

/// A delivery message as the admin API shows it, and its event, if it is
/// of `session` (when given).
fn delivery_info(m: &StreamMessage, session: Option<&str>) -> Option<(DeliveryInfo, StoredEvent)> {
    let event: StoredEvent = serde_json::from_slice(&m.payload).ok()?;
    let event_session = event.session_key();
    if session.is_some() && event_session.as_deref() != session {
        return None;
    }
    // `<p>.<kind>.<webhook>[.<session>]` (the prefix has no dots).
    let mut tokens = m.subject.as_str().split('.').skip(1);
    let kind = tokens.next()?;
    let webhook = untoken(tokens.next()?);
    let header = |name: &str| m.headers.get(name).map(|v| v.as_str().to_string());
    let at = unix_ms(m);
    let dead = kind == "dead";
    let info = DeliveryInfo {
        id: if dead {
            -(m.sequence as i64)
        } else {
            m.sequence as i64
        },
        webhook,
        session: event_session,
        event_uuid: event.event.uuid.clone(),
        event_type: event.event.event_type.clone(),
        state: if dead { "dead" } else { "pending" }.into(),
        // A message moved by an earlier build has no count of every
        // attempt: at least the retries it spent.
        attempts: attempted(&m.headers),
        retries_spent: header(ATTEMPTS).and_then(|v| v.parse().ok()).unwrap_or(0),
        held_reason: None,
        part: header(PART).and_then(|v| v.parse().ok()).unwrap_or(0),
        next_attempt_at: match kind {
            "dead" => None,
            "retry" => header(DUE).and_then(|v| v.parse().ok()),
            _ => Some(at),
        },
        last_status: header(LAST_STATUS),
        test: event.test,
        created_at: at,
        updated_at: at,
    };
    Some((info, event))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unbroken_run_of_failures_pauses_after_pause_after() {
        let mut h = WebhookHealth::default();
        h.failed(0, 1000);
        h.failed(600, 1000);
        assert!(!h.paused);
        assert_eq!(h.failing_since, Some(0));
        h.failed(1000, 1000);
        assert!(h.paused);
        // A gap longer than pause_after starts a new run.
        let mut h = WebhookHealth::default();
        h.failed(0, 1000);
        h.failed(1500, 1000);
        assert_eq!(h.failing_since, Some(1500));
        assert!(!h.paused);
    }

    #[test]
    fn untoken_reverses_token() {
        for text in ["event_webhook", "a.b c", "ü", "_x", ""] {
            assert_eq!(untoken(&token(text)), text);
        }
    }

    #[test]
    fn tokens_are_valid_nats_names_and_distinct() {
        assert_eq!(token("event_webhook"), "event_webhook");
        assert_eq!(token("42"), "42");
        for tricky in ["a.b", "a b", "*", ">", "", "_x", "ü", "a/b"] {
            let t = token(tricky);
            assert!(t.starts_with('_'), "{tricky} -> {t}");
            assert!(t
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'));
        }
        assert_ne!(token("_x"), token("x"));
    }
}
