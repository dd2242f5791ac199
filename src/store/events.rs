//! The event log: each session's events, oldest first, kept for
//! `events_retention`, for the events API. Stored in the embedded store.

use std::sync::Arc;
use std::time::Duration;

use super::sqlite::{now_ms, Store};
use crate::event::Event;

/// One logged event and its place in its session's log.
#[derive(Debug, Clone, PartialEq)]
pub struct Logged {
    pub seq: u64,
    pub event: Event,
}

/// Where events are logged.
pub trait EventLog: Send + Sync {
    fn append(&self, session: &str, event: &Event);
    /// The session's events with `seq >= from`, oldest first, at most
    /// `limit`; `None` when the session has no events (any more).
    fn list(&self, session: &str, from: u64, limit: usize) -> Option<Vec<Logged>>;
}

/// The event log in the embedded store.
pub struct DurableEventLog {
    store: Arc<Store>,
    retention: Duration,
}

impl DurableEventLog {
    pub fn new(store: Arc<Store>, retention: Duration) -> Self {
        Self { store, retention }
    }

    fn cutoff(&self) -> i64 {
        now_ms().saturating_sub(self.retention.as_millis() as i64)
    }
}

impl EventLog for DurableEventLog {
    fn append(&self, session: &str, event: &Event) {
        if let Err(e) = self.store.append_event(session, event) {
            tracing::error!(error = %e, "event not logged");
        }
    }

    fn list(&self, session: &str, from: u64, limit: usize) -> Option<Vec<Logged>> {
        let cutoff = self.cutoff();
        let page = self.store.events(session, from, cutoff, limit).ok()?;
        if page.is_empty() && self.store.events(session, 0, cutoff, 1).ok()?.is_empty() {
            return None;
        }
        Some(
            page.into_iter()
                .map(|(seq, event)| Logged { seq, event })
                .collect(),
        )
    }
}
