//! The dedup stage: an event whose UUID was seen within the TTL is
//! dropped. Bounded by capacity (least recently used entries go first).

use std::time::Duration;

/// Seen event UUIDs.
pub struct Dedup {
    seen: moka::sync::Cache<String, ()>,
}

impl Dedup {
    pub fn new(capacity: u64, ttl: Duration) -> Self {
        Self {
            seen: moka::sync::Cache::builder()
                .max_capacity(capacity)
                .time_to_live(ttl)
                .build(),
        }
    }

    /// True the first time `uuid` is offered within the TTL; atomic, so
    /// two concurrent offers of one UUID let exactly one through.
    pub fn first_seen(&self, uuid: &str) -> bool {
        self.seen.entry_by_ref(uuid).or_insert(()).is_fresh()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lets_a_uuid_through_once() {
        let d = Dedup::new(100, Duration::from_secs(60));
        assert!(d.first_seen("event-a"));
        assert!(!d.first_seen("event-a"));
        assert!(d.first_seen("event-b"));
    }

    #[test]
    fn forgets_after_the_ttl() {
        let d = Dedup::new(100, Duration::from_millis(50));
        assert!(d.first_seen("event-a"));
        std::thread::sleep(Duration::from_millis(120));
        assert!(d.first_seen("event-a"));
    }
}
