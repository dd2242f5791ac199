//! The pipeline behind the tap: exchange → derive → dedup → event log and
//! funnel → fan-out (filter) → outbox. Exchanges are processed one at a
//! time, in arrival order, so a session's steps are seen in order; the
//! funnel's stall checks run between them, on the same task. Deliveries
//! are written to the outbox (group-committed by the store); the deliver
//! stage takes them from there.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::app::Shared;
use crate::dedup::Dedup;
use crate::derive::{Deriver, Exchange};
use crate::event::DerivedEvent;
use crate::filter::{fan_out, Verdict};
use crate::funnel::Funnel;
use crate::rules::Rules;
use crate::store::sqlite::{now_ms, Store};
use crate::store::StoredEvent;
use crate::store::{session_key, Accepted};
use crate::traffic::record::Recorder;

/// How many waiting exchanges the pipeline takes at once: their sessions
/// are read together ([`crate::store::SessionStore::prefetch`]).
const BATCH: usize = 64;

/// An event pushed through the admin API (`POST /v1/events`), and where
/// to answer whether it was new (`false`: a duplicate of its UUID).
pub struct Pushed {
    pub event: DerivedEvent,
    pub reply: oneshot::Sender<bool>,
}

pub struct Pipeline {
    shared: Arc<Shared>,
    deriver: Deriver,
    dedup: Dedup,
    store: Arc<Store>,
    funnel: Funnel,
    /// `record:` in the config: every exchange written to HAR files.
    recorder: Option<Recorder>,
}

impl Pipeline {
    pub fn new(shared: Arc<Shared>) -> Self {
        let config = &shared.config;
        Self {
            deriver: Deriver {
                environment_name: config.environment_name.clone(),
                jwt_hs256_secret: config
                    .jwt_hs256_secret
                    .as_ref()
                    .map(|s| s.expose().as_bytes().to_vec()),
                hash_key: shared.hash_key.clone(),
            },
            dedup: Dedup::new(config.dedup_capacity, config.dedup_ttl),
            store: shared.store.clone(),
            funnel: Funnel::new(
                config.funnel.clone(),
                shared.metrics.clone(),
                shared.store.clone(),
            ),
            recorder: None,
            shared,
        }
    }

    /// Records every exchange the pipeline receives.
    pub fn with_recorder(mut self, recorder: Option<Recorder>) -> Self {
        self.recorder = recorder;
        self
    }

    /// Derives and accepts every event of some exchanges, in order, after
    /// reading the sessions they need all at once (a remote store answers
    /// many reads in the time of one).
    pub async fn process(&self, exchanges: &[Exchange]) {
        if let Some(recorder) = &self.recorder {
            exchanges.iter().for_each(|e| recorder.record(e));
        }
        let rules = self.shared.rules.load_full();
        let prepared: Vec<_> = exchanges
            .iter()
            .filter_map(|e| Some((e, self.deriver.prepare(e, &rules)?)))
            .collect();
        if self.shared.sessions.prefetches() {
            let keys = prepared
                .iter()
                .flat_map(|(_, p)| p.session_keys())
                .collect();
            self.shared.sessions.prefetch(keys).await;
        }
        for (exchange, p) in prepared {
            for event in self
                .deriver
                .derive_prepared(p, exchange, &*self.shared.sessions)
            {
                let _ = self.accept(event, &rules);
            }
        }
    }

