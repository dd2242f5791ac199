//! The event log: each session's events, oldest first, kept for
//! `events_retention`, for the events API.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::event::Event;

/// Events kept per session at most (the oldest go first).
const MAX_EVENTS_PER_SESSION: usize = 10_000;

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

#[derive(Debug, Default)]
struct SessionLog {
    next_seq: u64,
    events: Vec<Logged>,
}

/// The event log in a cache bounded in bytes, entries expiring with the
/// retention.
pub struct MemoryEventLog {
    retention: Duration,
    cache: moka::sync::Cache<String, Arc<SessionLog>>,
}

impl MemoryEventLog {
    pub fn new(max_bytes: u64, retention: Duration) -> Self {
        let cache = moka::sync::Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|k: &String, log: &Arc<SessionLog>| {
                let size: usize = log
                    .events
                    .iter()
                    .map(|l| 64 + l.event.data.to_string().len() + l.event.uuid.len())
                    .sum();
                u32::try_from(k.len() + size).unwrap_or(u32::MAX)
            })
            .time_to_live(retention)
            .build();
        Self { retention, cache }
    }

    fn cutoff(&self) -> f64 {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        now.saturating_sub(self.retention).as_secs_f64()
    }
}

impl EventLog for MemoryEventLog {
    fn append(&self, session: &str, event: &Event) {
        let cutoff = self.cutoff();
        // Copy-on-write: the weigher sees each log's real size.
        self.cache.entry_by_ref(session).and_upsert_with(|old| {
            let old = old.map(|e| e.into_value()).unwrap_or_default();
            let mut events: Vec<Logged> = old
                .events
                .iter()
                .filter(|l| l.event.created_at >= cutoff)
                .cloned()
                .collect();
            events.push(Logged {
                seq: old.next_seq,
                event: event.clone(),
            });
            if events.len() > MAX_EVENTS_PER_SESSION {
                events.drain(..events.len() - MAX_EVENTS_PER_SESSION);
            }
            Arc::new(SessionLog {
                next_seq: old.next_seq + 1,
                events,
            })
        });
    }

    fn list(&self, session: &str, from: u64, limit: usize) -> Option<Vec<Logged>> {
        let log = self.cache.get(session)?;
        let cutoff = self.cutoff();
        let live: Vec<Logged> = log
            .events
            .iter()
            .filter(|l| l.event.created_at >= cutoff)
            .cloned()
            .collect();
        if live.is_empty() {
            return None;
        }
        Some(
            live.into_iter()
                .filter(|l| l.seq >= from)
                .take(limit)
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(uuid: &str, created_at: f64) -> Event {
        Event {
            uuid: uuid.into(),
            embed_id: 1.into(),
            embed_jwt: serde_json::Value::Null,
            environment_name: "P".into(),
            template_key: serde_json::Value::Null,
            event_type: "t".into(),
            trigger_type: "user".into(),
            data: serde_json::json!({}),
            created_at,
        }
    }

    fn now() -> f64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
    }

    #[test]
    fn lists_in_order_from_a_cursor() {
        let log = MemoryEventLog::new(1 << 20, Duration::from_secs(60));
        for i in 0..5 {
            log.append("s", &event(&format!("e{i}"), now()));
        }
        let page: Vec<String> = log
            .list("s", 2, 2)
            .unwrap()
            .into_iter()
            .map(|l| l.event.uuid)
            .collect();
        assert_eq!(page, ["e2", "e3"]);
        assert!(log.list("other", 0, 10).is_none());
    }

    #[test]
    fn forgets_events_past_the_retention() {
        let log = MemoryEventLog::new(1 << 20, Duration::from_secs(60));
        log.append("s", &event("old", now() - 120.0));
        log.append("s", &event("new", now()));
        let all: Vec<String> = log
            .list("s", 0, 10)
            .unwrap()
            .into_iter()
            .map(|l| l.event.uuid)
            .collect();
        assert_eq!(all, ["new"]);
    }
}
