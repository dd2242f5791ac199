//! The pipeline behind the tap, run as a Pingora background service:
//! exchange → derive → dedup → fan-out (filter) → outbox. Exchanges are
//! processed one at a time, in arrival order, so a session's steps are
//! seen in order. Deliveries are written to the outbox (group-committed
//! by the store); the deliver stage takes them from there.

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::app::Shared;
use crate::dedup::Dedup;
use crate::derive::{Deriver, Exchange};
use crate::event::DerivedEvent;
use crate::filter::{fan_out, Verdict};
use crate::rules::Rules;
use crate::store::session_key;
use crate::store::sqlite::{Store, StoredEvent};

pub struct Pipeline {
    shared: Arc<Shared>,
    deriver: Deriver,
    dedup: Dedup,
    store: Arc<Store>,
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
            },
            dedup: Dedup::new(config.dedup_capacity, config.dedup_ttl),
            store: shared.store.clone(),
            shared,
        }
    }

    /// Derives and accepts every event of one exchange.
    pub fn process(&self, exchange: &Exchange) {
        let rules = self.shared.rules.load_full();
        for event in self
            .deriver
            .derive(exchange, &rules, &*self.shared.sessions)
        {
            self.accept(event, &rules);
        }
    }

    /// Dedups one event and hands it to every webhook that should get it.
    pub fn accept(&self, event: DerivedEvent, rules: &Rules) {
        let metrics = &self.shared.metrics;
        metrics
            .events_derived
            .with_label_values(&[&event.event.event_type])
            .inc();
        if !self.dedup.first_seen(&event.event.uuid) {
            metrics.events_duplicate.inc();
            tracing::debug!(event = %event.event.uuid, "duplicate event dropped");
            return;
        }
        tracing::debug!(event = %event.event.uuid, event_type = %event.event.event_type, "event derived");
        if let Some(key) = session_key(&event.event.embed_id) {
            self.shared.events.append(&key, &event.event);
        }
        for decision in fan_out(&event, rules) {
            match decision.verdict {
                Verdict::Deliver => {
                    let registered = decision
                        .registered
                        .as_ref()
                        .and_then(|name| rules.registered.iter().find(|r| &r.name == name))
                        .map(|r| r.reference(&event));
                    let stored = StoredEvent {
                        event: event.event.clone(),
                        session: event.session.clone(),
                        registered,
                    };
                    if let Err(e) = self.store.insert_delivery(&decision.webhook.key, &stored) {
                        metrics
                            .events_dropped
                            .with_label_values(&["store_unavailable"])
                            .inc();
                        tracing::error!(webhook = %decision.webhook.key, event = %event.event.uuid, error = %e, "delivery not accepted");
                    }
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
    }
}

impl Pipeline {
    /// Processes exchanges until every sender (the tap) is gone, so an
    /// exchange the proxy finished during shutdown is still derived.
    pub async fn run(self, mut receiver: mpsc::Receiver<Exchange>) {
        while let Some(exchange) = receiver.recv().await {
            self.process(&exchange);
        }
        tracing::debug!("pipeline drained");
    }
}