    /// Dedups one event and hands it to every webhook that should get it;
    /// `false` when it was a duplicate. Every log line about it carries its
    /// UUID and its request's id.
    pub fn accept(&self, event: DerivedEvent, rules: &Rules) -> bool {
        let span = tracing::info_span!(
            "event",
            event = %event.event.uuid,
            event_type = %event.event.event_type,
            request_id = event.request_id.as_deref(),
        );
        let _entered = span.enter();
        let metrics = &self.shared.metrics;
        metrics
            .events_derived
            .with_label_values(&[&event.event.event_type])
            .inc();
        if !self.dedup.first_seen(&event.event.uuid) {
            metrics.events_duplicate.inc();
            tracing::debug!("duplicate event dropped");
            return false;
        }
        tracing::debug!("event derived");
        metrics.activity.event(crate::store::sqlite::now_ms());
        self.funnel.observe(&event.event, event.new_session);
        let mut deliver = Vec::new();
        for decision in fan_out(&event, rules) {
            match decision.verdict {
                Verdict::Deliver => {
                    let registered = decision
                        .registered
                        .as_ref()
                        .and_then(|name| rules.registered.iter().find(|r| &r.name == name))
                        .map(|r| r.reference(&event));
                    deliver.push((decision.webhook.key.clone(), registered));
                }
                Verdict::FilterRejected => metrics
                    .filter_rejected
                    .with_label_values(&[&decision.webhook.key])
                    .inc(),
                Verdict::FilterError(e) => {
                    metrics
                        .filter_rejected
                        .with_label_values(&[&decision.webhook.key])
                        .inc();
                    tracing::warn!(webhook = %decision.webhook.key, error = %e, "filter failed to evaluate; event not delivered");
                }
                Verdict::NotSubscribed
                | Verdict::NotAssigned
                | Verdict::OtherMode
                | Verdict::OtherImportIdentifier => {}
            }
        }
        self.keep(accepted(event, deliver));
        true
    }

    /// Hands an accepted event and its deliveries to the outbox, in one
    /// write (the outbox skips an event with nothing to keep).
    fn keep(&self, accepted: Accepted) {
        let deliveries = accepted.deliveries.len();
        if let Err(e) = self.shared.outbox.accept(accepted) {
            self.shared
                .metrics
                .events_dropped
                .with_label_values(&["store_unavailable"])
                .inc_by(deliveries as u64);
            tracing::error!(error = %e, deliveries, "event not accepted by the store");
        }
    }
}

/// The event as it is kept, and each delivery of it: the event is moved,
/// not copied, and a delivery that adds nothing (no registered event)
/// shares it.
fn accepted(event: DerivedEvent, deliver: Vec<(String, Option<serde_json::Value>)>) -> Accepted {
    let session = session_key(&event.event.embed_id);
    let stored = Arc::new(StoredEvent {
        event: event.event,
        session: event.session,
        registered: None,
        request_id: event.request_id,
        test: false,
    });
    let deliveries = deliver
        .into_iter()
        .map(|(webhook, registered)| match registered {
            None => (webhook, stored.clone()),
            Some(registered) => {
                let own = StoredEvent {
                    registered: Some(registered),
                    ..(*stored).clone()
                };
                (webhook, Arc::new(own))
            }
        })
        .collect();
    Accepted {
        event: stored,
        session,
        deliveries,
    }
}

impl Pipeline {
    /// Processes exchanges until every sender (the tap) is gone, so an
    /// exchange the proxy finished during shutdown is still derived; looks
    /// for stalled sessions in between.
    pub async fn run(
        self,
        mut receiver: mpsc::Receiver<Exchange>,
        mut pushed: mpsc::Receiver<Pushed>,
    ) {
        let every = self.shared.config.funnel.check_interval();
        let mut ticks =
            tokio::time::interval(every.unwrap_or(std::time::Duration::from_secs(3600)));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            tokio::select! {
                taken = receiver.recv_many(&mut batch, BATCH) => match taken {
                    0 => break,
                    _ => {
                        self.process(&batch).await;
                        batch.clear();
                    }
                },
                Some(p) = pushed.recv() => {
                    let rules = self.shared.rules.load_full();
                    let _ = p.reply.send(self.accept(p.event, &rules));
                }
                _ = ticks.tick(), if every.is_some() => self.report_stalls().await,
            }
        }
        tracing::debug!("pipeline drained");
    }

    /// Accepts a `session_stalled` event for every session idle past
    /// `funnel.stall_after`, and waits until they are committed, so the
    /// next look does not find them again.
    async fn report_stalls(&self) {
        let shared = &self.shared;
        let stalls =
            self.funnel
                .stalls(now_ms(), &shared.config.environment_name, &*shared.sessions);
        match stalls {
            Ok(events) if !events.is_empty() => {
                let rules = shared.rules.load_full();
                for event in events {
                    tracing::info!(session = %event.event.embed_id, "session stalled");
                    let _ = self.accept(event, &rules);
                }
                if let Err(e) = self.store.committed_now().await {
                    tracing::error!(error = %e, "stalls not committed");
                }
            }
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "cannot look for stalled sessions"),
        }
        self.funnel.count_open();
    }
}
