//! What taphook keeps: one module per thing kept (the outbox, sessions,
//! the event log, deliveries, webhooks' state, the audit trail, the
//! funnel's progress), each a trait with the embedded store's
//! implementation ([`sqlite`]) and JetStream's ([`jetstream`]) side by
//! side; the shared types in [`record`] and [`sqlite`].

pub mod audit;
pub mod deliveries;
pub mod events;
pub mod funnel;
pub mod handoff;
pub mod jetstream;
pub mod outbox;
pub mod record;
pub mod sessions;
pub mod sqlite;
pub mod webhooks;

pub use audit::AuditTrail;
pub use deliveries::Deliveries;
pub use events::{DurableEventLog, EventLog, EventQuery, EventSearch, Logged};
pub use outbox::Outbox;
pub use record::{Accepted, StoredEvent};
pub use sessions::{
    session_key, DurableSessions, MemorySessions, Session, SessionStore, ENTRY_OVERHEAD,
};
pub use sqlite::Store;
pub use webhooks::WebhookStates;

use std::sync::Arc;

/// The embedded store as the async traits use it: each call runs off the
/// async workers (its statements may wait for the disk).
pub struct Embedded(pub Arc<Store>);

impl Embedded {
    /// Runs `call` on the store on a blocking thread.
    pub async fn run<T: Send + 'static>(
        &self,
        call: impl FnOnce(&Store) -> Result<T, sqlite::StoreError> + Send + 'static,
    ) -> Result<T, sqlite::StoreError> {
        let store = self.0.clone();
        tokio::task::spawn_blocking(move || call(&store))
            .await
            .map_err(|e| sqlite::StoreError::Task(e.to_string()))?
    }
}
