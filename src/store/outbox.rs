//! Where the pipeline hands accepted events and their deliveries to the
//! deliver stage: one trait, with the embedded store's implementation and
//! JetStream's side by side.

use std::sync::Arc;

use super::jetstream::{JetStream, Write};
use super::sqlite::{self, StoreError};
use super::{Accepted, EventLog as _, StoredEvent};

/// Where the pipeline hands events and their deliveries to the deliver
/// stage.
#[async_trait::async_trait]
pub trait Outbox: Send + Sync {
    /// Keeps an accepted event: in its session's log, and a delivery to
    /// each of its webhooks. Durable (embedded) or on its way to NATS
    /// (JetStream) when it returns `Ok`.
    fn accept(&self, accepted: Accepted) -> Result<(), StoreError>;

    /// Accepts a delivery of `event` to `webhook` alone (a test event):
    /// durable or on its way when it returns `Ok`.
    fn enqueue(&self, webhook: &str, event: Arc<StoredEvent>) -> Result<(), StoreError>;

    /// Waits until what was accepted so far survives a crash (the
    /// embedded store's next group commit); JetStream, which buffers and
    /// retries its publishes, answers at once.
    async fn committed(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

#[async_trait::async_trait]
impl Outbox for sqlite::Store {
    fn accept(&self, accepted: Accepted) -> Result<(), StoreError> {
        sqlite::Store::accept(self, accepted)
    }

    fn enqueue(&self, webhook: &str, event: Arc<StoredEvent>) -> Result<(), StoreError> {
        self.insert_delivery(webhook, event)
    }

    async fn committed(&self) -> Result<(), StoreError> {
        self.committed_now().await
    }
}

#[async_trait::async_trait]
impl Outbox for JetStream {
    /// The event to its session's subject of the event stream, and each
    /// delivery to the work queue: a message each, as the streams keep
    /// them apart.
    fn accept(&self, accepted: Accepted) -> Result<(), StoreError> {
        if let Some(session) = &accepted.session {
            self.append(session, &accepted.event.event);
        }
        let mut result = Ok(());
        for (webhook, event) in accepted.deliveries {
            if let Err(e) = self.enqueue(&webhook, event) {
                result = Err(e);
            }
        }
        result
    }

    fn enqueue(&self, webhook: &str, event: Arc<StoredEvent>) -> Result<(), StoreError> {
        let (headers, body) =
            Self::delivery_message(&Self::delivery_id(webhook, &event), &event, 0, 0, None);
        self.write(Write::Publish {
            subject: self
                .names
                .delivery_subject(webhook, event.session_key().as_deref()),
            headers,
            body,
            kind: "delivery",
            trace: event
                .trace
                .clone()
                .map(|t| (t, crate::store::sqlite::now_ms())),
        })
    }
}
